//! sipvault-catalog
