//! A feed: one durable subscriber of a sink. The sink's `topics` are one feed (session
//! `$sink/<name>/$topics`), each rule whose actions name the sink another (session
//! `$sink/<name>/<rule>`, subscribed to the rule's `FROM`, evaluating the rule itself). A feed
//! takes a batch of deliveries, writes their items, and acknowledges the deliveries only once
//! the target has every item (or refused one for good: it is in the dead-letter topic then).
//! A crash, a stop or a change of the rule before that leaves them in flight in the session:
//! they are written again (at least once; exactly once where the target deduplicates on `id`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::target::{Item, Outcome};
use super::Sink;
use crate::broker::local::{
    LocalDelivery, LocalError, LocalPublish, LocalSession, CONSUMER_WINDOW,
};
use crate::broker::metrics::{RuleStats, SinkStatus};
use crate::broker::{Broker, Metrics};
use crate::codec::QoS;
use crate::rules::consumer::{pause, subscribe_at};
use crate::rules::{fields, Compiled};
use crate::session::RuleReach;

/// How long a feed whose session failed waits before it attaches again.
const REATTACH_WAIT: Duration = Duration::from_secs(1);

/// What a feed reads and for which sink.
pub struct Feed {
    pub sink: Arc<Sink>,
    /// Its session's client id.
    pub session: String,
    pub topics: Vec<String>,
    /// The rule it evaluates (none: messages are written as they are), with the counters it
    /// keeps for the rule (the rule's own when nothing else evaluates it).
    pub rule: Option<(Arc<Compiled>, Arc<RuleStats>)>,
}

/// Runs a feed until `stop` says so or the broker shuts down; `ready` hears once it has
/// subscribed.
pub async fn run(
    broker: Broker,
    feed: Arc<Feed>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    while !*stop.borrow() {
        match consume(&broker, &feed, &mut stop, &mut ready).await {
            Ok(()) | Err(LocalError::ShuttingDown) => return,
            Err(e) => {
                tracing::warn!(sink = %feed.sink.spec.name, session = %feed.session, error = %e,
                    "sink subscriber stopped; attaching again");
                if pause(&mut stop, REATTACH_WAIT).await {
                    return;
                }
            }
        }
    }
}

/// Attaches a feed's session (its queue limited to the sink's), subscribes it to the feed's
/// topics at `qos`, and says it is ready.
pub(crate) async fn attach(
    broker: &Broker,
    feed: &Feed,
    qos: QoS,
    ready: &mut Option<oneshot::Sender<()>>,
) -> Result<LocalSession, LocalError> {
    let client = broker.local_client(feed.session.clone());
    let (session, _) = client.consumer_session().await?;
    session.set_queue_limit(feed.sink.spec.max_queued_messages)?;
    subscribe_at(&session, &feed.topics, qos).await?;
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    Ok(session)
}

/// A batch being written, and whether it was (`false`: stopped first).
type Writing<'a> = std::pin::Pin<Box<dyn Future<Output = (Vec<LocalDelivery>, bool)> + Send + 'a>>;

async fn consume(
    broker: &Broker,
    feed: &Feed,
    stop: &mut watch::Receiver<bool>,
    ready: &mut Option<oneshot::Sender<()>>,
) -> Result<(), LocalError> {
    let mut session = attach(broker, feed, QoS::AtLeastOnce, ready).await?;
    // Its ids go to no MQTT peer: its backlog is bounded by `max_queued_messages` alone.
    session.set_max_packet_id(crate::session::PacketId::MAX)?;
    let sink = &*feed.sink;
    // Up to `inflight_batches` batches being written (acknowledged in order), and the next batch,
    // taken and made into items while they are written.
    let mut writing: FuturesOrdered<Writing<'_>> = FuturesOrdered::new();
    let mut ready: Option<(Vec<LocalDelivery>, Vec<Item>)> = None;
    let result = loop {
        if let Err(e) = fill(broker, feed, &mut session, stop, &mut writing, &mut ready).await {
            break Err(e);
        }
        if writing.is_empty() {
            break Ok(()); // stopped while waiting for a batch
        }
        let holding = ready.is_some();
        let take = async {
            if holding {
                return Ok(None);
            }
            let taken = take_ready(&mut session, sink).await?;
            let items = feed.items(broker, &taken);
            Ok::<_, LocalError>((!taken.is_empty()).then_some((taken, items)))
        };
        let (done, taken) = tokio::join!(writing.next(), take);
        match taken {
            Ok(Some(taken)) => ready = Some(taken),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        let Some((batch, written)) = done else {
            continue;
        };
        if !written {
            break Ok(()); // stopped: the batches stay in flight, written again later
        }
        if let Err(e) = session.ack_many(&batch).await {
            break Err(e);
        }
    };
    close(session, result).await
}

/// Starts writes until `inflight_batches` are being written or nothing more is at hand: the
/// batch taken ahead, a batch waited for when nothing is being written, or what the session
/// gives at once. Returns with nothing being written only when stopped.
async fn fill<'a>(
    broker: &'a Broker,
    feed: &'a Feed,
    session: &mut LocalSession,
    stop: &mut watch::Receiver<bool>,
    writing: &mut FuturesOrdered<Writing<'a>>,
    ready: &mut Option<(Vec<LocalDelivery>, Vec<Item>)>,
) -> Result<(), LocalError> {
    let sink = &*feed.sink;
    while writing.len() < sink.spec.inflight_batches.max(1) {
        let next = match ready.take() {
            Some(r) => Some(r),
            None => {
                let batch = match writing.is_empty() {
                    true => next_batch(session, sink, stop).await?,
                    false => Some(take_ready(session, sink).await?).filter(|t| !t.is_empty()),
                };
                batch.map(|b| {
                    let items = feed.items(broker, &b);
                    (b, items)
                })
            }
        };
        let Some((batch, items)) = next else {
            return Ok(());
        };
        let mut stop_write = stop.clone();
        writing.push_back(Box::pin(async move {
            let written = deliver(broker, sink, items, &mut stop_write).await;
            (batch, written)
        }));
    }
    Ok(())
}

