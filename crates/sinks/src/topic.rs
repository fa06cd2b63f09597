//! Topic rules of MQTT and Kafka: the one definition of which characters a topic may hold, and
//! the one [`Template`] type that renders topics and keys.
//!
//! Each sink configuration names its [`TopicRules`] (`SinkConfig::topic_rules`); the router
//! renders with them ([`TopicRules::value_charset`] sanitises every template value with
//! [`Charset::sanitise`]) and checks the whole topic with [`TopicRules::check`]; the sinks check
//! what they publish with [`check_mqtt_topic`] / [`check_kafka_topic`]. All ask the same
//! character predicates ([`mqtt_topic_char`], [`kafka_topic_char`]), so a value the router lets
//! through is one the sink accepts, and a template is checked at start by rendering a sample
//! with the same rules ([`TopicRules::parse_template`]).
//!
//! MQTT (3.1.1 §1.5.3, §4.7.3): topic names are valid UTF-8 without NUL, and should hold no
//! control characters (U+0001..U+001F, U+007F..U+009F) nor Unicode non-characters (U+FDD0..U+FDEF,
//! U+xFFFE, U+xFFFF); Mosquitto closes the connection of a client publishing to such a topic. `+`
//! and `#` are wildcards (filters only), `/` separates levels and a leading `$` is the broker's.
//! Kafka: `[a-zA-Z0-9._-]`, at most 249 characters, not `.` or `..`.

mod template;

pub use template::{Context, Template, TemplateError, Var, NONE};

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
    /// An MQTT topic name holds a wildcard (`+`, `#`), NUL, a control character or a Unicode
    /// non-character.
    #[error("MQTT topic names may not contain {} (wildcards, NUL, control characters and Unicode non-characters)", .0.escape_default())]
    MqttForbiddenChar(char),
    /// An MQTT topic starting with `$` is reserved for the broker (`$SYS/...`).
    #[error("MQTT topics starting with '$' are reserved for the broker")]
    MqttReserved,
    /// A Kafka topic holds a character outside `[a-zA-Z0-9._-]`.
    #[error("Kafka topics may only contain [a-zA-Z0-9._-], found {}", .0.escape_default())]
    KafkaForbiddenChar(char),
    /// `.` and `..` are not valid Kafka topics.
    #[error("'.' and '..' are not valid Kafka topics")]
    KafkaDots,
}

/// The longest MQTT topic: its length is a 16-bit prefix.
pub const MQTT_TOPIC_MAX_BYTES: usize = 65_535;
/// The longest Kafka topic name.
pub const KAFKA_TOPIC_MAX_CHARS: usize = 249;

/// The longest value a template variable renders to in an MQTT topic, in bytes (longer values,
/// e.g. a hostile 1 MB event name, are cut so the topic stays within the protocol's limit).
pub const MQTT_VALUE_MAX_BYTES: usize = 1024;
/// The longest value a template variable renders to in a Kafka topic.
pub const KAFKA_VALUE_MAX_CHARS: usize = 200;

/// Whether `c` may appear in any MQTT UTF-8 string (topic names, MQTT 5 user properties): not a
/// control character (NUL, U+0001..U+001F, U+007F..U+009F) nor a Unicode non-character.
pub fn mqtt_text_char(c: char) -> bool {
    !(c.is_control() || is_noncharacter(c))
}

/// Whether `c` may appear in an MQTT topic name: an [`mqtt_text_char`] other than `+` and `#`.
pub fn mqtt_topic_char(c: char) -> bool {
    !matches!(c, '+' | '#') && mqtt_text_char(c)
}

/// Whether `c` may appear in a Kafka topic name: `[a-zA-Z0-9._-]`.
pub fn kafka_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Unicode non-characters: U+FDD0..=U+FDEF and the last two code points of every plane.
fn is_noncharacter(c: char) -> bool {
    let c = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE
}

/// The characters a rendered template value may hold, by destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// One MQTT topic level: [`mqtt_topic_char`] and not `/`.
    MqttLevel,
    /// Kafka topic name: [`kafka_topic_char`].
    Kafka,
    /// Keys: anything.
    Any,
}

