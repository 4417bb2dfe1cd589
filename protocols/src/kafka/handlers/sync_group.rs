//! SyncGroup (key 14): the leader hands in the assignment of a generation; every member gets
//! its own share once the leader has synced.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::errors::option_code;
use crate::kernel::{Kernel, MemberGeneration, SyncGroupInput};

/// First version whose answer names the protocol type and name.
const PROTOCOL_FIELDS_MIN_VERSION: i16 = 5;

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let input = SyncGroupInput {
        member: MemberGeneration {
            group_id: request.group_id.0.to_string(),
            generation_id: request.generation_id,
            member_id: request.member_id.to_string(),
            group_instance_id: request.group_instance_id.map(|s| s.to_string()),
        },
        protocol_type: request.protocol_type.map(|s| s.to_string()),
        protocol_name: request.protocol_name.map(|s| s.to_string()),
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let output = kernel.sync_group(input).await;
    let mut response = SyncGroupResponse::default();
    response.error_code = option_code(output.error.as_ref());
    if version >= PROTOCOL_FIELDS_MIN_VERSION {
        response.protocol_type = output.protocol_type.map(StrBytes::from_string);
        response.protocol_name = output.protocol_name.map(StrBytes::from_string);
    }
    response.assignment = output.assignment;
    response
}
