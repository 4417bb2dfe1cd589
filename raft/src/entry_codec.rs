//! Raft entries as Kafka RecordBatch v2, the bytes the partition log stores.
//!
//! - An application entry IS one record batch, byte for byte as produced (`RecordBatch`); the
//!   log rewrites its `baseOffset` and writes the Raft term into `partitionLeaderEpoch`, neither
//!   covered by the CRC.
//! - A blank or membership entry is a control batch (attributes bit 5) holding one control
//!   record whose key is Kafka's `(version: i16 = 0, type: i16)` with one of our two private
//!   types; Kafka clients skip control batches and ignore unknown control types (librdkafka:
//!   "Unsupported ctrl message type ... ignoring"; Java: `ControlRecordType.UNKNOWN`). Any other
//!   batch, control or not (a transaction marker, say), is an application entry.
//!
//! Control batches carry no timestamp (-1) and no producer, so every replica writes the same
//! bytes for the same entry.
//!
//! Concurrency contract: pure functions over bytes; no state. Decoding treats its input as
//! untrusted (it comes from disk) and fails with `InvalidData`, never a panic.

use crate::constants::{
    ENTRY_BYTES_MAX, MEMBERSHIP_CONFIGS_MAX, MEMBERSHIP_NODES_MAX, NODE_ADDRESS_BYTES_MAX,
};
use crate::{Membership, PartitionEntry, PartitionLogId, PartitionPayload};
use bytes::{Bytes, BytesMut};
use openraft::BasicNode;
use rmq_storage::{
    validate_batches, write_varlong as put_varint, BatchHeader, RECORD_BATCH_HEADER_BYTES,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;

/// Control record type of a blank entry (Kafka uses 0..=6; ours sit far above).
pub const CONTROL_TYPE_RAFT_BLANK: i16 = 0x5200;
/// Control record type of a membership entry; the record value is `encode_membership`.
pub const CONTROL_TYPE_RAFT_MEMBERSHIP: i16 = 0x5201;

const ATTRIBUTE_CONTROL: i16 = 0x20;
const CONTROL_KEY_VERSION: i16 = 0;
const CONTROL_KEY_BYTES: usize = 4;
const MEMBERSHIP_CODEC_VERSION: u8 = 1;
/// Kafka's "no timestamp".
const NO_TIMESTAMP: i64 = -1;
/// Where the CRC32C coverage starts: `attributes`.
const CRC_COVERED_FROM: usize = 21;
const CRC_POSITION: usize = 17;

pub(crate) fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Where the log store reports the offsets `(base, last)` an application entry got, once it is
/// appended to this node's partition log (an acks=1 produce answers then, before the quorum).
pub type AppendNotice = flume::Sender<(i64, i64)>;

/// One Kafka RecordBatch v2, checked (framing, CRC, record count) when built: the payload of an
/// application entry. The append notice is local to the proposing leader: it never travels
/// (RPC carries the bytes) and is never stored.
#[derive(Clone)]
pub struct RecordBatch {
    bytes: Bytes,
    pub(crate) appended: Option<AppendNotice>,
}

impl PartialEq for RecordBatch {
    fn eq(&self, other: &RecordBatch) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for RecordBatch {}

impl RecordBatch {
    /// Checks that `bytes` is exactly one valid v2 batch of at most `ENTRY_BYTES_MAX`.
    pub fn new(bytes: Bytes) -> Result<RecordBatch, rmq_storage::BatchError> {
        let headers = validate_batches(&bytes, ENTRY_BYTES_MAX)?;
        if headers.len() != 1 {
            return Err(rmq_storage::BatchError::BadRecords(format!(
                "an entry is one batch, got {}",
                headers.len()
            )));
        }
        Ok(RecordBatch {
            bytes,
            appended: None,
        })
    }

    /// This batch, reporting its offsets to `notice` once this node's log store appended it.
    pub fn with_append_notice(mut self, notice: AppendNotice) -> RecordBatch {
        self.appended = Some(notice);
        self
    }

    /// A batch read back from the log (already checked by storage recovery).
    fn stored(bytes: Bytes) -> RecordBatch {
        RecordBatch {
            bytes,
            appended: None,
        }
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The header; `RecordBatch` is never built from fewer bytes than a header.
    pub fn header(&self) -> BatchHeader {
        BatchHeader::parse(&self.bytes).expect("a RecordBatch holds a parsed header")
    }
}

impl fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = self.header();
        f.debug_struct("RecordBatch")
            .field("base_offset", &header.base_offset)
            .field("records", &header.records_count)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl fmt::Display for RecordBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = self.header();
        write!(
            f,
            "batch@{}+{} ({} bytes)",
            header.base_offset,
            header.records_count,
            self.bytes.len()
        )
    }
}

/// The bytes to append for an entry's payload, their header and the batch's append notice. An
/// application batch is moved, not copied, when nothing else holds its bytes.
pub fn encode_payload(
    payload: PartitionPayload,
) -> io::Result<(BytesMut, BatchHeader, Option<AppendNotice>)> {
    let mut notice = None;
    let bytes = match payload {
        PartitionPayload::Normal(batch) => {
            notice = batch.appended;
            batch
                .bytes
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(shared.as_ref()))
        }
        PartitionPayload::Blank => control_batch(CONTROL_TYPE_RAFT_BLANK, &[]),
        PartitionPayload::Membership(membership) => control_batch(
            CONTROL_TYPE_RAFT_MEMBERSHIP,
            &encode_membership(&membership)?,
        ),
    };
    let header = BatchHeader::parse(&bytes).map_err(|error| invalid_data(error.to_string()))?;
    if header.total_size_bytes() != bytes.len() {
        return Err(invalid_data("an entry is exactly one batch"));
    }
    Ok((bytes, header, notice))
}

