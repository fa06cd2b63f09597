//! The client side of one ActionCable connection, as a state machine fed bytes and time.
//!
//! The caller owns the socket and the clock. It feeds every received frame to
//! [`Session::handle_text`] (which returns the broadcast in it, if any), calls
//! [`Session::handle_timeout`] when [`Session::poll_timeout`] says, sends what
//! [`Session::poll_transmit`] yields and reports what [`Session::poll_happening`] yields. The
//! session never blocks, sleeps or reads a clock, so every rule below tests deterministically.
//!
//! Rules it follows, each learnt from the real platform:
//! - Subscriptions are sent only after `welcome`, and each identifier at most once while the
//!   server may hold it: Rails silently ignores a second `subscribe` with the same identifier.
//! - For an unknown token the platform's channel raises inside `subscribed`, so neither confirm
//!   nor reject arrives. A subscription unconfirmed after `confirm_timeout` is reported, then
//!   unsubscribed (so the server forgets it) and retried after a back-off.
//! - A rejected subscription is retried on a longer back-off; it never disturbs the others.
//! - A subscription whose events arrive although it was never confirmed is *streaming
//!   unconfirmed*: the platform (Chatwoot's `RoomChannel`) attaches the stream before it looks
//!   the account up, so a real token with a wrong `account_id` delivers events but is never
//!   confirmed. At the confirm timeout such a subscription is kept as it is (no unsubscribe, no
//!   retry, no presence: the server holds no subscription to answer one) and reported once per
//!   connection ([`Happening::StreamingUnconfirmed`]), instead of flapping between unsubscribe
//!   and retry. A late confirm still confirms it.
//! - `update_presence` goes only to confirmed subscriptions (one sent before the confirm may be
//!   processed before the subscription exists), right after the confirm and every interval after.
//! - No `welcome` or `ping` for longer than `stale_after` closes the session as stale. Like the
//!   official ActionCable client, only pings prove the server alive: other frames do not (the
//!   platform echoes `presence.update` for every subscription, which would hide a dead
//!   heartbeat). Time the caller spends not reading because its output is full
//!   ([`Session::handle_stall`]) does not count: a ping waits unread behind the events then.
//! - `disconnect` closes it; `reconnect: false` is reported so the caller can back off long.

use crate::backoff::{Backoff, Jitter, Rng};
use crate::command::Command;
use crate::frame::{EventRef, FrameError, ServerFrame};
use crate::identifier::{IdentifierKey, RoomIdentifier};
use crate::scan::RawStr;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Tunables of a session. `Default` gives the platform's and ActionCable's own values.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// How often each confirmed subscription sends `update_presence` (seeds: 30 s).
    pub presence_interval: Duration,
    /// Silence after which the connection is stale (official ActionCable client: 6 s).
    pub stale_after: Duration,
    /// How long a `subscribe` may go unanswered before it is reported and retried.
    pub confirm_timeout: Duration,
    /// Back-off before re-subscribing after a confirm timeout.
    pub unanswered_backoff: Backoff,
    /// Back-off before re-subscribing after a `reject_subscription`.
    pub rejected_backoff: Backoff,
    /// Frames longer than this are refused with [`FrameError::TooLarge`].
    pub max_frame_bytes: usize,
    /// Seed of the jitter generator.
    pub seed: u64,
    /// Whether confirmed subscriptions send `update_presence` (which marks the user online on
    /// the platform, making it eligible for automatic assignment). Off: none is ever sent.
    pub presence: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            presence_interval: Duration::from_secs(30),
            stale_after: Duration::from_secs(6),
            confirm_timeout: Duration::from_secs(10),
            unanswered_backoff: Backoff {
                initial: Duration::from_secs(5),
                max: Duration::from_secs(300),
                jitter: Jitter::Equal,
            },
            rejected_backoff: Backoff {
                initial: Duration::from_secs(60),
                max: Duration::from_secs(1800),
                jitter: Jitter::Equal,
            },
            presence: true,
            max_frame_bytes: 4 * 1024 * 1024,
            seed: 0x5eed,
        }
    }
}

