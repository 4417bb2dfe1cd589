//! The records inside a RecordBatch v2: parsing them (after decompressing the batch body), and
//! building a batch from a subset of them. Only the log cleaner and the keyed-record check of
//! compacted topics look inside batches; everything else moves batches as opaque bytes.
//!
//! Record layout (Kafka's DefaultRecord): length varint, attributes i8, timestampDelta
//! varlong, offsetDelta varint, keyLength varint (-1 = null), key, valueLength varint
//! (-1 = null, a tombstone), value, headerCount varint, then per header keyLength varint, key,
//! valueLength varint, value. Varints are zigzag base-128.
//!
//! Concurrency contract: pure functions over byte slices. Input is untrusted (a CRC only says
//! the bytes arrived as the producer sent them): every length is checked, every failure is a
//! `BatchError`, and decompression is bounded by `COMPACTION_DECOMPRESSED_BYTES_MAX`.

use crate::batch::{
    BatchError, BatchHeader, ATTRIBUTE_COMPRESSION_MASK, ATTRIBUTE_DELETE_HORIZON,
    CRC_COVERED_FROM, RECORD_BATCH_HEADER_BYTES,
};
use crate::constants::COMPACTION_DECOMPRESSED_BYTES_MAX;
use std::borrow::Cow;
use std::io::{Read, Write};

const CODEC_NONE: i16 = 0;
const CODEC_GZIP: i16 = 1;
const CODEC_SNAPPY: i16 = 2;
const CODEC_LZ4: i16 = 3;
const CODEC_ZSTD: i16 = 4;

/// The stream header of snappy-java's framing, which Kafka producers write and expect.
const XERIAL_SNAPPY_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Uncompressed bytes per snappy-java block: 32 KiB, its default.
const XERIAL_SNAPPY_BLOCK_BYTES: usize = 32 * 1024;

/// Most bytes a varint (5) or varlong (10) takes.
const VARINT_BYTES_MAX: usize = 5;
const VARLONG_BYTES_MAX: usize = 10;

fn bad(why: impl Into<String>) -> BatchError {
    BatchError::BadRecords(why.into())
}

/// Reads a zigzag varlong at `*at`, advancing it.
fn read_varlong(buf: &[u8], at: &mut usize, max_bytes: usize) -> Result<i64, BatchError> {
    let mut value: u64 = 0;
    for index in 0..max_bytes {
        let byte = *buf
            .get(*at)
            .ok_or_else(|| bad("varint runs past the end"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err(bad("varint too long"))
}

fn read_varint(buf: &[u8], at: &mut usize) -> Result<i32, BatchError> {
    let value = read_varlong(buf, at, VARINT_BYTES_MAX)?;
    i32::try_from(value).map_err(|_| bad("varint out of i32 range"))
}

/// Appends `value` as Kafka's zigzag base-128 varint (varlong; a varint is the same bytes).
pub fn write_varlong(value: i64, out: &mut Vec<u8>) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A nullable byte field: length varint (-1 = null) then the bytes.
fn read_bytes<'a>(buf: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, BatchError> {
    let len = read_varint(buf, at)?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| bad("negative length"))?;
    let end = at
        .checked_add(len)
        .filter(|end| *end <= buf.len())
        .ok_or_else(|| bad("field runs past the record"))?;
    let bytes = &buf[*at..end];
    *at = end;
    Ok(Some(bytes))
}

/// One record of a batch, borrowed from the (decompressed) records section.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordView<'a> {
    pub(crate) attributes: u8,
    pub(crate) timestamp_delta: i64,
    pub(crate) offset_delta: i32,
    pub(crate) key: Option<&'a [u8]>,
    /// A null value: a tombstone for its key in a compacted topic.
    pub(crate) is_tombstone: bool,
    /// The record from `offsetDelta` to its end, copied verbatim when it is re-encoded.
    tail: &'a [u8],
}

