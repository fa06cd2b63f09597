//! Configuration: a TOML file, environment overrides, and validation with messages that name the
//! key and the problem.
//!
//! Environment variables `VOXSIG_BRIDGE_<SECTION>__<KEY>` override the file, e.g.
//! `VOXSIG_BRIDGE_SOURCE__PRESENCE_INTERVAL=20s` or `VOXSIG_BRIDGE_SINK__URL=mqtt://broker:1883`.
//! Only known sections are read from the environment, so a token kept in
//! `VOXSIG_BRIDGE_TOKEN_ACME` for `pubsub_token_env` does not confuse the loader.

use crate::catchup::rest::ApiToken;
pub use crate::catchup::CatchupConfig;
use crate::route::{EventFilter, PayloadMode, Template};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use voxsig_protocol::backoff::{Backoff, Jitter};
use voxsig_protocol::{PubsubToken, RoomIdentifier};
use voxsig_sinks::{BufferConfig, BufferKind, SinkConfig};

/// The disk buffer's directory under `[state] dir` when `buffer.dir` is not set.
pub const BUFFER_SUBDIR: &str = "buffer";

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "VOXSIG_BRIDGE_";

/// Top-level sections that may be overridden from the environment.
const SECTIONS: &[&str] = &[
    "source",
    "accounts_file",
    "route",
    "dedup",
    "sink",
    "buffer",
    "shutdown",
    "metrics",
    "shard",
    "state",
    "catchup",
];

/// The whole configuration, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the events come from.
    #[serde(default)]
    pub source: SourceConfig,
    /// The subscriptions.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// A further TOML (or JSON) file with an `accounts` list, for fleets too big for this file.
    #[serde(default)]
    pub accounts_file: Option<PathBuf>,
    /// How events become records.
    #[serde(default)]
    pub route: RouteConfig,
    /// Suppression of one broadcast received by several subscriptions.
    #[serde(default)]
    pub dedup: DedupConfig,
    /// Where records go (`kind = "mqtt" | "kafka" | "stdout" | "file"`); stdout when absent.
    #[serde(default)]
    pub sink: Option<SinkConfig>,
    /// The bounded buffer between the sockets and the sink.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The HTTP listener for metrics, health and status.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Which share of the accounts this replica serves, when several split them.
    #[serde(default)]
    pub shard: ShardConfig,
    /// The bridge's data directory (catch-up checkpoints, the disk buffer).
    #[serde(default)]
    pub state: StateConfig,
    /// Filling gaps from the platform's REST API.
    #[serde(default)]
    pub catchup: CatchupConfig,
}

/// Where the bridge keeps what must survive a restart: catch-up checkpoints and, with
/// `[buffer] kind = "disk"`, the buffer's segments (under `<dir>/buffer` by default). Without a
/// `dir` nothing is kept across restarts.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The data directory; created when missing.
    pub dir: Option<PathBuf>,
}

/// Splits the accounts between replicas: this one keeps the entries whose account hashes to
/// `index` modulo `count`. Every entry of one account lands on the same replica, so dedup
/// across an account's tokens keeps working. Kubernetes sets `index` from the pod ordinal.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardConfig {
    /// This replica's share, `0..count`.
    pub index: u32,
    /// How many replicas split the accounts.
    pub count: u32,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig { index: 0, count: 1 }
    }
}

impl ShardConfig {
    /// Whether this replica serves `account_id`.
    pub fn owns(&self, account_id: u64) -> bool {
        self.count <= 1
            || xxhash_rust::xxh3::xxh3_64(&account_id.to_le_bytes()) % u64::from(self.count)
                == u64::from(self.index)
    }
}

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

    /// The REST API's base URL: `api_url`, else the platform's origin.
    pub fn api_base(&self) -> String {
        self.api_url
            .clone()
            .unwrap_or_else(|| self.platform_origin())
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            url: "wss://app.voxsig.com/cable".into(),
            origin: None,
            presence_interval: Duration::from_secs(30),
            stale_after: Duration::from_secs(6),
            confirm_timeout: Duration::from_secs(10),
            reconnect: ReconnectConfig::default(),
            subscriptions_per_connection: 50,
            connect_rate: 20.0,
            max_frame_bytes: 4 * 1024 * 1024,
            read_buffer_bytes: 16 * 1024,
            tcp_nodelay: true,
            ca_file: None,
            api_url: None,
            presence: Presence::On,
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
    pub jitter: JitterConfig,
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
            jitter: JitterConfig::Full,
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
            jitter: self.jitter.into(),
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

/// Jitter, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JitterConfig {
    /// Uniform in `[0, delay]`.
    Full,
    /// Uniform in `[delay/2, delay]`.
    Equal,
    /// No jitter.
    None,
}

