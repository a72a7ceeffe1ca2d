//! What the broker sends: deliveries from the session into the write buffer, with topic
//! aliases and the client's Maximum Packet Size.

use super::*;
use crate::broker::REFILL_BELOW;
use crate::session::PacketId;

impl Connection {
    /// Moves deliveries from the session into the write buffer while it has room.
    pub(super) fn fill_outgoing(&mut self, wbuf: &mut BytesMut) {
        let now = Instant::now();
        while wbuf.len() < WRITE_BUFFER_HIGH {
            let next = self.broker.session_op(&self.slot, self.id, |s| {
                let expired = s.expired;
                let next = s.next_publish(now);
                (next, s.expired - expired, s.wants_page_in(REFILL_BELOW))
            });
            let Some((next, expired, refill)) = next else {
                return;
            };
            if expired > 0 {
                Metrics::add(&self.broker.shared.metrics.expired, expired);
            }
            if refill {
                self.broker.refill(&self.slot);
            }
            match next {
                Some(out) => {
                    self.broker.drained(&self.slot);
                    self.encode_outgoing(wbuf, out, now)
                }
                None => return,
            }
        }
        // More may be sendable once the socket drains: look again then.
        self.slot.wake.notify_one();
    }

    /// The MQTT packet identifier of a delivery of this (network client's) session, whose ids
    /// never exceed 65,535; a larger one (a broker-internal session's) is reported and not
    /// sent.
    fn wire_id(&self, id: PacketId) -> Option<u16> {
        let wire = u16::try_from(id).ok();
        if wire.is_none() {
            tracing::error!(client_id = %self.client_id, id, "packet identifier above 65535 for a network client; not sent");
        }
        wire
    }

    pub(super) fn encode_outgoing(&mut self, wbuf: &mut BytesMut, out: Outgoing, now: Instant) {
        let (id, delivery, dup) = match out {
            Outgoing::PubRel { packet_id } => {
                if let Some(id) = self.wire_id(packet_id) {
                    self.send(wbuf, &Packet::PubRel(PubAck::new(id)));
                }
                return;
            }
            Outgoing::Publish {
                packet_id,
                delivery,
                dup,
            } => (packet_id, delivery, dup),
        };
        let Some(packet_id) = self.wire_id(id) else {
            return;
        };
        let m = &delivery.message;
        let mut publish = Publish {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: m.topic.clone(),
            packet_id,
            properties: PublishProperties::default(),
            payload: m.payload.clone(),
        };
        let mut alias = OutboundTopic::Full;
        if self.version.is_v5() {
            publish.properties = (*m.properties).clone();
            publish.properties.subscription_identifiers = delivery.subscription_ids.clone();
            publish.properties.message_expiry_interval = m.remaining_expiry_secs(now);
            alias = self.aliases_out.choose(&m.topic);
            match alias {
                OutboundTopic::Alias(a) => {
                    publish.topic = ByteStr::default();
                    publish.properties.topic_alias = Some(a);
                }
                OutboundTopic::SetAlias(a) => publish.properties.topic_alias = Some(a),
                OutboundTopic::Full => {}
            }
        }
        let packet = Packet::Publish(publish);
        match encoded_len(&packet, self.version) {
            Ok(n) if n <= self.max_packet_out as usize => {
                let _ = encode(&packet, self.version, wbuf);
                self.aliases_out.sent(&m.topic, alias);
                Metrics::add(&self.broker.shared.metrics.messages_sent, 1);
                self.broker
                    .emit(EventKinds::DELIVERED, || Event::Delivered {
                        client_id: self.client_id.clone(),
                        message: delivery.message.clone(),
                        packet_id: id,
                        qos: delivery.qos,
                    });
            }
            _ => {
                // [MQTT-3.1.2-25]: discard as if sent and acknowledged.
                Metrics::add(&self.broker.shared.metrics.dropped_too_large, 1);
                if id != 0 {
                    self.broker
                        .session_op(&self.slot, self.id, |s| s.discard_inflight(id));
                }
            }
        }
    }

    /// PUBREC for a delivery the broker sent at QoS 2: PUBREL once the PubRec record is durable
    /// (meanwhile the next packets are handled, so one subscriber's PUBRECs share fdatasyncs).
    pub(super) fn on_pubrec(&mut self, a: PubAck, wbuf: &mut BytesMut) -> Result<(), Close> {
        let refused = a.reason.is_error();
        let (outcome, pending) = self
            .broker
            .outbound_pubrec(&self.slot, self.id, a.packet_id.into(), refused)?
            .ok_or(Close::TakenOver)?;
        match outcome {
            // PUBREL leaves once the PubRec record is durable; meanwhile the next
            // packets are handled, so one subscriber's PUBRECs share fdatasyncs.
            PubRecOutcome::Release => {
                let rel = Packet::PubRel(PubAck::new(a.packet_id));
                match pending {
                    Some(p) => self.pending_acks.push(p, None, Some(rel.into()), false),
                    None => self.send(wbuf, &rel),
                }
            }
            // Behind whatever waits, so it never overtakes the first PUBREL's record.
            PubRecOutcome::ReleaseAgain => {
                let rel = Packet::PubRel(PubAck::new(a.packet_id));
                self.send_in_order(wbuf, rel.into(), false);
            }
            PubRecOutcome::Unknown => {
                let mut rel = PubAck::new(a.packet_id);
                rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                self.send(wbuf, &Packet::PubRel(rel));
            }
            PubRecOutcome::Refused(_) => {}
        }
        Ok(())
    }
}
