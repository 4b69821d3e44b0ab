//! The daemon's state dir: what is in it, and the checks that keep one
//! daemon from using a directory that is not its own.
//!
//! Layout: `shoal-state.json` (the marker: format, cluster id, node id, raft
//! id, role), `lock` (held with flock while a daemon runs), `raft/` (a
//! manager's raft log and snapshot), `certificates/` (the node's TLS
//! identity), `managers.json` (the managers a worker dials), `shoal.sock`
//! (the control socket).
//!
//! A directory is accepted when it is empty or missing (a new cluster is
//! created, or the node joins one) or when it holds a valid marker. Anything
//! else, a foreign directory, a damaged marker, a marker from another
//! format, is refused with the reason: a state dir is never silently reset.
//! The marker is written last when a node is made, so a start cut off before
//! it leaves only what the next start clears ([`LEFTOVERS`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const MARKER_FILE: &str = "shoal-state.json";
const LOCK_FILE: &str = "lock";
const RAFT_DIR: &str = "raft";
const MANAGERS_FILE: &str = "managers.json";
/// Where a manager's node listener was last bound.
const LISTENED_FILE: &str = "listened.json";
/// The cluster's election timeout, as this manager last saw it in the store.
const ELECTION_TIMEOUT_FILE: &str = "election-timeout.json";
/// What a start cut off before its marker was written may leave: a dir
/// holding only these counts as empty (and they are cleared).
const LEFTOVERS: &[&str] = &[
    LOCK_FILE,
    RAFT_DIR,
    "certificates",
    MANAGERS_FILE,
    LISTENED_FILE,
    ELECTION_TIMEOUT_FILE,
    SOCKET_FILE,
];
/// The control socket's file name inside the state dir.
pub const SOCKET_FILE: &str = "shoal.sock";
const FORMAT: u32 = 1;

/// Why a state dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("state dir {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state dir {path} is not empty and is not a Shoal state dir (no {MARKER_FILE}); refusing to use it")]
    Foreign { path: String },
    #[error("state dir {path}: {MARKER_FILE} is damaged ({message}); refusing to start")]
    BadMarker { path: String, message: String },
    #[error("state dir {path} has format {found}, this shoal reads format {FORMAT}")]
    Format { path: String, found: u32 },
    #[error("state dir {path} is in use by another shoal daemon")]
    Locked { path: String },
}

/// The identity a state dir records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub format: u32,
    pub cluster_id: String,
    pub node_id: String,
    pub raft_id: u64,
    /// How the node runs: a manager (its store in `raft/`) or a worker.
    /// Markers written before workers existed are managers'.
    #[serde(default)]
    pub role: NodeKind,
    /// A manager that joined an existing cluster (its raft group is the
    /// cluster's), not the one that made it.
    #[serde(default)]
    pub joined: bool,
}

/// What a state dir's node is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    #[default]
    Manager,
    Worker,
    /// A node that left its cluster (`shoal leave`, or removed): it keeps
    /// no identity, and starts again only to join (never, by mistake, as a
    /// new cluster of its own).
    Left,
}

impl Marker {
    /// The marker of a new node.
    pub fn new(cluster_id: String, node_id: String, role: NodeKind) -> Marker {
        Marker {
            format: FORMAT,
            cluster_id,
            node_id,
            raft_id: match role {
                NodeKind::Manager => 1,
                NodeKind::Worker | NodeKind::Left => 0,
            },
            role,
            joined: false,
        }
    }
}

/// An open, locked state dir.
pub struct StateDir {
    path: PathBuf,
    marker: Option<Marker>,
    fresh: bool,
    _lock: nix::fcntl::Flock<File>,
}

