//! The `voxsig-bridge` command: parses arguments, loads and validates the config, and hands it
//! to the library's `Bridge`.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use voxsig_bridge::demo::DemoOptions;
use voxsig_bridge::tail::TailSink;
use voxsig_bridge::{Bridge, Config, Settings};

// The global allocator: the system's unless an `alloc-*` feature picks another (issues 11 and
// 15; docs/ARCHITECTURE.md, "Allocator"). Both statics are safe code.
#[cfg(feature = "alloc-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "alloc-jemalloc", not(feature = "alloc-mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bridge Voxsig's real-time WebSocket feed to MQTT, Kafka, stdout or a file.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "VOXSIG_BRIDGE_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `voxsig_bridge=debug`.
    /// Default: `info,rumqttd=warn`; for `demo`, `warn,rumqttd=off` (the progress line says the
    /// rest, and the embedded broker's own probes are not errors).
    #[arg(long, global = true, env = "RUST_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge until SIGINT/SIGTERM, then drain the buffer into the sink and exit.
    Run {
        /// The config file (TOML); `VOXSIG_BRIDGE_*` variables override it.
        #[arg(short, long)]
        config: PathBuf,
        /// Serve /metrics, /healthz, /readyz and /status here instead of `metrics.listen`.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Run the whole job on an embedded default: a simulated Voxsig, an embedded MQTT broker and
    /// the bridge between them, with a live progress line. No config needed.
    Demo(DemoOptions),
    /// Validate a config and print it resolved, secrets redacted; exit non-zero when invalid.
    Check {
        /// The config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print events live on the terminal instead of publishing them (for debugging).
    Tail {
        /// The config file (TOML); its sink is ignored.
        #[arg(short, long)]
        config: PathBuf,
        /// Only events matching this pattern (`*` wildcard); repeatable. Overrides route.include.
        #[arg(short, long = "event")]
        events: Vec<String>,
        /// Print payloads whole instead of cutting them at 200 characters.
        #[arg(long)]
        full: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo(_) => "warn,rumqttd=off",
        _ => "info,rumqttd=warn",
    };
    init_logging(cli.log_format, cli.log.as_deref().unwrap_or(default_filter));
    // The config is read before the runtime is built: `[runtime]` says how.
    let job = match prepare(cli.command) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match job.runtime().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(job)) {
        Ok(Stopped::Clean) => std::process::ExitCode::SUCCESS,
        Ok(Stopped::Lost(report)) => {
            let by_event: Vec<String> = report
                .undelivered_by_event
                .iter()
                .map(|(event, n)| format!("{event}={n}"))
                .collect();
            eprintln!(
                "error: stopped with {} records undelivered at the drain deadline; the memory buffer does not keep them, they are lost ({})",
                report.lost(),
                by_event.join(", ")
            );
            std::process::ExitCode::from(voxsig_bridge::runtime::EXIT_RECORDS_LOST)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A command with its configuration loaded and validated, ready to run.
enum Job {
    Check(Box<Settings>),
    Run {
        settings: Box<Settings>,
        metrics_addr: Option<SocketAddr>,
    },
    Demo(DemoOptions),
    Tail {
        settings: Box<Settings>,
        full: bool,
    },
}

impl Job {
    /// The runtime this job runs on: the config's `[runtime]` (the default for `demo`).
    fn runtime(&self) -> tokio::runtime::Builder {
        match self {
            Job::Check(settings) | Job::Run { settings, .. } | Job::Tail { settings, .. } => {
                settings.config.runtime.builder()
            }
            Job::Demo(_) => voxsig_bridge::config::RuntimeConfig::default().builder(),
        }
    }
}

/// Loads and validates what the command needs (no async runtime yet).
fn prepare(command: Command) -> anyhow::Result<Job> {
    Ok(match command {
        Command::Check { config } => Job::Check(Box::new(load(&config)?)),
        Command::Run {
            config,
            metrics_addr,
        } => Job::Run {
            settings: Box::new(load(&config)?),
            metrics_addr,
        },
        Command::Demo(options) => Job::Demo(options),
        Command::Tail {
            config,
            events,
            full,
        } => {
            let mut config = Config::load(&config)?;
            if !events.is_empty() {
                config.route.include = events;
            }
            Job::Tail {
                settings: Box::new(config.validate()?),
                full,
            }
        }
    })
}

/// How a command ended.
enum Stopped {
    /// Nothing accepted was lost.
    Clean,
    /// Records of the memory buffer were undelivered at the drain deadline.
    Lost(voxsig_sinks::DrainReport),
}

async fn dispatch(job: Job) -> anyhow::Result<Stopped> {
    match job {
        Job::Check(settings) => {
            print!("{}", settings.redacted_toml());
            let subscriptions = settings.accounts.len();
            let sockets = voxsig_bridge::runtime::Layout::of(&settings).sockets();
            let plural = |n: usize, one: &'static str, many: &'static str| {
                format!("{n} {}", if n == 1 { one } else { many })
            };
            println!(
                "\n# OK: {} on {}; topics like `{}`",
                plural(subscriptions, "subscription", "subscriptions"),
                plural(sockets, "socket", "sockets"),
                settings.topic.sample()
            );
            if settings.config.sink.is_none() {
                println!("# note: no [sink] configured: `run` writes events to stdout");
            }
            if !settings.discover.is_empty() {
                println!(
                    "# and {} entries whose pubsub token or accounts are read from the profile at start",
                    settings.discover.len()
                );
            }
            Ok(Stopped::Clean)
        }
        Job::Run {
            settings,
            metrics_addr,
        } => {
            let drain = settings.config.shutdown.drain_timeout;
            let listen = metrics_addr.unwrap_or(settings.config.metrics.listen);
            let registry = prometheus::Registry::new();
            let bridge = Bridge::start(*settings, &registry).await?;
            bridge
                .serve_http(listen)
                .await
                .with_context(|| format!("metrics.listen: cannot listen on {listen}"))?;
            run_until_signal(bridge, drain).await
        }
        Job::Demo(options) => voxsig_bridge::demo::run(options)
            .await
            .map(|()| Stopped::Clean),
        Job::Tail { settings, full } => {
            let registry = prometheus::Registry::new();
            let sink = Box::new(TailSink::new((!full).then_some(200)));
            let bridge = Bridge::start_with_sink(*settings, sink, &registry).await?;
            run_until_signal(bridge, Duration::from_secs(2)).await
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Settings> {
    let config = Config::load(path).with_context(|| format!("config {}", path.display()))?;
    config
        .validate()
        .with_context(|| format!("config {}", path.display()))
}

async fn run_until_signal(bridge: Bridge, drain: Duration) -> anyhow::Result<Stopped> {
    wait_for_signal().await?;
    tracing::info!(drain_timeout = %voxsig_bridge::telemetry::Secs(drain), "signal received: stopping reads and draining the buffer");
    // A requested stop is a success unless accepted records are lost by it (memory buffer).
    let report = bridge.shutdown(drain).await;
    Ok(if report.lost() > 0 {
        Stopped::Lost(report)
    } else {
        Stopped::Clean
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

fn init_logging(format: LogFormat, filter: &str) {
    let format = match format {
        LogFormat::Human => voxsig_bridge::logging::Format::Human,
        LogFormat::Json => voxsig_bridge::logging::Format::Json,
    };
    voxsig_bridge::logging::init(format, filter);
}
