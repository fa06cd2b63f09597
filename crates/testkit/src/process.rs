//! The `voxsig-bridge` binary as a child process.
//!
//! Only the bridge crate's own tests know where cargo built the binary
//! (`env!("CARGO_BIN_EXE_voxsig-bridge")`): they pass that path in.

use std::ffi::OsStr;
use std::process::{Child, Command, Output};

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

/// Sends SIGTERM to `child` (the bridge then drains and exits).
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {} failed", child.id());
}

/// Sends SIGTERM to `child` and waits for it to exit, with everything it wrote (its stdout and
/// stderr must be piped).
pub async fn terminate_and_collect(child: Child) -> Output {
    terminate(&child);
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("waiter")
        .expect("child output")
}
