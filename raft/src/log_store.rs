//! The Raft log of a partition IS its partition log: openraft's `RaftLogStorage` over an
//! `rmq_storage::PartitionLog` (file engine), with no second copy of any entry.
//!
//! Mapping (see `entry_codec` for the bytes):
//! - one Raft entry = one record batch, in index order, without holes: the live entries
//!   `first_index ..` are the batches from Kafka offset `first_offset` to the log end, the k-th
//!   batch being entry `first_index + k`; the pair is the anchor kept in `raft.meta`;
//! - the entry's term is the batch's `partitionLeaderEpoch` (so term <= i32::MAX);
//! - Kafka offsets are assigned by the log as usual: replicas that hold the same entries from
//!   the same anchor assign the same offsets.
//!
//! In memory: the base offset and term of every live entry (16 bytes each; purging after a
//! snapshot bounds them), rebuilt at open by reading the batch headers from `first_offset`.
//!
//! Readers (Kafka fetches) see committed entries only: every commit moves the log's commit
//! point (`PartitionLog::set_commit_limit`) to the end of the last committed batch.
//!
//! Purge is logical: the anchor moves past the purged entries and `raft.meta` is rewritten;
//! their batches stay in the segments until the log start can be advanced (storage has no such
//! call yet), and retention must not delete live entries. Truncation cuts the log with
//! `PartitionLog::truncate`.
//!
//! Durability: `append` returns once the batches are in the log (readable after their write);
//! the openraft callback fires from a separate task once `wait_durable` covers them, so
//! concurrent appends share one fdatasync (the log's group commit). Truncation first waits for
//! those callbacks, so none reports on entries cut under it.
//!
//! Concurrency contract: single-threaded. openraft calls the store's methods one at a time;
//! readers (replication, state machine) run concurrently and take `io_lock` shared, truncation
//! takes it exclusively. `RefCell` borrows never span an await.

use crate::constants::{COMMITTED_PERSIST_INTERVAL, LOG_READ_CHUNK_BYTES};
use crate::entry_codec::{decode_entry, encode_payload, invalid_data};
use crate::raft_meta::{read_meta, write_meta, RaftMeta};
use crate::runtime::{LocalWatch, LocalWatchReceiver, LocalWatchSender};
use crate::{PartitionEntry, PartitionLogId, PartitionRaft, PartitionVote};
use bytes::BytesMut;
use openraft::rt::{Watch, WatchReceiver, WatchSender};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use rmq_storage::constants::PENDING_BYTES_MAX;
use rmq_storage::{AppendOutcome, BatchHeader, Offset, PartitionLog, StorageEngine, StorageError};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where one live entry's batch starts, and its term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryLocation {
    base_offset: i64,
    term: u64,
}

/// The index of the live entries plus what `raft.meta` holds.
struct LogIndex {
    meta: RaftMeta,
    /// Entry `meta.first_index + k` is `entries[k]`.
    entries: VecDeque<EntryLocation>,
    meta_written_at: Instant,
}

impl LogIndex {
    fn next_index(&self) -> u64 {
        self.meta.first_index + self.entries.len() as u64
    }

    fn position(&self, index: u64) -> Option<usize> {
        let position = usize::try_from(index.checked_sub(self.meta.first_index)?).ok()?;
        (position < self.entries.len()).then_some(position)
    }

    fn location(&self, index: u64) -> Option<EntryLocation> {
        self.position(index).map(|position| self.entries[position])
    }

    /// The Kafka offset just past entry `index` (the end of its batch): where readers may
    /// read up to once it is committed. `log_end` is the log's next offset (the end of the last
    /// entry). Entries before the live ones (purged) end at the anchor.
    fn end_offset_of(&self, index: u64, log_end: i64) -> i64 {
        if index < self.meta.first_index {
            return self.meta.first_offset;
        }
        match self.location(index + 1) {
            Some(next) => next.base_offset,
            None => log_end,
        }
    }

    /// Readers of the partition see what is committed (`PartitionLog::set_commit_limit`).
    fn publish_commit(&self, log: &PartitionLog) {
        let end = match self.meta.committed {
            Some(committed) => self.end_offset_of(committed.index, log.log_end_offset().0),
            None => self.meta.first_offset,
        };
        if log.commit_limit().is_none_or(|limit| end > limit.0) {
            log.set_commit_limit(Offset(end));
        }
    }

