//! Who may use the API: HTTP Basic with an API key and secret (`api.api_key_file`, lines
//! `key:secret`, compared in constant time), or a Bearer token from `POST /api/v5/login` with
//! the dashboard's admin password (`api.admin_password_file`, hashed; created on first start
//! with a random password printed once to the log). Failed attempts are counted per address:
//! past `api.max_auth_failures_per_minute` in a minute, the address gets 429 until the minute
//! ends.
//!
//! # Bounds
//! At most [`MAX_TOKENS`] logins are live (a new one evicts the oldest) and at most
//! [`MAX_TRACKED_ADDRESSES`] addresses are tracked for failures (expired windows are dropped
//! first; when every tracked address is within its window, an untracked address is refused
//! until one expires, so a flood of addresses cannot wipe the counts).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use keelmq_auth::{Hash, PasswordFile};
use parking_lot::{Mutex, RwLock};
use subtle::ConstantTimeEq;

use super::error::{ApiError, ApiResult, Body};
use super::Ctx;
use crate::config::Config;

/// Live login tokens at most.
pub const MAX_TOKENS: usize = 1024;
/// Addresses whose failures are counted at most.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The dashboard's user.
pub const ADMIN_USER: &str = "admin";

/// The API's credentials and login state.
pub struct ApiAuth {
    key_file: Option<PathBuf>,
    keys: RwLock<Vec<(String, String)>>,
    admin_file: PathBuf,
    admin: RwLock<Hash>,
    tokens: Mutex<HashMap<String, Instant>>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    session: Duration,
    max_failures: u32,
}

impl ApiAuth {
    /// Reads the key file and the admin password file, creating the latter (with a random
    /// password, logged once) if it does not exist. Blocking: files and hashing.
    pub fn load(config: &Config) -> anyhow::Result<ApiAuth> {
        let api = &config.api;
        let keys = match &api.api_key_file {
            Some(path) => read_keys(path)?,
            None => Vec::new(),
        };
        let admin_file = api
            .admin_password_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("dashboard_admin"));
        let admin = read_or_create_admin(&admin_file)?;
        Ok(ApiAuth {
            key_file: api.api_key_file.clone(),
            keys: RwLock::new(keys),
            admin_file,
            admin: RwLock::new(admin),
            tokens: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            session: Duration::from_secs(api.session_secs),
            max_failures: api.max_auth_failures_per_minute,
        })
    }

    /// Re-reads the key file and the admin password file (SIGHUP); a file that fails keeps
    /// the old state and the error is returned. Blocking.
    pub fn reload(&self) -> anyhow::Result<()> {
        if let Some(path) = &self.key_file {
            *self.keys.write() = read_keys(path)?;
        }
        *self.admin.write() = read_admin(&self.admin_file)?;
        Ok(())
    }

    /// Whether `key:secret` is one of the API keys; every key is compared, in constant time.
    fn key_matches(&self, key: &str, secret: &str) -> bool {
        let keys = self.keys.read();
        let mut found = subtle::Choice::from(0);
        for (k, s) in keys.iter() {
            found |= k.as_bytes().ct_eq(key.as_bytes()) & s.as_bytes().ct_eq(secret.as_bytes());
        }
        found.into()
    }

    fn token_valid(&self, token: &str) -> bool {
        let mut tokens = self.tokens.lock();
        match tokens.get(token) {
            Some(expires) if *expires > Instant::now() => true,
            Some(_) => {
                tokens.remove(token);
                false
            }
            None => false,
        }
    }

    fn new_token(&self) -> anyhow::Result<String> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut tokens = self.tokens.lock();
        let now = Instant::now();
        tokens.retain(|_, expires| *expires > now);
        if tokens.len() >= MAX_TOKENS {
            let oldest = tokens
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                tokens.remove(&oldest);
            }
        }
        tokens.insert(token.clone(), now + self.session);
        Ok(token)
    }

    /// Whether `ip` has used up its failures for this minute.
    fn throttled(&self, ip: IpAddr) -> bool {
        let failures = self.failures.lock();
        match failures.get(&ip) {
            Some((since, n)) => since.elapsed() < FAILURE_WINDOW && *n >= self.max_failures,
            None => failures.len() >= MAX_TRACKED_ADDRESSES,
        }
    }

    fn count_failure(&self, ip: IpAddr) {
        let mut failures = self.failures.lock();
        if failures.len() >= MAX_TRACKED_ADDRESSES && !failures.contains_key(&ip) {
            failures.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= MAX_TRACKED_ADDRESSES {
                return;
            }
        }
        let entry = failures.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    /// Whether a request's `Authorization` header opens the API.
    fn authorizes(&self, header: &str) -> bool {
        if let Some(token) = header.strip_prefix("Bearer ") {
            return self.token_valid(token.trim());
        }
        let Some(basic) = header.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        let decoded = String::from_utf8_lossy(&decoded);
        match decoded.split_once(':') {
            Some((key, secret)) => self.key_matches(key, secret),
            None => false,
        }
    }
}

/// The API key file (`keelmq_auth::api_keys`), its errors naming the field and the line.
fn read_keys(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let what = || format!("api.api_key_file {}", path.display());
    let text = std::fs::read_to_string(path).with_context(what)?;
    keelmq_auth::api_keys::parse(&text).with_context(what)
}

