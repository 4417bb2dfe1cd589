//! One MQTT client connection: CONNECT (with a deadline), then two halves polled by one task:
//! the reader decodes packets and runs their handlers one at a time (so a client's packets
//! take effect in order), the writer drains the connection's outbox, which handlers and
//! deliveries from any task of the shard fill. Keep-alive: no packet for 1.5 x the keep-alive
//! closes the connection (v5 0x8D). Bad input closes only this connection (v5 clients get a
//! DISCONNECT with the reason), never panics.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::acl::Actor;
use super::codec::{self, Connect, DecodeError, Packet, ProtocolLevel, Publish, Will};
use super::constants::{
    CONNECT_TIMEOUT_MS, MAX_PACKET_SIZE_BYTES, PUBLISH_RUN_MAX, READ_CHUNK_BYTES, READ_IDLE_BYTES,
};
use super::engine::{Link, MqttShard};
use super::handlers;
use super::kernel::MqttKernel;

/// An accepted connection: who it is and the state that lives as long as the connection.
pub struct Connection<K: MqttKernel> {
    pub engine: Rc<MqttShard<K>>,
    pub client_id: Rc<str>,
    /// The username the client connected with (checked against the password file, if any).
    pub username: Option<Box<str>>,
    /// The client id as a message's publisher (for v5 no-local).
    pub publisher: Arc<str>,
    /// Which attachment of the session this connection is (a takeover starts a new one).
    pub generation: u64,
    pub link: Rc<Link>,
    pub level: ProtocolLevel,
    pub keep_alive_s: u16,
    pub will: RefCell<Option<Will>>,
    /// The session expiry in force (CONNECT's, or DISCONNECT's update).
    pub session_expiry_s: Cell<u32>,
    /// Topic aliases the client set (v5), bounded by our Topic Alias Maximum.
    pub topic_aliases: RefCell<HashMap<u16, String>>,
}

impl<K: MqttKernel> Connection<K> {
    /// This client as the ACL sees it.
    pub fn actor(&self) -> Actor<'_> {
        Actor {
            client_id: &self.client_id,
            username: self.username.as_deref(),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The client closed the socket (or it failed) without DISCONNECT.
    Closed(String),
    /// The client sent DISCONNECT; `with_will` for v5 reason 0x04.
    Disconnect { with_will: bool },
    /// The client broke the protocol; v5 clients are sent DISCONNECT with `reason`.
    Protocol { reason: u8, why: String },
    /// No packet within 1.5 x the keep-alive.
    KeepAliveTimeout,
    /// The server closed it (session takeover, shutdown).
    ServerClose,
}

impl End {
    pub fn protocol(reason: u8, why: impl Into<String>) -> End {
        End::Protocol {
            reason,
            why: why.into(),
        }
    }
}

/// Serves one connection until it ends.
pub async fn serve_connection<K, S>(engine: Rc<MqttShard<K>>, stream: S, peer: SocketAddr)
where
    K: MqttKernel,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let mut buffer = BytesMut::new();
    let connect = match read_connect(&engine, &mut reader, &mut buffer).await {
        Ok(connect) => connect,
        Err(refusal) => {
            if let Some(bytes) = refusal.answer {
                let _ = writer.write_all(&bytes).await;
            }
            debug!(%peer, why = %refusal.why, "mqtt connection refused before CONNECT");
            return;
        }
    };
    let client_hint = connect.client_id.clone();
    let connection = match handlers::connect::handle(&engine, connect).await {
        Ok(connection) => connection,
        Err(refusal) => {
            let _ = writer.write_all(&refusal).await;
            let _ = writer.close().await;
            debug!(%peer, client = %client_hint, "mqtt CONNECT refused");
            return;
        }
    };
    let stats = &engine.stats;
    stats.connections.set(stats.connections.get() + 1);
    let end = future::or(
        read_packets(&connection, &mut reader, &mut buffer),
        write_packets(&connection, &mut writer),
    )
    .await;
    // Whatever is still in the outbox (a DISCONNECT with the reason) goes out before closing.
    let rest = connection.link.take_outbox();
    if !rest.is_empty() && writer.write_all(&rest).await.is_ok() {
        stats.add_sent(rest.len());
    }
    let _ = writer.close().await;
    stats
        .connections
        .set(stats.connections.get().saturating_sub(1));
    debug!(%peer, client = %connection.client_id, end = ?end, "mqtt connection ended");
    let will = match end {
        End::Disconnect { with_will: false } => None,
        _ => connection.will.borrow_mut().take(),
    };
    engine.disconnected(
        &connection.client_id,
        connection.generation,
        will,
        connection.session_expiry_s.get(),
    );
}

