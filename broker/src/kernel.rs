//! `ShardKernel`: the protocols' `Kernel` over the shards. Each request is split by owning
//! shard, so a request costs one mesh hop per shard it touches, never one per record: work for
//! this shard runs in place, work for others travels as one `ShardOp` per shard. Record
//! batches are validated (CRC32C, size) here, on the connection's shard, which spreads that
//! work over the cores that accept connections.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use rmq_protocols::kernel::{
    Acks, AppendedRange, ConfigEntry, Kernel, KernelError, NodeInfo, ProduceInput, ReadInput,
    ReadOutput, TopicInfo, TopicPartition, TopicSpec,
};
use rmq_storage::validate_batches;

use crate::budget::RequestPermit;
use crate::controller::{topic_info, ControllerReply, ControllerRequest};
use crate::shard::{
    await_appends, batch_error, ProduceItem, ProduceResult, Shard, ShardId, ShardOp,
};
use crate::topic_config;

const CONTROLLER_SHARD: ShardId = ShardId(0);

#[derive(Clone)]
pub struct ShardKernel {
    shard: Rc<Shard>,
}

impl ShardKernel {
    pub fn new(shard: Rc<Shard>) -> ShardKernel {
        ShardKernel { shard }
    }

    async fn controller(&self, request: ControllerRequest) -> Result<ControllerReply, KernelError> {
        if self.shard.id == CONTROLLER_SHARD {
            let controller = self
                .shard
                .controller
                .as_ref()
                .ok_or(KernelError::ShuttingDown)?;
            return Ok(controller.handle(&self.shard, request).await);
        }
        let (reply, receiver) = flume::bounded(1);
        self.shard
            .send(CONTROLLER_SHARD, ShardOp::Controller { request, reply })
            .await?;
        receiver
            .recv_async()
            .await
            .map_err(|_| KernelError::ShuttingDown)
    }

    /// Checks one produce input and finds its owner.
    fn prepare(&self, input: ProduceInput) -> Result<(ShardId, ProduceItem), KernelError> {
        let owner = self
            .shard
            .owner_of(&input.partition)
            .ok_or(KernelError::UnknownTopicOrPartition)?;
        let metadata = self.shard.metadata();
        let configs = metadata
            .topics
            .get(&input.partition.topic)
            .map(|t| &t.configs)
            .ok_or(KernelError::UnknownTopicOrPartition)?;
        let max_bytes = topic_config::log_config(configs).max_message_bytes;
        let headers = validate_batches(&input.records, max_bytes).map_err(batch_error)?;
        Ok((
            owner,
            ProduceItem {
                partition: input.partition,
                records: input.records,
                headers,
            },
        ))
    }
}

fn unexpected_reply() -> KernelError {
    KernelError::InvalidRequest("controller answered a different request".to_string())
}

/// Splits `items` by owning shard, keeping each item's index in the request.
fn group_by_shard<T>(items: Vec<(usize, ShardId, T)>) -> BTreeMap<ShardId, Vec<(usize, T)>> {
    let mut groups: BTreeMap<ShardId, Vec<(usize, T)>> = BTreeMap::new();
    for (index, shard, item) in items {
        groups.entry(shard).or_default().push((index, item));
    }
    groups
}

impl Kernel for ShardKernel {
    type RequestPermit = RequestPermit;

    fn node(&self) -> NodeInfo {
        self.shard.node()
    }

    fn cluster_id(&self) -> String {
        self.shard.metadata().cluster_id.clone()
    }

    fn auto_create_topics(&self) -> bool {
        self.shard.config.auto_create_topics_enable
    }

    fn max_request_bytes(&self) -> usize {
        self.shard.config.socket_request_max_bytes
    }

    fn accepting_requests(&self) -> bool {
        !self.shard.is_stopping()
    }

    async fn reserve_request_bytes(&self, size_bytes: usize) -> RequestPermit {
        self.shard.budget.reserve(size_bytes).await
    }

    fn topics(&self) -> Vec<TopicInfo> {
        let metadata = self.shard.metadata();
        metadata
            .topics
            .iter()
            .map(|(name, meta)| topic_info(name, meta))
            .collect()
    }

