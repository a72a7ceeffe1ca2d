//! Opening a log: verify every segment, repair a torn tail, decide where appends resume.
//!
//! Rules (see the crate README for the reasoning):
//! - Every segment but the newest was fdatasync'ed before the next one was created, so any
//!   verification failure in one of them is corruption.
//! - In the newest segment, the first bad frame at offset X (expected to carry sequence `s`)
//!   is a torn tail unless some verified frame after X records a `durable_seq >= s`, i.e. the
//!   writer had already synced the record at X before writing that later frame. A torn tail is
//!   truncated and the truncation synced; the damaged evidence case is `Corruption`.
//! - A newest segment whose header does not verify and that holds no verifiable frame is a
//!   rotation the crash interrupted: it is removed.
//! - Sequence numbers run without gaps across segments.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{self, Frame, SEGMENT_HEADER_LEN};
use crate::fs::{read_all, Fs, FsFile};
use crate::options::RecoveryMode;
use crate::segment::{parse_segment_name, segment_path, SegmentInfo};
use crate::writer::create_segment;

/// What recovery found and did. Records themselves are read with [`crate::Wal::read_from`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Oldest sequence number still in the log (equal to `last_seq + 1` when it holds none).
    pub first_seq: u64,
    /// Newest sequence number recovered; 0 if no record was ever written.
    pub last_seq: u64,
    /// Number of segment files in use after recovery.
    pub segments: usize,
    /// The torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Regions skipped under [`RecoveryMode::SkipCorrupt`] (always empty otherwise).
    pub skipped: Vec<SkippedRange>,
}

/// A torn tail removed from the newest segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub segment: PathBuf,
    /// Offset where the valid data ends (the file's new length; 0 if the file was removed).
    pub offset: u64,
    /// Bytes dropped.
    pub bytes_dropped: u64,
}

/// A region that failed verification and was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRange {
    /// The segment file.
    pub segment: PathBuf,
    /// Offset of the first skipped byte.
    pub offset: u64,
    /// Number of bytes skipped.
    pub len: u64,
    /// Why the region failed.
    pub reason: String,
}

/// State handed to the writer.
pub(crate) struct RecoveredLog {
    pub segments: Vec<SegmentInfo>,
    pub active_file: Box<dyn FsFile>,
    pub active_len: u64,
    pub next_seq: u64,
}

struct Scanned {
    info: SegmentInfo,
    next_seq: u64,
    len: u64,
}

pub(crate) fn recover(
    fs: &Arc<dyn Fs>,
    dir: &Path,
    mode: RecoveryMode,
) -> Result<(RecoveredLog, Recovery)> {
    let mut report = Recovery::default();
    let mut names = list_segments(fs, dir)?;
    // A previous process may have created or removed segments without syncing the directory
    // (it died, or was poisoned, before it could). Make the namespace we are about to build on
    // durable first, so a later crash cannot resurrect a segment we are now ignoring.
    fs.sync_dir(dir)
        .map_err(|e| Error::poisoned("fsync directory", dir, e))?;
    names.sort_unstable();
    let max_segment_seq = names.last().map_or(0, |(seq, _)| *seq);

    let mut scanned: Vec<Scanned> = Vec::new();
    for (i, (segment_seq, path)) in names.iter().enumerate() {
        let newest = i + 1 == names.len();
        let prev_next = scanned.last().map(|s| s.next_seq);
        let bytes = read_segment(fs, path)?;
        if let Some(s) = scan_segment(
            fs,
            path,
            *segment_seq,
            &bytes,
            newest,
            prev_next,
            mode,
            &mut report,
        )? {
            scanned.push(s);
        }
    }

    let (segments, active_file, active_len, next_seq) = match scanned.last() {
        Some(last) => {
            let mut file = fs
                .open(&last.info.path)
                .map_err(|e| Error::io("open", &last.info.path, e))?;
            // What we just read may exist only in the page cache of a process that died before
            // its fdatasync. Sync it now so that everything recovered really is durable before
            // new records (which will claim it is) are written after it.
            file.sync_data()
                .map_err(|e| Error::poisoned("fdatasync", &last.info.path, e))?;
            let infos = scanned.iter().map(|s| s.info.clone()).collect();
            (infos, file, last.len, last.next_seq)
        }
        None => {
            // An empty directory, or one whose only segment was a torn creation.
            let segment_seq = max_segment_seq + 1;
            let path = segment_path(dir, segment_seq);
            let file = create_segment(fs.as_ref(), dir, &path, segment_seq, 1)
                .map_err(|(op, e)| Error::io(op, &path, e))?;
            let info = SegmentInfo {
                segment_seq,
                first_seq: 1,
                path,
            };
            (vec![info], file, SEGMENT_HEADER_LEN as u64, 1)
        }
    };
    report.first_seq = segments.first().map_or(next_seq, |s| s.first_seq);
    report.last_seq = next_seq - 1;
    report.segments = segments.len();
    Ok((
        RecoveredLog {
            segments,
            active_file,
            active_len,
            next_seq,
        },
        report,
    ))
}

fn list_segments(fs: &Arc<dyn Fs>, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let files = match fs.list_files(dir) {
        Ok(files) => files,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs.create_dir_all(dir)
                .map_err(|e| Error::io("create_dir_all", dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                // Make the new directory's own entry durable.
                fs.sync_dir(parent)
                    .map_err(|e| Error::io("fsync directory", parent, e))?;
            }
            Vec::new()
        }
        Err(e) => return Err(Error::io("list directory", dir, e)),
    };
    Ok(files
        .into_iter()
        .filter_map(|p| parse_segment_name(&p).map(|seq| (seq, p)))
        .collect())
}

