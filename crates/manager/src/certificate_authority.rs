//! The certificate authority every manager serves on its node listener
//! (DESIGN.md §6): a joining node trades a join token and a certificate
//! request for its node certificate, and a node renews its own.
//!
//! Owns: the cluster's `root_ca` and `join_tokens`, and the creation of a
//! worker's node object when it joins (created with state UNKNOWN: the
//! dispatcher makes it READY when its agent opens a session).
//!
//! A join token's secret is a MAC of its role and a nonce under the CA key
//! ([`shoal_ca::RootCa::join_token`]); the store keeps the nonce and the
//! secret's hash, never the secret, and a token is checked by hash in
//! constant time. A joined node's identity (its id, its role) is chosen
//! here, never taken from its request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use shoal_api::ca_server::Ca;
use shoal_api::{
    node_spec, node_status, store_action, Annotations, Cluster, IssueNodeCertificateRequest,
    JoinSecret, JoinTokens, Node, NodeCertificateResponse, NodeRole, NodeSpec, NodeStatus,
    RenewNodeCertificateRequest, Transaction,
};
use shoal_ca::{JoinToken, NodeIdentity, Role, RootCa, SecretHash};
use shoal_raft::Replica;
use shoal_store::Tables;
use tonic::{Request, Response, Status};

use crate::authorization::Peer;

/// A node certificate's lifetime when the cluster spec sets none.
pub const DEFAULT_NODE_CERT_EXPIRY: Duration = Duration::from_secs(90 * 86_400);
/// The shortest lifetime the cluster spec may set: a node renews at half
/// of it at the earliest, and must reach a manager in that time.
pub const MIN_NODE_CERT_EXPIRY: Duration = Duration::from_secs(30);
/// Clocks of nodes differ: a certificate is valid from a little before now.
pub const CLOCK_SKEW: Duration = Duration::from_secs(3_600);

/// The lifetime of the certificates `cluster` issues.
pub fn node_cert_expiry(cluster: &Cluster) -> Duration {
    cluster
        .spec
        .as_ref()
        .and_then(|s| s.ca)
        .map(|ca| ca.node_cert_expiry_secs)
        .filter(|&secs| secs > 0)
        .map_or(DEFAULT_NODE_CERT_EXPIRY, Duration::from_secs)
}

/// The role a join token's name gives.
pub fn role_named(name: &str) -> Option<Role> {
    match name {
        "worker" => Some(Role::Worker),
        "manager" => Some(Role::Manager),
        _ => None,
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Worker => "worker",
        Role::Manager => "manager",
    }
}

/// A new secret for `role` under `ca`: its nonce and its hash.
pub fn new_join_secret(ca: &RootCa, role: Role) -> Result<JoinSecret, shoal_ca::CaError> {
    let nonce = shoal_ca::new_token_nonce()?;
    let token = ca.join_token(role, &nonce);
    Ok(JoinSecret {
        secret_hash: token.secret_hash().0.to_vec(),
        nonce,
    })
}

/// Both roles' secrets for a new cluster.
pub fn new_join_tokens(ca: &RootCa) -> Result<JoinTokens, shoal_ca::CaError> {
    Ok(JoinTokens {
        worker: Some(new_join_secret(ca, Role::Worker)?),
        manager: Some(new_join_secret(ca, Role::Manager)?),
    })
}

/// The stored secret of `role`.
pub fn join_secret(tokens: &JoinTokens, role: Role) -> Option<&JoinSecret> {
    match role {
        Role::Worker => tokens.worker.as_ref(),
        Role::Manager => tokens.manager.as_ref(),
    }
}

/// The node object of a worker that joined from `addr`: UNKNOWN until its
/// agent opens a session (the dispatcher makes it READY).
pub fn joined_worker(node_id: &str, addr: &str) -> Node {
    Node {
        id: node_id.to_string(),
        spec: Some(NodeSpec {
            annotations: Some(Annotations::default()),
            desired_role: NodeRole::Worker as i32,
            availability: node_spec::Availability::Active as i32,
        }),
        status: Some(NodeStatus {
            state: node_status::State::Unknown as i32,
            message: "joined; its agent has not connected yet".into(),
            addr: addr.to_string(),
        }),
        role: NodeRole::Worker as i32,
        ..Default::default()
    }
}

