//! MQTT sources: a persistent remote session (`client_id`, clean start off, no expiry) whose
//! messages are published into the broker through a session of its own (`$source/<name>`),
//! durably before the remote is acknowledged. QoS 2: the remote packet id is marked in the
//! local message's commit (`LocalSession::publish_qos2`), PUBREC goes after, and PUBCOMP after
//! the release is durable — a remote re-send of the same id after a restart on either side is
//! not published twice: exactly once. QoS 1: PUBACK after the local publish is durable (at
//! least once). QoS 0: at most once.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use keelmq_rules::template::Template;
use keelmq_tools::client::{Client, Recv};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use std::sync::Arc;

use crate::broker::local::{LocalError, LocalPublish, LocalSession};
use crate::broker::metrics::{SinkStats, SinkStatus};
use crate::broker::{Broker, Metrics};
use crate::codec::{
    Connect, Packet, ProtocolVersion, PubAck, Publish, QoS, Subscribe, SubscriptionOptions,
};
use crate::config::SourceSpec;
use crate::protocol::admission::SOURCE_CLIENT_ID_PREFIX;
use crate::rules::consumer::pause;

/// Runs a source until `stop` says so or the broker shuts down.
pub async fn run(
    broker: Broker,
    spec: SourceSpec,
    stats: Arc<SinkStats>,
    mut stop: watch::Receiver<bool>,
) {
    let local_topic = match Template::parse(&spec.local_topic) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(source = %spec.name, error = %e, "source not started");
            return;
        }
    };
    let password = spec.password().ok().flatten();
    let client = broker.local_client(format!("{SOURCE_CLIENT_ID_PREFIX}{}", spec.name));
    let mut wait = Duration::from_millis(spec.retry.initial_ms);
    while !*stop.borrow() {
        let session = match client.consumer_session().await {
            Ok((s, _)) => s,
            Err(LocalError::ShuttingDown) => return,
            Err(e) => {
                tracing::warn!(source = %spec.name, error = %e, "source session not attached");
                if pause(&mut stop, wait).await {
                    return;
                }
                continue;
            }
        };
        let source = Source {
            spec: &spec,
            local_topic: &local_topic,
            password: password.clone(),
            stats: &stats,
        };
        match source.connect().await {
            Ok(mut conn) => {
                stats.set_status(SinkStatus::Connected, "");
                wait = Duration::from_millis(spec.retry.initial_ms);
                let ended = source.forward(&session, &mut conn, &mut stop).await;
                session.close().await;
                stats.set_status(
                    SinkStatus::Disconnected,
                    "the remote broker closed the connection",
                );
                match ended {
                    Ok(true) => {}
                    Ok(false) | Err(LocalError::ShuttingDown) => return,
                    Err(e) => tracing::warn!(source = %spec.name, error = %e, "source stopped"),
                }
            }
            Err(e) => {
                session.close().await;
                if stats.disconnected(1, &e) {
                    tracing::warn!(source = %spec.name, error = %e, "source cannot reach its remote");
                }
            }
        }
        if pause(&mut stop, wait).await {
            return;
        }
        wait = (wait * 2).min(Duration::from_millis(spec.retry.max_ms));
    }
}

struct Source<'a> {
    spec: &'a SourceSpec,
    local_topic: &'a Template,
    password: Option<String>,
    stats: &'a SinkStats,
}

