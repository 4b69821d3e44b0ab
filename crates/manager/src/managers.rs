//! The managers' addresses, as nodes dial them: every node the store
//! records as a manager, at the address it advertised. Agents learn them
//! from their sessions and joining nodes from the CA, so a worker can go
//! to another manager when its own is lost.

use shoal_api::NodeRole;
use shoal_store::Tables;

/// The managers' addresses, sorted, without repeats or empty ones.
pub fn addresses(view: &Tables) -> Vec<String> {
    let mut addresses: Vec<String> = view
        .nodes()
        .filter(|n| n.role == NodeRole::Manager as i32)
        .filter_map(|n| n.manager_status.as_ref())
        .map(|m| m.addr.clone())
        .filter(|a| !a.is_empty())
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}
