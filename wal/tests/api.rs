//! The API's behaviour, each scenario run on the real file system and on MemFs (as okaywal's
//! tests do), so the in-memory fs used by the crash tests is held to the real one's results.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{append_durable, check_payload, payload_for, read_all, TempDir};
use keelmq_wal::fs::{Fs, MemFs, StdFs};
use keelmq_wal::{Error, RecoveryMode, SyncPolicy, Wal, WalOptions};

/// Runs `scenario` once on a real temp dir and once on a MemFs.
fn on_both(name: &str, scenario: impl Fn(Arc<dyn Fs>, PathBuf)) {
    let tmp = TempDir::new(name);
    scenario(Arc::new(StdFs), tmp.path().to_path_buf());
    scenario(Arc::new(MemFs::new()), PathBuf::from("/wal"));
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_size_bytes: 1024,
        ..WalOptions::default()
    }
}

#[test]
fn append_wait_reopen_read_back() {
    on_both("basic", |fs, dir| {
        let (wal, recovery) = Wal::open_with_fs(fs.clone(), &dir, WalOptions::default()).unwrap();
        assert_eq!((recovery.first_seq, recovery.last_seq), (1, 0));
        assert_eq!(wal.last_seq(), 0);
        for id in 1..=50u64 {
            let appended = wal.append((id % 7) as u8, payload_for(id)).unwrap();
            assert_eq!(appended.seq, id);
            assert_eq!(appended.durable.wait().unwrap(), id);
            assert_eq!(wal.durable_seq(), id);
        }
        wal.close().unwrap();

        let (wal, recovery) = Wal::open_with_fs(fs, &dir, WalOptions::default()).unwrap();
        assert_eq!((recovery.first_seq, recovery.last_seq), (1, 50));
        assert_eq!(recovery.torn_tail, None);
        let records = read_all(&wal, 1);
        assert_eq!(records.len(), 50);
        for (i, r) in records.iter().enumerate() {
            let id = i as u64 + 1;
            assert_eq!((r.seq, r.record_type), (id, (id % 7) as u8));
            assert_eq!(check_payload(&r.payload), Some(id));
        }
        assert_eq!(read_all(&wal, 40).first().map(|r| r.seq), Some(40));
        assert!(read_all(&wal, 51).is_empty());
        let next = wal.append(0, b"after reopen".as_slice()).unwrap();
        assert_eq!(next.seq, 51);
        next.durable.wait().unwrap();
    });
}

#[test]
fn rotation_and_truncation_keep_the_log_contiguous() {
    on_both("rotate", |fs, dir| {
        let (wal, _) = Wal::open_with_fs(fs.clone(), &dir, small_segments()).unwrap();
        let handles: Vec<_> = (1..=200u64)
            .map(|id| wal.append(1, payload_for(id)).unwrap())
            .collect();
        for h in handles {
            h.durable.wait().unwrap();
        }
        let segments = wal.segment_paths();
        assert!(
            segments.len() > 10,
            "small segments must rotate, got {}",
            segments.len()
        );
        assert!(wal.stats().rotations as usize >= segments.len() - 1);

        assert_eq!(wal.truncate_through(0).unwrap(), 0);
        let removed = wal.truncate_through(100).unwrap();
        assert!(removed > 0);
        let first = wal.first_seq();
        assert!(first > 1 && first <= 101, "first_seq {first}");
        assert!(matches!(
            wal.read_from(1),
            Err(Error::Truncated { requested: 1, .. })
        ));
        let records = read_all(&wal, 101);
        assert_eq!(records.first().map(|r| r.seq), Some(101));
        assert_eq!(records.len(), 100);
        // Truncating past the end never deletes the segment being appended to.
        wal.truncate_through(10_000).unwrap();
        assert_eq!(wal.segment_paths().len(), 1);
        wal.close().unwrap();

        let (segments, spares) = files_by_kind(&fs, &dir);
        assert_eq!(segments.len(), 1);
        assert_eq!(spares.len(), small_segments().spare_segments);
        let (wal, recovery) = Wal::open_with_fs(fs, &dir, small_segments()).unwrap();
        assert_eq!(recovery.last_seq, 200);
        assert!(recovery.first_seq <= 201);
        let h = wal.append(1, payload_for(201)).unwrap();
        assert_eq!(h.seq, 201);
        h.durable.wait().unwrap();
        // The restart moved on to a spare before its first append.
        assert_eq!(wal.stats().recycled, 1);
        let tail = read_all(&wal, recovery.first_seq);
        assert_eq!(tail.last().map(|r| r.seq), Some(201));
    });
}

