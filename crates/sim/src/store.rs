//! The platform's records behind the REST surface: each conversation's status, assignee and
//! timestamps, and every message created, as Chatwoot keeps them in its database.
//!
//! The event generator writes here before it broadcasts (as the platform commits before its
//! broadcast job runs), so REST answers agree with the events sent, including those generated
//! while no socket was connected. Sans-I/O: every call takes the wall-clock time it concerns;
//! the REST adapter (`rest.rs`) and the generator (`emit.rs`) do the I/O.
//!
//! Rules, as the platform's:
//! - Message ids are global and increase by one per `message.created` (a database
//!   autoincrement), whatever the account or conversation.
//! - `message.created` stores a message and moves the conversation's `updated_at` and
//!   `last_activity_at`; `message.updated` (and `first.reply.created`) concern the conversation's
//!   last message, whose content the update replaces, and move `updated_at`.
//! - Conversation events (`conversation.*`, `assignee.changed`, `team.changed`) move
//!   `updated_at`; `conversation.status_changed` sets a new status, `assignee.changed` and
//!   `conversation.created` a new assignee.
//!
//! Memory is bounded: at most [`StoreLimits::messages`] messages in total and
//! [`StoreLimits::per_conversation`] per conversation; past either, the oldest go (counted in
//! [`StoreStats::evicted`]). The defaults keep a minute of 3 000 `message.created` per second.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A conversation's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    /// Open (the finder's default).
    Open,
    /// Resolved.
    Resolved,
    /// Pending.
    Pending,
    /// Snoozed.
    Snoozed,
}

impl ConversationStatus {
    /// Every status.
    pub const ALL: [ConversationStatus; 4] = [
        ConversationStatus::Open,
        ConversationStatus::Resolved,
        ConversationStatus::Pending,
        ConversationStatus::Snoozed,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationStatus::Open => "open",
            ConversationStatus::Resolved => "resolved",
            ConversationStatus::Pending => "pending",
            ConversationStatus::Snoozed => "snoozed",
        }
    }

    /// The status with this wire name.
    pub fn from_name(name: &str) -> Option<ConversationStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// The `status` filter of the conversations endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// `status=all`.
    All,
    /// One status (`open` when the parameter is absent, as Chatwoot's `DEFAULT_STATUS`).
    Only(ConversationStatus),
}

impl StatusFilter {
    fn admits(self, status: ConversationStatus) -> bool {
        match self {
            StatusFilter::All => true,
            StatusFilter::Only(s) => s == status,
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "id", rename_all = "lowercase")]
pub enum Sender {
    /// An agent or administrator (`sender_type: "User"`).
    User(u64),
    /// The conversation's contact (`sender_type: "Contact"`).
    Contact(u64),
}

/// One message as the platform stores it (what `message.created` announced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    /// The global message id (`data.id` of the event).
    pub id: u64,
    /// The account.
    pub account_id: u64,
    /// The inbox.
    pub inbox_id: u64,
    /// The conversation's display id (`data.conversation_id`).
    pub conversation_id: u64,
    /// The text (updated by `message.updated`).
    #[serde(serialize_with = "as_str")]
    pub content: Arc<str>,
    /// 0 incoming (from the contact), 1 outgoing (from an agent).
    pub message_type: u8,
    /// A private note.
    pub private: bool,
    /// Who wrote it.
    pub sender: Sender,
    /// Unix seconds (`data.created_at`).
    pub created_at: u64,
    /// Unix milliseconds of the creation (finer than `created_at`, for tests).
    pub created_at_ms: u64,
    /// `data.sim_seq` of the `message.created` event (with `account_id`, its ground truth key).
    pub sim_seq: u64,
}

fn as_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

/// How many messages are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// In total.
    pub messages: usize,
    /// Per conversation.
    pub per_conversation: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            messages: 200_000,
            per_conversation: 50_000,
        }
    }
}

/// Counters of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Messages created since the start.
    pub created: u64,
    /// Messages held now.
    pub held: usize,
    /// Messages dropped to stay within the limits (REST no longer returns them).
    pub evicted: u64,
}

/// One conversation's record.
#[derive(Debug, Clone)]
pub(crate) struct ConversationRecord {
    pub(crate) id: u64,
    pub(crate) account_id: u64,
    pub(crate) inbox_id: u64,
    /// Index of the contact in the world.
    pub(crate) contact: usize,
    pub(crate) status: ConversationStatus,
    /// Index of the assignee in the world's users.
    pub(crate) assignee: Option<usize>,
    /// Unix seconds.
    pub(crate) created_at: u64,
    /// Unix milliseconds.
    pub(crate) updated_at_ms: u64,
    /// Unix milliseconds.
    pub(crate) last_activity_ms: u64,
    /// Messages in id order.
    pub(crate) messages: VecDeque<StoredMessage>,
}

