//! A simulator, a bridge (in process) between it and an in-memory sink, and checks against the
//! sim's ground truth.

use prometheus::Registry;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use voxsig_bridge::{Bridge, Config};
use voxsig_sim::{
    DeliveryStatus, ExportOptions, GroundTruth, Origin, Sim, SimConfig, TokenSelection, WorldSpec,
};
use voxsig_sinks::{MemoryHandle, MemorySink, Record};

pub use crate::metrics::metric;
/// Polls until a condition holds, failing the test with what it waited for on a timeout.
pub use crate::wait::until as eventually;

/// Bridge settings for tests: fast timers, fast connects.
pub const FAST: &str = r#"
[source]
stale_after = "1500ms"
confirm_timeout = "1s"
connect_rate = 2000.0
reconnect = { initial = "50ms", max = "400ms", after_refusal = "2s" }
[route]
exclude = ["presence.update"]
[shutdown]
drain_timeout = "10s"
"#;

/// A simulator and a bridge publishing into an in-memory sink.
pub struct Rig {
    /// The simulator.
    pub sim: Sim,
    /// The bridge, until [`Rig::stop`].
    pub bridge: Option<Bridge>,
    /// What the bridge published.
    pub memory: MemoryHandle,
    /// The bridge's metrics.
    pub registry: Registry,
    /// The pubsub tokens the bridge subscribes with.
    pub tokens: HashSet<String>,
}

/// A world of `accounts` accounts with `users` users, `contacts` contacts (one conversation
/// each) and `shared` users that also belong to the next account; seed 7.
pub fn world(accounts: usize, users: usize, contacts: usize, shared: usize) -> WorldSpec {
    WorldSpec {
        accounts,
        users_per_account: users,
        contacts_per_account: contacts,
        conversations_per_contact: 1,
        shared_users: shared,
        seed: 7,
    }
}

/// Starts a simulator of `spec` with `config` and 300 ms pings.
pub async fn sim(spec: WorldSpec, config: SimConfig) -> Sim {
    let config = config
        .with_world_spec(spec)
        .with_ping_interval(Duration::from_millis(300));
    Sim::start(config).await.expect("sim starts")
}

/// Starts a bridge over `tokens` of the sim's world, with `FAST` settings then `extra` TOML.
pub async fn rig_on(sim: Sim, tokens: TokenSelection, extra: &str, extra_accounts: &str) -> Rig {
    let exported = sim.world().bridge_config_toml(&ExportOptions {
        tokens,
        ..ExportOptions::default()
    });
    // `extra` may set its own url (a proxy in front of the sim); otherwise, the sim's.
    let url = if extra.contains("url = ") {
        String::new()
    } else {
        format!("url = \"{}\"\n", sim.url())
    };
    // `extra` may start with `[source]` lines, then `[route]` lines: they join FAST's tables.
    let (source_extra, extra) = leading_table(extra, "[source]");
    let (route_extra, extra) = leading_table(&extra, "[route]");
    let toml = format!("{FAST}\n{extra}\n{exported}\n{extra_accounts}")
        .replacen("[source]", &format!("[source]\n{url}{source_extra}"), 1)
        .replacen("[route]\n", &format!("[route]\n{route_extra}\n"), 1);
    Rig::start(sim, &toml).await
}

/// Splits `extra` into the lines of a leading `table` header (`[source]`), to be joined into
/// the table of that name, and the rest.
pub fn leading_table(extra: &str, table: &str) -> (String, String) {
    match extra
        .strip_prefix(table)
        .and_then(|rest| rest.strip_prefix('\n'))
    {
        Some(rest) => rest
            .split_once("\n[")
            .map_or((rest.to_owned(), String::new()), |(a, b)| {
                (a.to_owned(), format!("[{b}"))
            }),
        None => (String::new(), extra.to_owned()),
    }
}

impl Rig {
    /// Starts a bridge with the configuration `toml` over `sim`, publishing into an in-memory
    /// sink; its tokens are those of the configuration's accounts.
    pub async fn start(sim: Sim, toml: &str) -> Rig {
        let settings = Config::from_toml(toml)
            .expect("config parses")
            .validate()
            .expect("config valid");
        let tokens = settings
            .accounts
            .iter()
            .map(|a| a.token.expose().to_owned())
            .collect();
        let (sink, memory) = MemorySink::new();
        let registry = Registry::new();
        let bridge = Bridge::start_with_sink(settings, Box::new(sink), &registry)
            .await
            .expect("bridge starts");
        Rig {
            sim,
            bridge: Some(bridge),
            memory,
            registry,
            tokens,
        }
    }

    /// The running bridge.
    pub fn bridge(&self) -> &Bridge {
        self.bridge.as_ref().expect("running")
    }

    /// Waits until the sim holds `n` confirmed subscriptions.
    pub async fn confirmed(&self, n: usize) {
        self.sim
            .wait_for_subscriptions(n, Duration::from_secs(30))
            .await
            .expect("subscriptions confirmed");
    }

    /// The broadcasts that were written to a socket of one of our tokens (what the bridge must
    /// publish exactly once), leaving out presence.update, which the test route excludes.
    pub fn expected(&self, truth: &GroundTruth) -> Vec<(u64, u64)> {
        truth
            .events
            .iter()
            .filter(|e| e.origin == Origin::Broadcast && e.event != "presence.update")
            .filter(|e| {
                e.deliveries
                    .iter()
                    .any(|d| d.status == DeliveryStatus::Written && self.tokens.contains(&d.token))
            })
            .map(|e| (e.account_id, e.sim_seq))
            .collect()
    }

