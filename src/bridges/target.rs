//! What a sink writes: [`Item`]s, handed to a [`Target`] in batches, each answered with an
//! [`Outcome`]. A target keeps its own connection and reconnects on the next write after one
//! failed; it never retries by itself (the feed does, with back-off, and never gives up).

use std::future::Future;
use std::pin::Pin;

use serde_json::{Map, Value};

use crate::config::{SinkKind, SinkSpec};

/// One message, or one output of a rule for a message, to write.
#[derive(Debug, Clone)]
pub struct Item {
    /// The broker's message id: stable across restarts and re-deliveries of the message.
    pub id: u64,
    /// Which output of the message (0 for a message written as it is, or a rule's first
    /// output).
    pub index: u32,
    /// The rule whose output it is (`None`: the message itself).
    pub rule: Option<std::sync::Arc<str>>,
    /// The message's payload, byte for byte (a message written as it is).
    pub raw: Option<bytes::Bytes>,
    /// The fields templates read (`id` among them).
    pub fields: Map<String, Value>,
}

impl Item {
    /// Unique per item, the same each time the item is written (HTTP's `Idempotency-Key`,
    /// Kafka's `keelmq-id` header): `id` for a message, `<rule>:<id>` for a rule's output,
    /// with `-<index>` for its second and later outputs of one message.
    pub fn key(&self) -> String {
        let id = match self.index {
            0 => self.id.to_string(),
            i => format!("{}-{i}", self.id),
        };
        match &self.rule {
            Some(rule) => format!("{rule}:{id}"),
            None => id,
        }
    }
}

/// The first names of the paths of `templates`' placeholders, each once.
pub fn roots<'a>(
    templates: impl IntoIterator<Item = &'a keelmq_rules::template::Template>,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for t in templates {
        for r in t.roots() {
            if !names.iter().any(|n| n == r) {
                names.push(r.to_string());
            }
        }
    }
    names
}

/// What became of one item of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target has it.
    Done,
    /// The target refused it for good (a 4xx, a constraint): it goes to the dead-letter topic.
    Refused(String),
    /// Try again later (the target was busy or failed for this item only).
    Retry(String),
}

pub type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Outcome>, String>> + Send + 'a>>;

/// A system a sink writes to. `write` answers one outcome per item, in order, or an error
/// for the whole batch (connection lost or refused): then every item is tried again.
pub trait Target: Send + Sync {
    fn write<'a>(&'a self, items: &'a [Item]) -> WriteFuture<'a>;

    /// Drops the connection (a write timed out: it may hang on a dead socket); the next
    /// write connects anew.
    fn reset(&self) {}

    /// The message fields its templates read (`None`: all of them), so a message's other
    /// fields are never built.
    fn reads(&self) -> Option<Vec<String>> {
        None
    }
}

/// The target of `spec`; connections are made at the first write (a target that is down
/// does not hold the broker's start back: the sink reports it in its status).
pub fn open(spec: &SinkSpec) -> Result<Box<dyn Target>, String> {
    let password = spec.password()?;
    Ok(match spec.kind {
        SinkKind::Http => Box::new(super::http::HttpTarget::open(spec)?),
        SinkKind::Postgresql => Box::new(super::postgres::PgTarget::open(spec, password)?),
        SinkKind::Redis => Box::new(super::redis::RedisTarget::open(spec, password)?),
        SinkKind::Kafka => Box::new(super::kafka::KafkaTarget::open(spec)?),
        // Its feeds forward themselves (`mqtt::run`); this takes event-rule outputs.
        SinkKind::Mqtt => Box::new(super::mqtt::MqttEvents::open(spec, password)?),
    })
}
