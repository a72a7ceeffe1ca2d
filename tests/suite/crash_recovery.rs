//! Crash consistency of the real `keelmq` binary: SIGKILLed at random moments under mixed
//! QoS 1/2 load, with a persistent subscriber that is sometimes online and sometimes offline,
//! retained updates and subscription changes. After every restart and at the end:
//! - every acknowledged QoS 1 message (PUBACK seen) was delivered at least once;
//! - every acknowledged QoS 2 message (PUBREC seen) was delivered exactly once, and no QoS 2
//!   message was ever delivered twice;
//! - the retained message never rolled back behind an acknowledged update;
//! - acknowledged sessions and subscriptions survived (session present, deliveries continue).
//!
//! The clients implement their side of QoS 2 fully (a receiver remembers packet ids awaiting
//! PUBREL across reconnects; a sender re-sends PUBLISH or PUBREL), as the spec requires, so
//! any duplicate is the broker's. `KEELMQ_CRASH_CYCLES` sets the number of kills (default 50).
//! In the run with recycled WAL segments the publisher connects over TLS (a `tls` listener
//! with a certificate made by the test), so the TLS path is crash-tested too.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::raw::{RawClient, Recv};
use keelmq::codec::*;
use keelmq_tools::client::TlsClient;
use parking_lot::Mutex;

const V5: ProtocolVersion = ProtocolVersion::V5;

#[derive(Default)]
struct Ledger {
    acked_q1: HashSet<u64>,
    acked_q2: HashSet<u64>,
    /// Deliveries to the subscriber's application, by sequence number.
    received: HashMap<u64, u32>,
    received_qos2: HashMap<u64, u32>,
    max_acked_retained: u64,
    violations: Vec<String>,
}

struct Shared {
    addr: Mutex<Option<SocketAddr>>,
    /// The publisher's way in when it connects over TLS: the `tls` listener and the client.
    tls: Option<(Mutex<Option<SocketAddr>>, TlsClient)>,
    ledger: Mutex<Ledger>,
    stop_publishing: AtomicBool,
    stop_all: AtomicBool,
    /// The subscription exists: publishing may start (earlier messages have no subscriber).
    subscribed: AtomicBool,
    published: AtomicU64,
}

async fn connect(shared: &Shared, id: &str, clean: bool) -> Option<(RawClient, ConnAck)> {
    let addr = *shared.addr.lock();
    common::connect_persistent(addr, V5, id, clean).await
}

/// The publisher's connection: over TLS when the run has a TLS listener.
async fn connect_publisher(shared: &Shared, clean: bool) -> Option<(RawClient, ConnAck)> {
    let Some((addr, tls)) = &shared.tls else {
        return connect(shared, "crash-pub", clean).await;
    };
    let addr = *addr.lock();
    common::connect_persistent_over(addr, Some(tls), V5, "crash-pub", clean).await
}

fn seq_of(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload)
        .ok()?
        .strip_prefix("seq:")?
        .parse()
        .ok()
}

