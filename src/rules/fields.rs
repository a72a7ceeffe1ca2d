//! The fields a rule reads: a message's (EMQX's names: `id clientid username payload peerhost
//! topic qos flags pub_props timestamp publish_received_at node event`) and each event's.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::broker::Broker;
use crate::codec::PublishProperties;
use crate::hooks::{ConnectedInfo, Event};
use crate::persistence::convert::wall_clock_ms;
use crate::session::Message;

/// The `node` field: `keelmq@<host name>`.
pub fn node() -> &'static str {
    static NODE: OnceLock<String> = OnceLock::new();
    NODE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        match host.is_empty() {
            true => "keelmq@localhost".to_string(),
            false => format!("keelmq@{host}"),
        }
    })
}

/// A payload as rules see it: its text (invalid UTF-8 replaced).
fn payload(m: &Message) -> Value {
    Value::String(String::from_utf8_lossy(&m.payload).into_owned())
}

/// A message's MQTT 5 properties, with EMQX's names (`User-Property` as an object).
pub fn pub_props(p: &PublishProperties) -> Value {
    let mut out = Map::new();
    if let Some(v) = p.payload_format_indicator {
        out.insert("Payload-Format-Indicator".into(), json!(v));
    }
    if let Some(v) = p.message_expiry_interval {
        out.insert("Message-Expiry-Interval".into(), json!(v));
    }
    if let Some(v) = &p.content_type {
        out.insert("Content-Type".into(), json!(v));
    }
    if let Some(v) = &p.response_topic {
        out.insert("Response-Topic".into(), json!(v));
    }
    if let Some(v) = &p.correlation_data {
        out.insert("Correlation-Data".into(), payload_text(v));
    }
    if !p.user_properties.is_empty() {
        let props: Map<String, Value> = p
            .user_properties
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        out.insert("User-Property".into(), Value::Object(props));
    }
    Value::Object(out)
}

fn payload_text(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

/// Who published a message, as far as the broker still knows it.
fn publisher(broker: &Broker, m: &Message) -> (Value, Value, Value) {
    let Some(client) = &m.publisher else {
        return (json!(""), Value::Null, Value::Null);
    };
    let identity = broker.identity_of(client);
    let username = identity.as_ref().and_then(|i| i.username.clone());
    let peerhost = identity.and_then(|i| i.peerhost).map(|ip| ip.to_string());
    (json!(&**client), json!(username), json!(peerhost))
}

/// The fields of a message published to a topic a rule reads (`event` `message.publish`).
pub fn message(broker: &Broker, m: &Message, dup: bool) -> Map<String, Value> {
    message_for(broker, m, dup, &|_| true)
}

/// [`message`] with only the fields `want` names (the rules at hand read no others): a
/// publisher's identity is looked up only for `username` or `peerhost`, the payload copied
/// only for `payload`.
pub fn message_for(
    broker: &Broker,
    m: &Message,
    dup: bool,
    want: &dyn Fn(&str) -> bool,
) -> Map<String, Value> {
    let now = wall_clock_ms();
    let mut f = Map::new();
    let mut put = |name: &str, value: &dyn Fn() -> Value| {
        if want(name) {
            f.insert(name.to_string(), value());
        }
    };
    put("id", &|| Value::String(m.id.to_string()));
    put("clientid", &|| json!(m.publisher.as_deref().unwrap_or("")));
    put("payload", &|| payload(m));
    put("topic", &|| json!(&*m.topic));
    put("qos", &|| json!(m.qos as u8));
    put("flags", &|| json!({"retain": m.retain, "dup": dup}));
    put("retain", &|| json!(m.retain));
    put("pub_props", &|| pub_props(&m.properties));
    put("timestamp", &|| json!(now));
    put("publish_received_at", &|| json!(now));
    put("node", &|| json!(node()));
    put("event", &|| json!("message.publish"));
    if want("username") || want("peerhost") {
        let (_, username, peerhost) = publisher(broker, m);
        f.insert("username".into(), username);
        f.insert("peerhost".into(), peerhost);
    }
    f
}

/// The event name (`client_connected`) an event is, if rules can read it.
pub fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Connected { .. } => "client_connected",
        Event::Disconnected { .. } => "client_disconnected",
        Event::ConnAck { .. } => "client_connack",
        Event::Authenticated { .. } => "client_check_authn_complete",
        Event::Authorized { .. } => "client_check_authz_complete",
        Event::Subscribed { .. } => "session_subscribed",
        Event::Unsubscribed { .. } => "session_unsubscribed",
        Event::Published { deliveries: 0, .. } => "message_dropped",
        Event::Published { .. } => "message_publish",
        Event::Delivered { .. } => "message_delivered",
        Event::Acked { .. } => "message_acked",
        Event::Dropped { .. } => "delivery_dropped",
    }
}

/// The fields of an event (EMQX's for each), with `event`, `timestamp` and `node`.
pub fn event(broker: &Broker, e: &Event) -> Map<String, Value> {
    let name = event_name(e);
    let mut f = match e {
        Event::Published { message, .. } => message_event(broker, message, None),
        Event::Delivered {
            client_id, message, ..
        }
        | Event::Acked {
            client_id, message, ..
        }
        | Event::Dropped { client_id, message } => message_event(broker, message, Some(client_id)),
        _ => client_event(broker, e),
    };
    match e {
        Event::Published { deliveries: 0, .. } => {
            f.insert("reason".into(), json!("no_subscribers"));
        }
        Event::Dropped { .. } => {
            f.insert("reason".into(), json!("queue_full"));
        }
        Event::Acked { .. } => {
            f.insert("puback_props".into(), json!({}));
        }
        _ => {}
    }
    f.insert(
        "event".into(),
        json!(keelmq_rules::sources::event_field(name)),
    );
    f.insert("timestamp".into(), json!(wall_clock_ms()));
    f.insert("node".into(), json!(node()));
    f
}

