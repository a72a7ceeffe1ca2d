//! `[api]`: the HTTP management API, the Prometheus endpoints and the dashboard.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::{bad, ConfigError};

/// The address the API serves on when `[api] bind` is not given.
pub const DEFAULT_API_BIND: &str = "127.0.0.1:18083";

/// `[api]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Whether the API and the dashboard are served at all.
    pub enabled: bool,
    /// Where the API and the dashboard listen. `None`: [`DEFAULT_API_BIND`], skipped with a
    /// warning when that port is taken (a second broker on one machine); an address given
    /// here must be bound or the start fails.
    pub bind: Option<SocketAddr>,
    /// Lines `key:secret`, the secret as written (compared in constant time; the file should
    /// be readable by the broker's user only): HTTP Basic credentials for scripts. Left out:
    /// only the dashboard's admin login opens the API.
    pub api_key_file: Option<PathBuf>,
    /// The dashboard's admin password (user `admin`), as a password-file line. Empty:
    /// `<data_dir>/dashboard_admin`. Created on first start with a random password that is
    /// printed once to the log.
    pub admin_password_file: Option<PathBuf>,
    /// Seconds a dashboard login lasts.
    pub session_secs: u64,
    /// Failed logins (or API key checks) from one address per minute before it is refused
    /// with 429 for the rest of that minute.
    pub max_auth_failures_per_minute: u32,
    /// Seconds between the samples of the dashboard's charts (`GET /api/v5/monitor`).
    pub monitor_interval_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            bind: None,
            api_key_file: None,
            admin_password_file: None,
            session_secs: 3600,
            max_auth_failures_per_minute: 10,
            monitor_interval_secs: 10,
        }
    }
}

impl ApiConfig {
    /// The address to serve on, and whether it was configured (else the default).
    pub fn bind_addr(&self) -> (SocketAddr, bool) {
        match self.bind {
            Some(addr) => (addr, true),
            None => (
                DEFAULT_API_BIND
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 18083))),
                false,
            ),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.session_secs == 0 || self.session_secs > 7 * 24 * 3600 {
            return bad("api.session_secs", "must be between 1 and 604800");
        }
        if !(1..=3600).contains(&self.monitor_interval_secs) {
            return bad("api.monitor_interval_secs", "must be between 1 and 3600");
        }
        if self.max_auth_failures_per_minute == 0 {
            return bad("api.max_auth_failures_per_minute", "must be at least 1");
        }
        let empty = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        if empty(&self.api_key_file) {
            return bad(
                "api.api_key_file",
                "must not be empty (leave it out instead)",
            );
        }
        if empty(&self.admin_password_file) {
            return bad(
                "api.admin_password_file",
                "must not be empty (leave it out instead)",
            );
        }
        Ok(())
    }
}
