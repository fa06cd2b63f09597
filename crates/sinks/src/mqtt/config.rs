//! `kind = "mqtt"`: configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backoff::ReconnectConfig;
use crate::duration::duration_keys;
pub use crate::topic::DEFAULT_CLIENT_ID;
use crate::topic::{check_mqtt_topic, TopicRules, INSTANCE};
use crate::{ConfigError, Secret};

/// The default topic template of the MQTT sink.
pub const DEFAULT_TOPIC: &str = "voxsig/{account}/{event}";
/// The default birth / last-will topic; `{instance}` is the bridge's instance name.
pub const DEFAULT_STATUS_TOPIC: &str = "voxsig/bridge/{instance}/status";

/// The MQTT sink's configuration (`[sink]` with `kind = "mqtt"`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (8883, TLS). Required.
    pub url: String,
    /// Client id; `{instance}` is replaced. Default `voxsig-bridge-{instance}`. Keep it stable:
    /// the persistent session is keyed by it.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password: `"inline"`, `{ env = "VAR" }` or `{ file = "/path" }`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// QoS of event publishes: 0, 1 (default) or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Event names published with the retain flag; a trailing `*` matches a prefix
    /// (`conversation.*`), `*` alone matches all. Default `["presence.update"]`.
    #[serde(default = "default_retain")]
    pub retain: Vec<String>,
    /// Keep-alive interval, `keep_alive = "30s"` (or `keep_alive_secs = 30`); 0 disables.
    /// Default 30 s.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Start a fresh session on every connect. Default false: a persistent session, so the
    /// broker keeps QoS 1/2 state across reconnects.
    #[serde(default)]
    pub clean_session: bool,
    /// Publishes in flight (sent, not yet acknowledged), 1..=65535. Default 100.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Connection (TCP + TLS + CONNACK) timeout, `connect_timeout = "10s"` (or
    /// `connect_timeout_secs`). Default 10 s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// `TCP_NODELAY` on the broker connection: each batch of publishes leaves at once instead
    /// of waiting (Nagle's algorithm) for the broker to acknowledge earlier data. Default true.
    #[serde(default = "default_tcp_nodelay")]
    pub tcp_nodelay: bool,
    /// Largest MQTT packet sent, in bytes; larger records are rejected (counted). Default 1 MiB.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Reconnect back-off.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// Birth and last-will status messages.
    #[serde(default)]
    pub status: StatusConfig,
    /// TLS options for `mqtts://` (verification is always on).
    #[serde(default)]
    pub tls: TlsConfig,
    /// Topic template (the bridge renders it). Default `voxsig/{account}/{event}`.
    #[serde(default)]
    pub topic: Option<String>,
    /// MQTT protocol version: `"3.1.1"` (default) or `"5"`. With 5 every publish carries the
    /// record's metadata as user properties (`event`, `account_id`, `received_at`, `event_id`,
    /// `replayed`), content type `application/json` and payload format indicator 1, and a
    /// broker's PUBACK / PUBREC failure reason code rejects the record (counted).
    #[serde(default)]
    pub protocol: Protocol,
    /// MQTT 5: how long the broker keeps the session after the connection is lost,
    /// `session_expiry = "1h"` (or `session_expiry_secs`). Default 1 h. Ignored (0) with
    /// `clean_session = true`.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// MQTT 5: message expiry intervals by event pattern (first match wins), e.g.
    /// `[{ events = ["conversation.typing_*", "presence.update"], after = "60s" }]`.
    #[serde(default)]
    pub message_expiry: Vec<MessageExpiry>,
}

duration_keys!(
    MqttConfig,
    [
        "keep_alive" <- "keep_alive_secs" in Secs,
        "connect_timeout" <- "connect_timeout_secs" in Secs,
        "session_expiry" <- "session_expiry_secs" in Secs,
    ]
);

/// The MQTT protocol version of the sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[serde(rename = "5")]
    V5,
}

impl Protocol {
    /// `"3.1.1"` or `"5"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

/// An MQTT 5 message expiry interval for the events matching `events`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct MessageExpiry {
    /// Event names; a trailing `*` matches a prefix, `*` alone matches all.
    pub events: Vec<String>,
    /// How long the broker keeps the message for subscribers that have not received it yet
    /// (retained copies included), at least 1 s: `after = "60s"` (or `secs = 60`).
    pub secs: u32,
}

duration_keys!(MessageExpiry, ["after" <- "secs" in Secs]);

/// Birth (`online` on connect) and last will (`offline`), both retained, on one topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    /// Publish them at all. Default true.
    pub enabled: bool,
    /// The topic; `{instance}` is replaced. Default `voxsig/bridge/{instance}/status`.
    pub topic: String,
    /// Birth payload. Default `online`.
    pub online: String,
    /// Will (and clean shutdown) payload. Default `offline`.
    pub offline: String,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            enabled: true,
            topic: DEFAULT_STATUS_TOPIC.to_owned(),
            online: "online".to_owned(),
            offline: "offline".to_owned(),
        }
    }
}

