//! One broadcast, received by several subscriptions, is published once per record it makes.
//!
//! Two agents of one account both receive every account broadcast; a user token also receives
//! the broadcasts of every account its user belongs to. A copy is the same event (the same
//! event id — `msg-<id>` for a message, else a hash of account, event name and payload — for
//! the same account) arriving on a *different* subscription within the window. A repeat on one
//! subscription is a real repeat (the platform sent it twice) and is published: a broadcast is
//! published as many times as the subscription that saw it most.
//!
//! Copies are told apart by what they render to, never by arrival order: a topic or key
//! template using `{user}` or `{label.NAME}` gives each subscription's copy its own record, so
//! the fingerprint carries the receiving subscription's class (`Router::receiver_class`, `0`
//! when the templates use nothing of the subscription). Copies of one class render to the same
//! topic and key, and only they are suppressed.
//!
//! Cost per event: the fingerprint is the event digest the live path computes once anyway (no
//! second pass over the payload), hashed once by a multiply-fold instead of SipHash; one probe
//! of one table finds, refreshes or inserts the entry; entries hold their sightings inline (no
//! allocation unless more than [`INLINE_SIGHTINGS`] subscriptions see one broadcast); expiry
//! is by time bucket (half a window each): an entry records the bucket it was last seen in,
//! one of [`SLOTS`] or more behind the current one is dead, and the dead are swept out in one
//! pass when a new bucket begins, instead of one removal per event.
//!
//! The table is shared by every connection task, so it is sharded to keep lock hold times
//! short, and bounded in entries so memory stays flat under any load: a full shard drops its
//! oldest bucket (what it forgot is counted: `voxsig_bridge_dedup_forgotten_total`), and a
//! sweep shrinks the table to what is left, so it is not kept at its busiest size.

use crate::catchup::ledger::{EventDigest, ReceiverClass};
use hashbrown::hash_table::{self, HashTable};
use smallvec::SmallVec;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Live time buckets: the current one and the two before it. A bucket covers half a window, so
/// a broadcast is remembered for at least one window after it was last seen and at most one and
/// a half.
const SLOTS: usize = 3;

/// Subscriptions whose sightings of one broadcast are kept without an allocation (two agents
/// of one account; a third allocates).
pub const INLINE_SIGHTINGS: usize = 2;

/// Bytes of table memory per entry of room ([`Dedup::capacity`]): a 56-byte entry (fingerprint,
/// inline sightings and bucket, checked by a test) and its control byte, at the table's 7/8
/// load. A table grows by doubling up to `max_entries` and shrinks when the dead are swept, so
/// the room stays within twice `max_entries` (tested) and the memory within
/// `2 * max_entries * ENTRY_BYTES`.
pub const ENTRY_BYTES: usize = 65;

/// A subscription's process-wide identity, for telling copies from repeats.
pub type SubscriptionKey = u32;

/// What [`Dedup::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Whether to publish the event.
    pub verdict: Verdict,
    /// Broadcasts forgotten to make room for this one (the table was at `max_entries`), before
    /// their window ended.
    pub forgotten: usize,
}

/// Whether to publish an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First sight, or a real repeat: publish.
    Publish,
    /// Another subscription's copy of a broadcast already published: suppress (and count).
    Duplicate,
}

/// What makes two arrivals copies of one record: the event's digest and the receiving
/// subscription's class.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Fingerprint {
    /// The digest's 128 bits as two words: a `u128` would align the table's entries to 16
    /// bytes and make each 16 bytes larger.
    bits: [u64; 2],
    class: ReceiverClass,
}

impl Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.bits[0]);
        state.write_u64(self.bits[1]);
        state.write_u64(self.class);
    }
}

impl Fingerprint {
    /// The fingerprint of an event received by a subscription of class `class`.
    pub fn new(digest: &EventDigest, class: ReceiverClass) -> Self {
        let bits = digest.bits();
        Fingerprint {
            bits: [bits as u64, (bits >> 64) as u64],
            class,
        }
    }

    fn hash64(&self) -> u64 {
        let mut h = DigestHasher::default();
        self.hash(&mut h);
        h.finish()
    }
}

/// A hasher for values that are hashes already (or small ids): a multiply-fold per word
/// instead of SipHash. Not for keys an attacker chooses freely: a fingerprint's bits are an
/// xxh3 digest of the payload or the platform's message id.
#[derive(Default)]
struct DigestHasher(u64);

