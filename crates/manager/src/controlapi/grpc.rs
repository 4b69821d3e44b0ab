//! The control API over gRPC: each call hands its request to the
//! transport-free core ([`ControlApi`]) and maps the answer; [`ApiError`]
//! becomes a status in one place (`impl From<ApiError> for Status`).

use std::pin::Pin;
use std::sync::Arc;

use shoal_api::control_server::{Control, ControlServer};
use shoal_api::*;
use shoal_raft::ProposeError;
use shoal_store::{LookupError, TxnError};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};

use super::{ApiError, ControlApi};

type GrpcResult<T> = Result<Response<T>, Status>;
/// A streamed answer.
type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC service over a [`ControlApi`].
pub struct GrpcControl {
    core: Arc<ControlApi>,
}

impl GrpcControl {
    /// The tonic server for `core`, messages up to the given sizes.
    pub fn server(
        core: Arc<ControlApi>,
        max_request_bytes: usize,
        max_answer_bytes: usize,
    ) -> ControlServer<GrpcControl> {
        ControlServer::new(GrpcControl { core })
            .max_decoding_message_size(max_request_bytes)
            .max_encoding_message_size(max_answer_bytes)
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(code(&e), e.to_string())
    }
}

/// The status code of each kind of error.
fn code(e: &ApiError) -> Code {
    match e {
        ApiError::Invalid(_) => Code::InvalidArgument,
        ApiError::Lookup(LookupError::NotFound { .. }) => Code::NotFound,
        ApiError::Lookup(LookupError::Ambiguous { .. }) => Code::InvalidArgument,
        ApiError::Propose(ProposeError::Txn(t)) => match t {
            TxnError::NotFound { .. } => Code::NotFound,
            TxnError::Conflict { .. } => Code::Aborted,
            TxnError::AlreadyExists { .. } | TxnError::NameInUse { .. } => Code::AlreadyExists,
            TxnError::Invalid(_) | TxnError::OverLimit { .. } => Code::InvalidArgument,
            TxnError::MissingReference { .. } | TxnError::InUse { .. } => Code::FailedPrecondition,
            // Never a user's write (those carry no term): a leader changed.
            TxnError::StaleTerm { .. } => Code::Unavailable,
        },
        ApiError::Propose(ProposeError::TooLarge { .. }) => Code::InvalidArgument,
        // It may have been applied: not a plain "try again".
        ApiError::Propose(ProposeError::Unknown { .. }) => Code::Unknown,
        ApiError::Propose(_) => Code::Unavailable,
        ApiError::Refused(_) => Code::FailedPrecondition,
        ApiError::Unavailable(_) => Code::Unavailable,
        ApiError::Watch(_) => Code::Aborted,
        ApiError::Internal(_) => Code::Internal,
    }
}

#[tonic::async_trait]
impl Control for GrpcControl {
    async fn create_service(
        &self,
        request: Request<CreateServiceRequest>,
    ) -> GrpcResult<ServiceResponse> {
        Ok(Response::new(
            self.core.create_service(request.into_inner()).await?,
        ))
    }
    async fn get_service(&self, request: Request<GetRequest>) -> GrpcResult<ServiceResponse> {
        Ok(Response::new(
            self.core.get_service(request.into_inner()).await?,
        ))
    }
    async fn update_service(
        &self,
        request: Request<UpdateServiceRequest>,
    ) -> GrpcResult<ServiceResponse> {
        Ok(Response::new(
            self.core.update_service(request.into_inner()).await?,
        ))
    }
    async fn remove_service(&self, request: Request<RemoveRequest>) -> GrpcResult<RemoveResponse> {
        Ok(Response::new(
            self.core.remove_service(request.into_inner()).await?,
        ))
    }
    type ListServicesStream = Answers<ListServicesResponse>;

