//! The policy of a connected client's other requests: SUBSCRIBE and UNSUBSCRIBE (what ends the
//! connection, the reason codes each version may see) and DISCONNECT (the session expiry it
//! may set). The broker decides per filter (`Broker::subscribe`); this is what the protocol
//! version and the configuration add around it.

use crate::codec::{Disconnect, ProtocolVersion, ReasonCode, Subscribe};
use crate::config::Config;

use super::Refusal;

/// A SUBSCRIBE that ends the connection: a Subscription Identifier where the broker
/// announced none [MQTT-3.8.3-1 / 0xA1].
pub fn check_subscribe(cfg: &Config, s: &Subscribe) -> Result<(), Refusal> {
    if s.properties.subscription_identifier.is_some()
        && !cfg.mqtt.subscription_identifiers_available
    {
        return Err(Refusal::SubscriptionIdsUnsupported);
    }
    Ok(())
}

/// The SUBACK codes for the broker's per-filter decisions: 3.x knows only the granted QoS and
/// 0x80 (failure).
pub fn suback_codes(version: ProtocolVersion, mut codes: Vec<ReasonCode>) -> Vec<ReasonCode> {
    if !version.is_v5() {
        for c in &mut codes {
            if c.is_error() {
                *c = ReasonCode(0x80);
            }
        }
    }
    codes
}

/// The UNSUBACK codes: 3.x UNSUBACK has none.
pub fn unsuback_codes(version: ProtocolVersion, codes: Vec<ReasonCode>) -> Vec<ReasonCode> {
    match version.is_v5() {
        true => codes,
        false => Vec::new(),
    }
}

/// The session expiry a DISCONNECT sets, capped like the CONNECT's (the client cannot raise
/// it past `mqtt.max_session_expiry_secs`). A session that connected with expiry 0 cannot be
/// given one now [MQTT-3.14.2-2].
pub fn disconnect_expiry(
    cfg: &Config,
    connect_expiry: u32,
    d: &Disconnect,
) -> Result<Option<u32>, Refusal> {
    let max_expiry = cfg.mqtt.max_session_expiry_secs;
    let expiry = d
        .properties
        .session_expiry_interval
        .map(|e| e.min(max_expiry));
    if connect_expiry == 0 && expiry.is_some_and(|e| e > 0) {
        return Err(Refusal::SessionExpiryAfterZero);
    }
    Ok(expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_ids_only_where_announced() {
        let mut cfg = Config::default();
        let mut s = Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: Vec::new(),
        };
        s.properties.subscription_identifier = Some(5);
        cfg.mqtt.subscription_identifiers_available = true;
        assert_eq!(check_subscribe(&cfg, &s), Ok(()));
        cfg.mqtt.subscription_identifiers_available = false;
        assert_eq!(
            check_subscribe(&cfg, &s),
            Err(Refusal::SubscriptionIdsUnsupported)
        );
    }

    #[test]
    fn codes_by_version() {
        let codes = vec![ReasonCode(1), ReasonCode::NOT_AUTHORIZED];
        assert_eq!(suback_codes(ProtocolVersion::V5, codes.clone()), codes);
        assert_eq!(
            suback_codes(ProtocolVersion::V3_1_1, codes.clone()),
            vec![ReasonCode(1), ReasonCode(0x80)]
        );
        assert_eq!(unsuback_codes(ProtocolVersion::V5, codes.clone()), codes);
        assert!(unsuback_codes(ProtocolVersion::V3_1, codes).is_empty());
    }

    #[test]
    fn disconnect_expiry_is_capped_and_cannot_follow_zero() {
        let mut cfg = Config::default();
        cfg.mqtt.max_session_expiry_secs = 60;
        let mut d = Disconnect::new(ReasonCode::SUCCESS);
        assert_eq!(disconnect_expiry(&cfg, 0, &d), Ok(None));
        d.properties.session_expiry_interval = Some(3600);
        assert_eq!(disconnect_expiry(&cfg, 10, &d), Ok(Some(60)));
        assert_eq!(
            disconnect_expiry(&cfg, 0, &d),
            Err(Refusal::SessionExpiryAfterZero)
        );
        d.properties.session_expiry_interval = Some(0);
        assert_eq!(disconnect_expiry(&cfg, 0, &d), Ok(Some(0)));
    }
}
