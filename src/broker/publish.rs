//! The publish path, from a message to its reservation: the QoS 2 claim that makes a re-send a
//! duplicate, the routing plan, and the retained-message limit. See `placement` for what
//! happens to a plan's deliveries.

use super::*;

/// What [`Broker::publish`] did with a message.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Sessions the message was queued for.
    pub delivered: usize,
    /// Some QoS 1/2 target's queue was full, so nothing was placed or logged (a publish is all
    /// or nothing): the publisher must be refused (v5 0x97) or held back until
    /// [`Broker::retry_planned`] places the whole message.
    pub held: Option<PlannedPublish>,
    /// The retained store was full: the message was delivered but not retained (counted).
    pub retained_refused: bool,
    /// What the acknowledgement waits for once the message is visible: `ack = "delivered"`
    /// sinks that read it (see `confirm`).
    pub(crate) confirm: Option<Confirm>,
}

/// A publish waiting for queue room, with everything needed to place it whole later.
#[derive(Debug)]
pub struct PlannedPublish {
    pub(super) message: Arc<Message>,
    pub(super) targets: Vec<(Arc<SessionSlot>, Delivery)>,
    pub(super) records: Vec<Record>,
    /// The messages whose retained update the publish applies: the message itself if it has
    /// RETAIN (and the store has room), and rule outputs with RETAIN.
    pub(super) retained: Vec<Arc<Message>>,
    /// The publisher's QoS 2 packet id, claimed in its session (see
    /// [`Broker::claim_inbound_qos2`]); logged as awaiting PUBREL with the message's records.
    pub(super) inbound_qos2: Option<InboundClaim>,
    /// A QoS 0 target's full queue holds the message too, while that subscriber drains it
    /// (a client's publish can wait; a will or `$SYS` message cannot).
    pub(super) qos0_may_wait: bool,
    /// A network client publishes it: its acknowledgement waits for `ack = "delivered"`
    /// sinks.
    pub(super) confirm: bool,
}

/// Who publishes a message, which decides whether it may wait for a draining QoS 0
/// subscriber's full queue and whether its acknowledgement waits for `ack = "delivered"`
/// sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A network client: it may wait, and its acknowledgement waits for delivered-mode sinks.
    Client,
    /// Broker code through the in-process client (rules, bridges): it may wait; nothing
    /// waits for sinks (its own acknowledgement is its durability).
    Local,
    /// The broker itself (wills, `$SYS`): never waits.
    Broker,
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
    pub(crate) key: ClaimKey,
    pub(crate) generation: u64,
}

/// What a claim marks in the publisher's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimKey {
    /// A network client's QoS 2 packet id (logged as `InboundQos2`).
    Inbound(u16),
    /// A durable consumer's output `index` of the message `message_id` it was delivered
    /// (logged as `Produced`).
    Output { message_id: u64, index: u32 },
}

/// What [`Broker::claim_inbound_qos2`] found.
#[derive(Debug)]
pub(crate) enum Claimed {
    /// The id was new and is now marked as received.
    New(InboundClaim),
    /// The id was already awaiting PUBREL: a re-send.
    Duplicate,
}

/// What [`Broker::publish_pipelined`] did with a message.
#[derive(Debug)]
pub(crate) enum ReserveOutcome {
    /// A QoS 1/2 target's queue (or, for QoS 0, a draining subscriber's) is full: nothing was
    /// placed or logged, as for [`PublishOutcome::held`].
    Held(PlannedPublish),
    /// ReserveResult and logged; visible once durable.
    Logged(Logged),
}

/// How deep rule outputs with direct dispatch off are read by the rules again.
pub(super) const MAX_RULE_DEPTH: usize = 4;

/// Whether a message is one of the broker's own `$SYS` statistics (published by no client),
/// the only messages exempt from the retained-message limit.
pub(super) fn is_broker_sys(message: &Message) -> bool {
    message.publisher.is_none() && message.topic.starts_with("$SYS/")
}

