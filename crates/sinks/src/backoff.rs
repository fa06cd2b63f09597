//! Reconnect back-off: exponential, capped, with jitter.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The default cap of the sink's reconnect back-off, in milliseconds.
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 5_000;

/// Reconnect back-off bounds (`[sink.reconnect]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectConfig {
    /// First wait after a failure, in milliseconds. Default 250.
    pub min_backoff_ms: u64,
    /// Largest wait, in milliseconds. Default 5,000: after a broker outage the sink is back
    /// within about 5 s of the broker (with `when_full = "block"` the platform feed waits for
    /// it), at the cost of one connect attempt per 2.5-5 s while the broker is away.
    pub max_backoff_ms: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            min_backoff_ms: 250,
            max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
        }
    }
}

impl ReconnectConfig {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_backoff_ms == 0 {
            return Err(ConfigError::new(
                "sink.reconnect.min_backoff_ms",
                "must be at least 1",
            ));
        }
        if self.max_backoff_ms < self.min_backoff_ms {
            return Err(ConfigError::new(
                "sink.reconnect.max_backoff_ms",
                "must be at least min_backoff_ms",
            ));
        }
        Ok(())
    }
}

/// A reconnect loop's back-off state: the shared policy of `voxsig_protocol::backoff`
/// (exponential, capped, "equal jitter": each wait in `[d/2, d]`) and the attempt count.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: voxsig_protocol::backoff::Backoff,
    attempt: u32,
    rng: voxsig_protocol::backoff::Rng,
}

impl Backoff {
    pub(crate) fn new(config: &ReconnectConfig) -> Self {
        Backoff {
            policy: voxsig_protocol::backoff::Backoff {
                initial: Duration::from_millis(config.min_backoff_ms),
                max: Duration::from_millis(config.max_backoff_ms),
                jitter: voxsig_protocol::backoff::Jitter::Equal,
            },
            attempt: 0,
            // Each sink spreads differently from its neighbours.
            rng: voxsig_protocol::backoff::Rng::new(RandomState::new().build_hasher().finish()),
        }
    }

    /// The next wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let wait = self.policy.delay(self.attempt, &mut self.rng);
        self.attempt = self.attempt.saturating_add(1);
        wait
    }

    /// After a success: start again from the minimum.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
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
