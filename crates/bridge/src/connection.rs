//! One WebSocket and the subscriptions it carries: connect, drive the protocol session with
//! frames and time, hand events to the router, reconnect with back-off.
//!
//! The read loop blocks on nothing but the bounded buffer: when the sink is slow, `push` waits,
//! reading stops, and TCP pushes back on the platform — memory stays bounded.

use crate::catchup::gaps::GapCause;
use crate::catchup::ledger::Held;
use crate::catchup::{Catchup, Rotation};
use crate::dedup::{Dedup, Fingerprint, Verdict};
use crate::reconnect::{Health, Reconnect, ReconnectPolicy};
use crate::route::{Arrival, Receiver, Router, Unrouted};
use crate::shutdown::Shutdown;
use crate::status::{now_ms, SocketState, StatusBoard};
use crate::telemetry::{self as t, emit, BridgeMetrics, DisconnectReason};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use voxsig_protocol::backoff::{Backoff, Jitter, Rng};
use voxsig_protocol::session::{
    CloseReason, ConnectionState, Delivery, Happening, RetryCause, SubscriptionId,
};
use voxsig_protocol::{EventKind, RoomIdentifier, Session, SessionConfig};
use voxsig_sinks::BufferWriter;
use voxsig_sinks::Pushed;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a TCP + TLS + WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything the connection tasks share.
pub(crate) struct Shared {
    /// `ws://` or `wss://` URL.
    pub(crate) url: String,
    /// The `Origin` header sent.
    pub(crate) origin: String,
    /// Protocol session settings.
    pub(crate) session: SessionConfig,
    /// Each socket's WebSocket read buffer, in bytes (`source.read_buffer_bytes`).
    pub(crate) read_buffer_bytes: usize,
    /// `TCP_NODELAY` on the WebSocket's TCP connection (`source.tcp_nodelay`).
    pub(crate) tcp_nodelay: bool,
    /// Reconnect back-off, and when a connection counts as healthy.
    pub(crate) reconnect: ReconnectPolicy,
    /// Wait after a `disconnect` with `reconnect: false`.
    pub(crate) after_refusal: Duration,
    /// TLS for `wss://`.
    pub(crate) tls: Option<Connector>,
    /// Events into records.
    pub(crate) router: Router,
    /// Cross-subscription dedup, when enabled.
    pub(crate) dedup: Option<Dedup>,
    /// The buffer into the sink.
    pub(crate) buffer: BufferWriter,
    /// Counters.
    pub(crate) metrics: BridgeMetrics,
    /// Live state.
    pub(crate) status: Arc<StatusBoard>,
    /// Paces new sockets.
    pub(crate) limiter: ConnectLimiter,
    /// Says when the bridge stops.
    pub(crate) shutdown: Shutdown,
    /// Gap bookkeeping, published message ids, catch-up.
    pub(crate) catchup: Arc<Catchup>,
}

/// One subscription of a connection: its global index, identifier and routing facts.
#[derive(Clone)]
pub(crate) struct Member {
    /// Index in the configured accounts (and the status board).
    pub(crate) index: usize,
    /// The identifier.
    pub(crate) identifier: RoomIdentifier,
    /// Routing facts.
    pub(crate) receiver: Receiver,
}

