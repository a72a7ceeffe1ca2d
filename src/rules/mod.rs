//! The rule engine: EMQX rule SQL (`keelmq-rules`) over the broker's messages and events,
//! with republish and console actions and EMQX's per-rule metrics.
//!
//! - A rule whose `FROM` names topic filters reads them through its own durable consumer
//!   session (`consumer`): a QoS 1/2 message acknowledged to its publisher is processed by every
//!   matching rule exactly once, across crashes. The consumer's queue is bounded like any
//!   session's (`limits.max_queued_messages`/`max_queued_bytes`); when it is full, publishers
//!   are held back (3.x) or refused with 0x97 (v5) — never a silent drop. Rules are found by
//!   the router's topic trie, so a message costs only the rules that match it.
//! - A rule whose `FROM` names `$events/…` reads the broker's events (`events`): best effort,
//!   as in EMQX — a bounded channel whose overflow is dropped and counted (`events_dropped`).
//!   QoS 0 messages are best effort too.
//! - Rules are added, changed, disabled and removed at run time ([`RuleEngine`]; config reload
//!   calls [`RuleEngine::reload`]); [`rule_test`] runs SQL on a sample, like EMQX's
//!   `rule_test`.

mod actions;
pub(crate) mod consumer;
mod events;
pub mod fields;
mod inline;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::broker::metrics::RuleStats;
use crate::broker::{Broker, Metrics};
use crate::config::RuleSpec;
use keelmq_rules::sources::Source;

pub use consumer::consumer_id;

/// Client ids of rule consumers start with this.
pub const CONSUMER_PREFIX: &str = crate::protocol::admission::RESERVED_CLIENT_ID_PREFIX;

/// How often stopping a rule reports that its consumer is still finishing the delivery in hand
/// (and how long adding one waits for its consumer to subscribe).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// A rule ready to run.
#[derive(Debug)]
pub struct Compiled {
    pub id: String,
    rule: keelmq_rules::Rule,
    actions: Vec<actions::Action>,
    /// The topic filters of `FROM`.
    topics: Vec<String>,
    /// The events of `FROM` (EMQX 5 names).
    events: Vec<&'static str>,
    /// Its topic filters are read on the publish path (`inline`), not by a consumer.
    inline: bool,
}

impl Compiled {
    /// Whether the rule reads topics through a durable consumer (not inline).
    fn needs_consumer(&self) -> bool {
        !self.topics.is_empty() && !self.inline
    }

    /// Whether it has actions the rule engine runs itself (not only sinks, whose own
    /// subscribers read the rule's topics).
    pub fn has_own_actions(&self) -> bool {
        self.actions.iter().any(|a| !a.is_sink())
    }

