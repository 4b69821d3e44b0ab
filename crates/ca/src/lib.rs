//! The cluster's certificate authority (DESIGN.md §6), as a library the
//! daemon's join and TLS paths are built on:
//!
//! - [`RootCa`]: the root the first manager makes at cluster creation
//!   (ECDSA P-256), reloaded from its PEM by any manager, and the one thing
//!   that signs node certificates, from a node's certificate request;
//! - [`NodeIdentity`]: what a node certificate says (CN = node id, OU = role,
//!   O = cluster id), read back from a peer's certificate: a node's identity
//!   always comes from there, never from a request field;
//! - [`NodeKey`]: a node's own key and its certificate request;
//! - [`JoinToken`]: `SWMTKN-1-<digest of the root certificate>-<secret>`, and
//!   the hash of its secret that is all a cluster stores ([`SecretHash`]);
//! - [`tls`]: rustls configurations for mutual TLS between nodes (ring only).
//!
//! Keys, secrets and serial numbers come from the operating system's random
//! source, never from a run's seed: the daemon logs its seed.

mod digest;
mod error;
mod identity;
mod join_token;
mod node_key;
mod root_ca;
pub mod tls;

pub use digest::CaDigest;
pub use error::CaError;
pub use identity::{certificate_validity, NodeIdentity, Role};
pub use join_token::{JoinToken, SecretHash, TokenError, TOKEN_PREFIX};
pub use node_key::{key_matches_certificate, NodeKey};
pub use root_ca::RootCa;

/// Bytes from the operating system's random source.
fn os_random<const N: usize>() -> Result<[u8; N], CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Generate("the system's random source failed".into()))?;
    Ok(bytes)
}

/// The DER of the first certificate in `pem`.
pub fn certificate_der(pem: &str) -> Result<Vec<u8>, CaError> {
    root_ca::pem_der(pem, "certificate")
}

/// A fresh nonce for a join token (16 bytes from the OS).
pub fn new_token_nonce() -> Result<Vec<u8>, CaError> {
    os_random::<16>().map(|b| b.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
