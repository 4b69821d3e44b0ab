//! The CA end to end: a root, node certificates issued from requests, and
//! mutual TLS handshakes between them over in-memory pipes, including every
//! refusal the security model names.

use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use shoal_ca::tls::{client_config, server_config, ClientAuth, MANAGER_NAME};
use shoal_ca::{CaError, JoinToken, NodeIdentity, NodeKey, Role, RootCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: Duration = Duration::from_secs(86_400);

/// A node's certificate chain and key.
struct Node {
    cert_pem: String,
    key_pem: String,
}

fn node(
    ca: &RootCa,
    id: &str,
    role: Role,
    cluster: &str,
    from: SystemTime,
    to: SystemTime,
) -> Node {
    let key = NodeKey::generate(id).unwrap();
    let identity = NodeIdentity {
        node_id: id.into(),
        role,
        cluster_id: cluster.into(),
    };
    let cert_pem = ca
        .issue(key.request_pem(), &identity, &[], from, to)
        .unwrap();
    Node {
        cert_pem,
        key_pem: key.key_pem().to_string(),
    }
}

fn valid(ca: &RootCa, id: &str, role: Role) -> Node {
    let now = SystemTime::now();
    node(ca, id, role, "c1", now - DAY, now + 90 * DAY)
}

/// A handshake of `client` against a manager of `ca`; the identity the
/// manager read from the client's certificate, or why it refused.
async fn handshake(
    ca: &RootCa,
    manager: &Node,
    client_roots: &RootCa,
    client: Option<&Node>,
    clients: ClientAuth,
) -> Result<Option<NodeIdentity>, String> {
    let server =
        server_config(ca.cert_der(), &manager.cert_pem, &manager.key_pem, clients).unwrap();
    let client = client_config(
        client_roots.cert_der(),
        client.map(|n| (n.cert_pem.as_str(), n.key_pem.as_str())),
    )
    .unwrap();
    let (a, b) = tokio::io::duplex(64 << 10);
    let accept = tokio::spawn(async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(b)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned());
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer.map(|der| NodeIdentity::of_certificate(&der).unwrap().0))
    });
    let connect = async move {
        let name = ServerName::try_from(MANAGER_NAME).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        // TLS 1.3: a refused client certificate shows here, not in connect.
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let (served, connected) = tokio::join!(accept, connect);
    let served = served.unwrap();
    match (served, connected) {
        (Ok(identity), Ok(())) => Ok(identity),
        (Err(e), _) => Err(format!("manager refused: {e}")),
        (_, Err(e)) => Err(format!("client failed: {e}")),
    }
}

#[tokio::test]
async fn a_node_certificate_names_the_node_its_role_and_the_cluster_and_passes_mutual_tls() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let manager = valid(&ca, "m1", Role::Manager);
    let worker = valid(&ca, "w1", Role::Worker);
    let seen = handshake(&ca, &manager, &ca, Some(&worker), ClientAuth::Required)
        .await
        .unwrap();
    assert_eq!(
        seen,
        Some(NodeIdentity {
            node_id: "w1".into(),
            role: Role::Worker,
            cluster_id: "c1".into(),
        })
    );
    // The expiry it reads is the one issued.
    let der = rustls::pki_types::CertificateDer::from_pem_slice(worker.cert_pem.as_bytes());
    use rustls::pki_types::pem::PemObject;
    let (_, not_after) = NodeIdentity::of_certificate(&der.unwrap()).unwrap();
    let expected = SystemTime::now() + 90 * DAY;
    let expected = expected
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (expected - not_after).abs() < 120,
        "{not_after} vs {expected}"
    );
}

#[tokio::test]
async fn a_manager_refuses_a_client_without_a_certificate_unless_the_call_is_the_join() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let manager = valid(&ca, "m1", Role::Manager);
    let refused = handshake(&ca, &manager, &ca, None, ClientAuth::Required).await;
    assert!(refused.is_err(), "{refused:?}");
    let joining = handshake(&ca, &manager, &ca, None, ClientAuth::Optional).await;
    assert_eq!(
        joining,
        Ok(None),
        "the join call takes a client without a certificate"
    );
}

