//! All partition logs of one shard, whatever their engine: open (idempotent), lookup, remove,
//! close, retention, compaction, stats.
//!
//! Concurrency contract: one `LogManager` per shard, single-threaded. Opens are serialised by
//! `open_lock` so two tasks opening the same partition never recover the same directory
//! twice; the map borrow is never held across an await.

use crate::constants::COMPACTION_KEY_MAP_BYTES_MAX;
use crate::error::StorageError;
use crate::log::{CompactionOutcome, LogConfig, LogStats, PartitionLog};
use glommio::io::DmaFile;
use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Name of the probe file `probe_direct_io` keeps in the data directory.
const PROBE_FILE_NAME: &str = ".direct_io_probe";

/// Bytes of the probe file: one sector, 4096.
const PROBE_FILE_BYTES: usize = crate::constants::SECTOR_BYTES as usize;

/// Opens and reads a small non-empty file with `DmaFile::open`. On virtio ext4 here, DMA
/// reads fail with EOPNOTSUPP (os error 95) in an executor that has not done this first
/// (glommio #670), so the broker calls it once per shard at start.
pub async fn probe_direct_io(data_dir: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(PROBE_FILE_NAME);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        std::fs::write(&path, vec![0x52u8; PROBE_FILE_BYTES])?;
    }
    let file = DmaFile::open(&path).await?;
    let read = file.read_at(0, PROBE_FILE_BYTES).await;
    file.close().await?;
    let read = read?;
    if read.is_empty() {
        return Err(StorageError::Corrupt(format!(
            "{}: probe read returned nothing",
            path.display()
        )));
    }
    Ok(())
}

type PartitionKey = (String, i32);

pub struct LogManager {
    data_dir: PathBuf,
    logs: RefCell<HashMap<PartitionKey, Rc<PartitionLog>>>,
    open_lock: Semaphore,
}

impl LogManager {
    pub fn new(data_dir: PathBuf) -> LogManager {
        LogManager {
            data_dir,
            logs: RefCell::new(HashMap::new()),
            open_lock: Semaphore::new(1),
        }
    }

    /// `<data_dir>/<topic>/<partition>/`.
    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.data_dir.join(topic).join(partition.to_string())
    }

    /// Opens (recovering) the partition log, or returns the one already open.
    pub async fn open(
        &self,
        topic: &str,
        partition: i32,
        config: LogConfig,
    ) -> Result<Rc<PartitionLog>, StorageError> {
        if let Some(log) = self.get(topic, partition) {
            return Ok(log);
        }
        let _permit = self.open_lock.acquire_permit(1).await?;
        if let Some(log) = self.get(topic, partition) {
            return Ok(log);
        }
        if topic.is_empty()
            || topic.contains(['/', '\0'])
            || topic == "."
            || topic == ".."
            || partition < 0
        {
            return Err(StorageError::InvalidArgument(format!(
                "bad partition {topic}/{partition}"
            )));
        }
        let log = PartitionLog::open(self.partition_dir(topic, partition), config).await?;
        self.logs
            .borrow_mut()
            .insert((topic.to_string(), partition), log.clone());
        Ok(log)
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<Rc<PartitionLog>> {
        self.logs
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Closes the log and deletes its directory.
    pub async fn remove(&self, topic: &str, partition: i32) -> Result<(), StorageError> {
        let log = self
            .logs
            .borrow_mut()
            .remove(&(topic.to_string(), partition));
        if let Some(log) = log {
            log.close().await?;
        }
        let dir = self.partition_dir(topic, partition);
        match std::fs::remove_dir_all(&dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
            _ => Ok(()),
        }
    }

    /// Closes every log; returns the first error after trying them all.
    pub async fn close_all(&self) -> Result<(), StorageError> {
        let logs: Vec<Rc<PartitionLog>> =
            self.logs.borrow_mut().drain().map(|(_, log)| log).collect();
        let mut result = Ok(());
        for log in logs {
            if let Err(error) = log.close().await {
                tracing::error!(%error, "closing partition log failed");
                result = Err(error);
            }
        }
        result
    }

    pub async fn enforce_retention_all(&self, now_ms: i64) -> Result<(), StorageError> {
        let logs: Vec<Rc<PartitionLog>> = self.logs.borrow().values().cloned().collect();
        let mut result = Ok(());
        for log in logs {
            match log.enforce_retention(now_ms).await {
                Ok(()) | Err(StorageError::Closed) | Err(StorageError::TruncateInProgress) => {}
                Err(error) => result = Err(error),
            }
        }
        result
    }

    /// One log-cleaner pass over every compacted log that is due, one log at a time (so the
    /// shard holds one key map of at most `COMPACTION_KEY_MAP_BYTES_MAX`). A failing log is
    /// logged and skipped; the others still run. Returns the passes that ran.
    pub async fn compact_all(&self, now_ms: i64) -> Vec<CompactionOutcome> {
        let logs: Vec<Rc<PartitionLog>> = self
            .logs
            .borrow()
            .values()
            .filter(|log| log.config().cleanup_policy.compacts())
            .cloned()
            .collect();
        let mut outcomes = Vec::new();
        for log in logs {
            match log.compact(now_ms, COMPACTION_KEY_MAP_BYTES_MAX).await {
                Ok(Some(outcome)) => outcomes.push(outcome),
                Ok(None) | Err(StorageError::Closed) | Err(StorageError::TruncateInProgress) => {}
                Err(error) => tracing::warn!(%error, "log cleaner pass failed"),
            }
        }
        outcomes
    }

    pub fn partition_count(&self) -> usize {
        self.logs.borrow().len()
    }

    /// Counters summed over every open log of this shard (for `/metrics`).
    pub fn stats(&self) -> LogStats {
        let mut total = LogStats::default();
        for log in self.logs.borrow().values() {
            total.add(&log.stats());
        }
        total
    }
}
