//! `rmq group list|describe|delete|reset-offsets`, and the group calls `rmq consume -g` makes
//! (join, sync, heartbeat, commit, leave).

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::Subcommand;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest,
    GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::client::{check, error_text, Client};
use super::consume::{assigned_partitions, assignment_topics};
use super::topic::{offsets, partition_count};

/// Session timeout of `rmq consume -g` (the broker's minimum is 6 s by default).
const SESSION_TIMEOUT_MS: i32 = 10_000;
/// How long the group waits for this member to rejoin in a rebalance.
const REBALANCE_TIMEOUT_MS: i32 = 30_000;
/// Join attempts (MEMBER_ID_REQUIRED, rebalances) before giving up.
const JOIN_ATTEMPTS_MAX: usize = 20;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List consumer groups with their state.
    List,
    /// Members, assignments, committed offsets and lag of a group.
    Describe { group: String },
    /// Delete empty groups and their committed offsets.
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Delete a group's committed offsets of a topic it does not consume.
    DeleteOffsets {
        group: String,
        #[arg(long)]
        topic: String,
    },
    /// Set an (empty) group's committed offsets of a topic.
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// To each partition's earliest offset.
        #[arg(long, conflicts_with_all = ["to_latest", "to_offset"])]
        to_earliest: bool,
        /// To each partition's latest offset.
        #[arg(long, conflicts_with = "to_offset")]
        to_latest: bool,
        /// To this offset in every partition.
        #[arg(long)]
        to_offset: Option<i64>,
    },
}

/// This member's place in a generation.
pub struct Membership {
    pub group_id: String,
    pub member_id: String,
    pub generation_id: i32,
    pub partitions: Vec<i32>,
}

fn group_id(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_string()))
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// The leader's assignment: partitions dealt round-robin over the members in id order.
fn assign(
    members: &[String],
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<(String, Bytes)>> {
    let mut out = Vec::with_capacity(members.len());
    for (index, member) in members.iter().enumerate() {
        let mine: Vec<i32> = (0..partitions)
            .filter(|p| usize::try_from(*p).unwrap_or(0) % members.len() == index)
            .collect();
        let mut assigned = AssignedPartitions::default();
        assigned.topic = topic_name(topic);
        assigned.partitions = mine;
        let mut assignment = ConsumerProtocolAssignment::default();
        assignment.assigned_partitions = vec![assigned];
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&0i16.to_be_bytes());
        assignment.encode(&mut buf, 0)?;
        out.push((member.clone(), buf.freeze()));
    }
    Ok(out)
}

/// Joins (rejoins) the group and syncs: the partitions this member owns in the new generation.
pub fn join(
    client: &mut Client,
    group: &str,
    member_id: &str,
    topic: &str,
    partitions: i32,
    metadata: &Bytes,
) -> anyhow::Result<Membership> {
    let mut member_id = member_id.to_string();
    for _ in 0..JOIN_ATTEMPTS_MAX {
        let mut protocol = JoinGroupRequestProtocol::default();
        protocol.name = StrBytes::from_static_str("range");
        protocol.metadata = metadata.clone();
        let mut request = JoinGroupRequest::default();
        request.group_id = group_id(group);
        request.session_timeout_ms = SESSION_TIMEOUT_MS;
        request.rebalance_timeout_ms = REBALANCE_TIMEOUT_MS;
        request.member_id = StrBytes::from_string(member_id.clone());
        request.protocol_type = StrBytes::from_static_str("consumer");
        request.protocols = vec![protocol];
        let joined = client.send(7, &request)?;
        member_id = joined.member_id.to_string();
        if joined.error_code == ResponseError::MemberIdRequired.code() {
            continue;
        }
        check(joined.error_code, &format!("join group {group}"))?;
        let mut sync = SyncGroupRequest::default();
        sync.group_id = group_id(group);
        sync.generation_id = joined.generation_id;
        sync.member_id = joined.member_id.clone();
        sync.protocol_type = joined.protocol_type.clone();
        sync.protocol_name = joined.protocol_name.clone();
        if joined.leader == joined.member_id {
            let mut members: Vec<String> = joined
                .members
                .iter()
                .map(|m| m.member_id.to_string())
                .collect();
            members.sort();
            for (member, assignment) in assign(&members, topic, partitions)? {
                let mut a = SyncGroupRequestAssignment::default();
                a.member_id = StrBytes::from_string(member);
                a.assignment = assignment;
                sync.assignments.push(a);
            }
        }
        let synced = client.send(5, &sync)?;
        if synced.error_code == ResponseError::RebalanceInProgress.code() {
            continue;
        }
        check(synced.error_code, &format!("sync group {group}"))?;
        return Ok(Membership {
            group_id: group.to_string(),
            member_id,
            generation_id: joined.generation_id,
            partitions: assigned_partitions(synced.assignment, topic),
        });
    }
    bail!("could not join group {group} after {JOIN_ATTEMPTS_MAX} attempts")
}

