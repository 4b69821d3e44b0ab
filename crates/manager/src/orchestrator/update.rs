//! The update supervisor (DESIGN.md §3): when a service's spec changes, which
//! of its places get a task of the new spec now, under the service's update
//! config (or its rollback config while rolling back).
//!
//! Owns: service `update_status`. On an automatic rollback (failure action
//! `rollback`) it also puts `previous_spec` back as `spec`, as SwarmKit's
//! updater does: the user asked for that in advance.
//!
//! Everything is derived from the store, so a new leader goes on where the
//! last one was, never from scratch and never twice:
//! - a place is *dirty* when its live task runs an older spec;
//! - the update started at `update_status.started_at_ms`; the tasks *of this
//!   update* are those of the current spec created since;
//! - a place is *busy* while its task of this update has not yet run, or
//!   has run for less than `delay` (each of the `parallelism` workers waits
//!   `delay` after the task it started runs, as docker's do);
//! - a task of this update that failed, was rejected or exited before it
//!   had run for `monitor` is a *failure*; more failures than
//!   `max_failure_ratio` of the places trigger the failure action;
//! - the update is *completed* once no place is dirty or busy and every
//!   task of this update has run for `monitor`.
//!
//! [`plan`] is pure: the service, its tasks by place and the time in, the
//! places to replace now, the service to write back and when to look again
//! out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use shoal_api::{
    task_status, update_config, update_status, Service, Task, TaskSpec, TaskState, UpdateStatus,
};

use shoal_store::Tables;

use super::*;

/// How the status of an automatic rollback begins.
const ROLLED_BACK: &str = "update rolled back due to ";

/// What the update supervisor decided for one service.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Rollout {
    /// Places whose task is replaced now.
    pub(super) replace: BTreeSet<Place>,
    /// The service with its new update status (and, for a rollback, its
    /// previous spec back), when either changed. No place is replaced in
    /// the pass that writes it: the next pass reads what it wrote.
    pub(super) service: Option<Service>,
    /// When a delay or a monitor window ends.
    pub(super) wake_at_ms: Option<i64>,
}

/// The ids of the tasks that run an older spec than the service's
/// ([`Service::runs_current`]).
pub(super) fn stale_ids<'a>(
    service: &Service,
    tasks: impl Iterator<Item = (&'a Task, &'a TaskSpec)>,
) -> HashSet<&'a str> {
    let template = service
        .spec
        .as_ref()
        .and_then(|s| s.task.clone())
        .unwrap_or_default();
    // Tasks made together share their spec: compare each spec once.
    let mut same_template: HashMap<*const TaskSpec, bool> = HashMap::new();
    let mut stale = HashSet::new();
    for (task, spec) in tasks {
        let current = service.runs_current_given(task, || {
            *same_template
                .entry(spec as *const TaskSpec)
                .or_insert_with(|| *spec == template)
        });
        if !current {
            stale.insert(task.id.as_str());
        }
    }
    stale
}

/// Why the service's previous spec cannot come back by itself, if it
/// cannot: there is none, it runs what the current one does (it differs
/// only in replicas or update config, so rolling back would change
/// nothing the failure came from), or a network it names is gone (the store
/// would refuse it on every pass).
pub(super) fn rollback_blocked(view: &Tables, service: &Service) -> Option<String> {
    let Some(previous) = service.previous_spec.as_ref() else {
        return Some("the service has no previous spec".into());
    };
    let current = service.spec.clone().unwrap_or_default();
    if previous.runs_same_tasks(&current) {
        return Some("its previous spec runs the same tasks".into());
    }
    previous
        .task
        .iter()
        .flat_map(|t| t.networks.iter())
        .find(|n| view.network(&n.target).is_none())
        .map(|n| format!("network {} of its previous spec no longer exists", n.target))
}

