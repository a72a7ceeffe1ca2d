//! `[[sinks]]`: data bridges that carry the broker's messages to other systems. A sink reads
//! the messages of its `topics`, and the outputs of every rule whose actions name it
//! (`{ kind = "sink", name = "…" }`), each through a durable internal subscriber, and writes
//! them to its target; its templates are compiled here, so a bad sink is refused at start
//! naming `sinks[i].field`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::Deserialize;

use crate::ConfigError;

/// What a sink writes to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Http,
    Kafka,
    Mqtt,
    Postgresql,
    Redis,
}

impl SinkKind {
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Http => "http",
            SinkKind::Kafka => "kafka",
            SinkKind::Mqtt => "mqtt",
            SinkKind::Postgresql => "postgresql",
            SinkKind::Redis => "redis",
        }
    }
}

/// When a publisher whose message a sink reads gets its acknowledgement.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkAck {
    /// Once the message is durable in the broker's log (and so in the sink's queue).
    #[default]
    Queued,
    /// Once the target has it (or refused it for good), within `ack_timeout_ms`: for a
    /// network client's QoS 1/2 message read through the sink's `topics`.
    Delivered,
}

/// Exponential back-off between attempts; retries never give up.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            initial_ms: 100,
            max_ms: 30_000,
        }
    }
}

/// One `[[sinks]]` entry. The fields after `password_env` belong to one kind each.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// Unique; letters, digits, `_`, `-` and `.` (it names the sink's metrics and its durable
    /// subscribers `$sink/<name>/…`).
    pub name: String,
    pub kind: SinkKind,
    /// Topic filters whose messages the sink writes directly, without a rule.
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub ack: SinkAck,
    /// With `ack = "delivered"`: how long a publisher's acknowledgement waits for the target;
    /// then a v5 client gets reason 0x80 and a 3.x client is disconnected (the message stays
    /// queued for the sink either way).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// At most this many messages per write to the target.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a batch waits to fill once it has a message.
    #[serde(default = "default_batch_time_ms")]
    pub batch_time_ms: u64,
    /// Messages queued for the sink (per feed: its topics, each rule); beyond, publishers are
    /// held back (v3) or refused with 0x97 (v5): never a silent loss. An MQTT sink's feeds
    /// hold at most 65,535 QoS 1/2 deliveries (their packet identifiers are the remote's),
    /// whatever this says.
    #[serde(default = "default_max_queued")]
    pub max_queued_messages: usize,
    #[serde(default)]
    pub retry: RetrySpec,
    /// A write that has not answered by then counts as failed and is retried.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Batches being written at once (PostgreSQL: each on a connection of its own). With more
    /// than one, a batch may reach the target before an earlier one (the order across batches
    /// is not kept; acknowledgements still are).
    #[serde(default = "one")]
    pub inflight_batches: usize,
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// The target's password, read from this file (trailing newline dropped)…
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// …or from this environment variable. Never logged.
    #[serde(default)]
    pub password_env: Option<String>,
    /// http, postgresql, redis: where the target is (for http a template).
    #[serde(default)]
    pub url: Option<String>,
    /// postgresql: one statement whose `${…}` become typed parameters.
    #[serde(default)]
    pub sql: Option<String>,
    /// redis: a command whose words are templates (`SET msg:${id} ${payload} NX`).
    #[serde(default)]
    pub command: Option<String>,
    /// http: `get`, `post`, `put` or `delete` (default `post`).
    #[serde(default)]
    pub method: Option<String>,
    /// http: header templates.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// http: the body template (default: the message or output as JSON).
    #[serde(default)]
    pub body: Option<String>,
    /// http: where requests the target refuses for good (4xx other than 408 and 429) are
    /// published, QoS 1 (default `keelmq/dead-letter/<name>`).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// mqtt: the remote broker, `host:port`.
    #[serde(default)]
    pub server: Option<String>,
    /// mqtt: the client id of the persistent remote session (required: a restart resumes
    /// the session's QoS 2 exchanges instead of sending again as new).
    #[serde(default)]
    pub client_id: Option<String>,
    /// mqtt: `5` (default) or `3.1.1`.
    #[serde(default)]
    pub protocol_version: Option<String>,
    /// mqtt: the user name (the password from `password_file` / `password_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// mqtt: the remote topic template (default `${topic}`).
    #[serde(default)]
    pub remote_topic: Option<String>,
    /// mqtt: the highest QoS to forward with (default 1); a message goes at its own QoS if
    /// lower, as to a subscriber.
    #[serde(default)]
    pub qos: Option<u8>,
    /// mqtt: RETAIN, a template (default `${flags.retain}`).
    #[serde(default)]
    pub retain: Option<String>,
    /// mqtt: the payload template (default: the message's payload, byte for byte).
    #[serde(default)]
    pub payload: Option<String>,
    /// mqtt: keep-alive in seconds (default 60).
    #[serde(default)]
    pub keepalive_secs: Option<u16>,
    /// kafka: bootstrap brokers, `host:port[,host:port…]`.
    #[serde(default)]
    pub bootstrap: Option<String>,
    /// kafka: the topic (a template).
    #[serde(default)]
    pub topic: Option<String>,
    /// kafka: the record key template (default: none).
    #[serde(default)]
    pub key: Option<String>,
    /// kafka: the record value template (default: the message's payload byte for byte, a
    /// rule's output as JSON).
    #[serde(default)]
    pub value: Option<String>,
    /// kafka: the partition template (default: Kafka's partitioner over the key).
    #[serde(default)]
    pub partition: Option<String>,
}

