//! The driver of a real node: a task with an image runs as a container on
//! the node's Docker Engine, one with a command and no image as a process.
//! A node without an engine runs processes only, and a task with an image
//! that reaches it anyway (the scheduler sends none) is rejected saying so.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use shoal_api::{HealthConfig, HealthProbe, Task};

use crate::container::{self, ContainerExecutor};
use crate::engine::Engine;
use crate::executor::{Executor, ExitOutcome, TaskFailure, Workload};
use crate::process::{ProcessDriver, ProcessExecutor};
use crate::Driver;

/// Processes and, with an engine, containers.
#[derive(Debug, Clone)]
pub struct HostDriver {
    pub process: ProcessDriver,
    pub engine: Option<Engine>,
    /// This node's id: its containers carry it, and only they are its own.
    pub node_id: String,
}

/// One task's executor on a real node.
pub enum HostExecutor {
    Process(Box<ProcessExecutor>),
    Container(Box<ContainerExecutor>),
}

impl HostDriver {
    fn tasks_dir(&self) -> &std::path::Path {
        &self.process.config.tasks_dir
    }

    /// Ends a workload outright and returns once it is gone (or the engine
    /// would not remove it), for a node that leaves.
    pub async fn end(&self, task_id: &str, workload: &Workload) {
        match &self.engine {
            Some(engine) if !workload.container_id.is_empty() => {
                container::remove_outright(engine, &workload.container_id).await
            }
            _ => self.process.kill(task_id, workload),
        }
    }
}

impl Driver for HostDriver {
    type Executor = HostExecutor;

    fn executor(&self, task: &Task) -> HostExecutor {
        let image = task
            .spec
            .as_ref()
            .and_then(|s| s.runtime.as_ref())
            .is_some_and(|r| !r.image.is_empty());
        match (&self.engine, image) {
            (Some(engine), true) => HostExecutor::Container(Box::new(ContainerExecutor::new(
                engine,
                self.tasks_dir(),
                self.process.config.max_log_bytes,
                task,
            ))),
            // Without an engine the process executor refuses the image.
            _ => HostExecutor::Process(Box::new(self.process.executor(task))),
        }
    }

    fn adopt(&self, task: &Task, workload: Workload) -> HostExecutor {
        match &self.engine {
            Some(engine) if !workload.container_id.is_empty() => {
                HostExecutor::Container(Box::new(ContainerExecutor::adopt(
                    engine,
                    self.tasks_dir(),
                    self.process.config.max_log_bytes,
                    task,
                    &workload.container_id,
                )))
            }
            _ => HostExecutor::Process(Box::new(self.process.adopt(task, workload))),
        }
    }

    async fn leftovers(&self) -> Result<HashMap<String, Workload>, String> {
        let mut found = self.process.leftovers().await?;
        if let Some(engine) = &self.engine {
            found.extend(container::leftovers(engine, &self.node_id).await?);
        }
        Ok(found)
    }

    fn kill(&self, task_id: &str, workload: &Workload) {
        match &self.engine {
            Some(engine) if !workload.container_id.is_empty() => {
                let engine = engine.clone();
                let id = workload.container_id.clone();
                tokio::spawn(async move { container::remove_outright(&engine, &id).await });
            }
            _ => self.process.kill(task_id, workload),
        }
    }

    fn clean_up(&self, task_id: &str) {
        self.process.clean_up(task_id);
        if let Some(engine) = &self.engine {
            let engine = engine.clone();
            let node = self.node_id.clone();
            let task = task_id.to_string();
            tokio::spawn(
                async move { container::remove_task_containers(&engine, &node, &task).await },
            );
        }
    }

    fn log_dir(&self, task_id: &str) -> Option<PathBuf> {
        self.process.log_dir(task_id)
    }
}

type BoxedProbe = std::pin::Pin<Box<dyn std::future::Future<Output = HealthProbe> + Send>>;

impl Executor for HostExecutor {
    async fn prepare(&mut self) -> Result<(), TaskFailure> {
        match self {
            HostExecutor::Process(e) => e.prepare().await,
            HostExecutor::Container(e) => e.prepare().await,
        }
    }

    async fn start(&mut self) -> Result<Workload, TaskFailure> {
        match self {
            HostExecutor::Process(e) => e.start().await,
            HostExecutor::Container(e) => e.start().await,
        }
    }

    async fn wait(&mut self) -> Result<ExitOutcome, TaskFailure> {
        match self {
            HostExecutor::Process(e) => e.wait().await,
            HostExecutor::Container(e) => e.wait().await,
        }
    }

    async fn shutdown(&mut self, grace: Duration) -> Result<Option<ExitOutcome>, TaskFailure> {
        match self {
            HostExecutor::Process(e) => e.shutdown(grace).await,
            HostExecutor::Container(e) => e.shutdown(grace).await,
        }
    }

    async fn remove(&mut self) -> Result<(), TaskFailure> {
        match self {
            HostExecutor::Process(e) => e.remove().await,
            HostExecutor::Container(e) => e.remove().await,
        }
    }

    fn housekeeping(&mut self) {
        match self {
            HostExecutor::Process(e) => e.housekeeping(),
            HostExecutor::Container(e) => e.housekeeping(),
        }
    }

    fn probe(
        &self,
        command: &str,
        timeout: Duration,
    ) -> impl std::future::Future<Output = HealthProbe> + Send + 'static {
        let probe: BoxedProbe = match self {
            HostExecutor::Process(e) => Box::pin(e.probe(command, timeout)),
            HostExecutor::Container(e) => Box::pin(e.probe(command, timeout)),
        };
        probe
    }

    fn progress(&mut self) -> Option<tokio::sync::watch::Receiver<String>> {
        match self {
            HostExecutor::Process(e) => e.progress(),
            HostExecutor::Container(e) => e.progress(),
        }
    }

    async fn own_health_check(&mut self) -> Option<HealthConfig> {
        match self {
            HostExecutor::Process(e) => e.own_health_check().await,
            HostExecutor::Container(e) => e.own_health_check().await,
        }
    }
}
