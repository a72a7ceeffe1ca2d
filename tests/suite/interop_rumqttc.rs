//! Interoperability with the `rumqttc` client crate, MQTT 3.1.1 and 5.0: each QoS in each
//! direction, retained messages, wills, session resume with queued messages, takeover and
//! shared subscriptions, against a real broker on a loopback port.

use crate::common;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

pub(crate) mod v311 {
    use super::*;
    use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, Publish, QoS};

    /// A connected client whose incoming PUBLISH packets arrive on a channel; the session
    /// present flag of each CONNACK arrives on another.
    pub struct Client {
        pub client: AsyncClient,
        pub publishes: mpsc::UnboundedReceiver<Publish>,
        pub connacks: mpsc::UnboundedReceiver<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub async fn connect(port: u16, id: &str, clean: bool, will: Option<LastWill>) -> Client {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some(w) = will {
            opts.set_last_will(w);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (ptx, publishes) = mpsc::unbounded_channel();
        let (ctx, mut connacks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = ptx.send(p);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        let _ = ctx.send(a.session_present);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let present = timeout(WAIT, connacks.recv())
            .await
            .expect("CONNACK")
            .expect("CONNACK");
        let mut c = Client {
            client,
            publishes,
            connacks,
            task,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(present).unwrap();
        c.connacks = rx;
        c
    }

    pub async fn next(c: &mut Client) -> Publish {
        timeout(WAIT, c.publishes.recv())
            .await
            .expect("a PUBLISH in time")
            .expect("open")
    }

    pub async fn subscribe(c: &Client, filter: &str, qos: QoS) {
        c.client.subscribe(filter, qos).await.unwrap();
        // SUBACK ordering: give the broker a moment to install the subscription.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, LastWill, Packet, Publish};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

    pub struct Client {
        pub client: AsyncClient,
        pub publishes: mpsc::UnboundedReceiver<Publish>,
        /// Reason codes of DISCONNECT packets from the broker.
        pub disconnects: mpsc::UnboundedReceiver<u8>,
        pub session_present: bool,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub async fn connect(
        port: u16,
        id: &str,
        clean: bool,
        expiry: u32,
        will: Option<LastWill>,
    ) -> Client {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_start(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_connect_properties(ConnectProperties {
            session_expiry_interval: Some(expiry),
            receive_maximum: None,
            max_packet_size: None,
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: vec![],
            authentication_method: None,
            authentication_data: None,
        });
        if let Some(w) = will {
            opts.set_last_will(w);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (ptx, publishes) = mpsc::unbounded_channel();
        let (dtx, disconnects) = mpsc::unbounded_channel();
        let (ctx, mut connacks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = ptx.send(p);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        let _ = ctx.send(a.session_present);
                    }
                    Ok(Event::Incoming(Packet::Disconnect(d))) => {
                        let _ = dtx.send(d.reason_code as u8);
                    }
                    Ok(_) => {}
                    // rumqttc reports a DISCONNECT from the broker as an error of its state.
                    Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code,
                        ..
                    })) => {
                        let _ = dtx.send(reason_code as u8);
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        let session_present = timeout(WAIT, connacks.recv())
            .await
            .expect("CONNACK")
            .expect("CONNACK");
        Client {
            client,
            publishes,
            disconnects,
            session_present,
            task,
        }
    }

    pub async fn next(c: &mut Client) -> Publish {
        timeout(WAIT, c.publishes.recv())
            .await
            .expect("a PUBLISH in time")
            .expect("open")
    }

    pub async fn subscribe(c: &Client, filter: &str, qos: QoS) {
        c.client.subscribe(filter, qos).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_every_qos_both_directions() {
    use rumqttc::QoS;
    let server = common::start(common::test_config()).await;
    let port = server.local_addr().port();
    let mut sub = v311::connect(port, "r3-sub", true, None).await;
    v311::subscribe(&sub, "q/#", QoS::ExactlyOnce).await;
    let publ = v311::connect(port, "r3-pub", true, None).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.client
            .publish(format!("q/{i}"), qos, false, vec![i as u8; 10])
            .await
            .unwrap();
        let p = v311::next(&mut sub).await;
        assert_eq!(
            (p.topic.as_str(), p.qos, &p.payload[..]),
            (&*format!("q/{i}"), qos, &[i as u8; 10][..])
        );
    }
    // Downgrade to the granted QoS.
    let mut low = v311::connect(port, "r3-low", true, None).await;
    v311::subscribe(&low, "q/#", QoS::AtLeastOnce).await;
    publ.client
        .publish("q/x", QoS::ExactlyOnce, false, "hi")
        .await
        .unwrap();
    assert_eq!(v311::next(&mut low).await.qos, QoS::AtLeastOnce);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_every_qos_both_directions() {
    use rumqttc::v5::mqttbytes::QoS;
    let server = common::start(common::test_config()).await;
    let port = server.local_addr().port();
    let mut sub = v5::connect(port, "r5-sub", true, 0, None).await;
    v5::subscribe(&sub, "q5/#", QoS::ExactlyOnce).await;
    let publ = v5::connect(port, "r5-pub", true, 0, None).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.client
            .publish(format!("q5/{i}"), qos, false, vec![i as u8; 10])
            .await
            .unwrap();
        let p = v5::next(&mut sub).await;
        assert_eq!((&p.topic[..], p.qos), (format!("q5/{i}").as_bytes(), qos));
        assert_eq!(&p.payload[..], &[i as u8; 10][..]);
    }
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_replace_delete() {
    use rumqttc::QoS;
    let server = common::start(common::test_config()).await;
    let port = server.local_addr().port();
    let publ = v311::connect(port, "ret-pub", true, None).await;
    publ.client
        .publish("ret/a", QoS::AtLeastOnce, true, "one")
        .await
        .unwrap();
    publ.client
        .publish("ret/a", QoS::AtLeastOnce, true, "two")
        .await
        .unwrap();
    publ.client
        .publish("ret/b", QoS::AtLeastOnce, true, "bee")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sub = v311::connect(port, "ret-sub", true, None).await;
    v311::subscribe(&sub, "ret/+", QoS::AtLeastOnce).await;
    let mut got = [v311::next(&mut sub).await, v311::next(&mut sub).await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert!(got.iter().all(|p| p.retain));
    assert_eq!(
        (&got[0].payload[..], &got[1].payload[..]),
        (&b"two"[..], &b"bee"[..])
    );
    // Delete with an empty payload: a later subscriber gets only ret/b. The publisher's next
    // message is routed only after the delete completed, so its arrival at `sub` means the
    // retained store has been updated.
    publ.client
        .publish("ret/a", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    publ.client
        .publish("ret/marker", QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    while v311::next(&mut sub).await.topic != "ret/marker" {}
    let mut late = v311::connect(port, "ret-late", true, None).await;
    v311::subscribe(&late, "ret/#", QoS::AtMostOnce).await;
    assert_eq!(v311::next(&mut late).await.topic, "ret/b");
    assert!(timeout(Duration::from_millis(300), late.publishes.recv())
        .await
        .is_err());
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_when_the_socket_dies() {
    use rumqttc::{LastWill, QoS};
    let server = common::start(common::test_config()).await;
    let port = server.local_addr().port();
    let mut watch = v311::connect(port, "will-watch", true, None).await;
    v311::subscribe(&watch, "status/#", QoS::AtLeastOnce).await;
    let will = LastWill::new("status/dev1", "offline", QoS::AtLeastOnce, false);
    let dev = v311::connect(port, "dev1", true, Some(will)).await;
    drop(dev); // aborts the event loop: the socket closes without DISCONNECT
    let p = v311::next(&mut watch).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("status/dev1", &b"offline"[..])
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_session_resume_delivers_queued_messages() {
    use rumqttc::QoS;
    let server = common::start(common::test_config()).await;
    let port = server.local_addr().port();
    let sub = v311::connect(port, "car-42", false, None).await;
    v311::subscribe(&sub, "cmd/car-42", QoS::AtLeastOnce).await;
    sub.client.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sub);
    let publ = v311::connect(port, "dispatcher", true, None).await;
    for i in 0..5 {
        publ.client
            .publish("cmd/car-42", QoS::AtLeastOnce, false, format!("cmd{i}"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sub = v311::connect(port, "car-42", false, None).await;
    assert_eq!(sub.connacks.recv().await, Some(true), "session present");
    for i in 0..5 {
        assert_eq!(
            &v311::next(&mut sub).await.payload[..],
            format!("cmd{i}").as_bytes()
        );
    }
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_resume_and_takeover() {
    use rumqttc::v5::mqttbytes::QoS;
    let server = common::start(common::test_config()).await;
    let port = server.local_addr().port();
    let first = v5::connect(port, "veh-7", true, 600, None).await;
    assert!(!first.session_present);
    v5::subscribe(&first, "cmd/veh-7", QoS::ExactlyOnce).await;
    let mut first = first;
    // A second connection with the same client identifier takes the session over.
    let mut second = v5::connect(port, "veh-7", false, 600, None).await;
    assert!(second.session_present);
    let reason = timeout(WAIT, first.disconnects.recv())
        .await
        .expect("DISCONNECT")
        .expect("open");
    assert_eq!(reason, 0x8E, "Session taken over");
    let publ = v5::connect(port, "ops", true, 0, None).await;
    publ.client
        .publish("cmd/veh-7", QoS::ExactlyOnce, false, "unlock")
        .await
        .unwrap();
    assert_eq!(&v5::next(&mut second).await.payload[..], b"unlock");
    // Let the QoS 2 flow finish (PUBREL leaves only once "PUBREC received" is durable): a new
    // rumqttc instance resuming the session would not know the packet id of a PUBREL still owed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Offline, then resume: the queued QoS 2 command arrives exactly once.
    second.client.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(second);
    publ.client
        .publish("cmd/veh-7", QoS::ExactlyOnce, false, "lock")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = v5::connect(port, "veh-7", false, 600, None).await;
    assert!(third.session_present);
    assert_eq!(&v5::next(&mut third).await.payload[..], b"lock");
    assert!(timeout(Duration::from_millis(500), third.publishes.recv())
        .await
        .is_err());
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_shared_subscription_splits_the_stream() {
    use rumqttc::v5::mqttbytes::QoS;
    let server = common::start(common::test_config()).await;
    let port = server.local_addr().port();
    let mut a = v5::connect(port, "worker-a", true, 0, None).await;
    let mut b = v5::connect(port, "worker-b", true, 0, None).await;
    v5::subscribe(&a, "$share/workers/jobs/#", QoS::AtLeastOnce).await;
    v5::subscribe(&b, "$share/workers/jobs/#", QoS::AtLeastOnce).await;
    let publ = v5::connect(port, "producer", true, 0, None).await;
    for i in 0..10 {
        publ.client
            .publish("jobs/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 10 {
        tokio::select! {
            Some(p) = a.publishes.recv() => seen.push(("a", p.payload)),
            Some(p) = b.publishes.recv() => seen.push(("b", p.payload)),
            _ = tokio::time::sleep(WAIT) => panic!("only {} of 10 arrived", seen.len()),
        }
    }
    let by_a = seen.iter().filter(|(w, _)| *w == "a").count();
    assert_eq!(by_a, 5, "round robin between two connected members");
    let mut payloads: Vec<_> = seen.into_iter().map(|(_, p)| p).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 10, "each message exactly once");
    server.shutdown(Duration::from_secs(1)).await;
}
