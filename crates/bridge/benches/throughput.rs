//! Bridge benchmarks, written as a results table:
//!
//! 1. Throughput: 1,000 accounts (one user token each, 20 sockets) receive a burst from the
//!    simulator as fast as it can send; the bridge publishes into a null sink. Baseline in the
//!    same run: a plain WebSocket client subscribing the same tokens and only counting frames.
//! 2. Idle fleet: 10,000 subscriptions at the default connect rate (20 sockets/s, 50
//!    subscriptions each): time until all are confirmed, and the bridge's peak RSS.
//!
//! The simulator runs in this process; the bridge (and the baseline client) run in a child
//! process (this binary re-executed), so CPU time and peak RSS are theirs alone.
//!
//! `cargo bench -p voxsig-bridge --bench throughput` (full size) — under `cargo test` the
//! scenarios run at a small size as a smoke test.

use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use voxsig_bridge::Config;
use voxsig_protocol::{Command as Cable, EventKind, PubsubToken, RoomIdentifier};
use voxsig_sim::{ExportOptions, Selection, Sim, SimConfig, TokenSelection, WorldSpec};
use voxsig_testkit::sinks::NullSink;

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// (peak RSS in MiB, CPU seconds) of this process.
fn own_usage() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    (hwm_kb / 1024.0, ticks / 100.0)
}

/// Child: runs the bridge (or the plain client) and reports on stdout:
/// `confirmed <unix ms>`, `count <n> <unix ms>`, and at the end `usage <rss MiB> <cpu s>`.
async fn child(mode: &str, config: &str, expect: u64) {
    let counter = Arc::new(AtomicU64::new(0));
    let text = std::fs::read_to_string(config).expect("config");
    let settings = Config::from_toml(&text)
        .expect("config")
        .validate()
        .expect("valid");
    let subscriptions = settings.accounts.len();
    let bridge = if mode == "bridge" {
        let registry = prometheus::Registry::new();
        let bridge = voxsig_bridge::Bridge::start_with_sink(
            settings,
            Box::new(NullSink::keyed(counter.clone())),
            &registry,
        )
        .await
        .expect("bridge");
        Some(bridge)
    } else {
        plain_client(&settings, counter.clone()).await;
        None
    };
    let mut out = std::io::stdout();
    let mut confirmed_reported = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if !confirmed_reported {
            let confirmed = match &bridge {
                Some(b) => b
                    .status()
                    .sub_counts()
                    .iter()
                    .find(|(s, _)| s.label() == "confirmed")
                    .map_or(0, |c| c.1),
                None => PLAIN_CONFIRMED.load(Ordering::Relaxed) as usize,
            };
            if confirmed >= subscriptions {
                let _ = writeln!(out, "confirmed {}", unix_ms());
                confirmed_reported = true;
            }
        }
        let n = counter.load(Ordering::Relaxed);
        if confirmed_reported && n >= expect {
            let _ = writeln!(out, "count {n} {}", unix_ms());
            break;
        }
        if Instant::now() > deadline {
            let _ = writeln!(out, "count {n} {}", unix_ms());
            break;
        }
    }
    if expect == 0 {
        // Idle fleet: let it settle (presence, pings) before reading the peak.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let (rss, cpu) = own_usage();
    let _ = writeln!(out, "usage {rss:.1} {cpu:.2}");
    let _ = out.flush();
    std::process::exit(0);
}

static PLAIN_CONFIRMED: AtomicU64 = AtomicU64::new(0);

