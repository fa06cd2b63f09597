//! The state every task of a simulator shares.

use crate::config::{Refusal, SimConfig};
use crate::door::RestConn;
use crate::emit::Emitter;
use crate::hub::{Hub, Stats};
use crate::rest::RestState;
use crate::store::Store;
use crate::truth::{lock, FrameCounters, Truth};
use crate::world::{Owner, WorldState};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use voxsig_protocol::IdentifierKey;

/// Wall-clock unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Ids online and their status, for a presence map.
pub(crate) type PresenceMap = Vec<(u64, String)>;

/// Who a subscription or presence entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Member {
    User(u64),
    Contact(u64),
}

/// An accepted subscription: whose it is and which account its presence and replies concern.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admitted {
    pub(crate) account_id: u64,
    pub(crate) member: Member,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The token exists (wrong account or user, or every subscription refused by a fault).
    pub(crate) known_token: bool,
    pub(crate) how: Refusal,
}

/// Switches that faults flip at run time.
#[derive(Debug)]
pub(crate) struct Knobs {
    ping_interval_ms: AtomicU64,
    pings: AtomicBool,
    refusal: AtomicU8,
    /// 0: off; 1 + `Refusal as u8`: every new subscription is refused that way.
    refuse_all: AtomicU8,
    slow_writer_us: AtomicU64,
    /// Until when WebSocket upgrades are refused (an outage).
    outage_until: Mutex<Option<Instant>>,
    /// How many outages began; a socket's writer stops at once when this moves.
    outages: AtomicU64,
    /// Wakes the ping task when the interval changes.
    pub(crate) changed: Notify,
}

fn refusal_from(v: u8) -> Refusal {
    if v == Refusal::Reject as u8 {
        Refusal::Reject
    } else {
        Refusal::Silent
    }
}

