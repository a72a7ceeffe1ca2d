//! A minimal MQTT client over KeelMQ's codec, for `keelmq verify` and `keelmq bench`:
//! connect, send packets, receive packets with a timeout. It keeps no session state itself;
//! callers implement the QoS flows they need.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use keelmq_codec::*;

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
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
    out: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    /// Opens the TCP connection only (for callers that send their own CONNECT bytes).
    pub async fn tcp(addr: SocketAddr, version: ProtocolVersion, wait: Duration) -> Option<Client> {
        let stream = tokio::time::timeout(wait, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        let _ = stream.set_nodelay(true);
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
        let mut c = Client::tcp(addr, version, wait).await?;
        let mut connect = c.connect_packet(client_id, clean_start);
        if version.is_v5() {
            connect.properties.session_expiry_interval = Some(session_expiry);
        }
        let ack = c.handshake(connect, wait).await?;
        Some((c, ack))
    }

    /// Gives up the connection to a caller that runs its own read/write loop (`keelmq bench`):
    /// the stream, the decoder, and bytes already read but not yet decoded.
    pub fn into_parts(self) -> (TcpStream, Decoder, BytesMut) {
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
        }
    }

    /// Sends raw bytes (tests of malformed input); a failure shows up on the next receive.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
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
