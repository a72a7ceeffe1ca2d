//! Clients: the list (EMQX's filters and paging), one client, kicking it, its subscriptions
//! and queues; every subscription; the topics.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult, Body, Paging, Path, Query};
use super::{node_name, rfc3339, Ctx};
use crate::broker::{ClientView, QueuedView, SubscriptionView};
use crate::codec::{QoS, ReasonCode, RetainHandling, SubscriptionOptions};

pub(super) fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(one, kick))
        .routes(routes!(subscriptions))
        .routes(routes!(subscribe))
        .routes(routes!(unsubscribe))
        .routes(routes!(mqueue))
        .routes(routes!(inflight))
        .routes(routes!(all_subscriptions))
        .routes(routes!(topics))
}

fn unknown_client(id: &str) -> ApiError {
    ApiError::not_found("CLIENTID_NOT_FOUND", format!("client {id:?} not found"))
}

fn client_json(c: &ClientView) -> Value {
    let conn = c.conn.as_ref();
    json!({
        "clientid": c.client_id,
        "username": c.username,
        "node": node_name(),
        "connected": c.connected,
        "ip_address": conn.map(|m| m.peer.ip().to_string()),
        "port": conn.map(|m| m.peer.port()),
        "listener": conn.map(|m| m.listener.to_string()),
        "keepalive": conn.map(|m| m.keepalive),
        "clean_start": conn.map(|m| m.clean_start),
        "connected_at": conn.map(|m| rfc3339(m.connected_at_ms)),
        "disconnected_at": c.disconnected_at_ms.map(rfc3339),
        "proto_name": "MQTT",
        "proto_ver": c.proto_ver,
        "expiry_interval": c.expiry_interval,
        "is_persistent": c.persistent,
        "subscriptions_cnt": c.subscriptions,
        "mqueue_len": c.queued,
        "inflight_cnt": c.inflight,
        "awaiting_rel_cnt": c.awaiting_rel,
    })
}

/// EMQX's `/clients` filters, checked.
struct Filter {
    clientid: Option<String>,
    username: Option<String>,
    ip_address: Option<String>,
    conn_state: Option<bool>,
    clean_start: Option<bool>,
    proto_ver: Option<u8>,
    like_clientid: Option<String>,
    like_username: Option<String>,
    like_ip_address: Option<String>,
}

fn parse_bool(name: &str, v: &str) -> ApiResult<bool> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "`{name}` must be true or false"
        ))),
    }
}

impl Filter {
    fn parse(q: &HashMap<String, String>) -> ApiResult<Filter> {
        let s = |k: &str| q.get(k).cloned();
        let conn_state = match q.get("conn_state").map(String::as_str) {
            None => None,
            Some("connected") => Some(true),
            Some("disconnected") => Some(false),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "`conn_state` must be connected or disconnected, not {other:?}"
                )))
            }
        };
        let proto_ver = match q.get("proto_ver").map(String::as_str) {
            None => None,
            Some("v3" | "3") => Some(3),
            Some("v4" | "4") => Some(4),
            Some("v5" | "5") => Some(5),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "`proto_ver` must be v3, v4 or v5, not {other:?}"
                )))
            }
        };
        let clean_start = q
            .get("clean_start")
            .map(|v| parse_bool("clean_start", v))
            .transpose()?;
        Ok(Filter {
            clientid: s("clientid"),
            username: s("username"),
            ip_address: s("ip_address"),
            conn_state,
            clean_start,
            proto_ver,
            like_clientid: s("like_clientid"),
            like_username: s("like_username"),
            like_ip_address: s("like_ip_address"),
        })
    }

    fn keeps(&self, c: &ClientView) -> bool {
        let ip = c.conn.as_ref().map(|m| m.peer.ip().to_string());
        let user = c.username.as_deref();
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        let like = |want: &Option<String>, have: Option<&str>| {
            want.as_deref()
                .is_none_or(|w| have.is_some_and(|h| h.contains(w)))
        };
        eq(&self.clientid, Some(&c.client_id))
            && eq(&self.username, user)
            && eq(&self.ip_address, ip.as_deref())
            && self.conn_state.is_none_or(|s| s == c.connected)
            && self
                .clean_start
                .is_none_or(|s| c.conn.as_ref().is_some_and(|m| m.clean_start == s))
            && self.proto_ver.is_none_or(|v| v == c.proto_ver)
            && like(&self.like_clientid, Some(&c.client_id))
            && like(&self.like_username, user)
            && like(&self.like_ip_address, ip.as_deref())
    }
}