fn default_batch_size() -> usize {
    100
}

fn default_batch_time_ms() -> u64 {
    10
}

fn default_max_queued() -> usize {
    1_000_000
}

fn default_request_timeout_ms() -> u64 {
    15_000
}

fn default_ack_timeout_ms() -> u64 {
    10_000
}

fn enabled() -> bool {
    true
}

fn one() -> usize {
    1
}

impl SinkSpec {
    /// The topic that requests refused for good are published to.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("keelmq/dead-letter/{}", self.name))
    }

    /// The password from `password_file` or `password_env`, if one is set.
    pub fn password(&self) -> Result<Option<String>, String> {
        password(&self.password_file, &self.password_env)
    }
}

/// A problem with `sinks[i].field`.
fn bad(i: usize, field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Listener {
        field: format!("sinks[{i}].{field}"),
        problem: problem.into(),
    }
}

/// Checks every sink: unique well-formed names, the fields its kind needs and no field of
/// another kind, templates that parse, topic filters, limits.
pub fn validate(sinks: &[SinkSpec]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, sink) in sinks.iter().enumerate() {
        crate::rules::validate_name(&sink.name).map_err(|problem| bad(i, "name", problem))?;
        if !names.insert(sink.name.as_str()) {
            return Err(bad(i, "name", format!("`{}` is used twice", sink.name)));
        }
        validate_common(i, sink)?;
        validate_kind_fields(i, sink)?;
        validate_templates(i, sink)?;
    }
    Ok(())
}

