//! Configuration at run time: `POST /configs/reload`, the ACL as text, the password file's
//! users, and enabling, disabling and restarting sinks (all through `crate::reload`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult, Body, Path};
use super::Ctx;

/// The id of the password-file authenticator in EMQX's `/authentication/{id}` paths.
pub const PASSWORD_FILE_ID: &str = "password_based:password_file";

pub(super) fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(reload))
        .routes(routes!(acl, set_acl))
        .routes(routes!(users, add_user))
        .routes(routes!(user, set_password, delete_user))
        .routes(routes!(enable_sink))
        .routes(routes!(restart_sink))
        .routes(routes!(enable_source))
        .routes(routes!(restart_source))
}

/// `POST /configs/reload`: the file re-read and checked; 200 with what was applied and what
/// needs a restart, or 400 with why nothing changed.
#[utoipa::path(post, path = "/configs/reload", tag = "configuration",
    responses((status = 200, description = "OK"), (status = 400, description = "The file does not load; nothing changed"), (status = 401, description = "No or wrong credentials"))
)]
async fn reload(State(ctx): State<Ctx>) -> ApiResult<Json<Value>> {
    let report = ctx
        .reloader
        .reload()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BAD_CONFIG", e))?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

fn no_acl() -> ApiError {
    ApiError::not_found("NOT_FOUND", "no ACL file is configured (authz.acl_file)")
}

/// `GET /authorization/sources/file`: the ACL file's text (EMQX's shape).
#[utoipa::path(get, path = "/authorization/sources/file", tag = "authorization",
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn acl(State(ctx): State<Ctx>) -> ApiResult<Json<Value>> {
    let text = ctx.reloader.acl_text().await.ok_or_else(no_acl)?;
    let text =
        text.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e))?;
    Ok(Json(
        json!({ "type": "file", "enable": true, "rules": text }),
    ))
}

#[derive(serde::Deserialize)]
struct AclBody {
    rules: String,
}

