//! The container executor: runs a task with an image as a container on the
//! node's Docker Engine ([`Engine`]).
//!
//! PREPARING finds the image (pulling it when the node lacks it) and creates
//! the container; STARTING starts it; it is RUNNING once the engine says so.
//! Its end (exit code, OOM kill, the engine's error) comes from the engine.
//! Every container carries `com.shoal.*` labels naming its task, service and
//! node, which is how a restarted agent finds its containers again
//! ([`leftovers`]). Its output is copied from the engine's log
//! stream into the task's `stdout.log` and `stderr.log`, stamped with the
//! engine's times, so `service logs` reads containers as it reads processes.
//! Health checks run inside the container (`exec sh -c`); an image's own
//! HEALTHCHECK is the check when the spec sets none, run the same way (the
//! engine's own runner is switched off, so one check never runs twice).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, HostConfig,
    Mount as EngineMount, MountTmpfsOptions, MountType, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use shoal_api::{mount, port_config, HealthConfig, HealthProbe, Resources, Runtime, Task};

use crate::engine::{engine_text, not_found, Engine, CALL_TIMEOUT};
use crate::executor::{Executor, ExitOutcome, TaskFailure, Workload};
use crate::log_pipe::LogWriter;

/// Labels on every container Shoal makes.
pub const TASK_LABEL: &str = "com.shoal.task.id";
pub const SERVICE_LABEL: &str = "com.shoal.service.id";
pub const NODE_LABEL: &str = "com.shoal.node.id";
pub const SLOT_LABEL: &str = "com.shoal.task.slot";

/// The longest a pull may take before the task is rejected.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the engine may be unreachable while a container runs before
/// the task is failed for it.
const ENGINE_GONE_AFTER: Duration = Duration::from_secs(60);
/// Between two tries to reach an engine that went away.
const ENGINE_RETRY: Duration = Duration::from_secs(1);
/// After the container ended, how long its last output may take to reach
/// the logs.
const LOG_DRAIN: Duration = Duration::from_secs(5);
/// Between two asks whether a health check's exec has ended.
const EXEC_POLL: Duration = Duration::from_millis(10);
/// How long one wait for a container's end is given before it is asked
/// again (a connection that died without a word is found out).
const WAIT_ROUND: Duration = Duration::from_secs(60);
/// Tries to follow a container's logs again after the stream broke, one
/// each [`ENGINE_RETRY`], before its output is given up.
const LOG_RETRIES: u32 = 60;
/// How often, and how far apart, a container that ended is looked at again
/// when the engine's answer is not final yet (its OOM flag, a removal under
/// way).
const OOM_LOOKS: u32 = 20;
const OOM_LOOK_PAUSE: Duration = Duration::from_millis(100);
/// The pull progress kept for the task's message, at most.
const MAX_PULL_STATUS: usize = 200;

/// Runs one task as a container.
pub struct ContainerExecutor {
    engine: Engine,
    task_id: String,
    service_id: String,
    node_id: String,
    slot: u64,
    runtime: Runtime,
    limits: Resources,
    ports: Vec<shoal_api::PortConfig>,
    /// The named ports it was given on this node: (name, port).
    named_ports: Vec<(String, u32)>,
    name: String,
    dir: PathBuf,
    max_log_bytes: u64,
    container_id: Option<String>,
    /// Whether the container was started here (an adopted one is looked
    /// at first: one created but never started has no end to wait for).
    seen_started: bool,
    /// The watch for its end ([`watch_end`]), once waited for.
    end_watch: Option<tokio::task::JoinHandle<Result<i64, TaskFailure>>>,
    /// How it ended, as the engine said, while its last output drains.
    ended: Option<ExitOutcome>,
    /// Until when that output may drain: set once, so the bound holds
    /// across waits the task runner cancels.
    drain_deadline: Option<tokio::time::Instant>,
    /// How it ended, once known and its output kept.
    exited: Option<ExitOutcome>,
    /// Why its end cannot be known (removed, the engine gone), once so.
    failed: Option<TaskFailure>,
    /// The image's own HEALTHCHECK, once looked up (`None` inside: none).
    own_health: Option<Option<ImageCheck>>,
    log_copy: Option<tokio::task::JoinHandle<()>>,
    /// How a pull goes, for the task's status message.
    progress: tokio::sync::watch::Sender<String>,
}

impl Drop for ContainerExecutor {
    fn drop(&mut self) {
        // An agent that goes away leaves the container running; the next
        // one copies its logs again from where they stopped.
        if let Some(copy) = &self.log_copy {
            copy.abort();
        }
        if let Some(watch) = &self.end_watch {
            watch.abort();
        }
    }
}

