//! Records per second through the MQTT and Kafka sinks, each beside a bare rumqttc / rdkafka
//! publish loop of the same payloads, measured in the same run against mosquitto and tansu
//! started on free loopback ports.
//!
//! `cargo bench -p voxsig-sinks --bench throughput` (optionally `-- --quick`). Every loop is
//! bounded in count and time; prints a markdown table.

#[path = "../tests/support/mod.rs"]
#[allow(missing_docs)]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use support::{Mosquitto, MosquittoOptions, Tansu};
use voxsig_sinks::kafka::{kafka_headers, SINGLE_TOPIC};
use voxsig_sinks::testing::{Generator, Layout};
use voxsig_sinks::{
    buffer, spawn, BufferConfig, KafkaConfig, MqttConfig, Record, SinkConfig, SinkMetrics,
};

/// Longest a single measured loop may run.
const LOOP_LIMIT: Duration = Duration::from_secs(60);
const ROUNDS: usize = 5;

fn records(n: u64, layout: Layout) -> Vec<Record> {
    let generator = Generator::new("voxsig", layout);
    (0..n)
        .map(|i| {
            let mut r = generator.record(i);
            if layout == Layout::Kafka {
                r.topic = SINGLE_TOPIC.to_owned();
            }
            r
        })
        .collect()
}

/// Pushes `records` through a sink built from `config`; returns records/s from the first push to
/// the last acknowledgement (the sink is warmed up, connected, before timing).
async fn through_sink(config: SinkConfig, records: Vec<Record>, warmup: &[Record]) -> f64 {
    let (writer, reader) = buffer(
        BufferConfig {
            max_events: records.len().max(warmup.len()) + 1,
            ..BufferConfig::default()
        },
        SinkMetrics::unregistered(),
    );
    let handle = spawn(config.build("bench").expect("sink"), reader);
    for r in warmup {
        writer.push(r.clone()).await.expect("push");
    }
    wait_drained(&writer).await;
    let n = records.len();
    let start = Instant::now();
    for r in records {
        writer.push(r).await.expect("push");
    }
    wait_drained(&writer).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.undelivered, 0);
    rate
}

/// The buffer and an instant sink, no broker: the sinks' fixed cost per record.
async fn through_memory(records: &[Record]) -> f64 {
    let (writer, reader) = buffer(
        BufferConfig {
            max_events: records.len() + 1,
            ..BufferConfig::default()
        },
        SinkMetrics::unregistered(),
    );
    let (sink, _handle) = voxsig_sinks::MemorySink::new();
    let running = spawn(Box::new(sink), reader);
    let batch: Vec<Record> = records.to_vec();
    let start = Instant::now();
    for r in batch {
        writer.push(r).await.expect("push");
    }
    wait_drained(&writer).await;
    let rate = records.len() as f64 / start.elapsed().as_secs_f64();
    running.shutdown(Duration::from_secs(5)).await;
    rate
}

