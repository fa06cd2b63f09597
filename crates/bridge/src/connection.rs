//! One WebSocket and the subscriptions it carries: connect, drive the protocol session with
//! frames and time, hand events to the router, reconnect with back-off.
//!
//! The read loop blocks on nothing but the bounded buffer: when the sink is slow, `push` waits,
//! reading stops, and TCP pushes back on the platform — memory stays bounded.

use crate::catchup::gaps::GapCause;
use crate::catchup::ledger::Claim;
use crate::catchup::{Catchup, Rotation};
use crate::dedup::{Dedup, Verdict};
use crate::reconnect::{Health, Reconnect, ReconnectPolicy};
use crate::route::{Receiver, Router, Unrouted};
use crate::status::{now_ms, SocketState, StatusBoard, SubState};
use crate::telemetry::{self as t, emit, BridgeMetrics};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use voxsig_protocol::backoff::{Backoff, Jitter, Rng};
use voxsig_protocol::session::{
    CloseReason, Delivery, Happening, SubscriptionId, SubscriptionState,
};
use voxsig_protocol::{EventKind, RoomIdentifier, Session, SessionConfig};
use voxsig_sinks::BufferWriter;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a TCP + TLS + WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything the connection tasks share.
pub struct Shared {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// The `Origin` header sent.
    pub origin: String,
    /// Protocol session settings.
    pub session: SessionConfig,
    /// Each socket's WebSocket read buffer, in bytes (`source.read_buffer_bytes`).
    pub read_buffer_bytes: usize,
    /// `TCP_NODELAY` on the WebSocket's TCP connection (`source.tcp_nodelay`).
    pub tcp_nodelay: bool,
    /// Reconnect back-off, and when a connection counts as healthy.
    pub reconnect: ReconnectPolicy,
    /// Wait after a `disconnect` with `reconnect: false`.
    pub after_refusal: Duration,
    /// TLS for `wss://`.
    pub tls: Option<Connector>,
    /// Events into records.
    pub router: Router,
    /// Cross-subscription dedup, when enabled.
    pub dedup: Option<Dedup>,
    /// The buffer into the sink.
    pub buffer: BufferWriter,
    /// Counters.
    pub metrics: BridgeMetrics,
    /// Live state.
    pub status: Arc<StatusBoard>,
    /// Paces new sockets.
    pub limiter: ConnectLimiter,
    /// Flips to `true` on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Gap bookkeeping, published message ids, catch-up.
    pub catchup: Arc<Catchup>,
}

/// One subscription of a connection: its global index, identifier and routing facts.
#[derive(Clone)]
pub struct Member {
    /// Index in the configured accounts (and the status board).
    pub index: usize,
    /// The identifier.
    pub identifier: RoomIdentifier,
    /// Routing facts.
    pub receiver: Receiver,
}