/// TLS files for `mqtts://`. Without `ca_file` the system's trust store is used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificates to trust instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS); needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

fn default_qos() -> u8 {
    1
}
fn default_retain() -> Vec<String> {
    vec!["presence.update".to_owned()]
}
fn default_keep_alive() -> u64 {
    30
}
fn default_inflight() -> u16 {
    100
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_tcp_nodelay() -> bool {
    true
}
fn default_max_packet() -> usize {
    1024 * 1024
}
fn default_session_expiry() -> u32 {
    3600
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

pub(crate) fn parse_url(url: &str) -> Result<Endpoint, ConfigError> {
    let bad = |message: &str| ConfigError::new("sink.url", message.to_owned());
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(bad("must start with mqtt:// or mqtts://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL; use `username` and `password`",
        ));
    }
    if rest.contains('/') || rest.contains('?') {
        return Err(bad("must be scheme://host[:port] without a path or query"));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed '[' in IPv6 host"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad("unexpected text after the IPv6 host")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("port must be a number from 1 to 65535"))?,
        None => default_port,
    };
    Ok(Endpoint {
        host: host.to_owned(),
        port,
        tls,
    })
}

impl MqttConfig {
    /// A configuration with defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        MqttConfig {
            url: url.into(),
            client_id: None,
            username: None,
            password: None,
            qos: default_qos(),
            retain: default_retain(),
            keep_alive_secs: default_keep_alive(),
            clean_session: false,
            inflight: default_inflight(),
            connect_timeout_secs: default_connect_timeout(),
            tcp_nodelay: default_tcp_nodelay(),
            max_packet_bytes: default_max_packet(),
            reconnect: ReconnectConfig::default(),
            status: StatusConfig::default(),
            tls: TlsConfig::default(),
            topic: None,
            protocol: Protocol::default(),
            session_expiry_secs: default_session_expiry(),
            message_expiry: Vec::new(),
        }
    }

    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let endpoint = parse_url(&self.url)?;
        if self.qos > 2 {
            return Err(ConfigError::new("sink.qos", "must be 0, 1 or 2"));
        }
        if self.keep_alive_secs > u64::from(u16::MAX) {
            return Err(ConfigError::new(
                "sink.keep_alive_secs",
                "must be at most 65535",
            ));
        }
        if self.inflight == 0 {
            return Err(ConfigError::new("sink.inflight", "must be at least 1"));
        }
        if self.connect_timeout_secs == 0 {
            return Err(ConfigError::new(
                "sink.connect_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.max_packet_bytes < 1024 || self.max_packet_bytes > 268_435_455 {
            return Err(ConfigError::new(
                "sink.max_packet_bytes",
                "must be from 1024 to 268435455 (MQTT's limit)",
            ));
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 65_535 {
                return Err(ConfigError::new(
                    "sink.client_id",
                    "must be 1 to 65535 bytes",
                ));
            }
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(ConfigError::new(
                "sink.password",
                "MQTT 3.1.1 needs a username when a password is set",
            ));
        }
        check_patterns("sink.retain", &self.retain)?;
        if !self.message_expiry.is_empty() && self.protocol != Protocol::V5 {
            return Err(ConfigError::new(
                "sink.message_expiry",
                "needs protocol = \"5\" (MQTT 3.1.1 has no message expiry)",
            ));
        }
        for expiry in &self.message_expiry {
            check_patterns("sink.message_expiry.events", &expiry.events)?;
            if expiry.events.is_empty() {
                return Err(ConfigError::new(
                    "sink.message_expiry.events",
                    "names at least one event pattern",
                ));
            }
            if expiry.secs == 0 {
                return Err(ConfigError::new(
                    "sink.message_expiry.secs",
                    "must be at least 1",
                ));
            }
        }
        self.reconnect.validate()?;
        if self.status.enabled {
            check_mqtt_topic(&self.status.topic.replace(INSTANCE, "x"))
                .map_err(|e| ConfigError::new("sink.status.topic", e.to_string()))?;
        }
        if let Some(template) = &self.topic {
            TopicRules::Mqtt
                .parse_template(template)
                .map_err(|e| ConfigError::new("sink.topic", e.to_string()))?;
        }
        let tls_files = [
            &self.tls.ca_file,
            &self.tls.client_cert_file,
            &self.tls.client_key_file,
        ];
        if !endpoint.tls && tls_files.iter().any(|f| f.is_some()) {
            return Err(ConfigError::new(
                "sink.tls",
                "TLS files are set but the URL is mqtt://; use mqtts://",
            ));
        }
        if self.tls.client_cert_file.is_some() != self.tls.client_key_file.is_some() {
            return Err(ConfigError::new(
                "sink.tls.client_key_file",
                "client_cert_file and client_key_file go together",
            ));
        }
        Ok(())
    }
}

