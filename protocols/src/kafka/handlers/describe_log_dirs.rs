//! DescribeLogDirs (key 35): the node's log directory (its data dir), the size of every
//! partition stored in it, and (v4+) the size and free space of the volume it is on. Null
//! topics ask for every partition; partitions the node does not store are left out, as Kafka
//! does. There are no replicas moving between directories, so offset lag is 0 and no
//! partition is a future replica.
//!
//! v0 is served too (kafka-python's AdminClient speaks only v0): its request and response are
//! byte for byte those of v1, the crate's floor, so v0 is decoded and encoded as v1.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::codec::RequestPrefix;
use crate::kernel::{Kernel, LogDirDescription, TopicPartition};

/// The version the codec knows whose wire format v0 shares ("Version 1 is the same as
/// version 0" in Kafka's message definitions).
pub const CODEC_FLOOR_VERSION: i16 = 1;

/// The first version with the volume's total and usable bytes.
const VOLUME_BYTES_MIN_VERSION: i16 = 4;

/// Unknown volume sizes, as Kafka reports them.
const UNKNOWN_BYTES: i64 = -1;

/// The prefix to decode and encode `prefix`'s request with: v0 travels as v1.
pub fn codec_prefix(prefix: RequestPrefix) -> RequestPrefix {
    RequestPrefix {
        api_version: prefix.api_version.max(CODEC_FLOOR_VERSION),
        ..prefix
    }
}

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: DescribeLogDirsRequest,
    version: i16,
) -> DescribeLogDirsResponse {
    let partitions = request.topics.map(|topics| {
        topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|&partition| TopicPartition {
                    topic: t.topic.0.to_string(),
                    partition,
                })
            })
            .collect()
    });
    let dirs = kernel.describe_log_dirs(partitions).await;
    let mut response = DescribeLogDirsResponse::default();
    response.results = dirs.into_iter().map(|dir| result(dir, version)).collect();
    response
}

fn result(dir: LogDirDescription, version: i16) -> DescribeLogDirsResult {
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for (partition, size_bytes) in dir.partitions {
        let mut out = DescribeLogDirsPartition::default();
        out.partition_index = partition.partition;
        out.partition_size = i64::try_from(size_bytes).unwrap_or(i64::MAX);
        out.offset_lag = 0;
        out.is_future_key = false;
        topics.entry(partition.topic).or_default().push(out);
    }
    let mut result = DescribeLogDirsResult::default();
    result.log_dir = StrBytes::from_string(dir.path);
    result.topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            let mut topic = DescribeLogDirsTopic::default();
            topic.name = TopicName(StrBytes::from_string(name));
            topic.partitions = partitions;
            topic
        })
        .collect();
    if version >= VOLUME_BYTES_MIN_VERSION {
        result.total_bytes = volume_bytes(dir.volume_total_bytes);
        result.usable_bytes = volume_bytes(dir.volume_usable_bytes);
    }
    result
}

fn volume_bytes(size_bytes: Option<u64>) -> i64 {
    size_bytes
        .and_then(|b| i64::try_from(b).ok())
        .unwrap_or(UNKNOWN_BYTES)
}
