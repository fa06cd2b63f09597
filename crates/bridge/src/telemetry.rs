//! What the bridge's runtime does, in one place: each happening is one typed event that owns its
//! log line and its counters. Code calls `emit(&metrics, Happening { .. })`; nowhere else pairs a
//! `tracing` macro with a counter.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `voxsig_bridge_connects_total` | counter | `result` (`ok`, `error`) |
//! | `voxsig_bridge_disconnects_total` | counter | `reason` (`stale`, `server_disconnect`, `server_refused`, `closed`, `error`, `shutdown`) |
//! | `voxsig_bridge_reconnects_total` | counter | — |
//! | `voxsig_bridge_stale_connections_total` | counter | — |
//! | `voxsig_bridge_subscription_failures_total` | counter | `cause` (`rejected`, `unanswered`) |
//! | `voxsig_bridge_subscriptions_confirmed_total` | counter | — |
//! | `voxsig_bridge_subscriptions_unconfirmed_streaming_total` | counter | — |
//! | `voxsig_bridge_presence_updates_sent_total` | counter | — |
//! | `voxsig_bridge_events_received_total` | counter | `event` |
//! | `voxsig_bridge_events_deduplicated_total` | counter | `event` |
//! | `voxsig_bridge_dedup_forgotten_total` | counter | — |
//! | `voxsig_bridge_events_filtered_total` | counter | `event` |
//! | `voxsig_bridge_events_dropped_total` | counter | `reason` (`invalid_topic`, `buffer_closed`) |
//! | `voxsig_bridge_frame_errors_total` | counter | `kind` (see `FrameError::kind`) |
//! | `voxsig_bridge_token_logouts_total` | counter | — |
//! | `voxsig_bridge_unknown_frames_total` | counter | — |
//!
//! Per-frame and per-event problems (a malformed frame, an unknown frame type, an event that
//! cannot be routed) are counted always but logged through a [`LogLimiter`]: at most
//! [`LOG_BURST`] lines per kind per [`LOG_INTERVAL`], the next line after a quiet spell saying
//! how many were suppressed. A flood of junk frames is a counter, not gigabytes of log.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use std::sync::Arc;
use std::time::{Duration, Instant};
use voxsig_protocol::session::RetryCause;
use voxsig_protocol::{quote_untrusted, EventKind, FrameError, PubsubToken};
pub use voxsig_sinks::telemetry::{LogLimiter, LogVerdict, LOG_BURST, LOG_INTERVAL};

/// The most a log line quotes of a server-sent text (a disconnect reason, an error detail).
const QUOTED_DETAIL_CHARS: usize = 200;

/// The runtime's counters, registered in a caller-supplied registry. Cheap to clone.
#[derive(Clone)]
pub struct BridgeMetrics {
    inner: Arc<Counters>,
}

struct Counters {
    connects: IntCounterVec,
    disconnects: IntCounterVec,
    reconnects: IntCounter,
    stale: IntCounter,
    subscription_failures: IntCounterVec,
    confirmed: IntCounter,
    unconfirmed_streaming: IntCounter,
    presence: IntCounter,
    received: PerKind,
    deduplicated: PerKind,
    dedup_forgotten: IntCounter,
    filtered: PerKind,
    dropped: IntCounterVec,
    frame_errors: IntCounterVec,
    logouts: IntCounter,
    unknown_frames: IntCounter,
    per_account: Option<AccountCounters>,
    limiter: LogLimiter,
}

/// `voxsig_bridge_account_events_received_total{account}`, capped: the first `max` accounts
/// seen get their own series, the rest share `account="other"`, so 10,000 accounts cannot
/// explode a Prometheus server.
struct AccountCounters {
    vec: IntCounterVec,
    max: usize,
    counters: std::sync::Mutex<std::collections::HashMap<u64, IntCounter>>,
    other: IntCounter,
}

impl AccountCounters {
    fn inc(&self, account: u64) {
        let Ok(mut counters) = self.counters.lock() else {
            self.other.inc();
            return;
        };
        if let Some(c) = counters.get(&account) {
            c.inc();
        } else if counters.len() < self.max {
            let c = self.vec.with_label_values(&[&account.to_string()]);
            c.inc();
            counters.insert(account, c);
        } else {
            self.other.inc();
        }
    }
}

/// A counter vector labelled by event kind, its series resolved once: the hot path indexes by
/// kind instead of looking a label value up per event.
struct PerKind {
    /// One series per catalogued kind, in `EventKind::ALL` order, then `other`.
    series: Vec<IntCounter>,
}