const FOLD: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(FOLD);
    }

    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and its tag from the top ones: fold the
        // well-mixed top half down too.
        self.0 ^ (self.0 >> 32)
    }
}

/// One remembered broadcast: how often each subscription has seen it, and the time bucket it
/// was last seen in. The most any one subscription saw it is how often it was published (see
/// [`Dedup::check`]), so that is not stored.
struct Entry {
    fp: Fingerprint,
    seen: SmallVec<[(SubscriptionKey, u32); INLINE_SIGHTINGS]>,
    bucket: u64,
}

impl Entry {
    /// How often the broadcast was published: the most sightings of any one subscription.
    fn published(&self) -> u32 {
        self.seen.iter().map(|&(_, n)| n).max().unwrap_or(0)
    }
}

/// One shard: a single table (one probe per arrival, whatever its age), and how many of its
/// entries were last seen in each live bucket. An entry of a bucket [`SLOTS`] or more behind
/// the current one is dead: found again it starts afresh, and the dead are swept out (the
/// table shrunk) when a new bucket begins, or to make room.
#[derive(Default)]
struct Shard {
    table: HashTable<Entry>,
    /// Bucket `b`'s live entries are counted in `live[b % SLOTS]`, as `(b, count)`.
    live: [(u64, usize); SLOTS],
    /// Entries of expired buckets still in the table.
    dead: usize,
    /// The newest bucket seen: a clock read before another task's (a batch of frames that
    /// waited on a full buffer) counts as this one, so buckets never go back.
    newest: u64,
}

/// The shared dedup table.
pub struct Dedup {
    /// Length of a bucket in nanoseconds: half the window.
    bucket_nanos: u64,
    /// Bucket 0 starts here.
    origin: Instant,
    max_per_shard: usize,
    shards: Vec<Mutex<Shard>>,
}

impl Dedup {
    /// A table remembering broadcasts for `window` (up to one and a half), at most
    /// `max_entries` at once.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        let bucket_nanos = u64::try_from(window.as_nanos() / 2)
            .unwrap_or(u64::MAX)
            .max(1);
        Dedup {
            bucket_nanos,
            origin: Instant::now(),
            max_per_shard: max_entries.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn bucket(&self, now: Instant) -> u64 {
        let nanos = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        // Bucket numbers start at SLOTS so that an empty slot (bucket 0) is always stale.
        nanos / self.bucket_nanos + SLOTS as u64
    }

    /// Judges one arrival of the event with fingerprint `fp` on subscription `sub`.
    pub fn check(&self, fp: Fingerprint, sub: SubscriptionKey, now: Instant) -> Checked {
        let bucket = self.bucket(now);
        let hash = fp.hash64();
        // The shard from bits the table uses for neither its bucket index (the low bits) nor
        // its tags (the top seven).
        let shard = &self.shards[(hash >> 40) as usize % SHARDS];
        // A poisoned lock only means another task panicked mid-update; the table is still a
        // valid (if slightly stale) cache, so keep using it rather than spreading the panic.
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let (entry, forgotten) = shard.find(fp, hash, bucket, self.max_per_shard);
        // Published once per sighting of the subscription that saw it most: the first sight,
        // and every real repeat beyond what the other subscriptions saw.
        let published = entry.published();
        let count = match entry.seen.iter_mut().find(|(s, _)| *s == sub) {
            Some((_, n)) => {
                *n = n.saturating_add(1);
                *n
            }
            None => {
                entry.seen.push((sub, 1));
                1
            }
        };
        let verdict = if count > published {
            Verdict::Publish
        } else {
            Verdict::Duplicate
        };
        Checked { verdict, forgotten }
    }

    /// How many broadcasts are remembered now (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.table.len()))
            .sum()
    }