/// The heartbeat's error code (REBALANCE_IN_PROGRESS asks for a rejoin).
pub fn heartbeat(client: &mut Client, membership: &Membership) -> anyhow::Result<i16> {
    let mut request = HeartbeatRequest::default();
    request.group_id = group_id(&membership.group_id);
    request.generation_id = membership.generation_id;
    request.member_id = StrBytes::from_string(membership.member_id.clone());
    Ok(client.send(4, &request)?.error_code)
}

fn commit_request(
    group: &str,
    generation_id: i32,
    member_id: &str,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
) -> OffsetCommitRequest {
    let mut t = OffsetCommitRequestTopic::default();
    t.name = topic_name(topic);
    t.partitions = positions
        .iter()
        .map(|(partition, offset)| {
            let mut p = OffsetCommitRequestPartition::default();
            p.partition_index = *partition;
            p.committed_offset = *offset;
            p
        })
        .collect();
    let mut request = OffsetCommitRequest::default();
    request.group_id = group_id(group);
    request.generation_id_or_member_epoch = generation_id;
    request.member_id = StrBytes::from_string(member_id.to_string());
    request.topics = vec![t];
    request
}

fn send_commit(client: &mut Client, request: &OffsetCommitRequest) -> anyhow::Result<()> {
    let response = client.send(8, request)?;
    for p in response.topics.iter().flat_map(|t| t.partitions.iter()) {
        check(
            p.error_code,
            &format!("commit offset of partition {}", p.partition_index),
        )?;
    }
    Ok(())
}

/// Commits `positions` as this member (a rebalance in progress is reported, not fatal).
pub fn commit(
    client: &mut Client,
    membership: &Membership,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let request = commit_request(
        &membership.group_id,
        membership.generation_id,
        &membership.member_id,
        topic,
        positions,
    );
    if let Err(e) = send_commit(client, &request) {
        eprintln!("offsets not committed: {e:#}");
    }
    Ok(())
}

pub fn leave(client: &mut Client, group: &str, member_id: &str) -> anyhow::Result<()> {
    let mut member = MemberIdentity::default();
    member.member_id = StrBytes::from_string(member_id.to_string());
    let mut request = LeaveGroupRequest::default();
    request.group_id = group_id(group);
    request.members = vec![member];
    let response = client.send(4, &request)?;
    check(response.error_code, &format!("leave group {group}"))
}

/// The group's committed offsets of `partitions` of `topic` (-1: none).
pub fn committed(
    client: &mut Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut t = OffsetFetchRequestTopic::default();
    t.name = topic_name(topic);
    t.partition_indexes = partitions.to_vec();
    let mut request = OffsetFetchRequest::default();
    request.group_id = group_id(group);
    request.topics = Some(vec![t]);
    let response = client.send(7, &request)?;
    check(response.error_code, &format!("fetch offsets of {group}"))?;
    Ok(response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.committed_offset))
        .collect())
}

/// Every committed offset of the group: topic -> partition -> offset.
fn all_committed(
    client: &mut Client,
    group: &str,
) -> anyhow::Result<BTreeMap<String, BTreeMap<i32, i64>>> {
    let mut request = OffsetFetchRequest::default();
    request.group_id = group_id(group);
    request.topics = None;
    let response = client.send(7, &request)?;
    check(response.error_code, &format!("fetch offsets of {group}"))?;
    let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for t in &response.topics {
        for p in &t.partitions {
            out.entry(t.name.0.to_string())
                .or_default()
                .insert(p.partition_index, p.committed_offset);
        }
    }
    Ok(out)
}

/// A connection to `group`'s coordinator, found through `client` (FindCoordinator v2): in a
/// cluster one seed coordinates each group and the other nodes answer NOT_COORDINATOR.
pub fn coordinator(client: &mut Client, group: &str) -> anyhow::Result<Client> {
    let mut request = FindCoordinatorRequest::default();
    request.key = StrBytes::from_string(group.to_string());
    let response = client.send(2, &request)?;
    check(
        response.error_code,
        &format!("find the coordinator of group {group}"),
    )?;
    let address = format!("{}:{}", response.host.as_str(), response.port);
    Client::connect(&address)
        .with_context(|| format!("connect to the coordinator of group {group} at {address}"))
}

pub fn run(client: &mut Client, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List => list(client),
        GroupCommand::Describe { group } => describe(client, &group),
        GroupCommand::Delete { groups } => delete(client, &groups),
        GroupCommand::DeleteOffsets { group, topic } => delete_offsets(client, &group, &topic),
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
        } => reset_offsets(client, &group, &topic, to_earliest, to_latest, to_offset),
    }
}

fn list(client: &mut Client) -> anyhow::Result<()> {
    let response = client.send(4, &ListGroupsRequest::default())?;
    check(response.error_code, "list groups")?;
    println!("{:<40} {:<22} PROTOCOL", "GROUP", "STATE");
    for g in &response.groups {
        println!(
            "{:<40} {:<22} {}",
            g.group_id.0.as_str(),
            g.group_state.as_str(),
            g.protocol_type.as_str()
        );
    }
    Ok(())
}