impl StateDir {
    /// Opens and locks `path` (made when missing); holds the lock until
    /// dropped. A dir without a marker has no identity yet: give it one
    /// with [`StateDir::create`].
    pub fn open(path: &Path) -> Result<StateDir, StateDirError> {
        let shown = path.display().to_string();
        let io = |source| StateDirError::Io {
            path: shown.clone(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        let marker_path = path.join(MARKER_FILE);
        let has_marker = marker_path.exists();
        if !has_marker {
            // A raft log without a marker is a manager's state that lost its
            // marker, not a start cut off before any write: never reset.
            if path.join(RAFT_DIR).join("raft.redb").exists() {
                return Err(StateDirError::Foreign { path: shown });
            }
            for entry in std::fs::read_dir(path).map_err(io)? {
                let name = entry.map_err(io)?.file_name();
                if !LEFTOVERS.iter().any(|l| name == *l) {
                    return Err(StateDirError::Foreign { path: shown });
                }
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(io)?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| StateDirError::Locked {
                path: shown.clone(),
            })?;
        let marker = if has_marker {
            let bytes = std::fs::read(&marker_path).map_err(io)?;
            let marker: Marker =
                serde_json::from_slice(&bytes).map_err(|e| StateDirError::BadMarker {
                    path: shown.clone(),
                    message: e.to_string(),
                })?;
            if marker.format != FORMAT {
                return Err(StateDirError::Format {
                    path: shown,
                    found: marker.format,
                });
            }
            Some(marker)
        } else {
            // Leftovers of a start cut off before it made the node.
            for leftover in LEFTOVERS.iter().filter(|l| **l != LOCK_FILE) {
                let p = path.join(leftover);
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).map_err(io)?;
                } else if p.exists() {
                    std::fs::remove_file(&p).map_err(io)?;
                }
            }
            None
        };
        // A manager's marker without a raft log means its first start was
        // cut off before anything was acknowledged: initialize again.
        let fresh = match &marker {
            None => true,
            Some(m) => match m.role {
                NodeKind::Manager => !path.join(RAFT_DIR).join("raft.redb").exists(),
                NodeKind::Worker => false,
                NodeKind::Left => true,
            },
        };
        // A worker keeps no raft log: one left is a demoted manager's,
        // cut off before it removed it.
        let worker = marker.as_ref().is_some_and(|m| m.role == NodeKind::Worker);
        if fresh || worker {
            let raft = path.join(RAFT_DIR);
            if raft.exists() {
                std::fs::remove_dir_all(&raft).map_err(io)?;
            }
        }
        Ok(StateDir {
            path: path.to_path_buf(),
            marker,
            fresh,
            _lock: lock,
        })
    }

    /// Gives a dir without an identity the one of `marker`. Written last
    /// when a node is made: everything it needs is in place before.
    pub fn create(&mut self, marker: Marker) -> Result<(), StateDirError> {
        let io = |source| StateDirError::Io {
            path: self.path.display().to_string(),
            source,
        };
        write_atomically(
            &self.path.join(MARKER_FILE),
            &serde_json::to_vec_pretty(&marker).unwrap_or_default(),
        )
        .map_err(io)?;
        self.marker = Some(marker);
        Ok(())
    }

    /// Deletes the node's identity and everything of its cluster. The
    /// marker says first that the node left (so a crash halfway, or a
    /// supervisor's restart, never starts it as a new cluster), then the
    /// rest goes; the node can only join again.
    pub fn forget(&mut self) -> Result<(), StateDirError> {
        let left = match &self.marker {
            Some(m) => Marker {
                role: NodeKind::Left,
                raft_id: 0,
                ..m.clone()
            },
            None => return self.clear(),
        };
        self.create(left)?;
        self.clear()
    }

    /// Deletes everything but the lock and the marker.
    pub fn clear(&mut self) -> Result<(), StateDirError> {
        let io = |source| StateDirError::Io {
            path: self.path.display().to_string(),
            source,
        };
        for entry in std::fs::read_dir(&self.path).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name() == LOCK_FILE || entry.file_name() == MARKER_FILE {
                continue;
            }
            let p = entry.path();
            // A task's log copier may still be finishing a write: a
            // directory is tried again once.
            if p.is_dir() {
                if std::fs::remove_dir_all(&p).is_err() {
                    std::fs::remove_dir_all(&p).map_err(io)?;
                }
            } else {
                std::fs::remove_file(&p).map_err(io)?;
            }
        }
        Ok(())
    }

    /// The managers this node last knew, as written by
    /// [`StateDir::save_managers`].
    pub fn managers(&self) -> Vec<String> {
        managers_in(&self.path)
    }

