//! sipvault-sip
