//! OffsetForLeaderEpoch (key 23): the end offset of a leader epoch, which clients ask after a
//! leader change to detect log truncation. A partition's epoch changes only with its leader,
//! and a single node never changes leaders: every batch is in the topic's current epoch, whose
//! end is the high watermark; a later epoch is unknown (-1, -1), as Kafka answers it.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use crate::kafka::errors::error_code;
use crate::kernel::{Kernel, TopicPartition, LIST_OFFSETS_LATEST};

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut response = OffsetForLeaderEpochResponse::default();
    for topic in &request.topics {
        let mut out = OffsetForLeaderTopicResult::default();
        out.topic = topic.topic.clone();
        let topic_info = kernel.topic(topic.topic.0.as_str());
        for p in &topic.partitions {
            let mut answer = EpochEndOffset::default();
            answer.partition = p.partition;
            // The partition's epoch (a replicated partition's Raft term) stands for the
            // topic's here.
            let info = topic_info.as_ref().map(|info| {
                let mut info = info.clone();
                info.leader_epoch = kernel.partition_state(&info, p.partition).leader_epoch;
                info
            });
            match &info {
                None => answer.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(info) if p.current_leader_epoch > info.leader_epoch => {
                    answer.error_code = ResponseError::UnknownLeaderEpoch.code();
                }
                Some(info)
                    if p.current_leader_epoch >= 0
                        && p.current_leader_epoch < info.leader_epoch =>
                {
                    answer.error_code = ResponseError::FencedLeaderEpoch.code();
                }
                Some(info) if p.leader_epoch > info.leader_epoch => {}
                Some(info) => {
                    let partition = TopicPartition {
                        topic: info.name.clone(),
                        partition: p.partition,
                    };
                    match kernel.list_offset(partition, LIST_OFFSETS_LATEST).await {
                        Ok((end_offset, _)) => {
                            answer.leader_epoch = info.leader_epoch;
                            answer.end_offset = end_offset;
                        }
                        Err(e) => answer.error_code = error_code(&e),
                    }
                }
            }
            out.partitions.push(answer);
        }
        response.topics.push(out);
    }
    response
}