    /// Where this manager's node listener was bound last.
    pub fn listened(&self) -> Option<std::net::SocketAddr> {
        std::fs::read(self.path.join(LISTENED_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn save_listened(&self, addr: std::net::SocketAddr) -> std::io::Result<()> {
        let json = serde_json::to_vec(&addr).map_err(std::io::Error::other)?;
        write_atomically(&self.path.join(LISTENED_FILE), &json)
    }

    /// The election timeout (ms) this manager runs raft with, as it last
    /// saw the cluster set it; `None` for the default.
    pub fn election_timeout(&self) -> Option<u64> {
        std::fs::read(self.path.join(ELECTION_TIMEOUT_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn save_election_timeout(&self, ms: u64) -> std::io::Result<()> {
        save_election_timeout_in(&self.path, ms)
    }

    pub fn save_managers(&self, managers: &[String]) -> std::io::Result<()> {
        save_managers_in(&self.path, managers)
    }

    /// Whether this start makes the node (a new cluster, or a join).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }
    /// The node's identity; `None` until it has one.
    pub fn marker(&self) -> Option<&Marker> {
        self.marker.as_ref()
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn raft_dir(&self) -> PathBuf {
        self.path.join(RAFT_DIR)
    }
    pub fn socket_path(&self) -> PathBuf {
        self.path.join(SOCKET_FILE)
    }
}

/// Writes the election timeout into the state dir at `path` (for a task
/// that holds no [`StateDir`]).
pub fn save_election_timeout_in(path: &Path, ms: u64) -> std::io::Result<()> {
    let json = serde_json::to_vec(&ms).map_err(std::io::Error::other)?;
    write_atomically(&path.join(ELECTION_TIMEOUT_FILE), &json)
}

/// The managers the state dir at `path` names (for a task that holds no
/// [`StateDir`]).
pub fn managers_in(path: &Path) -> Vec<String> {
    std::fs::read(path.join(MANAGERS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes the managers' addresses into the state dir at `path` (for a
/// task that holds no [`StateDir`]).
pub fn save_managers_in(path: &Path, managers: &[String]) -> std::io::Result<()> {
    write_atomically(
        &path.join(MANAGERS_FILE),
        &serde_json::to_vec(managers).unwrap_or_default(),
    )
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker::new("c1".into(), "n1".into(), NodeKind::Manager)
    }

    #[test]
    fn empty_dir_becomes_a_new_state_dir_and_reopens_with_the_same_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut first = StateDir::open(&dir).unwrap();
        assert!(first.is_fresh());
        assert_eq!(first.marker(), None);
        first.create(marker()).unwrap();
        drop(first);
        std::fs::create_dir_all(dir.join("raft")).unwrap();
        std::fs::write(dir.join("raft/raft.redb"), b"").unwrap();
        let again = StateDir::open(&dir).unwrap();
        assert!(!again.is_fresh());
        assert_eq!(again.marker(), Some(&marker()));
    }

    #[test]
    fn a_marker_of_before_workers_is_a_managers() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(MARKER_FILE),
            br#"{"format":1,"cluster_id":"c1","node_id":"n1","raft_id":1}"#,
        )
        .unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert_eq!(dir.marker().unwrap().role, NodeKind::Manager);
    }

    #[test]
    fn a_start_cut_off_before_its_marker_leaves_a_dir_that_counts_as_empty() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("certificates")).unwrap();
        std::fs::write(tmp.path().join("certificates/node.key"), b"k").unwrap();
        std::fs::write(tmp.path().join(MANAGERS_FILE), b"[]").unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert!(dir.is_fresh());
        assert!(!tmp.path().join("certificates").exists());
        assert!(!tmp.path().join(MANAGERS_FILE).exists());
    }

    #[test]
    fn a_raft_log_without_its_marker_is_refused_never_reset() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("raft")).unwrap();
        std::fs::write(tmp.path().join("raft/raft.redb"), b"log").unwrap();
        let err = StateDir::open(tmp.path()).err().unwrap();
        assert!(matches!(err, StateDirError::Foreign { .. }), "{err}");
        assert!(tmp.path().join("raft/raft.redb").exists());
    }

    #[test]
    fn a_node_that_forgets_keeps_only_that_it_left() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = StateDir::open(tmp.path()).unwrap();
        dir.create(Marker::new("c1".into(), "w1".into(), NodeKind::Worker))
            .unwrap();
        dir.save_managers(&["10.0.0.1:4242".into()]).unwrap();
        assert_eq!(dir.managers(), vec!["10.0.0.1:4242".to_string()]);
        std::fs::create_dir_all(tmp.path().join("tasks/t1")).unwrap();
        dir.forget().unwrap();
        assert_eq!(dir.marker().map(|m| m.role), Some(NodeKind::Left));
        drop(dir);
        let mut names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![LOCK_FILE.to_string(), MARKER_FILE.to_string()]);
        let again = StateDir::open(tmp.path()).unwrap();
        assert!(again.is_fresh());
        assert_eq!(again.marker().map(|m| m.role), Some(NodeKind::Left));
    }

    #[test]
    fn foreign_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("notes.txt"), b"mine").unwrap();
        let err = StateDir::open(tmp.path()).err().unwrap();
        assert!(matches!(err, StateDirError::Foreign { .. }), "{err}");
        assert!(tmp.path().join("notes.txt").exists());
    }

    #[test]
    fn damaged_marker_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(MARKER_FILE), b"{not json").unwrap();
        let err = StateDir::open(tmp.path()).err().unwrap();
        assert!(matches!(err, StateDirError::BadMarker { .. }), "{err}");
    }

    #[test]
    fn a_second_daemon_on_the_same_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = StateDir::open(tmp.path()).unwrap();
        let err = StateDir::open(tmp.path()).err().unwrap();
        assert!(matches!(err, StateDirError::Locked { .. }), "{err}");
    }
}
