//! sipvault-query
