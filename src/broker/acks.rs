//! Acknowledgement flows of a connected session: PUBACK/PUBREC/PUBCOMP from subscribers, PUBREL
//! from publishers, and session operations on behalf of the connection.

use super::*;

impl Broker {
    /// A PUBACK (QoS 1) or PUBCOMP (QoS 2) from the subscriber: the delivery is complete. Its
    /// `Dequeue` is logged without waiting. `None` if `conn` no longer owns the session.
    pub(crate) fn outbound_complete(
        &self,
        slot: &SessionSlot,
        conn: ConnId,
        packet_id: PacketId,
        pubcomp: bool,
    ) -> Option<()> {
        let records = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return None;
            }
            let done = if pubcomp {
                st.session.on_pubcomp(packet_id)
            } else {
                st.session.on_puback(packet_id)
            };
            let acked = done.ok().map(|d| d.message);
            let mut records = Vec::new();
            if let Some(message) = &acked {
                // A consumer's outputs of this message are forgotten with its delivery (the
                // image drops them when it applies the `DequeueMessage`).
                st.session.forget_outputs(message.id);
                if st.in_store {
                    records.push(journal::dequeued(&slot.client_id, packet_id, message.id));
                }
            }
            Some((acked, records))
        })?;
        let (acked, records) = records;
        self.log(records);
        if let Some(message) = acked {
            self.emit(EventKinds::ACKED, || Event::Acked {
                client_id: slot.client_id.clone(),
                packet_id,
                message,
            });
        }
        Some(())
    }

    /// PUBACKs of several QoS 1 deliveries at once (a durable consumer's batch): one session
    /// lock, one log append. `None` if `conn` no longer owns the session.
    pub(crate) fn outbound_puback_many(
        &self,
        slot: &SessionSlot,
        conn: ConnId,
        packet_ids: &[PacketId],
    ) -> Option<()> {
        let (acked, records) = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return None;
            }
            let (mut acked, mut records) = (Vec::new(), Vec::new());
            for &packet_id in packet_ids {
                let Ok(d) = st.session.on_puback(packet_id) else {
                    continue;
                };
                st.session.forget_outputs(d.message.id);
                if st.in_store {
                    records.push(journal::dequeued(&slot.client_id, packet_id, d.message.id));
                }
                acked.push((packet_id, d.message));
            }
            Some((acked, records))
        })?;
        self.log(records);
        for (packet_id, message) in acked {
            self.emit(EventKinds::ACKED, || Event::Acked {
                client_id: slot.client_id.clone(),
                packet_id,
                message,
            });
        }
        Some(())
    }

    /// A PUBREC from the subscriber. When it releases the message, "PUBREC received" is logged
    /// and the returned wait completes once it is durable: only then may the caller send PUBREL,
    /// so that a restart re-sends PUBREL, never the PUBLISH. `Ok(None)` if `conn` no longer
    /// owns the session.
    pub(crate) fn outbound_pubrec(
        &self,
        slot: &SessionSlot,
        conn: ConnId,
        packet_id: PacketId,
        refused: bool,
    ) -> Result<Option<(PubRecOutcome, Option<PendingDurable>)>, NotDurable> {
        let result = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return None;
            }
            let window_bound = st.session.window_bound();
            let outcome = st.session.on_pubrec(packet_id, refused);
            let client = &slot.client_id;
            let mut records = Vec::new();
            match outcome {
                PubRecOutcome::Release if st.in_store => {
                    records.push(journal::pubrec_received(client, packet_id))
                }
                PubRecOutcome::Refused(Some(message_id)) if st.in_store => {
                    records.push(journal::dequeued(client, packet_id, message_id))
                }
                _ => {}
            };
            Some((outcome, records, window_bound))
        });
        let Some((outcome, records, window_bound)) = result else {
            return Ok(None);
        };
        match outcome {
            PubRecOutcome::Release => {
                let pending = self.log_pending(records)?;
                if window_bound {
                    // The subscriber waits for this PUBREL to free room in its window.
                    self.expedite();
                }
                Ok(Some((outcome, Some(pending))))
            }
            _ => {
                self.log(records);
                Ok(Some((outcome, None)))
            }
        }
    }

    /// A PUBREL from the publisher: whether the packet id was awaiting it. Its removal is durable
    /// before the caller sends PUBCOMP. `Ok(None)` if `conn` no longer owns the session.
    pub(crate) fn inbound_pubrel(
        &self,
        slot: &SessionSlot,
        conn: ConnId,
        packet_id: u16,
    ) -> Result<Option<(bool, PendingDurable)>, NotDurable> {
        let result = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return None;
            }
            let found = st.session.inbound_pubrel(packet_id);
            let client = slot.client_id.to_string();
            // Only a real release is logged: memory holds every id the log holds (restored at
            // start, claimed before it is logged), so an unknown id has nothing to release,
            // and a client streaming unknown PUBRELs makes no durable work.
            Some((
                found,
                (found && st.in_store).then(|| journal::inbound_qos2_released(&client, packet_id)),
            ))
        });
        let Some((found, record)) = result else {
            return Ok(None);
        };
        let pending = self.log_pending(record.into_iter().collect())?;
        Ok(Some((found, pending)))
    }

    /// The publisher's QoS 2 `packet_id` is answered PUBREC 0x80 (a delivered-mode sink did
    /// not confirm its message): logged, and durable before the caller sends it, so that the
    /// id is free for a new message and a DUP re-send is still recognised, across a restart.
    /// `Ok(None)` if `conn` no longer owns the session.
    pub(crate) fn inbound_refuse(
        &self,
        slot: &SessionSlot,
        conn: ConnId,
        packet_id: u16,
    ) -> Result<Option<PendingDurable>, NotDurable> {
        let record = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return None;
            }
            let found = st.session.inbound_refuse(packet_id);
            let client = &slot.client_id;
            Some((found && st.in_store).then(|| journal::inbound_qos2_refused(client, packet_id)))
        });
        let Some(record) = record else {
            return Ok(None);
        };
        Ok(Some(self.log_pending(record.into_iter().collect())?))
    }

    /// Runs `f` on the session if `conn` is still attached to it.
    pub(crate) fn session_op<R>(
        &self,
        slot: &SessionSlot,
        conn: ConnId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Option<R> {
        let (result, records) = self.with_slot(slot, |st| {
            if st.owner != Some(conn) {
                return (None, Vec::new());
            }
            let result = f(&mut st.session);
            let removed = st.session.take_removed();
            let records = match st.in_store {
                true => journal::dequeued_all(&slot.client_id, removed),
                false => Vec::new(),
            };
            (Some(result), records)
        });
        self.log(records);
        result
    }
}
