//! The filters a node must pass to take a task, in order, and the
//! explanation a task that no node can take carries.

use std::collections::BTreeMap;
use std::fmt;

use shoal_api::port_config;

use super::*;

/// Why a node cannot take a task, in filter order (the explanation lists
/// reasons in this order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Reason {
    NotReady,
    NotActive,
    NoEngine,
    Memory,
    Cpu,
    Constraint(usize),
    Port(HostPort),
    MaxReplicas,
}

impl NodeSet {
    pub(super) fn failing_on(&self, group: &Group, index: usize) -> bool {
        self.failures
            .get(&group.service_id)
            .and_then(|f| f.get(&index))
            .is_some_and(|n| *n >= FAILURES_TO_AVOID)
    }

    /// The first filter node `index` fails for a task of `group`.
    pub(super) fn reject(&self, group: &Group, index: usize) -> Option<Reason> {
        let node = &self.nodes[index];
        let load = &self.loads[index];
        if !self.schedulable[index] {
            return Some(if !node.is_ready() {
                Reason::NotReady
            } else {
                Reason::NotActive
            });
        }
        if group.needs_engine
            && node
                .description
                .as_ref()
                .is_none_or(|d| d.engine_version.is_empty())
        {
            return Some(Reason::NoEngine);
        }
        if group.memory > load.memory_left {
            return Some(Reason::Memory);
        }
        if group.cpu > load.cpu_left {
            return Some(Reason::Cpu);
        }
        if let Some(i) = group.constraints.iter().position(|c| !c.matches(node)) {
            return Some(Reason::Constraint(i));
        }
        if let Some(ports) = &load.ports {
            if let Some(p) = group.ports.iter().find(|p| ports.contains_key(p)) {
                return Some(Reason::Port(*p));
            }
        }
        if group.max_per_node > 0 && self.placed_on(group, index) >= group.max_per_node {
            return Some(Reason::MaxReplicas);
        }
        None
    }

    /// Why no node can take a task of `group`: each reason with its count.
    pub(super) fn explain(&self, group: &Group, only: Option<usize>) -> String {
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let indexes: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..self.nodes.len()).collect(),
        };
        for i in indexes {
            if let Some(r) = self.reject(group, i) {
                *reasons.entry(r).or_default() += 1;
            }
        }
        if reasons.is_empty() {
            return "no suitable node (no nodes)".to_string();
        }
        let parts: Vec<String> = reasons
            .iter()
            .map(|(r, n)| {
                format!(
                    "{} on {n} node{}",
                    ReasonText(r, group),
                    if *n == 1 { "" } else { "s" }
                )
            })
            .collect();
        format!("no suitable node ({})", parts.join("; "))
    }
}

pub(super) struct ReasonText<'a>(&'a Reason, &'a Group);

impl fmt::Display for ReasonText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Reason::NotReady => write!(f, "node not ready"),
            Reason::NotActive => write!(f, "node not active"),
            Reason::NoEngine => write!(f, "no Docker Engine for the image"),
            Reason::Memory => write!(f, "insufficient memory"),
            Reason::Cpu => write!(f, "insufficient CPU"),
            Reason::Constraint(i) => match self.1.constraints.get(*i) {
                Some(c) => write!(f, "constraint {c} not satisfied"),
                None => write!(f, "constraint not satisfied"),
            },
            Reason::Port((protocol, port)) => {
                let protocol = port_config::Protocol::try_from(*protocol)
                    .unwrap_or(port_config::Protocol::Tcp)
                    .as_str_name()
                    .to_ascii_lowercase();
                write!(f, "host port {port}/{protocol} in use")
            }
            Reason::MaxReplicas => {
                write!(f, "max replicas per node ({}) reached", self.1.max_per_node)
            }
        }
    }
}
