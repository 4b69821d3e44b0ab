//! A restarted agent finds the processes an earlier agent left, against a
//! dispatcher that hands it tasks in every state a crash can leave them in:
//! each workload keeps running exactly once, and the manager hears of it.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_agent::{
    AgentConfig, Connector, ProcessConfig, ProcessDriver, TaskDb, TASK_DIR_ENV, TASK_ID_ENV,
};
use shoal_api::dispatcher_server::{Dispatcher, DispatcherServer};
use shoal_api::{
    HeartbeatRequest, HeartbeatResponse, NodeDescription, Runtime, SessionMessage, SessionRequest,
    Task, TaskSpec, TaskState, TaskStatus, UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use std::os::unix::process::CommandExt;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

const WITHIN: Duration = Duration::from_secs(60);

type SessionSender = mpsc::Sender<Result<SessionMessage, Status>>;
type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionMessage, Status>> + Send>>;
type HeartbeatStream = Pin<Box<dyn Stream<Item = Result<HeartbeatResponse, Status>> + Send>>;

/// Hands out a fixed full set of tasks and records every status report.
#[derive(Clone)]
struct RecordingDispatcher {
    tasks: Vec<Task>,
    /// (task id, state, pid) in the order reported.
    reports: Arc<Mutex<Vec<(String, TaskState, u32)>>>,
    streams: Arc<Mutex<Vec<SessionSender>>>,
}

#[tonic::async_trait]
impl Dispatcher for RecordingDispatcher {
    type SessionStream = SessionStream;
    type HeartbeatStream = HeartbeatStream;

    async fn session(
        &self,
        request: Request<SessionRequest>,
    ) -> Result<Response<SessionStream>, Status> {
        let node_id = request.into_inner().node_id;
        let (tx, rx) = mpsc::channel(4);
        let first = SessionMessage {
            node_id,
            session_id: "s1".into(),
            heartbeat_period_ms: 1_000,
            tasks: self.tasks.clone(),
            removed: vec![],
            full: true,
            managers: Vec::new(),
            ..Default::default()
        };
        tx.send(Ok(first))
            .await
            .map_err(|_| Status::internal("gone"))?;
        self.streams.lock().unwrap().push(tx);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<HeartbeatStream>, Status> {
        let mut beats = request.into_inner();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while let Ok(Some(_)) = beats.message().await {
                let answer = HeartbeatResponse { period_ms: 1_000 };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let mut reports = self.reports.lock().unwrap();
        for u in request.into_inner().updates {
            let status = u.status.unwrap_or_default();
            let state = TaskState::try_from(status.state).unwrap_or(TaskState::New);
            reports.push((u.task_id, state, status.pid));
        }
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }
}

fn task(id: &str, observed: TaskState, desired: TaskState) -> Task {
    Task {
        id: id.into(),
        node_id: "n1".into(),
        desired_state: desired as i32,
        spec: Some(TaskSpec {
            runtime: Some(Runtime {
                command: vec!["sleep".into(), "300".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: observed as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A process as an earlier agent would have left it for task `id`: its own
/// process group, the task's id and directory in its environment.
fn leftover(tasks_dir: &Path, id: &str) -> Child {
    let dir = tasks_dir.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    Command::new("sleep")
        .arg("300")
        .env(TASK_ID_ENV, id)
        .env(TASK_DIR_ENV, &dir)
        .process_group(0)
        .spawn()
        .expect("sleep runs")
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !done() {
        assert!(Instant::now() < deadline, "not within {WITHIN:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_each_started_workload_once_and_reports_it_running() {
    use TaskState::*;
    let tmp = tempfile::tempdir().unwrap();
    let tasks_dir = tmp.path().join("tasks");
    // What a crash can leave: started with STARTING committed and RUNNING
    // not; started with nothing committed; started and known; started and
    // gone since; a process of a task held READY; one of no task at all.
    let mut left: HashMap<&str, Child> = ["starting", "assigned", "running", "held", "stranger"]
        .into_iter()
        .map(|id| (id, leftover(&tasks_dir, id)))
        .collect();
    let pids: HashMap<&str, u32> = left.iter().map(|(id, c)| (*id, c.id())).collect();

    let dispatcher = RecordingDispatcher {
        tasks: vec![
            task("starting", Starting, Running),
            task("assigned", Assigned, Running),
            task("running", Running, Running),
            task("gone", Running, Running),
            task("held", Ready, Ready),
        ],
        reports: Arc::default(),
        streams: Arc::default(),
    };
    let reports = Arc::clone(&dispatcher.reports);
    let socket = tmp.path().join("dispatcher.sock");
    let incoming = shoal_api::transport::listen_unix(&socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DispatcherServer::new(dispatcher))
            .serve_with_incoming(incoming),
    );
    let db = Arc::new(TaskDb::open(&tmp.path().join("agent.redb")).unwrap());
    let config = AgentConfig {
        node_id: "n1".into(),
        description: NodeDescription::default(),
        dispatcher: Connector::unix(&socket),
    };
    let driver = Arc::new(ProcessDriver {
        config: ProcessConfig::new(tasks_dir.clone()),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(shoal_agent::run(config, driver, db, stopped));

    let reported = |id: &str, state: TaskState| {
        reports
            .lock()
            .unwrap()
            .iter()
            .any(|(t, s, _)| t == id && *s == state)
    };
    wait_until("the adopted and the lost tasks are reported", || {
        reported("starting", Running) && reported("assigned", Running) && reported("gone", Failed)
    })
    .await;
    wait_until("the processes no task may run are killed", || {
        !alive(left.get_mut("held").unwrap()) && !alive(left.get_mut("stranger").unwrap())
    })
    .await;

    for id in ["starting", "assigned", "running"] {
        assert!(
            alive(left.get_mut(id).unwrap()),
            "{id}: an adopted workload keeps running"
        );
    }
    let reports = reports.lock().unwrap().clone();
    for id in ["starting", "assigned"] {
        let running: Vec<u32> = reports
            .iter()
            .filter(|(t, s, _)| t == id && *s == Running)
            .map(|(_, _, pid)| *pid)
            .collect();
        assert_eq!(
            running,
            [pids[id]],
            "{id}: reported running once, as the process it already had"
        );
    }
    assert!(
        !reports
            .iter()
            .any(|(t, _, _)| t == "running" || t == "held"),
        "nothing to tell of a task the manager already has right: {reports:?}"
    );
    // Exactly the three adopted workloads run: none started a second time.
    let running = shoal_agent::find_task_processes(&tasks_dir);
    let expected: HashMap<String, u32> = ["starting", "assigned", "running"]
        .into_iter()
        .map(|id| (id.to_string(), pids[id]))
        .collect();
    assert_eq!(running, expected);

    stop.send(true).unwrap();
    tokio::time::timeout(WITHIN, agent)
        .await
        .expect("the agent stops")
        .unwrap();
    for child in left.values_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
