//! Data bridges: sinks that carry the broker's messages to other systems (`[[sinks]]`).
//!
//! Every sink is a set of durable consumers ([`feed`]): its `topics`, and each topic rule
//! whose actions name it, are read through a persistent session of the broker's own
//! (`$sink/<name>/…`, no network client may take it), so what the broker acknowledged is in
//! the sink's queue in the same commit, and stays there — across a `kill -9`, a target that
//! is down or hangs — until the target has it. Retries back off and never give up; a full
//! queue holds publishers back (`max_queued_messages`), never a silent loss. Items the target
//! refuses for good go to the sink's dead-letter topic.
//!
//! Targets ([`target::Target`]): [`http`] (at least once, `Idempotency-Key`), [`postgres`]
//! (typed parameters; exactly once with `ON CONFLICT DO NOTHING` on `${id}`), [`redis`]
//! (exactly once with `SET … NX` on `${id}`). Event rules hand their outputs to a sink as the
//! events happen (best effort, as the events themselves: a bounded queue, counted drops).

pub mod feed;
pub mod http;
pub mod kafka;
pub mod kafka_source;
pub mod mqtt;
pub mod postgres;
pub mod redis;
mod running_sources;
pub mod source;
pub mod target;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::broker::metrics::{RuleStats, SinkStats};
use crate::broker::{Broker, Metrics};
use crate::config::SinkSpec;
use crate::protocol::admission::SINK_CLIENT_ID_PREFIX;
use crate::rules::Compiled;
use feed::Feed;
use target::{Item, Target};

/// Event-rule outputs waiting for a sink, at most; beyond, they are dropped (counted).
pub const EVENT_QUEUE: usize = 1024;

/// A running sink: its configuration, counters and target.
pub struct Sink {
    pub spec: SinkSpec,
    pub stats: Arc<SinkStats>,
    pub target: Box<dyn Target>,
    /// Event-rule outputs, written by the sink's event task.
    events: mpsc::Sender<Item>,
}

impl Sink {
    /// The target has `item` (`delivered`) or refused it for good: with `ack = "delivered"`,
    /// a publisher waiting for the message (read through `topics`) may be acknowledged.
    pub(crate) fn confirm(&self, broker: &Broker, item: &Item, delivered: bool) {
        if self.spec.ack == keelmq_config::SinkAck::Delivered && item.rule.is_none() {
            broker.confirm_delivery(item.id, &topics_session(&self.spec.name), delivered);
        }
    }
}

/// The session of a sink's `topics` feed.
pub fn topics_session(sink: &str) -> String {
    format!("{SINK_CLIENT_ID_PREFIX}{sink}/$topics")
}

/// The session of the feed of `rule` into `sink`.
pub fn rule_session(sink: &str, rule: &str) -> String {
    format!("{SINK_CLIENT_ID_PREFIX}{sink}/{rule}")
}

/// The in-process client that publishes a sink's dead letters.
fn dead_letter_client(sink: &str) -> String {
    format!("{SINK_CLIENT_ID_PREFIX}{sink}")
}

/// A feed's task.
struct Running {
    feed: Arc<Feed>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The sinks and their feeds. Cheap to clone.
#[derive(Clone)]
pub struct Bridges {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    sinks: Mutex<BTreeMap<String, Arc<Sink>>>,
    /// By session client id.
    feeds: tokio::sync::Mutex<HashMap<String, Running>>,
    /// The event-rule writers.
    event_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The running sources, by name.
    sources: tokio::sync::Mutex<BTreeMap<String, running_sources::SourceRun>>,
    /// Stops the event writers and the sources at shutdown.
    stop: watch::Sender<bool>,
}

impl Bridges {
    /// Opens the enabled sinks of `specs` (a password that cannot be read, a URL or template
    /// that does not parse: an error naming the sink). Connections are made at the first
    /// write; feeds start with [`Self::set_rules`].
    pub async fn start(
        broker: Broker,
        specs: &[SinkSpec],
        sources: &[crate::config::SourceSpec],
    ) -> Result<Bridges, String> {
        let (stop, _) = watch::channel(false);
        let bridges = Bridges {
            inner: Arc::new(Inner {
                broker,
                sinks: Mutex::new(BTreeMap::new()),
                feeds: tokio::sync::Mutex::new(HashMap::new()),
                event_tasks: Mutex::new(Vec::new()),
                sources: tokio::sync::Mutex::new(BTreeMap::new()),
                stop,
            }),
        };
        for spec in specs {
            let sink = bridges.prepare(spec, None)?;
            bridges.install(sink);
        }
        bridges.publish_delivered();
        bridges.reload_sources(sources, None).await?;
        Ok(bridges)
    }

