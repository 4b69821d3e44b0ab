//! The order of task states (DESIGN.md §2): states only move forward.

use crate::{Task, TaskState, TaskStatus};

/// Earlier statuses a task keeps (`task inspect` shows them).
pub const MAX_STATUS_HISTORY: usize = 16;

impl Task {
    /// The state the task was last reported in (NEW when it has none).
    pub fn observed(&self) -> TaskState {
        self.status
            .as_ref()
            .and_then(|s| TaskState::try_from(s.state).ok())
            .unwrap_or(TaskState::New)
    }

    /// The state the orchestrator wants (SHUTDOWN for a value this build does
    /// not know: never run what is not understood).
    pub fn desired(&self) -> TaskState {
        TaskState::try_from(self.desired_state).unwrap_or(TaskState::Shutdown)
    }

    /// Moves the task to `next` if that is a forward move
    /// ([`TaskState::may_become`]), keeping the status it leaves in its
    /// history (bounded); returns whether it moved. Every writer of task
    /// status goes through here, so no component can move a task backwards
    /// or out of a terminal state.
    #[must_use = "a backward move is refused: say what happens then"]
    pub fn advance_status(&mut self, next: TaskStatus) -> bool {
        let forward =
            TaskState::try_from(next.state).is_ok_and(|state| self.observed().may_become(state));
        if forward {
            self.push_status(next);
            return true;
        }
        // A running task's health moved on (starting, then healthy):
        // news without a new state. Health too only moves forward, so a
        // repeated or late report changes nothing, whatever its clock.
        let news = self.status.as_ref().is_some_and(|now| {
            now.state == TaskState::Running as i32
                && next.state == now.state
                && next.health > now.health
        });
        if news {
            self.status = Some(next);
        }
        news
    }

    fn push_status(&mut self, next: TaskStatus) {
        if let Some(mut previous) = self.status.take() {
            // The health log stays with the current status alone: sixteen
            // copies of it would be most of a task's size.
            previous.health_log.clear();
            // Exactly one more: a task is written once and dropped, and a
            // doubling list would give each of 100,000 assignments room
            // for four statuses it never holds.
            self.history.reserve_exact(1);
            self.history.push(previous);
            if self.history.len() > MAX_STATUS_HISTORY {
                let extra = self.history.len() - MAX_STATUS_HISTORY;
                self.history.drain(..extra);
            }
        }
        self.status = Some(next);
    }
}

impl TaskState {
    /// Terminal states: the task will never run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Complete
                | TaskState::Shutdown
                | TaskState::Failed
                | TaskState::Rejected
                | TaskState::Orphaned
        )
    }

    /// Whether an observed state may follow `self`: only forward moves count.
    /// A report that would move a task backwards, or out of a terminal state,
    /// is refused.
    pub fn may_become(self, next: TaskState) -> bool {
        !self.is_terminal() && (next as i32) > (self as i32) && next != TaskState::Remove
    }

    /// How a state reads in tables: `Running`, `Pending` …
    pub fn title(self) -> String {
        let name = self.as_str_name();
        let mut out = String::with_capacity(name.len());
        for (i, c) in name.chars().enumerate() {
            if i == 0 {
                out.push(c);
            } else {
                out.push(c.to_ascii_lowercase());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_tasks_health_moves_forward_without_a_new_state() {
        use crate::{task_status::Health, HealthProbe};
        let status = |state: TaskState, at: i64, health: Health| TaskStatus {
            state: state as i32,
            timestamp_ms: at,
            health: health as i32,
            health_log: vec![HealthProbe::default()],
            ..Default::default()
        };
        let mut t = Task::default();
        assert!(t.advance_status(status(TaskState::Running, 10, Health::Starting)));
        assert!(t.advance_status(status(TaskState::Running, 20, Health::Healthy)));
        assert!(t.history.is_empty(), "a health change adds no history");
        // Repeated, or older: dropped.
        assert!(!t.advance_status(status(TaskState::Running, 20, Health::Healthy)));
        assert!(!t.advance_status(status(TaskState::Running, 25, Health::Starting)));
        assert_eq!(t.status.as_ref().unwrap().health, Health::Healthy as i32);
        // A later verdict is taken even from a clock that went back.
        assert!(t.advance_status(status(TaskState::Running, 5, Health::Unhealthy)));
        assert_eq!(t.status.as_ref().unwrap().health, Health::Unhealthy as i32);
        // Health is news only while running.
        assert!(t.advance_status(status(TaskState::Failed, 30, Health::Unhealthy)));
        assert!(!t.advance_status(status(TaskState::Failed, 40, Health::Healthy)));
        assert!(
            t.history.iter().all(|s| s.health_log.is_empty()),
            "the health log stays with the current status"
        );
    }

    #[test]
    fn states_only_move_forward() {
        assert!(TaskState::New.may_become(TaskState::Pending));
        assert!(TaskState::Assigned.may_become(TaskState::Running));
        assert!(!TaskState::Running.may_become(TaskState::Starting));
        assert!(!TaskState::Running.may_become(TaskState::Running));
        assert!(!TaskState::Failed.may_become(TaskState::Orphaned));
        assert!(!TaskState::Running.may_become(TaskState::Remove));
    }

    #[test]
    fn status_history_keeps_the_latest_sixteen_oldest_first() {
        let mut task = Task::default();
        for state in 0..20 {
            task.push_status(TaskStatus {
                exit_code: state,
                ..Default::default()
            });
        }
        assert_eq!(task.status.as_ref().unwrap().exit_code, 19);
        let kept: Vec<i32> = task.history.iter().map(|s| s.exit_code).collect();
        assert_eq!(kept, (3..19).collect::<Vec<i32>>());
    }

    #[test]
    fn status_only_ever_moves_forward_whoever_writes_it() {
        let mut task = Task::default();
        let to = |state: TaskState| TaskStatus {
            state: state as i32,
            ..Default::default()
        };
        assert!(task.advance_status(to(TaskState::Pending)));
        assert!(task.advance_status(to(TaskState::Running)));
        assert!(!task.advance_status(to(TaskState::Assigned)), "backwards");
        assert!(!task.advance_status(to(TaskState::Running)), "in place");
        assert!(task.advance_status(to(TaskState::Failed)));
        assert!(
            !task.advance_status(to(TaskState::Orphaned)),
            "out of a terminal state"
        );
        let unknown = TaskStatus {
            state: 9_999,
            ..Default::default()
        };
        assert!(
            !task.advance_status(unknown),
            "a state this build does not know"
        );
        assert_eq!(task.observed(), TaskState::Failed);
        assert_eq!(task.history.len(), 2);
    }

    #[test]
    fn state_titles_read_like_words() {
        assert_eq!(TaskState::Running.title(), "Running");
        assert_eq!(TaskState::New.title(), "New");
    }
}
