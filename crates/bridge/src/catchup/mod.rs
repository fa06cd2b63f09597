//! Catch-up: every gap in an account's live feed is detected, counted and, where the account has
//! an API access token, filled from the platform's REST API.
//!
//! ActionCable has no replay, so the bridge does what the platform's own dashboard does after a
//! reconnect: it asks the REST API which conversations changed during the gap and fetches their
//! messages. Catch-up is a second *source* of events: REST answers become the same events the
//! socket produces and go through the same router, buffer and sink, marked `replayed`.
//!
//! - [`gaps`]: the sans-I/O gap book, fed by the connections' happenings.
//! - [`ledger`]: what was published (message ids per conversation) and the stable event id;
//!   both paths claim a message there first, so it is published once.
//! - [`rest`]: the REST client (paced, bounded, retried).
//! - [`profile`]: discovery of pubsub tokens and accounts from `GET /api/v1/profile`.
//! - [`checkpoint`]: what survives a restart, under `[state] dir`.
//! - [`telemetry`]: the happenings' log lines and counters.

pub mod checkpoint;
pub mod gaps;
pub mod ledger;
pub mod profile;
pub mod rest;
pub mod telemetry;
mod worker;

pub(crate) use worker::{spawn, LastCheckpoint};

use crate::config::{first_failed, ConfigError};
use crate::route::Receiver;
use crate::status::StatusBoard;
use gaps::{Gap, GapBook, GapCause, Opened};
use ledger::{Held, Ledger};
use rest::{ApiToken, RestClient};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use telemetry::{emit, CatchupMetrics};
use tokio::sync::mpsc;
use voxsig_protocol::{PubsubToken, RoomIdentifier};

/// `[catchup]`: filling gaps from the REST API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatchupConfig {
    /// On by default; it only acts for accounts with an API access token.
    pub enabled: bool,
    /// A gap longer than this is reported as unrecovered instead of filled (the platform's
    /// dashboard gives up after 3 hours too).
    #[serde(with = "humantime_serde")]
    pub max_window: Duration,
    /// Added to the gap when asking which conversations changed (clock skew, in-flight
    /// broadcasts).
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    /// REST requests in flight at once, across the process.
    pub concurrency: usize,
    /// REST requests per second, across the process.
    pub rate: f64,
    /// How often each API token's profile is fetched to notice a rotated pubsub token.
    #[serde(with = "humantime_serde")]
    pub profile_check: Duration,
    /// Per-request time limit.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Conversations remembered per account (published message ids, checkpoint size).
    pub max_conversations: usize,
}

impl Default for CatchupConfig {
    fn default() -> Self {
        CatchupConfig {
            enabled: true,
            max_window: Duration::from_secs(3 * 3600),
            margin: Duration::from_secs(15),
            concurrency: 4,
            rate: 5.0,
            profile_check: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            max_conversations: 10_000,
        }
    }
}

impl CatchupConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&str, bool, &str); 6] = [
            (
                "catchup.max_window",
                self.max_window >= Duration::from_secs(1),
                "must be at least 1s",
            ),
            (
                "catchup.concurrency",
                (1..=256).contains(&self.concurrency),
                "must be between 1 and 256",
            ),
            (
                "catchup.rate",
                self.rate.is_finite() && self.rate > 0.0,
                "must be a positive number of requests per second",
            ),
            (
                "catchup.profile_check",
                self.profile_check >= Duration::from_secs(1),
                "must be at least 1s",
            ),
            (
                "catchup.request_timeout",
                self.request_timeout >= Duration::from_millis(100),
                "must be at least 100ms",
            ),
            (
                "catchup.max_conversations",
                self.max_conversations >= 1,
                "must be at least 1",
            ),
        ];
        first_failed(checks)
    }
}

/// Work for the catch-up worker.
#[derive(Debug)]
pub enum Job {
    /// A gap closed: fill it.
    Fill(Gap),
    /// A subscription went unanswered: its token may have been rotated; check the profile.
    CheckProfile(usize),
}

/// A subscription's new identifier after a token rotation, for its connection task.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The subscription (index in the configured accounts).
    pub index: usize,
    /// The identifier with the new token.
    pub identifier: RoomIdentifier,
}

