//! Shared subscriptions (`$share/GROUP/FILTER`, MQTT 5 section 4.8.2; accepted from 3.1/3.1.1
//! clients too, as Mosquitto and EMQX do): each message matching FILTER goes to one member of
//! GROUP, whichever shard the member is on.
//!
//! Membership is replicated: every shard keeps, per (FILTER, GROUP), the same member list
//! (shard, client id) in its `shared` trie, changed only by the member's shard through the
//! sequenced interest broadcast (see `engine`). The shard where a publish lands picks the member
//! round-robin from its own copy (a per-shard cursor, so no cross-shard coordination per
//! message) and forwards the message to that member's shard only. Members are kept sorted, so
//! every shard holds the same list whatever order the broadcasts of different shards arrived in.
//!
//! Concurrency contract: single-threaded (the `next` cursor is a `Cell` so a pick needs only a
//! shared borrow of the trie).

use std::cell::Cell;
use std::sync::Arc;

use super::topic::{valid_topic_filter, SHARED_SUBSCRIPTION_PREFIX};

/// A topic filter as a SUBSCRIBE carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind<'a> {
    /// An ordinary filter.
    Plain,
    /// `$share/GROUP/FILTER`.
    Shared { group: &'a str, filter: &'a str },
    /// Starts with `$share/` but has no group, a group with `+` or `#`, or a bad inner filter.
    Invalid,
}

/// Classifies `filter` (which must already be a valid topic filter to be `Plain`).
pub fn parse(filter: &str) -> FilterKind<'_> {
    let Some(rest) = filter.strip_prefix(SHARED_SUBSCRIPTION_PREFIX) else {
        return FilterKind::Plain;
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return FilterKind::Invalid;
    };
    if group.is_empty() || group.contains(['+', '#']) || !valid_topic_filter(inner) {
        return FilterKind::Invalid;
    }
    FilterKind::Shared {
        group,
        filter: inner,
    }
}

/// One member of a group: the shard its session is on and its client id.
pub type Member = (u16, Arc<str>);

/// The members of one (FILTER, GROUP) as every shard sees them.
pub struct SharedGroup {
    /// The subscription's filter as the members subscribed it (`$share/GROUP/FILTER`): the key
    /// of the subscription in each member's session.
    pub share_filter: Arc<str>,
    /// Sorted by (shard, client id).
    members: Vec<Member>,
    /// This shard's round-robin cursor.
    next: Cell<usize>,
}

impl SharedGroup {
    pub fn new(group: &str, filter: &str) -> SharedGroup {
        SharedGroup {
            share_filter: Arc::from(format!("{SHARED_SUBSCRIPTION_PREFIX}{group}/{filter}")),
            members: Vec::new(),
            next: Cell::new(0),
        }
    }

    /// Adds a member; false if it was one already.
    pub fn add(&mut self, shard: u16, client: Arc<str>) -> bool {
        let member = (shard, client);
        match self.members.binary_search(&member) {
            Ok(_) => false,
            Err(index) => {
                self.members.insert(index, member);
                true
            }
        }
    }

    /// Removes a member; false if it was not one.
    pub fn remove(&mut self, shard: u16, client: &str) -> bool {
        let before = self.members.len();
        self.members
            .retain(|(s, c)| !(*s == shard && &**c == client));
        self.members.len() != before
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The member that gets the next message (round-robin), `None` for an empty group.
    pub fn pick(&self) -> Option<&Member> {
        if self.members.is_empty() {
            return None;
        }
        let index = self.next.get() % self.members.len();
        self.next.set(index + 1);
        self.members.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_filters_are_parsed_and_bad_ones_rejected() {
        assert_eq!(parse("a/b"), FilterKind::Plain);
        assert_eq!(parse("$shared/x"), FilterKind::Plain);
        assert_eq!(
            parse("$share/g1/a/+/#"),
            FilterKind::Shared {
                group: "g1",
                filter: "a/+/#"
            }
        );
        for bad in [
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/a/#/b",
        ] {
            assert_eq!(parse(bad), FilterKind::Invalid, "{bad}");
        }
    }

    #[test]
    fn members_are_picked_round_robin_in_a_shard_independent_order() {
        let mut one = SharedGroup::new("g", "t");
        let mut two = SharedGroup::new("g", "t");
        for (shard, client) in [(1, "b"), (0, "c"), (1, "a")] {
            assert!(one.add(shard, Arc::from(client)));
        }
        for (shard, client) in [(1, "a"), (1, "b"), (0, "c")] {
            assert!(two.add(shard, Arc::from(client)));
        }
        assert!(!one.add(1, Arc::from("a")));
        assert_eq!(&*one.share_filter, "$share/g/t");
        let picks: Vec<Member> = (0..6).filter_map(|_| one.pick().cloned()).collect();
        let again: Vec<Member> = (0..6).filter_map(|_| two.pick().cloned()).collect();
        assert_eq!(picks, again);
        for member in &picks[..3] {
            assert_eq!(picks.iter().filter(|m| *m == member).count(), 2);
        }
        assert!(one.remove(1, "b"));
        assert!(!one.remove(1, "b"));
        assert_eq!(one.len(), 2);
        assert!(one.remove(0, "c") && one.remove(1, "a"));
        assert!(one.is_empty() && one.pick().is_none());
    }
}