impl From<JitterConfig> for Jitter {
    fn from(j: JitterConfig) -> Jitter {
        match j {
            JitterConfig::Full => Jitter::Full,
            JitterConfig::Equal => Jitter::Equal,
            JitterConfig::None => Jitter::None,
        }
    }
}

/// Which account an entry subscribes for: one id, or `"all"` (every account of the API
/// token's profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountSelector {
    /// One account.
    Id(u64),
    /// Every account in the profile (needs an API access token).
    All,
}

impl Serialize for AccountSelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AccountSelector::Id(id) => s.serialize_u64(*id),
            AccountSelector::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for AccountSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AccountSelector;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an account id or \"all\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(AccountSelector::Id(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(AccountSelector::Id)
                    .map_err(|_| E::custom("an account id is not negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "all" => Ok(AccountSelector::All),
                    // Environment overrides arrive as strings.
                    _ => v
                        .parse()
                        .map(AccountSelector::Id)
                        .map_err(|_| E::custom("expected an account id or \"all\"")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One subscription: a user token (with `user_id`) or a contact token (without). With an
/// `api_access_token`, the pubsub token and user id may be left out (read from the profile).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The account, or `"all"`; a contact entry may leave it out.
    #[serde(default)]
    pub account_id: Option<AccountSelector>,
    /// The user, for a user (agent/admin) token; absent for a contact token.
    #[serde(default)]
    pub user_id: Option<u64>,
    /// The token itself.
    #[serde(default, serialize_with = "redact")]
    pub pubsub_token: Option<String>,
    /// The environment variable holding the token.
    #[serde(default)]
    pub pubsub_token_env: Option<String>,
    /// The file holding the token (surrounding white space trimmed).
    #[serde(default)]
    pub pubsub_token_file: Option<PathBuf>,
    /// The user's REST API access token (profile discovery, catch-up, rotation).
    #[serde(default, serialize_with = "redact")]
    pub api_access_token: Option<String>,
    /// The environment variable holding the API access token.
    #[serde(default)]
    pub api_access_token_env: Option<String>,
    /// The file holding the API access token (surrounding white space trimmed).
    #[serde(default)]
    pub api_access_token_file: Option<PathBuf>,
    /// Free-form labels, usable in topic templates as `{label.NAME}`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for AccountConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountConfig")
            .field("account_id", &self.account_id)
            .field("user_id", &self.user_id)
            .field(
                "pubsub_token",
                &self.pubsub_token.as_ref().map(|_| "<redacted>"),
            )
            .field("pubsub_token_env", &self.pubsub_token_env)
            .field("pubsub_token_file", &self.pubsub_token_file)
            .field(
                "api_access_token",
                &self.api_access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("api_access_token_env", &self.api_access_token_env)
            .field("api_access_token_file", &self.api_access_token_file)
            .field("labels", &self.labels)
            .finish()
    }
}

fn redact<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(token) => s.serialize_str(&PubsubToken::new(token.as_str()).redacted()),
        None => s.serialize_none(),
    }
}

