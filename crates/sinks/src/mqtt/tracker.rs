//! Which record each MQTT packet id stands for: the MQTT sink's delivery bookkeeping as a
//! sans-I/O state machine.
//!
//! The [`Tracker`] is fed what happened on the client — a record or status message handed to
//! rumqttc, a PUBLISH written with its packet id, a packet-id collision, PUBACK / PUBREC /
//! PUBCOMP with their outcome, CONNACK with `session_present`, a lost connection with what
//! rumqttc still queues — and answers with [`Action`]s (`Ack`, `Requeue`, `Reject`) drained
//! with [`Tracker::poll_action`], re-sends to feed ([`Tracker::poll_resend`]) and a plan for
//! rumqttc's re-send queue ([`Tracker::connection_lost`]). It owns no buffer claim, no event
//! loop and reads no clock; the sink's adapter (`sink.rs`) applies what it says and is the only
//! code that touches rumqttc's internals.
//!
//! The promise: a record is acknowledged only on its own PUBACK (QoS 1) or PUBCOMP (QoS 2; QoS
//! 0 once written). Every record handed over ends in exactly one of `Ack` / `Reject`, or is
//! handed back with `Requeue` — never lost, never acknowledged twice.
//!
//! How a packet id is tied to a record: rumqttc numbers publishes in the order they were handed
//! to it and reports `Outgoing::Publish(pkid)` for each as it writes it; the tracker keeps the
//! unnumbered ones in hand-over order (`unassigned`) and the numbered ones by packet id. A QoS 2
//! packet id may be handed out again once PUBREC arrived, before PUBCOMP: the per-id queue holds
//! both, and each acknowledgement goes to the oldest entry still waiting for that kind of
//! acknowledgement. This relies on rumqttc numbering in hand-over order (rumqtt#349 calls that
//! fragile): the adapter never cancels the event loop's `poll` while records are in flight,
//! keeps re-sends ahead of fresh requests, and the property test below checks that whatever
//! order events arrive in, no record is lost or acknowledged twice.
//!
//! Reconnects: on a resumed session rumqttc re-sends unacknowledged publishes itself (written
//! again with their old packet id: not a new record). On a new session (`session_present =
//! false`) it drops them: every record in flight is requeued, in buffer order.
//!
//! A record the broker refuses by closing the connection (mosquitto's `max_packet_size` for an
//! MQTT 3.1.1 client) is isolated: see [`Tracker::connection_lost`]. An MQTT 5 broker says so
//! with a PUBACK / PUBREC reason code of 0x80 or more: that record is rejected at once.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// A record is refused by the broker when this many established connections in a row were lost
/// while it was the first unacknowledged publish written on them, each within
/// [`POISON_WINDOW`] of writing it. One: a refused record costs one lost connection among the
/// others (which starts isolation) and one sent alone, never more (issue 12: each loss is a
/// reconnect, an `offline` will and a stall for every record behind it).
pub(crate) const POISON_STRIKES: u32 = 1;
/// "Right after it was sent": how soon after a record was written a connection loss counts
/// against it.
pub(crate) const POISON_WINDOW: Duration = Duration::from_secs(5);

/// What a publish handed to rumqttc stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    /// A buffer record, by its sequence number.
    Record(u64),
    /// A status message; `true` for `online`.
    Status(bool),
}

/// The kind of a publish acknowledgement (named as the MQTT packets are).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    /// QoS 1: final.
    PubAck,
    /// QoS 2, first step: the broker took the message; PUBCOMP follows.
    PubRec,
    /// QoS 2, final.
    PubComp,
}

/// Why the tracker rejects a record for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The broker closed the connection right after it, [`POISON_STRIKES`] times in a row with
    /// nothing else in flight (an MQTT 3.1.1 broker's only way to refuse a publish).
    ClosedConnection,
    /// An MQTT 5 PUBACK / PUBREC with this failure reason code (0x80 or more).
    ReasonCode(u8),
}

impl Rejection {
    /// The `reason` label of `voxsig_bridge_sink_records_failed_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejection::ClosedConnection => "refused_by_broker",
            Rejection::ReasonCode(_) => "rejected_by_broker",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::ClosedConnection => write!(
                f,
                "the broker closed the connection right after this record, sent with nothing \
                 else in flight; a broker limit (e.g. mosquitto's max_packet_size) or an ACL \
                 refuses it"
            ),
            Rejection::ReasonCode(code) => write!(
                f,
                "the broker refused this publish with reason code {code:#04x} ({})",
                reason_code_name(*code)
            ),
        }
    }
}

/// The MQTT 5 name of a PUBACK / PUBREC failure reason code.
pub(crate) fn reason_code_name(code: u8) -> &'static str {
    match code {
        0x80 => "unspecified error",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        _ => "unknown reason code",
    }
}

/// What the adapter must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// The record was acknowledged: delivered.
    Ack(u64),
    /// The record goes back to the buffer, to be published again.
    Requeue(u64),
    /// The record is refused for good.
    Reject(u64, Rejection),
    /// The `offline` status was acknowledged: the sink may disconnect.
    OfflineAcked,
}

/// A numbered request held back and fed to rumqttc one at a time while isolating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Resend {
    Publish(u16),
    Release(u16),
}

