//! Durable state across restarts of the real binary: persistent sessions, subscriptions, queued
//! messages and retained messages survive `kill -9`; a session expires by wall-clock time even
//! while the broker is down; a clean session leaves nothing on disk.

use crate::common;

use std::time::Duration;

use common::raw::RawClient;
use keelmq::codec::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

fn start(dir: &std::path::Path) -> common::BrokerProcess {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_keelmq"));
    common::BrokerProcess::start_with(&binary, &["--data-dir", dir.to_str().unwrap()])
}

/// The broker binary with a configuration file and a data directory under `dir`, started
/// (and started again after a kill) with the same arguments.
struct Configured {
    args: Vec<String>,
}

impl Configured {
    fn new(dir: &std::path::Path, config: &str) -> Configured {
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join("keelmq.toml");
        std::fs::write(&file, config).unwrap();
        let path = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
        let args = vec![
            "--config".to_string(),
            path(file),
            "--data-dir".to_string(),
            path(dir.join("data")),
        ];
        Configured { args }
    }

    fn start(&self) -> common::BrokerProcess {
        let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_keelmq"));
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        common::BrokerProcess::start_with(&binary, &args)
    }
}

fn inspect(dir: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keelmq"))
        .arg("inspect")
        .arg(dir)
        .output()
        .expect("keelmq inspect runs");
    assert!(
        out.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_kill_9_and_sessions_expire_across_restarts() {
    let dir = common::temp_dir("restart");
    let broker = start(&dir);
    let expiring = |secs| move |c: &mut Connect| c.properties.session_expiry_interval = Some(secs);
    let (mut keep, _) = RawClient::connect(broker.addr, V5, "keeper", true, expiring(3600)).await;
    keep.subscribe(1, "r/#", SubscriptionOptions::qos(QoS::ExactlyOnce))
        .await;
    let (mut short, _) = RawClient::connect(broker.addr, V5, "short", true, expiring(2)).await;
    short
        .subscribe(1, "r/#", SubscriptionOptions::qos(QoS::AtLeastOnce))
        .await;
    drop(keep);
    drop(short);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut publ, _) = RawClient::connect(broker.addr, V5, "publisher", true, |_| {}).await;
    publ.publish("r/1", b"queued", QoS::ExactlyOnce, 1, false)
        .await;
    assert!(matches!(publ.next().await, Packet::PubRec(a) if a.reason == ReasonCode::SUCCESS));
    publ.publish("r/ret", b"kept", QoS::AtLeastOnce, 2, true)
        .await;
    assert!(matches!(publ.next().await, Packet::PubAck(_)));
    drop(broker); // SIGKILL
                  // The 2-second session expires while the broker is down.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let broker = start(&dir);
    let (_short, ack) = RawClient::connect(broker.addr, V5, "short", false, expiring(2)).await;
    assert!(
        !ack.session_present,
        "expired by wall-clock time across the restart"
    );
    let (mut keep, ack) =
        RawClient::connect(broker.addr, V5, "keeper", false, expiring(3600)).await;
    assert!(
        ack.session_present,
        "the persistent session survived kill -9"
    );
    let p = keep.next_publish().await;
    assert_eq!(
        (&*p.topic, &p.payload[..], p.qos),
        ("r/1", &b"queued"[..], QoS::ExactlyOnce)
    );
    keep.send(&Packet::PubRec(PubAck::new(p.packet_id))).await;
    // PUBREL leaves once "PUBREC received" is durable; the next queued message may come first.
    let (mut rel, mut retained) = (false, false);
    while !(rel && retained) {
        match keep.next().await {
            Packet::PubRel(r) => {
                keep.send(&Packet::PubComp(PubAck::new(r.packet_id))).await;
                rel = true;
            }
            Packet::Publish(m) => {
                assert_eq!((&*m.topic, &m.payload[..]), ("r/ret", &b"kept"[..]));
                keep.send(&Packet::PubAck(PubAck::new(m.packet_id))).await;
                retained = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The subscription survived too: a new message arrives.
    let (mut publ, _) = RawClient::connect(broker.addr, V5, "publisher", true, |_| {}).await;
    publ.publish("r/2", b"live", QoS::AtMostOnce, 0, false)
        .await;
    let p = keep.next_publish().await;
    assert_eq!(&p.payload[..], b"live");
    // A new subscriber gets the retained message recovered from disk.
    let (mut late, _) = RawClient::connect(broker.addr, V5, "late", true, |_| {}).await;
    late.subscribe(1, "r/ret", SubscriptionOptions::qos(QoS::AtMostOnce))
        .await;
    assert_eq!(&late.next_publish().await.payload[..], b"kept");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_leaves_nothing_on_disk() {
    let dir = common::temp_dir("clean");
    let broker = start(&dir);
    let (mut c, _) = RawClient::connect(broker.addr, V5, "ephemeral", true, |_| {}).await;
    c.subscribe(1, "e/#", SubscriptionOptions::qos(QoS::ExactlyOnce))
        .await;
    let (mut p, _) = RawClient::connect(
        broker.addr,
        ProtocolVersion::V3_1_1,
        "ephemeral-pub",
        true,
        |_| {},
    )
    .await;
    p.publish("e/1", b"x", QoS::ExactlyOnce, 1, false).await;
    assert!(matches!(p.next().await, Packet::PubRec(_)));
    let got = c.next_publish().await;
    assert_eq!(&got.payload[..], b"x");
    drop(broker);
    let report = inspect(&dir);
    assert!(report.contains("sessions: 0"), "{report}");
    assert!(report.contains("subscriptions: 0"), "{report}");
    assert!(report.contains("queued messages: 0"), "{report}");
    assert!(
        report.contains("records -..-"),
        "no WAL record at all: {report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// After a restart, offline queues come back paged out (metadata in memory, bodies in the
/// store or the WAL tail) and are paged in when their session resumes: in order, before what
/// was queued after the restart, with DUP where they may have been sent before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queues_are_paged_in_on_resume_in_order() {
    let dir = common::temp_dir("paged");
    // Frequent checkpoints: the first messages' bodies leave memory before the kill.
    let run = Configured::new(&dir, "[storage]\ncheckpoint_interval_ms = 100\n");
    let broker = run.start();
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(3600);
    let (mut sub, _) = RawClient::connect(broker.addr, V5, "pager", true, persistent).await;
    sub.subscribe(1, "pg/#", SubscriptionOptions::qos(QoS::AtLeastOnce))
        .await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let payload =
        |i: u32| -> &'static [u8] { Box::leak(format!("m{i:03}").into_boxed_str()).as_bytes() };
    let publish_range = |addr, range: std::ops::Range<u32>| async move {
        let (mut publ, _) = RawClient::connect(addr, V5, "pg-pub", true, |_| {}).await;
        for i in range {
            publ.publish("pg/x", payload(i), QoS::AtLeastOnce, 1, false)
                .await;
            assert!(
                matches!(publ.next().await, Packet::PubAck(a) if a.reason == ReasonCode::SUCCESS)
            );
        }
    };
    publish_range(broker.addr, 0..20).await;
    // Checkpointed: these bodies are in the store only.
    tokio::time::sleep(Duration::from_millis(700)).await;
    // These stay in the WAL tail.
    publish_range(broker.addr, 20..30).await;
    drop(broker); // SIGKILL
    let report = inspect(&dir.join("data"));
    assert!(report.contains("queued messages: 30"), "{report}");
    assert!(!report.contains("PROBLEM"), "{report}");
    let broker = run.start();
    // Queued after the restart, while the session is offline: after the recovered ones.
    publish_range(broker.addr, 30..35).await;
    let (mut sub, ack) = RawClient::connect(broker.addr, V5, "pager", false, persistent).await;
    assert!(ack.session_present);
    for i in 0..35 {
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], payload(i), "message {i} out of order");
        assert_eq!(
            p.dup,
            i < 30,
            "DUP only on recovered deliveries (message {i})"
        );
        sub.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    }
    sub.expect_silence(Duration::from_millis(300)).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A backlog longer than a session keeps in memory (2,048 deliveries) is queued paged out
/// while its subscriber is connected but not reading, and paged in by batches as it reads:
/// every message in order, across a `kill -9` and more messages queued while it is offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_longer_than_memory_comes_back_in_order() {
    let dir = common::temp_dir("long-backlog");
    let text = "[storage]\ncheckpoint_interval_ms = 200\n[limits]\nmax_queued_messages = 10000\n";
    let run = Configured::new(&dir, text);
    let broker = run.start();
    let slow = |c: &mut Connect| {
        c.properties.session_expiry_interval = Some(3600);
        c.properties.receive_maximum = Some(20);
    };
    let (mut sub, _) = RawClient::connect(broker.addr, V5, "long", true, slow).await;
    sub.subscribe(1, "long/#", SubscriptionOptions::qos(QoS::AtLeastOnce))
        .await;
    let payload =
        |i: u32| -> &'static [u8] { Box::leak(format!("{i:05}").into_boxed_str()).as_bytes() };
    publish_pipelined(broker.addr, 0..5000, payload).await;
    let mut next = 0;
    read_in_order(&mut sub, &mut next, 1000).await;
    drop(broker); // SIGKILL, with 4,000 queued (most of them paged out) and 20 in flight
    drop(sub);
    let broker = run.start();
    publish_pipelined(broker.addr, 5000..6000, payload).await;
    let (mut sub, ack) = RawClient::connect(broker.addr, V5, "long", false, slow).await;
    assert!(ack.session_present);
    read_in_order(&mut sub, &mut next, 6000).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A shared-subscription member that stops reading queues its share past what it keeps in
/// memory (paged); when it goes, every delivery it held — paged ones too — moves to the other
/// member: each message reaches the group once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departing_members_paged_shared_deliveries_move_to_another() {
    let dir = common::temp_dir("shared-paged");
    let run = Configured::new(&dir, "[limits]\nmax_queued_messages = 10000\n");
    let broker = run.start();
    let slow = |c: &mut Connect| {
        c.properties.session_expiry_interval = Some(3600);
        c.properties.receive_maximum = Some(10);
    };
    let group = SubscriptionOptions::qos(QoS::AtLeastOnce);
    let (mut a, _) = RawClient::connect(broker.addr, V5, "member-a", true, slow).await;
    a.subscribe(1, "$share/g/long/#", group).await;
    let (mut b, _) = RawClient::connect(broker.addr, V5, "member-b", true, |_| {}).await;
    b.subscribe(1, "$share/g/long/#", group).await;
    let reader = tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 6000 {
            let p = match b.recv_within(Duration::from_secs(10)).await {
                common::raw::Recv::Packet(Packet::Publish(p)) => p,
                _ => break,
            };
            let n: u32 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
            seen.insert(n);
            b.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
        }
        seen
    });
    let payload =
        |i: u32| -> &'static [u8] { Box::leak(format!("{i:05}").into_boxed_str()).as_bytes() };
    publish_pipelined(broker.addr, 0..6000, payload).await;
    drop(a); // about 3,000 queued for it, most of them paged
    let seen = reader.await.unwrap();
    let missing: Vec<u32> = (0..6000).filter(|i| !seen.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes `range` to `long/x` at QoS 1, 50 at a time before reading their PUBACKs.
async fn publish_pipelined(
    addr: std::net::SocketAddr,
    range: std::ops::Range<u32>,
    payload: impl Fn(u32) -> &'static [u8],
) {
    let (mut publ, _) = RawClient::connect(addr, V5, "long-pub", true, |_| {}).await;
    let ids: Vec<u32> = range.collect();
    for chunk in ids.chunks(50) {
        for (k, i) in chunk.iter().enumerate() {
            publ.publish("long/x", payload(*i), QoS::AtLeastOnce, k as u16 + 1, false)
                .await;
        }
        for _ in chunk {
            let ack = publ.next().await;
            assert!(
                matches!(&ack, Packet::PubAck(a) if a.reason == ReasonCode::SUCCESS),
                "{ack:?}"
            );
        }
    }
}

/// Reads and acknowledges messages until message `until - 1` arrived: each the next number
/// (`next`), or a re-send (DUP) of one already read.
async fn read_in_order(sub: &mut RawClient, next: &mut u32, until: u32) {
    while *next < until {
        let p = sub.next_publish().await;
        let n: u32 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        if n < *next {
            assert!(p.dup, "message {n} again without DUP (expected {next})");
        } else {
            assert_eq!(n, *next, "out of order");
            *next += 1;
        }
        sub.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_waiting_for_its_delay_survives_kill_9() {
    let dir = common::temp_dir("will");
    let broker = start(&dir);
    let persistent = |c: &mut Connect| c.properties.session_expiry_interval = Some(3600);
    let (mut watch, _) = RawClient::connect(broker.addr, V5, "watcher", true, persistent).await;
    watch
        .subscribe(1, "gone/#", SubscriptionOptions::qos(QoS::AtLeastOnce))
        .await;
    drop(watch);
    let with_will = |topic: &'static str| {
        move |c: &mut Connect| {
            c.properties.session_expiry_interval = Some(3600);
            c.will = Some(LastWill {
                topic: topic.into(),
                payload: bytes::Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties {
                    will_delay_interval: Some(3),
                    ..Default::default()
                },
            });
        }
    };
    // Both connections close without DISCONNECT, so both wills wait 3 s. "back" returns
    // after the restart, which cancels its will; "car" does not.
    let (car, _) = RawClient::connect(broker.addr, V5, "car", true, with_will("gone/car")).await;
    let (back, _) = RawClient::connect(broker.addr, V5, "back", true, with_will("gone/back")).await;
    let closed = std::time::Instant::now();
    drop(car);
    drop(back);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(broker); // SIGKILL, 2.5 s before the wills are due

    let broker = start(&dir);
    let (_back, ack) = RawClient::connect(broker.addr, V5, "back", false, persistent).await;
    assert!(ack.session_present);
    let (mut watch, ack) = RawClient::connect(broker.addr, V5, "watcher", false, persistent).await;
    assert!(ack.session_present);
    let p = watch.next_publish().await;
    assert_eq!(
        (&*p.topic, &p.payload[..]),
        ("gone/car", &b"offline"[..]),
        "the waiting will survived the kill"
    );
    assert!(
        closed.elapsed() >= Duration::from_millis(2900),
        "published before its delay ran out: {:?}",
        closed.elapsed()
    );
    watch.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    // Once only, and none for "back".
    watch.expect_silence(Duration::from_secs(4)).await;
    drop(watch);
    drop(broker);

    // Published is gone for good: another restart publishes nothing again.
    let broker = start(&dir);
    let (mut watch, _) = RawClient::connect(broker.addr, V5, "watcher", false, persistent).await;
    watch.expect_silence(Duration::from_secs(4)).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
