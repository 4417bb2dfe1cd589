//! JoinGroup (key 11): a member joins a group's rebalance; the answer comes when the rebalance
//! completes (a long poll held by the coordinator). KIP-394 (v4+): a first dynamic join gets
//! MEMBER_ID_REQUIRED with its id. Static members (v5+) carry group.instance.id.

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::Client;
use crate::kafka::errors::option_code;
use crate::kernel::{GroupProtocol, JoinGroupInput, Kernel};

/// First version where a first join must come back with the member id it is given.
const REQUIRE_KNOWN_MEMBER_ID_MIN_VERSION: i16 = 4;
/// First version with a separate rebalance timeout; before it the session timeout serves.
const REBALANCE_TIMEOUT_MIN_VERSION: i16 = 1;
/// First version whose protocol name is nullable.
const NULLABLE_PROTOCOL_NAME_MIN_VERSION: i16 = 7;
/// First version whose members carry group.instance.id.
const INSTANCE_ID_MIN_VERSION: i16 = 5;

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: JoinGroupRequest,
    version: i16,
    client: &Client,
) -> JoinGroupResponse {
    let rebalance_timeout_ms = if version >= REBALANCE_TIMEOUT_MIN_VERSION {
        request.rebalance_timeout_ms
    } else {
        request.session_timeout_ms
    };
    let input = JoinGroupInput {
        group_id: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
        client_id: client.id.clone(),
        client_host: client.host.clone(),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms,
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| GroupProtocol {
                name: p.name.to_string(),
                metadata: p.metadata,
            })
            .collect(),
        require_known_member_id: version >= REQUIRE_KNOWN_MEMBER_ID_MIN_VERSION,
    };
    let output = kernel.join_group(input).await;
    let mut response = JoinGroupResponse::default();
    response.error_code = option_code(output.error.as_ref());
    response.generation_id = output.generation_id;
    response.protocol_type = output.protocol_type.map(StrBytes::from_string);
    response.protocol_name = match output.protocol_name {
        Some(name) => Some(StrBytes::from_string(name)),
        None if version < NULLABLE_PROTOCOL_NAME_MIN_VERSION => Some(StrBytes::default()),
        None => None,
    };
    response.leader = StrBytes::from_string(output.leader);
    response.member_id = StrBytes::from_string(output.member_id);
    response.members = output
        .members
        .into_iter()
        .map(|m| {
            let mut member = JoinGroupResponseMember::default();
            member.member_id = StrBytes::from_string(m.member_id);
            if version >= INSTANCE_ID_MIN_VERSION {
                member.group_instance_id = m.group_instance_id.map(StrBytes::from_string);
            }
            member.metadata = m.metadata;
            member
        })
        .collect();
    response
}
