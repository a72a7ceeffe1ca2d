//! Routing: the subscription trie and the retained-message store. Owns no socket and knows
//! nothing of sessions beyond an opaque target handle `T` stored with each subscription (the
//! broker stores its session handle there, so routing needs no second lookup).
//!
//! Topic filters are stored level by level; `+` and `#` are ordinary child keys. Matching a
//! topic walks the literal child and the `+` child at each level and collects the `#` child at
//! every node it passes (so `a/#` matches `a`). A filter whose first level is a wildcard never
//! matches a topic starting with `$` [MQTT-4.7.2-1].
//!
//! Shared subscriptions (`$share/{group}/{filter}`, and EMQX's `$queue/{filter}` as the group
//! `$queue`) are stored at the node of their filter, one group per name; the broker picks the
//! member that receives each message.

pub mod retained;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::codec::topic::parse_shared;
use crate::codec::SubscriptionOptions;

/// A client identifier, shared between the session registry and the router.
pub type ClientId = Arc<str>;

/// One subscription of one client.
#[derive(Debug, Clone)]
pub struct Subscription<T> {
    pub client: ClientId,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
    pub target: T,
}

/// The members of one shared subscription group on one filter.
#[derive(Debug)]
pub struct SharedGroup<T> {
    pub name: Box<str>,
    pub members: Vec<Subscription<T>>,
    /// Round-robin cursor; atomic because matching runs under a read lock.
    cursor: AtomicUsize,
}

impl<T> SharedGroup<T> {
    /// The members in round-robin order starting after the last pick: the broker takes the
    /// first that is connected, or the first at all when none is.
    pub fn rotation(&self) -> impl Iterator<Item = &Subscription<T>> {
        let n = self.members.len();
        let start = if n == 0 {
            0
        } else {
            self.cursor.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| &self.members[(start + i) % n])
    }
}

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    direct: HashMap<ClientId, Subscription<T>>,
    shared: Vec<SharedGroup<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            direct: HashMap::new(),
            shared: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.direct.is_empty() && self.shared.is_empty()
    }
}

/// What matched a topic.
pub enum Match<'a, T> {
    Direct(&'a Subscription<T>),
    Shared(&'a SharedGroup<T>),
}

/// The subscription trie.
#[derive(Debug)]
pub struct Router<T> {
    root: Node<T>,
    count: usize,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            root: Node::default(),
            count: 0,
        }
    }
}

