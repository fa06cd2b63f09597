//! The MQTT sink's running task: hands records to rumqttc within the in-flight window, feeds
//! what rumqttc reports to the [`Tracker`] and applies its answers to the buffer.
//!
//! A record is acknowledged to the buffer only on its own PUBACK / PUBCOMP (QoS 0: once
//! written); see [`super::tracker`] for how packet ids are tied to records, reconnects and
//! records the broker refuses. The rumqttc side (MQTT 3.1.1 or 5) is behind [`Wire`]. The event
//! loop's `poll` future is never cancelled while records are in flight, so the correspondence
//! between requests and packet ids cannot slip.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::config::{parse_url, EventPatterns, MqttConfig, Protocol, DEFAULT_CLIENT_ID};
use super::tracker::{Action, Item, Tracker};
use super::v5::PropertyRules;
use super::wire::{BrokerLimits, Happened, Outgoing, Publisher, Wire, WireError, V4, V5};
use crate::backoff::{Backoff, ReconnectConfig};
use crate::buffer::{BufferReader, Claim};
use crate::cloudevents::CloudEvents;
use crate::sink::sleep_unless_aborted;
use crate::telemetry::{emit, ConnectionFailed, RecordsRedelivered, SinkConnected};
use crate::topic::{check_mqtt_topic, with_instance};
use crate::{DrainReport, Sink, SinkError, SinkMetrics};

/// How long a clean shutdown waits for the `offline` status to be acknowledged.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Room in rumqttc's request channel beyond the in-flight window (status messages).
const CHANNEL_SLACK: usize = 8;

/// The MQTT sink (rumqttc; MQTT 3.1.1 or 5).
pub struct MqttSink {
    client: ClientOptions,
    connect_timeout_secs: u64,
    tcp_nodelay: bool,
    endpoint: String,
    qos: u8,
    retain: EventPatterns,
    window: usize,
    max_packet: usize,
    reconnect: ReconnectConfig,
    status: Option<Status>,
}

enum ClientOptions {
    V4(Box<rumqttc::MqttOptions>),
    V5(Box<rumqttc::v5::MqttOptions>, PropertyRules),
}

#[derive(Debug, Clone)]
struct Status {
    topic: String,
    online: Bytes,
    offline: Bytes,
}

impl MqttSink {
    /// Builds the sink from a validated configuration; `instance` fills `{instance}` in the
    /// client id and status topic. Reads the password and TLS files now.
    pub fn new(config: &MqttConfig, instance: &str) -> Result<Self, SinkError> {
        config.validate()?;
        let endpoint = parse_url(&config.url)?;
        let client_id = with_instance(
            config.client_id.as_deref().unwrap_or(DEFAULT_CLIENT_ID),
            instance,
        );
        let credentials = match &config.username {
            Some(username) => {
                let password = match &config.password {
                    Some(secret) => secret
                        .resolve()
                        .map_err(|source| SinkError::Secret {
                            key: "sink.password".into(),
                            source,
                        })?
                        .expose()
                        .to_owned(),
                    None => String::new(),
                };
                Some((username.clone(), password))
            }
            None => None,
        };
        let transport = if endpoint.tls {
            let tls = super::tls::client_config(&config.tls)?;
            Some(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ))
        } else {
            None
        };
        let status = config.status.enabled.then(|| Status {
            topic: with_instance(&config.status.topic, instance),
            online: Bytes::from(config.status.online.clone()),
            offline: Bytes::from(config.status.offline.clone()),
        });
        if let Some(status) = &status {
            check_mqtt_topic(&status.topic)
                .map_err(|e| crate::ConfigError::new("sink.status.topic", e.to_string()))?;
        }
        let keep_alive = Duration::from_secs(config.keep_alive_secs);
        let client = match config.protocol {
            Protocol::V311 => {
                let mut options =
                    rumqttc::MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
                options
                    .set_keep_alive(keep_alive)
                    .set_clean_session(config.clean_session)
                    .set_inflight(config.inflight)
                    .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
                if let Some((user, password)) = credentials {
                    options.set_credentials(user, password);
                }
                if let Some(transport) = transport {
                    options.set_transport(transport);
                }
                if let Some(status) = &status {
                    options.set_last_will(rumqttc::LastWill::new(
                        status.topic.clone(),
                        status.offline.clone(),
                        rumqttc::QoS::AtLeastOnce,
                        true,
                    ));
                }
                ClientOptions::V4(Box::new(options))
            }
            Protocol::V5 => {
                let mut options =
                    rumqttc::v5::MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
                options
                    .set_keep_alive(keep_alive)
                    .set_clean_start(config.clean_session)
                    .set_session_expiry_interval(
                        (!config.clean_session).then_some(config.session_expiry_secs),
                    )
                    .set_outgoing_inflight_upper_limit(config.inflight)
                    .set_max_packet_size(Some(
                        u32::try_from(config.max_packet_bytes).unwrap_or(u32::MAX),
                    ));
                if let Some((user, password)) = credentials {
                    options.set_credentials(user, password);
                }
                if let Some(transport) = transport {
                    options.set_transport(transport);
                }
                if let Some(status) = &status {
                    options.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                        status.topic.clone(),
                        status.offline.to_vec(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        true,
                        None,
                    ));
                }
                ClientOptions::V5(Box::new(options), PropertyRules::new(config))
            }
        };
        Ok(MqttSink {
            client,
            connect_timeout_secs: config.connect_timeout_secs,
            tcp_nodelay: config.tcp_nodelay,
            endpoint: endpoint.to_string(),
            qos: config.qos,
            retain: EventPatterns::new(&config.retain),
            window: usize::from(config.inflight),
            max_packet: config.max_packet_bytes,
            reconnect: config.reconnect.clone(),
            status,
        })
    }
}

