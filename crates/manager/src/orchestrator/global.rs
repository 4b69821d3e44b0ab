//! Global services and jobs: one task per eligible node.

use shoal_api::Node;

use crate::constraint::Constraint;

/// Whether a node may run tasks of a global service.
pub(super) fn eligible(node: &Node, constraints: &[Constraint]) -> bool {
    let ready =
        node.status.as_ref().map(|s| s.state) == Some(shoal_api::node_status::State::Ready as i32);
    let active = node.spec.as_ref().map_or(0, |s| s.availability)
        == shoal_api::node_spec::Availability::Active as i32;
    ready && active && constraints.iter().all(|c| c.matches(node))
}
