//! Broker-wide counters, and [`MetricsSnapshot`]: one consistent-enough read of them with the
//! broker's gauges, for `$SYS`, the HTTP API and Prometheus (no lock on the hot path: the
//! counters are relaxed atomics, read one by one).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One listener's connection counts (kept by the transport, read by snapshots).
#[derive(Debug)]
pub struct ListenerStats {
    pub name: Arc<str>,
    pub kind: &'static str,
    pub bind: SocketAddr,
    /// Sockets open now (handshakes included).
    pub current: AtomicU64,
    /// Sockets accepted since start.
    pub total: AtomicU64,
    /// Sockets closed at once because the listener held `max_connections`.
    pub refused: AtomicU64,
}

/// A listener's counts in a [`MetricsSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSnapshot {
    pub name: String,
    pub kind: &'static str,
    pub bind: SocketAddr,
    pub current: u64,
    pub total: u64,
    pub refused: u64,
}

impl ListenerStats {
    pub fn snapshot(&self) -> ListenerSnapshot {
        ListenerSnapshot {
            name: self.name.to_string(),
            kind: self.kind,
            bind: self.bind,
            current: self.current.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// One rule's counters, with EMQX's names (kept by the rule engine, read by snapshots).
#[derive(Debug, Default)]
pub struct RuleStats {
    pub id: String,
    /// Inputs whose topic or event the rule reads.
    pub matched: AtomicU64,
    /// Inputs that gave at least one output.
    pub passed: AtomicU64,
    /// Inputs that gave none: `WHERE` did not hold (`failed.no_result`) or evaluation failed
    /// (`failed.exception`).
    pub failed: AtomicU64,
    pub failed_exception: AtomicU64,
    pub failed_no_result: AtomicU64,
    /// Action runs (one per output and action).
    pub actions_total: AtomicU64,
    pub actions_success: AtomicU64,
    /// Failed attempts (a retried attempt that fails counts each time).
    pub actions_failed: AtomicU64,
    /// Action runs given up for good (a republish whose topic renders invalid).
    pub actions_discarded: AtomicU64,
}

/// A rule's counts in a [`MetricsSnapshot`] (EMQX's names, `.` as `_`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSnapshot {
    pub id: String,
    pub matched: u64,
    pub passed: u64,
    pub failed: u64,
    pub failed_exception: u64,
    pub failed_no_result: u64,
    pub actions_total: u64,
    pub actions_success: u64,
    pub actions_failed: u64,
    pub actions_discarded: u64,
}

impl RuleStats {
    pub fn new(id: &str) -> RuleStats {
        RuleStats {
            id: id.to_string(),
            ..RuleStats::default()
        }
    }

    pub fn snapshot(&self) -> RuleSnapshot {
        let get = Metrics::get;
        RuleSnapshot {
            id: self.id.clone(),
            matched: get(&self.matched),
            passed: get(&self.passed),
            failed: get(&self.failed),
            failed_exception: get(&self.failed_exception),
            failed_no_result: get(&self.failed_no_result),
            actions_total: get(&self.actions_total),
            actions_success: get(&self.actions_success),
            actions_failed: get(&self.actions_failed),
            actions_discarded: get(&self.actions_discarded),
        }
    }

    /// `(name, value)` pairs with EMQX's metric names.
    pub fn named(s: &RuleSnapshot) -> [(&'static str, u64); 9] {
        [
            ("matched", s.matched),
            ("passed", s.passed),
            ("failed", s.failed),
            ("failed.exception", s.failed_exception),
            ("failed.no_result", s.failed_no_result),
            ("actions.total", s.actions_total),
            ("actions.success", s.actions_success),
            ("actions.failed", s.actions_failed),
            ("actions.discarded", s.actions_discarded),
        ]
    }
}

/// Whether a sink reaches its target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SinkStatus {
    /// Not tried yet, or trying again after a failure (`last_error` says which).
    #[default]
    Connecting,
    Connected,
    /// The last attempt failed; the sink retries.
    Disconnected,
}

impl SinkStatus {
    pub fn name(&self) -> &'static str {
        match self {
            SinkStatus::Connecting => "connecting",
            SinkStatus::Connected => "connected",
            SinkStatus::Disconnected => "disconnected",
        }
    }
}

/// One sink's counters, with EMQX's names (kept by the bridges, read by snapshots).
#[derive(Debug, Default)]
pub struct SinkStats {
    pub name: String,
    pub kind: &'static str,
    /// Items (messages, or rule outputs) taken from the sink's queues.
    pub matched: AtomicU64,
    /// Items the target accepted.
    pub success: AtomicU64,
    /// Failed write attempts (each retry of a batch counts its items again).
    pub failed: AtomicU64,
    /// Items retried after a failed attempt.
    pub retried: AtomicU64,
    /// Items in a write now.
    pub inflight: AtomicU64,
    /// Items the target refused for good (published to the dead-letter topic).
    pub dropped: AtomicU64,
    /// Writes that did not answer within `request_timeout_ms` (retried).
    pub late_reply: AtomicU64,
    status: parking_lot::Mutex<(SinkStatus, String)>,
}

/// A sink's counts and status in a [`MetricsSnapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkSnapshot {
    pub name: String,
    pub kind: &'static str,
    pub status: SinkStatus,
    pub last_error: String,
    pub matched: u64,
    pub success: u64,
    pub failed: u64,
    pub retried: u64,
    pub inflight: u64,
    /// Messages the sink's sessions hold and the target does not have yet (queued, or taken
    /// and in a write or waiting to be retried).
    pub queuing: u64,
    pub dropped: u64,
    pub late_reply: u64,
}

