//! Restore and page-in: rebuilding sessions, subscriptions and paged-out queues from the durable
//! image at start (retained messages load on a thread of their own behind the retain gate),
//! and loading a resumed session's paged-out bodies before its CONNACK.

use super::*;
use crate::persistence::StoredMessage;

/// The QoS 1/2 deliveries a persistent session keeps in memory at most: later ones are queued
/// paged out (their bodies are durable in the log and the store) and paged in by batches of
/// [`PAGE_IN_BATCH`] once fewer than half of these are left, so a backlog of any length costs
/// memory for its metadata only (about 100 bytes a delivery).
pub(crate) const IN_MEMORY_QUEUE: usize = 2048;
pub(crate) const PAGE_IN_BATCH: usize = 1024;
/// How long a failed page-in waits before it is tried again.
const PAGE_IN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The queue length in memory under which the next batch is paged in.
pub(crate) const REFILL_BELOW: usize = IN_MEMORY_QUEUE / 2;

impl Broker {
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
            let delay = Duration::from_millis(due_at_ms.saturating_sub(wall_clock_ms()));
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

    /// Rebuilds sessions, subscriptions and queues from the durable image. Queue entries come
    /// back paged out (their bodies stay in the store until the session resumes). Returns the
    /// wills that were waiting for their delay, to schedule: (session, will token, due time in
    /// ms since the Unix epoch).
    pub(super) fn restore(&self, image: &persistence::Image) -> Vec<(Arc<SessionSlot>, u64, u64)> {
        let mut wills = Vec::new();
        for (client, si) in &image.sessions {
            let Some(record) = &si.record else { continue };
            let client_id: ClientId = client.as_str().into();
            let session = self.restored_session(&client_id, record, si);
            let queued = session.queued_bytes();
            let disconnected_at = record
                .disconnected_at_ms
                .map(crate::persistence::convert::ms_to_instant)
                .unwrap_or_else(Instant::now);
            let will = si.will.as_ref().map(restore_will);
            let slot = SessionSlot::new(
                client_id.clone(),
                session,
                true,
                Some(disconnected_at),
                will,
            );
            slot.state.lock().belongs_to = si.owner.clone();
            let slot = Arc::new(slot);
            self.restore_subscriptions(&slot, si);
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

    /// A session as the image describes it: expiry, inbound QoS 2 ids, and its queue paged
    /// out, in queue order.
    fn restored_session(
        &self,
        client_id: &ClientId,
        record: &SessionRecord,
        si: &persistence::image::SessionImage,
    ) -> Session {
        let protocol = match record.protocol {
            3 => crate::codec::ProtocolVersion::V3_1,
            4 => crate::codec::ProtocolVersion::V3_1_1,
            _ => crate::codec::ProtocolVersion::V5,
        };
        let mut session = Session::new(client_id.clone(), protocol, self.limits());
        session.expiry_interval = record.expiry_interval;
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
        for pid in &si.refused {
            session.restore_inbound_refused(*pid);
        }
        for (message_id, index) in &si.produced {
            session.claim_output(*message_id, *index);
        }
        session
    }

    /// Puts a restored session's subscriptions back into the router and the session.
    fn restore_subscriptions(
        &self,
        slot: &Arc<SessionSlot>,
        si: &persistence::image::SessionImage,
    ) {
        let mut router = self.shared.router.write();
        let mut st = slot.state.lock();
        for (filter, sub) in &si.subscriptions {
            let options = crate::persistence::convert::restore_subscription(sub);
            router.subscribe(
                filter,
                Subscription {
                    client: slot.client_id.clone(),
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

    /// Loads the bodies of a resumed session's first paged-out deliveries (a batch) from the
    /// store before its connection sends anything; the rest follow as the queue drains
    /// ([`Self::refill`]). A body the store does not have (damaged data) is reported and its
    /// delivery removed.
    pub(super) async fn page_in(&self, slot: &Arc<SessionSlot>) {
        let taken = self.with_slot(slot, |st| {
            let s = &mut st.session;
            s.wants_page_in(usize::MAX)
                .then(|| (s.take_paged_front(PAGE_IN_BATCH), st.generation))
        });
        if let Some((paged, generation)) = taken {
            self.load_paged(slot, paged, generation).await;
        }
    }

    /// Pages the next batch of `slot`'s paged-out deliveries in (in the background) if its
    /// queue in memory runs low: called as a connected session's queue drains.
    pub(crate) fn refill(&self, slot: &Arc<SessionSlot>) {
        let taken = self.with_slot(slot, |st| {
            let s = &mut st.session;
            s.wants_page_in(REFILL_BELOW)
                .then(|| (s.take_paged_front(PAGE_IN_BATCH), st.generation))
        });
        if let Some((paged, generation)) = taken {
            let (broker, slot) = (self.clone(), slot.clone());
            tokio::spawn(async move { broker.load_paged(&slot, paged, generation).await });
        }
    }

    /// Loads the bodies of deliveries taken from the front of `slot`'s paged-out ones and
    /// queues them behind those in memory; if the session went offline meanwhile, pages its
    /// queue out again. A failed load puts them back (they stay on disk).
    async fn load_paged(
        &self,
        slot: &Arc<SessionSlot>,
        paged: Vec<PagedDelivery>,
        generation: u64,
    ) {
        let Some(p) = self.shared.persistence.clone() else {
            return;
        };
        let ids: Vec<u64> = paged.iter().map(|d| d.message_id).collect();
        let loaded = tokio::task::spawn_blocking(move || p.load_messages(&ids)).await;
        let bodies = match loaded {
            Ok(Ok(b)) => b,
            failed => {
                let what = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                tracing::error!(client_id = %slot.client_id, error = %what, "cannot page in the queue; it stays on disk, tried again in a second");
                self.with_slot(slot, |st| {
                    if st.generation == generation {
                        st.session.unpage(paged);
                    }
                });
                let (broker, slot) = (self.clone(), slot.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(PAGE_IN_RETRY).await;
                    broker.refill(&slot);
                });
                return;
            }
        };
        let loaded = with_bodies(&slot.client_id, paged, bodies);
        // `with_slot` accounts the bytes paged in (recovered deliveries counted none).
        let (removed, in_store) = self.with_slot(slot, |st| {
            if st.generation != generation {
                return (Vec::new(), false); // replaced by a Clean Start meanwhile
            }
            st.session.restore_paged_in(loaded);
            if st.owner.is_none() && st.in_store && st.session.expiry_interval != 0 {
                st.session.page_out();
            }
            (st.session.take_removed(), st.in_store)
        });
        if in_store {
            self.log(journal::dequeued_all(&slot.client_id, removed));
        }
        slot.wake.notify_one();
    }
}

impl Broker {
    /// The bodies of a departing member's paged-out shared deliveries, for them to be moved
    /// to other members (`redispatch`). Those whose body cannot be loaded now go back paged;
    /// one the store does not have (reported) is removed.
    pub(super) async fn load_shared(
        &self,
        slot: &Arc<SessionSlot>,
        paged: Vec<PagedDelivery>,
    ) -> Vec<(PacketId, Delivery)> {
        let Some(p) = self
            .shared
            .persistence
            .clone()
            .filter(|_| !paged.is_empty())
        else {
            return Vec::new();
        };
        let ids: Vec<u64> = paged.iter().map(|d| d.message_id).collect();
        let Ok(Ok(bodies)) = tokio::task::spawn_blocking(move || p.load_messages(&ids)).await
        else {
            self.with_slot(slot, |st| {
                paged.into_iter().for_each(|d| st.session.restore_paged(d))
            });
            return Vec::new();
        };
        let mut moving = Vec::new();
        let mut missing = Vec::new();
        for (d, delivery) in with_bodies(&slot.client_id, paged, bodies) {
            match delivery {
                Some(delivery) => moving.push((d.packet_id, delivery)),
                None => missing.push((d.packet_id, d.message_id)),
            }
        }
        if !missing.is_empty() {
            let in_store = self.with_slot(slot, |st| {
                missing
                    .iter()
                    .for_each(|(id, _)| st.session.release_moved(*id));
                st.in_store
            });
            if in_store {
                self.log(journal::dequeued_all(&slot.client_id, missing));
            }
        }
        moving
    }
}

/// Pairs paged-out deliveries with their loaded bodies (one `Message` per body, shared by its
/// deliveries); `None` for a body the store did not have, which is reported.
fn with_bodies(
    client_id: &ClientId,
    paged: Vec<PagedDelivery>,
    mut bodies: HashMap<u64, StoredMessage>,
) -> Vec<(PagedDelivery, Option<Delivery>)> {
    let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
    paged
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
                tracing::error!(%client_id, message_id = d.message_id, packet_id = d.packet_id, "queued message missing from the store; its delivery is removed (see `keelmq inspect`)");
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
        .collect()
}