impl Knobs {
    fn new(config: &SimConfig) -> Self {
        Knobs {
            ping_interval_ms: AtomicU64::new(config.ping_interval.as_millis().max(1) as u64),
            pings: AtomicBool::new(true),
            refusal: AtomicU8::new(config.refusal as u8),
            refuse_all: AtomicU8::new(0),
            slow_writer_us: AtomicU64::new(0),
            outage_until: Mutex::new(None),
            outages: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_ping_interval(&self, interval: Duration) {
        self.ping_interval_ms
            .store(interval.as_millis().max(1) as u64, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn pings(&self) -> bool {
        self.pings.load(Ordering::Relaxed)
    }

    pub(crate) fn set_pings(&self, on: bool) {
        self.pings.store(on, Ordering::Relaxed);
    }

    pub(crate) fn refusal(&self) -> Refusal {
        refusal_from(self.refusal.load(Ordering::Relaxed))
    }

    pub(crate) fn set_refusal(&self, refusal: Refusal) {
        self.refusal.store(refusal as u8, Ordering::Relaxed);
    }

    pub(crate) fn refuse_all(&self) -> Option<Refusal> {
        match self.refuse_all.load(Ordering::Relaxed) {
            0 => None,
            v => Some(refusal_from(v - 1)),
        }
    }

    pub(crate) fn set_refuse_all(&self, how: Option<Refusal>) {
        self.refuse_all
            .store(how.map_or(0, |r| r as u8 + 1), Ordering::Relaxed);
    }

    /// How long the outage still lasts, if one is on.
    pub(crate) fn outage_left(&self) -> Option<Duration> {
        let until = (*lock(&self.outage_until))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Refuses upgrades until `until` (`None`: ends the outage).
    pub(crate) fn set_outage(&self, until: Option<Instant>) {
        let begins = until.is_some();
        *lock(&self.outage_until) = until;
        if begins {
            self.outages.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How many outages have begun: a socket writer that sees it move writes nothing more, so an
    /// outage cuts delivery at once (aborting the socket's tasks takes effect only at their next
    /// await, and a frame queued meanwhile would otherwise still reach the client).
    pub(crate) fn outages(&self) -> u64 {
        self.outages.load(Ordering::SeqCst)
    }

    pub(crate) fn slow_writer(&self) -> Option<Duration> {
        match self.slow_writer_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub(crate) fn set_slow_writer(&self, delay: Option<Duration>) {
        let us = delay.map_or(0, |d| d.as_micros().max(1) as u64);
        self.slow_writer_us.store(us, Ordering::Relaxed);
    }
}

/// The running accept loop.
#[derive(Debug)]
pub(crate) struct ListenerTask {
    pub(crate) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) task: JoinHandle<()>,
}

/// Everything the simulator's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    /// The bound WebSocket address (kept across listener restarts).
    pub(crate) addr: SocketAddr,
    pub(crate) admin_addr: Mutex<Option<SocketAddr>>,
    world: RwLock<WorldState>,
    pub(crate) hub: Hub,
    pub(crate) truth: Truth,
    /// The platform's records behind the REST surface.
    pub(crate) store: Mutex<Store>,
    /// The REST surface's counters and faults.
    pub(crate) rest: RestState,
    /// Connections the door hands to the REST router.
    pub(crate) rest_tx: mpsc::Sender<RestConn>,
    pub(crate) counters: Arc<FrameCounters>,
    pub(crate) emitter: tokio::sync::Mutex<Emitter>,
    presence: Mutex<HashMap<(u64, Member), Instant>>,
    pub(crate) knobs: Knobs,
    pub(crate) listener: tokio::sync::Mutex<Option<ListenerTask>>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) started: Instant,
    pub(crate) rotations: AtomicU64,
    /// Tokens rotated away silently: a subscribe with one gets no answer.
    pub(crate) retired: Mutex<std::collections::HashSet<String>>,
    /// Stop flags of runs started over the admin endpoint.
    pub(crate) runs: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Shared {
    pub(crate) fn new(
        config: SimConfig,
        addr: SocketAddr,
        world: WorldState,
        rest_tx: mpsc::Sender<RestConn>,
    ) -> Self {
        let seed = config.seed;
        let store = Store::new(world.seeds(), config.store_limits, unix_ms());
        Shared {
            store: Mutex::new(store),
            rest: RestState::default(),
            rest_tx,
            knobs: Knobs::new(&config),
            truth: Truth::new(config.ground_truth_limit),
            addr,
            admin_addr: Mutex::new(None),
            world: RwLock::new(world),
            hub: Hub::new(),
            counters: Arc::new(FrameCounters::default()),
            emitter: tokio::sync::Mutex::new(Emitter::new(seed)),
            presence: Mutex::new(HashMap::new()),
            listener: tokio::sync::Mutex::new(None),
            shutdown: watch::Sender::new(false),
            started: Instant::now(),
            rotations: AtomicU64::new(0),
            retired: Mutex::new(std::collections::HashSet::new()),
            runs: Mutex::new(Vec::new()),
            config,
        }
    }

    pub(crate) fn world(&self) -> RwLockReadGuard<'_, WorldState> {
        self.world.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn world_mut(&self) -> RwLockWriteGuard<'_, WorldState> {
        self.world.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The platform's rule: without `user_id` the token must be a contact's (any account id is
    /// ignored); with `user_id` it must be that user's token, and `account_id` one of the user's
    /// accounts.
    pub(crate) fn authorize(&self, key: &IdentifierKey) -> Result<Admitted, Refused> {
        let state = self.world();
        let owner = state.index.tokens.get(key.pubsub_token.expose()).copied();
        let admitted = match (owner, key.user_id) {
            (Some(Owner::Contact(i)), None) => {
                let c = &state.world.contacts[i];
                Some(Admitted {
                    account_id: c.account_id,
                    member: Member::Contact(c.id),
                })
            }
            (Some(Owner::User(i)), Some(user_id)) => {
                let u = &state.world.users[i];
                key.account_id
                    .filter(|a| u.id == user_id && u.accounts.contains(a))
                    .map(|account_id| Admitted {
                        account_id,
                        member: Member::User(u.id),
                    })
            }
            _ => None,
        };
        let refuse = |how| Refused {
            known_token: owner.is_some(),
            how,
        };
        if owner.is_none() && lock(&self.retired).contains(key.pubsub_token.expose()) {
            return Err(refuse(Refusal::Silent));
        }
        match (admitted, self.knobs.refuse_all()) {
            (_, Some(how)) => Err(refuse(how)),
            (Some(a), None) => Ok(a),
            (None, None) => Err(refuse(self.knobs.refusal())),
        }
    }

    /// Marks a user or contact online in an account now.
    pub(crate) fn touch_presence(&self, account_id: u64, member: Member) {
        lock(&self.presence).insert((account_id, member), Instant::now());
    }

    /// The presence maps for an account: users online with their availability, and (for user
    /// subscribers) contacts online.
    pub(crate) fn presence_maps(
        &self,
        account_id: u64,
        with_contacts: bool,
    ) -> (PresenceMap, Option<PresenceMap>) {
        let state = self.world();
        let seen = lock(&self.presence);
        let ttl = self.config.presence_ttl;
        let online = |m: Member| {
            seen.get(&(account_id, m))
                .is_some_and(|t| t.elapsed() < ttl)
        };
        let Some(acc) = state.index.accounts.get(&account_id) else {
            return (Vec::new(), with_contacts.then(Vec::new));
        };
        let users = acc
            .users
            .iter()
            .map(|i| &state.world.users[*i])
            .filter(|u| online(Member::User(u.id)))
            .map(|u| (u.id, u.availability.clone()))
            .collect();
        let contacts = with_contacts.then(|| {
            acc.contacts
                .iter()
                .map(|i| state.world.contacts[*i].id)
                .filter(|id| online(Member::Contact(*id)))
                .map(|id| (id, "online".to_owned()))
                .collect()
        });
        (users, contacts)
    }

    /// Current gauges and counters.
    pub(crate) fn stats(&self) -> Stats {
        let mut s = *self.hub.gauges.borrow();
        s.events_total = self.truth.total();
        s.event_frames_queued = self.counters.queued.load(Ordering::Relaxed);
        s.event_frames_written = self.counters.written.load(Ordering::Relaxed);
        s.event_frames_dropped = self.counters.dropped.load(Ordering::Relaxed);
        s.pings_skipped = self.hub.pings_skipped.load(Ordering::Relaxed);
        s.rest = self.rest.stats();
        s.messages = lock(&self.store).stats();
        s
    }
}
