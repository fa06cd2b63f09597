//! Shared test support for voxsig-bridge (a dev-dependency only; `publish = false`).
//!
//! Tests and benchmarks of every crate take what they need from here instead of including each
//! other's files:
//!
//! - [`brokers`]: real broker processes (mosquitto, tansu) on free loopback ports, each in its own
//!   directory and killed on drop; a throw-away PKI.
//! - [`mqtt`]: a rumqttc subscriber, a TCP proxy that cuts the sink off, and the brokers of the
//!   MQTT interop matrix (nats-server's MQTT listener, rumqttd).
//! - [`kafka`]: a consumer reading topics back from the beginning, a message's headers.
//! - [`records`]: record generators (realistic payloads over many topics and keys).
//! - [`rig`]: the simulator with a bridge in process between it and an in-memory sink, checked
//!   against the simulator's ground truth.
//! - [`process`]: the `voxsig-bridge` binary as a child process.
//! - [`hostile`]: a hand-written ActionCable server that sends whatever a test script likes.
//! - [`client`]: a plain WebSocket client and raw HTTP helpers for the simulator's own tests.
//! - [`wait`] and [`metrics`]: bounded polling; a metric read back from a registry or a scrape.
//!
//! A missing broker binary fails the test with a pointer to `scripts/install-brokers.sh`; tests
//! never pass silently without their broker, and never use the machine's services on their
//! standard ports.

pub mod brokers;
pub mod client;
pub mod config;
pub mod hostile;
pub mod kafka;
pub mod metrics;
pub mod mqtt;
pub mod process;
pub mod records;
pub mod rig;
pub mod sinks;
pub mod wait;

pub use metrics::{metric, total};
pub use wait::eventually;
