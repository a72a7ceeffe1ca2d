//! Rules (CRUD, metrics, `rule_test`) and the data bridges' sinks and sources (status and
//! metrics). A rule in a request or an answer has the shape of a `[[rules]]` entry of the
//! configuration, as JSON.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult, Body, Path};
use super::{node_name, Ctx};
use crate::broker::metrics::{RuleSnapshot, RuleStats, SinkSnapshot, SinkStats};
use crate::config::RuleSpec;
use crate::rules::RuleError;

pub(super) fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(list_rules, create_rule))
        .routes(routes!(get_rule, update_rule, delete_rule))
        .routes(routes!(rule_metrics))
        .routes(routes!(rule_test))
        .routes(routes!(sinks))
        .routes(routes!(sink))
        .routes(routes!(sources))
        .routes(routes!(source))
}

fn rule_error(e: RuleError) -> ApiError {
    match e {
        RuleError::Invalid(m) => ApiError::bad_request(m),
        RuleError::Exists(id) => ApiError::new(
            StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            format!("a rule {id:?} exists already"),
        ),
        RuleError::NotFound(id) => ApiError::not_found("NOT_FOUND", format!("no rule {id:?}")),
    }
}

fn rule_metrics_json(s: Option<&RuleSnapshot>) -> Value {
    let mut m = Map::new();
    if let Some(s) = s {
        for (name, value) in RuleStats::named(s) {
            m.insert(name.to_string(), json!(value));
        }
    }
    Value::Object(m)
}

fn rule_json(ctx: &Ctx, spec: &RuleSpec) -> Value {
    let snapshot = ctx.broker.metrics_snapshot();
    let stats = snapshot.rules.iter().find(|r| r.id == spec.id);
    let mut v = serde_json::to_value(spec).unwrap_or_default();
    v["enable"] = json!(spec.enabled);
    v["metrics"] = rule_metrics_json(stats);
    v
}

#[utoipa::path(get, path = "/rules", tag = "rules",
    responses((status = 200, description = "OK"), (status = 401, description = "No or wrong credentials"))
)]
async fn list_rules(State(ctx): State<Ctx>) -> Json<Value> {
    let rules: Vec<Value> = ctx
        .rules
        .list()
        .iter()
        .map(|r| rule_json(&ctx, r))
        .collect();
    let count = rules.len();
    Json(json!({
        "data": rules,
        "meta": { "page": 1, "limit": count.max(1), "count": count, "hasnext": false },
    }))
}

#[utoipa::path(get, path = "/rules/{id}", tag = "rules",
    params(("id" = String, Path, description = "Rule id")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn get_rule(State(ctx): State<Ctx>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let spec = ctx
        .rules
        .get(&id)
        .ok_or_else(|| rule_error(RuleError::NotFound(id)))?;
    Ok(Json(rule_json(&ctx, &spec)))
}

/// `POST /rules`: a `[[rules]]` entry as JSON; 201 with the rule once it reads messages.
#[utoipa::path(post, path = "/rules", tag = "rules",
    responses((status = 201, description = "Created; the rule reads messages"), (status = 400, description = "Bad input: {code, message}"), (status = 409, description = "Exists"), (status = 401, description = "No or wrong credentials"))
)]
async fn create_rule(
    State(ctx): State<Ctx>,
    Body(spec): Body<RuleSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    ctx.rules.add(spec.clone()).await.map_err(rule_error)?;
    Ok((StatusCode::CREATED, Json(rule_json(&ctx, &spec))))
}

