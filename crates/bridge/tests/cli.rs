//! The `voxsig-bridge` command as an operator uses it.

use voxsig_testkit::config::{sim_accounts, ConfigFile};
use voxsig_testkit::rig as support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::*;
use voxsig_sim::{Selection, SimConfig};

fn bridge() -> Command {
    voxsig_testkit::process::bridge_command(env!("CARGO_BIN_EXE_voxsig-bridge"))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const CONFIG: &str = r#"
[sink]
kind = "mqtt"
url = "mqtt://127.0.0.1:1883"
username = "bridge"
password = "mqttSecretPw"

[source]
url = "ws://127.0.0.1:9/cable"
[[accounts]]
account_id = 1
user_id = 7
pubsub_token = "furNHtAQnqxQN2FmkLzf8x4T"
"#;

#[test]
fn help_and_version() {
    let o = bridge().arg("--version").output().unwrap();
    assert!(o.status.success());
    assert!(text(&o).0.contains(env!("CARGO_PKG_VERSION")));
    for sub in ["run", "check", "tail", "demo"] {
        let o = bridge().args([sub, "--help"]).output().unwrap();
        assert!(o.status.success(), "{sub} --help");
        assert!(text(&o).0.contains("Usage: voxsig-bridge"), "{sub}");
    }
}

#[test]
fn check_prints_the_resolved_config_redacted() {
    let config = ConfigFile::with(CONFIG);
    let path = config.path();
    let o = bridge()
        .args(["check", "-c"])
        .arg(path)
        .env("VOXSIG_BRIDGE_SOURCE__PRESENCE_INTERVAL", "20s")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("presence_interval = \"20s\""),
        "env override applied:\n{out}"
    );
    assert!(out.contains("tok…8x4T"), "{out}");
    assert!(!out.contains("furNHtAQnqxQN2FmkLzf8x4T") && !err.contains("furNHtAQnqxQN2FmkLzf8x4T"));
    assert!(out.contains("# OK: 1 subscription on 1 socket;"), "{out}");
    // Everything, the sink included, as TOML that loads again; secrets redacted.
    assert!(out.contains("[sink]\nkind = \"mqtt\""), "{out}");
    assert!(out.contains("password = \"<redacted>\""), "{out}");
    assert!(!out.contains("mqttSecretPw") && !err.contains("mqttSecretPw"));
    assert!(
        out.contains("[buffer]\nkind = \"memory\"\nmax_bytes = 16777216"),
        "{out}"
    );
    let reparsed: toml::Value = toml::from_str(&out).expect("check prints TOML");
    assert_eq!(
        reparsed["source"]["presence_interval"].as_str(),
        Some("20s")
    );
}

#[test]
fn a_bad_config_is_one_clear_message_and_a_non_zero_exit() {
    let config = ConfigFile::with(CONFIG.replace("user_id = 7", "user_id = \"seven\""));
    let path = config.path();
    let o = bridge().args(["check", "-c"]).arg(path).output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("accounts.0.user_id"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    let o = bridge()
        .args(["check", "-c", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("/nonexistent.toml"));
}

#[test]
fn the_example_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let accounts = dir.path().join("accounts.toml");
    std::fs::write(&token, "contactToken").unwrap();
    std::fs::write(
        &accounts,
        "[[accounts]]\naccount_id = 3\npubsub_token = \"x3\"\n",
    )
    .unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let original = std::fs::read_to_string(&path).unwrap();
        // The commented example accounts must be valid once uncommented, as an operator would.
        let mut in_example = false;
        let uncommented: String = original
            .lines()
            .map(|line| {
                if line.starts_with("# --- example accounts") {
                    in_example = true;
                } else if line.starts_with("# --- end of example accounts") {
                    in_example = false;
                } else if in_example {
                    return line.strip_prefix("# ").unwrap_or(line).to_owned() + "\n";
                }
                line.to_owned() + "\n"
            })
            .collect();
        // Point the examples' secrets and account files at real files.
        let patched = uncommented
            .replace(
                "/run/secrets/voxsig-contact-42",
                &token.display().to_string(),
            )
            .replace("/run/secrets/voxsig-2-11", &token.display().to_string())
            .replace(
                "/etc/voxsig-bridge/accounts.toml",
                &accounts.display().to_string(),
            )
            .replace("/tmp/sim-accounts.toml", &accounts.display().to_string());
        let copy = dir.path().join(path.file_name().unwrap());
        std::fs::write(&copy, patched).unwrap();
        let o = bridge()
            .args(["check", "-c"])
            .arg(&copy)
            .env("VOXSIG_TOKEN_ACME_ALICE", "aliceToken")
            .env("VOXSIG_TOKEN_1_7", "t17")
            .env("VOXSIG_API_TOKEN_ADMIN", "adminApiToken")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}: {}", path.display(), text(&o).1);
        checked += 1;
    }
    assert!(checked >= 4);
}

