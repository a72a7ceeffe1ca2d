//! The broker: the session registry, the router and the retained store, shared by every
//! connection task, plus the background tasks (session expiry, delayed wills, `$SYS`).
//!
//! # Locks
//! All locks are `parking_lot` locks held for short, non-async sections, in this order:
//! registry → session slot → router / retained. Routing collects its targets under the router's
//! read lock, releases it, and only then locks each target session; whether a session is
//! connected is an atomic so that shared-subscription choice needs no session lock.
//!
//! # Durability
//! Every acknowledgement a connection sends waits for the records of what it acknowledges to
//! be durable (see `crate::persistence`): either inside an `async` broker method
//! ([`Broker::connect`], [`Broker::publish`], [`Broker::subscribe`], [`Broker::unsubscribe`])
//! or, pipelined, through a [`PendingDurable`] the connection awaits in order before it sends
//! the acknowledgement ([`Broker::publish_begin`] with [`Broker::settle`],
//! [`Broker::outbound_pubrec`], [`Broker::inbound_pubrel`]). Routing reserves queue room and
//! packet identifiers, logs the records, and only once they are durable makes the deliveries
//! visible, so no subscriber ever sees a message that is not yet durable. Sessions with expiry
//! 0 write nothing.
//!
//! A connection taking a session over waits (at most [`TAKEOVER_WAIT`]) for the connection it
//! replaces to finish: that one's last records precede the new session record in the log, so
//! the new CONNACK's commit covers them, and no re-sent PUBLISH or PUBREL can overtake them.

pub mod connection;
pub mod metrics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use crate::codec::topic::parse_shared;
use crate::codec::{
    Connect, LastWill, PublishProperties, QoS, ReasonCode, RetainHandling, Subscribe,
    SubscriptionOptions,
};
use crate::config::Config;
use crate::persistence::convert::{
    now_ms, restore_message, restore_message_in, restore_will, store_message, store_subscription,
    store_will,
};
use crate::persistence::records::{Record, SessionRecord};
use crate::persistence::{self, PendingDurable, Persistence};
use crate::router::retained::RetainedStore;
use crate::router::{ClientId, Match, Router, Subscription};
use crate::session::{
    Delivery, Enqueued, Message, PagedDelivery, PubRecOutcome, Session, SessionLimits,
    SubscriptionRecord,
};

pub use metrics::Metrics;

/// How long a connection taking a session over waits for the connection it replaces to
/// finish (it waits only for fdatasyncs of records it already logged).
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// Identifies one network connection for the lifetime of the process.
pub type ConnId = u64;

/// A session and who is attached to it.
#[derive(Debug)]
pub struct SessionSlot {
    pub client_id: ClientId,
    state: Mutex<SlotState>,
    /// Wakes the connection task attached to this session when a delivery is queued.
    wake: Notify,
    /// Whether a connection is attached; read without the lock when choosing a shared
    /// subscription member.
    connected: AtomicBool,
    /// When the attached connection last took deliveries from the queue (ms since the broker
    /// started): a connected subscriber whose full queue has not drained for
    /// `limits.stalled_subscriber_ms` is stalled, and QoS 0 overflow for it is dropped.
    last_drain_ms: AtomicU64,
}

#[derive(Debug)]
struct SlotState {
    session: Session,
    /// The connection attached to the session, if any.
    owner: Option<ConnId>,
    /// Tells the attached connection it has been taken over.
    kick: Option<oneshot::Sender<()>>,
    /// Closes when the attached (or last attached) connection has finished (`Attached::alive`).
    owner_alive: Option<oneshot::Receiver<()>>,
    /// The will of the attached connection.
    will: Option<LastWill>,
    /// A will waiting for its Will Delay Interval after the connection closed, with the token
    /// that the delayed publisher must still find.
    pending_will: Option<(u64, LastWill)>,
    will_token: u64,
    disconnected_at: Option<Instant>,
    /// The session was removed from the registry; late deliveries are discarded.
    ended: bool,
    /// The session is in the durable image (it is persistent): its changes are logged.
    in_store: bool,
    /// Bumped whenever the session is replaced (Clean Start) or cleared (ended): a reservation
    /// or a page-in begun for an earlier generation is dropped, never applied to the new one.
    generation: u64,
}

impl SessionSlot {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

impl Broker {
    /// Milliseconds since the broker started (a cheap monotonic clock for slot bookkeeping).
    pub(crate) fn now_ms(&self) -> u64 {
        self.shared.started.elapsed().as_millis() as u64
    }

    /// The connection attached to `slot` took deliveries from its queue.
    pub(crate) fn drained(&self, slot: &SessionSlot) {
        slot.last_drain_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether a QoS 0 message meeting `slot`'s full queue should wait for room (the
    /// subscriber is connected and draining) rather than be dropped.
    fn qos0_waits_for(&self, slot: &SessionSlot) -> bool {
        let stall = self.shared.config.limits.stalled_subscriber_ms;
        stall > 0
            && slot.is_connected()
            && self
                .now_ms()
                .saturating_sub(slot.last_drain_ms.load(Ordering::Relaxed))
                < stall
    }
}

/// What [`Broker::publish`] did with a message.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Sessions the message was queued for.
    pub delivered: usize,
    /// Some QoS 1/2 target's queue was full, so nothing was placed or logged (a publish is all
    /// or nothing): the publisher must be refused (v5 0x97) or held back until
    /// [`Broker::retry_publish`] places the whole message.
    pub held: Option<PendingPublish>,
    /// The retained store was full: the message was delivered but not retained (counted).
    pub retained_refused: bool,
}

/// A publish waiting for queue room, with everything needed to place it whole later.
#[derive(Debug)]
pub struct PendingPublish {
    message: Arc<Message>,
    targets: Vec<(Arc<SessionSlot>, Delivery)>,
    records: Vec<Record>,
    retain_update: bool,
    /// The publisher's QoS 2 packet id, claimed in its session (see
    /// [`Broker::claim_inbound_qos2`]); logged as awaiting PUBREL with the message's records.
    inbound_qos2: Option<InboundClaim>,
    /// A QoS 0 target's full queue holds the message too, while that subscriber drains it
    /// (a client's publish can wait; a will or `$SYS` message cannot).
    qos0_may_wait: bool,
}

/// A QoS 2 packet id a connection marked as received in its session, in one step with the
/// duplicate check ([`Broker::claim_inbound_qos2`]), before its message is routed: a re-send
/// arriving meanwhile (on this or a taking-over connection) is a duplicate, never routed
/// twice. `generation` is the session's at the claim: the `InboundQos2` record is logged only
/// if the session is still that one (a Clean Start meanwhile must not inherit the id), and a
/// claim whose message is not placed is released only in that session.
#[derive(Debug, Clone)]
pub(crate) struct InboundClaim {
    pub(crate) slot: Arc<SessionSlot>,
    pub(crate) packet_id: u16,
    pub(crate) generation: u64,
}

/// What [`Broker::claim_inbound_qos2`] found.
#[derive(Debug)]
pub(crate) enum Claimed {
    /// The id was new and is now marked as received.
    New(InboundClaim),
    /// The id was already awaiting PUBREL: a re-send.
    Duplicate,
}

/// What [`Broker::publish_begin`] did with a message.
#[derive(Debug)]
pub(crate) enum Begun {
    /// A QoS 1/2 target's queue (or, for QoS 0, a draining subscriber's) is full: nothing was
    /// placed or logged, as for [`PublishOutcome::held`].
    Held(PendingPublish),
    /// Reserved and logged; visible once durable.
    Placed(Placed),
}

/// Deliveries reserved in their sessions (room and packet ids), invisible to their
/// connections until [`Broker::settle`] (after the records are durable) or given back by
/// [`Broker::cancel`].
#[derive(Debug)]
#[must_use]
pub(crate) struct Placement {
    /// Target, packet id, delivery, and the session generation the reservation was made in.
    reserved: Vec<(Arc<SessionSlot>, u16, Delivery, u64)>,
    /// A retained update to apply with the deliveries, with its place in log order.
    retain: Option<(Arc<Message>, u64)>,
}

impl Placement {
    /// How many sessions the message is placed for.
    pub(crate) fn len(&self) -> usize {
        self.reserved.len()
    }
}

/// What [`Broker::reserve_target`] did for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetReservation {
    Queued {
        packet_id: u16,
        generation: u64,
    },
    /// The session's queue (or the broker-wide cap) has no room for a QoS 1/2 delivery, or a
    /// QoS 0 one that waits for a draining subscriber.
    Full,
    DroppedQos0,
    /// The session ended meanwhile.
    Ended,
}

/// How [`Broker::reserve`] places deliveries.
#[derive(Debug, Clone, Copy)]
struct Reservation<'a> {
    /// A single full QoS 1/2 target that is draining its queue cancels every reservation, and
    /// nothing is logged; a full target that is not draining (offline or stalled) loses its
    /// copy (counted). Without it, full targets are returned and the rest placed.
    all_or_nothing: bool,
    /// A QoS 0 delivery waits (counts as full) for a connected, draining subscriber's queue.
    qos0_may_wait: bool,
    /// The publisher's claimed QoS 2 id, logged with the records.
    inbound_qos2: Option<&'a InboundClaim>,
}

/// What a SUBSCRIBE applied so far, to log, place, or undo.
struct AppliedSubscribe {
    in_store: bool,
    codes: Vec<ReasonCode>,
    records: Vec<Record>,
    retained: Vec<Delivery>,
    /// Room left in the session's queue for retained copies.
    room_messages: usize,
    room_bytes: usize,
    /// Each filter applied, with the subscription it replaced.
    undo: Vec<(String, Option<SubscriptionRecord>)>,
}

impl AppliedSubscribe {
    fn for_session(slot: &SessionSlot, cfg: &Config) -> AppliedSubscribe {
        let st = slot.state.lock();
        let limits = &cfg.limits;
        AppliedSubscribe {
            in_store: st.in_store,
            codes: Vec::new(),
            records: Vec::new(),
            retained: Vec::new(),
            room_messages: limits
                .max_queued_messages
                .saturating_sub(st.session.queued_len()),
            room_bytes: limits
                .max_queued_bytes
                .saturating_sub(st.session.queued_bytes()),
            undo: Vec::new(),
        }
    }
}

/// What [`Broker::reserve`] returns: the placement made (`None` when all-or-nothing met a
/// full queue), and the targets whose queue was full.
type Reserved = (Option<Placed>, Vec<(Arc<SessionSlot>, Delivery)>);

/// A [`Placement`] and the wait for its records.
#[derive(Debug)]
pub(crate) struct Placed {
    pub(crate) placement: Placement,
    pub(crate) durable: PendingDurable,
}

/// Result of attaching a connection to a session.
pub struct Attached {
    pub slot: Arc<SessionSlot>,
    pub session_present: bool,
    /// Notified when another connection takes the session over.
    pub kicked: oneshot::Receiver<()>,
    /// Held by the connection while it may still log or change the session; dropped once it
    /// has finished (its pending acknowledgements drained). A connection taking the session
    /// over waits for that before its CONNACK, so everything the old one logged is covered by
    /// the new one's commit and its session state is final.
    pub alive: oneshot::Sender<()>,
}

