//! The MQTT sink against more than one broker: mosquitto (3.1.1 and 5), nats-server's MQTT
//! listener (3.1.1) and rumqttd (3.1.1 and 5), each started on free loopback ports.
//!
//! Every case: QoS 1 records stream through a proxy that cuts the sink off mid-stream (the
//! broker publishes the sink's will, `offline`), the broker is restarted, the sink reconnects,
//! and every record arrives with the sink's count exact (delivered = pushed, nothing rejected
//! or left over); a dashboard connecting last sees the retained presence and `online`. What
//! differs between brokers is documented in `crates/sinks/README.md` (compatibility table).

use voxsig_testkit::brokers as support;
use voxsig_testkit::mqtt as mqtt_support;

use std::collections::BTreeMap;
use std::time::Duration;

use std::collections::HashMap;
use std::net::SocketAddr;

use mqtt_support::{
    check_complete, Nats, Proxy, Rumqttd, Subscriber, RUMQTTD_PORT_ENV, RUMQTTD_V5_PORT_ENV,
};
use support::{eventually, metric, Mosquitto, MosquittoOptions};
use voxsig_sinks::mqtt::Protocol;
use voxsig_sinks::{buffer, spawn, BufferConfig, MqttConfig, SinkConfig, SinkMetrics};
use voxsig_testkit::records::{seq_of, Generator, Layout};

/// Not a test: the body of the rumqttd broker process (see `mqtt_support::Rumqttd`).
#[test]
#[ignore = "runs only as the rumqttd broker process of the interop tests"]
fn rumqttd_process() {
    rumqttd_main();
}

enum Broker {
    Mosquitto(Mosquitto),
    Nats(Nats),
    Rumqttd(Rumqttd),
}

impl Broker {
    fn port(&self) -> u16 {
        match self {
            Broker::Mosquitto(b) => b.port,
            Broker::Nats(b) => b.port,
            Broker::Rumqttd(b) => b.port,
        }
    }

    /// Where the sink connects.
    fn sink_port(&self, protocol: Protocol) -> u16 {
        match (self, protocol) {
            (Broker::Rumqttd(b), Protocol::V5) => b.v5_port,
            _ => self.port(),
        }
    }

    /// A clean stop and a start on the same port (with whatever the broker persists).
    fn restart(&mut self) {
        match self {
            Broker::Mosquitto(b) => {
                b.stop();
                b.restart();
            }
            Broker::Nats(b) => b.restart(),
            Broker::Rumqttd(b) => b.restart(),
        }
    }
}

const STATUS_TOPIC: &str = "interop/bridge/test/status";

