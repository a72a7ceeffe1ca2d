//! The configuration parser against generated input: every field of the shipped example
//! config set to random values of random types, and arbitrary text. Parsing and validating
//! never panic, and a refusal names the field it refuses (the fuzz target
//! `fuzz/fuzz_targets/config_parse.rs` feeds arbitrary bytes to the same path).

use keelmq::config::Config;
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../keelmq.example.toml");

/// (line index, key) of every `key = value` line of the example config.
fn fields() -> Vec<(usize, String)> {
    EXAMPLE
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with('[') {
                return None;
            }
            let (key, _) = line.split_once('=')?;
            Some((i, key.trim().to_string()))
        })
        .collect()
}

/// A TOML value of some type: integers far out of every range, strings, booleans, arrays.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-5i64..70_000).prop_map(|n| n.to_string()),
        "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
    ]
}

/// Parses and validates; `Err` carries the message a user would see.
fn check(text: &str) -> Result<Config, String> {
    let config = Config::parse(text)?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_field_set_to_anything_is_accepted_or_refused_by_name(
        pick in any::<prop::sample::Index>(),
        v in value(),
    ) {
        let fields = fields();
        prop_assert!(fields.len() > 20, "the example config lists its fields: {}", fields.len());
        let (line, key) = &fields[pick.index(fields.len())];
        let text: Vec<String> = EXAMPLE
            .lines()
            .enumerate()
            .map(|(i, l)| if i == *line { format!("{key} = {v}") } else { l.to_string() })
            .collect();
        if let Err(message) = check(&text.join("\n")) {
            prop_assert!(
                message.contains(key.as_str()),
                "setting {key} = {v} was refused without naming {key}: {message}"
            );
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = check(&text);
    }

    #[test]
    fn arbitrary_toml_lines_never_panic(lines in proptest::collection::vec(
        ("[a-z_]{1,12}", value()).prop_map(|(k, v)| format!("{k} = {v}")), 0..6),
        section in proptest::sample::select(vec!["", "[listener]", "[mqtt]", "[limits]", "[storage]", "[sys]", "[runtime]"]),
    ) {
        let text = format!("{section}\n{}", lines.join("\n"));
        if let Err(message) = check(&text) {
            prop_assert!(!message.is_empty());
        }
    }
}
