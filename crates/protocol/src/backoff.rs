//! Exponential back-off with jitter, deterministic for a given seed: the one back-off policy of
//! the workspace (subscriptions, the bridge's sockets, the sinks' reconnects).
//!
//! Randomness is a seeded generator owned by the caller, so the state machines that use it stay
//! sans-I/O and their tests are repeatable.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How much of the exponential delay is randomised (`full`, `equal` or `none` in configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Uniform in `[0, delay]` ("full jitter"): spreads a herd of clients best.
    #[default]
    Full,
    /// Uniform in `[delay/2, delay]`: spread, but never much shorter than the delay.
    Equal,
    /// Exactly the delay.
    None,
}

/// An exponential back-off policy: `initial * 2^attempt`, capped at `max`, then jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (attempt 0).
    pub initial: Duration,
    /// The cap on the exponential delay.
    pub max: Duration,
    /// How the delay is randomised.
    pub jitter: Jitter,
}

/// Why back-off bounds are unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    /// The first delay is zero: a failing peer would be retried in a busy loop.
    #[error("the first delay must be above zero")]
    ZeroInitial,
    /// The cap is below the first delay.
    #[error("the cap must be at least the first delay")]
    MaxBelowInitial,
}

impl Backoff {
    /// Checks the bounds: `initial` above zero, `max` at least `initial`.
    pub fn validate(&self) -> Result<(), BackoffError> {
        if self.initial.is_zero() {
            return Err(BackoffError::ZeroInitial);
        }
        if self.max < self.initial {
            return Err(BackoffError::MaxBelowInitial);
        }
        Ok(())
    }

    /// The un-jittered delay for an attempt (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `attempt` (0-based), jittered with `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(rng.unit()),
            Jitter::Equal => ceiling / 2 + (ceiling / 2).mul_f64(rng.unit()),
        }
    }
}

/// Consecutive failures under a policy: each failure's delay grows, a success starts again.
#[derive(Debug, Clone)]
pub struct Attempts {
    policy: Backoff,
    failures: u32,
}

impl Attempts {
    /// No failure yet.
    pub fn new(policy: Backoff) -> Self {
        Attempts {
            policy,
            failures: 0,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// One more failure: the delay before the next attempt.
    pub fn next_delay(&mut self, rng: &mut Rng) -> Duration {
        let delay = self.policy.delay(self.failures, rng);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// A success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A small deterministic generator (SplitMix64): enough for jitter, not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for a seed; the same seed gives the same sequence.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: Jitter) -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter,
        }
    }

    #[test]
    fn grows_exponentially_to_the_cap() {
        let b = policy(Jitter::None);
        let mut rng = Rng::new(1);
        let delays: Vec<u64> = (0..9).map(|a| b.delay(a, &mut rng).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_in_its_range_and_spreads() {
        let mut rng = Rng::new(7);
        let full: Vec<Duration> = (0..200)
            .map(|_| policy(Jitter::Full).delay(3, &mut rng))
            .collect();
        assert!(full.iter().all(|d| *d <= Duration::from_secs(8)));
        assert!(full.iter().any(|d| *d < Duration::from_secs(2)));
        assert!(full.iter().any(|d| *d > Duration::from_secs(6)));
        for _ in 0..200 {
            let d = policy(Jitter::Equal).delay(3, &mut rng);
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
        }
    }

    #[test]
    fn attempts_grow_and_reset() {
        let mut attempts = Attempts::new(policy(Jitter::None));
        let mut rng = Rng::new(3);
        let secs: Vec<u64> = (0..3)
            .map(|_| attempts.next_delay(&mut rng).as_secs())
            .collect();
        assert_eq!((secs, attempts.failures()), (vec![1, 2, 4], 3));
        attempts.reset();
        assert_eq!(attempts.next_delay(&mut rng), Duration::from_secs(1));
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(policy(Jitter::Full).validate(), Ok(()));
        let zero = Backoff {
            initial: Duration::ZERO,
            ..policy(Jitter::Full)
        };
        assert_eq!(zero.validate(), Err(BackoffError::ZeroInitial));
        let inverted = Backoff {
            max: Duration::from_millis(10),
            ..policy(Jitter::Full)
        };
        assert_eq!(inverted.validate(), Err(BackoffError::MaxBelowInitial));
    }

    #[test]
    fn same_seed_same_delays() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for attempt in 0..10 {
            assert_eq!(
                policy(Jitter::Full).delay(attempt, &mut a),
                policy(Jitter::Full).delay(attempt, &mut b)
            );
        }
    }
}
