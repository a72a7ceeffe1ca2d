//! Model-based randomized test: random appends (a third of them lazy), waits, truncations, crashes, fsync failures,
//! full disks and reopens against a plain `Vec` model of the log.
//!
//! Invariant after every crash or reopen: the recovered records are exactly the model's
//! records up to some sequence number (a prefix, in order, no gap, contents equal), and that
//! prefix includes every record whose durability was reported. Comparing contents exactly
//! also means no record that fails its checksum can slip through.
//!
//! Seeded: the seed is printed; `KEELMQ_WAL_SEED=<seed>` replays a run.
//! `KEELMQ_WAL_SOAK=1` runs many more cases.

mod common;

use std::sync::Arc;

use common::{seed, soak, Rng};
use keelmq_wal::fs::{CrashMode, MemFs};
use keelmq_wal::{Durable, Error, SyncPolicy, Wal, WalOptions};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    record_type: u8,
    payload: Vec<u8>,
}

struct Model {
    /// `log[i]` is the record with sequence number `i + 1`.
    log: Vec<Entry>,
    /// Highest sequence number reported durable.
    acked: u64,
    /// Highest sequence number passed to `truncate_through`.
    checkpoint: u64,
}

struct Harness {
    rng: Rng,
    fs: MemFs,
    options: WalOptions,
    wal: Option<Wal>,
    pending: Vec<(u64, Durable)>,
    model: Model,
}

const CRASH_MODES: [CrashMode; 3] = [
    CrashMode::DropUnsynced,
    CrashMode::KeepRandomPart,
    CrashMode::TearLastWrite,
];

impl Harness {
    fn wal(&self) -> &Wal {
        self.wal.as_ref().expect("wal is open")
    }

    fn always(&self) -> bool {
        self.options.sync_policy == SyncPolicy::Always
    }

    fn append(&mut self) {
        let record_type = self.rng.below(256) as u8;
        let len = self.rng.below(200) as usize;
        let payload = self.rng.bytes(len);
        // A third are lazy appends: held back for a later sync, but the same invariant holds
        // (a crash loses them only with everything after them; a reported one is durable).
        let appended = if self.rng.chance(33) {
            self.wal().append_lazy(record_type, payload.clone())
        } else {
            self.wal().append(record_type, payload.clone())
        };
        match appended {
            Ok(appended) => {
                assert_eq!(
                    appended.seq as usize,
                    self.model.log.len() + 1,
                    "sequence is dense"
                );
                self.model.log.push(Entry {
                    record_type,
                    payload,
                });
                self.pending.push((appended.seq, appended.durable));
            }
            Err(Error::Poisoned { .. }) => self.restart(false),
            Err(other) => panic!("append failed: {other}"),
        }
    }

    /// Waits for pending appends; an `Ok` under `Always` is a durability report.
    fn wait_pending(&mut self) {
        let mut poisoned = false;
        let always = self.always();
        for (seq, durable) in self.pending.drain(..) {
            match durable.wait() {
                Ok(s) => {
                    assert_eq!(s, seq);
                    if always {
                        self.model.acked = self.model.acked.max(seq);
                    }
                }
                Err(Error::Poisoned { .. }) => poisoned = true,
                Err(other) => panic!("unexpected completion error: {other}"),
            }
        }
        if poisoned {
            self.restart(false);
        }
    }

    fn truncate(&mut self) {
        let through = self.rng.below(self.model.log.len() as u64 + 1);
        match self.wal().truncate_through(through) {
            Ok(_) => self.model.checkpoint = self.model.checkpoint.max(through),
            Err(Error::Poisoned { .. }) => self.restart(false),
            Err(other) => panic!("truncate failed: {other}"),
        }
    }

    fn sync(&mut self) {
        match self.wal().sync() {
            Ok(durable) => {
                assert!(durable as usize <= self.model.log.len());
                self.model.acked = self.model.acked.max(durable);
            }
            Err(Error::Poisoned { .. }) => self.restart(false),
            Err(other) => panic!("sync failed: {other}"),
        }
    }

    /// Reads the live log and compares it with the model.
    fn check_live(&mut self) {
        let wal = self.wal.as_ref().expect("wal is open");
        let from = self.model.checkpoint + 1;
        let records: Vec<_> = match wal.read_from(from) {
            Ok(reader) => reader.collect::<Result<_, _>>().expect("live read"),
            Err(e) => panic!("read_from({from}) failed: {e}"),
        };
        // Records still being written may be missing at the end, nothing else.
        for (i, r) in records.iter().enumerate() {
            let seq = from + i as u64;
            assert_eq!(r.seq, seq);
            let want = &self.model.log[seq as usize - 1];
            assert_eq!(
                (r.record_type, &r.payload),
                (want.record_type, &want.payload)
            );
        }
    }

