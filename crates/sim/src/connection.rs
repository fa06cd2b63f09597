//! One WebSocket connection: the handshake, a reader that handles client commands, and a writer
//! task draining the socket's bounded queue.

use crate::config::Refusal;
use crate::door::Rewind;
use crate::hub::{Outgoing, SocketEntry, Target};
use crate::shared::{Admitted, Shared};
use crate::truth::PresenceRecord;
use crate::truth::Ticket;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;
use voxsig_protocol::identifier::ROOM_CHANNEL;
use voxsig_protocol::IdentifierKey;

/// The subprotocol Rails offers (the protocol crate's).
pub use voxsig_protocol::SUBPROTOCOL;

/// The first frame of every connection.
pub(crate) const WELCOME: &str = r#"{"type":"welcome"}"#;

/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the reader waits for the client's close reply after a `disconnect`.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Frames written between two flushes at most.
const WRITE_BATCH: usize = 512;

type Ws = WebSocketStream<Rewind>;

/// Accepts a connection (its head already read by the door) as a WebSocket and serves it until
/// it closes.
pub(crate) async fn serve(shared: Arc<Shared>, tcp: Rewind) {
    let path = shared.config.path.clone();
    #[allow(clippy::result_large_err)] // The signature is tungstenite's handshake callback.
    let check = move |req: &Request, resp: Response| check_request(&path, req, resp);
    let max = shared.config.max_client_message;
    // Client frames are small: a small read chunk keeps 10k sockets cheap (tungstenite
    // allocates and zeroes a chunk per read).
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(tcp, check, Some(ws_config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            debug!("handshake timed out");
            return;
        }
    };
    let id = shared.hub.next_connection_id();
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel(shared.config.queue_capacity.max(4));
    let _ = tx.try_send(Outgoing::Text(Utf8Bytes::from_static(WELCOME)));
    let (go, ready) = oneshot::channel();
    let writer = tokio::spawn(write_loop(shared.clone(), id, sink, rx));
    let reader = tokio::spawn(read_loop(shared.clone(), id, stream, tx.clone(), ready));
    shared.hub.add_socket(
        id,
        SocketEntry {
            tx,
            reader: reader.abort_handle(),
            writer: writer.abort_handle(),
        },
    );
    let _ = go.send(());
    debug!(connection = id, "connected");
}

/// A socket writer's queue and what it fed but has not flushed yet. However the writer ends
/// (socket error, close, abort), dropping this counts every event frame left as dropped; their
/// tickets mark the ground truth.
struct Queue {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Outgoing>,
    unflushed: u64,
    tickets: Vec<Ticket>,
}

impl Queue {
    fn flushed(&mut self) {
        let counters = &self.shared.counters;
        counters
            .written
            .fetch_add(self.unflushed, Ordering::Relaxed);
        self.unflushed = 0;
        self.tickets.drain(..).for_each(Ticket::written);
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.rx.close();
        let mut dropped = self.unflushed;
        while let Ok(item) = self.rx.try_recv() {
            dropped += u64::from(matches!(item, Outgoing::Event(..)));
        }
        self.shared
            .counters
            .dropped
            .fetch_add(dropped, Ordering::Relaxed);
    }
}