impl SinkStats {
    pub fn new(name: &str, kind: &'static str) -> SinkStats {
        SinkStats {
            name: name.to_string(),
            kind,
            ..SinkStats::default()
        }
    }

    /// Records whether the last attempt reached the target (`error` empty when it did).
    pub fn set_status(&self, status: SinkStatus, error: &str) {
        let mut s = self.status.lock();
        s.0 = status;
        if !error.is_empty() || s.0 == SinkStatus::Connected {
            s.1 = error.to_string();
        }
    }

    /// Records a failed attempt (`failed` += `n`) and the disconnected status with `error`;
    /// `true` when it was not disconnected before (the caller logs the change once).
    pub fn disconnected(&self, n: u64, error: &str) -> bool {
        Metrics::add(&self.failed, n);
        let mut s = self.status.lock();
        let changed = s.0 != SinkStatus::Disconnected;
        *s = (SinkStatus::Disconnected, error.to_string());
        changed
    }

    pub fn status(&self) -> (SinkStatus, String) {
        self.status.lock().clone()
    }

    /// The counters; `queuing` is the broker's to fill in.
    pub fn snapshot(&self) -> SinkSnapshot {
        let get = Metrics::get;
        let (status, last_error) = self.status();
        SinkSnapshot {
            name: self.name.clone(),
            kind: self.kind,
            status,
            last_error,
            matched: get(&self.matched),
            success: get(&self.success),
            failed: get(&self.failed),
            retried: get(&self.retried),
            inflight: get(&self.inflight),
            queuing: 0,
            dropped: get(&self.dropped),
            late_reply: get(&self.late_reply),
        }
    }

    /// `(name, value)` pairs with EMQX's metric names.
    pub fn named(s: &SinkSnapshot) -> [(&'static str, u64); 8] {
        [
            ("matched", s.matched),
            ("success", s.success),
            ("failed", s.failed),
            ("retried", s.retried),
            ("inflight", s.inflight),
            ("queuing", s.queuing),
            ("dropped", s.dropped),
            ("late_reply", s.late_reply),
        ]
    }
}

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
    /// Events not delivered to an event channel because it was full.
    pub events_dropped: AtomicU64,
    /// PUBLISH and SUBSCRIBE refused by the authorizer.
    pub not_authorized: AtomicU64,
    /// CONNECTs the authenticator accepted and refused.
    pub auth_success: AtomicU64,
    pub auth_failure: AtomicU64,
    /// Acknowledgements whose `ack = "delivered"` sinks did not confirm (refused or late).
    pub not_confirmed: AtomicU64,
    /// Microseconds from a QoS 1/2 PUBLISH's arrival to its PUBACK or PUBREC going out.
    pub ack_delay: AckDelay,
}

