//! Topic rules of MQTT and Kafka, checked at configuration time and again at publish time.

/// Why a topic is not acceptable to a broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is empty.
    #[error("topic is empty")]
    Empty,
    /// The topic is longer than the protocol allows.
    #[error("topic is {len} bytes long; at most {max} allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An MQTT topic name holds a wildcard (`+`, `#`) or NUL.
    #[error("MQTT topic names may not contain {0:?} (wildcards and NUL are for filters only)")]
    MqttForbiddenChar(char),
    /// An MQTT topic starting with `$` is reserved for the broker (`$SYS/...`).
    #[error("MQTT topics starting with '$' are reserved for the broker")]
    MqttReserved,
    /// A Kafka topic holds a character outside `[a-zA-Z0-9._-]`.
    #[error("Kafka topics may only contain [a-zA-Z0-9._-], found {0:?}")]
    KafkaForbiddenChar(char),
    /// `.` and `..` are not valid Kafka topics.
    #[error("'.' and '..' are not valid Kafka topics")]
    KafkaDots,
}

/// The longest MQTT topic: its length is a 16-bit prefix.
pub const MQTT_TOPIC_MAX_BYTES: usize = 65_535;
/// The longest Kafka topic name.
pub const KAFKA_TOPIC_MAX_CHARS: usize = 249;

/// Checks an MQTT topic name (not a filter): non-empty, at most 65,535 bytes, no `+`, `#` or NUL,
/// not starting with `$`.
pub fn check_mqtt_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MQTT_TOPIC_MAX_BYTES {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max: MQTT_TOPIC_MAX_BYTES,
        });
    }
    if topic.starts_with('$') {
        return Err(TopicError::MqttReserved);
    }
    match topic.bytes().find(|b| matches!(b, b'+' | b'#' | 0)) {
        Some(b) => Err(TopicError::MqttForbiddenChar(char::from(b))),
        None => Ok(()),
    }
}

/// Checks a Kafka topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn check_kafka_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(TopicError::KafkaForbiddenChar(c));
    }
    if topic.len() > KAFKA_TOPIC_MAX_CHARS {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max: KAFKA_TOPIC_MAX_CHARS,
        });
    }
    if topic == "." || topic == ".." {
        return Err(TopicError::KafkaDots);
    }
    Ok(())
}

/// Replaces every `{placeholder}` of a template with `sample`, so a template can be checked
/// with the topic rules (`voxsig.{account}.{event}` -> `voxsig.0.0`).
pub fn sample_of_template(template: &str, sample: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => {
                out.push_str(sample);
                rest = &rest[open + close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_rules() {
        assert!(check_mqtt_topic("voxsig/1/message.created").is_ok());
        assert!(check_mqtt_topic("a b/ü").is_ok());
        assert_eq!(check_mqtt_topic(""), Err(TopicError::Empty));
        assert_eq!(
            check_mqtt_topic("a/+/b"),
            Err(TopicError::MqttForbiddenChar('+'))
        );
        assert_eq!(
            check_mqtt_topic("a/#"),
            Err(TopicError::MqttForbiddenChar('#'))
        );
        assert_eq!(
            check_mqtt_topic("a\0b"),
            Err(TopicError::MqttForbiddenChar('\0'))
        );
        assert_eq!(check_mqtt_topic("$SYS/x"), Err(TopicError::MqttReserved));
        assert!(check_mqtt_topic(&"a".repeat(65_535)).is_ok());
        assert!(matches!(
            check_mqtt_topic(&"a".repeat(65_536)),
            Err(TopicError::TooLong { len: 65_536, .. })
        ));
    }

    #[test]
    fn kafka_rules() {
        assert!(check_kafka_topic("voxsig.1.message_created-x").is_ok());
        assert_eq!(
            check_kafka_topic("voxsig/1"),
            Err(TopicError::KafkaForbiddenChar('/'))
        );
        assert_eq!(
            check_kafka_topic("é"),
            Err(TopicError::KafkaForbiddenChar('é'))
        );
        assert_eq!(check_kafka_topic(".."), Err(TopicError::KafkaDots));
        assert!(check_kafka_topic(&"a".repeat(249)).is_ok());
        assert!(check_kafka_topic(&"a".repeat(250)).is_err());
    }

    #[test]
    fn templates_are_sampled() {
        assert_eq!(
            sample_of_template("voxsig.{account}.{event}", "0"),
            "voxsig.0.0"
        );
        assert_eq!(sample_of_template("a/{b", "0"), "a/{b");
    }
}
