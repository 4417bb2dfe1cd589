//! `rmq topic create|list|describe|alter|delete`.

use anyhow::{bail, Context};
use clap::Subcommand;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::client::{check, error_text, Client};

/// How long the broker may take to create or delete topics.
const TOPIC_TIMEOUT_MS: i32 = 30_000;
const RESOURCE_TYPE_TOPIC: i8 = 2;
const CONFIG_OPERATION_SET: i8 = 0;
const CONFIG_OPERATION_DELETE: i8 = 1;
const EARLIEST: i64 = -2;
const LATEST: i64 = -1;

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Partition count (default: the broker's num_partitions).
        #[arg(long, short = 'p', default_value_t = -1)]
        partitions: i32,
        /// Replication factor: copies of each partition on distinct nodes of a cluster, kept
        /// by a Raft group per partition (default 1).
        #[arg(long, short = 'r', default_value_t = -1)]
        replication_factor: i16,
        /// Topic config, KEY=VALUE (repeatable), e.g. -c retention.ms=60000
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics with their partition counts.
    List,
    /// Partitions with their offsets, and configs of a topic.
    Describe { name: String },
    /// Change configs or grow the partition count.
    Alter {
        name: String,
        /// Set a config, KEY=VALUE (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Reset a config to its default (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
        /// New (larger) partition count.
        #[arg(long, short = 'p')]
        partitions: Option<i32>,
    },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn run(client: &mut Client, command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => create(client, &name, partitions, replication_factor, &configs),
        TopicCommand::List => list(client),
        TopicCommand::Describe { name } => describe(client, &name),
        TopicCommand::Alter {
            name,
            set,
            delete,
            partitions,
        } => alter(client, &name, &set, &delete, partitions),
        TopicCommand::Delete { names } => delete_topics(client, &names),
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn key_value(pair: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = pair
        .split_once('=')
        .with_context(|| format!("'{pair}' is not KEY=VALUE"))?;
    Ok((key.to_string(), value.to_string()))
}

/// Metadata of the named topics (`None`: every topic), without creating any.
pub fn metadata(
    client: &mut Client,
    topics: Option<&[String]>,
) -> anyhow::Result<MetadataResponse> {
    let mut request = MetadataRequest::default();
    request.allow_auto_topic_creation = false;
    request.topics = topics.map(|names| {
        names
            .iter()
            .map(|name| {
                let mut topic = MetadataRequestTopic::default();
                topic.name = Some(topic_name(name));
                topic
            })
            .collect()
    });
    client.send(9, &request)
}

/// Partition count of `topic`, failing with the broker's error.
pub fn partition_count(client: &mut Client, topic: &str) -> anyhow::Result<i32> {
    let response = metadata(client, Some(&[topic.to_string()]))?;
    let found = response
        .topics
        .first()
        .context("no metadata for the topic")?;
    check(found.error_code, &format!("topic '{topic}'"))?;
    i32::try_from(found.partitions.len()).context("partition count")
}

/// (earliest, latest) offset of each partition of `topic`.
pub fn offsets(
    client: &mut Client,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let mut bounds = Vec::new();
    for timestamp in [EARLIEST, LATEST] {
        let mut request = ListOffsetsRequest::default();
        request.replica_id = (-1).into();
        let mut t = ListOffsetsTopic::default();
        t.name = topic_name(topic);
        t.partitions = (0..partitions)
            .map(|p| {
                let mut partition = ListOffsetsPartition::default();
                partition.partition_index = p;
                partition.timestamp = timestamp;
                partition
            })
            .collect();
        request.topics = vec![t];
        let response = client.send(5, &request)?;
        let mut values = vec![-1i64; usize::try_from(partitions).unwrap_or(0)];
        for p in response.topics.iter().flat_map(|t| t.partitions.iter()) {
            check(
                p.error_code,
                &format!("offsets of {topic}/{}", p.partition_index),
            )?;
            if let Some(slot) = usize::try_from(p.partition_index)
                .ok()
                .and_then(|i| values.get_mut(i))
            {
                *slot = p.offset;
            }
        }
        bounds.push(values);
    }
    Ok(bounds[0]
        .iter()
        .copied()
        .zip(bounds[1].iter().copied())
        .collect())
}

fn create(
    client: &mut Client,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &[String],
) -> anyhow::Result<()> {
    let mut topic = CreatableTopic::default();
    topic.name = topic_name(name);
    topic.num_partitions = partitions;
    topic.replication_factor = replication_factor;
    for pair in configs {
        let (key, value) = key_value(pair)?;
        let mut config = CreatableTopicConfig::default();
        config.name = StrBytes::from_string(key);
        config.value = Some(StrBytes::from_string(value));
        topic.configs.push(config);
    }
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = TOPIC_TIMEOUT_MS;
    let response = client.send(5, &request)?;
    for result in &response.topics {
        if result.error_code != 0 {
            bail!(
                "cannot create topic '{name}': {}{}",
                error_text(result.error_code),
                result
                    .error_message
                    .as_ref()
                    .map(|m| format!(": {}", m.as_str()))
                    .unwrap_or_default()
            );
        }
        println!(
            "created topic {name} with {} partitions",
            result.num_partitions
        );
    }
    Ok(())
}

fn list(client: &mut Client) -> anyhow::Result<()> {
    let response = metadata(client, None)?;
    let mut topics: Vec<(String, usize)> = response
        .topics
        .iter()
        .filter_map(|t| {
            t.name
                .as_ref()
                .map(|n| (n.0.to_string(), t.partitions.len()))
        })
        .collect();
    topics.sort();
    println!("{:<40} PARTITIONS", "TOPIC");
    for (name, partitions) in topics {
        println!("{name:<40} {partitions}");
    }
    Ok(())
}

fn describe(client: &mut Client, name: &str) -> anyhow::Result<()> {
    let partitions = partition_count(client, name)?;
    println!("topic: {name}");
    println!("partitions: {partitions}");
    let found = metadata(client, Some(&[name.to_string()]))?;
    let placement: Vec<(i32, i32, Vec<i32>)> = found
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| {
            (
                p.leader_id.0,
                p.leader_epoch,
                p.replica_nodes.iter().map(|n| n.0).collect(),
            )
        })
        .collect();
    println!(
        "{:<10} {:>15} {:>15} {:>12} {:>7} {:>7}  REPLICAS",
        "PARTITION", "START", "END", "RECORDS", "LEADER", "EPOCH"
    );
    for (index, (start, end)) in offsets(client, name, partitions)?.into_iter().enumerate() {
        let (leader, epoch, replicas) =
            placement
                .get(index)
                .cloned()
                .unwrap_or((-1, -1, Vec::new()));
        let replicas: Vec<String> = replicas.iter().map(i32::to_string).collect();
        println!(
            "{index:<10} {start:>15} {end:>15} {:>12} {leader:>7} {epoch:>7}  {}",
            end - start,
            replicas.join(",")
        );
    }
    let mut resource = DescribeConfigsResource::default();
    resource.resource_type = RESOURCE_TYPE_TOPIC;
    resource.resource_name = StrBytes::from_string(name.to_string());
    resource.configuration_keys = None;
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![resource];
    let response = client.send(1, &request)?;
    println!("configs:");
    for result in &response.results {
        check(result.error_code, "describe configs")?;
        for config in &result.configs {
            let source = if config.config_source == 1 {
                "(set on topic)"
            } else {
                "(default)"
            };
            println!(
                "  {}={} {source}",
                config.name.as_str(),
                config.value.as_ref().map_or("", |v| v.as_str())
            );
        }
    }
    Ok(())
}

fn alter(
    client: &mut Client,
    name: &str,
    set: &[String],
    delete: &[String],
    partitions: Option<i32>,
) -> anyhow::Result<()> {
    if set.is_empty() && delete.is_empty() && partitions.is_none() {
        bail!("nothing to alter: give --set KEY=VALUE, --delete KEY or --partitions N");
    }
    if !set.is_empty() || !delete.is_empty() {
        let mut resource = AlterConfigsResource::default();
        resource.resource_type = RESOURCE_TYPE_TOPIC;
        resource.resource_name = StrBytes::from_string(name.to_string());
        for pair in set {
            let (key, value) = key_value(pair)?;
            let mut config = AlterableConfig::default();
            config.name = StrBytes::from_string(key);
            config.config_operation = CONFIG_OPERATION_SET;
            config.value = Some(StrBytes::from_string(value));
            resource.configs.push(config);
        }
        for key in delete {
            let mut config = AlterableConfig::default();
            config.name = StrBytes::from_string(key.clone());
            config.config_operation = CONFIG_OPERATION_DELETE;
            resource.configs.push(config);
        }
        let mut request = IncrementalAlterConfigsRequest::default();
        request.resources = vec![resource];
        let response = client.send(1, &request)?;
        for result in &response.responses {
            if result.error_code != 0 {
                bail!(
                    "cannot alter configs of '{name}': {}{}",
                    error_text(result.error_code),
                    result
                        .error_message
                        .as_ref()
                        .map(|m| format!(": {}", m.as_str()))
                        .unwrap_or_default()
                );
            }
        }
        println!("altered configs of {name}");
    }
    if let Some(count) = partitions {
        let mut topic = CreatePartitionsTopic::default();
        topic.name = topic_name(name);
        topic.count = count;
        let mut request = CreatePartitionsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = TOPIC_TIMEOUT_MS;
        let response = client.send(1, &request)?;
        for result in &response.results {
            check(
                result.error_code,
                &format!("cannot grow '{name}' to {count} partitions"),
            )?;
        }
        println!("topic {name} now has {count} partitions");
    }
    Ok(())
}

fn delete_topics(client: &mut Client, names: &[String]) -> anyhow::Result<()> {
    let mut request = DeleteTopicsRequest::default();
    request.topic_names = names.iter().map(|n| topic_name(n)).collect();
    request.timeout_ms = TOPIC_TIMEOUT_MS;
    let response = client.send(4, &request)?;
    let mut failed = false;
    for result in &response.responses {
        let name = result.name.as_ref().map_or("?", |n| n.0.as_str());
        if result.error_code == 0 {
            println!("deleted topic {name}");
        } else {
            eprintln!(
                "cannot delete topic {name}: {}",
                error_text(result.error_code)
            );
            failed = true;
        }
    }
    if failed {
        bail!("some topics were not deleted");
    }
    Ok(())
}
