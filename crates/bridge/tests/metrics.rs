//! `/metrics`, `/healthz`, `/readyz` and `/status` during an end-to-end run, checked against
//! what happened. The scrape is left in `target/e2e-metrics.prom` for `promtool check metrics`.

use voxsig_testkit::rig as support;
use voxsig_testkit::total;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use voxsig_sim::{DeliveryStatus, Refusal, Selection, SimConfig, TokenSelection};

/// A plain HTTP/1.0 GET: (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (code, body)
}

/// A sample's value in Prometheus text: `name{labels} value`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split_whitespace().next() == Some(series))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum()
}

/// Frames the sim has written to sockets of the rig's tokens.
fn written(rig: &Rig) -> f64 {
    rig.sim
        .ground_truth()
        .events
        .iter()
        .flat_map(|e| &e.deliveries)
        .filter(|d| d.status == DeliveryStatus::Written && rig.tokens.contains(&d.token))
        .count() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status_tell_what_happened() {
    let sim = sim(
        world(3, 1, 1, 0),
        SimConfig::default().with_refusal(Refusal::Reject),
    )
    .await;
    let bogus = "[[accounts]]\naccount_id = 2\nuser_id = 999\npubsub_token = \"notARealToken000000000000\"\n";
    let rig = rig_on(
        sim,
        TokenSelection::All,
        "[metrics]\nper_account_labels = true\nmax_accounts = 2\n",
        bogus,
    )
    .await;
    let addr = serve_http(&rig).await;
    rig.confirmed(6).await;
    assert_eq!(get(addr, "/healthz").await.0, 200);

    // A reconnect, then a burst.
    let first_generation = rig.sim.stats().connections_total;
    rig.sim.faults().drop_connections();
    eventually("a reconnect", Duration::from_secs(20), || {
        rig.metric("voxsig_bridge_reconnects_total", &[]) >= 1.0
    })
    .await;
    rig.confirmed(6).await;
    // Frames written around the drop may never be read; count from a settled point on.
    eventually("the reconnect's confirms", Duration::from_secs(20), || {
        let counts = rig.bridge().status().sub_counts();
        counts
            .iter()
            .any(|(state, n)| state.label() == "confirmed" && *n == 6)
    })
    .await;
    rig.sim
        .wait_for_delivery(Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received_before = rig.metric("voxsig_bridge_events_received_total", &[]);
    let written_before = written(&rig);
    rig.sim.burst(300, &Selection::all()).await.unwrap();
    rig.assert_exactly_once_across_a_drop(first_generation, Duration::from_secs(30))
        .await;
    let published = rig.memory.len();
    eventually("the rejected subscription", Duration::from_secs(20), || {
        rig.metric(
            "voxsig_bridge_subscription_failures_total",
            &[("cause", "rejected")],
        ) >= 1.0
    })
    .await;
    // Every frame the sim wrote to our sockets since then counts as received (presence replies
    // may still be on their way, so wait for the two to agree).
    eventually(
        "every written frame counted",
        Duration::from_secs(20),
        || {
            rig.metric("voxsig_bridge_events_received_total", &[]) - received_before
                == written(&rig) - written_before
        },
    )
    .await;

    let (code, text) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-metrics.prom");
    std::fs::write(&path, &text).unwrap();

    assert_eq!(
        total(&text, "voxsig_bridge_events_received_total") - received_before,
        written(&rig) - written_before,
        "every frame received is counted"
    );
    assert_eq!(
        total(&text, "voxsig_bridge_sink_records_published_total"),
        published as f64
    );
    assert!(sample(&text, "voxsig_bridge_reconnects_total") >= 1.0);
    assert!(
        sample(
            &text,
            r#"voxsig_bridge_subscription_failures_total{cause="rejected"}"#
        ) >= 1.0
    );
    assert_eq!(
        sample(&text, r#"voxsig_bridge_subscriptions{state="confirmed"}"#),
        6.0
    );
    assert_eq!(
        sample(&text, r#"voxsig_bridge_subscriptions{state="rejected"}"#),
        1.0
    );
    assert_eq!(sample(&text, r#"voxsig_bridge_sockets{state="open"}"#), 1.0);
    assert_eq!(sample(&text, "voxsig_bridge_ready"), 1.0);
    assert!(sample(&text, "voxsig_bridge_last_ping_age_seconds") < 5.0);
    assert!(total(&text, "voxsig_bridge_events_deduplicated_total") > 0.0);
    // Far below dedup.max_entries: nothing forgotten, and the series is there at 0.
    assert!(
        text.lines()
            .any(|l| l == "voxsig_bridge_dedup_forgotten_total 0"),
        "voxsig_bridge_dedup_forgotten_total at 0"
    );
    assert!(
        sample(
            &text,
            "voxsig_bridge_sink_publish_latency_seconds_count{sink=\"memory\"}"
        ) >= published as f64
    );
    assert!(text.contains("process_resident_memory_bytes"));
    // Per-account series are capped: two accounts by name, the rest as "other".
    let accounts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("voxsig_bridge_account_events_received_total{"))
        .collect();
    assert_eq!(accounts.len(), 3, "{accounts:?}");
    assert!(accounts.iter().any(|l| l.contains("account=\"other\"")));
    assert!(!text.contains("notARealToken"));

    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(addr, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let subs = status["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 7);
    let rejected: Vec<_> = subs.iter().filter(|s| s["state"] == "rejected").collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["user_id"], 999);
    assert!(rejected[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("rejected"));
    assert!(status["sockets"][0]["reconnects"].as_u64().unwrap() >= 1);
    assert!(!body.contains("notARealToken") && body.contains("tok…"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_enough_subscriptions_are_confirmed() {
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    // Two tokens the sim does not know: never confirmed.
    let bogus = "[[accounts]]\naccount_id = 1\nuser_id = 998\npubsub_token = \"bogusA000000000000000000\"\n\
                 [[accounts]]\naccount_id = 1\nuser_id = 999\npubsub_token = \"bogusB000000000000000000\"\n";
    let rig = rig_on(
        sim,
        TokenSelection::Users,
        "[metrics]\nready_fraction = 0.9\n",
        bogus,
    )
    .await;
    let addr = serve_http(&rig).await;
    rig.confirmed(1).await;
    eventually(
        "the bridge saw the confirm",
        Duration::from_secs(20),
        || rig.metric("voxsig_bridge_subscriptions_confirmed_total", &[]) >= 1.0,
    )
    .await;
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness["confirmed"], 1);
    assert_eq!(readiness["subscriptions"], 3);
    assert_eq!(get(addr, "/healthz").await.0, 200);
    rig.stop().await;
}

/// Serves the rig's bridge's HTTP endpoints on a free loopback port.
async fn serve_http(rig: &Rig) -> std::net::SocketAddr {
    rig.bridge()
        .serve_http("127.0.0.1:0".parse().unwrap())
        .await
        .expect("serves")
}
