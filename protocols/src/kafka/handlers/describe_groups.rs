//! DescribeGroups (key 15): state, protocol and members (with their metadata and assignment)
//! of each group asked for. An unknown group is described as `Dead`, as Kafka does (v6+ also
//! gets GROUP_ID_NOT_FOUND).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::errors::error_code;
use crate::kernel::{Kernel, KernelError};

/// First version whose members carry group.instance.id.
const INSTANCE_ID_MIN_VERSION: i16 = 4;
/// First version with an error message, and GROUP_ID_NOT_FOUND for unknown groups.
const ERROR_MESSAGE_MIN_VERSION: i16 = 6;

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    for group_id in request.groups {
        let mut out = DescribedGroup::default();
        out.group_id = group_id.clone();
        match kernel.describe_group(group_id.0.to_string()).await {
            Ok(description) => {
                out.group_state = StrBytes::from_string(description.state);
                out.protocol_type = StrBytes::from_string(description.protocol_type);
                out.protocol_data = StrBytes::from_string(description.protocol_name);
                out.members = description
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut member = DescribedGroupMember::default();
                        member.member_id = StrBytes::from_string(m.member_id);
                        if version >= INSTANCE_ID_MIN_VERSION {
                            member.group_instance_id =
                                m.group_instance_id.map(StrBytes::from_string);
                        }
                        member.client_id = StrBytes::from_string(m.client_id);
                        member.client_host = StrBytes::from_string(m.client_host);
                        member.member_metadata = m.metadata;
                        member.member_assignment = m.assignment;
                        member
                    })
                    .collect();
            }
            Err(KernelError::GroupIdNotFound) => {
                out.group_state = StrBytes::from_static_str("Dead");
                if version >= ERROR_MESSAGE_MIN_VERSION {
                    out.error_code = ResponseError::GroupIdNotFound.code();
                    out.error_message = Some(StrBytes::from_string(format!(
                        "group {} not found",
                        group_id.0.as_str()
                    )));
                }
            }
            Err(e) => {
                out.error_code = error_code(&e);
                if version >= ERROR_MESSAGE_MIN_VERSION {
                    out.error_message = Some(StrBytes::from_string(e.to_string()));
                }
            }
        }
        response.groups.push(out);
    }
    response
}
