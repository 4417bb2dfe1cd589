//! A small blocking Kafka client for the `rmq` CLI: one TCP connection, one request at a time,
//! encoded and decoded with kafka-protocol. Not used by the broker itself.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// The client id the broker sees (DescribeGroups shows it).
const CLIENT_ID: &str = "rmq-cli";
/// Largest response accepted: a Fetch answer is bounded by the max_bytes we ask for (16 MiB).
const RESPONSE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// How long a connect or a request may take before the CLI gives up.
const IO_TIMEOUT_S: u64 = 60;

pub struct Client {
    stream: TcpStream,
    next_correlation_id: i32,
    pub address: String,
}

impl Client {
    /// Connects to the first reachable address of the comma-separated `brokers` list.
    pub fn connect(brokers: &str) -> anyhow::Result<Client> {
        let mut last_error = None;
        for address in brokers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match connect_one(address) {
                Ok(stream) => {
                    return Ok(Client {
                        stream,
                        next_correlation_id: 1,
                        address: address.to_string(),
                    })
                }
                Err(e) => last_error = Some(e.context(format!("cannot connect to {address}"))),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no broker address given")))
            .context("is rmq-node running? set --brokers or RMQ_BROKERS")
    }

    /// Sends `request` at `version` and waits for its response.
    pub fn send<R: Request>(&mut self, version: i16, request: &R) -> anyhow::Result<R::Response> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(StrBytes::from_static_str(CLIENT_ID));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version))?;
        request.encode(&mut body, version)?;
        let size = i32::try_from(body.len()).context("request too large")?;
        self.stream.write_all(&size.to_be_bytes())?;
        self.stream.write_all(&body)?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .context("connection closed by the broker (unsupported request?)")?;
        let size = usize::try_from(i32::from_be_bytes(size)).context("negative frame size")?;
        if size > RESPONSE_MAX_BYTES {
            bail!("response of {size} bytes exceeds {RESPONSE_MAX_BYTES}");
        }
        let mut frame = vec![0u8; size];
        self.stream.read_exact(&mut frame)?;
        let mut frame = Bytes::from(frame);
        let header = ResponseHeader::decode(
            &mut frame,
            <R::Response as HeaderVersion>::header_version(version),
        )?;
        if header.correlation_id != correlation_id {
            bail!(
                "response correlation id {} does not match request {correlation_id}",
                header.correlation_id
            );
        }
        <R::Response as Decodable>::decode(&mut frame, version)
    }
}

fn connect_one(address: &str) -> anyhow::Result<TcpStream> {
    let addr = address
        .to_socket_addrs()?
        .next()
        .context("address resolves to nothing")?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(IO_TIMEOUT_S))?;
    stream.set_read_timeout(Some(Duration::from_secs(IO_TIMEOUT_S)))?;
    stream.set_write_timeout(Some(Duration::from_secs(IO_TIMEOUT_S)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A Kafka error code as text, for messages.
pub fn error_text(code: i16) -> String {
    match kafka_protocol::error::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} ({code})"),
        None => format!("error code {code}"),
    }
}

/// Fails with the error's name unless `code` is 0.
pub fn check(code: i16, what: &str) -> anyhow::Result<()> {
    if code != 0 {
        bail!("{what}: {}", error_text(code));
    }
    Ok(())
}
