//! Per-shard counters for `/metrics`: requests and latency histograms per Kafka API key, bytes
//! in and out, and gauges (connections, partitions, groups, storage counters); MQTT
//! connections, sessions, messages and bytes, bridge and `__mqtt_state` counters.
//!
//! Concurrency contract: each shard is the only writer of its `ShardMetrics` (relaxed atomic
//! stores on its own thread, no locks on the data path); the admin HTTP thread only reads.
//! Counters are monotonic, so a scrape that races a request sees either side of it.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::constants::{LATENCY_BUCKETS_US, METRICS_API_KEYS_MAX};

const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// One plain series: name, Prometheus type, help text and where its value is.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetrics) -> &AtomicU64,
);

#[derive(Default)]
pub struct ShardMetrics {
    requests: Vec<AtomicU64>,
    latency_sum_us: Vec<AtomicU64>,
    /// `latency_buckets[api_key * BUCKETS + bucket]`, not cumulative (summed when rendered).
    latency_buckets: Vec<AtomicU64>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub connections: AtomicU64,
    pub partitions: AtomicU64,
    pub groups: AtomicU64,
    pub appended_bytes: AtomicU64,
    pub appended_batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub mqtt_connections: AtomicU64,
    pub mqtt_messages_received: AtomicU64,
    pub mqtt_messages_sent: AtomicU64,
    pub mqtt_bytes_received: AtomicU64,
    pub mqtt_bytes_sent: AtomicU64,
    pub mqtt_sessions: AtomicU64,
    pub mqtt_bridged_to_kafka: AtomicU64,
    pub mqtt_bridged_from_kafka: AtomicU64,
    pub mqtt_bridge_append_failures: AtomicU64,
    pub mqtt_state_records_written: AtomicU64,
}

fn zeros(count: usize) -> Vec<AtomicU64> {
    (0..count).map(|_| AtomicU64::new(0)).collect()
}

fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::Relaxed);
}

impl ShardMetrics {
    pub fn new() -> ShardMetrics {
        ShardMetrics {
            requests: zeros(METRICS_API_KEYS_MAX),
            latency_sum_us: zeros(METRICS_API_KEYS_MAX),
            latency_buckets: zeros(METRICS_API_KEYS_MAX * BUCKETS),
            ..ShardMetrics::default()
        }
    }

