//! rmq-bench: an OpenMessaging-style load generator speaking the Kafka protocol directly
//! (kafka-protocol codec, std threads, blocking TCP; no librdkafka) and MQTT 3.1.1 / 5
//! (mqttbytes framing), so every broker and peer is measured with the same client code.

mod consumer;
mod kafka_client;
mod mqtt;
mod producer;
mod report;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::kafka_client::Conn;
use crate::report::{BenchResult, Clock, Counters, Metrics, ResultInput};
use crate::workload::Workload;

#[derive(Parser)]
#[command(
    name = "rmq-bench",
    about = "OpenMessaging-style Kafka and MQTT benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an OMB workload file against a Kafka-compatible broker.
    Kafka {
        #[command(flatten)]
        common: Common,
        /// OMB workload YAML.
        #[arg(long)]
        workload: PathBuf,
    },
    /// Run an MQTT workload file (benches/workloads/mqtt-*.yaml) against an MQTT 3.1.1/5 broker.
    Mqtt(mqtt::MqttArgs),
    /// Producer-only micro benchmark (no workload file, no consumers).
    Produce {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long, default_value_t = 100)]
        message_size: usize,
        #[arg(long, default_value_t = 1)]
        producers: u32,
        /// Total messages per second (0 = max rate).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Total MiB per second (overrides --rate; 0 = unused).
        #[arg(long, default_value_t = 0.0)]
        rate_mbps: f64,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Broker address HOST:PORT.
    #[arg(long)]
    bootstrap: String,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// acks: 1 (leader), -1 (all), 0 (none).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    acks: i16,
    /// Test duration in seconds (overrides testDurationMinutes).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Warmup in seconds (overrides warmupDurationMinutes).
    #[arg(long)]
    warmup_s: Option<f64>,
    /// Largest RecordBatch per partition, bytes.
    #[arg(long, default_value_t = 128 * 1024)]
    batch_bytes: usize,
    /// How long a partial batch waits for more records, milliseconds.
    #[arg(long, default_value_t = 1.0)]
    linger_ms: f64,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 5)]
    max_in_flight: usize,
    /// Progress line period in seconds (default: 10, or 1 for runs under a minute).
    #[arg(long)]
    progress_s: Option<f64>,
    /// Consumer long-poll: FetchRequest.max_wait_ms.
    #[arg(long, default_value_t = 100)]
    fetch_max_wait_ms: i32,
    /// Topic config sent with CreateTopics, KEY=VALUE (repeatable), e.g. storage.engine=memory.
    #[arg(long = "topic-config", value_parser = parse_kv)]
    topic_config: Vec<(String, String)>,
    /// After the test, how long consumers may take to catch up with every published message.
    #[arg(long, default_value_t = report::DEFAULT_DRAIN_S)]
    drain_s: f64,
    /// Topic name prefix (a random suffix is appended).
    #[arg(long, default_value = "rmq-bench")]
    topic_prefix: String,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Kafka { common, workload } => Workload::load(&workload).and_then(|w| run(&common, w)),
        Cmd::Mqtt(args) => mqtt::run(&args),
        Cmd::Produce {
            common,
            partitions,
            message_size,
            producers,
            rate,
            rate_mbps,
        } => {
            let rate = if rate_mbps > 0.0 {
                rate_mbps * report::BYTES_PER_MB / message_size.max(1) as f64
            } else {
                rate
            };
            let w = Workload {
                name: format!(
                    "produce {partitions}p {message_size}B {}",
                    if rate > 0.0 {
                        format!("{rate:.0} msg/s")
                    } else {
                        "max-rate".to_string()
                    }
                ),
                topics: 1,
                partitions_per_topic: partitions,
                message_size,
                subscriptions_per_topic: 0,
                consumer_per_subscription: 1,
                producers_per_topic: producers,
                producer_rate: rate,
                consumer_backlog_size_g_b: 0.0,
                test_duration_minutes: 1.0,
                warmup_duration_minutes: 0.0,
            };
            w.validate().and_then(|_| run(&common, w))
        }
    };
    if let Err(e) = r {
        eprintln!("rmq-bench: {e:#}");
        std::process::exit(1);
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

pub(crate) fn random_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    format!("{:08x}", x as u32)
}

