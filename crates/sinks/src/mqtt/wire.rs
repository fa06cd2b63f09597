//! The adapter between the [`Tracker`](super::tracker::Tracker) and rumqttc: the only code that
//! touches rumqttc's event loop internals (`pending`, `state.events`, `state.collision`), once
//! for MQTT 3.1.1 ([`V4`]) and once for MQTT 5 ([`V5`]).
//!
//! Each turns rumqttc's events into [`Happened`] (what the tracker is fed) and applies the
//! tracker's answers about rumqttc's re-send queue.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::time::{Instant, Sleep};

use super::tracker::{AckKind, Pending, Place, Resend};
use super::v5::PropertyRules;
use crate::record::Record;
use crate::telemetry::ConnectionErrorKind;

/// What rumqttc reported, as the sink needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Happened {
    /// CONNACK; MQTT 5 brokers may announce their largest packet, highest QoS and whether
    /// they keep retained messages.
    ConnAck {
        session_present: bool,
        limits: BrokerLimits,
    },
    /// `Outgoing::Publish(pkid)`.
    Written(u16),
    /// `Outgoing::AwaitAck(pkid)`.
    Collided(u16),
    /// PUBACK / PUBREC / PUBCOMP; `refused`: an MQTT 5 failure reason code.
    Acked {
        kind: AckKind,
        pkid: u16,
        refused: Option<u8>,
    },
    /// Our DISCONNECT was written.
    Disconnected,
    Other,
}

/// What an MQTT 5 broker announced in CONNACK (MQTT 3.1.1: nothing, the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BrokerLimits {
    /// Its maximum packet size.
    pub max_packet: Option<u32>,
    /// Its maximum QoS.
    pub max_qos: Option<u8>,
    /// Whether it keeps retained messages.
    pub retain_available: bool,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            max_packet: None,
            max_qos: None,
            retain_available: true,
        }
    }
}

/// A failed connection: its `kind` label and the error.
#[derive(Debug)]
pub(crate) struct WireError {
    pub kind: ConnectionErrorKind,
    pub error: Box<dyn std::error::Error + Send + Sync>,
}

/// A publish to hand over.
pub(crate) struct Outgoing<'r> {
    pub topic: &'r str,
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    /// The record it carries (MQTT 5 properties); `None` for status messages.
    pub record: Option<&'r Record>,
}

/// The sending half of one MQTT client (rumqttc's `AsyncClient`).
pub(crate) trait Publisher: Send + 'static {
    /// Hands a publish to rumqttc without waiting; false if its request channel is full or
    /// closed.
    fn publish(&self, publish: Outgoing<'_>) -> bool;
    /// Asks rumqttc to disconnect; false if that could not be handed over now.
    fn disconnect(&self) -> bool;
    /// The size of the PUBLISH packet that carries `record`, in bytes (at most).
    fn publish_size(&self, record: &Record) -> usize;
}

/// The event loop of one MQTT client (rumqttc's `EventLoop`).
pub(crate) trait Wire: Send + 'static {
    /// Polls the event loop (never cancelled while records are in flight).
    fn poll(&mut self) -> impl Future<Output = Result<Happened, WireError>> + Send + '_;
    /// Events rumqttc generated before a connection error and still holds.
    fn buffered(&mut self) -> Vec<Happened>;
    /// rumqttc's re-send queue.
    fn pending(&self) -> Vec<Pending>;
    /// Rearranges rumqttc's re-send queue as the tracker planned; held requests are kept here.
    fn replan(&mut self, plan: &[(usize, Place)]);
    /// Hands a held re-send back to rumqttc.
    fn resend(&mut self, resend: Resend);
    /// A new session (CONNACK without `session_present`): requests held back from the
    /// forgotten session are dropped, and so is a publish rumqttc held back for a packet-id
    /// collision (the tracker requeues its record).
    fn forget_session(&mut self);
}

fn rearrange<R>(
    pending: &mut VecDeque<R>,
    plan: &[(usize, Place)],
    held: &mut HashMap<Resend, R>,
    key: impl Fn(&R) -> Option<Resend>,
) {
    let mut requests: Vec<Option<R>> = pending.drain(..).map(Some).collect();
    for (i, place) in plan {
        let Some(request) = requests.get_mut(*i).and_then(Option::take) else {
            continue;
        };
        match place {
            Place::Queue => pending.push_back(request),
            Place::Hold => match key(&request) {
                Some(k) => {
                    held.insert(k, request);
                }
                None => pending.push_back(request),
            },
            Place::Drop => {}
        }
    }
    // Anything the plan did not mention stays (defensive; the tracker plans every request).
    pending.extend(requests.into_iter().flatten());
}