fn validate_common(i: usize, s: &SinkSpec) -> Result<(), ConfigError> {
    for (j, filter) in s.topics.iter().enumerate() {
        if !keelmq_rules::sources::valid_filter(filter) || filter.starts_with('$') {
            return Err(bad(
                i,
                &format!("topics[{j}]"),
                format!("`{filter}` is not a topic filter of ordinary topics"),
            ));
        }
    }
    if !(1..=10_000).contains(&s.batch_size) {
        return Err(bad(i, "batch_size", "must be 1 to 10000"));
    }
    if s.batch_time_ms > 60_000 {
        return Err(bad(i, "batch_time_ms", "must be at most 60000"));
    }
    if s.max_queued_messages == 0 {
        return Err(bad(i, "max_queued_messages", "must be at least 1"));
    }
    if s.retry.initial_ms == 0 || s.retry.max_ms < s.retry.initial_ms {
        return Err(bad(i, "retry", "needs 0 < initial_ms <= max_ms"));
    }
    if s.request_timeout_ms == 0 {
        return Err(bad(i, "request_timeout_ms", "must be at least 1"));
    }
    if !(1..=16).contains(&s.inflight_batches) {
        return Err(bad(i, "inflight_batches", "must be 1 to 16"));
    }
    if !(1..=3_600_000).contains(&s.ack_timeout_ms) {
        return Err(bad(i, "ack_timeout_ms", "must be 1 to 3600000"));
    }
    if s.ack == SinkAck::Delivered && s.kind == SinkKind::Mqtt && s.qos == Some(0) {
        return Err(bad(
            i,
            "ack",
            "\"delivered\" needs qos 1 or 2: the remote confirms nothing at QoS 0",
        ));
    }
    if s.ack == SinkAck::Delivered && s.topics.is_empty() {
        return Err(bad(
            i,
            "ack",
            "\"delivered\" needs `topics`: a publisher waits only for the sink reading its message itself, not a rule's output",
        ));
    }
    if s.password_file.is_some() && s.password_env.is_some() {
        return Err(bad(
            i,
            "password_env",
            "set password_file or password_env, not both",
        ));
    }
    Ok(())
}

/// The kind-specific fields: those of the sink's kind required, others refused.
fn validate_kind_fields(i: usize, s: &SinkSpec) -> Result<(), ConfigError> {
    use SinkKind::*;
    let fields: [(&str, bool, &[SinkKind]); 23] = [
        ("url", s.url.is_some(), &[Http, Postgresql, Redis]),
        ("sql", s.sql.is_some(), &[Postgresql]),
        ("command", s.command.is_some(), &[Redis]),
        ("method", s.method.is_some(), &[Http]),
        ("headers", !s.headers.is_empty(), &[Http]),
        ("body", s.body.is_some(), &[Http]),
        ("dead_letter_topic", s.dead_letter_topic.is_some(), &[Http]),
        (
            "password_file",
            s.password_file.is_some(),
            &[Postgresql, Redis, Mqtt],
        ),
        (
            "password_env",
            s.password_env.is_some(),
            &[Postgresql, Redis, Mqtt],
        ),
        ("server", s.server.is_some(), &[Mqtt]),
        ("client_id", s.client_id.is_some(), &[Mqtt]),
        ("protocol_version", s.protocol_version.is_some(), &[Mqtt]),
        ("username", s.username.is_some(), &[Mqtt]),
        ("remote_topic", s.remote_topic.is_some(), &[Mqtt]),
        ("qos", s.qos.is_some(), &[Mqtt]),
        ("retain", s.retain.is_some(), &[Mqtt]),
        ("payload", s.payload.is_some(), &[Mqtt]),
        ("keepalive_secs", s.keepalive_secs.is_some(), &[Mqtt]),
        ("bootstrap", s.bootstrap.is_some(), &[Kafka]),
        ("topic", s.topic.is_some(), &[Kafka]),
        ("key", s.key.is_some(), &[Kafka]),
        ("value", s.value.is_some(), &[Kafka]),
        ("partition", s.partition.is_some(), &[Kafka]),
    ];
    for (field, set, kinds) in fields {
        if set && !kinds.contains(&s.kind) {
            let problem = format!("not a field of {} sinks", s.kind.name());
            return Err(bad(i, field, problem));
        }
    }
    let required: &[&str] = match s.kind {
        Http => &["url"],
        Postgresql => &["url", "sql"],
        Redis => &["url", "command"],
        Mqtt => &["server", "client_id"],
        Kafka => &["bootstrap", "topic"],
    };
    for field in required {
        let set = fields.iter().any(|(f, set, _)| f == field && *set);
        if !set {
            let problem = format!("required for {} sinks", s.kind.name());
            return Err(bad(i, field, problem));
        }
    }
    validate_values(i, s)
}

