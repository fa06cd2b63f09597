use super::*;
use std::time::Duration;

const MINIMAL: &str = r#"
[source]
url = "ws://127.0.0.1:3000/cable"

[[accounts]]
account_id = 1
user_id = 7
pubsub_token = "furNHtAQnqxQN2FmkLzf8x4T"

[[accounts]]
account_id = 1
pubsub_token = "contactTokenAAAAAAAAAAAA"
"#;

fn error_of(toml: &str) -> ConfigError {
    match Config::from_toml(toml).and_then(Config::validate) {
        Ok(_) => panic!("expected an error for:\n{toml}"),
        Err(e) => e,
    }
}

#[test]
fn a_minimal_config_gets_the_documented_defaults() {
    let s = Config::from_toml(MINIMAL).unwrap().validate().unwrap();
    assert_eq!(s.accounts.len(), 2);
    assert!(s.accounts[1].identifier().is_contact());
    assert_eq!(s.config.source.presence_interval, Duration::from_secs(30));
    assert_eq!(s.config.source.stale_after, Duration::from_secs(6));
    assert_eq!(s.config.source.subscriptions_per_connection, 50);
    assert_eq!(s.config.source.read_buffer_bytes, 16 * 1024);
    assert!(s.config.source.tcp_nodelay);
    assert_eq!(s.topic.as_str(), "voxsig/{account}/{event}");
    assert_eq!(s.key.as_str(), "{account}/{conversation}");
    assert_eq!(s.sink.kind(), "stdout");
    assert!(s.config.dedup.enabled);
}

#[test]
fn durations_and_nested_tables_parse() {
    let toml = format!(
        "{MINIMAL}\n[route]\npayload = \"envelope\"\ninclude = [\"message.*\"]\n[dedup]\nwindow = \"500ms\"\n"
    )
    .replace("[source]\n", "[source]\npresence_interval = \"20s\"\nread_buffer_bytes = 8192\ntcp_nodelay = false\nreconnect = { initial = \"250ms\", max = \"30s\", jitter = \"equal\" }\n");
    let s = Config::from_toml(&toml).unwrap().validate().unwrap();
    assert_eq!(s.config.source.presence_interval, Duration::from_secs(20));
    assert_eq!(s.config.source.read_buffer_bytes, 8192);
    assert!(!s.config.source.tcp_nodelay);
    assert_eq!(
        s.config.source.reconnect.initial,
        Duration::from_millis(250)
    );
    assert_eq!(s.config.dedup.window, Duration::from_millis(500));
    assert_eq!(s.config.route.payload, PayloadMode::Envelope);
    assert!(!s.filter.allows("presence.update"));
}

