//! Deterministic tests of the session state machine: QoS 2 in both directions with a
//! disconnect (and resume) at every step, windows, limits and expiry.

use super::*;
use std::time::Duration;

const LIMITS: SessionLimits = SessionLimits {
    max_queued_messages: 4,
    max_queued_bytes: 100,
};

fn session() -> Session {
    let mut s = Session::new("c".into(), ProtocolVersion::V5, LIMITS);
    s.set_window(2);
    s
}

/// A message with an empty topic and no properties, so that it counts exactly its payload's
/// bytes against the limits (see `topics_and_properties_count_against_the_byte_limit`).
fn message(qos: QoS, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        id: 1,
        topic: "".into(),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        publisher: None,
        rules: Default::default(),
    })
}

fn delivery(qos: QoS, payload: &'static [u8]) -> Delivery {
    Delivery {
        message: message(qos, payload),
        qos,
        retain: false,
        subscription_ids: vec![],
        shared_group: None,
    }
}

/// Steps of an outbound QoS 2 flow, as the client drives it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OutStep {
    Send,
    PubRec,
    PubComp,
}

#[test]
fn outbound_qos2_survives_a_disconnect_at_every_step() {
    let steps = [OutStep::Send, OutStep::PubRec, OutStep::PubComp];
    for disconnect_after in 0..=steps.len() {
        let now = Instant::now();
        let mut s = session();
        assert!(matches!(
            s.enqueue(delivery(QoS::ExactlyOnce, b"x"), true),
            Enqueued::Queued(_)
        ));
        let mut packet_id = 0;
        let mut completed = 0;
        let mut run = |s: &mut Session, step: OutStep, packet_id: &mut PacketId| match step {
            OutStep::Send => {
                let Some(Outgoing::Publish {
                    packet_id: id, dup, ..
                }) = s.next_publish(now)
                else {
                    panic!("nothing to send")
                };
                assert!(!dup);
                *packet_id = id;
            }
            OutStep::PubRec => assert_eq!(s.on_pubrec(*packet_id, false), PubRecOutcome::Release),
            OutStep::PubComp => {
                s.on_pubcomp(*packet_id).unwrap();
                completed += 1;
            }
        };
        for step in &steps[..disconnect_after] {
            run(&mut s, *step, &mut packet_id);
        }
        // The connection drops here; a new one resumes the session.
        let resend = s.resume();
        match disconnect_after {
            0 | 3 => assert!(resend.is_empty(), "{disconnect_after}: {resend:?}"),
            1 => assert!(
                matches!(resend[..], [Outgoing::Publish { dup: true, packet_id: p, .. }] if p == packet_id),
                "PUBLISH is re-sent with DUP: {resend:?}"
            ),
            2 => assert_eq!(
                resend,
                vec![Outgoing::PubRel { packet_id }],
                "after PUBREC the PUBREL is re-sent, never the PUBLISH"
            ),
            _ => unreachable!(),
        }
        // The client finishes the flow from where it stood.
        for step in &steps[disconnect_after..] {
            // The PUBLISH is sent again only if it never went out before the disconnect.
            if *step != OutStep::Send || disconnect_after == 0 {
                run(&mut s, *step, &mut packet_id);
            }
        }
        assert_eq!(
            completed, 1,
            "exactly one completion (disconnect after {disconnect_after})"
        );
        assert_eq!(s.inflight_len(), 0);
        assert!(s.resume().is_empty());
        assert!(s.next_publish(now).is_none());
    }
}