/// A handle to one subscription of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u32);

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Waiting for the connection's `welcome` before subscribing.
    Waiting,
    /// `subscribe` sent, no answer yet.
    Pending {
        /// When it was sent.
        since: Instant,
    },
    /// Confirmed by the server.
    Confirmed {
        /// When the confirm arrived.
        since: Instant,
        /// When the next `update_presence` is due.
        next_presence: Instant,
    },
    /// Never confirmed within `confirm_timeout`, yet its events arrive (see the module docs);
    /// kept, without presence.
    StreamingUnconfirmed {
        /// When `subscribe` was sent.
        since: Instant,
    },
    /// Refused or unanswered; `subscribe` is sent again at `retry_at`.
    Retrying {
        /// When it will be retried.
        retry_at: Instant,
        /// Why it is retrying.
        cause: RetryCause,
    },
}

/// Why a subscription is waiting to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// The server sent `reject_subscription`.
    Rejected,
    /// Neither confirm nor reject arrived in time (the platform's unknown-token behaviour).
    Unanswered,
}

impl RetryCause {
    /// Every cause, for metrics that must show each label from the first scrape.
    pub const ALL: [RetryCause; 2] = [RetryCause::Rejected, RetryCause::Unanswered];

    /// The metrics label (`rejected`, `unanswered`).
    pub fn as_str(self) -> &'static str {
        match self {
            RetryCause::Rejected => "rejected",
            RetryCause::Unanswered => "unanswered",
        }
    }
}

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Socket open, `welcome` not yet received.
    AwaitingWelcome,
    /// Welcomed: subscriptions flow.
    Open,
    /// The session is over; the caller should close the socket and, as the reason says, reconnect.
    Closed(CloseReason),
}

/// Why a session closed itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// No `welcome` or `ping` for longer than `stale_after`.
    Stale,
    /// The server sent `disconnect`.
    Disconnected {
        /// The server's reason, if any.
        reason: Option<String>,
        /// Whether the server invites a reconnect (absent counts as yes).
        reconnect: bool,
    },
}

/// Something that happened, for the caller to log and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    /// The server welcomed the connection.
    Welcomed,
    /// `subscribe` was sent; `attempt` counts failed tries before this one.
    SubscribeSent {
        /// The subscription.
        sub: SubscriptionId,
        /// Failed tries before this one.
        attempt: u32,
    },
    /// The server confirmed a subscription.
    Confirmed {
        /// The subscription.
        sub: SubscriptionId,
        /// Time from `subscribe` to confirm.
        after: Duration,
    },
    /// The server rejected a subscription; it will be retried.
    Rejected {
        /// The subscription.
        sub: SubscriptionId,
        /// Consecutive failures so far.
        attempt: u32,
        /// Delay before the retry.
        retry_in: Duration,
    },
    /// Neither confirm nor reject arrived in time; unsubscribed, to be retried.
    Unanswered {
        /// The subscription.
        sub: SubscriptionId,
        /// Consecutive failures so far.
        attempt: u32,
        /// Delay before the retry.
        retry_in: Duration,
    },
    /// Events arrive on a subscription that was never confirmed (likely a wrong `account_id` or
    /// `user_id` for a real token); it is kept as it is.
    StreamingUnconfirmed {
        /// The subscription.
        sub: SubscriptionId,
    },
    /// `update_presence` was sent on a subscription.
    PresenceSent {
        /// The subscription.
        sub: SubscriptionId,
    },
    /// A ping arrived.
    Ping {
        /// The server's clock.
        unix_time: Option<i64>,
    },
    /// A control frame of an unknown type arrived (ignored).
    UnknownFrame {
        /// Its `type`, cut to 64 characters.
        kind: String,
    },
    /// The session closed itself.
    Closed(CloseReason),
}

impl Happening {
    /// The subscription it is about, when it is about one.
    pub fn subscription(&self) -> Option<SubscriptionId> {
        match self {
            Happening::SubscribeSent { sub, .. }
            | Happening::Confirmed { sub, .. }
            | Happening::Rejected { sub, .. }
            | Happening::Unanswered { sub, .. }
            | Happening::StreamingUnconfirmed { sub }
            | Happening::PresenceSent { sub } => Some(*sub),
            Happening::Welcomed
            | Happening::Ping { .. }
            | Happening::UnknownFrame { .. }
            | Happening::Closed(_) => None,
        }
    }