impl Broker {
    /// Routes a message: queues a delivery for every matching session and updates the retained
    /// store if RETAIN is set, after the records of all of it (and of `inbound_qos2`, the
    /// publisher's packet id to remember until PUBREL) are durable. All or nothing: if a QoS 1/2
    /// target's queue is full, nothing is placed or logged and the outcome holds the message.
    /// `Err` means persistence failed: the publisher must get no acknowledgement.
    /// A QoS 0 message from a client or the in-process client ([`Origin`]) also waits (is held)
    /// for the full queue of a subscriber that is connected and draining, instead of being
    /// dropped for it.
    pub(crate) async fn publish(
        &self,
        message: Arc<Message>,
        inbound_qos2: Option<InboundClaim>,
        origin: Origin,
    ) -> Result<PublishOutcome, NotDurable> {
        let _gate = self.retain_gate_for(message.retain).await;
        let (pending, retained_refused) = self.plan_publish(message, inbound_qos2, origin);
        let mut outcome = self.publish_planned(pending).await?;
        outcome.retained_refused = retained_refused;
        Ok(outcome)
    }

    /// [`Self::publish`] without waiting, for a message without RETAIN: its deliveries are
    /// reserved and its records logged now, and the returned [`ReserveOutcome::Logged`] makes them
    /// visible with [`Self::reveal`] once its wait completes. Meanwhile the publisher's
    /// connection goes on with its next packets, whose records share the same fdatasync.
    /// The publisher's QoS 2 packet id counts as received from now on (a re-send is a
    /// duplicate, acknowledged only after this wait).
    pub(crate) fn publish_pipelined(
        &self,
        message: Arc<Message>,
        inbound_qos2: Option<InboundClaim>,
        origin: Origin,
    ) -> Result<ReserveOutcome, NotDurable> {
        debug_assert!(
            !message.retain,
            "retained messages go through the retain gate"
        );
        let (pending, _) = self.plan_publish(message, inbound_qos2, origin);
        self.reserve_and_log(pending)
    }

    /// The records and targets of a publish (nothing placed or logged yet), and whether the
    /// retained store refused its RETAIN.
    pub(super) fn plan_publish(
        &self,
        message: Arc<Message>,
        inbound_qos2: Option<InboundClaim>,
        origin: Origin,
    ) -> (PlannedPublish, bool) {
        let mut records = Vec::new();
        let mut retained = Vec::new();
        let retained_refused = !self.plan_retained(&message, &mut retained, &mut records);
        let mut targets = self.route_targets(&message);
        self.plan_rule_outputs(&message, &mut targets, &mut retained, &mut records);
        let message_qos0 = message.qos == QoS::AtMostOnce;
        let pending = PlannedPublish {
            message,
            targets,
            records,
            retained,
            inbound_qos2,
            qos0_may_wait: origin != Origin::Broker && message_qos0,
            confirm: origin == Origin::Client && !message_qos0,
        };
        (pending, retained_refused)
    }

    /// Adds `message`'s retained update to a plan if it has RETAIN; `false` if the retained
    /// store refused it (counted).
    pub(super) fn plan_retained(
        &self,
        message: &Arc<Message>,
        retained: &mut Vec<Arc<Message>>,
        records: &mut Vec<Record>,
    ) -> bool {
        if !message.retain {
            return true;
        }
        if !self.retained_has_room(message) {
            Metrics::add(&self.shared.metrics.retained_refused, 1);
            return false;
        }
        retained.push(message.clone());
        if self.shared.persistence.is_some() && !message.topic.starts_with('$') {
            records.push(journal::retained(message));
        }
        true
    }

    /// Adds to a plan what the inline rules make of `message` (`crate::hooks::PublishRules`):
    /// each output routed like a publish of its own, in the same commit, so an acknowledged
    /// message has its outputs and an output exists only with its message. An output with
    /// direct dispatch off is read by the rules in turn (at most [`MAX_RULE_DEPTH`] deep). An
    /// output keeps RETAIN only with a message that has it (the retain gate is held then).
    fn plan_rule_outputs(
        &self,
        message: &Arc<Message>,
        targets: &mut Vec<(Arc<SessionSlot>, Delivery)>,
        retained: &mut Vec<Arc<Message>>,
        records: &mut Vec<Record>,
    ) {
        let Some(rules) = self.publish_rules() else {
            return;
        };
        let mut work = vec![(message.clone(), 0, consumers_among(targets))];
        while let Some((m, depth, queued_for)) = work.pop() {
            let no_rules = matches!(m.rules, RuleReach::None | RuleReach::Subscribers);
            if no_rules || m.topic.starts_with('$') || depth >= MAX_RULE_DEPTH {
                continue;
            }
            for mut out in rules.outputs(self, &m, &queued_for) {
                out.retain &= message.retain;
                if m.rules == RuleReach::Inline && out.rules == RuleReach::All {
                    out.rules = RuleReach::Inline;
                }
                let out = Arc::new(out);
                self.plan_retained(&out, retained, records);
                let out_targets = self.route_targets(&out);
                let queued_for = consumers_among(&out_targets);
                targets.extend(out_targets);
                work.push((out, depth + 1, queued_for));
            }
        }
    }

