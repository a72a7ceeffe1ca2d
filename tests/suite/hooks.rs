//! The hooks features plug into (issue "Cut the seams"): an authenticator refusing a CONNECT, an
//! authorizer refusing PUBLISH and SUBSCRIBE and swapped at run time, and the event sink seeing
//! clients, subscriptions and only durable, visible messages.

use std::sync::Arc;
use std::time::Duration;

use crate::common;
use common::raw::RawClient;
use keelmq::codec::*;
use keelmq::hooks::{AllowAll, AuthFuture, Authenticator, Authorizer, Client, Event, Identity};
use keelmq::protocol::Refusal;
use keelmq::transport::ConnInfo;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Refuses the user "mallory"; "root" is a superuser.
struct Users;

impl Authenticator for Users {
    fn authenticate<'a>(&'a self, _info: &'a ConnInfo, connect: &'a Connect) -> AuthFuture<'a> {
        let username = connect.username.clone();
        Box::pin(async move {
            match username.as_deref() {
                Some("mallory") => Err(Refusal::BadCredentials),
                user => Ok(Identity {
                    username: user.map(str::to_string),
                    superuser: user == Some("root"),
                    ..Identity::default()
                }),
            }
        })
    }
}

/// Nobody but a superuser touches `secret/#`.
struct NoSecrets;

impl Authorizer for NoSecrets {
    fn may_publish(&self, _: &Client<'_>, topic: &str, _: QoS, _: bool) -> bool {
        !topic.starts_with("secret/")
    }

    fn may_subscribe(&self, _: &Client<'_>, filter: &str, _: QoS) -> bool {
        !filter.starts_with("secret/") && filter != "#"
    }
}

fn user(name: &'static str) -> impl FnOnce(&mut Connect) {
    move |c: &mut Connect| c.username = Some(name.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_authorization_and_events() {
    let server = common::start(common::test_config()).await;
    let addr = server.local_addr();
    let broker = server.broker().clone();
    broker.set_authenticator(Arc::new(Users));
    broker.set_authorizer(Arc::new(NoSecrets));
    let mut events = broker.events(64);
    // Authentication: refused with the authenticator's reason, in each version's form.
    let mut c = RawClient::tcp(addr, V5).await;
    let ack = c.handshake("m", true, user("mallory")).await;
    assert_eq!(ack.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let mut c = RawClient::tcp(addr, V311).await;
    assert_eq!(
        c.handshake("m", true, user("mallory")).await.code,
        ReasonCode(4)
    );
    // Authorization of SUBSCRIBE: per filter.
    let (mut alice, _) = RawClient::connect(addr, V5, "alice", true, user("alice")).await;
    alice
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![
                ("open/#".into(), SubscriptionOptions::qos(QoS::AtLeastOnce)),
                (
                    "secret/#".into(),
                    SubscriptionOptions::qos(QoS::AtLeastOnce),
                ),
            ],
        }))
        .await;
    match alice.next().await {
        Packet::SubAck(a) => assert_eq!(
            a.reason_codes,
            vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED]
        ),
        other => panic!("{other:?}"),
    }
    // Authorization of PUBLISH: 0x87 for 5.0; a superuser may.
    let (mut bob, _) = RawClient::connect(addr, V5, "bob", true, user("bob")).await;
    bob.publish("secret/x", b"no", QoS::AtLeastOnce, 1, false)
        .await;
    assert!(
        matches!(bob.next().await, Packet::PubAck(a) if a.reason == ReasonCode::NOT_AUTHORIZED)
    );
    bob.publish("open/x", b"yes", QoS::AtLeastOnce, 2, false)
        .await;
    assert!(matches!(bob.next().await, Packet::PubAck(a) if a.reason == ReasonCode::SUCCESS));
    assert_eq!(&alice.next_publish().await.payload[..], b"yes");
    let (mut root, _) = RawClient::connect(addr, V5, "root", true, user("root")).await;
    root.publish("secret/x", b"root", QoS::AtLeastOnce, 1, false)
        .await;
    assert!(matches!(root.next().await, Packet::PubAck(a) if a.reason.0 < 0x80));
    // Swapped at run time: everything goes through.
    broker.set_authorizer(Arc::new(AllowAll));
    bob.publish("secret/x", b"now", QoS::AtLeastOnce, 3, false)
        .await;
    assert!(matches!(bob.next().await, Packet::PubAck(a) if a.reason.0 < 0x80));
    // The events, in order for alice; only messages that were durable and visible.
    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        seen.push(e);
    }
    let connected = seen
        .iter()
        .filter(|e| matches!(e, Event::Connected { .. }))
        .count();
    assert_eq!(connected, 3, "alice, bob, root: {seen:?}");
    assert!(seen.iter().any(
        |e| matches!(e, Event::Subscribed { client_id, filter, .. } if &**client_id == "alice" && filter == "open/#")
    ));
    let published: Vec<&[u8]> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Published { message, .. } => Some(&message.payload[..]),
            _ => None,
        })
        .collect();
    assert_eq!(published, vec![&b"yes"[..], b"root", b"now"]);
    let refused = broker.metrics_snapshot().not_authorized;
    assert_eq!(refused, 2, "one SUBSCRIBE filter, one PUBLISH");
    server.shutdown(Duration::from_secs(1)).await;
}
