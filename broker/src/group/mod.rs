//! The group coordinator of one shard: the consumer groups whose `__consumer_offsets`
//! partition this shard owns (Kafka's `abs(hash(group)) % partitions`), their membership state
//! machines (`state`) and their committed offsets, stored as records of that partition
//! (`offsets_log`) and read back into memory the first time the partition is used after a
//! start.
//!
//! Concurrency contract: every group request arrives here (through `Shard::send` from the
//! connection's shard, or in place), and only this shard changes these groups: single writer.
//! The groups map is borrowed only between awaits. Loading a partition holds `load_lock`, so no
//! request sees a half-loaded partition. Offset commits are appended synchronously (so the log
//! order is the order they were accepted) and answered once durable.

pub mod offsets_log;
pub mod state;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;

use glommio::sync::Semaphore;
use rmq_protocols::kernel::{
    Acks, CommitOffsetsInput, CommittedOffset, GroupDescription, GroupItemResults, GroupListing,
    JoinGroupInput, JoinGroupOutput, KernelError, LeavingMember, MemberGeneration, SyncGroupInput,
    SyncGroupOutput, TopicPartition,
};
use rmq_storage::{validate_batches, validate_stored_batches, Offset};
use tracing::{info, warn};

use crate::constants::{GROUPS_PER_SHARD_MAX, OFFSETS_LOAD_READ_BYTES, OFFSET_METADATA_MAX_BYTES};
use crate::shard::{await_appends, now_ms, ProduceItem, Shard};
use offsets_log::{decode_batches, encode_batch, OffsetRecord};
use state::{Group, GroupConfig, JoinReply, SyncReply};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

type Reply<T> = flume::Sender<T>;
pub type FetchedOffsets = Result<Vec<(TopicPartition, Option<CommittedOffset>)>, KernelError>;

/// A group operation for the coordinator shard, with where its answer goes.
pub enum GroupRequest {
    Join(JoinGroupInput, JoinReply),
    Sync(SyncGroupInput, SyncReply),
    Heartbeat(MemberGeneration, Reply<Result<(), KernelError>>),
    Leave {
        group_id: String,
        members: Vec<LeavingMember>,
        reply: Reply<GroupItemResults>,
    },
    Commit(CommitOffsetsInput, Reply<GroupItemResults>),
    Fetch {
        group_id: String,
        partitions: Option<Vec<TopicPartition>>,
        reply: Reply<FetchedOffsets>,
    },
    Describe {
        group_id: String,
        reply: Reply<Result<GroupDescription, KernelError>>,
    },
    Delete {
        group_id: String,
        reply: Reply<Result<(), KernelError>>,
    },
    DeleteOffsets {
        group_id: String,
        partitions: Vec<TopicPartition>,
        reply: Reply<GroupItemResults>,
    },
    /// Every group of this shard.
    List(Reply<Vec<GroupListing>>),
}

impl GroupRequest {
    /// The group this request is about; `None` for shard-wide requests.
    pub fn group_id(&self) -> Option<&str> {
        match self {
            GroupRequest::Join(input, _) => Some(&input.group_id),
            GroupRequest::Sync(input, _) => Some(&input.member.group_id),
            GroupRequest::Heartbeat(member, _) => Some(&member.group_id),
            GroupRequest::Commit(input, _) => Some(&input.member.group_id),
            GroupRequest::Leave { group_id, .. }
            | GroupRequest::Fetch { group_id, .. }
            | GroupRequest::Describe { group_id, .. }
            | GroupRequest::Delete { group_id, .. }
            | GroupRequest::DeleteOffsets { group_id, .. } => Some(group_id),
            GroupRequest::List(_) => None,
        }
    }
}

pub struct GroupCoordinator {
    config: GroupConfig,
    groups: RefCell<BTreeMap<String, Group>>,
    /// `__consumer_offsets` partitions whose records are in `groups`.
    loaded: RefCell<BTreeSet<i32>>,
    load_lock: Semaphore,
}

