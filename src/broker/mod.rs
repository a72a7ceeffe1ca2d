//! The broker: the session registry, the router and the retained store, shared by every
//! connection task, plus the background tasks (session expiry, delayed wills, `$SYS`).
//!
//! # Files
//! One concern each; all extend [`Broker`]:
//! - `registry`: connect (create, resume, take over, discard), disconnect, a session ending;
//! - `publish`: a message's way to its reservation (QoS 2 claim, routing plan, retained limit);
//! - `placement`: reserve and log, then make visible (or give back) once durable; the
//!   overflow policy; retained updates in log order;
//! - `groups`: shared-subscription redispatch when a member leaves;
//! - `subscribe`: SUBSCRIBE/UNSUBSCRIBE and retained copies;
//! - `acks`: PUBACK/PUBREC/PUBCOMP/PUBREL flows of a connected session;
//! - `wills`: delayed wills, session expiry, expired messages;
//! - `restore`: rebuilding from the durable image at start, paging offline queues in;
//! - `durability`: logging and waiting for records, stopping when persistence fails;
//! - `sys`: background ticks and `$SYS` statistics (published through the broker's own
//!   in-process client);
//! - `local`: the in-process client ([`local::LocalClient`], [`local::LocalSession`]): broker
//!   code that publishes and subscribes like a client, under the same durability contract;
//! - `confirm`: publishers waiting for `ack = "delivered"` sinks (registered with the
//!   reservation, confirmed by the sinks' feeds);
//! - `connection`: one task per network connection (the `select!` loop, buffers, and the
//!   calls into `crate::protocol`).
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
//! the acknowledgement ([`Broker::publish_pipelined`] with [`Broker::reveal`],
//! [`Broker::outbound_pubrec`], [`Broker::inbound_pubrel`]). Routing reserves queue room and
//! packet identifiers, logs the records, and only once they are durable makes the deliveries
//! visible, so no subscriber ever sees a message that is not yet durable. Sessions with expiry
//! 0 write nothing.
//!
//! A connection taking a session over waits (at most [`TAKEOVER_WAIT`]) for the connection it
//! replaces to finish: that one's last records precede the new session record in the log, so
//! the new CONNACK's commit covers them, and no re-sent PUBLISH or PUBREL can overtake them.

mod acks;
mod admin;
mod confirm;
pub mod connection;
mod counted;
mod durability;
mod events;
mod groups;
pub mod live_limits;
pub mod local;
pub mod metrics;
mod placement;
mod publish;
mod registry;
mod restore;
mod subscribe;
mod sys;
#[cfg(test)]
mod tests;
mod wills;

use confirm::*;
use counted::CountedLock;
use placement::*;
use publish::*;
pub use publish::{Origin, PlannedPublish, PublishOutcome};
use restore::REFILL_BELOW;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use crate::codec::topic::parse_shared;
use crate::codec::{
    Connect, ConnectProperties, LastWill, ProtocolVersion, PublishProperties, QoS, ReasonCode,
    RetainHandling, Subscribe, SubscribeProperties, SubscriptionOptions,
};
use crate::config::Config;
use crate::hooks::{Event, EventKinds};
use crate::persistence::convert::{
    restore_message, restore_message_in, restore_will, wall_clock_ms,
};
use crate::persistence::records::{Record, SessionRecord};
use crate::persistence::{self, journal, PendingDurable, Persistence};
use crate::router::retained::RetainedStore;
use crate::router::{ClientId, Match, Router, Subscription};
use crate::session::{
    Delivery, Enqueued, Message, PacketId, PagedDelivery, PubRecOutcome, RuleReach, Session,
    SessionLimits, SubscriptionRecord,
};

pub use admin::{ClientView, ConnMeta, QueuedView, SubscriptionView};
pub use metrics::{Metrics, MetricsSnapshot};

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
    /// The session is a broker-internal durable consumer (a rule's, client id `$rule/…`): it always counts as
    /// draining, so its full queue holds publishers back rather than losing their messages,
    /// and messages with [`Message::rules`] other than [`RuleReach::All`] pass it by.
    consumer: AtomicBool,
    /// What it reads for, by its client id.
    role: SlotRole,
    /// Deliveries queued and in flight, as of the last change through `Broker::with_slot`:
    /// read by metrics without the slot's lock.
    held: AtomicUsize,
}

