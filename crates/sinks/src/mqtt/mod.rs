//! `kind = "mqtt"`: publishes records to an MQTT 3.1.1 broker with rumqttc.
//!
//! - QoS 0/1/2 (default 1); a record is delivered when the broker acknowledged *that* publish
//!   (PUBACK / PUBCOMP), tracked by packet id (see [`sink`]).
//! - Persistent session (`clean_session = false`), reconnect with capped, jittered back-off;
//!   publishes lost with a forgotten session are sent again.
//! - Retain by event pattern (default `presence.update`), birth `online` / will `offline`
//!   retained on `voxsig/bridge/<instance>/status`.
//! - TLS through rustls with certificate verification always on.

mod config;
pub mod sink;
mod tls;

pub use config::{
    MqttConfig, StatusConfig, TlsConfig, DEFAULT_CLIENT_ID, DEFAULT_STATUS_TOPIC, DEFAULT_TOPIC,
};
pub use sink::MqttSink;