fn signal(pid: u32, sig: &str) {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}

/// A bridge running on `sim`'s two accounts into a file sink (`extra` appended to its config,
/// `flags` before `-c`), once both subscriptions are confirmed: its config (kept for the run),
/// the sink's file, the process and the accounts' tokens.
async fn run_into_file(
    sim: &voxsig_sim::Sim,
    extra: &str,
    flags: &[&str],
) -> (
    ConfigFile,
    std::path::PathBuf,
    std::process::Child,
    Vec<String>,
) {
    let config = ConfigFile::new();
    let out = config.dir().join("events.jsonl");
    let (tokens, accounts) = sim_accounts(sim);
    config.write(format!(
        "[source]\nurl = \"{}\"\n[sink]\nkind = \"file\"\npath = \"{}\"\n{extra}\n{accounts}",
        sim.url(),
        out.display()
    ));
    let child = bridge()
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .args(flags)
        .arg("-c")
        .arg(config.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sim.wait_for_subscriptions(2, Duration::from_secs(20))
        .await
        .unwrap();
    (config, out, child, tokens)
}

/// SIGTERM, and what the process said until it exited.
async fn terminate(child: std::process::Child) -> Output {
    signal(child.id(), "-TERM");
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

/// Broadcasts the simulator delivered to at least one subscription.
fn broadcasts_delivered(sim: &voxsig_sim::Sim) -> usize {
    sim.ground_truth()
        .broadcasts()
        .filter(|e| !e.deliveries.is_empty())
        .count()
}

fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_publishes_and_sigterm_drains_and_exits_zero() {
    let sim = sim(world(2, 1, 1, 0), SimConfig::default()).await;
    let (_config, out, child, tokens) = run_into_file(&sim, "", &["--log-format", "json"]).await;
    sim.burst(100, &Selection::all()).await.unwrap();
    sim.wait_for_delivery(Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = terminate(child).await;
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    // JSON logs, and no token in them.
    assert!(err.lines().all(|l| l.starts_with('{')), "{err}");
    for token in &tokens {
        assert!(!err.contains(token));
    }
    let written = broadcasts_delivered(&sim);
    assert!(
        lines_in(&out) >= written,
        "{} lines for {written} broadcasts",
        lines_in(&out)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_matching_events_live() {
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let (_, accounts) = sim_accounts(&sim);
    let config = ConfigFile::with(format!("[source]\nurl = \"{}\"\n{accounts}", sim.url()));
    let path = config.path();
    let child = bridge()
        .args(["tail", "--event", "message.*", "-c"])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sim.wait_for_subscriptions(1, Duration::from_secs(20))
        .await
        .unwrap();
    let kinds = [
        voxsig_protocol::EventKind::MessageCreated,
        voxsig_protocol::EventKind::ContactUpdated,
    ];
    sim.burst(40, &Selection::all().kinds(kinds)).await.unwrap();
    sim.wait_for_delivery(Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(child.id(), "-INT");
    let o = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success());
    assert!(out.lines().count() > 5, "{out}");
    // The sink it runs is `tail`, whatever the config says; durations read plainly.
    let started = err
        .lines()
        .find(|l| l.contains("bridge started"))
        .unwrap_or("");
    assert!(
        started.contains("tail") && !started.contains("stdout"),
        "{err}"
    );
    assert!(!err.contains("Some("), "{err}");
    assert!(
        out.lines()
            .all(|l| l.contains(" voxsig/1/message.created key=1/")),
        "{out}"
    );
    sim.shutdown().await;
}

#[test]
fn demo_runs_the_whole_job_with_no_config() {
    let o = bridge()
        .args([
            "demo",
            "--duration",
            "4s",
            "--rate",
            "50",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("mosquitto_sub -h 127.0.0.1 -p "), "{err}");
    assert!(err.contains("/metrics"), "{err}");
    let delivered: u64 = err
        .lines()
        .find_map(|l| {
            l.strip_prefix("delivered ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no delivery report in:\n{err}"));
    assert!(
        delivered >= 100,
        "{delivered} records in 4 s at 50 events/s\n{err}"
    );
    assert!(err.contains(" 0 undelivered"), "{err}");
    // Issue 12: no ERROR lines from the embedded broker's readiness probe, and no control
    // sequences when stderr is not a terminal.
    assert!(!err.contains("ERROR"), "{err}");
    assert!(!err.contains('\u{1b}') && !err.contains('\r'), "{err:?}");
}

/// Issue 12, item 6: what a newcomer following the README met.
#[test]
fn newcomers_get_plain_configs_and_messages() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let dir = tempfile::tempdir().unwrap();
    let accounts = dir.path().join("accounts.toml");
    std::fs::write(
        &accounts,
        "[[accounts]]\naccount_id = 3\npubsub_token = \"contactTok3n\"\n",
    )
    .unwrap();
    // Uncommenting the example's accounts_file line (and nothing else) gives a valid config.
    let example = std::fs::read_to_string(root.join("voxsig-bridge.toml")).unwrap();
    let commented = "# accounts_file = \"/etc/voxsig-bridge/accounts.toml\"";
    assert!(example.contains(commented));
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        example.replace(
            commented,
            &format!("accounts_file = \"{}\"", accounts.display()),
        ),
    )
    .unwrap();
    let o = bridge().args(["check", "-c"]).arg(&path).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("# OK: 1 subscription on 1 socket;"), "{out}");
    assert!(
        !out.lines().any(|l| l.starts_with("accounts_file")),
        "the file's accounts are listed, not the file as well:\n{out}"
    );
    // No [sink]: said so.
    let path = dir.path().join("nosink.toml");
    std::fs::write(
        &path,
        format!(
            "accounts_file = \"{}\"\n[source]\nurl = \"ws://127.0.0.1:9/cable\"\n",
            accounts.display()
        ),
    )
    .unwrap();
    let o = bridge().args(["check", "-c"]).arg(&path).output().unwrap();
    let (out, _) = text(&o);
    assert!(out.contains("no [sink]") && out.contains("stdout"), "{out}");
    // A TOML syntax error is one line, with no excerpt of the file.
    std::fs::write(&path, "[source]\nurl = ws://x\n").unwrap();
    let o = bridge().args(["check", "-c"]).arg(&path).output().unwrap();
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("line 2") && err.contains("(in "), "{err}");
}

/// `[runtime] linger` as an operator sets it: events that come one at a time (each after the
/// worker has gone idle or while it lingers) and in a burst all reach the sink, and the bridge
/// stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_linger_delivers_single_events_and_bursts() {
    let sim = sim(world(2, 1, 1, 0), SimConfig::default()).await;
    let (_config, out, child, _) = run_into_file(&sim, "[runtime]\nlinger = \"2ms\"", &[]).await;
    for k in 0..20u64 {
        let kind = voxsig_protocol::EventKind::MessageCreated;
        sim.emit(voxsig_sim::EventSpec::new(1 + k % 2, kind))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    sim.burst(200, &Selection::all()).await.unwrap();
    sim.wait_for_delivery(Duration::from_secs(10))
        .await
        .unwrap();
    let written = broadcasts_delivered(&sim);
    // Bounded wait for the file to catch up with what the simulator delivered.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines_in(&out) < written && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = terminate(child).await;
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(written >= 220, "{written} broadcasts");
    assert!(
        lines_in(&out) >= written,
        "{} lines for {written} broadcasts",
        lines_in(&out)
    );
    sim.shutdown().await;
}
