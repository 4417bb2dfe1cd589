//! FindCoordinator (key 10): the node coordinating a consumer group (this node while it runs
//! alone; in a cluster one seed per group, the same answer on every node). Transaction coordinators do not exist yet: TRANSACTION keys are refused with
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED, as InitProducerId refuses transactional ids.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::errors::error_code;
use crate::kernel::{Kernel, KernelError, NodeInfo};

/// `key_type` of a consumer group.
const KEY_TYPE_GROUP: i8 = 0;
/// First version with an error message.
const ERROR_MESSAGE_MIN_VERSION: i16 = 1;
/// First version that batches keys (KIP-699).
const BATCHED_KEYS_MIN_VERSION: i16 = 4;

fn lookup<K: Kernel>(kernel: &K, key: &str, key_type: i8) -> Result<NodeInfo, KernelError> {
    if key_type != KEY_TYPE_GROUP {
        return Err(KernelError::Unsupported(format!(
            "coordinator key type {key_type} (transactions) is not supported yet"
        )));
    }
    kernel.group_coordinator(key)
}

fn lookup_code(error: &KernelError) -> i16 {
    match error {
        KernelError::Unsupported(_) => ResponseError::TransactionalIdAuthorizationFailed.code(),
        other => error_code(other),
    }
}

pub fn handle<K: Kernel>(
    kernel: &K,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse::default();
    if version >= BATCHED_KEYS_MIN_VERSION {
        for key in &request.coordinator_keys {
            let mut coordinator = Coordinator::default();
            coordinator.key = key.clone();
            match lookup(kernel, key.as_str(), request.key_type) {
                Ok(node) => {
                    coordinator.node_id = BrokerId(node.node_id);
                    coordinator.host = StrBytes::from_string(node.host);
                    coordinator.port = node.port;
                }
                Err(e) => {
                    coordinator.node_id = BrokerId(-1);
                    coordinator.port = -1;
                    coordinator.error_code = lookup_code(&e);
                    coordinator.error_message = Some(StrBytes::from_string(e.to_string()));
                }
            }
            response.coordinators.push(coordinator);
        }
        return response;
    }
    match lookup(kernel, request.key.as_str(), request.key_type) {
        Ok(node) => {
            response.node_id = BrokerId(node.node_id);
            response.host = StrBytes::from_string(node.host);
            response.port = node.port;
        }
        Err(e) => {
            response.node_id = BrokerId(-1);
            response.port = -1;
            response.error_code = lookup_code(&e);
            if version >= ERROR_MESSAGE_MIN_VERSION {
                response.error_message = Some(StrBytes::from_string(e.to_string()));
            }
        }
    }
    response
}