    /// A few single appends against a nearly full disk: each one either succeeds or fails
    /// with NoSpace and releases its sequence number.
    fn enospc_burst(&mut self) {
        self.wait_pending();
        if self.wal.is_none() {
            return;
        }
        let limit = self.fs.used_bytes() + self.rng.below(600);
        self.fs.set_space_limit(Some(limit));
        for _ in 0..1 + self.rng.below(5) {
            let len = self.rng.below(300) as usize;
            let payload = self.rng.bytes(len);
            let appended = match self.wal().append(1, payload.clone()) {
                Ok(a) => a,
                Err(Error::Poisoned { .. }) => break,
                Err(other) => panic!("append failed: {other}"),
            };
            assert_eq!(appended.seq as usize, self.model.log.len() + 1);
            match appended.durable.wait() {
                Ok(seq) => {
                    self.model.log.push(Entry {
                        record_type: 1,
                        payload,
                    });
                    if self.always() {
                        self.model.acked = seq;
                    }
                }
                Err(Error::NoSpace { .. }) => {
                    assert_eq!(
                        self.wal().last_seq() as usize,
                        self.model.log.len(),
                        "rewound"
                    );
                    assert!(self.wal().poisoned().is_none());
                }
                Err(other) => panic!("unexpected error under ENOSPC: {other}"),
            }
        }
        self.fs.set_space_limit(None);
    }

    fn fsync_failure(&mut self) {
        self.fs.fail_sync_after(self.rng.below(3));
        for _ in 0..1 + self.rng.below(4) {
            self.append();
        }
        self.wait_pending();
        // Clear the fault if it did not fire, so it cannot fire during recovery.
        self.fs.fail_sync_after(u64::MAX);
    }

    fn crash(&mut self) {
        // Completions already observed count as reports.
        for (seq, durable) in &self.pending {
            if let Some(Ok(_)) = durable.try_get() {
                if self.always() {
                    self.model.acked = self.model.acked.max(*seq);
                }
            }
        }
        let mode = CRASH_MODES[self.rng.below(3) as usize];
        let crash_seed = self.rng.next_u64();
        self.fs.crash(mode, crash_seed);
        self.restart(true);
    }

    /// Closes (or abandons, after a crash) the log, reopens it and checks the invariant.
    fn restart(&mut self, crashed: bool) {
        self.pending.clear();
        if let Some(wal) = self.wal.take() {
            let result = wal.close();
            if !crashed && result.is_ok() {
                // A clean close syncs everything.
                self.model.acked = self.model.log.len() as u64;
            }
        }
        self.fs.fail_sync_after(u64::MAX);
        let (wal, recovery) =
            Wal::open_with_fs(Arc::new(self.fs.clone()), "/wal", self.options.clone())
                .unwrap_or_else(|e| panic!("reopen failed: {e}"));
        let last = recovery.last_seq;
        assert!(
            last >= self.model.acked,
            "lost acknowledged records: recovered through {last}, acked through {}",
            self.model.acked
        );
        assert!(
            last as usize <= self.model.log.len(),
            "recovered records never appended"
        );
        assert!(
            recovery.first_seq <= self.model.checkpoint + 1,
            "truncated past the checkpoint"
        );
        assert!(recovery.skipped.is_empty());
        let records: Vec<_> = wal
            .read_from(recovery.first_seq)
            .expect("read_from first_seq")
            .collect::<Result<_, _>>()
            .expect("recovered log reads back");
        assert_eq!(records.len() as u64, last + 1 - recovery.first_seq);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, recovery.first_seq + i as u64, "gap or reorder");
            let want = &self.model.log[r.seq as usize - 1];
            assert_eq!(
                (r.record_type, &r.payload),
                (want.record_type, &want.payload),
                "seq {}",
                r.seq
            );
        }
        self.model.log.truncate(last as usize);
        // Opening syncs what it recovered, so all of it is durable from here on.
        self.model.acked = last;
        self.wal = Some(wal);
    }
}

fn run_case(seed: u64) {
    let mut rng = Rng::new(seed);
    let options = WalOptions {
        segment_size_bytes: 256 + rng.below(4096),
        sync_policy: match rng.below(20) {
            0..=13 => SyncPolicy::Always,
            14..=16 => SyncPolicy::Never,
            _ => SyncPolicy::IntervalMs(1 + rng.below(5)),
        },
        max_batch_records: 1 + rng.below(16) as usize,
        spare_segments: rng.below(4) as usize,
        ..WalOptions::default()
    };
    let fs = MemFs::new();
    let (wal, _) = Wal::open_with_fs(Arc::new(fs.clone()), "/wal", options.clone()).unwrap();
    let mut h = Harness {
        rng,
        fs,
        options,
        wal: Some(wal),
        pending: Vec::new(),
        model: Model {
            log: Vec::new(),
            acked: 0,
            checkpoint: 0,
        },
    };
    for _ in 0..150 {
        match h.rng.below(100) {
            0..=44 => {
                for _ in 0..1 + h.rng.below(6) {
                    h.append();
                }
            }
            45..=59 => h.wait_pending(),
            60..=64 => h.sync(),
            65..=71 => h.truncate(),
            72..=77 => h.check_live(),
            78..=88 => h.crash(),
            89..=91 => h.enospc_burst(),
            92..=94 => h.fsync_failure(),
            _ => h.restart(false),
        }
    }
    h.crash();
}

/// Prints the failing case's seed when a case panics.
struct SeedReport(u64);

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("model case failed: replay with KEELMQ_WAL_SEED={}", self.0);
        }
    }
}

#[test]
fn random_operations_against_a_model() {
    let base = seed("random_operations_against_a_model");
    let cases = if std::env::var("KEELMQ_WAL_SEED").is_ok() {
        1
    } else if soak() {
        2000
    } else {
        60
    };
    for i in 0..cases {
        let case_seed = base.wrapping_add(i);
        let _report = SeedReport(case_seed);
        run_case(case_seed);
    }
}
