//! One producer = one connection = a writer thread (accumulates records into RecordBatch v2
//! per partition, sends pipelined Produce requests) and a reader thread (matches responses to
//! requests in order and records publish latency from each record's intended send time).

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::kafka_client::{self, read_frame, Versions, READ_BUFFER_BYTES};
use crate::report::{Clock, LocalHist, Metrics};

/// Highest `--max-in-flight` accepted; also the capacity of the request-metadata queue
/// between writer and reader (credits keep it from ever filling).
pub const MAX_IN_FLIGHT_LIMIT: usize = 64;
/// A Produce request carries at most this many record bytes (one batch per partition).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// The accumulator (batches waiting for an in-flight slot) holds at most this many bytes;
/// past it the writer stops generating records and waits for the broker.
pub const MAX_ACCUMULATED_BYTES: usize = 16 * 1024 * 1024;
/// ... and at most this many batches.
pub const MAX_ACCUMULATED_BATCHES: usize = 4096;
/// Largest `--batch-bytes`.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Record overhead inside a v2 batch (length, attributes, deltas, key/value lengths, headers
/// count: varints, at most ~20 bytes for our records).
pub const RECORD_OVERHEAD: usize = 20;
/// RecordBatch v2 header size.
pub const BATCH_HEADER: usize = 61;
/// Longest a writer sleeps between checks of the stop flag and its schedule.
pub const MAX_IDLE_WAIT: Duration = Duration::from_millis(5);
/// Socket read timeout for Produce responses: a broker silent this long fails the producer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Filler bytes (pseudo-random, so the payload is not trivially compressible).
pub const FILLER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub addr: String,
    pub versions: Versions,
    pub topic: String,
    pub partitions: i32,
    /// First partition this producer sticks to (spreads producers over partitions).
    pub first_partition: i32,
    pub message_size: usize,
    /// Messages per second for this producer; None = max rate.
    pub rate: Option<f64>,
    pub acks: i16,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
}

/// Counting semaphore for in-flight requests.
struct Credits {
    avail: Mutex<usize>,
    cv: Condvar,
}

impl Credits {
    fn new(n: usize) -> Self {
        Credits {
            avail: Mutex::new(n),
            cv: Condvar::new(),
        }
    }

    /// Take a credit, waiting at most `wait`. Returns false on timeout.
    fn acquire(&self, wait: Duration) -> bool {
        let Ok(mut a) = self.avail.lock() else {
            return false;
        };
        if *a == 0 {
            match self.cv.wait_timeout_while(a, wait, |a| *a == 0) {
                Ok((g, _)) => a = g,
                Err(_) => return false,
            }
        }
        if *a > 0 {
            *a -= 1;
            true
        } else {
            false
        }
    }

    fn release(&self) {
        if let Ok(mut a) = self.avail.lock() {
            *a += 1;
            self.cv.notify_one();
        }
    }
}

/// A batch being filled or waiting to be sent.
struct Pending {
    partition: i32,
    payload: BytesMut,
    intended_us: Vec<u64>,
    est_bytes: usize,
}

impl Pending {
    fn new(partition: i32) -> Self {
        Pending {
            partition,
            payload: BytesMut::new(),
            intended_us: Vec::new(),
            est_bytes: BATCH_HEADER,
        }
    }

    fn is_empty(&self) -> bool {
        self.intended_us.is_empty()
    }
}

/// What the reader needs to account for one batch of a request.
struct SentBatch {
    partition: i32,
    bytes: u64,
    intended_us: Vec<u64>,
}

struct InFlight {
    correlation_id: i32,
    batches: Vec<SentBatch>,
}

pub struct ProducerHandle {
    writer: JoinHandle<()>,
    reader: Option<JoinHandle<()>>,
}

impl ProducerHandle {
    pub fn join(self) {
        let _ = self.writer.join();
        if let Some(r) = self.reader {
            let _ = r.join();
        }
    }
}

pub fn filler() -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut b = BytesMut::with_capacity(FILLER_BYTES);
    while b.len() < FILLER_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.put_u64(x);
    }
    b.freeze()
}

/// Encode one RecordBatch v2. Every record gets offset i and sequence i - 1 so that
/// offset - sequence is constant (the encoder splits batches otherwise) and the batch's base
/// sequence is -1 (no idempotence).
pub fn encode_batch(
    out: &mut BytesMut,
    payload: Bytes,
    message_size: usize,
    intended_us: &[u64],
) -> Result<()> {
    let records: Vec<Record> = intended_us
        .iter()
        .enumerate()
        .map(|(i, t)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: (*t / 1000) as i64,
            key: None,
            value: Some(payload.slice(i * message_size..(i + 1) * message_size)),
            headers: Default::default(),
        })
        .collect();
    RecordBatchEncoder::encode(
        out,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
}