fn run(c: &Common, mut w: Workload) -> Result<()> {
    if let Some(d) = c.duration_s {
        w.test_duration_minutes = d / 60.0;
    }
    if let Some(d) = c.warmup_s {
        w.warmup_duration_minutes = d / 60.0;
    }
    w.validate()?;
    if ![0, 1, -1].contains(&c.acks) {
        bail!("--acks must be 1, -1 or 0");
    }
    if c.batch_bytes == 0 || c.batch_bytes > producer::MAX_BATCH_BYTES {
        bail!("--batch-bytes must be in 1..={}", producer::MAX_BATCH_BYTES);
    }
    if c.max_in_flight == 0 || c.max_in_flight > producer::MAX_IN_FLIGHT_LIMIT {
        bail!(
            "--max-in-flight must be in 1..={}",
            producer::MAX_IN_FLIGHT_LIMIT
        );
    }
    if !(0..=consumer::MAX_FETCH_WAIT_MS).contains(&c.fetch_max_wait_ms) {
        bail!(
            "--fetch-max-wait-ms must be in 0..={}",
            consumer::MAX_FETCH_WAIT_MS
        );
    }
    if !(c.linger_ms.is_finite() && c.linger_ms >= 0.0) {
        bail!("--linger-ms must be >= 0");
    }

    let mut admin = Conn::connect(&c.bootstrap, Default::default())?;
    let versions = admin.negotiate().context("ApiVersions")?;
    eprintln!(
        "broker {}: produce v{} fetch v{} metadata v{} create_topics v{}",
        c.bootstrap, versions.produce, versions.fetch, versions.metadata, versions.create_topics
    );
    let suffix = random_suffix();
    let topics: Vec<String> = (0..w.topics)
        .map(|i| format!("{}-{suffix}-{i}", c.topic_prefix))
        .collect();
    let partitions = w.partitions_per_topic as i32;
    for t in &topics {
        admin.create_topic(t, partitions, &c.topic_config)?;
    }
    for t in &topics {
        admin.wait_for_topic(t, partitions)?;
    }
    eprintln!(
        "workload '{}': {} topic(s) x {} partitions, {} B messages, {} producer(s)/topic, {} subscription(s) x {} consumer(s), rate {}",
        w.name,
        w.topics,
        w.partitions_per_topic,
        w.message_size,
        w.producers_per_topic,
        w.subscriptions_per_topic,
        w.consumer_per_subscription,
        if w.producer_rate > 0.0 { format!("{:.0} msg/s", w.producer_rate) } else { "max".into() }
    );

    let clock = Clock::new();
    let metrics = Arc::new(Metrics::new());
    let mut consumers = Vec::new();
    let mut id = 0;
    for t in &topics {
        for _sub in 0..w.subscriptions_per_topic {
            let n = w.consumer_per_subscription as i32;
            for k in 0..n {
                let parts: Vec<i32> = (0..partitions).filter(|p| p % n == k).collect();
                if parts.is_empty() {
                    continue;
                }
                let cfg = consumer::ConsumerConfig {
                    addr: c.bootstrap.clone(),
                    versions,
                    topic: t.clone(),
                    partitions: parts,
                    backlog_bytes: w.backlog_bytes(),
                    max_wait_ms: c.fetch_max_wait_ms,
                };
                consumers.push(consumer::spawn(cfg, clock, metrics.clone(), id)?);
                id += 1;
            }
        }
    }
    let mut producers = Vec::new();
    for t in &topics {
        for k in 0..w.producers_per_topic {
            let cfg = producer::ProducerConfig {
                addr: c.bootstrap.clone(),
                versions,
                topic: t.clone(),
                partitions,
                first_partition: k as i32,
                message_size: w.message_size,
                rate: w.rate_per_producer(),
                acks: c.acks,
                batch_bytes: c.batch_bytes,
                linger: Duration::from_secs_f64(c.linger_ms / 1000.0),
                max_in_flight: c.max_in_flight,
            };
            producers.push(producer::spawn(cfg, clock, metrics.clone(), id)?);
            id += 1;
        }
    }

    let warmup = w.warmup_duration();
    let test = w.test_duration();
    let period =
        Duration::from_secs_f64(c.progress_s.unwrap_or(if test < Duration::from_secs(60) {
            1.0
        } else {
            10.0
        }))
        .max(Duration::from_millis(100));
    let subs = i64::from(w.subscriptions_per_topic);
    let backlog = |s: &Counters| s.sent_msgs as i64 * subs - s.recv_msgs as i64;

    let start = Instant::now();
    let mut phase_start = start;
    let mut in_warmup = !warmup.is_zero();
    let mut base = Counters::default();
    let mut last = Counters::default();
    let mut last_t = start;
    let mut next_tick = start + period;
    loop {
        let phase_len = if in_warmup { warmup } else { test };
        let phase_end = phase_start + phase_len;
        let wake = next_tick.min(phase_end);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        let snap = metrics.snapshot();
        if now >= next_tick || now >= phase_end {
            let line = report::progress_line(
                now - phase_start,
                now - last_t,
                &snap.since(&last),
                backlog(&snap),
                &metrics.interval_publish(),
                &metrics.interval_e2e(),
                in_warmup,
            );
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
    let publish_hist = metrics.total_publish();
    let e2e_hist = metrics.total_e2e();
    metrics.stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join();
    }
    // Drain: consumers keep fetching until they hold every acknowledged message (or time out).
    let expected = |s: &Counters| s.sent_msgs * subs as u64;
    let drained = report::drain(&metrics, c.drain_s, |s| s.recv_msgs >= expected(s));
    metrics.stop_consumers.store(true, Ordering::Relaxed);
    for h in consumers {
        let _ = h.join();
    }
    let whole = metrics.snapshot();
    let result = BenchResult::new(
        ResultInput {
            workload: &w.name,
            broker: &c.bootstrap,
            topics,
            partitions_per_topic: w.partitions_per_topic,
            message_size: w.message_size,
            acks: c.acks,
            target_rate: w.producer_rate,
            secs: (end - phase_start).as_secs_f64(),
            delta: final_snap.since(&base),
            backlog: backlog(&final_snap),
            totals: report::Totals {
                published: whole.sent_msgs,
                consumed: whole.recv_msgs,
                expected_consumed: expected(&whole),
                drained,
            },
            error_codes: metrics.error_codes(),
        },
        &publish_hist,
        &e2e_hist,
    );
    result.print();
    if let Some(path) = &c.json {
        let text = serde_json::to_string_pretty(&result)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
