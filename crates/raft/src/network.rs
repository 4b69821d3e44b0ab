//! Raft's RPCs between managers, over gRPC through the transport module.
//!
//! [`Network`] is the client openraft uses to reach a peer; [`RaftService`] is
//! the server half that hands incoming RPCs to the local raft. The small part
//! of each message is openraft's own type as JSON; log entries go in the
//! log's binary form ([`crate::codec`]) and snapshot chunks as raw bytes, so
//! a message is about the size of what it carries (JSON made every byte a
//! number in an array, 3.5 times the size).
//!
//! An AppendEntries carries at most [`MAX_APPEND_BYTES`] of entries (at least
//! one entry, each at most [`crate::MAX_ENTRY_BYTES`]): what does not fit is
//! left for the next message and openraft is told of the part that was sent
//! (`PartialSuccess`), so a follower far behind catches up over entries of
//! any allowed size.

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
use shoal_api::{LeadBeat, RaftMessage};
use tonic::transport::Channel;

use crate::types::TypeConfig;
use crate::Raft;

/// Makes one [`PeerClient`] per peer: over mutual TLS as this manager's
/// certificate shows it (a daemon), or plain TCP (tests of raft alone, on
/// loopback; the default).
#[derive(Clone, Default)]
pub struct Network {
    /// `None`: plain TCP. Otherwise the TLS configuration to dial with,
    /// once this manager has its certificate (none yet: nothing is
    /// dialled).
    tls: Option<PeerTls>,
}

/// Where a manager puts the TLS configuration its raft dials peers with,
/// once its certificate exists (it is made from the store the replica
/// opens).
pub type PeerTls = std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<rustls::ClientConfig>>>>;

impl Network {
    /// Peers over mutual TLS with the configuration put in the slot
    /// returned.
    pub fn tls() -> (Network, PeerTls) {
        let slot = PeerTls::default();
        (
            Network {
                tls: Some(std::sync::Arc::clone(&slot)),
            },
            slot,
        )
    }
}

impl Network {
    /// A channel to the manager at `addr` (connected lazily).
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, String> {
        dial(self.tls.as_ref(), addr)
    }
}

/// A channel to the manager at `addr`: over mutual TLS once `tls` holds
/// this manager's configuration, plain TCP without `tls`.
fn dial(tls: Option<&PeerTls>, addr: &str) -> Result<Channel, String> {
    let channel = match tls {
        Some(slot) => {
            let config = slot.read().unwrap_or_else(|e| e.into_inner()).clone();
            let config = config.ok_or("this manager has no certificate yet")?;
            shoal_api::mtls::connect(addr, config, MANAGER_NAME)
        }
        None => shoal_api::transport::connect_tcp(addr),
    };
    channel.map_err(|e| e.to_string())
}

/// A raft client that takes messages as large as a server does.
pub(crate) fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            tls: self.tls.clone(),
            client: None,
        }
    }
}

/// The name a manager's certificate carries (shoal_ca::tls::MANAGER_NAME;
/// the raft crate does not depend on the CA).
const MANAGER_NAME: &str = "shoal-manager";

/// The connection to one peer, made at its first call (openraft keeps a
/// client per peer for long; the TLS configuration may come after it).
pub struct PeerClient {
    target: u64,
    addr: String,
    tls: Option<PeerTls>,
    client: Option<RaftClient<Channel>>,
}

impl PeerClient {
    /// The client, made now if it was not yet.
    fn client(&mut self) -> Result<&mut RaftClient<Channel>, String> {
        if self.client.is_none() {
            let channel = dial(self.tls.as_ref(), &self.addr)?;
            self.client = Some(raft_client(channel));
        }
        self.client.as_mut().ok_or_else(|| "no client".to_string())
    }
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, E>>;

/// Bytes of entries one AppendEntries carries at most (a larger entry goes
/// alone): openraft gives an append its heartbeat interval to be written
/// and fsynced on the follower, and a message of many MiB would miss that
/// on a slow link or disk every time.
pub const MAX_APPEND_BYTES: usize = 1 << 20;
/// Largest raft message a server accepts.
const MAX_MESSAGE_BYTES: usize = crate::proposer::MAX_ENTRY_BYTES * 4;

impl PeerClient {
    /// Sends `header` (as JSON) with its bulk beside it.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: &'static str,
        header: &Req,
        entries: Vec<Vec<u8>>,
        data: Vec<u8>,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&AnyError::error(e))))?;
        let payload =
            serde_json::to_vec(header).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let msg = RaftMessage {
            payload,
            entries,
            data,
        };
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
        mut rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, RaftError<u64>> {
        let (entries, last_sent) = encode_entries(std::mem::take(&mut rpc.entries));
        let response: AppendEntriesResponse<u64> =
            self.call("append", &rpc, entries, Vec::new()).await?;
        Ok(match (response, last_sent) {
            // Only part was sent: that part is what the follower has.
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (response, _) => response,
        })
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        let data = std::mem::take(&mut rpc.data);
        self.call("snapshot", &rpc, Vec::new(), data).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, RaftError<u64>> {
        self.call("vote", &rpc, Vec::new(), Vec::new()).await
    }
}

