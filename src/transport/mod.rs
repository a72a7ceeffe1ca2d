//! Listeners: TCP, TLS, WebSocket and secure WebSocket (`[[listeners]]`). Each accepted socket
//! becomes a byte stream — plain, TLS ([`tls`]), WebSocket ([`ws`]) or both — with its
//! [`ConnInfo`], handed to [`crate::broker::connection::serve`], which is generic over the
//! stream.
//!
//! # Admission and bounds
//! A new socket is refused at once, before any TLS or WebSocket work, when its listener holds
//! `max_connections` or when `limits.max_pending_connections` sockets have not sent CONNECT
//! yet. The PROXY header, the TLS handshake and the WebSocket upgrade together get
//! `handshake_timeout_ms`; each runs in the connection's own task, so a slow or hostile
//! handshake delays nobody else's. Memory per handshake is bounded by rustls' and
//! tungstenite's buffers (the WebSocket read buffer is 4 KiB; a message at most one maximum
//! packet).

pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::broker::metrics::ListenerStats;
use crate::broker::{connection, Broker};
use crate::codec::proxy;
use crate::config::{Config, ConfigError, ListenerSpec};

pub use crate::config::ListenerKind;

/// What a connection's transport knows about it, handed to the connection task (and, from
/// there, to authentication and the event sink): who it is, where it came in, and what the
/// TLS handshake or the WebSocket upgrade established.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address (from the PROXY header or `X-Forwarded-For` where configured).
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
    /// The username the verified certificate gives (`peer_cert_as_username`); it replaces the
    /// CONNECT's.
    pub username_from_cert: Option<String>,
    /// The client identifier the verified certificate gives (`peer_cert_as_clientid`); it
    /// replaces the CONNECT's.
    pub client_id_from_cert: Option<String>,
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
            username_from_cert: None,
            client_id_from_cert: None,
        }
    }
}

/// A bound listener, ready to serve.
pub struct Listener {
    socket: TcpListener,
    shared: Arc<Shared>,
}

/// What every connection of a listener needs.
struct Shared {
    spec: ListenerSpec,
    name: Arc<str>,
    local_addr: SocketAddr,
    tls: Option<Arc<tls::Reloadable>>,
    stats: Arc<ListenerStats>,
}

/// Reads every TLS listener's files (certificate, key, CA, CRL): what `keelmq check-config`
/// and the start check beyond the configuration's own validation. Blocking file I/O.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    for (i, spec) in config.effective_listeners().iter().enumerate() {
        if spec.kind.is_tls() {
            tls::server_config(spec, i)?;
        }
    }
    Ok(())
}

/// Binds every listener of `config` (loading TLS files), naming the listener on failure, and
/// registers each with the broker's metrics.
pub async fn bind_all(config: &Config, broker: &Broker) -> anyhow::Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    for (i, spec) in config.effective_listeners().into_iter().enumerate() {
        let tls = match spec.kind.is_tls() {
            true => {
                let s = spec.clone();
                let loaded = tokio::task::spawn_blocking(move || tls::Reloadable::new(&s, i));
                Some(Arc::new(loaded.await??))
            }
            false => None,
        };
        let bind = spec.bind();
        let socket = TcpListener::bind(bind).await.map_err(|e| {
            anyhow::anyhow!(
                "listener {} (listeners[{i}]): cannot listen on {bind}: {e}",
                spec.name()
            )
        })?;
        let local_addr = socket.local_addr()?;
        let name: Arc<str> = Arc::from(spec.name());
        let stats = broker.add_listener(name.clone(), spec.kind.name(), local_addr);
        let shared = Arc::new(Shared {
            spec,
            name,
            local_addr,
            tls,
            stats,
        });
        listeners.push(Listener { socket, shared });
    }
    Ok(listeners)
}

impl Listener {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn kind(&self) -> ListenerKind {
        self.shared.spec.kind
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The listener's reloadable TLS configuration (TLS and WSS listeners).
    pub fn tls(&self) -> Option<Arc<tls::Reloadable>> {
        self.shared.tls.clone()
    }