/// A message event's fields; for one about a subscriber, the publisher's as `from_clientid`
/// and `from_username` and the subscriber's as `clientid` and `username`.
fn message_event(broker: &Broker, m: &Message, to: Option<&str>) -> Map<String, Value> {
    let mut f = message(broker, m, false);
    let Some(client) = to else {
        return f;
    };
    let from = f.remove("clientid").unwrap_or(Value::Null);
    let from_user = f.remove("username").unwrap_or(Value::Null);
    f.insert("from_clientid".into(), from);
    f.insert("from_username".into(), from_user);
    let identity = broker.identity_of(client);
    let username = identity.as_ref().and_then(|i| i.username.clone());
    let peerhost = identity.and_then(|i| i.peerhost).map(|ip| ip.to_string());
    f.insert("clientid".into(), json!(client));
    f.insert("username".into(), json!(username));
    f.insert("peerhost".into(), json!(peerhost));
    f
}

fn client_event(broker: &Broker, e: &Event) -> Map<String, Value> {
    let f = match e {
        Event::Connected {
            client_id,
            peer,
            info,
        } => connected(client_id, *peer, info),
        Event::Disconnected { client_id, reason } => {
            let identity = broker.identity_of(client_id);
            let username = identity.as_ref().and_then(|i| i.username.clone());
            let peer = identity.and_then(|i| i.peerhost).map(|ip| ip.to_string());
            json!({"clientid": &**client_id, "username": username, "peername": peer,
                   "reason": reason, "disconnected_at": wall_clock_ms(),
                   "conn_props": {}, "disconn_props": {}})
        }
        Event::ConnAck {
            client_id,
            username,
            peer,
            reason_code,
        } => json!({"clientid": &**client_id, "username": username,
                    "peername": peer.to_string(), "reason_code": reason_name(*reason_code),
                    "conn_props": {}}),
        Event::Authenticated {
            client_id,
            username,
            peer,
            allowed,
            superuser,
        } => json!({"clientid": &**client_id, "username": username,
                    "peername": peer.to_string(),
                    "reason_code": if *allowed { "success" } else { "not_authorized" },
                    "is_anonymous": username.is_none(), "is_superuser": superuser}),
        Event::Authorized {
            client_id,
            username,
            topic,
            action,
            allowed,
        } => json!({"clientid": &**client_id, "username": username,
                    "peerhost": peerhost(broker, client_id), "topic": topic,
                    "action": action, "authz_source": "keelmq",
                    "result": if *allowed { "allow" } else { "deny" }}),
        Event::Subscribed {
            client_id,
            filter,
            qos,
        } => subscription(broker, client_id, filter, Some(*qos as u8)),
        Event::Unsubscribed { client_id, filter } => subscription(broker, client_id, filter, None),
        _ => json!({}),
    };
    match f {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn peerhost(broker: &Broker, client: &str) -> Option<String> {
    let identity = broker.identity_of(client)?;
    identity.peerhost.map(|ip| ip.to_string())
}

fn connected(client_id: &str, peer: std::net::SocketAddr, info: &ConnectedInfo) -> Value {
    let proto_name = if info.protocol == 3 { "MQIsdp" } else { "MQTT" };
    json!({"clientid": client_id, "username": info.username, "mountpoint": "",
           "peername": peer.to_string(), "sockname": info.sockname.to_string(),
           "proto_name": proto_name, "proto_ver": info.protocol,
           "keepalive": info.keep_alive, "clean_start": info.clean_start,
           "expiry_interval": info.expiry_interval, "is_bridge": false,
           "connected_at": wall_clock_ms(), "conn_props": {}})
}

fn subscription(broker: &Broker, client: &str, filter: &str, qos: Option<u8>) -> Value {
    let identity = broker.identity_of(client);
    let username = identity.as_ref().and_then(|i| i.username.clone());
    let peerhost = identity.and_then(|i| i.peerhost).map(|ip| ip.to_string());
    let mut v = json!({"clientid": client, "username": username, "peerhost": peerhost,
                       "topic": filter});
    if let (Some(q), Value::Object(m)) = (qos, &mut v) {
        m.insert("qos".into(), json!(q));
        m.insert("sub_props".into(), json!({}));
    } else if let Value::Object(m) = &mut v {
        m.insert("unsub_props".into(), json!({}));
    }
    v
}

/// EMQX's name for a CONNACK reason code.
fn reason_name(code: u8) -> String {
    let name = match code {
        0x00 => "success",
        0x80 => "unspecified_error",
        0x81 => "malformed_packet",
        0x82 => "protocol_error",
        0x84 => "unsupported_protocol_version",
        0x85 => "client_identifier_not_valid",
        0x86 => "bad_username_or_password",
        0x87 => "not_authorized",
        0x88 => "server_unavailable",
        0x89 => "server_busy",
        0x8A => "banned",
        0x95 => "packet_too_large",
        0x97 => "quota_exceeded",
        0x99 => "payload_format_invalid",
        0x9F => "connection_rate_exceeded",
        other => return format!("0x{other:02x}"),
    };
    name.to_string()
}
