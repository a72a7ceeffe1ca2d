//! The MQTT codec: bytes ⇄ [`Packet`] for MQTT 3.1 (`MQIsdp`, level 3), 3.1.1 (level 4) and
//! 5.0 (level 5). Pure and synchronous; no I/O.
//!
//! # Decoding
//! [`Decoder::decode`] is incremental: it looks at the fixed header in a `BytesMut` and returns
//! `Ok(None)` until a whole packet is buffered. The packet type, its flags and the announced size
//! are checked from the fixed header alone, so a packet above the maximum size is refused before
//! its body is read. A whole frame is then split off the buffer and frozen; payloads and topics
//! are slices of it (zero-copy). Every error names the clause it breaks and maps to a reason code
//! ([`DecodeError::reason_code`]).
//!
//! # Encoding
//! [`encode`] writes a packet for a given protocol version; [`encoded_len`] computes its size
//! without writing, so the broker can honour a client's Maximum Packet Size. Optional v5 fields
//! are left out where the spec allows (a successful PUBACK without properties is 4 bytes), but a
//! reason code is always followed by its property length, which some clients require.

mod error;
mod packet;
mod properties;
pub mod proxy;
mod reason;
pub mod topic;
mod wire;

pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};
pub use reason::ReasonCode;
pub use topic::ByteStr;
pub use wire::VARINT_MAX;

use bytes::{BufMut, BytesMut};

use wire::Reader;

/// The largest packet the protocol can express: a 4-byte remaining length of 268,435,455 plus
/// the 5-byte fixed header.
pub const MAX_PACKET_SIZE_PROTOCOL: u32 = 268_435_460;

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The packet type number of the fixed header (1 to 15).
    pub fn packet_type(&self) -> u8 {
        match self {
            Packet::Connect(_) => 1,
            Packet::ConnAck(_) => 2,
            Packet::Publish(_) => 3,
            Packet::PubAck(_) => 4,
            Packet::PubRec(_) => 5,
            Packet::PubRel(_) => 6,
            Packet::PubComp(_) => 7,
            Packet::Subscribe(_) => 8,
            Packet::SubAck(_) => 9,
            Packet::Unsubscribe(_) => 10,
            Packet::UnsubAck(_) => 11,
            Packet::PingReq => 12,
            Packet::PingResp => 13,
            Packet::Disconnect(_) => 14,
            Packet::Auth(_) => 15,
        }
    }

    /// The packet's name as the specification writes it.
    pub fn name(&self) -> &'static str {
        TYPE_NAMES[self.packet_type() as usize]
    }
}

const TYPE_NAMES: [&str; 16] = [
    "Reserved",
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "PUBACK",
    "PUBREC",
    "PUBREL",
    "PUBCOMP",
    "SUBSCRIBE",
    "SUBACK",
    "UNSUBSCRIBE",
    "UNSUBACK",
    "PINGREQ",
    "PINGRESP",
    "DISCONNECT",
    "AUTH",
];

/// Checks the packet type and the flag bits of the first byte of the fixed header [MQTT-2.1.3-1].
fn check_first_byte(byte: u8, version: Option<ProtocolVersion>) -> Result<(), DecodeError> {
    let packet_type = byte >> 4;
    let flags = byte & 0x0F;
    let expected = match packet_type {
        0 => return Err(DecodeError::malformed("§2.1.2", "reserved packet type 0")),
        3 => {
            if flags & 0x06 == 0x06 {
                return Err(DecodeError::malformed(
                    "[MQTT-3.3.1-4]",
                    "PUBLISH with QoS 3",
                ));
            }
            return Ok(());
        }
        6 | 8 | 10 => 0x02,
        15 if version.is_some_and(|v| !v.is_v5()) => {
            return Err(DecodeError::malformed(
                "§2.1.2",
                "AUTH does not exist before MQTT 5",
            ))
        }
        _ => 0x00,
    };
    if flags != expected {
        return Err(DecodeError::malformed(
            "[MQTT-2.1.3-1]",
            "reserved fixed header flags are wrong",
        ));
    }
    Ok(())
}

/// The most [`Decoder::decode`] reserves ahead of the bytes that have arrived.
pub const DECODE_RESERVE_STEP: usize = 64 * 1024;

/// An incremental packet decoder for one connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
}

impl Decoder {
    /// A decoder for the server side of a connection: the protocol version is learnt from the
    /// CONNECT packet, which must come first [MQTT-3.1.0-1].
    pub fn new(max_packet_size: u32) -> Self {
        Decoder {
            version: None,
            max_packet_size,
        }
    }

    /// A decoder for a connection whose version is already known (the client side).
    pub fn with_version(version: ProtocolVersion, max_packet_size: u32) -> Self {
        Decoder {
            version: Some(version),
            max_packet_size,
        }
    }

    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Decodes one packet from the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed, having reserved room for at most
    /// [`DECODE_RESERVE_STEP`] more bytes of the frame once its size is known: the buffer grows
    /// with the bytes that really arrive, so a client that announces a large packet and sends
    /// it a byte at a time pins no more than that. On `Err` the connection must be closed: the
    /// stream position is lost.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        check_first_byte(first, self.version)?;
        let Some((remaining, len_len)) = wire::parse_varint(&buf[1..])? else {
            return Ok(None);
        };
        let total = 1 + len_len as u64 + u64::from(remaining);
        if total > u64::from(self.max_packet_size) {
            return Err(DecodeError::PacketTooLarge {
                size: total,
                max: self.max_packet_size,
            });
        }
        let total = total as usize;
        if buf.len() < total {
            buf.reserve((total - buf.len()).min(DECODE_RESERVE_STEP));
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        let _ = frame.split_to(1 + len_len);
        let packet = decode_body(first, Reader::new(frame), self.version)?;
        if let Packet::Connect(c) = &packet {
            self.version = Some(c.protocol);
        }
        Ok(Some(packet))
    }
}

