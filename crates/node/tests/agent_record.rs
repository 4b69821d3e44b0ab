//! The agent against a real dispatcher: a task whose end was recorded by an
//! earlier agent, but never reported, is reported with its real outcome and
//! never run again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_agent::{AgentConfig, Connector, ProcessConfig, ProcessDriver, TaskDb, TaskRecord};
use shoal_api::dispatcher_server::DispatcherServer;
use shoal_api::{
    store_action, NodeDescription, Runtime, StoreAction, Task, TaskSpec, TaskState, TaskStatus,
    Transaction,
};
use shoal_manager::Dispatcher;
use shoal_raft::{Replica, ReplicaConfig};

const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_end_that_was_never_reported_is_reported_with_its_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let replica = Arc::new(
        Replica::open(
            ReplicaConfig::new(tmp.path().join("raft"), 1, "127.0.0.1:0".into()),
            true,
        )
        .await
        .unwrap(),
    );
    replica.wait_leader(WITHIN).await.unwrap();
    // Phase 1: the manager last heard the task was running on n1.
    let task = Task {
        id: "t1".into(),
        node_id: "n1".into(),
        desired_state: TaskState::Running as i32,
        spec: Some(TaskSpec {
            runtime: Some(Runtime {
                command: vec!["sleep".into(), "300".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: TaskState::Running as i32,
            pid: 4242,
            ..Default::default()
        }),
        ..Default::default()
    };
    let action = StoreAction {
        kind: store_action::Kind::Create as i32,
        target: Some(task.into()),
    };
    replica
        .propose(Transaction {
            leader_term: 0,
            actions: vec![action],
            timestamp_ms: 0,
        })
        .await
        .unwrap();
    // The agent before the crash had recorded its end.
    let db = TaskDb::open(&tmp.path().join("agent.redb")).unwrap();
    let ended = TaskStatus {
        state: TaskState::Failed as i32,
        err: "exit status 3".into(),
        exit_code: 3,
        message: "failed".into(),
        ..Default::default()
    };
    db.record("t1", &ended).unwrap();

    // Phase 2: a dispatcher, and a new agent with that record.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let socket = tmp.path().join("dispatcher.sock");
    let incoming = shoal_api::transport::listen_unix(&socket).unwrap();
    let dispatcher = Dispatcher::new(
        shoal_raft::LeaderTerm::current(Arc::clone(&replica)).expect("the test's replica leads"),
        stopped.clone(),
        rand::SeedableRng::seed_from_u64(7),
        Default::default(),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DispatcherServer::new(dispatcher))
            .serve_with_incoming(incoming),
    );
    let config = AgentConfig {
        node_id: "n1".into(),
        description: NodeDescription::default(),
        dispatcher: Connector::unix(&socket),
    };
    let driver = Arc::new(ProcessDriver {
        config: ProcessConfig::new(tmp.path().join("tasks")),
    });
    tokio::spawn(shoal_agent::run(config, driver, Arc::new(db), stopped));

    // Phase 3: the recorded end reaches the store; nothing was started.
    let deadline = Instant::now() + WITHIN;
    loop {
        let status = replica.store().view().task("t1").unwrap().status.unwrap();
        if status.state == TaskState::Failed as i32 {
            assert_eq!(status.exit_code, 3);
            assert_eq!(status.err, "exit status 3");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the recorded end was never reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        shoal_agent::find_task_processes(&tmp.path().join("tasks")).is_empty(),
        "a finished task was run again"
    );
    let _ = stop.send(true);
}
