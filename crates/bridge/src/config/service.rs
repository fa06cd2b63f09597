//! The small operational sections: `[dedup]`, `[shutdown]`, `[metrics]` and `[runtime]`.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

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
            max_entries: 50_000,
        }
    }
}

impl DedupConfig {
    /// A remembered broadcast needs room.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.max_entries == 0 {
            return Err(ConfigError::new("dedup.max_entries", "must be at least 1"));
        }
        Ok(())
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

impl MetricsConfig {
    /// `ready_fraction` is a fraction.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.ready_fraction) {
            return Err(ConfigError::new(
                "metrics.ready_fraction",
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}

/// The async runtime that runs the sockets, the router and the sink.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads; absent: one per CPU the process may use (tokio's default, which also
    /// honours `TOKIO_WORKER_THREADS`). One thread caps the bridge at one core; measured against
    /// two it used 0.86-0.96 of the CPU per event at full rate and the same at 5,000 events/s
    /// (docs/BENCHMARKS.md, "Worker threads"), so the default stays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// How long the worker waits, once it has handled what was ready, before it looks at the
    /// sockets again (`crate::linger`): at low and moderate rates one wake-up then serves
    /// every event of the period instead of one each, for at most about this much added
    /// latency. Zero (the default): every frame is handled as it comes. Needs one worker
    /// (`worker_threads` absent or 1; absent means 1 here); at most [`Self::MAX_LINGER`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Duration::is_zero")]
    pub linger: Duration,
}

impl RuntimeConfig {
    /// The most worker threads accepted: far more than a bridge can use, low enough that a
    /// typo (an extra zero or two) is refused rather than spawning thousands of threads.
    pub const MAX_WORKER_THREADS: usize = 256;
    /// The longest `linger`: every event may wait this much longer, so more is a mistake.
    pub const MAX_LINGER: Duration = Duration::from_millis(10);

    /// At least one worker, at most [`Self::MAX_WORKER_THREADS`]; `linger` at most
    /// [`Self::MAX_LINGER`], and only with one worker.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.linger > Self::MAX_LINGER {
            return Err(ConfigError::new(
                "runtime.linger",
                format!(
                    "must be at most {} (every event may wait that much longer)",
                    humantime::format_duration(Self::MAX_LINGER)
                ),
            ));
        }
        if !self.linger.is_zero() && self.worker_threads.is_some_and(|n| n > 1) {
            return Err(ConfigError::new(
                "runtime.linger",
                "needs runtime.worker_threads = 1 (a second worker would be woken for every frame while the first one lingers)",
            ));
        }
        match self.worker_threads {
            Some(0) => Err(ConfigError::new(
                "runtime.worker_threads",
                "must be at least 1",
            )),
            Some(n) if n > Self::MAX_WORKER_THREADS => Err(ConfigError::new(
                "runtime.worker_threads",
                format!("must be at most {}", Self::MAX_WORKER_THREADS),
            )),
            _ => Ok(()),
        }
    }

    /// A multi-threaded runtime builder with every driver enabled, this many workers (one when
    /// lingering), lingering as configured.
    pub fn builder(&self) -> tokio::runtime::Builder {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        let workers = match self.worker_threads {
            None if !self.linger.is_zero() => Some(1),
            n => n,
        };
        if let Some(n) = workers {
            builder.worker_threads(n);
        }
        crate::linger::install(&mut builder, self.linger);
        builder
    }
}
