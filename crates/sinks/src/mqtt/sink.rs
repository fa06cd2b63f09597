//! The MQTT sink's running task: publishes records and ties every broker acknowledgement to its
//! record by packet id.
//!
//! rumqttc assigns packet ids inside its event loop and reports them as `Outgoing::Publish(pkid)`
//! in the order requests were handed to it; acknowledgements arrive as `Incoming::PubAck(pkid)`
//! (QoS 1) or `Incoming::PubComp(pkid)` (QoS 2). The [`Tracker`] keeps the records handed over
//! but not yet numbered in a FIFO (`unassigned`), and the numbered ones by packet id
//! (`by_pkid`). A record is acknowledged to the buffer only on its own PUBACK/PUBCOMP (QoS 0:
//! once written to the socket).
//!
//! Reconnects: with a persistent session rumqttc re-sends unacknowledged publishes itself. When
//! the broker answers CONNACK with `session_present = false` (a broker restarted without
//! persistence, or `clean_session = true`), rumqttc drops them: the tracker then hands every
//! unacknowledged record back to the buffer to be published again (counted as redeliveries).
//! The event loop's `poll` future is never cancelled while records are in flight, so the
//! correspondence between requests and packet ids cannot slip.
//!
//! A record the broker refuses by closing the connection (mosquitto's `max_packet_size`) is
//! isolated and rejected after a few losses instead of wedging the sink: see
//! `Tracker::on_connection_lost`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, QoS, Request, Transport,
};

use super::config::{parse_url, MqttConfig, RetainMatcher, DEFAULT_CLIENT_ID};
use crate::backoff::{Backoff, ReconnectConfig};
use crate::buffer::{BufferReader, Claim};
use crate::jsonl::sleep_unless_aborted;
use crate::telemetry::{emit, ConnectionFailed, RecordsRedelivered, SinkConnected};
use crate::topic::check_mqtt_topic;
use crate::{DrainReport, Sink, SinkError, SinkMetrics};

/// How long a clean shutdown waits for the `offline` status to be acknowledged.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Room in rumqttc's request channel beyond the in-flight window (status messages).
const CHANNEL_SLACK: usize = 8;
/// MQTT fixed header + topic length prefix + packet id, at most.
const PUBLISH_OVERHEAD: usize = 9;
/// A record is refused by the broker (rejected, `reason="refused_by_broker"`) when this many
/// established connections in a row were lost while it was the first unacknowledged publish
/// written on them, each within [`POISON_WINDOW`] of writing it.
const POISON_STRIKES: u32 = 3;
/// "Right after it was sent": how soon after a record was written a connection loss counts
/// against it.
const POISON_WINDOW: Duration = Duration::from_secs(5);

/// The MQTT sink (rumqttc, MQTT 3.1.1).
pub struct MqttSink {
    options: MqttOptions,
    connect_timeout_secs: u64,
    endpoint: String,
    qos: QoS,
    retain: RetainMatcher,
    window: usize,
    max_packet: usize,
    reconnect: ReconnectConfig,
    status: Option<Status>,
}

#[derive(Debug, Clone)]
struct Status {
    topic: String,
    online: Bytes,
    offline: Bytes,
}

