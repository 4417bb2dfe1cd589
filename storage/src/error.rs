//! Errors of the storage crate.
//!
//! Concurrency contract: plain values; `StorageError` is `!Clone` because it may carry an
//! `io::Error`, so shared failures are recorded as text (`Io` built from a message).

use crate::batch::BatchError;

/// Everything a partition log operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The kernel or glommio refused an IO.
    #[error("io: {0}")]
    Io(std::io::Error),
    /// The filesystem is full (ENOSPC) or over quota (EDQUOT). Not fatal: nothing that failed
    /// was acknowledged, reads keep working, and writes resume once space is freed.
    #[error("no space left on the log's filesystem")]
    NoSpace,
    /// Disk contents do not make sense (and cannot be repaired by truncation).
    #[error("corrupt log: {0}")]
    Corrupt(String),
    /// A read outside `[log_start, high_watermark]`.
    #[error("offset {requested} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        requested: i64,
        log_start: i64,
        log_end: i64,
    },
    /// An idempotent producer skipped or repeated a sequence number out of window.
    #[error("producer {producer_id}: expected sequence {expected}, got {got}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    /// An idempotent producer wrote with an epoch older than the one we know.
    #[error("producer {producer_id}: epoch {got} is older than {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        current: i16,
        got: i16,
    },
    /// The log was closed (or removed).
    #[error("log closed")]
    Closed,
    /// A produce payload failed validation.
    #[error("batch: {0}")]
    Batch(#[from] BatchError),
    /// More than `PENDING_BYTES_MAX` bytes wait for the disk; retriable: wait for
    /// `wait_written` on the log end and retry.
    #[error("backpressure: {pending_bytes} bytes pending (max {max_bytes})")]
    Backpressure { pending_bytes: u64, max_bytes: u64 },
    /// A truncation is running; appends are refused until it finishes. Retriable.
    #[error("truncation in progress")]
    TruncateInProgress,
    /// Caller passed something inconsistent (e.g. headers that do not match the records).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl From<std::io::Error> for StorageError {
    /// ENOSPC and EDQUOT become `NoSpace`, which the file engine survives; every other IO
    /// error stays `Io`.
    fn from(error: std::io::Error) -> StorageError {
        use std::io::ErrorKind;
        let full = matches!(
            error.kind(),
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded
        ) || matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        if full {
            StorageError::NoSpace
        } else {
            StorageError::Io(error)
        }
    }
}

impl<T> From<glommio::GlommioError<T>> for StorageError {
    fn from(error: glommio::GlommioError<T>) -> StorageError {
        StorageError::from(std::io::Error::from(error))
    }
}
