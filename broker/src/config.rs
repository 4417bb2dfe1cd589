//! Node configuration: command-line flags (clap) over an optional TOML file (`--config`);
//! flags override the file, the file overrides the defaults.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use std::sync::Arc;

use rmq_protocols::mqtt::acl::{Acl, AclRuleSpec};
use rmq_protocols::mqtt::auth::PasswordFile;
use rmq_protocols::mqtt::bridge::{BridgeRule, BridgeRules};
use rmq_protocols::mqtt::constants::{
    MAX_QUEUED_MESSAGES_PER_SESSION_LIMIT, STATE_FLUSH_INTERVAL_MS_MAX, STATE_FLUSH_INTERVAL_MS_MIN,
};
use rmq_protocols::mqtt::MqttConfig;
use serde::Deserialize;

use crate::constants::{
    DEFAULT_ADMIN_ADDR, DEFAULT_GROUP_MAX_SESSION_TIMEOUT_MS, DEFAULT_GROUP_MIN_SESSION_TIMEOUT_MS,
    DEFAULT_OFFSETS_TOPIC_PARTITIONS, DEFAULT_RPC_ADDR, DEFAULT_SOCKET_REQUEST_MAX_BYTES,
    LOG_CLEANER_INTERVAL_MS_DEFAULT, LOG_CLEANER_INTERVAL_MS_MIN, RAFT_ELECTION_TIMEOUT_MS_DEFAULT,
    RAFT_ELECTION_TIMEOUT_MS_MAX, RAFT_ELECTION_TIMEOUT_MS_MIN, REQUEST_MEMORY_PER_SHARD_BYTES,
    SEEDS_MAX,
};
use crate::group::state::GroupConfig;

/// rmq-node: a Kafka-compatible, thread-per-core message broker.
#[derive(Parser, Debug, Default)]
#[command(name = "rmq-node", version, about)]
pub struct Cli {
    /// Shards (one glommio executor each). Default: the number of CPUs. More shards than CPUs
    /// run unpinned.
    #[arg(long)]
    pub cores: Option<usize>,
    /// Directory for segments and metadata. Default: ./rmq-data
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// Kafka listener, HOST:PORT (port 0 picks a free port). Default: 0.0.0.0:9092
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_addr: Option<String>,
    /// Address given to Kafka clients in Metadata. Default: the listener's address
    /// (127.0.0.1 when it listens on every interface).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertised_kafka_addr: Option<String>,
    /// MQTT listener (3.1, 3.1.1, 5), HOST:PORT (port 0 picks a free port).
    /// Default: 0.0.0.0:1883
    #[arg(long, value_name = "HOST:PORT")]
    pub mqtt_addr: Option<String>,
    /// MQTT over WebSocket listener (path /mqtt, subprotocol mqtt), HOST:PORT.
    /// Default: 0.0.0.0:8083
    #[arg(long, value_name = "HOST:PORT")]
    pub mqtt_ws_addr: Option<String>,
    /// Admin HTTP listener (/metrics, /v1/health, /v1/topics, /v1/groups), HOST:PORT.
    /// Default: 0.0.0.0:9644
    #[arg(long, value_name = "HOST:PORT")]
    pub admin_addr: Option<String>,
    /// This node's id (0 or more; unique in a cluster). Default: 0
    #[arg(long)]
    pub node_id: Option<i32>,
    /// Internal RPC listener between the nodes of a cluster (the controller Raft group),
    /// HOST:PORT (port 0 picks a free port). Bound only with --seeds. Default: 0.0.0.0:33145
    #[arg(long, value_name = "HOST:PORT")]
    pub rpc_addr: Option<String>,
    /// The seed nodes of a cluster, ID@HOST:PORT,... (their RPC addresses, this node's own
    /// entry included): they form the controller Raft group; the lowest id initializes it once.
    /// Without --seeds the node runs alone, as a single-node cluster.
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    pub seeds: Option<String>,
    /// Election timeout T of the partitions' Raft groups (replicated topics), in ms: a dead
    /// leader is replaced within T of its last heartbeat (a follower that hears no leader for
    /// a random T/4..T/2 campaigns; votes are granted once the old leader's lease, T/2, ran
    /// out; heartbeats every T/10). Default: 1000
    #[arg(long, value_name = "MS")]
    pub raft_election_timeout_ms: Option<u64>,
    /// Test hook: admin HTTP POST /v1/debug/rpc/isolate {"peers": [ids]} cuts this node's
    /// RPC links to those nodes (frames dropped, as on a network partition), POST
    /// /v1/debug/rpc/heal restores them. Off by default (the endpoints answer 404).
    #[arg(long)]
    pub fault_injection: bool,
    /// TOML file with the same keys as these flags (snake_case) plus broker settings such as
    /// auto_create_topics_enable, num_partitions, socket_request_max_bytes, an [mqtt] table
    /// (max_keep_alive_s, max_queued_messages, state_flush_interval_ms, allow_anonymous,
    /// password_file, [[mqtt.acl]] rules), and MQTT <->
    /// Kafka bridge rules: [[bridge.mqtt_to_kafka]] with filter = "sensors/#",
    /// topic = "sensors", partitions = N (see README).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter for stderr, e.g. info, debug, rmq_storage=debug. Default: info
    #[arg(long)]
    pub log_level: Option<String>,
}

