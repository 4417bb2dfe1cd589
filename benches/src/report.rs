//! Shared counters and latency histograms, OMB-style progress lines and the final result.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram tracks (values above are clamped): 10 minutes in microseconds.
pub const MAX_LATENCY_US: u64 = 600 * 1_000_000;
/// Significant figures kept by every histogram (bounded memory: ~200 KiB each at this range).
pub const HIST_SIGFIG: u8 = 3;
/// Distinct Kafka error codes tracked (Kafka defines ~130).
pub const MAX_ERROR_CODES: usize = 256;
/// OMB counts MB/s in MiB.
pub const BYTES_PER_MB: f64 = 1024.0 * 1024.0;

/// Default `--drain-s`: how long consumers may catch up after the producers stopped.
pub const DEFAULT_DRAIN_S: f64 = 30.0;
/// How often the drain loop checks the counters.
pub const DRAIN_POLL: Duration = Duration::from_millis(20);
/// The drain gives up early when the consumed count has not moved for this long (a broker
/// that dropped messages will never deliver them).
pub const DRAIN_STALL: Duration = Duration::from_secs(5);

/// After the producers stopped: wait until `done(counters)` holds or `secs` pass, printing the
/// backlog once a second. Returns whether `done` held.
pub fn drain(metrics: &Metrics, secs: f64, done: impl Fn(&Counters) -> bool) -> bool {
    let limit = if secs.is_finite() && secs > 0.0 {
        Duration::from_secs_f64(secs)
    } else {
        Duration::ZERO
    };
    let start = Instant::now();
    let mut next_print = start + Duration::from_secs(1);
    let mut last_recv = metrics.snapshot().recv_msgs;
    let mut last_progress = start;
    loop {
        let s = metrics.snapshot();
        if done(&s) {
            return true;
        }
        let now = Instant::now();
        if s.recv_msgs != last_recv {
            last_recv = s.recv_msgs;
            last_progress = now;
        }
        if now - start >= limit || now - last_progress >= DRAIN_STALL {
            eprintln!(
                "drain: gave up after {:.1} s (published {}, consumed {}; no progress for {:.1} s)",
                (now - start).as_secs_f64(),
                s.sent_msgs,
                s.recv_msgs,
                (now - last_progress).as_secs_f64()
            );
            return false;
        }
        if now >= next_print {
            eprintln!(
                "draining: published {} consumed {}",
                s.sent_msgs, s.recv_msgs
            );
            next_print = now + Duration::from_secs(1);
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // Construction only fails for invalid bounds, which are constants here.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, HIST_SIGFIG).expect("valid histogram bounds")
}

/// Wall-clock microseconds since the UNIX epoch, advanced by a monotonic clock so producer and
/// consumer threads of this process agree and never see time go backwards.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_unix_us: u64,
}

impl Clock {
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Clock {
            base: Instant::now(),
            base_unix_us: unix,
        }
    }

    pub fn now_us(&self) -> u64 {
        self.base_unix_us + self.base.elapsed().as_micros() as u64
    }

    /// The `Instant` at which `now_us()` returns `us` (for sleeping until a scheduled time).
    pub fn instant_of(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us.saturating_sub(self.base_unix_us))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Interval and cumulative histogram of one latency kind.
pub struct Recorder {
    interval: Histogram<u64>,
    total: Histogram<u64>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            interval: new_histogram(),
            total: new_histogram(),
        }
    }
}

/// How often a thread merges its local latencies into the shared recorder. A merge walks the
/// whole counts array (~20k slots at these bounds), so merging per response would cost more
/// than the I/O it measures.
pub const MERGE_INTERVAL: Duration = Duration::from_millis(100);

/// Per-thread latency batch merged into the shared recorder every `MERGE_INTERVAL` (callers
/// check `due()`), so the lock and the merge are off the per-record path.
pub struct LocalHist {
    pub hist: Histogram<u64>,
    last_merge: Instant,
}

impl LocalHist {
    pub fn new() -> Self {
        LocalHist {
            hist: new_histogram(),
            last_merge: Instant::now(),
        }
    }

    pub fn record(&mut self, us: u64) {
        // saturating_record clamps to the highest trackable value instead of failing.
        self.hist.saturating_record(us.max(1));
    }

    /// Whether `MERGE_INTERVAL` has passed since the last merge.
    pub fn due(&self) -> bool {
        self.last_merge.elapsed() >= MERGE_INTERVAL
    }
}

