//! `[source]`: the platform's WebSocket endpoint, the session's tunables (defaulting to the
//! protocol's own) and the sockets' reconnect back-off.

use super::{first_failed, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use voxsig_protocol::backoff::{Backoff, Jitter};
use voxsig_protocol::SessionConfig;

/// The platform's WebSocket endpoint and how to talk to it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `wss://host/cable` (or `ws://` for local tests).
    pub url: String,
    /// The `Origin` header; ActionCable refuses origins it does not allow. Defaults to the URL's
    /// own origin (`https://host` for `wss://host/cable`).
    pub origin: Option<String>,
    /// How often each subscription sends `update_presence` (seeds: 30 s; dashboard: 20 s).
    #[serde(with = "humantime_serde")]
    pub presence_interval: Duration,
    /// Silence after which a connection is considered dead (ActionCable's client: 6 s).
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// How long a subscription may go unanswered before it is reported and retried.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// Reconnect back-off.
    pub reconnect: ReconnectConfig,
    /// How many subscriptions share one socket.
    pub subscriptions_per_connection: usize,
    /// New sockets per second, across the whole process (avoids a thundering herd).
    pub connect_rate: f64,
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Each socket's WebSocket read buffer, in bytes. tungstenite fills it to capacity, so it is
    /// resident memory per socket (its own default, 128 KiB, made 135 KB per idle socket); a
    /// frame larger than the buffer still arrives whole (the buffer grows for it).
    pub read_buffer_bytes: usize,
    /// `TCP_NODELAY` on the WebSocket's TCP connection: what the bridge sends (subscribe,
    /// presence, pong) leaves at once instead of waiting behind Nagle's algorithm.
    pub tcp_nodelay: bool,
    /// Extra PEM CA certificates to trust for `wss://` besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The platform's REST API (profile, catch-up). Defaults to the `/cable` URL's origin
    /// (`https://host` for `wss://host/cable`).
    pub api_url: Option<String>,
    /// `on` (default): subscriptions send `update_presence`, as the platform's clients do;
    /// `off`: never (the bridge user then does not stay online for automatic assignment).
    pub presence: Presence,
}

/// Whether subscriptions announce presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Send `update_presence` after each confirm and every `presence_interval`.
    #[default]
    On,
    /// Never send it.
    Off,
}

impl SourceConfig {
    /// The platform's origin, `https://host` for `wss://host/cable` (`http://` for `ws://`):
    /// the base of CloudEvents `source` and the default of the REST API's base.
    pub fn platform_origin(&self) -> String {
        crate::runtime::origin_of(&self.url)
    }

    /// The session tunables of every connection: the configured ones over the protocol's
    /// defaults, with the jitter generator seeded by `seed`.
    pub fn session(&self, seed: u64) -> SessionConfig {
        SessionConfig {
            presence_interval: self.presence_interval,
            stale_after: self.stale_after,
            confirm_timeout: self.confirm_timeout,
            max_frame_bytes: self.max_frame_bytes,
            presence: self.presence == Presence::On,
            seed,
            ..SessionConfig::default()
        }
    }

    /// The REST API's base URL: `api_url`, else the platform's origin.
    pub fn api_base(&self) -> String {
        self.api_url
            .clone()
            .unwrap_or_else(|| self.platform_origin())
    }
}

