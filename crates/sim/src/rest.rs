//! The platform's REST surface, served on the WebSocket's port (see [`crate::door`]), as
//! Chatwoot's controllers and views answer, for a bridge that catches up after a gap:
//!
//! | method | path | answers |
//! | --- | --- | --- |
//! | GET | `/api/v1/profile` | the user (`profiles/show` → `models/_user`): `id`, `name`, `email`, `pubsub_token`, `access_token`, `accounts: [{id, name, role, status, ...}]`, ... |
//! | GET | `/api/v1/accounts/{account_id}/conversations` | `?status=open\|resolved\|pending\|snoozed\|all` (default `open`), `?updated_within=SECONDS` (no pagination) or `?page=N` (25 per page): `{"data":{"meta":{mine_count, assigned_count, unassigned_count, all_count},"payload":[conversation...]}}`, most recent activity first |
//! | GET | `/api/v1/accounts/{account_id}/conversations/{display_id}/messages` | `?after=ID` (ids above, at most 100), `?before=ID` (the 20 below), both (`after <= id < before`, at most 1 000), neither (the latest 20); always oldest first: `{"meta":{...},"payload":[message...]}` |
//!
//! Authentication: header `api_access_token: <the user's API access token>`; missing or unknown
//! → 401 `{"error":"Invalid Access Token"}`. An account the user does not belong to → 401; an
//! unknown account or conversation → 404. Ids in paths that are not numbers → 404; query
//! parameters that are not what they should be (`after=abc`, `updated_within=-1`, numbers past
//! `u64`, an unknown `status`) → 400 `{"error": "..."}` (Chatwoot would coerce with `to_i`; a
//! simulator that tests clients should tell them). Other paths and methods → 404.
//!
//! A message in `payload` (Chatwoot's `models/_message` partial) and the `data` of the
//! `message.created` event that announced it share `id`, `content`, `inbox_id`,
//! `conversation_id`, `message_type`, `content_type`, `status`, `created_at`, `private`,
//! `source_id` and `sender`. Only the event has `account_id`, `sim_seq`, `updated_at`,
//! `sender_type`/`sender_id`, `processed_message_content`, `external_source_ids`, `sentiment` and
//! the nested `conversation`; only REST has `additional_attributes`. A later `message.updated`
//! replaces `content`. The `messages` array of a conversation (its last message) is the event's
//! shape without `sim_seq` and the nested `conversation`.
//!
//! Faults ([`crate::Faults::rest_fault`]) answer the next requests (or those of a period) 429 with
//! `Retry-After`, 500, or slowly; every request is counted per endpoint in [`RestStats`].

use crate::shared::{unix_ms, Shared};
use crate::store::{
    ConversationQuery, ConversationRecord, ConversationStatus, MessageQuery, Sender, StatusFilter,
    StoredMessage,
};
use crate::truth::lock;
use crate::world::{Role, WorldState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A REST endpoint, for counters and fault scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `GET /api/v1/profile`.
    Profile,
    /// `GET /api/v1/accounts/{id}/conversations`.
    Conversations,
    /// `GET /api/v1/accounts/{id}/conversations/{id}/messages`.
    Messages,
    /// Any other path (answered 404).
    Other,
}

impl Endpoint {
    /// The name in counters and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Profile => "profile",
            Endpoint::Conversations => "conversations",
            Endpoint::Messages => "messages",
            Endpoint::Other => "other",
        }
    }
}

/// What a REST fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RestFault {
    /// 429 with `Retry-After: retry_after_secs`.
    TooManyRequests {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// 500.
    ServerError,
    /// Answers normally after this delay.
    Slow {
        /// The delay, in milliseconds.
        delay_ms: u64,
    },
}

/// How long a REST fault lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultSpan {
    /// The next N matching requests.
    Requests(u64),
    /// Every matching request for this long.
    For(Duration),
}

/// A REST fault to inject: what, for how long, and on which endpoint (`None`: all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestFaultSpec {
    /// What happens.
    pub fault: RestFault,
    /// For how long.
    pub span: FaultSpan,
    /// Only this endpoint, if set.
    pub endpoint: Option<Endpoint>,
}

#[derive(Debug, Clone, Copy)]
enum Budget {
    Left(u64),
    Until(Instant),
}

