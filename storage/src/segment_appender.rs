//! Append-only direct-IO file: the log file of a segment and its two index files.
//!
//! Every write starts at a sector-aligned position: the unaligned tail (the bytes of the last,
//! partial sector) is kept in memory and rewritten together with the new bytes, zero-padded to
//! `SECTOR_BYTES`. The file therefore may end in zero padding until `finish` ftruncates it;
//! recovery knows how to cut that padding.
//!
//! Concurrency contract: single-threaded; at most one write in flight per appender (asserted).
//! The owning log serialises writers with its IO lock. A completed `sync` covers every write
//! that completed before it started.

use crate::constants::{SECTOR_BYTES, WRITE_CHUNK_BYTES};
use crate::error::StorageError;
use bytes::Bytes;
use glommio::io::{DmaFile, OpenOptions};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub(crate) struct SegmentAppender {
    path: PathBuf,
    file: Rc<DmaFile>,
    /// Logical end of the file contents (padding excluded).
    size_bytes: Cell<u64>,
    /// Bytes `[align_down(size), size)`, always shorter than one sector.
    tail: RefCell<Vec<u8>>,
    write_in_flight: Cell<bool>,
}

fn align_down(value: u64) -> u64 {
    value - value % SECTOR_BYTES
}

fn align_up(value: usize) -> usize {
    let sector = SECTOR_BYTES as usize;
    value.div_ceil(sector) * sector
}

/// Copies bytes from `parts`, starting at `cursor` (part index, offset in part), into `dst`.
fn copy_from_parts(dst: &mut [u8], parts: &[Bytes], cursor: &mut (usize, usize)) {
    let mut filled = 0;
    while filled < dst.len() {
        let part = &parts[cursor.0];
        let take = (part.len() - cursor.1).min(dst.len() - filled);
        dst[filled..filled + take].copy_from_slice(&part[cursor.1..cursor.1 + take]);
        filled += take;
        cursor.1 += take;
        if cursor.1 == part.len() {
            *cursor = (cursor.0 + 1, 0);
        }
    }
}

