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
    renewable_server_config(ca_der, NodeTlsIdentity::new(chain_pem, key_pem)?, clients)
}

/// A client that trusts only the root `ca_der` and shows `identity` (its
/// node certificate and key), or nothing (a node joining with a token).
pub fn client_config(
    ca_der: &[u8],
    identity: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, CaError> {
    if let Some((chain_pem, key_pem)) = identity {
        return renewable_client_config(ca_der, NodeTlsIdentity::new(chain_pem, key_pem)?);
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_der)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A node's certificate and key as TLS shows them, replaceable while
/// connections use it: a renewed certificate is put in here, and every
/// handshake after that shows it (the listener and every channel keep
/// their configurations).
#[derive(Debug)]
pub struct NodeTlsIdentity {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl NodeTlsIdentity {
    /// The identity `chain_pem` (leaf first) with its key `key_pem`.
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Arc<NodeTlsIdentity>, CaError> {
        Ok(Arc::new(NodeTlsIdentity {
            current: std::sync::RwLock::new(certified(chain_pem, key_pem)?),
        }))
    }

    /// Shows `chain_pem` and `key_pem` from the next handshake on.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), CaError> {
        let next = certified(chain_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    fn get(&self) -> Arc<rustls::sign::CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<Arc<rustls::sign::CertifiedKey>, CaError> {
    rustls::sign::CertifiedKey::from_der(chain(chain_pem)?, key(key_pem)?, &provider())
        .map(Arc::new)
        .map_err(|e| CaError::Tls(e.to_string()))
}

impl rustls::server::ResolvesServerCert for NodeTlsIdentity {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for NodeTlsIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server showing `identity` (which may be renewed under it) and
/// checking clients against the root `ca_der`.
pub fn renewable_server_config(
    ca_der: &[u8],
    identity: Arc<NodeTlsIdentity>,
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
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption: a resumed session would skip checking the client's
    // certificate again, and one that expired (or a node removed since)
    // must be refused on its next connection.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client trusting only the root `ca_der` and showing `identity`.
pub fn renewable_client_config(
    ca_der: &[u8],
    identity: Arc<NodeTlsIdentity>,
) -> Result<Arc<ClientConfig>, CaError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_der)?)
        .with_client_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // A resumed session would show the old certificate's identity.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The chain a server showed in a [`probe_config`] handshake (DER, leaf
/// first), once the handshake got that far.
pub type ShownChain = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// A client for the one handshake a joining node makes before it trusts
/// anything: it accepts whatever chain the server shows (still checking
/// that the server holds the leaf's key) and records it, so the node can
/// compare the root in it with its token's digest before it sends a byte
/// of its own. Nothing but the handshake may use this configuration.
pub fn probe_config() -> Result<(Arc<ClientConfig>, ShownChain), CaError> {
    let shown = ShownChain::default();
    let verifier = Arc::new(RecordChain {
        shown: Arc::clone(&shown),
        algorithms: provider().signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), shown))
}

#[derive(Debug)]
struct RecordChain {
    shown: ShownChain,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for RecordChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.to_vec()];
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        *self.shown.lock().unwrap_or_else(|e| e.into_inner()) = chain;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
