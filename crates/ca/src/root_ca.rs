//! The cluster's root CA: made once by the first manager, its key kept in
//! the replicated store so any manager can sign, its certificate pinned by
//! every node. It signs node certificates from their requests, setting
//! every field that matters itself (the request only proves the key).

use std::net::IpAddr;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::digest::CaDigest;
use crate::error::CaError;
use crate::identity::NodeIdentity;

/// How long a root certificate is valid.
const ROOT_LIFETIME_DAYS: i64 = 20 * 365;
/// The root's validity starts a little before now: clocks of nodes differ.
const CLOCK_SKEW_SECONDS: i64 = 3_600;

/// The root CA: its certificate and the issuer that signs with its key.
pub struct RootCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl RootCa {
    /// A new root for the cluster `cluster_id` (ECDSA P-256).
    pub fn create(cluster_id: &str, now: SystemTime) -> Result<RootCa, CaError> {
        let fail = |e: rcgen::Error| CaError::Generate(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "shoal-root-ca");
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster_id);
        // It signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::from(now);
        params.not_before = now - time::Duration::seconds(CLOCK_SKEW_SECONDS);
        params.not_after = now + time::Duration::days(ROOT_LIFETIME_DAYS);
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key).map_err(fail)?;
        let key_pem = key.serialize_pem();
        Ok(RootCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The root from its certificate and key, as stored.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<RootCa, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Pem {
            what: "CA key",
            message: e.to_string(),
        })?;
        let cert_der = pem_der(cert_pem, "CA certificate")?;
        // A key that is not the certificate's would sign certificates no
        // node verifies: refused here, not at every join.
        if !crate::key_matches_certificate(key_pem, cert_pem) {
            return Err(CaError::Pem {
                what: "CA key",
                message: "it is not the key of the CA certificate".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CaError::Pem {
            what: "CA certificate",
            message: e.to_string(),
        })?;
        Ok(RootCa {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The key, PKCS#8 PEM: for the replicated store only.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// What join tokens carry.
    pub fn digest(&self) -> CaDigest {
        CaDigest::of(&self.cert_der)
    }

    /// The join token for `role` drawn with `nonce`: its secret is a MAC
    /// of the role and nonce under the CA key, so the cluster stores only
    /// the nonce and the secret's hash, and any manager can show the token
    /// again.
    pub fn join_token(&self, role: crate::Role, nonce: &[u8]) -> crate::JoinToken {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key_pem.as_bytes());
        let mut message = b"shoal join token\0".to_vec();
        message.extend_from_slice(role.organizational_unit().as_bytes());
        message.push(0);
        message.extend_from_slice(nonce);
        let tag = ring::hmac::sign(&key, &message);
        crate::JoinToken::from_parts(
            self.digest(),
            &tag.as_ref()[..crate::join_token::SECRET_BYTES],
        )
    }

    /// Signs a node certificate for `identity` from its request (PEM),
    /// valid from `not_before` to `not_after`, for both ends of mutual TLS.
    /// Its names are its role's OU (what clients dial a manager by) and
    /// `addresses`; never the node id, which a worker could otherwise pick
    /// to be `shoal-manager`. Returns the certificate, PEM.
    pub fn issue(
        &self,
        request_pem: &str,
        identity: &NodeIdentity,
        addresses: &[IpAddr],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, CaError> {
        if not_after <= not_before {
            return Err(CaError::Request(
                "the certificate would expire before it begins".into(),
            ));
        }
        // Checks the request's signature: it proves the key.
        let mut request = CertificateSigningRequestParams::from_pem(request_pem)
            .map_err(|e| CaError::Request(e.to_string()))?;
        // One kind of key in the cluster, the one every node makes: a
        // weak or unusual key is refused rather than certified. The key's
        // own curve is read (the request's signature algorithm alone would
        // let a P-384 key signing with SHA-256 through).
        if rcgen::PublicKeyData::algorithm(&request.public_key) != &rcgen::PKCS_ECDSA_P256_SHA256
            || !is_p256_key(request_pem)
        {
            return Err(CaError::Request("the key must be ECDSA P-256".into()));
        }
        let params = &mut request.params;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, identity.node_id.as_str());
        name.push(
            DnType::OrganizationalUnitName,
            identity.role.organizational_unit(),
        );
        name.push(DnType::OrganizationName, identity.cluster_id.as_str());
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let dns = |name: &str| {
            name.try_into()
                .map(SanType::DnsName)
                .map_err(|e: rcgen::Error| CaError::Request(format!("name {name:?}: {e}")))
        };
        let mut names = vec![dns(identity.role.organizational_unit())?];
        names.extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
        params.subject_alt_names = names;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        params.serial_number = Some(serial()?);
        let cert = request
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        Ok(cert.pem())
    }
}

/// A random serial (positive, 16 bytes): renewing with the same key must
/// not repeat one.
fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes: [u8; 16] = crate::os_random()?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Whether the request in `request_pem` carries an ECDSA key on P-256:
/// its key's algorithm is id-ecPublicKey with the named curve prime256v1,
/// and the key is an uncompressed point of that curve's size.
fn is_p256_key(request_pem: &str) -> bool {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    const PRIME256V1: &str = "1.2.840.10045.3.1.7";
    let Ok(der) =
        rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(request_pem.as_bytes())
    else {
        return false;
    };
    let Ok((_, request)) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
    else {
        return false;
    };
    let key = &request.certification_request_info.subject_pki;
    let curve = key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    key.algorithm.algorithm.to_id_string() == EC_PUBLIC_KEY
        && curve.as_deref() == Some(PRIME256V1)
        && key.subject_public_key.data.len() == 65
        && key.subject_public_key.data.first() == Some(&0x04)
}

/// The DER of the one certificate in `pem`.
pub(crate) fn pem_der(pem: &str, what: &'static str) -> Result<Vec<u8>, CaError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| CaError::Pem {
            what,
            message: e.to_string(),
        })
}
