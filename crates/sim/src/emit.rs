//! Event generation: single events, bursts and steady runs, each event rendered once and sent to
//! every subscription entitled to it, with the per-subscriber identifier as the only difference.

use crate::error::{Result, SimError};
use crate::hub::{Outgoing, Target};
use crate::payload::{self, has_conversation, Scene, Times};
use crate::rng::Rng;
use crate::shared::{Member, Shared};
use crate::store::{ConversationStatus, Sender, StoredMessage, PRE_RUN_MESSAGE_BASE};
use crate::truth::{lock, DeliveryLog, EventLog, Origin, Ticket};
use serde::Serialize;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use voxsig_protocol::catalogue::{Audience, PayloadShape};
use voxsig_protocol::EventKind;

/// One event to emit; unset fields are chosen by the generator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventSpec {
    /// The account (default: the next account in round-robin order).
    pub account_id: Option<u64>,
    /// The event (default: a random catalogued event).
    pub kind: Option<EventKind>,
    /// The conversation, which must belong to the account (default: a random one of the account).
    pub conversation_id: Option<u64>,
}

impl EventSpec {
    /// An event of this kind for this account, in a random conversation of the account.
    pub fn new(account_id: u64, kind: EventKind) -> Self {
        EventSpec {
            account_id: Some(account_id),
            kind: Some(kind),
            conversation_id: None,
        }
    }

    /// The same, in this conversation.
    pub fn in_conversation(mut self, conversation_id: u64) -> Self {
        self.conversation_id = Some(conversation_id);
        self
    }
}

/// Which accounts and events bursts and runs draw from; empty means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Accounts, visited in round-robin order (empty: every account of the world).
    pub accounts: Vec<u64>,
    /// Events, drawn at random (empty: the whole catalogue, [`EventKind::ALL`], except
    /// `user:logout`, a control message the platform sends only when it rotates a token; emit it
    /// explicitly with [`EventSpec`]).
    pub kinds: Vec<EventKind>,
}

impl Selection {
    /// Every account, every event.
    pub fn all() -> Self {
        Selection::default()
    }

    /// Only these accounts.
    pub fn accounts(mut self, accounts: impl IntoIterator<Item = u64>) -> Self {
        self.accounts = accounts.into_iter().collect();
        self
    }

    /// Only these events.
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = EventKind>) -> Self {
        self.kinds = kinds.into_iter().collect();
        self
    }
}

/// How fast a run emits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Events per second in total.
    Total(f64),
    /// Events per second for each selected account.
    PerAccount(f64),
}

/// A steady run, bounded by time and optionally by count.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// What to emit.
    pub selection: Selection,
    /// How fast.
    pub rate: Rate,
    /// How long at most.
    pub duration: Duration,
    /// How many events at most.
    pub max_events: Option<u64>,
}

/// What [`crate::Sim::emit`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EmittedEvent {
    /// Global sending order (the ground truth's `id`).
    pub id: u64,
    /// The event name.
    pub event: &'static str,
    /// `data.account_id`.
    pub account_id: u64,
    /// `data.sim_seq`.
    pub sim_seq: u64,
    /// The conversation, if the event has one.
    pub conversation_id: Option<u64>,
    /// Frames queued (one per subscription entitled to the event).
    pub frames: usize,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopReason {
    /// Its duration elapsed.
    Duration,
    /// It emitted `max_events`.
    Count,
    /// It was stopped, or the simulator shut down.
    Stopped,
}

/// What a burst or a run emitted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EmitReport {
    /// Events emitted.
    pub events: u64,
    /// Event frames queued to sockets.
    pub frames: u64,
    /// Time taken (`elapsed_ms` in JSON).
    #[serde(rename = "elapsed_ms", serialize_with = "millis")]
    pub elapsed: Duration,
    /// `events` per second over `elapsed`.
    pub events_per_sec: f64,
    /// Why it ended (bursts: `count`).
    pub stopped: StopReason,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl EmitReport {
    fn new(events: u64, frames: u64, started: Instant, stopped: StopReason) -> Self {
        let elapsed = started.elapsed();
        EmitReport {
            events,
            frames,
            elapsed,
            events_per_sec: events as f64 / elapsed.as_secs_f64().max(1e-9),
            stopped,
        }
    }
}

/// A run in progress.
#[derive(Debug)]
pub struct RunHandle {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<EmitReport>>,
}

impl RunHandle {
    /// Asks the run to stop after the event in progress.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the run to end.
    pub async fn wait(self) -> Result<EmitReport> {
        self.task.await.map_err(|_| SimError::Shutdown)?
    }

