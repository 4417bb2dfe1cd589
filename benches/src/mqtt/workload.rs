//! MQTT workload files: the OMB keys that make sense for MQTT (`name`, `messageSize`,
//! `producerRate`, `testDurationMinutes`, `warmupDurationMinutes`, `topics`) plus `qos`,
//! `mqttVersion`, `publishers`, `subscribers`, `topicPattern`, `mode`, `maxInflight`, and for
//! connection storms `connections`, `connectionRate`, `holdConnections`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::workload::{MAX_ENTITIES, MAX_MESSAGE_SIZE, MIN_MESSAGE_SIZE};

/// Highest `maxInflight` (unacknowledged QoS 1/2 PUBLISHes per publisher); MQTT packet ids
/// are 16 bits, so the window must stay well under 65535.
pub const MAX_INFLIGHT_LIMIT: u32 = 4096;
/// Default `maxInflight` (mosquitto's own default for outgoing messages is 20; v5 brokers may
/// lower it further with Receive Maximum, which the publisher honours).
pub const DEFAULT_INFLIGHT: u32 = 64;
/// Most connections a storm may open (each held connection is a file descriptor).
pub const MAX_STORM_CONNECTIONS: u64 = 100_000;
/// Default storm size.
pub const DEFAULT_STORM_CONNECTIONS: u64 = 1000;
/// The placeholder in `topicPattern` for the random run id.
pub const RUN_PLACEHOLDER: &str = "{run}";
/// The placeholder in `topicPattern` for the topic index (a whole topic level).
pub const TOPIC_PLACEHOLDER: &str = "{topic}";
/// Default topic pattern.
pub const DEFAULT_TOPIC_PATTERN: &str = "rmq-bench/{run}/{topic}";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Publisher i publishes on topic i % topics; subscriber j subscribes to topic j % topics.
    /// With one topic every subscriber receives every message (1 -> N).
    FanOut,
    /// Publisher i publishes on topic i % topics (default topics = publishers); every subscriber
    /// subscribes to the single-level wildcard filter and receives everything (N -> 1).
    FanIn,
    /// Open `connections` connections (CONNECT -> CONNACK), `publishers` at a time, at
    /// `connectionRate` per second (0 = as fast as possible); no messages.
    ConnectionStorm,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MqttWorkload {
    pub name: String,
    #[serde(default = "fan_out")]
    pub mode: Mode,
    /// 4 = MQTT 3.1.1, 5 = MQTT 5.0.
    #[serde(default = "four", alias = "protocolVersion")]
    pub mqtt_version: u8,
    #[serde(default)]
    pub qos: u8,
    #[serde(default = "one")]
    pub publishers: u32,
    #[serde(default = "one")]
    pub subscribers: u32,
    /// Distinct topics (default 1; in fan-in mode default = publishers).
    #[serde(default)]
    pub topics: Option<u32>,
    #[serde(default = "default_pattern")]
    pub topic_pattern: String,
    #[serde(default = "hundred")]
    pub message_size: usize,
    /// Total PUBLISHes per second over all publishers; 0 = as fast as possible.
    #[serde(default)]
    pub producer_rate: f64,
    #[serde(default = "default_inflight")]
    pub max_inflight: u32,
    #[serde(default = "one_f")]
    pub test_duration_minutes: f64,
    #[serde(default)]
    pub warmup_duration_minutes: f64,
    /// Connection storm: total connections.
    #[serde(default = "default_connections")]
    pub connections: u64,
    /// Connection storm: new connections per second over all workers; 0 = max.
    #[serde(default)]
    pub connection_rate: f64,
    /// Connection storm: keep every connection open until the end (else DISCONNECT at once).
    #[serde(default = "yes")]
    pub hold_connections: bool,
    // OMB keys accepted for familiarity and ignored.
    #[serde(default, rename = "payloadFile")]
    _payload_file: Option<String>,
    #[serde(default, rename = "keyDistributor")]
    _key_distributor: Option<String>,
}

fn fan_out() -> Mode {
    Mode::FanOut
}
fn four() -> u8 {
    4
}
fn one() -> u32 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn hundred() -> usize {
    100
}
fn yes() -> bool {
    true
}
fn default_inflight() -> u32 {
    DEFAULT_INFLIGHT
}
fn default_connections() -> u64 {
    DEFAULT_STORM_CONNECTIONS
}
fn default_pattern() -> String {
    DEFAULT_TOPIC_PATTERN.to_string()
}

impl MqttWorkload {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading workload {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("MQTT workload {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let w: MqttWorkload = serde_yaml::from_str(text)?;
        w.validate()?;
        Ok(w)
    }

