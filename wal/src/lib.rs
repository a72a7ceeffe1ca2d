//! `keelmq-wal`: KeelMQ's write-ahead log.
//!
//! A synchronous, generic log of typed, sequence-numbered records in crc32-framed segment
//! files, with group commit: many appends share one `fdatasync`, and an append's [`Durable`]
//! handle completes only once that `fdatasync` has returned. The broker's persistence layer
//! drives it from a dedicated thread or bridges [`Durable::on_complete`] into async code; no
//! async runtime lives in here.
//!
//! # Layout
//!
//! - [`format`]: the byte layout of segments and records (documented there and in the README),
//!   encode and decode, never panicking on any input.
//! - [`fs`]: the file-system trait, the real implementation and [`fs::MemFs`], the
//!   fault-injecting in-memory one used by the crash tests (and by the broker's).
//! - `wal`: [`Wal`], the handle: open and recover, append, truncate, read back, close.
//! - `queue`: the bounded submission queue (sequence numbers are assigned there).
//! - `writer`: the group-commit writer thread, rotation, truncation, segment recycling
//!   through spare files, failure policy.
//! - `recovery`: verifying segments on open, torn-tail repair, [`Recovery`].
//! - `reader`: [`WalReader`], the iterator behind [`Wal::read_from`].
//! - `durable`: [`Durable`], the one-shot completion handle.
//!
//! # Example
//!
//! ```
//! use keelmq_wal::{Wal, WalOptions};
//!
//! # fn main() -> keelmq_wal::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("keelmq-wal-doc-{}", std::process::id()));
//! let (wal, recovery) = Wal::open(&dir, WalOptions::default())?;
//! // Replay what a checkpoint has not covered yet (here: everything).
//! for record in wal.read_from(recovery.first_seq)? {
//!     let record = record?;
//!     println!("replaying {} (type {})", record.seq, record.record_type);
//! }
//! let appended = wal.append(1, b"session created".as_slice())?;
//! let seq = appended.durable.wait()?; // on disk now: safe to acknowledge
//! assert_eq!(seq, appended.seq);
//! // After a checkpoint has persisted everything through `seq` elsewhere:
//! wal.truncate_through(seq)?;
//! wal.close()?;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
//!
//! From async code, use [`Durable::on_complete`] to complete a oneshot channel instead of
//! blocking in [`Durable::wait`], and [`Wal::try_append`] (or a blocking-pool thread) so a
//! full queue never blocks a runtime worker.
//!
//! # Guarantees
//!
//! - Under [`SyncPolicy::Always`] a [`Durable`] completes with `Ok` only after an fdatasync
//!   that covers the record returned successfully.
//! - After any crash, recovery returns a gap-free prefix of the appended records that contains
//!   every record whose durability was reported; it never returns a record whose checksum does
//!   not verify.
//! - A failed fsync poisons the log; it is never retried. A full disk fails the affected batch
//!   only and leaves no partial record behind.
//!
//! The implementation targets Unix (positional I/O, `fdatasync`, directory fsync). One process
//! at a time may open a directory; the broker's data-directory lock guards that.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod durable;
mod error;
pub mod format;
pub mod fs;
pub mod histogram;
mod options;
mod queue;
mod reader;
mod recovery;
mod segment;
mod wal;
mod writer;

pub use durable::{Callback, Durable};
pub use error::{Error, Result};
pub use options::{
    RecoveryMode, SyncPolicy, WalOptions, DEFAULT_CHANNEL_CAPACITY, DEFAULT_CHANNEL_CAPACITY_BYTES,
    DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_RECORDS, DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_SEGMENT_SIZE_BYTES, DEFAULT_SPARE_SEGMENTS, DEFAULT_WRITER_NICE, MAX_COMMIT_WINDOW,
    MAX_SPARE_SEGMENTS,
};
pub use reader::{Record, WalReader};
pub use recovery::{
    scan_segment, RecordRef, Recovery, ScanOutcome, SegmentScan, SkippedRange, TornTail,
};
pub use wal::{Appended, Wal, WalStats};
pub use writer::LAZY_SYNC_DELAY;
