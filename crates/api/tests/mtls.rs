//! The mutual-TLS transport with a real gRPC service: the handler reads
//! the identity its peer's certificate names, a client without a
//! certificate never reaches it, and a client stalling its handshake does
//! not hold up the others.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_api::dispatcher_client::DispatcherClient;
use shoal_api::dispatcher_server::{Dispatcher, DispatcherServer};
use shoal_api::mtls::PeerCertificates;
use shoal_api::{
    HeartbeatRequest, HeartbeatResponse, SessionMessage, SessionRequest, UpdateTaskStatusRequest,
    UpdateTaskStatusResponse,
};
use shoal_ca::tls::{client_config, server_config, ClientAuth, MANAGER_NAME};
use shoal_ca::{NodeIdentity, NodeKey, Role, RootCa};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Answers every status report with who sent it, as its certificate says.
struct WhoAmI;

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatcher for WhoAmI {
    type SessionStream = Answers<SessionMessage>;
    type HeartbeatStream = Answers<HeartbeatResponse>;

    async fn session(
        &self,
        _: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn heartbeat(
        &self,
        _: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        // Every call that reaches the handler gets PERMISSION_DENIED, so a
        // test can tell "refused in the handshake" from "reached".
        let Some(leaf) = PeerCertificates::of(&request).and_then(|p| p.leaf()) else {
            return Err(Status::permission_denied("reached without a certificate"));
        };
        let who = match NodeIdentity::of_certificate(leaf) {
            Ok((who, _)) => who,
            Err(e) => return Err(Status::permission_denied(e.to_string())),
        };
        Err(Status::permission_denied(format!(
            "{} {:?} {}",
            who.node_id, who.role, who.cluster_id
        )))
    }
}

struct Cert {
    cert: String,
    key: String,
}

fn issue(ca: &RootCa, id: &str, role: Role) -> Cert {
    let key = NodeKey::generate(id).unwrap();
    let now = SystemTime::now();
    let identity = NodeIdentity {
        node_id: id.into(),
        role,
        cluster_id: "c1".into(),
    };
    let cert = ca
        .issue(
            key.request_pem(),
            &identity,
            &[],
            now - Duration::from_secs(60),
            now + Duration::from_secs(3_600),
        )
        .unwrap();
    Cert {
        cert,
        key: key.key_pem().to_string(),
    }
}

/// A manager serving [`WhoAmI`] on a free loopback port.
async fn manager(ca: &RootCa) -> String {
    manager_with(ca, ClientAuth::Required).await
}

/// As [`manager`], letting clients without a certificate through (the
/// join's listener).
async fn open_manager(ca: &RootCa) -> String {
    manager_with(ca, ClientAuth::Optional).await
}

async fn manager_with(ca: &RootCa, clients: ClientAuth) -> String {
    let me = issue(ca, "m1", Role::Manager);
    let config = server_config(ca.cert_der(), &me.cert, &me.key, clients).unwrap();
    let (incoming, addr) = shoal_api::mtls::listen("127.0.0.1:0", config)
        .await
        .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DispatcherServer::new(WhoAmI))
            .serve_with_incoming(incoming),
    );
    addr.to_string()
}

