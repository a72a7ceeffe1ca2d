//! Broker-wide counters, read by the `$SYS` publisher (and later the HTTP API).

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters and gauges. Relaxed atomics: they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// QoS 0 deliveries dropped because a queue was full (the documented overflow policy).
    pub dropped_qos0: AtomicU64,
    /// Deliveries dropped because their message expired before they could be sent.
    pub expired: AtomicU64,
    /// PUBLISH packets not sent because they exceeded the client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// QoS 1/2 copies not queued for an offline or stalled subscriber whose queue was full
    /// (its publisher and the other subscribers went on).
    pub dropped_queue_full: AtomicU64,
    /// QoS 1/2 publishes refused (v5 0x97) or held back (3.x) because a draining subscriber's
    /// queue was full.
    pub queue_full_refusals: AtomicU64,
    /// QoS 0 publishes that paused their publisher because a draining subscriber's queue was
    /// full (see `limits.stalled_subscriber_ms`).
    pub qos0_paused: AtomicU64,
    /// Retained updates refused because `max_retained_messages` was reached.
    pub retained_refused: AtomicU64,
    /// Connections closed because of a malformed packet or a protocol error.
    pub protocol_errors: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
