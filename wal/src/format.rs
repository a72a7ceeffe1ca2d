//! The on-disk byte layout, and the only code that encodes or decodes it.
//!
//! A log is a directory of segment files named `<segment_seq as 16 lower-case hex digits>.wal`,
//! e.g. `000000000000002a.wal`. Segment sequence numbers only grow; a name is never reused.
//! Files with other names are ignored, except spares (below). All integers are little-endian.
//!
//! # Spare files and recycled segments
//!
//! A segment that a checkpoint made obsolete may be renamed to `<its segment_seq>.spare`
//! instead of being deleted, and a later rotation renames a spare to the new segment's name
//! after overwriting its header. Overwriting blocks a file already owns makes `fdatasync`
//! much cheaper than extending a file, which must also commit the file system's metadata.
//! A recycled segment therefore holds the old segment's bytes after its newest record. They
//! can never be mistaken for records: every frame's crc mixes in the segment sequence
//! number, and the old frames were written under another one. A sealed (non-newest) segment
//! is cut to the end of its last record before the next segment is created, so every byte of
//! it still verifies; only the newest segment can have such a tail, and recovery cuts it off
//! like a torn write. Recovery ignores spare files.
//!
//! # Segment header (32 bytes, at offset 0)
//!
//! ```text
//! offset size field
//!      0    8 magic          b"KEELMQWL"
//!      8    2 version        1
//!     10    2 reserved       0
//!     12    8 segment_seq    must equal the number in the file name
//!     20    8 first_seq      sequence number the first record of this segment carries
//!     28    4 header_crc     crc32 of bytes 0..28
//! ```
//!
//! # Record frame (28-byte header + payload), packed back to back after the segment header
//!
//! ```text
//! offset size field
//!      0    4 crc            crc32 of: segment_seq (8 bytes LE) ++ bytes 4..28 ++ payload
//!      4    4 payload_len    at most MAX_PAYLOAD_LEN
//!      8    8 seq            record sequence number; first_seq, first_seq+1, ... without gaps
//!     16    8 durable_seq    highest seq known synced when this record was written (< seq)
//!     24    1 record_type    opaque to the WAL
//!     25    1 flags          0 (reserved)
//!     26    2 reserved       0
//!     28    n payload
//! ```
//!
//! Why these fields:
//! - The crc mixes in the segment sequence number, so a frame copied from (or left behind by) a
//!   different segment file never verifies, even if the bytes are otherwise intact.
//! - The crc covers the length and sequence number, so a flipped length cannot make recovery
//!   read a different frame boundary as valid.
//! - `durable_seq` lets recovery tell a torn tail from corruption in the newest segment: if a
//!   verified frame after a bad region says the record at that region had already been synced,
//!   the bad region held acknowledged data and recovery must stop with `Corruption`; otherwise
//!   the region was never acknowledged (a write torn by the crash, pages persisted out of
//!   order) and is truncated.

use crc32fast::Hasher;

/// File-name extension of segment files.
pub const SEGMENT_EXTENSION: &str = "wal";
/// File-name extension of spare files: checkpointed segments kept to be reused as new
/// segments (see the module documentation).
pub const SPARE_EXTENSION: &str = "spare";
/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KEELMQWL";
/// The only format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Length of a record frame header.
pub const RECORD_HEADER_LEN: usize = 28;
/// Largest payload the format admits. A length field above this is treated as damage, which
/// keeps a corrupt length from steering the reader into a huge allocation.
pub const MAX_PAYLOAD_LEN: u32 = 256 * 1024 * 1024;
/// Largest sequence number the format admits (segment or record). Far beyond any real log
/// (a million records a second for 100,000 years), and it keeps `seq + 1` from overflowing
/// on crafted input.
pub const MAX_SEQ: u64 = 1 << 62;

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Segment sequence number (also in the file name).
    pub segment_seq: u64,
    /// Sequence number of the segment's first record.
    pub first_seq: u64,
}

/// Appends the 32-byte header for `header` to `out`.
pub fn encode_segment_header(header: SegmentHeader, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&header.segment_seq.to_le_bytes());
    out.extend_from_slice(&header.first_seq.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decodes and verifies a segment header from the first bytes of a segment.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, String> {
    let Some(h) = bytes.get(..SEGMENT_HEADER_LEN) else {
        return Err(format!(
            "segment header is truncated ({} of {SEGMENT_HEADER_LEN} bytes)",
            bytes.len()
        ));
    };
    if h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".to_string());
    }
    let stored_crc = read_u32(h, 28);
    if crc32fast::hash(&h[..28]) != stored_crc {
        return Err("segment header checksum mismatch".to_string());
    }
    let version = read_u16(h, 8);
    if version != FORMAT_VERSION {
        return Err(format!("unsupported segment format version {version}"));
    }
    if read_u16(h, 10) != 0 {
        return Err("segment header reserved field is not zero".to_string());
    }
    let header = SegmentHeader {
        segment_seq: read_u64(h, 12),
        first_seq: read_u64(h, 20),
    };
    if header.first_seq == 0 || header.first_seq > MAX_SEQ || header.segment_seq > MAX_SEQ {
        return Err("segment header sequence numbers are out of range".to_string());
    }
    Ok(header)
}