/// MQTT fixed header (at most 5 bytes), topic length prefix and packet id.
const PUBLISH_OVERHEAD: usize = 9;

/// MQTT 3.1.1: the sending half. Requests go to [`V4`]'s own queue (not through rumqttc's
/// `AsyncClient`), so the event loop can take every ready request at once.
pub(crate) struct V4Client {
    requests: Arc<Requests>,
}

/// The 3.1.1 requests on their way from the sink's adapter to its event loop: a bounded queue
/// that wakes nobody. Both ends live in the sink task, which polls the event loop after every
/// hand-over (`next_happening` fills, then polls; every other hand-over is followed by a fresh
/// `poll`). A waking channel (tokio's `mpsc`, before) woke the task from inside its own poll,
/// which tokio takes for a yield: the task went to the back of the run queue and a parked
/// worker was woken, one futex call and one wake-up of another thread per turn.
struct Requests {
    queue: Mutex<VecDeque<rumqttc::Request>>,
    cap: usize,
}

impl Requests {
    fn new(cap: usize) -> Self {
        Requests {
            queue: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<rumqttc::Request>> {
        // A queue of requests stays consistent across a panic: recover from poisoning.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `request`; false when `cap` requests already wait.
    fn push(&self, request: rumqttc::Request) -> bool {
        let mut queue = self.queue();
        if queue.len() >= self.cap {
            return false;
        }
        queue.push_back(request);
        true
    }

    /// The oldest request, if any.
    fn pop(&self) -> Option<rumqttc::Request> {
        self.queue().pop_front()
    }
}

/// MQTT 3.1.1: the event loop.
///
/// rumqttc 0.25's `EventLoop::poll` writes and flushes each request on its own: one `write`
/// system call per publish (its `max_request_batch` option is parsed and never used). Once
/// connected, this drives the connection with rumqttc's own parts instead — `MqttState` numbers
/// publishes and matches acknowledgements, `Network` frames packets — and takes every request
/// that is ready per wake-up, re-sends first, as rumqttc's flow control admits them, before one
/// flush (see [`V4::next_event`]). rumqttc's `poll` still makes each connection (TCP, TLS,
/// CONNECT / CONNACK) and its `clean` still moves what was in flight to its re-send queue.
pub(crate) struct V4 {
    eventloop: rumqttc::EventLoop,
    requests: Arc<Requests>,
    /// When the next PINGREQ is due (reset at every CONNACK, as rumqttc does).
    keep_alive: Pin<Box<Sleep>>,
    held: HashMap<Resend, rumqttc::Request>,
}

impl V4 {
    pub(crate) fn new(
        options: rumqttc::MqttOptions,
        cap: usize,
        connect_timeout_secs: u64,
        tcp_nodelay: bool,
    ) -> (V4Client, Self) {
        let requests = Arc::new(Requests::new(cap));
        // rumqttc's own request channel stays empty: requests come through `requests`.
        let mut eventloop = rumqttc::EventLoop::new(options, 1);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(connect_timeout_secs);
        network.set_tcp_nodelay(tcp_nodelay);
        eventloop.set_network_options(network);
        (
            V4Client {
                requests: requests.clone(),
            },
            V4 {
                eventloop,
                requests,
                keep_alive: Box::pin(tokio::time::sleep(Duration::ZERO)),
                held: HashMap::new(),
            },
        )
    }

    /// The next event once connected: one the last turn produced, or else what the network,
    /// the requests or the keep-alive timer bring — rumqttc's `select`, except that a wake-up
    /// by a request writes every ready request (at most [`MAX_BATCH`]) before the one flush.
    async fn next_event(&mut self) -> Result<rumqttc::Event, rumqttc::ConnectionError> {
        use rumqttc::ConnectionError;
        loop {
            let el = &mut self.eventloop;
            if let Some(event) = el.state.events.pop_front() {
                return Ok(event);
            }
            let Some(network) = el.network.as_mut() else {
                // `poll` connects first; nothing to drive without a connection.
                return Err(ConnectionError::RequestsDone);
            };
            let flow = Flow {
                max_inflight: el.mqtt_options.inflight(),
                throttle: el.mqtt_options.pending_throttle(),
            };
            let keep_alive = el.mqtt_options.keep_alive();
            let flush_timeout = Duration::from_secs(el.network_options.connection_timeout());
            let state = &mut el.state;
            let pending = &mut el.pending;
            let open = !pending.is_empty() || flow.admits(state);
            tokio::select! {
                read = network.readb(state) => read?,
                first = next_request(pending, &self.requests, flow.throttle), if open => {
                    let mut next = Some(first);
                    let mut written = 0;
                    while let Some(request) = next.take() {
                        if let Some(packet) = state.handle_outgoing_packet(request)? {
                            network.write(packet).await?;
                        }
                        written += 1;
                        if written < MAX_BATCH {
                            next = flow.ready(state, pending, &self.requests);
                        }
                    }
                }
                () = self.keep_alive.as_mut(), if !keep_alive.is_zero() => {
                    self.keep_alive.as_mut().reset(Instant::now() + keep_alive);
                    let ping = rumqttc::Request::PingReq(rumqttc::PingReq);
                    if let Some(packet) = state.handle_outgoing_packet(ping)? {
                        network.write(packet).await?;
                    }
                }
            }
            match tokio::time::timeout(flush_timeout, network.flush()).await {
                Ok(flushed) => flushed?,
                Err(_) => return Err(ConnectionError::FlushTimeout),
            }
        }
    }

    /// After a connection error: rumqttc's `clean` (what was in flight goes to its re-send
    /// queue), and the requests not taken yet follow them, as rumqttc does with its channel.
    fn clean(&mut self) {
        self.eventloop.clean();
        while let Some(request) = self.requests.pop() {
            self.eventloop.pending.push_back(request);
        }
    }
}

/// Most requests written before one flush (and before their events are handed out).
const MAX_BATCH: usize = 256;

/// rumqttc's flow control for requests.
#[derive(Clone, Copy)]
struct Flow {
    max_inflight: u16,
    /// rumqttc's pause between re-sends (zero unless configured): re-sends go one per turn
    /// when it is set.
    throttle: Duration,
}

impl Flow {
    /// Whether a fresh request may be taken: room in flight and no collision held back.
    fn admits(self, state: &rumqttc::MqttState) -> bool {
        state.inflight() < self.max_inflight && state.collision.is_none()
    }

    /// The next request ready without waiting: a re-send first, then a fresh one if admitted.
    fn ready(
        self,
        state: &rumqttc::MqttState,
        pending: &mut VecDeque<rumqttc::Request>,
        requests: &Requests,
    ) -> Option<rumqttc::Request> {
        if !pending.is_empty() {
            return if self.throttle.is_zero() {
                pending.pop_front()
            } else {
                None
            };
        }
        if self.admits(state) {
            requests.pop()
        } else {
            None
        }
    }
}

/// A re-send (after the throttle) before a fresh request, as rumqttc takes them. Cancel-safe.
/// With no re-send waiting and no request queued it is pending without registering a wake-up:
/// the sink task polls it again after it queues one (see [`Requests`]), and every poll looks at
/// the queue.
async fn next_request(
    pending: &mut VecDeque<rumqttc::Request>,
    requests: &Requests,
    throttle: Duration,
) -> rumqttc::Request {
    if !pending.is_empty() {
        if !throttle.is_zero() {
            tokio::time::sleep(throttle).await;
        }
        if let Some(request) = pending.pop_front() {
            return request;
        }
    }
    // Looks at the queue at every poll (a future parked for good would never see it).
    std::future::poll_fn(|_| {
        requests
            .pop()
            .map_or(std::task::Poll::Pending, std::task::Poll::Ready)
    })
    .await
}

impl Publisher for V4Client {
    fn publish(&self, p: Outgoing<'_>) -> bool {
        // rumqttc's 3.1.1 publish owns its topic as a `String`: the one copy of it per publish.
        let mut publish = rumqttc::Publish::from_bytes(p.topic, qos_v4(p.qos), p.payload);
        publish.retain = p.retain;
        self.requests.push(rumqttc::Request::Publish(publish))
    }

    fn disconnect(&self) -> bool {
        self.requests
            .push(rumqttc::Request::Disconnect(rumqttc::Disconnect))
    }

    fn publish_size(&self, record: &Record) -> usize {
        PUBLISH_OVERHEAD + record.topic.len() + record.payload.len()
    }
}

fn qos_v4(level: u8) -> rumqttc::QoS {
    match level {
        0 => rumqttc::QoS::AtMostOnce,
        2 => rumqttc::QoS::ExactlyOnce,
        _ => rumqttc::QoS::AtLeastOnce,
    }
}

fn happened_v4(event: &rumqttc::Event) -> Happened {
    use rumqttc::{Event, Outgoing, Packet};
    let acked = |kind, pkid| Happened::Acked {
        kind,
        pkid,
        refused: None,
    };
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => Happened::ConnAck {
            session_present: ack.session_present,
            limits: BrokerLimits::default(),
        },
        Event::Incoming(Packet::PubAck(a)) => acked(AckKind::PubAck, a.pkid),
        Event::Incoming(Packet::PubRec(a)) => acked(AckKind::PubRec, a.pkid),
        Event::Incoming(Packet::PubComp(a)) => acked(AckKind::PubComp, a.pkid),
        Event::Outgoing(Outgoing::Publish(pkid)) => Happened::Written(*pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => Happened::Collided(*pkid),
        Event::Outgoing(Outgoing::Disconnect) => Happened::Disconnected,
        _ => Happened::Other,
    }
}

fn error_kind_v4(error: &rumqttc::ConnectionError) -> ConnectionErrorKind {
    use rumqttc::{ConnectReturnCode, ConnectionError};
    match error {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => ConnectionErrorKind::Auth,
        ConnectionError::ConnectionRefused(_) => ConnectionErrorKind::Refused,
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            ConnectionErrorKind::Refused
        }
        ConnectionError::Io(_) => ConnectionErrorKind::Io,
        ConnectionError::Tls(_) => ConnectionErrorKind::Tls,
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
            ConnectionErrorKind::Timeout
        }
        _ => ConnectionErrorKind::Protocol,
    }
}

impl Wire for V4 {
    async fn poll(&mut self) -> Result<Happened, WireError> {
        let event = if self.eventloop.network.is_none() {
            // Connects (TCP, TLS, CONNECT) and returns the CONNACK.
            let connected = self.eventloop.poll().await;
            if connected.is_ok() {
                let keep_alive = self.eventloop.mqtt_options.keep_alive();
                self.keep_alive.as_mut().reset(Instant::now() + keep_alive);
            }
            connected
        } else {
            let event = self.next_event().await;
            if event.is_err() {
                self.clean();
            }
            event
        };
        match event {
            Ok(event) => Ok(happened_v4(&event)),
            Err(error) => Err(WireError {
                kind: error_kind_v4(&error),
                error: Box::new(error),
            }),
        }
    }

