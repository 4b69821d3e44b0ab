//! A node's role changing in place (`node promote`, `node demote`): the
//! worker or manager it runs as stops, and it goes on as the other with the
//! same identity, state dir and tasks (the next agent adopts them, as after
//! a restart).
//!
//! Owns nothing in the store. The role the node's spec asks for comes with
//! each session message. The change itself is the managers': the CA records
//! a promoted worker as a manager (with a raft id) when it renews its
//! certificate, and the leader's membership loop lets a demoted manager go
//! from raft (handing leadership over first) before it records it as a
//! worker. The node only waits, running as it is, until the CA hands it a
//! certificate of its new role.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::ca_client::CaClient;
use shoal_api::{NodeCertificateResponse, NodeRole, RenewNodeCertificateRequest};
use shoal_ca::tls::NodeTlsIdentity;
use shoal_ca::{NodeKey, Role};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::certificates::NodeCertificates;
use crate::daemon::DaemonConfig;

/// Between two asks of the CA while a role change is asked.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// The longest pause between asks for a promotion.
const ASK_MAX: Duration = Duration::from_secs(5);
/// Between two asks of a manager whose spec asks for no change: it may
/// have been let go from raft, or have come back on another address.
const ASK_IDLE: Duration = Duration::from_secs(10);
/// One ask of one manager's CA, at most.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The role the node's spec asks for, as its agent last heard.
pub(crate) type RoleAsked = watch::Receiver<Option<NodeRole>>;

/// A channel for the agent's connector to tell the asked role on, and its
/// receiver.
pub(crate) fn role_channel() -> (impl Fn(NodeRole) + Send + Sync + 'static, RoleAsked) {
    let (tx, rx) = watch::channel(None);
    let tell = move |role: NodeRole| {
        tx.send_if_modified(|was| {
            let changed = *was != Some(role);
            *was = Some(role);
            changed
        });
    };
    (tell, rx)
}

/// Waits until `asked` says `role`.
async fn asked_for(asked: &mut RoleAsked, role: NodeRole) {
    if asked.wait_for(|r| *r == Some(role)).await.is_err() {
        // The agent is gone: nobody tells the role any more.
        std::future::pending::<()>().await;
    }
}

/// A worker's certificate of a new role, and what came with it.
pub(crate) struct NewRole {
    pub certificates: NodeCertificates,
    /// The raft id of a manager; 0 for a worker.
    pub raft_id: u64,
    pub managers: Vec<String>,
}

/// What a promoted worker goes on with.
pub(crate) struct Promotion {
    pub listener: (TcpListener, SocketAddr),
    pub role: NewRole,
}

/// Resolves once this worker is a manager: asked to be one, its node
/// listener bound (where other managers will reach it), and a manager's
/// certificate in hand from the CA of one of `managers`. Until then the
/// worker runs on; a promotion taken back before the CA made it drops the
/// listener and waits again. Dropped (a shutdown), it asks nothing more.
pub(crate) async fn promoted(
    asked: &mut RoleAsked,
    config: &DaemonConfig,
    managers: &crate::local_node::KnownManagers,
    current: &NodeCertificates,
    identity: &Arc<NodeTlsIdentity>,
) -> Promotion {
    loop {
        asked_for(asked, NodeRole::Manager).await;
        let bound = match crate::daemon::bind(&config.listen_addr).await {
            Ok(bound) => bound,
            Err(e) => {
                tracing::error!(error = %e, "promoted to manager, but the node listener cannot be bound; trying again");
                tokio::time::sleep(ASK_MAX).await;
                continue;
            }
        };
        let advertise = match crate::daemon::advertised(bound.1, config.advertise_addr.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "promoted to manager, but it has no address to advertise; trying again");
                tokio::time::sleep(ASK_MAX).await;
                continue;
            }
        };
        tracing::info!(%advertise, "promoted to manager: asking the CA for a manager's certificate");
        let mut pause = ASK_EVERY;
        let mut failures = 0u32;
        while *asked.borrow() == Some(NodeRole::Manager) {
            let addresses = managers.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for addr in &addresses {
                match ask(addr, current, identity, &advertise, Role::Worker).await {
                    Ok(role) => {
                        return Promotion {
                            listener: bound,
                            role,
                        }
                    }
                    Err(e) => note_failure(&mut failures, addr, &e, "a manager's certificate"),
                }
            }
            tokio::select! {
                // Nobody tells the role any more (the agent ended): the
                // pause still holds.
                changed = asked.changed() => if changed.is_err() {
                    tokio::time::sleep(pause).await;
                },
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(ASK_MAX);
        }
    }
}

