//! Instructions per event on the bridge's live path, for `valgrind --tool=callgrind`.
//!
//! A loopback ActionCable server in this process sends `--events` pre-encoded broadcast frames
//! to the bridge (`Bridge::start_with_sink`, the real connection task: WebSocket read, decode,
//! filter, dedup, route, buffer) publishing into a null sink, on a single-threaded runtime so
//! the count does not depend on scheduling. The fixed costs (start, TLS roots, handshake) are
//! taken out by difference: run it with N and 2N events and divide the difference by N; the
//! frames themselves are built before the bridge starts, and `--generate-only` measures that
//! part alone, to subtract it the same way.
//!
//! ```text
//! cargo bench -p voxsig-bridge --bench per_event --no-run     # prints the binary's path
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p <binary> --events 20000
//! scripts/per-event-callgrind.sh                               # the whole procedure
//! ```
//!
//! Options: `--events N` (frames received), `--kind message|conversation` (a ~1.3 KB
//! `message.created`, or a ~1.3 KB `conversation.status_changed`: the hashed event-id path),
//! `--copies 1|2` (each broadcast on one subscription, or on the two subscriptions of its
//! account: every second frame is a dedup copy), `--subs S` (subscriptions, at most 50),
//! `--keyed` (the null sink stands in for a sink with keys, Kafka's or the JSON-lines sinks', so
//! every record gets its rendered key; by default it stands in for MQTT, which has none),
//! `--catchup ledger|checkpoint` (every entry has an API token, so each live message is claimed
//! in the catch-up ledger; `checkpoint` also sets `[state] dir`, so the claims not yet safe are
//! kept for the checkpoint: no REST request is made either way).
//! Without `--events` (as under `cargo bench` or `cargo test --benches`) it runs a small smoke
//! round and prints wall-clock figures, which are not the measurement.

use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use voxsig_bridge::Config;
use voxsig_testkit::sinks::NullSink;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Message,
    Conversation,
}

struct Options {
    events: Option<u64>,
    kind: Kind,
    copies: u64,
    subs: u64,
    generate_only: bool,
    keyed: bool,
    catchup: Catchup,
}

/// What of the catch-up the run has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Catchup {
    None,
    Ledger,
    Checkpoint,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num =
        |name: &str, default: u64| value(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    Options {
        events: value("--events").and_then(|v| v.parse().ok()),
        kind: match value("--kind").as_deref() {
            Some("conversation") => Kind::Conversation,
            _ => Kind::Message,
        },
        copies: num("--copies", 1).clamp(1, 2),
        subs: num("--subs", 8).clamp(2, 50),
        generate_only: args.iter().any(|a| a == "--generate-only"),
        keyed: args.iter().any(|a| a == "--keyed"),
        catchup: match value("--catchup").as_deref() {
            Some("ledger") => Catchup::Ledger,
            Some("checkpoint") => Catchup::Checkpoint,
            _ => Catchup::None,
        },
    }
}

/// The token of subscription `s`: 24 characters, as the platform's.
fn token(s: u64) -> String {
    format!("perfTok{s:0>17}")
}

/// `(account, user)` of subscription `s`: with copies, two users per account.
fn owner(s: u64, copies: u64) -> (u64, u64) {
    (1 + s / copies, 100 + s)
}

fn config(port: u16, o: &Options, state: &std::path::Path) -> String {
    let mut text = format!(
        "[source]\nurl = \"ws://127.0.0.1:{port}/cable\"\npresence = \"off\"\nstale_after = \"1h\"\n\
         [buffer]\nmax_events = 100000\n"
    );
    if o.catchup == Catchup::Checkpoint {
        text.push_str(&format!("[state]\ndir = \"{}\"\n", state.display()));
    }
    for s in 0..o.subs {
        let (account, user) = owner(s, o.copies);
        text.push_str(&format!(
            "[[accounts]]\naccount_id = {account}\nuser_id = {user}\npubsub_token = \"{}\"\n",
            token(s)
        ));
        if o.catchup != Catchup::None {
            text.push_str(&format!("api_access_token = \"apiTok{s:0>18}\"\n"));
        }
    }
    text
}