impl SegmentAppender {
    /// Opens (or creates) `path` read-write for direct IO. `fresh` truncates an existing file.
    /// The logical size starts as the file size; recovery cuts it with `truncate`.
    pub(crate) async fn open(path: &Path, fresh: bool) -> Result<SegmentAppender, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(fresh)
            .dma_open(path)
            .await?;
        assert!(SECTOR_BYTES.is_multiple_of(file.alignment()));
        let size_bytes = file.file_size().await?;
        let appender = SegmentAppender {
            path: path.to_path_buf(),
            file: Rc::new(file),
            size_bytes: Cell::new(size_bytes),
            tail: RefCell::new(Vec::new()),
            write_in_flight: Cell::new(false),
        };
        appender.load_tail().await?;
        Ok(appender)
    }

    /// Opens an existing `path` (never creating it) whose contents end at `size_bytes`: the
    /// logical size remembered when it was closed, which the file (maybe zero-padded) must
    /// reach.
    pub(crate) async fn open_existing(
        path: &Path,
        size_bytes: u64,
    ) -> Result<SegmentAppender, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await?;
        assert!(SECTOR_BYTES.is_multiple_of(file.alignment()));
        let file_size = match file.file_size().await {
            Ok(size) => size,
            Err(error) => {
                let _ = file.close().await;
                return Err(error.into());
            }
        };
        let appender = SegmentAppender {
            path: path.to_path_buf(),
            file: Rc::new(file),
            size_bytes: Cell::new(size_bytes),
            tail: RefCell::new(Vec::new()),
            write_in_flight: Cell::new(false),
        };
        let loaded = if file_size < size_bytes {
            Err(StorageError::Corrupt(format!(
                "{}: {file_size} bytes, {size_bytes} expected",
                path.display()
            )))
        } else {
            appender.load_tail().await
        };
        if let Err(error) = loaded {
            appender.close().await;
            return Err(error);
        }
        Ok(appender)
    }

    /// True while a clone of the `DmaFile` is held (a read in flight).
    pub(crate) fn file_in_use(&self) -> bool {
        Rc::strong_count(&self.file) > 1
    }

    /// Closes the file, freeing its descriptor now; errors are logged (nothing was pending:
    /// callers close only files with no write in flight). A file still shared is dropped.
    pub(crate) async fn close(self) {
        assert!(!self.write_in_flight.get());
        if let Ok(file) = Rc::try_unwrap(self.file) {
            if let Err(error) = file.close().await {
                tracing::warn!(file = %self.path.display(), %error, "closing a segment file failed");
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> Rc<DmaFile> {
        self.file.clone()
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes.get()
    }

    async fn load_tail(&self) -> Result<(), StorageError> {
        let size = self.size_bytes.get();
        let tail_len = (size % SECTOR_BYTES) as usize;
        let mut tail = Vec::new();
        if tail_len > 0 {
            let read = self
                .file
                .read_at_aligned(align_down(size), SECTOR_BYTES as usize)
                .await?;
            if read.len() < tail_len {
                return Err(StorageError::Corrupt(format!(
                    "{}: short read of tail sector",
                    self.path.display()
                )));
            }
            tail.extend_from_slice(&read[..tail_len]);
        }
        *self.tail.borrow_mut() = tail;
        Ok(())
    }

    /// Appends `parts` in order, in chunks of at most `WRITE_CHUNK_BYTES`.
    pub(crate) async fn append(&self, parts: &[Bytes]) -> Result<(), StorageError> {
        let total: usize = parts.iter().map(Bytes::len).sum();
        let parts: Vec<Bytes> = parts.iter().filter(|p| !p.is_empty()).cloned().collect();
        let mut cursor = (0usize, 0usize);
        let mut remaining = total;
        while remaining > 0 {
            let taken = self.write_chunk(&parts, &mut cursor, remaining).await?;
            remaining -= taken;
        }
        assert_eq!(cursor.0, parts.len());
        Ok(())
    }

    async fn write_chunk(
        &self,
        parts: &[Bytes],
        cursor: &mut (usize, usize),
        remaining: usize,
    ) -> Result<usize, StorageError> {
        let size = self.size_bytes.get();
        let (buffer, position, content, new_tail, take) = {
            let tail = self.tail.borrow();
            assert_eq!(tail.len() as u64, size % SECTOR_BYTES);
            let take = remaining.min(WRITE_CHUNK_BYTES - tail.len());
            let content = tail.len() + take;
            let mut buffer = self.file.alloc_dma_buffer(align_up(content));
            let bytes = buffer.as_bytes_mut();
            bytes[..tail.len()].copy_from_slice(&tail);
            copy_from_parts(&mut bytes[tail.len()..content], parts, cursor);
            bytes[content..].fill(0);
            let new_tail_len = content % SECTOR_BYTES as usize;
            let new_tail = bytes[content - new_tail_len..content].to_vec();
            (buffer, align_down(size), content, new_tail, take)
        };
        let buffer_len = buffer.len();
        #[cfg(test)]
        fault_injection::maybe_fail_write()?;
        assert!(!self.write_in_flight.replace(true), "two writes in flight");
        let result = self.file.write_at(buffer, position).await;
        self.write_in_flight.set(false);
        let written = result?;
        if written != buffer_len {
            return Err(StorageError::Io(std::io::Error::other(format!(
                "{}: short write {written} of {buffer_len} at {position}",
                self.path.display()
            ))));
        }
        self.size_bytes.set(position + content as u64);
        *self.tail.borrow_mut() = new_tail;
        Ok(take)
    }

    /// fdatasync: every write completed before this call is durable when it returns.
    pub(crate) async fn sync(&self) -> Result<(), StorageError> {
        assert!(!self.write_in_flight.get());
        self.file.fdatasync().await?;
        Ok(())
    }

    /// Cuts the file to `size_bytes` (padding or a torn tail) and reloads the tail sector.
    pub(crate) async fn truncate(&self, size_bytes: u64) -> Result<(), StorageError> {
        assert!(!self.write_in_flight.get());
        self.file.truncate(size_bytes).await?;
        self.size_bytes.set(size_bytes);
        self.load_tail().await
    }

    /// Removes the zero padding after the logical end (not made durable).
    pub(crate) async fn trim_padding(&self) -> Result<(), StorageError> {
        assert!(!self.write_in_flight.get());
        self.file.truncate(self.size_bytes.get()).await?;
        Ok(())
    }

    /// Removes the zero padding after the logical end and makes the file durable.
    pub(crate) async fn finish(&self) -> Result<(), StorageError> {
        self.trim_padding().await?;
        self.sync().await
    }

    /// Unlinks the file; readers holding the handle can still read it.
    pub(crate) async fn remove(&self) -> Result<(), StorageError> {
        self.file.remove().await?;
        Ok(())
    }
}

/// Test-only disk faults: the next N data writes of this thread fail with ENOSPC, as a full
/// filesystem would fail them (each test runs its own executor thread).
#[cfg(test)]
pub(crate) mod fault_injection {
    use crate::error::StorageError;
    use std::cell::Cell;

    thread_local! {
        static NO_SPACE_WRITES: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn fail_next_writes_with_no_space(count: u64) {
        NO_SPACE_WRITES.with(|left| left.set(count));
    }

    pub(crate) fn maybe_fail_write() -> Result<(), StorageError> {
        NO_SPACE_WRITES.with(|left| match left.get() {
            0 => Ok(()),
            n => {
                left.set(n - 1);
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into())
            }
        })
    }
}
