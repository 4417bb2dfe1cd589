//! DeleteGroups (key 42): deletes empty groups and their committed offsets.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use crate::kafka::errors::result_code;
use crate::kernel::Kernel;

pub async fn handle<K: Kernel>(kernel: &K, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut response = DeleteGroupsResponse::default();
    for group_id in request.groups_names {
        let result = kernel.delete_group(group_id.0.to_string()).await;
        let mut out = DeletableGroupResult::default();
        out.group_id = group_id;
        out.error_code = result_code(&result);
        response.results.push(out);
    }
    response
}
