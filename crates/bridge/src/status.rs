//! The live state of every subscription and socket, written by the connection tasks without
//! locks on the hot path and read by `/status`, `/readyz` and the metrics gauges.
//!
//! A subscription's state is a view of its protocol session (`voxsig_protocol::Session` owns
//! the state machine): the connection hands every session happening to
//! [`StatusBoard::apply`], the one place that turns happenings into [`SubState`]s, and tells
//! [`StatusBoard::socket_closed`] when the socket under the session went away. Only what the
//! session does not know is set apart: a token logged out by the platform (an event).

use crate::catchup::gaps::GapCause;
use crate::catchup::telemetry::Unrecovered;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use voxsig_protocol::{Happening, PubsubToken};

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SubState {
    /// Its socket is not connected (or not welcomed) yet.
    Waiting = 0,
    /// `subscribe` sent, no answer yet.
    Pending = 1,
    /// Confirmed: events flow.
    Confirmed = 2,
    /// Rejected by the server; retrying on a back-off.
    Rejected = 3,
    /// Neither confirmed nor rejected in time; retrying on a back-off.
    Unanswered = 4,
    /// The platform sent `user:logout` for the token: it must be replaced.
    LoggedOut = 5,
    /// Never confirmed, yet its events arrive (a real token with a wrong `account_id` or
    /// `user_id`: the platform attaches the stream before it fails); kept, events published.
    UnconfirmedStreaming = 6,
}

impl SubState {
    /// Every state, for gauges.
    pub const ALL: [SubState; 7] = [
        SubState::Waiting,
        SubState::Pending,
        SubState::Confirmed,
        SubState::Rejected,
        SubState::Unanswered,
        SubState::LoggedOut,
        SubState::UnconfirmedStreaming,
    ];

    fn from_u8(v: u8) -> SubState {
        SubState::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(SubState::Waiting)
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            SubState::Waiting => "waiting",
            SubState::Pending => "pending",
            SubState::Confirmed => "confirmed",
            SubState::Rejected => "rejected",
            SubState::Unanswered => "unanswered",
            SubState::LoggedOut => "logged_out",
            SubState::UnconfirmedStreaming => "unconfirmed_streaming",
        }
    }
}

/// Where a socket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SocketState {
    /// Connecting (or waiting for a connect slot).
    Connecting = 0,
    /// Connected.
    Open = 1,
    /// Waiting to reconnect.
    Backoff = 2,
    /// Stopped (shutdown).
    Stopped = 3,
}

impl SocketState {
    /// Every state, for gauges.
    pub const ALL: [SocketState; 4] = [
        SocketState::Connecting,
        SocketState::Open,
        SocketState::Backoff,
        SocketState::Stopped,
    ];

    fn from_u8(v: u8) -> SocketState {
        SocketState::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(SocketState::Connecting)
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            SocketState::Connecting => "connecting",
            SocketState::Open => "open",
            SocketState::Backoff => "backoff",
            SocketState::Stopped => "stopped",
        }
    }
}

/// One subscription's live state.
pub struct SubStatus {
    /// The configured account.
    pub account_id: u64,
    /// The user, for user tokens.
    pub user_id: Option<u64>,
    /// The token (shown redacted only).
    pub token: PubsubToken,
    /// The socket it rides on.
    pub conn: usize,
    state: AtomicU8,
    last_event_ms: AtomicI64,
    events: AtomicI64,
    failures: AtomicU32,
    last_error: Mutex<Option<String>>,
    streamed_unconfirmed: AtomicBool,
    confirmed_ms: AtomicI64,
    /// The token it follows after a rotation (the platform's new one), if any.
    rotated_to: Mutex<Option<PubsubToken>>,
}

/// One socket's live state.
#[derive(Default)]
pub struct SocketStatus {
    state: AtomicU8,
    reconnects: AtomicU32,
    last_ping_ms: AtomicI64,
    connected_since_ms: AtomicI64,
}

/// Every subscription and socket.
pub struct StatusBoard {
    subs: Vec<SubStatus>,
    sockets: Vec<SocketStatus>,
    gaps: Mutex<BTreeMap<u64, GapStatus>>,
}

