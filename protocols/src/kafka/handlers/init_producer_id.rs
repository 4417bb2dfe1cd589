//! InitProducerId (key 22): a producer id and epoch for idempotent producers. Transactional
//! producers are refused with TRANSACTIONAL_ID_AUTHORIZATION_FAILED until transactions exist.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::kafka::errors::error_code;
use crate::kernel::Kernel;

pub async fn handle<K: Kernel>(
    kernel: &K,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if request.transactional_id.is_some() {
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return response;
    }
    match kernel.init_producer_id().await {
        Ok((producer_id, epoch)) => {
            response.producer_id = ProducerId(producer_id);
            response.producer_epoch = epoch;
        }
        Err(e) => response.error_code = error_code(&e),
    }
    response
}
