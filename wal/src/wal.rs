//! The public handle.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::durable::Durable;
use crate::error::{Error, Result};
use crate::fs::{Fs, StdFs};
use crate::options::WalOptions;
use crate::queue::{Item, Queue};
use crate::reader::WalReader;
use crate::recovery::{recover, Recovery};
use crate::writer::{
    run_completions, Counters, Shared, Writer, COMPLETION_CHANNEL_BATCHES, NICE_UNCHANGED,
};

/// An append that has been queued: its sequence number, and the handle that completes when it
/// is durable.
#[derive(Debug)]
#[must_use = "an append is not durable until its `durable` handle completes"]
pub struct Appended {
    /// The record's sequence number (what a checkpoint refers to).
    pub seq: u64,
    /// Completes with `Ok(seq)` once the record is durable (see [`crate::SyncPolicy`]).
    pub durable: Durable,
}

/// Counters for monitoring and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// fdatasync calls on segments (including the two of each rotation).
    pub fsyncs: u64,
    /// Batches written.
    pub batches: u64,
    /// Records written.
    pub records: u64,
    /// Bytes written (frames, headers included).
    pub bytes: u64,
    /// Segment rotations.
    pub rotations: u64,
    /// Rotations that reused a spare segment instead of creating a file
    /// ([`WalOptions::spare_segments`]).
    pub recycled: u64,
    /// Total time spent in segment fdatasync calls, in microseconds.
    pub sync_micros: u64,
    /// Total time spent writing batches, in microseconds.
    pub write_micros: u64,
    /// The niceness the writer thread runs at, if it changed it ([`WalOptions::writer_nice`]);
    /// `None` if it kept the priority it inherited (not asked, not permitted, or not started
    /// yet).
    pub writer_nice: Option<i32>,
    /// Segment fdatasync latencies, in microseconds.
    pub sync_latency: crate::histogram::HistogramSnapshot,
    /// Records each segment fdatasync made durable.
    pub records_per_sync: crate::histogram::HistogramSnapshot,
}