impl Default for LocalHist {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Metrics {
    /// Producers / publishers stop generating and drain what is in flight.
    pub stop: AtomicBool,
    /// Consumers / subscribers stop (set after the drain, so they can catch up first).
    pub stop_consumers: AtomicBool,
    pub sent_msgs: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub pub_errors: AtomicU64,
    pub recv_msgs: AtomicU64,
    pub recv_bytes: AtomicU64,
    pub consumer_errors: AtomicU64,
    /// Malformed or unexpected packets from the broker (never a panic).
    pub protocol_errors: AtomicU64,
    error_codes: Mutex<BTreeMap<i16, u64>>,
    pub_lat: Mutex<Recorder>,
    e2e_lat: Mutex<Recorder>,
    conn_lat: Mutex<Recorder>,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            stop: AtomicBool::new(false),
            stop_consumers: AtomicBool::new(false),
            sent_msgs: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            pub_errors: AtomicU64::new(0),
            recv_msgs: AtomicU64::new(0),
            recv_bytes: AtomicU64::new(0),
            consumer_errors: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            error_codes: Mutex::new(BTreeMap::new()),
            pub_lat: Mutex::new(Recorder::new()),
            e2e_lat: Mutex::new(Recorder::new()),
            conn_lat: Mutex::new(Recorder::new()),
        }
    }

    /// Count one error response by Kafka error code (-2: partition missing from the
    /// response). At most `MAX_ERROR_CODES` distinct codes are kept; the rest count as -3.
    pub fn note_error_code(&self, code: i16) {
        if let Ok(mut m) = self.error_codes.lock() {
            let key = if m.len() >= MAX_ERROR_CODES && !m.contains_key(&code) {
                -3
            } else {
                code
            };
            *m.entry(key).or_insert(0) += 1;
        }
    }

    pub fn error_codes(&self) -> BTreeMap<i16, u64> {
        self.error_codes
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn consumers_stopped(&self) -> bool {
        self.stop_consumers.load(Ordering::Relaxed)
    }

    /// Stop everything (producers and consumers) at once.
    pub fn stop_all(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stop_consumers.store(true, Ordering::Relaxed);
    }

    fn merge(rec: &Mutex<Recorder>, local: &mut LocalHist) {
        local.last_merge = Instant::now();
        if local.hist.is_empty() {
            return;
        }
        if let Ok(mut r) = rec.lock() {
            // Both histograms share the same bounds, so add cannot fail.
            let _ = r.interval.add(&local.hist);
            let _ = r.total.add(&local.hist);
        }
        local.hist.reset();
    }

    pub fn merge_publish(&self, local: &mut LocalHist) {
        Self::merge(&self.pub_lat, local);
    }

    pub fn merge_e2e(&self, local: &mut LocalHist) {
        Self::merge(&self.e2e_lat, local);
    }

    pub fn merge_connect(&self, local: &mut LocalHist) {
        Self::merge(&self.conn_lat, local);
    }

    fn take_interval(rec: &Mutex<Recorder>) -> Histogram<u64> {
        match rec.lock() {
            Ok(mut r) => {
                let h = r.interval.clone();
                r.interval.reset();
                h
            }
            Err(_) => new_histogram(),
        }
    }

    fn total(rec: &Mutex<Recorder>) -> Histogram<u64> {
        rec.lock()
            .map(|r| r.total.clone())
            .unwrap_or_else(|_| new_histogram())
    }

    /// End of warmup: forget everything recorded so far.
    pub fn reset_totals(&self) {
        for rec in [&self.pub_lat, &self.e2e_lat, &self.conn_lat] {
            if let Ok(mut r) = rec.lock() {
                r.interval.reset();
                r.total.reset();
            }
        }
    }

    pub fn snapshot(&self) -> Counters {
        Counters {
            sent_msgs: self.sent_msgs.load(Ordering::Relaxed),
            sent_bytes: self.sent_bytes.load(Ordering::Relaxed),
            pub_errors: self.pub_errors.load(Ordering::Relaxed),
            recv_msgs: self.recv_msgs.load(Ordering::Relaxed),
            recv_bytes: self.recv_bytes.load(Ordering::Relaxed),
            consumer_errors: self.consumer_errors.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
        }
    }

    pub fn interval_publish(&self) -> Histogram<u64> {
        Self::take_interval(&self.pub_lat)
    }

    pub fn interval_e2e(&self) -> Histogram<u64> {
        Self::take_interval(&self.e2e_lat)
    }

    pub fn total_publish(&self) -> Histogram<u64> {
        Self::total(&self.pub_lat)
    }

    pub fn total_e2e(&self) -> Histogram<u64> {
        Self::total(&self.e2e_lat)
    }

    pub fn interval_connect(&self) -> Histogram<u64> {
        Self::take_interval(&self.conn_lat)
    }

    pub fn total_connect(&self) -> Histogram<u64> {
        Self::total(&self.conn_lat)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub sent_msgs: u64,
    pub sent_bytes: u64,
    pub pub_errors: u64,
    pub recv_msgs: u64,
    pub recv_bytes: u64,
    pub consumer_errors: u64,
    pub protocol_errors: u64,
}

impl Counters {
    pub fn since(&self, base: &Counters) -> Counters {
        Counters {
            sent_msgs: self.sent_msgs.saturating_sub(base.sent_msgs),
            sent_bytes: self.sent_bytes.saturating_sub(base.sent_bytes),
            pub_errors: self.pub_errors.saturating_sub(base.pub_errors),
            recv_msgs: self.recv_msgs.saturating_sub(base.recv_msgs),
            recv_bytes: self.recv_bytes.saturating_sub(base.recv_bytes),
            consumer_errors: self.consumer_errors.saturating_sub(base.consumer_errors),
            protocol_errors: self.protocol_errors.saturating_sub(base.protocol_errors),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub avg: f64,
    pub p50: u64,
    pub p75: u64,
    pub p95: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        Percentiles {
            count: h.len(),
            avg: if h.is_empty() { 0.0 } else { h.mean() },
            p50: h.value_at_quantile(0.50),
            p75: h.value_at_quantile(0.75),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            p99_99: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "avg {:.0} - 50% {} - 99% {} - 99.9% {} - max {}",
            self.avg, self.p50, self.p99, self.p99_9, self.max
        )
    }
}

/// One progress line, OMB style (latencies in microseconds).
pub fn progress_line(
    elapsed: Duration,
    window: Duration,
    delta: &Counters,
    backlog: i64,
    publish: &Histogram<u64>,
    e2e: &Histogram<u64>,
    warmup: bool,
) -> String {
    let s = window.as_secs_f64().max(1e-9);
    let mut line = format!(
        "{}[{:>6.1}s] Pub rate {:>10.1} msg/s / {:>7.2} MB/s | Pub err {:>4} | Cons rate {:>10.1} msg/s / {:>7.2} MB/s | Backlog {:>8.1} K | Pub lat (us) {}",
        if warmup { "warmup " } else { "" },
        elapsed.as_secs_f64(),
        delta.sent_msgs as f64 / s,
        delta.sent_bytes as f64 / s / BYTES_PER_MB,
        delta.pub_errors,
        delta.recv_msgs as f64 / s,
        delta.recv_bytes as f64 / s / BYTES_PER_MB,
        backlog as f64 / 1000.0,
        Percentiles::of(publish).line(),
    );
    if !e2e.is_empty() {
        line.push_str(&format!(" | E2E lat (us) {}", Percentiles::of(e2e).line()));
    }
    line
}

#[derive(Debug, Clone, Serialize)]
pub struct RateFigures {
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub msgs: u64,
    pub bytes: u64,
}

impl RateFigures {
    pub fn new(msgs: u64, bytes: u64, secs: f64) -> Self {
        let s = secs.max(1e-9);
        RateFigures {
            msgs_per_sec: msgs as f64 / s,
            mb_per_sec: bytes as f64 / s / BYTES_PER_MB,
            msgs,
            bytes,
        }
    }
}

/// The final result (also written as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub workload: String,
    pub broker: String,
    pub topics: Vec<String>,
    pub partitions_per_topic: u32,
    pub message_size: usize,
    pub acks: i16,
    pub target_rate_msgs_per_sec: f64,
    pub duration_s: f64,
    pub publish: RateFigures,
    pub consume: RateFigures,
    pub publish_errors: u64,
    pub consumer_errors: u64,
    pub backlog_msgs: i64,
    /// Whole run (warmup and drain included): messages acknowledged by the broker.
    pub published_total: u64,
    /// Whole run: messages consumed (every subscription counts its own copy).
    pub consumed_total: u64,
    /// published_total x subscriptions: what consumed_total must reach when nothing is lost.
    pub expected_consumed_total: u64,
    /// Whether consumers caught up with every published message before the drain timeout.
    pub drained: bool,
    /// Error responses by Kafka error code (whole run, warmup included).
    pub error_codes: BTreeMap<i16, u64>,
    pub publish_latency_us: Percentiles,
    pub end_to_end_latency_us: Percentiles,
}

pub struct ResultInput<'a> {
    pub workload: &'a str,
    pub broker: &'a str,
    pub topics: Vec<String>,
    pub partitions_per_topic: u32,
    pub message_size: usize,
    pub acks: i16,
    pub target_rate: f64,
    pub secs: f64,
    pub delta: Counters,
    pub backlog: i64,
    pub totals: Totals,
    pub error_codes: BTreeMap<i16, u64>,
}

