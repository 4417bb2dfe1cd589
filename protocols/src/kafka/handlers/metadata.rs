//! Metadata (key 3): brokers, topics and partition leaders; creates unknown topics when the
//! broker allows it and the client asks for it.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::errors::error_code;
use crate::kernel::{Kernel, KernelError, NodeInfo, TopicInfo, TopicSpec};

/// `authorized_operations` when the client did not ask for them.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let mut response = MetadataResponse::default();
    response.brokers = kernel.brokers().iter().map(broker).collect();
    response.cluster_id = Some(StrBytes::from_string(kernel.cluster_id()));
    response.controller_id = BrokerId(kernel.controller_id());
    response.cluster_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
    let all_topics = match &request.topics {
        None => true,
        Some(topics) => version == 0 && topics.is_empty(),
    };
    if all_topics {
        response.topics = kernel
            .topics()
            .iter()
            .filter(|t| !t.internal)
            .map(|t| topic_entry(kernel, t))
            .collect();
        return response;
    }
    let names: Vec<Option<String>> = request
        .topics
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.name.map(|n| n.0.to_string()))
        .collect();
    let may_create =
        kernel.auto_create_topics() && (version < 4 || request.allow_auto_topic_creation);
    let missing: Vec<TopicSpec> = names
        .iter()
        .flatten()
        .filter(|name| kernel.topic(name).is_none())
        .map(|name| TopicSpec {
            name: name.clone(),
            partition_count: -1,
            replication_factor: -1,
            configs: Vec::new(),
        })
        .collect();
    let mut creation_errors = Vec::new();
    if may_create && !missing.is_empty() {
        let names_created: Vec<String> = missing.iter().map(|s| s.name.clone()).collect();
        let results = kernel.create_topics(missing, false).await;
        for (name, result) in names_created.into_iter().zip(results) {
            match result {
                Ok(_) | Err(KernelError::TopicAlreadyExists) => {}
                Err(e) => creation_errors.push((name, e)),
            }
        }
    }
    response.topics = names
        .into_iter()
        .map(|name| match name {
            None => error_topic(None, ResponseError::UnknownTopicId.code()),
            Some(name) => match kernel.topic(&name) {
                Some(info) => topic_entry(kernel, &info),
                None => {
                    let code = creation_errors
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or(ResponseError::UnknownTopicOrPartition.code(), |(_, e)| {
                            error_code(e)
                        });
                    error_topic(Some(name), code)
                }
            },
        })
        .collect();
    response
}

fn broker(node: &NodeInfo) -> MetadataResponseBroker {
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(node.node_id);
    broker.host = StrBytes::from_string(node.host.clone());
    broker.port = node.port;
    broker
}

fn error_topic(name: Option<String>, code: i16) -> MetadataResponseTopic {
    let mut topic = MetadataResponseTopic::default();
    topic.name = name.map(|n| TopicName(StrBytes::from_string(n)));
    topic.error_code = code;
    topic.topic_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
    topic
}

fn topic_entry<K: Kernel>(kernel: &K, info: &TopicInfo) -> MetadataResponseTopic {
    let mut topic = error_topic(Some(info.name.clone()), 0);
    topic.topic_id = uuid::Uuid::from_bytes(info.id);
    topic.is_internal = info.internal;
    topic.partitions = (0..info.partition_count)
        .map(|index| {
            let mut partition = MetadataResponsePartition::default();
            let state = kernel.partition_state(info, index);
            partition.partition_index = index;
            partition.leader_id = BrokerId(state.leader);
            if state.leader < 0 {
                partition.error_code = ResponseError::LeaderNotAvailable.code();
            }
            partition.leader_epoch = state.leader_epoch;
            partition.replica_nodes = state.replicas.into_iter().map(BrokerId).collect();
            partition.isr_nodes = state.in_sync.into_iter().map(BrokerId).collect();
            partition
        })
        .collect();
    topic
}