pub fn spawn(
    cfg: ProducerConfig,
    clock: Clock,
    metrics: Arc<Metrics>,
    id: usize,
) -> Result<ProducerHandle> {
    let stream = kafka_client::connect(&cfg.addr)?;
    stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
    let max_in_flight = cfg.max_in_flight.clamp(1, MAX_IN_FLIGHT_LIMIT);
    let credits = Arc::new(Credits::new(max_in_flight));
    let (reader, tx) = if cfg.acks == 0 {
        (None, None)
    } else {
        let (tx, rx) = sync_channel::<InFlight>(MAX_IN_FLIGHT_LIMIT);
        let rs = stream.try_clone()?;
        let (m, c, v) = (metrics.clone(), credits.clone(), cfg.versions.produce);
        let h = std::thread::Builder::new()
            .name(format!("prod-rd-{id}"))
            .spawn(move || {
                if let Err(e) = reader_loop(rs, rx, v, clock, &m, &c) {
                    if !m.stopped() {
                        eprintln!("producer {id} reader: {e:#}");
                    }
                }
            })?;
        (Some(h), Some(tx))
    };
    let writer = std::thread::Builder::new()
        .name(format!("prod-wr-{id}"))
        .spawn(move || {
            let mut w = Writer::new(cfg, clock, metrics.clone(), stream, tx, credits);
            if let Err(e) = w.run() {
                eprintln!("producer {id} writer: {e:#}");
                metrics.pub_errors.fetch_add(1, Ordering::Relaxed);
            }
            // Dropping the writer drops the metadata sender, which ends the reader once it
            // has accounted for every request in flight.
        })?;
    Ok(ProducerHandle { writer, reader })
}

struct Writer {
    cfg: ProducerConfig,
    clock: Clock,
    metrics: Arc<Metrics>,
    stream: TcpStream,
    tx: Option<SyncSender<InFlight>>,
    credits: Arc<Credits>,
    filler: Bytes,
    current: Pending,
    ready: VecDeque<Pending>,
    ready_bytes: usize,
    next_partition: i32,
    correlation_id: i32,
    out: BytesMut,
    batch_buf: BytesMut,
    /// acks=0: publish latency is the time until the request is written.
    local: LocalHist,
}

