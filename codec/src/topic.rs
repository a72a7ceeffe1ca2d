//! Topic names and topic filters (§4.7) and the zero-copy string type that carries them.
//!
//! A topic *name* (in PUBLISH and wills) never contains a wildcard [MQTT-3.3.2-2]. A topic
//! *filter* (in SUBSCRIBE and UNSUBSCRIBE) may contain `+` alone in a level [MQTT-4.7.1-2] and `#`
//! alone in the last level [MQTT-4.7.1-1]. Both are at least one character long [MQTT-4.7.3-1]
//! (a v5 PUBLISH may have an empty topic name when it carries a Topic Alias). A shared
//! subscription filter is `$share/{ShareName}/{filter}` with a non-empty ShareName free of `/`,
//! `+` and `#` [MQTT-4.8.2-1] [MQTT-4.8.2-2].

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use super::error::DecodeError;

/// An immutable UTF-8 string backed by `Bytes`, so that a topic decoded from a packet is shared
/// with every copy of the message instead of being copied.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// Validates an MQTT UTF-8 Encoded String: well-formed UTF-8 without surrogates
    /// [MQTT-1.5.4-1] and without U+0000 [MQTT-1.5.4-2].
    pub fn from_utf8(bytes: Bytes) -> Result<Self, DecodeError> {
        if std::str::from_utf8(&bytes).is_err() {
            return Err(DecodeError::malformed(
                "[MQTT-1.5.4-1]",
                "string is not well-formed UTF-8",
            ));
        }
        if bytes.contains(&0) {
            return Err(DecodeError::malformed(
                "[MQTT-1.5.4-2]",
                "string contains U+0000",
            ));
        }
        Ok(ByteStr(bytes))
    }

    /// Copies a static or owned string into a `ByteStr`.
    pub fn from_str_copy(s: &str) -> Self {
        ByteStr(Bytes::copy_from_slice(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validates or copies from `str`, and `Bytes` is immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> Self {
        ByteStr::from_str_copy(s)
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        ByteStr(Bytes::from(s.into_bytes()))
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a topic name (PUBLISH, will topic). Emptiness is checked by the caller, which knows
/// whether a Topic Alias stands in for the name.
pub fn validate_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::malformed(
            "[MQTT-3.3.2-2]",
            "topic name contains a wildcard character",
        ));
    }
    Ok(())
}

/// Checks the wildcard syntax of a topic filter, including the structure of a shared
/// subscription filter.
pub fn validate_topic_filter(filter: &str) -> Result<(), DecodeError> {
    if filter.is_empty() {
        return Err(DecodeError::malformed(
            "[MQTT-4.7.3-1]",
            "topic filter is empty",
        ));
    }
    let inner = match filter.strip_prefix("$share/") {
        Some(rest) => {
            let Some((group, inner)) = rest.split_once('/') else {
                return Err(DecodeError::malformed(
                    "[MQTT-4.8.2-2]",
                    "shared subscription has no topic filter after the share name",
                ));
            };
            if group.is_empty() || group.contains(['+', '#']) {
                return Err(DecodeError::malformed(
                    "[MQTT-4.8.2-1]",
                    "share name is empty or contains a wildcard",
                ));
            }
            if inner.is_empty() {
                return Err(DecodeError::malformed(
                    "[MQTT-4.8.2-2]",
                    "shared subscription has an empty topic filter",
                ));
            }
            inner
        }
        None => filter,
    };
    let mut levels = inner.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(DecodeError::malformed(
                "[MQTT-4.7.1-1]",
                "'#' must be alone in the last level of a topic filter",
            ));
        }
        if level.contains('+') && level != "+" {
            return Err(DecodeError::malformed(
                "[MQTT-4.7.1-2]",
                "'+' must occupy a whole level of a topic filter",
            ));
        }
    }
    Ok(())
}

/// A topic filter split into its share group (if any) and the filter proper.
///
/// `$share/g/a/b` is group `g`, filter `a/b`; EMQX's `$queue/a/b` is the group `$queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: Option<&'a str>,
    pub filter: &'a str,
}

/// Splits a validated filter into share group and filter.
pub fn parse_shared(filter: &str) -> SharedFilter<'_> {
    if let Some(rest) = filter.strip_prefix("$share/") {
        if let Some((group, inner)) = rest.split_once('/') {
            return SharedFilter {
                group: Some(group),
                filter: inner,
            };
        }
    }
    if let Some(inner) = filter.strip_prefix("$queue/") {
        if !inner.is_empty() {
            return SharedFilter {
                group: Some("$queue"),
                filter: inner,
            };
        }
    }
    SharedFilter {
        group: None,
        filter,
    }
}

/// Whether a filter uses `+` or `#`.
pub fn has_wildcards(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

/// Whether `topic` matches `filter` (§4.7): `+` matches one level, `#` the parent and any
/// number of levels below it, and a filter starting with a wildcard never matches a topic
/// starting with `$` [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "a//b",
            "$share/g/a/#",
            "$SYS/#",
            "/+",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", "[MQTT-4.7.3-1]"),
            ("a/#/b", "[MQTT-4.7.1-1]"),
            ("a#", "[MQTT-4.7.1-1]"),
            ("a/b#", "[MQTT-4.7.1-1]"),
            ("a+/b", "[MQTT-4.7.1-2]"),
            ("a/+b", "[MQTT-4.7.1-2]"),
            ("$share/g", "[MQTT-4.8.2-2]"),
            ("$share//a", "[MQTT-4.8.2-1]"),
            ("$share/g+/a", "[MQTT-4.8.2-1]"),
            ("$share/g/", "[MQTT-4.8.2-2]"),
        ];
        for (filter, clause) in bad {
            assert_eq!(
                validate_topic_filter(filter).map_err(|e| e.clause()),
                Err(clause),
                "{filter}"
            );
        }
    }

    #[test]
    fn names() {
        assert!(validate_topic_name("a/b/c").is_ok());
        assert_eq!(
            validate_topic_name("a/+").unwrap_err().clause(),
            "[MQTT-3.3.2-2]"
        );
        assert_eq!(
            validate_topic_name("#").unwrap_err().clause(),
            "[MQTT-3.3.2-2]"
        );
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/a", true),
            ("+", "/a", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/c", false),
            ("a/+/c", "a//c", true),
            ("sport/tennis/#", "sport/tennis", true),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn shared() {
        assert_eq!(
            parse_shared("$share/g/a/b"),
            SharedFilter {
                group: Some("g"),
                filter: "a/b"
            }
        );
        assert_eq!(
            parse_shared("$queue/a"),
            SharedFilter {
                group: Some("$queue"),
                filter: "a"
            }
        );
        assert_eq!(
            parse_shared("a/b"),
            SharedFilter {
                group: None,
                filter: "a/b"
            }
        );
    }

    #[test]
    fn byte_str_rejects_nul_and_bad_utf8() {
        assert!(ByteStr::from_utf8(Bytes::from_static(b"a\0b")).is_err());
        assert!(ByteStr::from_utf8(Bytes::from_static(&[0xED, 0xA0, 0x80])).is_err()); // surrogate
        assert!(ByteStr::from_utf8(Bytes::from_static(&[0xC0, 0x80])).is_err()); // overlong NUL
        assert_eq!(
            ByteStr::from_utf8(Bytes::from_static("été".as_bytes()))
                .unwrap()
                .as_str(),
            "été"
        );
    }
}
