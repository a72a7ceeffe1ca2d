//! MQTT 5.0 properties (§2.2.2), one struct per packet type so that a property can only be set
//! where the specification allows it.
//!
//! On the wire a property block is a Variable Byte Integer length followed by (identifier, value)
//! pairs. Decoding rejects an identifier that is unknown or not allowed on the packet (Malformed
//! Packet, §2.2.2.2), a property repeated where it may appear once (Protocol Error; only User
//! Property, and Subscription Identifier in PUBLISH, may repeat), and values outside their
//! range (Protocol Error). User Properties keep their order [MQTT-3.3.2-18].
//!
//! Encoding walks each struct once through a [`Sink`]: a counting sink sizes the block before
//! the fixed header is written, a writing sink emits it, and both see the same fields.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::wire::{self, Reader, VARINT_MAX};

pub(crate) mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// A decoded property value, typed by its identifier (§2.2.2.2).
pub(crate) enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    Varint(u32),
    Str(String),
    Bin(Bytes),
    Pair(String, String),
}

fn read_value(id: u8, r: &mut Reader) -> Result<Value, DecodeError> {
    use id::*;
    Ok(match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Value::Byte(r.u8()?),
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
            Value::U16(r.u16()?)
        }
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => Value::U32(r.u32()?),
        SUBSCRIPTION_IDENTIFIER => Value::Varint(r.varint()?),
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Value::Str(r.string()?),
        CORRELATION_DATA | AUTHENTICATION_DATA => Value::Bin(r.binary()?),
        USER_PROPERTY => Value::Pair(r.string()?, r.string()?),
        _ => return Err(unknown()),
    })
}

const fn unknown() -> DecodeError {
    DecodeError::malformed("§2.2.2.2", "property identifier not valid for this packet")
}

const fn repeated() -> DecodeError {
    DecodeError::protocol("§2.2.2.2", "property included more than once")
}

/// Reads a property block and hands each property to `apply`, which returns `Ok(false)` for an
/// identifier its packet does not allow.
pub(crate) fn read_block(
    r: &mut Reader,
    mut apply: impl FnMut(u8, Value) -> Result<bool, DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint()? as usize;
    let mut block = r.sub_reader(len)?;
    while !block.is_empty() {
        let ident = block.varint()?;
        let ident = u8::try_from(ident).map_err(|_| unknown())?;
        let value = read_value(ident, &mut block)?;
        if !apply(ident, value)? {
            return Err(unknown());
        }
    }
    Ok(())
}

fn set<T>(slot: &mut Option<T>, value: T) -> Result<bool, DecodeError> {
    if slot.is_some() {
        return Err(repeated());
    }
    *slot = Some(value);
    Ok(true)
}

fn flag(v: u8, what: &'static str) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::protocol("§2.2.2.2", what));
    }
    Ok(v)
}

fn nonzero_u16(v: u16, what: &'static str) -> Result<u16, DecodeError> {
    if v == 0 {
        return Err(DecodeError::protocol("§3.1.2.11.3", what));
    }
    Ok(v)
}

fn nonzero_u32(v: u32, what: &'static str) -> Result<u32, DecodeError> {
    if v == 0 {
        return Err(DecodeError::protocol("§3.1.2.11.4", what));
    }
    Ok(v)
}

fn subscription_id(v: u32) -> Result<u32, DecodeError> {
    if v == 0 {
        return Err(DecodeError::protocol(
            "§3.8.2.1.2",
            "subscription identifier of 0",
        ));
    }
    Ok(v)
}

/// Receives the fields of a property struct in order. Implemented by a byte counter and by the
/// writer, so sizing and writing can never disagree.
pub(crate) trait Sink {
    fn byte(&mut self, id: u8, v: u8);
    fn u16(&mut self, id: u8, v: u16);
    fn u32(&mut self, id: u8, v: u32);
    fn varint(&mut self, id: u8, v: u32);
    fn bin(&mut self, id: u8, v: &[u8]);
    fn pair(&mut self, id: u8, k: &str, v: &str);
}