/// Which messages of a conversation, as Chatwoot's `MessageFinder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageQuery {
    /// `?after=ID`: ids above, oldest first, at most 100.
    After(u64),
    /// `?before=ID`: the 20 newest ids below, oldest first.
    Before(u64),
    /// `?after=A&before=B`: `A <= id < B`, oldest first, at most 1 000.
    Between(u64, u64),
    /// Neither: the 20 newest, oldest first.
    Latest,
}

/// Page sizes of the finders.
pub const AFTER_LIMIT: usize = 100;
/// `before` and latest pages.
pub const BEFORE_LIMIT: usize = 20;
/// `after` with `before`.
pub const BETWEEN_LIMIT: usize = 1_000;
/// Conversations per page without `updated_within` (Chatwoot's `CONVERSATION_RESULTS_PER_PAGE`).
pub const CONVERSATIONS_PER_PAGE: usize = 25;

/// The counts in the conversations endpoint's `meta` (over the status-filtered set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConversationCounts {
    /// Assigned to the asking user.
    pub mine_count: usize,
    /// Assigned to anyone.
    pub assigned_count: usize,
    /// Assigned to nobody.
    pub unassigned_count: usize,
    /// All.
    pub all_count: usize,
}

/// The conversation list query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConversationQuery {
    pub(crate) account_id: u64,
    /// The asking user's index (for `mine_count`).
    pub(crate) user: usize,
    pub(crate) status: StatusFilter,
    /// Only conversations updated after this unix millisecond (no pagination).
    pub(crate) updated_after_ms: Option<u64>,
    /// 1-based page, without `updated_within`.
    pub(crate) page: u64,
}

/// The records.
#[derive(Debug)]
pub(crate) struct Store {
    conversations: HashMap<u64, ConversationRecord>,
    /// Conversation ids per account, in world order.
    by_account: HashMap<u64, Vec<u64>>,
    /// (conversation, message id) of every message held, in id order: the eviction order.
    order: VecDeque<(u64, u64)>,
    limits: StoreLimits,
    last_message_id: u64,
    /// Messages held.
    held: usize,
    stats: StoreStats,
}

/// Where the ids of messages created during the run start.
pub(crate) const FIRST_MESSAGE_ID: u64 = 1_000_001;

/// A conversation's message from before the run (the one conversation payloads show as its
/// first, and that `message.updated` concerns when nothing was created in the conversation) has
/// id `PRE_RUN_MESSAGE_BASE + conversation id`. The store does not hold these.
pub(crate) const PRE_RUN_MESSAGE_BASE: u64 = 200_000;

/// What the store needs to know of a conversation at the start.
pub(crate) struct Seed {
    pub(crate) id: u64,
    pub(crate) account_id: u64,
    pub(crate) inbox_id: u64,
    pub(crate) contact: usize,
}

impl Store {
    /// Every conversation open, unassigned, created a day and last updated an hour before
    /// `now_ms`.
    pub(crate) fn new(
        seeds: impl IntoIterator<Item = Seed>,
        limits: StoreLimits,
        now_ms: u64,
    ) -> Store {
        let mut store = Store {
            conversations: HashMap::new(),
            by_account: HashMap::new(),
            order: VecDeque::new(),
            limits,
            last_message_id: FIRST_MESSAGE_ID - 1,
            held: 0,
            stats: StoreStats::default(),
        };
        let updated = now_ms.saturating_sub(3_600_000);
        for s in seeds {
            store.by_account.entry(s.account_id).or_default().push(s.id);
            store.conversations.insert(
                s.id,
                ConversationRecord {
                    id: s.id,
                    account_id: s.account_id,
                    inbox_id: s.inbox_id,
                    contact: s.contact,
                    status: ConversationStatus::Open,
                    assignee: None,
                    created_at: (now_ms / 1000).saturating_sub(86_400),
                    updated_at_ms: updated,
                    last_activity_ms: updated,
                    messages: VecDeque::new(),
                },
            );
        }
        store
    }

    pub(crate) fn conversation(&self, id: u64) -> Option<&ConversationRecord> {
        self.conversations.get(&id)
    }

    pub(crate) fn stats(&self) -> StoreStats {
        StoreStats {
            held: self.held,
            ..self.stats
        }
    }