    /// Accepts connections until the broker shuts down.
    pub async fn serve(self, broker: Broker) {
        let mut shutdown = broker.shutdown_signal();
        // Back-off after an accept error (e.g. EMFILE), doubling to at most one second, so
        // that a file-descriptor shortage does not spin the loop.
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                r = self.socket.accept() => r,
                _ = shutdown.changed() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    self.admit(&broker, stream, peer);
                }
                Err(e) => {
                    tracing::warn!(listener = %self.shared.name, error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Admits or closes a new socket (see the module documentation), and spawns its task.
    fn admit(&self, broker: &Broker, stream: TcpStream, peer: SocketAddr) {
        let shared = &self.shared;
        let stats = &shared.stats;
        if stats.current.load(Ordering::Relaxed) >= shared.spec.max_connections as u64 {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            broker.count_refused();
            tracing::debug!(%peer, listener = %shared.name, "listener full; closed");
            return;
        }
        // A socket that has not sent its CONNECT yet holds a permit: a flood of sockets that
        // never speak is closed at once beyond the limit, before it costs a task or a
        // handshake.
        let Some(permit) = broker.connecting_permit() else {
            tracing::debug!(%peer, "too many connections waiting for CONNECT; closed");
            return;
        };
        let _ = stream.set_nodelay(true);
        let guard = ListenerGuard::new(stats.clone());
        let broker = broker.clone();
        if shared.spec.kind == ListenerKind::Tcp && !shared.spec.proxy_protocol {
            // Nothing to do before MQTT: the task is the connection's alone (an idle
            // connection's memory is this task).
            let local = stream.local_addr().unwrap_or(shared.local_addr);
            let info = ConnInfo::tcp(peer, local, shared.name.clone());
            tokio::spawn(connection::serve(broker, stream, info, permit, guard));
            return;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            establish(broker, shared, stream, peer, permit).await;
            drop(guard);
        });
    }
}

/// Counts a connection in its listener's gauge while it lives.
struct ListenerGuard(Arc<ListenerStats>);

impl ListenerGuard {
    fn new(stats: Arc<ListenerStats>) -> ListenerGuard {
        stats.current.fetch_add(1, Ordering::Relaxed);
        stats.total.fetch_add(1, Ordering::Relaxed);
        ListenerGuard(stats)
    }
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::Relaxed);
    }
}

/// PROXY header, TLS handshake and WebSocket upgrade as the listener asks, within its
/// handshake timeout; then the MQTT connection. Only the plain TCP path runs inline: the TLS
/// and WebSocket paths are boxed, so that an idle TCP connection's task is not sized for a TLS
/// session.
async fn establish(
    broker: Broker,
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let spec = &shared.spec;
    let deadline = Instant::now() + Duration::from_millis(spec.handshake_timeout_ms);
    let local = stream.local_addr().unwrap_or(shared.local_addr);
    let mut info = ConnInfo::tcp(peer, local, shared.name.clone());
    info.kind = spec.kind;
    if spec.proxy_protocol {
        match Box::pin(tokio::time::timeout_at(
            deadline,
            read_proxy_header(&mut stream),
        ))
        .await
        {
            Ok(Ok(Some(addrs))) => info.peer = addrs.source,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "PROXY header refused"),
            Err(_) => return tracing::debug!(%peer, "no PROXY header in time"),
        }
    }
    let handshake = Handshake {
        broker,
        shared: shared.clone(),
        info,
        permit,
        deadline,
    };
    match spec.kind {
        ListenerKind::Tcp => {
            let Handshake {
                broker,
                info,
                permit,
                ..
            } = handshake;
            connection::serve(broker, stream, info, permit, ()).await
        }
        ListenerKind::Ws => Box::pin(handshake.websocket(stream)).await,
        ListenerKind::Tls | ListenerKind::Wss => Box::pin(handshake.tls(stream)).await,
    }
}

