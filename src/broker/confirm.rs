//! Sinks with `ack = "delivered"`: a network client's QoS 1/2 message that such a sink reads
//! (through its `topics`) is acknowledged only once the sink's target has it, or refused it for
//! good, or `ack_timeout_ms` passed.
//!
//! The message is reserved and logged as any other; while its records are appended, the
//! broker registers a [`Confirm`] naming the delivered-mode sink sessions among its targets
//! (before the deliveries are visible, so no sink can confirm first). The publisher's
//! connection makes the deliveries visible once durable, as always — the sinks must see the
//! message to write it — and then holds the acknowledgement until the confirmation, keeping
//! every later acknowledgement behind it (their order is the PUBLISH packets'). A sink's feed
//! confirms each message it wrote or dead-lettered ([`Broker::confirm_delivery`]).
//!
//! # Bounds
//! An entry lives until every sink confirmed, or its [`Confirm`] is dropped (the connection
//! gave up waiting or closed): at most one per QoS 1/2 message a connection has in flight, so
//! the registry is bounded by the connections' Receive Maximums. A restart forgets every entry:
//! a re-sent QoS 2 message is then a duplicate, acknowledged at once (it is durable and queued
//! for the sink); a re-sent QoS 1 message is a new one (at least once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Broker, Reserved, SlotRole};
use crate::codec::QoS;
use crate::config::{Config, SinkAck};
use crate::router::ClientId;
use crate::session::Message;

/// How the sinks answered for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirmed {
    /// Every delivered-mode sink that read it has it in its target.
    Delivered,
    /// A target refused it for good (it is in the sink's dead-letter topic).
    Refused,
    /// `ack_timeout_ms` passed first (it stays queued for the sinks).
    TimedOut,
}

/// The messages waiting for sinks, by message id.
#[derive(Debug, Default)]
pub(crate) struct Confirmations {
    waiting: Mutex<HashMap<u64, Waiting>>,
    /// Entries in `waiting`: a feed's confirmation takes no lock while nobody waits.
    len: AtomicUsize,
}

#[derive(Debug)]
struct Waiting {
    /// The feed sessions (`$sink/<name>/$topics`) that have not confirmed yet.
    sinks: Vec<ClientId>,
    refused: bool,
    tx: oneshot::Sender<Confirmed>,
}

/// A publisher's wait for the sinks (see the module documentation); dropping it forgets the
/// message's entry.
#[derive(Debug)]
pub(crate) struct Confirm {
    registry: Arc<Confirmations>,
    message_id: u64,
    deadline: Instant,
    rx: oneshot::Receiver<Confirmed>,
}

impl Confirm {
    /// Waits for the sinks' answer, at most until the deadline.
    pub(crate) async fn wait(&mut self) -> Confirmed {
        match tokio::time::timeout_at(self.deadline, &mut self.rx).await {
            Ok(Ok(answer)) => answer,
            // The entry went without an answer (cannot happen while this waits): as late.
            Ok(Err(_)) | Err(_) => Confirmed::TimedOut,
        }
    }
}

impl Drop for Confirm {
    fn drop(&mut self) {
        if self.registry.len.load(Ordering::Relaxed) > 0 {
            let mut waiting = self.registry.waiting.lock();
            if waiting.remove(&self.message_id).is_some() {
                self.registry.len.store(waiting.len(), Ordering::Relaxed);
            }
        }
    }
}

impl Confirmations {
    fn register(
        self: &Arc<Self>,
        message_id: u64,
        sinks: Vec<ClientId>,
        timeout: Duration,
    ) -> Confirm {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock();
        let entry = Waiting {
            sinks,
            refused: false,
            tx,
        };
        waiting.insert(message_id, entry);
        self.len.store(waiting.len(), Ordering::Relaxed);
        Confirm {
            registry: self.clone(),
            message_id,
            deadline: Instant::now() + timeout,
            rx,
        }
    }

