//! The node's certificate files in its state dir: the cluster's root
//! certificate it pins (`ca.crt`), its node certificate (`node.crt`) and
//! key (`node.key`, mode 0600). A manager issues its own from the root CA
//! in the store at start when they are missing, from another root, for
//! another identity, or past 80 % of their lifetime; each file is written
//! whole (a temporary file renamed over it), so a crash never leaves half
//! of one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_ca::{NodeIdentity, NodeKey, Role, RootCa};

/// The folder, in the state dir.
pub const CERTIFICATES_DIR: &str = "certificates";
const CA_FILE: &str = "ca.crt";
const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";
/// What a file of a new key and certificate pair is called until the pair
/// is complete.
const NEXT: &str = ".next";
use shoal_manager::certificate_authority::CLOCK_SKEW;

/// Why the node's certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertificatesError {
    #[error("the cluster has no root CA in the store yet")]
    NoRootCa,
    #[error("the cluster's root CA: {0}")]
    Ca(#[from] shoal_ca::CaError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The node's certificate files.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCertificates {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertificatesError + '_ {
    move |source| CertificatesError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Never prints the key.
impl std::fmt::Debug for NodeCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCertificates").finish_non_exhaustive()
    }
}

impl NodeCertificates {
    /// The files in `dir`, if all three are there. A new pair written
    /// halfway (a crash between its two renames, see [`Self::write`]) is
    /// finished first, so the key and certificate read are a pair whenever
    /// a pair was written.
    pub fn read(dir: &Path) -> Option<NodeCertificates> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let next = |name: &str| format!("{name}{NEXT}");
        let ca_pem = read(CA_FILE)?;
        let (key, cert) = (read(KEY_FILE), read(CERT_FILE));
        let (key_next, cert_next) = (read(&next(KEY_FILE)), read(&next(CERT_FILE)));
        let matches = |k: &Option<String>, c: &Option<String>| match (k, c) {
            (Some(k), Some(c)) => shoal_ca::key_matches_certificate(k, c),
            _ => false,
        };
        let finish = |name: &str| {
            let _ = std::fs::rename(dir.join(next(name)), dir.join(name));
        };
        if matches(&key, &cert) {
            // A new pair that never got its first rename is dropped.
            let _ = std::fs::remove_file(dir.join(next(KEY_FILE)));
            let _ = std::fs::remove_file(dir.join(next(CERT_FILE)));
        } else if matches(&key, &cert_next) {
            finish(CERT_FILE);
            return Some(NodeCertificates {
                ca_pem,
                cert_pem: cert_next?,
                key_pem: key?,
            });
        } else if matches(&key_next, &cert) {
            // The certificate's rename reached the disk, the key's did not.
            finish(KEY_FILE);
            return Some(NodeCertificates {
                ca_pem,
                cert_pem: cert?,
                key_pem: key_next?,
            });
        } else if matches(&key_next, &cert_next) {
            finish(KEY_FILE);
            finish(CERT_FILE);
            return Some(NodeCertificates {
                ca_pem,
                cert_pem: cert_next?,
                key_pem: key_next?,
            });
        }
        Some(NodeCertificates {
            ca_pem,
            cert_pem: cert?,
            key_pem: key?,
        })
    }

    /// Makes sure `dir` holds a current certificate of `node_id` in
    /// `role`, signed by the root CA of `cluster`, issuing one when not;
    /// returns the files.
    pub fn ensure(
        dir: &Path,
        cluster: Option<&shoal_api::Cluster>,
        node_id: &str,
        role: Role,
    ) -> Result<NodeCertificates, CertificatesError> {
        let cluster = cluster.ok_or(CertificatesError::NoRootCa)?;
        let (root, wanted) = root_and_identity(cluster, node_id, role)?;
        let now = SystemTime::now();
        let lifetime = shoal_manager::certificate_authority::node_cert_expiry(cluster);
        if let Some(current) = NodeCertificates::read(dir) {
            if current.ca_pem == root.cert_pem
                && current.still_good(&wanted, now, lifetime)
                && shoal_ca::key_matches_certificate(&current.key_pem, &current.cert_pem)
            {
                return Ok(current);
            }
        }
        NodeCertificates::issue(dir, cluster, node_id, role)
    }

    /// Issues a new key and certificate of `node_id` in `role` from the
    /// root CA of `cluster` (a manager's own), and writes them to `dir`.
    pub fn issue(
        dir: &Path,
        cluster: &shoal_api::Cluster,
        node_id: &str,
        role: Role,
    ) -> Result<NodeCertificates, CertificatesError> {
        let (root, wanted) = root_and_identity(cluster, node_id, role)?;
        let now = SystemTime::now();
        let lifetime = shoal_manager::certificate_authority::node_cert_expiry(cluster);
        let ca = RootCa::load(&root.cert_pem, &root.key_pem)?;
        let key = NodeKey::generate(node_id)?;
        let cert_pem = ca.issue(
            key.request_pem(),
            &wanted,
            &[],
            now - CLOCK_SKEW,
            now + lifetime,
        )?;
        let files = NodeCertificates {
            ca_pem: root.cert_pem.clone(),
            cert_pem,
            key_pem: key.key_pem().to_string(),
        };
        files.write(dir)?;
        Ok(files)
    }

    /// Writes the three files into `dir` (made 0700 when missing), each
    /// whole. The key and certificate are a pair: both are written under
    /// their next names first, then renamed in place, key first; a crash
    /// between the renames is finished by the next [`Self::read`].
    pub fn write(&self, dir: &Path) -> Result<(), CertificatesError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        write_whole(&dir.join(CA_FILE), &self.ca_pem, 0o644)?;
        let next = |name: &str| dir.join(format!("{name}{NEXT}"));
        write_whole(&next(KEY_FILE), &self.key_pem, 0o600)?;
        write_whole(&next(CERT_FILE), &self.cert_pem, 0o644)?;
        // Each rename made durable before the next, so the disk never
        // holds the certificate's without the key's.
        for name in [KEY_FILE, CERT_FILE] {
            std::fs::rename(next(name), dir.join(name)).map_err(io(dir))?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }

    /// The certificate followed by the root: the chain a node shows.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.ca_pem)
    }

    /// The root certificate, DER.
    pub fn ca_der(&self) -> Result<Vec<u8>, CertificatesError> {
        Ok(shoal_ca::certificate_der(&self.ca_pem)?)
    }

    /// When the certificate stops being valid (Unix seconds).
    pub fn not_after(&self) -> Result<i64, CertificatesError> {
        Ok(NodeIdentity::of_certificate_pem(&self.cert_pem)?.1)
    }

    /// Whether the certificate names `wanted` and has more than a fifth of
    /// `lifetime` left.
    fn still_good(&self, wanted: &NodeIdentity, now: SystemTime, lifetime: Duration) -> bool {
        let Ok((identity, not_after)) = NodeIdentity::of_certificate_pem(&self.cert_pem) else {
            return false;
        };
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let renew_at = not_after - (lifetime.as_secs() / 5) as i64;
        identity == *wanted && now < renew_at
    }
}