impl SourceConfig {
    /// Checks the endpoint, the session's bounds, the REST API's URL and the CA file.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_url()?;
        self.validate_bounds()?;
        self.validate_api_url()?;
        self.validate_ca_file()
    }

    fn validate_url(&self) -> Result<(), ConfigError> {
        let scheme = self.url.split("://").next().unwrap_or("");
        if !matches!(scheme, "ws" | "wss") || !self.url.contains("://") {
            return Err(ConfigError::new(
                "source.url",
                "must start with ws:// or wss://",
            ));
        }
        tokio_tungstenite::tungstenite::http::Uri::try_from(self.url.as_str())
            .map_err(|e| ConfigError::new("source.url", format!("is not a valid URL: {e}")))?;
        Ok(())
    }

    fn validate_bounds(&self) -> Result<(), ConfigError> {
        let checks: [(&str, bool, &str); 8] = [
            (
                "source.presence_interval",
                self.presence_interval >= Duration::from_secs(1),
                "must be at least 1s",
            ),
            (
                "source.stale_after",
                self.stale_after >= Duration::from_millis(100),
                "must be at least 100ms",
            ),
            (
                "source.confirm_timeout",
                self.confirm_timeout >= Duration::from_millis(100),
                "must be at least 100ms",
            ),
            (
                "source.subscriptions_per_connection",
                (1..=1000).contains(&self.subscriptions_per_connection),
                "must be between 1 and 1000",
            ),
            (
                "source.connect_rate",
                self.connect_rate.is_finite() && self.connect_rate > 0.0,
                "must be a positive number of sockets per second",
            ),
            (
                "source.max_frame_bytes",
                self.max_frame_bytes >= 1024,
                "must be at least 1024",
            ),
            (
                "source.read_buffer_bytes",
                (1024..=16 * 1024 * 1024).contains(&self.read_buffer_bytes),
                "must be between 1024 and 16777216",
            ),
            (
                "source.reconnect.max",
                self.reconnect.backoff().validate().is_ok(),
                "must be at least source.reconnect.initial, which must be above zero",
            ),
        ];
        first_failed(checks)
    }

    fn validate_api_url(&self) -> Result<(), ConfigError> {
        let Some(api) = &self.api_url else {
            return Ok(());
        };
        if !(api.starts_with("http://") || api.starts_with("https://"))
            || reqwest::Url::parse(api).is_err()
        {
            return Err(ConfigError::new(
                "source.api_url",
                "must be an http:// or https:// URL",
            ));
        }
        Ok(())
    }

    fn validate_ca_file(&self) -> Result<(), ConfigError> {
        match &self.ca_file {
            Some(ca) if !ca.is_file() => Err(ConfigError::new(
                "source.ca_file",
                format!("{} is not a readable file", ca.display()),
            )),
            _ => Ok(()),
        }
    }
}

impl Default for SourceConfig {
    /// The session's tunables default to the protocol's own ([`SessionConfig::default`]).
    fn default() -> Self {
        let session = SessionConfig::default();
        SourceConfig {
            url: "wss://app.voxsig.com/cable".into(),
            origin: None,
            presence_interval: session.presence_interval,
            stale_after: session.stale_after,
            confirm_timeout: session.confirm_timeout,
            reconnect: ReconnectConfig::default(),
            subscriptions_per_connection: 50,
            connect_rate: 20.0,
            max_frame_bytes: session.max_frame_bytes,
            read_buffer_bytes: 16 * 1024,
            tcp_nodelay: true,
            ca_file: None,
            api_url: None,
            presence: if session.presence {
                Presence::On
            } else {
                Presence::Off
            },
        }
    }
}

/// Reconnect back-off: exponential from `initial` to `max` with jitter.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// First delay.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Cap.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// `full` (default), `equal` or `none`.
    pub jitter: Jitter,
    /// The wait after the server said `disconnect` with `reconnect: false` (e.g. unauthorized):
    /// long, so a refusing server is not hammered.
    #[serde(with = "humantime_serde")]
    pub after_refusal: Duration,
    /// A connection confirmed and free of frame errors this long was healthy: its loss resets
    /// the back-off and is followed by an immediate reconnect.
    #[serde(with = "humantime_serde")]
    pub healthy_after: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: Jitter::Full,
            after_refusal: Duration::from_secs(300),
            healthy_after: Duration::from_secs(30),
        }
    }
}

impl ReconnectConfig {
    /// As a back-off policy.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.initial,
            max: self.max,
            jitter: self.jitter,
        }
    }

    /// The reconnect policy of a connection task.
    pub fn policy(&self) -> crate::reconnect::ReconnectPolicy {
        crate::reconnect::ReconnectPolicy {
            backoff: self.backoff(),
            healthy_after: self.healthy_after,
        }
    }
}
