//! Event rules (`FROM "$events/…"`): one task reads the broker's events of the kinds some rule
//! wants (a bounded channel: best effort, overflow dropped and counted as `events_dropped`)
//! and runs the rules that read each. Events about the rule engine's own consumer sessions are
//! not reported, and neither are messages republished with direct dispatch.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::actions::Action;
use super::consumer::{run_action, Target};
use super::{fields, Compiled};
use crate::broker::metrics::RuleStats;
use crate::broker::{Broker, Metrics};
use crate::hooks::{Event, EventKinds};
use crate::session::RuleReach;

/// Events waiting for the event rules, at most.
pub const EVENT_QUEUE: usize = 8192;

type EventRules = Vec<(Arc<Compiled>, Arc<RuleStats>)>;

/// Runs the event rules.
pub struct Dispatcher {
    broker: Broker,
    bridges: crate::bridges::Bridges,
    rules: Arc<RwLock<Arc<EventRules>>>,
    task: Mutex<Option<(EventKinds, JoinHandle<()>)>>,
    /// Never set: keeps the retry waits of actions running (they stop with the broker).
    _stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
}

/// The event kind an event name needs.
fn kind_of(name: &str) -> EventKinds {
    match name {
        "message_publish" | "message_dropped" => EventKinds::PUBLISHED,
        "message_delivered" => EventKinds::DELIVERED,
        "message_acked" => EventKinds::ACKED,
        "delivery_dropped" => EventKinds::DROPPED,
        "client_connected" => EventKinds::CONNECTED,
        "client_disconnected" => EventKinds::DISCONNECTED,
        "client_connack" => EventKinds::CONNACK,
        "client_check_authn_complete" => EventKinds::AUTHENTICATED,
        "client_check_authz_complete" => EventKinds::AUTHORIZED,
        "session_subscribed" => EventKinds::SUBSCRIBED,
        "session_unsubscribed" => EventKinds::UNSUBSCRIBED,
        _ => EventKinds::NONE,
    }
}

impl Dispatcher {
    pub fn new(broker: Broker, bridges: crate::bridges::Bridges) -> Dispatcher {
        let (stop, stopped) = watch::channel(false);
        Dispatcher {
            broker,
            bridges,
            rules: Arc::default(),
            task: Mutex::new(None),
            _stop: stop,
            stopped,
        }
    }

    /// Sets the event rules; (re)subscribes to the broker's events when the kinds they need
    /// change, and stops reading when no rule needs any.
    pub fn set_rules(&self, rules: EventRules) {
        let kinds = rules
            .iter()
            .flat_map(|(c, _)| c.events.iter())
            .fold(EventKinds::NONE, |k, e| k.union(kind_of(e)));
        *self.rules.write() = Arc::new(rules);
        let mut task = self.task.lock();
        if task.as_ref().map(|(k, _)| *k) == Some(kinds) {
            return;
        }
        if let Some((_, old)) = task.take() {
            old.abort();
        }
        if kinds == EventKinds::NONE {
            return;
        }
        let rx = self.broker.events_of(EVENT_QUEUE, kinds);
        let run = dispatch(
            self.broker.clone(),
            self.bridges.clone(),
            self.rules.clone(),
            rx,
            self.stopped.clone(),
        );
        *task = Some((kinds, tokio::spawn(run)));
    }
}

/// Whether an event is the rule engine's own business (its consumers, its direct republishes).
fn internal(e: &Event) -> bool {
    let client = match e {
        Event::Connected { client_id, .. }
        | Event::Disconnected { client_id, .. }
        | Event::Subscribed { client_id, .. }
        | Event::Unsubscribed { client_id, .. }
        | Event::Delivered { client_id, .. }
        | Event::Acked { client_id, .. }
        | Event::Dropped { client_id, .. } => &**client_id,
        Event::ConnAck { client_id, .. }
        | Event::Authenticated { client_id, .. }
        | Event::Authorized { client_id, .. } => &**client_id,
        Event::Published { message, .. } => {
            return matches!(message.rules, RuleReach::None | RuleReach::Subscribers)
        }
    };
    crate::protocol::admission::is_reserved_client_id(client)
}

async fn dispatch(
    broker: Broker,
    bridges: crate::bridges::Bridges,
    rules: Arc<RwLock<Arc<EventRules>>>,
    mut rx: mpsc::Receiver<Event>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some(event) = rx.recv().await {
        if internal(&event) {
            continue;
        }
        let name = fields::event_name(&event);
        let rules = rules.read().clone();
        let mut input = None;
        for (rule, stats) in rules.iter().filter(|(r, _)| r.events.contains(&name)) {
            let input = input.get_or_insert_with(|| fields::event(&broker, &event));
            Metrics::add(&stats.matched, 1);
            let Some(outputs) = super::evaluate(rule, stats, input.clone()) else {
                continue;
            };
            let client = broker.local_client(super::consumer_id(&rule.id));
            for (index, out) in outputs.iter().enumerate() {
                for action in &rule.actions {
                    Metrics::add(&stats.actions_total, 1);
                    if let Action::Sink(sink) = action {
                        // Best effort, as the event itself.
                        let id =
                            event_message_id(&event).unwrap_or_else(|| broker.next_message_id());
                        let index = u32::try_from(index).unwrap_or(u32::MAX);
                        match bridges.offer(sink, &rule.id, (id, index), out.clone()) {
                            true => Metrics::add(&stats.actions_success, 1),
                            false => Metrics::add(&stats.actions_failed, 1),
                        }
                        continue;
                    }
                    let target = Target::Client(&client);
                    // A plain client's publish has nothing left to wait for.
                    if run_action(&broker, rule, stats, action, out, target, &mut stop)
                        .await
                        .is_err()
                    {
                        return; // the broker is shutting down
                    }
                }
            }
        }
    }
}

/// The id of the message an event is about, if it is about one.
fn event_message_id(e: &Event) -> Option<u64> {
    match e {
        Event::Published { message, .. }
        | Event::Delivered { message, .. }
        | Event::Acked { message, .. }
        | Event::Dropped { message, .. } => Some(message.id),
        _ => None,
    }
}