/// Counts the encoded size of a property block body and checks field limits.
#[derive(Default)]
pub(crate) struct Counter {
    pub len: usize,
    pub error: Option<EncodeError>,
}

impl Counter {
    fn field(&mut self, len: usize) {
        if len > u16::MAX as usize && self.error.is_none() {
            self.error = Some(EncodeError::FieldTooLong("property"));
        }
        self.len += 2 + len;
    }
}

impl Sink for Counter {
    fn byte(&mut self, _: u8, _: u8) {
        self.len += 2;
    }
    fn u16(&mut self, _: u8, _: u16) {
        self.len += 3;
    }
    fn u32(&mut self, _: u8, _: u32) {
        self.len += 5;
    }
    fn varint(&mut self, _: u8, v: u32) {
        if v > VARINT_MAX && self.error.is_none() {
            self.error = Some(EncodeError::OutOfRange("subscription identifier"));
        }
        self.len += 1 + wire::varint_len(v);
    }
    fn bin(&mut self, _: u8, v: &[u8]) {
        self.len += 1;
        self.field(v.len());
    }
    fn pair(&mut self, _: u8, k: &str, v: &str) {
        self.len += 1;
        self.field(k.len());
        self.field(v.len());
    }
}

impl Sink for BytesMut {
    fn byte(&mut self, id: u8, v: u8) {
        self.put_u8(id);
        self.put_u8(v);
    }
    fn u16(&mut self, id: u8, v: u16) {
        self.put_u8(id);
        self.put_u16(v);
    }
    fn u32(&mut self, id: u8, v: u32) {
        self.put_u8(id);
        self.put_u32(v);
    }
    fn varint(&mut self, id: u8, v: u32) {
        self.put_u8(id);
        wire::put_varint(self, v);
    }
    fn bin(&mut self, id: u8, v: &[u8]) {
        self.put_u8(id);
        wire::put_binary(self, v);
    }
    fn pair(&mut self, id: u8, k: &str, v: &str) {
        self.put_u8(id);
        wire::put_binary(self, k.as_bytes());
        wire::put_binary(self, v.as_bytes());
    }
}

/// Behaviour shared by every per-packet property struct.
pub(crate) trait PropertySet: Sized + Default {
    /// Accepts one decoded property; `Ok(false)` if the identifier is not allowed here.
    fn accept(&mut self, id: u8, value: Value) -> Result<bool, DecodeError>;
    /// Emits every present property, in identifier order, User Properties in their order.
    fn emit(&self, sink: &mut impl Sink);

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut props = Self::default();
        read_block(r, |id, value| props.accept(id, value))?;
        Ok(props)
    }

    /// The size of the block body (without its length prefix), checking field limits.
    fn body_len(&self) -> Result<usize, EncodeError> {
        let mut counter = Counter::default();
        self.emit(&mut counter);
        match counter.error {
            Some(e) => Err(e),
            None => Ok(counter.len),
        }
    }

    /// The size of the whole block, length prefix included.
    fn encoded_len(&self) -> Result<usize, EncodeError> {
        let body = self.body_len()?;
        Ok(wire::varint_len(body as u32) + body)
    }

    /// Writes the block with its length prefix; `body_len` is what [`Self::body_len`] returned.
    fn write(&self, body_len: usize, dst: &mut BytesMut) {
        wire::put_varint(dst, body_len as u32);
        self.emit(dst);
    }
}

fn emit_str(sink: &mut impl Sink, id: u8, v: &Option<String>) {
    if let Some(s) = v {
        sink.bin(id, s.as_bytes());
    }
}

fn emit_user(sink: &mut impl Sink, props: &[(String, String)]) {
    for (k, v) in props {
        sink.pair(id::USER_PROPERTY, k, v);
    }
}

