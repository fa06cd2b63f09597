//! What flows through a sink: one rendered event with its topic, key, payload and headers.

use std::borrow::Cow;
use std::time::Instant;
use voxsig_protocol::EventKind;

use bytes::Bytes;

/// Fixed per-record overhead counted against the buffer's byte budget (struct, allocations).
const RECORD_OVERHEAD_BYTES: usize = 96;

/// One event, rendered by the bridge's router and ready for a sink.
///
/// The payload is the event's `data` bytes, copied once from the frame; sinks never parse it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The destination topic (MQTT topic name or Kafka topic), already checked with
    /// [`SinkConfig::check_topic`](crate::SinkConfig::check_topic).
    pub topic: String,
    /// The partitioning key (Kafka) — `{account}/{conversation}` by default; ignored by MQTT.
    pub key: Option<String>,
    /// The message body (the event's JSON `data`).
    pub payload: Bytes,
    /// Metadata carried beside the payload (Kafka headers; MQTT retain decisions; metrics labels).
    pub headers: Headers,
    /// When the bridge accepted the event; publish latency is measured from here.
    pub accepted_at: Instant,
}

/// Metadata of a [`Record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    /// The wire event name, e.g. `message.created` (unbounded: any name the platform sends).
    /// A catalogued name is borrowed from the catalogue (no allocation per record); any other
    /// is owned.
    pub event: Cow<'static, str>,
    /// A bounded metrics label: the catalogue name of the event, or `"other"`.
    pub event_label: &'static str,
    /// The account the event belongs to, when known.
    pub account_id: Option<u64>,
    /// When the bridge received the frame, in Unix milliseconds.
    pub received_at_ms: i64,
    /// A stable id of the event, the same for every copy of it (live, replayed or redelivered),
    /// so downstream consumers can deduplicate: written as the Kafka header `event_id`, in the
    /// envelope and by the stdout/file sinks. `None` when the producer of the record set none.
    /// Kept as what it is made of ([`EventId`]): formatted only by the sinks that write it.
    pub event_id: Option<EventId>,
    /// Whether the record was recovered after a gap (catch-up over the platform's REST API)
    /// rather than received live: Kafka header `replayed: 1`, envelope `"replayed": true`.
    pub replayed: bool,
}

/// A record's stable event id ([`Headers::event_id`]), kept as what it is made of and written
/// as text — `msg-<id>` or `h-<32 hex digits>` — only by the sinks that carry it: the bridge
/// makes one per event, and a plain MQTT publish never writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventId {
    /// `msg-<id>`: the platform's message id (the same live and over REST).
    Message(u64),
    /// `h-<32 lowercase hex digits>`: a 128-bit hash of the event.
    Hash(u128),
    /// Any other text (ids made elsewhere); read back from text, the two forms above are
    /// recognised only when written exactly as [`EventId`] writes them, so text round-trips.
    Text(Box<str>),
}

impl EventId {
    /// The id of `text`: [`EventId::Message`] or [`EventId::Hash`] when it is one written the
    /// canonical way, else [`EventId::Text`].
    pub fn parse(text: &str) -> EventId {
        EventId::typed(text).unwrap_or_else(|| EventId::Text(text.into()))
    }

    /// [`EventId::Message`] or [`EventId::Hash`] when `text` is one written the canonical way.
    fn typed(text: &str) -> Option<EventId> {
        if let Some(digits) = text.strip_prefix("msg-") {
            let canonical = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'));
            if let (true, Ok(id)) = (canonical, digits.parse()) {
                return Some(EventId::Message(id));
            }
        } else if let Some(hex) = text.strip_prefix("h-") {
            let canonical =
                hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if let (true, Ok(digest)) = (canonical, u128::from_str_radix(hex, 16)) {
                return Some(EventId::Hash(digest));
            }
        }
        None
    }

    /// The length of its text, without writing it.
    pub fn len(&self) -> usize {
        match self {
            EventId::Message(id) => 4 + itoa::Buffer::new().format(*id).len(),
            EventId::Hash(_) => 34,
            EventId::Text(text) => text.len(),
        }
    }

    /// Whether its text is empty (only a [`EventId::Text`] can be).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with its text, written on the stack (no allocation).
    pub fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        match self {
            EventId::Message(id) => {
                let mut buf = [0u8; 24];
                buf[..4].copy_from_slice(b"msg-");
                let mut digits = itoa::Buffer::new();
                let digits = digits.format(*id).as_bytes();
                let end = 4 + digits.len();
                buf[4..end].copy_from_slice(digits);
                f(std::str::from_utf8(&buf[..end]).unwrap_or_default())
            }
            EventId::Hash(digest) => {
                let mut buf = [0u8; 34];
                buf[..2].copy_from_slice(b"h-");
                for (i, b) in buf[2..].iter_mut().enumerate() {
                    *b = HEX[((digest >> ((31 - i) * 4)) & 0xf) as usize];
                }
                f(std::str::from_utf8(&buf).unwrap_or_default())
            }
            EventId::Text(text) => f(text),
        }
    }

    /// The platform's message id, for a `msg-<id>`.
    pub fn message_id(&self) -> Option<u64> {
        match self {
            EventId::Message(id) => Some(*id),
            _ => None,
        }
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_text(|text| f.write_str(text))
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.with_text(|text| serializer.serialize_str(text))
    }
}

