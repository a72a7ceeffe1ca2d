//! The bounded submission queue between appenders and the writer thread.
//!
//! It is a channel built on a mutex and two condition variables rather than `std::sync::mpsc`
//! because three things must happen atomically: assigning the next sequence number, enqueueing
//! in that order, and (on a failure) failing everything queued while rewinding the sequence.
//! The writer drains up to a whole batch under one lock acquisition.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the idle writer polls for new work, yielding the CPU between polls, before
/// sleeping on the condition variable. With few appenders the next append typically arrives
/// a few tens of microseconds after the previous completion; catching it while polling saves
/// a futex wake-up (itself tens of microseconds on a busy machine) on every fdatasync cycle.
/// Bounded so an idle log costs nothing measurable.
const WRITER_SPIN: Duration = Duration::from_micros(100);

use crate::durable::{durable_pair, Completer, Durable};
use crate::error::{Error, Result};

/// A unit of work for the writer thread.
pub(crate) enum Item {
    Append {
        seq: u64,
        record_type: u8,
        payload: Vec<u8>,
        completer: Completer,
        /// Asks for no fdatasync of its own (see [`crate::Wal::append_lazy`]).
        lazy: bool,
    },
    Truncate {
        through: u64,
        completer: Completer,
    },
    Sync {
        completer: Completer,
    },
}

struct State {
    items: VecDeque<Item>,
    /// Number of `Append` items in `items` (control items do not count against capacity).
    appends: usize,
    queued_bytes: usize,
    next_seq: u64,
    closed: bool,
    poisoned: Option<Error>,
    writer_idle: bool,
    /// While the writer holds a small batch: the number of queued appends at which it wants
    /// to be woken early.
    hold_until_appends: Option<usize>,
    /// When the last append that asks for an fdatasync was queued (see
    /// [`Queue::take_held`]'s `quiet`).
    last_sync_append: Option<Instant>,
    blocked_appenders: usize,
}

pub(crate) struct Queue {
    state: Mutex<State>,
    /// Mirrors `!state.items.is_empty()`, so the spinning writer can poll without the lock.
    has_items: AtomicBool,
    /// Mirrors `state.next_seq - 1` (the last sequence number assigned), for monitoring
    /// without the lock.
    assigned: AtomicU64,
    /// Set by [`Queue::expedite`]: the writer ends (or does not start) its commit window.
    expedited: AtomicBool,
    /// Mirrors `state.queued_bytes`, for monitoring without the lock.
    bytes: AtomicU64,
    /// The writer waits here for work.
    work: Condvar,
    /// Appenders wait here for space.
    space: Condvar,
    capacity: usize,
    capacity_bytes: usize,
    /// Whether appends that ask for an fdatasync stamp `State::last_sync_append` (only a
    /// commit window with a quiet end reads it; the clock is not read otherwise).
    stamp_sync_appends: bool,
}

/// What [`Queue::take`] found.
pub(crate) enum Take {
    Items,
    Timeout,
    Closed,
}

