//! Replicated services and jobs: slots 1..N, one live task per slot.

use std::collections::BTreeMap;

use shoal_api::{Task, TaskState};

use super::*;

/// Which slots a replicated service keeps: the occupied ones, dropping first
/// those whose task is not running, then the highest; then the lowest free
/// numbers until there are `replicas`, at most `max_new` of them (the
/// pass's budget: a service of millions never makes millions of slots in
/// one pass).
pub(super) fn choose_slots(
    by_place: &BTreeMap<Place, Vec<&Task>>,
    replicas: usize,
    max_new: usize,
) -> Vec<Place> {
    let mut occupied: Vec<(bool, u64)> = by_place
        .iter()
        .filter_map(|(place, history)| match place {
            Place::Slot(s) if history.iter().any(|t| occupies(t)) => {
                let running = history
                    .iter()
                    .any(|t| occupies(t) && t.observed() == TaskState::Running);
                Some((running, *s))
            }
            _ => None,
        })
        .collect();
    // Keep running tasks first, lower slots first.
    occupied.sort_by_key(|(running, slot)| (!running, *slot));
    occupied.truncate(replicas);
    let mut slots: std::collections::BTreeSet<u64> = occupied.into_iter().map(|(_, s)| s).collect();
    let wanted = replicas.min(slots.len().saturating_add(max_new));
    let mut next = 1;
    while slots.len() < wanted {
        slots.insert(next);
        next += 1;
    }
    slots.into_iter().map(Place::Slot).collect()
}
