//! Parse errors.

/// Why bytes could not be read as a SIP message (or a header value as its
/// typed form).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("message truncated: declared body or header section is incomplete")]
    Truncated,
    #[error("malformed start line: {0}")]
    BadStartLine(String),
    #[error("unsupported SIP version {0:?}")]
    UnsupportedVersion(String),
    #[error("invalid status code {0:?}")]
    InvalidStatus(String),
    #[error("malformed header line: {0}")]
    BadHeaderLine(String),
    #[error("invalid Content-Length {0:?}")]
    InvalidContentLength(String),
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    #[error("invalid CSeq {0:?}")]
    InvalidCSeq(String),
    #[error("invalid URI: {0}")]
    InvalidUri(String),
    #[error("invalid address: {0}")]
    InvalidNameAddr(String),
    #[error("invalid Via: {0}")]
    InvalidVia(String),
}

impl ParseError {
    /// Status code a server answers a request with when it fails to parse
    /// this way: 505 for an unsupported SIP version, 400 otherwise.
    pub fn response_code(&self) -> u16 {
        match self {
            ParseError::UnsupportedVersion(_) => 505,
            _ => 400,
        }
    }
}
