//! One broadcast, received by several subscriptions, is published once.
//!
//! Two agents of one account both receive every account broadcast; a user token also receives
//! the broadcasts of every account its user belongs to. A copy is the same event name with a
//! byte-identical payload for the same account, arriving on a *different* subscription within
//! the window. A repeat on one subscription is a real repeat (the platform sent it twice) and is
//! published: a broadcast is published as many times as the subscription that saw it most.
//!
//! The table is shared by every connection task, so it is sharded by account to keep lock hold
//! times short, and bounded in entries so memory stays flat under any load.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_128;

const SHARDS: usize = 16;

/// A subscription's process-wide identity, for telling copies from repeats.
pub type SubscriptionKey = u32;

/// Whether to publish an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First sight, or a real repeat: publish.
    Publish,
    /// Another subscription's copy of a broadcast already published: suppress (and count).
    Duplicate,
}

#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct Fingerprint {
    account: u64,
    digest: u128,
}

struct Entry {
    /// How often each subscription has seen it.
    seen: Vec<(SubscriptionKey, u32)>,
    /// How often it was published.
    published: u32,
    last_seen: Instant,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Fingerprint, Entry>,
    /// Insertion order with times, to expire and to evict the oldest.
    order: VecDeque<(Instant, Fingerprint)>,
}

/// The shared dedup table.
pub struct Dedup {
    window: Duration,
    max_per_shard: usize,
    shards: Vec<Mutex<Shard>>,
}

impl Dedup {
    /// A table remembering broadcasts for `window`, at most `max_entries` at once.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Dedup {
            window,
            max_per_shard: max_entries.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// Judges one arrival of `event` with `data` for `account` on subscription `sub`.
    pub fn check(
        &self,
        account: u64,
        event: &str,
        data: &[u8],
        sub: SubscriptionKey,
        now: Instant,
    ) -> Verdict {
        let digest = xxh3_128(data) ^ u128::from(xxhash_rust::xxh3::xxh3_64(event.as_bytes()));
        let fp = Fingerprint { account, digest };
        let shard = &self.shards[(account as usize) % SHARDS];
        // A poisoned lock only means another task panicked mid-update; the table is still a
        // valid (if slightly stale) cache, so keep using it rather than spreading the panic.
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        shard.expire(now, self.window);
        let fresh = !shard.entries.contains_key(&fp);
        if fresh && shard.entries.len() >= self.max_per_shard {
            shard.evict_oldest();
        }
        let entry = shard.entries.entry(fp).or_insert_with(|| Entry {
            seen: Vec::with_capacity(2),
            published: 0,
            last_seen: now,
        });
        entry.last_seen = now;
        let count = match entry.seen.iter_mut().find(|(s, _)| *s == sub) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                entry.seen.push((sub, 1));
                1
            }
        };
        let verdict = if count > entry.published {
            entry.published = count;
            Verdict::Publish
        } else {
            Verdict::Duplicate
        };
        if fresh {
            shard.order.push_back((now, fp));
        }
        verdict
    }

    /// How many broadcasts are remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.entries.len()))
            .sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((inserted, fp)) = self.order.front().copied() {
            if now.saturating_duration_since(inserted) <= window {
                break;
            }
            self.order.pop_front();
            let last_seen = self.entries.get(&fp).map(|e| e.last_seen);
            match last_seen {
                // Still being seen: keep it, re-queued at its last sighting.
                Some(last) if now.saturating_duration_since(last) <= window => {
                    self.order.push_back((last, fp))
                }
                _ => {
                    self.entries.remove(&fp);
                }
            }
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((_, fp)) = self.order.pop_front() {
            self.entries.remove(&fp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn copies_on_other_subscriptions_are_suppressed_repeats_pass() {
        let d = Dedup::new(ms(2000), 1000);
        let t = Instant::now();
        assert_eq!(
            d.check(1, "message.created", b"{\"id\":1}", 10, t),
            Verdict::Publish
        );
        assert_eq!(
            d.check(1, "message.created", b"{\"id\":1}", 11, t + ms(5)),
            Verdict::Duplicate
        );
        assert_eq!(
            d.check(1, "message.created", b"{\"id\":1}", 12, t + ms(9)),
            Verdict::Duplicate
        );
        // The platform really sent it twice: the first subscription sees it again, so do others.
        assert_eq!(
            d.check(1, "message.created", b"{\"id\":1}", 10, t + ms(20)),
            Verdict::Publish
        );
        assert_eq!(
            d.check(1, "message.created", b"{\"id\":1}", 11, t + ms(25)),
            Verdict::Duplicate
        );
        // A copy arriving first on another subscription is published by whichever comes first.
        assert_eq!(
            d.check(1, "message.created", b"{\"id\":1}", 12, t + ms(30)),
            Verdict::Duplicate
        );
        assert_eq!(
            d.check(1, "message.created", b"{\"id\":1}", 12, t + ms(31)),
            Verdict::Publish
        );
    }

    #[test]
    fn account_event_and_payload_all_matter() {
        let d = Dedup::new(ms(2000), 1000);
        let t = Instant::now();
        assert_eq!(d.check(1, "contact.updated", b"{}", 1, t), Verdict::Publish);
        assert_eq!(d.check(2, "contact.updated", b"{}", 2, t), Verdict::Publish);
        assert_eq!(d.check(1, "contact.created", b"{}", 2, t), Verdict::Publish);
        assert_eq!(
            d.check(1, "contact.updated", b"{ }", 2, t),
            Verdict::Publish
        );
        assert_eq!(
            d.check(1, "contact.updated", b"{}", 2, t),
            Verdict::Duplicate
        );
    }

    #[test]
    fn outside_the_window_a_copy_is_a_new_broadcast() {
        let d = Dedup::new(ms(100), 1000);
        let t = Instant::now();
        assert_eq!(d.check(1, "e", b"x", 1, t), Verdict::Publish);
        assert_eq!(d.check(1, "e", b"x", 2, t + ms(150)), Verdict::Publish);
        assert_eq!(d.len(), 1);
        // Expiry is lazy, per shard: the next check on the same account sweeps.
        d.check(1, "e", b"y", 1, t + ms(400));
        assert_eq!(d.len(), 1, "expired entries are gone");
    }

    #[test]
    fn memory_is_bounded_by_max_entries() {
        let d = Dedup::new(Duration::from_secs(3600), SHARDS * 4);
        let t = Instant::now();
        for i in 0..10_000u64 {
            d.check(i, "e", &i.to_le_bytes(), 1, t);
        }
        assert!(d.len() <= SHARDS * 4, "{}", d.len());
    }
}
