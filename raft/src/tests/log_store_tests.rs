//! The log store: openraft's own storage suite, then our mapping (entries are record batches,
//! terms are leader epochs, control batches for blank and membership) and reopening.

use super::{open_log, produced_batch, run, stored_headers};
use crate::runtime::LocalOneshot;
use crate::{
    DigestStateMachine, Membership, PartitionEntry, PartitionLogId, PartitionLogStore,
    PartitionPayload, PartitionRaft, PartitionVote, RecordBatch,
};
use openraft::impls::leader_id_std::LeaderId;
use openraft::rt::Oneshot;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use rmq_storage::PartitionLog;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Builds each suite case a fresh partition log in its own directory.
struct PartitionStoreBuilder {
    root: PathBuf,
    next: AtomicU64,
}

/// Removes a suite case's directory when the case ends.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl StoreBuilder<PartitionRaft, PartitionLogStore, DigestStateMachine, DirGuard>
    for PartitionStoreBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (DirGuard, PartitionLogStore, DigestStateMachine),
        openraft::StorageError<PartitionRaft>,
    > {
        let dir = self.root.join(format!(
            "case-{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        let log = open_log(&dir).await;
        let store = PartitionLogStore::open(log, dir.clone())
            .await
            .expect("open log store");
        Ok((DirGuard(dir), store, DigestStateMachine::default()))
    }
}

#[test]
fn openraft_storage_suite_passes_on_the_partition_log_store() {
    run("storage-suite", |dir| async move {
        let builder = PartitionStoreBuilder {
            root: dir,
            next: AtomicU64::new(0),
        };
        Suite::test_all(builder)
            .await
            .expect("openraft storage suite");
    });
}

/// The partition log in `dir` and a log store over it.
async fn open_store(dir: &Path) -> (Rc<PartitionLog>, PartitionLogStore) {
    let log = open_log(dir).await;
    let store = PartitionLogStore::open(log.clone(), dir.to_path_buf())
        .await
        .expect("open log store");
    (log, store)
}

fn entry(term: u64, index: u64, payload: PartitionPayload) -> PartitionEntry {
    PartitionEntry {
        log_id: PartitionLogId::new_term_index(term, index),
        payload,
    }
}

fn normal(records: i32, tag: u8) -> PartitionPayload {
    PartitionPayload::Normal(RecordBatch::new(produced_batch(records, tag)).expect("valid batch"))
}

fn membership(voters: &[u64]) -> PartitionPayload {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    PartitionPayload::Membership(Membership::new_with_defaults(vec![voters], []))
}

/// Appends and waits for openraft's durability callback.
async fn append_durably(store: &mut PartitionLogStore, entries: Vec<PartitionEntry>) {
    let (sender, receiver) = LocalOneshot::channel();
    store
        .append(entries, IOFlushed::signal(sender))
        .await
        .expect("append");
    receiver
        .await
        .expect("callback fired")
        .expect("entries durable");
}

/// What a payload is, without comparing batch bytes (the log rewrote offset and epoch).
fn kind(payload: &PartitionPayload) -> String {
    match payload {
        PartitionPayload::Blank => "blank".into(),
        PartitionPayload::Membership(m) => format!("membership {:?}", m.get_joint_config()),
        PartitionPayload::Normal(batch) => {
            let header = batch.header();
            format!(
                "batch crc={:x} records={}",
                header.crc, header.records_count
            )
        }
    }
}

async fn read_all(store: &mut PartitionLogStore) -> Vec<PartitionEntry> {
    let mut reader = store.get_log_reader().await;
    reader.try_get_log_entries(..).await.expect("read entries")
}

#[test]
fn entries_are_record_batches_with_the_term_as_leader_epoch() {
    run("entries-are-batches", |dir| async move {
        let (log, mut store) = open_store(&dir).await;
        let written = vec![
            entry(1, 0, membership(&[1, 2, 3])),
            entry(1, 1, PartitionPayload::Blank),
            entry(1, 2, normal(3, b'a')),
            entry(2, 3, normal(1, b'b')),
        ];
        let expected: Vec<_> = written
            .iter()
            .map(|e| (e.log_id, kind(&e.payload)))
            .collect();
        append_durably(&mut store, written).await;

        let read = read_all(&mut store).await;
        let actual: Vec<_> = read.iter().map(|e| (e.log_id, kind(&e.payload))).collect();
        assert_eq!(actual, expected);
        let PartitionPayload::Normal(batch) = &read[2].payload else {
            panic!("entry 2 is a batch");
        };
        assert_eq!(batch.header().base_offset, 2, "offsets are the log's");

        // The Kafka view: one batch per entry; control batches for blank and membership; the
        // term in partitionLeaderEpoch; dense offsets (3 records take 3 offsets).
        let headers = stored_headers(&log).await;
        let view: Vec<_> = headers
            .iter()
            .map(|h| {
                (
                    h.base_offset,
                    h.last_offset(),
                    h.is_control(),
                    h.partition_leader_epoch,
                )
            })
            .collect();
        assert_eq!(
            view,
            vec![
                (0, 0, true, 1),
                (1, 1, true, 1),
                (2, 4, false, 1),
                (5, 5, false, 2)
            ]
        );
        assert_eq!(store.base_offset_of(3).map(|o| o.0), Some(5));
        log.close().await.expect("close");
    });
}

#[test]
fn an_append_notice_reports_the_offsets_the_batch_got_and_is_not_stored() {
    run("append-notice", |dir| async move {
        let (log, mut store) = open_store(&dir).await;
        let (notice, appended) = flume::bounded(2);
        let tagged = |records, tag| {
            let batch = RecordBatch::new(produced_batch(records, tag)).expect("valid batch");
            PartitionPayload::Normal(batch.with_append_notice(notice.clone()))
        };
        let plain = RecordBatch::new(produced_batch(2, b'p')).expect("valid batch");
        assert_eq!(
            plain.clone().with_append_notice(notice.clone()),
            plain,
            "a notice does not change what the batch is"
        );
        append_durably(
            &mut store,
            vec![
                entry(1, 0, PartitionPayload::Blank),
                entry(1, 1, tagged(3, b'a')),
                entry(1, 2, PartitionPayload::Normal(plain)),
                entry(1, 3, tagged(1, b'b')),
            ],
        )
        .await;
        drop(notice);
        let reported: Vec<(i64, i64)> = appended.drain().collect();
        assert_eq!(
            reported,
            vec![(1, 3), (6, 6)],
            "(base, last) per tagged batch"
        );
        for entry in read_all(&mut store).await {
            if let PartitionPayload::Normal(batch) = entry.payload {
                assert!(batch.appended.is_none(), "read back without a notice");
            }
        }
        log.close().await.expect("close");
    });
}

#[test]
fn reopen_rebuilds_the_index_and_keeps_vote_committed_and_purge() {
    run("reopen", |dir| async move {
        let (log, mut store) = open_store(&dir).await;
        let written: Vec<_> = (0..6)
            .map(|index| {
                let term = if index < 2 { 1 } else { 2 };
                entry(term, index, normal(2, b'a' + index as u8))
            })
            .collect();
        append_durably(&mut store, written).await;
        let vote = PartitionVote {
            leader_id: LeaderId {
                term: 2,
                voted_for: 1,
            },
            committed: true,
        };
        store.save_vote(&vote).await.expect("vote");
        let committed = PartitionLogId::new_term_index(2, 3);
        store
            .save_committed(Some(committed))
            .await
            .expect("committed");
        store
            .purge(PartitionLogId::new_term_index(1, 1))
            .await
            .expect("purge");
        store
            .truncate_after(Some(PartitionLogId::new_term_index(2, 4)))
            .await
            .expect("truncate");
        let cut_end = log.log_end_offset();
        log.close().await.expect("close");

        let log = open_log(&dir).await;
        assert_eq!(log.log_end_offset(), cut_end, "truncation reached the disk");
        let mut store = PartitionLogStore::open(log.clone(), dir.clone())
            .await
            .expect("reopen");
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(
            state.last_purged_log_id,
            Some(PartitionLogId::new_term_index(1, 1))
        );
        assert_eq!(
            state.last_log_id,
            Some(PartitionLogId::new_term_index(2, 4))
        );
        assert_eq!(
            store.read_committed().await.expect("committed"),
            Some(committed)
        );
        let mut reader = store.get_log_reader().await;
        assert_eq!(reader.read_vote().await.expect("vote"), Some(vote));
        let indexes: Vec<u64> = read_all(&mut store)
            .await
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(indexes, vec![2, 3, 4]);

        append_durably(&mut store, vec![entry(3, 5, PartitionPayload::Blank)]).await;
        assert_eq!(
            store.base_offset_of(5),
            Some(cut_end),
            "the next entry follows the cut"
        );
        log.close().await.expect("close");
    });
}

#[test]
fn purge_beyond_the_log_end_anchors_the_next_entry_at_the_log_end() {
    run("purge-beyond-end", |dir| async move {
        let (log, mut store) = open_store(&dir).await;
        let written: Vec<_> = (0..3).map(|i| entry(1, i, normal(1, b'x'))).collect();
        append_durably(&mut store, written).await;
        // As after installing a snapshot that ends at index 10.
        let snapshot_last = PartitionLogId::new_term_index(4, 10);
        store.purge(snapshot_last).await.expect("purge");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(snapshot_last));
        assert!(read_all(&mut store).await.is_empty());

        append_durably(&mut store, vec![entry(4, 11, normal(2, b'y'))]).await;
        assert_eq!(store.base_offset_of(11).map(|o| o.0), Some(3));
        log.close().await.expect("close");

        let (log, mut store) = open_store(&dir).await;
        let entries = read_all(&mut store).await;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].log_id, PartitionLogId::new_term_index(4, 11));
        log.close().await.expect("close");
    });
}

