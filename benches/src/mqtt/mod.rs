//! `rmq-bench mqtt`: an MQTT 3.1.1 / 5.0 load generator on mqttbytes (std threads, blocking
//! TCP), emqtt-bench style modes with OMB style output (rates, publish and end-to-end latency
//! percentiles from hdrhistogram, JSON).

pub mod codec;
pub mod conn;
pub mod publisher;
pub mod storm;
pub mod subscriber;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::report::{self, Clock, Counters, Metrics, Percentiles, RateFigures};
use codec::Version;
use workload::{Mode, MqttWorkload};

#[derive(Args, Clone)]
pub struct MqttArgs {
    /// Broker address HOST:PORT.
    #[arg(long)]
    pub broker: String,
    /// MQTT workload YAML (benches/workloads/mqtt-*.yaml).
    #[arg(long)]
    pub workload: PathBuf,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Test duration in seconds (overrides testDurationMinutes).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Warmup in seconds (overrides warmupDurationMinutes).
    #[arg(long)]
    pub warmup_s: Option<f64>,
    /// QoS (overrides the workload's qos).
    #[arg(long)]
    pub qos: Option<u8>,
    /// MQTT protocol level: 4 (3.1.1) or 5 (overrides mqttVersion).
    #[arg(long)]
    pub mqtt_version: Option<u8>,
    /// Total PUBLISHes per second, 0 = max (overrides producerRate).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Progress line period in seconds (default: 10, or 1 for runs under a minute).
    #[arg(long)]
    pub progress_s: Option<f64>,
    /// After the test, how long publishers and subscribers may take to settle.
    #[arg(long, default_value_t = report::DEFAULT_DRAIN_S)]
    pub drain_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionFigures {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    pub per_sec: f64,
}

/// The final result of an MQTT run (also written as JSON with `--json`). Field names follow
/// the Kafka result where the meaning is the same.
#[derive(Debug, Clone, Serialize)]
pub struct MqttResult {
    pub protocol: String,
    pub workload: String,
    pub broker: String,
    pub mode: String,
    pub mqtt_version: u8,
    pub qos: u8,
    pub publishers: u32,
    pub subscribers: u32,
    pub topics: u32,
    pub message_size: usize,
    pub target_rate_msgs_per_sec: f64,
    pub duration_s: f64,
    pub publish: RateFigures,
    pub consume: RateFigures,
    pub publish_errors: u64,
    pub consumer_errors: u64,
    /// Malformed or unexpected packets from the broker (whole run).
    pub protocol_errors: u64,
    pub backlog_msgs: i64,
    /// Whole run (warmup and drain included): PUBLISHes acknowledged (QoS 1/2) or written (QoS 0).
    pub published_total: u64,
    /// Whole run: PUBLISHes received over all subscribers.
    pub consumed_total: u64,
    /// Sum over topics of published x matching subscribers.
    pub expected_consumed_total: u64,
    pub drained: bool,
    /// Failure reason codes from PUBACK/PUBREC/PUBCOMP/DISCONNECT (whole run).
    pub error_codes: BTreeMap<i16, u64>,
    /// QoS 1: PUBLISH -> PUBACK, QoS 2: PUBLISH -> PUBCOMP, from the intended send time.
    /// QoS 0 has no acknowledgement: count 0.
    pub publish_latency_us: Percentiles,
    pub end_to_end_latency_us: Percentiles,
    /// TCP connect + CONNECT -> CONNACK (storm: from the intended start).
    pub connect_latency_us: Percentiles,
    pub connections: ConnectionFigures,
}

impl MqttResult {
    pub fn print(&self) {
        println!(
            "----- {} @ {} (MQTT v{} QoS {} {}, {} pub / {} sub / {} topic(s)) -----",
            self.workload,
            self.broker,
            self.mqtt_version,
            self.qos,
            self.mode,
            self.publishers,
            self.subscribers,
            self.topics
        );
        let c = &self.connections;
        if self.mode == "connection-storm" {
            println!(
                "Connections: {} ok / {} failed of {}  {:.1} conn/s",
                c.ok, c.failed, c.attempted, c.per_sec
            );
        } else {
            println!(
                "Publish: {:.1} msg/s  {:.2} MB/s  ({} msgs, {} errors)",
                self.publish.msgs_per_sec,
                self.publish.mb_per_sec,
                self.publish.msgs,
                self.publish_errors
            );
            println!(
                "Receive: {:.1} msg/s  {:.2} MB/s  ({} msgs, {} errors)  backlog {} msgs",
                self.consume.msgs_per_sec,
                self.consume.mb_per_sec,
                self.consume.msgs,
                self.consumer_errors,
                self.backlog_msgs
            );
            println!(
                "Totals:  published {} received {} expected {}{}",
                self.published_total,
                self.consumed_total,
                self.expected_consumed_total,
                if self.drained {
                    ""
                } else {
                    " (drain timed out)"
                }
            );
        }
        if self.protocol_errors > 0 || !self.error_codes.is_empty() {
            println!(
                "Protocol errors: {}  reason codes: {:?}",
                self.protocol_errors, self.error_codes
            );
        }
        for (name, p) in [
            ("Publish latency (us)", &self.publish_latency_us),
            ("E2E latency (us)    ", &self.end_to_end_latency_us),
            ("Connect latency (us)", &self.connect_latency_us),
        ] {
            if p.count > 0 {
                println!(
                    "{name}: avg {:.0} p50 {} p75 {} p95 {} p99 {} p99.9 {} p99.99 {} max {}",
                    p.avg, p.p50, p.p75, p.p95, p.p99, p.p99_9, p.p99_99, p.max
                );
            }
        }
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::FanOut => "fan-out",
        Mode::FanIn => "fan-in",
        Mode::ConnectionStorm => "connection-storm",
    }
}

fn progress_period(a: &MqttArgs, test: Duration) -> Duration {
    Duration::from_secs_f64(a.progress_s.unwrap_or(if test < Duration::from_secs(60) {
        1.0
    } else {
        10.0
    }))
    .max(Duration::from_millis(100))
}

pub fn run(a: &MqttArgs) -> Result<()> {
    let mut w = MqttWorkload::load(&a.workload)?;
    if let Some(d) = a.duration_s {
        w.test_duration_minutes = d / 60.0;
    }
    if let Some(d) = a.warmup_s {
        w.warmup_duration_minutes = d / 60.0;
    }
    if let Some(q) = a.qos {
        w.qos = q;
    }
    if let Some(v) = a.mqtt_version {
        w.mqtt_version = v;
    }
    if let Some(r) = a.rate {
        w.producer_rate = r;
    }
    w.validate()?;
    if !(a.drain_s.is_finite() && a.drain_s >= 0.0) {
        bail!("--drain-s must be >= 0");
    }
    let version = Version::from_level(w.mqtt_version)?;
    let run_id = crate::random_suffix();
    let result = if w.mode == Mode::ConnectionStorm {
        run_storm(a, &w, version, &run_id)?
    } else {
        run_pubsub(a, &w, version, &run_id)?
    };
    result.print();
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&result)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

struct Base<'a> {
    a: &'a MqttArgs,
    w: &'a MqttWorkload,
}

