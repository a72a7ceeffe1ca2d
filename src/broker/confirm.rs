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
//! A QoS 2 message's wait survives its publisher's connection: when a 3.x publisher is
//! disconnected on a timeout (or any publisher reconnects) and re-sends the PUBLISH, the
//! re-send's PUBREC waits for the same confirmation ([`Broker::resume_confirmation`]).
//!
//! # Bounds
//! An entry lives until every sink confirmed, or its [`Confirm`] is dropped (the connection
//! gave up waiting or closed) for a QoS 1 message, or answered 0x80 for a QoS 2 one: at most
//! one per QoS 1/2 message a connection has in flight plus one per QoS 2 message still queued
//! for a delivered-mode sink, which every sink confirms in the end (its retries never give up).
//! A restart forgets every entry: a re-sent QoS 2 message is then a duplicate, acknowledged at
//! once (it is durable and queued for the sink); a re-sent QoS 1 message is a new one (at
//! least once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Broker, Reserved, SlotRole};
use crate::codec::QoS;
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
    /// The enabled `ack = "delivered"` sinks and their `ack_timeout_ms`, by name (set by the
    /// bridges at start and at every change).
    delivered: parking_lot::RwLock<HashMap<String, u64>>,
    inner: Mutex<Registry>,
    /// Entries in `inner.waiting`: a feed's confirmation takes no lock while nobody waits.
    len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Registry {
    waiting: HashMap<u64, Waiting>,
    /// The publishers' QoS 2 exchanges (client id, packet id) waiting, to their message ids.
    exchanges: HashMap<(ClientId, u16), u64>,
}

#[derive(Debug)]
struct Waiting {
    /// The feed sessions (`$sink/<name>/$topics`) that have not confirmed yet.
    sinks: Vec<ClientId>,
    refused: bool,
    /// The publishers' waits: one, plus one per re-send of a QoS 2 message (closed senders
    /// are pruned when another joins).
    txs: Vec<oneshot::Sender<Confirmed>>,
    /// The publisher's QoS 2 exchange: the entry outlives its waits, so that a re-send
    /// (after a reconnect) waits again instead of being acknowledged at once.
    exchange: Option<(ClientId, u16)>,
    timeout: Duration,
}

impl Registry {
    fn remove(&mut self, message_id: u64) -> Option<Waiting> {
        let entry = self.waiting.remove(&message_id)?;
        if let Some(key) = &entry.exchange {
            if self.exchanges.get(key) == Some(&message_id) {
                self.exchanges.remove(key);
            }
        }
        Some(entry)
    }
}

/// A publisher's wait for the sinks (see the module documentation). Dropping it forgets the
/// message's entry, unless the message is a QoS 2 exchange a re-send may resume.
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

    /// Forgets the message's entry, QoS 2 exchange or not: the publisher was answered 0x80.
    pub(crate) fn forget(self) {
        self.registry.forget(self.message_id, true);
    }
}

impl Drop for Confirm {
    fn drop(&mut self) {
        self.registry.forget(self.message_id, false);
    }
}

impl Confirmations {
    fn register(
        self: &Arc<Self>,
        message_id: u64,
        sinks: Vec<ClientId>,
        timeout: Duration,
        exchange: Option<(ClientId, u16)>,
    ) -> Confirm {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock();
        if let Some(key) = &exchange {
            inner.exchanges.insert(key.clone(), message_id);
        }
        let entry = Waiting {
            sinks,
            refused: false,
            txs: vec![tx],
            exchange,
            timeout,
        };
        inner.waiting.insert(message_id, entry);
        self.len.store(inner.waiting.len(), Ordering::Relaxed);
        self.confirm_handle(message_id, timeout, rx)
    }

    fn confirm_handle(
        self: &Arc<Self>,
        message_id: u64,
        timeout: Duration,
        rx: oneshot::Receiver<Confirmed>,
    ) -> Confirm {
        Confirm {
            registry: self.clone(),
            message_id,
            deadline: Instant::now() + timeout,
            rx,
        }
    }

    /// A new wait for the QoS 2 exchange `(client, packet_id)` if its message still waits for
    /// sinks (a re-send of it): `None` if it does not.
    fn resume(self: &Arc<Self>, client: &str, packet_id: u16) -> Option<Confirm> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut inner = self.inner.lock();
        let message_id = *inner.exchanges.get(&(ClientId::from(client), packet_id))?;
        let entry = inner.waiting.get_mut(&message_id)?;
        let (tx, rx) = oneshot::channel();
        entry.txs.retain(|tx| !tx.is_closed());
        entry.txs.push(tx);
        let timeout = entry.timeout;
        drop(inner);
        Some(self.confirm_handle(message_id, timeout, rx))
    }

    /// A wait for `message_id` ended: its entry goes unless it is a QoS 2 exchange and not
    /// `always`.
    fn forget(&self, message_id: u64, always: bool) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        let resumable = inner
            .waiting
            .get(&message_id)
            .is_some_and(|e| e.exchange.is_some());
        if always || !resumable {
            inner.remove(message_id);
            self.len.store(inner.waiting.len(), Ordering::Relaxed);
        }
    }

    /// The sink reading through feed session `sink` has message `message_id` in its target
    /// (`delivered`) or refused it for good.
    fn confirm(&self, message_id: u64, sink: &str, delivered: bool) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        let Some(entry) = inner.waiting.get_mut(&message_id) else {
            return;
        };
        entry.sinks.retain(|s| &**s != sink);
        entry.refused |= !delivered;
        if entry.sinks.is_empty() {
            if let Some(entry) = inner.remove(message_id) {
                let answer = match entry.refused {
                    true => Confirmed::Refused,
                    false => Confirmed::Delivered,
                };
                for tx in entry.txs {
                    let _ = tx.send(answer);
                }
            }
            self.len.store(inner.waiting.len(), Ordering::Relaxed);
        }
    }
}

