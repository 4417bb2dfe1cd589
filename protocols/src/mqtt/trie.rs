//! A topic-filter trie: filters are inserted level by level; matching a topic name walks the
//! exact level, `+` and `#` children, so a publish costs O(levels x wildcard branches), not
//! O(subscriptions).
//!
//! One trie type serves every use on a shard: the local trie (filter -> this shard's sessions
//! with their options), the interest trie (filter -> shards with at least one subscriber) and
//! the shared trie (filter -> shared subscription groups with their members); every shard keeps
//! the last two identical by sequenced broadcast (see `engine`). Single-threaded.

use std::collections::HashMap;

/// Exact-level children. foldhash: several times faster than SipHash for short level names
/// (the trie walk was the top symbol of a 1 -> 1 QoS 0 profile), seeded per process so
/// clients cannot precompute colliding level names.
type Children<K, V> = HashMap<Box<str>, Node<K, V>, foldhash::fast::RandomState>;

struct Node<K, V> {
    children: Children<K, V>,
    /// The `+` child: kept out of `children` so a walk needs no lookup to find it.
    plus: Option<Box<Node<K, V>>>,
    /// The `#` child (a filter ends there, so only its subscribers matter).
    hash: Option<Box<Node<K, V>>>,
    subscribers: Vec<(K, V)>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: Children::default(),
            plus: None,
            hash: None,
            subscribers: Vec::new(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
    }

    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self.children.entry(level.into()).or_default(),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
            }
        }
    }
}

/// The first level of `rest` and what follows its `/` (`None` after the last level), as
/// `str::split('/')` would yield them, without collecting the levels.
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.find('/') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    }
}

pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    entries: usize,
}

impl<K, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        SubscriptionTrie {
            root: Node::default(),
            entries: 0,
        }
    }
}

impl<K: PartialEq, V> SubscriptionTrie<K, V> {
    /// (filter, key) pairs stored.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Adds `key` under `filter`, replacing (and returning) its previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        if let Some(slot) = node.subscribers.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        node.subscribers.push((key, value));
        self.entries += 1;
        None
    }

    /// The value of `key` stored under exactly `filter`.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_mut(level)?;
        }
        node.subscribers
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Removes `key` from `filter`, pruning nodes left empty.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let removed = remove_at(&mut self.root, Some(filter), key);
        if removed.is_some() {
            assert!(self.entries > 0, "trie entry count underflow");
            self.entries -= 1;
        }
        removed
    }

    /// Subscribers stored under exactly `filter`.
    pub fn subscribers_of(&self, filter: &str) -> usize {
        let mut node = &self.root;
        for level in filter.split('/') {
            match node.child(level) {
                Some(child) => node = child,
                None => return 0,
            }
        }
        node.subscribers.len()
    }

    /// Calls `visit` for every (key, value) whose filter matches the topic name `topic`.
    /// A key subscribed through several matching filters is visited once per filter.
    /// No allocation: levels are split off as the walk descends.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&K, &V)) {
        let dollar = topic.starts_with('$');
        walk(&self.root, Some(topic), true, dollar, &mut visit);
    }
}

/// `rest`: the filter levels below `node` still to follow (`None`: `node` is the filter's).
fn remove_at<K: PartialEq, V>(node: &mut Node<K, V>, rest: Option<&str>, key: &K) -> Option<V> {
    let Some(rest) = rest else {
        let index = node.subscribers.iter().position(|(k, _)| k == key)?;
        return Some(node.subscribers.swap_remove(index).1);
    };
    let (level, below) = split_level(rest);
    let child = node.child_mut(level)?;
    let removed = remove_at(child, below, key);
    if child.is_empty() {
        node.remove_child(level);
    }
    removed
}