    /// Room in the tables, in entries: what their memory is sized by ([`ENTRY_BYTES`] each).
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.table.capacity()))
            .sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    /// The entry of `fp` (hashed `hash`), seen now in `bucket`: found and still live (moved to
    /// `bucket`), found dead (started afresh) or new; and how many live entries were forgotten
    /// to make room for it. One probe of the table, unless it is full.
    fn find(&mut self, fp: Fingerprint, hash: u64, bucket: u64, max: usize) -> (&mut Entry, usize) {
        let bucket = bucket.max(self.newest);
        self.newest = bucket;
        self.advance(bucket);
        let mut forgotten = 0;
        if self.table.len() >= max && self.table.find(hash, |e| e.fp == fp).is_none() {
            forgotten = self.make_room(bucket, max);
        }
        let current = (bucket % SLOTS as u64) as usize;
        let Shard {
            table, live, dead, ..
        } = self;
        let entry = match table.entry(hash, |e| e.fp == fp, |e| e.fp.hash64()) {
            hash_table::Entry::Occupied(found) => {
                let entry = found.into_mut();
                let was = entry.bucket;
                if was != bucket {
                    let slot = (was % SLOTS as u64) as usize;
                    if was + (SLOTS as u64) > bucket && live[slot].0 == was {
                        live[slot].1 -= 1;
                    } else {
                        // Dead: its window ended. A copy now is a new broadcast.
                        *dead -= 1;
                        entry.seen.clear();
                    }
                    live[current].1 += 1;
                    entry.bucket = bucket;
                }
                entry
            }
            hash_table::Entry::Vacant(vacant) => {
                live[current].1 += 1;
                vacant
                    .insert(Entry {
                        fp,
                        seen: SmallVec::new(),
                        bucket,
                    })
                    .into_mut()
            }
        };
        (entry, forgotten)
    }

    /// Buckets [`SLOTS`] or more behind `bucket` expire (their entries are dead); when
    /// `bucket` begins, the dead are swept out and the table shrinks to what is left.
    fn advance(&mut self, bucket: u64) {
        for slot in &mut self.live {
            if slot.0 + SLOTS as u64 <= bucket && slot.1 > 0 {
                self.dead += slot.1;
                slot.1 = 0;
            }
        }
        let current = (bucket % SLOTS as u64) as usize;
        if self.live[current].0 != bucket {
            self.live[current] = (bucket, 0);
            if self.dead > 0 {
                self.sweep(bucket);
            }
        }
    }

    /// Removes the dead entries and gives back the room a burst left.
    fn sweep(&mut self, bucket: u64) {
        self.table.retain(|e| e.bucket + (SLOTS as u64) > bucket);
        self.dead = 0;
        let len = self.table.len();
        if self.table.capacity() > 2 * len + MIN_ROOM {
            self.table.shrink_to(len, |e| e.fp.hash64());
        }
    }

    /// Room for one more below `max`: the dead go first; then the oldest live bucket (the
    /// current one last). Returns how many live entries were forgotten.
    fn make_room(&mut self, bucket: u64, max: usize) -> usize {
        if self.dead > 0 {
            self.sweep(bucket);
            if self.table.len() < max {
                return 0;
            }
        }
        let current = (bucket % SLOTS as u64) as usize;
        let oldest = (1..=SLOTS)
            .map(|back| (current + back) % SLOTS)
            .find(|&i| self.live[i].1 > 0);
        let Some(i) = oldest else {
            return 0;
        };
        let (gone, forgotten) = self.live[i];
        self.table.retain(|e| e.bucket != gone);
        self.live[i].1 = 0;
        forgotten
    }

    /// Entries counted live and dead: every entry of the table, once (checked by the tests).
    #[cfg(test)]
    fn counted(&self) -> usize {
        self.live.iter().map(|(_, n)| n).sum::<usize>() + self.dead
    }
}

