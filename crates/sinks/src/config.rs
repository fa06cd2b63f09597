//! [`SinkConfig`]: the bridge's `[sink]` table, tagged by `kind`.

use serde::{Deserialize, Serialize};

use crate::cloudevents::{self, CloudEvents};
use crate::jsonl::{FileConfig, JsonLinesSink, StdoutConfig};
use crate::kafka::{KafkaConfig, KafkaSink};
use crate::mqtt::{MqttConfig, MqttSink, Protocol};
use crate::topic::{BadTemplate, TopicError, TopicRules};
use crate::{ConfigError, Sink, SinkError};

/// Which sink, and its settings: `kind = "mqtt" | "kafka" | "stdout" | "file"`.
///
/// ```
/// let config: voxsig_sinks::SinkConfig = serde_json::from_str(
///     r#"{"kind": "mqtt", "url": "mqtt://127.0.0.1:1883", "qos": 1}"#,
/// ).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.default_topic_template(), "voxsig/{account}/{event}");
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    /// An MQTT broker.
    Mqtt(MqttConfig),
    /// A Kafka cluster.
    Kafka(KafkaConfig),
    /// JSON lines on standard output.
    Stdout(StdoutConfig),
    /// JSON lines appended to a file.
    File(FileConfig),
}

impl SinkConfig {
    /// The kind, as configured.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Mqtt(_) => "mqtt",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::File(_) => "file",
        }
    }

    /// Checks every value; errors name the key (`sink.url`, `sink.qos`, ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            SinkConfig::Mqtt(c) => c.validate(),
            SinkConfig::Kafka(c) => c.validate(),
            SinkConfig::Stdout(_) | SinkConfig::File(_) => {
                if let Some(template) = self.configured_topic() {
                    self.check_template(template)
                        .map_err(|e| ConfigError::new("sink.topic", e.to_string()))?;
                }
                Ok(())
            }
        }
    }

    /// Builds the sink. `instance` names this bridge (client ids, the MQTT status topic).
    /// Secrets and files are read now, so a wrong path or missing variable fails at startup;
    /// brokers are not contacted until the sink runs.
    pub fn build(&self, instance: &str) -> Result<Box<dyn Sink>, SinkError> {
        self.build_with(instance, None)
    }

    /// [`SinkConfig::build`], with CloudEvents attributes added in binary mode when
    /// `cloudevents` is set (`[route] payload = "cloudevents"`; see [`Self::cloudevents_mode`]).
    pub fn build_with(
        &self,
        instance: &str,
        cloudevents: Option<&CloudEvents>,
    ) -> Result<Box<dyn Sink>, SinkError> {
        self.validate()?;
        let binary = cloudevents
            .filter(|_| self.cloudevents_mode() == cloudevents::Mode::Binary)
            .cloned();
        Ok(match self {
            SinkConfig::Mqtt(c) => {
                let sink = MqttSink::new(c, instance)?;
                Box::new(match binary {
                    Some(ce) => sink.with_cloudevents(ce),
                    None => sink,
                })
            }
            SinkConfig::Kafka(c) => {
                let sink = KafkaSink::new(c, instance)?;
                Box::new(match binary {
                    Some(ce) => sink.with_cloudevents(ce),
                    None => sink,
                })
            }
            SinkConfig::Stdout(_) => Box::new(JsonLinesSink::stdout()),
            SinkConfig::File(c) => Box::new(JsonLinesSink::file(c)?),
        })
    }

    /// How this sink carries CloudEvents, per the CloudEvents protocol bindings: binary mode
    /// where the protocol has headers (Kafka, MQTT 5), structured mode (the JSON event as the
    /// payload, rendered by the bridge's router) for MQTT 3.1.1, stdout and file.
    pub fn cloudevents_mode(&self) -> cloudevents::Mode {
        match self {
            SinkConfig::Kafka(_) => cloudevents::Mode::Binary,
            SinkConfig::Mqtt(c) if c.protocol == Protocol::V5 => cloudevents::Mode::Binary,
            _ => cloudevents::Mode::Structured,
        }
    }

    /// The topic template used when `topic` is not set: `voxsig/{account}/{event}` for MQTT,
    /// stdout and file; `voxsig.{account}.{event}` for Kafka.
    pub fn default_topic_template(&self) -> &'static str {
        match self {
            SinkConfig::Kafka(_) => crate::kafka::DEFAULT_TOPIC,
            _ => crate::mqtt::DEFAULT_TOPIC,
        }
    }

    /// The configured topic template, or the default.
    pub fn topic_template(&self) -> &str {
        self.configured_topic()
            .unwrap_or_else(|| self.default_topic_template())
    }

    /// The key template: Kafka's configured `key` or `{account}/{conversation}`.
    pub fn key_template(&self) -> &str {
        match self {
            SinkConfig::Kafka(c) => c.key.as_deref().unwrap_or(crate::kafka::DEFAULT_KEY),
            _ => crate::kafka::DEFAULT_KEY,
        }
    }

    fn configured_topic(&self) -> Option<&str> {
        match self {
            SinkConfig::Mqtt(c) => c.topic.as_deref(),
            SinkConfig::Kafka(c) => c.topic.as_deref(),
            SinkConfig::Stdout(c) => c.topic.as_deref(),
            SinkConfig::File(c) => c.topic.as_deref(),
        }
    }

    /// The naming rules of this sink's topics: Kafka's (`[a-zA-Z0-9._-]`, at most 249) for
    /// Kafka, MQTT's (no `+`, `#`, control characters or non-characters; at most 65,535 bytes)
    /// for the others. The router renders and checks topics with them.
    pub fn topic_rules(&self) -> TopicRules {
        match self {
            SinkConfig::Kafka(_) => TopicRules::Kafka,
            SinkConfig::Mqtt(_) | SinkConfig::Stdout(_) | SinkConfig::File(_) => TopicRules::Mqtt,
        }
    }

    /// Checks a rendered topic against this sink's [`SinkConfig::topic_rules`].
    pub fn check_topic(&self, topic: &str) -> Result<(), TopicError> {
        self.topic_rules().check(topic)
    }

    /// Checks a topic template with this sink's rules ([`TopicRules::parse_template`]).
    pub fn check_template(&self, template: &str) -> Result<(), BadTemplate> {
        self.topic_rules().parse_template(template).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> SinkConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn kinds_parse_with_defaults() {
        let mqtt = parse(
            r#"{"kind":"mqtt","url":"mqtts://b:8883","password":{"env":"PW"},"username":"u"}"#,
        );
        let SinkConfig::Mqtt(m) = &mqtt else { panic!() };
        assert_eq!((m.qos, m.inflight, m.clean_session), (1, 100, false));
        assert_eq!(m.retain, ["presence.update"]);
        assert!(!format!("{mqtt:?}").contains("PW\""), "env name only");
        let kafka = parse(
            r#"{"kind":"kafka","brokers":["a:9092","b:9092"],"compression":"zstd",
                "properties":{"sasl.password":"hunter2"}}"#,
        );
        assert!(!format!("{kafka:?}").contains("hunter2"));
        assert_eq!(kafka.default_topic_template(), "voxsig.{account}.{event}");
        assert_eq!(kafka.key_template(), "{account}/{conversation}");
        assert_eq!(parse(r#"{"kind":"stdout"}"#).kind(), "stdout");
        let file = parse(r#"{"kind":"file","path":"/tmp/x.jsonl"}"#);
        assert_eq!(file.topic_template(), "voxsig/{account}/{event}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_errors() {
        let err = serde_json::from_str::<SinkConfig>(r#"{"kind":"mqtt","url":"mqtt://a","qso":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("qso"), "{err}");
        assert!(serde_json::from_str::<SinkConfig>(r#"{"kind":"amqp"}"#).is_err());
    }

    #[test]
    fn topics_and_templates_are_checked_per_kind() {
        let kafka = SinkConfig::Kafka(KafkaConfig::new("a:1"));
        assert!(kafka.check_template("voxsig.{account}.{event}").is_ok());
        assert!(kafka.check_topic("voxsig/1").is_err());
        let mqtt = SinkConfig::Mqtt(MqttConfig::new("mqtt://a"));
        assert!(mqtt.check_template("voxsig/{account}/{event}").is_ok());
        assert!(mqtt.check_topic("voxsig/#").is_err());
        let stdout = SinkConfig::Stdout(StdoutConfig {
            topic: Some("a/+".into()),
        });
        assert_eq!(stdout.validate().unwrap_err().key(), "sink.topic");
    }

    #[test]
    fn build_reports_missing_secrets_by_key() {
        let mut c = MqttConfig::new("mqtt://127.0.0.1:1");
        c.username = Some("u".into());
        c.password = Some(crate::Secret::from_env("VOXSIG_SINKS_TEST_NO_SUCH_VAR"));
        let err = SinkConfig::Mqtt(c).build("t").err().unwrap().to_string();
        assert_eq!(
            err,
            "sink.password: the environment variable named by `env` is not set (or not UTF-8)"
        );
    }
}