impl<T: Clone> Router<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions (shared members included).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces the subscription of `sub.client` to `filter` (a validated filter,
    /// possibly shared). Returns whether it existed before.
    pub fn subscribe(&mut self, filter: &str, sub: Subscription<T>) -> bool {
        let shared = parse_shared(filter);
        let mut node = &mut self.root;
        for level in shared.filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let existed = match shared.group {
            None => node.direct.insert(sub.client.clone(), sub).is_some(),
            Some(group) => {
                let idx = match node.shared.iter().position(|g| &*g.name == group) {
                    Some(i) => i,
                    None => {
                        node.shared.push(SharedGroup {
                            name: group.into(),
                            members: Vec::new(),
                            cursor: AtomicUsize::new(0),
                        });
                        node.shared.len() - 1
                    }
                };
                let members = &mut node.shared[idx].members;
                match members.iter_mut().find(|m| m.client == sub.client) {
                    Some(m) => {
                        *m = sub;
                        true
                    }
                    None => {
                        members.push(sub);
                        false
                    }
                }
            }
        };
        if !existed {
            self.count += 1;
        }
        existed
    }

    /// Removes the subscription of `client` to `filter`; returns whether it existed.
    pub fn unsubscribe(&mut self, filter: &str, client: &str) -> bool {
        let shared = parse_shared(filter);
        let levels: Vec<&str> = shared.filter.split('/').collect();
        let removed = Self::remove(&mut self.root, &levels, shared.group, client);
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn remove(node: &mut Node<T>, levels: &[&str], group: Option<&str>, client: &str) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return match group {
                None => node.direct.remove(client).is_some(),
                Some(group) => {
                    let Some(gi) = node.shared.iter().position(|g| &*g.name == group) else {
                        return false;
                    };
                    let members = &mut node.shared[gi].members;
                    let before = members.len();
                    members.retain(|m| &*m.client != client);
                    let removed = members.len() != before;
                    if members.is_empty() {
                        node.shared.remove(gi);
                    }
                    removed
                }
            };
        };
        let Some(child) = node.children.get_mut(*first) else {
            return false;
        };
        let removed = Self::remove(child, rest, group, client);
        if child.is_empty() {
            node.children.remove(*first);
        }
        removed
    }

    /// Calls `visit` for every subscription and shared group matching `topic`.
    pub fn matches<'a>(&'a self, topic: &str, mut visit: impl FnMut(Match<'a, T>)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, &levels, 0, dollar, &mut visit);
    }

    fn walk<'a>(
        node: &'a Node<T>,
        levels: &[&str],
        depth: usize,
        dollar: bool,
        visit: &mut impl FnMut(Match<'a, T>),
    ) {
        let wildcards_allowed = !(dollar && depth == 0);
        if wildcards_allowed {
            if let Some(hash) = node.children.get("#") {
                Self::emit(hash, visit);
            }
        }
        let Some((level, rest)) = levels.split_first() else {
            Self::emit(node, visit);
            return;
        };
        if let Some(child) = node.children.get(*level) {
            Self::walk(child, rest, depth + 1, dollar, visit);
        }
        if wildcards_allowed {
            if let Some(plus) = node.children.get("+") {
                Self::walk(plus, rest, depth + 1, dollar, visit);
            }
        }
    }

    fn emit<'a>(node: &'a Node<T>, visit: &mut impl FnMut(Match<'a, T>)) {
        for sub in node.direct.values() {
            visit(Match::Direct(sub));
        }
        for group in &node.shared {
            visit(Match::Shared(group));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn sub(client: &str) -> Subscription<()> {
        Subscription {
            client: client.into(),
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            identifier: None,
            target: (),
        }
    }

    fn matched(r: &Router<()>, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        r.matches(topic, |m| match m {
            Match::Direct(s) => out.push(s.client.to_string()),
            Match::Shared(g) => out.push(format!("share:{}", g.name)),
        });
        out.sort();
        out
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut r = Router::new();
        r.subscribe("a/b", sub("exact"));
        r.subscribe("a/+", sub("plus"));
        r.subscribe("a/#", sub("hash"));
        r.subscribe("#", sub("all"));
        r.subscribe("+/b", sub("plusb"));
        r.subscribe("$SYS/#", sub("sys"));
        assert_eq!(
            matched(&r, "a/b"),
            ["all", "exact", "hash", "plus", "plusb"]
        );
        assert_eq!(matched(&r, "a"), ["all", "hash"]);
        assert_eq!(matched(&r, "a/b/c"), ["all", "hash"]);
        assert_eq!(matched(&r, "$SYS/uptime"), ["sys"]);
        assert_eq!(matched(&r, "$SYS"), ["sys"]);
        assert_eq!(r.len(), 6);
    }

    #[test]
    fn unsubscribe_prunes_and_counts() {
        let mut r = Router::new();
        assert!(!r.subscribe("a/b/c", sub("x")));
        assert!(r.subscribe("a/b/c", sub("x")), "second subscribe replaces");
        assert_eq!(r.len(), 1);
        assert!(!r.unsubscribe("a/b", "x"));
        assert!(r.unsubscribe("a/b/c", "x"));
        assert!(!r.unsubscribe("a/b/c", "x"));
        assert!(r.root.is_empty());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn shared_groups_rotate() {
        let mut r = Router::new();
        r.subscribe("$share/g/t/+", sub("m1"));
        r.subscribe("$share/g/t/+", sub("m2"));
        r.subscribe("$queue/t/x", sub("q"));
        assert_eq!(matched(&r, "t/x"), ["share:$queue", "share:g"]);
        let mut firsts = Vec::new();
        for _ in 0..4 {
            r.matches("t/y", |m| {
                if let Match::Shared(g) = m {
                    firsts.push(g.rotation().next().unwrap().client.to_string());
                }
            });
        }
        assert_eq!(firsts, ["m1", "m2", "m1", "m2"]);
        assert!(r.unsubscribe("$share/g/t/+", "m1"));
        assert!(r.unsubscribe("$share/g/t/+", "m2"));
        assert_eq!(matched(&r, "t/y"), Vec::<String>::new());
    }
}