fn parse_record(record: &[u8]) -> Result<RecordView<'_>, BatchError> {
    let mut at = 0usize;
    let attributes = *record.first().ok_or_else(|| bad("empty record"))?;
    at += 1;
    let timestamp_delta = read_varlong(record, &mut at, VARLONG_BYTES_MAX)?;
    let tail_start = at;
    let offset_delta = read_varint(record, &mut at)?;
    let key = read_bytes(record, &mut at)?;
    let value = read_bytes(record, &mut at)?;
    let header_count = read_varint(record, &mut at)?;
    if header_count < 0 {
        return Err(bad("negative header count"));
    }
    for _ in 0..header_count {
        if read_bytes(record, &mut at)?.is_none() {
            return Err(bad("null header key"));
        }
        read_bytes(record, &mut at)?;
    }
    if at != record.len() {
        return Err(bad("record length disagrees with its fields"));
    }
    Ok(RecordView {
        attributes,
        timestamp_delta,
        offset_delta,
        key,
        is_tombstone: value.is_none(),
        tail: &record[tail_start..],
    })
}

/// Parses the records of `header`'s batch, which must fill `body` exactly; offset deltas must
/// increase and stay within `[0, last_offset_delta]` (a producer could send anything there:
/// the CRC does not check it).
pub(crate) fn parse_records<'a>(
    body: &'a [u8],
    header: &BatchHeader,
) -> Result<Vec<RecordView<'a>>, BatchError> {
    let count = header.records_count;
    let count = usize::try_from(count).map_err(|_| bad("negative record count"))?;
    // Each record takes at least 7 bytes, so a huge count cannot make us allocate much.
    let mut records = Vec::with_capacity(count.min(body.len() / 7 + 1));
    let mut at = 0usize;
    for _ in 0..count {
        let len = read_varint(body, &mut at)?;
        let len = usize::try_from(len).map_err(|_| bad("negative record length"))?;
        let end = at
            .checked_add(len)
            .filter(|end| *end <= body.len())
            .ok_or_else(|| bad("record runs past the batch"))?;
        let record = parse_record(&body[at..end])?;
        let floor = records
            .last()
            .map_or(0, |last: &RecordView| last.offset_delta + 1);
        if record.offset_delta < floor || record.offset_delta > header.last_offset_delta {
            return Err(bad(
                "offset deltas do not increase within the batch's offsets",
            ));
        }
        records.push(record);
        at = end;
    }
    if at != body.len() {
        return Err(bad("bytes after the last record"));
    }
    Ok(records)
}

/// Appends `record` with its timestamp delta replaced (everything else verbatim).
pub(crate) fn encode_record(record: &RecordView, timestamp_delta: i64, out: &mut Vec<u8>) {
    let mut head = Vec::with_capacity(1 + VARLONG_BYTES_MAX);
    head.push(record.attributes);
    write_varlong(timestamp_delta, &mut head);
    let len = head.len() + record.tail.len();
    write_varlong(len as i64, out);
    out.extend_from_slice(&head);
    out.extend_from_slice(record.tail);
}

/// Reads at most `COMPACTION_DECOMPRESSED_BYTES_MAX` bytes from `reader`; more is an error.
fn read_bounded(reader: impl Read) -> Result<Vec<u8>, BatchError> {
    let limit = COMPACTION_DECOMPRESSED_BYTES_MAX as u64;
    let mut out = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|error| bad(format!("decompression failed: {error}")))?;
    if out.len() as u64 > limit {
        return Err(bad(format!(
            "records decompress past {COMPACTION_DECOMPRESSED_BYTES_MAX} bytes"
        )));
    }
    Ok(out)
}

fn snappy_block(block: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let len = snap::raw::decompress_len(block).map_err(|e| bad(format!("snappy: {e}")))?;
    if out.len().saturating_add(len) > COMPACTION_DECOMPRESSED_BYTES_MAX {
        return Err(bad("snappy records decompress past the bound"));
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| bad(format!("snappy: {e}")))?;
    Ok(())
}

/// snappy-java framing (header, then u32 length + raw block, repeated), or one raw block.
fn snappy_decompress(data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    let Some(mut rest) = data.strip_prefix(&XERIAL_SNAPPY_HEADER[..8]) else {
        snappy_block(data, &mut out)?;
        return Ok(out);
    };
    rest = rest
        .get(8..)
        .ok_or_else(|| bad("short snappy-java header"))?;
    while !rest.is_empty() {
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("short snappy block length"))?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let block = rest
            .get(4..4 + len)
            .ok_or_else(|| bad("snappy block runs past the batch"))?;
        snappy_block(block, &mut out)?;
        rest = &rest[4 + len..];
    }
    Ok(out)
}