/// A persistent QoS 2 subscriber with a correct receiver state machine.
async fn subscriber(shared: Arc<Shared>) {
    let mut awaiting_rel: HashSet<u16> = HashSet::new();
    let mut first = true;
    let mut online_rounds = 0u32;
    while !shared.stop_all.load(Ordering::Relaxed) {
        let Some((mut c, ack)) = connect(&shared, "crash-sub", first).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if first {
            let o = SubscriptionOptions::qos(QoS::ExactlyOnce);
            c.send(&Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Default::default(),
                filters: vec![("crash/#".into(), o)],
            }))
            .await;
            first = false;
        } else if !ack.session_present {
            shared
                .ledger
                .lock()
                .violations
                .push("subscriber session lost".into());
        }
        online_rounds += 1;
        // Every third connection goes offline for a while, so messages queue up.
        let offline_after = online_rounds
            .is_multiple_of(3)
            .then(|| tokio::time::Instant::now() + Duration::from_millis(150));
        loop {
            if offline_after.is_some_and(|t| tokio::time::Instant::now() >= t) {
                c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)))
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                break;
            }
            match c.recv_within(Duration::from_millis(100)).await {
                Recv::Packet(Packet::Publish(p)) => {
                    let Some(seq) = seq_of(&p.payload) else {
                        continue;
                    };
                    match p.qos {
                        QoS::ExactlyOnce => {
                            if awaiting_rel.insert(p.packet_id) {
                                let mut l = shared.ledger.lock();
                                *l.received.entry(seq).or_default() += 1;
                                *l.received_qos2.entry(seq).or_default() += 1;
                            }
                            c.send(&Packet::PubRec(PubAck::new(p.packet_id))).await;
                        }
                        QoS::AtLeastOnce => {
                            *shared.ledger.lock().received.entry(seq).or_default() += 1;
                            c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
                        }
                        QoS::AtMostOnce => {}
                    }
                }
                Recv::Packet(Packet::SubAck(_)) => shared.subscribed.store(true, Ordering::Relaxed),
                Recv::Packet(Packet::PubRel(r)) => {
                    awaiting_rel.remove(&r.packet_id);
                    c.send(&Packet::PubComp(PubAck::new(r.packet_id))).await;
                }
                Recv::Packet(_) => {}
                Recv::Timeout => {
                    if shared.stop_all.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Recv::Closed | Recv::Invalid(_) => break,
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Awaiting {
    Ack,
    Rec,
    Comp,
}

/// A persistent publisher with a correct sender state machine, 8 messages outstanding.
async fn publisher(shared: Arc<Shared>) {
    let mut inflight: BTreeMap<u16, (u64, QoS, bool, Awaiting)> = BTreeMap::new();
    let mut next_seq = 1u64;
    let mut next_pid = 1u16;
    let mut first = true;
    while !shared.subscribed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loop {
        if shared.stop_all.load(Ordering::Relaxed) {
            return;
        }
        if shared.stop_publishing.load(Ordering::Relaxed) && inflight.is_empty() {
            return;
        }
        let Some((mut c, _)) = connect_publisher(&shared, first).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        first = false;
        for (&pid, &(seq, qos, retain, stage)) in &inflight {
            let packet = match stage {
                Awaiting::Comp => Packet::PubRel(PubAck::new(pid)),
                _ => publish(seq, qos, retain, pid, true),
            };
            c.send(&packet).await;
        }
        loop {
            while inflight.len() < 8 && !shared.stop_publishing.load(Ordering::Relaxed) {
                let qos = if next_seq.is_multiple_of(2) {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                let retain = next_seq.is_multiple_of(10);
                while inflight.contains_key(&next_pid) {
                    next_pid = next_pid.checked_add(1).unwrap_or(1);
                }
                let stage = if qos == QoS::ExactlyOnce {
                    Awaiting::Rec
                } else {
                    Awaiting::Ack
                };
                inflight.insert(next_pid, (next_seq, qos, retain, stage));
                c.send(&publish(next_seq, qos, retain, next_pid, false))
                    .await;
                shared.published.fetch_add(1, Ordering::Relaxed);
                next_seq += 1;
            }
            match c.recv_within(Duration::from_millis(200)).await {
                Recv::Packet(Packet::PubAck(a)) => {
                    if let Some((seq, _, retain, Awaiting::Ack)) =
                        inflight.get(&a.packet_id).copied()
                    {
                        inflight.remove(&a.packet_id);
                        if a.reason.is_error() {
                            continue; // refused (e.g. 0x97 queue full): not acknowledged
                        }
                        let mut l = shared.ledger.lock();
                        if a.reason != ReasonCode::SUCCESS {
                            l.violations
                                .push(format!("seq {seq}: PUBACK {:?}", a.reason));
                        }
                        l.acked_q1.insert(seq);
                        if retain {
                            l.max_acked_retained = l.max_acked_retained.max(seq);
                        }
                    }
                }
                Recv::Packet(Packet::PubRec(a)) if a.reason.is_error() => {
                    inflight.remove(&a.packet_id); // refused: the QoS 2 flow ends here
                }
                Recv::Packet(Packet::PubRec(a)) => {
                    if let Some(entry) = inflight.get_mut(&a.packet_id) {
                        if entry.3 == Awaiting::Rec {
                            entry.3 = Awaiting::Comp;
                            let mut l = shared.ledger.lock();
                            if a.reason != ReasonCode::SUCCESS {
                                l.violations
                                    .push(format!("seq {}: PUBREC {:?}", entry.0, a.reason));
                            }
                            l.acked_q2.insert(entry.0);
                            if entry.2 {
                                l.max_acked_retained = l.max_acked_retained.max(entry.0);
                            }
                        }
                    }
                    c.send(&Packet::PubRel(PubAck::new(a.packet_id))).await;
                }
                Recv::Packet(Packet::PubComp(a)) => {
                    if inflight
                        .get(&a.packet_id)
                        .is_some_and(|e| e.3 == Awaiting::Comp)
                    {
                        inflight.remove(&a.packet_id);
                    }
                }
                Recv::Packet(_) => {}
                Recv::Timeout => {
                    if shared.stop_all.load(Ordering::Relaxed) {
                        return;
                    }
                    if shared.stop_publishing.load(Ordering::Relaxed) && inflight.is_empty() {
                        return;
                    }
                }
                Recv::Closed | Recv::Invalid(_) => break,
            }
        }
    }
}

fn publish(seq: u64, qos: QoS, retain: bool, packet_id: u16, dup: bool) -> Packet {
    let topic = if retain {
        "crash/retained"
    } else {
        "crash/data"
    };
    Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic: topic.into(),
        packet_id,
        properties: Default::default(),
        payload: Bytes::from(format!("seq:{seq}")),
    })
}

/// Reads the retained value of `crash/retained` with a fresh client.
async fn retained_seq(addr: SocketAddr) -> Option<u64> {
    let mut c = RawClient::try_tcp(addr, V5).await?;
    c.try_handshake("crash-retained-reader", true, |_| {})
        .await?;
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(
            "crash/retained".into(),
            SubscriptionOptions::qos(QoS::AtMostOnce),
        )],
    }))
    .await;
    loop {
        match c.recv_within(Duration::from_millis(500)).await {
            Recv::Packet(Packet::Publish(p)) => return seq_of(&p.payload),
            Recv::Packet(_) => {}
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged_and_duplicates_no_qos2() {
    let dir = common::temp_dir("crash");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("keelmq.toml");
    std::fs::write(&config, QUEUES_NEVER_OVERFLOW).unwrap();
    crash_cycles(dir.join("data"), Some(config), 50).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Queue limits the test's offline subscriber never reaches: the invariant "every acknowledged
/// message arrives" holds for a subscriber whose queue has room (a stalled one's overflow is
/// dropped for it alone, by design).
const QUEUES_NEVER_OVERFLOW: &str =
    "[limits]\nmax_queued_messages = 10000000\nmax_queued_bytes = 4294967296\n\
     max_queued_bytes_total = 4294967296\n";

/// The same with 64 KiB WAL segments and a checkpoint every 64 KiB or 100 ms, so that
/// checkpointed segments are recycled (`*.spare`) many times between and across the kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_wal_segments_are_recycled_loses_nothing() {
    let dir = common::temp_dir("crash-recycle");
    let config = dir.join("keelmq.toml");
    std::fs::create_dir_all(&dir).unwrap();
    let certs = common::certs::TlsFiles::new(&dir.join("certs"));
    let (cert, key) = (certs.server_cert.display(), certs.server_key.display());
    std::fs::write(
        &config,
        format!(
            "{QUEUES_NEVER_OVERFLOW}[storage]\nwal_segment_bytes = 65536\n\
             checkpoint_wal_bytes = 65536\ncheckpoint_interval_ms = 100\n\n\
             [[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\n\
             cert_file = \"{cert}\"\nkey_file = \"{key}\"\n"
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let wal = data.join("wal");
    let tls = TlsClient::new(&certs.ca, "localhost", None).unwrap();
    crash_cycles_over(data, Some(config), 25, Some(tls)).await;
    // The run must really have recycled segments: spares are left behind.
    let spares = std::fs::read_dir(&wal)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension() == Some("spare".as_ref()))
                .count()
        })
        .unwrap_or(0);
    assert!(spares > 0, "no spare segment in {}", wal.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the publisher and subscriber against a broker on `dir` that is SIGKILLed `cycles`
/// times (`KEELMQ_CRASH_CYCLES` overrides), then checks the ledger. Keeps `dir` on failure and
/// leaves removing it to the caller otherwise.
async fn crash_cycles(dir: std::path::PathBuf, config: Option<std::path::PathBuf>, cycles: u32) {
    crash_cycles_over(dir, config, cycles, None).await
}

/// [`crash_cycles`] with the publisher over TLS when `tls` is given (the configuration has a
/// listener named "tls").
async fn crash_cycles_over(
    dir: std::path::PathBuf,
    config: Option<std::path::PathBuf>,
    cycles: u32,
    tls: Option<TlsClient>,
) {
    let cycles: u32 = std::env::var("KEELMQ_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cycles);
    let seed: u64 = std::env::var("KEELMQ_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {cycles} cycles, seed {seed} (KEELMQ_CRASH_SEED to replay the timings)");
    let mut rng = seed;
    let mut next_rand = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let dir_arg = dir.to_str().unwrap().to_string();
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_keelmq"));
    let mut args = vec!["--data-dir", dir_arg.as_str()];
    let config_arg = config.map(|c| c.to_str().unwrap().to_string());
    if let Some(config) = &config_arg {
        args.extend(["--config", config.as_str()]);
    }
    let shared = Arc::new(Shared {
        addr: Mutex::new(None),
        tls: tls.map(|t| (Mutex::new(None), t)),
        ledger: Mutex::new(Ledger::default()),
        stop_publishing: AtomicBool::new(false),
        stop_all: AtomicBool::new(false),
        subscribed: AtomicBool::new(false),
        published: AtomicU64::new(0),
    });
    let mut broker = common::BrokerProcess::start_with(&binary, &args);
    set_addrs(&shared, &broker);
    let sub = tokio::spawn(subscriber(shared.clone()));
    let publ = tokio::spawn(publisher(shared.clone()));
    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(150 + next_rand(450))).await;
        let acked_retained = shared.ledger.lock().max_acked_retained;
        *shared.addr.lock() = None;
        if let Some((tls_addr, _)) = &shared.tls {
            *tls_addr.lock() = None;
        }
        drop(broker); // SIGKILL, then wait for the process to be gone
        broker = common::BrokerProcess::start_with(&binary, &args);
        set_addrs(&shared, &broker);
        if acked_retained > 0 {
            let seen = retained_seq(broker.addr).await;
            if seen.is_none_or(|s| s < acked_retained) {
                shared.ledger.lock().violations.push(format!(
                    "cycle {cycle}: retained rolled back to {seen:?}, {acked_retained} was acknowledged"
                ));
            }
        }
    }
    // Stop publishing, let everything acknowledged arrive, then check.
    shared.stop_publishing.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(20), publ).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let missing = {
            let l = shared.ledger.lock();
            l.acked_q1
                .iter()
                .chain(&l.acked_q2)
                .filter(|s| !l.received.contains_key(s))
                .count()
        };
        if missing == 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.stop_all.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(5), sub).await;
    let l = shared.ledger.lock();
    let lost: Vec<u64> = l
        .acked_q1
        .iter()
        .chain(&l.acked_q2)
        .filter(|s| !l.received.contains_key(s))
        .copied()
        .collect();
    let dup_q2: Vec<(u64, u32)> = l
        .received_qos2
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, n)| (*s, *n))
        .collect();
    eprintln!(
        "published {}, acknowledged {} (QoS 1) + {} (QoS 2), received {}, lost {}, QoS 2 duplicated {}",
        shared.published.load(Ordering::Relaxed),
        l.acked_q1.len(),
        l.acked_q2.len(),
        l.received.len(),
        lost.len(),
        dup_q2.len()
    );
    assert!(
        l.acked_q1.len() + l.acked_q2.len() > cycles as usize,
        "the load ran"
    );
    if !(lost.is_empty() && dup_q2.is_empty() && l.violations.is_empty()) {
        eprintln!("violations: {:?}", l.violations);
        eprintln!(
            "data directory kept for `keelmq inspect --dump`: {}",
            dir.display()
        );
    }
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert!(
        dup_q2.is_empty(),
        "QoS 2 delivered more than once: {dup_q2:?}"
    );
    assert!(l.violations.is_empty(), "{:?}", l.violations);
    drop(broker);
}

/// Points the clients at a (re)started broker.
fn set_addrs(shared: &Shared, broker: &common::BrokerProcess) {
    *shared.addr.lock() = Some(broker.addr);
    if let Some((tls_addr, _)) = &shared.tls {
        *tls_addr.lock() = Some(broker.listener_addr("tls"));
    }
}