/// `rest`: the topic levels below `node` still to match (`None`: all matched at `node`).
fn walk<K, V>(
    node: &Node<K, V>,
    rest: Option<&str>,
    first_level: bool,
    dollar: bool,
    visit: &mut impl FnMut(&K, &V),
) {
    // `$` topics are not matched by a wildcard in the first level.
    let wildcards_allowed = !(first_level && dollar);
    if wildcards_allowed {
        if let Some(hash) = node.hash.as_deref() {
            hash.subscribers.iter().for_each(|(k, v)| visit(k, v));
        }
    }
    let Some(rest) = rest else {
        node.subscribers.iter().for_each(|(k, v)| visit(k, v));
        return;
    };
    let (level, below) = split_level(rest);
    if wildcards_allowed {
        if let Some(plus) = node.plus.as_deref() {
            walk(plus, below, false, dollar, visit);
        }
    }
    if !node.children.is_empty() {
        if let Some(exact) = node.children.get(level) {
            walk(exact, below, false, dollar, visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::topic;
    use super::*;

    fn matching(trie: &SubscriptionTrie<u32, &'static str>, topic: &str) -> Vec<(u32, String)> {
        let mut found = Vec::new();
        trie.for_each_match(topic, |k, v| found.push((*k, v.to_string())));
        found.sort();
        found
    }

    #[test]
    fn wildcard_subscribers_receive_matching_topics_only() {
        let mut trie = SubscriptionTrie::default();
        trie.insert("a/b/c", 1, "exact");
        trie.insert("a/+/c", 2, "plus");
        trie.insert("a/#", 3, "hash");
        trie.insert("#", 4, "all");
        trie.insert("+/+", 5, "two");
        assert_eq!(
            matching(&trie, "a/b/c"),
            vec![
                (1, "exact".into()),
                (2, "plus".into()),
                (3, "hash".into()),
                (4, "all".into())
            ]
        );
        assert_eq!(
            matching(&trie, "a/x"),
            vec![(3, "hash".into()), (4, "all".into()), (5, "two".into())]
        );
        // `a/#` also matches its parent level `a`.
        assert_eq!(
            matching(&trie, "a"),
            vec![(3, "hash".into()), (4, "all".into())]
        );
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards() {
        let mut trie = SubscriptionTrie::default();
        trie.insert("#", 1, "all");
        trie.insert("+/broker/uptime", 2, "plus");
        trie.insert("$SYS/#", 3, "sys");
        assert_eq!(
            matching(&trie, "$SYS/broker/uptime"),
            vec![(3, "sys".into())]
        );
    }

    #[test]
    fn removing_the_last_subscriber_prunes_the_branch() {
        let mut trie = SubscriptionTrie::default();
        assert_eq!(trie.insert("a/b", 1, "x"), None);
        assert_eq!(trie.insert("a/b", 1, "y"), Some("x"));
        assert_eq!(trie.get_mut("a/b", &1).map(|v| *v), Some("y"));
        assert!(trie.get_mut("a", &1).is_none() && trie.get_mut("a/b/c", &1).is_none());
        trie.insert("a/b", 2, "z");
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.subscribers_of("a/b"), 2);
        assert_eq!(trie.remove("a/b", &1), Some("y"));
        assert_eq!(trie.remove("a/b", &1), None);
        assert_eq!(trie.remove("a/b", &2), Some("z"));
        assert!(trie.is_empty());
        assert!(trie.root.is_empty());
    }

    #[test]
    fn trie_agrees_with_the_reference_matcher() {
        let filters = [
            "a", "a/b", "a/+", "a/#", "+/b", "#", "+", "+/+/c", "a/b/#", "$SYS/#", "/+", "+/#",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "x/b", "/b", "$SYS/x", "$SYS", "a//c", "b",
        ];
        let mut trie = SubscriptionTrie::default();
        for (i, filter) in filters.iter().enumerate() {
            trie.insert(filter, i as u32, *filter);
        }
        for topic_name in topics {
            let mut want: Vec<u32> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| topic::matches(f, topic_name))
                .map(|(i, _)| i as u32)
                .collect();
            want.sort();
            let got: Vec<u32> = matching(&trie, topic_name)
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(got, want, "topic {topic_name}");
        }
    }

    /// Random filters and topics over a small alphabet (seeded LCG, replayable): the trie
    /// agrees with `topic::matches` after inserts and after removing half the filters.
    #[test]
    fn random_filters_agree_with_the_reference_matcher() {
        let mut seed: u64 = 0x5eed_2026;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let words = ["a", "b", "", "$s", "c"];
        let mut filters: Vec<String> = Vec::new();
        for _ in 0..300 {
            let levels = 1 + next(4);
            let mut parts: Vec<&str> = (0..levels)
                .map(|_| match next(6) {
                    0 => "+",
                    n => words[(n - 1) as usize],
                })
                .collect();
            if next(4) == 0 {
                parts.push("#");
            }
            filters.push(parts.join("/"));
        }
        let topics: Vec<String> = (0..300)
            .map(|_| {
                (0..1 + next(4))
                    .map(|_| words[next(words.len() as u64) as usize])
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        let mut trie: SubscriptionTrie<u32, &'static str> = SubscriptionTrie::default();
        for (i, filter) in filters.iter().enumerate() {
            trie.insert(filter, i as u32, "v");
        }
        let check = |trie: &SubscriptionTrie<u32, &'static str>, live: &dyn Fn(usize) -> bool| {
            for topic_name in &topics {
                let mut want: Vec<u32> = filters
                    .iter()
                    .enumerate()
                    .filter(|(i, f)| live(*i) && topic::matches(f, topic_name))
                    .map(|(i, _)| i as u32)
                    .collect();
                want.sort();
                let got: Vec<u32> = matching(trie, topic_name)
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                assert_eq!(got, want, "topic {topic_name:?}");
            }
        };
        check(&trie, &|_| true);
        for (i, filter) in filters.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            assert_eq!(
                trie.remove(filter, &(i as u32)),
                Some("v"),
                "filter {filter:?}"
            );
        }
        check(&trie, &|i| i % 2 == 1);
        for (i, filter) in filters.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
            assert_eq!(trie.remove(filter, &(i as u32)), Some("v"));
        }
        assert!(trie.is_empty() && trie.root.is_empty());
    }
}
