use super::*;
use voxsig_protocol::{EventKind, ServerFrame};

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("team".to_owned(), "emea".to_owned())])
}

fn ctx<'a>(event: &'a str, labels: &'a BTreeMap<String, String>) -> Context<'a> {
    Context {
        account: 1,
        event,
        user: Some(7),
        conversation: Some(42),
        inbox: None,
        labels,
    }
}

#[test]
fn templates_parse_and_render_every_variable() {
    let t = Template::parse("voxsig/{account}/{event}/{user}/{conversation}/{inbox}/{label.team}")
        .unwrap();
    let l = labels();
    assert_eq!(
        t.render(&ctx("message.created", &l), Charset::MqttLevel),
        "voxsig/1/message.created/7/42/none/emea"
    );
    let contact = Context {
        user: None,
        ..ctx("x", &l)
    };
    assert_eq!(
        Template::parse("{user}")
            .unwrap()
            .render(&contact, Charset::Any),
        "contact"
    );
    assert_eq!(
        Template::parse("{label.missing}")
            .unwrap()
            .render(&contact, Charset::Any),
        "none"
    );
}

#[test]
fn bad_templates_are_errors() {
    assert_eq!(
        Template::parse("a/{acount}"),
        Err(TemplateError::UnknownVariable("acount".into()))
    );
    assert_eq!(
        Template::parse("a/{account"),
        Err(TemplateError::Unbalanced)
    );
    assert_eq!(Template::parse("a/}"), Err(TemplateError::Unbalanced));
    assert_eq!(
        Template::parse("{label.}"),
        Err(TemplateError::UnknownVariable("label.".into()))
    );
    assert_eq!(Template::parse(""), Err(TemplateError::Empty));
}

#[test]
fn hostile_values_never_change_the_topic_shape() {
    let t = Template::parse("voxsig/{account}/{event}").unwrap();
    let l = BTreeMap::new();
    for (event, mqtt, kafka) in [
        ("a/b", "voxsig/1/a_b", "voxsig/1/a_b"),
        ("x/#", "voxsig/1/x__", "voxsig/1/x__"),
        ("+", "voxsig/1/_", "voxsig/1/_"),
        ("nul\0", "voxsig/1/nul_", "voxsig/1/nul_"),
        ("", "voxsig/1/_", "voxsig/1/_"),
        (
            "user:logout",
            "voxsig/1/user:logout",
            "voxsig/1/user_logout",
        ),
        ("é", "voxsig/1/é", "voxsig/1/_"),
        // Control characters and non-characters make mosquitto drop the connection.
        ("\u{1b}[2J\n", "voxsig/1/_[2J_", "voxsig/1/__2J_"),
        ("a\u{85}\u{9f}\u{7f}", "voxsig/1/a___", "voxsig/1/a___"),
        ("\u{fdd0}\u{fffe}\u{10ffff}", "voxsig/1/___", "voxsig/1/___"),
    ] {
        assert_eq!(
            t.render(&ctx(event, &l), Charset::MqttLevel),
            mqtt,
            "{event:?}"
        );
        assert_eq!(
            t.render(&ctx(event, &l), Charset::Kafka),
            kafka,
            "{event:?}"
        );
        assert_eq!(
            t.render(&ctx(event, &l), Charset::MqttLevel)
                .matches('/')
                .count(),
            2
        );
    }
}

#[test]
fn globs() {
    assert!(glob("message.*", "message.created"));
    assert!(glob("*", "anything"));
    assert!(glob("conversation.*_on", "conversation.typing_on"));
    assert!(!glob("conversation.*_on", "conversation.typing_off"));
    assert!(glob("presence.update", "presence.update"));
    assert!(!glob("presence.update", "presence.updated"));
    assert!(glob("*.*.*", "first.reply.created"));
    assert!(!glob("a*a", "a"));
}

#[test]
fn filters_include_then_exclude() {
    let f = EventFilter::new(
        &["message.*".into(), "conversation.*".into()],
        &["*typing*".into()],
    )
    .unwrap();
    assert!(f.allows("message.created"));
    assert!(!f.allows("conversation.typing_on"));
    assert!(!f.allows("presence.update"));
    assert!(EventFilter::new(&[], &[]).unwrap().allows("anything"));
    assert!(EventFilter::new(&[], &["".into()]).is_err());
}