    /// A flag that stops the run when set (for callers that keep the handle elsewhere).
    pub(crate) fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }
}

/// The generator's state, behind one async lock: it serialises sequence numbers and sends, so
/// every socket receives an account's events in `sim_seq` order.
#[derive(Debug)]
pub(crate) struct Emitter {
    rng: Rng,
    /// Last `sim_seq` per account.
    seqs: HashMap<u64, u64>,
    next_id: u64,
    next_notification: u64,
    round_robin: usize,
    targets: Vec<Arc<Target>>,
    times: Times,
}

impl Emitter {
    pub(crate) fn new(seed: u64) -> Self {
        Emitter {
            rng: Rng::new(seed),
            seqs: HashMap::new(),
            next_id: 0,
            next_notification: 400_000,
            round_robin: 0,
            targets: Vec::new(),
            times: Times::default(),
        }
    }

    /// Refreshes the cached timestamps when the second changes; returns the milliseconds.
    fn tick(&mut self) -> u16 {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if d.as_secs() != self.times.now {
            self.times = Times::at(d.as_secs());
        }
        d.subsec_millis() as u16
    }

    fn next_seq(&mut self, account_id: u64) -> u64 {
        let seq = self.seqs.entry(account_id).or_insert(0);
        *seq += 1;
        *seq
    }
}

/// An event ready to send. `frame` is the first subscription's whole frame
/// (`{"identifier":"…"` then the body), or the body alone when nobody is subscribed; the body,
/// `","message":{"event":"NAME","data":DATA}}`, starts at `body` and DATA spans `data`.
struct Rendered {
    kind: EventKind,
    account_id: u64,
    sim_seq: u64,
    conversation_id: Option<u64>,
    origin: Origin,
    frame: String,
    body: usize,
    data: Range<usize>,
}

/// Writes the start of a frame: the first target's identifier, then the body up to `data`.
/// Returns the buffer, where the body starts, and where the data starts.
fn frame_start(kind: EventKind, first: Option<&Target>, capacity: usize) -> (String, usize, usize) {
    let mut frame = String::with_capacity(capacity);
    if let Some(t) = first {
        frame.push_str("{\"identifier\":\"");
        frame.push_str(&t.escaped);
    }
    let body = frame.len();
    frame.push_str("\",\"message\":{\"event\":\"");
    frame.push_str(kind.name().unwrap_or("other"));
    frame.push_str("\",\"data\":");
    let data = frame.len();
    (frame, body, data)
}

/// Closes the frame after the data; returns the data's span.
fn frame_end(frame: &mut String, data: usize) -> Range<usize> {
    let end = frame.len();
    frame.push_str("}}");
    data..end
}

/// Checks that a selection names only known accounts and catalogued events.
pub(crate) fn check_selection(shared: &Shared, sel: &Selection) -> Result<()> {
    let state = shared.world();
    if let Some(a) = sel
        .accounts
        .iter()
        .find(|a| !state.index.accounts.contains_key(a))
    {
        return Err(SimError::UnknownAccount(*a));
    }
    if sel.kinds.contains(&EventKind::Other) {
        return Err(SimError::UnknownEvent("other".into()));
    }
    Ok(())
}

