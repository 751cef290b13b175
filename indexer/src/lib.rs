//! sipvault-indexer
