//! The MQTT session state machine, free of I/O so that it can be tested deterministically.
//!
//! A session outlives its network connections (unless its expiry is 0) and holds:
//! - the offline/pending queue of deliveries, bounded by message count and payload bytes;
//!   durable deliveries beyond what it keeps in memory (and all of them while offline) are
//!   paged out, their bodies left to the store, and come back in order by batches;
//! - the outbound in-flight window: deliveries sent with a packet identifier and not yet
//!   completed, bounded by the client's Receive Maximum (v5) or the configured window (3.x);
//! - the inbound QoS 2 packet identifiers that were PUBRECed and await PUBREL, so that a
//!   re-sent PUBLISH with such an identifier is never routed twice;
//! - the subscriptions, so that they can be restored and removed with the session.
//!
//! Methods take the current time as an argument and return what the connection must send; they
//! never send anything themselves. The broker decides *when* an effect may leave (after the
//! state it acknowledges is durable).

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::codec::{ByteStr, ProtocolVersion, PublishProperties, QoS, SubscriptionOptions};
use crate::router::ClientId;

/// The identifier of an outbound delivery: its MQTT packet identifier (at most 65,535) for a
/// network client's session; broker-internal readers (sinks, rules) may use larger ones,
/// so that their backlog is bounded by their queue limits rather than by 65,535.
pub type PacketId = u32;

/// The largest packet identifier of a network client's session [MQTT-2.2.1].
pub const MAX_MQTT_PACKET_ID: PacketId = u16::MAX as PacketId;

/// An application message as the broker holds it: shared by every delivery (`Arc`), payload
/// zero-copy from the publisher's packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Unique across restarts; names the message body in the log and the store.
    pub id: u64,
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Publish properties to forward (no Topic Alias, no Subscription Identifiers: those are
    /// per-connection and per-subscription).
    /// Shared: most messages carry none and all of those point to one empty set
    /// ([`Message::properties_of`]), so a million retained or queued messages pay a pointer.
    pub properties: Arc<PublishProperties>,
    /// When the Message Expiry Interval runs out, if the publisher set one.
    pub expires_at: Option<Instant>,
    /// The publishing client, for No Local; `None` for wills and `$SYS` messages.
    pub publisher: Option<ClientId>,
    /// Which rules read it. Not stored: it matters only while the message is planned and
    /// routed.
    pub rules: RuleReach,
}

/// Which of the rule engine's rules a message is read by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuleReach {
    /// Every rule: the inline ones while its publish is planned, and the durable consumers
    /// subscribed to its topic.
    #[default]
    All,
    /// The inline rules only: a durable consumer's republish with direct dispatch off, and what
    /// inline rules make of one. Consumers never wait for room in a consumer's queue — their
    /// own or another's — so a cycle of rules cannot stall them.
    Inline,
    /// No rule: a republish with direct dispatch (rules do not read their own outputs).
    None,
    /// Subscribers only: no rule and no sink (a sink's dead letters, which would otherwise
    /// loop through a sink that reads their topic).
    Subscribers,
}

impl Message {
    /// The properties to keep with a message: the one shared empty set when `p` is empty.
    pub fn properties_of(p: PublishProperties) -> Arc<PublishProperties> {
        static EMPTY: std::sync::OnceLock<Arc<PublishProperties>> = std::sync::OnceLock::new();
        if p == PublishProperties::default() {
            EMPTY.get_or_init(Default::default).clone()
        } else {
            Arc::new(p)
        }
    }

    /// The bytes a queued copy of the message holds: payload, topic and properties (a large
    /// topic with an empty payload is not free).
    pub fn accounted_bytes(&self) -> usize {
        let p = &*self.properties;
        let strings = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let user: usize = p
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        self.payload.len()
            + self.topic.len()
            + strings(&p.response_topic)
            + strings(&p.content_type)
            + p.correlation_data.as_ref().map_or(0, Bytes::len)
            + user
    }