/// The root CA `cluster` keeps (with its key: a manager's), and the
/// identity of `node_id` in `role` in it.
fn root_and_identity<'a>(
    cluster: &'a shoal_api::Cluster,
    node_id: &str,
    role: Role,
) -> Result<(&'a shoal_api::RootCa, NodeIdentity), CertificatesError> {
    let root = cluster
        .root_ca
        .as_ref()
        .filter(|r| !r.cert_pem.is_empty() && !r.key_pem.is_empty())
        .ok_or(CertificatesError::NoRootCa)?;
    let identity = NodeIdentity {
        node_id: node_id.to_string(),
        role,
        cluster_id: cluster.id.clone(),
    };
    Ok((root, identity))
}

/// Writes `text` to a new temporary file beside `path` (its own name,
/// created with `mode` before a byte is written), syncs it, renames it over
/// `path` and syncs the directory.
fn write_whole(path: &Path, text: &str, mode: u32) -> Result<(), CertificatesError> {
    let mut temporary: PathBuf = path.to_path_buf().into_os_string().into();
    temporary.as_mut_os_string().push(".tmp");
    // A leftover of a crash may have another mode: never write into it.
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&temporary)(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io(&temporary))?;
    // The mode asked for is masked by the umask: set it before writing.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(&temporary))?;
    file.write_all(text.as_bytes()).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(id: &str) -> shoal_api::Cluster {
        let ca = RootCa::create(id, SystemTime::now()).unwrap();
        shoal_api::Cluster {
            id: id.into(),
            root_ca: Some(shoal_api::RootCa {
                cert_pem: ca.cert_pem().into(),
                key_pem: ca.key_pem().into(),
                digest: ca.digest().to_string(),
            }),
            ..Default::default()
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_manager_issues_its_certificate_once_and_keeps_its_key_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(CERTIFICATES_DIR);
        let c1 = cluster("c1");
        let first = NodeCertificates::ensure(&dir, Some(&c1), "n1", Role::Manager).unwrap();
        let (identity, _) = NodeIdentity::of_certificate_pem(&first.cert_pem).unwrap();
        assert_eq!(
            identity,
            NodeIdentity {
                node_id: "n1".into(),
                role: Role::Manager,
                cluster_id: "c1".into()
            }
        );
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(NodeCertificates::read(&dir), Some(first.clone()));
        // Current: kept as it is.
        let again = NodeCertificates::ensure(&dir, Some(&c1), "n1", Role::Manager).unwrap();
        assert_eq!(again, first);
        // Another identity, or another root: issued anew.
        let worker = NodeCertificates::ensure(&dir, Some(&c1), "n1", Role::Worker).unwrap();
        assert_ne!(worker.cert_pem, first.cert_pem);
        let c2 = cluster("c2");
        let moved = NodeCertificates::ensure(&dir, Some(&c2), "n1", Role::Worker).unwrap();
        assert_eq!(moved.ca_pem, c2.root_ca.unwrap().cert_pem);
    }

    #[test]
    fn a_certificate_past_four_fifths_of_its_life_is_renewed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(CERTIFICATES_DIR);
        let c1 = cluster("c1");
        let first = NodeCertificates::ensure(&dir, Some(&c1), "n1", Role::Manager).unwrap();
        // The same files, but with a certificate that ends in a day.
        let root = c1.root_ca.as_ref().unwrap();
        let ca = RootCa::load(&root.cert_pem, &root.key_pem).unwrap();
        let key = NodeKey::generate("n1").unwrap();
        let now = SystemTime::now();
        let identity = NodeIdentity {
            node_id: "n1".into(),
            role: Role::Manager,
            cluster_id: "c1".into(),
        };
        let short = ca
            .issue(
                key.request_pem(),
                &identity,
                &[],
                now - CLOCK_SKEW,
                now + Duration::from_secs(86_400),
            )
            .unwrap();
        write_whole(&dir.join(CERT_FILE), &short, 0o644).unwrap();
        write_whole(&dir.join(KEY_FILE), key.key_pem(), 0o600).unwrap();
        let renewed = NodeCertificates::ensure(&dir, Some(&c1), "n1", Role::Manager).unwrap();
        assert_ne!(renewed.cert_pem, short);
        assert_ne!(renewed.cert_pem, first.cert_pem);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_replaced_with_a_new_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(CERTIFICATES_DIR);
        let c1 = cluster("c1");
        let first = NodeCertificates::ensure(&dir, Some(&c1), "n1", Role::Manager).unwrap();
        // A crash between writing a new key and its certificate.
        let other = NodeKey::generate("n1").unwrap();
        write_whole(&dir.join(KEY_FILE), other.key_pem(), 0o600).unwrap();
        let pair = NodeCertificates::ensure(&dir, Some(&c1), "n1", Role::Manager).unwrap();
        assert_ne!(pair.cert_pem, first.cert_pem);
        assert!(shoal_ca::key_matches_certificate(
            &pair.key_pem,
            &pair.cert_pem
        ));
        assert!(!format!("{pair:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_pair_written_halfway_is_finished_on_the_next_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(CERTIFICATES_DIR);
        let c1 = cluster("c1");
        let old = NodeCertificates::ensure(&dir, Some(&c1), "n1", Role::Worker).unwrap();
        let new =
            NodeCertificates::issue(&tmp.path().join("other"), &c1, "n1", Role::Worker).unwrap();
        // Both next files written, the crash before any rename: the old
        // pair stands.
        write_whole(&dir.join("node.key.next"), &new.key_pem, 0o600).unwrap();
        write_whole(&dir.join("node.crt.next"), &new.cert_pem, 0o644).unwrap();
        assert_eq!(NodeCertificates::read(&dir), Some(old.clone()));
        assert!(!dir.join("node.key.next").exists());
        // The key renamed, the crash before the certificate: the new pair.
        write_whole(&dir.join("node.key"), &new.key_pem, 0o600).unwrap();
        write_whole(&dir.join("node.crt.next"), &new.cert_pem, 0o644).unwrap();
        assert_eq!(NodeCertificates::read(&dir), Some(new.clone()));
        assert!(!dir.join("node.crt.next").exists());
        assert_eq!(NodeCertificates::read(&dir), Some(new));
    }

    #[test]
    fn without_a_root_ca_in_the_store_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(CERTIFICATES_DIR);
        let bare = shoal_api::Cluster {
            id: "c1".into(),
            ..Default::default()
        };
        for cluster in [None, Some(&bare)] {
            let refused = NodeCertificates::ensure(&dir, cluster, "n1", Role::Manager);
            assert!(
                matches!(refused, Err(CertificatesError::NoRootCa)),
                "{refused:?}"
            );
        }
        assert!(!dir.exists());
    }
}