/// When the task was first up, if it was: running, and healthy when its
/// spec has a health check (`checked`). A health change rewrites the
/// running status in place, so its time is when the task became healthy.
fn running_since(task: &Task, checked: bool) -> Option<i64> {
    std::iter::once(task.status.as_ref())
        .flatten()
        .chain(task.history.iter().rev())
        .find(|s| {
            s.state == TaskState::Running as i32
                && (!checked || s.health == task_status::Health::Healthy as i32)
        })
        .map(|s| s.timestamp_ms)
}

/// A task that ended by itself (failed, rejected, or exited) before it had
/// run for `monitor_ms`. A task stopped on purpose ends SHUTDOWN, and one
/// lost with its node ORPHANED: neither is the new spec's failure.
fn failed_early(task: &Task, monitor_ms: u64, checked: bool) -> bool {
    let state = task.observed();
    if !matches!(
        state,
        TaskState::Failed | TaskState::Rejected | TaskState::Complete
    ) {
        return false;
    }
    let ended = task.status.as_ref().map_or(0, |s| s.timestamp_ms);
    running_since(task, checked)
        .is_none_or(|since| ended.saturating_sub(since) <= monitor_ms.min(i64::MAX as u64) as i64)
}

/// The task that stands for a place, among its live tasks (oldest first):
/// the newest; but when the newest runs an older spec while an older one
/// runs the current spec and has not ended (a rollback came back to it),
/// that older one.
pub(super) fn place_task<'a>(
    live: &[&'a Task],
    is_stale: impl Fn(&Task) -> bool,
) -> Option<&'a Task> {
    let newest = *live.last()?;
    if !is_stale(newest) {
        return Some(newest);
    }
    live.iter()
        .rev()
        .find(|t| !is_stale(t) && !t.observed().is_terminal())
        .copied()
        .or(Some(newest))
}

/// [`place_task`] of a place's whole history.
fn live_task<'a>(history: &[&'a Task], is_stale: impl Fn(&Task) -> bool) -> Option<&'a Task> {
    let live: Vec<&Task> = history.iter().copied().filter(|t| occupies(t)).collect();
    place_task(&live, is_stale)
}

fn status(state: update_status::State, now_ms: i64, message: String) -> UpdateStatus {
    UpdateStatus {
        state: state as i32,
        started_at_ms: now_ms,
        completed_at_ms: 0,
        message,
    }
}

