//! The connection to a daemon, and the one place gRPC errors become the
//! single line the user reads.

use std::path::{Path, PathBuf};

use shoal_api::control_client::ControlClient;
use shoal_api::local_node_client::LocalNodeClient;
use tonic::transport::Channel;

/// A control API client bound to one socket.
pub struct Client {
    socket: PathBuf,
    inner: ControlClient<Channel>,
}

/// Largest message the client accepts (large listings).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

impl Client {
    pub fn new(socket: &Path) -> Client {
        let channel = shoal_api::transport::connect_unix(socket);
        Client {
            socket: socket.to_path_buf(),
            inner: ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
        }
    }

    /// The gRPC client; every call's error goes through [`Client::error`].
    pub fn api(&mut self) -> &mut ControlClient<Channel> {
        &mut self.inner
    }

    /// Turns a status into the user's one line: the server's message for
    /// refusals, a hint for an unreachable daemon.
    pub fn error(&self, status: tonic::Status) -> anyhow::Error {
        // A failed connection surfaces as a status whose source is the
        // transport error; refusals from the daemon have no source.
        let transport = std::error::Error::source(&status).is_some()
            && matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown
            );
        if transport {
            return anyhow::anyhow!(
                "cannot reach the shoal daemon at {} ({}): is it running? (set --socket or SHOAL_SOCKET)",
                self.socket.display(),
                status.message()
            );
        }
        anyhow::anyhow!("{}", status.message())
    }

    /// Who the daemon's node is: answered by managers and workers alike.
    pub async fn node_info(&mut self) -> anyhow::Result<shoal_api::NodeInfoResponse> {
        let mut local = self.local();
        let r = local.info(shoal_api::NodeInfoRequest {}).await;
        r.map(|r| r.into_inner()).map_err(|s| self.error(s))
    }

    /// The daemon's local node service, on the same socket.
    pub fn local(&self) -> LocalNodeClient<Channel> {
        LocalNodeClient::new(shoal_api::transport::connect_unix(&self.socket))
    }
}

/// Calls one RPC and maps its error: `call!(client, method(request))`.
#[macro_export]
macro_rules! call {
    ($client:expr, $method:ident($req:expr)) => {{
        let result = $client.api().$method($req).await;
        match result {
            Ok(r) => Ok::<_, anyhow::Error>(r.into_inner()),
            Err(status) => Err($client.error(status)),
        }
    }};
}

/// Every page of a streamed list call, their items in order:
/// `list_all!(client, list_nodes(request), nodes)`.
#[macro_export]
macro_rules! list_all {
    ($client:expr, $method:ident($req:expr), $field:ident) => {{
        let mut items = Vec::new();
        $crate::each_page!($client, $method($req), page => items.extend(page.$field))
            .map(|()| items)
    }};
}

/// Runs `body` on each page of a streamed list call as it arrives:
/// `each_page!(client, list_services(request), page => { … })`.
#[macro_export]
macro_rules! each_page {
    ($client:expr, $method:ident($req:expr), $page:ident => $body:expr) => {{
        match $client.api().$method($req).await {
            Ok(r) => {
                let mut stream = r.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some($page)) => $body,
                        Ok(None) => break Ok::<(), anyhow::Error>(()),
                        Err(status) => break Err($client.error(status)),
                    }
                }
            }
            Err(status) => Err($client.error(status)),
        }
    }};
}