#[test]
fn a_log_with_batches_but_no_raft_meta_is_refused() {
    run("no-meta", |dir| async move {
        let log = open_log(&dir).await;
        let payload = produced_batch(1, b'z');
        let headers = rmq_storage::validate_batches(&payload, 1 << 20).expect("valid");
        log.append(bytes::BytesMut::from(&payload[..]), &headers, 0, 0)
            .expect("append");
        let opened = PartitionLogStore::open(log.clone(), dir.to_path_buf()).await;
        assert!(opened.is_err());
        assert!(!Path::new(&dir).join("raft.meta").exists());
        log.close().await.expect("close");
    });
}

#[test]
fn the_vote_is_saved_in_a_partition_directory_named_by_a_relative_path() {
    run("relative-dir", |dir| async move {
        let cwd = std::env::current_dir().expect("cwd");
        let relative = dir
            .strip_prefix(&cwd)
            .expect("test dirs live under the crate dir");
        assert!(relative.is_relative());
        let (log, mut store) = open_store(relative).await;
        let vote = PartitionVote {
            leader_id: LeaderId {
                term: 3,
                voted_for: 2,
            },
            committed: true,
        };
        store
            .save_vote(&vote)
            .await
            .expect("save a vote under a relative path");
        log.close().await.expect("close");
        let (log, mut store) = open_store(&dir).await;
        let mut reader = store.get_log_reader().await;
        assert_eq!(reader.read_vote().await.expect("read vote"), Some(vote));
        log.close().await.expect("close");
    });
}
