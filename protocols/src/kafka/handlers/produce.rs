//! Produce (key 0): append record batches; answer once each is as durable as `acks` asks.
//! A request spanning partitions on several shards is split by the kernel and answered once.

use futures_lite::future::BoxedLocal;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::errors::{result_code, result_message};
use crate::kernel::{Acks, AppendedRange, Kernel, KernelError, ProduceInput, TopicPartition};

/// Message-format version 8 is the first Produce response with per-partition error messages.
const ERROR_MESSAGE_MIN_VERSION: i16 = 8;

/// `None` when the producer asked for no acknowledgement (acks=0).
pub async fn handle<K: Kernel>(
    kernel: &K,
    request: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    submit(kernel, request, version).await.finish().await
}

/// A produce request whose records are submitted (appended or proposed, in order) and whose
/// answer is still to come; it borrows nothing, so a connection can read the next request
/// meanwhile.
pub struct Submitted {
    request: ProduceRequest,
    slots: Vec<Slot>,
    version: i16,
    acks: Option<Acks>,
    results: BoxedLocal<Vec<Result<AppendedRange, KernelError>>>,
}

impl Submitted {
    /// The response once every record is as durable as `acks` asks; `None` for acks=0.
    pub async fn finish(self) -> Option<ProduceResponse> {
        let results = self.results.await;
        if self.acks == Some(Acks::None) {
            return None;
        }
        Some(build_response(
            &self.request,
            &self.slots,
            &results,
            self.version,
        ))
    }
}

/// Validates the request and submits its records; see `Submitted`.
pub async fn submit<K: Kernel>(kernel: &K, request: ProduceRequest, version: i16) -> Submitted {
    let acks = match request.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let refusal = if request.transactional_id.is_some() {
        Some(ResponseError::TransactionalIdAuthorizationFailed.code())
    } else if acks.is_none() {
        Some(ResponseError::InvalidRequiredAcks.code())
    } else {
        None
    };
    let mut inputs = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    for topic in &request.topic_data {
        for partition in &topic.partition_data {
            let target = TopicPartition {
                topic: topic.name.0.to_string(),
                partition: partition.index,
            };
            let slot = match (&refusal, &partition.records) {
                (Some(code), _) => Slot::Refused(*code),
                (None, None) => Slot::Refused(ResponseError::CorruptMessage.code()),
                (None, Some(records)) => {
                    inputs.push(ProduceInput {
                        partition: target,
                        records: records.clone(),
                    });
                    Slot::Input(inputs.len() - 1)
                }
            };
            slots.push(slot);
        }
    }
    let timeout_ms = u32::try_from(request.timeout_ms).unwrap_or(0);
    let idempotent = inputs
        .iter()
        .any(|input| producer_id_of(&input.records) >= 0);
    let results = if inputs.is_empty() {
        Box::pin(std::future::ready(Vec::new())) as BoxedLocal<_>
    } else {
        let answers = kernel
            .produce_submit(acks.unwrap_or(Acks::All), timeout_ms, inputs)
            .await;
        if idempotent {
            // An idempotent producer's requests are answered one at a time, as Kafka does:
            // librdkafka bumps the producer epoch (and re-sends under new sequence numbers,
            // past deduplication) when a later in-flight request is answered after an earlier
            // one failed, which pipelining across a leader change makes likely.
            let answered = answers.await;
            Box::pin(std::future::ready(answered)) as BoxedLocal<_>
        } else {
            answers
        }
    };
    Submitted {
        request,
        slots,
        version,
        acks,
        results,
    }
}

/// The producer id of the first record batch in `records` (v2 layout: bytes 43..51), -1 when
/// there is none or the bytes are too short (they are validated later).
fn producer_id_of(records: &[u8]) -> i64 {
    const PRODUCER_ID_AT: usize = 43;
    records
        .get(PRODUCER_ID_AT..PRODUCER_ID_AT + 8)
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(-1, i64::from_be_bytes)
}

enum Slot {
    Input(usize),
    Refused(i16),
}

fn build_response(
    request: &ProduceRequest,
    slots: &[Slot],
    results: &[Result<AppendedRange, KernelError>],
    version: i16,
) -> ProduceResponse {
    let mut slots = slots.iter();
    let mut response = ProduceResponse::default();
    for topic in &request.topic_data {
        let mut topic_response = TopicProduceResponse::default();
        topic_response.name = topic.name.clone();
        for partition in &topic.partition_data {
            let mut out = PartitionProduceResponse::default();
            out.index = partition.index;
            out.base_offset = -1;
            out.log_append_time_ms = -1;
            out.log_start_offset = -1;
            match slots.next() {
                Some(Slot::Input(i)) => match results.get(*i) {
                    Some(result) => {
                        out.error_code = result_code(result);
                        if version >= ERROR_MESSAGE_MIN_VERSION {
                            out.error_message = result_message(result).map(StrBytes::from_string);
                        }
                        if let Ok(range) = result {
                            out.base_offset = range.base_offset;
                            out.log_start_offset = range.log_start_offset;
                        }
                    }
                    None => out.error_code = ResponseError::UnknownServerError.code(),
                },
                Some(Slot::Refused(code)) => out.error_code = *code,
                None => out.error_code = ResponseError::UnknownServerError.code(),
            }
            topic_response.partition_responses.push(out);
        }
        response.responses.push(topic_response);
    }
    response
}
