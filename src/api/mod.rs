//! The HTTP management API (`[api]`): EMQX v5 paths under `/api/v5` so existing scripts keep
//! working, Prometheus metrics at `/metrics` and `/api/v5/prometheus/stats`, on axum.
//!
//! - [`auth`]: API keys (HTTP Basic), the admin login (Bearer tokens), failure throttling.
//! - `stats`: status, nodes, stats, metrics, listeners and KeelMQ's own `/durability`.
//! - `clients`: clients (list with EMQX's filters, read, kick), their subscriptions and
//!   queues, every subscription, the topics.
//! - `messages`: publish (answered once the message is durable) and retained messages.
//! - `manage`: rules (CRUD, `rule_test`), sinks and sources with status and metrics.
//! - `config`: `POST /configs/reload`, the ACL as text, the password file's users, enabling,
//!   disabling and restarting sinks (through `crate::reload`).
//! - `prometheus`: the text exposition format.
//! - `monitor`: the dashboard's history (a ring of 10-second samples).
//! - `dashboard`: the web dashboard, embedded (`/`).
//!
//! Handlers read the broker through snapshots (`crate::broker::admin`) and its atomic
//! counters; a scrape takes no lock on the message path. Errors are EMQX's `{code, message}`
//! ([`error::ApiError`]); no handler panics on input.

pub mod auth;
mod clients;
mod config;
mod dashboard;
pub mod error;
mod manage;
mod messages;
pub mod monitor;
pub mod prometheus;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio::task::JoinHandle;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::broker::Broker;
use crate::persistence::RecoveryReport;
use crate::transport::ListenerKind;

pub use auth::ApiAuth;

/// What the API serves.
pub struct ApiParts {
    pub broker: Broker,
    pub rules: crate::rules::RuleEngine,
    /// Hot reload and the run-time changes of the ACL, the password file and the sinks.
    pub reloader: Arc<crate::reload::Reloader>,
    /// Every MQTT listener: name, kind, bound address.
    pub listeners: Vec<(String, ListenerKind, SocketAddr)>,
    /// What recovery found at this start, and how long restoring the broker state took.
    pub recovery: Option<(RecoveryReport, std::time::Duration)>,
}

/// What the handlers work on.
pub struct ApiContext {
    pub broker: Broker,
    pub rules: crate::rules::RuleEngine,
    pub reloader: Arc<crate::reload::Reloader>,
    pub listeners: Vec<(String, ListenerKind, SocketAddr)>,
    pub auth: Arc<ApiAuth>,
    pub recovery: Option<(RecoveryReport, std::time::Duration)>,
    /// The dashboard's history.
    pub monitor: Arc<monitor::Monitor>,
}

pub(crate) type Ctx = Arc<ApiContext>;

/// The node name the API reports (EMQX's `name@host` form).
pub fn node_name() -> String {
    "keelmq@127.0.0.1".to_string()
}

/// A running API server.
pub struct Api {
    addr: SocketAddr,
    task: JoinHandle<()>,
    ctx: Ctx,
}

/// Binds `[api] bind` (before the broker starts, so that an address that cannot be bound
/// stops the start at once). `Ok(None)` if the API is disabled, or if the default address (no
/// `bind` configured) is taken — logged, the broker runs without it.
pub async fn bind(
    api: &crate::config::ApiConfig,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if !api.enabled {
        return Ok(None);
    }
    let (addr, configured) = api.bind_addr();
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if !configured => {
            tracing::warn!(%addr, error = %e, "HTTP API not started: its default address is taken (set [api] bind)");
            Ok(None)
        }
        Err(e) => anyhow::bail!("config field `api.bind`: cannot listen on {addr}: {e}"),
    }
}

