//! When a socket reconnects: the back-off state of one connection task, sans-I/O.
//!
//! - A connection counts as *healthy* once at least one subscription is confirmed and it has gone
//!   [`ReconnectPolicy::healthy_after`] (default 30 s) without a frame error. Only the loss of a
//!   healthy connection resets the back-off; a server that welcomes and then sends a poison frame
//!   (or disconnects at once) is retried on the growing back-off, never about once a second.
//! - The first attempt after a healthy connection is immediate (no jitter: the random wait was
//!   most of the events lost around a reconnect); later attempts wait `backoff.delay(n)`. The
//!   process-wide connect limiter still paces every attempt, so a herd stays guarded.

use std::time::{Duration, Instant};
use voxsig_protocol::backoff::{Attempts, Backoff, Rng};

/// The policy: the back-off and how long a connection must be healthy to reset it.
#[derive(Debug, Clone, Copy)]
pub struct ReconnectPolicy {
    /// Exponential back-off between failed attempts.
    pub backoff: Backoff,
    /// Confirmed and free of frame errors this long: the connection was healthy.
    pub healthy_after: Duration,
}

/// One connection task's reconnect state.
#[derive(Debug)]
pub struct Reconnect {
    healthy_after: Duration,
    attempts: Attempts,
}

impl Reconnect {
    /// A fresh state (the first connect is not delayed by this).
    pub fn new(policy: ReconnectPolicy) -> Self {
        Reconnect {
            healthy_after: policy.healthy_after,
            attempts: Attempts::new(policy.backoff),
        }
    }

    /// Consecutive unhealthy attempts so far.
    pub fn failures(&self) -> u32 {
        self.attempts.failures()
    }

    /// A connect attempt failed: the wait before the next.
    pub fn connect_failed(&mut self, rng: &mut Rng) -> Duration {
        self.attempts.next_delay(rng)
    }

    /// An established connection ended; `health` is what it saw. The wait before reconnecting:
    /// zero after a healthy connection, the growing back-off otherwise.
    pub fn ended(&mut self, health: &Health, now: Instant, rng: &mut Rng) -> Duration {
        if health.healthy(now, self.healthy_after) {
            self.attempts.reset();
            return Duration::ZERO;
        }
        self.attempts.next_delay(rng)
    }
}

/// What one connection saw, to tell whether it was healthy.
#[derive(Debug, Clone)]
pub struct Health {
    confirmed: bool,
    quiet_since: Instant,
    healthy: bool,
}

impl Health {
    /// A connection opened at `now`.
    pub fn new(now: Instant) -> Self {
        Health {
            confirmed: false,
            quiet_since: now,
            healthy: false,
        }
    }

    /// A subscription was confirmed.
    pub fn confirmed(&mut self, now: Instant, healthy_after: Duration) {
        self.latch(now, healthy_after);
        self.confirmed = true;
    }

    /// A frame could not be used: the quiet period starts again.
    pub fn trouble(&mut self, now: Instant, healthy_after: Duration) {
        self.latch(now, healthy_after);
        self.quiet_since = now;
    }

    fn latch(&mut self, now: Instant, healthy_after: Duration) {
        if self.confirmed && now.saturating_duration_since(self.quiet_since) >= healthy_after {
            self.healthy = true;
        }
    }

    /// Whether the connection was healthy at some point up to `now`.
    pub fn healthy(&self, now: Instant, healthy_after: Duration) -> bool {
        self.healthy
            || (self.confirmed && now.saturating_duration_since(self.quiet_since) >= healthy_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxsig_protocol::backoff::Jitter;

    const HEALTHY: Duration = Duration::from_secs(30);

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(8),
                jitter: Jitter::None,
            },
            healthy_after: HEALTHY,
        }
    }

    #[derive(Clone, Copy)]
    enum Step {
        /// A connection that confirmed at +c s, had a frame error at +e s, ended at +end s.
        Conn {
            confirm: Option<u64>,
            error: Option<u64>,
            end: u64,
        },
        ConnectFailed,
    }

    #[test]
    fn back_off_resets_only_after_a_healthy_connection() {
        use Step::*;
        let poison = Conn {
            confirm: Some(0),
            error: Some(0),
            end: 0,
        };
        let healthy = Conn {
            confirm: Some(1),
            error: None,
            end: 40,
        };
        let secs = Duration::from_secs;
        let table: Vec<(Step, Duration)> = vec![
            // Welcome then poison: the back-off grows as if the connects had failed.
            (poison, secs(1)),
            (poison, secs(2)),
            (poison, secs(4)),
            (poison, secs(8)),
            (poison, secs(8)),
            // A healthy connection: the next attempt is immediate and the count restarts.
            (healthy, secs(0)),
            (ConnectFailed, secs(1)),
            (ConnectFailed, secs(2)),
            (healthy, secs(0)),
            // Long but never confirmed: not healthy.
            (
                Conn {
                    confirm: None,
                    error: None,
                    end: 100,
                },
                secs(1),
            ),
            // Confirmed, but an error 10 s before the end and none 30 s long before it.
            (
                Conn {
                    confirm: Some(0),
                    error: Some(25),
                    end: 35,
                },
                secs(2),
            ),
            // Healthy for 30 s, then errors: it was healthy.
            (
                Conn {
                    confirm: Some(0),
                    error: Some(31),
                    end: 32,
                },
                secs(0),
            ),
        ];
        let mut r = Reconnect::new(policy());
        let mut rng = Rng::new(1);
        let t0 = Instant::now();
        for (i, (step, want)) in table.into_iter().enumerate() {
            let got = match step {
                ConnectFailed => r.connect_failed(&mut rng),
                Conn {
                    confirm,
                    error,
                    end,
                } => {
                    let mut h = Health::new(t0);
                    let mut events: Vec<(u64, bool)> = Vec::new();
                    events.extend(confirm.map(|c| (c, true)));
                    events.extend(error.map(|e| (e, false)));
                    events.sort();
                    for (at, is_confirm) in events {
                        let at = t0 + secs(at);
                        if is_confirm {
                            h.confirmed(at, HEALTHY);
                        } else {
                            h.trouble(at, HEALTHY);
                        }
                    }
                    r.ended(&h, t0 + secs(end), &mut rng)
                }
            };
            assert_eq!(got, want, "row {i}");
        }
    }
}
