//! The admin HTTP endpoint: ground truth, presence, world and stats as JSON; faults and event
//! generation as POSTs. See the crate README for the list.

use crate::config::Refusal;
use crate::emit::{EventSpec, Rate, RunSpec, Selection};
use crate::error::SimError;
use crate::faults::{Faults, Malformed};
use crate::rest::{Endpoint, FaultSpan, RestFault, RestFaultSpec};
use crate::shared::Shared;
use crate::truth::lock;
use crate::world::{ExportOptions, TokenSelection};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use voxsig_protocol::EventKind;

type AppState = State<Arc<Shared>>;
type Reply = Result<Json<Value>, ApiError>;

/// An error answered as `{"error": "..."}`.
pub(crate) struct ApiError(StatusCode, String);

impl From<SimError> for ApiError {
    fn from(e: SimError) -> Self {
        let status = match e {
            SimError::UnknownAccount(_)
            | SimError::UnknownConversation(_)
            | SimError::UnknownToken => StatusCode::NOT_FOUND,
            SimError::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn ok(value: impl serde::Serialize) -> Reply {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Serves the admin router on `listener` until the simulator shuts down.
pub(crate) fn spawn(shared: Arc<Shared>, listener: TcpListener) {
    crate::server::serve_router(&shared.clone(), listener, router(shared), "admin endpoint");
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/stats", get(stats))
        .route("/world", get(world))
        .route("/world/bridge-config", get(bridge_config))
        .route("/ground-truth", get(ground_truth))
        .route("/presence", get(presence))
        .route("/emit", post(emit))
        .route("/burst", post(burst))
        .route("/run", post(run))
        .route("/runs/stop", post(stop_runs))
        .route("/faults/drop-connections", post(drop_connections))
        .route("/faults/disconnect", post(disconnect))
        .route("/faults/pings", post(pings))
        .route("/faults/ping-interval", post(ping_interval))
        .route("/faults/malformed", post(malformed))
        .route("/faults/slow-writer", post(slow_writer))
        .route("/faults/refuse-subscriptions", post(refuse_subscriptions))
        .route("/faults/refusal", post(refusal))
        .route("/faults/listener/stop", post(listener_stop))
        .route("/faults/listener/start", post(listener_start))
        .route("/faults/rotate-token", post(rotate_token))
        .route("/faults/outage", post(outage))
        .route("/faults/outage/end", post(outage_end))
        .route("/faults/rest", post(rest_fault))
        .route("/faults/rest/clear", post(rest_clear))
        .route("/messages", get(messages))
        .with_state(shared)
}

fn faults(shared: &Arc<Shared>) -> Faults {
    Faults {
        shared: shared.clone(),
    }
}

async fn stats(State(s): AppState) -> Reply {
    ok(s.stats())
}

async fn world(State(s): AppState) -> Reply {
    ok(&s.world().world)
}

#[derive(Deserialize)]
struct ExportQuery {
    tokens: Option<String>,
    max_per_account: Option<usize>,
    /// Comma-separated account ids.
    accounts: Option<String>,
    /// Export `api_access_token` too.
    #[serde(default)]
    api_tokens: bool,
}

async fn bridge_config(
    State(s): AppState,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let tokens = match q.tokens.as_deref() {
        Some(t) => t.parse()?,
        None => TokenSelection::Users,
    };
    let accounts = match q.accounts.as_deref() {
        Some(list) => Some(
            list.split(',')
                .map(|a| a.trim().parse::<u64>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("accounts: {e}")))?,
        ),
        None => None,
    };
    let text = s.world().world.bridge_config_toml(&ExportOptions {
        tokens,
        max_per_account: q.max_per_account,
        accounts,
        api_tokens: q.api_tokens,
    });
    Ok(([(header::CONTENT_TYPE, "application/toml")], text).into_response())
}

#[derive(Deserialize)]
struct TruthQuery {
    /// Include each event's `data` (default true).
    data: Option<bool>,
    /// Only events with an id above this.
    #[serde(default)]
    since: u64,
    /// At most this many events.
    limit: Option<usize>,
    /// Only events delivered to this token.
    token: Option<String>,
}

async fn ground_truth(State(s): AppState, Query(q): Query<TruthQuery>) -> Reply {
    ok(s.truth.snapshot(
        q.data.unwrap_or(true),
        q.since,
        q.limit.unwrap_or(usize::MAX),
        q.token.as_deref(),
    ))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn presence(State(s): AppState, Query(q): Query<TokenQuery>) -> Reply {
    ok(s.truth.presence_log(q.token.as_deref()))
}

fn kind(name: &str) -> Result<EventKind, ApiError> {
    match EventKind::from_name(name) {
        EventKind::Other => Err(SimError::UnknownEvent(name.to_owned()).into()),
        k => Ok(k),
    }
}

#[derive(Deserialize)]
struct EmitBody {
    account_id: Option<u64>,
    event: Option<String>,
    conversation_id: Option<u64>,
}

async fn emit(State(s): AppState, Json(b): Json<EmitBody>) -> Reply {
    let spec = EventSpec {
        account_id: b.account_id,
        kind: b.event.as_deref().map(kind).transpose()?,
        conversation_id: b.conversation_id,
    };
    ok(s.emit(&spec).await?)
}

#[derive(Deserialize, Default)]
struct SelectionBody {
    #[serde(default)]
    accounts: Vec<u64>,
    #[serde(default)]
    events: Vec<String>,
}

impl SelectionBody {
    fn selection(&self) -> Result<Selection, ApiError> {
        Ok(Selection {
            accounts: self.accounts.clone(),
            kinds: self
                .events
                .iter()
                .map(|e| kind(e))
                .collect::<Result<_, _>>()?,
        })
    }
}

#[derive(Deserialize)]
struct BurstBody {
    count: u64,
    #[serde(flatten)]
    selection: SelectionBody,
}

async fn burst(State(s): AppState, Json(b): Json<BurstBody>) -> Reply {
    ok(s.burst(b.count, &b.selection.selection()?).await?)
}

#[derive(Deserialize)]
struct RunBody {
    /// Events per second (in total, or per account with `per_account`).
    rate: f64,
    #[serde(default)]
    per_account: bool,
    /// How long.
    seconds: f64,
    /// At most this many events.
    count: Option<u64>,
    /// Answer when the run ends (with its report) rather than at once.
    #[serde(default)]
    wait: bool,
    #[serde(flatten)]
    selection: SelectionBody,
}

async fn run(State(s): AppState, Json(b): Json<RunBody>) -> Reply {
    if !(b.seconds.is_finite() && b.seconds > 0.0) {
        return Err(SimError::Invalid("seconds must be positive".into()).into());
    }
    let handle = s.run(RunSpec {
        selection: b.selection.selection()?,
        rate: if b.per_account {
            Rate::PerAccount(b.rate)
        } else {
            Rate::Total(b.rate)
        },
        duration: Duration::from_secs_f64(b.seconds),
        max_events: b.count,
    })?;
    if b.wait {
        return ok(handle.wait().await?);
    }
    lock(&s.runs).push(handle.stop_flag());
    ok(json!({ "started": true }))
}

async fn stop_runs(State(s): AppState) -> Reply {
    let flags = std::mem::take(&mut *lock(&s.runs));
    for f in &flags {
        f.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    ok(json!({ "stopped": flags.len() }))
}

async fn drop_connections(State(s): AppState) -> Reply {
    ok(json!({ "affected": faults(&s).drop_connections() }))
}

#[derive(Deserialize)]
struct DisconnectBody {
    #[serde(default = "default_reason")]
    reason: String,
    #[serde(default = "yes")]
    reconnect: bool,
}

fn default_reason() -> String {
    "server_restart".to_owned()
}

fn yes() -> bool {
    true
}

async fn disconnect(State(s): AppState, Json(b): Json<DisconnectBody>) -> Reply {
    ok(json!({ "affected": faults(&s).disconnect(&b.reason, b.reconnect).await }))
}

#[derive(Deserialize)]
struct PingsBody {
    enabled: bool,
}

async fn pings(State(s): AppState, Json(b): Json<PingsBody>) -> Reply {
    s.knobs.set_pings(b.enabled);
    ok(json!({ "pings": b.enabled }))
}

#[derive(Deserialize)]
struct IntervalBody {
    ms: u64,
}

async fn ping_interval(State(s): AppState, Json(b): Json<IntervalBody>) -> Reply {
    s.knobs
        .set_ping_interval(Duration::from_millis(b.ms.max(1)));
    ok(json!({ "ping_interval_ms": b.ms.max(1) }))
}

async fn malformed(State(s): AppState, Json(kind): Json<Malformed>) -> Reply {
    ok(json!({ "affected": faults(&s).send_malformed(kind).await }))
}

#[derive(Deserialize)]
struct SlowBody {
    /// Delay before each frame; 0 turns the fault off.
    delay_ms: f64,
}

async fn slow_writer(State(s): AppState, Json(b): Json<SlowBody>) -> Reply {
    let delay = (b.delay_ms.is_finite() && b.delay_ms > 0.0)
        .then(|| Duration::from_secs_f64(b.delay_ms / 1000.0));
    s.knobs.set_slow_writer(delay);
    ok(json!({ "delay_ms": delay.map_or(0.0, |d| d.as_secs_f64() * 1000.0) }))
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RefuseMode {
    Off,
    Silent,
    Reject,
}

#[derive(Deserialize)]
struct RefuseBody {
    mode: RefuseMode,
}

async fn refuse_subscriptions(State(s): AppState, Json(b): Json<RefuseBody>) -> Reply {
    s.knobs.set_refuse_all(match b.mode {
        RefuseMode::Off => None,
        RefuseMode::Silent => Some(Refusal::Silent),
        RefuseMode::Reject => Some(Refusal::Reject),
    });
    ok(json!({ "refuse_all": s.knobs.refuse_all() }))
}

#[derive(Deserialize)]
struct RefusalBody {
    mode: Refusal,
}

async fn refusal(State(s): AppState, Json(b): Json<RefusalBody>) -> Reply {
    s.knobs.set_refusal(b.mode);
    ok(json!({ "refusal": b.mode }))
}

async fn listener_stop(State(s): AppState) -> Reply {
    s.stop_listener().await?;
    ok(json!({ "listening": false }))
}

async fn listener_start(State(s): AppState) -> Reply {
    s.start_listener().await?;
    ok(json!({ "listening": true }))
}

#[derive(Deserialize)]
struct RotateBody {
    token: String,
    new_token: Option<String>,
    /// As the platform: the old token's subscribe gets no answer whatever the refusal mode.
    #[serde(default)]
    silent: bool,
}

async fn rotate_token(State(s): AppState, Json(b): Json<RotateBody>) -> Reply {
    let f = faults(&s);
    let new = match (b.new_token, b.silent) {
        (Some(new), false) => f.rotate_token_to(&b.token, &new).map(|_| new)?,
        (Some(new), true) => f.rotate_token_silently_to(&b.token, &new).map(|_| new)?,
        (None, false) => f.rotate_token(&b.token)?,
        (None, true) => f.rotate_token_silently(&b.token)?,
    };
    ok(json!({ "new_token": new }))
}

#[derive(Deserialize)]
struct OutageBody {
    seconds: f64,
}

async fn outage(State(s): AppState, Json(b): Json<OutageBody>) -> Reply {
    let d = Duration::try_from_secs_f64(b.seconds)
        .map_err(|_| SimError::Invalid("seconds must be a non-negative number".into()))?;
    ok(json!({ "affected": faults(&s).outage(d) }))
}

async fn outage_end(State(s): AppState) -> Reply {
    faults(&s).end_outage();
    ok(json!({ "outage": false }))
}

#[derive(Deserialize)]
struct RestFaultBody {
    #[serde(flatten)]
    fault: RestFault,
    /// The next N requests...
    requests: Option<u64>,
    /// ...or every request for this many seconds.
    seconds: Option<f64>,
    /// Only this endpoint: `profile`, `conversations`, `messages` or `other`.
    endpoint: Option<Endpoint>,
}

async fn rest_fault(State(s): AppState, Json(b): Json<RestFaultBody>) -> Reply {
    let span = match (b.requests, b.seconds) {
        (Some(n), None) => FaultSpan::Requests(n),
        (None, Some(secs)) => FaultSpan::For(
            Duration::try_from_secs_f64(secs)
                .map_err(|_| SimError::Invalid("seconds must be a non-negative number".into()))?,
        ),
        _ => {
            return Err(SimError::Invalid("give either requests or seconds".into()).into());
        }
    };
    faults(&s).rest_fault(RestFaultSpec {
        fault: b.fault,
        span,
        endpoint: b.endpoint,
    });
    ok(json!({ "ok": true }))
}

async fn rest_clear(State(s): AppState) -> Reply {
    faults(&s).clear_rest_faults();
    ok(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct MessagesQuery {
    account: Option<u64>,
    /// Unix milliseconds, inclusive.
    #[serde(default)]
    from_ms: u64,
    /// Unix milliseconds, exclusive.
    to_ms: Option<u64>,
}

async fn messages(State(s): AppState, Query(q): Query<MessagesQuery>) -> Reply {
    let store = lock(&s.store);
    let messages = store.all_messages(q.account, q.from_ms, q.to_ms.unwrap_or(u64::MAX));
    ok(json!({ "messages": messages, "stats": store.stats() }))
}
