//! The refusal a removed node gets (`node rm`), marked so its agent can
//! tell it from a passing fault: a removed node stops its tasks and forgets
//! its identity instead of retrying for ever beside its replacements.

/// The metadata key that marks the refusal.
const REMOVED_KEY: &str = "shoal-node-removed";

/// The refusal of node `node_id`, which is no longer in the cluster.
pub fn node_removed(node_id: &str) -> tonic::Status {
    let mut status = tonic::Status::permission_denied(format!(
        "node {node_id} has been removed from the cluster"
    ));
    status.metadata_mut().insert(
        REMOVED_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// Whether `status` says the node that got it was removed.
pub fn is_node_removed(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::PermissionDenied && status.metadata().contains_key(REMOVED_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_is_told_apart_from_any_other_refusal() {
        let removed = node_removed("n1");
        assert!(is_node_removed(&removed));
        assert!(removed.message().contains("n1"));
        assert!(!is_node_removed(&tonic::Status::permission_denied(
            "only managers may call this"
        )));
        assert!(!is_node_removed(&tonic::Status::unavailable("down")));
    }
}