fn qos_of(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

impl MqttSink {
    /// Builds the sink from a validated configuration; `instance` fills `{instance}` in the
    /// client id and status topic. Reads the password and TLS files now.
    pub fn new(config: &MqttConfig, instance: &str) -> Result<Self, SinkError> {
        config.validate()?;
        let endpoint = parse_url(&config.url)?;
        let client_id = config
            .client_id
            .as_deref()
            .unwrap_or(DEFAULT_CLIENT_ID)
            .replace("{instance}", instance);
        let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
        options
            .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
            .set_clean_session(config.clean_session)
            .set_inflight(config.inflight)
            .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
        if let Some(username) = &config.username {
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
            options.set_credentials(username.clone(), password);
        }
        if endpoint.tls {
            let tls = super::tls::client_config(&config.tls)?;
            options.set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let status = config.status.enabled.then(|| Status {
            topic: config.status.topic.replace("{instance}", instance),
            online: Bytes::from(config.status.online.clone()),
            offline: Bytes::from(config.status.offline.clone()),
        });
        if let Some(status) = &status {
            check_mqtt_topic(&status.topic)
                .map_err(|e| crate::ConfigError::new("sink.status.topic", e.to_string()))?;
            options.set_last_will(LastWill::new(
                status.topic.clone(),
                status.offline.clone(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        Ok(MqttSink {
            options,
            connect_timeout_secs: config.connect_timeout_secs,
            endpoint: endpoint.to_string(),
            qos: qos_of(config.qos),
            retain: RetainMatcher::new(&config.retain),
            window: usize::from(config.inflight),
            max_packet: config.max_packet_bytes,
            reconnect: config.reconnect.clone(),
            status,
        })
    }
}

/// What a packet id stands for.
// Nearly every slot is a record: boxing it would add an allocation per publish to save the
// bytes of the rare status slot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Slot {
    Record(Claim),
    /// A status message; `true` for `online`.
    Status(bool),
}

/// A numbered publish awaiting its acknowledgement.
#[derive(Debug)]
struct Numbered {
    slot: Slot,
    written: Written,
}

/// When a numbered publish was last written to the socket.
#[derive(Debug, Clone, Copy)]
struct Written {
    /// The connection (counted by CONNACK) it was written on.
    connection: u64,
    /// Write order on the wire.
    order: u64,
    at: Instant,
}

/// Ties rumqttc's packet ids to records. See the module documentation.
struct Tracker {
    sink: &'static str,
    metrics: SinkMetrics,
    qos: QoS,
    window: usize,
    max_packet: usize,
    retain: RetainMatcher,
    /// Handed to rumqttc, no packet id yet, in hand-over order.
    unassigned: VecDeque<Slot>,
    /// How many of `unassigned` (from the front) sit in rumqttc's `pending` queue after a
    /// connection error (the rest are still in its request channel).
    in_pending: usize,
    /// Numbered, awaiting PUBACK / PUBCOMP, oldest first. rumqttc may hand a QoS 2 packet id
    /// out again once PUBREC arrived, before PUBCOMP: the broker's answers come in order, so
    /// the front of the queue is the one an acknowledgement is for.
    by_pkid: HashMap<u16, VecDeque<Numbered>>,
    /// Packet ids rumqttc is about to re-send after resuming a session.
    resends: HashSet<u16>,
    /// A publish rumqttc holds back because its packet id collided with an unacknowledged one.
    collided: Option<(u16, Slot)>,
    records_outstanding: usize,
    connected: bool,
    offline_acked: bool,
    /// Reused buffer for claims taken from the buffer.
    batch: Vec<Claim>,
    /// Connections established so far (CONNACKs).
    connection: u64,
    /// Publishes written so far (wire order).
    writes: u64,
    /// The record (by buffer seq) suspected of making the broker close the connection, and on
    /// how many consecutive connection losses it was the suspect.
    suspect: Option<(u64, u32)>,
    /// Records still to settle one at a time after a loss right after publishing (0: not
    /// isolating). See [`Tracker::on_connection_lost`].
    isolating: usize,
    /// Numbered re-sends held back while isolating, fed to rumqttc one at a time.
    held: VecDeque<Request>,
    /// The packet id of the held re-send handed to rumqttc and not yet acknowledged.
    fed: Option<u16>,
    /// The `online` status waits until no re-send is held (a new publish could otherwise be
    /// numbered with a held one's packet id).
    status_due: bool,
}

impl Tracker {
    /// How many more records may be handed to rumqttc.
    fn room(&self) -> usize {
        if self.isolating == 0 && self.held.is_empty() && self.fed.is_none() {
            self.window - self.records_outstanding
        } else if self.held.is_empty() && self.fed.is_none() {
            1usize.saturating_sub(self.records_outstanding)
        } else {
            0
        }
    }

    fn has_room(&self) -> bool {
        self.room() > 0
    }

    /// Hands queued records to rumqttc while the in-flight window has room.
    fn fill(&mut self, client: &AsyncClient, reader: &mut BufferReader) {
        let mut batch = std::mem::take(&mut self.batch);
        reader.try_recv_many(self.room(), &mut batch);
        let mut claims = batch.drain(..);
        for claim in claims.by_ref() {
            let record = claim.record();
            let problem = match check_mqtt_topic(&record.topic) {
                Err(e) => Some(("invalid_topic", e.to_string())),
                Ok(())
                    if record.topic.len() + record.payload.len() + PUBLISH_OVERHEAD
                        > self.max_packet =>
                {
                    Some((
                        "too_large",
                        format!(
                            "{} bytes of topic and payload exceed sink.max_packet_bytes = {}",
                            record.topic.len() + record.payload.len(),
                            self.max_packet
                        ),
                    ))
                }
                Ok(()) => None,
            };
            if let Some((reason, error)) = problem {
                reader.reject_because(claim, reason, &error);
                continue;
            }
            let retain = self.retain.retains(&record.headers.event);
            let sent = client
                .publish_bytes(
                    record.topic.clone(),
                    self.qos,
                    retain,
                    record.payload.clone(),
                )
                .now_or_never();
            if !matches!(sent, Some(Ok(()))) {
                // The request channel is full (cannot happen within the window) or closed.
                reader.requeue(claim);
                claims.by_ref().for_each(|c| reader.requeue(c));
                break;
            }
            self.unassigned.push_back(Slot::Record(claim));
            self.records_outstanding += 1;
        }
        drop(claims);
        self.batch = batch;
    }

    fn send_status(&mut self, client: &AsyncClient, status: &Status, online: bool) {
        let payload = if online {
            &status.online
        } else {
            &status.offline
        };
        let sent = client
            .publish_bytes(
                status.topic.clone(),
                QoS::AtLeastOnce,
                true,
                payload.clone(),
            )
            .now_or_never();
        if matches!(sent, Some(Ok(()))) {
            self.unassigned.push_back(Slot::Status(online));
        }
    }

    fn written(&mut self) -> Written {
        self.writes += 1;
        Written {
            connection: self.connection,
            order: self.writes,
            at: Instant::now(),
        }
    }

    /// `Outgoing::Publish(pkid)`: a publish was written to the socket.
    fn on_sent(&mut self, pkid: u16, reader: &BufferReader) {
        if pkid != 0 {
            if matches!(&self.collided, Some((p, _)) if *p == pkid) {
                if let Some((_, slot)) = self.collided.take() {
                    let written = self.written();
                    let queue = self.by_pkid.entry(pkid).or_default();
                    queue.push_back(Numbered { slot, written });
                }
                return;
            }
            if self.resends.remove(&pkid) {
                // A re-send of an unacknowledged publish after a reconnect (counted on CONNACK);
                // a re-sent QoS 2 publish is the newest holder of its id.
                let written = self.written();
                if let Some(numbered) = self.by_pkid.get_mut(&pkid).and_then(|q| q.back_mut()) {
                    numbered.written = written;
                }
                return;
            }
        }
        let Some(slot) = self.unassigned.pop_front() else {
            tracing::error!(pkid, "mqtt: publish event without a request handed over");
            return;
        };
        self.in_pending = self.in_pending.saturating_sub(1);
        if pkid == 0 {
            // QoS 0: written is as delivered as it gets.
            self.settle(slot, reader);
        } else {
            let written = self.written();
            let queue = self.by_pkid.entry(pkid).or_default();
            queue.push_back(Numbered { slot, written });
        }
    }

    /// `Outgoing::AwaitAck(pkid)`: the next request's packet id is still in use.
    fn on_collision(&mut self, pkid: u16) {
        if let Some(slot) = self.unassigned.pop_front() {
            self.in_pending = self.in_pending.saturating_sub(1);
            self.collided = Some((pkid, slot));
        }
    }

    /// PUBACK / PUBCOMP for `pkid`.
    fn on_acked(&mut self, pkid: u16, reader: &BufferReader) {
        let slot = match self.by_pkid.get_mut(&pkid) {
            Some(queue) => {
                let slot = queue.pop_front();
                if queue.is_empty() {
                    self.by_pkid.remove(&pkid);
                }
                slot
            }
            None => None,
        };
        if self.fed == Some(pkid) {
            self.fed = None;
        }
        match slot {
            Some(numbered) => self.settle(numbered.slot, reader),
            None => tracing::debug!(pkid, "mqtt: acknowledgement for an unknown packet id"),
        }
    }

    fn settle(&mut self, slot: Slot, reader: &BufferReader) {
        match slot {
            Slot::Record(claim) => {
                self.records_outstanding -= 1;
                self.isolating = self.isolating.saturating_sub(1);
                reader.ack(claim);
            }
            Slot::Status(false) => self.offline_acked = true,
            Slot::Status(true) => {}
        }
    }

    /// CONNACK: on a resumed session rumqttc re-sends what is unacknowledged; on a new one
    /// it dropped those publishes, so they go back to the buffer.
    fn on_connected(
        &mut self,
        session_present: bool,
        eventloop: &EventLoop,
        reader: &BufferReader,
    ) {
        self.connected = true;
        self.connection += 1;
        let on_wire = self
            .by_pkid
            .values()
            .flatten()
            .filter(|n| matches!(n.slot, Slot::Record(_)))
            .count() as u64;
        if session_present {
            self.resends = eventloop
                .pending
                .iter()
                .filter_map(|r| match r {
                    Request::Publish(p) if p.pkid != 0 => Some(p.pkid),
                    _ => None,
                })
                .collect();
            emit(
                &self.metrics,
                RecordsRedelivered {
                    sink: self.sink,
                    count: on_wire,
                    cause: "reconnect, session resumed",
                },
            );
            return;
        }
        let lost_pending = self.in_pending.min(self.unassigned.len());
        self.resends.clear();
        // Held re-sends belong to the forgotten session: their records go back to the buffer.
        self.held.clear();
        self.fed = None;
        let lost: Vec<Slot> = self
            .by_pkid
            .drain()
            .flat_map(|(_, queue)| queue.into_iter().map(|n| n.slot))
            .chain(self.unassigned.drain(..lost_pending))
            .chain(self.collided.take().map(|(_, slot)| slot))
            .collect();
        self.in_pending = 0;
        for slot in lost {
            if let Slot::Record(claim) = slot {
                self.records_outstanding -= 1;
                reader.requeue(claim);
            }
        }
        emit(
            &self.metrics,
            RecordsRedelivered {
                sink: self.sink,
                count: on_wire,
                cause: "reconnect, session lost",
            },
        );
    }

    /// Publish bookkeeping for one event (CONNACK is handled by the caller).
    fn on_event(&mut self, event: &Event, reader: &BufferReader) {
        match event {
            Event::Incoming(Packet::PubAck(ack)) => self.on_acked(ack.pkid, reader),
            Event::Incoming(Packet::PubComp(comp)) => self.on_acked(comp.pkid, reader),
            Event::Outgoing(Outgoing::Publish(pkid)) => self.on_sent(*pkid, reader),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => self.on_collision(*pkid),
            _ => {}
        }
    }

    /// A connection error: rumqttc moved unsent requests into its `pending` queue. Events it
    /// generated before failing (a publish numbered and written but not flushed, acks read in
    /// the same batch) are still queued inside it: take them now, so that every numbered
    /// publish is in `by_pkid` and every other handed-over one is counted in `in_pending`.
    fn on_disconnected(&mut self, eventloop: &mut EventLoop, reader: &BufferReader) {
        let was_connected = std::mem::replace(&mut self.connected, false);
        while let Some(event) = eventloop.state.events.pop_front() {
            self.on_event(&event, reader);
        }
        // `clean()` appended the publishes numbered on the lost connection *behind* what was
        // still pending, including fresh requests (no packet id yet). Re-sends go first again:
        // otherwise a fresh publish could be numbered with the id of a re-send still waiting
        // behind it, and its event be taken for that re-send.
        let (numbered, fresh): (VecDeque<Request>, VecDeque<Request>) =
            eventloop.pending.drain(..).partition(is_numbered);
        eventloop.pending = numbered;
        eventloop.pending.extend(fresh);
        if was_connected {
            self.on_connection_lost(eventloop, reader);
        }
        self.in_pending = eventloop
            .pending
            .iter()
            .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
            .count();
    }

    /// An established connection was lost: look for a record the broker refuses.
    ///
    /// A broker that refuses one record (mosquitto's `max_packet_size`, an ACL that disconnects)
    /// closes the connection as soon as it reads it; the acknowledgements it sent for the
    /// records just before are then often lost with the connection (reset), so the culprit
    /// cannot be told from its neighbours while many publishes are in flight. So a loss right
    /// after publishing (within [`POISON_WINDOW`]) starts *isolation*: the records that were
    /// outstanding are sent again one at a time (re-sends fed from `held`, the rest through a
    /// window of one) until as many records were settled. A record on which the connection is
    /// lost [`POISON_STRIKES`] times in a row while isolated is rejected
    /// (`reason="refused_by_broker"`) and taken out of rumqttc's re-sends, so the records
    /// behind it are delivered. An ordinary outage loses the connection once, then fails to
    /// connect (no strike); its records go through isolation once and are delivered.
    fn on_connection_lost(&mut self, eventloop: &mut EventLoop, reader: &BufferReader) {
        let connection = self.connection;
        let just_written = self
            .by_pkid
            .iter()
            .flat_map(|(pkid, queue)| queue.iter().enumerate().map(move |(i, n)| (*pkid, i, n)))
            .filter(|(_, _, n)| {
                n.written.connection == connection && n.written.at.elapsed() <= POISON_WINDOW
            })
            .filter_map(|(pkid, i, n)| match &n.slot {
                Slot::Record(claim) => Some((n.written.order, pkid, i, claim.seq())),
                Slot::Status(_) => None,
            })
            .min();
        if self.isolating > 0 {
            self.strike(
                just_written.map(|(_, pkid, i, seq)| (pkid, i, seq)),
                eventloop,
                reader,
            );
        } else if just_written.is_some() && self.records_outstanding > 0 {
            self.isolating = self.records_outstanding;
            self.suspect = None;
            tracing::debug!(
                records = self.isolating,
                "mqtt: connection lost right after publishing; re-sending one at a time"
            );
        }
        if self.isolating == 0 && self.held.is_empty() {
            return;
        }
        // Numbered re-sends wait in `held`, fed one at a time; fresh requests go back to the
        // buffer (statuses are sent again on connect) and come back through a window of one.
        self.fed = None;
        let mut rest = VecDeque::new();
        let mut numbered = VecDeque::new();
        let mut fresh = 0;
        for request in eventloop.pending.drain(..) {
            match request {
                r if is_numbered(&r) => numbered.push_back(r),
                Request::Publish(_) => fresh += 1,
                other => rest.push_back(other),
            }
        }
        eventloop.pending = rest;
        numbered.append(&mut self.held);
        self.held = numbered;
        for slot in self.unassigned.drain(..fresh.min(self.unassigned.len())) {
            if let Slot::Record(claim) = slot {
                self.records_outstanding -= 1;
                reader.requeue(claim);
            }
        }
    }

    /// A loss while isolating: `written` is the record written on the lost connection.
    fn strike(
        &mut self,
        written: Option<(u16, usize, u64)>,
        eventloop: &mut EventLoop,
        reader: &BufferReader,
    ) {
        let Some((pkid, at, seq)) = written else {
            // Lost before anything was sent: says nothing about any record.
            return;
        };
        let strikes = match self.suspect {
            Some((s, n)) if s == seq => n + 1,
            _ => 1,
        };
        if strikes < POISON_STRIKES {
            tracing::debug!(
                pkid,
                seq,
                strikes,
                "mqtt: connection lost right after a publish"
            );
            self.suspect = Some((seq, strikes));
            return;
        }
        self.suspect = None;
        let Some(queue) = self.by_pkid.get_mut(&pkid) else {
            return;
        };
        let Some(numbered) = queue.remove(at) else {
            return;
        };
        if queue.is_empty() {
            self.by_pkid.remove(&pkid);
        }
        // rumqttc holds the unacknowledged publishes in `pending`, to re-send them on a resumed
        // session; this one must not go again.
        if let Some(i) = eventloop
            .pending
            .iter()
            .position(|r| matches!(r, Request::Publish(p) if p.pkid == pkid))
        {
            eventloop.pending.remove(i);
        }
        let Slot::Record(claim) = numbered.slot else {
            return;
        };
        self.records_outstanding -= 1;
        self.isolating = self.isolating.saturating_sub(1);
        let record = claim.record();
        let error = format!(
            "the broker closed the connection right after this record ({} bytes of topic and \
             payload), {POISON_STRIKES} times in a row with nothing else in flight; a broker \
             limit (e.g. mosquitto's max_packet_size) or an ACL refuses it",
            record.topic.len() + record.payload.len()
        );
        reader.reject_because(claim, "refused_by_broker", &error);
    }

    /// While isolating, hands rumqttc the next held re-send once the previous one is settled.
    fn feed(&mut self, eventloop: &mut EventLoop) {
        if !self.connected || self.fed.is_some() {
            return;
        }
        let Some(request) = self.held.pop_front() else {
            return;
        };
        match &request {
            Request::Publish(p) => {
                // Its `Outgoing::Publish` is a re-send, not a new request.
                self.resends.insert(p.pkid);
                self.fed = Some(p.pkid);
            }
            Request::PubRel(r) => self.fed = Some(r.pkid),
            _ => {}
        }
        eventloop.pending.push_back(request);
    }
}

/// A request rumqttc already numbered: a publish to re-send, or a QoS 2 release.
fn is_numbered(request: &Request) -> bool {
    match request {
        Request::Publish(p) => p.pkid != 0,
        Request::PubRel(_) => true,
        _ => false,
    }
}

fn error_kind(error: &ConnectionError) -> &'static str {
    match error {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => "auth",
        ConnectionError::ConnectionRefused(_) => "refused",
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
        ConnectionError::Io(_) => "io",
        ConnectionError::Tls(_) => "tls",
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => "timeout",
        _ => "protocol",
    }
}

impl Sink for MqttSink {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn run(self: Box<Self>, reader: BufferReader) -> BoxFuture<'static, DrainReport> {
        Box::pin(self.run_loop(reader))
    }
}

impl MqttSink {
    async fn run_loop(self: Box<Self>, mut reader: BufferReader) -> DrainReport {
        let sink = reader.sink_label();
        let metrics = reader.metrics().clone();
        let (client, mut eventloop) =
            AsyncClient::new(self.options.clone(), self.window + CHANNEL_SLACK);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(self.connect_timeout_secs);
        eventloop.set_network_options(network);
        let mut backoff = Backoff::new(&self.reconnect);
        let mut t = Tracker {
            sink,
            metrics: metrics.clone(),
            qos: self.qos,
            window: self.window,
            max_packet: self.max_packet,
            retain: self.retain.clone(),
            unassigned: VecDeque::new(),
            in_pending: 0,
            by_pkid: HashMap::new(),
            resends: HashSet::new(),
            collided: None,
            records_outstanding: 0,
            connected: false,
            offline_acked: false,
            batch: Vec::new(),
            connection: 0,
            writes: 0,
            suspect: None,
            isolating: 0,
            held: VecDeque::new(),
            fed: None,
            status_due: false,
        };
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        let mut disconnecting = false;
        loop {
            if reader.is_aborted() {
                break;
            }
            if reader.is_finished() && stop_deadline.is_none() {
                // Everything acknowledged: say goodbye (the will is not sent on a clean stop).
                match (&self.status, t.connected) {
                    (Some(status), true) => t.send_status(&client, status, false),
                    _ => break,
                }
                stop_deadline = Some(tokio::time::Instant::now() + STOP_TIMEOUT);
            }
            if t.offline_acked && !disconnecting {
                disconnecting = client.disconnect().now_or_never().is_some();
            }
            if let (Some(status), true) = (&self.status, t.status_due) {
                if t.connected && t.held.is_empty() && t.fed.is_none() {
                    t.status_due = false;
                    t.send_status(&client, status, true);
                }
            }
            t.feed(&mut eventloop);
            let event = {
                let mut poll = pin!(eventloop.poll());
                loop {
                    if stop_deadline.is_none() {
                        t.fill(&client, &mut reader);
                    }
                    let stop_at = stop_deadline.unwrap_or_else(tokio::time::Instant::now);
                    tokio::select! {
                        biased;
                        event = &mut poll => break Some(event),
                        () = reader.readable(), if t.has_room() && !reader.is_closed() => {}
                        () = reader.done(), if stop_deadline.is_none() && t.records_outstanding == 0 => break None,
                        () = reader.aborted() => break None,
                        () = tokio::time::sleep_until(stop_at), if stop_deadline.is_some() => break None,
                    }
                }
            };
            match event {
                None if stop_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => break,
                None => {}
                Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    backoff.reset();
                    emit(
                        &metrics,
                        SinkConnected {
                            sink,
                            endpoint: &self.endpoint,
                            detail: if ack.session_present {
                                "session resumed"
                            } else {
                                "new session"
                            },
                        },
                    );
                    if !ack.session_present {
                        // A publish held back for a packet-id collision belongs to the
                        // forgotten session; the tracker sends it again.
                        eventloop.state.collision = None;
                    }
                    t.on_connected(ack.session_present, &eventloop, &reader);
                    t.status_due = self.status.is_some() && stop_deadline.is_none();
                }
                Some(Ok(Event::Outgoing(Outgoing::Disconnect))) if disconnecting => break,
                Some(Ok(event)) => t.on_event(&event, &reader),
                Some(Err(error)) => {
                    t.on_disconnected(&mut eventloop, &reader);
                    if disconnecting || stop_deadline.is_some() && reader.is_finished() {
                        break;
                    }
                    let retry_in = backoff.next_delay();
                    emit(
                        &metrics,
                        ConnectionFailed {
                            sink,
                            endpoint: &self.endpoint,
                            kind: error_kind(&error),
                            error: &error,
                            retry_in: Some(retry_in),
                        },
                    );
                    sleep_unless_aborted(&reader, retry_in).await;
                }
            }
        }
        reader.report()
    }
}
