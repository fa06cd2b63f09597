//! What was published: per account and conversation, the message ids already out (bounded), so
//! a message is published once whether it arrives live, from a catch-up, or both; and the stable
//! event id every record carries.
//!
//! Both paths ask [`Ledger::claim`] before publishing a `message.created`: the first to claim a
//! message id publishes it, the other counts a duplicate. Memory is bounded: per conversation
//! the [`IDS_PER_CONVERSATION`] highest ids, per account [`Ledger::new`]'s `max_conversations`
//! most recently active conversations and at most [`IDS_PER_ACCOUNT`] ids in all (about 2 MB an
//! account at most; the least recently active conversations go first).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use voxsig_sinks::{EventId, Pushed};
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64};

/// Message ids remembered per conversation.
pub const IDS_PER_CONVERSATION: usize = 64;

/// Message ids remembered per account, over all its conversations.
pub const IDS_PER_ACCOUNT: usize = 65_536;

const SHARDS: usize = 16;

/// The stable id of an event: `msg-<id>` for a message event with a message id (the
/// platform's own id, the same live and over REST), otherwise `h-<hex>`, a 128-bit hash of the
/// account, the event name and the payload bytes.
pub fn event_id(account: u64, event: &str, message_id: Option<u64>, data: &[u8]) -> String {
    EventDigest::of(account, event, message_id, data).id()
}

/// What identifies an event, computed once per event (one pass over the payload at most): the
/// event id every record carries ([`EventDigest::id`]) and the key the live path deduplicates
/// copies by ([`EventDigest::bits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventDigest {
    /// A `message.created` with the platform's message id: `msg-<id>`.
    Message {
        /// The event's account (not part of the id, part of the dedup key).
        account: u64,
        /// The platform's message id.
        id: u64,
    },
    /// Any other event: a 128-bit hash of the account, the event name and the payload.
    Hash(u128),
}

impl EventDigest {
    /// The digest of one event.
    pub fn of(account: u64, event: &str, message_id: Option<u64>, data: &[u8]) -> Self {
        match message_id {
            Some(id) if event == "message.created" => EventDigest::Message { account, id },
            _ => {
                // One pass over the payload, seeded with the account and the event name.
                let seed = xxh3_64(event.as_bytes()) ^ account.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                EventDigest::Hash(xxh3_128_with_seed(data, seed))
            }
        }
    }

    /// The event id a record carries: `msg-<id>` or `h-<32 hex digits>` once written
    /// (persisted and visible: stable), kept unwritten until a sink writes it.
    pub fn event_id(&self) -> EventId {
        match *self {
            EventDigest::Message { id, .. } => EventId::Message(id),
            EventDigest::Hash(digest) => EventId::Hash(digest),
        }
    }

    /// The event id as text.
    pub fn id(&self) -> String {
        self.event_id().to_string()
    }

    /// 128 bits telling events apart, account included: two events share them only if they
    /// share the event id and the account. The two kinds cannot meet: a message's bits have
    /// the top bit set and 63 bits of account, a hash has its top bit cleared.
    pub fn bits(&self) -> u128 {
        match *self {
            EventDigest::Message { account, id } => {
                (1u128 << 127) | (u128::from(account & (u64::MAX >> 1)) << 64) | u128::from(id)
            }
            EventDigest::Hash(digest) => digest & (u128::MAX >> 1),
        }
    }
}

/// Who a claim is for: copies of a message received by subscriptions whose records render to
/// different topics or keys are different records (see `Router::receiver_class`), so each
/// class claims the message for itself. `0` when the templates use nothing of the subscription.
pub type ReceiverClass = u64;

/// A message id restored from a checkpoint: published, whatever the class.
const ANY_CLASS: ReceiverClass = u64::MAX;

#[derive(Debug, Default, Clone)]
struct Conversation {
    /// (message id, receiver class) pairs published.
    ids: BTreeSet<(u64, ReceiverClass)>,
    /// Recency, for eviction.
    touched: u64,
}

impl Conversation {
    fn high(&self) -> Option<u64> {
        self.ids.last().map(|(id, _)| *id)
    }
}

#[derive(Debug, Default)]
struct Account {
    conversations: HashMap<u64, Conversation>,
    /// Claims not safe yet: held (no record accepted yet) or accepted by the buffer but not
    /// safe there (see [`Ledger::checkpoint`]).
    unsafe_claims: UnsafeClaims,
    /// The highest message id published on the account.
    high: Option<u64>,
    /// The last live event received (Unix ms), for the checkpoint.
    last_event_ms: i64,
    tick: u64,
    /// Ids held over all conversations.
    ids: usize,
}