impl PerKind {
    fn new(vec: &IntCounterVec) -> Self {
        let kinds = EventKind::ALL.iter().copied().chain([EventKind::Other]);
        PerKind {
            series: kinds
                .map(|k| vec.with_label_values(&[k.name().unwrap_or("other")]))
                .collect(),
        }
    }

    fn get(&self, kind: EventKind) -> &IntCounter {
        let i = EventKind::ALL
            .get(kind as usize)
            .filter(|k| **k == kind)
            .map_or(EventKind::ALL.len(), |_| kind as usize);
        &self.series[i.min(self.series.len() - 1)]
    }
}

impl std::fmt::Debug for BridgeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BridgeMetrics")
    }
}

/// Why a WebSocket connection ended: the `reason` of `voxsig_bridge_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// No ping within `source.stale_after`.
    Stale,
    /// The server sent `disconnect` and invites a reconnect.
    ServerDisconnect,
    /// The server sent `disconnect` with `reconnect: false`.
    ServerRefused,
    /// The WebSocket was closed (a close frame, or the stream ended).
    Closed,
    /// A WebSocket or I/O error.
    Error,
    /// The bridge is stopping.
    Shutdown,
}

impl DisconnectReason {
    /// Every reason, so every series exists (at 0) from the first scrape.
    pub const ALL: [DisconnectReason; 6] = [
        DisconnectReason::Stale,
        DisconnectReason::ServerDisconnect,
        DisconnectReason::ServerRefused,
        DisconnectReason::Closed,
        DisconnectReason::Error,
        DisconnectReason::Shutdown,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Stale => "stale",
            DisconnectReason::ServerDisconnect => "server_disconnect",
            DisconnectReason::ServerRefused => "server_refused",
            DisconnectReason::Closed => "closed",
            DisconnectReason::Error => "error",
            DisconnectReason::Shutdown => "shutdown",
        }
    }
}

impl BridgeMetrics {
    /// Creates the counters in `registry`; `per_account` caps the distinct `account` labels
    /// (`None`: no per-account series).
    pub fn register(
        registry: &Registry,
        per_account: Option<usize>,
    ) -> Result<Self, prometheus::Error> {
        let vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let one = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counters = Counters {
            connects: vec("voxsig_bridge_connects_total", "WebSocket connection attempts by result.", "result")?,
            disconnects: vec("voxsig_bridge_disconnects_total", "WebSocket connections ended, by reason.", "reason")?,
            reconnects: one("voxsig_bridge_reconnects_total", "Connections re-established after a loss.")?,
            stale: one("voxsig_bridge_stale_connections_total", "Connections closed for a dead heartbeat (no ping for source.stale_after; other frames do not count).")?,
            subscription_failures: vec("voxsig_bridge_subscription_failures_total", "Subscriptions rejected or left unanswered, by cause.", "cause")?,
            confirmed: one("voxsig_bridge_subscriptions_confirmed_total", "Subscription confirmations received.")?,
            unconfirmed_streaming: one("voxsig_bridge_subscriptions_unconfirmed_streaming_total", "Subscriptions found delivering events without a confirm (wrong account_id or user_id for a real token); kept.")?,
            presence: one("voxsig_bridge_presence_updates_sent_total", "update_presence messages sent.")?,
            received: PerKind::new(&vec("voxsig_bridge_events_received_total", "Events received from the platform, by event.", "event")?),
            deduplicated: PerKind::new(&vec("voxsig_bridge_events_deduplicated_total", "Copies of one broadcast received by several subscriptions and suppressed, by event.", "event")?),
            dedup_forgotten: one("voxsig_bridge_dedup_forgotten_total", "Broadcasts the dedup table forgot before their window ended, to stay within dedup.max_entries (a copy arriving later is published again).")?,
            filtered: PerKind::new(&vec("voxsig_bridge_events_filtered_total", "Events left out by route.include/exclude, by event.", "event")?),
            dropped: vec("voxsig_bridge_events_dropped_total", "Events that could not become records, by reason.", "reason")?,
            frame_errors: vec("voxsig_bridge_frame_errors_total", "Frames that could not be used, by kind.", "kind")?,
            logouts: one("voxsig_bridge_token_logouts_total", "user:logout received: the platform rotated a token.")?,
            unknown_frames: one("voxsig_bridge_unknown_frames_total", "Control frames of an unknown type (ignored).")?,
            per_account: match per_account {
                Some(max) => {
                    let vec = vec("voxsig_bridge_account_events_received_total", "Events received by account (capped; the rest under account=\"other\").", "account")?;
                    let other = vec.with_label_values(&["other"]);
                    Some(AccountCounters { vec, max, counters: Default::default(), other })
                }
                None => None,
            },
            limiter: LogLimiter::new(LOG_BURST, LOG_INTERVAL),
        };
        for result in ["ok", "error"] {
            counters.connects.with_label_values(&[result]);
        }
        for reason in DisconnectReason::ALL {
            counters.disconnects.with_label_values(&[reason.as_str()]);
        }
        for cause in RetryCause::ALL {
            counters
                .subscription_failures
                .with_label_values(&[cause.as_str()]);
        }
        for kind in FrameError::KINDS {
            counters.frame_errors.with_label_values(&[kind]);
        }
        for reason in DropReason::ALL {
            counters.dropped.with_label_values(&[reason.as_str()]);
        }
        Ok(BridgeMetrics {
            inner: Arc::new(counters),
        })
    }

