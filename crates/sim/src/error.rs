//! The one error type of the library.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything the simulator can fail at.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Another I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A world file could not be read or decoded.
    #[error("world file {path}: {reason}")]
    WorldFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A world is inconsistent (duplicate ids or tokens, dangling references, empty accounts).
    #[error("invalid world: {0}")]
    InvalidWorld(String),
    /// An account id that the world does not have.
    #[error("unknown account {0}")]
    UnknownAccount(u64),
    /// A conversation id that the world does not have (or not in the chosen account).
    #[error("unknown conversation {0}")]
    UnknownConversation(u64),
    /// A token that the world does not have.
    #[error("unknown pubsub token")]
    UnknownToken,
    /// A token that another user or contact already has.
    #[error("pubsub token already in use")]
    TokenInUse,
    /// An event name outside the catalogue.
    #[error("unknown event name {0:?}")]
    UnknownEvent(String),
    /// A request that cannot be honoured as given.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The listener is already running (start) or already stopped (stop).
    #[error("listener is already {0}")]
    Listener(&'static str),
    /// A wait ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, String),
    /// The simulator has been shut down.
    #[error("the simulator is shut down")]
    Shutdown,
}

/// The library's result type.
pub type Result<T, E = SimError> = std::result::Result<T, E>;
