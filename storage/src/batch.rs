//! Kafka RecordBatch v2 framing: header parsing, validation of produce payloads and of stored
//! batches (which compaction may have thinned), and the two in-place rewrites the log performs
//! (base offset and partition leader epoch, which the CRC does not cover).
//!
//! Concurrency contract: pure functions over byte slices; no state.

/// Bytes of a v2 batch header, from `baseOffset` through `recordsCount`.
pub const RECORD_BATCH_HEADER_BYTES: usize = 61;

/// `baseOffset` (8) + `batchLength` (4): the part of the header not counted by `batchLength`.
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;

/// Smallest legal `batchLength`: the header after the prefix, 61 - 12 = 49 bytes.
const BATCH_LENGTH_MIN: i32 = (RECORD_BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES) as i32;

const PARTITION_LEADER_EPOCH_POSITION: usize = 12;
const MAGIC_POSITION: usize = 16;
/// The CRC32C covers everything from `attributes` to the end of the batch.
pub(crate) const CRC_COVERED_FROM: usize = 21;
/// Bits 0-2 of `attributes`: the compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
pub(crate) const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
/// Bit 3: timestamps are the broker's LogAppendTime (`max_timestamp`), not CreateTime.
const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
const ATTRIBUTE_CONTROL: i16 = 0x20;
/// Bit 6 (KIP-534): `base_timestamp` holds the delete horizon of the batch's tombstones, set by
/// the log cleaner; record timestamps stay `base_timestamp + timestamp_delta`.
pub(crate) const ATTRIBUTE_DELETE_HORIZON: i16 = 0x40;
pub(crate) const MAGIC_V2: i8 = 2;

/// The fixed header of one RecordBatch v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

/// Why a batch was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("batch truncated")]
    Truncated,
    #[error("unsupported magic {0}")]
    BadMagic(i8),
    #[error("bad batch length {0}")]
    BadLength(i32),
    #[error("crc mismatch: stored {stored:#x}, computed {computed:#x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch of {size_bytes} bytes exceeds {max_bytes}")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    #[error("empty payload")]
    Empty,
    #[error("records count {records_count} does not match last offset delta {last_offset_delta}")]
    BadRecordCount {
        records_count: i32,
        last_offset_delta: i32,
    },
    /// A compacted topic accepts only keyed records (Kafka refuses the rest the same way).
    #[error("compacted topic cannot accept a record without a key")]
    MissingKey,
    /// The records inside the batch do not parse (the CRC only says they arrived intact).
    #[error("bad records: {0}")]
    BadRecords(String),
}

fn read_i64(buf: &[u8], at: usize) -> i64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(bytes)
}

fn read_i32(buf: &[u8], at: usize) -> i32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    i32::from_be_bytes(bytes)
}

fn read_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

impl BatchHeader {
    /// Parses the header only (no CRC check): magic must be 2 and the length at least a
    /// header's worth.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < RECORD_BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated);
        }
        let magic = buf[MAGIC_POSITION] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        let batch_length = read_i32(buf, 8);
        if batch_length < BATCH_LENGTH_MIN {
            return Err(BatchError::BadLength(batch_length));
        }
        Ok(BatchHeader {
            base_offset: read_i64(buf, 0),
            batch_length,
            partition_leader_epoch: read_i32(buf, PARTITION_LEADER_EPOCH_POSITION),
            magic,
            crc: read_i32(buf, 17) as u32,
            attributes: read_i16(buf, 21),
            last_offset_delta: read_i32(buf, 23),
            base_timestamp: read_i64(buf, 27),
            max_timestamp: read_i64(buf, 35),
            producer_id: read_i64(buf, 43),
            producer_epoch: read_i16(buf, 51),
            base_sequence: read_i32(buf, 53),
            records_count: read_i32(buf, 57),
        })
    }

    /// Bytes of the whole batch on the wire and on disk: 12 + batch_length.
    pub fn total_size_bytes(&self) -> usize {
        assert!(self.batch_length >= BATCH_LENGTH_MIN);
        BATCH_LENGTH_PREFIX_BYTES + self.batch_length as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    /// The compression codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd (others are invalid).
    pub fn compression_codec(&self) -> i16 {
        self.attributes & ATTRIBUTE_COMPRESSION_MASK
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0
    }

    /// The KIP-534 delete horizon of the batch's tombstones, if the cleaner has set one.
    pub fn delete_horizon_ms(&self) -> Option<i64> {
        (self.attributes & ATTRIBUTE_DELETE_HORIZON != 0).then_some(self.base_timestamp)
    }

    /// The sequence number of the last record, wrapping past i32::MAX as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        self.base_sequence.wrapping_add(self.last_offset_delta) & i32::MAX
    }
}