#[tokio::test]
async fn a_certificate_from_another_clusters_ca_is_refused_both_ways() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let other = RootCa::create("c2", SystemTime::now()).unwrap();
    let manager = valid(&ca, "m1", Role::Manager);
    let stranger = valid(&other, "w9", Role::Worker);
    let refused = handshake(&ca, &manager, &other, Some(&stranger), ClientAuth::Required).await;
    assert!(refused.is_err(), "{refused:?}");
    // Even on the join call, a certificate shown must be valid.
    let refused = handshake(&ca, &manager, &ca, Some(&stranger), ClientAuth::Optional).await;
    assert!(refused.is_err(), "{refused:?}");
    // A client that trusts another root does not trust this manager: it
    // ends the handshake with an unknown-CA alert.
    let worker = valid(&ca, "w1", Role::Worker);
    let refused = handshake(&ca, &manager, &other, Some(&worker), ClientAuth::Required).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("UnknownCA")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let manager = valid(&ca, "m1", Role::Manager);
    let now = SystemTime::now();
    let expired = node(&ca, "w1", Role::Worker, "c1", now - 10 * DAY, now - DAY);
    let refused = handshake(&ca, &manager, &ca, Some(&expired), ClientAuth::Required).await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test]
async fn a_root_reloaded_from_its_pem_signs_certificates_that_chain_to_the_same_root() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let reloaded = RootCa::load(ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(reloaded.digest(), ca.digest());
    let manager = valid(&ca, "m1", Role::Manager);
    let worker = valid(&reloaded, "w1", Role::Worker);
    let seen = handshake(&ca, &manager, &ca, Some(&worker), ClientAuth::Required).await;
    assert!(seen.is_ok(), "{seen:?}");
    // And a token made for it names its digest.
    let token = JoinToken::generate(&reloaded.digest()).unwrap();
    assert_eq!(token.ca_digest(), &ca.digest());
}

#[test]
fn requests_and_stored_pem_that_are_not_valid_are_refused_naming_what() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let identity = NodeIdentity {
        node_id: "w1".into(),
        role: Role::Worker,
        cluster_id: "c1".into(),
    };
    let now = SystemTime::now();
    let key = NodeKey::generate("w1").unwrap();
    // A request whose signature does not match its contents: a character
    // of the signature, at the end of the PEM body, changed.
    let mut tampered = key.request_pem().to_string();
    let end = tampered.find("-----END").unwrap();
    let at = tampered[..end].trim_end().len() - 8;
    let replaced = if &tampered[at..at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(at..at + 1, replaced);
    let refused = ca.issue(&tampered, &identity, &[], now, now + DAY);
    assert!(matches!(refused, Err(CaError::Request(_))), "{refused:?}");
    let refused = ca.issue("not pem", &identity, &[], now, now + DAY);
    assert!(matches!(refused, Err(CaError::Request(_))), "{refused:?}");
    let refused = ca.issue(key.request_pem(), &identity, &[], now, now - DAY);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("expire before it begins")),
        "{refused:?}"
    );
    let refused = RootCa::load(ca.cert_pem(), "not a key");
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("CA key")),
        "{:?}",
        refused.err()
    );
    let refused = RootCa::load("not a certificate", ca.key_pem());
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("CA certificate")),
        "{:?}",
        refused.err()
    );
}

#[test]
fn a_request_for_a_key_other_than_p256_is_refused_and_a_ca_key_must_be_its_certificates() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let identity = NodeIdentity {
        node_id: "w1".into(),
        role: Role::Worker,
        cluster_id: "c1".into(),
    };
    let now = SystemTime::now();
    for algorithm in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let request = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let refused = ca.issue(&request, &identity, &[], now, now + DAY);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("must be ECDSA P-256")),
            "{refused:?}"
        );
    }
    // Another root's key beside this root's certificate.
    let other = RootCa::create("c1", SystemTime::now()).unwrap();
    let refused = RootCa::load(ca.cert_pem(), other.key_pem());
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("not the key of the CA certificate")),
        "{:?}",
        refused.err()
    );
}

#[test]
fn a_certificate_without_a_shoal_role_is_not_a_node_certificate() {
    // The root itself: no OU, not a node.
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let refused = NodeIdentity::of_certificate(ca.cert_der());
    assert!(
        matches!(
            refused,
            Err(CaError::NotANodeCertificate { field: "OU", .. })
        ),
        "{refused:?}"
    );
    let refused = NodeIdentity::of_certificate(b"garbage");
    assert!(
        matches!(refused, Err(CaError::Certificate(_))),
        "{refused:?}"
    );
}

#[test]
fn what_a_request_asks_for_beyond_its_key_is_not_what_it_gets() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    // A request that asks to be a CA named shoal-manager.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shoal-manager".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "shoal-manager");
    let request = params.serialize_request(&key).unwrap().pem().unwrap();
    let identity = NodeIdentity {
        node_id: "w1".into(),
        role: Role::Worker,
        cluster_id: "c1".into(),
    };
    let now = SystemTime::now();
    let pem = ca.issue(&request, &identity, &[], now, now + DAY).unwrap();
    let (seen, _) = NodeIdentity::of_certificate_pem(&pem).unwrap();
    assert_eq!(seen, identity);
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(!cert.is_ca(), "a node certificate is never a CA");
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, ["DNSName(shoal-worker)"], "only the role's name");
}
