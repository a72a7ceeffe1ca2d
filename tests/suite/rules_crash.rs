//! Exactly once through the rule engine across SIGKILL: the real `keelmq` binary with two
//! rules that republish every source message at QoS 1 to a persistent subscriber, killed at
//! random moments under load — one rule inline (its outputs in the source message's commit),
//! one on a durable consumer (outputs marked, acknowledged after). Every output carries a nonce (`uuid_v4()`, evaluated each time
//! the rule runs), so a QoS 1 re-delivery of one republished message (same nonce) is told apart
//! from a second republish of the same source message (another nonce). At the end, for every
//! source message the broker acknowledged (PUBREC seen) each rule's output arrived with exactly
//! one nonce: 0 lost, 0 duplicated.
//!
//! The publisher is a QoS 2 sender with a persistent session (one message in flight, re-sent
//! with DUP after a reconnect), so each acknowledged message is one message in the broker.
//! `KEELMQ_RULES_CRASH_CYCLES` sets the number of kills (default 10).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::raw::{RawClient, Recv};
use keelmq::codec::*;
use parking_lot::Mutex;

const V5: ProtocolVersion = ProtocolVersion::V5;

const CONFIG: &str = r#"
[[rules]]
id = "first"
sql = 'SELECT payload.seq AS seq, uuid_v4() AS nonce FROM "src/#"'
actions = [{ kind = "republish", topic = "out/first", qos = 1, payload = '${seq} ${nonce}' }]

# RETAIN from a field of its own: this rule runs on a durable consumer, not inline.
[[rules]]
id = "second"
sql = 'SELECT payload.seq AS seq, uuid_v4() AS nonce, false AS keep FROM "src/+" WHERE payload.seq > 0'
actions = [{ kind = "republish", topic = "out/second", qos = 1, retain = '${keep}', payload = '${seq} ${nonce}' }]
"#;

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) addr: Mutex<Option<SocketAddr>>,
    /// Source messages acknowledged (PUBREC seen).
    pub(crate) acked: Mutex<BTreeSet<u64>>,
    /// (rule output topic, seq) → the nonces received.
    received: Mutex<BTreeMap<(String, u64), BTreeSet<String>>>,
    /// The publisher starts once this is set.
    pub(crate) subscribed: AtomicBool,
    pub(crate) stop_publishing: AtomicBool,
    pub(crate) stop_all: AtomicBool,
    pub(crate) sent: AtomicU64,
}

async fn connect(shared: &Shared, id: &str, clean: bool) -> Option<(RawClient, ConnAck)> {
    let addr = *shared.addr.lock();
    common::connect_persistent(addr, V5, id, clean).await
}

/// A persistent QoS 1 subscriber to both rules' outputs.
async fn subscriber(shared: Arc<Shared>) {
    let mut first = true;
    while !shared.stop_all.load(Ordering::Relaxed) {
        let Some((mut c, _)) = connect(&shared, "rules-sub", first).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if first {
            let o = SubscriptionOptions::qos(QoS::AtLeastOnce);
            c.send(&Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Default::default(),
                filters: vec![("out/#".into(), o)],
            }))
            .await;
            first = false;
        }
        loop {
            match c.recv_within(Duration::from_millis(100)).await {
                Recv::Packet(Packet::Publish(p)) => {
                    record(&shared, &p);
                    if p.qos != QoS::AtMostOnce {
                        c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
                    }
                }
                Recv::Packet(Packet::SubAck(_)) => shared.subscribed.store(true, Ordering::Relaxed),
                Recv::Packet(_) => {}
                Recv::Timeout if shared.stop_all.load(Ordering::Relaxed) => return,
                Recv::Timeout => {}
                Recv::Closed | Recv::Invalid(_) => break,
            }
        }
    }
}

fn record(shared: &Shared, p: &Publish) {
    let text = String::from_utf8_lossy(&p.payload);
    let mut parts = text.split(' ');
    let (Some(seq), Some(nonce)) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return;
    };
    let key = (p.topic.to_string(), seq);
    shared
        .received
        .lock()
        .entry(key)
        .or_default()
        .insert(nonce.to_string());
}

fn source(seq: u64, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "src/a".into(),
        packet_id: 1,
        properties: Default::default(),
        payload: Bytes::from(format!("{{\"seq\": {seq}}}")),
    })
}

