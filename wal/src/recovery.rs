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
//! - Spare files (`*.spare`, checkpointed segments kept for reuse) are not part of the log; at
//!   most [`crate::WalOptions::spare_segments`] are kept and handed to the writer, the rest
//!   are removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{self, Frame, SEGMENT_HEADER_LEN};
use crate::fs::{read_all, Fs, FsFile};
use crate::options::RecoveryMode;
use crate::segment::{parse_segment_name, parse_spare_name, segment_path, SegmentInfo};
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
    /// Above every segment number seen in the directory, including files recovery removed
    /// or skipped, so a rotation never collides with a leftover name.
    pub next_segment_seq: u64,
    /// Spare files the writer may reuse as new segments.
    pub spares: Vec<PathBuf>,
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
    spare_segments: usize,
    first_seq: u64,
) -> Result<(RecoveredLog, Recovery)> {
    let mut report = Recovery::default();
    let (mut names, spares) = list_files(fs, dir)?;
    // A previous process may have created or removed segments without syncing the directory
    // (it died, or was poisoned, before it could). Make the namespace we are about to build on
    // durable first, so a later crash cannot resurrect a segment we are now ignoring.
    fs.sync_dir(dir)
        .map_err(|e| Error::poisoned("fsync directory", dir, e))?;
    names.sort_unstable();
    // Spares count too: a spare holds frames written under its number, so that number must
    // never be given to a new segment (which could be started in that very file). Checkpoints
    // only ever recycle segments older than the active one, so this matters only if segment
    // files went missing.
    let max_segment_seq = names.last().map_or(0, |(seq, _)| *seq).max(
        spares
            .iter()
            .filter_map(|p| parse_spare_name(p))
            .max()
            .unwrap_or(0),
    );

    let mut scanned: Vec<Scanned> = Vec::new();
    for (i, (segment_seq, path)) in names.iter().enumerate() {
        let newest = i + 1 == names.len();
        let prev_next = scanned.last().map(|s| s.next_seq);
        let bytes = read_segment(fs, path)?;
        if let Some(s) = recover_segment(
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
            let file = create_segment(fs.as_ref(), dir, &path, segment_seq, first_seq)
                .map_err(|(op, e)| Error::io(op, &path, e))?;
            let info = SegmentInfo {
                segment_seq,
                first_seq,
                path,
            };
            (vec![info], file, SEGMENT_HEADER_LEN as u64, first_seq)
        }
    };
    let next_segment_seq = segments_max(&segments).max(max_segment_seq) + 1;
    // Strict and skip-corrupt opens change nothing they need not: surplus spares stay.
    let spares = match mode {
        RecoveryMode::TolerateTornTail => keep_spares(fs, dir, spares, spare_segments)?,
        RecoveryMode::Strict | RecoveryMode::SkipCorrupt => spares,
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
            next_segment_seq,
            spares,
        },
        report,
    ))
}

fn segments_max(segments: &[SegmentInfo]) -> u64 {
    segments.iter().map(|s| s.segment_seq).max().unwrap_or(0)
}

/// The segment files (with their numbers) and the spare files in `dir`.
type Listing = (Vec<(u64, PathBuf)>, Vec<PathBuf>);

fn list_files(fs: &Arc<dyn Fs>, dir: &Path) -> Result<Listing> {
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
    let mut spares: Vec<PathBuf> = files
        .iter()
        .filter(|p| parse_spare_name(p).is_some())
        .cloned()
        .collect();
    spares.sort_unstable();
    let segments = files
        .into_iter()
        .filter_map(|p| parse_segment_name(&p).map(|seq| (seq, p)))
        .collect();
    Ok((segments, spares))
}

/// Keeps the first `keep` spares and removes the rest (durably), e.g. after
/// [`crate::WalOptions::spare_segments`] was lowered.
fn keep_spares(
    fs: &Arc<dyn Fs>,
    dir: &Path,
    mut spares: Vec<PathBuf>,
    keep: usize,
) -> Result<Vec<PathBuf>> {
    if spares.len() <= keep {
        return Ok(spares);
    }
    for path in spares.drain(keep..) {
        fs.remove_file(&path)
            .map_err(|e| Error::io("remove", &path, e))?;
    }
    fs.sync_dir(dir)
        .map_err(|e| Error::poisoned("fsync directory", dir, e))?;
    Ok(spares)
}

