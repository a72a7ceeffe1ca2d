//! SUBSCRIBE and UNSUBSCRIBE: subscriptions, their retained copies, and undoing a SUBSCRIBE whose
//! records could not be made durable.

use super::*;

/// What a SUBSCRIBE applied so far, to log, place, or undo.
pub(super) struct AppliedSubscribe {
    pub(super) in_store: bool,
    pub(super) codes: Vec<ReasonCode>,
    pub(super) records: Vec<Record>,
    pub(super) retained: Vec<Delivery>,
    /// Room left in the session's queue for retained copies.
    pub(super) room_messages: usize,
    pub(super) room_bytes: usize,
    /// Each filter applied, with the subscription it replaced.
    pub(super) undo: Vec<(String, Option<SubscriptionRecord>)>,
}

impl AppliedSubscribe {
    pub(super) fn for_session(slot: &SessionSlot, cfg: &Config) -> AppliedSubscribe {
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

impl Broker {
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
        let how = ReserveOptions {
            all_or_nothing: false,
            qos0_may_wait: false,
            inbound_qos2: None,
        };
        let records = std::mem::take(&mut applied.records);
        let reserved = self.reserve_targets(targets, records, how);
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
                    Some(placed) => self.wait_and_reveal(placed).await.map(|_| ()),
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
    pub(super) fn subscribe_one(
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
        if let Some(refused) = filter_refusal(cfg, &shared) {
            return Some(refused);
        }
        let granted = options.qos.min(max_qos(cfg));
        if !self.may_subscribe(slot, shared.filter, granted) {
            return Some(ReasonCode::NOT_AUTHORIZED);
        }
        let opts = SubscriptionOptions {
            qos: granted,
            ..*options
        };
        let record = SubscriptionRecord {
            options: opts,
            identifier,
        };
        let previous = match self.insert_subscription(slot, conn, filter, record)? {
            Ok(previous) => previous,
            Err(refused) => return Some(refused),
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
            let client = &slot.client_id;
            let record = journal::subscribed(client, filter, &opts, identifier);
            applied.records.push(record);
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
        self.emit(EventKinds::SUBSCRIBED, || Event::Subscribed {
            client_id: slot.client_id.clone(),
            filter: filter.to_string(),
            qos: opts.qos,
        });
        Some(ReasonCode(granted as u8))
    }

    /// Adds a subscription to the session, the owner checked again with the session locked (a
    /// takeover can happen on another thread at any moment, and must never find a SUBSCRIBE
    /// of the old connection half applied): `None` if `conn` no longer owns it,
    /// `Some(Err(QUOTA_EXCEEDED))` at `limits.max_subscriptions_per_client`, else the
    /// subscription it replaces.
    fn insert_subscription(
        &self,
        slot: &Arc<SessionSlot>,
        conn: ConnId,
        filter: &str,
        record: SubscriptionRecord,
    ) -> Option<Result<Option<SubscriptionRecord>, ReasonCode>> {
        let max = self.shared.live.max_subscriptions_per_client();
        self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return None;
            }
            let subs = &mut st.session.subscriptions;
            if !subs.contains_key(filter) && subs.len() >= max {
                return Some(Err(ReasonCode::QUOTA_EXCEEDED));
            }
            Some(Ok(subs.insert(filter.to_string(), record)))
        })
    }

    /// The one place a SUBSCRIBE filter is authorized, for the identity of the connection
    /// attached to `slot`.
    fn may_subscribe(&self, slot: &SessionSlot, filter: &str, qos: QoS) -> bool {
        let identity = slot.state.lock().identity.clone();
        let client = crate::hooks::Client {
            client_id: &slot.client_id,
            identity: &identity,
        };
        let (authorizer, action) = (self.authorizer(), keelmq_auth::Action::Subscribe);
        let allowed = crate::hooks::authorize(&*authorizer, &client, action, filter, qos, false);
        self.report_authz(&client, filter, action, allowed);
        if !allowed {
            Metrics::add(&self.shared.metrics.not_authorized, 1);
        }
        allowed
    }

    /// Takes the subscriptions of a SUBSCRIBE that could not be made durable out of the
    /// session and the router again, restoring the ones they replaced.
    pub(super) fn undo_subscribe(
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
    pub(super) fn retained_deliveries(
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
                    records.push(journal::unsubscribed(&slot.client_id, f));
                }
                if removed {
                    self.emit(EventKinds::UNSUBSCRIBED, || Event::Unsubscribed {
                        client_id: slot.client_id.clone(),
                        filter: f.clone(),
                    });
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.commit(records).await?;
        Ok(Some(codes))
    }
}

/// Why the broker's configuration refuses a SUBSCRIBE filter (too deep, shared or wildcard
/// subscriptions not offered), if it does.
fn filter_refusal(
    cfg: &Config,
    shared: &crate::codec::topic::SharedFilter<'_>,
) -> Option<ReasonCode> {
    if shared.filter.split('/').count() > cfg.limits.max_topic_levels {
        Some(ReasonCode::TOPIC_FILTER_INVALID)
    } else if shared.group.is_some() && !cfg.mqtt.shared_subscription_available {
        Some(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
    } else if crate::codec::topic::has_wildcards(shared.filter)
        && !cfg.mqtt.wildcard_subscription_available
    {
        Some(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
    } else {
        None
    }
}