#[test]
fn errors_name_the_key_and_the_problem() {
    let cases: Vec<(String, &str, &str)> = vec![
        (MINIMAL.replace("ws://127.0.0.1:3000/cable", "http://x/cable"), "source.url", "ws://"),
        (MINIMAL.replace("[source]", "[source]\nsubscriptions_per_connection = 0"), "source.subscriptions_per_connection", "between"),
        (MINIMAL.replace("[source]", "[source]\npresence_interval = \"soon\""), "source.presence_interval", ""),
        (MINIMAL.replace("[source]", "[source]\nread_buffer_bytes = 100"), "source.read_buffer_bytes", "between"),
        (MINIMAL.replace("[source]", "[source]\nsubscription_per_connection = 5"), "source", "subscription_per_connection"),
        (MINIMAL.replace("user_id = 7\n", "user_id = 7\npubsub_token_env = \"X\"\n"), "accounts[0]", "exactly one"),
        (MINIMAL.replace("pubsub_token = \"contactTokenAAAAAAAAAAAA\"", "pubsub_token = \"furNHtAQnqxQN2FmkLzf8x4T\""), "accounts[1]", "same pubsub token as accounts[0]"),
        (MINIMAL.replace("pubsub_token = \"contactTokenAAAAAAAAAAAA\"", "pubsub_token_env = \"VOXSIG_TEST_SURELY_UNSET_VAR\""), "accounts[1].pubsub_token_env", "is not set"),
        (MINIMAL.replace("pubsub_token = \"contactTokenAAAAAAAAAAAA\"", "pubsub_token_file = \"/nonexistent/token\""), "accounts[1].pubsub_token_file", "cannot read the file"),
        (format!("{MINIMAL}\n[route]\ntopic = \"voxsig/{{acount}}\"\n"), "route.topic", "unknown variable `{acount}`"),
        (format!("{MINIMAL}\n[route]\ntopic = \"voxsig/#/{{event}}\"\n"), "route.topic", ""),
        (format!("{MINIMAL}\n[sink]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\n[route]\ntopic = \"voxsig/{{account}}\"\n"), "route.topic", ""),
        (format!("{MINIMAL}\n[sink]\nkind = \"carrier-pigeon\"\n"), "sink", ""),
        ("[source]\nurl = \"ws://h/cable\"\n".to_owned(), "accounts", "no accounts"),
        (format!("accounts_file = \"/nonexistent/accounts.toml\"\n{MINIMAL}"), "accounts_file", "cannot read"),
        (format!("{MINIMAL}\n[runtime]\nworker_threads = 0\n"), "runtime.worker_threads", "at least 1"),
        (format!("{MINIMAL}\n[runtime]\nworker_threads = 4000\n"), "runtime.worker_threads", "at most 256"),
        (format!("{MINIMAL}\n[runtime]\nworker_threads = -1\n"), "runtime", ""),
        (format!("{MINIMAL}\n[runtime]\nlinger = \"11ms\"\n"), "runtime.linger", "at most 10ms"),
        (format!("{MINIMAL}\n[runtime]\nlinger = \"500us\"\nworker_threads = 2\n"), "runtime.linger", "worker_threads = 1"),
        (format!("{MINIMAL}\n[runtime]\nlinger = \"soon\"\n"), "runtime", ""),
        (format!("{MINIMAL}\n[runtime]\nworkers = 2\n"), "runtime", "workers"),
    ];
    for (toml, key, problem) in cases {
        let e = error_of(&toml);
        assert!(
            e.key.starts_with(key),
            "key {:?} should start with {key:?} ({e})",
            e.key
        );
        assert!(
            e.problem.contains(problem),
            "{e} should mention {problem:?}"
        );
        assert!(
            !e.to_string().contains("furNHtAQnqxQN2FmkLzf8x4T"),
            "secret in {e}"
        );
    }
}

#[test]
fn tokens_come_from_files_and_accounts_from_a_separate_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "  fileToken123456\n").unwrap();
    let accounts = dir.path().join("accounts.toml");
    std::fs::write(
        &accounts,
        "[[accounts]]\naccount_id = 5\nuser_id = 1\npubsub_token = \"a1\"\n[[accounts]]\naccount_id = 6\npubsub_token = \"a2\"\nlabels = { team = \"emea\" }\n",
    )
    .unwrap();
    let toml = format!(
        "[source]\nurl = \"wss://example.invalid/cable\"\naccounts_file = {:?}\n[[accounts]]\naccount_id = 1\npubsub_token_file = {:?}\n",
        accounts.display().to_string(),
        token.display().to_string()
    )
    .replace("[source]\nurl = \"wss://example.invalid/cable\"\naccounts_file", "accounts_file");
    let s = Config::from_toml(&toml).unwrap().validate().unwrap();
    let tokens: Vec<&str> = s.accounts.iter().map(|a| a.token.expose()).collect();
    assert_eq!(tokens, ["fileToken123456", "a1", "a2"]);
    assert_eq!(s.accounts[2].labels["team"], "emea");
}

#[test]
fn the_redacted_rendering_shows_no_secret() {
    let s = Config::from_toml(MINIMAL).unwrap().validate().unwrap();
    let shown = s.redacted_toml();
    assert!(!shown.contains("furNHtAQnqxQN2FmkLzf8x4T"), "{shown}");
    assert!(shown.contains("tok…8x4T"), "{shown}");
    assert!(shown.contains("presence_interval = \"30s\""), "{shown}");
    assert!(
        shown.contains("topic = \"voxsig/{account}/{event}\""),
        "{shown}"
    );
}

