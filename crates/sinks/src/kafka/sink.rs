//! The Kafka sink's running task: an idempotent librdkafka producer (`acks=all`) whose delivery
//! reports acknowledge records to the buffer.
//!
//! Each record travels to librdkafka with its [`Claim`] as the delivery opaque. The delivery
//! callback (on librdkafka's polling thread) acknowledges successes directly and passes failures
//! back to the task, which rejects what can never succeed (invalid topic, too large, forbidden)
//! and requeues the rest — after re-creating the topic when it vanished — so nothing accepted is
//! given up while a broker is away.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use tokio::sync::{mpsc, Notify};

use super::config::{CreateTopics, KafkaConfig};
use crate::backoff::{Backoff, ReconnectConfig};
use crate::buffer::{Acker, BufferReader, Claim};
use crate::jsonl::sleep_unless_aborted;
use crate::telemetry::{emit, ConnectionFailed, RecordsRedelivered, SinkConnected, TopicCreated};
use crate::topic::check_kafka_topic;
use crate::{DrainReport, Record, Sink, SinkError, SinkMetrics};

/// How often the task looks for a fatal producer error when nothing else happens.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Pause before records whose delivery failed are sent again (librdkafka reconnects by
/// itself; this only keeps a failing broker from being flooded).
const RETRY_BACKOFF: ReconnectConfig = ReconnectConfig {
    min_backoff_ms: 100,
    max_backoff_ms: 5_000,
};
/// Most records taken from the buffer per fill.
const FILL_BATCH: usize = 1024;
/// Longest wait for purged records to come back before a new producer is created.
const PURGE_WAIT: Duration = Duration::from_secs(5);
/// Admin API operation timeout.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The Kafka sink (rdkafka / librdkafka).
pub struct KafkaSink {
    client_config: ClientConfig,
    endpoint: String,
    max_in_flight: usize,
    message_timeout: Duration,
    create_topics: CreateTopics,
}

impl KafkaSink {
    /// Builds the sink from a validated configuration; reads secret properties now. The
    /// producer itself is created when the sink runs.
    pub fn new(config: &KafkaConfig, instance: &str) -> Result<Self, SinkError> {
        config.validate()?;
        let mut cc = ClientConfig::new();
        for (name, value) in &config.properties {
            let value = value.resolve().map_err(|source| SinkError::Secret {
                key: "sink.properties",
                source,
            })?;
            cc.set(name, value.expose());
        }
        let client_id = config
            .client_id
            .as_deref()
            .unwrap_or("voxsig-bridge-{instance}")
            .replace("{instance}", instance);
        cc.set("bootstrap.servers", config.brokers.joined())
            .set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", config.compression.as_str())
            .set("linger.ms", config.linger_ms.to_string())
            .set("batch.size", config.batch_bytes.to_string())
            .set("message.timeout.ms", config.message_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                config.max_in_flight.max(1000).to_string(),
            )
            .set_log_level(RDKafkaLogLevel::Warning);
        Ok(KafkaSink {
            client_config: cc,
            endpoint: config.brokers.joined(),
            max_in_flight: config.max_in_flight,
            message_timeout: Duration::from_millis(config.message_timeout_ms),
            create_topics: config.create_topics.clone(),
        })
    }
}

/// A failed delivery handed back to the task.
struct Failure {
    claim: Claim,
    code: Option<RDKafkaErrorCode>,
    error: String,
}