    fn last_log_id(&self) -> Option<PartitionLogId> {
        match self.entries.back() {
            Some(last) => Some(PartitionLogId::new_term_index(
                last.term,
                self.next_index() - 1,
            )),
            None => self.meta.purged,
        }
    }
}

struct Shared {
    log: Rc<PartitionLog>,
    dir: PathBuf,
    index: RefCell<LogIndex>,
    /// Reads hold it shared, truncation exclusively: a read never meets a log being cut.
    io_lock: glommio::sync::RwLock<()>,
}

/// openraft's log storage for one partition; see the module comment.
pub struct PartitionLogStore {
    shared: Rc<Shared>,
    /// Appends not yet written by the log's writer: (last offset, bytes), oldest first. Kept so
    /// that we wait for the writer instead of hitting the log's `Backpressure` error.
    unwritten: VecDeque<(i64, usize)>,
    unwritten_bytes: usize,
    flushes_started: u64,
    flushes_done_sender: LocalWatchSender<u64>,
    flushes_done: LocalWatchReceiver<u64>,
}

/// Reads entries for replication and for the state machine.
pub struct PartitionLogReader {
    shared: Rc<Shared>,
}

pub(crate) fn storage_error(error: StorageError) -> io::Error {
    match error {
        StorageError::Io(error) => error,
        other => io::Error::other(other.to_string()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

impl PartitionLogStore {
    /// Opens the Raft log kept in `log`, whose directory is `dir` (where `raft.meta` lives). A
    /// log without `raft.meta` must be empty: the group starts there. Must run inside a glommio
    /// executor; only the file engine is supported (the memory engine evicts live entries).
    pub async fn open(log: Rc<PartitionLog>, dir: PathBuf) -> io::Result<PartitionLogStore> {
        // Once here for every later `write_meta` (glommio refuses relative directories), so a
        // node on `--data-dir rmq-data` can save votes.
        let dir = std::path::absolute(&dir)?;
        if log.engine() != StorageEngine::File {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a Raft log needs the file engine",
            ));
        }
        let meta = match read_meta(&dir)? {
            Some(meta) => meta,
            None => {
                if log.log_start_offset() != log.log_end_offset() {
                    return Err(invalid_data(format!(
                        "{}: the log holds batches but no raft.meta",
                        dir.display()
                    )));
                }
                let meta = RaftMeta::empty(log.log_end_offset().0);
                write_meta(&dir, &meta).await?;
                meta
            }
        };
        let entries = scan_locations(&log, &meta).await?;
        let (flushes_done_sender, flushes_done) = LocalWatch::channel(0u64);
        let index = LogIndex {
            meta,
            entries,
            meta_written_at: Instant::now(),
        };
        index.publish_commit(&log);
        Ok(PartitionLogStore {
            shared: Rc::new(Shared {
                log,
                dir,
                index: RefCell::new(index),
                io_lock: glommio::sync::RwLock::new(()),
            }),
            unwritten: VecDeque::new(),
            unwritten_bytes: 0,
            flushes_started: 0,
            flushes_done_sender,
            flushes_done,
        })
    }

    /// The partition log this Raft log lives in (what Kafka reads).
    pub fn log(&self) -> &Rc<PartitionLog> {
        &self.shared.log
    }

    /// Kafka offset of entry `index`'s batch, if the entry is live.
    pub fn base_offset_of(&self, index: u64) -> Option<Offset> {
        let index_state = self.shared.index.borrow();
        index_state
            .location(index)
            .map(|location| Offset(location.base_offset))
    }

    async fn persist_meta(&mut self, meta: RaftMeta) -> io::Result<()> {
        write_meta(&self.shared.dir, &meta).await?;
        let mut index = self.shared.index.borrow_mut();
        index.meta = meta;
        index.meta_written_at = Instant::now();
        Ok(())
    }

    /// Waits for the log's writer until `incoming` more bytes fit under its pending limit.
    async fn make_room(&mut self, incoming: usize) -> io::Result<()> {
        loop {
            let written_end = self.shared.log.high_watermark().0;
            while let Some(&(last_offset, bytes)) = self.unwritten.front() {
                if last_offset >= written_end {
                    break;
                }
                self.unwritten.pop_front();
                self.unwritten_bytes -= bytes;
            }
            let fits = (self.unwritten_bytes + incoming) as u64 <= PENDING_BYTES_MAX;
            match self.unwritten.front() {
                Some(&(last_offset, _)) if !fits => self
                    .shared
                    .log
                    .wait_written(Offset(last_offset))
                    .await
                    .map_err(storage_error)?,
                _ => return Ok(()),
            }
        }
    }

    /// Appends one encoded entry; returns its (base, last) offsets.
    async fn append_batch(
        &mut self,
        bytes: BytesMut,
        header: BatchHeader,
        term: u64,
    ) -> io::Result<(i64, i64)> {
        let leader_epoch = i32::try_from(term).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("term {term} does not fit Kafka's i32 partitionLeaderEpoch"),
            )
        })?;
        let size = bytes.len();
        self.make_room(size).await?;
        let outcome = self
            .shared
            .log
            .append(bytes, &[header], leader_epoch, now_ms())
            .map_err(storage_error)?;
        match outcome {
            AppendOutcome::Appended {
                base_offset,
                last_offset,
            } => {
                self.unwritten.push_back((last_offset.0, size));
                self.unwritten_bytes += size;
                Ok((base_offset.0, last_offset.0))
            }
            AppendOutcome::Duplicate { .. } => Err(invalid_data(
                "an idempotent duplicate reached the Raft log: deduplicate before proposing",
            )),
        }
    }

    /// An empty live log accepts its first entry at any later index (openraft's storage suite
    /// starts logs at index 1; openraft itself starts at 0 or after a purge): the anchor moves
    /// to that index at the log end, in `raft.meta` before the batch is appended.
    async fn anchor_if_empty(&mut self, entry_index: u64) -> io::Result<()> {
        let meta = {
            let index = self.shared.index.borrow();
            if !index.entries.is_empty() || entry_index == index.meta.first_index {
                return Ok(());
            }
            assert!(
                entry_index > index.meta.first_index,
                "entry {entry_index} below the first index {}",
                index.meta.first_index
            );
            RaftMeta {
                first_index: entry_index,
                first_offset: self.shared.log.log_end_offset().0,
                ..index.meta.clone()
            }
        };
        self.shared.log.flush().await.map_err(storage_error)?;
        self.persist_meta(meta).await
    }

    /// Reports `callback` once everything up to `last_offset` is durable.
    fn spawn_flush(&mut self, last_offset: i64, callback: IOFlushed<PartitionRaft>) {
        self.flushes_started += 1;
        let log = self.shared.log.clone();
        let done = self.flushes_done_sender.clone();
        glommio::spawn_local(async move {
            let result = log
                .wait_durable(Offset(last_offset))
                .await
                .map_err(storage_error);
            callback.io_completed(result);
            done.send_if_modified(|count| {
                *count += 1;
                true
            });
        })
        .detach();
    }

    async fn wait_for_flushes(&mut self) -> io::Result<()> {
        let started = self.flushes_started;
        self.flushes_done
            .wait_until_ge(&started)
            .await
            .map(|_| ())
            .map_err(|_| io::Error::other("flush tracking closed"))
    }
}