/// The `data` of broadcast `i` for `account`: ~1.3 KB, unique per broadcast.
fn data(kind: Kind, account: u64, i: u64) -> String {
    let conversation = 100_000 + i % 64;
    let content = "Thanks for reaching out! I have checked your order and the refund is on its \
                   way; it usually takes 3-5 business days to appear on your statement.";
    match kind {
        Kind::Message => format!(
            r#"{{"id":{id},"content":"{content}","account_id":{account},"inbox_id":1,"conversation_id":{conversation},"message_type":1,"created_at":1795300329,"updated_at":"2026-11-21T22:32:09.000Z","private":false,"status":"sent","source_id":null,"content_type":"text","content_attributes":{{}},"sender_type":"User","sender_id":7,"external_source_ids":{{}},"additional_attributes":{{}},"processed_message_content":"{content}","sentiment":{{}},"conversation":{{"assignee_id":7,"unread_count":0,"last_activity_at":1795300329,"contact_inbox":{{"source_id":"3f1c2a9e-0101-4a55-9a1e-1b2c3d4e0101"}}}},"sender":{{"id":7,"name":"Alice Admin","available_name":"Alice Admin","avatar_url":"","type":"user","availability_status":"online","thumbnail":""}}}}"#,
            id = 300_000 + i
        ),
        Kind::Conversation => format!(
            r#"{{"id":{conversation},"account_id":{account},"inbox_id":1,"status":"open","agent_last_seen_at":{seen},"contact_last_seen_at":1795300329,"timestamp":1795300329,"unread_count":0,"can_reply":true,"channel":"Channel::WebWidget","additional_attributes":{{"browser":{{"device_name":"Unknown","browser_name":"Chrome","platform_name":"Linux","browser_version":"124.0.0.0","platform_version":"0"}},"referer":"https://voxsig.example/pricing","initiated_at":{{"timestamp":"2026-11-21 22:27:09 UTC"}}}},"labels":["billing","refund","priority"],"meta":{{"sender":{{"id":12,"name":"Dana Customer","email":"dana@example.invalid","phone_number":null,"thumbnail":"","additional_attributes":{{}},"custom_attributes":{{}}}},"assignee":{{"id":7,"name":"Alice Admin","available_name":"Alice Admin","avatar_url":"","type":"user","availability_status":"online","thumbnail":""}},"hmac_verified":false}},"messages":[{{"id":1,"content":"{content}","message_type":0}}],"custom_attributes":{{}},"snoozed_until":null,"first_reply_created_at":null,"priority":null,"waiting_since":1795300329}}"#,
            seen = 1_795_000_000 + i
        ),
    }
}

/// One server-to-client text frame (unmasked), appended to `out`.
fn ws_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Every broadcast frame, encoded: `events` frames over the subscriptions, round robin by
/// account; with copies, each broadcast goes to both subscriptions of its account.
fn frames(o: &Options, events: u64, identifiers: &[String]) -> Vec<u8> {
    let accounts = o.subs / o.copies;
    let name = match o.kind {
        Kind::Message => "message.created",
        Kind::Conversation => "conversation.status_changed",
    };
    let quoted: Vec<String> = identifiers
        .iter()
        .map(|id| serde_json::to_string(id).expect("string"))
        .collect();
    let mut out = Vec::with_capacity(events as usize * 1400);
    let broadcasts = events / o.copies;
    for i in 0..broadcasts {
        let a = i % accounts;
        let (account, _) = owner(a * o.copies, o.copies);
        let data = data(o.kind, account, i);
        for c in 0..o.copies {
            let s = (a * o.copies + c) as usize;
            let frame = format!(
                r#"{{"identifier":{},"message":{{"event":"{name}","data":{data}}}}}"#,
                quoted[s]
            );
            ws_frame(&mut out, frame.as_bytes());
        }
    }
    out
}

