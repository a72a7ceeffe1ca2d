//! A topic rule's durable consumer: the in-process session `$rule/<id>` subscribed (QoS 1) to
//! the rule's topic filters, processing its deliveries in order.
//!
//! Exactly once per (rule, message): every republish of a delivery is logged in the same
//! commit as a mark of (source message id, output number) in the consumer's session
//! (`LocalSession::publish_output`), and the delivery is acknowledged only once all its outputs
//! are durable; the acknowledgement forgets the marks. After a crash an unacknowledged delivery
//! comes back and its outputs are computed again; those already published find their mark and
//! are skipped. QoS 0 deliveries are processed at most once, without marks.
//!
//! Pipelined: the consumer goes on with its next deliveries while the outputs of earlier ones
//! wait for their fdatasync (at most the session's in-flight window, `mqtt.max_inflight`), so
//! consecutive outputs share one; a completer task waits for them in order and hands each
//! finished delivery back to be acknowledged.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::actions::Action;
use super::{fields, Compiled};
use crate::broker::local::{LocalClient, LocalDelivery, LocalError, LocalSession, PendingOutput};
use crate::broker::metrics::RuleStats;
use crate::broker::{Broker, Metrics};
use crate::codec::{QoS, RetainHandling, SubscriptionOptions};

/// The first and the longest wait before a failed action (or a failed session attach) is
/// tried again; it doubles in between and never gives up.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// The client id of a rule's consumer session (no network client may take it: the broker owns
/// it).
pub fn consumer_id(rule: &str) -> String {
    format!("{}{rule}", super::CONSUMER_PREFIX)
}

