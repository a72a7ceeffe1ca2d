//! `keelmq verify`: a crash-consistency checker for any MQTT broker.
//!
//! A publisher sends sequence-numbered QoS 1 or 2 messages (every tenth retained) with a
//! persistent session; a persistent subscriber receives them, going offline now and then. Both
//! implement their side of the QoS flows completely (the subscriber remembers QoS 2 packet ids
//! awaiting PUBREL across reconnects; the publisher re-sends PUBLISH or PUBREL), so every
//! violation found is the broker's. Optionally the broker is started with `--start-cmd` and
//! SIGKILLed and restarted `--kills` times. At the end it reports published, acknowledged
//! (PUBACK / PUBREC seen), received, lost (acknowledged, never received), duplicated (a QoS 2
//! duplicate is a failure), sessions lost (no session present after a reconnect), and retained
//! roll-backs; any violation makes it fail.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::client::{Client, Recv};
use keelmq_codec::*;

/// What to run.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub addr: SocketAddr,
    pub qos: QoS,
    pub version: ProtocolVersion,
    /// Shell command that starts the broker (run as `sh -c "exec CMD"`, so SIGKILL reaches it).
    pub start_cmd: Option<String>,
    pub kills: u32,
    /// Load time between kills (and the whole run without kills).
    pub cycle: Duration,
    /// Messages outstanding at the publisher.
    pub window: usize,
}

/// What was seen.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    pub published: u64,
    pub acknowledged: u64,
    pub received: u64,
    pub lost: Vec<u64>,
    pub duplicated_qos2: Vec<u64>,
    pub duplicated_qos1: u64,
    pub sessions_lost: u64,
    pub violations: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated_qos2.is_empty()
            && self.sessions_lost == 0
            && self.violations.is_empty()
    }
}

#[derive(Default)]
struct Ledger {
    acked: HashSet<u64>,
    received: HashMap<u64, u32>,
    max_acked_retained: u64,
    sessions_lost: u64,
    violations: Vec<String>,
}

struct Shared {
    opts: VerifyOptions,
    up: AtomicBool,
    ledger: Mutex<Ledger>,
    stop_publishing: AtomicBool,
    stop_all: AtomicBool,
    subscribed: AtomicBool,
    published: AtomicU64,
}

const TOPIC: &str = "keelmq-verify/data";
const RETAINED: &str = "keelmq-verify/retained";
const WAIT: Duration = Duration::from_secs(3);

fn seq_of(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload)
        .ok()?
        .strip_prefix("seq:")?
        .parse()
        .ok()
}

/// Connects with a persistent session. `fresh` first discards any earlier session: in 5.0 by
/// Clean Start (the expiry keeps the new one), in 3.x by a Clean Session connection of its own
/// (Clean Session 1 would make the new session non-persistent).
async fn connect(shared: &Shared, id: &str, fresh: bool) -> Option<(Client, ConnAck)> {
    if !shared.up.load(Ordering::Relaxed) {
        return None;
    }
    let o = &shared.opts;
    let v5 = o.version.is_v5();
    if fresh && !v5 {
        let (mut c, _) = Client::connect(o.addr, o.version, id, true, 0, WAIT).await?;
        c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)))
            .await;
    }
    let clean = fresh && v5;
    let (c, ack) = Client::connect(o.addr, o.version, id, clean, 3600, WAIT).await?;
    (ack.code == ReasonCode::SUCCESS).then_some((c, ack))
}

async fn subscriber(shared: Arc<Shared>) {
    let mut awaiting_rel: HashSet<u16> = HashSet::new();
    let mut first = true;
    let mut rounds = 0u32;
    while !shared.stop_all.load(Ordering::Relaxed) {
        let Some((mut c, ack)) = connect(&shared, "keelmq-verify-sub", first).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if first {
            let options = SubscriptionOptions::qos(QoS::ExactlyOnce);
            let filters = vec![("keelmq-verify/#".to_string(), options)];
            c.send(&Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Default::default(),
                filters,
            }))
            .await;
            first = false;
        } else if !ack.session_present {
            shared.ledger.lock().sessions_lost += 1;
        }
        rounds += 1;
        let offline_at = rounds
            .is_multiple_of(3)
            .then(|| Instant::now() + Duration::from_millis(150));
        loop {
            if offline_at.is_some_and(|t| Instant::now() >= t) {
                c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)))
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                break;
            }
            match c.recv(Duration::from_millis(100)).await {
                Recv::Packet(Packet::Publish(p)) => {
                    let seq = seq_of(&p.payload);
                    match p.qos {
                        QoS::ExactlyOnce => {
                            if awaiting_rel.insert(p.packet_id) {
                                if let Some(seq) = seq {
                                    *shared.ledger.lock().received.entry(seq).or_default() += 1;
                                }
                            }
                            c.send(&Packet::PubRec(PubAck::new(p.packet_id))).await;
                        }
                        QoS::AtLeastOnce => {
                            if let Some(seq) = seq {
                                *shared.ledger.lock().received.entry(seq).or_default() += 1;
                            }
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
                Recv::Timeout if shared.stop_all.load(Ordering::Relaxed) => return,
                Recv::Timeout => {}
                Recv::Closed | Recv::Invalid(_) => break,
            }
        }
    }
}