/// The root CA of `cluster`, loaded to sign.
pub fn root_of(cluster: &Cluster) -> Result<RootCa, Status> {
    let root = cluster
        .root_ca
        .as_ref()
        .filter(|r| !r.key_pem.is_empty())
        .ok_or_else(|| Status::unavailable("the cluster has no root CA yet"))?;
    RootCa::load(&root.cert_pem, &root.key_pem)
        .map_err(|e| Status::internal(format!("the cluster's root CA: {e}")))
}

/// Which role `token` joins `cluster` as, or why it is refused. Every
/// stored hash is compared, in constant time, whatever matches first.
pub fn role_of_token(cluster: &Cluster, token: &JoinToken) -> Result<Role, Status> {
    let digest = cluster
        .root_ca
        .as_ref()
        .map(|r| r.digest.as_str())
        .unwrap_or_default();
    if token.ca_digest().as_str() != digest {
        return Err(Status::permission_denied(format!(
            "the join token is for another cluster: its CA digest is {}, this cluster's is {digest}",
            token.ca_digest()
        )));
    }
    let tokens = cluster.join_tokens.clone().unwrap_or_default();
    let mut found = None;
    for role in [Role::Worker, Role::Manager] {
        let Some(secret) = join_secret(&tokens, role) else {
            continue;
        };
        let Ok(hash) = <[u8; 32]>::try_from(secret.secret_hash.as_slice()) else {
            continue;
        };
        if SecretHash(hash).matches(token) {
            found = Some(role);
        }
    }
    found.ok_or_else(|| {
        Status::permission_denied(
            "the join token is not valid: it is wrong, or it was rotated; \
             `shoal join-token worker` on a manager prints the current one",
        )
    })
}

/// The CA service.
pub struct CertificateAuthority {
    replica: Arc<Replica>,
    ids: Mutex<StdRng>,
    joins: Mutex<JoinRate>,
}

/// Join calls a manager takes per second at most, on average: the join is
/// the one call anyone may make, and each costs a signature and a raft
/// write; a flood of them (or of guessed tokens) is refused, not queued.
pub const JOINS_PER_SECOND: f64 = 200.0;
/// Join calls taken at once before the rate applies (a fleet joining).
pub const JOIN_BURST: f64 = 500.0;

/// A token bucket over the join calls.
#[derive(Debug)]
struct JoinRate {
    tokens: f64,
    at: shoal_api::clock::Instant,
}

impl JoinRate {
    fn new(now: shoal_api::clock::Instant) -> JoinRate {
        JoinRate {
            tokens: JOIN_BURST,
            at: now,
        }
    }

    /// Whether a call at `now` is taken.
    fn take(&mut self, now: shoal_api::clock::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * JOINS_PER_SECOND).min(JOIN_BURST);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl CertificateAuthority {
    /// Node ids of joining nodes come from `ids`.
    pub fn new(replica: Arc<Replica>, ids: StdRng) -> CertificateAuthority {
        CertificateAuthority {
            replica,
            ids: Mutex::new(ids),
            joins: Mutex::new(JoinRate::new(shoal_api::clock::Instant::now())),
        }
    }

    fn new_node_id(&self) -> String {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        crate::identity::new_object_id(&mut *ids)
    }

    /// Writes `node` (a create, or an update over the version read);
    /// `what` names it in the refusal.
    async fn record(&self, kind: store_action::Kind, node: Node, what: &str) -> Result<(), Status> {
        self.replica
            .propose(Transaction {
                leader_term: 0,
                actions: vec![crate::controlapi::action(kind, node)],
                timestamp_ms: 0,
            })
            .await
            .map(|_| ())
            .map_err(|e| Status::unavailable(format!("recording {what} failed: {e}")))
    }

    /// A raft id no manager of `view` or member of the raft group has.
    fn new_raft_id(&self, view: &Tables) -> u64 {
        let members = self.replica.members();
        let taken = |id: u64| {
            id == 0
                || members.addrs.contains_key(&id)
                || view
                    .nodes()
                    .any(|n| n.manager_status.as_ref().is_some_and(|m| m.raft_id == id))
        };
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Below 2^53: JSON readers of metrics keep every digit.
            let id = rand::Rng::gen_range(&mut *ids, 2..(1u64 << 53));
            if !taken(id) {
                return id;
            }
        }
    }
}