impl Base<'_> {
    fn result(
        &self,
        secs: f64,
        delta: &Counters,
        metrics: &Metrics,
        totals: report::Totals,
        backlog: i64,
        connections: ConnectionFigures,
    ) -> MqttResult {
        let w = self.w;
        MqttResult {
            protocol: "mqtt".into(),
            workload: w.name.clone(),
            broker: self.a.broker.clone(),
            mode: mode_name(w.mode).into(),
            mqtt_version: w.mqtt_version,
            qos: w.qos,
            publishers: w.publishers,
            subscribers: if w.mode == Mode::ConnectionStorm {
                0
            } else {
                w.subscribers
            },
            topics: w.topic_count(),
            message_size: w.message_size,
            target_rate_msgs_per_sec: w.producer_rate,
            duration_s: secs,
            publish: RateFigures::new(delta.sent_msgs, delta.sent_bytes, secs),
            consume: RateFigures::new(delta.recv_msgs, delta.recv_bytes, secs),
            publish_errors: delta.pub_errors,
            consumer_errors: delta.consumer_errors,
            protocol_errors: metrics.protocol_errors.load(Ordering::Relaxed),
            backlog_msgs: backlog,
            published_total: totals.published,
            consumed_total: totals.consumed,
            expected_consumed_total: totals.expected_consumed,
            drained: totals.drained,
            error_codes: metrics.error_codes(),
            publish_latency_us: Percentiles::of(&metrics.total_publish()),
            end_to_end_latency_us: Percentiles::of(&metrics.total_e2e()),
            connect_latency_us: Percentiles::of(&metrics.total_connect()),
            connections,
        }
    }
}

