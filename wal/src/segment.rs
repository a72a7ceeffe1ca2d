//! Segment file naming and the in-memory description of a segment.

use std::path::{Path, PathBuf};

use crate::format::{SEGMENT_EXTENSION, SPARE_EXTENSION};

/// What the log knows about one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub segment_seq: u64,
    pub first_seq: u64,
    pub path: PathBuf,
}

/// `dir/<segment_seq as 16 hex digits>.wal`.
pub(crate) fn segment_path(dir: &Path, segment_seq: u64) -> PathBuf {
    dir.join(format!("{segment_seq:016x}.{SEGMENT_EXTENSION}"))
}

/// `dir/<segment_seq as 16 hex digits>.spare`: a checkpointed segment kept for reuse, named
/// after the segment it was.
pub(crate) fn spare_path(dir: &Path, segment_seq: u64) -> PathBuf {
    dir.join(format!("{segment_seq:016x}.{SPARE_EXTENSION}"))
}

/// The segment sequence number encoded in a segment file's name, or `None` for any other file.
pub(crate) fn parse_segment_name(path: &Path) -> Option<u64> {
    parse_name(path, SEGMENT_EXTENSION)
}

/// The number in a spare file's name, or `None` for any other file.
pub(crate) fn parse_spare_name(path: &Path) -> Option<u64> {
    parse_name(path, SPARE_EXTENSION)
}

fn parse_name(path: &Path, extension: &str) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(extension)?.strip_suffix('.')?;
    if stem.len() != 16 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        let dir = Path::new("/x");
        let p = segment_path(dir, 0x2a);
        assert_eq!(p, Path::new("/x/000000000000002a.wal"));
        assert_eq!(parse_segment_name(&p), Some(0x2a));
        assert_eq!(parse_segment_name(Path::new("/x/2a.wal")), None);
        assert_eq!(
            parse_segment_name(Path::new("/x/000000000000002a.wal.tmp")),
            None
        );
        assert_eq!(
            parse_segment_name(Path::new("/x/00000000000000zz.wal")),
            None
        );
        assert_eq!(parse_segment_name(Path::new("/x/LOCK")), None);
        let spare = spare_path(dir, 0x2a);
        assert_eq!(spare, Path::new("/x/000000000000002a.spare"));
        assert_eq!(parse_spare_name(&spare), Some(0x2a));
        assert_eq!(parse_segment_name(&spare), None);
        assert_eq!(parse_spare_name(&p), None);
    }
}
