//! Metrics and log lines of the sinks, in one place.
//!
//! Every happening is one typed event struct that owns its log line and its counters; code calls
//! [`emit`] with it and never pairs a `tracing` macro with a counter by hand. Per-record and
//! per-frame problems are logged through a [`LogLimiter`] (the bridge's frame errors use the same
//! one): counted always, at most [`LOG_BURST`] lines per kind per [`LOG_INTERVAL`]. Metrics live in a
//! [`prometheus::Registry`] passed in by the caller (no global registry).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `voxsig_bridge_sink_records_published_total` | counter | `sink`, `event` |
//! | `voxsig_bridge_sink_records_failed_total` | counter | `sink`, `event`, `reason` |
//! | `voxsig_bridge_sink_redeliveries_total` | counter | `sink` |
//! | `voxsig_bridge_sink_connected` | gauge (0/1) | `sink` |
//! | `voxsig_bridge_sink_connection_errors_total` | counter | `sink`, `kind` |
//! | `voxsig_bridge_sink_reconnect_attempts_total` | counter | `sink` |
//! | `voxsig_bridge_sink_publish_latency_seconds` | histogram | `sink` |
//! | `voxsig_bridge_buffer_records_dropped_total` | counter | `reason`, `event` |
//! | `voxsig_bridge_buffer_events` / `voxsig_bridge_buffer_bytes` | gauge | — |
//! | `voxsig_bridge_buffer_capacity_events` / `voxsig_bridge_buffer_capacity_bytes` | gauge | — (a disk buffer without `max_events`: the largest value, so fill ratios stay 0) |
//! | `voxsig_bridge_buffer_replayed_total` | counter | — |
//! | `voxsig_bridge_buffer_read_back_total` | counter | — |
//! | `voxsig_bridge_buffer_write_skipped_total` | counter | — |
//! | `voxsig_bridge_buffer_corrupt_records_total` | counter | `kind` (`torn_tail`, `checksum`) |
//! | `voxsig_bridge_buffer_write_errors_total` | counter | — |

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::health::{HealthSignal, SinkHealth, SinkHealthWatch};
use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Lines logged per kind of per-frame problem per [`LOG_INTERVAL`].
pub const LOG_BURST: u32 = 5;
/// The interval of [`LOG_BURST`].
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the limiter says about one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVerdict {
    /// Log it; `suppressed` occurrences of this kind went unlogged since the last line.
    Log {
        /// Occurrences counted but not logged before this one.
        suppressed: u64,
        /// This is the last line before suppression starts.
        last_before_suppression: bool,
    },
    /// Count it only.
    Suppress,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Rate-limits log lines by kind: at most `burst` per `interval` each (sans-I/O: fed the time).
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    windows: Mutex<HashMap<&'static str, Window>>,
}

impl LogLimiter {
    /// A limiter letting `burst` lines per kind through per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        LogLimiter {
            burst: burst.max(1),
            interval,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// One occurrence of `kind` at `now`.
    pub fn check(&self, kind: &'static str, now: Instant) -> LogVerdict {
        let Ok(mut windows) = self.windows.lock() else {
            return LogVerdict::Suppress;
        };
        let window = windows.entry(kind).or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(window.start) >= self.interval {
            window.start = now;
            window.logged = 0;
        }
        if window.logged < self.burst {
            window.logged += 1;
            let suppressed = std::mem::take(&mut window.suppressed);
            LogVerdict::Log {
                suppressed,
                last_before_suppression: window.logged == self.burst,
            }
        } else {
            window.suppressed += 1;
            LogVerdict::Suppress
        }
    }
}

/// The sinks' metrics, registered in a caller-supplied registry. Cheap to clone.
#[derive(Clone)]
pub struct SinkMetrics {
    inner: Arc<Metrics>,
}

impl std::fmt::Debug for SinkMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkMetrics")
    }
}

