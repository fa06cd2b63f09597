//! Reconnect back-off against a hostile platform (issue 12, item 4): a server that welcomes and
//! then sends a poison frame is not hammered, and the loss of a healthy connection is followed by
//! an immediate reconnect.

use voxsig_testkit::hostile;
use voxsig_testkit::rig as support;

use hostile::{raw_text_frame, Hostile};
use prometheus::Registry;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::metric;
use voxsig_bridge::{Bridge, Config};
use voxsig_sinks::MemorySink;

async fn bridge_on(url: &str, reconnect: &str) -> (Bridge, Registry) {
    let toml = format!(
        "[source]\nurl = \"{url}\"\nconnect_rate = 1000.0\nreconnect = {{ {reconnect} }}\n[[accounts]]\naccount_id = 1\nuser_id = 2\npubsub_token = \"backoffTok3n\"\n"
    );
    let settings = Config::from_toml(&toml).unwrap().validate().unwrap();
    let registry = Registry::new();
    let (sink, _memory) = MemorySink::new();
    let bridge = Bridge::start_with_sink(settings, Box::new(sink), &registry)
        .await
        .unwrap();
    (bridge, registry)
}

/// Welcome, confirm, then a text frame that is not UTF-8: tungstenite cannot go on, the
/// connection ends right after the welcome. It used to reset the back-off on every welcome
/// (about one connect per `initial`); now the back-off grows to its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sending_poison_after_welcome_is_retried_on_the_back_off() {
    let accepted = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let log = accepted.clone();
    let server = Hostile::start(move |mut conn, _| {
        log.lock().unwrap().push(Instant::now());
        async move {
            conn.welcome().await;
            if let Some(id) = conn.subscribe(Duration::from_secs(5)).await {
                conn.confirm(&id).await;
            }
            conn.raw(&raw_text_frame(
                b"{\"type\":\"ping\",\"message\":\"\xff\xfe\"}",
            ))
            .await;
            conn.drain(Duration::from_secs(2)).await;
        }
    })
    .await;
    // Equal jitter: every wait at least half its step; the cap is 300 ms, so at least 150 ms.
    let (bridge, registry) = bridge_on(
        &server.url,
        "initial = \"20ms\", max = \"300ms\", jitter = \"equal\"",
    )
    .await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    bridge.shutdown(Duration::from_secs(2)).await;
    let accepted = accepted.lock().unwrap().clone();
    let late = accepted
        .iter()
        .filter(|t| t.duration_since(start) >= Duration::from_secs(1))
        .filter(|t| t.duration_since(start) < Duration::from_secs(3))
        .count();
    eprintln!(
        "poison server: {} connects in 3 s, {late} in the last 2 s",
        accepted.len()
    );
    assert!(accepted.len() >= 3, "it does reconnect: {}", accepted.len());
    // At the cap: waits of at least 150 ms, so at most 2 s / 150 ms + 1 connects in 2 s.
    assert!(late <= 14, "{late} connects in 2 s against a poison server");
    let not_utf8 = metric(
        &registry,
        "voxsig_bridge_frame_errors_total",
        &[("kind", "not_utf8")],
    );
    assert!(
        not_utf8 >= (accepted.len() - 1) as f64,
        "invalid UTF-8 counted: {not_utf8} for {} connects",
        accepted.len()
    );
}

/// A connection that was healthy (confirmed, quiet for `healthy_after`) and is then lost is
/// replaced at once, not after a random wait of up to `initial`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_reconnect_after_a_healthy_connection_is_immediate() {
    let times = Arc::new(Mutex::new(Vec::<(&'static str, Instant)>::new()));
    let log = times.clone();
    let server = Hostile::start(move |mut conn, _| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(("open", Instant::now()));
            conn.welcome().await;
            if let Some(id) = conn.subscribe(Duration::from_secs(5)).await {
                conn.confirm(&id).await;
            }
            for at in 0..5 {
                conn.ping(at).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            log.lock().unwrap().push(("close", Instant::now()));
            // Dropping the socket: the connection is lost without a close handshake.
        }
    })
    .await;
    let (bridge, _registry) = bridge_on(
        &server.url,
        "initial = \"2s\", max = \"10s\", jitter = \"full\", healthy_after = \"250ms\"",
    )
    .await;
    support::eventually("four connections", Duration::from_secs(10), || {
        times
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == "open")
            .count()
            >= 4
    })
    .await;
    bridge.shutdown(Duration::from_secs(2)).await;
    let times = times.lock().unwrap().clone();
    let gaps: Vec<Duration> = times
        .windows(2)
        .filter(|w| w[0].0 == "close" && w[1].0 == "open")
        .map(|w| w[1].1.duration_since(w[0].1))
        .collect();
    eprintln!("reconnect gaps after healthy connections: {gaps:?}");
    assert!(gaps.len() >= 3, "{times:?}");
    for gap in gaps {
        assert!(
            gap < Duration::from_millis(200),
            "reconnected after {gap:?}"
        );
    }
}