/// The acknowledgement-delay histogram (microseconds; see [`Metrics::ack_delay`]).
#[derive(Debug)]
pub struct AckDelay(pub keelmq_wal::histogram::Histogram);

impl Default for AckDelay {
    fn default() -> Self {
        AckDelay(keelmq_wal::histogram::Histogram::new(
            &keelmq_wal::histogram::ACK_MICROS_BOUNDS,
        ))
    }
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The broker's counters and gauges at one moment (each read on its own: totals may be a few
/// events apart). Everything an exporter needs, as plain numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub uptime_secs: u64,
    pub connections_current: u64,
    pub connections_total: u64,
    pub connections_refused: u64,
    pub connections_maximum: u64,
    pub sessions: u64,
    pub subscriptions: u64,
    pub retained: u64,
    pub queued_bytes: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub dropped_qos0: u64,
    pub dropped_queue_full: u64,
    pub dropped_too_large: u64,
    pub expired: u64,
    pub queue_full_refusals: u64,
    pub qos0_paused: u64,
    pub retained_refused: u64,
    pub protocol_errors: u64,
    pub events_dropped: u64,
    pub not_authorized: u64,
    pub not_confirmed: u64,
    pub auth_success: u64,
    pub auth_failure: u64,
    /// Microseconds from a QoS 1/2 PUBLISH's arrival to its acknowledgement
    /// (`keelmq_wal::histogram::ACK_MICROS_BOUNDS`).
    pub ack_delay: keelmq_wal::histogram::HistogramSnapshot,
    /// Microseconds of each WAL fdatasync (`keelmq_wal::histogram::SYNC_MICROS_BOUNDS`).
    pub wal_fsync: keelmq_wal::histogram::HistogramSnapshot,
    /// Per listener, in configuration order.
    pub listeners: Vec<ListenerSnapshot>,
    /// Per rule of the rule engine, in the order they were added.
    pub rules: Vec<RuleSnapshot>,
    /// Per sink (data bridge), in the order they were added.
    pub sinks: Vec<SinkSnapshot>,
    /// Per source (`matched`: messages received from the remote, `success`: published here,
    /// `dropped`: refused here, `failed`: failed connection attempts).
    pub sources: Vec<SinkSnapshot>,
}

impl Metrics {
    /// The counters' part of a snapshot; the broker adds its gauges.
    pub fn counters(&self) -> MetricsSnapshot {
        let get = Metrics::get;
        MetricsSnapshot {
            connections_current: get(&self.connections_current),
            connections_total: get(&self.connections_total),
            connections_refused: get(&self.connections_refused),
            messages_received: get(&self.messages_received),
            messages_sent: get(&self.messages_sent),
            bytes_received: get(&self.bytes_received),
            bytes_sent: get(&self.bytes_sent),
            dropped_qos0: get(&self.dropped_qos0),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_too_large: get(&self.dropped_too_large),
            expired: get(&self.expired),
            queue_full_refusals: get(&self.queue_full_refusals),
            qos0_paused: get(&self.qos0_paused),
            retained_refused: get(&self.retained_refused),
            protocol_errors: get(&self.protocol_errors),
            events_dropped: get(&self.events_dropped),
            not_authorized: get(&self.not_authorized),
            not_confirmed: get(&self.not_confirmed),
            auth_success: get(&self.auth_success),
            auth_failure: get(&self.auth_failure),
            ack_delay: self.ack_delay.0.snapshot(),
            ..MetricsSnapshot::default()
        }
    }
}
