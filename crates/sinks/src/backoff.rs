//! Reconnect back-off: exponential, capped, with jitter.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::duration_keys;

use voxsig_protocol::backoff::{Attempts, Backoff as Policy, BackoffError, Jitter, Rng};

use crate::ConfigError;

/// The default cap of the sink's reconnect back-off, in milliseconds.
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 5_000;

/// Reconnect back-off bounds (`[sink.reconnect]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(remote = "Self", default, deny_unknown_fields)]
pub struct ReconnectConfig {
    /// First wait after a failure, `min_backoff = "250ms"` (or `min_backoff_ms`). Default
    /// 250 ms.
    pub min_backoff_ms: u64,
    /// Largest wait, `max_backoff = "5s"` (or `max_backoff_ms`). Default 5 s: after a broker outage the sink is back
    /// within about 5 s of the broker (with `when_full = "block"` the platform feed waits for
    /// it), at the cost of one connect attempt per 2.5-5 s while the broker is away.
    pub max_backoff_ms: u64,
}

duration_keys!(
    ReconnectConfig,
    [
        "min_backoff" <- "min_backoff_ms" in Millis,
        "max_backoff" <- "max_backoff_ms" in Millis,
    ]
);

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            min_backoff_ms: 250,
            max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
        }
    }
}

impl ReconnectConfig {
    /// As the shared back-off policy (`voxsig_protocol::backoff`): exponential, capped, "equal
    /// jitter" (each wait in `[d/2, d]`).
    pub fn policy(&self) -> Policy {
        Policy {
            initial: Duration::from_millis(self.min_backoff_ms),
            max: Duration::from_millis(self.max_backoff_ms),
            jitter: Jitter::Equal,
        }
    }

    /// Checks the bounds (the policy's rule), naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.policy().validate().map_err(|e| match e {
            BackoffError::ZeroInitial => {
                ConfigError::new("sink.reconnect.min_backoff_ms", "must be at least 1")
            }
            BackoffError::MaxBelowInitial => ConfigError::new(
                "sink.reconnect.max_backoff_ms",
                "must be at least min_backoff_ms",
            ),
        })
    }
}

/// A reconnect loop's back-off state: the shared [`Attempts`] and this sink's own jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    attempts: Attempts,
    rng: Rng,
}

impl Backoff {
    pub(crate) fn new(config: &ReconnectConfig) -> Self {
        Backoff {
            attempts: Attempts::new(config.policy()),
            // Each sink spreads differently from its neighbours.
            rng: Rng::new(RandomState::new().build_hasher().finish()),
        }
    }

    /// The next wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.attempts.next_delay(&mut self.rng)
    }

    /// After a success: start again from the minimum.
    pub(crate) fn reset(&mut self) {
        self.attempts.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: a 30 s cap kept the sink away for up to 30 s after the broker was back.
    #[test]
    fn the_default_cap_is_five_seconds() {
        let c = ReconnectConfig::default();
        assert_eq!((c.min_backoff_ms, c.max_backoff_ms), (250, 5_000));
        let mut b = Backoff::new(&c);
        let waits: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(
            waits.iter().all(|w| *w <= Duration::from_secs(5)),
            "{waits:?}"
        );
    }

    #[test]
    fn grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new(&ReconnectConfig {
            min_backoff_ms: 100,
            max_backoff_ms: 800,
        });
        let waits: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= Duration::from_millis(100));
        assert!(waits[5] >= Duration::from_millis(400) && waits[5] <= Duration::from_millis(800));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