/// Paces socket openings across the process: at most `rate` per second.
pub(crate) struct ConnectLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl ConnectLimiter {
    /// A limiter letting `rate` sockets per second through.
    pub(crate) fn new(rate: f64) -> Self {
        ConnectLimiter {
            interval: Duration::from_secs_f64(1.0 / rate.max(0.001)),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's slot.
    pub(crate) async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Why a WebSocket could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// `source.url` does not make a WebSocket request.
    #[error("source.url: {0}")]
    Request(WsError),
    /// TCP, TLS or the WebSocket upgrade failed.
    #[error(transparent)]
    Handshake(#[from] WsError),
    /// The handshake took longer than [`CONNECT_TIMEOUT`].
    #[error("handshake timed out after {0:?}")]
    TimedOut(Duration),
}

/// Why a connection ended; its `Display` is the detail an operator reads (may be empty).
#[derive(Debug)]
enum Ended {
    /// The bridge is stopping.
    Shutdown,
    /// The session saw no ping within `stale_after`.
    Stale,
    /// The server sent `disconnect`.
    Disconnect {
        reason: Option<String>,
        reconnect: bool,
    },
    /// The server sent a close frame.
    Closed(Option<CloseFrame>),
    /// The stream ended without a close frame.
    Eof,
    /// A WebSocket or I/O error.
    Error(WsError),
}

impl Ended {
    /// The `voxsig_bridge_disconnects_total` reason.
    fn reason(&self) -> DisconnectReason {
        match self {
            Ended::Shutdown => DisconnectReason::Shutdown,
            Ended::Stale => DisconnectReason::Stale,
            Ended::Disconnect {
                reconnect: false, ..
            } => DisconnectReason::ServerRefused,
            Ended::Disconnect {
                reconnect: true, ..
            } => DisconnectReason::ServerDisconnect,
            Ended::Closed(_) | Ended::Eof => DisconnectReason::Closed,
            Ended::Error(_) => DisconnectReason::Error,
        }
    }

    /// The gap it opens in every account of the socket (none at shutdown).
    fn gap_cause(&self) -> Option<GapCause> {
        match self {
            Ended::Shutdown => None,
            Ended::Stale => Some(GapCause::Stale),
            Ended::Disconnect {
                reconnect: false, ..
            } => Some(GapCause::Refused),
            _ => Some(GapCause::SocketDropped),
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Shutdown | Ended::Stale | Ended::Closed(None) => Ok(()),
            Ended::Disconnect { reason, .. } => f.write_str(reason.as_deref().unwrap_or_default()),
            Ended::Closed(Some(frame)) => {
                write!(f, "close {} {}", u16::from(frame.code), frame.reason)
            }
            Ended::Eof => f.write_str("connection closed"),
            Ended::Error(e) => e.fmt(f),
        }
    }
}

/// Runs one socket's life until shutdown: open a socket (paced, backing off after failures),
/// serve its subscriptions until the connection ends, account for the end, wait, and again.
pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: usize,
    members: Vec<Member>,
    rotations: mpsc::UnboundedReceiver<Rotation>,
) {
    let mut life = SocketLife::new(shared, conn, members, rotations);
    while let Some(mut ws) = life.open().await {
        life.opened();
        let (ended, health) = life.serve(&mut ws).await;
        let Some(retry_in) = life.closed(&ended, &health) else {
            break;
        };
        if !life.pause(retry_in).await {
            break;
        }
    }
    life.shared.status.set_socket(conn, SocketState::Stopped);
}

/// What one socket's task keeps from one connection to the next.
struct SocketLife {
    shared: Arc<Shared>,
    /// The socket's number.
    conn: usize,
    /// Its subscriptions, by session handle.
    members: Vec<Member>,
    rotations: mpsc::UnboundedReceiver<Rotation>,
    shutdown: Shutdown,
    /// The protocol session; it outlives sockets (subscriptions backing off keep their timers).
    session: Session,
    backoff: Reconnect,
    rng: Rng,
    ever_connected: bool,
}

impl SocketLife {
    fn new(
        shared: Arc<Shared>,
        conn: usize,
        members: Vec<Member>,
        rotations: mpsc::UnboundedReceiver<Rotation>,
    ) -> Self {
        let now = Instant::now().into_std();
        let mut session = Session::new(shared.session.clone(), now);
        for m in &members {
            session.add(m.identifier.clone(), now);
        }
        SocketLife {
            rng: Rng::new(shared.session.seed ^ (conn as u64).wrapping_mul(0x9E37_79B9)),
            backoff: Reconnect::new(shared.reconnect),
            shutdown: shared.shutdown.clone(),
            shared,
            conn,
            members,
            rotations,
            session,
            ever_connected: false,
        }
    }

    /// Opens a socket: waits for a slot of the connect limiter, connects, and backs off after
    /// each failure. `None` at shutdown.
    async fn open(&mut self) -> Option<Socket> {
        loop {
            if self.shutdown.is_shutdown() {
                return None;
            }
            self.shared
                .status
                .set_socket(self.conn, SocketState::Connecting);
            tokio::select! {
                () = self.shared.limiter.wait() => {}
                () = self.shutdown.recv() => return None,
            }
            let connected = tokio::select! {
                result = connect(&self.shared) => result,
                () = self.shutdown.recv() => return None,
            };
            let error = match connected {
                Ok(ws) => return Some(ws),
                Err(error) => error,
            };
            let retry_in = self.backoff.connect_failed(&mut self.rng);
            emit(
                &self.shared.metrics,
                t::ConnectFailed {
                    conn: self.conn,
                    error: &error,
                    retry_in,
                },
            );
            if !self.pause(retry_in).await {
                return None;
            }
        }
    }

    /// A socket is open: the session starts over on it.
    fn opened(&mut self) {
        self.session.reconnected(Instant::now().into_std());
        self.shared.status.set_socket(self.conn, SocketState::Open);
        if self.ever_connected {
            self.shared.status.reconnected(self.conn);
        }
        emit(
            &self.shared.metrics,
            t::Connected {
                conn: self.conn,
                subscriptions: self.members.len(),
                reconnect: self.ever_connected,
            },
        );
        self.ever_connected = true;
    }

    /// Serves the subscriptions on `ws` until the connection ends.
    async fn serve(&mut self, ws: &mut Socket) -> (Ended, Health) {
        drive(
            &self.shared,
            self.conn,
            &mut self.members,
            &mut self.session,
            ws,
            &mut self.shutdown,
            &mut self.rotations,
        )
        .await
    }

    /// Accounts for the end of a connection: a gap in every account it carried, the
    /// `Disconnected` event, the status board. Returns the wait before reconnecting (`None` at
    /// shutdown). Healthy (confirmed, quiet for `healthy_after`): reconnect at once and start
    /// the back-off afresh; otherwise (a poison frame right after welcome) keep backing off; a
    /// server refusal waits `after_refusal`.
    fn closed(&mut self, ended: &Ended, health: &Health) -> Option<Duration> {
        let retry = self
            .backoff
            .ended(health, Instant::now().into_std(), &mut self.rng);
        let reason = ended.reason();
        let retry_in = match reason {
            DisconnectReason::Shutdown => None,
            DisconnectReason::ServerRefused => {
                let wait = Backoff {
                    initial: self.shared.after_refusal,
                    max: self.shared.after_refusal,
                    jitter: Jitter::Equal,
                };
                Some(wait.delay(0, &mut self.rng))
            }
            _ => Some(retry),
        };
        if let Some(cause) = ended.gap_cause() {
            for m in &self.members {
                self.shared.catchup.lost(
                    m.index,
                    m.receiver.account_id,
                    cause,
                    self.shared.status.last_frame_ms(m.index),
                );
            }
        }
        emit(
            &self.shared.metrics,
            t::Disconnected {
                conn: self.conn,
                reason,
                detail: ended,
                retry_in,
            },
        );
        self.shared.status.socket_closed(self.conn);
        retry_in
    }

    /// Waits out a back-off; `false` when shutdown came first.
    async fn pause(&mut self, wait: Duration) -> bool {
        self.shared
            .status
            .set_socket(self.conn, SocketState::Backoff);
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.shutdown.recv() => false,
        }
    }
}

/// Opens the WebSocket, offering ActionCable's subprotocol and the configured Origin.
async fn connect(shared: &Shared) -> Result<Socket, ConnectError> {
    let mut request = shared
        .url
        .as_str()
        .into_client_request()
        .map_err(ConnectError::Request)?;
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(voxsig_protocol::SUBPROTOCOL),
    );
    if let Ok(origin) = HeaderValue::from_str(&shared.origin) {
        headers.insert("Origin", origin);
    }
    let handshake = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(websocket_config(
            shared.session.max_frame_bytes,
            shared.read_buffer_bytes,
        )),
        shared.tcp_nodelay,
        shared.tls.clone(),
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(e)) => Err(ConnectError::Handshake(e)),
        Err(_) => Err(ConnectError::TimedOut(CONNECT_TIMEOUT)),
    }
}