/// A claim's key in [`UnsafeClaims`]: (conversation, message id, receiver class).
type ClaimKey = (u64, u64, ReceiverClass);

/// One account's claims whose records could still be lost by a crash of the process.
#[derive(Debug, Default)]
struct UnsafeClaims {
    /// The buffer's number of the record (`None` while the claim is held, before the buffer
    /// took it) and where a catch-up must start listing to find the message again (Unix ms).
    claims: HashMap<ClaimKey, (Option<u64>, i64)>,
    /// Accepted claims are pruned (the safe ones forgotten) when there are this many.
    prune_at: usize,
}

/// Accepted claims pruned at once, at least: a prune walks them all.
const PRUNE_AT_LEAST: usize = 1024;

impl UnsafeClaims {
    /// Forgets the claims whose records are numbered below `safe_below`.
    fn prune(&mut self, safe_below: u64) {
        self.claims
            .retain(|_, (seq, _)| seq.is_none_or(|seq| seq >= safe_below));
        self.prune_at = (2 * self.claims.len()).max(PRUNE_AT_LEAST);
        if self.claims.is_empty() && self.claims.capacity() > PRUNE_AT_LEAST {
            self.claims.shrink_to_fit();
        }
    }
}

/// What the checkpoint records, and how many messages in it are counted as unpublished
/// because their records were not safe yet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Per account.
    pub accounts: BTreeMap<u64, AccountCheckpoint>,
    /// Messages claimed whose records were not safe: a restart's catch-up fetches them again.
    pub unsafe_messages: usize,
}

/// What was published, shared by the live and the catch-up paths.
#[derive(Debug)]
pub struct Ledger {
    max_conversations: usize,
    shards: Vec<Mutex<HashMap<u64, Account>>>,
    /// Whether unsafe claims are kept: only a checkpoint asks for them (and prunes them).
    checkpointed: AtomicBool,
}

/// A message claimed for publishing whose record is not in the buffer yet. Dropped without
/// [`Held::accepted`] or [`Held::keep`] (the buffer closed at shutdown, a fill cancelled, a
/// panic), it releases the claim: the checkpoint never counts as published a message that was
/// not, and the next catch-up fetches it again.
#[must_use = "dropping a held claim releases it"]
#[derive(Debug)]
pub struct Held<'a> {
    ledger: &'a Ledger,
    /// (account, class, conversation, id); `None` once kept, or for nothing to release.
    claim: Option<(u64, ReceiverClass, u64, u64)>,
}

impl Held<'_> {
    /// A claim on nothing (publishing without a ledger): keeping or dropping it changes nothing.
    pub fn none(ledger: &Ledger) -> Held<'_> {
        Held {
            ledger,
            claim: None,
        }
    }

    /// Its record was dropped for good (counted): the claim stands.
    pub fn keep(mut self) {
        if let Some((account, class, conversation, id)) = self.claim.take() {
            self.ledger.settle(account, (conversation, id, class));
        }
    }

    /// Its record was pushed into the buffer. Held as number `seq`, the claim stands and the
    /// message counts as published in a checkpoint once the buffer says the record is safe
    /// (`safe_below()` passed `seq`: asked when the account's unsafe claims need pruning);
    /// dropped (counted), it stands at once.
    pub fn accepted(mut self, pushed: Pushed, safe_below: impl FnOnce() -> u64) {
        let Some((account, class, conversation, id)) = self.claim.take() else {
            return;
        };
        let key = (conversation, id, class);
        match pushed {
            Pushed::Held(seq) => self.ledger.accepted(account, key, seq, safe_below),
            Pushed::Dropped => self.ledger.settle(account, key),
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some((account, class, conversation, id)) = self.claim.take() {
            self.ledger.release(account, class, conversation, id);
        }
    }
}

/// A claim's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Not published before: publish it.
    First,
    /// Already published (live or replayed): skip.
    Duplicate,
}

/// What the checkpoint keeps of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCheckpoint {
    /// The last event received live (Unix ms); 0 when none.
    pub last_event_ms: i64,
    /// The highest message id published on the account.
    pub high: Option<u64>,
    /// Per conversation (display id), the highest message id published.
    pub conversations: BTreeMap<u64, u64>,
}

