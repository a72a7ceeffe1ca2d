//! Protocol behaviour of the broker, checked packet by packet with a raw client: malformed
//! input, flow control, keep-alive, topic aliases, QoS 2 de-duplication and retransmission on
//! resume, Maximum Packet Size, message expiry, queue limits, subscription options.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::raw::{publish_packet, RawClient, Recv};
use keelmq::codec::*;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::qos(qos)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_get_the_reason_code_and_others_keep_working() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let (mut watcher, _) = RawClient::connect(addr, V311, "watcher", true, |_| {}).await;
    watcher.subscribe(1, "t", opts(QoS::AtMostOnce)).await;

    // v5: PUBLISH with QoS 3 → DISCONNECT 0x81 Malformed Packet.
    let (mut bad, _) = RawClient::connect(addr, V5, "bad5", true, |_| {}).await;
    bad.send_bytes(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01])
        .await;
    bad.expect_disconnect(ReasonCode::MALFORMED_PACKET).await;
    // v5: wildcard in a topic name → 0x81; SUBSCRIBE without filters → 0x82 Protocol Error.
    let (mut bad, _) = RawClient::connect(addr, V5, "bad5b", true, |_| {}).await;
    bad.send_bytes(&[0x30, 0x04, 0x00, 0x01, b'#', 0x00]).await;
    bad.expect_disconnect(ReasonCode::MALFORMED_PACKET).await;
    let (mut bad, _) = RawClient::connect(addr, V5, "bad5c", true, |_| {}).await;
    bad.send_bytes(&[0x82, 0x03, 0x00, 0x01, 0x00]).await;
    bad.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
    // v3.1.1: the connection is simply closed.
    let (mut bad, _) = RawClient::connect(addr, V311, "bad3", true, |_| {}).await;
    bad.send_bytes(&[0xF0, 0x00]).await;
    assert_eq!(bad.recv().await, Recv::Closed);
    // Garbage before CONNECT, and a second CONNECT.
    let mut raw = RawClient::tcp(addr, V311).await;
    raw.send_bytes(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).await;
    assert_eq!(raw.recv().await, Recv::Closed);
    // A second CONNECT is a Protocol Error [MQTT-3.1.0-2].
    let (mut twice, _) = RawClient::connect(addr, V5, "twice", true, |_| {}).await;
    twice
        .send_bytes(&[
            0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 0,
        ])
        .await;
    twice.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
    let (mut pubber, _) = RawClient::connect(addr, V311, "pubber", true, |_| {}).await;
    pubber
        .publish("t", b"still here", QoS::AtMostOnce, 0, false)
        .await;
    let p = watcher.next_publish().await;
    assert_eq!(&p.payload[..], b"still here");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_above_the_maximum_size_are_refused() {
    let mut config = common::test_config();
    config.mqtt.max_packet_size = 128;
    let server = common::start(config).await;
    let (mut c, ack) = RawClient::connect(server.local_addr(), V5, "big", true, |_| {}).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(128));
    static BIG: [u8; 200] = [7; 200];
    c.publish("t", &BIG, QoS::AtMostOnce, 0, false).await;
    c.expect_disconnect(ReasonCode::PACKET_TOO_LARGE).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refusals_use_each_versions_codes() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    // Unsupported protocol level: return code 1 in 3.1.1 form [MQTT-3.1.2-2].
    let mut c = RawClient::tcp(addr, V311).await;
    c.send_bytes(&[
        0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 60, 0, 0,
    ])
    .await;
    match c.next().await {
        Packet::ConnAck(a) => assert_eq!(a.code, ReasonCode(1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv().await, Recv::Closed);
    // 3.1.1: empty client identifier with Clean Session 0 → return code 2 [MQTT-3.1.3-8].
    let mut c = RawClient::tcp(addr, V311).await;
    assert_eq!(c.handshake("", false, |_| {}).await.code, ReasonCode(2));
    // 3.1: empty client identifier is refused.
    let mut c = RawClient::tcp(addr, ProtocolVersion::V3_1).await;
    assert_eq!(c.handshake("", true, |_| {}).await.code, ReasonCode(2));
    // v5: an empty identifier is assigned one.
    let (_c, ack) = RawClient::connect(addr, V5, "", true, |_| {}).await;
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("assigned identifier");
    assert!(assigned.starts_with("keelmq-"));
    // v5: enhanced authentication is not offered → 0x8C.
    let mut c = RawClient::tcp(addr, V5).await;
    let ack = c
        .handshake("auth", true, |c| {
            c.properties.authentication_method = Some("SCRAM-SHA-1".into())
        })
        .await;
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    // v5: malformed CONNECT is answered with a CONNACK carrying the reason code.
    let mut c = RawClient::tcp(addr, V5).await;
    c.send_bytes(&[
        0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 60, 0, 0, 0,
    ])
    .await;
    match c.next().await {
        Packet::ConnAck(a) => assert_eq!(a.code, ReasonCode::MALFORMED_PACKET),
        other => panic!("{other:?}"),
    }
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_advertises_the_v5_capabilities() {
    let mut config = common::test_config();
    config.mqtt.max_keep_alive_secs = 30;
    config.mqtt.max_qos = 1;
    let server = common::start(config).await;
    let (_c, ack) = RawClient::connect(server.local_addr(), V5, "caps", true, |c| {
        c.keep_alive = 300;
        c.properties.request_response_information = Some(1);
    })
    .await;
    let p = ack.properties;
    assert_eq!(p.receive_maximum, Some(128));
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.retain_available, Some(1));
    assert_eq!(p.maximum_packet_size, Some(1024 * 1024));
    assert_eq!(p.topic_alias_maximum, Some(64));
    assert_eq!(p.wildcard_subscription_available, Some(1));
    assert_eq!(p.subscription_identifiers_available, Some(1));
    assert_eq!(p.shared_subscription_available, Some(1));
    assert_eq!(p.server_keep_alive, Some(30));
    assert_eq!(
        p.response_information.as_deref(),
        Some("keelmq/response/caps")
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_exceeded_disconnects_with_0x93() {
    let mut config = common::test_config();
    config.mqtt.receive_maximum = 2;
    let server = common::start(config).await;
    let (mut c, ack) = RawClient::connect(server.local_addr(), V5, "flood", true, |_| {}).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    // QoS 2 messages stay unacknowledged until PUBREL: the third exceeds the maximum.
    for id in 1..=2 {
        c.publish("t", b"x", QoS::ExactlyOnce, id, false).await;
        assert!(matches!(c.next().await, Packet::PubRec(a) if a.packet_id == id));
    }
    c.publish("t", b"x", QoS::ExactlyOnce, 3, false).await;
    c.expect_disconnect(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let server = common::start(common::test_config()).await;
    let (mut c, _) = RawClient::connect(server.local_addr(), V5, "sleepy", true, |c| {
        c.keep_alive = 1;
    })
    .await;
    let started = std::time::Instant::now();
    c.expect_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // A client that pings stays connected.
    let (mut c, _) = RawClient::connect(server.local_addr(), V311, "awake", true, |c| {
        c.keep_alive = 1;
    })
    .await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.send(&Packet::PingReq).await;
        assert_eq!(c.next().await, Packet::PingResp);
    }
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_inbound_is_routed_once_despite_resends() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let (mut sub, _) = RawClient::connect(addr, V311, "sub", true, |_| {}).await;
    sub.subscribe(1, "q2", opts(QoS::AtMostOnce)).await;
    let (mut publ, _) = RawClient::connect(addr, V5, "pub", false, |c| {
        c.properties.session_expiry_interval = Some(60);
    })
    .await;
    publ.publish("q2", b"once", QoS::ExactlyOnce, 9, false)
        .await;
    assert!(matches!(publ.next().await, Packet::PubRec(a) if a.packet_id == 9));
    // The PUBREC is "lost": the publisher reconnects and re-sends with DUP.
    drop(publ);
    let (mut publ, ack) = RawClient::connect(addr, V5, "pub", false, |c| {
        c.properties.session_expiry_interval = Some(60);
    })
    .await;
    assert!(ack.session_present);
    let mut again = publish_packet("q2", b"once", QoS::ExactlyOnce, 9, false);
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    publ.send(&again).await;
    assert!(matches!(publ.next().await, Packet::PubRec(a) if a.packet_id == 9));
    publ.send(&Packet::PubRel(PubAck::new(9))).await;
    assert!(
        matches!(publ.next().await, Packet::PubComp(a) if a.packet_id == 9 && a.reason == ReasonCode::SUCCESS)
    );
    // A PUBREL for an identifier no longer held: PUBCOMP 0x92.
    publ.send(&Packet::PubRel(PubAck::new(9))).await;
    assert!(
        matches!(publ.next().await, Packet::PubComp(a) if a.reason == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
    assert_eq!(&sub.next_publish().await.payload[..], b"once");
    sub.expect_silence(Duration::from_millis(300)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_are_resent_on_resume() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(300);
    let (mut sub, _) = RawClient::connect(addr, V5, "resume", true, persistent).await;
    sub.subscribe(1, "r/#", opts(QoS::ExactlyOnce)).await;
    let (mut publ, _) = RawClient::connect(addr, V311, "p", true, |_| {}).await;
    publ.publish("r/1", b"one", QoS::AtLeastOnce, 1, false)
        .await;
    publ.publish("r/2", b"two", QoS::ExactlyOnce, 2, false)
        .await;
    let first = sub.next_publish().await;
    let second = sub.next_publish().await;
    assert_eq!(
        (first.qos, second.qos),
        (QoS::AtLeastOnce, QoS::ExactlyOnce)
    );
    // PUBREC the QoS 2 one, acknowledge nothing else, and drop the connection.
    sub.send(&Packet::PubRec(PubAck::new(second.packet_id)))
        .await;
    assert!(matches!(sub.next().await, Packet::PubRel(a) if a.packet_id == second.packet_id));
    drop(sub);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut sub, ack) = RawClient::connect(addr, V5, "resume", false, persistent).await;
    assert!(ack.session_present);
    // The QoS 1 PUBLISH again with DUP and the same identifier; PUBREL (not PUBLISH) for the
    // QoS 2 message already PUBRECed.
    let p = sub.next_publish().await;
    assert!(
        p.dup && p.packet_id == first.packet_id && &p.payload[..] == b"one",
        "{p:?}"
    );
    assert!(matches!(sub.next().await, Packet::PubRel(a) if a.packet_id == second.packet_id));
    sub.send(&Packet::PubAck(PubAck::new(first.packet_id)))
        .await;
    sub.send(&Packet::PubComp(PubAck::new(second.packet_id)))
        .await;
    sub.expect_silence(Duration::from_millis(300)).await;
    // After the flows completed, a further resume re-sends nothing.
    drop(sub);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut sub, _) = RawClient::connect(addr, V5, "resume", false, persistent).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_in_both_directions() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let (mut sub, _) = RawClient::connect(addr, V5, "alias-sub", true, |c| {
        c.properties.topic_alias_maximum = Some(1);
    })
    .await;
    sub.subscribe(1, "al/#", opts(QoS::AtMostOnce)).await;
    let (mut publ, _) = RawClient::connect(addr, V5, "alias-pub", true, |_| {}).await;
    let aliased = |topic: &str, alias: u16, payload: &'static [u8]| {
        let mut p = publish_packet(topic, payload, QoS::AtMostOnce, 0, false);
        if let Packet::Publish(p) = &mut p {
            p.properties.topic_alias = Some(alias);
        }
        p
    };
    publ.send(&aliased("al/one", 3, b"1")).await;
    publ.send(&aliased("", 3, b"2")).await; // topic from the alias
    publ.publish("al/two", b"3", QoS::AtMostOnce, 0, false)
        .await;
    publ.publish("al/one", b"4", QoS::AtMostOnce, 0, false)
        .await;
    // Outbound: the broker assigns alias 1 to the first topic, then sends it without the name;
    // the second topic gets no alias (the client's maximum is 1).
    let p1 = sub.next_publish().await;
    assert_eq!((&*p1.topic, p1.properties.topic_alias), ("al/one", Some(1)));
    let p2 = sub.next_publish().await;
    assert_eq!(
        (&*p2.topic, p2.properties.topic_alias, &p2.payload[..]),
        ("", Some(1), &b"2"[..])
    );
    let p3 = sub.next_publish().await;
    assert_eq!((&*p3.topic, p3.properties.topic_alias), ("al/two", None));
    let p4 = sub.next_publish().await;
    assert_eq!((&*p4.topic, p4.properties.topic_alias), ("", Some(1)));
    // An alias above the broker's maximum (64) → 0x94; an unknown alias → 0x82.
    publ.send(&aliased("al/x", 65, b"5")).await;
    publ.expect_disconnect(ReasonCode::TOPIC_ALIAS_INVALID)
        .await;
    let (mut publ, _) = RawClient::connect(addr, V5, "alias-pub2", true, |_| {}).await;
    publ.send(&aliased("", 5, b"6")).await;
    publ.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_maximum_packet_size_is_never_exceeded() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let (mut sub, _) = RawClient::connect(addr, V5, "small", true, |c| {
        c.properties.maximum_packet_size = Some(64);
    })
    .await;
    sub.subscribe(1, "mps", opts(QoS::AtLeastOnce)).await;
    let (mut publ, _) = RawClient::connect(addr, V311, "mps-pub", true, |_| {}).await;
    static BIG: [u8; 100] = [1; 100];
    publ.publish("mps", &BIG, QoS::AtLeastOnce, 1, false).await;
    publ.publish("mps", b"small", QoS::AtLeastOnce, 2, false)
        .await;
    let p = sub.next_publish().await;
    assert_eq!(&p.payload[..], b"small");
    assert_eq!(
        server
            .broker()
            .metrics()
            .dropped_too_large
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_payload_with_format_indicator_gets_0x99() {
    let server = common::start(common::test_config()).await;
    let (mut c, _) = RawClient::connect(server.local_addr(), V5, "pfi", true, |_| {}).await;
    let mut p = publish_packet("t", b"\xff\xfe", QoS::AtLeastOnce, 4, false);
    if let Packet::Publish(p) = &mut p {
        p.properties.payload_format_indicator = Some(1);
    }
    c.send(&p).await;
    assert!(
        matches!(c.next().await, Packet::PubAck(a) if a.reason == ReasonCode::PAYLOAD_FORMAT_INVALID)
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_refuse_v5_publishers_and_hold_back_v3_ones() {
    let mut config = common::test_config();
    config.limits.max_queued_messages = 2;
    config.limits.stalled_subscriber_ms = 60_000;
    let server = common::start(config).await;
    let addr = server.local_addr();
    // A connected subscriber that takes one message at a time and acknowledges nothing yet:
    // it is draining (not stalled), so its full queue holds its publishers back.
    let window = |c: &mut Connect| c.properties.receive_maximum = Some(1);
    let (mut sub, _) = RawClient::connect(addr, V5, "slow", true, window).await;
    sub.subscribe(1, "fq", opts(QoS::AtLeastOnce)).await;
    let (mut p5, _) = RawClient::connect(addr, V5, "p5", true, |_| {}).await;
    for id in 1..=3 {
        p5.publish("fq", b"m", QoS::AtLeastOnce, id, false).await;
        assert!(matches!(p5.next().await, Packet::PubAck(a) if a.reason == ReasonCode::SUCCESS));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One in flight, two queued: the queue is full.
    p5.publish("fq", b"m", QoS::AtLeastOnce, 4, false).await;
    assert!(matches!(p5.next().await, Packet::PubAck(a) if a.reason == ReasonCode::QUOTA_EXCEEDED));
    // A 3.1.1 publisher is held back: no PUBACK until the subscriber drains its queue.
    let (mut p3, _) = RawClient::connect(addr, V311, "p3", true, |_| {}).await;
    p3.publish("fq", b"held", QoS::AtLeastOnce, 7, false).await;
    p3.expect_silence(Duration::from_millis(500)).await;
    for _ in 0..4 {
        let p = sub.next_publish().await;
        sub.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    }
    assert!(matches!(p3.next().await, Packet::PubAck(a) if a.packet_id == 7));
    let metrics = server.broker().metrics();
    assert_eq!(
        metrics
            .queue_full_refusals
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_options_no_local_retain_as_published_retain_handling() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let (mut c, _) = RawClient::connect(addr, V5, "opts", true, |_| {}).await;
    let nl = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    c.subscribe(1, "nl", nl).await;
    c.publish("nl", b"mine", QoS::AtMostOnce, 0, false).await;
    c.expect_silence(Duration::from_millis(300)).await;

    let (mut other, _) = RawClient::connect(addr, V5, "other", true, |_| {}).await;
    other.publish("rap", b"r", QoS::AtMostOnce, 0, true).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Retain Handling 2: no retained message on subscribe.
    let never = SubscriptionOptions {
        retain_handling: RetainHandling::Never,
        ..opts(QoS::AtMostOnce)
    };
    c.subscribe(2, "rap", never).await;
    c.expect_silence(Duration::from_millis(300)).await;
    // Retain Handling 1: only when the subscription is new — so not now (it exists).
    let on_new = SubscriptionOptions {
        retain_handling: RetainHandling::OnNewSubscribe,
        ..opts(QoS::AtMostOnce)
    };
    c.subscribe(3, "rap", on_new).await;
    c.expect_silence(Duration::from_millis(300)).await;
    // Retain Handling 0: sent, with RETAIN set.
    c.subscribe(4, "rap", opts(QoS::AtMostOnce)).await;
    assert!(c.next_publish().await.retain);
    // Live messages: RETAIN cleared unless Retain As Published.
    other.publish("rap", b"r2", QoS::AtMostOnce, 0, true).await;
    assert!(!c.next_publish().await.retain);
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..opts(QoS::AtMostOnce)
    };
    c.subscribe(5, "rap", rap).await;
    let _retained_again = c.next_publish().await;
    other.publish("rap", b"r3", QoS::AtMostOnce, 0, true).await;
    assert!(c.next_publish().await.retain);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_give_one_copy_with_every_identifier() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let (mut c, _) = RawClient::connect(addr, V5, "overlap", true, |_| {}).await;
    c.subscribe_with(1, "ov/+", opts(QoS::AtLeastOnce), Some(1))
        .await;
    c.subscribe_with(2, "ov/#", opts(QoS::ExactlyOnce), Some(2))
        .await;
    let (mut p, _) = RawClient::connect(addr, V311, "ovp", true, |_| {}).await;
    p.publish("ov/x", b"o", QoS::ExactlyOnce, 1, false).await;
    let got = c.next_publish().await;
    assert_eq!(got.qos, QoS::ExactlyOnce);
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, [1, 2]);
    c.expect_silence(Duration::from_millis(300)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_is_honoured_and_decremented() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(300);
    let (mut sub, _) = RawClient::connect(addr, V5, "exp", true, persistent).await;
    sub.subscribe(1, "exp", opts(QoS::AtLeastOnce)).await;
    drop(sub);
    let (mut p, _) = RawClient::connect(addr, V5, "exp-pub", true, |_| {}).await;
    for (payload, secs) in [(&b"short"[..], 1u32), (&b"long"[..], 60)] {
        let mut pk = publish_packet("exp", b"", QoS::AtLeastOnce, secs as u16, true);
        if let Packet::Publish(pp) = &mut pk {
            pp.payload = Bytes::copy_from_slice(payload);
            pp.properties.message_expiry_interval = Some(secs);
        }
        p.send(&pk).await;
        p.next().await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut sub, _) = RawClient::connect(addr, V5, "exp", false, persistent).await;
    let got = sub.next_publish().await;
    assert_eq!(&got.payload[..], b"long");
    let left = got
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!((57..=59).contains(&left), "decremented: {left}");
    sub.send(&Packet::PubAck(PubAck::new(got.packet_id))).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    // The expired retained message is not delivered on subscribe either.
    let (mut late, _) = RawClient::connect(addr, V5, "late", true, |_| {}).await;
    late.subscribe(1, "exp", opts(QoS::AtMostOnce)).await;
    assert_eq!(&late.next_publish().await.payload[..], b"long");
    late.expect_silence(Duration::from_millis(300)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_and_clean_start() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let short = |c: &mut Connect| c.properties.session_expiry_interval = Some(1);
    let (mut c, ack) = RawClient::connect(addr, V5, "se", true, short).await;
    assert!(!ack.session_present);
    c.subscribe(1, "se", opts(QoS::AtLeastOnce)).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, ack) = RawClient::connect(addr, V5, "se", false, short).await;
    assert!(
        ack.session_present,
        "within its expiry the session is resumed"
    );
    drop(c);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_c, ack) = RawClient::connect(addr, V5, "se", false, short).await;
    assert!(!ack.session_present, "expired sessions are removed");
    // Session expiry changed at DISCONNECT: 0 → non-zero is a protocol error.
    let (mut c, _) = RawClient::connect(addr, V5, "se0", true, |_| {}).await;
    let mut d = Disconnect::new(ReasonCode::SUCCESS);
    d.properties.session_expiry_interval = Some(10);
    c.send(&Packet::Disconnect(d)).await;
    c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
    // Non-zero → 0 at DISCONNECT ends the session.
    let (mut c, _) = RawClient::connect(addr, V5, "se1", true, |c| {
        c.properties.session_expiry_interval = Some(100);
    })
    .await;
    let mut d = Disconnect::new(ReasonCode::SUCCESS);
    d.properties.session_expiry_interval = Some(0);
    c.send(&Packet::Disconnect(d)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_c, ack) = RawClient::connect(addr, V5, "se1", false, |_| {}).await;
    assert!(!ack.session_present);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_sends_0x8e_and_hands_the_session_over() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(300);
    let (mut first, _) = RawClient::connect(addr, V5, "dup-id", true, persistent).await;
    first.subscribe(1, "to", opts(QoS::AtLeastOnce)).await;
    let (mut second, ack) = RawClient::connect(addr, V5, "dup-id", false, persistent).await;
    assert!(ack.session_present);
    first
        .expect_disconnect(ReasonCode::SESSION_TAKEN_OVER)
        .await;
    let (mut p, _) = RawClient::connect(addr, V311, "to-pub", true, |_| {}).await;
    p.publish("to", b"after takeover", QoS::AtLeastOnce, 1, false)
        .await;
    assert_eq!(&second.next_publish().await.payload[..], b"after takeover");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_normal_abnormal_0x04_and_delay() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let (mut watch, _) = RawClient::connect(addr, V5, "will-watch", true, |_| {}).await;
    watch.subscribe(1, "will/#", opts(QoS::AtLeastOnce)).await;
    let with_will = |topic: &'static str, delay: Option<u32>| {
        move |c: &mut Connect| {
            c.will = Some(LastWill {
                topic: topic.into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties {
                    will_delay_interval: delay,
                    ..Default::default()
                },
            });
            c.properties.session_expiry_interval = Some(60);
        }
    };
    // Socket closed without DISCONNECT → will.
    let (c, _) = RawClient::connect(addr, V5, "w1", true, with_will("will/1", None)).await;
    drop(c);
    let p = watch.next_publish().await;
    assert_eq!(&*p.topic, "will/1");
    watch.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    // Normal DISCONNECT → no will; DISCONNECT 0x04 → will.
    let (mut c, _) = RawClient::connect(addr, V5, "w2", true, with_will("will/2", None)).await;
    c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)))
        .await;
    watch.expect_silence(Duration::from_millis(300)).await;
    let (mut c, _) = RawClient::connect(addr, V5, "w3", true, with_will("will/3", None)).await;
    c.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
    )))
    .await;
    let p = watch.next_publish().await;
    assert_eq!(&*p.topic, "will/3");
    watch.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    // Will Delay 1 s: cancelled by a reconnect within it, published after it otherwise.
    let (c, _) = RawClient::connect(addr, V5, "w4", true, with_will("will/4", Some(1))).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, _) = RawClient::connect(addr, V5, "w4", false, |c| {
        c.properties.session_expiry_interval = Some(60);
    })
    .await;
    watch.expect_silence(Duration::from_millis(1500)).await;
    drop(c);
    let (c, _) = RawClient::connect(addr, V5, "w5", true, with_will("will/5", Some(1))).await;
    let closed = std::time::Instant::now();
    drop(c);
    let p = watch.next_publish().await;
    assert_eq!(&*p.topic, "will/5");
    assert!(
        closed.elapsed() >= Duration::from_millis(900),
        "{:?}",
        closed.elapsed()
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_are_published_and_not_matched_by_wildcards() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let (mut all, _) = RawClient::connect(addr, V311, "all", true, |_| {}).await;
    all.subscribe(1, "#", opts(QoS::AtMostOnce)).await;
    all.subscribe(2, "+/broker/#", opts(QoS::AtMostOnce)).await;
    let (mut sys, _) = RawClient::connect(addr, V311, "sys", true, |_| {}).await;
    sys.subscribe(1, "$SYS/broker/clients/connected", opts(QoS::AtMostOnce))
        .await;
    // The retained value may predate these clients; the next one (every second) counts them.
    loop {
        let p = sys.next_publish().await;
        assert_eq!(&*p.topic, "$SYS/broker/clients/connected");
        let n: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        if n >= 2 {
            break;
        }
    }
    all.expect_silence(Duration::from_millis(1500)).await;
    // Clients may not publish to $ topics.
    let (mut c, _) = RawClient::connect(addr, V5, "sysw", true, |_| {}).await;
    c.publish("$SYS/broker/version", b"fake", QoS::AtLeastOnce, 1, false)
        .await;
    assert!(matches!(c.next().await, Packet::PubAck(a) if a.reason == ReasonCode::NOT_AUTHORIZED));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_prefer_connected_members_and_redispatch() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(300);
    let (mut a, _) = RawClient::connect(addr, V5, "sh-a", true, persistent).await;
    let (mut b, _) = RawClient::connect(addr, V5, "sh-b", true, persistent).await;
    a.subscribe(1, "$share/g/sh/#", opts(QoS::AtLeastOnce))
        .await;
    b.subscribe(1, "$share/g/sh/#", opts(QoS::AtLeastOnce))
        .await;
    let (mut p, _) = RawClient::connect(addr, V311, "sh-p", true, |_| {}).await;
    for i in 1..=4u16 {
        p.publish("sh/x", b"m", QoS::AtLeastOnce, i, false).await;
        p.next().await;
    }
    // Each message goes to exactly one member, alternating.
    let mut got_a = 0;
    while let Recv::Packet(Packet::Publish(m)) = a.recv_within(Duration::from_millis(300)).await {
        a.send(&Packet::PubAck(PubAck::new(m.packet_id))).await;
        got_a += 1;
    }
    let mut got_b = 0;
    while let Recv::Packet(Packet::Publish(m)) = b.recv_within(Duration::from_millis(300)).await {
        b.send(&Packet::PubAck(PubAck::new(m.packet_id))).await;
        got_b += 1;
    }
    assert_eq!((got_a, got_b), (2, 2));
    // With b offline, every message goes to the connected member a.
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 5..=8u16 {
        p.publish("sh/x", b"n", QoS::AtLeastOnce, i, false).await;
        p.next().await;
    }
    // a receives all four; it acknowledges none and leaves: they are re-dispatched to b.
    for _ in 0..4 {
        a.next_publish().await;
    }
    let (mut b, _) = RawClient::connect(addr, V5, "sh-b", false, persistent).await;
    drop(a);
    let mut redispatched = 0;
    while let Recv::Packet(Packet::Publish(m)) = b.recv_within(Duration::from_millis(500)).await {
        assert_eq!(&m.payload[..], b"n");
        b.send(&Packet::PubAck(PubAck::new(m.packet_id))).await;
        redispatched += 1;
    }
    assert_eq!(redispatched, 4);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_sends_0x8b() {
    let server = common::start(common::test_config()).await;
    let (mut c, _) = RawClient::connect(server.local_addr(), V5, "bye", true, |_| {}).await;
    server.shutdown(Duration::from_secs(2)).await;
    c.expect_disconnect(ReasonCode::SERVER_SHUTTING_DOWN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_connect_timeout() {
    let mut config = common::test_config();
    config.limits.max_connections = 1;
    config.mqtt.connect_timeout_secs = 1;
    let server = common::start(config).await;
    let addr = server.local_addr();
    let (_first, _) = RawClient::connect(addr, V5, "only", true, |_| {}).await;
    let mut second = RawClient::tcp(addr, V5).await;
    assert_eq!(
        second.handshake("second", true, |_| {}).await.code,
        ReasonCode::SERVER_BUSY
    );
    let mut second = RawClient::tcp(addr, V311).await;
    assert_eq!(
        second.handshake("second", true, |_| {}).await.code,
        ReasonCode(3)
    );
    // A connection that never sends CONNECT is closed after the connect timeout.
    let mut idle = RawClient::tcp(addr, V311).await;
    let started = std::time::Instant::now();
    assert_eq!(idle.recv_within(Duration::from_secs(3)).await, Recv::Closed);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_stalls_nobody() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    // `stuck` subscribes and then never reads its socket.
    let (mut stuck, _) = RawClient::connect(addr, V311, "stuck", true, |_| {}).await;
    stuck.subscribe(1, "flood", opts(QoS::AtMostOnce)).await;
    let (mut fast, _) = RawClient::connect(addr, V311, "fast", true, |_| {}).await;
    fast.subscribe(1, "flood", opts(QoS::AtMostOnce)).await;
    let (mut publ, _) = RawClient::connect(addr, V311, "flooder", true, |_| {}).await;
    static PAYLOAD: [u8; 4096] = [0x5A; 4096];
    let total = 3000; // 12 MB: far beyond the socket buffers and the write-buffer bound
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < total {
            match fast.recv_within(Duration::from_secs(10)).await {
                Recv::Packet(Packet::Publish(_)) => got += 1,
                other => panic!("fast subscriber after {got}: {other:?}"),
            }
        }
        got
    });
    for _ in 0..total {
        publ.publish("flood", &PAYLOAD, QoS::AtMostOnce, 0, false)
            .await;
    }
    // A QoS 0 stream: `fast` may lose messages only if its own queue overflowed, which it does
    // not while it keeps reading. The publisher is never blocked by `stuck`.
    let got = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("no stall")
        .unwrap();
    assert_eq!(got, total);
    let dropped = server
        .broker()
        .metrics()
        .dropped_qos0
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        dropped > 0,
        "the stuck subscriber's overflow is dropped and counted"
    );
    drop(stuck);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_waits_for_a_slow_subscriber_that_reads() {
    // A publisher much faster than its (reading) subscriber: with a tiny queue, QoS 0 messages
    // pause the publisher instead of being dropped, so every one arrives, in order.
    let mut config = common::test_config();
    config.limits.max_queued_messages = 8;
    let server = common::start(config).await;
    let addr = server.local_addr();
    let (mut slow, _) = RawClient::connect(addr, V311, "slow", true, |_| {}).await;
    slow.subscribe(1, "paced", opts(QoS::AtMostOnce)).await;
    let (mut publ, _) = RawClient::connect(addr, V5, "fast-publisher", true, |_| {}).await;
    let total = 400u32;
    let reader = tokio::spawn(async move {
        let mut next = 0u32;
        while next < total {
            match slow.recv_within(Duration::from_secs(10)).await {
                Recv::Packet(Packet::Publish(p)) => {
                    assert_eq!(
                        p.payload.as_ref(),
                        next.to_be_bytes(),
                        "in order, none lost"
                    );
                    next += 1;
                    if next.is_multiple_of(50) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                other => panic!("slow subscriber after {next}: {other:?}"),
            }
        }
    });
    for i in 0..total {
        publ.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "paced".into(),
            packet_id: 0,
            properties: Default::default(),
            payload: Bytes::copy_from_slice(&i.to_be_bytes()),
        }))
        .await;
    }
    tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("every message arrives")
        .unwrap();
    let m = server.broker().metrics();
    assert_eq!(m.dropped_qos0.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(
        m.qos0_paused.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the publisher was paused, not the messages dropped"
    );
    // The publisher was slowed down, never disconnected.
    publ.send(&Packet::PingReq).await;
    assert_eq!(publ.next().await, Packet::PingResp);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_publishes_the_old_will_unless_delayed_and_resumed() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let (mut watch, _) = RawClient::connect(addr, V5, "tw-watch", true, |_| {}).await;
    watch.subscribe(1, "tw/#", opts(QoS::AtMostOnce)).await;
    let will = |delay: Option<u32>| {
        move |c: &mut Connect| {
            c.properties.session_expiry_interval = Some(60);
            c.will = Some(LastWill {
                topic: "tw/will".into(),
                payload: Bytes::from_static(b"w"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: WillProperties {
                    will_delay_interval: delay,
                    ..Default::default()
                },
            });
        }
    };
    // No delay: the old connection's will is published at takeover.
    let (_a, _) = RawClient::connect(addr, V5, "tw", true, will(None)).await;
    let (_b, _) = RawClient::connect(addr, V5, "tw", false, will(Some(30))).await;
    assert_eq!(&*watch.next_publish().await.topic, "tw/will");
    // With a delay and a resuming connection: not published [MQTT-3.1.3-9].
    let (_c, _) = RawClient::connect(addr, V5, "tw", false, |c| {
        c.properties.session_expiry_interval = Some(60);
    })
    .await;
    watch.expect_silence(Duration::from_millis(500)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_depth_limit() {
    let mut config = common::test_config();
    config.limits.max_topic_levels = 3;
    let server = common::start(config).await;
    let (mut c, _) = RawClient::connect(server.local_addr(), V5, "deep", true, |_| {}).await;
    let ack = c.subscribe(1, "a/b/c/d", opts(QoS::AtMostOnce)).await;
    assert_eq!(ack.reason_codes, [ReasonCode::TOPIC_FILTER_INVALID]);
    c.publish("a/b/c/d", b"x", QoS::AtLeastOnce, 1, false).await;
    assert!(
        matches!(c.next().await, Packet::PubAck(a) if a.reason == ReasonCode::TOPIC_NAME_INVALID)
    );
    let (mut c3, _) = RawClient::connect(server.local_addr(), V311, "deep3", true, |_| {}).await;
    let ack = c3.subscribe(1, "a/b/c/d", opts(QoS::AtMostOnce)).await;
    assert_eq!(ack.reason_codes, [ReasonCode(0x80)]);
    server.shutdown(Duration::from_secs(1)).await;
}

/// A burst of QoS 1 and 2 messages read in one go is acknowledged pipelined (many share one
/// fdatasync): the acknowledgements still leave in PUBLISH order, including the immediate ones
/// (a refused `$` topic, a re-sent QoS 2 id still waiting for its log record), and each
/// persistent subscriber gets every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_acknowledgements_keep_publish_order() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = RawClient::connect(addr, V5, "pipe-sub", true, persistent).await;
    sub.subscribe(1, "pipe/#", opts(QoS::ExactlyOnce)).await;
    let (mut publ, _) = RawClient::connect(addr, V5, "pipe-pub", true, persistent).await;

    let packet = |topic: &str, seq: u32, qos: QoS, packet_id: u16, dup: bool| {
        Packet::Publish(Publish {
            dup,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            properties: Default::default(),
            payload: Bytes::from(seq.to_be_bytes().to_vec()),
        })
    };
    // (packet id, expected acknowledgement, expected reason)
    let mut expected: Vec<(u16, &str, ReasonCode)> = Vec::new();
    let mut burst = bytes::BytesMut::new();
    let mut sent_q1 = Vec::new();
    let mut sent_q2 = Vec::new();
    for i in 0..60u32 {
        let pid = i as u16 + 1;
        let (topic, qos) = if i % 3 == 2 {
            ("pipe/two", QoS::ExactlyOnce)
        } else {
            ("pipe/one", QoS::AtLeastOnce)
        };
        encode(&packet(topic, i, qos, pid, false), V5, &mut burst).unwrap();
        let kind = if qos == QoS::AtLeastOnce {
            "puback"
        } else {
            "pubrec"
        };
        expected.push((pid, kind, ReasonCode::SUCCESS));
        if qos == QoS::AtLeastOnce {
            sent_q1.push(i);
        } else {
            sent_q2.push(i);
        }
        match i {
            // A re-send of a QoS 2 id whose record may not be durable yet: acknowledged again,
            // after the first, and never routed twice.
            20 => {
                encode(&packet(topic, i, qos, pid, true), V5, &mut burst).unwrap();
                expected.push((pid, "pubrec", ReasonCode::SUCCESS));
            }
            // Refused at once, yet acknowledged in its place.
            30 => {
                encode(
                    &packet("$reserved", 0, QoS::AtLeastOnce, 1000, false),
                    V5,
                    &mut burst,
                )
                .unwrap();
                expected.push((1000, "puback", ReasonCode::NOT_AUTHORIZED));
            }
            // Nobody subscribes: nothing logged, still in order.
            40 => {
                encode(
                    &packet("elsewhere", 0, QoS::AtLeastOnce, 1001, false),
                    V5,
                    &mut burst,
                )
                .unwrap();
                expected.push((1001, "puback", ReasonCode::NO_MATCHING_SUBSCRIBERS));
            }
            _ => {}
        }
    }
    publ.send_bytes(&burst).await;
    for (pid, kind, reason) in &expected {
        match publ.next().await {
            Packet::PubAck(a) if *kind == "puback" => {
                assert_eq!(
                    (a.packet_id, a.reason),
                    (*pid, *reason),
                    "PUBACK out of order"
                )
            }
            Packet::PubRec(a) if *kind == "pubrec" => {
                assert_eq!(
                    (a.packet_id, a.reason),
                    (*pid, *reason),
                    "PUBREC out of order"
                );
            }
            other => panic!("expected {kind} {pid}, got {other:?}"),
        }
    }
    for pid in sent_q2.iter().map(|i| *i as u16 + 1) {
        publ.send(&Packet::PubRel(PubAck::new(pid))).await;
        assert!(matches!(publ.next().await, Packet::PubComp(a) if a.packet_id == pid));
    }

    let (mut got_q1, mut got_q2) = (Vec::new(), Vec::new());
    let mut released = 0;
    while got_q1.len() + got_q2.len() < 60 || released < got_q2.len() {
        let p = match sub.next().await {
            Packet::Publish(p) => p,
            Packet::PubRel(r) => {
                released += 1;
                sub.send(&Packet::PubComp(PubAck::new(r.packet_id))).await;
                continue;
            }
            other => panic!("subscriber got {other:?}"),
        };
        let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
        match p.qos {
            QoS::AtLeastOnce => {
                got_q1.push(seq);
                sub.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
            }
            QoS::ExactlyOnce => {
                got_q2.push(seq);
                sub.send(&Packet::PubRec(PubAck::new(p.packet_id))).await;
            }
            QoS::AtMostOnce => panic!("downgraded: {p:?}"),
        }
    }
    assert_eq!(got_q1, sent_q1, "QoS 1 order");
    assert_eq!(got_q2, sent_q2, "QoS 2 order, no duplicate");
    sub.expect_silence(Duration::from_millis(300)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// `limits.max_retained_messages` counts the clients' retained messages only: the broker's own
/// `$SYS` topics take none of it. Past it a new topic is not retained (the message is still
/// delivered); replacing one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_limit_counts_client_topics_only() {
    let mut config = common::test_config();
    config.limits.max_retained_messages = 3;
    let server = common::start(config).await;
    let addr = server.local_addr();
    // `$SYS` is published every second: let it fill the retained store first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut publ, _) = RawClient::connect(addr, V5, "ret-pub", true, |_| {}).await;
    for (pid, topic) in [
        (1, "lim/1"),
        (2, "lim/2"),
        (3, "lim/3"),
        (4, "lim/4"),
        (5, "lim/1"),
    ] {
        publ.publish(topic, b"v", QoS::AtLeastOnce, pid, true).await;
        assert!(matches!(publ.next().await, Packet::PubAck(a) if a.packet_id == pid));
    }
    let (mut sub, _) = RawClient::connect(addr, V5, "ret-sub", true, |_| {}).await;
    sub.subscribe(1, "lim/#", opts(QoS::AtMostOnce)).await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        let p = sub.next_publish().await;
        assert!(p.retain);
        topics.push(p.topic.to_string());
    }
    topics.sort();
    assert_eq!(topics, ["lim/1", "lim/2", "lim/3"]);
    sub.expect_silence(Duration::from_millis(300)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// A connection idle for two seconds with nothing pending parks (gives its buffers back and
/// waits in a small future): deliveries, pings, its keep-alive deadline and the broker's
/// shutdown still reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_still_gets_deliveries_pings_keep_alive_and_shutdown() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let park = Duration::from_millis(2600);
    let (mut sub, _) = RawClient::connect(addr, V5, "parked-sub", true, |_| {}).await;
    sub.subscribe(1, "park/#", opts(QoS::AtLeastOnce)).await;
    // Keep-alive 2 s: the deadline (3 s) comes while the connection is parked.
    let (mut lapsing, _) =
        RawClient::connect(addr, V5, "parked-lapse", true, |c| c.keep_alive = 2).await;
    tokio::time::sleep(park).await;
    let (mut publisher, _) = RawClient::connect(addr, V5, "parked-pub", true, |_| {}).await;
    publisher
        .publish("park/a", b"woken", QoS::AtLeastOnce, 1, false)
        .await;
    let m = sub.next_publish().await;
    assert_eq!(&m.payload[..], b"woken");
    sub.send(&Packet::PubAck(PubAck::new(m.packet_id))).await;
    lapsing
        .expect_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT)
        .await;
    tokio::time::sleep(park).await;
    sub.send(&Packet::PingReq).await;
    assert_eq!(sub.next().await, Packet::PingResp);
    tokio::time::sleep(park).await;
    server.shutdown(Duration::from_secs(2)).await;
    sub.expect_disconnect(ReasonCode::SERVER_SHUTTING_DOWN)
        .await;
}
