//! The Kafka sink against tansu (a real Kafka-compatible broker, in-memory storage) started on a
//! free port, and against librdkafka's mock cluster for error injection.

use voxsig_testkit::brokers as support;
use voxsig_testkit::kafka::{consumer_from_beginning, headers_of};

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::{eventually, metric, Tansu};
use voxsig_sinks::kafka::{Brokers, SINGLE_TOPIC};
use voxsig_sinks::{
    buffer, spawn, BufferConfig, BufferWriter, KafkaConfig, SinkConfig, SinkHandle, SinkMetrics,
};
use voxsig_testkit::records::{record, seq_of, Generator, Layout};

/// One consumed message.
#[derive(Debug, Clone)]
struct Consumed {
    topic: String,
    partition: i32,
    key: Option<String>,
    seq: u64,
    payload: Vec<u8>,
    headers: HashMap<String, String>,
}

/// Reads every message of `topics` (all partitions, from the beginning) until `want` distinct
/// seqs were seen or `timeout` passed. Runs on a blocking thread.
async fn consume(
    brokers: String,
    topics: Vec<String>,
    want: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    tokio::task::spawn_blocking(move || {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let consumer = consumer_from_beginning(&brokers, "voxsig-sinks-test", &topics);
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while seen.len() < want && std::time::Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("consume");
            let payload = message.payload().unwrap_or_default().to_vec();
            let seq = seq_of(&payload).expect("a generated payload");
            seen.insert(seq);
            let headers = headers_of(&message);
            out.push(Consumed {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                seq,
                payload,
                headers,
            });
        }
        out
    })
    .await
    .expect("consumer thread")
}

fn start_sink(config: KafkaConfig) -> (BufferWriter, SinkHandle, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = SinkMetrics::register(&registry).unwrap();
    let (writer, reader) = buffer(BufferConfig::default(), metrics);
    let sink = SinkConfig::Kafka(config)
        .build("test")
        .expect("build the sink");
    (writer, spawn(sink, reader), registry)
}

fn config(brokers: String) -> KafkaConfig {
    let mut c = KafkaConfig::new(brokers);
    c.create_topics.enabled = true;
    c.message_timeout_ms = 5_000;
    c
}

/// Checks every consumed copy against the generator: topic, key, headers, payload; returns the
/// copies by seq.
fn check_messages(
    consumed: &[Consumed],
    generator: &Generator,
    single_topic: bool,
) -> BTreeMap<u64, usize> {
    let mut copies = BTreeMap::new();
    for m in consumed {
        let expected = generator.record(m.seq);
        let topic = if single_topic {
            SINGLE_TOPIC.to_owned()
        } else {
            expected.topic.clone()
        };
        assert_eq!(m.topic, topic, "topic of seq {}", m.seq);
        assert_eq!(m.key, expected.key, "key of seq {}", m.seq);
        assert_eq!(
            m.payload,
            expected.payload.to_vec(),
            "payload of seq {}",
            m.seq
        );
        assert_eq!(m.headers["event"], expected.headers.event);
        assert_eq!(
            m.headers["account_id"],
            expected.headers.account_id.unwrap().to_string()
        );
        assert_eq!(
            m.headers["received_at"],
            expected.headers.received_at_ms.to_string()
        );
        *copies.entry(m.seq).or_insert(0) += 1;
    }
    copies
}