fn storage_failure(e: impl std::fmt::Display) -> KernelError {
    KernelError::Storage(e.to_string())
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig) -> GroupCoordinator {
        GroupCoordinator {
            config,
            groups: RefCell::new(BTreeMap::new()),
            loaded: RefCell::new(BTreeSet::new()),
            load_lock: Semaphore::new(1),
        }
    }

    /// Serves one request; answers go to the reply channel it carries (JoinGroup and SyncGroup
    /// answers may be held until the rebalance gets there).
    pub async fn handle(&self, shard: &Rc<Shard>, request: GroupRequest) {
        if let Some(group_id) = request.group_id() {
            if let Err(e) = self.prepare(shard, group_id).await {
                fail(request, e);
                return;
            }
        }
        let now = monotonic_ms();
        match request {
            GroupRequest::Join(input, reply) => {
                let mut groups = self.groups.borrow_mut();
                if !groups.contains_key(&input.group_id) && groups.len() >= GROUPS_PER_SHARD_MAX {
                    drop(groups);
                    fail(GroupRequest::Join(input, reply), too_many_groups());
                    return;
                }
                let group = groups
                    .entry(input.group_id.clone())
                    .or_insert_with(|| Group::new(input.group_id.clone()));
                group.join(input, reply, now, &self.config);
            }
            GroupRequest::Sync(input, reply) => {
                match self.groups.borrow_mut().get_mut(&input.member.group_id) {
                    Some(group) => group.sync(input, reply, now),
                    None => fail(
                        GroupRequest::Sync(input, reply),
                        KernelError::UnknownMemberId,
                    ),
                }
            }
            GroupRequest::Heartbeat(member, reply) => {
                let result = match self.groups.borrow_mut().get_mut(&member.group_id) {
                    Some(group) => group.heartbeat(&member, now),
                    None => Err(KernelError::UnknownMemberId),
                };
                let _ = reply.try_send(result);
            }
            GroupRequest::Leave {
                group_id,
                members,
                reply,
            } => {
                let result = match self.groups.borrow_mut().get_mut(&group_id) {
                    Some(group) => Ok(group.leave(&members, now)),
                    None => Err(KernelError::UnknownMemberId),
                };
                let _ = reply.try_send(result);
            }
            GroupRequest::Commit(input, reply) => {
                let result = self.commit(shard, input).await;
                let _ = reply.try_send(result);
            }
            GroupRequest::Fetch {
                group_id,
                partitions,
                reply,
            } => {
                let _ = reply.try_send(Ok(self.fetch(&group_id, partitions)));
            }
            GroupRequest::Describe { group_id, reply } => {
                let result = self
                    .groups
                    .borrow()
                    .get(&group_id)
                    .map(Group::describe)
                    .ok_or(KernelError::GroupIdNotFound);
                let _ = reply.try_send(result);
            }
            GroupRequest::Delete { group_id, reply } => {
                let result = self.delete_group(shard, &group_id).await;
                let _ = reply.try_send(result);
            }
            GroupRequest::DeleteOffsets {
                group_id,
                partitions,
                reply,
            } => {
                let result = self.delete_offsets(shard, &group_id, partitions).await;
                let _ = reply.try_send(result);
            }
            GroupRequest::List(reply) => {
                let _ = reply.try_send(self.list(shard).await);
            }
        }
    }

    /// Checks that this shard coordinates `group_id` and that its partition is loaded.
    async fn prepare(&self, shard: &Rc<Shard>, group_id: &str) -> Result<(), KernelError> {
        let partition = coordinator_partition(shard, group_id)?;
        let owner = shard
            .owner_of(&offsets_partition(partition))
            .ok_or(KernelError::CoordinatorNotAvailable)?;
        assert_eq!(
            owner, shard.id,
            "group {group_id} routed to the wrong shard"
        );
        self.ensure_loaded(shard, partition).await
    }

    /// Reads a `__consumer_offsets` partition back into memory, once per start.
    async fn ensure_loaded(&self, shard: &Rc<Shard>, partition: i32) -> Result<(), KernelError> {
        if self.loaded.borrow().contains(&partition) {
            return Ok(());
        }
        let _permit = self
            .load_lock
            .acquire_permit(1)
            .await
            .map_err(|_| KernelError::ShuttingDown)?;
        if self.loaded.borrow().contains(&partition) {
            return Ok(());
        }
        let log = shard
            .logs
            .get(OFFSETS_TOPIC, partition)
            .ok_or(KernelError::CoordinatorNotAvailable)?;
        let mut offset = log.log_start_offset().0;
        let end = log.high_watermark().0;
        let (mut applied, mut skipped) = (0usize, 0usize);
        while offset < end {
            let stored = log
                .read(Offset(offset), OFFSETS_LOAD_READ_BYTES)
                .await
                .map_err(storage_failure)?;
            // Stored, maybe compacted: batches may hold fewer records than offsets.
            let headers = validate_stored_batches(&stored, usize::MAX).map_err(storage_failure)?;
            let Some(last) = headers.last() else {
                break;
            };
            offset = last.base_offset + i64::from(last.last_offset_delta) + 1;
            let (records, bad) = decode_batches(stored);
            skipped += bad;
            applied += records.len();
            let mut groups = self.groups.borrow_mut();
            for record in records {
                apply_record(&mut groups, record);
            }
        }
        if skipped > 0 {
            warn!(
                partition,
                skipped, "undecodable records in {OFFSETS_TOPIC} skipped"
            );
        }
        if applied > 0 {
            info!(partition, records = applied, "committed offsets loaded");
        }
        self.loaded.borrow_mut().insert(partition);
        Ok(())
    }

    /// Appends `records` to the group's partition now and resolves once they are durable.
    async fn persist(
        &self,
        shard: &Rc<Shard>,
        group_id: &str,
        records: Vec<OffsetRecord>,
    ) -> Result<(), KernelError> {
        let partition = coordinator_partition(shard, group_id)?;
        let batch = encode_batch(&records, now_ms()).map_err(storage_failure)?;
        let headers = validate_batches(&batch, usize::MAX)
            .map_err(|e| KernelError::CorruptMessage(e.to_string()))?;
        let item = ProduceItem {
            partition: offsets_partition(partition),
            records: batch.freeze(),
            headers,
        };
        let appended = shard.append_local(vec![item]);
        if appended.iter().all(Result::is_ok) {
            // In memory in append order, before the wait: the log and the map agree on which
            // commit is the latest.
            let mut groups = self.groups.borrow_mut();
            for record in records {
                apply_record(&mut groups, record);
            }
        }
        await_appends(Acks::All, 0, appended)
            .await
            .into_iter()
            .next()
            .unwrap_or(Err(KernelError::ShuttingDown))
            .map(|_| ())
    }

    async fn commit(&self, shard: &Rc<Shard>, input: CommitOffsetsInput) -> GroupItemResults {
        let group_id = input.member.group_id.clone();
        {
            let mut groups = self.groups.borrow_mut();
            if !groups.contains_key(&group_id) {
                if input.member.generation_id >= 0 {
                    return Err(KernelError::UnknownMemberId);
                }
                if groups.len() >= GROUPS_PER_SHARD_MAX {
                    return Err(too_many_groups());
                }
                groups.insert(group_id.clone(), Group::new(group_id.clone()));
            }
            if let Some(group) = groups.get(&group_id) {
                group.check_commit(&input.member)?;
            }
        }
        let mut results = Vec::with_capacity(input.offsets.len());
        let mut records = Vec::new();
        for (partition, committed) in input.offsets {
            let size_bytes = committed.metadata.as_ref().map_or(0, String::len);
            let result = if size_bytes > OFFSET_METADATA_MAX_BYTES {
                Err(KernelError::OffsetMetadataTooLarge {
                    size_bytes,
                    max_bytes: OFFSET_METADATA_MAX_BYTES,
                })
            } else if !shard.partition_exists(&partition) {
                // In a cluster the partition may live on another node: a group coordinated
                // here still commits offsets for it.
                Err(KernelError::UnknownTopicOrPartition)
            } else {
                records.push(OffsetRecord {
                    group_id: group_id.clone(),
                    partition,
                    committed: Some(committed),
                });
                Ok(())
            };
            results.push(result);
        }
        if records.is_empty() {
            return Ok(results);
        }
        let persisted = self.persist(shard, &group_id, records).await;
        Ok(results
            .into_iter()
            .map(|r| r.and_then(|()| persisted.clone()))
            .collect())
    }

    fn fetch(
        &self,
        group_id: &str,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Vec<(TopicPartition, Option<CommittedOffset>)> {
        let groups = self.groups.borrow();
        let offsets = groups.get(group_id).map(|g| &g.offsets);
        match partitions {
            None => offsets
                .map(|o| {
                    o.iter()
                        .map(|(p, c)| (p.clone(), Some(c.clone())))
                        .collect()
                })
                .unwrap_or_default(),
            Some(partitions) => partitions
                .into_iter()
                .map(|p| {
                    let committed = offsets.and_then(|o| o.get(&p).cloned());
                    (p, committed)
                })
                .collect(),
        }
    }

    async fn delete_group(&self, shard: &Rc<Shard>, group_id: &str) -> Result<(), KernelError> {
        let tombstones: Vec<OffsetRecord> = {
            let groups = self.groups.borrow();
            let group = groups.get(group_id).ok_or(KernelError::GroupIdNotFound)?;
            if group.has_members() {
                return Err(KernelError::NonEmptyGroup);
            }
            group
                .offsets
                .keys()
                .map(|partition| OffsetRecord {
                    group_id: group_id.to_string(),
                    partition: partition.clone(),
                    committed: None,
                })
                .collect()
        };
        if !tombstones.is_empty() {
            self.persist(shard, group_id, tombstones).await?;
        }
        let mut groups = self.groups.borrow_mut();
        if groups.get(group_id).is_some_and(|g| !g.has_members()) {
            groups.remove(group_id);
        }
        info!(group = %group_id, "group deleted");
        Ok(())
    }

    async fn delete_offsets(
        &self,
        shard: &Rc<Shard>,
        group_id: &str,
        partitions: Vec<TopicPartition>,
    ) -> GroupItemResults {
        let mut results = Vec::with_capacity(partitions.len());
        let mut tombstones = Vec::new();
        {
            let groups = self.groups.borrow();
            let group = groups.get(group_id).ok_or(KernelError::GroupIdNotFound)?;
            for partition in partitions {
                if group.is_subscribed_to(&partition.topic) {
                    results.push(Err(KernelError::GroupSubscribedToTopic));
                    continue;
                }
                if group.offsets.contains_key(&partition) {
                    tombstones.push(OffsetRecord {
                        group_id: group_id.to_string(),
                        partition,
                        committed: None,
                    });
                }
                results.push(Ok(()));
            }
        }
        if tombstones.is_empty() {
            return Ok(results);
        }
        let persisted = self.persist(shard, group_id, tombstones).await;
        Ok(results
            .into_iter()
            .map(|r| r.and_then(|()| persisted.clone()))
            .collect())
    }

    async fn list(&self, shard: &Rc<Shard>) -> Vec<GroupListing> {
        let owned: Vec<i32> = (0..offsets_partition_count(shard))
            .filter(|p| shard.owner_of(&offsets_partition(*p)) == Some(shard.id))
            .collect();
        for partition in owned {
            if let Err(e) = self.ensure_loaded(shard, partition).await {
                warn!(partition, error = %e, "cannot load committed offsets");
            }
        }
        self.groups.borrow().values().map(Group::listing).collect()
    }

    /// Expires sessions, completes due rebalances and forgets groups with nothing left.
    /// `now` is `monotonic_ms()`: group timing must not follow wall-clock jumps.
    pub fn tick(&self, now: i64) {
        let mut groups = self.groups.borrow_mut();
        for group in groups.values_mut() {
            group.tick(now);
        }
        groups.retain(|_, group| !group.is_removable());
    }

    /// How many groups this shard coordinates (for metrics).
    pub fn group_count(&self) -> usize {
        self.groups.borrow().len()
    }
}

