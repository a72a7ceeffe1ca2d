//! Status, nodes, stats, metrics, listeners, and `/durability` (KeelMQ's own: what the
//! promise costs and where it stands).

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult, Path, Query};
use super::{node_name, rfc3339, Ctx};
use crate::broker::MetricsSnapshot;

pub(super) fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(nodes))
        .routes(routes!(node))
        .routes(routes!(stats))
        .routes(routes!(metrics))
        .routes(routes!(listeners))
        .routes(routes!(durability))
}

/// `GET /status` (no login): for load balancers and scripts waiting for the start.
#[utoipa::path(get, path = "/status", tag = "node",
    responses((status = 200, description = "Running (no login)"))
)]
pub(super) async fn status() -> String {
    format!("Node {} is started\nkeelmq is running\n", node_name())
}

fn node_view(ctx: &Ctx) -> Value {
    let m = ctx.broker.metrics_snapshot();
    json!({
        "node": node_name(),
        "node_status": "running",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": m.uptime_secs * 1000,
        "connections": m.sessions,
        "live_connections": m.connections_current,
        "max_connections": m.connections_maximum,
        "role": "core",
        "sys_path": ctx.broker.config().data_dir.display().to_string(),
    })
}

#[utoipa::path(get, path = "/nodes", tag = "node",
    responses((status = 200, description = "OK"), (status = 401, description = "No or wrong credentials"))
)]
async fn nodes(State(ctx): State<Ctx>) -> Json<Value> {
    Json(json!([node_view(&ctx)]))
}

#[utoipa::path(get, path = "/nodes/{node}", tag = "node",
    params(("node" = String, Path, description = "Node name")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn node(State(ctx): State<Ctx>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    if name != node_name() {
        return Err(ApiError::not_found(
            "NOT_FOUND",
            format!("no node {name:?}"),
        ));
    }
    Ok(Json(node_view(&ctx)))
}

/// EMQX's `/stats` keys.
fn stats_of(m: &MetricsSnapshot) -> Value {
    json!({
        "connections.count": m.sessions,
        "live_connections.count": m.connections_current,
        "connections.max": m.connections_maximum,
        "sessions.count": m.sessions,
        "subscriptions.count": m.subscriptions,
        "retained.count": m.retained,
        "queued.bytes": m.queued_bytes,
    })
}

/// Per node (a list) unless `aggregate=true` (one object), as EMQX answers.
fn per_node(mut v: Value, query: &HashMap<String, String>) -> ApiResult<Json<Value>> {
    match query.get("aggregate").map(String::as_str) {
        Some("true") => Ok(Json(v)),
        None | Some("false") => {
            v["node"] = json!(node_name());
            Ok(Json(json!([v])))
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "`aggregate` must be true or false, not {other:?}"
        ))),
    }
}

#[utoipa::path(get, path = "/stats", tag = "node",
    params(("aggregate" = Option<bool>, Query, description = "One object instead of one per node")),
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn stats(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    per_node(stats_of(&ctx.broker.metrics_snapshot()), &q)
}

/// EMQX's `/metrics` keys for what KeelMQ counts.
fn metrics_of(m: &MetricsSnapshot) -> Value {
    let dropped = m.dropped_qos0 + m.dropped_queue_full + m.dropped_too_large + m.expired;
    json!({
        "messages.received": m.messages_received,
        "messages.sent": m.messages_sent,
        "messages.dropped": dropped,
        "messages.dropped.queue_full": m.dropped_queue_full,
        "messages.dropped.too_large": m.dropped_too_large,
        "messages.dropped.qos0": m.dropped_qos0,
        "messages.dropped.expired": m.expired,
        "messages.qos0_paused": m.qos0_paused,
        "messages.queue_full_refusals": m.queue_full_refusals,
        "messages.retained_refused": m.retained_refused,
        "messages.not_confirmed": m.not_confirmed,
        "bytes.received": m.bytes_received,
        "bytes.sent": m.bytes_sent,
        "client.connected": m.connections_total,
        "client.connack.refused": m.connections_refused,
        "authorization.deny": m.not_authorized,
        "packets.protocol_errors": m.protocol_errors,
        "events.dropped": m.events_dropped,
    })
}

