//! Heartbeat (key 12): keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to
//! rejoin.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::kafka::errors::result_code;
use crate::kernel::{Kernel, MemberGeneration};

pub async fn handle<K: Kernel>(kernel: &K, request: HeartbeatRequest) -> HeartbeatResponse {
    let member = MemberGeneration {
        group_id: request.group_id.0.to_string(),
        generation_id: request.generation_id,
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
    };
    let mut response = HeartbeatResponse::default();
    response.error_code = result_code(&kernel.heartbeat(member).await);
    response
}
