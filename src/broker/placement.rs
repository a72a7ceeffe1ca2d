//! Placing deliveries: reserve queue room and packet ids and log the records, then — once they
//! are durable — make the deliveries (and a retained update, in log order) visible, or give the
//! reservation back. The overflow policy (draining vs stalled subscribers) is decided here.

use super::*;

/// Deliveries reserved in their sessions (room and packet ids), invisible to their
/// connections until [`Broker::reveal`] (after the records are durable) or given back by
/// [`Broker::unreserve`].
#[derive(Debug)]
#[must_use]
pub(crate) struct Reserved {
    /// Target, packet id, delivery, and the session generation the reservation was made in.
    pub(super) deliveries: Vec<(Arc<SessionSlot>, PacketId, Delivery, u64)>,
    /// Retained updates to apply with the deliveries (the message's, and those of rule
    /// outputs), each with its place in log order.
    pub(super) retain: Vec<(Arc<Message>, u64)>,
    /// The published message, reported to the event sink once visible (`None` for copies
    /// that are not a publish: retained-on-subscribe, redispatch).
    pub(super) published: Option<Arc<Message>>,
}

impl Reserved {
    /// How many sessions the message is placed for.
    pub(crate) fn len(&self) -> usize {
        self.deliveries.len()
    }
}

/// What [`Broker::reserve_target`] did for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TargetReservation {
    Queued {
        packet_id: PacketId,
        generation: u64,
    },
    /// The session's queue (or the broker-wide cap) has no room for a QoS 1/2 delivery, or a
    /// QoS 0 one that waits for a draining subscriber.
    Full,
    DroppedQos0,
    /// The session ended meanwhile.
    Ended,
}

/// How [`Broker::reserve_targets`] places deliveries.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReserveOptions<'a> {
    /// A single full QoS 1/2 target that is draining its queue cancels every reservation, and
    /// nothing is logged; a full target that is not draining (offline or stalled) loses its
    /// copy (counted). Without it, full targets are returned and the rest placed.
    pub(super) all_or_nothing: bool,
    /// A QoS 0 delivery waits (counts as full) for a connected, draining subscriber's queue.
    pub(super) qos0_may_wait: bool,
    /// The publisher's claimed QoS 2 id, logged with the records.
    pub(super) inbound_qos2: Option<&'a InboundClaim>,
}

/// What [`Broker::reserve_targets`] returns: the placement made (`None` when all-or-nothing met a
/// full queue), and the targets whose queue was full.
pub(super) type ReserveResult = (Option<Logged>, Vec<(Arc<SessionSlot>, Delivery)>);

/// A [`Reserved`] and the wait for its records.
#[derive(Debug)]
pub(crate) struct Logged {
    pub(crate) reserved: Reserved,
    pub(crate) durable: PendingDurable,
    /// What the publisher's acknowledgement waits for once visible (see `confirm`).
    pub(crate) confirm: Option<Confirm>,
}

/// Retained updates become visible in the order of their records in the log, not in the order
/// their fdatasyncs are noticed: two RETAIN publishes to one topic covered by one fdatasync
/// can wake up in either order, and the older must not win (a restart would bring the newer
/// back). Each update takes a version while its records are appended, under this lock; the
/// index applies an update only if no later version of its topic was applied first.
#[derive(Debug, Default)]
pub(super) struct RetainOrder {
    pub(super) next_version: u64,
    /// Topics with updates reserved but not yet revealed or unreserved: how many, and the
    /// latest version applied meanwhile. A topic leaves the map with its last update, so the
    /// map holds only updates in flight.
    pub(super) in_flight: HashMap<crate::codec::ByteStr, (usize, u64)>,
}

impl RetainOrder {
    pub(super) fn reserve(&mut self, topic: &crate::codec::ByteStr) -> u64 {
        self.next_version += 1;
        self.in_flight.entry(topic.clone()).or_insert((0, 0)).0 += 1;
        self.next_version
    }

