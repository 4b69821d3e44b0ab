//! The file `shoal cluster backup` writes and `shoal daemon --restore`
//! reads: a magic line, the encoded [`crate::StoreSnapshot`], and a
//! trailer of the body's length (8 bytes, big-endian) and SHA-256 (32
//! bytes). A file cut short, grown or damaged anywhere is refused whole:
//! protobuf alone would decode a body cut between two objects as a store
//! with fewer of them.

/// The first bytes of a backup file.
pub const MAGIC: &[u8] = b"SHOAL-BACKUP-2\n";
/// The first bytes of a backup made before files carried a digest.
const MAGIC_V1: &[u8] = b"SHOAL-BACKUP-1\n";
const TRAILER: usize = 8 + 32;

/// Why a file is not a backup that can be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    #[error("not a backup made by `shoal cluster backup`")]
    NotABackup,
    #[error("a backup made by an older shoal, without a digest to check it by; make a new one with `shoal cluster backup`")]
    WithoutDigest,
    #[error("the backup is cut short or grown: its trailer says {expected} bytes of store, the file holds {found}")]
    WrongLength { expected: u64, found: u64 },
    #[error("the backup is damaged: its SHA-256 does not match the one it was written with")]
    Damaged,
    #[error(
        "the backup is cut short: it ends before its trailer ({found} bytes after the first line)"
    )]
    NoTrailer { found: u64 },
}

/// Sums the body as it is written; [`BackupDigest::trailer`] ends the file.
pub struct BackupDigest {
    sha: ring::digest::Context,
    len: u64,
}

impl Default for BackupDigest {
    fn default() -> Self {
        BackupDigest {
            sha: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }
}

impl BackupDigest {
    pub fn update(&mut self, body: &[u8]) {
        self.sha.update(body);
        self.len += body.len() as u64;
    }

    /// The trailer for everything given to [`BackupDigest::update`].
    pub fn trailer(self) -> Vec<u8> {
        let mut out = self.len.to_be_bytes().to_vec();
        out.extend_from_slice(self.sha.finish().as_ref());
        out
    }
}

/// The body of the backup file `bytes`, checked against its trailer.
pub fn body(bytes: &[u8]) -> Result<&[u8], BackupError> {
    if bytes.starts_with(MAGIC_V1) {
        return Err(BackupError::WithoutDigest);
    }
    let rest = bytes.strip_prefix(MAGIC).ok_or(BackupError::NotABackup)?;
    if rest.len() < TRAILER {
        return Err(BackupError::NoTrailer {
            found: rest.len() as u64,
        });
    }
    let (body, trailer) = rest.split_at(rest.len() - TRAILER);
    let mut len = [0u8; 8];
    len.copy_from_slice(&trailer[..8]);
    let expected = u64::from_be_bytes(len);
    if expected != body.len() as u64 {
        return Err(BackupError::WrongLength {
            expected,
            found: body.len() as u64,
        });
    }
    let sum = ring::digest::digest(&ring::digest::SHA256, body);
    if sum.as_ref() != &trailer[8..] {
        return Err(BackupError::Damaged);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(body: &[u8]) -> Vec<u8> {
        let mut digest = BackupDigest::default();
        // Written in parts, as the stream gives them.
        for part in body.chunks(3) {
            digest.update(part);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(body);
        out.extend(digest.trailer());
        out
    }

    #[test]
    fn a_whole_backup_gives_back_its_body() {
        let body = b"the store, encoded".to_vec();
        assert_eq!(body_of(&file(&body)), Ok(body.as_slice()));
        assert_eq!(body_of(&file(b"")), Ok(&b""[..]));
    }

    fn body_of(bytes: &[u8]) -> Result<&[u8], BackupError> {
        body(bytes)
    }

    #[test]
    fn a_backup_cut_short_grown_or_damaged_anywhere_is_refused() {
        let whole = file(&[7u8; 100]);
        for cut in [whole.len() - 1, whole.len() - TRAILER] {
            assert!(
                matches!(body(&whole[..cut]), Err(BackupError::WrongLength { .. })),
                "cut at {cut}"
            );
        }
        assert_eq!(
            body(&whole[..MAGIC.len() + 3]),
            Err(BackupError::NoTrailer { found: 3 })
        );
        let mut grown = whole.clone();
        grown.insert(MAGIC.len() + 2, b'x');
        assert!(matches!(body(&grown), Err(BackupError::WrongLength { .. })));
        for at in MAGIC.len()..whole.len() {
            let mut damaged = whole.clone();
            damaged[at] ^= 0x01;
            assert!(
                body(&damaged).is_err(),
                "a flipped bit at {at} went through"
            );
        }
    }

    #[test]
    fn an_older_backup_or_another_file_is_refused_naming_why() {
        assert_eq!(
            body(b"SHOAL-BACKUP-1\nstore"),
            Err(BackupError::WithoutDigest)
        );
        assert_eq!(body(b"not a backup"), Err(BackupError::NotABackup));
    }
}
