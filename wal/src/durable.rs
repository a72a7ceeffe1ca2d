//! The completion handle an append returns.
//!
//! A one-shot cell shared by the writer thread (which completes it) and the appender (which
//! waits on it, polls it, or hands it a callback). Blocking and non-blocking use are both
//! first-class: a thread calls [`Durable::wait`]; async code registers
//! [`Durable::on_complete`] and completes a future from the callback, so no runtime thread
//! ever blocks on the disk.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Result};

/// A callback run once with the outcome of an append.
pub type Callback = Box<dyn FnOnce(Result<u64>) + Send + 'static>;

enum State {
    Pending(Option<Callback>),
    Done(Result<u64>),
    /// The result went to a callback.
    Delivered,
}

struct Slot {
    state: Mutex<State>,
    done: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Callbacks run outside the lock, so a poisoned mutex can only come from a panic in
        // this module's own short critical sections; the state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Completes when the record is durable (under [`crate::SyncPolicy::Always`]: covered by a
/// finished fdatasync) with its sequence number, or with the error that prevented it.
pub struct Durable {
    slot: Arc<Slot>,
}

impl fmt::Debug for Durable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Durable")
            .field("complete", &self.is_complete())
            .finish()
    }
}

impl Durable {
    /// Blocks the calling thread until the outcome is known.
    pub fn wait(self) -> Result<u64> {
        let mut state = self.slot.lock();
        loop {
            match std::mem::replace(&mut *state, State::Delivered) {
                State::Done(result) => return result,
                pending @ State::Pending(_) => {
                    *state = pending;
                    state = self
                        .slot
                        .done
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner());
                }
                State::Delivered => return Err(Error::Closed),
            }
        }
    }

    /// Waits at most `timeout`; `None` if the outcome is still unknown.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<u64>> {
        let state = self.slot.lock();
        let (state, _) = self
            .slot
            .done
            .wait_timeout_while(state, timeout, |s| matches!(s, State::Pending(_)))
            .unwrap_or_else(|e| e.into_inner());
        match &*state {
            State::Done(result) => Some(result.clone()),
            _ => None,
        }
    }

    /// The outcome if it is known, without blocking.
    pub fn try_get(&self) -> Option<Result<u64>> {
        match &*self.slot.lock() {
            State::Done(result) => Some(result.clone()),
            _ => None,
        }
    }

    /// True once the outcome is known.
    pub fn is_complete(&self) -> bool {
        matches!(&*self.slot.lock(), State::Done(_))
    }

    /// Runs `callback` with the outcome: at once on this thread if it is already known,
    /// otherwise on the WAL writer thread when it becomes known. The callback must be quick and
    /// must not block (in particular it must not call `Wal::append`, which can wait for queue
    /// space that only the writer thread frees); completing a channel or waking a task is the
    /// intended use.
    pub fn on_complete(self, callback: impl FnOnce(Result<u64>) + Send + 'static) {
        let mut state = self.slot.lock();
        match std::mem::replace(&mut *state, State::Delivered) {
            State::Done(result) => {
                drop(state);
                callback(result);
            }
            State::Pending(_) => *state = State::Pending(Some(Box::new(callback))),
            State::Delivered => {}
        }
    }
}

/// The writer's end of a [`Durable`]. Dropping it uncompleted completes the handle with
/// [`Error::Closed`], so no waiter can hang if the writer thread dies.
pub(crate) struct Completer {
    slot: Option<Arc<Slot>>,
}

impl Completer {
    pub(crate) fn complete(mut self, result: Result<u64>) {
        if let Some(slot) = self.slot.take() {
            finish(&slot, result);
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            finish(&slot, Err(Error::Closed));
        }
    }
}

fn finish(slot: &Slot, result: Result<u64>) {
    let mut state = slot.lock();
    match std::mem::replace(&mut *state, State::Delivered) {
        State::Pending(Some(callback)) => {
            drop(state);
            callback(result);
        }
        State::Pending(None) => {
            *state = State::Done(result);
            drop(state);
            slot.done.notify_all();
        }
        done @ (State::Done(_) | State::Delivered) => *state = done,
    }
}

/// A connected pair.
pub(crate) fn durable_pair() -> (Durable, Completer) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Pending(None)),
        done: Condvar::new(),
    });
    (
        Durable {
            slot: Arc::clone(&slot),
        },
        Completer { slot: Some(slot) },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn wait_try_get_and_callback_all_see_the_outcome() {
        let (durable, completer) = durable_pair();
        assert!(durable.try_get().is_none());
        assert!(durable.wait_timeout(Duration::from_millis(1)).is_none());
        let waiter = std::thread::spawn(move || durable.wait());
        completer.complete(Ok(7));
        assert_eq!(waiter.join().unwrap().unwrap(), 7);

        let (durable, completer) = durable_pair();
        let (tx, rx) = mpsc::channel();
        durable.on_complete(move |r| tx.send(r).unwrap());
        completer.complete(Ok(9));
        assert_eq!(rx.recv().unwrap().unwrap(), 9);

        let (durable, completer) = durable_pair();
        completer.complete(Ok(11));
        assert!(durable.is_complete());
        assert_eq!(durable.try_get().unwrap().unwrap(), 11);
        let (tx, rx) = mpsc::channel();
        durable.on_complete(move |r| tx.send(r).unwrap());
        assert_eq!(rx.recv().unwrap().unwrap(), 11);
    }

    #[test]
    fn dropped_completer_reports_closed() {
        let (durable, completer) = durable_pair();
        drop(completer);
        assert!(matches!(durable.wait(), Err(Error::Closed)));
    }
}