    fn buffered(&mut self) -> Vec<Happened> {
        self.eventloop
            .state
            .events
            .drain(..)
            .map(|e| happened_v4(&e))
            .collect()
    }

    fn pending(&self) -> Vec<Pending> {
        self.eventloop
            .pending
            .iter()
            .map(|r| match r {
                rumqttc::Request::Publish(p) => Pending::Publish(p.pkid),
                rumqttc::Request::PubRel(r) => Pending::Release(r.pkid),
                _ => Pending::Other,
            })
            .collect()
    }

    fn replan(&mut self, plan: &[(usize, Place)]) {
        rearrange(
            &mut self.eventloop.pending,
            plan,
            &mut self.held,
            |r| match r {
                rumqttc::Request::Publish(p) => Some(Resend::Publish(p.pkid)),
                rumqttc::Request::PubRel(r) => Some(Resend::Release(r.pkid)),
                _ => None,
            },
        );
    }

    fn resend(&mut self, resend: Resend) {
        match self.held.remove(&resend) {
            Some(request) => self.eventloop.pending.push_back(request),
            None => tracing::error!(?resend, "mqtt: held re-send missing"),
        }
    }

    fn forget_session(&mut self) {
        self.held.clear();
        self.eventloop.state.collision = None;
    }
}

/// MQTT 5: the sending half.
pub(crate) struct V5Client {
    client: rumqttc::v5::AsyncClient,
    rules: PropertyRules,
}

/// MQTT 5: the event loop. rumqttc's own (one flush per request): its MQTT 5 event loop keeps
/// the connection private, so requests cannot be written in batches as over 3.1.1.
pub(crate) struct V5 {
    eventloop: rumqttc::v5::EventLoop,
    held: HashMap<Resend, rumqttc::v5::Request>,
}

impl V5 {
    pub(crate) fn new(
        mut options: rumqttc::v5::MqttOptions,
        cap: usize,
        connect_timeout_secs: u64,
        tcp_nodelay: bool,
        rules: PropertyRules,
    ) -> (V5Client, Self) {
        options.set_connection_timeout(connect_timeout_secs);
        let mut network = options.network_options();
        network.set_tcp_nodelay(tcp_nodelay);
        options.set_network_options(network);
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, cap);
        (
            V5Client { client, rules },
            V5 {
                eventloop,
                held: HashMap::new(),
            },
        )
    }
}