impl From<&str> for EventId {
    fn from(text: &str) -> Self {
        EventId::parse(text)
    }
}

impl From<String> for EventId {
    /// Like [`EventId::parse`], keeping the string's allocation when it stays text.
    fn from(text: String) -> Self {
        EventId::typed(&text).unwrap_or_else(|| EventId::Text(text.into_boxed_str()))
    }
}

impl Headers {
    /// The [`Headers::event`] of an event of `kind` named `wire` on the wire: the catalogue's
    /// name, borrowed, when the wire name is it (every record of a catalogued event, no
    /// allocation); otherwise the wire name, owned (aliases, unknown names).
    pub fn event_name(kind: EventKind, wire: &str) -> Cow<'static, str> {
        match kind.name() {
            Some(name) if name == wire => Cow::Borrowed(name),
            _ => Cow::Owned(wire.to_owned()),
        }
    }

    /// The value of the `replayed` marker where it travels as a header or property (Kafka
    /// header, MQTT 5 user property): present only on replayed records.
    pub const REPLAYED_VALUE: &'static str = "1";
}

impl Record {
    /// The bytes this record counts against the buffer's `max_bytes` budget: topic, key,
    /// payload and event name plus a fixed overhead.
    pub fn size_bytes(&self) -> usize {
        RECORD_OVERHEAD_BYTES
            + self.topic.len()
            + self.key.as_ref().map_or(0, String::len)
            + self.payload.len()
            + self.headers.event.len()
            + self.headers.event_id.as_ref().map_or(0, EventId::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_keep_what_they_are_made_of_and_round_trip_as_text() {
        let table: [(&str, EventId); 12] = [
            ("msg-42", EventId::Message(42)),
            ("msg-0", EventId::Message(0)),
            ("msg-18446744073709551615", EventId::Message(u64::MAX)),
            ("h-000000000000000000000000000000ff", EventId::Hash(255)),
            (
                "h-cb4988a1621d75c953b051aa4dd1a1dd",
                EventId::Hash(0xcb4988a1621d75c953b051aa4dd1a1dd),
            ),
            // Anything not written the canonical way stays text, so it round-trips.
            ("msg-007", EventId::Text("msg-007".into())),
            ("msg-", EventId::Text("msg-".into())),
            (
                "msg-18446744073709551616",
                EventId::Text("msg-18446744073709551616".into()),
            ),
            ("msg-+1", EventId::Text("msg-+1".into())),
            (
                "h-CB4988A1621D75C953B051AA4DD1A1DD",
                EventId::Text("h-CB4988A1621D75C953B051AA4DD1A1DD".into()),
            ),
            ("h-ff", EventId::Text("h-ff".into())),
            ("évé/1 \"x\"", EventId::Text("évé/1 \"x\"".into())),
        ];
        for (text, id) in table {
            assert_eq!(EventId::parse(text), id, "{text}");
            assert_eq!(EventId::from(text.to_owned()), id, "{text}");
            assert_eq!(id.to_string(), text);
            assert_eq!(serde_json::to_value(&id).unwrap(), text);
            assert_eq!(id.len(), text.len(), "{text}");
        }
        assert!(EventId::parse("").is_empty());
        assert_eq!(EventId::Message(7).message_id(), Some(7));
        assert_eq!(EventId::Hash(7).message_id(), None);
    }

    #[test]
    fn catalogued_event_names_are_borrowed_others_owned() {
        let table = [
            (EventKind::MessageCreated, "message.created", true),
            // An alias of a catalogued kind keeps its wire spelling.
            (
                EventKind::from_name("conversation_typing_on"),
                "conversation_typing_on",
                false,
            ),
            (EventKind::from_name("x.unknown"), "x.unknown", false),
            // A kind whose wire name differs (cannot come from the decoder): the wire wins.
            (EventKind::MessageCreated, "message.updated", false),
        ];
        for (kind, wire, borrowed) in table {
            let name = Headers::event_name(kind, wire);
            assert_eq!(name, wire);
            assert_eq!(matches!(name, Cow::Borrowed(_)), borrowed, "{wire}");
        }
    }

    #[test]
    fn size_counts_every_owned_part() {
        let record = Record {
            topic: "t".repeat(10),
            key: Some("k".repeat(5)),
            payload: Bytes::from_static(b"0123456789"),
            headers: Headers {
                event: "message.created".into(),
                event_label: "message.created",
                account_id: Some(1),
                received_at_ms: 0,
                event_id: None,
                replayed: false,
            },
            accepted_at: Instant::now(),
        };
        assert_eq!(
            record.size_bytes(),
            RECORD_OVERHEAD_BYTES + 10 + 5 + 10 + 15
        );
    }
}