/// The TOML file's keys.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub cores: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub kafka_addr: Option<String>,
    pub advertised_kafka_addr: Option<String>,
    pub mqtt_addr: Option<String>,
    pub mqtt_ws_addr: Option<String>,
    pub admin_addr: Option<String>,
    pub node_id: Option<i32>,
    pub rpc_addr: Option<String>,
    pub seeds: Option<String>,
    pub raft_election_timeout_ms: Option<u64>,
    pub log_level: Option<String>,
    pub auto_create_topics_enable: Option<bool>,
    pub num_partitions: Option<i32>,
    pub socket_request_max_bytes: Option<usize>,
    pub group_initial_rebalance_delay_ms: Option<i64>,
    pub group_min_session_timeout_ms: Option<i32>,
    pub group_max_session_timeout_ms: Option<i32>,
    pub offsets_topic_num_partitions: Option<i32>,
    pub log_cleaner_interval_ms: Option<u64>,
    /// The `[mqtt]` table (`mqtt.max_keep_alive_s = 60`).
    pub mqtt: Option<MqttFileConfig>,
    /// The `[bridge]` table: `[[bridge.mqtt_to_kafka]]` rules.
    pub bridge: Option<BridgeFileConfig>,
}

/// The `bridge.*` keys of the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct BridgeFileConfig {
    #[serde(default)]
    pub mqtt_to_kafka: Vec<BridgeRuleFileConfig>,
}

/// One `[[bridge.mqtt_to_kafka]]` rule: MQTT publishes matching `filter` are appended to Kafka
/// topic `topic` (created with `partitions` if missing), and records Kafka clients produce
/// there are routed to MQTT subscribers.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct BridgeRuleFileConfig {
    pub filter: String,
    pub topic: String,
    /// Default: the node's core count.
    pub partitions: Option<i32>,
}

/// The `mqtt.*` keys of the TOML file (see `rmq_protocols::mqtt::MqttConfig`).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct MqttFileConfig {
    /// Longest keep-alive granted to MQTT clients, 1..=65535 s. Default 65535 (no cap).
    pub max_keep_alive_s: Option<u16>,
    /// QoS 1/2 messages queued per session before the newest is dropped. Default 10000.
    pub max_queued_messages: Option<usize>,
    /// Whether clients without a username may connect. Default true.
    pub allow_anonymous: Option<bool>,
    /// File of `username:$argon2id$...` lines (`rmq user add` writes it); read at startup.
    pub password_file: Option<PathBuf>,
    /// `[[mqtt.acl]]` rules, evaluated in order, first match wins, default allow.
    pub acl: Option<Vec<MqttAclFileRule>>,
    /// How often changed persistent sessions and retained messages are written to the
    /// internal `__mqtt_state` topic, 10..=60000 ms. Default 200. A crash loses at most this
    /// window of changes; a clean shutdown loses none.
    pub state_flush_interval_ms: Option<u64>,
}

/// One `[[mqtt.acl]]` rule (see `rmq_protocols::mqtt::acl`).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct MqttAclFileRule {
    /// `allow` or `deny`.
    pub permission: String,
    /// `publish`, `subscribe` or `all`.
    pub action: String,
    /// Topic filter; `%c` / `%u` levels stand for the client id / username.
    pub topic: String,
    pub username: Option<String>,
    pub clientid: Option<String>,
}