/// Why a CONNECT is refused before a session is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    ServerBusy,
    /// `limits.max_sessions` sessions exist and this CONNECT would create another.
    TooManySessions,
    /// The session record could not be made durable.
    NotDurable,
}

pub(crate) struct Shared {
    pub config: Config,
    sessions: Mutex<HashMap<ClientId, Arc<SessionSlot>>>,
    router: RwLock<Router<Arc<SessionSlot>>>,
    retained: RwLock<RetainedStore<Arc<Message>>>,
    pub metrics: Metrics,
    /// Payload bytes queued across all sessions, for `limits.max_queued_bytes_total`.
    queued_bytes_total: AtomicUsize,
    /// Wakes 3.x publishers held back by a full queue when queue room is freed.
    room: Notify,
    next_conn_id: AtomicU64,
    next_assigned_id: AtomicU64,
    started: Instant,
    shutdown: watch::Sender<bool>,
    /// `None` only for brokers built without a data directory (unit tests of routing).
    persistence: Option<Arc<Persistence>>,
    next_message_id: AtomicU64,
    /// Persistence failed: nothing more is acknowledged and the broker stops.
    failed: AtomicBool,
    /// Orders retained publishes against SUBSCRIBEs: a retained publish holds it shared from
    /// its routing plan until the retained store holds the message (across the WAL sync); a
    /// SUBSCRIBE holds it exclusively. A subscriber is therefore either in the plan (it gets the
    /// live copy) or subscribes after the store was updated (it gets the retained copy).
    retain_gate: Arc<tokio::sync::RwLock<()>>,
    /// Orders retained updates as the log does (see [`RetainOrder`]).
    retain_order: Mutex<RetainOrder>,
    /// One permit per connection that has not sent its CONNECT yet
    /// (`limits.max_pending_connections`).
    connecting: Arc<tokio::sync::Semaphore>,
}

/// Retained updates become visible in the order of their records in the log, not in the order
/// their fdatasyncs are noticed: two RETAIN publishes to one topic covered by one fdatasync
/// can wake up in either order, and the older must not win (a restart would bring the newer
/// back). Each update takes a version while its records are appended, under this lock; the
/// index applies an update only if no later version of its topic was applied first.
#[derive(Debug, Default)]
struct RetainOrder {
    next_version: u64,
    /// Topics with updates reserved but not yet settled or cancelled: how many, and the
    /// latest version applied meanwhile. A topic leaves the map with its last update, so the
    /// map holds only updates in flight.
    in_flight: HashMap<crate::codec::ByteStr, (usize, u64)>,
}

impl RetainOrder {
    fn reserve(&mut self, topic: &crate::codec::ByteStr) -> u64 {
        self.next_version += 1;
        self.in_flight.entry(topic.clone()).or_insert((0, 0)).0 += 1;
        self.next_version
    }

    /// Ends an update in flight; whether it is to be applied (no later one was).
    fn finish(&mut self, topic: &crate::codec::ByteStr, version: u64, applied: bool) -> bool {
        let Some(entry) = self.in_flight.get_mut(topic) else {
            return applied;
        };
        let apply = applied && version > entry.1;
        if apply {
            entry.1 = version;
        }
        entry.0 -= 1;
        if entry.0 == 0 {
            self.in_flight.remove(topic);
        }
        apply
    }
}

/// Persistence failed; the operation must not be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("persistence failed: not acknowledged")]
pub struct NotDurable;

/// A cheap, cloneable handle on the broker.
#[derive(Clone)]
pub struct Broker {
    pub(crate) shared: Arc<Shared>,
}

impl Broker {
    /// A broker that keeps its state in memory only (for tests of routing and protocol
    /// behaviour that do not need a data directory).
    pub fn new(config: Config) -> Broker {
        Self::build(config, None)
    }

