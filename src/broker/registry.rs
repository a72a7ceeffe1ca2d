//! The session registry: a connection attaching to a session (creating, resuming, taking over
//! or discarding it), detaching from it, and a session ending.

use super::*;

/// The owner recorded for the broker's own sessions: U+0000 cannot occur in an MQTT string
/// [MQTT-1.5.4-2], so no client's username is this.
const BROKER_OWNER: &str = "\u{0}broker";

impl Broker {
    /// The session's record; `disconnected_at_ms` (wall clock) when its connection closed.
    pub(super) fn session_record(
        client: &ClientId,
        st: &SlotState,
        disconnected_at_ms: Option<u64>,
    ) -> Record {
        let (protocol, expiry) = (st.session.protocol.level(), st.session.expiry_interval);
        journal::session(client, protocol, expiry, disconnected_at_ms)
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

    /// Attaches connection `conn`, authenticated as `identity`, to the session of
    /// `client_id`, taking it over from another connection if one holds it, and creating or
    /// discarding it as Clean Start says. While authentication is configured, a session that
    /// belongs to another username is refused ([`ConnectRefusal::NotOwner`]).
    pub async fn connect(
        &self,
        conn: ConnId,
        client_id: ClientId,
        connect: &Connect,
        expiry_interval: u32,
        identity: &crate::hooks::Identity,
    ) -> Result<Attached, ConnectRefusal> {
        let connections = self
            .shared
            .metrics
            .connections_current
            .load(Ordering::Relaxed);
        if connections > self.shared.live.max_connections() as u64 {
            return Err(ConnectRefusal::ServerBusy);
        }
        let (kick_tx, kicked) = oneshot::channel();
        let (alive, alive_rx) = oneshot::channel();
        let slot = self.slot_for(&client_id, connect)?;
        let owner = NewOwner {
            conn,
            connect,
            expiry_interval,
            kick: kick_tx,
            alive: alive_rx,
        };
        let checked = self.owners_checked();
        let mut taken = self.with_slot(&slot, |st| {
            if (checked || Self::broker_owned(st)) && Self::foreign_owner(st, identity) {
                return Err(ConnectRefusal::NotOwner);
            }
            st.belongs_to = Some(Self::owner_of(identity));
            Ok(self.take_ownership(&slot, st, owner))
        })?;
        if let Some(previous) = taken.previous_owner.take() {
            // The connection taken over finishes what it logged; bounded, since it waits only
            // for fdatasyncs, but a stuck one must not keep this client out for ever.
            if tokio::time::timeout(TAKEOVER_WAIT, previous).await.is_err() {
                tracing::warn!(client_id = %client_id, "the connection taken over did not finish in time");
            }
        }
        if taken.session_present {
            self.page_in(&slot).await;
        }
        if !taken.ended_subscriptions.is_empty() {
            let mut router = self.shared.router.write();
            for filter in &taken.ended_subscriptions {
                router.unsubscribe(filter, &client_id);
            }
        }
        // CONNACK of a persistent session only after its record is durable.
        let records = Self::connect_records(&mut taken, &client_id, expiry_interval, identity);
        let durable = self.commit(records).await;
        for (client, will) in taken.wills_to_publish {
            self.publish_will(client, will).await;
        }
        durable.map_err(|_| ConnectRefusal::NotDurable)?;
        Ok(Attached {
            slot,
            session_present: taken.session_present,
            kicked,
            alive,
        })
    }

    /// What a CONNECT logs: a persistent session discarded by Clean Start, or resumed with
    /// expiry 0, leaves the store; a resumed one's waiting will is cleared; a persistent one
    /// gets its record and its owner.
    fn connect_records(
        taken: &mut Taken,
        client_id: &ClientId,
        expiry_interval: u32,
        identity: &crate::hooks::Identity,
    ) -> Vec<Record> {
        let mut records = Vec::new();
        if taken.was_persistent && (taken.discarded || expiry_interval == 0) {
            records.push(journal::session_removed(client_id));
        } else if taken.was_persistent && taken.cancelled_will {
            records.push(journal::will_cleared(client_id));
        }
        if let Some(record) = taken.session_record.take() {
            records.push(record);
            let owner = Self::owner_of(identity);
            records.push(journal::session_owner(client_id, owner.as_deref()));
        }
        records
    }

    /// Whether sessions are tied to the username that owns them: when authentication is
    /// configured (otherwise usernames are only what clients claim).
    fn owners_checked(&self) -> bool {
        self.shared.config.authenticates()
    }

    /// Who a session attached by `identity` belongs to: its username, or for the broker's own
    /// sessions (a superuser without one: in-process clients) a name no client can have, so
    /// that an anonymous client cannot take them over.
    fn owner_of(identity: &crate::hooks::Identity) -> Option<String> {
        match (&identity.username, identity.superuser) {
            (None, true) => Some(BROKER_OWNER.to_string()),
            (username, _) => username.clone(),
        }
    }

    /// Whether the session in `st` is one of the broker's own (a rule's consumer): no network
    /// client may take it, whether or not authentication is configured.
    fn broker_owned(st: &SlotState) -> bool {
        matches!(&st.belongs_to, Some(Some(owner)) if owner == BROKER_OWNER)
    }

    /// Whether the session in `st` is alive and belongs to a username other than
    /// `identity`'s (a superuser owns every session). A session that ended, expired or, not
    /// being persistent, has no connection belongs to no one.
    fn foreign_owner(st: &SlotState, identity: &crate::hooks::Identity) -> bool {
        let Some(owner) = &st.belongs_to else {
            return false;
        };
        if identity.superuser || *owner == Self::owner_of(identity) {
            return false;
        }
        let expiry = Duration::from_secs(u64::from(st.session.expiry_interval));
        let expired = st.session.expiry_interval != u32::MAX
            && st.disconnected_at.is_some_and(|at| at.elapsed() >= expiry);
        st.owner.is_some() || (st.in_store && !st.ended && !expired)
    }

    /// The slot of `client_id`'s session, created (empty, not yet attached) if there is none
    /// and `limits.max_sessions` allows another.
    fn slot_for(
        &self,
        client_id: &ClientId,
        connect: &Connect,
    ) -> Result<Arc<SessionSlot>, ConnectRefusal> {
        let max = self.shared.live.max_sessions();
        let mut sessions = self.shared.sessions.lock();
        if let Some(slot) = sessions.get(client_id) {
            return Ok(slot.clone());
        }
        if sessions.len() >= max {
            return Err(ConnectRefusal::TooManySessions);
        }
        let session = Session::new(client_id.clone(), connect.protocol, self.limits());
        let slot = Arc::new(SessionSlot::new(
            client_id.clone(),
            session,
            false,
            None,
            None,
        ));
        sessions.insert(client_id.clone(), slot.clone());
        Ok(slot)
    }

    /// Makes the new connection the session's owner, under the session lock: kicks the
    /// previous owner, settles the previous connection's will, and starts a fresh session
    /// where Clean Start (or an expiry of 0, or a session already expired) says so.
    fn take_ownership(&self, slot: &SessionSlot, st: &mut SlotState, new: NewOwner) -> Taken {
        let was_persistent = st.in_store && !st.ended;
        let existed = st.owner.is_some()
            || st.disconnected_at.is_some()
            || !st.session.subscriptions.is_empty()
            || st.session.inflight_len() > 0
            || st.session.queued_len() > 0;
        // A session with expiry 0 lasts only as long as its connection [MQTT-3.1.2-6]: a
        // takeover ends it, whatever the new connection asks. One whose expiry ran out is gone
        // even if the reaper has not removed it yet.
        let expired = st.owner.is_none()
            && st.session.expiry_interval != u32::MAX
            && st.disconnected_at.is_some_and(|at| {
                at.elapsed() >= Duration::from_secs(u64::from(st.session.expiry_interval))
            });
        let fresh = new.connect.clean_start || st.session.expiry_interval == 0 || expired;
        // Take over from a connection still attached [MQTT-3.1.4-3].
        if let Some(kick) = st.kick.take() {
            let _ = kick.send(Kick::TakenOver);
        }
        let previous_owner = st.owner_alive.replace(new.alive);
        let (wills_to_publish, cancelled_will) = Self::previous_will(st, fresh);
        let mut ended_subscriptions = Vec::new();
        if fresh {
            st.generation += 1;
            ended_subscriptions = st.session.subscriptions.keys().cloned().collect();
            st.session.clear();
            st.session = Session::new(slot.client_id.clone(), new.connect.protocol, self.limits());
        }
        st.session.protocol = new.connect.protocol;
        st.session.expiry_interval = new.expiry_interval;
        st.owner = Some(new.conn);
        st.kick = Some(new.kick);
        st.will = new.connect.will.clone().map(Box::new);
        st.disconnected_at = None;
        st.ended = false;
        self.drained(slot);
        slot.connected.store(true, Ordering::Release);
        st.in_store = new.expiry_interval > 0;
        let session_record = st
            .in_store
            .then(|| Self::session_record(&slot.client_id, st, None));
        Taken {
            previous_owner,
            was_persistent,
            discarded: fresh,
            session_record,
            wills_to_publish,
            cancelled_will,
            ended_subscriptions,
            session_present: existed && !fresh,
        }
    }

    /// The previous connection's will when a new one attaches: cancelled by a resuming
    /// connection if it has a delay [MQTT-3.1.3-9], published now if the session ends or it has
    /// none. A will already waiting for its delay (its connection closed) is cancelled unless
    /// the session ends. Returns the wills to publish and whether a waiting one was cancelled.
    fn previous_will(st: &mut SlotState, fresh: bool) -> (Vec<(ClientId, LastWill)>, bool) {
        st.will_token += 1;
        let old_will =
            (st.will.take().map(|w| (w, false))).or(st.pending_will.take().map(|(_, w)| (w, true)));
        let Some((w, waiting)) = old_will else {
            return (Vec::new(), false);
        };
        let delay = w.properties.will_delay_interval.unwrap_or(0);
        let publish = fresh || (!waiting && delay == 0);
        let wills = if publish {
            vec![(st.session.client_id.clone(), *w)]
        } else {
            Vec::new()
        };
        (wills, waiting && !fresh)
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
        reason: &'static str,
    ) {
        let mut redispatch = Vec::new();
        let mut shared_paged = Vec::new();
        let mut will_now = None;
        let mut delayed = None;
        let mut records = Vec::new();
        let mut detached = false;
        let end_now = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return false; // taken over: the new connection owns the session and its will
            }
            detached = true;
            let was_persistent = st.in_store;
            self.detach(slot, st, expiry_override);
            let will = st.will.take();
            redispatch = st.session.take_shared_for_redispatch();
            shared_paged = st.session.take_shared_paged();
            if was_persistent && st.session.expiry_interval != 0 {
                // Offline, the backlog costs no body memory: the image or the store has them.
                st.session.page_out();
            }
            let end = st.session.expiry_interval == 0;
            let at_ms = wall_clock_ms();
            if was_persistent && !end {
                // The disconnect time lets expiry count across a restart.
                records.push(Self::session_record(&slot.client_id, st, Some(at_ms)));
            }
            if let (true, Some(w)) = (publish_will, will) {
                let delay = w.properties.will_delay_interval.unwrap_or(0);
                let delay = delay.min(st.session.expiry_interval);
                if delay == 0 || end {
                    will_now = Some(w);
                } else {
                    let waiting = WaitingWill {
                        will: *w,
                        delay,
                        at_ms,
                    };
                    delayed = Some(Self::delay_will(slot, st, waiting, &mut records));
                }
            }
            end
        });
        if detached {
            self.emit(EventKinds::DISCONNECTED, || Event::Disconnected {
                client_id: slot.client_id.clone(),
                reason,
            });
        }
        self.log(records);
        redispatch.extend(self.load_shared(slot, shared_paged).await);
        self.redispatch(redispatch, slot).await;
        if let Some(w) = will_now {
            self.publish_will(slot.client_id.clone(), *w).await;
        }
        if let Some((token, delay)) = delayed {
            self.schedule_will(slot.clone(), token, Duration::from_secs(u64::from(delay)));
        }
        if end_now {
            self.end_session(slot).await;
        }
    }

    /// Marks the session as having no connection from now on (with the expiry the DISCONNECT
    /// may have set); its grace as a draining subscriber starts now (see `is_draining`).
    fn detach(&self, slot: &SessionSlot, st: &mut SlotState, expiry_override: Option<u32>) {
        st.owner = None;
        st.identity = Arc::default();
        st.kick = None;
        slot.connected.store(false, Ordering::Release);
        self.drained(slot);
        st.disconnected_at = Some(Instant::now());
        if let Some(e) = expiry_override {
            st.session.expiry_interval = e;
        }
    }

    /// Keeps a closed connection's will waiting for its delay; for a persistent session its
    /// `WillSet` (with the disconnect time of the session record in the same commit) joins the
    /// disconnect's records, so a restart still publishes it. Returns the will token and the
    /// delay to schedule.
    fn delay_will(
        slot: &SessionSlot,
        st: &mut SlotState,
        waiting: WaitingWill,
        records: &mut Vec<Record>,
    ) -> (u64, u32) {
        st.will_token += 1;
        let WaitingWill { will, delay, at_ms } = waiting;
        if st.in_store {
            let due_ms = at_ms + u64::from(delay) * 1000;
            records.push(journal::will_waiting(&slot.client_id, &will, at_ms, due_ms));
        }
        st.pending_will = Some((st.will_token, Box::new(will)));
        (st.will_token, delay)
    }

    /// Removes a session that ended (expiry 0 at disconnect, or expired), with its
    /// subscriptions, publishing a will still waiting for its delay.
    pub(super) async fn end_session(&self, slot: &Arc<SessionSlot>) {
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
                Some((subs, st.pending_will.take().map(|(_, w)| *w), in_store))
            });
            let Some((subs, will, in_store)) = ended else {
                return;
            };
            let ended = (subs, will);
            if in_store {
                self.log(vec![journal::session_removed(&slot.client_id)]);
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
}

/// A connection about to own a session ([`Broker::take_ownership`]).
struct NewOwner<'a> {
    conn: ConnId,
    connect: &'a Connect,
    expiry_interval: u32,
    kick: oneshot::Sender<Kick>,
    alive: oneshot::Receiver<()>,
}

/// What taking a session's ownership found and changed, for the rest of the CONNECT.
struct Taken {
    /// Closes when the connection taken over has finished.
    previous_owner: Option<oneshot::Receiver<()>>,
    was_persistent: bool,
    /// A fresh session replaced the one there was.
    discarded: bool,
    session_record: Option<Record>,
    wills_to_publish: Vec<(ClientId, LastWill)>,
    /// A will waiting for its delay was cancelled (its `WillSet` must be cleared).
    cancelled_will: bool,
    /// Subscriptions of the discarded session, to take out of the router.
    ended_subscriptions: Vec<String>,
    session_present: bool,
}

/// A will to keep waiting for its delay after its connection closed at `at_ms` (wall clock).
struct WaitingWill {
    will: LastWill,
    delay: u32,
    at_ms: u64,
}
