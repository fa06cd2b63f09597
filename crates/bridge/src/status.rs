//! The live state of every subscription and socket, written by the connection tasks without
//! locks on the hot path and read by `/status`, `/readyz` and the metrics gauges.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use voxsig_protocol::PubsubToken;

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
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl StatusBoard {
    /// A board for these subscriptions (`(account, user, token, socket)`) and sockets.
    pub fn new(subs: Vec<(u64, Option<u64>, PubsubToken, usize)>, sockets: usize) -> Self {
        StatusBoard {
            subs: subs
                .into_iter()
                .map(|(account_id, user_id, token, conn)| SubStatus {
                    account_id,
                    user_id,
                    token,
                    conn,
                    state: AtomicU8::new(SubState::Waiting as u8),
                    last_event_ms: AtomicI64::new(0),
                    events: AtomicI64::new(0),
                    failures: AtomicU32::new(0),
                    last_error: Mutex::new(None),
                    streamed_unconfirmed: AtomicBool::new(false),
                })
                .collect(),
            sockets: (0..sockets).map(|_| SocketStatus::default()).collect(),
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

    /// Sets a subscription's state.
    pub fn set_sub(&self, index: usize, state: SubState) {
        if let Some(s) = self.subs.get(index) {
            // A logged-out token stays reported as such until the process is restarted with a new one.
            if SubState::from_u8(s.state.load(Ordering::Relaxed)) != SubState::LoggedOut {
                s.state.store(state as u8, Ordering::Relaxed);
            }
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
    pub fn set_unconfirmed_streaming(&self, index: usize) -> bool {
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
    pub fn sub_failed(&self, index: usize, error: &str) {
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
    pub fn ping(&self, conn: usize, at_ms: i64) {
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
                    token: s.token.redacted(),
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
