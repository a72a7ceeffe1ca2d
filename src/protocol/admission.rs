//! CONNECT admission: what the broker decides about a CONNECT before it touches a session —
//! the client identifier (assigned if empty and allowed), the will, the session expiry (capped)
//! and the keep-alive (the v5 Server Keep Alive) — or the [`Refusal`] it answers with.

use crate::codec::{Connect, ProtocolVersion};
use crate::config::Config;
use crate::router::ClientId;

use super::{max_qos, Refusal};

/// A CONNECT the broker accepts, with what it decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub client_id: ClientId,
    /// The identifier the broker assigned to a client that sent none (v5 CONNACK property).
    pub assigned: Option<String>,
    /// The Session Expiry Interval the client asked for (3.x: 0, or the configured expiry for
    /// Clean Session 0), and the one it gets (capped by `mqtt.max_session_expiry_secs`).
    pub requested_expiry: u32,
    pub expiry: u32,
    /// The keep-alive in force, and the Server Keep Alive to tell a v5 client when the broker
    /// overrode its value.
    pub keep_alive: u16,
    pub server_keep_alive: Option<u16>,
}

/// Decides about `connect`. `assign_id` makes an identifier for a client that sent none.
/// Client identifiers that start with this are the broker's own (rule consumers): no network
/// client may use one, whatever its credentials.
pub const RESERVED_CLIENT_ID_PREFIX: &str = "$rule/";
/// The same for the durable subscribers of data bridges (sinks).
pub const SINK_CLIENT_ID_PREFIX: &str = "$sink/";
/// The same for the sessions bridge sources publish through.
pub const SOURCE_CLIENT_ID_PREFIX: &str = "$source/";

/// Whether `client_id` is one of the broker's own sessions (a rule's, a sink's, a source's).
pub fn is_reserved_client_id(client_id: &str) -> bool {
    [
        RESERVED_CLIENT_ID_PREFIX,
        SINK_CLIENT_ID_PREFIX,
        SOURCE_CLIENT_ID_PREFIX,
    ]
    .iter()
    .any(|p| client_id.starts_with(p))
}

pub fn admit(
    cfg: &Config,
    connect: &Connect,
    assign_id: impl FnOnce() -> String,
) -> Result<Admission, Refusal> {
    let v = connect.protocol;
    if connect.client_id.len() > cfg.mqtt.max_client_id_len {
        return Err(Refusal::ClientIdTooLong);
    }
    if is_reserved_client_id(&connect.client_id) {
        return Err(Refusal::ClientIdReserved);
    }
    let (client_id, assigned) = client_id(connect, assign_id)?;
    if connect.properties.authentication_method.is_some() {
        return Err(Refusal::EnhancedAuthUnsupported);
    }
    check_will(cfg, connect)?;
    let requested_expiry = if v.is_v5() {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        cfg.mqtt.v3_session_expiry_secs
    };
    let expiry = requested_expiry.min(cfg.mqtt.max_session_expiry_secs);
    let max_keep_alive = cfg.mqtt.max_keep_alive_secs;
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if v.is_v5() && max_keep_alive > 0 && (keep_alive == 0 || keep_alive > max_keep_alive) {
        keep_alive = max_keep_alive;
        server_keep_alive = Some(keep_alive);
    }
    Ok(Admission {
        client_id,
        assigned,
        requested_expiry,
        expiry,
        keep_alive,
        server_keep_alive,
    })
}

/// The client identifier, and whether it was assigned.
fn client_id(
    connect: &Connect,
    assign_id: impl FnOnce() -> String,
) -> Result<(ClientId, Option<String>), Refusal> {
    if !connect.client_id.is_empty() {
        return Ok((connect.client_id.as_str().into(), None));
    }
    let allowed = match connect.protocol {
        ProtocolVersion::V3_1 => false,
        ProtocolVersion::V3_1_1 => connect.clean_start, // [MQTT-3.1.3-8]
        ProtocolVersion::V5 => true,
    };
    if !allowed {
        return Err(Refusal::ClientIdEmpty);
    }
    let id = assign_id();
    Ok((id.as_str().into(), Some(id)))
}

