//! Why a CA operation failed, in words that name what was wrong.

use crate::join_token::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("making a key or certificate failed: {0}")]
    Generate(String),
    #[error("the {what} is not valid PEM: {message}")]
    Pem { what: &'static str, message: String },
    #[error("the certificate request is refused: {0}")]
    Request(String),
    #[error("the certificate cannot be read: {0}")]
    Certificate(String),
    #[error("not a Shoal node certificate: {field} {message}")]
    NotANodeCertificate {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("TLS configuration: {0}")]
    Tls(String),
}
