//! Hot reload and run-time changes: SIGHUP and `POST /api/v5/configs/reload` re-read the
//! configuration file; the HTTP API edits the password file, the ACL and the sinks.
//!
//! A reload reads and checks the whole file first — parsing, validation, the TLS files, the
//! authentication chain's files and the ACL — and a file that fails changes nothing (the
//! answer says why). Then what can change on a running broker is applied: the listeners'
//! certificates (re-read), the `[auth]` chain, the `[authz]` ACL, `[[sinks]]` (targets opened
//! first; changed sinks restart their feeds keeping their queues), `[[rules]]`, and the API's
//! credentials files, `[[sources]]` (changed ones restart, resuming from their durable state).
//! the broker-wide `[limits]` (`max_connections`, `max_sessions`, `max_queued_bytes_total`,
//! `max_retained_messages`, `max_subscriptions_per_client`, `stalled_subscriber_ms`). What
//! cannot (`data_dir`, `[storage]`, the listeners' addresses, `[mqtt]`, the other limits,
//! `[sys]`, `[api]`, `[runtime]`, `authz.deny_action`) is reported as needing a restart, and the
//! running values stay. Reloads are serialised.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keelmq_auth::PasswordFile;
use parking_lot::Mutex;

use crate::auth::acl::AclAuthorizer;
use crate::auth::Chains;
use crate::broker::Broker;
use crate::config::{AuthenticatorSpec, Config, SinkSpec};
use crate::transport::tls::Reloadable;

/// Command-line settings that override the file (`keelmq serve --listen`, `--data-dir`,
/// `--api-bind`), applied again to every file a reload reads.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The first TCP listener's address (`[listener] bind` without `[[listeners]]`).
    pub listen: Option<std::net::SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub api_bind: Option<std::net::SocketAddr>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) -> Result<(), String> {
        if let Some(listen) = self.listen {
            if config.listeners.is_empty() {
                config.listener.bind = listen;
            } else {
                let tcp = config
                    .listeners
                    .iter_mut()
                    .find(|l| l.kind == crate::config::ListenerKind::Tcp);
                match tcp {
                    Some(l) => l.bind = Some(listen),
                    None => {
                        return Err(
                            "--listen: the configuration has no listener of kind \"tcp\"".into(),
                        )
                    }
                }
            }
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(bind) = self.api_bind {
            config.api.bind = Some(bind);
        }
        Ok(())
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// What was applied.
    pub applied: Vec<String>,
    /// Sections that changed in the file but take effect only after a restart.
    pub restart_required: Vec<String>,
    /// Parts that failed to apply (the rest was applied).
    pub errors: Vec<String>,
}

/// The running broker's changeable parts.
pub struct Reloader {
    broker: Broker,
    rules: crate::rules::RuleEngine,
    bridges: crate::bridges::Bridges,
    tls: Vec<(String, Arc<Reloadable>)>,
    /// The configuration file and the command line's overrides of it.
    source: Option<(PathBuf, Overrides)>,
    applied: tokio::sync::Mutex<Applied>,
    api_auth: Mutex<Option<Arc<crate::api::ApiAuth>>>,
}

/// The configuration in effect, and the hooks built from it.
struct Applied {
    config: Config,
    auth: Option<Arc<Chains>>,
    acl: Option<Arc<AclAuthorizer>>,
}

/// The hooks a new configuration asks for.
type Hooks = (Option<Arc<Chains>>, Option<Arc<AclAuthorizer>>);

/// The sections that need a restart when they change: name and whether they differ.
fn restart_sections(old: &Config, new: &Config) -> Vec<String> {
    let checks: [(&str, bool); 9] = [
        ("data_dir", old.data_dir != new.data_dir),
        ("storage", old.storage != new.storage),
        ("listener", old.listener != new.listener),
        ("listeners", old.listeners != new.listeners),
        ("mqtt", old.mqtt != new.mqtt),
        ("sys", old.sys != new.sys),
        ("api", old.api != new.api),
        ("runtime", old.runtime != new.runtime),
        (
            "authz.deny_action",
            old.authz.deny_action != new.authz.deny_action,
        ),
    ];
    let (_, fixed) = crate::broker::live_limits::changed_limits(&old.limits, &new.limits);
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name.to_string())
        .chain(fixed.into_iter().map(|f| format!("limits.{f}")))
        .collect()
}