/// `PUT /rules/:id`: replaces the rule (its `id` in the body, if given, must match).
#[utoipa::path(put, path = "/rules/{id}", tag = "rules",
    params(("id" = String, Path, description = "Rule id")),
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn update_rule(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Body(mut body): Body<Value>,
) -> ApiResult<Json<Value>> {
    let Some(obj) = body.as_object_mut() else {
        return Err(ApiError::bad_request("a rule is a JSON object"));
    };
    match obj.get("id") {
        Some(v) if v.as_str() != Some(id.as_str()) => {
            return Err(ApiError::bad_request(
                "`id` in the body differs from the path",
            ))
        }
        _ => {}
    }
    obj.insert("id".into(), json!(id));
    let spec: RuleSpec =
        serde_json::from_value(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    ctx.rules.update(spec.clone()).await.map_err(rule_error)?;
    Ok(Json(rule_json(&ctx, &spec)))
}

#[utoipa::path(delete, path = "/rules/{id}", tag = "rules",
    params(("id" = String, Path, description = "Rule id")),
    responses((status = 204, description = "Done"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn delete_rule(State(ctx): State<Ctx>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ctx.rules.remove(&id).await.map_err(rule_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/rules/{id}/metrics", tag = "rules",
    params(("id" = String, Path, description = "Rule id")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn rule_metrics(State(ctx): State<Ctx>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if ctx.rules.get(&id).is_none() {
        return Err(rule_error(RuleError::NotFound(id)));
    }
    let snapshot = ctx.broker.metrics_snapshot();
    let stats = snapshot.rules.iter().find(|r| r.id == id);
    Ok(Json(json!({
        "id": id,
        "metrics": rule_metrics_json(stats),
        "node_metrics": [{ "node": node_name(), "metrics": rule_metrics_json(stats) }],
    })))
}

#[derive(serde::Deserialize)]
struct RuleTest {
    sql: String,
    #[serde(default)]
    context: Map<String, Value>,
}

/// `POST /rule_test` (`{sql, context}`): the outputs the statement gives for that input, or
/// 400 with why it does not compile or fails.
#[utoipa::path(post, path = "/rule_test", tag = "rules",
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn rule_test(Body(t): Body<RuleTest>) -> ApiResult<Json<Value>> {
    let outputs = crate::rules::rule_test(&t.sql, &t.context)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "SQL_ERROR", e))?;
    match outputs.len() {
        0 => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "NO_RESULT",
            "the statement gives no output for this input (WHERE is false)",
        )),
        1 => Ok(Json(Value::Object(
            outputs.into_iter().next().unwrap_or_default(),
        ))),
        _ => Ok(Json(json!(outputs))),
    }
}

fn bridge_json(s: &SinkSnapshot) -> Value {
    let mut metrics = Map::new();
    for (name, value) in SinkStats::named(s) {
        metrics.insert(name.to_string(), json!(value));
    }
    json!({
        "name": s.name,
        "type": s.kind,
        "status": s.status.name(),
        "status_reason": (!s.last_error.is_empty()).then(|| s.last_error.clone()),
        "metrics": metrics,
        "node": node_name(),
    })
}

#[utoipa::path(get, path = "/sinks", tag = "bridges",
    responses((status = 200, description = "OK"), (status = 401, description = "No or wrong credentials"))
)]
async fn sinks(State(ctx): State<Ctx>) -> Json<Value> {
    let all = ctx.broker.metrics_snapshot().sinks;
    Json(json!(all.iter().map(bridge_json).collect::<Vec<_>>()))
}

#[utoipa::path(get, path = "/sinks/{name}", tag = "bridges",
    params(("name" = String, Path, description = "Sink name")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn sink(State(ctx): State<Ctx>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let all = ctx.broker.metrics_snapshot().sinks;
    let s = all
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::not_found("NOT_FOUND", format!("no sink {name:?}")))?;
    Ok(Json(bridge_json(s)))
}

#[utoipa::path(get, path = "/sources", tag = "bridges",
    responses((status = 200, description = "OK"), (status = 401, description = "No or wrong credentials"))
)]
async fn sources(State(ctx): State<Ctx>) -> Json<Value> {
    let all = ctx.broker.metrics_snapshot().sources;
    Json(json!(all.iter().map(bridge_json).collect::<Vec<_>>()))
}

#[utoipa::path(get, path = "/sources/{name}", tag = "bridges",
    params(("name" = String, Path, description = "Source name")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn source(State(ctx): State<Ctx>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let all = ctx.broker.metrics_snapshot().sources;
    let s = all
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::not_found("NOT_FOUND", format!("no source {name:?}")))?;
    Ok(Json(bridge_json(s)))
}
