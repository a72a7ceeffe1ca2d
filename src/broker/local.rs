//! The in-process client: broker code that publishes and subscribes like a network client,
//! under the same durability contract, limits and backpressure, without a socket.
//!
//! - [`LocalClient::publish`] returns when a network client would get its PUBACK: the message
//!   is durable and visible to its subscribers. A QoS 1/2 message for a full queue of a
//!   draining subscriber waits for room (as a held-back 3.x publisher does); a stalled
//!   subscriber's copy is dropped by the overflow policy, so the wait is bounded by
//!   `limits.stalled_subscriber_ms`. QoS 0 waits likewise, except for the broker's own client.
//! - [`LocalClient::session`] attaches a session like a CONNECT (persistent with an expiry, or
//!   clean), and [`LocalSession`] subscribes, takes deliveries in order and acknowledges them;
//!   a QoS 2 acknowledgement waits until its PUBREC is durable, as for a network client, so a
//!   restart never delivers it again.
//!
//! `$SYS` publishes through the broker's own client ([`Broker::system_client`]); the rule
//! engine's republish, bridges and the HTTP API's publish use [`Broker::local_client`].

use std::collections::VecDeque;

use bytes::Bytes;

use super::*;
use crate::session::{Outgoing, RuleReach};

/// How long a publish held back by a full queue waits between retries when no room
/// notification arrives.
const HELD_RETRY: Duration = Duration::from_millis(50);

/// The in-flight window of a durable consumer ([`LocalClient::consumer_session`]): it keeps
/// this many deliveries unacknowledged while their outputs wait for the log, so that one
/// fdatasync covers the outputs of as many.
pub const CONSUMER_WINDOW: u16 = 1024;

/// Why an in-process client's request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    /// The topic is empty, holds a wildcard or NUL, or is a `$` topic of a client other than
    /// the broker's own.
    #[error("invalid topic name")]
    InvalidTopic,
    /// What was to be acknowledged could not be made durable.
    #[error("not stored: persistence failed")]
    NotDurable,
    /// Another client (network or in-process) took the session over.
    #[error("the session was taken over")]
    TakenOver,
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// `limits.max_sessions` sessions exist already.
    #[error("too many sessions")]
    TooManySessions,
    /// A delivery's packet identifier is above 65,535 where an MQTT peer needs it (a session
    /// whose identifiers were widened with `set_max_packet_id`).
    #[error("packet identifier {0} is above 65535")]
    PacketIdRange(PacketId),
}

impl LocalDelivery {
    /// The delivery's packet identifier as an MQTT packet identifier.
    pub fn mqtt_packet_id(&self) -> Result<u16, LocalError> {
        mqtt_packet_id(self.packet_id)
    }
}

/// `id` as an MQTT packet identifier (for a peer that gets the session's ids as its own).
pub fn mqtt_packet_id(id: PacketId) -> Result<u16, LocalError> {
    u16::try_from(id).map_err(|_| LocalError::PacketIdRange(id))
}

impl From<NotDurable> for LocalError {
    fn from(_: NotDurable) -> LocalError {
        LocalError::NotDurable
    }
}

/// A message an in-process client publishes.
#[derive(Debug, Clone)]
pub struct LocalPublish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: PublishProperties,
    /// Which rules read it ([`Message::rules`]).
    pub rules: RuleReach,
}

impl LocalPublish {
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: QoS) -> LocalPublish {
        LocalPublish {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            properties: PublishProperties::default(),
            rules: RuleReach::All,
        }
    }
}

/// What a publish did, as its acknowledgement would tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The broker's id of the message (0 for a `$` topic, which is never stored).
    pub message_id: u64,
    /// Sessions the message was queued for.
    pub delivered: usize,
    /// The retained store was full: delivered but not retained.
    pub retained_refused: bool,
}

/// An in-process client (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct LocalClient {
    broker: Broker,
    /// The client id its messages carry (for No Local and the retained limit); `None` for the
    /// broker's own client.
    name: Option<ClientId>,
}

impl Broker {
    /// The broker's own client: publishes `$SYS`, is exempt from the retained-message limit,
    /// and never waits for a full queue with a QoS 0 message.
    pub fn system_client(&self) -> LocalClient {
        LocalClient {
            broker: self.clone(),
            name: None,
        }
    }

