//! Who may call what on a manager's node listener (DESIGN.md §6).
//!
//! Owns nothing in the store: it reads the cluster and the nodes to decide,
//! per gRPC method, from the certificate the TLS handshake verified:
//!
//! | method | who |
//! |---|---|
//! | `Ca/IssueNodeCertificate` | anyone (the join token in the request is the credential) |
//! | `Ca/RenewNodeCertificate`, `Dispatcher/*`, `LogBroker/Publish*` | any node of the cluster |
//! | `Raft/*`, `Control/*`, anything else of `LogBroker` | managers (for replication, also one the store does not know yet) |
//! | anything else | nobody |
//!
//! A node is only what its certificate says (CN = node id, OU = role, O =
//! cluster), and only while the store has it: a node removed with `node rm`
//! is refused from the commit on, whatever its certificate's dates. The
//! caller's identity is handed to the service as a [`Peer`] in the
//! request's extensions; a service never reads one from a request field.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use shoal_api::mtls::PeerCertificates;
use shoal_api::NodeRole;
use shoal_ca::{NodeIdentity, Role};
use shoal_raft::Replica;
use shoal_store::Tables;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::Status;

/// The verified caller of a request on the node listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A node of the cluster, as its certificate names it.
    Node {
        node_id: String,
        role: Role,
        remote_addr: Option<SocketAddr>,
    },
    /// A caller without a certificate, on the one method that allows it.
    Joining { remote_addr: Option<SocketAddr> },
}

impl Peer {
    /// The caller of `request`, if it came through the authorization
    /// layer; `None` on a transport that has none (a unix socket only the
    /// local node can reach, in the simulator and tests).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Peer> {
        request.extensions().get::<Peer>()
    }

    /// The node id, for a node.
    pub fn node_id(&self) -> Option<&str> {
        match self {
            Peer::Node { node_id, .. } => Some(node_id),
            Peer::Joining { .. } => None,
        }
    }

    pub fn remote_addr(&self) -> Option<SocketAddr> {
        match self {
            Peer::Node { remote_addr, .. } | Peer::Joining { remote_addr } => *remote_addr,
        }
    }
}

/// Who a method is open to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    Anyone,
    Nodes,
    Managers,
    /// Managers, and also a manager this store does not know yet: raft's
    /// messages reach a joining manager before its store holds anything,
    /// and a lagging one before it holds the newest manager's node.
    RaftPeers,
}

/// The audience of the method at `path` (`/package.Service/Method`);
/// `None` for a method nobody may call (default deny: a method added later
/// is closed until it is named here).
fn audience(path: &str) -> Option<Audience> {
    let (service, method) = path.strip_prefix("/shoal.v1.")?.split_once('/')?;
    match (service, method) {
        ("Ca", "IssueNodeCertificate") => Some(Audience::Anyone),
        ("Ca", "RenewNodeCertificate") => Some(Audience::Nodes),
        ("Dispatcher", "Session" | "Heartbeat" | "UpdateTaskStatus") => Some(Audience::Nodes),
        ("LogBroker", m) if m.starts_with("Publish") => Some(Audience::Nodes),
        // A write proposed, and the stream a follower holds, need a
        // manager the store knows: only the leader serves them, and it
        // knows every manager it took in. Replication itself reaches a
        // manager whose store has not caught up yet on who it is.
        ("Raft", "Forward" | "Lead") => Some(Audience::Managers),
        ("Raft", _) => Some(Audience::RaftPeers),
        ("Control" | "LogBroker", _) => Some(Audience::Managers),
        _ => None,
    }
}

