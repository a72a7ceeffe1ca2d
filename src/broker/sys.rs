//! Background tasks: session expiry ticks and the `$SYS/broker/...` statistics.

use super::*;

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
        let m = &self.shared.metrics;
        let stats: [(&str, String); 16] = [
            ("version", format!("keelmq {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", format!("{} seconds", self.uptime().as_secs())),
            (
                "clients/connected",
                Metrics::get(&m.connections_current).to_string(),
            ),
            ("clients/total", self.session_count().to_string()),
            (
                "clients/maximum",
                self.shared.config.limits.max_connections.to_string(),
            ),
            (
                "connections/total",
                Metrics::get(&m.connections_total).to_string(),
            ),
            (
                "messages/received",
                Metrics::get(&m.messages_received).to_string(),
            ),
            ("messages/sent", Metrics::get(&m.messages_sent).to_string()),
            (
                "bytes/received",
                Metrics::get(&m.bytes_received).to_string(),
            ),
            ("bytes/sent", Metrics::get(&m.bytes_sent).to_string()),
            ("subscriptions/count", self.subscription_count().to_string()),
            ("retained messages/count", self.retained_count().to_string()),
            (
                "publish/messages/dropped",
                (Metrics::get(&m.dropped_qos0) + Metrics::get(&m.dropped_queue_full)).to_string(),
            ),
            ("messages/expired", Metrics::get(&m.expired).to_string()),
            (
                "publish/messages/paused",
                Metrics::get(&m.qos0_paused).to_string(),
            ),
            (
                "store/messages/bytes",
                self.queued_bytes_total().to_string(),
            ),
        ];
        for (name, value) in stats {
            let message = Message {
                id: 0, // `$` topics are never persisted
                topic: format!("$SYS/broker/{name}").into(),
                payload: value.into_bytes().into(),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Message::properties_of(PublishProperties::default()),
                expires_at: None,
                publisher: None,
            };
            let _ = self.publish(Arc::new(message), None, false).await;
        }
    }
}
