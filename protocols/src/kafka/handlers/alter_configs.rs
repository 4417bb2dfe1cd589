//! AlterConfigs (key 33): replaces a topic's whole config set (configs not named go back to
//! their defaults), effective on every shard before the answer. Broker configs are static.

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::errors::{result_code, result_message};
use crate::kernel::{ConfigChange, Kernel, KernelError};

pub const RESOURCE_TYPE_TOPIC: i8 = 2;
pub const RESOURCE_TYPE_BROKER: i8 = 4;

/// The answer for a resource other than a topic.
pub fn alter_resource(resource_type: i8) -> Result<(), KernelError> {
    match resource_type {
        RESOURCE_TYPE_BROKER => Err(KernelError::InvalidRequest(
            "broker configs are static: set them in the config file or flags".to_string(),
        )),
        other => Err(KernelError::InvalidRequest(format!(
            "unsupported resource type {other}"
        ))),
    }
}

pub async fn handle<K: Kernel>(kernel: &K, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut response = AlterConfigsResponse::default();
    for resource in &request.resources {
        let result = if resource.resource_type == RESOURCE_TYPE_TOPIC {
            let changes = resource
                .configs
                .iter()
                .map(|c| match &c.value {
                    Some(value) => ConfigChange::Set {
                        name: c.name.to_string(),
                        value: value.to_string(),
                    },
                    None => ConfigChange::Delete {
                        name: c.name.to_string(),
                    },
                })
                .collect();
            kernel
                .alter_topic_configs(
                    resource.resource_name.to_string(),
                    changes,
                    true,
                    request.validate_only,
                )
                .await
        } else {
            alter_resource(resource.resource_type)
        };
        let mut out = AlterConfigsResourceResponse::default();
        out.resource_type = resource.resource_type;
        out.resource_name = resource.resource_name.clone();
        out.error_code = result_code(&result);
        out.error_message = result_message(&result).map(StrBytes::from_string);
        response.responses.push(out);
    }
    response
}
