//! Injected fsync failures and a full disk.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{append_durable, check_payload, payload_for, read_all};
use keelmq_wal::fs::{CrashMode, MemFs};
use keelmq_wal::{Error, Wal, WalOptions};

fn open(fs: &MemFs, options: WalOptions) -> Wal {
    Wal::open_with_fs(Arc::new(fs.clone()), "/w", options)
        .unwrap()
        .0
}

#[test]
fn failed_fdatasync_poisons_pending_and_later_appends_and_is_never_retried() {
    let fs = MemFs::new();
    let wal = open(&fs, WalOptions::default());
    for id in 1..=10u64 {
        append_durable(&wal, id);
    }
    fs.fail_sync_after(0);
    let failed = wal.append(0, payload_for(11)).unwrap();
    assert!(matches!(
        failed.durable.wait(),
        Err(Error::Poisoned {
            op: "fdatasync",
            ..
        })
    ));
    // The fault was one-shot: the file system works again, but the log must not.
    assert!(matches!(
        wal.append(0, payload_for(12)),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(wal.sync(), Err(Error::Poisoned { .. })));
    assert!(matches!(
        wal.truncate_through(5),
        Err(Error::Poisoned { .. })
    ));
    assert!(wal.poisoned().is_some());
    assert_eq!(
        wal.durable_seq(),
        10,
        "durable_seq never covers the failed sync"
    );
    assert!(matches!(wal.close(), Err(Error::Poisoned { .. })));

    // What was acknowledged survives a crash; recovery starts fresh after restart.
    fs.crash(CrashMode::DropUnsynced, 7);
    let wal = open(&fs, WalOptions::default());
    let records = read_all(&wal, 1);
    assert!(records.len() >= 10);
    assert!(records
        .iter()
        .all(|r| check_payload(&r.payload) == Some(r.seq)));
}

#[test]
fn failed_directory_fsync_at_rotation_poisons() {
    let fs = MemFs::new();
    let options = WalOptions {
        segment_size_bytes: 512,
        ..WalOptions::default()
    };
    let wal = open(&fs, options);
    let mut failures = 0;
    // Each append syncs once; a rotation adds the seal sync, the header sync and the directory
    // sync. Failing the 3rd sync from now hits a rotation's sync sooner or later.
    fs.fail_sync_after(2);
    for id in 1..=40u64 {
        match wal
            .append(0, payload_for(id))
            .and_then(|a| a.durable.wait())
        {
            Ok(_) => assert_eq!(failures, 0, "an append succeeded after poisoning"),
            Err(Error::Poisoned { .. }) => failures += 1,
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(failures > 0);
    assert!(wal.poisoned().is_some());
}

#[test]
fn enospc_fails_the_batch_cleanly_and_the_log_continues() {
    let fs = MemFs::new();
    let wal = open(&fs, WalOptions::default());
    for id in 1..=20u64 {
        append_durable(&wal, id);
    }
    let used = fs.used_bytes();
    let seg = wal.segment_paths()[0].clone();
    let len_before = fs.read_file(&seg).unwrap().len();
    // Leave room for part of a frame only, so the write is cut short.
    fs.set_space_limit(Some(used + 50));
    let big = vec![7u8; 400];
    let failed = wal.append(0, big.clone()).unwrap();
    assert_eq!(failed.seq, 21);
    match failed.durable.wait() {
        Err(Error::NoSpace { path }) => assert_eq!(path, seg),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(
        fs.read_file(&seg).unwrap().len(),
        len_before,
        "partial frame removed"
    );
    assert!(wal.poisoned().is_none());
    assert_eq!(wal.durable_seq(), 20);
    // The failed record's number is released: the log stays gap-free.
    assert_eq!(wal.last_seq(), 20);
    // A small record still fits.
    let ok = wal.append(0, b"small".as_slice()).unwrap();
    assert_eq!(ok.seq, 21);
    assert_eq!(ok.durable.wait().unwrap(), 21);

    fs.set_space_limit(None);
    let ok = wal.append(0, big).unwrap();
    assert_eq!(ok.durable.wait().unwrap(), 22);
    drop(wal);

    fs.crash(CrashMode::TearLastWrite, 3);
    let wal = open(&fs, WalOptions::default());
    let records = read_all(&wal, 1);
    assert_eq!(records.len(), 22);
    assert!(records[..20]
        .iter()
        .all(|r| check_payload(&r.payload) == Some(r.seq)));
    assert_eq!(records[20].payload, b"small");
    assert_eq!(records[21].payload, vec![7u8; 400]);
}

#[test]
fn enospc_when_creating_a_segment_leaves_no_half_made_file() {
    let fs = MemFs::new();
    let options = WalOptions {
        segment_size_bytes: 1024,
        ..WalOptions::default()
    };
    let wal = open(&fs, options.clone());
    let mut id = 0u64;
    // Fill the first segment almost exactly.
    while wal.segment_paths().len() == 1 {
        id += 1;
        fs.set_space_limit(None);
        append_durable(&wal, id);
        if fs.used_bytes() > 700 {
            break;
        }
    }
    let acked = id;
    // Allow no more growth at all: the next append needs a rotation or more bytes.
    fs.set_space_limit(Some(fs.used_bytes()));
    let mut saw_no_space = false;
    for _ in 0..5 {
        match wal.append(0, vec![1u8; 600]).unwrap().durable.wait() {
            Err(Error::NoSpace { .. }) => saw_no_space = true,
            other => panic!("expected NoSpace, got {other:?}"),
        }
    }
    assert!(saw_no_space);
    assert!(wal.poisoned().is_none());
    assert_eq!(
        fs.files(Path::new("/w")).len(),
        1,
        "no half-made segment left behind"
    );
    fs.set_space_limit(None);
    let next = wal.append(0, vec![1u8; 600]).unwrap();
    assert_eq!(next.seq, acked + 1);
    next.durable.wait().unwrap();
    wal.close().unwrap();
    let wal = open(&fs, options);
    assert_eq!(read_all(&wal, 1).len() as u64, acked + 1);
}

#[test]
fn a_failed_sync_while_reusing_a_spare_poisons_and_loses_nothing() {
    let options = WalOptions {
        segment_size_bytes: 512,
        ..WalOptions::default()
    };
    let spares = |fs: &MemFs| {
        fs.files(Path::new("/w"))
            .iter()
            .filter(|p| p.extension() == Some("spare".as_ref()))
            .count()
    };
    let mut failed_on_a_spare = false;
    for k in 0..16u64 {
        let fs = MemFs::new();
        let wal = open(&fs, options.clone());
        let mut next = 1u64;
        // Checkpoint after every record until a spare exists (each rotation then uses the
        // one the checkpoint before it made).
        while spares(&fs) == 0 {
            append_durable(&wal, next);
            wal.truncate_through(next).unwrap();
            next += 1;
        }
        let acked_before = next - 1;
        fs.fail_sync_after(k);
        let mut acked = acked_before;
        let err = loop {
            match wal
                .append(0, payload_for(next))
                .and_then(|a| a.durable.wait())
            {
                Ok(seq) => acked = seq,
                Err(err) => break err,
            }
            next += 1;
        };
        match &err {
            Error::Poisoned { path, .. } => {
                failed_on_a_spare |= path.extension() == Some("spare".as_ref())
            }
            other => panic!("k={k}: expected a poisoned log, got {other:?}"),
        }
        drop(wal);
        fs.crash(CrashMode::DropUnsynced, k);
        let wal = open(&fs, options.clone());
        let records = read_all(&wal, wal.first_seq());
        assert!(
            wal.last_seq() >= acked,
            "k={k}: lost acknowledged records ({} < {acked})",
            wal.last_seq()
        );
        assert!(records
            .iter()
            .all(|r| check_payload(&r.payload) == Some(r.seq)));
        // The log works again after the restart, through more rotations.
        for _ in 0..30 {
            let seq = wal.last_seq() + 1;
            append_durable(&wal, seq);
        }
    }
    assert!(
        failed_on_a_spare,
        "no injected failure hit the sync of a spare's new header"
    );
}
