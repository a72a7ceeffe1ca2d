//! Listeners. Each yields one byte stream per client and hands it to
//! [`crate::broker::connection::serve`], which is generic over the stream: TLS and WebSocket
//! listeners will wrap their streams and reuse it unchanged.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::broker::{connection, Broker};

/// Accepts MQTT-over-TCP connections until the broker shuts down.
pub async fn serve_tcp(listener: TcpListener, broker: Broker) {
    let mut shutdown = broker.shutdown_signal();
    // Back-off after an accept error (e.g. EMFILE), doubling to at most one second, so that a
    // file-descriptor shortage does not spin the loop.
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                // A socket that has not sent its CONNECT yet holds a permit: a flood of
                // sockets that never speak is closed at once beyond the limit, before it
                // costs a task (or, later, a TLS handshake).
                let Some(permit) = broker.connecting_permit() else {
                    tracing::debug!(%peer, "too many connections waiting for CONNECT; closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let broker = broker.clone();
                tokio::spawn(connection::serve(broker, stream, peer, permit));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Binds a TCP listener, naming the address on failure.
pub async fn bind_tcp(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
