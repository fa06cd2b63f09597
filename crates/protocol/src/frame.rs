//! Frames the server sends, decoded in one pass without building a JSON tree.
//!
//! ActionCable control frames carry a `type` (`welcome`, `ping`, `confirm_subscription`,
//! `reject_subscription`, `disconnect`); broadcasts carry `{identifier, message}` and no type.
//! For a broadcast the decoder borrows the event name, the identifier and the raw `data` bytes
//! from the frame and picks out the account, conversation and inbox ids on the way.

use crate::catalogue::{EventKind, PayloadShape};
use crate::scan::{JsonError, RawStr, Reader};
use std::borrow::Cow;

/// Nesting level of `data` inside a frame (`{ "message": { "data": {` ).
const DATA_DEPTH: usize = 2;

/// A decoded server frame, borrowing from the text it came from.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame<'a> {
    /// `{"type":"welcome"}`: the connection is accepted; subscriptions may be sent.
    Welcome,
    /// `{"type":"ping","message":<unix seconds>}`: the server is alive.
    Ping {
        /// The server's clock, when `message` is an integer.
        unix_time: Option<i64>,
    },
    /// The subscription with this identifier is active.
    ConfirmSubscription {
        /// The identifier, as it stands in the frame.
        identifier: RawStr<'a>,
    },
    /// The subscription with this identifier was refused.
    RejectSubscription {
        /// The identifier, as it stands in the frame.
        identifier: RawStr<'a>,
    },
    /// The server is closing the connection.
    Disconnect {
        /// Why, e.g. `server_restart`, `unauthorized`, `remote`.
        reason: Option<Cow<'a, str>>,
        /// Whether the server invites a reconnect; `None` when the frame does not say.
        reconnect: Option<bool>,
    },
    /// A broadcast on a subscription.
    Event(EventRef<'a>),
    /// A control frame of a type this crate does not know.
    Unknown {
        /// The frame's `type`.
        kind: Cow<'a, str>,
    },
}

/// A broadcast, as the hot path sees it: everything borrowed, `data` untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRef<'a> {
    /// The subscription identifier the server sent it on.
    pub identifier: RawStr<'a>,
    /// The event name as sent (unknown names pass through).
    pub name: Cow<'a, str>,
    /// The catalogued kind of `name`.
    pub kind: EventKind,
    /// `data.account_id` (for notifications, `data.notification.account_id` when the top level
    /// has none). A user token receives every account its user belongs to, so this, not the
    /// subscription, says whose event it is.
    pub account_id: Option<u64>,
    /// The conversation the event belongs to, where the payload has one.
    pub conversation_id: Option<u64>,
    /// The inbox, where the payload has one (`data.inbox_id` or `data.conversation.inbox_id`).
    pub inbox_id: Option<u64>,
    /// The message's own id (`data.id`) for message events: the platform's stable id of the
    /// message, the same in a live event and in the REST API's answer.
    pub message_id: Option<u64>,
    /// The raw bytes of `data`, exactly as received.
    pub data: &'a str,
}

/// Why a frame could not be decoded. Messages never quote frame content (it may hold tokens).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A binary WebSocket frame; ActionCable speaks text only.
    #[error("binary frame of {len} bytes (ActionCable frames are text)")]
    Binary {
        /// The frame's length.
        len: usize,
    },
    /// The frame is not UTF-8.
    #[error("frame is not valid UTF-8 (at byte {offset})")]
    NotUtf8 {
        /// Where the invalid byte is.
        offset: usize,
    },
    /// Larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// Not valid JSON (including a truncated frame).
    #[error("frame is not valid JSON: {0}")]
    InvalidJson(JsonError),
    /// Valid JSON, but not an object.
    #[error("frame is not a JSON object")]
    NotAnObject,
    /// An object with neither `type` nor `message`.
    #[error("frame has neither `type` nor `message`")]
    Unrecognised,
    /// A confirm, reject or broadcast without an `identifier` string.
    #[error("frame has no `identifier` string")]
    MissingIdentifier,
    /// A broadcast whose `message` is not an object with an `event` string.
    #[error("broadcast has no `message.event` string")]
    MissingEvent,
    /// A broadcast without `message.data`.
    #[error("broadcast `{event}` has no `message.data`")]
    MissingData {
        /// The event name, as [`quote_untrusted`] shows it (short, escaped).
        event: String,
    },
    /// A broadcast whose `data` is not an object.
    #[error("broadcast `{event}` has a `data` that is not an object")]
    DataNotObject {
        /// The event name, as [`quote_untrusted`] shows it (short, escaped).
        event: String,
    },
    /// The identifier of a frame is not an identifier (not JSON, or fields missing).
    #[error("frame identifier is invalid: {0}")]
    BadIdentifier(#[from] crate::identifier::IdentifierError),
    /// A frame for an identifier this client never subscribed.
    #[error("frame for an identifier that is not subscribed on this connection")]
    UnknownIdentifier,
}