/// The interop case; returns a one-line summary.
async fn delivery_across_a_restart(mut broker: Broker, protocol: Protocol, name: &str) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
    // nats-server before 2.10 refuses '.' in MQTT topics (the default template has event names
    // in it): NATS cases use `_` instead.
    let layout = match broker {
        Broker::Nats(_) => Layout::MqttUnderscored,
        _ => Layout::Mqtt,
    };
    let generator = Generator::new("interop", layout);
    // rumqttd does not forward MQTT 5 publishes to 3.1.1 subscribers: subscribe as the sink
    // speaks.
    let (sub_port, sink_port) = (broker.port(), broker.sink_port(protocol));
    let subscribe = |id: &str, clean: bool| match protocol {
        Protocol::V5 => Subscriber::start_v5(sink_port, id, clean, "interop/#"),
        Protocol::V311 => Subscriber::start(sub_port, id, None, clean, "interop/#"),
    };
    let sub = subscribe("interop-sub", false);
    sub.wait_subscribed(1).await;
    let proxy = Proxy::start(sink_port).await;

    let mut config = MqttConfig::new(proxy.url());
    config.protocol = protocol;
    config.client_id = Some(format!("interop-{name}"));
    config.status.topic = "interop/bridge/{instance}/status".into();
    config.reconnect.min_backoff_ms = 50;
    config.reconnect.max_backoff_ms = 300;
    let registry = prometheus::Registry::new();
    let metrics = SinkMetrics::register(&registry).unwrap();
    let (writer, reader) = buffer(BufferConfig::default(), metrics);
    let handle = spawn(SinkConfig::Mqtt(config).build("test").unwrap(), reader);

    let n = 1_500u64;
    let producer = {
        let (writer, generator) = (writer.clone(), generator.clone());
        tokio::spawn(async move {
            for i in 0..n {
                writer.push(generator.record(i)).await.unwrap();
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    let status = |sub: &Subscriber| {
        sub.received()
            .iter()
            .rfind(|r| r.topic == STATUS_TOPIC)
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
    };
    assert!(
        eventually(Duration::from_secs(10), || sub.by_seq().len() >= 300).await,
        "{name}: {} arrived before the cut",
        sub.by_seq().len()
    );
    assert_eq!(status(&sub).as_deref(), Some("online"), "{name}: birth");

    // The sink's connection drops without DISCONNECT: the broker publishes its will.
    proxy.cut();
    assert!(
        eventually(Duration::from_secs(10), || status(&sub).as_deref()
            == Some("offline"))
        .await,
        "{name}: the will was not published ({:?})",
        status(&sub)
    );
    // What the broker acknowledged reaches the subscriber before the restart.
    let published = metric(&registry, "voxsig_bridge_sink_records_published_total", &[]);
    eventually(Duration::from_secs(5), || {
        sub.by_seq().len() as f64 >= published
    })
    .await;
    let connacks = sub.connacks();
    broker.restart();
    assert!(
        eventually(Duration::from_secs(10), || sub.connacks() > connacks).await,
        "{name}: subscriber did not reconnect"
    );
    sub.wait_subscribed(2).await;
    let session_kept = sub.resumed() > 0;
    proxy.open();
    producer.await.unwrap();

    let all_arrived = || {
        let by_seq = sub.by_seq();
        (0..n).all(|s| by_seq.contains_key(&s))
    };
    let arrived = eventually(Duration::from_secs(30), all_arrived).await;
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert!(
        arrived,
        "{name}: {} of {n} arrived ({report:?})",
        sub.by_seq().len()
    );
    let duplicates = check_complete(&sub, &generator, 0..n, 0);
    assert_eq!(
        (report.delivered, report.undelivered, report.rejected),
        (n, 0, 0),
        "{name}: exact count"
    );
    let redelivered = metric(&registry, "voxsig_bridge_sink_redeliveries_total", &[]);

    // A dashboard connecting last sees the retained presence (one per account, each a presence
    // record of that account) and the final status.
    let late = subscribe("interop-late", true);
    late.wait_subscribed(1).await;
    eventually(Duration::from_secs(3), || late.received().len() >= 8).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let retained = late.received();
    assert!(retained.iter().all(|r| r.retain), "{name}: only retained");
    let statuses: Vec<_> = retained
        .iter()
        .filter(|r| r.topic == STATUS_TOPIC)
        .collect();
    assert_eq!(statuses.len(), 1, "{name}: one retained status");
    assert_eq!(&statuses[0].payload[..], b"offline", "{name}: clean stop");
    let mut presence: BTreeMap<String, u64> = BTreeMap::new();
    for r in retained.iter().filter(|r| r.topic != STATUS_TOPIC) {
        let seq = seq_of(&r.payload).expect("a generated record");
        let record = generator.record(seq);
        assert_eq!(
            record.headers.event, "presence.update",
            "{name}: {}",
            r.topic
        );
        assert_eq!((&record.topic, &record.payload), (&r.topic, &r.payload));
        presence.insert(r.topic.clone(), seq);
    }
    assert!(!presence.is_empty(), "{name}: retained presence");
    eprintln!(
        "interop {name}: {n} records pushed; sink delivered {}, rejected {}, undelivered {}; \
         {duplicates} duplicates at the subscriber, {redelivered} redelivered; will and birth \
         seen; {} retained presence topics after; sessions {} the restart",
        report.delivered,
        report.rejected,
        report.undelivered,
        presence.len(),
        if session_kept {
            "kept across"
        } else {
            "lost with"
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_mosquitto_3_1_1() {
    let broker = Mosquitto::start(MosquittoOptions {
        persistence: true,
        ..MosquittoOptions::default()
    });
    delivery_across_a_restart(Broker::Mosquitto(broker), Protocol::V311, "mosquitto-3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_mosquitto_5() {
    let broker = Mosquitto::start(MosquittoOptions {
        persistence: true,
        ..MosquittoOptions::default()
    });
    delivery_across_a_restart(Broker::Mosquitto(broker), Protocol::V5, "mosquitto-5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_nats_3_1_1() {
    delivery_across_a_restart(Broker::Nats(Nats::start()), Protocol::V311, "nats-3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_rumqttd_3_1_1() {
    let broker = Rumqttd::start("rumqttd_process");
    delivery_across_a_restart(Broker::Rumqttd(broker), Protocol::V311, "rumqttd-3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_rumqttd_5() {
    let broker = Rumqttd::start("rumqttd_process");
    delivery_across_a_restart(Broker::Rumqttd(broker), Protocol::V5, "rumqttd-5").await;
}

/// Runs rumqttd on the ports in the environment until killed; returns at once without them.
pub fn rumqttd_main() {
    let Some(port) = std::env::var(RUMQTTD_PORT_ENV)
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return;
    };
    let server = |port: u16| {
        let settings = rumqttd::ServerSettings {
            name: format!("test-{port}"),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 1 << 20,
                max_inflight_count: 500,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        Some(HashMap::from([(format!("test-{port}"), settings)]))
    };
    let v5_port = std::env::var(RUMQTTD_V5_PORT_ENV)
        .ok()
        .and_then(|p| p.parse::<u16>().ok());
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 1000,
            max_segment_size: 64 << 20,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: server(port),
        v5: v5_port.and_then(server),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    let _ = broker.start();
}