impl MqttSink {
    /// CloudEvents (`[route] payload = "cloudevents"`): over MQTT 5 the attributes travel as
    /// user properties (binary mode); over 3.1.1 the payload is already the structured event.
    pub fn with_cloudevents(mut self, cloudevents: CloudEvents) -> Self {
        if let ClientOptions::V5(_, rules) = &mut self.client {
            rules.cloudevents = Some(cloudevents);
        }
        self
    }
}

impl Sink for MqttSink {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn uses_key(&self) -> bool {
        false
    }

    fn run(self: Box<Self>, reader: BufferReader) -> BoxFuture<'static, DrainReport> {
        let MqttSink {
            client,
            connect_timeout_secs,
            tcp_nodelay,
            endpoint,
            qos,
            retain,
            window,
            max_packet,
            reconnect,
            status,
        } = *self;
        let cap = window + CHANNEL_SLACK;
        let settings = Settings {
            endpoint,
            reconnect,
            status,
            qos,
            retain,
            window,
            max_packet,
        };
        match client {
            ClientOptions::V4(options) => {
                let (client, wire) = V4::new(*options, cap, connect_timeout_secs, tcp_nodelay);
                Box::pin(run_loop(client, wire, settings, reader))
            }
            ClientOptions::V5(options, rules) => {
                let (client, wire) =
                    V5::new(*options, cap, connect_timeout_secs, tcp_nodelay, rules);
                Box::pin(run_loop(client, wire, settings, reader))
            }
        }
    }
}

struct Settings {
    endpoint: String,
    reconnect: ReconnectConfig,
    status: Option<Status>,
    qos: u8,
    retain: EventPatterns,
    window: usize,
    max_packet: usize,
}

/// Applies the tracker's answers: the buffer claims of the records in flight live here.
struct Adapter<C: Publisher> {
    client: C,
    tracker: Tracker,
    /// Claims of the records handed over, by buffer seq.
    claims: HashMap<u64, Claim>,
    /// Reused buffer for claims taken from the buffer.
    batch: Vec<Claim>,
    qos: u8,
    retain: EventPatterns,
    /// The largest packet sent: the configured limit, lowered by an MQTT 5 broker's own.
    max_packet: usize,
    /// The highest QoS an MQTT 5 broker accepts (CONNACK), if it said.
    broker_max_qos: Option<u8>,
    /// False when an MQTT 5 broker said it keeps no retained messages (a retained publish
    /// would be refused): publish without the flag.
    retain_available: bool,
    offline_acked: bool,
}