#[test]
fn origin_defaults_to_the_sites_own() {
    assert_eq!(
        crate::runtime::origin_of("wss://app.voxsig.com/cable"),
        "https://app.voxsig.com"
    );
    assert_eq!(
        crate::runtime::origin_of("ws://127.0.0.1:3000/cable"),
        "http://127.0.0.1:3000"
    );
}

#[test]
fn shards_split_accounts_and_together_cover_all() {
    let mut toml = String::from("[source]\nurl = \"ws://h/cable\"\n");
    for account in 1..=200 {
        toml.push_str(&format!(
            "[[accounts]]\naccount_id = {account}\npubsub_token = \"t{account}\"\n"
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for index in 0..3 {
        let sharded = format!("[shard]\nindex = {index}\ncount = 3\n{toml}");
        let s = Config::from_toml(&sharded).unwrap().validate().unwrap();
        assert!(
            s.accounts.len() > 30 && s.accounts.len() < 110,
            "{}",
            s.accounts.len()
        );
        for a in &s.accounts {
            assert!(
                seen.insert(a.account_id),
                "account {} in two shards",
                a.account_id
            );
        }
    }
    assert_eq!(seen.len(), 200);
    let e = error_of(&format!("[shard]\nindex = 3\ncount = 3\n{toml}"));
    assert_eq!(e.key, "shard.index");
}

#[test]
fn kafka_properties_load_from_sink_kafka_properties_and_stay_redacted() {
    let toml = format!(
        "{MINIMAL}\n[sink]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\n\
         [sink.kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
         \"sasl.password\" = \"hunter2-secret\"\n"
    );
    let s = Config::from_toml(&toml).unwrap().validate().unwrap();
    let voxsig_sinks::SinkConfig::Kafka(kafka) = &s.sink else {
        panic!("not kafka: {:?}", s.sink.kind());
    };
    let names: Vec<&str> = kafka.all_properties().map(|(_, name, _)| name).collect();
    assert_eq!(names, ["sasl.password", "security.protocol"]);
    let shown = s.redacted_toml();
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    assert!(
        shown.contains("[sink.kafka.properties]\n\"sasl.password\" = \"<redacted>\""),
        "{shown}"
    );
    let reserved = format!("{MINIMAL}\n[sink]\nkind = \"kafka\"\nbrokers = \"b:1\"\n[sink.kafka.properties]\nacks = \"1\"\n");
    assert_eq!(error_of(&reserved).key, "sink.kafka.properties.acks");
}

#[test]
fn cloudevents_payload_and_mqtt5_sink_parse() {
    let toml = format!(
        "{MINIMAL}\n[route]\npayload = \"cloudevents\"\ncloudevents_type_prefix = \"io.example.\"\n\
         [sink]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nprotocol = \"5\"\n\
         message_expiry = [{{ events = [\"conversation.typing_*\"], secs = 60 }}]\n"
    );
    let s = Config::from_toml(&toml).unwrap().validate().unwrap();
    assert_eq!(s.config.route.payload, PayloadMode::CloudEvents);
    let ce = s.config.cloudevents().expect("cloudevents on");
    let headers = voxsig_sinks::Headers {
        event: "message.created".into(),
        event_label: "message.created",
        account_id: Some(3),
        received_at_ms: 0,
        event_id: Some("e1".into()),
        replayed: false,
    };
    let a = ce.attributes(&headers, b"{}");
    assert_eq!(a.source, "http://127.0.0.1:3000/accounts/3");
    assert_eq!(a.ty, "io.example.message.created");
    assert_eq!(
        s.sink.cloudevents_mode(),
        voxsig_sinks::cloudevents::Mode::Binary
    );
    assert!(Config::from_toml(MINIMAL).unwrap().cloudevents().is_none());
    let bad = format!("{MINIMAL}\n[sink]\nkind = \"mqtt\"\nurl = \"mqtt://a\"\nprotocol = \"4\"\n");
    assert!(Config::from_toml(&bad).and_then(Config::validate).is_err());
}

#[test]
fn the_disk_buffer_lives_under_the_state_dir_and_keeps_its_own_defaults() {
    let s = Config::from_toml(&format!(
        "{MINIMAL}\n[state]\ndir = \"/var/lib/vb\"\n[buffer]\nkind = \"disk\"\n"
    ))
    .unwrap()
    .validate()
    .unwrap();
    let b = &s.config.buffer;
    assert_eq!(b.dir.as_deref(), Some(Path::new("/var/lib/vb/buffer")));
    assert_eq!(b.max_bytes, voxsig_sinks::buffer::DISK_DEFAULT_MAX_BYTES);
    assert_eq!(b.max_events, None, "unbounded unless set");
    assert_eq!(b.fsync, voxsig_sinks::Fsync::Interval);
    assert_eq!(b.fsync_interval, Duration::from_millis(100));
    // The memory buffer is bounded by bytes (16 MiB), not by a count of records.
    let m = Config::from_toml(MINIMAL).unwrap().validate().unwrap();
    assert_eq!(m.config.buffer.max_events, None);
    assert_eq!(m.config.buffer.max_bytes, 16 * 1024 * 1024);
    // An explicit dir wins; no dir at all is an error naming the key.
    let s = Config::from_toml(&format!(
        "{MINIMAL}\n[buffer]\nkind = \"disk\"\ndir = \"/data/buf\"\nfsync = \"always\"\n"
    ))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(s.config.buffer.dir.as_deref(), Some(Path::new("/data/buf")));
    let e = error_of(&format!("{MINIMAL}\n[buffer]\nkind = \"disk\"\n"));
    assert_eq!(e.key, "buffer.dir");
    let e = error_of(&format!(
        "{MINIMAL}\n[buffer]\nkind = \"disk\"\nfsync = \"sometimes\"\n"
    ));
    assert!(e.to_string().contains("fsync"), "{e}");
    let e = error_of(&format!(
        "{MINIMAL}\n[state]\ndir = \"/x\"\n[buffer]\nkind = \"disk\"\nfsync_interval = \"0s\"\n"
    ));
    assert_eq!(e.key, "buffer.fsync_interval");
}

const URL: &str = "[source]\nurl = \"wss://app.example/cable\"\n";

#[test]
fn api_tokens_profile_entries_and_catchup_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api");
    std::fs::write(&file, "  fileApiToken0123456789\n").unwrap();
    let toml = format!(
        "{URL}presence = \"off\"\n[catchup]\nmax_window = \"1h\"\nrate = 20.0\n\
         [[accounts]]\naccount_id = \"all\"\napi_access_token = \"profileApiToken01234567\"\n\
         [[accounts]]\naccount_id = 4\napi_access_token_file = {file:?}\n\
         [[accounts]]\naccount_id = 5\nuser_id = 9\npubsub_token = \"pubsubTokenAAAAAAAAAAAA\"\napi_access_token = \"fullApiToken0123456789\"\n\
         [[accounts]]\npubsub_token = \"contactTokenBBBBBBBBBBBB\"\n"
    );
    let s = Config::from_toml(&toml).unwrap().validate().unwrap();
    assert_eq!(s.config.source.presence, Presence::Off);
    assert_eq!(s.config.source.api_base(), "https://app.example");
    assert_eq!(s.config.catchup.max_window, Duration::from_secs(3600));
    assert_eq!(s.config.catchup.rate, 20.0);
    // "all" and the entry without a pubsub token wait for the profile.
    assert_eq!(s.discover.len(), 2);
    assert_eq!(s.discover[0].accounts, AccountSelector::All);
    assert_eq!(s.discover[1].accounts, AccountSelector::Id(4));
    assert_eq!(
        s.discover[1].api_token.expose(),
        "fileApiToken0123456789",
        "trimmed"
    );
    // A complete entry subscribes as configured and keeps its API token for catch-up.
    assert_eq!(s.accounts.len(), 2);
    assert_eq!(s.accounts[0].account_id, 5);
    assert!(s.accounts[0].api_token.is_some());
    // A contact entry needs no account id.
    assert!(s.accounts[1].identifier().is_contact());
    assert!(s.accounts[1].api_token.is_none());
    // `check` shows no API token.
    let shown = s.redacted_toml();
    for secret in [
        "profileApiToken",
        "fileApiToken",
        "fullApiToken",
        "pubsubTokenAAA",
    ] {
        assert!(!shown.contains(secret), "{secret} in:\n{shown}");
    }
    assert!(shown.contains("account_id = \"all\""), "{shown}");
    assert!(!format!("{s:?}").contains("ApiToken0123"), "Debug redacts");
}

#[test]
fn api_token_errors_name_the_entry_and_never_the_secret() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{URL}[[accounts]]\naccount_id = \"all\"\npubsub_token = \"pubsubTokenAAAAAAAAAAAA\"\nuser_id = 1\n"),
            "accounts[0]",
            "needs an api_access_token",
        ),
        (
            format!("{URL}[[accounts]]\naccount_id = 1\nuser_id = 1\n"),
            "accounts[0]",
            "pubsub_token",
        ),
        (
            format!("{URL}[[accounts]]\naccount_id = 1\napi_access_token = \"secretApiTokenXXXXXXXX\"\napi_access_token_env = \"X\"\n"),
            "accounts[0]",
            "at most one",
        ),
        (
            format!("{URL}[[accounts]]\naccount_id = 1\napi_access_token = \"  \"\n"),
            "accounts[0]",
            "empty",
        ),
        (
            format!("{URL}[[accounts]]\naccount_id = 1\napi_access_token = \"secret\\u0000ApiToken\"\n"),
            "accounts[0]",
            "control",
        ),
        (
            format!("{URL}[[accounts]]\naccount_id = 1\napi_access_token_env = \"VOXSIG_TEST_NO_SUCH_VAR_9\"\n"),
            "accounts[0].api_access_token_env",
            "not set",
        ),
        (
            format!("{URL}[[accounts]]\nuser_id = 3\npubsub_token = \"pubsubTokenAAAAAAAAAAAA\"\n"),
            "accounts[0].account_id",
            "required",
        ),
        (
            format!("{URL}[[accounts]]\naccount_id = \"some\"\npubsub_token = \"pubsubTokenAAAAAAAAAAAA\"\n"),
            "accounts.0.account_id",
            "",
        ),
        (
            format!("{URL}api_url = \"ftp://x\"\n[[accounts]]\naccount_id = 1\npubsub_token = \"pubsubTokenAAAAAAAAAAAA\"\n"),
            "source.api_url",
            "http",
        ),
        (
            format!("{URL}[catchup]\nconcurrency = 0\n[[accounts]]\naccount_id = 1\npubsub_token = \"pubsubTokenAAAAAAAAAAAA\"\n"),
            "catchup.concurrency",
            "between",
        ),
        (
            format!("{URL}presence = \"sometimes\"\n[[accounts]]\naccount_id = 1\npubsub_token = \"pubsubTokenAAAAAAAAAAAA\"\n"),
            "source.presence",
            "",
        ),
    ];
    for (toml, key, problem) in cases {
        let e = error_of(&toml);
        assert!(
            e.key.starts_with(key) && e.problem.contains(problem),
            "{toml}\n=> {e}"
        );
        let shown = e.to_string();
        assert!(
            !shown.contains("secretApiToken") && !shown.contains("ApiToken\u{0}"),
            "{shown}"
        );
    }
}

