//! A harder crash test than `crash_recovery.rs` (issue "Close the durability holes a review
//! found"): the real `keelmq` binary is SIGKILLed at random moments while
//! - three persistent publishers send QoS 1 and QoS 2 messages, one of which keeps taking its
//!   own session over with Clean Start in the middle of its QoS 2 flows (re-using packet ids
//!   the old session had in flight);
//! - two of them compete with RETAIN updates on the same two topics;
//! - a shared subscription group of two persistent members that come and go takes every data
//!   message, next to a persistent subscriber of its own;
//! - a subscriber that subscribed once and never came back has a full queue (its overflow is
//!   dropped for it alone; no publisher may be refused).
//!
//! Invariants, checked at the end (and, for retained messages, after every restart):
//! - every acknowledged data message reached the plain subscriber and the group;
//! - no QoS 2 message reached the plain subscriber twice, nor the group twice (across both
//!   members);
//! - a retained topic never holds an update that an acknowledged one sent after it had been
//!   acknowledged replaced (no roll-back);
//! - no acknowledgement carried an error code.
//!
//! The clients implement their side of QoS 2 completely, so any duplicate is the broker's.
//! `KEELMQ_CRASH_CYCLES` sets the number of kills (default 25), `KEELMQ_CRASH_SEED` replays.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::raw::{RawClient, Recv};
use keelmq::codec::*;
use parking_lot::Mutex;

const V5: ProtocolVersion = ProtocolVersion::V5;
const PUBLISHERS: u64 = 3;
const RETAINED_TOPICS: u64 = 2;

/// One acknowledged retained update: when it was sent and when its acknowledgement came, on
/// the test's logical clock.
#[derive(Clone, Copy)]
struct RetainedAck {
    sent: u64,
    acked: u64,
}

#[derive(Default)]
struct Ledger {
    /// Acknowledged data messages, by id, with their QoS.
    acked: HashMap<String, QoS>,
    plain: HashMap<String, u32>,
    group: HashMap<String, u32>,
    /// Send time of every retained update, by its id (payload).
    retained_sent: HashMap<String, u64>,
    /// Acknowledged retained updates by topic, by id.
    retained_acked: HashMap<String, HashMap<String, RetainedAck>>,
    big_acked: u64,
    big_refused: u64,
    violations: Vec<String>,
}

