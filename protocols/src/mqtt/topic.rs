//! Topic names and topic filters: validation (MQTT 3.1.1 section 4.7, v5 section 4.7) and the
//! reference matcher the trie is tested against.

use super::constants::{MAX_TOPIC_BYTES, MAX_TOPIC_LEVELS};

/// Prefix of a shared subscription filter (`$share/GROUP/FILTER`, see `shared`).
pub const SHARED_SUBSCRIPTION_PREFIX: &str = "$share/";

/// A topic name a PUBLISH may carry: non-empty, no wildcards, no NUL, bounded.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && !topic.contains(['+', '#', '\0'])
        && topic.split('/').count() <= MAX_TOPIC_LEVELS
}

/// A topic filter a SUBSCRIBE may carry: `+` fills a whole level, `#` is the whole last level.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_BYTES || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    if levels.len() > MAX_TOPIC_LEVELS {
        return false;
    }
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| match *level {
        "+" => true,
        "#" => i == last,
        other => !other.contains(['+', '#']),
    })
}

/// Whether `filter` matches `topic`. Topics starting with `$` are not matched by a filter
/// starting with a wildcard.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for filter_level in filter.split('/') {
        if filter_level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(level) if filter_level == "+" || filter_level == level => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_whole_levels_only() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(matches("$SYS/+/uptime", "$SYS/broker/uptime"));
    }

    #[test]
    fn malformed_filters_and_names_are_rejected() {
        assert!(valid_topic_filter("a/+/#"));
        assert!(!valid_topic_filter("a/#/b"));
        assert!(!valid_topic_filter("a/b+"));
        assert!(!valid_topic_filter(""));
        assert!(valid_topic_name("a/b"));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name(""));
    }
}
