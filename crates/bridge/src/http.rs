//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive), `/readyz` (the sink is connected and enough subscriptions are confirmed) and
//! `/status` (JSON per subscription and socket, tokens redacted).

use crate::status::{now_ms, SocketState, StatusBoard, SubState};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Gauge, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use voxsig_sinks::SinkHealthWatch;

/// Gauges computed from the live state when scraped.
#[derive(Clone)]
pub struct Gauges {
    sockets: IntGaugeVec,
    subscriptions: IntGaugeVec,
    last_ping_age: Gauge,
    ready: IntGauge,
}

impl Gauges {
    /// Registers the gauges (and `voxsig_bridge_build_info`) in `registry`.
    pub fn register(registry: &Registry) -> Result<Gauges, prometheus::Error> {
        let sockets = IntGaugeVec::new(
            Opts::new("voxsig_bridge_sockets", "WebSocket connections by state."),
            &["state"],
        )?;
        let subscriptions = IntGaugeVec::new(
            Opts::new("voxsig_bridge_subscriptions", "Subscriptions by state."),
            &["state"],
        )?;
        let last_ping_age = Gauge::new(
            "voxsig_bridge_last_ping_age_seconds",
            "Seconds since the last ActionCable ping on the open socket that heard one longest ago.",
        )?;
        let ready = IntGauge::new("voxsig_bridge_ready", "1 when /readyz answers 200.")?;
        let build = IntGaugeVec::new(
            Opts::new("voxsig_bridge_build_info", "Build information."),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [&sockets, &subscriptions, &build] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(last_ping_age.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Gauges {
            sockets,
            subscriptions,
            last_ping_age,
            ready,
        })
    }
}

/// What the endpoints read.
#[derive(Clone)]
pub struct HttpState {
    /// Every metric.
    pub registry: Registry,
    /// Live state.
    pub status: Arc<StatusBoard>,
    /// Scrape-time gauges.
    pub gauges: Gauges,
    /// Whether the sink holds a broker connection.
    pub sink: SinkHealthWatch,
    /// The share of subscriptions that must be confirmed for `/readyz`.
    pub ready_fraction: f64,
}

/// The answer of `/readyz`.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// Whether the bridge is ready.
    pub ready: bool,
    /// Whether the sink reports a broker connection.
    pub sink_connected: bool,
    /// Confirmed subscriptions.
    pub confirmed: usize,
    /// All subscriptions.
    pub subscriptions: usize,
    /// The share required.
    pub required_fraction: f64,
}

impl HttpState {
    /// Updates the scrape-time gauges and says whether the bridge is ready.
    pub fn refresh(&self) -> Readiness {
        for (state, n) in self.status.socket_counts() {
            self.gauges
                .sockets
                .with_label_values(&[state.label()])
                .set(n as i64);
        }
        let mut confirmed = 0;
        for (state, n) in self.status.sub_counts() {
            self.gauges
                .subscriptions
                .with_label_values(&[state.label()])
                .set(n as i64);
            if state == SubState::Confirmed {
                confirmed = n;
            }
        }
        let oldest = self.status.oldest_ping_ms();
        let age = if oldest > 0 {
            (now_ms() - oldest).max(0) as f64 / 1000.0
        } else {
            0.0
        };
        self.gauges.last_ping_age.set(age);
        let subscriptions = self.status.subscriptions().len();
        let sink_connected = self.sink.get().is_connected();
        let enough =
            subscriptions > 0 && confirmed as f64 >= self.ready_fraction * subscriptions as f64;
        let ready = sink_connected && enough;
        self.gauges.ready.set(i64::from(ready));
        Readiness {
            ready,
            sink_connected,
            confirmed,
            subscriptions,
            required_fraction: self.ready_fraction,
        }
    }
}

/// The endpoints as an axum router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state)
}

/// Binds `addr` and serves the endpoints until the runtime stops. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics /healthz /readyz /status");
    Ok((bound, task))
}

async fn metrics(State(state): State<HttpState>) -> Response {
    state.refresh();
    let mut body = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let readiness = state.refresh();
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness)).into_response()
}

#[derive(Serialize)]
struct StatusBody {
    version: &'static str,
    readiness: Readiness,
    sockets_open: usize,
    #[serde(flatten)]
    board: crate::status::Snapshot,
}

async fn status(State(state): State<HttpState>) -> Json<StatusBody> {
    let readiness = state.refresh();
    let sockets_open = state
        .status
        .socket_counts()
        .iter()
        .find(|(s, _)| *s == SocketState::Open)
        .map_or(0, |(_, n)| *n);
    Json(StatusBody {
        version: env!("CARGO_PKG_VERSION"),
        readiness,
        sockets_open,
        board: state.status.snapshot(),
    })
}
