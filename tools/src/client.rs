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

/// A connection to the broker: TCP, or TLS over TCP.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether written bytes may wait in the stream until it is flushed (TLS records).
    pub fn buffers_writes(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
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
        Client::open(addr, version, None, wait).await
    }

    /// Opens the connection, over TLS when `tls` is given (handshake included in `wait`).
    pub async fn open(
        addr: SocketAddr,
        version: ProtocolVersion,
        tls: Option<&TlsClient>,
        wait: Duration,
    ) -> Option<Client> {
        let deadline = tokio::time::Instant::now() + wait;
        let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        let _ = tcp.set_nodelay(true);
        let stream = match tls {
            None => Stream::Tcp(tcp),
            Some(t) => {
                let connector = tokio_rustls::TlsConnector::from(t.config.clone());
                let handshake = connector.connect(t.server_name.clone(), tcp);
                let tls = tokio::time::timeout_at(deadline, handshake)
                    .await
                    .ok()?
                    .ok()?;
                Stream::Tls(Box::new(tls))
            }
        };
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
            None,
            version,
            client_id,
            clean_start,
            session_expiry,
            wait,
        )
        .await
    }

    /// [`Self::connect`] over TLS when `tls` is given.
    pub async fn connect_over(
        addr: SocketAddr,
        tls: Option<&TlsClient>,
        version: ProtocolVersion,
        client_id: &str,
        clean_start: bool,
        session_expiry: u32,
        wait: Duration,
    ) -> Option<(Client, ConnAck)> {
        let mut c = Client::open(addr, version, tls, wait).await?;
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
