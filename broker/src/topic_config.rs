//! Topic configs: which keys we accept, their defaults (Kafka's), validation, and the
//! `LogConfig` the storage engine runs with.

use std::collections::BTreeMap;

use rmq_protocols::kernel::{ConfigEntry, KernelError};
use rmq_storage::{CleanupPolicy, LogConfig, StorageEngine};

/// One topic config key: name, Kafka default, and whether we accept a value for it.
struct ConfigKey {
    name: &'static str,
    default: &'static str,
    validate: fn(&str) -> Result<(), String>,
}

fn non_negative_i64(value: &str) -> Result<(), String> {
    match value.parse::<i64>() {
        Ok(v) if v >= 0 => Ok(()),
        _ => Err("must be a non-negative integer".to_string()),
    }
}

fn positive_i64(value: &str) -> Result<(), String> {
    match value.parse::<i64>() {
        Ok(v) if v >= 1 => Ok(()),
        _ => Err("must be a positive integer".to_string()),
    }
}

fn minus_one_or_non_negative_i64(value: &str) -> Result<(), String> {
    match value.parse::<i64>() {
        Ok(v) if v >= -1 => Ok(()),
        _ => Err("must be -1 or a non-negative integer".to_string()),
    }
}

fn segment_bytes(value: &str) -> Result<(), String> {
    match value.parse::<u64>() {
        Ok(v) if (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&v) => Ok(()),
        _ => Err(format!(
            "must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}"
        )),
    }
}

fn check_max_message_bytes(value: &str) -> Result<(), String> {
    match value.parse::<usize>() {
        Ok(v) if (MAX_MESSAGE_BYTES_MIN..=MAX_MESSAGE_BYTES_MAX).contains(&v) => Ok(()),
        _ => Err(format!(
            "must be between {MAX_MESSAGE_BYTES_MIN} and {MAX_MESSAGE_BYTES_MAX}"
        )),
    }
}

fn cleanup_policy(value: &str) -> Result<(), String> {
    match CleanupPolicy::parse(value) {
        Some(_) => Ok(()),
        None => Err("supported values: delete, compact, compact,delete".to_string()),
    }
}

fn ratio(value: &str) -> Result<(), String> {
    match value.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(()),
        _ => Err("must be a number between 0 and 1".to_string()),
    }
}

fn one_of(value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!("supported values: {}", allowed.join(", ")))
    }
}

/// Kafka's lower bound for segment.bytes is 14 bytes; we require room for one index page.
const SEGMENT_BYTES_MIN: u64 = 4096;
/// Segment positions are u32 in the offset index.
const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;
/// A RecordBatch header is 61 bytes; anything smaller cannot hold a batch.
const MAX_MESSAGE_BYTES_MIN: usize = 64;
/// A batch must fit in one request frame (socket.request.max.bytes default, 100 MiB).
const MAX_MESSAGE_BYTES_MAX: usize = 100 * 1024 * 1024;

const CONFIG_KEYS: &[ConfigKey] = &[
    // `compact` keeps the latest record per key (the log cleaner runs on the partition's
    // shard every `log_cleaner_interval_ms`); with `compact` alone retention deletes nothing.
    ConfigKey {
        name: "cleanup.policy",
        default: "delete",
        validate: cleanup_policy,
    },
    ConfigKey {
        name: "compression.type",
        default: "producer",
        validate: |v| one_of(v, &["producer"]),
    },
    // Kafka semantics: fdatasync after this many records / once the oldest unsynced write is
    // this old. Our defaults (1 record, i.e. every record) make the fdatasync covering a batch
    // precede its acks=all answer; relaxing both lets acks=all answer once written.
    ConfigKey {
        name: "delete.retention.ms",
        default: "86400000",
        validate: non_negative_i64,
    },
    ConfigKey {
        name: "flush.messages",
        default: "1",
        validate: positive_i64,
    },
    ConfigKey {
        name: "flush.ms",
        default: "9223372036854775807",
        validate: non_negative_i64,
    },
    ConfigKey {
        name: "index.interval.bytes",
        default: "4096",
        validate: non_negative_i64,
    },
    ConfigKey {
        name: "max.message.bytes",
        default: "1048588",
        validate: check_max_message_bytes,
    },
    ConfigKey {
        name: "message.timestamp.type",
        default: "CreateTime",
        validate: |v| one_of(v, &["CreateTime"]),
    },
    ConfigKey {
        name: "min.cleanable.dirty.ratio",
        default: "0.5",
        validate: ratio,
    },
    ConfigKey {
        name: "min.compaction.lag.ms",
        default: "0",
        validate: non_negative_i64,
    },
    ConfigKey {
        name: "min.insync.replicas",
        default: "1",
        validate: |v| one_of(v, &["1"]),
    },
    ConfigKey {
        name: "retention.bytes",
        default: "-1",
        validate: minus_one_or_non_negative_i64,
    },
    ConfigKey {
        name: "retention.ms",
        default: "604800000",
        validate: minus_one_or_non_negative_i64,
    },
    ConfigKey {
        name: "segment.bytes",
        default: "1073741824",
        validate: segment_bytes,
    },
    ConfigKey {
        name: "segment.ms",
        default: "604800000",
        validate: non_negative_i64,
    },
    // RobustMQ: `memory` keeps a partition's batches in memory, bounded by retention.bytes
    // (64 MiB when -1): acks=all answers once appended, and a restart brings the topic back
    // empty. Chosen when a partition is opened.
    ConfigKey {
        name: "storage.engine",
        default: "file",
        validate: |v| one_of(v, &["file", "memory"]),
    },
];

