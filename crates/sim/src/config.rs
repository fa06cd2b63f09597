//! How a simulator starts. Fields that faults need to change at run time (ping interval, refusal
//! mode) have setters on [`crate::Faults`].

use crate::store::StoreLimits;
use crate::world::{World, WorldSpec};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// What the server does with a subscription it will not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Refusal {
    /// No answer at all, as the real platform (its channel raises inside `subscribed`, so Rails
    /// sends neither confirm nor reject). The identifier stays held: a repeated `subscribe` with
    /// the same identifier on that socket is ignored until `unsubscribe`.
    #[default]
    Silent,
    /// `reject_subscription`, as a well-behaved ActionCable application would answer.
    Reject,
}

/// Where the world comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorldSource {
    /// Generated from a spec.
    Generate(WorldSpec),
    /// Given as is.
    Given(World),
}

impl Default for WorldSource {
    fn default() -> Self {
        WorldSource::Generate(WorldSpec::default())
    }
}

/// Everything [`crate::Sim::start`] needs. `SimConfig::default()` is a small generated world on
/// `127.0.0.1:0` with an admin endpoint, 3 s pings and silent refusals.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where the WebSocket listener binds (`127.0.0.1:0` picks a free port).
    pub bind: SocketAddr,
    /// Where the admin HTTP endpoint binds; `None` for no admin endpoint.
    pub admin_bind: Option<SocketAddr>,
    /// The WebSocket path (`/cable`); any other path is answered 404.
    pub path: String,
    /// The accounts, users and contacts.
    pub world: WorldSource,
    /// Interval between `ping` frames (Rails: 3 s).
    pub ping_interval: Duration,
    /// What an unknown token or a wrong account/user gets.
    pub refusal: Refusal,
    /// Like the platform, which calls `stream_from` before looking the token up: a refused
    /// subscription of a *known* token (wrong account or user) still receives that token's
    /// events on the refused identifier. Only with [`Refusal::Silent`].
    pub stream_before_auth: bool,
    /// How long a presence refresh (subscribe or `update_presence`) keeps a user or contact
    /// online in presence maps (the platform: 20 s).
    pub presence_ttl: Duration,
    /// Frames queued per socket before the generator waits for the socket's writer.
    pub queue_capacity: usize,
    /// How long the generator waits for a full socket queue before dropping the frame (counted
    /// and recorded as dropped).
    pub send_timeout: Duration,
    /// Events kept in the ground truth; later events are counted but not recorded (0 records
    /// nothing, for benchmarks).
    pub ground_truth_limit: usize,
    /// Largest client frame accepted.
    pub max_client_message: usize,
    /// Seed of the event generator.
    pub seed: u64,
    /// How many created messages the REST surface keeps (in total and per conversation).
    pub store_limits: StoreLimits,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_bind: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            path: "/cable".to_owned(),
            world: WorldSource::default(),
            ping_interval: Duration::from_secs(3),
            refusal: Refusal::Silent,
            stream_before_auth: false,
            presence_ttl: Duration::from_secs(20),
            queue_capacity: 4096,
            send_timeout: Duration::from_secs(10),
            ground_truth_limit: 200_000,
            max_client_message: 1 << 20,
            seed: 1,
            store_limits: StoreLimits::default(),
        }
    }
}

impl SimConfig {
    /// Uses this world.
    pub fn with_world(mut self, world: World) -> Self {
        self.world = WorldSource::Given(world);
        self
    }

    /// Generates the world from this spec.
    pub fn with_world_spec(mut self, spec: WorldSpec) -> Self {
        self.world = WorldSource::Generate(spec);
        self
    }

    /// Sets the ping interval.
    pub fn with_ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets what refused subscriptions get.
    pub fn with_refusal(mut self, refusal: Refusal) -> Self {
        self.refusal = refusal;
        self
    }

    /// Binds the WebSocket listener here.
    pub fn with_bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// Binds the admin endpoint here, or not at all.
    pub fn with_admin_bind(mut self, admin_bind: Option<SocketAddr>) -> Self {
        self.admin_bind = admin_bind;
        self
    }
}
