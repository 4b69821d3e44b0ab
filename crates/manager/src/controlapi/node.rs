//! The nodes: read, list, update (availability, labels, role) and remove.

use shoal_api::{
    GetRequest, ListNodesResponse, ListRequest, NodeResponse, NodeRole, RemoveResponse,
    UpdateNodeRequest,
};

use super::*;

/// Removals the cluster remembers at most (the oldest go first): past it,
/// a removed node with a certificate still valid is refused as unknown
/// instead, and retries without forgetting itself.
const MAX_REMOVED_NODES: usize = 100_000;

impl ControlApi {
    pub async fn get_node(&self, request: GetRequest) -> Result<NodeResponse, ApiError> {
        match self.lookup(ObjectKind::Node, &request.reference)?.kind {
            Some(object::Kind::Node(node)) => Ok(NodeResponse { node: Some(*node) }),
            _ => Err(ApiError::Internal("lookup returned another kind".into())),
        }
    }

    pub async fn list_nodes(
        &self,
        request: ListRequest,
    ) -> Result<Pages<shoal_api::Node, ListNodesResponse>, ApiError> {
        let prefixes = request.name_prefixes;
        let view = self.view();
        let ids = view
            .nodes()
            .filter(|n| matches_prefixes(&prefixes, &n.id, n.name()))
            .map(|n| n.id.clone())
            .collect();
        Ok(Pages::new(
            view,
            ids,
            |view, id| view.node(id).cloned(),
            |nodes| ListNodesResponse { nodes },
        ))
    }

    pub async fn update_node(&self, req: UpdateNodeRequest) -> Result<NodeResponse, ApiError> {
        let spec = req.spec.unwrap_or_default();
        validate_node_spec(&spec).map_err(ApiError::from)?;
        let node = {
            let view = self.view();
            let mut node = view.node(&req.node_id).cloned().ok_or_else(|| {
                ApiError::Lookup(shoal_store::LookupError::NotFound {
                    kind: "node".into(),
                    reference: req.node_id.clone(),
                })
            })?;
            // A role changes through the node's daemon: a worker asked to
            // be a manager gets a manager's certificate and joins raft; a
            // manager asked to be a worker leaves raft (leadership handed
            // over first), then goes on as a worker. Demoting is refused
            // where it would leave the others without a quorum.
            let was = node.spec.as_ref().map_or(node.role, |s| s.desired_role);
            if spec.desired_role != was
                && spec.desired_role == NodeRole::Worker as i32
                && node.role == NodeRole::Manager as i32
            {
                demotion_keeps_quorum(&view, &node.id)?;
            }
            node.spec = Some(spec);
            if let Some(meta) = node.meta.as_mut() {
                meta.version = req.version;
            }
            node
        };
        let id = node.id.clone();
        self.commit(vec![action(store_action::Kind::Update, node)])
            .await?;
        let node = self.view().node(&id).cloned();
        Ok(NodeResponse { node })
    }

    pub async fn remove_node(
        &self,
        req: shoal_api::RemoveNodeRequest,
    ) -> Result<RemoveResponse, ApiError> {
        let node = match self.lookup(ObjectKind::Node, &req.reference)?.kind {
            Some(object::Kind::Node(n)) => n,
            _ => return Err(ApiError::Internal("lookup returned another kind".into())),
        };
        if node.id == self.config.node_id {
            return Err(ApiError::Refused(format!(
                "node {} is the one this manager runs on and cannot be removed",
                node.id
            )));
        }
        if node.role == NodeRole::Manager as i32 && !req.force {
            quorum_after_removal(&self.view(), &node.id)?;
        }
        let unreachable_manager = node.manager_status.as_ref().is_some_and(|m| {
            m.reachability == shoal_api::manager_status::Reachability::Unreachable as i32
        });
        if !node.is_down() && !unreachable_manager && !req.force {
            return Err(ApiError::Refused(format!(
                "node {} is not down: drain it first, or use --force to remove a live node",
                req.reference
            )));
        }
        let id = node.id.clone();
        // The removal is recorded in the cluster in the same transaction,
        // kept as long as a certificate of the node could be valid.
        let mut cluster =
            self.view().cluster().cloned().ok_or_else(|| {
                ApiError::Unavailable("the cluster is still being created".into())
            })?;
        let now = shoal_api::clock::now_ms() / 1_000;
        let until = now
            + crate::certificate_authority::node_cert_expiry(&cluster).as_secs() as i64
            + crate::certificate_authority::CLOCK_SKEW.as_secs() as i64;
        cluster
            .removed_nodes
            .retain(|r| r.until_unix >= now && r.node_id != id);
        cluster.removed_nodes.push(shoal_api::RemovedNode {
            node_id: id.clone(),
            until_unix: until,
        });
        let excess = cluster
            .removed_nodes
            .len()
            .saturating_sub(MAX_REMOVED_NODES);
        cluster.removed_nodes.drain(..excess);
        self.commit(vec![
            action(store_action::Kind::Remove, node),
            action(store_action::Kind::Update, cluster),
        ])
        .await?;
        Ok(RemoveResponse { id })
    }
}

/// Refuses to demote manager `id` when the managers left would have no
/// quorum among the reachable ones (or there would be none).
fn demotion_keeps_quorum(view: &shoal_store::Tables, id: &str) -> Result<(), ApiError> {
    let (reachable, rest, quorum) = quorum_counts(view, id);
    if rest == 0 {
        return Err(ApiError::Refused(format!(
            "node {id} is the only manager: demoting it would leave the cluster with none; promote another node first"
        )));
    }
    if reachable < quorum {
        return Err(ApiError::Refused(format!(
            "demoting manager {id} would leave {reachable} reachable of {rest} managers, fewer than a quorum ({quorum}): the cluster could not decide anything; bring managers back first"
        )));
    }
    Ok(())
}

/// The voting managers other than `id` that stay (learners, which show
/// no reachability yet, and managers on their way out do not count): how
/// many are reachable, how many there are, and their quorum.
fn quorum_counts(view: &shoal_store::Tables, id: &str) -> (usize, usize, usize) {
    use shoal_api::manager_status::Reachability;
    let rest: Vec<&shoal_api::Node> = view
        .nodes()
        .filter(|n| n.role == NodeRole::Manager as i32 && n.id != id)
        .filter(|n| n.spec.as_ref().map(|s| s.desired_role) != Some(NodeRole::Worker as i32))
        .filter(|n| {
            n.manager_status
                .as_ref()
                .is_some_and(|m| m.leader || m.reachability != Reachability::Unknown as i32)
        })
        .collect();
    let reachable = rest
        .iter()
        .filter(|n| {
            n.manager_status
                .as_ref()
                .is_some_and(|m| m.leader || m.reachability == Reachability::Reachable as i32)
        })
        .count();
    (reachable, rest.len(), rest.len() / 2 + 1)
}

/// Refuses the removal of manager `id` when the managers left would not
/// have a quorum among those reachable now: the cluster could then make no
/// decision at all, this removal's included.
fn quorum_after_removal(view: &shoal_store::Tables, id: &str) -> Result<(), ApiError> {
    let (reachable, rest, quorum) = quorum_counts(view, id);
    if rest == 0 || reachable < quorum {
        return Err(ApiError::Refused(format!(
            "removing manager {id} would leave {reachable} reachable of {rest} managers, fewer than a quorum ({quorum}): the cluster could not decide anything; bring managers back first, or use --force"
        )));
    }
    Ok(())
}
