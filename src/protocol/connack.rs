//! The CONNACK a CONNECT gets: a refusal in the client's own version, or the acceptance with
//! the broker's capabilities and what admission assigned or capped (5.0).

use crate::codec::{ConnAck, ConnAckProperties, Connect, Packet, ProtocolVersion, ReasonCode};
use crate::config::Config;

use super::admission::Admission;

/// Reads the protocol level out of a buffered CONNECT (possibly malformed), to answer it in
/// the client's own version.
pub fn sniff_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while buf.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = u16::from_be_bytes([*buf.get(i + 1)?, *buf.get(i + 2)?]) as usize;
    buf.get(i + 3 + name_len).copied()
}

/// A CONNACK refusing the connection: 5.0 with `code` and `why` as reason string, 3.x with
/// the return code `code` maps to.
pub fn refusal(v: ProtocolVersion, code: ReasonCode, why: &str) -> Packet {
    let (code, properties) = if v.is_v5() {
        let props = ConnAckProperties {
            reason_string: Some(why.to_string()),
            ..Default::default()
        };
        (code, props)
    } else {
        (
            ReasonCode(code.to_v3_connack()),
            ConnAckProperties::default(),
        )
    };
    Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties,
    })
}

/// The CONNACK of an admitted CONNECT (its session-present flag is set once the session is
/// attached); in 5.0 with the broker's capabilities and what it assigned or capped.
pub fn accepted(cfg: &Config, connect: &Connect, admitted: &Admission) -> ConnAck {
    let mut ack = ConnAck {
        session_present: false,
        code: ReasonCode::SUCCESS,
        properties: ConnAckProperties::default(),
    };
    if connect.protocol.is_v5() {
        let p = &mut ack.properties;
        *p = capabilities(cfg);
        p.assigned_client_identifier = admitted.assigned.clone();
        p.server_keep_alive = admitted.server_keep_alive;
        if admitted.expiry != admitted.requested_expiry {
            p.session_expiry_interval = Some(admitted.expiry);
        }
        if connect.properties.request_response_information == Some(1) {
            p.response_information = Some(format!("keelmq/response/{}", admitted.client_id));
        }
    }
    ack
}

/// The v5 CONNACK properties that state the broker's capabilities.
fn capabilities(cfg: &Config) -> ConnAckProperties {
    let m = &cfg.mqtt;
    ConnAckProperties {
        receive_maximum: Some(m.receive_maximum),
        maximum_packet_size: Some(m.max_packet_size),
        topic_alias_maximum: Some(m.topic_alias_maximum),
        retain_available: Some(m.retain_available as u8),
        wildcard_subscription_available: Some(m.wildcard_subscription_available as u8),
        subscription_identifiers_available: Some(m.subscription_identifiers_available as u8),
        shared_subscription_available: Some(m.shared_subscription_available as u8),
        maximum_qos: (m.max_qos < 2).then_some(m.max_qos),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;
    use crate::protocol::admission::admit;

    fn connect(v: ProtocolVersion) -> Connect {
        Connect {
            protocol: v,
            clean_start: true,
            keep_alive: 0,
            properties: Default::default(),
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
        }
    }

    #[test]
    fn the_level_is_read_from_a_partial_connect() {
        for v in [
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ] {
            let mut buf = bytes::BytesMut::new();
            encode(&Packet::Connect(Box::new(connect(v))), v, &mut buf).unwrap();
            assert_eq!(sniff_level(&buf), Some(v.level()), "{v:?}");
            assert_eq!(sniff_level(&buf[..4]), None);
        }
        assert_eq!(sniff_level(&[0x30, 0, 0, 4]), None, "not a CONNECT");
        assert_eq!(sniff_level(&[]), None);
    }

    #[test]
    fn refusals_speak_the_client_s_version() {
        let code = ReasonCode::BAD_USER_NAME_OR_PASSWORD;
        let Packet::ConnAck(v5) = refusal(ProtocolVersion::V5, code, "why") else {
            unreachable!()
        };
        assert_eq!(v5.code, code);
        assert_eq!(v5.properties.reason_string.as_deref(), Some("why"));
        let Packet::ConnAck(v3) = refusal(ProtocolVersion::V3_1_1, code, "why") else {
            unreachable!()
        };
        assert_eq!(v3.code, ReasonCode(4), "3.1.1: bad user name or password");
        assert_eq!(v3.properties, ConnAckProperties::default());
    }

    #[test]
    fn a_v5_acceptance_states_capabilities_and_what_was_decided() {
        let mut cfg = Config::default();
        cfg.mqtt.max_qos = 1;
        cfg.mqtt.max_keep_alive_secs = 60;
        cfg.mqtt.max_session_expiry_secs = 100;
        let mut c = connect(ProtocolVersion::V5);
        c.properties.session_expiry_interval = Some(1000);
        c.properties.request_response_information = Some(1);
        let admitted = admit(&cfg, &c, || "given".to_string()).unwrap();
        let p = accepted(&cfg, &c, &admitted).properties;
        assert_eq!(p.assigned_client_identifier.as_deref(), Some("given"));
        assert_eq!(p.session_expiry_interval, Some(100));
        assert_eq!(p.server_keep_alive, Some(60));
        assert_eq!(p.maximum_qos, Some(1));
        assert_eq!(p.receive_maximum, Some(cfg.mqtt.receive_maximum));
        assert_eq!(
            p.response_information.as_deref(),
            Some("keelmq/response/given")
        );
        let v3 = connect(ProtocolVersion::V3_1_1);
        let admitted = admit(&cfg, &v3, || "given".to_string()).unwrap();
        assert_eq!(
            accepted(&cfg, &v3, &admitted).properties,
            ConnAckProperties::default()
        );
    }
}