/// The decision for one request: the caller it is made for, or the refusal.
/// `local_cluster` is this node's cluster, for a store that holds none yet.
pub fn decide(
    path: &str,
    peer: Option<&PeerCertificates>,
    view: &Tables,
    local_cluster: &str,
) -> Result<Peer, Status> {
    let remote_addr = peer.and_then(|p| p.remote_addr);
    let Some(audience) = audience(path) else {
        return Err(Status::permission_denied(format!(
            "{path}: no node may call this method"
        )));
    };
    let Some(leaf) = peer.and_then(PeerCertificates::leaf) else {
        if audience == Audience::Anyone {
            return Ok(Peer::Joining { remote_addr });
        }
        return Err(Status::unauthenticated(format!(
            "{path}: a node certificate of this cluster is required"
        )));
    };
    let (identity, not_after) = NodeIdentity::of_certificate(leaf)
        .map_err(|e| Status::unauthenticated(format!("{path}: {e}")))?;
    // The handshake checked the dates, but a connection outlives it: a
    // call made on it after the certificate ended is refused.
    let now = shoal_api::clock::now_ms() / 1_000;
    if not_after < now {
        return Err(Status::unauthenticated(format!(
            "{path}: the certificate of node {} expired; renew it (or join again)",
            identity.node_id
        )));
    }
    let cluster_id = view.cluster().map_or(local_cluster, |c| c.id.as_str());
    if identity.cluster_id != cluster_id {
        return Err(Status::permission_denied(format!(
            "{path}: the certificate is of cluster {}, this is cluster {cluster_id}",
            identity.cluster_id
        )));
    }
    let Some(node) = view.node(&identity.node_id) else {
        let removed = view.cluster().is_some_and(|c| {
            c.removed_nodes
                .iter()
                .any(|r| r.node_id == identity.node_id)
        });
        if audience == Audience::RaftPeers && identity.role == Role::Manager && !removed {
            return Ok(Peer::Node {
                node_id: identity.node_id,
                role: identity.role,
                remote_addr,
            });
        }
        return Err(missing_node(view, &identity.node_id));
    };
    if matches!(audience, Audience::Managers | Audience::RaftPeers) {
        let manager_now = node.role == NodeRole::Manager as i32;
        if identity.role != Role::Manager || !manager_now {
            return Err(Status::permission_denied(format!(
                "{path}: only managers may call this; node {} is a worker",
                identity.node_id
            )));
        }
    }
    Ok(Peer::Node {
        node_id: identity.node_id,
        role: identity.role,
        remote_addr,
    })
}

/// The refusal of a node `view` does not hold. Only a recorded removal
/// says "removed" (the node then stops and forgets itself); a node this
/// view does not know yet (a lagging manager's) is refused plainly, and
/// tries again.
pub fn missing_node(view: &Tables, node_id: &str) -> Status {
    let removed = view
        .cluster()
        .is_some_and(|c| c.removed_nodes.iter().any(|r| r.node_id == node_id));
    if removed {
        shoal_api::node_removed(node_id)
    } else {
        Status::permission_denied(format!("node {node_id} is not known to this manager"))
    }
}

/// The layer that puts [`decide`] in front of every service of the node
/// listener.
#[derive(Clone)]
pub struct AuthorizeLayer {
    replica: Arc<Replica>,
    cluster_id: Arc<str>,
}

impl AuthorizeLayer {
    /// The layer of a manager of cluster `cluster_id` over `replica`.
    pub fn new(replica: Arc<Replica>, cluster_id: &str) -> AuthorizeLayer {
        AuthorizeLayer {
            replica,
            cluster_id: cluster_id.into(),
        }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            replica: Arc::clone(&self.replica),
            cluster_id: Arc::clone(&self.cluster_id),
        }
    }
}

/// See [`AuthorizeLayer`].
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    replica: Arc<Replica>,
    cluster_id: Arc<str>,
}