/// What a session reads messages for, which decides the messages it is routed
/// ([`RuleReach`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRole {
    /// A client's (network or in-process).
    Client,
    /// A rule's: a rule consumer (`$rule/<id>`) or the feed of a rule into a sink
    /// (`$sink/<name>/<rule>`).
    RuleReader,
    /// A sink's own topics (`$sink/<name>/$topics`): a subscriber that writes to a target.
    SinkTopics,
}

impl SlotRole {
    fn of(client_id: &str) -> SlotRole {
        use crate::protocol::admission::{RESERVED_CLIENT_ID_PREFIX, SINK_CLIENT_ID_PREFIX};
        if client_id.starts_with(RESERVED_CLIENT_ID_PREFIX) {
            return SlotRole::RuleReader;
        }
        match client_id.strip_prefix(SINK_CLIENT_ID_PREFIX) {
            Some(rest) if rest.ends_with("/$topics") => SlotRole::SinkTopics,
            Some(_) => SlotRole::RuleReader,
            None => SlotRole::Client,
        }
    }

    /// Whether a message that `reach`es so is routed to a session of this role.
    pub(crate) fn receives(self, reach: RuleReach) -> bool {
        match (reach, self) {
            (RuleReach::All, _) | (_, SlotRole::Client) => true,
            (RuleReach::Inline | RuleReach::None, SlotRole::SinkTopics) => true,
            (_, SlotRole::RuleReader) | (RuleReach::Subscribers, SlotRole::SinkTopics) => false,
        }
    }
}

#[derive(Debug)]
struct SlotState {
    session: Session,
    /// The connection attached to the session, if any.
    owner: Option<ConnId>,
    /// Tells the attached connection it has been taken over.
    kick: Option<oneshot::Sender<Kick>>,
    /// Closes when the attached (or last attached) connection has finished (`Attached::alive`).
    owner_alive: Option<oneshot::Receiver<()>>,
    /// The will of the attached connection.
    will: Option<Box<LastWill>>,
    /// A will waiting for its Will Delay Interval after the connection closed, with the token
    /// that the delayed publisher must still find.
    pending_will: Option<(u64, Box<LastWill>)>,
    will_token: u64,
    disconnected_at: Option<Instant>,
    /// The session was removed from the registry; late deliveries are discarded.
    ended: bool,
    /// The session is in the durable image (it is persistent): its changes are logged.
    in_store: bool,
    /// Bumped whenever the session is replaced (Clean Start) or cleared (ended): a reservation
    /// or a page-in begun for an earlier generation is dropped, never applied to the new one.
    generation: u64,
    /// Who the attached connection authenticated as (for authorization).
    identity: Arc<crate::hooks::Identity>,
    /// The username the session belongs to (`Some(None)`: a client without one); `None`: not
    /// known (a fresh slot, or restored from a log that did not record owners). See
    /// `Broker::foreign_owner`.
    belongs_to: Option<Option<String>>,
    /// What the last connection told about itself (for the HTTP API); boxed, as rare reads.
    conn: Option<Box<ConnMeta>>,
}

