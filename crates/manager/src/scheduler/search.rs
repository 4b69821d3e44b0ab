//! Ranking the nodes that pass the filters, and finding the best: a walk
//! of the nodes ordered by load, a heap for large groups, and the spread
//! over label values.

use super::*;

impl NodeSet {
    /// How a node ranks for a task of a group without spread preferences,
    /// lowest first.
    pub(super) fn rank(&self, group: &Group, index: usize) -> (bool, usize, usize, usize) {
        (
            self.failing_on(group, index),
            self.placed_on(group, index),
            self.loads[index].tasks,
            index,
        )
    }

    /// The node for the next task of a group without preferences: any node
    /// that has no task of the service and no recent failure of it ranks
    /// before every node that has, so the first such node in load order that
    /// passes the filters wins; only when there is none do the service's own
    /// nodes compete.
    pub(super) fn walk(&self, group: &Group) -> Option<usize> {
        let placed = self.placed.get(&group.service_id);
        let failing = self.failures.get(&group.service_id);
        let known = |i: &usize| {
            placed.is_some_and(|p| p.contains_key(i)) || failing.is_some_and(|f| f.contains_key(i))
        };
        let fresh = self.lanes[group.lane]
            .order
            .iter()
            .map(|(_, i)| *i)
            .filter(|i| !known(i))
            .find(|i| self.reject(group, *i).is_none());
        if fresh.is_some() {
            return fresh;
        }
        let mut known_nodes: Vec<usize> = placed
            .into_iter()
            .flat_map(|p| p.keys())
            .chain(failing.into_iter().flat_map(|f| f.keys()))
            .copied()
            .collect();
        known_nodes.sort_unstable();
        known_nodes.dedup();
        known_nodes
            .into_iter()
            .filter(|i| self.reject(group, *i).is_none())
            .min_by_key(|i| self.rank(group, *i))
    }

    /// The node for the next task of a group with spread preferences: the
    /// exhaustive rule, over the nodes that pass the filters.
    pub(super) fn spread_choice(&self, group: &Group) -> Option<usize> {
        let counts = self.spread.get(&group.service_id);
        self.lanes[group.lane]
            .order
            .iter()
            .map(|(_, i)| *i)
            .filter(|i| self.reject(group, *i).is_none())
            .min_by_key(|i| {
                let groups: Vec<usize> = group
                    .preferences
                    .iter()
                    .map(|d| {
                        let value = spread_value(&self.nodes[*i], d);
                        counts
                            .and_then(|c| c.get(&(d.clone(), value.to_string())))
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect();
                (
                    self.failing_on(group, *i),
                    groups,
                    self.placed_on(group, *i),
                    self.loads[*i].tasks,
                    *i,
                )
            })
    }
}