#[test]
fn the_per_kind_filter_verdict_agrees_with_the_patterns() {
    let filter = EventFilter::new(
        &["message.*".into(), "conversation*".into()],
        &["*typing_off".into()],
    )
    .unwrap();
    let router = Router::new(
        Template::parse("voxsig/{event}").unwrap(),
        Template::parse("{account}").unwrap(),
        filter.clone(),
        PayloadMode::Raw,
        TopicRules::Mqtt,
    );
    let names = EventKind::ALL.iter().filter_map(|k| k.name());
    // Aliases and unknown names are matched as written, not by their kind.
    let others = [
        "conversation_typing_on",
        "conversation_typing_off",
        "message.new",
        "x",
    ];
    for name in names.chain(others) {
        let frame = format!(
            r#"{{"identifier":"x","message":{{"event":"{name}","data":{{"account_id":9}}}}}}"#
        );
        let Ok(ServerFrame::Event(event)) = ServerFrame::parse(&frame) else {
            panic!("{frame}");
        };
        assert_eq!(router.allows_event(&event), filter.allows(name), "{name}");
    }
    assert!(filter.allows("conversation_typing_on"));
    assert!(!filter.allows("conversation.typing_off"));
}

fn router(payload: PayloadMode) -> Router {
    router_with("voxsig/{account}/{event}", payload)
}

fn router_with(topic: &str, payload: PayloadMode) -> Router {
    Router::new(
        Template::parse(topic).unwrap(),
        Template::parse("{account}/{conversation}").unwrap(),
        EventFilter::default(),
        payload,
        TopicRules::Mqtt,
    )
}

const FRAME: &str = r#"{"identifier":"x","message":{"event":"message.created","data":{"account_id":9,"conversation_id":5,"content":"hi"}}}"#;

fn event() -> EventRef<'static> {
    match ServerFrame::parse(FRAME) {
        Ok(ServerFrame::Event(e)) => e,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_router_for_a_sink_without_keys_renders_none_and_its_key_vars_split_nothing() {
    let keyed = Router::new(
        Template::parse("voxsig/{account}/{event}").unwrap(),
        Template::parse("{user}/{conversation}").unwrap(),
        EventFilter::default(),
        PayloadMode::Raw,
        TopicRules::Mqtt,
    );
    let (a, b) = (
        Receiver {
            account_id: 1,
            user_id: Some(7),
            labels: BTreeMap::new(),
        },
        Receiver {
            account_id: 1,
            user_id: Some(8),
            labels: BTreeMap::new(),
        },
    );
    // With keys, two users' copies render to different keys: different records.
    assert_ne!(keyed.receiver_class(&a), keyed.receiver_class(&b));
    let record = keyed
        .route(&event(), &a, UNIX_EPOCH, Instant::now())
        .unwrap();
    assert_eq!(record.key.as_deref(), Some("7/5"));
    // Without keys (MQTT) both copies are the same message on the same topic.
    let keyless = keyed.without_key();
    assert_eq!(keyless.receiver_class(&a), 0);
    assert_eq!(keyless.receiver_class(&b), 0);
    let record = keyless
        .route(&event(), &a, UNIX_EPOCH, Instant::now())
        .unwrap();
    assert_eq!(record.key, None);
    assert_eq!(record.topic, "voxsig/9/message.created");
}

#[test]
fn records_carry_the_data_account_not_the_subscription_account() {
    let receiver = Receiver {
        account_id: 1,
        user_id: Some(7),
        labels: BTreeMap::new(),
    };
    let r = router(PayloadMode::Raw)
        .route(&event(), &receiver, UNIX_EPOCH, Instant::now())
        .unwrap();
    assert_eq!(r.topic, "voxsig/9/message.created");
    assert_eq!(r.key.as_deref(), Some("9/5"));
    assert_eq!(
        &r.payload[..],
        br#"{"account_id":9,"conversation_id":5,"content":"hi"}"#
    );
    assert_eq!(r.headers.account_id, Some(9));
    assert_eq!(r.headers.event, "message.created");
    assert_eq!(r.headers.event_label, "message.created");
}

#[test]
fn envelope_wraps_data_verbatim() {
    let receiver = Receiver {
        account_id: 1,
        user_id: None,
        labels: BTreeMap::new(),
    };
    let at = UNIX_EPOCH + std::time::Duration::from_millis(1_795_300_329_123);
    let r = router(PayloadMode::Envelope)
        .route(&event(), &receiver, at, Instant::now())
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&r.payload).unwrap(),
        r#"{"event":"message.created","account_id":9,"received_at":"2026-11-21T22:32:09.123Z","event_id":"h-cb4988a1621d75c953b051aa4dd1a1dd","replayed":false,"data":{"account_id":9,"conversation_id":5,"content":"hi"}}"#
    );
    assert_eq!(r.headers.received_at_ms, 1_795_300_329_123);
}

