//! Starting and stopping a whole broker: persistence and recovery, listeners, background tasks,
//! graceful shutdown. Used by the `keelmq serve` command and by the integration tests, which
//! run real brokers on ephemeral loopback ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::{Config, SyncMode};
use crate::persistence::{Persistence, PersistenceOptions, RecoveryReport};
use crate::reload::{ReloadReport, Reloader};
use crate::transport;

/// A running broker.
pub struct Server {
    broker: Broker,
    local_addr: SocketAddr,
    /// Every listener's name, kind and bound address, in configuration order.
    listeners: Vec<(String, transport::ListenerKind, SocketAddr)>,
    /// Hot reload and run-time changes (certificates, auth, ACL, rules, sinks).
    reloader: Arc<Reloader>,
    listener_tasks: Vec<JoinHandle<()>>,
    checkpointer: JoinHandle<()>,
    rules: crate::rules::RuleEngine,
    bridges: crate::bridges::Bridges,
    /// The HTTP API, if it is served.
    api: Option<crate::api::Api>,
}

/// The persistence options a configuration asks for.
pub fn persistence_options(config: &Config) -> PersistenceOptions {
    let s = &config.storage;
    PersistenceOptions {
        sync: match s.sync {
            SyncMode::Always => keelmq_wal::SyncPolicy::Always,
            SyncMode::Interval => keelmq_wal::SyncPolicy::IntervalMs(s.sync_interval_ms),
            SyncMode::Never => keelmq_wal::SyncPolicy::Never,
        },
        segment_bytes: s.wal_segment_bytes,
        wal_writer_nice: Some(s.wal_writer_nice),
        commit_window: Duration::from_micros(s.commit_window_us),
        commit_quiet: Duration::from_micros(s.commit_quiet_us),
        checkpoint_interval: Duration::from_millis(s.checkpoint_interval_ms),
        checkpoint_wal_bytes: s.checkpoint_wal_bytes,
        store: keelmq_storage::StoreOptions {
            block_cache_bytes: s.block_cache_bytes,
            write_buffer_bytes: s.write_buffer_bytes,
        },
    }
}

/// Logs what recovery found.
fn log_recovery(
    broker: &Broker,
    persistence: &Persistence,
    report: &crate::persistence::RecoveryReport,
    restore: std::time::Duration,
) {
    let [sessions, subscriptions, deliveries, inbound, _] = persistence.with_image(|i| i.counts());
    tracing::info!(
        sessions,
        subscriptions,
        queued = deliveries,
        inbound_qos2 = inbound,
        checkpoint_seq = report.checkpoint_seq,
        replayed = report.replayed_records,
        torn_tail = report.torn_tail.as_deref().unwrap_or("none"),
        elapsed_ms = report.elapsed.as_millis() as u64,
        load_ms = report.load.as_millis() as u64,
        restore_ms = restore.as_millis() as u64,
        "recovered state from {}",
        broker.config().data_dir.display()
    );
}

/// What [`serve_all`] started: each listener's name, kind and address, the TLS listeners'
/// reloadable configurations, and the accept tasks.
type Serving = (
    Vec<(String, transport::ListenerKind, SocketAddr)>,
    Vec<(String, Arc<transport::tls::Reloadable>)>,
    Vec<JoinHandle<()>>,
);