impl Shared {
    /// Renders one event and finds its subscriptions (into `em.targets`).
    fn render(&self, em: &mut Emitter, spec: &EventSpec, sel: &Selection) -> Result<Rendered> {
        let state = self.world();
        let (world, index) = (&state.world, &state.index);
        let account_id = match spec.account_id {
            Some(a) => a,
            None => {
                let pool = if sel.accounts.is_empty() {
                    &index.account_ids
                } else {
                    &sel.accounts
                };
                em.round_robin = em.round_robin.wrapping_add(1);
                *pool
                    .get(em.round_robin % pool.len().max(1))
                    .ok_or_else(|| SimError::Invalid("the world has no account".into()))?
            }
        };
        let acc = index
            .accounts
            .get(&account_id)
            .ok_or(SimError::UnknownAccount(account_id))?;
        let kind = match spec.kind {
            Some(EventKind::Other) => return Err(SimError::UnknownEvent("other".into())),
            Some(k) => k,
            None if sel.kinds.is_empty() => *em.rng.pick(&RANDOM_KINDS),
            None => *em.rng.pick(&sel.kinds),
        };
        let (conversation_id, contact) = match spec.conversation_id {
            Some(c) => match index.conversations.get(&c) {
                Some(i) if world.contacts[*i].account_id == account_id => (c, *i),
                _ => return Err(SimError::UnknownConversation(c)),
            },
            None => *em.rng.pick(&acc.conversations),
        };
        let rng = &mut em.rng;
        let agent = &world.users[*rng.pick(&acc.users)];
        let drawn_assignee = rng.chance(80).then(|| *rng.pick(&acc.users));
        let by_contact = match kind.shape() {
            PayloadShape::Message => kind != EventKind::FirstReplyCreated && rng.chance(50),
            PayloadShape::Typing => rng.chance(50),
            _ => false,
        };
        let private = !by_contact
            && matches!(
                kind,
                EventKind::MessageCreated
                    | EventKind::MessageUpdated
                    | EventKind::ConversationTypingOn
            )
            && rng.chance(10);
        if kind.shape() == PayloadShape::Notification {
            em.next_notification += 1;
        }
        let now_ms = em.tick();
        let wall_ms = em.times.now * 1000 + u64::from(now_ms);
        let sim_seq = em.next_seq(account_id);
        // The platform's records: the conversation's state as events render it, message ids.
        let mut store = lock(&self.store);
        let record = store.conversation(conversation_id);
        let current = record.map_or(ConversationStatus::Open, |c| c.status);
        let status = if kind == EventKind::ConversationStatusChanged {
            let others: Vec<ConversationStatus> = ConversationStatus::ALL
                .into_iter()
                .filter(|s| *s != current)
                .collect();
            *em.rng.pick(&others)
        } else {
            current
        };
        let assigns = matches!(
            kind,
            EventKind::AssigneeChanged | EventKind::ConversationCreated
        );
        let assignee = if assigns {
            drawn_assignee
        } else {
            record.and_then(|c| c.assignee)
        };
        let (mut agent, mut by_contact, mut private) = (agent, by_contact, private);
        let mut message_created_at = None;
        let message_id = match kind {
            EventKind::MessageCreated => store.next_message_id(),
            // An update concerns the conversation's last message, and says what it is (author,
            // type, privacy, creation time); without one, the message that conversation
            // payloads show as the first (created before the run).
            EventKind::MessageUpdated | EventKind::FirstReplyCreated => {
                match store.last_message(conversation_id) {
                    Some(m) => {
                        private = m.private;
                        by_contact = matches!(m.sender, Sender::Contact(_));
                        if let Sender::User(id) = m.sender {
                            if let Some(u) = acc
                                .users
                                .iter()
                                .map(|i| &world.users[*i])
                                .find(|u| u.id == id)
                            {
                                agent = u;
                            }
                        }
                        message_created_at = Some(m.created_at);
                        m.id
                    }
                    None => PRE_RUN_MESSAGE_BASE + conversation_id,
                }
            }
            _ => 0,
        };
        let scene = Scene {
            account: &world.accounts[acc.position],
            contact: &world.contacts[contact],
            conversation_id,
            status: status.as_str(),
            assignee: assignee.and_then(|i| world.users.get(i)),
            agent,
            by_contact,
            private,
            times: &em.times,
            now_ms,
            message_id,
            message_created_at,
            notification_id: em.next_notification,
            sim_seq,
        };
        // Notifications are for one user; everything else for every user of the account, and
        // conversation events also for the conversation's contact unless private.
        let to_contact = kind.audience() == Some(Audience::AgentsAndContacts)
            && has_conversation(kind)
            && !private;
        let contact_token = to_contact.then(|| world.contacts[contact].pubsub_token.as_str());
        em.targets.clear();
        if kind.shape() == PayloadShape::Notification {
            self.hub.targets(
                std::iter::once(agent.pubsub_token.as_str()),
                &mut em.targets,
            );
        } else {
            let users = acc
                .users
                .iter()
                .map(|i| world.users[*i].pubsub_token.as_str());
            self.hub
                .targets(users.chain(contact_token), &mut em.targets);
        }
        let users_online: Vec<(u64, &str)> = if kind == EventKind::PresenceUpdate {
            acc.users
                .iter()
                .map(|i| (world.users[*i].id, world.users[*i].availability.as_str()))
                .collect()
        } else {
            Vec::new()
        };
        let (mut frame, body, data) = frame_start(kind, em.targets.first().map(|t| &**t), 4096);
        let content = payload::render(&mut frame, kind, &scene, &users_online, &mut em.rng);
        let data = frame_end(&mut frame, data);
        // Only what is kept is decoded (limits of 0: the generator alone, for benchmarks).
        let keeps = store.keeps_messages();
        let content = || -> Arc<str> {
            match content.clone().filter(|_| keeps) {
                // Generated text has no escapes: the literal's inside is the text itself.
                Some(r) => Arc::from(frame.get(r.start + 1..r.end - 1).unwrap_or("")),
                None => Arc::from(""),
            }
        };
        match kind {
            EventKind::MessageCreated => {
                store.message_created(
                    StoredMessage {
                        id: message_id,
                        account_id,
                        inbox_id: scene.account.inbox_id,
                        conversation_id,
                        content: content(),
                        message_type: u8::from(!by_contact),
                        private,
                        sender: if by_contact {
                            Sender::Contact(scene.contact.id)
                        } else {
                            Sender::User(agent.id)
                        },
                        created_at: em.times.now,
                        created_at_ms: wall_ms,
                        sim_seq,
                    },
                    wall_ms,
                );
            }
            EventKind::MessageUpdated | EventKind::FirstReplyCreated => {
                store.message_updated(conversation_id, message_id, content(), wall_ms);
            }
            _ if kind.shape() == PayloadShape::Conversation => {
                store.conversation_changed(
                    conversation_id,
                    (kind == EventKind::ConversationStatusChanged).then_some(status),
                    assigns.then_some(assignee),
                    wall_ms,
                );
            }
            _ => {}
        }
        drop(store);
        Ok(Rendered {
            kind,
            account_id,
            sim_seq,
            conversation_id: has_conversation(kind).then_some(conversation_id),
            origin: Origin::Broadcast,
            frame,
            body,
            data,
        })
    }