/// The REST faults in force, oldest first; the first matching one applies. Sans-I/O.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    active: Vec<(RestFault, Budget, Option<Endpoint>)>,
}

impl FaultPlan {
    pub(crate) fn add(&mut self, spec: RestFaultSpec, now: Instant) {
        let budget = match spec.span {
            FaultSpan::Requests(n) => Budget::Left(n),
            FaultSpan::For(d) => Budget::Until(now + d),
        };
        self.active.push((spec.fault, budget, spec.endpoint));
    }

    pub(crate) fn clear(&mut self) {
        self.active.clear();
    }

    /// The fault for a request to `endpoint` arriving at `now`, using up one of its requests.
    pub(crate) fn take(&mut self, endpoint: Endpoint, now: Instant) -> Option<RestFault> {
        self.active.retain(|(_, b, _)| match b {
            Budget::Left(n) => *n > 0,
            Budget::Until(t) => now < *t,
        });
        let (fault, budget, _) = self
            .active
            .iter_mut()
            .find(|(_, _, e)| e.is_none_or(|e| e == endpoint))?;
        if let Budget::Left(n) = budget {
            *n -= 1;
        }
        Some(*fault)
    }
}

/// Requests of the REST surface since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RestStats {
    /// `GET /api/v1/profile`.
    pub profile: u64,
    /// Conversation lists.
    pub conversations: u64,
    /// Message pages.
    pub messages: u64,
    /// Other paths.
    pub other: u64,
    /// Answered 401.
    pub unauthorized: u64,
    /// Answered 400 (bad parameters).
    pub bad_request: u64,
    /// Answered 404.
    pub not_found: u64,
    /// Answered 429 by a fault.
    pub throttled: u64,
    /// Answered 500 by a fault.
    pub server_errors: u64,
    /// Slowed by a fault.
    pub slowed: u64,
}

/// Counters and faults of the REST surface.
#[derive(Debug, Default)]
pub(crate) struct RestState {
    requests: [AtomicU64; 4],
    unauthorized: AtomicU64,
    bad_request: AtomicU64,
    not_found: AtomicU64,
    throttled: AtomicU64,
    server_errors: AtomicU64,
    slowed: AtomicU64,
    pub(crate) plan: Mutex<FaultPlan>,
}

impl RestState {
    pub(crate) fn stats(&self) -> RestStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RestStats {
            profile: get(&self.requests[0]),
            conversations: get(&self.requests[1]),
            messages: get(&self.requests[2]),
            other: get(&self.requests[3]),
            unauthorized: get(&self.unauthorized),
            bad_request: get(&self.bad_request),
            not_found: get(&self.not_found),
            throttled: get(&self.throttled),
            server_errors: get(&self.server_errors),
            slowed: get(&self.slowed),
        }
    }

    fn count(&self, endpoint: Endpoint) {
        let i = match endpoint {
            Endpoint::Profile => 0,
            Endpoint::Conversations => 1,
            Endpoint::Messages => 2,
            Endpoint::Other => 3,
        };
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A REST error: status and `{"error": message}`.
#[derive(Debug)]
pub(crate) enum RestError {
    Unauthorized(&'static str),
    NotFound,
    BadRequest(String),
    TooManyRequests(u64),
    ServerError,
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            RestError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.to_owned()),
            RestError::NotFound => (
                StatusCode::NOT_FOUND,
                "Resource could not be found".to_owned(),
            ),
            RestError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            RestError::TooManyRequests(secs) => {
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({ "error": "Retry later" })),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return r;
            }
            RestError::ServerError => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error".to_owned(),
            ),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

type AppState = State<Arc<Shared>>;
type Reply = Result<Response, RestError>;

/// Counts a request and applies the fault in force, if any.
async fn gate(shared: &Shared, endpoint: Endpoint) -> Result<(), RestError> {
    let rest = &shared.rest;
    rest.count(endpoint);
    let fault = lock(&rest.plan).take(endpoint, Instant::now());
    match fault {
        None => Ok(()),
        Some(RestFault::TooManyRequests { retry_after_secs }) => {
            rest.throttled.fetch_add(1, Ordering::Relaxed);
            Err(RestError::TooManyRequests(retry_after_secs))
        }
        Some(RestFault::ServerError) => {
            rest.server_errors.fetch_add(1, Ordering::Relaxed);
            Err(RestError::ServerError)
        }
        Some(RestFault::Slow { delay_ms }) => {
            rest.slowed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Ok(())
        }
    }
}

