//! Fault injection, in process (this handle) and over the admin endpoint.

use crate::config::Refusal;
use crate::error::{Result, SimError};
use crate::hub::Outgoing;
use crate::payload::push_str;
use crate::rest::RestFaultSpec;
use crate::rng::Rng;
use crate::shared::Shared;
use crate::truth::lock;
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

/// A malformed frame to send to every socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "size")]
pub enum Malformed {
    /// A text frame that is not JSON (a truncated event).
    InvalidJson,
    /// Valid JSON with a `type` ActionCable does not have.
    UnknownType,
    /// A valid JSON text frame of this many bytes.
    Oversize(usize),
    /// A binary frame.
    Binary,
}

impl Malformed {
    fn frame(self) -> Outgoing {
        let text = |s: String| Outgoing::Text(Utf8Bytes::from(s));
        match self {
            Malformed::InvalidJson => text(
                r#"{"identifier":"{\"channel\":\"RoomChannel\"}","message":{"event":"message.created","data":{"id":"#
                    .to_owned(),
            ),
            Malformed::UnknownType => {
                text(r#"{"type":"surprise","message":"unknown frame type"}"#.to_owned())
            }
            Malformed::Oversize(size) => {
                let head = r#"{"type":"oversize","message":""#;
                let pad = size.saturating_sub(head.len() + 2);
                let mut s = String::with_capacity(size.max(head.len() + 2));
                s.push_str(head);
                s.extend(std::iter::repeat_n('x', pad));
                s.push_str("\"}");
                text(s)
            }
            Malformed::Binary => Outgoing::Binary(Bytes::from_static(b"\x00\x01binary frame\xff")),
        }
    }
}

/// Injects faults into a running simulator. Cheap to clone; every method acts at once.
#[derive(Debug, Clone)]
pub struct Faults {
    pub(crate) shared: Arc<Shared>,
}

impl Faults {
    /// Drops every connection abruptly (the TCP connection closes without a close frame).
    /// Returns how many.
    pub fn drop_connections(&self) -> usize {
        let ids = self.shared.hub.socket_ids();
        ids.iter()
            .filter(|id| self.shared.hub.abort_socket(**id))
            .count()
    }

    /// Drops one connection abruptly; false if it is not open.
    pub fn drop_connection(&self, connection: u64) -> bool {
        self.shared.hub.abort_socket(connection)
    }

    /// Sends `{"type":"disconnect","reason":…,"reconnect":…}` to every socket, after the frames
    /// already queued, then a close frame with code 1000, and closes. Returns how many sockets.
    pub async fn disconnect(&self, reason: &str, reconnect: bool) -> usize {
        let mut frame = String::from("{\"type\":\"disconnect\",\"reason\":");
        push_str(&mut frame, reason);
        frame.push_str(if reconnect {
            ",\"reconnect\":true}"
        } else {
            ",\"reconnect\":false}"
        });
        let frame = Utf8Bytes::from(frame);
        self.to_every_socket(|| Outgoing::Disconnect(frame.clone()))
            .await
    }

    async fn to_every_socket(&self, frame: impl Fn() -> Outgoing) -> usize {
        let mut sent = 0;
        for (_, tx) in self.shared.hub.socket_queues() {
            if tx
                .send_timeout(frame(), self.shared.config.send_timeout)
                .await
                .is_ok()
            {
                sent += 1;
            }
        }
        sent
    }

    /// Stops sending pings (the connection goes stale without closing).
    pub fn stop_pings(&self) {
        self.shared.knobs.set_pings(false);
    }

    /// Sends pings again.
    pub fn resume_pings(&self) {
        self.shared.knobs.set_pings(true);
    }

    /// Changes the ping interval (takes effect at once).
    pub fn set_ping_interval(&self, interval: Duration) {
        self.shared.knobs.set_ping_interval(interval);
    }

    /// Sends a malformed frame to every socket; returns how many.
    pub async fn send_malformed(&self, kind: Malformed) -> usize {
        self.to_every_socket(|| kind.frame()).await
    }