/// Whole-run message accounting (see `BenchResult`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub published: u64,
    pub consumed: u64,
    pub expected_consumed: u64,
    pub drained: bool,
}

impl BenchResult {
    pub fn new(i: ResultInput<'_>, publish: &Histogram<u64>, e2e: &Histogram<u64>) -> Self {
        BenchResult {
            workload: i.workload.to_string(),
            broker: i.broker.to_string(),
            topics: i.topics,
            partitions_per_topic: i.partitions_per_topic,
            message_size: i.message_size,
            acks: i.acks,
            target_rate_msgs_per_sec: i.target_rate,
            duration_s: i.secs,
            publish: RateFigures::new(i.delta.sent_msgs, i.delta.sent_bytes, i.secs),
            consume: RateFigures::new(i.delta.recv_msgs, i.delta.recv_bytes, i.secs),
            publish_errors: i.delta.pub_errors,
            consumer_errors: i.delta.consumer_errors,
            backlog_msgs: i.backlog,
            published_total: i.totals.published,
            consumed_total: i.totals.consumed,
            expected_consumed_total: i.totals.expected_consumed,
            drained: i.totals.drained,
            error_codes: i.error_codes,
            publish_latency_us: Percentiles::of(publish),
            end_to_end_latency_us: Percentiles::of(e2e),
        }
    }

