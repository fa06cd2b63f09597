//! `[state]`: the bridge's data directory, and the disk buffer's place in it.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use voxsig_sinks::{BufferConfig, BufferKind};

/// The disk buffer's directory under `[state] dir` when `buffer.dir` is not set.
pub const BUFFER_SUBDIR: &str = "buffer";

/// Where the bridge keeps what must survive a restart: catch-up checkpoints and, with
/// `[buffer] kind = "disk"`, the buffer's segments (under `<dir>/buffer` by default). Without a
/// `dir` nothing is kept across restarts.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The data directory; created when missing.
    pub dir: Option<PathBuf>,
}

/// Checks `[buffer]` (the sinks' rules) and, for a disk buffer without its own `dir`, places it
/// under `[state] dir` ([`BUFFER_SUBDIR`]).
pub(super) fn resolve_buffer(
    buffer: &mut BufferConfig,
    state: &StateConfig,
) -> Result<(), ConfigError> {
    buffer.validate().map_err(ConfigError::from_sinks)?;
    if buffer.kind != BufferKind::Disk || buffer.dir.is_some() {
        return Ok(());
    }
    let Some(dir) = &state.dir else {
        return Err(ConfigError::new(
            "buffer.dir",
            "required with kind = \"disk\" when [state] dir is not set",
        ));
    };
    buffer.dir = Some(dir.join(BUFFER_SUBDIR));
    Ok(())
}