    /// Opens a sink's target (nothing started yet): an error names the sink. `stats`: the
    /// counters of the sink it replaces, kept across a change.
    fn prepare(
        &self,
        spec: &SinkSpec,
        stats: Option<Arc<SinkStats>>,
    ) -> Result<(Arc<Sink>, mpsc::Receiver<Item>), String> {
        let target = target::open(spec).map_err(|e| format!("sink `{}`: {e}", spec.name))?;
        let stats = stats
            .filter(|s| s.kind == spec.kind.name())
            .unwrap_or_else(|| Arc::new(SinkStats::new(&spec.name, spec.kind.name())));
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let sink = Arc::new(Sink {
            spec: spec.clone(),
            stats,
            target,
            events,
        });
        Ok((sink, rx))
    }

    /// Makes a prepared sink the one of its name and starts its event writer.
    fn install(&self, (sink, rx): (Arc<Sink>, mpsc::Receiver<Item>)) {
        self.inner.broker.add_sink_stats(sink.stats.clone());
        if sink.spec.enabled {
            let task = write_events(
                self.inner.broker.clone(),
                sink.clone(),
                rx,
                self.inner.stop.subscribe(),
            );
            self.inner.event_tasks.lock().push(tokio::spawn(task));
        }
        self.inner.sinks.lock().insert(sink.spec.name.clone(), sink);
    }

    /// Tells the broker which sinks hold their publishers' acknowledgements
    /// (`ack = "delivered"`, enabled) and for how long.
    fn publish_delivered(&self) {
        let delivered = self
            .inner
            .sinks
            .lock()
            .values()
            .filter(|s| s.spec.enabled && s.spec.ack == crate::config::SinkAck::Delivered)
            .map(|s| (s.spec.name.clone(), s.spec.ack_timeout_ms))
            .collect();
        self.inner.broker.set_delivered_sinks(delivered);
    }

    /// Makes the sinks those of `specs` (hot reload, enabling, disabling, restarting): the
    /// targets of new and changed sinks are opened first (an error changes nothing), then
    /// changed sinks replace the old (keeping their counters), removed ones go. Their feeds
    /// follow at the next [`Self::set_rules`]. Returns the names added, changed or removed.
    pub fn reload(&self, specs: &[SinkSpec], restart: Option<&str>) -> Result<Vec<String>, String> {
        let current = self.inner.sinks.lock().clone();
        let mut prepared = Vec::new();
        for spec in specs {
            let old = current.get(&spec.name);
            let same = old.is_some_and(|o| o.spec == *spec) && restart != Some(spec.name.as_str());
            if !same {
                prepared.push(self.prepare(spec, old.map(|o| o.stats.clone()))?);
            }
        }
        let mut changed: Vec<String> = prepared.iter().map(|(s, _)| s.spec.name.clone()).collect();
        for name in current.keys() {
            if !specs.iter().any(|s| &s.name == name) {
                self.inner.sinks.lock().remove(name);
                self.inner.broker.remove_sink_stats(name);
                changed.push(name.clone());
            }
        }
        for p in prepared {
            self.install(p);
        }
        self.publish_delivered();
        Ok(changed)
    }

    /// Every sink's configuration, in name order.
    pub fn specs(&self) -> Vec<SinkSpec> {
        self.inner
            .sinks
            .lock()
            .values()
            .map(|s| s.spec.clone())
            .collect()
    }

    /// Hands an event rule's output to sink `name` (best effort): `false` if the sink is not
    /// running or its event queue is full (counted as dropped).
    pub fn offer(
        &self,
        name: &str,
        rule: &str,
        (id, index): (u64, u32),
        fields: Map<String, Value>,
    ) -> bool {
        let Some(sink) = self.inner.sinks.lock().get(name).cloned() else {
            return false;
        };
        if !sink.spec.enabled {
            return false;
        }
        let mut fields = fields;
        fields
            .entry("id")
            .or_insert_with(|| Value::String(id.to_string()));
        let item = Item {
            id,
            index,
            rule: Some(rule.into()),
            raw: None,
            fields,
        };
        let sent = sink.events.try_send(item).is_ok();
        if sent {
            Metrics::add(&sink.stats.matched, 1);
        } else {
            Metrics::add(&sink.stats.dropped, 1);
        }
        sent
    }