/// The fields of one record frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// Record sequence number.
    pub seq: u64,
    /// Highest sequence number known durable when the record was written.
    pub durable_seq: u64,
    /// Caller-defined record type.
    pub record_type: u8,
}

/// Appends one record frame to `out`. `segment_seq` is the segment the frame will live in.
pub fn encode_record(segment_seq: u64, meta: FrameMeta, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_LEN as usize);
    debug_assert!(meta.durable_seq < meta.seq);
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta.seq.to_le_bytes());
    out.extend_from_slice(&meta.durable_seq.to_le_bytes());
    out.push(meta.record_type);
    out.push(0);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = frame_crc(segment_seq, &out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Encoded length of a frame with a payload of `payload_len` bytes.
pub fn frame_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + payload_len
}

/// crc32 of `segment_seq (8 bytes LE) ++ rest`, where `rest` is a frame's bytes 4.. (header
/// fields, then payload: contiguous in a segment, so one pass of the SIMD crc covers them).
fn frame_crc(segment_seq: u64, rest: &[u8]) -> u32 {
    let mut hasher = Hasher::new_with_initial(crc32fast::hash(&segment_seq.to_le_bytes()));
    hasher.update(rest);
    hasher.finalize()
}

/// A frame that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Offset of the frame inside the segment.
    pub offset: u64,
    /// Header fields.
    pub meta: FrameMeta,
    /// The payload bytes.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Total encoded length of this frame.
    pub fn len(&self) -> usize {
        frame_len(self.payload.len())
    }

    /// Never true: a frame always has a header. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Why a frame did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The segment ends inside the frame (header or payload): the shape of a torn write.
    Truncated,
    /// The frame is complete but fails a check.
    Invalid(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => f.write_str("segment ends inside a record frame"),
            FrameError::Invalid(reason) => f.write_str(reason),
        }
    }
}

/// Decodes and verifies the frame starting at `offset` of a segment whose sequence number is
/// `segment_seq`. Never panics, whatever the bytes.
pub fn decode_frame(
    segment_seq: u64,
    bytes: &[u8],
    offset: usize,
) -> Result<Frame<'_>, FrameError> {
    let Some(rest) = bytes.get(offset..) else {
        return Err(FrameError::Truncated);
    };
    let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
        return Err(FrameError::Truncated);
    };
    let payload_len = read_u32(header, 4);
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(FrameError::Invalid(format!(
            "payload length {payload_len} exceeds the format limit"
        )));
    }
    let Some(payload) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload_len as usize)
    else {
        return Err(FrameError::Truncated);
    };
    let stored_crc = read_u32(header, 0);
    let frame_end = RECORD_HEADER_LEN + payload.len();
    if frame_crc(segment_seq, &rest[4..frame_end]) != stored_crc {
        return Err(FrameError::Invalid("record checksum mismatch".to_string()));
    }
    if header[25] != 0 || read_u16(header, 26) != 0 {
        return Err(FrameError::Invalid(
            "record reserved bits are set".to_string(),
        ));
    }
    let meta = FrameMeta {
        seq: read_u64(header, 8),
        durable_seq: read_u64(header, 16),
        record_type: header[24],
    };
    if meta.seq > MAX_SEQ {
        return Err(FrameError::Invalid(format!(
            "record sequence {} is out of range",
            meta.seq
        )));
    }
    if meta.durable_seq >= meta.seq {
        return Err(FrameError::Invalid(format!(
            "record claims durable_seq {} not below its own seq {}",
            meta.durable_seq, meta.seq
        )));
    }
    Ok(Frame {
        offset: offset as u64,
        meta,
        payload,
    })
}

/// Finds the first frame at or after `from` that verifies and whose sequence number is above
/// `min_seq_exclusive`, trying every byte offset. Used only after a bad region: to decide
/// whether it is a torn tail and, in skip-corrupt mode, where to resume. Cheap structural
/// checks run before the checksum so scanning garbage or zeroes stays fast.
pub fn find_next_frame(
    segment_seq: u64,
    bytes: &[u8],
    from: usize,
    min_seq_exclusive: u64,
) -> Option<Frame<'_>> {
    find_next_frame_below(segment_seq, bytes, from, min_seq_exclusive, MAX_SEQ)
}

