//! The restart supervisor: whether a task that ended is replaced, and
//! after how long (DESIGN.md §3: restart policy condition, delay, attempts
//! in a window).

use shoal_api::{restart_policy, RestartPolicy, Service, ServiceMode, Task, TaskState};

use super::*;

/// A service without a restart policy restarts any ended task after 5 s, as
/// docker does.
pub(super) const DEFAULT_RESTART_DELAY_MS: u64 = 5_000;

/// A task rejected before it started (missing program, bad workdir) cannot
/// succeed by retrying faster: its replacement waits at least this long,
/// whatever the policy says, so a broken spec never spins.
pub(super) const MIN_REJECTED_RESTART_DELAY_MS: u64 = 1_000;

pub(super) fn restart_policy(service: &Service) -> RestartPolicy {
    service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.restart)
        .unwrap_or(RestartPolicy {
            condition: restart_policy::Condition::Any as i32,
            delay_ms: DEFAULT_RESTART_DELAY_MS,
            ..Default::default()
        })
}

/// How long the replacement of a task that ended in `ended` waits. A task
/// lost with its node did not fail: its replacement starts at once (the
/// delay is there to slow a crash loop, and node loss is not one).
pub(super) fn restart_delay_ms(service: &Service, ended: TaskState) -> u64 {
    let delay = restart_policy(service).delay_ms;
    if ended == TaskState::Orphaned {
        0
    } else if ended == TaskState::Rejected {
        delay.max(MIN_REJECTED_RESTART_DELAY_MS)
    } else {
        delay
    }
}

/// The restart supervisor's verdict on an occupying task that ended.
pub(super) fn should_restart(
    service: &Service,
    history: &[&Task],
    ended: &Task,
    now_ms: i64,
) -> bool {
    let spec = service.spec.clone().unwrap_or_default();
    let policy = restart_policy(service);
    let job = matches!(
        ServiceMode::try_from(spec.mode),
        Ok(ServiceMode::ReplicatedJob | ServiceMode::GlobalJob)
    );
    let state = ended.observed();
    if state == TaskState::Orphaned {
        // Its node was lost: not the task's failure, so no policy stops
        // its replacement.
        return true;
    }
    let condition = restart_policy::Condition::try_from(policy.condition).unwrap_or_default();
    let wanted = match condition {
        _ if job && state == TaskState::Complete => false,
        restart_policy::Condition::None => false,
        restart_policy::Condition::OnFailure => state != TaskState::Complete,
        restart_policy::Condition::Any => true,
    };
    if !wanted {
        return false;
    }
    if policy.max_attempts == 0 {
        return true;
    }
    // Restarts already made in the window: tasks of this place and of the
    // ended task's spec created after the first, within the window. A task
    // an update made starts a count of its own.
    let history: Vec<&&Task> = history
        .iter()
        .filter(|t| t.spec_version == ended.spec_version)
        .collect();
    let first = history.iter().map(|t| created_at(t)).min().unwrap_or(0);
    let since = if policy.window_ms == 0 {
        i64::MIN
    } else {
        now_ms - policy.window_ms as i64
    };
    let restarts = history
        .iter()
        .filter(|t| created_at(t) > first && created_at(t) >= since)
        .count() as u64;
    restarts < policy.max_attempts
}