    /// Counts one answered request. Unknown keys (never dispatched) are not counted.
    pub fn observe_request(&self, api_key: i16, bytes_in: usize, bytes_out: usize, us: u64) {
        add(&self.bytes_in, bytes_in as u64);
        add(&self.bytes_out, bytes_out as u64);
        let Some(key) = usize::try_from(api_key)
            .ok()
            .filter(|k| *k < METRICS_API_KEYS_MAX)
        else {
            return;
        };
        add(&self.requests[key], 1);
        add(&self.latency_sum_us[key], us);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        add(&self.latency_buckets[key * BUCKETS + bucket], 1);
    }

    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Renders every shard's metrics in the Prometheus text format (version 0.0.4).
pub fn render(shards: &[std::sync::Arc<ShardMetrics>], api_name: impl Fn(i16) -> String) -> String {
    let mut out = String::new();
    let simple: [Series; 18] = [
        (
            "rmq_kafka_bytes_in_total",
            "counter",
            "Request bytes read",
            |m| &m.bytes_in,
        ),
        (
            "rmq_kafka_bytes_out_total",
            "counter",
            "Response bytes written",
            |m| &m.bytes_out,
        ),
        (
            "rmq_kafka_connections",
            "gauge",
            "Open Kafka connections",
            |m| &m.connections,
        ),
        ("rmq_partitions", "gauge", "Partitions owned", |m| {
            &m.partitions
        }),
        ("rmq_groups", "gauge", "Consumer groups coordinated", |m| {
            &m.groups
        }),
        (
            "rmq_storage_appended_bytes_total",
            "counter",
            "Bytes appended to partition logs",
            |m| &m.appended_bytes,
        ),
        (
            "rmq_storage_appended_batches_total",
            "counter",
            "Batches appended to partition logs",
            |m| &m.appended_batches,
        ),
        (
            "rmq_storage_fsyncs_total",
            "counter",
            "fdatasync calls on segment files",
            |m| &m.fsyncs,
        ),
        (
            "rmq_mqtt_connections",
            "gauge",
            "Open MQTT connections (TCP and WebSocket)",
            |m| &m.mqtt_connections,
        ),
        (
            "rmq_mqtt_sessions",
            "gauge",
            "MQTT sessions held, connected or not",
            |m| &m.mqtt_sessions,
        ),
        (
            "rmq_mqtt_messages_received_total",
            "counter",
            "MQTT PUBLISH messages received from clients (and bridged in)",
            |m| &m.mqtt_messages_received,
        ),
        (
            "rmq_mqtt_messages_sent_total",
            "counter",
            "MQTT PUBLISH messages sent to clients",
            |m| &m.mqtt_messages_sent,
        ),
        (
            "rmq_mqtt_bytes_received_total",
            "counter",
            "MQTT bytes read from clients",
            |m| &m.mqtt_bytes_received,
        ),
        (
            "rmq_mqtt_bytes_sent_total",
            "counter",
            "MQTT bytes written to clients",
            |m| &m.mqtt_bytes_sent,
        ),
        (
            "rmq_mqtt_bridged_to_kafka_total",
            "counter",
            "MQTT publishes a bridge rule appended to Kafka",
            |m| &m.mqtt_bridged_to_kafka,
        ),
        (
            "rmq_mqtt_bridged_from_kafka_total",
            "counter",
            "Kafka records a bridge rule routed to MQTT subscribers",
            |m| &m.mqtt_bridged_from_kafka,
        ),
        (
            "rmq_mqtt_bridge_append_failures_total",
            "counter",
            "MQTT publishes a bridge rule could not append to Kafka",
            |m| &m.mqtt_bridge_append_failures,
        ),
        (
            "rmq_mqtt_state_records_written_total",
            "counter",
            "Records written to __mqtt_state (retained messages, persistent sessions)",
            |m| &m.mqtt_state_records_written,
        ),
    ];
    for (name, kind, help, field) in simple {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
        for (shard, metrics) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", load(field(metrics)));
        }
    }
    let _ = writeln!(
        out,
        "# HELP rmq_kafka_request_latency_us Kafka request latency, from the decoded frame to \
         the encoded answer.\n# TYPE rmq_kafka_request_latency_us histogram"
    );
    for (shard, metrics) in shards.iter().enumerate() {
        for key in 0..METRICS_API_KEYS_MAX {
            let count = load(&metrics.requests[key]);
            if count == 0 {
                continue;
            }
            let api = api_name(i16::try_from(key).unwrap_or(i16::MAX));
            let labels = format!("shard=\"{shard}\",api=\"{api}\"");
            let mut cumulative = 0;
            for (bucket, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
                cumulative += load(&metrics.latency_buckets[key * BUCKETS + bucket]);
                let _ = writeln!(
                    out,
                    "rmq_kafka_request_latency_us_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "rmq_kafka_request_latency_us_bucket{{{labels},le=\"+Inf\"}} {count}\n\
                 rmq_kafka_request_latency_us_sum{{{labels}}} {}\n\
                 rmq_kafka_request_latency_us_count{{{labels}}} {count}",
                load(&metrics.latency_sum_us[key])
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_land_in_cumulative_buckets() {
        let metrics = std::sync::Arc::new(ShardMetrics::new());
        metrics.observe_request(0, 100, 10, 50);
        metrics.observe_request(0, 100, 10, 3_000);
        metrics.observe_request(0, 100, 10, 99_000_000);
        let text = render(&[metrics], |key| format!("k{key}"));
        assert!(text
            .contains("rmq_kafka_request_latency_us_bucket{shard=\"0\",api=\"k0\",le=\"100\"} 1"));
        assert!(text
            .contains("rmq_kafka_request_latency_us_bucket{shard=\"0\",api=\"k0\",le=\"5000\"} 2"));
        assert!(text
            .contains("rmq_kafka_request_latency_us_bucket{shard=\"0\",api=\"k0\",le=\"+Inf\"} 3"));
        assert!(text.contains("rmq_kafka_bytes_in_total{shard=\"0\"} 300"));
    }
}
