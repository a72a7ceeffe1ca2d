//! Configuration: every knob has a documented default and a reason.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{MAX_PAYLOAD_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

/// When an append counts as complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Complete an append only after an fdatasync covering it has returned. This is the
    /// broker's durability promise and the default. Many appends share one fdatasync.
    #[default]
    Always,
    /// Complete an append as soon as it is written to the OS, and fdatasync at most this many
    /// milliseconds later. A power loss can lose up to that window of *completed* appends: only
    /// for users who explicitly accept the window. [`crate::Wal::durable_seq`] still reports
    /// what has really been synced.
    IntervalMs(u64),
    /// Complete after the write and never fdatasync records (segment headers and directory
    /// entries are still synced so the layout stays valid). For tests and benchmarks only.
    Never,
}

/// What recovery does with data that fails verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Default. A torn tail in the newest segment (a write that was in flight and never
    /// acknowledged) is truncated away, the truncation synced and logged; any other checksum
    /// failure is [`Error::Corruption`].
    #[default]
    TolerateTornTail,
    /// Any bad byte anywhere, a torn tail included, is [`Error::Corruption`]. Nothing is
    /// modified on disk. A log whose process was killed while its newest segment was a
    /// recycled one is refused too: the old bytes after its last record count as a torn tail.
    /// A cleanly closed log is always accepted.
    Strict,
    /// Skip every region that fails verification and return whatever still verifies, reporting
    /// each skipped range in [`crate::Recovery::skipped`]. A torn tail is still truncated. This
    /// can return a log with sequence gaps: for an inspection or salvage tool only, never for a
    /// broker that acknowledges clients.
    SkipCorrupt,
}

/// Default segment size. Big enough that rotation (two fsyncs and a directory fsync) is rare,
/// small enough that recovery reads one segment into memory at a time without strain and that
/// checkpoints free space promptly.
pub const DEFAULT_SEGMENT_SIZE_BYTES: u64 = 64 * 1024 * 1024;

/// Default cap on records per group-commit batch. One fdatasync for thousands of records is
/// already far past the point of diminishing returns; the cap bounds completion latency.
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 4096;

/// Default cap on payload bytes per batch: one `write` of a few MiB keeps the write buffer
/// bounded while still amortising the fdatasync.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Default capacity of the submission queue, in records. It must hold one full batch being
/// synced plus the next batch forming, with room for bursts; beyond that, back-pressure on the
/// appenders is the right answer because the disk is the bottleneck.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 8192;

/// Default cap on payload bytes waiting in the submission queue, so a burst of large records
/// cannot grow memory without bound even when the record count is below capacity.
pub const DEFAULT_CHANNEL_CAPACITY_BYTES: usize = 64 * 1024 * 1024;

/// Default largest payload accepted by `append`: generous for MQTT (whose packets max out at
/// 256 MiB, but the broker's own limit is far lower) while keeping a batch bounded.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// Default niceness asked for the writer thread (see [`WalOptions::writer_nice`]).
pub const DEFAULT_WRITER_NICE: i32 = -10;

/// Default number of checkpointed segments kept for reuse (see [`WalOptions::spare_segments`]).
/// The broker checkpoints about once per segment written, so two cover a rotation that comes
/// before the next checkpoint.
pub const DEFAULT_SPARE_SEGMENTS: usize = 2;

/// Most spare segments [`WalOptions::spare_segments`] accepts.
pub const MAX_SPARE_SEGMENTS: usize = 64;

