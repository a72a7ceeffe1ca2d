//! The fifteen MQTT control packets: their values, and the decoding and encoding of their bodies
//! (variable header and payload) for protocol levels 3, 4 and 5.
//!
//! The fixed header (type, flags, remaining length) is handled in `mod.rs`; each function here
//! sees exactly one packet body. Decoding is strict: leftover bytes after the last field are a
//! Malformed Packet, as is any field that runs past the body.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::*;
use super::reason::{allowed, ReasonCode};
use super::topic::{self, ByteStr};
use super::wire::{self, check_field, put_binary, Reader};

/// The protocol level a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            _ => "MQTT",
        }
    }

    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// CONNECT (§3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// Clean Session (3.x) or Clean Start (5.0).
    pub clean_start: bool,
    pub keep_alive: u16,
    pub properties: ConnectProperties,
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

/// The will message carried in CONNECT (§3.1.2.5, §3.1.3.2–4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

/// CONNACK (§3.2). `code` is a v5 reason code, or a 3.x return code (0 to 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ReasonCode,
    pub properties: ConnAckProperties,
}

/// PUBLISH (§3.3). `packet_id` is 0 for QoS 0 and non-zero otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: ByteStr,
    pub packet_id: u16,
    pub properties: PublishProperties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this body (§3.4–3.7); the `Packet` variant says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: AckProperties,
}

impl PubAck {
    pub fn new(packet_id: u16) -> Self {
        PubAck {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: AckProperties::default(),
        }
    }
}

/// Retain Handling of a subscription (§3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    OnSubscribe = 0,
    /// Send them only if the subscription did not exist before.
    OnNewSubscribe = 1,
    /// Never send retained messages for this subscription.
    Never = 2,
}

/// Subscription Options (§3.8.3.1). In 3.x only `qos` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub fn qos(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        }
    }
}

/// SUBSCRIBE (§3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: SubscribeProperties,
    pub filters: Vec<(String, SubscriptionOptions)>,
}

/// SUBACK (§3.9): one reason code (3.x: return code) per filter, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: AckProperties,
    pub reason_codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE (§3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: UnsubscribeProperties,
    pub filters: Vec<String>,
}

/// UNSUBACK (§3.11). 3.x carries no reason codes: `reason_codes` is empty there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: AckProperties,
    pub reason_codes: Vec<ReasonCode>,
}

/// DISCONNECT (§3.14). 3.x carries neither reason nor properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: DisconnectProperties,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Self {
        Disconnect {
            reason,
            properties: DisconnectProperties::default(),
        }
    }
}

/// AUTH (§3.15), MQTT 5.0 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: AuthProperties,
}

// ---------------------------------------------------------------------------------------------
// Decoding helpers

const fn trailing() -> DecodeError {
    DecodeError::malformed(
        "§2.1.4",
        "bytes left over after the last field of the packet",
    )
}

fn finish(r: &Reader) -> Result<(), DecodeError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(trailing())
    }
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::protocol(
            "[MQTT-2.2.1-3]",
            "packet identifier 0",
        ));
    }
    Ok(id)
}

fn reason(r: &mut Reader, allowed: &[u8]) -> Result<ReasonCode, DecodeError> {
    let code = r.u8()?;
    check_reason(code, allowed)
}

fn check_reason(code: u8, allowed: &[u8]) -> Result<ReasonCode, DecodeError> {
    if allowed.contains(&code) {
        Ok(ReasonCode(code))
    } else {
        Err(DecodeError::protocol(
            "§2.4",
            "reason code not allowed on this packet",
        ))
    }
}

