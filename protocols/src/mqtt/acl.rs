//! Access control lists: the `[[mqtt.acl]]` rules of the config file, compiled once at startup
//! and evaluated in order, first match wins, default allow.
//!
//! A rule applies to a client when its optional `username` / `clientid` equal the client's
//! (a rule with `username` never applies to an anonymous client), and to an action when its
//! `action` is that action or `all`. Its `topic` is a topic filter whose levels may also be
//! `%c` or `%u` (the client id / username, a whole level only, as Mosquitto 2 requires).
//!
//! What a rule's topic covers:
//! - PUBLISH (and a will message): the rule matches when its filter matches the topic name.
//! - SUBSCRIBE: the rule matches when its filter covers the subscription filter, i.e. every
//!   topic the subscription can match is matched by the rule (`secret/#` covers `secret/a`,
//!   `secret/+/x` and `secret/#`, not `#` nor `+/a`). So a deny rule refuses only
//!   subscriptions entirely inside what it denies; a wider subscription (`#`) is granted and
//!   its messages are checked one by one against the subscribe rules with the topic name:
//!   retained ones on subscribe, live ones on delivery (`MqttShard::may_receive`), so a `#`
//!   subscriber gets nothing under a denied `secret/#`. A shared subscription `$share/G/F` is
//!   checked as `F`.
//! - Unlike subscription matching, a leading `+`/`#` in a rule also matches `$` topics: a
//!   rule on `#` covers everything.
//! - A client id or username containing `/`, `+` or `#` never equals a single level; so that
//!   it cannot slip past a `%c`/`%u` rule, such a client is denied by the first rule that
//!   would need the expansion (Mosquitto denies such clients too).
//!
//! Concurrency contract: immutable after `Acl::compile`; shared by all shards behind an `Arc`.
//! A check allocates nothing.

use super::topic::valid_topic_filter;

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Allow,
    Deny,
}

/// What a client does to a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

/// A rule as written in the config file (strings, not yet checked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclRuleSpec {
    /// `allow` or `deny`.
    pub permission: String,
    /// `publish`, `subscribe` or `all`.
    pub action: String,
    /// A topic filter; a level may be `%c` (client id) or `%u` (username).
    pub topic: String,
    pub username: Option<String>,
    pub clientid: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Literal(Box<str>),
    Plus,
    Hash,
    ClientId,
    Username,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    permission: Permission,
    publish: bool,
    subscribe: bool,
    levels: Box<[Level]>,
    username: Option<Box<str>>,
    clientid: Option<Box<str>>,
}

/// The compiled rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<Rule>,
}

/// Who asks.
#[derive(Clone, Copy, Debug)]
pub struct Actor<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

/// Whether `value` can stand for one topic level (so `%c`/`%u` expand safely).
fn single_level(value: &str) -> bool {
    !value.contains(['/', '+', '#'])
}

