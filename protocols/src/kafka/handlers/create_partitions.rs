//! CreatePartitions (key 37): grow a topic's partition count.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::errors::{result_code, result_message};
use crate::kernel::Kernel;

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    for topic in &request.topics {
        let result = kernel
            .create_partitions(topic.name.0.to_string(), topic.count, request.validate_only)
            .await;
        let mut out = CreatePartitionsTopicResult::default();
        out.name = topic.name.clone();
        out.error_code = result_code(&result);
        out.error_message = result_message(&result).map(StrBytes::from_string);
        response.results.push(out);
    }
    response
}
