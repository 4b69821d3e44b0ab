//! The simulated nodes: one [`SimAgent`] per node, on a tokio runtime of
//! their own, that can be killed (the agent stops, as a crashed machine's
//! would), restarted, and cut off from the manager and joined again (a
//! partition: the agent keeps running its tasks).
//!
//! Why a runtime of their own: real agents run in processes of their own.
//! A manager busy with 100,000 tasks then delays its own work, not the
//! agents' timers and heartbeats, and the operating system shares the cores
//! between the two. The simulator's cluster holds one set; its
//! `--agents-process` child holds the other side's.

use std::path::Path;

use tokio::sync::watch;

use crate::sim_agent::SimAgent;
use crate::sim_cluster::SimConfig;

/// Worker threads of the agents' runtime.
const AGENT_WORKER_THREADS: usize = 2;

/// One simulated node.
struct SimNode {
    agent: SimAgent,
    stop: Option<watch::Sender<bool>>,
    connected: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Every simulated node of a cluster, each running until killed.
pub struct SimNodes {
    nodes: Vec<SimNode>,
    runtime: AgentRuntime,
}

/// The agents' runtime. A runtime cannot be dropped from async code, so it
/// is let go in the background; by then every agent has stopped.
struct AgentRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl AgentRuntime {
    fn start() -> Result<AgentRuntime, std::io::Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(AGENT_WORKER_THREADS)
            .thread_name("sim-agents")
            .enable_all()
            .build()?;
        Ok(AgentRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }
}

impl Drop for AgentRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl SimNodes {
    /// Starts `config.nodes` agents against the dispatcher at
    /// `dispatcher_socket`.
    pub fn start(config: &SimConfig, dispatcher_socket: &Path) -> Result<SimNodes, std::io::Error> {
        let mut nodes = SimNodes {
            nodes: (0..config.nodes)
                .map(|i| SimNode {
                    agent: config.agent(i, dispatcher_socket),
                    stop: None,
                    connected: watch::channel(true).0,
                    task: None,
                })
                .collect(),
            runtime: AgentRuntime::start()?,
        };
        for i in 0..nodes.nodes.len() {
            nodes.boot(i);
        }
        Ok(nodes)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn boot(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let (stop, stop_rx) = watch::channel(false);
        let _ = node.connected.send(true);
        let agent = node.agent.clone();
        agent
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let run = agent.run(stop_rx, node.connected.subscribe());
        node.task = Some(self.runtime.handle.spawn(run));
        node.stop = Some(stop);
    }

    /// Tasks node `i`'s agent runs right now: (service, slot, state).
    pub fn running_on(&self, i: usize) -> Vec<(String, u64, shoal_api::TaskState)> {
        let running = self.nodes[i]
            .agent
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        running
            .values()
            .map(|(service, live)| (service.clone(), live.slot, live.state))
            .collect()
    }

    /// Stops node `i`'s agent as a crash would: no goodbye, its tasks gone.
    pub async fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(stop) = node.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = node.task.take() {
            let _ = task.await;
        }
        node.agent
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Starts node `i`'s agent again after [`SimNodes::kill`], with no
    /// tasks.
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].task.is_none() {
            self.boot(i);
        }
    }

    /// Cuts node `i` off the manager (it keeps running its tasks) or joins
    /// it again.
    pub fn set_connected(&self, i: usize, connected: bool) {
        let _ = self.nodes[i].connected.send(connected);
    }

    /// Stops every agent: all are told at once, then each is waited for.
    pub async fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(stop) = node.stop.take() {
                let _ = stop.send(true);
            }
        }
        for node in &mut self.nodes {
            if let Some(task) = node.task.take() {
                let _ = task.await;
            }
        }
    }
}
