//! Shoal's cluster simulator: a real manager and thousands of real agents in
//! one process, their tasks run by a fake driver, for multi-node tests and
//! scale measurements.

pub mod fake_driver;
pub mod fake_executor;
pub mod memory_record;
pub mod severable_link;
pub mod sim_cluster;
pub mod sim_nodes;
pub mod sim_pki;

pub use fake_driver::FakeDriver;
pub use fake_executor::{FakeExecutor, Machine, Plan, TaskBehaviour, Workload};
pub use memory_record::MemoryRecord;
pub use sim_cluster::{node_id, SimCluster, SimConfig, SimError, SimTransport};
pub use sim_nodes::{DispatcherAt, SimNodes};
