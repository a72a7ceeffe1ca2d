//! The second stage of a connection's acknowledgements: those waiting, after their message
//! became visible, for `ack = "delivered"` sinks (see `crate::broker::confirm`). While one
//! waits, every later acknowledgement queues behind it, so they leave in the order of their
//! PUBLISH packets [MQTT-4.6.0-2, MQTT-4.6.0-3].
//!
//! When the sinks do not confirm (a refusal, or `ack_timeout_ms`), a v5 client gets reason
//! 0x80 on its PUBACK or PUBREC — for QoS 2 only after the packet id's release is durable, so
//! that the id is free when the client reuses it — and a 3.x client, which cannot be told, is
//! disconnected on a timeout (it re-sends) and acknowledged on a refusal (the message is in
//! the sink's dead-letter topic; a re-send would be refused again).
//!
//! # Bounds
//! A PUBACK waiting here counts against the Receive Maximum, a PUBREC's id is awaiting
//! PUBREL; the queue as a whole is bounded by [`MAX_PENDING_ACKS`] like the first stage.

use super::*;
use crate::broker::confirm::{Confirm, Confirmed};
use crate::protocol::acks::MAX_PENDING_ACKS;

/// An acknowledgement, and what it waits for once its message is visible.
#[derive(Debug)]
pub(super) struct Ack {
    pub(super) packet: Packet,
    pub(super) confirm: Option<Confirm>,
    /// When the PUBLISH it acknowledges arrived (for the acknowledgement-delay histogram).
    pub(super) received: Option<Instant>,
}

impl From<Packet> for Ack {
    fn from(packet: Packet) -> Ack {
        Ack {
            packet,
            confirm: None,
            received: None,
        }
    }
}

/// Acknowledgements waiting for sinks, and those queued behind them.
#[derive(Debug, Default)]
pub(super) struct Confirming {
    queue: VecDeque<Waiting>,
    /// PUBACKs among them (they count against the Receive Maximum).
    inbound: usize,
}

#[derive(Debug)]
struct Waiting {
    packet: Packet,
    confirm: Option<Confirm>,
    received: Option<Instant>,
    /// A QoS 2 message the sinks did not confirm: the release of its packet id, which must
    /// be durable before PUBREC 0x80 ends the exchange.
    release: Option<PendingDurable>,
}

/// What the front entry's wait gave.
pub(super) enum Answer {
    Ready,
    Confirmed(Confirmed),
    Released(Result<(), crate::broker::NotDurable>),
}

/// PUBACKs waiting in the second stage.
pub(super) fn inbound(confirming: &Option<Box<Confirming>>) -> usize {
    confirming.as_ref().map_or(0, |c| c.inbound)
}

/// Waits for the front entry of the second stage (forever if it is empty).
pub(super) async fn next_answer(
    broker: &Broker,
    confirming: &mut Option<Box<Confirming>>,
) -> Answer {
    let Some(front) = confirming.as_mut().and_then(|c| c.queue.front_mut()) else {
        return std::future::pending().await;
    };
    if let Some(release) = &mut front.release {
        return Answer::Released(broker.wait_pending(release).await);
    }
    match &mut front.confirm {
        Some(confirm) => Answer::Confirmed(confirm.wait().await),
        None => Answer::Ready,
    }
}

impl Connection {
    /// Sends an acknowledgement whose records are durable: now, or into the second stage if
    /// it waits for sinks or a PUBACK or PUBREC there waits before it. PUBREL and PUBCOMP
    /// never wait here (no order binds them to PUBACK and PUBREC, and among themselves they
    /// leave in the first stage's order).
    pub(super) fn emit_ack(&mut self, wbuf: &mut BytesMut, ack: Ack) {
        let unordered = matches!(ack.packet, Packet::PubRel(_) | Packet::PubComp(_));
        if ack.confirm.is_none() && (self.confirming.is_none() || unordered) {
            self.send_ack(wbuf, &ack.packet, ack.received);
            return;
        }
        let confirming = self.confirming.get_or_insert_with(Box::default);
        confirming.inbound += usize::from(matches!(ack.packet, Packet::PubAck(_)));
        confirming.queue.push_back(Waiting {
            packet: ack.packet,
            confirm: ack.confirm,
            received: ack.received,
            release: None,
        });
    }

