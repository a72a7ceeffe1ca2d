use super::*;

#[tokio::test]
async fn a_held_retained_publish_is_retried_through_the_retain_gate() {
    let broker = Broker::new(Config::default());
    // As while the retained index loads at start.
    let gate = broker.shared.retain_gate.clone().write_owned().await;
    let message = Arc::new(Message {
        id: broker.next_message_id(),
        topic: "r/1".into(),
        payload: bytes::Bytes::from_static(b"r"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Message::properties_of(PublishProperties::default()),
        expires_at: None,
        publisher: None,
        rules: Default::default(),
    });
    let (pending, refused) = broker.plan_publish(message, None, Origin::Broker);
    assert!(!refused);
    let retry = tokio::spawn({
        let broker = broker.clone();
        async move {
            broker
                .retry_planned(pending)
                .await
                .map(|o| o.held.is_none())
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!retry.is_finished(), "the retry waits for the gate");
    assert_eq!(broker.retained_count(), 0);
    drop(gate);
    assert!(matches!(retry.await, Ok(Ok(true))));
    assert_eq!(broker.retained_count(), 1);
}

fn retained(broker: &Broker, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        id: broker.next_message_id(),
        topic: "r/1".into(),
        payload: bytes::Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Message::properties_of(PublishProperties::default()),
        expires_at: None,
        publisher: None,
        rules: Default::default(),
    })
}

fn retained_payload(broker: &Broker) -> Option<bytes::Bytes> {
    let mut got = None;
    broker
        .shared
        .retained
        .read()
        .matching("r/1", |m| got = Some(m.payload.clone()));
    got
}

/// Two RETAIN publishes to one topic covered by one fdatasync may have their waiters run
/// in either order: the index must end with the one logged last (a restart brings that
/// one back).
#[tokio::test]
async fn retained_updates_become_visible_in_log_order() {
    let broker = Broker::new(Config::default());
    // (older value, newer value, what the index must hold after both)
    type Round = (&'static [u8], &'static [u8], Option<&'static [u8]>);
    let rounds: [Round; 2] = [(b"older", b"newer", Some(b"newer")), (b"older", b"", None)];
    for (older, newer, expected) in rounds {
        let (older, _) = broker.plan_publish(retained(&broker, older), None, Origin::Broker);
        let (newer, _) = broker.plan_publish(retained(&broker, newer), None, Origin::Broker);
        let (Ok(ReserveOutcome::Logged(a)), Ok(ReserveOutcome::Logged(b))) =
            (broker.reserve_and_log(older), broker.reserve_and_log(newer))
        else {
            panic!("placed");
        };
        broker.reveal(b.reserved);
        broker.reveal(a.reserved);
        assert_eq!(retained_payload(&broker).as_deref(), expected);
    }
    assert!(broker.shared.retain_order.lock().in_flight.is_empty());
    let (only, _) = broker.plan_publish(retained(&broker, b"again"), None, Origin::Broker);
    let Ok(ReserveOutcome::Logged(only)) = broker.reserve_and_log(only) else {
        panic!("placed");
    };
    broker.reveal(only.reserved);
    assert_eq!(retained_payload(&broker).as_deref(), Some(&b"again"[..]));
}

/// A retained message is kept as a copy of its own, not as a slice of the buffer the
/// publisher's packet was read into (which it would keep alive whole).
#[tokio::test]
async fn retained_messages_do_not_pin_read_buffers() {
    let broker = Broker::new(Config::default());
    let message = retained(&broker, b"payload");
    let (pending, _) = broker.plan_publish(message.clone(), None, Origin::Broker);
    let Ok(ReserveOutcome::Logged(logged)) = broker.reserve_and_log(pending) else {
        panic!("placed");
    };
    broker.reveal(logged.reserved);
    let mut kept = None;
    broker
        .shared
        .retained
        .read()
        .matching("r/1", |m| kept = Some(m.clone()));
    let kept = kept.expect("retained");
    assert_eq!(kept.payload, message.payload);
    assert_ne!(kept.payload.as_ptr(), message.payload.as_ptr());
    assert_ne!(kept.topic.as_ptr(), message.topic.as_ptr());
}

fn persistent_broker() -> (Broker, Arc<Persistence>) {
    let options = crate::persistence::PersistenceOptions {
        sync: keelmq_wal::SyncPolicy::Always,
        segment_bytes: 1 << 20,
        wal_writer_nice: None,
        commit_window: Duration::ZERO,
        commit_quiet: Duration::ZERO,
        checkpoint_interval: Duration::from_secs(3600),
        checkpoint_wal_bytes: u64::MAX,
        store: keelmq_storage::StoreOptions::default(),
    };
    let (p, _) = Persistence::open_parts(
        Arc::new(keelmq_wal::fs::MemFs::new()),
        "/wal".as_ref(),
        Box::new(keelmq_storage::MemStore::new()),
        options,
        None,
    )
    .expect("opens");
    let p = Arc::new(p);
    (Broker::with_persistence(Config::default(), p.clone()), p)
}

fn connect_packet(clean_start: bool) -> Connect {
    Connect {
        protocol: crate::codec::ProtocolVersion::V5,
        clean_start,
        keep_alive: 60,
        properties: Default::default(),
        client_id: "c".to_string(),
        will: None,
        username: None,
        password: None,
    }
}

/// Attaches a new connection to client "c"'s session.
async fn attach(broker: &Broker, clean_start: bool) -> (ConnId, Attached) {
    let conn = broker.next_conn_id();
    let packet = connect_packet(clean_start);
    let attached = broker
        .connect(conn, "c".into(), &packet, 300, &Default::default())
        .await;
    (conn, attached.expect("attached"))
}

fn qos2_message(broker: &Broker) -> Arc<Message> {
    Arc::new(Message {
        id: broker.next_message_id(),
        topic: "t".into(),
        payload: bytes::Bytes::from_static(b"m"),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Message::properties_of(PublishProperties::default()),
        expires_at: None,
        publisher: Some("c".into()),
        rules: Default::default(),
    })
}

/// A QoS 2 id claimed by a connection that is then replaced by a Clean Start is neither
/// marked nor logged for the new session: the client's next QoS 2 PUBLISH with that id is
/// a new message, not a re-send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_does_not_inherit_a_claimed_qos2_id() {
    let (broker, persistence) = persistent_broker();
    broker.retained_loaded().await;
    let (old, a) = attach(&broker, false).await;
    let Some(Claimed::New(claim)) = broker.claim_inbound_qos2(&a.slot, old, 7) else {
        panic!("a new id");
    };
    let pending = broker
        .plan_publish(qos2_message(&broker), Some(claim), Origin::Client)
        .0;
    // The old connection is still between its check and its log when a Clean Start
    // takes the session over.
    drop(a.alive);
    let (new, b) = attach(&broker, true).await;
    let Ok(ReserveOutcome::Logged(logged)) = broker.reserve_and_log(pending) else {
        panic!("placed");
    };
    broker.wait_and_reveal(logged).await.unwrap();
    let logged = persistence.with_image(|i| i.sessions["c"].inbound.clone());
    assert!(logged.is_empty(), "logged for the new session: {logged:?}");
    assert!(matches!(
        broker.claim_inbound_qos2(&b.slot, new, 7),
        Some(Claimed::New(_))
    ));
}

/// A re-send arriving on a resuming connection while the first copy is still on its way
/// (here: held at the retain gate) is a duplicate, not routed a second time.
#[tokio::test]
async fn a_resend_during_a_takeover_is_a_duplicate() {
    let broker = Broker::new(Config::default());
    let (old, a) = attach(&broker, false).await;
    let Some(Claimed::New(_claim)) = broker.claim_inbound_qos2(&a.slot, old, 9) else {
        panic!("a new id");
    };
    drop(a.alive);
    let (new, b) = attach(&broker, false).await;
    assert!(b.session_present);
    assert!(matches!(
        broker.claim_inbound_qos2(&b.slot, new, 9),
        Some(Claimed::Duplicate)
    ));
}

#[tokio::test]
async fn a_subscribe_held_past_a_takeover_is_not_applied_to_the_new_owner() {
    let broker = Broker::new(Config::default());
    let connect = connect_packet(false);
    let client: ClientId = "c".into();
    let old = broker.next_conn_id();
    let attached = broker
        .connect(old, client.clone(), &connect, 3600, &Default::default())
        .await
        .unwrap();
    // As while the retained index loads at start: the SUBSCRIBE waits for the gate.
    let gate = broker.shared.retain_gate.clone().write_owned().await;
    let sub = Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(
            "t/#".to_string(),
            SubscriptionOptions::qos(QoS::AtLeastOnce),
        )],
    };
    let held = tokio::spawn({
        let (broker, slot) = (broker.clone(), attached.slot.clone());
        async move { broker.subscribe(&slot, old, &sub).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!held.is_finished(), "the SUBSCRIBE waits for the gate");
    // A new connection takes the session over; the old one has stopped waiting for it
    // (as after the takeover's time limit).
    drop(attached.alive);
    let new = broker.next_conn_id();
    let resumed = broker
        .connect(new, client, &connect, 3600, &Default::default())
        .await
        .unwrap();
    assert!(resumed.session_present);
    drop(gate);
    assert!(
        matches!(held.await, Ok(Ok(None))),
        "refused to the old connection"
    );
    assert!(resumed.slot.state.lock().session.subscriptions.is_empty());
    assert_eq!(broker.subscription_count(), 0);
    // The owner's own SUBSCRIBE still works.
    let sub = Subscribe {
        packet_id: 2,
        properties: Default::default(),
        filters: vec![(
            "t/#".to_string(),
            SubscriptionOptions::qos(QoS::AtLeastOnce),
        )],
    };
    let codes = broker.subscribe(&resumed.slot, new, &sub).await.unwrap();
    assert_eq!(codes.map(|c| c.len()), Some(1));
    assert_eq!(broker.subscription_count(), 1);
}

/// The snapshot an exporter reads: counters and gauges in one value.
#[tokio::test]
async fn the_metrics_snapshot_has_counters_and_gauges() {
    let broker = Broker::new(Config::default());
    Metrics::add(&broker.metrics().messages_received, 3);
    let (_, _a) = attach(&broker, false).await;
    let m = broker.metrics_snapshot();
    assert_eq!(m.messages_received, 3);
    assert_eq!(m.sessions, 1);
    assert_eq!(
        m.connections_maximum,
        Config::default().limits.max_connections as u64
    );
}

/// Every connection's task is allocated at the size of its future's largest state, idle or not,
/// and every session holds a slot: both are the bulk of what an idle connection costs. Steps that
/// only begin or end a connection are boxed, and so is the active loop (an idle connection
/// waits in its small parked future); wills are boxed in the slot. (Budgets with room for
/// compiler changes; a regression past them is a step that should be boxed.)
#[tokio::test]
async fn an_idle_connection_costs_a_small_task_and_slot() {
    let broker = Broker::new(Config::default());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (server, peer) = l.accept().await.unwrap();
    let info = crate::transport::ConnInfo::tcp(peer, addr, "tcp".into());
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let permit = permits.acquire_owned().await.unwrap();
    let task = connection::serve(broker, server, info, permit, ());
    let size = std::mem::size_of_val(&task);
    let slot = std::mem::size_of::<SessionSlot>();
    eprintln!("idle connection: task future {size} bytes, session slot {slot} bytes");
    assert!(size <= 1024, "a connection's task future is {size} bytes");
    assert!(slot <= 640, "a session slot is {slot} bytes");
}