impl Writer {
    fn new(
        cfg: ProducerConfig,
        clock: Clock,
        metrics: Arc<Metrics>,
        stream: TcpStream,
        tx: Option<SyncSender<InFlight>>,
        credits: Arc<Credits>,
    ) -> Self {
        let first = cfg.first_partition.rem_euclid(cfg.partitions.max(1));
        Writer {
            current: Pending::new(first),
            next_partition: (first + 1) % cfg.partitions.max(1),
            cfg,
            clock,
            metrics,
            stream,
            tx,
            credits,
            filler: filler(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            correlation_id: 1,
            out: BytesMut::new(),
            batch_buf: BytesMut::new(),
            local: LocalHist::new(),
        }
    }

    fn record_size(&self) -> usize {
        self.cfg.message_size + RECORD_OVERHEAD
    }

    fn accumulator_full(&self) -> bool {
        self.ready_bytes >= MAX_ACCUMULATED_BYTES || self.ready.len() >= MAX_ACCUMULATED_BATCHES
    }

    /// Add one record with the given intended send time to the sticky partition's batch.
    fn append(&mut self, intended_us: u64) {
        let n = self.cfg.message_size;
        let p = &mut self.current;
        p.payload.reserve(n);
        p.payload.put_u64(intended_us);
        let mut left = n - 8;
        while left > 0 {
            let k = left.min(self.filler.len());
            p.payload.put_slice(&self.filler[..k]);
            left -= k;
        }
        p.intended_us.push(intended_us);
        p.est_bytes += n + RECORD_OVERHEAD;
        if p.est_bytes + self.record_size() > self.cfg.batch_bytes {
            self.seal();
        }
    }

    /// Move the current batch to the ready queue and stick to the next partition.
    fn seal(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let next = Pending::new(self.next_partition);
        self.next_partition = (self.next_partition + 1) % self.cfg.partitions.max(1);
        let full = std::mem::replace(&mut self.current, next);
        self.ready_bytes += full.est_bytes;
        self.ready.push_back(full);
    }

    fn run(&mut self) -> Result<()> {
        let interval_us = self.cfg.rate.map(|r| 1e6 / r);
        let mut next_intended = self.clock.now_us() as f64;
        let linger_us = self.cfg.linger.as_micros() as u64;
        loop {
            let stopping = self.metrics.stopped();
            let now = self.clock.now_us();
            if !stopping {
                // Generate what is due, bounded by the accumulator.
                match interval_us {
                    Some(iv) => {
                        while next_intended <= now as f64 && !self.accumulator_full() {
                            self.append(next_intended as u64);
                            next_intended += iv;
                        }
                    }
                    None => {
                        // Max rate: keep one full batch per partition ready for the next request.
                        let want = self.cfg.partitions.max(1) as usize;
                        while !self.accumulator_full() && self.ready.len() < want {
                            self.append(now);
                        }
                    }
                }
            }
            // A lingered batch is sendable but keeps accepting records until it is drained
            // into a request (as in Kafka's accumulator): while the broker holds every credit,
            // records pile into it instead of into one-record batches.
            let lingered = !self.current.is_empty()
                && (stopping || self.current.intended_us[0] + linger_us <= now);
            if stopping && self.ready.is_empty() && self.current.is_empty() {
                self.metrics.merge_publish(&mut self.local);
                return Ok(());
            }
            // Sleep until the next record is due or the current batch lingers out.
            let mut wake = now + MAX_IDLE_WAIT.as_micros() as u64;
            if interval_us.is_some() && !self.accumulator_full() {
                wake = wake.min(next_intended as u64);
            }
            if !self.current.is_empty() && !lingered {
                wake = wake.min(self.current.intended_us[0] + linger_us);
            }
            let wait = self
                .clock
                .instant_of(wake)
                .saturating_duration_since(std::time::Instant::now());
            if !self.ready.is_empty() || lingered {
                // Wait for a credit, but no longer than until there is more to generate.
                let must_wait = stopping || self.accumulator_full() || interval_us.is_none();
                let wait = if must_wait { MAX_IDLE_WAIT } else { wait };
                if self.credits.acquire(wait) {
                    self.send(lingered)?;
                }
                continue;
            }
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    }

    /// Build and write one Produce request from the full batches (at most one per partition),
    /// plus the current batch if it has lingered. The caller holds a credit.
    fn send(&mut self, take_current: bool) -> Result<()> {
        let mut parts: Vec<PartitionProduceData> = Vec::new();
        let mut sent: Vec<SentBatch> = Vec::new();
        let mut request_bytes = 0usize;
        let mut i = 0;
        while i < self.ready.len() {
            let dup = sent.iter().any(|s| s.partition == self.ready[i].partition);
            if dup
                || (request_bytes > 0
                    && request_bytes + self.ready[i].est_bytes > MAX_REQUEST_BYTES)
            {
                i += 1;
                continue;
            }
            let Some(p) = self.ready.remove(i) else { break };
            self.ready_bytes -= p.est_bytes;
            request_bytes += p.est_bytes;
            self.push_batch(p, &mut parts, &mut sent)?;
        }
        if take_current
            && !self.current.is_empty()
            && !sent.iter().any(|s| s.partition == self.current.partition)
            && (request_bytes == 0 || request_bytes + self.current.est_bytes <= MAX_REQUEST_BYTES)
        {
            self.seal();
            if let Some(p) = self.ready.pop_back() {
                self.ready_bytes -= p.est_bytes;
                self.push_batch(p, &mut parts, &mut sent)?;
            }
        }
        if parts.is_empty() {
            self.credits.release();
            return Ok(());
        }
        let req = ProduceRequest::default()
            .with_acks(self.cfg.acks)
            .with_timeout_ms(RESPONSE_TIMEOUT.as_millis() as i32)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(self.cfg.topic.clone())))
                .with_partition_data(parts)]);
        let id = self.correlation_id;
        self.correlation_id = self.correlation_id.wrapping_add(1);
        self.out.clear();
        kafka_client::encode_request(&mut self.out, id, self.cfg.versions.produce, &req)?;
        if let Some(tx) = &self.tx {
            tx.send(InFlight {
                correlation_id: id,
                batches: sent,
            })
            .map_err(|_| anyhow!("producer reader has stopped"))?;
            self.stream
                .write_all(&self.out)
                .context("writing Produce")?;
        } else {
            self.stream
                .write_all(&self.out)
                .context("writing Produce")?;
            let now = self.clock.now_us();
            for b in &sent {
                for t in &b.intended_us {
                    self.local.record(now.saturating_sub(*t));
                }
                self.metrics
                    .sent_msgs
                    .fetch_add(b.intended_us.len() as u64, Ordering::Relaxed);
                self.metrics
                    .sent_bytes
                    .fetch_add(b.bytes, Ordering::Relaxed);
            }
            if self.local.due() {
                self.metrics.merge_publish(&mut self.local);
            }
            self.credits.release();
        }
        Ok(())
    }
}