    /// The message with its topic, payload and correlation data in allocations of their own:
    /// for what is kept long (the retained index), so that it does not pin the whole read
    /// buffer its bytes were sliced from (up to the maximum packet size).
    pub fn detached(&self) -> Message {
        let mut properties = self.properties.clone();
        if let Some(c) = &properties.correlation_data {
            let copied = Bytes::copy_from_slice(c);
            Arc::make_mut(&mut properties).correlation_data = Some(copied);
        }
        Message {
            id: self.id,
            topic: ByteStr::from_str_copy(&self.topic),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties,
            expires_at: self.expires_at,
            publisher: self.publisher.clone(),
            rules: self.rules,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds of expiry left, rounded up, for the Message Expiry Interval sent on.
    pub fn remaining_expiry_secs(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            secs.clamp(1, u64::from(u32::MAX)) as u32
        })
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The QoS of this delivery: the publish QoS capped by the granted QoS.
    pub qos: QoS,
    /// The RETAIN flag to send: set for retained messages sent on subscribe, and for
    /// subscriptions with Retain As Published.
    pub retain: bool,
    /// Subscription Identifiers of every matching subscription of this session.
    pub subscription_ids: Vec<u32>,
    /// The shared subscription group this delivery came through, if any.
    pub shared_group: Option<Arc<str>>,
}

impl Delivery {
    /// What the delivery counts against the queue byte limits: its message's
    /// [`Message::accounted_bytes`].
    pub fn accounted_bytes(&self) -> usize {
        self.message.accounted_bytes()
    }
}

/// State of an outbound delivery in flight (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundState {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitingPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitingPubRec,
    /// PUBREC received and PUBREL sent, waiting for PUBCOMP.
    AwaitingPubComp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inflight {
    pub packet_id: PacketId,
    pub delivery: Delivery,
    pub state: OutboundState,
}

/// What the connection sends for an outbound delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A PUBLISH (`packet_id` 0 for QoS 0).
    Publish {
        packet_id: PacketId,
        delivery: Delivery,
        dup: bool,
    },
    /// A PUBREL for a delivery the client has PUBRECed.
    PubRel { packet_id: PacketId },
}

/// A delivery waiting in the session queue. QoS 1/2 deliveries get their packet identifier
/// when they are queued, not when they are sent, so that the identifier can be written to the
/// log with the delivery: after a crash a QoS 2 message goes out again under the same
/// identifier and the receiver's own de-duplication applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub packet_id: PacketId,
    pub delivery: Delivery,
    /// The delivery may already have been sent (it was recovered from disk): send with DUP.
    pub resend: bool,
}

/// A queued delivery of a persistent session whose message body is not held in memory (it is
/// in the durable image or the store): recovered from disk, or paged out while the session is
/// offline ([`Session::page_out`], [`Session::commit_paged`]). It keeps its place and its
/// packet identifier until a connection resumes the session and the broker pages the bodies in
/// ([`Session::take_paged`], then [`Session::restore_paged_in`]). A large offline backlog thus
/// costs memory for its metadata only.
#[derive(Debug, Clone, PartialEq)]
pub struct PagedDelivery {
    pub packet_id: PacketId,
    pub message_id: u64,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub shared_group: Option<Arc<str>>,
    /// The client had sent PUBREC: PUBREL is due, never the PUBLISH again.
    pub awaiting_pubcomp: bool,
    /// It may have been sent before: send with DUP.
    pub resend: bool,
    /// Payload bytes, counted against the limits (0 when recovered: unknown until read).
    pub bytes: usize,
    /// When its message expires: an expired paged delivery is dropped without its body
    /// ([`Session::purge_expired`]), so it holds no queue room.
    pub expires_at: Option<Instant>,
}

impl PagedDelivery {
    fn of(packet_id: PacketId, d: &Delivery, resend: bool) -> PagedDelivery {
        PagedDelivery {
            packet_id,
            message_id: d.message.id,
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids.clone(),
            shared_group: d.shared_group.clone(),
            awaiting_pubcomp: false,
            resend,
            bytes: d.accounted_bytes(),
            expires_at: d.message.expires_at,
        }
    }
}

/// Outcome of [`Session::reserve`] and [`Session::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Room was reserved or the delivery queued, under this packet identifier (0 for QoS 0).
    Queued(PacketId),
    /// A QoS 0 delivery found the queue full and was dropped.
    DroppedQos0,
    /// A QoS 1/2 delivery found the queue full (or all its packet identifiers in use); it
    /// was not queued and the publisher must be told (v5 0x97) or held back.
    Full,
}

/// Outcome of a PUBREC from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubRecOutcome {
    /// Send PUBREL; the delivery now awaits PUBCOMP.
    Release,
    /// A repeated PUBREC for a delivery already awaiting PUBCOMP: send PUBREL again.
    ReleaseAgain,
    /// The client refused the message (reason ≥ 0x80): the flow ends, nothing to send. With
    /// the id of the message whose delivery this removed (the caller logs the removal); `None`
    /// if the delivery already awaited PUBCOMP and stays.
    Refused(Option<u64>),
    /// No QoS 2 delivery with this packet identifier awaits PUBREC: send PUBREL 0x92.
    Unknown,
}

/// A client acknowledged a packet identifier that is not in flight in the right state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet identifier {0} is not in flight in a state that accepts this acknowledgement")]
pub struct UnknownPacketId(pub PacketId);

/// Per-session limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
}

