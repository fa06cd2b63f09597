//! A thin client for the platform's REST API: the profile, the conversations updated lately and
//! a conversation's messages. Requests are paced (a token bucket at `rate` per second), bounded
//! in flight (`concurrency`), time-limited, and retried on 429 (after `Retry-After`), 5xx,
//! timeouts and transport errors by [`RetryPolicy`]; a 401 or 404 is not retried.
//!
//! The API access token travels in the `api_access_token` header only; no URL, error or log
//! line holds it.

use super::telemetry::{self as t, CatchupMetrics};
use crate::connection::ConnectLimiter;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use voxsig_protocol::backoff::{Backoff, Jitter, Rng};
use voxsig_protocol::PubsubToken;

/// Most messages one `after=` page returns (the platform's limit).
pub const PAGE: usize = 100;

/// A user's API access token. `Debug`/`Display` show only a redacted form.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(PubsubToken);

impl ApiToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        ApiToken(PubsubToken::new(token))
    }

    /// The secret itself, for the request header. Never log it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// `tok…` and the last characters.
    pub fn redacted(&self) -> String {
        self.0.redacted()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Which endpoint a request went to (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /api/v1/profile`.
    Profile,
    /// `GET /api/v1/accounts/{id}/conversations`.
    Conversations,
    /// `GET /api/v1/accounts/{id}/conversations/{display_id}/messages`.
    Messages,
}

impl Endpoint {
    /// Every endpoint, for pre-registered series.
    pub const ALL: [Endpoint; 3] = [
        Endpoint::Profile,
        Endpoint::Conversations,
        Endpoint::Messages,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Profile => "profile",
            Endpoint::Conversations => "conversations",
            Endpoint::Messages => "messages",
        }
    }
}

/// Why a request failed. Never holds the token (it is in a header, never in the URL).
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// 401: the API access token is wrong or revoked.
    #[error("401 unauthorized: the api_access_token is not accepted")]
    Unauthorized,
    /// 404.
    #[error("404 not found")]
    NotFound,
    /// 429: too many requests.
    #[error("429 too many requests")]
    RateLimited {
        /// The server's `Retry-After`, when given in seconds.
        retry_after: Option<Duration>,
    },
    /// 5xx.
    #[error("server error {0}")]
    Server(u16),
    /// Another 4xx.
    #[error("client error {0}")]
    Client(u16),
    /// No answer within the request timeout.
    #[error("timed out")]
    Timeout,
    /// Connection refused, reset, TLS failure…
    #[error("transport: {0}")]
    Transport(#[source] TransportError),
    /// The body is not what the endpoint returns.
    #[error("unexpected body: {0}")]
    Decode(#[source] DecodeError),
}

/// Why no answer came back (a [`RestError::Transport`]).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The HTTP client failed (connect, TLS, reset…). Held without its URL
    /// ([`reqwest::Error::without_url`]), so the message names no host, path or query.
    #[error("{0}")]
    Http(#[source] reqwest::Error),
    /// The client is shutting down (its in-flight bound is closed).
    #[error("client closed")]
    Closed,
}

impl From<reqwest::Error> for TransportError {
    fn from(e: reqwest::Error) -> Self {
        TransportError::Http(e.without_url())
    }
}

/// Why an answer is not what the endpoint returns (a [`RestError::Decode`]).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the JSON the endpoint returns.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// Larger than [`MAX_BODY_BYTES`].
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// A list answer without a `payload` list.
    #[error("no `payload` list")]
    NoPayload,
    /// The profile's `pubsub_token` is empty.
    #[error("the profile has an empty pubsub_token")]
    EmptyPubsubToken,
    /// A conversation has more message pages than a catch-up follows.
    #[error("conversation {display_id}: more than {pages} pages of messages")]
    TooManyPages {
        /// The conversation's display id.
        display_id: u64,
        /// The page limit.
        pages: usize,
    },
}

impl From<DecodeError> for RestError {
    fn from(e: DecodeError) -> Self {
        RestError::Decode(e)
    }
}

impl From<serde_json::Error> for RestError {
    fn from(e: serde_json::Error) -> Self {
        RestError::Decode(DecodeError::Json(e))
    }
}

impl RestError {
    /// Every result label, including `ok`.
    pub const RESULTS: [&'static str; 9] = [
        "ok",
        "unauthorized",
        "not_found",
        "rate_limited",
        "server_error",
        "client_error",
        "timeout",
        "transport",
        "decode",
    ];

    /// The metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            RestError::Unauthorized => "unauthorized",
            RestError::NotFound => "not_found",
            RestError::RateLimited { .. } => "rate_limited",
            RestError::Server(_) => "server_error",
            RestError::Client(_) => "client_error",
            RestError::Timeout => "timeout",
            RestError::Transport(_) => "transport",
            RestError::Decode(_) => "decode",
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after this long.
    After(Duration),
    /// Stop: the error is final (or attempts are used up).
    GiveUp,
}

/// When failed requests are retried: a pure function of the error and the attempt.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Back-off for 5xx, timeouts and transport errors (and 429 without `Retry-After`).
    pub backoff: Backoff,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured (a longer one is cut to this).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
                jitter: Jitter::Equal,
            },
            max_attempts: 5,
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// After failed attempt number `attempt` (1-based) with `error`.
    pub fn decide(&self, error: &RestError, attempt: u32, rng: &mut Rng) -> Retry {
        if attempt >= self.max_attempts {
            return Retry::GiveUp;
        }
        match error {
            RestError::Unauthorized
            | RestError::NotFound
            | RestError::Client(_)
            | RestError::Decode(_) => Retry::GiveUp,
            RestError::RateLimited {
                retry_after: Some(wait),
            } => Retry::After((*wait).min(self.max_retry_after)),
            RestError::RateLimited { retry_after: None }
            | RestError::Server(_)
            | RestError::Timeout
            | RestError::Transport(_) => {
                Retry::After(self.backoff.delay(attempt.saturating_sub(1), rng))
            }
        }
    }
}

/// One object of a list answer, kept as the bytes the API returned, with the ids picked out.
#[derive(Debug, Clone)]
pub struct Item {
    /// The JSON object, byte-identical to the API's answer.
    pub raw: Box<RawValue>,
    /// `id` (a message's id; a conversation's display id).
    pub id: u64,
    /// `inbox_id`.
    pub inbox_id: Option<u64>,
    /// `conversation_id` (for a message: the conversation's display id).
    pub conversation_id: Option<u64>,
    /// `created_at` (Unix seconds), when an integer.
    pub created_at: Option<i64>,
}

#[derive(Deserialize)]
struct Probe {
    id: u64,
    #[serde(default)]
    inbox_id: Option<u64>,
    #[serde(default)]
    conversation_id: Option<u64>,
    #[serde(default)]
    created_at: Option<serde_json::Value>,
}

/// `GET /api/v1/profile`, the parts the bridge uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    /// The user's id.
    pub id: u64,
    /// The user's current pubsub token.
    pub pubsub_token: String,
    /// The accounts the user belongs to.
    #[serde(default)]
    pub accounts: Vec<ProfileAccount>,
}

/// One account of a profile.
#[derive(Debug, Clone, Deserialize)]
pub struct ProfileAccount {
    /// The account's id.
    pub id: u64,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// The user's role there (`administrator`, `agent`).
    #[serde(default)]
    pub role: Option<String>,
}

/// The REST client, shared by every catch-up and profile check.
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    pace: ConnectLimiter,
    permits: Semaphore,
    policy: RetryPolicy,
    metrics: CatchupMetrics,
    rng: std::sync::Mutex<Rng>,
}

/// How to build a [`RestClient`].
#[derive(Debug, Clone)]
pub struct RestSettings {
    /// `https://host` (no trailing slash needed).
    pub base: String,
    /// Requests per second.
    pub rate: f64,
    /// Requests in flight.
    pub concurrency: usize,
    /// Per-request time limit.
    pub timeout: Duration,
    /// Retries.
    pub policy: RetryPolicy,
}

impl RestClient {
    /// A client with `tls` (the same roots as the WebSocket).
    pub fn new(
        settings: RestSettings,
        tls: Option<rustls::ClientConfig>,
        metrics: CatchupMetrics,
    ) -> Result<Self, RestError> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("voxsig-bridge/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder
            .build()
            .map_err(|e| RestError::Transport(e.into()))?;
        Ok(RestClient {
            http,
            base: settings.base.trim_end_matches('/').to_owned(),
            pace: ConnectLimiter::new(settings.rate),
            permits: Semaphore::new(settings.concurrency.max(1)),
            policy: settings.policy,
            metrics,
            rng: std::sync::Mutex::new(Rng::new(0x5e57_c11e)),
        })
    }

    /// The user's profile.
    pub async fn profile(&self, token: &ApiToken) -> Result<Profile, RestError> {
        let body = self
            .get(Endpoint::Profile, "/api/v1/profile".into(), token)
            .await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Every conversation of `account` updated in the last `seconds` (any status).
    pub async fn conversations(
        &self,
        token: &ApiToken,
        account: u64,
        seconds: u64,
    ) -> Result<Vec<Item>, RestError> {
        let path =
            format!("/api/v1/accounts/{account}/conversations?updated_within={seconds}&status=all");
        let body = self.get(Endpoint::Conversations, path, token).await?;
        items(&body)
    }

    /// The messages of conversation `display_id` with ids above `after`, oldest first, at most
    /// [`PAGE`].
    pub async fn messages(
        &self,
        token: &ApiToken,
        account: u64,
        display_id: u64,
        after: u64,
    ) -> Result<Vec<Item>, RestError> {
        let path =
            format!("/api/v1/accounts/{account}/conversations/{display_id}/messages?after={after}");
        let body = self.get(Endpoint::Messages, path, token).await?;
        items(&body)
    }

    /// One GET with pacing, the in-flight bound and retries.
    async fn get(
        &self,
        endpoint: Endpoint,
        path: String,
        token: &ApiToken,
    ) -> Result<bytes::Bytes, RestError> {
        let url = format!("{}{}", self.base, path);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| RestError::Transport(TransportError::Closed))?;
                self.pace.wait().await;
                let started = Instant::now();
                let result = self.once(&url, token).await;
                t::emit(
                    &self.metrics,
                    t::RestRequest {
                        endpoint,
                        result: result.as_ref().map(|_| ()),
                        took: started.elapsed(),
                    },
                );
                result
            };
            let error = match result {
                Ok(body) => return Ok(body),
                Err(e) => e,
            };
            let decision = {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                self.policy.decide(&error, attempt, &mut rng)
            };
            match decision {
                Retry::GiveUp => return Err(error),
                Retry::After(wait) => {
                    t::emit(
                        &self.metrics,
                        t::RestRetry {
                            endpoint,
                            error: &error,
                            attempt,
                            wait,
                        },
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn once(&self, url: &str, token: &ApiToken) -> Result<bytes::Bytes, RestError> {
        let mut header = reqwest::header::HeaderValue::from_str(token.expose())
            .map_err(|_| RestError::Client(0))?;
        header.set_sensitive(true);
        let response = self
            .http
            .get(url)
            .header("api_access_token", header)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        match status {
            200..=299 => read_bounded(response).await,
            401 => Err(RestError::Unauthorized),
            404 => Err(RestError::NotFound),
            429 => Err(RestError::RateLimited {
                retry_after: response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
            }),
            500..=599 => Err(RestError::Server(status)),
            _ => Err(RestError::Client(status)),
        }
    }
}

/// The largest body read (a conversation list of a busy account is well under 1 MiB).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Reads a body, refusing one larger than [`MAX_BODY_BYTES`] without buffering it all.
async fn read_bounded(mut response: reqwest::Response) -> Result<bytes::Bytes, RestError> {
    let too_large = || RestError::Decode(DecodeError::TooLarge);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn transport(e: reqwest::Error) -> RestError {
    if e.is_timeout() {
        RestError::Timeout
    } else {
        // Without the URL (see `TransportError::Http`): keep errors short and uniform.
        RestError::Transport(e.into())
    }
}

/// The objects of a list answer: `{"payload": [...]}` (messages) or
/// `{"data": {"payload": [...]}}` (conversations).
pub fn items(body: &[u8]) -> Result<Vec<Item>, RestError> {
    #[derive(Deserialize)]
    struct Flat {
        payload: Vec<Box<RawValue>>,
    }
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        payload: Option<Vec<Box<RawValue>>>,
        #[serde(default)]
        data: Option<Box<RawValue>>,
    }
    let body: Body = serde_json::from_slice(body)?;
    let raws = match (body.payload, body.data) {
        (Some(payload), _) => payload,
        (None, Some(data)) => serde_json::from_str::<Flat>(data.get())?.payload,
        (None, None) => return Err(DecodeError::NoPayload.into()),
    };
    raws.into_iter()
        .map(|raw| {
            let probe: Probe = serde_json::from_str(raw.get())?;
            Ok(Item {
                id: probe.id,
                inbox_id: probe.inbox_id,
                conversation_id: probe.conversation_id,
                created_at: match probe.created_at {
                    Some(serde_json::Value::Number(n)) => n.as_i64(),
                    _ => None,
                },
                raw,
            })
        })
        .collect()
}

/// A shared client.
pub type SharedClient = Arc<RestClient>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_table() {
        let p = RetryPolicy {
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(8),
                jitter: Jitter::None,
            },
            max_attempts: 4,
            max_retry_after: Duration::from_secs(60),
        };
        let mut rng = Rng::new(1);
        let s = Duration::from_secs;
        let cases = [
            (RestError::Unauthorized, 1, Retry::GiveUp),
            (RestError::NotFound, 1, Retry::GiveUp),
            (RestError::Client(400), 1, Retry::GiveUp),
            (RestError::Decode(DecodeError::NoPayload), 1, Retry::GiveUp),
            (RestError::Server(500), 1, Retry::After(s(1))),
            (RestError::Server(503), 2, Retry::After(s(2))),
            (RestError::Timeout, 3, Retry::After(s(4))),
            (RestError::Timeout, 4, Retry::GiveUp),
            (
                RestError::Transport(TransportError::Closed),
                1,
                Retry::After(s(1)),
            ),
            (
                RestError::RateLimited {
                    retry_after: Some(s(7)),
                },
                1,
                Retry::After(s(7)),
            ),
            (
                RestError::RateLimited {
                    retry_after: Some(s(600)),
                },
                1,
                Retry::After(s(60)),
            ),
            (
                RestError::RateLimited { retry_after: None },
                2,
                Retry::After(s(2)),
            ),
        ];
        for (error, attempt, want) in cases {
            assert_eq!(
                p.decide(&error, attempt, &mut rng),
                want,
                "{error:?} #{attempt}"
            );
        }
    }

    #[test]
    fn list_bodies_of_both_shapes_keep_the_bytes() {
        let messages = br#"{"meta":{"labels":[]},"payload":[{"id":7,"content":"a \"b\"","conversation_id":3,"inbox_id":2,"created_at":1700000000},{"id":8,"conversation_id":3}]}"#;
        let items = items(messages).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].id, 7);
        assert_eq!(items[0].conversation_id, Some(3));
        assert_eq!(items[0].created_at, Some(1_700_000_000));
        assert_eq!(
            items[0].raw.get(),
            r#"{"id":7,"content":"a \"b\"","conversation_id":3,"inbox_id":2,"created_at":1700000000}"#
        );
        let conversations = br#"{"data":{"meta":{"all_count":1},"payload":[{"id":3,"inbox_id":2,"status":"resolved"}]}}"#;
        let items = super::items(conversations).unwrap();
        assert_eq!((items[0].id, items[0].inbox_id), (3, Some(2)));
    }

    #[test]
    fn hostile_bodies_are_decode_errors() {
        for body in [
            &b""[..],
            b"null",
            b"{}",
            b"{\"payload\":{}}",
            b"{\"payload\":[{\"id\":\"x\"}]}",
            b"{\"payload\":[1]}",
            b"<html>",
        ] {
            assert!(matches!(items(body), Err(RestError::Decode(_))), "{body:?}");
        }
    }

    #[tokio::test]
    async fn transport_errors_keep_their_cause_and_name_no_url() {
        // Port 9 (discard) on loopback: refused at once.
        let e = reqwest::Client::new()
            .get("http://127.0.0.1:9/api/v1/x?api_access_token=secretQuery123")
            .send()
            .await
            .unwrap_err();
        let error = transport(e);
        assert!(
            matches!(error, RestError::Transport(TransportError::Http(_))),
            "{error:?}"
        );
        let mut text = format!("{error} {error:?}");
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(&format!(" {cause}"));
            source = cause.source();
        }
        assert!(
            !text.contains("secretQuery") && !text.contains("/api/v1/x"),
            "{text}"
        );
    }

    #[test]
    fn tokens_are_redacted() {
        let t = ApiToken::new("secretApiToken1234567890");
        assert!(!format!("{t:?}").contains("secretApi"));
    }
}