impl Queue {
    pub(crate) fn new(
        next_seq: u64,
        capacity: usize,
        capacity_bytes: usize,
        stamp_sync_appends: bool,
    ) -> Queue {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                appends: 0,
                queued_bytes: 0,
                next_seq,
                closed: false,
                poisoned: None,
                writer_idle: false,
                hold_until_appends: None,
                last_sync_append: None,
                blocked_appenders: 0,
            }),
            has_items: AtomicBool::new(false),
            expedited: AtomicBool::new(false),
            assigned: AtomicU64::new(next_seq.saturating_sub(1)),
            bytes: AtomicU64::new(0),
            work: Condvar::new(),
            space: Condvar::new(),
            capacity,
            capacity_bytes,
            stamp_sync_appends,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding this lock; recover the guard rather than cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn usable(state: &State) -> Result<()> {
        if let Some(err) = &state.poisoned {
            return Err(err.clone());
        }
        if state.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn wake_writer(&self, state: &mut State) {
        if state.hold_until_appends.is_some_and(|n| state.appends >= n) {
            state.hold_until_appends = None;
            self.work.notify_one();
            return;
        }
        if state.writer_idle {
            state.writer_idle = false;
            self.work.notify_one();
        }
    }

    /// Assigns the next sequence number and enqueues the record. Blocks for space if `block`,
    /// otherwise fails with [`Error::Full`].
    pub(crate) fn push_append(
        &self,
        record_type: u8,
        payload: Vec<u8>,
        block: bool,
        lazy: bool,
    ) -> Result<(u64, Durable)> {
        // Allocate and read the clock before taking the lock: the writer competes for it.
        let (durable, completer) = durable_pair();
        let stamp = (self.stamp_sync_appends && !lazy).then(Instant::now);
        let mut state = self.lock();
        loop {
            Self::usable(&state)?;
            let fits = state.appends < self.capacity
                && (state.queued_bytes + payload.len() <= self.capacity_bytes
                    || state.appends == 0);
            if fits {
                break;
            }
            if !block {
                return Err(Error::Full);
            }
            state.blocked_appenders += 1;
            state = self.space.wait(state).unwrap_or_else(|e| e.into_inner());
            state.blocked_appenders -= 1;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        self.assigned.store(seq, Ordering::Relaxed);
        state.queued_bytes += payload.len();
        self.bytes
            .store(state.queued_bytes as u64, Ordering::Relaxed);
        state.appends += 1;
        if stamp.is_some() {
            state.last_sync_append = stamp;
        }
        state.items.push_back(Item::Append {
            seq,
            record_type,
            payload,
            completer,
            lazy,
        });
        self.has_items.store(true, Ordering::Release);
        self.wake_writer(&mut state);
        Ok((seq, durable))
    }

    /// Blocks until a record of `bytes` would fit (or the log is poisoned or closed), without
    /// appending: a caller that must not wait while it holds a lock of its own drops the lock,
    /// waits here, and tries again.
    pub(crate) fn wait_for_space(&self, bytes: usize) -> Result<()> {
        let mut state = self.lock();
        loop {
            Self::usable(&state)?;
            let fits = state.appends < self.capacity
                && (state.queued_bytes + bytes <= self.capacity_bytes || state.appends == 0);
            if fits {
                return Ok(());
            }
            state.blocked_appenders += 1;
            state = self.space.wait(state).unwrap_or_else(|e| e.into_inner());
            state.blocked_appenders -= 1;
        }
    }

    /// Enqueues a control item built from a fresh completer. Control items never wait for
    /// capacity: they are rare and a truncation is how a full disk gets space back.
    pub(crate) fn push_control(&self, make: impl FnOnce(Completer) -> Item) -> Result<Durable> {
        let mut state = self.lock();
        Self::usable(&state)?;
        let (durable, completer) = durable_pair();
        state.items.push_back(make(completer));
        self.has_items.store(true, Ordering::Release);
        self.wake_writer(&mut state);
        Ok(durable)
    }

    /// Payload bytes waiting in the queue, without the lock (monitoring).
    pub(crate) fn queued_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The last sequence number handed out, without the lock (monitoring: it may lag by a
    /// record being assigned).
    pub(crate) fn assigned_seq(&self) -> u64 {
        self.assigned.load(Ordering::Relaxed)
    }

    /// The last sequence number handed out (0 if none).
    pub(crate) fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Moves up to one batch of what is queued into `out`.
    fn move_batch(
        &self,
        state: &mut State,
        out: &mut VecDeque<Item>,
        max_records: usize,
        max_bytes: usize,
    ) {
        if out.is_empty() && state.appends <= max_records && state.queued_bytes <= max_bytes {
            // The common case: everything queued fits in one batch. Swap the buffers rather
            // than moving items one by one, to keep appenders off the lock.
            std::mem::swap(&mut state.items, out);
            state.appends = 0;
            state.queued_bytes = 0;
        } else {
            let mut bytes = 0usize;
            let mut records = 0usize;
            while let Some(item) = state.items.front() {
                if let Item::Append { payload, .. } = item {
                    let over = records >= max_records || bytes + payload.len() > max_bytes;
                    if over && records > 0 {
                        break;
                    }
                    records += 1;
                    bytes += payload.len();
                }
                if let Some(item) = state.items.pop_front() {
                    out.push_back(item);
                }
            }
            state.appends -= records;
            state.queued_bytes -= bytes;
        }
        self.bytes
            .store(state.queued_bytes as u64, Ordering::Relaxed);
        self.has_items
            .store(!state.items.is_empty(), Ordering::Release);
        if state.blocked_appenders > 0 {
            self.space.notify_all();
        }
    }

    /// Writer side, before sleeping: waits briefly (until `deadline` at the latest) for an
    /// append, without the lock.
    fn spin(&self, deadline: Option<Instant>) {
        let until = Instant::now() + WRITER_SPIN;
        let until = deadline.map_or(until, |d| d.min(until));
        while !self.has_items.load(Ordering::Acquire) && Instant::now() < until {
            // Yield, not a busy loop: the thread about to append is often the one the writer
            // just woke, queued on this very CPU, and (with the writer's raised priority) a
            // busy loop would keep it off until the spin ends.
            std::thread::yield_now();
        }
    }

    /// Writer side: moves up to one batch into `out`, waiting for work until `deadline`.
    pub(crate) fn take(
        &self,
        out: &mut VecDeque<Item>,
        max_records: usize,
        max_bytes: usize,
        deadline: Option<Instant>,
        poll: bool,
    ) -> Take {
        let mut spun = !poll;
        let mut state = self.lock();
        loop {
            if !state.items.is_empty() {
                self.move_batch(&mut state, out, max_records, max_bytes);
                return Take::Items;
            }
            if state.closed {
                return Take::Closed;
            }
            if !spun {
                spun = true;
                drop(state);
                self.spin(deadline);
                state = self.lock();
                continue;
            }
            state.writer_idle = true;
            match deadline {
                None => state = self.work.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        state.writer_idle = false;
                        return Take::Timeout;
                    }
                    state = self.wait_work(state, deadline - now);
                }
            }
            state.writer_idle = false;
        }
    }

    /// Writer side: sleeps on the work condition variable for at most `timeout`.
    fn wait_work<'a>(
        &self,
        state: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        self.work
            .wait_timeout(state, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Asks the writer to end its commit window now.
    pub(crate) fn expedite(&self) {
        if self.expedited.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut state = self.lock();
        if state.hold_until_appends.take().is_some() {
            self.work.notify_one();
        }
    }

    /// Writer side: whether an expedite was asked for since the last call.
    pub(crate) fn take_expedited(&self) -> bool {
        self.expedited.swap(false, Ordering::AcqRel)
    }

    /// Writer side, holding a batch for its commit window: waits until `until`, until `room`
    /// appends are queued, until no append asking for an fdatasync has come for `quiet` (if
    /// not zero: the appenders are waiting for this batch) or until [`Self::expedite`],
    /// without being woken by each append, then takes what is queued (or times out).
    pub(crate) fn take_held(
        &self,
        out: &mut VecDeque<Item>,
        (max_records, max_bytes): (usize, usize),
        until: Instant,
        quiet: Duration,
        room: usize,
    ) -> Take {
        let mut state = self.lock();
        let mut until = until;
        loop {
            let now = Instant::now();
            let expedited = self.expedited.load(Ordering::Acquire);
            let quiet_end = match state.last_sync_append {
                Some(last) if !quiet.is_zero() => last + quiet,
                _ => until,
            };
            if now >= until.min(quiet_end) || state.appends >= room || state.closed || expedited {
                until = until.min(now);
                break;
            }
            state.hold_until_appends = Some(room);
            state = self.wait_work(state, until.min(quiet_end) - now);
        }
        state.hold_until_appends = None;
        drop(state);
        // Expedited, quiet or full: take what is there without waiting (the expedite stays
        // set, so the writer does not hold what it takes).
        self.take(out, max_records, max_bytes, Some(until), false)
    }

    /// Writer side, after a rolled-back batch: removes every queued append (their sequence
    /// numbers follow the failed ones) and rewinds the sequence so the log stays gap-free.
    /// Returns the removed appends' completers for the caller to fail outside the lock.
    pub(crate) fn rewind(&self, next_seq: u64) -> Vec<Completer> {
        let mut state = self.lock();
        let mut failed = Vec::new();
        let mut kept = VecDeque::new();
        for item in state.items.drain(..) {
            match item {
                Item::Append { completer, .. } => failed.push(completer),
                control => kept.push_back(control),
            }
        }
        self.has_items.store(!kept.is_empty(), Ordering::Release);
        state.items = kept;
        state.appends = 0;
        state.queued_bytes = 0;
        self.bytes
            .store(state.queued_bytes as u64, Ordering::Relaxed);
        self.assigned
            .store(next_seq.saturating_sub(1), Ordering::Relaxed);
        state.next_seq = next_seq;
        if state.blocked_appenders > 0 {
            self.space.notify_all();
        }
        failed
    }

    /// Writer side: refuses everything from now on with `err` and returns what was queued.
    pub(crate) fn poison(&self, err: Error) -> Vec<Completer> {
        let mut state = self.lock();
        if state.poisoned.is_none() {
            state.poisoned = Some(err);
        }
        self.drain_all(state)
    }

    /// Writer side, when it exits: anything still queued fails with [`Error::Closed`].
    pub(crate) fn writer_exited(&self) -> Vec<Completer> {
        let mut state = self.lock();
        state.closed = true;
        self.drain_all(state)
    }

    fn drain_all(&self, mut state: MutexGuard<'_, State>) -> Vec<Completer> {
        let failed = state
            .items
            .drain(..)
            .map(|item| match item {
                Item::Append { completer, .. }
                | Item::Truncate { completer, .. }
                | Item::Sync { completer } => completer,
            })
            .collect();
        state.appends = 0;
        state.queued_bytes = 0;
        self.bytes
            .store(state.queued_bytes as u64, Ordering::Relaxed);
        self.has_items.store(false, Ordering::Release);
        self.space.notify_all();
        failed
    }

    /// Appender side: no more appends; the writer drains what is queued, then exits.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.work.notify_all();
        self.space.notify_all();
    }

    /// The poison error, if any.
    pub(crate) fn poisoned(&self) -> Option<Error> {
        self.lock().poisoned.clone()
    }
}
