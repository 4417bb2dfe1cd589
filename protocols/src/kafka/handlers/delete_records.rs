//! DeleteRecords (key 21): moves each partition's log start offset forward (offset -1: to the
//! high watermark); reads below it get OFFSET_OUT_OF_RANGE and ListOffsets(earliest) answers
//! it. Answers the new low watermark per partition.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::kafka::errors::error_code;
use crate::kernel::{Kernel, TopicPartition};

pub async fn handle<K: Kernel>(kernel: &K, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let partitions: Vec<(TopicPartition, i64)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                let partition = TopicPartition {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                };
                (partition, p.offset)
            })
        })
        .collect();
    let mut results = kernel.delete_records(partitions).await.into_iter();
    let mut response = DeleteRecordsResponse::default();
    for topic in &request.topics {
        let mut out = DeleteRecordsTopicResult::default();
        out.name = topic.name.clone();
        for p in &topic.partitions {
            let mut partition = DeleteRecordsPartitionResult::default();
            partition.partition_index = p.partition_index;
            match results.next() {
                Some(Ok(low_watermark)) => partition.low_watermark = low_watermark,
                Some(Err(e)) => {
                    partition.low_watermark = -1;
                    partition.error_code = error_code(&e);
                }
                None => partition.low_watermark = -1,
            }
            out.partitions.push(partition);
        }
        response.topics.push(out);
    }
    response
}
