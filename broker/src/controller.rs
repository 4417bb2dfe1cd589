//! The controller: the single writer of this node's metadata, on shard 0. It validates topic
//! changes, places partitions on the least-loaded shard, persists the new metadata, then
//! broadcasts the snapshot to every shard and waits until each has applied it (so a topic is
//! usable on every shard when CreateTopics answers). Operations are serialized by a lock held
//! across those awaits (`lock`); writes of the node's metadata and their broadcasts by a second
//! one (`commit_lock`), so shards apply snapshots in version order.
//!
//! In a cluster (`--seeds`, see `cluster`) the topics whose name does not start with `__` are
//! the controller Raft group's: an operation on them validates against the replicated state,
//! proposes the changed topics as compare-and-set commands (through the Raft leader), and
//! answers once this node has merged the committed result (`merge_replicated`, which takes
//! only `commit_lock`, so a proposal waiting under `lock` never blocks it). `__` topics stay
//! node-local, through the path a single node uses.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use glommio::sync::Semaphore;
use rmq_protocols::kernel::{ConfigChange, KernelError, TopicInfo, TopicPartition, TopicSpec};
use tracing::info;

use crate::cluster::ClusterNode;
use crate::constants::{
    MAX_PARTITIONS_PER_TOPIC, PRODUCER_ID_BLOCK_SIZE, PRODUCER_ID_NODE_SHIFT, TOPIC_NAME_MAX_BYTES,
};
use crate::metadata::{self, BrokerMeta, ClusterMetadata, TopicMeta};
use crate::shard::{Shard, ShardId, ShardOp};
use crate::topic_config;

