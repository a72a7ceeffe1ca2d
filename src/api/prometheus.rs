//! The Prometheus text exposition format (0.0.4) at `/metrics` and
//! `/api/v5/prometheus/stats`, built from the metrics snapshot (atomic counters; the
//! subscription and retained counts kept by their locks' writers, each session's queue length
//! kept by its changes), the WAL's lock-free histograms and the checkpoint counters: a scrape
//! takes no lock on the message path (only the session registry's, to count sessions and find
//! the sinks' sessions, which connects and disconnects take).
//!
//! EMQX's names are kept where EMQX has one (`emqx_connections_count`,
//! `emqx_messages_received`, `emqx_rule_matched{rule=…}`, …) so existing dashboards work; they
//! are exposed untyped, as their names do not follow Prometheus' suffix conventions (a counter
//! without `_total`, a gauge ending in `_count`) that `promtool check metrics` enforces on typed
//! families. KeelMQ's own families (`keelmq_…`) are typed and follow them.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::Ctx;
use crate::broker::metrics::{RuleStats, SinkSnapshot, SinkStats};
use crate::broker::MetricsSnapshot;
use keelmq_wal::histogram::{HistogramSnapshot, RECORDS_PER_SYNC_BOUNDS, SYNC_MICROS_BOUNDS};

