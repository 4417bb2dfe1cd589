//! `rmq produce TOPIC`: one record per stdin line (optionally `KEY<SEP>VALUE`), sent in
//! batches with acks=all. Keyed records go to Kafka's default partition for their key
//! (murmur2), so they land where Java clients would put them; keyless ones round-robin.

use std::io::BufRead;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::client::{error_text, Client};
use super::topic::partition_count;
use rmq_protocols::kafka::record_batch::partition_for_key;
use rmq_protocols::kafka::record_batch::{encode_plain_batch, PlainRecord};

/// Records per partition in one Produce request: 1,000 lines of up to 1 KiB stay near 1 MiB.
const PRODUCE_BATCH_RECORDS: usize = 1_000;
/// How long the broker may take to make a batch durable.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// Split each line at the first SEP into key and value.
    #[arg(long, short = 'K', value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Send every record to this partition.
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
}

fn encode(records: &[(Option<Bytes>, Bytes)], now_ms: i64) -> anyhow::Result<Bytes> {
    let records = records.iter().map(|(key, value)| PlainRecord {
        key: key.clone(),
        value: Some(value.clone()),
        headers: Default::default(),
    });
    Ok(encode_plain_batch(records, now_ms)?.freeze())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Sends what is queued per partition; returns how many records the broker took.
fn flush(
    client: &mut Client,
    topic: &str,
    queued: &mut [Vec<(Option<Bytes>, Bytes)>],
) -> anyhow::Result<usize> {
    let mut data = TopicProduceData::default();
    data.name = TopicName(StrBytes::from_string(topic.to_string()));
    let mut sent = 0;
    for (partition, records) in queued.iter_mut().enumerate() {
        if records.is_empty() {
            continue;
        }
        let mut p = PartitionProduceData::default();
        p.index = i32::try_from(partition).context("partition index")?;
        p.records = Some(encode(records, now_ms())?);
        sent += records.len();
        records.clear();
        data.partition_data.push(p);
    }
    if sent == 0 {
        return Ok(0);
    }
    let mut request = ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = PRODUCE_TIMEOUT_MS;
    request.topic_data = vec![data];
    let response = client.send(8, &request)?;
    for p in response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
    {
        if p.error_code != 0 {
            bail!(
                "produce to {topic}/{} failed: {}",
                p.index,
                error_text(p.error_code)
            );
        }
    }
    Ok(sent)
}

pub fn run(client: &mut Client, args: ProduceArgs) -> anyhow::Result<()> {
    let partitions = partition_count(client, &args.topic)?;
    if let Some(p) = args.partition {
        if !(0..partitions).contains(&p) {
            bail!(
                "topic '{}' has partitions 0..{partitions}, not {p}",
                args.topic
            );
        }
    }
    let mut queued: Vec<Vec<(Option<Bytes>, Bytes)>> =
        vec![Vec::new(); usize::try_from(partitions).context("partition count")?];
    let mut next_partition = 0i32;
    let mut produced = 0usize;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("cannot read stdin")?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(Bytes::from(k.to_string())), Bytes::from(v.to_string())),
                None => (None, Bytes::from(line)),
            },
            None => (None, Bytes::from(line)),
        };
        let partition = match (args.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, partitions),
            (None, None) => {
                next_partition = (next_partition + 1) % partitions;
                next_partition
            }
        };
        let slot = usize::try_from(partition).context("partition index")?;
        queued[slot].push((key, value));
        if queued[slot].len() >= PRODUCE_BATCH_RECORDS {
            produced += flush(client, &args.topic, &mut queued)?;
        }
    }
    produced += flush(client, &args.topic, &mut queued)?;
    eprintln!("produced {produced} records to {}", args.topic);
    Ok(())
}