/// Milliseconds on a monotonic clock (since the first call in this process), for session and
/// rebalance deadlines.
pub fn monotonic_ms() -> i64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn apply_record(groups: &mut BTreeMap<String, Group>, record: OffsetRecord) {
    match record.committed {
        Some(committed) => {
            groups
                .entry(record.group_id.clone())
                .or_insert_with(|| Group::new(record.group_id))
                .offsets
                .insert(record.partition, committed);
        }
        None => {
            if let Some(group) = groups.get_mut(&record.group_id) {
                group.offsets.remove(&record.partition);
            }
        }
    }
}

fn too_many_groups() -> KernelError {
    KernelError::InvalidRequest(format!(
        "this shard already coordinates {GROUPS_PER_SHARD_MAX} groups"
    ))
}

/// Answers a request with `error`, whatever its kind.
fn fail(request: GroupRequest, error: KernelError) {
    match request {
        GroupRequest::Join(input, reply) => {
            let _ = reply.try_send(JoinGroupOutput {
                error: Some(error),
                generation_id: -1,
                member_id: input.member_id,
                ..Default::default()
            });
        }
        GroupRequest::Sync(_, reply) => {
            let _ = reply.try_send(SyncGroupOutput {
                error: Some(error),
                ..Default::default()
            });
        }
        GroupRequest::Heartbeat(_, reply) => {
            let _ = reply.try_send(Err(error));
        }
        GroupRequest::Leave { reply, .. }
        | GroupRequest::Commit(_, reply)
        | GroupRequest::DeleteOffsets { reply, .. } => {
            let _ = reply.try_send(Err(error));
        }
        GroupRequest::Fetch { reply, .. } => {
            let _ = reply.try_send(Err(error));
        }
        GroupRequest::Describe { reply, .. } => {
            let _ = reply.try_send(Err(error));
        }
        GroupRequest::Delete { reply, .. } => {
            let _ = reply.try_send(Err(error));
        }
        GroupRequest::List(reply) => {
            let _ = reply.try_send(Vec::new());
        }
    }
}

pub fn offsets_partition(partition: i32) -> TopicPartition {
    TopicPartition {
        topic: OFFSETS_TOPIC.to_string(),
        partition,
    }
}

/// Partitions of `__consumer_offsets` (0 while it does not exist).
pub fn offsets_partition_count(shard: &Shard) -> i32 {
    shard
        .metadata()
        .topics
        .get(OFFSETS_TOPIC)
        .map_or(0, |t| i32::try_from(t.partition_shards.len()).unwrap_or(0))
}

/// The `__consumer_offsets` partition of `group_id`.
pub fn coordinator_partition(shard: &Shard, group_id: &str) -> Result<i32, KernelError> {
    if group_id.is_empty() {
        return Err(KernelError::InvalidGroupId);
    }
    let count = offsets_partition_count(shard);
    if count == 0 {
        return Err(KernelError::CoordinatorNotAvailable);
    }
    Ok(offsets_log::partition_for(group_id, count))
}