/// Counts the error answers.
fn counted(shared: &Shared, reply: Reply) -> Response {
    match reply {
        Ok(r) => r,
        Err(e) => {
            let rest = &shared.rest;
            match &e {
                RestError::Unauthorized(_) => &rest.unauthorized,
                RestError::BadRequest(_) => &rest.bad_request,
                RestError::NotFound => &rest.not_found,
                // Counted where the fault applied.
                RestError::TooManyRequests(_) | RestError::ServerError => {
                    return e.into_response();
                }
            }
            .fetch_add(1, Ordering::Relaxed);
            e.into_response()
        }
    }
}

/// Serves the REST router on the connections the door hands over, until shutdown.
pub(crate) fn spawn(shared: Arc<Shared>, listener: crate::door::RestListener) {
    crate::server::serve_router(&shared.clone(), listener, router(shared), "REST surface");
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/profile", get(profile))
        .route(
            "/api/v1/accounts/{account_id}/conversations",
            get(conversations),
        )
        .route(
            "/api/v1/accounts/{account_id}/conversations/{conversation_id}/messages",
            get(messages),
        )
        .fallback(other)
        // Another method on a known path: no such route on the platform either.
        .method_not_allowed_fallback(other)
        .with_state(shared)
}

async fn other(State(s): AppState) -> Response {
    let reply = match gate(&s, Endpoint::Other).await {
        Ok(()) => Err(RestError::NotFound),
        Err(e) => Err(e),
    };
    counted(&s, reply)
}

/// The user the `api_access_token` header names.
fn authenticate(state: &WorldState, headers: &HeaderMap) -> Result<usize, RestError> {
    headers
        .get("api_access_token")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| state.index.api_tokens.get(t).copied())
        .ok_or(RestError::Unauthorized("Invalid Access Token"))
}

/// The account in the path, which the user must belong to.
fn account_of(state: &WorldState, user: usize, raw: &str) -> Result<u64, RestError> {
    let id: u64 = raw.parse().map_err(|_| RestError::NotFound)?;
    if !state.index.accounts.contains_key(&id) {
        return Err(RestError::NotFound);
    }
    if !state.world.users[user].accounts.contains(&id) {
        return Err(RestError::Unauthorized(
            "You are not authorized to access this account",
        ));
    }
    Ok(id)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Agent => "agent",
        Role::Administrator => "administrator",
    }
}

async fn profile(State(s): AppState, headers: HeaderMap) -> Response {
    let reply = async {
        gate(&s, Endpoint::Profile).await?;
        let state = s.world();
        let i = authenticate(&state, &headers)?;
        let u = &state.world.users[i];
        let accounts: Vec<Value> = u
            .accounts
            .iter()
            .filter_map(|a| state.world.account(*a))
            .map(|a| {
                json!({
                    "id": a.id,
                    "name": a.name,
                    "status": "active",
                    "active_at": Value::Null,
                    "role": role_name(u.role),
                    "permissions": [role_name(u.role)],
                    "availability": u.availability,
                    "availability_status": u.availability,
                    "auto_offline": true,
                })
            })
            .collect();
        let body = json!({
            "access_token": u.api_access_token,
            "account_id": u.accounts.first(),
            "available_name": u.name,
            "avatar_url": "",
            "confirmed": true,
            "display_name": Value::Null,
            "message_signature": Value::Null,
            "email": u.email(),
            "id": u.id,
            "inviter_id": Value::Null,
            "name": u.name,
            "provider": "email",
            "pubsub_token": u.pubsub_token,
            "role": role_name(u.role),
            "ui_settings": {},
            "uid": u.email(),
            "type": Value::Null,
            "accounts": accounts,
        });
        Ok(Json(body).into_response())
    }
    .await;
    counted(&s, reply)
}

/// Query parameters, strictly parsed.
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn params(p: Params) -> Result<HashMap<String, String>, RestError> {
    p.map(|Query(q)| q)
        .map_err(|e| RestError::BadRequest(format!("query: {}", e.body_text())))
}