impl Publisher for V5Client {
    fn publish(&self, p: Outgoing<'_>) -> bool {
        let properties = self.rules.properties(p.record);
        let sent = self
            .client
            .publish_bytes_with_properties(
                p.topic.to_owned(),
                qos_v5(p.qos),
                p.retain,
                p.payload,
                properties,
            )
            .now_or_never();
        matches!(sent, Some(Ok(())))
    }

    fn disconnect(&self) -> bool {
        self.client.disconnect().now_or_never().is_some()
    }

    fn publish_size(&self, record: &Record) -> usize {
        PUBLISH_OVERHEAD
            + record.topic.len()
            + record.payload.len()
            + self.rules.properties_size(record)
    }
}

fn qos_v5(level: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match level {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

fn happened_v5(event: &rumqttc::v5::Event) -> Happened {
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason};
    use rumqttc::v5::Event;
    use rumqttc::Outgoing;
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => Happened::ConnAck {
            session_present: ack.session_present,
            limits: BrokerLimits {
                max_packet: ack.properties.as_ref().and_then(|p| p.max_packet_size),
                max_qos: ack.properties.as_ref().and_then(|p| p.max_qos),
                retain_available: ack
                    .properties
                    .as_ref()
                    .and_then(|p| p.retain_available)
                    .is_none_or(|r| r != 0),
            },
        },
        Event::Incoming(Packet::PubAck(a)) => Happened::Acked {
            kind: AckKind::PubAck,
            pkid: a.pkid,
            refused: match a.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                PubAckReason::UnspecifiedError => Some(0x80),
                PubAckReason::ImplementationSpecificError => Some(0x83),
                PubAckReason::NotAuthorized => Some(0x87),
                PubAckReason::TopicNameInvalid => Some(0x90),
                PubAckReason::PacketIdentifierInUse => Some(0x91),
                PubAckReason::QuotaExceeded => Some(0x97),
                PubAckReason::PayloadFormatInvalid => Some(0x99),
            },
        },
        Event::Incoming(Packet::PubRec(a)) => Happened::Acked {
            kind: AckKind::PubRec,
            pkid: a.pkid,
            refused: match a.reason {
                PubRecReason::Success | PubRecReason::NoMatchingSubscribers => None,
                PubRecReason::UnspecifiedError => Some(0x80),
                PubRecReason::ImplementationSpecificError => Some(0x83),
                PubRecReason::NotAuthorized => Some(0x87),
                PubRecReason::TopicNameInvalid => Some(0x90),
                PubRecReason::PacketIdentifierInUse => Some(0x91),
                PubRecReason::QuotaExceeded => Some(0x97),
                PubRecReason::PayloadFormatInvalid => Some(0x99),
            },
        },
        // PUBCOMP is final whatever its reason: the broker took the message at PUBREC.
        Event::Incoming(Packet::PubComp(a)) => Happened::Acked {
            kind: AckKind::PubComp,
            pkid: a.pkid,
            refused: None,
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Happened::Written(*pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => Happened::Collided(*pkid),
        Event::Outgoing(Outgoing::Disconnect) => Happened::Disconnected,
        _ => Happened::Other,
    }
}

fn error_kind_v5(error: &rumqttc::v5::ConnectionError) -> ConnectionErrorKind {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
    use rumqttc::v5::ConnectionError;
    match error {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => ConnectionErrorKind::Auth,
        ConnectionError::ConnectionRefused(_) => ConnectionErrorKind::Refused,
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            ConnectionErrorKind::Refused
        }
        ConnectionError::Io(_) => ConnectionErrorKind::Io,
        ConnectionError::Tls(_) => ConnectionErrorKind::Tls,
        ConnectionError::Timeout(_) => ConnectionErrorKind::Timeout,
        _ => ConnectionErrorKind::Protocol,
    }
}

