//! `kind = "kafka"`: produces records to Kafka with rdkafka (librdkafka built from the crate).
//!
//! - Idempotent producer, `acks=all`, lz4 (or zstd/gzip/none) compression, linger and batch
//!   size settings, any librdkafka property passed through `[sink.properties]` or `[sink.kafka.properties]` (TLS, SASL).
//! - Key `{account}/{conversation}` (rendered by the bridge) keeps a conversation in one
//!   partition, in order; headers `event`, `account_id`, `received_at` (Unix ms).
//! - A record is delivered on its delivery report; failed deliveries are retried (counted),
//!   permanent errors rejected (counted).
//! - Optional topic creation through the admin API (`[sink.create_topics]`).

mod config;
pub mod sink;

pub use config::{
    Brokers, Compression, CreateTopics, KafkaConfig, DEFAULT_KEY, DEFAULT_TOPIC, SINGLE_TOPIC,
};
pub use sink::{cloudevents_headers, kafka_headers, KafkaSink};
