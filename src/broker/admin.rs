//! What the HTTP management API (`crate::api`) reads and changes in the broker: snapshots of
//! the clients, their subscriptions and queues, and the retained messages; kicking a client;
//! subscribing a connected client; deleting a retained message.
//!
//! A view is built slot by slot: the session map is locked only to clone its handles, each
//! session only while its own view is copied, so listing a million sessions never holds up
//! the message path for longer than one session's copy. Broker-internal sessions (rules',
//! sinks', sources' — client ids beginning with `$`) are not clients and are not listed.

use std::net::SocketAddr;

use super::*;

/// What the connection attached to a session told the broker when it connected.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub peer: SocketAddr,
    /// The listener's name.
    pub listener: Arc<str>,
    pub keepalive: u16,
    pub clean_start: bool,
    /// Milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
}

/// One client, as `GET /api/v5/clients` shows it.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub client_id: String,
    pub username: Option<String>,
    pub connected: bool,
    /// The last connection's details (`None` for a session restored from disk that no
    /// connection has resumed yet).
    pub conn: Option<ConnMeta>,
    /// 3, 4 or 5.
    pub proto_ver: u8,
    pub expiry_interval: u32,
    /// Milliseconds since the Unix epoch, while disconnected.
    pub disconnected_at_ms: Option<u64>,
    pub subscriptions: usize,
    /// Queued deliveries (in memory and paged out).
    pub queued: usize,
    pub inflight: usize,
    pub awaiting_rel: usize,
    /// Kept on disk (Session Expiry Interval above 0).
    pub persistent: bool,
}

/// One subscription of one client.
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    pub client_id: String,
    /// As subscribed (`$share/<group>/<filter>` for a shared one).
    pub filter: String,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// A message queued for or in flight to a client.
#[derive(Debug, Clone)]
pub struct QueuedView {
    pub packet_id: PacketId,
    pub delivery: Delivery,
    /// In flight: sent, waiting for PUBACK / PUBREC (`false`) or PUBCOMP (`true`).
    pub awaiting_pubcomp: Option<bool>,
}

/// Is `client_id` a client's, not a broker-internal session's?
fn is_client(slot: &SessionSlot) -> bool {
    slot.role == SlotRole::Client && !slot.client_id.starts_with('$')
}

impl Broker {
    /// Records what connection `conn` told the broker about itself, if it still owns `slot`.
    pub(crate) fn note_connection(&self, slot: &SessionSlot, conn: ConnId, meta: ConnMeta) {
        let mut st = slot.state.lock();
        if st.owner == Some(conn) {
            st.conn = Some(Box::new(meta));
        }
    }

    fn client_slots(&self) -> Vec<Arc<SessionSlot>> {
        let sessions = self.shared.sessions.lock();
        let mut slots: Vec<_> = sessions
            .values()
            .filter(|s| is_client(s))
            .cloned()
            .collect();
        drop(sessions);
        slots.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        slots
    }

    fn client_slot(&self, client_id: &str) -> Option<Arc<SessionSlot>> {
        let slot = self.shared.sessions.lock().get(client_id).cloned()?;
        is_client(&slot).then_some(slot)
    }

    /// Every client's view, by client id.
    pub fn clients(&self) -> Vec<ClientView> {
        let slots = self.client_slots();
        slots.iter().filter_map(|s| Self::client_view(s)).collect()
    }

    /// One client's view.
    pub fn client(&self, client_id: &str) -> Option<ClientView> {
        let slot = self.client_slot(client_id)?;
        Self::client_view(&slot)
    }

    fn client_view(slot: &SessionSlot) -> Option<ClientView> {
        let st = slot.state.lock();
        if st.ended {
            return None;
        }
        let now_ms = wall_clock_ms();
        let session = &st.session;
        Some(ClientView {
            client_id: slot.client_id.to_string(),
            username: st.belongs_to.clone().flatten(),
            connected: st.owner.is_some(),
            conn: st.conn.as_deref().cloned(),
            proto_ver: match session.protocol {
                ProtocolVersion::V3_1 => 3,
                ProtocolVersion::V3_1_1 => 4,
                ProtocolVersion::V5 => 5,
            },
            expiry_interval: session.expiry_interval,
            disconnected_at_ms: st
                .disconnected_at
                .map(|at| now_ms.saturating_sub(at.elapsed().as_millis() as u64)),
            subscriptions: session.subscriptions.len(),
            queued: session.queued_len(),
            inflight: session.inflight_len(),
            awaiting_rel: session.inbound_awaiting_rel(),
            persistent: st.in_store,
        })
    }

    /// A client's subscriptions, by filter; `None` for an unknown client.
    pub fn client_subscriptions(&self, client_id: &str) -> Option<Vec<SubscriptionView>> {
        let slot = self.client_slot(client_id)?;
        Some(Self::subscriptions_of(&slot))
    }

    fn subscriptions_of(slot: &SessionSlot) -> Vec<SubscriptionView> {
        let st = slot.state.lock();
        let mut subs: Vec<_> = st
            .session
            .subscriptions
            .iter()
            .map(|(filter, record)| SubscriptionView {
                client_id: slot.client_id.to_string(),
                filter: filter.clone(),
                options: record.options,
                identifier: record.identifier,
            })
            .collect();
        drop(st);
        subs.sort_by(|a, b| a.filter.cmp(&b.filter));
        subs
    }