/// An account's last gap, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapStatus {
    /// The last frame received before it (Unix ms).
    pub start: i64,
    /// When the account was confirmed again (Unix ms); `None` while it is open.
    pub end: Option<i64>,
    /// Why it opened.
    pub cause: GapCause,
    /// Whether its messages were recovered: `None` while open or being filled.
    pub recovered: Option<bool>,
    /// Messages a catch-up published for it.
    pub recovered_messages: u64,
    /// Why it was not recovered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrecovered_reason: Option<Unrecovered>,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A subscription as a new board first shows it (waiting, no events yet).
#[derive(Debug, Clone)]
pub struct BoardEntry {
    /// The configured account.
    pub account_id: u64,
    /// The user, for user tokens.
    pub user_id: Option<u64>,
    /// The token (shown redacted only).
    pub token: PubsubToken,
    /// The socket it rides on.
    pub conn: usize,
}

impl StatusBoard {
    /// A board for these subscriptions and `sockets` sockets.
    pub fn new(subs: impl IntoIterator<Item = BoardEntry>, sockets: usize) -> Self {
        StatusBoard {
            subs: subs
                .into_iter()
                .map(|entry| SubStatus {
                    account_id: entry.account_id,
                    user_id: entry.user_id,
                    token: entry.token,
                    conn: entry.conn,
                    state: AtomicU8::new(SubState::Waiting as u8),
                    last_event_ms: AtomicI64::new(0),
                    events: AtomicI64::new(0),
                    failures: AtomicU32::new(0),
                    last_error: Mutex::new(None),
                    streamed_unconfirmed: AtomicBool::new(false),
                    confirmed_ms: AtomicI64::new(0),
                    rotated_to: Mutex::new(None),
                })
                .collect(),
            sockets: (0..sockets).map(|_| SocketStatus::default()).collect(),
            gaps: Mutex::new(BTreeMap::new()),
        }
    }

    /// The subscriptions.
    pub fn subscriptions(&self) -> &[SubStatus] {
        &self.subs
    }

    /// The number of sockets.
    pub fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    /// Applies a session happening of socket `conn` to the board; `sub` is the board index of
    /// the subscription it is about ([`Happening::subscription`]), if any. The one place the
    /// board follows the protocol session. Returns `true` when the happening is a subscription
    /// streaming unconfirmed for the first time in this process (the one time worth a warning).
    pub fn apply(&self, conn: usize, sub: Option<usize>, happening: &Happening) -> bool {
        if let Happening::Ping { .. } = happening {
            self.ping(conn, now_ms());
        }
        let Some(index) = sub else {
            return false;
        };
        match happening {
            Happening::SubscribeSent { .. } => self.set_sub(index, SubState::Pending),
            Happening::Confirmed { .. } => self.set_sub(index, SubState::Confirmed),
            Happening::Rejected { .. } => {
                self.set_sub(index, SubState::Rejected);
                self.sub_failed(index, "rejected by the server");
            }
            Happening::Unanswered { .. } => {
                self.set_sub(index, SubState::Unanswered);
                self.sub_failed(index, "no confirm or reject within the confirm timeout");
            }
            Happening::StreamingUnconfirmed { .. } => return self.set_unconfirmed_streaming(index),
            Happening::Welcomed
            | Happening::PresenceSent { .. }
            | Happening::Ping { .. }
            | Happening::UnknownFrame { .. }
            | Happening::Closed(_) => {}
        }
        false
    }

    /// The socket `conn` closed: its subscriptions that were live on it wait for the next
    /// connection; those backing off after a reject or timeout keep showing why.
    pub fn socket_closed(&self, conn: usize) {
        for (index, s) in self.subs.iter().enumerate().filter(|(_, s)| s.conn == conn) {
            if matches!(
                s.state(),
                SubState::Pending | SubState::Confirmed | SubState::UnconfirmedStreaming
            ) {
                self.set_sub(index, SubState::Waiting);
            }
        }
    }

    /// Sets a subscription's state.
    fn set_sub(&self, index: usize, state: SubState) {
        if let Some(s) = self.subs.get(index) {
            // A logged-out token stays reported as such until the process is restarted with a new one.
            if SubState::from_u8(s.state.load(Ordering::Relaxed)) != SubState::LoggedOut {
                s.state.store(state as u8, Ordering::Relaxed);
            }
            if state == SubState::Confirmed {
                s.confirmed_ms.store(now_ms(), Ordering::Relaxed);
            }
        }
    }