    async fn list_services(
        &self,
        request: Request<ListRequest>,
    ) -> GrpcResult<Self::ListServicesStream> {
        let pages = self.core.list_services(request.into_inner()).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(pages.map(Ok)))))
    }
    async fn get_task(&self, request: Request<GetRequest>) -> GrpcResult<TaskResponse> {
        Ok(Response::new(
            self.core.get_task(request.into_inner()).await?,
        ))
    }
    type ListTasksStream = Answers<ListTasksResponse>;

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> GrpcResult<Self::ListTasksStream> {
        let pages = self.core.list_tasks(request.into_inner()).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(pages.map(Ok)))))
    }
    async fn get_node(&self, request: Request<GetRequest>) -> GrpcResult<NodeResponse> {
        Ok(Response::new(
            self.core.get_node(request.into_inner()).await?,
        ))
    }
    type ListNodesStream = Answers<ListNodesResponse>;

    async fn list_nodes(&self, request: Request<ListRequest>) -> GrpcResult<Self::ListNodesStream> {
        let pages = self.core.list_nodes(request.into_inner()).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(pages.map(Ok)))))
    }
    async fn update_node(&self, request: Request<UpdateNodeRequest>) -> GrpcResult<NodeResponse> {
        Ok(Response::new(
            self.core.update_node(request.into_inner()).await?,
        ))
    }
    async fn remove_node(
        &self,
        request: Request<shoal_api::RemoveNodeRequest>,
    ) -> GrpcResult<RemoveResponse> {
        Ok(Response::new(
            self.core.remove_node(request.into_inner()).await?,
        ))
    }
    async fn create_network(
        &self,
        request: Request<CreateNetworkRequest>,
    ) -> GrpcResult<NetworkResponse> {
        Ok(Response::new(
            self.core.create_network(request.into_inner()).await?,
        ))
    }
    async fn get_network(&self, request: Request<GetRequest>) -> GrpcResult<NetworkResponse> {
        Ok(Response::new(
            self.core.get_network(request.into_inner()).await?,
        ))
    }
    type ListNetworksStream = Answers<ListNetworksResponse>;

    async fn list_networks(
        &self,
        request: Request<ListRequest>,
    ) -> GrpcResult<Self::ListNetworksStream> {
        let pages = self.core.list_networks(request.into_inner()).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(pages.map(Ok)))))
    }
    async fn remove_network(&self, request: Request<RemoveRequest>) -> GrpcResult<RemoveResponse> {
        Ok(Response::new(
            self.core.remove_network(request.into_inner()).await?,
        ))
    }
    async fn get_cluster(
        &self,
        request: Request<GetClusterRequest>,
    ) -> GrpcResult<ClusterResponse> {
        Ok(Response::new(
            self.core.get_cluster(request.into_inner()).await?,
        ))
    }
    async fn update_cluster(
        &self,
        request: Request<UpdateClusterRequest>,
    ) -> GrpcResult<ClusterResponse> {
        Ok(Response::new(
            self.core.update_cluster(request.into_inner()).await?,
        ))
    }
    type WatchStream = Answers<WatchEvent>;

    async fn watch(&self, request: Request<WatchRequest>) -> GrpcResult<Self::WatchStream> {
        let stream = self.core.watch(request.into_inner()).await?;
        Ok(Response::new(Box::pin(
            stream.map(|item| item.map_err(Status::from)),
        )))
    }
    type LogsStream = Answers<shoal_api::LogLine>;

    async fn logs(&self, request: Request<shoal_api::LogsRequest>) -> GrpcResult<Self::LogsStream> {
        // The agents' sessions are the leader's: a follower relays the
        // leader's answer.
        if let Some(leader) = self.core.leader_control() {
            let answer = leader?.logs(request.into_inner()).await?;
            return Ok(Response::new(Box::pin(answer.into_inner())));
        }
        let stream = self.core.logs(request.into_inner()).await?;
        Ok(Response::new(Box::pin(
            stream.map(|item| item.map_err(Status::from)),
        )))
    }
    type BackupStream = Answers<BackupChunk>;

    async fn backup(&self, request: Request<BackupRequest>) -> GrpcResult<Self::BackupStream> {
        let stream = self.core.backup(request.into_inner()).await?;
        Ok(Response::new(Box::pin(
            stream.map(|item| item.map_err(Status::from)),
        )))
    }

    async fn version(&self, request: Request<VersionRequest>) -> GrpcResult<VersionResponse> {
        Ok(Response::new(
            self.core.version(request.into_inner()).await?,
        ))
    }
    async fn join_token(
        &self,
        request: Request<JoinTokenRequest>,
    ) -> GrpcResult<JoinTokenResponse> {
        Ok(Response::new(
            self.core.join_token(request.into_inner()).await?,
        ))
    }
}