async fn wait_drained(writer: &voxsig_sinks::BufferWriter) {
    let deadline = Instant::now() + LOOP_LIMIT;
    while writer.depth() > 0 {
        assert!(
            Instant::now() < deadline,
            "sink loop exceeded {LOOP_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// A bare rumqttc loop: publish every record, count PUBACKs (QoS 1) or writes (QoS 0).
async fn bare_mqtt(port: u16, qos: QoS, records: &[Record]) -> f64 {
    let mut options = MqttOptions::new(format!("bare-{}", fastish_id()), "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(100)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 108);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.expect("connect") {
            break;
        }
    }
    let n = records.len();
    let batch: Vec<(String, bytes::Bytes)> = records
        .iter()
        .map(|r| (r.topic.clone(), r.payload.clone()))
        .collect();
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        for (topic, payload) in batch {
            client
                .publish_bytes(topic, qos, false, payload)
                .await
                .expect("publish");
        }
        client
    });
    let mut done = 0;
    let deadline = start + LOOP_LIMIT;
    while done < n {
        assert!(
            Instant::now() < deadline,
            "bare loop exceeded {LOOP_LIMIT:?}"
        );
        match eventloop.poll().await.expect("poll") {
            Event::Outgoing(Outgoing::Publish(0)) if qos == QoS::AtMostOnce => done += 1,
            Event::Incoming(Packet::PubAck(_)) if qos == QoS::AtLeastOnce => done += 1,
            _ => {}
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _client = publisher.await.expect("publisher");
    rate
}

fn fastish_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000");
    c
}

/// Counts delivery reports on librdkafka's polling thread.
#[derive(Default)]
struct Counting {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A bare rdkafka loop with the sink's producer settings (a `ThreadedProducer` counting
/// delivery reports in its callback): send every record, wait for every report.
async fn bare_kafka(brokers: &str, records: &[Record], warmup: &[Record]) -> f64 {
    let producer: ThreadedProducer<Counting> = producer_config(brokers)
        .create_with_context(Counting::default())
        .expect("producer");
    send_all(&producer, warmup).await;
    let start = Instant::now();
    send_all(&producer, records).await;
    records.len() as f64 / start.elapsed().as_secs_f64()
}

async fn send_all(producer: &ThreadedProducer<Counting>, records: &[Record]) {
    let context = producer.context();
    let target = context.ok.load(Ordering::Relaxed) + records.len();
    for r in records {
        let mut record = BaseRecord::to(&r.topic)
            .payload(r.payload.as_ref())
            .headers(kafka_headers(r))
            .timestamp(r.headers.received_at_ms);
        if let Some(key) = r.key.as_deref() {
            record = record.key(key.as_bytes());
        }
        producer.send(record).map_err(|(e, _)| e).expect("enqueue");
    }
    let deadline = Instant::now() + LOOP_LIMIT;
    while context.ok.load(Ordering::Relaxed) < target {
        assert_eq!(
            context.failed.load(Ordering::Relaxed),
            0,
            "a bare delivery failed"
        );
        assert!(
            Instant::now() < deadline,
            "bare loop exceeded {LOOP_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn create_topic(brokers: &str) {
    let admin: AdminClient<DefaultClientContext> =
        producer_config(brokers).create().expect("admin");
    let topic = NewTopic::new(SINGLE_TOPIC, 3, TopicReplication::Fixed(1));
    let _ = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create topic");
}

/// Records for `--kafka-sink-only` / `--kafka-bare-only`: 300,000, or `VOXSIG_BENCH_RECORDS`
/// (fewer, for profiling under `valgrind --tool=callgrind`).
fn profile_records() -> u64 {
    std::env::var("VOXSIG_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    name: &'static str,
    count: usize,
    bare: f64,
    sink: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    if std::env::args().any(|a| a == "--kafka-sink-only") {
        let tansu = Tansu::start();
        create_topic(&tansu.brokers()).await;
        let recs = records(profile_records(), Layout::Kafka);
        let warmup = records(1_000, Layout::Kafka);
        let config = SinkConfig::Kafka(KafkaConfig::new(tansu.brokers()));
        println!(
            "kafka sink: {:.0} rec/s",
            through_sink(config, recs, &warmup).await
        );
        return;
    }
    if std::env::args().any(|a| a == "--kafka-bare-only") {
        let tansu = Tansu::start();
        create_topic(&tansu.brokers()).await;
        let recs = records(profile_records(), Layout::Kafka);
        let warmup = records(1_000, Layout::Kafka);
        println!(
            "bare kafka: {:.0} rec/s",
            bare_kafka(&tansu.brokers(), &recs, &warmup).await
        );
        return;
    }
    if std::env::args().any(|a| a == "--memory") {
        let recs = records(200_000, Layout::Kafka);
        for _ in 0..3 {
            println!("memory sink: {:.0} rec/s", through_memory(&recs).await);
        }
        return;
    }
    let mosquitto = Mosquitto::start(MosquittoOptions::default());
    let tansu = Tansu::start();
    let mut rows = Vec::new();

    for (name, qos, level, n) in [
        ("mosquitto QoS 0", QoS::AtMostOnce, 0u8, 100_000 / scale),
        ("mosquitto QoS 1", QoS::AtLeastOnce, 1u8, 50_000 / scale),
    ] {
        let recs = records(n, Layout::Mqtt);
        let warmup = records(1_000, Layout::Mqtt);
        let mut config = MqttConfig::new(mosquitto.url());
        config.qos = level;
        config.retain.clear();
        config.client_id = Some(format!("bench-sink-q{level}"));
        let (mut bare, mut sink) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(bare_mqtt(mosquitto.port, qos, &recs).await);
            sink.push(
                through_sink(
                    SinkConfig::Mqtt(config.clone()),
                    records(n, Layout::Mqtt),
                    &warmup,
                )
                .await,
            );
        }
        rows.push(Row {
            name,
            count: n as usize,
            bare: median(bare),
            sink: median(sink),
        });
    }

    let n = 100_000 / scale;
    let recs = records(n, Layout::Kafka);
    let warmup = records(1_000, Layout::Kafka);
    create_topic(&tansu.brokers()).await;
    let config = KafkaConfig::new(tansu.brokers());
    let (mut bare, mut sink) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.push(bare_kafka(&tansu.brokers(), &recs, &warmup).await);
        sink.push(
            through_sink(
                SinkConfig::Kafka(config.clone()),
                records(n, Layout::Kafka),
                &warmup,
            )
            .await,
        );
    }
    rows.push(Row {
        name: "tansu (memory), acks=all, lz4",
        count: n as usize,
        bare: median(bare),
        sink: median(sink),
    });

    println!("\n| broker | records | bare client (rec/s) | voxsig sink (rec/s) | sink / bare |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} |",
            r.name,
            r.count,
            r.bare,
            r.sink,
            r.sink / r.bare
        );
    }
    println!("\nmedian of {ROUNDS} alternating rounds; ~400-byte JSON payloads; 2 cores, loopback");
}