/// Callbacks from librdkafka's threads.
struct Context {
    sink: &'static str,
    endpoint: String,
    metrics: SinkMetrics,
    acker: Acker,
    in_flight: AtomicUsize,
    /// The in-flight window.
    max_in_flight: usize,
    /// Wakes the task when the window has room again.
    room: Notify,
    /// Delivered claims waiting for the task to acknowledge them. Kept boxed: the boxes were
    /// allocated on the task's thread and are freed there, not on librdkafka's.
    #[allow(clippy::vec_box)]
    delivered: Mutex<Vec<Box<Claim>>>,
    delivered_ready: Notify,
    connected: AtomicBool,
    failures: mpsc::UnboundedSender<Failure>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(facility = fac, "librdkafka: {message}")
            }
            // Connection trouble also arrives through `error` below, counted there.
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                "auth"
            }
            Some(RDKafkaErrorCode::SSL) => "tls",
            Some(RDKafkaErrorCode::AllBrokersDown) => "broker",
            Some(RDKafkaErrorCode::BrokerTransportFailure) => "io",
            _ => "broker",
        };
        self.connected.store(false, Ordering::SeqCst);
        emit(
            &self.metrics,
            ConnectionFailed {
                sink: self.sink,
                endpoint: &self.endpoint,
                kind,
                error: &format_args!("{error}: {reason}"),
                retry_in: None,
            },
        );
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Claim>;

    fn delivery(&self, result: &DeliveryResult<'_>, claim: Box<Claim>) {
        // Out of flight first: once the claim is handed back the task may look for the end.
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == self.max_in_flight {
            // The window was full: the task may be waiting for room.
            self.room.notify_one();
        }
        match result {
            Ok(_) => {
                if !self.connected.swap(true, Ordering::SeqCst) {
                    emit(
                        &self.metrics,
                        SinkConnected {
                            sink: self.sink,
                            endpoint: &self.endpoint,
                            detail: "delivering",
                        },
                    );
                }
                // Acknowledged in batches by the task: this thread only queues the claim.
                let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
                delivered.push(claim);
                if delivered.len() == 1 {
                    self.delivered_ready.notify_one();
                }
            }
            Err((error, message)) => {
                let mut claim = *claim;
                let record = claim.record_mut();
                record.topic = message.topic().to_owned();
                record.key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned());
                record.payload =
                    bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default());
                let failure = Failure {
                    claim,
                    code: error.rdkafka_error_code(),
                    error: error.to_string(),
                };
                if let Err(mpsc::error::SendError(failure)) = self.failures.send(failure) {
                    // The task is gone (shutdown): hand the record back so it is reported.
                    self.acker.requeue(failure.claim);
                }
            }
        }
    }
}

/// What to do with a failed delivery.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Never deliverable: leaves the buffer, counted with this reason.
    Reject(&'static str),
    /// The topic is missing: create it (when enabled) and try again.
    MissingTopic,
    /// Try again.
    Retry(&'static str),
}

fn verdict(code: Option<RDKafkaErrorCode>) -> Verdict {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            Verdict::Reject("too_large")
        }
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => {
            Verdict::Reject("not_authorized")
        }
        Some(C::InvalidTopic) => Verdict::Reject("invalid_topic"),
        Some(C::InvalidMessage | C::InvalidRecord | C::BadMessage) => {
            Verdict::Reject("invalid_record")
        }
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            Verdict::MissingTopic
        }
        Some(C::MessageTimedOut) => Verdict::Retry("timeout"),
        Some(C::PurgeQueue | C::PurgeInflight) => Verdict::Retry("producer_restart"),
        _ => Verdict::Retry("broker"),
    }
}

type Producer_ = ThreadedProducer<Context>;

impl Sink for KafkaSink {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn run(self: Box<Self>, reader: BufferReader) -> BoxFuture<'static, DrainReport> {
        Box::pin(self.run_loop(reader))
    }
}

struct Task {
    sink: &'static str,
    metrics: SinkMetrics,
    endpoint: String,
    client_config: ClientConfig,
    create_topics: CreateTopics,
    admin: Option<AdminClient<DefaultClientContext>>,
    known_topics: HashSet<String>,
    backoff: Backoff,
    pause_until: Option<tokio::time::Instant>,
    /// Last delivery (or producer creation).
    last_progress: tokio::time::Instant,
    /// Some attempt timed out since then.
    timed_out: bool,
    /// The last topic that passed the topic rules.
    last_valid_topic: String,
}