impl SessionSlot {
    /// A slot with no connection attached: `in_store` for a persistent session,
    /// `disconnected_at` for one restored from disk, and the will it restores waiting for its
    /// delay (will token 1).
    fn new(
        client_id: ClientId,
        session: Session,
        in_store: bool,
        disconnected_at: Option<Instant>,
        pending_will: Option<LastWill>,
    ) -> SessionSlot {
        let will_token = u64::from(pending_will.is_some());
        // Known by its reserved id from the start (a restored one too, before its consumer
        // attaches); network clients cannot take such an id.
        let consumer = crate::protocol::admission::is_reserved_client_id(&client_id);
        let role = SlotRole::of(&client_id);
        let held = AtomicUsize::new(session.queued_len() + session.inflight_len());
        SessionSlot {
            client_id,
            state: Mutex::new(SlotState {
                session,
                owner: None,
                kick: None,
                owner_alive: None,
                will: None,
                pending_will: pending_will.map(|w| (will_token, Box::new(w))),
                will_token,
                disconnected_at,
                ended: false,
                in_store,
                generation: 0,
                identity: Arc::default(),
                belongs_to: None,
                conn: None,
            }),
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            last_drain_ms: AtomicU64::new(0),
            consumer: AtomicBool::new(consumer),
            role,
            held,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

impl Broker {
    /// Milliseconds since the broker started (a cheap monotonic clock for slot bookkeeping).
    pub(crate) fn uptime_ms(&self) -> u64 {
        self.shared.started.elapsed().as_millis() as u64
    }
}

/// Why a connection is told to close by the broker while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Another connection took the session over.
    TakenOver,
    /// An operator kicked the client (the HTTP API); its session is discarded after.
    Administrative,
}

/// Result of attaching a connection to a session.
pub struct Attached {
    pub slot: Arc<SessionSlot>,
    pub session_present: bool,
    /// Notified when another connection takes the session over.
    pub kicked: oneshot::Receiver<Kick>,
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
    /// The session belongs to another user (authentication configured).
    NotOwner,
}

pub(crate) struct Shared {
    pub config: Config,
    sessions: Mutex<HashMap<ClientId, Arc<SessionSlot>>>,
    router: CountedLock<Router<Arc<SessionSlot>>>,
    retained: CountedLock<RetainedStore<Arc<Message>>>,
    pub metrics: Metrics,
    /// Payload bytes queued across all sessions, for `limits.max_queued_bytes_total`.
    queued_bytes_total: AtomicUsize,
    /// Wakes 3.x publishers held back by a full queue when queue room is freed.
    room: Notify,
    next_conn_id: AtomicU64,
    next_assigned_id: AtomicU64,
    started: Instant,
    shutdown: watch::Sender<bool>,
    /// Wakes the parked connections at shutdown (they do not watch `shutdown`; see
    /// `connection::Connection::park`).
    parked_shutdown: Notify,
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
    /// The authenticator, the authorizer and the event channels (see `crate::hooks`).
    hooks: events::HookSet,
    /// Every listener's connection counts, in configuration order.
    listeners: RwLock<Vec<Arc<metrics::ListenerStats>>>,
    /// Every rule's counters (see `crate::rules`).
    rules: RwLock<Vec<Arc<metrics::RuleStats>>>,
    sinks: RwLock<Vec<Arc<metrics::SinkStats>>>,
    sources: RwLock<Vec<Arc<metrics::SinkStats>>>,
    /// The inline topic rules, if any (see [`crate::hooks::PublishRules`]).
    publish_rules: RwLock<Option<Arc<dyn crate::hooks::PublishRules>>>,
    /// Whether `publish_rules` holds rules: a publish without them takes no lock.
    has_publish_rules: AtomicBool,
    /// Publishers waiting for `ack = "delivered"` sinks (see `confirm`).
    confirmations: Arc<Confirmations>,
    /// The `[limits]` a reload changes (see `live_limits`).
    live: live_limits::LiveLimits,
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

    fn build(config: Config, persistence: Option<Arc<Persistence>>) -> Broker {
        let (shutdown, _) = watch::channel(false);
        let first_id = persistence
            .as_ref()
            .map_or_else(crate::persistence::convert::message_id_floor, |p| {
                p.next_message_id()
            });
        let pending_connections = config.limits.max_pending_connections;
        let live = live_limits::LiveLimits::new(&config.limits);
        Broker {
            shared: Arc::new(Shared {
                config,
                sessions: Mutex::new(HashMap::new()),
                router: CountedLock::new(Router::new()),
                retained: CountedLock::new(RetainedStore::new()),
                metrics: Metrics::default(),
                queued_bytes_total: AtomicUsize::new(0),
                room: Notify::new(),
                next_conn_id: AtomicU64::new(1),
                next_assigned_id: AtomicU64::new(1),
                started: Instant::now(),
                shutdown,
                parked_shutdown: Notify::new(),
                persistence,
                next_message_id: AtomicU64::new(first_id),
                failed: AtomicBool::new(false),
                retain_gate: Arc::new(tokio::sync::RwLock::new(())),
                retain_order: Mutex::new(RetainOrder::default()),
                connecting: Arc::new(tokio::sync::Semaphore::new(pending_connections)),
                hooks: events::HookSet::default(),
                listeners: RwLock::new(Vec::new()),
                rules: RwLock::new(Vec::new()),
                sinks: RwLock::new(Vec::new()),
                sources: RwLock::new(Vec::new()),
                publish_rules: RwLock::new(None),
                has_publish_rules: AtomicBool::new(false),
                confirmations: Arc::default(),
                live,
            }),
        }
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

    /// Waits until the retained index is loaded (the loader released the retain gate).
    pub async fn retained_loaded(&self) {
        let _ = self.shared.retain_gate.write().await;
    }

    /// Tells every connection and background task to stop. Takes no lock: it is called from
    /// `fatal`, which may run under any of them.
    pub fn begin_shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared.parked_shutdown.notify_waiters();
    }

    /// Registers a parked connection for the shutdown's wake-up (`notify_waiters` reaches only
    /// registered waiters), then tells whether the shutdown has begun already: a connection
    /// that parks after [`Self::begin_shutdown`] sees the signal, one parked before it is
    /// woken.
    pub(crate) fn park_for_shutdown(
        &self,
        wake: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> bool {
        wake.enable();
        *self.shared.shutdown.borrow()
    }

    /// The future [`Self::park_for_shutdown`] registers.
    pub(crate) fn parked_shutdown(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.parked_shutdown.notified()
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

    /// Registers a listener's connection counts, for metrics and `$SYS`.
    pub fn add_listener(
        &self,
        name: Arc<str>,
        kind: &'static str,
        bind: std::net::SocketAddr,
    ) -> Arc<metrics::ListenerStats> {
        let stats = Arc::new(metrics::ListenerStats {
            name,
            kind,
            bind,
            current: AtomicU64::new(0),
            total: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        self.shared.listeners.write().push(stats.clone());
        stats
    }

    /// Counts a socket closed at once by a limit.
    pub fn count_refused(&self) {
        Metrics::add(&self.shared.metrics.connections_refused, 1);
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.shared.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn session_count(&self) -> usize {
        self.shared.sessions.lock().len()
    }

    /// The client ids of every session whose id starts with `prefix`.
    pub fn client_ids_with_prefix(&self, prefix: &str) -> Vec<ClientId> {
        let sessions = self.shared.sessions.lock();
        sessions
            .keys()
            .filter(|c| c.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Messages held (queued or in flight) by the sessions whose client ids start with
    /// `prefix`.
    pub fn queued_messages_with_prefix(&self, prefix: &str) -> usize {
        let slots: Vec<Arc<SessionSlot>> = {
            let sessions = self.shared.sessions.lock();
            sessions
                .iter()
                .filter(|(c, _)| c.starts_with(prefix))
                .map(|(_, s)| s.clone())
                .collect()
        };
        // Without the slots' locks (the message path's): each slot's count as of its last change.
        slots.iter().map(|s| s.held.load(Ordering::Relaxed)).sum()
    }

    /// Who the connection attached (or last attached) to `client_id`'s session is.
    pub fn identity_of(&self, client_id: &str) -> Option<Arc<crate::hooks::Identity>> {
        let slot = self.shared.sessions.lock().get(client_id).cloned()?;
        let identity = slot.state.lock().identity.clone();
        Some(identity)
    }

    /// Subscriptions, read without the router's lock.
    pub fn subscription_count(&self) -> usize {
        self.shared.router.count()
    }

    /// Retained messages, read without the retained store's lock.
    pub fn retained_count(&self) -> usize {
        self.shared.retained.count()
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
        let held = st.session.queued_len() + st.session.inflight_len();
        drop(st);
        slot.held.store(held, Ordering::Relaxed);
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
}

pub(crate) use crate::protocol::max_qos;
