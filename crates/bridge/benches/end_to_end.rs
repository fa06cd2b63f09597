//! End to end, as a user runs it: the simulator (an ActionCable source sending `message.created`
//! frames, ~1.3 KB of `data` each) -> the bridge (the real `voxsig-bridge` binary, `run -c`) ->
//! a real mosquitto started here on a free loopback port -> a counting subscriber; beside a bare
//! rumqttc publisher of the same payloads on the same topics with no WebSocket (the ceiling).
//!
//! `cargo bench -p voxsig-bridge --bench end_to_end` (full size), `-- --smoke` (tiny, < 30 s;
//! also what runs without `--bench`, as under `cargo test --all-targets`). Options (after `--`):
//!
//! - `--rounds N` (5; smoke 1): interleaved rounds, the order of the sides rotating each round;
//! - `--events N` (100,000): events per measured burst; `--qos 0,1`; `--subs 8,200`;
//! - `--rate R` (5,000/s), `--seconds S` (10), `--latency-rounds N` (3): the latency rows;
//! - `--idle N` (100,000): idle subscriptions (and a run at N/10 for the cost per socket);
//! - `--only throughput,latency,idle`: a subset of the rows;
//! - `--bridge LABEL=PATH` (repeatable): bridge binaries to measure side by side (default: the
//!   one cargo built, labelled `bridge`), e.g. main's build against a branch's;
//! - `--bridge-toml LABEL=TOML` (repeatable): config appended to that bridge's file, e.g.
//!   `--bridge-toml 'linger=[runtime]
//!   linger = "500us"'` (the same binary may be listed twice under two labels).
//!
//! Processes and what is measured:
//! - The simulator and the subscriber run in this process; the bridge and the bare publisher
//!   are child processes (the bare publisher is this binary re-executed with `--bare-child`), so
//!   CPU per event (`utime + stime` of `/proc/<pid>/stat`, over the measured window) and peak
//!   RSS (`VmHWM` of `/proc/<pid>/status`) are theirs alone.
//! - Throughput rows: a warm-up burst, then `--events` events as fast as the source sends, timed
//!   from the start of the burst (or of the bare publishing) to the subscriber's last arrival.
//!   A fresh mosquitto, simulator and bridge (or bare publisher) for every measurement.
//! - Latency rows: a steady `--rate` for `--seconds`, paced by a thread (not the runtime's 1 ms
//!   timer); each event's send time is taken just before the simulator's `emit` (bridge) or the
//!   bare `publish`, and compared with its arrival at the subscriber (wall clock, one machine).
//!   Bridge arrivals are matched by account (topic) and `sim_seq` (payload); bare arrivals by
//!   order (one connection, one subscriber), checked against the payload sent at that position.
//! - The wake-up floor, after the latency rows: a relay child (this binary with
//!   `--floor-child`) that only reads ~1.3 KB messages paced at `--rate` from one loopback
//!   socket and writes them to another, one `read` per message: its CPU per message is what the
//!   machine charges any process woken once per event.
//! - Idle rows: N subscriptions (one user token per account, 50 per socket, connected at 1,000
//!   sockets/s), RSS once all are confirmed and a few seconds have passed.
//!
//! mosquitto runs with `set_tcp_nodelay true`, so its leg to the subscriber holds nothing back
//! and the latency rows show the publishers' legs. The bare publisher sets `TCP_NODELAY` too,
//! and copies each payload from its pool into a fresh buffer per publish (as a real publisher
//! holds its own bytes). Every wait is bounded; everything stays on loopback.

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Outgoing, Packet, QoS};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use voxsig_protocol::EventKind;
use voxsig_sim::{
    EventSpec, ExportOptions, Selection, Sim, SimConfig, StoreLimits, TokenSelection, WorldSpec,
};

/// The longest any single wait may take.
const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// Distinct payloads the bare publisher cycles through.
const POOL: u64 = 5_000;

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Clone)]
struct Options {
    smoke: bool,
    rounds: usize,
    events: u64,
    warmup: u64,
    qos: Vec<u8>,
    subs: Vec<usize>,
    rate: f64,
    seconds: f64,
    latency_rounds: usize,
    latency_qos: Vec<u8>,
    idle: usize,
    settle: Duration,
    only: Vec<String>,
    /// Label, binary, extra config.
    bridges: Vec<(String, PathBuf, String)>,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let number = |name: &str, default: f64| {
            value(name)
                .map(|v| {
                    v.replace('_', "")
                        .parse::<f64>()
                        .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
                })
                .unwrap_or(default)
        };
        let list = |name: &str, default: &str| -> Vec<String> {
            value(name)
                .unwrap_or_else(|| default.to_owned())
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let specs = |flag: &str| -> Vec<(String, String)> {
            args.iter()
                .enumerate()
                .filter(|(_, a)| *a == flag)
                .filter_map(|(i, _)| args.get(i + 1))
                .map(|spec| match spec.split_once('=') {
                    Some((label, value)) => (label.to_owned(), value.to_owned()),
                    None => ("bridge".to_owned(), spec.clone()),
                })
                .collect()
        };
        let extra = specs("--bridge-toml");
        let mut bridges: Vec<(String, PathBuf, String)> = specs("--bridge")
            .into_iter()
            .map(|(label, path)| (label, PathBuf::from(path), String::new()))
            .collect();
        if bridges.is_empty() {
            bridges.push((
                "bridge".to_owned(),
                PathBuf::from(env!("CARGO_BIN_EXE_voxsig-bridge")),
                String::new(),
            ));
        }
        for (label, toml) in extra {
            let side = bridges.iter_mut().find(|(l, ..)| *l == label);
            let side = side.unwrap_or_else(|| panic!("--bridge-toml {label}: no such --bridge"));
            side.2.push_str(&toml);
            side.2.push('\n');
        }
        for (label, path, _) in &bridges {
            assert!(path.is_file(), "--bridge {label}: no file at {path:?}");
        }
        let (rounds, events, warmup, rate, seconds, latency_rounds, idle, settle) = if smoke {
            (1.0, 1_000.0, 200.0, 500.0, 1.0, 1.0, 500.0, 1)
        } else {
            (5.0, 100_000.0, 5_000.0, 5_000.0, 10.0, 3.0, 100_000.0, 3)
        };
        let (qos, subs, latency_qos) = if smoke {
            ("0,1", "8", "0")
        } else {
            ("0,1", "8,200", "0,1")
        };
        let parse_list = |name: &str, default: &str| -> Vec<u64> {
            list(name, default)
                .iter()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name} takes numbers, not {v:?}"))
                })
                .collect()
        };
        Options {
            smoke,
            rounds: number("--rounds", rounds) as usize,
            events: number("--events", events) as u64,
            warmup: number("--warmup", warmup) as u64,
            qos: parse_list("--qos", qos)
                .into_iter()
                .map(|q| q as u8)
                .collect(),
            subs: parse_list("--subs", subs)
                .into_iter()
                .map(|s| s as usize)
                .collect(),
            rate: number("--rate", rate),
            seconds: number("--seconds", seconds),
            latency_rounds: number("--latency-rounds", latency_rounds) as usize,
            latency_qos: parse_list("--latency-qos", latency_qos)
                .into_iter()
                .map(|q| q as u8)
                .collect(),
            idle: number("--idle", idle) as usize,
            settle: Duration::from_secs(settle),
            only: list("--only", "throughput,latency,idle"),
            bridges,
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.only.iter().any(|o| o == part)
    }
}

