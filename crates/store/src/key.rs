//! The ids and names the tables are keyed by: held inline when short (every
//! id Shoal makes is 25 bytes, most names are short), shared otherwise.
//!
//! Why not `String` or `Arc<str>`: a write copies the path of persistent-map
//! nodes to what it changes, and a node holds up to 64 keys. Copying a
//! `String` key allocates, and an `Arc<str>` key touches a reference count
//! somewhere else in memory; with 200,000 networks those per-key costs were
//! most of a replica's apply. An inline key is copied with its node's bytes.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// Bytes held inline at most: a key is then 32 bytes, as large as its
/// shared form's pointer plus the inline length and tag.
const INLINE: usize = 30;

/// An immutable string key, cheap to clone. Compares, orders and hashes
/// exactly as the `str` it holds, so maps keyed by it are searched with a
/// `&str`.
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl Key {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                // Checking the bytes again on every compare of a map search
                // was a tenth of a search.
                // SAFETY: only `From<&str>` fills `bytes[..len]`, with the
                // bytes of one whole `str`, and nothing changes them after:
                // they are valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(&bytes[..usize::from(*len)]) }
            }
            Repr::Shared(s) => s,
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Key(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            Key(Repr::Shared(Arc::from(s)))
        }
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key::from(s.as_str())
    }
}

impl Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// As `str` hashes, so a `&str` finds its key in a hashed map.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::hash_map::DefaultHasher;

    fn hash_of<T: Hash + ?Sized>(t: &T) -> u64 {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        h.finish()
    }

    #[test]
    fn a_key_is_no_larger_than_32_bytes() {
        assert!(std::mem::size_of::<Key>() <= 32);
    }

    /// The edge between inline and shared, in bytes, with text whose
    /// characters are several bytes long and straddle it.
    #[test]
    fn keys_around_the_inline_limit_hold_their_strings() {
        let mut cases: Vec<String> = (28..=33).map(|n| "a".repeat(n)).collect();
        cases.push("é".repeat(15)); // 30 bytes
        cases.push(format!("a{}", "é".repeat(15))); // 31 bytes
        cases.push("日本".repeat(5)); // 30 bytes
        cases.push(String::new());
        for s in &cases {
            let k = Key::from(s.as_str());
            assert_eq!(k.as_str(), s);
            assert_eq!(hash_of(&k), hash_of(s.as_str()));
        }
        let mut keys: Vec<Key> = cases.iter().map(|s| Key::from(s.as_str())).collect();
        keys.sort();
        let mut strings = cases.clone();
        strings.sort();
        assert!(keys
            .iter()
            .map(Key::as_str)
            .eq(strings.iter().map(String::as_str)));
    }

    proptest! {
        /// Keys short and long alike compare, order and hash as their
        /// strings do: a map keyed by them is searched with a `&str` and
        /// iterates in string order.
        #[test]
        fn keys_behave_as_the_strings_they_hold(a in ".{0,40}", b in ".{0,40}") {
            let (ka, kb) = (Key::from(a.as_str()), Key::from(b.clone()));
            prop_assert_eq!(ka.as_str(), a.as_str());
            prop_assert_eq!(kb.as_str(), b.as_str());
            prop_assert_eq!(ka.cmp(&kb), a.as_str().cmp(b.as_str()));
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(hash_of(&ka), hash_of(a.as_str()));
            prop_assert_eq!(ka.clone(), ka);
        }
    }
}