    /// Makes every socket writer wait this long before each frame (and flush each frame);
    /// `None` restores full speed.
    pub fn slow_writer(&self, per_frame: Option<Duration>) {
        self.shared.knobs.set_slow_writer(per_frame);
    }

    /// Refuses every new subscription this way (`None`: back to normal rules).
    pub fn refuse_subscriptions(&self, how: Option<Refusal>) {
        self.shared.knobs.set_refuse_all(how);
    }

    /// What an unknown token or a wrong account/user gets from now on.
    pub fn set_refusal(&self, how: Refusal) {
        self.shared.knobs.set_refusal(how);
    }

    /// Stops the listener: new connections are refused; open ones stay.
    pub async fn stop_listener(&self) -> Result<()> {
        self.shared.stop_listener().await
    }

    /// Starts the listener again on the same address.
    pub async fn start_listener(&self) -> Result<()> {
        self.shared.start_listener().await
    }

    /// Replaces a token by a new random one and returns it. The old token is refused from now
    /// on and its existing subscriptions receive no more events (the platform broadcasts to the
    /// current token's stream).
    pub fn rotate_token(&self, old: &str) -> Result<String> {
        let n = self.shared.rotations.fetch_add(1, Ordering::Relaxed);
        let mut rng = Rng::new(self.shared.config.seed ^ n.rotate_left(17) ^ 0xA11CE);
        let mut state = self.shared.world_mut();
        loop {
            let new = rng.token(24);
            match state.rotate(old, new.clone()) {
                Err(SimError::TokenInUse) => continue,
                other => return other.map(|_| new),
            }
        }
    }

    /// Replaces a token by `new`.
    pub fn rotate_token_to(&self, old: &str, new: &str) -> Result<()> {
        self.shared.world_mut().rotate(old, new.to_owned())
    }

    /// Rotates a user's pubsub token as the platform does when the user changes their password,
    /// and returns the new one: nothing is sent to open sockets (no frame, no `user:logout`), the
    /// old token's subscriptions just stop receiving, and a new `subscribe` with the old token
    /// gets neither confirm nor reject (whatever [`Faults::set_refusal`] says; the platform's
    /// channel raises). `GET /api/v1/profile` returns the new token.
    pub fn rotate_token_silently(&self, old: &str) -> Result<String> {
        let new = self.rotate_token(old)?;
        lock(&self.shared.retired).insert(old.to_owned());
        Ok(new)
    }

    /// [`Faults::rotate_token_silently`] to a chosen token.
    pub fn rotate_token_silently_to(&self, old: &str, new: &str) -> Result<()> {
        self.rotate_token_to(old, new)?;
        lock(&self.shared.retired).insert(old.to_owned());
        Ok(())
    }

    /// An outage: drops every socket (no close frame) and answers WebSocket upgrades 503 (with
    /// `Retry-After`) for `duration`, while events keep being generated and stored (the REST
    /// surface keeps answering). Returns how many sockets were dropped.
    pub fn outage(&self, duration: Duration) -> usize {
        self.shared
            .knobs
            .set_outage(Some(tokio::time::Instant::now() + duration));
        self.drop_connections()
    }

    /// Ends an outage early.
    pub fn end_outage(&self) {
        self.shared.knobs.set_outage(None);
    }

    /// Whether an outage refuses upgrades now.
    pub fn in_outage(&self) -> bool {
        self.shared.knobs.outage_left().is_some()
    }

    /// Adds a REST fault (429 with `Retry-After`, 500, or slow answers) for the next N requests
    /// or for a period, on one endpoint or all. Several may be in force; the oldest matching one
    /// applies to each request.
    pub fn rest_fault(&self, spec: RestFaultSpec) {
        lock(&self.shared.rest.plan).add(spec, tokio::time::Instant::now());
    }

    /// Removes every REST fault.
    pub fn clear_rest_faults(&self) {
        lock(&self.shared.rest.plan).clear();
    }
}
