//! One publisher = one connection = a writer thread (paces PUBLISHes, stamps each payload with
//! its intended send time) and a reader thread (PUBACK / PUBREC -> PUBREL / PUBCOMP, publish
//! latency from the intended send time, so fixed-rate runs are free of coordinated omission).

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{self, Incoming, PublishTemplate, Version, KEEP_ALIVE_S};
use super::conn::{Conn, POLL_INTERVAL};
use crate::report::{Clock, LocalHist, Metrics};

/// PUBLISHes encoded into one buffer before a single `write` (max-rate batching).
pub const MAX_BATCH_PACKETS: usize = 256;
/// ... and at most this many bytes per write.
pub const MAX_WRITE_BYTES: usize = 256 * 1024;
/// Longest a writer sleeps between checks of the stop flag and its schedule.
pub const MAX_IDLE_WAIT: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub addr: String,
    pub version: Version,
    pub client_id: String,
    pub topic: String,
    pub topic_index: usize,
    pub qos: u8,
    pub message_size: usize,
    /// PUBLISHes per second; None = max rate.
    pub rate: Option<f64>,
    pub max_inflight: usize,
    /// After the stop flag: how long to wait for outstanding acknowledgements.
    pub drain: Duration,
}

/// State shared by every publisher of a run.
#[derive(Clone)]
pub struct Shared {
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// Acknowledged (QoS 1/2) or written (QoS 0) PUBLISHes per topic index.
    pub sent_per_topic: Arc<Vec<AtomicU64>>,
}

struct Entry {
    intended_us: u64,
}

struct WinState {
    map: HashMap<u16, Entry>,
    next_pkid: u16,
    cap: usize,
    closed: bool,
}

/// The in-flight window of unacknowledged QoS 1/2 PUBLISHes, keyed by packet id.
struct Window {
    state: Mutex<WinState>,
    cv: Condvar,
}

impl Window {
    fn new(cap: usize) -> Self {
        Window {
            state: Mutex::new(WinState {
                map: HashMap::with_capacity(cap),
                next_pkid: 0,
                cap,
                closed: false,
            }),
            cv: Condvar::new(),
        }
    }

    /// A free packet id for a PUBLISH intended at `intended_us`, or None if the window is full
    /// (or closed).
    fn try_acquire(&self, intended_us: u64) -> Option<u16> {
        let mut s = self.state.lock().ok()?;
        if s.closed || s.map.len() >= s.cap {
            return None;
        }
        // cap <= MAX_INFLIGHT_LIMIT << 65535, so a free id is always found.
        loop {
            s.next_pkid = s.next_pkid.wrapping_add(1);
            if s.next_pkid != 0 && !s.map.contains_key(&s.next_pkid) {
                break;
            }
        }
        let id = s.next_pkid;
        s.map.insert(id, Entry { intended_us });
        Some(id)
    }

    /// Wait until the window has room, is empty (`empty`), or `wait` passes.
    fn wait(&self, wait: Duration, empty: bool) {
        if let Ok(s) = self.state.lock() {
            let _ = self.cv.wait_timeout_while(s, wait, |s| {
                !s.closed
                    && if empty {
                        !s.map.is_empty()
                    } else {
                        s.map.len() >= s.cap
                    }
            });
        }
    }

    fn remove(&self, pkid: u16) -> Option<Entry> {
        let mut s = self.state.lock().ok()?;
        let e = s.map.remove(&pkid);
        self.cv.notify_all();
        e
    }

    fn contains(&self, pkid: u16) -> bool {
        self.state
            .lock()
            .map(|s| s.map.contains_key(&pkid))
            .unwrap_or(false)
    }

    fn len(&self) -> usize {
        self.state.lock().map(|s| s.map.len()).unwrap_or(0)
    }

    /// Close the window; returns how many PUBLISHes were still unacknowledged (lost).
    fn close(&self) -> usize {
        match self.state.lock() {
            Ok(mut s) => {
                s.closed = true;
                let n = s.map.len();
                s.map.clear();
                self.cv.notify_all();
                n
            }
            Err(_) => 0,
        }
    }