#[test]
fn sink_durations_are_strings_and_the_old_numeric_keys_are_aliases() {
    let sink = |keys: &str| {
        format!("{MINIMAL}\n[sink]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nprotocol = \"5\"\n{keys}\n")
    };
    let mqtt = |toml: &str| match Config::from_toml(toml).unwrap().validate().unwrap().sink {
        voxsig_sinks::SinkConfig::Mqtt(m) => m,
        other => panic!("not mqtt: {}", other.kind()),
    };
    let m = mqtt(&sink(
        "keep_alive = \"45s\"\nconnect_timeout = \"3s\"\nsession_expiry = \"2h\"\n\
         reconnect = { min_backoff = \"50ms\", max_backoff = \"2s\" }\n\
         message_expiry = [{ events = [\"presence.update\"], after = \"1m\" }]",
    ));
    assert_eq!(
        (
            m.keep_alive_secs,
            m.connect_timeout_secs,
            m.session_expiry_secs
        ),
        (45, 3, 7200)
    );
    assert_eq!(
        (m.reconnect.min_backoff_ms, m.reconnect.max_backoff_ms),
        (50, 2000)
    );
    assert_eq!(m.message_expiry[0].secs, 60);
    let old = mqtt(&sink(
        "keep_alive_secs = 45\nreconnect = { min_backoff_ms = 50, max_backoff_ms = 2000 }\n\
         message_expiry = [{ events = [\"presence.update\"], secs = 60 }]",
    ));
    assert_eq!(
        (
            old.keep_alive_secs,
            old.reconnect.min_backoff_ms,
            old.message_expiry[0].secs
        ),
        (45, 50, 60)
    );
    let kafka = format!(
        "{MINIMAL}\n[sink]\nkind = \"kafka\"\nbrokers = \"b:9092\"\nlinger = \"20ms\"\nmessage_timeout = \"10s\"\n"
    );
    let voxsig_sinks::SinkConfig::Kafka(k) =
        Config::from_toml(&kafka).unwrap().validate().unwrap().sink
    else {
        panic!("not kafka");
    };
    assert_eq!((k.linger_ms, k.message_timeout_ms), (20, 10_000));
    // Both spellings of one setting: one error naming both.
    for (keys, new, old) in [
        (
            "keep_alive = \"30s\"\nkeep_alive_secs = 30",
            "`keep_alive`",
            "`keep_alive_secs`",
        ),
        (
            "reconnect = { min_backoff = \"1s\", min_backoff_ms = 1000 }",
            "`min_backoff`",
            "`min_backoff_ms`",
        ),
    ] {
        let e = error_of(&sink(keys));
        assert!(e.key.starts_with("sink"), "{e}");
        assert!(e.problem.contains(new) && e.problem.contains(old), "{e}");
    }
    let e = error_of(&sink("keep_alive = \"1500ms\""));
    assert!(e.problem.contains("whole number of seconds"), "{e}");
    let e = error_of(&sink("connect_timeout = \"soon\""));
    assert!(e.problem.contains("`connect_timeout`"), "{e}");
}

