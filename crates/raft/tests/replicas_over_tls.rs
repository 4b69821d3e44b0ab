//! Raft between managers goes over mutual TLS as a daemon runs it: each
//! replica serves raft on a TLS listener that requires a certificate of the
//! cluster's root, and dials its peers with its own manager certificate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use shoal_api::{store_action, Annotations, Network, NetworkSpec, StoreAction, Transaction};
use shoal_ca::{NodeIdentity, NodeKey, Role, RootCa};
use shoal_raft::{OnCreate, RaftService, Replica, ReplicaConfig};

const WAIT: Duration = Duration::from_secs(60);

fn create(id: &str) -> Transaction {
    Transaction {
        leader_term: 0,
        actions: vec![StoreAction {
            kind: store_action::Kind::Create as i32,
            target: Some(
                Network {
                    id: id.into(),
                    spec: Some(NetworkSpec {
                        annotations: Some(Annotations {
                            name: id.into(),
                            labels: Default::default(),
                        }),
                        driver: "overlay".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ),
        }],
        timestamp_ms: 0,
    }
}

/// A manager certificate of `ca` for node `id`: (chain, key).
fn manager_certificate(ca: &RootCa, id: &str) -> (String, String) {
    let key = NodeKey::generate(id).unwrap();
    let now = SystemTime::now();
    let cert = ca
        .issue(
            key.request_pem(),
            &NodeIdentity {
                node_id: id.into(),
                role: Role::Manager,
                cluster_id: "c1".into(),
            },
            &[],
            now - Duration::from_secs(60),
            now + Duration::from_secs(3_600),
        )
        .unwrap();
    (
        format!("{cert}{}", ca.cert_pem()),
        key.key_pem().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_replicate_over_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let mut listeners = BTreeMap::new();
    let mut identities = BTreeMap::new();
    for id in 1..=3u64 {
        let (chain, key) = manager_certificate(&ca, &format!("m{id}"));
        let server = shoal_ca::tls::server_config(
            ca.cert_der(),
            &chain,
            &key,
            shoal_ca::tls::ClientAuth::Required,
        )
        .unwrap();
        let (incoming, addr) = shoal_api::mtls::listen("127.0.0.1:0", server)
            .await
            .unwrap();
        listeners.insert(id, (incoming, addr.to_string()));
        identities.insert(id, (chain, key));
    }
    let addrs: BTreeMap<u64, String> = listeners
        .iter()
        .map(|(id, (_, a))| (*id, a.clone()))
        .collect();
    let mut replicas = BTreeMap::new();
    let mut stops = Vec::new();
    let mut slots = BTreeMap::new();
    for (id, (incoming, addr)) in listeners {
        let mut config = ReplicaConfig::new(tmp.path().join(format!("r{id}")), id, addr);
        config.on_create = if id == 1 {
            OnCreate::Bootstrap(addrs.clone())
        } else {
            OnCreate::Join
        };
        let (peers, tls) = shoal_raft::Network::tls();
        config.peers = peers;
        let replica = Arc::new(Replica::open(config, true).await.unwrap());
        slots.insert(id, tls);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftService::new(&replica))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        stops.push(stop);
        replicas.insert(id, replica);
    }
    // As a daemon does: each certificate comes after its replica opened
    // (it is made from the store), and the clients raft made meanwhile
    // (replica 1 has been asking for votes) use it from then on.
    for (id, tls) in slots {
        let (chain, key) = &identities[&id];
        *tls.write().unwrap() =
            Some(shoal_ca::tls::client_config(ca.cert_der(), Some((chain, key))).unwrap());
    }
    let deadline = Instant::now() + WAIT;
    let leader = loop {
        if let Some((id, _)) = replicas
            .iter()
            .find(|(_, r)| r.raft().metrics().borrow().state == openraft::ServerState::Leader)
        {
            break *id;
        }
        assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for i in 0..10 {
        replicas[&leader]
            .propose(create(&format!("n{i}")))
            .await
            .unwrap();
    }
    for replica in replicas.values() {
        while replica.store().view().network("n9").is_none() {
            assert!(Instant::now() < deadline, "a replica never got the entries");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for stop in stops {
        let _ = stop.send(());
    }
    for replica in replicas.values() {
        replica.shutdown().await;
    }
}
