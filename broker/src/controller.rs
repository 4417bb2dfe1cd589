//! The controller: the single writer of cluster metadata, on shard 0. It validates topic
//! changes, places partitions on the least-loaded shard, persists the new metadata, then
//! broadcasts the snapshot to every shard and waits until each has applied it (so a topic is
//! usable on every shard when CreateTopics answers). Operations are serialized by a lock held
//! across those awaits; shards apply snapshots in version order.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use glommio::sync::Semaphore;
use rmq_protocols::kernel::{ConfigChange, KernelError, TopicInfo, TopicPartition, TopicSpec};
use tracing::info;

use crate::constants::{MAX_PARTITIONS_PER_TOPIC, PRODUCER_ID_BLOCK_SIZE, TOPIC_NAME_MAX_BYTES};
use crate::metadata::{self, ClusterMetadata, TopicMeta};
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
    next_producer_id: Cell<i64>,
    default_partitions: i32,
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
            next_producer_id: Cell::new(next_producer_id),
            default_partitions,
        }
    }

    pub async fn handle(&self, shard: &Rc<Shard>, request: ControllerRequest) -> ControllerReply {
        // Serializes metadata changes; fails only if the semaphore were closed (never).
        let _guard = self.lock.acquire_permit(1).await;
        match request {
            ControllerRequest::CreateTopics {
                specs,
                validate_only,
            } => {
                ControllerReply::CreateTopics(self.create_topics(shard, specs, validate_only).await)
            }
            ControllerRequest::DeleteTopics { names } => {
                ControllerReply::DeleteTopics(self.delete_topics(shard, names).await)
            }
            ControllerRequest::CreatePartitions {
                name,
                partition_count,
                validate_only,
            } => ControllerReply::CreatePartitions(
                self.create_partitions(shard, &name, partition_count, validate_only)
                    .await,
            ),
            ControllerRequest::InitProducerId => {
                ControllerReply::InitProducerId(self.init_producer_id(shard))
            }
            ControllerRequest::DeleteRecords { partitions } => {
                ControllerReply::DeleteRecords(self.delete_records(shard, partitions).await)
            }
            ControllerRequest::AlterTopicConfigs {
                name,
                changes,
                replace_all,
                validate_only,
            } => ControllerReply::AlterTopicConfigs(
                self.alter_topic_configs(shard, &name, changes, replace_all, validate_only)
                    .await,
            ),
        }
    }

    fn check_spec(
        &self,
        spec: &TopicSpec,
        next: &ClusterMetadata,
    ) -> Result<TopicMeta, KernelError> {
        validate_topic_name(&spec.name)?;
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
        if spec.replication_factor != -1 && spec.replication_factor != 1 {
            return Err(KernelError::InvalidReplicationFactor(format!(
                "replication factor {} is larger than the 1 available broker",
                spec.replication_factor
            )));
        }
        let configs = topic_config::validate(&spec.configs)?;
        Ok(TopicMeta {
            id: unique_id(next.version, next.topics.len() as u64),
            partition_shards: Vec::new(),
            configs,
            leader_epoch: 0,
            log_start_offsets: Vec::new(),
        })
    }

    async fn create_topics(
        &self,
        shard: &Rc<Shard>,
        specs: Vec<TopicSpec>,
        validate_only: bool,
    ) -> Vec<Result<TopicInfo, KernelError>> {
        let mut next = self.state.borrow().clone();
        let mut results = Vec::with_capacity(specs.len());
        for spec in &specs {
            let result = self.check_spec(spec, &next).map(|mut meta| {
                let count = if spec.partition_count == -1 {
                    self.default_partitions
                } else {
                    spec.partition_count
                };
                place_partitions(&next, &mut meta, count, shard.shard_count);
                let info = topic_info(&spec.name, &meta);
                next.topics.insert(spec.name.clone(), meta);
                info
            });
            results.push(result);
        }
        if validate_only || results.iter().all(Result::is_err) {
            return results;
        }
        if let Err(e) = self.commit(shard, next).await {
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
        names: Vec<String>,
    ) -> Vec<Result<(), KernelError>> {
        let mut next = self.state.borrow().clone();
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
            if let Err(e) = self.commit(shard, next).await {
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
        name: &str,
        partition_count: i32,
        validate_only: bool,
    ) -> Result<(), KernelError> {
        let mut next = self.state.borrow().clone();
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
        place_partitions(&next, &mut meta, partition_count, shard.shard_count);
        next.topics.insert(name.to_string(), meta);
        self.commit(shard, next).await?;
        info!(topic = %name, partitions = partition_count, "partitions created");
        Ok(())
    }

    /// Applies config changes to a topic, validates the result, persists and broadcasts it:
    /// every shard's logs run with the new configs when this returns.
    async fn alter_topic_configs(
        &self,
        shard: &Rc<Shard>,
        name: &str,
        changes: Vec<ConfigChange>,
        replace_all: bool,
        validate_only: bool,
    ) -> Result<(), KernelError> {
        let mut next = self.state.borrow().clone();
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
        if validate_only || validated == topic.configs {
            return Ok(());
        }
        topic.configs = validated;
        self.commit(shard, next).await?;
        info!(topic = %name, "topic configs altered");
        Ok(())
    }

    /// Raises the log start offsets kept in the metadata (never lowers them).
    async fn delete_records(
        &self,
        shard: &Rc<Shard>,
        partitions: Vec<(TopicPartition, i64)>,
    ) -> Vec<Result<i64, KernelError>> {
        let mut next = self.state.borrow().clone();
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
            if let Err(e) = self.commit(shard, next).await {
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
        Ok((id, 0))
    }

    /// Persists `next` as a new version and waits until every shard has applied it.
    async fn commit(
        &self,
        shard: &Rc<Shard>,
        mut next: ClusterMetadata,
    ) -> Result<(), KernelError> {
        next.version += 1;
        metadata::store(&shard.config.data_dir, &next)
            .map_err(|e| KernelError::Storage(format!("cannot persist metadata: {e:#}")))?;
        let snapshot = Arc::new(next.clone());
        *self.state.borrow_mut() = next;
        broadcast(shard, snapshot).await;
        Ok(())
    }
}

/// Adds partitions up to `count`, each on the currently least-loaded shard.
fn place_partitions(
    metadata: &ClusterMetadata,
    meta: &mut TopicMeta,
    count: i32,
    shard_count: usize,
) {
    let mut loads = metadata.shard_loads(shard_count);
    for shard in &meta.partition_shards {
        loads[usize::from(*shard) % shard_count] += 1;
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
            },
        );
        let mut meta = TopicMeta {
            id: [2; 16],
            partition_shards: Vec::new(),
            configs: Default::default(),
            leader_epoch: 0,
            log_start_offsets: Vec::new(),
        };
        place_partitions(&metadata, &mut meta, 5, 3);
        // Loads start at [2, 1, 0]: shard 2 first, then the ties in order.
        assert_eq!(meta.partition_shards, vec![2, 1, 2, 0, 1]);
    }
}
