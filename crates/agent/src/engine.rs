//! The node's Docker Engine, found once when the node starts: where it is
//! (`DOCKER_HOST`, the unix socket by default), its version and labels for
//! the node's description, and the clients the container executor calls it
//! with. A node without one runs processes only.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;

/// How long finding the engine may take; an engine that does not answer in
/// this time is taken as absent.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one ordinary call to the engine may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a long call (waiting for a container to end, following its
/// logs) is given before it is made again.
const LONG_CALL_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A reachable engine.
#[derive(Clone)]
pub struct Engine {
    /// For calls that answer at once.
    pub(crate) docker: Docker,
    /// For waits and log streams, which last as long as a container runs.
    pub(crate) long: Docker,
    /// Where it is: `unix:///var/run/docker.sock`, `tcp://…`.
    pub host: String,
    pub version: String,
    /// The engine's labels, `key=value` in its configuration.
    pub labels: HashMap<String, String>,
    /// The engine's name for its host, for messages.
    pub hostname: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("host", &self.host)
            .field("version", &self.version)
            .finish()
    }
}

/// Why no engine could be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no Docker Engine at {host}: {reason}")]
pub struct NoEngine {
    pub host: String,
    pub reason: String,
}

impl Engine {
    /// Finds the engine `DOCKER_HOST` names (the local socket without it),
    /// agreeing on an API version both speak (20.10 speaks 1.41).
    pub async fn detect() -> Result<Engine, NoEngine> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let fail = |reason: String| NoEngine {
            host: host.clone(),
            reason,
        };
        let docker = Docker::connect_with_host(&host).map_err(|e| fail(e.to_string()))?;
        let docker = tokio::time::timeout(DETECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| fail(format!("no answer within {DETECT_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let docker = docker.with_timeout(CALL_TIMEOUT);
        let info = tokio::time::timeout(DETECT_TIMEOUT, docker.info())
            .await
            .map_err(|_| fail(format!("no answer within {DETECT_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let labels = info
            .labels
            .unwrap_or_default()
            .into_iter()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let long = docker.clone().with_timeout(LONG_CALL_TIMEOUT);
        Ok(Engine {
            docker,
            long,
            host,
            version: info.server_version.unwrap_or_default(),
            labels,
            hostname: info.name.unwrap_or_default(),
        })
    }
}

/// Whether an engine error says the object does not exist.
pub(crate) fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// An engine error in the words a user reads: the engine's own message when
/// it sent one.
pub(crate) fn engine_text(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => {
            message.trim().to_string()
        }
        other => other.to_string(),
    }
}