/// The WebSocket's limits and buffers: a read buffer of `read_buffer_bytes` (tungstenite
/// zero-fills it to capacity: resident memory per socket; larger frames grow it as they come),
/// and moderately oversize frames let through so the session can count and skip them (a frame
/// beyond twice `max_frame_bytes` plus 1 MiB ends the connection instead: an error, then
/// reconnect).
fn websocket_config(max_frame_bytes: usize, read_buffer_bytes: usize) -> WebSocketConfig {
    let limit = max_frame_bytes.saturating_mul(2).saturating_add(1 << 20);
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

/// Drives one connected socket until it ends. Returns why, and how healthy it was.
async fn drive(
    shared: &Shared,
    conn: usize,
    members: &mut Vec<Member>,
    session: &mut Session,
    ws: &mut Socket,
    shutdown: &mut Shutdown,
    rotations: &mut mpsc::UnboundedReceiver<Rotation>,
) -> (Ended, Health) {
    let healthy_after = shared.reconnect.healthy_after;
    let mut health = Health::new(Instant::now().into_std());
    loop {
        // Rotated tokens are rare: checked once per turn of the loop (a frame, a ping at least
        // every few seconds, or a timer), not as one more branch polled for every frame.
        while let Ok(rotation) = rotations.try_recv() {
            follow(session, members, rotation);
        }
        let mut wrote = false;
        while let Some(frame) = session.poll_transmit() {
            if let Err(e) = ws.feed(Message::text(frame)).await {
                return (Ended::Error(e), health);
            }
            wrote = true;
        }
        if wrote {
            if let Err(e) = ws.flush().await {
                return (Ended::Error(e), health);
            }
        }
        while let Some(happening) = session.poll_happening() {
            if matches!(happening, Happening::Confirmed { .. }) {
                health.confirmed(Instant::now().into_std(), healthy_after);
            }
            if let Some(ended) = report(shared, conn, members, happening) {
                let _ = ws.close(None).await;
                return (ended, health);
            }
        }
        let deadline = session.poll_timeout().map(Instant::from_std);
        tokio::select! {
            biased;
            () = shutdown.recv() => {
                let _ = ws.close(None).await;
                return (Ended::Shutdown, health);
            }
            message = ws.next() => {
                // Every frame already read is handled in this wake-up, with one clock reading.
                let clock = FrameClock::read();
                let mut message = message;
                let mut handled = 0;
                loop {
                    let step = on_message(shared, conn, members, session, &mut health, message, clock);
                    if let Some(ended) = step.await {
                        return (ended, health);
                    }
                    handled += 1;
                    // Only take a frame that will be handled: the bound is checked first. A
                    // closed session (a `disconnect` frame) is reported before anything else.
                    if handled == FRAMES_PER_WAKEUP
                        || matches!(session.state(), ConnectionState::Closed(_))
                    {
                        break;
                    }
                    match ws.next().now_or_never() {
                        Some(next) => message = next,
                        None => break,
                    }
                }
                // The socket was not read while these frames were handled (waiting for room
                // in a full buffer, mostly): a ping sent meanwhile is still unread.
                let now = Instant::now().into_std();
                session.handle_stall(now.saturating_duration_since(clock.now), now);
            }
            _ = sleep_until(deadline) => session.handle_timeout(Instant::now().into_std()),
        }
    }
}

/// At most this many frames already read are handled per wake-up before the loop looks at
/// shutdown, timers and what to send again.
const FRAMES_PER_WAKEUP: usize = 64;

/// The clocks of one batch of frames, read once per wake-up instead of per event.
#[derive(Debug, Clone, Copy)]
struct FrameClock {
    /// Monotonic: the session's time, dedup's and the record's `accepted_at`.
    now: std::time::Instant,
    /// Wall clock: the record's `received_at`.
    wall: SystemTime,
    /// `wall` in Unix milliseconds, for the status board.
    wall_ms: i64,
}

impl FrameClock {
    fn read() -> Self {
        let wall = SystemTime::now();
        FrameClock {
            now: Instant::now().into_std(),
            wall,
            wall_ms: wall
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

/// Handles one WebSocket message; returns how the connection ended, if it did.
async fn on_message(
    shared: &Shared,
    conn: usize,
    members: &[Member],
    session: &mut Session,
    health: &mut Health,
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    clock: FrameClock,
) -> Option<Ended> {
    let now = clock.now;
    // A frame the bridge cannot use is counted, and makes the connection unhealthy for the
    // reconnect back-off.
    let mut malformed = |error: &voxsig_protocol::FrameError| {
        health.trouble(now, shared.reconnect.healthy_after);
        emit(&shared.metrics, t::FrameMalformed { conn, error });
    };
    match message {
        Some(Ok(Message::Text(text))) => match session.handle_text(text.as_str(), now) {
            Ok(Some(delivery)) => deliver(shared, members, delivery, clock).await,
            Ok(None) => {}
            Err(error) => malformed(&error),
        },
        Some(Ok(Message::Binary(bytes))) => malformed(&session.handle_binary(bytes.len(), now)),
        Some(Ok(Message::Close(frame))) => return Some(Ended::Closed(frame)),
        Some(Ok(_)) => {} // WebSocket pings are answered by tungstenite.
        Some(Err(e)) => {
            // A frame the WebSocket layer cannot pass on (not UTF-8, beyond the size limit)
            // ends the connection; it is counted as the frame error it is, and the reconnect
            // follows the back-off.
            if let Some(error) = frame_error_of(&e, shared.session.max_frame_bytes) {
                malformed(&error);
            }
            return Some(Ended::Error(e));
        }
        None => return Some(Ended::Eof),
    }
    None
}

/// The frame error behind a WebSocket read error, when there is one.
fn frame_error_of(
    error: &tokio_tungstenite::tungstenite::Error,
    max: usize,
) -> Option<voxsig_protocol::FrameError> {
    use tokio_tungstenite::tungstenite::error::CapacityError;
    use voxsig_protocol::FrameError;
    match error {
        // "invalid utf-8 sequence of 1 bytes from index 5"
        WsError::Utf8(detail) => Some(FrameError::NotUtf8 {
            offset: detail
                .rsplit("index ")
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0),
        }),
        WsError::Capacity(CapacityError::MessageTooLong { size, .. }) => {
            Some(FrameError::TooLarge { len: *size, max })
        }
        _ => None,
    }
}

/// A rotated token: the old subscription is dropped and one with the new token is added; the
/// session's new handle maps to a copy of the member with the new identifier.
fn follow(session: &mut Session, members: &mut Vec<Member>, rotation: Rotation) {
    let now = Instant::now().into_std();
    let old = members
        .iter()
        .enumerate()
        .rev()
        .find(|(_, m)| m.index == rotation.index)
        .map(|(i, m)| (i, m.clone()));
    let Some((position, member)) = old else {
        return;
    };
    session.remove(SubscriptionId(position as u32));
    let id = session.add(rotation.identifier.clone(), now);
    let replacement = Member {
        identifier: rotation.identifier,
        ..member
    };
    match (id.0 as usize).cmp(&members.len()) {
        std::cmp::Ordering::Less => members[id.0 as usize] = replacement,
        std::cmp::Ordering::Equal => members.push(replacement),
        std::cmp::Ordering::Greater => {}
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Records a session happening (status board, catch-up books, telemetry); returns how the
/// connection ended, if it did.
fn report(shared: &Shared, conn: usize, members: &[Member], happening: Happening) -> Option<Ended> {
    let member = happening
        .subscription()
        .and_then(|sub| members.get(sub.0 as usize));
    let first_unconfirmed = shared
        .status
        .apply(conn, member.map(|mb| mb.index), &happening);
    let failure = happening.failure();
    let m = &shared.metrics;
    match happening {
        Happening::Welcomed | Happening::Ping { .. } => None,
        Happening::SubscribeSent { .. } => {
            if let Some(mb) = member {
                shared.catchup.subscribing(mb.index, now_ms());
            }
            None
        }
        Happening::Confirmed { after, .. } => {
            if let Some(mb) = member {
                shared.catchup.confirmed(mb.index, now_ms());
                emit(
                    m,
                    t::SubscriptionConfirmed {
                        account: mb.receiver.account_id,
                        token: mb.identifier.token(),
                        after,
                    },
                );
            }
            None
        }
        Happening::Rejected {
            attempt, retry_in, ..
        }
        | Happening::Unanswered {
            attempt, retry_in, ..
        } => {
            let (Some(mb), Some(cause)) = (member, failure) else {
                return None;
            };
            emit(
                m,
                t::SubscriptionFailed {
                    account: mb.receiver.account_id,
                    token: mb.identifier.token(),
                    cause,
                    attempt,
                    retry_in,
                },
            );
            match cause {
                RetryCause::Rejected => shared.catchup.rejected(mb.index),
                // The platform's answer to a rotated token: none. Check the profile.
                RetryCause::Unanswered => shared.catchup.unanswered(mb.index),
            }
            None
        }
        Happening::StreamingUnconfirmed { .. } => {
            if let Some(mb) = member {
                emit(
                    m,
                    t::SubscriptionStreamingUnconfirmed {
                        account: mb.receiver.account_id,
                        user: mb.receiver.user_id,
                        token: mb.identifier.token(),
                        first: first_unconfirmed,
                    },
                );
            }
            None
        }
        Happening::PresenceSent { .. } => {
            emit(m, t::PresenceSent);
            None
        }
        Happening::UnknownFrame { kind } => {
            emit(m, t::UnknownFrame { conn, kind: &kind });
            None
        }
        Happening::Closed(CloseReason::Stale) => Some(Ended::Stale),
        Happening::Closed(CloseReason::Disconnected { reason, reconnect }) => {
            Some(Ended::Disconnect { reason, reconnect })
        }
    }
}

/// One event: count, filter, dedup, route, buffer (waiting when the buffer is full).
async fn deliver(shared: &Shared, members: &[Member], delivery: Delivery<'_>, clock: FrameClock) {
    let Some(member) = members.get(delivery.sub.0 as usize) else {
        return;
    };
    let event = &delivery.event;
    let kind = event.kind;
    let m = &shared.metrics;
    let account = Router::account_of(event, &member.receiver);
    emit(m, t::EventReceived { kind, account });
    shared.status.event(member.index, clock.wall_ms);
    if kind == EventKind::UserLogout {
        shared.status.set_logged_out(member.index);
        emit(
            m,
            t::TokenLoggedOut {
                account: member.receiver.account_id,
                token: member.identifier.token(),
            },
        );
    }
    if !shared.router.allows_event(event) {
        emit(m, t::EventFiltered { kind });
        return;
    }
    // One digest per event: the dedup key and the record's event id.
    let digest = Router::digest(event, &member.receiver);
    // Copies rendering to different topics or keys are different records (issue 14).
    let class = shared.router.receiver_class(&member.receiver);
    if let Some(dedup) = &shared.dedup {
        let checked = dedup.check(
            Fingerprint::new(&digest, class),
            member.index as u32,
            clock.now,
        );
        if checked.forgotten > 0 {
            emit(
                m,
                t::DedupForgot {
                    entries: checked.forgotten,
                },
            );
        }
        if checked.verdict == Verdict::Duplicate {
            emit(m, t::EventDeduplicated { kind });
            return;
        }
    }
    // A message's claim in the ledger, kept once its record is accepted.
    let mut held = Held::none(shared.catchup.ledger());
    if kind == EventKind::MessageCreated {
        if let (Some(conversation), Some(id)) = (event.conversation_id, event.message_id) {
            // Published already (by a catch-up, or on another path): once is enough.
            match shared
                .catchup
                .live_message(account, class, conversation, id, clock.wall_ms)
            {
                Some(claim) => held = claim,
                None => return,
            }
        }
    }
    let arrival = Arrival {
        received_at: clock.wall,
        accepted_at: clock.now,
        digest,
    };
    let routed = shared.router.route_live(event, &member.receiver, arrival);
    if let Handed::Done(pushed) = hand_over(shared, routed, kind.name().unwrap_or("other")).await {
        held.accepted(pushed, || shared.buffer.safe_below());
    }
}

/// What became of an event handed over to the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handed {
    /// Accepted (a record the buffer holds until it is safe), or dropped for good (counted):
    /// it stays published as far as the ledger goes, once safe.
    Done(Pushed),
    /// The buffer was closed (shutdown): never accepted, so its ledger claim is released and
    /// the next catch-up can fetch it.
    Refused,
}

/// A routed event into the buffer (waiting while it is full), live or replayed alike; an event
/// that could not become a record, or met a closed buffer, is counted and logged as dropped.
pub(crate) async fn hand_over(
    shared: &Shared,
    routed: Result<voxsig_sinks::Record, Unrouted>,
    event_label: &'static str,
) -> Handed {
    let (reason, detail, handed) = match routed {
        Ok(record) => match shared.buffer.push(record).await {
            Ok(pushed) => return Handed::Done(pushed),
            Err(_) => (
                t::DropReason::BufferClosed,
                "shutting down".to_owned(),
                Handed::Refused,
            ),
        },
        Err(Unrouted::InvalidTopic(error)) => (
            t::DropReason::InvalidTopic,
            error.to_string(),
            Handed::Done(Pushed::Dropped),
        ),
    };
    emit(
        &shared.metrics,
        t::EventDropped {
            reason,
            event_label,
            detail: &detail,
        },
    );
    handed
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    #[test]
    fn each_end_has_one_reason_gap_cause_and_detail() {
        let disconnect = |reconnect| Ended::Disconnect {
            reason: Some("server_restart".into()),
            reconnect,
        };
        let close = Ended::Closed(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }));
        let table = [
            (Ended::Shutdown, "shutdown", None, ""),
            (Ended::Stale, "stale", Some(GapCause::Stale), ""),
            (
                disconnect(false),
                "server_refused",
                Some(GapCause::Refused),
                "server_restart",
            ),
            (
                disconnect(true),
                "server_disconnect",
                Some(GapCause::SocketDropped),
                "server_restart",
            ),
            (
                close,
                "closed",
                Some(GapCause::SocketDropped),
                "close 1001 bye",
            ),
            (
                Ended::Closed(None),
                "closed",
                Some(GapCause::SocketDropped),
                "",
            ),
            (
                Ended::Eof,
                "closed",
                Some(GapCause::SocketDropped),
                "connection closed",
            ),
            (
                Ended::Error(WsError::ConnectionClosed),
                "error",
                Some(GapCause::SocketDropped),
                "Connection closed normally",
            ),
        ];
        for (ended, reason, gap, detail) in table {
            assert_eq!(ended.reason().as_str(), reason, "{ended:?}");
            assert_eq!(ended.gap_cause(), gap, "{ended:?}");
            assert_eq!(ended.to_string(), detail, "{ended:?}");
        }
    }
}
