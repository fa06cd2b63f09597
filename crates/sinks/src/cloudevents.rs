//! CloudEvents 1.0 for `[route] payload = "cloudevents"`: the attributes of a record and the
//! mode each sink uses, as the CloudEvents protocol bindings define them.
//!
//! - Kafka: binary mode. The value is the event's `data`; the attributes are the headers
//!   `ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_time` and `content-type`.
//! - MQTT 5: binary mode. The payload is `data`; the attributes are user properties named as
//!   the attributes (`specversion`, `id`, …), the content type is the content type property.
//! - MQTT 3.1.1 (no properties), stdout and file: structured mode, the JSON event format
//!   (`application/cloudevents+json`) with `data` spliced in as the bytes it is.
//!
//! Attributes: `type` = `<prefix><event>` (prefix `com.voxsig.` by default), `source` = the
//! URI reference `<platform origin>/accounts/<account_id>`, `id` = the record's stable event
//! id so consumers can deduplicate (when the record has none: `h-` and the FNV-1a 64-bit hash,
//! in hex, of the account id, event name and data — the same for every copy of the same
//! event), `time` = the receive time in RFC 3339 (UTC, milliseconds), `datacontenttype` =
//! `application/json`.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use crate::record::Headers;

/// The CloudEvents version written.
pub const SPEC_VERSION: &str = "1.0";
/// The default prefix of `type`.
pub const DEFAULT_TYPE_PREFIX: &str = "com.voxsig.";
/// The content type of a structured-mode event.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// The content type of the data (the platform's JSON).
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// How a sink carries CloudEvents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Attributes beside the data (Kafka headers, MQTT 5 user properties).
    Binary,
    /// The whole event as JSON in the payload.
    Structured,
}

/// How a record's attributes are made: the `type` prefix and the platform origin of `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvents {
    type_prefix: String,
    origin: String,
}

/// One record's CloudEvents attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `id`: the stable event id, or the fallback hash.
    pub id: String,
    /// `source`: `<platform origin>/accounts/<account_id>`.
    pub source: String,
    /// `type`: `<prefix><event>`.
    pub ty: String,
    /// `time`: the receive time, RFC 3339.
    pub time: String,
}

impl Attributes {
    /// The attributes as (name, value) pairs, `specversion` first (binary mode; the content
    /// type travels separately).
    pub fn pairs(&self) -> [(&'static str, &str); 5] {
        [
            ("specversion", SPEC_VERSION),
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
            ("time", &self.time),
        ]
    }
}

impl CloudEvents {
    /// `origin` is the platform's origin (`https://app.voxsig.com`), without a trailing `/`.
    pub fn new(type_prefix: impl Into<String>, origin: impl Into<String>) -> Self {
        let origin: String = origin.into();
        CloudEvents {
            type_prefix: type_prefix.into(),
            origin: origin.trim_end_matches('/').to_owned(),
        }
    }

    /// The attributes of a record with these headers and data.
    pub fn attributes(&self, headers: &Headers, data: &[u8]) -> Attributes {
        let id = match &headers.event_id {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => fallback_id(headers, data),
        };
        let source = match headers.account_id {
            Some(account) => format!("{}/accounts/{account}", self.origin),
            None => self.origin.clone(),
        };
        let ms = u64::try_from(headers.received_at_ms).unwrap_or(0);
        let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
        Attributes {
            id,
            source,
            ty: format!("{}{}", self.type_prefix, headers.event),
            time: time.to_string(),
        }
    }

    /// The structured-mode event: JSON with the attributes and `data` (spliced in unparsed; it
    /// is the platform's JSON).
    pub fn structured(&self, headers: &Headers, data: &[u8]) -> Bytes {
        let a = self.attributes(headers, data);
        let mut out = String::with_capacity(data.len() + 256);
        out.push_str("{\"specversion\":\"1.0\"");
        for (name, value) in [
            ("id", &a.id),
            ("source", &a.source),
            ("type", &a.ty),
            ("time", &a.time),
        ] {
            let _ = write!(out, ",\"{name}\":{}", json_string(value));
        }
        let _ = write!(
            out,
            ",\"datacontenttype\":\"{DATA_CONTENT_TYPE}\",\"data\":"
        );
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(data);
        bytes.push(b'}');
        Bytes::from(bytes)
    }
}

fn json_string(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_owned())
}

