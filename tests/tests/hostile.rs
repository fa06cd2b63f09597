//! Hostile platform -> voxsig-bridge -> real Mosquitto: what a broken or malicious feed must not
//! be able to do to the MQTT side.

use voxsig_testkit::brokers;
use voxsig_testkit::hostile;
use voxsig_testkit::mqtt::on_publish;

use brokers::{Mosquitto, MosquittoOptions};
use hostile::Hostile;
use rumqttc::MqttOptions;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use voxsig_bridge::{Bridge, Config};

/// Event names mosquitto refuses in a topic: control characters, C1 controls, non-characters.
const POISON: &[&str] = &[
    "evil\u{1}name",
    "line\nbreak",
    "\u{1b}[2J",
    "del\u{7f}",
    "c1\u{85}",
    "c1\u{9f}",
    "nc\u{fdd0}",
    "nc\u{fdef}",
    "nc\u{fffe}",
    "nc\u{ffff}",
    "nc\u{1fffe}",
    "nc\u{10ffff}",
    "nul\u{0}",
];

/// Everything published under `filter`, as (topic, payload, retain).
async fn subscriber(port: u16, filter: &str) -> Arc<Mutex<Vec<(String, Vec<u8>, bool)>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut options = MqttOptions::new("hostile-sub", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let sink = got.clone();
    on_publish(options, filter, move |p| {
        sink.lock()
            .unwrap()
            .push((p.topic.clone(), p.payload.to_vec(), p.retain))
    })
    .await;
    got
}

/// Item 1 of issue 12: event names with control characters or non-characters used to reach
/// mosquitto in the topic; it closed the connection on each (a reconnect, an `offline` will and
/// a stall per name). Now they are sanitised: one connection, no will, every event delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_names_never_cost_the_mqtt_connection() {
    const GOOD: usize = 300;
    let broker = Mosquitto::start(MosquittoOptions::default());
    let got = subscriber(broker.port, "voxsig/#").await;
    let server = Hostile::start(|mut conn, _| async move {
        conn.welcome().await;
        let Some(id) = conn.subscribe(Duration::from_secs(10)).await else {
            return;
        };
        conn.confirm(&id).await;
        for i in 0..GOOD {
            if i % 20 == 10 {
                let name = POISON[(i / 20) % POISON.len()];
                conn.event(
                    &id,
                    name,
                    serde_json::json!({"account_id": 1, "seq": 100_000 + i}),
                )
                .await;
            }
            conn.event(
                &id,
                "message.created",
                serde_json::json!({"account_id": 1, "seq": i}),
            )
            .await;
            if i % 10 == 0 {
                conn.flush().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        conn.flush().await;
        // Keep the socket alive with pings until the test ends.
        for at in 0..200 {
            if !conn.ping(at).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let toml = format!(
        r#"
[source]
url = "{}"
stale_after = "5s"
connect_rate = 1000.0
[[accounts]]
account_id = 1
user_id = 7
pubsub_token = "hostile-token-0001"
[dedup]
enabled = false
[sink]
kind = "mqtt"
url = "{}"
qos = 1
client_id = "hostile-bridge"
reconnect = {{ min_backoff_ms = 50, max_backoff_ms = 500 }}
"#,
        server.url,
        broker.url()
    );
    let settings = Config::from_toml(&toml).unwrap().validate().unwrap();
    let registry = prometheus::Registry::new();
    let bridge = Bridge::start(settings, &registry).await.expect("bridge");
    let poison_sent = (0..GOOD).filter(|i| i % 20 == 10).count();
    let delivered = brokers::eventually(Duration::from_secs(15), || {
        got.lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t.starts_with("voxsig/1/"))
            .count()
            >= GOOD + poison_sent
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bridge.shutdown(Duration::from_secs(5)).await;
    let got = got.lock().unwrap().clone();
    let log = broker.log();
    let connects = log.matches("as hostile-bridge").count();
    let offline = got
        .iter()
        .filter(|(t, p, _)| t.starts_with("voxsig/bridge/") && p == b"offline")
        .count();
    let events: Vec<&(String, Vec<u8>, bool)> = got
        .iter()
        .filter(|(t, _, _)| t.starts_with("voxsig/1/"))
        .collect();
    assert!(
        delivered,
        "every event delivered within 15 s: {} of {}; mosquitto log:\n{log}",
        events.len(),
        GOOD + poison_sent
    );
    for (topic, _, _) in &events {
        assert_eq!(topic.matches('/').count(), 2, "{topic:?} keeps its shape");
        assert!(
            !topic
                .chars()
                .any(|c| c.is_control() || ('\u{fdd0}'..='\u{fdef}').contains(&c)),
            "{topic:?}"
        );
    }
    assert_eq!(connects, 1, "one MQTT connection for the whole run:\n{log}");
    // The will is only published when the connection is lost; a clean stop publishes `offline`
    // itself, once.
    assert!(offline <= 1, "{offline} offline statuses");
    let errors = brokers::metric(&registry, "voxsig_bridge_sink_connection_errors_total", &[]);
    assert_eq!(errors, 0.0, "no sink connection errors");
}
