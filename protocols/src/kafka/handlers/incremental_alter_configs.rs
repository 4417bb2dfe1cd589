//! IncrementalAlterConfigs (key 44): SET / DELETE of single topic configs, effective on every
//! shard before the answer. APPEND / SUBTRACT (list configs) and broker configs are refused:
//! no topic config we accept is a list, and broker configs are static (file or flags).

use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::alter_configs::{alter_resource, RESOURCE_TYPE_TOPIC};
use crate::kafka::errors::{result_code, result_message};
use crate::kernel::{ConfigChange, Kernel, KernelError};

const OPERATION_SET: i8 = 0;
const OPERATION_DELETE: i8 = 1;

fn change(name: &str, operation: i8, value: Option<&str>) -> Result<ConfigChange, KernelError> {
    match (operation, value) {
        (OPERATION_SET, Some(value)) => Ok(ConfigChange::Set {
            name: name.to_string(),
            value: value.to_string(),
        }),
        (OPERATION_SET, None) => Err(KernelError::InvalidConfig(format!(
            "SET of '{name}' needs a value"
        ))),
        (OPERATION_DELETE, _) => Ok(ConfigChange::Delete {
            name: name.to_string(),
        }),
        (other, _) => Err(KernelError::InvalidConfig(format!(
            "config operation {other} on '{name}' is not supported (no list configs)"
        ))),
    }
}

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut response = IncrementalAlterConfigsResponse::default();
    for resource in &request.resources {
        let changes: Result<Vec<ConfigChange>, KernelError> = resource
            .configs
            .iter()
            .map(|c| change(c.name.as_str(), c.config_operation, c.value.as_deref()))
            .collect();
        let result = match changes {
            Ok(changes) if resource.resource_type == RESOURCE_TYPE_TOPIC => {
                kernel
                    .alter_topic_configs(
                        resource.resource_name.to_string(),
                        changes,
                        false,
                        request.validate_only,
                    )
                    .await
            }
            Ok(_) => alter_resource(resource.resource_type),
            Err(e) => Err(e),
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