/// The address a joining manager gives for other managers to reach it.
fn manager_address(addr: &str) -> Result<String, Status> {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) if !a.ip().is_unspecified() && a.port() != 0 => Ok(a.to_string()),
        _ => Err(Status::invalid_argument(format!(
            "advertise_addr: a joining manager names the IP address and port other managers reach it at, got {addr:?}"
        ))),
    }
}

/// The node object of a manager that joined: a manager of the store at
/// once, a member of raft once the leader has added it and it caught up.
pub fn joined_manager(node_id: &str, remote_ip: &str, raft_addr: &str, raft_id: u64) -> Node {
    let mut node = joined_worker(node_id, remote_ip);
    node.role = NodeRole::Manager as i32;
    if let Some(spec) = node.spec.as_mut() {
        spec.desired_role = NodeRole::Manager as i32;
    }
    node.manager_status = Some(shoal_api::ManagerStatus {
        raft_id,
        addr: raft_addr.to_string(),
        leader: false,
        reachability: shoal_api::manager_status::Reachability::Unknown as i32,
    });
    node
}

/// Signs a certificate of `identity` for the key in `csr_pem`.
fn sign(
    cluster: &Cluster,
    identity: &NodeIdentity,
    csr_pem: &str,
) -> Result<NodeCertificateResponse, Status> {
    let ca = root_of(cluster)?;
    let now = SystemTime::now();
    let cert_pem = ca
        .issue(
            csr_pem,
            identity,
            &[],
            now - CLOCK_SKEW,
            now + node_cert_expiry(cluster),
        )
        .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
    Ok(NodeCertificateResponse {
        node_id: identity.node_id.clone(),
        cluster_id: cluster.id.clone(),
        cert_pem,
        ca_pem: ca.cert_pem().to_string(),
        role: role_name(identity.role).to_string(),
        managers: Vec::new(),
        raft_id: 0,
    })
}

fn cluster_of(view: &Tables) -> Result<Cluster, Status> {
    view.cluster()
        .cloned()
        .ok_or_else(|| Status::unavailable("the cluster is still being created"))
}