/// Checks client-given configs; returns the ones to store (a `None` value means "default").
pub fn validate(
    configs: &[(String, Option<String>)],
) -> Result<BTreeMap<String, String>, KernelError> {
    let mut stored = BTreeMap::new();
    for (name, value) in configs {
        let key = CONFIG_KEYS.iter().find(|k| k.name == name).ok_or_else(|| {
            KernelError::InvalidConfig(format!("unknown or unsupported topic config '{name}'"))
        })?;
        if let Some(value) = value {
            (key.validate)(value)
                .map_err(|why| KernelError::InvalidConfig(format!("{name}={value}: {why}")))?;
            stored.insert(name.clone(), value.clone());
        }
    }
    let compacts =
        CleanupPolicy::parse(value(&stored, "cleanup.policy")).is_some_and(CleanupPolicy::compacts);
    if compacts && value(&stored, "storage.engine") == StorageEngine::Memory.name() {
        return Err(KernelError::InvalidConfig(
            "cleanup.policy=compact needs storage.engine=file: the memory engine does not compact"
                .to_string(),
        ));
    }
    Ok(stored)
}

/// What a replicated topic (replication factor > 1) cannot have: the Raft log of a partition
/// is its partition log, so it must stay on disk (`storage.engine=file`) and must not be
/// rewritten by compaction.
pub fn check_replicable(configs: &BTreeMap<String, String>) -> Result<(), KernelError> {
    if value(configs, "storage.engine") == StorageEngine::Memory.name() {
        return Err(KernelError::InvalidConfig(
            "a replicated topic needs storage.engine=file: its Raft log is the partition log"
                .to_string(),
        ));
    }
    if CleanupPolicy::parse(value(configs, "cleanup.policy")).is_some_and(CleanupPolicy::compacts) {
        return Err(KernelError::InvalidConfig(
            "cleanup.policy=compact is not supported on a replicated topic yet: compaction would \
             rewrite entries of its Raft log"
                .to_string(),
        ));
    }
    Ok(())
}

/// The log config of a replicated partition: the topic's, with time and size retention off
/// (retention would delete entries the Raft group still needs; see README "Replication").
pub fn replicated_log_config(mut config: LogConfig) -> LogConfig {
    config.retention_ms = -1;
    config.retention_bytes = -1;
    config
}

fn value<'a>(configs: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    configs.get(name).map(String::as_str).unwrap_or_else(|| {
        CONFIG_KEYS
            .iter()
            .find(|k| k.name == name)
            .map_or("", |k| k.default)
    })
}

/// The storage engine's config for a topic. Values were validated when stored; a value that
/// still fails to parse (a hand-edited file) falls back to the default.
/// A stored value parsed, or `default` when it does not parse (a hand-edited file).
fn parsed<T: std::str::FromStr>(configs: &BTreeMap<String, String>, name: &str, default: T) -> T {
    value(configs, name).parse().unwrap_or(default)
}

/// `max.message.bytes` alone: the produce path checks it per partition per request, so it
/// does not build a whole `LogConfig`.
pub fn max_message_bytes(configs: &BTreeMap<String, String>) -> usize {
    parsed(
        configs,
        "max.message.bytes",
        LogConfig::default().max_message_bytes,
    )
}

pub fn log_config(configs: &BTreeMap<String, String>) -> LogConfig {
    let defaults = LogConfig::default();
    LogConfig {
        segment_bytes: parsed(configs, "segment.bytes", defaults.segment_bytes),
        segment_ms: parsed(configs, "segment.ms", defaults.segment_ms),
        retention_ms: parsed(configs, "retention.ms", defaults.retention_ms),
        retention_bytes: parsed(configs, "retention.bytes", defaults.retention_bytes),
        max_message_bytes: max_message_bytes(configs),
        index_interval_bytes: parsed(
            configs,
            "index.interval.bytes",
            defaults.index_interval_bytes,
        ),
        engine: StorageEngine::parse(value(configs, "storage.engine")).unwrap_or(defaults.engine),
        flush_messages: parsed(configs, "flush.messages", defaults.flush_messages),
        flush_ms: parsed(configs, "flush.ms", defaults.flush_ms),
        cleanup_policy: CleanupPolicy::parse(value(configs, "cleanup.policy"))
            .unwrap_or(defaults.cleanup_policy),
        delete_retention_ms: parsed(configs, "delete.retention.ms", defaults.delete_retention_ms),
        min_cleanable_dirty_ratio: parsed(
            configs,
            "min.cleanable.dirty.ratio",
            defaults.min_cleanable_dirty_ratio,
        ),
        min_compaction_lag_ms: parsed(
            configs,
            "min.compaction.lag.ms",
            defaults.min_compaction_lag_ms,
        ),
    }
}

