//! A link to the dispatcher that can be cut (a unix socket, or TCP with
//! mutual TLS over it): the simulator's partition. While the link is down no connection opens, and cutting it
//! breaks the connections already open, so the agent loses its session and
//! its heartbeats exactly as it would when the network between it and the
//! manager fails, while its workloads run on.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};

/// The state of a link: whether it is up, and how often it was cut (a
/// connection opened before a cut fails even if the link is up again by
/// the time it is next used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    pub cuts: u64,
}

impl Link {
    pub fn up() -> Link {
        Link { up: true, cuts: 0 }
    }

    /// Sets the link up or down; a move to down counts as a cut.
    pub fn set(&mut self, up: bool) {
        if self.up && !up {
            self.cuts += 1;
        }
        self.up = up;
    }
}

/// A channel whose connections `dial` makes while the link is up (a new
/// one for each, refused while it is cut).
fn channel_over<S, F, Fut>(link: watch::Receiver<Link>, dial: F) -> Channel
where
    F: Fn(watch::Receiver<Link>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = io::Result<S>> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Endpoint::from_static("http://shoal.local")
        .connect_timeout(Duration::from_millis(
            shoal_api::transport::CONNECT_TIMEOUT_MS,
        ))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let link = link.clone();
            let dial = dial.clone();
            async move {
                if !link.borrow().up {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "the simulated link is cut",
                    ));
                }
                Ok::<_, io::Error>(TokioIo::new(dial(link).await?))
            }
        }))
}

/// A channel to the unix socket at `path` that works while the link is up.
pub fn connect(path: PathBuf, link: watch::Receiver<Link>) -> Channel {
    channel_over(link, move |link| {
        let path = path.clone();
        async move { Ok(Severable::new(UnixStream::connect(path).await?, link)) }
    })
}

/// A TCP connection to `addr` that breaks when the link is cut.
async fn severable_tcp(
    addr: std::net::SocketAddr,
    link: watch::Receiver<Link>,
) -> io::Result<Severable<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    Ok(Severable::new(tcp, link))
}

/// A channel over plain TCP to the manager at `addr` that works while the
/// link is up (for comparison with [`connect_tls`]).
pub fn connect_tcp(addr: std::net::SocketAddr, link: watch::Receiver<Link>) -> Channel {
    channel_over(link, move |link| severable_tcp(addr, link))
}

/// A channel over mutual TLS to the manager at `addr` that works while
/// the link is up: the daemon's transport, with a link that can be cut
/// under the TLS session.
pub fn connect_tls(
    addr: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    link: watch::Receiver<Link>,
) -> Channel {
    let connector = tokio_rustls::TlsConnector::from(config);
    channel_over(link, move |link| {
        let connector = connector.clone();
        async move {
            let name = rustls::pki_types::ServerName::try_from(shoal_ca::tls::MANAGER_NAME)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            connector
                .connect(name, severable_tcp(addr, link).await?)
                .await
        }
    })
}

/// A connection that fails every read and write once its link is cut.
struct Severable<S> {
    stream: S,
    cut: Pin<Box<dyn Future<Output = ()> + Send>>,
    severed: bool,
}

impl<S> Severable<S> {
    fn new(stream: S, mut link: watch::Receiver<Link>) -> Severable<S> {
        let opened = link.borrow().cuts;
        Severable {
            stream,
            cut: Box::pin(async move {
                if link.wait_for(|l| l.cuts != opened).await.is_err() {
                    // Nobody can cut it any more.
                    std::future::pending::<()>().await;
                }
            }),
            severed: false,
        }
    }

    /// Whether the link is cut; registers for the cut otherwise.
    fn severed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.severed && self.cut.as_mut().poll(cx).is_ready() {
            self.severed = true;
        }
        self.severed
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the simulated link was cut")
}

impl<S: AsyncRead + Unpin> AsyncRead for Severable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.severed(cx) {
            return Poll::Ready(Err(broken()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Severable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.severed(cx) {
            return Poll::Ready(Err(broken()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.severed(cx) {
            return Poll::Ready(Err(broken()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