/// The entries in their binary form, as many as fit [`MAX_APPEND_BYTES`]
/// (at least one), and the id of the last one sent when some were left out.
fn encode_entries(
    entries: Vec<openraft::Entry<TypeConfig>>,
) -> (Vec<Vec<u8>>, Option<openraft::LogId<u64>>) {
    let total = entries.len();
    let mut out = Vec::with_capacity(total);
    let mut bytes = 0;
    let mut last = None;
    for entry in entries {
        let encoded = crate::codec::encode_entry(&entry);
        if !out.is_empty() && bytes + encoded.len() > MAX_APPEND_BYTES {
            break;
        }
        bytes += encoded.len();
        last = Some(entry.log_id);
        out.push(encoded);
    }
    let partial = out.len() < total;
    (out, last.filter(|_| partial))
}

/// The gRPC server half: hands peers' RPCs to the local raft, proposes
/// the writes followers forward, and holds their streams
/// ([`crate::lead`]).
pub struct RaftService {
    raft: Raft,
    proposer: crate::Proposer,
    presence: std::sync::Arc<crate::lead::Presence>,
}

impl RaftService {
    pub fn new(replica: &crate::Replica) -> raft_server::RaftServer<RaftService> {
        raft_server::RaftServer::new(RaftService {
            raft: replica.raft().clone(),
            proposer: replica.proposer().clone(),
            presence: replica.presence(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, tonic::Status> {
    serde_json::from_slice(payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
    serde_json::to_vec(value)
        .map(|payload| {
            tonic::Response::new(RaftMessage {
                payload,
                ..Default::default()
            })
        })
        .map_err(|e| tonic::Status::internal(format!("raft reply: {e}")))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let msg = request.into_inner();
        let mut req: AppendEntriesRequest<TypeConfig> = decode(&msg.payload)?;
        req.entries = msg
            .entries
            .iter()
            .map(|bytes| crate::codec::decode_entry(bytes))
            .collect::<Result<_, _>>()
            .map_err(|e| tonic::Status::invalid_argument(format!("raft entry: {e}")))?;
        // When it arrived, not when raft got to it (queued behind a write,
        // a dying leader's last append would look recent).
        let arrived = shoal_api::clock::Instant::now();
        let answer = self.raft.append_entries(req).await;
        if matches!(
            answer,
            Ok(ref r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_))
        ) {
            self.presence.appended(arrived);
        }
        encode(&answer)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let req: VoteRequest<u64> = decode(&request.into_inner().payload)?;
        encode(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let msg = request.into_inner();
        let mut req: InstallSnapshotRequest<TypeConfig> = decode(&msg.payload)?;
        req.data = msg.data;
        encode(&self.raft.install_snapshot(req).await)
    }

    async fn forward(
        &self,
        request: tonic::Request<shoal_api::ForwardRequest>,
    ) -> Result<tonic::Response<shoal_api::ForwardResponse>, tonic::Status> {
        if self.raft.metrics().borrow().state != openraft::ServerState::Leader {
            return Err(tonic::Status::failed_precondition(
                "this manager is not the raft leader",
            ));
        }
        crate::forward::propose_forwarded(&self.proposer, request.into_inner())
            .await
            .map(tonic::Response::new)
    }

    type LeadStream = tokio_stream::wrappers::ReceiverStream<Result<LeadBeat, tonic::Status>>;

    async fn lead(
        &self,
        request: tonic::Request<tonic::Streaming<LeadBeat>>,
    ) -> Result<tonic::Response<Self::LeadStream>, tonic::Status> {
        crate::lead::serve(&self.raft, &self.presence, request.into_inner())
            .map(tonic::Response::new)
    }
}
