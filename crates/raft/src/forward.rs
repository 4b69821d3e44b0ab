//! Writes made on a follower (DESIGN.md §7): the transaction goes to the
//! leader over the raft service, the leader proposes it as its own, and
//! the follower answers its writer only once its own replica has applied
//! the entry, so a read through the same manager sees the write.
//!
//! A forwarded transaction is sent once. When the leader is lost while it
//! is out, it may or may not have been committed, and the writer is told
//! so (as for a local proposal whose writer stops waiting).

use std::sync::Mutex;
use std::time::Duration;

use prost::Message;
use shoal_api::raft_client::RaftClient;
use shoal_api::{ForwardRequest, ForwardResponse, Transaction};
use tonic::transport::Channel;

use crate::network::{raft_client, Network};
use crate::proposer::{ProposeError, Proposer};

/// How long a forwarded write may take at the leader, and then to be
/// applied here.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// This manager's way to the leader: one client, kept while the leader
/// stays at the same address.
pub(crate) struct LeaderLink {
    network: Network,
    client: Mutex<Option<(String, RaftClient<Channel>)>>,
}

impl LeaderLink {
    pub(crate) fn new(network: Network) -> LeaderLink {
        LeaderLink {
            network,
            client: Mutex::new(None),
        }
    }

    fn client(&self, addr: &str) -> Result<RaftClient<Channel>, ProposeError> {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, c)) = client.as_ref() {
            if at == addr {
                return Ok(c.clone());
            }
        }
        let channel = self
            .network
            .channel(addr)
            .map_err(|e| ProposeError::Unreachable {
                leader: addr.to_string(),
                message: e,
            })?;
        let made = raft_client(channel);
        *client = Some((addr.to_string(), made.clone()));
        Ok(made)
    }

    /// Sends `txn` to the leader at `addr`; the index it was applied at
    /// there.
    pub(crate) async fn forward(
        &self,
        addr: &str,
        txn: &Transaction,
        report: bool,
    ) -> Result<u64, ProposeError> {
        let mut client = self.client(addr)?;
        let request = ForwardRequest {
            transaction: txn.encode_to_vec(),
            report,
        };
        let answer = tokio::time::timeout(FORWARD_TIMEOUT, client.forward(request))
            .await
            .map_err(|_| ProposeError::Unknown {
                leader: addr.to_string(),
                message: format!("no answer within {FORWARD_TIMEOUT:?}"),
            })?;
        let answer = match answer {
            Ok(answer) => answer.into_inner(),
            // Refused before it was read: nothing was proposed.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(ProposeError::NotLeader { leader: None })
            }
            Err(status) if shoal_api::is_node_removed(&status) => {
                return Err(ProposeError::Removed {
                    message: status.message().to_string(),
                })
            }
            // Refused by the leader's authorization before it was read (a
            // leader that has not applied this manager's join yet):
            // nothing was proposed, and a retry may go through.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) =>
            {
                return Err(ProposeError::Unreachable {
                    leader: addr.to_string(),
                    message: status.message().to_string(),
                })
            }
            Err(status) => {
                // A failed connection carries the transport's error (the
                // request may not have left); any other answer came from
                // the leader after it read the request.
                self.forget(addr);
                return Err(ProposeError::Unknown {
                    leader: addr.to_string(),
                    message: status.message().to_string(),
                });
            }
        };
        if answer.error.is_empty() {
            return Ok(answer.index);
        }
        Err(serde_json::from_slice(&answer.error)
            .unwrap_or_else(|e| ProposeError::Raft(format!("the leader's answer: {e}"))))
    }

    fn forget(&self, addr: &str) {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if client.as_ref().is_some_and(|(at, _)| at == addr) {
            *client = None;
        }
    }
}

/// The leader's half: proposes a follower's transaction as its own.
pub(crate) async fn propose_forwarded(
    proposer: &Proposer,
    request: ForwardRequest,
) -> Result<ForwardResponse, tonic::Status> {
    let txn = Transaction::decode(request.transaction.as_slice())
        .map_err(|e| tonic::Status::invalid_argument(format!("transaction: {e}")))?;
    let result = if request.report {
        proposer.propose_report(txn).await
    } else {
        proposer.propose(txn).await
    };
    Ok(match result {
        Ok(index) => ForwardResponse {
            index,
            error: Vec::new(),
        },
        Err(e) => ForwardResponse {
            index: 0,
            error: serde_json::to_vec(&e)
                .map_err(|e| tonic::Status::internal(format!("encoding the answer: {e}")))?,
        },
    })
}