impl Reloader {
    pub(crate) fn new(
        broker: Broker,
        rules: crate::rules::RuleEngine,
        bridges: crate::bridges::Bridges,
        tls: Vec<(String, Arc<Reloadable>)>,
        source: Option<(PathBuf, Overrides)>,
        hooks: Hooks,
    ) -> Reloader {
        let config = broker.config().clone();
        Reloader {
            broker,
            rules,
            bridges,
            tls,
            source,
            applied: tokio::sync::Mutex::new(Applied {
                config,
                auth: hooks.0,
                acl: hooks.1,
            }),
            api_auth: Mutex::new(None),
        }
    }

    pub(crate) fn set_api_auth(&self, auth: Arc<crate::api::ApiAuth>) {
        *self.api_auth.lock() = Some(auth);
    }

    /// SIGHUP: the configuration file if the broker was started from one, else the files
    /// the running configuration names.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        match &self.source {
            Some((path, overrides)) => self.reload_config(path, overrides).await,
            None => Ok(self.reload_files().await),
        }
    }

    /// Re-reads the files of the running configuration: certificates, the authentication
    /// chain's files, the ACL, the API's credentials. One that fails keeps its old state.
    pub async fn reload_files(&self) -> ReloadReport {
        let mut report = ReloadReport::default();
        self.reload_tls(&mut report).await;
        self.reload_auth_files(&mut report).await;
        log(&report);
        report
    }

    /// Re-reads the authentication chain's files, the ACL and the API's credentials.
    pub async fn reload_auth_files(&self, report: &mut ReloadReport) {
        let applied = self.applied.lock().await;
        let (chain, acl) = (applied.auth.clone(), applied.acl.clone());
        drop(applied);
        let api = self.api_auth.lock().clone();
        let problems = tokio::task::spawn_blocking(move || {
            let mut problems = chain.map(|c| c.reload()).unwrap_or_default();
            if let Some(Err(e)) = acl.map(|a| a.reload()) {
                problems.push(format!("authz.acl_file: {e}"));
            }
            if let Some(Err(e)) = api.map(|a| a.reload()) {
                problems.push(format!("api: {e:#}"));
            }
            problems
        })
        .await
        .unwrap_or_else(|e| vec![e.to_string()]);
        match problems.is_empty() {
            true => report
                .applied
                .push("authentication and authorization files".into()),
            false => report.errors.extend(problems),
        }
    }

    /// Re-reads every TLS listener's certificate, key, CA and CRL files.
    pub async fn reload_tls(&self, report: &mut ReloadReport) {
        for (name, reloadable) in &self.tls {
            let r = reloadable.clone();
            match tokio::task::spawn_blocking(move || r.reload()).await {
                Ok(Ok(())) => report
                    .applied
                    .push(format!("listener {name}: certificates")),
                Ok(Err(e)) => report.errors.push(format!("listener {name}: {e}")),
                Err(e) => report.errors.push(format!("listener {name}: {e}")),
            }
        }
    }

    /// Reads and checks `path`, then applies what can change (see the module documentation).
    pub async fn reload_config(
        &self,
        path: &Path,
        overrides: &Overrides,
    ) -> Result<ReloadReport, String> {
        let (owned, overrides) = (path.to_path_buf(), overrides.clone());
        let (new, hooks) = tokio::task::spawn_blocking(move || load_checked(&owned, &overrides))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| {
                tracing::error!(error = %e, "configuration reload refused; nothing changed");
                e
            })?;
        let mut applied = self.applied.lock().await;
        let mut report = ReloadReport {
            restart_required: restart_sections(&applied.config, &new),
            ..ReloadReport::default()
        };
        if !report
            .restart_required
            .iter()
            .any(|s| s.starts_with("listener"))
        {
            self.reload_tls(&mut report).await;
        }
        self.apply_hooks(&mut applied, &new, hooks, &mut report);
        self.apply_limits(&mut applied, &new, &mut report);
        self.apply_sinks_and_rules(&mut applied, &new, &mut report)
            .await;
        let api = self.api_auth.lock().clone();
        if let Some(api) = api {
            match tokio::task::spawn_blocking(move || api.reload()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => report.errors.push(format!("api: {e:#}")),
                Err(e) => report.errors.push(format!("api: {e}")),
            }
        }
        log(&report);
        Ok(report)
    }

    fn apply_hooks(
        &self,
        applied: &mut Applied,
        new: &Config,
        hooks: Hooks,
        report: &mut ReloadReport,
    ) {
        let (auth, acl) = hooks;
        let authenticator: Arc<dyn crate::hooks::Authenticator> = match &auth {
            Some(chain) => chain.clone(),
            None => Arc::new(crate::hooks::AllowAll),
        };
        self.broker.set_authenticator(authenticator);
        let authorizer: Arc<dyn crate::hooks::Authorizer> = match &acl {
            Some(acl) => acl.clone(),
            None => Arc::new(crate::hooks::AllowAll),
        };
        self.broker.set_authorizer(authorizer);
        if applied.config.auth != new.auth {
            report.applied.push("auth".into());
        }
        if applied.config.authz.acl_file != new.authz.acl_file
            || applied.config.authz.no_match != new.authz.no_match
        {
            report.applied.push("authz".into());
        }
        report
            .applied
            .push("authentication and authorization files".into());
        applied.auth = auth;
        applied.acl = acl;
        applied.config.auth = new.auth.clone();
        applied.config.authz.acl_file = new.authz.acl_file.clone();
        applied.config.authz.no_match = new.authz.no_match;
    }

    /// The broker-wide limits a running broker can change; the rest stay as started.
    fn apply_limits(&self, applied: &mut Applied, new: &Config, report: &mut ReloadReport) {
        let (live, _) =
            crate::broker::live_limits::changed_limits(&applied.config.limits, &new.limits);
        if live.is_empty() {
            return;
        }
        let mut limits = applied.config.limits.clone();
        limits.max_connections = new.limits.max_connections;
        limits.max_sessions = new.limits.max_sessions;
        limits.max_queued_bytes_total = new.limits.max_queued_bytes_total;
        limits.max_retained_messages = new.limits.max_retained_messages;
        limits.max_subscriptions_per_client = new.limits.max_subscriptions_per_client;
        limits.stalled_subscriber_ms = new.limits.stalled_subscriber_ms;
        self.broker.apply_limits(&limits);
        applied.config.limits = limits;
        let names: Vec<String> = live.iter().map(|f| format!("limits.{f}")).collect();
        report.applied.push(names.join(", "));
    }

    async fn apply_sinks_and_rules(
        &self,
        applied: &mut Applied,
        new: &Config,
        report: &mut ReloadReport,
    ) {
        match self.bridges.reload(&new.sinks, None) {
            Ok(changed) => {
                if !changed.is_empty() {
                    report
                        .applied
                        .push(format!("sinks: {}", changed.join(", ")));
                }
                applied.config.sinks = new.sinks.clone();
            }
            Err(e) => report.errors.push(e),
        }
        match self.bridges.reload_sources(&new.sources, None).await {
            Ok(changed) => {
                if !changed.is_empty() {
                    report
                        .applied
                        .push(format!("sources: {}", changed.join(", ")));
                }
                applied.config.sources = new.sources.clone();
            }
            Err(e) => report.errors.push(e),
        }
        match self.rules.reload(&new.rules).await {
            Ok(()) => {
                if applied.config.rules != new.rules {
                    report.applied.push("rules".into());
                }
                applied.config.rules = new.rules.clone();
            }
            Err(e) => report.errors.push(format!("rules: {e}")),
        }
        // The feeds follow the sinks even when the rules did not change.
        self.rules.resync_sinks().await;
    }

    /// The ACL file's text, if an ACL is configured.
    pub async fn acl_text(&self) -> Option<Result<String, String>> {
        let path = self.applied.lock().await.acl.as_ref()?.path().to_path_buf();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(&path));
        Some(match read.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        })
    }

    /// Replaces the ACL with `text`, checked first (a bad one changes nothing); the file is
    /// rewritten atomically. `Ok(false)` if no ACL is configured.
    pub async fn set_acl_text(&self, text: String) -> Result<bool, String> {
        keelmq_auth::Acl::parse(&text).map_err(|e| e.to_string())?;
        let applied = self.applied.lock().await;
        let Some(acl) = applied.acl.clone() else {
            return Ok(false);
        };
        tokio::task::spawn_blocking(move || {
            write_atomically(acl.path(), text.as_bytes()).map_err(|e| e.to_string())?;
            acl.reload()
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(true)
    }

    /// The first `password_file` authenticator's file.
    pub async fn password_file(&self) -> Option<PathBuf> {
        let applied = self.applied.lock().await;
        applied.config.auth.chain.iter().find_map(|a| match a {
            AuthenticatorSpec::PasswordFile { path } => Some(path.clone()),
            _ => None,
        })
    }

    /// The password file as it is on disk; `Ok(None)` if there is none.
    pub async fn read_password_file(&self) -> Result<Option<PasswordFile>, String> {
        let Some(path) = self.password_file().await else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            PasswordFile::parse(&text)
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Changes the password file with `edit` (on a blocking thread: it may hash), rewrites it
    /// atomically and reloads the chain. `Ok(None)` if there is no password file.
    pub async fn edit_password_file<R: Send + 'static>(
        &self,
        edit: impl FnOnce(&mut PasswordFile) -> Result<R, String> + Send + 'static,
    ) -> Result<Option<R>, String> {
        let Some(path) = self.password_file().await else {
            return Ok(None);
        };
        // Held across the change: edits (and reloads) one at a time.
        let applied = self.applied.lock().await;
        let chain = applied.auth.clone();
        let edited = tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            let mut file = PasswordFile::parse(&text).map_err(|e| e.to_string())?;
            let r = edit(&mut file)?;
            write_atomically(&path, file.render().as_bytes()).map_err(|e| e.to_string())?;
            let problems = chain.map(|c| c.reload()).unwrap_or_default();
            match problems.is_empty() {
                true => Ok(Some(r)),
                false => Err(problems.join("; ")),
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        drop(applied);
        edited
    }

    /// Every sink's configuration as in effect.
    pub async fn sinks(&self) -> Vec<SinkSpec> {
        self.applied.lock().await.config.sinks.clone()
    }

    /// Enables or disables source `name`, or restarts it (`enabled` `None`): a stopped source
    /// keeps its durable state and resumes from it. `Ok(false)` for an unknown source.
    pub async fn change_source(&self, name: &str, enabled: Option<bool>) -> Result<bool, String> {
        let mut applied = self.applied.lock().await;
        let mut specs = applied.config.sources.clone();
        let Some(spec) = specs.iter_mut().find(|s| s.name == name) else {
            return Ok(false);
        };
        if let Some(enabled) = enabled {
            spec.enabled = enabled;
        }
        let restart = enabled.is_none().then_some(name);
        self.bridges.reload_sources(&specs, restart).await?;
        applied.config.sources = specs;
        tracing::info!(source = %name, ?enabled, "source changed through the API");
        Ok(true)
    }

    /// Enables or disables sink `name` (a disabled sink's subscribers keep their queues,
    /// unsubscribed), or restarts it (its target reopened, its feeds restarted). `Ok(false)`
    /// for an unknown sink. Until the next reload of the file.
    pub async fn change_sink(&self, name: &str, enabled: Option<bool>) -> Result<bool, String> {
        let mut applied = self.applied.lock().await;
        let mut specs = applied.config.sinks.clone();
        let Some(spec) = specs.iter_mut().find(|s| s.name == name) else {
            return Ok(false);
        };
        if let Some(enabled) = enabled {
            spec.enabled = enabled;
        }
        let restart = enabled.is_none().then_some(name);
        self.bridges.reload(&specs, restart)?;
        applied.config.sinks = specs;
        self.rules.resync_sinks().await;
        tracing::info!(sink = %name, ?enabled, "sink changed through the API");
        Ok(true)
    }
}

/// Reads, validates and checks everything a configuration file names; builds its hooks.
fn load_checked(path: &Path, overrides: &Overrides) -> Result<(Config, Hooks), String> {
    let mut config = Config::load(path).map_err(|e| e.to_string())?;
    overrides.apply(&mut config)?;
    config.validate().map_err(|e| e.to_string())?;
    crate::transport::check_files(&config).map_err(|e| e.to_string())?;
    let auth = crate::auth::authenticator(&config).map_err(|e| format!("{e:#}"))?;
    let acl = AclAuthorizer::from_config(&config.authz).map_err(|e| format!("{e:#}"))?;
    Ok((config, (auth, acl)))
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("keelmq-tmp");
    let mut f = std::fs::File::create(&tmp)?;
    if let Ok(meta) = std::fs::metadata(path) {
        f.set_permissions(meta.permissions())?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn log(report: &ReloadReport) {
    for e in &report.errors {
        tracing::error!(error = %e, "reload: failed; the old state stays for this part");
    }
    if !report.restart_required.is_empty() {
        tracing::warn!(sections = ?report.restart_required, "reload: these changes take effect after a restart");
    }
    tracing::info!(applied = ?report.applied, "configuration reloaded");
}