    /// An in-process client named `name` (its session, if it attaches one, is `name`'s).
    pub fn local_client(&self, name: impl Into<ClientId>) -> LocalClient {
        LocalClient {
            broker: self.clone(),
            name: Some(name.into()),
        }
    }
}

impl LocalClient {
    /// Publishes `p`; returns once it is durable and visible (see the module documentation).
    pub async fn publish(&self, p: LocalPublish) -> Result<Published, LocalError> {
        publish_claimed(&self.broker, self.name.clone(), p, None).await
    }
}

/// Publishes `p` as `name` (`None`: the broker's own client), logged with `claim` (an
/// inbound QoS 2 id of the publisher's session) if there is one; a claim is given back if the
/// message is not placed.
async fn publish_claimed(
    broker: &Broker,
    name: Option<ClientId>,
    p: LocalPublish,
    claim: Option<InboundClaim>,
) -> Result<Published, LocalError> {
    let system = name.is_none();
    let Some(message) = local_message(broker, name, p) else {
        if let Some(claim) = &claim {
            broker.release_claim(claim);
        }
        return Err(LocalError::InvalidTopic);
    };
    let released = claim.clone();
    let origin = match system {
        true => Origin::Broker,
        false => Origin::Local,
    };
    let published = publish_held(broker, Arc::new(message), claim, origin).await;
    if let (Err(_), Some(claim)) = (&published, &released) {
        broker.release_claim(claim);
    }
    published
}

/// The message an in-process client publishes as `name`; `None` if its topic is not one it
/// may publish to.
pub(crate) fn local_message(
    broker: &Broker,
    name: Option<ClientId>,
    p: LocalPublish,
) -> Option<Message> {
    if !valid_topic(&p.topic, name.is_none()) {
        return None;
    }
    let now = Instant::now();
    Some(Message {
        // `$` topics are never persisted and need no id.
        id: match p.topic.starts_with('$') {
            false => broker.next_message_id(),
            true => 0,
        },
        expires_at: p
            .properties
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s))),
        topic: p.topic.into(),
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: Message::properties_of(p.properties),
        publisher: name,
        rules: p.rules,
    })
}

/// Publishes `message`, waiting for queue room while a draining subscriber's queue is full.
async fn publish_held(
    broker: &Broker,
    message: Arc<Message>,
    claim: Option<InboundClaim>,
    origin: Origin,
) -> Result<Published, LocalError> {
    let message_id = message.id;
    let mut outcome = broker.publish(message, claim, origin).await?;
    let retained_refused = outcome.retained_refused;
    let shutdown = broker.shutdown_signal();
    while let Some(held) = outcome.held.take() {
        if *shutdown.borrow() {
            return Err(LocalError::ShuttingDown);
        }
        broker.wait_for_room(HELD_RETRY).await;
        outcome = broker.retry_planned(held).await?;
    }
    Ok(Published {
        message_id,
        delivered: outcome.delivered,
        retained_refused,
    })
}

impl LocalClient {
    /// Attaches this client's session, as a CONNECT with `clean_start` and session expiry
    /// `expiry_secs` would (capped by `mqtt.max_session_expiry_secs`), taking it over from
    /// whoever holds it. Returns the session and whether it was present.
    pub async fn session(
        &self,
        clean_start: bool,
        expiry_secs: u32,
    ) -> Result<(LocalSession, bool), LocalError> {
        let expiry = expiry_secs.min(self.broker.config().mqtt.max_session_expiry_secs);
        self.attach(clean_start, expiry, false).await
    }

    /// Attaches this client's session as a durable consumer (the rule engine's): persistent
    /// without expiry, always counted as draining, so a full queue holds publishers back
    /// instead of dropping their messages, and passed by messages with
    /// [`LocalPublish::rules`] other than [`RuleReach::All`]. Subscribe at QoS 1 at most (see
    /// [`LocalSession::ack_releasing`]).
    pub async fn consumer_session(&self) -> Result<(LocalSession, bool), LocalError> {
        self.attach(false, u32::MAX, true).await
    }

