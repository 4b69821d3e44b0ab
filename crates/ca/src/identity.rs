//! Who a node certificate says its holder is: CN = node id, OU = role, O =
//! cluster id (DESIGN.md §6). Read from the verified peer certificate of a
//! connection, this is the only identity a node has.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::CaError;

/// What a node may do: managers everything, workers only the dispatcher,
/// log publishing and renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    /// The certificate's OU for this role.
    pub fn organizational_unit(self) -> &'static str {
        match self {
            Role::Manager => "shoal-manager",
            Role::Worker => "shoal-worker",
        }
    }

    pub fn from_organizational_unit(ou: &str) -> Option<Role> {
        match ou {
            "shoal-manager" => Some(Role::Manager),
            "shoal-worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

/// A node, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
}

impl NodeIdentity {
    /// As [`NodeIdentity::of_certificate`], from the first certificate of
    /// a PEM text.
    pub fn of_certificate_pem(pem: &str) -> Result<(NodeIdentity, i64), CaError> {
        NodeIdentity::of_certificate(&crate::root_ca::pem_der(pem, "node certificate")?)
    }

    /// The identity a certificate (DER) names, and when it expires (Unix
    /// seconds). The certificate's chain is not checked here: that is the
    /// TLS handshake's work, and this reads the certificate it verified.
    pub fn of_certificate(der: &[u8]) -> Result<(NodeIdentity, i64), CaError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CaError::Certificate(e.to_string()))?;
        let subject = cert.subject();
        let one = |field: &'static str, mut values: Box<dyn Iterator<Item = &_> + '_>| {
            let value: &x509_parser::x509::AttributeTypeAndValue =
                values.next().ok_or(CaError::NotANodeCertificate {
                    field,
                    message: "is missing".into(),
                })?;
            // Exactly one: a certificate naming two nodes, roles or
            // clusters names none.
            if values.next().is_some() {
                return Err(CaError::NotANodeCertificate {
                    field,
                    message: "is given more than once".into(),
                });
            }
            value
                .as_str()
                .map(str::to_string)
                .map_err(|e| CaError::NotANodeCertificate {
                    field,
                    message: format!("is not text: {e}"),
                })
        };
        let node_id = one("CN", Box::new(subject.iter_common_name()))?;
        let ou = one("OU", Box::new(subject.iter_organizational_unit()))?;
        let cluster_id = one("O", Box::new(subject.iter_organization()))?;
        let role = Role::from_organizational_unit(&ou).ok_or(CaError::NotANodeCertificate {
            field: "OU",
            message: format!("{ou:?} is neither shoal-manager nor shoal-worker"),
        })?;
        if node_id.is_empty() || cluster_id.is_empty() {
            return Err(CaError::NotANodeCertificate {
                field: "CN and O",
                message: "must name a node and a cluster".into(),
            });
        }
        let not_after = cert.validity().not_after.timestamp();
        Ok((
            NodeIdentity {
                node_id,
                role,
                cluster_id,
            },
            not_after,
        ))
    }
}

/// When the certificate `pem` starts and stops being valid (Unix
/// seconds).
pub fn certificate_validity(pem: &str) -> Result<(i64, i64), CaError> {
    let der = crate::root_ca::pem_der(pem, "certificate")?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| CaError::Certificate(e.to_string()))?;
    let validity = cert.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}