impl ContainerExecutor {
    /// An executor for `task` on `engine`; its logs under `tasks_dir`.
    pub fn new(
        engine: &Engine,
        tasks_dir: &std::path::Path,
        max_log_bytes: u64,
        task: &Task,
    ) -> ContainerExecutor {
        let spec = task.spec.clone().unwrap_or_default();
        let mut runtime = spec.runtime.unwrap_or_default();
        runtime.env.extend(shoal_api::task_ports::port_env(task));
        let limits = spec.resources.and_then(|r| r.limits).unwrap_or_default();
        // Named ports are published on the node at the same number the
        // container binds (SHOAL_PORT_<NAME>).
        let ports = task
            .endpoint
            .iter()
            .flat_map(|e| &e.ports)
            .filter(|p| p.publish_mode == port_config::PublishMode::Host as i32)
            .chain(task.named_ports())
            .cloned()
            .collect();
        let named_ports = task
            .named_ports()
            .iter()
            .map(|p| (p.name.clone(), p.published_port))
            .collect();
        let base = task
            .annotations
            .as_ref()
            .map(|a| a.name.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or("shoal");
        ContainerExecutor {
            engine: engine.clone(),
            task_id: task.id.clone(),
            service_id: task.service_id.clone(),
            node_id: task.node_id.clone(),
            slot: task.slot,
            runtime,
            limits,
            ports,
            named_ports,
            name: container_name(base, &task.id),
            dir: tasks_dir.join(&task.id),
            max_log_bytes,
            container_id: None,
            seen_started: false,
            end_watch: None,
            ended: None,
            drain_deadline: None,
            exited: None,
            failed: None,
            own_health: None,
            log_copy: None,
            progress: tokio::sync::watch::Sender::new(String::new()),
        }
    }

    /// Takes over this task's container `container_id`, left by an earlier
    /// agent: its logs are copied again from the last line already kept.
    pub fn adopt(
        engine: &Engine,
        tasks_dir: &std::path::Path,
        max_log_bytes: u64,
        task: &Task,
        container_id: &str,
    ) -> ContainerExecutor {
        let mut executor = ContainerExecutor::new(engine, tasks_dir, max_log_bytes, task);
        executor.container_id = Some(container_id.to_string());
        executor.copy_logs();
        executor
    }

    /// The container's configuration, from the task's spec.
    fn config(&self) -> ContainerCreateBody {
        let r = &self.runtime;
        let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let mut labels: HashMap<String, String> = r.labels.clone().into_iter().collect();
        labels.insert(TASK_LABEL.into(), self.task_id.clone());
        labels.insert(SERVICE_LABEL.into(), self.service_id.clone());
        labels.insert(NODE_LABEL.into(), self.node_id.clone());
        labels.insert(SLOT_LABEL.into(), self.slot.to_string());
        let mut env = r.env.clone();
        env.push(format!("{}={}", crate::TASK_ID_ENV, self.task_id));
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for p in &self.ports {
            let protocol = if p.protocol == port_config::Protocol::Udp as i32 {
                "udp"
            } else {
                "tcp"
            };
            let key = format!("{}/{protocol}", p.target_port);
            exposed.push(key.clone());
            port_bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: (p.published_port != 0).then(|| p.published_port.to_string()),
                }]),
            );
        }
        let grace_secs = r.stop_grace_period_ms.div_ceil(1000);
        ContainerCreateBody {
            image: Some(r.image.clone()),
            cmd: non_empty(&r.command),
            entrypoint: non_empty(&r.entrypoint),
            env: Some(env),
            working_dir: (!r.dir.is_empty()).then(|| r.dir.clone()),
            user: (!r.user.is_empty()).then(|| r.user.clone()),
            hostname: (!r.hostname.is_empty()).then(|| r.hostname.clone()),
            labels: Some(labels),
            stop_signal: (!r.stop_signal.is_empty()).then(|| r.stop_signal.clone()),
            stop_timeout: (r.stop_grace_period_ms > 0).then_some(grace_secs as i64),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            // Shoal runs the check (the spec's or the image's) itself.
            healthcheck: Some(bollard::models::HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                memory: (self.limits.memory_bytes > 0).then_some(self.limits.memory_bytes),
                nano_cpus: (self.limits.nano_cpus > 0).then_some(self.limits.nano_cpus),
                pids_limit: (self.limits.pids > 0).then_some(self.limits.pids),
                init: r.init.then_some(true),
                readonly_rootfs: r.read_only.then_some(true),
                cap_add: non_empty(&r.cap_add),
                cap_drop: non_empty(&r.cap_drop),
                mounts: (!r.mounts.is_empty()).then(|| r.mounts.iter().map(engine_mount).collect()),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create(
        &self,
    ) -> Result<bollard::models::ContainerCreateResponse, bollard::errors::Error> {
        let options = CreateContainerOptionsBuilder::new()
            .name(&self.name)
            .build();
        self.engine
            .docker
            .create_container(Some(options), self.config())
            .await
    }

    /// The image, from the node or pulled; its own health check kept.
    async fn image(&mut self) -> Result<(), TaskFailure> {
        let image = self.runtime.image.clone();
        let docker = &self.engine.docker;
        let inspected = match docker.inspect_image(&image).await {
            Ok(found) => found,
            Err(e) if not_found(&e) => {
                self.pull(&image).await?;
                docker
                    .inspect_image(&image)
                    .await
                    .map_err(|e| TaskFailure(format!("image {image:?}: {}", engine_text(&e))))?
            }
            Err(e) => {
                return Err(TaskFailure(format!(
                    "image {image:?}: the Docker Engine at {}: {}",
                    self.engine.host,
                    engine_text(&e)
                )))
            }
        };
        self.own_health = Some(
            inspected
                .config
                .and_then(|c| c.healthcheck)
                .and_then(image_health),
        );
        Ok(())
    }

    /// The image's HEALTHCHECK of an adopted container (never prepared
    /// here), looked up once.
    async fn adopted_image_check(&mut self) -> Option<ImageCheck> {
        let id = self.container_id.clone()?;
        let docker = &self.engine.docker;
        let image = docker.inspect_container(&id, None).await.ok()?.image?;
        let check = docker
            .inspect_image(&image)
            .await
            .ok()
            .and_then(|i| i.config)
            .and_then(|c| c.healthcheck)
            .and_then(image_health);
        self.own_health = Some(check.clone());
        check
    }

    async fn pull(&self, image: &str) -> Result<(), TaskFailure> {
        let not_pulled = |why: String| {
            TaskFailure(format!(
                "image {image:?} not found on node {} and could not be pulled: {why}",
                self.engine.hostname
            ))
        };
        // Without a tag the engine would pull every tag of the repository.
        let last = image.rsplit('/').next().unwrap_or(image);
        let options = if last.contains(':') || image.contains('@') {
            CreateImageOptionsBuilder::new().from_image(image).build()
        } else {
            CreateImageOptionsBuilder::new()
                .from_image(image)
                .tag("latest")
                .build()
        };
        let mut pull = self
            .engine
            .long
            .create_image(Some(options), None, None)
            .boxed();
        let mut last = String::new();
        let pulled = tokio::time::timeout(PULL_TIMEOUT, async {
            while let Some(step) = pull.next().await {
                let step = step.map_err(|e| engine_text(&e))?;
                if let Some(e) = step.error_detail.and_then(|d| d.message) {
                    return Err(e);
                }
                if let Some(status) = step.status {
                    last = status.chars().take(MAX_PULL_STATUS).collect();
                    let detail = step
                        .progress_detail
                        .and_then(|d| Some((d.current?, d.total?)))
                        .filter(|(_, total)| *total > 0)
                        .map(|(current, total)| format!(" {}%", current * 100 / total))
                        .unwrap_or_default();
                    self.progress
                        .send_replace(format!("pulling {image}: {last}{detail}"));
                }
            }
            Ok(())
        })
        .await;
        match pulled {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(not_pulled(why)),
            Err(_) => Err(not_pulled(format!(
                "the pull took more than {PULL_TIMEOUT:?} (last: {last})"
            ))),
        }
    }

    /// Starts copying the container's output into the task's logs, from
    /// just after the last line they hold. A stream that breaks (the engine
    /// restarts, the connection drops) is followed again from there; it
    /// ends when the container stops.
    fn copy_logs(&mut self) {
        let Some(id) = self.container_id.clone() else {
            return;
        };
        if let Some(old) = self.log_copy.take() {
            old.abort();
        }
        let out = LogWriter::open(self.dir.join("stdout.log"), self.max_log_bytes);
        let err = LogWriter::open(self.dir.join("stderr.log"), self.max_log_bytes);
        let (Ok(mut out), Ok(mut err)) = (out, err) else {
            tracing::warn!(task = %self.task_id, dir = %self.dir.display(), "the task's logs cannot be opened; its output is not kept");
            return;
        };
        // The rotated files count too: right after a rotation the current
        // ones are empty.
        let mut after_ns = ["stdout.log", "stderr.log", "stdout.log.1", "stderr.log.1"]
            .iter()
            .filter_map(|name| last_stamp(&self.dir.join(name)))
            .max()
            .unwrap_or(0);
        let docker = self.engine.long.clone();
        let task = self.task_id.clone();
        self.log_copy = Some(tokio::spawn(async move {
            let mut failures = 0;
            loop {
                // Lines up to the resume point come again (`since` is in
                // seconds) and are skipped, until the first newer one;
                // after it, every line is kept, whatever its stamp (the
                // pieces of a long line share one, stdout and stderr
                // interleave).
                let resume_ns = after_ns;
                let mut resumed = resume_ns == 0;
                let options = LogsOptionsBuilder::new()
                    .follow(true)
                    .stdout(true)
                    .stderr(true)
                    .timestamps(true)
                    .since(i32::try_from(after_ns / 1_000_000_000).unwrap_or(0))
                    .build();
                let mut stream = docker.logs(&id, Some(options));
                let mut broke = false;
                while let Some(frame) = stream.next().await {
                    let (writer, bytes) = match frame {
                        Ok(bollard::container::LogOutput::StdErr { message }) => {
                            (&mut err, message)
                        }
                        Ok(bollard::container::LogOutput::StdOut { message })
                        | Ok(bollard::container::LogOutput::Console { message }) => {
                            (&mut out, message)
                        }
                        Ok(bollard::container::LogOutput::StdIn { .. }) => continue,
                        Err(_) => {
                            broke = true;
                            break;
                        }
                    };
                    failures = 0;
                    for line in bytes.split_inclusive(|b| *b == b'\n') {
                        let (stamp, text) = engine_line(line);
                        if !resumed {
                            if stamp <= resume_ns {
                                continue;
                            }
                            resumed = true;
                        }
                        after_ns = after_ns.max(stamp);
                        writer.write(stamp, text);
                    }
                }
                if !broke {
                    return;
                }
                failures += 1;
                if failures > LOG_RETRIES {
                    tracing::warn!(task = %task, "the engine's log stream kept breaking; the container's further output is not kept");
                    return;
                }
                tokio::time::sleep(ENGINE_RETRY).await;
            }
        }));
    }

    /// How the container ended, as the engine tells it.
    async fn outcome(&self, id: &str, exit_code: i64) -> ExitOutcome {
        let mut inspected = self.engine.docker.inspect_container(id, None).await;
        // Mid-removal the engine may answer with an error that is not yet
        // "no such container": ask again, briefly.
        let mut looks = 0;
        while inspected.as_ref().is_err_and(|e| !not_found(e)) && looks < OOM_LOOKS {
            tokio::time::sleep(OOM_LOOK_PAUSE).await;
            looks += 1;
            inspected = self.engine.docker.inspect_container(id, None).await;
        }
        let removed = match &inspected {
            Err(e) => not_found(e),
            Ok(c) => c
                .state
                .as_ref()
                .is_some_and(|s| s.status == Some(ContainerStateStatusEnum::REMOVING)),
        };
        if removed {
            // `docker rm -f`: the kill ends the wait first.
            return ExitOutcome {
                exit_code: exit_code as i32,
                message: format!("{} (exit status {exit_code})", self.removed().0),
            };
        }
        let mut state = inspected.ok().and_then(|c| c.state);
        let oom_killed = |state: &Option<bollard::models::ContainerState>| {
            state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false)
        };
        // The engine may handle the exit before the kernel's OOM event: a
        // SIGKILL under a memory limit is looked at again, briefly.
        let mut looks = 0;
        while exit_code == 137
            && self.limits.memory_bytes > 0
            && !oom_killed(&state)
            && looks < OOM_LOOKS
        {
            tokio::time::sleep(OOM_LOOK_PAUSE).await;
            looks += 1;
            if let Ok(c) = self.engine.docker.inspect_container(id, None).await {
                state = c.state;
            }
        }
        let oom = oom_killed(&state);
        let error = state
            .and_then(|s| s.error)
            .filter(|e| !e.is_empty())
            .unwrap_or_default();
        let mut message = format!("exit status {exit_code}");
        if oom {
            message.push_str(" (OOM killed: the container went over its memory limit)");
        }
        if !error.is_empty() {
            message.push_str(": ");
            message.push_str(&error);
        }
        ExitOutcome {
            exit_code: exit_code as i32,
            message,
        }
    }

    /// Waits, within a bound, for the container's last output to reach the
    /// logs (the engine ends the stream when the container stops).
    async fn drain_logs(&mut self) {
        let deadline = *self
            .drain_deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + LOG_DRAIN);
        if let Some(copy) = self.log_copy.as_mut() {
            if tokio::time::timeout_at(deadline, copy).await.is_err() {
                tracing::warn!(task = %self.task_id, "the container's output did not reach its log in time");
            }
        }
        if let Some(copy) = self.log_copy.take() {
            copy.abort();
        }
    }

    fn removed(&self) -> TaskFailure {
        removed(self.container_id.as_deref().unwrap_or(&self.name))
    }

    /// The watch for the container's end, started once: a task of its own,
    /// so the task runner dropping a `wait` (it does every few seconds)
    /// neither asks the engine again nor restarts its bounds.
    fn watch_end(&mut self, id: &str) -> &mut tokio::task::JoinHandle<Result<i64, TaskFailure>> {
        let engine = self.engine.clone();
        let id = id.to_string();
        let started = self.seen_started;
        self.end_watch
            .get_or_insert_with(|| tokio::spawn(watch_end(engine, id, started)))
    }

    async fn remove_container(&self, reference: &str) -> Result<(), TaskFailure> {
        remove(&self.engine, reference)
            .await
            .map_err(|e| TaskFailure(format!("removing container {reference}: {e}")))
    }
}

