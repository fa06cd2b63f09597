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

fn router(payload: PayloadMode) -> Router {
    Router::new(
        Template::parse("voxsig/{account}/{event}").unwrap(),
        Template::parse("{account}/{conversation}").unwrap(),
        EventFilter::default(),
        payload,
        Charset::MqttLevel,
        Box::new(|t: &str| {
            if t.len() > 40 {
                Err("too long".into())
            } else {
                Ok(())
            }
        }),
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
    let result = router(PayloadMode::Raw).route(&e, &receiver, UNIX_EPOCH, Instant::now());
    assert_eq!(
        result.unwrap_err(),
        Unrouted::InvalidTopic("too long".into())
    );
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
    assert_eq!(raw.headers.event_id.as_deref(), Some("msg-77"));
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
