//! The order of task states (DESIGN.md §2): states only move forward.

use crate::TaskState;

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
    fn states_only_move_forward() {
        assert!(TaskState::New.may_become(TaskState::Pending));
        assert!(TaskState::Assigned.may_become(TaskState::Running));
        assert!(!TaskState::Running.may_become(TaskState::Starting));
        assert!(!TaskState::Running.may_become(TaskState::Running));
        assert!(!TaskState::Failed.may_become(TaskState::Orphaned));
        assert!(!TaskState::Running.may_become(TaskState::Remove));
    }

    #[test]
    fn state_titles_read_like_words() {
        assert_eq!(TaskState::Running.title(), "Running");
        assert_eq!(TaskState::New.title(), "New");
    }
}