fn read_segment(fs: &Arc<dyn Fs>, path: &Path) -> Result<Vec<u8>> {
    let file = fs.open(path).map_err(|e| Error::io("open", path, e))?;
    read_all(file.as_ref()).map_err(|e| Error::io("read", path, e))
}

/// True if some verified frame at or after `from` shows that the record `expected_seq` had
/// already been synced when it was written.
fn durable_evidence_after(segment_seq: u64, bytes: &[u8], from: usize, expected_seq: u64) -> bool {
    let mut pos = from;
    // No frame of this segment after `from` can carry a sequence number beyond the number of
    // frames that fit: the bound keeps the scan of a long tail (the rest of a recycled
    // segment, say) from checksumming every stale byte that looks a little like a header.
    let max_seq = expected_seq.saturating_add((bytes.len() / format::RECORD_HEADER_LEN) as u64);
    while let Some(frame) =
        format::find_next_frame_below(segment_seq, bytes, pos, expected_seq - 1, max_seq)
    {
        if frame.meta.durable_seq >= expected_seq {
            return true;
        }
        pos = frame.offset as usize + 1;
    }
    false
}

/// A verified record found by [`scan_segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// Sequence number.
    pub seq: u64,
    /// Record type.
    pub record_type: u8,
    /// Offset of the frame in the segment.
    pub offset: u64,
    /// Length of the whole frame.
    pub len: u64,
}

/// How a segment's scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    /// Every byte verified.
    Clean,
    /// The newest segment ends in a torn write from `offset` on: truncate it there.
    TornTail {
        /// Where the valid data ends.
        offset: u64,
        /// Why the first bad frame failed.
        reason: String,
    },
    /// The newest segment's header never made it to disk and it holds no verifiable frame:
    /// a rotation interrupted by the crash. Remove the file.
    TornCreation {
        /// Why the header failed.
        reason: String,
    },
    /// Damage that a torn write cannot explain (or any damage, in strict mode).
    Corrupt {
        /// Where the bad data starts.
        offset: u64,
        /// What failed.
        reason: String,
    },
}

/// The result of verifying one segment's bytes, without touching any file. Recovery acts on
/// it; an inspection tool can print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// The header, if it verified.
    pub header: Option<format::SegmentHeader>,
    /// The records that verified, in order (under skip-corrupt: those outside skipped ranges).
    pub records: Vec<RecordRef>,
    /// Ranges skipped under [`RecoveryMode::SkipCorrupt`]: (offset, length, reason).
    pub skipped: Vec<(u64, u64, String)>,
    /// How the scan ended.
    pub outcome: ScanOutcome,
    /// The sequence number the next record after this segment must carry.
    pub next_seq: u64,
    /// Length of the valid prefix of the segment (where appends resume).
    pub valid_end: u64,
}

