//! OpenMessaging-benchmark workload files (the YAML keys OMB uses, camelCase).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Smallest message: the payload carries its intended send time (8 bytes, microseconds since
/// the UNIX epoch) so consumers can measure end-to-end latency with microsecond precision.
pub const MIN_MESSAGE_SIZE: usize = 8;
/// Largest message accepted from a workload (Kafka's default `message.max.bytes` is ~1 MiB).
pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// Upper bound on topics, partitions per topic, producers and consumers: each producer and
/// consumer is an OS thread (plus a reader thread per producer), so this caps the thread count.
pub const MAX_ENTITIES: u32 = 1024;

/// One OMB workload. Unknown keys (`keyDistributor`, `payloadFile`, ...) are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    #[serde(default = "one")]
    pub topics: u32,
    #[serde(default = "one")]
    pub partitions_per_topic: u32,
    pub message_size: usize,
    #[serde(default)]
    pub subscriptions_per_topic: u32,
    #[serde(default = "one")]
    pub consumer_per_subscription: u32,
    #[serde(default = "one")]
    pub producers_per_topic: u32,
    /// Total messages per second over all producers; 0 or absent = as fast as possible.
    #[serde(default)]
    pub producer_rate: f64,
    #[serde(default)]
    pub consumer_backlog_size_g_b: f64,
    #[serde(default = "one_f")]
    pub test_duration_minutes: f64,
    #[serde(default)]
    pub warmup_duration_minutes: f64,
}

fn one() -> u32 {
    1
}

fn one_f() -> f64 {
    1.0
}

impl Workload {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading workload {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("workload {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut w: Workload = serde_yaml::from_str(text)?;
        // OMB spells it `consumerBacklogSizeGB`; serde's camelCase of our field differs.
        if let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(text) {
            if let Some(gb) = v.get("consumerBacklogSizeGB").and_then(|x| x.as_f64()) {
                w.consumer_backlog_size_g_b = gb;
            }
        }
        w.validate()?;
        Ok(w)
    }

    pub fn validate(&self) -> Result<()> {
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&self.message_size) {
            bail!(
                "messageSize {} outside {MIN_MESSAGE_SIZE}..={MAX_MESSAGE_SIZE}",
                self.message_size
            );
        }
        for (name, v) in [
            ("topics", self.topics),
            ("partitionsPerTopic", self.partitions_per_topic),
            ("producersPerTopic", self.producers_per_topic),
            ("consumerPerSubscription", self.consumer_per_subscription),
        ] {
            if v == 0 || v > MAX_ENTITIES {
                bail!("{name} = {v} outside 1..={MAX_ENTITIES}");
            }
        }
        let threads = self.topics * (self.producers_per_topic * 2)
            + self.topics * self.subscriptions_per_topic * self.consumer_per_subscription;
        if threads > MAX_ENTITIES {
            bail!("workload needs {threads} threads, more than {MAX_ENTITIES}");
        }
        if !(self.producer_rate.is_finite() && self.producer_rate >= 0.0) {
            bail!("producerRate must be >= 0");
        }
        if !(self.test_duration_minutes.is_finite() && self.test_duration_minutes > 0.0) {
            bail!("testDurationMinutes must be > 0");
        }
        if !(self.warmup_duration_minutes.is_finite() && self.warmup_duration_minutes >= 0.0) {
            bail!("warmupDurationMinutes must be >= 0");
        }
        if !(self.consumer_backlog_size_g_b.is_finite() && self.consumer_backlog_size_g_b >= 0.0) {
            bail!("consumerBacklogSizeGB must be >= 0");
        }
        Ok(())
    }

    pub fn test_duration(&self) -> Duration {
        Duration::from_secs_f64(self.test_duration_minutes * 60.0)
    }

    pub fn warmup_duration(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_duration_minutes * 60.0)
    }

    /// Messages per second for one producer thread (None = max rate).
    pub fn rate_per_producer(&self) -> Option<f64> {
        if self.producer_rate <= 0.0 {
            None
        } else {
            Some(self.producer_rate / f64::from(self.topics * self.producers_per_topic))
        }
    }

    pub fn backlog_bytes(&self) -> u64 {
        (self.consumer_backlog_size_g_b * 1024.0 * 1024.0 * 1024.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omb_workload_with_fractional_minutes_parses() {
        let w = Workload::parse(
            "name: 1 topic / 16 partitions / 1Kb\n\
             topics: 1\npartitionsPerTopic: 16\nkeyDistributor: \"NO_KEY\"\n\
             messageSize: 1024\npayloadFile: \"payload/payload-1Kb.data\"\n\
             subscriptionsPerTopic: 1\nconsumerPerSubscription: 1\nproducersPerTopic: 1\n\
             producerRate: 50000\nconsumerBacklogSizeGB: 0.5\n\
             testDurationMinutes: 0.25\nwarmupDurationMinutes: 0.1\n",
        )
        .unwrap();
        assert_eq!(w.partitions_per_topic, 16);
        assert_eq!(w.rate_per_producer(), Some(50000.0));
        assert_eq!(w.backlog_bytes(), 512 * 1024 * 1024);
        assert_eq!(w.test_duration(), Duration::from_secs(15));
        assert_eq!(w.warmup_duration(), Duration::from_secs(6));
    }

    #[test]
    fn zero_rate_means_max_rate_and_tiny_messages_are_rejected() {
        let w = Workload::parse("name: x\nmessageSize: 100\nproducerRate: 0\n").unwrap();
        assert_eq!(w.rate_per_producer(), None);
        assert!(Workload::parse("name: x\nmessageSize: 4\n").is_err());
    }

    #[test]
    fn every_shipped_workload_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let mqtt = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("mqtt-"));
            if p.extension().is_some_and(|x| x == "yaml") && !mqtt {
                Workload::load(&p).unwrap();
                n += 1;
            }
        }
        assert!(n >= 6, "expected the OMB workloads in {}", dir.display());
    }
}
