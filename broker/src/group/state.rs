//! One consumer group's state machine (Kafka's classic rebalance protocol): members, the
//! generation, the chosen protocol, the leader's assignment and the committed offsets.
//!
//! Concurrency contract: a `Group` lives on its coordinator shard and is changed only there,
//! synchronously (no await while it is borrowed). Time comes in as `now_ms`, so tests drive it
//! without a clock. Long-polled JoinGroup and SyncGroup answers are held as reply senders and
//! sent when the rebalance reaches the step they wait for.
//!
//! States: Empty -> PreparingRebalance (members join until everyone known has rejoined, or
//! the rebalance timeout) -> CompletingRebalance (the leader's SyncGroup brings the assignment)
//! -> Stable. A member that leaves, changes its protocols or misses its session timeout sends
//! the group back to PreparingRebalance.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::Decodable;
use rmq_protocols::kernel::{
    CommittedOffset, GroupDescription, GroupListing, GroupProtocol, JoinGroupInput,
    JoinGroupOutput, JoinedMember, KernelError, LeavingMember, MemberDescription, MemberGeneration,
    SyncGroupInput, SyncGroupOutput, TopicPartition,
};

use crate::constants::MEMBERS_PER_GROUP_MAX;

/// Where a JoinGroup answer goes.
pub type JoinReply = flume::Sender<JoinGroupOutput>;
/// Where a SyncGroup answer goes.
pub type SyncReply = flume::Sender<SyncGroupOutput>;

/// The group settings of the node (`group.*` in Kafka).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group waits
    /// for more members before it completes.
    pub initial_rebalance_delay_ms: i64,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// Kafka's name, as ListGroups and DescribeGroups report it.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<GroupProtocol>,
    assignment: Bytes,
    last_heartbeat_ms: i64,
    /// Order of first join: the first member becomes leader when none is left.
    joined_seq: u64,
    join_reply: Option<JoinReply>,
    sync_reply: Option<SyncReply>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }
}

pub struct Group {
    id: String,
    state: GroupState,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader_id: Option<String>,
    members: BTreeMap<String, Member>,
    /// KIP-394: ids handed out with MEMBER_ID_REQUIRED, with the time they lapse.
    pending_members: BTreeMap<String, i64>,
    /// group.instance.id -> member id.
    static_members: BTreeMap<String, String>,
    rebalance_deadline_ms: i64,
    /// The first rebalance of an empty group completes no earlier than this.
    join_not_before_ms: i64,
    next_member_seq: u64,
    pub offsets: BTreeMap<TopicPartition, CommittedOffset>,
}

fn join_error(error: KernelError, member_id: String) -> JoinGroupOutput {
    JoinGroupOutput {
        error: Some(error),
        generation_id: -1,
        member_id,
        ..JoinGroupOutput::default()
    }
}

fn sync_error(error: KernelError) -> SyncGroupOutput {
    SyncGroupOutput {
        error: Some(error),
        ..SyncGroupOutput::default()
    }
}

