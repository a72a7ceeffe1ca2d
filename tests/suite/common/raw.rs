//! A raw MQTT client for tests that must send exact packets (malformed input, flow-control
//! violations, topic aliases) and see exactly what the broker answers: the library's
//! `keelmq_tools::client::Client` with test conveniences that panic on the unexpected.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use keelmq::codec::*;
pub use keelmq_tools::client::Recv;
use keelmq_tools::client::{Client, TlsClient, Via};

pub struct RawClient {
    inner: Client,
    pub version: ProtocolVersion,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl RawClient {
    pub async fn tcp(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        Self::try_tcp(addr, version).await.expect("connects")
    }

    pub async fn try_tcp(addr: SocketAddr, version: ProtocolVersion) -> Option<RawClient> {
        RawClient::try_open(addr, version, None).await
    }

    /// Opens a connection, over TLS when `tls` is given.
    pub async fn try_open(
        addr: SocketAddr,
        version: ProtocolVersion,
        tls: Option<&TlsClient>,
    ) -> Option<RawClient> {
        let via = Via {
            tls: tls.cloned(),
            ws_path: None,
        };
        let inner = Client::open(addr, version, &via, WAIT).await?;
        Some(RawClient { inner, version })
    }

    /// Connects and completes CONNECT/CONNACK; panics unless the CONNACK is a success.
    pub async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        clean_start: bool,
        tweak: impl FnOnce(&mut Connect),
    ) -> (RawClient, ConnAck) {
        let mut c = RawClient::tcp(addr, version).await;
        let ack = c.handshake(client_id, clean_start, tweak).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS, "CONNACK {ack:?}");
        (c, ack)
    }

    /// Sends CONNECT and returns the CONNACK, whatever its code.
    pub async fn handshake(
        &mut self,
        client_id: &str,
        clean_start: bool,
        tweak: impl FnOnce(&mut Connect),
    ) -> ConnAck {
        self.try_handshake(client_id, clean_start, tweak)
            .await
            .expect("the broker answers CONNACK")
    }

    /// Like [`Self::handshake`], but `None` when the broker answers anything but CONNACK or
    /// goes away (crash tests kill it at any moment).
    pub async fn try_handshake(
        &mut self,
        client_id: &str,
        clean_start: bool,
        tweak: impl FnOnce(&mut Connect),
    ) -> Option<ConnAck> {
        let mut connect = self.inner.connect_packet(client_id, clean_start);
        tweak(&mut connect);
        self.inner.handshake(connect, WAIT).await
    }

    pub async fn send(&mut self, p: &Packet) {
        self.inner.send(p).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.inner.send_bytes(bytes).await;
    }

    /// The next packet within `wait`; a packet the broker sent that does not decode fails
    /// the test.
    pub async fn recv_within(&mut self, wait: Duration) -> Recv {
        match self.inner.recv(wait).await {
            Recv::Invalid(e) => panic!("broker sent an undecodable packet: {e}"),
            other => other,
        }
    }

    pub async fn recv(&mut self) -> Recv {
        self.recv_within(WAIT).await
    }

    /// The next packet, which must arrive.
    pub async fn next(&mut self) -> Packet {
        match self.recv().await {
            Recv::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// The next PUBLISH, acknowledging nothing.
    pub async fn next_publish(&mut self) -> Publish {
        match self.next().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub async fn subscribe(
        &mut self,
        packet_id: u16,
        filter: &str,
        options: SubscriptionOptions,
    ) -> SubAck {
        self.subscribe_with(packet_id, filter, options, None).await
    }

    pub async fn subscribe_with(
        &mut self,
        packet_id: u16,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> SubAck {
        let mut s = Subscribe {
            packet_id,
            properties: Default::default(),
            filters: vec![(filter.to_string(), options)],
        };
        s.properties.subscription_identifier = identifier;
        self.send(&Packet::Subscribe(s)).await;
        match self.next().await {
            Packet::SubAck(a) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &'static [u8],
        qos: QoS,
        packet_id: u16,
        retain: bool,
    ) {
        self.send(&publish_packet(topic, payload, qos, packet_id, retain))
            .await;
    }

    /// Expects that nothing arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        match self.recv_within(wait).await {
            Recv::Timeout => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }

    /// Expects a DISCONNECT with `reason` (v5) and then the socket closing.
    pub async fn expect_disconnect(&mut self, reason: ReasonCode) {
        if self.version.is_v5() {
            match self.recv().await {
                Recv::Packet(Packet::Disconnect(d)) => assert_eq!(d.reason, reason, "{d:?}"),
                other => panic!("expected DISCONNECT {reason}, got {other:?}"),
            }
        }
        assert_eq!(self.recv().await, Recv::Closed);
    }
}

pub fn publish_packet(
    topic: &str,
    payload: &'static [u8],
    qos: QoS,
    packet_id: u16,
    retain: bool,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id,
        properties: Default::default(),
        payload: Bytes::from_static(payload),
    })
}
