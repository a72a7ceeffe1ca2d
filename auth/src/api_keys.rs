//! The HTTP API's key file: one `key:secret` per line (the key is everything before the first
//! `:`, the secret the rest, colons included), blank lines and lines starting with `#`
//! ignored. Secrets are compared as they are written (the broker compares them in constant
//! time), so the file must be readable by the broker's user only.

/// Why a key file does not parse: the line and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct KeyFileError {
    pub line: usize,
    pub problem: &'static str,
}

/// Keys longer than this are refused (a key is a name, not a payload).
pub const MAX_KEY_LEN: usize = 256;
/// Secrets longer than this are refused.
pub const MAX_SECRET_LEN: usize = 1024;

/// Parses a key file into `(key, secret)` pairs, in line order.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, KeyFileError> {
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |problem| KeyFileError {
            line: i + 1,
            problem,
        };
        let Some((key, secret)) = line.split_once(':') else {
            return Err(err("expected `key:secret`"));
        };
        if key.is_empty() || secret.is_empty() {
            return Err(err("the key and the secret must not be empty"));
        }
        if key.len() > MAX_KEY_LEN || secret.len() > MAX_SECRET_LEN {
            return Err(err("key longer than 256 bytes or secret longer than 1024"));
        }
        keys.push((key.to_string(), secret.to_string()));
    }
    Ok(keys)
}

/// The text of a key file holding `keys` (what [`parse`] reads back as `keys`).
pub fn render(keys: &[(String, String)]) -> String {
    keys.iter().map(|(k, s)| format!("{k}:{s}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lines_comments_and_refusals() {
        let keys = parse("# ops\nk1:s1\n\nk2:s:2\r\n").unwrap();
        assert_eq!(
            keys,
            [("k1".into(), "s1".into()), ("k2".into(), "s:2".into())]
        );
        assert_eq!(parse("k1:s1\nnocolon\n").unwrap_err().line, 2);
        assert_eq!(parse(":s\n").unwrap_err().line, 1);
        assert_eq!(parse("k:\n").unwrap_err().line, 1);
        assert!(parse(&format!("{}:s", "k".repeat(300))).is_err());
    }

    proptest! {
        /// Whatever the text, parsing answers (a refusal names a line of the text), and what
        /// parses renders to text that parses the same.
        #[test]
        fn any_text_parses_or_names_a_line(text in "(?s).{0,300}") {
            match parse(&text) {
                Ok(keys) => prop_assert_eq!(parse(&render(&keys)).unwrap(), keys),
                Err(e) => prop_assert!(e.line >= 1 && e.line <= text.lines().count()),
            }
        }

        /// Keys and secrets of the allowed shape round-trip.
        #[test]
        fn well_formed_keys_round_trip(keys in proptest::collection::vec(("[a-zA-Z0-9_.-]{1,20}", "[ -~]{1,40}"), 0..10)) {
            prop_assert_eq!(parse(&render(&keys)).unwrap(), keys);
        }
    }
}
