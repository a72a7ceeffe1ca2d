//! Primitive data types of §1.5: two- and four-byte integers, Variable Byte Integers, UTF-8
//! strings, binary data and string pairs, read from a bounded cursor and written to a `BytesMut`.
//!
//! The reader never reads past the end of the packet body it was given: a field that would is
//! reported as malformed (a length that overruns the remaining length), never as "need more
//! bytes", because the whole body is already buffered when it runs.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::topic::ByteStr;

/// The largest value a Variable Byte Integer can hold (§1.5.5).
pub const VARINT_MAX: u32 = 268_435_455;

const TRUNCATED: DecodeError =
    DecodeError::malformed("[MQTT-1.5]", "a field runs past the end of the packet");

/// A cursor over one packet body. Slices of the body are zero-copy `Bytes`.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u32())
    }

    /// A Variable Byte Integer: at most four bytes, minimal encoding [MQTT-1.5.5-1].
    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        match parse_varint(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(TRUNCATED),
        }
    }

    pub fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(len))
    }

    /// Everything left: used for PUBLISH payloads.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary Data: a two-byte length and that many bytes (§1.5.6).
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.bytes(len)
    }

    /// A UTF-8 Encoded String, validated [MQTT-1.5.4-1] [MQTT-1.5.4-2], zero-copy.
    pub fn byte_str(&mut self) -> Result<ByteStr, DecodeError> {
        let raw = self.binary()?;
        ByteStr::from_utf8(raw)
    }

    pub fn string(&mut self) -> Result<String, DecodeError> {
        Ok(self.byte_str()?.as_str().to_owned())
    }

    /// Takes the next `len` bytes as a reader of their own (a property block).
    pub fn sub_reader(&mut self, len: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.bytes(len)?))
    }
}

/// Parses a Variable Byte Integer at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` ends before the integer does (and it may still be valid),
/// `Ok(Some((value, encoded_len)))` when complete.
pub(crate) fn parse_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A trailing zero byte after a continuation bit means the same value fits in fewer
            // bytes: not the minimal encoding.
            if i > 0 && byte == 0 {
                return Err(DecodeError::malformed(
                    "[MQTT-1.5.5-1]",
                    "variable byte integer not in its minimal encoding",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::malformed(
        "[MQTT-1.5.5-1]",
        "variable byte integer longer than four bytes",
    ))
}

/// How many bytes the Variable Byte Integer encoding of `value` takes.
pub(crate) fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(dst: &mut BytesMut, mut value: u32) {
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        dst.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

pub(crate) fn check_field(len: usize, what: &'static str) -> Result<(), EncodeError> {
    if len > u16::MAX as usize {
        Err(EncodeError::FieldTooLong(what))
    } else {
        Ok(())
    }
}

/// Writes a two-byte length prefix and the bytes. The caller has checked the length with
/// [`check_field`] while sizing the packet.
pub(crate) fn put_binary(dst: &mut BytesMut, data: &[u8]) {
    dst.put_u16(data.len() as u16);
    dst.put_slice(data);
}
