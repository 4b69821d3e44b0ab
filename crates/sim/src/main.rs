//! `shoal-sim`: starts a manager and N simulated agents in one process,
//! declares services through the control API, and prints how long the
//! cluster takes to converge, how much memory it holds, and how long it takes
//! to recover from losing a share of its nodes.
//!
//! `cargo run --release -p shoal-sim -- --nodes 1000 --replicas 100000`

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use shoal_api::{
    update_config, update_status, Annotations, CreateServiceRequest, Runtime, ServiceMode,
    ServiceSpec, Task, TaskSpec, TaskState, UpdateConfig, UpdateServiceRequest,
};
use shoal_sim::{SimCluster, SimConfig, SimNodes, SimTransport, TaskBehaviour};

/// The allocator the `shoal` binary runs with (see there), so the figures
/// printed here are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "shoal-sim", about = "A Shoal cluster in one process, measured")]
struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    /// Replicas in all, split evenly over the services.
    #[arg(long, default_value_t = 100_000)]
    replicas: usize,
    /// Services to create.
    #[arg(long, default_value_t = 1)]
    services: usize,
    /// Milliseconds from assignment to RUNNING.
    #[arg(long, default_value_t = 10)]
    start_delay_ms: u64,
    /// Milliseconds a task runs before it ends (0: until stopped).
    #[arg(long, default_value_t = 0)]
    run_time_ms: u64,
    /// Share of tasks that fail (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Heartbeat period; a node is DOWN after 3 missed.
    #[arg(long, default_value_t = 1_000)]
    heartbeat_ms: u64,
    /// After converging, kill this percentage of the nodes and time the
    /// recovery.
    #[arg(long, default_value_t = 0)]
    kill_percent: usize,
    /// After converging (and recovering), roll out a new spec to every
    /// service with this update parallelism (no delay, no monitor), and
    /// time it to completed with the fewest tasks running on the way.
    #[arg(long, value_name = "N")]
    update_parallelism: Option<u64>,
    /// The rollout's order.
    #[arg(long, value_enum, default_value = "stop-first")]
    update_order: UpdateOrder,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Longest wait for any one phase, in seconds.
    #[arg(long, default_value_t = 1_800)]
    timeout_s: u64,
    /// Run the agents in a child process instead of this one, so the
    /// resident memory printed is the manager's alone (over the unix
    /// socket: with --transport unix).
    #[arg(long)]
    agents_process: bool,
    /// How the agents reach the dispatcher: as a daemon's do (tls: TCP,
    /// mutual TLS, a node certificate each), or for comparison over plain
    /// TCP or a unix socket.
    #[arg(long, value_enum, default_value = "tls")]
    transport: SimTransport,
    /// Be that child: run the agents against the dispatcher at this socket
    /// until stdin closes; a line `kill I` kills node I.
    #[arg(long, hide = true, value_name = "SOCKET")]
    agents_for: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum UpdateOrder {
    StopFirst,
    StartFirst,
}

impl Args {
    fn config(&self, nodes: usize) -> SimConfig {
        SimConfig {
            nodes,
            heartbeat_period_ms: self.heartbeat_ms,
            tasks: TaskBehaviour {
                start_delay: Duration::from_millis(self.start_delay_ms),
                run_time: (self.run_time_ms > 0).then(|| Duration::from_millis(self.run_time_ms)),
                failure_rate: self.failure_rate,
            },
            seed: self.seed,
            transport: self.transport,
            ..Default::default()
        }
    }
}

/// The agents of the cluster, here or in a child process.
enum Agents {
    Here,
    Child {
        child: Box<tokio::process::Child>,
        commands: tokio::process::ChildStdin,
    },
}

