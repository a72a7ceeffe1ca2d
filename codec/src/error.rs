//! Decode and encode errors.
//!
//! Every rejection names the clause of the specification it breaks (OASIS MQTT 5.0 numbering; the
//! 3.1.1 clauses say the same thing under other numbers) and maps to the reason code the broker
//! sends back: 0x81 Malformed Packet, 0x82 Protocol Error, 0x84 Unsupported Protocol Version,
//! 0x94 Topic Alias Invalid, 0x95 Packet Too Large. Errors are `Copy + PartialEq` so that tests can
//! compare them with `assert_eq!`.

use super::reason::ReasonCode;

/// Why a byte sequence is not a valid MQTT packet.
///
/// "Need more bytes" is not an error: [`super::Decoder::decode`] returns `Ok(None)` for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The fixed header announces a packet larger than the configured maximum. Detected from the
    /// fixed header alone, before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: u64, max: u32 },
    /// CONNECT names a protocol or level this broker does not speak. `level` is 0 when the
    /// protocol name itself is unknown.
    #[error("unsupported protocol (name {name_ok}, level {level}) [MQTT-3.1.2-1/2]")]
    UnsupportedProtocol { name_ok: bool, level: u8 },
    /// The packet is malformed: the bytes break the grammar of the specification.
    #[error("malformed packet: {what} {clause}")]
    Malformed {
        clause: &'static str,
        what: &'static str,
    },
    /// The packet parses but breaks a rule of the protocol.
    #[error("protocol error: {what} {clause}")]
    Protocol {
        clause: &'static str,
        what: &'static str,
    },
    /// A Topic Alias of 0 [MQTT-3.3.2-8].
    #[error("topic alias 0 is not permitted [MQTT-3.3.2-8]")]
    TopicAliasZero,
}

impl DecodeError {
    pub(crate) const fn malformed(clause: &'static str, what: &'static str) -> Self {
        DecodeError::Malformed { clause, what }
    }

    pub(crate) const fn protocol(clause: &'static str, what: &'static str) -> Self {
        DecodeError::Protocol { clause, what }
    }

    /// The reason code a v5 peer is sent in CONNACK or DISCONNECT for this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::Malformed { .. } => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol { .. } => ReasonCode::PROTOCOL_ERROR,
            DecodeError::TopicAliasZero => ReasonCode::TOPIC_ALIAS_INVALID,
        }
    }

    /// The specification clause this error breaks, e.g. `"[MQTT-3.3.2-2]"`.
    pub fn clause(&self) -> &'static str {
        match self {
            DecodeError::PacketTooLarge { .. } => "[MQTT-3.1.2-24]",
            DecodeError::UnsupportedProtocol { name_ok: false, .. } => "[MQTT-3.1.2-1]",
            DecodeError::UnsupportedProtocol { name_ok: true, .. } => "[MQTT-3.1.2-2]",
            DecodeError::Malformed { clause, .. } | DecodeError::Protocol { clause, .. } => clause,
            DecodeError::TopicAliasZero => "[MQTT-3.3.2-8]",
        }
    }
}

/// Why a packet value cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The body exceeds the largest remaining length the fixed header can express (268,435,455).
    #[error("packet body of {0} bytes exceeds the MQTT maximum of 268435455")]
    TooLarge(usize),
    /// A string or binary field is longer than its 16-bit length prefix allows.
    #[error("{0} is longer than 65535 bytes")]
    FieldTooLong(&'static str),
    /// The packet or field does not exist in the protocol version being encoded.
    #[error("{0} cannot be encoded in this protocol version")]
    NotInVersion(&'static str),
    /// A value is outside its allowed range (e.g. a subscription identifier above 268,435,455).
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
}
