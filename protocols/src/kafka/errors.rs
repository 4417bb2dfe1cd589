//! Kernel errors as Kafka error codes.

use kafka_protocol::error::ResponseError;

use crate::kernel::KernelError;

/// The Kafka error code for a kernel error.
pub fn error_code(error: &KernelError) -> i16 {
    let kafka_error = match error {
        KernelError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        KernelError::CorruptMessage(_) => ResponseError::CorruptMessage,
        KernelError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        KernelError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        KernelError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
        KernelError::OffsetOutOfRange => ResponseError::OffsetOutOfRange,
        KernelError::Storage(_) => ResponseError::KafkaStorageError,
        KernelError::TopicAlreadyExists => ResponseError::TopicAlreadyExists,
        KernelError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        KernelError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        KernelError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        KernelError::InvalidConfig(_) => ResponseError::InvalidConfig,
        KernelError::InvalidRequest(_) => ResponseError::InvalidRequest,
        KernelError::RequestTimedOut => ResponseError::RequestTimedOut,
        KernelError::ShuttingDown => ResponseError::LeaderNotAvailable,
        KernelError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        KernelError::NotCoordinator => ResponseError::NotCoordinator,
        KernelError::InvalidGroupId => ResponseError::InvalidGroupId,
        KernelError::UnknownMemberId => ResponseError::UnknownMemberId,
        KernelError::MemberIdRequired => ResponseError::MemberIdRequired,
        KernelError::IllegalGeneration => ResponseError::IllegalGeneration,
        KernelError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        KernelError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        KernelError::FencedInstanceId => ResponseError::FencedInstanceId,
        KernelError::InvalidSessionTimeout(_) => ResponseError::InvalidSessionTimeout,
        KernelError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        KernelError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        KernelError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
        KernelError::OffsetMetadataTooLarge { .. } => ResponseError::OffsetMetadataTooLarge,
        KernelError::Unsupported(_) => ResponseError::UnsupportedVersion,
        KernelError::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower,
        KernelError::NotController => ResponseError::NotController,
    };
    kafka_error.code()
}

/// The error code of a result: 0 for success.
pub fn result_code<T>(result: &Result<T, KernelError>) -> i16 {
    result.as_ref().err().map_or(0, error_code)
}

/// The error message to send with a result, for APIs that carry one.
pub fn result_message<T>(result: &Result<T, KernelError>) -> Option<String> {
    result.as_ref().err().map(ToString::to_string)
}

/// The error code of an optional error: 0 for none.
pub fn option_code(error: Option<&KernelError>) -> i16 {
    error.map_or(0, error_code)
}