/// A subscription as the session remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// The session state machine.
#[derive(Debug)]
pub struct Session {
    pub client_id: ClientId,
    pub protocol: ProtocolVersion,
    /// Session Expiry Interval in seconds; 0 ends the session with its connection,
    /// `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// Filter (as subscribed, share prefix included) → options.
    pub subscriptions: HashMap<String, SubscriptionRecord>,
    queue: VecDeque<Queued>,
    /// QoS 1/2 deliveries whose bodies are not in memory. They follow the QoS 1/2 deliveries
    /// of `queue`: while any is paged (or being paged in), every new QoS 1/2 delivery of a
    /// persistent session is paged too ([`Self::pages_new`]), and bodies paged in join the
    /// back of `queue` ([`Self::take_paged_front`], [`Self::restore_paged_in`]).
    paged: VecDeque<PagedDelivery>,
    /// Deliveries taken from the front of `paged` whose bodies are being loaded.
    paging_in: usize,
    /// Paged in after the connection resumed the session, awaiting PUBCOMP: their PUBREL is
    /// sent again by [`Self::next_publish`] ([`Self::resume`] sends those in flight then).
    /// Boxed, as `inbound_refused`: rare, and every session (idle connections too) carries
    /// the field.
    #[allow(clippy::box_collection)] // one pointer instead of a whole collection per session
    rel_due: Option<Box<VecDeque<PacketId>>>,
    /// Their payload bytes as far as known.
    paged_bytes: usize,
    queued_bytes: usize,
    /// Reservations made by [`Self::reserve`] and not yet committed or cancelled: they count
    /// against the limits so that a reservation never overfills the queue.
    reserved_messages: usize,
    reserved_bytes: usize,
    inflight: VecDeque<Inflight>,
    window: u16,
    next_packet_id: PacketId,
    /// Identifiers go up to this (see [`PacketId`]).
    max_packet_id: PacketId,
    /// Packet identifiers of queued QoS 1/2 deliveries, in-flight deliveries and reservations.
    used_packet_ids: HashSet<PacketId>,
    /// Packet identifiers (with message ids) of outbound deliveries removed without an
    /// acknowledgement (expired, too large for the client, undeliverable), for the persistence
    /// layer to log. Drained by [`Self::take_removed`].
    removed: Vec<(PacketId, u64)>,
    inbound_awaiting_rel: HashSet<u16>,
    /// Inbound QoS 2 ids answered PUBREC 0x80 (a delivered-mode sink did not confirm): a
    /// re-send with DUP is that message again, a PUBLISH without DUP a new one.
    #[allow(clippy::box_collection)] // as `rel_due`
    inbound_refused: Option<Box<HashSet<u16>>>,
    /// Outputs a durable consumer (a rule) published for messages it has not acknowledged
    /// yet: (message id, output index). Empty for every other session.
    produced: BTreeSet<(u64, u32)>,
    limits: SessionLimits,
    /// QoS 0 deliveries dropped because the queue was full.
    pub dropped_qos0: u64,
    /// Deliveries dropped because their message expired before they could be sent.
    pub expired: u64,
}

impl Session {
    pub fn new(client_id: ClientId, protocol: ProtocolVersion, limits: SessionLimits) -> Self {
        Session {
            client_id,
            protocol,
            expiry_interval: 0,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            paged: VecDeque::new(),
            paging_in: 0,
            rel_due: None,
            paged_bytes: 0,
            queued_bytes: 0,
            reserved_messages: 0,
            reserved_bytes: 0,
            inflight: VecDeque::new(),
            window: 1,
            next_packet_id: 1,
            max_packet_id: MAX_MQTT_PACKET_ID,
            used_packet_ids: HashSet::new(),
            removed: Vec::new(),
            inbound_awaiting_rel: HashSet::new(),
            inbound_refused: None,
            produced: BTreeSet::new(),
            limits,
            dropped_qos0: 0,
            expired: 0,
        }
    }

    /// Sets the outbound in-flight window (the client's Receive Maximum) for this connection.
    pub fn set_limits(&mut self, limits: SessionLimits) {
        self.limits = limits;
    }

    pub fn set_window(&mut self, window: u16) {
        self.window = window.max(1);
    }

    /// Lets a broker-internal reader's deliveries take identifiers up to `max` (at least
    /// 65,535; see [`PacketId`]).
    pub fn set_max_packet_id(&mut self, max: PacketId) {
        self.max_packet_id = max.max(MAX_MQTT_PACKET_ID);
    }

    /// Deliveries waiting to be sent, paged out ones (and those being paged in) included.
    pub fn queued_len(&self) -> usize {
        self.queue.len() + self.paged.len() + self.paging_in
    }