/// [`find_next_frame`] that also skips frames whose sequence number is above
/// `max_seq_inclusive`.
pub fn find_next_frame_below(
    segment_seq: u64,
    bytes: &[u8],
    from: usize,
    min_seq_exclusive: u64,
    max_seq_inclusive: u64,
) -> Option<Frame<'_>> {
    let max_seq = max_seq_inclusive.min(MAX_SEQ);
    let last_start = bytes.len().checked_sub(RECORD_HEADER_LEN)?;
    let mut offset = from;
    while offset <= last_start {
        let header = &bytes[offset..offset + RECORD_HEADER_LEN];
        let payload_len = read_u32(header, 4) as usize;
        let plausible = header[25] == 0
            && header[26] == 0
            && header[27] == 0
            && read_u64(header, 8) > min_seq_exclusive
            && read_u64(header, 8) <= max_seq
            && read_u64(header, 16) < read_u64(header, 8)
            && payload_len <= bytes.len() - offset - RECORD_HEADER_LEN;
        if plausible {
            if let Ok(frame) = decode_frame(segment_seq, bytes, offset) {
                return Some(frame);
            }
        }
        offset += 1;
    }
    None
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_every_single_bit_flip() {
        let header = SegmentHeader {
            segment_seq: 7,
            first_seq: 1234,
        };
        let mut buf = Vec::new();
        encode_segment_header(header, &mut buf);
        assert_eq!(buf.len(), SEGMENT_HEADER_LEN);
        assert_eq!(decode_segment_header(&buf), Ok(header));
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&bad).is_err(), "bit {bit}");
        }
        assert!(decode_segment_header(&buf[..31]).is_err());
    }

    #[test]
    fn frame_round_trips_and_rejects_every_single_bit_flip() {
        let meta = FrameMeta {
            seq: 42,
            durable_seq: 40,
            record_type: 3,
        };
        let mut buf = vec![0xAA; 5];
        encode_record(9, meta, b"hello wal", &mut buf);
        let frame = decode_frame(9, &buf, 5).unwrap();
        assert_eq!(frame.meta, meta);
        assert_eq!(frame.payload, b"hello wal");
        assert_eq!(frame.len(), buf.len() - 5);
        for bit in 40..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_frame(9, &bad, 5).is_err(), "bit {bit}");
        }
        for cut in 5..buf.len() {
            assert_eq!(decode_frame(9, &buf[..cut], 5), Err(FrameError::Truncated));
        }
    }

    #[test]
    fn frame_crc_is_the_crc32_of_segment_number_header_fields_and_payload() {
        // The layout documented above, computed the plain way: the one-pass computation must
        // never change what is on disk.
        let meta = FrameMeta {
            seq: 0x0102_0304_0506_0708,
            durable_seq: 77,
            record_type: 9,
        };
        for len in [0usize, 1, 7, 63, 64, 65, 128, 1000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut buf = Vec::new();
            encode_record(0xDEAD_BEEF, meta, &payload, &mut buf);
            let mut plain = 0xDEAD_BEEFu64.to_le_bytes().to_vec();
            plain.extend_from_slice(&buf[4..]);
            assert_eq!(read_u32(&buf, 0), crc32fast::hash(&plain), "payload {len}");
        }
    }

    #[test]
    fn frame_from_another_segment_never_verifies() {
        let meta = FrameMeta {
            seq: 1,
            durable_seq: 0,
            record_type: 0,
        };
        let mut buf = Vec::new();
        encode_record(1, meta, b"x", &mut buf);
        assert!(matches!(
            decode_frame(2, &buf, 0),
            Err(FrameError::Invalid(_))
        ));
        assert!(find_next_frame(2, &buf, 0, 0).is_none());
        assert_eq!(find_next_frame(1, &buf, 0, 0).map(|f| f.offset), Some(0));
    }

    #[test]
    fn find_next_frame_skips_garbage() {
        let mut buf = vec![0u8; 100];
        buf.extend_from_slice(&[0xFF; 13]);
        let meta = FrameMeta {
            seq: 5,
            durable_seq: 4,
            record_type: 1,
        };
        encode_record(3, meta, b"payload", &mut buf);
        let frame = find_next_frame(3, &buf, 0, 0).unwrap();
        assert_eq!(frame.offset, 113);
        assert!(find_next_frame(3, &buf, 0, 5).is_none());
    }
}
