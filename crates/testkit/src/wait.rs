//! Bounded polling: every wait in a test ends, in time.

use std::time::Duration;

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(10);

/// Waits until `condition` holds, polling every 10 ms; false after `timeout`.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    condition()
}

/// Polls `check` until it holds; fails the test naming `what` when `timeout` passes first.
pub async fn until(what: &str, timeout: Duration, check: impl FnMut() -> bool) {
    assert!(
        eventually(timeout, check).await,
        "timed out waiting for {what}"
    );
}