/// One `--seeds` entry: a seed node's id and RPC address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub node_id: i32,
    /// "HOST:PORT" as given.
    pub rpc_addr: String,
}

/// The resolved configuration every shard receives (a read-only copy).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub cores: usize,
    pub data_dir: PathBuf,
    pub kafka_addr: SocketAddr,
    pub advertised_kafka_addr: Option<(String, u16)>,
    pub mqtt_addr: SocketAddr,
    pub mqtt_ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub node_id: i32,
    /// The internal RPC listener ("HOST:PORT" as given; bound only in a cluster).
    pub rpc_addr: String,
    /// The seed nodes, sorted by id; empty: this node runs alone. A node that is not among
    /// them joins the cluster through them.
    pub seeds: Vec<Seed>,
    /// Partition Raft groups' election timeout (`--raft-election-timeout-ms`).
    pub raft_election_timeout_ms: u64,
    /// `--fault-injection`: the admin HTTP may cut RPC links (tests).
    pub fault_injection: bool,
    pub log_level: String,
    pub auto_create_topics_enable: bool,
    pub num_partitions: i32,
    pub socket_request_max_bytes: usize,
    /// `group.*` settings of the group coordinator.
    pub group: GroupConfig,
    /// Partitions of `__consumer_offsets` when it is created (first start).
    pub offsets_topic_num_partitions: i32,
    /// How often each shard runs a log-cleaner pass over its compacted partitions that are
    /// due (Kafka's `log.cleaner.backoff.ms`).
    pub log_cleaner_interval_ms: u64,
    /// `mqtt.*` settings of the MQTT layer.
    pub mqtt: MqttConfig,
}

