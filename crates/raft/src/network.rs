//! Raft's RPCs between managers, over gRPC through the transport module.
//!
//! [`Network`] is the client openraft uses to reach a peer; [`RaftService`] is
//! the server half that hands incoming RPCs to the local raft. Payloads are
//! openraft's own request and response types as JSON.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_api::raft_client::RaftClient;
use shoal_api::raft_server;
use shoal_api::RaftMessage;
use tonic::transport::Channel;

use crate::types::TypeConfig;
use crate::Raft;

/// Makes one [`Network`] per peer.
#[derive(Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            client: shoal_api::transport::connect_tcp(&node.addr)
                .map(RaftClient::new)
                .map_err(|e| e.to_string()),
        }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    target: u64,
    client: Result<RaftClient<Channel>, String>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, rpc: &'static str, req: &Req) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self
            .client
            .as_mut()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&AnyError::error(e.clone()))))?;
        let payload =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let msg = RaftMessage { payload };
        let reply = match rpc {
            "append" => client.append_entries(msg).await,
            "vote" => client.vote(msg).await,
            _ => client.install_snapshot(msg).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, E> = serde_json::from_slice(&reply.into_inner().payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, RaftError<u64>> {
        self.call("append", &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        self.call("snapshot", &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, RaftError<u64>> {
        self.call("vote", &rpc).await
    }
}

/// The gRPC server half: hands peers' RPCs to the local raft.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn new(raft: Raft) -> raft_server::RaftServer<RaftService> {
        raft_server::RaftServer::new(RaftService { raft })
            .max_decoding_message_size(crate::proposer::MAX_ENTRY_BYTES * 4)
    }
}

fn decode<T: DeserializeOwned>(msg: tonic::Request<RaftMessage>) -> Result<T, tonic::Status> {
    serde_json::from_slice(&msg.into_inner().payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
    serde_json::to_vec(value)
        .map(|payload| tonic::Response::new(RaftMessage { payload }))
        .map_err(|e| tonic::Status::internal(format!("raft reply: {e}")))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let req: AppendEntriesRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.append_entries(req).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let req: VoteRequest<u64> = decode(request)?;
        encode(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let req: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.install_snapshot(req).await)
    }
}
