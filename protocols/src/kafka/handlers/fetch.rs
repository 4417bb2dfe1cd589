//! Fetch (key 1): read stored batches, untouched, with long-poll on `max_wait_ms`/`min_bytes`
//! woken by appends, within the request's and each partition's `max_bytes`.
//!
//! Fetch sessions (KIP-227): we never create one. A request for a new session (id 0, epoch 0)
//! is answered as a full fetch with session id 0, which tells the client no session exists; a
//! request naming a session gets FETCH_SESSION_ID_NOT_FOUND so the client starts over.

use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};

use crate::kafka::errors::error_code;
use crate::kernel::{Kernel, ReadInput, ReadOutput, TopicPartition};

/// First Fetch version with fetch sessions.
const FETCH_SESSION_MIN_VERSION: i16 = 7;
/// The longest long-poll we honour; clients default to 500 ms.
pub const FETCH_MAX_WAIT_MS_LIMIT: u32 = 30_000;

pub async fn handle<K: Kernel>(kernel: &K, request: FetchRequest, version: i16) -> FetchResponse {
    let mut response = FetchResponse::default();
    if version >= FETCH_SESSION_MIN_VERSION {
        if request.session_id != 0 {
            response.error_code = ResponseError::FetchSessionIdNotFound.code();
            return response;
        }
        if request.session_epoch > 0 {
            response.error_code = ResponseError::InvalidFetchSessionEpoch.code();
            return response;
        }
    }
    let inputs: Vec<ReadInput> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |p| ReadInput {
                partition: TopicPartition {
                    topic: topic.topic.0.to_string(),
                    partition: p.partition,
                },
                offset: p.fetch_offset,
                max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0),
            })
        })
        .collect();
    let outputs = read_with_long_poll(kernel, &request, inputs).await;
    let response_max_bytes = usize::try_from(request.max_bytes).unwrap_or(usize::MAX);
    let mut outputs = outputs.into_iter();
    let mut included_bytes = 0usize;
    for topic in &request.topics {
        let mut topic_response = FetchableTopicResponse::default();
        topic_response.topic = topic.topic.clone();
        for p in &topic.partitions {
            let output = outputs.next();
            topic_response.partitions.push(partition_data(
                p.partition,
                output,
                &mut included_bytes,
                response_max_bytes,
            ));
        }
        response.responses.push(topic_response);
    }
    response
}

async fn read_with_long_poll<K: Kernel>(
    kernel: &K,
    request: &FetchRequest,
    inputs: Vec<ReadInput>,
) -> Vec<ReadOutput> {
    let max_wait_ms = u32::try_from(request.max_wait_ms)
        .unwrap_or(0)
        .min(FETCH_MAX_WAIT_MS_LIMIT);
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_millis(u64::from(max_wait_ms));
    loop {
        let outputs = kernel.read(inputs.clone()).await;
        let total_bytes: usize = outputs
            .iter()
            .map(|o| o.records.as_ref().map_or(0, |r| r.len()))
            .sum();
        let any_error = outputs.iter().any(|o| o.records.is_err());
        let now = Instant::now();
        // At shutdown the kernel's waits return at once: answer with what we have rather than
        // polling in a loop that never yields to the executor.
        let stopping = !kernel.accepting_requests();
        if total_bytes >= min_bytes || any_error || now >= deadline || inputs.is_empty() || stopping
        {
            return outputs;
        }
        let remaining_ms = u32::try_from(deadline.duration_since(now).as_millis()).unwrap_or(0);
        let positions = inputs
            .iter()
            .map(|i| (i.partition.clone(), i.offset))
            .collect();
        kernel.wait_for_data(positions, remaining_ms.max(1)).await;
    }
}

fn partition_data(
    partition_index: i32,
    output: Option<ReadOutput>,
    included_bytes: &mut usize,
    response_max_bytes: usize,
) -> PartitionData {
    let mut data = PartitionData::default();
    data.partition_index = partition_index;
    data.aborted_transactions = Some(Vec::new());
    data.preferred_read_replica = (-1).into();
    let Some(output) = output else {
        data.error_code = ResponseError::UnknownServerError.code();
        return data;
    };
    data.high_watermark = output.high_watermark;
    data.last_stable_offset = output.high_watermark;
    data.log_start_offset = output.log_start_offset;
    match output.records {
        Ok(records) => {
            // The first non-empty partition is always returned whole (Kafka semantics), so a
            // batch larger than max_bytes still makes progress.
            let fits =
                *included_bytes == 0 || *included_bytes + records.len() <= response_max_bytes;
            if fits {
                *included_bytes += records.len();
                data.records = Some(records);
            } else {
                data.records = Some(bytes::Bytes::new());
            }
        }
        Err(e) => {
            data.error_code = error_code(&e);
            data.records = Some(bytes::Bytes::new());
        }
    }
    data
}