fn decompress(codec: i16, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    match codec {
        CODEC_GZIP => read_bounded(flate2::read::GzDecoder::new(data)),
        CODEC_SNAPPY => snappy_decompress(data),
        CODEC_LZ4 => {
            let decoder =
                lz4::Decoder::new(data).map_err(|e| bad(format!("lz4 frame header: {e}")))?;
            read_bounded(decoder)
        }
        CODEC_ZSTD => {
            let decoder =
                zstd::stream::read::Decoder::new(data).map_err(|e| bad(format!("zstd: {e}")))?;
            read_bounded(decoder)
        }
        other => Err(bad(format!("unknown compression codec {other}"))),
    }
}

fn io_failed(error: std::io::Error) -> BatchError {
    bad(format!("compression failed: {error}"))
}

/// Compresses a records section with `codec`, in the framing Kafka clients expect.
pub(crate) fn compress(codec: i16, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    match codec {
        CODEC_NONE => Ok(data.to_vec()),
        CODEC_GZIP => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).map_err(io_failed)?;
            encoder.finish().map_err(io_failed)
        }
        CODEC_SNAPPY => {
            let mut out = XERIAL_SNAPPY_HEADER.to_vec();
            let mut encoder = snap::raw::Encoder::new();
            for block in data.chunks(XERIAL_SNAPPY_BLOCK_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|e| bad(format!("snappy: {e}")))?;
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
        CODEC_LZ4 => {
            // Independent 64 KiB blocks without checksums: the frame Kafka's own producer
            // writes, which every client reads.
            let mut encoder = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
                .build(Vec::new())
                .map_err(io_failed)?;
            encoder.write_all(data).map_err(io_failed)?;
            let (out, result) = encoder.finish();
            result.map_err(io_failed)?;
            Ok(out)
        }
        CODEC_ZSTD => zstd::stream::encode_all(data, 0).map_err(io_failed),
        other => Err(bad(format!("unknown compression codec {other}"))),
    }
}

/// The records section of `batch` (everything after the 61-byte header), decompressed.
pub(crate) fn records_section<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> Result<Cow<'a, [u8]>, BatchError> {
    let size = header.total_size_bytes();
    let body = batch
        .get(RECORD_BATCH_HEADER_BYTES..size)
        .ok_or(BatchError::Truncated)?;
    match header.compression_codec() {
        CODEC_NONE => Ok(Cow::Borrowed(body)),
        codec => Ok(Cow::Owned(decompress(codec, body)?)),
    }
}

/// True when every record of an uncompressed batch has a key. Compressed batches are not
/// opened on the append path (the cleaner drops their keyless records instead).
pub(crate) fn check_keyed(batch: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    if header.compression_codec() != CODEC_NONE || header.is_control() {
        return Ok(());
    }
    let section = records_section(batch, header)?;
    let records = parse_records(&section, header)?;
    if records.iter().any(|record| record.key.is_none()) {
        return Err(BatchError::MissingKey);
    }
    Ok(())
}

/// `check_keyed` for every batch of a produce payload (`headers` describe `records` exactly).
pub(crate) fn check_keyed_batches(
    records: &[u8],
    headers: &[BatchHeader],
) -> Result<(), BatchError> {
    let mut position = 0usize;
    for header in headers {
        let size = header.total_size_bytes();
        let batch = records
            .get(position..position + size)
            .ok_or(BatchError::Truncated)?;
        check_keyed(batch, header)?;
        position += size;
    }
    Ok(())
}

