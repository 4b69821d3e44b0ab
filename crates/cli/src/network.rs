//! `shoal network …`

use clap::Subcommand;
use shoal_api::{
    Annotations, CreateNetworkRequest, GetRequest, ListRequest, NetworkSpec, RemoveRequest,
};

use crate::client::Client;
use crate::output::{Format, Listing};
use crate::{call, list_all};

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network.
    Create {
        name: String,
        /// Address space, in CIDR form (e.g. 10.20.0.0/16).
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway address inside the subnet.
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long, short = 'd', default_value = "overlay")]
        driver: String,
        /// Network label KEY=VALUE (repeatable).
        #[arg(long, value_parser = crate::parse::key_value, value_name = "KEY=VALUE")]
        label: Vec<(String, String)>,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show networks as JSON.
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks no service uses.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

pub async fn run(mut client: Client, cmd: NetworkCommand) -> anyhow::Result<()> {
    match cmd {
        NetworkCommand::Create {
            name,
            subnet,
            gateway,
            driver,
            label,
        } => {
            let spec = NetworkSpec {
                annotations: Some(Annotations {
                    name,
                    labels: label.into_iter().collect(),
                }),
                driver,
                subnet: subnet.unwrap_or_default(),
                gateway: gateway.unwrap_or_default(),
            };
            let created = call!(
                client,
                create_network(CreateNetworkRequest { spec: Some(spec) })
            )?;
            println!("{}", created.network.unwrap_or_default().id);
        }
        NetworkCommand::Ls { quiet, format } => {
            let networks = list_all!(client, list_networks(ListRequest::default()), networks)?;
            let mut listing = Listing::new(vec!["ID", "NAME", "DRIVER", "SUBNET"]);
            for n in networks {
                let spec = n.spec.clone().unwrap_or_default();
                listing.push(
                    &n.id,
                    vec![
                        spec.annotations.unwrap_or_default().name,
                        spec.driver,
                        spec.subnet,
                    ],
                );
            }
            print!("{}", listing.render(quiet, format));
        }
        NetworkCommand::Inspect { networks } => {
            let mut out = Vec::new();
            for reference in networks {
                let n = call!(client, get_network(GetRequest { reference }))?;
                out.push(n.network.unwrap_or_default());
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCommand::Rm { networks } => {
            for reference in networks {
                call!(
                    client,
                    remove_network(RemoveRequest {
                        reference: reference.clone()
                    })
                )?;
                println!("{reference}");
            }
        }
    }
    Ok(())
}