/// How events become records.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Topic template; defaults to the sink's (`voxsig/{account}/{event}` for MQTT,
    /// `voxsig.{account}.{event}` for Kafka). Variables: `{account}`, `{event}`, `{user}`,
    /// `{conversation}`, `{inbox}`, `{label.NAME}`.
    pub topic: Option<String>,
    /// Key template (Kafka partitioning), default `{account}/{conversation}`.
    pub key: String,
    /// Only events matching one of these patterns (`*` matches any run), when not empty.
    pub include: Vec<String>,
    /// Never events matching one of these patterns.
    pub exclude: Vec<String>,
    /// `raw` (the event's `data`, byte-identical), `envelope`
    /// (`{"event","account_id","received_at","data"}`) or `cloudevents` (CloudEvents 1.0 in
    /// the sink's binding mode).
    pub payload: PayloadMode,
    /// With `payload = "cloudevents"`: the prefix of the `type` attribute
    /// (`com.voxsig.message.created`). Default `com.voxsig.`.
    pub cloudevents_type_prefix: String,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            topic: None,
            key: "{account}/{conversation}".into(),
            include: Vec::new(),
            exclude: Vec::new(),
            payload: PayloadMode::Raw,
            cloudevents_type_prefix: voxsig_sinks::cloudevents::DEFAULT_TYPE_PREFIX.into(),
        }
    }
}

/// One broadcast received by several subscriptions is published once.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// On by default.
    pub enabled: bool,
    /// How far apart two copies may arrive and still be one broadcast.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Memory bound: the most broadcasts remembered at once (the oldest are forgotten first).
    pub max_entries: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled: true,
            window: Duration::from_secs(2),
            max_entries: 200_000,
        }
    }
}

/// Shutdown behaviour.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long the sink gets to deliver what is buffered after a SIGINT/SIGTERM.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Duration::from_secs(15),
        }
    }
}

/// The HTTP listener for `/metrics`, `/healthz`, `/readyz` and `/status`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address; `--metrics-addr` overrides it.
    pub listen: SocketAddr,
    /// Whether metrics carry an `account` label (capped by `max_accounts`; above it the
    /// per-account series are aggregated under `account="other"`).
    pub per_account_labels: bool,
    /// The cap on distinct `account` label values.
    pub max_accounts: usize,
    /// `/readyz` needs at least this fraction of subscriptions confirmed.
    pub ready_fraction: f64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9898)),
            per_account_labels: false,
            max_accounts: 100,
            ready_fraction: 0.5,
        }
    }
}

/// A configuration problem: which key, what is wrong. Never contains a secret.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The key, e.g. `source.url` or `accounts[3].pubsub_token_env`.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The sinks' validation errors already name the full key (`sink.qos`, `buffer.max_bytes`).
    fn from_sinks(e: voxsig_sinks::ConfigError) -> Self {
        ConfigError::new(e.key(), e.message())
    }
}

/// A configured subscription with its token resolved.
#[derive(Debug, Clone)]
pub struct Account {
    /// The configured account.
    pub account_id: u64,
    /// The user, for user tokens.
    pub user_id: Option<u64>,
    /// The token.
    pub token: PubsubToken,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The user's API access token, when the entry has one.
    pub api_token: Option<ApiToken>,
    /// The entry it came from (`accounts[2]`), for messages.
    pub entry: String,
}

/// An entry whose pubsub token, user or accounts come from the profile (`GET /api/v1/profile`)
/// at start.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The entry (`accounts[2]`), for messages.
    pub entry: String,
    /// One account or all of the profile's.
    pub accounts: AccountSelector,
    /// The user, if configured (else the profile's).
    pub user_id: Option<u64>,
    /// The pubsub token, if configured (else the profile's).
    pub token: Option<PubsubToken>,
    /// The API access token.
    pub api_token: ApiToken,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl Account {
    /// The RoomChannel identifier of this subscription.
    pub fn identifier(&self) -> RoomIdentifier {
        match self.user_id {
            Some(user) => RoomIdentifier::user(self.token.clone(), self.account_id, user),
            None => RoomIdentifier::contact(self.token.clone()),
        }
    }
}

/// A validated configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration as loaded.
    pub config: Config,
    /// Every subscription, tokens resolved.
    pub accounts: Vec<Account>,
    /// Entries resolved from the profile at start (see [`crate::catchup::profile::discover`]).
    pub discover: Vec<Discovery>,
    /// The parsed topic template.
    pub topic: Template,
    /// The parsed key template.
    pub key: Template,
    /// The event filter.
    pub filter: EventFilter,
    /// The sink (stdout when the config has none).
    pub sink: SinkConfig,
}

