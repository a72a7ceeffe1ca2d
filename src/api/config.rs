//! Configuration at run time: `POST /configs/reload`, the ACL as text, the password file's
//! users, and enabling, disabling and restarting sinks (all through `crate::reload`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult, Body, Path};
use super::Ctx;

/// The id of the password-file authenticator in EMQX's `/authentication/{id}` paths.
pub const PASSWORD_FILE_ID: &str = "password_based:password_file";

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/configs/reload", post(reload))
        .route("/authorization/sources/file", get(acl).put(set_acl))
        .route("/authentication/{id}/users", get(users).post(add_user))
        .route(
            "/authentication/{id}/users/{user}",
            get(user).put(set_password).delete(delete_user),
        )
        .route("/sinks/{name}/enable/{enable}", put(enable_sink))
        .route("/sinks/{name}/restart", post(restart_sink))
}

/// `POST /configs/reload`: the file re-read and checked; 200 with what was applied and what
/// needs a restart, or 400 with why nothing changed.
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

fn no_sink(name: &str) -> ApiError {
    ApiError::not_found("NOT_FOUND", format!("no sink {name:?}"))
}

/// `PUT /sinks/:name/enable/:bool`: a disabled sink writes nothing; its subscribers keep
/// what they hold (acknowledged to it), unsubscribed, until it is enabled again.
async fn enable_sink(
    State(ctx): State<Ctx>,
    Path((name, enable)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let enable = match enable.as_str() {
        "true" => true,
        "false" => false,
        _ => return Err(ApiError::bad_request("enable must be true or false")),
    };
    match ctx.reloader.change_sink(&name, Some(enable)).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(no_sink(&name)),
        Err(e) => Err(ApiError::bad_request(e)),
    }
}

/// `POST /sinks/:name/restart`: its target reopened, its feeds restarted (queues kept).
async fn restart_sink(State(ctx): State<Ctx>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    match ctx.reloader.change_sink(&name, None).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(no_sink(&name)),
        Err(e) => Err(ApiError::bad_request(e)),
    }
}