/// The acknowledgement a publish in flight waits for.
#[derive(Clone, Copy, PartialEq)]
enum Awaiting {
    /// PUBACK (QoS 1).
    Ack,
    /// PUBREC (QoS 2, first half).
    Rec,
    /// PUBCOMP (QoS 2, after our PUBREL).
    Comp,
}

fn publish_packet(seq: u64, qos: QoS, retain: bool, packet_id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic: if retain { RETAINED } else { TOPIC }.into(),
        packet_id,
        properties: Default::default(),
        payload: Bytes::from(format!("seq:{seq}")),
    })
}

async fn publisher(shared: Arc<Shared>) {
    let qos = shared.opts.qos;
    let mut inflight: BTreeMap<u16, (u64, bool, Awaiting)> = BTreeMap::new();
    let (mut next_seq, mut next_pid, mut first) = (1u64, 1u16, true);
    while !shared.subscribed.load(Ordering::Relaxed) {
        if shared.stop_all.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loop {
        let stopping = shared.stop_publishing.load(Ordering::Relaxed);
        if shared.stop_all.load(Ordering::Relaxed) || (stopping && inflight.is_empty()) {
            return;
        }
        let Some((mut c, _)) = connect(&shared, "keelmq-verify-pub", first).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        first = false;
        for (&pid, &(seq, retain, stage)) in &inflight {
            let p = match stage {
                Awaiting::Comp => Packet::PubRel(PubAck::new(pid)),
                _ => publish_packet(seq, qos, retain, pid, true),
            };
            c.send(&p).await;
        }
        loop {
            while inflight.len() < shared.opts.window
                && !shared.stop_publishing.load(Ordering::Relaxed)
            {
                let retain = next_seq % 10 == 0;
                while inflight.contains_key(&next_pid) {
                    next_pid = next_pid.checked_add(1).unwrap_or(1);
                }
                let stage = if qos == QoS::ExactlyOnce {
                    Awaiting::Rec
                } else {
                    Awaiting::Ack
                };
                inflight.insert(next_pid, (next_seq, retain, stage));
                c.send(&publish_packet(next_seq, qos, retain, next_pid, false))
                    .await;
                shared.published.fetch_add(1, Ordering::Relaxed);
                next_seq += 1;
            }
            let acked = |shared: &Shared, seq: u64, retain: bool, reason: ReasonCode| {
                let mut l = shared.ledger.lock();
                if reason.is_error() {
                    return; // refused: not acknowledged
                }
                if reason != ReasonCode::SUCCESS {
                    l.violations
                        .push(format!("seq {seq} acknowledged with {reason:?}"));
                }
                l.acked.insert(seq);
                if retain {
                    l.max_acked_retained = l.max_acked_retained.max(seq);
                }
            };
            match c.recv(Duration::from_millis(200)).await {
                Recv::Packet(Packet::PubAck(a)) => {
                    if let Some((seq, retain, Awaiting::Ack)) = inflight.get(&a.packet_id).copied()
                    {
                        inflight.remove(&a.packet_id);
                        acked(&shared, seq, retain, a.reason);
                    }
                }
                Recv::Packet(Packet::PubRec(a)) => {
                    if let Some(entry) = inflight.get_mut(&a.packet_id) {
                        if entry.2 == Awaiting::Rec {
                            acked(&shared, entry.0, entry.1, a.reason);
                            if a.reason.is_error() {
                                inflight.remove(&a.packet_id);
                                continue;
                            }
                            entry.2 = Awaiting::Comp;
                        }
                    }
                    c.send(&Packet::PubRel(PubAck::new(a.packet_id))).await;
                }
                Recv::Packet(Packet::PubComp(a)) => {
                    if inflight
                        .get(&a.packet_id)
                        .is_some_and(|e| e.2 == Awaiting::Comp)
                    {
                        inflight.remove(&a.packet_id);
                    }
                }
                Recv::Packet(_) => {}
                Recv::Timeout => {
                    let stopping = shared.stop_publishing.load(Ordering::Relaxed);
                    if shared.stop_all.load(Ordering::Relaxed) || (stopping && inflight.is_empty())
                    {
                        return;
                    }
                }
                Recv::Closed | Recv::Invalid(_) => break,
            }
        }
    }
}

/// What reading the retained value found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetainedRead {
    /// The retained message carried this sequence number.
    Seq(u64),
    /// The SUBSCRIBE was acknowledged and no retained message followed: there is none.
    Missing,
    /// The broker did not answer in time (no CONNACK or SUBACK): nothing can be said.
    NoAnswer,
}

