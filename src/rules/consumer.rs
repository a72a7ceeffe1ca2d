//! A topic rule's durable consumer: the in-process session `$rule/<id>` subscribed (QoS 1) to
//! the rule's topic filters, processing its deliveries one at a time, in order.
//!
//! Exactly once per (rule, message): every republish of a delivery carries a marker (an
//! inbound QoS 2 id of the consumer's session, `LocalSession::publish_once`) logged in the same
//! commit as the republished message, and the delivery's acknowledgement releases its markers
//! in one commit (`LocalSession::ack_releasing`). After a crash a delivery comes back (it was
//! not acknowledged) and its outputs are computed again; those already published find their
//! marker and are skipped. QoS 0 deliveries are processed at most once, without markers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};

use super::actions::Action;
use super::{fields, Compiled};
use crate::broker::local::{LocalClient, LocalDelivery, LocalError, LocalSession};
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
        match consume(&broker, &client, &rule, &stats, &mut stop, &mut ready).await {
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

/// Sleeps for `d`; `true` if `stop` was set meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Attaches the consumer session, brings its subscriptions in line with the rule, and
/// processes deliveries until stopped.
async fn consume(
    broker: &Broker,
    client: &LocalClient,
    rule: &Compiled,
    stats: &RuleStats,
    stop: &mut watch::Receiver<bool>,
    ready: &mut Option<oneshot::Sender<()>>,
) -> Result<(), LocalError> {
    let (mut session, _) = client.consumer_session().await?;
    let options = SubscriptionOptions {
        retain_handling: RetainHandling::Never,
        ..SubscriptionOptions::qos(QoS::AtLeastOnce)
    };
    let filters: Vec<_> = rule.topics.iter().map(|t| (t.clone(), options)).collect();
    session.subscribe(filters).await?;
    let stale: Vec<String> = session
        .filters()?
        .into_iter()
        .filter(|f| !rule.topics.contains(f))
        .collect();
    if !stale.is_empty() {
        session.unsubscribe(&stale).await?;
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    loop {
        let d = tokio::select! {
            d = session.next() => d?,
            _ = stop.changed() => {
                session.close().await;
                return Ok(());
            }
        };
        let markers = process(broker, rule, stats, &session, &d, stop).await?;
        session.ack_releasing(&d, &markers).await?;
    }
}

/// Applies the rule to one delivery and runs its actions; returns the markers used.
async fn process(
    broker: &Broker,
    rule: &Compiled,
    stats: &RuleStats,
    session: &LocalSession,
    d: &LocalDelivery,
    stop: &mut watch::Receiver<bool>,
) -> Result<Vec<u16>, LocalError> {
    Metrics::add(&stats.matched, 1);
    let input = fields::message(broker, &d.delivery.message, d.dup);
    let Some(outputs) = super::evaluate(rule, stats, &input) else {
        return Ok(Vec::new());
    };
    let once = d.delivery.qos != QoS::AtMostOnce;
    let mut markers = Vec::new();
    for out in &outputs {
        for action in &rule.actions {
            Metrics::add(&stats.actions_total, 1);
            let marker = match (once, action) {
                (true, Action::Republish(_)) => match u16::try_from(markers.len() + 1) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        discard(rule, stats, "more than 65535 republishes for one message");
                        continue;
                    }
                },
                _ => None,
            };
            markers.extend(marker);
            run_action(rule, stats, action, out, Target::Session(session, marker), stop).await?;
        }
    }
    Ok(markers)
}

/// Where a republish goes: through the consumer session with a marker (exactly once), or a
/// plain in-process client.
pub enum Target<'a> {
    Session(&'a LocalSession, Option<u16>),
    Client(&'a LocalClient),
}

/// Runs one action for one output, retrying a failed republish with backoff until it is
/// durable or the rule stops. A republish that cannot be rendered or names an invalid topic
/// is discarded (counted, logged).
pub async fn run_action(
    rule: &Compiled,
    stats: &RuleStats,
    action: &Action,
    out: &Map<String, Value>,
    target: Target<'_>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), LocalError> {
    let republish = match action {
        Action::Console => {
            let output = Value::Object(out.clone());
            tracing::info!(target: "keelmq::rules", rule = %rule.id, %output, "rule output");
            Metrics::add(&stats.actions_success, 1);
            return Ok(());
        }
        Action::Republish(r) => r,
    };
    let publish = match republish.render(out) {
        Ok(p) => p,
        Err(why) => {
            discard(rule, stats, &why);
            return Ok(());
        }
    };
    let mut wait = RETRY_FIRST;
    loop {
        let sent = match &target {
            Target::Session(s, Some(marker)) => s.publish_once(publish.clone(), *marker).await,
            Target::Session(s, None) => s.publish(publish.clone()).await.map(Some),
            Target::Client(c) => c.publish(publish.clone()).await.map(Some),
        };
        match sent {
            Ok(_) => {
                Metrics::add(&stats.actions_success, 1);
                return Ok(());
            }
            Err(LocalError::InvalidTopic) => {
                discard(rule, stats, &format!("invalid topic `{}`", publish.topic));
                return Ok(());
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

fn discard(rule: &Compiled, stats: &RuleStats, why: &str) {
    Metrics::add(&stats.actions_failed, 1);
    Metrics::add(&stats.actions_discarded, 1);
    tracing::warn!(rule = %rule.id, why, "rule action discarded");
}