    /// Whether messages are kept at all (limits of 0 keep none: benchmarks of the generator).
    pub(crate) fn keeps_messages(&self) -> bool {
        self.limits.messages > 0 && self.limits.per_conversation > 0
    }

    /// The id the next `message.created` gets.
    pub(crate) fn next_message_id(&self) -> u64 {
        self.last_message_id + 1
    }

    /// Stores a created message (its id must be [`Store::next_message_id`]) and moves the
    /// conversation's timestamps. Returns false (nothing stored) for an unknown conversation.
    pub(crate) fn message_created(&mut self, message: StoredMessage, now_ms: u64) -> bool {
        let keep = self.keeps_messages();
        let Some(conv) = self.conversations.get_mut(&message.conversation_id) else {
            return false;
        };
        debug_assert_eq!(message.id, self.last_message_id + 1);
        self.last_message_id = self.last_message_id.max(message.id);
        conv.updated_at_ms = conv.updated_at_ms.max(now_ms);
        conv.last_activity_ms = conv.last_activity_ms.max(now_ms);
        self.stats.created += 1;
        if !keep {
            self.stats.evicted += 1;
            return true;
        }
        self.order.push_back((conv.id, message.id));
        conv.messages.push_back(message);
        self.held += 1;
        if conv.messages.len() > self.limits.per_conversation {
            conv.messages.pop_front();
            self.held -= 1;
            self.stats.evicted += 1;
        }
        // `order` may name messages the per-conversation cap dropped already: skip those.
        while self.held > self.limits.messages {
            let Some((c, id)) = self.order.pop_front() else {
                break;
            };
            if let Some(conv) = self.conversations.get_mut(&c) {
                if conv.messages.front().is_some_and(|m| m.id == id) {
                    conv.messages.pop_front();
                    self.held -= 1;
                    self.stats.evicted += 1;
                }
            }
        }
        // Forget the skipped entries once they outnumber the messages held.
        if self.order.len() > self.held.saturating_mul(2).max(16) {
            let conversations = &self.conversations;
            self.order.retain(|(c, id)| {
                conversations
                    .get(c)
                    .and_then(|conv| conv.messages.front())
                    .is_some_and(|first| first.id <= *id)
            });
        }
        true
    }

    /// The conversation's last message id, for `message.updated`; its content becomes `content`
    /// and the conversation's `updated_at` moves.
    pub(crate) fn last_message(&self, conversation: u64) -> Option<&StoredMessage> {
        self.conversations.get(&conversation)?.messages.back()
    }

    /// Records an update of message `id` in `conversation`.
    pub(crate) fn message_updated(
        &mut self,
        conversation: u64,
        id: u64,
        content: Arc<str>,
        now_ms: u64,
    ) {
        if let Some(conv) = self.conversations.get_mut(&conversation) {
            conv.updated_at_ms = conv.updated_at_ms.max(now_ms);
            if let Some(m) = conv.messages.iter_mut().rev().find(|m| m.id == id) {
                m.content = content;
            }
        }
    }

    /// Records a conversation event: a new status and/or assignee, and `updated_at` moves.
    pub(crate) fn conversation_changed(
        &mut self,
        conversation: u64,
        status: Option<ConversationStatus>,
        assignee: Option<Option<usize>>,
        now_ms: u64,
    ) {
        if let Some(conv) = self.conversations.get_mut(&conversation) {
            if let Some(s) = status {
                conv.status = s;
            }
            if let Some(a) = assignee {
                conv.assignee = a;
            }
            conv.updated_at_ms = conv.updated_at_ms.max(now_ms);
        }
    }

    /// The conversation list, most recent activity first, and the counts, as Chatwoot's
    /// `ConversationFinder`: counts over the status-filtered set; `updated_within` filters on
    /// `updated_at` without pagination, otherwise pages of [`CONVERSATIONS_PER_PAGE`].
    pub(crate) fn conversations(
        &self,
        q: &ConversationQuery,
    ) -> (ConversationCounts, Vec<&ConversationRecord>) {
        let mut list: Vec<&ConversationRecord> = self
            .by_account
            .get(&q.account_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.conversations.get(id))
            .filter(|c| q.status.admits(c.status))
            .collect();
        let mut counts = ConversationCounts {
            all_count: list.len(),
            ..ConversationCounts::default()
        };
        for c in &list {
            match c.assignee {
                Some(u) if u == q.user => {
                    counts.mine_count += 1;
                    counts.assigned_count += 1;
                }
                Some(_) => counts.assigned_count += 1,
                None => counts.unassigned_count += 1,
            }
        }
        list.sort_by(|a, b| {
            b.last_activity_ms
                .cmp(&a.last_activity_ms)
                .then(b.id.cmp(&a.id))
        });
        match q.updated_after_ms {
            Some(after) => list.retain(|c| c.updated_at_ms > after),
            None => {
                let skip = (q.page.max(1) - 1).saturating_mul(CONVERSATIONS_PER_PAGE as u64);
                list = list
                    .into_iter()
                    .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                    .take(CONVERSATIONS_PER_PAGE)
                    .collect();
            }
        }
        (counts, list)
    }

