//! voxsig-bridge: subscribes to many Voxsig accounts over ActionCable WebSockets and publishes
//! every event to MQTT, Kafka, stdout or a file, at least once.
//!
//! The data path: `connection` (one socket, N subscriptions, driving the sans-I/O
//! `voxsig_protocol::Session`) → [`route`] (filters, [`dedup`], topic/key/payload) → the bounded
//! buffer → a sink from `voxsig_sinks`. [`telemetry`] logs and counts every happening;
//! [`status`] holds the live state. [`runtime::Bridge`] ties it together; [`config`] loads and
//! validates what it runs with.

pub mod catchup;
pub mod config;
mod connection;
pub mod dedup;
pub mod demo;
pub mod http;
pub mod linger;
pub mod logging;
pub mod reconnect;
pub mod route;
pub mod runtime;
pub mod shutdown;
pub mod status;
pub mod tail;
pub mod telemetry;

pub use config::{Config, ConfigError, Settings};
pub use runtime::Bridge;
