//! Global services and jobs: one task per eligible node.

use shoal_api::Node;

use crate::constraint::Constraint;

/// Whether a node may run tasks of a global service.
pub(super) fn eligible(node: &Node, constraints: &[Constraint]) -> bool {
    node.takes_new_tasks() && constraints.iter().all(|c| c.matches(node))
}