/// Paces socket openings across the process: at most `rate` per second.
pub struct ConnectLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl ConnectLimiter {
    /// A limiter letting `rate` sockets per second through.
    pub fn new(rate: f64) -> Self {
        ConnectLimiter {
            interval: Duration::from_secs_f64(1.0 / rate.max(0.001)),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Why a connection ended.
enum Ended {
    Shutdown,
    Stale,
    Disconnect {
        reason: Option<String>,
        reconnect: bool,
    },
    Closed(String),
    Error(String),
}

/// Runs one socket's life until shutdown.
pub async fn run(
    shared: Arc<Shared>,
    conn: usize,
    mut members: Vec<Member>,
    mut rotations: mpsc::UnboundedReceiver<Rotation>,
) {
    let mut shutdown = shared.shutdown.clone();
    let mut rng = Rng::new(shared.session.seed ^ (conn as u64).wrapping_mul(0x9E37_79B9));
    let mut session: Option<Session> = None;
    let mut backoff = Reconnect::new(shared.reconnect);
    let mut ever_connected = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        shared.status.set_socket(conn, SocketState::Connecting);
        tokio::select! {
            _ = shared.limiter.wait() => {}
            _ = shutdown.changed() => break,
        }
        let connected = tokio::select! {
            result = connect(&shared) => result,
            _ = shutdown.changed() => break,
        };
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(error) => {
                let retry_in = backoff.connect_failed(&mut rng);
                emit(
                    &shared.metrics,
                    t::ConnectFailed {
                        conn,
                        error: &error,
                        retry_in,
                    },
                );
                if !pause(&shared, conn, retry_in, &mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        let now = Instant::now().into_std();
        let session = session.get_or_insert_with(|| {
            let mut s = Session::new(shared.session.clone(), now);
            for m in &members {
                s.add(m.identifier.clone(), now);
            }
            s
        });
        session.reconnected(now);
        shared.status.set_socket(conn, SocketState::Open);
        if ever_connected {
            shared.status.reconnected(conn);
        }
        emit(
            &shared.metrics,
            t::Connected {
                conn,
                subscriptions: members.len(),
                reconnect: ever_connected,
            },
        );
        ever_connected = true;
        // Subscriptions backing off after a reject or timeout keep showing why.
        for (i, m) in members.iter().enumerate() {
            let state = session.subscription_state(SubscriptionId(i as u32));
            if matches!(state, Some(SubscriptionState::Waiting)) {
                shared.status.set_sub(m.index, SubState::Waiting);
            }
        }

        let (ended, health) = drive(
            &shared,
            conn,
            &mut members,
            session,
            &mut ws,
            &mut shutdown,
            &mut rotations,
        )
        .await;
        // Healthy (confirmed, quiet for `healthy_after`): reconnect at once and start the
        // back-off afresh; otherwise (a poison frame right after welcome) keep backing off.
        let retry = backoff.ended(&health, Instant::now().into_std(), &mut rng);
        let (reason, detail, retry_in) = match &ended {
            Ended::Shutdown => ("shutdown", String::new(), None),
            Ended::Stale => ("stale", String::new(), Some(retry)),
            Ended::Disconnect {
                reason,
                reconnect: false,
            } => {
                let wait = Backoff {
                    initial: shared.after_refusal,
                    max: shared.after_refusal,
                    jitter: Jitter::Equal,
                };
                (
                    "server_refused",
                    reason.clone().unwrap_or_default(),
                    Some(wait.delay(0, &mut rng)),
                )
            }
            Ended::Disconnect {
                reason,
                reconnect: true,
            } => (
                "server_disconnect",
                reason.clone().unwrap_or_default(),
                Some(retry),
            ),
            Ended::Closed(detail) => ("closed", detail.clone(), Some(retry)),
            Ended::Error(detail) => ("error", detail.clone(), Some(retry)),
        };
        let gap_cause = match &ended {
            Ended::Shutdown => None,
            Ended::Stale => Some(GapCause::Stale),
            Ended::Disconnect {
                reconnect: false, ..
            } => Some(GapCause::Refused),
            _ => Some(GapCause::SocketDropped),
        };
        if let Some(cause) = gap_cause {
            for m in &members {
                shared.catchup.lost(
                    m.index,
                    m.receiver.account_id,
                    cause,
                    shared.status.last_frame_ms(m.index),
                );
            }
        }
        emit(
            &shared.metrics,
            t::Disconnected {
                conn,
                reason,
                detail: &detail,
                retry_in,
            },
        );
        for m in &members {
            if matches!(
                shared.status.subscriptions()[m.index].state(),
                SubState::Pending | SubState::Confirmed | SubState::UnconfirmedStreaming
            ) {
                shared.status.set_sub(m.index, SubState::Waiting);
            }
        }
        let Some(retry_in) = retry_in else { break };
        if !pause(&shared, conn, retry_in, &mut shutdown).await {
            break;
        }
    }
    shared.status.set_socket(conn, SocketState::Stopped);
}

/// Waits out a back-off; `false` when shutdown came first.
async fn pause(
    shared: &Shared,
    conn: usize,
    wait: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    shared.status.set_socket(conn, SocketState::Backoff);
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = shutdown.changed() => false,
    }
}

/// Opens the WebSocket, offering ActionCable's subprotocol and the configured Origin.
async fn connect(shared: &Shared) -> Result<Socket, String> {
    let mut request = shared
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("actioncable-v1-json"),
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
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("handshake timed out after {CONNECT_TIMEOUT:?}")),
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
    shutdown: &mut watch::Receiver<bool>,
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
                return (Ended::Error(e.to_string()), health);
            }
            wrote = true;
        }
        if wrote {
            if let Err(e) = ws.flush().await {
                return (Ended::Error(e.to_string()), health);
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
            _ = shutdown.changed() => {
                let _ = ws.close(None).await;
                return (Ended::Shutdown, health);
            }
            message = ws.next() => {
                let now = Instant::now().into_std();
                match message {
                    Some(Ok(Message::Text(text))) => match session.handle_text(&text, now) {
                        Ok(Some(delivery)) => deliver(shared, members, delivery).await,
                        Ok(None) => {}
                        Err(error) => {
                            health.trouble(now, healthy_after);
                            emit(&shared.metrics, t::FrameMalformed { conn, error: &error });
                        }
                    },
                    Some(Ok(Message::Binary(bytes))) => {
                        health.trouble(now, healthy_after);
                        let error = session.handle_binary(bytes.len(), now);
                        emit(&shared.metrics, t::FrameMalformed { conn, error: &error });
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let detail = frame.map(|f| format!("close {} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                        return (Ended::Closed(detail), health);
                    }
                    Some(Ok(_)) => {} // WebSocket pings are answered by tungstenite.
                    Some(Err(e)) => {
                        // A frame the WebSocket layer cannot pass on (not UTF-8, beyond the
                        // size limit) ends the connection; it is counted as the frame error it
                        // is, and the reconnect follows the back-off.
                        if let Some(error) = frame_error_of(&e, shared.session.max_frame_bytes) {
                            health.trouble(now, healthy_after);
                            emit(&shared.metrics, t::FrameMalformed { conn, error: &error });
                        }
                        return (Ended::Error(e.to_string()), health);
                    }
                    None => return (Ended::Closed("connection closed".into()), health),
                }
            }
            _ = sleep_until(deadline) => session.handle_timeout(Instant::now().into_std()),
        }
    }
}

/// The frame error behind a WebSocket read error, when there is one.
fn frame_error_of(
    error: &tokio_tungstenite::tungstenite::Error,
    max: usize,
) -> Option<voxsig_protocol::FrameError> {
    use tokio_tungstenite::tungstenite::error::CapacityError;
    use tokio_tungstenite::tungstenite::Error as WsError;
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

/// Logs, counts and records a session happening; returns how the connection ended, if it did.
fn report(shared: &Shared, conn: usize, members: &[Member], happening: Happening) -> Option<Ended> {
    let member = |sub: SubscriptionId| members.get(sub.0 as usize);
    let m = &shared.metrics;
    match happening {
        Happening::Welcomed => None,
        Happening::Ping { .. } => {
            shared.status.ping(conn, now_ms());
            None
        }
        Happening::SubscribeSent { sub, .. } => {
            if let Some(mb) = member(sub) {
                shared.status.set_sub(mb.index, SubState::Pending);
                shared.catchup.subscribing(mb.index, now_ms());
            }
            None
        }
        Happening::Confirmed { sub, after } => {
            if let Some(mb) = member(sub) {
                shared.status.set_sub(mb.index, SubState::Confirmed);
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
            sub,
            attempt,
            retry_in,
        } => {
            failed(shared, member(sub), "rejected", attempt, retry_in);
            if let Some(mb) = member(sub) {
                shared.catchup.rejected(mb.index);
            }
            None
        }
        Happening::Unanswered {
            sub,
            attempt,
            retry_in,
        } => {
            failed(shared, member(sub), "unanswered", attempt, retry_in);
            if let Some(mb) = member(sub) {
                // The platform's answer to a rotated token: none. Check the profile.
                shared.catchup.unanswered(mb.index);
            }
            None
        }
        Happening::StreamingUnconfirmed { sub } => {
            if let Some(mb) = member(sub) {
                let first = shared.status.set_unconfirmed_streaming(mb.index);
                emit(
                    m,
                    t::SubscriptionStreamingUnconfirmed {
                        account: mb.receiver.account_id,
                        user: mb.receiver.user_id,
                        token: mb.identifier.token(),
                        first,
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

fn failed(
    shared: &Shared,
    member: Option<&Member>,
    cause: &'static str,
    attempt: u32,
    retry_in: Duration,
) {
    let Some(mb) = member else { return };
    let (state, error) = match cause {
        "rejected" => (SubState::Rejected, "rejected by the server"),
        _ => (
            SubState::Unanswered,
            "no confirm or reject within the confirm timeout",
        ),
    };
    shared.status.set_sub(mb.index, state);
    shared.status.sub_failed(mb.index, error);
    let token = mb.identifier.token();
    emit(
        &shared.metrics,
        t::SubscriptionFailed {
            account: mb.receiver.account_id,
            token,
            cause,
            attempt,
            retry_in,
        },
    );
}

/// One event: count, filter, dedup, route, buffer (waiting when the buffer is full).
async fn deliver(shared: &Shared, members: &[Member], delivery: Delivery<'_>) {
    let Some(member) = members.get(delivery.sub.0 as usize) else {
        return;
    };
    let event = &delivery.event;
    let event_label = event.kind.name().unwrap_or("other");
    let m = &shared.metrics;
    let received_at = SystemTime::now();
    let account = Router::account_of(event, &member.receiver);
    emit(
        m,
        t::EventReceived {
            event_label,
            account,
        },
    );
    shared.status.event(member.index, now_ms());
    if event.kind == EventKind::UserLogout {
        shared.status.set_logged_out(member.index);
        emit(
            m,
            t::TokenLoggedOut {
                account: member.receiver.account_id,
                token: member.identifier.token(),
            },
        );
    }
    if !shared.router.allows(&event.name) {
        emit(m, t::EventFiltered { event_label });
        return;
    }
    let accepted_at = Instant::now().into_std();
    if let Some(dedup) = &shared.dedup {
        let verdict = dedup.check(
            account,
            &event.name,
            event.data.as_bytes(),
            member.index as u32,
            accepted_at,
        );
        if verdict == Verdict::Duplicate {
            emit(m, t::EventDeduplicated { event_label });
            return;
        }
    }
    if event.kind == EventKind::MessageCreated {
        if let (Some(conversation), Some(id)) = (event.conversation_id, event.message_id) {
            // Published already (by a catch-up, or on another path): once is enough.
            if shared.catchup.live_message(account, conversation, id) == Claim::Duplicate {
                return;
            }
        }
    }
    match shared
        .router
        .route(event, &member.receiver, received_at, accepted_at)
    {
        Ok(record) => {
            if shared.buffer.push(record).await.is_err() {
                emit(
                    m,
                    t::EventDropped {
                        reason: "buffer_closed",
                        event_label,
                        detail: "shutting down",
                    },
                );
            }
        }
        Err(Unrouted::InvalidTopic(detail)) => emit(
            m,
            t::EventDropped {
                reason: "invalid_topic",
                event_label,
                detail: &detail,
            },
        ),
    }
}
