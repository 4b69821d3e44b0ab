//! The service flags shared by `service create` and `service update`, and how
//! they change a [`ServiceSpec`]. Create applies them to an empty spec; update
//! applies them to the current one, where list flags add entries (replacing
//! those with the same key) and the `--*-rm` flags remove them.

use clap::{Args, ValueEnum};
use shoal_api::{
    restart_policy, update_config, NetworkAttachmentConfig, PlacementPreference, PortConfig,
    ServiceMode, ServiceSpec, UpdateConfig,
};

use crate::parse;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RestartCondition {
    Any,
    OnFailure,
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UpdateOrder {
    StopFirst,
    StartFirst,
}

/// Flags that set one field of the spec.
#[derive(Debug, Clone, Args, Default)]
pub struct SpecFlags {
    /// Number of tasks (replicated services), or of completions (replicated jobs).
    #[arg(long, allow_negative_numbers = true)]
    pub replicas: Option<i64>,
    /// A replicated job's tasks running at once (0: all its replicas).
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Image to run as a container on nodes with a Docker Engine (without
    /// one, the command runs as a process).
    #[arg(long)]
    pub image: Option<String>,
    /// Replace the image's ENTRYPOINT (words split as a shell splits them;
    /// "" clears it).
    #[arg(long, value_name = "COMMAND")]
    pub entrypoint: Option<String>,
    /// The container's hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Run an init inside the container that forwards signals and reaps
    /// processes.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub init: Option<bool>,
    /// Mount the container's root filesystem read-only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub read_only: Option<bool>,
    /// The signal that asks a task to stop (default SIGTERM).
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Most processes each container may run (0: no limit).
    #[arg(long, value_name = "COUNT", allow_negative_numbers = true)]
    pub limit_pids: Option<i64>,
    /// Working directory of the command.
    #[arg(long)]
    pub workdir: Option<String>,
    /// User the command runs as.
    #[arg(long)]
    pub user: Option<String>,
    /// CPUs reserved for each task (e.g. 0.5).
    #[arg(long, value_parser = parse::nano_cpus, value_name = "CPUS")]
    pub reserve_cpu: Option<i64>,
    /// Memory reserved for each task (e.g. 64M).
    #[arg(long, value_parser = parse::memory_bytes, value_name = "BYTES")]
    pub reserve_memory: Option<i64>,
    /// CPU limit of each task.
    #[arg(long, value_parser = parse::nano_cpus, value_name = "CPUS")]
    pub limit_cpu: Option<i64>,
    /// Memory limit of each task.
    #[arg(long, value_parser = parse::memory_bytes, value_name = "BYTES")]
    pub limit_memory: Option<i64>,
    /// When to restart a finished task.
    #[arg(long, value_enum)]
    pub restart_condition: Option<RestartCondition>,
    /// Wait between restarts (e.g. 5s).
    #[arg(long, value_parser = parse::duration_ms, value_name = "DURATION")]
    pub restart_delay: Option<u64>,
    /// Restarts allowed within the window (0: no limit).
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    /// Window over which restarts are counted (e.g. 1m).
    #[arg(long, value_parser = parse::duration_ms, value_name = "DURATION")]
    pub restart_window: Option<u64>,
    /// Tasks updated at once (0: all).
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    /// Wait between update batches.
    #[arg(long, value_parser = parse::duration_ms, value_name = "DURATION")]
    pub update_delay: Option<u64>,
    /// What to do when an update fails.
    #[arg(long, value_enum)]
    pub update_failure_action: Option<FailureAction>,
    /// How long each updated task is watched for failure.
    #[arg(long, value_parser = parse::duration_ms, value_name = "DURATION")]
    pub update_monitor: Option<u64>,
    /// Failure ratio tolerated during an update (0 to 1).
    #[arg(long)]
    pub update_max_failure_ratio: Option<f32>,
    /// Stop the old task before starting the new one, or the reverse.
    #[arg(long, value_enum)]
    pub update_order: Option<UpdateOrder>,
    /// Tasks rolled back at once (0: all).
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    #[arg(long, value_parser = parse::duration_ms, value_name = "DURATION")]
    pub rollback_delay: Option<u64>,
    #[arg(long, value_enum)]
    pub rollback_failure_action: Option<FailureAction>,
    #[arg(long, value_parser = parse::duration_ms, value_name = "DURATION")]
    pub rollback_monitor: Option<u64>,
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<f32>,
    #[arg(long, value_enum)]
    pub rollback_order: Option<UpdateOrder>,
    /// Most tasks of this service on one node (0: no limit).
    #[arg(long)]
    pub replicas_max_per_node: Option<u64>,
    /// Time a task gets to stop after SIGTERM before SIGKILL.
    #[arg(long, value_parser = parse::duration_ms, value_name = "DURATION")]
    pub stop_grace_period: Option<u64>,
    /// Command that checks a task's health (run with `sh -c` as the task
    /// runs: its user, env, dir and cgroup; exit 0 is healthy).
    #[arg(long, value_name = "COMMAND")]
    pub health_cmd: Option<String>,
    /// Time between health checks (default 30s).
    #[arg(long, value_parser = parse::duration_ms, value_name = "DURATION")]
    pub health_interval: Option<u64>,
    /// Longest a health check may take (default 30s).
    #[arg(long, value_parser = parse::duration_ms, value_name = "DURATION")]
    pub health_timeout: Option<u64>,
    /// Failures in a row that make a task unhealthy (default 3).
    #[arg(long)]
    pub health_retries: Option<u64>,
    /// Time after start during which failures do not count (default 0s).
    #[arg(long, value_parser = parse::duration_ms, value_name = "DURATION")]
    pub health_start_period: Option<u64>,
    /// Run no health check.
    #[arg(long, conflicts_with_all = ["health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period"])]
    pub no_healthcheck: bool,
}

/// Docker's defaults for what a health check leaves unset.
const HEALTH_INTERVAL_MS: u64 = 30_000;
const HEALTH_TIMEOUT_MS: u64 = 30_000;
const HEALTH_RETRIES: u64 = 3;

/// Flags that add entries to a list or map of the spec.
#[derive(Debug, Clone, Args, Default)]
pub struct ListFlags {
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Service label KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l', value_parser = parse::key_value, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,
    /// Placement constraint, e.g. node.labels.zone==a (repeatable).
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// Placement preference, spread=node.labels.KEY (repeatable, in order).
    #[arg(long = "placement-pref", value_name = "spread=LABEL")]
    pub placement_prefs: Vec<String>,
    /// Publish a port, PUBLISHED:TARGET[/tcp|udp] or
    /// published=P,target=T[,protocol=tcp|udp][,mode=ingress|host] (repeatable).
    #[arg(long = "publish", short = 'p', value_parser = parse::port, value_name = "PORT")]
    pub publish: Vec<PortConfig>,
    /// A port each task gets on its node, NAME or NAME:PORT (a free one of
    /// the cluster's range, or PORT); the task is told it as
    /// SHOAL_PORT_<NAME> (repeatable; replaces a port of the same name).
    #[arg(long = "port", value_parser = parse::named_port, value_name = "NAME[:PORT]")]
    pub ports: Vec<shoal_api::NamedPort>,
    /// Attach to a network (repeatable).
    #[arg(long = "network", value_name = "NETWORK")]
    pub networks: Vec<String>,
    /// Mount into the container:
    /// type=bind|volume|tmpfs,source=S,target=T[,readonly][,tmpfs-size=SIZE]
    /// (repeatable; replaces a mount at the same target).
    #[arg(long = "mount", value_parser = parse::mount, value_name = "MOUNT")]
    pub mounts: Vec<shoal_api::Mount>,
    /// Container label KEY=VALUE (repeatable).
    #[arg(long = "container-label", value_parser = parse::key_value, value_name = "KEY=VALUE")]
    pub container_labels: Vec<(String, String)>,
    /// Add a Linux capability to the container (repeatable).
    #[arg(long = "cap-add", value_name = "CAPABILITY")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability from the container (repeatable).
    #[arg(long = "cap-drop", value_name = "CAPABILITY")]
    pub cap_drop: Vec<String>,
}

/// Flags of `service update` that remove entries.
#[derive(Debug, Clone, Args, Default)]
pub struct RemoveFlags {
    /// Remove an environment variable by KEY.
    #[arg(long, value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Remove a label by KEY.
    #[arg(long, value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Remove a constraint.
    #[arg(long, value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Remove a placement preference.
    #[arg(long, value_name = "spread=LABEL")]
    pub placement_pref_rm: Vec<String>,
    /// Unpublish a port by its published number.
    #[arg(long, value_name = "PUBLISHED")]
    pub publish_rm: Vec<u32>,
    /// Remove a named port by NAME.
    #[arg(long, value_name = "NAME")]
    pub port_rm: Vec<String>,
    /// Detach from a network.
    #[arg(long, value_name = "NETWORK")]
    pub network_rm: Vec<String>,
    /// Remove the mount at TARGET.
    #[arg(long, value_name = "TARGET")]
    pub mount_rm: Vec<String>,
    /// Remove a container label by KEY.
    #[arg(long, value_name = "KEY")]
    pub container_label_rm: Vec<String>,
}

fn update_config(
    config: &mut Option<UpdateConfig>,
    parallelism: Option<u64>,
    delay: Option<u64>,
    action: Option<FailureAction>,
    monitor: Option<u64>,
    ratio: Option<f32>,
    order: Option<UpdateOrder>,
) {
    if parallelism.is_none()
        && delay.is_none()
        && action.is_none()
        && monitor.is_none()
        && ratio.is_none()
        && order.is_none()
    {
        return;
    }
    let c = config.get_or_insert_with(UpdateConfig::unset);
    if let Some(v) = parallelism {
        c.parallelism = v;
    }
    if let Some(v) = delay {
        c.delay_ms = v;
    }
    if let Some(v) = action {
        c.failure_action = match v {
            FailureAction::Pause => update_config::FailureAction::Pause,
            FailureAction::Continue => update_config::FailureAction::Continue,
            FailureAction::Rollback => update_config::FailureAction::Rollback,
        } as i32;
    }
    if let Some(v) = monitor {
        c.monitor_ms = v;
    }
    if let Some(v) = ratio {
        c.max_failure_ratio = v;
    }
    if let Some(v) = order {
        c.order = match v {
            UpdateOrder::StopFirst => update_config::Order::StopFirst,
            UpdateOrder::StartFirst => update_config::Order::StartFirst,
        } as i32;
    }
}

impl SpecFlags {
    /// The health flags: any of them sets (or changes) the check, unset
    /// fields taking docker's defaults; `--no-healthcheck` removes it.
    fn apply_health(&self, task: &mut shoal_api::TaskSpec) {
        if self.no_healthcheck {
            // Not even the image's own HEALTHCHECK.
            task.health = Some(shoal_api::HealthConfig {
                disabled: true,
                ..Default::default()
            });
            return;
        }
        let any = self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some();
        if !any {
            return;
        }
        if task.health.as_ref().is_some_and(|h| h.disabled) {
            task.health = None;
        }
        let health = task.health.get_or_insert_with(|| shoal_api::HealthConfig {
            interval_ms: HEALTH_INTERVAL_MS,
            timeout_ms: HEALTH_TIMEOUT_MS,
            retries: HEALTH_RETRIES,
            ..Default::default()
        });
        if let Some(v) = &self.health_cmd {
            health.command = v.clone();
        }
        if let Some(v) = self.health_interval {
            health.interval_ms = v;
        }
        if let Some(v) = self.health_timeout {
            health.timeout_ms = v;
        }
        if let Some(v) = self.health_retries {
            health.retries = v;
        }
        if let Some(v) = self.health_start_period {
            health.start_period_ms = v;
        }
    }
}

/// Sets the service mode.
pub fn apply_mode(spec: &mut ServiceSpec, mode: Mode) {
    spec.mode = match mode {
        Mode::Replicated => ServiceMode::Replicated,
        Mode::Global => ServiceMode::Global,
        Mode::ReplicatedJob => ServiceMode::ReplicatedJob,
        Mode::GlobalJob => ServiceMode::GlobalJob,
    } as i32;
}

impl SpecFlags {
    /// Writes every flag that was given into `spec`. `--entrypoint` that
    /// does not split into words is refused.
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), String> {
        if let Some(r) = self.replicas {
            spec.replicas = Some(r);
        }
        if let Some(m) = self.max_concurrent {
            spec.max_concurrent = m;
        }
        self.apply_health(spec.task.get_or_insert_with(Default::default));
        let task = spec.task.get_or_insert_with(Default::default);
        let runtime = task.runtime.get_or_insert_with(Default::default);
        if let Some(v) = &self.image {
            runtime.image = v.clone();
        }
        if let Some(v) = &self.workdir {
            runtime.dir = v.clone();
        }
        if let Some(v) = &self.user {
            runtime.user = v.clone();
        }
        if let Some(v) = self.stop_grace_period {
            runtime.stop_grace_period_ms = v;
        }
        if let Some(v) = &self.entrypoint {
            runtime.entrypoint = parse::words(v).map_err(|e| format!("--entrypoint: {e}"))?;
        }
        if let Some(v) = &self.hostname {
            runtime.hostname = v.clone();
        }
        if let Some(v) = self.init {
            runtime.init = v;
        }
        if let Some(v) = self.read_only {
            runtime.read_only = v;
        }
        if let Some(v) = &self.stop_signal {
            runtime.stop_signal = v.clone();
        }
        if self.reserve_cpu.is_some()
            || self.reserve_memory.is_some()
            || self.limit_cpu.is_some()
            || self.limit_memory.is_some()
            || self.limit_pids.is_some()
        {
            let resources = task.resources.get_or_insert_with(Default::default);
            let reservations = resources.reservations.get_or_insert_with(Default::default);
            if let Some(v) = self.reserve_cpu {
                reservations.nano_cpus = v;
            }
            if let Some(v) = self.reserve_memory {
                reservations.memory_bytes = v;
            }
            let limits = resources.limits.get_or_insert_with(Default::default);
            if let Some(v) = self.limit_cpu {
                limits.nano_cpus = v;
            }
            if let Some(v) = self.limit_memory {
                limits.memory_bytes = v;
            }
            if let Some(v) = self.limit_pids {
                limits.pids = v;
            }
        }
        if self.restart_condition.is_some()
            || self.restart_delay.is_some()
            || self.restart_max_attempts.is_some()
            || self.restart_window.is_some()
        {
            let restart = task
                .restart
                .get_or_insert_with(|| shoal_api::RestartPolicy {
                    delay_ms: 5_000,
                    ..Default::default()
                });
            if let Some(v) = self.restart_condition {
                restart.condition = match v {
                    RestartCondition::Any => restart_policy::Condition::Any,
                    RestartCondition::OnFailure => restart_policy::Condition::OnFailure,
                    RestartCondition::None => restart_policy::Condition::None,
                } as i32;
            }
            if let Some(v) = self.restart_delay {
                restart.delay_ms = v;
            }
            if let Some(v) = self.restart_max_attempts {
                restart.max_attempts = v;
            }
            if let Some(v) = self.restart_window {
                restart.window_ms = v;
            }
        }
        if let Some(v) = self.replicas_max_per_node {
            task.placement
                .get_or_insert_with(Default::default)
                .max_replicas_per_node = v;
        }
        update_config(
            &mut spec.update,
            self.update_parallelism,
            self.update_delay,
            self.update_failure_action,
            self.update_monitor,
            self.update_max_failure_ratio,
            self.update_order,
        );
        update_config(
            &mut spec.rollback,
            self.rollback_parallelism,
            self.rollback_delay,
            self.rollback_failure_action,
            self.rollback_monitor,
            self.rollback_max_failure_ratio,
            self.rollback_order,
        );
        Ok(())
    }
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

impl ListFlags {
    /// Adds every entry, replacing same-key ones (env, labels) and skipping
    /// exact duplicates (constraints, preferences, networks). With `replace`
    /// (update), a port published again replaces the old mapping; without it
    /// (create), both are kept so validation refuses the duplicate.
    pub fn apply(&self, spec: &mut ServiceSpec, replace: bool) {
        let annotations = spec.annotations.get_or_insert_with(Default::default);
        for (k, v) in &self.labels {
            annotations.labels.insert(k.clone(), v.clone());
        }
        let task = spec.task.get_or_insert_with(Default::default);
        let runtime = task.runtime.get_or_insert_with(Default::default);
        for entry in &self.env {
            runtime.env.retain(|e| env_key(e) != env_key(entry));
            runtime.env.push(entry.clone());
        }
        for m in &self.mounts {
            runtime.mounts.retain(|x| x.target != m.target);
            runtime.mounts.push(m.clone());
        }
        for (k, v) in &self.container_labels {
            runtime.labels.insert(k.clone(), v.clone());
        }
        // As docker's: adding a capability takes it off the drop list, and
        // the reverse.
        for cap in &self.cap_add {
            runtime.cap_drop.retain(|c| !c.eq_ignore_ascii_case(cap));
            if !runtime.cap_add.iter().any(|c| c.eq_ignore_ascii_case(cap)) {
                runtime.cap_add.push(cap.clone());
            }
        }
        for cap in &self.cap_drop {
            runtime.cap_add.retain(|c| !c.eq_ignore_ascii_case(cap));
            if !runtime.cap_drop.iter().any(|c| c.eq_ignore_ascii_case(cap)) {
                runtime.cap_drop.push(cap.clone());
            }
        }
        if !self.constraints.is_empty() || !self.placement_prefs.is_empty() {
            let placement = task.placement.get_or_insert_with(Default::default);
            for c in &self.constraints {
                if !placement.constraints.contains(c) {
                    placement.constraints.push(c.clone());
                }
            }
            for p in &self.placement_prefs {
                let descriptor = p.strip_prefix("spread=").unwrap_or(p).to_string();
                if !placement
                    .preferences
                    .iter()
                    .any(|x| x.spread_descriptor == descriptor)
                {
                    placement.preferences.push(PlacementPreference {
                        spread_descriptor: descriptor,
                    });
                }
            }
        }
        for p in &self.ports {
            task.ports
                .retain(|x| !replace || !x.name.eq_ignore_ascii_case(&p.name));
            task.ports.push(p.clone());
        }
        for n in &self.networks {
            if !task.networks.iter().any(|x| &x.target == n) {
                task.networks.push(NetworkAttachmentConfig {
                    target: n.clone(),
                    aliases: Vec::new(),
                });
            }
        }
        if !self.publish.is_empty() {
            let endpoint = spec.endpoint.get_or_insert_with(Default::default);
            for p in &self.publish {
                endpoint.ports.retain(|x| {
                    !replace
                        || p.published_port == 0
                        || x.published_port != p.published_port
                        || x.protocol != p.protocol
                });
                endpoint.ports.push(p.clone());
            }
        }
    }
}

impl RemoveFlags {
    /// Removes every named entry. Networks are matched by the id or the name
    /// the user gives, so `resolve` maps a name to the stored id.
    pub fn apply(&self, spec: &mut ServiceSpec, resolve: &dyn Fn(&str) -> String) {
        if let Some(a) = spec.annotations.as_mut() {
            for k in &self.label_rm {
                a.labels.remove(k);
            }
        }
        let Some(task) = spec.task.as_mut() else {
            return;
        };
        if let Some(runtime) = task.runtime.as_mut() {
            runtime
                .env
                .retain(|e| !self.env_rm.iter().any(|k| k == env_key(e)));
            runtime
                .mounts
                .retain(|m| !self.mount_rm.contains(&m.target));
            for k in &self.container_label_rm {
                runtime.labels.remove(k);
            }
        }
        if let Some(placement) = task.placement.as_mut() {
            placement
                .constraints
                .retain(|c| !self.constraint_rm.contains(c));
            placement.preferences.retain(|p| {
                !self
                    .placement_pref_rm
                    .iter()
                    .any(|r| r.strip_prefix("spread=").unwrap_or(r) == p.spread_descriptor)
            });
        }
        task.ports
            .retain(|p| !self.port_rm.iter().any(|r| r.eq_ignore_ascii_case(&p.name)));
        let network_ids: Vec<String> = self.network_rm.iter().map(|n| resolve(n)).collect();
        task.networks
            .retain(|n| !network_ids.contains(&n.target) && !self.network_rm.contains(&n.target));
        if let Some(endpoint) = spec.endpoint.as_mut() {
            endpoint
                .ports
                .retain(|p| !self.publish_rm.contains(&p.published_port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_flags_add_replace_and_remove_entries() {
        let mut spec = ServiceSpec::default();
        ListFlags {
            env: vec!["A=1".into(), "B=1".into()],
            labels: vec![("tier".into(), "front".into())],
            ..Default::default()
        }
        .apply(&mut spec, false);
        ListFlags {
            env: vec!["B=2".into()],
            ..Default::default()
        }
        .apply(&mut spec, true);
        let env = &spec.task.as_ref().unwrap().runtime.as_ref().unwrap().env;
        assert_eq!(env, &vec!["A=1".to_string(), "B=2".to_string()]);
        RemoveFlags {
            env_rm: vec!["A".into()],
            label_rm: vec!["tier".into()],
            ..Default::default()
        }
        .apply(&mut spec, &|n| n.to_string());
        let env = &spec.task.as_ref().unwrap().runtime.as_ref().unwrap().env;
        assert_eq!(env, &vec!["B=2".to_string()]);
        assert!(spec.annotations.unwrap().labels.is_empty());
    }

    #[test]
    fn restart_and_update_flags_fill_their_configs() {
        let mut spec = ServiceSpec::default();
        SpecFlags {
            restart_condition: Some(RestartCondition::OnFailure),
            restart_delay: Some(2_000),
            update_parallelism: Some(2),
            update_delay: Some(5_000),
            ..Default::default()
        }
        .apply(&mut spec)
        .unwrap();
        let restart = spec.task.unwrap().restart.unwrap();
        assert_eq!(
            restart.condition,
            restart_policy::Condition::OnFailure as i32
        );
        assert_eq!(restart.delay_ms, 2_000);
        let update = spec.update.unwrap();
        assert_eq!((update.parallelism, update.delay_ms), (2, 5_000));
        assert!(spec.rollback.is_none());
    }
}
