//! `shoal cluster …`

use clap::Subcommand;
use shoal_api::{
    CaConfig, DispatcherConfig, GetClusterRequest, OrchestrationConfig, RaftConfig,
    UpdateClusterRequest,
};

use crate::call;
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the cluster object as JSON.
    Inspect,
    /// Write a consistent copy of the whole store to FILE (written whole
    /// or not at all; mode 0600: it holds the CA's key). `shoal daemon
    /// --restore FILE` brings the cluster back from it.
    Backup { file: std::path::PathBuf },
    /// Change cluster-wide settings.
    Update {
        /// Finished tasks kept per slot (per node for global services).
        #[arg(long, allow_negative_numbers = true)]
        task_history_limit: Option<i64>,
        /// How often agents report to their manager (e.g. 5s, the default).
        #[arg(long, alias = "heartbeat-period", value_parser = crate::parse::duration_ms, value_name = "DURATION")]
        dispatcher_heartbeat: Option<u64>,
        /// How long a manager waits without hearing from the leader before
        /// it campaigns (default 350ms; 100ms to 60s): about what a failover
        /// takes. Each manager takes it when it next starts.
        #[arg(long, value_parser = crate::parse::duration_ms, value_name = "DURATION")]
        election_timeout: Option<u64>,
        /// Replicas one replicated service may ask for (default 100000).
        #[arg(long, value_name = "N")]
        max_replicas_per_service: Option<u64>,
        /// Replicas all replicated services may ask for together (default 1000000).
        #[arg(long, value_name = "N")]
        max_replicas_total: Option<u64>,
        /// Tasks the orchestrator creates in one pass (default 100000): a larger
        /// service converges over several passes while the cluster keeps answering.
        #[arg(long, value_name = "N")]
        max_new_tasks_per_pass: Option<u64>,
        /// Where tasks' dynamic named ports (`service create --port NAME`)
        /// come from, FIRST-LAST (default 20000-32000); tasks placed from
        /// now on.
        #[arg(long, value_parser = crate::parse::port_range, value_name = "FIRST-LAST")]
        dynamic_ports: Option<shoal_api::PortRange>,
        /// Lifetime of node certificates issued from now on (e.g. 2160h, the
        /// default 90 days); each node renews its own between 50 % and 80 % of it.
        #[arg(long, value_parser = crate::parse::duration_ms, value_name = "DURATION")]
        cert_expiry: Option<u64>,
    },
}

pub async fn run(mut client: Client, cmd: ClusterCommand) -> anyhow::Result<()> {
    let cluster = call!(client, get_cluster(GetClusterRequest {}))?
        .cluster
        .unwrap_or_default();
    match cmd {
        ClusterCommand::Inspect => {
            println!("{}", serde_json::to_string_pretty(&cluster)?);
        }
        ClusterCommand::Backup { file } => {
            let mut parts = call!(client, backup(shoal_api::BackupRequest {}))?;
            let (bytes, version) = write_backup(&file, &mut parts).await?;
            println!(
                "backup of cluster {} at version {version}: {} ({bytes} bytes)",
                cluster.id,
                file.display()
            );
        }
        ClusterCommand::Update {
            task_history_limit,
            dispatcher_heartbeat,
            election_timeout,
            max_replicas_per_service,
            max_replicas_total,
            max_new_tasks_per_pass,
            dynamic_ports,
            cert_expiry,
        } => {
            let mut spec = cluster.spec.clone().unwrap_or_default();
            let orchestration = spec
                .orchestration
                .get_or_insert_with(OrchestrationConfig::default);
            if let Some(limit) = task_history_limit {
                orchestration.task_history_retention_limit = limit;
            }
            if let Some(n) = max_replicas_per_service {
                orchestration.max_replicas_per_service = n;
            }
            if let Some(n) = max_replicas_total {
                orchestration.max_replicas_total = n;
            }
            if let Some(n) = max_new_tasks_per_pass {
                orchestration.max_new_tasks_per_pass = n;
            }
            if let Some(range) = dynamic_ports {
                orchestration.dynamic_ports = Some(range);
            }
            if let Some(ms) = dispatcher_heartbeat {
                spec.dispatcher
                    .get_or_insert_with(DispatcherConfig::default)
                    .heartbeat_period_ms = ms;
            }
            if let Some(ms) = election_timeout {
                spec.raft
                    .get_or_insert_with(RaftConfig::default)
                    .election_timeout_ms = ms;
            }
            if let Some(ms) = cert_expiry {
                // Whole seconds, rounded up: 1500ms is not 1s.
                spec.ca
                    .get_or_insert_with(CaConfig::default)
                    .node_cert_expiry_secs = ms.div_ceil(1_000);
            }
            call!(
                client,
                update_cluster(UpdateClusterRequest {
                    cluster_id: cluster.id.clone(),
                    version: cluster.meta.as_ref().map_or(0, |m| m.version),
                    spec: Some(spec),
                })
            )?;
            println!("{}", cluster.id);
        }
    }
    Ok(())
}

/// Writes the backup streamed in `parts` to `file`, through a temporary
/// file renamed over it once complete and on disk: (bytes, version).
async fn write_backup(
    file: &std::path::Path,
    parts: &mut tonic::Streaming<shoal_api::BackupChunk>,
) -> anyhow::Result<(u64, u64)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fn libc_o_nofollow() -> i32 {
        nix::fcntl::OFlag::O_NOFOLLOW.bits()
    }
    let mut tmp_name = file.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    // A file left by an earlier try goes; the new one is made here, never
    // opened through a link, and readable by its owner only from the start.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("{}: {e}", tmp.display()),
    }
    let written = async {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(&tmp)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
        out.write_all(shoal_api::backup_file::MAGIC)?;
        let mut digest = shoal_api::backup_file::BackupDigest::default();
        let (mut bytes, mut version) = (0u64, 0u64);
        while let Some(part) = parts.message().await? {
            if version == 0 {
                version = part.version;
            }
            bytes += part.data.len() as u64;
            digest.update(&part.data);
            out.write_all(&part.data)?;
        }
        out.write_all(&digest.trailer())?;
        out.sync_all()?;
        anyhow::Ok((bytes, version))
    }
    .await;
    let (bytes, version) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("writing the backup to {}", file.display())));
        }
    };
    std::fs::rename(&tmp, file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok((bytes, version))
}
