//! Ground truth: what the simulator sent, to whom, and whether it reached the socket; and the
//! presence log (every `update_presence` per token, with its time).

use serde::{Serialize, Serializer};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;
use voxsig_protocol::EventKind;

/// What happened to one frame of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// In the socket's queue, not yet written.
    Queued,
    /// Written and flushed to the socket (handed to the kernel).
    Written,
    /// Never written: the socket closed or was dropped first, or its queue stayed full past the
    /// send timeout.
    Dropped,
}

impl DeliveryStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => DeliveryStatus::Queued,
            1 => DeliveryStatus::Written,
            _ => DeliveryStatus::Dropped,
        }
    }
}

/// Why an event was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Generated and broadcast to every subscriber entitled to it.
    Broadcast,
    /// The `presence.update` answering one subscriber's `subscribe` or `update_presence`.
    Reply,
}

/// One subscription an event was sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// The token subscribed.
    pub token: String,
    /// The identifier exactly as the client sent it.
    pub identifier: String,
    /// The socket (see [`crate::Stats`]; ids start at 1).
    pub connection: u64,
    /// Whether the frame reached the socket.
    pub status: DeliveryStatus,
}

/// One event the simulator sent, with the exact `data` bytes.
#[derive(Debug, Clone, Serialize)]
pub struct SentEvent {
    /// Global sending order, from 1.
    pub id: u64,
    /// The event name on the wire.
    pub event: &'static str,
    /// The event kind.
    #[serde(skip)]
    pub kind: EventKind,
    /// `data.account_id`.
    pub account_id: u64,
    /// `data.sim_seq`: the per-account sequence number (from 1).
    pub sim_seq: u64,
    /// The conversation the event concerns, if any.
    pub conversation_id: Option<u64>,
    /// Broadcast or reply.
    pub origin: Origin,
    /// Milliseconds since the simulator started.
    pub at_ms: u64,
    /// The `data` object exactly as sent (serialised as raw JSON).
    #[serde(serialize_with = "raw_json")]
    pub data: Arc<str>,
    /// Every subscription the event was sent to.
    pub deliveries: Vec<Delivery>,
}

fn raw_json<S: Serializer>(data: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    match serde_json::value::RawValue::from_string(data.to_string()) {
        Ok(raw) => raw.serialize(ser),
        Err(_) => ser.serialize_str(data),
    }
}

impl SentEvent {
    /// Whether a frame of this event was written to a subscription of `token`.
    pub fn written_to(&self, token: &str) -> bool {
        self.deliveries
            .iter()
            .any(|d| d.token == token && d.status == DeliveryStatus::Written)
    }
}

/// A snapshot of everything sent so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroundTruth {
    /// Events in sending order (up to the configured limit).
    pub events: Vec<SentEvent>,
    /// Events sent in total, recorded or not.
    pub total_events: u64,
    /// True when events past the limit were not recorded.
    pub truncated: bool,
}

impl GroundTruth {
    /// Events with a frame written to `token`, in sending order.
    pub fn written_to<'a>(&'a self, token: &'a str) -> impl Iterator<Item = &'a SentEvent> + 'a {
        self.events.iter().filter(move |e| e.written_to(token))
    }

    /// Events of one account, in sending order.
    pub fn for_account(&self, account_id: u64) -> impl Iterator<Item = &SentEvent> + '_ {
        self.events
            .iter()
            .filter(move |e| e.account_id == account_id)
    }

    /// The event with this account and sequence number.
    pub fn find(&self, account_id: u64, sim_seq: u64) -> Option<&SentEvent> {
        self.events
            .iter()
            .find(|e| e.account_id == account_id && e.sim_seq == sim_seq)
    }

    /// Frames (deliveries) with this status.
    pub fn count(&self, status: DeliveryStatus) -> usize {
        self.events
            .iter()
            .flat_map(|e| &e.deliveries)
            .filter(|d| d.status == status)
            .count()
    }

    /// Broadcast events only (no presence replies).
    pub fn broadcasts(&self) -> impl Iterator<Item = &SentEvent> + '_ {
        self.events.iter().filter(|e| e.origin == Origin::Broadcast)
    }
}

/// One `update_presence` received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceRecord {
    /// The token.
    pub token: String,
    /// The identifier as the client sent it.
    pub identifier: String,
    /// The socket.
    pub connection: u64,
    /// When (tokio's clock, so paused-time tests can compare).
    #[serde(skip)]
    pub at: Instant,
    /// Milliseconds since the simulator started.
    pub at_ms: u64,
}

/// The recorded form of an event; deliveries are updated in place by the socket writers.
#[derive(Debug)]
pub(crate) struct EventLog {
    pub(crate) id: u64,
    pub(crate) kind: EventKind,
    pub(crate) name: &'static str,
    pub(crate) account_id: u64,
    pub(crate) sim_seq: u64,
    pub(crate) conversation_id: Option<u64>,
    pub(crate) origin: Origin,
    pub(crate) at_ms: u64,
    pub(crate) data: Arc<str>,
    pub(crate) deliveries: Vec<DeliveryLog>,
}

#[derive(Debug)]
pub(crate) struct DeliveryLog {
    pub(crate) token: Arc<str>,
    pub(crate) identifier: Arc<str>,
    pub(crate) connection: u64,
    pub(crate) status: AtomicU8,
}

