//! The `voxsig-sim` command: serve a simulated Voxsig `/cable` endpoint, or print a world.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use voxsig_protocol::catalogue::Audience;
use voxsig_protocol::EventKind;
use voxsig_sim::{
    ExportOptions, Rate, Refusal, RunSpec, Selection, Sim, SimConfig, StoreLimits, TokenSelection,
    World, WorldSpec,
};

/// A Voxsig-compatible ActionCable server for demos, tests and benchmarks.
///
/// It serves `ws://ADDR/cable` like the platform (welcome, pings, RoomChannel subscriptions with
/// user and contact tokens, presence), generates every catalogued event for a world of accounts,
/// users and contacts, records what it sent, and injects faults through an admin HTTP endpoint.
#[derive(Parser)]
#[command(name = "voxsig-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the simulated platform until Ctrl-C.
    Serve(ServeArgs),
    /// Print a world (or the bridge config for it) and exit.
    World(WorldArgs),
    /// List the event catalogue the generator draws from.
    Events,
}

/// Where the world comes from.
#[derive(Args)]
struct WorldOpts {
    /// Load the world from this TOML or JSON file instead of generating it.
    #[arg(long, value_name = "FILE")]
    world: Option<PathBuf>,
    /// Accounts to generate.
    #[arg(long, default_value_t = 2)]
    accounts: usize,
    /// Agents/admins per account.
    #[arg(long, default_value_t = 2)]
    users_per_account: usize,
    /// Contacts per account.
    #[arg(long, default_value_t = 3)]
    contacts_per_account: usize,
    /// Conversations per contact.
    #[arg(long, default_value_t = 1)]
    conversations_per_contact: usize,
    /// Users of each account that also belong to the next account.
    #[arg(long, default_value_t = 0)]
    shared_users: usize,
    /// Seed for names and tokens (the same options give the same world).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl WorldOpts {
    fn build(&self) -> Result<World> {
        match &self.world {
            Some(path) => Ok(World::load(path)?),
            None => Ok(World::generate(&WorldSpec {
                accounts: self.accounts,
                users_per_account: self.users_per_account,
                contacts_per_account: self.contacts_per_account,
                conversations_per_contact: self.conversations_per_contact,
                shared_users: self.shared_users,
                seed: self.seed,
            })?),
        }
    }
}