    /// Counters in a private registry, for tests and tools that do not export metrics.
    pub fn unregistered() -> Self {
        // Registering into a fresh registry cannot clash.
        Self::register(&Registry::new(), None).unwrap_or_else(|e| panic!("fresh registry: {e}"))
    }
}

/// A happening that logs and counts itself.
pub trait InternalEvent {
    /// Logs and counts it.
    fn emit(self, metrics: &BridgeMetrics);
}

/// Records one happening.
pub fn emit(metrics: &BridgeMetrics, event: impl InternalEvent) {
    event.emit(metrics);
}

/// A duration as an operator reads it in a log line: `250ms`, `1.5s`, `215.3s`.
pub struct Secs(pub Duration);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 < Duration::from_secs(1) {
            write!(f, "{}ms", self.0.as_millis())
        } else {
            write!(f, "{:.1}s", self.0.as_secs_f64())
        }
    }
}

/// An optional duration: [`Secs`] or `none`.
pub struct OptSecs(pub Option<Duration>);

impl std::fmt::Display for OptSecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => Secs(d).fmt(f),
            None => f.write_str("none"),
        }
    }
}

fn more_suppressed(last: bool) -> String {
    if last {
        format!(
            " (more of this kind in the next {}s are counted, not logged)",
            LOG_INTERVAL.as_secs()
        )
    } else {
        String::new()
    }
}

/// A socket connected and upgraded.
pub struct Connected {
    /// The connection's number.
    pub conn: usize,
    /// Subscriptions it carries.
    pub subscriptions: usize,
    /// Whether it replaces a lost connection.
    pub reconnect: bool,
}

impl InternalEvent for Connected {
    fn emit(self, m: &BridgeMetrics) {
        tracing::info!(
            conn = self.conn,
            subscriptions = self.subscriptions,
            reconnect = self.reconnect,
            "connected"
        );
        m.inner.connects.with_label_values(&["ok"]).inc();
        if self.reconnect {
            m.inner.reconnects.inc();
        }
    }
}

/// A connection attempt failed.
pub struct ConnectFailed<'a> {
    /// The connection's number.
    pub conn: usize,
    /// What went wrong (never holds a token: URLs carry none).
    pub error: &'a dyn std::fmt::Display,
    /// The wait before the next attempt.
    pub retry_in: Duration,
}

impl InternalEvent for ConnectFailed<'_> {
    fn emit(self, m: &BridgeMetrics) {
        tracing::warn!(conn = self.conn, error = %self.error, retry_in = %Secs(self.retry_in), "connect failed");
        m.inner.connects.with_label_values(&["error"]).inc();
    }
}

/// A connection ended.
pub struct Disconnected<'a> {
    /// The connection's number.
    pub conn: usize,
    /// Why.
    pub reason: DisconnectReason,
    /// Details (the server's reason, an I/O error); may be empty.
    pub detail: &'a dyn std::fmt::Display,
    /// The wait before reconnecting (none on shutdown).
    pub retry_in: Option<Duration>,
}

impl InternalEvent for Disconnected<'_> {
    fn emit(self, m: &BridgeMetrics) {
        let reason = self.reason.as_str();
        match self.reason {
            DisconnectReason::Shutdown => tracing::debug!(conn = self.conn, "closed for shutdown"),
            DisconnectReason::ServerRefused => {
                let detail = self.detail.to_string();
                tracing::warn!(conn = self.conn, detail = %quote_untrusted(&detail, QUOTED_DETAIL_CHARS), retry_in = %OptSecs(self.retry_in),
                "server disconnected us and asked not to reconnect; backing off long")
            }
            _ => {
                let detail = self.detail.to_string();
                tracing::warn!(conn = self.conn, reason, detail = %quote_untrusted(&detail, QUOTED_DETAIL_CHARS), retry_in = %OptSecs(self.retry_in), "disconnected")
            }
        }
        m.inner.disconnects.with_label_values(&[reason]).inc();
        if self.reason == DisconnectReason::Stale {
            m.inner.stale.inc();
        }
    }
}

