//! The dispatcher over its real gRPC socket, with a replica on disk: node
//! registration, heartbeats and their TTL, status reports that only move
//! forward and only for the node's own tasks, and a monitor that expires each
//! node at its own TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_api::dispatcher_client::DispatcherClient;
use shoal_api::dispatcher_server::DispatcherServer;
use shoal_api::{
    node_status, store_action, Cluster, ClusterSpec, DispatcherConfig, HeartbeatRequest,
    NodeDescription, SessionMessage, SessionRequest, StoreAction, Task, TaskState, TaskStatus,
    TaskStatusUpdate, Transaction, UpdateTaskStatusRequest,
};
use shoal_manager::Dispatcher;
use shoal_raft::{Replica, ReplicaConfig};
use tonic::transport::Channel;

const WITHIN: Duration = Duration::from_secs(60);

struct Setup {
    replica: Arc<Replica>,
    client: DispatcherClient<Channel>,
    _stop: tokio::sync::watch::Sender<bool>,
    _tmp: tempfile::TempDir,
}

async fn setup(heartbeat_period_ms: u64) -> Setup {
    setup_with_nodes(heartbeat_period_ms, Vec::new()).await
}

/// A dispatcher that starts over a store already recording `nodes` (as a
/// restarted manager's does).
async fn setup_with_nodes(heartbeat_period_ms: u64, nodes: Vec<shoal_api::Node>) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let config = ReplicaConfig::new(tmp.path().join("raft"), 1, "127.0.0.1:0".into());
    let replica = Arc::new(Replica::open(config, true).await.unwrap());
    replica.wait_leader(WITHIN).await.unwrap();
    let cluster = Cluster {
        id: "c".into(),
        spec: Some(ClusterSpec {
            dispatcher: Some(DispatcherConfig {
                heartbeat_period_ms,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    propose(&replica, store_action::Kind::Create, cluster).await;
    for node in nodes {
        propose(&replica, store_action::Kind::Create, node).await;
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let dispatcher = Dispatcher::new(
        shoal_raft::LeaderTerm::current(Arc::clone(&replica)).expect("the test's replica leads"),
        stopped.clone(),
        rand::SeedableRng::seed_from_u64(7),
        Default::default(),
    );
    tokio::spawn(dispatcher.monitor());
    tokio::spawn(dispatcher.fan_out());
    let socket = tmp.path().join("dispatcher.sock");
    let incoming = shoal_api::transport::listen_unix(&socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DispatcherServer::new(dispatcher))
            .serve_with_incoming(incoming),
    );
    let client = DispatcherClient::new(shoal_api::transport::connect_unix(&socket));
    Setup {
        replica,
        client,
        _stop: stop,
        _tmp: tmp,
    }
}

async fn propose(
    replica: &Replica,
    kind: store_action::Kind,
    object: impl Into<shoal_api::Object>,
) {
    let action = StoreAction {
        kind: kind as i32,
        target: Some(object.into()),
    };
    replica
        .propose(Transaction {
            leader_term: 0,
            actions: vec![action],
            timestamp_ms: 0,
        })
        .await
        .unwrap();
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !done() {
        assert!(Instant::now() < deadline, "not within {WITHIN:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A task ASSIGNED to `node_id`, to run.
fn assigned(id: impl Into<String>, node_id: impl Into<String>) -> Task {
    Task {
        id: id.into(),
        node_id: node_id.into(),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: TaskState::Assigned as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Opens a session for `node_id`; returns its stream and first message.
async fn open_session(
    client: &mut DispatcherClient<Channel>,
    node_id: &str,
) -> (tonic::Streaming<SessionMessage>, SessionMessage) {
    let request = SessionRequest {
        node_id: node_id.into(),
        description: Some(NodeDescription::default()),
    };
    let mut stream = client.session(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    (stream, first)
}

/// Opens a heartbeat stream: where to send beats, and their answers.
async fn open_heartbeats(
    client: &mut DispatcherClient<Channel>,
) -> (
    tokio::sync::mpsc::Sender<HeartbeatRequest>,
    tonic::Streaming<shoal_api::HeartbeatResponse>,
) {
    let (beats, outbound) = tokio::sync::mpsc::channel(1);
    let answers = client
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    (beats, answers)
}

fn node_state(replica: &Replica, id: &str) -> Option<i32> {
    replica
        .store()
        .view()
        .node(id)
        .and_then(|n| n.status.as_ref().map(|s| s.state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_registers_the_node_and_a_node_that_stops_heartbeating_is_down() {
    // Period 500 ms, TTL 1.5 s: a heartbeat every 50 ms leaves a wide margin.
    let mut s = setup(500).await;
    let request = SessionRequest {
        node_id: String::new(),
        description: Some(NodeDescription {
            hostname: "worker-1".into(),
            ..Default::default()
        }),
    };
    let mut stream = s.client.session(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.full, "the first message carries the full set");
    assert_eq!(first.heartbeat_period_ms, 500);
    let node = s
        .replica
        .store()
        .view()
        .node(&first.node_id)
        .cloned()
        .unwrap();
    assert_eq!(node.description.unwrap().hostname, "worker-1");
    assert_eq!(
        node_state(&s.replica, &first.node_id),
        Some(node_status::State::Ready as i32)
    );

    // Heartbeats, all on one stream, keep the session for several TTLs;
    // each is answered with the period.
    let beat = HeartbeatRequest {
        node_id: first.node_id.clone(),
        session_id: first.session_id.clone(),
    };
    let (beats, mut answers) = open_heartbeats(&mut s.client).await;
    let until = Instant::now() + Duration::from_millis(2_000);
    while Instant::now() < until {
        beats.send(beat.clone()).await.unwrap();
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!(answer.period_ms, 500);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        node_state(&s.replica, &first.node_id),
        Some(node_status::State::Ready as i32)
    );

    // Silence: the node goes DOWN, and its old session is refused, on the
    // stream it kept open, which then ends, and on a new one.
    let replica = Arc::clone(&s.replica);
    let id = first.node_id.clone();
    wait_until("node down", || {
        node_state(&replica, &id) == Some(node_status::State::Down as i32)
    })
    .await;
    beats.send(beat.clone()).await.unwrap();
    let refused = answers
        .message()
        .await
        .expect_err("an expired session is refused");
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let (beats, mut answers) = open_heartbeats(&mut s.client).await;
    beats.send(beat).await.unwrap();
    let refused = answers
        .message()
        .await
        .expect_err("an expired session is refused on a new stream too");
    assert_eq!(refused.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_only_move_a_task_forward_and_only_for_the_nodes_own_tasks() {
    let mut s = setup(5_000).await;
    let (mut stream, first) = open_session(&mut s.client, "n1").await;
    for (id, node) in [("mine", "n1"), ("theirs", "n2")] {
        let task = assigned(id, node);
        propose(&s.replica, store_action::Kind::Create, task).await;
    }
    // The assignment stream delivers the node's own task, not the other one.
    let next = stream.message().await.unwrap().unwrap();
    let ids: Vec<&str> = next.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["mine"]);

    let report = |task: &str, state: TaskState| UpdateTaskStatusRequest {
        node_id: "n1".into(),
        session_id: first.session_id.clone(),
        updates: vec![TaskStatusUpdate {
            task_id: task.into(),
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
        }],
    };
    let state_of = |replica: &Replica, id: &str| {
        replica
            .store()
            .view()
            .task(id)
            .unwrap()
            .status
            .unwrap()
            .state
    };
    s.client
        .update_task_status(report("mine", TaskState::Running))
        .await
        .unwrap();
    assert_eq!(state_of(&s.replica, "mine"), TaskState::Running as i32);
    // Backwards: dropped.
    s.client
        .update_task_status(report("mine", TaskState::Starting))
        .await
        .unwrap();
    assert_eq!(state_of(&s.replica, "mine"), TaskState::Running as i32);
    // Another node's task: dropped.
    s.client
        .update_task_status(report("theirs", TaskState::Running))
        .await
        .unwrap();
    assert_eq!(state_of(&s.replica, "theirs"), TaskState::Assigned as i32);
    // A report without a live session: refused.
    let mut stale = report("mine", TaskState::Complete);
    stale.session_id = "nope".into();
    assert_eq!(
        s.client.update_task_status(stale).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    assert_eq!(state_of(&s.replica, "mine"), TaskState::Running as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_applies_every_report_it_carries_even_beyond_one_transaction() {
    let mut s = setup(600_000).await;
    let (_stream, first) = open_session(&mut s.client, "n1").await;
    // More tasks than one transaction of the dispatcher holds.
    let count = shoal_manager::MAX_ACTIONS_PER_PASS * 2 + 500;
    let ids: Vec<String> = (0..count).map(|i| format!("t{i:05}")).collect();
    for chunk in ids.chunks(500) {
        let actions = chunk
            .iter()
            .map(|id| StoreAction {
                kind: store_action::Kind::Create as i32,
                target: Some(assigned(id.clone(), "n1").into()),
            })
            .collect();
        s.replica
            .propose(Transaction {
                leader_term: 0,
                actions,
                timestamp_ms: 0,
            })
            .await
            .unwrap();
    }
    // Each task reported twice, in order, the other node's task in between.
    let status = |state: TaskState| {
        Some(TaskStatus {
            state: state as i32,
            ..Default::default()
        })
    };
    let mut updates = Vec::new();
    for id in &ids {
        updates.push(TaskStatusUpdate {
            task_id: id.clone(),
            status: status(TaskState::Accepted),
        });
    }
    updates.push(TaskStatusUpdate {
        task_id: "not-here".into(),
        status: status(TaskState::Running),
    });
    for id in &ids {
        updates.push(TaskStatusUpdate {
            task_id: id.clone(),
            status: status(TaskState::Running),
        });
    }
    s.client
        .update_task_status(UpdateTaskStatusRequest {
            node_id: "n1".into(),
            session_id: first.session_id.clone(),
            updates,
        })
        .await
        .unwrap();
    let view = s.replica.store().view();
    for id in &ids {
        let task = view.task_without_spec(id).unwrap();
        assert_eq!(task.observed(), TaskState::Running, "{id}");
    }
    assert!(view.task_without_spec("not-here").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hears_at_once_of_assignments_and_desired_state_changes_but_not_of_its_own_reports(
) {
    // A heartbeat period far longer than the test: nothing arrives through
    // the periodic look at every task, only through the store watcher.
    let mut s = setup(600_000).await;
    let (mut stream, first) = open_session(&mut s.client, "n1").await;
    assert!(first.tasks.is_empty());
    let mut task = assigned("t1", "n1");
    propose(&s.replica, store_action::Kind::Create, task.clone()).await;
    let assigned = tokio::time::timeout(WITHIN, stream.message())
        .await
        .expect("the assignment arrives without waiting for a heartbeat period")
        .unwrap()
        .unwrap();
    assert_eq!(assigned.tasks.len(), 1);
    assert_eq!(assigned.tasks[0].desired_state, TaskState::Running as i32);

    // The agent's own report changes the task but is not sent back ...
    s.client
        .update_task_status(UpdateTaskStatusRequest {
            node_id: "n1".into(),
            session_id: first.session_id.clone(),
            updates: vec![TaskStatusUpdate {
                task_id: "t1".into(),
                status: Some(TaskStatus {
                    state: TaskState::Running as i32,
                    ..Default::default()
                }),
            }],
        })
        .await
        .unwrap();
    // ... so the next message is the desired state change that follows it.
    task = s.replica.store().view().task("t1").unwrap();
    task.desired_state = TaskState::Shutdown as i32;
    propose(&s.replica, store_action::Kind::Update, task.clone()).await;
    let stop = tokio::time::timeout(WITHIN, stream.message())
        .await
        .expect("the desired state change arrives at once")
        .unwrap()
        .unwrap();
    assert_eq!(stop.tasks.len(), 1);
    assert_eq!(stop.tasks[0].desired_state, TaskState::Shutdown as i32);
    assert_eq!(
        stop.tasks[0].status.as_ref().unwrap().state,
        TaskState::Running as i32
    );

    // Removed from the store: the session says so.
    task = s.replica.store().view().task("t1").unwrap();
    propose(&s.replica, store_action::Kind::Remove, task).await;
    let removed = tokio::time::timeout(WITHIN, stream.message())
        .await
        .expect("the removal arrives at once")
        .unwrap()
        .unwrap();
    assert_eq!(removed.removed, ["t1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_removed_once_down_or_with_force_and_never_the_managers_own() {
    use shoal_manager::{ApiError, ControlApi, ControlConfig};
    let mut s = setup(500).await;
    let api = ControlApi::new(
        Arc::clone(&s.replica),
        ControlConfig {
            node_id: "manager".into(),
            logs: Default::default(),
            leader_dial: None,
        },
        rand::SeedableRng::seed_from_u64(7),
    );
    let (_stream, _) = open_session(&mut s.client, "w1").await;
    let remove = |force| shoal_api::RemoveNodeRequest {
        reference: "w1".into(),
        force,
    };

    let refused = api
        .remove_node(remove(false))
        .await
        .expect_err("a ready node needs --force");
    assert!(matches!(refused, ApiError::Refused(_)), "{refused:?}");
    assert!(refused.to_string().contains("is not down"), "{refused}");

    // No heartbeats: it goes down, and then it can go.
    let replica = Arc::clone(&s.replica);
    wait_until("w1 down", || {
        node_state(&replica, "w1") == Some(node_status::State::Down as i32)
    })
    .await;
    api.remove_node(remove(false)).await.unwrap();
    assert!(s.replica.store().view().node("w1").is_none());

    propose(
        &s.replica,
        store_action::Kind::Create,
        shoal_api::Node {
            id: "manager".into(),
            ..Default::default()
        },
    )
    .await;
    let own = shoal_api::RemoveNodeRequest {
        reference: "manager".into(),
        force: true,
    };
    let refused = api
        .remove_node(own)
        .await
        .expect_err("the manager's own node stays");
    assert!(
        refused.to_string().contains("cannot be removed"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_expires_at_its_own_ttl_while_another_nodes_down_write_waits_to_commit() {
    // Period 100 ms, TTL 300 ms.
    let mut s = setup(100).await;
    let (_a_stream, _a) = open_session(&mut s.client, "a").await;
    let (_b_stream, b) = open_session(&mut s.client, "b").await;
    let b_beat = HeartbeatRequest {
        node_id: "b".into(),
        session_id: b.session_id.clone(),
    };
    let (b_beats, mut b_answers) = open_heartbeats(&mut s.client).await;

    // Phase 1: while a thread holds commits back, no write can be applied. "a" is
    // silent: it expires and its DOWN write waits; "b" keeps beating for
    // several TTLs past that.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (taken, view_taken) = tokio::sync::oneshot::channel();
    let replica = Arc::clone(&s.replica);
    let holder = std::thread::spawn(move || {
        let _held = replica.store().hold_commits();
        let _ = taken.send(());
        let _ = released.recv();
    });
    view_taken.await.unwrap();
    let until = Instant::now() + Duration::from_millis(2_000);
    while Instant::now() < until {
        b_beats.send(b_beat.clone()).await.unwrap();
        b_answers.message().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Phase 2: "b" falls silent. Ten TTLs later its session must be over,
    // although "a"'s write still cannot commit: the monitor does not wait
    // for one node's write before it looks at the others.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    b_beats.send(b_beat).await.unwrap();
    let refused = b_answers
        .message()
        .await
        .expect_err("b expired while a's DOWN write was waiting");
    assert_eq!(refused.code(), tonic::Code::NotFound);

    // Phase 3: writes apply again; both nodes end DOWN.
    release.send(()).unwrap();
    holder.join().unwrap();
    let replica = Arc::clone(&s.replica);
    wait_until("both nodes down", || {
        ["a", "b"]
            .iter()
            .all(|id| node_state(&replica, id) == Some(node_status::State::Down as i32))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_recorded_ready_that_never_opens_a_session_is_marked_down_after_a_grace() {
    let recorded = |id: &str| shoal_api::Node {
        id: id.into(),
        status: Some(shoal_api::NodeStatus {
            state: node_status::State::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    // Period 1 s: TTL 3 s, start-up grace 6 s, for "back" to open its
    // session on a loaded machine.
    let mut s = setup_with_nodes(1_000, vec![recorded("ghost"), recorded("back")]).await;
    // "back" reconnects within its grace and keeps beating; "ghost" never
    // comes back.
    let (_stream, back) = open_session(&mut s.client, "back").await;
    let beat = HeartbeatRequest {
        node_id: "back".into(),
        session_id: back.session_id.clone(),
    };
    let (beats, mut answers) = open_heartbeats(&mut s.client).await;
    let replica = Arc::clone(&s.replica);
    let deadline = Instant::now() + WITHIN;
    while node_state(&replica, "ghost") != Some(node_status::State::Down as i32) {
        assert!(
            Instant::now() < deadline,
            "a node that never opened a session stayed READY"
        );
        beats.send(beat.clone()).await.unwrap();
        answers.message().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        node_state(&replica, "back"),
        Some(node_status::State::Ready as i32),
        "a node that came back within its grace was marked down"
    );
}