/// The baseline: one socket per 50 subscriptions, counting event frames without parsing.
async fn plain_client(settings: &voxsig_bridge::Settings, counter: Arc<AtomicU64>) {
    let url = settings.config.source.url.clone();
    for chunk in settings.accounts.chunks(50) {
        let ids: Vec<RoomIdentifier> = chunk
            .iter()
            .map(|a| {
                RoomIdentifier::user(
                    PubsubToken::new(a.token.expose()),
                    a.account_id,
                    a.user_id.unwrap_or(0),
                )
            })
            .collect();
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        let counter = counter.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let text = msg.to_text().unwrap_or("");
                if text.starts_with("{\"type\":\"welcome\"") {
                    for id in &ids {
                        let _ = ws
                            .send(tokio_tungstenite::tungstenite::Message::text(
                                Cable::Subscribe(id).encode(),
                            ))
                            .await;
                    }
                } else if text.contains("\"confirm_subscription\"") {
                    PLAIN_CONFIRMED.fetch_add(1, Ordering::Relaxed);
                } else if text.contains("\"message\":{")
                    && !text.contains("\"event\":\"presence.update\"")
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

struct Outcome {
    confirmed_at: u128,
    count: u64,
    done_at: u128,
    rss_mib: f64,
    cpu_s: f64,
}

/// Runs a child and reads its reports; `burst` runs once all subscriptions are confirmed.
async fn run_child(
    mode: &str,
    config: &std::path::Path,
    expect: u64,
    burst: impl FnOnce() -> tokio::task::JoinHandle<u128>,
) -> (Outcome, u128) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args([
            "--child",
            mode,
            &config.display().to_string(),
            &expect.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut outcome = Outcome {
        confirmed_at: 0,
        count: 0,
        done_at: 0,
        rss_mib: 0.0,
        cpu_s: 0.0,
    };
    let mut burst = Some(burst);
    let mut burst_task = None;
    while let Some(line) = rx.recv().await {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["confirmed", at] => {
                outcome.confirmed_at = at.parse().unwrap_or(0);
                if let Some(start) = burst.take() {
                    burst_task = Some(start());
                }
            }
            ["count", n, at] => {
                outcome.count = n.parse().unwrap_or(0);
                outcome.done_at = at.parse().unwrap_or(0);
            }
            ["usage", rss, cpu] => {
                outcome.rss_mib = rss.parse().unwrap_or(0.0);
                outcome.cpu_s = cpu.parse().unwrap_or(0.0);
            }
            _ => {}
        }
    }
    let _ = child.wait();
    let burst_started = match burst_task {
        Some(task) => task.await.unwrap_or(0),
        None => 0,
    };
    (outcome, burst_started)
}

fn write_config(
    sim: &Sim,
    dir: &std::path::Path,
    name: &str,
    max_accounts: Option<Vec<u64>>,
) -> std::path::PathBuf {
    let accounts = sim.world().bridge_config_toml(&ExportOptions {
        tokens: TokenSelection::Users,
        max_per_account: Some(1),
        accounts: max_accounts,
        ..ExportOptions::default()
    });
    // The default buffer, unless `VOXSIG_BENCH_BUFFER_BYTES` sets its `max_bytes` (to compare
    // sizes with one build).
    let buffer = std::env::var("VOXSIG_BENCH_BUFFER_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(String::new(), |n| format!("[buffer]\nmax_bytes = {n}\n"));
    let text = format!(
        "[source]\nurl = \"{}\"\n[route]\nexclude = [\"presence.update\"]\n{buffer}{accounts}",
        sim.url()
    );
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

async fn bench(full: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();

    // 1. Throughput.
    let (accounts, events) = if full {
        (1000, 200_000u64)
    } else {
        (50, 2_000u64)
    };
    for mode in ["plain", "bridge"] {
        let sim = Sim::start(
            SimConfig {
                ground_truth_limit: 0,
                queue_capacity: 65_536,
                ..SimConfig::default()
            }
            .with_admin_bind(None)
            .with_world_spec(WorldSpec {
                accounts,
                users_per_account: 1,
                contacts_per_account: 1,
                conversations_per_contact: 1,
                shared_users: 0,
                seed: 3,
            }),
        )
        .await
        .expect("sim");
        let config = write_config(&sim, dir.path(), &format!("{mode}.toml"), None);
        let sim2 = sim.clone();
        let (o, started) = run_child(mode, &config, events, move || {
            tokio::spawn(async move {
                let at = unix_ms();
                // Presence replies come and go with the heartbeat: count broadcasts only.
                let kinds = EventKind::ALL
                    .iter()
                    .copied()
                    .filter(|k| !matches!(k, EventKind::PresenceUpdate | EventKind::UserLogout));
                let _ = sim2.burst(events, &Selection::all().kinds(kinds)).await;
                at
            })
        })
        .await;
        let secs = (o.done_at.saturating_sub(started)) as f64 / 1000.0;
        rows.push(format!(
            "| throughput, {accounts} accounts, {mode} | {} / {events} | {:.0} events/s | {:.2} CPU s ({:.1} µs/event) | {:.0} MiB |",
            o.count,
            o.count as f64 / secs.max(0.001),
            o.cpu_s,
            o.cpu_s * 1e6 / o.count.max(1) as f64,
            o.rss_mib
        ));
        sim.shutdown().await;
    }

    // 2. Idle fleet at the default connect rate.
    let subscriptions = if full { 10_000 } else { 200 };
    let sim = Sim::start(
        SimConfig::default()
            .with_admin_bind(None)
            .with_world_spec(WorldSpec {
                accounts: subscriptions,
                users_per_account: 1,
                contacts_per_account: 1,
                conversations_per_contact: 1,
                shared_users: 0,
                seed: 4,
            }),
    )
    .await
    .expect("sim");
    let config = write_config(&sim, dir.path(), "idle.toml", None);
    let started = unix_ms();
    let (o, _) = run_child("bridge", &config, 0, || tokio::spawn(async { 0 })).await;
    rows.push(format!(
        "| idle fleet, {subscriptions} subscriptions (default connect rate 20/s) | all confirmed in {:.1} s | — | {:.2} CPU s | {:.0} MiB peak RSS |",
        (o.confirmed_at.saturating_sub(started)) as f64 / 1000.0,
        o.cpu_s,
        o.rss_mib
    ));
    sim.shutdown().await;

    println!("\n| scenario | result | rate | bridge CPU | bridge peak RSS |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for row in rows {
        println!("{row}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let mode = args.get(i + 1).cloned().unwrap_or_default();
        let config = args.get(i + 2).cloned().unwrap_or_default();
        let expect = args.get(i + 3).and_then(|n| n.parse().ok()).unwrap_or(0);
        runtime.block_on(child(&mode, &config, expect));
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    runtime.block_on(bench(full));
}