/// The live entries' locations: the batch headers from `meta.first_offset` to the log end.
async fn scan_locations(
    log: &PartitionLog,
    meta: &RaftMeta,
) -> io::Result<VecDeque<EntryLocation>> {
    let log_start = log.log_start_offset().0;
    let log_end = log.log_end_offset().0;
    if meta.first_offset < log_start || meta.first_offset > log_end {
        return Err(invalid_data(format!(
            "raft.meta anchor offset {} outside the log [{log_start}, {log_end}]",
            meta.first_offset
        )));
    }
    let mut entries = VecDeque::new();
    let mut last_term = meta
        .purged
        .as_ref()
        .map_or(0, |purged| purged.leader_id.term);
    let mut offset = meta.first_offset;
    while offset < log_end {
        let bytes = log
            .read_uncommitted(Offset(offset), LOG_READ_CHUNK_BYTES)
            .await
            .map_err(storage_error)?;
        let mut position = 0;
        while position < bytes.len() {
            let header = BatchHeader::parse(&bytes[position..])
                .map_err(|error| invalid_data(error.to_string()))?;
            let term = u64::try_from(header.partition_leader_epoch)
                .map_err(|_| invalid_data("a Raft batch without a leader epoch"))?;
            if header.base_offset != offset || term < last_term {
                return Err(invalid_data(format!(
                    "batch at {} (epoch {term}) breaks the Raft log at offset {offset}",
                    header.base_offset
                )));
            }
            entries.push_back(EntryLocation {
                base_offset: offset,
                term,
            });
            last_term = term;
            offset = header.last_offset() + 1;
            position += header.total_size_bytes();
        }
        if position == 0 {
            return Err(invalid_data(format!(
                "no batch readable at offset {offset}"
            )));
        }
    }
    Ok(entries)
}

