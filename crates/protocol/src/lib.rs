//! The ActionCable + Voxsig `RoomChannel` protocol, without I/O.
//!
//! - [`identifier`]: subscription identifiers, encoded as the seeds show and matched by content.
//! - [`command`]: what a client sends (`subscribe`, `unsubscribe`, `update_presence`).
//! - [`catalogue`]: the Voxsig event names.

pub mod catalogue;
pub mod command;
pub mod identifier;
pub mod token;

pub use catalogue::EventKind;
pub use command::Command;
pub use identifier::{IdentifierError, IdentifierKey, RoomIdentifier};
pub use token::PubsubToken;
