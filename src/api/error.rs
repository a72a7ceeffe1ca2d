//! API errors: an HTTP status and EMQX's `{code, message}` body; and the JSON and query
//! extractors whose rejections answer in that form.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// EMQX's code where one exists (`BAD_REQUEST`, `NOT_FOUND`, `CLIENTID_NOT_FOUND`, …).
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// What was to be stored could not be made durable (the broker is stopping).
    pub fn not_durable() -> ApiError {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "persistence failed: nothing was acknowledged",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<crate::broker::NotDurable> for ApiError {
    fn from(_: crate::broker::NotDurable) -> ApiError {
        ApiError::not_durable()
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body; a body that is not JSON of the expected shape answers 400 with the reason.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Query parameters; ones that do not parse answer 400 with the reason.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// A path parameter (percent-decoded); one that does not decode answers 400.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// `page` and `limit` query parameters (EMQX's paging), checked.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub page: usize,
    pub limit: usize,
}

/// The largest `limit` a list answers with.
pub const MAX_LIMIT: usize = 10_000;

impl Paging {
    /// From the raw parameters; 400 for a page below 1 or a limit outside 1..=[`MAX_LIMIT`].
    pub fn parse(page: Option<&str>, limit: Option<&str>) -> ApiResult<Paging> {
        let number = |name: &str, v: Option<&str>, default: usize| match v {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("`{name}` must be a number: {v:?}"))),
        };
        let page = number("page", page, 1)?;
        let limit = number("limit", limit, 100)?;
        if page == 0 {
            return Err(ApiError::bad_request("`page` starts at 1"));
        }
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::bad_request(format!(
                "`limit` must be between 1 and {MAX_LIMIT}"
            )));
        }
        Ok(Paging { page, limit })
    }

    /// From a request's query parameters.
    pub fn of(query: &std::collections::HashMap<String, String>) -> ApiResult<Paging> {
        let get = |name: &str| query.get(name).map(String::as_str);
        Self::parse(get("page"), get("limit"))
    }

    /// One page of `items` and its `meta` (EMQX's `{page, limit, count, hasnext}`).
    pub fn page<T: serde::Serialize>(&self, items: Vec<T>) -> serde_json::Value {
        let count = items.len();
        let start = (self.page - 1).saturating_mul(self.limit);
        let data: Vec<T> = items.into_iter().skip(start).take(self.limit).collect();
        let hasnext = start.saturating_add(self.limit) < count;
        serde_json::json!({
            "data": data,
            "meta": { "page": self.page, "limit": self.limit, "count": count, "hasnext": hasnext },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_is_checked_and_cuts_pages() {
        assert!(Paging::parse(Some("0"), None).is_err());
        assert!(Paging::parse(None, Some("0")).is_err());
        assert!(Paging::parse(None, Some("10001")).is_err());
        assert!(Paging::parse(Some("x"), None).is_err());
        let p = Paging::parse(Some("2"), Some("2")).unwrap();
        let v = p.page((0..5).collect());
        assert_eq!(v["data"], serde_json::json!([2, 3]));
        assert_eq!(v["meta"]["count"], 5);
        assert_eq!(v["meta"]["hasnext"], true);
        let last = Paging::parse(Some("3"), Some("2"))
            .unwrap()
            .page((0..5).collect());
        assert_eq!(last["data"], serde_json::json!([4]));
        assert_eq!(last["meta"]["hasnext"], false);
        let beyond = Paging::parse(Some(&usize::MAX.to_string()), Some("10000")).unwrap();
        assert_eq!(beyond.page((0..5).collect())["data"], serde_json::json!([]));
    }
}