impl Charset {
    /// Whether a value may hold `c`.
    pub fn allows(self, c: char) -> bool {
        match self {
            Charset::MqttLevel => c != '/' && mqtt_topic_char(c),
            Charset::Kafka => kafka_topic_char(c),
            Charset::Any => true,
        }
    }

    /// Sanitises the value in `out[start..]` (just rendered into a topic at byte `start`):
    /// every character the charset forbids becomes `_`, an empty value becomes `_`, a value
    /// longer than [`MQTT_VALUE_MAX_BYTES`] / [`KAFKA_VALUE_MAX_CHARS`] is cut, and for MQTT a
    /// value opening the topic does not start with `$`. The record is never dropped for its
    /// value: its topic keeps its shape.
    pub fn sanitise(self, out: &mut String, start: usize) {
        let max = match self {
            Charset::MqttLevel => MQTT_VALUE_MAX_BYTES,
            // Kafka values are ASCII once sanitised: one byte per character.
            Charset::Kafka => KAFKA_VALUE_MAX_CHARS,
            Charset::Any => usize::MAX,
        };
        if out.len() == start {
            out.push('_');
            return;
        }
        let leading_dollar = self == Charset::MqttLevel && start == 0 && out.starts_with('$');
        let clean = out[start..].chars().all(|c| self.allows(c));
        if clean && !leading_dollar && out.len() - start <= max {
            return;
        }
        let mut value = String::with_capacity((out.len() - start).min(max));
        for c in out[start..].chars() {
            let c = if self.allows(c) { c } else { '_' };
            if value.len() + c.len_utf8() > max {
                break;
            }
            value.push(c);
        }
        if leading_dollar {
            value.replace_range(..1, "_");
        }
        out.truncate(start);
        out.push_str(&value);
    }
}

/// Checks an MQTT topic name (not a filter): non-empty, at most 65,535 bytes, only
/// [`mqtt_topic_char`]s, not starting with `$`.
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
    match topic.chars().find(|c| !mqtt_topic_char(*c)) {
        Some(c) => Err(TopicError::MqttForbiddenChar(c)),
        None => Ok(()),
    }
}

/// Checks a Kafka topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn check_kafka_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if let Some(c) = topic.chars().find(|c| !kafka_topic_char(*c)) {
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

/// The placeholder for the bridge's instance name in client ids and the MQTT status topic.
pub const INSTANCE: &str = "{instance}";
/// The default client id of broker connections (MQTT and Kafka).
pub const DEFAULT_CLIENT_ID: &str = "voxsig-bridge-{instance}";

/// `text` with [`INSTANCE`] replaced by the bridge's instance name.
pub fn with_instance(text: &str, instance: &str) -> String {
    text.replace(INSTANCE, instance)
}

/// The naming rules of one sink's topics: which characters a rendered value may hold and which
/// topics the broker accepts. Each sink configuration names its own (`SinkConfig::topic_rules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRules {
    /// MQTT topic names (also used by stdout and file, so their topics could go to MQTT).
    Mqtt,
    /// Kafka topic names.
    Kafka,
}

/// A topic template that cannot be used with a sink's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadTemplate {
    /// The template does not parse.
    #[error(transparent)]
    Parse(#[from] TemplateError),
    /// A topic rendered from it breaks the sink's rules (whatever the values).
    #[error("renders topics like `{sample}`: {error}")]
    Renders {
        /// A topic rendered with typical values.
        sample: String,
        /// The rule it breaks.
        error: TopicError,
    },
}

impl TopicRules {
    /// The characters a rendered template value may hold (what the router sanitises to).
    pub fn value_charset(self) -> Charset {
        match self {
            TopicRules::Mqtt => Charset::MqttLevel,
            TopicRules::Kafka => Charset::Kafka,
        }
    }

    /// Checks a whole rendered topic.
    pub fn check(self, topic: &str) -> Result<(), TopicError> {
        match self {
            TopicRules::Mqtt => check_mqtt_topic(topic),
            TopicRules::Kafka => check_kafka_topic(topic),
        }
    }