    /// Payload bytes queued or reserved.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes + self.reserved_bytes + self.paged_bytes
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Deliveries wait for room in the in-flight window: the client's throughput is bound by
    /// how fast in-flight deliveries complete.
    pub fn window_bound(&self) -> bool {
        self.inflight.len() >= usize::from(self.window) && self.queued_len() > 0
    }

    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    pub fn queued(&self) -> impl Iterator<Item = &Queued> {
        self.queue.iter()
    }

    /// Whether a delivery of `bytes` payload bytes would fit the queue limits.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.queued_len() + self.reserved_messages < self.limits.max_queued_messages
            && self.queued_bytes() + bytes <= self.limits.max_queued_bytes
    }

    /// Reserves room (and for QoS 1/2 a packet identifier) for a delivery that will be queued
    /// by [`Self::commit`] once it is durable, or released by [`Self::cancel`].
    /// `global_room` is whether the broker-wide byte cap has room for it.
    pub fn reserve(&mut self, qos: QoS, bytes: usize, global_room: bool) -> Enqueued {
        if !global_room || !self.has_room(bytes) {
            if qos == QoS::AtMostOnce {
                self.dropped_qos0 += 1;
                return Enqueued::DroppedQos0;
            }
            return Enqueued::Full;
        }
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            match self.allocate_packet_id() {
                Some(id) => id,
                None => return Enqueued::Full,
            }
        };
        self.reserved_messages += 1;
        self.reserved_bytes += bytes;
        Enqueued::Queued(packet_id)
    }

    /// Queues a delivery whose room was reserved under `packet_id`.
    pub fn commit(&mut self, packet_id: PacketId, delivery: Delivery) {
        let bytes = delivery.accounted_bytes();
        self.reserved_messages = self.reserved_messages.saturating_sub(1);
        self.reserved_bytes = self.reserved_bytes.saturating_sub(bytes);
        self.queued_bytes += bytes;
        self.queue.push_back(Queued {
            packet_id,
            delivery,
            resend: false,
        });
    }

    /// Releases a reservation that will not be committed.
    pub fn cancel(&mut self, packet_id: PacketId, bytes: usize) {
        self.reserved_messages = self.reserved_messages.saturating_sub(1);
        self.reserved_bytes = self.reserved_bytes.saturating_sub(bytes);
        if packet_id != 0 {
            self.used_packet_ids.remove(&packet_id);
        }
    }

    /// Reserves and commits at once (deliveries that need no durable record).
    pub fn enqueue(&mut self, delivery: Delivery, global_room: bool) -> Enqueued {
        let result = self.reserve(delivery.qos, delivery.accounted_bytes(), global_room);
        if let Enqueued::Queued(packet_id) = result {
            self.commit(packet_id, delivery);
        }
        result
    }

    /// Puts back a delivery recovered from disk without its body (see [`PagedDelivery`]).
    pub fn restore_paged(&mut self, d: PagedDelivery) {
        if d.packet_id != 0 {
            self.used_packet_ids.insert(d.packet_id);
        }
        self.paged_bytes += d.bytes;
        self.paged.push_back(d);
    }

    /// Queues a durable delivery whose room was reserved under `packet_id` (QoS 1/2) paged
    /// out: for a persistent session with no connection, whose body the durable image or the
    /// store holds.
    pub fn commit_paged(&mut self, packet_id: PacketId, delivery: &Delivery) {
        let bytes = delivery.accounted_bytes();
        self.reserved_messages = self.reserved_messages.saturating_sub(1);
        self.reserved_bytes = self.reserved_bytes.saturating_sub(bytes);
        self.paged_bytes += bytes;
        self.paged
            .push_back(PagedDelivery::of(packet_id, delivery, false));
    }

    /// Pages out the queued QoS 1/2 deliveries (a persistent session whose connection went
    /// away; every one of them is durable) in front of those already paged, keeping their
    /// order; QoS 0 ones stay queued. Not while bodies are being paged in: `false` then, and
    /// the page-in pages out when it ends.
    pub fn page_out(&mut self) -> bool {
        if self.paging_in > 0 {
            return false;
        }
        if self.queue.iter().all(|q| q.packet_id == 0) {
            return true;
        }
        let mut kept = VecDeque::new();
        let mut out = VecDeque::with_capacity(self.queue.len() + self.paged.len());
        for q in self.queue.drain(..) {
            if q.packet_id == 0 {
                kept.push_back(q);
                continue;
            }
            let bytes = q.delivery.accounted_bytes();
            self.queued_bytes -= bytes;
            self.paged_bytes += bytes;
            out.push_back(PagedDelivery::of(q.packet_id, &q.delivery, q.resend));
        }
        out.extend(self.paged.drain(..));
        self.paged = out;
        self.queue = kept;
        true
    }

    /// Whether a new QoS 1/2 delivery of this (persistent) session is to be queued paged out:
    /// some are paged already or being paged in (it must follow them), or `in_memory`
    /// deliveries are queued in memory already.
    pub fn pages_new(&self, in_memory: usize) -> bool {
        !self.paged.is_empty() || self.paging_in > 0 || self.queue.len() >= in_memory
    }

    /// Whether the next paged-out deliveries should be paged in: some are, none is being
    /// loaded, and fewer than `low` deliveries are queued in memory.
    pub fn wants_page_in(&self, low: usize) -> bool {
        !self.paged.is_empty() && self.paging_in == 0 && self.queue.len() < low
    }

    /// Takes up to `n` paged-out deliveries from the front, in queue order, to load their
    /// bodies; they stay counted against the limits, and new deliveries are paged, until
    /// [`Self::restore_paged_in`].
    pub fn take_paged_front(&mut self, n: usize) -> Vec<PagedDelivery> {
        let n = n.min(self.paged.len());
        let taken: Vec<PagedDelivery> = self.paged.drain(..n).collect();
        self.paging_in += taken.len();
        taken
    }

    /// Makes room for `n` more paged-out deliveries at once (recovery knows how many).
    pub fn reserve_paged(&mut self, n: usize) {
        self.paged.reserve_exact(n);
    }

    /// Whether some deliveries wait to be paged in.
    pub fn has_paged(&self) -> bool {
        !self.paged.is_empty()
    }

    /// Puts deliveries taken by [`Self::take_paged_front`] back at the back of the queue
    /// (behind the QoS 1/2 deliveries still in memory, which are older), in the order given
    /// (`None`: the body could not be loaded and the delivery is dropped, its packet id freed).
    pub fn restore_paged_in(&mut self, loaded: Vec<(PagedDelivery, Option<Delivery>)>) {
        self.paging_in = self.paging_in.saturating_sub(loaded.len());
        for (p, delivery) in loaded {
            self.paged_bytes = self.paged_bytes.saturating_sub(p.bytes);
            let Some(delivery) = delivery else {
                self.remove(p.packet_id, p.message_id);
                continue;
            };
            if p.awaiting_pubcomp {
                self.inflight.push_back(Inflight {
                    packet_id: p.packet_id,
                    delivery,
                    state: OutboundState::AwaitingPubComp,
                });
                self.rel_due.get_or_insert_default().push_back(p.packet_id);
            } else {
                self.queued_bytes += delivery.accounted_bytes();
                self.queue.push_back(Queued {
                    packet_id: p.packet_id,
                    delivery,
                    resend: p.resend,
                });
            }
        }
    }

    /// Puts deliveries taken by [`Self::take_paged_front`] back in front of the paged ones
    /// (their bodies could not be loaded now).
    pub fn unpage(&mut self, taken: Vec<PagedDelivery>) {
        self.paging_in = self.paging_in.saturating_sub(taken.len());
        for d in taken.into_iter().rev() {
            self.paged.push_front(d);
        }
    }

    /// Puts back a delivery recovered from disk: one that awaited PUBCOMP goes straight into
    /// the in-flight window (PUBREL is re-sent on resume), any other is queued to be sent again
    /// with DUP, in the order given.
    pub fn restore(&mut self, packet_id: PacketId, delivery: Delivery, awaiting_pubcomp: bool) {
        if packet_id != 0 {
            self.used_packet_ids.insert(packet_id);
        }
        if awaiting_pubcomp {
            let state = OutboundState::AwaitingPubComp;
            self.inflight.push_back(Inflight {
                packet_id,
                delivery,
                state,
            });
        } else {
            self.queued_bytes += delivery.accounted_bytes();
            self.queue.push_back(Queued {
                packet_id,
                delivery,
                resend: true,
            });
        }
    }

    /// `(packet id, message id)` of deliveries removed without acknowledgement since the last
    /// call.
    pub fn take_removed(&mut self) -> Vec<(PacketId, u64)> {
        std::mem::take(&mut self.removed)
    }

    /// Whether [`Self::next_publish`] would return something (ignoring expiry).
    pub fn has_sendable(&self) -> bool {
        match self.queue.front() {
            None => false,
            Some(q) => {
                q.delivery.qos == QoS::AtMostOnce || self.inflight.len() < self.window as usize
            }
        }
    }

    /// A free packet identifier, or `None` when all of them (up to `max_packet_id`) are in
    /// use.
    fn allocate_packet_id(&mut self) -> Option<PacketId> {
        if self.used_packet_ids.len() >= self.max_packet_id as usize {
            return None;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = match id >= self.max_packet_id {
                true => 1,
                false => id + 1,
            };
            if self.used_packet_ids.insert(id) {
                return Some(id);
            }
        }
    }

    /// Frees a packet identifier whose delivery completed (the caller logs that).
    fn release(&mut self, packet_id: PacketId) {
        if packet_id != 0 {
            self.used_packet_ids.remove(&packet_id);
        }
    }

    /// Frees the packet identifier of a delivery of `message_id` removed without an
    /// acknowledgement, and keeps the removal for [`Self::take_removed`].
    fn remove(&mut self, packet_id: PacketId, message_id: u64) {
        if packet_id != 0 {
            self.used_packet_ids.remove(&packet_id);
            self.removed.push((packet_id, message_id));
        }
    }

    /// The next delivery to send, if the window allows: QoS 0 deliveries always leave, QoS 1/2
    /// ones enter the in-flight window under the packet identifier they were queued with.
    /// Deliveries whose message expired while queued are dropped on the way [MQTT-3.3.2-5].
    pub fn next_publish(&mut self, now: Instant) -> Option<Outgoing> {
        while let Some(packet_id) = self.rel_due.as_mut().and_then(|r| r.pop_front()) {
            let due = self
                .inflight
                .iter()
                .any(|i| i.packet_id == packet_id && i.state == OutboundState::AwaitingPubComp);
            if due {
                return Some(Outgoing::PubRel { packet_id });
            }
        }
        loop {
            let front = self.queue.front()?;
            if front.delivery.qos != QoS::AtMostOnce && self.inflight.len() >= self.window as usize
            {
                return None;
            }
            let Queued {
                packet_id,
                delivery,
                resend,
            } = self.queue.pop_front()?;
            self.queued_bytes -= delivery.accounted_bytes();
            if delivery.message.is_expired(now) {
                self.expired += 1;
                self.remove(packet_id, delivery.message.id);
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                return Some(Outgoing::Publish {
                    packet_id: 0,
                    delivery,
                    dup: false,
                });
            }
            let state = if delivery.qos == QoS::AtLeastOnce {
                OutboundState::AwaitingPubAck
            } else {
                OutboundState::AwaitingPubRec
            };
            self.inflight.push_back(Inflight {
                packet_id,
                delivery: delivery.clone(),
                state,
            });
            return Some(Outgoing::Publish {
                packet_id,
                delivery,
                dup: resend,
            });
        }
    }

    /// Drops queued and paged-out deliveries whose message expired, so that they do not hold
    /// queue room [MQTT-3.3.2-5]. Their removal is to be logged (see [`Self::take_removed`]).
    pub fn purge_expired(&mut self, now: Instant) {
        let expired = |at: Option<Instant>| at.is_some_and(|t| now >= t);
        // Most queues hold nothing that expires: look before rebuilding (a long backlog is
        // scanned, not moved, every period).
        let any_queued = self
            .queue
            .iter()
            .any(|q| expired(q.delivery.message.expires_at));
        let any_paged = self
            .paged
            .iter()
            .any(|p| expired(p.expires_at) && !p.awaiting_pubcomp);
        if !any_queued && !any_paged {
            return;
        }
        let mut gone = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for q in self.queue.drain(..) {
            if expired(q.delivery.message.expires_at) {
                self.queued_bytes -= q.delivery.accounted_bytes();
                gone.push((q.packet_id, q.delivery.message.id));
            } else {
                kept.push_back(q);
            }
        }
        self.queue = kept;
        // A paged delivery already PUBRECed is owed its PUBREL whatever the expiry.
        let mut kept = VecDeque::with_capacity(self.paged.len());
        for p in self.paged.drain(..) {
            if expired(p.expires_at) && !p.awaiting_pubcomp {
                self.paged_bytes -= p.bytes;
                gone.push((p.packet_id, p.message_id));
            } else {
                kept.push_back(p);
            }
        }
        self.paged = kept;
        self.expired += gone.len() as u64;
        for (packet_id, message_id) in gone {
            self.remove(packet_id, message_id);
        }
    }

    /// Whether anything is queued or paged out (expiry purges have something to look at).
    pub fn has_backlog(&self) -> bool {
        !self.queue.is_empty() || !self.paged.is_empty()
    }

    fn take_inflight(&mut self, packet_id: PacketId, state: OutboundState) -> Option<Inflight> {
        let pos = self
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.state == state)?;
        self.inflight.remove(pos)
    }

    /// PUBACK from the client: the QoS 1 delivery is complete.
    /// The packet identifier is free again; the caller logs the removal.
    pub fn on_puback(&mut self, packet_id: PacketId) -> Result<Delivery, UnknownPacketId> {
        let done = self
            .take_inflight(packet_id, OutboundState::AwaitingPubAck)
            .ok_or(UnknownPacketId(packet_id))?;
        self.release(packet_id);
        Ok(done.delivery)
    }

    /// PUBREC from the client, with its reason code.
    pub fn on_pubrec(&mut self, packet_id: PacketId, refused: bool) -> PubRecOutcome {
        let Some(entry) = self
            .inflight
            .iter_mut()
            .find(|i| i.packet_id == packet_id && i.state != OutboundState::AwaitingPubAck)
        else {
            return PubRecOutcome::Unknown;
        };
        if refused {
            if entry.state != OutboundState::AwaitingPubRec {
                return PubRecOutcome::Refused(None);
            }
            let removed = self.take_inflight(packet_id, OutboundState::AwaitingPubRec);
            let message_id = removed.map(|r| r.delivery.message.id);
            if message_id.is_some() {
                self.release(packet_id);
            }
            return PubRecOutcome::Refused(message_id);
        }
        // A repeated PUBREC (the client resent it) is answered with PUBREL again; nothing
        // changes, so nothing is logged.
        if entry.state == OutboundState::AwaitingPubComp {
            return PubRecOutcome::ReleaseAgain;
        }
        entry.state = OutboundState::AwaitingPubComp;
        PubRecOutcome::Release
    }

    /// PUBCOMP from the client: the QoS 2 delivery is complete.
    /// The packet identifier is free again; the caller logs the removal.
    pub fn on_pubcomp(&mut self, packet_id: PacketId) -> Result<Delivery, UnknownPacketId> {
        let done = self
            .take_inflight(packet_id, OutboundState::AwaitingPubComp)
            .ok_or(UnknownPacketId(packet_id))?;
        self.release(packet_id);
        Ok(done.delivery)
    }

    /// Drops an in-flight delivery as if it completed: used when a PUBLISH exceeds the client's
    /// Maximum Packet Size, which the spec says to treat as sent and acknowledged.
    pub fn discard_inflight(&mut self, packet_id: PacketId) {
        let pos = self.inflight.iter().position(|i| i.packet_id == packet_id);
        if let Some(gone) = pos.and_then(|pos| self.inflight.remove(pos)) {
            self.remove(packet_id, gone.delivery.message.id);
        }
    }

    /// What to re-send when a connection resumes this session: every PUBLISH not yet
    /// acknowledged, with DUP, and a PUBREL for every delivery already PUBRECed (§4.4).
    pub fn resume(&mut self) -> Vec<Outgoing> {
        self.rel_due = None;
        self.inflight
            .iter()
            .map(|i| match i.state {
                OutboundState::AwaitingPubComp => Outgoing::PubRel {
                    packet_id: i.packet_id,
                },
                _ => Outgoing::Publish {
                    packet_id: i.packet_id,
                    delivery: i.delivery.clone(),
                    dup: true,
                },
            })
            .collect()
    }

    /// Takes out the deliveries of shared subscriptions that another group member may receive
    /// instead, with their packet identifiers: every queued one, and in-flight QoS 1 ones.
    /// In-flight QoS 2 deliveries stay, since the client may already hold them
    /// [MQTT-4.8.2-4]. The identifiers stay in use until each delivery is either moved
    /// ([`Self::release_moved`]) or given back ([`Self::give_back`]): until another session
    /// durably has a delivery, this one's record of it stands.
    pub fn take_shared_for_redispatch(&mut self) -> Vec<(PacketId, Delivery)> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for q in self.queue.drain(..) {
            if q.delivery.shared_group.is_some() {
                self.queued_bytes -= q.delivery.accounted_bytes();
                out.push((q.packet_id, q.delivery));
            } else {
                kept.push_back(q);
            }
        }
        self.queue = kept;
        let mut kept = VecDeque::with_capacity(self.inflight.len());
        for i in self.inflight.drain(..) {
            if i.delivery.shared_group.is_some() && i.state == OutboundState::AwaitingPubAck {
                out.push((i.packet_id, i.delivery));
            } else {
                kept.push_back(i);
            }
        }
        self.inflight = kept;
        out
    }

    /// Takes out the paged-out deliveries of shared subscriptions (those not awaiting PUBCOMP),
    /// for their bodies to be loaded and the deliveries moved like those of
    /// [`Self::take_shared_for_redispatch`]; their identifiers stay in use likewise.
    pub fn take_shared_paged(&mut self) -> Vec<PagedDelivery> {
        let movable = |p: &PagedDelivery| p.shared_group.is_some() && !p.awaiting_pubcomp;
        if !self.paged.iter().any(movable) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.paged.len());
        for p in self.paged.drain(..) {
            if movable(&p) {
                self.paged_bytes = self.paged_bytes.saturating_sub(p.bytes);
                out.push(p);
            } else {
                kept.push_back(p);
            }
        }
        self.paged = kept;
        out
    }

    /// Frees the identifier of a delivery taken by [`Self::take_shared_for_redispatch`] that
    /// another session now durably holds (the caller logged its removal in that commit).
    pub fn release_moved(&mut self, packet_id: PacketId) {
        self.release(packet_id);
    }

    /// Puts back a delivery taken by [`Self::take_shared_for_redispatch`] that no other member
    /// could take, under its identifier: paged out if `paged` (an offline persistent
    /// session), otherwise queued to be sent again.
    pub fn give_back(&mut self, packet_id: PacketId, delivery: Delivery, paged: bool) {
        if paged && packet_id != 0 {
            self.paged_bytes += delivery.accounted_bytes();
            self.paged
                .push_back(PagedDelivery::of(packet_id, &delivery, true));
        } else {
            self.restore(packet_id, delivery, false);
        }
    }

    /// Empties the queue and the in-flight window (the session ends).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.paged.clear();
        self.paging_in = 0;
        self.rel_due = None;
        self.paged_bytes = 0;
        self.inflight.clear();
        self.inbound_awaiting_rel.clear();
        self.inbound_refused = None;
        self.produced.clear();
        self.used_packet_ids.clear();
        self.removed.clear();
        self.queued_bytes = 0;
        self.reserved_messages = 0;
        self.reserved_bytes = 0;
    }

    /// An inbound QoS 2 PUBLISH with `packet_id`: returns `true` if it is new and must be routed,
    /// `false` if it is a re-send of one already received (answer PUBREC, do not route again).
    pub fn inbound_qos2_is_new(&self, packet_id: u16) -> bool {
        !self.inbound_awaiting_rel.contains(&packet_id)
    }

    /// Records that the inbound QoS 2 PUBLISH `packet_id` was accepted and PUBREC is due.
    pub fn inbound_qos2_received(&mut self, packet_id: u16) {
        if let Some(refused) = self.inbound_refused.as_mut() {
            refused.remove(&packet_id);
        }
        self.inbound_awaiting_rel.insert(packet_id);
    }

    /// The inbound QoS 2 `packet_id` is answered PUBREC 0x80: it no longer awaits PUBREL, and
    /// a re-send of it with DUP is recognised ([`Self::inbound_qos2_refused`]). `false` if it
    /// was not awaiting PUBREL.
    pub fn inbound_refuse(&mut self, packet_id: u16) -> bool {
        let found = self.inbound_awaiting_rel.remove(&packet_id);
        if found {
            self.restore_inbound_refused(packet_id);
        }
        found
    }

    /// Whether `packet_id` was answered PUBREC 0x80 and not used for a new message since.
    pub fn inbound_qos2_refused(&self, packet_id: u16) -> bool {
        self.inbound_refused
            .as_ref()
            .is_some_and(|r| r.contains(&packet_id))
    }

    /// Restores an id [`Self::inbound_refuse`] marked (from the log).
    pub fn restore_inbound_refused(&mut self, packet_id: u16) {
        self.inbound_refused
            .get_or_insert_default()
            .insert(packet_id);
    }

    /// PUBREL from the client: returns whether `packet_id` was awaiting it (PUBCOMP 0x00), or
    /// not (PUBCOMP 0x92 Packet Identifier not found).
    pub fn inbound_pubrel(&mut self, packet_id: u16) -> bool {
        self.inbound_awaiting_rel.remove(&packet_id)
    }

    /// Marks output `index` of message `message_id` as published by this (consumer) session;
    /// `false` if it was already (a message processed again after a crash).
    pub fn claim_output(&mut self, message_id: u64, index: u32) -> bool {
        self.produced.insert((message_id, index))
    }

    /// Gives back a claimed output whose message was not published.
    pub fn release_output(&mut self, message_id: u64, index: u32) {
        self.produced.remove(&(message_id, index));
    }

    /// Forgets the outputs of `message_id` (its delivery was acknowledged).
    pub fn forget_outputs(&mut self, message_id: u64) {
        if !self.produced.is_empty() {
            let outputs: Vec<_> = self
                .produced
                .range((message_id, 0)..=(message_id, u32::MAX))
                .copied()
                .collect();
            for o in outputs {
                self.produced.remove(&o);
            }
        }
    }

    /// Inbound QoS 2 identifiers awaiting PUBREL: they count against the Receive Maximum.
    pub fn inbound_awaiting_rel(&self) -> usize {
        self.inbound_awaiting_rel.len()
    }
}