    async fn attach(
        &self,
        clean_start: bool,
        expiry: u32,
        consumer: bool,
    ) -> Result<(LocalSession, bool), LocalError> {
        let broker = &self.broker;
        let client_id = self.name.clone().ok_or(LocalError::InvalidTopic)?;
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start,
            keep_alive: 0,
            properties: ConnectProperties::default(),
            client_id: client_id.to_string(),
            will: None,
            username: None,
            password: None,
        };
        let conn = broker.next_conn_id();
        // The broker's own sessions may take any client id.
        let broker_itself = crate::hooks::Identity {
            superuser: true,
            ..Default::default()
        };
        let attached = broker
            .connect(conn, client_id.clone(), &connect, expiry, &broker_itself)
            .await
            .map_err(|e| match e {
                ConnectRefusal::TooManySessions => LocalError::TooManySessions,
                ConnectRefusal::ServerBusy
                | ConnectRefusal::NotDurable
                | ConnectRefusal::NotOwner => LocalError::NotDurable,
            })?;
        if consumer {
            attached.slot.consumer.store(true, Ordering::Relaxed);
        }
        let window = match consumer {
            false => broker.config().mqtt.max_inflight,
            true => CONSUMER_WINDOW,
        };
        broker.session_op(&attached.slot, conn, |s| s.set_window(window));
        let resend = broker
            .session_op(&attached.slot, conn, |s| s.resume())
            .unwrap_or_default();
        let session = LocalSession {
            broker: broker.clone(),
            conn,
            slot: attached.slot,
            kicked: attached.kicked,
            alive: Some(attached.alive),
            outbox: resend.into(),
        };
        Ok((session, attached.session_present))
    }
}

/// A topic an in-process client may publish to.
fn valid_topic(topic: &str, system: bool) -> bool {
    !topic.is_empty()
        && !topic.contains(['+', '#', '\0'])
        && (system || !topic.starts_with('$'))
        && topic.len() <= usize::from(u16::MAX)
}

/// An output of [`LocalSession::publish_output`] on its way to the log.
#[must_use = "an output must be waited for: until then its deliveries stay invisible"]
pub struct PendingOutput {
    broker: Broker,
    logged: Option<Logged>,
}

impl PendingOutput {
    fn done(broker: &Broker) -> PendingOutput {
        PendingOutput {
            broker: broker.clone(),
            logged: None,
        }
    }

    /// Waits until the output is durable, then makes it visible to its subscribers.
    pub async fn wait(mut self, broker: &Broker) -> Result<(), LocalError> {
        match self.logged.take() {
            Some(logged) => broker
                .wait_and_reveal(logged)
                .await
                .map(|_| ())
                .map_err(Into::into),
            None => Ok(()),
        }
    }
}

impl Drop for PendingOutput {
    /// An output dropped unwaited (its consumer failed or was cancelled) is in the log: it is
    /// still made visible once durable (or given back), never left reserved.
    fn drop(&mut self) {
        let Some(logged) = self.logged.take() else {
            return;
        };
        let broker = self.broker.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = broker.wait_and_reveal(logged).await;
            });
        }
    }
}

/// What [`LocalSession::take`] gives.
#[derive(Debug, Clone)]
pub enum Taken {
    Delivery(LocalDelivery),
    /// Finish the QoS 2 delivery under this packet id with PUBREL (its PUBREC is durable).
    Release(PacketId),
}

/// A delivery taken by a [`LocalSession`]; QoS 1/2 ones stay in flight until acknowledged.
#[derive(Debug, Clone)]
pub struct LocalDelivery {
    /// The packet id it is in flight under (0 for QoS 0).
    pub packet_id: PacketId,
    /// Sent before, to this session's previous holder (it may have been processed).
    pub dup: bool,
    pub delivery: Delivery,
}

/// A session attached to an in-process client (see the module documentation). Detach it with
/// [`LocalSession::close`]; dropping it detaches it in the background.
pub struct LocalSession {
    broker: Broker,
    conn: ConnId,
    slot: Arc<SessionSlot>,
    kicked: oneshot::Receiver<super::Kick>,
    alive: Option<oneshot::Sender<()>>,
    /// What the session gave out and this client has not taken yet (re-sends first).
    outbox: VecDeque<Outgoing>,
}

impl LocalSession {
    pub fn client_id(&self) -> &ClientId {
        &self.slot.client_id
    }