/// Every topic config with its value and whether it is the default.
pub fn describe(configs: &BTreeMap<String, String>) -> Vec<ConfigEntry> {
    CONFIG_KEYS
        .iter()
        .map(|key| ConfigEntry {
            name: key.name.to_string(),
            value: Some(value(configs, key.name).to_string()),
            is_default: !configs.contains_key(key.name),
            read_only: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(pairs: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), Some(value.to_string())))
            .collect()
    }

    #[test]
    fn compaction_configs_reach_the_log_config() {
        let stored = validate(&configs(&[
            ("cleanup.policy", "compact,delete"),
            ("delete.retention.ms", "1000"),
            ("min.cleanable.dirty.ratio", "0.1"),
            ("min.compaction.lag.ms", "50"),
        ]))
        .expect("valid");
        let log = log_config(&stored);
        assert_eq!(log.cleanup_policy, CleanupPolicy::CompactDelete);
        assert_eq!(log.delete_retention_ms, 1000);
        assert_eq!(log.min_cleanable_dirty_ratio, 0.1);
        assert_eq!(log.min_compaction_lag_ms, 50);
        let compact = validate(&configs(&[("cleanup.policy", "compact")])).expect("valid");
        assert_eq!(log_config(&compact).cleanup_policy, CleanupPolicy::Compact);
        let defaults = log_config(&BTreeMap::new());
        assert_eq!(defaults.cleanup_policy, CleanupPolicy::Delete);
        assert_eq!(defaults.delete_retention_ms, 86_400_000);
        assert_eq!(defaults.min_cleanable_dirty_ratio, 0.5);
        for bad in [
            &[("cleanup.policy", "shred")][..],
            &[("cleanup.policy", "")],
            &[("min.cleanable.dirty.ratio", "1.5")],
            &[("delete.retention.ms", "-1")],
            &[("cleanup.policy", "compact"), ("storage.engine", "memory")],
        ] {
            assert!(
                matches!(validate(&configs(bad)), Err(KernelError::InvalidConfig(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_and_invalid_configs_are_rejected() {
        assert!(matches!(
            validate(&[("no.such".to_string(), Some("1".to_string()))]),
            Err(KernelError::InvalidConfig(_))
        ));
        assert!(matches!(
            validate(&[("retention.ms".to_string(), Some("soon".to_string()))]),
            Err(KernelError::InvalidConfig(_))
        ));
    }

    #[test]
    fn stored_configs_reach_the_log_config_and_describe() {
        let stored = validate(&[
            ("retention.ms".to_string(), Some("123456".to_string())),
            ("max.message.bytes".to_string(), Some("1000".to_string())),
        ])
        .expect("valid");
        let log = log_config(&stored);
        assert_eq!(log.retention_ms, 123_456);
        assert_eq!(log.max_message_bytes, 1000);
        assert_eq!(log.segment_bytes, 1_073_741_824);
        let described = describe(&stored);
        let retention = described
            .iter()
            .find(|e| e.name == "retention.ms")
            .expect("entry");
        assert_eq!(retention.value.as_deref(), Some("123456"));
        assert!(!retention.is_default);
        assert!(
            described
                .iter()
                .find(|e| e.name == "segment.bytes")
                .expect("entry")
                .is_default
        );
    }

    #[test]
    fn storage_engine_and_flush_policy_reach_the_log_config() {
        let defaults = log_config(&BTreeMap::new());
        assert_eq!(defaults, LogConfig::default());
        let stored = validate(&[
            ("storage.engine".to_string(), Some("memory".to_string())),
            ("flush.messages".to_string(), Some("1000".to_string())),
            ("flush.ms".to_string(), Some("50".to_string())),
        ])
        .expect("valid");
        let log = log_config(&stored);
        assert_eq!(log.engine, StorageEngine::Memory);
        assert_eq!(log.flush_messages, 1000);
        assert_eq!(log.flush_ms, 50);
        for (name, bad) in [
            ("storage.engine", "disk"),
            ("flush.messages", "0"),
            ("flush.ms", "-1"),
        ] {
            assert!(
                matches!(
                    validate(&[(name.to_string(), Some(bad.to_string()))]),
                    Err(KernelError::InvalidConfig(_))
                ),
                "{name}={bad}"
            );
        }
    }
}
