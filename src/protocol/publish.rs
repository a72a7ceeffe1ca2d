//! The checks of an inbound PUBLISH that depend only on the configuration and the packet:
//! those that end the connection ([`check_packet`]), and those that refuse or drop one message
//! ([`check_content`]). The checks that need the session (duplicate QoS 2 ids, the Receive
//! Maximum) and the authorizer stay with the connection.

use crate::codec::{ProtocolVersion, Publish};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
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
}
