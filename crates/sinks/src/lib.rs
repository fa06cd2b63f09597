//! Sinks for voxsig-bridge: where records go.
//!
//! The bridge renders every event into a [`Record`] and pushes it into a bounded [`buffer`]; a
//! [`Sink`] takes records from the buffer, publishes them, and hands each back with
//! [`BufferReader::ack`] only once the broker acknowledged it. A record therefore counts against
//! the buffer's bounds from the moment the bridge accepted it until it is acknowledged, and
//! nothing accepted is lost while a broker is away (at-least-once).
//!
//! - [`mqtt`]: MQTT 3.1.1 or 5 via rumqttc; acknowledgement per packet id (PUBACK / PUBCOMP).
//! - [`cloudevents`]: CloudEvents 1.0 attributes and each sink's binding mode.
//! - [`kafka`]: Kafka via rdkafka; acknowledgement per delivery report.
//! - [`jsonl`]: stdout and file, one JSON object per line.
//! - [`topic`]: each sink's topic rules and the one template type; [`pem`]: certificate files.
//! - [`memory`]: an inspectable in-memory sink for tests.
//! - [`telemetry`]: metrics (registered into a caller-supplied registry) and log lines.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use voxsig_sinks::{buffer, spawn, BufferConfig, Headers, MemorySink, Record, SinkMetrics};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = prometheus::Registry::new();
//! let metrics = SinkMetrics::register(&registry).unwrap();
//! let (writer, reader) = buffer(BufferConfig::default(), metrics);
//!
//! // A real bridge builds the sink from its `[sink]` table: `SinkConfig::build(instance)`.
//! let (sink, delivered) = MemorySink::new();
//! let running = spawn(Box::new(sink), reader);
//!
//! writer
//!     .push(Record {
//!         topic: "voxsig/1/message.created".into(),
//!         key: Some("1/42".into()),
//!         payload: bytes::Bytes::from_static(br#"{"id":7}"#),
//!         headers: Headers {
//!             event: "message.created".into(),
//!             event_label: "message.created",
//!             account_id: Some(1),
//!             received_at_ms: 1_700_000_000_000,
//!             event_id: None,
//!             replayed: false,
//!         },
//!         accepted_at: Instant::now(),
//!     })
//!     .await
//!     .unwrap();
//!
//! // Shutdown: close the buffer, drain for up to the deadline, report the rest.
//! let report = running.shutdown(Duration::from_secs(5)).await;
//! assert_eq!((report.delivered, report.undelivered), (1, 0));
//! assert_eq!(delivered.len(), 1);
//! # }
//! ```

mod backoff;
pub mod buffer;
pub mod cloudevents;
mod config;
mod duration;
mod error;
mod health;
pub mod jsonl;
pub mod kafka;
pub mod memory;
pub mod mqtt;
pub mod pem;
mod record;
mod secret;
mod sink;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod topic;

pub use backoff::ReconnectConfig;
pub use buffer::{
    buffer, open as open_buffer, Acker, BufferClosed, BufferConfig, BufferError, BufferKind,
    BufferReader, BufferWriter, Claim, Fsync, Pushed, WhenFull,
};
pub use config::SinkConfig;
pub use error::{ConfigError, SinkError};
pub use health::{SinkHealth, SinkHealthWatch};
pub use jsonl::{FileConfig, JsonLinesSink, StdoutConfig};
pub use kafka::{KafkaConfig, KafkaSink};
pub use memory::{MemoryHandle, MemorySink};
pub use mqtt::{MqttConfig, MqttSink};
pub use record::{EventId, Headers, Record};
pub use secret::{Secret, SecretError, SecretValue};
pub use sink::{spawn, DrainReport, Sink, SinkHandle};
pub use telemetry::{CorruptKind, DropReason, SinkMetrics};
pub use topic::{TopicError, TopicRules};
