//! Cluster metadata: topics, their partitions' owning nodes and shards, topic configs, the
//! brokers of a cluster and the producer-id reservation. The controller (shard 0) is its single writer; every shard holds an immutable
//! snapshot (`Arc<ClusterMetadata>`) that the controller replaces by broadcast, with a version
//! number so a shard can tell an older snapshot from a newer one.
//!
//! Persisted with rkyv at `<data_dir>/__cluster/metadata.bin`, framed as
//! `magic(8) | payload_len(u32 LE) | crc32(u32 LE) | payload`, written to a temporary file,
//! fdatasynced and renamed, so a crash leaves either the old or the new file. The magic names
//! the layout: `RMQMETA4` today; `RMQMETA1` (before DeleteRecords), `RMQMETA2` (before
//! clusters) and `RMQMETA3` (before replicated partitions) files are read and upgraded.
//!
//! In a cluster (`--seeds`) the topics whose name does not start with `__` and the brokers come
//! from the controller Raft group (see `cluster`); topics starting with `__` stay node-local.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rkyv::{Archive, Deserialize, Serialize};

const METADATA_MAGIC: &[u8; 8] = b"RMQMETA4";
const METADATA_MAGIC_V3: &[u8; 8] = b"RMQMETA3";
const METADATA_MAGIC_V2: &[u8; 8] = b"RMQMETA2";
const METADATA_MAGIC_V1: &[u8; 8] = b"RMQMETA1";
const METADATA_HEADER_BYTES: usize = 16;

/// One topic: the owning shard of each partition (index = partition id) and its configs.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TopicMeta {
    pub id: [u8; 16],
    pub partition_shards: Vec<u16>,
    /// Only the configs set on the topic; defaults are not stored.
    pub configs: BTreeMap<String, String>,
    pub leader_epoch: i32,
    /// DeleteRecords: the first readable offset of each partition (index = partition id; a
    /// missing entry is 0). The storage log start may pass it (retention); the larger wins.
    pub log_start_offsets: Vec<i64>,
    /// The node leading each partition (index = partition id). Empty (or a missing entry):
    /// this node, as for every topic of a single node and a cluster node's `__` topics.
    pub partition_nodes: Vec<i32>,
    /// The replicas of each partition of a replicated topic (index = partition id; each a
    /// list of node ids, the preferred leader first): every partition is then a Raft group
    /// over those nodes, hosted on shard 0 of each. Empty for an unreplicated topic.
    pub partition_replicas: Vec<Vec<i32>>,
}

/// A broker of a cluster, as it registered itself with the controller.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BrokerMeta {
    pub node_id: i32,
    /// The advertised Kafka address.
    pub host: String,
    pub port: i32,
    /// The internal RPC address ("HOST:PORT").
    pub rpc_addr: String,
}

impl TopicMeta {
    /// The node leading `partition`; `None` when it is this node (no node recorded).
    pub fn node_of(&self, partition: i32) -> Option<i32> {
        usize::try_from(partition)
            .ok()
            .and_then(|index| self.partition_nodes.get(index).copied())
    }

    /// The replicas of `partition` when the topic is replicated (a Raft group per partition).
    pub fn replicas_of(&self, partition: i32) -> Option<&[i32]> {
        usize::try_from(partition)
            .ok()
            .and_then(|index| self.partition_replicas.get(index))
            .map(Vec::as_slice)
            .filter(|replicas| !replicas.is_empty())
    }

    pub fn is_replicated(&self) -> bool {
        !self.partition_replicas.is_empty()
    }

    /// The DeleteRecords start of `partition` (0 when none was set).
    pub fn log_start_override(&self, partition: i32) -> i64 {
        usize::try_from(partition)
            .ok()
            .and_then(|index| self.log_start_offsets.get(index).copied())
            .unwrap_or(0)
    }
}

/// The layouts before `RMQMETA2`, read once and upgraded.
mod legacy {
    use std::collections::BTreeMap;