#[test]
fn the_runtime_takes_the_configured_worker_threads() {
    let default = Config::from_toml(MINIMAL).unwrap().validate().unwrap();
    assert_eq!(default.config.runtime.worker_threads, None);
    assert!(!default.redacted_toml().contains("worker_threads"));
    let one = Config::from_toml(&format!("{MINIMAL}\n[runtime]\nworker_threads = 1\n"))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(one.config.runtime.worker_threads, Some(1));
    assert!(one.redacted_toml().contains("worker_threads = 1"));
    // The builder really runs on that many workers.
    let runtime = one.config.runtime.builder().build().unwrap();
    assert_eq!(runtime.metrics().num_workers(), 1);
    let two = RuntimeConfig {
        worker_threads: Some(2),
        ..RuntimeConfig::default()
    };
    assert_eq!(two.builder().build().unwrap().metrics().num_workers(), 2);
}

#[test]
fn linger_is_off_by_default_and_runs_on_one_worker_when_set() {
    let default = Config::from_toml(MINIMAL).unwrap().validate().unwrap();
    assert!(default.config.runtime.linger.is_zero());
    assert!(!default.redacted_toml().contains("linger"));
    let set = Config::from_toml(&format!("{MINIMAL}\n[runtime]\nlinger = \"500us\"\n"))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(set.config.runtime.linger, Duration::from_micros(500));
    assert!(set.redacted_toml().contains("linger = \"500us\""));
    // One worker unless told otherwise; 1 said explicitly is accepted too.
    let runtime = set.config.runtime.builder().build().unwrap();
    assert_eq!(runtime.metrics().num_workers(), 1);
    let explicit = format!("{MINIMAL}\n[runtime]\nlinger = \"1ms\"\nworker_threads = 1\n");
    assert!(Config::from_toml(&explicit).unwrap().validate().is_ok());
}