/// `h-` and the FNV-1a 64 hash of account id, event name and data (fields separated by 0xff,
/// which UTF-8 never contains): stable across processes and releases.
fn fallback_id(headers: &Headers, data: &[u8]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let account = headers
        .account_id
        .map(|a| a.to_string())
        .unwrap_or_default();
    for part in [account.as_bytes(), headers.event.as_bytes(), data] {
        for byte in part.iter().chain(std::iter::once(&0xff)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    format!("h-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::record;

    fn ce() -> CloudEvents {
        CloudEvents::new(DEFAULT_TYPE_PREFIX, "https://app.voxsig.com/")
    }

    #[test]
    fn attributes_follow_the_record() {
        let mut r = record("t", 1);
        r.headers.account_id = Some(42);
        r.headers.received_at_ms = 1_764_000_000_123;
        r.headers.event_id = Some("evt-1".into());
        let a = ce().attributes(&r.headers, &r.payload);
        assert_eq!(a.id, "evt-1");
        assert_eq!(a.source, "https://app.voxsig.com/accounts/42");
        assert_eq!(a.ty, "com.voxsig.message.created");
        assert_eq!(a.time, "2025-11-24T16:00:00.123Z");
    }

    #[test]
    fn the_fallback_id_is_deterministic_and_tells_events_apart() {
        let r = record("t", 1);
        let id = ce().attributes(&r.headers, &r.payload).id;
        assert!(id.starts_with("h-") && id.len() == 18, "{id}");
        assert_eq!(id, ce().attributes(&r.headers, &r.payload).id);
        let other = record("t", 2);
        assert_ne!(id, ce().attributes(&other.headers, &other.payload).id);
        let mut elsewhere = record("t", 1);
        elsewhere.headers.account_id = Some(2);
        assert_ne!(
            id,
            ce().attributes(&elsewhere.headers, &elsewhere.payload).id
        );
        // Pinned: the id must not change between releases (consumers deduplicate on it).
        let mut pinned = record("t", 1);
        pinned.payload = Bytes::from_static(b"{}");
        assert_eq!(
            ce().attributes(&pinned.headers, &pinned.payload).id,
            "h-1f8fd3bcfc64d200"
        );
    }

    #[test]
    fn structured_mode_is_json_with_the_data_spliced_in() {
        let mut r = record("t", 7);
        r.headers.event = "odd \"name\"\n".into();
        r.headers.account_id = None;
        let bytes = ce().structured(&r.headers, &r.payload);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "com.voxsig.odd \"name\"\n");
        assert_eq!(v["source"], "https://app.voxsig.com");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["data"], serde_json::json!({"n": 7}));
    }

    /// The rules of the CloudEvents 1.0 JSON schema (`cloudevents.json` of the spec
    /// repository: `specversion`, `id`, `type`, `source` required; `specversion`, `id`, `type`
    /// non-empty strings; `source` a URI reference; `time` an RFC 3339 date-time;
    /// `datacontenttype` a string; `data` an object or a string), checked as assertions, over
    /// ordinary and hostile records.
    #[test]
    fn structured_output_meets_the_cloudevents_json_schema() {
        let mut hostile = record("t", 3);
        hostile.headers.event = "conversation.typing_on\u{0}\"\n😀".into();
        hostile.headers.account_id = None;
        hostile.headers.event_id = Some("évé/1 \"x\"".into());
        hostile.headers.received_at_ms = -5;
        let mut replayed = record("t", 4);
        replayed.headers.replayed = true;
        replayed.headers.event_id = Some(String::new().into());
        for r in [record("t", 1), hostile, replayed] {
            for origin in ["https://app.voxsig.com", "http://127.0.0.1:3000/"] {
                let ce = CloudEvents::new(DEFAULT_TYPE_PREFIX, origin);
                let bytes = ce.structured(&r.headers, &r.payload);
                let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
                let event = v.as_object().expect("an object");
                for required in ["specversion", "id", "type", "source"] {
                    assert!(event.contains_key(required), "{required} in {v}");
                }
                for non_empty in ["specversion", "id", "type"] {
                    let s = event[non_empty].as_str().expect("a string");
                    assert!(!s.is_empty(), "{non_empty} empty in {v}");
                }
                assert_eq!(event["specversion"], "1.0");
                let source = event["source"].as_str().expect("source is a string");
                assert!(is_uri_reference(source), "source {source:?}");
                let time = event["time"].as_str().expect("time is a string");
                assert!(is_rfc3339(time), "time {time:?}");
                assert!(event["datacontenttype"].is_string());
                assert!(event["data"].is_object() || event["data"].is_string());
                assert!(!event.contains_key("data_base64"));
                for name in event.keys() {
                    // Attribute names: lower-case ASCII letters and digits (spec, 1.0).
                    assert!(
                        name.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                        "attribute name {name:?}"
                    );
                }
            }
        }
    }

    /// RFC 3986 URI reference, as far as a `source` can be one: an absolute URI with a scheme
    /// and only URI characters.
    fn is_uri_reference(s: &str) -> bool {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c);
        let Some((scheme, rest)) = s.split_once("://") else {
            return false;
        };
        !scheme.is_empty()
            && scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !rest.is_empty()
            && s.chars().all(allowed)
    }

    /// RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.fff]Z`, parsed back.
    fn is_rfc3339(s: &str) -> bool {
        s.len() >= 20
            && s.as_bytes()[10] == b'T'
            && s.ends_with('Z')
            && humantime::parse_rfc3339(s).is_ok()
    }
}
