//! Shared subscriptions: moving a departing member's deliveries to other members of its groups.

use super::*;

impl Broker {
    /// Gives the shared-subscription deliveries a departed member held to other members of
    /// their groups: a connected member first, else an offline persistent one; each in one
    /// commit with the `Dequeue` of its old place, so that no crash can leave it in neither
    /// (nor, for a persistent departed member, in both). A delivery no other member can take
    /// (none, or every queue full) stays with the departed member under its packet id.
    pub(super) async fn redispatch(
        &self,
        taken: Vec<(PacketId, Delivery)>,
        from: &Arc<SessionSlot>,
    ) {
        if taken.is_empty() {
            return;
        }
        let (from_in_store, from_generation) =
            self.with_slot(from, |st| (st.in_store, st.generation));
        let mut records = Vec::new();
        let mut bodies_logged = Vec::new();
        let mut reserved = Vec::new();
        let mut moved = Vec::new();
        let mut stays = Vec::new();
        for (old_id, delivery) in taken {
            let candidates = self.group_candidates(&delivery, from);
            let placed = candidates.into_iter().find_map(|(slot, granted)| {
                let mut d = delivery.clone();
                d.qos = d.message.qos.min(granted);
                let logged = (&mut bodies_logged, &mut records);
                match self.reserve_target(&slot, &d, false, logged) {
                    TargetReservation::Queued {
                        packet_id,
                        generation,
                    } => Some((slot, packet_id, d, generation)),
                    _ => None,
                }
            });
            match placed {
                Some(r) => {
                    if from_in_store && old_id != 0 {
                        let message_id = delivery.message.id;
                        records.push(journal::dequeued(&from.client_id, old_id, message_id));
                    }
                    reserved.push(r);
                    moved.push((old_id, delivery));
                }
                None => stays.push((old_id, delivery)),
            }
        }
        let placement = Reserved {
            deliveries: reserved,
            retain: Vec::new(),
            published: None,
        };
        let outcome = match self.log_pending(records) {
            Ok(durable) => {
                self.wait_and_reveal(Logged {
                    reserved: placement,
                    durable,
                    confirm: None,
                })
                .await
            }
            Err(e) => {
                self.unreserve(placement);
                Err(e)
            }
        };
        let moved_ok = outcome.is_ok();
        self.settle_redispatch(from, from_generation, moved, stays, moved_ok);
    }

    /// Ends a redispatch in the departed member's session: the packet ids of what moved are
    /// freed (their `Dequeue`s were in the move's commit), and what did not move — or all of
    /// it, if the move could not be made durable — goes back under its packet id.
    fn settle_redispatch(
        &self,
        from: &SessionSlot,
        generation: u64,
        moved: Vec<(PacketId, Delivery)>,
        mut stays: Vec<(PacketId, Delivery)>,
        moved_ok: bool,
    ) {
        self.with_slot(from, |st| {
            if st.generation != generation {
                return; // replaced by a Clean Start: its deliveries went with it
            }
            let paged = st.owner.is_none() && st.in_store;
            if moved_ok {
                for (id, _) in moved {
                    st.session.release_moved(id);
                }
            } else {
                // Not moved: the log still has them here.
                stays.extend(moved);
            }
            for (id, d) in stays {
                st.session.give_back(id, d, paged);
            }
        });
    }

    /// The members of `delivery`'s shared group that may take it over from `from`, in the
    /// order to try: connected members in round-robin order, then offline persistent ones;
    /// each with its granted QoS.
    pub(super) fn group_candidates(
        &self,
        delivery: &Delivery,
        from: &Arc<SessionSlot>,
    ) -> Vec<(Arc<SessionSlot>, QoS)> {
        let Some(group) = delivery.shared_group.as_deref() else {
            return Vec::new();
        };
        let mut members = Vec::new();
        self.shared
            .router
            .read()
            .matches(&delivery.message.topic, |m| {
                let Match::Shared(g) = m else { return };
                if *g.name != *group || !members.is_empty() {
                    return;
                }
                members.extend(
                    g.rotation()
                        .filter(|member| !Arc::ptr_eq(&member.target, from))
                        .map(|member| (member.target.clone(), member.options.qos)),
                );
            });
        // Session locks only after the router's is released (lock order).
        let (mut connected, offline): (Vec<_>, Vec<_>) = members
            .into_iter()
            .partition(|(slot, _)| slot.is_connected());
        connected.extend(
            offline
                .into_iter()
                .filter(|(slot, _)| slot.state.lock().in_store),
        );
        connected
    }
}