fn check_will(cfg: &Config, connect: &Connect) -> Result<(), Refusal> {
    let Some(w) = &connect.will else {
        return Ok(());
    };
    if w.qos > max_qos(cfg) {
        return Err(Refusal::WillQosAboveMaximum);
    }
    if w.retain && !cfg.mqtt.retain_available {
        return Err(Refusal::RetainedWillUnsupported);
    }
    // `$` topics are the broker's: a will there could overwrite `$SYS` statistics or escape
    // the retained-message limit.
    if w.topic.starts_with('$') {
        return Err(Refusal::WillTopicReserved);
    }
    if w.topic.split('/').count() > cfg.limits.max_topic_levels {
        return Err(Refusal::WillTopicTooDeep);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{LastWill, QoS};

    fn connect(v: ProtocolVersion, id: &str, clean: bool) -> Connect {
        Connect {
            protocol: v,
            clean_start: clean,
            keep_alive: 30,
            properties: Default::default(),
            client_id: id.to_string(),
            will: None,
            username: None,
            password: None,
        }
    }

    fn will(topic: &str, qos: QoS, retain: bool) -> Option<LastWill> {
        Some(LastWill {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"w"),
            qos,
            retain,
            properties: Default::default(),
        })
    }

    #[test]
    fn empty_client_ids_by_version() {
        let cfg = Config::default();
        let id = || "assigned-1".to_string();
        let v5 = admit(&cfg, &connect(ProtocolVersion::V5, "", false), id).unwrap();
        assert_eq!(v5.assigned.as_deref(), Some("assigned-1"));
        assert_eq!(&*v5.client_id, "assigned-1");
        let v311 = connect(ProtocolVersion::V3_1_1, "", true);
        assert!(admit(&cfg, &v311, id).is_ok());
        let v311 = connect(ProtocolVersion::V3_1_1, "", false);
        assert_eq!(admit(&cfg, &v311, id), Err(Refusal::ClientIdEmpty));
        let v31 = connect(ProtocolVersion::V3_1, "", true);
        assert_eq!(admit(&cfg, &v31, id), Err(Refusal::ClientIdEmpty));
        let named = admit(&cfg, &connect(ProtocolVersion::V5, "c", true), id).unwrap();
        assert_eq!(named.assigned, None);
    }

    #[test]
    fn refusals_before_any_session() {
        let mut cfg = Config::default();
        cfg.mqtt.max_client_id_len = 3;
        cfg.mqtt.max_qos = 1;
        cfg.limits.max_topic_levels = 2;
        let id = || unreachable!("no identifier is assigned");
        let v5 = ProtocolVersion::V5;
        assert_eq!(
            admit(&cfg, &connect(v5, "long", true), id),
            Err(Refusal::ClientIdTooLong)
        );
        let mut c = connect(v5, "c", true);
        c.properties.authentication_method = Some("SCRAM".into());
        assert_eq!(admit(&cfg, &c, id), Err(Refusal::EnhancedAuthUnsupported));
        let cases = [
            (
                will("$SYS/broker/version", QoS::AtMostOnce, true),
                Refusal::WillTopicReserved,
            ),
            (
                will("a/b/c", QoS::AtMostOnce, false),
                Refusal::WillTopicTooDeep,
            ),
            (
                will("a", QoS::ExactlyOnce, false),
                Refusal::WillQosAboveMaximum,
            ),
        ];
        for (w, refusal) in cases {
            let mut c = connect(v5, "c", true);
            c.will = w;
            assert_eq!(admit(&cfg, &c, id), Err(refusal));
        }
        cfg.mqtt.retain_available = false;
        let mut c = connect(v5, "c", true);
        c.will = will("a", QoS::AtMostOnce, true);
        assert_eq!(admit(&cfg, &c, id), Err(Refusal::RetainedWillUnsupported));
    }

    #[test]
    fn expiry_is_capped_and_keep_alive_bounded() {
        let mut cfg = Config::default();
        cfg.mqtt.max_session_expiry_secs = 100;
        cfg.mqtt.max_keep_alive_secs = 20;
        cfg.mqtt.v3_session_expiry_secs = 50;
        let id = || unreachable!();
        let mut c = connect(ProtocolVersion::V5, "c", true);
        c.properties.session_expiry_interval = Some(u32::MAX);
        let a = admit(&cfg, &c, id).unwrap();
        assert_eq!((a.requested_expiry, a.expiry), (u32::MAX, 100));
        assert_eq!((a.keep_alive, a.server_keep_alive), (20, Some(20)));
        let a = admit(&cfg, &connect(ProtocolVersion::V3_1_1, "c", false), id).unwrap();
        assert_eq!(
            (a.expiry, a.keep_alive, a.server_keep_alive),
            (50, 30, None)
        );
        let a = admit(&cfg, &connect(ProtocolVersion::V3_1_1, "c", true), id).unwrap();
        assert_eq!(a.expiry, 0);
    }
}