fn check_patterns(key: &'static str, patterns: &[String]) -> Result<(), ConfigError> {
    for pattern in patterns {
        let stem = pattern.strip_suffix('*').unwrap_or(pattern);
        if stem.contains('*') || pattern.is_empty() {
            return Err(ConfigError::new(
                key,
                format!("{pattern:?}: an event name, optionally ending in '*'"),
            ));
        }
    }
    Ok(())
}

/// A set of event patterns (exact names, or prefixes ending in `*`): which events are retained,
/// which expire.
#[derive(Debug, Clone)]
pub(crate) struct EventPatterns {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl EventPatterns {
    pub(crate) fn new(patterns: &[String]) -> Self {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for p in patterns {
            match p.strip_suffix('*') {
                Some(prefix) => prefixes.push(prefix.to_owned()),
                None => exact.push(p.clone()),
            }
        }
        EventPatterns { exact, prefixes }
    }

    pub(crate) fn retains(&self, event: &str) -> bool {
        self.exact.iter().any(|e| e == event) || self.prefixes.iter().any(|p| event.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = parse_url("mqtt://127.0.0.1").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 1883, false));
        let e = parse_url("mqtts://broker.example:8884/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("broker.example", 8884, true)
        );
        let e = parse_url("mqtt://[::1]:1884").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 1884));
        assert_eq!(e.to_string(), "mqtt://[::1]:1884");
        for bad in [
            "tcp://x",
            "mqtt://",
            "mqtt://u:p@host",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://h/p",
        ] {
            let err = parse_url(bad).unwrap_err();
            assert_eq!(err.key(), "sink.url", "{bad}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = MqttConfig::new("mqtt://127.0.0.1:1883");
        assert!(c.validate().is_ok());
        c.qos = 3;
        assert_eq!(c.validate().unwrap_err().key(), "sink.qos");
        c.qos = 1;
        c.topic = Some("voxsig/+/{event}".into());
        assert_eq!(c.validate().unwrap_err().key(), "sink.topic");
        c.topic = None;
        c.password = Some(Secret::inline("pw"));
        assert_eq!(c.validate().unwrap_err().key(), "sink.password");
        c.username = Some("u".into());
        c.retain = vec!["a*b".into()];
        assert_eq!(c.validate().unwrap_err().key(), "sink.retain");
        c.retain = vec![];
        c.message_expiry = vec![MessageExpiry {
            events: vec!["conversation.typing_*".into()],
            secs: 60,
        }];
        assert_eq!(c.validate().unwrap_err().key(), "sink.message_expiry");
        c.protocol = Protocol::V5;
        assert!(c.validate().is_ok());
        c.message_expiry[0].secs = 0;
        assert_eq!(c.validate().unwrap_err().key(), "sink.message_expiry.secs");
        c.message_expiry[0].secs = 1;
        c.message_expiry[0].events = vec!["*x".into()];
        assert_eq!(
            c.validate().unwrap_err().key(),
            "sink.message_expiry.events"
        );
    }

    #[test]
    fn protocol_is_spelt_as_in_the_spec() {
        let c: MqttConfig = serde_json::from_str(r#"{"url":"mqtt://a","protocol":"5"}"#).unwrap();
        assert_eq!(c.protocol, Protocol::V5);
        let c: MqttConfig = serde_json::from_str(r#"{"url":"mqtt://a"}"#).unwrap();
        assert_eq!(c.protocol, Protocol::V311);
        assert!(
            serde_json::from_str::<MqttConfig>(r#"{"url":"mqtt://a","protocol":"4"}"#).is_err()
        );
    }

    #[test]
    fn tcp_nodelay_is_on_unless_turned_off() {
        let c: MqttConfig = serde_json::from_str(r#"{"url":"mqtt://a"}"#).unwrap();
        assert!(c.tcp_nodelay);
        assert!(MqttConfig::new("mqtt://a").tcp_nodelay);
        let c: MqttConfig =
            serde_json::from_str(r#"{"url":"mqtt://a","tcp_nodelay":false}"#).unwrap();
        assert!(!c.tcp_nodelay);
    }

    #[test]
    fn retain_patterns() {
        let m = EventPatterns::new(&["presence.update".into(), "conversation.*".into()]);
        assert!(m.retains("presence.update"));
        assert!(m.retains("conversation.created"));
        assert!(!m.retains("message.created"));
        assert!(EventPatterns::new(&["*".into()]).retains("anything"));
    }
}
