//! OffsetFetch (key 9): a group's committed offsets, for the partitions asked for or for all.
//! v8+ (KIP-709) asks for several groups in one request.

use std::collections::BTreeMap;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::errors::error_code;
use crate::kernel::{CommittedOffset, Kernel, KernelError, TopicPartition};

/// First version with a top-level error code.
const TOP_LEVEL_ERROR_MIN_VERSION: i16 = 2;
/// First version whose partitions carry the committed leader epoch.
const LEADER_EPOCH_MIN_VERSION: i16 = 5;
/// First version that fetches several groups at once.
const MULTI_GROUP_MIN_VERSION: i16 = 8;

/// One partition's answer: (offset, leader epoch, metadata, error code).
type PartitionAnswer = (i64, i32, String, i16);

type Answer = Result<BTreeMap<String, BTreeMap<i32, PartitionAnswer>>, KernelError>;

fn partition_answer(committed: Option<CommittedOffset>) -> PartitionAnswer {
    match committed {
        Some(c) => (c.offset, c.leader_epoch, c.metadata.unwrap_or_default(), 0),
        None => (-1, -1, String::new(), 0),
    }
}

async fn fetch_group<K: Kernel>(
    kernel: &K,
    group_id: String,
    partitions: Option<Vec<TopicPartition>>,
) -> Answer {
    let fetched = kernel.fetch_offsets(group_id, partitions).await?;
    let mut topics: BTreeMap<String, BTreeMap<i32, PartitionAnswer>> = BTreeMap::new();
    for (partition, committed) in fetched {
        topics
            .entry(partition.topic)
            .or_default()
            .insert(partition.partition, partition_answer(committed));
    }
    Ok(topics)
}

fn wanted(topics: impl Iterator<Item = (String, Vec<i32>)>) -> Vec<TopicPartition> {
    topics
        .flat_map(|(topic, partitions)| {
            partitions.into_iter().map(move |partition| TopicPartition {
                topic: topic.clone(),
                partition,
            })
        })
        .collect()
}

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    if version >= MULTI_GROUP_MIN_VERSION {
        for group in request.groups {
            let partitions = group.topics.map(|topics| {
                wanted(
                    topics
                        .into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes)),
                )
            });
            let group_id = group.group_id.0.to_string();
            let mut out = OffsetFetchResponseGroup::default();
            out.group_id = group.group_id;
            match fetch_group(kernel, group_id, partitions).await {
                Ok(topics) => out.topics = multi_group_topics(topics),
                Err(e) => out.error_code = error_code(&e),
            }
            response.groups.push(out);
        }
        return response;
    }
    let partitions = request.topics.map(|topics| {
        wanted(
            topics
                .into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes)),
        )
    });
    let asked = partitions.clone();
    match fetch_group(kernel, request.group_id.0.to_string(), partitions).await {
        Ok(topics) => response.topics = single_group_topics(topics, version),
        Err(e) if version >= TOP_LEVEL_ERROR_MIN_VERSION => response.error_code = error_code(&e),
        Err(e) => {
            // v1 has no top-level error: every partition asked for carries it.
            let mut topics: BTreeMap<String, BTreeMap<i32, PartitionAnswer>> = BTreeMap::new();
            for p in asked.unwrap_or_default() {
                let answer = (-1, -1, String::new(), error_code(&e));
                topics
                    .entry(p.topic)
                    .or_default()
                    .insert(p.partition, answer);
            }
            response.topics = single_group_topics(topics, version);
        }
    }
    response
}

fn single_group_topics(
    topics: BTreeMap<String, BTreeMap<i32, PartitionAnswer>>,
    version: i16,
) -> Vec<OffsetFetchResponseTopic> {
    topics
        .into_iter()
        .map(|(name, partitions)| {
            let mut topic = OffsetFetchResponseTopic::default();
            topic.name = TopicName(StrBytes::from_string(name));
            topic.partitions = partitions
                .into_iter()
                .map(|(index, (offset, epoch, metadata, code))| {
                    let mut p = OffsetFetchResponsePartition::default();
                    p.partition_index = index;
                    p.committed_offset = offset;
                    if version >= LEADER_EPOCH_MIN_VERSION {
                        p.committed_leader_epoch = epoch;
                    }
                    p.metadata = Some(StrBytes::from_string(metadata));
                    p.error_code = code;
                    p
                })
                .collect();
            topic
        })
        .collect()
}

fn multi_group_topics(
    topics: BTreeMap<String, BTreeMap<i32, PartitionAnswer>>,
) -> Vec<OffsetFetchResponseTopics> {
    topics
        .into_iter()
        .map(|(name, partitions)| {
            let mut topic = OffsetFetchResponseTopics::default();
            topic.name = TopicName(StrBytes::from_string(name));
            topic.partitions = partitions
                .into_iter()
                .map(|(index, (offset, epoch, metadata, code))| {
                    let mut p = OffsetFetchResponsePartitions::default();
                    p.partition_index = index;
                    p.committed_offset = offset;
                    p.committed_leader_epoch = epoch;
                    p.metadata = Some(StrBytes::from_string(metadata));
                    p.error_code = code;
                    p
                })
                .collect();
            topic
        })
        .collect()
}