fn read_admin(path: &Path) -> anyhow::Result<Hash> {
    let what = || format!("api.admin_password_file {}", path.display());
    let text = std::fs::read_to_string(path).with_context(what)?;
    let file = PasswordFile::parse(&text).with_context(what)?;
    file.hash_of(ADMIN_USER)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{}: no line for user `{ADMIN_USER}`", what()))
}

fn read_or_create_admin(path: &Path) -> anyhow::Result<Hash> {
    if path.exists() {
        return read_admin(path);
    }
    let mut raw = [0u8; 12];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let hash = Hash::new_argon2id(password.as_bytes())?;
    let mut file = PasswordFile::default();
    file.set(ADMIN_USER, hash.clone())
        .map_err(|e| anyhow::anyhow!(e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    write_private(path, file.render().as_bytes())
        .with_context(|| format!("api.admin_password_file {}", path.display()))?;
    tracing::warn!(
        file = %path.display(),
        "dashboard login created: user `{ADMIN_USER}`, password `{password}` (shown only now; \
         change it with `keelmq passwd {} {ADMIN_USER}`)",
        path.display()
    );
    Ok(hash)
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The middleware in front of every protected route.
pub async fn require(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let auth = &ctx.auth;
    if auth.throttled(peer.ip()) {
        return too_many().into_response();
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth.authorizes(header) {
        return next.run(req).await;
    }
    if !header.is_empty() {
        auth.count_failure(peer.ip());
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "BAD_API_KEY_OR_SECRET",
        "an API key (HTTP Basic) or a login token (Bearer) is required",
    )
    .into_response();
    let challenge = header::HeaderValue::from_static("Basic realm=\"keelmq\"");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    response
}

fn too_many() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_REQUESTS",
        "too many failed attempts from this address; try again in a minute",
    )
}

#[derive(serde::Deserialize)]
pub struct Login {
    username: String,
    password: String,
}

/// `POST /api/v5/login`: the admin password for a Bearer token.
#[utoipa::path(post, path = "/login", tag = "auth",
    responses((status = 200, description = "OK"), (status = 401, description = "No or wrong credentials"), (status = 429, description = "Too many failed attempts"))
)]
pub async fn login(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(login): Body<Login>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let auth = ctx.clone();
    if auth.auth.throttled(peer.ip()) {
        return Err(too_many());
    }
    let hash = auth.auth.admin.read().clone();
    let password = login.password;
    let matches = tokio::task::spawn_blocking(move || hash.verify(password.as_bytes()))
        .await
        .unwrap_or(false);
    if !(matches && login.username == ADMIN_USER) {
        auth.auth.count_failure(peer.ip());
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "BAD_USERNAME_OR_PWD",
            "wrong username or password",
        ));
    }
    let token = auth.auth.new_token().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            e.to_string(),
        )
    })?;
    Ok(axum::Json(serde_json::json!({
        "token": token,
        "version": env!("CARGO_PKG_VERSION"),
        "role": "administrator",
    })))
}

/// `POST /api/v5/logout`: ends the caller's login (a Bearer token).
#[utoipa::path(post, path = "/logout", tag = "auth",
    responses((status = 204, description = "Done"))
)]
pub async fn logout(State(ctx): State<Ctx>, req: Request) -> StatusCode {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(token) = header.strip_prefix("Bearer ") {
        ctx.auth.tokens.lock().remove(token.trim());
    }
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(keys: Vec<(&str, &str)>) -> ApiAuth {
        ApiAuth {
            key_file: None,
            keys: RwLock::new(
                keys.into_iter()
                    .map(|(k, s)| (k.into(), s.into()))
                    .collect(),
            ),
            admin_file: PathBuf::new(),
            admin: RwLock::new(Hash::new_argon2id(b"pw").unwrap()),
            tokens: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            session: Duration::from_secs(60),
            max_failures: 3,
        }
    }

    #[test]
    fn basic_credentials_and_tokens_open_the_api() {
        let a = auth(vec![("k1", "s1"), ("k2", "s:2")]);
        let basic = |v: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(v)
            )
        };
        assert!(a.authorizes(&basic("k1:s1")));
        assert!(
            a.authorizes(&basic("k2:s:2")),
            "the secret may hold a colon"
        );
        assert!(!a.authorizes(&basic("k1:s2")));
        assert!(!a.authorizes(&basic("k1")));
        assert!(!a.authorizes("Basic !!!"));
        assert!(!a.authorizes(""));
        let token = a.new_token().unwrap();
        assert!(a.authorizes(&format!("Bearer {token}")));
        assert!(!a.authorizes("Bearer 00"));
    }

    #[test]
    fn failures_throttle_an_address_for_its_window() {
        let a = auth(vec![]);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..3 {
            assert!(!a.throttled(ip));
            a.count_failure(ip);
        }
        assert!(a.throttled(ip));
        assert!(!a.throttled("127.0.0.10".parse().unwrap()));
        a.failures.lock().get_mut(&ip).unwrap().0 -= FAILURE_WINDOW;
        assert!(!a.throttled(ip), "a new minute");
    }

    #[test]
    fn the_admin_file_is_created_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("keelmq-api-admin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("admin");
        let created = read_or_create_admin(&path).unwrap();
        let again = read_or_create_admin(&path).unwrap();
        assert_eq!(created, again);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "someone:$6$abc$def\n").unwrap();
        let e = read_admin(&path).unwrap_err().to_string();
        assert!(e.contains("api.admin_password_file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