/// One subscription as catch-up knows it.
#[derive(Debug, Clone)]
pub struct SubInfo {
    /// Its account.
    pub account: u64,
    /// Its user.
    pub user_id: Option<u64>,
    /// The pubsub token it subscribes with now.
    pub token: PubsubToken,
    /// Its API access token.
    pub api_token: Option<ApiToken>,
    /// Its entry, for messages.
    pub entry: String,
    /// Its socket.
    pub conn: usize,
}

/// An account as catch-up knows it.
#[derive(Debug, Clone)]
pub struct AccountInfo {
    /// A token able to read its conversations (the first entry of the account that has one).
    pub api_token: Option<ApiToken>,
    /// Routing facts for its replayed events (those of its first entry).
    pub receiver: Receiver,
    /// The entry whose API token it uses, for messages.
    pub entry: String,
}

/// The shared catch-up state: the gap book, the ledger and what the worker needs.
pub struct Catchup {
    config: CatchupConfig,
    book: Mutex<GapBook>,
    ledger: Ledger,
    metrics: CatchupMetrics,
    client: Option<Arc<RestClient>>,
    accounts: HashMap<u64, AccountInfo>,
    subs: Mutex<Vec<SubInfo>>,
    jobs: mpsc::UnboundedSender<Job>,
    rotations: Vec<mpsc::UnboundedSender<Rotation>>,
    status: Arc<StatusBoard>,
}

impl std::fmt::Debug for Catchup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catchup")
            .field("accounts", &self.accounts.len())
            .finish()
    }
}

/// What [`Catchup::new`] needs.
pub struct Parts {
    /// `[catchup]`.
    pub config: CatchupConfig,
    /// Registered metrics.
    pub metrics: CatchupMetrics,
    /// The REST client (absent when no account has an API token).
    pub client: Option<Arc<RestClient>>,
    /// Every subscription, in status-board order.
    pub subs: Vec<(SubInfo, Receiver)>,
    /// Senders to the connection tasks, by socket.
    pub rotations: Vec<mpsc::UnboundedSender<Rotation>>,
    /// The status board.
    pub status: Arc<StatusBoard>,
}

impl Catchup {
    /// Builds the state; the receiver goes to [`spawn`].
    pub fn new(parts: Parts) -> (Catchup, mpsc::UnboundedReceiver<Job>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let mut accounts: HashMap<u64, AccountInfo> = HashMap::new();
        for (sub, receiver) in &parts.subs {
            let entry = accounts.entry(sub.account).or_insert_with(|| AccountInfo {
                api_token: None,
                receiver: receiver.clone(),
                entry: sub.entry.clone(),
            });
            if entry.api_token.is_none() && sub.api_token.is_some() {
                entry.api_token = sub.api_token.clone();
                entry.entry = sub.entry.clone();
            }
        }
        let book = GapBook::new(
            &parts
                .subs
                .iter()
                .map(|(s, _)| s.account)
                .collect::<Vec<_>>(),
        );
        let catchup = Catchup {
            ledger: Ledger::new(parts.config.max_conversations),
            config: parts.config,
            book: Mutex::new(book),
            metrics: parts.metrics,
            client: parts.client,
            accounts,
            subs: Mutex::new(parts.subs.into_iter().map(|(s, _)| s).collect()),
            jobs,
            rotations: parts.rotations,
            status: parts.status,
        };
        (catchup, rx)
    }

    /// The ledger of published messages.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The metrics.
    pub fn metrics(&self) -> &CatchupMetrics {
        &self.metrics
    }

    /// `[catchup]`.
    pub fn config(&self) -> &CatchupConfig {
        &self.config
    }

    fn book(&self) -> std::sync::MutexGuard<'_, GapBook> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a restart: opens a gap on every account the checkpoint knows.
    pub fn restored(&self, checkpoint: &checkpoint::Checkpoint) {
        self.ledger.restore(&checkpoint.accounts);
        let mut book = self.book();
        for (account, cp) in &checkpoint.accounts {
            if self.accounts.contains_key(account) && cp.last_event_ms > 0 {
                book.restored(*account, cp.last_event_ms, cp.high);
                self.status
                    .gap_opened(*account, cp.last_event_ms, GapCause::Restart);
                emit(
                    &self.metrics,
                    telemetry::GapOpened {
                        account: *account,
                        cause: GapCause::Restart,
                    },
                );
            }
        }
    }