    /// The sinks its actions name, each once.
    pub fn sinks(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for a in &self.actions {
            if let actions::Action::Sink(name) = a {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// The topic filters of its `FROM`.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Whether the rule reads input field `field`.
    pub fn reads(&self, field: &str) -> bool {
        self.rule.reads(field)
    }

    /// The rule's outputs for `input`, counted in `stats`; `None` when it gives none.
    pub fn outputs(
        &self,
        stats: &RuleStats,
        input: Map<String, Value>,
    ) -> Option<Vec<Map<String, Value>>> {
        evaluate(self, stats, input)
    }

    pub fn new(spec: &RuleSpec) -> Result<Compiled, RuleError> {
        let invalid = |field: &str, e: String| RuleError::Invalid(format!("{field}: {e}"));
        let rule =
            keelmq_rules::Rule::compile(&spec.sql).map_err(|e| invalid("sql", e.to_string()))?;
        let mut compiled = Vec::new();
        for (i, a) in spec.actions.iter().enumerate() {
            compiled.push(
                actions::Action::compile(a).map_err(|e| invalid(&format!("actions[{i}]"), e))?,
            );
        }
        let (mut topics, mut events) = (Vec::new(), Vec::new());
        for source in rule.sources() {
            match source {
                Source::Topic(t) => topics.push(t.clone()),
                Source::Event(e) => events.push(*e),
                Source::Bridge { kind, name } => {
                    topics.push(keelmq_rules::sources::bridge_topic(kind, name));
                }
            }
        }
        Ok(Compiled {
            id: spec.id.clone(),
            rule,
            actions: compiled,
            topics,
            events,
            inline: inline::eligible(&spec.actions),
        })
    }
}

/// Why a rule operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("invalid rule: {0}")]
    Invalid(String),
    #[error("a rule `{0}` exists already")]
    Exists(String),
    #[error("no rule `{0}`")]
    NotFound(String),
}

/// Applies a rule to one input, counting the result; `None` when it gives no output.
fn evaluate(
    rule: &Compiled,
    stats: &RuleStats,
    input: Map<String, Value>,
) -> Option<Vec<Map<String, Value>>> {
    match rule.rule.apply_owned(input) {
        Ok(outputs) if !outputs.is_empty() => {
            Metrics::add(&stats.passed, 1);
            Some(outputs)
        }
        Ok(_) => {
            Metrics::add(&stats.failed, 1);
            Metrics::add(&stats.failed_no_result, 1);
            None
        }
        Err(e) => {
            Metrics::add(&stats.failed, 1);
            Metrics::add(&stats.failed_exception, 1);
            tracing::debug!(rule = %rule.id, error = %e.0, "rule evaluation failed");
            None
        }
    }
}

/// EMQX's `rule_test`: the outputs of `sql` for the input fields `context`.
pub fn rule_test(
    sql: &str,
    context: &Map<String, Value>,
) -> Result<Vec<Map<String, Value>>, String> {
    let rule = keelmq_rules::Rule::compile(sql).map_err(|e| e.to_string())?;
    rule.apply(context).map_err(|e| e.0)
}

/// A rule as the engine holds it.
struct Running {
    spec: RuleSpec,
    compiled: Arc<Compiled>,
    stats: Arc<RuleStats>,
    consumer: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

/// The rule engine of a broker (cheap to clone).
#[derive(Clone)]
pub struct RuleEngine {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    /// The sinks rules' `sink` actions name (their subscribers follow the rules).
    bridges: crate::bridges::Bridges,
    /// Serialises changes (each may wait for a consumer to stop).
    changing: tokio::sync::Mutex<()>,
    rules: Mutex<BTreeMap<String, Running>>,
    events: events::Dispatcher,
}

impl RuleEngine {
    /// Starts the enabled rules of `specs` and removes the consumer sessions of rules that
    /// are gone (or disabled) since the last run.
    pub async fn start(
        broker: Broker,
        specs: &[RuleSpec],
        bridges: crate::bridges::Bridges,
    ) -> Result<RuleEngine, RuleError> {
        let compiled: Vec<_> = specs.iter().map(Compiled::new).collect::<Result<_, _>>()?;
        let engine = RuleEngine {
            inner: Arc::new(Inner {
                events: events::Dispatcher::new(broker.clone(), bridges.clone()),
                bridges,
                broker,
                changing: tokio::sync::Mutex::new(()),
                rules: Mutex::new(BTreeMap::new()),
            }),
        };
        let mut subscribed = Vec::new();
        for (spec, c) in specs.iter().zip(compiled) {
            subscribed.extend(engine.install(spec.clone(), Arc::new(c)));
        }
        for ready in subscribed {
            Self::subscribed(ready).await;
        }
        engine.remove_stale_consumers().await;
        engine.refresh_events();
        engine.sync_sinks().await;
        Ok(engine)
    }

    /// Makes the sinks' feeds follow the rules and the sinks as they are now (after the sinks
    /// changed).
    pub async fn resync_sinks(&self) {
        let _changing = self.inner.changing.lock().await;
        self.sync_sinks().await;
    }

    /// Hands the enabled rules to the sinks, whose subscribers follow the rules that name them.
    async fn sync_sinks(&self) {
        let rules: Vec<Arc<Compiled>> = self
            .inner
            .rules
            .lock()
            .values()
            .filter(|r| r.spec.enabled)
            .map(|r| r.compiled.clone())
            .collect();
        self.inner.bridges.set_rules(&rules).await;
    }

    /// The rules, in id order.
    pub fn list(&self) -> Vec<RuleSpec> {
        self.inner
            .rules
            .lock()
            .values()
            .map(|r| r.spec.clone())
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<RuleSpec> {
        self.inner.rules.lock().get(id).map(|r| r.spec.clone())
    }

    /// Adds a rule (refused if its id exists or it does not compile).
    pub async fn add(&self, spec: RuleSpec) -> Result<(), RuleError> {
        let _changing = self.inner.changing.lock().await;
        if self.inner.rules.lock().contains_key(&spec.id) {
            return Err(RuleError::Exists(spec.id));
        }
        self.validate(&spec)?;
        let compiled = Arc::new(Compiled::new(&spec)?);
        let ready = self.install(spec, compiled);
        self.refresh_events();
        if let Some(ready) = ready {
            Self::subscribed(ready).await;
        }
        self.sync_sinks().await;
        Ok(())
    }

    /// Waits (bounded) until a consumer has subscribed: messages published from then on reach
    /// the rule.
    async fn subscribed(ready: oneshot::Receiver<()>) {
        if tokio::time::timeout(STOP_WAIT, ready).await.is_err() {
            tracing::warn!("a rule consumer did not subscribe in time; it keeps trying");
        }
    }

    /// Replaces the rule of `spec.id`: a topic rule's consumer keeps its queue (what was queued
    /// for the old statement is processed by the new one) and its subscriptions follow the new
    /// `FROM`; disabling it removes the consumer and its queue.
    pub async fn update(&self, spec: RuleSpec) -> Result<(), RuleError> {
        let _changing = self.inner.changing.lock().await;
        self.validate(&spec)?;
        let compiled = Arc::new(Compiled::new(&spec)?);
        let old = self.inner.rules.lock().remove(&spec.id);
        let Some(old) = old else {
            return Err(RuleError::NotFound(spec.id));
        };
        let keeps_consumer = spec.enabled && compiled.needs_consumer();
        // Now inline: what the old consumer holds is processed before its session goes.
        let drains = old.consumer.is_some() && spec.enabled && compiled.inline;
        self.stop(old, !keeps_consumer && !drains).await;
        let ready = self.install(spec, compiled.clone());
        // A new consumer subscribes before the inline rule it replaces stops; an inline rule
        // leaves a message queued for its rule's consumer session to it (until a drain has
        // unsubscribed that session), so each message is read one way, exactly once.
        if let Some(ready) = ready {
            Self::subscribed(ready).await;
        }
        self.refresh_events();
        if drains {
            self.spawn_drain(compiled);
        }
        self.sync_sinks().await;
        Ok(())
    }

    /// Drains the old consumer session of a rule that now runs inline (in the background).
    fn spawn_drain(&self, compiled: Arc<Compiled>) {
        let broker = self.inner.broker.clone();
        let stats = broker
            .rule_stats(&compiled.id)
            .unwrap_or_else(|| Arc::new(RuleStats::new(&compiled.id)));
        tokio::spawn(consumer::drain(broker, compiled, stats));
    }

    /// Enables or disables a rule.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<(), RuleError> {
        let mut spec = self
            .get(id)
            .ok_or_else(|| RuleError::NotFound(id.to_string()))?;
        spec.enabled = enabled;
        self.update(spec).await
    }

    /// Removes a rule, its consumer session and its metrics.
    pub async fn remove(&self, id: &str) -> Result<(), RuleError> {
        let _changing = self.inner.changing.lock().await;
        let old = self.inner.rules.lock().remove(id);
        let old = old.ok_or_else(|| RuleError::NotFound(id.to_string()))?;
        self.stop(old, true).await;
        self.inner.broker.remove_rule_stats(id);
        self.refresh_events();
        self.sync_sinks().await;
        Ok(())
    }

    /// Makes the rules those of `specs` (config reload): adds the new, updates the changed,
    /// removes the missing. All are checked before anything changes.
    pub async fn reload(&self, specs: &[RuleSpec]) -> Result<(), RuleError> {
        for spec in specs {
            self.validate(spec)?;
            Compiled::new(spec)?;
        }
        let current = self.list();
        for old in &current {
            if !specs.iter().any(|s| s.id == old.id) {
                self.remove(&old.id).await?;
            }
        }
        for spec in specs {
            match current.iter().find(|c| c.id == spec.id) {
                None => self.add(spec.clone()).await?,
                Some(c) if c != spec => self.update(spec.clone()).await?,
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Stops every consumer and the event rules (at shutdown), each consumer after the delivery
    /// in hand; inline rules keep running until the broker stops.
    pub async fn stop_all(&self) {
        let _changing = self.inner.changing.lock().await;
        let all: Vec<Running> = std::mem::take(&mut *self.inner.rules.lock())
            .into_values()
            .collect();
        for r in all {
            self.stop(r, false).await;
        }
        // Inline rules stay: every message acknowledged until the broker stops has its outputs.
        self.inner.events.set_rules(Vec::new());
    }

    /// Registers a compiled rule and starts its consumer if it is an enabled topic rule; the
    /// receiver hears when the consumer has subscribed.
    fn install(&self, spec: RuleSpec, compiled: Arc<Compiled>) -> Option<oneshot::Receiver<()>> {
        let broker = &self.inner.broker;
        // A changed rule keeps counting where it was.
        let stats = broker
            .rule_stats(&spec.id)
            .unwrap_or_else(|| Arc::new(RuleStats::new(&spec.id)));
        broker.add_rule_stats(stats.clone());
        let mut subscribed = None;
        let consumer = (spec.enabled && compiled.needs_consumer()).then(|| {
            let (stop, stopped) = watch::channel(false);
            let (ready, ready_rx) = oneshot::channel();
            subscribed = Some(ready_rx);
            let (rule, counts) = (compiled.clone(), stats.clone());
            let task = consumer::run(broker.clone(), rule, counts, stopped, ready);
            (stop, tokio::spawn(task))
        });
        let running = Running {
            spec,
            compiled,
            stats,
            consumer,
        };
        self.inner
            .rules
            .lock()
            .insert(running.spec.id.clone(), running);
        subscribed
    }

    /// Stops a rule's consumer after the delivery in hand; with `discard`, removes its session
    /// (and what is queued in it).
    async fn stop(&self, r: Running, discard: bool) {
        if let Some((stop, mut task)) = r.consumer {
            let _ = stop.send(true);
            // Never aborted: a consumer stops between deliveries (a held output waits for
            // queue room, which a draining subscriber gives or the overflow policy frees).
            while tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
                tracing::warn!(rule = %r.spec.id, "waiting for the rule's consumer to stop");
            }
        }
        if discard {
            self.discard_consumer(&r.spec.id).await;
        }
    }

    /// Ends the consumer session of rule `id`, if there is one.
    async fn discard_consumer(&self, id: &str) {
        let client = self.inner.broker.local_client(consumer_id(id));
        match client.session(true, 0).await {
            Ok((session, _)) => session.close().await,
            Err(e) => tracing::warn!(rule = id, error = %e, "rule consumer session not removed"),
        }
    }

    /// Removes consumer sessions of rules that are not running topic rules.
    /// Removes consumer sessions of rules that are gone or disabled; drains those of rules
    /// that run inline now.
    async fn remove_stale_consumers(&self) {
        for client in self.inner.broker.client_ids_with_prefix(CONSUMER_PREFIX) {
            let Some(id) = client.strip_prefix(CONSUMER_PREFIX) else {
                continue;
            };
            let (consumes, inline) = match self.inner.rules.lock().get(id) {
                Some(r) if r.spec.enabled => (r.consumer.is_some(), Some(r.compiled.clone())),
                _ => (false, None),
            };
            match (consumes, inline) {
                (true, _) => {}
                (false, Some(compiled)) => self.spawn_drain(compiled),
                (false, None) => {
                    tracing::info!(client = %client, "removing the consumer of a rule that is gone");
                    self.discard_consumer(id).await;
                }
            }
        }
    }

    /// Hands the enabled event rules to the event dispatcher, and the enabled inline topic
    /// rules to the publish path.
    fn refresh_events(&self) {
        let rules = self.inner.rules.lock();
        let enabled = || rules.values().filter(|r| r.spec.enabled);
        let event_rules = enabled()
            .filter(|r| !r.compiled.events.is_empty())
            .map(|r| (r.compiled.clone(), r.stats.clone()))
            .collect();
        let inline: Vec<_> = enabled()
            .filter(|r| {
                r.compiled.inline && !r.compiled.topics.is_empty() && r.compiled.has_own_actions()
            })
            .map(|r| inline::InlineRule {
                rule: r.compiled.clone(),
                stats: r.stats.clone(),
            })
            .collect();
        drop(rules);
        self.inner.events.set_rules(event_rules);
        let publish_rules: Option<Arc<dyn crate::hooks::PublishRules>> = match inline.is_empty() {
            true => None,
            false => Some(Arc::new(inline::InlineRules::new(inline))),
        };
        self.inner.broker.set_publish_rules(publish_rules);
    }
}

impl RuleEngine {
    /// The checks `[[rules]]` validation makes, for a rule added at run time (its `sink`
    /// actions must name running sinks).
    fn validate(&self, spec: &RuleSpec) -> Result<(), RuleError> {
        let config = crate::config::Config {
            rules: vec![spec.clone()],
            sinks: self.inner.bridges.specs(),
            sources: self.inner.broker.config().sources.clone(),
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| RuleError::Invalid(e.to_string()))
    }
}
