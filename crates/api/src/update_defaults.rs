//! What an unset update config means, and which update states are under
//! way, in one place (the control API, the update supervisor and the CLI
//! ask the same questions).

use crate::{
    port_config, update_status, PortConfig, Service, ServiceSpec, Task, TaskSpec, UpdateConfig,
    UpdateStatus,
};

impl Service {
    /// The ports the service publishes on the node itself, as the allocator
    /// records them in each task.
    pub fn host_ports(&self) -> impl Iterator<Item = &PortConfig> {
        self.spec
            .as_ref()
            .and_then(|s| s.endpoint.as_ref())
            .into_iter()
            .flat_map(|e| e.ports.iter())
            .filter(|p| p.publish_mode == port_config::PublishMode::Host as i32)
    }

    /// Whether `task`, made from `task_spec`, runs what the service asks
    /// now: made at its spec version or later, or from the same template
    /// with the same host ports (a task an update left alone, after a
    /// rollback brought its spec back).
    pub fn runs_current(&self, task: &Task, task_spec: &TaskSpec) -> bool {
        self.runs_current_given(task, || {
            let template = self.spec.as_ref().and_then(|s| s.task.as_ref());
            template.map_or(*task_spec == TaskSpec::default(), |t| t == task_spec)
        })
    }

    /// [`Service::runs_current`], with the template comparison made by the
    /// caller (which may have made it once for many tasks sharing a spec).
    pub fn runs_current_given(&self, task: &Task, same_template: impl FnOnce() -> bool) -> bool {
        if task.spec_version >= self.spec_version {
            return true;
        }
        let task_ports = task.endpoint.as_ref().map_or(&[][..], |e| &e.ports[..]);
        same_template() && task_ports.iter().eq(self.host_ports())
    }
}

impl UpdateConfig {
    /// How long each new task is watched for failure when the config does
    /// not say: docker's default.
    pub const DEFAULT_MONITOR_MS: u64 = 5_000;

    /// The config of a service that sets none, and the base the CLI fills
    /// flags into: docker's defaults (one task at a time, no delay, watched
    /// 5 s, pause on the first failure, stop the old task first).
    pub fn unset() -> UpdateConfig {
        UpdateConfig {
            parallelism: 1,
            monitor_ms: Self::DEFAULT_MONITOR_MS,
            ..Default::default()
        }
    }
}

impl ServiceSpec {
    /// The config an update follows; `rolling_back`, the rollback config.
    pub fn update_config(&self, rolling_back: bool) -> UpdateConfig {
        let config = if rolling_back {
            &self.rollback
        } else {
            &self.update
        };
        config.unwrap_or_else(UpdateConfig::unset)
    }
}

impl UpdateStatus {
    /// An update or rollback is replacing tasks.
    pub fn in_progress(&self) -> bool {
        matches!(
            self.state(),
            update_status::State::Updating | update_status::State::RollbackStarted
        )
    }

    /// A rollback is under way or paused: the rollback config applies.
    pub fn rolling_back(&self) -> bool {
        matches!(
            self.state(),
            update_status::State::RollbackStarted | update_status::State::RollbackPaused
        )
    }

    /// An update or rollback stopped on failures and waits for the user.
    pub fn paused(&self) -> bool {
        matches!(
            self.state(),
            update_status::State::Paused | update_status::State::RollbackPaused
        )
    }

    /// The state as `service ls` and `service ps` show it.
    pub fn describe(&self) -> &'static str {
        match self.state() {
            update_status::State::Unknown => "",
            update_status::State::Updating => "updating",
            update_status::State::Paused => "update paused",
            update_status::State::Completed => "updated",
            update_status::State::RollbackStarted => "rolling back",
            update_status::State::RollbackPaused => "rollback paused",
            update_status::State::RollbackCompleted => "rolled back",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_config_is_dockers_default_and_a_set_one_is_taken_as_it_is() {
        let mut spec = ServiceSpec::default();
        assert_eq!(spec.update_config(false), UpdateConfig::unset());
        assert_eq!(spec.update_config(false).parallelism, 1);
        assert_eq!(spec.update_config(true).monitor_ms, 5_000);
        spec.rollback = Some(UpdateConfig {
            parallelism: 0,
            ..Default::default()
        });
        assert_eq!(spec.update_config(true).parallelism, 0);
        assert_eq!(spec.update_config(false).parallelism, 1);
    }

    #[test]
    fn only_updating_and_rolling_back_are_in_progress() {
        use update_status::State::*;
        for (state, in_progress, paused) in [
            (Unknown, false, false),
            (Updating, true, false),
            (Paused, false, true),
            (Completed, false, false),
            (RollbackStarted, true, false),
            (RollbackPaused, false, true),
            (RollbackCompleted, false, false),
        ] {
            let s = UpdateStatus {
                state: state as i32,
                ..Default::default()
            };
            assert_eq!(
                (s.in_progress(), s.paused()),
                (in_progress, paused),
                "{state:?}"
            );
        }
    }
}
