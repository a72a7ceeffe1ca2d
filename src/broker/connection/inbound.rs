//! What the client sends: inbound PUBLISH (checks, authorization, routing, acknowledgement in
//! order once durable), the acknowledgement FIFO's completion, and a 3.x publisher held back
//! by a full queue.

use super::*;

impl Connection {
    pub(super) async fn retry_held<S>(&mut self, io: &mut Io<S>) -> Result<(), Close>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        // Earlier messages of this publisher become visible first.
        self.drain_pending(&mut io.wbuf).await?;
        let outcome = self.broker.retry_planned(held.publish).await?;
        if let Some(publish) = outcome.held {
            self.held = Some(Box::new(HeldBack { publish, ..*held }));
            return Ok(());
        }
        let (id, qos, confirm) = (held.packet_id, held.qos, outcome.confirm);
        self.ack_inbound_confirmed(&mut io.wbuf, id, qos, ReasonCode::SUCCESS, confirm);
        while let Some(p) = self.deferred.pop_front() {
            self.handle(p, &mut io.wbuf).await?;
            if self.held.is_some() {
                return Ok(());
            }
        }
        self.process_input(io).await
    }

    /// Completes the oldest pending entry after its wait returned `r`: makes its deliveries
    /// visible and sends its acknowledgement, or, if durability failed, gives back every
    /// pending placement and closes.
    pub(super) fn complete_front(
        &mut self,
        r: Result<(), crate::broker::NotDurable>,
        wbuf: &mut BytesMut,
    ) -> Result<(), Close> {
        if let Err(e) = r {
            for reserved in self.pending_acks.abandon() {
                self.broker.unreserve(reserved);
            }
            return Err(Close::from(e));
        }
        let Some(entry) = self.pending_acks.pop_front() else {
            return Ok(());
        };
        if let Some(p) = entry.reserved {
            self.broker.reveal(p);
        }
        if let Some(ack) = entry.ack {
            self.emit_ack(wbuf, ack);
        }
        Ok(())
    }

    /// Waits for every pending entry, in order, and completes it.
    pub(super) async fn drain_pending(&mut self, wbuf: &mut BytesMut) -> Result<(), Close> {
        while !self.pending_acks.is_empty() {
            let r = next_pending_ack(&self.broker, &mut self.pending_acks).await;
            self.complete_front(r, wbuf)?;
        }
        Ok(())
    }
    /// Sends PUBACK or PUBREC for an inbound message whose records (if any) are durable: now,
    /// or behind the acknowledgements still pending, to keep their order.
    pub(super) fn ack_inbound(
        &mut self,
        wbuf: &mut BytesMut,
        packet_id: u16,
        qos: QoS,
        reason: ReasonCode,
    ) {
        self.ack_inbound_confirmed(wbuf, packet_id, qos, reason, None);
    }

    /// [`Self::ack_inbound`] for a message whose acknowledgement also waits for `confirm`.
    pub(super) fn ack_inbound_confirmed(
        &mut self,
        wbuf: &mut BytesMut,
        packet_id: u16,
        qos: QoS,
        reason: ReasonCode,
        confirm: Option<crate::broker::confirm::Confirm>,
    ) {
        if let Some(packet) = publish::inbound_ack(self.version, packet_id, qos, reason) {
            let received = Some(self.last_received);
            self.send_in_order(
                wbuf,
                Ack {
                    packet,
                    confirm,
                    received,
                },
                true,
            );
        }
    }

    /// PUBREC again for a re-sent QoS 2 PUBLISH (with 0x80 for one answered so before); its
    /// id already counts against the Receive Maximum as awaiting PUBREL, or awaits nothing.
    fn ack_duplicate(&mut self, wbuf: &mut BytesMut, packet_id: u16, reason: ReasonCode) {
        let mut ack = PubAck::new(packet_id);
        ack.reason = reason;
        // Its message may still wait for `ack = "delivered"` sinks: the PUBREC waits again.
        let confirm = match reason {
            ReasonCode::SUCCESS => self.broker.resume_confirmation(&self.client_id, packet_id),
            _ => None,
        };
        let packet = Packet::PubRec(ack);
        let received = Some(self.last_received);
        self.send_in_order(
            wbuf,
            Ack {
                packet,
                confirm,
                received,
            },
            false,
        );
    }

    /// Sends an acknowledgement that waits for nothing: now, or behind those still pending.
    /// `counts`: it acknowledges a PUBLISH the session does not count as awaiting PUBREL, so
    /// it counts against the Receive Maximum while it waits.
    pub(super) fn send_in_order(&mut self, wbuf: &mut BytesMut, ack: Ack, counts: bool) {
        if let Some(ack) = self
            .pending_acks
            .in_order(ack, counts, PendingDurable::ready)
        {
            self.emit_ack(wbuf, ack);
        }
    }

    /// Refuses an inbound message: an error reason code on its acknowledgement (v5, QoS > 0),
    /// a disconnect otherwise.
    pub(super) fn refuse_inbound(
        &mut self,
        wbuf: &mut BytesMut,
        p: &Publish,
        refusal: Refusal,
    ) -> Result<(), Close> {
        if self.version.is_v5() && p.qos != QoS::AtMostOnce {
            self.ack_inbound(wbuf, p.packet_id, p.qos, refusal.reason_code());
            Ok(())
        } else {
            Err(Close::Refused(refusal))
        }
    }

    /// The one place a PUBLISH is authorized (after topic-alias resolution).
    pub(super) fn may_publish(&self, p: &Publish) -> bool {
        let client = hooks::Client {
            client_id: &self.client_id,
            identity: &self.identity,
        };
        let authorizer = self.broker.authorizer();
        let (action, topic) = (keelmq_auth::Action::Publish, &p.topic);
        let allowed = hooks::authorize(&*authorizer, &client, action, topic, p.qos, p.retain);
        self.broker.report_authz(&client, topic, action, allowed);
        if !allowed {
            Metrics::add(&self.broker.shared.metrics.not_authorized, 1);
        }
        allowed
    }

    /// A PUBLISH the authorizer refused: with `authz.deny_action = "disconnect"` the connection
    /// closes (v5: DISCONNECT 0x87); otherwise a v5 QoS 1/2 publisher gets 0x87, and any other
    /// is acknowledged and dropped, as Mosquitto and EMQX do (a 3.x client cannot be told).
    pub(super) fn deny_inbound(&mut self, wbuf: &mut BytesMut, p: &Publish) -> Result<(), Close> {
        if self.broker.config().authz.deny_action == crate::config::DenyAction::Disconnect {
            return Err(Close::Refused(Refusal::NotAuthorized));
        }
        let reason = match self.version.is_v5() {
            true => Refusal::NotAuthorized.reason_code(),
            false => ReasonCode::SUCCESS,
        };
        self.ack_inbound(wbuf, p.packet_id, p.qos, reason);
        Ok(())
    }

    /// The inbound QoS 2 identifiers awaiting PUBREL, and whether `p` is a re-send of one
    /// (`Some(0x00)`) or, with DUP, of one answered PUBREC 0x80 (`Some(0x80)`).
    fn inbound_state(&self, p: &Publish) -> Result<(usize, Option<ReasonCode>), Close> {
        let state = self.broker.session_op(&self.slot, self.id, |s| {
            let resent = match p.qos == QoS::ExactlyOnce {
                false => None,
                true if !s.inbound_qos2_is_new(p.packet_id) => Some(ReasonCode::SUCCESS),
                true if p.dup && s.inbound_qos2_refused(p.packet_id) => {
                    Some(ReasonCode::UNSPECIFIED_ERROR)
                }
                true => None,
            };
            (s.inbound_awaiting_rel(), resent)
        });
        state.ok_or(Close::TakenOver)
    }

    pub(super) async fn on_publish(
        &mut self,
        mut p: Publish,
        wbuf: &mut BytesMut,
    ) -> Result<(), Close> {
        let cfg = self.broker.config();
        Metrics::add(&self.broker.shared.metrics.messages_received, 1);
        publish::check_packet(cfg, &p).map_err(Close::Refused)?;
        let alias = p.properties.topic_alias.take();
        self.aliases_in
            .resolve(&mut p.topic, alias)
            .map_err(Close::Refused)?;
        let (inflight_in, resent) = self.inbound_state(&p)?;
        if let Some(reason) = resent {
            // A re-sent QoS 2 PUBLISH already PUBRECed: acknowledge again, never route twice.
            // Before authorization: its first PUBREC accepted it, and a decision that changed
            // since (a reload) must not refuse what is already stored and acknowledged.
            self.ack_duplicate(wbuf, p.packet_id, reason);
            return Ok(());
        }
        if !self.may_publish(&p) {
            return self.deny_inbound(wbuf, &p);
        }
        let in_flight = inflight_in
            + usize::from(self.held.is_some())
            + self.pending_acks.inbound()
            + confirming::inbound(&self.confirming);
        publish::check_receive_maximum(cfg, p.qos, in_flight).map_err(Close::Refused)?;
        match publish::check_content(cfg, self.version, &p) {
            Verdict::Route => {}
            Verdict::Refuse(refusal) => return self.refuse_inbound(wbuf, &p, refusal),
            Verdict::Drop => {
                self.ack_inbound(wbuf, p.packet_id, p.qos, ReasonCode::SUCCESS);
                return Ok(());
            }
        }
        // Checked and marked in one step: a re-send arriving from now on is a duplicate.
        let claim = match p.qos {
            QoS::ExactlyOnce => {
                match self
                    .broker
                    .claim_inbound_qos2(&self.slot, self.id, p.packet_id)
                {
                    None => return Err(Close::TakenOver),
                    Some(Claimed::Duplicate) => {
                        self.ack_duplicate(wbuf, p.packet_id, ReasonCode::SUCCESS);
                        return Ok(());
                    }
                    Some(Claimed::New(claim)) => Some(claim),
                }
            }
            _ => None,
        };
        let published = self.route_inbound(p, claim.clone(), wbuf).await;
        if let Some(claim) = claim {
            // Not placed (refused, failed, or nothing held): the client's re-send is new.
            let placed = matches!(published, Ok(true))
                || self
                    .held
                    .as_ref()
                    .is_some_and(|h| crate::broker::ClaimKey::Inbound(h.packet_id) == claim.key);
            if !placed {
                self.broker.release_claim(&claim);
            }
        }
        published.map(|_| ())
    }

    /// Routes an inbound message that passed every check, and acknowledges it (now or once
    /// durable). `Ok(false)` if it was refused with an error code (v5: a full queue).
    pub(super) async fn route_inbound(
        &mut self,
        p: Publish,
        claim: Option<InboundClaim>,
        wbuf: &mut BytesMut,
    ) -> Result<bool, Close> {
        let (packet_id, qos, retain) = (p.packet_id, p.qos, p.retain);
        let message = Arc::new(self.message_of(p));
        let outcome = if retain {
            // Retained updates are ordered by the retain gate, inside `publish`: the earlier
            // messages of this publisher become visible first.
            self.drain_pending(wbuf).await?;
            self.broker.publish(message, claim, Origin::Client).await?
        } else {
            match self
                .broker
                .publish_pipelined(message, claim, Origin::Client)?
            {
                ReserveOutcome::Held(publish) => crate::broker::PublishOutcome {
                    delivered: 0,
                    held: Some(publish),
                    retained_refused: false,
                    confirm: None,
                },
                ReserveOutcome::Logged(logged) => {
                    self.acknowledge_when_durable(logged, packet_id, qos, wbuf);
                    return Ok(true);
                }
            }
        };
        Ok(self.conclude_inbound(outcome, packet_id, qos, wbuf))
    }

    /// The message an inbound PUBLISH carries, with a new id and its expiry from now.
    pub(super) fn message_of(&self, p: Publish) -> Message {
        let now = Instant::now();
        Message {
            id: self.broker.next_message_id(),
            expires_at: p
                .properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: Message::properties_of(p.properties),
            publisher: Some(self.client_id.clone()),
            rules: Default::default(),
        }
    }

    /// A pipelined publish whose records are logged: visible and acknowledged once durable —
    /// now if nothing was logged and nothing waits before it — while the connection reads on.
    pub(super) fn acknowledge_when_durable(
        &mut self,
        logged: crate::broker::Logged,
        packet_id: u16,
        qos: QoS,
        wbuf: &mut BytesMut,
    ) {
        let reason = if logged.reserved.len() == 0 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        let (confirm, received) = (logged.confirm, Some(self.last_received));
        let ack = publish::inbound_ack(self.version, packet_id, qos, reason).map(|packet| Ack {
            packet,
            confirm,
            received,
        });
        // A QoS 0 message needs no order with the acknowledged ones: it never enters the FIFO.
        if self.pending_acks.may_bypass(logged.durable.is_ready(), qos) {
            self.broker.reveal(logged.reserved);
            if let Some(ack) = ack {
                self.emit_ack(wbuf, ack);
            }
        } else {
            self.pending_acks
                .push_message(logged.durable, logged.reserved, ack, qos);
        }
    }

    /// Acknowledges a publish that waited inline (RETAIN) or was held by a full queue. `false`
    /// if it was refused with an error code (v5: a draining subscriber's full queue).
    pub(super) fn conclude_inbound(
        &mut self,
        outcome: crate::broker::PublishOutcome,
        packet_id: u16,
        qos: QoS,
        wbuf: &mut BytesMut,
    ) -> bool {
        if let Some(publish) = outcome.held {
            if qos == QoS::AtMostOnce {
                // A connected subscriber's queue is full and draining: pause this publisher
                // (its socket is read only for acknowledgements and pings) until there is
                // room, rather than drop the message. A stalled subscriber does not hold it.
                Metrics::add(&self.broker.shared.metrics.qos0_paused, 1);
            } else {
                Metrics::add(&self.broker.shared.metrics.queue_full_refusals, 1);
                if self.version.is_v5() {
                    // Nothing was placed or logged: the message is refused whole.
                    self.ack_inbound(wbuf, packet_id, qos, ReasonCode::QUOTA_EXCEEDED);
                    return false;
                }
                // 3.x cannot be told: hold the acknowledgement (and the client) back until the
                // queues have room. The message is never dropped after an acknowledgement.
            }
            self.held = Some(Box::new(HeldBack {
                packet_id,
                qos,
                publish,
            }));
            return true;
        }
        if qos == QoS::AtMostOnce {
            return true;
        }
        // A retained copy refused by `max_retained_messages` is counted, not reported: the
        // message itself was delivered, and a QoS 2 error code would end the flow.
        let reason = if outcome.delivered == 0 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        self.ack_inbound_confirmed(wbuf, packet_id, qos, reason, outcome.confirm);
        true
    }

    /// PUBREL for an inbound QoS 2 message: PUBCOMP once the release is durable.
    pub(super) fn on_pubrel(&mut self, a: PubAck, wbuf: &mut BytesMut) -> Result<(), Close> {
        let (found, pending) = self
            .broker
            .inbound_pubrel(&self.slot, self.id, a.packet_id)?
            .ok_or(Close::TakenOver)?;
        let mut comp = PubAck::new(a.packet_id);
        if !found {
            comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
        }
        // PUBCOMP leaves once the release is durable (an unknown id logged nothing).
        if pending.is_ready() {
            self.send_in_order(wbuf, Packet::PubComp(comp).into(), false);
        } else {
            self.pending_acks
                .push(pending, None, Some(Packet::PubComp(comp).into()), false);
        }
        Ok(())
    }
}
