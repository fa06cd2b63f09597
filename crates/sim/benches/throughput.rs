//! voxsig-sim throughput and concurrency benchmark: a plain tokio-tungstenite client on loopback
//! counts what the simulator delivers.
//!
//! `cargo bench -p voxsig-sim --bench throughput [-- --out FILE] [--only NAME]` runs the full
//! sizes (or the scenarios whose name contains NAME) and prints a markdown table; without `--bench` (as `cargo test --all-targets` runs it) it runs tiny sizes
//! as a smoke test. Every load loop is bounded by a count and a deadline.

use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use voxsig_protocol::{Command, EventKind, RoomIdentifier};
use voxsig_sim::{Selection, Sim, SimConfig, StoreLimits, WorldSpec};

/// Frames and bytes received by all client sockets.
#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    bytes: AtomicU64,
}

struct Row {
    scenario: String,
    shape: String,
    events: u64,
    frames: u64,
    secs: f64,
    mbytes: f64,
    note: String,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn start(accounts: usize, users: usize, store: StoreLimits) -> Sim {
    let config = SimConfig {
        ground_truth_limit: 0,
        store_limits: store,
        admin_bind: None,
        ping_interval: Duration::from_secs(3),
        ..SimConfig::default()
    }
    .with_world_spec(WorldSpec {
        accounts,
        users_per_account: users,
        contacts_per_account: 1,
        conversations_per_contact: 1,
        shared_users: 0,
        seed: 1,
    });
    Sim::start(config).await.expect("sim starts")
}

/// Opens `sockets` client sockets and subscribes every user of the world, spread round robin
/// over them. Each socket
/// is read by its own task, counting event frames into `counts` (the presence replies to the
/// subscribes included: this returns once they are all in).
async fn clients(sim: &Sim, sockets: usize, counts: Arc<Counts>, deadline: Instant) {
    let world = sim.world();
    let mut ids: Vec<Vec<RoomIdentifier>> = vec![Vec::new(); sockets];
    for (i, u) in world.users.iter().enumerate() {
        ids[i % sockets].push(world.user_identifier(u.id, u.accounts[0]).expect("user"));
    }
    let total = world.users.len();
    for (n, socket_ids) in ids.into_iter().enumerate() {
        // Small read chunks: tungstenite zeroes the whole chunk before every read.
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(sim.url(), Some(config), false)
                .await
                .unwrap_or_else(|e| panic!("socket {n}: {e}"));
        for id in &socket_ids {
            ws.send(Message::Text(Command::Subscribe(id).encode().into()))
                .await
                .expect("subscribe");
        }
        let counts = counts.clone();
        tokio::spawn(async move {
            let (_keep_writer, mut read) = ws.split();
            let end = tokio::time::sleep_until(deadline);
            tokio::pin!(end);
            loop {
                let msg = tokio::select! {
                    msg = read.next() => msg,
                    _ = &mut end => break,
                };
                let Some(Ok(msg)) = msg else { break };
                if let Message::Text(t) = msg {
                    // Event frames end with `}}}`; confirmations with `"}`.
                    if t.as_bytes().ends_with(b"}}}") {
                        counts.frames.fetch_add(1, Ordering::Relaxed);
                        counts.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    sim.wait_for_subscriptions(total, Duration::from_secs(120))
        .await
        .expect("every subscription confirmed");
    // Each subscription's presence reply arrives before the measurement starts.
    until(&counts, total as u64, Instant::now(), deadline).await;
}

/// Waits until `counts` reaches `frames` or the deadline; returns the time taken from `t0`.
async fn until(counts: &Counts, frames: u64, t0: Instant, deadline: Instant) -> f64 {
    while counts.frames.load(Ordering::Relaxed) < frames && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t0.elapsed().as_secs_f64()
}

/// One socket (or several), a burst of `events`, everything delivered.
async fn throughput(
    scenario: &str,
    accounts: usize,
    sockets: usize,
    events: u64,
    kinds: &[EventKind],
    store: StoreLimits,
    limit: Duration,
) -> Row {
    let sim = start(accounts, 1, store).await;
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + limit;
    clients(&sim, sockets, counts.clone(), deadline).await;
    let replies = counts.frames.load(Ordering::Relaxed);
    let base = sim.stats().event_frames_queued;
    let t0 = Instant::now();
    let selection = Selection::all().kinds(kinds.iter().copied());
    let report = tokio::time::timeout_at(deadline, sim.burst(events, &selection))
        .await
        .ok()
        .and_then(Result::ok);
    let emitted = report.map_or(0, |r| r.events);
    let expected = sim.stats().event_frames_queued - base;
    let secs = until(&counts, replies + expected, t0, deadline).await;
    let frames = counts.frames.load(Ordering::Relaxed) - replies;
    let note = if frames < expected {
        format!("INCOMPLETE: {frames} of {expected} frames by the deadline")
    } else {
        format!(
            "emit alone {:.0} events/s",
            report.map_or(0.0, |r| r.events_per_sec)
        )
    };
    let mbytes = counts.bytes.load(Ordering::Relaxed) as f64 / 1e6;
    sim.shutdown().await;
    Row {
        scenario: scenario.to_owned(),
        shape: format!("{sockets} socket(s), {accounts} subscriptions"),
        events: emitted,
        frames,
        secs,
        mbytes,
        note,
    }
}

/// `subscriptions` user tokens over `sockets` sockets; then a burst giving every subscription
/// `per_sub` events.
async fn concurrency(
    scenario: &str,
    sockets: usize,
    subscriptions: usize,
    per_sub: u64,
    limit: Duration,
) -> Row {
    // One user per subscription: accounts of 50 users, so each event fans out to 50 subscriptions.
    let users = 50.min(subscriptions);
    let accounts = subscriptions / users;
    let sim = start(accounts, users, StoreLimits::default()).await;
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + limit;
    let t_sub = Instant::now();
    clients(&sim, sockets, counts.clone(), deadline).await;
    let subscribe_secs = t_sub.elapsed().as_secs_f64();
    let stats = sim.stats();
    let replies = counts.frames.load(Ordering::Relaxed);
    let base = stats.event_frames_queued;
    let t0 = Instant::now();
    // Notifications go to one user: leave them out so every event fans out to the whole account.
    let kinds: Vec<EventKind> = EventKind::ALL
        .iter()
        .copied()
        .filter(|k| !k.to_string().starts_with("notification"))
        .collect();
    let events = per_sub * accounts as u64;
    let report =
        tokio::time::timeout_at(deadline, sim.burst(events, &Selection::all().kinds(kinds)))
            .await
            .ok()
            .and_then(Result::ok);
    let expected = sim.stats().event_frames_queued - base;
    let secs = until(&counts, replies + expected, t0, deadline).await;
    let frames = counts.frames.load(Ordering::Relaxed) - replies;
    let mbytes = counts.bytes.load(Ordering::Relaxed) as f64 / 1e6;
    let note = format!(
        "{} subscriptions confirmed in {subscribe_secs:.2} s; RSS {:.0} MiB (sim + client){}",
        stats.subscriptions,
        rss_mib(),
        if frames < expected {
            "; INCOMPLETE"
        } else {
            ""
        }
    );
    sim.shutdown().await;
    Row {
        scenario: scenario.to_owned(),
        shape: format!(
            "{sockets} sockets x {} subscriptions",
            subscriptions / sockets
        ),
        events: report.map_or(0, |r| r.events),
        frames,
        secs,
        mbytes,
        note,
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | shape | events | frames delivered | time (s) | events/s | frames/s | MB/s | notes |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {} |\n",
            r.scenario,
            r.shape,
            r.events,
            r.frames,
            r.secs,
            r.events as f64 / r.secs,
            r.frames as f64 / r.secs,
            r.mbytes / r.secs,
            r.note
        ));
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1).cloned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (scale, limit) = if full {
        (1, Duration::from_secs(60))
    } else {
        (1000, Duration::from_secs(20))
    };
    // The smoke run keeps the socket counts small too.
    let fewer = if full { 1 } else { 100 };
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let all = EventKind::ALL;
    let kept = StoreLimits::default();
    let mut rows = Vec::new();
    rt.block_on(async {
        let mixed = "mixed catalogue";
        if wanted(mixed) {
            rows.push(throughput(mixed, 10, 1, 1_000_000 / scale, all, kept, limit).await);
        }
        let messages = "message.created only";
        if wanted(messages) {
            let kinds = [EventKind::MessageCreated];
            rows.push(throughput(messages, 10, 1, 1_000_000 / scale, &kinds, kept, limit).await);
        }
        // The same without the REST surface's message store: its cost, measured in this run.
        let unkept = "message.created only, no message store";
        if wanted(unkept) {
            let kinds = [EventKind::MessageCreated];
            let none = StoreLimits {
                messages: 0,
                per_conversation: 0,
            };
            rows.push(throughput(unkept, 10, 1, 1_000_000 / scale, &kinds, none, limit).await);
        }
        let small = "small events (contact.updated)";
        if wanted(small) {
            let kinds = [EventKind::ContactUpdated];
            rows.push(throughput(small, 10, 1, 1_000_000 / scale, &kinds, kept, limit).await);
        }
        let many = "mixed, many sockets";
        if wanted(many) {
            rows.push(throughput(many, 100, 100, 1_000_000 / scale, all, kept, limit).await);
        }
        let bridge = "10k subscriptions, bridge-style";
        if wanted(bridge) {
            rows.push(concurrency(bridge, 200 / fewer, 10_000 / fewer, 20, limit).await);
        }
        let sockets = "10k subscriptions, many sockets";
        if wanted(sockets) {
            rows.push(concurrency(sockets, 5_000 / fewer, 10_000 / fewer, 20, limit).await);
        }
    });
    let text = table(&rows);
    print!("{text}");
    if let Some(path) = out {
        std::fs::write(&path, &text).expect("writing the results");
    }
    let incomplete = rows.iter().any(|r| r.note.contains("INCOMPLETE"));
    assert!(!incomplete, "some frames were not delivered in time");
}