/// Segment files (`*.wal`) and spare files (`*.spare`) in `dir`, each sorted.
fn files_by_kind(fs: &Arc<dyn Fs>, dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files = fs.list_files(dir).unwrap();
    files.sort();
    let (segments, rest): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|p| p.extension() == Some("wal".as_ref()));
    let spares: Vec<_> = rest
        .into_iter()
        .filter(|p| p.extension() == Some("spare".as_ref()))
        .collect();
    (segments, spares)
}

#[test]
fn checkpointed_segments_are_recycled_and_their_old_bytes_never_read() {
    on_both("recycle", |fs, dir| {
        let options = small_segments();
        let (wal, _) = Wal::open_with_fs(fs.clone(), &dir, options.clone()).unwrap();
        let mut next = 1u64;
        for _ in 0..20 {
            for _ in 0..30 {
                let appended = wal.append((next % 5) as u8, payload_for(next)).unwrap();
                assert_eq!(appended.seq, next);
                appended.durable.wait().unwrap();
                next += 1;
            }
            // A checkpoint that keeps the last 10 records in the log.
            wal.truncate_through(next - 11).unwrap();
            let (_, spares) = files_by_kind(&fs, &dir);
            assert!(spares.len() <= options.spare_segments, "{spares:?}");
        }
        let stats = wal.stats();
        assert!(
            stats.recycled > 5 && stats.recycled < stats.rotations,
            "{stats:?}"
        );
        let first = wal.first_seq();
        let records = read_all(&wal, first);
        assert_eq!(records.len() as u64, next - first);
        for (r, seq) in records.iter().zip(first..) {
            assert_eq!(r.seq, seq);
            assert_eq!(check_payload(&r.payload), Some(seq));
        }
        wal.close().unwrap();

        // A clean close cut the active segment to its last record: nothing to repair, and
        // strict mode (which refuses any bad byte) accepts it.
        let strict = WalOptions {
            recovery_mode: RecoveryMode::Strict,
            ..options.clone()
        };
        let (wal, recovery) = Wal::open_with_fs(fs.clone(), &dir, strict).unwrap();
        assert_eq!(recovery.torn_tail, None);
        assert_eq!((recovery.first_seq, recovery.last_seq), (first, next - 1));
        let reread = read_all(&wal, first);
        assert_eq!(reread.len(), records.len());
        wal.close().unwrap();

        // Fewer spares wanted: the surplus is deleted on open.
        let fewer = WalOptions {
            spare_segments: 0,
            ..options
        };
        let (wal, _) = Wal::open_with_fs(fs.clone(), &dir, fewer).unwrap();
        assert!(files_by_kind(&fs, &dir).1.is_empty());
        wal.close().unwrap();
    });
}

#[test]
fn a_crash_in_a_recycled_segment_cuts_off_its_old_bytes() {
    let fs = MemFs::new();
    let options = small_segments();
    let (wal, _) = Wal::open_with_fs(Arc::new(fs.clone()), "/w", options.clone()).unwrap();
    let mut next = 1u64;
    while wal.stats().recycled == 0 {
        append_durable(&wal, next);
        wal.truncate_through(next.saturating_sub(5)).unwrap();
        next += 1;
    }
    // One more record, in the recycled segment, then a power loss.
    append_durable(&wal, next);
    let active = wal.segment_paths().last().cloned().unwrap();
    fs.crash(keelmq_wal::fs::CrashMode::DropUnsynced, 7);
    drop(wal);
    let stale_len = fs.read_file(&active).unwrap().len() as u64;

    let (wal, recovery) = Wal::open_with_fs(Arc::new(fs.clone()), "/w", options).unwrap();
    assert_eq!(recovery.last_seq, next);
    let torn = recovery.torn_tail.expect("the old bytes are reported");
    assert_eq!(torn.segment, active);
    assert_eq!(torn.offset + torn.bytes_dropped, stale_len);
    let records = read_all(&wal, recovery.first_seq);
    assert_eq!(records.last().map(|r| r.seq), Some(next));
    assert!(records
        .iter()
        .all(|r| check_payload(&r.payload) == Some(r.seq)));
    wal.close().unwrap();
}