fn user(list: &mut Vec<(String, String)>, value: Value) -> Result<bool, DecodeError> {
    if let Value::Pair(k, v) = value {
        list.push((k, v));
    }
    Ok(true)
}

/// Extracts the payload of a `Value` whose variant `read_value` fixed from the identifier.
macro_rules! take {
    ($value:expr, $variant:ident) => {
        match $value {
            Value::$variant(v) => v,
            _ => return Err(unknown()),
        }
    };
}

/// CONNECT properties (§3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<u8>,
    pub request_problem_information: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

impl PropertySet for ConnectProperties {
    fn accept(&mut self, ident: u8, v: Value) -> Result<bool, DecodeError> {
        use id::*;
        match ident {
            SESSION_EXPIRY_INTERVAL => set(&mut self.session_expiry_interval, take!(v, U32)),
            RECEIVE_MAXIMUM => set(
                &mut self.receive_maximum,
                nonzero_u16(take!(v, U16), "receive maximum of 0")?,
            ),
            MAXIMUM_PACKET_SIZE => set(
                &mut self.maximum_packet_size,
                nonzero_u32(take!(v, U32), "maximum packet size of 0")?,
            ),
            TOPIC_ALIAS_MAXIMUM => set(&mut self.topic_alias_maximum, take!(v, U16)),
            REQUEST_RESPONSE_INFORMATION => set(
                &mut self.request_response_information,
                flag(take!(v, Byte), "request response information not 0 or 1")?,
            ),
            REQUEST_PROBLEM_INFORMATION => set(
                &mut self.request_problem_information,
                flag(take!(v, Byte), "request problem information not 0 or 1")?,
            ),
            USER_PROPERTY => user(&mut self.user_properties, v),
            AUTHENTICATION_METHOD => set(&mut self.authentication_method, take!(v, Str)),
            AUTHENTICATION_DATA => set(&mut self.authentication_data, take!(v, Bin)),
            _ => Ok(false),
        }
    }

    fn emit(&self, s: &mut impl Sink) {
        use id::*;
        if let Some(v) = self.session_expiry_interval {
            s.u32(SESSION_EXPIRY_INTERVAL, v);
        }
        emit_str(s, AUTHENTICATION_METHOD, &self.authentication_method);
        if let Some(v) = &self.authentication_data {
            s.bin(AUTHENTICATION_DATA, v);
        }
        if let Some(v) = self.request_problem_information {
            s.byte(REQUEST_PROBLEM_INFORMATION, v);
        }
        if let Some(v) = self.request_response_information {
            s.byte(REQUEST_RESPONSE_INFORMATION, v);
        }
        if let Some(v) = self.receive_maximum {
            s.u16(RECEIVE_MAXIMUM, v);
        }
        if let Some(v) = self.topic_alias_maximum {
            s.u16(TOPIC_ALIAS_MAXIMUM, v);
        }
        emit_user(s, &self.user_properties);
        if let Some(v) = self.maximum_packet_size {
            s.u32(MAXIMUM_PACKET_SIZE, v);
        }
    }
}

/// Will properties (§3.1.3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

impl PropertySet for WillProperties {
    fn accept(&mut self, ident: u8, v: Value) -> Result<bool, DecodeError> {
        use id::*;
        match ident {
            WILL_DELAY_INTERVAL => set(&mut self.will_delay_interval, take!(v, U32)),
            PAYLOAD_FORMAT_INDICATOR => set(
                &mut self.payload_format_indicator,
                flag(take!(v, Byte), "payload format indicator not 0 or 1")?,
            ),
            MESSAGE_EXPIRY_INTERVAL => set(&mut self.message_expiry_interval, take!(v, U32)),
            CONTENT_TYPE => set(&mut self.content_type, take!(v, Str)),
            RESPONSE_TOPIC => set(&mut self.response_topic, response_topic(take!(v, Str))?),
            CORRELATION_DATA => set(&mut self.correlation_data, take!(v, Bin)),
            USER_PROPERTY => user(&mut self.user_properties, v),
            _ => Ok(false),
        }
    }