    /// Subscription `index` of `account` stopped receiving; its last frame was at
    /// `last_frame_ms`.
    pub fn lost(&self, index: usize, account: u64, cause: GapCause, last_frame_ms: i64) {
        let watermark = self.ledger.account_high(account);
        let opened = self.book().lost(index, cause, last_frame_ms, watermark);
        if opened == Opened::New {
            self.status.gap_opened(account, last_frame_ms, cause);
            emit(&self.metrics, telemetry::GapOpened { account, cause });
        }
    }

    /// Subscription `index` was confirmed at `now_ms`: a gap of its account closes.
    pub fn confirmed(&self, index: usize, now_ms: i64) {
        let closed = self.book().confirmed(index, now_ms);
        if let Some(gap) = closed {
            emit(&self.metrics, telemetry::GapClosed { gap: &gap });
            let _ = self.jobs.send(Job::Fill(gap));
        }
    }

    /// `subscribe` was sent for subscription `index`.
    pub fn subscribing(&self, index: usize, now_ms: i64) {
        self.book().subscribing(index, now_ms);
    }

    /// Subscription `index` was rejected.
    pub fn rejected(&self, index: usize) {
        self.book().refused(index);
    }

    /// Subscription `index` went unanswered: with an API token, check for a rotated token.
    pub fn unanswered(&self, index: usize) {
        self.book().refused(index);
        let has_api = self
            .subs
            .lock()
            .ok()
            .and_then(|s| s.get(index).map(|s| s.api_token.is_some()))
            .unwrap_or(false);
        if has_api && self.client.is_some() {
            let _ = self.jobs.send(Job::CheckProfile(index));
        }
    }

    /// What a catch-up of `account` uses — the REST client and the account's API token — when
    /// `[catchup]` is on and both exist; `None`: no catch-up can fill its gaps.
    fn fill_parts(&self, account: u64) -> Option<(&Arc<RestClient>, &ApiToken)> {
        if !self.config.enabled {
            return None;
        }
        let token = self.accounts.get(&account)?.api_token.as_ref()?;
        Some((self.client.as_ref()?, token))
    }

    /// [`Catchup::fill_parts`], owned, for a fill.
    pub(crate) fn filler(&self, account: u64) -> Option<(Arc<RestClient>, ApiToken)> {
        self.fill_parts(account)
            .map(|(client, token)| (client.clone(), token.clone()))
    }

    /// Whether a catch-up can publish `account`'s messages (see [`Catchup::fill_parts`]).
    pub fn can_fill(&self, account: u64) -> bool {
        self.fill_parts(account).is_some()
    }

    /// A live `message.created` with a message id, received at `received_ms` (Unix ms), for the
    /// records of receiver class `class`:
    /// `None` when it was published already, else its claim, to keep once the record is
    /// accepted. Claimed in the ledger only where a catch-up can publish the account's messages
    /// too: elsewhere the live path is the only one, and copies on several subscriptions are the
    /// dedup's (the claim was ~6% of the bridge's CPU at full rate, docs/BENCHMARKS.md).
    pub fn live_message(
        &self,
        account: u64,
        class: ledger::ReceiverClass,
        conversation: u64,
        id: u64,
        received_ms: i64,
    ) -> Option<Held<'_>> {
        if !self.can_fill(account) {
            return Some(Held::none(&self.ledger));
        }
        let held = self
            .ledger
            .hold(account, class, conversation, id, received_ms);
        if held.is_none() {
            emit(&self.metrics, telemetry::LiveDuplicate);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_checks() {
        let c = CatchupConfig::default();
        assert!(c.enabled);
        assert_eq!(c.max_window, Duration::from_secs(3 * 3600));
        assert_eq!(c.margin, Duration::from_secs(15));
        assert_eq!((c.concurrency, c.rate), (4, 5.0));
        assert_eq!(c.profile_check, Duration::from_secs(300));
        assert!(c.validate().is_ok());
        for (bad, key) in [
            (
                CatchupConfig {
                    rate: 0.0,
                    ..CatchupConfig::default()
                },
                "catchup.rate",
            ),
            (
                CatchupConfig {
                    rate: f64::NAN,
                    ..CatchupConfig::default()
                },
                "catchup.rate",
            ),
            (
                CatchupConfig {
                    concurrency: 0,
                    ..CatchupConfig::default()
                },
                "catchup.concurrency",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().key, key);
        }
    }
}