impl Source<'_> {
    /// Connects to the remote broker (persistent session) and subscribes to the topics.
    async fn connect(&self) -> Result<Client, String> {
        let spec = self.spec;
        let timeout = Duration::from_millis(spec.request_timeout_ms);
        let addr: SocketAddr = tokio::net::lookup_host(&spec.server)
            .await
            .map_err(|e| format!("{}: {e}", spec.server))?
            .next()
            .ok_or_else(|| format!("{}: no address", spec.server))?;
        let version = match spec.protocol_version.as_deref() {
            Some("3.1.1") => ProtocolVersion::V3_1_1,
            _ => ProtocolVersion::V5,
        };
        let mut client = Client::tcp(addr, version, timeout)
            .await
            .ok_or_else(|| format!("{}: cannot connect", spec.server))?;
        let mut connect: Connect = client.connect_packet(&spec.client_id, false);
        connect.keep_alive = spec.keepalive_secs;
        connect.username = spec.username.clone();
        connect.password = self.password.clone().map(Bytes::from);
        if version.is_v5() {
            connect.properties.session_expiry_interval = Some(u32::MAX);
        }
        let ack = client
            .handshake(connect, timeout)
            .await
            .ok_or_else(|| format!("{}: no CONNACK", spec.server))?;
        if ack.code.0 != 0 {
            return Err(format!(
                "{}: CONNACK refused ({:#04x})",
                spec.server, ack.code.0
            ));
        }
        let filters = spec
            .topics
            .iter()
            .map(|t| {
                let qos = QoS::from_u8(t.qos).unwrap_or(QoS::AtLeastOnce);
                (t.filter.clone(), SubscriptionOptions::qos(qos))
            })
            .collect();
        let subscribe = Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters,
        };
        client.send(&Packet::Subscribe(subscribe)).await;
        Ok(client)
    }

    /// Forwards the remote's messages; `Ok(true)` when the connection is lost (connect again),
    /// `Ok(false)` when stopped.
    async fn forward(
        &self,
        session: &LocalSession,
        conn: &mut Client,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, LocalError> {
        let keepalive = Duration::from_secs(u64::from(self.spec.keepalive_secs.max(2)) / 2);
        let mut quiet = false;
        loop {
            let received = tokio::select! {
                r = conn.recv(keepalive) => r,
                _ = stop.changed() => return Ok(false),
            };
            match received {
                Recv::Packet(p) => {
                    quiet = false;
                    self.answer(session, conn, p).await?;
                }
                Recv::Timeout if !quiet => {
                    quiet = true;
                    conn.send(&Packet::PingReq).await;
                }
                Recv::Timeout | Recv::Closed | Recv::Invalid(_) => return Ok(true),
            }
        }
    }

    /// Publishes a remote PUBLISH locally and acknowledges it, or finishes a QoS 2 exchange.
    async fn answer(
        &self,
        session: &LocalSession,
        conn: &mut Client,
        packet: Packet,
    ) -> Result<(), LocalError> {
        match packet {
            Packet::Publish(p) => {
                let (qos, packet_id) = (p.qos, p.packet_id);
                let local = self.local(p);
                let topic = local.topic.clone();
                Metrics::add(&self.stats.matched, 1);
                let published = match qos {
                    QoS::AtMostOnce | QoS::AtLeastOnce => session.publish(local).await.map(|_| ()),
                    // A re-send of an id awaiting release is acknowledged, not published.
                    QoS::ExactlyOnce => session.publish_qos2(local, packet_id).await.map(|_| ()),
                };
                match published {
                    Ok(()) => Metrics::add(&self.stats.success, 1),
                    // It never will be: acknowledged (the remote would send it forever).
                    Err(LocalError::InvalidTopic) => {
                        Metrics::add(&self.stats.dropped, 1);
                        tracing::warn!(source = %self.spec.name, %topic,
                            "the local topic is not a topic name; message dropped")
                    }
                    Err(e) => return Err(e),
                }
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => conn.send(&Packet::PubAck(PubAck::new(packet_id))).await,
                    QoS::ExactlyOnce => conn.send(&Packet::PubRec(PubAck::new(packet_id))).await,
                }
            }
            Packet::PubRel(r) => {
                session.release_inbound(r.packet_id).await?;
                conn.send(&Packet::PubComp(PubAck::new(r.packet_id))).await;
            }
            _ => {}
        }
        Ok(())
    }

    /// The local message for a remote one: the topic from `local_topic`, the payload byte for
    /// byte, the same QoS and RETAIN.
    fn local(&self, p: Publish) -> LocalPublish {
        let mut fields = Map::new();
        fields.insert("topic".into(), json!(&*p.topic));
        fields.insert("qos".into(), json!(p.qos as u8));
        fields.insert("retain".into(), json!(p.retain));
        fields.insert(
            "payload".into(),
            Value::String(String::from_utf8_lossy(&p.payload).into_owned()),
        );
        let topic = self.local_topic.render(&fields);
        let mut local = LocalPublish::new(topic, p.payload, p.qos);
        local.retain = p.retain;
        local
    }
}