    fn emit(&self, s: &mut impl Sink) {
        use id::*;
        if let Some(v) = self.payload_format_indicator {
            s.byte(PAYLOAD_FORMAT_INDICATOR, v);
        }
        if let Some(v) = self.message_expiry_interval {
            s.u32(MESSAGE_EXPIRY_INTERVAL, v);
        }
        emit_str(s, CONTENT_TYPE, &self.content_type);
        emit_str(s, RESPONSE_TOPIC, &self.response_topic);
        if let Some(v) = &self.correlation_data {
            s.bin(CORRELATION_DATA, v);
        }
        if let Some(v) = self.will_delay_interval {
            s.u32(WILL_DELAY_INTERVAL, v);
        }
        emit_user(s, &self.user_properties);
    }
}

/// A Response Topic is a topic name: no wildcards [MQTT-3.3.2-14].
fn response_topic(s: String) -> Result<String, DecodeError> {
    if s.contains(['+', '#']) {
        return Err(DecodeError::malformed(
            "[MQTT-3.3.2-14]",
            "response topic contains a wildcard character",
        ));
    }
    Ok(s)
}

/// CONNACK properties (§3.2.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifiers_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

impl PropertySet for ConnAckProperties {
    fn accept(&mut self, ident: u8, v: Value) -> Result<bool, DecodeError> {
        use id::*;
        match ident {
            SESSION_EXPIRY_INTERVAL => set(&mut self.session_expiry_interval, take!(v, U32)),
            RECEIVE_MAXIMUM => set(
                &mut self.receive_maximum,
                nonzero_u16(take!(v, U16), "receive maximum of 0")?,
            ),
            MAXIMUM_QOS => set(
                &mut self.maximum_qos,
                flag(take!(v, Byte), "maximum QoS not 0 or 1")?,
            ),
            RETAIN_AVAILABLE => set(
                &mut self.retain_available,
                flag(take!(v, Byte), "retain available not 0 or 1")?,
            ),
            MAXIMUM_PACKET_SIZE => set(
                &mut self.maximum_packet_size,
                nonzero_u32(take!(v, U32), "maximum packet size of 0")?,
            ),
            ASSIGNED_CLIENT_IDENTIFIER => set(&mut self.assigned_client_identifier, take!(v, Str)),
            TOPIC_ALIAS_MAXIMUM => set(&mut self.topic_alias_maximum, take!(v, U16)),
            REASON_STRING => set(&mut self.reason_string, take!(v, Str)),
            USER_PROPERTY => user(&mut self.user_properties, v),
            WILDCARD_SUBSCRIPTION_AVAILABLE => set(
                &mut self.wildcard_subscription_available,
                flag(take!(v, Byte), "wildcard subscription available not 0 or 1")?,
            ),
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => set(
                &mut self.subscription_identifiers_available,
                flag(
                    take!(v, Byte),
                    "subscription identifiers available not 0 or 1",
                )?,
            ),
            SHARED_SUBSCRIPTION_AVAILABLE => set(
                &mut self.shared_subscription_available,
                flag(take!(v, Byte), "shared subscription available not 0 or 1")?,
            ),
            SERVER_KEEP_ALIVE => set(&mut self.server_keep_alive, take!(v, U16)),
            RESPONSE_INFORMATION => set(&mut self.response_information, take!(v, Str)),
            SERVER_REFERENCE => set(&mut self.server_reference, take!(v, Str)),
            AUTHENTICATION_METHOD => set(&mut self.authentication_method, take!(v, Str)),
            AUTHENTICATION_DATA => set(&mut self.authentication_data, take!(v, Bin)),
            _ => Ok(false),
        }
    }