    /// Subscribes; returns once the subscriptions are durable, with a reason code per filter.
    pub async fn subscribe(
        &self,
        filters: Vec<(String, SubscriptionOptions)>,
    ) -> Result<Vec<ReasonCode>, LocalError> {
        let sub = Subscribe {
            packet_id: 1,
            properties: SubscribeProperties::default(),
            filters,
        };
        let codes = self.broker.subscribe(&self.slot, self.conn, &sub).await?;
        codes.ok_or(LocalError::TakenOver)
    }

    /// Unsubscribes; returns once the removals are durable, with a reason code per filter.
    pub async fn unsubscribe(&self, filters: &[String]) -> Result<Vec<ReasonCode>, LocalError> {
        let codes = self
            .broker
            .unsubscribe(&self.slot, self.conn, filters)
            .await?;
        codes.ok_or(LocalError::TakenOver)
    }

    /// The next delivery, in queue order; waits until there is one. A QoS 2 delivery the
    /// session's previous holder had acknowledged with PUBREC is completed on the way.
    pub async fn next(&mut self) -> Result<LocalDelivery, LocalError> {
        loop {
            match self.take().await? {
                Taken::Delivery(d) => return Ok(d),
                Taken::Release(packet_id) => self.complete(packet_id, true)?,
            }
        }
    }

    /// [`Self::next`] for a consumer that finishes QoS 2 exchanges itself (the MQTT sink
    /// forwards them): a delivery, or a release whose PUBREC was durable before the previous
    /// holder went.
    pub async fn take(&mut self) -> Result<Taken, LocalError> {
        let mut shutdown = self.broker.shutdown_signal();
        loop {
            match self.outbox.pop_front() {
                Some(Outgoing::Publish {
                    packet_id,
                    delivery,
                    dup,
                }) => {
                    let client_id = self.slot.client_id.clone();
                    let message = delivery.message.clone();
                    let qos = delivery.qos;
                    self.broker
                        .emit(EventKinds::DELIVERED, || Event::Delivered {
                            client_id,
                            message,
                            packet_id,
                            qos,
                        });
                    return Ok(Taken::Delivery(LocalDelivery {
                        packet_id,
                        dup,
                        delivery,
                    }));
                }
                Some(Outgoing::PubRel { packet_id }) => return Ok(Taken::Release(packet_id)),
                None => {}
            }
            if self.take_next()? {
                continue;
            }
            if *shutdown.borrow() {
                return Err(LocalError::ShuttingDown);
            }
            tokio::select! {
                _ = &mut self.kicked => return Err(LocalError::TakenOver),
                _ = shutdown.changed() => return Err(LocalError::ShuttingDown),
                _ = self.slot.wake.notified() => {}
            }
        }
    }

    /// Whether [`Self::next`] would wait now: nothing taken and nothing the session may give
    /// out (its queue is empty or its in-flight window full).
    pub fn is_idle(&self) -> bool {
        self.outbox.is_empty()
            && !self
                .broker
                .session_op(&self.slot, self.conn, |s| s.has_sendable())
                .unwrap_or(false)
    }

    /// Moves the session's next delivery into the outbox; `false` if there is none.
    fn take_next(&mut self) -> Result<bool, LocalError> {
        let now = Instant::now();
        let (next, refill) = self
            .broker
            .session_op(&self.slot, self.conn, |s| {
                (s.next_publish(now), s.wants_page_in(REFILL_BELOW))
            })
            .ok_or(LocalError::TakenOver)?;
        if refill {
            self.broker.refill(&self.slot);
        }
        let Some(out) = next else {
            return Ok(false);
        };
        self.broker.drained(&self.slot);
        self.outbox.push_back(out);
        Ok(true)
    }