impl Api {
    /// Serves the API on `listener` (from [`bind`]).
    pub async fn start(parts: ApiParts, listener: tokio::net::TcpListener) -> anyhow::Result<Api> {
        let addr = listener.local_addr()?;
        let config = parts.broker.config().clone();
        let auth = Arc::new(tokio::task::spawn_blocking(move || ApiAuth::load(&config)).await??);
        let ctx = Arc::new(ApiContext {
            broker: parts.broker,
            rules: parts.rules,
            reloader: parts.reloader,
            listeners: parts.listeners,
            auth,
            recovery: parts.recovery,
            monitor: Arc::default(),
        });
        let interval =
            std::time::Duration::from_secs(ctx.broker.config().api.monitor_interval_secs);
        tokio::spawn(ctx.monitor.clone().run(ctx.broker.clone(), interval));
        let app = router(ctx.clone());
        let mut shutdown = app.1;
        let service = app.0.into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, service)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
        tracing::info!(api_addr = %addr, "HTTP API and dashboard listening");
        Ok(Api { addr, task, ctx })
    }

    /// The API's credentials (re-read by reloads).
    pub fn auth(&self) -> Arc<ApiAuth> {
        self.ctx.auth.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving (the broker's shutdown signal ends it; this waits for it).
    pub async fn stop(self) {
        let _ = self.task.await;
    }
}

/// Every route, and the broker's shutdown signal that stops the server. The OpenAPI document
/// (`/api-docs`) is built from the same registrations as the routes under `/api/v5`.
fn router(ctx: Ctx) -> (Router, tokio::sync::watch::Receiver<bool>) {
    let shutdown = ctx.broker.shutdown_signal();
    let protected = OpenApiRouter::new()
        .merge(stats::routes())
        .merge(clients::routes())
        .merge(messages::routes())
        .merge(manage::routes())
        .merge(config::routes())
        .merge(monitor::routes())
        .routes(routes!(auth::logout))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            auth::require,
        ));
    let open = OpenApiRouter::new()
        .routes(routes!(auth::login))
        .routes(routes!(stats::status))
        .routes(routes!(prometheus::scrape));
    let (api, mut doc) = OpenApiRouter::new()
        .nest("/api/v5", protected.merge(open))
        .split_for_parts();
    describe(&mut doc);
    let doc = Arc::new(doc.to_pretty_json().unwrap_or_default());
    let app = api
        .route("/api-docs", get(move || openapi(doc.clone())))
        .route("/status", get(stats::status))
        .route("/metrics", get(prometheus::scrape))
        .merge(dashboard::routes())
        .fallback(not_found)
        .with_state(ctx);
    (app, shutdown)
}

/// The document's title and its two ways in (HTTP Basic API keys, Bearer login tokens).
fn describe(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    doc.info.title = "KeelMQ HTTP API".into();
    doc.info.description = Some(
        "EMQX v5 paths. Errors are {code, message}. Log in with an API key (HTTP Basic) or a \
         token from POST /api/v5/login (Bearer); /status, /login and /prometheus/stats are open."
            .into(),
    );
    let components = doc.components.get_or_insert_with(Default::default);
    let basic = HttpBuilder::new().scheme(HttpAuthScheme::Basic).build();
    let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
    components.add_security_scheme("api_key", SecurityScheme::Http(basic));
    components.add_security_scheme("login_token", SecurityScheme::Http(bearer));
    doc.security = Some(vec![
        SecurityRequirement::new("api_key", Vec::<String>::new()),
        SecurityRequirement::new("login_token", Vec::<String>::new()),
    ]);
}

async fn openapi(doc: Arc<String>) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        (*doc).clone(),
    )
}

async fn not_found() -> error::ApiError {
    error::ApiError::not_found("NOT_FOUND", "no such path")
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configured address that cannot be bound stops the start, naming the field; the
    /// default address taken (a second broker on the machine) only leaves the API off.
    #[tokio::test]
    async fn binding_a_taken_address() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut api = crate::config::ApiConfig {
            bind: Some(taken.local_addr().unwrap()),
            ..Default::default()
        };
        let err = bind(&api).await.unwrap_err().to_string();
        assert!(err.contains("config field `api.bind`"), "{err}");
        api.bind = None;
        // Held here unless something else on the machine already holds it: taken either way.
        let _default = tokio::net::TcpListener::bind(api.bind_addr().0).await;
        assert!(bind(&api).await.unwrap().is_none());
        api.enabled = false;
        api.bind = Some("127.0.0.1:0".parse().unwrap());
        assert!(bind(&api).await.unwrap().is_none());
        api.enabled = true;
        let bound = bind(&api)
            .await
            .unwrap()
            .expect("a free configured address is bound");
        assert_ne!(bound.local_addr().unwrap().port(), 0);
    }
}
