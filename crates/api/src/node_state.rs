//! What a node's status and availability mean for its tasks, in one place
//! (the orchestrator and the scheduler ask the same questions).

use crate::{node_spec, node_status, Node};

impl Node {
    /// Its agent holds a session (READY).
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().map(|s| s.state) == Some(node_status::State::Ready as i32)
    }

    /// Marked DOWN: its heartbeats stopped.
    pub fn is_down(&self) -> bool {
        self.status.as_ref().map(|s| s.state) == Some(node_status::State::Down as i32)
    }

    /// What its user set: active, paused or drained.
    pub fn availability(&self) -> node_spec::Availability {
        self.spec
            .as_ref()
            .and_then(|s| node_spec::Availability::try_from(s.availability).ok())
            .unwrap_or(node_spec::Availability::Active)
    }

    /// May be given new tasks: ready and active.
    pub fn takes_new_tasks(&self) -> bool {
        self.is_ready() && self.availability() == node_spec::Availability::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeSpec, NodeStatus};

    fn node(state: node_status::State, availability: node_spec::Availability) -> Node {
        Node {
            status: Some(NodeStatus {
                state: state as i32,
                ..Default::default()
            }),
            spec: Some(NodeSpec {
                availability: availability as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_ready_active_node_takes_new_tasks() {
        use node_spec::Availability::*;
        use node_status::State::*;
        assert!(node(Ready, Active).takes_new_tasks());
        assert!(!node(Ready, Pause).takes_new_tasks());
        assert!(!node(Ready, Drain).takes_new_tasks());
        assert!(!node(Down, Active).takes_new_tasks());
        assert!(!node(Unknown, Active).takes_new_tasks());
        assert!(node(Down, Drain).is_down());
    }
}
