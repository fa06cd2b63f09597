//! The Kafka sink's running task: an idempotent librdkafka producer (`acks=all`) whose delivery
//! reports acknowledge records to the buffer.
//!
//! The task keeps every claim handed to librdkafka in a slab ([`InFlight`]); the record travels
//! with its slot number as the delivery opaque, and librdkafka copies topic, key and payload
//! straight from the claim (nothing is moved out, boxed or freed on librdkafka's thread). The
//! delivery callback (on librdkafka's polling thread) only queues slot numbers: successes are
//! acknowledged to the buffer by the task in batches; failures come back to the task, which
//! rejects what can never succeed (invalid topic, too large, forbidden) and requeues the rest —
//! after re-creating the topic when it vanished — so nothing accepted is given up while a broker
//! is away. A claim leaves the slab, and the record the buffer, only on its delivery report.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};

use crate::cloudevents::CloudEvents;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use tokio::sync::{mpsc, Notify};

use super::config::{CreateTopics, KafkaConfig};
use crate::backoff::{Backoff, ReconnectConfig};
use crate::buffer::{BufferReader, Claim};
use crate::sink::sleep_unless_aborted;
use crate::telemetry::{
    emit, ConnectionErrorKind, ConnectionFailed, RecordsRedelivered, SinkConnected, TopicCreated,
};
use crate::topic::{check_kafka_topic, with_instance, DEFAULT_CLIENT_ID};
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

/// Why the sink could not make sure a topic exists (`create_topics`); the record is retried.
#[derive(Debug, thiserror::Error)]
enum EnsureTopicError {
    /// The admin client could not be created, or its request failed.
    #[error("admin request: {0}")]
    Admin(KafkaError),
    /// The broker refused to create the topic.
    #[error("creating topic {topic}: {code}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// The drain deadline passed while waiting for the broker.
    #[error("drain deadline passed")]
    Aborted,
}

/// Admin API operation timeout.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The Kafka sink (rdkafka / librdkafka).
pub struct KafkaSink {
    client_config: ClientConfig,
    endpoint: String,
    max_in_flight: usize,
    message_timeout: Duration,
    create_topics: CreateTopics,
    /// CloudEvents binary mode: `ce_*` and `content-type` headers.
    cloudevents: Option<CloudEvents>,
}

impl KafkaSink {
    /// CloudEvents (`[route] payload = "cloudevents"`): binary mode, the attributes as `ce_*`
    /// headers and `content-type: application/json` beside the data.
    pub fn with_cloudevents(mut self, cloudevents: CloudEvents) -> Self {
        self.cloudevents = Some(cloudevents);
        self
    }

    /// Builds the sink from a validated configuration; reads secret properties now. The
    /// producer itself is created when the sink runs.
    pub fn new(config: &KafkaConfig, instance: &str) -> Result<Self, SinkError> {
        config.validate()?;
        let mut cc = ClientConfig::new();
        super::config::set_default_properties(&mut cc);
        for (key, name, value) in config.all_properties() {
            let value = value
                .resolve()
                .map_err(|source| SinkError::Secret { key, source })?;
            cc.set(name, value.expose());
        }
        let client_id = with_instance(
            config.client_id.as_deref().unwrap_or(DEFAULT_CLIENT_ID),
            instance,
        );
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
            cloudevents: None,
        })
    }
}

/// A failed delivery handed back to the task.
struct Failure {
    /// The claim's slot in [`InFlight`].
    slot: usize,
    code: Option<RDKafkaErrorCode>,
    error: String,
}

/// Delivery reports queued by librdkafka's polling thread for the task, shared by every
/// producer the task creates (and outliving them, for the reports made while one is dropped).
#[derive(Default)]
struct Reports {
    /// Slots of delivered claims, acknowledged by the task in batches.
    delivered: Mutex<Vec<usize>>,
    /// The task may be waiting for the first one.
    ready: Notify,
}

impl Reports {
    /// Swaps the queued slots into `out` (emptied first), keeping both allocations.
    fn take(&self, out: &mut Vec<usize>) {
        out.clear();
        let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *delivered, out);
    }
}