async fn close(session: LocalSession, result: Result<(), LocalError>) -> Result<(), LocalError> {
    session.close().await;
    result
}

/// The most deliveries in a batch: the batches being written and the next one taken fit in
/// the session's window together.
fn batch_max(sink: &Sink) -> usize {
    let batches = sink.spec.inflight_batches.max(1) + 1;
    sink.spec
        .batch_size
        .min(usize::from(CONSUMER_WINDOW) / batches)
}

/// Takes what the session can give at once, up to a batch (never waits).
async fn take_ready(
    session: &mut LocalSession,
    sink: &Sink,
) -> Result<Vec<LocalDelivery>, LocalError> {
    let max = batch_max(sink);
    let mut taken = Vec::new();
    while taken.len() < max && !session.is_idle() {
        taken.push(session.next().await?);
    }
    Ok(taken)
}

/// The next batch: the first delivery, then as many as come within `batch_time_ms`, up to
/// `batch_size`. `None` when stopped while waiting for the first.
async fn next_batch(
    session: &mut LocalSession,
    sink: &Sink,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<LocalDelivery>>, LocalError> {
    let first = tokio::select! {
        d = session.next() => d?,
        _ = stop.changed() => return Ok(None),
    };
    let max = batch_max(sink);
    let deadline = Instant::now() + Duration::from_millis(sink.spec.batch_time_ms);
    let mut batch = vec![first];
    while batch.len() < max {
        if !session.is_idle() {
            batch.push(session.next().await?);
            continue;
        }
        tokio::select! {
            d = session.next() => batch.push(d?),
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(Some(batch))
}

impl Feed {
    /// The items of a batch: each message as it is, or the rule's outputs for it (with `id`,
    /// the message's, unless the rule selects an `id` of its own).
    fn items(&self, broker: &Broker, batch: &[LocalDelivery]) -> Vec<Item> {
        let mut items = Vec::with_capacity(batch.len());
        let reads = self.sink.target.reads();
        let wanted = |f: &str| {
            reads
                .as_ref()
                .is_none_or(|r| f == "id" || r.iter().any(|n| n == f))
        };
        for d in batch {
            let message = &d.delivery.message;
            let Some((rule, stats)) = &self.rule else {
                let fields = fields::message_for(broker, message, d.dup, &wanted);
                items.push(Item {
                    id: message.id,
                    index: 0,
                    rule: None,
                    raw: Some(message.payload.clone()),
                    fields,
                });
                continue;
            };
            Metrics::add(&stats.matched, 1);
            let input = fields::message_for(broker, message, d.dup, &|f| rule.reads(f));
            let outputs = rule.outputs(stats, input).unwrap_or_default();
            for (index, mut fields) in outputs.into_iter().enumerate() {
                fields
                    .entry("id")
                    .or_insert_with(|| Value::String(message.id.to_string()));
                items.push(Item {
                    id: message.id,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    rule: Some(rule.id.as_str().into()),
                    raw: None,
                    fields,
                });
            }
        }
        Metrics::add(&self.sink.stats.matched, items.len() as u64);
        items
    }
}

/// Writes `items` until the target has each (or refused it for good), retrying with
/// back-off and never giving up; `false` if stopped first.
pub async fn deliver(
    broker: &Broker,
    sink: &Sink,
    mut items: Vec<Item>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let (spec, stats) = (&sink.spec, &sink.stats);
    let mut wait = Duration::from_millis(spec.retry.initial_ms);
    let max_wait = Duration::from_millis(spec.retry.max_ms);
    while !items.is_empty() {
        let answer = match attempt(sink, &items, stop).await {
            Some(answer) => answer,
            None => return false,
        };
        match answer {
            Ok(outcomes) if outcomes.len() == items.len() => {
                stats.set_status(SinkStatus::Connected, "");
                match settle(broker, sink, items, outcomes, stop).await {
                    Some(rest) => items = rest,
                    None => return false,
                }
            }
            Ok(_) => fail(
                sink,
                items.len(),
                "the target answered for a different number of items",
            ),
            Err(e) => fail(sink, items.len(), &e),
        }
        if items.is_empty() {
            break;
        }
        Metrics::add(&stats.retried, items.len() as u64);
        if pause(stop, wait).await {
            return false;
        }
        wait = (wait * 2).min(max_wait);
    }
    true
}

/// One write, bounded by `request_timeout_ms`; `None` if stopped meanwhile.
async fn attempt(
    sink: &Sink,
    items: &[Item],
    stop: &mut watch::Receiver<bool>,
) -> Option<Result<Vec<Outcome>, String>> {
    let n = items.len() as u64;
    let timeout = Duration::from_millis(sink.spec.request_timeout_ms);
    Metrics::add(&sink.stats.inflight, n);
    let write = tokio::time::timeout(timeout, sink.target.write(items));
    let answer = tokio::select! {
        a = write => Some(a),
        _ = stop.changed() => None,
    };
    sink.stats
        .inflight
        .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    Some(match answer? {
        Ok(result) => result,
        Err(_) => {
            sink.target.reset();
            Metrics::add(&sink.stats.late_reply, n);
            Err(format!(
                "no answer within {} ms",
                sink.spec.request_timeout_ms
            ))
        }
    })
}

fn fail(sink: &Sink, n: usize, error: &str) {
    if sink.stats.disconnected(n as u64, error) {
        tracing::warn!(sink = %sink.spec.name, kind = sink.spec.kind.name(), error,
            "sink cannot write; retrying");
    }
}

/// Counts what the target took, publishes what it refused to the dead-letter topic, and
/// gives back what is to be tried again; `None` if stopped first.
pub(crate) async fn settle(
    broker: &Broker,
    sink: &Sink,
    items: Vec<Item>,
    outcomes: Vec<Outcome>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<Item>> {
    let mut again = Vec::new();
    for (item, outcome) in items.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Done => {
                Metrics::add(&sink.stats.success, 1);
                sink.confirm(broker, &item, true);
            }
            Outcome::Retry(why) => {
                Metrics::add(&sink.stats.failed, 1);
                tracing::debug!(sink = %sink.spec.name, id = %item.key(), why, "retrying an item");
                again.push(item);
            }
            Outcome::Refused(why) => {
                if !dead_letter(broker, sink, &item, &why, stop).await {
                    return None;
                }
                Metrics::add(&sink.stats.dropped, 1);
                sink.confirm(broker, &item, false);
            }
        }
    }
    Some(again)
}

/// Publishes an item the target refused for good to the sink's dead-letter topic (QoS 1,
/// durable before the item's delivery is acknowledged); `false` if stopped first.
async fn dead_letter(
    broker: &Broker,
    sink: &Sink,
    item: &Item,
    why: &str,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let topic = sink.spec.dead_letter_topic();
    tracing::warn!(sink = %sink.spec.name, id = %item.key(), why, %topic,
        "the target refused an item; published to the dead-letter topic");
    let payload = json!({
        "sink": sink.spec.name,
        "id": item.key(),
        "reason": why,
        "fields": item.fields,
    });
    let mut publish = LocalPublish::new(topic, payload.to_string(), QoS::AtLeastOnce);
    publish.rules = RuleReach::Subscribers;
    let client = broker.local_client(super::dead_letter_client(&sink.spec.name));
    loop {
        // Not cancelled midway (a publish is revealed whole): it reaches subscribers only,
        // never a sink's queue, so it waits at most for a subscriber that drains.
        match client.publish(publish.clone()).await {
            Ok(_) => return true,
            Err(LocalError::ShuttingDown) => return false,
            Err(e) => {
                tracing::warn!(sink = %sink.spec.name, error = %e, "dead-letter publish failed; retrying");
                if pause(stop, REATTACH_WAIT).await {
                    return false;
                }
            }
        }
    }
}
