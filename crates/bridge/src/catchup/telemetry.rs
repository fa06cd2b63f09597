//! What catch-up does, in one place: each happening owns its log line and its counters.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `voxsig_bridge_gaps_total` | counter | `cause` (`socket_dropped`, `stale`, `refused`, `token_rotated`, `restart`) |
//! | `voxsig_bridge_gap_seconds` | histogram | — |
//! | `voxsig_bridge_gaps_unrecovered_total` | counter | `reason` (`too_long`, `no_api_token`, `rest_failed`) |
//! | `voxsig_bridge_catchup_messages_total` | counter | `outcome` (`published`, `duplicate`) |
//! | `voxsig_bridge_live_duplicates_total` | counter | — (live messages already published by a catch-up) |
//! | `voxsig_bridge_token_rotations_total` | counter | — |
//! | `voxsig_bridge_rest_requests_total` | counter | `endpoint` (`profile`, `conversations`, `messages`), `result` |
//! | `voxsig_bridge_rest_request_seconds` | histogram | `endpoint` |

use super::gaps::{Gap, GapCause};
use super::rest::{Endpoint, RestError};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use std::sync::Arc;
use std::time::Duration;

/// Why a gap could not be filled. `as_str` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrecovered {
    /// Longer than `catchup.max_window`.
    TooLong,
    /// The account has no API access token (or catch-up is disabled).
    NoApiToken,
    /// The REST API kept failing.
    RestFailed,
}

impl Unrecovered {
    /// Every reason.
    pub const ALL: [Unrecovered; 3] = [
        Unrecovered::TooLong,
        Unrecovered::NoApiToken,
        Unrecovered::RestFailed,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Unrecovered::TooLong => "too_long",
            Unrecovered::NoApiToken => "no_api_token",
            Unrecovered::RestFailed => "rest_failed",
        }
    }
}

/// Catch-up's counters. Cheap to clone.
#[derive(Clone)]
pub struct CatchupMetrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CatchupMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatchupMetrics")
    }
}

struct Inner {
    gaps: IntCounterVec,
    gap_seconds: Histogram,
    unrecovered: IntCounterVec,
    /// `catchup_messages_total{outcome="published"}`, resolved once.
    published: IntCounter,
    /// `catchup_messages_total{outcome="duplicate"}`, resolved once.
    duplicates: IntCounter,
    live_duplicates: IntCounter,
    rotations: IntCounter,
    rest: IntCounterVec,
    rest_seconds: HistogramVec,
}

impl CatchupMetrics {
    /// Registers the metrics in `registry`, every label value pre-created at 0.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gaps = IntCounterVec::new(
            Opts::new(
                "voxsig_bridge_gaps_total",
                "Gaps in an account's live feed, by cause.",
            ),
            &["cause"],
        )?;
        let gap_seconds = Histogram::with_opts(
            HistogramOpts::new("voxsig_bridge_gap_seconds", "How long gaps lasted.").buckets(vec![
                0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 10800.0,
            ]),
        )?;
        let unrecovered = IntCounterVec::new(
            Opts::new(
                "voxsig_bridge_gaps_unrecovered_total",
                "Gaps whose events could not be recovered, by reason.",
            ),
            &["reason"],
        )?;
        let messages = IntCounterVec::new(
            Opts::new(
                "voxsig_bridge_catchup_messages_total",
                "Messages fetched by catch-up: published, or skipped as already published.",
            ),
            &["outcome"],
        )?;
        let live_duplicates = IntCounter::new(
            "voxsig_bridge_live_duplicates_total",
            "Live message.created events skipped because a catch-up already published them.",
        )?;
        let rotations = IntCounter::new(
            "voxsig_bridge_token_rotations_total",
            "Pubsub tokens found rotated in the profile and followed.",
        )?;
        let rest = IntCounterVec::new(
            Opts::new(
                "voxsig_bridge_rest_requests_total",
                "REST API requests, by endpoint and result.",
            ),
            &["endpoint", "result"],
        )?;
        let rest_seconds = HistogramVec::new(
            HistogramOpts::new(
                "voxsig_bridge_rest_request_seconds",
                "REST API request latency.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["endpoint"],
        )?;
        registry.register(Box::new(gaps.clone()))?;
        registry.register(Box::new(gap_seconds.clone()))?;
        registry.register(Box::new(unrecovered.clone()))?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(live_duplicates.clone()))?;
        registry.register(Box::new(rotations.clone()))?;
        registry.register(Box::new(rest.clone()))?;
        registry.register(Box::new(rest_seconds.clone()))?;
        for cause in GapCause::ALL {
            gaps.with_label_values(&[cause.as_str()]);
        }
        for reason in Unrecovered::ALL {
            unrecovered.with_label_values(&[reason.as_str()]);
        }
        let published = messages.with_label_values(&["published"]);
        let duplicates = messages.with_label_values(&["duplicate"]);
        for endpoint in Endpoint::ALL {
            rest_seconds.with_label_values(&[endpoint.as_str()]);
            for result in RestError::RESULTS {
                rest.with_label_values(&[endpoint.as_str(), result]);
            }
        }
        Ok(CatchupMetrics {
            inner: Arc::new(Inner {
                gaps,
                gap_seconds,
                unrecovered,
                published,
                duplicates,
                live_duplicates,
                rotations,
                rest,
                rest_seconds,
            }),
        })
    }
}

/// A happening: counts itself and logs itself.
pub trait Event {
    /// Records the happening.
    fn record(self, m: &CatchupMetrics);
}

