//! A minimal MQTT client over KeelMQ's codec, for the `verify` tool (and load generation):
//! connect, send packets, receive packets with a timeout. It keeps no session state itself;
//! callers implement the QoS flows they need.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::*;

/// What a receive saw.
#[derive(Debug)]
pub enum Recv {
    Packet(Packet),
    Closed,
    Timeout,
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
    /// Connects and completes CONNECT/CONNACK within `wait`; `None` if the broker cannot be
    /// reached, goes away, or answers anything but a CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        clean_start: bool,
        session_expiry: u32,
        wait: Duration,
    ) -> Option<(Client, ConnAck)> {
        let stream = tokio::time::timeout(wait, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        let _ = stream.set_nodelay(true);
        let mut c = Client {
            stream,
            decoder: Decoder::with_version(version, MAX_PACKET_SIZE_PROTOCOL),
            buf: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(4096),
            version,
        };
        let mut connect = Connect {
            protocol: version,
            clean_start,
            keep_alive: 60,
            properties: Default::default(),
            client_id: client_id.to_string(),
            will: None,
            username: None,
            password: None,
        };
        if version.is_v5() {
            connect.properties.session_expiry_interval = Some(session_expiry);
        }
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.recv(wait).await {
            Recv::Packet(Packet::ConnAck(ack)) => Some((c, ack)),
            _ => None,
        }
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

    /// The next packet, or `Closed` (also for undecodable input) or `Timeout`.
    pub async fn recv(&mut self, wait: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(p)) => return Recv::Packet(p),
                Ok(None) => {}
                Err(_) => return Recv::Closed,
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Recv::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }
}
