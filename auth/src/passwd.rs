//! The password file: Mosquitto's `password_file` format. One `USERNAME:HASH` per line (the
//! username is everything before the first `:`), blank lines and lines starting with `#`
//! ignored. A file written by `mosquitto_passwd` reads unchanged; see [`crate::hash`] for the
//! hash forms.

use crate::hash::{Hash, HashError};

/// One line's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Hashed(Hash),
    /// A plain-text password: only in a file about to be hashed (`keelmq passwd -U`).
    Plain(String),
}

/// A password file, in its line order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    entries: Vec<(String, Secret)>,
}

/// Why a password file does not parse: the line and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    pub line: usize,
    pub problem: String,
}

/// Usernames longer than this are refused (MQTT allows 65,535 bytes; a file has no use for
/// that, and the authenticator looks names up in memory).
pub const MAX_USERNAME_LEN: usize = 1024;

impl PasswordFile {
    /// Parses a file that logins are checked against: every entry must be hashed.
    pub fn parse(text: &str) -> Result<PasswordFile, ParseError> {
        let file = Self::parse_lenient(text)?;
        for (i, (user, secret)) in file.entries.iter().enumerate() {
            if let Secret::Plain(_) = secret {
                let line = file.line_of(i, text);
                return Err(ParseError {
                    line,
                    problem: format!("user `{user}`: {}", HashError::NotAHash),
                });
            }
        }
        Ok(file)
    }

    /// Parses a file that may hold plain-text passwords (to be hashed by `-U`).
    pub fn parse_lenient(text: &str) -> Result<PasswordFile, ParseError> {
        let mut entries: Vec<(String, Secret)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim_end_matches('\r');
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            let err = |problem: String| ParseError { line, problem };
            let Some((user, secret)) = l.split_once(':') else {
                return Err(err("expected `USERNAME:PASSWORD_HASH`".into()));
            };
            check_username(user).map_err(|p| err(p.into()))?;
            if entries.iter().any(|(u, _)| u == user) {
                return Err(err(format!("user `{user}` appears a second time")));
            }
            let secret = match Hash::parse(secret) {
                Ok(h) => Secret::Hashed(h),
                Err(HashError::NotAHash) => Secret::Plain(secret.to_string()),
                Err(e) => return Err(err(format!("user `{user}`: {e}"))),
            };
            entries.push((user.to_string(), secret));
        }
        Ok(PasswordFile { entries })
    }

    /// The line number of entry `index` (for errors found after parsing).
    fn line_of(&self, index: usize, text: &str) -> usize {
        let user = &self.entries[index].0;
        text.lines()
            .position(|l| l.split_once(':').is_some_and(|(u, _)| u == user))
            .map_or(0, |p| p + 1)
    }

    /// The hash of `user`, if the file has the user.
    pub fn hash_of(&self, user: &str) -> Option<&Hash> {
        self.entries.iter().find_map(|(u, s)| match s {
            Secret::Hashed(h) if u == user => Some(h),
            _ => None,
        })
    }

    /// The usernames, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(u, _)| u.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `user` or replaces its password, keeping its place.
    pub fn set(&mut self, user: &str, hash: Hash) -> Result<(), &'static str> {
        check_username(user)?;
        match self.entries.iter_mut().find(|(u, _)| u == user) {
            Some(entry) => entry.1 = Secret::Hashed(hash),
            None => self.entries.push((user.to_string(), Secret::Hashed(hash))),
        }
        Ok(())
    }

    /// Removes `user`; whether it was there.
    pub fn remove(&mut self, user: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(u, _)| u != user);
        self.entries.len() != before
    }

    /// Replaces every plain-text password by a hash made by `hash`.
    pub fn hash_plain<E>(
        &mut self,
        mut hash: impl FnMut(&str) -> Result<Hash, E>,
    ) -> Result<usize, E> {
        let mut n = 0;
        for (_, secret) in &mut self.entries {
            if let Secret::Plain(p) = secret {
                *secret = Secret::Hashed(hash(p)?);
                n += 1;
            }
        }
        Ok(n)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (user, secret) in &self.entries {
            let s = match secret {
                Secret::Hashed(h) => h.render(),
                Secret::Plain(p) => p.clone(),
            };
            out.push_str(user);
            out.push(':');
            out.push_str(&s);
            out.push('\n');
        }
        out
    }
}

/// Whether `user` can be a password file's username.
pub fn check_username(user: &str) -> Result<(), &'static str> {
    if user.is_empty() {
        return Err("empty username");
    }
    if user.len() > MAX_USERNAME_LEN {
        return Err("username longer than 1024 bytes");
    }
    if user.contains(':') || user.chars().any(char::is_control) {
        return Err("a username may not hold `:` or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MOSQUITTO: &str = "alice:$7$101$X6yvMX0fo+YHF+Bd$/qeLQQH+23KXVZDT68+RUJaJHqkSNrsKy09Fr0j45BtS1qvibC+pVfO3b922YFQ6wBQb8TINAXsLgb2bEWmLMg==\n\
        # comment\n\
        \n\
        bob:$6$D2oesstoEJ/N0ksU$veeq1z3yNd9LZkIBVrnaKjTY6fSjtajo0e2mn2vo3eSxsWWreCBfw/sTLOz+m+dD3/9KtStZPFp3w+N9SjhKcg==\n";

    #[test]
    fn a_mosquitto_file_reads_and_verifies() {
        let f = PasswordFile::parse(MOSQUITTO).unwrap();
        assert_eq!(f.users().collect::<Vec<_>>(), ["alice", "bob"]);
        assert!(f.hash_of("alice").unwrap().verify(b"secret1"));
        assert!(f.hash_of("bob").unwrap().verify(b"secret2"));
        assert!(f.hash_of("carol").is_none());
    }

    #[test]
    fn problems_name_their_line() {
        let e = PasswordFile::parse("a:$6$AAAA$AAAA\nnocolon\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = PasswordFile::parse("a:$6$AAAA$AAAA\na:$6$AAAA$AAAA\n").unwrap_err();
        assert_eq!((e.line, e.problem.contains("second time")), (2, true));
        let e = PasswordFile::parse("\n\nplain:secret\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.problem.contains("keelmq passwd -U"), "{e}");
        let e = PasswordFile::parse(":$6$AAAA$AAAA\n").unwrap_err();
        assert!(e.problem.contains("empty username"));
    }

    #[test]
    fn plain_files_are_hashed_in_place() {
        let mut f = PasswordFile::parse_lenient("a:pw\nb:$6$AAAA$AAAA\n").unwrap();
        let n = f.hash_plain(|p| Hash::new_argon2id(p.as_bytes())).unwrap();
        assert_eq!(n, 1);
        let again = PasswordFile::parse(&f.render()).unwrap();
        assert!(again.hash_of("a").unwrap().verify(b"pw"));
        assert_eq!(again.users().collect::<Vec<_>>(), ["a", "b"]);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = PasswordFile::parse(&text);
            let _ = PasswordFile::parse_lenient(&text);
        }

        #[test]
        fn what_is_rendered_parses_back(users in proptest::collection::btree_set("[a-z0-9_.@-]{1,12}", 0..6)) {
            let mut f = PasswordFile::default();
            for u in &users {
                let h = Hash::parse("$6$AAAA$AAAA").unwrap();
                f.set(u, h).unwrap();
            }
            prop_assert_eq!(PasswordFile::parse(&f.render()).unwrap(), f);
        }
    }
}