impl Wire for V5 {
    async fn poll(&mut self) -> Result<Happened, WireError> {
        match self.eventloop.poll().await {
            Ok(event) => Ok(happened_v5(&event)),
            Err(error) => Err(WireError {
                kind: error_kind_v5(&error),
                error: Box::new(error),
            }),
        }
    }

    fn buffered(&mut self) -> Vec<Happened> {
        self.eventloop
            .state
            .events
            .drain(..)
            .map(|e| happened_v5(&e))
            .collect()
    }

    fn pending(&self) -> Vec<Pending> {
        use rumqttc::v5::Request;
        self.eventloop
            .pending
            .iter()
            .map(|r| match r {
                Request::Publish(p) => Pending::Publish(p.pkid),
                Request::PubRel(r) => Pending::Release(r.pkid),
                _ => Pending::Other,
            })
            .collect()
    }

    fn replan(&mut self, plan: &[(usize, Place)]) {
        use rumqttc::v5::Request;
        rearrange(
            &mut self.eventloop.pending,
            plan,
            &mut self.held,
            |r| match r {
                Request::Publish(p) => Some(Resend::Publish(p.pkid)),
                Request::PubRel(r) => Some(Resend::Release(r.pkid)),
                _ => None,
            },
        );
    }

    fn resend(&mut self, resend: Resend) {
        match self.held.remove(&resend) {
            Some(request) => self.eventloop.pending.push_back(request),
            None => tracing::error!(?resend, "mqtt: held re-send missing"),
        }
    }