impl PartitionLogReader {
    /// Entries `start..end` that are live, in order. The offsets come from the in-memory index
    /// and every batch read is checked against it (base offset and term).
    async fn read_entries(&self, start: u64, end: u64) -> io::Result<Vec<PartitionEntry>> {
        let _shared_guard = self
            .shared
            .io_lock
            .read()
            .await
            .map_err(|error| io::Error::other(error.to_string()))?;
        let (first_index, locations, end_offset) = {
            let index = self.shared.index.borrow();
            let start = start.max(index.meta.first_index);
            let end = end.min(index.next_index());
            if start >= end {
                return Ok(Vec::new());
            }
            let locations: Vec<EntryLocation> = (start..end)
                .map(|i| index.location(i).expect("in range"))
                .collect();
            let end_offset = match index.location(end) {
                Some(next) => next.base_offset,
                None => self.shared.log.log_end_offset().0,
            };
            (start, locations, end_offset)
        };
        self.shared
            .log
            .wait_written(Offset(end_offset - 1))
            .await
            .map_err(storage_error)?;
        let mut entries = Vec::with_capacity(locations.len());
        while entries.len() < locations.len() {
            let from = locations[entries.len()].base_offset;
            let bytes = self
                .shared
                .log
                .read_uncommitted(Offset(from), LOG_READ_CHUNK_BYTES)
                .await
                .map_err(storage_error)?;
            let mut position = 0;
            while position < bytes.len() && entries.len() < locations.len() {
                let header = BatchHeader::parse(&bytes[position..])
                    .map_err(|error| invalid_data(error.to_string()))?;
                let size = header.total_size_bytes();
                let expected = locations[entries.len()];
                let epoch_matches =
                    u64::try_from(header.partition_leader_epoch) == Ok(expected.term);
                if header.base_offset != expected.base_offset
                    || !epoch_matches
                    || position + size > bytes.len()
                {
                    return Err(invalid_data(format!(
                        "batch at offset {} is not the entry the index expects at {}",
                        header.base_offset, expected.base_offset
                    )));
                }
                let log_id = PartitionLogId::new_term_index(
                    expected.term,
                    first_index + entries.len() as u64,
                );
                let batch = bytes.slice(position..position + size);
                entries.push(decode_entry(log_id, batch, &header)?);
                position += size;
            }
            if position == 0 {
                return Err(invalid_data(format!("no batch readable at offset {from}")));
            }
        }
        Ok(entries)
    }
}

fn index_range<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(start) => *start,
        Bound::Excluded(start) => start.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(end) => end.saturating_add(1),
        Bound::Excluded(end) => *end,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<PartitionRaft> for PartitionLogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<PartitionEntry>, io::Error> {
        let (start, end) = index_range(&range);
        self.read_entries(start, end).await
    }

    async fn read_vote(&mut self) -> Result<Option<PartitionVote>, io::Error> {
        Ok(self.shared.index.borrow().meta.vote)
    }
}

impl RaftLogStorage<PartitionRaft> for PartitionLogStore {
    type LogReader = PartitionLogReader;