/// Decodes the body of one packet whose first fixed-header byte is `first`.
fn decode_body(
    first: u8,
    r: Reader,
    version: Option<ProtocolVersion>,
) -> Result<Packet, DecodeError> {
    use packet::*;
    let packet_type = first >> 4;
    if packet_type == 1 {
        return Ok(Packet::Connect(Box::new(decode_connect(r)?)));
    }
    let Some(v) = version else {
        return Err(DecodeError::protocol(
            "[MQTT-3.1.0-1]",
            "the first packet must be CONNECT",
        ));
    };
    Ok(match packet_type {
        2 => Packet::ConnAck(decode_connack(r, v)?),
        3 => Packet::Publish(decode_publish(r, first & 0x0F, v)?),
        4 => Packet::PubAck(decode_puback(r, v, reason::allowed::PUBACK)?),
        5 => Packet::PubRec(decode_puback(r, v, reason::allowed::PUBACK)?),
        6 => Packet::PubRel(decode_puback(r, v, reason::allowed::PUBREL)?),
        7 => Packet::PubComp(decode_puback(r, v, reason::allowed::PUBREL)?),
        8 => Packet::Subscribe(decode_subscribe(r, v)?),
        9 => Packet::SubAck(decode_suback(r, v)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(r, v)?),
        11 => Packet::UnsubAck(decode_unsuback(r, v)?),
        12 | 13 => {
            if !r.is_empty() {
                return Err(DecodeError::malformed(
                    "§3.12",
                    "PINGREQ/PINGRESP with a body",
                ));
            }
            if packet_type == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => Packet::Disconnect(decode_disconnect(r, v)?),
        15 if v.is_v5() => Packet::Auth(decode_auth(r)?),
        _ => {
            return Err(DecodeError::malformed(
                "§2.1.2",
                "packet type not valid in this version",
            ))
        }
    })
}

/// Decodes exactly one whole packet from `frame` (fixed header included), as the decoder would.
pub fn decode_frame(
    frame: &[u8],
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let mut decoder = Decoder {
        version,
        max_packet_size,
    };
    let mut buf = BytesMut::from(frame);
    decoder.decode(&mut buf)
}

fn body_len(packet: &Packet, v: ProtocolVersion) -> Result<usize, EncodeError> {
    let len = match packet {
        Packet::Connect(c) => c.body_len()?,
        Packet::ConnAck(c) => c.body_len(v)?,
        Packet::Publish(p) => p.body_len(v)?,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            if a.packet_id == 0 {
                return Err(EncodeError::OutOfRange("packet identifier 0"));
            }
            a.body_len(v)?
        }
        Packet::Subscribe(s) => s.body_len(v)?,
        Packet::SubAck(s) => s.body_len(v)?,
        Packet::Unsubscribe(u) => u.body_len(v)?,
        Packet::UnsubAck(u) => u.body_len(v)?,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => d.body_len(v)?,
        Packet::Auth(a) => {
            if !v.is_v5() {
                return Err(EncodeError::NotInVersion("AUTH"));
            }
            a.body_len()?
        }
    };
    if len > VARINT_MAX as usize {
        return Err(EncodeError::TooLarge(len));
    }
    Ok(len)
}

/// The number of bytes [`encode`] would write for `packet`.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let body = body_len(packet, version)?;
    Ok(1 + wire::varint_len(body as u32) + body)
}

/// Appends the encoding of `packet` in protocol `version` to `dst` and returns its length.
/// A CONNECT is always encoded in its own `protocol` version.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    dst: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let v = match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    };
    let body = body_len(packet, v)?;
    let first = (packet.packet_type() << 4)
        | match packet {
            Packet::Publish(p) => p.flags(),
            Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0x02,
            _ => 0,
        };
    let total = 1 + wire::varint_len(body as u32) + body;
    dst.reserve(total);
    dst.put_u8(first);
    wire::put_varint(dst, body as u32);
    let start = dst.len();
    match packet {
        Packet::Connect(c) => c.write_body(dst),
        Packet::ConnAck(c) => c.write_body(v, dst),
        Packet::Publish(p) => p.write_body(v, dst),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.write_body(v, dst)
        }
        Packet::Subscribe(s) => s.write_body(v, dst),
        Packet::SubAck(s) => s.write_body(v, dst),
        Packet::Unsubscribe(u) => u.write_body(v, dst),
        Packet::UnsubAck(u) => u.write_body(v, dst),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => d.write_body(v, dst),
        Packet::Auth(a) => a.write_body(dst),
    }
    debug_assert_eq!(dst.len() - start, body, "sized and written lengths differ");
    Ok(total)
}