/// Options for [`crate::Wal::open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Rotate to a new segment when the next record would grow the current one past this.
    /// A single record larger than this still goes into a segment of its own.
    pub segment_size_bytes: u64,
    /// When appends complete; see [`SyncPolicy`].
    pub sync_policy: SyncPolicy,
    /// How recovery treats bad data; see [`RecoveryMode`].
    pub recovery_mode: RecoveryMode,
    /// Most records written and synced together.
    pub max_batch_records: usize,
    /// Most payload bytes written and synced together (a single larger record is still
    /// written, alone).
    pub max_batch_bytes: usize,
    /// Submission queue capacity in records; `append` blocks (and `try_append` fails) beyond it.
    pub channel_capacity: usize,
    /// Submission queue capacity in payload bytes.
    pub channel_capacity_bytes: usize,
    /// Largest payload `append` accepts.
    pub max_record_bytes: usize,
    /// Scheduling niceness (-20..=19, lower runs first) the writer thread asks for, or `None`
    /// to leave it as inherited. Every acknowledgement waits for this one thread, and it
    /// sleeps in fdatasync most of the time, so when the disk answers it must get a CPU at
    /// once rather than queue behind the appenders. On a busy machine that wait was 13% of
    /// the writer's time at the default priority and 4% at -10. Raising priority needs
    /// `CAP_SYS_NICE` or a `RLIMIT_NICE` that allows it; without them the writer keeps its
    /// priority and logs why once ([`crate::WalStats::writer_nice`] tells which happened).
    pub writer_nice: Option<i32>,
    /// How many segments made obsolete by [`crate::Wal::truncate_through`] are kept, renamed
    /// to `*.spare`, to be reused by later rotations instead of creating new files; the rest
    /// are deleted. Writing over blocks a file already owns spares every fdatasync the
    /// file system's metadata commit that extending a file needs: on this project's test
    /// machine (ext4) that was 1.3 to 1.7 times the fdatasyncs per second. Costs up to this
    /// many segments of disk space. 0 deletes every obsolete segment.
    pub spare_segments: usize,
    /// The sequence number of the first record of a log that holds no segment yet (a new
    /// directory, or one whose files were moved aside). A caller whose own state already
    /// covers records up to N (a store that applied them at a checkpoint) passes N + 1, so
    /// that new records never reuse a number it has applied and would skip at its recovery.
    /// A log that has segments continues where they end, whatever this says.
    pub first_seq: u64,
    /// Group commit across a short window, under [`SyncPolicy::Always`]: when others are
    /// appending (the previous fdatasync covered at least two records that asked for one), the
    /// writer holds a batch up to this long after its first record, so that more records share
    /// its fdatasync, then writes and syncs them together. A record is still reported durable
    /// only after an fdatasync that covers it; what the window trades is latency (at most this
    /// much more per acknowledgement) for CPU and disk work per record (every fdatasync costs
    /// the same fixed work, whatever it covers). [`crate::Wal::expedite`] ends a window early,
    /// and a batch that reaches [`Self::max_batch_records`] or [`Self::max_batch_bytes`] is
    /// written at once. A lone appender that waits for each record before the next is never
    /// held. Zero (the default) turns it off; at most [`MAX_COMMIT_WINDOW`].
    pub commit_window: Duration,
    /// Ends a commit window early once no record asking for an fdatasync has been appended
    /// for this long: the appenders are then waiting for this batch (each has as many records
    /// in flight as it may), and holding it longer gains nothing. Zero (the default), or at
    /// least [`Self::commit_window`], turns it off; at most [`MAX_COMMIT_WINDOW`].
    pub commit_quiet: Duration,
}

/// The longest [`WalOptions::commit_window`].
pub const MAX_COMMIT_WINDOW: Duration = Duration::from_secs(1);

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes: DEFAULT_SEGMENT_SIZE_BYTES,
            sync_policy: SyncPolicy::Always,
            recovery_mode: RecoveryMode::TolerateTornTail,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            channel_capacity_bytes: DEFAULT_CHANNEL_CAPACITY_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            writer_nice: Some(DEFAULT_WRITER_NICE),
            spare_segments: DEFAULT_SPARE_SEGMENTS,
            first_seq: 1,
            commit_window: Duration::ZERO,
            commit_quiet: Duration::ZERO,
        }
    }
}

impl WalOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |reason| Err(Error::InvalidOptions { reason });
        if self.segment_size_bytes < (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN) as u64 {
            return invalid("segment_size_bytes is smaller than one header and one record header");
        }
        if self.max_batch_records == 0 || self.max_batch_bytes == 0 {
            return invalid("max_batch_records and max_batch_bytes must be positive");
        }
        if self.channel_capacity == 0 || self.channel_capacity_bytes == 0 {
            return invalid("channel_capacity and channel_capacity_bytes must be positive");
        }
        if self.max_record_bytes > MAX_PAYLOAD_LEN as usize {
            return invalid("max_record_bytes exceeds the format's payload limit");
        }
        if self.max_record_bytes > self.channel_capacity_bytes {
            return invalid("max_record_bytes exceeds channel_capacity_bytes");
        }
        if self.writer_nice.is_some_and(|n| !(-20..=19).contains(&n)) {
            return invalid("writer_nice must be between -20 and 19");
        }
        if self.spare_segments > MAX_SPARE_SEGMENTS {
            return invalid("spare_segments must be at most 64");
        }
        if self.first_seq == 0 || self.first_seq > crate::format::MAX_SEQ {
            return invalid("first_seq must be between 1 and the format's largest sequence number");
        }
        if self.commit_window > MAX_COMMIT_WINDOW {
            return invalid("commit_window must be at most one second");
        }
        if self.commit_quiet > MAX_COMMIT_WINDOW {
            return invalid("commit_quiet must be at most one second");
        }
        if let SyncPolicy::IntervalMs(0) = self.sync_policy {
            return invalid("SyncPolicy::IntervalMs needs a positive interval (use Always)");
        }
        Ok(())
    }
}