    fn emit(&self, s: &mut impl Sink) {
        use id::*;
        if let Some(v) = self.session_expiry_interval {
            s.u32(SESSION_EXPIRY_INTERVAL, v);
        }
        emit_str(
            s,
            ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        if let Some(v) = self.server_keep_alive {
            s.u16(SERVER_KEEP_ALIVE, v);
        }
        emit_str(s, AUTHENTICATION_METHOD, &self.authentication_method);
        if let Some(v) = &self.authentication_data {
            s.bin(AUTHENTICATION_DATA, v);
        }
        emit_str(s, RESPONSE_INFORMATION, &self.response_information);
        emit_str(s, SERVER_REFERENCE, &self.server_reference);
        emit_str(s, REASON_STRING, &self.reason_string);
        if let Some(v) = self.receive_maximum {
            s.u16(RECEIVE_MAXIMUM, v);
        }
        if let Some(v) = self.topic_alias_maximum {
            s.u16(TOPIC_ALIAS_MAXIMUM, v);
        }
        if let Some(v) = self.maximum_qos {
            s.byte(MAXIMUM_QOS, v);
        }
        if let Some(v) = self.retain_available {
            s.byte(RETAIN_AVAILABLE, v);
        }
        emit_user(s, &self.user_properties);
        if let Some(v) = self.maximum_packet_size {
            s.u32(MAXIMUM_PACKET_SIZE, v);
        }
        if let Some(v) = self.wildcard_subscription_available {
            s.byte(WILDCARD_SUBSCRIPTION_AVAILABLE, v);
        }
        if let Some(v) = self.subscription_identifiers_available {
            s.byte(SUBSCRIPTION_IDENTIFIER_AVAILABLE, v);
        }
        if let Some(v) = self.shared_subscription_available {
            s.byte(SHARED_SUBSCRIPTION_AVAILABLE, v);
        }
    }
}

/// PUBLISH properties (§3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<String>,
}

impl PropertySet for PublishProperties {
    fn accept(&mut self, ident: u8, v: Value) -> Result<bool, DecodeError> {
        use id::*;
        match ident {
            PAYLOAD_FORMAT_INDICATOR => set(
                &mut self.payload_format_indicator,
                flag(take!(v, Byte), "payload format indicator not 0 or 1")?,
            ),
            MESSAGE_EXPIRY_INTERVAL => set(&mut self.message_expiry_interval, take!(v, U32)),
            TOPIC_ALIAS => {
                let alias = take!(v, U16);
                if alias == 0 {
                    return Err(DecodeError::TopicAliasZero);
                }
                set(&mut self.topic_alias, alias)
            }
            RESPONSE_TOPIC => set(&mut self.response_topic, response_topic(take!(v, Str))?),
            CORRELATION_DATA => set(&mut self.correlation_data, take!(v, Bin)),
            USER_PROPERTY => user(&mut self.user_properties, v),
            SUBSCRIPTION_IDENTIFIER => {
                self.subscription_identifiers
                    .push(subscription_id(take!(v, Varint))?);
                Ok(true)
            }
            CONTENT_TYPE => set(&mut self.content_type, take!(v, Str)),
            _ => Ok(false),
        }
    }

