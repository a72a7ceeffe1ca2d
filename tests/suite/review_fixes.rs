//! Regressions for the durability and isolation holes a review of the broker found (issue
//! "Close the durability holes a review found"): each test names the item it covers and fails
//! on the broker as it was before the fix.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::raw::{RawClient, Recv};
use keelmq::codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::qos(qos)
}

fn connect_packet(v: ProtocolVersion, client_id: &str, tweak: impl FnOnce(&mut Connect)) -> Packet {
    let mut c = Connect {
        protocol: v,
        clean_start: true,
        keep_alive: 60,
        properties: Default::default(),
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
    };
    tweak(&mut c);
    Packet::Connect(Box::new(c))
}

fn publish(topic: &str, payload: &[u8], qos: QoS, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Default::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Whether a packet is the answer a test waits for.
type Answered = fn(&Packet) -> bool;

fn bytes_of(v: ProtocolVersion, packets: &[Packet]) -> BytesMut {
    let mut buf = BytesMut::new();
    for p in packets {
        encode(p, v, &mut buf).expect("encodes");
    }
    buf
}

/// Reads and decodes what the broker sends within `wait`, until it closes the connection.
/// Returns the packets and whether the connection ended with an error (a reset) rather than
/// an orderly close.
async fn read_all(
    stream: &mut TcpStream,
    v: ProtocolVersion,
    wait: Duration,
) -> (Vec<Packet>, bool) {
    let mut decoder = Decoder::with_version(v, MAX_PACKET_SIZE_PROTOCOL);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        while let Ok(Some(p)) = decoder.decode(&mut buf) {
            packets.push(p);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return (packets, false),
            Ok(Ok(0)) => return (packets, false),
            Ok(Err(_)) => return (packets, true),
            Ok(Ok(_)) => {}
        }
    }
}