/// `GET /metrics`.
#[utoipa::path(get, path = "/prometheus/stats", tag = "metrics",
    responses((status = 200, description = "Prometheus text format (no login)"))
)]
pub(super) async fn scrape(State(ctx): State<Ctx>) -> impl IntoResponse {
    let text = render(&ctx);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// The whole exposition.
pub fn render(ctx: &Ctx) -> String {
    let m = ctx.broker.metrics_snapshot();
    let mut out = Text::default();
    emqx_families(&mut out, &m);
    rule_families(&mut out, &m);
    bridge_families(&mut out, "sink", &m.sinks);
    bridge_families(&mut out, "source", &m.sources);
    listener_families(&mut out, &m);
    out.histogram(
        "keelmq_ack_delay_seconds",
        "Time from a QoS 1/2 PUBLISH's arrival to its PUBACK or PUBREC going out.",
        &m.ack_delay,
        &keelmq_wal::histogram::ACK_MICROS_BOUNDS,
        1e6,
    );
    durability_families(&mut out, ctx);
    out.0
}

#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: Option<&str>, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        if let Some(kind) = kind {
            let _ = writeln!(self.0, "# TYPE {name} {kind}");
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// An untyped family of one unlabelled sample (EMQX's names).
    fn emqx(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, None, help);
        self.sample(name, &[], value);
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        h: &HistogramSnapshot,
        bounds: &[u64],
        scale: f64,
    ) {
        self.family(name, Some("histogram"), help);
        let cumulative = h.cumulative();
        for (bound, count) in bounds.iter().zip(cumulative) {
            let le = format!("{}", *bound as f64 / scale);
            self.sample(&format!("{name}_bucket"), &[("le", &le)], count);
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count());
        self.sample(&format!("{name}_sum"), &[], h.sum as f64 / scale);
        self.sample(&format!("{name}_count"), &[], h.count());
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// EMQX's families: name, help, value.
type Family = (&'static str, &'static str, fn(&MetricsSnapshot) -> u64);

const EMQX_FAMILIES: [Family; 16] = [
    (
        "emqx_connections_count",
        "Sessions (connected or not).",
        |m| m.sessions,
    ),
    ("emqx_live_connections_count", "Connected clients.", |m| {
        m.connections_current
    }),
    ("emqx_connections_max", "The connection limit.", |m| {
        m.connections_maximum
    }),
    ("emqx_sessions_count", "Sessions.", |m| m.sessions),
    ("emqx_subscriptions_count", "Subscriptions.", |m| {
        m.subscriptions
    }),
    ("emqx_retained_count", "Retained messages.", |m| m.retained),
    (
        "emqx_messages_received",
        "PUBLISH packets received from clients.",
        |m| m.messages_received,
    ),
    (
        "emqx_messages_sent",
        "PUBLISH packets sent to clients.",
        |m| m.messages_sent,
    ),
    (
        "emqx_messages_dropped",
        "Deliveries dropped (queue full, too large, expired).",
        |m| m.dropped_qos0 + m.dropped_queue_full + m.dropped_too_large + m.expired,
    ),
    (
        "emqx_messages_dropped_expired",
        "Deliveries whose message expired.",
        |m| m.expired,
    ),
    ("emqx_bytes_received", "Bytes received from clients.", |m| {
        m.bytes_received
    }),
    ("emqx_bytes_sent", "Bytes sent to clients.", |m| {
        m.bytes_sent
    }),
    ("emqx_client_connected", "Connections accepted.", |m| {
        m.connections_total
    }),
    (
        "emqx_authentication_success",
        "CONNECTs the authenticator accepted.",
        |m| m.auth_success,
    ),
    (
        "emqx_authentication_failure",
        "CONNECTs the authenticator refused.",
        |m| m.auth_failure,
    ),
    (
        "emqx_authorization_deny",
        "PUBLISH and SUBSCRIBE the authorizer refused.",
        |m| m.not_authorized,
    ),
];

fn emqx_families(out: &mut Text, m: &MetricsSnapshot) {
    for (name, help, value) in EMQX_FAMILIES {
        out.emqx(name, help, value(m));
    }
}

fn rule_families(out: &mut Text, m: &MetricsSnapshot) {
    let Some(first) = m.rules.first() else {
        return;
    };
    for (i, (name, _)) in RuleStats::named(first).iter().enumerate() {
        let family = format!("emqx_rule_{}", name.replace('.', "_"));
        out.family(&family, None, &format!("Rule metric `{name}`, per rule."));
        for r in &m.rules {
            out.sample(&family, &[("rule", &r.id)], RuleStats::named(r)[i].1);
        }
    }
}

fn bridge_families(out: &mut Text, what: &str, all: &[SinkSnapshot]) {
    let Some(first) = all.first() else {
        return;
    };
    for (i, (name, _)) in SinkStats::named(first).iter().enumerate() {
        let gauge = matches!(*name, "inflight" | "queuing");
        let (family, kind) = match gauge {
            true => (format!("keelmq_{what}_{name}"), "gauge"),
            false => (format!("keelmq_{what}_{name}_total"), "counter"),
        };
        out.family(
            &family,
            Some(kind),
            &format!("Per {what}: EMQX's `{name}`."),
        );
        for s in all {
            out.sample(
                &family,
                &[(what, &s.name), ("kind", s.kind)],
                SinkStats::named(s)[i].1,
            );
        }
    }
    let family = format!("keelmq_{what}_connected");
    out.family(
        &family,
        Some("gauge"),
        &format!("1 while the {what} reaches its peer."),
    );
    for s in all {
        let up = u8::from(s.status == crate::broker::metrics::SinkStatus::Connected);
        out.sample(&family, &[(what, &s.name), ("kind", s.kind)], up);
    }
}

fn listener_families(out: &mut Text, m: &MetricsSnapshot) {
    type Pick = fn(&crate::broker::metrics::ListenerSnapshot) -> u64;
    let families: [(&str, &str, &str, Pick); 3] = [
        (
            "keelmq_listener_connections",
            "gauge",
            "Connections open, per listener.",
            |l| l.current,
        ),
        (
            "keelmq_listener_accepted_total",
            "counter",
            "Connections accepted, per listener.",
            |l| l.total,
        ),
        (
            "keelmq_listener_refused_total",
            "counter",
            "Connections refused, per listener.",
            |l| l.refused,
        ),
    ];
    for (name, kind, help, pick) in families {
        out.family(name, Some(kind), help);
        for l in &m.listeners {
            out.sample(name, &[("listener", &l.name), ("type", l.kind)], pick(l));
        }
    }
}

fn durability_families(out: &mut Text, ctx: &Ctx) {
    let Some(p) = ctx.broker.persistence() else {
        return;
    };
    wal_families(out, p.wal());
    let c = p.checkpoint_stats();
    let recovery = ctx.recovery.as_ref();
    let counters: [(&str, &str, u64); 2] = [
        (
            "keelmq_checkpoints_total",
            "Checkpoints written to the store.",
            c.written,
        ),
        (
            "keelmq_checkpoint_failures_total",
            "Checkpoints that failed.",
            c.failed,
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, Some("counter"), help);
        out.sample(name, &[], value);
    }
    let gauges: [(&str, &str, f64); 3] = [
        (
            "keelmq_checkpoint_last_timestamp_seconds",
            "When the last checkpoint was written (Unix time).",
            c.last_at_ms as f64 / 1e3,
        ),
        (
            "keelmq_checkpoint_last_duration_seconds",
            "How long the last checkpoint took.",
            c.last_micros as f64 / 1e6,
        ),
        (
            "keelmq_recovery_seconds",
            "How long recovery took at this start.",
            recovery.map_or(0.0, |(r, restore)| (r.elapsed + *restore).as_secs_f64()),
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, Some("gauge"), help);
        out.sample(name, &[], value);
    }
}

/// The write-ahead log's histograms, counters and what waits for an fdatasync.
fn wal_families(out: &mut Text, wal: &keelmq_wal::Wal) {
    let stats = wal.stats();
    out.histogram(
        "keelmq_wal_fsync_seconds",
        "Latency of the write-ahead log's fdatasync calls.",
        &stats.sync_latency,
        &SYNC_MICROS_BOUNDS,
        1e6,
    );
    out.histogram(
        "keelmq_wal_records_per_fsync",
        "Records each fdatasync of the write-ahead log made durable (group commit).",
        &stats.records_per_sync,
        &RECORDS_PER_SYNC_BOUNDS,
        1.0,
    );
    let pending = wal.assigned_seq().saturating_sub(wal.durable_seq());
    let families: [(&str, &str, &str, u64); 5] = [
        ("keelmq_wal_records_total", "counter", "Records written to the write-ahead log.", stats.records),
        ("keelmq_wal_bytes_total", "counter", "Bytes written to the write-ahead log.", stats.bytes),
        ("keelmq_wal_fsyncs_total", "counter", "fdatasync calls of the write-ahead log.", stats.fsyncs),
        (
            "keelmq_wal_bytes_not_durable",
            "gauge",
            "Bytes appended to the write-ahead log and not yet fdatasynced (acknowledgements waiting).",
            wal.bytes_not_durable(),
        ),
        (
            "keelmq_wal_records_not_durable",
            "gauge",
            "Records appended to the write-ahead log and not yet fdatasynced.",
            pending,
        ),
    ];
    for (name, kind, help, value) in families {
        out.family(name, Some(kind), help);
        out.sample(name, &[], value);
    }
}
