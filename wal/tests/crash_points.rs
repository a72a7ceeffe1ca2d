//! Exhaustive crash points: record the file-system trace of a few hundred WAL operations,
//! then crash after every prefix of it (every write, set_len, fsync, create, remove boundary)
//! in every crash mode, recover, and check that no acknowledged record is lost and nothing
//! but a gap-free prefix of what was appended comes back.

mod common;

use std::sync::{Arc, Mutex};

use common::{check_payload, payload_for, soak, Rng};
use keelmq_wal::fs::{CrashMode, MemFs};
use keelmq_wal::{Wal, WalOptions};

const DIR: &str = "/wal";

fn options() -> WalOptions {
    WalOptions {
        // Small segments so the trace crosses many rotations and truncations.
        segment_size_bytes: 2048,
        ..WalOptions::default()
    }
}

struct Recorded {
    trace: Vec<keelmq_wal::fs::TraceOp>,
    /// (seq, trace length when its durability was reported).
    acks: Vec<(u64, usize)>,
    /// (through, trace length when the truncation was issued).
    truncations: Vec<(u64, usize)>,
    appended: u64,
}

fn record_trace(seed: u64, operations: usize) -> Recorded {
    let mut rng = Rng::new(seed);
    let fs = MemFs::new();
    fs.start_trace();
    let (wal, _) = Wal::open_with_fs(Arc::new(fs.clone()), DIR, options()).unwrap();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let mut truncations = Vec::new();
    let mut appended = 0u64;
    let mut waiters = Vec::new();
    for _ in 0..operations {
        match rng.below(10) {
            0..=6 => {
                let a = wal.append(2, payload_for(appended + 1)).unwrap();
                appended += 1;
                assert_eq!(a.seq, appended);
                let (acks, fs) = (Arc::clone(&acks), fs.clone());
                let (tx, rx) = std::sync::mpsc::channel();
                // Runs on the writer thread right after the fdatasync: the trace length then
                // is the earliest crash point at which this record must survive.
                a.durable.on_complete(move |r| {
                    let seq = r.unwrap();
                    acks.lock().unwrap().push((seq, fs.trace_len()));
                    let _ = tx.send(());
                });
                waiters.push(rx);
            }
            7..=8 => {
                for rx in waiters.drain(..) {
                    rx.recv().unwrap();
                }
            }
            _ => {
                let through = rng.below(appended + 1);
                truncations.push((through, fs.trace_len()));
                wal.truncate_through(through).unwrap();
            }
        }
    }
    wal.close().unwrap();
    let acks = acks.lock().unwrap().clone();
    Recorded {
        trace: fs.trace(),
        acks,
        truncations,
        appended,
    }
}

fn check_recovery(fs: MemFs, rec: &Recorded, k: usize, what: &str) {
    let acked = rec
        .acks
        .iter()
        .filter(|(_, at)| *at <= k)
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(0);
    let truncated = rec
        .truncations
        .iter()
        .filter(|(_, at)| *at <= k)
        .map(|(t, _)| *t)
        .max()
        .unwrap_or(0);
    let (wal, recovery) = Wal::open_with_fs(Arc::new(fs), DIR, options())
        .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
    assert!(
        recovery.last_seq >= acked,
        "{what}: lost acked records: last {} < acked {acked}",
        recovery.last_seq
    );
    assert!(
        recovery.last_seq <= rec.appended,
        "{what}: records never appended"
    );
    assert!(
        recovery.first_seq <= truncated + 1,
        "{what}: truncated past a checkpoint"
    );
    let mut expected = recovery.first_seq;
    for r in wal.read_from(recovery.first_seq).unwrap() {
        let r = r.unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
        assert_eq!(r.seq, expected, "{what}: gap");
        assert_eq!(
            check_payload(&r.payload),
            Some(r.seq),
            "{what}: wrong payload at {}",
            r.seq
        );
        expected += 1;
    }
    assert_eq!(
        expected,
        recovery.last_seq + 1,
        "{what}: read_from ended early"
    );
    // The recovered log accepts appends that continue the sequence.
    let next = wal.append(2, payload_for(recovery.last_seq + 1)).unwrap();
    assert_eq!(next.seq, recovery.last_seq + 1);
    next.durable.wait().unwrap();
    wal.close().unwrap();
}

#[test]
fn crash_at_every_write_and_fsync_boundary() {
    let operations = if soak() { 1500 } else { 300 };
    let seeds_per_mode = if soak() { 8 } else { 2 };
    let seed = common::seed("crash_at_every_write_and_fsync_boundary");
    let rec = record_trace(seed, operations);
    assert!(
        rec.acks.len() > 100 && rec.trace.len() > 200,
        "trace too small to mean much"
    );
    // The trace must cover recycling: a checkpointed segment renamed to a spare, and a
    // rotation that renames a spare into place.
    let renames_to = |ext: &str| {
        rec.trace.iter().any(|op| {
            matches!(op, keelmq_wal::fs::TraceOp::Rename { to, .. }
                if to.extension() == Some(ext.as_ref()))
        })
    };
    assert!(
        renames_to("spare") && renames_to("wal"),
        "the trace never recycles a segment"
    );
    eprintln!(
        "trace of {} operations, {} fs ops",
        operations,
        rec.trace.len()
    );

    let base = MemFs::new();
    let mut rng = Rng::new(seed ^ 0xC0FFEE);
    for k in 0..=rec.trace.len() {
        if k > 0 {
            base.apply(&rec.trace[k - 1]).unwrap();
        }
        if k == 0 {
            continue; // nothing exists yet: recovery would just create a fresh log
        }
        let crashed = base.deep_copy();
        crashed.crash(CrashMode::DropUnsynced, 0);
        check_recovery(crashed, &rec, k, &format!("op {k} DropUnsynced"));
        for mode in [CrashMode::KeepRandomPart, CrashMode::TearLastWrite] {
            for _ in 0..seeds_per_mode {
                let crash_seed = rng.next_u64();
                let crashed = base.deep_copy();
                crashed.crash(mode, crash_seed);
                check_recovery(
                    crashed,
                    &rec,
                    k,
                    &format!("op {k} {mode:?} crash seed {crash_seed}"),
                );
            }
        }
    }
}
