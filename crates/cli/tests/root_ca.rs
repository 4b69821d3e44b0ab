//! A new cluster has a root CA (DESIGN.md §6): its key is in the replicated
//! store and nowhere the control API answers; the manager holds its own
//! node certificate, signed by it, in its state dir, and keeps both across
//! restarts.

mod harness;

use std::os::unix::fs::PermissionsExt;

use harness::Daemon;

#[test]
fn a_new_cluster_has_a_root_ca_whose_key_the_control_api_never_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s1");
    let mut d = Daemon::start(&state);
    let inspect = d.ok(&["cluster", "inspect"]);
    assert!(!inspect.contains("PRIVATE KEY"), "{inspect}");
    let cluster: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let cert = cluster["root_ca"]["cert_pem"].as_str().unwrap().to_string();
    assert!(cert.contains("BEGIN CERTIFICATE"), "{inspect}");
    let digest = cluster["root_ca"]["digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64);

    // The manager's own certificate, signed by that root, its key private.
    let dir = state.join("certificates");
    assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), cert);
    let node_cert = std::fs::read_to_string(dir.join("node.crt")).unwrap();
    let (identity, _) = shoal_ca::NodeIdentity::of_certificate_pem(&node_cert).unwrap();
    let me: serde_json::Value =
        serde_json::from_str::<Vec<serde_json::Value>>(&d.ok(&["node", "inspect", "self"]))
            .unwrap()
            .remove(0);
    assert_eq!(identity.node_id, me["id"].as_str().unwrap());
    assert_eq!(identity.role, shoal_ca::Role::Manager);
    assert_eq!(identity.cluster_id, cluster["id"].as_str().unwrap());
    let mode = std::fs::metadata(dir.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A restart keeps the root and the certificate.
    d.stop();
    let d = Daemon::start(&state);
    let again: serde_json::Value = serde_json::from_str(&d.ok(&["cluster", "inspect"])).unwrap();
    assert_eq!(again["root_ca"]["digest"].as_str().unwrap(), digest);
    assert_eq!(
        std::fs::read_to_string(dir.join("node.crt")).unwrap(),
        node_cert
    );
}
