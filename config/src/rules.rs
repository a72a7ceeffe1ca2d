//! `[[rules]]`: EMQX-style rule SQL with its actions. A rule whose `FROM` names topic filters
//! reads the broker's messages as a durable internal subscriber; one whose `FROM` names
//! `$events/…` reads client and message events (best effort). Every statement and template is
//! compiled here, so a bad rule is refused at start (and on reload) with its position.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// One `[[rules]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique; letters, digits, `_`, `-` and `.` (it names the rule's metrics and its durable
    /// subscriber `$rule/<id>`).
    pub id: String,
    /// `SELECT … FROM "…" [WHERE …]` or `FOREACH … FROM "…"`.
    pub sql: String,
    /// What is done with every output, in order.
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
    /// A disabled rule reads nothing (its durable subscriber is removed).
    #[serde(default = "enabled")]
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
}

fn enabled() -> bool {
    true
}

/// An action of a rule.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionSpec {
    /// Publish every output as a message, through the broker's in-process client (durable
    /// before the rule goes on to its next input).
    Republish(RepublishSpec),
    /// Log every output (target `keelmq::rules`, level info) as JSON.
    Console,
    /// Hand every output to the sink (`[[sinks]]`) of this name: the sink reads the rule's
    /// topics through a durable subscriber of its own and writes what the rule selects.
    Sink { name: String },
}

/// `{ kind = "republish", … }`: every text field is a `${…}` template over the rule's output.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepublishSpec {
    pub topic: String,
    /// A QoS (0, 1, 2) or a template giving one (EMQX's default `${qos}`).
    #[serde(default = "default_qos")]
    pub qos: TemplateOr<u8>,
    /// A flag or a template giving one (EMQX's default `${flags.retain}`).
    #[serde(default = "default_retain")]
    pub retain: TemplateOr<bool>,
    #[serde(default = "default_payload")]
    pub payload: String,
    /// A template that gives an object of user properties (e.g.
    /// `${pub_props.'User-Property'}`); empty: none.
    #[serde(default)]
    pub user_properties: String,
    /// MQTT 5 properties of the message, each a template: `Payload-Format-Indicator`,
    /// `Message-Expiry-Interval`, `Content-Type`, `Response-Topic`, `Correlation-Data`.
    #[serde(default)]
    pub mqtt_properties: BTreeMap<String, String>,
    /// Deliver to subscribers only: rules do not see the republished message (unset: `true`).
    /// `false` lets rules read it like any other message.
    #[serde(default = "enabled")]
    pub direct_dispatch: bool,
}

fn default_qos() -> TemplateOr<u8> {
    TemplateOr::Template("${qos}".into())
}

fn default_retain() -> TemplateOr<bool> {
    TemplateOr::Template("${flags.retain}".into())
}

fn default_payload() -> String {
    "${payload}".into()
}

/// A fixed value or a `${…}` template that gives one.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum TemplateOr<T> {
    Value(T),
    Template(String),
}

/// The MQTT 5 properties a republish may set.
pub const REPUBLISH_PROPERTIES: [&str; 5] = [
    "Payload-Format-Indicator",
    "Message-Expiry-Interval",
    "Content-Type",
    "Response-Topic",
    "Correlation-Data",
];

/// A problem with `rules[i].field`.
fn bad(i: usize, field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Listener {
        field: format!("rules[{i}].{field}"),
        problem: problem.into(),
    }
}

/// Checks every rule: unique well-formed ids, SQL that compiles, templates that parse.
pub fn validate(rules: &[RuleSpec]) -> Result<(), ConfigError> {
    let mut ids = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        validate_id(i, &rule.id)?;
        if !ids.insert(rule.id.as_str()) {
            return Err(bad(i, "id", format!("`{}` is used twice", rule.id)));
        }
        keelmq_rules::Rule::compile(&rule.sql).map_err(|e| bad(i, "sql", e.to_string()))?;
        for (j, action) in rule.actions.iter().enumerate() {
            validate_action(i, j, action)?;
        }
    }
    Ok(())
}

fn validate_id(i: usize, id: &str) -> Result<(), ConfigError> {
    validate_name(id).map_err(|problem| bad(i, "id", problem))
}

/// A rule id or sink name: 1 to 128 letters, digits, `_`, `-` or `.`.
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > 128 || !name.chars().all(ok) {
        return Err(format!(
            "`{name}`: 1 to 128 letters, digits, `_`, `-` or `.`"
        ));
    }
    Ok(())
}