    fn emit(&self, s: &mut impl Sink) {
        use id::*;
        if let Some(v) = self.payload_format_indicator {
            s.byte(PAYLOAD_FORMAT_INDICATOR, v);
        }
        if let Some(v) = self.message_expiry_interval {
            s.u32(MESSAGE_EXPIRY_INTERVAL, v);
        }
        emit_str(s, CONTENT_TYPE, &self.content_type);
        emit_str(s, RESPONSE_TOPIC, &self.response_topic);
        if let Some(v) = &self.correlation_data {
            s.bin(CORRELATION_DATA, v);
        }
        for &v in &self.subscription_identifiers {
            s.varint(SUBSCRIPTION_IDENTIFIER, v);
        }
        if let Some(v) = self.topic_alias {
            s.u16(TOPIC_ALIAS, v);
        }
        emit_user(s, &self.user_properties);
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: a Reason String and
/// User Properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
}

impl AckProperties {
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl PropertySet for AckProperties {
    fn accept(&mut self, ident: u8, v: Value) -> Result<bool, DecodeError> {
        match ident {
            id::REASON_STRING => set(&mut self.reason_string, take!(v, Str)),
            id::USER_PROPERTY => user(&mut self.user_properties, v),
            _ => Ok(false),
        }
    }

    fn emit(&self, s: &mut impl Sink) {
        emit_str(s, id::REASON_STRING, &self.reason_string);
        emit_user(s, &self.user_properties);
    }
}

/// SUBSCRIBE properties (§3.8.2.1): at most one Subscription Identifier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    pub subscription_identifier: Option<u32>,
    pub user_properties: Vec<(String, String)>,
}

impl PropertySet for SubscribeProperties {
    fn accept(&mut self, ident: u8, v: Value) -> Result<bool, DecodeError> {
        match ident {
            id::SUBSCRIPTION_IDENTIFIER => set(
                &mut self.subscription_identifier,
                subscription_id(take!(v, Varint))?,
            ),
            id::USER_PROPERTY => user(&mut self.user_properties, v),
            _ => Ok(false),
        }
    }

    fn emit(&self, s: &mut impl Sink) {
        if let Some(v) = self.subscription_identifier {
            s.varint(id::SUBSCRIPTION_IDENTIFIER, v);
        }
        emit_user(s, &self.user_properties);
    }
}

/// UNSUBSCRIBE properties (§3.10.2.1): User Properties only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    pub user_properties: Vec<(String, String)>,
}

impl PropertySet for UnsubscribeProperties {
    fn accept(&mut self, ident: u8, v: Value) -> Result<bool, DecodeError> {
        match ident {
            id::USER_PROPERTY => user(&mut self.user_properties, v),
            _ => Ok(false),
        }
    }

    fn emit(&self, s: &mut impl Sink) {
        emit_user(s, &self.user_properties);
    }
}

/// DISCONNECT properties (§3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub server_reference: Option<String>,
}

impl DisconnectProperties {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl PropertySet for DisconnectProperties {
    fn accept(&mut self, ident: u8, v: Value) -> Result<bool, DecodeError> {
        use id::*;
        match ident {
            SESSION_EXPIRY_INTERVAL => set(&mut self.session_expiry_interval, take!(v, U32)),
            REASON_STRING => set(&mut self.reason_string, take!(v, Str)),
            USER_PROPERTY => user(&mut self.user_properties, v),
            SERVER_REFERENCE => set(&mut self.server_reference, take!(v, Str)),
            _ => Ok(false),
        }
    }

    fn emit(&self, s: &mut impl Sink) {
        use id::*;
        if let Some(v) = self.session_expiry_interval {
            s.u32(SESSION_EXPIRY_INTERVAL, v);
        }
        emit_str(s, SERVER_REFERENCE, &self.server_reference);
        emit_str(s, REASON_STRING, &self.reason_string);
        emit_user(s, &self.user_properties);
    }
}

/// AUTH properties (§3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
}

impl AuthProperties {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl PropertySet for AuthProperties {
    fn accept(&mut self, ident: u8, v: Value) -> Result<bool, DecodeError> {
        use id::*;
        match ident {
            AUTHENTICATION_METHOD => set(&mut self.authentication_method, take!(v, Str)),
            AUTHENTICATION_DATA => set(&mut self.authentication_data, take!(v, Bin)),
            REASON_STRING => set(&mut self.reason_string, take!(v, Str)),
            USER_PROPERTY => user(&mut self.user_properties, v),
            _ => Ok(false),
        }
    }

    fn emit(&self, s: &mut impl Sink) {
        use id::*;
        emit_str(s, AUTHENTICATION_METHOD, &self.authentication_method);
        if let Some(v) = &self.authentication_data {
            s.bin(AUTHENTICATION_DATA, v);
        }
        emit_str(s, REASON_STRING, &self.reason_string);
        emit_user(s, &self.user_properties);
    }
}