    pub fn topic_count(&self) -> u32 {
        match (self.topics, self.mode) {
            (Some(t), _) => t,
            (None, Mode::FanIn) => self.publishers,
            (None, _) => 1,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !matches!(self.mqtt_version, 4 | 5) {
            bail!(
                "mqttVersion {} unsupported (4 = 3.1.1, 5 = 5.0)",
                self.mqtt_version
            );
        }
        if self.qos > 2 {
            bail!("qos {} outside 0..=2", self.qos);
        }
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&self.message_size) {
            bail!(
                "messageSize {} outside {MIN_MESSAGE_SIZE}..={MAX_MESSAGE_SIZE}",
                self.message_size
            );
        }
        for (name, v) in [
            ("publishers", self.publishers),
            ("topics", self.topic_count()),
        ] {
            if v == 0 || v > MAX_ENTITIES {
                bail!("{name} = {v} outside 1..={MAX_ENTITIES}");
            }
        }
        // Publisher = writer + reader thread; subscriber = one thread.
        let threads = if self.mode == Mode::ConnectionStorm {
            self.publishers
        } else {
            self.publishers * 2 + self.subscribers
        };
        if threads > MAX_ENTITIES {
            bail!("workload needs {threads} threads, more than {MAX_ENTITIES}");
        }
        if self.max_inflight == 0 || self.max_inflight > MAX_INFLIGHT_LIMIT {
            bail!(
                "maxInflight {} outside 1..={MAX_INFLIGHT_LIMIT}",
                self.max_inflight
            );
        }
        if !(self.producer_rate.is_finite() && self.producer_rate >= 0.0) {
            bail!("producerRate must be >= 0");
        }
        if !(self.connection_rate.is_finite() && self.connection_rate >= 0.0) {
            bail!("connectionRate must be >= 0");
        }
        if self.connections == 0 || self.connections > MAX_STORM_CONNECTIONS {
            bail!(
                "connections {} outside 1..={MAX_STORM_CONNECTIONS}",
                self.connections
            );
        }
        if !(self.test_duration_minutes.is_finite() && self.test_duration_minutes > 0.0) {
            bail!("testDurationMinutes must be > 0");
        }
        if !(self.warmup_duration_minutes.is_finite() && self.warmup_duration_minutes >= 0.0) {
            bail!("warmupDurationMinutes must be >= 0");
        }
        let levels: Vec<&str> = self.topic_pattern.split('/').collect();
        if !levels.contains(&TOPIC_PLACEHOLDER) {
            bail!("topicPattern must contain {TOPIC_PLACEHOLDER} as a whole topic level");
        }
        if self.topic_pattern.contains(['+', '#']) || self.topic_pattern.is_empty() {
            bail!("topicPattern must not contain wildcards");
        }
        Ok(())
    }

    pub fn test_duration(&self) -> Duration {
        Duration::from_secs_f64(self.test_duration_minutes * 60.0)
    }

    pub fn warmup_duration(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_duration_minutes * 60.0)
    }

    /// PUBLISHes per second for one publisher (None = max rate).
    pub fn rate_per_publisher(&self) -> Option<f64> {
        (self.producer_rate > 0.0).then(|| self.producer_rate / f64::from(self.publishers))
    }

    /// Topic name of index `i` for run id `run`.
    pub fn topic(&self, run: &str, i: u32) -> String {
        self.topic_pattern
            .replace(RUN_PLACEHOLDER, run)
            .replace(TOPIC_PLACEHOLDER, &i.to_string())
    }

    /// Fan-in subscription filter: the topic level replaced by `+`.
    pub fn wildcard(&self, run: &str) -> String {
        self.topic_pattern
            .replace(RUN_PLACEHOLDER, run)
            .replace(TOPIC_PLACEHOLDER, "+")
    }

    /// Topic index publisher `p` publishes on.
    pub fn publisher_topic(&self, p: u32) -> u32 {
        p % self.topic_count()
    }

    /// Topic indexes subscriber `s` receives (fan-in: all).
    pub fn subscriber_topics(&self, s: u32) -> Vec<u32> {
        match self.mode {
            Mode::FanIn => (0..self.topic_count()).collect(),
            _ => vec![s % self.topic_count()],
        }
    }

    /// How many subscribers receive each topic (index = topic).
    pub fn subscribers_per_topic(&self) -> Vec<u64> {
        let mut v = vec![0u64; self.topic_count() as usize];
        if self.mode == Mode::ConnectionStorm {
            return v;
        }
        for s in 0..self.subscribers {
            for t in self.subscriber_topics(s) {
                v[t as usize] += 1;
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_one_topic_reaches_every_subscriber() {
        let w = MqttWorkload::parse(
            "name: x\nqos: 1\npublishers: 1\nsubscribers: 100\nmessageSize: 100\n",
        )
        .unwrap();
        assert_eq!(w.mode, Mode::FanOut);
        assert_eq!(w.topic_count(), 1);
        assert_eq!(w.subscribers_per_topic(), vec![100]);
        assert_eq!(w.topic("ab", 0), "rmq-bench/ab/0");
    }

    #[test]
    fn fan_in_defaults_to_one_topic_per_publisher_and_a_wildcard() {
        let w = MqttWorkload::parse(
            "name: x\nmode: fan-in\npublishers: 10\nsubscribers: 1\nmessageSize: 100\n",
        )
        .unwrap();
        assert_eq!(w.topic_count(), 10);
        assert_eq!(w.publisher_topic(7), 7);
        assert_eq!(w.subscribers_per_topic(), vec![1; 10]);
        assert_eq!(w.wildcard("r"), "rmq-bench/r/+");
    }

    #[test]
    fn bad_workloads_are_refused() {
        for bad in [
            "name: x\nqos: 3\n",
            "name: x\nmqttVersion: 3\n",
            "name: x\nmessageSize: 4\n",
            "name: x\ntopicPattern: a/b\n",
            "name: x\ntopicPattern: a/+/{topic}\n",
            "name: x\nmaxInflight: 0\n",
            "name: x\nsubscribers: 5000\n",
            "name: x\nunknownKey: 1\n",
        ] {
            assert!(MqttWorkload::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_shipped_mqtt_workload_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("mqtt-") && name.ends_with(".yaml") {
                MqttWorkload::load(&p).unwrap();
                n += 1;
            }
        }
        assert!(n >= 4, "expected the MQTT workloads in {}", dir.display());
    }
}