/// Answers 404 off the WebSocket path, and chooses `actioncable-v1-json` when the client offers
/// it (a client offering nothing is accepted too, as Rails does).
#[allow(clippy::result_large_err)] // The signature is tungstenite's handshake callback.
fn check_request(path: &str, req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() != path {
        let mut not_found = ErrorResponse::new(Some("not found".to_owned()));
        *not_found.status_mut() = StatusCode::NOT_FOUND;
        return Err(not_found);
    }
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if offered {
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(resp)
}

/// Drains the socket's queue, a batch per flush; a slow-writer fault delays and flushes every
/// frame.
async fn write_loop(
    shared: Arc<Shared>,
    id: u64,
    mut sink: SplitSink<Ws, Message>,
    rx: mpsc::Receiver<Outgoing>,
) {
    let mut q = Queue {
        shared: shared.clone(),
        rx,
        unflushed: 0,
        tickets: Vec::new(),
    };
    let outages = shared.knobs.outages();
    'socket: while let Some(first) = q.rx.recv().await {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(item) = next.take() {
            // Account for the frame as soon as it leaves the queue, so an abort in the middle
            // still counts it.
            let msg = match item {
                Outgoing::Text(text) => Message::Text(text),
                Outgoing::Event(text, ticket) => {
                    q.unflushed += 1;
                    q.tickets.extend(ticket);
                    Message::Text(text)
                }
                Outgoing::Binary(bytes) => Message::Binary(bytes),
                Outgoing::Finish => break 'socket,
                Outgoing::Disconnect(frame) => {
                    let close = Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: Utf8Bytes::from_static(""),
                    }));
                    if sink.feed(Message::Text(frame)).await.is_ok()
                        && sink.send(close).await.is_ok()
                    {
                        q.flushed();
                    }
                    // The client answers the close; if it does not, cut the socket.
                    tokio::time::sleep(CLOSE_GRACE).await;
                    break 'socket;
                }
            };
            let slow = shared.knobs.slow_writer();
            if let Some(delay) = slow {
                tokio::time::sleep(delay).await;
            }
            if shared.knobs.outages() != outages {
                break 'socket; // the platform is down: nothing more leaves this socket
            }
            let fed = sink.feed(msg).await;
            if fed.is_err() {
                break 'socket;
            }
            n += 1;
            if slow.is_none() && n < WRITE_BATCH {
                next = q.rx.try_recv().ok();
            }
        }
        if shared.knobs.outages() != outages || sink.flush().await.is_err() {
            break;
        }
        q.flushed();
    }
    drop(q);
    if shared.knobs.outages() == outages {
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    } // else an outage: the socket is cut without flushing what was fed
    shared.hub.abort_socket(id);
}

/// A client command frame.
#[derive(Deserialize)]
struct ClientFrame {
    command: String,
    identifier: String,
    #[serde(default)]
    data: Option<String>,
}

/// An identifier held by a socket.
enum Held {
    Confirmed {
        target: Arc<Target>,
        admitted: Admitted,
    },
    /// Refused silently; `Some` when it still streams its token's events.
    Pending(Option<Arc<Target>>),
}

/// The reader's state; dropping it (socket closed or aborted) unregisters the socket.
struct Conn {
    shared: Arc<Shared>,
    id: u64,
    tx: mpsc::Sender<Outgoing>,
    held: HashMap<Arc<str>, Held>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let (mut confirmed, mut pending) = (0, 0);
        let mut tokens = Vec::new();
        for held in self.held.values() {
            match held {
                Held::Confirmed { target, .. } => {
                    confirmed += 1;
                    tokens.push(target.token.clone());
                }
                Held::Pending(streaming) => {
                    pending += 1;
                    tokens.extend(streaming.iter().map(|t| t.token.clone()));
                }
            }
        }
        self.shared
            .hub
            .remove_socket(self.id, tokens.iter().map(|t| &**t), confirmed, pending);
        debug!(connection = self.id, "disconnected");
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    id: u64,
    mut stream: SplitStream<Ws>,
    tx: mpsc::Sender<Outgoing>,
    ready: oneshot::Receiver<()>,
) {
    let _ = ready.await;
    let mut conn = Conn {
        shared,
        id,
        tx,
        held: HashMap::new(),
    };
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Text(text)) => conn.command(&text).await,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Unregister (no more events), then let the writer answer the close and stop.
    let tx = conn.tx.clone();
    drop(conn);
    let _ = tokio::time::timeout(CLOSE_GRACE, tx.send(Outgoing::Finish)).await;
}

/// JSON-escapes an identifier for use inside a frame (without the quotes).
fn escape(identifier: &str) -> Arc<str> {
    let quoted = serde_json::to_string(identifier).unwrap_or_else(|_| "\"\"".to_owned());
    Arc::from(&quoted[1..quoted.len() - 1])
}

fn control_frame(escaped: &str, kind: &str) -> Utf8Bytes {
    format!("{{\"identifier\":\"{escaped}\",\"type\":\"{kind}\"}}").into()
}

