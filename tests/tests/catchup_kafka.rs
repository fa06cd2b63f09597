//! Catch-up through a real Kafka broker (tansu): messages lost to an outage come back from the
//! REST API marked `replayed: 1`, every message once, told apart by the `event_id` header.

use voxsig_testkit::brokers;
use voxsig_testkit::kafka::consumer_from_beginning;

use brokers::Tansu;
use rdkafka::message::{Headers as _, Message};
use std::collections::HashMap;
use std::time::Duration;
use voxsig_bridge::{Bridge, Config};
use voxsig_protocol::EventKind;
use voxsig_sim::{ExportOptions, Selection, Sim, SimConfig, TokenSelection, WorldSpec};

const WAIT: Duration = Duration::from_secs(60);
const TOPIC: &str = "voxsig-catchup";

/// (event_id, replayed, payload) of every record on the topic, until `wanted` or a deadline.
fn consume(brokers: &str, wanted: usize) -> Vec<(String, bool, Vec<u8>)> {
    let consumer = consumer_from_beginning(brokers, "voxsig-catchup", &[TOPIC]);
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Read until `wanted`, then a little longer so a stray duplicate would show.
    let mut quiet_until = None;
    while std::time::Instant::now() < deadline {
        if out.len() >= wanted {
            let until = *quiet_until
                .get_or_insert_with(|| std::time::Instant::now() + Duration::from_secs(1));
            if std::time::Instant::now() > until {
                break;
            }
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let header = |name: &str| -> Option<String> {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == name)
                    .map(|x| String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
            })
        };
        out.push((
            header("event_id").expect("event_id header"),
            header("replayed").as_deref() == Some("1"),
            m.payload().unwrap_or_default().to_vec(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_filled_through_kafka_each_message_once_replayed_ones_marked() {
    let tansu = Tansu::start();
    let sim = Sim::start(
        SimConfig::default()
            .with_world_spec(WorldSpec {
                accounts: 3,
                users_per_account: 1,
                contacts_per_account: 1,
                conversations_per_contact: 2,
                shared_users: 0,
                seed: 5,
            })
            .with_ping_interval(Duration::from_millis(300)),
    )
    .await
    .expect("sim");
    let accounts = sim.world().bridge_config_toml(&ExportOptions {
        tokens: TokenSelection::Users,
        api_tokens: true,
        ..ExportOptions::default()
    });
    let toml = format!(
        "[source]\nurl = \"{}\"\nconnect_rate = 1000.0\nstale_after = \"1500ms\"\n\
         reconnect = {{ initial = \"50ms\", max = \"400ms\" }}\n\
         [catchup]\nrate = 1000.0\nmargin = \"2s\"\n\
         [route]\ntopic = \"{TOPIC}\"\ninclude = [\"message.created\"]\n\
         [sink]\nkind = \"kafka\"\nbrokers = \"{}\"\ncreate_topics = {{ enabled = true, partitions = 3 }}\n{accounts}",
        sim.url(),
        tansu.brokers()
    );
    let settings = Config::from_toml(&toml)
        .expect("parses")
        .validate()
        .expect("valid");
    let registry = prometheus::Registry::new();
    let bridge = Bridge::start(settings, &registry).await.expect("bridge");
    sim.wait_for_subscriptions(3, WAIT)
        .await
        .expect("confirmed");
    let messages = Selection::all().kinds([EventKind::MessageCreated]);
    sim.burst(60, &messages).await.unwrap();
    sim.faults().outage(Duration::from_secs(2));
    sim.burst(60, &messages).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    sim.wait_for_subscriptions(3, WAIT).await.expect("back");
    sim.burst(60, &messages).await.unwrap();
    let created: Vec<u64> = sim.messages(None).iter().map(|m| m.id).collect();
    assert_eq!(created.len(), 180);
    assert!(
        brokers::eventually(WAIT, || {
            brokers::metric(&registry, "voxsig_bridge_sink_records_published_total", &[])
                >= created.len() as f64
        })
        .await,
        "the sink acknowledged every message"
    );
    let report = bridge.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.undelivered, 0);

    let brokers = tansu.brokers();
    let wanted = created.len();
    let consumed = tokio::task::spawn_blocking(move || consume(&brokers, wanted))
        .await
        .unwrap();
    let mut copies: HashMap<u64, (usize, bool)> = HashMap::new();
    for (event_id, replayed, payload) in &consumed {
        let id: u64 = event_id
            .strip_prefix("msg-")
            .and_then(|n| n.parse().ok())
            .expect("msg-<id>");
        let data: serde_json::Value = serde_json::from_slice(payload).expect("JSON");
        assert_eq!(data["id"], id, "the payload is the message {id}");
        let entry = copies.entry(id).or_default();
        entry.0 += 1;
        entry.1 |= *replayed;
    }
    let replayed = copies.values().filter(|(_, r)| *r).count();
    for id in &created {
        assert_eq!(
            copies.get(id).map(|c| c.0),
            Some(1),
            "message {id} exactly once"
        );
    }
    assert_eq!(consumed.len(), created.len());
    assert!(
        replayed >= 60,
        "the outage's 60 messages came back replayed ({replayed})"
    );
    sim.shutdown().await;
}
