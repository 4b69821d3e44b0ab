//! The agent against a dispatcher that never answers a status report (a
//! manager too loaded to commit it): its heartbeats must go on, or the
//! manager would count a live node down, and so must its assignments, or a
//! task placed on the node would wait for another task's report.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_agent::{AgentConfig, Connector, ProcessConfig, ProcessDriver, TaskDb};
use shoal_api::dispatcher_server::{Dispatcher, DispatcherServer};
use shoal_api::{
    HeartbeatRequest, HeartbeatResponse, NodeDescription, Runtime, SessionMessage, SessionRequest,
    Task, TaskSpec, TaskState, TaskStatus, UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

const WITHIN: Duration = Duration::from_secs(60);
const PERIOD_MS: u64 = 100;

type SessionSender = mpsc::Sender<Result<SessionMessage, Status>>;

/// A dispatcher whose status reports hang: it counts heartbeats and the
/// reports it was sent.
#[derive(Clone, Default)]
struct HangingDispatcher {
    /// The heartbeat period it gives agents.
    period_ms: u64,
    heartbeats: Arc<AtomicUsize>,
    reports: Arc<AtomicUsize>,
    /// Keeps each session's stream open.
    streams: Arc<std::sync::Mutex<Vec<SessionSender>>>,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionMessage, Status>> + Send>>;
type HeartbeatStream = Pin<Box<dyn Stream<Item = Result<HeartbeatResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatcher for HangingDispatcher {
    type SessionStream = SessionStream;
    type HeartbeatStream = HeartbeatStream;

    async fn session(
        &self,
        request: Request<SessionRequest>,
    ) -> Result<Response<SessionStream>, Status> {
        let node_id = request.into_inner().node_id;
        let (tx, rx) = mpsc::channel(4);
        // One task that ends at once: its reports are what hangs.
        let task = assigned("t1", &node_id, &["true"]);
        let first = SessionMessage {
            node_id,
            session_id: "s1".into(),
            heartbeat_period_ms: self.period_ms,
            tasks: vec![task],
            removed: vec![],
            full: true,
            managers: Vec::new(),
            ..Default::default()
        };
        tx.send(Ok(first))
            .await
            .map_err(|_| Status::internal("gone"))?;
        self.streams.lock().unwrap().push(tx.clone());
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
        let heartbeats = Arc::clone(&self.heartbeats);
        let period_ms = self.period_ms;
        tokio::spawn(async move {
            while let Ok(Some(_)) = beats.message().await {
                heartbeats.fetch_add(1, Ordering::SeqCst);
                let answer = HeartbeatResponse { period_ms };
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
        _request: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        self.reports.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// A task assigned to `node_id`, wanted running `command`.
fn assigned(id: &str, node_id: &str, command: &[&str]) -> Task {
    Task {
        id: id.into(),
        node_id: node_id.into(),
        desired_state: TaskState::Running as i32,
        spec: Some(TaskSpec {
            runtime: Some(Runtime {
                command: command.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: TaskState::Assigned as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Tells the agent to stop and waits until it has.
async fn stop_agent(
    stop: tokio::sync::watch::Sender<bool>,
    agent: tokio::task::JoinHandle<shoal_agent::AgentExit>,
) {
    stop.send(true).unwrap();
    tokio::time::timeout(WITHIN, agent)
        .await
        .expect("the agent stops")
        .unwrap();
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !done() {
        assert!(Instant::now() < deadline, "not within {WITHIN:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves `dispatcher` on a unix socket and starts the real agent against
/// it; returns its directory, its stop switch and its task.
async fn start_agent(
    dispatcher: HangingDispatcher,
) -> (
    tempfile::TempDir,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<shoal_agent::AgentExit>,
) {
    let tmp = tempfile::tempdir().unwrap();
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
        config: ProcessConfig::new(tmp.path().join("tasks")),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(shoal_agent::run(config, driver, db, stopped));

    (tmp, stop, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_go_on_while_a_status_report_waits_for_its_answer() {
    let dispatcher = HangingDispatcher {
        period_ms: PERIOD_MS,
        ..Default::default()
    };
    let heartbeats = Arc::clone(&dispatcher.heartbeats);
    let reports = Arc::clone(&dispatcher.reports);
    let (_tmp, stop, agent) = start_agent(dispatcher).await;

    wait_until("the agent reports its task", || {
        reports.load(Ordering::SeqCst) > 0
    })
    .await;
    // The report never gets an answer; heartbeats must keep coming.
    let before = heartbeats.load(Ordering::SeqCst);
    wait_until("five more heartbeats with a report unanswered", || {
        heartbeats.load(Ordering::SeqCst) >= before + 5
    })
    .await;
    assert_eq!(
        reports.load(Ordering::SeqCst),
        1,
        "a report unanswered is not sent again on the same session"
    );

    stop_agent(stop, agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_starts_while_a_status_report_waits_for_its_answer() {
    let dispatcher = HangingDispatcher {
        period_ms: PERIOD_MS,
        ..Default::default()
    };
    let reports = Arc::clone(&dispatcher.reports);
    let streams = Arc::clone(&dispatcher.streams);
    let (tmp, stop, agent) = start_agent(dispatcher).await;
    wait_until("the agent reports its first task", || {
        reports.load(Ordering::SeqCst) > 0
    })
    .await;

    // A second task arrives on the session while that report hangs.
    let session = streams.lock().unwrap()[0].clone();
    let message = SessionMessage {
        node_id: "n1".into(),
        session_id: "s1".into(),
        heartbeat_period_ms: PERIOD_MS,
        tasks: vec![assigned("t2", "n1", &["sleep", "300"])],
        removed: vec![],
        full: false,
        managers: Vec::new(),
        ..Default::default()
    };
    session.send(Ok(message)).await.unwrap();
    let tasks_dir = tmp.path().join("tasks");
    wait_until("the second task's process runs", || {
        shoal_agent::find_task_processes(&tasks_dir).contains_key("t2")
    })
    .await;
    assert_eq!(
        reports.load(Ordering::SeqCst),
        1,
        "one report call in flight at a time: the second task's reports wait behind it"
    );

    stop_agent(stop, agent).await;
    // Task processes outlive their agent by design: end this one here.
    for (_, pgid) in shoal_agent::find_task_processes(&tasks_dir) {
        shoal_agent::kill_group(pgid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_heartbeat_goes_out_when_the_session_opens_not_a_period_later() {
    // A period far longer than the wait: only a beat sent at once arrives.
    let dispatcher = HangingDispatcher {
        period_ms: 3_600_000,
        ..Default::default()
    };
    let heartbeats = Arc::clone(&dispatcher.heartbeats);
    let (_tmp, stop, agent) = start_agent(dispatcher).await;
    wait_until("a heartbeat", || heartbeats.load(Ordering::SeqCst) > 0).await;
    stop_agent(stop, agent).await;
}
