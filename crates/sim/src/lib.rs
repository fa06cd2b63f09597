//! voxsig-sim: a Voxsig-compatible ActionCable server (`/cable`) for demos, tests and
//! benchmarks, so the bridge can run without a Voxsig account.
//!
//! It speaks the platform's `RoomChannel` protocol with the frame shapes of a real Rails
//! ActionCable server (welcome, pings, confirm/reject, silent refusals, presence), generates
//! every catalogued event with realistic payloads for a world of accounts, users and contacts,
//! records what it sent (the ground truth), and injects faults.
//!
//! On the same port it serves the platform's REST catch-up surface (`GET /api/v1/profile`,
//! conversations with `updated_within`/`status`, message pages with `after`/`before`),
//! authenticated by each user's `api_access_token` and consistent with the events sent: every
//! `message.created` is stored before it is broadcast (see the `rest` and `store` modules and the
//! crate README). Faults include the platform's silent token rotation
//! ([`Faults::rotate_token_silently`]), an outage ([`Faults::outage`]) and REST errors
//! ([`Faults::rest_fault`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use voxsig_protocol::EventKind;
//! use voxsig_sim::{EventSpec, Sim, SimConfig};
//!
//! # async fn demo() -> Result<(), voxsig_sim::SimError> {
//! let sim = Sim::start(SimConfig::default()).await?;
//! let url = sim.url(); // ws://127.0.0.1:PORT/cable
//! let world = sim.world(); // accounts, users, contacts and their tokens
//! // ... connect a client and subscribe with world.user_identifier(..) ...
//! sim.wait_for_subscriptions(1, Duration::from_secs(5)).await?;
//! let sent = sim.emit(EventSpec::new(1, EventKind::MessageCreated)).await?;
//! sim.wait_for_delivery(Duration::from_secs(5)).await?;
//! let truth = sim.ground_truth();
//! assert_eq!(truth.find(1, sent.sim_seq).map(|e| e.deliveries.len()), Some(sent.frames));
//! sim.faults().disconnect("server_restart", true).await;
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
mod config;
mod connection;
mod door;
mod emit;
mod error;
mod faults;
mod hub;
mod payload;
mod rest;
mod rng;
mod server;
mod shared;
mod store;
mod truth;
mod world;

pub use config::{Refusal, SimConfig, WorldSource};
pub use connection::SUBPROTOCOL;
pub use emit::{
    EmitReport, EmittedEvent, EventSpec, Rate, RunHandle, RunSpec, Selection, StopReason,
};
pub use error::{Result, SimError};
pub use faults::{Faults, Malformed};
pub use hub::Stats;
pub use rest::{Endpoint, FaultSpan, RestFault, RestFaultSpec, RestStats};
pub use store::{
    ConversationCounts, ConversationStatus, MessageQuery, Sender, StoreLimits, StoreStats,
    StoredMessage,
};
pub use truth::{Delivery, DeliveryStatus, GroundTruth, Origin, PresenceRecord, SentEvent};
pub use world::{
    Account, BridgeAccount, Contact, ExportOptions, Role, TokenSelection, User, World, WorldSpec,
};

use shared::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use world::WorldState;

/// A running simulator. Clones share it; it shuts down when [`Sim::shutdown`] is called or the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct Sim {
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
}

/// Shuts the simulator down when the last [`Sim`] goes.
#[derive(Debug)]
struct Guard(Arc<Shared>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
        for id in self.0.hub.socket_ids() {
            self.0.hub.abort_socket(id);
        }
    }
}

impl Sim {
    /// Builds the world, binds the listener (and the admin endpoint) and starts serving.
    pub async fn start(config: SimConfig) -> Result<Sim> {
        let world = match &config.world {
            WorldSource::Generate(spec) => World::generate(spec)?,
            WorldSource::Given(world) => {
                let mut world = world.clone();
                world.fill_api_tokens();
                world.validate()?;
                world
            }
        };
        let listener = server::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let admin = match config.admin_bind {
            Some(a) => Some(server::bind(a).await?),
            None => None,
        };
        let (rest_tx, rest_rx) = tokio::sync::mpsc::channel(1024);
        let shared = Arc::new(Shared::new(config, addr, WorldState::new(world), rest_tx));
        rest::spawn(shared.clone(), door::RestListener { rx: rest_rx, addr });
        *shared.listener.lock().await = Some(server::spawn_accept(&shared, listener));
        server::spawn_pings(shared.clone());
        if let Some(admin) = admin {
            *truth::lock(&shared.admin_addr) = Some(admin.local_addr()?);
            admin::spawn(shared.clone(), admin);
        }
        tracing::info!(%addr, "voxsig-sim listening");
        Ok(Sim {
            _guard: Arc::new(Guard(shared.clone())),
            shared,
        })
    }