fn run_pubsub(
    a: &MqttArgs,
    w: &MqttWorkload,
    version: Version,
    run_id: &str,
) -> Result<MqttResult> {
    let clock = Clock::new();
    let metrics = Arc::new(Metrics::new());
    let topics = w.topic_count();
    let subs_per_topic = w.subscribers_per_topic();
    let sent_per_topic: Arc<Vec<AtomicU64>> =
        Arc::new((0..topics).map(|_| AtomicU64::new(0)).collect());
    let expected = {
        let (spt, sub) = (sent_per_topic.clone(), subs_per_topic.clone());
        move || -> u64 {
            spt.iter()
                .zip(&sub)
                .map(|(s, n)| s.load(Ordering::Relaxed) * n)
                .sum()
        }
    };
    eprintln!(
        "workload '{}': MQTT v{} QoS {} {}, {} publisher(s) -> {} subscriber(s), {} topic(s) '{}', {} B, rate {}",
        w.name,
        w.mqtt_version,
        w.qos,
        mode_name(w.mode),
        w.publishers,
        w.subscribers,
        topics,
        w.topic(run_id, 0),
        w.message_size,
        if w.producer_rate > 0.0 { format!("{:.0} msg/s", w.producer_rate) } else { "max".into() }
    );
    let mut subscribers = Vec::new();
    let mut attempted = 0u64;
    let setup = Instant::now();
    for s in 0..w.subscribers {
        let filters = match w.mode {
            Mode::FanIn => vec![w.wildcard(run_id)],
            _ => w
                .subscriber_topics(s)
                .into_iter()
                .map(|t| w.topic(run_id, t))
                .collect(),
        };
        let cfg = subscriber::SubscriberConfig {
            addr: a.broker.clone(),
            version,
            client_id: format!("rb{run_id}s{s}"),
            filters,
            qos: w.qos,
        };
        attempted += 1;
        match subscriber::spawn(cfg, clock, metrics.clone(), s as usize) {
            Ok(h) => subscribers.push(h),
            Err(e) => {
                metrics.stop_all();
                for h in subscribers {
                    let _ = h.join();
                }
                return Err(e);
            }
        }
    }
    let shared = publisher::Shared {
        clock,
        metrics: metrics.clone(),
        sent_per_topic: sent_per_topic.clone(),
    };
    let mut publishers = Vec::new();
    for p in 0..w.publishers {
        let t = w.publisher_topic(p);
        let cfg = publisher::PublisherConfig {
            addr: a.broker.clone(),
            version,
            client_id: format!("rb{run_id}p{p}"),
            topic: w.topic(run_id, t),
            topic_index: t as usize,
            qos: w.qos,
            message_size: w.message_size,
            rate: w.rate_per_publisher(),
            max_inflight: w.max_inflight as usize,
            drain: Duration::from_secs_f64(a.drain_s),
        };
        attempted += 1;
        match publisher::spawn(cfg, shared.clone(), p as usize) {
            Ok(h) => publishers.push(h),
            Err(e) => {
                metrics.stop_all();
                for h in publishers {
                    h.join();
                }
                for h in subscribers {
                    let _ = h.join();
                }
                return Err(e);
            }
        }
    }
    let setup_s = setup.elapsed().as_secs_f64();
    eprintln!(
        "connected {} subscriber(s) and {} publisher(s) in {:.2} s",
        w.subscribers, w.publishers, setup_s
    );

    let warmup = w.warmup_duration();
    let test = w.test_duration();
    let period = progress_period(a, test);
    let backlog = |s: &Counters| expected() as i64 - s.recv_msgs as i64;
    let start = Instant::now();
    let mut phase_start = start;
    let mut in_warmup = !warmup.is_zero();
    let mut base = Counters::default();
    let mut last = Counters::default();
    let mut last_t = start;
    let mut next_tick = start + period;
    loop {
        let phase_end = phase_start + if in_warmup { warmup } else { test };
        std::thread::sleep(
            next_tick
                .min(phase_end)
                .saturating_duration_since(Instant::now()),
        );
        let now = Instant::now();
        let snap = metrics.snapshot();
        if now >= next_tick || now >= phase_end {
            let mut line = report::progress_line(
                now - phase_start,
                now - last_t,
                &snap.since(&last),
                backlog(&snap),
                &metrics.interval_publish(),
                &metrics.interval_e2e(),
                in_warmup,
            );
            if snap.protocol_errors > 0 {
                line.push_str(&format!(" | proto err {}", snap.protocol_errors));
            }
            eprintln!("{line}");
            last = snap;
            last_t = now;
            next_tick = now + period;
        }
        if now >= phase_end {
            if in_warmup {
                in_warmup = false;
                phase_start = now;
                base = snap;
                metrics.reset_totals();
                eprintln!("warmup done; measuring for {:.1} s", test.as_secs_f64());
                continue;
            }
            break;
        }
    }
    let end = Instant::now();
    let final_snap = metrics.snapshot();
    let final_backlog = backlog(&final_snap);
    // Freeze the latency figures of the measured window before the drain adds to them.
    let pub_hist = metrics.total_publish();
    let e2e_hist = metrics.total_e2e();
    let conn_hist = metrics.total_connect();
    metrics.stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join();
    }
    let drained = report::drain(&metrics, a.drain_s, |s| s.recv_msgs >= expected());
    metrics.stop_consumers.store(true, Ordering::Relaxed);
    for h in subscribers {
        let _ = h.join();
    }
    let whole = metrics.snapshot();
    let secs = (end - phase_start).as_secs_f64();
    let b = Base { a, w };
    let mut r = b.result(
        secs,
        &final_snap.since(&base),
        &metrics,
        report::Totals {
            published: whole.sent_msgs,
            consumed: whole.recv_msgs,
            expected_consumed: expected(),
            drained,
        },
        final_backlog,
        ConnectionFigures {
            attempted,
            ok: attempted,
            failed: 0,
            per_sec: attempted as f64 / setup_s.max(1e-9),
        },
    );
    r.publish_latency_us = Percentiles::of(&pub_hist);
    r.end_to_end_latency_us = Percentiles::of(&e2e_hist);
    r.connect_latency_us = Percentiles::of(&conn_hist);
    r.protocol_errors = whole.protocol_errors;
    Ok(r)
}