    /// Records the event and queues one frame per target: the rendered frame for the first,
    /// `{"identifier":"…"` and a copy of the body for the others.
    async fn deliver(
        &self,
        em: &mut Emitter,
        ev: Rendered,
        targets: &[Arc<Target>],
    ) -> EmittedEvent {
        let name = ev.kind.name().unwrap_or("other");
        em.next_id += 1;
        let log = self.truth.recording().then(|| {
            Arc::new(EventLog {
                id: em.next_id,
                kind: ev.kind,
                name,
                account_id: ev.account_id,
                sim_seq: ev.sim_seq,
                conversation_id: ev.conversation_id,
                origin: ev.origin,
                at_ms: self.millis(),
                data: Arc::from(&ev.frame[ev.data.clone()]),
                deliveries: targets
                    .iter()
                    .map(|t| DeliveryLog {
                        token: t.token.clone(),
                        identifier: t.identifier.clone(),
                        connection: t.connection,
                        status: AtomicU8::new(0),
                    })
                    .collect(),
            })
        });
        self.truth.record(log.clone());
        self.counters
            .queued
            .fetch_add(targets.len() as u64, Ordering::Relaxed);
        let body = &ev.frame[ev.body..];
        for (i, t) in targets.iter().enumerate().skip(1) {
            let mut frame = String::with_capacity(16 + t.escaped.len() + body.len());
            frame.push_str("{\"identifier\":\"");
            frame.push_str(&t.escaped);
            frame.push_str(body);
            self.queue(t, frame, log.as_ref().map(|l| Ticket::new(l.clone(), i)))
                .await;
        }
        let sent = EmittedEvent {
            id: em.next_id,
            event: name,
            account_id: ev.account_id,
            sim_seq: ev.sim_seq,
            conversation_id: ev.conversation_id,
            frames: targets.len(),
        };
        if let Some(first) = targets.first() {
            self.queue(first, ev.frame, log.map(|l| Ticket::new(l, 0)))
                .await;
        }
        sent
    }