    /// A conversation's messages, as Chatwoot's `MessageFinder`: oldest first.
    pub(crate) fn messages(&self, conversation: u64, q: MessageQuery) -> Vec<&StoredMessage> {
        let Some(conv) = self.conversations.get(&conversation) else {
            return Vec::new();
        };
        let all = &conv.messages;
        // Ids increase along the deque: binary searches find the bounds.
        let first_at_least = |id: u64| all.partition_point(|m| m.id < id);
        match q {
            MessageQuery::After(after) => {
                let start = all.partition_point(|m| m.id <= after);
                all.range(start..).take(AFTER_LIMIT).collect()
            }
            MessageQuery::Before(before) => {
                let end = first_at_least(before);
                all.range(end.saturating_sub(BEFORE_LIMIT)..end).collect()
            }
            MessageQuery::Between(after, before) => {
                let start = first_at_least(after);
                let end = first_at_least(before).max(start);
                all.range(start..end).take(BETWEEN_LIMIT).collect()
            }
            MessageQuery::Latest => all
                .range(all.len().saturating_sub(BEFORE_LIMIT)..)
                .collect(),
        }
    }

    /// Every message held, in id order, optionally of one account, created in
    /// `[from_ms, to_ms)`.
    pub(crate) fn all_messages(
        &self,
        account: Option<u64>,
        from_ms: u64,
        to_ms: u64,
    ) -> Vec<StoredMessage> {
        let mut out: Vec<StoredMessage> = self
            .conversations
            .values()
            .filter(|c| account.is_none_or(|a| c.account_id == a))
            .flat_map(|c| c.messages.iter())
            .filter(|m| m.created_at_ms >= from_ms && m.created_at_ms < to_ms)
            .cloned()
            .collect();
        out.sort_by_key(|m| m.id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(limits: StoreLimits) -> Store {
        let seeds = [(1, 1), (2, 1), (3, 2)].map(|(id, account_id)| Seed {
            id,
            account_id,
            inbox_id: account_id,
            contact: 0,
        });
        Store::new(seeds, limits, 10_000_000)
    }

    fn create(s: &mut Store, conversation: u64, now_ms: u64) -> u64 {
        let id = s.next_message_id();
        let account_id = s.conversation(conversation).map_or(0, |c| c.account_id);
        assert!(s.message_created(
            StoredMessage {
                id,
                account_id,
                inbox_id: account_id,
                conversation_id: conversation,
                content: Arc::from("hi"),
                message_type: 0,
                private: false,
                sender: Sender::Contact(7),
                created_at: now_ms / 1000,
                created_at_ms: now_ms,
                sim_seq: id,
            },
            now_ms,
        ));
        id
    }

    fn ids(v: Vec<&StoredMessage>) -> Vec<u64> {
        v.iter().map(|m| m.id).collect()
    }

    #[test]
    fn ids_are_global_and_pages_follow_the_message_finder() {
        let mut s = store(StoreLimits::default());
        let a = create(&mut s, 1, 10_000_001);
        let b = create(&mut s, 3, 10_000_002);
        assert_eq!((a, b), (FIRST_MESSAGE_ID, FIRST_MESSAGE_ID + 1));
        let mut in_one = vec![a];
        for i in 0..250 {
            in_one.push(create(&mut s, 1, 10_000_010 + i));
        }
        let cases: &[(MessageQuery, &[u64])] = &[
            (MessageQuery::After(0), &in_one[..100]),
            (MessageQuery::After(in_one[99]), &in_one[100..200]),
            (MessageQuery::After(in_one[200]), &in_one[201..]),
            (MessageQuery::After(u64::MAX), &[]),
            (MessageQuery::Before(in_one[50]), &in_one[30..50]),
            (MessageQuery::Before(in_one[5]), &in_one[..5]),
            (MessageQuery::Before(0), &[]),
            (
                MessageQuery::Between(in_one[10], in_one[15]),
                &in_one[10..15],
            ),
            (MessageQuery::Between(in_one[15], in_one[10]), &[]),
            (MessageQuery::Latest, &in_one[231..]),
        ];
        for (q, want) in cases {
            assert_eq!(ids(s.messages(1, *q)), want.to_vec(), "{q:?}");
        }
        assert_eq!(ids(s.messages(3, MessageQuery::After(0))), vec![b]);
        assert!(s.messages(99, MessageQuery::Latest).is_empty());
        assert_eq!(s.all_messages(Some(2), 0, u64::MAX).len(), 1);
        assert_eq!(s.all_messages(None, 10_000_002, 10_000_011).len(), 2);
    }

    #[test]
    fn finder_filters_by_status_and_updated_within() {
        let mut s = store(StoreLimits::default());
        let q = |status, updated_after_ms| ConversationQuery {
            account_id: 1,
            user: 4,
            status,
            updated_after_ms,
            page: 1,
        };
        let open = StatusFilter::Only(ConversationStatus::Open);
        assert_eq!(s.conversations(&q(open, None)).1.len(), 2);
        assert!(s.conversations(&q(open, Some(9_000_000))).1.is_empty());
        s.conversation_changed(
            2,
            Some(ConversationStatus::Resolved),
            Some(Some(4)),
            10_000_500,
        );
        create(&mut s, 1, 10_000_600);
        let (counts, list) = s.conversations(&q(open, None));
        assert_eq!(list.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(counts.all_count, 1);
        let (counts, list) = s.conversations(&q(StatusFilter::All, Some(10_000_000)));
        // Most recent activity first: conversation 1 had a message.
        assert_eq!(list.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            (
                counts.mine_count,
                counts.assigned_count,
                counts.unassigned_count
            ),
            (1, 1, 1)
        );
        assert_eq!(
            s.conversations(&q(StatusFilter::All, Some(10_000_550)))
                .1
                .len(),
            1
        );
        let resolved = StatusFilter::Only(ConversationStatus::Resolved);
        assert_eq!(s.conversations(&q(resolved, Some(10_000_000))).1[0].id, 2);
        assert!(s
            .conversations(&ConversationQuery {
                page: 2,
                ..q(StatusFilter::All, None)
            })
            .1
            .is_empty());
        assert!(s
            .conversations(&ConversationQuery {
                page: u64::MAX,
                ..q(StatusFilter::All, None)
            })
            .1
            .is_empty());
    }

    #[test]
    fn updates_change_content_and_updated_at_only() {
        let mut s = store(StoreLimits::default());
        let id = create(&mut s, 1, 10_000_100);
        s.message_updated(1, id, Arc::from("edited"), 10_000_200);
        let c = s.conversation(1).unwrap();
        assert_eq!(&*c.messages[0].content, "edited");
        assert_eq!(
            (c.updated_at_ms, c.last_activity_ms),
            (10_000_200, 10_000_100)
        );
        assert_eq!(s.next_message_id(), id + 1);
    }

    #[test]
    fn zero_limits_keep_nothing_but_ids_still_advance() {
        let mut s = store(StoreLimits {
            messages: 0,
            per_conversation: 0,
        });
        let a = create(&mut s, 1, 10_000_100);
        assert_eq!(s.next_message_id(), a + 1);
        assert!(s.messages(1, MessageQuery::After(0)).is_empty());
        assert_eq!(s.conversation(1).unwrap().last_activity_ms, 10_000_100);
        let st = s.stats();
        assert_eq!((st.created, st.held, st.evicted), (1, 0, 1));
    }

    #[test]
    fn limits_evict_the_oldest() {
        let mut s = store(StoreLimits {
            messages: 5,
            per_conversation: 3,
        });
        let mut made = Vec::new();
        for i in 0..4 {
            made.push(create(&mut s, 1, 10_000_000 + i));
        }
        assert_eq!(
            ids(s.messages(1, MessageQuery::After(0))),
            made[1..].to_vec()
        );
        for i in 0..3 {
            made.push(create(&mut s, 3, 10_000_100 + i));
        }
        // 6 held after the per-conversation cap; the total cap drops the oldest one more.
        assert_eq!(s.stats().held, 5);
        assert_eq!(s.stats().evicted, 2);
        assert_eq!(s.stats().created, 7);
        assert_eq!(
            ids(s.messages(1, MessageQuery::After(0))),
            made[2..4].to_vec()
        );
        for i in 0..100 {
            create(&mut s, 2, 10_001_000 + i);
        }
        assert_eq!(s.stats().held, 5);
        assert!(s.order.len() <= 16);
    }
}
