//! The crate's error type.
//!
//! Every variant carries enough context for an operator to act on it: the file and offset of a
//! corruption, the operation and path of an I/O failure. `Error` is `Clone` because one failure
//! (a poisoned log, a full disk) has to be delivered to every append of the batch it hit; the
//! underlying `io::Error` is shared behind an `Arc` for that reason.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the WAL.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes on disk failed verification somewhere a torn write cannot explain (or anywhere at
    /// all under [`crate::RecoveryMode::Strict`]). The log refuses to open so that no
    /// acknowledged record is silently dropped; move the segment aside or inspect it with
    /// [`crate::RecoveryMode::SkipCorrupt`].
    #[error("WAL corruption in segment {} at offset {offset}: {reason}", segment.display())]
    Corruption {
        /// The segment file that failed verification.
        segment: PathBuf,
        /// Byte offset inside that file where the bad data starts.
        offset: u64,
        /// What check failed.
        reason: String,
    },

    /// An fsync/fdatasync (or a write the log could not undo) failed earlier. Linux may have
    /// dropped the dirty pages, so retrying could report data as durable that is not: the log
    /// refuses every pending and later append. Restart and recover instead.
    #[error("WAL is poisoned: {op} on {} failed: {source}", path.display())]
    Poisoned {
        /// The operation that failed (`"fdatasync"`, `"write"`, ...).
        op: &'static str,
        /// The file or directory it failed on.
        path: PathBuf,
        /// The original error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The disk is full. The batch that hit it was rolled back (no partial record remains in
    /// the log), nothing acknowledged earlier was lost, and the log keeps working: a later
    /// append succeeds once space is freed, e.g. by [`crate::Wal::truncate_through`].
    #[error("no space left on device while writing {}; the batch was rolled back", path.display())]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },

    /// A file-system operation failed outside the durability path (opening, reading, listing,
    /// deleting a checkpointed segment).
    #[error("WAL I/O error: {op} on {}: {source}", path.display())]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The file or directory it failed on.
        path: PathBuf,
        /// The original error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The log was closed (or its writer thread is gone) before the operation completed.
    #[error("WAL is closed")]
    Closed,

    /// [`crate::Wal::try_append`] found the submission queue full.
    #[error("WAL submission queue is full")]
    Full,

    /// A payload is larger than [`crate::WalOptions::max_record_bytes`].
    #[error("record payload of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The payload length offered.
        len: usize,
        /// The configured limit.
        max: usize,
    },

    /// [`crate::Wal::read_from`] asked for records that a checkpoint already deleted.
    #[error("records from {requested} were truncated; the oldest available is {first_available}")]
    Truncated {
        /// The sequence number asked for.
        requested: u64,
        /// The oldest sequence number still in the log.
        first_available: u64,
    },

    /// The options cannot work together.
    #[error("invalid WAL options: {reason}")]
    InvalidOptions {
        /// Which constraint is violated.
        reason: &'static str,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn poisoned(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Poisoned {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn corruption(
        segment: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corruption {
            segment: segment.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// True when `err` is "no space left on device".
pub(crate) fn is_no_space(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOSPC)
}