    /// Queues one event frame; a full queue is waited for up to the send timeout.
    async fn queue(&self, target: &Target, frame: String, ticket: Option<Ticket>) {
        let item = Outgoing::Event(frame.into(), ticket);
        let lost = match target.tx.try_send(item) {
            Ok(()) => false,
            Err(TrySendError::Closed(_)) => true,
            Err(TrySendError::Full(item)) => target
                .tx
                .send_timeout(item, self.config.send_timeout)
                .await
                .is_err(),
        };
        // A frame that never entered the queue (its ticket, dropped here, records it too).
        if lost {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn emit_locked(
        &self,
        em: &mut Emitter,
        spec: &EventSpec,
        sel: &Selection,
    ) -> Result<EmittedEvent> {
        let rendered = self.render(em, spec, sel)?;
        let mut targets = std::mem::take(&mut em.targets);
        let sent = self.deliver(em, rendered, &targets).await;
        // Keep the capacity, not the sockets' queues: a closed socket's writer ends when the
        // last sender goes.
        targets.clear();
        em.targets = targets;
        Ok(sent)
    }

    /// Emits one event.
    pub(crate) async fn emit(&self, spec: &EventSpec) -> Result<EmittedEvent> {
        let mut em = self.emitter.lock().await;
        self.emit_locked(&mut em, spec, &Selection::default()).await
    }

    /// Emits `n` events from `sel` under one lock, then yields; returns the frames queued.
    async fn emit_batch(&self, n: u64, sel: &Selection) -> Result<u64> {
        let mut em = self.emitter.lock().await;
        let mut frames = 0;
        for _ in 0..n {
            let sent = self
                .emit_locked(&mut em, &EventSpec::default(), sel)
                .await?;
            frames += sent.frames as u64;
        }
        drop(em);
        tokio::task::yield_now().await;
        Ok(frames)
    }

    /// Emits `count` events as fast as the sockets take them.
    pub(crate) async fn burst(&self, count: u64, sel: &Selection) -> Result<EmitReport> {
        check_selection(self, sel)?;
        let started = Instant::now();
        let (mut events, mut frames) = (0, 0);
        let mut stopped = StopReason::Count;
        while events < count {
            if self.is_shut_down() {
                stopped = StopReason::Stopped;
                break;
            }
            // A few events per lock: cheap, and replies still get their turn.
            let n = (count - events).min(64);
            frames += self.emit_batch(n, sel).await?;
            events += n;
        }
        Ok(EmitReport::new(events, frames, started, stopped))
    }

    /// Starts a steady run.
    pub(crate) fn run(self: &Arc<Self>, spec: RunSpec) -> Result<RunHandle> {
        check_selection(self, &spec.selection)?;
        let accounts = if spec.selection.accounts.is_empty() {
            self.world().index.account_ids.len()
        } else {
            spec.selection.accounts.len()
        };
        let rate = match spec.rate {
            Rate::Total(r) => r,
            Rate::PerAccount(r) => r * accounts as f64,
        };
        if !(rate.is_finite() && rate > 0.0) {
            return Err(SimError::Invalid(format!("rate {rate} events/s")));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let shared = self.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let max = spec.max_events.unwrap_or(u64::MAX);
            let (mut events, mut frames) = (0u64, 0u64);
            let stopped = loop {
                if flag.load(Ordering::Relaxed) || shared.is_shut_down() {
                    break StopReason::Stopped;
                }
                let elapsed = started.elapsed();
                if elapsed >= spec.duration {
                    break StopReason::Duration;
                }
                if events >= max {
                    break StopReason::Count;
                }
                let due = ((rate * elapsed.as_secs_f64()) as u64).min(max) - events.min(max);
                if due == 0 {
                    let next = started + Duration::from_secs_f64((events + 1) as f64 / rate);
                    tokio::time::sleep_until(next.min(started + spec.duration)).await;
                    continue;
                }
                let n = due.min(256);
                frames += shared.emit_batch(n, &spec.selection).await?;
                events += n;
            };
            Ok(EmitReport::new(events, frames, started, stopped))
        });
        Ok(RunHandle { stop, task })
    }

    /// Answers a subscribe or `update_presence` with the account's presence, to that
    /// subscription only (contacts get no contacts map).
    pub(crate) async fn reply_presence(
        &self,
        target: &Arc<Target>,
        account_id: u64,
        member: Member,
    ) {
        let (users, contacts) = self.presence_maps(account_id, matches!(member, Member::User(_)));
        let users: Vec<(u64, &str)> = users.iter().map(|(id, s)| (*id, s.as_str())).collect();
        let contacts: Option<Vec<(u64, &str)>> = contacts
            .as_ref()
            .map(|v| v.iter().map(|(id, s)| (*id, s.as_str())).collect());
        let mut em = self.emitter.lock().await;
        let sim_seq = em.next_seq(account_id);
        let (mut frame, body, data) = frame_start(EventKind::PresenceUpdate, Some(target), 512);
        payload::presence(&mut frame, account_id, &users, contacts.as_deref(), sim_seq);
        let data = frame_end(&mut frame, data);
        let rendered = Rendered {
            kind: EventKind::PresenceUpdate,
            account_id,
            sim_seq,
            conversation_id: None,
            origin: Origin::Reply,
            frame,
            body,
            data,
        };
        self.deliver(&mut em, rendered, std::slice::from_ref(target))
            .await;
    }
}

/// What an unrestricted selection draws from: the catalogue without `user:logout`.
static RANDOM_KINDS: std::sync::LazyLock<Vec<EventKind>> = std::sync::LazyLock::new(|| {
    EventKind::ALL
        .iter()
        .copied()
        .filter(|k| *k != EventKind::UserLogout)
        .collect()
});
