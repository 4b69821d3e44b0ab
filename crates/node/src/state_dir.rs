//! The daemon's state dir: what is in it, and the checks that keep one
//! daemon from using a directory that is not its own.
//!
//! Layout: `shoal-state.json` (the marker: format, cluster id, node id, raft
//! id), `lock` (held with flock while a daemon runs), `raft/` (the raft log
//! and snapshot), `shoal.sock` (the control socket).
//!
//! A directory is accepted when it is empty or missing (a new cluster is
//! created) or when it holds a valid marker. Anything else, a foreign
//! directory, a damaged marker, a marker from another format, is refused with
//! the reason: a state dir is never silently reset.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const MARKER_FILE: &str = "shoal-state.json";
const LOCK_FILE: &str = "lock";
const RAFT_DIR: &str = "raft";
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
}

/// An open, locked state dir.
pub struct StateDir {
    path: PathBuf,
    marker: Marker,
    fresh: bool,
    _lock: nix::fcntl::Flock<File>,
}

impl StateDir {
    /// Opens `path`, creating a new identity (from `new_ids`) when it is empty
    /// or missing. Holds the lock until dropped.
    pub fn open(
        path: &Path,
        new_ids: impl FnOnce() -> (String, String),
    ) -> Result<StateDir, StateDirError> {
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
            let entries = std::fs::read_dir(path).map_err(io)?.count();
            if entries > 0 {
                return Err(StateDirError::Foreign { path: shown });
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
        let (marker, fresh) = if has_marker {
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
            // A marker without a raft log means the first start was cut off
            // before anything was acknowledged: initialize again.
            let fresh = !path.join(RAFT_DIR).join("raft.redb").exists();
            (marker, fresh)
        } else {
            let (cluster_id, node_id) = new_ids();
            let marker = Marker {
                format: FORMAT,
                cluster_id,
                node_id,
                raft_id: 1,
            };
            write_atomically(
                &marker_path,
                &serde_json::to_vec_pretty(&marker).unwrap_or_default(),
            )
            .map_err(io)?;
            (marker, true)
        };
        if fresh {
            // Leftovers of an interrupted first start.
            let raft = path.join(RAFT_DIR);
            if raft.exists() {
                std::fs::remove_dir_all(&raft).map_err(io)?;
            }
        }
        std::fs::create_dir_all(path.join(RAFT_DIR)).map_err(io)?;
        Ok(StateDir {
            path: path.to_path_buf(),
            marker,
            fresh,
            _lock: lock,
        })
    }

    /// Whether this start creates the cluster.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }
    pub fn marker(&self) -> &Marker {
        &self.marker
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

    fn ids() -> (String, String) {
        ("c1".into(), "n1".into())
    }

    #[test]
    fn empty_dir_becomes_a_new_state_dir_and_reopens_with_the_same_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let first = StateDir::open(&dir, ids).unwrap();
        assert!(first.is_fresh());
        let marker = first.marker().clone();
        drop(first);
        std::fs::write(dir.join("raft/raft.redb"), b"").unwrap();
        let again = StateDir::open(&dir, || panic!("must not make new ids")).unwrap();
        assert!(!again.is_fresh());
        assert_eq!(again.marker(), &marker);
    }

    #[test]
    fn foreign_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("notes.txt"), b"mine").unwrap();
        let err = StateDir::open(tmp.path(), ids).err().unwrap();
        assert!(matches!(err, StateDirError::Foreign { .. }), "{err}");
        assert!(tmp.path().join("notes.txt").exists());
    }

    #[test]
    fn damaged_marker_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(MARKER_FILE), b"{not json").unwrap();
        let err = StateDir::open(tmp.path(), ids).err().unwrap();
        assert!(matches!(err, StateDirError::BadMarker { .. }), "{err}");
    }

    #[test]
    fn a_second_daemon_on_the_same_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = StateDir::open(tmp.path(), ids).unwrap();
        let err = StateDir::open(tmp.path(), ids).err().unwrap();
        assert!(matches!(err, StateDirError::Locked { .. }), "{err}");
    }
}
