//! Bit flips and truncations at every offset of a small log: always detected, never
//! returned as data.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{check_payload, payload_for, soak};
use keelmq_wal::fs::MemFs;
use keelmq_wal::{Error, RecoveryMode, Wal, WalOptions};

const DIR: &str = "/wal";
const RECORDS: u64 = 12;

fn options(mode: RecoveryMode) -> WalOptions {
    WalOptions {
        segment_size_bytes: 1200,
        recovery_mode: mode,
        ..WalOptions::default()
    }
}

/// A closed, fully synced log of `RECORDS` records over a few segments.
fn small_log() -> (MemFs, Vec<PathBuf>) {
    let fs = MemFs::new();
    let (wal, _) =
        Wal::open_with_fs(Arc::new(fs.clone()), DIR, options(RecoveryMode::Strict)).unwrap();
    for id in 1..=RECORDS {
        wal.append(id as u8, payload_for(id))
            .unwrap()
            .durable
            .wait()
            .unwrap();
    }
    let segments = wal.segment_paths();
    wal.close().unwrap();
    assert!(
        segments.len() >= 3,
        "want several segments, got {}",
        segments.len()
    );
    (fs, segments)
}

/// Opens `fs` in `mode`; on success reads everything back and checks each record is one of
/// the originals, intact, in order. Returns the recovered sequence numbers.
fn recover(
    fs: &MemFs,
    mode: RecoveryMode,
    what: &str,
) -> Result<(Vec<u64>, keelmq_wal::Recovery), Error> {
    let (wal, recovery) = Wal::open_with_fs(Arc::new(fs.clone()), DIR, options(mode))?;
    let mut seqs = Vec::new();
    for r in wal.read_from(recovery.first_seq)? {
        let r = r?;
        assert_eq!(
            check_payload(&r.payload),
            Some(r.seq),
            "{what}: damaged record returned as data"
        );
        assert_eq!(r.record_type, r.seq as u8, "{what}: damaged type returned");
        if let Some(prev) = seqs.last() {
            assert!(r.seq > *prev, "{what}: out of order");
            if mode != RecoveryMode::SkipCorrupt {
                assert_eq!(r.seq, prev + 1, "{what}: gap");
            }
        }
        seqs.push(r.seq);
    }
    wal.close()?;
    Ok((seqs, recovery))
}

fn is_newest(segments: &[PathBuf], path: &Path) -> bool {
    segments.last().map(PathBuf::as_path) == Some(path)
}

#[test]
fn every_bit_flip_is_detected() {
    let (pristine, segments) = small_log();
    let bits: Vec<u8> = if soak() { (0..8).collect() } else { vec![0, 5] };
    for path in &segments {
        let len = pristine.read_file(path).unwrap().len() as u64;
        for offset in 0..len {
            for &bit in &bits {
                let what = format!("{} offset {offset} bit {bit}", path.display());
                for mode in [
                    RecoveryMode::Strict,
                    RecoveryMode::TolerateTornTail,
                    RecoveryMode::SkipCorrupt,
                ] {
                    let fs = pristine.deep_copy();
                    fs.flip_bit(path, offset, bit).unwrap();
                    match (mode, recover(&fs, mode, &what)) {
                        (RecoveryMode::Strict, Err(Error::Corruption { segment, .. })) => {
                            assert_eq!(&segment, path, "{what}: blamed the wrong file")
                        }
                        (RecoveryMode::Strict, other) => {
                            panic!("{what}: strict mode gave {other:?}")
                        }
                        (RecoveryMode::TolerateTornTail, Err(Error::Corruption { .. })) => {}
                        (RecoveryMode::TolerateTornTail, Ok((seqs, recovery))) => {
                            // Only damage to the newest segment's final frames can pass for
                            // a torn tail; it must be reported and cut off, never returned.
                            assert!(
                                is_newest(&segments, path),
                                "{what}: damage in a sealed segment accepted"
                            );
                            let torn = recovery
                                .torn_tail
                                .unwrap_or_else(|| panic!("{what}: undetected"));
                            assert_eq!(&torn.segment, path);
                            assert!((seqs.len() as u64) < RECORDS, "{what}: nothing dropped");
                        }
                        (RecoveryMode::SkipCorrupt, Ok((seqs, recovery))) => {
                            let reported =
                                !recovery.skipped.is_empty() || recovery.torn_tail.is_some();
                            assert!(reported, "{what}: skip mode did not report the damage");
                            assert!((seqs.len() as u64) < RECORDS, "{what}: nothing dropped");
                        }
                        (mode, other) => panic!("{what}: {mode:?} gave {other:?}"),
                    }
                }
            }
        }
    }
}

#[test]
fn every_truncation_is_detected_or_is_a_clean_prefix() {
    let (pristine, segments) = small_log();
    for path in &segments {
        let bytes = pristine.read_file(path).unwrap();
        for cut in 0..bytes.len() {
            let what = format!("{} cut at {cut}", path.display());
            let fs = pristine.deep_copy();
            fs.write_file_durable(path, &bytes[..cut]);
            let result = recover(&fs, RecoveryMode::TolerateTornTail, &what);
            if !is_newest(&segments, path) {
                // A cut inside a frame is blamed on this segment; a cut exactly at a frame
                // boundary leaves it valid but shorter, and the sequence gap is then found at
                // the start of the next one.
                let i = segments.iter().position(|s| s == path).unwrap();
                assert!(
                    matches!(&result, Err(Error::Corruption { segment, .. })
                        if segment == path || segment == &segments[i + 1]),
                    "{what}: truncated sealed segment gave {result:?}"
                );
                continue;
            }
            let (seqs, _) = result.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                (seqs.len() as u64) < RECORDS,
                "{what}: a cut newest segment lost nothing?"
            );
            assert_eq!(
                seqs.first(),
                Some(&1),
                "{what}: older segments must be intact"
            );
            let strict = recover(&fs, RecoveryMode::Strict, &what);
            match strict {
                // A cut exactly at a frame boundary leaves a valid, shorter log.
                Ok((strict_seqs, _)) => assert!(strict_seqs.len() <= seqs.len()),
                Err(Error::Corruption { .. }) => {}
                Err(other) => panic!("{what}: strict gave {other}"),
            }
        }
    }
}
