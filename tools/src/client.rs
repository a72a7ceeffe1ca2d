//! A minimal MQTT client over KeelMQ's codec, for `keelmq verify` and `keelmq bench`:
//! connect (over TCP, or TLS with [`TlsClient`]), send packets, receive packets with a
//! timeout. It keeps no session state itself; callers implement the QoS flows they need.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use keelmq_codec::*;

use crate::ws::WsStream;

/// How a client reaches the broker over TLS: the CAs it trusts, the name it expects in the
/// broker's certificate, and optionally its own certificate.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({:?})", self.server_name)
    }
}

impl TlsClient {
    /// Trusts the CAs in `ca_file` (PEM) and expects `server_name` (a DNS name or an IP
    /// address); presents `identity` (certificate chain and key files, PEM) when given.
    pub fn new(
        ca_file: &Path,
        server_name: &str,
        identity: Option<(&Path, &Path)>,
    ) -> anyhow::Result<TlsClient> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?;
                builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(TlsClient {
            config: Arc::new(config),
            server_name: ServerName::try_from(server_name.to_string())?,
        })
    }
}

/// How a client reaches the broker: plain TCP, TLS, WebSocket (upgrading on `ws_path` with
/// subprotocol `mqtt`), or WebSocket over TLS.
#[derive(Clone, Debug, Default)]
pub struct Via {
    pub tls: Option<TlsClient>,
    pub ws_path: Option<String>,
}

type TlsTcp = tokio_rustls::client::TlsStream<TcpStream>;

/// A connection to the broker.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsTcp>),
    Ws(Box<WsStream<TcpStream>>),
    Wss(Box<WsStream<TlsTcp>>),
}

impl Stream {
    /// Whether written bytes may wait in the stream until it is flushed (TLS records,
    /// WebSocket frames).
    pub fn buffers_writes(&self) -> bool {
        !matches!(self, Stream::Tcp(_))
    }
}

/// Runs `$call` with `$s`, the pinned inner stream of any variant.
macro_rules! delegate {
    ($self:expr, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $call
            }
            Stream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $call
            }
            Stream::Ws($s) => {
                let $s = Pin::new($s.as_mut());
                $call
            }
            Stream::Wss($s) => {
                let $s = Pin::new($s.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Connects `via` TLS and/or WebSocket.
async fn open_stream(addr: SocketAddr, via: &Via) -> Option<Stream> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let scheme = if via.tls.is_some() { "wss" } else { "ws" };
    let url = via
        .ws_path
        .as_ref()
        .map(|p| format!("{scheme}://{addr}{p}"));
    let Some(t) = &via.tls else {
        return match url {
            None => Some(Stream::Tcp(tcp)),
            Some(url) => Some(Stream::Ws(Box::new(upgrade(tcp, &url).await?))),
        };
    };
    let connector = tokio_rustls::TlsConnector::from(t.config.clone());
    let tls = connector.connect(t.server_name.clone(), tcp).await.ok()?;
    match url {
        None => Some(Stream::Tls(Box::new(tls))),
        Some(url) => Some(Stream::Wss(Box::new(upgrade(tls, &url).await?))),
    }
}

/// The WebSocket upgrade with subprotocol `mqtt`.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(stream: S, url: &str) -> Option<WsStream<S>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut request = url.into_client_request().ok()?;
    let protocol = HeaderValue::from_static("mqtt");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol);
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .ok()?;
    Some(WsStream::new(ws))
}

/// What a receive saw.
#[derive(Debug, PartialEq)]
pub enum Recv {
    Packet(Packet),
    Closed,
    Timeout,
    /// The broker sent bytes that are not a valid packet (the connection is unusable).
    Invalid(DecodeError),
}

/// One client connection.
pub struct Client {
    stream: Stream,
    decoder: Decoder,
    buf: BytesMut,
    out: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    /// Opens the TCP connection only (for callers that send their own CONNECT bytes).
    pub async fn tcp(addr: SocketAddr, version: ProtocolVersion, wait: Duration) -> Option<Client> {
        Client::open(addr, version, &Via::default(), wait).await
    }

    /// Opens the connection `via` TLS and/or WebSocket (handshakes included in `wait`).
    pub async fn open(
        addr: SocketAddr,
        version: ProtocolVersion,
        via: &Via,
        wait: Duration,
    ) -> Option<Client> {
        let opened = tokio::time::timeout(wait, open_stream(addr, via)).await;
        let stream = opened.ok()??;
        Some(Client {
            stream,
            decoder: Decoder::with_version(version, MAX_PACKET_SIZE_PROTOCOL),
            buf: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(4096),
            version,
        })
    }

    /// Sends `connect` and returns the CONNACK, whatever its code; `None` if the broker goes
    /// away or answers anything else within `wait`.
    pub async fn handshake(&mut self, connect: Connect, wait: Duration) -> Option<ConnAck> {
        self.send(&Packet::Connect(Box::new(connect))).await;
        match self.recv(wait).await {
            Recv::Packet(Packet::ConnAck(ack)) => Some(ack),
            _ => None,
        }
    }

    /// A CONNECT in this client's version with keep-alive 60 and nothing else set.
    pub fn connect_packet(&self, client_id: &str, clean_start: bool) -> Connect {
        Connect {
            protocol: self.version,
            clean_start,
            keep_alive: 60,
            properties: Default::default(),
            client_id: client_id.to_string(),
            will: None,
            username: None,
            password: None,
        }
    }

    /// Connects and completes CONNECT/CONNACK within `wait`; `None` if the broker cannot be
    /// reached, goes away, or answers anything but a CONNACK. `session_expiry` is sent in 5.0.
    pub async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        clean_start: bool,
        session_expiry: u32,
        wait: Duration,
    ) -> Option<(Client, ConnAck)> {
        Client::connect_over(
            addr,
            &Via::default(),
            version,
            client_id,
            clean_start,
            session_expiry,
            wait,
        )
        .await
    }

    /// [`Self::connect`] `via` TLS and/or WebSocket.
    pub async fn connect_over(
        addr: SocketAddr,
        via: &Via,
        version: ProtocolVersion,
        client_id: &str,
        clean_start: bool,
        session_expiry: u32,
        wait: Duration,
    ) -> Option<(Client, ConnAck)> {
        let mut c = Client::open(addr, version, via, wait).await?;
        let mut connect = c.connect_packet(client_id, clean_start);
        if version.is_v5() {
            connect.properties.session_expiry_interval = Some(session_expiry);
        }
        let ack = c.handshake(connect, wait).await?;
        Some((c, ack))
    }

    /// Gives up the connection to a caller that runs its own read/write loop (`keelmq bench`):
    /// the stream, the decoder, and bytes already read but not yet decoded.
    pub fn into_parts(self) -> (Stream, Decoder, BytesMut) {
        (self.stream, self.decoder, self.buf)
    }

    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Sends a packet; a failure shows up as `Closed` on the next receive.
    pub async fn send(&mut self, p: &Packet) {
        self.out.clear();
        if encode(p, self.version, &mut self.out).is_ok() {
            let _ = self.stream.write_all(&self.out).await;
            let _ = self.stream.flush().await;
        }
    }

    /// Sends raw bytes (tests of malformed input); a failure shows up on the next receive.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet, or `Closed`, `Timeout`, or `Invalid` for undecodable input.
    pub async fn recv(&mut self, wait: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(p)) => return Recv::Packet(p),
                Ok(None) => {}
                Err(e) => return Recv::Invalid(e),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Recv::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }
}
