//! The broker: the session registry, the router and the retained store, shared by every
//! connection task, plus the background tasks (session expiry, delayed wills, `$SYS`).
//!
//! # Locks
//! All locks are `parking_lot` locks held for short, non-async sections, in this order:
//! registry → session slot → router / retained. Routing collects its targets under the router's
//! read lock, releases it, and only then locks each target session; whether a session is
//! connected is an atomic so that shared-subscription choice needs no session lock.
//!
//! # Where durability plugs in
//! Every acknowledgement a connection sends is the result of an `async` broker method —
//! [`Broker::connect`], [`Broker::publish`], [`Broker::subscribe`], [`Broker::unsubscribe`] —
//! that returns only once the state it acknowledges may be acknowledged. Routing is split into
//! a plan (targets decided) and a delivery (queues updated), so that the write-ahead log can be
//! synced between the two and no subscriber ever sees a message that is not yet durable.

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
use crate::router::retained::RetainedStore;
use crate::router::{ClientId, Match, Router, Subscription};
use crate::session::{Delivery, Enqueued, Message, Session, SessionLimits, SubscriptionRecord};

pub use metrics::Metrics;

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
}

#[derive(Debug)]
struct SlotState {
    session: Session,
    /// The connection attached to the session, if any.
    owner: Option<ConnId>,
    /// Tells the attached connection it has been taken over.
    kick: Option<oneshot::Sender<()>>,
    /// The will of the attached connection.
    will: Option<LastWill>,
    /// A will waiting for its Will Delay Interval after the connection closed, with the token
    /// that the delayed publisher must still find.
    pending_will: Option<(u64, LastWill)>,
    will_token: u64,
    disconnected_at: Option<Instant>,
    /// The session was removed from the registry; late deliveries are discarded.
    ended: bool,
}

impl SessionSlot {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// What [`Broker::publish`] did with a message.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Sessions the message was queued for.
    pub delivered: usize,
    /// QoS 1/2 deliveries that found a full queue: the publisher must be told (v5 0x97) or held
    /// back until [`Broker::retry_full`] places them.
    pub full: Vec<(Arc<SessionSlot>, Delivery)>,
    /// The retained store was full and the new retained topic was not stored.
    pub retained_refused: bool,
}

/// Result of attaching a connection to a session.
pub struct Attached {
    pub slot: Arc<SessionSlot>,
    pub session_present: bool,
    /// Notified when another connection takes the session over.
    pub kicked: oneshot::Receiver<()>,
}

/// Why a CONNECT is refused before a session is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    ServerBusy,
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
}

/// A cheap, cloneable handle on the broker.
#[derive(Clone)]
pub struct Broker {
    pub(crate) shared: Arc<Shared>,
}