fn describe(client: &mut Client, group: &str) -> anyhow::Result<()> {
    let mut request = DescribeGroupsRequest::default();
    request.groups = vec![group_id(group)];
    let mut coordinator = coordinator(client, group)?;
    let response = coordinator.send(5, &request)?;
    let described = response.groups.first().context("no answer for the group")?;
    check(described.error_code, &format!("describe group {group}"))?;
    let committed = all_committed(&mut coordinator, group)?;
    if described.group_state.as_str() == "Dead" && committed.is_empty() {
        bail!("group {group} does not exist");
    }
    println!("group: {group}");
    println!("state: {}", described.group_state.as_str());
    println!("protocol: {}", described.protocol_data.as_str());
    println!("members: {}", described.members.len());
    for m in &described.members {
        let partitions: Vec<String> = assignment_topics(m.member_assignment.clone())
            .into_iter()
            .flat_map(|(t, partitions)| partitions.into_iter().map(move |p| format!("{t}/{p}")))
            .collect();
        println!(
            "  {}  client={} host={}  partitions=[{}]",
            m.member_id.as_str(),
            m.client_id.as_str(),
            m.client_host.as_str(),
            partitions.join(",")
        );
    }
    println!(
        "{:<30} {:>9} {:>12} {:>12} {:>8}",
        "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"
    );
    for (topic, partitions) in &committed {
        let count = partition_count(client, topic).unwrap_or(0);
        let bounds = offsets(client, topic, count).unwrap_or_default();
        for (partition, offset) in partitions {
            let end = usize::try_from(*partition)
                .ok()
                .and_then(|i| bounds.get(i))
                .map_or(-1, |(_, end)| *end);
            let lag = if end >= 0 && *offset >= 0 {
                end - offset
            } else {
                -1
            };
            println!("{topic:<30} {partition:>9} {offset:>12} {end:>12} {lag:>8}");
        }
    }
    Ok(())
}

fn delete(client: &mut Client, groups: &[String]) -> anyhow::Result<()> {
    let mut results = Vec::with_capacity(groups.len());
    for group in groups {
        let mut request = DeleteGroupsRequest::default();
        request.groups_names = vec![group_id(group)];
        results.extend(coordinator(client, group)?.send(2, &request)?.results);
    }
    let mut failed = false;
    for result in &results {
        if result.error_code == 0 {
            println!("deleted group {}", result.group_id.0.as_str());
        } else {
            eprintln!(
                "cannot delete group {}: {}",
                result.group_id.0.as_str(),
                error_text(result.error_code)
            );
            failed = true;
        }
    }
    if failed {
        bail!("some groups were not deleted");
    }
    Ok(())
}

fn delete_offsets(client: &mut Client, group: &str, topic: &str) -> anyhow::Result<()> {
    let partitions = partition_count(client, topic)?;
    let mut t = OffsetDeleteRequestTopic::default();
    t.name = topic_name(topic);
    t.partitions = (0..partitions)
        .map(|p| {
            let mut partition = OffsetDeleteRequestPartition::default();
            partition.partition_index = p;
            partition
        })
        .collect();
    let mut request = OffsetDeleteRequest::default();
    request.group_id = group_id(group);
    request.topics = vec![t];
    let response = coordinator(client, group)?.send(0, &request)?;
    check(response.error_code, &format!("delete offsets of {group}"))?;
    for p in response.topics.iter().flat_map(|t| t.partitions.iter()) {
        check(
            p.error_code,
            &format!("delete offset of {topic}/{}", p.partition_index),
        )?;
    }
    println!("deleted the offsets of {group} for {topic}");
    Ok(())
}

fn reset_offsets(
    client: &mut Client,
    group: &str,
    topic: &str,
    to_earliest: bool,
    to_latest: bool,
    to_offset: Option<i64>,
) -> anyhow::Result<()> {
    let partitions = partition_count(client, topic)?;
    let bounds = offsets(client, topic, partitions)?;
    let positions: BTreeMap<i32, i64> = (0..partitions)
        .zip(bounds)
        .map(|(p, (start, end))| {
            let offset = match (to_earliest, to_latest, to_offset) {
                (true, _, _) => start,
                (_, true, _) => end,
                (_, _, Some(offset)) => offset.clamp(start, end),
                _ => start,
            };
            (p, offset)
        })
        .collect();
    if !to_earliest && !to_latest && to_offset.is_none() {
        bail!("give --to-earliest, --to-latest or --to-offset N");
    }
    // Generation -1 with no member id: allowed only while the group has no members.
    let request = commit_request(group, -1, "", topic, &positions);
    send_commit(&mut coordinator(client, group)?, &request)
        .context("reset offsets (is the group empty?)")?;
    for (partition, offset) in &positions {
        println!("{group} {topic}/{partition} -> {offset}");
    }
    Ok(())
}