#[utoipa::path(get, path = "/metrics", tag = "node",
    params(("aggregate" = Option<bool>, Query, description = "One object instead of one per node")),
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn metrics(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    per_node(metrics_of(&ctx.broker.metrics_snapshot()), &q)
}

#[utoipa::path(get, path = "/listeners", tag = "node",
    responses((status = 200, description = "OK"), (status = 401, description = "No or wrong credentials"))
)]
async fn listeners(State(ctx): State<Ctx>) -> Json<Value> {
    let counts = ctx.broker.metrics_snapshot().listeners;
    let list: Vec<Value> = ctx
        .listeners
        .iter()
        .map(|(name, kind, addr)| {
            let c = counts.iter().find(|l| &l.name == name);
            json!({
                "id": format!("{}:{name}", kind.name()),
                "type": kind.name(),
                "name": name,
                "bind": addr.to_string(),
                "running": true,
                "current_connections": c.map_or(0, |c| c.current),
                "total_connections": c.map_or(0, |c| c.total),
                "refused_connections": c.map_or(0, |c| c.refused),
            })
        })
        .collect();
    Json(json!(list))
}

fn histogram(h: &keelmq_wal::histogram::HistogramSnapshot, bounds: &[u64]) -> Value {
    let cumulative = h.cumulative();
    let buckets: Vec<Value> = bounds
        .iter()
        .map(|b| json!(b))
        .chain(std::iter::once(json!("+Inf")))
        .zip(cumulative)
        .map(|(le, count)| json!({ "le": le, "count": count }))
        .collect();
    json!({ "count": h.count(), "sum": h.sum, "buckets": buckets })
}

/// `GET /durability`: the log's fdatasyncs (latency histogram in microseconds, records per
/// fdatasync), records not yet durable, the checkpoints, and what recovery found at start.
#[utoipa::path(get, path = "/durability", tag = "durability",
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn durability(State(ctx): State<Ctx>) -> ApiResult<Json<Value>> {
    use keelmq_wal::histogram::{RECORDS_PER_SYNC_BOUNDS, SYNC_MICROS_BOUNDS};
    let Some(p) = ctx.broker.persistence() else {
        return Err(ApiError::not_found(
            "NOT_FOUND",
            "this broker has no data directory",
        ));
    };
    let wal = p.wal();
    let stats = wal.stats();
    let durable = wal.durable_seq();
    let c = p.checkpoint_stats();
    let recovery = ctx.recovery.as_ref().map(|(r, restore)| {
        json!({
            "checkpoint_seq": r.checkpoint_seq,
            "replayed_records": r.replayed_records,
            "last_seq": r.last_seq,
            "torn_tail": r.torn_tail,
            "load_ms": r.load.as_millis() as u64,
            "replay_ms": r.elapsed.as_millis() as u64,
            "restore_ms": restore.as_millis() as u64,
        })
    });
    Ok(Json(json!({
        "sync": format!("{:?}", ctx.broker.config().storage.sync).to_lowercase(),
        "failed": ctx.broker.has_failed(),
        "wal": {
            "fsyncs": stats.fsyncs,
            "records": stats.records,
            "batches": stats.batches,
            "bytes": stats.bytes,
            "rotations": stats.rotations,
            "fsync_micros_total": stats.sync_micros,
            "fsync_latency_us": histogram(&stats.sync_latency, &SYNC_MICROS_BOUNDS),
            "records_per_fsync": histogram(&stats.records_per_sync, &RECORDS_PER_SYNC_BOUNDS),
            "last_seq": wal.assigned_seq(),
            "durable_seq": durable,
            "records_not_durable": wal.assigned_seq().saturating_sub(durable),
            "bytes_not_durable": wal.bytes_not_durable(),
        },
        "checkpoint": {
            "written": c.written,
            "failed": c.failed,
            "seq": c.seq,
            "last_at": (c.last_at_ms > 0).then(|| rfc3339(c.last_at_ms)),
            "last_ms": c.last_micros as f64 / 1000.0,
            "last_changes": c.last_changes,
            "total_ms": c.total_micros as f64 / 1000.0,
        },
        "queued_bytes": ctx.broker.metrics_snapshot().queued_bytes,
        "ack_delay_us": histogram(
            &ctx.broker.metrics_snapshot().ack_delay,
            &keelmq_wal::histogram::ACK_MICROS_BOUNDS,
        ),
        "recovery": recovery,
    })))
}
