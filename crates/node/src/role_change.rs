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
use shoal_ca::NodeKey;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::certificates::NodeCertificates;
use crate::daemon::DaemonConfig;

/// Between two asks of the CA.
const ASK_EVERY: Duration = Duration::from_secs(1);
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
/// listener and waits again.
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
                tokio::time::sleep(ASK_EVERY * 5).await;
                continue;
            }
        };
        let advertise = match crate::daemon::advertised(bound.1, config.advertise_addr.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "promoted to manager, but it has no address to advertise; trying again");
                tokio::time::sleep(ASK_EVERY * 5).await;
                continue;
            }
        };
        tracing::info!(%advertise, "promoted to manager: asking the CA for a manager's certificate");
        while *asked.borrow() == Some(NodeRole::Manager) {
            let addresses = managers.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for addr in &addresses {
                match ask(addr, current, identity, &advertise).await {
                    Ok(role) => {
                        return Promotion {
                            listener: bound,
                            role,
                        }
                    }
                    Err(e) => tracing::debug!(%addr, error = %e, "the promotion's certificate"),
                }
            }
            tokio::select! {
                _ = asked.changed() => {}
                _ = tokio::time::sleep(ASK_EVERY) => {}
            }
        }
    }
}

/// Resolves once this manager is a worker: asked to be one, and a
/// worker's certificate in hand from the CA of another manager (which
/// gives one only once raft has let this manager go). Until then the
/// manager runs on, its raft replica included.
pub(crate) async fn demoted(
    asked: &mut RoleAsked,
    replica: &shoal_raft::Replica,
    own_addr: &str,
    current: &NodeCertificates,
    identity: &Arc<NodeTlsIdentity>,
) -> NewRole {
    loop {
        asked_for(asked, NodeRole::Worker).await;
        while *asked.borrow() == Some(NodeRole::Worker) {
            // The others as this replica last knew them: once let go, it
            // hears of no change any more.
            let others: Vec<String> = shoal_manager::managers::addresses(&replica.store().view())
                .into_iter()
                .filter(|a| a != own_addr)
                .collect();
            for addr in &others {
                match ask(addr, current, identity, "").await {
                    Ok(role) => return role,
                    Err(e) => tracing::debug!(%addr, error = %e, "the demotion's certificate"),
                }
            }
            tokio::select! {
                _ = asked.changed() => {}
                _ = tokio::time::sleep(ASK_EVERY) => {}
            }
        }
    }
}

/// One renewal through the CA at `addr`, with a new key; `advertise`
/// makes a worker whose spec asks it a manager.
async fn ask(
    addr: &str,
    current: &NodeCertificates,
    identity: &Arc<NodeTlsIdentity>,
    advertise: &str,
) -> Result<NewRole, String> {
    let key = NodeKey::generate("role change").map_err(|e| e.to_string())?;
    let ca_der = current.ca_der().map_err(|e| e.to_string())?;
    let config = shoal_ca::tls::renewable_client_config(&ca_der, Arc::clone(identity))
        .map_err(|e| e.to_string())?;
    let channel = shoal_api::mtls::connect(addr, config, shoal_ca::tls::MANAGER_NAME)
        .map_err(|e| e.to_string())?;
    let mut client = CaClient::new(channel);
    let call = client.renew_node_certificate(RenewNodeCertificateRequest {
        csr_pem: key.request_pem().to_string(),
        advertise_addr: advertise.to_string(),
    });
    let answer: NodeCertificateResponse = tokio::time::timeout(ASK_TIMEOUT, call)
        .await
        .map_err(|_| format!("{addr}: no answer within {ASK_TIMEOUT:?}"))?
        .map_err(|s| format!("{addr}: {}", s.message()))?
        .into_inner();
    if answer.ca_pem != current.ca_pem {
        return Err(format!("{addr} answered with another CA"));
    }
    let certificates = NodeCertificates {
        ca_pem: answer.ca_pem,
        cert_pem: answer.cert_pem,
        key_pem: key.key_pem().to_string(),
    };
    if !shoal_ca::key_matches_certificate(&certificates.key_pem, &certificates.cert_pem) {
        return Err(format!("{addr} answered with a certificate of another key"));
    }
    // Asked to be a manager (an address to advertise) or a worker: the
    // answer is the CA's view, which may not have changed yet.
    let is_manager = answer.role == "manager" && answer.raft_id != 0;
    if is_manager == advertise.is_empty() {
        return Err(format!(
            "{addr}: the CA still sees this node as a {}",
            answer.role
        ));
    }
    Ok(NewRole {
        certificates,
        raft_id: if is_manager { answer.raft_id } else { 0 },
        managers: answer.managers,
    })
}