/// Steps of an inbound QoS 2 flow; the client re-sends after every disconnect what it has not
/// seen acknowledged.
#[test]
fn inbound_qos2_routes_exactly_once_whatever_the_disconnects() {
    // Each scenario lists the points at which the connection drops: 0 = after PUBLISH arrived
    // (PUBREC lost), 1 = after PUBREL arrived (PUBCOMP lost).
    for drops in [vec![], vec![0], vec![1], vec![0, 1], vec![0, 0, 1, 1]] {
        let mut s = session();
        let mut routed = 0;
        let packet_id = 7;
        let mut pending_drops = drops.clone();
        // Client side: send PUBLISH until PUBREC is seen.
        loop {
            if s.inbound_qos2_is_new(packet_id) {
                routed += 1;
                s.inbound_qos2_received(packet_id);
            }
            if pending_drops.first() == Some(&0) {
                pending_drops.remove(0);
                continue; // PUBREC lost; the client re-sends PUBLISH with DUP
            }
            break;
        }
        // Client side: send PUBREL until PUBCOMP is seen.
        let mut first = true;
        loop {
            let found = s.inbound_pubrel(packet_id);
            assert_eq!(
                found, first,
                "PUBCOMP 0x00 first, 0x92 for a re-sent PUBREL"
            );
            first = false;
            if pending_drops.first() == Some(&1) {
                pending_drops.remove(0);
                continue;
            }
            break;
        }
        assert_eq!(routed, 1, "drops {drops:?}");
        assert_eq!(s.inbound_awaiting_rel(), 0);
        // The same packet identifier may then be used for a new message.
        assert!(s.inbound_qos2_is_new(packet_id));
    }
}

#[test]
fn window_limits_inflight_and_qos0_bypasses_it() {
    let now = Instant::now();
    let mut s = session();
    for _ in 0..3 {
        s.enqueue(delivery(QoS::AtLeastOnce, b"a"), true);
    }
    let a = s.next_publish(now).unwrap();
    let b = s.next_publish(now).unwrap();
    assert!(s.next_publish(now).is_none(), "window of 2 is full");
    assert!(!s.has_sendable());
    let (Outgoing::Publish { packet_id: pa, .. }, Outgoing::Publish { packet_id: pb, .. }) = (a, b)
    else {
        panic!()
    };
    assert_ne!(pa, pb);
    assert!(s.window_bound(), "full window with a delivery waiting");
    assert_eq!(s.on_puback(pa).unwrap().qos, QoS::AtLeastOnce);
    assert!(!s.window_bound(), "room in the window");
    assert_eq!(
        s.on_puback(pa),
        Err(UnknownPacketId(pa)),
        "a second PUBACK is unknown"
    );
    assert!(s.next_publish(now).is_some());
    // QoS 0 is not limited by the window.
    s.enqueue(delivery(QoS::AtMostOnce, b"z"), true);
    assert!(matches!(
        s.next_publish(now),
        Some(Outgoing::Publish { packet_id: 0, .. })
    ));
}

#[test]
fn queue_limits_drop_qos0_and_refuse_qos1() {
    let mut s = session();
    for _ in 0..4 {
        assert!(matches!(
            s.enqueue(delivery(QoS::AtLeastOnce, b"0123456789"), true),
            Enqueued::Queued(_)
        ));
    }
    assert_eq!(
        s.enqueue(delivery(QoS::AtMostOnce, b"x"), true),
        Enqueued::DroppedQos0
    );
    assert_eq!(
        s.enqueue(delivery(QoS::ExactlyOnce, b"x"), true),
        Enqueued::Full
    );
    assert_eq!(s.dropped_qos0, 1);
    assert_eq!(s.queued_len(), 4);
    assert_eq!(s.queued_bytes(), 40);
    // Bytes limit.
    let mut s = session();
    static BIG: [u8; 90] = [0; 90];
    assert!(matches!(
        s.enqueue(delivery(QoS::AtLeastOnce, &BIG), true),
        Enqueued::Queued(_)
    ));
    assert_eq!(
        s.enqueue(delivery(QoS::AtLeastOnce, b"0123456789abc"), true),
        Enqueued::Full
    );
    // The broker-wide cap.
    assert_eq!(
        s.enqueue(delivery(QoS::AtLeastOnce, b"a"), false),
        Enqueued::Full
    );
}

#[test]
fn expired_messages_are_never_sent() {
    let now = Instant::now();
    let mut s = session();
    let mut m = (*message(QoS::AtLeastOnce, b"old")).clone();
    m.expires_at = Some(now + Duration::from_secs(5));
    let d = Delivery {
        message: Arc::new(m),
        ..delivery(QoS::AtLeastOnce, b"")
    };
    s.enqueue(d.clone(), true);
    s.enqueue(delivery(QoS::AtLeastOnce, b"new"), true);
    let later = now + Duration::from_secs(6);
    let Some(Outgoing::Publish { delivery, .. }) = s.next_publish(later) else {
        panic!()
    };
    assert_eq!(&delivery.message.payload[..], b"new");
    assert_eq!(s.expired, 1);
    assert_eq!(s.queued_bytes(), 0);
    // Remaining expiry is rounded up.
    assert_eq!(
        d.message
            .remaining_expiry_secs(now + Duration::from_millis(2500)),
        Some(3)
    );
    s.enqueue(d, true);
    s.purge_expired(later);
    assert_eq!(s.queued_len(), 0);
}

