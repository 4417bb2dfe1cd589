//! ApiVersions (key 18): the API version ranges we serve, built from the handler registry.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiVersionsResponse;

use super::SUPPORTED_APIS;
use crate::kafka::codec::encode_response;

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|support| {
            let mut version = ApiVersion::default();
            version.api_key = support.api_key as i16;
            version.min_version = support.min_version;
            version.max_version = support.max_version;
            version
        })
        .collect()
}

pub fn handle() -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = api_keys();
    response
}

/// The answer to an ApiVersions request of a version newer than ours: encoded as v0 so that any
/// client can read it, with UNSUPPORTED_VERSION and our ranges, so the client retries with a
/// version we serve.
pub fn unsupported_version_frame(correlation_id: i32) -> anyhow::Result<Bytes> {
    let mut response = handle();
    response.error_code = ResponseError::UnsupportedVersion.code();
    encode_response(correlation_id, 0, &response)
}
