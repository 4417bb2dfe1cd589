//! `rmq consume TOPIC`: prints records. Alone it reads every partition from the end (or the
//! beginning); with `-g GROUP` it joins the group (classic protocol, range-like assignment when
//! it leads), starts at the group's committed offsets, heartbeats between fetches, follows
//! rebalances, and commits what it printed before it leaves.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use clap::{Args, ValueEnum};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;

use super::client::{check, error_text, Client};
use super::group::{self, Membership};
use super::topic::{offsets, partition_count};

/// How long one Fetch waits for data.
const FETCH_MAX_WAIT_MS: i32 = 500;
/// Bytes one Fetch may return: 16 MiB in total, 1 MiB per partition.
const FETCH_MAX_BYTES: i32 = 16 * 1024 * 1024;
const FETCH_PARTITION_MAX_BYTES: i32 = 1024 * 1024;
/// How often a group member heartbeats (well inside the session timeout).
const HEARTBEAT_INTERVAL_MS: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The value only.
    Value,
    /// KEY<TAB>VALUE
    KeyValue,
    /// One JSON object per record: partition, offset, timestamp, key, value.
    Json,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Consume as a member of this consumer group (commits its offsets).
    #[arg(long, short = 'g')]
    pub group: Option<String>,
    /// Start at the earliest offset (without a committed offset).
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after N records.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Stop after this long without a record.
    #[arg(long, value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Value)]
    pub format: Format,
}

struct Printed {
    count: u64,
    last_record: Instant,
}

impl Printed {
    fn done(&self, args: &ConsumeArgs) -> bool {
        let counted = args.count.is_some_and(|n| self.count >= n);
        let idle = args
            .idle_timeout_ms
            .is_some_and(|ms| self.last_record.elapsed() >= Duration::from_millis(ms));
        counted || idle
    }
}