#[test]
fn concurrent_appenders_get_one_gap_free_order() {
    on_both("concurrent", |fs, dir| {
        let (wal, _) = Wal::open_with_fs(fs, &dir, small_segments()).unwrap();
        let wal = Arc::new(wal);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || {
                    let mut seqs = Vec::new();
                    for i in 0..100u64 {
                        let a = wal.append(0, payload_for(t * 1000 + i)).unwrap();
                        assert_eq!(a.durable.wait().unwrap(), a.seq);
                        seqs.push(a.seq);
                    }
                    seqs
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=800).collect::<Vec<_>>());
        let records = read_all(&wal, 1);
        assert_eq!(records.len(), 800);
        assert!(records.iter().all(|r| check_payload(&r.payload).is_some()));
        let stats = wal.stats();
        assert_eq!(stats.records, 800);
        assert!(stats.batches <= 800);
    });
}

#[test]
fn completion_by_callback_poll_and_timeout() {
    on_both("callbacks", |fs, dir| {
        let (wal, _) = Wal::open_with_fs(fs, &dir, WalOptions::default()).unwrap();
        let (tx, rx) = mpsc::channel();
        for id in 1..=20u64 {
            let tx = tx.clone();
            wal.append(0, payload_for(id))
                .unwrap()
                .durable
                .on_complete(move |r| tx.send(r).unwrap());
        }
        let mut got: Vec<u64> = (0..20).map(|_| rx.recv().unwrap().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (1..=20).collect::<Vec<_>>());

        let a = wal.append(0, b"poll".as_slice()).unwrap();
        let outcome = a.durable.wait_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(outcome.unwrap(), 21);
        assert_eq!(a.durable.try_get().unwrap().unwrap(), 21);
        assert!(a.durable.is_complete());
    });
}

#[test]
fn limits_and_closed_errors() {
    let fs = Arc::new(MemFs::new());
    let options = WalOptions {
        max_record_bytes: 100,
        channel_capacity: 4,
        channel_capacity_bytes: 1000,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open_with_fs(fs.clone(), "/w", options).unwrap();
    assert!(matches!(
        wal.append(0, vec![0; 101]),
        Err(Error::RecordTooLarge { len: 101, max: 100 })
    ));
    wal.append(0, vec![0; 100]).unwrap().durable.wait().unwrap();
    wal.try_append(0, vec![1; 10])
        .unwrap()
        .durable
        .wait()
        .unwrap();
    wal.close().unwrap();

    let bad = WalOptions {
        segment_size_bytes: 10,
        ..WalOptions::default()
    };
    assert!(matches!(
        Wal::open_with_fs(fs.clone(), "/w", bad),
        Err(Error::InvalidOptions { .. })
    ));
    let bad = WalOptions {
        sync_policy: SyncPolicy::IntervalMs(0),
        ..WalOptions::default()
    };
    assert!(matches!(
        Wal::open_with_fs(fs.clone(), "/w", bad),
        Err(Error::InvalidOptions { .. })
    ));
    for nice in [-21, 20] {
        let bad = WalOptions {
            writer_nice: Some(nice),
            ..WalOptions::default()
        };
        assert!(matches!(
            Wal::open_with_fs(fs.clone(), "/w", bad),
            Err(Error::InvalidOptions { .. })
        ));
    }
}

/// The niceness of every thread named `name` in this process, from /proc (field 19 of stat).
fn thread_nices(name: &str) -> Vec<i32> {
    let mut nices = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread exited
        };
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        if comm.trim() == name {
            // The command name is in parentheses and may hold spaces; count fields after it.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            nices.push(after.split(' ').nth(16).unwrap().parse().unwrap());
        }
    }
    nices
}

