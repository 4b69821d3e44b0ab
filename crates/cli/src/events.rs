//! `shoal events`: every create, update and remove, as it commits.

use clap::Args;
use shoal_api::{watch_event, Object, WatchRequest};

use crate::client::Client;
use crate::output::{rfc3339, Format};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// First list every object that exists now (as create events).
    #[arg(long)]
    existing: bool,
    /// Also print a line when each raft entry's changes are complete.
    #[arg(long)]
    commits: bool,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

fn describe(object: &Object) -> (String, String, String) {
    let kind = object.kind().map_or("unknown", |k| k.as_str()).to_string();
    let name = object.name().unwrap_or_default().to_string();
    (kind, object.id().to_string(), name)
}

pub async fn run(mut client: Client, args: EventsArgs) -> anyhow::Result<()> {
    let request = WatchRequest {
        include_existing: args.existing,
    };
    let mut stream = match client.api().watch(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(client.error(status)),
    };
    loop {
        let event = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(()),
            Err(status) => return Err(client.error(status)),
        };
        let action =
            watch_event::Action::try_from(event.action).unwrap_or(watch_event::Action::Update);
        if action == watch_event::Action::Commit && !args.commits {
            continue;
        }
        let action_name = action.as_str_name().to_ascii_lowercase();
        let (kind, id, name, time) = match &event.object {
            Some(o) => {
                let (kind, id, name) = describe(o);
                let time = if event.timestamp_ms > 0 {
                    event.timestamp_ms
                } else {
                    o.meta().map_or(0, |m| m.updated_at_ms)
                };
                (kind, id, name, time)
            }
            None => (String::new(), String::new(), String::new(), 0),
        };
        match args.format {
            Format::Json => {
                let line = serde_json::json!({
                    "time": if time > 0 { rfc3339(time) } else { String::new() },
                    "type": kind,
                    "action": action_name,
                    "id": id,
                    "name": name,
                    "version": event.version,
                });
                println!("{line}");
            }
            Format::Table if action == watch_event::Action::Commit => {
                println!("commit version={}", event.version);
            }
            Format::Table if action == watch_event::Action::Reset => {
                println!(
                    "reset version={} (the store was replaced by a raft snapshot: list again)",
                    event.version
                );
            }
            Format::Table => {
                let name = if name.is_empty() {
                    String::new()
                } else {
                    format!("name={name}, ")
                };
                println!(
                    "{} {kind} {action_name} {id} ({name}version={})",
                    rfc3339(time),
                    event.version
                );
            }
        }
    }
}