/// Acknowledges delivered claims to the buffer on its own thread: the buffer's bookkeeping, the
/// metrics and freeing the records stay off the task, whose thread feeding librdkafka is the
/// sink's bottleneck. Claims reach it only after their delivery report.
struct AckThread {
    batches: Option<std::sync::mpsc::Sender<Vec<Claim>>>,
    /// Emptied batches coming back, to be reused.
    spare: std::sync::mpsc::Receiver<Vec<Claim>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AckThread {
    fn spawn(reader: &BufferReader) -> Self {
        let (batches, received) = std::sync::mpsc::channel::<Vec<Claim>>();
        let (spare_tx, spare) = std::sync::mpsc::channel();
        let acker = reader.acker();
        let thread = std::thread::Builder::new()
            .name("voxsig-kafka-ack".into())
            .spawn(move || {
                for mut claims in received {
                    acker.ack_many(&mut claims);
                    let _ = spare_tx.send(claims);
                }
            });
        match thread {
            Ok(thread) => AckThread {
                batches: Some(batches),
                spare,
                thread: Some(thread),
            },
            Err(error) => {
                tracing::warn!(%error, "kafka: no acknowledgement thread; acknowledging inline");
                AckThread {
                    batches: None,
                    spare,
                    thread: None,
                }
            }
        }
    }

    /// An empty batch to fill.
    fn batch(&self) -> Vec<Claim> {
        self.spare.try_recv().unwrap_or_default()
    }

    /// Acknowledges `claims` (on the thread, or here when there is none).
    fn ack(&self, mut claims: Vec<Claim>, reader: &BufferReader) {
        if let Some(batches) = &self.batches {
            match batches.send(claims) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(back)) => claims = back,
            }
        }
        reader.ack_many(&mut claims);
    }

    /// Waits until everything sent was acknowledged.
    fn finish(&mut self) {
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The claims handed to librdkafka, by slot; a slot number is a record's delivery opaque.
#[derive(Default)]
struct InFlight {
    slots: Vec<Option<Claim>>,
    free: Vec<usize>,
}

impl InFlight {
    fn insert(&mut self, claim: Claim) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(claim);
                slot
            }
            None => {
                self.slots.push(Some(claim));
                self.slots.len() - 1
            }
        }
    }

    /// Claims held.
    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, slot: usize) -> Option<&Claim> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    fn take(&mut self, slot: usize) -> Option<Claim> {
        let claim = self.slots.get_mut(slot)?.take();
        if claim.is_some() {
            self.free.push(slot);
        }
        claim
    }

    /// Every claim still held (the producer is gone: no report will come for them).
    fn drain(&mut self) -> impl Iterator<Item = Claim> + '_ {
        self.free.clear();
        self.slots.drain(..).flatten()
    }
}

/// Callbacks from librdkafka's threads.
struct Context {
    sink: &'static str,
    endpoint: String,
    metrics: SinkMetrics,
    reports: Arc<Reports>,
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
                ConnectionErrorKind::Auth
            }
            Some(RDKafkaErrorCode::SSL) => ConnectionErrorKind::Tls,
            Some(RDKafkaErrorCode::AllBrokersDown) => ConnectionErrorKind::Broker,
            Some(RDKafkaErrorCode::BrokerTransportFailure) => ConnectionErrorKind::Io,
            _ => ConnectionErrorKind::Broker,
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
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        // Nothing here is touched per record by the task's thread: the task counts what is in
        // flight itself (its slab), so this thread only queues the slot.
        match result {
            Ok(_) => {
                if !self.connected.load(Ordering::Relaxed)
                    && !self.connected.swap(true, Ordering::SeqCst)
                {
                    emit(
                        &self.metrics,
                        SinkConnected {
                            sink: self.sink,
                            endpoint: &self.endpoint,
                            detail: "delivering",
                        },
                    );
                }
                // Acknowledged in batches by the task: this thread only queues the slot.
                let mut delivered = self
                    .reports
                    .delivered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                delivered.push(slot);
                if delivered.len() == 1 {
                    self.reports.ready.notify_one();
                }
            }
            Err((error, _)) => {
                // The claim, record intact, is still in the task's slab. If the task is gone the
                // slab went with it and the buffer reports the record undelivered.
                let _ = self.failures.send(Failure {
                    slot,
                    code: error.rdkafka_error_code(),
                    error: error.to_string(),
                });
            }
        }
    }
}