pub enum ControllerRequest {
    CreateTopics {
        specs: Vec<TopicSpec>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    CreatePartitions {
        name: String,
        partition_count: i32,
        validate_only: bool,
    },
    InitProducerId,
    AlterTopicConfigs {
        name: String,
        changes: Vec<ConfigChange>,
        replace_all: bool,
        validate_only: bool,
    },
    /// New log start offsets, already checked against the partitions' high watermarks.
    DeleteRecords {
        partitions: Vec<(TopicPartition, i64)>,
    },
}

pub enum ControllerReply {
    CreateTopics(Vec<Result<TopicInfo, KernelError>>),
    DeleteTopics(Vec<Result<(), KernelError>>),
    CreatePartitions(Result<(), KernelError>),
    InitProducerId(Result<(i64, i16), KernelError>),
    AlterTopicConfigs(Result<(), KernelError>),
    DeleteRecords(Vec<Result<i64, KernelError>>),
}

pub struct Controller {
    state: RefCell<ClusterMetadata>,
    lock: Semaphore,
    commit_lock: Semaphore,
    next_producer_id: Cell<i64>,
    default_partitions: i32,
    /// Set once the node has joined its cluster (`--seeds`); `None` on a single node.
    cluster: RefCell<Option<Rc<ClusterNode>>>,
}

/// Where an operation's topics live.
enum Scope {
    /// This node's metadata (every topic of a single node; `__` topics in a cluster).
    Local,
    /// The controller Raft group's replicated state.
    Cluster(Rc<ClusterNode>),
}

/// A new node metadata for `Controller::commit_local`.
enum Update {
    /// From a local operation: its `__` topics and producer ids (all of it on a single node).
    Local(ClusterMetadata),
    /// From the controller group: its topics and brokers as of log index `index`.
    Replicated {
        cluster_id: String,
        topics: std::collections::BTreeMap<String, TopicMeta>,
        brokers: std::collections::BTreeMap<i32, BrokerMeta>,
        index: u64,
    },
}

/// Whether a topic is node-local in a cluster (internal topics: `__consumer_offsets`, ...).
pub fn is_node_local_topic(name: &str) -> bool {
    name.starts_with("__")
}

impl ControllerRequest {
    /// The topics the request names, if it names any.
    fn topic_names(&self) -> Option<Vec<&str>> {
        match self {
            ControllerRequest::CreateTopics { specs, .. } => {
                Some(specs.iter().map(|s| s.name.as_str()).collect())
            }
            ControllerRequest::DeleteTopics { names } => {
                Some(names.iter().map(String::as_str).collect())
            }
            ControllerRequest::CreatePartitions { name, .. }
            | ControllerRequest::AlterTopicConfigs { name, .. } => Some(vec![name.as_str()]),
            ControllerRequest::DeleteRecords { partitions } => {
                Some(partitions.iter().map(|(p, _)| p.topic.as_str()).collect())
            }
            ControllerRequest::InitProducerId => None,
        }
    }
}

/// The kernel's view of a stored topic.
pub fn topic_info(name: &str, meta: &TopicMeta) -> TopicInfo {
    TopicInfo {
        name: name.to_string(),
        id: meta.id,
        partition_count: i32::try_from(meta.partition_shards.len()).unwrap_or(i32::MAX),
        leader_epoch: meta.leader_epoch,
        internal: name.starts_with("__"),
    }
}

pub fn validate_topic_name(name: &str) -> Result<(), KernelError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-';
    if name.is_empty() || name == "." || name == ".." {
        return Err(KernelError::InvalidTopic(format!(
            "illegal topic name '{name}'"
        )));
    }
    if name.len() > TOPIC_NAME_MAX_BYTES {
        return Err(KernelError::InvalidTopic(format!(
            "topic name longer than {TOPIC_NAME_MAX_BYTES} characters"
        )));
    }
    if !name.chars().all(legal) {
        return Err(KernelError::InvalidTopic(format!(
            "topic name '{name}' may contain only ASCII letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

fn unique_id(seed: u64, index: u64) -> [u8; 16] {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&nanos.to_be_bytes());
    id[8..].copy_from_slice(&(seed.wrapping_shl(20) ^ index).to_be_bytes());
    id
}

impl Controller {
    pub fn new(metadata: ClusterMetadata, default_partitions: i32) -> Controller {
        let next_producer_id = metadata.producer_id_reserved_until;
        Controller {
            state: RefCell::new(metadata),
            lock: Semaphore::new(1),
            commit_lock: Semaphore::new(1),
            next_producer_id: Cell::new(next_producer_id),
            default_partitions,
            cluster: RefCell::new(None),
        }
    }

    /// This node's metadata as the controller last committed it.
    pub fn state(&self) -> ClusterMetadata {
        self.state.borrow().clone()
    }

    /// From now on, operations on non-`__` topics go through the cluster's controller group.
    pub fn set_cluster(&self, cluster: Rc<ClusterNode>) {
        *self.cluster.borrow_mut() = Some(cluster);
    }

    pub fn cluster(&self) -> Option<Rc<ClusterNode>> {
        self.cluster.borrow().clone()
    }

    pub async fn handle(&self, shard: &Rc<Shard>, request: ControllerRequest) -> ControllerReply {
        // Serializes metadata changes; fails only if the semaphore were closed (never).
        let _guard = self.lock.acquire_permit(1).await;
        let local = request
            .topic_names()
            .is_none_or(|names| names.iter().all(|name| is_node_local_topic(name)));
        let scope = match self.cluster() {
            Some(cluster) if !local => Scope::Cluster(cluster),
            _ => Scope::Local,
        };
        match request {
            ControllerRequest::CreateTopics {
                specs,
                validate_only,
            } => ControllerReply::CreateTopics(
                self.create_topics(shard, &scope, specs, validate_only)
                    .await,
            ),
            ControllerRequest::DeleteTopics { names } => {
                ControllerReply::DeleteTopics(self.delete_topics(shard, &scope, names).await)
            }
            ControllerRequest::CreatePartitions {
                name,
                partition_count,
                validate_only,
            } => ControllerReply::CreatePartitions(
                self.create_partitions(shard, &scope, &name, partition_count, validate_only)
                    .await,
            ),
            ControllerRequest::InitProducerId => {
                ControllerReply::InitProducerId(self.init_producer_id(shard))
            }
            ControllerRequest::DeleteRecords { partitions } => {
                ControllerReply::DeleteRecords(self.delete_records(shard, &scope, partitions).await)
            }
            ControllerRequest::AlterTopicConfigs {
                name,
                changes,
                replace_all,
                validate_only,
            } => ControllerReply::AlterTopicConfigs(
                self.alter_topic_configs(shard, &scope, &name, changes, replace_all, validate_only)
                    .await,
            ),
        }
    }

    /// What an operation in `scope` starts from: this node's metadata, or the replicated
    /// topics and brokers.
    fn base(&self, scope: &Scope) -> ClusterMetadata {
        match scope {
            Scope::Local => self.state.borrow().clone(),
            Scope::Cluster(cluster) => {
                let mut base = self.state.borrow().clone();
                let (topics, brokers) = cluster.replicated_topics_and_brokers();
                base.topics = topics;
                base.brokers = brokers;
                base
            }
        }
    }

    /// Makes `next` (derived from `base`) the state of `scope`.
    async fn commit(
        &self,
        shard: &Rc<Shard>,
        scope: &Scope,
        base: &ClusterMetadata,
        next: ClusterMetadata,
    ) -> Result<(), KernelError> {
        match scope {
            Scope::Local => self.commit_local(shard, Update::Local(next)).await,
            Scope::Cluster(cluster) => cluster.propose_diff(base, &next).await,
        }
    }

    /// Merges the controller group's state as of log index `index` into this node's metadata
    /// (persisted and broadcast to every shard); a no-op for an index merged already.
    pub async fn merge_replicated(
        &self,
        shard: &Rc<Shard>,
        cluster_id: String,
        topics: std::collections::BTreeMap<String, TopicMeta>,
        brokers: std::collections::BTreeMap<i32, BrokerMeta>,
        index: u64,
    ) -> Result<(), KernelError> {
        let update = Update::Replicated {
            cluster_id,
            topics,
            brokers,
            index,
        };
        self.commit_local(shard, update).await
    }

    fn check_spec(
        &self,
        scope: &Scope,
        spec: &TopicSpec,
        next: &ClusterMetadata,
    ) -> Result<TopicMeta, KernelError> {
        validate_topic_name(&spec.name)?;
        if matches!(scope, Scope::Cluster(_)) && is_node_local_topic(&spec.name) {
            return Err(KernelError::InvalidTopic(format!(
                "topics starting with '__' are internal to each node of a cluster: '{}'",
                spec.name
            )));
        }
        if next.topics.contains_key(&spec.name) {
            return Err(KernelError::TopicAlreadyExists);
        }
        let count = if spec.partition_count == -1 {
            self.default_partitions
        } else {
            spec.partition_count
        };
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&count) {
            return Err(KernelError::InvalidPartitions(format!(
                "partition count must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, got {count}"
            )));
        }
        let replication_factor = replication_factor(spec);
        let brokers = match scope {
            Scope::Local => 1,
            Scope::Cluster(_) => next.brokers.len().max(1),
        };
        if replication_factor < 1 || usize::from(replication_factor.unsigned_abs()) > brokers {
            return Err(KernelError::InvalidReplicationFactor(format!(
                "replication factor {} must be between 1 and the {brokers} registered broker(s)",
                spec.replication_factor
            )));
        }
        let configs = topic_config::validate(&spec.configs)?;
        if replication_factor > 1 {
            topic_config::check_replicable(&configs)?;
        }
        Ok(TopicMeta {
            id: unique_id(next.version, next.topics.len() as u64),
            partition_shards: Vec::new(),
            configs,
            leader_epoch: 0,
            log_start_offsets: Vec::new(),
            partition_nodes: Vec::new(),
            partition_replicas: Vec::new(),
        })
    }

    /// Where new partitions go: this node's least-loaded shards; in a cluster the partitions
    /// also record this node as their leader.
    fn placement(&self, shard: &Shard, scope: &Scope) -> Placement {
        Placement {
            loads: self
                .state
                .borrow()
                .shard_loads(shard.config.node_id, shard.shard_count),
            node: matches!(scope, Scope::Cluster(_)).then_some(shard.config.node_id),
        }
    }

    async fn create_topics(
        &self,
        shard: &Rc<Shard>,
        scope: &Scope,
        specs: Vec<TopicSpec>,
        validate_only: bool,
    ) -> Vec<Result<TopicInfo, KernelError>> {
        let base = self.base(scope);
        let mut next = base.clone();
        let mut placement = self.placement(shard, scope);
        let mut results = Vec::with_capacity(specs.len());
        for spec in &specs {
            let result = self.check_spec(scope, spec, &next).map(|mut meta| {
                let count = if spec.partition_count == -1 {
                    self.default_partitions
                } else {
                    spec.partition_count
                };
                place_partitions(&mut placement, &mut meta, count);
                let replication_factor = replication_factor(spec);
                if replication_factor > 1 {
                    place_replicas(&next, &mut meta, replication_factor.unsigned_abs());
                }
                let info = topic_info(&spec.name, &meta);
                next.topics.insert(spec.name.clone(), meta);
                info
            });
            results.push(result);
        }
        if validate_only || results.iter().all(Result::is_err) {
            return results;
        }
        if let Err(e) = self.commit(shard, scope, &base, next).await {
            return results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
        }
        for info in results.iter().flatten() {
            info!(topic = %info.name, partitions = info.partition_count, "topic created");
        }
        results
    }

    async fn delete_topics(
        &self,
        shard: &Rc<Shard>,
        scope: &Scope,
        names: Vec<String>,
    ) -> Vec<Result<(), KernelError>> {
        let base = self.base(scope);
        let mut next = base.clone();
        let results: Vec<Result<(), KernelError>> = names
            .iter()
            .map(|name| {
                if name.starts_with("__") {
                    return Err(KernelError::InvalidTopic(format!(
                        "internal topic '{name}' cannot be deleted"
                    )));
                }
                next.topics
                    .remove(name)
                    .map(|_| ())
                    .ok_or(KernelError::UnknownTopicOrPartition)
            })
            .collect();
        if results.iter().any(Result::is_ok) {
            if let Err(e) = self.commit(shard, scope, &base, next).await {
                return results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
            }
            let deleted: BTreeSet<&String> = names.iter().collect();
            info!(topics = ?deleted, "topics deleted");
        }
        results
    }

    async fn create_partitions(
        &self,
        shard: &Rc<Shard>,
        scope: &Scope,
        name: &str,
        partition_count: i32,
        validate_only: bool,
    ) -> Result<(), KernelError> {
        let base = self.base(scope);
        let mut next = base.clone();
        let mut meta = next
            .topics
            .get(name)
            .cloned()
            .ok_or(KernelError::UnknownTopicOrPartition)?;
        let current = meta.partition_shards.len();
        let wanted = usize::try_from(partition_count).unwrap_or(0);
        if wanted <= current || partition_count > MAX_PARTITIONS_PER_TOPIC {
            return Err(KernelError::InvalidPartitions(format!(
                "topic '{name}' has {current} partitions; the new count must be larger and at most \
                 {MAX_PARTITIONS_PER_TOPIC}, got {partition_count}"
            )));
        }
        if validate_only {
            return Ok(());
        }
        let mut placement = self.placement(shard, scope);
        // The topic's partitions weigh twice, as they always have here: placement prefers
        // shards that hold none of this topic yet.
        for existing in &meta.partition_shards {
            if let Some(load) = placement
                .loads
                .get_mut(usize::from(*existing) % shard.shard_count)
            {
                *load += 1;
            }
        }
        place_partitions(&mut placement, &mut meta, partition_count);
        if let Some(factor) = meta.partition_replicas.first().map(Vec::len) {
            place_replicas(&next, &mut meta, u16::try_from(factor).unwrap_or(1));
        }
        next.topics.insert(name.to_string(), meta);
        self.commit(shard, scope, &base, next).await?;
        info!(topic = %name, partitions = partition_count, "partitions created");
        Ok(())
    }

    /// Applies config changes to a topic, validates the result, persists and broadcasts it:
    /// every shard's logs run with the new configs when this returns.
    async fn alter_topic_configs(
        &self,
        shard: &Rc<Shard>,
        scope: &Scope,
        name: &str,
        changes: Vec<ConfigChange>,
        replace_all: bool,
        validate_only: bool,
    ) -> Result<(), KernelError> {
        let base = self.base(scope);
        let mut next = base.clone();
        let topic = next
            .topics
            .get_mut(name)
            .ok_or(KernelError::UnknownTopicOrPartition)?;
        let mut configs = if replace_all {
            Default::default()
        } else {
            topic.configs.clone()
        };
        for change in changes {
            match change {
                ConfigChange::Set { name, value } => {
                    configs.insert(name, value);
                }
                ConfigChange::Delete { name } => {
                    topic_config::validate(&[(name.clone(), None)])?;
                    configs.remove(&name);
                }
            }
        }
        let requested: Vec<(String, Option<String>)> =
            configs.into_iter().map(|(k, v)| (k, Some(v))).collect();
        let validated = topic_config::validate(&requested)?;
        if topic.is_replicated() {
            topic_config::check_replicable(&validated)?;
        }
        if validate_only || validated == topic.configs {
            return Ok(());
        }
        topic.configs = validated;
        self.commit(shard, scope, &base, next).await?;
        info!(topic = %name, "topic configs altered");
        Ok(())
    }

    /// Raises the log start offsets kept in the metadata (never lowers them).
    async fn delete_records(
        &self,
        shard: &Rc<Shard>,
        scope: &Scope,
        partitions: Vec<(TopicPartition, i64)>,
    ) -> Vec<Result<i64, KernelError>> {
        let base = self.base(scope);
        let mut next = base.clone();
        let results: Vec<Result<i64, KernelError>> = partitions
            .iter()
            .map(|(partition, offset)| {
                let topic = next
                    .topics
                    .get_mut(&partition.topic)
                    .ok_or(KernelError::UnknownTopicOrPartition)?;
                let index = usize::try_from(partition.partition)
                    .ok()
                    .filter(|i| *i < topic.partition_shards.len())
                    .ok_or(KernelError::UnknownTopicOrPartition)?;
                if topic.log_start_offsets.len() <= index {
                    topic.log_start_offsets.resize(index + 1, 0);
                }
                let start = topic.log_start_offsets[index].max(*offset);
                topic.log_start_offsets[index] = start;
                Ok(start)
            })
            .collect();
        if results.iter().any(Result::is_ok) {
            if let Err(e) = self.commit(shard, scope, &base, next).await {
                return results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
            }
            info!(partitions = partitions.len(), "records deleted");
        }
        results
    }

    fn init_producer_id(&self, shard: &Rc<Shard>) -> Result<(i64, i16), KernelError> {
        let id = self.next_producer_id.get();
        let reserved_until = self.state.borrow().producer_id_reserved_until;
        if id >= reserved_until {
            let mut next = self.state.borrow().clone();
            next.producer_id_reserved_until = id + PRODUCER_ID_BLOCK_SIZE;
            metadata::store(&shard.config.data_dir, &next)
                .map_err(|e| KernelError::Storage(format!("cannot persist metadata: {e:#}")))?;
            *self.state.borrow_mut() = next;
        }
        self.next_producer_id.set(id + 1);
        // In a cluster every node hands out ids from its own range (the node id in the high
        // bits), so no two nodes give the same id without asking each other.
        if self.cluster.borrow().is_some() {
            let node = i64::from(shard.config.node_id) << PRODUCER_ID_NODE_SHIFT;
            return Ok((node | id, 0));
        }
        Ok((id, 0))
    }

    /// Persists the new node metadata as a new version and waits until every shard has
    /// applied it. In a cluster, a local update keeps the replicated topics and brokers as
    /// they are now and a replicated one keeps the `__` topics (and producer ids), so neither
    /// loses what the other merged meanwhile.
    async fn commit_local(&self, shard: &Rc<Shard>, update: Update) -> Result<(), KernelError> {
        let _guard = self.commit_lock.acquire_permit(1).await;
        let current = self.state.borrow().clone();
        let clustered = self.cluster.borrow().is_some();
        let mut next = match update {
            Update::Local(mut next) => {
                if clustered {
                    next.topics.retain(|name, _| is_node_local_topic(name));
                    next.topics.extend(
                        current
                            .topics
                            .iter()
                            .filter(|(name, _)| !is_node_local_topic(name))
                            .map(|(name, topic)| (name.clone(), topic.clone())),
                    );
                    next.brokers = current.brokers.clone();
                    next.controller_applied_index = current.controller_applied_index;
                    next.cluster_id = current.cluster_id.clone();
                }
                next
            }
            Update::Replicated {
                cluster_id,
                topics,
                brokers,
                index,
            } => {
                if index <= current.controller_applied_index {
                    return Ok(());
                }
                let mut next = current.clone();
                next.topics.retain(|name, _| is_node_local_topic(name));
                next.topics.extend(
                    topics
                        .into_iter()
                        .filter(|(name, _)| !is_node_local_topic(name)),
                );
                next.brokers = brokers;
                next.controller_applied_index = index;
                if !cluster_id.is_empty() {
                    next.cluster_id = cluster_id;
                }
                next
            }
        };
        next.version = current.version + 1;
        metadata::store(&shard.config.data_dir, &next)
            .map_err(|e| KernelError::Storage(format!("cannot persist metadata: {e:#}")))?;
        let snapshot = Arc::new(next.clone());
        *self.state.borrow_mut() = next;
        broadcast(shard, snapshot).await;
        Ok(())
    }
}

/// Per-shard partition counts of this node and the node new partitions are recorded on.
struct Placement {
    loads: Vec<usize>,
    /// `None` on a single node (partitions record no node).
    node: Option<i32>,
}

/// Adds partitions up to `count`, each on the currently least-loaded shard (and, in a
/// cluster, recorded as led by this node). The loads already count every existing partition
/// of this node, including the topic's own.
fn place_partitions(placement: &mut Placement, meta: &mut TopicMeta, count: i32) {
    let loads = &mut placement.loads;
    if loads.is_empty() {
        loads.push(0);
    }
    while meta.partition_shards.len() < usize::try_from(count).unwrap_or(0) {
        let (least, _) = loads
            .iter()
            .enumerate()
            .min_by_key(|(_, load)| **load)
            .unwrap_or((0, &0));
        loads[least] += 1;
        meta.partition_shards
            .push(u16::try_from(least).unwrap_or(0));
        if let Some(node) = placement.node {
            meta.partition_nodes
                .resize(meta.partition_shards.len() - 1, node);
            meta.partition_nodes.push(node);
        }
    }
}

/// The replication factor a CreateTopics spec asks for (-1: the default, 1).
fn replication_factor(spec: &TopicSpec) -> i16 {
    if spec.replication_factor == -1 {
        1
    } else {
        spec.replication_factor
    }
}

/// Gives every partition of `meta` without replicas `factor` replicas on distinct registered
/// brokers: the brokers holding the fewest replicas (of every topic) first, ties by node id;
/// within a partition the node leading the fewest partitions goes first (the preferred
/// leader). Replicated partitions live on shard 0 of each replica (the shard that runs the
/// node's RPC server), and `partition_nodes` records the preferred leader.
fn place_replicas(metadata: &ClusterMetadata, meta: &mut TopicMeta, factor: u16) {
    let mut replica_loads: BTreeMap<i32, usize> =
        metadata.brokers.keys().map(|node| (*node, 0)).collect();
    let mut leader_loads = replica_loads.clone();
    for topic in metadata.topics.values() {
        for replicas in &topic.partition_replicas {
            for node in replicas {
                *replica_loads.entry(*node).or_default() += 1;
            }
            if let Some(first) = replicas.first() {
                *leader_loads.entry(*first).or_default() += 1;
            }
        }
        if topic.partition_replicas.is_empty() {
            for node in &topic.partition_nodes {
                *replica_loads.entry(*node).or_default() += 1;
                *leader_loads.entry(*node).or_default() += 1;
            }
        }
    }
    for node in meta.partition_replicas.iter().flatten() {
        *replica_loads.entry(*node).or_default() += 1;
    }
    let count = meta.partition_shards.len();
    while meta.partition_replicas.len() < count {
        let mut candidates: Vec<(usize, i32)> = replica_loads
            .iter()
            .map(|(node, load)| (*load, *node))
            .collect();
        candidates.sort_unstable();
        let mut chosen: Vec<i32> = candidates
            .iter()
            .take(usize::from(factor))
            .map(|(_, node)| *node)
            .collect();
        chosen.sort_by_key(|node| (leader_loads.get(node).copied().unwrap_or(0), *node));
        for node in &chosen {
            *replica_loads.entry(*node).or_default() += 1;
        }
        if let Some(first) = chosen.first() {
            *leader_loads.entry(*first).or_default() += 1;
        }
        let partition = meta.partition_replicas.len();
        let preferred = chosen.first().copied().unwrap_or(0);
        if let Some(shard) = meta.partition_shards.get_mut(partition) {
            *shard = 0;
        }
        if meta.partition_nodes.len() <= partition {
            meta.partition_nodes.resize(partition + 1, preferred);
        }
        meta.partition_nodes[partition] = preferred;
        meta.partition_replicas.push(chosen);
    }
}

/// Sends the snapshot to every other shard, applies it here, and waits for all.
async fn broadcast(shard: &Rc<Shard>, snapshot: Arc<ClusterMetadata>) {
    let mut replies = Vec::with_capacity(shard.shard_count);
    for peer in 0..shard.shard_count {
        let peer = ShardId(u16::try_from(peer).unwrap_or(u16::MAX));
        if peer == shard.id {
            continue;
        }
        let (reply, receiver) = flume::bounded(1);
        let op = ShardOp::ApplyMetadata {
            metadata: snapshot.clone(),
            reply,
        };
        if shard.send(peer, op).await.is_ok() {
            replies.push(receiver);
        }
    }
    shard.apply_metadata(snapshot).await;
    for receiver in replies {
        let _ = receiver.recv_async().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.eu-west_1").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn partitions_go_to_the_least_loaded_shard() {
        let mut metadata = ClusterMetadata::default();
        metadata.topics.insert(
            "a".to_string(),
            TopicMeta {
                id: [1; 16],
                partition_shards: vec![0, 0, 1],
                configs: Default::default(),
                leader_epoch: 0,
                log_start_offsets: Vec::new(),
                partition_nodes: Vec::new(),
                partition_replicas: Vec::new(),
            },
        );
        let mut meta = TopicMeta {
            id: [2; 16],
            partition_shards: Vec::new(),
            configs: Default::default(),
            leader_epoch: 0,
            log_start_offsets: Vec::new(),
            partition_nodes: Vec::new(),
            partition_replicas: Vec::new(),
        };
        let mut placement = Placement {
            loads: metadata.shard_loads(0, 3),
            node: None,
        };
        place_partitions(&mut placement, &mut meta, 5);
        // Loads start at [2, 1, 0]: shard 2 first, then the ties in order.
        assert_eq!(meta.partition_shards, vec![2, 1, 2, 0, 1]);
        assert!(meta.partition_nodes.is_empty());
        let mut placement = Placement {
            loads: vec![0, 0],
            node: Some(4),
        };
        place_partitions(&mut placement, &mut meta, 7);
        assert_eq!(meta.partition_shards, vec![2, 1, 2, 0, 1, 0, 1]);
        // Partitions added in a cluster record their node; older ones are this node's too.
        assert_eq!(meta.partition_nodes, vec![4; 7]);
    }

    #[test]
    fn replicas_spread_over_the_least_loaded_brokers_with_leaders_rotating() {
        let mut metadata = ClusterMetadata::default();
        for node in 1..=4 {
            metadata.brokers.insert(
                node,
                BrokerMeta {
                    node_id: node,
                    host: "127.0.0.1".to_string(),
                    port: 9000 + node,
                    rpc_addr: format!("127.0.0.1:{}", 7000 + node),
                },
            );
        }
        let mut meta = TopicMeta {
            id: [3; 16],
            partition_shards: vec![2, 1, 0, 1],
            configs: Default::default(),
            leader_epoch: 0,
            log_start_offsets: Vec::new(),
            partition_nodes: vec![1; 4],
            partition_replicas: Vec::new(),
        };
        place_replicas(&metadata, &mut meta, 3);
        assert_eq!(meta.partition_replicas.len(), 4);
        let mut replica_counts = BTreeMap::new();
        let mut leaders = BTreeSet::new();
        for replicas in &meta.partition_replicas {
            let distinct: BTreeSet<i32> = replicas.iter().copied().collect();
            assert_eq!(distinct.len(), 3, "three distinct nodes: {replicas:?}");
            for node in replicas {
                *replica_counts.entry(*node).or_insert(0) += 1;
            }
            leaders.insert(replicas[0]);
        }
        // 12 replicas over 4 brokers: 3 each; the 4 preferred leaders are 4 different nodes.
        assert_eq!(
            replica_counts.values().copied().collect::<Vec<_>>(),
            vec![3; 4]
        );
        assert_eq!(leaders.len(), 4);
        assert_eq!(
            meta.partition_shards,
            vec![0; 4],
            "replicated partitions live on shard 0"
        );
        let preferred: Vec<i32> = meta.partition_replicas.iter().map(|r| r[0]).collect();
        assert_eq!(meta.partition_nodes, preferred);
    }
}