impl Acl {
    /// Checks and compiles `specs`; the error names the rule (1-based) and what is wrong.
    pub fn compile(specs: &[AclRuleSpec]) -> Result<Acl, String> {
        let mut rules = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let number = index + 1;
            let permission = match spec.permission.as_str() {
                "allow" => Permission::Allow,
                "deny" => Permission::Deny,
                other => {
                    return Err(format!(
                        "mqtt.acl rule {number}: unknown permission {other:?} (allow | deny)"
                    ))
                }
            };
            let (publish, subscribe) = match spec.action.as_str() {
                "publish" => (true, false),
                "subscribe" => (false, true),
                "all" => (true, true),
                other => {
                    return Err(format!(
                    "mqtt.acl rule {number}: unknown action {other:?} (publish | subscribe | all)"
                ))
                }
            };
            if !valid_topic_filter(&spec.topic) {
                return Err(format!(
                    "mqtt.acl rule {number}: invalid topic filter {:?}",
                    spec.topic
                ));
            }
            let mut levels = Vec::new();
            for level in spec.topic.split('/') {
                levels.push(match level {
                    "+" => Level::Plus,
                    "#" => Level::Hash,
                    "%c" => Level::ClientId,
                    "%u" => Level::Username,
                    other if other.contains("%c") || other.contains("%u") => {
                        return Err(format!(
                            "mqtt.acl rule {number}: %c and %u must be a whole topic level \
                             (in {:?})",
                            spec.topic
                        ))
                    }
                    other => Level::Literal(other.into()),
                });
            }
            for (what, value) in [("username", &spec.username), ("clientid", &spec.clientid)] {
                if value.as_deref() == Some("") {
                    return Err(format!("mqtt.acl rule {number}: empty {what}"));
                }
            }
            rules.push(Rule {
                permission,
                publish,
                subscribe,
                levels: levels.into_boxed_slice(),
                username: spec.username.as_deref().map(Box::from),
                clientid: spec.clientid.as_deref().map(Box::from),
            });
        }
        Ok(Acl { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `actor` may do `action` on `topic` (a topic name for publish, a topic filter
    /// for subscribe; a shared subscription's inner filter).
    pub fn allows(&self, actor: Actor<'_>, action: Action, topic: &str) -> bool {
        for rule in &self.rules {
            let wanted = match action {
                Action::Publish => rule.publish,
                Action::Subscribe => rule.subscribe,
            };
            if !wanted {
                continue;
            }
            if let Some(username) = &rule.username {
                if actor.username != Some(&**username) {
                    continue;
                }
            }
            if let Some(clientid) = &rule.clientid {
                if actor.client_id != &**clientid {
                    continue;
                }
            }
            match covers(&rule.levels, actor, topic) {
                Cover::No => {}
                Cover::Yes => return rule.permission == Permission::Allow,
                Cover::UnsafeExpansion => return false,
            }
        }
        true
    }
}

enum Cover {
    No,
    Yes,
    /// The rule needs `%c`/`%u` of a client whose id/username is not a single level (or who
    /// has no username).
    UnsafeExpansion,
}

/// Whether the rule `levels` match every topic `filter` matches (for a topic name: whether
/// they match it).
fn covers(levels: &[Level], actor: Actor<'_>, filter: &str) -> Cover {
    let mut parts = filter.split('/');
    for level in levels.iter() {
        if *level == Level::Hash {
            // `#` is the last level and covers the rest, the parent level included.
            return Cover::Yes;
        }
        let Some(part) = parts.next() else {
            return Cover::No;
        };
        let ok = match level {
            Level::Hash => return Cover::Yes,
            Level::Plus => part != "#",
            Level::Literal(literal) => part == &**literal,
            Level::ClientId | Level::Username => {
                let value = if matches!(level, Level::ClientId) {
                    Some(actor.client_id)
                } else {
                    actor.username
                };
                match value {
                    Some(value) if single_level(value) => part == value,
                    Some(_) => return Cover::UnsafeExpansion,
                    // No username: `%u` stands for nothing, the rule cannot apply.
                    None => false,
                }
            }
        };
        if !ok {
            return Cover::No;
        }
    }
    match parts.next() {
        None => Cover::Yes,
        Some(_) => Cover::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(permission: &str, action: &str, topic: &str) -> AclRuleSpec {
        AclRuleSpec {
            permission: permission.into(),
            action: action.into(),
            topic: topic.into(),
            ..AclRuleSpec::default()
        }
    }

    const ALICE: Actor<'static> = Actor {
        client_id: "c1",
        username: Some("alice"),
    };
    const ANON: Actor<'static> = Actor {
        client_id: "c2",
        username: None,
    };

    #[test]
    fn no_rules_allow_everything() {
        let acl = Acl::compile(&[]).expect("empty");
        assert!(acl.is_empty());
        assert!(acl.allows(ANON, Action::Publish, "a/b"));
        assert!(acl.allows(ANON, Action::Subscribe, "#"));
    }

    #[test]
    fn first_match_wins_and_default_is_allow() {
        let acl = Acl::compile(&[
            rule("allow", "publish", "secret/open"),
            rule("deny", "all", "secret/#"),
        ])
        .expect("rules");
        assert!(acl.allows(ALICE, Action::Publish, "secret/open"));
        assert!(!acl.allows(ALICE, Action::Publish, "secret/closed"));
        assert!(!acl.allows(ALICE, Action::Publish, "secret"));
        assert!(!acl.allows(ALICE, Action::Subscribe, "secret/open"));
        assert!(acl.allows(ALICE, Action::Publish, "public/x"));
    }

    #[test]
    fn subscribe_rules_apply_to_filters_they_cover() {
        let acl = Acl::compile(&[rule("deny", "subscribe", "secret/#")]).expect("rules");
        for denied in ["secret/a", "secret/#", "secret/+/x", "secret", "secret/+"] {
            assert!(!acl.allows(ALICE, Action::Subscribe, denied), "{denied}");
        }
        for allowed in ["#", "+/a", "+/#", "public/#", "secretx"] {
            assert!(acl.allows(ALICE, Action::Subscribe, allowed), "{allowed}");
        }
        // Publish is another action.
        assert!(acl.allows(ALICE, Action::Publish, "secret/a"));
        let plus = Acl::compile(&[rule("deny", "subscribe", "a/+")]).expect("rules");
        assert!(!plus.allows(ALICE, Action::Subscribe, "a/b"));
        assert!(!plus.allows(ALICE, Action::Subscribe, "a/+"));
        assert!(plus.allows(ALICE, Action::Subscribe, "a/#"));
        assert!(plus.allows(ALICE, Action::Subscribe, "a/b/c"));
        let all = Acl::compile(&[rule("deny", "subscribe", "#")]).expect("rules");
        assert!(!all.allows(ALICE, Action::Subscribe, "#"));
        assert!(!all.allows(ALICE, Action::Subscribe, "$SYS/#"));
    }

    #[test]
    fn client_id_and_username_expand_as_whole_levels() {
        let acl = Acl::compile(&[
            rule("allow", "all", "clients/%c/#"),
            rule("allow", "publish", "users/%u"),
            rule("deny", "all", "clients/#"),
            rule("deny", "all", "users/#"),
        ])
        .expect("rules");
        assert!(acl.allows(ALICE, Action::Publish, "clients/c1/x"));
        assert!(acl.allows(ALICE, Action::Subscribe, "clients/c1/#"));
        assert!(!acl.allows(ALICE, Action::Publish, "clients/c2/x"));
        assert!(acl.allows(ALICE, Action::Publish, "users/alice"));
        assert!(!acl.allows(ALICE, Action::Publish, "users/bob"));
        assert!(!acl.allows(ANON, Action::Publish, "users/alice"));
        let sneaky = Actor {
            client_id: "c1/../x",
            username: Some("a+"),
        };
        assert!(!acl.allows(sneaky, Action::Publish, "clients/c1/x"));
        assert!(!acl.allows(sneaky, Action::Publish, "users/a+"));
        assert!(acl.allows(sneaky, Action::Publish, "other"));
    }

    #[test]
    fn username_and_clientid_restrict_a_rule() {
        let acl = Acl::compile(&[
            AclRuleSpec {
                username: Some("alice".into()),
                ..rule("allow", "publish", "admin/#")
            },
            AclRuleSpec {
                clientid: Some("c2".into()),
                ..rule("deny", "publish", "#")
            },
            rule("deny", "publish", "admin/#"),
        ])
        .expect("rules");
        assert!(acl.allows(ALICE, Action::Publish, "admin/x"));
        assert!(!acl.allows(ANON, Action::Publish, "admin/x"));
        assert!(!acl.allows(ANON, Action::Publish, "anything"));
        assert!(acl.allows(ALICE, Action::Publish, "anything"));
    }

    #[test]
    fn bad_rules_are_named() {
        let cases = [
            (rule("maybe", "all", "a"), "rule 1: unknown permission"),
            (rule("allow", "read", "a"), "rule 1: unknown action"),
            (
                rule("allow", "all", "a/#/b"),
                "rule 1: invalid topic filter",
            ),
            (rule("allow", "all", "a/x%c"), "whole topic level"),
            (
                AclRuleSpec {
                    username: Some(String::new()),
                    ..rule("allow", "all", "a")
                },
                "empty username",
            ),
        ];
        for (spec, want) in cases {
            let error = Acl::compile(&[spec]).expect_err("must fail");
            assert!(error.contains(want), "{error}");
        }
    }
}
