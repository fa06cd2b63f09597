//! sim -> voxsig-bridge -> real brokers. Mosquitto and tansu run as processes of this test on free
//! loopback ports (the shared test support, `voxsig-testkit`); what arrives is read back
//! with plain clients and checked against the simulator's ground truth.

use voxsig_testkit::brokers;
use voxsig_testkit::kafka::{consumer_from_beginning, headers_of};
use voxsig_testkit::mqtt::on_publish;
use voxsig_testkit::wait::until as eventually;

use brokers::{Mosquitto, MosquittoOptions, Tansu};

/// A metric summed over all its series (the testkit's helper, without label filters).
fn metric(registry: &prometheus::Registry, name: &str) -> f64 {
    brokers::metric(registry, name, &[])
}

use rdkafka::message::Message;
use rumqttc::MqttOptions;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use voxsig_bridge::{Bridge, Config};
use voxsig_sim::{
    DeliveryStatus, GroundTruth, Rate, RunSpec, Selection, SentEvent, Sim, SimConfig, WorldSpec,
};

const WAIT: Duration = Duration::from_secs(60);

async fn start_sim() -> Sim {
    // A small world: every subscription shares one socket, so per-conversation order is the
    // order the simulator sent in.
    let spec = WorldSpec {
        accounts: 3,
        users_per_account: 2,
        contacts_per_account: 2,
        conversations_per_contact: 2,
        shared_users: 0,
        seed: 11,
    };
    Sim::start(
        SimConfig::default()
            .with_world_spec(spec)
            .with_ping_interval(Duration::from_millis(500)),
    )
    .await
    .expect("sim")
}

/// A bridge config for the sim's tokens (each once) and the given `[sink]`/`[route]` text.
fn bridge_config(sim: &Sim, tail: &str) -> (voxsig_bridge::Settings, HashSet<String>) {
    let options = voxsig_sim::ExportOptions {
        tokens: voxsig_sim::TokenSelection::All,
        ..Default::default()
    };
    let accounts = sim.world().bridge_config_toml(&options);
    let tokens = sim
        .world()
        .bridge_accounts(&options)
        .into_iter()
        .map(|a| a.pubsub_token)
        .collect();
    let toml = format!(
        "[source]\nurl = \"{}\"\nconnect_rate = 1000.0\nreconnect = {{ initial = \"50ms\", max = \"500ms\" }}\n{tail}\n{accounts}",
        sim.url()
    );
    (
        Config::from_toml(&toml)
            .expect("parses")
            .validate()
            .expect("valid"),
        tokens,
    )
}

/// Every event written to one of our sockets: what the bridge must publish.
fn expected<'a>(
    truth: &'a GroundTruth,
    tokens: &HashSet<String>,
) -> HashMap<(u64, u64), &'a SentEvent> {
    truth
        .events
        .iter()
        .filter(|e| {
            e.deliveries
                .iter()
                .any(|d| d.status == DeliveryStatus::Written && tokens.contains(&d.token))
        })
        .map(|e| ((e.account_id, e.sim_seq), e))
        .collect()
}

fn ids(payload: &[u8]) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("payload is JSON");
    (
        v["account_id"].as_u64().expect("account_id"),
        v["sim_seq"].as_u64().expect("sim_seq"),
    )
}

#[derive(Clone, Debug)]
struct Got {
    topic: String,
    payload: bytes::Bytes,
    retain: bool,
    /// Redelivered by the broker (its session survived the restart with this message unacknowledged).
    dup: bool,
}