fn qos_of(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

// ---------------------------------------------------------------------------------------------
// Processes and /proc

/// A child process, killed and reaped on drop.
struct Proc {
    child: Child,
    name: String,
    log: Option<PathBuf>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's log (stderr), for failure messages.
    fn log_tail(&self) -> String {
        let text = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panics with the log when the process has exited.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sleeps until event `k` of a steady `period` from `start` is due: the pacing of the latency
/// rows and the wake-up floor (a thread, not the runtime's 1 ms timer).
fn wait_due(start: Instant, period: Duration, k: u64) {
    let due = start + period.mul_f64(k as f64);
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system, every thread, living or not) of a process.
/// Context switches of every thread of `pid` so far (voluntary and not): a thread that sleeps
/// and is woken counts one, so per event this is the wake-ups an event costs. Unlike CPU time it
/// does not grow when the machine is slow.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12.
    (field(11) + field(12)) / clock_ticks()
}

/// A `/proc/<pid>/status` memory line (`VmHWM`, `VmRSS`), in MiB.
fn memory_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// mosquitto

/// A mosquitto on a free loopback port, in its own directory.
struct Mosquitto {
    port: u16,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             set_tcp_nodelay true\n\
             persistence false\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             max_queued_messages 1000000\n\
             max_inflight_messages 1000\n"
        );
        if running_as_root() {
            conf.push_str("user root\n");
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        let child = Command::new(binary("mosquitto"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("mosquitto starts");
        let mut proc = Proc {
            child,
            name: "mosquitto".into(),
            log: Some(log),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            proc.check_alive();
            assert!(
                Instant::now() < deadline,
                "mosquitto not listening after 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Mosquitto {
            port,
            proc,
            _dir: dir,
        }
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn binary(name: &str) -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    candidates.push(Path::new("/usr/sbin").join(name));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found: run scripts/install-brokers.sh"))
}

// ---------------------------------------------------------------------------------------------
// The counting subscriber

/// One arrival, when recording: its wall-clock time and what it was.
#[derive(Clone, Copy)]
struct Arrival {
    at_ns: u64,
    account: u64,
    seq: u64,
}

/// Subscribes `voxsig/#` and counts event messages (the bridge's status topic apart).
struct Subscriber {
    received: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    /// Nanoseconds after `epoch` of the last arrival.
    last: Arc<AtomicU64>,
    epoch: Instant,
    online: Arc<AtomicBool>,
    recording: Arc<AtomicBool>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    task: tokio::task::JoinHandle<()>,
    _client: AsyncClient,
}

/// `voxsig/{account}/…` -> account.
fn account_of(topic: &str) -> u64 {
    topic
        .split('/')
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// The trailing `"sim_seq":N` of a simulator payload.
fn seq_of(payload: &[u8]) -> u64 {
    const KEY: &[u8] = b"\"sim_seq\":";
    let Some(at) = payload.windows(KEY.len()).rposition(|w| w == KEY) else {
        return 0;
    };
    payload[at + KEY.len()..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'))
}

impl Subscriber {
    async fn start(port: u16, qos: QoS) -> Subscriber {
        let mut options = MqttOptions::new(format!("bench-sub-{}", unix_ns()), "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        client
            .subscribe("voxsig/#", qos)
            .await
            .expect("subscribe request");
        let epoch = Instant::now();
        let received = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let last = Arc::new(AtomicU64::new(0));
        let online = Arc::new(AtomicBool::new(false));
        let recording = Arc::new(AtomicBool::new(false));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let task = {
            let (received, bytes, last, online, recording, arrivals, subscribed) = (
                received.clone(),
                bytes.clone(),
                last.clone(),
                online.clone(),
                recording.clone(),
                arrivals.clone(),
                subscribed.clone(),
            );
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if p.topic.starts_with("voxsig/bridge/") {
                                if p.payload.as_ref() == b"online" {
                                    online.store(true, Ordering::Relaxed);
                                }
                                continue;
                            }
                            if recording.load(Ordering::Relaxed) {
                                let arrival = Arrival {
                                    at_ns: unix_ns(),
                                    account: account_of(&p.topic),
                                    seq: seq_of(&p.payload),
                                };
                                arrivals.lock().expect("arrivals").push(arrival);
                            }
                            bytes.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                            last.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subscribed.store(true, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("subscriber: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !subscribed.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "no SUBACK after 20 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Subscriber {
            received,
            bytes,
            last,
            epoch,
            online,
            recording,
            arrivals,
            task,
            _client: client,
        }
    }

    fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until `n` events arrived or `limit` passed; returns whether they all did.
    async fn wait_for(&self, n: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// The last arrival, as an `Instant`.
    fn last_arrival(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    fn take_arrivals(&self) -> Vec<Arrival> {
        std::mem::take(&mut *self.arrivals.lock().expect("arrivals"))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The simulator and the bridge

fn sim_config(accounts: usize, seed: u64, ground_truth: usize) -> SimConfig {
    SimConfig {
        ground_truth_limit: ground_truth,
        queue_capacity: 65_536,
        send_timeout: Duration::from_secs(120),
        store_limits: StoreLimits {
            messages: 0,
            per_conversation: 0,
        },
        ..SimConfig::default()
    }
    .with_admin_bind(None)
    .with_world_spec(WorldSpec {
        accounts,
        users_per_account: 1,
        contacts_per_account: 1,
        conversations_per_contact: 1,
        shared_users: 0,
        seed,
    })
}

fn messages() -> Selection {
    Selection::all().kinds([EventKind::MessageCreated])
}

/// `(topic, payload)` of `n` `message.created` events over `accounts` accounts, exactly as the
/// bridge publishes them with its defaults (topic `voxsig/{account}/{event}`, payload `raw`: the
/// event's `data` byte for byte), from the simulator's ground truth.
async fn payload_pool(accounts: usize, n: u64) -> Vec<(String, Bytes)> {
    let sim = Sim::start(sim_config(accounts, 7, n as usize))
        .await
        .expect("sim");
    sim.burst(n, &messages()).await.expect("burst");
    let pool = sim
        .ground_truth()
        .events
        .iter()
        .map(|e| {
            (
                format!("voxsig/{}/{}", e.account_id, e.event),
                Bytes::copy_from_slice(e.data.as_bytes()),
            )
        })
        .collect();
    sim.shutdown().await;
    pool
}

/// A payload pool and the file the bare publisher reads it from.
struct Pool {
    items: Vec<(String, Bytes)>,
    path: PathBuf,
}

impl Pool {
    async fn new(accounts: usize, n: u64, path: PathBuf) -> Pool {
        let items = payload_pool(accounts, n).await;
        write_pool(&items, &path);
        Pool { items, path }
    }
}

fn write_pool(pool: &[(String, Bytes)], path: &Path) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("pool file"));
    for (topic, payload) in pool {
        // Compact JSON has no raw tab or newline.
        out.write_all(topic.as_bytes()).expect("write");
        out.write_all(b"\t").expect("write");
        out.write_all(payload).expect("write");
        out.write_all(b"\n").expect("write");
    }
    out.flush().expect("flush");
}

fn read_pool(path: &Path) -> Vec<(String, Bytes)> {
    let text = std::fs::read_to_string(path).expect("pool file");
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(t, p)| (t.to_owned(), Bytes::copy_from_slice(p.as_bytes())))
        .collect()
}

/// Starts the bridge binary on a config for this simulator and broker.
fn start_bridge(side: &Bridge, dir: &Path, sim: &Sim, mqtt_port: u16, qos: u8, tag: &str) -> Proc {
    let accounts = sim.world().bridge_config_toml(&ExportOptions {
        tokens: TokenSelection::Users,
        max_per_account: Some(1),
        ..ExportOptions::default()
    });
    let config = format!(
        "[source]\n\
         url = \"{url}\"\n\
         connect_rate = 1000.0\n\
         [route]\n\
         exclude = [\"presence.update\"]\n\
         [sink]\n\
         kind = \"mqtt\"\n\
         url = \"mqtt://127.0.0.1:{mqtt_port}\"\n\
         qos = {qos}\n\
         client_id = \"bench-{tag}\"\n\
         {accounts}\n\
         {extra}",
        url = sim.url(),
        extra = side.toml,
    );
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, config).expect("bridge config");
    let log = dir.join(format!("{tag}.log"));
    let child = Command::new(&side.bin)
        .args(["--log", "warn", "run", "-c"])
        .arg(&path)
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("bridge log"))
        .spawn()
        .expect("bridge starts");
    Proc {
        child,
        name: format!("bridge {tag}"),
        log: Some(log),
    }
}

/// Waits until the bridge holds `subs` confirmed subscriptions and its MQTT session is up.
async fn bridge_ready(bridge: &mut Proc, sim: &Sim, sub: &Subscriber, subs: usize) {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        bridge.check_alive();
        if sim.stats().subscriptions >= subs && sub.online.load(Ordering::Relaxed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bridge not ready after {WAIT_LIMIT:?} ({} of {subs} subscriptions); its log:\n{}",
            sim.stats().subscriptions,
            bridge.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The bare publisher (a child process: this binary with `--bare-child`)

/// The parent's end of a bare publisher: its stdout lines and its stdin.
struct Bare {
    proc: Proc,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Bare {
    fn start(
        port: u16,
        qos: u8,
        pool: &Path,
        warmup: u64,
        events: u64,
        pace: Option<(f64, &Path)>,
    ) -> Bare {
        let exe = std::env::current_exe().expect("own path");
        let mut command = Command::new(exe);
        command
            .arg("--bare-child")
            .arg(port.to_string())
            .arg(qos.to_string())
            .arg(pool)
            .arg(warmup.to_string())
            .arg(events.to_string());
        if let Some((rate, times)) = pace {
            command.arg(rate.to_string()).arg(times);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bare publisher starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Bare {
            proc: Proc {
                child,
                name: "bare publisher".into(),
                log: None,
            },
            stdin,
            lines,
        }
    }

    /// Waits (bounded) for the child to print `line`.
    async fn expect(&mut self, line: &str) {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            match self.lines.try_recv() {
                Ok(l) if l == line => return,
                Ok(_) => {}
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    self.proc.check_alive();
                    assert!(
                        Instant::now() < deadline,
                        "bare publisher: no `{line}` after {WAIT_LIMIT:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    panic!("bare publisher ended before `{line}`")
                }
            }
        }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("bare publisher's stdin");
        self.stdin.flush().expect("flush");
    }
}

/// The child: connects, publishes the warm-up, prints `warmed`, waits for `go` on stdin,
/// publishes the measured events (paced, recording send times, when a rate is given), prints
/// `done`, and exits at `exit` (or end of input).
fn bare_child(args: &[String]) {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let port: u16 = arg(0).parse().expect("port");
    let qos = qos_of(arg(1).parse().expect("qos"));
    let pool = read_pool(Path::new(&arg(2)));
    let warmup: u64 = arg(3).parse().expect("warmup");
    let events: u64 = arg(4).parse().expect("events");
    let pace: Option<(f64, PathBuf)> = args
        .get(5)
        .map(|r| (r.parse().expect("rate"), PathBuf::from(arg(6))));
    assert!(!pool.is_empty(), "empty payload pool");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut options = MqttOptions::new(
        format!("bench-bare-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(100)
        .set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut eventloop) = runtime.block_on(async { AsyncClient::new(options, 1024) });
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let completed = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicBool::new(false));
    {
        let (completed, connected) = (completed.clone(), connected.clone());
        runtime.spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected.store(true, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("bare publisher: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    let wait = |what: &str, ready: &dyn Fn() -> bool| {
        let deadline = Instant::now() + WAIT_LIMIT;
        while !ready() {
            assert!(Instant::now() < deadline, "bare publisher: no {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait("CONNACK", &|| connected.load(Ordering::Relaxed));
    let publish = |i: u64| {
        let (topic, payload) = &pool[(i % pool.len() as u64) as usize];
        client.publish_bytes(topic.clone(), qos, false, Bytes::copy_from_slice(payload))
    };
    let publish_all = |range: std::ops::Range<u64>| {
        runtime.block_on(async {
            for i in range {
                publish(i).await.expect("publish");
            }
        })
    };
    publish_all(0..warmup);
    wait("warm-up completion", &|| {
        completed.load(Ordering::Relaxed) >= warmup
    });
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "warmed");
    let _ = stdout.flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    match &pace {
        None => publish_all(warmup..warmup + events),
        Some((rate, times_path)) => {
            let period = Duration::from_secs_f64(1.0 / rate);
            let mut times = Vec::with_capacity(events as usize);
            let start = Instant::now();
            for k in 0..events {
                wait_due(start, period, k);
                times.push(unix_ns());
                runtime.block_on(publish(warmup + k)).expect("publish");
            }
            let text: String = times.iter().map(|t| format!("{t}\n")).collect();
            std::fs::write(times_path, text).expect("times file");
        }
    }
    wait("completion", &|| {
        completed.load(Ordering::Relaxed) >= warmup + events
    });
    let _ = writeln!(stdout, "done");
    let _ = stdout.flush();
    line.clear();
    let _ = std::io::stdin().read_line(&mut line);
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// Sides and measurements

/// What is measured: the bare publisher, or a bridge binary.
#[derive(Clone)]
enum Side {
    Bare,
    Bridge(Bridge),
}

/// A bridge side: its label, binary and extra config.
#[derive(Clone)]
struct Bridge {
    label: String,
    bin: PathBuf,
    toml: String,
}

impl Side {
    fn label(&self) -> String {
        match self {
            Side::Bare => "bare rumqttc".into(),
            Side::Bridge(b) => b.label.clone(),
        }
    }
}

/// One timed run.
#[derive(Clone, Copy, Default)]
struct Measure {
    /// Events per second, source start to last arrival.
    rate: f64,
    /// CPU µs per event of the publishing process over the measured window.
    cpu_us: f64,
    /// Peak RSS of the publishing process, MiB.
    peak_mib: f64,
    /// Events that arrived of those sent (short of it: timed out).
    arrived: u64,
    sent: u64,
    /// Mean payload bytes.
    payload: f64,
    /// CPU µs per event, same window, of this bench process (the subscriber, and on a bridge
    /// side the simulator too) and of mosquitto: the rest of the two cores' budget.
    bench_us: f64,
    broker_us: f64,
}

/// One throughput run of `side`.
async fn throughput_run(
    side: &Side,
    opts: &Options,
    qos: u8,
    subs: usize,
    pool: &Path,
    dir: &Path,
    tag: &str,
) -> Measure {
    let mosquitto = Mosquitto::start();
    let sub = Subscriber::start(mosquitto.port, qos_of(qos)).await;
    let (w, n) = (opts.warmup, opts.events);
    let limit = WAIT_LIMIT;
    let others = |mosquitto: &Mosquitto| {
        (
            cpu_seconds(std::process::id()),
            cpu_seconds(mosquitto.proc.pid()),
        )
    };
    let measure =
        |pid: u32, cpu0: f64, others0: (f64, f64), start: Instant, sub: &Subscriber, all: bool| {
            let arrived = sub.count().saturating_sub(w);
            let (bench, broker) = others(&mosquitto);
            let per_event = |cpu: f64| cpu * 1e6 / arrived.max(1) as f64;
            let secs = sub
                .last_arrival()
                .saturating_duration_since(start)
                .as_secs_f64();
            Measure {
                rate: arrived as f64 / secs.max(1e-9),
                cpu_us: per_event(cpu_seconds(pid) - cpu0),
                peak_mib: memory_mib(pid, "VmHWM:"),
                arrived: if all { n } else { arrived },
                sent: n,
                payload: sub.bytes.load(Ordering::Relaxed) as f64 / sub.count().max(1) as f64,
                bench_us: per_event(bench - others0.0),
                broker_us: per_event(broker - others0.1),
            }
        };
    let result = match side {
        Side::Bare => {
            let mut bare = Bare::start(mosquitto.port, qos, pool, w, n, None);
            bare.expect("warmed").await;
            assert!(sub.wait_for(w, limit).await, "bare warm-up lost events");
            let pid = bare.proc.pid();
            let cpu0 = cpu_seconds(pid);
            let others0 = others(&mosquitto);
            let start = Instant::now();
            bare.say("go");
            let all = sub.wait_for(w + n, limit).await;
            let m = measure(pid, cpu0, others0, start, &sub, all);
            bare.say("exit");
            m
        }
        Side::Bridge(b) => {
            let sim = Sim::start(sim_config(subs, 3, 0)).await.expect("sim");
            let mut bridge = start_bridge(b, dir, &sim, mosquitto.port, qos, tag);
            bridge_ready(&mut bridge, &sim, &sub, subs).await;
            sim.burst(w, &messages()).await.expect("warm-up burst");
            assert!(
                sub.wait_for(w, limit).await,
                "bridge warm-up: {} of {w} arrived; its log:\n{}",
                sub.count(),
                bridge.log_tail()
            );
            let pid = bridge.pid();
            let cpu0 = cpu_seconds(pid);
            let others0 = others(&mosquitto);
            let start = Instant::now();
            sim.burst(n, &messages()).await.expect("burst");
            let all = sub.wait_for(w + n, limit).await;
            let m = measure(pid, cpu0, others0, start, &sub, all);
            drop(bridge);
            sim.shutdown().await;
            m
        }
    };
    // Late duplicates would show here.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if sub.count() > w + n {
        eprintln!(
            "{tag}: {} events arrived for {} sent (duplicates)",
            sub.count(),
            w + n
        );
    }
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn throughput(opts: &Options, sides: &[Side], dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    for &subs in &opts.subs {
        let n = POOL.min(opts.events.max(opts.warmup));
        let pool = Pool::new(subs, n, dir.join(format!("pool-{subs}.txt"))).await;
        for &qos in &opts.qos {
            let scenario = format!("QoS {qos}, {subs} subscriptions");
            let mut results: Vec<Vec<Measure>> = vec![Vec::new(); sides.len()];
            for round in 0..opts.rounds {
                for k in 0..sides.len() {
                    let i = (k + round) % sides.len();
                    let tag = format!("q{qos}-s{subs}-r{round}-{i}");
                    let m = throughput_run(&sides[i], opts, qos, subs, &pool.path, dir, &tag).await;
                    results[i].push(m);
                }
                let line: Vec<String> = sides
                    .iter()
                    .zip(&results)
                    .map(|(s, r)| {
                        let m = r[round];
                        format!(
                            "{} {:.0}/s {:.1} µs/event {:.0} MiB (bench process {:.1}, mosquitto {:.1} µs/event){}",
                            s.label(),
                            m.rate,
                            m.cpu_us,
                            m.peak_mib,
                            m.bench_us,
                            m.broker_us,
                            if m.arrived < m.sent {
                                format!(" ({} of {} arrived)", m.arrived, m.sent)
                            } else {
                                String::new()
                            }
                        )
                    })
                    .collect();
                println!("{scenario}, round {}: {}", round + 1, line.join("; "));
            }
            let bare = &results[0];
            for (side, r) in sides.iter().zip(&results) {
                let ratios: Vec<f64> = r.iter().zip(bare).map(|(m, b)| m.rate / b.rate).collect();
                let per_round: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
                let short: u64 = r.iter().map(|m| m.sent - m.arrived.min(m.sent)).sum();
                rows.push(format!(
                    "| {scenario} | {} | {:.0} | {:.2} ({}) | {:.1} | {:.1} / {:.1} | {:.0} | {:.0} | {} |",
                    side.label(),
                    median(r.iter().map(|m| m.rate).collect()),
                    median(ratios.clone()),
                    per_round.join(", "),
                    median(r.iter().map(|m| m.cpu_us).collect()),
                    median(r.iter().map(|m| m.bench_us).collect()),
                    median(r.iter().map(|m| m.broker_us).collect()),
                    median(r.iter().map(|m| m.peak_mib).collect()),
                    median(r.iter().map(|m| m.payload).collect()),
                    if short == 0 {
                        "none".to_owned()
                    } else {
                        format!("{short} not arrived")
                    }
                ));
            }
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// Latency

struct Latency {
    /// Sorted latencies, ms.
    ms: Vec<f64>,
    cpu_us: f64,
    /// Context switches per event (all threads of the measured process).
    switches: f64,
    sent: u64,
    unmatched: u64,
}

/// A steady `rate` for `seconds` through `side`; latencies from send to arrival.
async fn latency_run(
    side: &Side,
    opts: &Options,
    qos: u8,
    subs: usize,
    pool: &Pool,
    dir: &Path,
    tag: &str,
) -> Latency {
    let mosquitto = Mosquitto::start();
    let sub = Subscriber::start(mosquitto.port, qos_of(qos)).await;
    let w = opts.warmup.min(2_000);
    let n = (opts.rate * opts.seconds).round() as u64;
    let limit = WAIT_LIMIT;
    let result = match side {
        Side::Bare => {
            let times_path = dir.join(format!("{tag}.times"));
            let mut bare = Bare::start(
                mosquitto.port,
                qos,
                &pool.path,
                w,
                n,
                Some((opts.rate, times_path.as_path())),
            );
            bare.expect("warmed").await;
            assert!(sub.wait_for(w, limit).await, "bare warm-up lost events");
            let pid = bare.proc.pid();
            sub.recording.store(true, Ordering::Relaxed);
            let cpu0 = cpu_seconds(pid);
            let switches0 = context_switches(pid);
            bare.say("go");
            bare.expect("done").await;
            sub.wait_for(w + n, Duration::from_secs(10)).await;
            let cpu_us = (cpu_seconds(pid) - cpu0) * 1e6 / n.max(1) as f64;
            let switches = (context_switches(pid) - switches0) as f64 / n.max(1) as f64;
            bare.say("exit");
            let sent: Vec<u64> = std::fs::read_to_string(&times_path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect();
            let arrivals = sub.take_arrivals();
            let mut ms = Vec::with_capacity(arrivals.len());
            let mut unmatched = 0;
            for (k, a) in arrivals.iter().enumerate() {
                let (topic, payload) =
                    &pool.items[((w + k as u64) % pool.items.len() as u64) as usize];
                match sent.get(k) {
                    Some(&t) if account_of(topic) == a.account && seq_of(payload) == a.seq => {
                        ms.push(a.at_ns.saturating_sub(t) as f64 / 1e6)
                    }
                    _ => unmatched += 1,
                }
            }
            Latency {
                ms,
                cpu_us,
                switches,
                sent: n,
                unmatched,
            }
        }
        Side::Bridge(b) => {
            let sim = Sim::start(sim_config(subs, 3, 0)).await.expect("sim");
            let mut bridge = start_bridge(b, dir, &sim, mosquitto.port, qos, tag);
            bridge_ready(&mut bridge, &sim, &sub, subs).await;
            sim.burst(w, &messages()).await.expect("warm-up burst");
            assert!(sub.wait_for(w, limit).await, "bridge warm-up lost events");
            let pid = bridge.pid();
            sub.recording.store(true, Ordering::Relaxed);
            let cpu0 = cpu_seconds(pid);
            let switches0 = context_switches(pid);
            // Paced by a thread: the runtime's timer has a 1 ms granularity.
            let handle = tokio::runtime::Handle::current();
            let pacer_sim = sim.clone();
            let rate = opts.rate;
            let pacer = std::thread::spawn(move || {
                let period = Duration::from_secs_f64(1.0 / rate);
                let spec = EventSpec {
                    kind: Some(EventKind::MessageCreated),
                    ..EventSpec::default()
                };
                let mut sent = HashMap::with_capacity(n as usize);
                let start = Instant::now();
                for k in 0..n {
                    wait_due(start, period, k);
                    let at = unix_ns();
                    let e = handle.block_on(pacer_sim.emit(spec)).expect("emit");
                    sent.insert((e.account_id, e.sim_seq), at);
                }
                sent
            });
            let sent = tokio::task::spawn_blocking(move || pacer.join().expect("pacer"))
                .await
                .expect("pacer task");
            sub.wait_for(w + n, Duration::from_secs(10)).await;
            let cpu_us = (cpu_seconds(pid) - cpu0) * 1e6 / n.max(1) as f64;
            let switches = (context_switches(pid) - switches0) as f64 / n.max(1) as f64;
            drop(bridge);
            sim.shutdown().await;
            let arrivals = sub.take_arrivals();
            let mut ms = Vec::with_capacity(arrivals.len());
            let mut unmatched = 0;
            for a in &arrivals {
                match sent.get(&(a.account, a.seq)) {
                    Some(&t) => ms.push(a.at_ns.saturating_sub(t) as f64 / 1e6),
                    None => unmatched += 1,
                }
            }
            Latency {
                ms,
                cpu_us,
                switches,
                sent: n,
                unmatched,
            }
        }
    };
    drop(sub);
    drop(mosquitto);
    let mut result = result;
    result.ms.sort_by(f64::total_cmp);
    result
}

async fn latency(opts: &Options, sides: &[Side], dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    let subs = 200.min(opts.subs.iter().copied().max().unwrap_or(200));
    let pool = Pool::new(subs, POOL, dir.join(format!("latency-pool-{subs}.txt"))).await;
    for &qos in &opts.latency_qos {
        let mut results: Vec<Vec<Latency>> = (0..sides.len()).map(|_| Vec::new()).collect();
        for round in 0..opts.latency_rounds {
            for k in 0..sides.len() {
                let i = (k + round) % sides.len();
                let tag = format!("lat-q{qos}-r{round}-{i}");
                let l = latency_run(&sides[i], opts, qos, subs, &pool, dir, &tag).await;
                println!(
                    "latency QoS {qos}, round {}: {}: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, {:.1} µs CPU/event, {:.2} context switches/event, {} of {} matched",
                    round + 1,
                    sides[i].label(),
                    percentile(&l.ms, 0.5),
                    percentile(&l.ms, 0.99),
                    percentile(&l.ms, 0.999),
                    l.ms.last().copied().unwrap_or(f64::NAN),
                    l.cpu_us,
                    l.switches,
                    l.ms.len(),
                    l.sent
                );
                results[i].push(l);
            }
        }
        let p = |ls: &[Latency], q: f64| -> Vec<f64> {
            ls.iter().map(|l| percentile(&l.ms, q)).collect()
        };
        let bare_p99 = p(&results[0], 0.99);
        for (side, ls) in sides.iter().zip(&results) {
            let added: Vec<f64> = p(ls, 0.99)
                .iter()
                .zip(&bare_p99)
                .map(|(x, b)| x - b)
                .collect();
            let range = |v: Vec<f64>| {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{:.2} ({lo:.2}–{hi:.2})", median(v))
            };
            let missing: u64 = ls
                .iter()
                .map(|l| l.sent.saturating_sub(l.ms.len() as u64) + l.unmatched)
                .sum();
            rows.push(format!(
                "| QoS {qos}, {:.0} events/s, {subs} subscriptions | {} | {} | {} | {} | {} | {:.1} | {:.2} | {} |",
                opts.rate,
                side.label(),
                range(p(ls, 0.5)),
                range(p(ls, 0.99)),
                range(p(ls, 0.999)),
                if matches!(side, Side::Bare) {
                    "—".to_owned()
                } else {
                    range(added)
                },
                median(ls.iter().map(|l| l.cpu_us).collect()),
                median(ls.iter().map(|l| l.switches).collect()),
                if missing == 0 {
                    "none".to_owned()
                } else {
                    format!("{missing} missing or unmatched")
                }
            ));
        }
    }
    let (rate, seconds) = (opts.rate, opts.seconds);
    // One run after another (each paces its own sender thread), after the latency rounds.
    let mut measured = Vec::new();
    for _ in 0..opts.latency_rounds.max(1) {
        let floor = tokio::task::spawn_blocking(move || wake_floor(rate, seconds));
        measured.push(floor.await.expect("wake-up floor"));
    }
    let cpu: Vec<f64> = measured.iter().map(|m| m.0).collect();
    let reads = median(measured.iter().map(|m| m.1).collect());
    println!(
        "wake-up floor at {rate:.0} events/s: {cpu:.1?} µs CPU/event, {reads:.2} reads per event"
    );
    rows.push(format!(
        "| wake-up floor, {rate:.0} events/s | a relay process: `read` + `write` per event, nothing else | — | — | — | — | {:.1} ({:.1}–{:.1}) | {reads:.2} reads | none |",
        median(cpu.clone()),
        cpu.iter().copied().fold(f64::INFINITY, f64::min),
        cpu.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    ));
    rows
}

/// Bytes of one message of the wake-up floor: about a `message.created` frame.
const FLOOR_MESSAGE: usize = 1_300;

/// The CPU any process pays per event at `rate` when each event wakes it, on this machine: a
/// relay child (this binary with `--floor-child`) that blocks in `read` on one loopback socket
/// and writes what it got to another, nothing else, fed [`FLOOR_MESSAGE`]-byte messages paced
/// by a thread as the latency rows' events are. Returns the relay's CPU µs per message and its
/// reads (wake-ups) per message. No runtime, no parsing, no broker: a floor under both the bare
/// publisher and the bridge.
fn wake_floor(rate: f64, seconds: f64) -> (f64, f64) {
    let source = TcpListener::bind("127.0.0.1:0").expect("floor source listener");
    let sink = TcpListener::bind("127.0.0.1:0").expect("floor sink listener");
    let port = |l: &TcpListener| l.local_addr().expect("local addr").port().to_string();
    let child = Command::new(std::env::current_exe().expect("this binary"))
        .args(["--floor-child", &port(&source), &port(&sink)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("floor relay");
    let mut relay = Proc {
        child,
        name: "floor relay".into(),
        log: None,
    };
    let accept = |l: &TcpListener| {
        l.set_nonblocking(true).expect("nonblocking accept");
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).expect("blocking socket");
                    s.set_nodelay(true).expect("nodelay");
                    return s;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "floor relay: no connection");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("floor relay: accept: {e}"),
            }
        }
    };
    let mut to_relay = accept(&source);
    let mut from_relay = accept(&sink);
    from_relay
        .set_read_timeout(Some(WAIT_LIMIT))
        .expect("read timeout");
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        while let Ok(n @ 1..) = std::io::Read::read(&mut from_relay, &mut buf) {
            got += n;
        }
        got
    });
    let n = (rate * seconds).max(1.0) as u64;
    let message = vec![b'x'; FLOOR_MESSAGE];
    let period = Duration::from_secs_f64(1.0 / rate);
    let cpu_before = cpu_seconds(relay.pid());
    let start = Instant::now();
    for k in 0..n {
        wait_due(start, period, k);
        to_relay.write_all(&message).expect("floor: send");
    }
    drop(to_relay);
    let got = drain.join().expect("floor drain");
    assert_eq!(got, n as usize * FLOOR_MESSAGE, "floor relay lost bytes");
    let mut line = String::new();
    let mut out = BufReader::new(relay.child.stdout.take().expect("relay stdout"));
    out.read_line(&mut line).expect("relay's count");
    let cpu = cpu_seconds(relay.pid()) - cpu_before;
    let reads: f64 = line
        .trim()
        .strip_prefix("reads ")
        .and_then(|r| r.parse().ok())
        .expect("relay's read count");
    (cpu * 1e6 / n as f64, reads / n as f64)
}

/// The relay of [`wake_floor`]: connects to both ports, copies until end of input, prints its
/// reads and waits for its input to close (so that its CPU can still be read).
fn floor_child(args: &[String]) {
    let connect = |i: usize| {
        let port: u16 = args[i].parse().expect("port");
        let s = TcpStream::connect(("127.0.0.1", port)).expect("floor connect");
        s.set_nodelay(true).expect("nodelay");
        s
    };
    let (mut from, mut to) = (connect(0), connect(1));
    let mut buf = vec![0u8; 64 * 1024];
    let mut reads = 0u64;
    loop {
        let n = std::io::Read::read(&mut from, &mut buf).expect("floor read");
        if n == 0 {
            break;
        }
        reads += 1;
        to.write_all(&buf[..n]).expect("floor write");
    }
    drop(to);
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "reads {reads}");
    let _ = stdout.flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

// ---------------------------------------------------------------------------------------------
// Idle subscriptions

struct Idle {
    subs: usize,
    sockets: usize,
    confirmed_s: f64,
    rss_mib: f64,
    peak_mib: f64,
    cpu_s: f64,
}

async fn idle_run(side: &Bridge, n: usize, settle: Duration, dir: &Path, tag: &str) -> Idle {
    let mosquitto = Mosquitto::start();
    let sub = Subscriber::start(mosquitto.port, QoS::AtMostOnce).await;
    let sim = Sim::start(sim_config(n, 4, 0)).await.expect("sim");
    let start = Instant::now();
    let mut bridge = start_bridge(side, dir, &sim, mosquitto.port, 1, tag);
    bridge_ready(&mut bridge, &sim, &sub, n).await;
    let confirmed_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    bridge.check_alive();
    let pid = bridge.pid();
    let result = Idle {
        subs: sim.stats().subscriptions,
        sockets: sim.stats().sockets,
        confirmed_s,
        rss_mib: memory_mib(pid, "VmRSS:"),
        peak_mib: memory_mib(pid, "VmHWM:"),
        cpu_s: cpu_seconds(pid),
    };
    drop(bridge);
    sim.shutdown().await;
    result
}

async fn idle(opts: &Options, sides: &[Side], dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    let small = (opts.idle / 10).max(50);
    for side in sides {
        let Side::Bridge(b) = side else {
            continue;
        };
        let label = &b.label;
        let low = idle_run(b, small, opts.settle, dir, &format!("idle-{label}-low")).await;
        let high = idle_run(
            b,
            opts.idle,
            opts.settle,
            dir,
            &format!("idle-{label}-high"),
        )
        .await;
        let per_socket_kib = (high.rss_mib - low.rss_mib) * 1024.0
            / (high.sockets as f64 - low.sockets as f64).max(1.0);
        for r in [&low, &high] {
            println!(
                "idle {label}: {} subscriptions on {} sockets confirmed in {:.1} s; RSS {:.1} MiB, peak {:.1} MiB, {:.2} CPU s",
                r.subs, r.sockets, r.confirmed_s, r.rss_mib, r.peak_mib, r.cpu_s
            );
        }
        rows.push(format!(
            "| {label} | {} on {} sockets | {:.1} s | {:.0} MiB ({:.0} MiB at {} subscriptions) | {:.0} MiB | {:.1} KiB | {:.2} s |",
            high.subs,
            high.sockets,
            high.confirmed_s,
            high.rss_mib,
            low.rss_mib,
            low.subs,
            high.peak_mib,
            per_socket_kib,
            high.cpu_s
        ));
    }
    rows
}

// ---------------------------------------------------------------------------------------------

async fn bench(opts: Options, command: String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sides = vec![Side::Bare];
    sides.extend(opts.bridges.iter().map(|(label, bin, toml)| {
        Side::Bridge(Bridge {
            label: label.clone(),
            bin: bin.clone(),
            toml: toml.clone(),
        })
    }));
    let started = Instant::now();
    let load_before = load_average();
    println!("# {command}");
    for (label, bin, toml) in &opts.bridges {
        println!("# {label}: {} {}", bin.display(), toml.replace('\n', " "));
    }
    let mut out = Vec::new();
    if opts.runs("throughput") {
        let rows = throughput(&opts, &sides, dir.path()).await;
        out.push(format!(
            "\n| throughput: scenario | side | events/s (median) | / bare (median; per round) | CPU µs/event | bench process / mosquitto, CPU µs/event | peak RSS MiB | payload bytes | not arrived |\n| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |\n{}\n\nmedians of {} interleaved rounds of {} events after {} warm-up events each; `message.created` only; a fresh mosquitto, simulator and bridge per run; the bench process is the subscriber, plus the simulator on a bridge side",
            rows.join("\n"),
            opts.rounds,
            opts.events,
            opts.warmup
        ));
    }
    if opts.runs("latency") {
        let rows = latency(&opts, &sides, dir.path()).await;
        out.push(format!(
            "\n| latency: load | side | p50 ms | p99 ms | p99.9 ms | p99 added over bare, ms | CPU µs/event | context switches/event | missing |\n| --- | --- | --- | --- | --- | --- | ---: | ---: | --- |\n{}\n\nmedian (lowest–highest) of {} interleaved rounds of {:.0} s; send (just before `emit` / `publish`) to arrival at the subscriber",
            rows.join("\n"),
            opts.latency_rounds,
            opts.seconds
        ));
    }
    if opts.runs("idle") && opts.idle > 0 {
        let rows = idle(&opts, &sides, dir.path()).await;
        out.push(format!(
            "\n| idle: side | subscriptions | all confirmed after | RSS (at N/10) | peak RSS | RSS per extra socket | CPU |\n| --- | --- | ---: | --- | ---: | ---: | ---: |\n{}\n\none user token per account, 50 subscriptions per socket, connect_rate 1000/s; RSS (VmRSS) {} s after all were confirmed; per extra socket: (RSS at N - RSS at N/10) / (sockets at N - sockets at N/10)",
            rows.join("\n"),
            opts.settle.as_secs()
        ));
    }
    println!(
        "\n## end_to_end: {} (load average {} before, {} after; {:.0} s)",
        if opts.smoke { "smoke" } else { "full" },
        load_before,
        load_average(),
        started.elapsed().as_secs_f64()
    );
    for table in out {
        println!("{table}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bare-child") {
        bare_child(&args[i + 1..]);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--floor-child") {
        floor_child(&args[i + 1..]);
        return;
    }
    let opts = Options::parse(&args[1..]);
    let command = format!(
        "cargo bench -p voxsig-bridge --bench end_to_end -- {}",
        args[1..]
            .iter()
            .filter(|a| *a != "--bench")
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(opts, command));
}