impl Broker {
    pub fn new(config: Config) -> Broker {
        let (shutdown, _) = watch::channel(false);
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

    /// Tells every connection and background task to stop.
    pub fn begin_shutdown(&self) {
        self.shared.shutdown.send_replace(true);
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
        let mut wills_to_publish = Vec::new();
        let mut ended_subscriptions = Vec::new();
        let (slot, session_present) = {
            let mut sessions = self.shared.sessions.lock();
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
                            will: None,
                            pending_will: None,
                            will_token: 0,
                            disconnected_at: None,
                            ended: false,
                        }),
                        wake: Notify::new(),
                        connected: AtomicBool::new(false),
                    })
                })
                .clone();
            let present = self.with_slot(&slot, |st| {
                let existed = st.owner.is_some()
                    || st.disconnected_at.is_some()
                    || !st.session.subscriptions.is_empty()
                    || st.session.inflight_len() > 0
                    || st.session.queued_len() > 0;
                // Take over from a connection still attached [MQTT-3.1.4-3].
                if let Some(kick) = st.kick.take() {
                    let _ = kick.send(());
                }
                // The previous connection's will: cancelled by a resuming connection if it has
                // a delay [MQTT-3.1.3-9], published now if the session ends or it has none.
                st.will_token += 1;
                let old_will = st.will.take().or(st.pending_will.take().map(|(_, w)| w));
                if let Some(w) = old_will {
                    let delay = w.properties.will_delay_interval.unwrap_or(0);
                    if connect.clean_start || delay == 0 {
                        wills_to_publish.push((st.session.client_id.clone(), w));
                    }
                }
                if connect.clean_start {
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
                slot.connected.store(true, Ordering::Release);
                existed && !connect.clean_start
            });
            (slot, present)
        };
        if !ended_subscriptions.is_empty() {
            let mut router = self.shared.router.write();
            for filter in &ended_subscriptions {
                router.unsubscribe(filter, &client_id);
            }
        }
        for (client, will) in wills_to_publish {
            self.publish_will(client, will).await;
        }
        Ok(Attached {
            slot,
            session_present,
            kicked,
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
        let end_now = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return false; // taken over: the new connection owns the session and its will
            }
            st.owner = None;
            st.kick = None;
            slot.connected.store(false, Ordering::Release);
            st.disconnected_at = Some(Instant::now());
            if let Some(e) = expiry_override {
                st.session.expiry_interval = e;
            }
            let will = st.will.take();
            redispatch = st.session.take_shared_for_redispatch();
            let end = st.session.expiry_interval == 0;
            if let (true, Some(w)) = (publish_will, will) {
                let delay = w.properties.will_delay_interval.unwrap_or(0);
                let delay = delay.min(st.session.expiry_interval);
                if delay == 0 || end {
                    will_now = Some(w);
                } else {
                    st.will_token += 1;
                    st.pending_will = Some((st.will_token, w));
                    delayed = Some((st.will_token, delay));
                }
            }
            end
        });
        for d in redispatch {
            self.redispatch(d, &slot.client_id);
        }
        if let Some(w) = will_now {
            self.publish_will(slot.client_id.clone(), w).await;
        }
        if let Some((token, delay)) = delayed {
            let broker = self.clone();
            let slot = slot.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                let will = broker.with_slot(&slot, |st| match st.pending_will.take() {
                    Some((t, w)) if t == token && st.owner.is_none() => Some(w),
                    other => {
                        st.pending_will = other;
                        None
                    }
                });
                if let Some(w) = will {
                    broker.publish_will(slot.client_id.clone(), w).await;
                }
            });
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
                let subs: Vec<String> = st.session.subscriptions.keys().cloned().collect();
                st.session.clear();
                Some((subs, st.pending_will.take().map(|(_, w)| w)))
            });
            let Some(ended) = ended else { return };
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
            }
        }
    }

    async fn publish_will(&self, client: ClientId, will: LastWill) {
        let now = Instant::now();
        let p = will.properties;
        let message = Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
                ..Default::default()
            },
            expires_at: p
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            publisher: Some(client),
        };
        let outcome = self.publish(Arc::new(message)).await;
        if !outcome.full.is_empty() {
            // Nobody waits for a will's acknowledgement; a full queue refuses it like any
            // QoS 1/2 message, and this is counted.
            tracing::warn!(refused = outcome.full.len(), "will not queued: queue full");
        }
    }

    // ------------------------------------------------------------------------------ routing

    /// Routes a message: updates the retained store if RETAIN is set, and queues a delivery for
    /// every matching session.
    pub async fn publish(&self, message: Arc<Message>) -> PublishOutcome {
        let mut outcome = PublishOutcome::default();
        if message.retain && !self.update_retained(&message) {
            outcome.retained_refused = true;
            Metrics::add(&self.shared.metrics.retained_refused, 1);
        }
        let plan = self.plan(&message);
        self.deliver(plan, &mut outcome);
        outcome
    }

    /// Stores or deletes the retained message of a topic; false if the store is full.
    fn update_retained(&self, message: &Arc<Message>) -> bool {
        let mut retained = self.shared.retained.write();
        if message.payload.is_empty() {
            retained.remove(&message.topic);
            return true;
        }
        if retained.len() >= self.shared.config.limits.max_retained_messages
            && !retained.contains(&message.topic)
        {
            return false;
        }
        retained.insert(&message.topic, message.clone());
        true
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

    fn deliver(&self, plan: Vec<(Arc<SessionSlot>, Delivery)>, outcome: &mut PublishOutcome) {
        for (slot, delivery) in plan {
            match self.enqueue(&slot, delivery.clone()) {
                Some(Enqueued::Queued) => outcome.delivered += 1,
                Some(Enqueued::Full) => outcome.full.push((slot, delivery)),
                Some(Enqueued::DroppedQos0) => {
                    Metrics::add(&self.shared.metrics.dropped_qos0, 1);
                }
                None => {}
            }
        }
    }

    /// Queues one delivery for one session and wakes its connection. `None` if the session
    /// has ended.
    fn enqueue(&self, slot: &Arc<SessionSlot>, delivery: Delivery) -> Option<Enqueued> {
        let max_total = self.shared.config.limits.max_queued_bytes_total;
        let global_room = self.shared.queued_bytes_total.load(Ordering::Relaxed)
            + delivery.payload_len()
            <= max_total;
        let result = self.with_slot(slot, |st| {
            if st.ended {
                return None;
            }
            Some(st.session.enqueue(delivery, global_room))
        });
        if result == Some(Enqueued::Queued) {
            slot.wake.notify_one();
        }
        result
    }

    /// Tries again to queue deliveries that found a full queue; returns those still refused.
    pub fn retry_full(
        &self,
        full: Vec<(Arc<SessionSlot>, Delivery)>,
    ) -> Vec<(Arc<SessionSlot>, Delivery)> {
        full.into_iter()
            .filter(|(slot, d)| self.enqueue(slot, d.clone()) == Some(Enqueued::Full))
            .collect()
    }

    /// Gives a shared-subscription delivery of a departed member to another member of its
    /// group that is connected, if any; otherwise it goes back to the departed member.
    fn redispatch(&self, delivery: Delivery, from: &ClientId) {
        let Some(group) = delivery.shared_group.clone() else {
            return;
        };
        let mut target = None;
        {
            let router = self.shared.router.read();
            router.matches(&delivery.message.topic, |m| {
                if let Match::Shared(g) = m {
                    if *g.name == *group && target.is_none() {
                        target = g
                            .rotation()
                            .find(|s| s.client != *from && s.target.is_connected())
                            .map(|s| (s.target.clone(), s.options.qos));
                    }
                }
            });
        }
        let (slot, granted) = match target {
            Some(t) => t,
            None => {
                let Some(slot) = self.shared.sessions.lock().get(from).cloned() else {
                    return;
                };
                (slot, delivery.qos)
            }
        };
        let mut d = delivery;
        d.qos = d.message.qos.min(granted);
        if self.enqueue(&slot, d) == Some(Enqueued::Full) {
            Metrics::add(&self.shared.metrics.queue_full_refusals, 1);
            tracing::warn!(client = %slot.client_id, "shared redispatch refused: queue full");
        }
    }

    // ------------------------------------------------------------------------ subscriptions

    /// Applies a SUBSCRIBE for a session and returns one reason code per filter. Retained
    /// messages for the new subscriptions are queued to the session behind the SUBACK.
    pub async fn subscribe(&self, slot: &Arc<SessionSlot>, sub: &Subscribe) -> Vec<ReasonCode> {
        let cfg = &self.shared.config;
        let mut codes = Vec::with_capacity(sub.filters.len());
        let identifier = sub.properties.subscription_identifier;
        for (filter, options) in &sub.filters {
            let shared = parse_shared(filter);
            let levels = shared.filter.split('/').count();
            let wildcard = crate::codec::topic::has_wildcards(shared.filter);
            let code = if levels > cfg.limits.max_topic_levels {
                ReasonCode::TOPIC_FILTER_INVALID
            } else if shared.group.is_some() && !cfg.mqtt.shared_subscription_available {
                ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
            } else if wildcard && !cfg.mqtt.wildcard_subscription_available {
                ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
            } else {
                let granted = options.qos.min(max_qos(cfg));
                let opts = SubscriptionOptions {
                    qos: granted,
                    ..*options
                };
                let over_limit = {
                    let st = slot.state.lock();
                    !st.session.subscriptions.contains_key(filter)
                        && st.session.subscriptions.len() >= cfg.limits.max_subscriptions_per_client
                };
                if over_limit {
                    ReasonCode::QUOTA_EXCEEDED
                } else {
                    let existed = self.shared.router.write().subscribe(
                        filter,
                        Subscription {
                            client: slot.client_id.clone(),
                            options: opts,
                            identifier,
                            target: slot.clone(),
                        },
                    );
                    self.with_slot(slot, |st| {
                        st.session.subscriptions.insert(
                            filter.clone(),
                            SubscriptionRecord {
                                options: opts,
                                identifier,
                            },
                        )
                    });
                    let send_retained = shared.group.is_none()
                        && match opts.retain_handling {
                            RetainHandling::OnSubscribe => true,
                            RetainHandling::OnNewSubscribe => !existed,
                            RetainHandling::Never => false,
                        };
                    if send_retained {
                        self.queue_retained(slot, shared.filter, opts.qos, identifier);
                    }
                    ReasonCode(granted as u8)
                }
            };
            codes.push(code);
        }
        codes
    }

    fn queue_retained(&self, slot: &Arc<SessionSlot>, filter: &str, qos: QoS, id: Option<u32>) {
        let now = Instant::now();
        let mut found = Vec::new();
        self.shared.retained.read().matching(filter, |m| {
            if !m.is_expired(now) {
                found.push(m.clone());
            }
        });
        for message in found {
            let d = Delivery {
                qos: message.qos.min(qos),
                message,
                retain: true,
                subscription_ids: id.into_iter().collect(),
                shared_group: None,
            };
            match self.enqueue(slot, d) {
                Some(Enqueued::Queued) | None => {}
                Some(_) => Metrics::add(&self.shared.metrics.dropped_qos0, 1),
            }
        }
    }

    /// Applies an UNSUBSCRIBE; one reason code per filter (0x11 if there was none).
    pub async fn unsubscribe(
        &self,
        slot: &Arc<SessionSlot>,
        filters: &[String],
    ) -> Vec<ReasonCode> {
        filters
            .iter()
            .map(|f| {
                let removed = self.shared.router.write().unsubscribe(f, &slot.client_id);
                self.with_slot(slot, |st| st.session.subscriptions.remove(f));
                if removed {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect()
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
        let stats: [(&str, String); 15] = [
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
                Metrics::get(&m.dropped_qos0).to_string(),
            ),
            ("messages/expired", Metrics::get(&m.expired).to_string()),
            (
                "store/messages/bytes",
                self.queued_bytes_total().to_string(),
            ),
        ];
        for (name, value) in stats {
            let message = Message {
                topic: format!("$SYS/broker/{name}").into(),
                payload: value.into_bytes().into(),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PublishProperties::default(),
                expires_at: None,
                publisher: None,
            };
            self.publish(Arc::new(message)).await;
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
        self.with_slot(slot, |st| {
            (st.owner == Some(conn)).then(|| f(&mut st.session))
        })
    }
}

/// The highest QoS the broker grants.
pub(crate) fn max_qos(cfg: &Config) -> QoS {
    QoS::from_u8(cfg.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce)
}