fn read_segment(fs: &Arc<dyn Fs>, path: &Path) -> Result<Vec<u8>> {
    let file = fs.open(path).map_err(|e| Error::io("open", path, e))?;
    read_all(file.as_ref()).map_err(|e| Error::io("read", path, e))
}

/// True if some verified frame at or after `from` shows that the record `expected_seq` had
/// already been synced when it was written.
fn durable_evidence_after(segment_seq: u64, bytes: &[u8], from: usize, expected_seq: u64) -> bool {
    let mut pos = from;
    while let Some(frame) = format::find_next_frame(segment_seq, bytes, pos, expected_seq - 1) {
        if frame.meta.durable_seq >= expected_seq {
            return true;
        }
        pos = frame.offset as usize + 1;
    }
    false
}

#[allow(clippy::too_many_arguments)]
fn scan_segment(
    fs: &Arc<dyn Fs>,
    path: &Path,
    segment_seq: u64,
    bytes: &[u8],
    newest: bool,
    prev_next: Option<u64>,
    mode: RecoveryMode,
    report: &mut Recovery,
) -> Result<Option<Scanned>> {
    let len = bytes.len() as u64;
    let header = format::decode_segment_header(bytes).and_then(|h| {
        if h.segment_seq == segment_seq {
            Ok(h)
        } else {
            Err(format!(
                "header names segment {} but the file name says {segment_seq}",
                h.segment_seq
            ))
        }
    });
    let header = match header {
        Ok(h) => h,
        Err(reason) => {
            let any_frame = format::find_next_frame(segment_seq, bytes, 0, 0).is_some();
            if newest
                && mode != RecoveryMode::Strict
                && !any_frame
                && (prev_next.is_some() || segment_seq == 1)
            {
                // A rotation interrupted before its header and directory entry were synced.
                tracing::warn!(
                    segment = %path.display(),
                    offset = 0u64,
                    bytes_dropped = len,
                    "removing WAL segment whose creation was torn by a crash: {reason}"
                );
                fs.remove_file(path)
                    .map_err(|e| Error::io("remove", path, e))?;
                if let Some(dir) = path.parent() {
                    fs.sync_dir(dir)
                        .map_err(|e| Error::poisoned("fsync directory", dir, e))?;
                }
                report.torn_tail = Some(TornTail {
                    segment: path.to_path_buf(),
                    offset: 0,
                    bytes_dropped: len,
                });
                return Ok(None);
            }
            if mode == RecoveryMode::SkipCorrupt {
                report.skipped.push(SkippedRange {
                    segment: path.to_path_buf(),
                    offset: 0,
                    len,
                    reason,
                });
                return Ok(None);
            }
            return Err(Error::corruption(path, 0, reason));
        }
    };
    if let Some(prev_next) = prev_next {
        let gap_ok = mode == RecoveryMode::SkipCorrupt && header.first_seq > prev_next;
        if header.first_seq != prev_next && !gap_ok {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "segment starts at sequence {} but the previous one ends before {prev_next}",
                    header.first_seq
                ),
            ));
        }
    }

    let mut offset = SEGMENT_HEADER_LEN;
    let mut expected = header.first_seq;
    let mut end = len;
    while offset < bytes.len() {
        let failure = match format::decode_frame(segment_seq, bytes, offset) {
            Ok(frame) if frame.meta.seq == expected => {
                offset += frame.len();
                expected += 1;
                continue;
            }
            Ok(frame) => format!("expected sequence {expected}, found {}", frame.meta.seq),
            Err(e) => e.to_string(),
        };
        let tail_rules = newest && mode != RecoveryMode::Strict;
        if tail_rules && !durable_evidence_after(segment_seq, bytes, offset + 1, expected.max(1)) {
            let dropped = len - offset as u64;
            tracing::warn!(
                segment = %path.display(),
                offset = offset as u64,
                bytes_dropped = dropped,
                "truncating torn WAL tail: {failure}"
            );
            truncate_file(fs, path, offset as u64)?;
            report.torn_tail = Some(TornTail {
                segment: path.to_path_buf(),
                offset: offset as u64,
                bytes_dropped: dropped,
            });
            end = offset as u64;
            break;
        }
        if mode != RecoveryMode::SkipCorrupt {
            return Err(Error::corruption(path, offset as u64, failure));
        }
        match format::find_next_frame(segment_seq, bytes, offset + 1, expected.saturating_sub(1)) {
            Some(Frame {
                offset: next, meta, ..
            }) => {
                report.skipped.push(SkippedRange {
                    segment: path.to_path_buf(),
                    offset: offset as u64,
                    len: next - offset as u64,
                    reason: failure,
                });
                offset = next as usize;
                expected = meta.seq;
            }
            None => {
                report.skipped.push(SkippedRange {
                    segment: path.to_path_buf(),
                    offset: offset as u64,
                    len: len - offset as u64,
                    reason: failure,
                });
                break;
            }
        }
    }
    Ok(Some(Scanned {
        info: SegmentInfo {
            segment_seq,
            first_seq: header.first_seq,
            path: path.to_path_buf(),
        },
        next_seq: expected,
        len: end,
    }))
}

fn truncate_file(fs: &Arc<dyn Fs>, path: &Path, len: u64) -> Result<()> {
    let mut file = fs.open(path).map_err(|e| Error::io("open", path, e))?;
    file.set_len(len)
        .map_err(|e| Error::io("truncate", path, e))?;
    file.sync_data()
        .map_err(|e| Error::poisoned("fdatasync", path, e))
}
