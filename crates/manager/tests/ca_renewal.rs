//! The CA's renewal as a role changes (`node promote`, `node demote`): a
//! node asking whether its role changed gets a certificate only when it
//! did, a worker asked to be a manager is recorded as one with a raft id,
//! and a manager is told its new address is recorded.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_api::ca_server::Ca;
use shoal_api::{
    store_action, Cluster, NodeRole, RenewNodeCertificateRequest, StoreAction, Transaction,
};
use shoal_ca::{NodeIdentity, NodeKey, Role, RootCa};
use shoal_manager::authorization::Peer;
use shoal_manager::certificate_authority::{joined_manager, joined_worker, CertificateAuthority};
use shoal_raft::{Replica, ReplicaConfig};
use tonic::Request;

const WITHIN: Duration = Duration::from_secs(60);

struct Setup {
    replica: Arc<Replica>,
    ca: CertificateAuthority,
    _tmp: tempfile::TempDir,
}

async fn create(replica: &Replica, target: impl Into<shoal_api::Object>) {
    replica
        .propose(Transaction {
            leader_term: 0,
            actions: vec![StoreAction {
                kind: store_action::Kind::Create as i32,
                target: Some(target.into()),
            }],
            timestamp_ms: 0,
        })
        .await
        .unwrap();
}

/// A cluster with its CA, a worker `w1` whose spec asks it to be a
/// manager, and a manager `m1` at 10.0.0.1:4242.
async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let config = ReplicaConfig::new(tmp.path().join("raft"), 1, "127.0.0.1:0".into());
    let replica = Arc::new(Replica::open(config, true).await.unwrap());
    replica.wait_leader(WITHIN).await.unwrap();
    let root = RootCa::create("c1", SystemTime::now()).unwrap();
    create(
        &replica,
        Cluster {
            id: "c1".into(),
            root_ca: Some(shoal_api::RootCa {
                cert_pem: root.cert_pem().into(),
                key_pem: root.key_pem().into(),
                digest: root.digest().to_string(),
            }),
            ..Default::default()
        },
    )
    .await;
    let mut worker = joined_worker("w1", "10.0.0.2");
    if let Some(spec) = worker.spec.as_mut() {
        spec.desired_role = NodeRole::Manager as i32;
    }
    create(&replica, worker).await;
    create(
        &replica,
        joined_manager("m1", "10.0.0.1", "10.0.0.1:4242", 7),
    )
    .await;
    let ca = CertificateAuthority::new(Arc::clone(&replica), rand::SeedableRng::seed_from_u64(1));
    Setup {
        replica,
        ca,
        _tmp: tmp,
    }
}

/// A renewal from `node` showing a certificate of `shown`.
async fn renew(
    ca: &CertificateAuthority,
    node: &str,
    shown: Role,
    current_role: &str,
    advertise_addr: &str,
) -> Result<shoal_api::NodeCertificateResponse, tonic::Status> {
    let key = NodeKey::generate("test").unwrap();
    let mut request = Request::new(RenewNodeCertificateRequest {
        csr_pem: key.request_pem().to_string(),
        advertise_addr: advertise_addr.into(),
        current_role: current_role.into(),
    });
    request.extensions_mut().insert(Peer::Node {
        node_id: node.into(),
        role: shown,
        remote_addr: None,
    });
    ca.renew_node_certificate(request)
        .await
        .map(|r| r.into_inner())
}

fn role_of(answer: &shoal_api::NodeCertificateResponse) -> Role {
    NodeIdentity::of_certificate_pem(&answer.cert_pem)
        .unwrap()
        .0
        .role
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_whether_a_role_changed_signs_nothing_while_it_did_not() {
    let s = setup().await;
    let refused = renew(&s.ca, "m1", Role::Manager, "manager", "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(refused.message().contains("manager still"), "{refused}");
    // A worker asking without an address to listen at is not promoted.
    let refused = renew(&s.ca, "w1", Role::Worker, "worker", "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    // A plain renewal (no current role) always signs, the store's role.
    let renewed = renew(&s.ca, "w1", Role::Worker, "", "").await.unwrap();
    assert_eq!(role_of(&renewed), Role::Worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_asked_to_be_a_manager_is_recorded_as_one_with_a_raft_id_of_its_own() {
    let s = setup().await;
    let answer = renew(&s.ca, "w1", Role::Worker, "worker", "10.0.0.2:4242")
        .await
        .unwrap();
    assert_eq!(role_of(&answer), Role::Manager);
    assert!(
        answer.raft_id != 0 && answer.raft_id != 7,
        "{}",
        answer.raft_id
    );
    let node = s.replica.store().view().node("w1").cloned().unwrap();
    assert_eq!(node.role, NodeRole::Manager as i32);
    let status = node.manager_status.unwrap();
    assert_eq!(
        (status.raft_id, status.addr.as_str()),
        (answer.raft_id, "10.0.0.2:4242")
    );
    // Asked again (its answer lost): a manager already, the same raft id.
    let again = renew(&s.ca, "w1", Role::Worker, "worker", "10.0.0.2:4242")
        .await
        .unwrap();
    assert_eq!(again.raft_id, answer.raft_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_let_go_gets_a_workers_certificate_and_is_never_promoted_by_its_ask() {
    let s = setup().await;
    // Let go from raft and recorded a worker, while its spec asks for a
    // manager again: it becomes a worker first (promoted from there).
    let mut node = s.replica.store().view().node("m1").cloned().unwrap();
    node.role = NodeRole::Worker as i32;
    node.manager_status = None;
    s.replica
        .propose(Transaction {
            leader_term: 0,
            actions: vec![StoreAction {
                kind: store_action::Kind::Update as i32,
                target: Some(node.into()),
            }],
            timestamp_ms: 0,
        })
        .await
        .unwrap();
    let answer = renew(&s.ca, "m1", Role::Manager, "manager", "10.0.0.1:4242")
        .await
        .unwrap();
    assert_eq!(role_of(&answer), Role::Worker);
    assert_eq!(answer.raft_id, 0);
    let node = s.replica.store().view().node("m1").cloned().unwrap();
    assert_eq!(node.role, NodeRole::Worker as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_back_on_another_address_is_recorded_there() {
    let s = setup().await;
    let refused = renew(&s.ca, "m1", Role::Manager, "manager", "10.0.0.9:5000")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    let node = s.replica.store().view().node("m1").cloned().unwrap();
    assert_eq!(node.manager_status.unwrap().addr, "10.0.0.9:5000");
    let refused = renew(&s.ca, "m1", Role::Manager, "manager", "0.0.0.0:5000")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("advertise_addr"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_claim_to_run_as_a_manager() {
    let s = setup().await;
    let refused = renew(&s.ca, "w1", Role::Worker, "manager", "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("current_role"), "{refused}");
    let refused = renew(&s.ca, "w1", Role::Worker, "captain", "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
}
