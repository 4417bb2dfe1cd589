//! DescribeCluster (key 60): the cluster id, the controller and the brokers (this node while
//! it runs alone; every registered broker in a cluster), as the AdminClient's describe_cluster
//! asks for them.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;

use crate::kernel::Kernel;

/// First version with an endpoint type (1 = brokers).
const ENDPOINT_TYPE_MIN_VERSION: i16 = 1;
const ENDPOINT_TYPE_BROKERS: i8 = 1;

pub fn handle<K: Kernel>(
    kernel: &K,
    request: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let mut response = DescribeClusterResponse::default();
    if version >= ENDPOINT_TYPE_MIN_VERSION && request.endpoint_type != ENDPOINT_TYPE_BROKERS {
        response.error_code = kafka_protocol::error::ResponseError::UnsupportedEndpointType.code();
        response.error_message = Some(StrBytes::from_static_str(
            "only broker endpoints are described",
        ));
        return response;
    }
    response.cluster_id = StrBytes::from_string(kernel.cluster_id());
    response.controller_id = BrokerId(kernel.controller_id());
    response.brokers = kernel
        .brokers()
        .into_iter()
        .map(|node| {
            let mut broker = DescribeClusterBroker::default();
            broker.broker_id = BrokerId(node.node_id);
            broker.host = StrBytes::from_string(node.host);
            broker.port = node.port;
            broker
        })
        .collect();
    response
}
