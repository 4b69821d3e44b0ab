//! `shoal node …`

use clap::{Subcommand, ValueEnum};
use shoal_api::{
    manager_status, node_spec, node_status, GetRequest, ListRequest, Node, NodeRole,
    UpdateNodeRequest,
};

use crate::client::Client;
use crate::output::{Format, Listing};
use crate::{call, list_all};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show nodes as JSON (`self` is the node the daemon runs on).
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes: down ones, or live ones with --force (their tasks move).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Remove a node that is not down.
        #[arg(short, long)]
        force: bool,
    },
    /// Make workers managers: each joins raft once it has caught up.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers: each leaves raft (handing leadership over
    /// first), then goes on as a worker; refused where it would cost the
    /// others their quorum.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability or labels.
    Update {
        node: String,
        /// active: takes tasks; pause: keeps its tasks, takes no new ones; drain: its tasks move elsewhere.
        #[arg(long, value_enum)]
        availability: Option<Availability>,
        /// Add or change a label KEY=VALUE (repeatable).
        #[arg(long, value_parser = crate::parse::key_value, value_name = "KEY=VALUE")]
        label_add: Vec<(String, String)>,
        /// Remove a label by KEY (repeatable).
        #[arg(long, value_name = "KEY")]
        label_rm: Vec<String>,
    },
}

fn lower(name: &str) -> String {
    let mut s = name.to_ascii_lowercase();
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    s
}

pub async fn run(mut client: Client, cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Ls { quiet, format } => {
            let me = client.node_info().await?.node_id;
            let nodes = list_all!(client, list_nodes(ListRequest::default()), nodes)?;
            let mut listing = Listing::new(vec![
                "ID",
                "HOSTNAME",
                "STATUS",
                "AVAILABILITY",
                "MANAGER STATUS",
                "ENGINE VERSION",
                "ADDRESS",
            ]);
            for n in nodes {
                let status = n.status.clone().unwrap_or_default();
                let spec = n.spec.clone().unwrap_or_default();
                let manager = match (&n.manager_status, NodeRole::try_from(n.role)) {
                    (Some(m), Ok(NodeRole::Manager)) if m.leader => "Leader".to_string(),
                    (Some(m), Ok(NodeRole::Manager)) => lower(
                        manager_status::Reachability::try_from(m.reachability)
                            .map_or("unknown", |r| r.as_str_name()),
                    ),
                    _ => String::new(),
                };
                let description = n.description.clone().unwrap_or_default();
                listing.push(
                    &n.id,
                    vec![
                        if n.id == me {
                            format!("{} *", description.hostname)
                        } else {
                            description.hostname.clone()
                        },
                        lower(
                            node_status::State::try_from(status.state)
                                .map_or("unknown", |s| s.as_str_name()),
                        ),
                        lower(
                            node_spec::Availability::try_from(spec.availability)
                                .map_or("unknown", |a| a.as_str_name()),
                        ),
                        manager,
                        description.engine_version,
                        status.addr.clone(),
                    ],
                );
            }
            print!("{}", listing.render(quiet, format));
        }
        NodeCommand::Inspect { nodes } => {
            let mut out = Vec::new();
            for reference in nodes {
                let n = call!(client, get_node(GetRequest { reference }))?;
                out.push(n.node.unwrap_or_default());
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NodeCommand::Rm { nodes, force } => {
            for reference in nodes {
                call!(
                    client,
                    remove_node(shoal_api::RemoveNodeRequest {
                        reference: reference.clone(),
                        force,
                    })
                )?;
                println!("{reference}");
            }
        }
        NodeCommand::Promote { nodes } => {
            for node in nodes {
                set_role(&mut client, &node, NodeRole::Manager).await?;
            }
        }
        NodeCommand::Demote { nodes } => {
            for node in nodes {
                set_role(&mut client, &node, NodeRole::Worker).await?;
            }
        }
        NodeCommand::Update {
            node,
            availability,
            label_add,
            label_rm,
        } => {
            let changed = change_spec(&mut client, &node, |spec| {
                if let Some(a) = availability {
                    spec.availability = match a {
                        Availability::Active => node_spec::Availability::Active,
                        Availability::Pause => node_spec::Availability::Pause,
                        Availability::Drain => node_spec::Availability::Drain,
                    } as i32;
                }
                let annotations = spec.annotations.get_or_insert_with(Default::default);
                for (k, v) in label_add {
                    annotations.labels.insert(k, v);
                }
                for k in label_rm {
                    annotations.labels.remove(&k);
                }
                true
            })
            .await?;
            println!("{}", changed.id);
        }
    }
    Ok(())
}

/// Asks node `reference` to take `role`, and says what follows.
async fn set_role(client: &mut Client, reference: &str, role: NodeRole) -> anyhow::Result<()> {
    let (name, asked) = match role {
        NodeRole::Manager => ("a manager", "promoted to a manager"),
        NodeRole::Worker => ("a worker", "demoted to a worker"),
    };
    let mut already = false;
    change_spec(client, reference, |spec| {
        already = spec.desired_role == role as i32;
        spec.desired_role = role as i32;
        !already
    })
    .await?;
    if already {
        println!("Node {reference} is already {name}.");
    } else {
        println!("Node {reference} {asked} in the cluster.");
    }
    Ok(())
}

/// Changes node `reference`'s spec with `change` over the version read,
/// unless `change` says nothing changed; the node as read.
async fn change_spec(
    client: &mut Client,
    reference: &str,
    change: impl FnOnce(&mut shoal_api::NodeSpec) -> bool,
) -> anyhow::Result<Node> {
    let current: Node = call!(
        client,
        get_node(GetRequest {
            reference: reference.to_string()
        })
    )?
    .node
    .unwrap_or_default();
    let mut spec = current.spec.clone().unwrap_or_default();
    if change(&mut spec) {
        call!(
            client,
            update_node(UpdateNodeRequest {
                node_id: current.id.clone(),
                version: current.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
            })
        )?;
    }
    Ok(current)
}