struct Shared {
    addr: Mutex<Option<SocketAddr>>,
    ledger: Mutex<Ledger>,
    clock: AtomicU64,
    stop_publishing: AtomicBool,
    stop_all: AtomicBool,
    ready: AtomicU64,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

async fn connect(shared: &Shared, id: &str, clean: bool) -> Option<(RawClient, ConnAck)> {
    let addr = *shared.addr.lock();
    common::connect_persistent(addr, V5, id, clean).await
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Plain,
    Group,
}

/// A persistent QoS 2 subscriber with a complete receiver state machine. Group members go
/// offline for a while now and then, so their queued shared deliveries move to the other.
async fn subscriber(shared: Arc<Shared>, id: &'static str, filter: &'static str, role: Role) {
    let mut awaiting_rel: HashSet<u16> = HashSet::new();
    let mut subscribed = false;
    let mut rounds = 0u64;
    while !shared.stop_all.load(Ordering::Relaxed) {
        let Some((mut c, ack)) = connect(&shared, id, !subscribed).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if !subscribed {
            c.subscribe(1, filter, SubscriptionOptions::qos(QoS::ExactlyOnce))
                .await;
            subscribed = true;
            shared.ready.fetch_add(1, Ordering::SeqCst);
        } else if !ack.session_present {
            shared
                .ledger
                .lock()
                .violations
                .push(format!("{id}: session lost"));
        }
        rounds += 1;
        let leave_at = (role == Role::Group)
            .then(|| tokio::time::Instant::now() + Duration::from_millis(200 + 97 * (rounds % 7)));
        loop {
            if leave_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)))
                    .await;
                tokio::time::sleep(Duration::from_millis(150 + 53 * (rounds % 5))).await;
                break;
            }
            match c.recv_within(Duration::from_millis(100)).await {
                Recv::Packet(Packet::Publish(p)) => {
                    let Ok(msg) = std::str::from_utf8(&p.payload).map(str::to_string) else {
                        continue;
                    };
                    let fresh = p.qos != QoS::ExactlyOnce || awaiting_rel.insert(p.packet_id);
                    if fresh {
                        let mut l = shared.ledger.lock();
                        let seen = match role {
                            Role::Plain => &mut l.plain,
                            Role::Group => &mut l.group,
                        };
                        *seen.entry(msg).or_default() += 1;
                    }
                    let ack = PubAck::new(p.packet_id);
                    match p.qos {
                        QoS::ExactlyOnce => c.send(&Packet::PubRec(ack)).await,
                        QoS::AtLeastOnce => c.send(&Packet::PubAck(ack)).await,
                        QoS::AtMostOnce => {}
                    }
                }
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

#[derive(Clone, PartialEq)]
enum Stage {
    Ack,
    Rec,
    Comp,
}

struct Outgoing {
    topic: String,
    payload: String,
    qos: QoS,
    retain: bool,
    stage: Stage,
}

/// What publisher `index` sends as its `n`-th message.
fn message(index: u64, n: u64) -> (String, QoS, bool) {
    let qos = if n.is_multiple_of(2) {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    };
    if index < 2 && n.is_multiple_of(5) {
        (format!("t/ret/{}", n % RETAINED_TOPICS), qos, true)
    } else if index == 0 && n.is_multiple_of(7) {
        ("t/big".to_string(), QoS::AtLeastOnce, false)
    } else {
        (format!("t/data/{index}"), qos, false)
    }
}

/// Records an acknowledgement (`reason` of the PUBACK or PUBREC) of `out`.
fn acknowledged(shared: &Shared, out: &Outgoing, reason: ReasonCode) {
    let now = shared.tick();
    let mut l = shared.ledger.lock();
    if reason == ReasonCode::QUOTA_EXCEEDED && out.topic == "t/big" {
        // Within `stalled_subscriber_ms` of a restart the gone subscriber still counts as
        // one that may come back: its full queue refuses, as for a draining one.
        l.big_refused += 1;
        return;
    }
    if reason.is_error() {
        l.violations
            .push(format!("{}: refused with {reason:?}", out.payload));
        return;
    }
    if out.retain {
        let sent = l.retained_sent.get(&out.payload).copied().unwrap_or(0);
        let ack = RetainedAck { sent, acked: now };
        l.retained_acked
            .entry(out.topic.clone())
            .or_default()
            .insert(out.payload.clone(), ack);
    } else if out.topic == "t/big" {
        l.big_acked += 1;
    } else {
        l.acked.insert(out.payload.clone(), out.qos);
    }
}

fn publish_packet(out: &Outgoing, packet_id: u16, dup: bool) -> Packet {
    let mut payload = out.payload.clone().into_bytes();
    if out.topic == "t/big" {
        payload.resize(32 * 1024, b' ');
    }
    Packet::Publish(Publish {
        dup,
        qos: out.qos,
        retain: out.retain,
        topic: out.topic.as_str().into(),
        packet_id,
        properties: Default::default(),
        payload: Bytes::from(payload),
    })
}

/// A persistent publisher with a complete sender state machine, 8 messages outstanding.
/// With `takeovers`, it opens a new connection with Clean Start every 40 messages while the
/// old one still has QoS 2 flows open, forgets what was not acknowledged, and starts its
/// packet ids again at 1.
async fn publisher(shared: Arc<Shared>, index: u64, takeovers: bool) {
    let id = format!("torture-pub-{index}");
    let mut inflight: BTreeMap<u16, Outgoing> = BTreeMap::new();
    let mut n = 0u64;
    let mut next_pid = 1u16;
    let mut clean = true;
    let mut old: Option<RawClient> = None;
    'connection: loop {
        let Some((mut c, _)) = connect(&shared, &id, clean).await else {
            if shared.stop_all.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        drop(old.take());
        clean = false;
        for (&pid, out) in &inflight {
            let packet = match out.stage {
                Stage::Comp => Packet::PubRel(PubAck::new(pid)),
                _ => publish_packet(out, pid, true),
            };
            c.send(&packet).await;
        }
        let mut sent_here = 0u64;
        loop {
            let stopping = shared.stop_publishing.load(Ordering::Relaxed);
            if shared.stop_all.load(Ordering::Relaxed) || (stopping && inflight.is_empty()) {
                return;
            }
            if takeovers && sent_here >= 40 && inflight.values().any(|o| o.stage != Stage::Ack) {
                // Take the session over with Clean Start in the middle of QoS 2 flows.
                inflight.clear();
                next_pid = 1;
                clean = true;
                old = Some(c);
                continue 'connection;
            }
            while inflight.len() < 8 && !stopping {
                n += 1;
                let (topic, qos, retain) = message(index, n);
                let payload = format!("p{index}:{n}");
                if retain {
                    let now = shared.tick();
                    shared
                        .ledger
                        .lock()
                        .retained_sent
                        .insert(payload.clone(), now);
                }
                let stage = match qos {
                    QoS::ExactlyOnce => Stage::Rec,
                    _ => Stage::Ack,
                };
                while inflight.contains_key(&next_pid) {
                    next_pid = next_pid.checked_add(1).unwrap_or(1);
                }
                let out = Outgoing {
                    topic,
                    payload,
                    qos,
                    retain,
                    stage,
                };
                c.send(&publish_packet(&out, next_pid, false)).await;
                inflight.insert(next_pid, out);
                sent_here += 1;
            }
            match c.recv_within(Duration::from_millis(200)).await {
                Recv::Packet(Packet::PubAck(a)) => {
                    if inflight
                        .get(&a.packet_id)
                        .is_some_and(|o| o.stage == Stage::Ack)
                    {
                        if let Some(out) = inflight.remove(&a.packet_id) {
                            acknowledged(&shared, &out, a.reason);
                        }
                    }
                }
                Recv::Packet(Packet::PubRec(a)) => {
                    let Some(out) = inflight.get_mut(&a.packet_id) else {
                        continue;
                    };
                    if out.stage == Stage::Rec {
                        acknowledged(&shared, out, a.reason);
                        if a.reason.is_error() {
                            inflight.remove(&a.packet_id);
                            continue;
                        }
                        out.stage = Stage::Comp;
                    }
                    c.send(&Packet::PubRel(PubAck::new(a.packet_id))).await;
                }
                Recv::Packet(Packet::PubComp(a)) => {
                    if inflight
                        .get(&a.packet_id)
                        .is_some_and(|o| o.stage == Stage::Comp)
                    {
                        inflight.remove(&a.packet_id);
                    }
                }
                Recv::Packet(_) | Recv::Timeout => {}
                Recv::Closed | Recv::Invalid(_) => continue 'connection,
            }
        }
    }
}

/// The retained value of `topic`, read with a fresh client.
async fn retained_value(addr: SocketAddr, topic: &str) -> Option<String> {
    let mut c = RawClient::try_tcp(addr, V5).await?;
    c.try_handshake("torture-retained-reader", true, |_| {})
        .await?;
    let subscribe = Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(topic.to_string(), SubscriptionOptions::qos(QoS::AtMostOnce))],
    };
    c.send(&Packet::Subscribe(subscribe)).await;
    // Live copies of a publisher's update may come first (even before the SUBACK, as the spec
    // allows): only the copy with RETAIN set is the retained value.
    loop {
        match c.recv_within(Duration::from_millis(500)).await {
            Recv::Packet(Packet::Publish(p)) if p.retain => {
                return String::from_utf8(p.payload.to_vec()).ok();
            }
            Recv::Packet(_) => {}
            _ => return None,
        }
    }
}

