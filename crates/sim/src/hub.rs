//! The registry of sockets and subscriptions, and the frames queued to each socket.

use crate::truth::{lock, Ticket};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

/// A frame for one socket's writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A control text frame (welcome, ping, confirm, reject, a malformed frame).
    Text(Utf8Bytes),
    /// An event frame; a recorded event's frame carries the ticket that records its delivery.
    Event(Utf8Bytes, Option<Ticket>),
    /// A binary frame (a fault).
    Binary(Bytes),
    /// A `disconnect` frame, then a close frame with code 1000, then the socket closes.
    Disconnect(Utf8Bytes),
    /// The client has gone or closed: finish the close handshake and stop.
    Finish,
}

/// Where an event for one subscription goes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) connection: u64,
    pub(crate) token: Arc<str>,
    /// As the client sent it.
    pub(crate) identifier: Arc<str>,
    /// JSON-escaped, for the frame.
    pub(crate) escaped: Arc<str>,
    pub(crate) tx: mpsc::Sender<Outgoing>,
}

/// One open socket.
#[derive(Debug)]
pub(crate) struct SocketEntry {
    pub(crate) tx: mpsc::Sender<Outgoing>,
    pub(crate) reader: AbortHandle,
    pub(crate) writer: AbortHandle,
}

/// Current sockets and subscriptions, and totals since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Open sockets.
    pub sockets: usize,
    /// Confirmed subscriptions currently held.
    pub subscriptions: usize,
    /// Identifiers held without a confirmation (refused silently), until unsubscribed.
    pub pending_subscriptions: usize,
    /// Whether the WebSocket listener is accepting.
    pub listening: bool,
    /// Sockets accepted since the start.
    pub connections_total: u64,
    /// `confirm_subscription` sent since the start.
    pub confirmed_total: u64,
    /// `reject_subscription` sent since the start.
    pub rejected_total: u64,
    /// Subscriptions refused without an answer since the start.
    pub refused_silently_total: u64,
    /// `update_presence` received on a confirmed subscription since the start.
    pub presence_updates_total: u64,
    /// Events sent (broadcasts and presence replies).
    pub events_total: u64,
    /// Event frames queued to sockets.
    pub event_frames_queued: u64,
    /// Event frames written to sockets.
    pub event_frames_written: u64,
    /// Event frames never written (socket gone, or queue full past the send timeout).
    pub event_frames_dropped: u64,
    /// Pings skipped because a socket's queue was full.
    pub pings_skipped: u64,
    /// WebSocket upgrades answered 503 during an outage.
    pub upgrades_refused_total: u64,
    /// Requests of the REST surface.
    pub rest: crate::rest::RestStats,
    /// The platform's message records.
    pub messages: crate::store::StoreStats,
}

/// The registry.
#[derive(Debug)]
pub(crate) struct Hub {
    sockets: Mutex<HashMap<u64, SocketEntry>>,
    /// Token to the subscriptions streaming it.
    streams: RwLock<HashMap<Arc<str>, Vec<Arc<Target>>>>,
    pub(crate) gauges: watch::Sender<Stats>,
    next_connection: AtomicU64,
    pub(crate) pings_skipped: AtomicU64,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Hub {
            sockets: Mutex::new(HashMap::new()),
            streams: RwLock::new(HashMap::new()),
            gauges: watch::Sender::new(Stats::default()),
            next_connection: AtomicU64::new(1),
            pings_skipped: AtomicU64::new(0),
        }
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn add_socket(&self, id: u64, entry: SocketEntry) {
        lock(&self.sockets).insert(id, entry);
        self.gauges.send_modify(|s| {
            s.sockets += 1;
            s.connections_total += 1;
        });
    }

    /// Forgets a socket and the streams it held (`tokens`: one entry per stream).
    pub(crate) fn remove_socket<'a>(
        &self,
        id: u64,
        tokens: impl Iterator<Item = &'a str>,
        confirmed: usize,
        pending: usize,
    ) {
        if lock(&self.sockets).remove(&id).is_none() {
            return;
        }
        {
            let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
            for token in tokens {
                if let Some(targets) = streams.get_mut(token) {
                    targets.retain(|t| t.connection != id);
                    if targets.is_empty() {
                        streams.remove(token);
                    }
                }
            }
        }
        self.gauges.send_modify(|s| {
            s.sockets -= 1;
            s.subscriptions -= confirmed;
            s.pending_subscriptions -= pending;
        });
    }

    /// Makes `target` receive its token's events.
    pub(crate) fn add_stream(&self, target: Arc<Target>) {
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        streams
            .entry(target.token.clone())
            .or_default()
            .push(target);
    }

    /// Stops one subscription's events.
    pub(crate) fn remove_stream(&self, token: &str, connection: u64, identifier: &str) {
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if let Some(targets) = streams.get_mut(token) {
            targets.retain(|t| !(t.connection == connection && &*t.identifier == identifier));
            if targets.is_empty() {
                streams.remove(token);
            }
        }
    }

    /// Appends the subscriptions streaming each token to `out`.
    pub(crate) fn targets<'a>(
        &self,
        tokens: impl Iterator<Item = &'a str>,
        out: &mut Vec<Arc<Target>>,
    ) {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        for token in tokens {
            if let Some(targets) = streams.get(token) {
                out.extend(targets.iter().cloned());
            }
        }
    }

    /// The queue of every open socket.
    pub(crate) fn socket_queues(&self) -> Vec<(u64, mpsc::Sender<Outgoing>)> {
        lock(&self.sockets)
            .iter()
            .map(|(id, s)| (*id, s.tx.clone()))
            .collect()
    }

    /// Aborts a socket's tasks: the TCP connection closes without a close frame.
    pub(crate) fn abort_socket(&self, id: u64) -> bool {
        match lock(&self.sockets).get(&id) {
            Some(s) => {
                s.writer.abort();
                s.reader.abort();
                true
            }
            None => false,
        }
    }

    pub(crate) fn socket_ids(&self) -> Vec<u64> {
        lock(&self.sockets).keys().copied().collect()
    }
}
