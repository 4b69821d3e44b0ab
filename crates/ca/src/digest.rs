//! The digest of a root CA certificate: what a join token carries, so a
//! joining node can check the CA a manager presents before it sends
//! anything.

use std::fmt;

/// SHA-256 of the certificate's DER, in lowercase hex (64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CaDigest(String);

impl CaDigest {
    pub fn of(cert_der: &[u8]) -> CaDigest {
        CaDigest(crate::hex(
            ring::digest::digest(&ring::digest::SHA256, cert_der).as_ref(),
        ))
    }

    /// A digest as written in a token: 64 lowercase hex characters.
    pub fn parse(text: &str) -> Option<CaDigest> {
        let hex = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        hex.then(|| CaDigest(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
