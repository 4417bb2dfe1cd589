//! Reads batches out of a segment's log file with direct IO: a scanner that walks batch
//! headers (optionally checking CRCs) through a bounded read window, and the fetch read,
//! which checks the CRC of every batch it returns.
//!
//! Concurrency contract: single-threaded; a scanner owns its window and an `Rc` of the file,
//! so it never borrows log state across an await. Reads only cover `[start, end)` given by the
//! caller, which must be bytes already written (below the high watermark).

use crate::batch::{validate_stored_one, BatchHeader, RECORD_BATCH_HEADER_BYTES};
use crate::constants::{FETCH_READ_BYTES_MAX, MESSAGE_BYTES_MAX, SCAN_CHUNK_BYTES};
use crate::error::StorageError;
use bytes::Bytes;
use glommio::io::DmaFile;
use std::rc::Rc;

/// What `BatchScanner::next` checks about the base offset of the batch it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BaseOffsetCheck {
    Any,
    /// Exactly this offset (an index entry names the batch it points at).
    Exactly(i64),
    /// At least this offset: batches follow each other, with gaps where the log cleaner
    /// removed whole batches.
    AtLeast(i64),
}

pub(crate) enum ScanStep {
    Batch { position: u64, header: BatchHeader },
    End,
    Invalid { position: u64, reason: String },
}

pub(crate) struct BatchScanner {
    file: Rc<DmaFile>,
    end: u64,
    cursor: u64,
    window_start: u64,
    window: Vec<u8>,
}

impl BatchScanner {
    pub(crate) fn new(file: Rc<DmaFile>, start: u64, end: u64) -> BatchScanner {
        assert!(start <= end);
        BatchScanner {
            file,
            end,
            cursor: start,
            window_start: start,
            window: Vec::new(),
        }
    }

    /// Makes `[position, position + needed)` available in the window; false past `end`.
    async fn ensure(&mut self, position: u64, needed: usize) -> Result<bool, StorageError> {
        let Some(wanted_end) = position.checked_add(needed as u64) else {
            return Ok(false);
        };
        if wanted_end > self.end {
            return Ok(false);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if position >= self.window_start && wanted_end <= window_end {
            return Ok(true);
        }
        let read_len = (needed.max(SCAN_CHUNK_BYTES) as u64).min(self.end - position);
        let read = self.file.read_at(position, read_len as usize).await?;
        self.window.clear();
        self.window.extend_from_slice(&read);
        self.window_start = position;
        Ok(self.window.len() >= needed)
    }

    /// Bytes of `[position, position + len)`; must have been made available by `next`.
    pub(crate) fn bytes(&self, position: u64, len: usize) -> &[u8] {
        assert!(position >= self.window_start);
        let from = (position - self.window_start) as usize;
        &self.window[from..from + len]
    }

    /// The next batch. `base_check` checks offset continuity; `verify` checks the CRC and
    /// record count (and loads the whole batch into the window).
    pub(crate) async fn next(
        &mut self,
        base_check: BaseOffsetCheck,
        verify: bool,
    ) -> Result<ScanStep, StorageError> {
        let position = self.cursor;
        if position == self.end {
            return Ok(ScanStep::End);
        }
        let invalid = |reason: String| Ok(ScanStep::Invalid { position, reason });
        if !self.ensure(position, RECORD_BATCH_HEADER_BYTES).await? {
            return invalid(format!("torn header: {} bytes left", self.end - position));
        }
        let header = match BatchHeader::parse(self.bytes(position, RECORD_BATCH_HEADER_BYTES)) {
            Ok(header) => header,
            Err(error) => return invalid(format!("bad header: {error}")),
        };
        let size = header.total_size_bytes();
        if size > MESSAGE_BYTES_MAX || position + size as u64 > self.end {
            return invalid(format!("torn batch of {size} bytes"));
        }
        let base_ok = match base_check {
            BaseOffsetCheck::Any => true,
            BaseOffsetCheck::Exactly(expected) => header.base_offset == expected,
            BaseOffsetCheck::AtLeast(expected) => header.base_offset >= expected,
        };
        if !base_ok {
            return invalid(format!(
                "base offset {} where {base_check:?} expected",
                header.base_offset
            ));
        }
        if verify {
            if !self.ensure(position, size).await? {
                return invalid(format!("torn batch of {size} bytes"));
            }
            let bytes = self.bytes(position, size);
            if let Err(error) = validate_stored_one(bytes, MESSAGE_BYTES_MAX) {
                return invalid(format!("bad batch: {error}"));
            }
        }
        self.cursor = position + size as u64;
        Ok(ScanStep::Batch { position, header })
    }

    /// Skips batches ending before `offset`; returns the one containing or following it.
    pub(crate) async fn seek(
        &mut self,
        offset: i64,
    ) -> Result<Option<(u64, BatchHeader)>, StorageError> {
        loop {
            match self.next(BaseOffsetCheck::Any, false).await? {
                ScanStep::Batch { position, header } if header.last_offset() >= offset => {
                    return Ok(Some((position, header)))
                }
                ScanStep::Batch { .. } => {}
                ScanStep::End => return Ok(None),
                ScanStep::Invalid { position, reason } => {
                    return Err(StorageError::Corrupt(format!(
                        "at position {position}: {reason}"
                    )))
                }
            }
        }
    }
}

/// Whole batches from the one containing `from`, up to `max_bytes` (always at least one),
/// stopping before any batch whose base offset is >= `high_watermark`.
pub(crate) async fn read_batches(
    file: Rc<DmaFile>,
    start: u64,
    end: u64,
    from: i64,
    max_bytes: usize,
    high_watermark: i64,
) -> Result<Bytes, StorageError> {
    let mut scanner = BatchScanner::new(file, start, end);
    let Some((first_position, first)) = scanner.seek(from).await? else {
        return Ok(Bytes::new());
    };
    if first.base_offset >= high_watermark {
        return Ok(Bytes::new());
    }
    let budget = max_bytes
        .min(FETCH_READ_BYTES_MAX)
        .max(first.total_size_bytes());
    let window_len = (budget as u64).min(end - first_position) as usize;
    let window_end = first_position + window_len as u64;
    let mut scanner = BatchScanner::new(scanner.file.clone(), first_position, window_end);
    if !scanner.ensure(first_position, window_len).await? {
        return Err(StorageError::Corrupt(format!(
            "short read at position {first_position}"
        )));
    }
    // Every batch served from disk has its CRC checked (hardware CRC32C costs far less than
    // the read): recovery only scans the tail segments, so bit rot in an older one shows up
    // here. A bad first batch is an error; a bad later one ends the read before it.
    let mut taken = 0usize;
    loop {
        match scanner.next(BaseOffsetCheck::Any, true).await? {
            ScanStep::Batch { header, .. } if header.base_offset < high_watermark => {
                taken += header.total_size_bytes();
            }
            ScanStep::Invalid { position, reason } if taken == 0 => {
                tracing::error!(position, %reason, "refusing to serve a corrupt batch");
                return Err(StorageError::Corrupt(format!(
                    "batch at position {position}: {reason}"
                )));
            }
            ScanStep::Batch { .. } | ScanStep::End | ScanStep::Invalid { .. } => break,
        }
    }
    assert!(taken >= first.total_size_bytes());
    Ok(Bytes::copy_from_slice(scanner.bytes(first_position, taken)))
}