    fn topic(&self, name: &str) -> Option<TopicInfo> {
        let metadata = self.shard.metadata();
        metadata.topics.get(name).map(|meta| topic_info(name, meta))
    }

    async fn create_topics(
        &self,
        specs: Vec<TopicSpec>,
        validate_only: bool,
    ) -> Vec<Result<TopicInfo, KernelError>> {
        let count = specs.len();
        match self
            .controller(ControllerRequest::CreateTopics {
                specs,
                validate_only,
            })
            .await
        {
            Ok(ControllerReply::CreateTopics(results)) => results,
            Ok(_) => vec![Err(unexpected_reply()); count],
            Err(e) => vec![Err(e); count],
        }
    }

    async fn delete_topics(&self, names: Vec<String>) -> Vec<Result<(), KernelError>> {
        let count = names.len();
        match self
            .controller(ControllerRequest::DeleteTopics { names })
            .await
        {
            Ok(ControllerReply::DeleteTopics(results)) => results,
            Ok(_) => vec![Err(unexpected_reply()); count],
            Err(e) => vec![Err(e); count],
        }
    }

    async fn create_partitions(
        &self,
        name: String,
        partition_count: i32,
        validate_only: bool,
    ) -> Result<(), KernelError> {
        let request = ControllerRequest::CreatePartitions {
            name,
            partition_count,
            validate_only,
        };
        match self.controller(request).await? {
            ControllerReply::CreatePartitions(result) => result,
            _ => Err(unexpected_reply()),
        }
    }

    fn describe_topic_configs(&self, name: &str) -> Result<Vec<ConfigEntry>, KernelError> {
        let metadata = self.shard.metadata();
        let topic = metadata
            .topics
            .get(name)
            .ok_or(KernelError::UnknownTopicOrPartition)?;
        Ok(topic_config::describe(&topic.configs))
    }

    fn describe_broker_configs(&self) -> Vec<ConfigEntry> {
        let config = &self.shard.config;
        let entry = |name: &str, value: String| ConfigEntry {
            name: name.to_string(),
            value: Some(value),
            is_default: false,
            read_only: true,
        };
        vec![
            entry("broker.id", config.node_id.to_string()),
            entry(
                "auto.create.topics.enable",
                config.auto_create_topics_enable.to_string(),
            ),
            entry("num.partitions", config.num_partitions.to_string()),
            entry(
                "socket.request.max.bytes",
                config.socket_request_max_bytes.to_string(),
            ),
            entry("log.dirs", config.data_dir.display().to_string()),
        ]
    }

    async fn produce(
        &self,
        acks: Acks,
        timeout_ms: u32,
        inputs: Vec<ProduceInput>,
    ) -> Vec<Result<AppendedRange, KernelError>> {
        let mut results: Vec<ProduceResult> = vec![Err(KernelError::ShuttingDown); inputs.len()];
        let mut routed = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.into_iter().enumerate() {
            match self.prepare(input) {
                Ok((owner, item)) => routed.push((index, owner, item)),
                Err(e) => results[index] = Err(e),
            }
        }
        let mut remote = Vec::new();
        let mut local = None;
        for (owner, group) in group_by_shard(routed) {
            let (indexes, items): (Vec<usize>, Vec<ProduceItem>) = group.into_iter().unzip();
            if owner == self.shard.id {
                local = Some((indexes, self.shard.append_local(items)));
                continue;
            }
            let (reply, receiver) = flume::bounded(1);
            let op = ShardOp::Produce {
                acks,
                timeout_ms,
                items,
                reply,
            };
            match self.shard.send(owner, op).await {
                Ok(()) => remote.push((indexes, receiver)),
                Err(e) => indexes.iter().for_each(|i| results[*i] = Err(e.clone())),
            }
        }
        if let Some((indexes, appended)) = local {
            let outputs = await_appends(acks, timeout_ms, appended).await;
            for (index, output) in indexes.into_iter().zip(outputs) {
                results[index] = output;
            }
        }
        for (indexes, receiver) in remote {
            let outputs = receiver.recv_async().await.unwrap_or_default();
            for (position, index) in indexes.into_iter().enumerate() {
                results[index] = outputs
                    .get(position)
                    .cloned()
                    .unwrap_or(Err(KernelError::ShuttingDown));
            }
        }
        results
    }

