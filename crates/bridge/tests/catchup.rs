//! Catch-up end to end: voxsig-sim (WebSocket and REST) -> voxsig-bridge -> an in-memory sink.
//! Gaps are made (outage, rotation, REST faults) and every message the sim created must arrive
//! exactly once, live or replayed, told apart by `event_id`.

use voxsig_testkit::rig as support;

use prometheus::Registry;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::*;
use voxsig_bridge::{Bridge, Config};
use voxsig_protocol::EventKind;
use voxsig_sim::{
    Endpoint, ExportOptions, FaultSpan, Rate, RestFault, RestFaultSpec, RunSpec, Selection, Sim,
    SimConfig, TokenSelection,
};
use voxsig_sinks::{MemorySink, Record};

const WAIT: Duration = Duration::from_secs(30);

/// Catch-up settings for tests: no pacing to speak of, a short margin.
const CATCHUP: &str = "[catchup]\nrate = 1000.0\nconcurrency = 16\nmargin = \"2s\"\n";

/// A bridge over the sim's user tokens, each entry with its API access token; `extra` joins the
/// config (a `[source]` first line joins FAST's table) and `accounts` replaces the exported
/// entries when not empty.
async fn rig_rest(sim: Sim, extra: &str, accounts: &str) -> Rig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    let exported = sim.world().bridge_config_toml(&ExportOptions {
        tokens: TokenSelection::Users,
        api_tokens: true,
        ..ExportOptions::default()
    });
    let accounts = if accounts.is_empty() {
        exported
    } else {
        accounts.to_owned()
    };
    let (source_extra, extra) = leading_table(extra, "[source]");
    let toml = format!("{FAST}\n{extra}\n{accounts}").replacen(
        "[source]",
        &format!("[source]\nurl = \"{}\"\n{source_extra}", sim.url()),
        1,
    );
    let mut rig = Rig::start(sim, &toml).await;
    rig.tokens = rig
        .sim
        .world()
        .users
        .iter()
        .map(|u| u.pubsub_token.clone())
        .collect();
    rig
}