/// Values with a fixed form: HTTP method, dead-letter topic, MQTT fields.
fn validate_values(i: usize, s: &SinkSpec) -> Result<(), ConfigError> {
    if let Some(method) = &s.method {
        if !["get", "post", "put", "delete"].contains(&method.to_ascii_lowercase().as_str()) {
            return Err(bad(
                i,
                "method",
                format!("`{method}`: get, post, put or delete"),
            ));
        }
    }
    validate_mqtt(i, s)?;
    if let Some(topic) = &s.dead_letter_topic {
        if topic.is_empty() || topic.starts_with('$') || topic.contains(['+', '#', '\0']) {
            return Err(bad(
                i,
                "dead_letter_topic",
                "must be a topic name (no wildcards, no `$`)",
            ));
        }
    }
    Ok(())
}

fn validate_mqtt(i: usize, s: &SinkSpec) -> Result<(), ConfigError> {
    if let Some(server) = &s.server {
        let port = server
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        if port.is_none() {
            return Err(bad(i, "server", format!("`{server}`: host:port")));
        }
    }
    if let Some(q) = s.qos {
        if q > 2 {
            return Err(bad(i, "qos", format!("{q} is not a QoS (0, 1 or 2)")));
        }
    }
    if let Some(v) = &s.protocol_version {
        if v != "5" && v != "3.1.1" {
            return Err(bad(i, "protocol_version", format!("`{v}`: 5 or 3.1.1")));
        }
    }
    if let Some(id) = &s.client_id {
        if id.is_empty() || id.len() > 256 {
            return Err(bad(i, "client_id", "must be 1 to 256 characters"));
        }
    }
    Ok(())
}

/// The fields of a message, as a sink's topics feed gives them to its templates (EMQX's names).
pub const MESSAGE_FIELDS: [&str; 14] = [
    "id",
    "clientid",
    "username",
    "payload",
    "peerhost",
    "topic",
    "qos",
    "flags",
    "retain",
    "pub_props",
    "timestamp",
    "publish_received_at",
    "node",
    "event",
];

/// Every template of a sink, with the field that holds it.
fn templates(s: &SinkSpec) -> Vec<(String, &str)> {
    let mut out: Vec<(String, &str)> = Vec::new();
    let optional = [
        ("url", s.url.as_deref().filter(|_| s.kind == SinkKind::Http)),
        ("command", s.command.as_deref()),
        ("body", s.body.as_deref()),
        ("remote_topic", s.remote_topic.as_deref()),
        ("retain", s.retain.as_deref()),
        ("payload", s.payload.as_deref()),
        ("topic", s.topic.as_deref()),
        ("key", s.key.as_deref()),
        ("value", s.value.as_deref()),
        ("partition", s.partition.as_deref()),
    ];
    for (field, text) in optional {
        if let Some(text) = text {
            out.push((field.to_string(), text));
        }
    }
    for (name, value) in &s.headers {
        out.push((format!("headers.{name}"), value.as_str()));
    }
    out
}