/// Why a delivery failed: the `reason` label of `voxsig_bridge_sink_records_failed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    TooLarge,
    NotAuthorized,
    InvalidTopic,
    InvalidRecord,
    UnknownTopic,
    Timeout,
    ProducerRestart,
    Broker,
}

impl Failed {
    /// The metrics label.
    fn as_str(self) -> &'static str {
        match self {
            Failed::TooLarge => "too_large",
            Failed::NotAuthorized => "not_authorized",
            Failed::InvalidTopic => "invalid_topic",
            Failed::InvalidRecord => "invalid_record",
            Failed::UnknownTopic => "unknown_topic",
            Failed::Timeout => "timeout",
            Failed::ProducerRestart => "producer_restart",
            Failed::Broker => "broker",
        }
    }
}

/// What to do with a failed delivery.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Never deliverable: leaves the buffer, counted with this reason.
    Reject(Failed),
    /// The topic is missing: create it (when enabled) and try again.
    MissingTopic,
    /// Try again.
    Retry(Failed),
}

fn verdict(code: Option<RDKafkaErrorCode>) -> Verdict {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            Verdict::Reject(Failed::TooLarge)
        }
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => {
            Verdict::Reject(Failed::NotAuthorized)
        }
        Some(C::InvalidTopic) => Verdict::Reject(Failed::InvalidTopic),
        Some(C::InvalidMessage | C::InvalidRecord | C::BadMessage) => {
            Verdict::Reject(Failed::InvalidRecord)
        }
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            Verdict::MissingTopic
        }
        Some(C::MessageTimedOut) => Verdict::Retry(Failed::Timeout),
        Some(C::PurgeQueue | C::PurgeInflight) => Verdict::Retry(Failed::ProducerRestart),
        _ => Verdict::Retry(Failed::Broker),
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
    cloudevents: Option<CloudEvents>,
    /// Records handed to librdkafka and not yet reported, at most.
    max_in_flight: usize,
    /// One attempt's timeout (`message.timeout.ms`).
    message_timeout: Duration,
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
    /// The claims librdkafka holds, by delivery opaque.
    slab: InFlight,
    /// Reused buffers: delivered slots, and claims taken from the buffer.
    delivered: Vec<usize>,
    batch: Vec<Claim>,
    acks: AckThread,
}

/// Makes the callbacks' context of each producer the task creates; every one reports into the
/// same queues.
struct Contexts {
    sink: &'static str,
    endpoint: String,
    metrics: SinkMetrics,
    reports: Arc<Reports>,
    failures: mpsc::UnboundedSender<Failure>,
}

impl Contexts {
    fn make(&self) -> Context {
        Context {
            sink: self.sink,
            endpoint: self.endpoint.clone(),
            metrics: self.metrics.clone(),
            reports: self.reports.clone(),
            connected: AtomicBool::new(false),
            failures: self.failures.clone(),
        }
    }
}

/// What woke the task up.
enum Wake {
    /// A delivery failed (more may be queued behind it).
    Failed(Failure),
    /// Deliveries, records to send, the end of a pause or of the input.
    Ready,
    /// Time to look at the producer's health.
    Housekeeping,
    /// The drain deadline passed.
    Aborted,
}

/// Why the producer is replaced: a metric kind and a description.
type Trouble = (ConnectionErrorKind, String);

