//! `kind = "kafka"`: configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::duration_keys;
use crate::topic::TopicRules;
use crate::{ConfigError, Secret};

/// The default topic template of the Kafka sink.
pub const DEFAULT_TOPIC: &str = "voxsig.{account}.{event}";
/// The default key template: one conversation stays in one partition, in order.
pub const DEFAULT_KEY: &str = "{account}/{conversation}";
/// The single-topic layout for large fleets (keyed by account/conversation).
pub const SINGLE_TOPIC: &str = "voxsig-events";

/// librdkafka properties the sink sets itself and that `properties` may not override.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    (
        "enable.idempotence",
        "always true (at-least-once, ordered retries)",
    ),
    ("acks", "always all"),
    ("request.required.acks", "always all"),
    ("compression.type", "use `compression`"),
    ("compression.codec", "use `compression`"),
    ("linger.ms", "use `linger`"),
    ("queue.buffering.max.ms", "use `linger`"),
    ("message.timeout.ms", "use `message_timeout`"),
    ("delivery.timeout.ms", "use `message_timeout`"),
];

/// librdkafka properties the sink sets by default, before `properties` (which may override
/// them; not [`RESERVED`]).
const DEFAULTS: &[(&str, &str)] = &[
    // TCP_NODELAY on broker sockets: a produce request leaves at once instead of waiting
    // (Nagle's algorithm) for the broker to acknowledge earlier data; `linger_ms` batches.
    ("socket.nagle.disable", "true"),
];

/// Sets the sink's default librdkafka properties ([`DEFAULTS`]) on `cc`; the pass-through
/// `properties`, set after, may override them.
pub(crate) fn set_default_properties(cc: &mut rdkafka::config::ClientConfig) {
    for (name, value) in DEFAULTS {
        cc.set(*name, *value);
    }
}

/// Brokers as a list or a comma-separated string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Brokers {
    /// `"host1:9092,host2:9092"`.
    Csv(String),
    /// `["host1:9092", "host2:9092"]`.
    List(Vec<String>),
}

impl Brokers {
    /// The comma-separated form librdkafka takes.
    pub fn joined(&self) -> String {
        match self {
            Brokers::Csv(s) => s.clone(),
            Brokers::List(list) => list.join(","),
        }
    }
}

/// Compression codec of produced batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None.
    None,
    /// gzip.
    Gzip,
    /// LZ4 (the default).
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Creating topics through the admin API before producing to them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreateTopics {
    /// Create missing topics. Default false (the broker's auto-creation, if any, applies).
    pub enabled: bool,
    /// Partitions of created topics. Default 3.
    pub partitions: i32,
    /// Replication factor of created topics. Default 1.
    pub replication_factor: i32,
}

impl Default for CreateTopics {
    fn default() -> Self {
        CreateTopics {
            enabled: false,
            partitions: 3,
            replication_factor: 1,
        }
    }
}

/// The Kafka sink's configuration (`[sink]` with `kind = "kafka"`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `"host:port,..."` or a list. Required.
    pub brokers: Brokers,
    /// Topic template (the bridge renders it). Default `voxsig.{account}.{event}`; for large
    /// fleets use the single topic `voxsig-events` (records stay keyed by account/conversation).
    #[serde(default)]
    pub topic: Option<String>,
    /// Key template (the bridge renders it). Default `{account}/{conversation}`.
    #[serde(default)]
    pub key: Option<String>,
    /// Client id reported to the brokers; `{instance}` is replaced. Default `voxsig-bridge-{instance}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `none`, `gzip`, `lz4` (default) or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits to fill a batch, `linger = "5ms"` (or `linger_ms = 5`).
    /// Default 5 ms.
    #[serde(default = "default_linger")]
    pub linger_ms: u64,
    /// Largest batch in bytes (`batch.size`). Default 1,000,000.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: u64,
    /// How long librdkafka tries one attempt before reporting failure, `message_timeout =
    /// "30s"` (or `message_timeout_ms`); the sink then tries again (counted as a redelivery).
    /// Default 30 s.
    #[serde(default = "default_message_timeout")]
    pub message_timeout_ms: u64,
    /// Records handed to the producer and not yet reported, at most. Default 50,000.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Topic creation through the admin API.
    #[serde(default)]
    pub create_topics: CreateTopics,
    /// Any other librdkafka property (TLS, SASL, ...). Values may be secrets:
    /// `"sasl.password" = { env = "KAFKA_PASSWORD" }`.
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
    /// The same pass-through written as `[sink.kafka.properties]`; merged with `properties`
    /// (a name set in both is a configuration error).
    #[serde(default, skip_serializing_if = "KafkaSection::is_empty")]
    pub kafka: KafkaSection,
}

duration_keys!(
    KafkaConfig,
    [
        "linger" <- "linger_ms" in Millis,
        "message_timeout" <- "message_timeout_ms" in Millis,
    ]
);

/// `[sink.kafka]`: a home for `properties` under the sink's own name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// librdkafka properties, as `[sink.properties]`.
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
}

impl KafkaSection {
    fn is_empty(&self) -> bool {
        self.properties.is_empty()
    }
}

fn default_linger() -> u64 {
    5
}
fn default_batch_bytes() -> u64 {
    1_000_000
}
fn default_message_timeout() -> u64 {
    30_000
}
fn default_in_flight() -> usize {
    50_000
}