#[test]
fn the_writer_thread_takes_the_niceness_it_is_given() {
    // Lowering priority (a higher niceness) is always permitted, so this runs anywhere.
    // The thread name is truncated to 15 bytes by the kernel. Other tests' writers run at
    // the same time, at other nicenesses; only this one asks for 7.
    let fs: Arc<dyn Fs> = Arc::new(MemFs::new());
    let options = WalOptions {
        writer_nice: Some(7),
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open_with_fs(fs.clone(), "/w", options).unwrap();
    wal.append(0, b"x".to_vec())
        .unwrap()
        .durable
        .wait()
        .unwrap();
    assert_eq!(wal.stats().writer_nice, Some(7));
    assert!(thread_nices("keelmq-wal-writ").contains(&7));
    wal.close().unwrap();

    let options = WalOptions {
        writer_nice: None,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open_with_fs(fs, "/w", options).unwrap();
    wal.append(0, b"y".to_vec())
        .unwrap()
        .durable
        .wait()
        .unwrap();
    assert_eq!(wal.stats().writer_nice, None);
    wal.close().unwrap();
}

#[test]
fn interval_and_never_policies_complete_before_sync_and_sync_on_demand() {
    for policy in [SyncPolicy::IntervalMs(20), SyncPolicy::Never] {
        let fs = MemFs::new();
        let options = WalOptions {
            sync_policy: policy,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open_with_fs(Arc::new(fs.clone()), "/w", options.clone()).unwrap();
        for id in 1..=10u64 {
            append_durable(&wal, id);
        }
        match policy {
            SyncPolicy::IntervalMs(_) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while wal.durable_seq() < 10 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "interval sync never happened"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            _ => {
                assert_eq!(wal.durable_seq(), 0, "Never does not sync records");
                assert_eq!(wal.sync().unwrap(), 10);
                assert_eq!(wal.durable_seq(), 10);
            }
        }
        // Whatever was synced survives a crash that drops everything unsynced.
        fs.crash(keelmq_wal::fs::CrashMode::DropUnsynced, 1);
        drop(wal);
        let (wal, recovery) = Wal::open_with_fs(Arc::new(fs), "/w", options).unwrap();
        assert_eq!(recovery.last_seq, 10);
        assert_eq!(read_all(&wal, 1).len(), 10);
    }
}

#[test]
fn strict_mode_refuses_a_torn_tail_that_the_default_mode_repairs() {
    let fs = MemFs::new();
    let (wal, _) = Wal::open_with_fs(Arc::new(fs.clone()), "/w", WalOptions::default()).unwrap();
    for id in 1..=5u64 {
        append_durable(&wal, id);
    }
    let seg = wal.segment_paths()[0].clone();
    wal.close().unwrap();
    let mut bytes = fs.read_file(&seg).unwrap();
    let full_len = bytes.len();
    bytes.truncate(full_len - 3);
    fs.write_file_durable(&seg, &bytes);

    let strict = WalOptions {
        recovery_mode: RecoveryMode::Strict,
        ..WalOptions::default()
    };
    match Wal::open_with_fs(Arc::new(fs.clone()), "/w", strict) {
        Err(Error::Corruption { segment, .. }) => assert_eq!(segment, seg),
        other => panic!("strict mode accepted a torn tail: {other:?}"),
    }
    assert_eq!(
        fs.read_file(&seg).unwrap().len(),
        full_len - 3,
        "strict mode changes nothing"
    );

    let (wal, recovery) =
        Wal::open_with_fs(Arc::new(fs.clone()), "/w", WalOptions::default()).unwrap();
    let torn = recovery.torn_tail.expect("torn tail reported");
    assert_eq!(torn.segment, seg);
    assert_eq!(torn.offset + torn.bytes_dropped, (full_len - 3) as u64);
    assert_eq!(recovery.last_seq, 4);
    assert_eq!(read_all(&wal, 1).len(), 4);
    assert_eq!(fs.read_file(&seg).unwrap().len() as u64, torn.offset);
}

#[test]
fn skip_corrupt_mode_returns_what_verifies_around_damage() {
    let fs = MemFs::new();
    let (wal, _) = Wal::open_with_fs(Arc::new(fs.clone()), "/w", small_segments()).unwrap();
    for id in 1..=60u64 {
        append_durable(&wal, id);
    }
    let segs = wal.segment_paths();
    wal.close().unwrap();
    // Damage one record in the middle of the first segment.
    fs.flip_bit(&segs[0], 32 + 30, 3).unwrap();

    assert!(matches!(
        Wal::open_with_fs(Arc::new(fs.clone()), "/w", small_segments()),
        Err(Error::Corruption { .. })
    ));
    let skip = WalOptions {
        recovery_mode: RecoveryMode::SkipCorrupt,
        ..small_segments()
    };
    let (wal, recovery) = Wal::open_with_fs(Arc::new(fs), "/w", skip).unwrap();
    assert_eq!(recovery.skipped.len(), 1);
    assert_eq!(recovery.skipped[0].segment, segs[0]);
    let records = read_all(&wal, 1);
    assert_eq!(records.len(), 59);
    assert!(records
        .iter()
        .all(|r| check_payload(&r.payload) == Some(r.seq)));
    assert!(records.iter().all(|r| r.seq != 1));
}

#[test]
fn a_torn_segment_creation_is_removed_and_its_number_never_reused() {
    let fs = MemFs::new();
    let options = small_segments();
    let (wal, _) = Wal::open_with_fs(Arc::new(fs.clone()), "/w", options.clone()).unwrap();
    for id in 1..=3u64 {
        append_durable(&wal, id);
    }
    wal.close().unwrap();
    // What a crash in the middle of creating segment 5 can leave: half a header.
    let torn = PathBuf::from("/w/0000000000000005.wal");
    fs.write_file_durable(&torn, b"KEELMQ");
    let (wal, recovery) = Wal::open_with_fs(Arc::new(fs.clone()), "/w", options).unwrap();
    assert_eq!(recovery.last_seq, 3);
    assert_eq!(
        recovery.torn_tail.as_ref().map(|t| t.segment.clone()),
        Some(torn.clone())
    );
    assert!(fs.read_file(&torn).is_err(), "the torn file is removed");
    for id in 4..=40u64 {
        append_durable(&wal, id);
    }
    let paths = wal.segment_paths();
    assert!(paths.len() > 2);
    assert!(
        !paths.contains(&torn),
        "segment number 5 must not be reused"
    );
    assert_eq!(read_all(&wal, 1).len(), 40);
}

#[test]
fn lazy_appends_ride_on_the_next_sync_or_the_delay() {
    on_both("lazy", |fs, dir| {
        let (wal, _) = Wal::open_with_fs(fs.clone(), &dir, WalOptions::default()).unwrap();
        // Alone, a lazy record still becomes durable, within about LAZY_SYNC_DELAY.
        let started = std::time::Instant::now();
        let lazy = wal.append_lazy(3, payload_for(1)).unwrap();
        assert_eq!(lazy.durable.wait().unwrap(), 1);
        assert!(started.elapsed() >= keelmq_wal::LAZY_SYNC_DELAY / 2);
        // Lazy records followed by one that needs a sync: one fdatasync covers all of them.
        let before = wal.stats().fsyncs;
        let lazies: Vec<_> = (2..=10)
            .map(|id| wal.append_lazy(3, payload_for(id)).unwrap())
            .collect();
        let strict = wal.append(4, payload_for(11)).unwrap();
        assert_eq!(strict.durable.wait().unwrap(), 11);
        for (i, l) in lazies.into_iter().enumerate() {
            assert_eq!(l.seq, i as u64 + 2);
            assert_eq!(l.durable.try_get().map(|r| r.unwrap()), Some(l.seq));
        }
        let fsyncs = wal.stats().fsyncs - before;
        assert!(fsyncs <= 2, "{fsyncs} fdatasyncs for 10 records");
        // An explicit sync and a close write buffered lazy records too.
        let l = wal.try_append_lazy(3, payload_for(12)).unwrap();
        assert_eq!(wal.sync().unwrap(), 12);
        assert_eq!(l.durable.wait().unwrap(), 12);
        let last = wal.append_lazy(3, payload_for(13)).unwrap();
        wal.close().unwrap();
        assert_eq!(last.durable.wait().unwrap(), 13);
        let (wal, recovery) = Wal::open_with_fs(fs, &dir, WalOptions::default()).unwrap();
        assert_eq!(recovery.last_seq, 13);
        let records = read_all(&wal, 1);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(check_payload(&r.payload), Some(i as u64 + 1));
        }
    });
}

#[test]
fn a_new_segment_never_takes_a_spare_s_number() {
    // A spare holds frames written under its number; if that number went to a new segment
    // started in the same file, they would verify again. Only lost segment files can bring the
    // numbers that close, so remove them by hand.
    let fs = MemFs::new();
    let options = small_segments();
    let (wal, _) = Wal::open_with_fs(Arc::new(fs.clone()), "/w", options.clone()).unwrap();
    let mut next = 1u64;
    while wal.stats().rotations < 6 {
        append_durable(&wal, next);
        next += 1;
    }
    wal.truncate_through(next - 1).unwrap();
    wal.close().unwrap();
    let dyn_fs: Arc<dyn Fs> = Arc::new(fs.clone());
    let (segments, spares) = files_by_kind(&dyn_fs, Path::new("/w"));
    assert_eq!(spares.len(), options.spare_segments);
    for segment in &segments {
        fs.remove_file(segment).unwrap();
    }
    fs.sync_dir(Path::new("/w")).unwrap();
    let (wal, recovery) = Wal::open_with_fs(dyn_fs.clone(), "/w", options).unwrap();
    assert_eq!(recovery.last_seq, 0, "the records went with their segments");
    for seq in 1..=100u64 {
        append_durable(&wal, seq);
    }
    let records = read_all(&wal, 1);
    assert_eq!(records.len(), 100);
    assert!(records
        .iter()
        .all(|r| check_payload(&r.payload) == Some(r.seq)));
    let newest_spare = spares.last().unwrap().file_stem().unwrap().to_owned();
    for path in wal.segment_paths() {
        assert!(path.file_stem().unwrap() > newest_spare.as_os_str());
    }
    wal.close().unwrap();
}

#[test]
fn a_spare_removed_by_hand_is_replaced_by_a_new_segment() {
    let fs = MemFs::new();
    let options = small_segments();
    let (wal, _) = Wal::open_with_fs(Arc::new(fs.clone()), "/w", options).unwrap();
    let dyn_fs: Arc<dyn Fs> = Arc::new(fs.clone());
    let mut next = 1u64;
    while files_by_kind(&dyn_fs, Path::new("/w")).1.is_empty() {
        append_durable(&wal, next);
        wal.truncate_through(next).unwrap();
        next += 1;
    }
    for spare in files_by_kind(&dyn_fs, Path::new("/w")).1 {
        fs.remove_file(&spare).unwrap();
    }
    let rotations = wal.stats().rotations;
    while wal.stats().rotations < rotations + 3 {
        append_durable(&wal, next);
        next += 1;
    }
    assert!(wal.poisoned().is_none());
    let records = read_all(&wal, wal.first_seq());
    assert_eq!(records.last().map(|r| r.seq), Some(next - 1));
    wal.close().unwrap();
}

/// A log whose commit window (one second) is far longer than anything else a test waits for,
/// so whether a record was held shows in how long its durability took.
fn windowed(fs: Arc<dyn Fs>, dir: &Path) -> Wal {
    let options = WalOptions {
        commit_window: Duration::from_secs(1),
        ..WalOptions::default()
    };
    Wal::open_with_fs(fs, dir, options).unwrap().0
}

/// Appends records back to back without waiting, so that fdatasyncs cover several: the
/// writer then sees others appending and holds the next batch for its window.
fn busy_appends(wal: &Wal, count: u64) {
    let appended: Vec<_> = (0..count)
        .map(|i| wal.append(0, payload_for(i)).unwrap())
        .collect();
    for a in appended {
        assert_eq!(a.durable.wait().unwrap(), a.seq);
    }
}

/// How long one append takes to become durable.
fn one_append(wal: &Wal, id: u64) -> Duration {
    let started = std::time::Instant::now();
    let a = wal.append(0, payload_for(id)).unwrap();
    assert_eq!(a.durable.wait().unwrap(), a.seq);
    started.elapsed()
}

#[test]
fn a_commit_window_holds_a_batch_while_others_append_and_never_a_lone_appender() {
    on_both("window-hold", |fs, dir| {
        let wal = windowed(fs, &dir);
        // A lone appender that waits for each record is never held.
        for id in 0..20 {
            assert!(one_append(&wal, id) < Duration::from_millis(500));
        }
        // Once a sync covered several records, the next batch waits for its window...
        busy_appends(&wal, 200);
        let held = one_append(&wal, 1000);
        assert!(held >= Duration::from_millis(900), "held for {held:?}");
        // ...and after a sync that covered one record, the next is not held again.
        assert!(one_append(&wal, 1001) < Duration::from_millis(500));
        let records = read_all(&wal, 1);
        assert_eq!(records.len(), 222);
        assert!(records.iter().all(|r| check_payload(&r.payload).is_some()));
    });
}

#[test]
fn expedite_ends_a_commit_window_at_once() {
    on_both("window-expedite", |fs, dir| {
        let wal = Arc::new(windowed(fs, &dir));
        busy_appends(&wal, 200);
        let expediter = {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                wal.expedite();
            })
        };
        let took = one_append(&wal, 1000);
        expediter.join().unwrap();
        assert!(took < Duration::from_millis(900), "took {took:?}");
        assert_eq!(wal.stats().records, 201);
    });
}