#[test]
fn a_topic_breaking_the_sink_rules_is_unroutable_not_a_panic() {
    let frame = format!(
        r#"{{"identifier":"x","message":{{"event":"{}","data":{{"account_id":1}}}}}}"#,
        "e".repeat(60)
    );
    let Ok(ServerFrame::Event(e)) = ServerFrame::parse(&frame) else {
        panic!()
    };
    let receiver = Receiver {
        account_id: 1,
        user_id: None,
        labels: BTreeMap::new(),
    };
    // Values are sanitised and cut, so only a template's literal part can break the rules: a
    // prefix that leaves no room under MQTT's 65,535 bytes for this event's name.
    let prefix = "p".repeat(65_535 - "/1/".len() - 30);
    let result = router_with(&format!("{prefix}/{{account}}/{{event}}"), PayloadMode::Raw).route(
        &e,
        &receiver,
        UNIX_EPOCH,
        Instant::now(),
    );
    assert_eq!(
        result.unwrap_err(),
        Unrouted::InvalidTopic(voxsig_sinks::TopicError::TooLong {
            len: 65_535 + 30,
            max: 65_535
        })
    );
}

#[test]
fn cloudevents_structured_mode_renders_the_event_and_binary_mode_leaves_the_data() {
    use voxsig_sinks::cloudevents::{CloudEvents, Mode};
    let receiver = Receiver {
        account_id: 1,
        user_id: None,
        labels: BTreeMap::new(),
    };
    let at = UNIX_EPOCH + std::time::Duration::from_millis(1_795_300_329_123);
    let ce = CloudEvents::new("com.voxsig.", "https://app.voxsig.com");
    let structured = router(PayloadMode::CloudEvents)
        .with_cloudevents(ce.clone(), Mode::Structured)
        .route(&event(), &receiver, at, Instant::now())
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&structured.payload).unwrap();
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["type"], "com.voxsig.message.created");
    assert_eq!(v["source"], "https://app.voxsig.com/accounts/9");
    assert_eq!(v["time"], "2026-11-21T22:32:09.123Z");
    assert_eq!(v["datacontenttype"], "application/json");
    assert_eq!(
        v["data"],
        serde_json::json!({"account_id":9,"conversation_id":5,"content":"hi"})
    );
    let id = v["id"].as_str().unwrap();
    assert_eq!(
        id,
        ce.attributes(&structured.headers, FRAME_DATA.as_bytes()).id
    );
    let binary = router(PayloadMode::CloudEvents)
        .with_cloudevents(ce, Mode::Binary)
        .route(&event(), &receiver, at, Instant::now())
        .unwrap();
    assert_eq!(
        &binary.payload[..],
        FRAME_DATA.as_bytes(),
        "the sink adds the attributes"
    );
}

const FRAME_DATA: &str = r#"{"account_id":9,"conversation_id":5,"content":"hi"}"#;

#[test]
fn the_platform_origin_comes_from_the_source_url() {
    let mut source = crate::config::SourceConfig {
        url: "wss://app.voxsig.com/cable".into(),
        ..Default::default()
    };
    assert_eq!(source.platform_origin(), "https://app.voxsig.com");
    source.url = "ws://127.0.0.1:3000/cable".into();
    assert_eq!(source.platform_origin(), "http://127.0.0.1:3000");
}

#[test]
fn replayed_records_are_marked_and_carry_the_message_id_as_event_id() {
    let receiver = Receiver {
        account_id: 1,
        user_id: Some(3),
        labels: BTreeMap::new(),
    };
    let data = r#"{"id":77,"conversation_id":5,"content":"hi"}"#;
    let e = EventRef {
        identifier: voxsig_protocol::RawStr::plain(""),
        name: "message.created".into(),
        kind: EventKind::MessageCreated,
        account_id: Some(9),
        conversation_id: Some(5),
        inbox_id: None,
        message_id: Some(77),
        data,
    };
    let at = UNIX_EPOCH + std::time::Duration::from_millis(1_795_300_329_123);
    let raw = router(PayloadMode::Raw)
        .route_replayed(&e, &receiver, at, Instant::now())
        .unwrap();
    assert!(raw.headers.replayed);
    assert_eq!(
        raw.headers.event_id,
        Some(voxsig_sinks::EventId::Message(77))
    );
    assert_eq!(
        &raw.payload[..],
        data.as_bytes(),
        "raw payloads stay byte-identical"
    );
    let live = router(PayloadMode::Raw)
        .route(&e, &receiver, at, Instant::now())
        .unwrap();
    assert!(!live.headers.replayed);
    assert_eq!(
        live.headers.event_id, raw.headers.event_id,
        "same id live and replayed"
    );
    let env = router(PayloadMode::Envelope)
        .route_replayed(&e, &receiver, at, Instant::now())
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&env.payload).unwrap();
    assert_eq!(v["replayed"], true);
    assert_eq!(v["event_id"], "msg-77");
    assert_eq!(v["data"]["id"], 77);
}