struct Metrics {
    published: IntCounterVec,
    failed: IntCounterVec,
    redelivered: IntCounterVec,
    connected: IntGaugeVec,
    connection_errors: IntCounterVec,
    reconnect_attempts: IntCounterVec,
    latency: HistogramVec,
    dropped: IntCounterVec,
    buffer_events: IntGauge,
    buffer_bytes: IntGauge,
    capacity_events: IntGauge,
    capacity_bytes: IntGauge,
    limiter: LogLimiter,
    replayed: prometheus::IntCounter,
    read_back: prometheus::IntCounter,
    write_skipped: prometheus::IntCounter,
    corrupt: IntCounterVec,
    write_errors: prometheus::IntCounter,
    /// Set with the `connected` gauge, by the same events.
    health: HealthSignal,
}

impl SinkMetrics {
    /// Creates the metrics and registers them into `registry`.
    ///
    /// Fails when the registry already holds metrics of the same names.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let connected = IntGaugeVec::new(
            Opts::new(
                "voxsig_bridge_sink_connected",
                "1 while the sink holds a working connection to its broker",
            ),
            &["sink"],
        )?;
        registry.register(Box::new(connected.clone()))?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "voxsig_bridge_sink_publish_latency_seconds",
                "Seconds from the bridge accepting a record to the broker acknowledging it",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 18)?),
            &["sink"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        let plain_counter = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let inner = Metrics {
            published: counter(
                "voxsig_bridge_sink_records_published_total",
                "Records acknowledged by the broker",
                &["sink", "event"],
            )?,
            failed: counter(
                "voxsig_bridge_sink_records_failed_total",
                "Publish attempts that failed, by reason (retried unless the reason is permanent)",
                &["sink", "event", "reason"],
            )?,
            redelivered: counter(
                "voxsig_bridge_sink_redeliveries_total",
                "Records sent again after a reconnect or a failed attempt (possible duplicates)",
                &["sink"],
            )?,
            connected,
            connection_errors: counter(
                "voxsig_bridge_sink_connection_errors_total",
                "Failed connections or lost connections to the broker, by kind",
                &["sink", "kind"],
            )?,
            reconnect_attempts: counter(
                "voxsig_bridge_sink_reconnect_attempts_total",
                "Reconnect attempts the sink scheduled after a failed or lost connection",
                &["sink"],
            )?,
            latency,
            dropped: counter(
                "voxsig_bridge_buffer_records_dropped_total",
                "Records dropped by the buffer, by reason",
                &["reason", "event"],
            )?,
            buffer_events: gauge(
                "voxsig_bridge_buffer_events",
                "Records held by the buffer (queued or in flight)",
            )?,
            buffer_bytes: gauge(
                "voxsig_bridge_buffer_bytes",
                "Bytes held by the buffer (queued or in flight)",
            )?,
            capacity_events: gauge(
                "voxsig_bridge_buffer_capacity_events",
                "Maximum records the buffer holds",
            )?,
            capacity_bytes: gauge(
                "voxsig_bridge_buffer_capacity_bytes",
                "Maximum bytes the buffer holds",
            )?,
            limiter: LogLimiter::new(LOG_BURST, LOG_INTERVAL),
            replayed: plain_counter(
                "voxsig_bridge_buffer_replayed_total",
                "Records re-delivered from the disk buffer after a start (possible duplicates)",
            )?,
            read_back: plain_counter(
                "voxsig_bridge_buffer_read_back_total",
                "Records the disk buffer read back from its files (beyond its memory window, or replayed after a start)",
            )?,
            write_skipped: plain_counter(
                "voxsig_bridge_buffer_write_skipped_total",
                "Records the disk buffer never wrote: they left it (delivered, rejected or dropped) before their write came",
            )?,
            corrupt: counter(
                "voxsig_bridge_buffer_corrupt_records_total",
                "Damaged records found in the disk buffer, by kind (torn_tail: cut by a crash; checksum: damaged in the middle)",
                &["kind"],
            )?,
            write_errors: plain_counter(
                "voxsig_bridge_buffer_write_errors_total",
                "Records the disk buffer could not write (disk full, I/O error); when_full applied",
            )?,
            health: HealthSignal::new(),
        };
        Ok(SinkMetrics {
            inner: Arc::new(inner),
        })
    }

    /// The health of the sink using these metrics (a bridge runs one sink), set by the same
    /// events as the `voxsig_bridge_sink_connected` gauge.
    pub fn health(&self) -> SinkHealthWatch {
        self.inner.health.watch()
    }

    /// Metrics registered in a fresh private registry (tests, tools).
    pub fn unregistered() -> Self {
        match Self::register(&Registry::new()) {
            Ok(metrics) => metrics,
            // A fresh registry holds no metric, and every name and label set above is valid.
            Err(error) => unreachable!("registering into an empty registry failed: {error}"),
        }
    }
}

