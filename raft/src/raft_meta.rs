//! The sidecar of a partition's Raft log, `<partition dir>/raft.meta`: what the record batches
//! themselves cannot say — the vote, the committed and purged log ids, and the anchor that
//! maps Raft indexes to Kafka offsets (the first live entry's index and the offset where it
//! starts, or will start when the live log is empty).
//!
//! Written atomically: `raft.meta.tmp` is written and fdatasynced, renamed over `raft.meta`,
//! and the directory is fsynced, so a crash leaves the old or the new file, never a mix. The
//! file is 79 bytes: magic, version, flags, eight u64 / i64 fields, CRC32C of all before it.
//! Storage recovery ignores files with other extensions, so the sidecar lives beside the
//! segments.
//!
//! Concurrency contract: one writer per log (the log store, whose calls openraft serializes);
//! reads happen only at open.

use crate::entry_codec::{invalid_data, Reader};
use crate::{PartitionLogId, PartitionVote};
use openraft::impls::leader_id_std::LeaderId;
use std::io;
use std::path::{Path, PathBuf};

const META_FILE_NAME: &str = "raft.meta";
const META_TEMP_FILE_NAME: &str = "raft.meta.tmp";
const MAGIC: &[u8; 8] = b"RMQRAFT\0";
const VERSION: u16 = 1;
const FLAG_VOTE: u8 = 1;
const FLAG_VOTE_COMMITTED: u8 = 1 << 1;
const FLAG_COMMITTED: u8 = 1 << 2;
const FLAG_PURGED: u8 = 1 << 3;
const FLAGS_KNOWN: u8 = FLAG_VOTE | FLAG_VOTE_COMMITTED | FLAG_COMMITTED | FLAG_PURGED;
/// 8 magic + 2 version + 1 flags + 8 fields * 8 + 4 CRC.
pub const META_FILE_BYTES: usize = 8 + 2 + 1 + 8 * 8 + 4;

/// Everything the sidecar holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftMeta {
    pub vote: Option<PartitionVote>,
    pub committed: Option<PartitionLogId>,
    pub purged: Option<PartitionLogId>,
    /// Raft index of the first live (unpurged) entry: `purged.index + 1` (0 if nothing was
    /// purged) unless the first entry appended to an empty log had a later index.
    pub first_index: u64,
    /// Kafka offset where the batch of entry `first_index` starts (or will be appended).
    pub first_offset: i64,
}

impl RaftMeta {
    /// A group that never held an entry, whose first batch will land at `first_offset`.
    pub fn empty(first_offset: i64) -> RaftMeta {
        RaftMeta {
            vote: None,
            committed: None,
            purged: None,
            first_index: 0,
            first_offset,
        }
    }

