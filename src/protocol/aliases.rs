//! Topic aliases of one connection, both ways (MQTT 5, §3.3.2.3.4).
//!
//! Inbound, the client sets an alias by sending it with a topic and uses it by sending it with
//! an empty topic; the broker advertises its Topic Alias Maximum and refuses aliases above it.
//! Outbound, the broker assigns aliases 1..=the client's Topic Alias Maximum to the first
//! topics it sends, and then sends those topics as the alias alone. An assignment counts only
//! once the PUBLISH that carries it was really sent ([`OutboundAliases::sent`]).
//!
//! Both maps are allocated when the first alias is set: every connection carries the two
//! fields, few use them.

use std::collections::HashMap;

use crate::codec::ByteStr;

use super::Refusal;

/// The aliases a client set, by alias.
#[derive(Debug, Default)]
pub struct InboundAliases {
    maximum: u16,
    #[allow(clippy::box_collection)] // one pointer in every connection instead of a map
    topics: Option<Box<HashMap<u16, ByteStr>>>,
}

impl InboundAliases {
    /// Aliases up to the broker's Topic Alias Maximum `maximum` (0: none allowed).
    pub fn new(maximum: u16) -> InboundAliases {
        InboundAliases {
            maximum,
            topics: None,
        }
    }

    /// Resolves a PUBLISH's `alias` (if any) in place: an empty `topic` becomes the topic the
    /// alias stands for; a topic with an alias (re)sets it. The topic is kept as a copy of its
    /// own (it lives as long as the connection, and must not pin the read buffer it came in).
    pub fn resolve(&mut self, topic: &mut ByteStr, alias: Option<u16>) -> Result<(), Refusal> {
        let Some(alias) = alias else {
            return Ok(());
        };
        if alias > self.maximum {
            return Err(Refusal::TopicAliasAboveMaximum);
        }
        if topic.is_empty() {
            match self.topics.as_ref().and_then(|m| m.get(&alias)) {
                Some(t) => *topic = t.clone(),
                None => return Err(Refusal::UnknownTopicAlias),
            }
        } else {
            let topics = self.topics.get_or_insert_with(Default::default);
            topics.insert(alias, ByteStr::from_str_copy(topic));
        }
        Ok(())
    }
}

/// How a PUBLISH to the client names its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundTopic {
    /// The topic in full, no alias.
    Full,
    /// The alias alone (the topic is empty in the packet).
    Alias(u16),
    /// The topic in full, setting this new alias.
    SetAlias(u16),
}

/// The aliases the broker assigned, by topic.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    maximum: u16,
    #[allow(clippy::box_collection)] // as `InboundAliases::topics`
    aliases: Option<Box<HashMap<ByteStr, u16>>>,
}

impl OutboundAliases {
    /// Aliases up to the client's Topic Alias Maximum `maximum` (0: the client takes none).
    pub fn new(maximum: u16) -> OutboundAliases {
        OutboundAliases {
            maximum,
            aliases: None,
        }
    }

    /// How to send `topic`: by its alias, setting a new one while there are free ones, or
    /// in full.
    pub fn choose(&self, topic: &ByteStr) -> OutboundTopic {
        if self.maximum == 0 {
            return OutboundTopic::Full;
        }
        let assigned = self.aliases.as_deref();
        if let Some(&alias) = assigned.and_then(|m| m.get(topic)) {
            return OutboundTopic::Alias(alias);
        }
        let used = assigned.map_or(0, HashMap::len);
        if used < usize::from(self.maximum) {
            return OutboundTopic::SetAlias(used as u16 + 1);
        }
        OutboundTopic::Full
    }

    /// The PUBLISH chosen with `choice` was sent: a new alias now stands for `topic`.
    pub fn sent(&mut self, topic: &ByteStr, choice: OutboundTopic) {
        if let OutboundTopic::SetAlias(alias) = choice {
            let aliases = self.aliases.get_or_insert_with(Default::default);
            aliases.insert(topic.clone(), alias);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_aliases_are_set_used_and_bounded() {
        let mut a = InboundAliases::new(2);
        let mut t: ByteStr = "a/b".into();
        assert_eq!(a.resolve(&mut t, Some(1)), Ok(()));
        let mut empty = ByteStr::default();
        assert_eq!(a.resolve(&mut empty, Some(1)), Ok(()));
        assert_eq!(&*empty, "a/b");
        let mut empty = ByteStr::default();
        assert_eq!(
            a.resolve(&mut empty, Some(2)),
            Err(Refusal::UnknownTopicAlias)
        );
        let mut t: ByteStr = "c".into();
        assert_eq!(
            a.resolve(&mut t, Some(3)),
            Err(Refusal::TopicAliasAboveMaximum)
        );
        // Re-set to another topic.
        let mut t: ByteStr = "x".into();
        assert_eq!(a.resolve(&mut t, Some(1)), Ok(()));
        let mut empty = ByteStr::default();
        assert_eq!(a.resolve(&mut empty, Some(1)), Ok(()));
        assert_eq!(&*empty, "x");
        // No alias: nothing changes.
        let mut t: ByteStr = "plain".into();
        assert_eq!(a.resolve(&mut t, None), Ok(()));
        assert_eq!(&*t, "plain");
    }

    #[test]
    fn outbound_aliases_count_only_once_sent() {
        let mut a = OutboundAliases::new(2);
        let (x, y, z): (ByteStr, ByteStr, ByteStr) = ("x".into(), "y".into(), "z".into());
        let first = a.choose(&x);
        assert_eq!(first, OutboundTopic::SetAlias(1));
        // Not sent (too large for the client, say): the alias stays free.
        assert_eq!(a.choose(&y), OutboundTopic::SetAlias(1));
        a.sent(&x, first);
        assert_eq!(a.choose(&x), OutboundTopic::Alias(1));
        let second = a.choose(&y);
        assert_eq!(second, OutboundTopic::SetAlias(2));
        a.sent(&y, second);
        assert_eq!(a.choose(&z), OutboundTopic::Full);
        assert_eq!(OutboundAliases::new(0).choose(&x), OutboundTopic::Full);
    }
}