struct Refusal {
    /// Bytes to send before closing (a CONNACK), if any.
    answer: Option<BytesMut>,
    why: String,
}

async fn read_connect<K: MqttKernel, R: AsyncRead + Unpin>(
    engine: &MqttShard<K>,
    reader: &mut R,
    buffer: &mut BytesMut,
) -> Result<Connect, Refusal> {
    let deadline = engine
        .kernel
        .sleep(Duration::from_millis(CONNECT_TIMEOUT_MS));
    let reading = async {
        let mut size = ReadSize::new();
        loop {
            match codec::decode_connect(buffer) {
                Ok(Some(connect)) => return Ok(connect),
                Ok(None) => {}
                Err(DecodeError::UnsupportedLevel(level)) => {
                    let mut answer = BytesMut::new();
                    codec::encode_connack(
                        &mut answer,
                        ProtocolLevel::V311,
                        false,
                        codec::reason::V3_UNACCEPTABLE_PROTOCOL_VERSION,
                        &codec::ConnAckProperties::default(),
                    );
                    return Err(Refusal {
                        answer: Some(answer),
                        why: format!("protocol level {level}"),
                    });
                }
                Err(e) => {
                    return Err(Refusal {
                        answer: None,
                        why: e.to_string(),
                    })
                }
            }
            match read_more(reader, buffer, &mut size).await {
                Ok(0) => {
                    return Err(Refusal {
                        answer: None,
                        why: "closed before CONNECT".into(),
                    })
                }
                Ok(n) => engine.stats.add_received(n),
                Err(e) => {
                    return Err(Refusal {
                        answer: None,
                        why: e.to_string(),
                    })
                }
            }
        }
    };
    future::or(reading, async {
        deadline.await;
        Err(Refusal {
            answer: None,
            why: "no CONNECT in time".into(),
        })
    })
    .await
}

/// How much the next read of a connection asks for: `READ_IDLE_BYTES` while reads come back
/// small, growing x4 per full read up to `READ_CHUNK_BYTES` while the socket has more.
struct ReadSize {
    chunk_bytes: usize,
}

impl ReadSize {
    fn new() -> ReadSize {
        ReadSize {
            chunk_bytes: READ_IDLE_BYTES,
        }
    }

    fn after_read(&mut self, read_bytes: usize) {
        self.chunk_bytes = if read_bytes >= self.chunk_bytes {
            (self.chunk_bytes * 4).min(READ_CHUNK_BYTES)
        } else if read_bytes < READ_IDLE_BYTES {
            READ_IDLE_BYTES
        } else {
            self.chunk_bytes
        };
    }
}

/// Reads what the socket has into `buffer` (at most one chunk of `size`). `Ok(0)` at end of
/// stream. A drained buffer that grew past the idle size is released first, so an idle
/// connection holds only `READ_IDLE_BYTES` while it waits.
async fn read_more<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    size: &mut ReadSize,
) -> std::io::Result<usize> {
    if buffer.is_empty() && buffer.capacity() > size.chunk_bytes {
        *buffer = BytesMut::new();
    }
    let start = buffer.len();
    buffer.resize(start + size.chunk_bytes, 0);
    let result = reader.read(&mut buffer[start..]).await;
    let read_bytes = *result.as_ref().unwrap_or(&0);
    buffer.truncate(start + read_bytes);
    size.after_read(read_bytes);
    result
}