#[tonic::async_trait]
impl Ca for CertificateAuthority {
    async fn issue_node_certificate(
        &self,
        request: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<NodeCertificateResponse>, Status> {
        let remote = Peer::of(&request).and_then(Peer::remote_addr);
        let taken = self
            .joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(shoal_api::clock::Instant::now());
        if !taken {
            return Err(Status::resource_exhausted(format!(
                "this manager takes at most {JOINS_PER_SECOND} joins a second (bursts of {JOIN_BURST}); try again in a moment"
            )));
        }
        let req = request.into_inner();
        let token: JoinToken = req
            .token
            .parse()
            .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        let view = self.replica.store().view();
        let cluster = cluster_of(&view)?;
        let role = role_of_token(&cluster, &token)?;
        let raft_addr = match role {
            Role::Manager => Some(manager_address(&req.advertise_addr)?),
            Role::Worker => None,
        };
        let identity = NodeIdentity {
            node_id: self.new_node_id(),
            role,
            cluster_id: cluster.id.clone(),
        };
        let mut answer = sign(&cluster, &identity, &req.csr_pem)?;
        let remote_ip = remote.map(|r| r.ip().to_string()).unwrap_or_default();
        let node = match raft_addr {
            Some(addr) => {
                let raft_id = self.new_raft_id(&view);
                answer.raft_id = raft_id;
                joined_manager(&identity.node_id, &remote_ip, &addr, raft_id)
            }
            None => joined_worker(&identity.node_id, &remote_ip),
        };
        // The node exists before its certificate is handed out: every call
        // made with the certificate finds it.
        self.record(store_action::Kind::Create, node, "the new node")
            .await?;
        answer.managers = crate::managers::addresses(&self.replica.store().view());
        tracing::info!(node = %identity.node_id, ?remote, role = role_name(role), "a node joined");
        Ok(Response::new(answer))
    }

    async fn renew_node_certificate(
        &self,
        request: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<NodeCertificateResponse>, Status> {
        let (node_id, shown_role) = match Peer::of(&request) {
            Some(Peer::Node { node_id, role, .. }) => (node_id.clone(), *role),
            _ => {
                return Err(Status::unauthenticated(
                    "renewal needs the node's certificate",
                ))
            }
        };
        let req = request.into_inner();
        if !req.current_role.is_empty() {
            // Only a manager's certificate runs a manager. (A worker may
            // hold one already: renewed after the CA promoted it, before it
            // heard the answer.)
            let claimed = role_named(&req.current_role);
            if claimed.is_none() || (claimed == Some(Role::Manager) && shown_role != Role::Manager)
            {
                return Err(Status::invalid_argument(format!(
                    "current_role: {:?} is not a role this node can run as with its certificate ({})",
                    req.current_role,
                    role_name(shown_role)
                )));
            }
            let runs_as = claimed.unwrap_or(Role::Worker);
            // A change of role is decided on a store that holds every
            // write committed before: a lagging manager's could still show
            // the role of before (and turn a voting manager into a worker).
            let local = self.replica.store().view();
            let changes = local.node(&node_id).is_some_and(|n| {
                let is_manager = n.role == NodeRole::Manager as i32;
                is_manager != (runs_as == Role::Manager)
                    || (runs_as == Role::Worker
                        && promotion(n, &req.advertise_addr).ok().flatten().is_some())
            });
            if changes {
                self.replica.barrier().await.map_err(|e| {
                    Status::unavailable(format!(
                        "this manager could not catch up with the cluster to decide: {e}"
                    ))
                })?;
            }
        }
        let view = self.replica.store().view();
        let cluster = cluster_of(&view)?;
        let node = view
            .node(&node_id)
            .ok_or_else(|| crate::authorization::missing_node(&view, &node_id))?
            .clone();
        let mut raft_id = node.manager_status.as_ref().map_or(0, |m| m.raft_id);
        // The role is the store's: a promoted or demoted node's renewed
        // certificate says what it is now. A worker whose spec asks it to
        // be a manager becomes one here, when it says where it listens:
        // the membership loop then adds it to raft. (A node that runs as a
        // manager while the store says worker, let go from raft, first
        // becomes a worker: it is promoted from there.)
        let runs_as_manager = req.current_role == role_name(Role::Manager);
        let asked = if runs_as_manager {
            None
        } else {
            promotion(&node, &req.advertise_addr)?
        };
        let role = match asked {
            Some(addr) => {
                raft_id = self.new_raft_id(&view);
                self.record(
                    store_action::Kind::Update,
                    promoted_manager(&node, &addr, raft_id),
                    "the promotion",
                )
                .await?;
                tracing::info!(node = %node_id, raft_id, %addr, "a worker was promoted to manager");
                Role::Manager
            }
            None if node.role == NodeRole::Manager as i32 => {
                // A manager that came back on another address: raft dials
                // it there once the store says so (the membership loop).
                if let Some(moved) = moved_manager(&node, &req.advertise_addr)? {
                    self.record(store_action::Kind::Update, moved, "the new address")
                        .await?;
                    tracing::info!(node = %node_id, addr = %req.advertise_addr, "a manager's address changed");
                }
                Role::Manager
            }
            None => Role::Worker,
        };
        // Asked only whether the role changed: nothing is signed when not.
        if req.current_role == role_name(role) {
            return Err(Status::failed_precondition(format!(
                "node {node_id} is a {} still",
                role_name(role)
            )));
        }
        let identity = NodeIdentity {
            node_id,
            role,
            cluster_id: cluster.id.clone(),
        };
        let mut answer = sign(&cluster, &identity, &req.csr_pem)?;
        if role == Role::Manager {
            answer.raft_id = raft_id;
        }
        answer.managers = crate::managers::addresses(&self.replica.store().view());
        Ok(Response::new(answer))
    }
}

/// Where a worker that asks to become a manager will listen, when its
/// spec asks that (`node promote`) and it named an address; `None` when
/// the renewal changes no role.
fn promotion(node: &Node, advertise_addr: &str) -> Result<Option<String>, Status> {
    let asked = node
        .spec
        .as_ref()
        .is_some_and(|s| s.desired_role == NodeRole::Manager as i32);
    if node.role == NodeRole::Manager as i32 || !asked || advertise_addr.is_empty() {
        return Ok(None);
    }
    manager_address(advertise_addr).map(Some)
}

/// Manager `node` with its address changed to `advertise_addr`, when it
/// names one and it differs from the recorded one.
fn moved_manager(node: &Node, advertise_addr: &str) -> Result<Option<Node>, Status> {
    if advertise_addr.is_empty() {
        return Ok(None);
    }
    let addr = manager_address(advertise_addr)?;
    let Some(status) = node.manager_status.as_ref() else {
        return Ok(None);
    };
    if status.addr == addr {
        return Ok(None);
    }
    let mut moved = node.clone();
    if let Some(s) = moved.manager_status.as_mut() {
        s.addr = addr;
    }
    Ok(Some(moved))
}

/// `node` as a manager: raft id `raft_id`, reached at `addr`; its version
/// read, so a second promotion racing it conflicts instead of giving the
/// node two raft ids.
fn promoted_manager(node: &Node, addr: &str, raft_id: u64) -> Node {
    let mut promoted = node.clone();
    promoted.role = NodeRole::Manager as i32;
    promoted.manager_status = Some(shoal_api::ManagerStatus {
        raft_id,
        addr: addr.to_string(),
        leader: false,
        reachability: shoal_api::manager_status::Reachability::Unknown as i32,
    });
    promoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> (Cluster, RootCa) {
        let ca = RootCa::create("c1", SystemTime::now()).unwrap();
        let cluster = Cluster {
            id: "c1".into(),
            root_ca: Some(shoal_api::RootCa {
                cert_pem: ca.cert_pem().into(),
                key_pem: ca.key_pem().into(),
                digest: ca.digest().to_string(),
            }),
            join_tokens: Some(new_join_tokens(&ca).unwrap()),
            ..Default::default()
        };
        (cluster, ca)
    }

    fn token(cluster: &Cluster, ca: &RootCa, role: Role) -> JoinToken {
        let tokens = cluster.join_tokens.as_ref().unwrap();
        ca.join_token(role, &join_secret(tokens, role).unwrap().nonce)
    }

    #[test]
    fn each_roles_token_gives_its_role_and_a_rotated_one_gives_none() {
        let (mut cluster, ca) = cluster();
        let worker = token(&cluster, &ca, Role::Worker);
        let manager = token(&cluster, &ca, Role::Manager);
        assert_ne!(worker, manager);
        assert_eq!(role_of_token(&cluster, &worker).unwrap(), Role::Worker);
        assert_eq!(role_of_token(&cluster, &manager).unwrap(), Role::Manager);

        cluster.join_tokens.as_mut().unwrap().worker =
            Some(new_join_secret(&ca, Role::Worker).unwrap());
        let refused = role_of_token(&cluster, &worker).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("rotated"), "{refused}");
        assert_eq!(role_of_token(&cluster, &manager).unwrap(), Role::Manager);
        let current = token(&cluster, &ca, Role::Worker);
        assert_eq!(role_of_token(&cluster, &current).unwrap(), Role::Worker);
    }

    #[test]
    fn a_token_of_another_clusters_ca_is_refused_naming_both_digests() {
        let (cluster, _) = cluster();
        let (other, other_ca) = self::cluster();
        let foreign = token(&other, &other_ca, Role::Worker);
        let refused = role_of_token(&cluster, &foreign).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains(foreign.ca_digest().as_str()),
            "{refused}"
        );
    }

    #[test]
    fn joins_past_the_burst_are_refused_until_the_rate_refills() {
        let start = shoal_api::clock::Instant::now();
        let mut rate = JoinRate::new(start);
        let taken = (0..(JOIN_BURST as usize + 10))
            .filter(|_| rate.take(start))
            .count();
        assert_eq!(taken, JOIN_BURST as usize, "a burst, then refusals");
        // A second later, a second's worth more.
        let later = start + Duration::from_secs(1);
        let refilled = (0..1_000).filter(|_| rate.take(later)).count();
        assert_eq!(refilled, JOINS_PER_SECOND as usize);
    }

    #[test]
    fn the_cluster_spec_sets_the_certificate_lifetime() {
        let (mut cluster, _) = cluster();
        assert_eq!(node_cert_expiry(&cluster), DEFAULT_NODE_CERT_EXPIRY);
        cluster.spec = Some(shoal_api::ClusterSpec {
            ca: Some(shoal_api::CaConfig {
                node_cert_expiry_secs: 120,
            }),
            ..Default::default()
        });
        assert_eq!(node_cert_expiry(&cluster), Duration::from_secs(120));
    }
}
