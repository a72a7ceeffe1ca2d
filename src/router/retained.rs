//! Retained messages, stored in a trie of topic levels so that a wildcard subscription finds
//! its retained messages without scanning all of them.

use std::collections::HashMap;

/// Retained messages keyed by topic.
#[derive(Debug)]
pub struct RetainedStore<V> {
    root: Node<V>,
    count: usize,
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<V> Default for RetainedStore<V> {
    fn default() -> Self {
        RetainedStore {
            root: Node::default(),
            count: 0,
        }
    }
}

impl<V> RetainedStore<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn contains(&self, topic: &str) -> bool {
        let mut node = &self.root;
        for level in topic.split('/') {
            match node.children.get(level) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.value.is_some()
    }

    /// Stores `value` for `topic`, returning the value it replaced.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.count += 1;
        }
        old
    }

    /// Removes the retained message of `topic`.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let levels: Vec<&str> = topic.split('/').collect();
        let old = Self::remove_at(&mut self.root, &levels);
        if old.is_some() {
            self.count -= 1;
        }
        old
    }

    fn remove_at(node: &mut Node<V>, levels: &[&str]) -> Option<V> {
        let Some((first, rest)) = levels.split_first() else {
            return node.value.take();
        };
        let child = node.children.get_mut(*first)?;
        let old = Self::remove_at(child, rest);
        if child.value.is_none() && child.children.is_empty() {
            node.children.remove(*first);
        }
        old
    }

    /// Calls `visit` with every retained message whose topic matches `filter` (a filter without
    /// a share prefix). Wildcards at the first level do not match `$` topics [MQTT-4.7.2-1].
    pub fn matching<'a>(&'a self, filter: &str, mut visit: impl FnMut(&'a V)) {
        self.matching_while(filter, |v| {
            visit(v);
            true
        });
    }

    /// [`Self::matching`] that stops as soon as `visit` returns false (a subscriber's queue is
    /// full: the rest of a large retained set is not even walked).
    pub fn matching_while<'a>(&'a self, filter: &str, mut visit: impl FnMut(&'a V) -> bool) {
        let levels: Vec<&str> = filter.split('/').collect();
        Self::walk(&self.root, &levels, 0, &mut visit);
    }

    /// Visits what `levels` match below `node`; false once `visit` asked to stop.
    fn walk<'a>(
        node: &'a Node<V>,
        levels: &[&str],
        depth: usize,
        visit: &mut impl FnMut(&'a V) -> bool,
    ) -> bool {
        let Some((level, rest)) = levels.split_first() else {
            return node.value.as_ref().is_none_or(&mut *visit);
        };
        match *level {
            "#" => {
                // `#` matches the parent level too ("a/#" matches "a").
                if depth > 0 && !node.value.as_ref().is_none_or(&mut *visit) {
                    return false;
                }
                node.children
                    .iter()
                    .filter(|(name, _)| depth > 0 || !name.starts_with('$'))
                    .all(|(_, child)| Self::visit_all(child, visit))
            }
            "+" => node
                .children
                .iter()
                .filter(|(name, _)| depth > 0 || !name.starts_with('$'))
                .all(|(_, child)| Self::walk(child, rest, depth + 1, visit)),
            literal => node
                .children
                .get(literal)
                .is_none_or(|child| Self::walk(child, rest, depth + 1, visit)),
        }
    }

    fn visit_all<'a>(node: &'a Node<V>, visit: &mut impl FnMut(&'a V) -> bool) -> bool {
        node.value.as_ref().is_none_or(&mut *visit)
            && node
                .children
                .values()
                .all(|child| Self::visit_all(child, visit))
    }

    /// Every retained message, for persistence and inspection.
    pub fn for_each<'a>(&'a self, mut visit: impl FnMut(&'a V)) {
        Self::visit_all(&self.root, &mut |v| {
            visit(v);
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::topic::matches;

    /// A SUBSCRIBE collects retained copies only while its queue has room: the walk stops
    /// there instead of visiting every retained message.
    #[test]
    fn matching_while_stops_when_told() {
        let mut store = RetainedStore::new();
        for i in 0..1000 {
            store.insert(&format!("a/{i}/x"), i);
        }
        for filter in ["#", "a/#", "a/+/x", "+/+/+"] {
            let mut visited = 0;
            store.matching_while(filter, |_| {
                visited += 1;
                visited < 10
            });
            assert_eq!(visited, 10, "{filter}");
            let mut all = 0;
            store.matching(filter, |_| all += 1);
            assert_eq!(all, 1000, "{filter}");
        }
    }

    #[test]
    fn agrees_with_the_reference_matcher() {
        let topics = [
            "a", "a/b", "a/b/c", "a//c", "/a", "$SYS/x", "$SYS", "b/b", "a/c",
        ];
        let filters = [
            "#", "+", "a/#", "a/+", "+/b", "a/+/c", "$SYS/#", "+/+", "/+", "a/b", "$SYS",
        ];
        let mut store = RetainedStore::new();
        for t in topics {
            store.insert(t, t.to_string());
        }
        assert_eq!(store.len(), topics.len());
        for f in filters {
            let mut got = Vec::new();
            store.matching(f, |v| got.push(v.clone()));
            got.sort();
            let mut want: Vec<String> = topics
                .iter()
                .filter(|t| matches(f, t))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(got, want, "filter {f}");
        }
    }

    #[test]
    fn insert_replace_remove() {
        let mut s = RetainedStore::new();
        assert_eq!(s.insert("a/b", 1), None);
        assert_eq!(s.insert("a/b", 2), Some(1));
        assert!(s.contains("a/b"));
        assert!(!s.contains("a"));
        assert_eq!(s.remove("a"), None);
        assert_eq!(s.remove("a/b"), Some(2));
        assert!(s.is_empty());
        assert!(s.root.children.is_empty(), "pruned");
    }
}
