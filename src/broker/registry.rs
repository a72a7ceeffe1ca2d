//! The session registry: a connection attaching to a session (creating, resuming, taking over
//! or discarding it), detaching from it, and a session ending.

use super::*;

impl Broker {
    pub(super) fn session_record(client: &ClientId, st: &SlotState) -> Record {
        Record::Session(SessionRecord {
            client: client.to_string(),
            protocol: st.session.protocol.level(),
            expiry_interval: st.session.expiry_interval,
            disconnected_at_ms: st.disconnected_at.map(|_| wall_clock_ms()),
        })
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
                            .unwrap_or_else(wall_clock_ms);
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
}
