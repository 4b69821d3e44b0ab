//! Join tokens: `SWMTKN-1-<digest of the root CA certificate>-<secret>`, one
//! per role. The digest lets a joining node check the CA a manager presents
//! before it sends anything; the secret decides the role. A cluster stores
//! only the secret's hash ([`SecretHash`]), compared in constant time.

use std::fmt;
use std::str::FromStr;

use crate::digest::CaDigest;
use crate::error::CaError;

pub const TOKEN_PREFIX: &str = "SWMTKN-1-";
/// Random bytes of a secret (written as 32 hex characters).
pub(crate) const SECRET_BYTES: usize = 16;

/// Why a text is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a Shoal join token: it must start with {TOKEN_PREFIX}")]
    Prefix,
    #[error("join token: the CA digest must be 64 lowercase hex characters")]
    Digest,
    #[error("join token: the secret must be {} lowercase hex characters", SECRET_BYTES * 2)]
    Secret,
}

/// A join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_digest: CaDigest,
    secret: String,
}

impl JoinToken {
    /// A new token for the CA whose digest is `ca_digest`, its secret from
    /// the operating system's random source.
    pub fn generate(ca_digest: &CaDigest) -> Result<JoinToken, CaError> {
        let secret: [u8; SECRET_BYTES] = crate::os_random()?;
        Ok(JoinToken {
            ca_digest: ca_digest.clone(),
            secret: crate::hex(&secret),
        })
    }

    /// The digest of the root CA certificate the token trusts.
    /// A token of `ca_digest` whose secret is `secret` (hex-encoded).
    pub(crate) fn from_parts(ca_digest: CaDigest, secret: &[u8]) -> JoinToken {
        JoinToken {
            ca_digest,
            secret: crate::hex(secret),
        }
    }

    pub fn ca_digest(&self) -> &CaDigest {
        &self.ca_digest
    }

    /// The hash of the secret: what the cluster stores.
    pub fn secret_hash(&self) -> SecretHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.secret.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        SecretHash(hash)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}-{}", self.ca_digest, self.secret)
    }
}

/// Never prints the secret.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({TOKEN_PREFIX}{}-…)", self.ca_digest)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<JoinToken, TokenError> {
        let rest = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Prefix)?;
        let (digest, secret) = rest.split_once('-').ok_or(TokenError::Digest)?;
        let ca_digest = CaDigest::parse(digest).ok_or(TokenError::Digest)?;
        let hex = secret.len() == SECRET_BYTES * 2
            && secret
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex {
            return Err(TokenError::Secret);
        }
        Ok(JoinToken {
            ca_digest,
            secret: secret.to_string(),
        })
    }
}

/// The SHA-256 of a token's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Whether `token`'s secret is the one hashed here, in time that does
    /// not depend on where they differ.
    pub fn matches(&self, token: &JoinToken) -> bool {
        let other = token.secret_hash();
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> CaDigest {
        CaDigest::of(b"a certificate")
    }

    #[test]
    fn a_token_reads_back_as_itself_and_its_hash_matches_it_alone() {
        let token = JoinToken::generate(&digest()).unwrap();
        let text = token.to_string();
        assert!(text.starts_with("SWMTKN-1-"), "{text}");
        assert_eq!(text.len(), TOKEN_PREFIX.len() + 64 + 1 + 32);
        let read: JoinToken = text.parse().unwrap();
        assert_eq!(read, token);
        assert!(token.secret_hash().matches(&read));
        let rotated = JoinToken::generate(&digest()).unwrap();
        assert_ne!(rotated, token, "two tokens share no secret");
        assert!(!token.secret_hash().matches(&rotated));
        assert!(
            !format!("{token:?}").contains(&text[text.len() - 32..]),
            "Debug hides the secret"
        );
    }

    #[test]
    fn what_is_not_a_token_is_refused_naming_the_part() {
        let good = JoinToken::generate(&digest()).unwrap().to_string();
        let (head, secret) = good.rsplit_once('-').unwrap();
        let cases = [
            ("SWMTKN-2-abc-def".to_string(), TokenError::Prefix),
            ("hello".to_string(), TokenError::Prefix),
            (format!("{TOKEN_PREFIX}xyz-{secret}"), TokenError::Digest),
            (
                format!("{TOKEN_PREFIX}{}", &head[TOKEN_PREFIX.len()..]),
                TokenError::Digest,
            ),
            (format!("{head}-{}", &secret[1..]), TokenError::Secret),
            (
                format!("{head}-{}", secret.to_uppercase()),
                TokenError::Secret,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<JoinToken>().unwrap_err(), expected, "{text}");
        }
    }
}
