//! Secrets (pubsub tokens, the MQTT password) never reach the log at any level nor an error
//! message (issue 12, item 3). Every check greps for the whole secret and every 8-character
//! substring of it.

use voxsig_testkit::brokers;
use voxsig_testkit::config::{sim_accounts, ConfigFile};
use voxsig_testkit::rig as support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::*;
use voxsig_sim::{Selection, SimConfig};

const MQTT_PASSWORD: &str = "mqttPw-Zq8rT4vX2wLk9";
/// A token pasted into the wrong keys below.
const PASTED: &str = "pastedTok3nXyZ9QwErTy42";

fn bridge() -> Command {
    voxsig_testkit::process::bridge_command(env!("CARGO_BIN_EXE_voxsig-bridge"))
}

fn output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fails if `text` holds `secret` or any 8-character substring of it.
fn assert_no_secret(text: &str, secret: &str, what: &str) {
    let chars: Vec<char> = secret.chars().collect();
    for window in chars.windows(8.min(chars.len())) {
        let piece: String = window.iter().collect();
        assert!(
            !text.contains(&piece),
            "{what}: found {piece:?} of a secret in:\n{}",
            &text[..text.len().min(4000)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_a_trace_level_run() {
    let broker = brokers::Mosquitto::start(brokers::MosquittoOptions {
        users: vec![("bridge".into(), MQTT_PASSWORD.into())],
        ..Default::default()
    });
    let sim = sim(world(2, 1, 1, 0), SimConfig::default()).await;
    let (tokens, accounts) = sim_accounts(&sim);
    let config = ConfigFile::with(format!(
            "[source]\nurl = \"{}\"\n[sink]\nkind = \"mqtt\"\nurl = \"{}\"\nusername = \"bridge\"\npassword = \"{MQTT_PASSWORD}\"\n{accounts}",
            sim.url(),
            broker.url()
    ));
    let path = config.path();
    for format in ["human", "json"] {
        let child = bridge()
            .args(["--log", "trace", "--log-format", format, "run"])
            .args(["--metrics-addr", "127.0.0.1:0", "-c"])
            .arg(path)
            .env("RUST_LOG", "trace")
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        sim.wait_for_subscriptions(tokens.len(), Duration::from_secs(20))
            .await
            .unwrap();
        sim.burst(20, &Selection::all()).await.unwrap();
        sim.wait_for_delivery(Duration::from_secs(10))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let o = voxsig_testkit::process::terminate_and_collect(child).await;
        let log = output(&o);
        assert!(o.status.success(), "{log}");
        assert!(
            log.contains("subscription confirmed"),
            "debug lines are on: {log}"
        );
        for token in &tokens {
            assert_no_secret(&log, token, &format!("{format} trace log"));
        }
        assert_no_secret(&log, MQTT_PASSWORD, &format!("{format} trace log"));
        sim.wait_for_subscriptions(0, Duration::from_secs(10))
            .await
            .unwrap();
    }
    sim.shutdown().await;
}

/// Every config error path on a secret-bearing key, run through `check`: the message names the
/// key and never the value.
#[test]
fn config_errors_never_echo_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let head = "[source]\nurl = \"ws://127.0.0.1:9/cable\"\n";
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let accounts_toml = write(
        "accounts.toml",
        &format!("[[accounts]]\naccount_id = \"{PASTED}\"\npubsub_token = \"{PASTED}\"\n"),
    );
    let accounts_json = write(
        "accounts.json",
        &format!(r#"{{"accounts":[{{"account_id":"{PASTED}","pubsub_token":"{PASTED}"}}]}}"#),
    );
    let accounts_user = write(
        "accounts2.toml",
        &format!("[[accounts]]\naccount_id = 1\nuser_id = \"{PASTED}\"\npubsub_token = \"x\"\n"),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "token pasted as the variable name",
            format!("[[accounts]]\naccount_id = 1\npubsub_token_env = \"{PASTED}\"\n"),
            "accounts[0].pubsub_token_env",
        ),
        (
            "token pasted as the file name",
            format!("[[accounts]]\naccount_id = 1\npubsub_token_file = \"{PASTED}\"\n"),
            "accounts[0].pubsub_token_file",
        ),
        (
            "type error on account_id",
            format!("[[accounts]]\naccount_id = \"{PASTED}\"\npubsub_token = \"{PASTED}\"\n"),
            "account_id",
        ),
        (
            "token given as a number",
            "[[accounts]]\naccount_id = 1\npubsub_token = 987654321987654321\n".into(),
            "pubsub_token",
        ),
        (
            "type error in a TOML accounts file",
            format!("accounts_file = \"{}\"\n", accounts_toml.display()),
            "accounts_file",
        ),
        (
            "type error in a JSON accounts file",
            format!("accounts_file = \"{}\"\n", accounts_json.display()),
            "accounts_file",
        ),
        (
            "type error on user_id",
            format!("accounts_file = \"{}\"\n", accounts_user.display()),
            "accounts_file",
        ),
        (
            "two sources for one token",
            format!("[[accounts]]\naccount_id = 1\npubsub_token = \"{PASTED}\"\npubsub_token_env = \"{PASTED}\"\n"),
            "accounts[0]",
        ),
        (
            "token without quotes (a TOML syntax error)",
            format!("[[accounts]]\naccount_id = 1\npubsub_token = {PASTED}\n"),
            "config",
        ),
        (
            "the same token twice",
            format!("[[accounts]]\naccount_id = 1\npubsub_token = \"{PASTED}\"\n[[accounts]]\naccount_id = 2\npubsub_token = \"{PASTED}\"\n"),
            "accounts[1]",
        ),
        (
            "MQTT password under an unknown table key",
            format!("[[accounts]]\naccount_id = 1\npubsub_token = \"t0k\"\n[sink]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:9\"\nusername = \"u\"\npassword = {{ value = \"{PASTED}\", env = \"{PASTED}\" }}\n"),
            "sink",
        ),
    ];
    for (what, body, key) in cases {
        let path = write("c.toml", &format!("{head}{body}"));
        let o = bridge().args(["check", "-c"]).arg(&path).output().unwrap();
        let out = output(&o);
        assert!(!o.status.success(), "{what}: must fail:\n{out}");
        assert!(out.contains(key), "{what}: names {key}:\n{out}");
        assert_no_secret(&out, PASTED, what);
        assert_no_secret(&out, "987654321987654321", what);
    }
    // A password pasted as the variable name only fails when the sink starts (`run`).
    let path = write(
        "c.toml",
        &format!("{head}[[accounts]]\naccount_id = 1\npubsub_token = \"t0k\"\n[sink]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:9\"\nusername = \"u\"\npassword = {{ env = \"{PASTED}\" }}\n"),
    );
    let o = bridge()
        .args(["run", "--metrics-addr", "127.0.0.1:0", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let out = output(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("sink.password"), "{out}");
    assert_no_secret(&out, PASTED, "password env");
}

/// A token from a variable or a file is trimmed alike; one of only white space is refused at
/// `check`, naming the key.
#[test]
fn tokens_are_trimmed_and_blank_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "fileToken123\n").unwrap();
    let blank = dir.path().join("blank");
    std::fs::write(&blank, " \n\t\n").unwrap();
    let config = |accounts: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!("[source]\nurl = \"ws://127.0.0.1:9/cable\"\n{accounts}"),
        )
        .unwrap();
        path
    };
    let ok = config(&format!(
        "[[accounts]]\naccount_id = 1\npubsub_token_env = \"VOXSIG_TEST_TOKEN_NL\"\n[[accounts]]\naccount_id = 2\npubsub_token_file = \"{}\"\n",
        file.display()
    ));
    let o = bridge()
        .args(["check", "-c"])
        .arg(&ok)
        .env("VOXSIG_TEST_TOKEN_NL", "envToken456\n")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output(&o));
    // In-process: the resolved tokens carry no white space.
    std::env::set_var("VOXSIG_TEST_TOKEN_NL2", "  envToken789\r\n");
    let settings = voxsig_bridge::Config::from_toml(&format!(
        "[source]\nurl = \"ws://127.0.0.1:9/cable\"\n[[accounts]]\naccount_id = 1\npubsub_token_env = \"VOXSIG_TEST_TOKEN_NL2\"\n[[accounts]]\naccount_id = 2\npubsub_token_file = \"{}\"\n",
        file.display()
    ))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(settings.accounts[0].token.expose(), "envToken789");
    assert_eq!(settings.accounts[1].token.expose(), "fileToken123");
    for (accounts, env, key) in [
        ("pubsub_token = \"   \"", "", "accounts[0].pubsub_token"),
        (
            "pubsub_token_env = \"VOXSIG_TEST_TOKEN_BLANK\"",
            " \n",
            "accounts[0].pubsub_token_env",
        ),
        (
            &*format!("pubsub_token_file = \"{}\"", blank.display()),
            "",
            "accounts[0].pubsub_token_file",
        ),
    ] {
        let path = config(&format!("[[accounts]]\naccount_id = 1\n{accounts}\n"));
        let o = bridge()
            .args(["check", "-c"])
            .arg(&path)
            .env("VOXSIG_TEST_TOKEN_BLANK", env)
            .output()
            .unwrap();
        let out = output(&o);
        assert!(!o.status.success(), "{accounts}: refused\n{out}");
        assert!(out.contains(key) && out.contains("white space"), "{out}");
    }
}