impl<C: Publisher> Adapter<C> {
    /// Hands queued records to rumqttc while the tracker has room.
    fn fill(&mut self, reader: &mut BufferReader) {
        let mut batch = std::mem::take(&mut self.batch);
        reader.try_recv_many(self.tracker.room(), &mut batch);
        let qos = self
            .broker_max_qos
            .map_or(self.qos, |max| self.qos.min(max));
        let mut claims = batch.drain(..);
        for claim in claims.by_ref() {
            let record = claim.record();
            let size = self.client.publish_size(record);
            let problem = match check_mqtt_topic(&record.topic) {
                Err(e) => Some(("invalid_topic", e.to_string())),
                Ok(()) if size > self.max_packet => Some((
                    "too_large",
                    format!(
                        "a {size}-byte publish exceeds the largest packet allowed ({} bytes: \
                         sink.max_packet_bytes or the broker's maximum packet size)",
                        self.max_packet
                    ),
                )),
                Ok(()) => None,
            };
            if let Some((reason, error)) = problem {
                reader.reject_because(claim, reason, &error);
                continue;
            }
            let sent = self.client.publish(Outgoing {
                topic: &record.topic,
                qos,
                retain: self.retain_available && self.retain.retains(&record.headers.event),
                payload: record.payload.clone(),
                record: Some(record),
            });
            if !sent {
                // The request channel is full (cannot happen within the window) or closed.
                reader.requeue(claim);
                claims.by_ref().for_each(|c| reader.requeue(c));
                break;
            }
            self.tracker.handed_over(Item::Record(claim.seq()));
            self.claims.insert(claim.seq(), claim);
        }
        drop(claims);
        self.batch = batch;
    }

    fn send_status(&mut self, status: &Status, online: bool) {
        let payload = if online {
            &status.online
        } else {
            &status.offline
        };
        let sent = self.client.publish(Outgoing {
            topic: &status.topic,
            qos: 1,
            retain: self.retain_available,
            payload: payload.clone(),
            record: None,
        });
        if sent {
            self.tracker.handed_over(Item::Status(online));
        }
    }

    /// Feeds one happening (CONNACK is handled by the caller).
    fn feed(&mut self, happened: Happened, reader: &BufferReader) {
        match happened {
            Happened::Written(pkid) => self.tracker.written(pkid, Instant::now()),
            Happened::Collided(pkid) => self.tracker.collided(pkid),
            Happened::Acked {
                kind,
                pkid,
                refused,
            } => self.tracker.acked(kind, pkid, refused),
            Happened::ConnAck { .. } | Happened::Disconnected | Happened::Other => {}
        }
        self.apply(reader);
    }

    /// Applies the tracker's actions to the buffer.
    fn apply(&mut self, reader: &BufferReader) {
        while let Some(action) = self.tracker.poll_action() {
            let seq = match action {
                Action::OfflineAcked => {
                    self.offline_acked = true;
                    continue;
                }
                Action::Ack(seq) | Action::Requeue(seq) | Action::Reject(seq, _) => seq,
            };
            let Some(claim) = self.claims.remove(&seq) else {
                tracing::error!(seq, ?action, "mqtt: no claim for the tracker's action");
                continue;
            };
            match action {
                Action::Ack(_) => reader.ack(claim),
                Action::Requeue(_) => reader.requeue(claim),
                Action::Reject(_, why) => {
                    let record = claim.record();
                    let error = format!(
                        "{} bytes of topic and payload: {why}",
                        record.topic.len() + record.payload.len()
                    );
                    reader.reject_because(claim, why.as_str(), &error);
                }
                Action::OfflineAcked => {}
            }
        }
    }