/// Something that happened inside a sink or the buffer: it owns its log line and its counters.
pub(crate) trait InternalEvent {
    /// Logs and counts the happening.
    fn emit(self, metrics: &SinkMetrics);
}

/// Records one happening.
pub(crate) fn emit(metrics: &SinkMetrics, event: impl InternalEvent) {
    event.emit(metrics);
}

/// Why the buffer dropped a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `when_full = "drop_oldest"`: the oldest queued record made room for a new one.
    Oldest,
    /// `when_full = "drop_newest"` (or nothing queued to drop): the new record was refused.
    Newest,
    /// The record alone is larger than the buffer's byte budget.
    TooLarge,
    /// Still undelivered when the shutdown deadline passed (memory buffer: lost).
    Shutdown,
    /// The disk buffer could not write the record (disk full, I/O error) under a drop policy.
    DiskError,
}

impl DropReason {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Oldest => "drop_oldest",
            DropReason::Newest => "drop_newest",
            DropReason::TooLarge => "too_large",
            DropReason::Shutdown => "shutdown",
            DropReason::DiskError => "disk_error",
        }
    }
}

/// The broker acknowledged records.
/// Batches at least this large observe their latencies through a local histogram.
const LOCAL_LATENCY_FROM: usize = 32;

pub(crate) struct RecordsDelivered<'a> {
    pub sink: &'static str,
    pub claims: &'a [crate::Claim],
}

impl InternalEvent for RecordsDelivered<'_> {
    fn emit(self, m: &SinkMetrics) {
        tracing::trace!(
            sink = self.sink,
            count = self.claims.len(),
            "records delivered"
        );
        let latency = m.inner.latency.with_label_values(&[self.sink]);
        // A large batch is observed locally (no atomics per record) and added to the shared
        // histogram once; a few records (MQTT acknowledges one by one) go straight in.
        let local = (self.claims.len() >= LOCAL_LATENCY_FROM).then(|| latency.local());
        let now = std::time::Instant::now();
        let mut run: Option<(&'static str, u64)> = None;
        for claim in self.claims {
            let record = claim.record();
            let seconds = now
                .saturating_duration_since(record.accepted_at)
                .as_secs_f64();
            match &local {
                Some(local) => local.observe(seconds),
                None => latency.observe(seconds),
            }
            let label = record.headers.event_label;
            run = match run {
                Some((l, n)) if l == label => Some((l, n + 1)),
                other => {
                    if let Some((l, n)) = other {
                        m.inner
                            .published
                            .with_label_values(&[self.sink, l])
                            .inc_by(n);
                    }
                    Some((label, 1))
                }
            };
        }
        if let Some((l, n)) = run {
            m.inner
                .published
                .with_label_values(&[self.sink, l])
                .inc_by(n);
        }
        if let Some(local) = local {
            local.flush();
        }
    }
}

/// A publish attempt failed. `permanent` failures leave the buffer (the record can never be
/// delivered, e.g. an invalid topic); the others are retried.
pub(crate) struct PublishFailed<'a> {
    pub sink: &'static str,
    pub event_label: &'static str,
    pub reason: &'static str,
    pub permanent: bool,
    pub topic: &'a str,
    pub error: &'a dyn Display,
}

impl InternalEvent for PublishFailed<'_> {
    fn emit(self, m: &SinkMetrics) {
        if self.permanent {
            // One per record: rate-limited per reason (a flood of oversize events is a counter).
            if let LogVerdict::Log { suppressed, .. } =
                m.inner.limiter.check(self.reason, Instant::now())
            {
                tracing::warn!(sink = self.sink, event = self.event_label, reason = self.reason,
                    topic = self.topic, error = %self.error, suppressed,
                    "record rejected; it cannot be delivered");
            }
        } else {
            tracing::debug!(sink = self.sink, event = self.event_label, reason = self.reason,
                topic = self.topic, error = %self.error, "publish failed; retrying");
        }
        m.inner
            .failed
            .with_label_values(&[self.sink, self.event_label, self.reason])
            .inc();
    }
}