    async fn get_log_state(&mut self) -> Result<LogState<PartitionRaft>, io::Error> {
        let index = self.shared.index.borrow();
        Ok(LogState {
            last_purged_log_id: index.meta.purged,
            last_log_id: index.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        PartitionLogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &PartitionVote) -> Result<(), io::Error> {
        let meta = {
            let index = self.shared.index.borrow();
            if let Some(current) = &index.meta.vote {
                assert!(
                    vote.partial_cmp(current) != Some(std::cmp::Ordering::Less),
                    "vote goes back: {current} -> {vote}"
                );
            }
            RaftMeta {
                vote: Some(*vote),
                ..index.meta.clone()
            }
        };
        self.persist_meta(meta).await
    }

    async fn save_committed(&mut self, committed: Option<PartitionLogId>) -> Result<(), io::Error> {
        let meta = {
            let mut index = self.shared.index.borrow_mut();
            assert!(
                committed >= index.meta.committed,
                "committed goes back: {:?} -> {committed:?}",
                index.meta.committed
            );
            index.meta.committed = committed;
            index.publish_commit(&self.shared.log);
            if index.meta_written_at.elapsed() < COMMITTED_PERSIST_INTERVAL {
                return Ok(());
            }
            index.meta.clone()
        };
        self.persist_meta(meta).await
    }

    async fn read_committed(&mut self) -> Result<Option<PartitionLogId>, io::Error> {
        Ok(self.shared.index.borrow().meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<PartitionRaft>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = PartitionEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut last_offset = None;
        for entry in entries {
            let log_id = entry.log_id;
            self.anchor_if_empty(log_id.index).await?;
            {
                let index = self.shared.index.borrow();
                assert_eq!(
                    log_id.index,
                    index.next_index(),
                    "entries are appended without holes"
                );
                if let Some(last) = index.last_log_id() {
                    assert!(
                        log_id.leader_id >= last.leader_id,
                        "terms never decrease along the log: {last} then {log_id}"
                    );
                }
            }
            let (bytes, header, notice) = encode_payload(entry.payload)?;
            let term = log_id.leader_id.term;
            let (base_offset, last) = self.append_batch(bytes, header, term).await?;
            if let Some(notice) = notice {
                // The proposer may have given up waiting: nobody to tell then.
                let _ = notice.try_send((base_offset, last));
            }
            self.shared
                .index
                .borrow_mut()
                .entries
                .push_back(EntryLocation { base_offset, term });
            last_offset = Some(last);
        }
        match last_offset {
            Some(last) => self.spawn_flush(last, callback),
            None => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<PartitionLogId>,
    ) -> Result<(), io::Error> {
        let next_index = last_log_id.map_or(0, |log_id| log_id.index + 1);
        let (cut_offset, keep) = {
            let index = self.shared.index.borrow();
            if let Some(purged) = &index.meta.purged {
                assert!(
                    next_index > purged.index,
                    "truncation below the purged {purged}"
                );
            }
            if let Some(committed) = &index.meta.committed {
                assert!(
                    next_index > committed.index,
                    "truncation of committed {committed}"
                );
            }
            if let Some(kept) = &last_log_id {
                if let Some(location) = index.location(kept.index) {
                    assert_eq!(
                        location.term, kept.leader_id.term,
                        "truncation keeps {kept}"
                    );
                }
            }
            if next_index >= index.next_index() {
                return Ok(());
            }
            let keep = index.position(next_index).expect("a live entry");
            (index.entries[keep].base_offset, keep)
        };
        self.wait_for_flushes().await?;
        let _exclusive = self
            .shared
            .io_lock
            .write()
            .await
            .map_err(|error| io::Error::other(error.to_string()))?;
        self.shared
            .log
            .truncate(Offset(cut_offset))
            .await
            .map_err(storage_error)?;
        assert_eq!(self.shared.log.log_end_offset().0, cut_offset);
        self.shared.index.borrow_mut().entries.truncate(keep);
        self.unwritten.clear();
        self.unwritten_bytes = 0;
        Ok(())
    }

    async fn purge(&mut self, log_id: PartitionLogId) -> Result<(), io::Error> {
        let beyond_end = {
            let index = self.shared.index.borrow();
            if let Some(purged) = &index.meta.purged {
                assert!(log_id >= *purged, "purge goes back: {purged} -> {log_id}");
                if log_id.index == purged.index {
                    return Ok(());
                }
            }
            if let Some(location) = index.location(log_id.index) {
                assert_eq!(location.term, log_id.leader_id.term, "purging {log_id}");
            }
            log_id.index + 1 >= index.next_index()
        };
        if beyond_end {
            // The next entry starts at the log end: make that end durable before recording it.
            self.shared.log.flush().await.map_err(storage_error)?;
        }
        let meta = {
            let index = self.shared.index.borrow();
            let first_index = log_id.index + 1;
            let first_offset = match index.location(first_index) {
                Some(location) => location.base_offset,
                None => self.shared.log.log_end_offset().0,
            };
            RaftMeta {
                purged: Some(log_id),
                first_index,
                first_offset,
                ..index.meta.clone()
            }
        };
        write_meta(&self.shared.dir, &meta).await?;
        // Anchor and index change in one borrow, so a reader never sees one without the other.
        let mut index = self.shared.index.borrow_mut();
        let dropped = usize::try_from(meta.first_index - index.meta.first_index)
            .map_or(index.entries.len(), |count| count.min(index.entries.len()));
        index.entries.drain(..dropped);
        index.meta = meta;
        index.meta_written_at = Instant::now();
        Ok(())
    }
}