impl AccountCheckpoint {
    /// Records message `id` of `conversation`, created or received at `since_ms`, as not
    /// published: resumed from before it, listed from `since_ms` on.
    fn unpublished(&mut self, conversation: u64, id: u64, since_ms: i64) {
        let before = id.saturating_sub(1);
        self.conversations
            .entry(conversation)
            .and_modify(|high| *high = (*high).min(before))
            .or_insert(before);
        // Never 0 or below: a restart opens no gap for an account without a last event.
        let since_ms = since_ms.max(1);
        self.last_event_ms = if self.last_event_ms > 0 {
            self.last_event_ms.min(since_ms)
        } else {
            since_ms
        };
    }
}

impl Ledger {
    /// A ledger remembering at most `max_conversations` conversations per account.
    pub fn new(max_conversations: usize) -> Self {
        Ledger {
            max_conversations: max_conversations.max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            checkpointed: AtomicBool::new(false),
        }
    }

    /// Checkpoints will be written ([`Ledger::checkpoint`]): from now on, claims whose records
    /// are not safe yet are kept, for the checkpoint to count as unpublished. Without
    /// checkpoints nothing asks for them, so nothing is kept.
    pub fn checkpointed(&self) {
        self.checkpointed.store(true, Ordering::Relaxed);
    }

