//! Persistence: the only code that talks to `keelmq-wal` and `keelmq-storage`.
//!
//! # The contract (DESIGN.md §2), as built
//! The broker turns every change of durable state into [`Record`]s and hands them to
//! [`Persistence::log`], which, under one lock, applies them to the [`Image`] and appends them to
//! the WAL (so the image after record S is exactly what the log up to S describes). The WAL's
//! writer thread batches the appends of all connections into one `fdatasync` (group commit);
//! [`Persistence::commit`] waits for that sync without blocking the async runtime. The broker
//! sends an acknowledgement only after the commit covering its records returned:
//!
//! | sent | after these records are durable |
//! |---|---|
//! | CONNACK (persistent session) | `Session` and `SessionOwner` (and `SessionRemove` of a discarded session) |
//! | SUBACK / UNSUBACK | `Subscribe` / `Unsubscribe`, and the retained deliveries they queue |
//! | PUBACK / PUBREC | `Message`, every `Enqueue` for a persistent subscriber, `RetainSet`/`RetainDelete`, and for PUBREC the publisher's `InboundQos2` |
//! | PUBCOMP | `InboundRelease` |
//! | PUBREL (outbound) | `PubRec` |
//!
//! Subscribers see a message only after it is durable (the broker reserves queue room, commits,
//! then delivers), so a crash can never let a re-sent QoS 2 message reach a subscriber twice.
//! `DequeueMessage` after PUBACK/PUBCOMP and a session's disconnect time are logged without
//! waiting: losing them only causes a DUP re-delivery or a later expiry. A `DequeueMessage`
//! names the message it removes, so one that reaches the log after the `Enqueue` of a new
//! delivery reusing its packet id leaves that delivery alone.
//!
//! # Checkpoints
//! Every `checkpoint_interval_ms` (or when the WAL grew by `checkpoint_wal_bytes`) the keys
//! changed since the last checkpoint are written to the store with their current values, with
//! RocksDB's WAL off, in one batch carrying `applied_seq`; the store flushes with wait; the
//! persisted `applied_seq` is read back; only then are WAL segments up to it deleted.
//!
//! # Recovery
//! Open the store, load the image from it, replay the WAL from `applied_seq + 1` through the same
//! [`Image::apply`], and hand the image to the broker. A torn tail of the newest segment is cut
//! (the WAL logs file, offset and bytes); any other damage stops the start with the file and
//! offset (see `keelmq inspect`).

pub mod convert;
pub mod image;
pub mod inspect;
pub mod journal;
pub mod records;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keelmq_storage::{RocksStore, Store, StoreOptions};
use keelmq_wal::fs::{Fs, StdFs};
use keelmq_wal::{Durable, RecoveryMode, SyncPolicy, Wal, WalOptions};
use parking_lot::Mutex;

pub use image::Image;
pub use records::{Record, StoredMessage};

/// The largest commit (one WAL record): the WAL's queue capacity in bytes, the most a record
/// may be. A commit carries each message body once, so only a SUBSCRIBE matching an enormous
/// retained set for a persistent session can reach it; that SUBSCRIBE is then refused, not the
/// broker.
pub const MAX_COMMIT_BYTES: usize = keelmq_wal::DEFAULT_CHANNEL_CAPACITY_BYTES;

/// While replaying the WAL at start, the changes are written to the store (unflushed) whenever
/// this many keys changed, which bounds the memory a long WAL tail needs (message bodies and
/// retained messages leave memory once written).
pub const RECOVERY_CHECKPOINT_KEYS: usize = 50_000;

/// Persistence settings (the `[storage]` section of the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct PersistenceOptions {
    pub sync: SyncPolicy,
    pub segment_bytes: u64,
    /// Niceness for the WAL writer thread (`WalOptions::writer_nice`).
    pub wal_writer_nice: Option<i32>,
    /// The WAL's group-commit window (`WalOptions::commit_window`; zero: none).
    pub commit_window: Duration,
    /// Ends a window early once appends stop (`WalOptions::commit_quiet`; zero: never).
    pub commit_quiet: Duration,
    pub checkpoint_interval: Duration,
    pub checkpoint_wal_bytes: u64,
    pub store: StoreOptions,
}

