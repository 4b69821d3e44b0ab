//! Shoal's cluster simulator: a real manager and thousands of simulated
//! agents in one process, for multi-node tests and scale measurements.

pub mod fake_executor;
pub mod sim_agent;
pub mod sim_cluster;
pub mod sim_nodes;

pub use fake_executor::{FakeExecutor, Plan};
pub use sim_agent::SimAgent;
pub use sim_cluster::{node_id, SimCluster, SimConfig, SimError};
pub use sim_nodes::SimNodes;