impl Executor for ContainerExecutor {
    async fn prepare(&mut self) -> Result<(), TaskFailure> {
        // Named ports are published on the node: one held there by
        // something else rejects the task, naming it.
        crate::process::ports_free(&self.named_ports)?;
        self.image().await?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| TaskFailure(format!("task directory {}: {e}", self.dir.display())))?;
        let created = match self.create().await {
            // An earlier try of this task (an agent that died mid-prepare)
            // left its container under this name; it may be on its way
            // out already (`remove` waits that out, within a bound).
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                self.remove_container(&self.name).await?;
                self.create().await
            }
            other => other,
        }
        .map_err(|e| {
            TaskFailure(format!(
                "creating the container of image {:?}: {}",
                self.runtime.image,
                engine_text(&e)
            ))
        })?;
        self.container_id = Some(created.id);
        Ok(())
    }

    async fn start(&mut self) -> Result<Workload, TaskFailure> {
        if self.container_id.is_none() {
            // Prepared by an agent before a restart: made again here.
            self.prepare().await?;
        }
        let id = self
            .container_id
            .clone()
            .ok_or_else(|| TaskFailure("start before prepare".into()))?;
        self.engine
            .docker
            .start_container(&id, None)
            .await
            .map_err(|e| TaskFailure(format!("starting the container: {}", engine_text(&e))))?;
        self.seen_started = true;
        self.copy_logs();
        let pid = self
            .engine
            .docker
            .inspect_container(&id, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.pid)
            .unwrap_or(0);
        Ok(Workload {
            pid: u32::try_from(pid).unwrap_or(0),
            container_id: id,
        })
    }

    async fn wait(&mut self) -> Result<ExitOutcome, TaskFailure> {
        // Cancel safe: the end is watched by a task of its own, and what
        // is learnt is kept on `self` at once.
        if let Some(done) = &self.exited {
            return Ok(done.clone());
        }
        if let Some(failure) = &self.failed {
            return Err(failure.clone());
        }
        let id = self
            .container_id
            .clone()
            .ok_or_else(|| TaskFailure("no container to wait for".into()))?;
        if self.ended.is_none() {
            let code = match self.watch_end(&id).await {
                Ok(ended) => ended,
                Err(e) => Err(TaskFailure(format!("watching the container: {e}"))),
            };
            // The watch is done: a later wait must not await it again.
            self.end_watch = None;
            let code = match code {
                Ok(code) => code,
                Err(failure) => {
                    self.failed = Some(failure.clone());
                    return Err(failure);
                }
            };
            self.ended = Some(self.outcome(&id, code).await);
        }
        self.drain_logs().await;
        let done = self.ended.take().unwrap_or_else(|| ExitOutcome {
            exit_code: -1,
            message: "the container ended".into(),
        });
        self.exited = Some(done.clone());
        Ok(done)
    }

    async fn shutdown(&mut self, grace: Duration) -> Result<Option<ExitOutcome>, TaskFailure> {
        if let Some(done) = &self.exited {
            return Ok(Some(done.clone()));
        }
        let Some(id) = self.container_id.clone() else {
            return Ok(None);
        };
        let state = match self.engine.docker.inspect_container(&id, None).await {
            Ok(c) => c.state.unwrap_or_default(),
            Err(e) if not_found(&e) => return Ok(None),
            // The stop below is asked anyway.
            Err(_) => Default::default(),
        };
        match state.status {
            Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
                return self.wait().await.map(Some)
            }
            Some(ContainerStateStatusEnum::CREATED) => return Ok(None),
            _ => {}
        }
        let secs = i32::try_from(grace.as_millis().div_ceil(1000)).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(secs).build();
        let stop = self.engine.long.stop_container(&id, Some(options));
        match tokio::time::timeout(grace + CALL_TIMEOUT, stop).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if not_found(&e) => return Ok(None),
            // The engine did not stop it, or not in time: kill it outright.
            Ok(Err(_)) | Err(_) => match self.engine.docker.kill_container(&id, None).await {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => {
                    return Err(TaskFailure(format!(
                    "the engine did not stop the container within {:?} and could not kill it: {}",
                    grace + CALL_TIMEOUT,
                    engine_text(&e)
                )))
                }
            },
        }
        // Its end is not the task's outcome (the stop is), but the logs
        // still drain, within a bound.
        let _ = tokio::time::timeout(CALL_TIMEOUT, self.wait()).await;
        Ok(None)
    }

    async fn remove(&mut self) -> Result<(), TaskFailure> {
        if let Some(copy) = self.log_copy.take() {
            copy.abort();
        }
        let reference = self.container_id.clone().unwrap_or(self.name.clone());
        self.remove_container(&reference).await?;
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TaskFailure(format!("removing {}: {e}", self.dir.display()))),
        }
    }

    fn probe(
        &self,
        command: &str,
        timeout: Duration,
    ) -> impl std::future::Future<Output = HealthProbe> + Send + 'static {
        let docker = self.engine.docker.clone();
        let id = self.container_id.clone();
        // The image's check in its exec form runs as given, without a
        // shell (an image may have none).
        let argv = match self.own_health.as_ref().and_then(Option::as_ref) {
            Some(check) if check.config.command == command => check.argv.clone(),
            _ => None,
        }
        .unwrap_or_else(|| vec!["sh".into(), "-c".into(), command.to_string()]);
        async move {
            use shoal_api::clock::now_ms;
            let started_ms = now_ms();
            let finish = |exit_code: i32, output: String| HealthProbe {
                started_ms,
                ended_ms: now_ms(),
                exit_code,
                output,
            };
            let Some(id) = id else {
                return finish(-1, "the task has no container".into());
            };
            let run = exec(&docker, &id, argv);
            match tokio::time::timeout(timeout, run).await {
                Ok(Ok((code, output))) => finish(code, output),
                Ok(Err(why)) => finish(-1, why),
                Err(_) => finish(
                    -1,
                    format!(
                        "the health check timed out after {} ms",
                        timeout.as_millis()
                    ),
                ),
            }
        }
    }

    async fn own_health_check(&mut self) -> Option<HealthConfig> {
        let check = match &self.own_health {
            Some(known) => known.clone(),
            None => self.adopted_image_check().await,
        };
        check.map(|c| c.config)
    }

    fn progress(&mut self) -> Option<tokio::sync::watch::Receiver<String>> {
        Some(self.progress.subscribe())
    }
}

