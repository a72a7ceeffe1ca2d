//! Wills and expiry: delayed wills (which survive a restart), sessions whose expiry ran out,
//! and expired messages leaving queues.

use super::*;

impl Broker {
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
    pub(super) fn purge_expired(&self, slot: &SessionSlot, now: Instant) {
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
            self.log(journal::dequeued_all(&slot.client_id, removed));
        }
    }

    /// Publishes the session's waiting will after `delay`, unless a connection resumed the
    /// session meanwhile (or another will replaced it: `token` no longer matches). For a
    /// persistent session, its `WillClear` goes into the commit of the will's deliveries, so a
    /// crash either keeps the will waiting or has published it, never both.
    pub(super) fn schedule_will(&self, slot: Arc<SessionSlot>, token: u64, delay: Duration) {
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
                let clear = in_store.then(|| journal::will_cleared(&slot.client_id));
                broker
                    .publish_will_with(slot.client_id.clone(), *w, clear)
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

    pub(super) async fn publish_will(&self, client: ClientId, will: LastWill) {
        self.publish_will_with(client, will, None).await
    }

    /// Publishes a will, logging `extra` in the same commit as its deliveries (or on its own
    /// if the will cannot be placed).
    pub(super) async fn publish_will_with(
        &self,
        client: ClientId,
        will: LastWill,
        extra: Option<Record>,
    ) {
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
            rules: Default::default(),
        };
        let message = Arc::new(message);
        let outcome = {
            let _gate = self.retain_gate_for(message.retain).await;
            let (mut pending, _) = self.plan_publish(message, None, Origin::Broker);
            pending.records.extend(extra.clone());
            self.publish_planned(pending).await
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
}