/// A non-negative integer parameter, if present.
fn number(q: &HashMap<String, String>, key: &str) -> Result<Option<u64>, RestError> {
    match q.get(key).map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            RestError::BadRequest(format!("{key} must be a non-negative integer below 2^64"))
        }),
    }
}

async fn conversations(
    State(s): AppState,
    Path(account): Path<String>,
    headers: HeaderMap,
    q: Params,
) -> Response {
    let reply = async {
        gate(&s, Endpoint::Conversations).await?;
        let state = s.world();
        let user = authenticate(&state, &headers)?;
        let account_id = account_of(&state, user, &account)?;
        let q = params(q)?;
        let status = match q.get("status").map(String::as_str) {
            None | Some("") => StatusFilter::Only(ConversationStatus::Open),
            Some("all") => StatusFilter::All,
            Some(name) => {
                StatusFilter::Only(ConversationStatus::from_name(name).ok_or_else(|| {
                    RestError::BadRequest(
                        "status must be open, resolved, pending, snoozed or all".into(),
                    )
                })?)
            }
        };
        let updated_after_ms = number(&q, "updated_within")?
            .map(|secs| unix_ms().saturating_sub(secs.saturating_mul(1000)));
        let page = number(&q, "page")?.unwrap_or(1);
        let store = lock(&s.store);
        let (counts, list) = store.conversations(&ConversationQuery {
            account_id,
            user,
            status,
            updated_after_ms,
            page,
        });
        let payload: Vec<Value> = list
            .iter()
            .map(|c| conversation_json(&state, c, &store))
            .collect();
        let body = json!({ "data": { "meta": counts, "payload": payload } });
        Ok(Json(body).into_response())
    }
    .await;
    counted(&s, reply)
}

async fn messages(
    State(s): AppState,
    Path((account, conversation)): Path<(String, String)>,
    headers: HeaderMap,
    q: Params,
) -> Response {
    let reply = async {
        gate(&s, Endpoint::Messages).await?;
        let state = s.world();
        let user = authenticate(&state, &headers)?;
        let account_id = account_of(&state, user, &account)?;
        let conversation: u64 = conversation.parse().map_err(|_| RestError::NotFound)?;
        let q = params(q)?;
        let query = match (number(&q, "after")?, number(&q, "before")?) {
            (Some(a), Some(b)) => MessageQuery::Between(a, b),
            (Some(a), None) => MessageQuery::After(a),
            (None, Some(b)) => MessageQuery::Before(b),
            (None, None) => MessageQuery::Latest,
        };
        let store = lock(&s.store);
        let record = store
            .conversation(conversation)
            .filter(|c| c.account_id == account_id)
            .ok_or(RestError::NotFound)?;
        let contact = &state.world.contacts[record.contact];
        let mut meta = json!({
            "labels": [],
            "additional_attributes": {},
            "contact": actor_json(&state, Sender::Contact(contact.id)),
            "agent_last_seen_at": Value::Null,
            "assignee_last_seen_at": Value::Null,
        });
        if let Some(a) = record.assignee.and_then(|i| state.world.users.get(i)) {
            meta["assignee"] = actor_json(&state, Sender::User(a.id));
        }
        let payload: Vec<Value> = store
            .messages(conversation, query)
            .into_iter()
            .map(|m| message_json(&state, m))
            .collect();
        Ok(Json(json!({ "meta": meta, "payload": payload })).into_response())
    }
    .await;
    counted(&s, reply)
}