/// CRC32C over the part of a whole batch the CRC covers.
pub fn compute_crc(batch: &[u8]) -> u32 {
    assert!(batch.len() >= RECORD_BATCH_HEADER_BYTES);
    crc32c::crc32c(&batch[CRC_COVERED_FROM..])
}

/// How strictly `validate_with` checks the record count against the offsets a batch spans.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RecordCount {
    /// As produced: `records_count >= 1` and `last_offset_delta == records_count - 1`.
    Dense,
    /// As stored: the log cleaner keeps `base_offset` and `last_offset_delta` of a batch it
    /// thins, so `0 <= records_count <= last_offset_delta + 1` (Kafka's rule too).
    Thinned,
}

/// Parses and fully checks a produced batch at the start of `buf`: bounds, CRC, record count.
pub fn validate_one(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    validate_with(buf, max_batch_bytes, RecordCount::Dense)
}

/// Parses and fully checks a stored batch at the start of `buf`: as `validate_one`, but a
/// batch thinned by compaction may hold fewer records than offsets, even none.
pub fn validate_stored_one(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    validate_with(buf, max_batch_bytes, RecordCount::Thinned)
}

fn validate_with(
    buf: &[u8],
    max_batch_bytes: usize,
    count_rule: RecordCount,
) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    let size_bytes = header.total_size_bytes();
    if size_bytes > max_batch_bytes {
        return Err(BatchError::TooLarge {
            size_bytes,
            max_bytes: max_batch_bytes,
        });
    }
    if size_bytes > buf.len() {
        return Err(BatchError::Truncated);
    }
    let computed = compute_crc(&buf[..size_bytes]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    let count_ok = match count_rule {
        RecordCount::Dense => {
            header.records_count >= 1 && header.last_offset_delta == header.records_count - 1
        }
        RecordCount::Thinned => {
            header.last_offset_delta >= 0
                && header.records_count >= 0
                && i64::from(header.records_count) <= i64::from(header.last_offset_delta) + 1
        }
    };
    if !count_ok {
        return Err(BatchError::BadRecordCount {
            records_count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// A produce payload: one or more complete v2 batches back to back; each is checked:
/// magic 2, length sane and within buf, CRC32C (over bytes from `attributes` to the end)
/// matches, records_count >= 1 and last_offset_delta == records_count - 1, and each batch is
/// at most `max_batch_bytes`.
pub fn validate_batches(
    buf: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<BatchHeader>, BatchError> {
    validate_each(buf, max_batch_bytes, validate_one)
}

/// Stored batches as a read returns them: each checked as `validate_stored_one` (compacted
/// batches may hold fewer records than the offsets they span).
pub fn validate_stored_batches(
    buf: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<BatchHeader>, BatchError> {
    validate_each(buf, max_batch_bytes, validate_stored_one)
}

/// Checks the batches of `buf` back to back with `validate`; `buf` must not be empty.
fn validate_each(
    buf: &[u8],
    max_batch_bytes: usize,
    validate: fn(&[u8], usize) -> Result<BatchHeader, BatchError>,
) -> Result<Vec<BatchHeader>, BatchError> {
    if buf.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut headers = Vec::new();
    let mut position = 0usize;
    while position < buf.len() {
        let header = validate(&buf[position..], max_batch_bytes)?;
        position += header.total_size_bytes();
        headers.push(header);
    }
    assert_eq!(position, buf.len());
    Ok(headers)
}

/// Rewrites `baseOffset` and `partitionLeaderEpoch` of the batch at the start of `batch`.
/// Neither field is covered by the CRC, so the stored CRC stays valid.
pub(crate) fn assign_offset(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    assert!(batch.len() >= RECORD_BATCH_HEADER_BYTES);
    let crc_before = read_i32(batch, 17);
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    let epoch_end = PARTITION_LEADER_EPOCH_POSITION + 4;
    batch[PARTITION_LEADER_EPOCH_POSITION..epoch_end].copy_from_slice(&leader_epoch.to_be_bytes());
    assert_eq!(read_i32(batch, 17), crc_before);
}
