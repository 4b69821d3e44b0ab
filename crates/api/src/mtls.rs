//! The mutual-TLS TCP transport between nodes (DESIGN.md §6): a manager's
//! one listener, and the connector nodes dial it with. The TLS
//! configurations come from `shoal_ca::tls`; this module carries
//! connections, and hands each request the certificates its peer showed
//! ([`PeerCertificates`]), which is where a node's identity is read from.
//!
//! Handshakes run beside the accept loop, each within a bound, at most
//! [`MAX_HANDSHAKES`] at once, and one address cannot take the last
//! [`HANDSHAKE_RESERVE`] of them: a client that stalls its handshake holds one slot for
//! [`HANDSHAKE_TIMEOUT_MS`], never the listener. A peer without a client
//! certificate (a join) gets one of [`MAX_ANONYMOUS_CONNECTIONS`] and at
//! most [`ANONYMOUS_LIFETIME_MS`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::transport::{
    TransportError, CONNECT_TIMEOUT_MS, KEEPALIVE_INTERVAL_MS, KEEPALIVE_TIMEOUT_MS,
};

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Handshakes in progress at once, at most; more connections wait.
pub const MAX_HANDSHAKES: usize = 256;
/// Connections handed over and not yet taken by the server, at most.
const ACCEPTED_QUEUE: usize = 64;
/// Handshake slots kept for other addresses: once only this many of
/// [`MAX_HANDSHAKES`] are free, an address with
/// [`MAX_HANDSHAKES_PER_SOURCE`] handshakes in progress gets no more. A
/// burst from one address (many nodes behind one NAT, a fleet restarting)
/// may use the rest; it can never take every slot.
pub const HANDSHAKE_RESERVE: usize = 64;
/// Handshakes in progress from one address once the reserve is reached.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 16;
/// Connections open at once without a client certificate (joins), at most.
pub const MAX_ANONYMOUS_CONNECTIONS: usize = 64;
/// How long a connection without a client certificate may stay open: a
/// join is two calls, and an idle one must not hold a slot.
pub const ANONYMOUS_LIFETIME_MS: u64 = 30_000;

/// What a request knows of the connection it came on: the peer's address
/// and the certificate chain it showed (leaf first; empty when it showed
/// none, which only a server that allows that lets through).
#[derive(Debug, Clone)]
pub struct PeerCertificates {
    pub remote_addr: Option<SocketAddr>,
    pub chain: Arc<Vec<Vec<u8>>>,
}

impl PeerCertificates {
    /// The peer of the connection `request` came on.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&PeerCertificates> {
        request.extensions().get::<PeerCertificates>()
    }

    /// The peer's own certificate (DER), if it showed one.
    pub fn leaf(&self) -> Option<&[u8]> {
        self.chain.first().map(Vec::as_slice)
    }
}

/// One accepted, handshaken connection.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerCertificates,
    /// For a peer without a certificate: its slot among the anonymous
    /// connections, and when the connection ends.
    anonymous: Option<(
        tokio::sync::OwnedSemaphorePermit,
        Pin<Box<tokio::time::Sleep>>,
    )>,
}

impl TlsConnection {
    /// An error once an anonymous connection outlived its time.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let (_, deadline) = self.anonymous.as_mut()?;
        deadline.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "a connection without a client certificate outlived its time",
            )
        })
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerCertificates;

    fn connect_info(&self) -> PeerCertificates {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Listens on `addr` (`host:port`; port 0 picks a free one) and yields
/// each connection once its TLS handshake under `config` succeeded; for
/// `tonic::transport::Server::serve_with_incoming`. Returns the bound
/// address. The accept loop ends when the stream is dropped.
pub async fn listen(
    addr: &str,
    config: Arc<rustls::ServerConfig>,
) -> Result<(ReceiverStream<io::Result<TlsConnection>>, SocketAddr), TransportError> {
    let fail = |source| TransportError::Listen {
        path: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    Ok((accept(listener, config), local))
}

/// As [`listen`], on a listener already bound (so its port is never let
/// go between choosing it and serving on it).
pub fn accept(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let anonymous = Arc::new(Semaphore::new(MAX_ANONYMOUS_CONNECTIONS));
    let per_source: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let crowded = slots.available_permits() < HANDSHAKE_RESERVE;
            let Some(source) = SourceSlot::take(&per_source, remote.ip(), crowded) else {
                tracing::debug!(peer = %remote, "too many handshakes from one address while others wait; connection dropped");
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let anonymous = Arc::clone(&anonymous);
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(
                    Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
                    acceptor.accept(tcp),
                )
                .await;
                drop(slot);
                drop(source);
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %remote, error = %e, "a TLS handshake was refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %remote, "a TLS handshake timed out");
                        return;
                    }
                };
                let chain: Vec<Vec<u8>> = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|d| d.to_vec()).collect())
                    .unwrap_or_default();
                let anonymous = if chain.is_empty() {
                    let Ok(permit) = anonymous.try_acquire_owned() else {
                        tracing::debug!(peer = %remote, "too many connections without a certificate; connection dropped");
                        return;
                    };
                    let deadline = tokio::time::sleep(Duration::from_millis(ANONYMOUS_LIFETIME_MS));
                    Some((permit, Box::pin(deadline)))
                } else {
                    None
                };
                let peer = PeerCertificates {
                    remote_addr: Some(remote),
                    chain: Arc::new(chain),
                };
                let _ = tx
                    .send(Ok(TlsConnection {
                        stream,
                        peer,
                        anonymous,
                    }))
                    .await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// One handshake's place among those of its source address; given back
/// when dropped.
struct SourceSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl SourceSlot {
    /// A place for a handshake from `ip`; when the listener is `crowded`,
    /// not if it has [`MAX_HANDSHAKES_PER_SOURCE`] in progress.
    fn take(
        counts: &Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
        crowded: bool,
    ) -> Option<SourceSlot> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if crowded && *n >= MAX_HANDSHAKES_PER_SOURCE {
            if *n == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A gRPC channel to `addr` (`host:port`) over TLS under `config`,
/// verifying the server's certificate against `server_name`; connected
/// lazily, so an unreachable address fails at the first call.
pub fn connect(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Channel, TransportError> {
    let invalid = |message: String| TransportError::Address {
        addr: addr.to_string(),
        message,
    };
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| invalid(format!("server name {server_name:?}: {e}")))?;
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|e| invalid(e.to_string()))?;
    let target = addr.to_string();
    let connector = tokio_rustls::TlsConnector::from(config);
    Ok(endpoint
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let name = name.clone();
            let target = target.clone();
            async move {
                let tcp = TcpStream::connect(&target).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        })))
}