    use rkyv::{Archive, Deserialize, Serialize};

    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct TopicMetaV1 {
        pub id: [u8; 16],
        pub partition_shards: Vec<u16>,
        pub configs: BTreeMap<String, String>,
        pub leader_epoch: i32,
    }

    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
    pub struct ClusterMetadataV1 {
        pub version: u64,
        pub cluster_id: String,
        pub topics: BTreeMap<String, TopicMetaV1>,
        pub producer_id_reserved_until: i64,
    }

    impl From<ClusterMetadataV1> for super::ClusterMetadata {
        fn from(v1: ClusterMetadataV1) -> super::ClusterMetadata {
            super::ClusterMetadata {
                version: v1.version,
                cluster_id: v1.cluster_id,
                topics: v1
                    .topics
                    .into_iter()
                    .map(|(name, t)| {
                        let topic = super::TopicMeta {
                            id: t.id,
                            partition_shards: t.partition_shards,
                            configs: t.configs,
                            leader_epoch: t.leader_epoch,
                            log_start_offsets: Vec::new(),
                            partition_nodes: Vec::new(),
                            partition_replicas: Vec::new(),
                        };
                        (name, topic)
                    })
                    .collect(),
                producer_id_reserved_until: v1.producer_id_reserved_until,
                ..super::ClusterMetadata::default()
            }
        }
    }

    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct TopicMetaV2 {
        pub id: [u8; 16],
        pub partition_shards: Vec<u16>,
        pub configs: BTreeMap<String, String>,
        pub leader_epoch: i32,
        pub log_start_offsets: Vec<i64>,
    }

    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
    pub struct ClusterMetadataV2 {
        pub version: u64,
        pub cluster_id: String,
        pub topics: BTreeMap<String, TopicMetaV2>,
        pub producer_id_reserved_until: i64,
    }

    impl From<ClusterMetadataV2> for super::ClusterMetadata {
        fn from(v2: ClusterMetadataV2) -> super::ClusterMetadata {
            super::ClusterMetadata {
                version: v2.version,
                cluster_id: v2.cluster_id,
                topics: v2
                    .topics
                    .into_iter()
                    .map(|(name, t)| {
                        let topic = super::TopicMeta {
                            id: t.id,
                            partition_shards: t.partition_shards,
                            configs: t.configs,
                            leader_epoch: t.leader_epoch,
                            log_start_offsets: t.log_start_offsets,
                            partition_nodes: Vec::new(),
                            partition_replicas: Vec::new(),
                        };
                        (name, topic)
                    })
                    .collect(),
                producer_id_reserved_until: v2.producer_id_reserved_until,
                ..super::ClusterMetadata::default()
            }
        }
    }

    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct TopicMetaV3 {
        pub id: [u8; 16],
        pub partition_shards: Vec<u16>,
        pub configs: BTreeMap<String, String>,
        pub leader_epoch: i32,
        pub log_start_offsets: Vec<i64>,
        pub partition_nodes: Vec<i32>,
    }

    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
    pub struct ClusterMetadataV3 {
        pub version: u64,
        pub cluster_id: String,
        pub topics: BTreeMap<String, TopicMetaV3>,
        pub producer_id_reserved_until: i64,
        pub brokers: BTreeMap<i32, super::BrokerMeta>,
        pub controller_applied_index: u64,
    }

