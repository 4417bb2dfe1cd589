//! LeaveGroup (key 13): members leave and the rest rebalance. v0-2 name one member; v3+
//! (KIP-345) a batch, by member id or group.instance.id, with one result each.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::kafka::errors::{error_code, result_code};
use crate::kernel::{Kernel, LeavingMember};

/// First version that leaves a batch of members.
const BATCH_LEAVE_MIN_VERSION: i16 = 3;

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<LeavingMember> = if version >= BATCH_LEAVE_MIN_VERSION {
        request
            .members
            .iter()
            .map(|m| LeavingMember {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            })
            .collect()
    } else {
        vec![LeavingMember {
            member_id: request.member_id.to_string(),
            group_instance_id: None,
        }]
    };
    let results = kernel
        .leave_group(request.group_id.0.to_string(), members.clone())
        .await;
    let mut response = LeaveGroupResponse::default();
    match results {
        Err(e) => response.error_code = error_code(&e),
        Ok(results) if version < BATCH_LEAVE_MIN_VERSION => {
            response.error_code = results.first().map_or(0, result_code);
        }
        Ok(results) => {
            response.members = members
                .into_iter()
                .zip(results)
                .map(|(member, result)| {
                    let mut out = MemberResponse::default();
                    out.member_id = member.member_id.into();
                    out.group_instance_id = member.group_instance_id.map(Into::into);
                    out.error_code = result_code(&result);
                    out
                })
                .collect();
        }
    }
    response
}
