//! `kind = "mqtt"`: publishes records to an MQTT 3.1.1 or MQTT 5 broker with rumqttc.
//!
//! - QoS 0/1/2 (default 1); a record is delivered when the broker acknowledged *that* publish
//!   (PUBACK / PUBCOMP), tracked by packet id (see `tracker`, a sans-I/O state machine;
//!   `wire` is the only code touching rumqttc's internals).
//! - MQTT 5 (`protocol = "5"`): metadata as user properties, content type, message expiry,
//!   PUBACK / PUBREC reason codes honoured (see `v5`).
//! - Persistent session (`clean_session = false`), reconnect with capped, jittered back-off;
//!   publishes lost with a forgotten session are sent again.
//! - Retain by event pattern (default `presence.update`), birth `online` / will `offline`
//!   retained on `voxsig/bridge/<instance>/status`.
//! - TLS through rustls with certificate verification always on.

mod config;
pub mod sink;
mod tls;
mod tracker;
mod v5;
mod wire;

pub use config::{
    MessageExpiry, MqttConfig, Protocol, StatusConfig, TlsConfig, DEFAULT_CLIENT_ID,
    DEFAULT_STATUS_TOPIC, DEFAULT_TOPIC,
};
pub use sink::MqttSink;