impl Conn {
    async fn command(&mut self, text: &str) {
        // Rails answers invalid JSON, unknown commands and unknown identifiers with nothing.
        let Ok(frame) = serde_json::from_str::<ClientFrame>(text) else {
            return;
        };
        match frame.command.as_str() {
            "subscribe" => self.subscribe(frame.identifier).await,
            "unsubscribe" => self.unsubscribe(&frame.identifier),
            "message" => self.message(&frame.identifier, frame.data.as_deref()).await,
            _ => {}
        }
    }

    async fn send(&self, frame: Utf8Bytes) {
        let send = self.tx.send(Outgoing::Text(frame));
        let _ = tokio::time::timeout(self.shared.config.send_timeout, send).await;
    }

    async fn subscribe(&mut self, identifier: String) {
        if self.held.contains_key(identifier.as_str()) {
            return; // Rails ignores a repeated subscribe silently.
        }
        let Ok(key) = IdentifierKey::parse(&identifier) else {
            return;
        };
        if key.channel != ROOM_CHANNEL {
            return;
        }
        let identifier: Arc<str> = Arc::from(identifier);
        let target = Arc::new(Target {
            connection: self.id,
            token: Arc::from(key.pubsub_token.expose()),
            escaped: escape(&identifier),
            identifier: identifier.clone(),
            tx: self.tx.clone(),
        });
        let hub = &self.shared.hub;
        match self.shared.authorize(&key) {
            Ok(admitted) => {
                // Confirm first, then stream: no event precedes the confirmation.
                self.send(control_frame(&target.escaped, "confirm_subscription"))
                    .await;
                hub.add_stream(target.clone());
                hub.gauges.send_modify(|s| {
                    s.subscriptions += 1;
                    s.confirmed_total += 1;
                });
                self.shared
                    .touch_presence(admitted.account_id, admitted.member);
                self.shared
                    .reply_presence(&target, admitted.account_id, admitted.member)
                    .await;
                self.held
                    .insert(identifier, Held::Confirmed { target, admitted });
            }
            Err(refused) if refused.how == Refusal::Reject => {
                hub.gauges.send_modify(|s| s.rejected_total += 1);
                self.send(control_frame(&target.escaped, "reject_subscription"))
                    .await;
            }
            Err(refused) => {
                let streaming = (refused.known_token && self.shared.config.stream_before_auth)
                    .then(|| {
                        hub.add_stream(target.clone());
                        target
                    });
                hub.gauges.send_modify(|s| {
                    s.pending_subscriptions += 1;
                    s.refused_silently_total += 1;
                });
                self.held.insert(identifier, Held::Pending(streaming));
            }
        }
    }

    fn unsubscribe(&mut self, identifier: &str) {
        let hub = &self.shared.hub;
        match self.held.remove(identifier) {
            Some(Held::Confirmed { target, .. }) => {
                hub.remove_stream(&target.token, self.id, identifier);
                hub.gauges.send_modify(|s| s.subscriptions -= 1);
            }
            Some(Held::Pending(streaming)) => {
                if let Some(t) = streaming {
                    hub.remove_stream(&t.token, self.id, identifier);
                }
                hub.gauges.send_modify(|s| s.pending_subscriptions -= 1);
            }
            None => {}
        }
    }

    async fn message(&mut self, identifier: &str, data: Option<&str>) {
        #[derive(Deserialize)]
        struct Action {
            action: String,
        }
        let Some(Held::Confirmed { target, admitted }) = self.held.get(identifier) else {
            return;
        };
        let Some(Ok(action)) = data.map(serde_json::from_str::<Action>) else {
            return;
        };
        if action.action != "update_presence" {
            return;
        }
        let (target, admitted) = (target.clone(), *admitted);
        let shared = &self.shared;
        shared.truth.presence(PresenceRecord {
            token: target.token.to_string(),
            identifier: identifier.to_owned(),
            connection: self.id,
            at: Instant::now(),
            at_ms: shared.millis(),
        });
        shared
            .hub
            .gauges
            .send_modify(|s| s.presence_updates_total += 1);
        shared.touch_presence(admitted.account_id, admitted.member);
        shared
            .reply_presence(&target, admitted.account_id, admitted.member)
            .await;
    }
}
