//! The MQTT sink: forwards to a remote broker over a persistent remote session
//! (`client_id`, clean start off, no session expiry), with the broker's own MQTT codec.
//!
//! Each remote exchange is the feed session's delivery under the same packet id: the remote
//! PUBLISH goes out under the delivery's packet id, a remote PUBREC is made durable as the
//! delivery's own PUBREC before PUBREL goes out, and the remote PUBCOMP completes the
//! delivery. So the exchange's state is in the write-ahead log with the delivery, and a
//! restart resumes it: a delivery not yet PUBRECed is sent again with DUP under its packet id
//! (the remote session recognises it), one PUBRECed is released (PUBREL) and never sent
//! again. QoS 2 end to end: exactly once; QoS 1: at least once (re-sent with DUP); QoS 0 (a
//! message's own or `qos = 0`): at most once. A message goes at the lower of its QoS and the
//! sink's `qos`, as to a subscriber. The number in flight follows the remote's Receive
//! Maximum. A rule feeding an MQTT sink gives one output per message (`SELECT`); `FOREACH`
//! rules are refused for it. Each feed has its remote session: the sink's topics
//! `client_id`, a rule's `<client_id>-<rule id>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keelmq_rules::eval::Env;
use keelmq_rules::template::Template;
use keelmq_tools::client::{Client, Recv};
use tokio::sync::{oneshot, watch};

use super::feed::{self, Feed};
use super::target::{Item, Outcome, Target, WriteFuture};
use crate::broker::local::{
    mqtt_packet_id, LocalDelivery, LocalError, LocalSession, Taken, CONSUMER_WINDOW,
};
use crate::broker::metrics::SinkStatus;
use crate::broker::{Broker, Metrics};
use crate::codec::{Connect, Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode};
use crate::config::SinkSpec;
use crate::rules::consumer::pause;
use crate::rules::fields;

/// How the sink forwards, compiled from its configuration.
pub struct Remote {
    server: String,
    client_id: String,
    version: ProtocolVersion,
    username: Option<String>,
    password: Option<String>,
    keepalive: u16,
    pub qos: QoS,
    topic: Template,
    retain: Template,
    /// `None`: the message's payload as it is.
    payload: Option<Template>,
    timeout: Duration,
}

fn template(field: &str, text: &str) -> Result<Template, String> {
    Template::parse(text).map_err(|e| format!("{field}: {e}"))
}

impl Remote {
    pub fn open(spec: &SinkSpec, password: Option<String>) -> Result<Remote, String> {
        let version = match spec.protocol_version.as_deref() {
            Some("3.1.1") => ProtocolVersion::V3_1_1,
            _ => ProtocolVersion::V5,
        };
        Ok(Remote {
            server: spec.server.clone().unwrap_or_default(),
            client_id: spec.client_id.clone().unwrap_or_default(),
            version,
            username: spec.username.clone(),
            password,
            keepalive: spec.keepalive_secs.unwrap_or(60),
            qos: QoS::from_u8(spec.qos.unwrap_or(1)).unwrap_or(QoS::AtLeastOnce),
            topic: template(
                "remote_topic",
                spec.remote_topic.as_deref().unwrap_or("${topic}"),
            )?,
            retain: template(
                "retain",
                spec.retain.as_deref().unwrap_or("${flags.retain}"),
            )?,
            payload: spec
                .payload
                .as_deref()
                .map(|p| template("payload", p))
                .transpose()?,
            timeout: Duration::from_millis(spec.request_timeout_ms),
        })
    }

