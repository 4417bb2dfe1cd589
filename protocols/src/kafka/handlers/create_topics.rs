//! CreateTopics (key 19): topics with partition counts and configs; replication factor 1 (or
//! the default) until replication lands.

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::errors::{result_code, result_message};
use crate::kernel::{Kernel, KernelError, TopicSpec};

/// DescribeConfigs / CreateTopics config source: a config set on the topic.
pub const CONFIG_SOURCE_TOPIC: i8 = 1;
/// Config source: the broker's default.
pub const CONFIG_SOURCE_DEFAULT: i8 = 5;

pub async fn handle<K: Kernel>(kernel: &K, request: CreateTopicsRequest) -> CreateTopicsResponse {
    let specs: Vec<Result<TopicSpec, KernelError>> = request.topics.iter().map(spec).collect();
    let valid: Vec<TopicSpec> = specs
        .iter()
        .filter_map(|s| s.as_ref().ok().cloned())
        .collect();
    let mut created = kernel
        .create_topics(valid, request.validate_only)
        .await
        .into_iter();
    let mut response = CreateTopicsResponse::default();
    for (topic, spec) in request.topics.iter().zip(specs) {
        let result = match spec {
            Ok(_) => created
                .next()
                .unwrap_or(Err(KernelError::InvalidRequest("no result".to_string()))),
            Err(e) => Err(e),
        };
        let mut out = CreatableTopicResult::default();
        out.name = topic.name.clone();
        out.error_code = result_code(&result);
        out.error_message = result_message(&result).map(StrBytes::from_string);
        out.num_partitions = -1;
        out.replication_factor = -1;
        if let Ok(info) = &result {
            out.topic_id = uuid::Uuid::from_bytes(info.id);
            out.num_partitions = info.partition_count;
            out.replication_factor = 1;
            out.configs = kernel
                .describe_topic_configs(&info.name)
                .ok()
                .map(|entries| entries.into_iter().map(config_entry).collect());
        }
        response.topics.push(out);
    }
    response
}

fn spec(
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<TopicSpec, KernelError> {
    let mut partition_count = topic.num_partitions;
    if !topic.assignments.is_empty() {
        if partition_count != -1 {
            return Err(KernelError::InvalidRequest(
                "both num_partitions and replica assignments were given".to_string(),
            ));
        }
        partition_count = i32::try_from(topic.assignments.len())
            .map_err(|_| KernelError::InvalidPartitions("too many assignments".to_string()))?;
    }
    Ok(TopicSpec {
        name: topic.name.0.to_string(),
        partition_count,
        replication_factor: topic.replication_factor,
        configs: topic
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
            .collect(),
    })
}

fn config_entry(entry: crate::kernel::ConfigEntry) -> CreatableTopicConfigs {
    let mut out = CreatableTopicConfigs::default();
    out.name = StrBytes::from_string(entry.name);
    out.value = entry.value.map(StrBytes::from_string);
    out.read_only = entry.read_only;
    out.config_source = if entry.is_default {
        CONFIG_SOURCE_DEFAULT
    } else {
        CONFIG_SOURCE_TOPIC
    };
    out
}
