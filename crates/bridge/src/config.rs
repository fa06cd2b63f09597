//! Configuration: a TOML file, environment overrides, and validation with messages that name the
//! key and the problem.
//!
//! Environment variables `VOXSIG_BRIDGE_<SECTION>__<KEY>` override the file, e.g.
//! `VOXSIG_BRIDGE_SOURCE__PRESENCE_INTERVAL=20s` or `VOXSIG_BRIDGE_SINK__URL=mqtt://broker:1883`.
//! Only known sections are read from the environment, so a token kept in
//! `VOXSIG_BRIDGE_TOKEN_ACME` for `pubsub_token_env` does not confuse the loader.
//!
//! One module per concept: `source` (endpoint, session, back-off), `accounts` (entries and
//! their resolution), `secrets` (inline / env / file values), `route` (templates, filter),
//! `state` (data directory, disk buffer placement), `shard`, `service` (dedup, shutdown,
//! metrics), `settings` (the validated result) and `error`. The sink and buffer tables are
//! the sinks crate's (`voxsig_sinks::SinkConfig`, `BufferConfig`), which owns their rules.

mod accounts;
mod error;
mod route;
mod secrets;
mod service;
mod settings;
mod shard;
mod source;
mod state;

pub use crate::catchup::CatchupConfig;
pub use accounts::{Account, AccountConfig, AccountSelector, Discovery};
pub(crate) use error::first_failed;
pub use error::ConfigError;
pub use route::RouteConfig;
pub use secrets::resolve_secret;
pub use service::{DedupConfig, MetricsConfig, RuntimeConfig, ShutdownConfig};
pub use settings::Settings;
pub use shard::ShardConfig;
pub use source::{Presence, ReconnectConfig, SourceConfig};
pub use state::{StateConfig, BUFFER_SUBDIR};

use crate::route::PayloadMode;
use error::figment_error;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use voxsig_sinks::{BufferConfig, SinkConfig};

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
    "runtime",
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
    /// The async runtime (worker threads).
    #[serde(default)]
    pub runtime: RuntimeConfig,
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

    /// Checks everything and resolves tokens and the accounts file, section by section; the
    /// first problem found is the error.
    pub fn validate(mut self) -> Result<Settings, ConfigError> {
        self.source.validate()?;
        let sink = self.sink_or_stdout()?;
        state::resolve_buffer(&mut self.buffer, &self.state)?;
        self.dedup.validate()?;
        self.metrics.validate()?;
        let route = self.route.resolve(&sink)?;
        let entries = accounts::entries(&self.accounts, self.accounts_file.as_deref())?;
        self.shard.validate()?;
        self.catchup.validate()?;
        self.runtime.validate()?;
        let (accounts, discover) = accounts::resolve(entries, &self.shard)?;
        Ok(Settings {
            config: self,
            accounts,
            discover,
            topic: route.topic,
            key: route.key,
            filter: route.filter,
            sink,
        })
    }

    /// The configured sink, checked; stdout when there is none.
    fn sink_or_stdout(&self) -> Result<SinkConfig, ConfigError> {
        let sink = match &self.sink {
            Some(sink) => sink.clone(),
            None => SinkConfig::Stdout(voxsig_sinks::StdoutConfig::default()),
        };
        sink.validate().map_err(ConfigError::from_sinks)?;
        Ok(sink)
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

#[cfg(test)]
mod tests;
