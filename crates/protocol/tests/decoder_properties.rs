//! Property tests of the decoder: it never panics, agrees with serde_json on what is valid JSON,
//! and hands out `data` byte-identical with the right ids.

use proptest::prelude::*;
use serde_json::{json, Value};
use voxsig_protocol::{scan, Command, PubsubToken, RoomIdentifier, ServerFrame};

/// Arbitrary JSON values, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_\"\\\\]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text over the alphabet JSON is made of, so random strings are often nearly valid.
fn jsonish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\\",
            "u",
            "0",
            "1",
            "9",
            "-",
            ".",
            "e",
            "+",
            " ",
            "true",
            "false",
            "null",
            "\"a\"",
            "\"id\"",
            "\"data\"",
            "\"message\"",
            "\"event\"",
            "\"identifier\"",
            "\"type\"",
            "\u{1}",
            "é",
            "\\n",
            "\\u00e9",
            // Runs longer than a word, and the bytes around the control-character bound.
            "abcdefghijkl",
            "\t",
            "\u{1f}",
            "\u{7f}",
        ]),
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_any_text(text in ".{0,200}") {
        let _ = ServerFrame::parse(&text);
    }

    #[test]
    fn never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = ServerFrame::parse_bytes(&bytes);
    }

    #[test]
    fn agrees_with_serde_json_on_validity(text in jsonish()) {
        let ours = scan::validate(&text).is_ok();
        let theirs = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
        prop_assert_eq!(ours, theirs, "{:?}", text);
        // Whatever the frame decoder says, it never panics on near-JSON either.
        let _ = ServerFrame::parse(&text);
    }

    #[test]
    fn data_travels_byte_identical_with_the_right_ids(
        mut data in prop::collection::btree_map("[a-z_]{1,6}", any_json(), 0..6),
        account in prop::option::of(any::<u64>()),
        conversation in prop::option::of(any::<u64>()),
        event in "[a-z_.:]{1,24}",
        token in "[A-Za-z0-9]{1,24}",
    ) {
        if let Some(a) = account { data.insert("account_id".into(), json!(a)); }
        if let Some(c) = conversation { data.insert("conversation_id".into(), json!(c)); }
        let data = Value::Object(data.into_iter().collect());
        let identifier = RoomIdentifier::contact(PubsubToken::new(token));
        let frame = json!({"identifier": identifier.wire(), "message": {"event": event, "data": data}});
        let text = serde_json::to_string(&frame).unwrap();
        let Ok(ServerFrame::Event(e)) = ServerFrame::parse(&text) else {
            return Err(TestCaseError::fail(format!("not an event: {text}")));
        };
        prop_assert_eq!(e.data, serde_json::to_string(&data).unwrap());
        prop_assert_eq!(e.name.as_ref(), event.as_str());
        prop_assert_eq!(e.identifier.raw(), identifier.escaped());
        prop_assert_eq!(e.account_id, data["account_id"].as_u64());
        if e.kind.shape() == voxsig_protocol::catalogue::PayloadShape::Message {
            prop_assert_eq!(e.conversation_id, data["conversation_id"].as_u64());
        }
    }

    #[test]
    fn identifiers_and_commands_round_trip(
        token in ".{0,30}",
        ids in prop::option::of((any::<u64>(), any::<u64>())),
    ) {
        let token = PubsubToken::new(token);
        let id = match ids {
            Some((account, user)) => RoomIdentifier::user(token, account, user),
            None => RoomIdentifier::contact(token),
        };
        prop_assert_eq!(&RoomIdentifier::parse(id.wire()).unwrap(), &id);
        for command in [Command::Subscribe(&id), Command::Unsubscribe(&id), Command::UpdatePresence(&id)] {
            let v: Value = serde_json::from_str(&command.encode()).unwrap();
            prop_assert_eq!(v["identifier"].as_str(), Some(id.wire()));
        }
    }
}