impl KafkaSink {
    async fn run_loop(self: Box<Self>, mut reader: BufferReader) -> DrainReport {
        let sink = reader.sink_label();
        let metrics = reader.metrics().clone();
        let mut task = Task {
            sink,
            metrics: metrics.clone(),
            endpoint: self.endpoint.clone(),
            client_config: self.client_config.clone(),
            create_topics: self.create_topics.clone(),
            admin: None,
            known_topics: HashSet::new(),
            backoff: Backoff::new(&RETRY_BACKOFF),
            pause_until: None,
            last_progress: tokio::time::Instant::now(),
            timed_out: false,
            last_valid_topic: String::new(),
        };
        let (failures_tx, mut failures) = mpsc::unbounded_channel();
        let acker = reader.acker();
        let make_context = || Context {
            sink,
            endpoint: self.endpoint.clone(),
            metrics: metrics.clone(),
            acker: acker.clone(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: self.max_in_flight,
            room: Notify::new(),
            delivered: Mutex::new(Vec::new()),
            delivered_ready: Notify::new(),
            connected: AtomicBool::new(false),
            failures: failures_tx.clone(),
        };
        let mut producer = match task.producer(&make_context, &reader).await {
            Some(p) => p,
            None => return reader.report(),
        };
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        let mut acks = Vec::new();
        loop {
            if task.ack_delivered(&producer, &reader, &mut acks) > 0 {
                task.backoff.reset();
                task.timed_out = false;
                task.last_progress = tokio::time::Instant::now();
            }
            if reader.is_aborted() {
                break;
            }
            let in_flight = producer.context().in_flight.load(Ordering::SeqCst);
            if reader.is_finished() && in_flight == 0 {
                break;
            }
            let paused = task
                .pause_until
                .is_some_and(|t| tokio::time::Instant::now() < t);
            if !paused {
                task.pause_until = None;
                task.fill(&producer, &mut reader, self.max_in_flight).await;
            }
            let in_flight = producer.context().in_flight.load(Ordering::SeqCst);
            let room = in_flight < self.max_in_flight && !paused;
            let room_again = producer.context().room.notified();
            let delivered = producer.context().delivered_ready.notified();
            let resume_at = task.pause_until.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                Some(first) = failures.recv() => {
                    let mut batch = vec![first];
                    while let Ok(more) = failures.try_recv() {
                        batch.push(more);
                    }
                    task.on_failures(batch, &reader);
                }
                () = room_again, if in_flight >= self.max_in_flight => {}
                () = delivered => {}
                () = reader.readable(), if room && !reader.is_closed() => {}
                () = tokio::time::sleep_until(resume_at), if paused => {}
                () = reader.done() => {}
                () = reader.aborted() => break,
                _ = housekeeping.tick() => {
                    let problem = match producer.client().fatal_error() {
                        Some((code, reason)) => Some(("fatal", format!("{code:?}: {reason}"))),
                        // Attempts keep timing out although librdkafka holds a connection: a
                        // broker restarted without its state no longer knows this idempotent
                        // producer. A new producer (new producer id) gets going again.
                        None if task.timed_out && task.last_progress.elapsed() > self.message_timeout * 2 => {
                            Some(("stalled", "no delivery for two message timeouts".to_owned()))
                        }
                        None => None,
                    };
                    if let Some((kind, reason)) = problem {
                        emit(&metrics, ConnectionFailed {
                            sink, endpoint: &self.endpoint, kind,
                            error: &format_args!("{reason}; re-creating the producer"),
                            retry_in: None,
                        });
                        // Hand every in-flight record back (purge reports them as failures).
                        producer.purge(PurgeConfig::default().queue().inflight());
                        let drained = eventually_zero(&producer.context().in_flight, PURGE_WAIT);
                        tokio::select! {
                            () = drained => {}
                            () = reader.aborted() => break,
                        }
                        // Delivered before the purge: acknowledge before the old producer goes.
                        task.ack_delivered(&producer, &reader, &mut acks);
                        producer = match task.producer(&make_context, &reader).await {
                            Some(p) => p,
                            None => break,
                        };
                        task.timed_out = false;
                        task.last_progress = tokio::time::Instant::now();
                    }
                }
            }
        }
        if reader.is_aborted() {
            // Deadline passed: whatever librdkafka still holds stays undelivered.
            producer.purge(PurgeConfig::default().queue().inflight());
        }
        task.ack_delivered(&producer, &reader, &mut acks);
        drop(producer);
        while let Ok(failure) = failures.try_recv() {
            reader.requeue(failure.claim);
        }
        reader.report()
    }
}

