//! Background tasks: session expiry ticks and the `$SYS/broker/...` statistics.

use super::local::LocalPublish;
use super::*;

/// The `$SYS/broker/…` statistics of listeners, rules, sinks and sources: (name, value).
fn sys_parts(m: &metrics::MetricsSnapshot) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for l in &m.listeners {
        let prefix = format!("listeners/{}", l.name);
        out.push((format!("{prefix}/connections"), l.current.to_string()));
        out.push((format!("{prefix}/connections/total"), l.total.to_string()));
    }
    for r in &m.rules {
        for (name, n) in metrics::RuleStats::named(r) {
            out.push((format!("rules/{}/{name}", r.id), n.to_string()));
        }
    }
    for s in &m.sinks {
        for (name, n) in metrics::SinkStats::named(s) {
            out.push((format!("sinks/{}/{name}", s.name), n.to_string()));
        }
        out.push((
            format!("sinks/{}/status", s.name),
            s.status.name().to_string(),
        ));
    }
    for s in &m.sources {
        out.push((
            format!("sources/{}/received", s.name),
            s.matched.to_string(),
        ));
        out.push((
            format!("sources/{}/published", s.name),
            s.success.to_string(),
        ));
        out.push((
            format!("sources/{}/status", s.name),
            s.status.name().to_string(),
        ));
    }
    out
}

impl Broker {
    /// Starts the session-expiry and `$SYS` tasks; they stop at shutdown.
    pub fn spawn_background(&self) {
        let broker = self.clone();
        let mut shutdown = self.shutdown_signal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => broker.expire_sessions().await,
                    _ = shutdown.changed() => break,
                }
            }
        });
        let interval = self.shared.config.sys.interval_secs;
        if interval > 0 {
            let broker = self.clone();
            let mut shutdown = self.shutdown_signal();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(interval));
                loop {
                    tokio::select! {
                        _ = tick.tick() => broker.publish_sys().await,
                        _ = shutdown.changed() => break,
                    }
                }
            });
        }
    }

    /// Publishes the `$SYS/broker/...` statistics as retained QoS 0 messages. `$` topics are not
    /// matched by `#` or `+` at the first level, so only explicit `$SYS` subscribers see them.
    pub async fn publish_sys(&self) {
        let m = self.metrics_snapshot();
        let stats: [(&str, String); 16] = [
            ("version", format!("keelmq {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", format!("{} seconds", m.uptime_secs)),
            ("clients/connected", m.connections_current.to_string()),
            ("clients/total", m.sessions.to_string()),
            ("clients/maximum", m.connections_maximum.to_string()),
            ("connections/total", m.connections_total.to_string()),
            ("messages/received", m.messages_received.to_string()),
            ("messages/sent", m.messages_sent.to_string()),
            ("bytes/received", m.bytes_received.to_string()),
            ("bytes/sent", m.bytes_sent.to_string()),
            ("subscriptions/count", m.subscriptions.to_string()),
            ("retained messages/count", m.retained.to_string()),
            (
                "publish/messages/dropped",
                (m.dropped_qos0 + m.dropped_queue_full).to_string(),
            ),
            ("messages/expired", m.expired.to_string()),
            ("publish/messages/paused", m.qos0_paused.to_string()),
            ("store/messages/bytes", m.queued_bytes.to_string()),
        ];
        let client = self.system_client();
        let stats = stats.into_iter().map(|(n, v)| (n.to_string(), v));
        let all = stats.chain(sys_parts(&m));
        for (name, value) in all {
            let topic = format!("$SYS/broker/{name}");
            let mut message = LocalPublish::new(topic, value.into_bytes(), QoS::AtMostOnce);
            message.retain = true;
            let _ = client.publish(message).await;
        }
    }

    /// Registers a rule's counters for snapshots and `$SYS` (replacing those of the same id).
    pub fn add_rule_stats(&self, stats: Arc<metrics::RuleStats>) {
        let mut rules = self.shared.rules.write();
        rules.retain(|r| r.id != stats.id);
        rules.push(stats);
    }

    /// The counters of rule `id`.
    pub fn rule_stats(&self, id: &str) -> Option<Arc<metrics::RuleStats>> {
        self.shared
            .rules
            .read()
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }

    /// Registers a sink's counters (replacing those of the same name).
    pub fn add_sink_stats(&self, stats: Arc<metrics::SinkStats>) {
        let mut sinks = self.shared.sinks.write();
        sinks.retain(|s| s.name != stats.name);
        sinks.push(stats);
    }

    /// Registers a source's counters.
    pub fn add_source_stats(&self, stats: Arc<metrics::SinkStats>) {
        let mut sources = self.shared.sources.write();
        sources.retain(|s| s.name != stats.name);
        sources.push(stats);
    }

    /// Applies the broker-wide `[limits]` a reload may change (see `live_limits`).
    pub fn apply_limits(&self, limits: &crate::config::LimitsConfig) {
        self.shared.live.apply(limits);
    }

    /// A source's counters.
    pub fn source_stats(&self, name: &str) -> Option<Arc<metrics::SinkStats>> {
        let sources = self.shared.sources.read();
        sources.iter().find(|s| s.name == name).cloned()
    }

    /// Forgets a removed source's counters.
    pub fn remove_source_stats(&self, name: &str) {
        self.shared.sources.write().retain(|s| s.name != name);
    }

    /// Forgets a removed sink's counters.
    pub fn remove_sink_stats(&self, name: &str) {
        self.shared.sinks.write().retain(|s| s.name != name);
    }

    /// Every sink's counts, with the messages waiting in its queues (sessions `$sink/<name>…`).
    fn sink_snapshots(&self) -> Vec<metrics::SinkSnapshot> {
        let sinks: Vec<_> = self.shared.sinks.read().clone();
        sinks
            .iter()
            .map(|s| {
                let mut snap = s.snapshot();
                let prefix = format!(
                    "{}{}/",
                    crate::protocol::admission::SINK_CLIENT_ID_PREFIX,
                    s.name
                );
                snap.queuing = self.queued_messages_with_prefix(&prefix) as u64;
                snap
            })
            .collect()
    }

    /// Forgets a removed rule's counters.
    pub fn remove_rule_stats(&self, id: &str) {
        self.shared.rules.write().retain(|r| r.id != id);
    }

    /// The broker's counters and gauges now (for `$SYS`, the HTTP API, Prometheus).
    pub fn metrics_snapshot(&self) -> metrics::MetricsSnapshot {
        metrics::MetricsSnapshot {
            uptime_secs: self.uptime().as_secs(),
            connections_maximum: self.shared.live.max_connections() as u64,
            sessions: self.session_count() as u64,
            subscriptions: self.subscription_count() as u64,
            retained: self.retained_count() as u64,
            queued_bytes: self.queued_bytes_total() as u64,
            listeners: self
                .shared
                .listeners
                .read()
                .iter()
                .map(|l| l.snapshot())
                .collect(),
            rules: self
                .shared
                .rules
                .read()
                .iter()
                .map(|r| r.snapshot())
                .collect(),
            sinks: self.sink_snapshots(),
            wal_fsync: self
                .persistence()
                .map(|p| p.wal().stats().sync_latency)
                .unwrap_or_default(),
            sources: self
                .shared
                .sources
                .read()
                .iter()
                .map(|s| s.snapshot())
                .collect(),
            ..self.shared.metrics.counters()
        }
    }
}
