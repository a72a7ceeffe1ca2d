//! The ACL file: Mosquitto's `acl_file` format, so that an existing file works unchanged.
//!
//! ```text
//! # comment
//! topic read $SYS/#            anonymous clients' rules: before the first `user` line
//! user alice                    the following `topic` lines are alice's
//! topic readwrite fleet/alice/#
//! topic deny fleet/alice/secret
//! pattern write devices/%c/up   every client; %c is its client id, %u its username
//! ```
//! `topic` and `pattern` take `read`, `write`, `readwrite` (also the default when omitted) or
//! `deny`, then a topic filter (the rest of the line).
//!
//! # Decisions
//! The rules that apply to a client are its user's (or, without a username, the anonymous
//! ones) plus every `pattern`. A pattern whose `%u` has no username to stand for does not
//! apply, and neither does one whose client id or username contains `/`, `+` or `#` where it
//! is substituted (a client cannot widen a pattern by its name).
//! - **Publish** to a topic: denied if a `deny` rule matches the topic; else allowed if a
//!   `write`/`readwrite` rule matches it; else no rule decides ([`Decision::NoMatch`]).
//! - **Subscribe** to a filter: denied if a `deny` rule's filter can match some topic the
//!   filter matches (a subscription that could receive a denied topic is refused whole, so
//!   nothing it receives — retained messages included — needs a check of its own); else
//!   allowed if a `read`/`readwrite` rule's filter matches every topic the filter matches;
//!   else no rule decides.
//!
//! As in MQTT, a filter starting with a wildcard never matches a `$` topic.

use std::collections::HashMap;

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
    /// Denies subscribing only (client rules from a token or the HTTP authenticator).
    DenyRead,
    /// Denies publishing only (client rules).
    DenyWrite,
}

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

/// The answer of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// No rule decides; the configuration's `no_match` does.
    NoMatch,
}

/// One level of a rule's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Text(String),
    /// A pattern level with `%c` / `%u` in it, split around them.
    Pattern(Vec<Piece>),
    Plus,
    Hash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    ClientId,
    Username,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    levels: Vec<Level>,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// Why an ACL file does not parse: the line and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct AclError {
    pub line: usize,
    pub problem: String,
}

/// Who asks.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