/// Room a shard's table keeps after a sweep, at least (in entries): a quiet shard does not
/// reallocate its first few entries every bucket.
const MIN_ROOM: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Checks the event `event` with `data` for `account` (class 0) arriving on `sub`.
    fn check(d: &Dedup, account: u64, event: &str, data: &[u8], sub: u32, at: Instant) -> Verdict {
        let digest = EventDigest::of(account, event, None, data);
        d.check(Fingerprint::new(&digest, 0), sub, at).verdict
    }

    #[test]
    fn copies_on_other_subscriptions_are_suppressed_repeats_pass() {
        let d = Dedup::new(ms(2000), 1000);
        let t = Instant::now();
        let e = "message.created";
        let x = b"{\"id\":1}";
        assert_eq!(check(&d, 1, e, x, 10, t), Verdict::Publish);
        assert_eq!(check(&d, 1, e, x, 11, t + ms(5)), Verdict::Duplicate);
        assert_eq!(check(&d, 1, e, x, 12, t + ms(9)), Verdict::Duplicate);
        // The platform really sent it twice: the first subscription sees it again, so do others.
        assert_eq!(check(&d, 1, e, x, 10, t + ms(20)), Verdict::Publish);
        assert_eq!(check(&d, 1, e, x, 11, t + ms(25)), Verdict::Duplicate);
        // A copy arriving first on another subscription is published by whichever comes first.
        assert_eq!(check(&d, 1, e, x, 12, t + ms(30)), Verdict::Duplicate);
        assert_eq!(check(&d, 1, e, x, 12, t + ms(31)), Verdict::Publish);
    }

    #[test]
    fn account_event_and_payload_all_matter() {
        let d = Dedup::new(ms(2000), 1000);
        let t = Instant::now();
        assert_eq!(
            check(&d, 1, "contact.updated", b"{}", 1, t),
            Verdict::Publish
        );
        assert_eq!(
            check(&d, 2, "contact.updated", b"{}", 2, t),
            Verdict::Publish
        );
        assert_eq!(
            check(&d, 1, "contact.created", b"{}", 2, t),
            Verdict::Publish
        );
        assert_eq!(
            check(&d, 1, "contact.updated", b"{ }", 2, t),
            Verdict::Publish
        );
        assert_eq!(
            check(&d, 1, "contact.updated", b"{}", 2, t),
            Verdict::Duplicate
        );
    }

    #[test]
    fn a_message_is_its_message_id_on_its_account() {
        let d = Dedup::new(ms(2000), 1000);
        let t = Instant::now();
        let msg = |account, id| EventDigest::of(account, "message.created", Some(id), b"{}");
        let fp = |digest: EventDigest| Fingerprint::new(&digest, 0);
        assert_eq!(d.check(fp(msg(1, 7)), 1, t).verdict, Verdict::Publish);
        assert_eq!(d.check(fp(msg(1, 7)), 2, t).verdict, Verdict::Duplicate);
        assert_eq!(
            d.check(fp(msg(2, 7)), 2, t).verdict,
            Verdict::Publish,
            "per account"
        );
        assert_eq!(d.check(fp(msg(1, 8)), 2, t).verdict, Verdict::Publish);
    }

    #[test]
    fn copies_rendering_to_different_records_are_each_published() {
        // Issue 14: with `{user}` in the topic, which user's topic got the broadcast depended
        // on which copy came first. Each class (rendered topic and key) keeps its own copy.
        let d = Dedup::new(ms(2000), 1000);
        let t = Instant::now();
        let digest = EventDigest::of(1, "conversation.updated", None, b"{\"id\":1}");
        let (alice, bob) = (Fingerprint::new(&digest, 11), Fingerprint::new(&digest, 22));
        assert_eq!(d.check(bob, 2, t).verdict, Verdict::Publish);
        assert_eq!(d.check(alice, 1, t).verdict, Verdict::Publish);
        assert_eq!(
            d.check(alice, 3, t).verdict,
            Verdict::Duplicate,
            "same class: a copy"
        );
    }

    #[test]
    fn outside_the_window_a_copy_is_a_new_broadcast() {
        let d = Dedup::new(ms(100), 1000);
        let t = Instant::now();
        assert_eq!(check(&d, 1, "e", b"x", 1, t), Verdict::Publish);
        assert_eq!(check(&d, 1, "e", b"x", 2, t + ms(150)), Verdict::Publish);
        assert_eq!(d.len(), 1);
        // Expiry is lazy, per shard and bucket: the next check on the same shard sweeps.
        assert_eq!(check(&d, 1, "e", b"x", 1, t + ms(400)), Verdict::Publish);
        assert_eq!(d.len(), 1, "expired entries are gone");
        books_balance(&d);
    }

    #[test]
    fn within_the_window_a_copy_is_remembered_while_it_keeps_coming() {
        let d = Dedup::new(ms(100), 1000);
        let t = Instant::now();
        assert_eq!(check(&d, 1, "e", b"x", 1, t), Verdict::Publish);
        // Seen every 90 ms: always within a window of the last sighting.
        for i in 1..10u64 {
            assert_eq!(
                check(&d, 1, "e", b"x", 2 + i as u32, t + ms(90 * i)),
                Verdict::Duplicate,
                "{i}"
            );
        }
        books_balance(&d);
    }

    #[test]
    fn a_clock_read_before_another_task_s_never_moves_a_bucket_back() {
        // A task whose clock reading is seconds old (its batch waited on a full buffer) checks
        // after others moved on: counted as now, the books stay balanced and nothing panics.
        // Buckets of 50 ms: 0-49 seen in the bucket at 300 ms, 50-99 at 400 ms, then all of
        // them again with a reading from time 0 (whose bucket shares a slot with 300 ms's).
        let d = Dedup::new(ms(100), 1000);
        let t = Instant::now();
        for (at, ids) in [(300, 0..50u64), (400, 50..100)] {
            for i in ids {
                check(&d, 1, "e", &i.to_le_bytes(), 1, t + ms(at));
            }
        }
        for i in 0..100u64 {
            let stale = check(&d, 1, "e", &i.to_le_bytes(), 2, t);
            assert_eq!(
                stale,
                Verdict::Duplicate,
                "{i}: within the window of its sighting"
            );
        }
        for i in 0..100u64 {
            check(&d, 1, "e", &i.to_le_bytes(), 3, t + ms(450));
        }
        books_balance(&d);
        assert_eq!(d.len(), 100);
    }

    #[test]
    fn memory_is_bounded_by_max_entries_and_what_is_forgotten_is_counted() {
        let d = Dedup::new(Duration::from_secs(3600), SHARDS * 4);
        let t = Instant::now();
        let mut forgotten = 0;
        for i in 0..10_000u64 {
            let digest = EventDigest::of(i, "e", None, &i.to_le_bytes());
            forgotten += d.check(Fingerprint::new(&digest, 0), 1, t).forgotten;
        }
        assert!(d.len() <= SHARDS * 4, "{}", d.len());
        assert_eq!(
            forgotten + d.len(),
            10_000,
            "every entry is remembered or counted"
        );
        books_balance(&d);
    }

    #[test]
    fn an_entry_takes_56_bytes() {
        // ENTRY_BYTES is this plus the control byte, at the table's 7/8 load.
        assert_eq!(std::mem::size_of::<Entry>(), 56);
        assert_eq!(ENTRY_BYTES, (56 + 1) * 8 / 7);
    }

    /// Every entry is counted once, live in its bucket or dead.
    fn books_balance(d: &Dedup) {
        for shard in &d.shards {
            let shard = shard.lock().unwrap();
            assert_eq!(shard.counted(), shard.table.len());
        }
    }

    #[test]
    fn a_burst_s_tables_stay_within_twice_max_entries_and_are_given_back() {
        // Buckets of 50 ms, room for 1,000 broadcasts per shard; 20 buckets of 4,000 new
        // broadcasts each (every bucket over the bound), then a quiet spell.
        let max = SHARDS * 1_000;
        let d = Dedup::new(ms(100), max);
        let t = Instant::now();
        let mut n = 0u64;
        for bucket in 0..20u64 {
            for i in 0..4_000u64 {
                n += 1;
                let at = t + ms(bucket * 50) + Duration::from_micros(i * 10);
                check(&d, 1, "e", &n.to_le_bytes(), 1, at);
            }
            assert!(d.len() <= max, "bucket {bucket}: {} remembered", d.len());
            assert!(
                d.capacity() <= 2 * max,
                "bucket {bucket}: room for {} (kept tables as large as their busiest bucket)",
                d.capacity()
            );
        }
        // Quiet: a few broadcasts, a second later, on every shard.
        for _ in 0..200 {
            n += 1;
            check(&d, 1, "e", &n.to_le_bytes(), 1, t + ms(2_000));
        }
        assert!(d.len() <= 200);
        assert!(
            d.capacity() <= 2 * 200 + SHARDS * SLOTS * 4,
            "the burst's memory is given back: room for {}",
            d.capacity()
        );
        books_balance(&d);
    }

    #[test]
    fn many_subscriptions_of_one_broadcast_spill_beyond_the_inline_sightings() {
        let d = Dedup::new(ms(2000), 1000);
        let t = Instant::now();
        assert_eq!(check(&d, 1, "e", b"x", 0, t), Verdict::Publish);
        for sub in 1..50 {
            assert_eq!(check(&d, 1, "e", b"x", sub, t), Verdict::Duplicate);
        }
        assert_eq!(check(&d, 1, "e", b"x", 0, t), Verdict::Publish, "a repeat");
        books_balance(&d);
    }
}
