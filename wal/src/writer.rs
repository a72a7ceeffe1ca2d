//! The group-commit writer thread.
//!
//! One thread owns the active segment. Its loop:
//! 1. take every waiting item from the submission queue (bounded by record count and bytes);
//! 2. encode the records back to back into one buffer (rotating first if the segment is full);
//! 3. write the buffer with one positional write, call fdatasync once;
//! 4. complete every record of the batch.
//!
//! While it syncs, new appends pile up in the queue and form the next batch, so the number of
//! records per fdatasync grows with the number of concurrent appenders.
//!
//! Segments: a rotation cuts the old segment to the end of its last record (it may be a
//! recycled file with older bytes after that), syncs it, then starts the new segment in a
//! spare file if there is one (header overwritten and synced, then renamed into place and the
//! directory synced) or in a new file. `truncate_through` renames obsolete segments to spares
//! while fewer than `spare_segments` exist and deletes the rest. A clean shutdown cuts the
//! active segment to its last record too.
//!
//! Failure policy:
//! - fsync/fdatasync failure, or a write failure other than ENOSPC, or failing to undo a
//!   partial write: the log is *poisoned*. Every pending and later append fails; nothing is
//!   retried, because after a failed fsync Linux may have dropped the dirty pages while
//!   marking them clean.
//! - ENOSPC: the partial write is cut off again (`set_len` back to the last frame boundary, then
//!   fdatasync), the batch and everything queued behind it fail with [`Error::NoSpace`], and the
//!   sequence number is rewound so the log stays gap-free. Acknowledged records are untouched.