fn validate_action(i: usize, j: usize, action: &ActionSpec) -> Result<(), ConfigError> {
    let ActionSpec::Republish(r) = action else {
        return Ok(());
    };
    let field = |name: &str| format!("actions[{j}].{name}");
    let template = |name: &str, text: &str| {
        keelmq_rules::template::Template::parse(text)
            .map(|_| ())
            .map_err(|e| bad(i, &field(name), e.to_string()))
    };
    template("topic", &r.topic)?;
    if r.topic.is_empty() || r.topic.contains(['+', '#']) {
        return Err(bad(
            i,
            &field("topic"),
            "must be a topic name (no wildcards)",
        ));
    }
    match &r.qos {
        TemplateOr::Value(q) if *q > 2 => {
            return Err(bad(
                i,
                &field("qos"),
                format!("{q} is not a QoS (0, 1 or 2)"),
            ))
        }
        TemplateOr::Value(_) => {}
        TemplateOr::Template(t) => template("qos", t)?,
    }
    if let TemplateOr::Template(t) = &r.retain {
        template("retain", t)?;
    }
    template("payload", &r.payload)?;
    template("user_properties", &r.user_properties)?;
    for (name, value) in &r.mqtt_properties {
        if !REPUBLISH_PROPERTIES.contains(&name.as_str()) {
            let known = REPUBLISH_PROPERTIES.join(", ");
            return Err(bad(
                i,
                &field("mqtt_properties"),
                format!("unknown property `{name}` (known: {known})"),
            ));
        }
        template("mqtt_properties", value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn load(toml: &str) -> Result<Config, String> {
        let config = Config::parse(toml)?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn error(toml: &str) -> String {
        load(toml).err().unwrap_or_default()
    }

    #[test]
    fn rules_parse_with_emqx_defaults() {
        let config = load(
            r#"
            [[rules]]
            id = "temp_alerts"
            sql = 'SELECT payload.temp AS t, clientid FROM "sensors/+/data" WHERE payload.temp > 80'
            actions = [
              { kind = "republish", topic = "alerts/${clientid}", qos = 1, payload = '{"t": ${t}}' },
              { kind = "console" },
            ]
            "#,
        )
        .expect("valid");
        let rule = &config.rules[0];
        assert!(rule.enabled);
        let super::ActionSpec::Republish(r) = &rule.actions[0] else {
            panic!("republish expected");
        };
        assert_eq!(r.qos, super::TemplateOr::Value(1));
        assert_eq!(
            r.retain,
            super::TemplateOr::Template("${flags.retain}".into())
        );
        assert!(r.direct_dispatch);
    }

    #[test]
    fn bad_rules_name_the_field_and_position() {
        let e = error("[[rules]]\nid = \"a\"\nsql = 'SELECT nope(1) FROM \"t\"'\n");
        assert!(e.contains("rules[0].sql") && e.contains("column 8"), "{e}");
        let e = error("[[rules]]\nid = \"a b\"\nsql = 'SELECT * FROM \"t\"'\n");
        assert!(e.contains("rules[0].id"), "{e}");
        let two = "[[rules]]\nid = \"a\"\nsql = 'SELECT * FROM \"t\"'\n";
        let e = error(&format!("{two}{two}"));
        assert!(e.contains("rules[1].id") && e.contains("twice"), "{e}");
        let e = error(
            "[[rules]]\nid = \"a\"\nsql = 'SELECT * FROM \"t\"'\n\
             actions = [{ kind = \"republish\", topic = \"x/${clientid\" }]\n",
        );
        assert!(e.contains("rules[0].actions[0].topic"), "{e}");
        let e = error(
            "[[rules]]\nid = \"a\"\nsql = 'SELECT * FROM \"t\"'\n\
             actions = [{ kind = \"republish\", topic = \"x\", qos = 3 }]\n",
        );
        assert!(e.contains("rules[0].actions[0].qos"), "{e}");
        let e = error(
            "[[rules]]\nid = \"a\"\nsql = 'SELECT * FROM \"t\"'\n\
             actions = [{ kind = \"republish\", topic = \"x\", mqtt_properties = { Foo = \"1\" } }]\n",
        );
        assert!(e.contains("mqtt_properties") && e.contains("Foo"), "{e}");
        let e = error(
            "[[rules]]\nid = \"a\"\nsql = 'SELECT * FROM \"t\"'\nactions = [{ kind = \"mail\" }]\n",
        );
        assert!(e.contains("mail"), "{e}");
    }
}