impl Group {
    pub fn new(id: String) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            rebalance_deadline_ms: 0,
            join_not_before_ms: 0,
            next_member_seq: 0,
            offsets: BTreeMap::new(),
        }
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    pub fn has_members(&self) -> bool {
        !self.members.is_empty() || !self.pending_members.is_empty()
    }

    /// Nothing left to keep: no members and no committed offsets.
    pub fn is_removable(&self) -> bool {
        !self.has_members() && self.offsets.is_empty()
    }

    /// A member id unique across restarts: client id, wall-clock nanoseconds and a sequence.
    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member_seq += 1;
        let prefix = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{prefix}-{nanos:x}-{:x}", self.next_member_seq)
    }

    /// A join the group cannot take, whatever its member id.
    fn check_join(&self, input: &JoinGroupInput, config: &GroupConfig) -> Result<(), KernelError> {
        let timeout = input.session_timeout_ms;
        if timeout < config.min_session_timeout_ms || timeout > config.max_session_timeout_ms {
            return Err(KernelError::InvalidSessionTimeout(format!(
                "session timeout {timeout} ms is outside [{}, {}] ms \
                 (group.min/max.session.timeout.ms)",
                config.min_session_timeout_ms, config.max_session_timeout_ms
            )));
        }
        if input.protocol_type.is_empty() || input.protocols.is_empty() {
            return Err(KernelError::InconsistentGroupProtocol);
        }
        if self.members.is_empty() {
            return Ok(());
        }
        if self.protocol_type.as_deref() != Some(input.protocol_type.as_str()) {
            return Err(KernelError::InconsistentGroupProtocol);
        }
        let others = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != input.member_id);
        let mut common: BTreeSet<&str> = input.protocols.iter().map(|p| p.name.as_str()).collect();
        for (_, member) in others {
            common.retain(|name| member.protocols.iter().any(|p| p.name == *name));
        }
        if common.is_empty() {
            return Err(KernelError::InconsistentGroupProtocol);
        }
        Ok(())
    }

    pub fn join(
        &mut self,
        input: JoinGroupInput,
        reply: JoinReply,
        now_ms: i64,
        config: &GroupConfig,
    ) {
        if let Err(e) = self.check_join(&input, config) {
            let _ = reply.try_send(join_error(e, input.member_id));
            return;
        }
        if input.member_id.is_empty() {
            let member_id = self.new_member_id(&input.client_id);
            if self.members.len() + self.pending_members.len() >= MEMBERS_PER_GROUP_MAX {
                let error = KernelError::InvalidRequest(format!(
                    "group {} already has {MEMBERS_PER_GROUP_MAX} members",
                    self.id
                ));
                let _ = reply.try_send(join_error(error, String::new()));
                return;
            }
            match input.group_instance_id.clone() {
                Some(instance) => match self.static_members.get(&instance).cloned() {
                    Some(old_id) => self.rejoin_static(old_id, member_id, input, reply, now_ms),
                    None => self.add_member(member_id, input, reply, now_ms, config),
                },
                None if input.require_known_member_id => {
                    let lapse_ms = now_ms + i64::from(input.session_timeout_ms);
                    self.pending_members.insert(member_id.clone(), lapse_ms);
                    let _ = reply.try_send(join_error(KernelError::MemberIdRequired, member_id));
                }
                None => self.add_member(member_id, input, reply, now_ms, config),
            }
            return;
        }
        let member_id = input.member_id.clone();
        if let Some(instance) = &input.group_instance_id {
            match self.static_members.get(instance) {
                Some(id) if *id != member_id => {
                    let _ = reply.try_send(join_error(KernelError::FencedInstanceId, member_id));
                    return;
                }
                Some(_) => {}
                None if !self.pending_members.contains_key(&member_id) => {
                    let _ = reply.try_send(join_error(KernelError::UnknownMemberId, member_id));
                    return;
                }
                None => {}
            }
        }
        if self.pending_members.remove(&member_id).is_some() {
            self.add_member(member_id, input, reply, now_ms, config);
        } else if self.members.contains_key(&member_id) {
            self.update_member(input, reply, now_ms);
        } else {
            let _ = reply.try_send(join_error(KernelError::UnknownMemberId, member_id));
        }
    }

    fn add_member(
        &mut self,
        member_id: String,
        input: JoinGroupInput,
        reply: JoinReply,
        now_ms: i64,
        config: &GroupConfig,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(input.protocol_type.clone());
        }
        if let Some(instance) = &input.group_instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        self.next_member_seq += 1;
        let member = Member {
            instance_id: input.group_instance_id,
            client_id: input.client_id,
            client_host: input.client_host,
            session_timeout_ms: input.session_timeout_ms,
            rebalance_timeout_ms: input.rebalance_timeout_ms,
            protocols: input.protocols,
            assignment: Bytes::new(),
            last_heartbeat_ms: now_ms,
            joined_seq: self.next_member_seq,
            join_reply: Some(reply),
            sync_reply: None,
        };
        self.members.insert(member_id, member);
        match self.state {
            GroupState::PreparingRebalance => {
                if self.join_not_before_ms > now_ms {
                    // Still in the initial delay: every new member extends it, up to the
                    // rebalance deadline (Kafka's InitialDelayedJoin).
                    self.join_not_before_ms = (now_ms + config.initial_rebalance_delay_ms)
                        .min(self.rebalance_deadline_ms);
                }
                self.maybe_complete_join(now_ms);
            }
            _ => self.prepare_rebalance(now_ms, config.initial_rebalance_delay_ms),
        }
    }

    /// A known member joins again: with the same protocols in a settled group it gets the
    /// current generation back; otherwise the group rebalances.
    fn update_member(&mut self, input: JoinGroupInput, reply: JoinReply, now_ms: i64) {
        let member_id = input.member_id.clone();
        let is_leader = self.leader_id.as_deref() == Some(member_id.as_str());
        let Some(member) = self.members.get_mut(&member_id) else {
            let _ = reply.try_send(join_error(KernelError::UnknownMemberId, member_id));
            return;
        };
        let unchanged = member.protocols == input.protocols;
        member.protocols = input.protocols;
        member.session_timeout_ms = input.session_timeout_ms;
        member.rebalance_timeout_ms = input.rebalance_timeout_ms;
        member.last_heartbeat_ms = now_ms;
        match self.state {
            GroupState::PreparingRebalance => {
                member.join_reply = Some(reply);
                self.maybe_complete_join(now_ms);
            }
            GroupState::CompletingRebalance if unchanged => {
                // It may have missed the answer: give it the same one again.
                let output = self.join_output(&member_id, is_leader);
                let _ = reply.try_send(output);
            }
            GroupState::Stable if unchanged && !is_leader => {
                let output = self.join_output(&member_id, false);
                let _ = reply.try_send(output);
            }
            GroupState::Empty => {
                let _ = reply.try_send(join_error(KernelError::UnknownMemberId, member_id));
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.join_reply = Some(reply);
                self.prepare_rebalance(now_ms, 0);
            }
        }
    }

    /// A static member restarted (new member id, same group.instance.id): it takes over the old
    /// member's place. In a Stable group with unchanged protocols nobody else rebalances: it
    /// gets the current generation and, through SyncGroup, its old assignment (KIP-345).
    fn rejoin_static(
        &mut self,
        old_id: String,
        new_id: String,
        input: JoinGroupInput,
        reply: JoinReply,
        now_ms: i64,
    ) {
        let Some(mut member) = self.members.remove(&old_id) else {
            let _ = reply.try_send(join_error(KernelError::UnknownMemberId, new_id));
            return;
        };
        if let Some(old_reply) = member.join_reply.take() {
            let _ = old_reply.try_send(join_error(KernelError::FencedInstanceId, old_id.clone()));
        }
        if let Some(old_reply) = member.sync_reply.take() {
            let _ = old_reply.try_send(sync_error(KernelError::FencedInstanceId));
        }
        let old_leader = self.leader_id.clone().unwrap_or_default();
        if self.leader_id.as_deref() == Some(old_id.as_str()) {
            self.leader_id = Some(new_id.clone());
        }
        if let Some(instance) = &input.group_instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        member.protocols = input.protocols;
        member.client_id = input.client_id;
        member.client_host = input.client_host;
        member.session_timeout_ms = input.session_timeout_ms;
        member.rebalance_timeout_ms = input.rebalance_timeout_ms;
        member.last_heartbeat_ms = now_ms;
        self.members.insert(new_id.clone(), member);
        // Kafka's rule: only a change of the protocol the group would now choose needs a
        // rebalance (subscription metadata such as owned partitions may differ after a restart).
        let unchanged = self.select_protocol() == self.protocol_name;
        if self.state == GroupState::Stable && unchanged {
            // The old leader id is returned so that a restarted leader does not assign again:
            // a Stable group would not pass a new assignment on.
            let mut output = self.join_output(&new_id, false);
            output.leader = old_leader;
            let _ = reply.try_send(output);
            return;
        }
        if let Some(member) = self.members.get_mut(&new_id) {
            member.join_reply = Some(reply);
        }
        if self.state == GroupState::PreparingRebalance {
            self.maybe_complete_join(now_ms);
        } else {
            self.prepare_rebalance(now_ms, 0);
        }
    }

    fn prepare_rebalance(&mut self, now_ms: i64, initial_delay_ms: i64) {
        if self.state == GroupState::CompletingRebalance {
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                if let Some(reply) = member.sync_reply.take() {
                    let _ = reply.try_send(sync_error(KernelError::RebalanceInProgress));
                }
            }
        }
        let was_empty = self.state == GroupState::Empty;
        self.state = GroupState::PreparingRebalance;
        let rebalance_timeout_ms = self
            .members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0);
        self.rebalance_deadline_ms = now_ms + rebalance_timeout_ms;
        self.join_not_before_ms = if was_empty {
            (now_ms + initial_delay_ms).min(self.rebalance_deadline_ms)
        } else {
            now_ms
        };
        self.maybe_complete_join(now_ms);
    }

    fn maybe_complete_join(&mut self, now_ms: i64) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = self.pending_members.is_empty()
            && self.members.values().all(|m| m.join_reply.is_some());
        if (all_joined && now_ms >= self.join_not_before_ms) || now_ms >= self.rebalance_deadline_ms
        {
            self.complete_join(now_ms);
        }
    }

    fn complete_join(&mut self, now_ms: i64) {
        let missing: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_reply.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in missing {
            self.remove_member(&id);
        }
        self.pending_members.clear();
        self.generation_id = self.generation_id.wrapping_add(1);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader_id = None;
            return;
        }
        self.protocol_name = self.select_protocol();
        let leader_present = self
            .leader_id
            .as_ref()
            .is_some_and(|id| self.members.contains_key(id));
        if !leader_present {
            self.leader_id = self
                .members
                .iter()
                .min_by_key(|(_, m)| m.joined_seq)
                .map(|(id, _)| id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let is_leader = self.leader_id.as_deref() == Some(id.as_str());
            let output = self.join_output(&id, is_leader);
            if let Some(member) = self.members.get_mut(&id) {
                member.last_heartbeat_ms = now_ms;
                if let Some(reply) = member.join_reply.take() {
                    let _ = reply.try_send(output);
                }
            }
        }
    }

    /// The protocol every member supports that most members prefer (Kafka's vote).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().min_by_key(|m| m.joined_seq)?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|p| p.name == *name))
            })
            .collect();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some(choice) = member
                .protocols
                .iter()
                .find(|p| candidates.contains(&p.name.as_str()))
            {
                *votes.entry(choice.name.as_str()).or_default() += 1;
            }
        }
        // Ties go to the earliest candidate in the first member's order.
        let best = candidates
            .iter()
            .max_by_key(|name| {
                let position = candidates.iter().position(|c| c == *name).unwrap_or(0);
                (
                    votes.get(*name).copied().unwrap_or(0),
                    usize::MAX - position,
                )
            })
            .copied()?;
        Some(best.to_string())
    }

    fn join_output(&self, member_id: &str, is_leader: bool) -> JoinGroupOutput {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let members = if is_leader {
            self.members
                .iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinGroupOutput {
            error: None,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader_id.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
        }
    }

    /// The member exists (and is not fenced) and, if asked, is in the current generation.
    fn check_member(
        &self,
        member: &MemberGeneration,
        check_generation: bool,
    ) -> Result<(), KernelError> {
        if let Some(instance) = &member.group_instance_id {
            match self.static_members.get(instance) {
                Some(id) if *id != member.member_id => return Err(KernelError::FencedInstanceId),
                Some(_) => {}
                None => return Err(KernelError::UnknownMemberId),
            }
        }
        if !self.members.contains_key(&member.member_id) {
            return Err(KernelError::UnknownMemberId);
        }
        if check_generation && member.generation_id != self.generation_id {
            return Err(KernelError::IllegalGeneration);
        }
        Ok(())
    }

    pub fn sync(&mut self, input: SyncGroupInput, reply: SyncReply, now_ms: i64) {
        if let Err(e) = self.check_member(&input.member, true) {
            let _ = reply.try_send(sync_error(e));
            return;
        }
        let type_differs = input
            .protocol_type
            .as_ref()
            .is_some_and(|t| self.protocol_type.as_ref() != Some(t));
        let name_differs = input
            .protocol_name
            .as_ref()
            .is_some_and(|n| self.protocol_name.as_ref() != Some(n));
        if type_differs || name_differs {
            let _ = reply.try_send(sync_error(KernelError::InconsistentGroupProtocol));
            return;
        }
        let member_id = input.member.member_id;
        match self.state {
            GroupState::Empty => {
                let _ = reply.try_send(sync_error(KernelError::UnknownMemberId));
            }
            GroupState::PreparingRebalance => {
                let _ = reply.try_send(sync_error(KernelError::RebalanceInProgress));
            }
            GroupState::Stable => {
                let output = self.sync_output(&member_id);
                let _ = reply.try_send(output);
            }
            GroupState::CompletingRebalance => {
                if let Some(member) = self.members.get_mut(&member_id) {
                    member.sync_reply = Some(reply);
                    member.last_heartbeat_ms = now_ms;
                }
                if self.leader_id.as_deref() == Some(member_id.as_str()) {
                    self.apply_assignment(input.assignments);
                }
            }
        }
    }

    fn apply_assignment(&mut self, assignments: Vec<(String, Bytes)>) {
        let mut by_member: BTreeMap<String, Bytes> = assignments.into_iter().collect();
        for (id, member) in self.members.iter_mut() {
            member.assignment = by_member.remove(id).unwrap_or_default();
        }
        self.state = GroupState::Stable;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let output = self.sync_output(&id);
            if let Some(reply) = self.members.get_mut(&id).and_then(|m| m.sync_reply.take()) {
                let _ = reply.try_send(output);
            }
        }
    }

    fn sync_output(&self, member_id: &str) -> SyncGroupOutput {
        SyncGroupOutput {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    pub fn heartbeat(&mut self, member: &MemberGeneration, now_ms: i64) -> Result<(), KernelError> {
        self.check_member(member, true)?;
        if let Some(m) = self.members.get_mut(&member.member_id) {
            m.last_heartbeat_ms = now_ms;
        }
        match self.state {
            GroupState::PreparingRebalance => Err(KernelError::RebalanceInProgress),
            GroupState::Empty => Err(KernelError::UnknownMemberId),
            GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
        }
    }

    pub fn leave(
        &mut self,
        leaving: &[LeavingMember],
        now_ms: i64,
    ) -> Vec<Result<(), KernelError>> {
        let mut removed_any = false;
        let results = leaving
            .iter()
            .map(|m| {
                let id = match &m.group_instance_id {
                    Some(instance) => match self.static_members.get(instance) {
                        Some(id) if !m.member_id.is_empty() && *id != m.member_id => {
                            return Err(KernelError::FencedInstanceId)
                        }
                        Some(id) => id.clone(),
                        None => return Err(KernelError::UnknownMemberId),
                    },
                    None => m.member_id.clone(),
                };
                if self.pending_members.remove(&id).is_some() {
                    return Ok(());
                }
                if !self.members.contains_key(&id) {
                    return Err(KernelError::UnknownMemberId);
                }
                self.remove_member(&id);
                removed_any = true;
                Ok(())
            })
            .collect();
        if removed_any {
            self.on_members_removed(now_ms);
        }
        results
    }

    fn remove_member(&mut self, member_id: &str) {
        let Some(mut member) = self.members.remove(member_id) else {
            return;
        };
        if let Some(reply) = member.join_reply.take() {
            let _ = reply.try_send(join_error(
                KernelError::UnknownMemberId,
                member_id.to_string(),
            ));
        }
        if let Some(reply) = member.sync_reply.take() {
            let _ = reply.try_send(sync_error(KernelError::UnknownMemberId));
        }
        if let Some(instance) = &member.instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
    }

    fn on_members_removed(&mut self, now_ms: i64) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now_ms, 0)
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now_ms),
            GroupState::Empty => {}
        }
    }

    /// Expires members whose session lapsed and pending ids never used, and completes a
    /// rebalance whose delay or deadline has passed.
    pub fn tick(&mut self, now_ms: i64) {
        let pending_before = self.pending_members.len();
        self.pending_members
            .retain(|_, lapse_ms| *lapse_ms > now_ms);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.join_reply.is_none()
                    && m.sync_reply.is_none()
                    && now_ms > m.last_heartbeat_ms + i64::from(m.session_timeout_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member(id);
        }
        if !expired.is_empty() {
            self.on_members_removed(now_ms);
        } else if pending_before != self.pending_members.len() || self.join_is_due(now_ms) {
            self.maybe_complete_join(now_ms);
        }
    }

    fn join_is_due(&self, now_ms: i64) -> bool {
        self.state == GroupState::PreparingRebalance
            && (now_ms >= self.join_not_before_ms || now_ms >= self.rebalance_deadline_ms)
    }

    /// Whether a commit from `member` may be stored now (Kafka's rules: a consumer that assigns
    /// itself commits with generation -1 to a group without members).
    pub fn check_commit(&self, member: &MemberGeneration) -> Result<(), KernelError> {
        if member.generation_id < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(KernelError::RebalanceInProgress);
        }
        self.check_member(member, true)
    }

    /// Topics the members subscribe to, from their consumer protocol metadata; `None` if some
    /// member's metadata cannot be read (then every topic counts as subscribed).
    fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol_name.clone()?;
        let mut topics = BTreeSet::new();
        for member in self.members.values() {
            let mut metadata = member.metadata_for(&protocol);
            if metadata.len() < 2 {
                return None;
            }
            let version = i16::from_be_bytes([metadata[0], metadata[1]]);
            let _ = bytes::Buf::get_i16(&mut metadata);
            let subscription = ConsumerProtocolSubscription::decode(&mut metadata, version).ok()?;
            topics.extend(subscription.topics.iter().map(|t| t.to_string()));
        }
        Some(topics)
    }

    /// Whether OffsetDelete must refuse `topic` because members consume it.
    pub fn is_subscribed_to(&self, topic: &str) -> bool {
        if self.members.is_empty() {
            return false;
        }
        self.subscribed_topics()
            .is_none_or(|topics| topics.contains(topic))
    }

    pub fn listing(&self) -> GroupListing {
        GroupListing {
            group_id: self.id.clone(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            state: self.state.name().to_string(),
        }
    }

    pub fn describe(&self) -> GroupDescription {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let stable = self.state == GroupState::Stable;
        GroupDescription {
            group_id: self.id.clone(),
            state: self.state.name().to_string(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol_name: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: GroupConfig = GroupConfig {
        initial_rebalance_delay_ms: 0,
        min_session_timeout_ms: 1_000,
        max_session_timeout_ms: 60_000,
    };

    fn join_input(member_id: &str, instance: Option<&str>) -> JoinGroupInput {
        JoinGroupInput {
            group_id: "g".to_string(),
            member_id: member_id.to_string(),
            group_instance_id: instance.map(str::to_string),
            client_id: "c".to_string(),
            client_host: "h".to_string(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".to_string(),
            protocols: vec![GroupProtocol {
                name: "range".to_string(),
                metadata: Bytes::from_static(b"m"),
            }],
            require_known_member_id: true,
        }
    }

    /// Joins and returns the receiver of the answer.
    fn join(
        group: &mut Group,
        input: JoinGroupInput,
        now_ms: i64,
        config: &GroupConfig,
    ) -> flume::Receiver<JoinGroupOutput> {
        let (reply, receiver) = flume::bounded(1);
        group.join(input, reply, now_ms, config);
        receiver
    }

    /// A dynamic member through KIP-394: the id first, then the real join.
    fn join_new(group: &mut Group, now_ms: i64) -> (String, flume::Receiver<JoinGroupOutput>) {
        let first = join(group, join_input("", None), now_ms, &CONFIG)
            .try_recv()
            .expect("answered at once");
        assert_eq!(first.error, Some(KernelError::MemberIdRequired));
        let receiver = join(group, join_input(&first.member_id, None), now_ms, &CONFIG);
        (first.member_id, receiver)
    }

    fn sync(
        group: &mut Group,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncGroupOutput {
        let (reply, receiver) = flume::bounded(1);
        let input = SyncGroupInput {
            member: MemberGeneration {
                group_id: "g".to_string(),
                generation_id: group.generation_id(),
                member_id: member_id.to_string(),
                group_instance_id: None,
            },
            protocol_type: Some("consumer".to_string()),
            protocol_name: Some("range".to_string()),
            assignments,
        };
        group.sync(input, reply, 0);
        receiver.try_recv().unwrap_or_default()
    }

    #[test]
    fn first_member_gets_an_id_then_leads_generation_one() {
        let mut group = Group::new("g".to_string());
        let (id, answer) = join_new(&mut group, 0);
        let answer = answer.try_recv().expect("rebalance completed");
        assert_eq!(answer.error, None);
        assert_eq!(answer.generation_id, 1);
        assert_eq!(answer.leader, id);
        assert_eq!(answer.members.len(), 1);
        assert_eq!(group.state(), GroupState::CompletingRebalance);
        let synced = sync(
            &mut group,
            &id,
            vec![(id.clone(), Bytes::from_static(b"a"))],
        );
        assert_eq!(synced.assignment, Bytes::from_static(b"a"));
        assert_eq!(group.state(), GroupState::Stable);
    }

    #[test]
    fn a_second_member_rebalances_the_first_and_both_get_their_assignment() {
        let mut group = Group::new("g".to_string());
        let (first, answer) = join_new(&mut group, 0);
        answer.try_recv().expect("generation 1");
        sync(
            &mut group,
            &first,
            vec![(first.clone(), Bytes::from_static(b"all"))],
        );
        let (second, second_answer) = join_new(&mut group, 10);
        assert!(
            second_answer.try_recv().is_err(),
            "waits for the first to rejoin"
        );
        let member = MemberGeneration {
            group_id: "g".to_string(),
            generation_id: 1,
            member_id: first.clone(),
            group_instance_id: None,
        };
        assert_eq!(
            group.heartbeat(&member, 20),
            Err(KernelError::RebalanceInProgress)
        );
        let first_answer = join(&mut group, join_input(&first, None), 30, &CONFIG);
        let leader = first_answer.try_recv().expect("generation 2");
        assert_eq!(leader.generation_id, 2);
        assert_eq!(leader.members.len(), 2, "the leader sees every member");
        assert!(second_answer
            .try_recv()
            .expect("follower answer")
            .members
            .is_empty());
        let (reply, follower_sync) = flume::bounded(1);
        group.sync(
            SyncGroupInput {
                member: MemberGeneration {
                    generation_id: 2,
                    member_id: second.clone(),
                    ..member.clone()
                },
                protocol_type: None,
                protocol_name: None,
                assignments: Vec::new(),
            },
            reply,
            40,
        );
        assert!(
            follower_sync.try_recv().is_err(),
            "waits for the leader's assignment"
        );
        sync(
            &mut group,
            &first,
            vec![
                (first.clone(), Bytes::from_static(b"p0")),
                (second.clone(), Bytes::from_static(b"p1")),
            ],
        );
        assert_eq!(
            follower_sync.try_recv().expect("assigned").assignment,
            Bytes::from_static(b"p1")
        );
    }

    /// Two dynamic members in a Stable generation: (leader, follower, generation).
    fn two_members(group: &mut Group) -> (String, String, i32) {
        let (first, a) = join_new(group, 0);
        a.try_recv().expect("generation 1");
        let (second, b) = join_new(group, 0);
        let rejoined = join(group, join_input(&first, None), 0, &CONFIG);
        let generation = rejoined.try_recv().expect("generation 2").generation_id;
        b.try_recv().expect("follower answer");
        sync(group, &first, Vec::new());
        assert_eq!(group.state(), GroupState::Stable);
        (first, second, generation)
    }

    #[test]
    fn a_member_that_misses_its_session_is_removed_and_the_rest_rebalance() {
        let mut group = Group::new("g".to_string());
        let (_, second, generation) = two_members(&mut group);
        let heartbeat = |member_id: &str| MemberGeneration {
            group_id: "g".to_string(),
            generation_id: generation,
            member_id: member_id.to_string(),
            group_instance_id: None,
        };
        assert_eq!(group.heartbeat(&heartbeat(&second), 9_000), Ok(()));
        group.tick(10_001);
        assert_eq!(
            group.state(),
            GroupState::PreparingRebalance,
            "first expired"
        );
        let rejoined = join(&mut group, join_input(&second, None), 10_100, &CONFIG);
        let answer = rejoined
            .try_recv()
            .expect("completes with the survivor alone");
        assert_eq!(answer.members.len(), 1);
        assert_eq!(answer.leader, second);
    }

    #[test]
    fn a_restarted_static_member_keeps_the_generation_and_its_assignment() {
        let mut group = Group::new("g".to_string());
        let a = join(&mut group, join_input("", Some("i0")), 0, &CONFIG);
        let old = a
            .try_recv()
            .expect("static members need no id round")
            .member_id;
        sync(
            &mut group,
            &old,
            vec![(old.clone(), Bytes::from_static(b"mine"))],
        );
        let restarted = join(&mut group, join_input("", Some("i0")), 100, &CONFIG)
            .try_recv()
            .expect("answered at once in a stable group");
        assert_eq!(restarted.generation_id, 1, "no rebalance");
        assert_ne!(restarted.member_id, old);
        assert_eq!(group.state(), GroupState::Stable);
        assert_eq!(
            sync(&mut group, &restarted.member_id, Vec::new()).assignment,
            Bytes::from_static(b"mine")
        );
        let fenced = MemberGeneration {
            group_id: "g".to_string(),
            generation_id: 1,
            member_id: old,
            group_instance_id: Some("i0".to_string()),
        };
        assert_eq!(
            group.heartbeat(&fenced, 200),
            Err(KernelError::FencedInstanceId)
        );
    }

    #[test]
    fn the_initial_rebalance_delay_holds_the_first_generation() {
        let config = GroupConfig {
            initial_rebalance_delay_ms: 3_000,
            ..CONFIG
        };
        let mut group = Group::new("g".to_string());
        let mut input = join_input("", None);
        input.require_known_member_id = false;
        let first = join(&mut group, input.clone(), 0, &config);
        let second = join(&mut group, input, 1_000, &config);
        group.tick(2_000);
        assert!(first.try_recv().is_err(), "still inside the delay");
        group.tick(4_000);
        assert_eq!(first.try_recv().expect("done").generation_id, 1);
        assert_eq!(second.try_recv().expect("done").generation_id, 1);
    }

    #[test]
    fn leaving_members_by_id_and_instance_empty_the_group() {
        let mut group = Group::new("g".to_string());
        let (dynamic, a) = join_new(&mut group, 0);
        a.try_recv().expect("a");
        let b = join(&mut group, join_input("", Some("i1")), 0, &CONFIG);
        join(&mut group, join_input(&dynamic, None), 0, &CONFIG)
            .try_recv()
            .expect("generation 2");
        b.try_recv().expect("b");
        let results = group.leave(
            &[
                LeavingMember {
                    member_id: dynamic,
                    group_instance_id: None,
                },
                LeavingMember {
                    member_id: String::new(),
                    group_instance_id: Some("i1".to_string()),
                },
                LeavingMember {
                    member_id: "nobody".to_string(),
                    group_instance_id: None,
                },
            ],
            10,
        );
        assert_eq!(
            results,
            vec![Ok(()), Ok(()), Err(KernelError::UnknownMemberId)]
        );
        assert_eq!(group.state(), GroupState::Empty);
        assert!(!group.has_members());
    }

    #[test]
    fn commits_from_self_assigned_consumers_need_an_empty_group() {
        let mut group = Group::new("g".to_string());
        let simple = MemberGeneration {
            group_id: "g".to_string(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
        };
        assert_eq!(group.check_commit(&simple), Ok(()));
        let (_, answer) = join_new(&mut group, 0);
        answer.try_recv().expect("joined");
        assert_eq!(
            group.check_commit(&simple),
            Err(KernelError::RebalanceInProgress)
        );
        assert!(
            group.is_subscribed_to("orders"),
            "unreadable metadata counts as subscribed"
        );
    }
}
