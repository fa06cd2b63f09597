//! The running bridge: builds the shared pieces, spreads subscriptions over sockets, starts the
//! sink and the connection tasks, and shuts everything down in order.

use crate::catchup::checkpoint::CheckpointFile;
use crate::catchup::rest::{RestClient, RestError, RestSettings, RetryPolicy};
use crate::catchup::telemetry::CatchupMetrics;
use crate::catchup::{self, Catchup, Rotation, SubInfo};
use crate::config::{Config, Settings};
use crate::connection::{self, ConnectLimiter, Member, Shared};
use crate::dedup::Dedup;
use crate::http::{Gauges, HttpState};
use crate::route::{Receiver, Router};
use crate::shutdown::ShutdownTrigger;
use crate::status::{BoardEntry, StatusBoard};
use crate::telemetry::BridgeMetrics;
use prometheus::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_tungstenite::Connector;
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
    /// The sink could not be built (its message names the key).
    #[error(transparent)]
    Sink(#[from] voxsig_sinks::SinkError),
    /// `source.ca_file` could not be read, or holds a block that cannot be parsed, or none.
    #[error("source.ca_file: {0}")]
    CaFile(#[from] voxsig_sinks::pem::PemError),
    /// A certificate of `source.ca_file` was refused.
    #[error("source.ca_file: {} holds a certificate that cannot be used", path.display())]
    CaCertificate {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The TLS library refused its own defaults (a build problem, never a configuration one).
    #[error("TLS could not be set up")]
    Tls(#[source] rustls::Error),
    /// The buffer could not be opened (disk buffer: directory unusable, newer format).
    #[error(transparent)]
    Buffer(#[from] voxsig_sinks::BufferError),
    /// The REST client could not be built.
    #[error("source.api_url: the REST client could not be built")]
    Rest(#[source] RestError),
    /// An entry's profile could not be read at start.
    #[error(transparent)]
    Discovery(#[from] catchup::profile::DiscoveryError),
    /// No subscription is left (every entry resolved to nothing).
    #[error("accounts: no subscriptions after reading the profiles")]
    NoAccounts,
}

/// A running bridge.
pub struct Bridge {
    shutdown: ShutdownTrigger,
    connections: JoinSet<()>,
    writer: BufferWriter,
    sink: SinkHandle,
    status: Arc<StatusBoard>,
    metrics: BridgeMetrics,
    sink_metrics: SinkMetrics,
    sockets: usize,
    http: HttpState,
    catchup: tokio::task::JoinHandle<Option<catchup::LastCheckpoint>>,
    catchup_state: Arc<Catchup>,
}

/// The metrics the bridge registers at start, by part.
struct Registered {
    bridge: BridgeMetrics,
    sink: SinkMetrics,
    catchup: CatchupMetrics,
    gauges: Gauges,
}

impl Registered {
    /// Registers every part's metrics into `registry` (per-account labels as configured).
    fn register(registry: &Registry, config: &Config) -> Result<Self, StartError> {
        let per_account = config
            .metrics
            .per_account_labels
            .then_some(config.metrics.max_accounts);
        Ok(Registered {
            bridge: BridgeMetrics::register(registry, per_account)?,
            sink: SinkMetrics::register(registry)?,
            catchup: CatchupMetrics::register(registry)?,
            gauges: Gauges::register(registry)?,
        })
    }

    /// What the HTTP endpoints read: the registry, the board, the gauges and the sink's health.
    fn http(
        &self,
        registry: &Registry,
        status: &Arc<StatusBoard>,
        sink: &SinkHandle,
        settings: &Settings,
    ) -> HttpState {
        HttpState {
            registry: registry.clone(),
            status: status.clone(),
            gauges: self.gauges.clone(),
            sink: sink.health(),
            ready_fraction: settings.config.metrics.ready_fraction,
        }
    }
}

/// The catch-up side at start: its state, its job queue, each socket's receiver of token
/// rotations and the checkpoint file (already read into the state).
struct CatchupStart {
    state: Arc<Catchup>,
    jobs: tokio::sync::mpsc::UnboundedReceiver<catchup::Job>,
    rotations: Vec<tokio::sync::mpsc::UnboundedReceiver<Rotation>>,
    checkpoint: Option<CheckpointFile>,
}

impl CatchupStart {
    fn new(
        settings: &Settings,
        layout: &Layout,
        receivers: &[Receiver],
        metrics: &Registered,
        client: Option<Arc<RestClient>>,
        status: &Arc<StatusBoard>,
    ) -> Self {
        let (senders, rotations): (Vec<_>, Vec<_>) = (0..layout.sockets())
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let (state, jobs) = Catchup::new(catchup::Parts {
            config: settings.config.catchup.clone(),
            metrics: metrics.catchup.clone(),
            client,
            subs: catchup_subs(settings, layout, receivers),
            rotations: senders,
            status: status.clone(),
        });
        let state = Arc::new(state);
        let checkpoint = restore_checkpoint(settings, &state);
        if checkpoint.is_some() {
            state.ledger().checkpointed();
        }
        CatchupStart {
            state,
            jobs,
            rotations,
            checkpoint,
        }
    }
}

/// What every connection task (and the catch-up worker) shares: `[source]`'s settings, the
/// router, dedup, the buffer, metrics, the board, the shutdown signal and the catch-up state.
#[allow(clippy::too_many_arguments)] // Called once, at start, by `start_with_sink`.
fn shared(
    settings: &Settings,
    keyed: bool,
    tls: rustls::ClientConfig,
    buffer: &BufferWriter,
    metrics: &Registered,
    status: &Arc<StatusBoard>,
    shutdown: &ShutdownTrigger,
    catchup: &Arc<Catchup>,
) -> Shared {
    let config = &settings.config;
    let source = &config.source;
    Shared {
        url: source.url.clone(),
        origin: source
            .origin
            .clone()
            .unwrap_or_else(|| origin_of(&source.url)),
        session: source.session(seed()),
        read_buffer_bytes: source.read_buffer_bytes,
        tcp_nodelay: source.tcp_nodelay,
        reconnect: source.reconnect.policy(),
        after_refusal: source.reconnect.after_refusal,
        tls: Some(Connector::Rustls(Arc::new(tls))),
        router: router(settings, keyed),
        dedup: config
            .dedup
            .enabled
            .then(|| Dedup::new(config.dedup.window, config.dedup.max_entries)),
        buffer: buffer.clone(),
        metrics: metrics.bridge.clone(),
        status: status.clone(),
        limiter: ConnectLimiter::new(source.connect_rate),
        shutdown: shutdown.subscribe(),
        catchup: catchup.clone(),
    }
}

impl Bridge {
    /// Starts the bridge with the configured sink, registering metrics into `registry`.
    pub async fn start(settings: Settings, registry: &Registry) -> Result<Bridge, StartError> {
        let instance = instance_name();
        let sink = settings
            .sink
            .build_with(&instance, settings.config.cloudevents().as_ref())?;
        Self::start_with_sink(settings, sink, registry).await
    }

    /// Starts the bridge with a given sink (tests, `tail`, the demo).
    pub async fn start_with_sink(
        mut settings: Settings,
        sink: Box<dyn Sink>,
        registry: &Registry,
    ) -> Result<Bridge, StartError> {
        let metrics = Registered::register(registry, &settings.config)?;
        let tls = tls_config(settings.config.source.ca_file.as_deref())?;
        let client = discover_accounts(&mut settings, &tls, &metrics.catchup).await?;
        let (writer, reader) =
            voxsig_sinks::open_buffer(settings.config.buffer.clone(), metrics.sink.clone())?;
        // The sink actually running (`tail` and the demo bring their own), not the configured one.
        let sink_kind = sink.kind();
        let keyed = sink.uses_key();
        let sink = voxsig_sinks::spawn(sink, reader);

        let layout = Layout::of(&settings);
        let status = Arc::new(status_board(&settings, &layout));
        let shutdown = ShutdownTrigger::new();
        let receivers: Vec<Receiver> = settings.accounts.iter().map(receiver_of).collect();
        let cu = CatchupStart::new(&settings, &layout, &receivers, &metrics, client, &status);
        let shared = shared(
            &settings, keyed, tls, &writer, &metrics, &status, &shutdown, &cu.state,
        );
        let shared = Arc::new(shared);
        let catchup = catchup::spawn(shared.clone(), cu.jobs, cu.checkpoint, shutdown.subscribe());
        let connections = spawn_connections(&shared, &settings, &layout, &receivers, cu.rotations);
        tracing::info!(
            subscriptions = settings.accounts.len(),
            sockets = layout.sockets(),
            sink = sink_kind,
            topic = settings.topic.as_str(),
            "bridge started"
        );
        let http = metrics.http(registry, &status, &sink, &settings);
        Ok(Bridge {
            shutdown,
            connections,
            writer,
            sink,
            status,
            metrics: metrics.bridge,
            sink_metrics: metrics.sink,
            sockets: layout.sockets(),
            http,
            catchup,
            catchup_state: cu.state,
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
        self.shutdown.fire();
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
        // The catch-up worker stops its fills and hands over its last checkpoint, which is
        // written while the sink drains: both within the deadline.
        let grace = STOP_READING_GRACE.min(drain_timeout.saturating_sub(started.elapsed()) / 4);
        let last = match tokio::time::timeout(grace, &mut self.catchup).await {
            Ok(Ok(last)) => last,
            _ => None,
        };
        self.catchup.abort();
        self.writer.close();
        let left = drain_timeout.saturating_sub(started.elapsed());
        let write = |left: Duration| {
            let last = last.as_ref();
            async move {
                let last = last?;
                let written = tokio::time::timeout(left, last.write()).await;
                if written.is_err() {
                    tracing::warn!(
                        "shutdown deadline passed before the last catch-up checkpoint was written"
                    );
                }
                written.ok()
            }
        };
        let (report, mut refetched) = tokio::join!(self.sink.shutdown(left), write(left));
        // Written while the sink drained, the checkpoint counted every message whose record was
        // not delivered yet as unpublished: written again now the drain is over, time allowing,
        // so that only what is really lost is fetched again by the next start's catch-up.
        if refetched.is_some_and(|n| n > 0) {
            let left = drain_timeout.saturating_sub(started.elapsed());
            if !left.is_zero() {
                refetched = write(left).await.or(refetched);
            }
        }
        if report.lost() > 0 {
            tracing::error!(lost = report.lost(), by_event = ?report.undelivered_by_event,
                messages_fetched_again_at_next_start = refetched.unwrap_or(0),
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

/// How the subscriptions are spread over sockets: `subscriptions_per_connection` each, in
/// configuration order. The one place that says which socket carries a subscription (and so
/// how many sockets there are: `check` asks it too).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    per_socket: usize,
    subscriptions: usize,
}

impl Layout {
    /// The layout of `settings`' subscriptions.
    pub fn of(settings: &Settings) -> Self {
        Layout {
            per_socket: settings.config.source.subscriptions_per_connection.max(1),
            subscriptions: settings.accounts.len(),
        }
    }

    /// The socket carrying subscription `index`.
    fn socket_of(&self, index: usize) -> usize {
        index / self.per_socket
    }

    /// How many sockets there are.
    pub fn sockets(&self) -> usize {
        self.subscriptions.div_ceil(self.per_socket)
    }

    /// The subscriptions of each socket, by socket.
    fn groups(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.sockets()).map(|socket| {
            let start = socket * self.per_socket;
            start..(start + self.per_socket).min(self.subscriptions)
        })
    }
}

/// Builds the REST client when an entry needs one (profile discovery, catch-up) and resolves
/// the entries read from profiles into subscriptions. Fails when none is left.
async fn discover_accounts(
    settings: &mut Settings,
    tls: &rustls::ClientConfig,
    metrics: &CatchupMetrics,
) -> Result<Option<Arc<RestClient>>, StartError> {
    let wants_rest =
        !settings.discover.is_empty() || settings.accounts.iter().any(|a| a.api_token.is_some());
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
            metrics.clone(),
        )
        .map_err(StartError::Rest)?;
        Some(Arc::new(client))
    } else {
        None
    };
    if let Some(client) = &client {
        catchup::profile::discover(settings, client).await?;
    }
    if settings.accounts.is_empty() {
        return Err(StartError::NoAccounts);
    }
    Ok(client)
}

/// The status board: every subscription waiting, on its socket.
fn status_board(settings: &Settings, layout: &Layout) -> StatusBoard {
    let subs = settings
        .accounts
        .iter()
        .enumerate()
        .map(|(i, a)| BoardEntry {
            account_id: a.account_id,
            user_id: a.user_id,
            token: a.token.clone(),
            conn: layout.socket_of(i),
        });
    StatusBoard::new(subs, layout.sockets())
}

/// The routing facts of a subscription.
fn receiver_of(account: &crate::config::Account) -> Receiver {
    Receiver {
        account_id: account.account_id,
        user_id: account.user_id,
        labels: account.labels.clone(),
    }
}

/// Every subscription as catch-up knows it, in status-board order.
fn catchup_subs(
    settings: &Settings,
    layout: &Layout,
    receivers: &[Receiver],
) -> Vec<(SubInfo, Receiver)> {
    settings
        .accounts
        .iter()
        .zip(receivers)
        .enumerate()
        .map(|(i, (a, receiver))| {
            let info = SubInfo {
                account: a.account_id,
                user_id: a.user_id,
                token: a.token.clone(),
                api_token: a.api_token.clone(),
                entry: a.entry.clone(),
                conn: layout.socket_of(i),
            };
            (info, receiver.clone())
        })
        .collect()
}

/// Reads the catch-up checkpoint of `[state] dir`, when set, into the catch-up state; returns
/// the file for the worker to keep writing.
fn restore_checkpoint(settings: &Settings, catchup: &Catchup) -> Option<CheckpointFile> {
    let file = settings
        .config
        .state
        .dir
        .as_deref()
        .map(CheckpointFile::in_dir)?;
    match file.load() {
        Ok(Some(cp)) => catchup.restored(&cp),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "catch-up checkpoint unreadable: starting without it")
        }
    }
    Some(file)
}

/// Events into records: the templates, the filter and the payload mode, with the sink's rules;
/// no key unless the sink running is `keyed` ([`voxsig_sinks::Sink::uses_key`]).
fn router(settings: &Settings, keyed: bool) -> Router {
    let config = &settings.config;
    let router = Router::new(
        settings.topic.clone(),
        settings.key.clone(),
        settings.filter.clone(),
        config.route.payload,
        settings.sink.topic_rules(),
    );
    let router = if keyed { router } else { router.without_key() };
    match config.cloudevents() {
        Some(ce) => router.with_cloudevents(ce, settings.sink.cloudevents_mode()),
        None => router,
    }
}

/// One task per socket, each with its subscriptions and its rotation receiver.
fn spawn_connections(
    shared: &Arc<Shared>,
    settings: &Settings,
    layout: &Layout,
    receivers: &[Receiver],
    rotations: Vec<tokio::sync::mpsc::UnboundedReceiver<Rotation>>,
) -> JoinSet<()> {
    let mut connections = JoinSet::new();
    for ((conn, group), rotations) in layout.groups().enumerate().zip(rotations) {
        let members = group
            .map(|i| Member {
                index: i,
                identifier: settings.accounts[i].identifier(),
                receiver: receivers[i].clone(),
            })
            .collect();
        connections.spawn(connection::run(shared.clone(), conn, members, rotations));
    }
    connections
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
        for cert in voxsig_sinks::pem::read_certs(path)? {
            roots
                .add(cert)
                .map_err(|source| StartError::CaCertificate {
                    path: path.to_owned(),
                    source,
                })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(StartError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::Layout;

    #[test]
    fn the_layout_puts_each_subscription_on_one_socket() {
        // (subscriptions, per socket, sockets, each socket's first and end index)
        type Row = (usize, usize, usize, &'static [(usize, usize)]);
        let table: [Row; 4] = [
            (0, 3, 0, &[]),
            (1, 3, 1, &[(0, 1)]),
            (6, 3, 2, &[(0, 3), (3, 6)]),
            (7, 3, 3, &[(0, 3), (3, 6), (6, 7)]),
        ];
        for (subscriptions, per_socket, sockets, groups) in table {
            let layout = Layout {
                per_socket,
                subscriptions,
            };
            assert_eq!(layout.sockets(), sockets);
            let got: Vec<(usize, usize)> = layout.groups().map(|g| (g.start, g.end)).collect();
            assert_eq!(got, groups);
            for (socket, &(start, end)) in groups.iter().enumerate() {
                assert!((start..end).all(|i| layout.socket_of(i) == socket));
            }
        }
    }
}