/// SIGKILLs `broker` `cycles` times at varied moments under load, starting it again each time
/// (the clients follow `shared.addr`); the broker running at the end.
pub(crate) async fn kill_cycles(
    shared: &Shared,
    mut broker: common::BrokerProcess,
    binary: &std::path::Path,
    args: &[&str],
    cycles: u32,
) -> common::BrokerProcess {
    for cycle in 0..cycles {
        let run = 300 + u64::from(cycle * 97 % 500);
        tokio::time::sleep(Duration::from_millis(run)).await;
        drop(broker); // SIGKILL
        *shared.addr.lock() = None;
        broker = common::BrokerProcess::start_with(binary, args);
        *shared.addr.lock() = Some(broker.addr);
    }
    broker
}

/// A persistent QoS 2 publisher of `{"seq": n}` to `src/a`, one message in flight (packet id
/// 1): PUBLISH until PUBREC (then the message is acknowledged), PUBREL until PUBCOMP, across
/// reconnects.
pub(crate) async fn publisher(shared: Arc<Shared>) {
    while !shared.subscribed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut seq, mut released, mut first) = (1u64, false, true);
    while !shared.stop_all.load(Ordering::Relaxed) {
        let Some((mut c, _)) = connect(&shared, "rules-pub", first).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        first = false;
        let mut dup = true;
        loop {
            if !released && shared.stop_publishing.load(Ordering::Relaxed) {
                break;
            }
            let out = match released {
                false => source(seq, dup),
                true => Packet::PubRel(PubAck::new(1)),
            };
            c.send(&out).await;
            shared.sent.fetch_add(1, Ordering::Relaxed);
            match c.recv_within(Duration::from_secs(2)).await {
                Recv::Packet(Packet::PubRec(r)) if r.reason.0 < 0x80 => {
                    shared.acked.lock().insert(seq);
                    released = true;
                }
                Recv::Packet(Packet::PubComp(_)) => {
                    (released, dup) = (false, false);
                    seq += 1;
                }
                Recv::Packet(_) => {}
                Recv::Timeout | Recv::Closed | Recv::Invalid(_) => break,
            }
        }
        if shared.stop_publishing.load(Ordering::Relaxed) && !released {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_republish_exactly_once_across_sigkill() {
    let cycles: u32 = std::env::var("KEELMQ_RULES_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = common::temp_dir("rules-crash");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("keelmq.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let data = dir.join("data");
    let (data_arg, config_arg) = (data.to_str().unwrap(), config.to_str().unwrap());
    let args = ["--data-dir", data_arg, "--config", config_arg];
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_keelmq"));
    let shared = Arc::new(Shared::default());
    let broker = common::BrokerProcess::start_with(&binary, &args);
    *shared.addr.lock() = Some(broker.addr);
    let sub = tokio::spawn(subscriber(shared.clone()));
    let publ = tokio::spawn(publisher(shared.clone()));
    let broker = kill_cycles(&shared, broker, &binary, &args, cycles).await;
    shared.stop_publishing.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), publ).await;
    let acked: Vec<u64> = shared.acked.lock().iter().copied().collect();
    let complete = |shared: &Shared| {
        let received = shared.received.lock();
        acked.iter().all(|s| {
            ["out/first", "out/second"]
                .iter()
                .all(|t| received.contains_key(&(t.to_string(), *s)))
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !complete(&shared) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.stop_all.store(true, Ordering::Relaxed);
    let _ = sub.await;
    drop(broker);
    check(&shared, &acked);
    let _ = std::fs::remove_dir_all(&dir);
}

fn check(shared: &Shared, acked: &[u64]) {
    let received = shared.received.lock();
    let mut lost = Vec::new();
    for seq in acked {
        for topic in ["out/first", "out/second"] {
            if !received.contains_key(&(topic.to_string(), *seq)) {
                lost.push((topic, *seq));
            }
        }
    }
    let duplicated: Vec<_> = received.iter().filter(|(_, n)| n.len() > 1).collect();
    eprintln!(
        "rules crash test: {} acknowledged sources, {} outputs, {} packets sent",
        acked.len(),
        received.len(),
        shared.sent.load(Ordering::Relaxed)
    );
    assert!(
        acked.len() > 20,
        "too few messages acknowledged: {}",
        acked.len()
    );
    assert!(lost.is_empty(), "outputs lost: {lost:?}");
    assert!(duplicated.is_empty(), "republished twice: {duplicated:?}");
}
