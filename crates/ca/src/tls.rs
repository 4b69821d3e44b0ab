//! rustls configurations for mutual TLS between nodes (ring only, TLS 1.3):
//! a server that requires a client certificate from the cluster's root (or,
//! for the one call that carries a join token instead, accepts clients
//! without one), and a client that trusts only the cluster's root and shows
//! its node certificate. A client dials a manager by the name
//! [`MANAGER_NAME`], which every manager certificate carries.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::CaError;

/// The server name clients verify a manager's certificate against.
pub const MANAGER_NAME: &str = "shoal-manager";

/// Whether a server asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client shows a certificate from the cluster's root.
    Required,
    /// A client may come without one (the join call: its token is checked
    /// instead); one that shows a certificate must show a valid one.
    Optional,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, CaError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| CaError::Tls(format!("the CA certificate: {e}")))?;
    Ok(Arc::new(roots))
}

fn chain(chain_pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CaError::Pem {
            what: "node certificate",
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::Pem {
            what: "node certificate",
            message: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

fn key(key_pem: &str) -> Result<PrivateKeyDer<'static>, CaError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CaError::Pem {
        what: "node key",
        message: e.to_string(),
    })
}

/// A server that presents `chain_pem` (its node certificate) and checks
/// clients against the root `ca_der`.
pub fn server_config(
    ca_der: &[u8],
    chain_pem: &str,
    key_pem: &str,
    clients: ClientAuth,
) -> Result<Arc<ServerConfig>, CaError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider());
    let verifier = match clients {
        ClientAuth::Required => builder.build(),
        ClientAuth::Optional => builder.allow_unauthenticated().build(),
    }
    .map_err(|e| CaError::Tls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(chain_pem)?, key(key_pem)?)
        .map_err(|e| CaError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption: a resumed session would skip checking the client's
    // certificate again, and one that expired (or a node removed since)
    // must be refused on its next connection.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client that trusts only the root `ca_der` and shows `identity` (its
/// node certificate and key), or nothing (a node joining with a token).
pub fn client_config(
    ca_der: &[u8],
    identity: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, CaError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_der)?);
    let mut config = match identity {
        Some((chain_pem, key_pem)) => builder
            .with_client_auth_cert(chain(chain_pem)?, key(key_pem)?)
            .map_err(|e| CaError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