async fn report(ca: &RootCa, addr: &str, client: Option<&Cert>) -> Status {
    let config = client_config(
        ca.cert_der(),
        client.map(|c| (c.cert.as_str(), c.key.as_str())),
    )
    .unwrap();
    let channel = shoal_api::mtls::connect(addr, config, MANAGER_NAME).unwrap();
    DispatcherClient::new(channel)
        .update_task_status(UpdateTaskStatusRequest::default())
        .await
        .expect_err("the test service always answers with an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_reads_its_peers_identity_from_the_certificate_it_showed() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let addr = manager(&ca).await;
    let worker = issue(&ca, "w1", Role::Worker);
    let answer = report(&ca, &addr, Some(&worker)).await;
    assert_eq!(answer.code(), tonic::Code::PermissionDenied, "{answer:?}");
    assert_eq!(answer.message(), "w1 Worker c1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_valid_certificate_never_reaches_a_handler() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let addr = manager(&ca).await;
    // Refused in the handshake: the client sees the manager's alert or the
    // connection closed (under TLS 1.3 either comes with the first read),
    // never the handler's answer, which every call that reaches it gets.
    let refused = |answer: &Status| answer.code() != tonic::Code::PermissionDenied;
    let answer = report(&ca, &addr, None).await;
    assert!(refused(&answer), "{answer:?}");
    // Nor one whose certificate comes from another cluster's CA.
    let other = RootCa::create("c2", SystemTime::now()).unwrap();
    let stranger = issue(&other, "w9", Role::Worker);
    let config = client_config(
        ca.cert_der(),
        Some((stranger.cert.as_str(), stranger.key.as_str())),
    )
    .unwrap();
    let answer =
        DispatcherClient::new(shoal_api::mtls::connect(&addr, config, MANAGER_NAME).unwrap())
            .update_task_status(UpdateTaskStatusRequest::default())
            .await
            .unwrap_err();
    assert!(refused(&answer), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_its_handshake_does_not_hold_up_the_others() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let addr = manager(&ca).await;
    // Connects and says nothing.
    let _stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let worker = issue(&ca, "w1", Role::Worker);
    // Under the handshake timeout: the second client must not be served
    // merely because the first one's handshake was given up.
    let within = Duration::from_millis(shoal_api::mtls::HANDSHAKE_TIMEOUT_MS / 2);
    let answer = tokio::time::timeout(within, report(&ca, &addr, Some(&worker)))
        .await
        .expect("a second client is served while the first stalls");
    assert_eq!(answer.code(), tonic::Code::PermissionDenied, "{answer:?}");
}

#[test]
fn an_address_or_server_name_that_is_not_one_is_refused_naming_it() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let config = client_config(ca.cert_der(), None).unwrap();
    let err =
        shoal_api::mtls::connect("127.0.0.1:1", Arc::clone(&config), "not a name!").unwrap_err();
    assert!(err.to_string().contains("server name"), "{err}");
    let err = shoal_api::mtls::connect("no spaces allowed:1", config, MANAGER_NAME).unwrap_err();
    assert!(err.to_string().contains("no spaces allowed"), "{err}");
}

/// A TLS handshake without a client certificate from `from` (a loopback
/// address) to `addr`: the stream, or why it failed.
async fn anonymous_handshake(
    ca: &RootCa,
    from: std::net::IpAddr,
    addr: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    let tcp = socket.connect(addr.parse().unwrap()).await?;
    let config = client_config(ca.cert_der(), None).unwrap();
    let name = rustls::pki_types::ServerName::try_from(MANAGER_NAME).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_handshake_slot() {
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let addr = open_manager(&ca).await;
    // Stalled handshakes from 127.0.0.1, up to the reserve kept for others:
    // a burst from one address is let through so far.
    let burst = shoal_api::mtls::MAX_HANDSHAKES - shoal_api::mtls::HANDSHAKE_RESERVE;
    let mut stalled = Vec::new();
    for _ in 0..burst {
        stalled.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    let other = std::net::IpAddr::from([127, 0, 0, 2]);
    // The accept loop sees them in order: wait until it has taken them,
    // shown by a further one from there being dropped.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while anonymous_handshake(&ca, local, &addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "one address took more than its share"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another address is served from the reserve.
    assert!(anonymous_handshake(&ca, other, &addr).await.is_ok());
    // Once the stalled ones go, the first address is served again.
    drop(stalled);
    while anonymous_handshake(&ca, local, &addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_certificate_are_bounded_in_number_and_in_time() {
    use tokio::io::AsyncReadExt;
    let ca = RootCa::create("c1", SystemTime::now()).unwrap();
    let addr = open_manager(&ca).await;
    let mut open = Vec::new();
    // From many loopback addresses, so the per-address bound is not what
    // stops them; one more than the bound.
    for i in 0..=shoal_api::mtls::MAX_ANONYMOUS_CONNECTIONS {
        let from = std::net::IpAddr::from([127, 0, 1, (i % 250) as u8 + 1]);
        open.push(anonymous_handshake(&ca, from, &addr).await.unwrap());
    }
    // A served one reads the server's first HTTP/2 frame; the one over
    // the bound (whichever the server finished last) reads its end.
    let mut byte = [0u8; 1];
    let mut served = Vec::new();
    let mut dropped = 0;
    for mut stream in open {
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte))
            .await
            .expect("every connection is either served or closed");
        match read {
            Ok(1) => served.push(stream),
            _ => dropped += 1,
        }
    }
    assert_eq!(dropped, 1, "exactly the one over the bound is closed");
    assert_eq!(served.len(), shoal_api::mtls::MAX_ANONYMOUS_CONNECTIONS);
    // And each open one ends after its lifetime.
    let started = std::time::Instant::now();
    let mut first = served.remove(0);
    let mut rest = vec![0u8; 4096];
    let ended = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match first.read(&mut rest).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "an anonymous connection ends after its lifetime"
    );
    let lifetime = Duration::from_millis(shoal_api::mtls::ANONYMOUS_LIFETIME_MS);
    assert!(
        started.elapsed() + Duration::from_secs(5) >= lifetime / 2,
        "closed long before its lifetime: {:?}",
        started.elapsed()
    );
}
