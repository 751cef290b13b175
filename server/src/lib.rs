//! sipvault-server