    /// A subscription follows a rotated token now.
    pub fn rotated(&self, index: usize, token: PubsubToken) {
        if let Some(s) = self.subs.get(index) {
            if let Ok(mut t) = s.rotated_to.lock() {
                *t = Some(token);
            }
        }
    }

    /// When the last event arrived on a subscription (Unix ms); 0 when none.
    pub fn last_event_ms(&self, index: usize) -> i64 {
        self.subs
            .get(index)
            .map_or(0, |s| s.last_event_ms.load(Ordering::Relaxed))
    }

    /// The last sign of life of a subscription (Unix ms): its last event, its confirm, or the
    /// last ping on its socket, whichever is latest; 0 when none.
    pub fn last_frame_ms(&self, index: usize) -> i64 {
        let Some(s) = self.subs.get(index) else {
            return 0;
        };
        let ping = self
            .sockets
            .get(s.conn)
            .map_or(0, |k| k.last_ping_ms.load(Ordering::Relaxed));
        s.last_event_ms
            .load(Ordering::Relaxed)
            .max(s.confirmed_ms.load(Ordering::Relaxed))
            .max(ping)
    }

    /// A gap opened on an account.
    pub fn gap_opened(&self, account: u64, start: i64, cause: GapCause) {
        if let Ok(mut gaps) = self.gaps.lock() {
            gaps.insert(
                account,
                GapStatus {
                    start,
                    end: None,
                    cause,
                    recovered: None,
                    recovered_messages: 0,
                    unrecovered_reason: None,
                },
            );
        }
    }

    /// An account's gap closed and was filled (`Ok(messages)`) or not (`Err(reason)`).
    pub fn gap_done(
        &self,
        account: u64,
        start: i64,
        end: i64,
        cause: GapCause,
        outcome: Result<u64, (Unrecovered, u64)>,
    ) {
        if let Ok(mut gaps) = self.gaps.lock() {
            let (recovered, recovered_messages, unrecovered_reason) = match outcome {
                Ok(n) => (true, n, None),
                Err((reason, n)) => (false, n, Some(reason)),
            };
            gaps.insert(
                account,
                GapStatus {
                    start,
                    end: Some(end),
                    cause,
                    recovered: Some(recovered),
                    recovered_messages,
                    unrecovered_reason,
                },
            );
        }
    }

    /// Marks a token logged out.
    pub fn set_logged_out(&self, index: usize) {
        if let Some(s) = self.subs.get(index) {
            s.state.store(SubState::LoggedOut as u8, Ordering::Relaxed);
            s.set_error("the platform sent user:logout: the token was rotated");
        }
    }