    /// Connects to the remote broker: a session of `client_id` (persistent unless `clean`).
    async fn connect(&self, client_id: &str, clean: bool) -> Result<(Client, u16), String> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.server)
            .await
            .map_err(|e| format!("{}: {e}", self.server))?
            .next()
            .ok_or_else(|| format!("{}: no address", self.server))?;
        let mut client = Client::tcp(addr, self.version, self.timeout)
            .await
            .ok_or_else(|| format!("{}: cannot connect", self.server))?;
        let mut connect: Connect = client.connect_packet(client_id, clean);
        connect.keep_alive = self.keepalive;
        connect.username = self.username.clone();
        connect.password = self.password.clone().map(Bytes::from);
        if self.version.is_v5() && !clean {
            connect.properties.session_expiry_interval = Some(u32::MAX);
        }
        let ack = client
            .handshake(connect, self.timeout)
            .await
            .ok_or_else(|| format!("{}: no CONNACK", self.server))?;
        if ack.code.0 >= 0x80 || (ack.code.0 != 0 && !self.version.is_v5()) {
            return Err(format!(
                "{}: CONNACK refused ({:#04x})",
                self.server, ack.code.0
            ));
        }
        let receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX);
        Ok((client, receive_maximum))
    }

    /// The remote PUBLISH for an item (a message's fields, or a rule's output), under
    /// `packet_id` at `qos`; `raw` is the message's payload for the default payload.
    fn publish(&self, item: &Item, raw: &Bytes, qos: QoS, packet_id: u16, dup: bool) -> Publish {
        let mut env = Env::new(item.fields.clone());
        let payload = match &self.payload {
            Some(t) => Bytes::from(t.render_with(&mut env)),
            None if item.rule.is_none() => raw.clone(),
            // A rule's output: as JSON (EMQX's default for a rule-fed egress).
            None => Bytes::from(serde_json::Value::Object(item.fields.clone()).to_string()),
        };
        Publish {
            dup,
            qos,
            retain: self.retain.render_with(&mut env) == "true",
            topic: self.topic.render_with(&mut env).into(),
            packet_id,
            properties: Default::default(),
            payload,
        }
    }
}

/// One remote exchange in flight, by packet id.
enum Exchange {
    /// PUBLISH sent (sent again with DUP after a reconnect); the delivery to acknowledge.
    Published(Box<(Publish, Item)>),
    /// PUBREC durable, PUBREL sent (sent again after a reconnect).
    Released,
}