/// A subscription was confirmed.
pub struct SubscriptionConfirmed<'a> {
    /// Its account.
    pub account: u64,
    /// Its token, redacted when logged.
    pub token: &'a PubsubToken,
    /// Time from subscribe to confirm.
    pub after: Duration,
}

impl InternalEvent for SubscriptionConfirmed<'_> {
    fn emit(self, m: &BridgeMetrics) {
        tracing::debug!(account = self.account, token = %self.token, after = %Secs(self.after), "subscription confirmed");
        m.inner.confirmed.inc();
    }
}

/// Events arrive on a subscription that was never confirmed: kept, its events published.
pub struct SubscriptionStreamingUnconfirmed<'a> {
    /// Its configured account.
    pub account: u64,
    /// Its configured user.
    pub user: Option<u64>,
    /// Its token, redacted when logged.
    pub token: &'a PubsubToken,
    /// The first time for this subscription in this process (warned once).
    pub first: bool,
}

impl InternalEvent for SubscriptionStreamingUnconfirmed<'_> {
    fn emit(self, m: &BridgeMetrics) {
        if self.first {
            tracing::warn!(account = self.account, user = ?self.user, token = %self.token,
                "events arrive on this subscription but the platform never confirmed it: the token \
                 is real, its account_id (or user_id) is probably wrong; its events are published, \
                 the subscription is kept and shown as unconfirmed_streaming");
        } else {
            tracing::debug!(account = self.account, token = %self.token, "subscription streaming unconfirmed again");
        }
        m.inner.unconfirmed_streaming.inc();
    }
}

/// A subscription was rejected or left unanswered.
pub struct SubscriptionFailed<'a> {
    /// Its account.
    pub account: u64,
    /// Its token, redacted when logged.
    pub token: &'a PubsubToken,
    /// Rejected or unanswered.
    pub cause: RetryCause,
    /// Consecutive failures.
    pub attempt: u32,
    /// Wait before the retry.
    pub retry_in: Duration,
}

impl InternalEvent for SubscriptionFailed<'_> {
    fn emit(self, m: &BridgeMetrics) {
        let what = match self.cause {
            RetryCause::Rejected => {
                "subscription rejected by the server (wrong token, account or user?)"
            }
            RetryCause::Unanswered => {
                "subscription neither confirmed nor rejected in time (the platform's answer to an unknown token); unsubscribed"
            }
        };
        tracing::warn!(account = self.account, token = %self.token, attempt = self.attempt, retry_in = %Secs(self.retry_in), "{what}");
        m.inner
            .subscription_failures
            .with_label_values(&[self.cause.as_str()])
            .inc();
    }
}

/// `update_presence` was sent.
pub struct PresenceSent;

impl InternalEvent for PresenceSent {
    fn emit(self, m: &BridgeMetrics) {
        m.inner.presence.inc();
    }
}

/// A frame could not be used; it is skipped.
pub struct FrameMalformed<'a> {
    /// The connection's number.
    pub conn: usize,
    /// The error.
    pub error: &'a FrameError,
}

impl InternalEvent for FrameMalformed<'_> {
    fn emit(self, m: &BridgeMetrics) {
        let kind = self.error.kind();
        if let LogVerdict::Log {
            suppressed,
            last_before_suppression,
        } = m.inner.limiter.check(kind, Instant::now())
        {
            // FrameError messages quote no frame content beyond a short, escaped prefix.
            tracing::warn!(
                conn = self.conn,
                kind,
                error = %self.error,
                suppressed,
                "frame skipped{}",
                more_suppressed(last_before_suppression)
            );
        }
        m.inner
            .frame_errors
            .with_label_values(&[self.error.kind()])
            .inc();
    }
}

/// A control frame of an unknown type arrived.
pub struct UnknownFrame<'a> {
    /// The connection's number.
    pub conn: usize,
    /// Its type (cut to 64 characters).
    pub kind: &'a str,
}

impl InternalEvent for UnknownFrame<'_> {
    fn emit(self, m: &BridgeMetrics) {
        if let LogVerdict::Log { suppressed, .. } =
            m.inner.limiter.check("unknown_frame_type", Instant::now())
        {
            tracing::debug!(
                conn = self.conn,
                kind = %quote_untrusted(self.kind, 64),
                suppressed,
                "unknown frame type ignored"
            );
        }
        m.inner.unknown_frames.inc();
    }
}

/// An event arrived.
pub struct EventReceived {
    /// Its kind (the label: the catalogue name or `other`).
    pub kind: EventKind,
    /// The event's account.
    pub account: u64,
}

