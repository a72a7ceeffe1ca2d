//! The checks of an inbound PUBLISH that depend only on the configuration and the packet:
//! those that end the connection ([`check_packet`]), and those that refuse or drop one message
//! ([`check_content`]); the Receive Maximum over the counts the connection and session keep
//! ([`check_receive_maximum`]); and the acknowledgement an inbound message gets
//! ([`inbound_ack`]). The QoS 2 duplicate check is the broker's (`claim_inbound_qos2`: it
//! checks and marks under the session's lock), the authorizer a hook.

use crate::codec::{Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode};
use crate::config::Config;

use super::{max_qos, Refusal};

/// What to do with a PUBLISH whose content [`check_content`] looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Route it.
    Route,
    /// Refuse it: a v5 QoS 1/2 publisher gets the refusal's code on PUBACK/PUBREC; otherwise
    /// the connection ends with it.
    Refuse(Refusal),
    /// Acknowledge it as usual and drop it (a 3.x client cannot be told).
    Drop,
}

/// Errors in the packet itself, which end the connection whatever its QoS.
pub fn check_packet(cfg: &Config, p: &Publish) -> Result<(), Refusal> {
    if !p.properties.subscription_identifiers.is_empty() {
        return Err(Refusal::SubscriptionIdFromClient);
    }
    if p.qos > max_qos(cfg) {
        return Err(Refusal::QosAboveMaximum);
    }
    if p.retain && !cfg.mqtt.retain_available {
        return Err(Refusal::RetainUnsupported);
    }
    Ok(())
}

/// The message's topic and payload, once its topic alias is resolved.
pub fn check_content(cfg: &Config, version: ProtocolVersion, p: &Publish) -> Verdict {
    if p.topic.split('/').count() > cfg.limits.max_topic_levels {
        return Verdict::Refuse(Refusal::TopicTooDeep);
    }
    if p.topic.starts_with('$') {
        // Clients may not publish to `$` topics ($SYS is the broker's).
        return match version.is_v5() {
            true => Verdict::Refuse(Refusal::TopicReserved),
            false => Verdict::Drop,
        };
    }
    if p.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&p.payload).is_err()
    {
        return Verdict::Refuse(Refusal::PayloadNotUtf8);
    }
    Verdict::Route
}

/// [MQTT-3.3.4-7]: a QoS 1/2 PUBLISH beyond the Receive Maximum ends the connection.
/// `in_flight`: the client's QoS 1/2 messages not yet acknowledged (QoS 2 ids awaiting PUBREL,
/// a held-back message, acknowledgements waiting for durability).
pub fn check_receive_maximum(cfg: &Config, qos: QoS, in_flight: usize) -> Result<(), Refusal> {
    if qos != QoS::AtMostOnce && in_flight >= usize::from(cfg.mqtt.receive_maximum) {
        return Err(Refusal::ReceiveMaximumExceeded);
    }
    Ok(())
}

/// The PUBACK (QoS 1) or PUBREC (QoS 2) for an inbound message, `None` for QoS 0; 3.x
/// acknowledgements carry no reason code.
pub fn inbound_ack(
    version: ProtocolVersion,
    packet_id: u16,
    qos: QoS,
    reason: ReasonCode,
) -> Option<Packet> {
    let mut ack = PubAck::new(packet_id);
    if version.is_v5() {
        ack.reason = reason;
    }
    match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Packet::PubAck(ack)),
        QoS::ExactlyOnce => Some(Packet::PubRec(ack)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publish(topic: &str, payload: &'static [u8], qos: QoS, retain: bool) -> Publish {
        Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: 1,
            properties: Default::default(),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn packet_errors_end_the_connection() {
        let mut cfg = Config::default();
        cfg.mqtt.max_qos = 1;
        cfg.mqtt.retain_available = false;
        assert_eq!(
            check_packet(&cfg, &publish("t", b"", QoS::AtLeastOnce, false)),
            Ok(())
        );
        let q2 = publish("t", b"", QoS::ExactlyOnce, false);
        assert_eq!(check_packet(&cfg, &q2), Err(Refusal::QosAboveMaximum));
        let retained = publish("t", b"", QoS::AtMostOnce, true);
        assert_eq!(
            check_packet(&cfg, &retained),
            Err(Refusal::RetainUnsupported)
        );
        let mut with_id = publish("t", b"", QoS::AtMostOnce, false);
        with_id.properties.subscription_identifiers = vec![1];
        assert_eq!(
            check_packet(&cfg, &with_id),
            Err(Refusal::SubscriptionIdFromClient)
        );
    }

    #[test]
    fn content_is_routed_refused_or_dropped() {
        let mut cfg = Config::default();
        cfg.limits.max_topic_levels = 2;
        let v5 = ProtocolVersion::V5;
        let v311 = ProtocolVersion::V3_1_1;
        let ok = publish("a/b", b"x", QoS::AtLeastOnce, false);
        assert_eq!(check_content(&cfg, v5, &ok), Verdict::Route);
        let deep = publish("a/b/c", b"x", QoS::AtLeastOnce, false);
        assert_eq!(
            check_content(&cfg, v5, &deep),
            Verdict::Refuse(Refusal::TopicTooDeep)
        );
        let sys = publish("$SYS/x", b"x", QoS::AtLeastOnce, false);
        assert_eq!(
            check_content(&cfg, v5, &sys),
            Verdict::Refuse(Refusal::TopicReserved)
        );
        assert_eq!(check_content(&cfg, v311, &sys), Verdict::Drop);
        let mut bad = publish("a", b"\xff", QoS::AtLeastOnce, false);
        bad.properties.payload_format_indicator = Some(1);
        assert_eq!(
            check_content(&cfg, v5, &bad),
            Verdict::Refuse(Refusal::PayloadNotUtf8)
        );
        bad.properties.payload_format_indicator = Some(0);
        assert_eq!(check_content(&cfg, v5, &bad), Verdict::Route);
    }

    #[test]
    fn the_receive_maximum_counts_qos1_and_qos2_only() {
        let mut cfg = Config::default();
        cfg.mqtt.receive_maximum = 2;
        assert_eq!(check_receive_maximum(&cfg, QoS::AtLeastOnce, 1), Ok(()));
        let over = Err(Refusal::ReceiveMaximumExceeded);
        assert_eq!(check_receive_maximum(&cfg, QoS::AtLeastOnce, 2), over);
        assert_eq!(check_receive_maximum(&cfg, QoS::ExactlyOnce, 2), over);
        assert_eq!(check_receive_maximum(&cfg, QoS::AtMostOnce, 9), Ok(()));
    }

    #[test]
    fn acknowledgements_by_qos_and_version() {
        let quota = ReasonCode::QUOTA_EXCEEDED;
        let v5 = ProtocolVersion::V5;
        assert_eq!(inbound_ack(v5, 1, QoS::AtMostOnce, quota), None);
        let Some(Packet::PubAck(a)) = inbound_ack(v5, 7, QoS::AtLeastOnce, quota) else {
            panic!("QoS 1 is acknowledged with PUBACK")
        };
        assert_eq!((a.packet_id, a.reason), (7, quota));
        let Some(Packet::PubRec(a)) =
            inbound_ack(ProtocolVersion::V3_1_1, 8, QoS::ExactlyOnce, quota)
        else {
            panic!("QoS 2 is acknowledged with PUBREC")
        };
        assert_eq!(
            (a.packet_id, a.reason),
            (8, ReasonCode::SUCCESS),
            "3.x has no code"
        );
    }
}