impl NodeConfig {
    pub fn from_cli(cli: Cli) -> anyhow::Result<NodeConfig> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores = cli.cores.or(file.cores).unwrap_or(cpus);
        if cores == 0 || cores > usize::from(u16::MAX) {
            bail!("--cores must be between 1 and {}", u16::MAX);
        }
        let kafka_addr = cli
            .kafka_addr
            .or(file.kafka_addr)
            .unwrap_or_else(|| "0.0.0.0:9092".to_string());
        let kafka_addr = resolve(&kafka_addr).context("--kafka-addr")?;
        let mqtt_addr = cli
            .mqtt_addr
            .or(file.mqtt_addr)
            .unwrap_or_else(|| "0.0.0.0:1883".to_string());
        let mqtt_addr = resolve(&mqtt_addr).context("--mqtt-addr")?;
        let mqtt_ws_addr = cli
            .mqtt_ws_addr
            .or(file.mqtt_ws_addr)
            .unwrap_or_else(|| "0.0.0.0:8083".to_string());
        let mqtt_ws_addr = resolve(&mqtt_ws_addr).context("--mqtt-ws-addr")?;
        let admin_addr = cli
            .admin_addr
            .or(file.admin_addr)
            .unwrap_or_else(|| DEFAULT_ADMIN_ADDR.to_string());
        let admin_addr = resolve(&admin_addr).context("--admin-addr")?;
        let advertised = cli.advertised_kafka_addr.or(file.advertised_kafka_addr);
        let advertised_kafka_addr = advertised
            .map(|a| split_host_port(&a))
            .transpose()
            .context("--advertised-kafka-addr")?;
        let socket_request_max_bytes = file
            .socket_request_max_bytes
            .unwrap_or(DEFAULT_SOCKET_REQUEST_MAX_BYTES);
        if socket_request_max_bytes > REQUEST_MEMORY_PER_SHARD_BYTES {
            bail!(
                "socket_request_max_bytes {socket_request_max_bytes} exceeds the per-shard request \
                 memory budget {REQUEST_MEMORY_PER_SHARD_BYTES}"
            );
        }
        let num_partitions = file.num_partitions.unwrap_or(1);
        if num_partitions < 1 {
            bail!("num_partitions must be at least 1");
        }
        let group = GroupConfig {
            initial_rebalance_delay_ms: file.group_initial_rebalance_delay_ms.unwrap_or(0),
            min_session_timeout_ms: file
                .group_min_session_timeout_ms
                .unwrap_or(DEFAULT_GROUP_MIN_SESSION_TIMEOUT_MS),
            max_session_timeout_ms: file
                .group_max_session_timeout_ms
                .unwrap_or(DEFAULT_GROUP_MAX_SESSION_TIMEOUT_MS),
        };
        if group.initial_rebalance_delay_ms < 0
            || group.min_session_timeout_ms < 1
            || group.min_session_timeout_ms > group.max_session_timeout_ms
        {
            bail!(
                "group settings need group_initial_rebalance_delay_ms >= 0 and                  1 <= group_min_session_timeout_ms <= group_max_session_timeout_ms"
            );
        }
        let offsets_topic_num_partitions = file
            .offsets_topic_num_partitions
            .unwrap_or(DEFAULT_OFFSETS_TOPIC_PARTITIONS);
        if offsets_topic_num_partitions < 1 {
            bail!("offsets_topic_num_partitions must be at least 1");
        }
        let mut mqtt = mqtt_config(file.mqtt.unwrap_or_default())?;
        mqtt.bridge = bridge_rules(file.bridge.unwrap_or_default(), cores)?;
        let node_id = cli.node_id.or(file.node_id).unwrap_or(0);
        if node_id < 0 {
            bail!("--node-id must be 0 or more, got {node_id}");
        }
        let rpc_addr = cli
            .rpc_addr
            .or(file.rpc_addr)
            .unwrap_or_else(|| DEFAULT_RPC_ADDR.to_string());
        resolve(&rpc_addr).context("--rpc-addr")?;
        let seeds = match cli.seeds.or(file.seeds) {
            Some(text) => parse_seeds(&text).context("--seeds")?,
            None => Vec::new(),
        };
        let raft_election_timeout_ms = cli
            .raft_election_timeout_ms
            .or(file.raft_election_timeout_ms)
            .unwrap_or(RAFT_ELECTION_TIMEOUT_MS_DEFAULT);
        if !(RAFT_ELECTION_TIMEOUT_MS_MIN..=RAFT_ELECTION_TIMEOUT_MS_MAX)
            .contains(&raft_election_timeout_ms)
        {
            bail!(
                "--raft-election-timeout-ms must be between {RAFT_ELECTION_TIMEOUT_MS_MIN} and \
                 {RAFT_ELECTION_TIMEOUT_MS_MAX}, got {raft_election_timeout_ms}"
            );
        }
        if !seeds.is_empty() && !mqtt.bridge.rules().is_empty() {
            bail!(
                "MQTT <-> Kafka bridge rules are not supported in a cluster (--seeds) yet: the \
                 bridged topics would have to be created before the cluster has a controller"
            );
        }
        Ok(NodeConfig {
            cores,
            data_dir: cli
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./rmq-data")),
            kafka_addr,
            advertised_kafka_addr,
            mqtt_addr,
            mqtt_ws_addr,
            admin_addr,
            node_id,
            rpc_addr,
            seeds,
            raft_election_timeout_ms,
            fault_injection: cli.fault_injection,
            log_level: cli
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_string()),
            auto_create_topics_enable: file.auto_create_topics_enable.unwrap_or(true),
            num_partitions,
            socket_request_max_bytes,
            group,
            offsets_topic_num_partitions,
            log_cleaner_interval_ms: file
                .log_cleaner_interval_ms
                .unwrap_or(LOG_CLEANER_INTERVAL_MS_DEFAULT)
                .max(LOG_CLEANER_INTERVAL_MS_MIN),
            mqtt,
        })
    }
}

