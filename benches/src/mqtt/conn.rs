//! A blocking MQTT connection: TCP, a bounded read buffer, CONNECT/CONNACK and
//! SUBSCRIBE/SUBACK handshakes.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;

use super::codec::{self, Incoming, Version, MAX_PACKET_BYTES};

/// Bytes read from the socket per `read` call.
pub const READ_CHUNK: usize = 64 * 1024;
/// The read buffer never holds more than one maximal packet plus one chunk.
pub const MAX_READ_BUFFER: usize = MAX_PACKET_BYTES + READ_CHUNK;
/// CONNECT -> CONNACK and SUBSCRIBE -> SUBACK deadline.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout of working connections, so loops notice stop flags this often.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

pub struct Conn {
    pub stream: TcpStream,
    pub version: Version,
    buf: BytesMut,
    scratch: Vec<u8>,
    /// MQTT 5 Receive Maximum from CONNACK (None for 3.1.1 or when absent).
    pub receive_max: Option<u16>,
}

pub fn tcp_connect(addr: &str) -> Result<TcpStream> {
    let mut last = None;
    for a in addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
    {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => anyhow!(e).context(format!("connecting to {addr}")),
        None => anyhow!("{addr} resolves to no address"),
    })
}

impl Conn {
    /// TCP connect, CONNECT (clean session), wait for a successful CONNACK.
    pub fn open(addr: &str, version: Version, client_id: &str) -> Result<Conn> {
        let stream = tcp_connect(addr)?;
        let mut c = Conn {
            stream,
            version,
            buf: BytesMut::with_capacity(READ_CHUNK),
            scratch: vec![0u8; READ_CHUNK],
            receive_max: None,
        };
        let mut out = BytesMut::new();
        codec::connect(version, &mut out, client_id)?;
        c.stream.write_all(&out).context("writing CONNECT")?;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        match c.next_until(deadline)? {
            Incoming::ConnAck {
                code: 0,
                receive_max,
            } => {
                c.receive_max = receive_max;
                Ok(c)
            }
            Incoming::ConnAck { code, .. } => bail!("CONNECT refused with code {code}"),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// SUBSCRIBE to `filters` at `qos`; fails unless every filter is granted.
    pub fn subscribe(&mut self, filters: &[String], qos: u8) -> Result<Vec<u8>> {
        let mut out = BytesMut::new();
        codec::subscribe(self.version, &mut out, 1, filters, qos)?;
        self.stream.write_all(&out).context("writing SUBSCRIBE")?;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        match self.next_until(deadline)? {
            Incoming::SubAck { pkid: 1, granted } if granted.len() == filters.len() => granted
                .iter()
                .map(|g| g.ok_or_else(|| anyhow!("SUBSCRIBE refused: {granted:?}")))
                .collect(),
            other => bail!("expected SUBACK for pkid 1, got {other:?}"),
        }
    }

    /// Next packet, waiting at most until `deadline`.
    fn next_until(&mut self, deadline: Instant) -> Result<Incoming> {
        loop {
            if let Some(p) = codec::decode(self.version, &mut self.buf)? {
                return Ok(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out waiting for the broker");
            }
            self.stream.set_read_timeout(Some(left))?;
            if !self.fill()? {
                bail!("broker closed the connection");
            }
        }
    }

    /// Decode the next buffered packet, if a whole one is buffered.
    pub fn try_decode(&mut self) -> Result<Option<Incoming>> {
        codec::decode(self.version, &mut self.buf)
    }

    /// Read once from the socket into the buffer. Ok(false) on EOF; a read timeout is Ok(true)
    /// with nothing added.
    pub fn fill(&mut self) -> Result<bool> {
        if self.buf.len() >= MAX_READ_BUFFER {
            bail!("read buffer over {MAX_READ_BUFFER} bytes without a complete packet");
        }
        let room = (MAX_READ_BUFFER - self.buf.len()).min(self.scratch.len());
        match self.stream.read(&mut self.scratch[..room]) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&self.scratch[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(anyhow!(e).context("reading from broker")),
        }
    }
}