    pub fn encode(&self) -> [u8; META_FILE_BYTES] {
        let mut flags = 0u8;
        let (vote_term, vote_node) = match &self.vote {
            Some(vote) => {
                flags |= FLAG_VOTE;
                if vote.committed {
                    flags |= FLAG_VOTE_COMMITTED;
                }
                (vote.leader_id.term, vote.leader_id.voted_for)
            }
            None => (0, 0),
        };
        let (committed_term, committed_index) = log_id_parts(&self.committed);
        let (purged_term, purged_index) = log_id_parts(&self.purged);
        if self.committed.is_some() {
            flags |= FLAG_COMMITTED;
        }
        if self.purged.is_some() {
            flags |= FLAG_PURGED;
        }
        let mut out = [0u8; META_FILE_BYTES];
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_be_bytes());
        out[10] = flags;
        let fields = [
            vote_term,
            vote_node,
            committed_term,
            committed_index,
            purged_term,
            purged_index,
            self.first_index,
            self.first_offset as u64,
        ];
        for (position, field) in fields.iter().enumerate() {
            let at = 11 + position * 8;
            out[at..at + 8].copy_from_slice(&field.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out[..META_FILE_BYTES - 4]);
        out[META_FILE_BYTES - 4..].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses and checks (CRC, magic, version, flags, field relations) a sidecar's bytes.
    pub fn decode(bytes: &[u8]) -> io::Result<RaftMeta> {
        if bytes.len() != META_FILE_BYTES {
            return Err(invalid_data(format!(
                "raft.meta is {} bytes, expected {META_FILE_BYTES}",
                bytes.len()
            )));
        }
        let mut reader = Reader::new(bytes);
        let magic = reader.bytes(8)?;
        let version = reader.u16()?;
        let flags = reader.u8()?;
        let mut fields = [0u64; 8];
        for field in fields.iter_mut() {
            *field = reader.u64()?;
        }
        let stored_crc = reader.u32()?;
        let computed_crc = crc32c::crc32c(&bytes[..META_FILE_BYTES - 4]);
        if stored_crc != computed_crc {
            return Err(invalid_data("raft.meta CRC mismatch"));
        }
        if magic != MAGIC || version != VERSION || flags & !FLAGS_KNOWN != 0 {
            return Err(invalid_data("raft.meta has an unknown format"));
        }
        let [vote_term, vote_node, committed_term, committed_index, purged_term, purged_index, first_index, first_offset] =
            fields;
        let vote = (flags & FLAG_VOTE != 0).then_some(PartitionVote {
            leader_id: LeaderId {
                term: vote_term,
                voted_for: vote_node,
            },
            committed: flags & FLAG_VOTE_COMMITTED != 0,
        });
        let committed = (flags & FLAG_COMMITTED != 0)
            .then(|| PartitionLogId::new_term_index(committed_term, committed_index));
        let purged = (flags & FLAG_PURGED != 0)
            .then(|| PartitionLogId::new_term_index(purged_term, purged_index));
        let meta = RaftMeta {
            vote,
            committed,
            purged,
            first_index,
            first_offset: first_offset as i64,
        };
        let first_index_min = meta
            .purged
            .as_ref()
            .map_or(Some(0), |p| p.index.checked_add(1));
        if first_index_min.is_none_or(|min| meta.first_index < min) || meta.first_offset < 0 {
            return Err(invalid_data("raft.meta anchor is below the purged id"));
        }
        Ok(meta)
    }
}

fn log_id_parts(log_id: &Option<PartitionLogId>) -> (u64, u64) {
    log_id
        .as_ref()
        .map_or((0, 0), |log_id| (log_id.leader_id.term, log_id.index))
}

pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join(META_FILE_NAME)
}

/// The sidecar in `dir`, or `None` if the group never wrote one. Blocking; open time only.
pub fn read_meta(dir: &Path) -> io::Result<Option<RaftMeta>> {
    match std::fs::read(meta_path(dir)) {
        Ok(bytes) => RaftMeta::decode(&bytes).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Replaces the sidecar in `dir` atomically (see the module comment), through glommio so the
/// shard does not block on the fsyncs. `dir` must be absolute: glommio's `Directory::open`
/// fails with EBADF on a relative path.
pub async fn write_meta(dir: &Path, meta: &RaftMeta) -> io::Result<()> {
    let temp = dir.join(META_TEMP_FILE_NAME);
    let file = glommio::io::BufferedFile::create(&temp).await?;
    let bytes = meta.encode().to_vec();
    let written = file.write_at(bytes, 0).await;
    let synced = match written {
        Ok(count) if count == META_FILE_BYTES => file.fdatasync().await.map_err(io::Error::from),
        Ok(count) => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("raft.meta.tmp: wrote {count} of {META_FILE_BYTES} bytes"),
        )),
        Err(error) => Err(io::Error::from(error)),
    };
    file.close().await?;
    synced?;
    glommio::io::rename(&temp, meta_path(dir)).await?;
    let directory = glommio::io::Directory::open(dir).await?;
    let synced = directory.sync().await;
    directory.close().await?;
    synced?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_rejects_a_flipped_bit() {
        let meta = RaftMeta {
            vote: Some(PartitionVote {
                leader_id: LeaderId {
                    term: 7,
                    voted_for: 3,
                },
                committed: true,
            }),
            committed: Some(PartitionLogId::new_term_index(6, 41)),
            purged: Some(PartitionLogId::new_term_index(5, 20)),
            first_index: 21,
            first_offset: 1_234,
        };
        let mut bytes = meta.encode();
        assert_eq!(RaftMeta::decode(&bytes).expect("decode"), meta);
        bytes[20] ^= 1;
        assert!(RaftMeta::decode(&bytes).is_err());
        let empty = RaftMeta::empty(0);
        assert_eq!(RaftMeta::decode(&empty.encode()).expect("decode"), empty);
    }
}