/// The words for a container removed behind Shoal's back.
fn removed(container: &str) -> TaskFailure {
    TaskFailure(format!("container {container} was removed outside Shoal"))
}

/// Waits for container `id` to end; its exit code. Each wait is asked
/// again after [`WAIT_ROUND`] (a connection that died without a word is
/// found out), and an engine that stops answering for
/// [`ENGINE_GONE_AFTER`] fails the task. Unless `started` (here), a
/// container that was created but never started has no end: the engine
/// would answer its wait at once, as if it had ended well.
async fn watch_end(engine: Engine, id: String, started: bool) -> Result<i64, TaskFailure> {
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    let mut looked = started;
    loop {
        if !looked {
            match engine.docker.inspect_container(&id, None).await {
                Ok(c)
                    if c.state.as_ref().and_then(|s| s.status)
                        == Some(ContainerStateStatusEnum::CREATED) =>
                {
                    return Err(TaskFailure(
                        "the container was created but never started".into(),
                    ))
                }
                Ok(_) => looked = true,
                Err(e) if not_found(&e) => return Err(removed(&id)),
                // The wait below finds out what the engine has.
                Err(_) => {}
            }
        }
        let mut stream = engine.long.wait_container(&id, None);
        let failed = match tokio::time::timeout(WAIT_ROUND, stream.next()).await {
            Ok(Some(Ok(done))) => return Ok(done.status_code),
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => {
                return Ok(code)
            }
            Ok(Some(Err(e))) if not_found(&e) => return Err(removed(&id)),
            Ok(Some(Err(e))) => engine_text(&e),
            Ok(None) => "the wait ended without an answer".into(),
            // A long run: whether the engine still answers is asked below.
            Err(_) => String::new(),
        };
        drop(stream);
        // The wait may have failed because the engine went away: a
        // container it stopped on its way down has ended.
        let inspected =
            tokio::time::timeout(CALL_TIMEOUT, engine.docker.inspect_container(&id, None)).await;
        match inspected {
            Ok(Ok(c)) => {
                unreachable_since = None;
                let state = c.state.unwrap_or_default();
                match state.status {
                    Some(ContainerStateStatusEnum::EXITED)
                    | Some(ContainerStateStatusEnum::DEAD) => {
                        return Ok(state.exit_code.unwrap_or(-1))
                    }
                    _ if failed.is_empty() => continue,
                    _ => {}
                }
            }
            Ok(Err(e)) if not_found(&e) => return Err(removed(&id)),
            Ok(Err(_)) | Err(_) => {
                let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > ENGINE_GONE_AFTER {
                    let why = if failed.is_empty() {
                        "no answer".to_string()
                    } else {
                        failed
                    };
                    return Err(TaskFailure(format!(
                        "the Docker Engine at {} has not answered for {ENGINE_GONE_AFTER:?}: {why}",
                        engine.host
                    )));
                }
            }
        }
        tokio::time::sleep(ENGINE_RETRY).await;
    }
}