    fn closed(&self) -> bool {
        self.state.lock().map(|s| s.closed).unwrap_or(true)
    }
}

pub struct PublisherHandle {
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

impl PublisherHandle {
    pub fn join(self) {
        let _ = self.writer.join();
        let _ = self.reader.join();
    }
}

/// Put one payload into `buf`: the intended send time (8 bytes, big endian, microseconds since
/// the UNIX epoch) then filler up to `size` bytes.
pub fn fill_payload(buf: &mut BytesMut, intended_us: u64, size: usize, filler: &[u8]) -> Bytes {
    buf.reserve(size);
    buf.put_u64(intended_us);
    let mut left = size.saturating_sub(8);
    while left > 0 {
        let k = left.min(filler.len());
        buf.put_slice(&filler[..k]);
        left -= k;
    }
    buf.split().freeze()
}

/// Connect (CONNECT/CONNACK happen here, so a refused connection fails the run before it
/// starts) and start the writer and reader threads.
pub fn spawn(cfg: PublisherConfig, shared: Shared, id: usize) -> Result<PublisherHandle> {
    let template = PublishTemplate::new(cfg.version, &cfg.topic, cfg.qos)?;
    let t0 = shared.clock.now_us();
    let conn = Conn::open(&cfg.addr, cfg.version, &cfg.client_id)
        .with_context(|| format!("publisher {}", cfg.client_id))?;
    let mut l = LocalHist::new();
    l.record(shared.clock.now_us().saturating_sub(t0));
    shared.metrics.merge_connect(&mut l);
    conn.stream.set_read_timeout(Some(POLL_INTERVAL))?;
    let cap = match conn.receive_max {
        Some(m) if m > 0 => cfg.max_inflight.min(usize::from(m)),
        _ => cfg.max_inflight,
    }
    .max(1);
    let window = Arc::new(Window::new(cap));
    let wstream = Arc::new(Mutex::new(conn.stream.try_clone()?));
    let reader = {
        let (w, ws, sh, cfg) = (window.clone(), wstream.clone(), shared.clone(), cfg.clone());
        std::thread::Builder::new()
            .name(format!("mqtt-pub-rd-{id}"))
            .spawn(move || {
                if let Err(e) = reader_loop(conn, &cfg, &w, &ws, &sh) {
                    if !w.closed() {
                        eprintln!("publisher {} reader: {e:#}", cfg.client_id);
                    }
                }
                let lost = w.close();
                sh.metrics
                    .pub_errors
                    .fetch_add(lost as u64, Ordering::Relaxed);
            })?
    };
    let writer = std::thread::Builder::new()
        .name(format!("mqtt-pub-wr-{id}"))
        .spawn(move || {
            let mut w = Writer::new(cfg, shared, window.clone(), wstream.clone(), template);
            if let Err(e) = w.run() {
                if !window.closed() {
                    eprintln!("publisher {} writer: {e:#}", w.cfg.client_id);
                    w.shared.metrics.pub_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Ends the reader: it sees the closed window (or EOF) at its next poll.
            let lost = window.close();
            w.shared
                .metrics
                .pub_errors
                .fetch_add(lost as u64, Ordering::Relaxed);
            if let Ok(s) = wstream.lock() {
                let _ = s.shutdown(Shutdown::Both);
            }
        })?;
    Ok(PublisherHandle { writer, reader })
}

struct Writer {
    cfg: PublisherConfig,
    shared: Shared,
    window: Arc<Window>,
    stream: Arc<Mutex<TcpStream>>,
    template: PublishTemplate,
    filler: Bytes,
    payload: BytesMut,
    out: BytesMut,
    last_write: Instant,
}

impl Writer {
    fn new(
        cfg: PublisherConfig,
        shared: Shared,
        window: Arc<Window>,
        stream: Arc<Mutex<TcpStream>>,
        template: PublishTemplate,
    ) -> Self {
        Writer {
            cfg,
            shared,
            window,
            stream,
            template,
            filler: crate::producer::filler(),
            payload: BytesMut::new(),
            out: BytesMut::with_capacity(MAX_WRITE_BYTES + crate::workload::MAX_MESSAGE_SIZE),
            last_write: Instant::now(),
        }
    }

    fn write_out(&mut self) -> Result<()> {
        let mut s = self
            .stream
            .lock()
            .map_err(|_| anyhow!("socket lock poisoned"))?;
        s.write_all(&self.out).context("writing to broker")?;
        drop(s);
        self.out.clear();
        self.last_write = Instant::now();
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        let clock = self.shared.clock;
        let metrics = self.shared.metrics.clone();
        let interval_us = self.cfg.rate.map(|r| 1e6 / r);
        let mut next_intended = clock.now_us() as f64;
        let qos = self.cfg.qos;
        let size = self.cfg.message_size;
        let ping_after = Duration::from_secs(u64::from(KEEP_ALIVE_S) / 2);
        while !metrics.stopped() {
            if self.window.closed() {
                return Err(anyhow!("connection lost"));
            }
            let now = clock.now_us();
            let mut n = 0usize;
            let mut window_full = false;
            while n < MAX_BATCH_PACKETS && self.out.len() < MAX_WRITE_BYTES {
                let intended = match interval_us {
                    Some(_) if next_intended > now as f64 => break,
                    Some(_) => next_intended as u64,
                    None => now,
                };
                let pkid = if qos == 0 {
                    0
                } else {
                    match self.window.try_acquire(intended) {
                        Some(p) => p,
                        None => {
                            window_full = true;
                            break;
                        }
                    }
                };
                let payload = fill_payload(&mut self.payload, intended, size, &self.filler);
                self.template.write(&mut self.out, pkid, payload)?;
                n += 1;
                if let Some(iv) = interval_us {
                    next_intended += iv;
                }
            }
            if n > 0 {
                self.write_out()?;
                if qos == 0 {
                    metrics.sent_msgs.fetch_add(n as u64, Ordering::Relaxed);
                    metrics
                        .sent_bytes
                        .fetch_add((n * size) as u64, Ordering::Relaxed);
                    self.shared.sent_per_topic[self.cfg.topic_index]
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                continue;
            }
            if self.last_write.elapsed() >= ping_after {
                codec::pingreq(self.cfg.version, &mut self.out)?;
                self.write_out()?;
            }
            if window_full {
                self.window.wait(MAX_IDLE_WAIT, false);
            } else if let Some(_iv) = interval_us {
                let wait = clock
                    .instant_of(next_intended as u64)
                    .saturating_duration_since(Instant::now())
                    .min(MAX_IDLE_WAIT);
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
        }
        // Drain: wait for outstanding acknowledgements, then say goodbye.
        let deadline = Instant::now() + self.cfg.drain;
        while self.window.len() > 0 && !self.window.closed() && Instant::now() < deadline {
            self.window.wait(MAX_IDLE_WAIT, true);
        }
        codec::disconnect(self.cfg.version, &mut self.out)?;
        let _ = self.write_out();
        Ok(())
    }
}

fn reader_loop(
    mut conn: Conn,
    cfg: &PublisherConfig,
    window: &Window,
    wstream: &Mutex<TcpStream>,
    shared: &Shared,
) -> Result<()> {
    let metrics = &shared.metrics;
    let mut local = LocalHist::new();
    let r = read_acks(&mut conn, cfg, window, wstream, shared, &mut local);
    metrics.merge_publish(&mut local);
    r
}

fn read_acks(
    conn: &mut Conn,
    cfg: &PublisherConfig,
    window: &Window,
    wstream: &Mutex<TcpStream>,
    shared: &Shared,
    local: &mut LocalHist,
) -> Result<()> {
    let metrics = &shared.metrics;
    let clock = shared.clock;
    let version = conn.version;
    let mut out = BytesMut::new();
    let size = cfg.message_size as u64;
    let sent_topic = &shared.sent_per_topic[cfg.topic_index];
    loop {
        if window.closed() {
            return Ok(());
        }
        if !conn.fill()? {
            if window.closed() || (metrics.stopped() && window.len() == 0) {
                return Ok(());
            }
            return Err(anyhow!("broker closed the connection"));
        }
        let now = clock.now_us();
        let (mut acked, mut errors) = (0u64, 0u64);
        loop {
            let p = match conn.try_decode() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            match p {
                Incoming::PubAck { pkid, code } if cfg.qos == 1 => match window.remove(pkid) {
                    Some(_) if code >= 0x80 => {
                        errors += 1;
                        metrics.note_error_code(i16::from(code));
                    }
                    Some(e) => {
                        acked += 1;
                        local.record(now.saturating_sub(e.intended_us));
                    }
                    None => {
                        metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Incoming::PubRec { pkid, code } if cfg.qos == 2 => {
                    if code >= 0x80 {
                        if window.remove(pkid).is_some() {
                            errors += 1;
                            metrics.note_error_code(i16::from(code));
                        } else {
                            metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        if !window.contains(pkid) {
                            metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        // PUBREL is due for any PUBREC, known or not (MQTT 4.3.3).
                        codec::pubrel(version, &mut out, pkid)?;
                    }
                }
                Incoming::PubComp { pkid, code } if cfg.qos == 2 => match window.remove(pkid) {
                    Some(_) if code >= 0x80 => {
                        errors += 1;
                        metrics.note_error_code(i16::from(code));
                    }
                    Some(e) => {
                        acked += 1;
                        local.record(now.saturating_sub(e.intended_us));
                    }
                    None => {
                        metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Incoming::PingResp => {}
                Incoming::Disconnect { code } => {
                    metrics.note_error_code(i16::from(code));
                    return Err(anyhow!("broker sent DISCONNECT (reason {code})"));
                }
                other => {
                    metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("publisher {}: unexpected {other:?}", cfg.client_id);
                }
            }
        }
        if !out.is_empty() {
            let mut s = wstream
                .lock()
                .map_err(|_| anyhow!("socket lock poisoned"))?;
            s.write_all(&out).context("writing PUBREL")?;
            out.clear();
        }
        if acked > 0 {
            metrics.sent_msgs.fetch_add(acked, Ordering::Relaxed);
            metrics
                .sent_bytes
                .fetch_add(acked * size, Ordering::Relaxed);
            sent_topic.fetch_add(acked, Ordering::Relaxed);
        }
        if local.due() {
            metrics.merge_publish(local);
        }
        if errors > 0 {
            metrics.pub_errors.fetch_add(errors, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_hands_out_distinct_nonzero_ids_and_blocks_when_full() {
        let w = Window::new(3);
        let a = w.try_acquire(1).unwrap();
        let b = w.try_acquire(2).unwrap();
        let c = w.try_acquire(3).unwrap();
        assert!(a != 0 && a != b && b != c && a != c);
        assert!(w.try_acquire(4).is_none());
        assert_eq!(w.remove(b).unwrap().intended_us, 2);
        assert!(w.try_acquire(5).is_some());
        assert_eq!(w.close(), 3);
        assert!(w.try_acquire(6).is_none());
    }

    #[test]
    fn packet_ids_wrap_without_zero() {
        let w = Window::new(1);
        for _ in 0..70_000 {
            let id = w.try_acquire(0).unwrap();
            assert_ne!(id, 0);
            w.remove(id).unwrap();
        }
    }

    #[test]
    fn payload_carries_the_intended_time() {
        let mut b = BytesMut::new();
        let p = fill_payload(&mut b, 0x0102_0304_0506_0708, 100, &[9u8; 16]);
        assert_eq!(p.len(), 100);
        assert_eq!(&p[..8], &0x0102_0304_0506_0708u64.to_be_bytes());
        assert!(p[8..].iter().all(|x| *x == 9));
    }
}
