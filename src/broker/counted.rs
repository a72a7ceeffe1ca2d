//! A read-write lock whose writers keep a count readable without the lock: the subscription
//! and retained-message counts a metrics scrape reads without touching the locks the message
//! path takes.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// What a [`CountedLock`] counts.
pub(crate) trait Count {
    fn count(&self) -> usize;
}

impl<T: Clone> Count for crate::router::Router<T> {
    fn count(&self) -> usize {
        self.len()
    }
}

impl<V> Count for crate::router::retained::RetainedStore<V> {
    fn count(&self) -> usize {
        self.len()
    }
}

/// An `RwLock<T>` and `T`'s count as of the last write guard's release.
#[derive(Debug, Default)]
pub(crate) struct CountedLock<T> {
    lock: RwLock<T>,
    count: AtomicUsize,
}

impl<T: Count> CountedLock<T> {
    pub(crate) fn new(value: T) -> CountedLock<T> {
        let count = AtomicUsize::new(value.count());
        CountedLock {
            lock: RwLock::new(value),
            count,
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
        self.lock.read()
    }

    pub(crate) fn write(&self) -> CountedGuard<'_, T> {
        CountedGuard {
            guard: self.lock.write(),
            count: &self.count,
        }
    }

    /// The count, without the lock.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// A write guard that stores the count when released.
pub(crate) struct CountedGuard<'a, T: Count> {
    guard: RwLockWriteGuard<'a, T>,
    count: &'a AtomicUsize,
}

impl<T: Count> Deref for CountedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: Count> DerefMut for CountedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T: Count> Drop for CountedGuard<'_, T> {
    fn drop(&mut self) {
        self.count.store(self.guard.count(), Ordering::Relaxed);
    }
}