    /// Tries to place a held publish whole; the outcome holds it again if a queue is still full.
    /// A retained message goes through the retain gate, as in [`Self::publish`], so its
    /// retained update is ordered against the others and waits for the retained index to load.
    pub async fn retry_planned(&self, p: PlannedPublish) -> Result<PublishOutcome, NotDurable> {
        let _gate = self.retain_gate_for(p.message.retain).await;
        self.publish_planned(p).await
    }

    /// The retain gate, read-locked, for a message with RETAIN; `None` for one without.
    pub(super) async fn retain_gate_for(
        &self,
        retain: bool,
    ) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        match retain {
            true => Some(self.shared.retain_gate.read().await),
            false => None,
        }
    }

    /// [`Self::retry_planned`] for a caller that already holds the retain gate if it needs it
    /// (the gate is not reentrant: a waiting writer blocks a second read).
    pub(super) async fn publish_planned(
        &self,
        p: PlannedPublish,
    ) -> Result<PublishOutcome, NotDurable> {
        match self.reserve_and_log(p)? {
            ReserveOutcome::Held(p) => Ok(PublishOutcome {
                delivered: 0,
                held: Some(p),
                retained_refused: false,
                confirm: None,
            }),
            ReserveOutcome::Logged(mut logged) => {
                let confirm = logged.confirm.take();
                Ok(PublishOutcome {
                    delivered: self.wait_and_reveal(logged).await?,
                    held: None,
                    retained_refused: false,
                    confirm,
                })
            }
        }
    }

    /// Reserves a publish's deliveries whole and logs its records, or gives it back held if a
    /// queue is full (nothing reserved or logged then).
    pub(super) fn reserve_and_log(&self, p: PlannedPublish) -> Result<ReserveOutcome, NotDurable> {
        let how = ReserveOptions {
            all_or_nothing: true,
            qos0_may_wait: p.qos0_may_wait,
            inbound_qos2: p.inbound_qos2.as_ref(),
        };
        // A retained update takes its version in the same step as its records' append.
        let mut order = (!p.retained.is_empty()).then(|| self.shared.retain_order.lock());
        let (logged, full) = self.reserve_targets(p.targets.clone(), p.records.clone(), how)?;
        let Some(mut logged) = logged.filter(|_| full.is_empty()) else {
            return Ok(ReserveOutcome::Held(p));
        };
        // The broker's own `$SYS` statistics are not client traffic: not reported.
        logged.reserved.published = (!is_broker_sys(&p.message)).then(|| p.message.clone());
        if let Some(order) = order.as_mut() {
            for m in &p.retained {
                let version = order.reserve(&m.topic);
                logged.reserved.retain.push((m.clone(), version));
            }
        }
        drop(order);
        if p.confirm {
            let exchange = p.inbound_qos2.as_ref().and_then(|c| match c.key {
                ClaimKey::Inbound(id) => Some((c.slot.client_id.clone(), id)),
                ClaimKey::Output { .. } => None,
            });
            logged.confirm = self.confirmation_for(&p.message, &logged.reserved, exchange);
        }
        Ok(ReserveOutcome::Logged(logged))
    }

    /// Whether a retained update for this topic fits `max_retained_messages` (replacing and
    /// deleting always do).
    /// The broker's own `$SYS` topics neither count nor are refused.
    pub(super) fn retained_has_room(&self, message: &Message) -> bool {
        let retained = self.shared.retained.read();
        let max = self.shared.live.max_retained_messages();
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
    pub(super) fn route_targets(
        &self,
        message: &Arc<Message>,
    ) -> Vec<(Arc<SessionSlot>, Delivery)> {
        let mut direct: HashMap<*const SessionSlot, usize> = HashMap::new();
        let mut out: Vec<(Arc<SessionSlot>, Delivery)> = Vec::new();
        let bridge = self.bridge_topic(message);
        let router = self.shared.router.read();
        let mut visit = |m: Match<'_, Arc<SessionSlot>>| match m {
            Match::Direct(sub) => {
                if sub.options.no_local && message.publisher.as_ref() == Some(&sub.client) {
                    return; // [MQTT-3.8.3-3]
                }
                if !sub.target.role.receives(message.rules) {
                    return;
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
            Match::Shared(group) => out.extend(shared_target(group, message)),
        };
        router.matches(&message.topic, &mut visit);
        if let Some(bridge) = &bridge {
            router.matches(bridge, &mut visit);
        }
        out
    }

    /// For a message a data bridge source publishes (publisher `$source/<name>`), the topic
    /// rules read it under: `$bridges/<kind>:<name>` (`FROM "$bridges/mqtt:<name>"`).
    pub(crate) fn bridge_topic(&self, message: &Message) -> Option<String> {
        let publisher = message.publisher.as_deref()?;
        let name = publisher.strip_prefix(crate::protocol::admission::SOURCE_CLIENT_ID_PREFIX)?;
        let spec = self.shared.config.sources.iter().find(|s| s.name == name)?;
        Some(keelmq_rules::sources::bridge_topic(spec.kind.name(), name))
    }

    /// Logs a publish's `records` with the publisher's `InboundQos2`, holding the publisher's
    /// session lock so that a Clean Start (which replaces the session under that lock and logs
    /// its removal after) cannot come between the generation check and the append: the id is
    /// logged for the session that claimed it, or not at all.
    pub(super) fn log_with_claim(
        &self,
        mut records: Vec<Record>,
        claim: &InboundClaim,
    ) -> Result<PendingDurable, NotDurable> {
        let st = claim.slot.state.lock();
        if st.in_store && st.generation == claim.generation {
            let client = &claim.slot.client_id;
            records.push(match claim.key {
                ClaimKey::Inbound(packet_id) => journal::inbound_qos2_received(client, packet_id),
                ClaimKey::Output { message_id, index } => {
                    journal::produced(client, message_id, index)
                }
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
            key: ClaimKey::Inbound(packet_id),
            generation: st.generation,
        }))
    }

    /// Marks output `index` of `message_id` as published by the consumer session in `slot`, if
    /// `conn` owns it and the output is not marked already: the duplicate check and the mark in
    /// one step, as for an inbound QoS 2 packet id. The mark is logged with the output's
    /// records (`Produced`); one whose message is not placed is given back with
    /// [`Self::release_claim`].
    pub(crate) fn claim_output(
        &self,
        slot: &Arc<SessionSlot>,
        conn: ConnId,
        message_id: u64,
        index: u32,
    ) -> Option<Claimed> {
        let mut st = slot.state.lock();
        if st.owner != Some(conn) {
            return None;
        }
        if !st.session.claim_output(message_id, index) {
            return Some(Claimed::Duplicate);
        }
        Some(Claimed::New(InboundClaim {
            slot: slot.clone(),
            key: ClaimKey::Output { message_id, index },
            generation: st.generation,
        }))
    }

    /// Gives back a claim whose message was not placed (refused, or dropped unacknowledged
    /// when its connection closed): the client's re-send is then routed. Nothing was logged.
    pub(crate) fn release_claim(&self, claim: &InboundClaim) {
        let mut st = claim.slot.state.lock();
        if st.generation == claim.generation {
            match claim.key {
                ClaimKey::Inbound(packet_id) => {
                    st.session.inbound_pubrel(packet_id);
                }
                ClaimKey::Output { message_id, index } => {
                    st.session.release_output(message_id, index)
                }
            }
        }
    }
}

/// The client ids of the broker's durable consumer sessions among a message's targets
/// (usually none).
fn consumers_among(targets: &[(Arc<SessionSlot>, Delivery)]) -> Vec<ClientId> {
    targets
        .iter()
        .filter(|(slot, _)| slot.role == SlotRole::RuleReader)
        .map(|(slot, _)| slot.client_id.clone())
        .collect()
}

/// The member of a shared group that gets `message`: the next connected one in rotation, or
/// the first if none is connected.
fn shared_target(
    group: &crate::router::SharedGroup<Arc<SessionSlot>>,
    message: &Arc<Message>,
) -> Option<(Arc<SessionSlot>, Delivery)> {
    let mut first = None;
    let mut chosen = None;
    for member in group.rotation() {
        first.get_or_insert(member);
        if member.target.is_connected() {
            chosen = Some(member);
            break;
        }
    }
    let member = chosen.or(first)?;
    Some((
        member.target.clone(),
        Delivery {
            message: message.clone(),
            qos: message.qos.min(member.options.qos),
            retain: message.retain && member.options.retain_as_published,
            subscription_ids: member.identifier.into_iter().collect(),
            shared_group: Some(Arc::from(&*group.name)),
        },
    ))
}
