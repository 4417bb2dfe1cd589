//! The retained-message store: the last retained message of each topic. One store per node,
//! owned by shard 0 (other shards reach it over the mesh): retained writes are rare next to
//! ordinary publishes, and one owner gives every subscriber the same answer without
//! replicating payloads to every core. Single-threaded.

use std::collections::HashMap;

use super::constants::MAX_RETAINED_MESSAGES;
use super::message::SharedMessage;
use super::topic;

#[derive(Default)]
pub struct RetainedStore {
    messages: HashMap<String, SharedMessage>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RetainOutcome {
    Stored,
    Deleted,
    /// The store is full (`MAX_RETAINED_MESSAGES`) and the topic is new.
    Full,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Stores `message` as its topic's retained message; an empty payload deletes it.
    pub fn set(&mut self, message: SharedMessage) -> RetainOutcome {
        if message.payload.is_empty() {
            self.messages.remove(&message.topic);
            return RetainOutcome::Deleted;
        }
        if self.messages.len() >= MAX_RETAINED_MESSAGES
            && !self.messages.contains_key(&message.topic)
        {
            return RetainOutcome::Full;
        }
        self.messages.insert(message.topic.clone(), message);
        RetainOutcome::Stored
    }

    /// The retained message of `topic`, if any.
    pub fn get(&self, topic: &str) -> Option<&SharedMessage> {
        self.messages.get(topic)
    }

    /// Retained messages whose topic matches `filter`, expired ones removed.
    pub fn matching(&mut self, filter: &str, now_ms: u64) -> Vec<SharedMessage> {
        self.messages.retain(|_, m| !m.is_expired(now_ms));
        let mut found: Vec<SharedMessage> = self
            .messages
            .values()
            .filter(|m| topic::matches(filter, &m.topic))
            .cloned()
            .collect();
        found.sort_by(|a, b| a.topic.cmp(&b.topic));
        found
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::mqtt::codec::MessageProperties;
    use crate::mqtt::message::Message;

    fn retained(topic: &str, payload: &'static [u8]) -> SharedMessage {
        Arc::new(Message {
            id: 0,
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: 0,
            retain: true,
            properties: MessageProperties::default(),
            publisher: None,
            expires_at_ms: None,
        })
    }

    #[test]
    fn empty_payload_deletes_the_retained_message() {
        let mut store = RetainedStore::default();
        assert_eq!(store.set(retained("a/b", b"1")), RetainOutcome::Stored);
        assert_eq!(store.set(retained("a/c", b"2")), RetainOutcome::Stored);
        assert_eq!(store.set(retained("a/b", b"3")), RetainOutcome::Stored);
        let found = store.matching("a/+", 0);
        assert_eq!(found.len(), 2);
        assert_eq!(&found[0].payload[..], b"3");
        assert_eq!(store.set(retained("a/b", b"")), RetainOutcome::Deleted);
        assert_eq!(store.matching("#", 0).len(), 1);
    }
}
