//! The acknowledgement FIFO of a connection: PUBACK, PUBREC, PUBCOMP and outbound PUBREL, and
//! the deliveries of inbound messages, each waiting for the records it depends on to be
//! durable, completed in the order they were queued.
//!
//! Records are appended in the order the connection handles its packets, so their durability
//! waits complete front first; the connection awaits the front entry's wait and goes on
//! reading meanwhile, so that the next packets' records share the same fdatasync. While
//! anything waits, every acknowledgement of an inbound PUBLISH joins the queue, even one that
//! waits for nothing, so that acknowledgements leave in the order of their PUBLISH packets
//! [MQTT-4.6.0-2, MQTT-4.6.0-3].
//!
//! Generic over the wait `W`, the deliveries `T` and the acknowledgements `A` it carries, so it
//! is tested without a WAL.
//!
//! # Bounds
//! Inbound QoS 1/2 PUBLISHes are bounded by the Receive Maximum ([`AckFifo::inbound`] counts
//! those the session does not already count as awaiting PUBREL); QoS 2 releases by the
//! in-flight windows of either direction; QoS 0 messages never enter. Only a client streaming
//! repeated or bogus acknowledgements can pass [`MAX_PENDING_ACKS`]; the connection then ends
//! with [`Refusal::AckBacklog`].

use std::collections::VecDeque;

use crate::codec::{Packet, QoS};

use super::Refusal;

/// Entries the FIFO holds at most: every packet id in both directions (QoS 2 releases each
/// way) plus the Receive Maximum's QoS 1 publishes fit well below it.
pub const MAX_PENDING_ACKS: usize = 3 * 65_536;

/// One acknowledgement, and the deliveries of one inbound message, waiting for durability.
#[derive(Debug)]
pub struct Pending<W, T, A = Packet> {
    /// Completes when the records this entry depends on are durable.
    pub wait: W,
    /// Deliveries to make visible once `wait` completes (an inbound message).
    pub reserved: Option<T>,
    /// The packet to send once `wait` completes.
    pub ack: Option<A>,
    /// Counted in [`AckFifo::inbound`].
    inbound: bool,
    /// A QoS 0 message's deliveries (counted in `AckFifo::holding`).
    qos0: bool,
}

/// The FIFO (see the module documentation).
#[derive(Debug)]
pub struct AckFifo<W, T, A = Packet> {
    entries: VecDeque<Pending<W, T, A>>,
    inbound: usize,
    /// QoS 0 messages waiting to be revealed: a later QoS 0 message may not overtake them.
    holding: usize,
}

impl<W, T, A> Default for AckFifo<W, T, A> {
    fn default() -> Self {
        AckFifo {
            entries: VecDeque::new(),
            inbound: 0,
            holding: 0,
        }
    }
}

impl<W, T, A> AckFifo<W, T, A> {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries acknowledging an inbound PUBLISH that count against the Receive Maximum.
    pub fn inbound(&self) -> usize {
        self.inbound
    }

    /// Queues an entry behind every other. `inbound`: it acknowledges a PUBLISH the session
    /// does not count as awaiting PUBREL, so it counts against the Receive Maximum.
    pub fn push(&mut self, wait: W, reserved: Option<T>, ack: Option<A>, inbound: bool) {
        self.inbound += usize::from(inbound);
        self.entries.push_back(Pending {
            wait,
            reserved,
            ack,
            inbound,
            qos0: false,
        });
    }

    /// Adds a message of QoS `qos` waiting to be revealed, with its acknowledgement.
    pub fn push_message(&mut self, wait: W, reserved: T, ack: Option<A>, qos: QoS) {
        let qos0 = qos == QoS::AtMostOnce;
        self.push(wait, Some(reserved), ack, qos == QoS::AtLeastOnce);
        if let (true, Some(last)) = (qos0, self.entries.back_mut()) {
            last.qos0 = true;
            self.holding += 1;
        }
    }

    /// An acknowledgement that waits for nothing: returned to be sent now if nothing waits,
    /// else queued behind what waits (with the wait `ready()` makes) and `None` returned.
    pub fn in_order(&mut self, ack: A, inbound: bool, ready: impl FnOnce() -> W) -> Option<A> {
        if self.entries.is_empty() {
            return Some(ack);
        }
        self.push(ready(), None, Some(ack), inbound);
        None
    }