async fn read_packets<K: MqttKernel, R: AsyncRead + Unpin>(
    connection: &Connection<K>,
    reader: &mut R,
    buffer: &mut BytesMut,
) -> End {
    let keep_alive = (connection.keep_alive_s > 0)
        .then(|| Duration::from_millis(u64::from(connection.keep_alive_s) * 1_500));
    let mut size = ReadSize::new();
    // Consecutive PUBLISH packets already read are handled as one run (bounded by
    // `PUBLISH_RUN_MAX`): their deliveries to each other shard travel as one mesh message, and
    // with bridge rules one durable Kafka append covers them.
    let mut run = Vec::new();
    loop {
        loop {
            let packet = match codec::decode(buffer, connection.level, MAX_PACKET_SIZE_BYTES) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(e) => {
                    let end = End::protocol(e.reason_code(), e.to_string());
                    if let Err(end) = flush_run(connection, &mut run).await {
                        return fail(connection, end);
                    }
                    return fail(connection, end);
                }
            };
            let packet = match packet {
                Packet::Publish(publish) => {
                    run.push(publish);
                    if run.len() < PUBLISH_RUN_MAX {
                        continue;
                    }
                    if let Err(end) = flush_run(connection, &mut run).await {
                        return fail(connection, end);
                    }
                    continue;
                }
                other => other,
            };
            if let Err(end) = flush_run(connection, &mut run).await {
                return fail(connection, end);
            }
            if let Err(end) = handlers::dispatch(connection, packet).await {
                return fail(connection, end);
            }
        }
        if let Err(end) = flush_run(connection, &mut run).await {
            return fail(connection, end);
        }
        if connection.link.is_closing() {
            return End::ServerClose;
        }
        // Fairness: a socket that always has data (a QoS 0 publisher at full speed) completes
        // every read at once, so without this the task would never give the shard back and
        // the writers of the subscribers it feeds on this shard would starve (measured: 0
        // deliveries/s while it published 1M msgs/s). One yield per read chunk.
        future::yield_now().await;
        let read = read_more(reader, buffer, &mut size);
        let result = match keep_alive {
            None => read.await,
            Some(limit) => {
                let timer = connection.engine.kernel.sleep(limit);
                match future::or(async { Some(read.await) }, async {
                    timer.await;
                    None
                })
                .await
                {
                    Some(result) => result,
                    None => {
                        connection.link.close(codec::reason::KEEP_ALIVE_TIMEOUT);
                        return End::KeepAliveTimeout;
                    }
                }
            }
        };
        match result {
            Ok(0) => return End::Closed("end of stream".into()),
            Ok(n) => connection.engine.stats.add_received(n),
            Err(e) => return End::Closed(e.to_string()),
        }
    }
}

/// Handles the PUBLISH packets collected so far (if any) as one run.
async fn flush_run<K: MqttKernel>(
    connection: &Connection<K>,
    run: &mut Vec<Publish>,
) -> Result<(), End> {
    if run.is_empty() {
        return Ok(());
    }
    handlers::publish::handle_run(connection, run).await
}

/// Ends the connection for `end`: a protocol error sends the v5 DISCONNECT first.
fn fail<K: MqttKernel>(connection: &Connection<K>, end: End) -> End {
    if let End::Protocol { reason, why } = &end {
        debug!(client = %connection.client_id, reason, why = %why, "closing mqtt connection");
        connection.link.close(*reason);
    }
    end
}

async fn write_packets<K: MqttKernel, W: AsyncWrite + Unpin>(
    connection: &Connection<K>,
    writer: &mut W,
) -> End {
    let link = &connection.link;
    loop {
        link.notify.notified().await;
        let bytes = link.take_outbox();
        if !bytes.is_empty() {
            // A flush sends what a framing writer (WebSocket) buffered; free on TCP.
            if let Err(e) = async {
                writer.write_all(&bytes).await?;
                writer.flush().await
            }
            .await
            {
                return End::Closed(e.to_string());
            }
            connection.engine.stats.add_sent(bytes.len());
        }
        if link.is_closing() {
            return End::ServerClose;
        }
    }
}