/// A write-ahead log open for appending. `Send + Sync`: share it behind an `Arc`.
///
/// Dropping it is a clean shutdown (everything queued is written and synced); use
/// [`Wal::close`] to see the outcome.
pub struct Wal {
    shared: Arc<Shared>,
    /// The writer thread, then the completion thread; joined in that order on shutdown.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .field("last_seq", &self.last_seq())
            .field("durable_seq", &self.durable_seq())
            .finish()
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` on the real file system, recovering it
    /// according to `options.recovery_mode`.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, Recovery)> {
        Wal::open_with_fs(Arc::new(StdFs), dir, options)
    }

    /// [`Wal::open`] on any [`Fs`], e.g. [`crate::fs::MemFs`] in tests.
    pub fn open_with_fs(
        fs: Arc<dyn Fs>,
        dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<(Wal, Recovery)> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let (log, recovery) = recover(
            &fs,
            &dir,
            options.recovery_mode,
            options.spare_segments,
            options.first_seq,
        )?;
        let last_seq = log.next_seq - 1;
        let shared = Arc::new(Shared {
            queue: Queue::new(
                log.next_seq,
                options.channel_capacity,
                options.channel_capacity_bytes,
                // Only a commit window's quiet end reads when the last append came.
                !options.commit_quiet.is_zero() && !options.commit_window.is_zero(),
            ),
            durable_seq: last_seq.into(),
            written_seq: last_seq.into(),
            segments: Mutex::new(log.segments.clone()),
            counters: Counters::default(),
            fs,
            dir,
            options,
        });
        let (completions, completion_rx) =
            std::sync::mpsc::sync_channel(COMPLETION_CHANNEL_BATCHES);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let writer = Writer::new(
            Arc::clone(&shared),
            log,
            completions,
            Arc::clone(&in_flight),
        )
        .ok_or(Error::Closed)?;
        let completer = std::thread::Builder::new()
            .name("keelmq-wal-complete".to_string())
            .spawn(move || run_completions(completion_rx, in_flight))
            .map_err(|e| Error::io("spawn completion thread", &shared.dir, e))?;
        let exit = ExitGuard(Arc::clone(&shared));
        let writer = std::thread::Builder::new()
            .name("keelmq-wal-writer".to_string())
            .spawn(move || {
                let _exit = exit;
                writer.run();
            })
            .map_err(|e| Error::io("spawn writer thread", &shared.dir, e))?;
        Ok((
            Wal {
                shared,
                threads: Mutex::new(vec![writer, completer]),
            },
            recovery,
        ))
    }

    /// Appends a record. The sequence number is assigned here, in call order; the returned
    /// [`Durable`] completes once the record is durable. Blocks while the submission queue is
    /// full (back-pressure from the disk). Fails at once if the log is poisoned or closed.
    pub fn append(&self, record_type: u8, payload: impl Into<Vec<u8>>) -> Result<Appended> {
        self.append_inner(record_type, payload.into(), true, false)
    }

    /// Like [`Wal::append`] but fails with [`Error::Full`] instead of blocking, for callers on
    /// an async runtime that must not block a worker thread.
    pub fn try_append(&self, record_type: u8, payload: impl Into<Vec<u8>>) -> Result<Appended> {
        self.append_inner(record_type, payload.into(), false, false)
    }

    /// Appends a record that asks for no fdatasync of its own, for records whose loss in a
    /// crash is harmless (the broker's "delivery acknowledged" records). Under
    /// [`crate::SyncPolicy::Always`] the writer keeps it in its batch buffer until a record that does
    /// need a sync arrives (one fdatasync then covers both), a `sync`, `truncate_through`,
    /// rotation or close, or [`crate::LAZY_SYNC_DELAY`] has passed. It keeps its place in the
    /// sequence: a crash can lose it only together with every record after it, and its
    /// [`crate::Durable`] completes like any other once it is durable.
    pub fn append_lazy(&self, record_type: u8, payload: impl Into<Vec<u8>>) -> Result<Appended> {
        self.append_inner(record_type, payload.into(), true, true)
    }

    /// Ends the writer's current commit window at once (see [`WalOptions::commit_window`]):
    /// someone is waiting on the records already appended, and waiting longer would only
    /// slow them. Cheap when the writer is not holding a batch.
    pub fn expedite(&self) {
        self.shared.queue.expedite();
    }

    /// [`Wal::append_lazy`] that fails with [`Error::Full`] instead of blocking.
    pub fn try_append_lazy(
        &self,
        record_type: u8,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Appended> {
        self.append_inner(record_type, payload.into(), false, true)
    }

    fn append_inner(
        &self,
        record_type: u8,
        payload: Vec<u8>,
        block: bool,
        lazy: bool,
    ) -> Result<Appended> {
        let max = self.shared.options.max_record_bytes;
        if payload.len() > max {
            return Err(Error::RecordTooLarge {
                len: payload.len(),
                max,
            });
        }
        let (seq, durable) = self
            .shared
            .queue
            .push_append(record_type, payload, block, lazy)?;
        Ok(Appended { seq, durable })
    }

    /// Deletes every segment whose records all have sequence numbers `<= seq` (never the
    /// segment being appended to), then fsyncs the directory. Call it only once everything up
    /// to `seq` is durable elsewhere (the LSM store's persisted `applied_seq`). Returns the
    /// number of segments deleted. Waits for the writer thread, so records appended before the
    /// call are written first.
    pub fn truncate_through(&self, seq: u64) -> Result<u64> {
        self.shared
            .queue
            .push_control(|completer| Item::Truncate {
                through: seq,
                completer,
            })?
            .wait()
    }

    /// Blocks until the submission queue has room for a record of `bytes` (another appender may
    /// still take it first): for a caller of [`Wal::try_append`] that got [`Error::Full`]
    /// while holding a lock it must release before it waits.
    pub fn wait_for_room(&self, bytes: usize) -> Result<()> {
        self.shared.queue.wait_for_space(bytes)
    }

    /// Writes and fdatasyncs everything appended so far, whatever the sync policy, and returns
    /// the durable sequence number.
    pub fn sync(&self) -> Result<u64> {
        self.shared
            .queue
            .push_control(|completer| Item::Sync { completer })?
            .wait()
    }

    /// Reads records with sequence numbers `>= from_seq` that were completely written when this
    /// is called. Fails with [`Error::Truncated`] if a checkpoint already deleted some of them.
    pub fn read_from(&self, from_seq: u64) -> Result<WalReader> {
        // Sequence numbers start at 1; 0 means "from the beginning".
        let from_seq = from_seq.max(1);
        let end_seq = self.shared.written_seq.load(Ordering::Acquire);
        WalReader::new(
            Arc::clone(&self.shared.fs),
            self.shared.options.recovery_mode,
            self.shared.segments(),
            from_seq,
            end_seq,
        )
    }

    /// The last sequence number assigned (0 before the first record). It can move back after
    /// an [`Error::NoSpace`] rollback, which releases the failed records' numbers.
    pub fn last_seq(&self) -> u64 {
        self.shared.queue.last_seq()
    }

    /// The last sequence number assigned, read without taking the submission queue's lock
    /// (for monitoring; it may lag by a record being assigned).
    pub fn assigned_seq(&self) -> u64 {
        self.shared.queue.assigned_seq()
    }

    /// Bytes appended and not yet durable: waiting in the submission queue, or written and
    /// not yet covered by an fdatasync. Read without locks (monitoring).
    pub fn bytes_not_durable(&self) -> u64 {
        let unsynced = self.shared.counters.unsynced_bytes.load(Ordering::Relaxed);
        self.shared.queue.queued_bytes() + unsynced
    }

    /// The highest sequence number covered by a completed fdatasync.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// The oldest sequence number still in the log (after truncation).
    pub fn first_seq(&self) -> u64 {
        self.shared
            .segments()
            .first()
            .map_or(self.last_seq() + 1, |s| s.first_seq)
    }

    /// The error that poisoned the log, if it is poisoned.
    pub fn poisoned(&self) -> Option<Error> {
        self.shared.queue.poisoned()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Paths of the segment files in use, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.shared.segments().into_iter().map(|s| s.path).collect()
    }

    /// Monitoring counters.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            rotations: c.rotations.load(Ordering::Relaxed),
            recycled: c.recycled.load(Ordering::Relaxed),
            sync_micros: c.sync_micros.load(Ordering::Relaxed),
            write_micros: c.write_micros.load(Ordering::Relaxed),
            writer_nice: Some(c.writer_nice.load(Ordering::Relaxed))
                .filter(|&n| n != NICE_UNCHANGED),
            sync_latency: c.sync_latency.snapshot(),
            records_per_sync: c.records_per_sync.snapshot(),
        }
    }

    /// Clean shutdown: refuses new appends, writes and syncs everything queued, stops the
    /// writer thread. Returns the poison error if the log was poisoned.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        self.shared.queue.close();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let mut panicked = false;
        for handle in threads {
            panicked |= handle.join().is_err();
        }
        if panicked {
            return Err(Error::Closed);
        }
        match self.shared.queue.poisoned() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::warn!(dir = %self.shared.dir.display(), "WAL closed with an error: {err}");
        }
    }
}

/// Runs when the writer thread ends, however it ends (a panic included): everything still
/// queued fails with [`Error::Closed`] so no appender waits forever.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        for completer in self.0.queue.writer_exited() {
            completer.complete(Err(Error::Closed));
        }
    }
}