/// Why persistence failed. Fatal for the broker: it stops acknowledging and exits.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data directory {path}: {what}")]
    DataDir { path: PathBuf, what: String },
    #[error("write-ahead log: {0}")]
    Wal(#[from] keelmq_wal::Error),
    #[error("state store: {0}")]
    Store(#[from] keelmq_storage::Error),
    #[error("{0}")]
    Load(#[from] image::LoadError),
    #[error("WAL record {seq} does not decode ({what}); move the WAL directory aside or run `keelmq inspect`")]
    Record { seq: u64, what: String },
    /// The log does not continue where the store's checkpoint ends: records are missing.
    #[error(
        "write-ahead log {dir} holds records {first}..={last} but the store applied records up \
         to {applied}: {what}. Put the missing segment files back, or move the whole WAL \
         directory aside to start from the store's state (`keelmq inspect` shows both)"
    )]
    WalGap {
        dir: PathBuf,
        first: u64,
        last: u64,
        applied: u64,
        what: &'static str,
    },
    #[error("checkpoint: the log is durable up to {durable} only, not {seq}: records the image holds were not written")]
    CheckpointAhead { durable: u64, seq: u64 },
    #[error("checkpoint: persisted applied_seq {persisted} after writing {written}")]
    CheckpointMismatch { persisted: u64, written: u64 },
    #[error("persistence failed earlier; refusing to acknowledge")]
    Failed,
    /// One commit is larger than a WAL record may be. Only that operation is refused.
    #[error("a commit of {0} bytes exceeds the WAL record limit")]
    TooLarge(usize),
}

impl Error {
    /// Whether the error stops the broker (everything but an oversized commit).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Error::TooLarge(_))
    }
}

/// What recovery found, for the start-up log line and `keelmq inspect`.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Time to load the checkpoint's metadata (the rest of `elapsed` is the WAL replay).
    pub load: Duration,
    pub checkpoint_seq: u64,
    pub replayed_records: u64,
    pub last_seq: u64,
    pub torn_tail: Option<String>,
    pub elapsed: Duration,
}

/// Checkpoint counters (see [`Persistence::checkpoint_stats`]).
#[derive(Debug, Default)]
struct CheckpointCounters {
    written: AtomicU64,
    failed: AtomicU64,
    last_at_ms: AtomicU64,
    last_micros: AtomicU64,
    last_changes: AtomicU64,
    total_micros: AtomicU64,
}

/// What the checkpoints did since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    pub written: u64,
    pub failed: u64,
    /// When the last one was written (ms since the Unix epoch; 0: none yet).
    pub last_at_ms: u64,
    /// How long the last one took, in microseconds.
    pub last_micros: u64,
    /// Changed keys the last one wrote.
    pub last_changes: u64,
    /// Time spent in every checkpoint, in microseconds.
    pub total_micros: u64,
    /// The WAL sequence number the last one covers.
    pub seq: u64,
}

/// The persistence layer of one broker.
pub struct Persistence {
    wal: Wal,
    store: Box<dyn Store>,
    image: Mutex<Image>,
    next_message_id: AtomicU64,
    /// Shared with the completion callbacks of lazy appends, which nobody waits for.
    failed: Arc<AtomicBool>,
    options: PersistenceOptions,
    /// WAL sequence number of the last checkpoint.
    checkpointed_seq: AtomicU64,
    /// WAL bytes written when the last checkpoint started.
    bytes_at_checkpoint: AtomicU64,
    checkpoint_lock: Mutex<()>,
    /// Checkpoints written and failed, and the last one's time and duration.
    checkpoint_stats: CheckpointCounters,
    /// Held for the life of the process: one broker per data directory.
    _lock: Option<File>,
}