    /// Records an event on a subscription.
    pub fn event(&self, index: usize, at_ms: i64) {
        if let Some(s) = self.subs.get(index) {
            s.last_event_ms.store(at_ms, Ordering::Relaxed);
            s.events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks a subscription streaming unconfirmed; `true` the first time for it in this process
    /// (the one time it is worth a warning).
    fn set_unconfirmed_streaming(&self, index: usize) -> bool {
        let Some(s) = self.subs.get(index) else {
            return false;
        };
        self.set_sub(index, SubState::UnconfirmedStreaming);
        s.set_error(
            "events arrive but the subscription was never confirmed: the token is real, its \
             account_id or user_id is probably wrong",
        );
        !s.streamed_unconfirmed.swap(true, Ordering::Relaxed)
    }

    /// Records a failure of a subscription.
    fn sub_failed(&self, index: usize, error: &str) {
        if let Some(s) = self.subs.get(index) {
            s.failures.fetch_add(1, Ordering::Relaxed);
            s.set_error(error);
        }
    }

    /// Sets a socket's state.
    pub fn set_socket(&self, conn: usize, state: SocketState) {
        if let Some(s) = self.sockets.get(conn) {
            let previous = SocketState::from_u8(s.state.swap(state as u8, Ordering::Relaxed));
            if state == SocketState::Open {
                s.connected_since_ms.store(now_ms(), Ordering::Relaxed);
            } else if previous == SocketState::Open {
                s.connected_since_ms.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Counts a reconnect of a socket.
    pub fn reconnected(&self, conn: usize) {
        if let Some(s) = self.sockets.get(conn) {
            s.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a ping on a socket.
    fn ping(&self, conn: usize, at_ms: i64) {
        if let Some(s) = self.sockets.get(conn) {
            s.last_ping_ms.store(at_ms, Ordering::Relaxed);
        }
    }

    /// Counts subscriptions by state.
    pub fn sub_counts(&self) -> [(SubState, usize); 7] {
        let mut counts = SubState::ALL.map(|s| (s, 0));
        for s in &self.subs {
            counts[usize::from(s.state.load(Ordering::Relaxed))].1 += 1;
        }
        counts
    }

    /// Counts sockets by state.
    pub fn socket_counts(&self) -> [(SocketState, usize); 4] {
        let mut counts = SocketState::ALL.map(|s| (s, 0));
        for s in &self.sockets {
            counts[usize::from(s.state.load(Ordering::Relaxed))].1 += 1;
        }
        counts
    }

    /// The oldest last ping among open sockets, in unix ms (0 when none has pinged).
    pub fn oldest_ping_ms(&self) -> i64 {
        self.sockets
            .iter()
            .filter(|s| SocketState::from_u8(s.state.load(Ordering::Relaxed)) == SocketState::Open)
            .map(|s| s.last_ping_ms.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// A JSON-ready snapshot (tokens redacted).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            subscriptions: self
                .subs
                .iter()
                .map(|s| SubSnapshot {
                    account_id: s.account_id,
                    user_id: s.user_id,
                    token: s
                        .rotated_to
                        .lock()
                        .ok()
                        .and_then(|t| t.as_ref().map(PubsubToken::redacted))
                        .unwrap_or_else(|| s.token.redacted()),
                    socket: s.conn,
                    state: SubState::from_u8(s.state.load(Ordering::Relaxed)),
                    events: s.events.load(Ordering::Relaxed),
                    last_event_ms: nonzero(s.last_event_ms.load(Ordering::Relaxed)),
                    failures: s.failures.load(Ordering::Relaxed),
                    last_error: s.last_error.lock().ok().and_then(|e| e.clone()),
                })
                .collect(),
            sockets: self
                .sockets
                .iter()
                .enumerate()
                .map(|(i, s)| SocketSnapshot {
                    socket: i,
                    state: SocketState::from_u8(s.state.load(Ordering::Relaxed)),
                    reconnects: s.reconnects.load(Ordering::Relaxed),
                    last_ping_ms: nonzero(s.last_ping_ms.load(Ordering::Relaxed)),
                    connected_since_ms: nonzero(s.connected_since_ms.load(Ordering::Relaxed)),
                })
                .collect(),
            accounts: self
                .gaps
                .lock()
                .map(|gaps| {
                    gaps.iter()
                        .map(|(account, gap)| AccountSnapshot {
                            account_id: *account,
                            last_gap: gap.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

fn nonzero(v: i64) -> Option<i64> {
    (v != 0).then_some(v)
}

impl SubStatus {
    fn set_error(&self, error: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error.chars().take(200).collect());
        }
    }

    /// The current state.
    pub fn state(&self) -> SubState {
        SubState::from_u8(self.state.load(Ordering::Relaxed))
    }
}

/// A snapshot of the board.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Every subscription.
    pub subscriptions: Vec<SubSnapshot>,
    /// Every socket.
    pub sockets: Vec<SocketSnapshot>,
    /// Every account that had a gap, with its last one.
    pub accounts: Vec<AccountSnapshot>,
}

/// An account's gap state in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct AccountSnapshot {
    /// The account.
    pub account_id: u64,
    /// Its last gap.
    pub last_gap: GapStatus,
}

/// One subscription in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SubSnapshot {
    /// The configured account.
    pub account_id: u64,
    /// The user (absent for contact tokens).
    pub user_id: Option<u64>,
    /// The token, redacted.
    pub token: String,
    /// Its socket.
    pub socket: usize,
    /// Its state.
    pub state: SubState,
    /// Events received on it.
    pub events: i64,
    /// When the last one arrived (unix ms).
    pub last_event_ms: Option<i64>,
    /// Failures (rejects, timeouts) so far.
    pub failures: u32,
    /// The last error.
    pub last_error: Option<String>,
}

/// One socket in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SocketSnapshot {
    /// Its number.
    pub socket: usize,
    /// Its state.
    pub state: SocketState,
    /// Reconnects so far.
    pub reconnects: u32,
    /// The last ping (unix ms).
    pub last_ping_ms: Option<i64>,
    /// Connected since (unix ms).
    pub connected_since_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use voxsig_protocol::session::{CloseReason, SubscriptionId};

    fn board() -> StatusBoard {
        let entry = |account_id, conn| BoardEntry {
            account_id,
            user_id: Some(1),
            token: PubsubToken::new(format!("token{account_id}token{account_id}")),
            conn,
        };
        StatusBoard::new([entry(1, 0), entry(2, 0), entry(3, 1)], 2)
    }

    #[test]
    fn the_board_follows_session_happenings_in_one_place() {
        let sub = SubscriptionId(0);
        let wait = Duration::from_secs(5);
        let sent = Happening::SubscribeSent { sub, attempt: 0 };
        let confirmed = Happening::Confirmed { sub, after: wait };
        let rejected = Happening::Rejected {
            sub,
            attempt: 1,
            retry_in: wait,
        };
        let unanswered = Happening::Unanswered {
            sub,
            attempt: 1,
            retry_in: wait,
        };
        let streaming = Happening::StreamingUnconfirmed { sub };
        let closed = Happening::Closed(CloseReason::Stale);
        // (happening, state after it, failures after it, first time streaming unconfirmed)
        let table = [
            (&sent, SubState::Pending, 0, false),
            (&confirmed, SubState::Confirmed, 0, false),
            (&closed, SubState::Confirmed, 0, false),
            (&sent, SubState::Pending, 0, false),
            (&rejected, SubState::Rejected, 1, false),
            (&sent, SubState::Pending, 1, false),
            (&unanswered, SubState::Unanswered, 2, false),
            (&sent, SubState::Pending, 2, false),
            (&streaming, SubState::UnconfirmedStreaming, 2, true),
            (&sent, SubState::Pending, 2, false),
            (&streaming, SubState::UnconfirmedStreaming, 2, false),
            (&confirmed, SubState::Confirmed, 2, false),
        ];
        let b = board();
        for (row, (happening, state, failures, first)) in table.into_iter().enumerate() {
            let index = happening.subscription().map(|_| 1);
            assert_eq!(b.apply(0, index, happening), first, "row {row}");
            let snapshot = b.snapshot();
            assert_eq!(snapshot.subscriptions[1].state, state, "row {row}");
            assert_eq!(snapshot.subscriptions[1].failures, failures, "row {row}");
            assert_eq!(
                snapshot.subscriptions[0].state,
                SubState::Waiting,
                "row {row}"
            );
        }
        assert!(b.snapshot().subscriptions[1].last_error.is_some());
    }

    #[test]
    fn a_closed_socket_sends_its_live_subscriptions_back_to_waiting() {
        let b = board();
        let sub = SubscriptionId(0);
        let confirmed = Happening::Confirmed {
            sub,
            after: Duration::ZERO,
        };
        let rejected = Happening::Rejected {
            sub,
            attempt: 1,
            retry_in: Duration::ZERO,
        };
        b.apply(0, Some(0), &confirmed);
        b.apply(0, Some(1), &rejected);
        b.apply(1, Some(2), &confirmed);
        b.apply(0, None, &Happening::Ping { unix_time: None });
        assert!(b.last_frame_ms(0) > 0);
        b.socket_closed(0);
        let states: Vec<SubState> = b.snapshot().subscriptions.iter().map(|s| s.state).collect();
        // Socket 0's confirmed one waits, its rejected one keeps showing why; socket 1 is untouched.
        assert_eq!(
            states,
            [SubState::Waiting, SubState::Rejected, SubState::Confirmed]
        );
        // A logged-out token stays reported as such.
        b.set_logged_out(2);
        b.apply(1, Some(2), &confirmed);
        b.socket_closed(1);
        assert_eq!(b.snapshot().subscriptions[2].state, SubState::LoggedOut);
    }
}
