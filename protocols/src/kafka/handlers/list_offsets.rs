//! ListOffsets (key 2): earliest, latest, max-timestamp, or the first offset at or after a
//! timestamp, per partition.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::kafka::errors::error_code;
use crate::kernel::{Kernel, TopicPartition};

/// First ListOffsets version whose partitions carry a leader epoch.
const LEADER_EPOCH_MIN_VERSION: i16 = 4;

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in &request.topics {
        let mut topic_response = ListOffsetsTopicResponse::default();
        topic_response.name = topic.name.clone();
        for p in &topic.partitions {
            let target = TopicPartition {
                topic: topic.name.0.to_string(),
                partition: p.partition_index,
            };
            let mut out = ListOffsetsPartitionResponse::default();
            out.partition_index = p.partition_index;
            match kernel.list_offset(target, p.timestamp).await {
                Ok((offset, timestamp)) => {
                    out.offset = offset;
                    out.timestamp = timestamp;
                    if version >= LEADER_EPOCH_MIN_VERSION {
                        out.leader_epoch = 0;
                    }
                }
                Err(e) => {
                    out.error_code = error_code(&e);
                    out.offset = -1;
                    out.timestamp = -1;
                }
            }
            topic_response.partitions.push(out);
        }
        response.topics.push(topic_response);
    }
    response
}
