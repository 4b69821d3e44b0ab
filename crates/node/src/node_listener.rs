//! A manager's one network port (DESIGN.md §6): mutual TLS, and behind the
//! authorization layer, every service other nodes use: the CA, the
//! dispatcher, the log broker, raft, and the control API for other managers. Nothing on it
//! is reachable without a certificate of the cluster but the join call.

use std::sync::Arc;

use shoal_manager::authorization::AuthorizeLayer;
use shoal_manager::certificate_authority::CertificateAuthority;
use shoal_manager::controlapi::grpc::GrpcControl;
use shoal_raft::Replica;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::daemon::DaemonError;

/// Largest request to the CA: a certificate request and a token are a few
/// KiB, and the join is the one call anyone may make, so what it may make
/// the manager buffer is small.
const MAX_CA_REQUEST_BYTES: usize = 64 << 10;
/// Largest log batch an agent publishes (it sends at most a quarter).
const MAX_LOG_BATCH_BYTES: usize = 4 << 20;
/// Streams open at once on one connection: an agent needs a handful (its
/// session, heartbeats, reports, a stream per log read it answers).
const MAX_STREAMS_PER_CONNECTION: u32 = 512;

/// What the node listener serves.
pub struct NodeServices {
    pub dispatcher:
        shoal_api::dispatcher_server::DispatcherServer<shoal_manager::leadership::DispatcherGate>,
    pub logs: shoal_api::log_broker_server::LogBrokerServer<shoal_manager::LogPublishing>,
    pub ca: CertificateAuthority,
    pub control: shoal_api::control_server::ControlServer<GrpcControl>,
}

/// Serves `services` on `listener` under `tls` until `stop` turns true.
pub fn start(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    replica: &Arc<Replica>,
    cluster_id: &str,
    services: NodeServices,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, DaemonError> {
    let incoming = shoal_api::mtls::accept(listener, tls);
    let raft = shoal_raft::RaftService::new(replica);
    let ca = shoal_api::ca_server::CaServer::new(services.ca)
        .max_decoding_message_size(MAX_CA_REQUEST_BYTES);
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(AuthorizeLayer::new(Arc::clone(replica), cluster_id))
        .add_service(services.dispatcher)
        .add_service(services.logs.max_decoding_message_size(MAX_LOG_BATCH_BYTES))
        .add_service(ca)
        .add_service(raft)
        .add_service(services.control);
    let mut stop = stop;
    let served = tokio::spawn(async move {
        let served = router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the node listener stopped serving");
        }
    });
    Ok(served)
}
