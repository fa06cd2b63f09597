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
    pub event_id: Option<String>,
    /// Whether the record was recovered after a gap (catch-up over the platform's REST API)
    /// rather than received live: Kafka header `replayed: 1`, envelope `"replayed": true`.
    pub replayed: bool,
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
            + self.headers.event_id.as_ref().map_or(0, String::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
