//! OffsetCommit (key 8): a group's consumed positions, with optional metadata, stored durably
//! in the coordinator's `__consumer_offsets` partition before the answer.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use crate::kafka::errors::{error_code, result_code};
use crate::kernel::{
    CommitOffsetsInput, CommittedOffset, Kernel, MemberGeneration, TopicPartition,
};

pub async fn handle<K: Kernel>(kernel: &K, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let mut offsets = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            let partition = TopicPartition {
                topic: topic.name.0.to_string(),
                partition: p.partition_index,
            };
            let committed = CommittedOffset {
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            };
            offsets.push((partition, committed));
        }
    }
    let input = CommitOffsetsInput {
        member: MemberGeneration {
            group_id: request.group_id.0.to_string(),
            generation_id: request.generation_id_or_member_epoch,
            member_id: request.member_id.to_string(),
            group_instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        },
        offsets,
    };
    let codes: Vec<i16> = match kernel.commit_offsets(input).await {
        Ok(results) => results.iter().map(result_code).collect(),
        Err(e) => vec![error_code(&e); request.topics.iter().map(|t| t.partitions.len()).sum()],
    };
    let mut codes = codes.into_iter();
    let mut response = OffsetCommitResponse::default();
    for topic in &request.topics {
        let mut out = OffsetCommitResponseTopic::default();
        out.name = topic.name.clone();
        for p in &topic.partitions {
            let mut partition = OffsetCommitResponsePartition::default();
            partition.partition_index = p.partition_index;
            partition.error_code = codes.next().unwrap_or(0);
            out.partitions.push(partition);
        }
        response.topics.push(out);
    }
    response
}