    /// A broker over recovered persistent state: sessions, subscriptions and (paged-out)
    /// queues are restored before this returns; retained messages are read from the store on
    /// a thread of their own while the broker already serves, with the retain gate held, so
    /// that every SUBSCRIBE and every RETAIN publish waits until the retained index is whole.
    pub fn with_persistence(config: Config, persistence: Arc<Persistence>) -> Broker {
        let broker = Self::build(config, Some(persistence.clone()));
        let wills = persistence.with_image(|image| broker.restore(image));
        // Nothing else runs yet, so the gate is free; take it before anything can publish (a
        // restored will that is already due would read-lock it otherwise).
        let gate = broker.shared.retain_gate.clone().try_write_owned();
        if gate.is_err() {
            tracing::error!("the retain gate was taken before the retained index loaded");
        }
        for (slot, token, due_at_ms) in wills {
            let delay = Duration::from_millis(due_at_ms.saturating_sub(now_ms()));
            broker.schedule_will(slot, token, delay);
        }
        let loader = broker.clone();
        let load = move || {
            let started = std::time::Instant::now();
            let mut publishers = HashMap::new();
            let mut count = 0u64;
            let visited = persistence.visit_retained(&mut |m| {
                let topic = m.topic.clone();
                let message = restore_message_in(m, &mut publishers);
                loader.shared.retained.write().insert(&topic, message);
                count += 1;
            });
            match visited {
                Ok(()) => tracing::info!(
                    retained = count,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "retained messages loaded"
                ),
                // The store was readable at start; failing now means damaged data.
                Err(e) => loader.fatal(&e),
            }
            // Everything that holds the data directory goes before the gate opens (shutdown
            // waits for the gate).
            drop(persistence);
            drop(loader);
            drop(gate);
        };
        let spawned = std::thread::Builder::new()
            .name("keelmq-retained-load".into())
            .spawn(load);
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the retained-message loader");
            broker.begin_shutdown();
        }
        broker
    }

    fn build(config: Config, persistence: Option<Arc<Persistence>>) -> Broker {
        let (shutdown, _) = watch::channel(false);
        let first_id = persistence.as_ref().map_or(1, |p| p.next_message_id());
        let pending_connections = config.limits.max_pending_connections;
        Broker {
            shared: Arc::new(Shared {
                config,
                sessions: Mutex::new(HashMap::new()),
                router: RwLock::new(Router::new()),
                retained: RwLock::new(RetainedStore::new()),
                metrics: Metrics::default(),
                queued_bytes_total: AtomicUsize::new(0),
                room: Notify::new(),
                next_conn_id: AtomicU64::new(1),
                next_assigned_id: AtomicU64::new(1),
                started: Instant::now(),
                shutdown,
                persistence,
                next_message_id: AtomicU64::new(first_id),
                failed: AtomicBool::new(false),
                retain_gate: Arc::new(tokio::sync::RwLock::new(())),
                retain_order: Mutex::new(RetainOrder::default()),
                connecting: Arc::new(tokio::sync::Semaphore::new(pending_connections)),
            }),
        }
    }

    /// Rebuilds sessions, subscriptions and queues from the durable image. Queue entries come
    /// back paged out (their bodies stay in the store until the session resumes). Returns the
    /// wills that were waiting for their delay, to schedule: (session, will token, due time in
    /// ms since the Unix epoch).
    fn restore(&self, image: &persistence::Image) -> Vec<(Arc<SessionSlot>, u64, u64)> {
        let now = Instant::now();
        let mut wills = Vec::new();
        for (client, si) in &image.sessions {
            let Some(record) = &si.record else { continue };
            let client_id: ClientId = client.as_str().into();
            let protocol = match record.protocol {
                3 => crate::codec::ProtocolVersion::V3_1,
                4 => crate::codec::ProtocolVersion::V3_1_1,
                _ => crate::codec::ProtocolVersion::V5,
            };
            let mut session = Session::new(client_id.clone(), protocol, self.limits());
            session.expiry_interval = record.expiry_interval;
            let disconnected_at = record
                .disconnected_at_ms
                .map(crate::persistence::convert::ms_to_instant)
                .unwrap_or(now);
            let mut deliveries: Vec<_> = si.deliveries.iter().collect();
            deliveries.sort_by_key(|(_, d)| d.order);
            session.reserve_paged(deliveries.len());
            for (pid, d) in deliveries {
                session.restore_paged(PagedDelivery {
                    packet_id: *pid,
                    message_id: d.message_id,
                    qos: QoS::from_u8(d.qos).unwrap_or(QoS::AtLeastOnce),
                    retain: d.retain,
                    subscription_ids: d.subscription_ids.clone(),
                    shared_group: d.shared_group.as_deref().map(Arc::from),
                    awaiting_pubcomp: d.awaiting_pubcomp,
                    resend: true,
                    bytes: 0,
                    expires_at: d
                        .expires_at_ms
                        .map(crate::persistence::convert::ms_to_instant),
                });
            }
            for pid in &si.inbound {
                session.inbound_qos2_received(*pid);
            }
            let queued = session.queued_bytes();
            let slot = Arc::new(SessionSlot {
                client_id: client_id.clone(),
                state: Mutex::new(SlotState {
                    session,
                    owner: None,
                    kick: None,
                    owner_alive: None,
                    will: None,
                    pending_will: si.will.as_ref().map(|w| (1, restore_will(w))),
                    will_token: 1,
                    disconnected_at: Some(disconnected_at),
                    ended: false,
                    in_store: true,
                    generation: 0,
                }),
                wake: Notify::new(),
                connected: AtomicBool::new(false),
                last_drain_ms: AtomicU64::new(0),
            });
            {
                let mut router = self.shared.router.write();
                let mut st = slot.state.lock();
                for (filter, sub) in &si.subscriptions {
                    let options = crate::persistence::convert::restore_subscription(sub);
                    router.subscribe(
                        filter,
                        Subscription {
                            client: client_id.clone(),
                            options,
                            identifier: sub.identifier,
                            target: slot.clone(),
                        },
                    );
                    st.session.subscriptions.insert(
                        filter.clone(),
                        SubscriptionRecord {
                            options,
                            identifier: sub.identifier,
                        },
                    );
                }
            }
            self.shared
                .queued_bytes_total
                .fetch_add(queued, Ordering::Relaxed);
            if let Some(w) = &si.will {
                wills.push((slot.clone(), 1, w.due_at_ms));
            }
            self.shared.sessions.lock().insert(client_id, slot);
        }
        wills
    }

    /// Loads the bodies of a resumed session's paged-out deliveries from the store and puts
    /// them back in front of its queue, before its connection sends anything. A body the store
    /// does not have (damaged data) is reported and its delivery removed.
    async fn page_in(&self, slot: &Arc<SessionSlot>) {
        let Some(p) = self.shared.persistence.clone() else {
            return;
        };
        let (paged, generation) =
            self.with_slot(slot, |st| (st.session.take_paged(), st.generation));
        if paged.is_empty() {
            return;
        }
        let ids: Vec<u64> = paged.iter().map(|d| d.message_id).collect();
        let loaded = tokio::task::spawn_blocking(move || p.load_messages(&ids)).await;
        let mut bodies = match loaded {
            Ok(Ok(b)) => b,
            failed => {
                let what = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                tracing::error!(client_id = %slot.client_id, error = %what, "cannot page in the offline queue; it stays on disk");
                self.with_slot(slot, |st| {
                    if st.generation == generation {
                        for d in paged {
                            st.session.restore_paged(d);
                        }
                    }
                });
                return;
            }
        };
        let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
        let loaded: Vec<_> = paged
            .into_iter()
            .map(|d| {
                let message = match messages.get(&d.message_id) {
                    Some(m) => Some(m.clone()),
                    None => bodies.remove(&d.message_id).map(|m| {
                        let m = restore_message(m);
                        messages.insert(d.message_id, m.clone());
                        m
                    }),
                };
                if message.is_none() {
                    tracing::error!(client_id = %slot.client_id, message_id = d.message_id, packet_id = d.packet_id, "queued message missing from the store; its delivery is removed (see `keelmq inspect`)");
                }
                let delivery = message.map(|message| Delivery {
                    message,
                    qos: d.qos,
                    retain: d.retain,
                    subscription_ids: d.subscription_ids.clone(),
                    shared_group: d.shared_group.clone(),
                });
                (d, delivery)
            })
            .collect();
        // `with_slot` accounts the bytes paged in (recovered deliveries counted none).
        let (removed, in_store) = self.with_slot(slot, |st| {
            if st.generation != generation {
                return (Vec::new(), false); // replaced by a Clean Start meanwhile
            }
            st.session.restore_paged_in(loaded);
            (st.session.take_removed(), st.in_store)
        });
        if in_store {
            let client = slot.client_id.to_string();
            self.log(
                removed
                    .into_iter()
                    .map(|packet_id| Record::Dequeue {
                        client: client.clone(),
                        packet_id,
                    })
                    .collect(),
            );
        }
    }

    /// A new message id, unique across restarts.
    pub fn next_message_id(&self) -> u64 {
        match &self.shared.persistence {
            Some(p) => p.next_message_id(),
            None => self.shared.next_message_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn persistence(&self) -> Option<&Arc<Persistence>> {
        self.shared.persistence.as_ref()
    }

    /// Whether persistence failed (the broker then stops; the process exits non-zero).
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Logs `records` and waits until they are durable. On failure the broker stops.
    /// Logs `records` now; the caller awaits [`Self::wait_pending`] before acknowledging.
    pub(crate) fn log_pending(&self, records: Vec<Record>) -> Result<PendingDurable, NotDurable> {
        let Some(p) = &self.shared.persistence else {
            return Ok(PendingDurable::ready());
        };
        p.log_pending(records).map_err(|e| self.not_durable(e))
    }

    /// Waits until what [`Self::log_pending`] logged is durable.
    pub(crate) async fn wait_pending(
        &self,
        pending: &mut PendingDurable,
    ) -> Result<(), NotDurable> {
        let Some(p) = &self.shared.persistence else {
            return Ok(());
        };
        p.wait_pending(pending)
            .await
            .map_err(|e| self.not_durable(e))
    }

    fn not_durable(&self, e: persistence::Error) -> NotDurable {
        if e.is_fatal() {
            self.fatal(&e);
        } else {
            tracing::warn!(error = %e, "operation refused");
        }
        NotDurable
    }

    pub(crate) async fn commit(&self, records: Vec<Record>) -> Result<(), NotDurable> {
        let Some(p) = &self.shared.persistence else {
            return Ok(());
        };
        if records.is_empty() {
            return if p.has_failed() {
                Err(NotDurable)
            } else {
                Ok(())
            };
        }
        match p.commit(records).await {
            Ok(()) => Ok(()),
            Err(e) if !e.is_fatal() => {
                tracing::warn!(error = %e, "operation refused");
                Err(NotDurable)
            }
            Err(e) => {
                self.fatal(&e);
                Err(NotDurable)
            }
        }
    }

    /// Logs `records` without waiting, and without asking for an fdatasync of their own (their
    /// loss costs only a re-delivery or a later expiry): the next commit covers them.
    pub(crate) fn log(&self, records: Vec<Record>) {
        let Some(p) = &self.shared.persistence else {
            return;
        };
        if records.is_empty() {
            return;
        }
        let broker = self.clone();
        let logged = p.log_lazy(records, move |e| broker.fatal(e));
        match logged {
            Ok(()) => {}
            Err(e) if e.is_fatal() => self.fatal(&e),
            Err(e) => tracing::warn!(error = %e, "record not logged"),
        }
    }

    fn fatal(&self, e: &persistence::Error) {
        if !self.shared.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, "persistence failed; stopping the broker");
            self.begin_shutdown();
        }
    }

    fn session_record(client: &ClientId, st: &SlotState) -> Record {
        Record::Session(SessionRecord {
            client: client.to_string(),
            protocol: st.session.protocol.level(),
            expiry_interval: st.session.expiry_interval,
            disconnected_at_ms: st.disconnected_at.map(|_| now_ms()),
        })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Subscribes to the broker's shutdown signal.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.subscribe()
    }

    /// Tells every connection and background task to stop.
    /// Waits until the retained index is loaded (the loader released the retain gate).
    pub async fn retained_loaded(&self) {
        let _ = self.shared.retain_gate.write().await;
    }

    pub fn begin_shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// A permit for a new socket to wait for its CONNECT, or `None` (close it, counted) when
    /// `limits.max_pending_connections` sockets already wait.
    pub fn connecting_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.shared.connecting.clone().try_acquire_owned().ok();
        if permit.is_none() {
            Metrics::add(&self.shared.metrics.connections_refused, 1);
        }
        permit
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.shared.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A client identifier for a client that sent none.
    pub(crate) fn assign_client_id(&self) -> String {
        let n = self.shared.next_assigned_id.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("keelmq-{nanos:x}-{n}")
    }

    pub fn session_count(&self) -> usize {
        self.shared.sessions.lock().len()
    }

    pub fn subscription_count(&self) -> usize {
        self.shared.router.read().len()
    }

    pub fn retained_count(&self) -> usize {
        self.shared.retained.read().len()
    }

    pub fn queued_bytes_total(&self) -> usize {
        self.shared.queued_bytes_total.load(Ordering::Relaxed)
    }

    fn limits(&self) -> SessionLimits {
        let l = &self.shared.config.limits;
        SessionLimits {
            max_queued_messages: l.max_queued_messages,
            max_queued_bytes: l.max_queued_bytes,
        }
    }

    /// Runs `f` on a slot's state, keeping the broker-wide queued-bytes count in step with the
    /// session's and waking held-back publishers when room was freed.
    fn with_slot<R>(&self, slot: &SessionSlot, f: impl FnOnce(&mut SlotState) -> R) -> R {
        let mut st = slot.state.lock();
        let before = st.session.queued_bytes();
        let r = f(&mut st);
        let after = st.session.queued_bytes();
        drop(st);
        if after > before {
            self.shared
                .queued_bytes_total
                .fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            self.shared
                .queued_bytes_total
                .fetch_sub(before - after, Ordering::Relaxed);
            self.shared.room.notify_waiters();
        }
        r
    }

    /// Waits until some queue room is freed (or `timeout` passes).
    pub(crate) async fn wait_for_room(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.shared.room.notified()).await;
    }

    // ------------------------------------------------------------------------- connections

    /// Attaches connection `conn` to the session of `client_id`, taking it over from another
    /// connection if one holds it, and creating or discarding it as Clean Start says.
    pub async fn connect(
        &self,
        conn: ConnId,
        client_id: ClientId,
        connect: &Connect,
        expiry_interval: u32,
    ) -> Result<Attached, ConnectRefusal> {
        let cfg = &self.shared.config;
        if self
            .shared
            .metrics
            .connections_current
            .load(Ordering::Relaxed)
            > cfg.limits.max_connections as u64
        {
            return Err(ConnectRefusal::ServerBusy);
        }
        let (kick_tx, kicked) = oneshot::channel();
        let (alive, alive_rx) = oneshot::channel();
        let mut previous_owner = None;
        let mut was_persistent = false;
        let mut discarded = false;
        let mut session_record = None;
        let mut wills_to_publish = Vec::new();
        let mut cancelled_will = false;
        let mut ended_subscriptions = Vec::new();
        let (slot, session_present) = {
            let mut sessions = self.shared.sessions.lock();
            if sessions.len() >= cfg.limits.max_sessions && !sessions.contains_key(&client_id) {
                return Err(ConnectRefusal::TooManySessions);
            }
            let slot = sessions
                .entry(client_id.clone())
                .or_insert_with(|| {
                    Arc::new(SessionSlot {
                        client_id: client_id.clone(),
                        state: Mutex::new(SlotState {
                            session: Session::new(
                                client_id.clone(),
                                connect.protocol,
                                self.limits(),
                            ),
                            owner: None,
                            kick: None,
                            owner_alive: None,
                            will: None,
                            pending_will: None,
                            will_token: 0,
                            disconnected_at: None,
                            ended: false,
                            in_store: false,
                            generation: 0,
                        }),
                        wake: Notify::new(),
                        connected: AtomicBool::new(false),
                        last_drain_ms: AtomicU64::new(0),
                    })
                })
                .clone();
            let present = self.with_slot(&slot, |st| {
                was_persistent = st.in_store && !st.ended;
                let existed = st.owner.is_some()
                    || st.disconnected_at.is_some()
                    || !st.session.subscriptions.is_empty()
                    || st.session.inflight_len() > 0
                    || st.session.queued_len() > 0;
                // A session with expiry 0 lasts only as long as its connection
                // [MQTT-3.1.2-6]: a takeover ends it, whatever the new connection asks. One
                // whose expiry ran out is gone even if the reaper has not removed it yet.
                let expired = st.owner.is_none()
                    && st.session.expiry_interval != u32::MAX
                    && st.disconnected_at.is_some_and(|at| {
                        at.elapsed() >= Duration::from_secs(u64::from(st.session.expiry_interval))
                    });
                let fresh = connect.clean_start || st.session.expiry_interval == 0 || expired;
                // Take over from a connection still attached [MQTT-3.1.4-3].
                if let Some(kick) = st.kick.take() {
                    let _ = kick.send(());
                }
                previous_owner = st.owner_alive.replace(alive_rx);
                // The previous connection's will: cancelled by a resuming connection if it has
                // a delay [MQTT-3.1.3-9], published now if the session ends or it has none.
                // A will already waiting for its delay (its connection closed) is cancelled
                // unless the session ends.
                st.will_token += 1;
                let old_will = (st.will.take().map(|w| (w, false)))
                    .or(st.pending_will.take().map(|(_, w)| (w, true)));
                if let Some((w, waiting)) = old_will {
                    let delay = w.properties.will_delay_interval.unwrap_or(0);
                    if fresh || (!waiting && delay == 0) {
                        wills_to_publish.push((st.session.client_id.clone(), w));
                    }
                    cancelled_will |= waiting && !fresh;
                }
                discarded = fresh;
                if fresh {
                    st.generation += 1;
                    ended_subscriptions = st.session.subscriptions.keys().cloned().collect();
                    st.session.clear();
                    st.session = Session::new(client_id.clone(), connect.protocol, self.limits());
                }
                st.session.protocol = connect.protocol;
                st.session.expiry_interval = expiry_interval;
                st.owner = Some(conn);
                st.kick = Some(kick_tx);
                st.will = connect.will.clone();
                st.disconnected_at = None;
                st.ended = false;
                self.drained(&slot);
                slot.connected.store(true, Ordering::Release);
                st.in_store = expiry_interval > 0;
                if st.in_store {
                    session_record = Some(Self::session_record(&client_id, st));
                }
                existed && !fresh
            });
            (slot, present)
        };
        if let Some(previous) = previous_owner {
            // The connection taken over finishes what it logged; bounded, since it waits only
            // for fdatasyncs, but a stuck one must not keep this client out for ever.
            if tokio::time::timeout(TAKEOVER_WAIT, previous).await.is_err() {
                tracing::warn!(client_id = %client_id, "the connection taken over did not finish in time");
            }
        }
        if session_present {
            self.page_in(&slot).await;
        }
        if !ended_subscriptions.is_empty() {
            let mut router = self.shared.router.write();
            for filter in &ended_subscriptions {
                router.unsubscribe(filter, &client_id);
            }
        }
        // CONNACK of a persistent session only after its record is durable; a persistent
        // session discarded by Clean Start, or resumed with expiry 0, leaves the store.
        let mut records = Vec::new();
        if was_persistent && (discarded || expiry_interval == 0) {
            records.push(Record::SessionRemove {
                client: client_id.to_string(),
            });
        } else if was_persistent && cancelled_will {
            records.push(Record::WillClear {
                client: client_id.to_string(),
            });
        }
        records.extend(session_record);
        let durable = self.commit(records).await;
        for (client, will) in wills_to_publish {
            self.publish_will(client, will).await;
        }
        durable.map_err(|_| ConnectRefusal::NotDurable)?;
        Ok(Attached {
            slot,
            session_present,
            kicked,
            alive,
        })
    }

    /// Detaches connection `conn` from its session after the network connection closed.
    /// `publish_will` is false after a normal DISCONNECT; `expiry_override` is a Session Expiry
    /// Interval the client set on DISCONNECT.
    pub async fn disconnect(
        &self,
        conn: ConnId,
        slot: &Arc<SessionSlot>,
        publish_will: bool,
        expiry_override: Option<u32>,
    ) {
        let mut redispatch = Vec::new();
        let mut will_now = None;
        let mut delayed = None;
        let mut records = Vec::new();
        let end_now = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return false; // taken over: the new connection owns the session and its will
            }
            let was_persistent = st.in_store;
            st.owner = None;
            st.kick = None;
            slot.connected.store(false, Ordering::Release);
            // Its grace as a draining subscriber starts now (see `is_draining`).
            self.drained(slot);
            st.disconnected_at = Some(Instant::now());
            if let Some(e) = expiry_override {
                st.session.expiry_interval = e;
            }
            let will = st.will.take();
            redispatch = st.session.take_shared_for_redispatch();
            if was_persistent && st.session.expiry_interval != 0 {
                // Offline, the backlog costs no body memory: the image or the store has them.
                st.session.page_out();
            }
            let end = st.session.expiry_interval == 0;
            if was_persistent && !end {
                // The disconnect time lets expiry count across a restart.
                records.push(Self::session_record(&slot.client_id, st));
            }
            if let (true, Some(w)) = (publish_will, will) {
                let delay = w.properties.will_delay_interval.unwrap_or(0);
                let delay = delay.min(st.session.expiry_interval);
                if delay == 0 || end {
                    will_now = Some(w);
                } else {
                    st.will_token += 1;
                    if was_persistent {
                        // In the commit of the session record: a restart still publishes it.
                        let at = records
                            .iter()
                            .rev()
                            .find_map(|r| match r {
                                Record::Session(s) => s.disconnected_at_ms,
                                _ => None,
                            })
                            .unwrap_or_else(now_ms);
                        let due = at + u64::from(delay) * 1000;
                        records.push(Record::WillSet {
                            client: slot.client_id.to_string(),
                            will: store_will(&w, at, due),
                        });
                    }
                    st.pending_will = Some((st.will_token, w));
                    delayed = Some((st.will_token, delay));
                }
            }
            end
        });
        self.log(records);
        self.redispatch(redispatch, slot).await;
        if let Some(w) = will_now {
            self.publish_will(slot.client_id.clone(), w).await;
        }
        if let Some((token, delay)) = delayed {
            self.schedule_will(slot.clone(), token, Duration::from_secs(u64::from(delay)));
        }
        if end_now {
            self.end_session(slot).await;
        }
    }

    /// Removes a session that ended (expiry 0 at disconnect, or expired), with its
    /// subscriptions, publishing a will still waiting for its delay.
    async fn end_session(&self, slot: &Arc<SessionSlot>) {
        let (subscriptions, will) = {
            let mut sessions = self.shared.sessions.lock();
            let ended = self.with_slot(slot, |st| {
                if st.owner.is_some() || st.ended {
                    return None; // a connection resumed it meanwhile
                }
                st.ended = true;
                st.generation += 1;
                let in_store = std::mem::take(&mut st.in_store);
                let subs: Vec<String> = st.session.subscriptions.keys().cloned().collect();
                st.session.clear();
                Some((subs, st.pending_will.take().map(|(_, w)| w), in_store))
            });
            let Some((subs, will, in_store)) = ended else {
                return;
            };
            let ended = (subs, will);
            if in_store {
                self.log(vec![Record::SessionRemove {
                    client: slot.client_id.to_string(),
                }]);
            }
            if sessions
                .get(&slot.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, slot))
            {
                sessions.remove(&slot.client_id);
            }
            ended
        };
        {
            let mut router = self.shared.router.write();
            for filter in &subscriptions {
                router.unsubscribe(filter, &slot.client_id);
            }
        }
        if let Some(w) = will {
            self.publish_will(slot.client_id.clone(), w).await;
        }
    }

    /// Ends every disconnected session whose expiry interval has passed.
    pub async fn expire_sessions(&self) {
        let now = Instant::now();
        let slots: Vec<Arc<SessionSlot>> = self.shared.sessions.lock().values().cloned().collect();
        for slot in slots {
            let due = {
                let st = slot.state.lock();
                match (st.owner, st.disconnected_at) {
                    (None, Some(at)) if st.session.expiry_interval != u32::MAX => {
                        now.saturating_duration_since(at)
                            >= Duration::from_secs(u64::from(st.session.expiry_interval))
                    }
                    _ => false,
                }
            };
            if due {
                self.end_session(&slot).await;
            } else {
                self.purge_expired(&slot, now);
            }
        }
    }

    /// Drops a session's queued and paged-out deliveries whose message expired, logging their
    /// removal, so that expired messages hold no room in an offline (or slow) subscriber's
    /// queue.
    fn purge_expired(&self, slot: &SessionSlot, now: Instant) {
        let purged = self.with_slot(slot, |st| {
            if !st.session.has_backlog() {
                return None;
            }
            let before = st.session.expired;
            st.session.purge_expired(now);
            Some((
                st.session.expired - before,
                st.session.take_removed(),
                st.in_store,
            ))
        });
        let Some((expired, removed, in_store)) = purged else {
            return;
        };
        Metrics::add(&self.shared.metrics.expired, expired);
        if in_store {
            let client = slot.client_id.to_string();
            let records = removed
                .into_iter()
                .map(|packet_id| Record::Dequeue {
                    client: client.clone(),
                    packet_id,
                })
                .collect();
            self.log(records);
        }
    }

    /// Publishes the session's waiting will after `delay`, unless a connection resumed the
    /// session meanwhile (or another will replaced it: `token` no longer matches). For a
    /// persistent session, its `WillClear` goes into the commit of the will's deliveries, so a
    /// crash either keeps the will waiting or has published it, never both.
    fn schedule_will(&self, slot: Arc<SessionSlot>, token: u64, delay: Duration) {
        let client_id = slot.client_id.clone();
        let broker = self.clone();
        let task = async move {
            tokio::time::sleep(delay).await;
            let will = broker.with_slot(&slot, |st| match st.pending_will.take() {
                Some((t, w)) if t == token && st.owner.is_none() => Some((w, st.in_store)),
                other => {
                    st.pending_will = other;
                    None
                }
            });
            if let Some((w, in_store)) = will {
                let clear = in_store.then(|| Record::WillClear {
                    client: slot.client_id.to_string(),
                });
                broker
                    .publish_will_with(slot.client_id.clone(), w, clear)
                    .await;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(task);
            }
            Err(_) => tracing::error!(
                client_id = %client_id,
                "no async runtime to wait for a will's delay on: the will is not published"
            ),
        }
    }

    async fn publish_will(&self, client: ClientId, will: LastWill) {
        self.publish_will_with(client, will, None).await
    }

    /// Publishes a will, logging `extra` in the same commit as its deliveries (or on its own
    /// if the will cannot be placed).
    async fn publish_will_with(&self, client: ClientId, will: LastWill, extra: Option<Record>) {
        let now = Instant::now();
        let p = will.properties;
        let message = Message {
            id: self.next_message_id(),
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: Message::properties_of(PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
                ..Default::default()
            }),
            expires_at: p
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            publisher: Some(client),
        };
        let message = Arc::new(message);
        let outcome = {
            let _gate = self.retain_gate_for(message.retain).await;
            let (mut pending, _) = self.prepare(message, None, false);
            pending.records.extend(extra.clone());
            self.place_pending(pending).await
        };
        let Ok(outcome) = outcome else {
            return;
        };
        if outcome.held.is_some() {
            // Not placed, so not logged: the will is gone all the same.
            let _ = self.commit(extra.into_iter().collect()).await;
            // Nobody waits for a will's acknowledgement; a full queue refuses it like any
            // QoS 1/2 message, and this is counted.
            Metrics::add(&self.shared.metrics.queue_full_refusals, 1);
            tracing::warn!("will not published: a subscriber's queue is full");
        }
    }

    // ------------------------------------------------------------------------------ routing

    /// Routes a message: queues a delivery for every matching session and updates the retained
    /// store if RETAIN is set, after the records of all of it (and of `inbound_qos2`, the
    /// publisher's packet id to remember until PUBREL) are durable. All or nothing: if a QoS 1/2
    /// target's queue is full, nothing is placed or logged and the outcome holds the message.
    /// `Err` means persistence failed: the publisher must get no acknowledgement.
    /// With `qos0_may_wait`, a QoS 0 message also waits (is held) for the full queue of a
    /// subscriber that is connected and draining, instead of being dropped for it.
    pub(crate) async fn publish(
        &self,
        message: Arc<Message>,
        inbound_qos2: Option<InboundClaim>,
        qos0_may_wait: bool,
    ) -> Result<PublishOutcome, NotDurable> {
        let _gate = self.retain_gate_for(message.retain).await;
        let (pending, retained_refused) = self.prepare(message, inbound_qos2, qos0_may_wait);
        let mut outcome = self.place_pending(pending).await?;
        outcome.retained_refused = retained_refused;
        Ok(outcome)
    }

    /// [`Self::publish`] without waiting, for a message without RETAIN: its deliveries are
    /// reserved and its records logged now, and the returned [`Begun::Placed`] makes them
    /// visible with [`Self::settle`] once its wait completes. Meanwhile the publisher's
    /// connection goes on with its next packets, whose records share the same fdatasync.
    /// The publisher's QoS 2 packet id counts as received from now on (a re-send is a
    /// duplicate, acknowledged only after this wait).
    pub(crate) fn publish_begin(
        &self,
        message: Arc<Message>,
        inbound_qos2: Option<InboundClaim>,
        qos0_may_wait: bool,
    ) -> Result<Begun, NotDurable> {
        debug_assert!(
            !message.retain,
            "retained messages go through the retain gate"
        );
        let (pending, _) = self.prepare(message, inbound_qos2, qos0_may_wait);
        self.begin(pending)
    }

    /// The records and targets of a publish (nothing placed or logged yet), and whether the
    /// retained store refused its RETAIN.
    fn prepare(
        &self,
        message: Arc<Message>,
        inbound_qos2: Option<InboundClaim>,
        qos0_may_wait: bool,
    ) -> (PendingPublish, bool) {
        let mut records = Vec::new();
        let persisted = self.shared.persistence.is_some() && !message.topic.starts_with('$');
        let mut retain_update = false;
        let mut retained_refused = false;
        if message.retain {
            if self.retained_has_room(&message) {
                retain_update = true;
                if persisted {
                    records.push(if message.payload.is_empty() {
                        Record::RetainDelete {
                            topic: message.topic.to_string(),
                        }
                    } else {
                        Record::RetainSet(store_message(&message))
                    });
                }
            } else {
                retained_refused = true;
                Metrics::add(&self.shared.metrics.retained_refused, 1);
            }
        }
        let targets = self.plan(&message);
        let message_qos0 = message.qos == QoS::AtMostOnce;
        let pending = PendingPublish {
            message,
            targets,
            records,
            retain_update,
            inbound_qos2,
            qos0_may_wait: qos0_may_wait && message_qos0,
        };
        (pending, retained_refused)
    }

    /// Tries to place a held publish whole; the outcome holds it again if a queue is still full.
    /// A retained message goes through the retain gate, as in [`Self::publish`], so its
    /// retained update is ordered against the others and waits for the retained index to load.
    pub async fn retry_publish(&self, p: PendingPublish) -> Result<PublishOutcome, NotDurable> {
        let _gate = self.retain_gate_for(p.message.retain).await;
        self.place_pending(p).await
    }

    /// The retain gate, read-locked, for a message with RETAIN; `None` for one without.
    async fn retain_gate_for(&self, retain: bool) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        match retain {
            true => Some(self.shared.retain_gate.read().await),
            false => None,
        }
    }

    /// [`Self::retry_publish`] for a caller that already holds the retain gate if it needs it
    /// (the gate is not reentrant: a waiting writer blocks a second read).
    async fn place_pending(&self, p: PendingPublish) -> Result<PublishOutcome, NotDurable> {
        match self.begin(p)? {
            Begun::Held(p) => Ok(PublishOutcome {
                delivered: 0,
                held: Some(p),
                retained_refused: false,
            }),
            Begun::Placed(placed) => Ok(PublishOutcome {
                delivered: self.complete(placed).await?,
                held: None,
                retained_refused: false,
            }),
        }
    }

    /// Reserves a publish's deliveries whole and logs its records, or gives it back held if a
    /// queue is full (nothing reserved or logged then).
    fn begin(&self, p: PendingPublish) -> Result<Begun, NotDurable> {
        let how = Reservation {
            all_or_nothing: true,
            qos0_may_wait: p.qos0_may_wait,
            inbound_qos2: p.inbound_qos2.as_ref(),
        };
        // A retained update takes its version in the same step as its records' append.
        let mut order = p.retain_update.then(|| self.shared.retain_order.lock());
        let (placed, full) = self.reserve(p.targets.clone(), p.records.clone(), how)?;
        let Some(mut placed) = placed.filter(|_| full.is_empty()) else {
            return Ok(Begun::Held(p));
        };
        if let Some(order) = order.as_mut() {
            let version = order.reserve(&p.message.topic);
            placed.placement.retain = Some((p.message, version));
        }
        drop(order);
        Ok(Begun::Placed(placed))
    }

    /// Whether a retained update for this topic fits `max_retained_messages` (replacing and
    /// deleting always do).
    /// The broker's own `$SYS` topics neither count nor are refused.
    fn retained_has_room(&self, message: &Message) -> bool {
        let retained = self.shared.retained.read();
        let max = self.shared.config.limits.max_retained_messages;
        if message.payload.is_empty()
            || retained.len() < max
            || retained.contains(&message.topic)
            || is_broker_sys(message)
        {
            return true;
        }
        let mut sys = 0;
        retained.matching("$SYS/#", |_| sys += 1);
        retained.len() - sys < max
    }

    /// Decides who receives a message: one delivery per session for its ordinary
    /// subscriptions (highest granted QoS, every Subscription Identifier), and one per matching
    /// shared group, to a connected member when there is one.
    fn plan(&self, message: &Arc<Message>) -> Vec<(Arc<SessionSlot>, Delivery)> {
        let mut direct: HashMap<*const SessionSlot, usize> = HashMap::new();
        let mut out: Vec<(Arc<SessionSlot>, Delivery)> = Vec::new();
        let router = self.shared.router.read();
        router.matches(&message.topic, |m| match m {
            Match::Direct(sub) => {
                if sub.options.no_local && message.publisher.as_ref() == Some(&sub.client) {
                    return; // [MQTT-3.8.3-3]
                }
                let qos = message.qos.min(sub.options.qos);
                let retain = message.retain && sub.options.retain_as_published;
                let key = Arc::as_ptr(&sub.target);
                match direct.get(&key) {
                    Some(&i) => {
                        let d = &mut out[i].1;
                        d.qos = d.qos.max(qos);
                        d.retain |= retain;
                        d.subscription_ids.extend(sub.identifier);
                    }
                    None => {
                        direct.insert(key, out.len());
                        out.push((
                            sub.target.clone(),
                            Delivery {
                                message: message.clone(),
                                qos,
                                retain,
                                subscription_ids: sub.identifier.into_iter().collect(),
                                shared_group: None,
                            },
                        ));
                    }
                }
            }
            Match::Shared(group) => {
                let mut first = None;
                let mut chosen = None;
                for member in group.rotation() {
                    first.get_or_insert(member);
                    if member.target.is_connected() {
                        chosen = Some(member);
                        break;
                    }
                }
                if let Some(member) = chosen.or(first) {
                    out.push((
                        member.target.clone(),
                        Delivery {
                            message: message.clone(),
                            qos: message.qos.min(member.options.qos),
                            retain: message.retain && member.options.retain_as_published,
                            subscription_ids: member.identifier.into_iter().collect(),
                            shared_group: Some(Arc::from(&*group.name)),
                        },
                    ));
                }
            }
        });
        out
    }

    /// Reserves room and packet ids in the targets' queues and logs the records (an `Enqueue`
    /// with the message body for every persistent session among them), without waiting: the
    /// deliveries become visible with [`Self::settle`] once durable. `None` (and nothing logged) when `all_or_nothing` met a full queue.
    fn reserve(
        &self,
        targets: Vec<(Arc<SessionSlot>, Delivery)>,
        mut records: Vec<Record>,
        how: Reservation<'_>,
    ) -> Result<Reserved, NotDurable> {
        let Reservation {
            all_or_nothing,
            qos0_may_wait,
            inbound_qos2,
        } = how;
        let mut reserved = Vec::with_capacity(targets.len());
        let mut full = Vec::new();
        let mut bodies_logged: Vec<u64> = Vec::new();
        for (slot, delivery) in targets {
            let logged = (&mut bodies_logged, &mut records);
            match self.reserve_target(&slot, &delivery, qos0_may_wait, logged) {
                TargetReservation::Queued {
                    packet_id,
                    generation,
                } => reserved.push((slot, packet_id, delivery, generation)),
                // All or nothing holds only for subscribers that drain their queue: an offline
                // or stalled one loses its own copy (counted), and the publisher goes on.
                TargetReservation::Full if all_or_nothing && !self.is_draining(&slot) => {
                    Metrics::add(&self.shared.metrics.dropped_queue_full, 1);
                }
                TargetReservation::Full => full.push((slot, delivery)),
                TargetReservation::DroppedQos0 => {
                    Metrics::add(&self.shared.metrics.dropped_qos0, 1);
                }
                TargetReservation::Ended => {}
            }
        }
        let placement = Placement {
            reserved,
            retain: None,
        };
        if all_or_nothing && !full.is_empty() {
            self.cancel(placement);
            return Ok((None, full));
        }
        let logged = match inbound_qos2 {
            Some(claim) => self.log_with_claim(records, claim),
            None => self.log_pending(records),
        };
        match logged {
            Ok(durable) => Ok((Some(Placed { placement, durable }), full)),
            Err(e) => {
                self.cancel(placement);
                Err(e)
            }
        }
    }

    /// Reserves room and a packet id for one delivery in `slot`'s queue, adding the records it
    /// needs for a persistent session to `logged` (the message body once per commit).
    fn reserve_target(
        &self,
        slot: &Arc<SessionSlot>,
        delivery: &Delivery,
        qos0_may_wait: bool,
        logged: (&mut Vec<u64>, &mut Vec<Record>),
    ) -> TargetReservation {
        let bytes = delivery.accounted_bytes();
        let max_total = self.shared.config.limits.max_queued_bytes_total;
        let global_room =
            self.shared.queued_bytes_total.load(Ordering::Relaxed) + bytes <= max_total;
        let qos0_waits =
            qos0_may_wait && delivery.qos == QoS::AtMostOnce && self.qos0_waits_for(slot);
        let result = self.with_slot(slot, |st| {
            (!st.ended).then(|| {
                let waits = qos0_waits && !(global_room && st.session.has_room(bytes));
                let enqueued = if waits {
                    Enqueued::Full
                } else {
                    st.session.reserve(delivery.qos, bytes, global_room)
                };
                (enqueued, st.in_store, st.generation)
            })
        });
        let Some((enqueued, in_store, generation)) = result else {
            return TargetReservation::Ended;
        };
        let packet_id = match enqueued {
            Enqueued::Queued(packet_id) => packet_id,
            Enqueued::Full => return TargetReservation::Full,
            Enqueued::DroppedQos0 => return TargetReservation::DroppedQos0,
        };
        let (bodies_logged, records) = logged;
        if self.shared.persistence.is_some() && in_store && packet_id != 0 {
            let m = &delivery.message;
            if !bodies_logged.contains(&m.id) {
                bodies_logged.push(m.id);
                records.push(Record::Message(store_message(m)));
            }
            records.push(Record::Enqueue {
                client: slot.client_id.to_string(),
                packet_id,
                message_id: m.id,
                qos: delivery.qos as u8,
                retain: delivery.retain,
                subscription_ids: delivery.subscription_ids.clone(),
                shared_group: delivery.shared_group.as_ref().map(|g| g.to_string()),
            });
        }
        TargetReservation::Queued {
            packet_id,
            generation,
        }
    }

    /// Whether `slot`'s subscriber took from its queue (or went offline, or the broker
    /// started) within `limits.stalled_subscriber_ms`, connected or not; with 0, whether it
    /// is connected. Only such a subscriber's full queue refuses (v5) or holds back (3.x) a
    /// QoS 1/2 publisher: one that is offline or stalled for longer loses its own copy. The
    /// grace after a disconnect covers a client that reconnects at once (after a network
    /// glitch, or a broker restart) without letting one that never returns stop anybody.
    fn is_draining(&self, slot: &SessionSlot) -> bool {
        let stall = self.shared.config.limits.stalled_subscriber_ms;
        if stall == 0 {
            return slot.is_connected();
        }
        let last = slot.last_drain_ms.load(Ordering::Relaxed);
        self.now_ms().saturating_sub(last) < stall
    }

    /// Logs a publish's `records` with the publisher's `InboundQos2`, holding the publisher's
    /// session lock so that a Clean Start (which replaces the session under that lock and logs
    /// its removal after) cannot come between the generation check and the append: the id is
    /// logged for the session that claimed it, or not at all.
    fn log_with_claim(
        &self,
        mut records: Vec<Record>,
        claim: &InboundClaim,
    ) -> Result<PendingDurable, NotDurable> {
        let st = claim.slot.state.lock();
        if st.in_store && st.generation == claim.generation {
            records.push(Record::InboundQos2 {
                client: claim.slot.client_id.to_string(),
                packet_id: claim.packet_id,
            });
        }
        let logged = self.log_pending(records);
        drop(st);
        logged
    }

    /// Marks an inbound QoS 2 packet id as received, if connection `conn` owns the session and
    /// the id is not already awaiting PUBREL: the duplicate check and the mark in one step.
    /// `None` if `conn` no longer owns the session. A claim whose message is not placed must be
    /// given back with [`Self::release_claim`].
    pub(crate) fn claim_inbound_qos2(
        &self,
        slot: &Arc<SessionSlot>,
        conn: ConnId,
        packet_id: u16,
    ) -> Option<Claimed> {
        let mut st = slot.state.lock();
        if st.owner != Some(conn) {
            return None;
        }
        if !st.session.inbound_qos2_is_new(packet_id) {
            return Some(Claimed::Duplicate);
        }
        st.session.inbound_qos2_received(packet_id);
        Some(Claimed::New(InboundClaim {
            slot: slot.clone(),
            packet_id,
            generation: st.generation,
        }))
    }

    /// Gives back a claim whose message was not placed (refused, or dropped unacknowledged
    /// when its connection closed): the client's re-send is then routed. Nothing was logged.
    pub(crate) fn release_claim(&self, claim: &InboundClaim) {
        let mut st = claim.slot.state.lock();
        if st.generation == claim.generation {
            st.session.inbound_pubrel(claim.packet_id);
        }
    }

    /// Waits until a placement's records are durable, then makes it visible; cancels it if
    /// they cannot be made durable. Returns how many deliveries it placed.
    pub(crate) async fn complete(&self, mut placed: Placed) -> Result<usize, NotDurable> {
        match self.wait_pending(&mut placed.durable).await {
            Ok(()) => Ok(self.settle(placed.placement)),
            Err(e) => {
                self.cancel(placed.placement);
                Err(e)
            }
        }
    }

    /// Gives back the room and packet ids of a placement that will not be made visible.
    pub(crate) fn cancel(&self, placement: Placement) {
        if let Some((message, version)) = &placement.retain {
            self.shared
                .retain_order
                .lock()
                .finish(&message.topic, *version, false);
        }
        for (slot, packet_id, d, generation) in placement.reserved {
            self.with_slot(&slot, |st| {
                if st.generation == generation {
                    st.session.cancel(packet_id, d.accounted_bytes());
                }
            });
        }
    }

    /// Makes a placement whose records are durable visible: queues its deliveries, wakes their
    /// connections and applies its retained update. Returns how many deliveries it placed.
    pub(crate) fn settle(&self, placement: Placement) -> usize {
        if let Some((message, version)) = placement.retain {
            let mut order = self.shared.retain_order.lock();
            if order.finish(&message.topic, version, true) {
                // Kept long: its own copy, not a slice pinning the publisher's read buffer.
                let kept = (!message.payload.is_empty()).then(|| Arc::new(message.detached()));
                let mut retained = self.shared.retained.write();
                match kept {
                    None => retained.remove(&message.topic),
                    Some(m) => retained.insert(&message.topic, m),
                };
            }
        }
        let placed = placement.reserved.len();
        for (slot, packet_id, d, generation) in placement.reserved {
            let bytes = d.accounted_bytes();
            let visible = self.with_slot(&slot, |st| {
                if st.generation != generation {
                    // The session was replaced or cleared meanwhile: this reservation was
                    // reset with it.
                    false
                } else if st.ended {
                    st.session.cancel(packet_id, bytes);
                    false
                } else {
                    if st.owner.is_none() && st.in_store && packet_id != 0 {
                        // Offline persistent session: the body is durable, keep only metadata.
                        st.session.commit_paged(packet_id, &d);
                    } else {
                        st.session.commit(packet_id, d);
                    }
                    true
                }
            });
            if visible {
                slot.wake.notify_one();
            }
        }
        placed
    }

    /// Gives the shared-subscription deliveries a departed member held to other members of
    /// their groups: a connected member first, else an offline persistent one; each in one
    /// commit with the `Dequeue` of its old place, so that no crash can leave it in neither
    /// (nor, for a persistent departed member, in both). A delivery no other member can take
    /// (none, or every queue full) stays with the departed member under its packet id.
    async fn redispatch(&self, taken: Vec<(u16, Delivery)>, from: &Arc<SessionSlot>) {
        if taken.is_empty() {
            return;
        }
        let (from_in_store, from_generation) =
            self.with_slot(from, |st| (st.in_store, st.generation));
        let mut records = Vec::new();
        let mut bodies_logged = Vec::new();
        let mut reserved = Vec::new();
        let mut moved = Vec::new();
        let mut stays = Vec::new();
        for (old_id, delivery) in taken {
            let candidates = self.group_candidates(&delivery, from);
            let placed = candidates.into_iter().find_map(|(slot, granted)| {
                let mut d = delivery.clone();
                d.qos = d.message.qos.min(granted);
                let logged = (&mut bodies_logged, &mut records);
                match self.reserve_target(&slot, &d, false, logged) {
                    TargetReservation::Queued {
                        packet_id,
                        generation,
                    } => Some((slot, packet_id, d, generation)),
                    _ => None,
                }
            });
            match placed {
                Some(r) => {
                    if from_in_store && old_id != 0 {
                        let client = from.client_id.to_string();
                        records.push(Record::Dequeue {
                            client,
                            packet_id: old_id,
                        });
                    }
                    reserved.push(r);
                    moved.push((old_id, delivery));
                }
                None => stays.push((old_id, delivery)),
            }
        }
        let placement = Placement {
            reserved,
            retain: None,
        };
        let outcome = match self.log_pending(records) {
            Ok(durable) => self.complete(Placed { placement, durable }).await,
            Err(e) => {
                self.cancel(placement);
                Err(e)
            }
        };
        self.with_slot(from, |st| {
            if st.generation != from_generation {
                return; // replaced by a Clean Start: its deliveries went with it
            }
            let paged = st.owner.is_none() && st.in_store;
            if outcome.is_ok() {
                for (id, _) in moved {
                    st.session.release_moved(id);
                }
            } else {
                // Not moved: the log still has them here.
                stays.extend(moved);
            }
            for (id, d) in stays {
                st.session.give_back(id, d, paged);
            }
        });
    }

    /// The members of `delivery`'s shared group that may take it over from `from`, in the
    /// order to try: connected members in round-robin order, then offline persistent ones;
    /// each with its granted QoS.
    fn group_candidates(
        &self,
        delivery: &Delivery,
        from: &Arc<SessionSlot>,
    ) -> Vec<(Arc<SessionSlot>, QoS)> {
        let Some(group) = delivery.shared_group.as_deref() else {
            return Vec::new();
        };
        let mut members = Vec::new();
        self.shared
            .router
            .read()
            .matches(&delivery.message.topic, |m| {
                let Match::Shared(g) = m else { return };
                if *g.name != *group || !members.is_empty() {
                    return;
                }
                members.extend(
                    g.rotation()
                        .filter(|member| !Arc::ptr_eq(&member.target, from))
                        .map(|member| (member.target.clone(), member.options.qos)),
                );
            });
        // Session locks only after the router's is released (lock order).
        let (mut connected, offline): (Vec<_>, Vec<_>) = members
            .into_iter()
            .partition(|(slot, _)| slot.is_connected());
        connected.extend(
            offline
                .into_iter()
                .filter(|(slot, _)| slot.state.lock().in_store),
        );
        connected
    }

    // ------------------------------------------------------------------------ subscriptions

    /// Applies a SUBSCRIBE from connection `conn` and returns one reason code per filter, once
    /// the subscriptions (and the retained deliveries they queue, behind the SUBACK) are
    /// durable. `Ok(None)`, changing nothing, if `conn` no longer owns the session: the gate
    /// can hold a SUBSCRIBE back (while the retained index loads) for longer than a takeover
    /// waits for the old connection, and the new owner's session must not get it.
    ///
    /// The retain gate is held only while the subscriptions are inserted and their retained
    /// copies reserved and logged, not across the fdatasync. If the records cannot be made
    /// durable, the subscriptions are taken out again: a SUBSCRIBE without SUBACK changes
    /// nothing.
    pub async fn subscribe(
        &self,
        slot: &Arc<SessionSlot>,
        conn: ConnId,
        sub: &Subscribe,
    ) -> Result<Option<Vec<ReasonCode>>, NotDurable> {
        let gate = self.shared.retain_gate.write().await;
        if slot.state.lock().owner != Some(conn) {
            return Ok(None);
        }
        let mut applied = AppliedSubscribe::for_session(slot, &self.shared.config);
        for (filter, options) in &sub.filters {
            let identifier = sub.properties.subscription_identifier;
            match self.subscribe_one(slot, conn, filter, options, identifier, &mut applied) {
                Some(code) => applied.codes.push(code),
                // Log what was applied before the takeover, then refuse the rest.
                None => break,
            }
        }
        let taken_over = applied.codes.len() < sub.filters.len();
        let targets = std::mem::take(&mut applied.retained)
            .into_iter()
            .map(|d| (slot.clone(), d))
            .collect();
        let how = Reservation {
            all_or_nothing: false,
            qos0_may_wait: false,
            inbound_qos2: None,
        };
        let records = std::mem::take(&mut applied.records);
        let reserved = self.reserve(targets, records, how);
        // From here on a retained publish plans this subscription in (it is in the router),
        // and its copy queues behind the retained ones reserved above.
        drop(gate);
        let durable = match reserved {
            Ok((placed, full)) => {
                if !full.is_empty() {
                    // Retained copies for a subscriber whose queue is full are owed to nobody.
                    Metrics::add(&self.shared.metrics.dropped_qos0, full.len() as u64);
                }
                match placed {
                    Some(placed) => self.complete(placed).await.map(|_| ()),
                    None => Ok(()),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = durable {
            self.undo_subscribe(slot, applied.undo);
            return Err(e);
        }
        Ok((!taken_over).then_some(applied.codes))
    }

    /// Applies one filter of a SUBSCRIBE: its reason code, or `None` if `conn` no longer owns
    /// the session (nothing applied then).
    fn subscribe_one(
        &self,
        slot: &Arc<SessionSlot>,
        conn: ConnId,
        filter: &str,
        options: &SubscriptionOptions,
        identifier: Option<u32>,
        applied: &mut AppliedSubscribe,
    ) -> Option<ReasonCode> {
        let cfg = &self.shared.config;
        let shared = parse_shared(filter);
        let wildcard = crate::codec::topic::has_wildcards(shared.filter);
        if shared.filter.split('/').count() > cfg.limits.max_topic_levels {
            return Some(ReasonCode::TOPIC_FILTER_INVALID);
        } else if shared.group.is_some() && !cfg.mqtt.shared_subscription_available {
            return Some(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
        } else if wildcard && !cfg.mqtt.wildcard_subscription_available {
            return Some(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        let granted = options.qos.min(max_qos(cfg));
        let opts = SubscriptionOptions {
            qos: granted,
            ..*options
        };
        let record = SubscriptionRecord {
            options: opts,
            identifier,
        };
        // Owner checked again with the session locked: a takeover can happen on another
        // thread at any moment, and must never find a SUBSCRIBE of the old connection half
        // applied.
        let inserted = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return None;
            }
            let subs = &mut st.session.subscriptions;
            if !subs.contains_key(filter) && subs.len() >= cfg.limits.max_subscriptions_per_client {
                return Some(None);
            }
            Some(Some(subs.insert(filter.to_string(), record)))
        })?;
        let Some(previous) = inserted else {
            return Some(ReasonCode::QUOTA_EXCEEDED);
        };
        applied.undo.push((filter.to_string(), previous));
        let existed = self.shared.router.write().subscribe(
            filter,
            Subscription {
                client: slot.client_id.clone(),
                options: opts,
                identifier,
                target: slot.clone(),
            },
        );
        if applied.in_store {
            applied.records.push(Record::Subscribe {
                client: slot.client_id.to_string(),
                filter: filter.to_string(),
                subscription: store_subscription(&opts, identifier),
            });
        }
        let send_retained = shared.group.is_none()
            && match opts.retain_handling {
                RetainHandling::OnSubscribe => true,
                RetainHandling::OnNewSubscribe => !existed,
                RetainHandling::Never => false,
            };
        if send_retained {
            self.retained_deliveries(shared.filter, opts.qos, identifier, applied);
        }
        Some(ReasonCode(granted as u8))
    }

    /// Takes the subscriptions of a SUBSCRIBE that could not be made durable out of the
    /// session and the router again, restoring the ones they replaced.
    fn undo_subscribe(
        &self,
        slot: &Arc<SessionSlot>,
        undo: Vec<(String, Option<SubscriptionRecord>)>,
    ) {
        for (filter, previous) in undo.into_iter().rev() {
            let owned = self.with_slot(slot, |st| {
                match &previous {
                    Some(p) => st.session.subscriptions.insert(filter.clone(), *p),
                    None => st.session.subscriptions.remove(&filter),
                };
                !st.ended
            });
            let mut router = self.shared.router.write();
            match previous {
                Some(p) if owned => {
                    router.subscribe(
                        &filter,
                        Subscription {
                            client: slot.client_id.clone(),
                            options: p.options,
                            identifier: p.identifier,
                            target: slot.clone(),
                        },
                    );
                }
                _ => {
                    router.unsubscribe(&filter, &slot.client_id);
                }
            }
        }
    }

    /// Collects the retained messages `filter` matches as deliveries, while the session's
    /// queue has room for them (the rest would be refused anyway, and walking a huge retained
    /// set for them would hold the retain gate for nothing).
    fn retained_deliveries(
        &self,
        filter: &str,
        qos: QoS,
        id: Option<u32>,
        applied: &mut AppliedSubscribe,
    ) {
        let now = Instant::now();
        self.shared.retained.read().matching_while(filter, |m| {
            if m.is_expired(now) {
                return true;
            }
            let bytes = m.payload.len();
            if applied.room_messages == 0 || applied.room_bytes < bytes {
                return false;
            }
            applied.room_messages -= 1;
            applied.room_bytes -= bytes;
            applied.retained.push(Delivery {
                qos: m.qos.min(qos),
                message: m.clone(),
                retain: true,
                subscription_ids: id.into_iter().collect(),
                shared_group: None,
            });
            true
        });
    }

    /// Applies an UNSUBSCRIBE from connection `conn`; one reason code per filter (0x11 if there
    /// was none), once the removals are durable. `Ok(None)`, changing nothing, if `conn` no
    /// longer owns the session.
    pub async fn unsubscribe(
        &self,
        slot: &Arc<SessionSlot>,
        conn: ConnId,
        filters: &[String],
    ) -> Result<Option<Vec<ReasonCode>>, NotDurable> {
        let in_store = {
            let st = slot.state.lock();
            if st.owner != Some(conn) {
                return Ok(None);
            }
            st.in_store
        };
        let mut records = Vec::new();
        let codes = filters
            .iter()
            .map(|f| {
                let removed = self.shared.router.write().unsubscribe(f, &slot.client_id);
                self.with_slot(slot, |st| st.session.subscriptions.remove(f));
                if in_store && removed {
                    records.push(Record::Unsubscribe {
                        client: slot.client_id.to_string(),
                        filter: f.clone(),
                    });
                }
                if removed {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.commit(records).await?;
        Ok(Some(codes))
    }

    // --------------------------------------------------------------- acknowledgement flows

    /// A PUBACK (QoS 1) or PUBCOMP (QoS 2) from the subscriber: the delivery is complete. Its
    /// `Dequeue` is logged without waiting. `None` if `conn` no longer owns the session.
    pub(crate) fn outbound_complete(
        &self,
        slot: &SessionSlot,
        conn: ConnId,
        packet_id: u16,
        pubcomp: bool,
    ) -> Option<()> {
        let record = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return None;
            }
            let done = if pubcomp {
                st.session.on_pubcomp(packet_id)
            } else {
                st.session.on_puback(packet_id)
            };
            let client = slot.client_id.to_string();
            Some((done.is_ok() && st.in_store).then_some(Record::Dequeue { client, packet_id }))
        })?;
        self.log(record.into_iter().collect());
        Some(())
    }

    /// A PUBREC from the subscriber. When it releases the message, "PUBREC received" is logged
    /// and the returned wait completes once it is durable: only then may the caller send PUBREL,
    /// so that a restart re-sends PUBREL, never the PUBLISH. `Ok(None)` if `conn` no longer
    /// owns the session.
    pub(crate) fn outbound_pubrec(
        &self,
        slot: &SessionSlot,
        conn: ConnId,
        packet_id: u16,
        refused: bool,
    ) -> Result<Option<(PubRecOutcome, Option<PendingDurable>)>, NotDurable> {
        let result = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return None;
            }
            let outcome = st.session.on_pubrec(packet_id, refused);
            let client = slot.client_id.to_string();
            let record = match outcome {
                PubRecOutcome::Release if st.in_store => Some(Record::PubRec { client, packet_id }),
                PubRecOutcome::Refused if st.in_store => {
                    Some(Record::Dequeue { client, packet_id })
                }
                _ => None,
            };
            Some((outcome, record))
        });
        let Some((outcome, record)) = result else {
            return Ok(None);
        };
        match outcome {
            PubRecOutcome::Release => {
                let pending = self.log_pending(record.into_iter().collect())?;
                Ok(Some((outcome, Some(pending))))
            }
            _ => {
                self.log(record.into_iter().collect());
                Ok(Some((outcome, None)))
            }
        }
    }

    /// A PUBREL from the publisher: whether the packet id was awaiting it. Its removal is durable
    /// before the caller sends PUBCOMP. `Ok(None)` if `conn` no longer owns the session.
    pub(crate) fn inbound_pubrel(
        &self,
        slot: &SessionSlot,
        conn: ConnId,
        packet_id: u16,
    ) -> Result<Option<(bool, PendingDurable)>, NotDurable> {
        let result = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return None;
            }
            let found = st.session.inbound_pubrel(packet_id);
            let client = slot.client_id.to_string();
            // Only a real release is logged: memory holds every id the log holds (restored at
            // start, claimed before it is logged), so an unknown id has nothing to release,
            // and a client streaming unknown PUBRELs makes no durable work.
            Some((
                found,
                (found && st.in_store).then_some(Record::InboundRelease { client, packet_id }),
            ))
        });
        let Some((found, record)) = result else {
            return Ok(None);
        };
        let pending = self.log_pending(record.into_iter().collect())?;
        Ok(Some((found, pending)))
    }

    // ------------------------------------------------------------------- background tasks

    /// Starts the session-expiry and `$SYS` tasks; they stop at shutdown.
    pub fn spawn_background(&self) {
        let broker = self.clone();
        let mut shutdown = self.shutdown_signal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => broker.expire_sessions().await,
                    _ = shutdown.changed() => break,
                }
            }
        });
        let interval = self.shared.config.sys.interval_secs;
        if interval > 0 {
            let broker = self.clone();
            let mut shutdown = self.shutdown_signal();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(interval));
                loop {
                    tokio::select! {
                        _ = tick.tick() => broker.publish_sys().await,
                        _ = shutdown.changed() => break,
                    }
                }
            });
        }
    }

    /// Publishes the `$SYS/broker/...` statistics as retained QoS 0 messages. `$` topics are not
    /// matched by `#` or `+` at the first level, so only explicit `$SYS` subscribers see them.
    pub async fn publish_sys(&self) {
        let m = &self.shared.metrics;
        let stats: [(&str, String); 16] = [
            ("version", format!("keelmq {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", format!("{} seconds", self.uptime().as_secs())),
            (
                "clients/connected",
                Metrics::get(&m.connections_current).to_string(),
            ),
            ("clients/total", self.session_count().to_string()),
            (
                "clients/maximum",
                self.shared.config.limits.max_connections.to_string(),
            ),
            (
                "connections/total",
                Metrics::get(&m.connections_total).to_string(),
            ),
            (
                "messages/received",
                Metrics::get(&m.messages_received).to_string(),
            ),
            ("messages/sent", Metrics::get(&m.messages_sent).to_string()),
            (
                "bytes/received",
                Metrics::get(&m.bytes_received).to_string(),
            ),
            ("bytes/sent", Metrics::get(&m.bytes_sent).to_string()),
            ("subscriptions/count", self.subscription_count().to_string()),
            ("retained messages/count", self.retained_count().to_string()),
            (
                "publish/messages/dropped",
                (Metrics::get(&m.dropped_qos0) + Metrics::get(&m.dropped_queue_full)).to_string(),
            ),
            ("messages/expired", Metrics::get(&m.expired).to_string()),
            (
                "publish/messages/paused",
                Metrics::get(&m.qos0_paused).to_string(),
            ),
            (
                "store/messages/bytes",
                self.queued_bytes_total().to_string(),
            ),
        ];
        for (name, value) in stats {
            let message = Message {
                id: 0, // `$` topics are never persisted
                topic: format!("$SYS/broker/{name}").into(),
                payload: value.into_bytes().into(),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Message::properties_of(PublishProperties::default()),
                expires_at: None,
                publisher: None,
            };
            let _ = self.publish(Arc::new(message), None, false).await;
        }
    }

    // ------------------------------------------------------------- connection-side helpers

    /// Runs `f` on the session if `conn` is still attached to it.
    pub(crate) fn session_op<R>(
        &self,
        slot: &SessionSlot,
        conn: ConnId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Option<R> {
        let (result, records) = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return (None, Vec::new());
            }
            let result = f(&mut st.session);
            let mut records = Vec::new();
            for packet_id in st.session.take_removed() {
                if st.in_store {
                    let client = slot.client_id.to_string();
                    records.push(Record::Dequeue { client, packet_id });
                }
            }
            (Some(result), records)
        });
        self.log(records);
        result
    }
}