    /// The sink reading through feed session `sink` has message `message_id` in its target
    /// (`delivered`) or refused it for good.
    fn confirm(&self, message_id: u64, sink: &str, delivered: bool) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut waiting = self.waiting.lock();
        let Some(entry) = waiting.get_mut(&message_id) else {
            return;
        };
        entry.sinks.retain(|s| &**s != sink);
        entry.refused |= !delivered;
        if entry.sinks.is_empty() {
            if let Some(entry) = waiting.remove(&message_id) {
                let answer = match entry.refused {
                    true => Confirmed::Refused,
                    false => Confirmed::Delivered,
                };
                let _ = entry.tx.send(answer);
            }
            self.len.store(waiting.len(), Ordering::Relaxed);
        }
    }
}

/// The delivered-mode sink reading through feed session `client_id`, if it is one.
fn delivered_sink<'a>(config: &'a Config, client_id: &str) -> Option<&'a crate::config::SinkSpec> {
    let name = client_id.strip_prefix("$sink/")?.strip_suffix("/$topics")?;
    config
        .sinks
        .iter()
        .find(|s| s.name == name && s.ack == SinkAck::Delivered && s.enabled)
}

impl Broker {
    /// Registers the wait for the delivered-mode sinks among `reserved`'s targets that read
    /// `message` itself at QoS 1/2 (not a rule's output); `None` if there are none.
    pub(super) fn confirmation_for(
        &self,
        message: &Arc<Message>,
        reserved: &Reserved,
    ) -> Option<Confirm> {
        let config = &self.shared.config;
        let mut sinks = Vec::new();
        let mut timeout = Duration::ZERO;
        for (slot, _, d, _) in &reserved.deliveries {
            if slot.role != SlotRole::SinkTopics
                || d.qos == QoS::AtMostOnce
                || !Arc::ptr_eq(&d.message, message)
            {
                continue;
            }
            if let Some(spec) = delivered_sink(config, &slot.client_id) {
                sinks.push(slot.client_id.clone());
                timeout = timeout.max(Duration::from_millis(spec.ack_timeout_ms));
            }
        }
        if sinks.is_empty() {
            return None;
        }
        let registry = &self.shared.confirmations;
        Some(registry.register(message.id, sinks, timeout))
    }

    /// A sink's feed (session `sink`) wrote message `message_id` to its target (`delivered`)
    /// or dead-lettered it: a publisher waiting for it may be acknowledged.
    pub(crate) fn confirm_delivery(&self, message_id: u64, sink: &str, delivered: bool) {
        self.shared
            .confirmations
            .confirm(message_id, sink, delivered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_is_confirmed_once_every_sink_answered() {
        let registry = Arc::new(Confirmations::default());
        let sinks = vec![
            ClientId::from("$sink/a/$topics"),
            ClientId::from("$sink/b/$topics"),
        ];
        let mut confirm = registry.register(7, sinks, Duration::from_secs(5));
        registry.confirm(7, "$sink/a/$topics", true);
        // Twice from one sink (a re-delivery) still waits for the other.
        registry.confirm(7, "$sink/a/$topics", true);
        registry.confirm(8, "$sink/b/$topics", true);
        assert!(confirm.rx.try_recv().is_err());
        registry.confirm(7, "$sink/b/$topics", true);
        assert_eq!(confirm.wait().await, Confirmed::Delivered);
        assert_eq!(registry.len.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_refusal_or_the_deadline_answers_and_dropping_forgets() {
        let registry = Arc::new(Confirmations::default());
        let one = || vec![ClientId::from("$sink/a/$topics")];
        let mut refused = registry.register(1, one(), Duration::from_secs(5));
        registry.confirm(1, "$sink/a/$topics", false);
        assert_eq!(refused.wait().await, Confirmed::Refused);
        let mut late = registry.register(2, one(), Duration::from_millis(10));
        assert_eq!(late.wait().await, Confirmed::TimedOut);
        assert_eq!(registry.waiting.lock().len(), 1);
        drop(late);
        assert_eq!(registry.len.load(Ordering::Relaxed), 0);
        assert!(registry.waiting.lock().is_empty());
    }
}