    async fn read(&self, inputs: Vec<ReadInput>) -> Vec<ReadOutput> {
        let unknown = || ReadOutput {
            records: Err(KernelError::UnknownTopicOrPartition),
            high_watermark: -1,
            log_start_offset: -1,
        };
        let mut outputs: Vec<ReadOutput> = (0..inputs.len()).map(|_| unknown()).collect();
        let routed = inputs
            .into_iter()
            .enumerate()
            .filter_map(|(index, input)| {
                self.shard
                    .owner_of(&input.partition)
                    .map(|owner| (index, owner, input))
            })
            .collect();
        let mut remote = Vec::new();
        let mut local = None;
        for (owner, group) in group_by_shard(routed) {
            let (indexes, items): (Vec<usize>, Vec<ReadInput>) = group.into_iter().unzip();
            if owner == self.shard.id {
                local = Some((indexes, items));
                continue;
            }
            let (reply, receiver) = flume::bounded(1);
            if self
                .shard
                .send(owner, ShardOp::Read { items, reply })
                .await
                .is_ok()
            {
                remote.push((indexes, receiver));
            }
        }
        if let Some((indexes, items)) = local {
            let read = self.shard.read_local(items).await;
            for (index, output) in indexes.into_iter().zip(read) {
                outputs[index] = output;
            }
        }
        for (indexes, receiver) in remote {
            let read = receiver.recv_async().await.unwrap_or_default();
            for (index, output) in indexes.into_iter().zip(read) {
                outputs[index] = output;
            }
        }
        outputs
    }

    async fn wait_for_data(&self, positions: Vec<(TopicPartition, i64)>, timeout_ms: u32) {
        // Every shard involved signals one shared channel; the first signal (or the timeout)
        // ends the wait. Waiters left on other shards end by their own timeout.
        let (reply, receiver) = flume::bounded(1);
        let routed = positions
            .into_iter()
            .enumerate()
            .filter_map(|(index, (partition, offset))| {
                self.shard
                    .owner_of(&partition)
                    .map(|owner| (index, owner, (partition, offset)))
            })
            .collect();
        for (owner, group) in group_by_shard(routed) {
            let positions: Vec<(TopicPartition, i64)> = group.into_iter().map(|(_, p)| p).collect();
            if owner == self.shard.id {
                self.shard.wait_local(positions, timeout_ms, reply.clone());
                continue;
            }
            let op = ShardOp::WaitForData {
                positions,
                timeout_ms,
                reply: reply.clone(),
            };
            let _ = self.shard.send(owner, op).await;
        }
        drop(reply);
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let stopped = self.shard.stopped();
        let wait = future::or(
            async {
                if receiver.recv_async().await.is_err() {
                    // Nobody is waiting (no known partition): wait out the timeout instead of
                    // letting the caller poll in a loop.
                    glommio::timer::sleep(timeout).await;
                }
            },
            glommio::timer::sleep(timeout),
        );
        future::or(wait, stopped).await;
    }

    async fn list_offset(
        &self,
        partition: TopicPartition,
        timestamp: i64,
    ) -> Result<(i64, i64), KernelError> {
        let owner = self
            .shard
            .owner_of(&partition)
            .ok_or(KernelError::UnknownTopicOrPartition)?;
        if owner == self.shard.id {
            return self.shard.list_offset_local(&partition, timestamp).await;
        }
        let (reply, receiver) = flume::bounded(1);
        let op = ShardOp::ListOffset {
            partition,
            timestamp,
            reply,
        };
        self.shard.send(owner, op).await?;
        receiver
            .recv_async()
            .await
            .map_err(|_| KernelError::ShuttingDown)?
    }

    async fn init_producer_id(&self) -> Result<(i64, i16), KernelError> {
        match self.controller(ControllerRequest::InitProducerId).await? {
            ControllerReply::InitProducerId(result) => result,
            _ => Err(unexpected_reply()),
        }
    }
}
