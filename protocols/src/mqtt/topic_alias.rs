//! Topic aliases the server assigns towards one v5 client (MQTT 5 section 3.3.2.3.4): the
//! first PUBLISH of a topic carries the topic and an alias, later ones an empty topic and the
//! alias. At most the client's Topic Alias Maximum (capped by
//! `MAX_TOPIC_ALIASES_TO_CLIENT`) aliases exist; once all are taken, the least recently used
//! alias is reassigned to the new topic (a PUBLISH with topic and alias replaces the mapping),
//! so a connection whose hot topics change keeps aliasing them.
//!
//! Aliases live as long as the network connection (a reconnect starts afresh), so this state
//! belongs to the connection's `Link`, not the session. Planning is separate from committing:
//! a PUBLISH that is not written (too large for the client) must not create a mapping the
//! client never saw.

use std::collections::HashMap;

use super::constants::MAX_TOPIC_ALIASES_TO_CLIENT;

/// How one PUBLISH uses the alias table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AliasUse {
    /// No alias (aliases off for this client).
    None,
    /// Topic and alias: the client maps the alias to the topic from now on.
    Set(u16),
    /// Empty topic and the alias the client already knows.
    Use(u16),
}

#[derive(Debug, Default)]
pub struct TopicAliases {
    /// Aliases we may assign: 1..=maximum.
    maximum: u16,
    by_topic: HashMap<String, u16>,
    /// Index alias - 1: the topic it stands for and when it was last sent.
    slots: Vec<(String, u64)>,
    /// Counts sends, for least-recently-used order.
    clock: u64,
}

impl TopicAliases {
    /// `client_maximum` is the client's Topic Alias Maximum (0: it takes no aliases).
    pub fn new(client_maximum: u16) -> TopicAliases {
        TopicAliases {
            maximum: client_maximum.min(MAX_TOPIC_ALIASES_TO_CLIENT),
            ..TopicAliases::default()
        }
    }

    /// How a PUBLISH of `topic` should use aliases (changes nothing).
    pub fn plan(&self, topic: &str) -> AliasUse {
        if self.maximum == 0 {
            return AliasUse::None;
        }
        if let Some(alias) = self.by_topic.get(topic) {
            return AliasUse::Use(*alias);
        }
        if self.slots.len() < usize::from(self.maximum) {
            // Aliases are handed out in order and never freed, only reassigned.
            return AliasUse::Set(self.next_free_alias());
        }
        let least_recent = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, used))| *used)
            .map_or(0, |(index, _)| index);
        AliasUse::Set(alias_of(least_recent))
    }

    /// Records that a PUBLISH of `topic` planned as `used` was written.
    pub fn commit(&mut self, topic: &str, used: AliasUse) {
        self.clock += 1;
        let alias = match used {
            AliasUse::None => return,
            AliasUse::Use(alias) | AliasUse::Set(alias) => alias,
        };
        let index = usize::from(alias) - 1;
        assert!(
            alias >= 1 && alias <= self.maximum,
            "alias {alias} out of range"
        );
        if let AliasUse::Set(_) = used {
            if index == self.slots.len() {
                self.slots.push((topic.to_string(), self.clock));
            } else {
                let (old_topic, _) =
                    std::mem::replace(&mut self.slots[index], (topic.to_string(), self.clock));
                self.by_topic.remove(&old_topic);
            }
            self.by_topic.insert(topic.to_string(), alias);
        } else {
            assert_eq!(
                self.slots[index].0, topic,
                "alias {alias} reused for another topic"
            );
            self.slots[index].1 = self.clock;
        }
    }

    fn next_free_alias(&self) -> u16 {
        alias_of(self.slots.len())
    }
}

fn alias_of(index: usize) -> u16 {
    // `index` < maximum <= u16::MAX.
    u16::try_from(index + 1).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(aliases: &mut TopicAliases, topic: &str) -> AliasUse {
        let used = aliases.plan(topic);
        aliases.commit(topic, used);
        used
    }

    #[test]
    fn first_send_sets_an_alias_and_later_sends_use_it() {
        let mut aliases = TopicAliases::new(2);
        assert_eq!(send(&mut aliases, "a"), AliasUse::Set(1));
        assert_eq!(send(&mut aliases, "a"), AliasUse::Use(1));
        assert_eq!(send(&mut aliases, "b"), AliasUse::Set(2));
        assert_eq!(send(&mut aliases, "b"), AliasUse::Use(2));
    }

    #[test]
    fn a_full_table_reassigns_the_least_recently_used_alias() {
        let mut aliases = TopicAliases::new(2);
        send(&mut aliases, "a");
        send(&mut aliases, "b");
        send(&mut aliases, "a");
        assert_eq!(send(&mut aliases, "c"), AliasUse::Set(2));
        assert_eq!(send(&mut aliases, "a"), AliasUse::Use(1));
        assert_eq!(send(&mut aliases, "c"), AliasUse::Use(2));
        assert_eq!(send(&mut aliases, "b"), AliasUse::Set(1));
    }

    #[test]
    fn a_plan_that_is_not_committed_changes_nothing() {
        let mut aliases = TopicAliases::new(1);
        assert_eq!(aliases.plan("a"), AliasUse::Set(1));
        assert_eq!(aliases.plan("a"), AliasUse::Set(1));
        assert_eq!(send(&mut aliases, "a"), AliasUse::Set(1));
        assert_eq!(aliases.plan("a"), AliasUse::Use(1));
    }

    #[test]
    fn no_aliases_without_a_client_maximum_and_at_most_our_cap() {
        let mut none = TopicAliases::new(0);
        assert_eq!(send(&mut none, "a"), AliasUse::None);
        let mut many = TopicAliases::new(u16::MAX);
        for i in 0..MAX_TOPIC_ALIASES_TO_CLIENT {
            assert_eq!(send(&mut many, &format!("t{i}")), AliasUse::Set(i + 1));
        }
        assert_eq!(send(&mut many, "over"), AliasUse::Set(1));
    }
}