fn filter(r: &mut Reader) -> Result<String, DecodeError> {
    let f = r.string()?;
    topic::validate_topic_filter(&f)?;
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// Decoding, one function per packet body

pub(crate) fn decode_connect(mut r: Reader) -> Result<Connect, DecodeError> {
    let name = r.byte_str()?;
    let level = r.u8()?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V3_1_1,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQIsdp", 3) => ProtocolVersion::V3_1,
        ("MQTT" | "MQIsdp", _) => {
            return Err(DecodeError::UnsupportedProtocol {
                name_ok: true,
                level,
            })
        }
        _ => {
            return Err(DecodeError::UnsupportedProtocol {
                name_ok: false,
                level,
            })
        }
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::malformed(
            "[MQTT-3.1.2-3]",
            "reserved connect flag is set",
        ));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && will_qos != 0 {
        return Err(DecodeError::malformed(
            "[MQTT-3.1.2-11]",
            "will QoS set without a will",
        ));
    }
    if !will_flag && will_retain {
        return Err(DecodeError::malformed(
            "[MQTT-3.1.2-13]",
            "will retain set without a will",
        ));
    }
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        return Err(DecodeError::malformed("[MQTT-3.1.2-12]", "will QoS 3"));
    };
    if protocol != ProtocolVersion::V5 && password_flag && !username_flag {
        return Err(DecodeError::malformed(
            "[MQTT-3.1.2-22]",
            "password flag set without user name flag",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        ConnectProperties::decode(&mut r)?
    } else {
        ConnectProperties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if protocol.is_v5() {
            WillProperties::decode(&mut r)?
        } else {
            WillProperties::default()
        };
        let topic = r.byte_str()?;
        if topic.is_empty() {
            return Err(DecodeError::malformed(
                "[MQTT-4.7.3-1]",
                "will topic is empty",
            ));
        }
        topic::validate_topic_name(&topic)?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    finish(&r)?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

pub(crate) fn decode_connack(mut r: Reader, v: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::malformed(
            "[MQTT-3.2.2-1]",
            "reserved connack flags are set",
        ));
    }
    let session_present = flags & 0x01 != 0;
    let raw = r.u8()?;
    let code = if v.is_v5() {
        check_reason(raw, allowed::CONNACK)?
    } else if raw <= 5 {
        ReasonCode(raw)
    } else {
        return Err(DecodeError::protocol(
            "§3.2.2.3",
            "connack return code above 5",
        ));
    };
    if code.0 != 0 && session_present {
        return Err(DecodeError::protocol(
            "[MQTT-3.2.2-6]",
            "session present set on a refused connection",
        ));
    }
    let properties = if v.is_v5() {
        ConnAckProperties::decode(&mut r)?
    } else {
        ConnAckProperties::default()
    };
    finish(&r)?;
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}

pub(crate) fn decode_publish(
    mut r: Reader,
    flags: u8,
    v: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let retain = flags & 0x01 != 0;
    // The fixed-header check has already refused QoS 3.
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::malformed(
        "[MQTT-3.3.1-4]",
        "PUBLISH with QoS 3",
    ))?;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::malformed(
            "[MQTT-3.3.1-2]",
            "DUP set on a QoS 0 PUBLISH",
        ));
    }
    let topic = r.byte_str()?;
    topic::validate_topic_name(&topic)?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(&mut r)?
    };
    let properties = if v.is_v5() {
        PublishProperties::decode(&mut r)?
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() {
        if !v.is_v5() {
            return Err(DecodeError::malformed(
                "[MQTT-4.7.3-1]",
                "topic name is empty",
            ));
        }
        if properties.topic_alias.is_none() {
            return Err(DecodeError::protocol(
                "§3.3.2.3.4",
                "empty topic name without a topic alias",
            ));
        }
    }
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// PUBACK, PUBREC (`allowed::PUBACK`) and PUBREL, PUBCOMP (`allowed::PUBREL`).
pub(crate) fn decode_puback(
    mut r: Reader,
    v: ProtocolVersion,
    allowed: &[u8],
) -> Result<PubAck, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let mut ack = PubAck::new(packet_id);
    if v.is_v5() && !r.is_empty() {
        ack.reason = reason(&mut r, allowed)?;
        if !r.is_empty() {
            ack.properties = AckProperties::decode(&mut r)?;
        }
    }
    finish(&r)?;
    Ok(ack)
}