fn print_record(
    format: Format,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<&Bytes>,
    value: Option<&Bytes>,
) -> anyhow::Result<()> {
    let text = |b: Option<&Bytes>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    let line = match format {
        Format::Value => text(value).unwrap_or_default(),
        Format::KeyValue => format!(
            "{}\t{}",
            text(key).unwrap_or_default(),
            text(value).unwrap_or_default()
        ),
        Format::Json => serde_json::json!({
            "partition": partition,
            "offset": offset,
            "timestamp": timestamp,
            "key": text(key),
            "value": text(value),
        })
        .to_string(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("cannot write to stdout")
}

/// Fetches once from `positions` and prints what came, advancing the positions.
fn fetch_and_print(
    client: &mut Client,
    topic: &str,
    positions: &mut BTreeMap<i32, i64>,
    args: &ConsumeArgs,
    printed: &mut Printed,
) -> anyhow::Result<()> {
    let mut fetch_topic = FetchTopic::default();
    fetch_topic.topic = TopicName(StrBytes::from_string(topic.to_string()));
    fetch_topic.partitions = positions
        .iter()
        .map(|(partition, offset)| {
            let mut p = FetchPartition::default();
            p.partition = *partition;
            p.fetch_offset = *offset;
            p.partition_max_bytes = FETCH_PARTITION_MAX_BYTES;
            p
        })
        .collect();
    let mut request = FetchRequest::default();
    request.max_wait_ms = FETCH_MAX_WAIT_MS;
    request.min_bytes = 1;
    request.max_bytes = FETCH_MAX_BYTES;
    request.topics = vec![fetch_topic];
    let response = client.send(11, &request)?;
    for p in response.responses.iter().flat_map(|t| t.partitions.iter()) {
        if p.error_code == ResponseError::OffsetOutOfRange.code() {
            // Deleted below us (retention, DeleteRecords): go on from the log start.
            positions.insert(p.partition_index, p.log_start_offset.max(0));
            continue;
        }
        check(
            p.error_code,
            &format!("fetch {topic}/{}", p.partition_index),
        )?;
        let Some(mut records) = p.records.clone() else {
            continue;
        };
        let sets = RecordBatchDecoder::decode_all(&mut records)
            .map_err(|e| anyhow::anyhow!("cannot decode records: {e}"))?;
        let position = positions.entry(p.partition_index).or_insert(0);
        for record in sets.into_iter().flat_map(|s| s.records) {
            if record.offset < *position || printed.done(args) {
                continue;
            }
            print_record(
                args.format,
                p.partition_index,
                record.offset,
                record.timestamp,
                record.key.as_ref(),
                record.value.as_ref(),
            )?;
            *position = record.offset + 1;
            printed.count += 1;
            printed.last_record = Instant::now();
        }
    }
    Ok(())
}

pub fn run(client: &mut Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let mut printed = Printed {
        count: 0,
        last_record: Instant::now(),
    };
    match args.group.clone() {
        None => {
            let partitions = partition_count(client, &args.topic)?;
            let bounds = offsets(client, &args.topic, partitions)?;
            let mut positions: BTreeMap<i32, i64> = (0..partitions)
                .zip(bounds)
                .map(|(p, (start, end))| (p, if args.from_beginning { start } else { end }))
                .collect();
            while !printed.done(&args) {
                fetch_and_print(client, &args.topic, &mut positions, &args, &mut printed)?;
            }
            Ok(())
        }
        Some(group_id) => consume_in_group(client, &group_id, &args, &mut printed),
    }
}

/// The subscription this member sends: the topic, consumer protocol v0.
fn subscription(topic: &str) -> anyhow::Result<Bytes> {
    let mut subscription = ConsumerProtocolSubscription::default();
    subscription.topics = vec![StrBytes::from_string(topic.to_string())];
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&0i16.to_be_bytes());
    subscription.encode(&mut buf, 0)?;
    Ok(buf.freeze())
}

/// Every (topic, partitions) of an assignment from SyncGroup or DescribeGroups.
pub fn assignment_topics(mut assignment: Bytes) -> Vec<(String, Vec<i32>)> {
    if assignment.len() < 2 {
        return Vec::new();
    }
    let version = assignment.get_i16();
    ConsumerProtocolAssignment::decode(&mut assignment, version)
        .map(|a| {
            a.assigned_partitions
                .into_iter()
                .map(|tp| (tp.topic.0.to_string(), tp.partitions))
                .collect()
        })
        .unwrap_or_default()
}

/// The partitions of `topic` in an assignment from SyncGroup.
pub fn assigned_partitions(assignment: Bytes, topic: &str) -> Vec<i32> {
    assignment_topics(assignment)
        .into_iter()
        .filter(|(t, _)| t == topic)
        .flat_map(|(_, partitions)| partitions)
        .collect()
}

fn consume_in_group(
    client: &mut Client,
    group_id: &str,
    args: &ConsumeArgs,
    printed: &mut Printed,
) -> anyhow::Result<()> {
    let partitions = partition_count(client, &args.topic)?;
    let metadata = subscription(&args.topic)?;
    // Group requests go to the group's coordinator, fetches through `client`.
    let mut coordinator = group::coordinator(client, group_id)?;
    let mut member_id = String::new();
    loop {
        let membership = group::join(
            &mut coordinator,
            group_id,
            &member_id,
            &args.topic,
            partitions,
            &metadata,
        )?;
        member_id = membership.member_id.clone();
        let mut positions = start_positions(client, &mut coordinator, group_id, &membership, args)?;
        let rebalance = consume_generation(
            client,
            &mut coordinator,
            &membership,
            &mut positions,
            args,
            printed,
        )?;
        group::commit(&mut coordinator, &membership, &args.topic, &positions)?;
        if !rebalance {
            group::leave(&mut coordinator, group_id, &member_id)?;
            eprintln!(
                "consumed {} records as {member_id} of group {group_id}",
                printed.count
            );
            return Ok(());
        }
    }
}

/// Committed offsets of the assigned partitions, else earliest/latest as asked.
fn start_positions(
    client: &mut Client,
    coordinator: &mut Client,
    group_id: &str,
    membership: &Membership,
    args: &ConsumeArgs,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let committed = group::committed(coordinator, group_id, &args.topic, &membership.partitions)?;
    let partitions = partition_count(client, &args.topic)?;
    let bounds = offsets(client, &args.topic, partitions)?;
    let mut positions = BTreeMap::new();
    for partition in &membership.partitions {
        let (start, end) = usize::try_from(*partition)
            .ok()
            .and_then(|i| bounds.get(i).copied())
            .unwrap_or((0, 0));
        let position = match committed.get(partition) {
            Some(offset) if *offset >= 0 => *offset,
            _ if args.from_beginning => start,
            _ => end,
        };
        positions.insert(*partition, position);
    }
    Ok(positions)
}

/// Consumes until done (false) or until the group rebalances (true).
fn consume_generation(
    client: &mut Client,
    coordinator: &mut Client,
    membership: &Membership,
    positions: &mut BTreeMap<i32, i64>,
    args: &ConsumeArgs,
    printed: &mut Printed,
) -> anyhow::Result<bool> {
    let mut last_heartbeat = Instant::now();
    while !printed.done(args) {
        if positions.is_empty() {
            std::thread::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
        } else {
            fetch_and_print(client, &args.topic, positions, args, printed)?;
        }
        if last_heartbeat.elapsed() >= Duration::from_millis(HEARTBEAT_INTERVAL_MS) {
            last_heartbeat = Instant::now();
            match group::heartbeat(coordinator, membership)? {
                0 => {}
                code if code == ResponseError::RebalanceInProgress.code() => return Ok(true),
                code => bail!("heartbeat failed: {}", error_text(code)),
            }
        }
    }
    Ok(false)
}