/// `PUT /authorization/sources/file` (`{rules}`): checked first (a bad ACL changes nothing
/// and says which line), then the file is replaced and every later decision uses it.
#[utoipa::path(put, path = "/authorization/sources/file", tag = "authorization",
    responses((status = 204, description = "Done"), (status = 400, description = "Bad input: {code, message}"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn set_acl(State(ctx): State<Ctx>, Body(body): Body<AclBody>) -> ApiResult<StatusCode> {
    match ctx.reloader.set_acl_text(body.rules).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(no_acl()),
        Err(e) => Err(ApiError::bad_request(e)),
    }
}

fn check_id(id: &str) -> ApiResult<()> {
    match id == PASSWORD_FILE_ID {
        true => Ok(()),
        false => Err(ApiError::not_found(
            "NOT_FOUND",
            format!("no authenticator {id:?} (the password file is {PASSWORD_FILE_ID:?})"),
        )),
    }
}

fn no_password_file() -> ApiError {
    ApiError::not_found("NOT_FOUND", "no password_file authenticator is configured")
}

fn no_user(user: &str) -> ApiError {
    ApiError::not_found("NOT_FOUND", format!("no user {user:?}"))
}

/// `GET /authentication/password_based:password_file/users`.
#[utoipa::path(get, path = "/authentication/{id}/users", tag = "authentication",
    params(("id" = String, Path, description = "Authenticator id: password_based:password_file")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn users(State(ctx): State<Ctx>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    check_id(&id)?;
    let file = ctx
        .reloader
        .read_password_file()
        .await
        .map_err(ApiError::bad_request)?
        .ok_or_else(no_password_file)?;
    let users: Vec<&str> = file.users().collect();
    let data: Vec<Value> = users.iter().map(|u| json!({ "user_id": u })).collect();
    let count = data.len();
    Ok(Json(json!({
        "data": data,
        "meta": { "page": 1, "limit": count.max(1), "count": count, "hasnext": false },
    })))
}

#[utoipa::path(get, path = "/authentication/{id}/users/{user}", tag = "authentication",
    params(("id" = String, Path, description = "Authenticator id: password_based:password_file"), ("user" = String, Path, description = "User name")),
    responses((status = 200, description = "OK"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn user(
    State(ctx): State<Ctx>,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_id(&id)?;
    let file = ctx
        .reloader
        .read_password_file()
        .await
        .map_err(ApiError::bad_request)?
        .ok_or_else(no_password_file)?;
    match file.hash_of(&user).is_some() {
        true => Ok(Json(json!({ "user_id": user }))),
        false => Err(no_user(&user)),
    }
}

#[derive(serde::Deserialize)]
struct NewUser {
    user_id: String,
    password: String,
}

/// `POST …/users` (`{user_id, password}`): hashed (Argon2id) into the password file.
#[utoipa::path(post, path = "/authentication/{id}/users", tag = "authentication",
    params(("id" = String, Path, description = "Authenticator id: password_based:password_file")),
    responses((status = 201, description = "Created"), (status = 400, description = "Bad input: {code, message}"), (status = 409, description = "Exists"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn add_user(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Body(body): Body<NewUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_id(&id)?;
    keelmq_auth::passwd::check_username(&body.user_id).map_err(ApiError::bad_request)?;
    let name = body.user_id.clone();
    let added = ctx
        .reloader
        .edit_password_file(move |f| {
            if f.hash_of(&name).is_some() {
                return Ok(false);
            }
            let hash = keelmq_auth::Hash::new_argon2id(body.password.as_bytes())
                .map_err(|e| e.to_string())?;
            f.set(&name, hash).map_err(str::to_string)?;
            Ok(true)
        })
        .await
        .map_err(ApiError::bad_request)?
        .ok_or_else(no_password_file)?;
    match added {
        true => Ok((
            StatusCode::CREATED,
            Json(json!({ "user_id": body.user_id })),
        )),
        false => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            format!("user {:?} exists", body.user_id),
        )),
    }
}

#[derive(serde::Deserialize)]
struct NewPassword {
    password: String,
}

#[utoipa::path(put, path = "/authentication/{id}/users/{user}", tag = "authentication",
    params(("id" = String, Path, description = "Authenticator id: password_based:password_file"), ("user" = String, Path, description = "User name")),
    responses((status = 200, description = "OK"), (status = 400, description = "Bad input: {code, message}"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn set_password(
    State(ctx): State<Ctx>,
    Path((id, user)): Path<(String, String)>,
    Body(body): Body<NewPassword>,
) -> ApiResult<Json<Value>> {
    check_id(&id)?;
    let name = user.clone();
    let changed = ctx
        .reloader
        .edit_password_file(move |f| {
            if f.hash_of(&name).is_none() {
                return Ok(false);
            }
            let hash = keelmq_auth::Hash::new_argon2id(body.password.as_bytes())
                .map_err(|e| e.to_string())?;
            f.set(&name, hash).map_err(str::to_string)?;
            Ok(true)
        })
        .await
        .map_err(ApiError::bad_request)?
        .ok_or_else(no_password_file)?;
    match changed {
        true => Ok(Json(json!({ "user_id": user }))),
        false => Err(no_user(&user)),
    }
}

#[utoipa::path(delete, path = "/authentication/{id}/users/{user}", tag = "authentication",
    params(("id" = String, Path, description = "Authenticator id: password_based:password_file"), ("user" = String, Path, description = "User name")),
    responses((status = 204, description = "Done"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn delete_user(
    State(ctx): State<Ctx>,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    let name = user.clone();
    let removed = ctx
        .reloader
        .edit_password_file(move |f| Ok(f.remove(&name)))
        .await
        .map_err(ApiError::bad_request)?
        .ok_or_else(no_password_file)?;
    match removed {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(no_user(&user)),
    }
}

/// `true` or `false` from a path.
fn enable_flag(text: &str) -> ApiResult<bool> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request("enable must be true or false")),
    }
}

/// The answer to a sink's or source's change: 204, 404 for an unknown one, 400 with why.
fn changed(
    result: Result<bool, String>,
    unknown: impl FnOnce() -> ApiError,
) -> ApiResult<StatusCode> {
    match result {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(unknown()),
        Err(e) => Err(ApiError::bad_request(e)),
    }
}

fn no_sink(name: &str) -> ApiError {
    ApiError::not_found("NOT_FOUND", format!("no sink {name:?}"))
}

/// `PUT /sinks/:name/enable/:bool`: a disabled sink writes nothing; its subscribers keep
/// what they hold (acknowledged to it), unsubscribed, until it is enabled again.
#[utoipa::path(put, path = "/sinks/{name}/enable/{enable}", tag = "bridges",
    params(("name" = String, Path, description = "Sink name"), ("enable" = bool, Path, description = "true or false")),
    responses((status = 204, description = "Done"), (status = 400, description = "Bad input: {code, message}"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn enable_sink(
    State(ctx): State<Ctx>,
    Path((name, enable)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let enable = enable_flag(&enable)?;
    changed(ctx.reloader.change_sink(&name, Some(enable)).await, || {
        no_sink(&name)
    })
}

/// `POST /sinks/:name/restart`: its target reopened, its feeds restarted (queues kept).
#[utoipa::path(post, path = "/sinks/{name}/restart", tag = "bridges",
    params(("name" = String, Path, description = "Sink name")),
    responses((status = 204, description = "Done"), (status = 400, description = "Bad input: {code, message}"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn restart_sink(State(ctx): State<Ctx>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    changed(ctx.reloader.change_sink(&name, None).await, || {
        no_sink(&name)
    })
}

fn no_source(name: &str) -> ApiError {
    ApiError::not_found("NOT_FOUND", format!("no source {name:?}"))
}

/// `PUT /sources/:name/enable/:bool`: a disabled source stops after the message in hand,
/// keeping its durable state (remote session, stored offsets) for when it is enabled again.
#[utoipa::path(put, path = "/sources/{name}/enable/{enable}", tag = "bridges",
    params(("name" = String, Path, description = "Source name"), ("enable" = bool, Path, description = "true or false")),
    responses((status = 204, description = "Done"), (status = 400, description = "Bad input: {code, message}"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn enable_source(
    State(ctx): State<Ctx>,
    Path((name, enable)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let enable = enable_flag(&enable)?;
    changed(
        ctx.reloader.change_source(&name, Some(enable)).await,
        || no_source(&name),
    )
}

/// `POST /sources/:name/restart`: stopped after the message in hand and started again.
#[utoipa::path(post, path = "/sources/{name}/restart", tag = "bridges",
    params(("name" = String, Path, description = "Source name")),
    responses((status = 204, description = "Done"), (status = 400, description = "Bad input: {code, message}"), (status = 404, description = "Not found: {code, message}"), (status = 401, description = "No or wrong credentials"))
)]
async fn restart_source(State(ctx): State<Ctx>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    changed(ctx.reloader.change_source(&name, None).await, || {
        no_source(&name)
    })
}