/// Runs `argv` in the container as the container runs (its user, env and
/// working dir); its exit code and at most a few KiB of output.
async fn exec(
    docker: &bollard::Docker,
    id: &str,
    argv: Vec<String>,
) -> Result<(i32, String), String> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(argv),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("cannot run the health check: {}", engine_text(&e)))?;
    let mut output = Vec::new();
    let limit = crate::health::MAX_PROBE_OUTPUT_BYTES;
    match docker
        .start_exec(&created.id, None)
        .await
        .map_err(|e| format!("cannot run the health check: {}", engine_text(&e)))?
    {
        StartExecResults::Attached {
            output: mut out, ..
        } => {
            while let Some(Ok(chunk)) = out.next().await {
                let bytes = chunk.into_bytes();
                let room = limit.saturating_sub(output.len());
                output.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
        StartExecResults::Detached => {}
    }
    // The output can end before the engine records the exit: ask until it
    // has (the caller bounds the whole check by its timeout).
    let code = loop {
        let inspected = docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| format!("the health check's exit code: {}", engine_text(&e)))?;
        match (inspected.running, inspected.exit_code) {
            (Some(false), Some(code)) => break code,
            _ => tokio::time::sleep(EXEC_POLL).await,
        }
    };
    Ok((
        code as i32,
        String::from_utf8_lossy(&output).trim_end().to_string(),
    ))
}