/// Templates parse (the SQL one into parameters); a sink with `topics` names only message
/// fields in them (its topics feed writes messages, whose other fields would be empty).
fn validate_templates(i: usize, s: &SinkSpec) -> Result<(), ConfigError> {
    let mut roots: Vec<(String, String)> = Vec::new();
    for (field, text) in templates(s) {
        let t = keelmq_rules::template::Template::parse(text)
            .map_err(|e| bad(i, &field, e.to_string()))?;
        roots.extend(
            t.roots()
                .into_iter()
                .map(|r| (field.clone(), r.to_string())),
        );
    }
    if let Some(sql) = &s.sql {
        let t = keelmq_rules::template::SqlTemplate::parse(sql).map_err(|e| bad(i, "sql", e))?;
        roots.extend(
            t.roots()
                .into_iter()
                .map(|r| ("sql".to_string(), r.to_string())),
        );
    }
    if s.command
        .as_deref()
        .is_some_and(|c| c.split_whitespace().next().is_none())
    {
        return Err(bad(i, "command", "is empty"));
    }
    if s.topics.is_empty() {
        return Ok(());
    }
    match roots
        .iter()
        .find(|(_, r)| !MESSAGE_FIELDS.contains(&r.as_str()))
    {
        Some((field, root)) => Err(bad(
            i,
            field,
            format!(
                "`${{{root}…}}` is not a field of a message ({}), which the sink's topics are \
                 written as",
                MESSAGE_FIELDS.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// Checks the `sink` actions of rules: each names a sink of `sinks`.
pub fn validate_rule_sinks(
    rules: &[crate::RuleSpec],
    sinks: &[SinkSpec],
) -> Result<(), ConfigError> {
    for (i, rule) in rules.iter().enumerate() {
        for (j, action) in rule.actions.iter().enumerate() {
            let crate::rules::ActionSpec::Sink { name } = action else {
                continue;
            };
            let field = format!("rules[{i}].actions[{j}].name");
            let Some(sink) = sinks.iter().find(|s| &s.name == name) else {
                return Err(ConfigError::Listener {
                    field,
                    problem: format!("no sink is named `{name}`"),
                });
            };
            let foreach = keelmq_rules::Rule::compile(&rule.sql)
                .is_ok_and(|r| matches!(r.statement(), keelmq_rules::Statement::Foreach(_)));
            if foreach && sink.kind == SinkKind::Mqtt {
                return Err(ConfigError::Listener {
                    field,
                    problem: format!(
                        "`{name}` is an mqtt sink, which takes one output per message: a FOREACH rule cannot feed it"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Checks the rules' `FROM "$bridges/<kind>:<name>"`: each names a source of that kind.
pub fn validate_rule_sources(
    rules: &[crate::RuleSpec],
    sources: &[SourceSpec],
) -> Result<(), ConfigError> {
    use keelmq_rules::sources::Source;
    for (i, rule) in rules.iter().enumerate() {
        let Ok(compiled) = keelmq_rules::Rule::compile(&rule.sql) else {
            continue; // reported by the rule's own check
        };
        for source in compiled.sources() {
            let Source::Bridge { kind, name } = source else {
                continue;
            };
            let found = sources
                .iter()
                .any(|s| &s.name == name && s.kind.name() == *kind);
            if !found {
                return Err(ConfigError::Listener {
                    field: format!("rules[{i}].sql"),
                    problem: format!(
                        "FROM \"$bridges/{kind}:{name}\": no {kind} source is named `{name}`"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// What a source reads from.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Mqtt,
    Kafka,
}

impl SourceKind {
    /// As configured (`mqtt`, `kafka`), and in `$bridges/<kind>:<name>`.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Mqtt => "mqtt",
            SourceKind::Kafka => "kafka",
        }
    }
}

/// A topic filter a source subscribes to on the remote broker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceTopic {
    pub filter: String,
    #[serde(default = "default_source_qos")]
    pub qos: u8,
}

fn default_source_qos() -> u8 {
    1
}

/// One `[[sources]]` entry: messages of another system published into the broker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Unique; letters, digits, `_`, `-` and `.` (its session in the broker is
    /// `$source/<name>`).
    pub name: String,
    pub kind: SourceKind,
    /// mqtt: the remote broker, `host:port`.
    #[serde(default)]
    pub server: String,
    /// mqtt: the client id of the persistent remote session.
    #[serde(default)]
    pub client_id: String,
    /// `5` (default) or `3.1.1`.
    #[serde(default)]
    pub protocol_version: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// mqtt: the remote filters and their QoS.
    #[serde(default)]
    pub topics: Vec<SourceTopic>,
    /// kafka: bootstrap brokers, `host:port[,host:port…]`.
    #[serde(default)]
    pub bootstrap: Option<String>,
    /// kafka: the topic read (every partition, from the offsets the source stored, or from
    /// the start).
    #[serde(default)]
    pub topic: Option<String>,
    /// kafka: the QoS of the messages published here (default 1).
    #[serde(default)]
    pub qos: Option<u8>,
    /// The local topic template over the remote message (`topic`, `payload`, `qos`,
    /// `retain`; Kafka: `topic`, `key`, `payload`, `partition`, `offset`, `headers`); default
    /// `${topic}`.
    #[serde(default = "default_local_topic")]
    pub local_topic: String,
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u16,
    #[serde(default)]
    pub retry: RetrySpec,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn default_local_topic() -> String {
    "${topic}".into()
}

fn default_keepalive() -> u16 {
    60
}

impl SourceSpec {
    /// The password from `password_file` or `password_env`, if one is set.
    pub fn password(&self) -> Result<Option<String>, String> {
        password(&self.password_file, &self.password_env)
    }
}

fn password(file: &Option<PathBuf>, env: &Option<String>) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    if let Some(var) = env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("environment variable {var} is not set"));
    }
    Ok(None)
}

fn validate_mqtt_source(i: usize, s: &SourceSpec) -> Result<(), ConfigError> {
    let bad = |field: &str, problem: String| ConfigError::Listener {
        field: format!("sources[{i}].{field}"),
        problem,
    };
    if s.server
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        return Err(bad("server", format!("`{}`: host:port", s.server)));
    }
    if s.client_id.is_empty() || s.client_id.len() > 256 {
        return Err(bad("client_id", "must be 1 to 256 characters".into()));
    }
    if s.topics.is_empty() {
        return Err(bad("topics", "at least one { filter, qos }".into()));
    }
    for (j, t) in s.topics.iter().enumerate() {
        if !keelmq_rules::sources::valid_filter(&t.filter) {
            return Err(bad(
                &format!("topics[{j}].filter"),
                format!("`{}`", t.filter),
            ));
        }
        if t.qos > 2 {
            return Err(bad(
                &format!("topics[{j}].qos"),
                format!("{} is not a QoS", t.qos),
            ));
        }
    }
    if s.bootstrap.is_some() || s.topic.is_some() || s.qos.is_some() {
        return Err(bad(
            "bootstrap",
            "bootstrap, topic and qos are for kafka sources".into(),
        ));
    }
    Ok(())
}

/// Checks every source: unique names, the remote's address, filters and QoS, templates.
pub fn validate_sources(sources: &[SourceSpec]) -> Result<(), ConfigError> {
    let bad = |i: usize, field: &str, problem: String| ConfigError::Listener {
        field: format!("sources[{i}].{field}"),
        problem,
    };
    let mut names = HashSet::new();
    for (i, s) in sources.iter().enumerate() {
        crate::rules::validate_name(&s.name).map_err(|p| bad(i, "name", p))?;
        if !names.insert(s.name.as_str()) {
            return Err(bad(i, "name", format!("`{}` is used twice", s.name)));
        }
        match s.kind {
            SourceKind::Mqtt => validate_mqtt_source(i, s)?,
            SourceKind::Kafka => {
                if s.bootstrap.is_none() {
                    return Err(bad(i, "bootstrap", "required for kafka sources".into()));
                }
                if s.topic.as_deref().is_none_or(str::is_empty) {
                    return Err(bad(i, "topic", "required for kafka sources".into()));
                }
                if s.qos.is_some_and(|q| q > 2) {
                    return Err(bad(i, "qos", "not a QoS (0, 1 or 2)".into()));
                }
            }
        }
        keelmq_rules::template::Template::parse(&s.local_topic)
            .map_err(|e| bad(i, "local_topic", e.to_string()))?;
        if let Some(v) = &s.protocol_version {
            if v != "5" && v != "3.1.1" {
                return Err(bad(i, "protocol_version", format!("`{v}`: 5 or 3.1.1")));
            }
        }
        if s.password_file.is_some() && s.password_env.is_some() {
            return Err(bad(
                i,
                "password_env",
                "set password_file or password_env, not both".into(),
            ));
        }
        if s.retry.initial_ms == 0 || s.retry.max_ms < s.retry.initial_ms {
            return Err(bad(i, "retry", "needs 0 < initial_ms <= max_ms".into()));
        }
    }
    Ok(())
}
