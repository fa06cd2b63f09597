//! A flood of junk frames is counted exactly and logged within a fixed budget; nothing a frame
//! holds can forge or garble a log line (issue 12, item 2).

use voxsig_testkit::brokers::free_port;
use voxsig_testkit::config::ConfigFile;
use voxsig_testkit::hostile;

use hostile::Hostile;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INVALID_JSON: usize = 40_000;
const UNKNOWN_IDENTIFIER: usize = 40_000;
const HUGE_NAMES: usize = 3;
const FORGING_NAMES: usize = 20;

fn bridge() -> Command {
    voxsig_testkit::process::bridge_command(env!("CARGO_BIN_EXE_voxsig-bridge"))
}

/// `/metrics` as text, or empty when not (yet) served.
fn scrape(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_frame_flood_is_counted_exactly_and_logged_within_budget() {
    let server = Hostile::start(|mut conn, n| async move {
        conn.welcome().await;
        let Some(id) = conn.subscribe(Duration::from_secs(10)).await else {
            return;
        };
        conn.confirm(&id).await;
        if n == 0 {
            let stranger = serde_json::json!({"identifier": r#"{"channel":"RoomChannel","pubsub_token":"someoneElse"}"#, "message": {"event": "message.created", "data": {}}}).to_string();
            for i in 0..INVALID_JSON.max(UNKNOWN_IDENTIFIER) {
                if i < INVALID_JSON {
                    conn.feed(r#"{"identifier":"#).await;
                }
                if i < UNKNOWN_IDENTIFIER {
                    conn.feed(stranger.clone()).await;
                }
                if i % 1000 == 0 {
                    conn.flush().await;
                }
            }
            let huge = "N".repeat(1 << 20);
            for _ in 0..HUGE_NAMES {
                conn.feed(serde_json::json!({"identifier": id, "message": {"event": huge}}).to_string())
                    .await;
            }
            for _ in 0..FORGING_NAMES {
                let name = "x\u{1b}[2J\n2026-01-01T00:00:00Z  INFO forged: all good\u{85}";
                conn.feed(serde_json::json!({"identifier": id, "message": {"event": name, "data": 1}}).to_string())
                    .await;
            }
            conn.flush().await;
        }
        for at in 0..600 {
            if !conn.ping(at).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let config = ConfigFile::new();
    config.write(format!(
            "[source]\nurl = \"{}\"\n[sink]\nkind = \"file\"\npath = \"{}\"\n[[accounts]]\naccount_id = 1\nuser_id = 2\npubsub_token = \"floodTok3n\"\n",
            server.url,
            config.dir().join("out.jsonl").display()
    ));
    let path = config.path();
    let port = free_port();
    let mut child = bridge()
        .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}"), "-c"])
        .arg(path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Read the log as it comes (a full pipe would stall the bridge): the first 4 MiB kept, all
    // of it measured.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut kept, mut total, mut chunk) = (Vec::new(), 0usize, vec![0u8; 64 << 10]);
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            total += n;
            if kept.len() < 4 << 20 {
                kept.extend_from_slice(&chunk[..n]);
            }
        }
        (kept, total)
    });
    let kind = |k: &str| format!("voxsig_bridge_frame_errors_total{{kind=\"{k}\"}}");
    let want = [
        (kind("invalid_json"), INVALID_JSON),
        (kind("unknown_identifier"), UNKNOWN_IDENTIFIER),
        (kind("missing_data"), HUGE_NAMES),
        (kind("data_not_object"), FORGING_NAMES),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        metrics = scrape(port);
        if want.iter().all(|(s, n)| value(&metrics, s) >= *n as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    voxsig_testkit::process::terminate(&child);
    let (kept, total) = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
        reader.join().unwrap()
    })
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&kept);
    eprintln!("flood: {total} bytes of log");
    for (series, n) in &want {
        assert_eq!(value(&metrics, series), *n as f64, "{series}");
    }
    assert!(
        total <= 1 << 20,
        "{total} bytes of log for a flood of {} frames",
        INVALID_JSON + UNKNOWN_IDENTIFIER
    );
    assert!(log.contains("suppressed"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no escape sequence reaches the log"
    );
    assert!(!log.contains('\u{85}'), "no C1 control reaches the log");
    assert!(
        log.lines()
            .all(|l| !l.contains("INFO forged") || l.contains("frame skipped")),
        "a name cannot start a log line of its own:\n{log}"
    );
    assert!(
        log.lines().all(|l| l.len() < 2_000),
        "no line quotes a huge name"
    );
}