pub(crate) fn decode_subscribe(
    mut r: Reader,
    v: ProtocolVersion,
) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if v.is_v5() {
        SubscribeProperties::decode(&mut r)?
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let f = filter(&mut r)?;
        let o = r.u8()?;
        let reserved = if v.is_v5() { 0xC0 } else { 0xFC };
        if o & reserved != 0 {
            return Err(DecodeError::malformed(
                "[MQTT-3.8.3-5]",
                "reserved subscription option bits are set",
            ));
        }
        let qos = QoS::from_u8(o & 0x03).ok_or(DecodeError::malformed(
            "[MQTT-3.8.3-4]",
            "subscription with QoS 3",
        ))?;
        let retain_handling = match (o >> 4) & 0x03 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            2 => RetainHandling::Never,
            _ => return Err(DecodeError::protocol("§3.8.3.1", "retain handling 3")),
        };
        let options = SubscriptionOptions {
            qos,
            no_local: o & 0x04 != 0,
            retain_as_published: o & 0x08 != 0,
            retain_handling,
        };
        if options.no_local && f.starts_with("$share/") {
            return Err(DecodeError::protocol(
                "[MQTT-3.8.3-4]",
                "no local set on a shared subscription",
            ));
        }
        filters.push((f, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::protocol(
            "[MQTT-3.8.3-2]",
            "SUBSCRIBE without topic filters",
        ));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

pub(crate) fn decode_suback(mut r: Reader, v: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if v.is_v5() {
        AckProperties::decode(&mut r)?
    } else {
        AckProperties::default()
    };
    let allowed = if v.is_v5() {
        allowed::SUBACK
    } else {
        allowed::SUBACK_V3
    };
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reason_codes.push(reason(&mut r, allowed)?);
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::protocol(
            "§3.9.3",
            "SUBACK without reason codes",
        ));
    }
    Ok(SubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

pub(crate) fn decode_unsubscribe(
    mut r: Reader,
    v: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if v.is_v5() {
        UnsubscribeProperties::decode(&mut r)?
    } else {
        UnsubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(filter(&mut r)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::protocol(
            "[MQTT-3.10.3-2]",
            "UNSUBSCRIBE without topic filters",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

pub(crate) fn decode_unsuback(mut r: Reader, v: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let mut ack = UnsubAck {
        packet_id,
        properties: AckProperties::default(),
        reason_codes: vec![],
    };
    if v.is_v5() {
        ack.properties = AckProperties::decode(&mut r)?;
        while !r.is_empty() {
            ack.reason_codes.push(reason(&mut r, allowed::UNSUBACK)?);
        }
        if ack.reason_codes.is_empty() {
            return Err(DecodeError::protocol(
                "§3.11.3",
                "UNSUBACK without reason codes",
            ));
        }
    }
    finish(&r)?;
    Ok(ack)
}

pub(crate) fn decode_disconnect(
    mut r: Reader,
    v: ProtocolVersion,
) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
    if v.is_v5() && !r.is_empty() {
        d.reason = reason(&mut r, allowed::DISCONNECT)?;
        if !r.is_empty() {
            d.properties = DisconnectProperties::decode(&mut r)?;
        }
    }
    finish(&r)?;
    Ok(d)
}

pub(crate) fn decode_auth(mut r: Reader) -> Result<Auth, DecodeError> {
    let mut a = Auth {
        reason: ReasonCode::SUCCESS,
        properties: AuthProperties::default(),
    };
    if !r.is_empty() {
        a.reason = reason(&mut r, allowed::AUTH)?;
        a.properties = AuthProperties::decode(&mut r)?;
    }
    finish(&r)?;
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// Encoding. Each packet has a `body_len` (which also checks every limit) and a `write_body`
// that is only called after `body_len` succeeded.

fn str_len(s: &str, what: &'static str) -> Result<usize, EncodeError> {
    check_field(s.len(), what)?;
    Ok(2 + s.len())
}

fn props_len<P: PropertySet>(v: ProtocolVersion, p: &P) -> Result<usize, EncodeError> {
    if v.is_v5() {
        p.encoded_len()
    } else {
        Ok(0)
    }
}

fn put_props<P: PropertySet>(v: ProtocolVersion, p: &P, dst: &mut BytesMut) {
    if v.is_v5() {
        // `body_len` already ran over the same value, so this cannot fail here.
        let len = p.body_len().unwrap_or(0);
        p.write(len, dst);
    }
}

fn check_qos_packet_id(qos: QoS, packet_id: u16) -> Result<(), EncodeError> {
    if qos != QoS::AtMostOnce && packet_id == 0 {
        return Err(EncodeError::OutOfRange("packet identifier 0 on QoS > 0"));
    }
    Ok(())
}

impl Connect {
    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let v = self.protocol;
        let mut len = str_len(v.protocol_name(), "protocol name")? + 1 + 1 + 2;
        len += props_len(v, &self.properties)?;
        len += str_len(&self.client_id, "client identifier")?;
        if let Some(w) = &self.will {
            len += props_len(v, &w.properties)?;
            len += str_len(&w.topic, "will topic")?;
            check_field(w.payload.len(), "will payload")?;
            len += 2 + w.payload.len();
        }
        if let Some(u) = &self.username {
            len += str_len(u, "user name")?;
        }
        if let Some(p) = &self.password {
            check_field(p.len(), "password")?;
            len += 2 + p.len();
        }
        if !v.is_v5() && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::NotInVersion("a password without a user name"));
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, dst: &mut BytesMut) {
        let v = self.protocol;
        put_binary(dst, v.protocol_name().as_bytes());
        dst.put_u8(v.level());
        let mut flags = 0u8;
        if self.clean_start {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | ((w.qos as u8) << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        dst.put_u8(flags);
        dst.put_u16(self.keep_alive);
        put_props(v, &self.properties, dst);
        put_binary(dst, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            put_props(v, &w.properties, dst);
            put_binary(dst, w.topic.as_bytes());
            put_binary(dst, &w.payload);
        }
        if let Some(u) = &self.username {
            put_binary(dst, u.as_bytes());
        }
        if let Some(p) = &self.password {
            put_binary(dst, p);
        }
    }
}

impl ConnAck {
    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if !v.is_v5() && self.code.0 > 5 {
            return Err(EncodeError::NotInVersion("a CONNACK return code above 5"));
        }
        Ok(2 + props_len(v, &self.properties)?)
    }

    pub(crate) fn write_body(&self, v: ProtocolVersion, dst: &mut BytesMut) {
        dst.put_u8(self.session_present as u8);
        dst.put_u8(self.code.0);
        put_props(v, &self.properties, dst);
    }
}

impl Publish {
    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        check_qos_packet_id(self.qos, self.packet_id)?;
        let mut len = str_len(&self.topic, "topic name")?;
        if self.qos != QoS::AtMostOnce {
            len += 2;
        }
        len += props_len(v, &self.properties)?;
        Ok(len + self.payload.len())
    }

    pub(crate) fn write_body(&self, v: ProtocolVersion, dst: &mut BytesMut) {
        put_binary(dst, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            dst.put_u16(self.packet_id);
        }
        put_props(v, &self.properties, dst);
        dst.put_slice(&self.payload);
    }

    pub(crate) fn flags(&self) -> u8 {
        ((self.dup as u8) << 3) | ((self.qos as u8) << 1) | self.retain as u8
    }
}

impl PubAck {
    // A reason code is always followed by its property length, even when it is 0: the spec
    // lets a receiver accept the shorter form (and our decoder does), but some clients
    // (rumqttc 0.24's DISCONNECT) wait forever for the missing byte.
    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if !v.is_v5() || (self.reason == ReasonCode::SUCCESS && self.properties.is_empty()) {
            return Ok(2);
        }
        Ok(3 + self.properties.encoded_len()?)
    }

    pub(crate) fn write_body(&self, v: ProtocolVersion, dst: &mut BytesMut) {
        dst.put_u16(self.packet_id);
        if !v.is_v5() || (self.reason == ReasonCode::SUCCESS && self.properties.is_empty()) {
            return;
        }
        dst.put_u8(self.reason.0);
        put_props(v, &self.properties, dst);
    }
}

fn options_byte(v: ProtocolVersion, o: &SubscriptionOptions) -> u8 {
    let mut b = o.qos as u8;
    if v.is_v5() {
        b |= (o.no_local as u8) << 2;
        b |= (o.retain_as_published as u8) << 3;
        b |= (o.retain_handling as u8) << 4;
    }
    b
}

impl Subscribe {
    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = 2 + props_len(v, &self.properties)?;
        for (f, _) in &self.filters {
            len += str_len(f, "topic filter")? + 1;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, v: ProtocolVersion, dst: &mut BytesMut) {
        dst.put_u16(self.packet_id);
        put_props(v, &self.properties, dst);
        for (f, o) in &self.filters {
            put_binary(dst, f.as_bytes());
            dst.put_u8(options_byte(v, o));
        }
    }
}

impl SubAck {
    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        Ok(2 + props_len(v, &self.properties)? + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, v: ProtocolVersion, dst: &mut BytesMut) {
        dst.put_u16(self.packet_id);
        put_props(v, &self.properties, dst);
        for c in &self.reason_codes {
            dst.put_u8(c.0);
        }
    }
}

impl Unsubscribe {
    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = 2 + props_len(v, &self.properties)?;
        for f in &self.filters {
            len += str_len(f, "topic filter")?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, v: ProtocolVersion, dst: &mut BytesMut) {
        dst.put_u16(self.packet_id);
        put_props(v, &self.properties, dst);
        for f in &self.filters {
            put_binary(dst, f.as_bytes());
        }
    }
}

impl UnsubAck {
    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if !v.is_v5() {
            return Ok(2);
        }
        Ok(2 + self.properties.encoded_len()? + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, v: ProtocolVersion, dst: &mut BytesMut) {
        dst.put_u16(self.packet_id);
        if v.is_v5() {
            put_props(v, &self.properties, dst);
            for c in &self.reason_codes {
                dst.put_u8(c.0);
            }
        }
    }
}

impl Disconnect {
    pub(crate) fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if !v.is_v5() || (self.reason == ReasonCode::SUCCESS && self.properties.is_empty()) {
            return Ok(0);
        }
        Ok(1 + self.properties.encoded_len()?)
    }

    pub(crate) fn write_body(&self, v: ProtocolVersion, dst: &mut BytesMut) {
        if !v.is_v5() || (self.reason == ReasonCode::SUCCESS && self.properties.is_empty()) {
            return;
        }
        dst.put_u8(self.reason.0);
        put_props(v, &self.properties, dst);
    }
}

impl Auth {
    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        if self.reason == ReasonCode::SUCCESS && self.properties.is_empty() {
            return Ok(0);
        }
        Ok(1 + self.properties.encoded_len()?)
    }

    pub(crate) fn write_body(&self, dst: &mut BytesMut) {
        if self.reason == ReasonCode::SUCCESS && self.properties.is_empty() {
            return;
        }
        dst.put_u8(self.reason.0);
        put_props(ProtocolVersion::V5, &self.properties, dst);
    }
}

/// Length of a property block for the benefit of callers that trim properties to fit a
/// client's Maximum Packet Size.
pub fn varint_len(value: u32) -> usize {
    wire::varint_len(value)
}
