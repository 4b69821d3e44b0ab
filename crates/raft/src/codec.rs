//! The on-disk and on-wire form of log entries.
//!
//! A normal entry is its log id followed by the raw protobuf batch, so a write
//! is encoded once; membership entries (rare) go through JSON.
//!
//! Layout: `term u64 | leader node u64 | index u64 | tag u8 | payload`, all
//! integers big-endian.

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

use crate::types::{Proposal, TypeConfig};

const TAG_BLANK: u8 = 0;
const TAG_NORMAL: u8 = 1;
const TAG_MEMBERSHIP: u8 = 2;
const HEADER_BYTES: usize = 25;

/// Why bytes are not an entry.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("log entry is {0} bytes, shorter than its {HEADER_BYTES}-byte header")]
    Short(usize),
    #[error("log entry has unknown payload tag {0}")]
    Tag(u8),
    #[error("membership entry is not valid JSON: {0}")]
    Membership(#[from] serde_json::Error),
}

pub fn encode_entry(entry: &Entry<TypeConfig>) -> Vec<u8> {
    let membership;
    let (tag, payload): (u8, &[u8]) = match &entry.payload {
        EntryPayload::Blank => (TAG_BLANK, &[]),
        EntryPayload::Normal(p) => (TAG_NORMAL, &p.batch),
        EntryPayload::Membership(m) => {
            membership = serde_json::to_vec(m).unwrap_or_default();
            (TAG_MEMBERSHIP, &membership)
        }
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    encode_log_id(&entry.log_id, &mut out);
    out.push(tag);
    out.extend_from_slice(payload);
    out
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, CodecError> {
    if bytes.len() < HEADER_BYTES {
        return Err(CodecError::Short(bytes.len()));
    }
    let log_id = decode_log_id(&bytes[..24]);
    let payload = &bytes[HEADER_BYTES..];
    let payload = match bytes[24] {
        TAG_BLANK => EntryPayload::Blank,
        TAG_NORMAL => EntryPayload::Normal(Proposal {
            batch: payload.to_vec(),
        }),
        TAG_MEMBERSHIP => EntryPayload::Membership(serde_json::from_slice(payload)?),
        tag => return Err(CodecError::Tag(tag)),
    };
    Ok(Entry { log_id, payload })
}

pub fn encode_log_id(log_id: &LogId<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(&log_id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&log_id.leader_id.node_id.to_be_bytes());
    out.extend_from_slice(&log_id.index.to_be_bytes());
}

pub fn decode_log_id(bytes: &[u8]) -> LogId<u64> {
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_be_bytes(b)
    };
    LogId::new(CommittedLeaderId::new(word(0), word(1)), word(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{BasicNode, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn every_entry_kind_survives_encoding() {
        let log_id = LogId::new(CommittedLeaderId::new(7, 3), 42);
        let membership = Membership::new(
            vec![BTreeSet::from([1u64])],
            BTreeMap::from([(1u64, BasicNode::new("127.0.0.1:1"))]),
        );
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(Proposal {
                batch: vec![1, 2, 3],
            }),
            EntryPayload::Membership(membership),
        ] {
            let entry = Entry::<TypeConfig> { log_id, payload };
            let decoded = decode_entry(&encode_entry(&entry)).expect("decodes");
            assert_eq!(decoded, entry);
        }
    }

    #[test]
    fn truncated_entry_is_an_error_not_a_panic() {
        assert!(matches!(decode_entry(&[0; 10]), Err(CodecError::Short(10))));
        let mut bytes = vec![0u8; 24];
        bytes.push(9);
        assert!(matches!(decode_entry(&bytes), Err(CodecError::Tag(9))));
    }
}
