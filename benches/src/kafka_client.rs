//! A lean blocking Kafka client on the kafka-protocol codec: framing (i32 size + header +
//! body), correlation ids, version negotiation, and the few admin calls the harness needs.

use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, MetadataRequest, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

/// Largest response frame we accept (a Fetch is bounded by `FETCH_MAX_BYTES` plus overhead).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Socket read buffer per connection.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;
/// How long a blocking admin call (CreateTopics, Metadata, ...) may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

pub const CLIENT_ID: &str = "rmq-bench";

/// The API versions this client speaks, after negotiation with the broker.
#[derive(Debug, Clone, Copy)]
pub struct Versions {
    pub produce: i16,
    pub fetch: i16,
    pub metadata: i16,
    pub create_topics: i16,
}

/// (api key, lowest we accept, highest we prefer). Produce <= 12 and Fetch <= 12 still carry
/// topic names (13+ switch to topic ids).
const WANTED: [(ApiKey, i16, i16); 4] = [
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::CreateTopics, 2, 7),
];

impl Default for Versions {
    fn default() -> Self {
        Versions {
            produce: WANTED[0].2,
            fetch: WANTED[1].2,
            metadata: WANTED[2].2,
            create_topics: WANTED[3].2,
        }
    }
}

/// Encode one request frame (size prefix included) into `buf`.
pub fn encode_request<R: Request>(
    buf: &mut BytesMut,
    correlation_id: i32,
    version: i16,
    req: &R,
) -> Result<()> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let header_version = R::header_version(version);
    let size = header.compute_size(header_version)? + req.compute_size(version)?;
    let size = i32::try_from(size).map_err(|_| anyhow!("request of {size} bytes too large"))?;
    buf.reserve(4 + size as usize);
    buf.put_i32(size);
    header.encode(buf, header_version)?;
    req.encode(buf, version)?;
    Ok(())
}

/// Decode a response frame body (size prefix already stripped); returns (correlation id, body).
pub fn decode_response<R: Request>(mut frame: Bytes, version: i16) -> Result<(i32, R::Response)> {
    let header_version =
        <R::Response as kafka_protocol::protocol::HeaderVersion>::header_version(version);
    let header = ResponseHeader::decode(&mut frame, header_version)?;
    let body = <R::Response as Decodable>::decode(&mut frame, version)?;
    Ok((header.correlation_id, body))
}

/// Read one frame: i32 size, then that many bytes.
pub fn read_frame<Rd: Read>(r: &mut Rd) -> Result<Bytes> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = i32::from_be_bytes(len);
    let len = usize::try_from(len).map_err(|_| anyhow!("negative frame size {len}"))?;
    if len > MAX_RESPONSE_BYTES {
        bail!("response frame of {len} bytes exceeds {MAX_RESPONSE_BYTES}");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Bytes::from(body))
}

pub fn connect(addr: &str) -> Result<TcpStream> {
    let sa = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to nothing"))?;
    let s = TcpStream::connect_timeout(&sa, Duration::from_secs(10))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A connection used for one request at a time (admin calls, consumer fetches).
pub struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    next_correlation_id: i32,
    out: BytesMut,
    pub versions: Versions,
}

impl Conn {
    pub fn connect(addr: &str, versions: Versions) -> Result<Self> {
        let writer = connect(addr)?;
        let reader = BufReader::with_capacity(READ_BUFFER_BYTES, writer.try_clone()?);
        Ok(Conn {
            writer,
            reader,
            next_correlation_id: 1,
            out: BytesMut::new(),
            versions,
        })
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.writer.set_read_timeout(t)?;
        Ok(())
    }

    /// Send one request and wait for its response.
    pub fn call<R: Request>(&mut self, version: i16, req: &R) -> Result<R::Response> {
        let id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        self.out.clear();
        encode_request(&mut self.out, id, version, req)?;
        self.writer.write_all(&self.out)?;
        let frame = read_frame(&mut self.reader)?;
        let (got, resp) = decode_response::<R>(frame, version)
            .with_context(|| format!("decoding response to api key {}", R::KEY))?;
        if got != id {
            bail!("correlation id mismatch: sent {id}, got {got}");
        }
        Ok(resp)
    }

    /// ApiVersions v0 (every broker answers v0), then pick the highest common version of each
    /// API we use.
    pub fn negotiate(&mut self) -> Result<Versions> {
        let resp = self.call(0, &ApiVersionsRequest::default())?;
        if resp.error_code != 0 {
            bail!("ApiVersions error code {}", resp.error_code);
        }
        let mut picked = [0i16; 4];
        for (i, (key, lo, hi)) in WANTED.iter().enumerate() {
            let k = *key as i16;
            let b = resp
                .api_keys
                .iter()
                .find(|a| a.api_key == k)
                .ok_or_else(|| anyhow!("broker does not support {key:?}"))?;
            let v = (*hi).min(b.max_version);
            if v < *lo || v < b.min_version {
                bail!(
                    "no common version for {key:?}: broker {}..={}, client {lo}..={hi}",
                    b.min_version,
                    b.max_version
                );
            }
            picked[i] = v;
        }
        self.versions = Versions {
            produce: picked[0],
            fetch: picked[1],
            metadata: picked[2],
            create_topics: picked[3],
        };
        Ok(self.versions)
    }

    /// Create a topic (replication factor 1). An existing topic is an error: names carry a
    /// random suffix.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> Result<()> {
        let configs = configs
            .iter()
            .map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_value(Some(StrBytes::from_string(v.clone())))
            })
            .collect();
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(ADMIN_TIMEOUT.as_millis() as i32)
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(1)
                .with_configs(configs)]);
        let resp = self.call(self.versions.create_topics, &req)?;
        for t in &resp.topics {
            if t.error_code != 0 {
                bail!(
                    "CreateTopics {name}: error code {} {:?}",
                    t.error_code,
                    t.error_message.as_ref().map(|m| m.as_str())
                );
            }
        }
        Ok(())
    }

    /// Poll Metadata until every partition of `name` has a leader (or the deadline passes).
    pub fn wait_for_topic(&mut self, name: &str, partitions: i32) -> Result<()> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            let req =
                MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))]));
            let resp = self.call(self.versions.metadata, &req)?;
            let ready = resp.topics.iter().any(|t| {
                t.error_code == 0
                    && t.partitions.len() == partitions as usize
                    && t.partitions
                        .iter()
                        .all(|p| p.error_code == 0 && p.leader_id.0 >= 0)
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("topic {name}: partitions have no leader after {ADMIN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