    /// The WebSocket listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `ws://ADDR/cable`.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.shared.addr, self.shared.config.path)
    }

    /// `http://ADDR`: the REST surface (`/api/v1/...`), on the WebSocket's port, as a bridge
    /// derives it from the cable URL's origin.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Every message created and still held (see [`StoreLimits`]), in id order, optionally of
    /// one account: the ground truth of the REST surface.
    pub fn messages(&self, account: Option<u64>) -> Vec<StoredMessage> {
        truth::lock(&self.shared.store).all_messages(account, 0, u64::MAX)
    }

    /// The messages created in `[from, to)` (wall clock), optionally of one account, in id
    /// order.
    pub fn messages_between(
        &self,
        account: Option<u64>,
        from: std::time::SystemTime,
        to: std::time::SystemTime,
    ) -> Vec<StoredMessage> {
        let ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        truth::lock(&self.shared.store).all_messages(account, ms(from), ms(to))
    }

    /// A conversation's current status, if the world has it.
    pub fn conversation_status(&self, conversation_id: u64) -> Option<ConversationStatus> {
        truth::lock(&self.shared.store)
            .conversation(conversation_id)
            .map(|c| c.status)
    }

    /// `http://ADDR` of the admin endpoint, if it runs.
    pub fn admin_url(&self) -> Option<String> {
        truth::lock(&self.shared.admin_addr).map(|a| format!("http://{a}"))
    }

    /// A copy of the world as it is now (tokens change when rotated).
    pub fn world(&self) -> World {
        self.shared.world().world.clone()
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> Faults {
        Faults {
            shared: self.shared.clone(),
        }
    }

    /// Emits one event to every subscription entitled to it.
    pub async fn emit(&self, spec: EventSpec) -> Result<EmittedEvent> {
        self.shared.emit(&spec).await
    }

    /// Emits `count` events from `selection` as fast as the sockets take them.
    pub async fn burst(&self, count: u64, selection: &Selection) -> Result<EmitReport> {
        self.shared.burst(count, selection).await
    }

    /// Starts a steady run in the background; see [`RunHandle`].
    pub fn run(&self, spec: RunSpec) -> Result<RunHandle> {
        self.shared.run(spec)
    }

    /// Everything sent so far, with the exact `data` bytes and each frame's delivery status.
    pub fn ground_truth(&self) -> GroundTruth {
        self.shared.truth.snapshot(true, 0, usize::MAX, None)
    }

    /// Every `update_presence` received, in order.
    pub fn presence_log(&self) -> Vec<PresenceRecord> {
        self.shared.truth.presence_log(None)
    }

    /// The `update_presence` messages received for one token.
    pub fn presence_of(&self, token: &str) -> Vec<PresenceRecord> {
        self.shared.truth.presence_log(Some(token))
    }

    /// Current sockets and subscriptions, and totals.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Waits until `ready(stats)` holds, up to `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Stats) -> bool,
    ) -> Result<Stats> {
        let mut changes = self.shared.hub.gauges.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if ready(&stats) {
                return Ok(stats);
            }
            // Gauges notify; counters are polled.
            let poll = tokio::time::sleep(Duration::from_millis(2));
            tokio::select! {
                _ = changes.changed() => {}
                _ = poll => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(SimError::Timeout(timeout, what.to_owned()));
                }
            }
        }
    }

    /// Waits until at least `n` confirmed subscriptions are held.
    pub async fn wait_for_subscriptions(&self, n: usize, timeout: Duration) -> Result<Stats> {
        self.wait_until(&format!("{n} subscriptions"), timeout, |s| {
            s.subscriptions >= n
        })
        .await
    }

    /// Waits until exactly `n` sockets are open.
    pub async fn wait_for_sockets(&self, n: usize, timeout: Duration) -> Result<Stats> {
        self.wait_until(&format!("{n} sockets"), timeout, |s| s.sockets == n)
            .await
    }

    /// Waits until every event frame queued so far has been written or dropped.
    pub async fn wait_for_delivery(&self, timeout: Duration) -> Result<Stats> {
        self.wait_until("queued frames to be written", timeout, |s| {
            s.event_frames_queued == s.event_frames_written + s.event_frames_dropped
        })
        .await
    }

    /// Stops everything: runs, listener, admin endpoint, every socket.
    pub async fn shutdown(self) {
        self.shared.shutdown.send_replace(true);
        let _ = self.shared.stop_listener().await;
        self.faults().drop_connections();
        let _ = self.wait_for_sockets(0, Duration::from_secs(2)).await;
    }
}
