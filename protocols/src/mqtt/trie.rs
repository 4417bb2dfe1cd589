//! A topic-filter trie: filters are inserted level by level; matching a topic name walks the
//! exact level, `+` and `#` children, so a publish costs O(levels x wildcard branches), not
//! O(subscriptions).
//!
//! One trie type serves both uses on a shard: the local trie (filter -> this shard's sessions
//! with their options) and the interest trie (filter -> shards with at least one subscriber),
//! which every shard keeps identical by sequenced broadcast (see `engine`). Single-threaded.

use std::collections::HashMap;

struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    subscribers: Vec<(K, V)>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            subscribers: Vec::new(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
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
            node = node.children.entry(level.into()).or_default();
        }
        if let Some(slot) = node.subscribers.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        node.subscribers.push((key, value));
        self.entries += 1;
        None
    }

    /// Removes `key` from `filter`, pruning nodes left empty.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, key);
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
            match node.children.get(level) {
                Some(child) => node = child,
                None => return 0,
            }
        }
        node.subscribers.len()
    }

    /// Calls `visit` for every (key, value) whose filter matches the topic name `topic`.
    /// A key subscribed through several matching filters is visited once per filter.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&K, &V)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        walk(&self.root, &levels, 0, dollar, &mut visit);
    }
}

fn remove_at<K: PartialEq, V>(node: &mut Node<K, V>, levels: &[&str], key: &K) -> Option<V> {
    let Some((first, rest)) = levels.split_first() else {
        let index = node.subscribers.iter().position(|(k, _)| k == key)?;
        return Some(node.subscribers.swap_remove(index).1);
    };
    let child = node.children.get_mut(*first)?;
    let removed = remove_at(child, rest, key);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn walk<K, V>(
    node: &Node<K, V>,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    visit: &mut impl FnMut(&K, &V),
) {
    // `$` topics are not matched by a wildcard in the first level.
    let wildcards_allowed = !(depth == 0 && dollar);
    if wildcards_allowed {
        if let Some(hash) = node.children.get("#") {
            hash.subscribers.iter().for_each(|(k, v)| visit(k, v));
        }
    }
    let Some(level) = levels.get(depth) else {
        node.subscribers.iter().for_each(|(k, v)| visit(k, v));
        return;
    };
    if wildcards_allowed {
        if let Some(plus) = node.children.get("+") {
            walk(plus, levels, depth + 1, dollar, visit);
        }
    }
    if let Some(exact) = node.children.get(*level) {
        walk(exact, levels, depth + 1, dollar, visit);
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
}
