//! Golden tests: the frames captured from a real Rails ActionCable server decode as expected.
//! The copy in `tests/fixtures/` is always checked; `shared/fixtures/` beside the repository too,
//! when present, so a newer capture is noticed.

use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use voxsig_protocol::{EventKind, RoomIdentifier, ServerFrame};

fn captures() -> Vec<(PathBuf, HashMap<String, String>)> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![here.join("tests/fixtures/actioncable-rails-6.1-frames.json")];
    let shared = here.join("../../../shared/fixtures/actioncable-rails-6.1-frames.json");
    if shared.exists() {
        paths.push(shared);
    }
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let frames = serde_json::from_str(&text).unwrap();
            (p, frames)
        })
        .collect()
}

#[test]
fn control_frames_decode() {
    for (path, frames) in captures() {
        let at = path.display();
        assert_eq!(
            ServerFrame::parse(&frames["welcome"]),
            Ok(ServerFrame::Welcome),
            "{at}"
        );
        assert!(
            matches!(ServerFrame::parse(&frames["ping"]), Ok(ServerFrame::Ping { unix_time: Some(t) }) if t > 1_700_000_000),
            "{at}"
        );
        let Ok(ServerFrame::ConfirmSubscription { identifier }) =
            ServerFrame::parse(&frames["confirm_subscription"])
        else {
            panic!("{at}: confirm")
        };
        let ours = RoomIdentifier::parse(&identifier.decode()).unwrap();
        // Our own encoding of the same subscription is byte-for-byte what the server echoed.
        assert_eq!(identifier.raw(), ours.escaped(), "{at}");
        assert!(matches!(
            ServerFrame::parse(&frames["reject_subscription"]),
            Ok(ServerFrame::RejectSubscription { .. })
        ));
        assert!(matches!(
            ServerFrame::parse(&frames["disconnect"]),
            Ok(ServerFrame::Disconnect {
                reconnect: Some(true),
                ..
            })
        ));
        assert!(matches!(
            ServerFrame::parse(&frames["disconnect_reconnect_false"]),
            Ok(ServerFrame::Disconnect {
                reconnect: Some(false),
                ..
            })
        ));
    }
}

#[test]
fn broadcasts_decode_with_ids_and_byte_identical_data() {
    for (path, frames) in captures() {
        for (name, kind, conversation) in [
            ("presence.update", EventKind::PresenceUpdate, None),
            ("message.created", EventKind::MessageCreated, Some(100078)),
            (
                "conversation.typing_on",
                EventKind::ConversationTypingOn,
                Some(100043),
            ),
            (
                "notification.created",
                EventKind::NotificationCreated,
                Some(100120),
            ),
        ] {
            let text = &frames[name];
            let Ok(ServerFrame::Event(e)) = ServerFrame::parse(text) else {
                panic!("{}: {name}", path.display())
            };
            let whole: Value = serde_json::from_str(text).unwrap();
            let data = &whole["message"]["data"];
            assert_eq!(e.kind, kind);
            assert_eq!(e.name, name);
            assert_eq!(e.account_id, data["account_id"].as_u64());
            assert_eq!(e.conversation_id, conversation, "{name}");
            assert_eq!(serde_json::from_str::<Value>(e.data).unwrap(), *data);
            // Byte-identical: the span is exactly where it stands in the frame.
            assert!(text.contains(e.data));
            assert!(text.ends_with(&format!("{}}}}}", e.data)));
        }
    }
}
