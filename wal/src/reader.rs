//! Reading records back: the iterator returned by [`crate::Wal::read_from`].

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::fs::{read_all, Fs};
use crate::options::RecoveryMode;
use crate::segment::SegmentInfo;

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number assigned at append time.
    pub seq: u64,
    /// The caller's record type.
    pub record_type: u8,
    /// The payload, verified by its checksum.
    pub payload: Vec<u8>,
    /// The segment the record was read from (its number, as in the file name).
    pub segment_seq: u64,
    /// Offset of the record's frame inside that segment.
    pub offset: u64,
}

/// Iterates over records in sequence order, one segment in memory at a time. Every frame is
/// verified again as it is read. Yields an error (and then ends) on a verification failure,
/// except under [`RecoveryMode::SkipCorrupt`], which skips bad regions.
pub struct WalReader {
    fs: Arc<dyn Fs>,
    mode: RecoveryMode,
    segments: std::vec::IntoIter<SegmentInfo>,
    from_seq: u64,
    /// Last sequence number to return: what was completely written when the reader was made.
    end_seq: u64,
    current: Option<Loaded>,
    expected: u64,
    done: bool,
}

struct Loaded {
    info: SegmentInfo,
    bytes: Vec<u8>,
    offset: usize,
}

impl WalReader {
    pub(crate) fn new(
        fs: Arc<dyn Fs>,
        mode: RecoveryMode,
        segments: Vec<SegmentInfo>,
        from_seq: u64,
        end_seq: u64,
    ) -> Result<WalReader> {
        let first_available = segments.first().map_or(end_seq + 1, |s| s.first_seq);
        if from_seq < first_available && from_seq <= end_seq && mode != RecoveryMode::SkipCorrupt {
            return Err(Error::Truncated {
                requested: from_seq,
                first_available,
            });
        }
        // Skip segments that end before `from_seq`: the next segment's first_seq tells.
        let mut start = 0;
        while start + 1 < segments.len() && segments[start + 1].first_seq <= from_seq {
            start += 1;
        }
        let segments: Vec<SegmentInfo> = segments.into_iter().skip(start).collect();
        Ok(WalReader {
            fs,
            mode,
            expected: segments.first().map_or(0, |s| s.first_seq),
            segments: segments.into_iter(),
            from_seq,
            end_seq,
            current: None,
            done: false,
        })
    }

    fn fail(&mut self, err: Error) -> Option<Result<Record>> {
        self.done = true;
        Some(Err(err))
    }

    fn load_next(&mut self) -> Result<bool> {
        let Some(info) = self.segments.next() else {
            return Ok(false);
        };
        let file = self
            .fs
            .open(&info.path)
            .map_err(|e| Error::io("open", &info.path, e))?;
        let bytes = read_all(file.as_ref()).map_err(|e| Error::io("read", &info.path, e))?;
        let header = format::decode_segment_header(&bytes)
            .map_err(|reason| Error::corruption(&info.path, 0, reason))?;
        if header.segment_seq != info.segment_seq || header.first_seq != info.first_seq {
            return Err(Error::corruption(
                &info.path,
                0,
                "segment header changed since recovery",
            ));
        }
        if self.mode == RecoveryMode::SkipCorrupt {
            self.expected = self.expected.max(info.first_seq);
        } else if info.first_seq != self.expected {
            return Err(Error::corruption(
                &info.path,
                0,
                format!(
                    "segment starts at {} but {} was expected",
                    info.first_seq, self.expected
                ),
            ));
        }
        self.current = Some(Loaded {
            info,
            bytes,
            offset: SEGMENT_HEADER_LEN,
        });
        Ok(true)
    }
}

impl Iterator for WalReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if self.done || self.expected > self.end_seq {
                self.done = true;
                return None;
            }
            let Some(loaded) = &mut self.current else {
                match self.load_next() {
                    Ok(true) => continue,
                    Ok(false) => {
                        self.done = true;
                        return None;
                    }
                    Err(err) => return self.fail(err),
                }
            };
            if loaded.offset >= loaded.bytes.len() {
                self.current = None;
                continue;
            }
            let segment_seq = loaded.info.segment_seq;
            let failure = match format::decode_frame(segment_seq, &loaded.bytes, loaded.offset) {
                Ok(frame)
                    if frame.meta.seq == self.expected
                        || (self.mode == RecoveryMode::SkipCorrupt
                            && frame.meta.seq > self.expected) =>
                {
                    let record = Record {
                        seq: frame.meta.seq,
                        record_type: frame.meta.record_type,
                        payload: frame.payload.to_vec(),
                        segment_seq,
                        offset: frame.offset,
                    };
                    loaded.offset += frame.len();
                    self.expected = frame.meta.seq + 1;
                    if record.seq > self.end_seq {
                        self.done = true;
                        return None;
                    }
                    if record.seq < self.from_seq {
                        continue;
                    }
                    return Some(Ok(record));
                }
                Ok(frame) => format!(
                    "expected sequence {}, found {}",
                    self.expected, frame.meta.seq
                ),
                Err(e) => e.to_string(),
            };
            if self.mode != RecoveryMode::SkipCorrupt {
                let err = Error::corruption(&loaded.info.path, loaded.offset as u64, failure);
                return self.fail(err);
            }
            let from = loaded.offset + 1;
            let min = self.expected.saturating_sub(1);
            match format::find_next_frame(segment_seq, &loaded.bytes, from, min) {
                Some(frame) => loaded.offset = frame.offset as usize,
                None => self.current = None,
            }
        }
    }
}