impl Config {
    /// With `[route] payload = "cloudevents"`: how records' CloudEvents attributes are made.
    pub fn cloudevents(&self) -> Option<voxsig_sinks::cloudevents::CloudEvents> {
        (self.route.payload == PayloadMode::CloudEvents).then(|| {
            voxsig_sinks::cloudevents::CloudEvents::new(
                self.route.cloudevents_type_prefix.clone(),
                self.source.platform_origin(),
            )
        })
    }

    /// Loads a config file (TOML) with environment overrides, without validating it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::figment(Some(path)).extract().map_err(figment_error)
    }

    /// The default configuration with environment overrides.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::figment(None).extract().map_err(figment_error)
    }

    /// Parses TOML text (with environment overrides), for tests and embedded defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Figment::new()
            .merge(Toml::string(text))
            .merge(env())
            .extract()
            .map_err(figment_error)
    }

    fn figment(path: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        if let Some(path) = path {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(env())
    }

    /// Checks everything and resolves tokens and the accounts file.
    pub fn validate(mut self) -> Result<Settings, ConfigError> {
        self.validate_source()?;
        let sink = match &self.sink {
            Some(sink) => sink.clone(),
            None => serde_json::from_str(r#"{"kind":"stdout"}"#)
                .map_err(|e| ConfigError::new("sink", e.to_string()))?,
        };
        sink.validate().map_err(ConfigError::from_sinks)?;
        self.buffer.validate().map_err(ConfigError::from_sinks)?;
        if self.buffer.kind == BufferKind::Disk && self.buffer.dir.is_none() {
            let Some(state) = &self.state.dir else {
                return Err(ConfigError::new(
                    "buffer.dir",
                    "required with kind = \"disk\" when [state] dir is not set",
                ));
            };
            self.buffer.dir = Some(state.join(BUFFER_SUBDIR));
        }
        if self.dedup.enabled && self.dedup.max_entries == 0 {
            return Err(ConfigError::new("dedup.max_entries", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.metrics.ready_fraction) {
            return Err(ConfigError::new(
                "metrics.ready_fraction",
                "must be between 0 and 1",
            ));
        }
        // The topic template may be set as route.topic or, sink-style, as sink.topic: not both.
        let topic_text = match (&self.route.topic, sink.topic_template()) {
            (Some(route), from_sink)
                if from_sink != sink.default_topic_template() && from_sink != route =>
            {
                return Err(ConfigError::new(
                    "route.topic",
                    "conflicts with sink.topic: set the topic template in one place",
                ))
            }
            (Some(route), _) => route.clone(),
            (None, from_sink) => from_sink.to_owned(),
        };
        let topic = Template::parse(&topic_text)
            .map_err(|e| ConfigError::new("route.topic", e.to_string()))?;
        let sample = topic.sample();
        sink.check_topic(&sample).map_err(|e| {
            ConfigError::new(
                "route.topic",
                format!("renders topics like `{sample}`: {e}"),
            )
        })?;
        let key_text = if self.route.key == RouteConfig::default().key {
            sink.key_template().to_owned()
        } else {
            self.route.key.clone()
        };
        let key =
            Template::parse(&key_text).map_err(|e| ConfigError::new("route.key", e.to_string()))?;
        let filter = EventFilter::new(&self.route.include, &self.route.exclude)
            .map_err(|(key, problem)| ConfigError::new(format!("route.{key}"), problem))?;

        let mut entries: Vec<(String, AccountConfig)> = self
            .accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("accounts[{i}]"), a.clone()))
            .collect();
        if let Some(file) = &self.accounts_file {
            entries.extend(load_accounts_file(file)?);
        }
        if self.shard.count == 0 || self.shard.index >= self.shard.count {
            return Err(ConfigError::new(
                "shard.index",
                format!(
                    "must be below shard.count ({}), which must be at least 1",
                    self.shard.count
                ),
            ));
        }
        self.catchup.validate()?;
        if entries.is_empty() {
            return Err(ConfigError::new(
                "accounts",
                "no accounts configured: add [[accounts]] tables or set accounts_file",
            ));
        }
        let mut accounts = Vec::with_capacity(entries.len());
        let mut discover = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (key, entry) in entries {
            let api_token = resolve_api_token(&key, &entry)?.map(ApiToken::new);
            let has_pubsub = entry.pubsub_token.is_some()
                || entry.pubsub_token_env.is_some()
                || entry.pubsub_token_file.is_some();
            let selector = entry.account_id;
            let needs_profile = !has_pubsub
                || selector == Some(AccountSelector::All)
                || (entry.user_id.is_none() && api_token.is_some());
            if needs_profile {
                let Some(api_token) = api_token else {
                    return Err(ConfigError::new(
                        key,
                        if selector == Some(AccountSelector::All) {
                            "account_id = \"all\" needs an api_access_token (the accounts come from the profile)"
                        } else {
                            "set exactly one of pubsub_token, pubsub_token_env, pubsub_token_file (or an api_access_token to read it from the profile)"
                        },
                    ));
                };
                let token = if has_pubsub {
                    Some(PubsubToken::new(resolve_token(&key, &entry)?))
                } else {
                    None
                };
                discover.push(Discovery {
                    entry: key,
                    accounts: selector.unwrap_or(AccountSelector::All),
                    user_id: entry.user_id,
                    token,
                    api_token,
                    labels: entry.labels,
                });
                continue;
            }
            let account_id = match selector {
                Some(AccountSelector::Id(id)) => id,
                // A contact token's identifier has no account; events name theirs.
                None if entry.user_id.is_none() => 0,
                _ => {
                    return Err(ConfigError::new(
                        format!("{key}.account_id"),
                        "is required for a user entry",
                    ))
                }
            };
            let token = resolve_token(&key, &entry)?;
            if let Some(first) = seen.insert(token.clone(), key.clone()) {
                return Err(ConfigError::new(
                    key,
                    format!("uses the same pubsub token as {first}; each token may appear once"),
                ));
            }
            if !self.shard.owns(account_id) {
                continue;
            }
            accounts.push(Account {
                account_id,
                user_id: entry.user_id,
                token: PubsubToken::new(token),
                labels: entry.labels,
                api_token,
                entry: key,
            });
        }
        Ok(Settings {
            config: self,
            accounts,
            discover,
            topic,
            key,
            filter,
            sink,
        })
    }

    fn validate_source(&self) -> Result<(), ConfigError> {
        let s = &self.source;
        let scheme = s.url.split("://").next().unwrap_or("");
        if !matches!(scheme, "ws" | "wss") || !s.url.contains("://") {
            return Err(ConfigError::new(
                "source.url",
                "must start with ws:// or wss://",
            ));
        }
        tokio_tungstenite::tungstenite::http::Uri::try_from(s.url.as_str())
            .map_err(|e| ConfigError::new("source.url", format!("is not a valid URL: {e}")))?;
        let checks: [(&str, bool, &str); 8] = [
            (
                "source.presence_interval",
                s.presence_interval >= Duration::from_secs(1),
                "must be at least 1s",
            ),
            (
                "source.stale_after",
                s.stale_after >= Duration::from_millis(100),
                "must be at least 100ms",
            ),
            (
                "source.confirm_timeout",
                s.confirm_timeout >= Duration::from_millis(100),
                "must be at least 100ms",
            ),
            (
                "source.subscriptions_per_connection",
                (1..=1000).contains(&s.subscriptions_per_connection),
                "must be between 1 and 1000",
            ),
            (
                "source.connect_rate",
                s.connect_rate.is_finite() && s.connect_rate > 0.0,
                "must be a positive number of sockets per second",
            ),
            (
                "source.max_frame_bytes",
                s.max_frame_bytes >= 1024,
                "must be at least 1024",
            ),
            (
                "source.read_buffer_bytes",
                (1024..=16 * 1024 * 1024).contains(&s.read_buffer_bytes),
                "must be between 1024 and 16777216",
            ),
            (
                "source.reconnect.max",
                s.reconnect.initial <= s.reconnect.max && !s.reconnect.initial.is_zero(),
                "must be at least source.reconnect.initial, which must be above zero",
            ),
        ];
        for (key, ok, problem) in checks {
            if !ok {
                return Err(ConfigError::new(key, problem));
            }
        }
        if let Some(api) = &s.api_url {
            if !(api.starts_with("http://") || api.starts_with("https://"))
                || reqwest::Url::parse(api).is_err()
            {
                return Err(ConfigError::new(
                    "source.api_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if let Some(ca) = &s.ca_file {
            if !ca.is_file() {
                return Err(ConfigError::new(
                    "source.ca_file",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The configuration rendered as TOML with every secret redacted, for `check`.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.config.clone();
        // Show the accounts actually resolved (including the accounts file), tokens redacted.
        shown.accounts = self
            .accounts
            .iter()
            .map(|a| AccountConfig {
                account_id: Some(AccountSelector::Id(a.account_id)),
                user_id: a.user_id,
                pubsub_token: Some(a.token.expose().to_owned()),
                pubsub_token_env: None,
                pubsub_token_file: None,
                api_access_token: a.api_token.as_ref().map(|t| t.expose().to_owned()),
                api_access_token_env: None,
                api_access_token_file: None,
                labels: a.labels.clone(),
            })
            .chain(self.discover.iter().map(|d| AccountConfig {
                account_id: Some(d.accounts),
                user_id: d.user_id,
                pubsub_token: d.token.as_ref().map(|t| t.expose().to_owned()),
                pubsub_token_env: None,
                pubsub_token_file: None,
                api_access_token: Some(d.api_token.expose().to_owned()),
                api_access_token_env: None,
                api_access_token_file: None,
                labels: d.labels.clone(),
            }))
            .collect();
        // The accounts file's entries are listed above; naming the file as well would show them
        // twice. It is named in a comment instead.
        let from_file = shown.accounts_file.take();
        shown.route.topic = Some(self.topic.as_str().to_owned());
        shown.sink = Some(self.sink.clone());
        shown.route.key = self.key.as_str().to_owned();
        let mut out = String::new();
        if let Some(file) = from_file {
            out.push_str(&format!(
                "# accounts below include those of accounts_file = {}\n",
                file.display()
            ));
        }
        if self.config.sink.is_none() {
            out.push_str("# no [sink] in the config: events are written to stdout as JSON lines\n");
        }
        out.push_str(
            &toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n")),
        );
        out
    }
}

fn env() -> Env {
    Env::prefixed(ENV_PREFIX)
        // Decide on the key as written (`SOURCE__URL`): its first `__`-separated part.
        .filter(|key| {
            let section = key.as_str().split("__").next().unwrap_or("");
            SECTIONS
                .iter()
                .any(|known| known.eq_ignore_ascii_case(section))
        })
        .split("__")
}

/// Turns figment's error (which names the key and the file) into ours. The value found is
/// described by its type, never quoted: it may be a secret in the wrong key.
fn figment_error(e: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let key = if e.path.is_empty() {
        "config".to_owned()
    } else {
        e.path.join(".")
    };
    let mut problem = match &e.kind {
        Kind::InvalidType(actual, expected) => {
            format!(
                "invalid type: found {}, expected {expected}",
                kind_of(actual)
            )
        }
        Kind::InvalidValue(actual, expected) => {
            format!(
                "invalid value: found {}, expected {expected}",
                kind_of(actual)
            )
        }
        Kind::Unsupported(actual) => format!("unsupported type {}", kind_of(actual)),
        other => one_line(&scrub_values(&other.to_string())),
    };
    if let Some(source) = &e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        problem.push_str(&format!(" (in {source})"));
    }
    ConfigError::new(key, problem)
}

/// A parser's multi-line message on one line, without its source excerpt (the lines drawn with
/// `|`, which quote the offending line, secret or not): `TOML parse error at line 3, column 16:
/// invalid string`.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('|'))
        .collect::<Vec<_>>()
        .join(": ")
}

/// What a found value is, without the value.
fn kind_of(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        _ => "a value of another type",
    }
}

/// A parser's message with every quoted value (`"…"`, as serde quotes strings) replaced by
/// `"…"`: the value may be a secret in the wrong key.
pub(crate) fn scrub_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    // Inside backticks are names the parser expected (`"`, `mqtt`), not values found.
    let mut in_backticks = false;
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '`' {
            in_backticks = !in_backticks;
        } else if c == '"' && !in_backticks {
            out.push_str("…\"");
            let mut escaped = false;
            for c in chars.by_ref() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => break,
                    _ => escaped = false,
                }
            }
        }
    }
    out
}

fn load_accounts_file(path: &Path) -> Result<Vec<(String, AccountConfig)>, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        accounts: Vec<AccountConfig>,
    }
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("accounts_file", format!("cannot read {shown}: {e}")))?;
    // Parser messages quote the values they found (`invalid type: string "…"`): a token in
    // the wrong key would be printed, so quoted values are scrubbed.
    let file: File = if path.extension().is_some_and(|x| x == "json") {
        serde_json::from_str(&text).map_err(|e| {
            ConfigError::new(
                "accounts_file",
                format!("{shown}: {}", scrub_values(&e.to_string())),
            )
        })?
    } else {
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError::new(
                "accounts_file",
                format!("{shown}: {}{at}", scrub_values(e.message())),
            )
        })?
    };
    Ok(file
        .accounts
        .into_iter()
        .enumerate()
        .map(|(i, a)| (format!("{shown}: accounts[{i}]"), a))
        .collect())
}

