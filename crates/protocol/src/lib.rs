//! The ActionCable + Voxsig `RoomChannel` protocol, without I/O.
//!
//! - [`identifier`]: subscription identifiers, encoded as the seeds show and matched by content.
//! - [`command`]: what a client sends (`subscribe`, `unsubscribe`, `update_presence`).
//! - [`frame`]: what the server sends, decoded in one borrowing pass ([`ServerFrame::parse`]).
//! - [`session`]: one connection's state machine, fed frames and time.
//! - [`catalogue`]: the Voxsig event names; [`models`]: typed, lenient payload models.

pub mod backoff;
pub mod catalogue;
pub mod command;
pub mod frame;
pub mod identifier;
pub mod models;
pub mod scan;
pub mod session;
pub mod token;

/// The WebSocket subprotocol ActionCable speaks (Rails offers it; clients ask for it).
pub const SUBPROTOCOL: &str = "actioncable-v1-json";

pub use catalogue::EventKind;
pub use command::Command;
pub use frame::{quote_untrusted, EventRef, FrameError, ServerFrame};
pub use identifier::{IdentifierError, IdentifierKey, RoomIdentifier};
pub use scan::{JsonError, JsonErrorReason, RawStr};
pub use session::{Delivery, Happening, Session, SessionConfig, SubscriptionId};
pub use token::PubsubToken;

#[cfg(test)]
mod fixtures;
