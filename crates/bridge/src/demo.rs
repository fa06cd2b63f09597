//! `voxsig-bridge demo`: the whole job on an embedded default. A simulated Voxsig (voxsig-sim)
//! generates events for a few accounts, an embedded MQTT broker (rumqttd) receives them, and the
//! bridge runs between the two with `/metrics` up, printing a live progress line.

use crate::config::Config;
use crate::runtime::Bridge;
use crate::tail::TailSink;
use anyhow::Context;
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use voxsig_sim::{
    ExportOptions, Rate, RunSpec, Selection, Sim, SimConfig, TokenSelection, WorldSpec,
};

/// Options of the demo (also its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Simulated accounts.
    #[arg(long, default_value_t = 3)]
    pub accounts: usize,
    /// Events per second, in total.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Print events on stdout instead of publishing them to the embedded MQTT broker.
    #[arg(long)]
    pub stdout: bool,
    /// Port of the embedded MQTT broker (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub mqtt_port: u16,
    /// Serve /metrics, /healthz, /readyz and /status here.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9898")]
    pub metrics_addr: SocketAddr,
    /// Stop after this long (e.g. `30s`) instead of waiting for Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// Runs the demo until Ctrl-C (or `duration`).
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let sim = Sim::start(SimConfig::default().with_world_spec(WorldSpec {
        accounts: options.accounts.max(1),
        users_per_account: 2,
        contacts_per_account: 3,
        conversations_per_contact: 1,
        shared_users: 0,
        seed: 42,
    }))
    .await
    .context("starting the simulated Voxsig")?;
    let accounts = sim.world().bridge_config_toml(&ExportOptions {
        tokens: TokenSelection::Users,
        ..ExportOptions::default()
    });

    let mqtt_port = if options.stdout {
        0
    } else {
        start_broker(options.mqtt_port)?
    };
    let sink = if options.stdout {
        String::new()
    } else {
        format!("[sink]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nqos = 1\n")
    };
    let toml = format!(
        "[source]\nurl = \"{url}\"\n[metrics]\nlisten = \"{metrics}\"\n{sink}\n{accounts}",
        url = sim.url(),
        metrics = options.metrics_addr,
    );
    let settings = Config::from_toml(&toml)?.validate()?;
    let subscriptions = settings.accounts.len();
    let registry = prometheus::Registry::new();
    let bridge = if options.stdout {
        Bridge::start_with_sink(settings, Box::new(TailSink::new(Some(160))), &registry).await?
    } else {
        Bridge::start(settings, &registry).await?
    };
    let metrics_addr = match bridge.serve_http(options.metrics_addr).await {
        Ok(addr) => addr,
        // The default port may be taken (another bridge running): any free one will do.
        Err(_) => {
            bridge
                .serve_http(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await?
        }
    };

    let run = sim.run(RunSpec {
        selection: Selection::all(),
        rate: Rate::Total(options.rate),
        duration: options.duration.unwrap_or(Duration::from_secs(24 * 3600)),
        max_events: None,
    })?;
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "\nvoxsig-bridge demo: {} simulated accounts, {subscriptions} subscriptions, {} events/s",
        options.accounts, options.rate
    );
    if !options.stdout {
        let _ = writeln!(
            err,
            "  watch the events:  mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t 'voxsig/#' -v"
        );
    }
    let _ = writeln!(
        err,
        "  metrics:           http://{metrics_addr}/metrics   status: http://{metrics_addr}/status"
    );
    if let Some(admin) = sim.admin_url() {
        let _ = writeln!(err, "  simulator admin:   {admin}");
    }
    let _ = writeln!(err, "  Ctrl-C to stop\n");

    let started = Instant::now();
    // On a terminal the progress line rewrites itself; elsewhere (a pipe, a CI log) it is a plain
    // line every 5 s, without control sequences.
    let terminal = std::io::IsTerminal::is_terminal(&err);
    let mut ticks: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), 0.0);
    let stop = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {
                let line = progress(&registry, &bridge, &mut last, started);
                ticks += 1;
                if !options.stdout && terminal {
                    let _ = write!(err, "\r{line}\x1b[K");
                    let _ = err.flush();
                } else if !options.stdout && ticks % 5 == 0 {
                    let _ = writeln!(err, "{line}");
                }
            }
        }
    }
    let _ = writeln!(err, "\nstopping…");
    run.stop();
    let report = bridge.shutdown(Duration::from_secs(5)).await;
    let _ = writeln!(
        err,
        "delivered {} records, {} undelivered",
        report.delivered, report.undelivered
    );
    sim.shutdown().await;
    Ok(())
}

/// One progress line: rate, totals, the busiest events, connections.
fn progress(
    registry: &prometheus::Registry,
    bridge: &Bridge,
    last: &mut (Instant, f64),
    started: Instant,
) -> String {
    let families = registry.gather();
    let mut by_event: HashMap<String, f64> = HashMap::new();
    let mut published = 0.0;
    for f in &families {
        if f.name() == "voxsig_bridge_sink_records_published_total" {
            for m in f.get_metric() {
                let v = m.get_counter().get_value();
                published += v;
                if let Some(l) = m.get_label().iter().find(|l| l.name() == "event") {
                    *by_event.entry(l.value().to_owned()).or_default() += v;
                }
            }
        }
    }
    let now = Instant::now();
    let rate = (published - last.1) / now.duration_since(last.0).as_secs_f64().max(0.001);
    *last = (now, published);
    let mut top: Vec<(String, f64)> = by_event.into_iter().filter(|(_, v)| *v > 0.0).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<String> = top
        .iter()
        .take(4)
        .map(|(e, v)| format!("{e} {v:.0}"))
        .collect();
    let status = bridge.status();
    let open = status
        .socket_counts()
        .iter()
        .find(|(s, _)| s.label() == "open")
        .map_or(0, |c| c.1);
    let confirmed = status
        .sub_counts()
        .iter()
        .find(|(s, _)| s.label() == "confirmed")
        .map_or(0, |c| c.1);
    format!(
        "[{:>4}s] {rate:>6.0} events/s | published {published:.0} | {} | sockets {open}/{} | subscriptions {confirmed}/{} | buffered {}",
        started.elapsed().as_secs(),
        top.join(", "),
        bridge.sockets(),
        status.subscriptions().len(),
        bridge.buffered(),
    )
}

/// Starts rumqttd on 127.0.0.1 (a free port when `port` is 0) in its own threads.
fn start_broker(port: u16) -> anyhow::Result<u16> {
    let port = if port == 0 {
        // Bind to learn a free port, then hand it to the broker.
        TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    } else {
        port
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let server = rumqttd::ServerSettings {
        name: "demo".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 64 << 20,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(HashMap::from([("demo".to_owned(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })?;
    // Wait until it accepts connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(listen).is_ok() {
            return Ok(port);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("the embedded MQTT broker did not start on {listen}")
}