/// The entry with `log_id` stored as `batch` (one whole batch, `header` parsed from it).
pub fn decode_entry(
    log_id: PartitionLogId,
    batch: Bytes,
    header: &BatchHeader,
) -> io::Result<PartitionEntry> {
    assert_eq!(batch.len(), header.total_size_bytes());
    let payload = match raft_control_record(&batch, header)? {
        Some((CONTROL_TYPE_RAFT_BLANK, _)) => PartitionPayload::Blank,
        Some((CONTROL_TYPE_RAFT_MEMBERSHIP, value)) => {
            PartitionPayload::Membership(decode_membership(value)?)
        }
        Some(_) | None => PartitionPayload::Normal(RecordBatch::stored(batch)),
    };
    Ok(PartitionEntry { log_id, payload })
}

/// The (type, value) of the control record of an uncompressed one-record control batch with a
/// version-0 key; `None` for any other batch.
fn raft_control_record<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> io::Result<Option<(i16, &'a [u8])>> {
    if !header.is_control() || header.compression_codec() != 0 || header.records_count != 1 {
        return Ok(None);
    }
    let mut reader = Reader::new(&batch[RECORD_BATCH_HEADER_BYTES..]);
    let _record_length = reader.varint()?;
    let _attributes = reader.bytes(1)?;
    let _timestamp_delta = reader.varint()?;
    let _offset_delta = reader.varint()?;
    let key_length = reader.varint()?;
    if key_length != CONTROL_KEY_BYTES as i64 {
        return Ok(None);
    }
    let key = reader.bytes(CONTROL_KEY_BYTES)?;
    let version = i16::from_be_bytes([key[0], key[1]]);
    let control_type = i16::from_be_bytes([key[2], key[3]]);
    if version != CONTROL_KEY_VERSION {
        return Ok(None);
    }
    let value_length = reader.varint()?;
    let value = match usize::try_from(value_length) {
        Ok(length) => reader.bytes(length)?,
        Err(_) => &[],
    };
    Ok(Some((control_type, value)))
}

/// A v2 control batch holding one control record `(0, control_type)` -> `value`.
fn control_batch(control_type: i16, value: &[u8]) -> BytesMut {
    let mut record = Vec::with_capacity(16 + value.len());
    record.push(0); // record attributes
    put_varint(0, &mut record); // timestamp delta
    put_varint(0, &mut record); // offset delta
    put_varint(CONTROL_KEY_BYTES as i64, &mut record);
    record.extend_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
    record.extend_from_slice(&control_type.to_be_bytes());
    put_varint(value.len() as i64, &mut record);
    record.extend_from_slice(value);
    put_varint(0, &mut record); // no headers
    let mut batch = Vec::with_capacity(RECORD_BATCH_HEADER_BYTES + 5 + record.len());
    batch.extend_from_slice(&0i64.to_be_bytes()); // base offset, assigned by the log
    batch.extend_from_slice(&0i32.to_be_bytes()); // batch length, patched below
    batch.extend_from_slice(&(-1i32).to_be_bytes()); // leader epoch, written by the log
    batch.push(2); // magic
    batch.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
    batch.extend_from_slice(&ATTRIBUTE_CONTROL.to_be_bytes());
    batch.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    batch.extend_from_slice(&NO_TIMESTAMP.to_be_bytes()); // base timestamp
    batch.extend_from_slice(&NO_TIMESTAMP.to_be_bytes()); // max timestamp
    batch.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    batch.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    batch.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    batch.extend_from_slice(&1i32.to_be_bytes()); // records count
    assert_eq!(batch.len(), RECORD_BATCH_HEADER_BYTES);
    put_varint(record.len() as i64, &mut batch);
    batch.extend_from_slice(&record);
    let length = i32::try_from(batch.len() - 12).expect("a control batch is small");
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
    batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
    BytesMut::from(&batch[..])
}