    /// Why a subscription failed, for [`Happening::Rejected`] and [`Happening::Unanswered`].
    pub fn failure(&self) -> Option<RetryCause> {
        match self {
            Happening::Rejected { .. } => Some(RetryCause::Rejected),
            Happening::Unanswered { .. } => Some(RetryCause::Unanswered),
            _ => None,
        }
    }
}

/// A broadcast received on one of this session's subscriptions.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<'f> {
    /// The subscription it arrived on.
    pub sub: SubscriptionId,
    /// The event, borrowing from the frame.
    pub event: EventRef<'f>,
}

struct Subscription {
    identifier: RoomIdentifier,
    state: SubscriptionState,
    /// Consecutive failed attempts (reset by a confirm).
    failures: u32,
    /// An event arrived while it was pending (reset by each `subscribe`).
    streamed: bool,
}

/// One ActionCable connection's protocol state. See the module docs.
pub struct Session {
    config: SessionConfig,
    state: ConnectionState,
    subs: Vec<Option<Subscription>>,
    /// Looked up once per frame with the identifier as it stands in the frame (~100 bytes):
    /// hashed with foldhash, a fast hasher still keyed per process. The keys are our own
    /// subscriptions; a network value is only ever looked up, never inserted.
    by_escaped: HashMap<String, SubscriptionId, foldhash::fast::RandomState>,
    by_key: HashMap<IdentifierKey, SubscriptionId>,
    last_frame_at: Instant,
    last_ping_at: Option<Instant>,
    /// When the server last proved alive: the socket opened, `welcome`, `ping`.
    alive_at: Instant,
    transmit: VecDeque<String>,
    happenings: VecDeque<Happening>,
    rng: Rng,
}