fn mqtt_config(file: MqttFileConfig) -> anyhow::Result<MqttConfig> {
    let mut config = MqttConfig::default();
    if let Some(max_keep_alive_s) = file.max_keep_alive_s {
        if max_keep_alive_s == 0 {
            bail!("mqtt.max_keep_alive_s must be between 1 and 65535");
        }
        config.max_keep_alive_s = max_keep_alive_s;
    }
    if let Some(max_queued) = file.max_queued_messages {
        if !(1..=MAX_QUEUED_MESSAGES_PER_SESSION_LIMIT).contains(&max_queued) {
            bail!(
                "mqtt.max_queued_messages must be between 1 and \
                 {MAX_QUEUED_MESSAGES_PER_SESSION_LIMIT}"
            );
        }
        config.max_queued_messages = max_queued;
    }
    if let Some(allow_anonymous) = file.allow_anonymous {
        config.allow_anonymous = allow_anonymous;
    }
    if let Some(interval_ms) = file.state_flush_interval_ms {
        if !(STATE_FLUSH_INTERVAL_MS_MIN..=STATE_FLUSH_INTERVAL_MS_MAX).contains(&interval_ms) {
            bail!(
                "mqtt.state_flush_interval_ms must be between {STATE_FLUSH_INTERVAL_MS_MIN} and \
                 {STATE_FLUSH_INTERVAL_MS_MAX}"
            );
        }
        config.state_flush_interval_ms = interval_ms;
    }
    if let Some(path) = &file.password_file {
        let users = PasswordFile::load(path).map_err(anyhow::Error::msg)?;
        config.password_file = Some(Arc::new(users));
    }
    let specs: Vec<AclRuleSpec> = file
        .acl
        .unwrap_or_default()
        .into_iter()
        .map(|rule| AclRuleSpec {
            permission: rule.permission,
            action: rule.action,
            topic: rule.topic,
            username: rule.username,
            clientid: rule.clientid,
        })
        .collect();
    config.acl = Arc::new(Acl::compile(&specs).map_err(anyhow::Error::msg)?);
    Ok(config)
}

/// The bridge rules of the file; `default_partitions` for rules without `partitions`.
fn bridge_rules(file: BridgeFileConfig, default_partitions: usize) -> anyhow::Result<BridgeRules> {
    let default_partitions = i32::try_from(default_partitions).unwrap_or(i32::MAX);
    let rules = file
        .mqtt_to_kafka
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            BridgeRule::new(
                &rule.filter,
                &rule.topic,
                rule.partitions.unwrap_or(default_partitions),
            )
            .map_err(|e| anyhow::anyhow!("[[bridge.mqtt_to_kafka]] rule {}: {e}", index + 1))
        })
        .collect::<anyhow::Result<Vec<BridgeRule>>>()?;
    BridgeRules::new(rules).map_err(|e| anyhow::anyhow!("[[bridge.mqtt_to_kafka]]: {e}"))
}