impl Acl {
    /// Parses an ACL file.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let err = |problem: String| AclError { line, problem };
            let (keyword, rest) = l.split_once([' ', '\t']).unwrap_or((l, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a username".into()));
                    }
                    acl.users.entry(rest.to_string()).or_default();
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let pattern = keyword == "pattern";
                    let rule = parse_rule(rest, pattern).map_err(err)?;
                    match (pattern, &user) {
                        (true, _) => acl.patterns.push(rule),
                        (false, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                        (false, None) => acl.anonymous.push(rule),
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword `{other}` (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// A client's own rules (from its token, or the HTTP authenticator's answer): plain
    /// filters, no placeholders (the caller substituted them), checked as the file's are.
    pub fn client_rules<'a>(
        rules: impl IntoIterator<Item = (Access, &'a str)>,
    ) -> Result<Acl, String> {
        let mut acl = Acl::default();
        for (access, filter) in rules {
            if filter.is_empty() {
                return Err("a rule needs a topic filter".into());
            }
            let levels = parse_filter(filter, false)?;
            acl.patterns.push(Rule { access, levels });
        }
        Ok(acl)
    }

    /// Number of rules (all sections).
    pub fn len(&self) -> usize {
        self.anonymous.len()
            + self.patterns.len()
            + self.users.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the rules say about `who` doing `action` on `topic` (a topic name to publish to, or
    /// a filter to subscribe to, without any `$share/group/` prefix).
    pub fn check(&self, who: Who<'_>, action: Action, topic: &str) -> Decision {
        let own: &[Rule] = match who.username {
            Some(u) => self.users.get(u).map_or(&[], Vec::as_slice),
            None => &self.anonymous,
        };
        let rules = || own.iter().chain(self.patterns.iter());
        let asked: Vec<&str> = topic.split('/').collect();
        let denies = |r: &&Rule| match action {
            Action::Publish => matches!(r.access, Access::Deny | Access::DenyWrite),
            Action::Subscribe => matches!(r.access, Access::Deny | Access::DenyRead),
        };
        let denied = rules().filter(denies).any(|r| match action {
            Action::Publish => r.covers(&asked, who),
            Action::Subscribe => r.overlaps(&asked, who),
        });
        if denied {
            return Decision::Deny;
        }
        let grants = |r: &&Rule| match action {
            Action::Publish => matches!(r.access, Access::Write | Access::ReadWrite),
            Action::Subscribe => matches!(r.access, Access::Read | Access::ReadWrite),
        };
        if rules().filter(grants).any(|r| r.covers(&asked, who)) {
            Decision::Allow
        } else {
            Decision::NoMatch
        }
    }
}

fn parse_rule(rest: &str, pattern: bool) -> Result<Rule, String> {
    let (first, after) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    let (access, filter) = match first {
        "read" => (Access::Read, after.trim()),
        "write" => (Access::Write, after.trim()),
        "readwrite" => (Access::ReadWrite, after.trim()),
        "deny" => (Access::Deny, after.trim()),
        _ => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("a rule needs a topic filter".into());
    }
    let levels = parse_filter(filter, pattern)?;
    Ok(Rule { access, levels })
}

/// A rule's filter as levels; `%c`/`%u` are placeholders in a pattern only.
fn parse_filter(filter: &str, pattern: bool) -> Result<Vec<Level>, String> {
    let parts: Vec<&str> = filter.split('/').collect();
    let mut levels = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let level = match *part {
            "#" if i + 1 == parts.len() => Level::Hash,
            "+" => Level::Plus,
            p if p.contains(['+', '#']) => {
                return Err(format!(
                "`{filter}` is not a topic filter (a wildcard must be a whole level, `#` the last)"
            ))
            }
            p if pattern && (p.contains("%c") || p.contains("%u")) => Level::Pattern(pieces(p)),
            p => Level::Text(p.to_string()),
        };
        levels.push(level);
    }
    Ok(levels)
}

/// A pattern level split around its `%c` and `%u`.
fn pieces(level: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = level.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match (c, chars.peek()) {
            ('%', Some('c')) => Some(Piece::ClientId),
            ('%', Some('u')) => Some(Piece::Username),
            _ => None,
        };
        match token {
            Some(piece) => {
                chars.next();
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(piece);
            }
            None => text.push(c),
        }
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

/// Whether a pattern level, with `who` substituted, is exactly `actual`. `None` if the
/// pattern cannot apply to `who` (no username for `%u`, or a name that holds `/`, `+`, `#`).
fn pattern_eq(pieces: &[Piece], actual: &str, who: Who<'_>) -> Option<bool> {
    let mut rest = actual;
    for piece in pieces {
        let text = match piece {
            Piece::Text(t) => t.as_str(),
            Piece::ClientId => who.client_id,
            Piece::Username => who.username?,
        };
        if !matches!(piece, Piece::Text(_)) && text.contains(['/', '+', '#']) {
            return None;
        }
        match rest.strip_prefix(text) {
            Some(r) => rest = r,
            None => return Some(false),
        }
    }
    Some(rest.is_empty())
}

/// How a rule level relates to one level of what is asked.
fn level_eq(level: &Level, asked: &str, who: Who<'_>) -> Option<bool> {
    match level {
        Level::Text(t) => Some(t == asked),
        Level::Pattern(p) => pattern_eq(p, asked, who),
        Level::Plus | Level::Hash => Some(true),
    }
}

impl Rule {
    /// Whether every topic `asked` (a topic or a filter) matches is matched by this rule.
    fn covers(&self, asked: &[&str], who: Who<'_>) -> bool {
        if dollar_mismatch(&self.levels, asked) {
            return false;
        }
        for (i, level) in self.levels.iter().enumerate() {
            let Some(a) = asked.get(i) else {
                // `x/#` also matches `x`.
                return i + 1 == self.levels.len() && *level == Level::Hash;
            };
            match level {
                Level::Hash => return true,
                Level::Plus if *a == "#" => return false,
                Level::Plus => continue,
                _ if *a == "+" || *a == "#" => return false,
                _ => {}
            }
            if level_eq(level, a, who) != Some(true) {
                return false;
            }
        }
        asked.len() == self.levels.len()
    }

    /// Whether some topic matches both this rule and `asked` (a topic or a filter).
    fn overlaps(&self, asked: &[&str], who: Who<'_>) -> bool {
        if dollar_mismatch(&self.levels, asked) {
            return false;
        }
        for (i, level) in self.levels.iter().enumerate() {
            let Some(a) = asked.get(i) else {
                return i + 1 == self.levels.len() && *level == Level::Hash;
            };
            if *level == Level::Hash || *a == "#" {
                return true;
            }
            if *level == Level::Plus || *a == "+" {
                // Still, a pattern must be able to apply to this client.
                if let Level::Pattern(p) = level {
                    if pattern_eq(p, "", who).is_none() {
                        return false;
                    }
                }
                continue;
            }
            if level_eq(level, a, who) != Some(true) {
                return false;
            }
        }
        asked.len() == self.levels.len() || asked.get(self.levels.len()) == Some(&"#")
    }
}

/// A `$` topic is matched only by a filter whose first level is not a wildcard, and a filter
/// starting with a wildcard matches no `$` topic.
fn dollar_mismatch(levels: &[Level], asked: &[&str]) -> bool {
    let asked_dollar = asked.first().is_some_and(|a| a.starts_with('$'));
    let rule_wild = matches!(levels.first(), Some(Level::Plus | Level::Hash));
    let rule_dollar = matches!(levels.first(), Some(Level::Text(t)) if t.starts_with('$'));
    let asked_wild = matches!(asked.first(), Some(&"+" | &"#"));
    (asked_dollar && rule_wild) || (rule_dollar && asked_wild)
}

#[cfg(test)]
mod tests;