/// How much of an event name an error message quotes.
pub const QUOTED_NAME_CHARS: usize = 64;

/// What a message may show of untrusted text (an event name, a server's reason): at most
/// `max_chars` characters, control characters escaped (`\u{1b}`, `\n`), a cut marked with
/// `…(N bytes)`. A 1 MB name or an `ESC[2J` cannot flood or forge a log line through it.
pub fn quote_untrusted(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars) + 16);
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push_str(&format!("…({} bytes)", text.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl FrameError {
    /// A short, stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::Binary { .. } => "binary",
            FrameError::NotUtf8 { .. } => "not_utf8",
            FrameError::TooLarge { .. } => "too_large",
            FrameError::InvalidJson(_) => "invalid_json",
            FrameError::NotAnObject => "not_an_object",
            FrameError::Unrecognised => "unrecognised",
            FrameError::MissingIdentifier => "missing_identifier",
            FrameError::MissingEvent => "missing_event",
            FrameError::MissingData { .. } => "missing_data",
            FrameError::DataNotObject { .. } => "data_not_object",
            FrameError::BadIdentifier(_) => "bad_identifier",
            FrameError::UnknownIdentifier => "unknown_identifier",
        }
    }

    /// Every value [`FrameError::kind`] can return, so metrics can be pre-registered.
    pub const KINDS: &'static [&'static str] = &[
        "binary",
        "not_utf8",
        "too_large",
        "invalid_json",
        "not_an_object",
        "unrecognised",
        "missing_identifier",
        "missing_event",
        "missing_data",
        "data_not_object",
        "bad_identifier",
        "unknown_identifier",
    ];
}

impl From<JsonError> for FrameError {
    fn from(e: JsonError) -> Self {
        FrameError::InvalidJson(e)
    }
}

/// Ids found inside `data` while it is scanned; which one is the conversation depends on the
/// event, whose name may come after `data` in the frame.
#[derive(Default)]
struct DataProbe {
    account_id: Option<u64>,
    id: Option<u64>,
    conversation_id: Option<u64>,
    inbox_id: Option<u64>,
    nested_conversation_id: Option<u64>,
    nested_inbox_id: Option<u64>,
    notification_account_id: Option<u64>,
    notification_conversation_id: Option<u64>,
}

impl DataProbe {
    /// Scans `data` (the reader is on its `{`), recording the ids the resolver may need.
    fn scan(reader: &mut Reader<'_>) -> Result<DataProbe, JsonError> {
        let mut probe = DataProbe::default();
        let d = DATA_DEPTH + 1;
        reader.object(DATA_DEPTH, |r, key| {
            match key.raw() {
                "account_id" => probe.account_id = r.id(d)?,
                "id" => probe.id = r.id(d)?,
                "conversation_id" => probe.conversation_id = r.id(d)?,
                "inbox_id" => probe.inbox_id = r.id(d)?,
                "conversation" if r.peek() == Some(b'{') => r.object(d, |r, key| {
                    match key.raw() {
                        "id" => probe.nested_conversation_id = r.id(d + 1)?,
                        "inbox_id" => probe.nested_inbox_id = r.id(d + 1)?,
                        _ => r.skip(d + 1)?,
                    }
                    Ok(())
                })?,
                "notification" if r.peek() == Some(b'{') => {
                    let mut actor_is_conversation = false;
                    let mut actor_id = None;
                    r.object(d, |r, key| {
                        match key.raw() {
                            "account_id" => probe.notification_account_id = r.id(d + 1)?,
                            "primary_actor_id" => actor_id = r.id(d + 1)?,
                            "primary_actor_type" if r.peek() == Some(b'"') => {
                                actor_is_conversation = r.string()?.is("Conversation");
                            }
                            _ => r.skip(d + 1)?,
                        }
                        Ok(())
                    })?;
                    if actor_is_conversation {
                        probe.notification_conversation_id = actor_id;
                    }
                }
                _ => r.skip(d)?,
            }
            Ok(())
        })?;
        Ok(probe)
    }