impl Session {
    /// A session for a socket that has just opened at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let rng = Rng::new(config.seed);
        Session {
            config,
            state: ConnectionState::AwaitingWelcome,
            subs: Vec::new(),
            by_escaped: HashMap::default(),
            by_key: HashMap::new(),
            last_frame_at: now,
            last_ping_at: None,
            alive_at: now,
            transmit: VecDeque::new(),
            happenings: VecDeque::new(),
            rng,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Adds a subscription; it is sent as soon as the connection is welcomed. Adding an
    /// identifier that is already here returns the existing handle and sends nothing.
    pub fn add(&mut self, identifier: RoomIdentifier, now: Instant) -> SubscriptionId {
        if let Some(existing) = self.by_key.get(identifier.key()) {
            return *existing;
        }
        let id = SubscriptionId(self.subs.len() as u32);
        self.by_escaped.insert(identifier.escaped().to_owned(), id);
        self.by_key.insert(identifier.key().clone(), id);
        self.subs.push(Some(Subscription {
            streamed: false,
            identifier,
            state: SubscriptionState::Waiting,
            failures: 0,
        }));
        if self.state == ConnectionState::Open {
            self.send_subscribe(id, now);
        }
        id
    }

    /// Removes a subscription, sending `unsubscribe` if the server may hold it.
    pub fn remove(&mut self, sub: SubscriptionId) -> Option<RoomIdentifier> {
        let entry = self.subs.get_mut(sub.0 as usize)?.take()?;
        self.by_escaped.remove(entry.identifier.escaped());
        self.by_key.remove(entry.identifier.key());
        if matches!(
            entry.state,
            SubscriptionState::Pending { .. } | SubscriptionState::Confirmed { .. }
        ) && self.state == ConnectionState::Open
        {
            self.transmit
                .push_back(Command::Unsubscribe(&entry.identifier).encode());
        }
        Some(entry.identifier)
    }

    /// Starts over on a new socket opened at `now`: every subscription will be sent again
    /// after the new `welcome`, except those still backing off, which keep their retry time.
    pub fn reconnected(&mut self, now: Instant) {
        self.state = ConnectionState::AwaitingWelcome;
        self.last_frame_at = now;
        self.last_ping_at = None;
        self.alive_at = now;
        self.transmit.clear();
        for sub in self.subs.iter_mut().flatten() {
            if !matches!(sub.state, SubscriptionState::Retrying { .. }) {
                sub.state = SubscriptionState::Waiting;
            }
        }
    }

    /// The connection's state.
    pub fn state(&self) -> &ConnectionState {
        &self.state
    }

    /// A subscription's identifier, if it exists.
    pub fn identifier(&self, sub: SubscriptionId) -> Option<&RoomIdentifier> {
        self.entry(sub).map(|s| &s.identifier)
    }

    /// A subscription's state, if it exists.
    pub fn subscription_state(&self, sub: SubscriptionId) -> Option<SubscriptionState> {
        self.entry(sub).map(|s| s.state)
    }

    /// Every live subscription with its state.
    pub fn subscriptions(
        &self,
    ) -> impl Iterator<Item = (SubscriptionId, &RoomIdentifier, SubscriptionState)> {
        self.subs.iter().enumerate().filter_map(|(i, s)| {
            s.as_ref()
                .map(|s| (SubscriptionId(i as u32), &s.identifier, s.state))
        })
    }

    /// When the last frame of any kind arrived.
    pub fn last_frame_at(&self) -> Instant {
        self.last_frame_at
    }

    /// When the last ping arrived.
    pub fn last_ping_at(&self) -> Option<Instant> {
        self.last_ping_at
    }

    /// Feeds one received text frame. Returns the broadcast it carried, if any; a frame that
    /// cannot be used is an error the caller counts, and the session carries on.
    pub fn handle_text<'f>(
        &mut self,
        text: &'f str,
        now: Instant,
    ) -> Result<Option<Delivery<'f>>, FrameError> {
        if matches!(self.state, ConnectionState::Closed(_)) {
            return Ok(None);
        }
        self.last_frame_at = now;
        if text.len() > self.config.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len: text.len(),
                max: self.config.max_frame_bytes,
            });
        }
        match ServerFrame::parse(text)? {
            ServerFrame::Event(event) => {
                let sub = self.lookup(&event.identifier)?;
                self.on_event(sub);
                return Ok(Some(Delivery { sub, event }));
            }
            ServerFrame::Welcome => {
                self.alive_at = now;
                self.on_welcome(now);
            }
            ServerFrame::Ping { unix_time } => {
                self.alive_at = now;
                self.last_ping_at = Some(now);
                self.happenings.push_back(Happening::Ping { unix_time });
            }
            ServerFrame::ConfirmSubscription { identifier } => {
                let sub = self.lookup(&identifier)?;
                self.on_confirm(sub, now);
            }
            ServerFrame::RejectSubscription { identifier } => {
                let sub = self.lookup(&identifier)?;
                self.on_reject(sub, now);
            }
            ServerFrame::Disconnect { reason, reconnect } => {
                self.close(CloseReason::Disconnected {
                    reason: reason.map(|r| r.chars().take(64).collect()),
                    reconnect: reconnect.unwrap_or(true),
                });
            }
            ServerFrame::Unknown { kind } => {
                self.happenings.push_back(Happening::UnknownFrame {
                    kind: kind.chars().take(64).collect(),
                });
            }
        }
        Ok(None)
    }

    /// Feeds a received binary frame: refused (and no proof of life).
    pub fn handle_binary(&mut self, len: usize, now: Instant) -> FrameError {
        self.last_frame_at = now;
        FrameError::Binary { len }
    }

    /// The caller did not read the socket for `stalled`, up to `now`: it waited for room to
    /// hand events on (backpressure from a slow sink). A ping or a confirm sent meanwhile waits
    /// unread behind those events, so that time does not count against the server: the stale
    /// and confirm timers are pushed back by it (never past `now`).
    pub fn handle_stall(&mut self, stalled: Duration, now: Instant) {
        // Handling a batch of frames without waiting takes microseconds: not worth a pass over
        // the subscriptions, and nothing next to `stale_after`.
        if stalled < Duration::from_millis(1) {
            return;
        }
        let later = |at: Instant| at.checked_add(stalled).map_or(now, |t| t.min(now)).max(at);
        self.alive_at = later(self.alive_at);
        for sub in self.subs.iter_mut().flatten() {
            if let SubscriptionState::Pending { since } = &mut sub.state {
                *since = later(*since);
            }
        }
    }

    /// Advances time: staleness, confirm timeouts, retries and presence heartbeats.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, ConnectionState::Closed(_)) {
            return;
        }
        if now.saturating_duration_since(self.alive_at) > self.config.stale_after {
            self.close(CloseReason::Stale);
            return;
        }
        if self.state != ConnectionState::Open {
            return;
        }
        for i in 0..self.subs.len() {
            let sub = SubscriptionId(i as u32);
            let Some(state) = self.entry(sub).map(|s| s.state) else {
                continue;
            };
            match state {
                SubscriptionState::Pending { since }
                    if now.saturating_duration_since(since) >= self.config.confirm_timeout
                        && self.entry(sub).is_some_and(|s| s.streamed) =>
                {
                    // Never confirmed, yet events arrive: keep it (see the module docs).
                    if let Some(entry) = self.entry_mut(sub) {
                        entry.state = SubscriptionState::StreamingUnconfirmed { since };
                    }
                    self.happenings
                        .push_back(Happening::StreamingUnconfirmed { sub });
                }
                SubscriptionState::Pending { since }
                    if now.saturating_duration_since(since) >= self.config.confirm_timeout =>
                {
                    // Unsubscribe now so the server forgets the identifier well before the retry
                    // (frames are processed out of order, so never send both back to back).
                    let policy = self.config.unanswered_backoff;
                    let (attempt, retry_in) = self.fail(sub, now, policy, RetryCause::Unanswered);
                    if let Some(entry) = self.entry(sub) {
                        let frame = Command::Unsubscribe(&entry.identifier).encode();
                        self.transmit.push_back(frame);
                    }
                    self.happenings.push_back(Happening::Unanswered {
                        sub,
                        attempt,
                        retry_in,
                    });
                }
                SubscriptionState::Retrying { retry_at, .. } if now >= retry_at => {
                    self.send_subscribe(sub, now);
                }
                SubscriptionState::Confirmed {
                    since,
                    next_presence,
                } if now >= next_presence => {
                    self.send_presence(sub, since, now);
                }
                _ => {}
            }
        }
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.state, ConnectionState::Closed(_)) {
            return None;
        }
        // Strictly after the threshold, so the stale check fires on this very call.
        let stale = self.alive_at + self.config.stale_after + Duration::from_millis(1);
        if self.state != ConnectionState::Open {
            return Some(stale);
        }
        let due = self.subs.iter().flatten().filter_map(|s| match s.state {
            SubscriptionState::Waiting | SubscriptionState::StreamingUnconfirmed { .. } => None,
            SubscriptionState::Pending { since } => Some(since + self.config.confirm_timeout),
            SubscriptionState::Confirmed { next_presence, .. } => Some(next_presence),
            SubscriptionState::Retrying { retry_at, .. } => Some(retry_at),
        });
        Some(due.fold(stale, Instant::min))
    }

    /// The next frame to send, if any. Frames contain tokens: never log them.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.transmit.pop_front()
    }

    /// The next happening to report, if any.
    pub fn poll_happening(&mut self) -> Option<Happening> {
        self.happenings.pop_front()
    }

    fn entry(&self, sub: SubscriptionId) -> Option<&Subscription> {
        self.subs.get(sub.0 as usize).and_then(Option::as_ref)
    }

    fn entry_mut(&mut self, sub: SubscriptionId) -> Option<&mut Subscription> {
        self.subs.get_mut(sub.0 as usize).and_then(Option::as_mut)
    }

    /// Finds the subscription a frame names: by the exact bytes we sent first (the platform
    /// echoes them), then by content (other servers may re-encode).
    fn lookup(&self, identifier: &RawStr<'_>) -> Result<SubscriptionId, FrameError> {
        if let Some(sub) = self.by_escaped.get(identifier.raw()) {
            return Ok(*sub);
        }
        let key = IdentifierKey::parse(&identifier.decode())?;
        self.by_key
            .get(&key)
            .copied()
            .ok_or(FrameError::UnknownIdentifier)
    }

    fn on_welcome(&mut self, now: Instant) {
        if self.state == ConnectionState::Open {
            return; // A repeated welcome changes nothing.
        }
        self.state = ConnectionState::Open;
        self.happenings.push_back(Happening::Welcomed);
        for i in 0..self.subs.len() {
            let sub = SubscriptionId(i as u32);
            if matches!(
                self.entry(sub).map(|s| s.state),
                Some(SubscriptionState::Waiting)
            ) {
                self.send_subscribe(sub, now);
            }
        }
    }

    /// An event on `sub`: noted when it is still pending (the confirm may be in flight; at the
    /// confirm timeout such a subscription is streaming unconfirmed, not unanswered).
    fn on_event(&mut self, sub: SubscriptionId) {
        if let Some(entry) = self.entry_mut(sub) {
            if matches!(entry.state, SubscriptionState::Pending { .. }) {
                entry.streamed = true;
            }
        }
    }

    fn on_confirm(&mut self, sub: SubscriptionId, now: Instant) {
        let Some(entry) = self.entry_mut(sub) else {
            return;
        };
        // A confirm that arrives after we gave up (and unsubscribed) is stale news: ignore it.
        let since = match entry.state {
            SubscriptionState::Pending { since } => since,
            SubscriptionState::StreamingUnconfirmed { since } => since,
            _ => return,
        };
        entry.failures = 0;
        self.happenings.push_back(Happening::Confirmed {
            sub,
            after: now.saturating_duration_since(since),
        });
        self.send_presence(sub, now, now);
    }

    fn on_reject(&mut self, sub: SubscriptionId, now: Instant) {
        if !matches!(
            self.entry(sub).map(|s| s.state),
            Some(
                SubscriptionState::Pending { .. } | SubscriptionState::StreamingUnconfirmed { .. }
            )
        ) {
            return;
        }
        let policy = self.config.rejected_backoff;
        let (attempt, retry_in) = self.fail(sub, now, policy, RetryCause::Rejected);
        self.happenings.push_back(Happening::Rejected {
            sub,
            attempt,
            retry_in,
        });
    }

    /// Records a failed attempt and schedules the retry.
    fn fail(
        &mut self,
        sub: SubscriptionId,
        now: Instant,
        policy: Backoff,
        cause: RetryCause,
    ) -> (u32, Duration) {
        let failures = self.entry(sub).map_or(0, |s| s.failures);
        let retry_in = policy.delay(failures, &mut self.rng);
        if let Some(entry) = self.entry_mut(sub) {
            entry.failures += 1;
            entry.state = SubscriptionState::Retrying {
                retry_at: now + retry_in,
                cause,
            };
        }
        (failures + 1, retry_in)
    }

    fn send_subscribe(&mut self, sub: SubscriptionId, now: Instant) {
        let Some(entry) = self.entry_mut(sub) else {
            return;
        };
        entry.state = SubscriptionState::Pending { since: now };
        entry.streamed = false;
        let attempt = entry.failures;
        let frame = Command::Subscribe(&entry.identifier).encode();
        self.transmit.push_back(frame);
        self.happenings
            .push_back(Happening::SubscribeSent { sub, attempt });
    }

    fn send_presence(&mut self, sub: SubscriptionId, since: Instant, now: Instant) {
        let next_presence = now + self.config.presence_interval;
        let presence = self.config.presence;
        let Some(entry) = self.entry_mut(sub) else {
            return;
        };
        entry.state = SubscriptionState::Confirmed {
            since,
            next_presence,
        };
        if !presence {
            return;
        }
        let frame = Command::UpdatePresence(&entry.identifier).encode();
        self.transmit.push_back(frame);
        self.happenings.push_back(Happening::PresenceSent { sub });
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = ConnectionState::Closed(reason.clone());
        self.happenings.push_back(Happening::Closed(reason));
    }
}

#[cfg(test)]
mod tests;