/// Records were sent again (after a reconnect, a lost session or a failed attempt).
pub(crate) struct RecordsRedelivered {
    pub sink: &'static str,
    pub count: u64,
    pub cause: &'static str,
}

impl InternalEvent for RecordsRedelivered {
    fn emit(self, m: &SinkMetrics) {
        if self.count == 0 {
            return;
        }
        tracing::info!(
            sink = self.sink,
            count = self.count,
            cause = self.cause,
            "records sent again"
        );
        m.inner
            .redelivered
            .with_label_values(&[self.sink])
            .inc_by(self.count);
    }
}

/// The sink connected to its broker.
pub(crate) struct SinkConnected<'a> {
    pub sink: &'static str,
    pub endpoint: &'a str,
    pub detail: &'a str,
}

impl InternalEvent for SinkConnected<'_> {
    fn emit(self, m: &SinkMetrics) {
        tracing::info!(
            sink = self.sink,
            endpoint = self.endpoint,
            detail = self.detail,
            "sink connected"
        );
        m.inner.connected.with_label_values(&[self.sink]).set(1);
        m.inner.health.set(SinkHealth::Connected);
    }
}

/// Why a sink's connection failed: the `kind` label of
/// `voxsig_bridge_sink_connection_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionErrorKind {
    /// The broker refused the connection (or nothing listened).
    Refused,
    /// Bad credentials or not authorised.
    Auth,
    /// A socket or file error.
    Io,
    /// The TLS handshake or certificates.
    Tls,
    /// The broker spoke out of protocol.
    Protocol,
    /// No answer in time.
    Timeout,
    /// The broker (Kafka: a broker error or all brokers down).
    Broker,
    /// librdkafka's fatal error: the producer is re-created.
    Fatal,
    /// Attempts keep timing out although a connection is held: the producer is re-created.
    Stalled,
    /// The sink's own configuration (e.g. the Kafka admin client could not be built).
    Config,
}

impl ConnectionErrorKind {
    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionErrorKind::Refused => "refused",
            ConnectionErrorKind::Auth => "auth",
            ConnectionErrorKind::Io => "io",
            ConnectionErrorKind::Tls => "tls",
            ConnectionErrorKind::Protocol => "protocol",
            ConnectionErrorKind::Timeout => "timeout",
            ConnectionErrorKind::Broker => "broker",
            ConnectionErrorKind::Fatal => "fatal",
            ConnectionErrorKind::Stalled => "stalled",
            ConnectionErrorKind::Config => "config",
        }
    }
}

/// A connection attempt failed or a working connection was lost.
pub(crate) struct ConnectionFailed<'a> {
    pub sink: &'static str,
    pub endpoint: &'a str,
    /// Why, as a bounded label.
    pub kind: ConnectionErrorKind,
    pub error: &'a dyn Display,
    /// When the sink tries again, if it decides (librdkafka reconnects by itself).
    pub retry_in: Option<Duration>,
}

impl InternalEvent for ConnectionFailed<'_> {
    fn emit(self, m: &SinkMetrics) {
        tracing::warn!(sink = self.sink, endpoint = self.endpoint, kind = self.kind.as_str(),
            error = %self.error, retry_in_ms = self.retry_in.map(|d| d.as_millis() as u64),
            "sink connection failed");
        m.inner.connected.with_label_values(&[self.sink]).set(0);
        m.inner.health.set(SinkHealth::Disconnected);
        m.inner
            .connection_errors
            .with_label_values(&[self.sink, self.kind.as_str()])
            .inc();
        if self.retry_in.is_some() {
            m.inner
                .reconnect_attempts
                .with_label_values(&[self.sink])
                .inc();
        }
    }
}

/// The buffer dropped a record.
pub(crate) struct RecordDropped {
    pub reason: DropReason,
    pub event_label: &'static str,
    pub count: u64,
}

