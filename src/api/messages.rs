//! Publishing through the in-process client (answered once the message is durable, like a
//! PUBACK) and the retained messages.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult, Body, Paging, Path, Query};
use super::Ctx;
use crate::broker::local::{LocalError, LocalPublish};
use crate::codec::{PublishProperties, QoS};

/// Messages in one `POST /publish/bulk` at most.
pub const MAX_BULK: usize = 1000;

/// The client id the API's messages carry.
const API_CLIENT: &str = "http_api";

pub(super) fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(publish))
        .routes(routes!(publish_bulk))
        .routes(routes!(retained_list))
        .routes(routes!(retained_one, retained_delete))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    payload_encoding: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    /// Accepted for EMQX compatibility; the message carries `http_api` as its publisher.
    #[serde(default)]
    #[allow(dead_code)]
    clientid: Option<String>,
    #[serde(default)]
    properties: Option<PropertiesBody>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PropertiesBody {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    response_topic: Option<String>,
    correlation_data: Option<String>,
    user_properties: Option<HashMap<String, String>>,
    content_type: Option<String>,
}

fn properties(p: Option<PropertiesBody>) -> ApiResult<PublishProperties> {
    let p = p.unwrap_or_default();
    if p.payload_format_indicator.is_some_and(|v| v > 1) {
        return Err(ApiError::bad_request(
            "`payload_format_indicator` must be 0 or 1",
        ));
    }
    let mut user: Vec<(String, String)> =
        p.user_properties.unwrap_or_default().into_iter().collect();
    user.sort();
    Ok(PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval.filter(|v| *v > 0),
        response_topic: p.response_topic.filter(|t| !t.is_empty()),
        correlation_data: p.correlation_data.map(|c| Bytes::from(c.into_bytes())),
        user_properties: user,
        content_type: p.content_type.filter(|t| !t.is_empty()),
        ..PublishProperties::default()
    })
}

fn local_publish(b: PublishBody) -> ApiResult<LocalPublish> {
    let qos =
        QoS::from_u8(b.qos).ok_or_else(|| ApiError::bad_request("`qos` must be 0, 1 or 2"))?;
    if let Err(e) = crate::codec::topic::validate_topic_name(&b.topic) {
        return Err(ApiError::bad_request(format!("`topic` {:?}: {e}", b.topic)));
    }
    let payload = match b.payload_encoding.as_deref() {
        None | Some("plain") => Bytes::from(b.payload.into_bytes()),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(b.payload.as_bytes())
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("`payload` is not base64: {e}")))?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`payload_encoding` must be plain or base64, not {other:?}"
            )))
        }
    };
    let mut p = LocalPublish::new(b.topic, payload, qos);
    p.retain = b.retain;
    p.properties = properties(b.properties)?;
    Ok(p)
}

/// Publishes one message; its answer as EMQX gives it (`{id}`, or reason code 16 when no
/// subscriber matched).
async fn publish_one(ctx: &Ctx, body: PublishBody) -> ApiResult<(StatusCode, Value)> {
    let p = local_publish(body)?;
    let client = ctx.broker.local_client(API_CLIENT);
    let published = client.publish(p).await.map_err(|e| match e {
        LocalError::InvalidTopic => ApiError::bad_request("`topic` may not be published to"),
        LocalError::NotDurable => ApiError::not_durable(),
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            other.to_string(),
        ),
    })?;
    let id = format!("{:016X}", published.message_id);
    if published.delivered == 0 {
        let v = json!({ "id": id, "reason_code": 16, "message": "no_matching_subscribers" });
        return Ok((StatusCode::ACCEPTED, v));
    }
    Ok((StatusCode::OK, json!({ "id": id })))
}

/// `POST /publish`: answered once the message is durable (and queued for its subscribers).
#[utoipa::path(post, path = "/publish", tag = "publish",
    responses((status = 200, description = "OK"), (status = 202, description = "Stored; no subscriber matched (reason code 16)"), (status = 400, description = "Bad input: {code, message}"), (status = 503, description = "Not durable: not published"), (status = 401, description = "No or wrong credentials"))
)]
async fn publish(State(ctx): State<Ctx>, Body(body): Body<PublishBody>) -> ApiResult<Response> {
    let (status, v) = publish_one(&ctx, body).await?;
    Ok((status, Json(v)).into_response())
}