impl KafkaSink {
    /// Sends while records come, acknowledging deliveries and handling failures, replacing the
    /// producer when it fails or stalls; then settles what is still in flight.
    async fn run_loop(self: Box<Self>, mut reader: BufferReader) -> DrainReport {
        let mut task = Task::new(&self, &reader);
        let (failures_tx, mut failures) = mpsc::unbounded_channel();
        let reports = Arc::new(Reports::default());
        let contexts = Contexts {
            sink: task.sink,
            endpoint: self.endpoint.clone(),
            metrics: task.metrics.clone(),
            reports: reports.clone(),
            failures: failures_tx,
        };
        let Some(mut producer) = task.producer(&contexts, &reader).await else {
            return reader.report();
        };
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        while task.keep_going(&reports, &reader) {
            let paused = task.send_unless_paused(&producer, &mut reader).await;
            match task
                .wait(&reports, &mut failures, &reader, &mut housekeeping, paused)
                .await
            {
                Wake::Failed(first) => task.on_failures(Some(first), &mut failures, &reader),
                Wake::Ready => {}
                Wake::Aborted => break,
                Wake::Housekeeping => {
                    let Some(trouble) = task.producer_trouble(&producer) else {
                        continue;
                    };
                    let restarted = task
                        .restart(&mut producer, trouble, &contexts, &mut failures, &reader)
                        .await;
                    if !restarted {
                        break;
                    }
                }
            }
        }
        task.finish(producer, &reports, failures, &reader)
    }
}

impl Task {
    fn new(sink: &KafkaSink, reader: &BufferReader) -> Self {
        Task {
            sink: reader.sink_label(),
            metrics: reader.metrics().clone(),
            endpoint: sink.endpoint.clone(),
            client_config: sink.client_config.clone(),
            create_topics: sink.create_topics.clone(),
            cloudevents: sink.cloudevents.clone(),
            max_in_flight: sink.max_in_flight,
            message_timeout: sink.message_timeout,
            admin: None,
            known_topics: HashSet::new(),
            backoff: Backoff::new(&RETRY_BACKOFF),
            pause_until: None,
            last_progress: tokio::time::Instant::now(),
            timed_out: false,
            last_valid_topic: String::new(),
            slab: InFlight::default(),
            delivered: Vec::new(),
            batch: Vec::new(),
            acks: AckThread::spawn(reader),
        }
    }

    /// Acknowledges what was delivered (progress resets the back-off); whether there is more to
    /// do: not past the deadline, and records still coming or in flight.
    fn keep_going(&mut self, reports: &Reports, reader: &BufferReader) -> bool {
        if self.ack_delivered(reports, reader) > 0 {
            self.backoff.reset();
            self.timed_out = false;
            self.last_progress = tokio::time::Instant::now();
        }
        !(reader.is_aborted() || (reader.is_finished() && self.slab.is_empty()))
    }

    /// Hands what the buffer holds to librdkafka unless sending is paused; whether it is.
    async fn send_unless_paused(
        &mut self,
        producer: &Producer_,
        reader: &mut BufferReader,
    ) -> bool {
        let paused = self
            .pause_until
            .is_some_and(|t| tokio::time::Instant::now() < t);
        if !paused {
            self.pause_until = None;
            self.fill(producer, reader).await;
        }
        paused
    }

