//! A plain tokio-tungstenite client and raw HTTP helpers for the simulator's tests.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxsig_protocol::{Command, RoomIdentifier};
use voxsig_sim::{Refusal, Sim, SimConfig, World, WorldSpec};

/// How long a test waits for something that should not come.
pub const SHORT: Duration = Duration::from_millis(250);
/// How long a test waits for something that should come.
pub const LONG: Duration = Duration::from_secs(5);

/// A small world and fast pings.
pub fn config() -> SimConfig {
    SimConfig::default()
        .with_ping_interval(Duration::from_millis(150))
        .with_world_spec(WorldSpec {
            accounts: 2,
            users_per_account: 2,
            contacts_per_account: 2,
            conversations_per_contact: 1,
            shared_users: 0,
            seed: 7,
        })
}

/// Starts a simulator with [`config`].
pub async fn start() -> Sim {
    Sim::start(config()).await.expect("sim starts")
}

/// The identifier of the world's `index`-th user, on its first account.
pub fn user(world: &World, index: usize) -> RoomIdentifier {
    let u = &world.users[index];
    world.user_identifier(u.id, u.accounts[0]).expect("user")
}

/// A client with the first user's subscription confirmed.
pub async fn subscribed(sim: &Sim) -> Client {
    let mut c = Client::connect(sim).await;
    c.subscribe_confirmed(&user(&sim.world(), 0)).await;
    c
}

/// The set-up of the token-rotation tests: a simulator answering unknown tokens with
/// `reject_subscription`, the world before the rotation, and a client with the first user's
/// subscription (account 1) confirmed.
pub struct Rotating {
    /// The simulator.
    pub sim: Sim,
    /// The world before any rotation (`before.users[0]` is the subscribed user).
    pub before: World,
    /// The first user's identifier on account 1, with the token it had at start.
    pub old_id: RoomIdentifier,
    /// The client subscribed with `old_id`.
    pub client: Client,
}

/// Starts the [`Rotating`] set-up.
pub async fn rotating() -> Rotating {
    let sim = Sim::start(config().with_refusal(Refusal::Reject))
        .await
        .expect("sim starts");
    let before = sim.world();
    let old_id = before.user_identifier(before.users[0].id, 1).expect("user");
    let mut client = Client::connect(&sim).await;
    client.subscribe_confirmed(&old_id).await;
    Rotating {
        sim,
        before,
        old_id,
        client,
    }
}

/// What a socket read gave.
#[derive(Debug)]
pub enum Got {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame, with its code.
    Close(Option<u16>),
    /// The socket ended without a close frame, or failed.
    Ended,
    /// Nothing within the timeout.
    Nothing,
}

/// Why [`Client::connect_url`] got no socket.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answered the upgrade with an HTTP status other than 101.
    #[error("upgrade refused with HTTP {status}")]
    Refused {
        /// The status, e.g. 503 during an outage, 404 on another path.
        status: u16,
    },
    /// The URL, the connection or the handshake failed.
    #[error("websocket connect failed")]
    WebSocket(#[source] tungstenite::Error),
}

impl From<tungstenite::Error> for ConnectError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(response) => ConnectError::Refused {
                status: response.status().as_u16(),
            },
            other => ConnectError::WebSocket(other),
        }
    }
}

impl ConnectError {
    /// The refusing status, when the server answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectError::Refused { status } => Some(*status),
            ConnectError::WebSocket(_) => None,
        }
    }
}

/// A WebSocket client of the simulator.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
}