impl Agents {
    /// Starts the child that runs `args.nodes` agents against `sim`.
    fn spawn_child(args: &Args, sim: &SimCluster) -> anyhow::Result<Agents> {
        let exe = std::env::current_exe().context("finding this program to run the agents")?;
        let shoal_sim::DispatcherAt::Unix(socket) = sim.dispatcher() else {
            anyhow::bail!("--agents-process: the agents' process reaches the dispatcher over its unix socket; add --transport unix");
        };
        let mut child = tokio::process::Command::new(exe)
            .arg("--agents-for")
            .arg(socket)
            .args(["--nodes", &args.nodes.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--start-delay-ms", &args.start_delay_ms.to_string()])
            .args(["--run-time-ms", &args.run_time_ms.to_string()])
            .args(["--failure-rate", &args.failure_rate.to_string()])
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the agents' process")?;
        let commands = child
            .stdin
            .take()
            .context("the agents' process has no stdin")?;
        Ok(Agents::Child {
            child: Box::new(child),
            commands,
        })
    }

    async fn kill(&mut self, sim: &mut SimCluster, i: usize) -> anyhow::Result<()> {
        match self {
            Agents::Here => sim.kill(i).await,
            Agents::Child { commands, .. } => {
                use tokio::io::AsyncWriteExt;
                commands
                    .write_all(format!("kill {i}\n").as_bytes())
                    .await
                    .context("telling the agents' process to kill a node")?;
                commands.flush().await?;
            }
        }
        Ok(())
    }

    async fn stop(self) {
        if let Agents::Child {
            mut child,
            commands,
        } = self
        {
            // Its stdin closing is the child's signal to stop.
            drop(commands);
            let _ = child.wait().await;
        }
    }
}

/// The child's side of `--agents-process`: every agent on this process's
/// runtime until stdin closes.
async fn run_agents(args: &Args, socket: &std::path::Path) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let at = shoal_sim::DispatcherAt::Unix(socket.to_path_buf());
    let mut config = args.config(args.nodes);
    config.transport = SimTransport::Unix;
    let mut nodes = SimNodes::start(&config, &at).context("starting the agents")?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let victim = line
            .strip_prefix("kill ")
            .and_then(|i| i.trim().parse::<usize>().ok())
            .with_context(|| format!("unknown command {line:?}; expected `kill I`"))?;
        anyhow::ensure!(
            victim < nodes.len(),
            "kill {victim}: there are {} nodes",
            nodes.len()
        );
        nodes.kill(victim).await;
    }
    nodes.stop().await;
    Ok(())
}

fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Running tasks whose desired state is RUNNING, on nodes outside `dead`.
/// Whether a task counts as running: RUNNING, wanted so, and on a node
/// that is alive.
fn running(t: &Task, dead: &HashSet<String>) -> bool {
    t.observed() == TaskState::Running
        && t.desired_state == TaskState::Running as i32
        && !dead.contains(&t.node_id)
}

fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // As `shoal daemon` runs (see there).
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!("transparent huge pages stay as the kernel sets them: {e}");
    }
    let args = Args::parse();
    anyhow::ensure!(
        !args.agents_process || args.transport == SimTransport::Unix,
        "--agents-process: the agents' process reaches the dispatcher over its unix socket; add --transport unix"
    );
    anyhow::ensure!(args.services > 0, "--services: must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.failure_rate),
        "--failure-rate: must be between 0.0 and 1.0"
    );
    anyhow::ensure!(args.kill_percent <= 100, "--kill-percent: at most 100");
    raise_open_files_limit();
    if let Some(socket) = &args.agents_for {
        return run_agents(&args, socket).await;
    }
    let timeout = Duration::from_secs(args.timeout_s);
    let base_mib = resident_mib().unwrap_or(0.0);

    let started = Instant::now();
    let here = if args.agents_process { 0 } else { args.nodes };
    let mut sim = SimCluster::start(args.config(here))
        .await
        .context("starting the simulated cluster")?;
    let mut agents = Agents::Here;
    if args.agents_process {
        agents = Agents::spawn_child(&args, &sim)?;
        let expected = args.nodes;
        sim.wait_for("every node READY", timeout, |view| {
            view.nodes()
                .filter(|n| shoal_sim::sim_cluster::is_ready(n))
                .count()
                == expected
        })
        .await?;
    }
    println!(
        "{} nodes READY in {:.2} s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );
    let idle_mib = resident_mib().unwrap_or(0.0);

    let per_service = args.replicas / args.services;
    let total = per_service * args.services;
    let mut control = sim.control();
    let created = Instant::now();
    for s in 0..args.services {
        let spec = ServiceSpec {
            annotations: Some(Annotations {
                name: format!("svc-{s:05}"),
                labels: Default::default(),
            }),
            task: Some(TaskSpec {
                runtime: Some(Runtime {
                    command: vec!["simulated".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: ServiceMode::Replicated as i32,
            replicas: Some(per_service as i64),
            ..Default::default()
        };
        control
            .create_service(CreateServiceRequest { spec: Some(spec) })
            .await
            .with_context(|| format!("creating service svc-{s:05}"))?;
    }
    let no_dead = HashSet::new();
    sim.wait_for_tasks("every replica RUNNING", timeout, total, |t| {
        running(t, &no_dead)
    })
    .await?;
    let took = created.elapsed().as_secs_f64();
    println!(
        "{} services x {} replicas: {} RUNNING {:.2} s after the first service create ({:.0} tasks/s)",
        args.services,
        per_service,
        total,
        took,
        total as f64 / took
    );
    let full_mib = resident_mib().unwrap_or(0.0);
    let whose = if args.agents_process {
        "the manager alone: the agents run in a child process"
    } else {
        "agents and manager share the process"
    };
    println!(
        "resident memory: {full_mib:.0} MiB with {total} tasks running ({idle_mib:.0} MiB with the nodes idle, {base_mib:.0} MiB at start); {whose}"
    );

    if args.kill_percent > 0 {
        let mut order: Vec<usize> = (0..args.nodes).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(args.seed));
        let victims: Vec<usize> = order[..args.nodes * args.kill_percent / 100].to_vec();
        let dead: HashSet<String> = victims.iter().map(|i| shoal_sim::node_id(*i)).collect();
        let lost = sim.view(|view| {
            view.tasks_sharing_specs()
                .filter(|(t, _)| running(t, &HashSet::new()) && dead.contains(&t.node_id))
                .count()
        });
        tracing::info!(nodes = victims.len(), "killing nodes");
        let killed = Instant::now();
        for i in &victims {
            agents.kill(&mut sim, *i).await?;
        }
        sim.wait_for_tasks("every lost task RUNNING elsewhere", timeout, total, |t| {
            running(t, &dead)
        })
        .await?;
        println!(
            "killed {} nodes ({} tasks): all RUNNING elsewhere {:.2} s later (heartbeat TTL {:.1} s)",
            victims.len(),
            lost,
            killed.elapsed().as_secs_f64(),
            (args.heartbeat_ms * shoal_manager::HEARTBEAT_TTL_PERIODS) as f64 / 1000.0
        );
    }
    if let Some(parallelism) = args.update_parallelism {
        let dead: HashSet<String> = sim.view(|view| {
            view.nodes()
                .filter(|n| !shoal_sim::sim_cluster::is_ready(n))
                .map(|n| n.id.clone())
                .collect()
        });
        let services = sim.view(|view| view.services().cloned().collect::<Vec<_>>());
        let order = match args.update_order {
            UpdateOrder::StopFirst => update_config::Order::StopFirst,
            UpdateOrder::StartFirst => update_config::Order::StartFirst,
        };
        let updated = Instant::now();
        for service in services {
            let mut spec = service.spec.clone().unwrap_or_default();
            if let Some(runtime) = spec.task.as_mut().and_then(|t| t.runtime.as_mut()) {
                runtime.env = vec!["ROLLOUT=1".into()];
            }
            spec.update = Some(UpdateConfig {
                parallelism,
                order: order as i32,
                monitor_ms: 0,
                ..Default::default()
            });
            control
                .update_service(UpdateServiceRequest {
                    service_id: service.id.clone(),
                    version: service.meta.map_or(0, |m| m.version),
                    spec: Some(spec),
                    rollback: false,
                })
                .await
                .with_context(|| format!("updating service {}", service.id))?;
        }
        let (_, fewest) = sim
            .follow_tasks(
                "every service's update completed",
                timeout,
                |t| t.observed() == TaskState::Running && !dead.contains(&t.node_id),
                |_, view| {
                    view.services().all(|s| {
                        s.update_status.as_ref().map(|u| u.state())
                            == Some(update_status::State::Completed)
                    })
                },
            )
            .await?;
        println!(
            "rolling update of {total} tasks, parallelism {parallelism}, {:?}: completed {:.2} s after the update; fewest tasks running after any commit: {fewest} ({} below {total})",
            args.update_order,
            updated.elapsed().as_secs_f64(),
            total.saturating_sub(fewest),
        );
    }
    agents.stop().await;
    sim.shutdown().await;
    Ok(())
}