    /// Whether a logged message whose wait is already `ready` may be revealed and acknowledged
    /// at once: nothing waits before it, or it is QoS 0 (no acknowledgement to keep in order)
    /// and no earlier QoS 0 message waits (one whose rule outputs are logged for persistent
    /// subscribers waits for them, and keeps its place).
    pub fn may_bypass(&self, ready: bool, qos: QoS) -> bool {
        ready && (self.entries.is_empty() || (qos == QoS::AtMostOnce && self.holding == 0))
    }

    /// The wait of the oldest entry, for the connection to await.
    pub fn front_wait(&mut self) -> Option<&mut W> {
        self.entries.front_mut().map(|e| &mut e.wait)
    }

    /// Takes the oldest entry once its wait completed.
    pub fn pop_front(&mut self) -> Option<Pending<W, T, A>> {
        let entry = self.entries.pop_front()?;
        self.inbound -= usize::from(entry.inbound);
        self.holding -= usize::from(entry.qos0);
        Some(entry)
    }

    /// Empties the FIFO after a durability failure, returning the deliveries to give back.
    pub fn abandon(&mut self) -> Vec<T> {
        self.inbound = 0;
        self.entries.drain(..).filter_map(|e| e.reserved).collect()
    }

    /// [`Refusal::AckBacklog`] once the FIFO holds more than [`MAX_PENDING_ACKS`] entries.
    pub fn check_bound(&self) -> Result<(), Refusal> {
        match self.entries.len() > MAX_PENDING_ACKS {
            true => Err(Refusal::AckBacklog),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PubAck;

    fn puback(id: u16) -> Packet {
        Packet::PubAck(PubAck::new(id))
    }

    #[test]
    fn entries_complete_in_the_order_they_were_queued() {
        let mut fifo: AckFifo<u32, &str> = AckFifo::default();
        assert_eq!(fifo.in_order(puback(1), true, || 0), Some(puback(1)));
        fifo.push(7, Some("m2"), Some(puback(2)), true);
        // Waits for nothing, but leaves behind message 2.
        assert_eq!(fifo.in_order(puback(3), true, || 0), None);
        fifo.push(9, None, None, false);
        assert_eq!((fifo.len(), fifo.inbound()), (3, 2));
        assert_eq!(fifo.front_wait().copied(), Some(7));
        let first = fifo.pop_front().unwrap();
        assert_eq!((first.reserved, first.ack), (Some("m2"), Some(puback(2))));
        assert_eq!(fifo.pop_front().unwrap().ack, Some(puback(3)));
        assert_eq!(fifo.inbound(), 0);
        let last = fifo.pop_front().unwrap();
        assert_eq!((last.wait, last.ack), (9, None));
        assert!(fifo.pop_front().is_none() && fifo.is_empty());
    }

    #[test]
    fn only_qos0_or_an_empty_fifo_bypasses() {
        let mut fifo: AckFifo<u32, ()> = AckFifo::default();
        assert!(fifo.may_bypass(true, QoS::AtLeastOnce));
        assert!(!fifo.may_bypass(false, QoS::AtMostOnce));
        fifo.push(1, None, Some(puback(1)), true);
        assert!(!fifo.may_bypass(true, QoS::AtLeastOnce));
        assert!(!fifo.may_bypass(true, QoS::ExactlyOnce));
        assert!(fifo.may_bypass(true, QoS::AtMostOnce));
    }

    #[test]
    fn a_failure_gives_back_every_reserved_delivery() {
        let mut fifo: AckFifo<u32, u16> = AckFifo::default();
        fifo.push(1, Some(10), Some(puback(1)), true);
        fifo.push(2, None, Some(puback(2)), false);
        fifo.push(3, Some(30), Some(puback(3)), true);
        assert_eq!(fifo.abandon(), vec![10, 30]);
        assert!(fifo.is_empty());
        assert_eq!(fifo.inbound(), 0);
    }

    #[test]
    fn the_bound_is_enforced() {
        let mut fifo: AckFifo<(), ()> = AckFifo::default();
        for _ in 0..MAX_PENDING_ACKS {
            fifo.push((), None, None, false);
        }
        assert_eq!(fifo.check_bound(), Ok(()));
        fifo.push((), None, None, false);
        assert_eq!(fifo.check_bound(), Err(Refusal::AckBacklog));
    }
}