/// Builds a batch like `original` (same base offset, last offset delta, producer fields,
/// max timestamp) holding `records`, re-encoded against `base_timestamp`; `delete_horizon`
/// sets the KIP-534 attribute (then `base_timestamp` is the horizon). An empty batch is
/// written uncompressed. Returns the whole batch with its length and CRC32C recomputed.
pub(crate) fn build_batch(
    original: &BatchHeader,
    original_batch: &[u8],
    records: &[RecordView],
    base_timestamp: i64,
    delete_horizon: bool,
) -> Result<Vec<u8>, BatchError> {
    let original_base_timestamp = original.base_timestamp;
    let mut section = Vec::new();
    for record in records {
        let timestamp = original_base_timestamp.wrapping_add(record.timestamp_delta);
        encode_record(record, timestamp.wrapping_sub(base_timestamp), &mut section);
    }
    let mut codec = original.compression_codec();
    if records.is_empty() {
        codec = CODEC_NONE;
    }
    let section = compress(codec, &section)?;
    let mut attributes = original.attributes & !(ATTRIBUTE_COMPRESSION_MASK);
    attributes |= codec;
    attributes &= !ATTRIBUTE_DELETE_HORIZON;
    if delete_horizon {
        attributes |= ATTRIBUTE_DELETE_HORIZON;
    }
    let mut batch = Vec::with_capacity(RECORD_BATCH_HEADER_BYTES + section.len());
    batch.extend_from_slice(&original_batch[..RECORD_BATCH_HEADER_BYTES]);
    batch.extend_from_slice(&section);
    let batch_length = i32::try_from(batch.len() - 12).map_err(|_| bad("batch too large"))?;
    let records_count = i32::try_from(records.len()).map_err(|_| bad("too many records"))?;
    batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[27..35].copy_from_slice(&base_timestamp.to_be_bytes());
    batch[57..61].copy_from_slice(&records_count.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    let rebuilt = BatchHeader::parse(&batch)?;
    assert_eq!(rebuilt.base_offset, original.base_offset);
    assert_eq!(rebuilt.last_offset_delta, original.last_offset_delta);
    assert_eq!(rebuilt.max_timestamp, original.max_timestamp);
    assert_eq!(rebuilt.base_sequence, original.base_sequence);
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(records_count: i32, last_offset_delta: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 49,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count,
        }
    }

    #[test]
    fn varints_round_trip_at_their_edges() {
        for value in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = Vec::new();
            write_varlong(value, &mut out);
            let mut at = 0;
            assert_eq!(read_varlong(&out, &mut at, VARLONG_BYTES_MAX), Ok(value));
            assert_eq!(at, out.len());
        }
        let mut at = 0;
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut at).is_err());
    }

    #[test]
    fn every_codec_round_trips_and_snappy_reads_kafka_framing() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for codec in [CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD] {
            let compressed = compress(codec, &data).expect("compress");
            let back = if codec == CODEC_NONE {
                compressed
            } else {
                decompress(codec, &compressed).expect("decompress")
            };
            assert_eq!(back, data, "codec {codec}");
        }
        // A record batch body as snappy-java frames it (from kafka-protocol's tests).
        let framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x0f\x0d\x30\x18\x00\x00\x00\x01\x0csdfdsf\x00";
        let body = snappy_decompress(framed).expect("snappy-java framing");
        let records = parse_records(&body, &header(1, 0)).expect("one record");
        assert_eq!(records[0].key, None);
        assert!(!records[0].is_tombstone);
    }

    #[test]
    fn garbage_never_panics_and_bounds_hold() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for len in 0..400usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let count = (len % 7) as i32;
            let _ = parse_records(&bytes, &header(count, count + (len % 3) as i32));
            for codec in [CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD, 5] {
                let _ = decompress(codec, &bytes);
            }
        }
        // The record of the snappy-java example claims offset delta 0; in a batch whose last
        // offset delta is -1 (none), it lies outside the batch.
        let framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x0f\x0d\x30\x18\x00\x00\x00\x01\x0csdfdsf\x00";
        let body = snappy_decompress(framed).expect("snappy-java framing");
        assert!(parse_records(&body, &header(1, -1)).is_err());
        let zeros = vec![0u8; COMPACTION_DECOMPRESSED_BYTES_MAX + 1];
        let bomb = compress(CODEC_ZSTD, &zeros).expect("compress");
        assert!(decompress(CODEC_ZSTD, &bomb).is_err());
    }
}