impl Writer {
    fn push_batch(
        &mut self,
        p: Pending,
        parts: &mut Vec<PartitionProduceData>,
        sent: &mut Vec<SentBatch>,
    ) -> Result<()> {
        self.batch_buf.clear();
        let payload_len = p.payload.len() as u64;
        encode_batch(
            &mut self.batch_buf,
            p.payload.freeze(),
            self.cfg.message_size,
            &p.intended_us,
        )?;
        parts.push(
            PartitionProduceData::default()
                .with_index(p.partition)
                .with_records(Some(self.batch_buf.split().freeze())),
        );
        sent.push(SentBatch {
            partition: p.partition,
            bytes: payload_len,
            intended_us: p.intended_us,
        });
        Ok(())
    }
}

fn reader_loop(
    stream: TcpStream,
    rx: Receiver<InFlight>,
    version: i16,
    clock: Clock,
    metrics: &Metrics,
    credits: &Credits,
) -> Result<()> {
    let mut rd = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut local = LocalHist::new();
    // recv() fails once the writer is gone and every queued request has been accounted for.
    while let Ok(inflight) = rx.recv() {
        let result = read_one(&mut rd, &inflight, version, clock, metrics, &mut local);
        credits.release();
        if let Err(e) = result {
            // Everything still in flight on this connection is lost.
            let mut lost: u64 = inflight
                .batches
                .iter()
                .map(|b| b.intended_us.len() as u64)
                .sum();
            while let Ok(f) = rx.try_recv() {
                lost += f
                    .batches
                    .iter()
                    .map(|b| b.intended_us.len() as u64)
                    .sum::<u64>();
                credits.release();
            }
            metrics.pub_errors.fetch_add(lost, Ordering::Relaxed);
            metrics.merge_publish(&mut local);
            return Err(e);
        }
    }
    metrics.merge_publish(&mut local);
    Ok(())
}

fn read_one(
    rd: &mut BufReader<TcpStream>,
    inflight: &InFlight,
    version: i16,
    clock: Clock,
    metrics: &Metrics,
    local: &mut LocalHist,
) -> Result<()> {
    let frame = read_frame(rd).context("reading Produce response")?;
    let now = clock.now_us();
    let (cid, resp) = kafka_client::decode_response::<ProduceRequest>(frame, version)?;
    if cid != inflight.correlation_id {
        bail!(
            "correlation id mismatch: expected {}, got {cid}",
            inflight.correlation_id
        );
    }
    for b in &inflight.batches {
        let code = resp
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == b.partition)
            .map(|p| p.error_code);
        let n = b.intended_us.len() as u64;
        match code {
            Some(0) => {
                for t in &b.intended_us {
                    local.record(now.saturating_sub(*t));
                }
                metrics.sent_msgs.fetch_add(n, Ordering::Relaxed);
                metrics.sent_bytes.fetch_add(b.bytes, Ordering::Relaxed);
            }
            Some(code) => {
                metrics.pub_errors.fetch_add(n, Ordering::Relaxed);
                metrics.note_error_code(code);
            }
            None => {
                metrics.pub_errors.fetch_add(n, Ordering::Relaxed);
                metrics.note_error_code(-2);
            }
        }
    }
    if local.due() {
        metrics.merge_publish(local);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn encoded_batch_is_one_batch_with_no_sequence() {
        let n = 3;
        let size = 16;
        let mut payload = BytesMut::new();
        for i in 0..n {
            payload.put_u64(1000 + i as u64);
            payload.put_u64(0);
        }
        let mut out = BytesMut::new();
        encode_batch(&mut out, payload.freeze(), size, &[1000, 1001, 1002]).unwrap();
        let mut b = out.freeze();
        let info = RecordBatchDecoder::decode_batch_info(&mut b.clone()).unwrap();
        assert_eq!(info.len(), 1, "the encoder must not split the batch");
        assert_eq!(info[0].record_count, 3);
        assert_eq!(info[0].base_sequence, -1);
        assert_eq!(info[0].producer_id, -1);
        let set = RecordBatchDecoder::decode(&mut b).unwrap();
        assert_eq!(set.records.len(), 3);
        assert_eq!(set.records[2].offset, 2);
        assert_eq!(
            &set.records[1].value.as_ref().unwrap()[..8],
            &1001u64.to_be_bytes()
        );
    }
}
