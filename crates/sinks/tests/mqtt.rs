//! The MQTT sink against a real mosquitto started on a free port.

use voxsig_testkit::brokers as support;
use voxsig_testkit::mqtt as mqtt_support;

use std::time::Duration;

use bytes::Bytes;
use mqtt_support::{check_complete, Subscriber};
use support::{eventually, metric, Mosquitto, MosquittoOptions, TestPki};
use voxsig_sinks::mqtt::{MessageExpiry, Protocol};
use voxsig_sinks::{
    buffer, spawn, BufferConfig, BufferWriter, MqttConfig, Secret, SinkConfig, SinkHandle,
    SinkMetrics,
};
use voxsig_testkit::records::{record, Generator, Layout};

fn start_sink(
    config: MqttConfig,
    buffer_config: BufferConfig,
) -> (BufferWriter, SinkHandle, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = SinkMetrics::register(&registry).unwrap();
    let (writer, reader) = buffer(buffer_config, metrics);
    let sink = SinkConfig::Mqtt(config)
        .build("test")
        .expect("build the sink");
    (writer, spawn(sink, reader), registry)
}

fn fast_reconnect(config: &mut MqttConfig) {
    config.reconnect.min_backoff_ms = 50;
    config.reconnect.max_backoff_ms = 500;
}

/// For one protocol and QoS: a prefix `voxsig-<tag>v<protocol>-q<qos>`, its records'
/// generator, a subscriber to everything under it (subscribed), and a sink configuration with
/// its own client id.
async fn case(
    broker: &Mosquitto,
    tag: &str,
    protocol: Protocol,
    qos: u8,
) -> (String, Generator, Subscriber, MqttConfig) {
    let v = protocol.as_str();
    let prefix = format!("voxsig-{tag}v{v}-q{qos}");
    let generator = Generator::new(&prefix, Layout::Mqtt);
    let sub = Subscriber::start(
        broker.port,
        &format!("sub-{tag}{v}-q{qos}"),
        None,
        true,
        &format!("{prefix}/#"),
    );
    sub.wait_subscribed(1).await;
    let mut config = MqttConfig::new(broker.url());
    config.protocol = protocol;
    config.qos = qos;
    config.client_id = Some(format!("bridge-{tag}{v}-q{qos}"));
    (prefix, generator, sub, config)
}

