//! ListGroups (key 16): every group this node coordinates, optionally filtered by state (v4+)
//! and type (v5+; every group here is `classic`).

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::kernel::Kernel;

/// The only group type the classic coordinator has.
const GROUP_TYPE_CLASSIC: &str = "classic";
/// First version whose answer carries the group state.
const STATE_MIN_VERSION: i16 = 4;
/// First version whose answer carries the group type.
const TYPE_MIN_VERSION: i16 = 5;

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let mut response = ListGroupsResponse::default();
    if !types.is_empty() && !types.iter().any(|t| t == GROUP_TYPE_CLASSIC) {
        return response;
    }
    response.groups = kernel
        .list_groups()
        .await
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.to_ascii_lowercase()))
        .map(|g| {
            let mut listed = ListedGroup::default();
            listed.group_id = GroupId(StrBytes::from_string(g.group_id));
            listed.protocol_type = StrBytes::from_string(g.protocol_type);
            if version >= STATE_MIN_VERSION {
                listed.group_state = StrBytes::from_string(g.state);
            }
            if version >= TYPE_MIN_VERSION {
                listed.group_type = StrBytes::from_static_str(GROUP_TYPE_CLASSIC);
            }
            listed
        })
        .collect();
    response
}