    fn shard(&self, account: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Account>> {
        // A poisoned lock only means another task panicked mid-update; the data is still a
        // valid cache.
        self.shards[(account as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Claims message `id` of `conversation` on `account` for publishing (templates that use
    /// nothing of the receiving subscription: class 0).
    pub fn claim(&self, account: u64, conversation: u64, id: u64) -> Claim {
        self.claim_for(account, 0, conversation, id)
    }

    /// Claims message `id` of `conversation` on `account` for publishing to the records of
    /// receiver class `class`.
    pub fn claim_for(
        &self,
        account: u64,
        class: ReceiverClass,
        conversation: u64,
        id: u64,
    ) -> Claim {
        let mut shard = self.shard(account);
        self.claim_in(shard.entry(account).or_default(), class, conversation, id)
    }

    /// [`Ledger::claim_for`] on the account's entry, under its shard's lock.
    fn claim_in(
        &self,
        acc: &mut Account,
        class: ReceiverClass,
        conversation: u64,
        id: u64,
    ) -> Claim {
        acc.tick += 1;
        let tick = acc.tick;
        let conv = acc.conversations.entry(conversation).or_default();
        conv.touched = tick;
        if conv.ids.contains(&(id, class)) || conv.ids.contains(&(id, ANY_CLASS)) {
            return Claim::Duplicate;
        }
        conv.ids.insert((id, class));
        if conv.ids.len() > IDS_PER_CONVERSATION {
            conv.ids.pop_first();
        } else {
            acc.ids += 1;
        }
        acc.high = Some(acc.high.map_or(id, |h| h.max(id)));
        let len = acc.conversations.len();
        if len > self.max_conversations + self.max_conversations / 8 || acc.ids > IDS_PER_ACCOUNT {
            evict(acc, self.max_conversations);
        }
        Claim::First
    }

    /// Claims message `id` like [`Ledger::claim_for`], held until its record is accepted: `None`
    /// when it was published already. Until its record is safe, a checkpoint resumes the
    /// conversation before it and lists the account's conversations from `since_ms` (when the
    /// message was created or received, Unix ms) at the latest.
    pub fn hold(
        &self,
        account: u64,
        class: ReceiverClass,
        conversation: u64,
        id: u64,
        since_ms: i64,
    ) -> Option<Held<'_>> {
        let mut shard = self.shard(account);
        let acc = shard.entry(account).or_default();
        match self.claim_in(acc, class, conversation, id) {
            Claim::Duplicate => None,
            Claim::First => {
                // Under the same lock as the claim: no checkpoint sees one without the other.
                if self.checkpointed.load(Ordering::Relaxed) {
                    acc.unsafe_claims
                        .claims
                        .insert((conversation, id, class), (None, since_ms));
                }
                Some(Held {
                    ledger: self,
                    claim: Some((account, class, conversation, id)),
                })
            }
        }
    }

    /// A held claim's record was taken by the buffer as number `seq`.
    fn accepted(&self, account: u64, key: ClaimKey, seq: u64, safe_below: impl FnOnce() -> u64) {
        if !self.checkpointed.load(Ordering::Relaxed) {
            return;
        }
        let mut shard = self.shard(account);
        let Some(acc) = shard.get_mut(&account) else {
            return;
        };
        let unsafe_claims = &mut acc.unsafe_claims;
        if let Some((at, _)) = unsafe_claims.claims.get_mut(&key) {
            *at = Some(seq);
        }
        if unsafe_claims.claims.len() >= unsafe_claims.prune_at {
            unsafe_claims.prune(safe_below());
        }
    }

    /// A held claim stands for good.
    fn settle(&self, account: u64, key: ClaimKey) {
        if !self.checkpointed.load(Ordering::Relaxed) {
            return;
        }
        if let Some(acc) = self.shard(account).get_mut(&account) {
            acc.unsafe_claims.claims.remove(&key);
        }
    }

    /// Forgets a claim whose record was never accepted.
    fn release(&self, account: u64, class: ReceiverClass, conversation: u64, id: u64) {
        let mut shard = self.shard(account);
        let Some(acc) = shard.get_mut(&account) else {
            return;
        };
        acc.unsafe_claims.claims.remove(&(conversation, id, class));
        let Some(conv) = acc.conversations.get_mut(&conversation) else {
            return;
        };
        if conv.ids.remove(&(id, class)) {
            acc.ids = acc.ids.saturating_sub(1);
        }
        if acc.high == Some(id) {
            acc.high = acc
                .conversations
                .values()
                .filter_map(Conversation::high)
                .max();
        }
    }

    /// A live event arrived for `account` at `at_ms`.
    pub fn received(&self, account: u64, at_ms: i64) {
        let mut shard = self.shard(account);
        let acc = shard.entry(account).or_default();
        acc.last_event_ms = acc.last_event_ms.max(at_ms);
    }

    /// The highest message id published on the account.
    pub fn account_high(&self, account: u64) -> Option<u64> {
        self.shard(account).get(&account).and_then(|a| a.high)
    }

    /// Where to resume a conversation after a gap whose account watermark was `watermark` (the
    /// account's highest published id when the gap opened): the highest id of the conversation
    /// published up to the watermark; else the watermark. `None` when nothing had been
    /// published on the account before the gap (fetch from the start, filtered by time): ids
    /// claimed since were claimed after the gap opened and say nothing about before it.
    pub fn resume_after(
        &self,
        account: u64,
        conversation: u64,
        watermark: Option<u64>,
    ) -> Option<u64> {
        let shard = self.shard(account);
        let known = shard
            .get(&account)
            .and_then(|a| a.conversations.get(&conversation));
        match (known, watermark) {
            (Some(conv), Some(w)) => conv
                .ids
                .range(..=(w, ANY_CLASS))
                .next_back()
                .map(|(id, _)| *id)
                .or(Some(w)),
            (_, w) => w,
        }
    }

    /// The checkpoint of every account, counting as published only the messages whose records
    /// are safe: numbered below `safe_below` (`BufferWriter::safe_below`), or dropped for good.
    /// A message whose record could still be lost by a crash (held, or in the memory buffer
    /// unacknowledged, or in the disk buffer's unwritten batch) is recorded as not published:
    /// its conversation resumes before it, and the account's last event is no later than when
    /// it was created, so that the next start's catch-up lists its conversation and fetches it
    /// again (a duplicate if it was delivered after all, never a loss).
    pub fn checkpoint(&self, safe_below: u64) -> Snapshot {
        let mut out = Snapshot::default();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (id, acc) in shard.iter_mut() {
                acc.unsafe_claims.prune(safe_below);
                let mut cp = AccountCheckpoint {
                    last_event_ms: acc.last_event_ms,
                    high: acc.high,
                    conversations: acc
                        .conversations
                        .iter()
                        .filter_map(|(c, conv)| conv.high().map(|h| (*c, h)))
                        .collect(),
                };
                for (&(conversation, message, _), &(_, since_ms)) in &acc.unsafe_claims.claims {
                    cp.unpublished(conversation, message, since_ms);
                }
                out.unsafe_messages += acc.unsafe_claims.claims.len();
                out.accounts.insert(*id, cp);
            }
        }
        out
    }

    /// Loads a checkpoint (at start).
    pub fn restore(&self, checkpoint: &BTreeMap<u64, AccountCheckpoint>) {
        for (id, cp) in checkpoint {
            let mut shard = self.shard(*id);
            let acc = shard.entry(*id).or_default();
            acc.last_event_ms = acc.last_event_ms.max(cp.last_event_ms);
            acc.high = acc.high.max(cp.high);
            for (c, high) in cp.conversations.iter().take(self.max_conversations) {
                acc.tick += 1;
                let tick = acc.tick;
                let conv = acc.conversations.entry(*c).or_default();
                if conv.ids.insert((*high, ANY_CLASS)) {
                    acc.ids += 1;
                }
                conv.touched = tick;
            }
        }
    }
}

/// Keeps the most recently touched conversations: at most `keep`, holding at most 7/8 of
/// [`IDS_PER_ACCOUNT`] ids.
fn evict(acc: &mut Account, keep: usize) {
    let mut by_recency: Vec<(u64, usize)> = acc
        .conversations
        .values()
        .map(|c| (c.touched, c.ids.len()))
        .collect();
    by_recency.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
    let budget = IDS_PER_ACCOUNT / 8 * 7;
    let (mut kept, mut ids, mut cut) = (0usize, 0usize, 0u64);
    for (touched, n) in by_recency {
        if kept == keep || ids + n > budget {
            cut = touched + 1;
            break;
        }
        kept += 1;
        ids += n;
    }
    if cut > 0 {
        acc.conversations.retain(|_, c| c.touched >= cut);
    }
    acc.ids = acc.conversations.values().map(|c| c.ids.len()).sum();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_claimed_once_by_either_path() {
        let l = Ledger::new(100);
        assert_eq!(l.claim(1, 10, 500), Claim::First);
        assert_eq!(l.claim(1, 10, 500), Claim::Duplicate);
        assert_eq!(l.claim(1, 11, 500), Claim::First, "per conversation");
        assert_eq!(l.claim(2, 10, 500), Claim::First, "per account");
        assert_eq!(l.account_high(1), Some(500));
    }

    #[test]
    fn a_held_claim_is_released_unless_kept() {
        let l = Ledger::new(100);
        l.hold(1, 0, 10, 500, 0).expect("first").keep();
        assert!(l.hold(1, 0, 10, 500, 0).is_none(), "kept: published");
        // Never accepted: released, so the checkpoint does not count it and a fill takes it.
        let held = l.hold(1, 0, 10, 501, 0).expect("first");
        assert_eq!(l.account_high(1), Some(501));
        drop(held);
        assert_eq!(l.account_high(1), Some(500), "the high falls back");
        assert_eq!(l.checkpoint(0).accounts[&1].conversations[&10], 500);
        let held = l.hold(1, 0, 10, 501, 0).expect("released: claimable again");
        held.keep();
        assert_eq!(l.account_high(1), Some(501));
        // Another conversation's higher id is the account's high after a release.
        l.hold(1, 0, 11, 700, 0).expect("first").keep();
        drop(l.hold(1, 0, 10, 800, 0).expect("first"));
        assert_eq!(l.account_high(1), Some(700));
        // Only the class that claimed it lets it go.
        l.hold(1, 7, 10, 900, 0).expect("first").keep();
        drop(l.hold(1, 0, 10, 900, 0).expect("first for class 0"));
        assert!(l.hold(1, 7, 10, 900, 0).is_none());
        // A held claim on nothing releases nothing; nor does one whose account was never seen.
        drop(Held::none(&l));
        l.release(9, 0, 1, 1);
        assert_eq!(l.account_high(1), Some(900));
    }

    #[test]
    fn each_receiver_class_claims_a_message_for_its_own_records() {
        let l = Ledger::new(100);
        assert_eq!(l.claim_for(1, 11, 10, 500), Claim::First);
        assert_eq!(l.claim_for(1, 22, 10, 500), Claim::First, "another topic");
        assert_eq!(l.claim_for(1, 11, 10, 500), Claim::Duplicate);
        assert_eq!(l.account_high(1), Some(500));
        // A checkpoint says "published" for every class.
        let back = Ledger::new(100);
        back.restore(&l.checkpoint(0).accounts);
        assert_eq!(back.claim_for(1, 33, 10, 500), Claim::Duplicate);
        assert_eq!(back.resume_after(1, 10, Some(600)), Some(500));
    }

    #[test]
    fn resume_point_table() {
        let l = Ledger::new(100);
        for id in [10, 20, 30] {
            l.claim(1, 7, id);
        }
        let cases = [
            // (conversation, watermark, want)
            (7, Some(25), Some(20)),
            (7, Some(30), Some(30)),
            (7, Some(5), Some(5)),
            (7, None, None),
            (8, Some(25), Some(25)),
            (8, None, None),
        ];
        for (conv, w, want) in cases {
            assert_eq!(l.resume_after(1, conv, w), want, "{conv} {w:?}");
        }
    }

    #[test]
    fn memory_is_bounded() {
        let l = Ledger::new(50);
        for conv in 0..1000u64 {
            for id in 0..300u64 {
                l.claim(1, conv, conv * 1000 + id);
            }
        }
        let cp = l.checkpoint(0).accounts;
        let n = cp[&1].conversations.len();
        assert!(n <= 50 + 50 / 8, "{n}");
        // The most recent conversation is kept.
        assert_eq!(cp[&1].conversations.get(&999), Some(&999_299));
        let shard = l.shard(1);
        let conv = &shard[&1].conversations[&999];
        assert_eq!(conv.ids.len(), IDS_PER_CONVERSATION);
        assert!(shard[&1].ids <= IDS_PER_ACCOUNT);
        assert_eq!(
            shard[&1].ids,
            shard[&1]
                .conversations
                .values()
                .map(|c| c.ids.len())
                .sum::<usize>()
        );
    }

    #[test]
    fn ids_per_account_are_bounded_across_conversations() {
        let l = Ledger::new(100_000);
        // 5,000 conversations of 64 messages: 320,000 ids offered.
        for conv in 0..5_000u64 {
            for id in 0..64u64 {
                l.claim(1, conv, conv * 100 + id);
            }
        }
        let shard = l.shard(1);
        let acc = &shard[&1];
        assert!(acc.ids <= IDS_PER_ACCOUNT, "{}", acc.ids);
        assert!(acc.conversations.contains_key(&4_999), "the latest is kept");
        assert!(!acc.conversations.contains_key(&0), "the oldest went");
    }

    #[test]
    fn a_checkpoint_counts_a_message_published_only_once_its_record_is_safe() {
        let l = Ledger::new(100);
        l.checkpointed();
        l.received(1, 50_000);
        // Conversation 10: 500 safe (record 0); 501 and 502 accepted as records 1 and 2.
        l.hold(1, 0, 10, 500, 40_000)
            .unwrap()
            .accepted(Pushed::Held(0), || 0);
        l.hold(1, 0, 10, 501, 41_000)
            .unwrap()
            .accepted(Pushed::Held(1), || 0);
        l.hold(1, 0, 10, 502, 42_000)
            .unwrap()
            .accepted(Pushed::Held(2), || 0);
        // Conversation 11: 600 dropped for good (counted: stands); 601 held, not accepted yet.
        l.hold(1, 0, 11, 600, 43_000)
            .unwrap()
            .accepted(Pushed::Dropped, || 0);
        let held = l.hold(1, 0, 11, 601, 44_000).unwrap();
        // Conversation 12: one message, not safe; nothing before it known.
        l.hold(1, 0, 12, 700, 45_000)
            .unwrap()
            .accepted(Pushed::Held(3), || 0);
        // (safe below, conversation 10, 11, 12, last event, unsafe count)
        let cases = [
            (0, 499, 600, 699, 40_000, 5),
            (1, 500, 600, 699, 41_000, 4),
            (2, 501, 600, 699, 42_000, 3),
            (3, 502, 600, 699, 44_000, 2),
            (4, 502, 600, 700, 44_000, 1),
        ];
        let mut at_two = None;
        for (safe, c10, c11, c12, last, n) in cases {
            let snap = l.checkpoint(safe);
            if safe == 2 {
                at_two = Some(snap.accounts.clone());
            }
            let cp = &snap.accounts[&1];
            assert_eq!(cp.conversations[&10], c10, "safe below {safe}");
            assert_eq!(cp.conversations[&11], c11, "safe below {safe}");
            assert_eq!(cp.conversations[&12], c12, "safe below {safe}");
            assert_eq!(cp.last_event_ms, last, "safe below {safe}");
            assert_eq!(cp.high, Some(700), "the account's high is what was claimed");
            assert_eq!(snap.unsafe_messages, n, "safe below {safe}");
        }
        held.keep();
        let snap = l.checkpoint(4);
        assert_eq!(snap.accounts[&1].conversations[&11], 601);
        assert_eq!(snap.accounts[&1].last_event_ms, 50_000);
        assert_eq!(snap.unsafe_messages, 0);
        // A restart resumes each conversation after what was safe.
        let back = Ledger::new(100);
        back.restore(&at_two.unwrap());
        assert_eq!(back.resume_after(1, 10, Some(700)), Some(501));
        assert!(back.hold(1, 0, 10, 502, 0).is_some(), "fetched again");
    }

    #[test]
    fn unsafe_claims_are_pruned_as_they_grow_and_released_ones_go() {
        let l = Ledger::new(100);
        l.checkpointed();
        let mut asked = 0;
        for id in 0..10_000u64 {
            l.hold(1, 0, id % 7, id + 1, 0)
                .unwrap()
                .accepted(Pushed::Held(id), || {
                    asked += 1;
                    id.saturating_sub(100)
                });
        }
        let n = l.shard(1)[&1].unsafe_claims.claims.len();
        assert!(n <= 2 * PRUNE_AT_LEAST, "{n} unsafe claims kept");
        assert!(asked < 20, "asked the buffer {asked} times");
        drop(l.hold(1, 0, 3, 50_000, 0).unwrap());
        assert_eq!(l.checkpoint(10_000).unsafe_messages, 0);
        assert!(l.shard(1)[&1].unsafe_claims.claims.capacity() <= 2 * PRUNE_AT_LEAST);
        // A time before 1970 still leaves a gap for the restart to open (reported when it is
        // longer than catch-up's window, never silently skipped).
        l.hold(2, 0, 1, 1, -5)
            .unwrap()
            .accepted(Pushed::Held(20_000), || 0);
        assert_eq!(l.checkpoint(10_000).accounts[&2].last_event_ms, 1);
        // Without checkpoints nothing is kept, and the buffer is never asked.
        let l = Ledger::new(100);
        for id in 1..=3 {
            l.hold(1, 0, 1, id, 0)
                .unwrap()
                .accepted(Pushed::Held(id), || panic!("asked the buffer"));
        }
        assert_eq!(l.checkpoint(0).unsafe_messages, 0);
        assert_eq!(l.checkpoint(0).accounts[&1].conversations[&1], 3);
    }

    #[test]
    fn checkpoint_round_trip() {
        let l = Ledger::new(100);
        l.claim(3, 1, 11);
        l.claim(3, 2, 22);
        l.received(3, 1234);
        let cp = l.checkpoint(0).accounts;
        assert_eq!(cp[&3].last_event_ms, 1234);
        assert_eq!(cp[&3].high, Some(22));
        let back = Ledger::new(100);
        back.restore(&cp);
        assert_eq!(back.checkpoint(0).accounts, cp);
        assert_eq!(back.claim(3, 2, 22), Claim::Duplicate);
        assert_eq!(back.resume_after(3, 1, cp[&3].high), Some(11));
    }

    #[test]
    fn event_ids() {
        assert_eq!(event_id(1, "message.created", Some(42), b"{}"), "msg-42");
        let a = event_id(1, "conversation.updated", None, b"{\"id\":1}");
        assert!(a.starts_with("h-") && a.len() == 34, "{a}");
        assert_eq!(a, event_id(1, "conversation.updated", None, b"{\"id\":1}"));
        assert_ne!(a, event_id(2, "conversation.updated", None, b"{\"id\":1}"));
        assert_ne!(a, event_id(1, "conversation.created", None, b"{\"id\":1}"));
        // message.updated carries the message id too, but is another event than its creation.
        assert!(event_id(1, "message.updated", Some(42), b"{}").starts_with("h-"));
        // The values are persisted and visible: they must never change.
        assert_eq!(
            event_id(7, "conversation.updated", None, b"{\"id\":1}"),
            EventDigest::Hash(xxh3_128_with_seed(
                b"{\"id\":1}",
                xxh3_64(b"conversation.updated") ^ 7u64.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ))
            .id()
        );
    }

    #[test]
    fn digest_bits_tell_account_and_kind_apart() {
        let m = |a, id| EventDigest::of(a, "message.created", Some(id), b"{}").bits();
        assert_ne!(m(1, 5), m(2, 5));
        assert_ne!(m(1, 5), m(1, 6));
        assert_eq!(
            m(1, 5),
            EventDigest::of(1, "message.created", Some(5), b"other").bits()
        );
        let h = EventDigest::of(1, "contact.updated", None, b"{}").bits();
        assert_eq!(h >> 127, 0);
        assert_eq!(m(1, 5) >> 127, 1);
    }
}