    /// Waits for something to do. A full window waits for deliveries (or failures), which free
    /// slots; a paused one for the pause to end.
    async fn wait(
        // `&mut`: the task is `Send` but not `Sync`, and this future must be `Send`.
        &mut self,
        reports: &Reports,
        failures: &mut mpsc::UnboundedReceiver<Failure>,
        reader: &BufferReader,
        housekeeping: &mut tokio::time::Interval,
        paused: bool,
    ) -> Wake {
        let room = self.slab.len() < self.max_in_flight && !paused;
        let delivered = reports.ready.notified();
        let resume_at = self.pause_until.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            Some(first) = failures.recv() => Wake::Failed(first),
            () = delivered => Wake::Ready,
            () = reader.readable(), if room && !reader.is_closed() => Wake::Ready,
            () = tokio::time::sleep_until(resume_at), if paused => Wake::Ready,
            () = reader.done() => Wake::Ready,
            () = reader.aborted() => Wake::Aborted,
            _ = housekeeping.tick() => Wake::Housekeeping,
        }
    }

    /// Why the producer must be replaced, if it must: a fatal error, or attempts that keep
    /// timing out although librdkafka holds a connection (a broker restarted without its state
    /// no longer knows this idempotent producer; a new producer id gets going again).
    fn producer_trouble(&self, producer: &Producer_) -> Option<Trouble> {
        match producer.client().fatal_error() {
            Some((code, reason)) => {
                Some((ConnectionErrorKind::Fatal, format!("{code:?}: {reason}")))
            }
            None if self.timed_out && self.last_progress.elapsed() > self.message_timeout * 2 => {
                Some((
                    ConnectionErrorKind::Stalled,
                    "no delivery for two message timeouts".to_owned(),
                ))
            }
            None => None,
        }
    }

    /// Replaces the producer: every in-flight record is handed back (purge reports them as
    /// failures), those delivered before the purge acknowledged and the rest requeued, before
    /// the old producer goes. False when the drain deadline passed meanwhile.
    async fn restart(
        &mut self,
        producer: &mut Producer_,
        (kind, reason): Trouble,
        contexts: &Contexts,
        failures: &mut mpsc::UnboundedReceiver<Failure>,
        reader: &BufferReader,
    ) -> bool {
        emit(
            &self.metrics,
            ConnectionFailed {
                sink: self.sink,
                endpoint: &self.endpoint,
                kind,
                error: &format_args!("{reason}; re-creating the producer"),
                retry_in: None,
            },
        );
        producer.purge(PurgeConfig::default().queue().inflight());
        let drained = self.settle(&contexts.reports, failures, reader, PURGE_WAIT);
        tokio::select! {
            () = drained => {}
            () = reader.aborted() => return false,
        }
        let Some(new) = self.producer(contexts, reader).await else {
            return false;
        };
        *producer = new;
        self.timed_out = false;
        self.last_progress = tokio::time::Instant::now();
        true
    }

    /// The end: past the deadline whatever librdkafka still holds stays undelivered (purged);
    /// what was delivered is acknowledged and everything else requeued, for the report.
    fn finish(
        mut self,
        producer: Producer_,
        reports: &Reports,
        failures: mpsc::UnboundedReceiver<Failure>,
        reader: &BufferReader,
    ) -> DrainReport {
        if reader.is_aborted() {
            producer.purge(PurgeConfig::default().queue().inflight());
        }
        self.ack_delivered(reports, reader);
        // Dropping the producer purges what it holds; reports made meanwhile are queued.
        drop(producer);
        self.ack_delivered(reports, reader);
        self.acks.finish();
        drop(failures);
        for claim in self.slab.drain() {
            reader.requeue(claim);
        }
        reader.report()
    }

    /// After a purge: acknowledges what was delivered and requeues what failed until librdkafka
    /// has reported every claim, at most `limit`.
    async fn settle(
        &mut self,
        reports: &Reports,
        failures: &mut mpsc::UnboundedReceiver<Failure>,
        reader: &BufferReader,
        limit: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.ack_delivered(reports, reader);
            self.on_failures(None, failures, reader);
            if self.slab.is_empty() || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Acknowledges what librdkafka reported delivered; returns how many.
    fn ack_delivered(&mut self, reports: &Reports, reader: &BufferReader) -> usize {
        reports.take(&mut self.delivered);
        if self.delivered.is_empty() {
            return 0;
        }
        let mut claims = self.acks.batch();
        let slab = &mut self.slab;
        claims.extend(self.delivered.iter().filter_map(|&slot| slab.take(slot)));
        let n = claims.len();
        self.acks.ack(claims, reader);
        n
    }

    /// Creates the producer, retrying with back-off until it works or the deadline passes.
    async fn producer(&mut self, contexts: &Contexts, reader: &BufferReader) -> Option<Producer_> {
        loop {
            match self.client_config.create_with_context(contexts.make()) {
                Ok(producer) => return Some(producer),
                Err(error) => {
                    let retry_in = self.backoff.next_delay();
                    emit(
                        &self.metrics,
                        ConnectionFailed {
                            sink: self.sink,
                            endpoint: &self.endpoint,
                            kind: ConnectionErrorKind::Config,
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

    async fn fill(&mut self, producer: &Producer_, reader: &mut BufferReader) {
        let room = self.max_in_flight.saturating_sub(self.slab.len());
        let mut batch = std::mem::take(&mut self.batch);
        reader.try_recv_many(room.min(FILL_BATCH), &mut batch);
        let mut claims = batch.drain(..);
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
                    () = reader.aborted() => Err(EnsureTopicError::Aborted),
                };
                if let Err(error) = ensured {
                    reader.retry_because(claim, "create_topic", &error);
                    self.pause(true);
                    claims.by_ref().for_each(|c| reader.requeue(c));
                    break;
                }
            }
            // The claim waits in the slab; librdkafka copies topic, key and payload from it.
            let slot = self.slab.insert(claim);
            let Some(record) = self.slab.get(slot).map(Claim::record) else {
                continue;
            };
            let mut base = BaseRecord::with_opaque_to(&record.topic, slot)
                .payload(record.payload.as_ref())
                .headers(match &self.cloudevents {
                    Some(ce) => cloudevents_headers(kafka_headers(record), ce, record),
                    None => kafka_headers(record),
                })
                .timestamp(record.headers.received_at_ms);
            if let Some(key) = record.key.as_deref() {
                base = base.key(key.as_bytes());
            }
            if let Err((error, _)) = producer.send(base) {
                let Some(claim) = self.slab.take(slot) else {
                    continue;
                };
                match verdict(error.rdkafka_error_code()) {
                    Verdict::Reject(reason) => {
                        reader.reject_because(claim, reason.as_str(), &error)
                    }
                    _ => {
                        // Queue full or a transient local error: wait for deliveries.
                        reader.requeue(claim);
                        claims.by_ref().for_each(|c| reader.requeue(c));
                        self.pause_until =
                            Some(tokio::time::Instant::now() + Duration::from_millis(10));
                        break;
                    }
                }
            }
        }
        drop(claims);
        self.batch = batch;
    }

    async fn ensure_topic(&mut self, topic: &str) -> Result<(), EnsureTopicError> {
        let admin = match self.admin.take() {
            Some(admin) => admin,
            None => self
                .client_config
                .create::<AdminClient<DefaultClientContext>>()
                .map_err(EnsureTopicError::Admin)?,
        };
        let admin = self.admin.insert(admin);
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
            .map_err(EnsureTopicError::Admin)?;
        for result in results {
            let existed = match result {
                Ok(_) => false,
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => true,
                Err((topic, code)) => return Err(EnsureTopicError::Create { topic, code }),
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

    /// Handles `first` (when given) and every failure queued behind it, as one batch.
    fn on_failures(
        &mut self,
        first: Option<Failure>,
        queued: &mut mpsc::UnboundedReceiver<Failure>,
        reader: &BufferReader,
    ) {
        let batch: Vec<Failure> = first
            .into_iter()
            .chain(std::iter::from_fn(|| queued.try_recv().ok()))
            .collect();
        if batch.is_empty() {
            return;
        }
        let mut retried = 0;
        for failure in batch {
            let Some(claim) = self.slab.take(failure.slot) else {
                continue;
            };
            let reason = match verdict(failure.code) {
                Verdict::Reject(reason) => {
                    reader.reject_because(claim, reason.as_str(), &failure.error);
                    continue;
                }
                Verdict::MissingTopic => Failed::UnknownTopic,
                Verdict::Retry(reason) => reason,
            };
            self.timed_out |= reason == Failed::Timeout;
            // A missing topic, or a broker that lost its data (restarted empty) and with it the
            // topic: ensure it again before the next attempt.
            self.known_topics.remove(&claim.record().topic);
            retried += 1;
            reader.retry_because(claim, reason.as_str(), &failure.error);
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

/// The Kafka headers of a record: `event`, `account_id` (absent value when unknown),
/// `received_at` (Unix ms), `event_id` (when the record has one) and `replayed: 1` (records a
/// catch-up recovered after a gap).
pub fn kafka_headers(record: &Record) -> OwnedHeaders {
    let (mut account_buf, mut received_buf) = ([0u8; 24], [0u8; 24]);
    let account = record
        .headers
        .account_id
        .map(|a| decimal(a, false, &mut account_buf));
    let at = record.headers.received_at_ms;
    let received_at = decimal(at.unsigned_abs(), at < 0, &mut received_buf);
    let mut headers = OwnedHeaders::new_with_capacity(5)
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
        });
    if let Some(id) = &record.headers.event_id {
        headers = id.with_text(|id| {
            headers.insert(Header {
                key: "event_id",
                value: Some(id.as_bytes()),
            })
        });
    }
    if record.headers.replayed {
        headers = headers.insert(Header {
            key: "replayed",
            value: Some(crate::Headers::REPLAYED_VALUE.as_bytes()),
        });
    }
    headers
}

/// CloudEvents Kafka binary mode: `ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_time`
/// and `content-type` added to `headers`.
pub fn cloudevents_headers(
    headers: OwnedHeaders,
    cloudevents: &CloudEvents,
    record: &Record,
) -> OwnedHeaders {
    let attributes = cloudevents.attributes(&record.headers, &record.payload);
    let [specversion, id, source, ty, time] = attributes.pairs();
    let mut headers = headers;
    for (key, (_, value)) in [
        ("ce_specversion", specversion),
        ("ce_id", id),
        ("ce_source", source),
        ("ce_type", ty),
        ("ce_time", time),
        ("content-type", ("", crate::cloudevents::DATA_CONTENT_TYPE)),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}

/// Formats `n` (negated when `negative`) in decimal at the end of `buf`, without `fmt`.
fn decimal(mut n: u64, negative: bool, buf: &mut [u8; 24]) -> &[u8] {
    // 24 bytes hold the 20 digits of any u64 and a sign.
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers as _;

    #[test]
    fn headers_carry_event_id_and_replayed_only_when_set() {
        let mut record = crate::testing::record("t", 1);
        let names = |h: &OwnedHeaders| -> Vec<(String, Vec<u8>)> {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        };
        let plain = names(&kafka_headers(&record));
        assert_eq!(plain.len(), 3);
        record.headers.event_id = Some("msg-9".into());
        record.headers.replayed = true;
        let marked = names(&kafka_headers(&record));
        assert!(marked.contains(&("event_id".into(), b"msg-9".to_vec())));
        assert!(marked.contains(&("replayed".into(), b"1".to_vec())));
    }

    #[test]
    fn decimals() {
        let mut buf = [0u8; 24];
        for (n, negative, text) in [
            (0, false, "0"),
            (7, false, "7"),
            (1_732_000_000_123, false, "1732000000123"),
            (u64::MAX, false, "18446744073709551615"),
            (i64::MIN.unsigned_abs(), true, "-9223372036854775808"),
            (42, true, "-42"),
        ] {
            assert_eq!(decimal(n, negative, &mut buf), text.as_bytes());
        }
    }

    #[test]
    fn nagle_is_off_unless_the_properties_say_otherwise() {
        let mut config = KafkaConfig::new("127.0.0.1:9092");
        let sink = KafkaSink::new(&config, "t").unwrap();
        assert_eq!(sink.client_config.get("socket.nagle.disable"), Some("true"));
        config.properties.insert(
            "socket.nagle.disable".into(),
            crate::Secret::inline("false"),
        );
        let sink = KafkaSink::new(&config, "t").unwrap();
        assert_eq!(
            sink.client_config.get("socket.nagle.disable"),
            Some("false")
        );
    }

    #[test]
    fn verdicts() {
        use RDKafkaErrorCode as C;
        let label = |v: Verdict| match v {
            Verdict::Reject(f) | Verdict::Retry(f) => f.as_str(),
            Verdict::MissingTopic => "missing",
        };
        assert_eq!(
            verdict(Some(C::MessageSizeTooLarge)),
            Verdict::Reject(Failed::TooLarge)
        );
        assert_eq!(label(verdict(Some(C::MessageSizeTooLarge))), "too_large");
        assert_eq!(
            verdict(Some(C::UnknownTopicOrPartition)),
            Verdict::MissingTopic
        );
        assert_eq!(
            verdict(Some(C::MessageTimedOut)),
            Verdict::Retry(Failed::Timeout)
        );
        assert_eq!(label(verdict(Some(C::MessageTimedOut))), "timeout");
        assert_eq!(verdict(None), Verdict::Retry(Failed::Broker));
        assert_eq!(label(verdict(None)), "broker");
        assert_eq!(Failed::UnknownTopic.as_str(), "unknown_topic");
    }
}
