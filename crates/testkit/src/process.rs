//! The `voxsig-bridge` binary as a child process.
//!
//! Only the bridge crate's own tests know where cargo built the binary
//! (`env!("CARGO_BIN_EXE_voxsig-bridge")`): they pass that path in.

use std::ffi::OsStr;
use std::process::Command;

/// A command running the bridge binary at `exe`, with the developer's own `VOXSIG_BRIDGE_*`
/// overrides, `RUST_LOG` and `NO_COLOR` removed from its environment.
pub fn bridge_command(exe: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(exe);
    for (key, _) in std::env::vars() {
        if key.starts_with("VOXSIG_BRIDGE_") || key == "RUST_LOG" || key == "NO_COLOR" {
            command.env_remove(key);
        }
    }
    command
}