impl Task {
    /// Acknowledges what librdkafka reported delivered; returns how many.
    fn ack_delivered(
        &mut self,
        producer: &Producer_,
        reader: &BufferReader,
        acks: &mut Vec<Claim>,
    ) -> usize {
        let delivered = {
            let mut queue = producer
                .context()
                .delivered
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *queue)
        };
        let n = delivered.len();
        acks.extend(delivered.into_iter().map(|claim| *claim));
        reader.ack_many(acks);
        n
    }

    /// Creates the producer, retrying with back-off until it works or the deadline passes.
    async fn producer(
        &mut self,
        make_context: &(dyn Fn() -> Context + Sync),
        reader: &BufferReader,
    ) -> Option<Producer_> {
        loop {
            match self.client_config.create_with_context(make_context()) {
                Ok(producer) => return Some(producer),
                Err(error) => {
                    let retry_in = self.backoff.next_delay();
                    emit(
                        &self.metrics,
                        ConnectionFailed {
                            sink: self.sink,
                            endpoint: &self.endpoint,
                            kind: "config",
                            error: &error,
                            retry_in: Some(retry_in),
                        },
                    );
                    sleep_unless_aborted(reader, retry_in).await;
                    if reader.is_aborted() {
                        return None;
                    }
                }
            }
        }
    }

    async fn fill(
        &mut self,
        producer: &Producer_,
        reader: &mut BufferReader,
        max_in_flight: usize,
    ) {
        let mut batch = Vec::new();
        let room =
            max_in_flight.saturating_sub(producer.context().in_flight.load(Ordering::SeqCst));
        reader.try_recv_many(room.min(FILL_BATCH), &mut batch);
        let mut claims = batch.into_iter();
        while let Some(claim) = claims.next() {
            let record = claim.record();
            // Records come in runs of one topic: check each new one once.
            if self.last_valid_topic != record.topic {
                if let Err(e) = check_kafka_topic(&record.topic) {
                    reader.reject_because(claim, "invalid_topic", &e);
                    continue;
                }
                self.last_valid_topic.clone_from(&record.topic);
            }
            if self.create_topics.enabled && !self.known_topics.contains(&record.topic) {
                let topic = record.topic.clone();
                let ensured = tokio::select! {
                    r = self.ensure_topic(&topic) => r,
                    () = reader.aborted() => Err("drain deadline passed".to_owned()),
                };
                if let Err(error) = ensured {
                    reader.retry_because(claim, "create_topic", &error);
                    self.pause(true);
                    claims.for_each(|c| reader.requeue(c));
                    return;
                }
            }
            // librdkafka copies topic, key and payload: lend them from here, and keep them out
            // of the claim that travels to (and is freed on) librdkafka's thread. A failed
            // delivery puts them back from the returned message.
            let mut claim = claim;
            let headers = kafka_headers(claim.record());
            let timestamp = claim.record().headers.received_at_ms;
            let record = claim.record_mut();
            let topic = std::mem::take(&mut record.topic);
            let key = record.key.take();
            let payload = std::mem::take(&mut record.payload);
            let mut base = BaseRecord::with_opaque_to(&topic, Box::new(claim))
                .payload(payload.as_ref())
                .headers(headers)
                .timestamp(timestamp);
            if let Some(key) = key.as_deref() {
                base = base.key(key.as_bytes());
            }
            producer.context().in_flight.fetch_add(1, Ordering::SeqCst);
            if let Err((error, base)) = producer.send(base) {
                producer.context().in_flight.fetch_sub(1, Ordering::SeqCst);
                let mut claim = *base.delivery_opaque;
                let record = claim.record_mut();
                (record.topic, record.key, record.payload) = (topic, key, payload);
                match verdict(error.rdkafka_error_code()) {
                    Verdict::Reject(reason) => reader.reject_because(claim, reason, &error),
                    _ => {
                        // Queue full or a transient local error: wait for deliveries.
                        reader.requeue(claim);
                        claims.for_each(|c| reader.requeue(c));
                        self.pause_until =
                            Some(tokio::time::Instant::now() + Duration::from_millis(10));
                        return;
                    }
                }
            }
        }
    }

    async fn ensure_topic(&mut self, topic: &str) -> Result<(), String> {
        if self.admin.is_none() {
            let admin = self
                .client_config
                .create::<AdminClient<DefaultClientContext>>()
                .map_err(|e| e.to_string())?;
            self.admin = Some(admin);
        }
        let Some(admin) = &self.admin else {
            return Err("no admin client".into());
        };
        let new = NewTopic::new(
            topic,
            self.create_topics.partitions,
            TopicReplication::Fixed(self.create_topics.replication_factor),
        );
        let options = AdminOptions::new()
            .operation_timeout(Some(ADMIN_TIMEOUT))
            .request_timeout(Some(ADMIN_TIMEOUT));
        let results = admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| e.to_string())?;
        for result in results {
            let existed = match result {
                Ok(_) => false,
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => true,
                Err((name, code)) => return Err(format!("creating topic {name}: {code}")),
            };
            emit(
                &self.metrics,
                TopicCreated {
                    sink: self.sink,
                    topic,
                    existed,
                },
            );
        }
        self.known_topics.insert(topic.to_owned());
        Ok(())
    }

    /// Pauses sending after failures; the back-off grows once per pause, not per failure.
    fn pause(&mut self, failed: bool) {
        let now = tokio::time::Instant::now();
        if failed && self.pause_until.is_none_or(|t| t <= now) {
            self.pause_until = Some(now + self.backoff.next_delay());
        }
    }

    fn on_failures(&mut self, batch: Vec<Failure>, reader: &BufferReader) {
        let mut retried = 0;
        for failure in batch {
            let reason = match verdict(failure.code) {
                Verdict::Reject(reason) => {
                    reader.reject_because(failure.claim, reason, &failure.error);
                    continue;
                }
                Verdict::MissingTopic => "unknown_topic",
                Verdict::Retry(reason) => reason,
            };
            self.timed_out |= reason == "timeout";
            // A missing topic, or a broker that lost its data (restarted empty) and with it the
            // topic: ensure it again before the next attempt.
            self.known_topics.remove(&failure.claim.record().topic);
            retried += 1;
            reader.retry_because(failure.claim, reason, &failure.error);
        }
        emit(
            &self.metrics,
            RecordsRedelivered {
                sink: self.sink,
                count: retried,
                cause: "delivery failed",
            },
        );
        self.pause(retried > 0);
    }
}