impl InternalEvent for EventReceived {
    fn emit(self, m: &BridgeMetrics) {
        m.inner.received.get(self.kind).inc();
        if let Some(per_account) = &m.inner.per_account {
            per_account.inc(self.account);
        }
    }
}

/// A copy of a broadcast already published was suppressed.
pub struct EventDeduplicated {
    /// Its kind (the label).
    pub kind: EventKind,
}

impl InternalEvent for EventDeduplicated {
    fn emit(self, m: &BridgeMetrics) {
        tracing::trace!(
            event = self.kind.name().unwrap_or("other"),
            "duplicate broadcast suppressed"
        );
        m.inner.deduplicated.get(self.kind).inc();
    }
}

/// The dedup table was full: it forgot the broadcasts of its oldest time bucket before their
/// window ended (copies of them arriving later are published again).
pub struct DedupForgot {
    /// How many broadcasts.
    pub entries: usize,
}

impl InternalEvent for DedupForgot {
    fn emit(self, m: &BridgeMetrics) {
        if let LogVerdict::Log {
            suppressed,
            last_before_suppression,
        } = m.inner.limiter.check("dedup_forgot", Instant::now())
        {
            tracing::warn!(
                entries = self.entries,
                suppressed,
                "dedup: table full (dedup.max_entries), broadcasts forgotten before their \
                 window ended; a copy arriving later is published again{}",
                more_suppressed(last_before_suppression)
            );
        }
        m.inner.dedup_forgotten.inc_by(self.entries as u64);
    }
}

/// The route filter left an event out.
pub struct EventFiltered {
    /// Its kind (the label).
    pub kind: EventKind,
}

impl InternalEvent for EventFiltered {
    fn emit(self, m: &BridgeMetrics) {
        m.inner.filtered.get(self.kind).inc();
    }
}

/// Why an event could not become a record: the `reason` label of
/// `voxsig_bridge_events_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The rendered topic broke the sink's rules.
    InvalidTopic,
    /// The buffer was closed (the bridge is stopping).
    BufferClosed,
}

impl DropReason {
    /// Every reason, pre-registered so each series exists from the first scrape.
    pub const ALL: [DropReason; 2] = [DropReason::InvalidTopic, DropReason::BufferClosed];

    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::InvalidTopic => "invalid_topic",
            DropReason::BufferClosed => "buffer_closed",
        }
    }
}

/// An event could not become a record.
pub struct EventDropped<'a> {
    /// Why.
    pub reason: DropReason,
    /// Bounded label.
    pub event_label: &'static str,
    /// Details.
    pub detail: &'a str,
}

impl InternalEvent for EventDropped<'_> {
    fn emit(self, m: &BridgeMetrics) {
        if let LogVerdict::Log {
            suppressed,
            last_before_suppression,
        } = m.inner.limiter.check(self.reason.as_str(), Instant::now())
        {
            tracing::warn!(
                reason = self.reason.as_str(),
                event = self.event_label,
                detail = %quote_untrusted(self.detail, QUOTED_DETAIL_CHARS),
                suppressed,
                "event dropped{}",
                more_suppressed(last_before_suppression)
            );
        }
        m.inner
            .dropped
            .with_label_values(&[self.reason.as_str()])
            .inc();
    }
}

/// The platform sent `user:logout` for a token: it was rotated and must be replaced.
pub struct TokenLoggedOut<'a> {
    /// The subscription's account.
    pub account: u64,
    /// The token, redacted when logged.
    pub token: &'a PubsubToken,
}

impl InternalEvent for TokenLoggedOut<'_> {
    fn emit(self, m: &BridgeMetrics) {
        tracing::error!(account = self.account, token = %self.token,
            "the platform logged this token out (rotated?): update its pubsub token; other accounts keep running");
        m.inner.logouts.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_an_operator_writes_them() {
        assert_eq!(Secs(Duration::from_millis(250)).to_string(), "250ms");
        assert_eq!(Secs(Duration::from_secs_f64(215.34)).to_string(), "215.3s");
        assert_eq!(OptSecs(None).to_string(), "none");
        assert_eq!(OptSecs(Some(Duration::from_secs(2))).to_string(), "2.0s");
    }

    #[test]
    fn typed_reasons_keep_the_label_values_dashboards_use() {
        let reasons: Vec<&str> = DisconnectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "stale",
                "server_disconnect",
                "server_refused",
                "closed",
                "error",
                "shutdown"
            ]
        );
        let causes: Vec<&str> = RetryCause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(causes, ["rejected", "unanswered"]);
    }
}
