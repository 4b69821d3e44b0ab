//! `shoal join-token worker|manager [--rotate] [-q]` and `shoal leave`.

use std::path::Path;

use shoal_api::{JoinTokenRequest, LeaveRequest};

use crate::call;
use crate::client::Client;

#[derive(Debug, clap::Args)]
pub struct JoinTokenArgs {
    /// Which token: `worker` or `manager`.
    #[arg(value_parser = ["worker", "manager"])]
    role: String,
    /// Replace the token first: the old one is refused for new joins (nodes that joined with it keep running).
    #[arg(long)]
    rotate: bool,
    /// Print the token only.
    #[arg(short, long)]
    quiet: bool,
}

pub async fn join_token(mut client: Client, args: JoinTokenArgs) -> anyhow::Result<()> {
    let answer = call!(
        client,
        join_token(JoinTokenRequest {
            role: args.role.clone(),
            rotate: args.rotate,
        })
    )?;
    if args.quiet {
        println!("{}", answer.token);
        return Ok(());
    }
    if args.rotate {
        println!("Rotated the {} join token.\n", args.role);
    }
    let addr = answer
        .managers
        .first()
        .map_or("MANAGER:4242", String::as_str);
    println!(
        "To add a {} to this cluster, run this on the other host:\n\n    shoal daemon --join {addr} --token {}\n",
        args.role, answer.token
    );
    Ok(())
}

pub async fn leave(socket: &Path) -> anyhow::Result<()> {
    let client = Client::new(socket);
    let result = client.local().leave(LeaveRequest {}).await;
    result.map_err(|s| client.error(s))?;
    println!("Node left the cluster.");
    Ok(())
}