    pub fn print(&self) {
        let p = &self.publish_latency_us;
        let e = &self.end_to_end_latency_us;
        println!(
            "----- {} @ {} (acks={}) -----",
            self.workload, self.broker, self.acks
        );
        println!(
            "Publish: {:.1} msg/s  {:.2} MB/s  ({} msgs, {} errors)",
            self.publish.msgs_per_sec,
            self.publish.mb_per_sec,
            self.publish.msgs,
            self.publish_errors
        );
        println!(
            "Consume: {:.1} msg/s  {:.2} MB/s  ({} msgs, {} errors)  backlog {} msgs",
            self.consume.msgs_per_sec,
            self.consume.mb_per_sec,
            self.consume.msgs,
            self.consumer_errors,
            self.backlog_msgs
        );
        println!(
            "Totals:  published {} consumed {} expected {}{}",
            self.published_total,
            self.consumed_total,
            self.expected_consumed_total,
            if self.drained {
                ""
            } else {
                " (drain timed out)"
            }
        );
        if !self.error_codes.is_empty() {
            println!(
                "Error responses by Kafka error code: {:?}",
                self.error_codes
            );
        }
        println!(
            "Publish latency (us): avg {:.0} p50 {} p75 {} p95 {} p99 {} p99.9 {} p99.99 {} max {}",
            p.avg, p.p50, p.p75, p.p95, p.p99, p.p99_9, p.p99_99, p.max
        );
        if e.count > 0 {
            println!(
                "E2E latency (us):     avg {:.0} p50 {} p75 {} p95 {} p99 {} p99.9 {} p99.99 {} max {}",
                e.avg, e.p50, e.p75, e.p95, e.p99, e.p99_9, e.p99_99, e.max
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((499..=501).contains(&p.p50));
        assert!((989..=991).contains(&p.p99));
        assert_eq!(p.max, 1000);
    }

    #[test]
    fn warmup_reset_forgets_recorded_latency() {
        let m = Metrics::new();
        let mut l = LocalHist::new();
        l.record(5);
        m.merge_publish(&mut l);
        assert_eq!(m.total_publish().len(), 1);
        m.reset_totals();
        assert_eq!(m.total_publish().len(), 0);
    }
}
