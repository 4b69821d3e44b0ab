//! `shoal task …`, and the task table `service ps` shares.

use std::collections::HashMap;

use clap::{Args, Subcommand, ValueEnum};
use shoal_api::{GetRequest, ListRequest, ListTasksRequest, Task, TaskState};

use crate::client::Client;
use crate::output::{ago, Format, Listing};
use crate::{call, list_all};

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// List tasks.
    #[command(alias = "list")]
    Ls {
        /// Only tasks of this service.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        list: TaskListArgs,
    },
    /// Show tasks as JSON: spec, node, status, desired state.
    Inspect {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DesiredState {
    Running,
    Ready,
    Complete,
    Shutdown,
    Remove,
}

#[derive(Debug, Args)]
pub struct TaskListArgs {
    /// Include finished tasks (history).
    #[arg(short, long)]
    all: bool,
    /// Only IDs.
    #[arg(short, long)]
    quiet: bool,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Only tasks on this node (name, ID, or `self`).
    #[arg(long)]
    node: Option<String>,
    /// Only tasks with this desired state.
    #[arg(long, value_enum)]
    desired_state: Option<DesiredState>,
}

impl TaskListArgs {
    pub fn request(&self, service: Option<String>) -> anyhow::Result<ListTasksRequest> {
        let desired_states = match self.desired_state {
            Some(DesiredState::Running) => vec![TaskState::Running as i32],
            Some(DesiredState::Ready) => vec![TaskState::Ready as i32],
            Some(DesiredState::Complete) => vec![TaskState::Complete as i32],
            Some(DesiredState::Shutdown) => vec![TaskState::Shutdown as i32],
            Some(DesiredState::Remove) => vec![TaskState::Remove as i32],
            // Without -a: what is meant to run now, and jobs' completed
            // runs, as `docker service ps` shows.
            None if !self.all => vec![
                TaskState::Running as i32,
                TaskState::Ready as i32,
                TaskState::Complete as i32,
            ],
            None => vec![],
        };
        Ok(ListTasksRequest {
            service: service.unwrap_or_default(),
            node: self.node.clone().unwrap_or_default(),
            desired_states,
        })
    }
}

fn state_title(state: i32) -> String {
    TaskState::try_from(state).map_or_else(|_| state.to_string(), |s| s.title())
}

/// `Running 5 seconds ago`, and its health when it has a check:
/// `(healthy)`, `(unhealthy)`, `(health: starting)`.
fn current_state(status: &shoal_api::TaskStatus, now_ms: i64) -> String {
    use shoal_api::task_status::Health;
    let state = format!(
        "{} {}",
        state_title(status.state),
        ago(status.timestamp_ms, now_ms)
    );
    match Health::try_from(status.health).unwrap_or(Health::None) {
        Health::None => state,
        Health::Starting => format!("{state} (health: starting)"),
        Health::Healthy => format!("{state} (healthy)"),
        Health::Unhealthy => format!("{state} (unhealthy)"),
    }
}

pub async fn print_tasks(
    client: &mut Client,
    mut tasks: Vec<Task>,
    args: &TaskListArgs,
) -> anyhow::Result<()> {
    let services: HashMap<String, String> =
        list_all!(client, list_services(ListRequest::default()), services)?
            .into_iter()
            .filter_map(|s| s.service)
            .map(|s| (s.id.clone(), crate::service::name_of(&s)))
            .collect();
    let nodes: HashMap<String, String> =
        list_all!(client, list_nodes(ListRequest::default()), nodes)?
            .into_iter()
            .map(|n| (n.id.clone(), n.name().unwrap_or(&n.id).to_string()))
            .collect();
    tasks.sort_by_key(|t| {
        let created = t.meta.as_ref().map_or(0, |m| m.created_at_ms);
        (
            services.get(&t.service_id).cloned(),
            t.slot,
            t.node_id.clone(),
            -created,
        )
    });
    let now_ms = shoal_api::clock::now_ms();
    let mut listing = Listing::new(vec![
        "ID",
        "NAME",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ]);
    for t in &tasks {
        let service = services
            .get(&t.service_id)
            .cloned()
            .unwrap_or_else(|| t.service_id.clone());
        let name = if t.slot > 0 {
            format!("{service}.{}", t.slot)
        } else {
            format!("{service}.{}", t.node_id)
        };
        let status = t.status.clone().unwrap_or_default();
        listing.push(
            &t.id,
            vec![
                name,
                nodes
                    .get(&t.node_id)
                    .cloned()
                    .unwrap_or_else(|| t.node_id.clone()),
                state_title(t.desired_state),
                current_state(&status, now_ms),
                status.err,
                ports_of(t),
            ],
        );
    }
    print!("{}", listing.render(args.quiet, args.format));
    Ok(())
}

/// A task's ports on its node, as `docker service ps` shows host-mode
/// ones (`*:8080->80/tcp`), then its named ports (`http=20001`).
fn ports_of(task: &Task) -> String {
    use shoal_api::port_config::{Protocol, PublishMode};
    let published = task
        .endpoint
        .iter()
        .flat_map(|e| &e.ports)
        .filter(|p| p.publish_mode == PublishMode::Host as i32)
        .map(|p| {
            let protocol = if p.protocol == Protocol::Udp as i32 {
                "udp"
            } else {
                "tcp"
            };
            format!("*:{}->{}/{protocol}", p.published_port, p.target_port)
        });
    let named = task
        .named_ports()
        .iter()
        .map(|p| format!("{}={}", p.name, p.published_port));
    published.chain(named).collect::<Vec<_>>().join(",")
}

pub async fn run(mut client: Client, cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Ls { service, list } => {
            let request = list.request(service)?;
            let tasks = list_all!(client, list_tasks(request), tasks)?;
            print_tasks(&mut client, tasks, &list).await
        }
        TaskCommand::Inspect { tasks } => {
            let mut out = Vec::new();
            for reference in tasks {
                let t = call!(client, get_task(GetRequest { reference }))?;
                out.push(t.task.unwrap_or_default());
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}