#[test]
fn refused_pubrec_ends_the_flow_and_unknown_ids_are_reported() {
    let now = Instant::now();
    let mut s = session();
    assert_eq!(s.on_pubrec(9, false), PubRecOutcome::Unknown);
    s.enqueue(delivery(QoS::ExactlyOnce, b"x"), true);
    let Some(Outgoing::Publish { packet_id, .. }) = s.next_publish(now) else {
        panic!()
    };
    assert_eq!(
        s.on_puback(packet_id),
        Err(UnknownPacketId(packet_id)),
        "PUBACK for QoS 2"
    );
    assert_eq!(
        s.on_pubrec(packet_id, true),
        PubRecOutcome::Refused(Some(1))
    );
    assert_eq!(s.inflight_len(), 0);
    assert_eq!(s.on_pubcomp(packet_id), Err(UnknownPacketId(packet_id)));
}

#[test]
fn packet_ids_are_assigned_at_enqueue_skip_those_in_use_and_wrap() {
    let now = Instant::now();
    let mut s = session();
    s.set_window(u16::MAX);
    s.next_packet_id = MAX_MQTT_PACKET_ID;
    let ids: Vec<Enqueued> = (0..3)
        .map(|_| s.enqueue(delivery(QoS::AtLeastOnce, b"a"), true))
        .collect();
    assert_eq!(
        ids,
        [
            Enqueued::Queued(MAX_MQTT_PACKET_ID),
            Enqueued::Queued(1),
            Enqueued::Queued(2)
        ]
    );
    let sent: Vec<PacketId> = (0..3)
        .map(|_| match s.next_publish(now) {
            Some(Outgoing::Publish { packet_id, .. }) => packet_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sent,
        [MAX_MQTT_PACKET_ID, 1, 2],
        "sent under the identifiers they were queued with"
    );
    s.next_packet_id = 1;
    assert_eq!(
        s.enqueue(delivery(QoS::AtLeastOnce, b"a"), true),
        Enqueued::Queued(3)
    );
    // QoS 0 takes no identifier.
    assert_eq!(
        s.enqueue(delivery(QoS::AtMostOnce, b"a"), true),
        Enqueued::Queued(0)
    );
}

#[test]
fn reservations_count_against_limits_and_can_be_cancelled() {
    let mut s = session();
    let Enqueued::Queued(a) = s.reserve(QoS::ExactlyOnce, 10, true) else {
        panic!()
    };
    let Enqueued::Queued(b) = s.reserve(QoS::AtLeastOnce, 10, true) else {
        panic!()
    };
    assert_ne!(a, b);
    assert_eq!(s.queued_bytes(), 20);
    assert!(
        s.next_publish(Instant::now()).is_none(),
        "reserved is not yet sendable"
    );
    s.cancel(a, 10);
    s.commit(b, delivery(QoS::AtLeastOnce, b"0123456789"));
    assert_eq!(s.queued_bytes(), 10);
    assert!(
        matches!(s.next_publish(Instant::now()), Some(Outgoing::Publish { packet_id, .. }) if packet_id == b)
    );
    // The cancelled identifier is free again.
    s.next_packet_id = a;
    assert_eq!(s.reserve(QoS::AtLeastOnce, 1, true), Enqueued::Queued(a));
}

#[test]
fn restored_deliveries_are_resent_with_dup_and_pubrel() {
    let now = Instant::now();
    let mut s = session();
    s.restore(7, delivery(QoS::ExactlyOnce, b"x"), true);
    s.restore(8, delivery(QoS::AtLeastOnce, b"y"), false);
    assert_eq!(s.resume(), vec![Outgoing::PubRel { packet_id: 7 }]);
    match s.next_publish(now) {
        Some(Outgoing::Publish {
            packet_id: 8,
            dup: true,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // Identifiers in use are not handed out again.
    s.next_packet_id = 7;
    assert_eq!(
        s.enqueue(delivery(QoS::AtLeastOnce, b"z"), true),
        Enqueued::Queued(9)
    );
}

#[test]
fn removals_without_acknowledgement_are_reported() {
    let now = Instant::now();
    let mut s = session();
    let mut m = (*message(QoS::AtLeastOnce, b"old")).clone();
    m.expires_at = Some(now);
    let d = Delivery {
        message: Arc::new(m),
        ..delivery(QoS::AtLeastOnce, b"")
    };
    let Enqueued::Queued(expired) = s.enqueue(d, true) else {
        panic!()
    };
    let mut k = (*message(QoS::AtLeastOnce, b"k")).clone();
    k.id = 2;
    let d = Delivery {
        message: Arc::new(k),
        ..delivery(QoS::AtLeastOnce, b"")
    };
    let Enqueued::Queued(kept) = s.enqueue(d, true) else {
        panic!()
    };
    assert!(s.next_publish(now + Duration::from_secs(1)).is_some());
    s.discard_inflight(kept);
    assert_eq!(s.take_removed(), vec![(expired, 1), (kept, 2)]);
    assert!(s.take_removed().is_empty());
}

#[test]
fn shared_deliveries_are_handed_back_except_qos2_in_flight() {
    let now = Instant::now();
    let mut s = session();
    let shared = |qos| Delivery {
        shared_group: Some("g".into()),
        ..delivery(qos, b"s")
    };
    s.enqueue(shared(QoS::AtLeastOnce), true);
    s.enqueue(shared(QoS::ExactlyOnce), true);
    s.enqueue(shared(QoS::AtLeastOnce), true);
    s.enqueue(delivery(QoS::AtLeastOnce, b"own"), true);
    s.next_publish(now).unwrap();
    s.next_publish(now).unwrap();
    let back = s.take_shared_for_redispatch();
    // In flight: QoS 1 (handed back) and QoS 2 (kept). Queued: one shared QoS 1 (handed back)
    // and one delivery of the session's own subscription (kept).
    assert_eq!(back.len(), 2);
    assert_eq!(s.inflight_len(), 1);
    assert_eq!(s.queued_len(), 1);
    assert_eq!(s.queued_bytes(), 3);
    // Their identifiers stay taken until each is moved or given back.
    let (moved, _) = &back[0];
    s.release_moved(*moved);
    assert!(s.take_removed().is_empty(), "the mover logs the removal");
    let (kept_id, kept) = back[1].clone();
    s.give_back(kept_id, kept, false);
    assert_eq!(s.queued_len(), 2);
}

/// Found by `keelmq bench`: acknowledged deliveries must give their packet identifier back,
/// or a subscriber stalls for good after 65,535 QoS 1/2 messages.
#[test]
fn acknowledged_deliveries_free_their_packet_ids() {
    let now = Instant::now();
    let mut s = session();
    for round in 0..70_000u32 {
        let qos = if round % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let Enqueued::Queued(id) = s.enqueue(delivery(qos, b"a"), true) else {
            panic!("round {round}: no packet identifier left");
        };
        match s.next_publish(now) {
            Some(Outgoing::Publish { packet_id, .. }) => assert_eq!(packet_id, id),
            other => panic!("{other:?}"),
        }
        if qos == QoS::AtLeastOnce {
            assert!(s.on_puback(id).is_ok());
        } else {
            assert_eq!(s.on_pubrec(id, false), PubRecOutcome::Release);
            assert!(s.on_pubcomp(id).is_ok());
        }
    }
    // A refused PUBREC ends the flow and frees the identifier too.
    for round in 0..70_000u32 {
        let Enqueued::Queued(id) = s.enqueue(delivery(QoS::ExactlyOnce, b"a"), true) else {
            panic!("round {round}: no packet identifier left");
        };
        assert!(s.next_publish(now).is_some());
        assert_eq!(s.on_pubrec(id, true), PubRecOutcome::Refused(Some(1)));
    }
    assert_eq!(s.inflight_len(), 0);
    assert!(s.used_packet_ids.is_empty());
    assert!(
        s.take_removed().is_empty(),
        "acknowledged removals are logged by the broker"
    );
}

#[test]
fn paged_out_deliveries_keep_their_order_bytes_and_ids() {
    let mut s = Session::new("c".into(), ProtocolVersion::V5, LIMITS);
    s.set_window(10);
    let d0 = delivery(QoS::AtMostOnce, b"zero");
    let d1 = delivery(QoS::AtLeastOnce, b"one");
    let d2 = delivery(QoS::ExactlyOnce, b"two!");
    assert!(matches!(s.enqueue(d0.clone(), true), Enqueued::Queued(0)));
    let Enqueued::Queued(p1) = s.enqueue(d1.clone(), true) else {
        panic!()
    };
    let before = s.queued_bytes();
    // The connection went away: QoS 1/2 leave memory, their bytes and ids stay counted.
    s.page_out();
    assert_eq!(s.queued_bytes(), before);
    assert_eq!(s.queued_len(), 2);
    assert!(s.has_paged());
    // Offline, a new durable delivery is paged at once, after the others.
    let Enqueued::Queued(p2) = s.reserve(QoS::ExactlyOnce, d2.accounted_bytes(), true) else {
        panic!()
    };
    s.commit_paged(p2, &d2);
    assert_eq!(s.queued_bytes(), before + 4);
    assert_eq!(s.queued_len(), 3);
    assert!(!s.has_room(90), "paged bytes count against the limits");
    // Ids in use are never handed out again while paged.
    for _ in 0..2 {
        if let Enqueued::Queued(p) = s.reserve(QoS::AtLeastOnce, 1, true) {
            assert!(p != p1 && p != p2);
            s.cancel(p, 1);
        }
    }
    // Resume: paged in behind what is in memory (here the QoS 0 one: QoS 0 and QoS 1/2
    // deliveries keep no common order), first sends without DUP.
    let paged = s.take_paged_front(usize::MAX);
    assert_eq!(
        paged.iter().map(|p| p.packet_id).collect::<Vec<_>>(),
        vec![p1, p2]
    );
    let loaded = paged
        .into_iter()
        .zip([d1.clone(), d2.clone()])
        .map(|(p, d)| (p, Some(d)))
        .collect();
    s.restore_paged_in(loaded);
    assert_eq!(s.queued_bytes(), before + 4);
    let now = Instant::now();
    let mut sent = Vec::new();
    while let Some(out) = s.next_publish(now) {
        if let Outgoing::Publish {
            packet_id,
            delivery,
            dup,
        } = out
        {
            sent.push((packet_id, delivery.accounted_bytes(), dup));
        }
    }
    assert_eq!(sent, vec![(0, 4, false), (p1, 3, false), (p2, 4, false)]);
}

/// A broker-internal reader's session may hold more than 65,535 QoS 1/2 deliveries once its
/// identifiers are widened; a network client's may not.
#[test]
fn widened_packet_ids_let_a_backlog_pass_65535() {
    let limits = SessionLimits {
        max_queued_messages: 100_000,
        max_queued_bytes: usize::MAX,
    };
    let mut s = Session::new("c".into(), ProtocolVersion::V5, limits);
    let fill = |s: &mut Session, n: usize| {
        (0..n)
            .filter(|_| {
                matches!(
                    s.enqueue(delivery(QoS::AtLeastOnce, b"a"), true),
                    Enqueued::Queued(_)
                )
            })
            .count()
    };
    assert_eq!(
        fill(&mut s, 70_000),
        65_535,
        "an MQTT session stops at 65,535"
    );
    s.set_max_packet_id(PacketId::MAX);
    assert_eq!(fill(&mut s, 4_465), 4_465);
    assert_eq!(s.queued_len(), 70_000);
    let ids: HashSet<PacketId> = s.queued().map(|q| q.packet_id).collect();
    assert_eq!(ids.len(), 70_000, "every id distinct");
    assert!(ids.iter().any(|&id| id > MAX_MQTT_PACKET_ID));
}

/// A delivery awaiting PUBCOMP that is paged in after the connection resumed gets its PUBREL
/// sent again (the resume sent those in flight then); one completed meanwhile does not.
#[test]
fn a_paged_in_delivery_awaiting_pubcomp_gets_its_pubrel() {
    let mut s = session();
    s.set_window(10);
    let d = delivery(QoS::ExactlyOnce, b"q2");
    let paged = |id: PacketId| PagedDelivery {
        awaiting_pubcomp: true,
        ..PagedDelivery::of(id, &d, true)
    };
    for id in [5, 6] {
        s.restore_paged(paged(id));
    }
    assert!(s.resume().is_empty(), "nothing in flight yet");
    let taken = s.take_paged_front(2);
    s.restore_paged_in(taken.into_iter().map(|p| (p, Some(d.clone()))).collect());
    s.on_pubcomp(6).unwrap();
    assert_eq!(
        s.next_publish(Instant::now()),
        Some(Outgoing::PubRel { packet_id: 5 })
    );
    assert_eq!(s.next_publish(Instant::now()), None);
}

/// A connected persistent session keeps at most `in_memory` deliveries in memory: later ones
/// are queued paged out and paged in by batches as the queue drains, in their order; a
/// disconnect while a batch loads pages out after it, in front of the rest.
#[test]
fn a_long_backlog_is_paged_and_comes_back_in_order() {
    let limits = SessionLimits {
        max_queued_messages: 1000,
        max_queued_bytes: 1 << 20,
    };
    let mut s = Session::new("c".into(), ProtocolVersion::V5, limits);
    s.set_window(100);
    let in_memory = 4;
    let mut ids = Vec::new();
    const PAYLOADS: [[u8; 1]; 10] = [[0], [1], [2], [3], [4], [5], [6], [7], [8], [9]];
    for payload in &PAYLOADS {
        let d = delivery(QoS::AtLeastOnce, payload);
        let Enqueued::Queued(p) = s.reserve(d.qos, d.accounted_bytes(), true) else {
            panic!()
        };
        ids.push((p, d.clone()));
        match s.pages_new(in_memory) {
            true => s.commit_paged(p, &d),
            false => s.commit(p, d),
        }
    }
    assert_eq!((s.queue.len(), s.paged.len(), s.queued_len()), (4, 6, 10));
    let load = |s: &mut Session, n: usize| {
        let taken = s.take_paged_front(n);
        let by_id: HashMap<PacketId, Delivery> = ids.iter().cloned().collect();
        let loaded = taken
            .into_iter()
            .map(|p| {
                let d = by_id.get(&p.packet_id).cloned();
                (p, d)
            })
            .collect();
        loaded
    };
    let now = Instant::now();
    let mut sent = Vec::new();
    let next = |s: &mut Session, sent: &mut Vec<u8>| match s.next_publish(now) {
        Some(Outgoing::Publish { delivery, .. }) => {
            sent.push(delivery.message.payload[0]);
            true
        }
        _ => false,
    };
    // Three sent; one left in memory: a batch of 2 is paged in behind it.
    for _ in 0..3 {
        assert!(next(&mut s, &mut sent));
    }
    assert!(s.wants_page_in(2));
    let batch = load(&mut s, 2);
    assert!(!s.wants_page_in(2), "one batch at a time");
    assert!(s.pages_new(in_memory), "new ones follow the batch");
    assert_eq!(s.queued_len(), 7);
    // The connection goes away while the batch loads: nothing moves until it is in.
    assert!(!s.page_out());
    s.restore_paged_in(batch);
    assert!(s.page_out());
    assert_eq!((s.queue.len(), s.paged.len()), (0, 7));
    // Resumed: the rest comes back in order, batch by batch.
    while s.has_paged() {
        let batch = load(&mut s, 3);
        s.restore_paged_in(batch);
        while next(&mut s, &mut sent) {}
    }
    assert_eq!(sent, (0..10).collect::<Vec<u8>>());
}

#[test]
fn topics_and_properties_count_against_the_byte_limit() {
    let props = crate::codec::PublishProperties {
        user_properties: vec![("key".into(), "value".into())],
        content_type: Some("text".into()),
        ..Default::default()
    };
    let m = Message {
        topic: "a/b".into(),
        properties: Message::properties_of(props),
        ..(*message(QoS::AtLeastOnce, b"12345")).clone()
    };
    assert_eq!(m.accounted_bytes(), 5 + 3 + 8 + 4);
    let mut s = session();
    let d = Delivery {
        message: Arc::new(m),
        ..delivery(QoS::AtLeastOnce, b"")
    };
    s.enqueue(d, true);
    assert_eq!(s.queued_bytes(), 20);
}