/// One request in rumqttc's re-send queue after a connection loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// A publish; packet id 0: not numbered yet (a fresh request or QoS 0).
    Publish(u16),
    /// A QoS 2 release.
    Release(u16),
    /// Anything else (a disconnect).
    Other,
}

impl Pending {
    fn numbered(self) -> bool {
        matches!(self, Pending::Publish(p) if p != 0) || matches!(self, Pending::Release(_))
    }
}

/// Where a request of rumqttc's re-send queue goes: see [`Tracker::connection_lost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// Stays in rumqttc's queue.
    Queue,
    /// Taken out and held: fed back with [`Tracker::poll_resend`].
    Hold,
    /// Taken out for good (its record was requeued or rejected).
    Drop,
}

/// What became of the publishes in flight at a CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reconnected {
    /// Records that were numbered (written, unacknowledged) when the connection was lost.
    pub on_wire: u64,
    /// Whether the broker kept the session (rumqttc re-sends them) or not (requeued).
    pub session_present: bool,
}

impl Reconnected {
    /// The `cause` of the redelivery log line.
    pub(crate) fn cause(&self) -> &'static str {
        if self.session_present {
            "reconnect, session resumed"
        } else {
            "reconnect, session lost"
        }
    }
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

/// A numbered publish awaiting its acknowledgement.
#[derive(Debug, Clone, Copy)]
struct Numbered {
    item: Item,
    written: Written,
    /// QoS 2: PUBREC arrived, PUBCOMP awaited.
    received: bool,
}

/// Numbered publishes awaiting acknowledgement, oldest first per packet id, in a table indexed
/// by the id. rumqttc numbers from 1 to its `inflight`, so the table stops growing once each id
/// was used, and each id's queue keeps its capacity: numbering a publish then allocates nothing
/// (a map of queues allocated a queue every time an id came back into use).
#[derive(Debug, Default)]
struct ByPkid {
    queues: Vec<VecDeque<Numbered>>,
}

impl ByPkid {
    /// `numbered` becomes the newest holder of `pkid`.
    fn push(&mut self, pkid: u16, numbered: Numbered) {
        let i = usize::from(pkid);
        if i >= self.queues.len() {
            self.queues.resize_with(i + 1, VecDeque::new);
        }
        self.queues[i].push_back(numbered);
    }

    /// The holders of `pkid`, oldest first, if any.
    fn get_mut(&mut self, pkid: u16) -> Option<&mut VecDeque<Numbered>> {
        self.queues
            .get_mut(usize::from(pkid))
            .filter(|queue| !queue.is_empty())
    }

    /// Every numbered publish with its packet id and place in that id's queue.
    fn iter(&self) -> impl Iterator<Item = (u16, usize, &Numbered)> {
        (0..=u16::MAX).zip(&self.queues).flat_map(|(pkid, queue)| {
            queue
                .iter()
                .enumerate()
                .map(move |(at, numbered)| (pkid, at, numbered))
        })
    }

    /// Takes every numbered publish out (the queues keep their capacity).
    fn take_all(&mut self) -> Vec<Numbered> {
        self.queues
            .iter_mut()
            .flat_map(|queue| queue.drain(..))
            .collect()
    }
}

/// Ties packet ids to records. See the module documentation.
#[derive(Debug)]
pub(crate) struct Tracker {
    window: usize,
    /// Handed to rumqttc, no packet id yet, in hand-over order.
    unassigned: VecDeque<Item>,
    /// How many of `unassigned` (from the front) sit in rumqttc's re-send queue after a
    /// connection loss (the rest are still in its request channel).
    in_pending: usize,
    /// Numbered, awaiting acknowledgement, oldest first per packet id.
    by_pkid: ByPkid,
    /// Packet ids rumqttc is about to re-send after resuming a session.
    resends: HashSet<u16>,
    /// Publishes rumqttc holds back because their packet id collided with an unacknowledged
    /// one (rumqttc holds at most one; a queue keeps the books right whatever it reports).
    collided: VecDeque<(u16, Item)>,
    records_outstanding: usize,
    connected: bool,
    /// Connections established so far (CONNACKs).
    connection: u64,
    /// Publishes written so far (wire order).
    writes: u64,
    /// The record suspected of making the broker close the connection, and on how many
    /// consecutive connection losses it was the suspect.
    suspect: Option<(u64, u32)>,
    /// Records still to settle one at a time after a loss right after publishing (0: not
    /// isolating).
    isolating: usize,
    /// Numbered re-sends held back while isolating, fed one at a time.
    held: VecDeque<Resend>,
    /// The packet id of the held re-send handed to rumqttc and not yet acknowledged.
    fed: Option<u16>,
    actions: VecDeque<Action>,
    /// Acknowledgements for no publish in flight (duplicates, strays).
    stray_acks: u64,
}

impl Tracker {
    /// A tracker for at most `window` records in flight.
    pub(crate) fn new(window: usize) -> Self {
        Tracker {
            window: window.max(1),
            unassigned: VecDeque::new(),
            in_pending: 0,
            by_pkid: ByPkid::default(),
            resends: HashSet::new(),
            collided: VecDeque::new(),
            records_outstanding: 0,
            connected: false,
            connection: 0,
            writes: 0,
            suspect: None,
            isolating: 0,
            held: VecDeque::new(),
            fed: None,
            actions: VecDeque::new(),
            stray_acks: 0,
        }
    }

