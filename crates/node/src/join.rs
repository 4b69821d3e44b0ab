//! Joining a cluster (DESIGN.md §6): a node with an empty state dir and a
//! join token trades a certificate request for its node certificate.
//!
//! It first shakes hands with the manager trusting nothing, and compares
//! the root certificate the manager shows with the digest in its token; only
//! when they match does it send anything of its own, over a connection that
//! trusts that root alone. Each way this can fail has its own error, since
//! what a user does about each differs.

use std::sync::Arc;
use std::time::Duration;

use shoal_api::ca_client::CaClient;
use shoal_api::IssueNodeCertificateRequest;
use shoal_ca::{CaDigest, JoinToken, NodeKey};
use tokio::net::TcpStream;

use crate::certificates::NodeCertificates;

/// How long the join's connection and handshake may take.
const JOIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the manager may take to answer the join.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("--token: {0}")]
    Token(#[from] shoal_ca::TokenError),
    #[error("cannot reach the manager at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("{addr} did not complete a TLS handshake as a Shoal manager: {message}")]
    NotAManager { addr: String, message: String },
    #[error("the CA at {addr} is not the one the token names (the token expects CA digest {expected}, {addr} shows {shown}): the token is for another cluster, or something is in between")]
    CaMismatch {
        addr: String,
        expected: String,
        shown: String,
    },
    #[error("the manager at {addr} refused to join this node: {message}")]
    Refused { addr: String, message: String },
    #[error("making this node's key failed: {0}")]
    Key(#[from] shoal_ca::CaError),
    #[error("the manager at {addr} answered with a certificate this node cannot use: {message}")]
    BadAnswer { addr: String, message: String },
}

/// What a node gets by joining.
#[derive(Debug)]
pub struct Joined {
    pub node_id: String,
    pub cluster_id: String,
    pub certificates: NodeCertificates,
    pub managers: Vec<String>,
    /// A manager's raft id; `None` for a worker.
    pub raft_id: Option<u64>,
}

/// Joins the cluster of the manager at `addr` with `token`; `advertise` is
/// where other managers reach this node, should the token make it one.
pub async fn join(addr: &str, token: &str, advertise: &str) -> Result<Joined, JoinError> {
    let token: JoinToken = token.parse()?;
    let root_der = shown_root(addr, token.ca_digest()).await?;
    let key = NodeKey::generate("joining")?;
    let config = shoal_ca::tls::client_config(&root_der, None)?;
    let refused = |message: String| JoinError::Refused {
        addr: addr.to_string(),
        message,
    };
    let channel = shoal_api::mtls::connect(addr, config, shoal_ca::tls::MANAGER_NAME)
        .map_err(|e| refused(e.to_string()))?;
    let mut client = CaClient::new(channel);
    let request = IssueNodeCertificateRequest {
        token: token.to_string(),
        csr_pem: key.request_pem().to_string(),
        advertise_addr: advertise.to_string(),
    };
    let answer = tokio::time::timeout(JOIN_CALL_TIMEOUT, client.issue_node_certificate(request))
        .await
        .map_err(|_| refused(format!("no answer within {JOIN_CALL_TIMEOUT:?}")))?
        .map_err(|status| {
            // A failed connection carries the transport's error; a refusal
            // from the manager (even "unavailable, retry") does not.
            if std::error::Error::source(&status).is_some() {
                JoinError::Unreachable {
                    addr: addr.to_string(),
                    message: status.message().to_string(),
                }
            } else {
                refused(status.message().to_string())
            }
        })?
        .into_inner();
    let bad = |message: String| JoinError::BadAnswer {
        addr: addr.to_string(),
        message,
    };
    if CaDigest::of(&shoal_ca::certificate_der(&answer.ca_pem)?) != *token.ca_digest() {
        return Err(bad("its CA is not the token's".into()));
    }
    let certificates = NodeCertificates {
        ca_pem: answer.ca_pem,
        cert_pem: answer.cert_pem,
        key_pem: key.key_pem().to_string(),
    };
    if !shoal_ca::key_matches_certificate(&certificates.key_pem, &certificates.cert_pem) {
        return Err(bad("the certificate is not of this node's key".into()));
    }
    let mut managers = answer.managers;
    if !managers.iter().any(|m| m == addr) {
        // The address that answered works from here, whatever the managers
        // advertise.
        managers.insert(0, addr.to_string());
    }
    let raft_id = match answer.role.as_str() {
        "manager" if answer.raft_id != 0 => Some(answer.raft_id),
        "worker" => None,
        other => {
            return Err(bad(format!(
                "role {other:?} with raft id {}",
                answer.raft_id
            )))
        }
    };
    Ok(Joined {
        node_id: answer.node_id,
        cluster_id: answer.cluster_id,
        certificates,
        managers,
        raft_id,
    })
}

/// The root certificate (DER) the manager at `addr` shows, once it is
/// the one `expected` names. The handshake trusts nothing and the node
/// sends nothing in it but the handshake itself.
async fn shown_root(addr: &str, expected: &CaDigest) -> Result<Vec<u8>, JoinError> {
    let unreachable = |message: String| JoinError::Unreachable {
        addr: addr.to_string(),
        message,
    };
    let not_manager = |message: String| JoinError::NotAManager {
        addr: addr.to_string(),
        message,
    };
    let tcp = tokio::time::timeout(JOIN_CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable(format!("no connection within {JOIN_CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    let (config, shown) = shoal_ca::tls::probe_config()?;
    let name = rustls::pki_types::ServerName::try_from(shoal_ca::tls::MANAGER_NAME)
        .map_err(|e| not_manager(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
    let handshake = tokio::time::timeout(JOIN_CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| not_manager(format!("no handshake within {JOIN_CONNECT_TIMEOUT:?}")))?;
    let chain = shown.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Err(e) = handshake {
        if chain.is_empty() {
            return Err(not_manager(e.to_string()));
        }
    }
    // The root is the last of the chain a manager shows (leaf, root).
    let Some(root) = chain.last().filter(|_| chain.len() >= 2) else {
        return Err(not_manager("it showed no CA certificate".into()));
    };
    let digest = CaDigest::of(root);
    if digest != *expected {
        return Err(JoinError::CaMismatch {
            addr: addr.to_string(),
            expected: expected.to_string(),
            shown: digest.to_string(),
        });
    }
    Ok(root.clone())
}