/// Item 0: a CONNECT followed in the same segment by other packets gets all of them answered
/// at once, not after the client's next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_sent_with_the_connect_are_handled_at_once() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let (mut watcher, _) = RawClient::connect(addr, V311, "watcher", true, |_| {}).await;
    watcher.subscribe(1, "dev/#", opts(QoS::AtLeastOnce)).await;
    let wait = Duration::from_secs(2);
    for v in [V311, V5] {
        let tail: Vec<(Packet, Answered)> = vec![
            (
                publish("dev/1", b"hello", QoS::AtLeastOnce, 1),
                |p| matches!(p, Packet::PubAck(a) if a.packet_id == 1),
            ),
            (
                publish("dev/2", b"hello", QoS::ExactlyOnce, 2),
                |p| matches!(p, Packet::PubRec(a) if a.packet_id == 2),
            ),
            (
                Packet::Subscribe(Subscribe {
                    packet_id: 3,
                    properties: Default::default(),
                    filters: vec![("x/#".to_string(), opts(QoS::AtLeastOnce))],
                }),
                |p| matches!(p, Packet::SubAck(a) if a.packet_id == 3),
            ),
            (Packet::PingReq, |p| matches!(p, Packet::PingResp)),
        ];
        for (packet, answered) in tail {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let bytes = bytes_of(v, &[connect_packet(v, "coalesced", |_| {}), packet]);
            s.write_all(&bytes).await.unwrap();
            let mut decoder = Decoder::with_version(v, MAX_PACKET_SIZE_PROTOCOL);
            let mut buf = BytesMut::new();
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + wait;
            while !seen.iter().any(answered) {
                match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    other => panic!("{v:?}: no answer after CONNACK ({other:?}), got {seen:?}"),
                }
                while let Ok(Some(p)) = decoder.decode(&mut buf) {
                    seen.push(p);
                }
            }
            assert!(matches!(seen[0], Packet::ConnAck(_)), "{seen:?}");
        }
    }
    // The two publishes reached the watcher (per version).
    for _ in 0..4 {
        let p = watcher.next_publish().await;
        watcher
            .send(&Packet::PubAck(PubAck::new(p.packet_id)))
            .await;
    }
    // DISCONNECT right behind CONNECT: closed at once, without the will.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let with_will = |c: &mut Connect| {
        c.will = Some(LastWill {
            topic: "dev/will".into(),
            payload: Bytes::from_static(b"will"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        })
    };
    let bytes = bytes_of(
        V5,
        &[
            connect_packet(V5, "leaver", with_will),
            Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)),
        ],
    );
    s.write_all(&bytes).await.unwrap();
    let (packets, _) = read_all(&mut s, V5, wait).await;
    assert_eq!(packets.len(), 1, "only the CONNACK: {packets:?}");
    watcher.expect_silence(Duration::from_millis(300)).await;
    // A malformed packet behind CONNECT is answered with its reason code (v5).
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = bytes_of(V5, &[connect_packet(V5, "malformed", |_| {})]);
    bytes.extend_from_slice(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]); // QoS 3
    s.write_all(&bytes).await.unwrap();
    let (packets, _) = read_all(&mut s, V5, wait).await;
    assert!(
        matches!(packets.as_slice(), [Packet::ConnAck(_), Packet::Disconnect(d)] if d.reason == ReasonCode::MALFORMED_PACKET),
        "{packets:?}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Item 16: a DISCONNECT with a reason reaches the client even when the client's unread
/// packets are still in the broker's receive buffer (closing such a socket sends a reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_reaches_the_client_despite_unread_input() {
    let mut config = common::test_config();
    config.mqtt.receive_maximum = 2;
    let server = common::start(config).await;
    let addr = server.local_addr();
    for round in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut packets = vec![connect_packet(V5, "flooder", |_| {})];
        for id in 1..=3 {
            packets.push(publish("t", b"x", QoS::ExactlyOnce, id));
        }
        // More behind the third than the broker reads once it has refused it.
        for _ in 0..600 {
            packets.push(publish("t", &[0u8; 100], QoS::AtMostOnce, 0));
        }
        s.write_all(&bytes_of(V5, &packets)).await.unwrap();
        // A client that writes before it reads (paho's loop) must not find the connection
        // reset: a broker closing with unread input makes the kernel answer with a reset, the
        // client's write fails, and it never reads the DISCONNECT waiting for it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let more = bytes_of(V5, &[Packet::PingReq]);
        let wrote = s.write_all(&more).await;
        assert!(
            wrote.is_ok(),
            "round {round}: the write after the refusal failed: {wrote:?}"
        );
        let (seen, reset) = read_all(&mut s, V5, Duration::from_secs(5)).await;
        let disconnect = seen.iter().find_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason),
            _ => None,
        });
        assert_eq!(
            disconnect,
            Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
            "round {round}: reset {reset}, got {seen:?}"
        );
    }
    server.shutdown(Duration::from_secs(1)).await;
}

/// Item 10: a Session Expiry Interval set on DISCONNECT is capped like the CONNECT's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_session_expiry_is_capped() {
    let mut config = common::test_config();
    config.mqtt.max_session_expiry_secs = 1;
    let server = common::start(config).await;
    let addr = server.local_addr();
    let expiry = |c: &mut Connect| c.properties.session_expiry_interval = Some(1);
    let (mut c, _) = RawClient::connect(addr, V5, "capped", true, expiry).await;
    c.subscribe(1, "t", opts(QoS::AtLeastOnce)).await;
    let mut d = Disconnect::new(ReasonCode::SUCCESS);
    d.properties.session_expiry_interval = Some(3600);
    c.send(&Packet::Disconnect(d)).await;
    assert_eq!(c.recv().await, Recv::Closed);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (_c, ack) = RawClient::connect(addr, V5, "capped", false, expiry).await;
    assert!(!ack.session_present, "the session outlived the 1 s cap");
    server.shutdown(Duration::from_secs(1)).await;
}

/// Item 11: wills may not use `$` topics (they could overwrite `$SYS` or escape the retained
/// limit), and only the broker's own `$SYS` messages are exempt from that limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_will_topics_are_refused() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    for (v, expected) in [(V5, ReasonCode::TOPIC_NAME_INVALID), (V311, ReasonCode(5))] {
        let mut c = RawClient::tcp(addr, v).await;
        let ack = c
            .handshake("sneaky", true, |c| {
                c.will = Some(LastWill {
                    topic: "$SYS/broker/version".into(),
                    payload: Bytes::from_static(b"pwned"),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    properties: Default::default(),
                })
            })
            .await;
        assert_eq!(ack.code, expected, "{v:?}");
    }
    server.shutdown(Duration::from_secs(1)).await;
}

