//! The Kafka wire protocol: framing and request dispatch (`connection`), the codec helpers
//! (`codec`), the error-code mapping (`errors`) and one handler per API key (`handlers`).
//! Decoding and encoding use the kafka-protocol crate; handlers never parse bytes themselves.

pub mod codec;
pub mod connection;
pub mod errors;
pub mod handlers;
pub mod record_batch;

pub use connection::{serve_connection, ConnectionStats};
