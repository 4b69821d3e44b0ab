//! The simulated nodes: one real agent ([`shoal_agent::run`]) per node,
//! built with the [`FakeDriver`], an in-memory task record and a link that
//! can be cut ([`crate::severable_link`]), on a tokio runtime of their own.
//! A node can be killed (the agent stops and its machine's workloads are
//! gone, as when a machine crashes), restarted (a new agent on the same
//! record), and cut off from the manager and joined again (a partition: the
//! agent keeps running its tasks and reconnects on its own).
//!
//! Why a runtime of their own: real agents run in processes of their own.
//! A manager busy with 100,000 tasks then delays its own work, not the
//! agents' timers and heartbeats, and the operating system shares the cores
//! between the two. The simulator's cluster holds one set; its
//! `--agents-process` child holds the other side's.

use std::sync::Arc;

use shoal_agent::AgentConfig;
use tokio::sync::watch;

use crate::fake_driver::FakeDriver;
use crate::memory_record::MemoryRecord;
use crate::severable_link::Link;
use crate::sim_cluster::SimConfig;

/// Worker threads of the agents' runtime.
const AGENT_WORKER_THREADS: usize = 2;

/// One simulated node.
struct SimNode {
    config: AgentConfig,
    driver: Arc<FakeDriver>,
    record: Arc<MemoryRecord>,
    stop: Option<watch::Sender<bool>>,
    link: watch::Sender<Link>,
    task: Option<tokio::task::JoinHandle<shoal_agent::AgentExit>>,
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

/// Where the simulated agents reach the dispatcher.
#[derive(Clone)]
pub enum DispatcherAt {
    /// A unix socket, no TLS.
    Unix(std::path::PathBuf),
    /// TCP without TLS (for comparison).
    Tcp(std::net::SocketAddr),
    /// The daemon's path: TCP and mutual TLS, node certificates for each.
    Tls(crate::sim_pki::TlsDispatcher),
}

impl SimNodes {
    /// Starts `config.nodes` agents against the dispatcher at `at`.
    pub fn start(config: &SimConfig, at: &DispatcherAt) -> Result<SimNodes, std::io::Error> {
        let mut nodes = SimNodes {
            nodes: (0..config.nodes)
                .map(|i| {
                    let (link, up) = watch::channel(Link::up());
                    let dispatcher = match at {
                        DispatcherAt::Unix(socket) => {
                            let socket = socket.clone();
                            shoal_agent::Connector::new(socket.display().to_string(), move || {
                                crate::severable_link::connect(socket.clone(), up.clone())
                            })
                        }
                        DispatcherAt::Tcp(addr) => {
                            let addr = *addr;
                            shoal_agent::Connector::new(addr.to_string(), move || {
                                crate::severable_link::connect_tcp(addr, up.clone())
                            })
                        }
                        DispatcherAt::Tls(tls) => {
                            let addr = tls.addr;
                            let client = Arc::clone(&tls.client_configs[i]);
                            shoal_agent::Connector::new(addr.to_string(), move || {
                                crate::severable_link::connect_tls(
                                    addr,
                                    Arc::clone(&client),
                                    up.clone(),
                                )
                            })
                        }
                    };
                    SimNode {
                        config: config.agent(i, dispatcher),
                        driver: Arc::new(FakeDriver {
                            machine: config.machine(i),
                        }),
                        record: Arc::default(),
                        stop: None,
                        link,
                        task: None,
                    }
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
        node.link.send_modify(|l| l.set(true));
        let run = shoal_agent::run(
            node.config.clone(),
            Arc::clone(&node.driver),
            Arc::clone(&node.record) as Arc<dyn shoal_agent::TaskRecord>,
            stop_rx,
        );
        node.task = Some(self.runtime.handle.spawn(run));
        node.stop = Some(stop);
    }

    /// The workloads node `i` runs right now: (service, slot).
    pub fn running_on(&self, i: usize) -> Vec<(String, u64)> {
        let now = tokio::time::Instant::now();
        self.nodes[i]
            .driver
            .machine
            .workloads()
            .values()
            .filter(|w| w.runs(now))
            .map(|w| (w.service_id.clone(), w.slot))
            .collect()
    }

    /// Stops node `i` as a crash would: no goodbye, its workloads gone.
    pub async fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(stop) = node.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = node.task.take() {
            let _ = task.await;
        }
        node.driver.machine.workloads().clear();
    }

    /// Starts node `i`'s agent again after [`SimNodes::kill`]: nothing runs
    /// on it, and its record says what ran before the crash.
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].task.is_none() {
            self.boot(i);
        }
    }

    /// Cuts node `i` off the manager (it keeps running its tasks) or joins
    /// it again.
    pub fn set_connected(&self, i: usize, connected: bool) {
        self.nodes[i].link.send_modify(|l| l.set(connected));
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