/// Whether a message is one of the broker's own `$SYS` statistics (published by no client),
/// the only messages exempt from the retained-message limit.
fn is_broker_sys(message: &Message) -> bool {
    message.publisher.is_none() && message.topic.starts_with("$SYS/")
}

/// The highest QoS the broker grants.
pub(crate) fn max_qos(cfg: &Config) -> QoS {
    QoS::from_u8(cfg.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_retained_publish_is_retried_through_the_retain_gate() {
        let broker = Broker::new(Config::default());
        // As while the retained index loads at start.
        let gate = broker.shared.retain_gate.clone().write_owned().await;
        let message = Arc::new(Message {
            id: broker.next_message_id(),
            topic: "r/1".into(),
            payload: bytes::Bytes::from_static(b"r"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Message::properties_of(PublishProperties::default()),
            expires_at: None,
            publisher: None,
        });
        let (pending, refused) = broker.prepare(message, None, false);
        assert!(!refused);
        let retry = tokio::spawn({
            let broker = broker.clone();
            async move {
                broker
                    .retry_publish(pending)
                    .await
                    .map(|o| o.held.is_none())
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!retry.is_finished(), "the retry waits for the gate");
        assert_eq!(broker.retained_count(), 0);
        drop(gate);
        assert!(matches!(retry.await, Ok(Ok(true))));
        assert_eq!(broker.retained_count(), 1);
    }

    fn retained(broker: &Broker, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            id: broker.next_message_id(),
            topic: "r/1".into(),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Message::properties_of(PublishProperties::default()),
            expires_at: None,
            publisher: None,
        })
    }

    fn retained_payload(broker: &Broker) -> Option<bytes::Bytes> {
        let mut got = None;
        broker
            .shared
            .retained
            .read()
            .matching("r/1", |m| got = Some(m.payload.clone()));
        got
    }

    /// Two RETAIN publishes to one topic covered by one fdatasync may have their waiters run
    /// in either order: the index must end with the one logged last (a restart brings that
    /// one back).
    #[tokio::test]
    async fn retained_updates_become_visible_in_log_order() {
        let broker = Broker::new(Config::default());
        // (older value, newer value, what the index must hold after both)
        type Round = (&'static [u8], &'static [u8], Option<&'static [u8]>);
        let rounds: [Round; 2] = [(b"older", b"newer", Some(b"newer")), (b"older", b"", None)];
        for (older, newer, expected) in rounds {
            let (older, _) = broker.prepare(retained(&broker, older), None, false);
            let (newer, _) = broker.prepare(retained(&broker, newer), None, false);
            let (Ok(Begun::Placed(a)), Ok(Begun::Placed(b))) =
                (broker.begin(older), broker.begin(newer))
            else {
                panic!("placed");
            };
            broker.settle(b.placement);
            broker.settle(a.placement);
            assert_eq!(retained_payload(&broker).as_deref(), expected);
        }
        assert!(broker.shared.retain_order.lock().in_flight.is_empty());
        let (only, _) = broker.prepare(retained(&broker, b"again"), None, false);
        let Ok(Begun::Placed(only)) = broker.begin(only) else {
            panic!("placed");
        };
        broker.settle(only.placement);
        assert_eq!(retained_payload(&broker).as_deref(), Some(&b"again"[..]));
    }

    /// A retained message is kept as a copy of its own, not as a slice of the buffer the
    /// publisher's packet was read into (which it would keep alive whole).
    #[tokio::test]
    async fn retained_messages_do_not_pin_read_buffers() {
        let broker = Broker::new(Config::default());
        let message = retained(&broker, b"payload");
        let (pending, _) = broker.prepare(message.clone(), None, false);
        let Ok(Begun::Placed(placed)) = broker.begin(pending) else {
            panic!("placed");
        };
        broker.settle(placed.placement);
        let mut kept = None;
        broker
            .shared
            .retained
            .read()
            .matching("r/1", |m| kept = Some(m.clone()));
        let kept = kept.expect("retained");
        assert_eq!(kept.payload, message.payload);
        assert_ne!(kept.payload.as_ptr(), message.payload.as_ptr());
        assert_ne!(kept.topic.as_ptr(), message.topic.as_ptr());
    }

    fn persistent_broker() -> (Broker, Arc<Persistence>) {
        let options = crate::persistence::PersistenceOptions {
            sync: keelmq_wal::SyncPolicy::Always,
            segment_bytes: 1 << 20,
            wal_writer_nice: None,
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_wal_bytes: u64::MAX,
            store: keelmq_storage::StoreOptions::default(),
        };
        let (p, _) = Persistence::open_parts(
            Arc::new(keelmq_wal::fs::MemFs::new()),
            "/wal".as_ref(),
            Box::new(keelmq_storage::MemStore::new()),
            options,
            None,
        )
        .expect("opens");
        let p = Arc::new(p);
        (Broker::with_persistence(Config::default(), p.clone()), p)
    }

    fn connect_packet(clean_start: bool) -> Connect {
        Connect {
            protocol: crate::codec::ProtocolVersion::V5,
            clean_start,
            keep_alive: 60,
            properties: Default::default(),
            client_id: "c".to_string(),
            will: None,
            username: None,
            password: None,
        }
    }

    /// Attaches a new connection to client "c"'s session.
    async fn attach(broker: &Broker, clean_start: bool) -> (ConnId, Attached) {
        let conn = broker.next_conn_id();
        let packet = connect_packet(clean_start);
        let attached = broker.connect(conn, "c".into(), &packet, 300).await;
        (conn, attached.expect("attached"))
    }

    fn qos2_message(broker: &Broker) -> Arc<Message> {
        Arc::new(Message {
            id: broker.next_message_id(),
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"m"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Message::properties_of(PublishProperties::default()),
            expires_at: None,
            publisher: Some("c".into()),
        })
    }

    /// A QoS 2 id claimed by a connection that is then replaced by a Clean Start is neither
    /// marked nor logged for the new session: the client's next QoS 2 PUBLISH with that id is
    /// a new message, not a re-send.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_start_does_not_inherit_a_claimed_qos2_id() {
        let (broker, persistence) = persistent_broker();
        broker.retained_loaded().await;
        let (old, a) = attach(&broker, false).await;
        let Some(Claimed::New(claim)) = broker.claim_inbound_qos2(&a.slot, old, 7) else {
            panic!("a new id");
        };
        let pending = broker.prepare(qos2_message(&broker), Some(claim), true).0;
        // The old connection is still between its check and its log when a Clean Start
        // takes the session over.
        drop(a.alive);
        let (new, b) = attach(&broker, true).await;
        let Ok(Begun::Placed(placed)) = broker.begin(pending) else {
            panic!("placed");
        };
        broker.complete(placed).await.unwrap();
        let logged = persistence.with_image(|i| i.sessions["c"].inbound.clone());
        assert!(logged.is_empty(), "logged for the new session: {logged:?}");
        assert!(matches!(
            broker.claim_inbound_qos2(&b.slot, new, 7),
            Some(Claimed::New(_))
        ));
    }

    /// A re-send arriving on a resuming connection while the first copy is still on its way
    /// (here: held at the retain gate) is a duplicate, not routed a second time.
    #[tokio::test]
    async fn a_resend_during_a_takeover_is_a_duplicate() {
        let broker = Broker::new(Config::default());
        let (old, a) = attach(&broker, false).await;
        let Some(Claimed::New(_claim)) = broker.claim_inbound_qos2(&a.slot, old, 9) else {
            panic!("a new id");
        };
        drop(a.alive);
        let (new, b) = attach(&broker, false).await;
        assert!(b.session_present);
        assert!(matches!(
            broker.claim_inbound_qos2(&b.slot, new, 9),
            Some(Claimed::Duplicate)
        ));
    }

    #[tokio::test]
    async fn a_subscribe_held_past_a_takeover_is_not_applied_to_the_new_owner() {
        let broker = Broker::new(Config::default());
        let connect = Connect {
            protocol: crate::codec::ProtocolVersion::V5,
            clean_start: false,
            keep_alive: 60,
            properties: Default::default(),
            client_id: "c".to_string(),
            will: None,
            username: None,
            password: None,
        };
        let client: ClientId = "c".into();
        let old = broker.next_conn_id();
        let attached = broker
            .connect(old, client.clone(), &connect, 3600)
            .await
            .unwrap();
        // As while the retained index loads at start: the SUBSCRIBE waits for the gate.
        let gate = broker.shared.retain_gate.clone().write_owned().await;
        let sub = Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![(
                "t/#".to_string(),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
        };
        let held = tokio::spawn({
            let (broker, slot) = (broker.clone(), attached.slot.clone());
            async move { broker.subscribe(&slot, old, &sub).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_finished(), "the SUBSCRIBE waits for the gate");
        // A new connection takes the session over; the old one has stopped waiting for it
        // (as after the takeover's time limit).
        drop(attached.alive);
        let new = broker.next_conn_id();
        let resumed = broker.connect(new, client, &connect, 3600).await.unwrap();
        assert!(resumed.session_present);
        drop(gate);
        assert!(
            matches!(held.await, Ok(Ok(None))),
            "refused to the old connection"
        );
        assert!(resumed.slot.state.lock().session.subscriptions.is_empty());
        assert_eq!(broker.subscription_count(), 0);
        // The owner's own SUBSCRIBE still works.
        let sub = Subscribe {
            packet_id: 2,
            properties: Default::default(),
            filters: vec![(
                "t/#".to_string(),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
        };
        let codes = broker.subscribe(&resumed.slot, new, &sub).await.unwrap();
        assert_eq!(codes.map(|c| c.len()), Some(1));
        assert_eq!(broker.subscription_count(), 1);
    }
}