/// What the update supervisor does for `service` now. `places` holds every
/// place's tasks, oldest first; `wanted` the places that should hold one;
/// `stale` the tasks of an older spec ([`stale_ids`]); `cannot_roll_back`
/// why the previous spec cannot come back, if it cannot ([`rollback_blocked`]).
pub(super) fn plan(
    service: &Service,
    places: &BTreeMap<Place, Vec<&Task>>,
    wanted: &[Place],
    stale: &HashSet<&str>,
    now_ms: i64,
    cannot_roll_back: Option<String>,
) -> Rollout {
    use update_status::State;
    let spec = service.spec.clone().unwrap_or_default();
    let current = service.update_status.clone().unwrap_or_default();
    let rolling_back = current.rolling_back();
    let config = spec.update_config(rolling_back);
    // A task with a health check counts as up once healthy.
    let checked = spec.task.as_ref().is_some_and(|t| t.health.is_some());
    let is_stale = |t: &Task| stale.contains(t.id.as_str());
    let dirty: Vec<&Place> = wanted
        .iter()
        .filter(|p| {
            places
                .get(p)
                .and_then(|h| live_task(h, is_stale))
                .is_some_and(|t| is_stale(t) && !t.observed().is_terminal())
        })
        .collect();
    let write = |update_status: UpdateStatus| Rollout {
        service: Some(Service {
            update_status: Some(update_status),
            ..service.clone()
        }),
        ..Default::default()
    };
    if current.paused() {
        // Until the user updates the service again.
        return Rollout::default();
    }
    if !current.in_progress() {
        if dirty.is_empty() {
            return Rollout::default();
        }
        return write(status(State::Updating, now_ms, "update in progress".into()));
    }
    let started = current.started_at_ms;
    let of_this_update = |t: &Task| !is_stale(t) && created_at(t) >= started;

    // Failures first: they decide whether anything more is replaced.
    let mut failures = 0usize;
    let mut first_failure: Option<&Task> = None;
    for place in wanted {
        for t in places.get(place).map_or(&[][..], Vec::as_slice) {
            if of_this_update(t) && failed_early(t, config.monitor_ms, checked) {
                failures += 1;
                first_failure.get_or_insert(t);
            }
        }
    }
    let tolerated = config.max_failure_ratio as f64 * wanted.len() as f64;
    if let Some(failed) = first_failure.filter(|_| failures as f64 > tolerated) {
        let cause = format!("failure or early termination of task {}", failed.id);
        let action = update_config::FailureAction::try_from(config.failure_action)
            .unwrap_or(update_config::FailureAction::Pause);
        match action {
            update_config::FailureAction::Continue => {}
            update_config::FailureAction::Rollback
                if !rolling_back && cannot_roll_back.is_none() =>
            {
                let mut rollout = write(status(
                    State::RollbackStarted,
                    now_ms,
                    format!("{ROLLED_BACK}{cause}"),
                ));
                if let Some(s) = rollout.service.as_mut() {
                    s.spec = service.previous_spec.clone();
                    s.previous_spec = service.spec.clone();
                }
                return rollout;
            }
            _ => {
                let (state, what) = if rolling_back {
                    (State::RollbackPaused, "rollback")
                } else {
                    (State::Paused, "update")
                };
                let mut message = format!("{what} paused due to {cause}");
                if let (update_config::FailureAction::Rollback, false, Some(why)) =
                    (action, rolling_back, &cannot_roll_back)
                {
                    message = format!("{message}; it cannot roll back: {why}");
                }
                return write(UpdateStatus {
                    started_at_ms: started,
                    ..status(state, now_ms, message)
                });
            }
        }
    }

    // Places still busy with a task of this update, and when each frees.
    let mut busy = 0usize;
    let mut wake_at_ms: Option<i64> = None;
    let mut watched_until = i64::MIN;
    let mut wake = |at: i64| wake_at_ms = Some(wake_at_ms.map_or(at, |w: i64| w.min(at)));
    for place in wanted {
        let Some(t) = places.get(place).and_then(|h| live_task(h, is_stale)) else {
            continue;
        };
        if !of_this_update(t) {
            continue;
        }
        match (t.observed(), running_since(t, checked)) {
            (TaskState::Running, Some(since)) => {
                let free_at = since.saturating_add(config.delay_ms.min(i64::MAX as u64) as i64);
                if free_at > now_ms {
                    busy += 1;
                    wake(free_at);
                }
                watched_until = watched_until
                    .max(since.saturating_add(config.monitor_ms.min(i64::MAX as u64) as i64));
            }
            (state, _) if !state.is_terminal() => busy += 1,
            // Ended: counted above when it failed; its restart is the
            // restart supervisor's.
            _ => {}
        }
    }
    let room = match config.parallelism {
        0 => usize::MAX,
        n => (n as usize).saturating_sub(busy),
    };
    let replace: BTreeSet<Place> = dirty.iter().take(room).map(|p| (*p).clone()).collect();
    if dirty.is_empty() && busy == 0 {
        if watched_until > now_ms {
            wake(watched_until);
        } else {
            let (state, message) = if !rolling_back {
                (State::Completed, "update completed".to_string())
            } else if current.message.starts_with(ROLLED_BACK) {
                // Keep why, for whoever looks after it ended.
                (
                    State::RollbackCompleted,
                    format!("rollback completed ({})", current.message),
                )
            } else {
                (State::RollbackCompleted, "rollback completed".to_string())
            };
            return write(UpdateStatus {
                started_at_ms: started,
                completed_at_ms: now_ms,
                ..status(state, now_ms, message)
            });
        }
    }
    Rollout {
        replace,
        service: None,
        wake_at_ms,
    }
}
