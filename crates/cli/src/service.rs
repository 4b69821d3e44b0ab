//! `shoal service …`

use clap::{Args, Subcommand};
use shoal_api::{
    Annotations, CreateServiceRequest, GetRequest, ListRequest, RemoveRequest, Runtime, Service,
    ServiceMode, ServiceSpec, UpdateServiceRequest,
};

use crate::client::Client;
use crate::flags::{apply_mode, ListFlags, Mode, RemoveFlags, SpecFlags};
use crate::output::{Format, Listing};
use crate::progress::{self, Change};
use crate::task::{print_tasks, TaskListArgs};
use crate::{call, each_page, list_all};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service: `shoal service create --name web --replicas 3 -- python3 -m http.server`.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show services as JSON, version included.
    Inspect { services: Vec<String> },
    /// Change a service's spec; its tasks take it under the update config
    /// (`--update-parallelism`, `--update-delay`, …). On a paused update,
    /// resumes it.
    Update(Box<UpdateArgs>),
    /// Put a service's previous spec back, under its rollback config.
    Rollback {
        service: String,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// Set the replica count of replicated services: `shoal service scale web=4 api=2`.
    Scale {
        #[arg(required = true, value_parser = crate::parse::scale, value_name = "SERVICE=REPLICAS")]
        scales: Vec<(String, i64)>,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Print what a service's tasks (or one task) write to stdout and
    /// stderr, each line prefixed with the task's name.
    Logs {
        /// A service, or one task's id.
        #[arg(value_name = "SERVICE|TASK")]
        service: String,
        /// Keep printing as the tasks write.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each task's stdout and stderr (or `all`).
        #[arg(short = 'n', long, value_parser = parse_tail, default_value = "all", value_name = "N")]
        tail: Tail,
        /// Prefix lines with the task's name only, not its id.
        #[arg(long)]
        no_task_ids: bool,
        /// Print the lines alone, without any prefix.
        #[arg(long)]
        raw: bool,
        /// Only lines written since then: a duration ago (`10m`, `1h30m`),
        /// an RFC 3339 time (`2026-12-01T10:00:00Z`) or Unix seconds.
        #[arg(long, value_parser = parse_since, value_name = "WHEN")]
        since: Option<i64>,
        /// Print the time each line was written before it (RFC 3339, UTC).
        #[arg(short, long)]
        timestamps: bool,
    },
    /// List the tasks of a service.
    Ps {
        service: String,
        #[command(flatten)]
        list: TaskListArgs,
    },
}

/// Whether a change waits for the service to converge, and what it shows.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitFlags {
    /// Return at once instead of waiting for the service to converge.
    #[arg(short, long, env = "SHOAL_DETACH")]
    detach: bool,
    /// Print only the service's ID (no progress).
    #[arg(short, long)]
    quiet: bool,
}