/// The Kafka headers of a record: `event`, `account_id` (absent value when unknown) and
/// `received_at` (Unix ms).
pub fn kafka_headers(record: &Record) -> OwnedHeaders {
    let (mut account_buf, mut received_buf) = ([0u8; 24], [0u8; 24]);
    let account = record
        .headers
        .account_id
        .map(|a| decimal(a, &mut account_buf));
    let received_at = decimal(record.headers.received_at_ms, &mut received_buf);
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: "event",
            value: Some(record.headers.event.as_bytes()),
        })
        .insert(Header {
            key: "account_id",
            value: account,
        })
        .insert(Header {
            key: "received_at",
            value: Some(received_at),
        })
}

/// Formats `n` in decimal into `buf` without allocating.
fn decimal(n: impl std::fmt::Display, buf: &mut [u8; 24]) -> &[u8] {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 24 bytes hold any u64 or i64.
    let _ = write!(cursor, "{n}");
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    &buf[..len]
}

/// Waits until `counter` is zero, at most `limit`.
async fn eventually_zero(counter: &AtomicUsize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while counter.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        use RDKafkaErrorCode as C;
        assert_eq!(
            verdict(Some(C::MessageSizeTooLarge)),
            Verdict::Reject("too_large")
        );
        assert_eq!(
            verdict(Some(C::UnknownTopicOrPartition)),
            Verdict::MissingTopic
        );
        assert_eq!(verdict(Some(C::MessageTimedOut)), Verdict::Retry("timeout"));
        assert_eq!(verdict(None), Verdict::Retry("broker"));
    }
}
