//! DeleteTopics (key 20): delete topics by name (by id: UNKNOWN_TOPIC_ID until ids are indexed).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::errors::{result_code, result_message};
use crate::kernel::Kernel;

pub async fn handle<K: Kernel>(kernel: &K, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
    // v0-5 name topics in `topic_names`, v6+ in `topics` (by name or by id).
    let mut names: Vec<Option<TopicName>> = request.topic_names.iter().cloned().map(Some).collect();
    names.extend(request.topics.iter().map(|t| t.name.clone()));
    let known: Vec<String> = names.iter().flatten().map(|n| n.0.to_string()).collect();
    let mut results = kernel.delete_topics(known).await.into_iter();
    let mut response = DeleteTopicsResponse::default();
    for name in names {
        let mut out = DeletableTopicResult::default();
        match name {
            Some(name) => {
                let result = results.next().unwrap_or(Ok(()));
                out.error_code = result_code(&result);
                out.error_message = result_message(&result).map(StrBytes::from_string);
                out.name = Some(name);
            }
            None => out.error_code = ResponseError::UnknownTopicId.code(),
        }
        response.responses.push(out);
    }
    response
}