/// Resolves once the CA says this manager is a worker now: raft let it go
/// after `node demote`, or a promotion was taken back. Until then the
/// manager runs on, its raft replica included, and asks the CAs of the
/// other managers (those `known` names and those its store names) every
/// second while its spec asks for a worker, every [`ASK_IDLE`] otherwise
/// (an unchanged role costs the CA no signature). Each ask also says where
/// this manager listens, so one that came back on another address is
/// dialled there (the membership loop follows the store).
pub(crate) async fn let_go(
    mut asked: RoleAsked,
    replica: Arc<shoal_raft::Replica>,
    own_addr: String,
    known: impl Fn() -> Vec<String>,
    current: NodeCertificates,
    identity: Arc<NodeTlsIdentity>,
) -> NewRole {
    let mut failures = 0u32;
    loop {
        let mut others = known();
        others.extend(shoal_manager::managers::addresses(&replica.store().view()));
        others.sort();
        others.dedup();
        others.retain(|a| *a != own_addr);
        for addr in &others {
            match ask(addr, &current, &identity, &own_addr, Role::Manager).await {
                Ok(role) => return role,
                // The usual answer: a manager still.
                Err(Asked::Unchanged) => failures = 0,
                Err(Asked::Failed(e)) => note_failure(&mut failures, addr, &e, "the role"),
            }
        }
        let pause = if *asked.borrow() == Some(NodeRole::Worker) {
            ASK_EVERY
        } else {
            ASK_IDLE
        };
        tokio::select! {
            changed = asked.changed() => if changed.is_err() {
                tokio::time::sleep(pause).await;
            },
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Logs a failed ask quietly, and loudly every tenth time in a row.
fn note_failure(failures: &mut u32, addr: &str, error: &impl std::fmt::Display, what: &str) {
    *failures += 1;
    if failures.is_multiple_of(10) {
        tracing::warn!(%addr, %error, failures = *failures, "asking a CA for {what} keeps failing");
    } else {
        tracing::debug!(%addr, %error, "asking a CA for {what}");
    }
}

/// Why an ask gave no new role.
#[derive(Debug)]
pub(crate) enum Asked {
    /// The CA says the node's role is the one it runs as.
    Unchanged,
    Failed(String),
}

impl std::fmt::Display for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Asked::Unchanged => f.write_str("the role is unchanged"),
            Asked::Failed(e) => f.write_str(e),
        }
    }
}

/// One ask of the CA at `addr`, as a node running as `runs_as`: a
/// certificate of its new role, with a new key, when the role changed.
/// `advertise` is where it listens (a worker asking to be promoted, a
/// manager saying where it is).
async fn ask(
    addr: &str,
    current: &NodeCertificates,
    identity: &Arc<NodeTlsIdentity>,
    advertise: &str,
    runs_as: Role,
) -> Result<NewRole, Asked> {
    let failed = |e: String| Asked::Failed(e);
    let key = NodeKey::generate("role change").map_err(|e| failed(e.to_string()))?;
    let ca_der = current.ca_der().map_err(|e| failed(e.to_string()))?;
    let config = shoal_ca::tls::renewable_client_config(&ca_der, Arc::clone(identity))
        .map_err(|e| failed(e.to_string()))?;
    let channel = shoal_api::mtls::connect(addr, config, shoal_ca::tls::MANAGER_NAME)
        .map_err(|e| failed(e.to_string()))?;
    let mut client = CaClient::new(channel);
    let call = client.renew_node_certificate(RenewNodeCertificateRequest {
        csr_pem: key.request_pem().to_string(),
        advertise_addr: advertise.to_string(),
        current_role: shoal_manager::certificate_authority::role_name(runs_as).to_string(),
    });
    let answer: NodeCertificateResponse = match tokio::time::timeout(ASK_TIMEOUT, call).await {
        Err(_) => return Err(failed(format!("{addr}: no answer within {ASK_TIMEOUT:?}"))),
        Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => return Err(Asked::Unchanged),
        Ok(Err(s)) => return Err(failed(format!("{addr}: {}", s.message()))),
        Ok(Ok(answer)) => answer.into_inner(),
    };
    if answer.ca_pem != current.ca_pem {
        return Err(failed(format!("{addr} answered with another CA")));
    }
    let certificates = NodeCertificates {
        ca_pem: answer.ca_pem,
        cert_pem: answer.cert_pem,
        key_pem: key.key_pem().to_string(),
    };
    if !shoal_ca::key_matches_certificate(&certificates.key_pem, &certificates.cert_pem) {
        return Err(failed(format!(
            "{addr} answered with a certificate of another key"
        )));
    }
    let is_manager = answer.role == "manager" && answer.raft_id != 0;
    if is_manager == (runs_as == Role::Manager) {
        return Err(Asked::Unchanged);
    }
    Ok(NewRole {
        certificates,
        raft_id: if is_manager { answer.raft_id } else { 0 },
        managers: answer.managers,
    })
}