/// `message.created` records by message id: (live copies, replayed copies).
fn messages_by_id(records: &[Record]) -> HashMap<u64, (usize, usize)> {
    let mut out: HashMap<u64, (usize, usize)> = HashMap::new();
    for r in records {
        if r.headers.event != "message.created" {
            continue;
        }
        let id = r
            .headers
            .event_id
            .as_ref()
            .and_then(|e| e.message_id())
            .expect("a message record's event_id is msg-<id>");
        let entry = out.entry(id).or_default();
        if r.headers.replayed {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }
    out
}

/// Waits until every message the sim created (of `accounts`, or all) was published, then
/// checks each exactly once. Returns (created, live, replayed).
/// Whether every account's last gap is settled: filled, or reported unrecovered.
fn every_gap_settled(rig: &Rig) -> bool {
    rig.bridge()
        .status()
        .snapshot()
        .accounts
        .iter()
        .all(|a| a.last_gap.recovered.is_some())
}

async fn every_message_once(rig: &Rig, accounts: Option<&[u64]>) -> (usize, usize, usize) {
    let created = || -> Vec<u64> {
        rig.sim
            .messages(None)
            .into_iter()
            .filter(|m| accounts.is_none_or(|a| a.contains(&m.account_id)))
            .map(|m| m.id)
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let published = messages_by_id(&rig.memory.records());
        let missing: Vec<u64> = created()
            .into_iter()
            .filter(|id| !published.contains_key(id))
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let records = rig.memory.records();
            let m = rig.sim.messages(None);
            eprintln!(
                "created_at_ms {:?}..{:?} ({} msgs, conv {:?}); {} records: {:?}; status {:?}",
                m.first().map(|m| m.created_at_ms),
                m.last().map(|m| m.created_at_ms),
                m.len(),
                m.iter()
                    .map(|m| (m.account_id, m.conversation_id))
                    .collect::<std::collections::BTreeSet<_>>(),
                records.len(),
                records
                    .iter()
                    .take(5)
                    .map(|r| (&r.headers.event, &r.headers.event_id, r.headers.replayed))
                    .collect::<Vec<_>>(),
                rig.bridge().status().snapshot()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} messages never published, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let stray duplicates show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = messages_by_id(&rig.memory.records());
    let ids = created();
    let (mut live, mut replayed) = (0, 0);
    for id in &ids {
        let (l, r) = published[id];
        assert_eq!(l + r, 1, "message {id}: {l} live + {r} replayed copies");
        live += l;
        replayed += r;
    }
    (ids.len(), live, replayed)
}

/// A sim of `accounts` accounts and a first run over it with the catch-up and a fresh state dir
/// (and `extra`), every subscription confirmed: (the sim, the dir, the settings a later run
/// shares, the run).
async fn first_run(accounts: usize, extra: &str) -> (Sim, tempfile::TempDir, String, Rig) {
    let sim = sim(world(accounts, 1, 1, 0), SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let shared = format!("{CATCHUP}[state]\ndir = \"{}\"\n", dir.path().display());
    let first = rig_rest(sim.clone(), &format!("{shared}{extra}"), "").await;
    first.confirmed(accounts).await;
    (sim, dir, shared, first)
}

/// The catch-up checkpoint a run left in the state dir `dir`.
fn written_checkpoint(dir: &std::path::Path) -> serde_json::Value {
    let path = dir.join("checkpoints/catchup.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A second run with `extra` (the same state dir), once the restart gap of every one of its
/// `accounts` accounts is filled.
async fn restarted(sim: &Sim, extra: &str, accounts: usize) -> Rig {
    let second = rig_rest(sim.clone(), extra, "").await;
    eventually("the restart gaps filled", WAIT, || {
        let status = second.bridge().status().snapshot().accounts;
        status.len() == accounts && status.iter().all(|a| a.last_gap.recovered == Some(true))
    })
    .await;
    second
}

/// The highest message id per conversation of `account` in a written checkpoint.
fn conversation_highs(written: &serde_json::Value, account: u64) -> Vec<u64> {
    written["accounts"][account.to_string()]["conversations"]
        .as_object()
        .map(|c| c.values().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default()
}

/// The messages of `records` that were replayed (fetched by a catch-up).
fn replayed_ids(records: &[Record]) -> std::collections::BTreeSet<u64> {
    messages_by_id(records)
        .into_iter()
        .filter(|&(_, (_, replayed))| replayed > 0)
        .map(|(id, _)| id)
        .collect()
}

fn messages_only(accounts: impl IntoIterator<Item = u64>) -> Selection {
    Selection::all()
        .accounts(accounts)
        .kinds([EventKind::MessageCreated])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_of_5s_across_100_accounts_every_message_once_live_or_replayed() {
    let sim = sim(world(100, 1, 1, 0), SimConfig::default()).await;
    let rig = rig_rest(sim, CATCHUP, "").await;
    rig.confirmed(100).await;
    let run = rig
        .sim
        .run(RunSpec {
            selection: messages_only([]),
            rate: Rate::Total(200.0),
            duration: Duration::from_secs(9),
            max_events: Some(2000),
        })
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The window counted as "in the outage" lies strictly inside it: a message created in the
    // instant before the outage takes effect, or after it ended, may go out live.
    rig.sim.faults().outage(Duration::from_secs(5));
    let outage_from = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(4_800)).await;
    let outage_to = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.confirmed(100).await;
    run.wait().await.unwrap();
    let (created, live, replayed) = every_message_once(&rig, None).await;
    let in_gap = rig.sim.messages_between(None, outage_from, outage_to).len();
    eventually("every gap filled", WAIT, || {
        rig.metric(
            "voxsig_bridge_catchup_messages_total",
            &[("outcome", "published")],
        ) >= replayed as f64
            && every_gap_settled(&rig)
    })
    .await;
    let gaps = rig.metric("voxsig_bridge_gaps_total", &[("cause", "socket_dropped")]);
    let unrecovered = rig.metric("voxsig_bridge_gaps_unrecovered_total", &[]);
    let requests = rig.metric("voxsig_bridge_rest_requests_total", &[]);
    let duplicates = rig.metric(
        "voxsig_bridge_catchup_messages_total",
        &[("outcome", "duplicate")],
    ) + rig.metric("voxsig_bridge_live_duplicates_total", &[]);
    eprintln!(
        "outage: {created} messages created, {in_gap} during the outage, {live} live, \
         {replayed} replayed, 0 published twice; {duplicates} copies suppressed; {gaps} gaps, \
         {unrecovered} unrecovered; {requests} REST requests ({:.2} per recovered message)",
        requests / (replayed.max(1) as f64)
    );
    assert_eq!(gaps, 100.0, "one gap per account");
    assert_eq!(unrecovered, 0.0);
    assert!(
        replayed >= in_gap,
        "{replayed} replayed < {in_gap} created in the outage"
    );
    let snapshot = rig.bridge().status().snapshot();
    assert_eq!(snapshot.accounts.len(), 100);
    let recovered: u64 = snapshot
        .accounts
        .iter()
        .map(|a| {
            assert_eq!(a.last_gap.recovered, Some(true));
            assert!(a.last_gap.end.is_some());
            a.last_gap.recovered_messages
        })
        .sum();
    assert_eq!(recovered as usize, replayed);
    let report = rig.stop().await;
    assert_eq!(report.undelivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_failures_are_retried_counted_and_never_stop_live_events() {
    let sim = sim(world(2, 1, 1, 0), SimConfig::default()).await;
    // A short request timeout so a slow answer times out quickly.
    let extra = format!("{CATCHUP}request_timeout = \"300ms\"\n");
    let rig = rig_rest(sim, &extra, "").await;
    rig.confirmed(2).await;
    let faults = rig.sim.faults();
    // The first fill meets a 429, a 500 and a timeout, each retried.
    for fault in [
        RestFault::TooManyRequests {
            retry_after_secs: 1,
        },
        RestFault::ServerError,
        RestFault::Slow { delay_ms: 1000 },
    ] {
        faults.rest_fault(RestFaultSpec {
            fault,
            span: FaultSpan::Requests(1),
            endpoint: Some(Endpoint::Conversations),
        });
    }
    rig.sim.burst(20, &messages_only([1, 2])).await.unwrap();
    faults.drop_connections();
    rig.sim.burst(20, &messages_only([1, 2])).await.unwrap();
    rig.confirmed(2).await;
    rig.sim.burst(20, &messages_only([1, 2])).await.unwrap();
    every_message_once(&rig, None).await;
    // The fills may still be retrying when every message is in (all came live): wait for them.
    eventually("the gaps filled through the faults", WAIT, || {
        let accounts = rig.bridge().status().snapshot().accounts;
        !accounts.is_empty() && accounts.iter().all(|a| a.last_gap.recovered == Some(true))
    })
    .await;
    for result in ["rate_limited", "server_error", "timeout"] {
        assert!(
            rig.metric(
                "voxsig_bridge_rest_requests_total",
                &[("endpoint", "conversations"), ("result", result)]
            ) >= 1.0,
            "{result} counted"
        );
    }
    assert_eq!(rig.metric("voxsig_bridge_gaps_unrecovered_total", &[]), 0.0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_api_token_and_a_gap_beyond_max_window_are_reported_unrecovered() {
    let sim = sim(world(2, 1, 1, 0), SimConfig::default()).await;
    let world = sim.world();
    let (a, b) = (&world.users[0], &world.users[1]);
    // Account 1's API token is wrong (401); account 2's is right.
    let accounts = format!(
        "[[accounts]]\naccount_id = {}\nuser_id = {}\npubsub_token = \"{}\"\napi_access_token = \"wrongApiToken0000000000\"\n\
         [[accounts]]\naccount_id = {}\nuser_id = {}\npubsub_token = \"{}\"\napi_access_token = \"{}\"\n",
        a.accounts[0], a.id, a.pubsub_token, b.accounts[0], b.id, b.pubsub_token, b.api_access_token
    );
    let rig = rig_rest(sim, CATCHUP, &accounts).await;
    rig.confirmed(2).await;
    rig.sim.faults().drop_connections();
    rig.confirmed(2).await;
    eventually("the 401 gap reported", WAIT, || {
        rig.metric(
            "voxsig_bridge_gaps_unrecovered_total",
            &[("reason", "rest_failed")],
        ) >= 1.0
    })
    .await;
    assert!(
        rig.metric(
            "voxsig_bridge_rest_requests_total",
            &[("result", "unauthorized")]
        ) >= 1.0
    );
    let snapshot = serde_json::to_string(&rig.bridge().status().snapshot()).unwrap();
    assert!(!snapshot.contains("wrongApiToken"), "no secret in /status");
    assert!(snapshot.contains("\"unrecovered_reason\":\"rest_failed\""));
    // Account 2's gap is filled before the burst: a fill still running during it would
    // publish some burst messages from REST (a different payload shape) before their live copy.
    eventually("both gaps settled", WAIT, || every_gap_settled(&rig)).await;
    // Live events of both accounts still flow.
    rig.sim
        .burst(40, &messages_only([a.accounts[0], b.accounts[0]]))
        .await
        .unwrap();
    rig.assert_exactly_once(WAIT).await;
    rig.stop().await;

    // A gap longer than max_window: reported, not filled.
    let sim = support::sim(world_spec(), SimConfig::default()).await;
    let extra = format!("{CATCHUP}max_window = \"1s\"\n");
    let rig = rig_rest(sim, &extra, "").await;
    rig.confirmed(1).await;
    rig.sim.faults().outage(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    rig.confirmed(1).await;
    eventually("the long gap reported", WAIT, || {
        rig.metric(
            "voxsig_bridge_gaps_unrecovered_total",
            &[("reason", "too_long")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        rig.metric(
            "voxsig_bridge_rest_requests_total",
            &[("endpoint", "conversations")]
        ),
        0.0,
        "nothing asked for a gap beyond the window"
    );
    rig.sim.burst(20, &messages_only([])).await.unwrap();
    rig.assert_exactly_once(WAIT).await;
    rig.stop().await;
}

fn world_spec() -> voxsig_sim::WorldSpec {
    world(1, 1, 1, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_only_config_finds_the_pubsub_token_and_every_account() {
    // The first user of account 1 also belongs to account 2.
    let sim = sim(world(2, 1, 1, 1), SimConfig::default()).await;
    let world = sim.world();
    let user = world
        .users
        .iter()
        .find(|u| u.accounts.len() == 2)
        .expect("a user in two accounts");
    let accounts = format!(
        "[[accounts]]\naccount_id = \"all\"\napi_access_token = \"{}\"\n",
        user.api_access_token
    );
    let rig = rig_rest(sim, CATCHUP, &accounts).await;
    // One subscription per account of the profile.
    rig.confirmed(2).await;
    let subs = rig.bridge().status().snapshot().subscriptions;
    let mut found: Vec<u64> = subs.iter().map(|s| s.account_id).collect();
    found.sort_unstable();
    assert_eq!(found, user.accounts);
    assert!(subs.iter().all(|s| s.user_id == Some(user.id)));
    let rig = Rig {
        tokens: [user.pubsub_token.clone()].into_iter().collect(),
        ..rig
    };
    rig.sim
        .burst(40, &messages_only(user.accounts.clone()))
        .await
        .unwrap();
    rig.assert_exactly_once(WAIT).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_rotated_token_is_followed_and_its_gap_recovered() {
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let extra = format!("{CATCHUP}profile_check = \"1s\"\n");
    let rig = rig_rest(sim, &extra, "").await;
    rig.confirmed(1).await;
    let old = rig.sim.world().users[0].pubsub_token.clone();
    rig.sim.burst(10, &messages_only([1])).await.unwrap();
    let rotated_at = Instant::now();
    let new = rig.sim.faults().rotate_token_silently(&old).unwrap();
    // Sent while the old subscription is deaf: only a catch-up can bring these.
    rig.sim.burst(10, &messages_only([1])).await.unwrap();
    eventually("the rotation followed", WAIT, || {
        rig.metric("voxsig_bridge_token_rotations_total", &[]) >= 1.0
    })
    .await;
    let followed_in = rotated_at.elapsed();
    rig.confirmed(1).await;
    rig.sim.burst(10, &messages_only([1])).await.unwrap();
    let (created, _live, replayed) = every_message_once(&rig, None).await;
    eprintln!("rotation followed in {followed_in:?}; {created} messages, {replayed} replayed");
    assert!(replayed >= 10, "the messages of the gap were recovered");
    assert!(followed_in < Duration::from_secs(5), "{followed_in:?}");
    assert!(rig.metric("voxsig_bridge_gaps_total", &[("cause", "token_rotated")]) >= 1.0);
    let snapshot = serde_json::to_string(&rig.bridge().status().snapshot()).unwrap();
    assert!(!snapshot.contains(&new) && !snapshot.contains(&old));
    let shown = &rig.bridge().status().snapshot().subscriptions[0].token;
    assert_eq!(
        shown,
        &voxsig_protocol::PubsubToken::new(new.clone()).redacted(),
        "/status shows the token followed"
    );
    rig.stop().await;
}

/// The `message.created` lines of a JSON-lines file: message id -> [(received_at_ms, replayed)].
fn file_messages(path: &std::path::Path) -> HashMap<u64, Vec<(i64, bool)>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: HashMap<u64, Vec<(i64, bool)>> = HashMap::new();
    // A process killed mid-write may leave half a line: skip what does not parse.
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["event"] != "message.created" {
            continue;
        }
        let id = v["event_id"]
            .as_str()
            .and_then(|e| e.strip_prefix("msg-"))
            .and_then(|n| n.parse().ok())
            .expect("msg-<id>");
        out.entry(id).or_default().push((
            v["received_at_ms"].as_i64().unwrap_or(0),
            v["replayed"].as_bool().unwrap_or(false),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_with_the_same_state_dir_publishes_what_was_missed() {
    let sim = sim(world(5, 1, 1, 0), SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let accounts = sim.world().bridge_config_toml(&ExportOptions {
        tokens: TokenSelection::Users,
        api_tokens: true,
        ..ExportOptions::default()
    });
    let config = format!(
        "{FAST}\n{CATCHUP}\n[state]\ndir = \"{}\"\n[sink]\nkind = \"file\"\npath = \"{}\"\n{accounts}",
        dir.path().join("state").display(),
        out.display()
    )
    .replacen("[source]", &format!("[source]\nurl = \"{}\"", sim.url()), 1);
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let start = || {
        voxsig_testkit::process::bridge_command(env!("CARGO_BIN_EXE_voxsig-bridge"))
            .args(["run", "--metrics-addr", "127.0.0.1:0", "-c"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = start();
    sim.wait_for_subscriptions(5, Duration::from_secs(20))
        .await
        .unwrap();
    let run = sim
        .run(RunSpec {
            selection: messages_only([]),
            rate: Rate::Total(100.0),
            duration: Duration::from_secs(10),
            max_events: Some(1000),
        })
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = voxsig_bridge::status::now_ms();
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let restarted_at = voxsig_bridge::status::now_ms();
    let mut second = start();
    run.wait().await.unwrap();
    let created: Vec<(u64, u64)> = sim
        .messages(None)
        .iter()
        .map(|m| (m.id, m.created_at_ms))
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = file_messages(&out);
        let missing = created
            .iter()
            .filter(|(id, _)| !seen.contains_key(id))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} messages never published",
            created.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = file_messages(&out);
    voxsig_testkit::process::terminate(&second);
    let status = tokio::task::spawn_blocking(move || second.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let down: Vec<u64> = created
        .iter()
        .filter(|(_, at)| (*at as i64) > killed_at && (*at as i64) < restarted_at)
        .map(|(id, _)| *id)
        .collect();
    let mut twice = 0;
    for (id, _) in &created {
        let copies = &seen[id];
        if copies.len() > 1 {
            twice += 1;
            assert_eq!(copies.len(), 2, "message {id}: {copies:?}");
            // Only what the first run published in its last checkpoint interval (1 s) comes again.
            assert!(
                copies[0].0 > killed_at - 2_000 && copies[0].0 <= killed_at,
                "message {id} published twice, first at {} (killed at {killed_at})",
                copies[0].0
            );
        }
    }
    for id in &down {
        assert!(
            seen[id].iter().any(|(_, replayed)| *replayed),
            "message {id} created while down"
        );
    }
    eprintln!(
        "kill -9: {} messages, {} created while down (all replayed), {twice} published twice \
         (within the last checkpoint interval)",
        created.len(),
        down.len()
    );
    assert!(!down.is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_off_sends_no_update_presence_presence_on_does() {
    for (presence, want_some) in [("off", false), ("on", true)] {
        let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
        let extra = format!("[source]\npresence = \"{presence}\"\npresence_interval = \"1s\"\n");
        let rig = rig_rest(sim, &extra, "").await;
        rig.confirmed(1).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let token = rig.sim.world().users[0].pubsub_token.clone();
        let sent = rig.sim.presence_of(&token).len();
        assert_eq!(
            sent > 0,
            want_some,
            "presence = {presence}: {sent} update_presence"
        );
        assert_eq!(
            rig.metric("voxsig_bridge_presence_updates_sent_total", &[]) > 0.0,
            want_some
        );
        rig.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_met_by_an_unanswered_resubscribe_is_followed_at_once() {
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    // No periodic profile check within the test: only the unanswered re-subscribe can tell.
    let extra = format!("{CATCHUP}profile_check = \"10m\"\n");
    let rig = rig_rest(sim, &extra, "").await;
    rig.confirmed(1).await;
    let old = rig.sim.world().users[0].pubsub_token.clone();
    rig.sim.burst(10, &messages_only([1])).await.unwrap();
    rig.sim.faults().rotate_token_silently(&old).unwrap();
    let rotated_at = Instant::now();
    rig.sim.faults().drop_connections();
    rig.sim.burst(10, &messages_only([1])).await.unwrap();
    eventually("the rotation followed", WAIT, || {
        rig.metric("voxsig_bridge_token_rotations_total", &[]) >= 1.0
    })
    .await;
    let followed_in = rotated_at.elapsed();
    rig.sim.burst(10, &messages_only([1])).await.unwrap();
    let (created, _, replayed) = every_message_once(&rig, None).await;
    eprintln!("unanswered → rotation followed in {followed_in:?}; {created} messages, {replayed} replayed");
    // confirm_timeout (1 s) + one profile fetch, with room for a busy machine.
    assert!(followed_in < Duration::from_secs(4), "{followed_in:?}");
    assert!(
        rig.metric(
            "voxsig_bridge_subscription_failures_total",
            &[("cause", "unanswered")]
        ) >= 1.0
    );
    assert!(rig.metric("voxsig_bridge_gaps_total", &[("cause", "token_rotated")]) >= 1.0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_api_token_for_discovery_is_one_clear_error_naming_the_entry() {
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let toml = format!(
        "{FAST}\n[[accounts]]\nlabels = {{ team = \"a\" }}\naccount_id = \"all\"\napi_access_token = \"notTheApiToken00000000\"\n"
    )
    .replacen("[source]", &format!("[source]\nurl = \"{}\"", sim.url()), 1);
    let settings = Config::from_toml(&toml).unwrap().validate().unwrap();
    let (sink, _memory) = MemorySink::new();
    let error = match Bridge::start_with_sink(settings, Box::new(sink), &Registry::new()).await {
        Ok(_) => panic!("a bridge without a readable profile must not start"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("accounts[0]"), "{error}");
    assert!(error.contains("401"), "{error}");
    assert!(!error.contains("notTheApiToken"), "{error}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_with_a_state_dir_fills_the_downtime() {
    let (sim, dir, extra, mut first) = first_run(3, "").await;
    first.sim.burst(30, &messages_only([])).await.unwrap();
    first.sim.wait_for_delivery(WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = first.shut_down(Duration::from_secs(5)).await;
    assert_eq!(report.undelivered, 0);
    // Down: these are only in the REST API.
    sim.burst(30, &messages_only([])).await.unwrap();
    let written = written_checkpoint(dir.path());
    assert!(
        written["accounts"]["1"]["last_event_ms"]
            .as_i64()
            .unwrap_or(0)
            > 0,
        "the last write (at shutdown) knows when each account was last alive: {written}"
    );
    let second = restarted(&sim, &extra, 3).await;
    second.sim.burst(30, &messages_only([])).await.unwrap();
    let ids = |records: &[Record]| messages_by_id(records);
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, b) = (ids(&first.memory.records()), ids(&second.memory.records()));
        let missing = sim
            .messages(None)
            .iter()
            .filter(|m| !a.contains_key(&m.id) && !b.contains_key(&m.id))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} messages never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (a, b) = (ids(&first.memory.records()), ids(&second.memory.records()));
    let mut replayed = 0;
    for m in sim.messages(None) {
        let (l1, r1) = a.get(&m.id).copied().unwrap_or_default();
        let (l2, r2) = b.get(&m.id).copied().unwrap_or_default();
        assert_eq!(
            l1 + r1 + l2 + r2,
            1,
            "message {} once across the restart",
            m.id
        );
        replayed += r2;
    }
    assert_eq!(
        replayed, 30,
        "the downtime's messages, replayed by the second run"
    );
    assert_eq!(
        second.metric("voxsig_bridge_gaps_total", &[("cause", "restart")]),
        3.0
    );
    second.stop().await;
}

/// A message read at shutdown while the buffer was full was never accepted: its claim in the
/// ledger is released, so the last checkpoint does not count it as published and the next run's
/// catch-up publishes it with every other message the first run never accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_lost_or_never_accepted_at_shutdown_is_fetched_by_the_next_run() {
    let (sim, dir, shared, mut first) = first_run(1, "[buffer]\nmax_events = 5\n").await;
    // Two messages are delivered; then the broker is away: five records fill the buffer, the
    // sixth message waits for room.
    sim.burst(2, &messages_only([])).await.unwrap();
    eventually("two delivered", WAIT, || first.memory.records().len() >= 2).await;
    first.memory.set_failing(true);
    sim.burst(20, &messages_only([])).await.unwrap();
    eventually("the buffer filled", WAIT, || first.bridge().buffered() >= 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = first.shut_down(Duration::from_secs(2)).await;
    assert_eq!(report.undelivered, 5, "{report:?}");
    assert_eq!(report.lost(), 5, "the memory buffer's records are lost");
    let ids: Vec<u64> = sim.messages(None).iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 22);
    // One subscription, messages in order: the first two were delivered, the next five
    // accepted and lost with the memory buffer (reported), the eighth claimed and refused by
    // the closed buffer. Only the delivered ones count as published in the checkpoint.
    let written = written_checkpoint(dir.path());
    assert!(
        conversation_highs(&written, 1)
            .iter()
            .all(|&high| high < ids[2]),
        "every conversation resumes before the first lost message: {written}"
    );
    let second = restarted(&sim, &shared, 1).await;
    let published = messages_by_id(&second.memory.records());
    assert!(published.values().all(|&(_, r)| r <= 1), "once each");
    assert_eq!(
        replayed_ids(&second.memory.records()),
        ids[2..].iter().copied().collect(),
        "every message the first run lost or never accepted, and none it delivered"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_delivered_while_a_stop_drains_are_not_fetched_again() {
    let (sim, dir, shared, mut first) = first_run(1, "").await;
    // The broker is away: five messages wait in the memory buffer, not safe.
    first.memory.set_failing(true);
    sim.burst(5, &messages_only([])).await.unwrap();
    eventually("five held", WAIT, || first.bridge().buffered() >= 5).await;
    // The broker comes back while the stop drains: the checkpoint written as the stop began
    // counted the five as unpublished; the one written after the drain counts them delivered.
    let memory = first.memory.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        memory.set_failing(false);
    });
    let report = first.shut_down(Duration::from_secs(5)).await;
    assert_eq!(report.undelivered, 0, "{report:?}");
    let ids: Vec<u64> = sim.messages(None).iter().map(|m| m.id).collect();
    let written = written_checkpoint(dir.path());
    assert_eq!(
        conversation_highs(&written, 1).iter().max(),
        ids.iter().max(),
        "the last checkpoint counts the drained messages published: {written}"
    );
    let second = restarted(&sim, &shared, 1).await;
    assert!(
        replayed_ids(&second.memory.records()).is_empty(),
        "nothing delivered comes again"
    );
    second.stop().await;
}

/// Live messages are claimed in the ledger of published ids only where a catch-up can publish
/// them too (an API token): an account without one publishes every live message once, with no
/// claim (the claim was ~6% of the CPU at full rate), the other keeps its ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_are_claimed_only_where_a_catch_up_can_publish_them_too() {
    let sim = sim(world(2, 1, 1, 0), SimConfig::default()).await;
    let world = sim.world();
    let (a, b) = (&world.users[0], &world.users[1]);
    let (plain, covered) = (a.accounts[0], b.accounts[0]);
    let accounts = format!(
        "[[accounts]]\naccount_id = {plain}\nuser_id = {}\npubsub_token = \"{}\"\n\
         [[accounts]]\naccount_id = {covered}\nuser_id = {}\npubsub_token = \"{}\"\napi_access_token = \"{}\"\n",
        a.id, a.pubsub_token, b.id, b.pubsub_token, b.api_access_token
    );
    let rig = rig_rest(sim, CATCHUP, &accounts).await;
    rig.confirmed(2).await;
    rig.sim
        .run(RunSpec {
            selection: messages_only([]),
            rate: Rate::Total(500.0),
            duration: Duration::from_secs(5),
            max_events: Some(200),
        })
        .unwrap()
        .wait()
        .await
        .unwrap();
    let (created, live, replayed) = every_message_once(&rig, None).await;
    assert_eq!((live, replayed), (created, 0), "every message once, live");
    let catchup = rig.bridge().catchup();
    assert!(!catchup.can_fill(plain) && catchup.can_fill(covered));
    assert_eq!(
        catchup.ledger().account_high(plain),
        None,
        "no claims without an API token"
    );
    let highest = rig
        .sim
        .messages(None)
        .iter()
        .filter(|m| m.account_id == covered)
        .map(|m| m.id)
        .max();
    assert!(highest.is_some(), "the run made messages on both accounts");
    assert_eq!(catchup.ledger().account_high(covered), highest);
}
