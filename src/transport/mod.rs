//! Listeners. Each yields one byte stream per client and hands it to
//! [`crate::broker::connection::serve`], which is generic over the stream: TLS and WebSocket
//! listeners will wrap their streams and reuse it unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::broker::{connection, Broker};

/// The kind of listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

/// What a connection's transport knows about it, handed to the connection task (and, from
/// there, to authentication and the event sink): who it is, where it came in, and what the
/// TLS handshake or the WebSocket upgrade established.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The listener's configured name (its kind when unnamed).
    pub listener: Arc<str>,
    pub kind: ListenerKind,
    /// The client's verified certificate chain, leaf first, DER (TLS with client certificates;
    /// empty otherwise).
    pub peer_certificates: Arc<[Vec<u8>]>,
    /// The WebSocket upgrade request's headers (WebSocket only).
    pub ws_headers: Option<Arc<[(String, String)]>>,
}

impl ConnInfo {
    /// A plain TCP connection accepted by listener `listener`.
    pub fn tcp(peer: SocketAddr, local: SocketAddr, listener: Arc<str>) -> ConnInfo {
        ConnInfo {
            peer,
            local,
            listener,
            kind: ListenerKind::Tcp,
            peer_certificates: Arc::from(Vec::new()),
            ws_headers: None,
        }
    }
}

/// Accepts MQTT-over-TCP connections until the broker shuts down.
pub async fn serve_tcp(listener: TcpListener, broker: Broker) {
    let mut shutdown = broker.shutdown_signal();
    let name: Arc<str> = Arc::from("tcp");
    let local = listener.local_addr().ok();
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
                let local = stream.local_addr().ok().or(local).unwrap_or(peer);
                let info = ConnInfo::tcp(peer, local, name.clone());
                let broker = broker.clone();
                tokio::spawn(connection::serve(broker, stream, info, permit));
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