    /// Waits until the sink holds exactly what the ground truth says was written, then checks
    /// every record: once each, right topic, key and byte-identical payload.
    pub async fn assert_exactly_once(&self, timeout: Duration) -> usize {
        self.sim
            .wait_for_delivery(Duration::from_secs(30))
            .await
            .expect("sim delivered");
        let truth = self.sim.ground_truth();
        let expected = self.expected(&truth);
        let arrived = self.memory.wait_for(expected.len(), timeout).await;
        // Give stray duplicates a moment to show up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let records = self.memory.records();
        assert!(
            arrived,
            "only {} of {} records arrived",
            records.len(),
            expected.len()
        );
        check_records(&truth, &expected, &records);
        expected.len()
    }

    /// Like `assert_exactly_once` across a fault that dropped the sockets numbered up to
    /// `first_generation`: frames the sim had written to those sockets just before it dropped
    /// them can be lost in transit (no protocol replays them), so those may be missing — a few,
    /// not many; everything else arrives exactly once, and nothing arrives twice.
    pub async fn assert_exactly_once_across_a_drop(
        &self,
        first_generation: u64,
        timeout: Duration,
    ) {
        self.sim
            .wait_for_delivery(Duration::from_secs(30))
            .await
            .expect("sim delivered");
        let truth = self.sim.ground_truth();
        let ours = |d: &voxsig_sim::Delivery| {
            d.status == DeliveryStatus::Written && self.tokens.contains(&d.token)
        };
        let key = |e: &voxsig_sim::SentEvent| (e.account_id, e.sim_seq);
        let expected: HashSet<(u64, u64)> = self.expected(&truth).into_iter().collect();
        let (sure, in_flight): (Vec<&voxsig_sim::SentEvent>, Vec<&voxsig_sim::SentEvent>) = truth
            .events
            .iter()
            .filter(|e| expected.contains(&key(e)))
            .partition(|e| {
                e.deliveries
                    .iter()
                    .any(|d| ours(d) && d.connection > first_generation)
            });
        let arrived_keys = || -> HashSet<(u64, u64)> {
            self.memory
                .records()
                .iter()
                .map(|r| {
                    let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
                    (
                        v["account_id"].as_u64().unwrap_or(0),
                        v["sim_seq"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        };
        eventually("every event written after the drop", timeout, || {
            let arrived = arrived_keys();
            sure.iter().all(|e| arrived.contains(&key(e)))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let arrived = arrived_keys();
        let lost: Vec<_> = in_flight
            .iter()
            .filter(|e| !arrived.contains(&key(e)))
            .map(|e| key(e))
            .collect();
        eprintln!(
            "{} events, {} written to the dropped sockets, {} of those lost in transit",
            expected.len(),
            in_flight.len(),
            lost.len()
        );
        assert!(
            lost.len() <= 20,
            "too many events lost at the drop: {lost:?}"
        );
        let delivered: Vec<(u64, u64)> = expected
            .iter()
            .copied()
            .filter(|k| !lost.contains(k))
            .collect();
        check_records(&truth, &delivered, &self.memory.records());
    }

    /// A metric of the bridge (see [`metric`]).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.registry, name, labels)
    }

    /// Shuts the bridge down (10 s to drain) and the simulator; the bridge's drain report.
    pub async fn stop(mut self) -> voxsig_sinks::DrainReport {
        let report = self.shut_down(Duration::from_secs(10)).await;
        self.sim.shutdown().await;
        report
    }

    /// Stops the bridge (the sim goes on) with `drain_timeout`: its drain report.
    pub async fn shut_down(&mut self, drain_timeout: Duration) -> voxsig_sinks::DrainReport {
        self.bridge
            .take()
            .expect("running")
            .shutdown(drain_timeout)
            .await
    }
}

/// Checks `records` against the ground truth: each of `expected` (account, sim_seq) exactly
/// once, byte-identical with its topic, key and headers, and nothing else.
pub fn check_records(truth: &GroundTruth, expected: &[(u64, u64)], records: &[Record]) {
    let by_key: HashMap<(u64, u64), &voxsig_sim::SentEvent> = truth
        .events
        .iter()
        .map(|e| ((e.account_id, e.sim_seq), e))
        .collect();
    let mut seen: HashMap<(u64, u64), usize> = HashMap::new();
    for record in records {
        let data: serde_json::Value =
            serde_json::from_slice(&record.payload).expect("payload is JSON");
        let key = (
            data["account_id"].as_u64().expect("account_id"),
            data["sim_seq"].as_u64().expect("sim_seq"),
        );
        *seen.entry(key).or_default() += 1;
        let sent = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("record {key:?} was never sent"));
        assert_eq!(
            &record.payload[..],
            sent.data.as_bytes(),
            "payload of {key:?} is byte-identical"
        );
        assert_eq!(
            record.topic,
            format!("voxsig/{}/{}", sent.account_id, sent.event)
        );
        let conversation = sent
            .conversation_id
            .map_or("none".to_owned(), |c| c.to_string());
        assert_eq!(
            record.key.as_deref(),
            Some(format!("{}/{conversation}", sent.account_id).as_str())
        );
        assert_eq!(record.headers.event, sent.event);
        assert_eq!(record.headers.account_id, Some(sent.account_id));
    }
    let expected: HashSet<(u64, u64)> = expected.iter().copied().collect();
    for key in &expected {
        assert_eq!(
            seen.get(key).copied().unwrap_or(0),
            1,
            "event {key:?} must arrive exactly once"
        );
    }
    let extra: Vec<_> = seen.keys().filter(|k| !expected.contains(k)).collect();
    assert!(
        extra.is_empty(),
        "records for events never written to our sockets: {extra:?}"
    );
}