/// Records `event` in `metrics`.
pub fn emit(metrics: &CatchupMetrics, event: impl Event) {
    event.record(metrics);
}

/// A gap opened (logged at debug; the closing line is the one an operator reads).
pub struct GapOpened {
    /// The account.
    pub account: u64,
    /// Why.
    pub cause: GapCause,
}

impl Event for GapOpened {
    fn record(self, _: &CatchupMetrics) {
        tracing::debug!(
            account = self.account,
            cause = self.cause.as_str(),
            "gap opened"
        );
    }
}

/// A gap closed: counted and timed once. Its log line comes with the outcome.
pub struct GapClosed<'a> {
    /// The gap.
    pub gap: &'a Gap,
}

impl Event for GapClosed<'_> {
    fn record(self, m: &CatchupMetrics) {
        m.inner
            .gaps
            .with_label_values(&[self.gap.cause.as_str()])
            .inc();
        m.inner
            .gap_seconds
            .observe(self.gap.duration_ms() as f64 / 1000.0);
    }
}

/// A gap's messages were recovered.
pub struct GapRecovered<'a> {
    /// The gap.
    pub gap: &'a Gap,
    /// Messages published.
    pub published: u64,
    /// Messages fetched that were already published.
    pub duplicates: u64,
    /// Conversations changed in the gap.
    pub conversations: usize,
    /// REST requests it took.
    pub requests: u64,
}

impl Event for GapRecovered<'_> {
    fn record(self, m: &CatchupMetrics) {
        m.inner.published.inc_by(self.published);
        m.inner.duplicates.inc_by(self.duplicates);
        tracing::info!(
            account = self.gap.account,
            cause = self.gap.cause.as_str(),
            gap_ms = self.gap.duration_ms(),
            recovered_messages = self.published,
            already_published = self.duplicates,
            conversations = self.conversations,
            requests = self.requests,
            "gap recovered"
        );
    }
}

/// A gap could not be filled.
pub struct GapUnrecovered<'a> {
    /// The gap.
    pub gap: &'a Gap,
    /// The account entry whose API token was used (`accounts[2]`), if any.
    pub entry: Option<&'a str>,
    /// Why.
    pub reason: Unrecovered,
    /// The last REST error, for `rest_failed`.
    pub error: Option<&'a RestError>,
    /// Messages published before it failed.
    pub published: u64,
}

impl Event for GapUnrecovered<'_> {
    fn record(self, m: &CatchupMetrics) {
        m.inner
            .unrecovered
            .with_label_values(&[self.reason.as_str()])
            .inc();
        m.inner.published.inc_by(self.published);
        tracing::warn!(
            account = self.gap.account,
            entry = self.entry,
            cause = self.gap.cause.as_str(),
            gap_ms = self.gap.duration_ms(),
            reason = self.reason.as_str(),
            error = self.error.map(ToString::to_string),
            recovered_messages = self.published,
            "gap NOT recovered: events of this account sent during the gap may be missing"
        );
    }
}

/// A live `message.created` was skipped: a catch-up had published it.
pub struct LiveDuplicate;

impl Event for LiveDuplicate {
    fn record(self, m: &CatchupMetrics) {
        m.inner.live_duplicates.inc();
    }
}

/// A pubsub token was found rotated and the subscription follows the new one.
pub struct TokenRotated<'a> {
    /// The account entry.
    pub account: u64,
    /// The old token, redacted.
    pub old: &'a str,
    /// The new token, redacted.
    pub new: &'a str,
}

impl Event for TokenRotated<'_> {
    fn record(self, m: &CatchupMetrics) {
        m.inner.rotations.inc();
        tracing::warn!(
            account = self.account,
            old = self.old,
            new = self.new,
            "pubsub token rotated on the platform: subscribing with the new one"
        );
    }
}

/// A profile fetch failed (rotation check or discovery).
pub struct ProfileFailed<'a> {
    /// The account entry, e.g. `accounts[2]`.
    pub entry: &'a str,
    /// Why.
    pub error: &'a RestError,
}

impl Event for ProfileFailed<'_> {
    fn record(self, _: &CatchupMetrics) {
        tracing::warn!(entry = self.entry, error = %self.error, "profile fetch failed");
    }
}

/// One REST request's outcome.
pub struct RestRequest<'a> {
    /// Where.
    pub endpoint: Endpoint,
    /// `Ok` or the error.
    pub result: Result<(), &'a RestError>,
    /// How long it took.
    pub took: Duration,
}

impl Event for RestRequest<'_> {
    fn record(self, m: &CatchupMetrics) {
        let result = match self.result {
            Ok(()) => "ok",
            Err(e) => e.as_str(),
        };
        m.inner
            .rest
            .with_label_values(&[self.endpoint.as_str(), result])
            .inc();
        m.inner
            .rest_seconds
            .with_label_values(&[self.endpoint.as_str()])
            .observe(self.took.as_secs_f64());
    }
}

/// A failed request will be retried.
pub struct RestRetry<'a> {
    /// Where.
    pub endpoint: Endpoint,
    /// Why.
    pub error: &'a RestError,
    /// Attempts so far.
    pub attempt: u32,
    /// The wait before the next.
    pub wait: Duration,
}

impl Event for RestRetry<'_> {
    fn record(self, _: &CatchupMetrics) {
        tracing::debug!(
            endpoint = self.endpoint.as_str(),
            error = %self.error,
            attempt = self.attempt,
            retry_in_ms = self.wait.as_millis() as u64,
            "REST request failed, retrying"
        );
    }
}