/// The `ack_timeout_ms` of the delivered-mode sink reading through feed session
/// `client_id`, if it is one.
fn delivered_sink(delivered: &HashMap<String, u64>, client_id: &str) -> Option<u64> {
    let name = client_id.strip_prefix("$sink/")?.strip_suffix("/$topics")?;
    delivered.get(name).copied()
}

impl Broker {
    /// Registers the wait for the delivered-mode sinks among `reserved`'s targets that read
    /// `message` itself at QoS 1/2 (not a rule's output); `None` if there are none.
    pub(super) fn confirmation_for(
        &self,
        message: &Arc<Message>,
        reserved: &Reserved,
        exchange: Option<(ClientId, u16)>,
    ) -> Option<Confirm> {
        let delivered = self.shared.confirmations.delivered.read();
        if delivered.is_empty() {
            return None;
        }
        let mut sinks = Vec::new();
        let mut timeout = Duration::ZERO;
        for (slot, _, d, _) in &reserved.deliveries {
            if slot.role != SlotRole::SinkTopics
                || d.qos == QoS::AtMostOnce
                || !Arc::ptr_eq(&d.message, message)
            {
                continue;
            }
            if let Some(ms) = delivered_sink(&delivered, &slot.client_id) {
                sinks.push(slot.client_id.clone());
                timeout = timeout.max(Duration::from_millis(ms));
            }
        }
        drop(delivered);
        if sinks.is_empty() {
            return None;
        }
        let registry = &self.shared.confirmations;
        Some(registry.register(message.id, sinks, timeout, exchange))
    }

    /// The enabled `ack = "delivered"` sinks and their `ack_timeout_ms`, by name.
    pub(crate) fn set_delivered_sinks(&self, delivered: HashMap<String, u64>) {
        *self.shared.confirmations.delivered.write() = delivered;
    }

    /// A new wait for the sinks for a re-sent QoS 2 PUBLISH (packet `packet_id` of `client`)
    /// whose first wait ended without an answer (the publisher reconnected): `None` if its
    /// message waits for no sink.
    pub(crate) fn resume_confirmation(&self, client: &str, packet_id: u16) -> Option<Confirm> {
        self.shared.confirmations.resume(client, packet_id)
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
        let mut confirm = registry.register(7, sinks, Duration::from_secs(5), None);
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
        let mut refused = registry.register(1, one(), Duration::from_secs(5), None);
        registry.confirm(1, "$sink/a/$topics", false);
        assert_eq!(refused.wait().await, Confirmed::Refused);
        let mut late = registry.register(2, one(), Duration::from_millis(10), None);
        assert_eq!(late.wait().await, Confirmed::TimedOut);
        assert_eq!(registry.inner.lock().waiting.len(), 1);
        drop(late);
        assert_eq!(registry.len.load(Ordering::Relaxed), 0);
        assert!(registry.inner.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn a_qos2_exchange_outlives_its_wait_until_the_sinks_answer() {
        let registry = Arc::new(Confirmations::default());
        let one = || vec![ClientId::from("$sink/a/$topics")];
        let exchange = Some((ClientId::from("pub"), 9));
        let first = registry.register(3, one(), Duration::from_secs(5), exchange);
        assert!(registry.resume("pub", 8).is_none());
        drop(first); // the publisher's connection closed
        let mut again = registry.resume("pub", 9).expect("the exchange still waits");
        let mut twice = registry.resume("pub", 9).expect("every re-send waits");
        registry.confirm(3, "$sink/a/$topics", true);
        assert_eq!(again.wait().await, Confirmed::Delivered);
        assert_eq!(twice.wait().await, Confirmed::Delivered);
        assert!(registry.resume("pub", 9).is_none());
        let refused = registry.register(4, one(), Duration::from_secs(5), Some(("pub".into(), 9)));
        refused.forget(); // answered 0x80: a re-send is refused again, not resumed
        assert!(registry.resume("pub", 9).is_none());
        assert!(registry.inner.lock().exchanges.is_empty());
        assert_eq!(registry.len.load(Ordering::Relaxed), 0);
    }
}
