//! Inline topic rules: evaluated on the publish path, so their republished messages are
//! routed and logged in the same commit as the message they come from (`hooks::PublishRules`,
//! `Broker::plan_publish`). Exactly once by construction: no queue, no marks, no
//! acknowledgements. A rule runs inline when its actions are console or republishes whose
//! RETAIN is `false` or follows the message's (`${flags.retain}`, EMQX's default); a republish
//! that may set RETAIN on its own runs on a durable consumer instead (`consumer`).
//!
//! Rules are found through a topic trie of their `FROM` filters, so a message costs only the
//! rules that match it.

use std::sync::Arc;

use crate::broker::local::local_message;
use crate::broker::metrics::RuleStats;
use crate::broker::{Broker, Metrics};
use crate::codec::{QoS, SubscriptionOptions};
use crate::config::{ActionSpec, TemplateOr};
use crate::router::{ClientId, Match, Router, Subscription};
use crate::session::Message;

use super::actions::Action;
use super::{consumer_id, fields, Compiled, CONSUMER_PREFIX};

/// At most this many outputs of inline rules per message, and this many bytes of their
/// payloads and topics: they share the message's commit (one WAL record of at most 64 MiB,
/// which the message may fill up to twice with its retained copy). Beyond, outputs are
/// discarded and counted.
pub const MAX_OUTPUTS: usize = 1000;
pub const MAX_OUTPUT_BYTES: usize = keelmq_config::MAX_DURABLE_PACKET_SIZE as usize;

/// Whether a rule's actions let it run inline.
pub fn eligible(actions: &[ActionSpec]) -> bool {
    actions.iter().all(|a| match a {
        ActionSpec::Console | ActionSpec::Sink { .. } => true,
        ActionSpec::Republish(r) => match &r.retain {
            TemplateOr::Value(retain) => !retain,
            TemplateOr::Template(t) => t.trim() == "${flags.retain}",
        },
    })
}

/// A rule with its counters.
#[derive(Clone)]
pub struct InlineRule {
    pub rule: Arc<Compiled>,
    pub stats: Arc<RuleStats>,
}

/// The inline rules, by topic filter.
pub struct InlineRules {
    trie: Router<InlineRule>,
}

impl InlineRules {
    pub fn new(rules: Vec<InlineRule>) -> InlineRules {
        let mut trie = Router::new();
        for r in rules {
            for filter in &r.rule.topics {
                let sub = Subscription {
                    client: Arc::from(r.rule.id.as_str()),
                    options: SubscriptionOptions::qos(QoS::ExactlyOnce),
                    identifier: None,
                    target: r.clone(),
                };
                trie.subscribe(filter, sub);
            }
        }
        InlineRules { trie }
    }

    /// The rules whose filters match `topics`, each once.
    fn matching<'t>(&self, topics: impl IntoIterator<Item = &'t str>) -> Vec<InlineRule> {
        let mut found: Vec<InlineRule> = Vec::new();
        for topic in topics {
            self.trie.matches(topic, |m| {
                if let Match::Direct(sub) = m {
                    if !found.iter().any(|f| Arc::ptr_eq(&f.rule, &sub.target.rule)) {
                        found.push(sub.target.clone());
                    }
                }
            });
        }
        found
    }
}

impl crate::hooks::PublishRules for InlineRules {
    fn outputs(&self, broker: &Broker, message: &Message, queued_for: &[ClientId]) -> Vec<Message> {
        // A source's message is also read under `$bridges/<kind>:<name>`.
        let bridge = broker.bridge_topic(message);
        let mut rules = self.matching([&*message.topic].into_iter().chain(bridge.as_deref()));
        // A rule still subscribed through its consumer session reads the message there.
        rules.retain(|r| !queued_for.iter().any(|c| is_consumer_of(c, &r.rule.id)));
        if rules.is_empty() {
            return Vec::new();
        }
        let wanted = |f: &str| rules.iter().any(|r| r.rule.rule.reads(f));
        let input = fields::message_for(broker, message, false, &wanted);
        let mut out: Vec<Message> = Vec::new();
        let mut bytes = 0;
        for InlineRule { rule, stats } in &rules {
            Metrics::add(&stats.matched, 1);
            let Some(outputs) = super::evaluate(rule, stats, input.clone()) else {
                continue;
            };
            for output in &outputs {
                for action in rule.actions.iter().filter(|a| !a.is_sink()) {
                    Metrics::add(&stats.actions_total, 1);
                    let Some(m) = run(broker, rule, stats, action, output) else {
                        continue;
                    };
                    bytes += m.payload.len() + m.topic.len();
                    if out.len() >= MAX_OUTPUTS || bytes > MAX_OUTPUT_BYTES {
                        let why = "the message's outputs exceed 1000 or 16 MiB";
                        super::consumer::discard(rule, stats, why);
                        continue;
                    }
                    Metrics::add(&stats.actions_success, 1);
                    out.push(m);
                }
            }
        }
        out
    }
}

/// One action for one output: a console line (counted as done), or the message a republish
/// makes (counted by the caller, which may still discard it).
fn run(
    broker: &Broker,
    rule: &Compiled,
    stats: &RuleStats,
    action: &Action,
    output: &serde_json::Map<String, serde_json::Value>,
) -> Option<Message> {
    let republish = match action {
        Action::Console => {
            let output = serde_json::Value::Object(output.clone());
            tracing::info!(target: "keelmq::rules", rule = %rule.id, %output, "rule output");
            Metrics::add(&stats.actions_success, 1);
            return None;
        }
        Action::Republish(r) => r,
        // Its sink's subscriber reads the rule's topics itself.
        Action::Sink(_) => return None,
    };
    let publish = match republish.render(output) {
        Ok(p) => p,
        Err(why) => {
            super::consumer::discard(rule, stats, &why);
            return None;
        }
    };
    let topic = publish.topic.clone();
    let name = Some(Arc::from(consumer_id(&rule.id)));
    match local_message(broker, name, publish) {
        Some(m) => Some(m),
        None => {
            super::consumer::discard(rule, stats, &format!("invalid topic `{topic}`"));
            None
        }
    }
}

/// Whether `client` is the consumer session of rule `id`.
fn is_consumer_of(client: &str, id: &str) -> bool {
    client.strip_prefix(CONSUMER_PREFIX) == Some(id)
}