/// `web.1.<task id>`, in the characters the engine allows in a name.
fn container_name(base: &str, task_id: &str) -> String {
    let clean: String = format!("{base}.{task_id}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        clean
    } else {
        format!("shoal{clean}")
    }
}

fn engine_mount(m: &shoal_api::Mount) -> EngineMount {
    let kind = mount::Type::try_from(m.r#type).unwrap_or(mount::Type::Bind);
    EngineMount {
        target: Some(m.target.clone()),
        source: (!m.source.is_empty()).then(|| m.source.clone()),
        typ: Some(match kind {
            mount::Type::Bind => MountType::BIND,
            mount::Type::Volume => MountType::VOLUME,
            mount::Type::Tmpfs => MountType::TMPFS,
        }),
        read_only: m.read_only.then_some(true),
        tmpfs_options: (kind == mount::Type::Tmpfs && m.tmpfs_size_bytes > 0).then(|| {
            MountTmpfsOptions {
                size_bytes: Some(m.tmpfs_size_bytes),
                ..Default::default()
            }
        }),
        ..Default::default()
    }
}

/// An image's HEALTHCHECK, as Shoal runs it.
#[derive(Debug, Clone, PartialEq)]
struct ImageCheck {
    /// Its command shown as a shell would read it, and its times.
    config: HealthConfig,
    /// The exec form (`CMD [...]`), run without a shell.
    argv: Option<Vec<String>>,
}

/// An image's HEALTHCHECK as Shoal's check (docker's defaults for what it
/// leaves unset); `None` for none or `NONE`.
fn image_health(check: bollard::models::HealthConfig) -> Option<ImageCheck> {
    let test = check.test.unwrap_or_default();
    let (command, argv) = match test.split_first() {
        Some((kind, rest)) if kind == "CMD-SHELL" => (rest.join(" "), None),
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => (
            rest.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
            Some(rest.to_vec()),
        ),
        _ => return None,
    };
    let ms = |ns: Option<i64>, default_ms: u64| match ns {
        Some(n) if n > 0 => (n / 1_000_000) as u64,
        _ => default_ms,
    };
    Some(ImageCheck {
        config: HealthConfig {
            command,
            interval_ms: ms(check.interval, 30_000),
            timeout_ms: ms(check.timeout, 30_000),
            retries: check.retries.filter(|r| *r > 0).map_or(3, |r| r as u64),
            start_period_ms: ms(check.start_period, 0),
            disabled: false,
        },
        argv,
    })
}

/// One argument for `sh -c`, quoted.
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Splits the engine's `2026-12-06T05:55:17.123456789Z text` into the time
/// (ns) and the text; a line without a time gets now.
fn engine_line(line: &[u8]) -> (i64, &[u8]) {
    if let Some(space) = line.iter().position(|b| *b == b' ') {
        if let Some(ns) = std::str::from_utf8(&line[..space])
            .ok()
            .and_then(shoal_api::log_time::parse_rfc3339)
        {
            return (ns, &line[space + 1..]);
        }
    }
    (shoal_api::clock::now_ns(), line)
}

/// The stamp of the last line of a task's log, if it has one.
fn last_stamp(path: &std::path::Path) -> Option<i64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let tail = len.min(64 << 10);
    file.seek(SeekFrom::Start(len - tail)).ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    buf.split(|b| *b == b'\n')
        .filter_map(|line| shoal_api::log_time::split_stamp(line).map(|(ns, _)| ns))
        .next_back()
}

