//! The simulated cluster's certificates, so its agents reach the manager
//! through the daemon's own path: a root CA in the cluster object, a node
//! certificate for every simulated node (its node object created first,
//! the one the CA creates when a node joins), and the manager's listener with mutual
//! TLS and the authorization layer in front of the dispatcher and the log
//! broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_api::{store_action, StoreAction, Transaction};
use shoal_ca::{NodeIdentity, NodeKey, Role, RootCa};
use shoal_manager::authorization::AuthorizeLayer;
use shoal_raft::Replica;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::sim_cluster::SimError;

/// Nodes recorded per transaction.
const NODES_PER_TRANSACTION: usize = 500;
const CERT_LIFETIME: Duration = Duration::from_secs(86_400);

/// Where simulated agents reach the manager over mutual TLS.
#[derive(Clone)]
pub struct TlsDispatcher {
    pub addr: SocketAddr,
    pub client_configs: Arc<Vec<Arc<rustls::ClientConfig>>>,
}

/// The root of the simulated cluster, as the store keeps it.
pub fn new_root(cluster_id: &str) -> Result<(RootCa, shoal_api::RootCa), SimError> {
    let ca = RootCa::create(cluster_id, SystemTime::now()).map_err(tls)?;
    let stored = shoal_api::RootCa {
        cert_pem: ca.cert_pem().to_string(),
        key_pem: ca.key_pem().to_string(),
        digest: ca.digest().to_string(),
    };
    Ok((ca, stored))
}

fn tls(e: impl std::fmt::Display) -> SimError {
    SimError::Bootstrap(format!("certificates: {e}"))
}

fn certificate(
    ca: &RootCa,
    cluster_id: &str,
    node_id: &str,
    role: Role,
) -> Result<(String, String), SimError> {
    let key = NodeKey::generate(node_id).map_err(tls)?;
    let now = SystemTime::now();
    let cert = ca
        .issue(
            key.request_pem(),
            &NodeIdentity {
                node_id: node_id.to_string(),
                role,
                cluster_id: cluster_id.to_string(),
            },
            &[],
            now - Duration::from_secs(3_600),
            now + CERT_LIFETIME,
        )
        .map_err(tls)?;
    Ok((
        format!("{cert}{}", ca.cert_pem()),
        key.key_pem().to_string(),
    ))
}

/// Records `node_ids` as joined workers and issues each its certificate,
/// then serves `services` on a TLS listener on loopback behind the
/// authorization layer until `stop`.
pub async fn start(
    replica: &Arc<Replica>,
    ca: &RootCa,
    cluster_id: &str,
    node_ids: &[String],
    router: tonic::service::Routes,
    stop: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Result<TlsDispatcher, SimError> {
    for chunk in node_ids.chunks(NODES_PER_TRANSACTION) {
        let actions = chunk
            .iter()
            .map(|id| StoreAction {
                kind: store_action::Kind::Create as i32,
                target: Some(
                    shoal_manager::certificate_authority::joined_worker(id, "127.0.0.1").into(),
                ),
            })
            .collect();
        replica
            .propose(Transaction {
                leader_term: 0,
                actions,
                timestamp_ms: 0,
            })
            .await
            .map_err(|e| SimError::Bootstrap(format!("recording the nodes: {e}")))?;
    }
    let ca_der = ca.cert_der().to_vec();
    let mut client_configs = Vec::with_capacity(node_ids.len());
    for id in node_ids {
        let (chain, key) = certificate(ca, cluster_id, id, Role::Worker)?;
        client_configs
            .push(shoal_ca::tls::client_config(&ca_der, Some((&chain, &key))).map_err(tls)?);
    }
    let (chain, key) = certificate(ca, cluster_id, "sim-manager", Role::Manager)?;
    let server =
        shoal_ca::tls::server_config(&ca_der, &chain, &key, shoal_ca::tls::ClientAuth::Required)
            .map_err(tls)?;
    let (incoming, addr) = shoal_api::mtls::listen("127.0.0.1:0", server).await?;
    let layer = AuthorizeLayer::new(Arc::clone(replica), cluster_id);
    let mut stop = stop;
    tasks.spawn(async move {
        let served = tonic::transport::Server::builder()
            .layer(layer)
            .add_routes(router)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the simulated manager's listener stopped");
        }
    });
    Ok(TlsDispatcher {
        addr,
        client_configs: Arc::new(client_configs),
    })
}
