// The recovery-reader property shared by the cargo-fuzz target
// (fuzz/fuzz_targets/wal_recovery.rs, which `include!`s this file) and the
// `recovery_fuzz_smoke` test: arbitrary bytes as segment files never make recovery panic, and
// nothing it returns as a record fails verification against the bytes it came from.
//
// Written with full paths and no `use` at module level so it can be `include!`d anywhere.

/// A valid segment (number `segment_seq`, records `first_seq..first_seq + count`), the raw
/// material that fuzz input mutates.
pub fn valid_segment(segment_seq: u64, first_seq: u64, count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    keelmq_wal::format::encode_segment_header(
        keelmq_wal::format::SegmentHeader {
            segment_seq,
            first_seq,
        },
        &mut out,
    );
    for seq in first_seq..first_seq + count {
        let meta = keelmq_wal::format::FrameMeta {
            seq,
            durable_seq: seq - 1,
            record_type: seq as u8,
        };
        let payload = vec![seq as u8; (seq % 40) as usize];
        keelmq_wal::format::encode_record(segment_seq, meta, &payload, &mut out);
    }
    out
}

/// Runs every check on `data`. Panics only if a property is violated.
pub fn check_recovery_bytes(data: &[u8]) {
    use keelmq_wal::RecoveryMode;
    let modes = [
        RecoveryMode::TolerateTornTail,
        RecoveryMode::Strict,
        RecoveryMode::SkipCorrupt,
    ];

    // 1. The pure scanner, as the newest or a sealed segment, with or without a predecessor.
    for mode in modes {
        for newest in [true, false] {
            for prev in [None, Some(1)] {
                let scan = keelmq_wal::scan_segment(1, data, newest, prev, mode);
                assert!(scan.valid_end <= data.len() as u64);
                for r in &scan.records {
                    let frame = keelmq_wal::format::decode_frame(1, data, r.offset as usize)
                        .expect("scan_segment returned a record that does not verify");
                    assert_eq!(frame.meta.seq, r.seq);
                    assert_eq!(frame.meta.record_type, r.record_type);
                    assert_eq!(frame.len() as u64, r.len);
                }
            }
        }
    }

    // 2. The whole open + read path on the in-memory fs, over three layouts: the input alone,
    //    the input split in two segments, and the input as the newest segment after a valid
    //    one. Plus a valid segment mutated by the input (XOR at input-chosen offsets), which
    //    reaches deep paths that random bytes rarely do.
    let split = data.first().map_or(0, |b| *b as usize * data.len() / 256);
    let mut mutated = valid_segment(1, 1, 6);
    for chunk in data.chunks_exact(3) {
        let at = (usize::from(chunk[0]) << 8 | usize::from(chunk[1])) % mutated.len();
        mutated[at] ^= chunk[2];
    }
    if data.len() % 7 == 3 {
        mutated.truncate(data.len() % mutated.len());
    }
    let layouts: [Vec<Vec<u8>>; 4] = [
        vec![data.to_vec()],
        vec![data[..split].to_vec(), data[split..].to_vec()],
        vec![valid_segment(1, 1, 3), data.to_vec()],
        vec![mutated],
    ];
    for segments in &layouts {
        for mode in modes {
            check_open(segments, mode);
        }
    }
}

fn check_open(segments: &[Vec<u8>], mode: keelmq_wal::RecoveryMode) {
    let fs = keelmq_wal::fs::MemFs::new();
    let dir = std::path::Path::new("/wal");
    for (i, bytes) in segments.iter().enumerate() {
        fs.write_file_durable(&dir.join(format!("{:016x}.wal", i + 1)), bytes);
    }
    let options = keelmq_wal::WalOptions {
        recovery_mode: mode,
        ..keelmq_wal::WalOptions::default()
    };
    let Ok((wal, recovery)) = keelmq_wal::Wal::open_with_fs(std::sync::Arc::new(fs), dir, options)
    else {
        return; // refusing damaged input is allowed; panicking is not
    };
    assert!(recovery.first_seq <= recovery.last_seq + 1);
    if let Ok(reader) = wal.read_from(recovery.first_seq) {
        for record in reader {
            let Ok(record) = record else { break };
            let original = usize::try_from(record.segment_seq - 1)
                .ok()
                .and_then(|i| segments.get(i))
                .expect("a record from a segment that was not in the input");
            let frame = keelmq_wal::format::decode_frame(
                record.segment_seq,
                original,
                record.offset as usize,
            )
            .expect("recovery returned a record that does not verify");
            assert_eq!(frame.meta.seq, record.seq);
            assert_eq!(frame.meta.record_type, record.record_type);
            assert_eq!(frame.payload, &record.payload[..]);
            assert!(record.seq <= recovery.last_seq);
        }
    }
    let _ = wal.close();
}
