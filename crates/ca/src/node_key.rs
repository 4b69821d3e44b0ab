//! A node's own key, made on the node and never sent, and the certificate
//! request it sends with its join token (or, renewing, over mutual TLS).

use crate::error::CaError;

/// A fresh ECDSA P-256 key and a certificate request signed with it.
pub struct NodeKey {
    key_pem: String,
    request_pem: String,
}

impl NodeKey {
    /// A new key, and a request for `node_id` (the CA sets every field
    /// that matters itself; the request proves the key).
    pub fn generate(node_id: &str) -> Result<NodeKey, CaError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| CaError::Generate(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_id);
        let request_pem = params
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .map_err(|e| CaError::Generate(e.to_string()))?;
        Ok(NodeKey {
            key_pem: key.serialize_pem(),
            request_pem,
        })
    }

    /// The private key, PKCS#8 PEM: written mode 0600, never sent.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The certificate request, PEM.
    pub fn request_pem(&self) -> &str {
        &self.request_pem
    }
}

/// Whether `key_pem` is the key of the certificate `cert_pem`: a key and a
/// certificate written at different times (a crash between the two) must
/// not be used as a pair.
pub fn key_matches_certificate(key_pem: &str, cert_pem: &str) -> bool {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok(key) = rcgen::KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok(der) = crate::root_ca::pem_der(cert_pem, "node certificate") else {
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return false;
    };
    cert.public_key().raw == key.subject_public_key_info().as_slice()
}
