//! Every listener and connector of Shoal goes through here (DESIGN.md §4), so
//! the whole cluster can later run over a simulated network, and so timeouts
//! and keepalives are set in one place.
//!
//! Two transports exist today: TCP between managers, and a unix socket for the
//! control API (mode 0600: only the daemon's user may drive it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a client waits for a connection before giving up.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// HTTP/2 keepalive: a peer silent this long is probed, so a cut connection
/// is noticed instead of hanging forever.
pub const KEEPALIVE_INTERVAL_MS: u64 = 10_000;
pub const KEEPALIVE_TIMEOUT_MS: u64 = 20_000;

/// Why a listener could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid address {addr:?}: {message}")]
    Address { addr: String, message: String },
}

/// Listens on a unix socket at `path`, replacing a stale socket file, readable
/// and writable by the owner only.
pub fn listen_unix(path: &Path) -> Result<UnixListenerStream, TransportError> {
    let fail = |source| TransportError::Listen {
        path: path.display().to_string(),
        source,
    };
    // A socket someone answers on is another daemon's: taking it over
    // would leave that daemon unreachable. One nobody answers on is a
    // leftover of a daemon that died.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another daemon answers on this socket (set --socket, or unset SHOAL_SOCKET)",
        )));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let listener = UnixListener::bind(path).map_err(fail)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(UnixListenerStream::new(listener))
}

/// A gRPC channel to a unix socket. Connects lazily, so a daemon that is not
/// up yet fails at the first call with the socket's path in the error.
pub fn connect_unix(path: &Path) -> Channel {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://shoal.local")
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
}

/// A gRPC channel to a TCP address (`host:port`), connected lazily.
pub fn connect_tcp(addr: &str) -> Result<Channel, TransportError> {
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|e| TransportError::Address {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
    Ok(endpoint
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A TCP listener for gRPC servers, and the address it is bound to (so
/// `127.0.0.1:0` gives a free port).
pub async fn listen_tcp(
    addr: &str,
) -> Result<
    (
        tokio_stream::wrappers::TcpListenerStream,
        std::net::SocketAddr,
    ),
    TransportError,
> {
    let fail = |source| TransportError::Listen {
        path: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    Ok((
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        local,
    ))
}