impl EventLog {
    fn snapshot(&self, with_data: bool) -> SentEvent {
        SentEvent {
            id: self.id,
            event: self.name,
            kind: self.kind,
            account_id: self.account_id,
            sim_seq: self.sim_seq,
            conversation_id: self.conversation_id,
            origin: self.origin,
            at_ms: self.at_ms,
            data: if with_data {
                self.data.clone()
            } else {
                Arc::from("null")
            },
            deliveries: self
                .deliveries
                .iter()
                .map(|d| Delivery {
                    token: d.token.to_string(),
                    identifier: d.identifier.to_string(),
                    connection: d.connection,
                    status: DeliveryStatus::from_u8(d.status.load(Ordering::Acquire)),
                })
                .collect(),
        }
    }
}

/// Counters of event frames: queued by the generator (once per event), written by each socket
/// writer (once per flush), dropped where a frame is discarded.
#[derive(Debug, Default)]
pub(crate) struct FrameCounters {
    pub(crate) queued: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// Rides with a recorded event's frame through the socket queue: the writer marks the delivery
/// written once flushed; dropped unwritten (queue discarded, send timed out), it marks it dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    log: Arc<EventLog>,
    index: usize,
}

impl Ticket {
    pub(crate) fn new(log: Arc<EventLog>, index: usize) -> Self {
        Ticket { log, index }
    }

    fn mark(&self, status: DeliveryStatus) {
        // Only a queued delivery changes: written or dropped is final.
        let _ = self.log.deliveries[self.index].status.compare_exchange(
            DeliveryStatus::Queued as u8,
            status as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub(crate) fn written(self) {
        self.mark(DeliveryStatus::Written);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.mark(DeliveryStatus::Dropped);
    }
}

/// The recorder behind [`GroundTruth`] and the presence log.
#[derive(Debug)]
pub(crate) struct Truth {
    limit: usize,
    events: Mutex<Vec<Arc<EventLog>>>,
    total: AtomicU64,
    presence: Mutex<Vec<PresenceRecord>>,
}

impl Truth {
    pub(crate) fn new(limit: usize) -> Self {
        Truth {
            limit,
            events: Mutex::new(Vec::new()),
            total: AtomicU64::new(0),
            presence: Mutex::new(Vec::new()),
        }
    }

    /// Whether the next event will be recorded.
    pub(crate) fn recording(&self) -> bool {
        (self.total.load(Ordering::Relaxed) as usize) < self.limit
    }

    /// Counts an event, and keeps it when under the limit.
    pub(crate) fn record(&self, log: Option<Arc<EventLog>>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = log {
            lock(&self.events).push(log);
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// A snapshot: events with `id > since`, at most `limit`, filtered to those delivered to
    /// `token` if given.
    pub(crate) fn snapshot(
        &self,
        with_data: bool,
        since: u64,
        limit: usize,
        token: Option<&str>,
    ) -> GroundTruth {
        let logs: Vec<Arc<EventLog>> = {
            let events = lock(&self.events);
            let start = events.partition_point(|e| e.id <= since);
            events[start..]
                .iter()
                .filter(|e| token.is_none_or(|t| e.deliveries.iter().any(|d| &*d.token == t)))
                .take(limit)
                .cloned()
                .collect()
        };
        let total_events = self.total();
        GroundTruth {
            events: logs.iter().map(|l| l.snapshot(with_data)).collect(),
            total_events,
            truncated: total_events as usize > self.limit,
        }
    }

    pub(crate) fn presence(&self, record: PresenceRecord) {
        lock(&self.presence).push(record);
    }

    pub(crate) fn presence_log(&self, token: Option<&str>) -> Vec<PresenceRecord> {
        lock(&self.presence)
            .iter()
            .filter(|r| token.is_none_or(|t| r.token == t))
            .cloned()
            .collect()
    }
}

/// Locks a std mutex, recovering from poisoning (a panicked holder leaves consistent data here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(id: u64) -> Arc<EventLog> {
        Arc::new(EventLog {
            id,
            kind: EventKind::MessageCreated,
            name: "message.created",
            account_id: 1,
            sim_seq: id,
            conversation_id: Some(5),
            origin: Origin::Broadcast,
            at_ms: 0,
            data: Arc::from(r#"{"account_id":1}"#),
            deliveries: vec![DeliveryLog {
                token: Arc::from("tok"),
                identifier: Arc::from("{}"),
                connection: 1,
                status: AtomicU8::new(0),
            }],
        })
    }

    #[test]
    fn tickets_mark_deliveries() {
        let l = log(1);
        Ticket::new(l.clone(), 0).written();
        assert_eq!(
            l.snapshot(true).deliveries[0].status,
            DeliveryStatus::Written
        );
        let l2 = log(2);
        drop(Ticket::new(l2.clone(), 0));
        assert_eq!(
            l2.snapshot(true).deliveries[0].status,
            DeliveryStatus::Dropped
        );
    }

    #[test]
    fn snapshots_page_filter_and_truncate() {
        let truth = Truth::new(2);
        for id in 1..=3 {
            let keep = truth.recording().then(|| log(id));
            truth.record(keep);
        }
        let gt = truth.snapshot(true, 0, usize::MAX, None);
        assert_eq!(gt.events.len(), 2);
        assert_eq!(gt.total_events, 3);
        assert!(gt.truncated);
        assert_eq!(truth.snapshot(true, 1, 10, None).events[0].id, 2);
        assert!(truth.snapshot(true, 0, 10, Some("other")).events.is_empty());
        let json = serde_json::to_string(&gt.events[0]).unwrap();
        assert!(json.contains(r#""data":{"account_id":1}"#), "{json}");
        assert_eq!(gt.find(1, 2).map(|e| e.id), Some(2));
        assert_eq!(gt.count(DeliveryStatus::Queued), 2);
    }
}