type Answer<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Authorize<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let decided = {
            let view = self.replica.store().view();
            let peer = request.extensions().get::<PeerCertificates>();
            decide(request.uri().path(), peer, &view, &self.cluster_id)
        };
        match decided {
            Ok(peer) => {
                request.extensions_mut().insert(peer);
                // The clone is the one that was made ready; keep it ready
                // for the next call (tower's usual swap).
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { ready.call(request).await })
            }
            Err(status) => {
                tracing::debug!(path = request.uri().path(), %status, "a call was refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::{Cluster, Node};
    use shoal_ca::{NodeKey, RootCa};
    use std::time::{Duration, SystemTime};

    fn certificate(ca: &RootCa, node_id: &str, role: Role, cluster_id: &str) -> Vec<u8> {
        let key = NodeKey::generate(node_id).unwrap();
        let now = SystemTime::now();
        let pem = ca
            .issue(
                key.request_pem(),
                &NodeIdentity {
                    node_id: node_id.into(),
                    role,
                    cluster_id: cluster_id.into(),
                },
                &[],
                now,
                now + Duration::from_secs(3_600),
            )
            .unwrap();
        shoal_ca::certificate_der(&pem).unwrap()
    }

    fn peer(der: Option<Vec<u8>>) -> PeerCertificates {
        PeerCertificates {
            remote_addr: None,
            chain: Arc::new(der.into_iter().collect()),
        }
    }

    /// A store with cluster c1 (which recorded the removal of node
    /// "gone"), manager m1 and worker w1.
    fn view() -> Tables {
        let create = |target: shoal_api::Object| shoal_api::StoreAction {
            kind: shoal_api::store_action::Kind::Create as i32,
            target: Some(target),
        };
        let mut actions = vec![create(
            Cluster {
                id: "c1".into(),
                removed_nodes: vec![shoal_api::RemovedNode {
                    node_id: "gone".into(),
                    until_unix: i64::MAX,
                }],
                ..Default::default()
            }
            .into(),
        )];
        for (id, role) in [("m1", NodeRole::Manager), ("w1", NodeRole::Worker)] {
            actions.push(create(
                Node {
                    id: id.into(),
                    role: role as i32,
                    ..Default::default()
                }
                .into(),
            ));
        }
        let mut tables = Tables::default();
        let batch = shoal_api::Batch {
            transactions: vec![shoal_api::Transaction {
                leader_term: 0,
                actions,
                timestamp_ms: 0,
            }],
        };
        for applied in tables.apply_batch(1, batch, None) {
            applied.unwrap();
        }
        tables
    }

    #[test]
    fn a_worker_reaches_the_dispatcher_and_renewal_but_not_raft_or_the_control_api() {
        let ca = RootCa::create("c1", SystemTime::now()).unwrap();
        let worker = peer(Some(certificate(&ca, "w1", Role::Worker, "c1")));
        let view = view();
        for path in [
            "/shoal.v1.Dispatcher/Session",
            "/shoal.v1.Dispatcher/Heartbeat",
            "/shoal.v1.Dispatcher/UpdateTaskStatus",
            "/shoal.v1.Ca/RenewNodeCertificate",
            "/shoal.v1.LogBroker/PublishLogs",
        ] {
            let decided = decide(path, Some(&worker), &view, "c1").unwrap();
            assert_eq!(decided.node_id(), Some("w1"), "{path}");
        }
        for path in [
            "/shoal.v1.Raft/AppendEntries",
            "/shoal.v1.Control/ListNodes",
            "/shoal.v1.LogBroker/Subscribe",
        ] {
            let refused = decide(path, Some(&worker), &view, "c1").unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{path}");
            assert!(refused.message().contains("only managers"), "{refused}");
        }
        let manager = peer(Some(certificate(&ca, "m1", Role::Manager, "c1")));
        for path in ["/shoal.v1.Raft/Vote", "/shoal.v1.Control/ListNodes"] {
            assert!(decide(path, Some(&manager), &view, "c1").is_ok(), "{path}");
        }
    }

    #[test]
    fn a_method_not_named_is_refused_to_everyone() {
        let ca = RootCa::create("c1", SystemTime::now()).unwrap();
        let manager = peer(Some(certificate(&ca, "m1", Role::Manager, "c1")));
        for path in [
            "/shoal.v1.LocalNode/Leave",
            "/shoal.v1.Ca/SomethingNew",
            "/grpc.health.v1.Health/Check",
            "/",
        ] {
            let refused = decide(path, Some(&manager), &view(), "c1").unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{path}");
        }
    }

    #[test]
    fn without_a_certificate_only_the_join_call_is_open() {
        let view = view();
        let none = peer(None);
        assert_eq!(
            decide(
                "/shoal.v1.Ca/IssueNodeCertificate",
                Some(&none),
                &view,
                "c1"
            )
            .unwrap(),
            Peer::Joining { remote_addr: None }
        );
        for path in [
            "/shoal.v1.Dispatcher/Session",
            "/shoal.v1.Ca/RenewNodeCertificate",
            "/shoal.v1.Raft/Vote",
        ] {
            let refused = decide(path, Some(&none), &view, "c1").unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{path}");
            let refused = decide(path, None, &view, "c1").unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{path}");
        }
    }

    #[test]
    fn a_removed_node_or_another_cluster_is_refused_whatever_its_certificate() {
        let ca = RootCa::create("c1", SystemTime::now()).unwrap();
        let removed = peer(Some(certificate(&ca, "gone", Role::Worker, "c1")));
        let refused = decide(
            "/shoal.v1.Dispatcher/Session",
            Some(&removed),
            &view(),
            "c1",
        )
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(shoal_api::is_node_removed(&refused), "{refused}");
        // Not in this view and not recorded as removed: refused, but not
        // told it was removed (it may have joined on a manager ahead).
        let unknown = peer(Some(certificate(&ca, "new", Role::Worker, "c1")));
        let refused = decide(
            "/shoal.v1.Dispatcher/Session",
            Some(&unknown),
            &view(),
            "c1",
        )
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(!shoal_api::is_node_removed(&refused), "{refused}");
        assert!(refused.message().contains("not known"), "{refused}");
        let other = peer(Some(certificate(&ca, "w1", Role::Worker, "c2")));
        let refused =
            decide("/shoal.v1.Dispatcher/Session", Some(&other), &view(), "c1").unwrap_err();
        assert!(refused.message().contains("cluster c2"), "{refused}");
    }

    #[test]
    fn a_certificate_past_its_end_is_refused_on_a_connection_that_outlived_it() {
        let ca = RootCa::create("c1", SystemTime::now()).unwrap();
        let key = NodeKey::generate("w1").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(7_200);
        let pem = ca
            .issue(
                key.request_pem(),
                &NodeIdentity {
                    node_id: "w1".into(),
                    role: Role::Worker,
                    cluster_id: "c1".into(),
                },
                &[],
                long_ago,
                long_ago + Duration::from_secs(60),
            )
            .unwrap();
        let expired = peer(Some(shoal_ca::certificate_der(&pem).unwrap()));
        let refused = decide(
            "/shoal.v1.Dispatcher/Session",
            Some(&expired),
            &view(),
            "c1",
        )
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains("expired"), "{refused}");
    }

    #[test]
    fn a_manager_certificate_of_a_node_the_store_calls_a_worker_is_refused_manager_calls() {
        let ca = RootCa::create("c1", SystemTime::now()).unwrap();
        let demoted = peer(Some(certificate(&ca, "w1", Role::Manager, "c1")));
        let refused = decide("/shoal.v1.Raft/Vote", Some(&demoted), &view(), "c1").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_manager_the_store_does_not_know_yet_reaches_replication_and_nothing_else() {
        let ca = RootCa::create("c1", SystemTime::now()).unwrap();
        let new = peer(Some(certificate(&ca, "m9", Role::Manager, "c1")));
        for path in ["/shoal.v1.Raft/AppendEntries", "/shoal.v1.Raft/Vote"] {
            assert!(decide(path, Some(&new), &view(), "c1").is_ok(), "{path}");
            // An empty store (a manager that just joined) checks the
            // cluster its own state dir names.
            let empty = Tables::default();
            assert!(decide(path, Some(&new), &empty, "c1").is_ok(), "{path}");
            let refused = decide(path, Some(&new), &empty, "c2").unwrap_err();
            assert!(refused.message().contains("cluster c1"), "{refused}");
        }
        // A write proposed or a follower's stream: only from a manager
        // the leader knows (it knows every one it took in).
        for path in [
            "/shoal.v1.Control/ListNodes",
            "/shoal.v1.Raft/Forward",
            "/shoal.v1.Raft/Lead",
        ] {
            let refused = decide(path, Some(&new), &view(), "c1").unwrap_err();
            assert!(refused.message().contains("not known"), "{path}: {refused}");
        }
        let worker = peer(Some(certificate(&ca, "m9", Role::Worker, "c1")));
        assert!(decide("/shoal.v1.Raft/Vote", Some(&worker), &view(), "c1").is_err());
        let removed = peer(Some(certificate(&ca, "gone", Role::Manager, "c1")));
        let refused = decide("/shoal.v1.Raft/Vote", Some(&removed), &view(), "c1").unwrap_err();
        assert!(shoal_api::is_node_removed(&refused), "{refused}");
    }
}