    fn conversation_id(&self, kind: EventKind) -> Option<u64> {
        match kind.shape() {
            PayloadShape::Conversation => self.id,
            PayloadShape::Message => self.conversation_id,
            PayloadShape::Typing => self.nested_conversation_id,
            PayloadShape::Notification => self.notification_conversation_id,
            PayloadShape::Contact | PayloadShape::Presence => None,
            PayloadShape::Other => self.conversation_id.or(self.nested_conversation_id),
        }
    }
}

/// What the top-level scan found in `message` when it was an object.
struct MessageParts<'a> {
    event: Option<RawStr<'a>>,
    data: Option<(&'a str, Option<DataProbe>)>,
}

impl<'a> ServerFrame<'a> {
    /// Decodes a text frame.
    pub fn parse(text: &'a str) -> Result<ServerFrame<'a>, FrameError> {
        let mut r = Reader::new(text);
        if r.peek() != Some(b'{') {
            // Tell "not JSON at all" from "JSON, but not an object".
            r.skip(0)?;
            r.finish()?;
            return Err(FrameError::NotAnObject);
        }
        let mut kind: Option<RawStr<'a>> = None;
        let mut identifier: Option<RawStr<'a>> = None;
        let mut message: Option<MessageParts<'a>> = None;
        let mut message_number: Option<&'a str> = None;
        let mut reason: Option<RawStr<'a>> = None;
        let mut reconnect: Option<bool> = None;
        r.object(0, |r, key| {
            match key.raw() {
                "type" if r.peek() == Some(b'"') => kind = Some(r.string()?),
                "identifier" if r.peek() == Some(b'"') => identifier = Some(r.string()?),
                "message" => match r.peek() {
                    Some(b'{') => message = Some(scan_message(r)?),
                    Some(b'-' | b'0'..=b'9') => message_number = Some(r.number()?),
                    _ => r.skip(1)?,
                },
                "reason" if r.peek() == Some(b'"') => reason = Some(r.string()?),
                "reconnect" if matches!(r.peek(), Some(b't' | b'f')) => {
                    reconnect = Some(r.boolean()?)
                }
                _ => r.skip(1)?,
            }
            Ok(())
        })?;
        r.finish()?;

        if let Some(kind) = kind {
            return Ok(match kind.raw() {
                "welcome" => ServerFrame::Welcome,
                "ping" => ServerFrame::Ping {
                    unix_time: message_number.and_then(|n| n.parse().ok()),
                },
                "confirm_subscription" => ServerFrame::ConfirmSubscription {
                    identifier: identifier.ok_or(FrameError::MissingIdentifier)?,
                },
                "reject_subscription" => ServerFrame::RejectSubscription {
                    identifier: identifier.ok_or(FrameError::MissingIdentifier)?,
                },
                "disconnect" => ServerFrame::Disconnect {
                    reason: reason.map(|r| r.decode()),
                    reconnect,
                },
                _ => ServerFrame::Unknown {
                    kind: kind.decode(),
                },
            });
        }
        let Some(message) = message else {
            return Err(if message_number.is_some() {
                FrameError::MissingEvent
            } else {
                FrameError::Unrecognised
            });
        };
        let identifier = identifier.ok_or(FrameError::MissingIdentifier)?;
        let name = message.event.ok_or(FrameError::MissingEvent)?.decode();
        let Some((data, probe)) = message.data else {
            return Err(FrameError::MissingData {
                event: quote_untrusted(&name, QUOTED_NAME_CHARS),
            });
        };
        let Some(probe) = probe else {
            return Err(FrameError::DataNotObject {
                event: quote_untrusted(&name, QUOTED_NAME_CHARS),
            });
        };
        let kind = EventKind::from_name(&name);
        Ok(ServerFrame::Event(EventRef {
            identifier,
            kind,
            account_id: probe.account_id.or(probe.notification_account_id),
            conversation_id: probe.conversation_id(kind),
            inbox_id: probe.inbox_id.or(probe.nested_inbox_id),
            message_id: match kind.shape() {
                PayloadShape::Message => probe.id,
                _ => None,
            },
            name,
            data,
        }))
    }

    /// Decodes a frame that arrived as bytes (checking UTF-8 first).
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<ServerFrame<'a>, FrameError> {
        let text = std::str::from_utf8(bytes).map_err(|e| FrameError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        Self::parse(text)
    }
}

/// Scans a broadcast's `message` object (the reader is on its `{`).
fn scan_message<'a>(r: &mut Reader<'a>) -> Result<MessageParts<'a>, JsonError> {
    let mut parts = MessageParts {
        event: None,
        data: None,
    };
    r.object(1, |r, key| {
        match key.raw() {
            "event" if r.peek() == Some(b'"') => parts.event = Some(r.string()?),
            "data" => {
                r.skip_ws();
                let start = r.pos();
                let probe = if r.peek() == Some(b'{') {
                    Some(DataProbe::scan(r)?)
                } else {
                    r.skip(DATA_DEPTH)?;
                    None
                };
                parts.data = Some((r.slice(start, r.pos()), probe));
            }
            _ => r.skip(DATA_DEPTH)?,
        }
        Ok(())
    })?;
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::JsonErrorReason;

    fn event(text: &str) -> EventRef<'_> {
        match ServerFrame::parse(text) {
            Ok(ServerFrame::Event(e)) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn control_frames() {
        assert_eq!(
            ServerFrame::parse(r#"{"type":"welcome"}"#),
            Ok(ServerFrame::Welcome)
        );
        assert_eq!(
            ServerFrame::parse(r#"{"type":"ping","message":1795300330}"#),
            Ok(ServerFrame::Ping {
                unix_time: Some(1795300330)
            })
        );
        assert_eq!(
            ServerFrame::parse(r#"{"message":1795300330,"type":"ping"}"#),
            Ok(ServerFrame::Ping {
                unix_time: Some(1795300330)
            })
        );
        assert_eq!(
            ServerFrame::parse(
                r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
            ),
            Ok(ServerFrame::Disconnect {
                reason: Some("unauthorized".into()),
                reconnect: Some(false)
            })
        );
        assert_eq!(
            ServerFrame::parse(r#"{"type":"disconnect"}"#),
            Ok(ServerFrame::Disconnect {
                reason: None,
                reconnect: None
            })
        );
        assert_eq!(
            ServerFrame::parse(r#"{"type":"surprise","x":[1]}"#),
            Ok(ServerFrame::Unknown {
                kind: "surprise".into()
            })
        );
        match ServerFrame::parse(
            r#"{"identifier":"{\"channel\":\"RoomChannel\"}","type":"confirm_subscription"}"#,
        ) {
            Ok(ServerFrame::ConfirmSubscription { identifier }) => {
                assert_eq!(identifier.raw(), r#"{\"channel\":\"RoomChannel\"}"#);
                assert_eq!(identifier.decode(), r#"{"channel":"RoomChannel"}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn event_fields_are_borrowed_and_data_is_byte_identical() {
        let text = r#"{"identifier":"{\"channel\":\"RoomChannel\",\"pubsub_token\":\"t\"}","message":{"event":"message.created","data":{"id":5, "account_id":3,"conversation_id":"9","inbox_id":2,"content":"a \"quoted\" é"}}}"#;
        let e = event(text);
        assert_eq!(e.name, "message.created");
        assert!(matches!(e.name, Cow::Borrowed(_)));
        assert_eq!(e.kind, EventKind::MessageCreated);
        assert_eq!(e.account_id, Some(3));
        assert_eq!(e.conversation_id, Some(9));
        assert_eq!(e.inbox_id, Some(2));
        assert_eq!(
            e.message_id,
            Some(5),
            "a message event's data.id is its message id"
        );
        assert_eq!(
            e.data,
            r#"{"id":5, "account_id":3,"conversation_id":"9","inbox_id":2,"content":"a \"quoted\" é"}"#
        );
    }

    #[test]
    fn conversation_id_follows_the_payload_shape_even_when_event_comes_last() {
        let conv = event(
            r#"{"message":{"data":{"id":77,"account_id":1},"event":"conversation.status_changed"},"identifier":"x"}"#,
        );
        assert_eq!(conv.conversation_id, Some(77));
        assert_eq!(
            conv.message_id, None,
            "a conversation's id is no message id"
        );
        let typing = event(
            r#"{"identifier":"x","message":{"event":"conversation.typing_on","data":{"conversation":{"id":43,"inbox_id":4,"messages":[{"id":1,"conversation_id":999}]},"user":{"id":102},"account_id":1}}}"#,
        );
        assert_eq!(typing.conversation_id, Some(43));
        assert_eq!(typing.inbox_id, Some(4));
        let contact = event(
            r#"{"identifier":"x","message":{"event":"contact.updated","data":{"id":5,"account_id":1}}}"#,
        );
        assert_eq!(contact.conversation_id, None);
        let other = event(
            r#"{"identifier":"x","message":{"event":"brand.new","data":{"id":5,"conversation":{"id":6}}}}"#,
        );
        assert_eq!(other.kind, EventKind::Other);
        assert_eq!(other.conversation_id, Some(6));
    }

    #[test]
    fn notification_ids_come_from_the_notification() {
        let e = event(
            r#"{"identifier":"x","message":{"event":"notification.created","data":{"notification":{"id":4,"primary_actor_type":"Conversation","primary_actor_id":120,"account_id":8},"unread_count":2}}}"#,
        );
        assert_eq!(e.account_id, Some(8));
        assert_eq!(e.conversation_id, Some(120));
        let e = event(
            r#"{"identifier":"x","message":{"event":"notification.created","data":{"notification":{"primary_actor_type":"Message","primary_actor_id":120},"account_id":1}}}"#,
        );
        assert_eq!(e.account_id, Some(1));
        assert_eq!(e.conversation_id, None);
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "invalid_json"),
            ("not json", "invalid_json"),
            (r#"{"type":"welcome""#, "invalid_json"),
            (r#"{"type":"welcome"} x"#, "invalid_json"),
            ("[1,2]", "not_an_object"),
            ("\"welcome\"", "not_an_object"),
            ("{}", "unrecognised"),
            (r#"{"message":1}"#, "missing_event"),
            (r#"{"type":"confirm_subscription"}"#, "missing_identifier"),
            (
                r#"{"message":{"event":"x","data":{}}}"#,
                "missing_identifier",
            ),
            (
                r#"{"identifier":"i","message":{"data":{}}}"#,
                "missing_event",
            ),
            (
                r#"{"identifier":"i","message":{"event":7,"data":{}}}"#,
                "missing_event",
            ),
            (
                r#"{"identifier":"i","message":{"event":"x"}}"#,
                "missing_data",
            ),
            (
                r#"{"identifier":"i","message":{"event":"x","data":[1]}}"#,
                "data_not_object",
            ),
            (
                r#"{"identifier":"i","message":{"event":"x","data":"{}"}}"#,
                "data_not_object",
            ),
            (
                r#"{"identifier":"i","message":{"event":"x","data":{"a":01}}}"#,
                "invalid_json",
            ),
        ];
        for (text, kind) in cases {
            let err = ServerFrame::parse(text).expect_err(text);
            assert_eq!(err.kind(), *kind, "{text}: {err}");
            assert!(FrameError::KINDS.contains(&err.kind()));
        }
        assert_eq!(
            ServerFrame::parse_bytes(b"{\"type\":\"\xff\"}").unwrap_err(),
            FrameError::NotUtf8 { offset: 9 }
        );
    }

    #[test]
    fn truncation_anywhere_is_an_error_never_a_panic() {
        let text = r#"{"identifier":"{\"channel\":\"RoomChannel\"}","message":{"event":"message.created","data":{"id":1,"account_id":2,"s":"\u00e9"}}}"#;
        for cut in 0..text.len() {
            if let Some(prefix) = text.get(..cut) {
                let err = ServerFrame::parse(prefix).expect_err(prefix);
                assert!(
                    matches!(err, FrameError::InvalidJson(e) if e.reason == JsonErrorReason::UnexpectedEnd),
                    "{prefix}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn error_messages_never_quote_the_frame() {
        let secret = "furNHtAQnqxQN2FmkLzf8x4T";
        let text = format!(
            r#"{{"identifier":"{{\"pubsub_token\":\"{secret}\"}}","message":{{"event":"x","data":[]}}}}"#
        );
        let err = ServerFrame::parse(&text).unwrap_err();
        assert!(!err.to_string().contains(secret));
    }
}