/// The identifier the bridge sends for subscription `s` (as its subscribe command carries it).
fn identifier(s: u64, copies: u64) -> String {
    let (account, user) = owner(s, copies);
    format!(
        r#"{{"channel":"RoomChannel","pubsub_token":"{}","account_id":{account},"user_id":{user}}}"#,
        token(s)
    )
}

#[allow(clippy::result_large_err)] // tungstenite's handshake callback signature.
fn choose_subprotocol(
    _req: &Request,
    mut resp: Response,
) -> Result<Response, tokio_tungstenite::tungstenite::handshake::server::ErrorResponse> {
    resp.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("actioncable-v1-json"),
    );
    Ok(resp)
}

/// Runs one measurement; returns (records published, seconds from first frame to the last
/// record).
async fn run(o: &Options, events: u64) -> (u64, f64) {
    let identifiers: Vec<String> = (0..o.subs).map(|s| identifier(s, o.copies)).collect();
    let burst = frames(o, events, &identifiers);
    if o.generate_only {
        return (burst.len() as u64, 0.0);
    }
    let expect = events / o.copies;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let state = std::env::temp_dir().join(format!("per-event-state-{}", std::process::id()));
    let settings = Config::from_toml(&config(port, o, &state))
        .expect("config")
        .validate()
        .expect("valid");
    let counter = Arc::new(AtomicU64::new(0));
    let registry = prometheus::Registry::new();
    let bridge = voxsig_bridge::Bridge::start_with_sink(
        settings,
        Box::new(if o.keyed {
            NullSink::keyed(counter.clone())
        } else {
            NullSink::keyless(counter.clone())
        }),
        &registry,
    )
    .await
    .expect("bridge");

    let (tcp, _) = listener.accept().await.expect("accept");
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, choose_subprotocol)
        .await
        .expect("handshake");
    ws.send(Message::text(r#"{"type":"welcome"}"#))
        .await
        .expect("welcome");
    let mut confirmed = 0;
    while confirmed < o.subs {
        let Some(Ok(Message::Text(text))) = ws.next().await else {
            panic!("the bridge closed before subscribing");
        };
        let command: serde_json::Value = serde_json::from_str(&text).expect("command");
        if command["command"] == "subscribe" {
            let id = command["identifier"].as_str().expect("identifier");
            assert!(
                identifiers.iter().any(|i| i == id),
                "unexpected identifier {id}"
            );
            let confirm = serde_json::json!({"identifier": id, "type": "confirm_subscription"});
            ws.send(Message::text(confirm.to_string()))
                .await
                .expect("confirm");
            confirmed += 1;
        }
    }
    let started = Instant::now();
    // The single-threaded runtime runs the bridge's tasks whenever the socket is full.
    ws.get_mut().write_all(&burst).await.expect("burst");
    let deadline = started + Duration::from_secs(600);
    while counter.load(Ordering::Relaxed) < expect && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let published = counter.load(Ordering::Relaxed);
    drop(bridge);
    let _ = std::fs::remove_dir_all(&state);
    (published, secs)
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match o.events {
        Some(events) => {
            let (published, secs) = runtime.block_on(run(&o, events));
            println!("events {events} published {published} in {secs:.3} s");
            // Leave without the orderly shutdown: it is no part of the per-event cost.
            std::process::exit(if o.generate_only || published == events / o.copies {
                0
            } else {
                1
            });
        }
        None => {
            let events = 2_000;
            let (published, secs) = runtime.block_on(run(&o, events));
            println!(
                "smoke: {published} / {events} records in {secs:.3} s ({:.1} µs/event wall, not a measurement)",
                secs * 1e6 / events as f64
            );
            assert_eq!(published, events / o.copies);
            std::process::exit(0);
        }
    }
}