    /// [`Refusal::AckBacklog`] once the second stage holds more than [`MAX_PENDING_ACKS`].
    pub(super) fn check_confirming_bound(&self) -> Result<(), Close> {
        match self.confirming.as_ref() {
            Some(c) if c.queue.len() > MAX_PENDING_ACKS => Err(Close::Refused(Refusal::AckBacklog)),
            _ => Ok(()),
        }
    }

    /// Completes the second stage's front entry after `answer`, then sends every following
    /// acknowledgement that waits for nothing.
    pub(super) fn complete_confirmed(
        &mut self,
        answer: Answer,
        wbuf: &mut BytesMut,
    ) -> Result<(), Close> {
        let v5 = self.version.is_v5();
        if let Answer::Confirmed(Confirmed::Refused | Confirmed::TimedOut) = answer {
            Metrics::add(&self.broker.shared.metrics.not_confirmed, 1);
        }
        match answer {
            Answer::Ready | Answer::Confirmed(Confirmed::Delivered) => {}
            Answer::Released(r) => r?,
            // 3.x cannot be told: the message is in the dead-letter topic, acknowledge it.
            Answer::Confirmed(Confirmed::Refused) if !v5 => {}
            Answer::Confirmed(Confirmed::TimedOut) if !v5 => {
                return Err(Close::Refused(Refusal::NotConfirmed));
            }
            Answer::Confirmed(_) => {
                if !self.refuse_front()? {
                    return Ok(()); // a QoS 2 id's release is being made durable first
                }
            }
        }
        // The front entry is done; those behind it that wait for nothing follow it.
        let mut done = true;
        loop {
            let Some(confirming) = self.confirming.as_mut() else {
                return Ok(());
            };
            let waits = confirming
                .queue
                .front()
                .is_some_and(|f| f.confirm.is_some() || f.release.is_some());
            if waits && !done {
                return Ok(());
            }
            done = false;
            let Some(next) = confirming.queue.pop_front() else {
                self.confirming = None;
                return Ok(());
            };
            confirming.inbound -= usize::from(matches!(next.packet, Packet::PubAck(_)));
            if confirming.queue.is_empty() {
                self.confirming = None;
            }
            self.send_ack(wbuf, &next.packet, next.received);
        }
    }

    /// Sends an acknowledgement, counting its delay since its PUBLISH arrived.
    fn send_ack(&mut self, wbuf: &mut BytesMut, packet: &Packet, received: Option<Instant>) {
        if let Some(at) = received {
            let delay = at.elapsed().as_micros() as u64;
            self.broker.shared.metrics.ack_delay.0.observe(delay);
        }
        self.send(wbuf, packet);
    }

    /// Gives the front entry reason 0x80 (v5). A PUBREC's packet id is released first (logged):
    /// `false` while that release is not durable yet (the entry then waits for it).
    fn refuse_front(&mut self) -> Result<bool, Close> {
        let Some(front) = self.confirming.as_mut().and_then(|c| c.queue.front_mut()) else {
            return Ok(true);
        };
        if let Some(confirm) = front.confirm.take() {
            confirm.forget();
        }
        let packet_id = match &mut front.packet {
            Packet::PubAck(a) => {
                a.reason = ReasonCode::UNSPECIFIED_ERROR;
                return Ok(true);
            }
            Packet::PubRec(r) => {
                r.reason = ReasonCode::UNSPECIFIED_ERROR;
                r.packet_id
            }
            _ => return Ok(true),
        };
        let pending = self
            .broker
            .inbound_refuse(&self.slot, self.id, packet_id)?
            .ok_or(Close::TakenOver)?;
        if pending.is_ready() {
            return Ok(true);
        }
        if let Some(front) = self.confirming.as_mut().and_then(|c| c.queue.front_mut()) {
            front.release = Some(pending);
        }
        Ok(false)
    }
}