/// Which tokens go into an exported bridge config.
#[derive(Args)]
struct ExportOpts {
    /// Which tokens to export.
    #[arg(long, value_enum, default_value_t = Tokens::Users)]
    tokens: Tokens,
    /// At most this many tokens per account (of each kind).
    #[arg(long, value_name = "N")]
    max_per_account: Option<usize>,
    /// Also export each user's `api_access_token` (REST catch-up).
    #[arg(long)]
    api_tokens: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Tokens {
    Users,
    Contacts,
    All,
}

impl ExportOpts {
    fn options(&self) -> ExportOptions {
        ExportOptions {
            tokens: match self.tokens {
                Tokens::Users => TokenSelection::Users,
                Tokens::Contacts => TokenSelection::Contacts,
                Tokens::All => TokenSelection::All,
            },
            max_per_account: self.max_per_account,
            accounts: None,
            api_tokens: self.api_tokens,
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    world: WorldOpts,
    /// WebSocket listen address (loopback unless you mean it).
    #[arg(long, default_value = "127.0.0.1:3000")]
    bind: SocketAddr,
    /// Admin HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:3001")]
    admin_bind: SocketAddr,
    /// Run without the admin endpoint.
    #[arg(long)]
    no_admin: bool,
    /// Milliseconds between pings.
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    ping_interval_ms: u64,
    /// Answer unknown tokens and wrong account/user with reject_subscription (default: silence,
    /// like the real platform).
    #[arg(long)]
    reject_unknown: bool,
    /// Like the platform: a refused subscription of a known token still streams its events.
    #[arg(long)]
    stream_before_auth: bool,
    /// Generate events at this rate (events/s in total, or per account with --per-account).
    #[arg(long, value_name = "EVENTS_PER_SEC")]
    rate: Option<f64>,
    /// --rate is per account.
    #[arg(long, requires = "rate")]
    per_account: bool,
    /// How long the generator runs, in seconds.
    #[arg(long, default_value_t = 3600.0, value_name = "SECS")]
    duration: f64,
    /// Stop the generator after this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Only these events (comma-separated names; default: the whole catalogue).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    events: Vec<String>,
    /// Only these accounts (comma-separated ids; default: all).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    only_accounts: Vec<u64>,
    /// Write the bridge config (`[[accounts]]` TOML) for the world to this file at start.
    #[arg(long, value_name = "FILE")]
    export_bridge_config: Option<PathBuf>,
    #[command(flatten)]
    export: ExportOpts,
    /// Events kept in the ground truth (0: none, for long runs).
    #[arg(long, default_value_t = 200_000)]
    ground_truth_limit: usize,
    /// Created messages the REST surface keeps, in total (the oldest go first).
    #[arg(long, default_value_t = StoreLimits::default().messages, value_name = "N")]
    message_limit: usize,
}

#[derive(Args)]
struct WorldArgs {
    #[command(flatten)]
    world: WorldOpts,
    /// Print the bridge config (`[[accounts]]` with account_id, user_id, pubsub_token) instead
    /// of the world.
    #[arg(long)]
    export_bridge_config: bool,
    #[command(flatten)]
    export: ExportOpts,
    /// Format of the world (the bridge config is always TOML).
    #[arg(long, value_enum, default_value_t = Format::Toml)]
    format: Format,
    /// Write to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Toml,
    Json,
}

fn kinds(names: &[String]) -> Result<Vec<EventKind>> {
    names
        .iter()
        .map(|n| match EventKind::from_name(n) {
            EventKind::Other => bail!("unknown event {n:?} (see `voxsig-sim events`)"),
            k => Ok(k),
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "voxsig_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::World(args) => world(args),
        Command::Events => {
            for kind in EventKind::ALL {
                let to = match kind.audience() {
                    Some(Audience::AgentsAndContacts) => "agents, contacts",
                    _ => "agents",
                };
                println!(
                    "{:<32} {:<14} {to}",
                    kind.to_string(),
                    format!("{:?}", kind.shape())
                );
            }
            Ok(())
        }
    }
}

fn world(args: WorldArgs) -> Result<()> {
    let world = args.world.build()?;
    let text = if args.export_bridge_config {
        world.bridge_config_toml(&args.export.options())
    } else {
        match args.format {
            Format::Toml => world.to_toml(),
            Format::Json => world.to_json(),
        }
    };
    match args.out {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let world = args.world.build()?;
    if let Some(path) = &args.export_bridge_config {
        std::fs::write(path, world.bridge_config_toml(&args.export.options()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let config = SimConfig {
        bind: args.bind,
        admin_bind: (!args.no_admin).then_some(args.admin_bind),
        ping_interval: Duration::from_millis(args.ping_interval_ms.max(1)),
        refusal: if args.reject_unknown {
            Refusal::Reject
        } else {
            Refusal::Silent
        },
        stream_before_auth: args.stream_before_auth,
        ground_truth_limit: args.ground_truth_limit,
        store_limits: StoreLimits {
            messages: args.message_limit,
            ..StoreLimits::default()
        },
        ..SimConfig::default()
    }
    .with_world(world.clone());
    let sim = Sim::start(config).await?;
    println!("voxsig-sim listening on {}", sim.url());
    println!(
        "REST API on {} (GET /api/v1/profile, /api/v1/accounts/ID/conversations, .../conversations/ID/messages; header api_access_token)",
        sim.api_url()
    );
    if let Some(admin) = sim.admin_url() {
        println!("admin endpoint on {admin} (GET /stats /world /ground-truth /presence; GET /messages; POST /emit /burst /run /faults/...)");
    }
    println!(
        "world: {} accounts, {} users, {} contacts",
        world.accounts.len(),
        world.users.len(),
        world.contacts.len()
    );
    if let Some(path) = &args.export_bridge_config {
        println!("bridge config written to {}", path.display());
    }
    let run = match args.rate {
        Some(rate) => {
            if !(args.duration.is_finite() && args.duration > 0.0) {
                bail!("--duration must be positive");
            }
            let spec = RunSpec {
                selection: Selection {
                    accounts: args.only_accounts,
                    kinds: kinds(&args.events)?,
                },
                rate: if args.per_account {
                    Rate::PerAccount(rate)
                } else {
                    Rate::Total(rate)
                },
                duration: Duration::from_secs_f64(args.duration),
                max_events: args.count,
            };
            Some(sim.run(spec)?)
        }
        None => None,
    };
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    if let Some(run) = run {
        run.stop();
        if let Ok(report) = run.wait().await {
            println!(
                "generated {} events ({} frames) at {:.0} events/s",
                report.events, report.frames, report.events_per_sec
            );
        }
    }
    sim.shutdown().await;
    Ok(())
}
