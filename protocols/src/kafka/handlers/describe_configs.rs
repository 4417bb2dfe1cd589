//! DescribeConfigs (key 32): topic configs (with their sources) and broker configs.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::create_topics::{CONFIG_SOURCE_DEFAULT, CONFIG_SOURCE_TOPIC};
use crate::kafka::errors::error_code;
use crate::kernel::{ConfigEntry, Kernel};

const RESOURCE_TYPE_TOPIC: i8 = 2;
const RESOURCE_TYPE_BROKER: i8 = 4;
/// Broker config source: the static broker config file or flags.
const CONFIG_SOURCE_STATIC_BROKER: i8 = 4;

pub fn handle<K: Kernel>(kernel: &K, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    for resource in &request.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        let entries = match resource.resource_type {
            RESOURCE_TYPE_TOPIC => kernel.describe_topic_configs(resource.resource_name.as_str()),
            RESOURCE_TYPE_BROKER => Ok(kernel.describe_broker_configs()),
            other => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = Some(StrBytes::from_string(format!(
                    "unsupported resource type {other}"
                )));
                response.results.push(result);
                continue;
            }
        };
        match entries {
            Ok(entries) => {
                let wanted = resource.configuration_keys.as_ref();
                result.configs = entries
                    .into_iter()
                    .filter(|e| wanted.is_none_or(|keys| keys.iter().any(|k| k.as_str() == e.name)))
                    .map(|e| resource_result(e, resource.resource_type))
                    .collect();
            }
            Err(e) => {
                result.error_code = error_code(&e);
                result.error_message = Some(StrBytes::from_string(e.to_string()));
            }
        }
        response.results.push(result);
    }
    response
}

fn resource_result(entry: ConfigEntry, resource_type: i8) -> DescribeConfigsResourceResult {
    let mut out = DescribeConfigsResourceResult::default();
    out.name = StrBytes::from_string(entry.name);
    out.value = entry.value.map(StrBytes::from_string);
    out.read_only = entry.read_only;
    out.config_source = match (entry.is_default, resource_type) {
        (true, _) => CONFIG_SOURCE_DEFAULT,
        (false, RESOURCE_TYPE_BROKER) => CONFIG_SOURCE_STATIC_BROKER,
        (false, _) => CONFIG_SOURCE_TOPIC,
    };
    out
}