/// Starts accepting on every bound listener.
fn serve_all(broker: &Broker, bound: Vec<transport::Listener>) -> Serving {
    let (mut listeners, mut tls, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
    for l in bound {
        let (name, kind, local_addr) = (l.name().to_string(), l.kind(), l.local_addr());
        tracing::info!(listener = %name, kind = kind.name(), %local_addr, "KeelMQ listening");
        if let Some(reloadable) = l.tls() {
            tls.push((name.clone(), reloadable));
        }
        listeners.push((name, kind, local_addr));
        tasks.push(tokio::spawn(l.serve(broker.clone())));
    }
    (listeners, tls, tasks)
}

impl Server {
    /// Validates the configuration, recovers the data directory, binds the listener and starts
    /// serving.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        Self::start_from(config, None).await
    }

    /// [`Self::start`], with the file the configuration was read from and the command line's
    /// overrides of it: reloads (SIGHUP, `POST /api/v5/configs/reload`) re-read it.
    pub async fn start_from(
        config: Config,
        source: Option<(PathBuf, crate::reload::Overrides)>,
    ) -> anyhow::Result<Server> {
        config.validate()?;
        // Before any recovery work: a bad password file or API address stops the start at once.
        let (auth, acl) = load_auth(&config).await?;
        let api_listener = crate::api::bind(&config.api).await?;
        let (broker, persistence, recovery) = open_broker(config, &auth, &acl).await?;
        let bound = transport::bind_all(broker.config(), &broker).await?;
        broker.spawn_background();
        // Before any client connects: every rule's consumer is subscribed.
        let config = broker.config();
        let bridges =
            crate::bridges::Bridges::start(broker.clone(), &config.sinks, &config.sources)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
        let rules =
            crate::rules::RuleEngine::start(broker.clone(), &config.rules, bridges.clone()).await?;
        let checkpointer = tokio::spawn(run_checkpoints(broker.clone(), persistence));
        let (listeners, tls, listener_tasks) = serve_all(&broker, bound);
        let local_addr = listeners
            .first()
            .map(|l| l.2)
            .ok_or_else(|| anyhow::anyhow!("no listener configured"))?;
        let reloader = Arc::new(Reloader::new(
            broker.clone(),
            rules.clone(),
            bridges.clone(),
            tls,
            source,
            (auth, acl),
        ));
        let parts = crate::api::ApiParts {
            broker: broker.clone(),
            rules: rules.clone(),
            reloader: reloader.clone(),
            listeners: listeners.clone(),
            recovery: Some(recovery),
        };
        let api = match api_listener {
            Some(listener) => Some(crate::api::Api::start(parts, listener).await?),
            None => None,
        };
        if let Some(api) = &api {
            reloader.set_api_auth(api.auth());
        }
        Ok(Server {
            broker,
            local_addr,
            listeners,
            reloader,
            listener_tasks,
            checkpointer,
            rules,
            bridges,
            api,
        })
    }

    /// The HTTP API's address, if it is served.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|a| a.local_addr())
    }

    /// The first listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the listener named `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.0 == name).map(|l| l.2)
    }

    /// Every listener's name, kind and address.
    pub fn listeners(&self) -> &[(String, transport::ListenerKind, SocketAddr)] {
        &self.listeners
    }

    /// Re-reads every TLS listener's certificate, key, CA and CRL files. New connections
    /// use the new ones; a listener whose files fail keeps its old ones. Returns how many
    /// failed.
    pub async fn reload_tls(&self) -> usize {
        let mut report = ReloadReport::default();
        self.reloader.reload_tls(&mut report).await;
        report.errors.len()
    }

    /// Re-reads the authenticators' files, the ACL and the API's credentials. One whose file
    /// fails keeps what it had, and the error says why. Returns how many failed.
    pub async fn reload_auth(&self) -> usize {
        let mut report = ReloadReport::default();
        self.reloader.reload_auth_files(&mut report).await;
        report.errors.len()
    }

    /// Hot reload (SIGHUP): the configuration file if the broker started from one, else the
    /// files of the running configuration.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        self.reloader.reload().await
    }

    /// The data bridges (sinks), their feeds and status.
    pub fn bridges(&self) -> &crate::bridges::Bridges {
        &self.bridges
    }

    /// The rule engine (add, change, disable, remove rules at run time).
    pub fn rules(&self) -> &crate::rules::RuleEngine {
        &self.rules
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Stops accepting, tells every connection to close (v5 clients get DISCONNECT 0x8B), waits
    /// up to `grace` for them to go, and writes a final checkpoint. Returns whether persistence
    /// failed during the run.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.rules.stop_all().await;
        self.bridges.stop_all().await;
        self.broker.begin_shutdown();
        self.broker.retained_loaded().await;
        for task in self.listener_tasks {
            let _ = task.await;
        }
        if let Some(api) = self.api {
            api.stop().await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self
            .broker
            .metrics()
            .connections_current
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.checkpointer.await;
        let failed = self.broker.has_failed();
        if let Some(p) = self.broker.persistence().cloned() {
            if !failed {
                let result = tokio::task::spawn_blocking(move || p.checkpoint()).await;
                if let Ok(Err(e)) = result {
                    tracing::warn!(error = %e, "final checkpoint failed; the WAL holds everything");
                }
            }
        }
        tracing::info!("KeelMQ stopped");
        failed
    }
}

/// Recovers the data directory and builds the broker on it, with its hooks; what recovery
/// found and how long restoring took.
async fn open_broker(
    config: Config,
    auth: &Option<Arc<crate::auth::Chains>>,
    acl: &Option<Arc<crate::auth::acl::AclAuthorizer>>,
) -> anyhow::Result<(Broker, Arc<Persistence>, (RecoveryReport, Duration))> {
    let dir = config.data_dir.clone();
    let options = persistence_options(&config);
    let (persistence, report) =
        tokio::task::spawn_blocking(move || Persistence::open(&dir, options)).await??;
    let persistence = Arc::new(persistence);
    let restoring = std::time::Instant::now();
    let broker = Broker::with_persistence(config, persistence.clone());
    if let Some(chain) = auth {
        broker.set_authenticator(chain.clone());
    }
    if let Some(acl) = acl {
        broker.set_authorizer(acl.clone());
    }
    let restored = restoring.elapsed();
    log_recovery(&broker, &persistence, &report, restored);
    Ok((broker, persistence, (report, restored)))
}

/// The authenticator and the ACL the configuration asks for, their files read on a blocking
/// thread.
async fn load_auth(config: &Config) -> anyhow::Result<AuthHooks> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let auth = crate::auth::authenticator(&config)?;
        let acl = crate::auth::acl::AclAuthorizer::from_config(&config.authz)?;
        anyhow::Ok((auth, acl))
    })
    .await?
}

/// The authenticator and the ACL, if configured.
type AuthHooks = (
    Option<Arc<crate::auth::Chains>>,
    Option<Arc<crate::auth::acl::AclAuthorizer>>,
);

/// Writes a checkpoint when one is due, on a blocking thread, until shutdown.
async fn run_checkpoints(broker: Broker, persistence: Arc<Persistence>) {
    let mut shutdown = broker.shutdown_signal();
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if persistence.has_failed() || !persistence.checkpoint_due(last.elapsed()) {
            continue;
        }
        let p = persistence.clone();
        if let Ok(Ok(_)) = tokio::task::spawn_blocking(move || p.checkpoint()).await {
            last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wal_writer_niceness_default_is_the_wal_s() {
        let configured = crate::config::Config::default().storage.wal_writer_nice;
        assert_eq!(configured, keelmq_wal::DEFAULT_WRITER_NICE);
    }
}