    fn forget_session(&mut self) {
        self.held.clear();
        self.eventloop.state.collision = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;

    fn publish(n: u8) -> rumqttc::Request {
        rumqttc::Request::Publish(rumqttc::Publish::from_bytes(
            "t",
            rumqttc::QoS::AtMostOnce,
            Bytes::from(vec![n]),
        ))
    }

    fn payload(request: Option<rumqttc::Request>) -> Option<u8> {
        match request? {
            rumqttc::Request::Publish(p) => Some(p.payload[0]),
            _ => None,
        }
    }

    #[test]
    fn the_request_queue_is_bounded_and_first_in_first_out() {
        let requests = Requests::new(2);
        assert!(requests.push(publish(1)));
        assert!(requests.push(publish(2)));
        assert!(!requests.push(publish(3)), "full at its capacity");
        assert_eq!(payload(requests.pop()), Some(1));
        assert!(requests.push(publish(4)), "room again after a pop");
        assert_eq!(payload(requests.pop()), Some(2));
        assert_eq!(payload(requests.pop()), Some(4));
        assert_eq!(payload(requests.pop()), None);
        // A capacity of zero still takes one request (as the channel before it did).
        let one = Requests::new(0);
        assert!(one.push(publish(1)));
        assert!(!one.push(publish(2)));
    }

    #[test]
    fn next_request_takes_a_resend_first_and_sees_a_request_queued_after_it_went_pending() {
        let requests = Requests::new(8);
        let mut pending = VecDeque::from([publish(9)]);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        requests.push(publish(1));
        match pin!(next_request(&mut pending, &requests, Duration::ZERO)).poll(&mut cx) {
            std::task::Poll::Ready(r) => assert_eq!(payload(Some(r)), Some(9), "the re-send first"),
            std::task::Poll::Pending => panic!("a waiting re-send was not taken"),
        }
        assert_eq!(payload(requests.pop()), Some(1));
        // Nothing queued: pending; the same future, polled again after a push, takes it.
        let mut next = pin!(next_request(&mut pending, &requests, Duration::ZERO));
        assert!(next.as_mut().poll(&mut cx).is_pending());
        requests.push(publish(2));
        match next.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => assert_eq!(payload(Some(r)), Some(2)),
            std::task::Poll::Pending => panic!("a queued request was not seen"),
        }
    }
}