impl WaitFlags {
    async fn wait(&self, client: &mut Client, id: &str, change: Change) -> anyhow::Result<()> {
        if self.detach {
            return Ok(());
        }
        progress::wait(client, id, change, self.quiet).await
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name (a DNS label).
    #[arg(long)]
    name: Option<String>,
    /// replicated, global, replicated-job or global-job.
    #[arg(long, value_enum, default_value = "replicated")]
    mode: Mode,
    #[command(flatten)]
    spec: SpecFlags,
    #[command(flatten)]
    lists: ListFlags,
    #[command(flatten)]
    wait: WaitFlags,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    service: String,
    #[command(flatten)]
    spec: SpecFlags,
    #[command(flatten)]
    lists: ListFlags,
    #[command(flatten)]
    removals: RemoveFlags,
    /// Replace every task, even when the spec does not change.
    #[arg(long)]
    force: bool,
    /// Put the previous spec back (as `shoal service rollback`); takes no
    /// other change.
    #[arg(long)]
    rollback: bool,
    #[command(flatten)]
    wait: WaitFlags,
    /// Replace the command and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only IDs.
    #[arg(short, long)]
    quiet: bool,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Only services whose name or ID starts with one of these.
    #[arg(long = "filter", value_name = "PREFIX")]
    filters: Vec<String>,
}

pub async fn run(mut client: Client, cmd: ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Create(args) => {
            let mut spec = ServiceSpec {
                annotations: Some(Annotations {
                    name: args.name.clone().unwrap_or_default(),
                    labels: Default::default(),
                }),
                ..Default::default()
            };
            apply_mode(&mut spec, args.mode);
            args.spec.apply(&mut spec).map_err(anyhow::Error::msg)?;
            args.lists.apply(&mut spec, false);
            set_command(&mut spec, args.command);
            let created = call!(
                client,
                create_service(CreateServiceRequest { spec: Some(spec) })
            )?;
            let service = created.service.unwrap_or_default();
            println!("{}", service.id);
            args.wait
                .wait(&mut client, &service.id, Change::Converge)
                .await?;
        }
        ServiceCommand::Ls(args) => {
            let mut listing = Listing::new(vec![
                "ID", "NAME", "MODE", "REPLICAS", "UPDATE", "IMAGE", "COMMAND",
            ]);
            // IDs and JSON lines print page by page as they arrive; a table
            // needs every row to align its columns.
            let streaming = args.quiet || args.format == Format::Json;
            let request = ListRequest {
                name_prefixes: args.filters,
            };
            each_page!(client, list_services(request), page => {
                for summary in page.services {
                    let service = summary.service.clone().unwrap_or_default();
                    let spec = service.spec.clone().unwrap_or_default();
                    let runtime = runtime_of(&spec);
                    let update = service.update_status.clone().unwrap_or_default();
                    listing.push(
                        &service.id,
                        vec![
                            name_of(&service),
                            mode_name(spec.mode),
                            replicas_column(&spec, &summary),
                            update.describe().to_string(),
                            runtime.image.clone(),
                            runtime.command.join(" "),
                        ],
                    );
                }
                if streaming {
                    print!("{}", listing.render(args.quiet, args.format));
                    listing.clear();
                }
            })?;
            if !streaming {
                print!("{}", listing.render(args.quiet, args.format));
            }
        }
        ServiceCommand::Inspect { services } => {
            let mut out = Vec::new();
            for reference in services {
                let s = call!(client, get_service(GetRequest { reference }))?;
                out.push(s.service.unwrap_or_default());
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ServiceCommand::Update(args) => {
            let networks = list_all!(client, list_networks(ListRequest::default()), networks)?;
            let resolve = |reference: &str| -> String {
                networks
                    .iter()
                    .find(|n| {
                        n.id == reference
                            || n.spec
                                .as_ref()
                                .and_then(|s| s.annotations.as_ref())
                                .is_some_and(|a| a.name == reference)
                    })
                    .map_or_else(|| reference.to_string(), |n| n.id.clone())
            };
            // The flags are changes to whatever the spec is: when another
            // writer (the update supervisor writing its status) changed the
            // service between our read and our write, read it again and
            // apply them again.
            let mut tries = 0;
            let (id, change) = loop {
                let current = get(&mut client, &args.service).await?;
                let mut spec = current.spec.clone().unwrap_or_default();
                args.spec.apply(&mut spec).map_err(anyhow::Error::msg)?;
                args.lists.apply(&mut spec, true);
                args.removals.apply(&mut spec, &resolve);
                if !args.command.is_empty() {
                    set_command(&mut spec, args.command.clone());
                }
                if args.rollback {
                    if args.force || Some(&spec) != current.spec.as_ref() {
                        anyhow::bail!(
                            "--rollback puts the previous spec back and takes no other change: \
                             run the update and the rollback as two commands"
                        );
                    }
                    rollback(&mut client, &current).await?;
                    break (current.id, Change::Rollback);
                }
                if args.force {
                    let task = spec.task.get_or_insert_with(Default::default);
                    task.force_update = task.force_update.wrapping_add(1);
                }
                let change = change_of(current.spec.as_ref(), &spec);
                tries += 1;
                if update(&mut client, &current, spec, tries < MAX_CONFLICT_TRIES).await? {
                    break (current.id, change);
                }
            };
            println!("{id}");
            args.wait.wait(&mut client, &id, change).await?;
        }
        ServiceCommand::Rollback { service, wait } => {
            let current = get(&mut client, &service).await?;
            rollback(&mut client, &current).await?;
            println!("{}", current.id);
            wait.wait(&mut client, &current.id, Change::Rollback)
                .await?;
        }
        ServiceCommand::Scale { scales, wait } => {
            let mut scaled = Vec::new();
            for (name, replicas) in scales {
                let mut tries = 0;
                let id = loop {
                    let current = get(&mut client, &name).await?;
                    let mut spec = current.spec.clone().unwrap_or_default();
                    if !spec.is_replicated() {
                        anyhow::bail!(
                            "{name}: scale works on replicated services only (this one is {})",
                            mode_name(spec.mode)
                        );
                    }
                    spec.replicas = Some(replicas);
                    tries += 1;
                    if update(&mut client, &current, spec, tries < MAX_CONFLICT_TRIES).await? {
                        break current.id;
                    }
                };
                println!("{name} scaled to {replicas}");
                scaled.push(id);
            }
            for id in scaled {
                wait.wait(&mut client, &id, Change::Converge).await?;
            }
        }
        ServiceCommand::Rm { services } => {
            for reference in services {
                call!(
                    client,
                    remove_service(RemoveRequest {
                        reference: reference.clone()
                    })
                )?;
                println!("{reference}");
            }
        }
        ServiceCommand::Logs {
            service,
            follow,
            tail,
            no_task_ids,
            raw,
            since,
            timestamps,
        } => {
            let request = shoal_api::LogsRequest {
                service: service.clone(),
                task: String::new(),
                follow,
                tail: tail.0,
                since_unix_nano: since.unwrap_or(0),
            };
            let mut stream = match client.api().logs(request.clone()).await {
                Ok(r) => r.into_inner(),
                // Not a service: a task, as `docker service logs` takes.
                Err(status) if status.code() == tonic::Code::NotFound => {
                    let as_task = shoal_api::LogsRequest {
                        service: String::new(),
                        task: service.clone(),
                        ..request
                    };
                    match client.api().logs(as_task).await {
                        Ok(r) => r.into_inner(),
                        Err(task_status) if task_status.code() == tonic::Code::NotFound => {
                            return Err(anyhow::anyhow!("no service or task {service:?}"))
                        }
                        Err(task_status) => return Err(client.error(task_status)),
                    }
                }
                Err(status) => return Err(client.error(status)),
            };
            use std::io::Write;
            loop {
                let line = match stream.message().await {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(status) => return Err(client.error(status)),
                };
                let mut prefix = if raw {
                    String::new()
                } else if no_task_ids {
                    format!("{:<24} | ", line.task_name)
                } else {
                    let name =
                        format!("{}.{}", line.task_name, crate::output::short(&line.task_id));
                    format!("{name:<24} | ")
                };
                if timestamps {
                    // A line whose log has no time gets a blank of the
                    // same width, so the columns stay aligned.
                    let stamp = if line.time_unix_nano == 0 {
                        " ".repeat(shoal_api::log_time::STAMP_LEN)
                    } else {
                        shoal_api::log_time::format_stamp(line.time_unix_nano)
                    };
                    prefix = format!("{stamp} {prefix}");
                }
                let mut text = line.line;
                text.push(b'\n');
                let result = if line.stream == "stderr" {
                    let mut err = std::io::stderr().lock();
                    err.write_all(prefix.as_bytes())
                        .and_then(|_| err.write_all(&text))
                } else {
                    let mut out = std::io::stdout().lock();
                    out.write_all(prefix.as_bytes())
                        .and_then(|_| out.write_all(&text))
                };
                // A closed pipe (`| head`) ends the command quietly.
                if result.is_err() {
                    break;
                }
            }
        }
        ServiceCommand::Ps { service, list } => {
            let request = list.request(Some(service))?;
            let tasks = list_all!(client, list_tasks(request), tasks)?;
            print_tasks(&mut client, tasks, &list).await?;
        }
    }
    Ok(())
}

async fn get(client: &mut Client, reference: &str) -> anyhow::Result<Service> {
    let s = call!(
        client,
        get_service(GetRequest {
            reference: reference.to_string()
        })
    )?;
    Ok(s.service.unwrap_or_default())
}

/// How often a change is read and applied again when another writer got
/// between its read and its write.
const MAX_CONFLICT_TRIES: u32 = 5;

/// Proposes `spec` against the version `current` was read at: a concurrent
/// change fails as a conflict instead of being overwritten. Returns false
/// on a conflict when `retry` (the caller reads again and reapplies).
async fn update(
    client: &mut Client,
    current: &Service,
    spec: ServiceSpec,
    retry: bool,
) -> anyhow::Result<bool> {
    let version = current.meta.as_ref().map_or(0, |m| m.version);
    let request = UpdateServiceRequest {
        service_id: current.id.clone(),
        version,
        spec: Some(spec),
        rollback: false,
    };
    match client.api().update_service(request).await {
        Ok(_) => Ok(true),
        Err(status) if retry && status.code() == tonic::Code::Aborted => Ok(false),
        Err(status) => Err(client.error(status)),
    }
}

/// What a user's update asks of the service: a rollout when what its tasks
/// run changed, else only that it converges (a scale, a new update config).
fn change_of(current: Option<&ServiceSpec>, next: &ServiceSpec) -> Change {
    if current.is_some_and(|c| c.runs_same_tasks(next)) {
        Change::Converge
    } else {
        Change::Update
    }
}

/// Asks for the previous spec back, against the version `current` was read at.
async fn rollback(client: &mut Client, current: &Service) -> anyhow::Result<()> {
    let version = current.meta.as_ref().map_or(0, |m| m.version);
    call!(
        client,
        update_service(UpdateServiceRequest {
            service_id: current.id.clone(),
            version,
            spec: None,
            rollback: true,
        })
    )?;
    Ok(())
}

/// `3/3`, and for jobs what completed too, as docker shows them:
/// `0/3 (3/3 completed)`.
fn replicas_column(spec: &ServiceSpec, summary: &shoal_api::ServiceSummary) -> String {
    let running = format!("{}/{}", summary.running_tasks, summary.desired_tasks);
    match spec.replicas_wanted() {
        Some(total) if spec.mode == ServiceMode::ReplicatedJob as i32 => {
            format!("{running} ({}/{total} completed)", summary.completed_tasks)
        }
        _ if spec.mode == ServiceMode::GlobalJob as i32 => {
            format!("{running} ({} completed)", summary.completed_tasks)
        }
        _ => running,
    }
}

fn set_command(spec: &mut ServiceSpec, command: Vec<String>) {
    let task = spec.task.get_or_insert_with(Default::default);
    task.runtime.get_or_insert_with(Runtime::default).command = command;
}

fn runtime_of(spec: &ServiceSpec) -> Runtime {
    spec.task
        .as_ref()
        .and_then(|t| t.runtime.clone())
        .unwrap_or_default()
}

pub fn name_of(service: &Service) -> String {
    service
        .spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map(|a| a.name.clone())
        .unwrap_or_default()
}

fn mode_name(mode: i32) -> String {
    ServiceMode::try_from(mode)
        .map(|m| m.as_str_name().to_ascii_lowercase().replace('_', "-"))
        .unwrap_or_else(|_| mode.to_string())
}

/// `--since`: when, in nanoseconds since the epoch.
fn parse_since(text: &str) -> Result<i64, String> {
    shoal_api::log_time::parse_since(text, shoal_api::clock::now_ns())
}

/// `--tail`: a number of lines, or `all`.
#[derive(Debug, Clone, Copy)]
pub struct Tail(Option<u64>);

fn parse_tail(text: &str) -> Result<Tail, String> {
    if text == "all" {
        return Ok(Tail(None));
    }
    text.parse::<u64>()
        .map(|n| Tail(Some(n)))
        .map_err(|_| format!("{text:?}: must be a number of lines or `all`"))
}