    /// Makes the running feeds those of the enabled sinks' `topics` and of `rules` (the
    /// enabled ones) that name enabled sinks: new ones start (subscribed when this returns),
    /// changed ones restart keeping their queue, and the sessions of feeds that are gone are
    /// removed with what they hold.
    pub async fn set_rules(&self, rules: &[Arc<Compiled>]) {
        let wanted = self.wanted_feeds(rules);
        let mut feeds = self.inner.feeds.lock().await;
        let mut ready = Vec::new();
        let running: Vec<String> = feeds.keys().cloned().collect();
        for session in running {
            let keep = match (feeds.get(&session), wanted.get(&session)) {
                (Some(r), Some(w)) => same_feed(&r.feed, w),
                _ => false,
            };
            if !keep {
                if let Some(r) = feeds.remove(&session) {
                    stop(r).await;
                }
            }
        }
        for (session, feed) in wanted.iter() {
            if feeds.contains_key(session) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let (tx, rx) = oneshot::channel();
            let broker = self.inner.broker.clone();
            let task = tokio::spawn(supervise(broker, feed.clone(), stopped, tx));
            ready.push(rx);
            feeds.insert(
                session.clone(),
                Running {
                    feed: feed.clone(),
                    stop,
                    task,
                },
            );
        }
        drop(feeds);
        for rx in ready {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), rx).await;
        }
        self.remove_stale_sessions(&wanted).await;
    }

    /// The feeds the sinks and `rules` call for, by session.
    fn wanted_feeds(&self, rules: &[Arc<Compiled>]) -> HashMap<String, Arc<Feed>> {
        let sinks = self.inner.sinks.lock().clone();
        let mut wanted = HashMap::new();
        for sink in sinks.values().filter(|s| s.spec.enabled) {
            if sink.spec.topics.is_empty() {
                continue;
            }
            let session = topics_session(&sink.spec.name);
            let feed = Feed {
                sink: sink.clone(),
                session: session.clone(),
                topics: sink.spec.topics.clone(),
                rule: None,
            };
            wanted.insert(session, Arc::new(feed));
        }
        for rule in rules.iter().filter(|r| !r.topics().is_empty()) {
            for name in rule.sinks() {
                let Some(sink) = sinks.get(name).filter(|s| s.spec.enabled) else {
                    continue;
                };
                let session = rule_session(name, &rule.id);
                let feed = Feed {
                    sink: sink.clone(),
                    session: session.clone(),
                    topics: rule.topics().to_vec(),
                    rule: Some((rule.clone(), self.rule_stats(rule, name))),
                };
                wanted.insert(session, Arc::new(feed));
            }
        }
        wanted
    }

    /// The counters the feed of `rule` into `sink` keeps for the rule: the rule's own when
    /// only sinks evaluate it (in the feed of its first sink), a private set otherwise (the
    /// rule engine counts it).
    fn rule_stats(&self, rule: &Compiled, sink: &str) -> Arc<RuleStats> {
        let counts_it = !rule.has_own_actions() && rule.sinks().first() == Some(&sink);
        match (counts_it, self.inner.broker.rule_stats(&rule.id)) {
            (true, Some(stats)) => stats,
            _ => Arc::new(RuleStats::new(&rule.id)),
        }
    }

    /// Removes `$sink/` sessions no feed reads (sinks or rules removed since the last run).
    /// Those of a disabled sink stay, unsubscribed: what they hold was acknowledged to the
    /// sink and is written once it is enabled again.
    async fn remove_stale_sessions(&self, wanted: &HashMap<String, Arc<Feed>>) {
        let disabled: Vec<String> = self
            .inner
            .sinks
            .lock()
            .values()
            .filter(|s| !s.spec.enabled)
            .map(|s| format!("{SINK_CLIENT_ID_PREFIX}{}/", s.spec.name))
            .collect();
        for client in self
            .inner
            .broker
            .client_ids_with_prefix(SINK_CLIENT_ID_PREFIX)
        {
            if wanted.contains_key(&*client) || !client[SINK_CLIENT_ID_PREFIX.len()..].contains('/')
            {
                continue;
            }
            if disabled
                .iter()
                .any(|prefix| client.starts_with(prefix.as_str()))
            {
                pause_session(&self.inner.broker, &client).await;
                continue;
            }
            tracing::info!(session = %client, "removing the subscriber of a sink feed that is gone");
            match self
                .inner
                .broker
                .local_client(client.to_string())
                .session(true, 0)
                .await
            {
                Ok((session, _)) => session.close().await,
                Err(e) => tracing::warn!(session = %client, error = %e, "sink session not removed"),
            }
        }
    }

    /// Stops every feed (each after the write in hand) and the event tasks, at shutdown.
    pub async fn stop_all(&self) {
        let _ = self.inner.stop.send(true);
        let feeds: Vec<Running> = self
            .inner
            .feeds
            .lock()
            .await
            .drain()
            .map(|(_, r)| r)
            .collect();
        for r in feeds {
            stop(r).await;
        }
        self.stop_sources().await;
        // Event writers stop at the signal.
        let tasks: Vec<_> = self.inner.event_tasks.lock().drain(..).collect();
        for mut task in tasks {
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// Unsubscribes the session of a disabled sink's feed, keeping its queue.
async fn pause_session(broker: &Broker, client: &str) {
    let local = broker.local_client(client.to_string());
    let session = match local.consumer_session().await {
        Ok((session, _)) => session,
        Err(e) => {
            tracing::warn!(session = %client, error = %e, "disabled sink's subscriber not paused");
            return;
        }
    };
    let filters = session.filters().unwrap_or_default();
    if !filters.is_empty() {
        if let Err(e) = session.unsubscribe(&filters).await {
            tracing::warn!(session = %client, error = %e, "disabled sink's subscriber not paused");
        }
        tracing::info!(session = %client, "sink disabled: its subscriber keeps its queue, unsubscribed");
    }
    session.close().await;
}

/// Runs a feed, and runs it again (after a second) if it panics: a bug in one item's
/// handling must not stop the sink for good (its deliveries stay in flight, taken again).
async fn supervise(
    broker: Broker,
    feed: Arc<Feed>,
    stopped: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    loop {
        // A second run's readiness nobody awaits.
        let tx = ready.take().unwrap_or_else(|| oneshot::channel().0);
        let (broker, run_feed, stop) = (broker.clone(), feed.clone(), stopped.clone());
        let run = match feed.sink.spec.kind {
            crate::config::SinkKind::Mqtt => tokio::spawn(mqtt::run(broker, run_feed, stop, tx)),
            _ => tokio::spawn(feed::run(broker, run_feed, stop, tx)),
        };
        match run.await {
            Err(e) if e.is_panic() && !*stopped.borrow() => {
                tracing::error!(session = %feed.session, "sink subscriber panicked; restarting");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            _ => return,
        }
    }
}

/// Whether a running feed reads what `wanted` would, the same way.
fn same_feed(running: &Feed, wanted: &Feed) -> bool {
    Arc::ptr_eq(&running.sink, &wanted.sink)
        && running.topics == wanted.topics
        && match (&running.rule, &wanted.rule) {
            (None, None) => true,
            (Some((a, _)), Some((b, _))) => Arc::ptr_eq(a, b),
            _ => false,
        }
}

async fn stop(r: Running) {
    let _ = r.stop.send(true);
    let mut task = r.task;
    while tokio::time::timeout(std::time::Duration::from_secs(10), &mut task)
        .await
        .is_err()
    {
        tracing::warn!(session = %r.feed.session, "waiting for a sink subscriber to stop");
    }
}

/// Writes event-rule outputs as they come, in batches.
async fn write_events(
    broker: Broker,
    sink: Arc<Sink>,
    mut rx: mpsc::Receiver<Item>,
    mut stop: watch::Receiver<bool>,
) {
    let max = sink.spec.batch_size;
    loop {
        let first = tokio::select! {
            item = rx.recv() => match item {
                Some(item) => item,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        if !feed::deliver(&broker, &sink, batch, &mut stop).await {
            return;
        }
    }
}