/// Membership as bytes: version (u8); configs (u8 count, each a u16 count of u64 voter ids);
/// nodes (u16 count, each a u64 id and a u8-length UTF-8 address).
pub fn encode_membership(membership: &Membership) -> io::Result<Vec<u8>> {
    let configs = membership.get_joint_config();
    let nodes: Vec<_> = membership.nodes().collect();
    if configs.len() > MEMBERSHIP_CONFIGS_MAX || nodes.len() > MEMBERSHIP_NODES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "membership too large",
        ));
    }
    let mut out = vec![MEMBERSHIP_CODEC_VERSION, configs.len() as u8];
    for config in configs {
        if config.len() > MEMBERSHIP_NODES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "config too large",
            ));
        }
        out.extend_from_slice(&(config.len() as u16).to_be_bytes());
        config
            .iter()
            .for_each(|id| out.extend_from_slice(&id.to_be_bytes()));
    }
    out.extend_from_slice(&(nodes.len() as u16).to_be_bytes());
    for (id, node) in nodes {
        let address = node.addr.as_bytes();
        if address.len() > NODE_ADDRESS_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address too long",
            ));
        }
        out.extend_from_slice(&id.to_be_bytes());
        out.push(address.len() as u8);
        out.extend_from_slice(address);
    }
    Ok(out)
}

pub fn decode_membership(bytes: &[u8]) -> io::Result<Membership> {
    let mut reader = Reader::new(bytes);
    if reader.u8()? != MEMBERSHIP_CODEC_VERSION {
        return Err(invalid_data("unknown membership codec version"));
    }
    let config_count = usize::from(reader.u8()?);
    if config_count > MEMBERSHIP_CONFIGS_MAX {
        return Err(invalid_data("too many membership configs"));
    }
    let mut configs = Vec::with_capacity(config_count);
    for _ in 0..config_count {
        let count = usize::from(reader.u16()?);
        if count > MEMBERSHIP_NODES_MAX {
            return Err(invalid_data("too many voters"));
        }
        let mut config = BTreeSet::new();
        for _ in 0..count {
            config.insert(reader.u64()?);
        }
        configs.push(config);
    }
    let node_count = usize::from(reader.u16()?);
    if node_count > MEMBERSHIP_NODES_MAX {
        return Err(invalid_data("too many nodes"));
    }
    let mut nodes = BTreeMap::new();
    for _ in 0..node_count {
        let id = reader.u64()?;
        let length = usize::from(reader.u8()?);
        let address = std::str::from_utf8(reader.bytes(length)?)
            .map_err(|_| invalid_data("node address is not UTF-8"))?;
        nodes.insert(
            id,
            BasicNode {
                addr: address.to_string(),
            },
        );
    }
    if !reader.is_empty() {
        return Err(invalid_data("trailing bytes after membership"));
    }
    Membership::new(configs, nodes).map_err(|error| invalid_data(error.to_string()))
}

/// Bounds-checked big-endian reads over untrusted bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn bytes(&mut self, length: usize) -> io::Result<&'a [u8]> {
        if self.bytes.len() < length {
            return Err(invalid_data("truncated"));
        }
        let (head, tail) = self.bytes.split_at(length);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> io::Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> io::Result<u16> {
        let bytes = self.bytes(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn u32(&mut self) -> io::Result<u32> {
        let mut buf = [0u8; 4];
        buf.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_be_bytes(buf))
    }

    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_be_bytes(buf))
    }

    /// A zigzag varint of at most 10 bytes.
    fn varint(&mut self) -> io::Result<i64> {
        let mut value = 0u64;
        for position in 0..10 {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << (7 * position);
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(invalid_data("varint longer than 10 bytes"))
    }
}
