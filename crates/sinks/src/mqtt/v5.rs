//! MQTT 5 specifics: the properties every publish carries.

use rumqttc::v5::mqttbytes::v5::PublishProperties;

use super::config::{EventPatterns, MqttConfig};
use crate::cloudevents::CloudEvents;
use crate::record::Record;

/// The content type of event payloads (the platform's JSON `data`).
pub(crate) const CONTENT_TYPE: &str = "application/json";

/// How a record's MQTT 5 publish properties are made.
#[derive(Debug, Clone)]
pub(crate) struct PropertyRules {
    /// Message expiry interval (seconds) by event pattern; first match wins.
    expiry: Vec<(EventPatterns, u32)>,
    /// CloudEvents binary mode: the attributes as user properties too.
    pub(crate) cloudevents: Option<CloudEvents>,
}

impl PropertyRules {
    pub(crate) fn new(config: &MqttConfig) -> Self {
        PropertyRules {
            expiry: config
                .message_expiry
                .iter()
                .map(|e| (EventPatterns::new(&e.events), e.secs))
                .collect(),
            cloudevents: None,
        }
    }

    /// The properties of a publish: for a record, its metadata as user properties (`event`,
    /// `account_id`, `received_at` in Unix ms, `event_id` and `replayed` when present),
    /// content type `application/json`, payload format indicator 1 (UTF-8) and the message
    /// expiry of its event; with CloudEvents (binary mode) also the attributes `specversion`,
    /// `id`, `source`, `type` and `time`. For a status message (`None`) only the payload
    /// format indicator.
    pub(crate) fn properties(&self, record: Option<&Record>) -> PublishProperties {
        let Some(record) = record else {
            return PublishProperties {
                payload_format_indicator: Some(1),
                ..PublishProperties::default()
            };
        };
        let headers = &record.headers;
        let mut user = Vec::with_capacity(5);
        user.push(("event".to_owned(), mqtt_text(&headers.event)));
        if let Some(account) = headers.account_id {
            user.push(("account_id".to_owned(), account.to_string()));
        }
        user.push(("received_at".to_owned(), headers.received_at_ms.to_string()));
        if let Some(id) = &headers.event_id {
            user.push(("event_id".to_owned(), id.with_text(mqtt_text)));
        }
        if headers.replayed {
            user.push((
                "replayed".to_owned(),
                crate::Headers::REPLAYED_VALUE.to_owned(),
            ));
        }
        if let Some(ce) = &self.cloudevents {
            let attributes = ce.attributes(headers, &record.payload);
            user.extend(
                attributes
                    .pairs()
                    .map(|(k, v)| (k.to_owned(), mqtt_text(v))),
            );
        }
        PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: self
                .expiry
                .iter()
                .find(|(patterns, _)| patterns.retains(&headers.event))
                .map(|(_, secs)| *secs),
            user_properties: user,
            content_type: Some(CONTENT_TYPE.to_owned()),
            ..PublishProperties::default()
        }
    }
}

impl PropertyRules {
    /// The encoded size of a record's properties block, at most (length prefix included).
    pub(crate) fn properties_size(&self, record: &Record) -> usize {
        let p = self.properties(Some(record));
        let user: usize = p
            .user_properties
            .iter()
            .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
            .sum();
        let content_type = p.content_type.as_ref().map_or(0, |c| 1 + 2 + c.len());
        // Length prefix (varint, at most 4), payload format indicator (2), expiry (5).
        4 + 2 + 5 + user + content_type
    }
}

/// A user property value as MQTT 5 allows it: NUL is forbidden and control characters and
/// non-characters may make a broker close the connection (mosquitto does), so each becomes
/// U+FFFD. Event names and ids come from the platform: anything may be in them.
pub(crate) fn mqtt_text(value: &str) -> String {
    let bad = |c: char| !crate::topic::mqtt_text_char(c);
    if value.chars().any(bad) {
        value
            .chars()
            .map(|c| if bad(c) { '\u{FFFD}' } else { c })
            .collect()
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::config::MessageExpiry;
    use crate::testing::record;

    #[test]
    fn hostile_text_is_made_valid_for_mqtt() {
        assert_eq!(mqtt_text("message.created"), "message.created");
        assert_eq!(
            mqtt_text("a\u{0}b\u{1}\u{7f}\u{9f}c"),
            "a\u{FFFD}b\u{FFFD}\u{FFFD}\u{FFFD}c"
        );
        assert_eq!(
            mqtt_text("x\u{FFFF}\u{1FFFE}\u{FDD0}"),
            "x\u{FFFD}\u{FFFD}\u{FFFD}"
        );
        assert_eq!(mqtt_text("ünï 😀"), "ünï 😀");
    }

    #[test]
    fn records_carry_their_metadata_and_expiry() {
        let mut config = MqttConfig::new("mqtt://a");
        config.message_expiry = vec![MessageExpiry {
            events: vec!["conversation.typing_*".into()],
            secs: 60,
        }];
        let rules = PropertyRules::new(&config);
        let mut r = record("voxsig/1/x", 1);
        r.headers.event = "conversation.typing_on".into();
        r.headers.account_id = Some(42);
        r.headers.received_at_ms = 1_700_000_000_123;
        r.headers.event_id = Some("ev-1".into());
        r.headers.replayed = true;
        let p = rules.properties(Some(&r));
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.message_expiry_interval, Some(60));
        let user: Vec<(&str, &str)> = p
            .user_properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            user,
            [
                ("event", "conversation.typing_on"),
                ("account_id", "42"),
                ("received_at", "1700000000123"),
                ("event_id", "ev-1"),
                ("replayed", "1"),
            ]
        );
        r.headers.event = "message.created".into();
        r.headers.account_id = None;
        r.headers.event_id = None;
        r.headers.replayed = false;
        let p = rules.properties(Some(&r));
        assert_eq!(p.message_expiry_interval, None);
        let keys: Vec<&str> = p.user_properties.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["event", "received_at"], "absent metadata is omitted");
        let mut rules = rules;
        rules.cloudevents = Some(CloudEvents::new("com.voxsig.", "https://app.voxsig.com"));
        let p = rules.properties(Some(&r));
        let keys: Vec<&str> = p.user_properties.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "event",
                "received_at",
                "specversion",
                "id",
                "source",
                "type",
                "time"
            ],
            "CloudEvents binary mode: attributes without prefix, metadata kept"
        );
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        let status = rules.properties(None);
        assert!(status.user_properties.is_empty() && status.content_type.is_none());
    }
}