/// Runs an MQTT sink's feed until `stop` says so or the broker shuts down.
pub async fn run(
    broker: Broker,
    feed: Arc<Feed>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) {
    let remote = match Remote::open(&feed.sink.spec, feed.sink.spec.password().ok().flatten()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(sink = %feed.sink.spec.name, error = %e, "MQTT sink not started");
            return;
        }
    };
    let mut ready = Some(ready);
    while !*stop.borrow() {
        match forward(&broker, &feed, &remote, &mut stop, &mut ready).await {
            Ok(()) | Err(LocalError::ShuttingDown) => return,
            Err(e) => {
                tracing::warn!(sink = %feed.sink.spec.name, error = %e,
                    "MQTT sink subscriber stopped; attaching again");
                if pause(&mut stop, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    }
}

/// Attaches the feed's session and forwards over remote connections (made again with
/// back-off while the remote is away) until stopped.
async fn forward(
    broker: &Broker,
    feed: &Feed,
    remote: &Remote,
    stop: &mut watch::Receiver<bool>,
    ready: &mut Option<oneshot::Sender<()>>,
) -> Result<(), LocalError> {
    let mut session = feed::attach(broker, feed, remote.qos, ready).await?;
    let mut inflight: BTreeMap<u16, Exchange> = BTreeMap::new();
    let (spec, stats) = (&feed.sink.spec, &feed.sink.stats);
    // One remote session per feed: the sink's topics use `client_id`, a rule's feed
    // `<client_id>-<rule>`.
    let client_id = match &feed.rule {
        None => remote.client_id.clone(),
        Some((rule, _)) => format!("{}-{}", remote.client_id, rule.id),
    };
    let mut wait = Duration::from_millis(spec.retry.initial_ms);
    let result = loop {
        let (mut conn, receive_maximum) = match remote.connect(&client_id, false).await {
            Ok(c) => c,
            Err(e) => {
                fail(feed, &e);
                if pause(stop, wait).await {
                    break Ok(());
                }
                wait = (wait * 2).min(Duration::from_millis(spec.retry.max_ms));
                continue;
            }
        };
        wait = Duration::from_millis(spec.retry.initial_ms);
        stats.set_status(SinkStatus::Connected, "");
        let window = receive_maximum.min(CONSUMER_WINDOW);
        session.set_window(window)?;
        resend(&mut conn, &mut inflight, feed).await;
        let ended = exchange(
            broker,
            feed,
            remote,
            &mut session,
            &mut conn,
            &mut inflight,
            window,
            stop,
        );
        match ended.await {
            Ok(true) => continue,
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    session.close().await;
    result
}

fn fail(feed: &Feed, error: &str) {
    if feed.sink.stats.disconnected(0, error) {
        tracing::warn!(sink = %feed.sink.spec.name, error, "MQTT sink cannot reach its remote; retrying");
    }
}

/// Sends again what is in flight after a reconnect: PUBLISH with DUP, or PUBREL.
async fn resend(conn: &mut Client, inflight: &mut BTreeMap<u16, Exchange>, feed: &Feed) {
    for (packet_id, exchange) in inflight.iter_mut() {
        match exchange {
            Exchange::Published(sent) => {
                sent.0.dup = true;
                Metrics::add(&feed.sink.stats.retried, 1);
                conn.send(&Packet::Publish(sent.0.clone())).await;
            }
            Exchange::Released => conn.send(&Packet::PubRel(PubAck::new(*packet_id))).await,
        }
    }
}

/// Forwards over one remote connection; `Ok(true)` when it is lost (connect again),
/// `Ok(false)` when stopped.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    broker: &Broker,
    feed: &Feed,
    remote: &Remote,
    session: &mut LocalSession,
    conn: &mut Client,
    inflight: &mut BTreeMap<u16, Exchange>,
    window: u16,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, LocalError> {
    let keepalive = Duration::from_secs(u64::from(remote.keepalive.max(2)) / 2);
    let mut quiet = 0u32;
    loop {
        let room = inflight.len() < usize::from(window);
        tokio::select! {
            r = conn.recv(keepalive) => match r {
                Recv::Packet(p) => {
                    quiet = 0;
                    if !answer(broker, feed, session, conn, inflight, p).await? {
                        return Ok(false);
                    }
                }
                Recv::Timeout if quiet == 0 => {
                    quiet = 1;
                    conn.send(&Packet::PingReq).await;
                }
                Recv::Timeout => {
                    fail(feed, "the remote broker stopped answering");
                    return Ok(true);
                }
                Recv::Closed | Recv::Invalid(_) => {
                    fail(feed, "the remote broker closed the connection");
                    return Ok(true);
                }
            },
            taken = session.take(), if room => {
                let taken = taken?;
                send(broker, feed, remote, session, conn, inflight, taken).await?;
            }
            _ = stop.changed() => return Ok(false),
        }
    }
}

/// Sends what the session gave: a delivery's PUBLISH (a QoS 0 one is done at once), or the
/// PUBREL of a delivery whose PUBREC is durable.
async fn send(
    broker: &Broker,
    feed: &Feed,
    remote: &Remote,
    session: &mut LocalSession,
    conn: &mut Client,
    inflight: &mut BTreeMap<u16, Exchange>,
    taken: Taken,
) -> Result<(), LocalError> {
    let d = match taken {
        Taken::Release(packet_id) => {
            let packet_id = mqtt_packet_id(packet_id)?;
            inflight.insert(packet_id, Exchange::Released);
            conn.send(&Packet::PubRel(PubAck::new(packet_id))).await;
            return Ok(());
        }
        Taken::Delivery(d) => d,
    };
    let Some(item) = item_of(broker, feed, &d) else {
        // The rule gave no output: nothing to forward.
        return session.ack(&d).await;
    };
    Metrics::add(&feed.sink.stats.matched, 1);
    let qos = d.delivery.qos.min(remote.qos);
    let id = d.mqtt_packet_id()?;
    let publish = remote.publish(&item, &d.delivery.message.payload, qos, id, d.dup);
    let topic = &*publish.topic;
    if topic.is_empty() || topic.contains(['+', '#', '\0']) || topic.len() > usize::from(u16::MAX) {
        let why = format!("remote topic `{topic}` is not a topic name");
        let (_keep, mut never) = watch::channel(false);
        let outcomes = vec![Outcome::Refused(why)];
        feed::settle(broker, &feed.sink, vec![item], outcomes, &mut never).await;
        return session.ack(&d).await;
    }
    conn.send(&Packet::Publish(publish.clone())).await;
    if qos == QoS::AtMostOnce {
        Metrics::add(&feed.sink.stats.success, 1);
        feed.sink.confirm(broker, &item, true);
        return session.ack(&d).await;
    }
    inflight.insert(id, Exchange::Published(Box::new((publish, item))));
    Ok(())
}

/// The item a delivery forwards: the message, or the rule's (single) output.
fn item_of(broker: &Broker, feed: &Feed, d: &LocalDelivery) -> Option<Item> {
    let message = &d.delivery.message;
    let Some((rule, stats)) = &feed.rule else {
        return Some(Item {
            id: message.id,
            index: 0,
            rule: None,
            raw: Some(message.payload.clone()),
            fields: fields::message(broker, message, d.dup),
        });
    };
    Metrics::add(&stats.matched, 1);
    let input = fields::message_for(broker, message, d.dup, &|f| rule.reads(f));
    let mut fields = rule.outputs(stats, input)?.into_iter().next()?;
    fields
        .entry("id")
        .or_insert_with(|| serde_json::Value::String(message.id.to_string()));
    Some(Item {
        id: message.id,
        index: 0,
        rule: Some(rule.id.as_str().into()),
        raw: None,
        fields,
    })
}

/// Handles a packet from the remote; `false` if stopped while publishing a dead letter.
async fn answer(
    broker: &Broker,
    feed: &Feed,
    session: &mut LocalSession,
    conn: &mut Client,
    inflight: &mut BTreeMap<u16, Exchange>,
    packet: Packet,
) -> Result<bool, LocalError> {
    let stats = &feed.sink.stats;
    match packet {
        Packet::PubAck(a) => {
            let Some(Exchange::Published(sent)) = inflight.remove(&a.packet_id) else {
                return Ok(true);
            };
            if !settle(broker, feed, &sent.1, a.reason).await {
                return Ok(false);
            }
            session.acknowledged(a.packet_id.into())?;
        }
        Packet::PubRec(r) if r.reason.0 >= 0x80 => {
            let Some(Exchange::Published(sent)) = inflight.remove(&r.packet_id) else {
                return Ok(true);
            };
            if !settle(broker, feed, &sent.1, r.reason).await {
                return Ok(false);
            }
            session.received(r.packet_id.into(), true).await?;
        }
        Packet::PubRec(r) => {
            let Some(Exchange::Published(sent)) = inflight.get(&r.packet_id) else {
                return Ok(true);
            };
            // The remote has it, once: a publisher waiting for the sink may be acknowledged.
            feed.sink.confirm(broker, &sent.1, true);
            // Durable before PUBREL: a restart then releases instead of sending again.
            session.received(r.packet_id.into(), false).await?;
            inflight.insert(r.packet_id, Exchange::Released);
            conn.send(&Packet::PubRel(PubAck::new(r.packet_id))).await;
        }
        Packet::PubComp(c) => {
            if matches!(inflight.remove(&c.packet_id), Some(Exchange::Released)) {
                session.released(c.packet_id.into())?;
                Metrics::add(&stats.success, 1);
            }
        }
        _ => {}
    }
    Ok(true)
}

/// Counts a PUBACK or a refusing PUBREC: success, or a refusal for good (dead-letter topic).
async fn settle(broker: &Broker, feed: &Feed, item: &Item, reason: ReasonCode) -> bool {
    if reason.0 < 0x80 {
        Metrics::add(&feed.sink.stats.success, 1);
        feed.sink.confirm(broker, item, true);
        return true;
    }
    let why = format!("the remote broker refused it ({:#04x})", reason.0);
    let (_keep, mut never) = watch::channel(false);
    let outcomes = vec![Outcome::Refused(why)];
    feed::settle(broker, &feed.sink, vec![item.clone()], outcomes, &mut never)
        .await
        .is_some()
}

/// Event-rule outputs to an MQTT sink: published at QoS 0 over a clean connection of their
/// own (`<client_id>-events`), best effort as the events themselves.
pub struct MqttEvents {
    remote: Remote,
    conn: tokio::sync::Mutex<Option<Client>>,
}

impl MqttEvents {
    pub fn open(spec: &SinkSpec, password: Option<String>) -> Result<MqttEvents, String> {
        Ok(MqttEvents {
            remote: Remote::open(spec, password)?,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn write_all(&self, items: &[Item]) -> Result<Vec<Outcome>, String> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let id = format!("{}-events", self.remote.client_id);
            *conn = Some(self.remote.connect(&id, true).await?.0);
        }
        let Some(c) = conn.as_mut() else {
            return Err("not connected".into());
        };
        for item in items {
            let publish = self
                .remote
                .publish(item, &Bytes::new(), QoS::AtMostOnce, 0, false);
            c.send(&Packet::Publish(publish)).await;
        }
        Ok(vec![Outcome::Done; items.len()])
    }
}

impl Target for MqttEvents {
    fn write<'a>(&'a self, items: &'a [Item]) -> WriteFuture<'a> {
        Box::pin(self.write_all(items))
    }
}
