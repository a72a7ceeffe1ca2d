//! Starting and stopping a whole broker: listeners, background tasks, graceful shutdown. Used
//! by the `keelmq serve` command and by the integration tests, which run real brokers on
//! ephemeral loopback ports.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::Config;
use crate::transport;

/// A running broker.
pub struct Server {
    broker: Broker,
    local_addr: SocketAddr,
    listener: JoinHandle<()>,
}

impl Server {
    /// Validates the configuration, binds the listener and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        config.validate()?;
        let listener = transport::bind_tcp(config.listener.bind).await?;
        let local_addr = listener.local_addr()?;
        let broker = Broker::new(config);
        broker.spawn_background();
        let listener = tokio::spawn(transport::serve_tcp(listener, broker.clone()));
        tracing::info!(%local_addr, "KeelMQ listening (MQTT over TCP)");
        Ok(Server {
            broker,
            local_addr,
            listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Stops accepting, tells every connection to close (v5 clients get DISCONNECT 0x8B) and
    /// waits up to `grace` for them to go.
    pub async fn shutdown(self, grace: Duration) {
        self.broker.begin_shutdown();
        let _ = self.listener.await;
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
        tracing::info!("KeelMQ stopped");
    }
}
