//! A manager renews its own certificate: it holds the CA, so it signs a
//! new one itself at the point [`crate::renewal::renew_in`] draws, and
//! shows it from the next handshake on (connections keep theirs).

use std::path::PathBuf;
use std::sync::Arc;

use rand::rngs::StdRng;
use shoal_ca::tls::NodeTlsIdentity;
use shoal_raft::Replica;
use tokio::sync::watch;

use crate::certificates::NodeCertificates;

/// Renews the manager `node_id`'s certificate in `dir` until `stop`.
pub async fn run(
    replica: Arc<Replica>,
    dir: PathBuf,
    node_id: String,
    identity: Arc<NodeTlsIdentity>,
    rng: StdRng,
    stop: watch::Receiver<bool>,
) {
    let files = dir.clone();
    crate::renewal::keep_renewed(&files, "this manager", rng, stop, |_| {
        let renewed = replica
            .store()
            .view()
            .cluster()
            .ok_or(crate::certificates::CertificatesError::NoRootCa)
            .and_then(|cluster| {
                NodeCertificates::issue(&dir, cluster, &node_id, shoal_ca::Role::Manager)
            })
            .and_then(|c| Ok(identity.replace(&c.chain_pem(), &c.key_pem)?))
            .map_err(|e| e.to_string());
        std::future::ready(renewed)
    })
    .await
}
