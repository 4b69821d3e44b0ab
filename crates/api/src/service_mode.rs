//! What a service's mode means for its replicas, in one place (the control
//! API, the limits, the orchestrator and the CLI ask the same questions).

use crate::{Service, ServiceMode, ServiceSpec};

impl Service {
    /// [`ServiceSpec::runs_same_tasks`] of the two services' specs, without
    /// copying either (the store asks on every service write).
    pub fn runs_same_tasks(&self, other: &Service) -> bool {
        fn runs(s: &Service) -> (Option<&crate::TaskSpec>, Option<&crate::EndpointSpec>) {
            let spec = s.spec.as_ref();
            (
                spec.and_then(|s| s.task.as_ref()),
                spec.and_then(|s| s.endpoint.as_ref()),
            )
        }
        runs(self) == runs(other)
    }
}

impl ServiceSpec {
    /// A replicated service or job: its tasks sit in slots 1..N.
    pub fn is_replicated(&self) -> bool {
        matches!(
            ServiceMode::try_from(self.mode),
            Ok(ServiceMode::Replicated | ServiceMode::ReplicatedJob)
        )
    }

    /// A job (replicated or global): its tasks run to completion, and a new
    /// spec reaches them at once, with no rollout.
    pub fn is_job(&self) -> bool {
        matches!(
            ServiceMode::try_from(self.mode),
            Ok(ServiceMode::ReplicatedJob | ServiceMode::GlobalJob)
        )
    }

    /// Whether `other` runs the same tasks: the same task template and
    /// endpoint. Replicas, update configs and labels do not count: changing
    /// them replaces no task.
    pub fn runs_same_tasks(&self, other: &ServiceSpec) -> bool {
        self.task == other.task && self.endpoint == other.endpoint
    }

    /// The replicas a replicated service asks for (one when unset); `None`
    /// for a global one, whose tasks follow the nodes.
    pub fn replicas_wanted(&self) -> Option<u64> {
        self.is_replicated()
            .then(|| self.replicas.unwrap_or(1).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replicated_modes_want_a_number_of_replicas() {
        let spec = |mode: ServiceMode, replicas| ServiceSpec {
            mode: mode as i32,
            replicas,
            ..Default::default()
        };
        assert_eq!(
            spec(ServiceMode::Replicated, Some(3)).replicas_wanted(),
            Some(3)
        );
        assert_eq!(
            spec(ServiceMode::ReplicatedJob, None).replicas_wanted(),
            Some(1)
        );
        assert_eq!(
            spec(ServiceMode::Replicated, Some(-2)).replicas_wanted(),
            Some(0)
        );
        assert_eq!(spec(ServiceMode::Global, Some(3)).replicas_wanted(), None);
        assert_eq!(spec(ServiceMode::GlobalJob, None).replicas_wanted(), None);
    }
}