/// Item 15: a CONNACK that cannot be encoded (response information over 65,535 bytes) refuses
/// the connection without attaching, or creating, a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unencodable_connack_leaves_no_session() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let long_id = "x".repeat(65_530);
    let mut c = RawClient::tcp(addr, V5).await;
    let ack = c
        .handshake(&long_id, true, |c| {
            c.properties.request_response_information = Some(1);
            c.properties.session_expiry_interval = Some(300);
        })
        .await;
    assert_eq!(ack.code, ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR);
    assert_eq!(server.broker().session_count(), 0);
    server.shutdown(Duration::from_secs(1)).await;
}

/// Item 8: an offline subscriber whose queue is full (anonymous, never-expiring, subscribed to
/// `#`) loses its own copies; every other publish and subscriber goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_offline_subscriber_refuses_no_publisher() {
    let mut config = common::test_config();
    config.limits.max_queued_messages = 10;
    config.limits.stalled_subscriber_ms = 200;
    let server = common::start(config).await;
    let addr = server.local_addr();
    let forever = |c: &mut Connect| c.properties.session_expiry_interval = Some(u32::MAX);
    let (mut hog, _) = RawClient::connect(addr, V5, "hog", true, forever).await;
    hog.subscribe(1, "#", opts(QoS::AtLeastOnce)).await;
    drop(hog);
    // Past its grace as a subscriber that may come straight back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (mut online, _) = RawClient::connect(addr, V5, "online", true, |_| {}).await;
    online.subscribe(1, "plant/#", opts(QoS::AtLeastOnce)).await;
    let (mut p5, _) = RawClient::connect(addr, V5, "p5", true, |_| {}).await;
    let (mut p3, _) = RawClient::connect(addr, V311, "p3", true, |_| {}).await;
    for id in 1..=30u16 {
        p5.publish("plant/a", b"m", QoS::AtLeastOnce, id, false)
            .await;
        match p5.next().await {
            Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::SUCCESS, "message {id}"),
            other => panic!("{other:?}"),
        }
        p3.publish("plant/b", b"m", QoS::AtLeastOnce, id, false)
            .await;
        assert!(
            matches!(
                p3.recv_within(Duration::from_secs(2)).await,
                Recv::Packet(Packet::PubAck(_))
            ),
            "3.x publisher held back at {id}"
        );
    }
    for _ in 0..60 {
        let p = online.next_publish().await;
        online.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    }
    let dropped = server
        .broker()
        .metrics()
        .dropped_queue_full
        .load(Ordering::Relaxed);
    assert_eq!(dropped, 50, "the offline subscriber's copies beyond its 10");
    // The offline subscriber still gets the ten it had room for.
    let (mut hog, ack) = RawClient::connect(addr, V5, "hog", false, forever).await;
    assert!(ack.session_present);
    for _ in 0..10 {
        let p = hog.next_publish().await;
        hog.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    }
    hog.expect_silence(Duration::from_millis(300)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// Publishes QoS 1 messages to `job` one at a time, each acknowledged with success.
async fn publish_jobs(p: &mut RawClient, ids: std::ops::RangeInclusive<u16>, body: &'static str) {
    for id in ids {
        p.publish("job", body.as_bytes(), QoS::AtLeastOnce, id, false)
            .await;
        match p.next().await {
            Packet::PubAck(ack) => assert_eq!(ack.reason, ReasonCode::SUCCESS, "{id}"),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Item 1: shared deliveries of a departing member are never lost: with every other member
/// full they stay with it (persistent), and with no member connected they go to an offline
/// persistent member rather than die with a clean session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_redispatch_loses_nothing() {
    let mut config = common::test_config();
    config.limits.max_queued_messages = 3;
    config.limits.stalled_subscriber_ms = 60_000;
    let server = common::start(config).await;
    let addr = server.local_addr();
    let member = |expiry: u32| {
        move |c: &mut Connect| {
            c.properties.session_expiry_interval = Some(expiry);
            c.properties.receive_maximum = Some(1);
        }
    };
    let filter = "$share/g/job";
    // A and B, connected, each take one in flight and three queued, and acknowledge nothing.
    let (mut a, _) = RawClient::connect(addr, V5, "a", true, member(300)).await;
    a.subscribe(1, filter, opts(QoS::AtLeastOnce)).await;
    let (mut b, _) = RawClient::connect(addr, V5, "b", true, member(300)).await;
    b.subscribe(1, filter, opts(QoS::AtLeastOnce)).await;
    let (mut p, _) = RawClient::connect(addr, V5, "p", true, |_| {}).await;
    publish_jobs(&mut p, 1..=8, "early").await;
    let first_b = b.next_publish().await;
    assert_eq!(&first_b.payload[..], b"early");
    // B leaves; A is full, so B keeps its four.
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut b, ack) = RawClient::connect(addr, V5, "b", false, member(300)).await;
    assert!(ack.session_present);
    for _ in 0..4 {
        let m = b.next_publish().await;
        b.send(&Packet::PubAck(PubAck::new(m.packet_id))).await;
    }
    b.expect_silence(Duration::from_millis(300)).await;
    for _ in 0..4 {
        let m = a.next_publish().await;
        a.send(&Packet::PubAck(PubAck::new(m.packet_id))).await;
    }
    a.expect_silence(Duration::from_millis(300)).await;
    // A clean member C holds deliveries and leaves while A and B are offline: they go to an
    // offline persistent member.
    drop(a);
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut c, _) = RawClient::connect(addr, V5, "c", true, member(0)).await;
    c.subscribe(1, filter, opts(QoS::AtLeastOnce)).await;
    publish_jobs(&mut p, 9..=11, "late").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = 0;
    for name in ["a", "b"] {
        let (mut m, _) = RawClient::connect(addr, V5, name, false, member(300)).await;
        loop {
            match m.recv_within(Duration::from_millis(500)).await {
                Recv::Packet(Packet::Publish(msg)) => {
                    m.send(&Packet::PubAck(PubAck::new(msg.packet_id))).await;
                    assert_eq!(&msg.payload[..], b"late");
                    late += 1;
                }
                Recv::Timeout => break,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(
        late, 3,
        "C's deliveries reached the offline persistent members"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Item 9: unknown PUBRELs and repeated PUBRECs change nothing and log nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_acknowledgements_make_no_durable_work() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let wal_seq = || {
        server
            .broker()
            .persistence()
            .expect("persistent broker")
            .wal()
            .last_seq()
    };
    let (mut sub, _) = RawClient::connect(addr, V311, "bogus", false, |_| {}).await;
    sub.subscribe(1, "q2", opts(QoS::ExactlyOnce)).await;
    let (mut p, _) = RawClient::connect(addr, V311, "p", true, |_| {}).await;
    p.publish("q2", b"once", QoS::ExactlyOnce, 1, false).await;
    assert!(matches!(p.next().await, Packet::PubRec(_)));
    let m = sub.next_publish().await;
    sub.send(&Packet::PubRec(PubAck::new(m.packet_id))).await;
    assert!(matches!(sub.next().await, Packet::PubRel(a) if a.packet_id == m.packet_id));
    let before = wal_seq();
    let mut burst = BytesMut::new();
    for i in 0..5000u16 {
        encode(&Packet::PubRel(PubAck::new(1000 + i)), V311, &mut burst).unwrap();
        encode(&Packet::PubRec(PubAck::new(m.packet_id)), V311, &mut burst).unwrap();
    }
    sub.send_bytes(&burst).await;
    let mut answers = 0;
    while answers < 10_000 {
        match sub.next().await {
            Packet::PubComp(_) | Packet::PubRel(_) => answers += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(wal_seq(), before, "bogus acknowledgements were logged");
    server.shutdown(Duration::from_secs(1)).await;
}

/// Item 6: a SUBSCRIBE whose records cannot be committed (here: its retained copies exceed
/// one log record) gets no SUBACK and leaves no subscription behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscribe_changes_nothing() {
    let mut config = common::test_config();
    config.mqtt.max_packet_size = keelmq::config::MAX_DURABLE_PACKET_SIZE;
    config.limits.max_queued_bytes = 512 << 20;
    config.storage.wal_segment_bytes = 256 << 20;
    let server = common::start(config).await;
    let addr = server.local_addr();
    let (mut p, _) = RawClient::connect(addr, V5, "p", true, |_| {}).await;
    let big: &'static [u8] = Box::leak(vec![7u8; 14 << 20].into_boxed_slice());
    for i in 0..5u16 {
        p.publish(&format!("r/{i}"), big, QoS::AtLeastOnce, i + 1, true)
            .await;
        assert!(matches!(p.next().await, Packet::PubAck(_)));
    }
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(300);
    let (mut s, _) = RawClient::connect(addr, V5, "s", true, persistent).await;
    s.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![("r/#".to_string(), opts(QoS::AtLeastOnce))],
    }))
    .await;
    match s.recv().await {
        Recv::Packet(Packet::Disconnect(d)) => assert!(d.reason.is_error(), "{d:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(server.broker().subscription_count(), 0);
    let (_s, ack) = RawClient::connect(addr, V5, "s", false, persistent).await;
    assert!(ack.session_present);
    assert_eq!(server.broker().subscription_count(), 0);
    server.shutdown(Duration::from_secs(1)).await;
}

/// Item 7: expired messages leave an offline subscriber's queue (also those paged out and
/// recovered after a restart), so they hold no room that live messages need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_leave_offline_queues_across_a_restart() {
    let mut config = common::test_config();
    config.limits.max_queued_messages = 5;
    config.limits.stalled_subscriber_ms = 100;
    let server = common::start(config.clone()).await;
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(300);
    let (mut sub, _) = RawClient::connect(server.local_addr(), V5, "exp", true, persistent).await;
    sub.subscribe(1, "e/#", opts(QoS::AtLeastOnce)).await;
    drop(sub);
    let (mut p, _) = RawClient::connect(server.local_addr(), V5, "p", true, |_| {}).await;
    for id in 1..=5u16 {
        let mut m = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "e/short".into(),
            packet_id: id,
            properties: Default::default(),
            payload: Bytes::from_static(b"short-lived"),
        };
        m.properties.message_expiry_interval = Some(1);
        p.send(&Packet::Publish(m)).await;
        assert!(matches!(p.next().await, Packet::PubAck(a) if a.reason == ReasonCode::SUCCESS));
    }
    drop(p);
    server.shutdown(Duration::from_secs(1)).await;
    // Restarted: the queue comes back paged out, with its expiry.
    let server = common::start(config).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut p, _) = RawClient::connect(server.local_addr(), V5, "p", true, |_| {}).await;
    for id in 1..=3u16 {
        p.publish("e/live", b"live", QoS::AtLeastOnce, id, false)
            .await;
        assert!(matches!(p.next().await, Packet::PubAck(a) if a.reason == ReasonCode::SUCCESS));
    }
    let expired = server.broker().metrics().expired.load(Ordering::Relaxed);
    assert_eq!(expired, 5, "the expired messages were purged");
    let (mut sub, _) = RawClient::connect(server.local_addr(), V5, "exp", false, persistent).await;
    for _ in 0..3 {
        let m = sub.next_publish().await;
        assert_eq!(&m.payload[..], b"live");
        sub.send(&Packet::PubAck(PubAck::new(m.packet_id))).await;
    }
    sub.expect_silence(Duration::from_millis(300)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// Item 13: a queued message counts its topic and properties against the byte limits, not
/// only its payload (a 4 KB topic with an empty payload is not free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limits_count_topics_and_properties() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(300);
    let (mut sub, _) = RawClient::connect(addr, V5, "acct", true, persistent).await;
    sub.subscribe(1, "#", opts(QoS::AtLeastOnce)).await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut p, _) = RawClient::connect(addr, V5, "p", true, |_| {}).await;
    let topic: &'static str = Box::leak(format!("t/{}", "x".repeat(4000)).into_boxed_str());
    for id in 1..=2u16 {
        let mut m = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: id,
            properties: Default::default(),
            payload: Bytes::new(),
        };
        m.properties.user_properties = vec![("k".repeat(500), "v".repeat(500))];
        p.send(&Packet::Publish(m)).await;
        assert!(matches!(p.next().await, Packet::PubAck(a) if a.reason == ReasonCode::SUCCESS));
    }
    let queued = server.broker().queued_bytes_total();
    assert!(
        queued >= 2 * 5000,
        "{queued} bytes accounted for two 5 KB messages"
    );
    server.shutdown(Duration::from_secs(1)).await;
}