/// The entry's API access token, if it has one (at most one of the three keys; trimmed).
fn resolve_api_token(key: &str, entry: &AccountConfig) -> Result<Option<String>, ConfigError> {
    let token =
        match (
            &entry.api_access_token,
            &entry.api_access_token_env,
            &entry.api_access_token_file,
        ) {
            (None, None, None) => return Ok(None),
            (Some(token), None, None) => token.clone(),
            (None, Some(var), None) => std::env::var(var).map_err(|_| {
                ConfigError::new(
                    format!("{key}.api_access_token_env"),
                    format!("environment variable {var} is not set (or not UTF-8)"),
                )
            })?,
            (None, None, Some(file)) => std::fs::read_to_string(file).map_err(|e| {
                ConfigError::new(
                    format!("{key}.api_access_token_file"),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?,
            _ => return Err(ConfigError::new(
                key,
                "set at most one of api_access_token, api_access_token_env, api_access_token_file",
            )),
        };
    let token = token.trim();
    if token.is_empty() {
        return Err(ConfigError::new(key, "the api access token is empty"));
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(ConfigError::new(
            key,
            "the api access token holds white space or control characters",
        ));
    }
    Ok(Some(token.to_owned()))
}

fn resolve_token(key: &str, entry: &AccountConfig) -> Result<String, ConfigError> {
    resolve_secret(
        key,
        "pubsub_token",
        entry.pubsub_token.as_deref(),
        entry.pubsub_token_env.as_deref(),
        entry.pubsub_token_file.as_deref(),
    )
}

/// Resolves a secret given as `<name>` (inline), `<name>_env` (an environment variable) or
/// `<name>_file` (a file) under `key` (e.g. `accounts[3]`): exactly one must be set. Both the
/// variable's and the file's value are trimmed (a Kubernetes Secret's trailing newline); an empty
/// or white-space-only value is an error. Errors name the key, never the value: a token pasted
/// into `<name>_env` or `<name>_file` is not echoed as a variable name or a path.
pub fn resolve_secret(
    key: &str,
    name: &str,
    inline: Option<&str>,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<String, ConfigError> {
    let value = match (inline, env, file) {
        (Some(value), None, None) => value.to_owned(),
        (None, Some(var), None) => std::env::var(var).map_err(|e| {
            let why = match e {
                std::env::VarError::NotPresent => "is not set",
                std::env::VarError::NotUnicode(_) => "is not UTF-8",
            };
            ConfigError::new(
                format!("{key}.{name}_env"),
                format!("the environment variable this key names {why}"),
            )
        })?,
        (None, None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                format!("{key}.{name}_file"),
                format!("cannot read the file this key names: {}", e.kind()),
            )
        })?,
        _ => {
            return Err(ConfigError::new(
                key,
                format!("set exactly one of {name}, {name}_env, {name}_file"),
            ))
        }
    };
    let trimmed = value.trim();
    if trimmed.is_empty() {
        let source = match (env, file) {
            (Some(_), _) => format!("{key}.{name}_env"),
            (_, Some(_)) => format!("{key}.{name}_file"),
            _ => format!("{key}.{name}"),
        };
        return Err(ConfigError::new(
            source,
            "the token is empty or only white space",
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests;
