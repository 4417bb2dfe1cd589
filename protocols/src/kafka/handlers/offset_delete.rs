//! OffsetDelete (key 47): deletes a group's committed offsets of partitions it is not
//! consuming (GROUP_SUBSCRIBED_TO_TOPIC otherwise).

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use crate::kafka::errors::{error_code, result_code};
use crate::kernel::{Kernel, TopicPartition};

pub async fn handle<K: Kernel>(kernel: &K, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let partitions: Vec<TopicPartition> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| TopicPartition {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
            })
        })
        .collect();
    let mut response = OffsetDeleteResponse::default();
    let results = match kernel
        .delete_offsets(request.group_id.0.to_string(), partitions)
        .await
    {
        Ok(results) => results,
        Err(e) => {
            response.error_code = error_code(&e);
            return response;
        }
    };
    let mut codes = results.iter().map(result_code);
    for topic in &request.topics {
        let mut out = OffsetDeleteResponseTopic::default();
        out.name = topic.name.clone();
        for p in &topic.partitions {
            let mut partition = OffsetDeleteResponsePartition::default();
            partition.partition_index = p.partition_index;
            partition.error_code = codes.next().unwrap_or(0);
            out.partitions.push(partition);
        }
        response.topics.push(out);
    }
    response
}