impl InternalEvent for RecordDropped {
    fn emit(self, m: &SinkMetrics) {
        tracing::debug!(
            reason = self.reason.label(),
            event = self.event_label,
            count = self.count,
            "records dropped"
        );
        m.inner
            .dropped
            .with_label_values(&[self.reason.label(), self.event_label])
            .inc_by(self.count);
    }
}

/// The buffer's fill level changed (gauges only; no log line).
pub(crate) struct BufferLevel {
    pub events: usize,
    pub bytes: usize,
}

impl InternalEvent for BufferLevel {
    fn emit(self, m: &SinkMetrics) {
        m.inner.buffer_events.set(saturating_i64(self.events));
        m.inner.buffer_bytes.set(saturating_i64(self.bytes));
    }
}

/// The buffer was created with these bounds.
pub(crate) struct BufferCreated {
    pub max_events: usize,
    pub max_bytes: usize,
    pub when_full: &'static str,
}

impl InternalEvent for BufferCreated {
    fn emit(self, m: &SinkMetrics) {
        tracing::debug!(
            max_events = self.max_events,
            max_bytes = self.max_bytes,
            when_full = self.when_full,
            "buffer created"
        );
        m.inner.capacity_events.set(saturating_i64(self.max_events));
        m.inner.capacity_bytes.set(saturating_i64(self.max_bytes));
    }
}

/// What kind of damage the disk buffer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorruptKind {
    /// The end of the newest data was cut by a crash mid-write: truncated.
    TornTail,
    /// A record in the middle failed its checksum (or does not parse): skipped.
    Checksum,
}

impl CorruptKind {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            CorruptKind::TornTail => "torn_tail",
            CorruptKind::Checksum => "checksum",
        }
    }
}

/// The disk buffer found damaged records in a segment (logged once per segment and kind).
pub(crate) struct CorruptRecords<'a> {
    pub kind: CorruptKind,
    pub count: u64,
    pub path: &'a std::path::Path,
}

impl InternalEvent for CorruptRecords<'_> {
    fn emit(self, m: &SinkMetrics) {
        tracing::warn!(
            kind = self.kind.as_str(),
            count = self.count,
            file = %self.path.display(),
            "disk buffer: damaged records skipped (records after them are kept)"
        );
        m.inner
            .corrupt
            .with_label_values(&[self.kind.as_str()])
            .inc_by(self.count);
    }
}

/// The disk buffer opened its directory and found records to replay.
pub(crate) struct BufferRecovered<'a> {
    pub dir: &'a std::path::Path,
    pub records: u64,
    pub bytes: u64,
    pub segments: usize,
    pub elapsed: Duration,
}

impl InternalEvent for BufferRecovered<'_> {
    fn emit(self, _m: &SinkMetrics) {
        tracing::info!(
            dir = %self.dir.display(),
            records = self.records,
            bytes = self.bytes,
            segments = self.segments,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "disk buffer opened; unacknowledged records are delivered before new ones"
        );
    }
}

/// Records were read back from the disk buffer's files (spilled beyond the memory window, or
/// left by a previous run: `replayed` of them). Counted; no log line.
pub(crate) struct RecordsReadBack {
    pub count: u64,
    pub replayed: u64,
}

impl InternalEvent for RecordsReadBack {
    fn emit(self, m: &SinkMetrics) {
        m.inner.read_back.inc_by(self.count);
        if self.replayed > 0 {
            m.inner.replayed.inc_by(self.replayed);
        }
    }
}

/// Records left the disk buffer before their write came, and were not written: nothing on disk
/// to keep for them. Counted; no log line.
pub(crate) struct DiskWritesSkipped {
    pub records: u64,
}

impl InternalEvent for DiskWritesSkipped {
    fn emit(self, m: &SinkMetrics) {
        m.inner.write_skipped.inc_by(self.records);
    }
}

/// The disk buffer could not write a record. Logged at most once per 10 s (with the count since).
pub(crate) struct DiskWriteFailed<'a> {
    pub dir: &'a std::path::Path,
    pub error: &'a std::io::Error,
    pub log: Option<u64>,
}

