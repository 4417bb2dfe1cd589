//! The single registry of Kafka APIs we serve, with their version ranges (ApiVersions is
//! answered from it), and the dispatcher that decodes a request and calls its handler.
//! One module per API key.

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use futures_lite::future::BoxedLocal;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

use super::codec::{encode_response, RequestPrefix};
use crate::kernel::Kernel;

/// One API key we serve and the versions we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiSupport {
    pub api_key: ApiKey,
    pub min_version: i16,
    pub max_version: i16,
}

const fn api(api_key: ApiKey, min_version: i16, max_version: i16) -> ApiSupport {
    ApiSupport {
        api_key,
        min_version,
        max_version,
    }
}

/// Every API we serve. Produce stops at v12 and Fetch at v12: v13 of both address topics by id
/// only. Produce v3 is the first version with RecordBatch v2, which is all we store.
/// DescribeLogDirs v0 is below the codec's floor but has v1's wire format (see its module).
pub const SUPPORTED_APIS: &[ApiSupport] = &[
    api(ApiKey::Produce, 3, 12),
    api(ApiKey::Fetch, 4, 12),
    api(ApiKey::ListOffsets, 1, 10),
    api(ApiKey::Metadata, 0, 12),
    api(ApiKey::ApiVersions, 0, 4),
    api(ApiKey::CreateTopics, 2, 7),
    api(ApiKey::DeleteTopics, 1, 6),
    api(ApiKey::InitProducerId, 0, 5),
    api(ApiKey::DescribeConfigs, 1, 4),
    api(ApiKey::CreatePartitions, 0, 3),
    api(ApiKey::OffsetCommit, 2, 9),
    api(ApiKey::OffsetFetch, 1, 9),
    api(ApiKey::FindCoordinator, 0, 6),
    api(ApiKey::JoinGroup, 0, 9),
    api(ApiKey::Heartbeat, 0, 4),
    api(ApiKey::LeaveGroup, 0, 5),
    api(ApiKey::SyncGroup, 0, 5),
    api(ApiKey::DescribeGroups, 0, 6),
    api(ApiKey::ListGroups, 0, 5),
    api(ApiKey::DeleteGroups, 0, 2),
    api(ApiKey::OffsetDelete, 0, 0),
    api(ApiKey::AlterConfigs, 0, 2),
    api(ApiKey::IncrementalAlterConfigs, 0, 1),
    api(ApiKey::DescribeCluster, 0, 2),
    api(ApiKey::DeleteRecords, 0, 2),
    api(ApiKey::OffsetForLeaderEpoch, 2, 4),
    api(ApiKey::DescribeLogDirs, 0, 4),
];

/// The versions we accept for `api_key`, if we serve it at all.
pub fn supported(api_key: ApiKey) -> Option<ApiSupport> {
    SUPPORTED_APIS
        .iter()
        .copied()
        .find(|s| s.api_key == api_key)
}

/// Who sent a request: the header's client id and the connection's peer host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub host: String,
}

/// A request the connection must not answer: it is closed instead, as Kafka does.
#[derive(Debug, PartialEq, Eq)]
pub enum DispatchError {
    Refused(String),
}

fn refused(why: impl Into<String>) -> DispatchError {
    DispatchError::Refused(why.into())
}

fn decode<R: Decodable>(body: &mut Bytes, prefix: RequestPrefix) -> Result<R, DispatchError> {
    R::decode(body, prefix.api_version).map_err(|e| {
        refused(format!(
            "malformed request (api key {} v{}): {e}",
            prefix.api_key, prefix.api_version
        ))
    })
}

fn respond<R: Encodable + HeaderVersion>(
    prefix: RequestPrefix,
    response: &R,
) -> Result<Option<Bytes>, DispatchError> {
    encode_response(prefix.correlation_id, prefix.api_version, response)
        .map(Some)
        .map_err(|e| refused(format!("cannot encode response: {e}")))
}

/// What `dispatch_submit` made of a request.
pub enum Dispatched {
    /// Handled: its response frame (`None`: no response, Produce with acks=0).
    Done(Option<Bytes>),
    /// A produce request whose records are submitted (appended or proposed, in order); its
    /// response frame comes from this future, which borrows nothing.
    Pending(BoxedLocal<Result<Option<Bytes>, DispatchError>>),
}

/// Decodes the request in `body` and runs its handler; `Ok(None)` means no response is sent
/// (Produce with acks=0).
pub async fn dispatch<K: Kernel>(
    kernel: &K,
    prefix: RequestPrefix,
    body: Bytes,
    peer_host: &str,
) -> Result<Option<Bytes>, DispatchError> {
    match dispatch_submit(kernel, prefix, body, peer_host).await? {
        Dispatched::Done(frame) => Ok(frame),
        Dispatched::Pending(answer) => answer.await,
    }
}