/// A connection between accept and MQTT: what the TLS and WebSocket steps need.
struct Handshake {
    broker: Broker,
    shared: Arc<Shared>,
    info: ConnInfo,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
}

impl Handshake {
    /// The TLS handshake, then MQTT (`tls`) or the WebSocket upgrade (`wss`).
    async fn tls(mut self, stream: TcpStream) {
        let Some(tls) = &self.shared.tls else {
            let listener = &self.shared.name;
            return tracing::error!(%listener, "TLS listener without TLS configuration");
        };
        let peer = self.info.peer;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let stream = match tokio::time::timeout_at(self.deadline, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
        };
        certificate_identity(stream.get_ref().1, &self.shared.spec, &mut self.info);
        match self.shared.spec.kind {
            ListenerKind::Wss => self.websocket(stream).await,
            _ => connection::serve(self.broker, stream, self.info, self.permit, ()).await,
        }
    }

    /// The WebSocket upgrade, then MQTT over it.
    async fn websocket<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let spec = &self.shared.spec;
        let max_packet = self.broker.config().mqtt.max_packet_size as usize;
        let upgrade = ws::accept(stream, &spec.path, max_packet);
        let upgraded = tokio::time::timeout_at(self.deadline, upgrade).await;
        if let Some(ws) = finish_upgrade(upgraded, spec, &mut self.info) {
            let stream = ws::WsStream::new(ws);
            connection::serve(self.broker, stream, self.info, self.permit, ()).await;
        }
    }
}

/// The upgraded WebSocket, its request headers recorded (and the client's address taken from
/// `X-Forwarded-For` where configured); `None` if the upgrade failed or timed out.
fn finish_upgrade<S>(
    upgraded: Result<Result<(S, ws::Upgrade), String>, tokio::time::error::Elapsed>,
    spec: &ListenerSpec,
    info: &mut ConnInfo,
) -> Option<S> {
    let peer = info.peer;
    let (stream, upgrade) = match upgraded {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket upgrade failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket upgrade timed out");
            return None;
        }
    };
    if spec.x_forwarded_for {
        if let Some(ip) = ws::forwarded_for(&upgrade.headers) {
            info.peer = SocketAddr::new(ip, info.peer.port());
        }
    }
    info.ws_headers = Some(Arc::from(upgrade.headers));
    Some(stream)
}

/// Records the verified client certificate chain and the names it gives.
fn certificate_identity(conn: &rustls::ServerConnection, spec: &ListenerSpec, info: &mut ConnInfo) {
    let Some(chain) = conn.peer_certificates() else {
        return;
    };
    let chain: Vec<Vec<u8>> = chain.iter().map(|c| c.as_ref().to_vec()).collect();
    if let Some(leaf) = chain.first() {
        info.username_from_cert = tls::name_from_cert(leaf, spec.peer_cert_as_username);
        info.client_id_from_cert = tls::name_from_cert(leaf, spec.peer_cert_as_clientid);
    }
    info.peer_certificates = Arc::from(chain);
}

/// Reads a PROXY v1 or v2 header, exactly its bytes (the client's bytes after it stay in the
/// socket).
async fn read_proxy_header<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> anyhow::Result<Option<proxy::ProxiedAddrs>> {
    let mut head = [0u8; 16];
    stream.read_exact(&mut head[..6]).await?;
    match proxy::version(&head[..6])? {
        proxy::Version::V1 => {
            let mut line = head[..6].to_vec();
            while !line.ends_with(b"\r\n") {
                if line.len() >= proxy::V1_MAX_LEN {
                    anyhow::bail!("PROXY v1 line longer than {} bytes", proxy::V1_MAX_LEN);
                }
                line.push(stream.read_u8().await?);
            }
            Ok(proxy::parse_v1(&line)?)
        }
        proxy::Version::V2 => {
            stream.read_exact(&mut head[6..]).await?;
            let mut body = vec![0u8; proxy::v2_body_len(&head)?];
            stream.read_exact(&mut body).await?;
            Ok(proxy::parse_v2(&head, &body)?)
        }
    }
}
