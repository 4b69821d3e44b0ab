//! Three replicas in one process over real gRPC on loopback: entries reach
//! every replica, and when the leader stops the other two elect a new one
//! that keeps every acknowledged write (Raft §5.2 election, §5.4 safety).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use shoal_api::{store_action, Annotations, Network, NetworkSpec, StoreAction, Transaction};
use shoal_raft::{OnCreate, RaftService, Replica, ReplicaConfig};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(60);

struct Member {
    replica: Arc<Replica>,
    stop_server: Option<oneshot::Sender<()>>,
}

fn create(id: &str) -> Transaction {
    let n = Network {
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
    };
    Transaction {
        leader_term: 0,
        actions: vec![StoreAction {
            kind: store_action::Kind::Create as i32,
            target: Some(n.into()),
        }],
        timestamp_ms: 0,
    }
}

async fn leader(members: &BTreeMap<u64, Member>) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        for (id, m) in members {
            if m.replica.raft().metrics().borrow().state == ServerState::Leader {
                return *id;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn converged(members: &BTreeMap<u64, Member>, ids: &[&str]) {
    let deadline = Instant::now() + WAIT;
    for m in members.values() {
        while ids
            .iter()
            .any(|id| m.replica.store().view().network(id).is_none())
        {
            assert!(
                Instant::now() < deadline,
                "a replica never received the entries"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Three listeners on free loopback ports, bound first so every replica
/// knows every address: each one's stream and address, and the addresses.
async fn bind_three() -> (
    BTreeMap<u64, (tokio_stream::wrappers::TcpListenerStream, String)>,
    BTreeMap<u64, String>,
) {
    let mut listeners = BTreeMap::new();
    for id in 1..=3u64 {
        let (incoming, addr) = shoal_api::transport::listen_tcp("127.0.0.1:0")
            .await
            .unwrap();
        listeners.insert(id, (incoming, addr.to_string()));
    }
    let addrs = listeners
        .iter()
        .map(|(id, (_, a))| (*id, a.clone()))
        .collect();
    (listeners, addrs)
}

/// Opens replica `id` of a group of `addrs`; replica 1 bootstraps it.
async fn open_member(
    dir: &std::path::Path,
    id: u64,
    addr: String,
    addrs: &BTreeMap<u64, String>,
) -> Arc<Replica> {
    let mut config = ReplicaConfig::new(dir.join(format!("r{id}")), id, addr);
    config.on_create = if id == 1 {
        OnCreate::Bootstrap(addrs.clone())
    } else {
        OnCreate::Join
    };
    Arc::new(Replica::open(config, true).await.unwrap())
}

/// Opens and serves a replica on each of `listeners`; replica 1
/// bootstraps a group of `voters`.
async fn start_members(
    dir: &std::path::Path,
    listeners: BTreeMap<u64, (tokio_stream::wrappers::TcpListenerStream, String)>,
    voters: &BTreeMap<u64, String>,
) -> BTreeMap<u64, Member> {
    let mut members = BTreeMap::new();
    for (id, (incoming, addr)) in listeners {
        let replica = open_member(dir, id, addr, voters).await;
        let stop = serve(&replica, incoming);
        members.insert(
            id,
            Member {
                replica,
                stop_server: Some(stop),
            },
        );
    }
    members
}

/// Serves a replica's raft RPCs until the returned sender is used.
fn serve(
    replica: &Replica,
    incoming: tokio_stream::wrappers::TcpListenerStream,
) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    let service = RaftService::new(replica);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_replicate_and_a_new_leader_keeps_every_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    // Phase 1: bind three listeners first, so every replica knows every address.
    let (listeners, addrs) = bind_three().await;
    let mut members = start_members(tmp.path(), listeners, &addrs).await;

    // Phase 2: writes through the leader reach all three stores.
    let first = leader(&members).await;
    for i in 0..20 {
        members[&first]
            .replica
            .propose(create(&format!("a{i}")))
            .await
            .unwrap();
    }
    let a: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    let a_ids: Vec<&str> = a.iter().map(String::as_str).collect();
    converged(&members, &a_ids).await;
    // A write through a follower goes to the leader, and is answered once
    // the follower's own store has it.
    let follower = *members.keys().find(|id| **id != first).unwrap();
    let index = members[&follower]
        .replica
        .propose(create("forwarded"))
        .await
        .unwrap();
    let view = members[&follower].replica.store().view();
    let stored = view
        .network("forwarded")
        .expect("answered before applied here");
    assert_eq!(stored.meta.as_ref().unwrap().version, index);
    // A refused write is refused through the follower too, with the reason.
    let refused = members[&follower]
        .replica
        .propose(create("forwarded"))
        .await;
    assert!(
        matches!(refused, Err(shoal_raft::ProposeError::Txn(_))),
        "{refused:?}"
    );

    // Phase 3: the leader stops; the other two elect a new leader that has
    // every acknowledged write and takes new ones.
    let mut old = members.remove(&first).unwrap();
    let _ = old.stop_server.take().unwrap().send(());
    old.replica.shutdown().await;
    let second = leader(&members).await;
    assert_ne!(second, first);
    for id in &a_ids {
        assert!(
            members[&second]
                .replica
                .store()
                .view()
                .network(id)
                .is_some(),
            "{id} lost in failover"
        );
    }
    members[&second]
        .replica
        .propose(create("b0"))
        .await
        .unwrap();
    converged(&members, &["b0"]).await;
    for m in members.values_mut() {
        let _ = m.stop_server.take().unwrap().send(());
        m.replica.shutdown().await;
    }
}

/// A network whose label makes the transaction close to the largest entry.
fn large(id: &str) -> Transaction {
    let mut txn = create(id);
    if let Some(shoal_api::object::Kind::Network(n)) =
        txn.actions[0].target.as_mut().and_then(|o| o.kind.as_mut())
    {
        let labels = &mut n
            .spec
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .labels;
        labels.insert(
            "blob".into(),
            "x".repeat(shoal_raft::MAX_ENTRY_BYTES - (64 << 10)),
        );
    }
    txn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_over_maximum_size_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let (listeners, addrs) = bind_three().await;
    // Phase 1: replicas 1 and 2 serve and make a quorum; replica 3 is open
    // but unreachable, so it falls behind.
    let mut members = BTreeMap::new();
    let mut late = None;
    for (id, (incoming, addr)) in listeners {
        let replica = open_member(tmp.path(), id, addr, &addrs).await;
        let stop_server = if id == 3 {
            late = Some(incoming);
            None
        } else {
            Some(serve(&replica, incoming))
        };
        members.insert(
            id,
            Member {
                replica,
                stop_server,
            },
        );
    }
    let first = leader(&members).await;
    // Phase 2: entries of nearly the largest size, together many times
    // what one message may carry.
    let ids: Vec<String> = (0..8).map(|i| format!("big{i}")).collect();
    for id in &ids {
        members[&first].replica.propose(large(id)).await.unwrap();
    }
    assert!(members[&3].replica.store().view().network("big0").is_none());
    // Phase 3: replica 3 comes back and must receive every one of them.
    let stop = serve(&members[&3].replica, late.take().unwrap());
    members.get_mut(&3).unwrap().stop_server = Some(stop);
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    converged(&members, &id_refs).await;
    for m in members.values_mut() {
        let _ = m.stop_server.take().unwrap().send(());
        m.replica.shutdown().await;
    }
}

/// Waits until `check` holds, polling.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_as_learners_become_voters_take_over_when_handed_leadership_and_leave() {
    let tmp = tempfile::tempdir().unwrap();
    let (listeners, addrs) = bind_three().await;
    let alone = BTreeMap::from([(1, addrs[&1].clone())]);
    let mut members = start_members(tmp.path(), listeners, &alone).await;
    assert_eq!(leader(&members).await, 1);
    let one = Arc::clone(&members[&1].replica);
    for i in 0..50 {
        one.propose(create(&format!("before{i}"))).await.unwrap();
    }
    for id in [2u64, 3] {
        one.add_learner(id, &addrs[&id]).await.unwrap();
        let target = one.last_log_index();
        until("the learner catches up", || {
            one.matched().get(&id).copied().unwrap_or(0) >= target
        })
        .await;
        assert!(one.members().learners.contains(&id));
        let mut voters = one.members().voters;
        voters.insert(id);
        one.set_voters(voters).await.unwrap();
    }
    let members_now = one.members();
    assert_eq!(members_now.voters, [1, 2, 3].into());
    assert!(members_now.learners.is_empty() && !members_now.changing);
    let ids: Vec<String> = (0..50).map(|i| format!("before{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    converged(&members, &ids).await;
    // Every follower holds its stream to the leader: both count reachable.
    until("both followers reachable", || {
        one.reachable() == [1, 2, 3].into()
    })
    .await;

    // Handed leadership, a follower takes it; the old leader follows it.
    assert!(one.hand_over(3));
    until("replica 3 leads", || members[&3].replica.is_leader()).await;
    until("replica 1 follows 3", || {
        one.leader().map(|(id, _)| id) == Some(3)
    })
    .await;
    let three = Arc::clone(&members[&3].replica);
    // Replica 1 is removed: the other two go on.
    three.set_voters([2, 3].into()).await.unwrap();
    assert_eq!(three.members().voters, [2, 3].into());
    assert!(!three.members().addrs.contains_key(&1));
    three.propose(create("after")).await.unwrap();
    let mut old = members.remove(&1).unwrap();
    let _ = old.stop_server.take().unwrap().send(());
    old.replica.shutdown().await;
    converged(&members, &["after"]).await;
    for m in members.values_mut() {
        let _ = m.stop_server.take().unwrap().send(());
        m.replica.shutdown().await;
    }
}