/// Like `dispatch`, but a Produce request is answered by a future returned once its records
/// are submitted, so that the connection can read the next request meanwhile.
pub async fn dispatch_submit<K: Kernel>(
    kernel: &K,
    prefix: RequestPrefix,
    mut body: Bytes,
    peer_host: &str,
) -> Result<Dispatched, DispatchError> {
    let api_key = ApiKey::try_from(prefix.api_key)
        .map_err(|_| refused(format!("unknown api key {}", prefix.api_key)))?;
    let Some(support) = supported(api_key) else {
        return Err(refused(format!("api {api_key:?} is not supported")));
    };
    let version = prefix.api_version;
    if version < support.min_version || version > support.max_version {
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with UNSUPPORTED_VERSION and our ranges; clients retry.
            return api_versions::unsupported_version_frame(prefix.correlation_id)
                .map(|frame| Dispatched::Done(Some(frame)))
                .map_err(|e| refused(format!("cannot encode response: {e}")));
        }
        return Err(refused(format!(
            "{api_key:?} v{version} is not supported (v{}..=v{})",
            support.min_version, support.max_version
        )));
    }
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::decode(&mut body, header_version)
        .map_err(|e| refused(format!("malformed request header: {e}")))?;
    let client = Client {
        id: header
            .client_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        host: peer_host.to_string(),
    };
    let done = match api_key {
        ApiKey::ApiVersions => respond(prefix, &api_versions::handle()),
        ApiKey::Metadata => respond(
            prefix,
            &metadata::handle(kernel, decode(&mut body, prefix)?, version).await,
        ),
        ApiKey::Produce => {
            let submitted = produce::submit(kernel, decode(&mut body, prefix)?, version).await;
            return Ok(Dispatched::Pending(Box::pin(async move {
                match submitted.finish().await {
                    Some(response) => respond(prefix, &response),
                    None => Ok(None),
                }
            })));
        }
        ApiKey::Fetch => respond(
            prefix,
            &fetch::handle(kernel, decode(&mut body, prefix)?, version).await,
        ),
        ApiKey::ListOffsets => respond(
            prefix,
            &list_offsets::handle(kernel, decode(&mut body, prefix)?, version).await,
        ),
        ApiKey::CreateTopics => respond(
            prefix,
            &create_topics::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::DeleteTopics => respond(
            prefix,
            &delete_topics::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::CreatePartitions => respond(
            prefix,
            &create_partitions::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::InitProducerId => respond(
            prefix,
            &init_producer_id::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::DescribeConfigs => respond(
            prefix,
            &describe_configs::handle(kernel, decode(&mut body, prefix)?),
        ),
        ApiKey::AlterConfigs => respond(
            prefix,
            &alter_configs::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::IncrementalAlterConfigs => respond(
            prefix,
            &incremental_alter_configs::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::OffsetForLeaderEpoch => respond(
            prefix,
            &offset_for_leader_epoch::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::DeleteRecords => respond(
            prefix,
            &delete_records::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::DescribeCluster => respond(
            prefix,
            &describe_cluster::handle(kernel, decode(&mut body, prefix)?, version),
        ),
        ApiKey::FindCoordinator => respond(
            prefix,
            &find_coordinator::handle(kernel, decode(&mut body, prefix)?, version),
        ),
        ApiKey::JoinGroup => respond(
            prefix,
            &join_group::handle(kernel, decode(&mut body, prefix)?, version, &client).await,
        ),
        ApiKey::SyncGroup => respond(
            prefix,
            &sync_group::handle(kernel, decode(&mut body, prefix)?, version).await,
        ),
        ApiKey::Heartbeat => respond(
            prefix,
            &heartbeat::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::LeaveGroup => respond(
            prefix,
            &leave_group::handle(kernel, decode(&mut body, prefix)?, version).await,
        ),
        ApiKey::OffsetCommit => respond(
            prefix,
            &offset_commit::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::OffsetFetch => respond(
            prefix,
            &offset_fetch::handle(kernel, decode(&mut body, prefix)?, version).await,
        ),
        ApiKey::ListGroups => respond(
            prefix,
            &list_groups::handle(kernel, decode(&mut body, prefix)?, version).await,
        ),
        ApiKey::DescribeGroups => respond(
            prefix,
            &describe_groups::handle(kernel, decode(&mut body, prefix)?, version).await,
        ),
        ApiKey::DeleteGroups => respond(
            prefix,
            &delete_groups::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::OffsetDelete => respond(
            prefix,
            &offset_delete::handle(kernel, decode(&mut body, prefix)?).await,
        ),
        ApiKey::DescribeLogDirs => {
            let codec_prefix = describe_log_dirs::codec_prefix(prefix);
            let request = decode(&mut body, codec_prefix)?;
            respond(
                codec_prefix,
                &describe_log_dirs::handle(kernel, request, version).await,
            )
        }
        other => Err(refused(format!("api {other:?} has no handler"))),
    };
    done.map(Dispatched::Done)
}