    /// Every client's subscriptions, by client id then filter.
    pub fn all_subscriptions(&self) -> Vec<SubscriptionView> {
        let slots = self.client_slots();
        slots
            .iter()
            .flat_map(|s| Self::subscriptions_of(s))
            .collect()
    }

    /// A client's deliveries: queued in memory (`inflight` false; those paged out to disk are
    /// counted in its view, not listed) or in flight (`inflight` true). `None` for an unknown
    /// client.
    pub fn client_messages(&self, client_id: &str, inflight: bool) -> Option<Vec<QueuedView>> {
        let slot = self.client_slot(client_id)?;
        let st = slot.state.lock();
        let views = match inflight {
            true => st
                .session
                .inflight()
                .map(|i| QueuedView {
                    packet_id: i.packet_id,
                    delivery: i.delivery.clone(),
                    awaiting_pubcomp: Some(
                        i.state == crate::session::OutboundState::AwaitingPubComp,
                    ),
                })
                .collect(),
            false => st
                .session
                .queued()
                .map(|q| QueuedView {
                    packet_id: q.packet_id,
                    delivery: q.delivery.clone(),
                    awaiting_pubcomp: None,
                })
                .collect(),
        };
        Some(views)
    }

    /// Kicks a client: its connection (if any) is closed (v5: DISCONNECT 0x98, its will
    /// published as after any abnormal close) and its session discarded. `false` for an
    /// unknown client.
    pub async fn kick(&self, client_id: &str) -> bool {
        let Some(slot) = self.client_slot(client_id) else {
            return false;
        };
        let alive = {
            let mut st = slot.state.lock();
            if let Some(kick) = st.kick.take() {
                let _ = kick.send(Kick::Administrative);
            }
            st.owner_alive.take()
        };
        if let Some(alive) = alive {
            // The connection finishes what it logged, then detaches (bounded, as a takeover).
            let _ = tokio::time::timeout(TAKEOVER_WAIT, alive).await;
        }
        // Wait for the detach itself (the connection's last step after `alive`).
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        while slot.state.lock().owner.is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.end_session(&slot).await;
        true
    }

    /// Subscribes a connected client to `filter` (durable before this returns), as if it had
    /// sent SUBSCRIBE; its retained messages follow. `Ok(None)` if the client is not connected.
    pub async fn subscribe_client(
        &self,
        client_id: &str,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<Option<ReasonCode>, NotDurable> {
        let Some(slot) = self.client_slot(client_id) else {
            return Ok(None);
        };
        let Some(conn) = slot.state.lock().owner else {
            return Ok(None);
        };
        let sub = Subscribe {
            packet_id: 1,
            properties: SubscribeProperties::default(),
            filters: vec![(filter.to_string(), options)],
        };
        let codes = self.subscribe(&slot, conn, &sub).await?;
        if codes.is_some() {
            slot.wake.notify_one();
        }
        Ok(codes.and_then(|c| c.into_iter().next()))
    }

    /// Unsubscribes a connected client from `filter`; `Ok(None)` if it is not connected.
    pub async fn unsubscribe_client(
        &self,
        client_id: &str,
        filter: &str,
    ) -> Result<Option<ReasonCode>, NotDurable> {
        let Some(slot) = self.client_slot(client_id) else {
            return Ok(None);
        };
        let Some(conn) = slot.state.lock().owner else {
            return Ok(None);
        };
        let codes = self.unsubscribe(&slot, conn, &[filter.to_string()]).await?;
        Ok(codes.and_then(|c| c.into_iter().next()))
    }

    /// Every retained message, by topic.
    pub fn retained_messages(&self) -> Vec<Arc<Message>> {
        let mut all = Vec::new();
        self.shared
            .retained
            .read()
            .for_each(|m| all.push(m.clone()));
        all.sort_by(|a, b| a.topic.cmp(&b.topic));
        all
    }

    /// The retained message of `topic`.
    pub fn retained_message(&self, topic: &str) -> Option<Arc<Message>> {
        if topic.contains(['+', '#']) {
            return None;
        }
        let mut found = None;
        self.shared
            .retained
            .read()
            .matching(topic, |m| found = Some(m.clone()));
        found
    }

    /// Deletes the retained message of `topic`, durably, without publishing anything (no
    /// subscriber or rule sees the deletion). `Ok(false)` if there was none.
    pub async fn delete_retained(&self, topic: &str) -> Result<bool, NotDurable> {
        let _gate = self.retain_gate_for(true).await;
        if self.retained_message(topic).is_none() {
            return Ok(false);
        }
        let message = Arc::new(Message {
            id: self.next_message_id(),
            topic: topic.into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Message::properties_of(PublishProperties::default()),
            expires_at: None,
            publisher: None,
            rules: RuleReach::None,
        });
        let (mut records, mut retained) = (Vec::new(), Vec::new());
        self.plan_retained(&message, &mut retained, &mut records);
        let planned = PlannedPublish {
            message,
            targets: Vec::new(),
            records,
            retained,
            inbound_qos2: None,
            qos0_may_wait: false,
            confirm: false,
        };
        self.publish_planned(planned).await?;
        Ok(true)
    }
}