    /// Acknowledges a delivery: QoS 1 as PUBACK; QoS 2 as PUBREC — durable before it goes on —
    /// then PUBCOMP. QoS 0 needs nothing.
    pub async fn ack(&mut self, d: &LocalDelivery) -> Result<(), LocalError> {
        match d.delivery.qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => self.complete(d.packet_id, false),
            QoS::ExactlyOnce => {
                self.received(d.packet_id, false).await?;
                self.complete(d.packet_id, true)
            }
        }
    }

    /// The first half of a QoS 2 acknowledgement: PUBREC, durable when this returns (the
    /// delivery is then the receiver's; [`Self::released`] finishes it).
    pub async fn received(&mut self, packet_id: PacketId, refused: bool) -> Result<(), LocalError> {
        let (_, pending) = self
            .broker
            .outbound_pubrec(&self.slot, self.conn, packet_id, refused)?
            .ok_or(LocalError::TakenOver)?;
        if let Some(mut pending) = pending {
            self.broker.wait_pending(&mut pending).await?;
        }
        Ok(())
    }

    /// Completes a QoS 1 delivery (PUBACK).
    pub fn acknowledged(&mut self, packet_id: PacketId) -> Result<(), LocalError> {
        self.complete(packet_id, false)
    }

    /// The second half: PUBCOMP.
    pub fn released(&mut self, packet_id: PacketId) -> Result<(), LocalError> {
        self.complete(packet_id, true)
    }

    /// Gives out at most `window` deliveries at a time (a receiver's Receive Maximum).
    pub fn set_window(&self, window: u16) -> Result<(), LocalError> {
        self.broker
            .session_op(&self.slot, self.conn, |s| s.set_window(window))
            .ok_or(LocalError::TakenOver)
    }

    /// Acknowledges several deliveries: the QoS 1 ones in one step (one log append for all),
    /// the others one by one as [`Self::ack`] does.
    pub async fn ack_many(&mut self, ds: &[LocalDelivery]) -> Result<(), LocalError> {
        let qos1: Vec<PacketId> = ds
            .iter()
            .filter(|d| d.delivery.qos == QoS::AtLeastOnce)
            .map(|d| d.packet_id)
            .collect();
        if !qos1.is_empty() {
            self.broker
                .outbound_puback_many(&self.slot, self.conn, &qos1)
                .ok_or(LocalError::TakenOver)?;
        }
        for d in ds.iter().filter(|d| d.delivery.qos == QoS::ExactlyOnce) {
            self.ack(d).await?;
        }
        Ok(())
    }

    fn complete(&self, packet_id: PacketId, pubcomp: bool) -> Result<(), LocalError> {
        let done = self
            .broker
            .outbound_complete(&self.slot, self.conn, packet_id, pubcomp);
        done.ok_or(LocalError::TakenOver)
    }

    /// Publishes `p` as a QoS 2 message this session received under `packet_id` (a bridge
    /// source forwarding a remote broker's message): the id is marked as awaiting release in
    /// the message's own commit (`InboundQos2`), so the same id sent again (the remote's DUP
    /// after a restart) is recognised and not published twice. `Ok(false)`: such a re-send.
    /// [`Self::release_inbound`] ends the exchange.
    pub async fn publish_qos2(&self, p: LocalPublish, packet_id: u16) -> Result<bool, LocalError> {
        let claimed = self
            .broker
            .claim_inbound_qos2(&self.slot, self.conn, packet_id)
            .ok_or(LocalError::TakenOver)?;
        let claim = match claimed {
            Claimed::Duplicate => return Ok(false),
            Claimed::New(claim) => claim,
        };
        let name = Some(self.slot.client_id.clone());
        publish_claimed(&self.broker, name, p, Some(claim)).await?;
        Ok(true)
    }

    /// The PUBREL of an id [`Self::publish_qos2`] marked: its release is durable when this
    /// returns (then PUBCOMP may go).
    pub async fn release_inbound(&self, packet_id: u16) -> Result<(), LocalError> {
        let (_, mut pending) = self
            .broker
            .inbound_pubrel(&self.slot, self.conn, packet_id)?
            .ok_or(LocalError::TakenOver)?;
        self.broker.wait_pending(&mut pending).await?;
        Ok(())
    }

    /// Publishes `p` as this session's client.
    pub async fn publish(&self, p: LocalPublish) -> Result<Published, LocalError> {
        let name = Some(self.slot.client_id.clone());
        publish_claimed(&self.broker, name, p, None).await
    }

    /// Holds at most `messages` queued deliveries (instead of `limits.max_queued_messages`);
    /// the byte limit stays.
    pub fn set_queue_limit(&self, messages: usize) -> Result<(), LocalError> {
        let mut limits = self.broker.limits();
        limits.max_queued_messages = messages;
        self.broker
            .session_op(&self.slot, self.conn, |s| s.set_limits(limits))
            .ok_or(LocalError::TakenOver)
    }

    /// Lets the session's deliveries take packet identifiers up to `max` (see
    /// [`PacketId`]): for a reader that never hands them to an MQTT peer, so that its backlog
    /// is bounded by its queue limit rather than by 65,535.
    pub fn set_max_packet_id(&self, max: PacketId) -> Result<(), LocalError> {
        self.broker
            .session_op(&self.slot, self.conn, |s| s.set_max_packet_id(max))
            .ok_or(LocalError::TakenOver)
    }

    /// The session's subscription filters.
    pub fn filters(&self) -> Result<Vec<String>, LocalError> {
        self.broker
            .session_op(&self.slot, self.conn, |s| {
                s.subscriptions.keys().cloned().collect()
            })
            .ok_or(LocalError::TakenOver)
    }

    /// Starts publishing `p` as output `index` of the delivered message `message_id`, at most
    /// once across crashes, for exactly-once processing by a durable consumer: the output is
    /// marked in this session in one step with the duplicate check, and the mark is logged in
    /// the same commit as the message (`Produced`); acknowledging the delivery forgets its
    /// marks. `Ok(None)`: published before (by this process or one a crash ended). Otherwise
    /// the message is logged in call order and [`PendingOutput::wait`] returns once it is
    /// durable and visible, so a consumer can go on with its next delivery meanwhile (its
    /// outputs share fdatasyncs). A retained output, or one held back by a full queue, is
    /// published whole before this returns. Rules read it inline at most
    /// ([`RuleReach::Inline`]): it never waits for room in a consumer's queue.
    pub async fn publish_output(
        &self,
        mut p: LocalPublish,
        message_id: u64,
        index: u32,
    ) -> Result<Option<PendingOutput>, LocalError> {
        if p.rules == RuleReach::All {
            p.rules = RuleReach::Inline;
        }
        let broker = &self.broker;
        let claimed = broker
            .claim_output(&self.slot, self.conn, message_id, index)
            .ok_or(LocalError::TakenOver)?;
        let claim = match claimed {
            Claimed::Duplicate => return Ok(None),
            Claimed::New(claim) => claim,
        };
        let name = Some(self.slot.client_id.clone());
        if p.retain {
            publish_claimed(broker, name, p, Some(claim)).await?;
            return Ok(Some(PendingOutput::done(broker)));
        }
        let Some(message) = local_message(broker, name, p) else {
            broker.release_claim(&claim);
            return Err(LocalError::InvalidTopic);
        };
        let outcome =
            broker.publish_pipelined(Arc::new(message), Some(claim.clone()), Origin::Local);
        match outcome {
            Ok(ReserveOutcome::Logged(logged)) => Ok(Some(PendingOutput {
                broker: broker.clone(),
                logged: Some(logged),
            })),
            Ok(ReserveOutcome::Held(held)) => {
                let mut outcome = broker.retry_planned(held).await;
                while let Ok(PublishOutcome {
                    held: Some(held), ..
                }) = outcome
                {
                    if *broker.shutdown_signal().borrow() {
                        broker.release_claim(&claim);
                        return Err(LocalError::ShuttingDown);
                    }
                    broker.wait_for_room(HELD_RETRY).await;
                    outcome = broker.retry_planned(held).await;
                }
                outcome.map_err(|e| {
                    broker.release_claim(&claim);
                    LocalError::from(e)
                })?;
                Ok(Some(PendingOutput::done(broker)))
            }
            Err(e) => {
                broker.release_claim(&claim);
                Err(e.into())
            }
        }
    }

    /// Detaches the session: it stays (undelivered messages queued) until its expiry if it
    /// was attached with one.
    pub async fn close(mut self) {
        self.detach().await;
    }

    async fn detach(&mut self) {
        if let Some(alive) = self.alive.take() {
            drop(alive);
            self.broker
                .disconnect(self.conn, &self.slot, false, None, "normal")
                .await;
        }
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        let Some(alive) = self.alive.take() else {
            return;
        };
        drop(alive);
        let (broker, conn, slot) = (self.broker.clone(), self.conn, self.slot.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime
                .spawn(async move { broker.disconnect(conn, &slot, false, None, "normal").await });
        }
    }
}