    impl From<ClusterMetadataV3> for super::ClusterMetadata {
        fn from(v3: ClusterMetadataV3) -> super::ClusterMetadata {
            super::ClusterMetadata {
                version: v3.version,
                cluster_id: v3.cluster_id,
                topics: v3
                    .topics
                    .into_iter()
                    .map(|(name, t)| {
                        let topic = super::TopicMeta {
                            id: t.id,
                            partition_shards: t.partition_shards,
                            configs: t.configs,
                            leader_epoch: t.leader_epoch,
                            log_start_offsets: t.log_start_offsets,
                            partition_nodes: t.partition_nodes,
                            partition_replicas: Vec::new(),
                        };
                        (name, topic)
                    })
                    .collect(),
                producer_id_reserved_until: v3.producer_id_reserved_until,
                brokers: v3.brokers,
                controller_applied_index: v3.controller_applied_index,
            }
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ClusterMetadata {
    pub version: u64,
    pub cluster_id: String,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Producer ids below this value may have been handed out; the next reservation starts here.
    pub producer_id_reserved_until: i64,
    /// The brokers of the cluster, by node id (empty on a single node).
    pub brokers: BTreeMap<i32, BrokerMeta>,
    /// The last controller log index merged into this metadata (0 on a single node): after a
    /// restart, replayed controller entries up to it are already here.
    pub controller_applied_index: u64,
}

impl ClusterMetadata {
    pub fn new(cluster_id: String) -> ClusterMetadata {
        ClusterMetadata {
            cluster_id,
            ..ClusterMetadata::default()
        }
    }

    /// The shard owning `partition` of `topic` on node `node_id` with `shard_count` shards;
    /// `None` when the partition does not exist or another node leads it. A stored shard
    /// beyond the current count (the node restarted with fewer cores) wraps around.
    pub fn shard_of(
        &self,
        topic: &str,
        partition: i32,
        node_id: i32,
        shard_count: usize,
    ) -> Option<u16> {
        let meta = self.topics.get(topic)?;
        match meta.replicas_of(partition) {
            Some(replicas) if !replicas.contains(&node_id) => return None,
            Some(_) => {}
            None if meta.node_of(partition).is_some_and(|node| node != node_id) => return None,
            None => {}
        }
        let index = usize::try_from(partition).ok()?;
        let stored = *meta.partition_shards.get(index)?;
        u16::try_from(usize::from(stored) % shard_count).ok()
    }

    /// The node leading `partition` of `topic`, if it exists: its recorded node, else
    /// `local_node`.
    pub fn leader_of(&self, topic: &str, partition: i32, local_node: i32) -> Option<i32> {
        let meta = self.topics.get(topic)?;
        let count = i32::try_from(meta.partition_shards.len()).unwrap_or(i32::MAX);
        if !(0..count).contains(&partition) {
            return None;
        }
        Some(meta.node_of(partition).unwrap_or(local_node))
    }

    /// Partitions per shard of node `node_id`, for least-loaded placement.
    pub fn shard_loads(&self, node_id: i32, shard_count: usize) -> Vec<usize> {
        let mut loads = vec![0usize; shard_count];
        for topic in self.topics.values() {
            for (index, shard) in topic.partition_shards.iter().enumerate() {
                let node = topic.partition_nodes.get(index).copied();
                if node.is_none_or(|node| node == node_id) {
                    loads[usize::from(*shard) % shard_count] += 1;
                }
            }
        }
        loads
    }
}

pub fn metadata_path(data_dir: &Path) -> PathBuf {
    data_dir.join("__cluster").join("metadata.bin")
}

/// Loads the persisted metadata; `None` if the node has never stored any.
pub fn load(data_dir: &Path) -> anyhow::Result<Option<ClusterMetadata>> {
    let path = metadata_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    decode(&bytes)
        .with_context(|| format!("corrupt metadata file {}", path.display()))
        .map(Some)
}

pub(crate) fn decode(bytes: &[u8]) -> anyhow::Result<ClusterMetadata> {
    if bytes.len() < METADATA_HEADER_BYTES {
        bail!("bad magic");
    }
    let v1 = &bytes[..8] == METADATA_MAGIC_V1;
    let v2 = &bytes[..8] == METADATA_MAGIC_V2;
    let v3 = &bytes[..8] == METADATA_MAGIC_V3;
    if !v1 && !v2 && !v3 && &bytes[..8] != METADATA_MAGIC {
        bail!("bad magic");
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let payload = bytes
        .get(METADATA_HEADER_BYTES..METADATA_HEADER_BYTES + len)
        .context("truncated payload")?;
    if crc32fast::hash(payload) != crc {
        bail!("checksum mismatch");
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    if v1 {
        return rkyv::from_bytes::<legacy::ClusterMetadataV1, rkyv::rancor::Error>(&aligned)
            .map(ClusterMetadata::from)
            .map_err(|e| anyhow::anyhow!("cannot decode: {e}"));
    }
    if v2 {
        return rkyv::from_bytes::<legacy::ClusterMetadataV2, rkyv::rancor::Error>(&aligned)
            .map(ClusterMetadata::from)
            .map_err(|e| anyhow::anyhow!("cannot decode: {e}"));
    }
    if v3 {
        return rkyv::from_bytes::<legacy::ClusterMetadataV3, rkyv::rancor::Error>(&aligned)
            .map(ClusterMetadata::from)
            .map_err(|e| anyhow::anyhow!("cannot decode: {e}"));
    }
    rkyv::from_bytes::<ClusterMetadata, rkyv::rancor::Error>(&aligned)
        .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))
}

pub(crate) fn encode(metadata: &ClusterMetadata) -> anyhow::Result<Vec<u8>> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(metadata)
        .map_err(|e| anyhow::anyhow!("cannot encode metadata: {e}"))?;
    let len = u32::try_from(payload.len()).context("metadata too large")?;
    let mut out = Vec::with_capacity(METADATA_HEADER_BYTES + payload.len());
    out.extend_from_slice(METADATA_MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Writes `metadata` durably (temporary file, fdatasync, rename, directory fsync).
pub fn store(data_dir: &Path, metadata: &ClusterMetadata) -> anyhow::Result<()> {
    let path = metadata_path(data_dir);
    let dir = path.parent().context("metadata path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let bytes = encode(metadata)?;
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(&bytes)?;
    file.sync_data()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterMetadata {
        let mut metadata = ClusterMetadata::new("cluster-1".to_string());
        metadata.version = 3;
        metadata.producer_id_reserved_until = 2000;
        metadata.topics.insert(
            "orders".to_string(),
            TopicMeta {
                id: [7; 16],
                partition_shards: vec![0, 1, 0],
                configs: BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
                leader_epoch: 0,
                log_start_offsets: vec![0, 5],
                partition_nodes: Vec::new(),
                partition_replicas: Vec::new(),
            },
        );
        metadata.topics.insert(
            "remote".to_string(),
            TopicMeta {
                id: [8; 16],
                partition_shards: vec![1, 0],
                configs: BTreeMap::new(),
                leader_epoch: 0,
                log_start_offsets: Vec::new(),
                partition_nodes: vec![2, 3],
                partition_replicas: Vec::new(),
            },
        );
        metadata.brokers.insert(
            2,
            BrokerMeta {
                node_id: 2,
                host: "127.0.0.1".to_string(),
                port: 9092,
                rpc_addr: "127.0.0.1:33145".to_string(),
            },
        );
        metadata.controller_applied_index = 17;
        metadata
    }

    #[test]
    fn stored_metadata_loads_back_equal() {
        let dir = std::env::temp_dir().join(format!("rmq-meta-test-{}", std::process::id()));
        store(&dir, &sample()).expect("store");
        assert_eq!(load(&dir).expect("load"), Some(sample()));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn version_one_metadata_is_upgraded_on_load() {
        let mut v1 = legacy::ClusterMetadataV1 {
            version: 3,
            cluster_id: "cluster-1".to_string(),
            producer_id_reserved_until: 2000,
            ..Default::default()
        };
        v1.topics.insert(
            "orders".to_string(),
            legacy::TopicMetaV1 {
                id: [7; 16],
                partition_shards: vec![0, 1],
                configs: BTreeMap::new(),
                leader_epoch: 0,
            },
        );
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&v1).expect("encode v1");
        let mut bytes = METADATA_MAGIC_V1.to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let upgraded = decode(&bytes).expect("v1 decodes");
        assert_eq!(upgraded.cluster_id, "cluster-1");
        assert_eq!(upgraded.topics["orders"].partition_shards, vec![0, 1]);
        assert_eq!(upgraded.topics["orders"].log_start_override(1), 0);
    }

    #[test]
    fn flipped_bit_in_metadata_is_detected() {
        let mut bytes = encode(&sample()).expect("encode");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn shard_of_wraps_when_fewer_shards_run() {
        let metadata = sample();
        assert_eq!(metadata.shard_of("orders", 1, 0, 4), Some(1));
        assert_eq!(metadata.shard_of("orders", 1, 0, 1), Some(0));
        assert_eq!(metadata.shard_of("orders", 3, 0, 4), None);
        assert_eq!(metadata.shard_loads(0, 2), vec![2, 1]);
    }

    #[test]
    fn partitions_of_other_nodes_have_no_local_shard() {
        let metadata = sample();
        assert_eq!(metadata.shard_of("remote", 0, 2, 4), Some(1));
        assert_eq!(metadata.shard_of("remote", 1, 2, 4), None);
        assert_eq!(metadata.leader_of("remote", 1, 2), Some(3));
        assert_eq!(metadata.leader_of("orders", 1, 2), Some(2));
        assert_eq!(metadata.leader_of("remote", 2, 2), None);
        // Node 3 holds remote-1 on shard 0; orders (local to every node) counts too.
        assert_eq!(metadata.shard_loads(3, 2), vec![3, 1]);
    }

    #[test]
    fn version_three_metadata_is_upgraded_and_replicas_place_partitions() {
        let mut v3 = legacy::ClusterMetadataV3 {
            version: 5,
            cluster_id: "cluster-3".to_string(),
            controller_applied_index: 17,
            ..Default::default()
        };
        v3.topics.insert(
            "orders".to_string(),
            legacy::TopicMetaV3 {
                id: [9; 16],
                partition_shards: vec![0, 1],
                configs: BTreeMap::new(),
                leader_epoch: 0,
                log_start_offsets: Vec::new(),
                partition_nodes: vec![2, 3],
            },
        );
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&v3).expect("encode v3");
        let mut bytes = METADATA_MAGIC_V3.to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let mut upgraded = decode(&bytes).expect("v3 decodes");
        assert_eq!(upgraded.controller_applied_index, 17);
        assert_eq!(upgraded.topics["orders"].partition_nodes, vec![2, 3]);
        assert!(!upgraded.topics["orders"].is_replicated());
        // A replicated partition has a shard on each of its replicas, none elsewhere.
        if let Some(topic) = upgraded.topics.get_mut("orders") {
            topic.partition_replicas = vec![vec![2, 3, 4], vec![3, 4, 5]];
        }
        assert_eq!(upgraded.shard_of("orders", 0, 4, 2), Some(0));
        assert_eq!(upgraded.shard_of("orders", 0, 5, 2), None);
        assert_eq!(upgraded.shard_of("orders", 1, 5, 2), Some(1));
        let round_trip = decode(&encode(&upgraded).expect("encode")).expect("decode");
        assert_eq!(round_trip, upgraded);
    }

    #[test]
    fn version_two_metadata_is_upgraded_on_load() {
        let mut v2 = legacy::ClusterMetadataV2 {
            version: 4,
            cluster_id: "cluster-2".to_string(),
            producer_id_reserved_until: 1000,
            ..Default::default()
        };
        v2.topics.insert(
            "orders".to_string(),
            legacy::TopicMetaV2 {
                id: [7; 16],
                partition_shards: vec![0, 1],
                configs: BTreeMap::new(),
                leader_epoch: 0,
                log_start_offsets: vec![3],
            },
        );
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&v2).expect("encode v2");
        let mut bytes = METADATA_MAGIC_V2.to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let upgraded = decode(&bytes).expect("v2 decodes");
        assert_eq!(upgraded.version, 4);
        assert_eq!(upgraded.topics["orders"].log_start_override(0), 3);
        assert!(upgraded.topics["orders"].partition_nodes.is_empty());
        assert!(upgraded.brokers.is_empty());
        assert_eq!(upgraded.controller_applied_index, 0);
    }
}
