//! The dashboard's history: a sample of the broker's gauges and of its counters' growth every
//! `api.monitor_interval_secs` (10 s by default), kept in a ring of [`MONITOR_SAMPLES`] (two
//! hours at 10 s; the oldest sample goes first). `GET /api/v5/monitor?latest=SECONDS` and
//! `GET /api/v5/monitor_current` (EMQX's paths) read it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use parking_lot::Mutex;
use serde_json::{json, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult, Query};
use super::Ctx;
use crate::broker::{Broker, MetricsSnapshot};

/// Samples kept.
pub const MONITOR_SAMPLES: usize = 720;

/// One sample: gauges as they were, counters as their growth since the previous sample.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub time_stamp: u64,
    pub connections: u64,
    pub live_connections: u64,
    pub subscriptions: u64,
    pub retained: u64,
    pub queued_bytes: u64,
    pub received: u64,
    pub sent: u64,
    pub dropped: u64,
    pub fsyncs: u64,
    pub wal_records: u64,
}

/// The ring of samples.
#[derive(Default)]
pub struct Monitor {
    samples: Mutex<VecDeque<Sample>>,
}

/// The counters a sample takes the growth of.
#[derive(Clone, Copy, Default)]
struct Totals {
    received: u64,
    sent: u64,
    dropped: u64,
    fsyncs: u64,
    wal_records: u64,
}

fn totals(broker: &Broker, m: &MetricsSnapshot) -> Totals {
    let wal = broker
        .persistence()
        .map(|p| p.wal().stats())
        .unwrap_or_default();
    Totals {
        received: m.messages_received,
        sent: m.messages_sent,
        dropped: m.dropped_qos0 + m.dropped_queue_full + m.dropped_too_large + m.expired,
        fsyncs: wal.fsyncs,
        wal_records: wal.records,
    }
}

impl Monitor {
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock();
        if samples.len() == MONITOR_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Samples every `interval` until the broker shuts down.
    pub async fn run(self: std::sync::Arc<Self>, broker: Broker, interval: Duration) {
        let mut shutdown = broker.shutdown_signal();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Totals> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let m = broker.metrics_snapshot();
            let now = totals(&broker, &m);
            let before = last.unwrap_or(now);
            last = Some(now);
            self.push(Sample {
                time_stamp: crate::persistence::convert::wall_clock_ms(),
                connections: m.sessions,
                live_connections: m.connections_current,
                subscriptions: m.subscriptions,
                retained: m.retained,
                queued_bytes: m.queued_bytes,
                received: now.received.saturating_sub(before.received),
                sent: now.sent.saturating_sub(before.sent),
                dropped: now.dropped.saturating_sub(before.dropped),
                fsyncs: now.fsyncs.saturating_sub(before.fsyncs),
                wal_records: now.wal_records.saturating_sub(before.wal_records),
            });
        }
    }

    fn latest(&self, since_ms: u64) -> Vec<Sample> {
        let samples = self.samples.lock();
        samples
            .iter()
            .filter(|s| s.time_stamp >= since_ms)
            .copied()
            .collect()
    }
}

pub(super) fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(monitor))
        .routes(routes!(current))
}

/// `GET /monitor?latest=SECONDS`: the samples of the last SECONDS (all by default).
#[utoipa::path(get, path = "/monitor", tag = "monitor",
    params(("latest" = Option<u64>, Query, description = "Seconds of history")),
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn monitor(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let now = crate::persistence::convert::wall_clock_ms();
    let since = match q.get("latest") {
        None => 0,
        Some(v) => {
            let secs: u64 = v
                .parse()
                .map_err(|_| ApiError::bad_request("`latest` must be a number of seconds"))?;
            now.saturating_sub(secs.saturating_mul(1000))
        }
    };
    Ok(Json(json!(ctx.monitor.latest(since))))
}

/// `GET /monitor_current`: the gauges now and the rates of the last sample, per second.
#[utoipa::path(get, path = "/monitor_current", tag = "monitor",
    responses((status = 200, description = "OK"), (status = 401, description = "No or wrong credentials"))
)]
async fn current(State(ctx): State<Ctx>) -> Json<Value> {
    let m = ctx.broker.metrics_snapshot();
    let last = ctx
        .monitor
        .samples
        .lock()
        .back()
        .copied()
        .unwrap_or_default();
    let secs = ctx.broker.config().api.monitor_interval_secs.max(1) as f64;
    Json(json!({
        "connections": m.sessions,
        "live_connections": m.connections_current,
        "subscriptions": m.subscriptions,
        "retained_msg_count": m.retained,
        "received_msg_rate": last.received as f64 / secs,
        "sent_msg_rate": last.sent as f64 / secs,
        "dropped_msg_rate": last.dropped as f64 / secs,
        "fsync_rate": last.fsyncs as f64 / secs,
    }))
}