/// Checks that each retained topic holds no update that an acknowledged one, sent after it
/// was acknowledged, replaced.
async fn check_retained(shared: &Shared, addr: SocketAddr, cycle: u32) {
    for k in 0..RETAINED_TOPICS {
        let topic = format!("t/ret/{k}");
        let acked = shared
            .ledger
            .lock()
            .retained_acked
            .get(&topic)
            .cloned()
            .unwrap_or_default();
        if acked.is_empty() {
            continue;
        }
        let value = retained_value(addr, &topic).await;
        let Some(value) = value else {
            shared
                .ledger
                .lock()
                .violations
                .push(format!("cycle {cycle}: {topic} lost its retained message"));
            continue;
        };
        let Some(held) = acked.get(&value) else {
            continue; // an update in flight at the kill; it may legitimately have won
        };
        if let Some((newer, _)) = acked.iter().find(|(_, a)| a.sent > held.acked) {
            shared.ledger.lock().violations.push(format!(
                "cycle {cycle}: {topic} rolled back to {value}; {newer} was sent after it was \
                 acknowledged, and acknowledged"
            ));
        }
    }
}

/// The broker's configuration: per-session queues small enough in bytes that the subscriber
/// that never returns fills its queue with the large messages, large enough in count that the
/// others never do.
const CONFIG: &str = "[limits]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1048576\n\
                      stalled_subscriber_ms = 500\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_sigkill_with_groups_takeovers_competing_retains_and_a_full_queue() {
    let cycles: u32 = std::env::var("KEELMQ_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let seed: u64 = std::env::var("KEELMQ_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("torture: {cycles} cycles, seed {seed} (KEELMQ_CRASH_SEED to replay the timings)");
    let mut rng = seed | 1;
    let mut next_rand = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let dir = common::temp_dir("torture");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("keelmq.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let data = dir.join("data");
    let (data_arg, config_arg) = (data.display().to_string(), config.display().to_string());
    let args = [
        "--data-dir",
        data_arg.as_str(),
        "--config",
        config_arg.as_str(),
    ];
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_keelmq"));
    let shared = Arc::new(Shared {
        addr: Mutex::new(None),
        ledger: Mutex::new(Ledger::default()),
        clock: AtomicU64::new(1),
        stop_publishing: AtomicBool::new(false),
        stop_all: AtomicBool::new(false),
        ready: AtomicU64::new(0),
    });
    let mut broker = common::BrokerProcess::start_with(&binary, &args);
    *shared.addr.lock() = Some(broker.addr);
    // The subscriber that never comes back: subscribed to the large messages, then gone.
    let (mut gone, _) = RawClient::connect(broker.addr, V5, "torture-gone", true, |c| {
        c.properties.session_expiry_interval = Some(u32::MAX)
    })
    .await;
    gone.subscribe(1, "t/big", SubscriptionOptions::qos(QoS::AtLeastOnce))
        .await;
    drop(gone);
    let mut subscribers = vec![tokio::spawn(subscriber(
        shared.clone(),
        "torture-plain",
        "t/data/#",
        Role::Plain,
    ))];
    for id in ["torture-member-a", "torture-member-b"] {
        let s = subscriber(shared.clone(), id, "$share/g/t/data/#", Role::Group);
        subscribers.push(tokio::spawn(s));
    }
    while shared.ready.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| tokio::spawn(publisher(shared.clone(), i, i == 2)))
        .collect();
    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(200 + next_rand(500))).await;
        *shared.addr.lock() = None;
        drop(broker); // SIGKILL, then wait for the process to be gone
        broker = common::BrokerProcess::start_with(&binary, &args);
        *shared.addr.lock() = Some(broker.addr);
        check_retained(&shared, broker.addr, cycle).await;
    }
    shared.stop_publishing.store(true, Ordering::Relaxed);
    for p in publishers {
        let _ = tokio::time::timeout(Duration::from_secs(20), p).await;
    }
    let missing = |l: &Ledger| -> Vec<String> {
        l.acked
            .keys()
            .filter(|m| !l.plain.contains_key(*m) || !l.group.contains_key(*m))
            .cloned()
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !missing(&shared.ledger.lock()).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_retained(&shared, broker.addr, cycles).await;
    shared.stop_all.store(true, Ordering::Relaxed);
    for s in subscribers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    let l = shared.ledger.lock();
    let lost = missing(&l);
    let duplicated: Vec<(&String, u32, u32)> = l
        .acked
        .iter()
        .filter(|(_, q)| **q == QoS::ExactlyOnce)
        .map(|(m, _)| {
            (
                m,
                l.plain.get(m).copied().unwrap_or(0),
                l.group.get(m).copied().unwrap_or(0),
            )
        })
        .filter(|(_, p, g)| *p > 1 || *g > 1)
        .collect();
    eprintln!(
        "torture: {} data messages acknowledged, {} large ones ({} refused while the gone \
         subscriber's grace ran), {} retained updates; lost {}, QoS 2 duplicated {}, \
         violations {}",
        l.acked.len(),
        l.big_acked,
        l.big_refused,
        l.retained_acked.values().map(HashMap::len).sum::<usize>(),
        lost.len(),
        duplicated.len(),
        l.violations.len()
    );
    let keep = !(lost.is_empty() && duplicated.is_empty() && l.violations.is_empty());
    if keep {
        eprintln!(
            "data directory kept for `keelmq inspect --dump`: {}",
            data.display()
        );
    }
    assert!(l.acked.len() > 100, "the load ran");
    assert!(l.big_acked > 20, "the full queue was exercised");
    assert!(lost.is_empty(), "acknowledged, never delivered: {lost:?}");
    assert!(
        duplicated.is_empty(),
        "QoS 2 delivered twice: {duplicated:?}"
    );
    assert!(l.violations.is_empty(), "{:?}", l.violations);
    drop(l);
    drop(broker);
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
