//! The `[limits]` a configuration reload changes on a running broker: broker-wide counts the
//! connect and message paths read as atomics. The others (`max_pending_connections`, the
//! per-session queue limits, `max_topic_levels`) are fixed at start: changing them needs a
//! restart, and a reload says so.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::config::LimitsConfig;

/// The limits a reload applies, by their `[limits]` names.
pub const RELOADABLE_LIMITS: [&str; 6] = [
    "max_connections",
    "max_sessions",
    "max_queued_bytes_total",
    "max_retained_messages",
    "max_subscriptions_per_client",
    "stalled_subscriber_ms",
];

#[derive(Debug)]
pub(crate) struct LiveLimits {
    max_connections: AtomicUsize,
    max_sessions: AtomicUsize,
    max_queued_bytes_total: AtomicUsize,
    max_retained_messages: AtomicUsize,
    max_subscriptions_per_client: AtomicUsize,
    stalled_subscriber_ms: AtomicU64,
}

impl LiveLimits {
    pub(crate) fn new(l: &LimitsConfig) -> LiveLimits {
        let live = LiveLimits {
            max_connections: AtomicUsize::new(0),
            max_sessions: AtomicUsize::new(0),
            max_queued_bytes_total: AtomicUsize::new(0),
            max_retained_messages: AtomicUsize::new(0),
            max_subscriptions_per_client: AtomicUsize::new(0),
            stalled_subscriber_ms: AtomicU64::new(0),
        };
        live.apply(l);
        live
    }

    pub(crate) fn apply(&self, l: &LimitsConfig) {
        let r = Ordering::Relaxed;
        self.max_connections.store(l.max_connections, r);
        self.max_sessions.store(l.max_sessions, r);
        self.max_queued_bytes_total
            .store(l.max_queued_bytes_total, r);
        self.max_retained_messages.store(l.max_retained_messages, r);
        self.max_subscriptions_per_client
            .store(l.max_subscriptions_per_client, r);
        self.stalled_subscriber_ms.store(l.stalled_subscriber_ms, r);
    }

    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }
    pub(crate) fn max_sessions(&self) -> usize {
        self.max_sessions.load(Ordering::Relaxed)
    }
    pub(crate) fn max_queued_bytes_total(&self) -> usize {
        self.max_queued_bytes_total.load(Ordering::Relaxed)
    }
    pub(crate) fn max_retained_messages(&self) -> usize {
        self.max_retained_messages.load(Ordering::Relaxed)
    }
    pub(crate) fn max_subscriptions_per_client(&self) -> usize {
        self.max_subscriptions_per_client.load(Ordering::Relaxed)
    }
    pub(crate) fn stalled_subscriber_ms(&self) -> u64 {
        self.stalled_subscriber_ms.load(Ordering::Relaxed)
    }
}

/// The fields of `[limits]` that differ between `old` and `new`, split into those a reload
/// applies and those that need a restart.
pub fn changed_limits(
    old: &LimitsConfig,
    new: &LimitsConfig,
) -> (Vec<&'static str>, Vec<&'static str>) {
    let fields: [(&'static str, bool); 10] = [
        (
            "max_connections",
            old.max_connections != new.max_connections,
        ),
        ("max_sessions", old.max_sessions != new.max_sessions),
        (
            "max_pending_connections",
            old.max_pending_connections != new.max_pending_connections,
        ),
        (
            "max_queued_messages",
            old.max_queued_messages != new.max_queued_messages,
        ),
        (
            "max_queued_bytes",
            old.max_queued_bytes != new.max_queued_bytes,
        ),
        (
            "max_queued_bytes_total",
            old.max_queued_bytes_total != new.max_queued_bytes_total,
        ),
        (
            "max_retained_messages",
            old.max_retained_messages != new.max_retained_messages,
        ),
        (
            "max_topic_levels",
            old.max_topic_levels != new.max_topic_levels,
        ),
        (
            "max_subscriptions_per_client",
            old.max_subscriptions_per_client != new.max_subscriptions_per_client,
        ),
        (
            "stalled_subscriber_ms",
            old.stalled_subscriber_ms != new.stalled_subscriber_ms,
        ),
    ];
    let changed = fields.into_iter().filter(|(_, c)| *c).map(|(name, _)| name);
    changed.partition(|name| RELOADABLE_LIMITS.contains(name))
}