use crate::histogram::Histogram;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::durable::Completer;
use crate::error::{is_no_space, Error};
use crate::format::{self, FrameMeta, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::fs::{write_all_at, Fs, FsFile};
use crate::options::{RecoveryMode, SyncPolicy, WalOptions};
use crate::queue::{Item, Queue, Take};
use crate::recovery::RecoveredLog;
use crate::segment::{segment_path, spare_path, SegmentInfo};

/// Capacity, in batches, of the channel from the writer to the completion thread. Two or three
/// batches in flight are enough to overlap completing one batch with syncing the next; a
/// bound keeps slow callbacks from growing memory and pushes back on the writer instead.
pub(crate) const COMPLETION_CHANNEL_BATCHES: usize = 4;

/// The longest a lazy record (see [`crate::Wal::append_lazy`]) waits in the writer's buffer
/// for a record that needs a sync before it is written and synced on its own.
pub const LAZY_SYNC_DELAY: Duration = Duration::from_millis(10);

/// Batches this small are completed on the writer thread itself when nothing is queued for
/// the completion thread: with one or two appenders the extra thread hand-off would cost more
/// latency than completing inline.
const INLINE_COMPLETION_MAX: usize = 4;

/// A commit window starts only after an fdatasync that covered at least this many records
/// asking for one: a lone appender that waits for each record before appending the next never
/// fills more than one, and holding its batch would only delay it.
const HOLD_MIN_SYNC_RECORDS: usize = 2;

/// A batch of durable records to complete, in sequence order.
pub(crate) type CompletionBatch = Vec<(u64, Completer)>;

/// What the writer hands to the completion thread: a batch to complete, and the batch's
/// payload buffers to free. Freeing a few hundred buffers that other threads allocated took
/// about 9% of the writer's CPU at 256 appenders; it need not delay the next fdatasync.
pub(crate) type Handoff = (CompletionBatch, Vec<Vec<u8>>);

/// The completion thread's body: completes batches in order. Completing runs callbacks and
/// wakes waiting threads, which is slow enough per record (a futex wake each) that doing it on
/// the writer thread would delay the next batch's write and fdatasync.
pub(crate) fn run_completions(batches: Receiver<Handoff>, in_flight: Arc<AtomicUsize>) {
    for (batch, spent) in batches {
        for (seq, completer) in batch {
            completer.complete(Ok(seq));
        }
        drop(spent);
        in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Counters exposed through [`crate::Wal::stats`].
#[derive(Debug)]
pub(crate) struct Counters {
    pub fsyncs: AtomicU64,
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub rotations: AtomicU64,
    pub recycled: AtomicU64,
    pub sync_micros: AtomicU64,
    pub write_micros: AtomicU64,
    /// The niceness the writer thread set for itself, or [`NICE_UNCHANGED`].
    pub writer_nice: AtomicI32,
    /// Segment fdatasync latencies, in microseconds.
    pub sync_latency: Histogram,
    /// Records each segment fdatasync made durable.
    pub records_per_sync: Histogram,
    /// Bytes written to the active segment and not yet covered by an fdatasync.
    pub unsynced_bytes: AtomicU64,
}

/// [`Counters::writer_nice`] when the writer kept its inherited priority.
pub(crate) const NICE_UNCHANGED: i32 = i32::MIN;

impl Default for Counters {
    fn default() -> Self {
        Counters {
            fsyncs: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            recycled: AtomicU64::new(0),
            sync_micros: AtomicU64::new(0),
            write_micros: AtomicU64::new(0),
            writer_nice: AtomicI32::new(NICE_UNCHANGED),
            sync_latency: Histogram::new(&crate::histogram::SYNC_MICROS_BOUNDS),
            records_per_sync: Histogram::new(&crate::histogram::RECORDS_PER_SYNC_BOUNDS),
            unsynced_bytes: AtomicU64::new(0),
        }
    }
}

/// State shared by the [`crate::Wal`] handle and the writer thread.
pub(crate) struct Shared {
    pub queue: Queue,
    /// Highest sequence number covered by a completed fdatasync.
    pub durable_seq: AtomicU64,
    /// Highest sequence number whose frame is completely in the file (readers stop there).
    pub written_seq: AtomicU64,
    /// The segments in use, oldest first; the writer updates it on rotation and truncation.
    pub segments: Mutex<Vec<SegmentInfo>>,
    pub counters: Counters,
    pub fs: Arc<dyn Fs>,
    pub dir: PathBuf,
    pub options: WalOptions,
}

impl Shared {
    pub(crate) fn segments(&self) -> Vec<SegmentInfo> {
        self.segments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct Active {
    info: SegmentInfo,
    file: Box<dyn FsFile>,
    /// Length of the valid part of the file: where the next frame goes.
    len: u64,
}

enum Failure {
    /// The disk is full; the batch was rolled back and the log is still usable.
    NoSpace(Error),
    /// The log can no longer be trusted.
    Poison(Error),
    /// This one operation failed (deleting a checkpointed segment); the log is fine.
    Failed(Error),
}

impl Failure {
    /// The error, whatever the kind (where any failure poisons the log).
    fn into_error(self) -> Error {
        match self {
            Failure::NoSpace(err) | Failure::Poison(err) | Failure::Failed(err) => err,
        }
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Active,
    segments: Vec<SegmentInfo>,
    /// Number for the next segment file.
    next_segment_seq: u64,
    /// Spare files to start new segments in (see [`WalOptions::spare_segments`]).
    spares: Vec<PathBuf>,
    durable_seq: u64,
    written_seq: u64,
    /// Under `IntervalMs`, when the written-but-unsynced records must be synced.
    sync_deadline: Option<Instant>,
    /// Under `Always`, when the lazy records waiting in `buf` must be written and synced.
    lazy_deadline: Option<Instant>,
    buf: Vec<u8>,
    /// Records encoded in `buf`, waiting to be written and completed.
    pending: CompletionBatch,
    /// Payload buffers of the records in `pending`, already encoded: freed on the completion
    /// thread (see [`Handoff`]).
    spent: Vec<Vec<u8>>,
    /// Records in the last batch written.
    last_batch_len: usize,
    /// While a batch is held for its commit window (see [`WalOptions::commit_window`]): when
    /// it must be written.
    hold_deadline: Option<Instant>,
    /// Records that asked for an fdatasync in the batch being gathered, and in the last one
    /// written: at least [`HOLD_MIN_SYNC_RECORDS`] there means others are appending.
    batch_sync_records: usize,
    prev_sync_records: usize,
    /// Hand-off to the completion thread, and the number of batches it has not finished.
    completions: SyncSender<Handoff>,
    completions_in_flight: Arc<AtomicUsize>,
}

/// Creates a segment file with its header, syncs it, and syncs the directory so the file
/// cannot vanish in a crash. On failure the half-made file is removed again and the removal
/// synced, so that a crash cannot bring back a segment whose sequence numbers are later
/// reused in the previous segment. Errors carry the failed operation; if the cleanup itself
/// fails, the operation is reported as `"remove"`/`"fsync directory"` and the caller must
/// poison the log.
pub(crate) fn create_segment(
    fs: &dyn Fs,
    dir: &Path,
    path: &Path,
    segment_seq: u64,
    first_seq: u64,
) -> Result<Box<dyn FsFile>, (&'static str, std::io::Error)> {
    let mut file = fs.create_new(path).map_err(|e| ("create", e))?;
    let result = write_header(file.as_mut(), segment_seq, first_seq)
        .and_then(|()| fs.sync_dir(dir).map_err(|e| ("fsync directory", e)));
    match result {
        Ok(()) => Ok(file),
        Err(err) => {
            drop(file);
            fs.remove_file(path).map_err(|e| ("remove", e))?;
            fs.sync_dir(dir).map_err(|e| ("fsync directory", e))?;
            Err(err)
        }
    }
}

/// Writes a segment header at offset 0 of `file` and syncs it. Errors carry the operation.
fn write_header(
    file: &mut dyn FsFile,
    segment_seq: u64,
    first_seq: u64,
) -> Result<(), (&'static str, std::io::Error)> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN);
    format::encode_segment_header(
        SegmentHeader {
            segment_seq,
            first_seq,
        },
        &mut header,
    );
    write_all_at(file, &header, 0).map_err(|e| ("write", e))?;
    file.sync_data().map_err(|e| ("fdatasync", e))
}

/// Starts segment `segment_seq` in the spare file `spare`: overwrites its first bytes with
/// the header and syncs them while it is still named a spare (so a crash before the rename
/// leaves an unused spare, never a segment with a stale header), then renames it into place
/// and syncs the directory. The bytes after the header are the old segment's, which can never
/// verify as records of this one. Errors carry the failed operation and the path it was on.
fn reuse_spare(
    fs: &dyn Fs,
    dir: &Path,
    spare: &Path,
    path: &Path,
    segment_seq: u64,
    first_seq: u64,
) -> Result<Box<dyn FsFile>, (&'static str, PathBuf, std::io::Error)> {
    let on_spare = |op| move |e| (op, spare.to_path_buf(), e);
    let mut file = fs.open(spare).map_err(on_spare("open"))?;
    write_header(file.as_mut(), segment_seq, first_seq)
        .map_err(|(op, e)| (op, spare.to_path_buf(), e))?;
    fs.rename(spare, path).map_err(on_spare("rename"))?;
    fs.sync_dir(dir)
        .map_err(|e| ("fsync directory", dir.to_path_buf(), e))?;
    Ok(file)
}

impl Writer {
    /// A writer continuing the log recovery found. `None` only if recovery produced no
    /// segment, which it never does.
    pub(crate) fn new(
        shared: Arc<Shared>,
        log: RecoveredLog,
        completions: SyncSender<Handoff>,
        completions_in_flight: Arc<AtomicUsize>,
    ) -> Option<Writer> {
        let info = log.segments.last()?.clone();
        let last_seq = log.next_seq - 1;
        Some(Writer {
            shared,
            active: Active {
                info,
                file: log.active_file,
                len: log.active_len,
            },
            segments: log.segments,
            next_segment_seq: log.next_segment_seq,
            spares: log.spares,
            durable_seq: last_seq,
            written_seq: last_seq,
            sync_deadline: None,
            lazy_deadline: None,
            buf: Vec::new(),
            pending: Vec::new(),
            spent: Vec::new(),
            last_batch_len: 0,
            hold_deadline: None,
            batch_sync_records: 0,
            prev_sync_records: 0,
            completions,
            completions_in_flight,
        })
    }

    fn options(&self) -> &WalOptions {
        &self.shared.options
    }

    /// Sets this thread's niceness (see [`WalOptions::writer_nice`]). A refusal is not an
    /// error: the log works the same, only acknowledgements wait longer on a busy machine.
    fn set_priority(&self, nice: i32) {
        let thread = rustix::thread::gettid();
        match rustix::process::setpriority_process(Some(thread), nice) {
            Ok(()) => self
                .shared
                .counters
                .writer_nice
                .store(nice, Ordering::Relaxed),
            Err(e) => tracing::info!(
                dir = %self.shared.dir.display(),
                "WAL writer thread keeps its default priority: setting niceness {nice} \
                 failed ({e}); grant CAP_SYS_NICE or raise RLIMIT_NICE for steadier \
                 acknowledgement latency under CPU load"
            ),
        }
    }

    /// The thread body. Returns when the log is closed or poisoned.
    pub(crate) fn run(mut self) {
        if let Some(nice) = self.options().writer_nice {
            self.set_priority(nice);
        }
        let mut items = VecDeque::new();
        // A restart leaves the active segment cut to its last record, so it grows by
        // extending; move to a spare at once if there is one. Recovery synced the old one.
        // (Not in the strict and skip-corrupt modes, which inspection tools use.)
        let repairs = self.options().recovery_mode == RecoveryMode::TolerateTornTail;
        if repairs && !self.spares.is_empty() {
            if let Err(failure) = self.rotate(self.written_seq + 1) {
                self.poison(failure.into_error(), &mut items);
                return;
            }
        }
        loop {
            let took = self.take_next(&mut items);
            match self.step(took, &mut items) {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    self.poison(err, &mut items);
                    return;
                }
            }
        }
    }

    /// Waits for the next batch of items (or a deadline, or the close).
    fn take_next(&mut self, items: &mut VecDeque<Item>) -> Take {
        let max_records = self.options().max_batch_records;
        let max_bytes = self.options().max_batch_bytes;
        let deadline = [self.sync_deadline, self.lazy_deadline, self.hold_deadline]
            .into_iter()
            .flatten()
            .min();
        // Poll before sleeping only while batches are small: then the next append follows
        // the last completion closely and a sleep would add a wake-up to every cycle.
        // Under load the queue is rarely empty, and polling at the writer's raised
        // priority would take the CPU from the threads producing the appends.
        let poll = self.last_batch_len <= INLINE_COMPLETION_MAX;
        let queue = &self.shared.queue;
        match self.hold_deadline {
            // Holding a batch: appends do not wake the writer, the window's end does.
            Some(until) => {
                let room = max_records.saturating_sub(self.pending.len()).max(1);
                let quiet = self.options().commit_quiet;
                queue.take_held(items, (max_records, max_bytes), until, quiet, room)
            }
            None => queue.take(items, max_records, max_bytes, deadline, poll),
        }
    }

    /// Acts on what [`Self::take_next`] returned: `Ok(false)` once the log is closed, `Err`
    /// when it must be poisoned.
    fn step(&mut self, took: Take, items: &mut VecDeque<Item>) -> Result<bool, Error> {
        match took {
            Take::Items => self.process(items)?,
            Take::Timeout if self.lazy_deadline.is_some() || self.hold_deadline.is_some() => {
                // Lazy records waited long enough, or a commit window ended: write and
                // sync what is buffered.
                self.lazy_deadline = None;
                self.hold_deadline = None;
                // An expedite that ended this window is spent.
                self.shared.queue.take_expedited();
                if let Err(failure) = self.commit(false) {
                    self.handle_failure(failure)?;
                }
            }
            Take::Timeout => self.sync().map_err(Failure::into_error)?,
            Take::Closed => {
                // Clean shutdown: write what is buffered and make everything durable,
                // whatever the policy.
                let result = if !self.buf.is_empty() || self.durable_seq < self.written_seq {
                    self.commit(true)
                } else {
                    Ok(())
                };
                result
                    .and_then(|()| self.cut_active())
                    .map_err(Failure::into_error)?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Processes one batch. `Err` means the log is poisoned; the unprocessed rest of the
    /// batch is then left in `items`.
    fn process(&mut self, items: &mut VecDeque<Item>) -> Result<(), Error> {
        // Set after a NoSpace rollback: later appends of this batch fail without being tried,
        // because their sequence numbers were rewound.
        let mut no_space: Option<Error> = None;
        // Whether this batch has anything but lazy appends (control items commit themselves).
        let mut needs_sync = false;
        while let Some(item) = items.pop_front() {
            let sync = !matches!(item, Item::Append { lazy: true, .. });
            needs_sync |= sync;
            self.batch_sync_records += usize::from(sync);
            self.process_item(item, &mut no_space)?;
        }
        if needs_sync && self.holds() {
            return Ok(());
        }
        let hold_lazy = !needs_sync
            && self.options().sync_policy == SyncPolicy::Always
            && self.buf.len() < self.options().max_batch_bytes
            && self.lazy_deadline.is_none_or(|d| Instant::now() < d);
        if hold_lazy {
            // Only lazy records: keep them buffered until a record that needs a sync comes,
            // or the delay runs out.
            if !self.buf.is_empty() && self.lazy_deadline.is_none() {
                self.lazy_deadline = Some(Instant::now() + LAZY_SYNC_DELAY);
            }
            return Ok(());
        }
        self.lazy_deadline = None;
        self.hold_deadline = None;
        if let Err(failure) = self.commit(false) {
            self.handle_failure(failure)?;
        }
        Ok(())
    }

    /// Whether the batch gathered so far waits for more records (its commit window, see
    /// [`WalOptions::commit_window`]), starting the window if the last fdatasync showed others
    /// appending.
    fn holds(&mut self) -> bool {
        let window = self.options().commit_window;
        if window.is_zero() || self.options().sync_policy != SyncPolicy::Always {
            return false;
        }
        let full = self.pending.len() >= self.options().max_batch_records
            || self.buf.len() >= self.options().max_batch_bytes;
        if full || self.shared.queue.take_expedited() {
            return false;
        }
        match self.hold_deadline {
            Some(until) => Instant::now() < until,
            None if self.prev_sync_records >= HOLD_MIN_SYNC_RECORDS => {
                self.hold_deadline = Some(Instant::now() + window);
                true
            }
            None => false,
        }
    }

    fn process_item(&mut self, item: Item, no_space: &mut Option<Error>) -> Result<(), Error> {
        {
            match item {
                Item::Append {
                    seq,
                    record_type,
                    payload,
                    completer,
                    lazy: _,
                } => {
                    if let Some(err) = no_space {
                        completer.complete(Err(err.clone()));
                        return Ok(());
                    }
                    let added = self.add(seq, record_type, &payload, completer);
                    self.spent.push(payload);
                    if let Err(failure) = added {
                        *no_space = Some(self.handle_failure(failure)?);
                    }
                }
                Item::Truncate { through, completer } => {
                    let result = match self.commit(false) {
                        Err(failure) => self.handle_failure(failure).map(|err| {
                            *no_space = Some(err);
                        }),
                        Ok(()) => Ok(()),
                    }
                    .and_then(|()| match self.truncate_through(through) {
                        Ok(removed) => Ok(Ok(removed)),
                        Err(Failure::NoSpace(err) | Failure::Failed(err)) => Ok(Err(err)),
                        Err(Failure::Poison(err)) => Err(err),
                    });
                    match result {
                        Ok(outcome) => completer.complete(outcome),
                        Err(err) => {
                            completer.complete(Err(err.clone()));
                            return Err(err);
                        }
                    }
                }
                Item::Sync { completer } => {
                    let result = match self.commit(true) {
                        Err(failure) => self.handle_failure(failure).map(|err| {
                            *no_space = Some(err);
                        }),
                        Ok(()) => Ok(()),
                    };
                    match result {
                        Ok(()) => completer.complete(Ok(self.durable_seq)),
                        Err(err) => {
                            completer.complete(Err(err.clone()));
                            return Err(err);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns a NoSpace failure into a rewind (returning the error to fail the rest of the
    /// batch with) and passes a poison on.
    fn handle_failure(&mut self, failure: Failure) -> Result<Error, Error> {
        match failure {
            Failure::Poison(err) => Err(err),
            Failure::NoSpace(err) | Failure::Failed(err) => {
                let rewind_to = self.pending.first().map_or(self.written_seq + 1, |p| p.0);
                tracing::warn!(rewind_to, "WAL append batch rolled back: {err}");
                // Rewind before anyone hears of the failure, so a caller that reacts to it
                // already sees the released sequence numbers.
                let queued = self.shared.queue.rewind(rewind_to);
                self.buf.clear();
                self.spent.clear();
                for (_, completer) in self.pending.drain(..) {
                    completer.complete(Err(err.clone()));
                }
                for completer in queued {
                    completer.complete(Err(err.clone()));
                }
                Ok(err)
            }
        }
    }

    /// Fails everything in hand and queued, forever.
    fn poison(&mut self, err: Error, items: &mut VecDeque<Item>) {
        tracing::error!("WAL poisoned, refusing all further appends: {err}");
        // Poison the queue first, so whoever hears of the failure sees a poisoned log.
        let queued = self.shared.queue.poison(err.clone());
        self.spent.clear();
        for (_, completer) in self.pending.drain(..) {
            completer.complete(Err(err.clone()));
        }
        for item in items.drain(..) {
            let completer = match item {
                Item::Append { completer, .. }
                | Item::Truncate { completer, .. }
                | Item::Sync { completer } => completer,
            };
            completer.complete(Err(err.clone()));
        }
        for completer in queued {
            completer.complete(Err(err.clone()));
        }
    }

    /// Encodes one record into the batch buffer, rotating first if it would overflow the
    /// segment. On failure the record is in `pending`, to be failed with the rest.
    fn add(
        &mut self,
        seq: u64,
        record_type: u8,
        payload: &[u8],
        completer: Completer,
    ) -> Result<(), Failure> {
        let frame_len = format::frame_len(payload.len()) as u64;
        let used = self.active.len + self.buf.len() as u64;
        let holds_records = used > SEGMENT_HEADER_LEN as u64;
        if holds_records && used + frame_len > self.options().segment_size_bytes {
            let rotating = Instant::now();
            let rotated = self.commit(true).and_then(|()| self.rotate(seq));
            tracing::debug!(
                micros = rotating.elapsed().as_micros() as u64,
                segment = self.active.info.segment_seq,
                "WAL segment rotated"
            );
            if let Err(failure) = rotated {
                self.pending.push((seq, completer));
                return Err(failure);
            }
        }
        let meta = FrameMeta {
            seq,
            durable_seq: self.durable_seq,
            record_type,
        };
        format::encode_record(self.active.info.segment_seq, meta, payload, &mut self.buf);
        self.pending.push((seq, completer));
        Ok(())
    }

    /// What a failed write of the buffer at `start` means: a full disk rolls the partial frames
    /// back (durably, so no half-written record can ever be read back) and leaves the log
    /// usable; any other error, or a failed rollback, poisons it.
    fn failed_write(&mut self, start: u64, err: std::io::Error) -> Failure {
        let path = &self.active.info.path;
        if !is_no_space(&err) {
            return Failure::Poison(Error::poisoned("write", path, err));
        }
        let undo = self
            .active
            .file
            .set_len(start)
            .map_err(|e| ("truncate", e))
            .and_then(|()| self.active.file.sync_data().map_err(|e| ("fdatasync", e)));
        if let Err((op, e)) = undo {
            return Failure::Poison(Error::poisoned(op, path, e));
        }
        let path = path.clone();
        self.note_synced(self.written_seq);
        Failure::NoSpace(Error::NoSpace { path })
    }

    /// Writes the buffer, syncs if the policy (or `force_sync`) says so, and completes the
    /// pending records.
    fn commit(&mut self, force_sync: bool) -> Result<(), Failure> {
        if self.buf.is_empty() {
            if force_sync && self.durable_seq < self.written_seq {
                self.sync()?;
            }
            return Ok(());
        }
        let start = self.active.len;
        let started = Instant::now();
        let written = write_all_at(self.active.file.as_mut(), &self.buf, start);
        let micros = started.elapsed().as_micros() as u64;
        self.shared
            .counters
            .write_micros
            .fetch_add(micros, Ordering::Relaxed);
        if let Err(err) = written {
            return Err(self.failed_write(start, err));
        }
        let counters = &self.shared.counters;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .records
            .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        counters
            .unsynced_bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.active.len += self.buf.len() as u64;
        self.buf.clear();
        if let Some((last, _)) = self.pending.last() {
            self.written_seq = *last;
            self.shared.written_seq.store(*last, Ordering::Release);
        }
        match self.options().sync_policy {
            _ if force_sync => self.sync()?,
            SyncPolicy::Always => self.sync()?,
            SyncPolicy::IntervalMs(ms) => {
                if self.sync_deadline.is_none() {
                    self.sync_deadline = Some(Instant::now() + Duration::from_millis(ms));
                }
            }
            SyncPolicy::Never => {}
        }
        self.deliver();
        Ok(())
    }

    /// Completes the pending (now written, and synced if the policy says so) records, in
    /// order: inline if the batch is small and nothing is queued ahead of it, otherwise on the
    /// completion thread.
    fn deliver(&mut self) {
        self.last_batch_len = self.pending.len();
        self.prev_sync_records = std::mem::take(&mut self.batch_sync_records);
        self.hold_deadline = None;
        let in_flight = self.completions_in_flight.load(Ordering::Acquire);
        if self.pending.len() <= INLINE_COMPLETION_MAX && in_flight == 0 {
            for (seq, completer) in self.pending.drain(..) {
                completer.complete(Ok(seq));
            }
            self.spent.clear();
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let spent = std::mem::take(&mut self.spent);
        self.completions_in_flight.fetch_add(1, Ordering::AcqRel);
        if let Err(std::sync::mpsc::SendError((batch, _))) = self.completions.send((batch, spent)) {
            // The completion thread is gone (a callback panicked): complete here instead.
            self.completions_in_flight.fetch_sub(1, Ordering::AcqRel);
            for (seq, completer) in batch {
                completer.complete(Ok(seq));
            }
        }
    }

    /// fdatasync of the active segment. Only ever fails with `Poison`.
    fn sync(&mut self) -> Result<(), Failure> {
        self.sync_deadline = None;
        let started = Instant::now();
        let result = self.active.file.sync_data();
        let micros = started.elapsed().as_micros() as u64;
        let counters = &self.shared.counters;
        counters.sync_micros.fetch_add(micros, Ordering::Relaxed);
        counters.sync_latency.observe(micros);
        let records = self.written_seq.saturating_sub(self.durable_seq);
        counters.records_per_sync.observe(records);
        if let Err(e) = result {
            return Err(Failure::Poison(Error::poisoned(
                "fdatasync",
                &self.active.info.path,
                e,
            )));
        }
        self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.shared
            .counters
            .unsynced_bytes
            .store(0, Ordering::Relaxed);
        self.note_synced(self.written_seq);
        Ok(())
    }

    fn note_synced(&mut self, seq: u64) {
        self.durable_seq = seq;
        self.shared.durable_seq.store(seq, Ordering::Release);
    }

    /// Cuts the active segment's file to the end of its last record, durably, if it is longer
    /// (a recycled segment holds older bytes after it). Sealed segments and a cleanly closed
    /// log end exactly at their last record.
    fn cut_active(&mut self) -> Result<(), Failure> {
        let path = &self.active.info.path;
        let file_len = self
            .active
            .file
            .len()
            .map_err(|e| Failure::Poison(Error::poisoned("stat", path, e)))?;
        if file_len <= self.active.len {
            return Ok(());
        }
        self.active
            .file
            .set_len(self.active.len)
            .map_err(|e| ("truncate", e))
            .and_then(|()| self.active.file.sync_data().map_err(|e| ("fdatasync", e)))
            .map_err(|(op, e)| Failure::Poison(Error::poisoned(op, path, e)))?;
        self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Starts a new segment whose first record will be `first_seq`. The caller has synced the
    /// old one (sealing it: recovery treats any damage in a non-newest segment as corruption);
    /// this cuts it to its last record first.
    fn rotate(&mut self, first_seq: u64) -> Result<(), Failure> {
        self.cut_active()?;
        let segment_seq = self.next_segment_seq.max(self.active.info.segment_seq + 1);
        let path = segment_path(&self.shared.dir, segment_seq);
        let fs = self.shared.fs.as_ref();
        let dir = &self.shared.dir;
        let reused = match self.spares.pop() {
            // Only an existing file's first bytes are overwritten: no ENOSPC to roll back
            // from, and a failed sync or rename poisons, as it does for a new file. A spare
            // that cannot be opened (removed by hand, say) changed nothing: use a new file.
            Some(spare) => match reuse_spare(fs, dir, &spare, &path, segment_seq, first_seq) {
                Ok(file) => {
                    self.shared
                        .counters
                        .recycled
                        .fetch_add(1, Ordering::Relaxed);
                    Some(file)
                }
                Err(("open", at, e)) => {
                    tracing::warn!(spare = %at.display(), "WAL spare segment unusable, creating a new one: {e}");
                    None
                }
                Err((op, at, e)) => return Err(Failure::Poison(Error::poisoned(op, &at, e))),
            },
            None => None,
        };
        let file = match reused {
            Some(file) => file,
            None => create_segment(fs, dir, &path, segment_seq, first_seq).map_err(|(op, e)| {
                if is_no_space(&e) && (op == "create" || op == "write") {
                    Failure::NoSpace(Error::NoSpace { path: path.clone() })
                } else {
                    Failure::Poison(Error::poisoned(op, &path, e))
                }
            })?,
        };
        let info = SegmentInfo {
            segment_seq,
            first_seq,
            path,
        };
        self.active = Active {
            info: info.clone(),
            file,
            len: SEGMENT_HEADER_LEN as u64,
        };
        self.next_segment_seq = segment_seq + 1;
        self.segments.push(info);
        self.publish_segments();
        self.shared
            .counters
            .rotations
            .fetch_add(1, Ordering::Relaxed);
        self.shared.counters.fsyncs.fetch_add(2, Ordering::Relaxed);
        self.shared
            .counters
            .unsynced_bytes
            .store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the segments whose records are all `<= through`, never the active one, oldest
    /// first (so a crash part-way leaves a contiguous log), then fsyncs the directory. While
    /// fewer than `spare_segments` spares exist, a segment is renamed to a spare instead.
    fn truncate_through(&mut self, through: u64) -> Result<u64, Failure> {
        let mut removable = 0;
        while removable + 1 < self.segments.len()
            && self.segments[removable + 1].first_seq <= through + 1
        {
            removable += 1;
        }
        let mut removed = 0;
        let mut unlink_error = None;
        for info in &self.segments[..removable] {
            let result = if self.spares.len() < self.shared.options.spare_segments {
                let spare = spare_path(&self.shared.dir, info.segment_seq);
                self.shared
                    .fs
                    .rename(&info.path, &spare)
                    .map(|()| self.spares.push(spare))
                    .map_err(|e| Error::io("rename", &info.path, e))
            } else {
                self.shared
                    .fs
                    .remove_file(&info.path)
                    .map_err(|e| Error::io("remove", &info.path, e))
            };
            if let Err(err) = result {
                unlink_error = Some(err);
                break;
            }
            removed += 1;
        }
        if removed > 0 {
            self.segments.drain(..removed);
            self.publish_segments();
            if let Err(e) = self.shared.fs.sync_dir(&self.shared.dir) {
                return Err(Failure::Poison(Error::poisoned(
                    "fsync directory",
                    &self.shared.dir,
                    e,
                )));
            }
        }
        match unlink_error {
            Some(err) => Err(Failure::Failed(err)),
            None => Ok(removed as u64),
        }
    }

    fn publish_segments(&self) {
        *self
            .shared
            .segments
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.segments.clone();
    }
}