    /// Ends an update in flight; whether it is to be applied (no later one was).
    pub(super) fn finish(
        &mut self,
        topic: &crate::codec::ByteStr,
        version: u64,
        applied: bool,
    ) -> bool {
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

impl Broker {
    /// The connection attached to `slot` took deliveries from its queue.
    pub(crate) fn drained(&self, slot: &SessionSlot) {
        slot.last_drain_ms
            .store(self.uptime_ms(), Ordering::Relaxed);
    }

    /// Whether a QoS 0 message meeting `slot`'s full queue should wait for room (the
    /// subscriber is connected and draining) rather than be dropped.
    pub(super) fn qos0_waits_for(&self, slot: &SessionSlot) -> bool {
        let stall = self.shared.live.stalled_subscriber_ms();
        stall > 0
            && slot.is_connected()
            && self
                .uptime_ms()
                .saturating_sub(slot.last_drain_ms.load(Ordering::Relaxed))
                < stall
    }

    /// Reserves room and packet ids in the targets' queues and logs the records (an `Enqueue`
    /// with the message body for every persistent session among them), without waiting: the
    /// deliveries become visible with [`Self::reveal`] once durable. `None` (and nothing logged) when `all_or_nothing` met a full queue.
    pub(super) fn reserve_targets(
        &self,
        targets: Vec<(Arc<SessionSlot>, Delivery)>,
        mut records: Vec<Record>,
        how: ReserveOptions<'_>,
    ) -> Result<ReserveResult, NotDurable> {
        let ReserveOptions {
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
                    self.emit(EventKinds::DROPPED, || Event::Dropped {
                        client_id: slot.client_id.clone(),
                        message: delivery.message.clone(),
                    });
                }
                TargetReservation::Full => full.push((slot, delivery)),
                TargetReservation::DroppedQos0 => {
                    Metrics::add(&self.shared.metrics.dropped_qos0, 1);
                }
                TargetReservation::Ended => {}
            }
        }
        let placement = Reserved {
            deliveries: reserved,
            retain: Vec::new(),
            published: None,
        };
        if all_or_nothing && !full.is_empty() {
            self.unreserve(placement);
            return Ok((None, full));
        }
        let logged = match inbound_qos2 {
            Some(claim) => self.log_with_claim(records, claim),
            None => self.log_pending(records),
        };
        match logged {
            Ok(durable) => Ok((
                Some(Logged {
                    reserved: placement,
                    durable,
                    confirm: None,
                }),
                full,
            )),
            Err(e) => {
                self.unreserve(placement);
                Err(e)
            }
        }
    }

    /// Reserves room and a packet id for one delivery in `slot`'s queue, adding the records it
    /// needs for a persistent session to `logged` (the message body once per commit).
    pub(super) fn reserve_target(
        &self,
        slot: &Arc<SessionSlot>,
        delivery: &Delivery,
        qos0_may_wait: bool,
        logged: (&mut Vec<u64>, &mut Vec<Record>),
    ) -> TargetReservation {
        let bytes = delivery.accounted_bytes();
        let max_total = self.shared.live.max_queued_bytes_total();
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
                records.push(journal::message(m));
            }
            records.push(journal::enqueued(&slot.client_id, packet_id, delivery));
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
    pub(super) fn is_draining(&self, slot: &SessionSlot) -> bool {
        if slot.consumer.load(Ordering::Relaxed) {
            return true;
        }
        let stall = self.shared.live.stalled_subscriber_ms();
        if stall == 0 {
            return slot.is_connected();
        }
        let last = slot.last_drain_ms.load(Ordering::Relaxed);
        self.uptime_ms().saturating_sub(last) < stall
    }

    /// Waits until a placement's records are durable, then makes it visible; cancels it if
    /// they cannot be made durable. Returns how many deliveries it placed.
    pub(crate) async fn wait_and_reveal(&self, mut logged: Logged) -> Result<usize, NotDurable> {
        match self.wait_pending(&mut logged.durable).await {
            Ok(()) => Ok(self.reveal(logged.reserved)),
            Err(e) => {
                self.unreserve(logged.reserved);
                Err(e)
            }
        }
    }

    /// Gives back the room and packet ids of a placement that will not be made visible.
    pub(crate) fn unreserve(&self, placement: Reserved) {
        for (message, version) in &placement.retain {
            self.shared
                .retain_order
                .lock()
                .finish(&message.topic, *version, false);
        }
        for (slot, packet_id, d, generation) in placement.deliveries {
            self.with_slot(&slot, |st| {
                if st.generation == generation {
                    st.session.cancel(packet_id, d.accounted_bytes());
                }
            });
        }
    }

    /// Makes a placement whose records are durable visible: queues its deliveries, wakes their
    /// connections and applies its retained update. Returns how many deliveries it placed.
    pub(crate) fn reveal(&self, placement: Reserved) -> usize {
        for (message, version) in placement.retain {
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
        let placed = placement.deliveries.len();
        for (slot, packet_id, d, generation) in placement.deliveries {
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
                    let pages =
                        st.owner.is_none() || st.session.pages_new(super::restore::IN_MEMORY_QUEUE);
                    if st.in_store && packet_id != 0 && pages {
                        // Offline, or a long backlog: the body is durable, keep only metadata.
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
        if let Some(message) = placement.published {
            self.emit(EventKinds::PUBLISHED, || Event::Published {
                message,
                deliveries: placed,
            });
        }
        placed
    }
}
