//! The SIP server: a sans-IO core ([`core::Core`]) that holds all protocol
//! state and logic, and thin tokio transports ([`io`]) that feed it bytes
//! and carry out what it asks for. A minimal built-in user agent ([`ua`])
//! drives the server in the demo and in tests.
//!
//! The server never knows about the archive: every message in or out is
//! handed to a [`io::Tap`], a channel the binary connects to the collector.

pub mod conference;
pub mod core;
mod core_presence;
mod fanout;
pub mod federation;
pub mod io;
pub mod presence;
mod proxy;
pub mod registrar;
pub mod rooms;
mod subscription;
pub mod tls;
pub mod ua;

pub use conference::{ConferenceConfig, ConferenceEvent, ConferenceEventKind, ConferenceStats};
pub use core::{Core, CoreConfig, CoreStats, Event, Transmit, UserCredentials};
pub use federation::FederationPeer;
pub use io::{
    ArchiveAck, ArchiveRequest, CriticalArchive, Server, ServerConfig, ServerError, ServerStats,
    Tap, TlsListener, UserDirectory,
};
pub use rooms::{RoomConfig, RoomDirectory, RoomInfo, RoomPost, RoomStats};
pub use tls::{TlsError, TlsIdentity};

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod proxy_tests;