/// An MQTT subscriber with a persistent session, collecting everything under `filter`.
async fn subscriber(port: u16, id: &str, clean: bool, filter: &str) -> Arc<Mutex<Vec<Got>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_clean_session(clean)
        .set_keep_alive(Duration::from_secs(5));
    let sink = got.clone();
    // The broker restarts in one test: the client keeps reconnecting.
    on_publish(options, filter, move |p| {
        sink.lock().unwrap().push(Got {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            retain: p.retain,
            dup: p.dup,
        })
    })
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_every_event_on_its_topic_retained_presence_and_a_broker_restart_loses_nothing() {
    let mut broker = Mosquitto::start(MosquittoOptions {
        persistence: true,
        ..MosquittoOptions::default()
    });
    let sim = start_sim().await;
    let got = subscriber(broker.port, "e2e-sub", false, "voxsig/+/+").await;
    let sink = format!("[sink]\nkind = \"mqtt\"\nurl = \"{}\"\nqos = 1\nreconnect = {{ min_backoff_ms = 50, max_backoff_ms = 500 }}\n", broker.url());
    let (settings, tokens) = bridge_config(&sim, &sink);
    let registry = prometheus::Registry::new();
    let bridge = Bridge::start(settings, &registry).await.expect("bridge");
    sim.wait_for_subscriptions(tokens.len(), WAIT)
        .await
        .expect("confirmed");

    // A burst, then a steady run with the broker stopped and restarted in the middle.
    sim.burst(400, &Selection::all()).await.unwrap();
    let run = sim
        .run(RunSpec {
            selection: Selection::all(),
            rate: Rate::Total(300.0),
            duration: Duration::from_secs(4),
            max_events: Some(1200),
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    broker.stop();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    broker.restart();
    run.wait().await.unwrap();
    sim.wait_for_delivery(WAIT).await.unwrap();

    let truth = sim.ground_truth();
    let want = expected(&truth, &tokens);
    eventually("every event at the subscriber", WAIT, || {
        let got = got.lock().unwrap();
        let seen: HashSet<(u64, u64)> = got.iter().map(|g| ids(&g.payload)).collect();
        want.keys().all(|k| seen.contains(k))
    })
    .await;
    let got = got.lock().unwrap().clone();
    let mut copies: HashMap<(u64, u64), usize> = HashMap::new();
    for g in &got {
        let key = ids(&g.payload);
        let sent = want
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} was never sent to our tokens"));
        assert_eq!(
            g.topic,
            format!("voxsig/{}/{}", sent.account_id, sent.event)
        );
        assert_eq!(
            &g.payload[..],
            sent.data.as_bytes(),
            "byte-identical payload"
        );
        *copies.entry(key).or_default() += 1;
    }
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    // QoS 1 allows duplicates two ways: the bridge re-sending what the broker had not
    // acknowledged, and the broker re-sending what the subscriber had not (flagged DUP).
    let redeliveries = metric(&registry, "voxsig_bridge_sink_redeliveries_total");
    let broker_dups = got.iter().filter(|g| g.dup).count();
    eprintln!(
        "mqtt e2e: {} events, {} messages, {duplicates} duplicates, {} bridge redeliveries, {broker_dups} broker redeliveries",
        want.len(),
        got.len(),
        redeliveries as u64
    );
    assert!(
        duplicates as f64 <= redeliveries + broker_dups as f64,
        "duplicates only as MQTT allows"
    );
    assert!(
        metric(&registry, "voxsig_bridge_sink_connection_errors_total") >= 1.0,
        "the outage was seen"
    );

    // A dashboard connecting now gets the last presence of each account, retained; nothing else is.
    let late = subscriber(broker.port, "e2e-late", true, "voxsig/+/+").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let late = late.lock().unwrap().clone();
    let retained: HashSet<String> = late
        .iter()
        .filter(|g| g.retain)
        .map(|g| g.topic.clone())
        .collect();
    let presence_accounts: HashSet<u64> = want
        .values()
        .filter(|e| e.event == "presence.update")
        .map(|e| e.account_id)
        .collect();
    assert_eq!(
        retained,
        presence_accounts
            .iter()
            .map(|a| format!("voxsig/{a}/presence.update"))
            .collect()
    );
    let report = bridge.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.undelivered, 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_counts_topics_keys_headers_and_per_conversation_order() {
    let tansu = Tansu::start();
    let sim = start_sim().await;
    let sink = format!(
        "[route]\ntopic = \"voxsig-events\"\n[sink]\nkind = \"kafka\"\nbrokers = \"{}\"\ncreate_topics = {{ enabled = true, partitions = 3 }}\n",
        tansu.brokers()
    );
    let (settings, tokens) = bridge_config(&sim, &sink);
    let registry = prometheus::Registry::new();
    let bridge = Bridge::start(settings, &registry).await.expect("bridge");
    sim.wait_for_subscriptions(tokens.len(), WAIT)
        .await
        .expect("confirmed");
    sim.burst(600, &Selection::all()).await.unwrap();
    sim.wait_for_delivery(WAIT).await.unwrap();
    let truth = sim.ground_truth();
    let want = expected(&truth, &tokens);
    eventually("the sink acknowledged everything", WAIT, || {
        metric(&registry, "voxsig_bridge_sink_records_published_total") >= want.len() as f64
    })
    .await;
    let report = bridge.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.undelivered, 0);

    let brokers = tansu.brokers();
    let wanted = want.len();
    let consumed = tokio::task::spawn_blocking(move || {
        let consumer = consumer_from_beginning(&brokers, "voxsig-e2e", &["voxsig-events"]);
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while out.len() < wanted && std::time::Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let headers = headers_of(&m);
            out.push((
                m.partition(),
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                m.payload().unwrap_or_default().to_vec(),
                headers,
            ));
        }
        out
    })
    .await
    .unwrap();

    assert_eq!(
        consumed.len(),
        want.len(),
        "every event exactly once (idempotent producer, no outage)"
    );
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for (partition, key, payload, headers) in &consumed {
        let id = ids(payload);
        let sent = want.get(&id).unwrap_or_else(|| panic!("{id:?} never sent"));
        assert_eq!(&payload[..], sent.data.as_bytes());
        let conversation = sent
            .conversation_id
            .map_or("none".to_owned(), |c| c.to_string());
        let key = key.clone().expect("keyed");
        assert_eq!(key, format!("{}/{conversation}", sent.account_id));
        assert_eq!(headers.get("event").map(String::as_str), Some(sent.event));
        assert_eq!(
            headers.get("account_id"),
            Some(&sent.account_id.to_string())
        );
        assert!(headers.get("received_at").is_some_and(|v| !v.is_empty()));
        // A stable event id on every record (the message id for messages); live, not replayed.
        let event_id = headers.get("event_id").expect("event_id header");
        if sent.event == "message.created" {
            let data: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(event_id, &format!("msg-{}", data["id"]));
        } else {
            assert!(event_id.starts_with("h-"), "{event_id}");
        }
        assert!(!headers.contains_key("replayed"));
        // One key, one partition; within it, the order the simulator sent in.
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(*partition),
            *partition
        );
        if sent.conversation_id.is_some() {
            if let Some(previous) = last_seq.insert(key.clone(), sent.sim_seq) {
                assert!(
                    previous < sent.sim_seq,
                    "{key}: {previous} then {}",
                    sent.sim_seq
                );
            }
        }
    }
    sim.shutdown().await;
}