impl Persistence {
    /// Opens the data directory (locking it), recovers the image and replays the WAL.
    pub fn open(
        dir: &Path,
        options: PersistenceOptions,
    ) -> Result<(Persistence, RecoveryReport), Error> {
        let data_err = |what: String| Error::DataDir {
            path: dir.to_owned(),
            what,
        };
        std::fs::create_dir_all(dir).map_err(|e| data_err(format!("cannot create: {e}")))?;
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| data_err(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            data_err("is in use by another keelmq process (LOCK is held)".to_string())
        })?;
        let store = RocksStore::open(&dir.join("store"), options.store)?;
        Self::open_parts(
            Arc::new(StdFs),
            &dir.join("wal"),
            Box::new(store),
            options,
            Some(lock),
        )
    }

    /// Opens over any file system and store: the power-loss tests use the WAL's fault-injecting
    /// `MemFs` and an in-memory store.
    pub fn open_parts(
        fs: Arc<dyn Fs>,
        wal_dir: &Path,
        store: Box<dyn Store>,
        options: PersistenceOptions,
        lock: Option<File>,
    ) -> Result<(Persistence, RecoveryReport), Error> {
        let started = Instant::now();
        let persisted_seq = store.persisted_applied_seq()?;
        let mut checkpoint_seq = persisted_seq;
        let mut image = Image::load(&*store)?;
        let loaded = started.elapsed();
        let wal_options = WalOptions {
            segment_size_bytes: options.segment_bytes,
            sync_policy: options.sync,
            recovery_mode: RecoveryMode::TolerateTornTail,
            max_record_bytes: MAX_COMMIT_BYTES,
            writer_nice: options.wal_writer_nice,
            commit_window: options.commit_window,
            commit_quiet: options.commit_quiet,
            // An empty log (a new directory, or one moved aside) goes on above what the store
            // applied: records reusing lower numbers would be skipped by the next recovery.
            first_seq: persisted_seq + 1,
            ..WalOptions::default()
        };
        let (wal, recovery) = Wal::open_with_fs(fs, wal_dir, wal_options)?;
        check_wal_covers(&wal, wal_dir, persisted_seq)?;
        let replayed = replay(&wal, &mut image, &*store, &mut checkpoint_seq)?;
        if image.inconsistencies > 0 {
            tracing::warn!(
                count = image.inconsistencies,
                "log records referred to missing messages"
            );
        }
        let next_message_id = (image.max_message_id() + 1).max(convert::message_id_floor());
        let report = RecoveryReport {
            load: loaded,
            checkpoint_seq,
            replayed_records: replayed,
            last_seq: wal.last_seq(),
            torn_tail: recovery.torn_tail.as_ref().map(|t| format!("{t:?}")),
            elapsed: started.elapsed(),
        };
        let p = Persistence {
            wal,
            store,
            image: Mutex::new(image),
            next_message_id: AtomicU64::new(next_message_id),
            failed: Arc::new(AtomicBool::new(false)),
            options,
            // What replay wrote unflushed is flushed by the first checkpoint, due at once.
            checkpointed_seq: AtomicU64::new(persisted_seq),
            bytes_at_checkpoint: AtomicU64::new(0),
            checkpoint_lock: Mutex::new(()),
            checkpoint_stats: CheckpointCounters::default(),
            _lock: lock,
        };
        Ok((p, report))
    }

    /// A new message id (unique across restarts).
    pub fn next_message_id(&self) -> u64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` on the image (for building the broker at start and for inspection).
    pub fn with_image<R>(&self, f: impl FnOnce(&Image) -> R) -> R {
        f(&self.image.lock())
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Calls `visit` for every retained message (store and log), and makes sure new message
    /// ids stay above theirs. Blocking; for building the broker at start.
    /// The image is locked only to copy the changes not yet checkpointed, not for the scan;
    /// the caller keeps retained updates out meanwhile (the broker's retain gate).
    pub fn visit_retained(&self, visit: &mut dyn FnMut(StoredMessage)) -> Result<(), Error> {
        let overlay = self.image.lock().retained_overlay();
        let mut max = 0;
        image::visit_retained(&*self.store, &overlay, &mut |m| {
            max = max.max(m.id);
            visit(m);
        })?;
        self.next_message_id.fetch_max(max + 1, Ordering::Relaxed);
        Ok(())
    }

    /// How many retained messages there are. Blocking (a store scan).
    pub fn retained_count(&self) -> Result<usize, Error> {
        Ok(self.image.lock().retained_count(&*self.store)?)
    }

    /// The bodies of messages `ids` (queue entries paged out of memory): from memory where a
    /// checkpoint has not written them yet, from the store otherwise. An id neither holds is
    /// missing from the result. Blocking: call it on a blocking thread.
    pub fn load_messages(&self, ids: &[u64]) -> Result<HashMap<u64, StoredMessage>, Error> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut keys = Vec::new();
        {
            // A body leaves memory only after the store has it, so one that is not resident
            // here is in the store.
            let image = self.image.lock();
            for id in ids {
                match image.resident_message(*id) {
                    Some(m) => {
                        out.insert(*id, m.clone());
                    }
                    None => keys.push(id.to_be_bytes().to_vec()),
                }
            }
        }
        let values = self
            .store
            .get_many(keelmq_storage::Table::Messages, &keys)?;
        for (key, value) in keys.iter().zip(values) {
            let Some(value) = value else { continue };
            let m = records::decode_value::<StoredMessage>(&value).map_err(|e| {
                keelmq_storage::Error::Corrupt {
                    path: PathBuf::from(keelmq_storage::Table::Messages.name()),
                    what: format!("message {key:?}: {e}"),
                }
            })?;
            out.insert(m.id, m);
        }
        Ok(out)
    }

    /// A canonical listing of the durable state (for tests comparing states). Blocking.
    pub fn canonical(&self) -> Vec<String> {
        self.image.lock().canonical(&*self.store)
    }

    fn fail(&self, e: &Error) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, "persistence failed: no further acknowledgements");
        }
    }

    /// Applies `records` to the image and appends them to the WAL as one record, in one step
    /// with respect to other callers. Returns its completion, which the WAL completes only after
    /// it and every record before it are durable.
    pub fn log(&self, records: Vec<Record>) -> Result<Option<Durable>, Error> {
        self.append(records, false)
    }

    /// [`Self::log`] for records whose loss in a crash is harmless (a delivery acknowledged by
    /// its subscriber, a session ended): they ask for no fdatasync of their own and are made
    /// durable by the next commit that needs one, or within `keelmq_wal::LAZY_SYNC_DELAY`.
    ///
    /// Nobody waits for them, but their failure is not ignored: the image already holds what
    /// the log lost (an ENOSPC rollback gives the numbers back), so persistence fails — no
    /// more acknowledgements, no more checkpoints — and `on_fail` is called (on the WAL's
    /// completion thread; it must not block).
    pub fn log_lazy(
        &self,
        records: Vec<Record>,
        on_fail: impl FnOnce(&Error) + Send + 'static,
    ) -> Result<(), Error> {
        let Some(durable) = self.append(records, true)? else {
            return Ok(());
        };
        let failed = self.failed.clone();
        durable.on_complete(move |r| {
            // A log closed under it means the process is stopping already.
            let Err(e) = r.map_err(Error::from) else {
                return;
            };
            if matches!(e, Error::Wal(keelmq_wal::Error::Closed)) {
                return;
            }
            if !failed.swap(true, Ordering::Relaxed) {
                tracing::error!(error = %e, "a lazy append failed: no further acknowledgements");
            }
            on_fail(&e);
        });
        Ok(())
    }

    fn append(&self, records: Vec<Record>, lazy: bool) -> Result<Option<Durable>, Error> {
        if self.has_failed() {
            return Err(Error::Failed);
        }
        if records.is_empty() {
            return Ok(None);
        }
        // One commit is one WAL record: atomic by the WAL's framing.
        let version = Record::batch_version(&records);
        let mut payload = Record::encode_batch(&records);
        let len = payload.len();
        if len > MAX_COMMIT_BYTES {
            return Err(Error::TooLarge(len));
        }
        loop {
            {
                // Appended and applied under one lock: the image after WAL record S is what
                // records 1..S describe.
                let mut image = self.image.lock();
                let tried = if lazy {
                    self.wal.try_append_lazy(version, payload)
                } else {
                    self.wal.try_append(version, payload)
                };
                match tried {
                    Ok(appended) => {
                        for record in records {
                            image.apply(record);
                        }
                        return Ok(Some(appended.durable));
                    }
                    Err(keelmq_wal::Error::Full) => {}
                    Err(e) => return Err(self.failed_with(e.into())),
                }
            }
            // The WAL's queue is full: the disk is behind. Wait for room with the image lock
            // released (other appenders, and checkpoints, must not stall behind this one), on
            // this worker thread handed over to the runtime, then try again.
            tokio::task::block_in_place(|| self.wal.wait_for_room(len))
                .map_err(|e| self.failed_with(e.into()))?;
            payload = Record::encode_batch(&records);
        }
    }

    fn failed_with(&self, e: Error) -> Error {
        self.fail(&e);
        e
    }

    /// Waits for a completion returned by [`Self::log`], without blocking the runtime.
    pub async fn wait_durable(&self, durable: Option<Durable>) -> Result<(), Error> {
        let Some(durable) = durable else {
            return if self.has_failed() {
                Err(Error::Failed)
            } else {
                Ok(())
            };
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        durable.on_complete(move |r| {
            let _ = tx.send(r);
        });
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failed_with(e.into())),
            Err(_) => Err(self.failed_with(Error::Failed)),
        }
    }

    /// Logs `records` now and returns a wait for their durability to be awaited later, so that
    /// a connection can go on with its next packets while earlier acknowledgements wait for
    /// their fdatasync (pipelining: many of one connection's records share one fdatasync).
    pub fn log_pending(&self, records: Vec<Record>) -> Result<PendingDurable, Error> {
        let rx = self.log(records)?.map(|durable| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            durable.on_complete(move |r| {
                let _ = tx.send(r);
            });
            rx
        });
        Ok(PendingDurable(rx))
    }

    /// Waits for a [`PendingDurable`]; await it to completion once (a second wait after it
    /// completed is an error).
    pub async fn wait_pending(&self, pending: &mut PendingDurable) -> Result<(), Error> {
        let Some(rx) = &mut pending.0 else {
            return if self.has_failed() {
                Err(Error::Failed)
            } else {
                Ok(())
            };
        };
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failed_with(e.into())),
            Err(_) => Err(self.failed_with(Error::Failed)),
        }
    }

    /// Logs `records` and waits until they are durable.
    pub async fn commit(&self, records: Vec<Record>) -> Result<(), Error> {
        let durable = self.log(records)?;
        self.wait_durable(durable).await
    }

    /// Whether a checkpoint is due: time or WAL growth.
    pub fn checkpoint_due(&self, since_last: Duration) -> bool {
        let grown = self.wal.last_seq() > self.checkpointed_seq.load(Ordering::Relaxed);
        let bytes = self.wal.stats().bytes - self.bytes_at_checkpoint.load(Ordering::Relaxed);
        grown
            && (since_last >= self.options.checkpoint_interval
                || bytes >= self.options.checkpoint_wal_bytes)
    }

    /// Writes the changed state to the store and truncates the WAL behind it. Blocking: run on
    /// a blocking thread.
    pub fn checkpoint(&self) -> Result<u64, Error> {
        let _one_at_a_time = self.checkpoint_lock.lock();
        let started = std::time::Instant::now();
        // After a failure the image may hold what the log lost: the log is the truth, and the
        // next start recovers from it.
        if self.has_failed() {
            return Err(Error::Failed);
        }
        let (changes, seq) = {
            let mut image = self.image.lock();
            (image.take_changes(), self.wal.last_seq())
        };
        // Appends wait for the image while it is locked: the part of a checkpoint the
        // message path feels.
        let locked = started.elapsed();
        let mut store_time = Duration::ZERO;
        let mut truncate_time = Duration::ZERO;
        self.bytes_at_checkpoint
            .store(self.wal.stats().bytes, Ordering::Relaxed);
        let result = (|| {
            // Everything up to `seq` must be durable before the store may claim it: after a
            // failed append (ENOSPC) the log gives the failed records' numbers back, and a
            // checkpoint that claimed them would make the next recovery skip their reuse.
            let durable = self.wal.sync()?;
            if durable < seq {
                return Err(self.failed_with(Error::CheckpointAhead { durable, seq }));
            }
            let writing = Instant::now();
            self.store.write_checkpoint(changes.clone(), seq)?;
            store_time = writing.elapsed();
            let persisted = self.store.persisted_applied_seq()?;
            if persisted != seq {
                return Err(Error::CheckpointMismatch {
                    persisted,
                    written: seq,
                });
            }
            let truncating = Instant::now();
            self.wal.truncate_through(seq)?;
            truncate_time = truncating.elapsed();
            Ok(seq)
        })();
        match &result {
            Ok(seq) => {
                let releasing = Instant::now();
                self.image.lock().checkpointed(&changes);
                let released = releasing.elapsed();
                self.checkpointed_seq.store(*seq, Ordering::Relaxed);
                self.count_checkpoint(started.elapsed(), changes.len());
                tracing::debug!(
                    seq,
                    changes = changes.len(),
                    take_us = locked.as_micros() as u64,
                    store_us = store_time.as_micros() as u64,
                    truncate_us = truncate_time.as_micros() as u64,
                    release_us = released.as_micros() as u64,
                    "checkpoint written"
                );
            }
            Err(e) => {
                self.checkpoint_stats.failed.fetch_add(1, Ordering::Relaxed);
                self.image.lock().restore_dirty(&changes);
                tracing::error!(error = %e, "checkpoint failed; the WAL keeps everything");
            }
        }
        result
    }

    fn count_checkpoint(&self, took: Duration, changes: usize) {
        let c = &self.checkpoint_stats;
        let micros = took.as_micros() as u64;
        c.written.fetch_add(1, Ordering::Relaxed);
        c.total_micros.fetch_add(micros, Ordering::Relaxed);
        c.last_micros.store(micros, Ordering::Relaxed);
        c.last_changes.store(changes as u64, Ordering::Relaxed);
        c.last_at_ms
            .store(convert::wall_clock_ms(), Ordering::Relaxed);
    }

    /// What the checkpoints did since the start.
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        let c = &self.checkpoint_stats;
        CheckpointStats {
            written: c.written.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            last_at_ms: c.last_at_ms.load(Ordering::Relaxed),
            last_micros: c.last_micros.load(Ordering::Relaxed),
            last_changes: c.last_changes.load(Ordering::Relaxed),
            total_micros: c.total_micros.load(Ordering::Relaxed),
            seq: self.checkpointed_seq.load(Ordering::Relaxed),
        }
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Stops the WAL cleanly after a final checkpoint.
    pub fn close(self) -> Result<(), Error> {
        self.checkpoint()?;
        Ok(self.wal.close()?)
    }
}

/// Refuses a log that would replay wrongly over the store: one that ends before the store's
/// `applied_seq` (its newest segments are missing, so new records would reuse numbers the
/// store has applied and the next recovery would skip them), or one that starts after it (the
/// records in between are missing).
fn check_wal_covers(wal: &Wal, dir: &Path, applied: u64) -> Result<(), Error> {
    let (first, last) = (wal.first_seq(), wal.last_seq());
    let what = if last < applied {
        "its newest records are missing"
    } else if first > applied + 1 {
        "the records in between are missing"
    } else {
        return Ok(());
    };
    Err(Error::WalGap {
        dir: dir.to_owned(),
        first,
        last,
        applied,
        what,
    })
}

/// Shared handle.
pub type SharedPersistence = Arc<Persistence>;

/// A durability wait started by [`Persistence::log_pending`] (`None`: nothing was logged).
#[derive(Debug)]
pub struct PendingDurable(Option<tokio::sync::oneshot::Receiver<keelmq_wal::Result<u64>>>);

impl PendingDurable {
    /// A wait with nothing to wait for.
    pub fn ready() -> PendingDurable {
        PendingDurable(None)
    }

    /// Whether nothing was logged (the wait only checks that persistence has not failed).
    pub fn is_ready(&self) -> bool {
        self.0.is_none()
    }
}

/// Applies the WAL's records after `checkpoint_seq` to `image`; returns how many were
/// replayed. A long tail is written to the store as it is replayed (moving `checkpoint_seq`),
/// so that the bodies and retained messages it carries leave memory. Unflushed: until the
/// next checkpoint flushes it (and only then truncates the WAL), a crash replays it again.
fn replay(
    wal: &Wal,
    image: &mut Image,
    store: &dyn Store,
    checkpoint_seq: &mut u64,
) -> Result<u64, Error> {
    let mut replayed = 0;
    for record in wal.read_from(*checkpoint_seq + 1)? {
        let record = record?;
        let decoded = Record::decode_batch(record.record_type, &record.payload).map_err(|e| {
            Error::Record {
                seq: record.seq,
                what: e.to_string(),
            }
        })?;
        for r in decoded {
            image.apply(r);
        }
        replayed += 1;
        if image.dirty_len() >= RECOVERY_CHECKPOINT_KEYS {
            let changes = image.take_changes();
            // Before the write, which then takes the changes: a failed write stops the start
            // anyway.
            image.checkpointed(&changes);
            store.write_unflushed(changes, record.seq)?;
            *checkpoint_seq = record.seq;
        }
    }
    Ok(replayed)
}