fn run_storm(a: &MqttArgs, w: &MqttWorkload, version: Version, run_id: &str) -> Result<MqttResult> {
    let clock = Clock::new();
    let metrics = Arc::new(Metrics::new());
    let test = w.test_duration();
    eprintln!(
        "workload '{}': MQTT v{} connection storm, {} connections by {} worker(s), rate {}, {}",
        w.name,
        w.mqtt_version,
        w.connections,
        w.publishers,
        if w.connection_rate > 0.0 {
            format!("{:.0} conn/s", w.connection_rate)
        } else {
            "max".into()
        },
        if w.hold_connections {
            "held open"
        } else {
            "closed at once"
        }
    );
    let storm = Arc::new(storm::Storm {
        addr: a.broker.clone(),
        version,
        run_id: run_id.to_string(),
        total: w.connections,
        rate: (w.connection_rate > 0.0).then_some(w.connection_rate),
        hold: w.hold_connections,
        start_us: clock.now_us(),
        next: AtomicU64::new(0),
        held: Mutex::new(Vec::new()),
        failed: AtomicU64::new(0),
    });
    let start = Instant::now();
    let mut workers = Vec::new();
    for i in 0..w.publishers {
        workers.push(storm::spawn(
            storm.clone(),
            clock,
            metrics.clone(),
            i as usize,
        )?);
    }
    let period = progress_period(a, test);
    let mut last = Counters::default();
    let mut last_t = start;
    let deadline = start + test;
    loop {
        let done = workers.iter().all(|h| h.is_finished());
        let now = Instant::now();
        if done || now >= deadline {
            break;
        }
        std::thread::sleep(period.min(deadline - now).min(Duration::from_millis(20)));
        let now = Instant::now();
        if now - last_t >= period {
            let snap = metrics.snapshot();
            let d = snap.since(&last);
            let s = (now - last_t).as_secs_f64();
            eprintln!(
                "[{:>6.1}s] Connect rate {:>9.1} conn/s | ok {} failed {} | Connect lat (us) {}",
                (now - start).as_secs_f64(),
                d.sent_msgs as f64 / s,
                snap.sent_msgs,
                snap.pub_errors,
                Percentiles::of(&metrics.interval_connect()).line()
            );
            last = snap;
            last_t = now;
        }
    }
    metrics.stop_all();
    for h in workers {
        let _ = h.join();
    }
    let end = Instant::now();
    let snap = metrics.snapshot();
    storm::close_all(&storm);
    let secs = (end - start).as_secs_f64();
    let ok = snap.sent_msgs;
    let failed = storm.failed.load(Ordering::Relaxed);
    let b = Base { a, w };
    let mut r = b.result(
        secs,
        &Counters::default(),
        &metrics,
        report::Totals {
            drained: true,
            ..Default::default()
        },
        0,
        ConnectionFigures {
            attempted: ok + failed,
            ok,
            failed,
            per_sec: ok as f64 / secs.max(1e-9),
        },
    );
    r.publish_errors = failed;
    Ok(r)
}