/// Parses `ID@HOST:PORT,...` into seeds sorted by id. Ids must be unique and 0 or more, each
/// address a resolvable HOST:PORT with a non-zero port (other nodes dial it), addresses
/// unique. A node whose `node_id` is not among them joins through them.
pub fn parse_seeds(text: &str) -> anyhow::Result<Vec<Seed>> {
    let mut seeds: Vec<Seed> = Vec::new();
    for entry in text.split(',').map(str::trim) {
        if entry.is_empty() {
            bail!("empty entry in '{text}' (expected ID@HOST:PORT,...)");
        }
        let (id, addr) = entry
            .split_once('@')
            .with_context(|| format!("'{entry}' is not ID@HOST:PORT"))?;
        let id: i32 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .with_context(|| format!("'{entry}': the node id must be a number, 0 or more"))?;
        let (_, port) = split_host_port(addr).with_context(|| format!("'{entry}'"))?;
        if port == 0 {
            bail!("'{entry}': a seed needs a fixed port (other nodes dial it)");
        }
        resolve(addr).with_context(|| format!("'{entry}'"))?;
        if seeds.iter().any(|seed| seed.node_id == id) {
            bail!("node id {id} appears twice");
        }
        if seeds.iter().any(|seed| seed.rpc_addr == addr) {
            bail!("address {addr} appears twice");
        }
        seeds.push(Seed {
            node_id: id,
            rpc_addr: addr.to_string(),
        });
    }
    if seeds.len() > SEEDS_MAX {
        bail!("at most {SEEDS_MAX} seeds, got {}", seeds.len());
    }
    seeds.sort_by_key(|seed| seed.node_id);
    Ok(seeds)
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

fn split_host_port(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("{addr} is not HOST:PORT"))?;
    let port: u16 = port.parse().with_context(|| format!("{addr}: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_config_file() {
        let dir = std::env::temp_dir().join(format!("rmq-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("node.toml");
        std::fs::write(
            &file,
            "cores = 3\nnode_id = 7\nauto_create_topics_enable = false\nkafka_addr = \"127.0.0.1:0\"\n",
        )
        .expect("write config");
        let cli = Cli {
            cores: Some(5),
            config: Some(file),
            ..Cli::default()
        };
        let config = NodeConfig::from_cli(cli).expect("config");
        assert_eq!(config.cores, 5);
        assert_eq!(config.node_id, 7);
        assert!(!config.auto_create_topics_enable);
        assert_eq!(config.kafka_addr.port(), 0);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn seeds_are_parsed_sorted_and_checked() {
        let seeds = parse_seeds("2@127.0.0.1:7002, 1@127.0.0.1:7001,3@localhost:7003")
            .expect("valid seeds");
        let ids: Vec<i32> = seeds.iter().map(|seed| seed.node_id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(seeds[0].rpc_addr, "127.0.0.1:7001");
        for (bad, why) in [
            (
                "1@127.0.0.1:7001,1@127.0.0.1:7002",
                "node id 1 appears twice",
            ),
            ("1@127.0.0.1:7001,2@127.0.0.1:7001", "appears twice"),
            ("127.0.0.1:7001", "is not ID@HOST:PORT"),
            ("x@127.0.0.1:7001", "must be a number"),
            ("-1@127.0.0.1:7001", "must be a number"),
            ("1@127.0.0.1:0", "fixed port"),
            ("1@127.0.0.1", "not HOST:PORT"),
            ("1@127.0.0.1:7001,", "empty entry"),
        ] {
            let error = parse_seeds(bad).expect_err(bad);
            assert!(format!("{error:#}").contains(why), "{bad}: {error:#}");
        }
    }

    #[test]
    fn rpc_addr_defaults_and_no_seeds_means_a_single_node() {
        let config = NodeConfig::from_cli(Cli::default()).expect("config");
        assert_eq!(config.rpc_addr, "0.0.0.0:33145");
        assert!(config.seeds.is_empty());
        let cli = Cli {
            node_id: Some(1),
            rpc_addr: Some("127.0.0.1:0".to_string()),
            seeds: Some("1@127.0.0.1:7001,2@127.0.0.1:7002".to_string()),
            ..Cli::default()
        };
        let config = NodeConfig::from_cli(cli).expect("config");
        assert_eq!(config.seeds.len(), 2);
        let bad = Cli {
            rpc_addr: Some("nowhere".to_string()),
            ..Cli::default()
        };
        let error = NodeConfig::from_cli(bad).expect_err("bad rpc addr");
        assert!(format!("{error:#}").contains("--rpc-addr"), "{error:#}");
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        assert!(toml::from_str::<FileConfig>("no_such_key = 1").is_err());
        assert!(toml::from_str::<FileConfig>("mqtt.no_such_key = 1").is_err());
    }

    #[test]
    fn bridge_rules_are_parsed_and_checked() {
        let text = "[[bridge.mqtt_to_kafka]]\nfilter = \"sensors/#\"\ntopic = \"sensors\"\n\n\
                    [[bridge.mqtt_to_kafka]]\nfilter = \"plant/+/alarm\"\ntopic = \"alarms\"\n\
                    partitions = 8\n";
        let file = toml::from_str::<FileConfig>(text).expect("valid config");
        let rules = bridge_rules(file.bridge.unwrap_or_default(), 3).expect("valid rules");
        let rules = rules.rules();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            (
                rules[0].filter.as_str(),
                rules[0].topic.as_str(),
                rules[0].partitions
            ),
            ("sensors/#", "sensors", 3)
        );
        assert_eq!(
            (
                rules[1].filter.as_str(),
                rules[1].topic.as_str(),
                rules[1].partitions
            ),
            ("plant/+/alarm", "alarms", 8)
        );
        for (bad, why) in [
            (
                "filter = \"a/#/b\"\ntopic = \"t\"",
                "not a valid MQTT topic filter",
            ),
            (
                "filter = \"a/#\"\ntopic = \"a/b\"",
                "not a valid Kafka topic name",
            ),
            (
                "filter = \"a/#\"\ntopic = \"t\"\npartitions = 0",
                "partitions 0",
            ),
        ] {
            let text = format!("[[bridge.mqtt_to_kafka]]\n{bad}\n");
            let file = toml::from_str::<FileConfig>(&text).expect("toml parses");
            let error = bridge_rules(file.bridge.unwrap_or_default(), 1).expect_err(bad);
            assert!(format!("{error:#}").contains(why), "{error:#}");
        }
        let unknown = "[[bridge.mqtt_to_kafka]]\nfilter = \"a\"\ntopic = \"t\"\nqos = 1\n";
        assert!(toml::from_str::<FileConfig>(unknown).is_err());
        let missing = "[[bridge.mqtt_to_kafka]]\nfilter = \"a\"\n";
        assert!(toml::from_str::<FileConfig>(missing).is_err());
    }

    #[test]
    fn mqtt_keep_alive_cap_is_read_from_a_dotted_key_or_a_table() {
        for text in [
            "mqtt.max_keep_alive_s = 5\n",
            "[mqtt]\nmax_keep_alive_s = 5\n",
        ] {
            let file = toml::from_str::<FileConfig>(text).expect("valid config");
            let config = mqtt_config(file.mqtt.unwrap_or_default()).expect("valid mqtt config");
            assert_eq!(config.max_keep_alive_s, 5);
        }
        let zero = MqttFileConfig {
            max_keep_alive_s: Some(0),
            ..MqttFileConfig::default()
        };
        assert!(mqtt_config(zero).is_err());
        assert_eq!(
            mqtt_config(MqttFileConfig::default()).expect("default"),
            MqttConfig::default()
        );
    }

    #[test]
    fn mqtt_state_flush_interval_is_read_and_bounded() {
        let file = toml::from_str::<FileConfig>("[mqtt]\nstate_flush_interval_ms = 1000\n")
            .expect("parses");
        let config = mqtt_config(file.mqtt.unwrap_or_default()).expect("valid");
        assert_eq!(config.state_flush_interval_ms, 1_000);
        for bad in [0, 9, 60_001] {
            let file = MqttFileConfig {
                state_flush_interval_ms: Some(bad),
                ..MqttFileConfig::default()
            };
            let err = mqtt_config(file).expect_err("out of range");
            assert!(err.to_string().contains("state_flush_interval_ms"), "{err}");
        }
    }

    #[test]
    fn mqtt_queue_limit_is_read_and_bounded() {
        let file = toml::from_str::<FileConfig>("[mqtt]\nmax_queued_messages = 100000\n")
            .expect("valid config");
        let config = mqtt_config(file.mqtt.unwrap_or_default()).expect("valid mqtt config");
        assert_eq!(config.max_queued_messages, 100_000);
        for bad in [0, MAX_QUEUED_MESSAGES_PER_SESSION_LIMIT + 1] {
            let file = MqttFileConfig {
                max_queued_messages: Some(bad),
                ..MqttFileConfig::default()
            };
            assert!(mqtt_config(file).is_err(), "{bad}");
        }
    }

    #[test]
    fn mqtt_acl_rules_and_password_file_are_read_and_checked() {
        let text = "[mqtt]\nallow_anonymous = false\n\n[[mqtt.acl]]\npermission = \"deny\"\n\
                    action = \"subscribe\"\ntopic = \"secret/#\"\nusername = \"bob\"\n";
        let file = toml::from_str::<FileConfig>(text).expect("valid config");
        let config = mqtt_config(file.mqtt.unwrap_or_default()).expect("valid mqtt config");
        assert!(!config.allow_anonymous);
        assert!(!config.acl.is_empty());
        let bad = toml::from_str::<FileConfig>(
            "[[mqtt.acl]]\npermission = \"deny\"\naction = \"read\"\ntopic = \"a\"\n",
        )
        .expect("valid toml");
        let error = mqtt_config(bad.mqtt.unwrap_or_default()).expect_err("bad action");
        assert!(
            error
                .to_string()
                .contains("mqtt.acl rule 1: unknown action"),
            "{error}"
        );
        let dir = std::env::temp_dir().join(format!("rmq-pwfile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("passwords");
        std::fs::write(&path, "alice:nothash\n").expect("write");
        let broken = MqttFileConfig {
            password_file: Some(path.clone()),
            ..MqttFileConfig::default()
        };
        let error = mqtt_config(broken).expect_err("malformed line");
        let want = format!("{}:1: not a PHC string", path.display());
        assert!(error.to_string().starts_with(&want), "{error}");
        std::fs::remove_dir_all(dir).ok();
    }
}