/// Reads the retained value the broker holds now.
async fn retained_seq(opts: &VerifyOptions) -> RetainedRead {
    let connected = Client::connect(
        opts.addr,
        opts.version,
        "keelmq-verify-retained",
        true,
        0,
        WAIT,
    )
    .await;
    let Some((mut c, _)) = connected else {
        return RetainedRead::NoAnswer;
    };
    let filters = vec![(
        RETAINED.to_string(),
        SubscriptionOptions::qos(QoS::AtMostOnce),
    )];
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters,
    }))
    .await;
    let mut acknowledged = false;
    loop {
        // The retained copy follows the SUBACK at once; the SUBACK may wait (for the
        // retained index to load after a restart, or for the SUBSCRIBE's fdatasync).
        let wait = if acknowledged {
            Duration::from_millis(500)
        } else {
            WAIT
        };
        match c.recv(wait).await {
            Recv::Packet(Packet::Publish(p)) => {
                return seq_of(&p.payload).map_or(RetainedRead::Missing, RetainedRead::Seq)
            }
            Recv::Packet(Packet::SubAck(_)) => acknowledged = true,
            Recv::Packet(_) => {}
            _ if acknowledged => return RetainedRead::Missing,
            _ => return RetainedRead::NoAnswer,
        }
    }
}

fn start_broker(cmd: &str, addr: SocketAddr) -> anyhow::Result<Child> {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("the broker started by {cmd:?} did not accept connections on {addr} within 60 s")
}

fn kill(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

/// Runs the check, printing a progress line per second to stderr.
pub async fn run(opts: VerifyOptions) -> anyhow::Result<VerifyReport> {
    let mut broker = match &opts.start_cmd {
        Some(cmd) => Some(tokio::task::block_in_place(|| {
            start_broker(cmd, opts.addr)
        })?),
        None => None,
    };
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        up: AtomicBool::new(true),
        ledger: Mutex::new(Ledger::default()),
        stop_publishing: AtomicBool::new(false),
        stop_all: AtomicBool::new(false),
        subscribed: AtomicBool::new(false),
        published: AtomicU64::new(0),
    });
    let sub = tokio::spawn(subscriber(shared.clone()));
    let publ = tokio::spawn(publisher(shared.clone()));
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let l = shared.ledger.lock();
                eprintln!(
                    "[{:>4}s] published {} acknowledged {} received {}",
                    started.elapsed().as_secs(),
                    shared.published.load(Ordering::Relaxed),
                    l.acked.len(),
                    l.received.len()
                );
            }
        })
    };
    for kill_no in 0..=opts.kills {
        tokio::time::sleep(opts.cycle).await;
        if kill_no == opts.kills {
            break;
        }
        let Some(child) = broker.as_mut() else { break };
        let acked_retained = shared.ledger.lock().max_acked_retained;
        shared.up.store(false, Ordering::Relaxed);
        kill(child);
        eprintln!("killed the broker ({} of {})", kill_no + 1, opts.kills);
        if let Some(cmd) = &opts.start_cmd {
            broker = Some(tokio::task::block_in_place(|| {
                start_broker(cmd, opts.addr)
            })?);
        }
        shared.up.store(true, Ordering::Relaxed);
        if acked_retained > 0 {
            let seen = retained_seq(&opts).await;
            let rolled_back = match seen {
                RetainedRead::Seq(s) => s < acked_retained,
                RetainedRead::Missing => true,
                RetainedRead::NoAnswer => {
                    eprintln!(
                        "after kill {}: the retained check got no answer",
                        kill_no + 1
                    );
                    false
                }
            };
            if rolled_back {
                shared.ledger.lock().violations.push(format!(
                    "after kill {}: retained is {seen:?}, {acked_retained} was acknowledged",
                    kill_no + 1
                ));
            }
        }
    }
    shared.stop_publishing.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), publ).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let missing = {
            let l = shared.ledger.lock();
            l.acked.iter().any(|s| !l.received.contains_key(s))
        };
        if !missing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.stop_all.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(5), sub).await;
    progress.abort();
    if let Some(child) = broker.as_mut() {
        kill(child);
    }
    let l = shared.ledger.lock();
    let mut lost: Vec<u64> = l
        .acked
        .iter()
        .filter(|s| !l.received.contains_key(s))
        .copied()
        .collect();
    lost.sort_unstable();
    let dups = l.received.iter().filter(|(_, n)| **n > 1);
    let (mut duplicated_qos2, mut duplicated_qos1) = (Vec::new(), 0);
    for (seq, _) in dups {
        if opts.qos == QoS::ExactlyOnce {
            duplicated_qos2.push(*seq);
        } else {
            duplicated_qos1 += 1;
        }
    }
    duplicated_qos2.sort_unstable();
    Ok(VerifyReport {
        published: shared.published.load(Ordering::Relaxed),
        acknowledged: l.acked.len() as u64,
        received: l.received.len() as u64,
        lost,
        duplicated_qos2,
        duplicated_qos1,
        sessions_lost: l.sessions_lost,
        violations: l.violations.clone(),
    })
}