/// Tries to list a node's containers before the engine is taken as gone.
const LIST_TRIES: u32 = 10;
/// Between two tries (doubling each time, 0.1 s to 25 s in all).
const LIST_RETRY: Duration = Duration::from_millis(100);

/// The containers of this node, with task `task_id` when given (running
/// or not): (task id, container id, state). Asked again within a bound when
/// the engine does not answer.
async fn containers_of_node(
    engine: &Engine,
    node_id: &str,
    task_id: Option<&str>,
) -> Result<Vec<(String, String, Option<ContainerSummaryStateEnum>)>, String> {
    let mut labels = vec![format!("{NODE_LABEL}={node_id}")];
    if let Some(task) = task_id {
        labels.push(format!("{TASK_LABEL}={task}"));
    }
    let filters = HashMap::from([("label", labels)]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let mut pause = LIST_RETRY;
    let mut tries = 0;
    let listed = loop {
        match engine.docker.list_containers(Some(options.clone())).await {
            Ok(listed) => break listed,
            Err(e) if tries + 1 >= LIST_TRIES => {
                return Err(format!(
                    "the Docker Engine at {} did not list this node's containers: {}",
                    engine.host,
                    engine_text(&e)
                ))
            }
            Err(_) => {
                tries += 1;
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    };
    Ok(listed
        .into_iter()
        .filter_map(|c| {
            let task = c.labels.as_ref()?.get(TASK_LABEL)?.clone();
            Some((task, c.id?, c.state))
        })
        .collect())
}

/// The containers earlier agents of this node left, by task id. One that
/// was created but never started is no workload: it is removed (its task
/// prepares again, or is reported as it was recorded).
pub async fn leftovers(
    engine: &Engine,
    node_id: &str,
) -> Result<HashMap<String, Workload>, String> {
    let mut found = HashMap::new();
    for (task, id, state) in containers_of_node(engine, node_id, None).await? {
        if state == Some(ContainerSummaryStateEnum::CREATED) {
            remove_outright(engine, &id).await;
            continue;
        }
        found.insert(
            task,
            Workload {
                pid: 0,
                container_id: id,
            },
        );
    }
    Ok(found)
}

/// Removes a container outright, with its anonymous volumes; asked again
/// within a bound while the engine does not answer or is busy removing it.
pub async fn remove_outright(engine: &Engine, reference: &str) {
    if let Err(e) = remove(engine, reference).await {
        tracing::warn!(container = reference, error = %e, "a container that should not exist could not be removed")
    }
}

/// Removes a container (gone already is fine), trying again within a bound.
async fn remove(engine: &Engine, reference: &str) -> Result<(), String> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    let mut pause = LIST_RETRY;
    let mut tries = 0;
    loop {
        match engine
            .docker
            .remove_container(reference, Some(options.clone()))
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if not_found(&e) => return Ok(()),
            // 409: a removal already under way (the engine says so).
            Err(e) if tries + 1 >= LIST_TRIES => return Err(engine_text(&e)),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

/// Removes every container of task `task_id` on this node.
pub async fn remove_task_containers(engine: &Engine, node_id: &str, task_id: &str) {
    match containers_of_node(engine, node_id, Some(task_id)).await {
        Ok(found) => {
            for (_, id, _) in found {
                remove_outright(engine, &id).await;
            }
        }
        Err(e) => {
            tracing::warn!(task = task_id, error = %e, "the task's containers could not be listed; they stay")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_images_healthcheck_becomes_a_shell_command_with_dockers_defaults() {
        let shell = image_health(bollard::models::HealthConfig {
            test: Some(vec![
                "CMD-SHELL".into(),
                "wget -q localhost || exit 1".into(),
            ]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(shell.argv, None);
        let shell = shell.config;
        assert_eq!(shell.command, "wget -q localhost || exit 1");
        assert_eq!(
            (shell.interval_ms, shell.timeout_ms, shell.retries),
            (30_000, 30_000, 3)
        );
        let exec = image_health(bollard::models::HealthConfig {
            test: Some(vec![
                "CMD".into(),
                "test".into(),
                "-f".into(),
                "/a b".into(),
            ]),
            interval: Some(2_000_000_000),
            retries: Some(5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            exec.argv,
            Some(vec!["test".to_string(), "-f".into(), "/a b".into()])
        );
        let exec = exec.config;
        assert_eq!(exec.command, "test -f '/a b'");
        assert_eq!((exec.interval_ms, exec.retries), (2_000, 5));
        for none in [vec!["NONE".to_string()], vec![]] {
            let check = bollard::models::HealthConfig {
                test: Some(none),
                ..Default::default()
            };
            assert_eq!(image_health(check), None);
        }
    }

    #[test]
    fn container_names_keep_only_what_the_engine_allows() {
        assert_eq!(container_name("web.1", "abc"), "web.1.abc");
        assert_eq!(container_name("we b/1", "abc"), "we_b_1.abc");
        assert_eq!(container_name(".x", "abc"), "shoal.x.abc");
    }

    #[test]
    fn an_engine_log_line_splits_into_its_time_and_text() {
        let (ns, text) = engine_line(b"2026-12-06T05:55:17.5Z hello world\n");
        assert_eq!(text, b"hello world\n");
        assert_eq!(ns % 1_000_000_000, 500_000_000);
        let (_, text) = engine_line(b"no stamp\n");
        assert_eq!(text, b"no stamp\n");
    }
}