impl Client {
    /// Connects offering `actioncable-v1-json`, and checks the welcome.
    pub async fn connect(sim: &Sim) -> Client {
        let mut c = Client::connect_url(&sim.url(), true)
            .await
            .expect("connects");
        assert_eq!(c.text(LONG).await, r#"{"type":"welcome"}"#);
        c
    }

    /// Connects to `url`, offering the ActionCable subprotocol if `offer_protocol`.
    pub async fn connect_url(url: &str, offer_protocol: bool) -> Result<Client, ConnectError> {
        let mut request = url.into_client_request()?;
        if offer_protocol {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(voxsig_sim::SUBPROTOCOL),
            );
        }
        let (ws, resp) = tokio_tungstenite::connect_async(request).await?;
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Client { ws, protocol })
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into().into()))
            .await
            .expect("send");
    }

    /// Starts the close handshake.
    pub async fn close(&mut self) {
        self.ws.close(None).await.expect("close");
    }

    /// Sends `subscribe` for `id`.
    pub async fn subscribe(&mut self, id: &RoomIdentifier) {
        self.send(Command::Subscribe(id).encode()).await;
    }

    /// Sends `unsubscribe` for `id`.
    pub async fn unsubscribe(&mut self, id: &RoomIdentifier) {
        self.send(Command::Unsubscribe(id).encode()).await;
    }

    /// Sends `update_presence` for `id`.
    pub async fn update_presence(&mut self, id: &RoomIdentifier) {
        self.send(Command::UpdatePresence(id).encode()).await;
    }

    /// The next frame of any kind (pings included).
    pub async fn next(&mut self, timeout: Duration) -> Got {
        loop {
            match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return Got::Nothing,
                Ok(None) | Ok(Some(Err(_))) => return Got::Ended,
                Ok(Some(Ok(Message::Text(t)))) => return Got::Text(t.to_string()),
                Ok(Some(Ok(Message::Binary(b)))) => return Got::Binary(b.to_vec()),
                Ok(Some(Ok(Message::Close(f)))) => return Got::Close(f.map(|f| u16::from(f.code))),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next text frame that is not a ping; `None` if nothing else came within `timeout`.
    pub async fn try_text(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Got::Text(t) if t.starts_with(r#"{"type":"ping""#) => continue,
                Got::Text(t) => return Some(t),
                Got::Nothing => return None,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame that is not a ping; fails the test if none comes within `timeout`.
    pub async fn text(&mut self, timeout: Duration) -> String {
        self.try_text(timeout).await.expect("a frame in time")
    }

    /// The next text frame that is not a ping, as JSON.
    pub async fn json(&mut self, timeout: Duration) -> Value {
        serde_json::from_str(&self.text(timeout).await).expect("JSON frame")
    }

    /// Every non-ping text frame until none comes for `idle`.
    pub async fn drain(&mut self, idle: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(t) = self.try_text(idle).await {
            out.push(t);
        }
        out
    }

    /// Expects silence (pings aside) for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(t) = self.try_text(quiet).await {
            panic!("expected no frame, got {t}");
        }
    }

    /// Subscribes and expects the confirmation and the presence answer.
    pub async fn subscribe_confirmed(&mut self, id: &RoomIdentifier) -> Value {
        self.subscribe(id).await;
        let confirm = self.json(LONG).await;
        assert_eq!(confirm["type"], "confirm_subscription", "{confirm}");
        assert_eq!(confirm["identifier"], id.wire());
        let presence = self.json(LONG).await;
        assert_eq!(
            presence["message"]["event"], "presence.update",
            "{presence}"
        );
        presence
    }
}

/// A minimal HTTP/1.1 request; returns the status and the body.
pub async fn http(base: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let (status, _, body) = http_with(base, method, path, "", body).await;
    (status, body)
}

/// A REST GET with the `api_access_token` header (if given); returns the status, the head
/// (lower-cased) and the body as JSON (or a JSON string of the raw body).
pub async fn rest(base: &str, path: &str, token: Option<&str>) -> (u16, String, Value) {
    let headers = token.map_or(String::new(), |t| format!("api_access_token: {t}\r\n"));
    let (status, head, body) = http_with(base, "GET", path, &headers, None).await;
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, head.to_ascii_lowercase(), json)
}

/// A minimal HTTP/1.1 request with extra header lines (each ending in CRLF); returns the
/// status, the head and the body.
pub async fn http_with(
    base: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let host = base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(host).await.expect("admin reachable");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(LONG, tcp.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text[9..12].parse().expect("status");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// A GET that must answer 200 with JSON.
pub async fn get_json(base: &str, path: &str) -> Value {
    let (status, body) = http(base, "GET", path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

/// A POST of `body`; the status and the answer as JSON (or a JSON string of the raw body).
pub async fn post_json(base: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(base, "POST", path, Some(body)).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