async fn push_all(writer: &BufferWriter, generator: &Generator, range: std::ops::Range<u64>) {
    for n in range {
        writer.push(generator.record(n)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_arrives_with_its_topic_payload_and_retain_flag_at_each_qos() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
    let broker = Mosquitto::start(MosquittoOptions::default());
    let cases = [Protocol::V311, Protocol::V5]
        .into_iter()
        .flat_map(|p| [0u8, 1, 2].map(|q| (p, q)));
    for (protocol, qos) in cases {
        let v = protocol.as_str();
        let (prefix, generator, sub, mut config) = case(&broker, "", protocol, qos).await;
        config.status.topic = format!("{prefix}/bridge/{{instance}}/status");
        let (writer, handle, registry) = start_sink(config, BufferConfig::default());
        let n = 3_000;
        push_all(&writer, &generator, 0..n).await;
        assert!(
            eventually(Duration::from_secs(20), || sub.by_seq().len() as u64 >= n).await,
            "qos {qos}: {} of {n} arrived",
            sub.by_seq().len()
        );
        let duplicates = check_complete(&sub, &generator, 0..n, 0);
        assert_eq!(duplicates, 0, "qos {qos}: no reconnect, no duplicates");
        assert!(
            sub.received().iter().all(|r| !r.retain),
            "live subscribers see retain=0"
        );
        let published = || {
            metric(
                &registry,
                "voxsig_bridge_sink_records_published_total",
                &[("sink", "mqtt")],
            )
        };
        assert!(
            eventually(Duration::from_secs(5), || published() == n as f64).await,
            "qos {qos}: acknowledged {} of {n}",
            published()
        );

        // A dashboard connecting later sees the retained presence and the bridge's status.
        let late = Subscriber::start(
            broker.port,
            &format!("late-{v}-q{qos}"),
            None,
            true,
            &format!("{prefix}/#"),
        );
        assert!(eventually(Duration::from_secs(5), || late.received().len() >= 8).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let retained = late.received();
        assert!(retained.iter().all(|r| r.retain));
        let status: Vec<_> = retained
            .iter()
            .filter(|r| r.topic.ends_with("/status"))
            .collect();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].topic, format!("{prefix}/bridge/test/status"));
        assert_eq!(&status[0].payload[..], b"online");
        let mut presence: Vec<_> = retained
            .iter()
            .filter(|r| !r.topic.ends_with("/status"))
            .map(|r| r.topic.clone())
            .collect();
        presence.sort();
        let expected: Vec<String> = (1..=7)
            .map(|a| format!("{prefix}/{a}/presence.update"))
            .collect();
        assert_eq!(
            presence, expected,
            "only presence.update is retained, one per account"
        );

        let report = handle.shutdown(Duration::from_secs(5)).await;
        assert_eq!((report.delivered, report.undelivered), (n, 0));
        // A clean stop leaves `offline` behind.
        let after = Subscriber::start(
            broker.port,
            &format!("after-{v}-q{qos}"),
            None,
            true,
            &format!("{prefix}/bridge/#"),
        );
        assert!(eventually(Duration::from_secs(5), || !after.received().is_empty()).await);
        assert_eq!(&after.received()[0].payload[..], b"offline");
    }
}

/// Records that come one at a time, each after the sink has gone idle (the steady low rate of
/// a real platform), each arrive without waiting for the next: the sink's event loop finds a
/// request queued while it was idle (its queue wakes nobody: the sink task polls it after
/// queueing), at each QoS and protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_one_at_a_time_after_idle_each_arrive_on_their_own() {
    let broker = Mosquitto::start(MosquittoOptions::default());
    for (protocol, qos) in [Protocol::V311, Protocol::V5]
        .into_iter()
        .flat_map(|p| [0u8, 1].map(|q| (p, q)))
    {
        let v = protocol.as_str();
        let (_, generator, sub, config) = case(&broker, "idle-", protocol, qos).await;
        let (writer, handle, _registry) = start_sink(config, BufferConfig::default());
        for n in 0..5u64 {
            // Idle: the event loop has looked at an empty queue and is waiting.
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.push(generator.record(n)).await.unwrap();
            assert!(
                eventually(Duration::from_secs(5), || sub.by_seq().len() as u64 > n).await,
                "v{v} qos {qos}: record {n} did not arrive on its own ({} arrived)",
                sub.by_seq().len()
            );
        }
        let report = handle.shutdown(Duration::from_secs(5)).await;
        assert_eq!((report.delivered, report.undelivered), (5, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_stream_without_persistence_loses_nothing() {
    killed_mid_stream(Protocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_broker_killed_mid_stream_without_persistence_loses_nothing() {
    killed_mid_stream(Protocol::V5).await;
}

async fn killed_mid_stream(protocol: Protocol) {
    let users = vec![
        ("bridge".to_owned(), "bridge-pw".to_owned()),
        ("sub".to_owned(), "sub-pw".to_owned()),
    ];
    let mut broker = Mosquitto::start(MosquittoOptions {
        users: users.clone(),
        ..MosquittoOptions::default()
    });
    let sub = Subscriber::start(
        broker.port,
        "sub",
        Some(("sub", "sub-pw")),
        false,
        "voxsig/#",
    );
    sub.wait_subscribed(1).await;

    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "bridge-pw\n").unwrap();
    let mut config = MqttConfig::new(broker.url());
    config.protocol = protocol;
    config.username = Some("bridge".into());
    config.password = Some(Secret::from_file(&pw_file));
    fast_reconnect(&mut config);
    let (writer, handle, registry) = start_sink(config, BufferConfig::default());

    let generator = Generator::new("voxsig", Layout::Mqtt);
    let n = 6_000;
    let producer = {
        let (writer, generator) = (writer.clone(), generator.clone());
        tokio::spawn(async move {
            // As fast as the buffer takes them: a full in-flight window when the broker dies.
            for i in 0..n {
                writer.push(generator.record(i)).await.unwrap();
            }
        })
    };
    assert!(eventually(Duration::from_secs(20), || sub.by_seq().len() >= 1_000).await);
    broker.kill();
    // Records the broker acknowledged before it crashed are the broker's to lose (mosquitto
    // acknowledges before it forwards; without persistence a crash in between loses them).
    // The first session publishes and is acknowledged in seq order, so those are 0..acked.
    let connected = || metric(&registry, "voxsig_bridge_sink_connected", &[]);
    assert!(eventually(Duration::from_secs(5), || connected() == 0.0).await);
    let acked_before_crash =
        metric(&registry, "voxsig_bridge_sink_records_published_total", &[]) as u64;
    // Restart with the bridge locked out until the subscriber has re-subscribed (the broker
    // forgot every session), so the check below sees what the bridge re-publishes.
    broker.write_passwords(&users[1..]);
    broker.restart();
    sub.wait_subscribed(2).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    broker.write_passwords(&users);
    broker.reload();

    producer.await.unwrap();
    let unacked_arrived = || {
        let by_seq = sub.by_seq();
        (acked_before_crash..n).all(|s| by_seq.contains_key(&s))
    };
    assert!(
        eventually(Duration::from_secs(30), unacked_arrived).await,
        "{} of {n} arrived (acknowledged before the crash: {acked_before_crash})",
        sub.by_seq().len()
    );
    let arrived = sub.by_seq();
    let lost_by_broker = (0..acked_before_crash)
        .filter(|s| !arrived.contains_key(s))
        .count();
    assert!(
        lost_by_broker < 100,
        "{lost_by_broker} acknowledged records lost by the crash"
    );
    let duplicates = check_complete(&sub, &generator, 0..n, lost_by_broker);
    let redelivered = metric(&registry, "voxsig_bridge_sink_redeliveries_total", &[]) + 0.0;
    let auth = metric(
        &registry,
        "voxsig_bridge_sink_connection_errors_total",
        &[("kind", "auth")],
    );
    let v = protocol.as_str();
    eprintln!("kill/restart (MQTT {v}): {n} records, {acked_before_crash} acknowledged before the crash, {lost_by_broker} of those lost by it, {duplicates} duplicates, {redelivered} redelivered, {auth} auth refusals");
    assert!(
        auth >= 1.0,
        "the locked-out bridge was refused and kept going"
    );
    assert!(
        redelivered >= 1.0,
        "publishes unacknowledged at the kill were sent again"
    );
    assert!(
        duplicates as f64 <= redelivered,
        "duplicates only from redeliveries"
    );
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.delivered, report.undelivered), (n, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_with_persistence_resumes_the_session() {
    restarted_with_persistence(Protocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_broker_restarted_with_persistence_resumes_the_session() {
    restarted_with_persistence(Protocol::V5).await;
}

async fn restarted_with_persistence(protocol: Protocol) {
    let mut broker = Mosquitto::start(MosquittoOptions {
        persistence: true,
        ..MosquittoOptions::default()
    });
    let sub = Subscriber::start(broker.port, "sub-persist", None, false, "voxsig/#");
    sub.wait_subscribed(1).await;
    let mut config = MqttConfig::new(broker.url());
    config.protocol = protocol;
    fast_reconnect(&mut config);
    let (writer, handle, registry) = start_sink(config, BufferConfig::default());
    let generator = Generator::new("voxsig", Layout::Mqtt);
    let n = 4_000;
    let producer = {
        let (writer, generator) = (writer.clone(), generator.clone());
        tokio::spawn(async move {
            for i in 0..n {
                writer.push(generator.record(i)).await.unwrap();
                if i % 25 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    assert!(eventually(Duration::from_secs(20), || sub.by_seq().len() >= 1_000).await);
    broker.stop();
    broker.restart();
    producer.await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || sub.by_seq().len() as u64 >= n).await,
        "{} of {n} arrived",
        sub.by_seq().len()
    );
    let duplicates = check_complete(&sub, &generator, 0..n, 0);
    let errors = metric(&registry, "voxsig_bridge_sink_connection_errors_total", &[]);
    let v = protocol.as_str();
    eprintln!("stop/restart with persistence (MQTT {v}): {duplicates} duplicates, {errors} connection errors");
    assert!(errors >= 1.0);
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.delivered, report.undelivered), (n, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topics_and_oversized_records_are_rejected_and_counted() {
    let broker = Mosquitto::start(MosquittoOptions::default());
    let sub = Subscriber::start(broker.port, "sub-invalid", None, true, "#");
    sub.wait_subscribed(1).await;
    let (writer, handle, registry) =
        start_sink(MqttConfig::new(broker.url()), BufferConfig::default());
    let bad_topics = ["voxsig/+/x", "voxsig/#", "$SYS/x", "", "a\0b"];
    let mut valid = 0;
    for (i, bad) in bad_topics.iter().enumerate() {
        writer
            .push(record(&format!("ok/{i}"), i as u64))
            .await
            .unwrap();
        writer.push(record(bad, 100 + i as u64)).await.unwrap();
        valid += 1;
    }
    let mut big = record("ok/big", 999);
    big.payload = Bytes::from(vec![b'x'; 2 << 20]);
    writer.push(big).await.unwrap();
    writer.push(record("ok/last", 1000)).await.unwrap();
    valid += 1;
    assert!(
        eventually(Duration::from_secs(10), || {
            sub.received()
                .iter()
                .filter(|r| r.topic.starts_with("ok/"))
                .count()
                >= valid
        })
        .await
    );
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.rejected, 6);
    assert_eq!(report.delivered, valid as u64);
    let failed = |reason| {
        metric(
            &registry,
            "voxsig_bridge_sink_records_failed_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(failed("invalid_topic"), 5.0);
    assert_eq!(failed("too_large"), 1.0);
}

/// mosquitto 2 closes the connection of an MQTT 3.1.1 client that sends a packet over its
/// `max_packet_size` (no PUBACK, nothing forwarded). The sink must give up on that record after a
/// few such losses instead of re-sending it forever, and deliver everything around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_broker_refuses_is_rejected_and_the_rest_delivered() {
    let broker = Mosquitto::start(MosquittoOptions {
        extra_config: "max_packet_size 4000\n".into(),
        ..MosquittoOptions::default()
    });
    let cases = [
        (Protocol::V311, false, 1),
        (Protocol::V311, true, 1),
        (Protocol::V311, false, 2),
        (Protocol::V5, false, 1),
    ];
    for (protocol, clean_session, qos) in cases {
        let v = protocol.as_str();
        let sub = Subscriber::start(
            broker.port,
            &format!("sub-refused-{v}-{clean_session}-{qos}"),
            None,
            true,
            "voxsig/#",
        );
        sub.wait_subscribed(1).await;
        let mut config = MqttConfig::new(broker.url());
        config.protocol = protocol;
        config.client_id = Some(format!("sink-refused-{v}-{clean_session}-{qos}"));
        config.qos = qos;
        config.clean_session = clean_session;
        fast_reconnect(&mut config);
        let (writer, handle, registry) = start_sink(config, BufferConfig::default());
        let generator = Generator::new("voxsig", Layout::Mqtt);
        push_all(&writer, &generator, 0..200).await;
        let mut big = generator.record(200);
        big.payload = Bytes::from(vec![b'x'; 20_000]);
        // The only record with this label: the failure counted below is this record's.
        big.headers.event_label = "other";
        writer.push(big).await.unwrap();
        push_all(&writer, &generator, 201..400).await;
        let arrived = eventually(Duration::from_secs(30), || {
            let by_seq = sub.by_seq();
            (0..400)
                .filter(|s| *s != 200)
                .all(|s| by_seq.contains_key(&s))
        })
        .await;
        let report = handle.shutdown(Duration::from_secs(5)).await;
        assert!(
            arrived,
            "records around the refused one arrive ({report:?})"
        );
        check_complete(&sub, &generator, 0..200, 0);
        check_complete(&sub, &generator, 201..400, 0);
        assert!(
            !sub.by_seq().contains_key(&200),
            "the big record never arrives"
        );
        assert_eq!(report.rejected, 1, "{report:?}");
        assert_eq!(report.undelivered, 0, "{report:?}");
        assert_eq!(report.delivered, 399, "{report:?}");
        // MQTT 3.1.1: mosquitto closes the connection on the oversize packet, the sink isolates
        // the record. MQTT 5: mosquitto announces its maximum packet size in CONNACK, the sink
        // refuses the record before sending it.
        let reason = match protocol {
            Protocol::V311 => "refused_by_broker",
            Protocol::V5 => "too_large",
        };
        let refused = metric(
            &registry,
            "voxsig_bridge_sink_records_failed_total",
            &[("reason", reason), ("event", "other")],
        );
        assert_eq!(refused, 1.0, "MQTT {v}: the big record is the one refused");
        if protocol == Protocol::V311 {
            let log = broker.log();
            assert!(
                log.contains("oversize packet"),
                "mosquitto disconnected the sink for the oversize packet"
            );
            // Issue 12: the refused record costs one lost connection among the others, then
            // one more sent alone, and is rejected: at most two reconnects, three connects.
            let connects = log
                .matches(&format!("as sink-refused-{v}-{clean_session}-{qos} "))
                .count();
            assert!(
                connects <= 3,
                "{connects} connects for one refused record (qos {qos}, clean {clean_session})"
            );
        } else {
            let errors = metric(&registry, "voxsig_bridge_sink_connection_errors_total", &[]);
            assert_eq!(errors, 0.0, "MQTT 5: never sent, no disconnect");
        }
    }
}

/// MQTT 5: a subscriber sees the record's metadata as user properties, the content type, the
/// payload format indicator and the message expiry of its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_subscribers_see_the_properties() {
    let broker = Mosquitto::start(MosquittoOptions::default());
    let sub = Subscriber::start_v5(broker.port, "sub-props", true, "voxsig/#");
    sub.wait_subscribed(1).await;
    let mut config = MqttConfig::new(broker.url());
    config.protocol = Protocol::V5;
    config.message_expiry = vec![MessageExpiry {
        events: vec!["conversation.typing_*".into()],
        secs: 60,
    }];
    let (writer, handle, _registry) = start_sink(config, BufferConfig::default());
    let mut typing = record("voxsig/7/conversation.typing_on", 1);
    typing.headers.event = "conversation.typing_on".into();
    typing.headers.account_id = Some(7);
    typing.headers.received_at_ms = 1_764_000_000_123;
    typing.headers.event_id = Some("evt-0001".into());
    typing.headers.replayed = true;
    writer.push(typing).await.unwrap();
    let mut plain = record("voxsig/8/message.created", 2);
    plain.headers.account_id = None;
    writer.push(plain).await.unwrap();
    // Hostile metadata: NUL and control characters would make mosquitto drop the connection.
    let mut hostile = record("voxsig/9/odd", 3);
    hostile.headers.event = "odd\u{0}\u{1}name".into();
    hostile.headers.event_id = Some("id\u{7f}".into());
    writer.push(hostile).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || sub.received().len() >= 3).await);
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.delivered, report.rejected), (3, 0));
    let received = sub.received();
    let typing = received
        .iter()
        .find(|r| r.topic == "voxsig/7/conversation.typing_on")
        .unwrap();
    let props = |r: &mqtt_support::Received| -> Vec<(String, String)> { r.user_properties.clone() };
    assert_eq!(
        props(typing),
        [
            ("event", "conversation.typing_on"),
            ("account_id", "7"),
            ("received_at", "1764000000123"),
            ("event_id", "evt-0001"),
            ("replayed", "1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(typing.content_type.as_deref(), Some("application/json"));
    assert_eq!(typing.payload_format, Some(1));
    let expiry = typing.message_expiry.expect("typing events expire");
    assert!((55..=60).contains(&expiry), "{expiry}");
    assert_eq!(&typing.payload[..], b"{\"n\":1}");
    let plain = received
        .iter()
        .find(|r| r.topic == "voxsig/8/message.created")
        .unwrap();
    assert_eq!(
        props(plain),
        [
            ("event", "message.created"),
            ("received_at", "1700000000000")
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
        "absent metadata is left out"
    );
    assert_eq!(plain.message_expiry, None);
    let odd = received.iter().find(|r| r.topic == "voxsig/9/odd").unwrap();
    assert_eq!(odd.user_properties[0].1, "odd\u{FFFD}\u{FFFD}name");
}

/// MQTT 5: a PUBACK with a failure reason code (mosquitto answers 0x87 "not authorized" for a
/// publish its ACL denies) rejects that record, counted, never acknowledged; the rest flows.
/// Over MQTT 3.1.1 the same broker acknowledges and drops it silently: nothing to see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_puback_failure_rejects_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user bridge\ntopic write voxsig/open/#\nuser sub\ntopic read voxsig/#\n",
    )
    .unwrap();
    let broker = Mosquitto::start(MosquittoOptions {
        users: vec![
            ("bridge".into(), "bridge-pw".into()),
            ("sub".into(), "sub-pw".into()),
        ],
        extra_config: format!("acl_file {}\n", acl.display()),
        ..MosquittoOptions::default()
    });
    let sub = Subscriber::start(
        broker.port,
        "sub-acl",
        Some(("sub", "sub-pw")),
        true,
        "voxsig/#",
    );
    sub.wait_subscribed(1).await;
    for qos in [1u8, 2] {
        let mut config = MqttConfig::new(broker.url());
        config.protocol = Protocol::V5;
        config.qos = qos;
        config.client_id = Some(format!("acl-q{qos}"));
        config.username = Some("bridge".into());
        config.password = Some(Secret::inline("bridge-pw"));
        config.status.enabled = false;
        let (writer, handle, registry) = start_sink(config, BufferConfig::default());
        for i in 0..20 {
            let topic = if i == 7 {
                "voxsig/closed/x"
            } else {
                "voxsig/open/x"
            };
            writer.push(record(topic, i)).await.unwrap();
        }
        let report = handle.shutdown(Duration::from_secs(10)).await;
        assert_eq!(
            (report.delivered, report.rejected, report.undelivered),
            (19, 1, 0),
            "QoS {qos}: {report:?}"
        );
        let refused = metric(
            &registry,
            "voxsig_bridge_sink_records_failed_total",
            &[("reason", "rejected_by_broker")],
        );
        assert_eq!(refused, 1.0, "QoS {qos}");
        let errors = metric(&registry, "voxsig_bridge_sink_connection_errors_total", &[]);
        assert_eq!(errors, 0.0, "QoS {qos}: no reconnect needed");
    }
    assert!(sub.received().iter().all(|r| r.topic == "voxsig/open/x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_and_unreachable_broker_are_counted_without_crashing() {
    let broker = Mosquitto::start(MosquittoOptions {
        users: vec![("bridge".into(), "right".into())],
        ..MosquittoOptions::default()
    });
    let mut wrong = MqttConfig::new(broker.url());
    wrong.username = Some("bridge".into());
    wrong.password = Some(Secret::inline("wrong"));
    fast_reconnect(&mut wrong);
    let mut nowhere = MqttConfig::new(format!("mqtt://127.0.0.1:{}", support::free_port()));
    fast_reconnect(&mut nowhere);
    for (config, kind) in [(wrong, "auth"), (nowhere, "refused")] {
        let (writer, handle, registry) = start_sink(config, BufferConfig::default());
        for i in 0..10 {
            writer.push(record("voxsig/1/x", i)).await.unwrap();
        }
        let errors = || {
            metric(
                &registry,
                "voxsig_bridge_sink_connection_errors_total",
                &[("kind", kind)],
            )
        };
        assert!(
            eventually(Duration::from_secs(5), || errors() >= 2.0).await,
            "{kind}: {}",
            errors()
        );
        assert!(!handle.is_finished(), "the sink keeps trying");
        // Issue 12: every retry is counted.
        let attempts = metric(
            &registry,
            "voxsig_bridge_sink_reconnect_attempts_total",
            &[("sink", "mqtt")],
        );
        assert!(attempts >= 2.0, "{kind}: {attempts} attempts counted");
        assert_eq!(writer.depth(), 10, "nothing accepted is dropped");
        assert_eq!(metric(&registry, "voxsig_bridge_sink_connected", &[]), 0.0);
        let report = handle.shutdown(Duration::from_millis(200)).await;
        assert!(report.deadline_hit);
        assert_eq!((report.delivered, report.undelivered), (0, 10));
        assert_eq!(report.undelivered_by_event, vec![("message.created", 10)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_verifies_the_broker_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(pki_dir.path(), "good");
    let stranger = TestPki::create(pki_dir.path(), "stranger");
    let broker = Mosquitto::start(MosquittoOptions {
        tls: Some(pki.clone()),
        ..MosquittoOptions::default()
    });
    assert!(broker.url().starts_with("mqtts://"));

    // Trusting the right CA: delivered over TLS.
    let mut trusted = MqttConfig::new(broker.url());
    trusted.tls.ca_file = Some(pki.ca.clone());
    trusted.client_id = Some("tls-ok".into());
    let (writer, handle, _registry) = start_sink(trusted, BufferConfig::default());
    for i in 0..20 {
        writer.push(record("voxsig/1/x", i)).await.unwrap();
    }
    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert_eq!((report.delivered, report.undelivered), (20, 0));

    // Trusting another CA: the handshake fails, counted as `tls`, nothing lost or crashed.
    let mut untrusted = MqttConfig::new(broker.url());
    untrusted.tls.ca_file = Some(stranger.ca.clone());
    untrusted.client_id = Some("tls-bad".into());
    fast_reconnect(&mut untrusted);
    let (writer, handle, registry) = start_sink(untrusted, BufferConfig::default());
    writer.push(record("voxsig/1/x", 1)).await.unwrap();
    let tls_errors = || {
        metric(
            &registry,
            "voxsig_bridge_sink_connection_errors_total",
            &[("kind", "tls")],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || tls_errors() >= 1.0).await,
        "{}",
        tls_errors()
    );
    let report = handle.shutdown(Duration::from_millis(200)).await;
    assert_eq!((report.delivered, report.undelivered), (0, 1));
}

/// CloudEvents over MQTT 5: binary mode, the attributes as user properties (no prefix) beside
/// `event` and `account_id`, content type `application/json`, the payload is the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_cloudevents_binary_mode() {
    use voxsig_sinks::cloudevents::{CloudEvents, Mode};
    let broker = Mosquitto::start(MosquittoOptions::default());
    let sub = Subscriber::start_v5(broker.port, "sub-ce", true, "voxsig/#");
    sub.wait_subscribed(1).await;
    let mut config = MqttConfig::new(broker.url());
    config.protocol = Protocol::V5;
    let sink_config = SinkConfig::Mqtt(config);
    assert_eq!(sink_config.cloudevents_mode(), Mode::Binary);
    let registry = prometheus::Registry::new();
    let metrics = SinkMetrics::register(&registry).unwrap();
    let (writer, reader) = buffer(BufferConfig::default(), metrics);
    let ce = CloudEvents::new("com.voxsig.", "https://app.voxsig.com");
    let handle = spawn(sink_config.build_with("test", Some(&ce)).unwrap(), reader);
    let mut r = record("voxsig/3/message.created", 5);
    r.headers.account_id = Some(3);
    r.headers.event_id = Some("evt-5".into());
    writer.push(r).await.unwrap();
    let topic = "voxsig/3/message.created";
    let arrived = || sub.received().iter().any(|r| r.topic == topic);
    assert!(eventually(Duration::from_secs(10), arrived).await);
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.delivered, 1);
    let received = sub.received();
    let got = received.iter().find(|r| r.topic == topic).unwrap();
    assert_eq!(&got.payload[..], b"{\"n\":5}");
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    let props: std::collections::HashMap<&str, &str> = got
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(props["specversion"], "1.0");
    assert_eq!(props["id"], "evt-5");
    assert_eq!(props["source"], "https://app.voxsig.com/accounts/3");
    assert_eq!(props["type"], "com.voxsig.message.created");
    assert_eq!(props["time"], "2023-11-14T22:13:20.000Z");
    assert_eq!(props["event"], "message.created");
    assert_eq!(props["account_id"], "3");
    // MQTT 3.1.1 has no properties: structured mode, rendered by the bridge's router.
    let v311 = SinkConfig::Mqtt(MqttConfig::new(broker.url()));
    assert_eq!(v311.cloudevents_mode(), Mode::Structured);
}
