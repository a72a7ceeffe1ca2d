//! The in-process client (issue "Cut the seams"): broker code publishes to network clients and
//! consumes what they publish through a persistent session of its own, with the durability
//! contract of a network client across a restart: an acknowledged delivery never comes back,
//! an unacknowledged one does.

use std::time::Duration;

use crate::common;
use common::raw::RawClient;
use keelmq::broker::local::{LocalError, LocalPublish, Published};
use keelmq::codec::*;
use keelmq::hooks::Event;

const V5: ProtocolVersion = ProtocolVersion::V5;

fn persistent(c: &mut Connect) {
    c.properties.session_expiry_interval = Some(3600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_client_publishes_and_consumes_durably() {
    let config = common::test_config();
    let server = common::start(config.clone()).await;
    let (addr, broker) = (server.local_addr(), server.broker().clone());
    let mut events = broker.events(1024);
    let (mut net_sub, _) = RawClient::connect(addr, V5, "net-sub", true, persistent).await;
    net_sub
        .subscribe(1, "to-net/#", SubscriptionOptions::qos(QoS::ExactlyOnce))
        .await;

    // Publishing: returns with what the PUBACK would say, once durable and visible.
    let rules = broker.local_client("rules");
    let sent = rules
        .publish(LocalPublish::new(
            "to-net/1",
            &b"hello"[..],
            QoS::ExactlyOnce,
        ))
        .await;
    let sent = sent.expect("published");
    assert!(sent.message_id > 0, "a stored message has an id");
    let expected = Published {
        message_id: sent.message_id,
        delivered: 1,
        retained_refused: false,
    };
    assert_eq!(sent, expected);
    let p = net_sub.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("to-net/1", &b"hello"[..])
    );
    for bad in ["$SYS/x", "a/+", "a/#", ""] {
        let refused = rules.publish(LocalPublish::new(bad, &b""[..], QoS::AtMostOnce));
        assert_eq!(refused.await, Err(LocalError::InvalidTopic), "{bad:?}");
    }

    // Consuming: a persistent session of its own.
    let (mut session, present) = rules.session(false, 3600).await.unwrap();
    assert!(!present);
    let granted = session
        .subscribe(vec![(
            "from-net/#".into(),
            SubscriptionOptions::qos(QoS::ExactlyOnce),
        )])
        .await
        .unwrap();
    assert_eq!(granted, vec![ReasonCode(2)]);
    let (mut net_pub, _) = RawClient::connect(addr, V5, "net-pub", true, |_| {}).await;
    net_pub
        .publish("from-net/a", b"p1", QoS::ExactlyOnce, 1, false)
        .await;
    assert!(matches!(net_pub.next().await, Packet::PubRec(_)));
    net_pub
        .publish("from-net/b", b"p2", QoS::AtLeastOnce, 2, false)
        .await;
    assert!(matches!(net_pub.next().await, Packet::PubAck(_)));
    let first = session.next().await.unwrap();
    assert_eq!(&first.delivery.message.payload[..], b"p1");
    assert_eq!(first.delivery.qos, QoS::ExactlyOnce);
    session.ack(&first).await.unwrap();
    let second = session.next().await.unwrap();
    assert_eq!(&second.delivery.message.payload[..], b"p2");
    // `second` is not acknowledged: the session keeps it in flight across the restart.
    session.close().await;

    let mut delivered_to = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let Event::Delivered { client_id, .. } = event {
            delivered_to.push(client_id.to_string());
        }
    }
    assert_eq!(delivered_to, ["net-sub", "rules", "rules"]);

    // Every handle on the broker goes before the restart (they hold its data directory).
    drop((rules, broker, events));
    assert!(!server.shutdown(Duration::from_secs(5)).await);
    let server = common::start(config).await;
    let rules = server.broker().local_client("rules");
    let (mut session, present) = rules.session(false, 3600).await.unwrap();
    assert!(present, "the session survives the restart");
    let again = session.next().await.unwrap();
    assert_eq!(&again.delivery.message.payload[..], b"p2");
    assert!(again.dup, "re-sent in flight");
    session.ack(&again).await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(300), session.next()).await;
    assert!(
        nothing.is_err(),
        "the acknowledged QoS 2 message is not delivered twice"
    );
    session.close().await;
    assert!(!server.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_session_is_taken_over_only_in_process() {
    let server = common::start(common::test_config()).await;
    let (addr, broker) = (server.local_addr(), server.broker().clone());
    let (mut session, _) = broker
        .local_client("shared-id")
        .session(true, 0)
        .await
        .unwrap();
    let waiting = tokio::spawn(async move { session.next().await.map(|_| ()) });
    // The broker's own session: no network client may take it, even without authentication.
    let mut net = RawClient::tcp(addr, V5).await;
    let ack = net.handshake("shared-id", false, |_| {}).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED);
    let (_again, _) = broker
        .local_client("shared-id")
        .session(false, 0)
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), waiting).await;
    assert_eq!(result.unwrap().unwrap(), Err(LocalError::TakenOver));
    assert!(!server.shutdown(Duration::from_secs(5)).await);
}