    /// The next thing to do.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// How many more records may be handed over: the window, or one at a time while isolating
    /// a record the broker may refuse, or none while held re-sends wait.
    pub(crate) fn room(&self) -> usize {
        if !self.held.is_empty() || self.fed.is_some() {
            0
        } else if self.isolating == 0 {
            self.window.saturating_sub(self.records_outstanding)
        } else {
            1usize.saturating_sub(self.records_outstanding)
        }
    }

    /// Records handed over and not yet acknowledged, rejected or requeued.
    pub(crate) fn records_outstanding(&self) -> usize {
        self.records_outstanding
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether a fresh status message may be handed over now: connected and no held re-send
    /// waiting (a new publish could otherwise be numbered with a held one's packet id).
    pub(crate) fn may_send_status(&self) -> bool {
        self.connected && self.held.is_empty() && self.fed.is_none()
    }

    /// Acknowledgements that matched no publish in flight, so far.
    #[cfg(test)]
    pub(crate) fn stray_acks(&self) -> u64 {
        self.stray_acks
    }

    /// A publish was handed to rumqttc.
    pub(crate) fn handed_over(&mut self, item: Item) {
        if let Item::Record(_) = item {
            self.records_outstanding += 1;
        }
        self.unassigned.push_back(item);
    }

    fn stamp(&mut self, now: Instant) -> Written {
        self.writes += 1;
        Written {
            connection: self.connection,
            order: self.writes,
            at: now,
        }
    }

    /// `Outgoing::Publish(pkid)`: a publish was written to the socket (0: QoS 0).
    pub(crate) fn written(&mut self, pkid: u16, now: Instant) {
        if pkid != 0 {
            if let Some(at) = self.collided.iter().position(|(p, _)| *p == pkid) {
                if let Some((_, item)) = self.collided.remove(at) {
                    self.number(pkid, item, now);
                }
                return;
            }
            if self.resends.remove(&pkid) {
                // A re-send of an unacknowledged publish (its record is counted already); the
                // re-sent one is the newest holder of its id.
                let written = self.stamp(now);
                if let Some(numbered) = self.by_pkid.get_mut(pkid).and_then(|q| q.back_mut()) {
                    numbered.written = written;
                }
                return;
            }
        }
        let Some(item) = self.unassigned.pop_front() else {
            tracing::error!(pkid, "mqtt: publish written without a request handed over");
            return;
        };
        self.in_pending = self.in_pending.saturating_sub(1);
        if pkid == 0 {
            // QoS 0: written is as delivered as it gets.
            self.settle(item);
        } else {
            self.number(pkid, item, now);
        }
    }

    fn number(&mut self, pkid: u16, item: Item, now: Instant) {
        let written = self.stamp(now);
        self.by_pkid.push(
            pkid,
            Numbered {
                item,
                written,
                received: false,
            },
        );
    }

    /// `Outgoing::AwaitAck(pkid)`: the next request's packet id is still in use; rumqttc holds
    /// it back until that id is acknowledged.
    pub(crate) fn collided(&mut self, pkid: u16) {
        if let Some(item) = self.unassigned.pop_front() {
            self.in_pending = self.in_pending.saturating_sub(1);
            self.collided.push_back((pkid, item));
        }
    }

    /// PUBACK / PUBREC / PUBCOMP for `pkid`; `refused` is an MQTT 5 failure reason code (0x80
    /// or more; 3.1.1: always `None`).
    pub(crate) fn acked(&mut self, kind: AckKind, pkid: u16, refused: Option<u8>) {
        let Some(queue) = self.by_pkid.get_mut(pkid) else {
            self.stray_acks += 1;
            tracing::debug!(
                pkid,
                ?kind,
                "mqtt: acknowledgement for no publish in flight"
            );
            return;
        };
        let at = match kind {
            // QoS 1: the oldest holder of the id; QoS 2: the oldest not yet received.
            AckKind::PubAck => queue.iter().position(|n| !n.received),
            AckKind::PubRec => queue.iter().position(|n| !n.received),
            AckKind::PubComp => queue.iter().position(|n| n.received),
        };
        let Some(at) = at else {
            self.stray_acks += 1;
            tracing::debug!(pkid, ?kind, "mqtt: acknowledgement out of step");
            return;
        };
        if kind == AckKind::PubRec && refused.is_none() {
            queue[at].received = true;
            return;
        }
        let numbered = queue.remove(at).expect("position found above");
        if self.fed == Some(pkid) {
            self.fed = None;
        }
        // A PUBCOMP after a successful PUBREC is final whatever its reason code: the broker
        // took the message at PUBREC.
        match (refused, kind, numbered.item) {
            (Some(code), AckKind::PubAck | AckKind::PubRec, Item::Record(seq)) => {
                self.records_outstanding -= 1;
                self.isolating = self.isolating.saturating_sub(1);
                self.actions
                    .push_back(Action::Reject(seq, Rejection::ReasonCode(code)));
            }
            _ => self.settle(numbered.item),
        }
    }

    fn settle(&mut self, item: Item) {
        match item {
            Item::Record(seq) => {
                self.records_outstanding -= 1;
                self.isolating = self.isolating.saturating_sub(1);
                self.actions.push_back(Action::Ack(seq));
            }
            Item::Status(false) => self.actions.push_back(Action::OfflineAcked),
            Item::Status(true) => {}
        }
    }

    fn requeue(&mut self, item: Item) {
        if let Item::Record(seq) = item {
            self.records_outstanding -= 1;
            self.actions.push_back(Action::Requeue(seq));
        }
    }

    /// CONNACK. `pending` is rumqttc's re-send queue at that moment (empty on a new session:
    /// rumqttc cleared it). On a resumed session rumqttc re-sends the numbered publishes in it;
    /// on a new one they are gone, and every record in flight is requeued (in buffer order).
    pub(crate) fn connected(&mut self, session_present: bool, pending: &[Pending]) -> Reconnected {
        self.connected = true;
        self.connection += 1;
        let on_wire = self
            .by_pkid
            .iter()
            .filter(|(_, _, n)| matches!(n.item, Item::Record(_)))
            .count() as u64;
        if session_present {
            self.resends = pending
                .iter()
                .filter_map(|r| match r {
                    Pending::Publish(p) if *p != 0 => Some(*p),
                    _ => None,
                })
                .collect();
            return Reconnected {
                on_wire,
                session_present,
            };
        }
        let lost_pending = self.in_pending.min(self.unassigned.len());
        self.resends.clear();
        // Held re-sends belong to the forgotten session.
        self.held.clear();
        self.fed = None;
        let mut lost = self.by_pkid.take_all();
        lost.sort_by_key(|n| n.written.order);
        let lost: Vec<Item> = lost
            .into_iter()
            .map(|n| n.item)
            .chain(self.unassigned.drain(..lost_pending))
            .chain(self.collided.drain(..).map(|(_, item)| item))
            .collect();
        self.in_pending = 0;
        for item in lost {
            self.requeue(item);
        }
        Reconnected {
            on_wire,
            session_present,
        }
    }

    /// The connection failed. `pending` is rumqttc's re-send queue after it moved everything
    /// unacknowledged and unsent there (the adapter first fed the events rumqttc generated
    /// before failing). Returns where each of its requests goes, in the order they must be in:
    /// numbered re-sends first (a fresh publish could otherwise be numbered with the id of a
    /// re-send still waiting behind it, and its write be taken for that re-send).
    ///
    /// A broker that refuses one record (mosquitto's `max_packet_size`, an ACL that
    /// disconnects) closes the connection as soon as it reads it; the acknowledgements it sent
    /// for the records just before are then often lost with the connection, so the culprit
    /// cannot be told from its neighbours while many publishes are in flight. So a loss right
    /// after publishing (within [`POISON_WINDOW`]) starts *isolation*: the records that were
    /// outstanding are sent again one at a time (numbered re-sends held and fed by
    /// [`Tracker::poll_resend`], fresh ones requeued and taken back through a window of one)
    /// until as many records were settled. A record on which the connection is lost
    /// [`POISON_STRIKES`] times in a row while isolated is rejected and taken out of the
    /// re-sends. An ordinary outage loses the connection once and then fails to connect (no
    /// strike); its records go through isolation once and are delivered.
    pub(crate) fn connection_lost(
        &mut self,
        pending: &[Pending],
        now: Instant,
    ) -> Vec<(usize, Place)> {
        let was_connected = std::mem::replace(&mut self.connected, false);
        let mut places = vec![Place::Queue; pending.len()];
        if was_connected {
            self.isolate(pending, &mut places, now);
        }
        self.in_pending = pending
            .iter()
            .zip(&places)
            .filter(|(r, p)| **r == Pending::Publish(0) && **p == Place::Queue)
            .count();
        let numbered = (0..pending.len()).filter(|i| pending[*i].numbered());
        let rest = (0..pending.len()).filter(|i| !pending[*i].numbered());
        numbered.chain(rest).map(|i| (i, places[i])).collect()
    }

    fn isolate(&mut self, pending: &[Pending], places: &mut [Place], now: Instant) {
        let connection = self.connection;
        let just_written = self
            .by_pkid
            .iter()
            .filter(|(_, _, n)| {
                n.written.connection == connection
                    && now.saturating_duration_since(n.written.at) <= POISON_WINDOW
            })
            .filter_map(|(pkid, i, n)| match n.item {
                Item::Record(seq) => Some((n.written.order, pkid, i, seq)),
                Item::Status(_) => None,
            })
            .min();
        if self.isolating > 0 {
            if let Some((_, pkid, at, seq)) = just_written {
                self.strike(pkid, at, seq, pending, places);
            }
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
        // Numbered re-sends are held (ahead of those held already), fresh requests go back to
        // the buffer (statuses are sent again on connect) and return through a window of one.
        self.fed = None;
        let mut held = VecDeque::new();
        let mut fresh = 0;
        let numbered_first = (0..pending.len())
            .filter(|i| pending[*i].numbered())
            .chain((0..pending.len()).filter(|i| !pending[*i].numbered()));
        for i in numbered_first {
            if places[i] == Place::Drop {
                continue;
            }
            match pending[i] {
                Pending::Publish(0) => {
                    places[i] = Place::Drop;
                    fresh += 1;
                }
                Pending::Publish(p) => {
                    places[i] = Place::Hold;
                    held.push_back(Resend::Publish(p));
                }
                Pending::Release(p) => {
                    places[i] = Place::Hold;
                    held.push_back(Resend::Release(p));
                }
                Pending::Other => {}
            }
        }
        held.append(&mut self.held);
        self.held = held;
        let fresh = fresh.min(self.unassigned.len());
        let dropped: Vec<Item> = self.unassigned.drain(..fresh).collect();
        for item in dropped {
            self.requeue(item);
        }
    }

    /// A loss while isolating, right after `seq` (queue `at` of `pkid`) was written.
    fn strike(
        &mut self,
        pkid: u16,
        at: usize,
        seq: u64,
        pending: &[Pending],
        places: &mut [Place],
    ) {
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
        let Some(queue) = self.by_pkid.get_mut(pkid) else {
            return;
        };
        if queue.remove(at).is_none() {
            return;
        }
        // rumqttc holds the unacknowledged publish to re-send it on a resumed session; it must
        // not go again.
        if let Some(i) = pending.iter().position(|r| *r == Pending::Publish(pkid)) {
            places[i] = Place::Drop;
        }
        self.held.retain(|r| *r != Resend::Publish(pkid));
        self.records_outstanding -= 1;
        self.isolating = self.isolating.saturating_sub(1);
        self.actions
            .push_back(Action::Reject(seq, Rejection::ClosedConnection));
    }

    /// While isolating: the next held re-send to hand to rumqttc, once the previous one is
    /// settled and the connection is up.
    pub(crate) fn poll_resend(&mut self) -> Option<Resend> {
        if !self.connected || self.fed.is_some() {
            return None;
        }
        let resend = self.held.pop_front()?;
        match resend {
            Resend::Publish(p) => {
                // Its write is a re-send, not a new request.
                self.resends.insert(p);
                self.fed = Some(p);
            }
            Resend::Release(p) => self.fed = Some(p),
        }
        Some(resend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use Action::{Ack, Reject, Requeue};
    use Item::Record;

    /// One input to the tracker, as the tests spell it.
    #[derive(Debug, Clone)]
    enum In {
        Hand(u64),
        Status(bool),
        Write(u16),
        Collide(u16),
        PubAck(u16),
        PubAckRefused(u16, u8),
        PubRec(u16),
        PubRecRefused(u16, u8),
        PubComp(u16),
        ConnAck(bool, Vec<Pending>),
        Lost(Vec<Pending>),
        /// Time passes (ms).
        Wait(u64),
    }

    struct Run {
        tracker: Tracker,
        now: Instant,
        actions: Vec<Action>,
        plans: Vec<Vec<(usize, Place)>>,
    }

    impl Run {
        fn new(window: usize) -> Self {
            let mut run = Run {
                tracker: Tracker::new(window),
                now: Instant::now(),
                actions: Vec::new(),
                plans: Vec::new(),
            };
            run.feed(&[In::ConnAck(false, vec![])]);
            run
        }

        fn feed(&mut self, inputs: &[In]) -> &mut Self {
            for input in inputs {
                let t = &mut self.tracker;
                match input.clone() {
                    In::Hand(seq) => t.handed_over(Record(seq)),
                    In::Status(online) => t.handed_over(Item::Status(online)),
                    In::Write(p) => t.written(p, self.now),
                    In::Collide(p) => t.collided(p),
                    In::PubAck(p) => t.acked(AckKind::PubAck, p, None),
                    In::PubAckRefused(p, c) => t.acked(AckKind::PubAck, p, Some(c)),
                    In::PubRec(p) => t.acked(AckKind::PubRec, p, None),
                    In::PubRecRefused(p, c) => t.acked(AckKind::PubRec, p, Some(c)),
                    In::PubComp(p) => t.acked(AckKind::PubComp, p, None),
                    In::ConnAck(sp, pending) => {
                        t.connected(sp, &pending);
                    }
                    In::Lost(pending) => {
                        let plan = t.connection_lost(&pending, self.now);
                        self.plans.push(plan);
                    }
                    In::Wait(ms) => self.now += Duration::from_millis(ms),
                }
                while let Some(action) = self.tracker.poll_action() {
                    self.actions.push(action);
                }
            }
            self
        }

        fn take(&mut self) -> Vec<Action> {
            std::mem::take(&mut self.actions)
        }
    }

    /// Table: inputs after a first CONNACK (new session), the actions expected, and the records
    /// still outstanding after.
    #[test]
    fn table() {
        use In::*;
        let p = Pending::Publish;
        let mut cases: Vec<(&str, Vec<In>, Vec<Action>, usize)> =
            vec![
            (
                "QoS 1: each PUBACK acknowledges its own record",
                vec![Hand(1), Hand(2), Write(1), Write(2), PubAck(2), PubAck(1)],
                vec![Ack(2), Ack(1)],
                0,
            ),
            (
                "QoS 0: written is delivered",
                vec![Hand(1), Write(0)],
                vec![Ack(1)],
                0,
            ),
            (
                "QoS 1: a packet id reused after its PUBACK is the new record's",
                vec![Hand(1), Write(1), PubAck(1), Hand(2), Write(1), PubAck(1)],
                vec![Ack(1), Ack(2)],
                0,
            ),
            (
                "QoS 2: the id is reused after PUBREC, before PUBCOMP; each step to its holder",
                vec![
                    Hand(1),
                    Write(1),
                    PubRec(1),
                    Hand(2),
                    Write(1),
                    PubComp(1),
                    PubRec(1),
                    PubComp(1),
                ],
                vec![Ack(1), Ack(2)],
                0,
            ),
            (
                "QoS 2: PUBREC alone acknowledges nothing",
                vec![Hand(1), Write(1), PubRec(1)],
                vec![],
                1,
            ),
            (
                "collision: the held-back publish is numbered when written after the ack",
                vec![
                    Hand(1),
                    Hand(2),
                    Write(1),
                    Collide(1),
                    PubAck(1),
                    Write(1),
                    PubAck(1),
                ],
                vec![Ack(1), Ack(2)],
                0,
            ),
            (
                "duplicate and stray acks change nothing",
                vec![Hand(1), Write(1), PubAck(1), PubAck(1), PubAck(7), PubComp(1)],
                vec![Ack(1)],
                0,
            ),
            (
                "MQTT 5 PUBACK with a failure reason: rejected, not acknowledged",
                vec![Hand(1), Hand(2), Write(1), Write(2), PubAckRefused(1, 0x87), PubAck(2)],
                vec![Reject(1, Rejection::ReasonCode(0x87)), Ack(2)],
                0,
            ),
            (
                "MQTT 5 PUBREC with a failure reason: rejected (no PUBCOMP follows)",
                vec![Hand(1), Write(1), PubRecRefused(1, 0x97), PubComp(1)],
                vec![Reject(1, Rejection::ReasonCode(0x97))],
                0,
            ),
            (
                "session lost on reconnect: everything in flight requeued, in order",
                vec![
                    Hand(1),
                    Hand(2),
                    Hand(3),
                    Hand(4),
                    Write(3),
                    Write(1),
                    Write(2),
                    Wait(6_000),
                    Lost(vec![p(1), p(3), p(2), p(0)]),
                    ConnAck(false, vec![]),
                ],
                vec![Requeue(1), Requeue(2), Requeue(3), Requeue(4)],
                0,
            ),
            (
                "session lost: a collided publish is requeued too",
                vec![
                    Hand(1),
                    Hand(2),
                    Write(1),
                    Collide(1),
                    Wait(6_000),
                    Lost(vec![p(1)]),
                    ConnAck(false, vec![]),
                ],
                vec![Requeue(1), Requeue(2)],
                0,
            ),
            (
                "session kept: rumqttc re-sends, nothing requeued, re-sends are not new records",
                vec![
                    Hand(1),
                    Hand(2),
                    Write(1),
                    Wait(6_000),
                    Lost(vec![p(1), p(0)]),
                    ConnAck(true, vec![p(1), p(0)]),
                    Write(1),
                    Write(2),
                    PubAck(1),
                    PubAck(2),
                ],
                vec![Ack(1), Ack(2)],
                0,
            ),
        ];
        cases.extend(table_by_pkid());
        for (name, inputs, expected, outstanding) in cases {
            let mut run = Run::new(10);
            run.feed(&inputs);
            assert_eq!(run.take(), expected, "{name}");
            assert_eq!(run.tracker.records_outstanding(), outstanding, "{name}");
        }
    }

    /// Cases for the table of packet ids: ids reused round after round, acknowledgements out
    /// of order across ids, ids far beyond those in use.
    #[allow(clippy::type_complexity)]
    fn table_by_pkid() -> Vec<(&'static str, Vec<In>, Vec<Action>, usize)> {
        use In::*;
        let p = Pending::Publish;
        vec![
            (
                "ids 1 and 2 reused three times: each PUBACK acknowledges the id's current record",
                vec![
                    Hand(1),
                    Hand(2),
                    Write(1),
                    Write(2),
                    PubAck(1),
                    PubAck(2),
                    Hand(3),
                    Hand(4),
                    Write(1),
                    Write(2),
                    PubAck(2),
                    PubAck(1),
                    Hand(5),
                    Write(1),
                    PubAck(1),
                ],
                vec![Ack(1), Ack(2), Ack(4), Ack(3), Ack(5)],
                0,
            ),
            (
                "acknowledgements in reverse order across ids",
                vec![
                    Hand(1),
                    Hand(2),
                    Hand(3),
                    Write(3),
                    Write(2),
                    Write(1),
                    PubAck(1),
                    PubAck(2),
                    PubAck(3),
                ],
                vec![Ack(3), Ack(2), Ack(1)],
                0,
            ),
            (
                "a PUBACK for an id far beyond those in use is a stray",
                vec![Hand(1), Write(1), PubAck(65_535), PubAck(1)],
                vec![Ack(1)],
                0,
            ),
            (
                "QoS 2 on a reused id, then the session lost: requeued in write order",
                vec![
                    Hand(1),
                    Write(2),
                    PubRec(2),
                    Hand(2),
                    Write(2),
                    Hand(3),
                    Write(1),
                    Wait(6_000),
                    Lost(vec![p(2), p(1)]),
                    ConnAck(false, vec![]),
                ],
                vec![Requeue(1), Requeue(2), Requeue(3)],
                0,
            ),
        ]
    }

    /// Numbering reuses the table: it grows to the highest id used and no further, and an id's
    /// queue keeps its storage after its publish is acknowledged.
    #[test]
    fn numbering_reuses_the_table() {
        let mut run = Run::new(4);
        let mut seq = 0;
        for _ in 0..1_000 {
            for pkid in 1..=4u16 {
                seq += 1;
                run.feed(&[In::Hand(seq), In::Write(pkid)]);
            }
            run.feed(&[In::PubAck(3), In::PubAck(1), In::PubAck(4), In::PubAck(2)]);
        }
        assert_eq!(run.take().len(), 4_000, "every record acknowledged");
        assert_eq!(run.tracker.records_outstanding(), 0);
        let queues = &run.tracker.by_pkid.queues;
        assert_eq!(queues.len(), 5, "ids 0..=4");
        assert!(queues[1..].iter().all(|q| q.is_empty() && q.capacity() > 0));
        run.feed(&[In::PubAck(60_000)]);
        assert_eq!(
            run.tracker.by_pkid.queues.len(),
            5,
            "a stray ack adds nothing"
        );
    }

    #[test]
    fn stray_acks_are_counted() {
        let mut run = Run::new(4);
        run.feed(&[In::PubAck(3), In::Hand(1), In::Write(1), In::PubComp(1)]);
        assert_eq!(run.tracker.stray_acks(), 2);
        assert!(run.take().is_empty());
    }

    #[test]
    fn the_window_limits_hand_over() {
        let mut run = Run::new(2);
        assert_eq!(run.tracker.room(), 2);
        run.feed(&[In::Hand(1), In::Status(true), In::Hand(2)]);
        assert_eq!(run.tracker.room(), 0, "status messages do not count");
        run.feed(&[In::Write(1), In::Write(2), In::Write(3), In::PubAck(1)]);
        assert_eq!(run.tracker.room(), 1);
    }

    #[test]
    fn a_lost_connection_puts_resends_before_fresh_requests() {
        let mut run = Run::new(10);
        // A loss long after writing: no isolation, only reordering.
        run.feed(&[In::Hand(1), In::Hand(2), In::Write(1), In::Wait(6_000)]);
        run.feed(&[In::Lost(vec![
            Pending::Publish(0),
            Pending::Other,
            Pending::Publish(1),
        ])]);
        assert_eq!(
            run.plans[0],
            vec![(2, Place::Queue), (0, Place::Queue), (1, Place::Queue)]
        );
        assert!(run.take().is_empty());
    }

    /// A broker that closes the connection on one record: isolated (re-sent one at a time),
    /// rejected after POISON_STRIKES losses right after it, the others delivered.
    #[test]
    fn a_record_the_broker_refuses_is_isolated_and_rejected() {
        let mut run = Run::new(10);
        let p = Pending::Publish;
        // 1 acked, 2 (the poison) and 3 written, 4 still fresh when the broker drops us.
        run.feed(&[
            In::Hand(1),
            In::Hand(2),
            In::Hand(3),
            In::Hand(4),
            In::Write(1),
            In::Write(2),
            In::Write(3),
            In::PubAck(1),
            In::Lost(vec![p(2), p(3), p(0)]),
        ]);
        assert_eq!(
            run.take(),
            vec![Ack(1), Requeue(4)],
            "the fresh one goes back"
        );
        assert_eq!(
            run.plans.pop().unwrap(),
            vec![(0, Place::Hold), (1, Place::Hold), (2, Place::Drop)]
        );
        assert_eq!(run.tracker.room(), 0, "held re-sends go first");
        for strike in 1..=POISON_STRIKES {
            run.feed(&[In::ConnAck(true, vec![])]);
            assert_eq!(run.tracker.poll_resend(), Some(Resend::Publish(2)));
            assert_eq!(run.tracker.poll_resend(), None, "one at a time");
            run.feed(&[In::Write(2), In::Lost(vec![p(2)])]);
            let plan = run.plans.pop().unwrap();
            if strike < POISON_STRIKES {
                assert_eq!(plan, vec![(0, Place::Hold)], "strike {strike}");
                assert!(run.take().is_empty());
            } else {
                assert_eq!(plan, vec![(0, Place::Drop)]);
                assert_eq!(run.take(), vec![Reject(2, Rejection::ClosedConnection)]);
            }
        }
        // The rest goes through: 3 re-sent alone, then fresh records one at a time.
        run.feed(&[In::ConnAck(true, vec![])]);
        assert_eq!(run.tracker.poll_resend(), Some(Resend::Publish(3)));
        run.feed(&[In::Write(3), In::PubAck(3)]);
        assert_eq!(run.take(), vec![Ack(3)]);
        assert_eq!(run.tracker.room(), 1, "isolating the requeued record");
        run.feed(&[In::Hand(4), In::Write(4), In::PubAck(4)]);
        assert_eq!(run.take(), vec![Ack(4)]);
        assert_eq!(run.tracker.room(), 10, "isolation over");
    }

    /// An outage (connection lost once, then refused) re-sends everything once, rejects nothing.
    #[test]
    fn an_outage_rejects_nothing() {
        let mut run = Run::new(10);
        let p = Pending::Publish;
        run.feed(&[
            In::Hand(1),
            In::Hand(2),
            In::Write(1),
            In::Write(2),
            In::Lost(vec![p(1), p(2)]),
            In::Wait(10_000),
            In::ConnAck(true, vec![]),
        ]);
        while let Some(Resend::Publish(pkid)) = run.tracker.poll_resend() {
            run.feed(&[In::Write(pkid), In::PubAck(pkid)]);
        }
        assert_eq!(run.take(), vec![Ack(1), Ack(2)]);
        assert_eq!(run.tracker.records_outstanding(), 0);
    }

    #[test]
    fn a_session_lost_while_isolating_requeues_the_held_records() {
        let mut run = Run::new(10);
        let p = Pending::Publish;
        run.feed(&[
            In::Hand(1),
            In::Hand(2),
            In::Write(1),
            In::Write(2),
            In::Lost(vec![p(1), p(2)]),
            In::ConnAck(false, vec![]),
        ]);
        assert_eq!(run.take(), vec![Requeue(1), Requeue(2)]);
        assert_eq!(run.tracker.poll_resend(), None, "held re-sends forgotten");
        assert_eq!(run.tracker.room(), 1, "taken back one at a time");
    }

    #[test]
    fn rejections_name_their_reason() {
        assert_eq!(Rejection::ClosedConnection.as_str(), "refused_by_broker");
        let refused = Rejection::ReasonCode(0x87);
        assert_eq!(refused.as_str(), "rejected_by_broker");
        assert!(refused.to_string().contains("0x87 (not authorized)"));
    }

    fn input() -> impl Strategy<Value = In> {
        let pkid = 1u16..=4;
        let pending = prop::collection::vec(
            prop_oneof![
                (0u16..=4).prop_map(Pending::Publish),
                (1u16..=4).prop_map(Pending::Release),
                Just(Pending::Other),
            ],
            0..6,
        );
        prop_oneof![
            3 => Just(In::Hand(0)), // seq filled in by the harness
            1 => any::<bool>().prop_map(In::Status),
            4 => (0u16..=4).prop_map(In::Write),
            1 => pkid.clone().prop_map(In::Collide),
            3 => pkid.clone().prop_map(In::PubAck),
            1 => (pkid.clone(), 0x80u8..=0xff).prop_map(|(p, c)| In::PubAckRefused(p, c)),
            1 => pkid.clone().prop_map(In::PubRec),
            1 => (pkid.clone(), 0x80u8..=0xff).prop_map(|(p, c)| In::PubRecRefused(p, c)),
            1 => pkid.prop_map(In::PubComp),
            1 => (any::<bool>(), pending.clone()).prop_map(|(s, p)| In::ConnAck(s, p)),
            1 => pending.prop_map(In::Lost),
            1 => (0u64..8_000).prop_map(In::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the interleaving (including inputs no broker would send), every record
        /// handed over ends in exactly one of ack / reject, or is requeued — never lost, never
        /// acknowledged twice — and a final new session hands back everything still in flight.
        #[test]
        fn no_record_is_lost_or_settled_twice(inputs in prop::collection::vec(input(), 0..80)) {
            let mut run = Run::new(3);
            let mut next_seq = 0u64;
            // Records the tracker holds (handed over, not settled or requeued).
            let mut held = std::collections::BTreeSet::new();
            let mut requeued = Vec::new();
            let mut settled = std::collections::BTreeSet::new();
            let mut check = |actions: Vec<Action>,
                             held: &mut std::collections::BTreeSet<u64>,
                             requeued: &mut Vec<u64>|
             -> Result<(), TestCaseError> {
                for action in actions {
                    match action {
                        Ack(seq) | Reject(seq, _) => {
                            prop_assert!(held.remove(&seq), "{action:?} of a record not in flight");
                            prop_assert!(settled.insert(seq), "{action:?}: settled twice");
                        }
                        Requeue(seq) => {
                            prop_assert!(held.remove(&seq), "{action:?} of a record not in flight");
                            requeued.push(seq);
                        }
                        Action::OfflineAcked => {}
                    }
                }
                Ok(())
            };
            for input in inputs {
                let input = match input {
                    In::Hand(_) => {
                        // The buffer hands a requeued record out again before new ones.
                        let seq = if requeued.is_empty() {
                            next_seq += 1;
                            next_seq
                        } else {
                            requeued.remove(0)
                        };
                        held.insert(seq);
                        In::Hand(seq)
                    }
                    other => other,
                };
                run.feed(&[input]);
                while run.tracker.poll_resend().is_some() {}
                check(run.take(), &mut held, &mut requeued)?;
                prop_assert_eq!(run.tracker.records_outstanding(), held.len());
            }
            // The connection goes with every numbered publish and fresh request pending, and
            // the broker forgot the session: nothing may stay behind.
            let fresh = run.tracker.unassigned.len();
            let mut pending: Vec<Pending> = run
                .tracker
                .by_pkid
                .iter()
                .filter(|(_, at, _)| *at == 0)
                .map(|(p, _, _)| Pending::Publish(p))
                .collect();
            pending.extend(std::iter::repeat_n(Pending::Publish(0), fresh));
            run.feed(&[In::Lost(pending), In::ConnAck(false, vec![])]);
            check(run.take(), &mut held, &mut requeued)?;
            prop_assert!(held.is_empty(), "still in flight after a new session: {held:?}");
            prop_assert_eq!(run.tracker.records_outstanding(), 0);
        }
    }
}