#[test]
fn a_commit_window_ends_once_appends_stop_for_its_quiet_time() {
    on_both("window-quiet", |fs, dir| {
        let options = WalOptions {
            commit_window: Duration::from_secs(1),
            commit_quiet: Duration::from_millis(100),
            ..WalOptions::default()
        };
        let wal = Arc::new(Wal::open_with_fs(fs, &dir, options).unwrap().0);
        busy_appends(&wal, 200);
        // Held, with nothing appended after it: written once the log was quiet for 100 ms.
        let took = one_append(&wal, 1000);
        assert!(took >= Duration::from_millis(90), "took {took:?}");
        assert!(took < Duration::from_millis(900), "took {took:?}");
        // Appends that keep coming closer than the quiet time keep the window open: with a
        // record every 20 ms for 300 ms, the held one waits until 100 ms after the last.
        busy_appends(&wal, 200);
        let appender = {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..15u64)
                    .map(|i| {
                        std::thread::sleep(Duration::from_millis(20));
                        wal.append(0, payload_for(2000 + i)).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        };
        let took = one_append(&wal, 1001);
        assert!(took >= Duration::from_millis(290), "took {took:?}");
        for a in appender.join().unwrap() {
            assert_eq!(a.durable.wait().unwrap(), a.seq);
        }
        assert_eq!(wal.stats().records, 417);
    });
}

#[test]
fn a_commit_window_longer_than_allowed_is_refused() {
    let options = WalOptions {
        commit_window: keelmq_wal::MAX_COMMIT_WINDOW + Duration::from_millis(1),
        ..WalOptions::default()
    };
    let err = Wal::open_with_fs(Arc::new(MemFs::new()), "/wal", options).unwrap_err();
    assert!(err.to_string().contains("commit_window"), "{err}");
}
