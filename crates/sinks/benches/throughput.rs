//! Records per second through the MQTT and Kafka sinks, each beside a bare rumqttc / rdkafka
//! publish loop of the same payloads, measured in the same run against mosquitto and tansu
//! started on free loopback ports.
//!
//! `cargo bench -p voxsig-sinks --bench throughput` (optionally `-- --quick`; `-- --mqtt`: the
//! MQTT rows only; `-- --mqtt-sink-only` / `--mqtt-bare-only`: one side alone, for profiling,
//! `VOXSIG_BENCH_QOS` 0 or 1 and `VOXSIG_BENCH_RECORDS` records). Every loop is
//! bounded in count and time; prints a markdown table. Under `cargo test` (no `--bench`
//! argument) it runs as a smoke test: one round of a hundredth of the records.
//!
//! Both sides take the records by value (a real publisher frees what it sent) and are warmed up
//! with the same records first. Rounds alternate which side runs first, so a drift of the
//! machine or the broker does not always favour one side; each row reports the medians, the
//! median of the per-round ratios, and the client's CPU per record (every thread of this
//! process, from `/proc/self/task/*/schedstat`), which the machine's noise moves much less than
//! the rates. The disk buffer rows into the null sink are followed by the file system alone: the
//! same records appended to a file with no buffer, synced as the row's `fsync` says
//! ([`appends_alone`]), the kernel's and the disk's share of a disk buffer's cost.

use voxsig_testkit::brokers as support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use support::{Mosquitto, MosquittoOptions, Tansu};
use voxsig_sinks::kafka::{kafka_headers, SINGLE_TOPIC};
use voxsig_sinks::mqtt::Protocol;
use voxsig_sinks::{
    buffer, open_buffer, spawn, BufferConfig, BufferReader, DrainReport, Fsync, KafkaConfig,
    MqttConfig, Record, Sink, SinkConfig, SinkMetrics,
};
use voxsig_testkit::records::{Generator, Layout};

/// Longest a single measured loop may run.
const LOOP_LIMIT: Duration = Duration::from_secs(60);
const ROUNDS: usize = 7;
/// Rounds when run as a smoke test under `cargo test`.
const SMOKE_ROUNDS: usize = 1;
/// Records each side sends before it is timed (connections up, buffers at their working size).
const WARMUP: u64 = 10_000;

/// One timed run: records/s and the client's CPU per record.
#[derive(Clone, Copy)]
struct Measure {
    rate: f64,
    cpu_ns: f64,
}

/// CPU time of every live thread of this process, in ns (Linux; 0 elsewhere).
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Every thread's name and schedstat (ns on a CPU, ns waiting for one), by thread id.
fn threads_sched() -> Vec<(u64, String, u64, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out: Vec<_> = tasks
        .filter_map(|t| {
            let path = t.ok()?.path();
            let tid = path.file_name()?.to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let stat = std::fs::read_to_string(path.join("schedstat")).ok()?;
            let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
            Some((
                tid,
                name.trim().to_owned(),
                fields.next()??,
                fields.next()??,
            ))
        })
        .collect();
    out.sort();
    out
}