/// A user's or contact's `push_event_data`, as in event payloads.
fn actor_json(state: &WorldState, who: Sender) -> Value {
    let text = match who {
        Sender::User(id) => state.world.user(id).map(crate::payload::user_json),
        Sender::Contact(id) => state.world.contact(id).map(crate::payload::contact_json),
    };
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// Chatwoot's `models/_message` partial.
fn message_json(state: &WorldState, m: &StoredMessage) -> Value {
    json!({
        "id": m.id,
        "content": &*m.content,
        "inbox_id": m.inbox_id,
        "conversation_id": m.conversation_id,
        "message_type": m.message_type,
        "content_type": "text",
        "status": "sent",
        "additional_attributes": {},
        "content_attributes": {},
        "created_at": m.created_at,
        "private": m.private,
        "source_id": Value::Null,
        "sender": actor_json(state, m.sender),
    })
}

/// `Message#push_event_data` (the `messages` of a conversation).
fn push_event_json(state: &WorldState, m: &StoredMessage) -> Value {
    let (sender_type, sender_id) = match m.sender {
        Sender::User(id) => ("User", id),
        Sender::Contact(id) => ("Contact", id),
    };
    json!({
        "id": m.id,
        "content": &*m.content,
        "account_id": m.account_id,
        "inbox_id": m.inbox_id,
        "conversation_id": m.conversation_id,
        "message_type": m.message_type,
        "created_at": m.created_at,
        "private": m.private,
        "status": "sent",
        "source_id": Value::Null,
        "content_type": "text",
        "content_attributes": {},
        "sender_type": sender_type,
        "sender_id": sender_id,
        "external_source_ids": {},
        "additional_attributes": {},
        "processed_message_content": &*m.content,
        "sentiment": {},
        "sender": actor_json(state, m.sender),
    })
}

/// Chatwoot's `conversations/partials/_conversation`.
fn conversation_json(
    state: &WorldState,
    c: &ConversationRecord,
    store: &crate::store::Store,
) -> Value {
    let contact = &state.world.contacts[c.contact];
    let last = store.last_message(c.id);
    let last_json = last.map(|m| push_event_json(state, m));
    let assignee = c.assignee.and_then(|i| state.world.users.get(i));
    let mut meta = json!({
        "sender": actor_json(state, Sender::Contact(contact.id)),
        "channel": "Channel::WebWidget",
        "hmac_verified": false,
    });
    if let Some(a) = assignee {
        meta["assignee"] = actor_json(state, Sender::User(a.id));
        meta["assignee_type"] = json!("User");
    }
    let last_activity = c.last_activity_ms / 1000;
    json!({
        "meta": meta,
        "id": c.id,
        "messages": last_json.iter().collect::<Vec<_>>(),
        "account_id": c.account_id,
        "uuid": format!("00000000-0000-4000-8000-{:012x}", c.id),
        "additional_attributes": {},
        "agent_last_seen_at": 0,
        "assignee_last_seen_at": 0,
        "can_reply": true,
        "contact_last_seen_at": 0,
        "custom_attributes": {},
        "inbox_id": c.inbox_id,
        "labels": [],
        "muted": false,
        "snoozed_until": Value::Null,
        "status": c.status.as_str(),
        "created_at": c.created_at,
        "updated_at": c.updated_at_ms as f64 / 1000.0,
        "timestamp": last_activity,
        "first_reply_created_at": 0,
        "unread_count": 0,
        "last_non_activity_message": last_json,
        "last_activity_at": last_activity,
        "priority": Value::Null,
        "waiting_since": 0,
        "sla_policy_id": Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_plan_counts_expires_and_scopes() {
        let now = Instant::now();
        let mut plan = FaultPlan::default();
        let throttle = RestFault::TooManyRequests {
            retry_after_secs: 2,
        };
        plan.add(
            RestFaultSpec {
                fault: throttle,
                span: FaultSpan::Requests(2),
                endpoint: Some(Endpoint::Messages),
            },
            now,
        );
        plan.add(
            RestFaultSpec {
                fault: RestFault::ServerError,
                span: FaultSpan::For(Duration::from_secs(1)),
                endpoint: None,
            },
            now,
        );
        let steps: &[(Endpoint, u64, Option<RestFault>)] = &[
            (Endpoint::Profile, 0, Some(RestFault::ServerError)),
            (Endpoint::Messages, 0, Some(throttle)),
            (Endpoint::Messages, 10, Some(throttle)),
            (Endpoint::Messages, 20, Some(RestFault::ServerError)),
            (Endpoint::Conversations, 999, Some(RestFault::ServerError)),
            (Endpoint::Conversations, 1_000, None),
            (Endpoint::Messages, 2_000, None),
        ];
        for (endpoint, at_ms, want) in steps {
            let got = plan.take(*endpoint, now + Duration::from_millis(*at_ms));
            assert_eq!(got, *want, "{endpoint:?} at {at_ms} ms");
        }
        plan.add(
            RestFaultSpec {
                fault: RestFault::Slow { delay_ms: 5 },
                span: FaultSpan::Requests(1),
                endpoint: None,
            },
            now,
        );
        plan.clear();
        assert_eq!(plan.take(Endpoint::Profile, now), None);
    }
}