/// `POST /publish/bulk`: each message in order, each answered as `/publish` would (an error
/// as `{code, message}` in its place; later ones are still published).
#[utoipa::path(post, path = "/publish/bulk", tag = "publish",
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn publish_bulk(
    State(ctx): State<Ctx>,
    Body(bodies): Body<Vec<PublishBody>>,
) -> ApiResult<Json<Value>> {
    if bodies.is_empty() || bodies.len() > MAX_BULK {
        return Err(ApiError::bad_request(format!(
            "between 1 and {MAX_BULK} messages per request"
        )));
    }
    let mut answers = Vec::with_capacity(bodies.len());
    for body in bodies {
        answers.push(match publish_one(&ctx, body).await {
            Ok((_, v)) => v,
            Err(e) => json!({ "code": e.code, "message": e.message }),
        });
    }
    Ok(Json(json!(answers)))
}

fn retained_json(m: &crate::session::Message, with_payload: bool) -> Value {
    let mut v = json!({
        "topic": m.topic.to_string(),
        "msgid": format!("{:016X}", m.id),
        "qos": m.qos as u8,
        "from_clientid": m.publisher.as_ref().map(|p| p.to_string()),
        "payload_size": m.payload.len(),
    });
    if with_payload {
        v["payload"] = json!(base64::engine::general_purpose::STANDARD.encode(&m.payload));
    }
    v
}

/// `GET /mqtt/retainer/messages`: paged, by topic; `topic` filters with a topic filter (the
/// `$SYS` topics appear only for a filter that names them).
#[utoipa::path(get, path = "/mqtt/retainer/messages", tag = "retained",
    params(("page" = Option<u64>, Query, description = "Page, from 1"), ("limit" = Option<u64>, Query, description = "Items per page, 1 to 10000"), ("topic" = Option<String>, Query, description = "Topic filter")),
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn retained_list(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let paging = Paging::of(&q)?;
    if let Some(f) = q.get("topic") {
        crate::codec::topic::validate_topic_filter(f)
            .map_err(|e| ApiError::bad_request(format!("`topic` {f:?}: {e}")))?;
    }
    let items: Vec<Value> = ctx
        .broker
        .retained_messages()
        .iter()
        .filter(|m| match q.get("topic") {
            Some(f) => crate::codec::topic::matches(f, &m.topic),
            // The broker's own `$SYS` statistics are listed only when asked for.
            None => !m.topic.starts_with('$'),
        })
        .map(|m| retained_json(m, false))
        .collect();
    Ok(Json(paging.page(items)))
}

fn no_retained(topic: &str) -> ApiError {
    ApiError::not_found("NOT_FOUND", format!("no retained message on {topic:?}"))
}

/// `GET /mqtt/retainer/message/:topic` (the topic percent-encoded, as EMQX takes it): with
/// its payload, base64.
#[utoipa::path(get, path = "/mqtt/retainer/message/{topic}", tag = "retained",
    params(("topic" = String, Path, description = "Topic, percent-encoded (a/b as a%2Fb)")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn retained_one(State(ctx): State<Ctx>, Path(topic): Path<String>) -> ApiResult<Json<Value>> {
    let m = ctx
        .broker
        .retained_message(&topic)
        .ok_or_else(|| no_retained(&topic))?;
    Ok(Json(retained_json(&m, true)))
}

/// `DELETE /mqtt/retainer/message/:topic`: removed durably before the answer; nothing is
/// published.
#[utoipa::path(delete, path = "/mqtt/retainer/message/{topic}", tag = "retained",
    params(("topic" = String, Path, description = "Topic, percent-encoded (a/b as a%2Fb)")),
    responses((status = 204, description = "Done"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn retained_delete(
    State(ctx): State<Ctx>,
    Path(topic): Path<String>,
) -> ApiResult<StatusCode> {
    match ctx.broker.delete_retained(&topic).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(no_retained(&topic)),
    }
}
