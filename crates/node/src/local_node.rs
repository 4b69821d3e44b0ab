//! What a node's own control socket answers whatever its role
//! ([`LocalNodeService`]: who the node is, and leaving the cluster), and
//! what a worker answers to the control API ([`NotAManager`]: a refusal
//! naming the managers to ask instead).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use shoal_api::local_node_server::LocalNode;
use shoal_api::{LeaveRequest, LeaveResponse, NodeInfoRequest, NodeInfoResponse};
use tokio::sync::{mpsc, oneshot};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Request, Response, Status};

use crate::state_dir::{Marker, NodeKind};

/// The managers a node knows, kept current by its agent.
pub type KnownManagers = Arc<Mutex<Vec<String>>>;

/// A worker's `leave`, asked of its daemon: answered once the node has
/// left (its tasks stopped, its identity deleted), or with why it could not.
pub type LeaveRequests = mpsc::Sender<oneshot::Sender<Result<(), String>>>;

/// The local node service.
pub struct LocalNodeService {
    marker: Marker,
    managers: KnownManagers,
    /// Where a worker's `leave` goes; `None` on a manager.
    leave: Option<LeaveRequests>,
}

impl LocalNodeService {
    /// For a manager: `leave` is refused.
    pub fn manager(marker: Marker, managers: KnownManagers) -> LocalNodeService {
        LocalNodeService {
            marker,
            managers,
            leave: None,
        }
    }

    /// For a worker: `leave` is asked of the daemon through `leave`.
    pub fn worker(
        marker: Marker,
        managers: KnownManagers,
        leave: LeaveRequests,
    ) -> LocalNodeService {
        LocalNodeService {
            marker,
            managers,
            leave: Some(leave),
        }
    }
}

fn known(managers: &KnownManagers) -> Vec<String> {
    managers.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[tonic::async_trait]
impl LocalNode for LocalNodeService {
    async fn info(
        &self,
        _request: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        Ok(Response::new(NodeInfoResponse {
            version: shoal_api::VERSION.to_string(),
            node_id: self.marker.node_id.clone(),
            cluster_id: self.marker.cluster_id.clone(),
            role: match self.marker.role {
                NodeKind::Manager => "manager",
                NodeKind::Worker => "worker",
                NodeKind::Left => "left",
            }
            .to_string(),
            managers: known(&self.managers),
        }))
    }

    async fn leave(
        &self,
        _request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        let Some(leave) = &self.leave else {
            return Err(Status::failed_precondition(
                "this node is the cluster's manager: the cluster's state is in its store, \
                 and leaving would end the cluster; stop the daemon instead",
            ));
        };
        let (reply, done) = oneshot::channel();
        leave
            .send(reply)
            .await
            .map_err(|_| Status::unavailable("the daemon is stopping"))?;
        match done.await {
            Ok(Ok(())) => Ok(Response::new(LeaveResponse {})),
            Ok(Err(why)) => Err(Status::internal(format!("leaving failed: {why}"))),
            Err(_) => Err(Status::unavailable("the daemon stopped before it left")),
        }
    }
}

/// The control API on a worker: every call refused, naming the managers.
#[derive(Clone)]
pub struct NotAManager {
    managers: KnownManagers,
}

impl NotAManager {
    pub fn new(managers: KnownManagers) -> NotAManager {
        NotAManager { managers }
    }

    fn refusal(&self) -> Status {
        let managers = known(&self.managers);
        let at = if managers.is_empty() {
            String::new()
        } else {
            format!(" ({})", managers.join(", "))
        };
        Status::failed_precondition(format!(
            "this node is not a manager: a worker cannot show or change the cluster's state; \
             run the command on a manager{at}"
        ))
    }
}

impl tonic::server::NamedService for NotAManager {
    const NAME: &'static str = "shoal.v1.Control";
}

impl tower::Service<http::Request<Body>> for NotAManager {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<Body>) -> Self::Future {
        let refusal = self.refusal();
        Box::pin(async move { Ok(refusal.into_http()) })
    }
}
