//! A manager's one network port (DESIGN.md §6): mutual TLS, and behind the
//! authorization layer, every service other nodes use: the CA, the
//! dispatcher, the log broker, raft, and the control API for other managers. Nothing on it
//! is reachable without a certificate of the cluster but the join call.

use std::net::SocketAddr;
use std::sync::Arc;

use shoal_manager::authorization::AuthorizeLayer;
use shoal_manager::certificate_authority::CertificateAuthority;
use shoal_manager::controlapi::grpc::GrpcControl;
use shoal_manager::leader::DispatcherService;
use shoal_raft::Replica;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::daemon::DaemonError;

/// Largest message on the node listener: raft's own bound is larger and
/// applies to raft's service.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// What the node listener serves.
pub struct NodeServices {
    pub dispatcher: DispatcherService,
    pub logs: shoal_api::log_broker_server::LogBrokerServer<shoal_manager::LogPublishing>,
    pub ca: CertificateAuthority,
    pub control: shoal_api::control_server::ControlServer<GrpcControl>,
}

/// Binds `listen` and serves `services` on it under `tls` until `stop`
/// turns true. Returns the bound address (a port of 0 picks one).
pub async fn start(
    listen: &str,
    tls: Arc<rustls::ServerConfig>,
    replica: &Arc<Replica>,
    services: NodeServices,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), DaemonError> {
    let (incoming, bound) = shoal_api::mtls::listen(listen, tls).await?;
    let raft = shoal_raft::RaftService::new(replica.raft().clone());
    let ca = shoal_api::ca_server::CaServer::new(services.ca)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let router = tonic::transport::Server::builder()
        .layer(AuthorizeLayer::new(Arc::clone(replica)))
        .add_service(services.dispatcher)
        .add_service(services.logs.max_decoding_message_size(MAX_MESSAGE_BYTES))
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
    Ok((bound, served))
}