/// Verifies one segment file's bytes. `segment_seq` is the number from the file name;
/// `newest` says whether it is the last segment (the only one that may end in a torn write);
/// `expected_first_seq` is where the previous segment ended, if there is one. Never panics,
/// whatever the bytes.
pub fn scan_segment(
    segment_seq: u64,
    bytes: &[u8],
    newest: bool,
    expected_first_seq: Option<u64>,
    mode: RecoveryMode,
) -> SegmentScan {
    let len = bytes.len() as u64;
    let mut scan = SegmentScan {
        header: None,
        records: Vec::new(),
        skipped: Vec::new(),
        outcome: ScanOutcome::Clean,
        next_seq: expected_first_seq.unwrap_or(1),
        valid_end: len,
    };
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
            let may_be_torn = expected_first_seq.is_some() || segment_seq == 1;
            if newest && mode != RecoveryMode::Strict && !any_frame && may_be_torn {
                scan.outcome = ScanOutcome::TornCreation { reason };
                scan.valid_end = 0;
            } else if mode == RecoveryMode::SkipCorrupt {
                scan.skipped.push((0, len, reason));
            } else {
                scan.outcome = ScanOutcome::Corrupt { offset: 0, reason };
            }
            return scan;
        }
    };
    scan.header = Some(header);
    if let Some(prev_next) = expected_first_seq {
        let gap_ok = mode == RecoveryMode::SkipCorrupt && header.first_seq > prev_next;
        if header.first_seq != prev_next && !gap_ok {
            scan.outcome = ScanOutcome::Corrupt {
                offset: 0,
                reason: format!(
                    "segment starts at sequence {} but the previous one ends before {prev_next}",
                    header.first_seq
                ),
            };
            return scan;
        }
    }

    let mut offset = SEGMENT_HEADER_LEN.min(bytes.len());
    let mut expected = header.first_seq;
    while offset < bytes.len() {
        let failure = match format::decode_frame(segment_seq, bytes, offset) {
            Ok(frame) if frame.meta.seq == expected => {
                scan.records.push(RecordRef {
                    seq: frame.meta.seq,
                    record_type: frame.meta.record_type,
                    offset: frame.offset,
                    len: frame.len() as u64,
                });
                offset += frame.len();
                expected += 1;
                continue;
            }
            Ok(frame) => format!("expected sequence {expected}, found {}", frame.meta.seq),
            Err(e) => e.to_string(),
        };
        let tail_rules = newest && mode != RecoveryMode::Strict;
        if tail_rules && !durable_evidence_after(segment_seq, bytes, offset + 1, expected.max(1)) {
            scan.outcome = ScanOutcome::TornTail {
                offset: offset as u64,
                reason: failure,
            };
            scan.valid_end = offset as u64;
            break;
        }
        if mode != RecoveryMode::SkipCorrupt {
            scan.outcome = ScanOutcome::Corrupt {
                offset: offset as u64,
                reason: failure,
            };
            scan.valid_end = offset as u64;
            break;
        }
        let resume =
            format::find_next_frame(segment_seq, bytes, offset + 1, expected.saturating_sub(1));
        let skip_to = resume.map_or(len, |f| f.offset);
        scan.skipped
            .push((offset as u64, skip_to - offset as u64, failure));
        match resume {
            Some(Frame { meta, .. }) => {
                offset = skip_to as usize;
                expected = meta.seq;
            }
            None => break,
        }
    }
    scan.next_seq = expected;
    scan
}

/// Scans one segment file and carries out what the scan decided (truncate a torn tail,
/// remove a torn creation, or fail on corruption).
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the list
fn recover_segment(
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
    let scan = scan_segment(segment_seq, bytes, newest, prev_next, mode);
    report.skipped.extend(
        scan.skipped
            .iter()
            .map(|(offset, skipped, reason)| SkippedRange {
                segment: path.to_path_buf(),
                offset: *offset,
                len: *skipped,
                reason: reason.clone(),
            }),
    );
    match scan.outcome {
        ScanOutcome::Clean => {}
        ScanOutcome::Corrupt { offset, reason } => {
            return Err(Error::corruption(path, offset, reason))
        }
        ScanOutcome::TornTail { offset, reason } => {
            let dropped = len - offset;
            tracing::warn!(
                segment = %path.display(),
                offset,
                bytes_dropped = dropped,
                "truncating the newest WAL segment after its last valid record (a write the \
                 crash tore, or the unused rest of a recycled segment): {reason}"
            );
            truncate_file(fs, path, offset)?;
            report.torn_tail = Some(TornTail {
                segment: path.to_path_buf(),
                offset,
                bytes_dropped: dropped,
            });
        }
        ScanOutcome::TornCreation { reason } => {
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
    }
    let Some(header) = scan.header else {
        // Skip-corrupt mode skipped the whole segment.
        return Ok(None);
    };
    Ok(Some(Scanned {
        info: SegmentInfo {
            segment_seq,
            first_seq: header.first_seq,
            path: path.to_path_buf(),
        },
        next_seq: scan.next_seq,
        len: scan.valid_end,
    }))
}

fn truncate_file(fs: &Arc<dyn Fs>, path: &Path, len: u64) -> Result<()> {
    let mut file = fs.open(path).map_err(|e| Error::io("open", path, e))?;
    file.set_len(len)
        .map_err(|e| Error::io("truncate", path, e))?;
    file.sync_data()
        .map_err(|e| Error::poisoned("fdatasync", path, e))
}
