//! sipvault-collector
