//! The running bridge: builds the shared pieces, spreads subscriptions over sockets, starts the
//! sink and the connection tasks, and shuts everything down in order.

use crate::catchup::checkpoint::CheckpointFile;
use crate::catchup::rest::{RestClient, RestSettings, RetryPolicy};
use crate::catchup::telemetry::CatchupMetrics;
use crate::catchup::{self, Catchup, SubInfo};
use crate::config::{Presence, Settings};
use crate::connection::{self, ConnectLimiter, Member, Shared};
use crate::dedup::Dedup;
use crate::http::{Gauges, HttpState};
use crate::route::{Receiver, Router};
use crate::status::StatusBoard;
use crate::telemetry::BridgeMetrics;
use prometheus::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::Connector;
use voxsig_protocol::SessionConfig;
use voxsig_sinks::{BufferWriter, DrainReport, Sink, SinkHandle, SinkMetrics};

/// How long sockets get to stop reading before the buffer is closed under them (at most a
/// quarter of the drain timeout: the whole shutdown fits in `drain_timeout`).
const STOP_READING_GRACE: Duration = Duration::from_secs(2);

/// The exit code of `voxsig-bridge run` when it stopped (SIGTERM/SIGINT) with records of the
/// memory buffer still undelivered at the drain deadline: they are lost. (1 is any other error;
/// 0 a clean stop, including a disk buffer keeping undelivered records for the next start.)
pub const EXIT_RECORDS_LOST: u8 = 3;

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The sink could not be built.
    #[error("sink: {0}")]
    Sink(String),
    /// TLS could not be set up.
    #[error("source.ca_file: {0}")]
    Tls(String),
    /// The buffer could not be opened (disk buffer: directory unusable, newer format).
    #[error(transparent)]
    Buffer(#[from] voxsig_sinks::BufferError),
    /// The REST client could not be built.
    #[error("source.api_url: {0}")]
    Rest(String),
    /// An entry's profile could not be read at start.
    #[error("{0}")]
    Discovery(#[from] catchup::profile::DiscoveryError),
    /// No subscription is left (every entry resolved to nothing).
    #[error("accounts: no subscriptions after reading the profiles")]
    NoAccounts,
}

/// A running bridge.
pub struct Bridge {
    shutdown: watch::Sender<bool>,
    connections: JoinSet<()>,
    writer: BufferWriter,
    sink: SinkHandle,
    status: Arc<StatusBoard>,
    metrics: BridgeMetrics,
    sink_metrics: SinkMetrics,
    sockets: usize,
    http: HttpState,
    catchup: tokio::task::JoinHandle<()>,
    catchup_state: Arc<Catchup>,
}

impl Bridge {
    /// Starts the bridge with the configured sink, registering metrics into `registry`.
    pub async fn start(settings: Settings, registry: &Registry) -> Result<Bridge, StartError> {
        let instance = instance_name();
        let sink = settings
            .sink
            .build_with(&instance, settings.config.cloudevents().as_ref())
            .map_err(|e| StartError::Sink(e.to_string()))?;
        Self::start_with_sink(settings, sink, registry).await
    }

    /// Starts the bridge with a given sink (tests, `tail`, the demo).
    pub async fn start_with_sink(
        mut settings: Settings,
        sink: Box<dyn Sink>,
        registry: &Registry,
    ) -> Result<Bridge, StartError> {
        let catchup_metrics = CatchupMetrics::register(registry)?;
        let tls = tls_config(settings.config.source.ca_file.as_deref())?;
        let wants_rest = !settings.discover.is_empty()
            || settings.accounts.iter().any(|a| a.api_token.is_some());
        let client = if wants_rest {
            let c = &settings.config.catchup;
            let client = RestClient::new(
                RestSettings {
                    base: settings.config.source.api_base(),
                    rate: c.rate,
                    concurrency: c.concurrency,
                    timeout: c.request_timeout,
                    policy: RetryPolicy::default(),
                },
                Some(tls.clone()),
                catchup_metrics.clone(),
            )
            .map_err(|e| StartError::Rest(e.to_string()))?;
            Some(Arc::new(client))
        } else {
            None
        };
        if let Some(client) = &client {
            catchup::profile::discover(&mut settings, client).await?;
        }
        if settings.accounts.is_empty() {
            return Err(StartError::NoAccounts);
        }
        let config = &settings.config;
        let per_account = config
            .metrics
            .per_account_labels
            .then_some(config.metrics.max_accounts);
        let metrics = BridgeMetrics::register(registry, per_account)?;
        let sink_metrics = SinkMetrics::register(registry)?;
        let gauges = Gauges::register(registry)?;
        let (writer, reader) =
            voxsig_sinks::open_buffer(config.buffer.clone(), sink_metrics.clone())?;
        // The sink actually running (`tail` and the demo bring their own), not the configured one.
        let sink_kind = sink.kind();
        let sink = voxsig_sinks::spawn(sink, reader);

        let per_socket = config.source.subscriptions_per_connection.max(1);
        let groups: Vec<Vec<usize>> = (0..settings.accounts.len())
            .collect::<Vec<_>>()
            .chunks(per_socket)
            .map(<[usize]>::to_vec)
            .collect();
        let status = Arc::new(StatusBoard::new(
            settings
                .accounts
                .iter()
                .enumerate()
                .map(|(i, a)| (a.account_id, a.user_id, a.token.clone(), i / per_socket))
                .collect(),
            groups.len(),
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut rotation_rx = Vec::with_capacity(groups.len());
        let mut rotation_tx = Vec::with_capacity(groups.len());
        for _ in 0..groups.len() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            rotation_tx.push(tx);
            rotation_rx.push(rx);
        }
        let receivers: Vec<Receiver> = settings
            .accounts
            .iter()
            .map(|a| Receiver {
                account_id: a.account_id,
                user_id: a.user_id,
                labels: a.labels.clone(),
            })
            .collect();
        let (catchup_state, jobs) = Catchup::new(catchup::Parts {
            config: config.catchup.clone(),
            metrics: catchup_metrics,
            client,
            subs: settings
                .accounts
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    (
                        SubInfo {
                            account: a.account_id,
                            user_id: a.user_id,
                            token: a.token.clone(),
                            api_token: a.api_token.clone(),
                            entry: a.entry.clone(),
                            conn: i / per_socket,
                        },
                        receivers[i].clone(),
                    )
                })
                .collect(),
            rotations: rotation_tx,
            status: status.clone(),
        });
        let catchup_state = Arc::new(catchup_state);
        let checkpoint = config.state.dir.as_deref().map(CheckpointFile::in_dir);
        if let Some(file) = &checkpoint {
            match file.load() {
                Ok(Some(cp)) => catchup_state.restored(&cp),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up checkpoint unreadable: starting without it")
                }
            }
        }
        let charset = settings.sink.value_charset();
        let sink_config = settings.sink.clone();
        let router = Router::new(
            settings.topic.clone(),
            settings.key.clone(),
            settings.filter.clone(),
            config.route.payload,
            charset,
            Box::new(move |topic| sink_config.check_topic(topic).map_err(|e| e.to_string())),
        );
        let router = match config.cloudevents() {
            Some(ce) => router.with_cloudevents(ce, settings.sink.cloudevents_mode()),
            None => router,
        };
        let source = &config.source;
        let shared = Arc::new(Shared {
            url: source.url.clone(),
            origin: source
                .origin
                .clone()
                .unwrap_or_else(|| origin_of(&source.url)),
            session: SessionConfig {
                presence_interval: source.presence_interval,
                stale_after: source.stale_after,
                confirm_timeout: source.confirm_timeout,
                max_frame_bytes: source.max_frame_bytes,
                presence: source.presence == Presence::On,
                seed: seed(),
                ..SessionConfig::default()
            },
            read_buffer_bytes: source.read_buffer_bytes,
            tcp_nodelay: source.tcp_nodelay,
            reconnect: source.reconnect.policy(),
            after_refusal: source.reconnect.after_refusal,
            tls: Some(Connector::Rustls(Arc::new(tls))),
            router,
            dedup: config
                .dedup
                .enabled
                .then(|| Dedup::new(config.dedup.window, config.dedup.max_entries)),
            buffer: writer.clone(),
            metrics: metrics.clone(),
            status: status.clone(),
            limiter: ConnectLimiter::new(source.connect_rate),
            shutdown: shutdown_rx.clone(),
            catchup: catchup_state.clone(),
        });
        let catchup_task = catchup::spawn(shared.clone(), jobs, checkpoint, shutdown_rx);
        let mut connections = JoinSet::new();
        let sockets = groups.len();
        for ((conn, group), rotations) in groups.into_iter().enumerate().zip(rotation_rx) {
            let members = group
                .into_iter()
                .map(|i| Member {
                    index: i,
                    identifier: settings.accounts[i].identifier(),
                    receiver: receivers[i].clone(),
                })
                .collect();
            connections.spawn(connection::run(shared.clone(), conn, members, rotations));
        }
        tracing::info!(
            subscriptions = settings.accounts.len(),
            sockets,
            sink = sink_kind,
            topic = settings.topic.as_str(),
            "bridge started"
        );
        let http = HttpState {
            registry: registry.clone(),
            status: status.clone(),
            gauges,
            ready_fraction: config.metrics.ready_fraction,
        };
        Ok(Bridge {
            shutdown,
            connections,
            writer,
            sink,
            status,
            metrics,
            sink_metrics,
            sockets,
            http,
            catchup: catchup_task,
            catchup_state,
        })
    }

    /// The catch-up state (gap book, ledger).
    pub fn catchup(&self) -> Arc<Catchup> {
        self.catchup_state.clone()
    }

    /// Serves `/metrics`, `/healthz`, `/readyz` and `/status` on `addr` (port 0 picks one).
    pub async fn serve_http(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<std::net::SocketAddr> {
        let (bound, _task) = crate::http::serve(addr, self.http.clone()).await?;
        Ok(bound)
    }

    /// What the HTTP endpoints read, e.g. to check readiness in-process.
    pub fn http_state(&self) -> &HttpState {
        &self.http
    }

    /// The live state board.
    pub fn status(&self) -> Arc<StatusBoard> {
        self.status.clone()
    }

    /// The runtime's counters.
    pub fn metrics(&self) -> &BridgeMetrics {
        &self.metrics
    }

    /// The sink's and buffer's metrics.
    pub fn sink_metrics(&self) -> &SinkMetrics {
        &self.sink_metrics
    }

    /// How many sockets the subscriptions are spread over.
    pub fn sockets(&self) -> usize {
        self.sockets
    }

    /// Records waiting in the buffer or unacknowledged.
    pub fn buffered(&self) -> usize {
        self.writer.depth()
    }

    /// Whether the sink task is still running.
    pub fn sink_running(&self) -> bool {
        !self.sink.is_finished()
    }

    /// Stops reading, then lets the sink deliver what was accepted; everything within
    /// `drain_timeout` in total. What is still undelivered then is lost with the memory buffer
    /// ([`DrainReport::lost`]) and kept for the next start with the disk buffer.
    pub async fn shutdown(mut self, drain_timeout: Duration) -> DrainReport {
        let started = tokio::time::Instant::now();
        let _ = self.shutdown.send(true);
        // A socket stops at once unless it is waiting for room in a full buffer (the sink is
        // slow or its broker away): give those a moment, then close the buffer so they give up.
        // What they held was never accepted, so nothing accepted is lost by it.
        let joined = tokio::time::timeout(STOP_READING_GRACE.min(drain_timeout / 4), async {
            while self.connections.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            self.writer.close();
            while self.connections.join_next().await.is_some() {}
        }
        // The catch-up worker stops its fills and writes a last checkpoint, within the deadline.
        let grace = STOP_READING_GRACE.min(drain_timeout.saturating_sub(started.elapsed()) / 4);
        let _ = tokio::time::timeout(grace, &mut self.catchup).await;
        self.catchup.abort();
        self.writer.close();
        let left = drain_timeout.saturating_sub(started.elapsed());
        let report = self.sink.shutdown(left).await;
        if report.lost() > 0 {
            tracing::error!(lost = report.lost(), by_event = ?report.undelivered_by_event,
                "shutdown deadline passed: undelivered records of the memory buffer are lost");
        } else if report.undelivered > 0 {
            tracing::info!(kept = report.undelivered, by_event = ?report.undelivered_by_event,
                "shutdown deadline passed: undelivered records stay in the disk buffer for the next start");
        } else {
            tracing::info!(
                delivered = report.delivered,
                "stopped; everything accepted was delivered"
            );
        }
        report
    }
}

/// The Origin a browser on the platform's own site would send: `https://host` for `wss://host/…`.
pub fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("wss", url));
    let host = rest.split('/').next().unwrap_or(rest);
    let scheme = if scheme == "ws" { "http" } else { "https" };
    format!("{scheme}://{host}")
}

fn instance_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "voxsig-bridge".into())
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id())
}

/// rustls with the system's roots (plus `ca_file`), verification always on; shared by the
/// WebSocket and the REST client.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, StartError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| StartError::Tls(format!("{}: {e}", path.display())))?;
        let mut reader = std::io::BufReader::new(pem.as_slice());
        for cert in rustls_pemfile_certs(&mut reader) {
            roots
                .add(cert)
                .map_err(|e| StartError::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn rustls_pemfile_certs(
    reader: &mut dyn std::io::BufRead,
) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    let mut pem = Vec::new();
    let _ = reader.read_to_end(&mut pem);
    rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect()
}
