//! sipvault-sip: SIP message parsing, validation, building, stream framing
//! and digest authentication.
//!
//! The parser is our own (see NOTES.md): it reads the RFC 4475 / RFC 5118
//! torture messages the way those RFCs ask, frames by Content-Length, and
//! never panics on any input.
//!
//! Datagram rules ([`SipMessage::parse`]):
//! * leading CR/LF (keep-alives) are skipped; CRLF and bare LF line ends;
//! * folded header lines are unfolded, compact header names accepted;
//! * the body is taken by Content-Length; without one, the rest of the input;
//!   bytes after the declared body are not part of the message;
//! * a declared body longer than the input is [`ParseError::Truncated`];
//!   negative, unparseable or conflicting Content-Length values are errors;
//! * the empty line after the headers may be missing if the input ends
//!   right after a complete header line;
//! * trailing white space on the request line is tolerated; any other
//!   malformed start line is an error (505 for a SIP version other than 2.0).
//!
//! Semantic checks a server makes before acting on a request are in
//! [`check_request`]. [`sdp`] reads session descriptions (codecs, media
//! addresses) and [`pidf`] presence documents (basic status, activities,
//! notes) for the archive.

mod addr;
mod builder;
pub mod digest;
mod error;
mod framing;
mod message;
pub mod pidf;
pub mod sdp;
mod util;
mod validate;

pub use addr::{Contact, NameAddr, Params, SipUri, Via, percent_decode};
pub use builder::MessageBuilder;
pub use error::ParseError;
pub use framing::{FramingError, StreamFramer};
pub use message::{AddressCache, SipMessage, Unparsed};
pub use sdp::{Format, MediaDescription, SdpError, SessionDescription};
pub use validate::{
    Rejection, check_forwarded_request, check_request, default_reason, error_response_for_unparsed,
};
