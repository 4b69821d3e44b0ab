//! A manager renews its own certificate: it holds the CA, so it signs a
//! new one itself at the point [`crate::renewal::renew_in`] draws, and
//! shows it from the next handshake on (connections keep theirs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use rand::rngs::StdRng;
use shoal_ca::tls::NodeTlsIdentity;
use shoal_raft::Replica;
use tokio::sync::watch;

use crate::certificates::NodeCertificates;
use crate::renewal::{renew_in, RETRY_MAX, RETRY_MIN};

/// Renews the manager `node_id`'s certificate in `dir` until `stop`.
pub async fn run(
    replica: Arc<Replica>,
    dir: PathBuf,
    node_id: String,
    identity: Arc<NodeTlsIdentity>,
    mut rng: StdRng,
    mut stop: watch::Receiver<bool>,
) {
    let mut retry = RETRY_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = NodeCertificates::read(&dir).map_or(std::time::Duration::ZERO, |c| {
            renew_in(&c.cert_pem, SystemTime::now(), &mut rng)
        });
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let view = replica.store().view();
        let renewed = view
            .cluster()
            .ok_or(crate::certificates::CertificatesError::NoRootCa)
            .and_then(|cluster| {
                NodeCertificates::issue(&dir, cluster, &node_id, shoal_ca::Role::Manager)
            })
            .and_then(|c| Ok(identity.replace(&c.chain_pem(), &c.key_pem)?));
        match renewed {
            Ok(()) => {
                tracing::info!("this manager's certificate was renewed");
                retry = RETRY_MIN;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing this manager's certificate failed; retrying");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}