/// Order violations per (topic, key): a seq lower than the highest already seen for the key.
fn order_violations(consumed: &[Consumed]) -> usize {
    let mut highest: HashMap<(&str, Option<&str>), (u64, i32)> = HashMap::new();
    let mut violations = 0;
    for m in consumed {
        let key = (m.topic.as_str(), m.key.as_deref());
        let entry = highest.entry(key).or_insert((m.seq, m.partition));
        assert_eq!(entry.1, m.partition, "one key, one partition");
        if m.seq < entry.0 {
            violations += 1;
        }
        entry.0 = entry.0.max(m.seq);
    }
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_with_topics_keys_headers_and_per_conversation_order() {
    let broker = Tansu::start();
    let mut generator = Generator::new("voxsig", Layout::Kafka);
    generator.accounts = 3;
    let (writer, handle, registry) = start_sink(config(broker.brokers()));
    let n = 3_000;
    for i in 0..n {
        writer.push(generator.record(i)).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(30), || writer.depth() == 0).await,
        "{} still held; tansu log:\n{}",
        writer.depth(),
        broker.log()
    );
    let mut topics: Vec<String> = (0..n).map(|i| generator.topic(i)).collect();
    topics.sort();
    topics.dedup();
    assert_eq!(topics.len(), 24);
    let consumed = consume(
        broker.brokers(),
        topics,
        n as usize,
        Duration::from_secs(30),
    )
    .await;
    let copies = check_messages(&consumed, &generator, false);
    assert_eq!(copies.len() as u64, n, "every record, once");
    assert!(
        copies.values().all(|c| *c == 1),
        "no duplicates without failures"
    );
    assert_eq!(order_violations(&consumed), 0);
    assert_eq!(
        metric(
            &registry,
            "voxsig_bridge_sink_records_published_total",
            &[("sink", "kafka")]
        ),
        n as f64
    );
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.delivered, report.undelivered), (n, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_and_recovery_lose_nothing_accepted() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
    let mut broker = Tansu::start();
    let generator = Generator::new("voxsig", Layout::Kafka);
    let single = |i: u64| {
        let mut r = generator.record(i);
        r.topic = SINGLE_TOPIC.to_owned();
        r
    };
    let mut c = config(broker.brokers());
    c.linger_ms = 1;
    c.message_timeout_ms = 2_000;
    let (writer, handle, registry) = start_sink(c);
    // Phase A, acknowledged before the outage (tansu keeps it in memory only: lost on restart,
    // which is the broker's durability, not the sink's delivery).
    for i in 0..1_000 {
        writer.push(single(i)).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(30), || writer.depth() == 0).await);
    broker.kill();
    // Phase B, accepted while the broker is away: held in the buffer, retried, delivered after.
    let n = 3_000;
    for i in 1_000..n {
        writer.push(single(i)).await.unwrap();
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(writer.depth() as u64, n - 1_000, "all of phase B is held");
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.restart();
    assert!(
        eventually(Duration::from_secs(25), || writer.depth() == 0).await,
        "{} still held after the restart",
        writer.depth()
    );
    let consumed = consume(
        broker.brokers(),
        vec![SINGLE_TOPIC.into()],
        2_000,
        Duration::from_secs(30),
    )
    .await;
    let copies = check_messages(&consumed, &generator, true);
    let missing: Vec<u64> = (1_000..n).filter(|s| !copies.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of phase B missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    let redelivered = metric(&registry, "voxsig_bridge_sink_redeliveries_total", &[]);
    let violations = order_violations(&consumed);
    eprintln!("outage: {duplicates} duplicates, {redelivered} redeliveries, {violations} order violations");
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.delivered, report.undelivered), (n, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topics_are_rejected_and_unreachable_brokers_counted() {
    let broker = Tansu::start();
    let (writer, handle, registry) = start_sink(config(broker.brokers()));
    let bad = ["voxsig/1/x", "", &"a".repeat(250), "voxsig.1.é"];
    for (i, topic) in bad.iter().enumerate() {
        writer.push(record(topic, i as u64)).await.unwrap();
        writer
            .push(record("voxsig.ok", 10 + i as u64))
            .await
            .unwrap();
    }
    assert!(eventually(Duration::from_secs(30), || writer.depth() == 0).await);
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.delivered, report.rejected), (4, 4));
    assert_eq!(
        metric(
            &registry,
            "voxsig_bridge_sink_records_failed_total",
            &[("reason", "invalid_topic")]
        ),
        4.0
    );

    let mut nowhere = config(format!("127.0.0.1:{}", support::free_port()));
    nowhere.create_topics.enabled = false;
    let (writer, handle, registry) = start_sink(nowhere);
    for i in 0..10 {
        writer.push(record("voxsig.1.x", i)).await.unwrap();
    }
    let errors = || metric(&registry, "voxsig_bridge_sink_connection_errors_total", &[]);
    assert!(eventually(Duration::from_secs(10), || errors() >= 1.0).await);
    assert!(!handle.is_finished());
    assert_eq!(writer.depth(), 10);
    let report = handle.shutdown(Duration::from_millis(300)).await;
    assert!(report.deadline_hit);
    assert_eq!((report.delivered, report.undelivered), (0, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_cluster_request_errors_and_broker_loss_are_retried() {
    let cluster = MockCluster::new(3).expect("mock cluster");
    cluster.create_topic(SINGLE_TOPIC, 3, 3).expect("topic");
    let mut c = KafkaConfig::new(cluster.bootstrap_servers());
    c.brokers = Brokers::List(vec![cluster.bootstrap_servers()]);
    c.message_timeout_ms = 5_000;
    let (writer, handle, registry) = start_sink(c);
    let generator = Generator::new("voxsig", Layout::Kafka);
    let single = |i: u64| {
        let mut r = generator.record(i);
        r.topic = SINGLE_TOPIC.to_owned();
        r
    };
    // Transient produce errors: librdkafka retries them inside the idempotent producer.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 4],
    );
    let n = 2_000;
    for i in 0..n / 2 {
        writer.push(single(i)).await.unwrap();
    }
    // Then every broker goes away for a while.
    for id in 1..=3 {
        cluster.broker_down(id).expect("down");
    }
    for i in n / 2..n {
        writer.push(single(i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in 1..=3 {
        cluster.broker_up(id).expect("up");
    }
    assert!(
        eventually(Duration::from_secs(60), || writer.depth() == 0).await,
        "{} still held",
        writer.depth()
    );
    let consumed = consume(
        cluster.bootstrap_servers(),
        vec![SINGLE_TOPIC.into()],
        n as usize,
        Duration::from_secs(30),
    )
    .await;
    let copies = check_messages(&consumed, &generator, true);
    assert_eq!(copies.len() as u64, n);
    let redelivered = metric(&registry, "voxsig_bridge_sink_redeliveries_total", &[]) + 0.0;
    eprintln!(
        "mock cluster: {} duplicates, {redelivered} redeliveries, {} order violations",
        copies.values().map(|c| c - 1).sum::<usize>(),
        order_violations(&consumed)
    );
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.delivered, report.undelivered), (n, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authentication_failure_is_counted_and_keeps_every_record() {
    let broker = Tansu::start_authenticating();
    let mut config = config(broker.brokers());
    config.create_topics.enabled = false;
    for (name, value) in [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanisms", "SCRAM-SHA-256"),
        ("sasl.username", "bridge"),
        ("sasl.password", "not-the-password-4711"),
    ] {
        config
            .kafka
            .properties
            .insert(name.into(), voxsig_sinks::Secret::inline(value));
    }
    let (writer, handle, registry) = start_sink(config);
    for i in 0..5 {
        writer.push(record("voxsig.1.x", i)).await.unwrap();
    }
    let auth_errors = || {
        metric(
            &registry,
            "voxsig_bridge_sink_connection_errors_total",
            &[("kind", "auth")],
        )
    };
    assert!(
        eventually(Duration::from_secs(15), || auth_errors() >= 1.0).await,
        "no auth error counted; tansu log:\n{}",
        broker.log()
    );
    // Nothing is given up while the broker refuses us, and the sink keeps running.
    assert!(!handle.is_finished());
    assert_eq!(writer.depth(), 5);
    let report = handle.shutdown(Duration::from_millis(300)).await;
    assert_eq!((report.delivered, report.undelivered), (0, 5));
    let scrape = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(!scrape.contains("not-the-password-4711"));
}

/// CloudEvents Kafka binary mode: the value is the data, the attributes are `ce_*` headers with
/// `content-type`, the record's own headers stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_binary_mode_puts_the_attributes_in_ce_headers() {
    use voxsig_sinks::cloudevents::CloudEvents;
    let broker = Tansu::start();
    let generator = Generator::new("voxsig", Layout::Kafka);
    let registry = prometheus::Registry::new();
    let metrics = SinkMetrics::register(&registry).unwrap();
    let (writer, reader) = buffer(BufferConfig::default(), metrics);
    let ce = CloudEvents::new("com.voxsig.", "https://app.voxsig.com");
    let sink = SinkConfig::Kafka(config(broker.brokers()))
        .build_with("test", Some(&ce))
        .expect("build the sink");
    let handle = spawn(sink, reader);
    let mut first = generator.record(0);
    first.headers.event_id = Some("evt-42".into());
    writer.push(first.clone()).await.unwrap();
    writer.push(generator.record(1)).await.unwrap();
    let report = handle.shutdown(Duration::from_secs(30)).await;
    assert_eq!(report.delivered, 2, "{report:?}");
    let mut topics = vec![generator.topic(0), generator.topic(1)];
    topics.dedup();
    let consumed = consume(broker.brokers(), topics, 2, Duration::from_secs(30)).await;
    let m = consumed.iter().find(|m| m.seq == 0).expect("record 0");
    assert_eq!(m.payload, first.payload.to_vec(), "the value is the data");
    assert_eq!(m.headers["ce_specversion"], "1.0");
    assert_eq!(m.headers["ce_id"], "evt-42");
    assert_eq!(
        m.headers["ce_source"],
        format!(
            "https://app.voxsig.com/accounts/{}",
            first.headers.account_id.unwrap()
        )
    );
    assert_eq!(
        m.headers["ce_type"],
        format!("com.voxsig.{}", first.headers.event)
    );
    assert_eq!(m.headers["ce_time"], "2023-11-14T22:13:20.000Z");
    assert_eq!(m.headers["content-type"], "application/json");
    assert_eq!(
        m.headers["event"], first.headers.event,
        "metadata headers stay"
    );
    let other = consumed.iter().find(|m| m.seq == 1).expect("record 1");
    assert!(other.headers["ce_id"].starts_with("h-"), "fallback id");
}