    /// CONNACK.
    fn connected(
        &mut self,
        wire: &mut impl Wire,
        session_present: bool,
        limits: BrokerLimits,
        settings: &Settings,
        reader: &BufferReader,
    ) -> super::tracker::Reconnected {
        if !session_present {
            wire.forget_session();
        }
        let BrokerLimits {
            max_packet,
            max_qos,
            retain_available,
        } = limits;
        self.max_packet = max_packet.map_or(settings.max_packet, |broker| {
            settings.max_packet.min(broker as usize)
        });
        if max_qos.is_some_and(|max| max < settings.qos) {
            tracing::warn!(
                configured = settings.qos,
                broker = max_qos,
                "mqtt: the broker accepts a lower QoS than configured; publishing at its maximum"
            );
        }
        self.broker_max_qos = max_qos;
        if !retain_available && self.retain_available {
            tracing::warn!(
                "mqtt: the broker keeps no retained messages; publishing without retain"
            );
        }
        self.retain_available = retain_available;
        let reconnected = self.tracker.connected(session_present, &wire.pending());
        self.apply(reader);
        reconnected
    }

    /// A connection error: take the events rumqttc generated before failing (a publish
    /// numbered and written but not flushed, acks read in the same batch), then let the tracker
    /// plan rumqttc's re-send queue.
    fn disconnected(&mut self, wire: &mut impl Wire, reader: &BufferReader) {
        for happened in wire.buffered() {
            self.feed(happened, reader);
        }
        let plan = self
            .tracker
            .connection_lost(&wire.pending(), Instant::now());
        wire.replan(&plan);
        self.apply(reader);
    }
}

/// The sink task: until the buffer is drained (or aborted) and the `offline` status is
/// acknowledged, get ready for the next turn, wait for what happens next and act on it.
async fn run_loop<C: Publisher, W: Wire>(
    client: C,
    wire: W,
    settings: Settings,
    reader: BufferReader,
) -> DrainReport {
    let mut run = Run::new(client, wire, settings, reader);
    loop {
        if run.prepare_turn().is_break() {
            break;
        }
        let next = run.next_happening().await;
        if run.act(next).await.is_break() {
            break;
        }
    }
    run.reader.report()
}

/// What the sink task keeps between turns.
struct Run<C: Publisher, W: Wire> {
    a: Adapter<C>,
    wire: W,
    settings: Settings,
    reader: BufferReader,
    backoff: Backoff,
    metrics: SinkMetrics,
    sink: &'static str,
    /// The `online` status is to be sent (after a CONNACK, once the tracker allows it).
    status_due: bool,
    /// Set when the buffer is drained: how long the `offline` status may take.
    stop_deadline: Option<tokio::time::Instant>,
    /// Our DISCONNECT was handed to rumqttc.
    disconnecting: bool,
}

impl<C: Publisher, W: Wire> Run<C, W> {
    fn new(client: C, wire: W, settings: Settings, reader: BufferReader) -> Self {
        let a = Adapter {
            client,
            tracker: Tracker::new(settings.window),
            claims: HashMap::new(),
            batch: Vec::new(),
            qos: settings.qos,
            retain: settings.retain.clone(),
            max_packet: settings.max_packet,
            broker_max_qos: None,
            retain_available: true,
            offline_acked: false,
        };
        Run {
            a,
            wire,
            backoff: Backoff::new(&settings.reconnect),
            metrics: reader.metrics().clone(),
            sink: reader.sink_label(),
            settings,
            reader,
            status_due: false,
            stop_deadline: None,
            disconnecting: false,
        }
    }

    /// Before waiting: stop when aborted or drained with nothing left to say; otherwise start
    /// the goodbye, disconnect once `offline` is acknowledged, send a due `online` and hand a
    /// held re-send back to rumqttc.
    fn prepare_turn(&mut self) -> ControlFlow<()> {
        if self.reader.is_aborted() {
            return ControlFlow::Break(());
        }
        if self.reader.is_finished() && self.stop_deadline.is_none() {
            // Everything acknowledged: say goodbye (the will is not sent on a clean stop).
            match (&self.settings.status, self.a.tracker.is_connected()) {
                (Some(status), true) => self.a.send_status(status, false),
                _ => return ControlFlow::Break(()),
            }
            self.stop_deadline = Some(tokio::time::Instant::now() + STOP_TIMEOUT);
        }
        if self.a.offline_acked && !self.disconnecting {
            self.disconnecting = self.a.client.disconnect();
        }
        if let (Some(status), true) = (&self.settings.status, self.status_due) {
            if self.a.tracker.may_send_status() {
                self.status_due = false;
                self.a.send_status(status, true);
            }
        }
        if let Some(resend) = self.a.tracker.poll_resend() {
            self.wire.resend(resend);
        }
        ControlFlow::Continue(())
    }