impl KafkaConfig {
    /// A configuration with defaults for everything but the brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: Brokers::Csv(brokers.into()),
            topic: None,
            key: None,
            client_id: None,
            compression: Compression::default(),
            linger_ms: default_linger(),
            batch_bytes: default_batch_bytes(),
            message_timeout_ms: default_message_timeout(),
            max_in_flight: default_in_flight(),
            create_topics: CreateTopics::default(),
            properties: BTreeMap::new(),
            kafka: KafkaSection::default(),
        }
    }

    /// Every pass-through librdkafka property with the key it was configured under
    /// (`sink.properties.<name>` or `sink.kafka.properties.<name>`).
    pub fn all_properties(&self) -> impl Iterator<Item = (String, &str, &Secret)> {
        let flat = self
            .properties
            .iter()
            .map(|(name, value)| (format!("sink.properties.{name}"), name.as_str(), value));
        let nested = self.kafka.properties.iter().map(|(name, value)| {
            (
                format!("sink.kafka.properties.{name}"),
                name.as_str(),
                value,
            )
        });
        flat.chain(nested)
    }

    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let brokers = self.brokers.joined();
        if brokers.split(',').any(|b| b.trim().is_empty()) {
            return Err(ConfigError::new(
                "sink.brokers",
                "must list at least one host:port, without empty entries",
            ));
        }
        if let Some(template) = &self.topic {
            TopicRules::Kafka
                .parse_template(template)
                .map_err(|e| ConfigError::new("sink.topic", e.to_string()))?;
        }
        if self.linger_ms > 900_000 {
            return Err(ConfigError::new("sink.linger_ms", "must be at most 900000"));
        }
        if !(1..=2_147_483_647).contains(&self.batch_bytes) {
            return Err(ConfigError::new(
                "sink.batch_bytes",
                "must be from 1 to 2147483647",
            ));
        }
        if self.message_timeout_ms < 1_000 {
            return Err(ConfigError::new(
                "sink.message_timeout_ms",
                "must be at least 1000",
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1_000_000 {
            return Err(ConfigError::new(
                "sink.max_in_flight",
                "must be from 1 to 1000000",
            ));
        }
        if self.create_topics.partitions < 1 {
            return Err(ConfigError::new(
                "sink.create_topics.partitions",
                "must be at least 1",
            ));
        }
        if self.create_topics.replication_factor < 1 {
            return Err(ConfigError::new(
                "sink.create_topics.replication_factor",
                "must be at least 1",
            ));
        }
        for (key, name, _) in self.all_properties() {
            if let Some((_, why)) = RESERVED.iter().find(|(k, _)| *k == name) {
                return Err(ConfigError::new(key, format!("set by the sink: {why}")));
            }
        }
        if let Some(name) = self
            .kafka
            .properties
            .keys()
            .find(|name| self.properties.contains_key(*name))
        {
            return Err(ConfigError::new(
                format!("sink.kafka.properties.{name}"),
                "also set in [sink.properties]; set it in one place",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let mut c = KafkaConfig::new("127.0.0.1:9092");
        assert!(c.validate().is_ok());
        c.topic = Some("voxsig/{account}".into());
        assert_eq!(c.validate().unwrap_err().key(), "sink.topic");
        c.topic = Some(SINGLE_TOPIC.into());
        c.properties.insert("acks".into(), Secret::inline("1"));
        assert_eq!(c.validate().unwrap_err().key(), "sink.properties.acks");
        c.properties.clear();
        c.kafka
            .properties
            .insert("linger.ms".into(), Secret::inline("1"));
        assert_eq!(
            c.validate().unwrap_err().key(),
            "sink.kafka.properties.linger.ms"
        );
        c.kafka.properties.clear();
        c.properties
            .insert("client.rack".into(), Secret::inline("a"));
        c.kafka
            .properties
            .insert("client.rack".into(), Secret::inline("b"));
        assert_eq!(
            c.validate().unwrap_err().key(),
            "sink.kafka.properties.client.rack"
        );
        c.properties.clear();
        c.kafka.properties.clear();
        c.brokers = Brokers::Csv("a:1,,b:2".into());
        assert_eq!(c.validate().unwrap_err().key(), "sink.brokers");
    }

    #[test]
    fn properties_are_read_from_either_table() {
        let c: KafkaConfig = toml_like(
            r#"{"brokers": "127.0.0.1:9092",
                "properties": {"security.protocol": "SASL_PLAINTEXT"},
                "kafka": {"properties": {"sasl.password": {"env": "KAFKA_PASSWORD"}}}}"#,
        );
        c.validate().unwrap();
        let keys: Vec<String> = c.all_properties().map(|(key, _, _)| key).collect();
        assert_eq!(
            keys,
            [
                "sink.properties.security.protocol",
                "sink.kafka.properties.sasl.password"
            ]
        );
        let unknown = serde_json::from_str::<KafkaConfig>(
            r#"{"brokers": "b:1", "kafka": {"propertie": {}}}"#,
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn defaults_may_be_overridden_and_are_not_reserved() {
        let mut cc = rdkafka::config::ClientConfig::new();
        set_default_properties(&mut cc);
        assert_eq!(cc.get("socket.nagle.disable"), Some("true"));
        for (name, _) in DEFAULTS {
            assert!(RESERVED.iter().all(|(k, _)| k != name), "{name}");
            let mut c = KafkaConfig::new("127.0.0.1:9092");
            c.properties.insert((*name).into(), Secret::inline("false"));
            c.validate().unwrap();
        }
    }

    fn toml_like(json: &str) -> KafkaConfig {
        serde_json::from_str(json).unwrap()
    }
}
