//! `shoal`: `shoal daemon` runs a node; every other subcommand is a client of
//! a daemon's control API, found through `--socket`, `SHOAL_SOCKET`, or the
//! state dir's `shoal.sock`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client;
mod cluster;
mod events;
mod flags;
mod join;
mod network;
mod node;
mod output;
mod parse;
mod progress;
mod service;
mod task;

/// mimalloc instead of glibc's malloc. The daemon allocates and frees from
/// many threads at once (a connection task per agent, the raft apply, the
/// reconcilers' passes); in perf of the simulator at 5,000 nodes, glibc's
/// malloc and free (arena locks, consolidating free chunks) were a quarter
/// of the CPU. BENCHMARKS.md has the figures before and after.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: keep services running across a fleet of machines"
)]
struct Cli {
    /// The daemon's control socket [default: <state dir>/shoal.sock].
    #[arg(long, global = true, env = "SHOAL_SOCKET")]
    socket: Option<PathBuf>,
    /// The daemon's state dir, used to find its socket and by `shoal daemon`.
    #[arg(long, global = true, env = "SHOAL_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: with an empty state dir, create a new cluster with this node its first manager.
    Daemon(DaemonArgs),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Inspect and list tasks.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Manage nodes.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Manage networks.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Inspect and configure the cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Stream every create, update and remove as it commits.
    Events(events::EventsArgs),
    /// Print the command another host runs to join this cluster.
    JoinToken(join::JoinTokenArgs),
    /// Make this worker leave its cluster: its tasks stop (they run elsewhere), its identity is deleted, its daemon exits.
    Leave,
    /// Show the client's and the daemon's versions.
    Version,
}

#[derive(Debug, clap::Args)]
struct DaemonArgs {
    /// Raft log entries between snapshots (the log is compacted after each).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_interval: u64,
    /// Where a manager listens for other nodes (mutual TLS; port 0 picks a free one).
    #[arg(long, default_value = "0.0.0.0:4242", value_name = "HOST:PORT")]
    listen_addr: String,
    /// The address other nodes dial [default: the listen address, or the default route's interface when listening on 0.0.0.0].
    #[arg(long, value_name = "IP[:PORT]")]
    advertise_addr: Option<String>,
    /// Join the cluster of the manager at this address (an empty state dir only).
    #[arg(long, value_name = "HOST:PORT", requires = "token")]
    join: Option<String>,
    /// The join token `shoal join-token worker` prints on a manager.
    #[arg(
        long,
        value_name = "TOKEN",
        requires = "join",
        env = "SHOAL_JOIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// On a manager whose cluster lost its quorum for good: make it the
    /// only manager of its cluster, keeping its store, the CA and every
    /// node's identity. The managers that are gone are removed; they join
    /// again with a manager token and an empty state dir.
    #[arg(long, conflicts_with_all = ["join", "restore"])]
    force_new_cluster: bool,
    /// Into an empty state dir: bring a cluster back from a backup made by
    /// `shoal cluster backup FILE`, with every object and version; this
    /// daemon is its only manager.
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    restore: Option<PathBuf>,
}

/// The state dir when none is given: /var/lib/shoal for root, else under
/// the user's data dir.
fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/shoal");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("shoal")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("Error: {text}");
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Daemon(_)) {
        quiet_when_the_reader_goes();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A client whose reader went (`| head`, `| grep -q`) ends quietly, as Unix
/// tools do, instead of failing on its next print. Rust ignores SIGPIPE
/// (a write to a closed socket, such as the daemon's after `leave`, must
/// stay an error, not a death), so a print to a closed stdout panics: that
/// one panic ends the client with the status a SIGPIPE gives (141).
fn quiet_when_the_reader_goes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| state_dir.join(shoal_node::SOCKET_FILE));
    match cli.command {
        Command::Daemon(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                )
                .with_writer(std::io::stderr)
                .init();
            // mimalloc asks for transparent huge pages for its arenas; a
            // fault that has to assemble one stalls the thread, and the
            // scheduler's large passes ran at half speed in one run of two.
            // Not fatal: a kernel without the flag keeps its own policy.
            if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
                tracing::debug!("transparent huge pages stay as the kernel sets them: {e}");
            }
            let join = match (args.join, args.token) {
                (Some(addr), Some(token)) => Some(shoal_node::JoinConfig { addr, token }),
                _ => None,
            };
            shoal_node::run(shoal_node::DaemonConfig {
                state_dir,
                socket: cli.socket,
                snapshot_interval_entries: args.snapshot_interval,
                listen_addr: args.listen_addr,
                advertise_addr: args.advertise_addr,
                join,
                force_new_cluster: args.force_new_cluster,
                restore: args.restore,
            })
            .await?;
            Ok(())
        }
        Command::Service(cmd) => service::run(client::Client::new(&socket), cmd).await,
        Command::Task(cmd) => task::run(client::Client::new(&socket), cmd).await,
        Command::Node(cmd) => node::run(client::Client::new(&socket), cmd).await,
        Command::Network(cmd) => network::run(client::Client::new(&socket), cmd).await,
        Command::Cluster(cmd) => cluster::run(client::Client::new(&socket), cmd).await,
        Command::Events(args) => events::run(client::Client::new(&socket), args).await,
        Command::JoinToken(args) => join::join_token(client::Client::new(&socket), args).await,
        Command::Leave => join::leave(&socket).await,
        Command::Version => {
            println!("Client: {}", shoal_api::VERSION);
            let v = client::Client::new(&socket).node_info().await?;
            println!(
                "Server: {} ({} node {}, cluster {})",
                v.version, v.role, v.node_id, v.cluster_id
            );
            Ok(())
        }
    }
}