/// Runs a topic rule until `stop` says so (or the broker shuts down).
pub async fn run(
    broker: Broker,
    rule: Arc<Compiled>,
    stats: Arc<RuleStats>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) {
    let client = broker.local_client(consumer_id(&rule.id));
    let mut wait = RETRY_FIRST;
    let mut ready = Some(ready);
    while !*stop.borrow() {
        let consumed = consume(
            &broker, &client, &rule, &stats, &mut stop, &mut ready, false,
        );
        match consumed.await {
            Ok(()) | Err(LocalError::ShuttingDown) => return,
            Err(e) => {
                tracing::warn!(rule = %rule.id, error = %e, "rule consumer stopped; restarting");
                if pause(&mut stop, wait).await {
                    return;
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Processes what is left in the consumer session of a rule that now runs inline (with the
/// rule as it is now), unsubscribed, then removes the session: nothing acknowledged before the
/// change is skipped. Messages published while the rule changes may be processed both ways.
pub async fn drain(broker: Broker, rule: Arc<Compiled>, stats: Arc<RuleStats>) {
    let (_keep, mut stop) = watch::channel(false);
    let client = broker.local_client(consumer_id(&rule.id));
    let drained = consume(&broker, &client, &rule, &stats, &mut stop, &mut None, true).await;
    if let Err(e) = drained {
        tracing::warn!(rule = %rule.id, error = %e, "the rule's old consumer queue was not drained");
        return;
    }
    match client.session(true, 0).await {
        Ok((session, _)) => session.close().await,
        Err(e) => tracing::warn!(rule = %rule.id, error = %e, "rule consumer session not removed"),
    }
}

/// Sleeps for `d`; `true` if `stop` was set meanwhile.
pub(crate) async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Acknowledgements gathered at most before they are logged together.
const ACK_BATCH: usize = 256;

/// A delivery whose outputs are on their way to the log.
struct Processed {
    delivery: LocalDelivery,
    outputs: Vec<PendingOutput>,
}

/// Attaches the consumer session, brings its subscriptions in line with the rule (none when
/// `drain`ing), and processes deliveries until stopped (or, draining, until none is left).
async fn consume(
    broker: &Broker,
    client: &LocalClient,
    rule: &Compiled,
    stats: &RuleStats,
    stop: &mut watch::Receiver<bool>,
    ready: &mut Option<oneshot::Sender<()>>,
    drain: bool,
) -> Result<(), LocalError> {
    let (mut session, _) = client.consumer_session().await?;
    let topics: &[String] = if drain { &[] } else { &rule.topics };
    subscribe(&session, topics).await?;
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    let window = usize::from(crate::broker::local::CONSUMER_WINDOW);
    let (to_complete, pending) = mpsc::channel::<Processed>(window);
    let (to_ack, mut done) = mpsc::channel::<Result<LocalDelivery, LocalError>>(window);
    let completer = tokio::spawn(complete(broker.clone(), pending, to_ack));
    // Deliveries to acknowledge, in one batch (one log append) whenever the consumer would wait.
    let mut acks: Vec<LocalDelivery> = Vec::new();
    // Deliveries handed to the completer and not back yet.
    let mut outstanding = 0usize;
    let result = loop {
        if !acks.is_empty() && session.is_idle() {
            session.ack_many(&acks).await?;
            acks.clear();
        }
        if drain && outstanding == 0 && acks.is_empty() && session.is_idle() {
            break Ok(());
        }
        tokio::select! {
            finished = done.recv() => match finished {
                Some(Ok(d)) => {
                    outstanding -= 1;
                    acks.push(d);
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
            d = session.next() => {
                let d = d?;
                let outputs = process(broker, rule, stats, &session, &d, stop).await?;
                // Only QoS 1/2 deliveries have outputs to wait for; they are bounded by the
                // in-flight window, so neither channel can fill while the other waits.
                if outputs.is_empty() {
                    acks.push(d);
                    if acks.len() >= ACK_BATCH {
                        session.ack_many(&acks).await?;
                        acks.clear();
                    }
                    continue;
                }
                let processed = Processed { delivery: d, outputs };
                if to_complete.send(processed).await.is_err() {
                    break Ok(());
                }
                outstanding += 1;
            }
            _ = stop.changed() => break Ok(()),
        }
    };
    session.ack_many(&acks).await?;
    finish(session, to_complete, done, completer).await?;
    result
}

/// Waits for what was logged and acknowledges it, then detaches the session.
async fn finish(
    mut session: LocalSession,
    to_complete: mpsc::Sender<Processed>,
    mut done: mpsc::Receiver<Result<LocalDelivery, LocalError>>,
    completer: tokio::task::JoinHandle<()>,
) -> Result<(), LocalError> {
    drop(to_complete);
    while let Some(Ok(d)) = done.recv().await {
        session.ack_many(std::slice::from_ref(&d)).await?;
    }
    let _ = completer.await;
    session.close().await;
    Ok(())
}

/// Subscribes the consumer to `topics` and drops the filters it no longer reads.
async fn subscribe(session: &LocalSession, topics: &[String]) -> Result<(), LocalError> {
    subscribe_at(session, topics, QoS::AtLeastOnce).await
}

/// Subscribes the consumer to `topics` at `qos` (no retained messages) and drops the filters
/// it no longer reads.
pub(crate) async fn subscribe_at(
    session: &LocalSession,
    topics: &[String],
    qos: QoS,
) -> Result<(), LocalError> {
    let options = SubscriptionOptions {
        retain_handling: RetainHandling::Never,
        ..SubscriptionOptions::qos(qos)
    };
    let filters: Vec<_> = topics.iter().map(|t| (t.clone(), options)).collect();
    if !filters.is_empty() {
        session.subscribe(filters).await?;
    }
    let stale: Vec<String> = session
        .filters()?
        .into_iter()
        .filter(|f| !topics.contains(f))
        .collect();
    if !stale.is_empty() {
        session.unsubscribe(&stale).await?;
    }
    Ok(())
}

/// Waits for the outputs of each processed delivery, in order, then hands the delivery back to
/// be acknowledged (never cancelled: every logged output is made visible or given back).
async fn complete(
    broker: Broker,
    mut pending: mpsc::Receiver<Processed>,
    done: mpsc::Sender<Result<LocalDelivery, LocalError>>,
) {
    while let Some(p) = pending.recv().await {
        let mut result = Ok(p.delivery);
        for output in p.outputs {
            if let Err(e) = output.wait(&broker).await {
                result = Err(e);
            }
        }
        if done.send(result).await.is_err() {
            return;
        }
    }
}

/// Applies the rule to one delivery and starts its actions; returns the outputs to wait for.
async fn process(
    broker: &Broker,
    rule: &Compiled,
    stats: &RuleStats,
    session: &LocalSession,
    d: &LocalDelivery,
    stop: &mut watch::Receiver<bool>,
) -> Result<Vec<PendingOutput>, LocalError> {
    Metrics::add(&stats.matched, 1);
    let message = &d.delivery.message;
    let input = fields::message_for(broker, message, d.dup, &|f| rule.rule.reads(f));
    let Some(outputs) = super::evaluate(rule, stats, input) else {
        return Ok(Vec::new());
    };
    let once = d.delivery.qos != QoS::AtMostOnce;
    let mut pending = Vec::new();
    let mut index = 0u32;
    for out in &outputs {
        for action in rule.actions.iter().filter(|a| !a.is_sink()) {
            Metrics::add(&stats.actions_total, 1);
            let target = match (once, action) {
                (true, Action::Republish(_)) => {
                    index += 1;
                    Target::Output(session, message.id, index)
                }
                _ => Target::Session(session),
            };
            let run = run_action(broker, rule, stats, action, out, target, stop);
            pending.extend(run.await?);
        }
    }
    Ok(pending)
}

/// Where a republish goes: through the consumer session as a marked output (exactly once,
/// pipelined), as the consumer session's plain publish, or through an in-process client.
pub enum Target<'a> {
    Output(&'a LocalSession, u64, u32),
    Session(&'a LocalSession),
    Client(&'a LocalClient),
}

/// Runs one action for one output, retrying a failed republish with backoff until it is
/// logged or the rule stops; a marked output may come back to be waited for. A republish that
/// cannot be rendered or names an invalid topic is discarded (counted, logged).
pub async fn run_action(
    broker: &Broker,
    rule: &Compiled,
    stats: &RuleStats,
    action: &Action,
    out: &Map<String, Value>,
    target: Target<'_>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<PendingOutput>, LocalError> {
    let republish = match action {
        Action::Console => {
            let output = Value::Object(out.clone());
            tracing::info!(target: "keelmq::rules", rule = %rule.id, %output, "rule output");
            Metrics::add(&stats.actions_success, 1);
            return Ok(None);
        }
        Action::Republish(r) => r,
        // Topic rules: the sink's own subscriber reads the rule's topics; event rules hand
        // the output to the sink before this (`events`).
        Action::Sink(_) => return Ok(None),
    };
    let publish = match republish.render(out) {
        Ok(p) => p,
        Err(why) => {
            discard(rule, stats, &why);
            return Ok(None);
        }
    };
    let mut wait = RETRY_FIRST;
    loop {
        let sent = match &target {
            Target::Output(s, message_id, index) => {
                s.publish_output(publish.clone(), *message_id, *index).await
            }
            Target::Session(s) => s.publish(publish.clone()).await.map(|_| None),
            Target::Client(c) => c.publish(publish.clone()).await.map(|_| None),
        };
        match sent {
            Ok(pending) => {
                Metrics::add(&stats.actions_success, 1);
                return Ok(pending);
            }
            Err(LocalError::InvalidTopic) => {
                discard(rule, stats, &format!("invalid topic `{}`", publish.topic));
                return Ok(None);
            }
            // Refused by the log while persistence still works: too large to store, ever.
            Err(LocalError::NotDurable) if !broker.has_failed() => {
                discard(rule, stats, "too large for the write-ahead log");
                return Ok(None);
            }
            Err(LocalError::NotDurable) => {
                Metrics::add(&stats.actions_failed, 1);
                tracing::warn!(rule = %rule.id, "republish not stored; retrying");
                if pause(stop, wait).await {
                    return Err(LocalError::ShuttingDown);
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn discard(rule: &Compiled, stats: &RuleStats, why: &str) {
    Metrics::add(&stats.actions_failed, 1);
    Metrics::add(&stats.actions_discarded, 1);
    tracing::warn!(rule = %rule.id, why, "rule action discarded");
}