/// The Kafka SASL password at trace level, with librdkafka's own debug output switched on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sasl_password_in_a_trace_level_run() {
    const SASL_PASSWORD: &str = "saslPw-Hq7mN3bV8cXz";
    let broker = brokers::Tansu::start_authenticating();
    let sim = sim(world(1, 1, 1, 0), SimConfig::default()).await;
    let (tokens, accounts) = sim_accounts(&sim);
    let config = ConfigFile::with(format!(
            "[source]\nurl = \"{}\"\n[shutdown]\ndrain_timeout = \"1s\"\n[sink]\nkind = \"kafka\"\nbrokers = \"{}\"\ncreate_topics = {{ enabled = false }}\n[sink.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-256\"\n\"sasl.username\" = \"bridge\"\n\"sasl.password\" = \"{SASL_PASSWORD}\"\ndebug = \"security,broker,protocol,conf\"\n{accounts}",
            sim.url(),
            broker.brokers()
    ));
    let path = config.path();
    let child = bridge()
        .args([
            "--log",
            "trace",
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "-c",
        ])
        .arg(path)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sim.wait_for_subscriptions(tokens.len(), Duration::from_secs(20))
        .await
        .unwrap();
    sim.burst(10, &Selection::all()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let o = voxsig_testkit::process::terminate_and_collect(child).await;
    let log = output(&o);
    assert!(
        log.contains("librdkafka"),
        "librdkafka's debug lines are on: {log}"
    );
    assert_no_secret(&log, SASL_PASSWORD, "kafka trace log");
    for token in &tokens {
        assert_no_secret(&log, token, "kafka trace log");
    }
    sim.shutdown().await;
}