/// Per record, from `before` until now: CPU and time waiting for a CPU of each thread that ran,
/// by name (`name cpu/wait` ns), e.g. `tokio-runtime-w 420/35`.
fn threads_line(before: &[(u64, String, u64, u64)], n: u64) -> String {
    threads_sched()
        .iter()
        .filter_map(|(tid, name, cpu, wait)| {
            let (c0, w0) = before
                .iter()
                .find(|b| b.0 == *tid)
                .map_or((0, 0), |b| (b.2, b.3));
            let cpu = cpu.saturating_sub(c0) / n.max(1);
            (cpu > 0).then(|| format!("{name} {cpu}/{}", wait.saturating_sub(w0) / n.max(1)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Times `n` records from `start` (and the CPU from `cpu_start`) until now.
fn measure(n: usize, start: Instant, cpu_start: u64) -> Measure {
    let elapsed = start.elapsed().as_secs_f64();
    Measure {
        rate: n as f64 / elapsed,
        cpu_ns: process_cpu_ns().saturating_sub(cpu_start) as f64 / n as f64,
    }
}

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

/// Pushes `records` through a sink built from `config`; measures from the first push to the
/// last acknowledgement (the sink is warmed up, connected, before timing).
async fn through_sink(config: SinkConfig, records: Vec<Record>, warmup: Vec<Record>) -> Measure {
    let (writer, reader) = buffer(
        BufferConfig {
            max_events: Some(records.len().max(warmup.len()) + 1),
            ..BufferConfig::default()
        },
        SinkMetrics::unregistered(),
    );
    let handle = spawn(config.build("bench").expect("sink"), reader);
    for r in warmup {
        writer.push(r).await.expect("push");
    }
    wait_drained(&writer).await;
    let n = records.len();
    let cpu = process_cpu_ns();
    let start = Instant::now();
    for r in records {
        writer.push(r).await.expect("push");
    }
    wait_drained(&writer).await;
    let measured = measure(n, start, cpu);
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.undelivered, 0);
    measured
}

/// The buffer and an instant sink, no broker: the sinks' fixed cost per record.
async fn through_memory(records: &[Record]) -> f64 {
    let (writer, reader) = buffer(
        BufferConfig {
            max_events: Some(records.len() + 1),
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

/// A sink that acknowledges everything at once: the buffer's own cost per record.
struct NullSink;

/// The null sink's takes (non-empty `try_recv_many`) and waits (`readable`), for the rows'
/// records per take: how often the sink found the queue empty and slept.
static NULL_TAKES: AtomicUsize = AtomicUsize::new(0);
static NULL_WAITS: AtomicUsize = AtomicUsize::new(0);

impl Sink for NullSink {
    fn kind(&self) -> &'static str {
        "null"
    }

    fn run(self: Box<Self>, mut reader: BufferReader) -> BoxFuture<'static, DrainReport> {
        Box::pin(async move {
            let mut batch = Vec::with_capacity(256);
            loop {
                if reader.try_recv_many(256, &mut batch) > 0 {
                    NULL_TAKES.fetch_add(1, Ordering::Relaxed);
                    reader.ack_many(&mut batch);
                    continue;
                }
                if reader.is_finished() || reader.is_aborted() {
                    break;
                }
                NULL_WAITS.fetch_add(1, Ordering::Relaxed);
                reader.readable().await;
                if reader.is_closed() && reader.queued() == 0 {
                    break;
                }
            }
            reader.report()
        })
    }
}

/// Where the buffer rows send their records.
#[derive(Clone)]
enum Target {
    Null,
    Mqtt(Box<MqttConfig>),
}

impl Target {
    fn sink(&self) -> Box<dyn Sink> {
        match self {
            Target::Null => Box::new(NullSink),
            Target::Mqtt(config) => SinkConfig::Mqtt((**config).clone())
                .build("bench")
                .expect("sink"),
        }
    }
}

/// ~1.3 KB records (1,200-byte payloads), as the buffer rows use.
fn big_records(n: u64) -> Vec<Record> {
    let mut generator = Generator::new("voxsig", Layout::Mqtt);
    generator.payload_bytes = 1_200;
    (0..n).map(|i| generator.record(i)).collect()
}

/// The buffer kind of a buffer row: memory, or disk with an fsync policy (in a fresh directory).
fn buffer_config(fsync: Option<Fsync>, dir: &std::path::Path) -> BufferConfig {
    match fsync {
        None => BufferConfig::default(),
        Some(fsync) => BufferConfig {
            fsync,
            ..BufferConfig::disk(dir)
        },
    }
}

/// Pushes `n` ~1.3 KB records through the buffer `fsync` describes into `target`; measures
/// from the first push to the last acknowledgement, after a warm-up.
async fn through_buffer(fsync: Option<Fsync>, target: Target, n: u64, warmup: u64) -> Measure {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = prometheus::Registry::new();
    let metrics = SinkMetrics::register(&registry).expect("metrics");
    let (writer, reader) =
        open_buffer(buffer_config(fsync, dir.path()), metrics).expect("buffer opens");
    let handle = spawn(target.sink(), reader);
    for r in big_records(warmup) {
        writer.push(r).await.expect("push");
    }
    wait_drained(&writer).await;
    let records = big_records(n);
    let takes = NULL_TAKES.load(Ordering::Relaxed);
    let waits = NULL_WAITS.load(Ordering::Relaxed);
    let threads = threads_sched();
    let cpu = process_cpu_ns();
    let start = Instant::now();
    for r in records {
        writer.push(r).await.expect("push");
    }
    wait_drained(&writer).await;
    let measured = measure(n as usize, start, cpu);
    let threads = threads_line(&threads, n);
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.undelivered, 0);
    if matches!(target, Target::Null) {
        let takes = NULL_TAKES.load(Ordering::Relaxed) - takes;
        let waits = NULL_WAITS.load(Ordering::Relaxed) - waits;
        println!(
            "  {} buffer, null sink: {:.1} records per take, {waits} waits; ns/record by thread (CPU/waiting for one): {threads}",
            if fsync.is_some() { "disk" } else { "memory" },
            n as f64 / takes.max(1) as f64
        );
    }
    if fsync.is_some() {
        // What went the slow way: written, read back, checked, decoded (warm-up included).
        println!(
            "  disk buffer: {} of {} records read back from disk, {} never written (delivered first)",
            counter(&registry, "voxsig_bridge_buffer_read_back_total"),
            n + warmup,
            counter(&registry, "voxsig_bridge_buffer_write_skipped_total"),
        );
    }
    measured
}

/// The file system alone, as a ceiling for the disk buffer rows: the same ~1.3 KB records
/// appended to one file with no buffer around them (each a 100-byte head standing in for the
/// frame's fields, and the payload by reference, as the disk buffer's writer hands them over),
/// one `pwritev` per 1 MiB of records, synced as `fsync` says: `interval` by a thread every
/// 100 ms, `always` after every batch, `never` not at all. Measured from the first write to the
/// last one's return (the interval buffer hands records on before their sync too), CPU of every
/// thread of this process (the syncing thread included).
fn appends_alone(fsync: Fsync, n: u64) -> Measure {
    const HEAD: usize = 100;
    const BATCH_BYTES: usize = 1024 * 1024;
    const IOV_MAX: usize = 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = std::fs::File::create(dir.path().join("appends")).expect("appends file");
    let file = std::sync::Arc::new(file);
    let records = big_records(n);
    let head = [0x5au8; HEAD];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let syncer = (fsync == Fsync::Interval).then(|| {
        let (file, stop) = (file.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                file.sync_data().expect("fdatasync");
            }
        })
    });
    let cpu = process_cpu_ns();
    let start = Instant::now();
    let mut at = 0u64;
    let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(2 * 1024);
    let mut batch = 0usize;
    for (i, r) in records.iter().enumerate() {
        slices.push(std::io::IoSlice::new(&head));
        slices.push(std::io::IoSlice::new(&r.payload));
        batch += HEAD + r.payload.len();
        if batch < BATCH_BYTES && i + 1 < records.len() {
            continue;
        }
        assert!(
            start.elapsed() < LOOP_LIMIT,
            "appends alone: over the loop limit"
        );
        for chunk in slices.chunks(IOV_MAX) {
            let mut rest: Vec<std::io::IoSlice<'_>> = chunk.to_vec();
            let mut rest = &mut rest[..];
            while !rest.is_empty() {
                let written = rustix::io::pwritev(&*file, rest, at).expect("pwritev");
                at += written as u64;
                std::io::IoSlice::advance_slices(&mut rest, written);
            }
        }
        if fsync == Fsync::Always {
            file.sync_data().expect("fdatasync");
        }
        slices.clear();
        batch = 0;
    }
    let measured = measure(records.len(), start, cpu);
    stop.store(true, Ordering::Relaxed);
    if let Some(syncer) = syncer {
        syncer.join().expect("syncing thread");
    }
    measured
}

/// The value of counter `name` (e.g. `voxsig_bridge_buffer_read_back_total`).
fn counter(registry: &prometheus::Registry, name: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// Fills a disk buffer with `n` ~1.3 KB records and no sink, then measures a start on it:
/// (bytes, seconds to open it (recovery scan), seconds to deliver all of it to a null sink).
async fn recovery(n: u64) -> (u64, f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BufferConfig {
        max_bytes: 2 * 1024 * 1024 * 1024,
        ..BufferConfig::disk(dir.path())
    };
    {
        let (writer, _reader) =
            open_buffer(config.clone(), SinkMetrics::unregistered()).expect("buffer opens");
        let generator = {
            let mut g = Generator::new("voxsig", Layout::Mqtt);
            g.payload_bytes = 1_200;
            g
        };
        for i in 0..n {
            writer.push(generator.record(i)).await.expect("push");
        }
    }
    let start = Instant::now();
    let (writer, reader) = open_buffer(config, SinkMetrics::unregistered()).expect("reopens");
    let opened = start.elapsed().as_secs_f64();
    assert_eq!(writer.depth() as u64, n, "every record recovered");
    let size: u64 = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let handle = spawn(Box::new(NullSink), reader);
    wait_drained(&writer).await;
    let drained = start.elapsed().as_secs_f64();
    handle.shutdown(Duration::from_secs(5)).await;
    (size, opened, drained)
}

/// A start on a directory whose segments were reused: `n` ~1.3 KB records pushed and
/// acknowledged as they come (finished segments become spares and are reused), then `left`
/// pushed and not acknowledged, then a stop. The segment written last is a reused file with its
/// old records beyond the new ones, which the scan at start searches for intact frames before it
/// calls the end clean. Returns (seconds to open, records found).
async fn recovery_reused(n: u64, left: u64) -> (f64, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BufferConfig::disk(dir.path());
    {
        let (writer, mut reader) =
            open_buffer(config.clone(), SinkMetrics::unregistered()).expect("buffer opens");
        let generator = {
            let mut g = Generator::new("voxsig", Layout::Mqtt);
            g.payload_bytes = 1_200;
            g
        };
        let mut claims = Vec::new();
        for i in 0..n + left {
            writer.push(generator.record(i)).await.expect("push");
            if i < n && (i % 1000 == 999 || i + 1 == n) {
                while reader.try_recv_many(1024, &mut claims) > 0 {
                    reader.ack_many(&mut claims);
                }
            }
        }
    }
    // The flusher thread may hold the buffer for the rest of a pass: its close comes with it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let (writer, _reader) = open_buffer(config, SinkMetrics::unregistered()).expect("reopens");
    (start.elapsed().as_secs_f64(), writer.depth())
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
async fn bare_mqtt(port: u16, qos: QoS, records: Vec<Record>, warmup: Vec<Record>) -> Measure {
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
    let client = publish_all(client, &mut eventloop, qos, warmup).await;
    let n = records.len();
    let cpu = process_cpu_ns();
    let start = Instant::now();
    let _client = publish_all(client, &mut eventloop, qos, records).await;
    measure(n, start, cpu)
}

/// Publishes `records` from a task while this one drives the event loop until every record was
/// written (QoS 0) or acknowledged (QoS 1).
async fn publish_all(
    client: AsyncClient,
    eventloop: &mut EventLoop,
    qos: QoS,
    records: Vec<Record>,
) -> AsyncClient {
    let n = records.len();
    let publisher = tokio::spawn(async move {
        for r in records {
            client
                .publish_bytes(r.topic, qos, false, r.payload)
                .await
                .expect("publish");
        }
        client
    });
    let mut done = 0;
    let deadline = Instant::now() + LOOP_LIMIT;
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
    publisher.await.expect("publisher")
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
///
/// With `keep`, the loop borrows its records and frees them only after timing (the form of
/// earlier versions of this bench): freeing then stays out of the timed window, which no
/// real publisher can do, so it is reported beside, not instead.
async fn bare_kafka(
    brokers: &str,
    records: Vec<Record>,
    warmup: Vec<Record>,
    keep: bool,
) -> Measure {
    let producer: ThreadedProducer<Counting> = producer_config(brokers)
        .create_with_context(Counting::default())
        .expect("producer");
    send_all(&producer, warmup, keep).await;
    let n = records.len();
    let cpu = process_cpu_ns();
    let start = Instant::now();
    let kept = send_all(&producer, records, keep).await;
    let measured = measure(n, start, cpu);
    drop(kept);
    measured
}

/// Sends each record (librdkafka copies it) and drops it (or keeps it, returned), then waits
/// for every report.
async fn send_all(
    producer: &ThreadedProducer<Counting>,
    records: Vec<Record>,
    keep: bool,
) -> Vec<Record> {
    let context = producer.context();
    let target = context.ok.load(Ordering::Relaxed) + records.len();
    let mut kept = Vec::with_capacity(if keep { records.len() } else { 0 });
    for r in records {
        let mut record = BaseRecord::to(&r.topic)
            .payload(r.payload.as_ref())
            .headers(kafka_headers(&r))
            .timestamp(r.headers.received_at_ms);
        if let Some(key) = r.key.as_deref() {
            record = record.key(key.as_bytes());
        }
        producer.send(record).map_err(|(e, _)| e).expect("enqueue");
        if keep {
            kept.push(r);
        }
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
    kept
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

/// Records for the `--*-sink-only` / `--*-bare-only` modes: 300,000, or `VOXSIG_BENCH_RECORDS`
/// (fewer, for profiling under `valgrind --tool=callgrind`).
fn profile_records() -> u64 {
    std::env::var("VOXSIG_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000)
}

/// QoS for `--mqtt-sink-only` / `--mqtt-bare-only`: `VOXSIG_BENCH_QOS` (0 or 1; default 1).
fn profile_qos() -> u8 {
    std::env::var("VOXSIG_BENCH_QOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(1, |q: u8| q.min(1))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One table row: medians over the rounds.
struct Row {
    name: &'static str,
    count: u64,
    bare: f64,
    sink: f64,
    /// Median, lowest and highest of the per-round sink / bare ratios.
    ratio: (f64, f64, f64),
    bare_cpu_ns: f64,
    sink_cpu_ns: f64,
    /// Buffer rows into the null sink: the same records appended to a file with no buffer
    /// ([`appends_alone`]), medians over the rounds.
    alone: Option<Measure>,
}

/// Runs `ROUNDS` rounds of both sides, alternating which goes first.
async fn compare<B, S, FB, FS>(
    rounds: usize,
    name: &'static str,
    count: u64,
    mut bare: B,
    mut sink: S,
) -> Row
where
    B: FnMut() -> FB,
    S: FnMut() -> FS,
    FB: std::future::Future<Output = Measure>,
    FS: std::future::Future<Output = Measure>,
{
    let (mut b, mut s) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = bare().await;
            (x, sink().await)
        } else {
            let y = sink().await;
            (bare().await, y)
        };
        println!(
            "{name}, round {}: bare {:.0} rec/s ({:.0} ns CPU/record), sink {:.0} rec/s ({:.0} ns), sink / bare {:.2}",
            round + 1,
            x.rate,
            x.cpu_ns,
            y.rate,
            y.cpu_ns,
            y.rate / x.rate
        );
        b.push(x);
        s.push(y);
    }
    let ratios: Vec<f64> = b.iter().zip(&s).map(|(x, y)| y.rate / x.rate).collect();
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = ratios.iter().copied().fold(0.0, f64::max);
    Row {
        name,
        count,
        bare: median(b.iter().map(|m| m.rate).collect()),
        sink: median(s.iter().map(|m| m.rate).collect()),
        ratio: (median(ratios), lowest, highest),
        bare_cpu_ns: median(b.iter().map(|m| m.cpu_ns).collect()),
        sink_cpu_ns: median(s.iter().map(|m| m.cpu_ns).collect()),
        alone: None,
    }
}

fn mqtt_config(url: String, level: u8) -> MqttConfig {
    let mut config = MqttConfig::new(url);
    config.qos = level;
    config.retain.clear();
    config.client_id = Some(format!("bench-sink-q{level}"));
    config
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = match (full, quick) {
        (false, _) => 100,
        (true, true) => 10,
        (true, false) => 1,
    };
    let rounds = if full { ROUNDS } else { SMOKE_ROUNDS };
    let warmup_n = WARMUP / scale;
    let only = |flag: &str| std::env::args().any(|a| a == flag);
    if only("--kafka-sink-only") || only("--kafka-bare-only") {
        let tansu = Tansu::start();
        create_topic(&tansu.brokers()).await;
        let recs = records(profile_records(), Layout::Kafka);
        let warmup = records(WARMUP, Layout::Kafka);
        let (side, m) = if only("--kafka-sink-only") {
            let config = SinkConfig::Kafka(KafkaConfig::new(tansu.brokers()));
            ("kafka sink", through_sink(config, recs, warmup).await)
        } else {
            (
                "bare kafka",
                bare_kafka(&tansu.brokers(), recs, warmup, only("--keep")).await,
            )
        };
        println!("{side}: {:.0} rec/s, {:.0} ns CPU/record", m.rate, m.cpu_ns);
        return;
    }
    if only("--mqtt-sink-only") || only("--mqtt-bare-only") {
        let mosquitto = Mosquitto::start(MosquittoOptions::default());
        let level = profile_qos();
        let recs = records(profile_records(), Layout::Mqtt);
        let warmup = records(WARMUP, Layout::Mqtt);
        let (side, m) = if only("--mqtt-sink-only") {
            let config = SinkConfig::Mqtt(mqtt_config(mosquitto.url(), level));
            ("mqtt sink", through_sink(config, recs, warmup).await)
        } else {
            let qos = if level == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            (
                "bare rumqttc",
                bare_mqtt(mosquitto.port, qos, recs, warmup).await,
            )
        };
        println!(
            "{side}, QoS {level}: {:.0} rec/s, {:.0} ns CPU/record",
            m.rate, m.cpu_ns
        );
        return;
    }
    if only("--memory") {
        let recs = records(200_000, Layout::Kafka);
        for _ in 0..3 {
            println!("memory sink: {:.0} rec/s", through_memory(&recs).await);
        }
        return;
    }
    let mosquitto = Mosquitto::start(MosquittoOptions::default());
    // The disk buffer rows first (they write ~1 GiB at full size), not with `--mqtt`.
    let buffer_rows = if only("--mqtt") {
        Vec::new()
    } else {
        buffer_rows(rounds, scale, &mosquitto).await
    };
    if only("--buffers-only") {
        print_buffer_rows(&buffer_rows, rounds, scale).await;
        return;
    }
    let mut rows = Vec::new();

    // The MQTT 5 row: the same bare (3.1.1) rumqttc loop beside the sink speaking MQTT 5
    // (properties on every publish), in the same run as the 3.1.1 rows.
    for (name, qos, level, n, protocol) in [
        (
            "mosquitto QoS 0",
            QoS::AtMostOnce,
            0u8,
            100_000 / scale,
            Protocol::V311,
        ),
        (
            "mosquitto QoS 1",
            QoS::AtLeastOnce,
            1u8,
            50_000 / scale,
            Protocol::V311,
        ),
        (
            "mosquitto QoS 1, sink over MQTT 5",
            QoS::AtLeastOnce,
            1u8,
            50_000 / scale,
            Protocol::V5,
        ),
    ] {
        let mut config = mqtt_config(mosquitto.url(), level);
        config.protocol = protocol;
        let row = compare(
            rounds,
            name,
            n,
            || {
                bare_mqtt(
                    mosquitto.port,
                    qos,
                    records(n, Layout::Mqtt),
                    records(warmup_n, Layout::Mqtt),
                )
            },
            || {
                through_sink(
                    SinkConfig::Mqtt(config.clone()),
                    records(n, Layout::Mqtt),
                    records(warmup_n, Layout::Mqtt),
                )
            },
        )
        .await;
        rows.push(row);
    }

    if only("--mqtt") {
        // MQTT rows only (`-- --bench --mqtt`): skip Kafka (and tansu).
        print_rows(rows, rounds, warmup_n);
        return;
    }
    let tansu = Tansu::start();
    let n = 200_000 / scale;
    let brokers = tansu.brokers();
    create_topic(&brokers).await;
    let config = KafkaConfig::new(brokers.clone());
    for (name, keep) in [
        ("tansu (memory), acks=all, lz4", false),
        ("tansu, bare loop borrowing its records", true),
    ] {
        let row = compare(
            rounds,
            name,
            n,
            || {
                bare_kafka(
                    &brokers,
                    records(n, Layout::Kafka),
                    records(warmup_n, Layout::Kafka),
                    keep,
                )
            },
            || {
                through_sink(
                    SinkConfig::Kafka(config.clone()),
                    records(n, Layout::Kafka),
                    records(warmup_n, Layout::Kafka),
                )
            },
        )
        .await;
        rows.push(row);
    }

    print_rows(rows, rounds, warmup_n);
    print_buffer_rows(&buffer_rows, rounds, scale).await;
}

/// The rows of a results table under its header line (both tables share the columns: name,
/// records, baseline and measured rates, ratio median and range, CPU per record).
fn print_table(rows: &[Row]) {
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} ({:.2}-{:.2}) | {:.0} / {:.0} |",
            r.name,
            r.count,
            r.bare,
            r.sink,
            r.ratio.0,
            r.ratio.1,
            r.ratio.2,
            r.bare_cpu_ns,
            r.sink_cpu_ns
        );
    }
}

fn print_rows(rows: Vec<Row>, rounds: usize, warmup_n: u64) {
    println!(
        "\n| broker | records | bare client (rec/s) | voxsig sink (rec/s) | sink / bare (median; lowest-highest) | client CPU ns/record, bare / sink |"
    );
    print_table(&rows);
    println!(
        "\nmedians of {rounds} rounds alternating which side goes first; {warmup_n} warm-up records each; ~400-byte JSON payloads; loopback"
    );
}

/// The disk buffer beside the memory buffer, into the same sink, in the same run.
/// `--buffer-row <words>` keeps only the rows whose name contains them (e.g. `"null sink, disk
/// fsync = interval"`), for profiling one row.
async fn buffer_rows(rounds: usize, scale: u64, mosquitto: &Mosquitto) -> Vec<Row> {
    let args: Vec<String> = std::env::args().collect();
    let only_row = args
        .iter()
        .position(|a| a == "--buffer-row")
        .and_then(|i| args.get(i + 1).cloned());
    let mut rows = Vec::new();
    let mqtt = Target::Mqtt(Box::new(mqtt_config(mosquitto.url(), 1)));
    for (name, target, fsync, n) in [
        (
            "null sink, disk fsync = interval",
            Target::Null,
            Fsync::Interval,
            300_000 / scale,
        ),
        (
            "null sink, disk fsync = never",
            Target::Null,
            Fsync::Never,
            300_000 / scale,
        ),
        (
            "null sink, disk fsync = always",
            Target::Null,
            Fsync::Always,
            300_000 / scale,
        ),
        (
            "mosquitto QoS 1, disk fsync = interval",
            mqtt.clone(),
            Fsync::Interval,
            50_000 / scale,
        ),
        (
            "mosquitto QoS 1, disk fsync = always",
            mqtt.clone(),
            Fsync::Always,
            50_000 / scale,
        ),
    ] {
        if only_row
            .as_ref()
            .is_some_and(|words| !name.contains(words.as_str()))
        {
            continue;
        }
        let warmup = (n / 10).max(10);
        let mut row = compare(
            rounds,
            name,
            n,
            || through_buffer(None, target.clone(), n, warmup),
            || through_buffer(Some(fsync), target.clone(), n, warmup),
        )
        .await;
        if matches!(target, Target::Null) {
            let alone: Vec<Measure> = (0..rounds).map(|_| appends_alone(fsync, n)).collect();
            row.alone = Some(Measure {
                rate: median(alone.iter().map(|m| m.rate).collect()),
                cpu_ns: median(alone.iter().map(|m| m.cpu_ns).collect()),
            });
        }
        rows.push(row);
    }
    rows
}

async fn print_buffer_rows(rows: &[Row], rounds: usize, scale: u64) {
    println!(
        "\n| buffer rows: sink, disk buffer | records | memory buffer (rec/s) | disk buffer (rec/s) | disk / memory (median; lowest-highest) | CPU ns/record, memory / disk |"
    );
    print_table(rows);
    println!("\nmedians of {rounds} rounds alternating which side goes first; ~1.3 KB records (1,200-byte payloads); loopback; disk buffer in a fresh directory under $TMPDIR");
    let alone_rows: Vec<(&Row, Measure)> = rows
        .iter()
        .filter_map(|r| r.alone.map(|alone| (r, alone)))
        .collect();
    if !alone_rows.is_empty() {
        println!(
            "\n| the file system alone: the null-sink rows' records appended with no buffer | appends alone (rec/s) | CPU ns/record | disk buffer / appends alone | memory buffer / appends alone |"
        );
        println!("| --- | ---: | ---: | ---: | ---: |");
        for (r, alone) in &alone_rows {
            println!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.2} |",
                r.name,
                alone.rate,
                alone.cpu_ns,
                r.sink / alone.rate,
                r.bare / alone.rate
            );
        }
        println!("\nmedians of {rounds} runs right after each row's rounds: one `pwritev` per 1 MiB of records (a 100-byte head and the payload by reference each), synced as the row's `fsync` says; timed to the last write's return");
    }
    if std::env::args().any(|a| a == "--buffer-row") {
        return;
    }
    // Recovery: ~1 GiB (at full scale) of backlog left by a previous run.
    let n = 800_000 / scale;
    let (bytes, opened, drained) = recovery(n).await;
    println!(
        "\nrecovery: {n} records, {:.1} MiB on disk: opened (scanned, checked) in {opened:.2} s, all delivered to a null sink {drained:.2} s after the start",
        bytes as f64 / 1048576.0
    );
    // The same after segments were reused (~4 segments of 64 MiB at full scale).
    let (reused, left) = (250_000 / scale, 1_000 / scale);
    let (opened, found) = recovery_reused(reused, left).await;
    println!(
        "recovery after reuse: {reused} records acknowledged, then {left} not, then a stop: opened in {opened:.2} s, {found} records found"
    );
}