/// `GET /clients`: filtered, paged, by client id.
#[utoipa::path(get, path = "/clients", tag = "clients",
    params(("page" = Option<u64>, Query, description = "Page, from 1"), ("limit" = Option<u64>, Query, description = "Items per page, 1 to 10000"), ("clientid" = Option<String>, Query, description = "Exact client id"), ("username" = Option<String>, Query, description = "Exact username"), ("ip_address" = Option<String>, Query, description = "Exact address"), ("conn_state" = Option<String>, Query, description = "connected or disconnected"), ("clean_start" = Option<bool>, Query, description = "Clean Start of the last connection"), ("proto_ver" = Option<String>, Query, description = "v3, v4 or v5"), ("like_clientid" = Option<String>, Query, description = "Client id contains"), ("like_username" = Option<String>, Query, description = "Username contains"), ("like_ip_address" = Option<String>, Query, description = "Address contains")),
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn list(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let paging = Paging::of(&q)?;
    let filter = Filter::parse(&q)?;
    let clients: Vec<Value> = ctx
        .broker
        .clients()
        .iter()
        .filter(|c| filter.keeps(c))
        .map(client_json)
        .collect();
    Ok(Json(paging.page(clients)))
}

#[utoipa::path(get, path = "/clients/{clientid}", tag = "clients",
    params(("clientid" = String, Path, description = "Client id")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn one(State(ctx): State<Ctx>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let c = ctx.broker.client(&id).ok_or_else(|| unknown_client(&id))?;
    Ok(Json(client_json(&c)))
}

/// `DELETE /clients/:id`: closes its connection (v5: DISCONNECT 0x98) and discards its
/// session.
#[utoipa::path(delete, path = "/clients/{clientid}", tag = "clients",
    params(("clientid" = String, Path, description = "Client id")),
    responses((status = 204, description = "Done"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn kick(State(ctx): State<Ctx>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    match ctx.broker.kick(&id).await {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(unknown_client(&id)),
    }
}

fn subscription_json(s: &SubscriptionView) -> Value {
    let o = &s.options;
    json!({
        "clientid": s.client_id,
        "node": node_name(),
        "topic": s.filter,
        "qos": o.qos as u8,
        "nl": u8::from(o.no_local),
        "rap": u8::from(o.retain_as_published),
        "rh": o.retain_handling as u8,
        "sub_id": s.identifier,
    })
}

#[utoipa::path(get, path = "/clients/{clientid}/subscriptions", tag = "clients",
    params(("clientid" = String, Path, description = "Client id")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn subscriptions(State(ctx): State<Ctx>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let subs = ctx
        .broker
        .client_subscriptions(&id)
        .ok_or_else(|| unknown_client(&id))?;
    Ok(Json(json!(subs
        .iter()
        .map(subscription_json)
        .collect::<Vec<_>>())))
}

#[derive(serde::Deserialize)]
struct SubscribeBody {
    topic: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    nl: u8,
    #[serde(default)]
    rap: u8,
    #[serde(default)]
    rh: u8,
}

fn options(b: &SubscribeBody) -> ApiResult<SubscriptionOptions> {
    let qos =
        QoS::from_u8(b.qos).ok_or_else(|| ApiError::bad_request("`qos` must be 0, 1 or 2"))?;
    let retain_handling = match b.rh {
        0 => RetainHandling::OnSubscribe,
        1 => RetainHandling::OnNewSubscribe,
        2 => RetainHandling::Never,
        _ => return Err(ApiError::bad_request("`rh` must be 0, 1 or 2")),
    };
    if b.nl > 1 || b.rap > 1 {
        return Err(ApiError::bad_request("`nl` and `rap` must be 0 or 1"));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: b.nl == 1,
        retain_as_published: b.rap == 1,
        retain_handling,
    })
}

fn check_filter(filter: &str) -> ApiResult<()> {
    crate::codec::topic::validate_topic_filter(filter)
        .map_err(|e| ApiError::bad_request(format!("`topic` {filter:?}: {e}")))
}

/// `POST /clients/:id/subscribe` (`{topic, qos, nl, rap, rh}`) for a connected client: answered
/// once the subscription is durable.
#[utoipa::path(post, path = "/clients/{clientid}/subscribe", tag = "clients",
    params(("clientid" = String, Path, description = "Client id")),
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn subscribe(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Body(body): Body<SubscribeBody>,
) -> ApiResult<Json<Value>> {
    check_filter(&body.topic)?;
    let opts = options(&body)?;
    let code = ctx.broker.subscribe_client(&id, &body.topic, opts).await?;
    match code {
        None => Err(unknown_client(&id)),
        Some(c) if c.0 >= 0x80 => Err(ApiError::bad_request(format!(
            "subscription refused: reason code 0x{:02X}",
            c.0
        ))),
        Some(_) => Ok(Json(json!({
            "clientid": id, "topic": body.topic, "qos": body.qos, "node": node_name(),
        }))),
    }
}

#[derive(serde::Deserialize)]
struct UnsubscribeBody {
    topic: String,
}

#[utoipa::path(post, path = "/clients/{clientid}/unsubscribe", tag = "clients",
    params(("clientid" = String, Path, description = "Client id")),
    responses((status = 204, description = "Done"), (status = 400, description = "Bad input: {code, message}"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn unsubscribe(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Body(body): Body<UnsubscribeBody>,
) -> ApiResult<StatusCode> {
    check_filter(&body.topic)?;
    match ctx.broker.unsubscribe_client(&id, &body.topic).await? {
        None => Err(unknown_client(&id)),
        Some(c) if c == ReasonCode::NO_SUBSCRIPTION_EXISTED => Err(ApiError::not_found(
            "NOT_FOUND",
            format!("{id:?} has no subscription {:?}", body.topic),
        )),
        Some(_) => Ok(StatusCode::NO_CONTENT),
    }
}

/// A queued or in-flight message, as EMQX lists them (payload base64).
pub(super) fn message_json(q: &QueuedView) -> Value {
    let m = &q.delivery.message;
    json!({
        "msgid": format!("{:016X}", m.id),
        "packet_id": q.packet_id,
        "topic": m.topic.to_string(),
        "qos": q.delivery.qos as u8,
        "publish_qos": m.qos as u8,
        "payload": base64::engine::general_purpose::STANDARD.encode(&m.payload),
        "from_clientid": m.publisher.as_ref().map(|p| p.to_string()),
        "awaiting_pubcomp": q.awaiting_pubcomp,
    })
}

async fn messages(
    ctx: Ctx,
    id: String,
    inflight: bool,
    q: HashMap<String, String>,
) -> ApiResult<Json<Value>> {
    let paging = Paging::of(&q)?;
    let list = ctx
        .broker
        .client_messages(&id, inflight)
        .ok_or_else(|| unknown_client(&id))?;
    Ok(Json(paging.page(list.iter().map(message_json).collect())))
}

#[utoipa::path(get, path = "/clients/{clientid}/mqueue_messages", tag = "clients",
    params(("clientid" = String, Path, description = "Client id"), ("page" = Option<u64>, Query, description = "Page, from 1"), ("limit" = Option<u64>, Query, description = "Items per page, 1 to 10000")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn mqueue(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    messages(ctx, id, false, q).await
}

#[utoipa::path(get, path = "/clients/{clientid}/inflight_messages", tag = "clients",
    params(("clientid" = String, Path, description = "Client id"), ("page" = Option<u64>, Query, description = "Page, from 1"), ("limit" = Option<u64>, Query, description = "Items per page, 1 to 10000")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn inflight(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    messages(ctx, id, true, q).await
}

/// `GET /subscriptions`: every client's, filtered by `clientid`, `topic`, `qos`,
/// `match_topic` (filters matching that topic) and `share_group`; paged.
#[utoipa::path(get, path = "/subscriptions", tag = "subscriptions",
    params(("page" = Option<u64>, Query, description = "Page, from 1"), ("limit" = Option<u64>, Query, description = "Items per page, 1 to 10000"), ("clientid" = Option<String>, Query, description = "Client id"), ("topic" = Option<String>, Query, description = "Filter as subscribed"), ("qos" = Option<u8>, Query, description = "QoS"), ("match_topic" = Option<String>, Query, description = "Filters matching this topic"), ("share_group" = Option<String>, Query, description = "Shared subscription group")),
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn all_subscriptions(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let paging = Paging::of(&q)?;
    let qos = match q.get("qos") {
        None => None,
        Some(v) => Some(
            v.parse::<u8>()
                .ok()
                .filter(|q| *q <= 2)
                .ok_or_else(|| ApiError::bad_request("`qos` must be 0, 1 or 2"))?,
        ),
    };
    let subs: Vec<Value> = ctx
        .broker
        .all_subscriptions()
        .iter()
        .filter(|s| q.get("clientid").is_none_or(|c| *c == s.client_id))
        .filter(|s| q.get("topic").is_none_or(|t| *t == s.filter))
        .filter(|s| qos.is_none_or(|q| q == s.options.qos as u8))
        .filter(|s| {
            q.get("match_topic")
                .is_none_or(|t| crate::codec::topic::matches(plain(&s.filter), t))
        })
        .filter(|s| {
            q.get("share_group")
                .is_none_or(|g| s.filter.starts_with(&format!("$share/{g}/")))
        })
        .map(subscription_json)
        .collect();
    Ok(Json(paging.page(subs)))
}

/// A filter without its `$share/<group>/` prefix.
fn plain(filter: &str) -> &str {
    crate::codec::topic::parse_shared(filter).filter
}

/// `GET /topics`: the filters subscribed to (the routes), paged, filtered by `topic`.
#[utoipa::path(get, path = "/topics", tag = "subscriptions",
    params(("page" = Option<u64>, Query, description = "Page, from 1"), ("limit" = Option<u64>, Query, description = "Items per page, 1 to 10000"), ("topic" = Option<String>, Query, description = "Exact filter")),
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn topics(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let paging = Paging::of(&q)?;
    let mut routes: Vec<String> = ctx
        .broker
        .all_subscriptions()
        .into_iter()
        .map(|s| plain(&s.filter).to_string())
        .filter(|f| q.get("topic").is_none_or(|t| t == f))
        .collect();
    routes.sort();
    routes.dedup();
    let node = node_name();
    let items = routes
        .into_iter()
        .map(|topic| json!({ "topic": topic, "node": node }))
        .collect();
    Ok(Json(paging.page(items)))
}