    /// Renders `template` for one event under these rules: every value sanitised with
    /// [`TopicRules::value_charset`].
    pub fn render(self, template: &Template, ctx: &Context<'_>) -> String {
        template.render(ctx, self.value_charset())
    }

    /// Checks a parsed template: a topic rendered from typical values must pass
    /// [`TopicRules::check`] (values are sanitised, so only the literal parts can break it).
    pub fn check_template(self, template: &Template) -> Result<(), BadTemplate> {
        let sample = template.sample_in(self.value_charset());
        self.check(&sample)
            .map_err(|error| BadTemplate::Renders { sample, error })
    }

    /// Parses a topic template and checks it ([`TopicRules::check_template`]).
    pub fn parse_template(self, text: &str) -> Result<Template, BadTemplate> {
        let template = Template::parse(text)?;
        self.check_template(&template)?;
        Ok(template)
    }
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
        for bad in [
            '\u{1}',
            '\n',
            '\u{1b}',
            '\u{1f}',
            '\u{7f}',
            '\u{85}',
            '\u{9f}',
            '\u{fdd0}',
            '\u{fdef}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{1fffe}',
            '\u{10ffff}',
        ] {
            assert_eq!(
                check_mqtt_topic(&format!("a/{bad}")),
                Err(TopicError::MqttForbiddenChar(bad)),
                "{bad:?}"
            );
        }
        for good in ['\u{a0}', '\u{fdcf}', '\u{fdf0}', '\u{fffd}', '\u{1f600}'] {
            assert!(check_mqtt_topic(&format!("a/{good}")).is_ok(), "{good:?}");
        }
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

    /// Every value the sanitiser lets through passes the sinks' check: one rule, two users.
    #[test]
    fn sanitised_values_pass_the_check() {
        let hostile = [
            "a/b",
            "+",
            "#",
            "\0",
            "\u{1b}[2J\nINFO forged",
            "\u{85}",
            "\u{fdd0}x",
            "\u{ffff}",
            "\u{10fffe}",
            "$SYS",
            "",
            "é",
            "..",
            "user:logout",
        ];
        for value in hostile {
            let mut mqtt = "voxsig/".to_owned();
            mqtt.push_str(value);
            Charset::MqttLevel.sanitise(&mut mqtt, 7);
            assert!(check_mqtt_topic(&mqtt).is_ok(), "{mqtt:?}");
            assert_eq!(mqtt.matches('/').count(), 1, "{mqtt:?}");
            let mut leading = value.to_owned();
            Charset::MqttLevel.sanitise(&mut leading, 0);
            assert!(check_mqtt_topic(&leading).is_ok(), "{leading:?}");
            let mut kafka = "voxsig.".to_owned();
            kafka.push_str(value);
            Charset::Kafka.sanitise(&mut kafka, 7);
            assert!(check_kafka_topic(&kafka).is_ok(), "{kafka:?}");
        }
        let mut long = "v/".to_owned();
        long.push_str(&"é".repeat(1_000_000));
        Charset::MqttLevel.sanitise(&mut long, 2);
        assert!(long.len() <= 2 + MQTT_VALUE_MAX_BYTES && check_mqtt_topic(&long).is_ok());
        let mut long = "v.".to_owned();
        long.push_str(&"x".repeat(1_000));
        Charset::Kafka.sanitise(&mut long, 2);
        assert!(check_kafka_topic(&long).is_ok());
    }

    #[test]
    fn templates_are_checked_by_rendering_a_sample_under_the_rules() {
        let kafka = TopicRules::Kafka;
        assert!(kafka.parse_template("voxsig.{account}.{event}").is_ok());
        assert!(matches!(
            kafka.parse_template("voxsig/{account}"),
            Err(BadTemplate::Renders {
                error: TopicError::KafkaForbiddenChar('/'),
                ..
            })
        ));
        assert!(matches!(
            TopicRules::Mqtt.parse_template("a/{b"),
            Err(BadTemplate::Parse(TemplateError::Unbalanced))
        ));
        assert!(TopicRules::Mqtt.parse_template("a/+/{event}").is_err());
        // Values never break the rules: only literals can.
        assert!(TopicRules::Mqtt.parse_template("{event}/{label.x}").is_ok());
    }
}