    /// Hands records to rumqttc whenever the buffer has some and the window room, until rumqttc
    /// reports something (`Some`) or the drain, an abort or the stop deadline interrupts
    /// (`None`). The event loop's `poll` stays the same future meanwhile.
    async fn next_happening(&mut self) -> Option<Result<Happened, WireError>> {
        let Run {
            a,
            wire,
            reader,
            stop_deadline,
            ..
        } = self;
        let stop_deadline = *stop_deadline;
        let mut poll = pin!(wire.poll());
        loop {
            if stop_deadline.is_none() {
                a.fill(reader);
            }
            let stop_at = stop_deadline.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                biased;
                happened = &mut poll => return Some(happened),
                () = reader.readable(), if a.tracker.room() > 0 && !reader.is_closed() => {}
                () = reader.done(), if stop_deadline.is_none() && a.tracker.records_outstanding() == 0 => return None,
                () = reader.aborted() => return None,
                () = tokio::time::sleep_until(stop_at), if stop_deadline.is_some() => return None,
            }
        }
    }

    /// Acts on what happened; breaks when the task is done.
    async fn act(&mut self, next: Option<Result<Happened, WireError>>) -> ControlFlow<()> {
        match next {
            None if self
                .stop_deadline
                .is_some_and(|d| tokio::time::Instant::now() >= d) =>
            {
                return ControlFlow::Break(());
            }
            None => {}
            Some(Ok(Happened::ConnAck {
                session_present,
                limits,
            })) => self.connected(session_present, limits),
            Some(Ok(Happened::Disconnected)) if self.disconnecting => {
                return ControlFlow::Break(());
            }
            Some(Ok(happened)) => self.a.feed(happened, &self.reader),
            Some(Err(error)) => return self.connection_failed(error).await,
        }
        ControlFlow::Continue(())
    }

    /// CONNACK: reported, the tracker told, the `online` status due.
    fn connected(&mut self, session_present: bool, limits: BrokerLimits) {
        self.backoff.reset();
        emit(
            &self.metrics,
            SinkConnected {
                sink: self.sink,
                endpoint: &self.settings.endpoint,
                detail: if session_present {
                    "session resumed"
                } else {
                    "new session"
                },
            },
        );
        let reconnected = self.a.connected(
            &mut self.wire,
            session_present,
            limits,
            &self.settings,
            &self.reader,
        );
        emit(
            &self.metrics,
            RecordsRedelivered {
                sink: self.sink,
                count: reconnected.on_wire,
                cause: reconnected.cause(),
            },
        );
        self.status_due = self.settings.status.is_some() && self.stop_deadline.is_none();
    }

    /// A failed connection (or connection attempt): the tracker replans; unless the task is
    /// stopping, reported and retried after the back-off.
    async fn connection_failed(&mut self, error: WireError) -> ControlFlow<()> {
        self.a.disconnected(&mut self.wire, &self.reader);
        if self.disconnecting || self.stop_deadline.is_some() && self.reader.is_finished() {
            return ControlFlow::Break(());
        }
        let retry_in = self.backoff.next_delay();
        emit(
            &self.metrics,
            ConnectionFailed {
                sink: self.sink,
                endpoint: &self.settings.endpoint,
                kind: error.kind,
                error: &error.error,
                retry_in: Some(retry_in),
            },
        );
        sleep_unless_aborted(&self.reader, retry_in).await;
        ControlFlow::Continue(())
    }
}