impl InternalEvent for DiskWriteFailed<'_> {
    fn emit(self, m: &SinkMetrics) {
        if let Some(since) = self.log {
            tracing::error!(dir = %self.dir.display(), error = %self.error, failures = since,
                "disk buffer: cannot write (when_full applies)");
        }
        m.inner.write_errors.inc();
    }
}

/// The disk buffer closed while the disk still refused writes: accepted records that were only
/// in the write batch are lost (the drain report cannot see them; this says so).
pub(crate) struct DiskBatchLost<'a> {
    pub dir: &'a std::path::Path,
    pub error: &'a std::io::Error,
    pub bytes: usize,
}

impl InternalEvent for DiskBatchLost<'_> {
    fn emit(self, m: &SinkMetrics) {
        tracing::error!(dir = %self.dir.display(), error = %self.error, bytes = self.bytes,
            "disk buffer: closed while the disk refused writes; accepted records not yet written are lost");
        m.inner.write_errors.inc();
    }
}

/// The sink stopped; what it delivered and what it could not.
pub(crate) struct SinkStopped<'a> {
    pub sink: &'static str,
    pub report: &'a crate::DrainReport,
}

impl InternalEvent for SinkStopped<'_> {
    fn emit(self, m: &SinkMetrics) {
        let r = self.report;
        if r.undelivered > 0 && r.durable {
            tracing::info!(sink = self.sink, delivered = r.delivered, kept_on_disk = r.undelivered,
                by_event = ?r.undelivered_by_event, "sink stopped; undelivered records stay in the disk buffer for the next start");
        } else if r.undelivered > 0 {
            tracing::warn!(sink = self.sink, delivered = r.delivered, undelivered = r.undelivered,
                by_event = ?r.undelivered_by_event, "sink stopped with undelivered records");
        } else {
            tracing::info!(
                sink = self.sink,
                delivered = r.delivered,
                "sink stopped; everything delivered"
            );
        }
        m.inner.connected.with_label_values(&[self.sink]).set(0);
        m.inner.health.set(SinkHealth::Stopped);
    }
}

/// A Kafka topic was created through the admin API (or already existed).
pub(crate) struct TopicCreated<'a> {
    pub sink: &'static str,
    pub topic: &'a str,
    pub existed: bool,
}

impl InternalEvent for TopicCreated<'_> {
    fn emit(self, _m: &SinkMetrics) {
        tracing::info!(
            sink = self.sink,
            topic = self.topic,
            existed = self.existed,
            "topic ensured"
        );
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_lets_a_burst_through_per_interval_and_reports_the_rest() {
        let limiter = LogLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let log = |suppressed, last| LogVerdict::Log {
            suppressed,
            last_before_suppression: last,
        };
        let table = [
            ("a", 0, log(0, false)),
            ("a", 1, log(0, false)),
            ("b", 2, log(0, false)),
            ("a", 3, log(0, true)),
            ("a", 4, LogVerdict::Suppress),
            ("a", 9_999, LogVerdict::Suppress),
            ("b", 9_999, log(0, false)),
            ("a", 10_000, log(2, false)),
            ("a", 10_001, log(0, false)),
            ("a", 10_002, log(0, true)),
            ("a", 10_003, LogVerdict::Suppress),
            ("a", 60_000, log(1, false)),
        ];
        for (i, (kind, ms, want)) in table.into_iter().enumerate() {
            assert_eq!(limiter.check(kind, at(ms)), want, "row {i}");
        }
    }

    #[test]
    fn names_follow_conventions_and_registries_are_independent() {
        let registry = Registry::new();
        let m = SinkMetrics::register(&registry).expect("register");
        // A second registry takes the same names (tests run in parallel).
        let _other = SinkMetrics::unregistered();
        emit(
            &m,
            RecordsDelivered {
                sink: "memory",
                claims: &[],
            },
        );
        emit(
            &m,
            RecordDropped {
                reason: DropReason::Oldest,
                event_label: "other",
                count: 2,
            },
        );
        use prometheus::Encoder;
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split(' ').skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("voxsig_bridge_"), "{name}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        assert!(text.contains(
            "voxsig_bridge_buffer_records_dropped_total{event=\"other\",reason=\"drop_oldest\"} 2"
        ));
        assert!(SinkMetrics::register(&registry).is_err());
    }
}
