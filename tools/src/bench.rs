//! `keelmq bench conn|sub|pub`: a load generator for any MQTT broker, modelled on emqtt-bench.
//!
//! - `conn` opens `--clients` connections at `--conn-rate` per second and keeps them idle
//!   (pinging) until `--duration` ends.
//! - `sub` connects subscribers to `--topic` and receives until `--duration` ends, or until
//!   nothing has arrived for `--idle-exit` once something has.
//! - `pub` connects publishers that send to `--topic` (`%i` is the client index) unpaced, or at
//!   `--interval-ms` per client, or at a total `--rate`, until `--duration` ends or each has sent
//!   `--limit` messages; then waits for the outstanding acknowledgements. `%s` in the topic is
//!   the message's sequence number (one topic per message, e.g. to fill the retained store).
//!
//! Every payload starts with a 28-byte header — magic `kqb1`, a per-process nonce (u32), the
//! publisher index (u32), a sequence number (u64, from 0) and the send time (u64 ns since the
//! Unix epoch), all big-endian — so that a subscriber measures end-to-end latency and counts
//! duplicates and gaps (lost) per publisher stream, without any coordination with the
//! publishers. Gap counting assumes each subscriber receives every message of a stream (not
//! true of shared subscriptions); messages lost after the last one a subscriber saw are not
//! visible to it, so scripts compare its unique count with the publishers' acknowledged count.
//!
//! Each client runs one task with a read/write loop over its own socket; nothing is shared on
//! the hot path but atomic counters. Bounds: a client's unsent output is capped at 64 KiB, a
//! publisher has at most `--inflight` unacknowledged QoS 1/2 messages, and latency histograms
//! have a fixed size. A live line per second goes to stderr, with that second's latency
//! percentiles (each client merges its histogram into the run's about once a second); the
//! final summary is printed as text, and its last line is one JSON object for scripts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::client::{Client, Stream, Via};
use keelmq_codec::*;

/// Bytes at the start of every bench payload.
pub const HEADER_LEN: usize = 28;
const MAGIC: &[u8; 4] = b"kqb1";
/// Unsent output a client buffers before it stops producing.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// How long a publisher waits for outstanding acknowledgements after it stops sending.
const DRAIN: Duration = Duration::from_secs(10);
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Latencies above this (µs) are recorded as this value.
const HIST_MAX_US: u64 = 3_600_000_000;

/// Options every mode shares.
#[derive(Debug, Clone)]
pub struct Common {
    pub addr: SocketAddr,
    /// Connect over TLS (`--cafile`) and/or WebSocket (`--ws-path`).
    pub via: Via,
    pub clients: u32,
    /// New connections per second; 0 means as fast as the broker accepts them (at most
    /// `MAX_CONCURRENT_CONNECTS` handshakes at once).
    pub conn_rate: u32,
    pub version: ProtocolVersion,
    /// Client ids are `{prefix}-{index}`.
    pub prefix: String,
    /// Index of the first client (for several generators against one broker).
    pub first_index: u32,
    pub duration: Option<Duration>,
    pub keep_alive: u16,
    /// Connect with Clean Start / Clean Session.
    pub clean: bool,
    /// Session Expiry Interval sent in 5.0 (0 = ends with the connection).
    pub session_expiry: u32,
    /// Print the live line every second.
    pub live: bool,
}

#[derive(Debug, Clone)]
pub struct PubOptions {
    pub common: Common,
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub size: usize,
    /// Per-client pause between messages.
    pub interval: Option<Duration>,
    /// Total messages per second over all publishers (split evenly).
    pub rate: Option<f64>,
    /// Messages per publisher; 0 = until the duration ends.
    pub limit: u64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    pub inflight: usize,
    /// JSON payloads ([`payload_json`]).
    pub json: bool,
}

#[derive(Debug, Clone)]
pub struct SubOptions {
    pub common: Common,
    pub topic: String,
    pub qos: QoS,
    /// Stop once nothing has arrived for this long, after the first message.
    pub idle_exit: Option<Duration>,
    /// Stop as soon as every subscriber has its SUBACK (to set up persistent sessions).
    pub exit_when_subscribed: bool,
}

const MAX_CONCURRENT_CONNECTS: usize = 256;

/// Counters shared by the clients of one run (all monotonic).
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    conn_errors: AtomicU64,
    /// Connections that ended before the run did.
    dropped: AtomicU64,
    subscribed: AtomicU64,
    sub_errors: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    ack_errors: AtomicU64,
    received: AtomicU64,
    unique: AtomicU64,
    duplicated: AtomicU64,
    inflight: AtomicU64,
    first_receive_ms: AtomicU64,
    last_receive_ms: AtomicU64,
}

struct Run {
    mode: &'static str,
    clients: u64,
    ready: AtomicBool,
    /// End the run once `ready` (every client connected / subscribed, or failed).
    stop_when_ready: AtomicBool,
    counters: Counters,
    start: Instant,
    /// Set when the run should end (duration over, idle exit).
    stop: AtomicBool,
    stop_notify: tokio::sync::Notify,
    latency: Mutex<Histogram<u64>>,
    connect_latency: Mutex<Histogram<u64>>,
    streams: Mutex<StreamTotals>,
    nonce: u32,
}

#[derive(Default)]
struct StreamTotals {
    lost: u64,
    streams: u64,
}

impl Run {
    fn new(mode: &'static str, clients: u32) -> anyhow::Result<Arc<Run>> {
        let nonce = (now_ns() as u32) ^ std::process::id().rotate_left(16);
        Ok(Arc::new(Run {
            mode,
            clients: clients as u64,
            ready: AtomicBool::new(false),
            stop_when_ready: AtomicBool::new(false),
            counters: Counters::default(),
            start: Instant::now(),
            stop: AtomicBool::new(false),
            stop_notify: tokio::sync::Notify::new(),
            latency: Mutex::new(histogram()?),
            connect_latency: Mutex::new(histogram()?),
            streams: Mutex::new(StreamTotals::default()),
            nonce,
        }))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stop_notify.notify_waiters();
    }

    /// Resolves once `stop` has been called (checked first, so no wake-up is missed).
    async fn wait_stop(&self) {
        loop {
            let notified = self.stop_notify.notified();
            if self.stopped() {
                return;
            }
            notified.await;
        }
    }

    /// Prints `ready: ...` on stderr once every client has connected (`sub`: subscribed) or
    /// failed, so that scripts know when to start the next step.
    fn maybe_ready(&self) {
        let c = &self.counters;
        let ok = if self.mode == "sub" {
            &c.subscribed
        } else {
            &c.connected
        };
        let ok = ok.load(Ordering::Relaxed);
        let failed = c.conn_errors.load(Ordering::Relaxed) + c.sub_errors.load(Ordering::Relaxed);
        if ok + failed >= self.clients && !self.ready.swap(true, Ordering::Relaxed) {
            eprintln!(
                "ready: {ok} of {} {}",
                self.clients,
                if self.mode == "sub" {
                    "subscribed"
                } else {
                    "connected"
                }
            );
            if self.stop_when_ready.load(Ordering::Relaxed) {
                self.stop();
            }
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Adds a client's latencies to the run's histogram and starts afresh, once a second.
fn flush_latency(run: &Run, latency: &mut Histogram<u64>, flushed: &mut Instant) {
    if flushed.elapsed() >= Duration::from_secs(1) {
        let _ = run.latency.lock().add(&*latency);
        latency.reset();
        *flushed = Instant::now();
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).context("latency histogram")
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Writes a bench payload of `size` bytes (at least [`HEADER_LEN`]).
pub fn payload(nonce: u32, index: u32, seq: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(HEADER_LEN));
    b.put_slice(MAGIC);
    b.put_u32(nonce);
    b.put_u32(index);
    b.put_u64(seq);
    b.put_u64(now_ns());
    b.resize(size.max(HEADER_LEN), b'x');
    b.freeze()
}

/// A bench payload as a JSON object: `{"a": <seq>, "b": 1, "h": "<the header in hex>"}`,
/// padded with spaces to `size` bytes.
pub fn payload_json(nonce: u32, index: u32, seq: u64, size: usize) -> Bytes {
    let header = payload(nonce, index, seq, HEADER_LEN);
    let hex: String = header.iter().map(|b| format!("{b:02x}")).collect();
    let mut text = format!(r#"{{"a":{seq},"b":1,"h":"{hex}"}}"#);
    if text.len() < size {
        text.extend(std::iter::repeat_n(' ', size - text.len()));
    }
    Bytes::from(text)
}

/// The header of a [`payload_json`] payload.
fn parse_json_payload(p: &[u8]) -> Option<(u32, u32, u64, u64)> {
    const KEY: &[u8] = br#""h":""#;
    let at = p.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let hex = p.get(at..at + 2 * HEADER_LEN)?;
    let bytes: Option<Vec<u8>> = hex
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect();
    parse_payload(&bytes?)
}

/// The header of a bench payload (binary or [`payload_json`]): (nonce, index, seq, sent at
/// ns); `None` for other payloads.
pub fn parse_payload(p: &[u8]) -> Option<(u32, u32, u64, u64)> {
    if p.first() == Some(&b'{') {
        return parse_json_payload(p);
    }
    if p.len() < HEADER_LEN || &p[..4] != MAGIC {
        return None;
    }
    let mut b = &p[4..HEADER_LEN];
    Some((b.get_u32(), b.get_u32(), b.get_u64(), b.get_u64()))
}

/// Which sequence numbers of one publisher stream a subscriber has seen.
#[derive(Default)]
pub struct SeqTracker {
    bits: Vec<u64>,
    distinct: u64,
    max: Option<u64>,
}

/// Sequence numbers above this are not tracked (counted as neither lost nor duplicated).
const MAX_TRACKED_SEQ: u64 = 1 << 32;

impl SeqTracker {
    /// Records `seq`; false if it was seen before.
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq >= MAX_TRACKED_SEQ {
            return true;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        if self.bits[word] & mask != 0 {
            return false;
        }
        self.bits[word] |= mask;
        self.distinct += 1;
        self.max = Some(self.max.map_or(seq, |m| m.max(seq)));
        true
    }

    /// Sequence numbers below the highest seen that never arrived.
    pub fn gaps(&self) -> u64 {
        self.max.map_or(0, |m| m + 1 - self.distinct)
    }
}

/// The client id of client `index`.
fn client_id(c: &Common, index: u32) -> String {
    format!("{}-{}", c.prefix, index)
}

async fn connect(run: &Run, c: &Common, index: u32) -> Option<Client> {
    let t = Instant::now();
    let id = client_id(c, index);
    let expiry = c.session_expiry;
    match Client::connect_over(
        c.addr,
        &c.via,
        c.version,
        &id,
        c.clean,
        expiry,
        CONNECT_WAIT,
    )
    .await
    {
        Some((client, ack)) if ack.code == ReasonCode::SUCCESS => {
            let us = t.elapsed().as_micros() as u64;
            let _ = run.connect_latency.lock().record(us.clamp(1, HIST_MAX_US));
            run.counters.connected.fetch_add(1, Ordering::Relaxed);
            run.maybe_ready();
            Some(client)
        }
        _ => {
            run.counters.conn_errors.fetch_add(1, Ordering::Relaxed);
            run.maybe_ready();
            None
        }
    }
}

/// Starts `clients` tasks at the configured rate; each gets its index.
async fn spawn_clients<F, Fut>(
    run: &Arc<Run>,
    c: &Common,
    task: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(Arc<Run>, u32, tokio::sync::OwnedSemaphorePermit) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let gate = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CONNECTS));
    let mut handles = Vec::with_capacity(c.clients as usize);
    let pace = (c.conn_rate > 0).then(|| Duration::from_secs_f64(1.0 / c.conn_rate as f64));
    let begin = Instant::now();
    for i in 0..c.clients {
        if run.stopped() {
            break;
        }
        if let Some(pace) = pace {
            tokio::time::sleep_until(begin + pace * i).await;
        }
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        handles.push(tokio::spawn(task(run.clone(), c.first_index + i, permit)));
    }
    handles
}

/// Starts the clients (see [`spawn_clients`]); each connects, then runs `body` with its
/// connection.
async fn spawn_connected<O, F, Fut>(
    run: &Arc<Run>,
    common: &Common,
    opts: Arc<O>,
    body: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    O: Send + Sync + 'static,
    F: Fn(Arc<Run>, Arc<O>, u32, Client) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let connect_with = Arc::new(common.clone());
    spawn_clients(run, common, move |run, index, permit| {
        let (opts, body, c) = (opts.clone(), body.clone(), connect_with.clone());
        async move {
            let Some(client) = connect(&run, &c, index).await else {
                return;
            };
            drop(permit);
            body(run, opts, index, client).await;
        }
    })
    .await
}

/// Ends the run when the duration is over.
fn arm_duration(run: &Arc<Run>, duration: Option<Duration>) {
    if let Some(d) = duration {
        let run = run.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            run.stop();
        });
    }
}

/// The live line, once a second, until the run stops.
fn spawn_live(run: &Arc<Run>, mode: &'static str, enabled: bool) -> tokio::task::JoinHandle<()> {
    let run = run.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let c = &run.counters;
        let (mut sent, mut acked, mut received) = (0, 0, 0);
        // The latency histogram is cumulative; the live line shows the last second's part.
        let mut seen = run.latency.lock().clone();
        loop {
            tick.tick().await;
            let (s, a, r) = (
                c.sent.load(Ordering::Relaxed),
                c.acked.load(Ordering::Relaxed),
                c.received.load(Ordering::Relaxed),
            );
            if enabled {
                let now = run.latency.lock().clone();
                let mut second = now.clone();
                let latency = match second.subtract(&seen) {
                    Ok(()) if !second.is_empty() => format!(
                        " latency p50 {} p99 {} max {} µs",
                        second.value_at_quantile(0.5),
                        second.value_at_quantile(0.99),
                        second.max()
                    ),
                    _ => String::new(),
                };
                seen = now;
                eprintln!(
                    "{:>4}s {mode} conns {} (err {}, dropped {}) sent {}/s acked {}/s recv {}/s inflight {} dup {}{latency}",
                    run.start.elapsed().as_secs(),
                    c.connected.load(Ordering::Relaxed),
                    c.conn_errors.load(Ordering::Relaxed),
                    c.dropped.load(Ordering::Relaxed),
                    s - sent,
                    a - acked,
                    r - received,
                    c.inflight.load(Ordering::Relaxed),
                    c.duplicated.load(Ordering::Relaxed),
                );
            }
            (sent, acked, received) = (s, a, r);
            if run.stopped() {
                return;
            }
        }
    })
}

/// Percentiles of a histogram in µs.
#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

/// The final summary of a run.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Summary {
    pub mode: &'static str,
    pub clients: u32,
    pub connected: u64,
    pub conn_errors: u64,
    pub dropped: u64,
    pub connect_latency: Latency,
    pub elapsed_s: f64,
    pub sent: u64,
    pub sent_per_s: f64,
    /// Publisher side: PUBACK (QoS 1) or PUBREC (QoS 2) received; ack latency is to that.
    pub acked: u64,
    pub acked_per_s: f64,
    pub ack_errors: u64,
    pub ack_latency: Latency,
    pub subscribed: u64,
    pub sub_errors: u64,
    pub received: u64,
    pub unique: u64,
    pub received_per_s: f64,
    pub duplicated: u64,
    /// Gaps in the sequence numbers of each stream a subscriber saw.
    pub lost: u64,
    pub streams: u64,
    /// End-to-end, from the publisher's timestamp in the payload.
    pub latency: Latency,
}

impl Summary {
    fn collect(run: &Run, mode: &'static str, clients: u32, active: Duration) -> Summary {
        let c = &run.counters;
        let secs = active.as_secs_f64().max(1e-9);
        let streams = run.streams.lock();
        let sent = c.sent.load(Ordering::Relaxed);
        let acked = c.acked.load(Ordering::Relaxed);
        let received = c.received.load(Ordering::Relaxed);
        let latency = Latency::of(&run.latency.lock());
        Summary {
            mode,
            clients,
            connected: c.connected.load(Ordering::Relaxed),
            conn_errors: c.conn_errors.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            connect_latency: Latency::of(&run.connect_latency.lock()),
            elapsed_s: secs,
            sent,
            sent_per_s: sent as f64 / secs,
            acked,
            acked_per_s: acked as f64 / secs,
            ack_errors: c.ack_errors.load(Ordering::Relaxed),
            ack_latency: if mode == "pub" {
                latency
            } else {
                Latency::default()
            },
            subscribed: c.subscribed.load(Ordering::Relaxed),
            sub_errors: c.sub_errors.load(Ordering::Relaxed),
            received,
            unique: c.unique.load(Ordering::Relaxed),
            received_per_s: received as f64 / secs,
            duplicated: c.duplicated.load(Ordering::Relaxed),
            lost: streams.lost,
            streams: streams.streams,
            latency: if mode == "sub" {
                latency
            } else {
                Latency::default()
            },
        }
    }

    /// The human-readable summary followed by the JSON line.
    pub fn print(&self) {
        let l = |x: &Latency| {
            format!(
                "p50 {} µs, p90 {} µs, p99 {} µs, max {} µs (n={})",
                x.p50_us, x.p90_us, x.p99_us, x.max_us, x.count
            )
        };
        println!("mode:          {}", self.mode);
        println!(
            "connections:   {} of {} ({} errors, {} dropped); connect {}",
            self.connected,
            self.clients,
            self.conn_errors,
            self.dropped,
            l(&self.connect_latency)
        );
        println!("elapsed:       {:.2} s", self.elapsed_s);
        match self.mode {
            "pub" => {
                println!("sent:          {} ({:.0}/s)", self.sent, self.sent_per_s);
                println!(
                    "acknowledged:  {} ({:.0}/s), {} refused; ack {}",
                    self.acked,
                    self.acked_per_s,
                    self.ack_errors,
                    l(&self.ack_latency)
                );
            }
            "sub" => {
                println!(
                    "subscribed:    {} ({} refused)",
                    self.subscribed, self.sub_errors
                );
                println!(
                    "received:      {} ({:.0}/s), {} unique, {} duplicated, {} lost in {} streams",
                    self.received,
                    self.received_per_s,
                    self.unique,
                    self.duplicated,
                    self.lost,
                    self.streams
                );
                println!("latency:       {}", l(&self.latency));
            }
            _ => {}
        }
        match serde_json::to_string(self) {
            Ok(json) => println!("{json}"),
            Err(e) => println!("{{\"error\": \"{e}\"}}"),
        }
    }
}

/// Starts a run's runtime-independent pieces and waits for every client task.
async fn finish(
    run: &Arc<Run>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    live: tokio::task::JoinHandle<()>,
) {
    for h in handles {
        let _ = h.await;
    }
    run.stop();
    let _ = live.await;
}

/// `keelmq bench conn`.
pub async fn conn(c: Common) -> anyhow::Result<Summary> {
    let run = Run::new("conn", c.clients)?;
    arm_duration(&run, c.duration.or(Some(Duration::from_secs(60))));
    let live = spawn_live(&run, "conn", c.live);
    let handles = spawn_connected(&run, &c, Arc::new(c.clone()), idle).await;
    finish(&run, handles, live).await;
    Ok(Summary::collect(
        &run,
        "conn",
        c.clients,
        run.start.elapsed(),
    ))
}

/// Keeps a connection open with PINGREQs until the run stops.
async fn idle(run: Arc<Run>, c: Arc<Common>, _index: u32, client: Client) {
    let (mut stream, _decoder, _buf) = client.into_parts();
    let mut sink = [0u8; 256];
    let ping_every = Duration::from_secs((c.keep_alive as u64 / 2).max(1));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    loop {
        tokio::select! {
            r = stream.read(&mut sink) => {
                if matches!(r, Ok(0) | Err(_)) {
                    run.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            _ = ping.tick(), if c.keep_alive > 0 => {
                if stream.write_all(&PINGREQ).await.is_err() || stream.flush().await.is_err() {
                    run.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            _ = run.wait_stop() => break,
        }
    }
    let _ = stream.write_all(&DISCONNECT).await;
    let _ = stream.flush().await;
}

const PINGREQ: [u8; 2] = [0xC0, 0x00];
const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// `keelmq bench sub`.
pub async fn sub(o: SubOptions) -> anyhow::Result<Summary> {
    if o.topic.is_empty() {
        bail!("--topic is empty");
    }
    let run = Run::new("sub", o.common.clients)?;
    run.stop_when_ready
        .store(o.exit_when_subscribed, Ordering::Relaxed);
    arm_duration(&run, o.common.duration);
    if let Some(idle) = o.idle_exit {
        let run = run.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let last = run.counters.last_receive_ms.load(Ordering::Relaxed);
                if run.stopped() {
                    return;
                }
                if last > 0 && run.elapsed_ms().saturating_sub(last) >= idle.as_millis() as u64 {
                    run.stop();
                    return;
                }
            }
        });
    }
    let live = spawn_live(&run, "sub", o.common.live);
    let handles = spawn_connected(&run, &o.common, Arc::new(o.clone()), subscriber).await;
    finish(&run, handles, live).await;
    // Receiving time: from the first message to the last one.
    let first = run.counters.first_receive_ms.load(Ordering::Relaxed);
    let last = run.counters.last_receive_ms.load(Ordering::Relaxed);
    let active = Duration::from_millis(last.saturating_sub(first).max(1));
    Ok(Summary::collect(&run, "sub", o.common.clients, active))
}

/// A client's connection split for a read/write loop: its halves, the decoder and the bytes
/// already read, and whether writes must be flushed (TLS).
struct Conn<R, W> {
    rd: R,
    wr: W,
    decoder: Decoder,
    inbuf: BytesMut,
    version: ProtocolVersion,
    flushes: bool,
}

/// Runs `$body` with `$conn`, a [`Conn`] over the halves of `$client`'s stream (a TCP stream
/// split without a lock).
macro_rules! with_conn {
    ($client:expr, |$conn:ident| $body:expr) => {{
        let version = $client.version();
        let (stream, decoder, inbuf) = $client.into_parts();
        let flushes = stream.buffers_writes();
        match stream {
            Stream::Tcp(mut tcp) => {
                let (rd, wr) = tcp.split();
                let $conn = Conn {
                    rd,
                    wr,
                    decoder,
                    inbuf,
                    version,
                    flushes,
                };
                $body.await
            }
            other => {
                let (rd, wr) = tokio::io::split(other);
                let $conn = Conn {
                    rd,
                    wr,
                    decoder,
                    inbuf,
                    version,
                    flushes,
                };
                $body.await
            }
        }
    }};
}

/// Writes some of `out`, or, once it is empty, flushes (`Ok(None)`): a TLS stream holds the
/// last record until then.
async fn write_or_flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &[u8],
) -> std::io::Result<Option<usize>> {
    if out.is_empty() {
        return wr.flush().await.map(|_| None);
    }
    wr.write(out).await.map(Some)
}

async fn subscriber(run: Arc<Run>, o: Arc<SubOptions>, index: u32, client: Client) {
    with_conn!(client, |conn| subscribe_loop(run, o, index, conn))
}

async fn subscribe_loop<R, W>(run: Arc<Run>, o: Arc<SubOptions>, index: u32, conn: Conn<R, W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Conn {
        mut rd,
        mut wr,
        mut decoder,
        mut inbuf,
        version,
        flushes,
    } = conn;
    let mut unflushed = false;
    let mut out = BytesMut::with_capacity(4096);
    let topic = o.topic.replace("%i", &index.to_string());
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(topic, SubscriptionOptions::qos(o.qos))],
    });
    let _ = encode(&subscribe, version, &mut out);
    let mut streams: HashMap<(u32, u32), SeqTracker> = HashMap::new();
    let mut latency = match histogram() {
        Ok(h) => h,
        Err(_) => return,
    };
    // Merged into the run's histogram about once a second, so the live line can show it.
    let mut flushed = Instant::now();
    let c = &run.counters;
    let keep_alive = Duration::from_secs(o.common.keep_alive as u64);
    let mut next_ping = Instant::now() + keep_alive / 2;
    let mut closed = false;
    'run: loop {
        tokio::select! {
            r = rd.read_buf(&mut inbuf) => {
                if matches!(r, Ok(0) | Err(_)) {
                    closed = true;
                    break 'run;
                }
                loop {
                    let packet = match decoder.decode(&mut inbuf) {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(_) => { closed = true; break 'run; }
                    };
                    match packet {
                        Packet::Publish(p) => {
                            c.received.fetch_add(1, Ordering::Relaxed);
                            let now_ms = run.elapsed_ms().max(1);
                            let _ = c.first_receive_ms.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
                            c.last_receive_ms.store(now_ms, Ordering::Relaxed);
                            if let Some((nonce, idx, seq, sent_ns)) = parse_payload(&p.payload) {
                                let us = now_ns().saturating_sub(sent_ns) / 1000;
                                let _ = latency.record(us.clamp(1, HIST_MAX_US));
                                flush_latency(&run, &mut latency, &mut flushed);
                                if streams.entry((nonce, idx)).or_default().insert(seq) {
                                    c.unique.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    c.duplicated.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            let ack = match p.qos {
                                QoS::AtMostOnce => None,
                                QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.packet_id))),
                                QoS::ExactlyOnce => Some(Packet::PubRec(PubAck::new(p.packet_id))),
                            };
                            if let Some(ack) = ack {
                                let _ = encode(&ack, version, &mut out);
                            }
                        }
                        Packet::PubRel(r) => {
                            let _ = encode(&Packet::PubComp(PubAck::new(r.packet_id)), version, &mut out);
                        }
                        Packet::SubAck(a) => {
                            if a.reason_codes.iter().all(|r| !r.is_error()) {
                                c.subscribed.fetch_add(1, Ordering::Relaxed);
                            } else {
                                c.sub_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            run.maybe_ready();
                        }
                        Packet::Disconnect(_) => { closed = true; break 'run; }
                        _ => {}
                    }
                }
            }
            w = write_or_flush(&mut wr, &out), if !out.is_empty() || unflushed => {
                match w {
                    Ok(Some(n)) if n > 0 => { out.advance(n); unflushed = flushes; }
                    Ok(None) => unflushed = false,
                    _ => { closed = true; break 'run; }
                }
            }
            _ = tokio::time::sleep_until(next_ping), if !keep_alive.is_zero() => {
                out.put_slice(&PINGREQ);
                next_ping = Instant::now() + keep_alive / 2;
            }
            _ = run.wait_stop() => break 'run,
        }
    }
    if closed && !run.stopped() {
        c.dropped.fetch_add(1, Ordering::Relaxed);
    }
    if !closed {
        let _ = wr.write_all(&out).await;
        let _ = wr.write_all(&DISCONNECT).await;
        let _ = wr.flush().await;
    }
    let lost: u64 = streams.values().map(SeqTracker::gaps).sum();
    {
        let mut t = run.streams.lock();
        t.lost += lost;
        t.streams += streams.len() as u64;
    }
    let _ = run.latency.lock().add(&latency);
}

/// `keelmq bench pub`.
pub async fn publish(o: PubOptions) -> anyhow::Result<Summary> {
    if o.topic.is_empty() {
        bail!("--topic is empty");
    }
    if o.common.duration.is_none() && o.limit == 0 {
        bail!("give --duration or --limit (or both)");
    }
    if o.qos != QoS::AtMostOnce && o.inflight == 0 {
        bail!("--inflight must be at least 1 for QoS 1 and 2");
    }
    if let Some(rate) = o.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("--rate must be a positive number of messages per second");
        }
    }
    let run = Run::new("pub", o.common.clients)?;
    arm_duration(&run, o.common.duration);
    let live = spawn_live(&run, "pub", o.common.live);
    let handles = spawn_connected(&run, &o.common, Arc::new(o.clone()), publisher).await;
    for h in handles {
        let _ = h.await;
    }
    // Sending time: until the last publisher finished draining.
    let active = run.start.elapsed();
    run.stop();
    let _ = live.await;
    Ok(Summary::collect(&run, "pub", o.common.clients, active))
}

/// Per-client messages per second, if paced.
fn per_client_rate(o: &PubOptions) -> Option<f64> {
    if let Some(rate) = o.rate {
        return Some(rate / o.common.clients.max(1) as f64);
    }
    o.interval
        .filter(|i| !i.is_zero())
        .map(|i| 1.0 / i.as_secs_f64())
}

async fn publisher(run: Arc<Run>, o: Arc<PubOptions>, index: u32, client: Client) {
    with_conn!(client, |conn| publish_loop(run, o, index, conn))
}

async fn publish_loop<R, W>(run: Arc<Run>, o: Arc<PubOptions>, index: u32, conn: Conn<R, W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Conn {
        mut rd,
        mut wr,
        mut decoder,
        mut inbuf,
        version,
        flushes,
    } = conn;
    let mut unflushed = false;
    let c = &run.counters;
    let topic_template = o.topic.replace("%i", &index.to_string());
    let per_message_topic = topic_template.contains("%s");
    let topic = ByteStr::from(topic_template.as_str());
    let mut out = BytesMut::with_capacity(OUT_HIGH_WATER + 4096);
    let mut latency = match histogram() {
        Ok(h) => h,
        Err(_) => return,
    };
    // Merged into the run's histogram about once a second, so the live line can show it.
    let mut flushed = Instant::now();
    let rate = per_client_rate(&o);
    let window = if o.qos == QoS::AtMostOnce {
        usize::MAX
    } else {
        o.inflight
    };
    // Packet id → send time; QoS 2 entries stay until PUBCOMP.
    let mut inflight: HashMap<u16, Instant> = HashMap::with_capacity(window.min(65_535));
    let mut next_id: u16 = 1;
    let mut seq: u64 = 0;
    let began = Instant::now();
    let keep_alive = Duration::from_secs(o.common.keep_alive as u64);
    let mut next_ping = Instant::now() + keep_alive / 2;
    let mut drain_until: Option<Instant> = None;
    let mut closed = false;
    loop {
        let sending = drain_until.is_none();
        if sending && (run.stopped() || (o.limit > 0 && seq >= o.limit)) {
            drain_until = Some(Instant::now() + DRAIN);
        }
        let sending = drain_until.is_none();
        // Produce what is due and fits.
        let mut next_due = None;
        while sending && out.len() < OUT_HIGH_WATER && inflight.len() < window.min(65_535) {
            if o.limit > 0 && seq >= o.limit {
                break;
            }
            if let Some(r) = rate {
                let due = began + Duration::from_secs_f64(seq as f64 / r);
                if due > Instant::now() {
                    next_due = Some(due);
                    break;
                }
            }
            let packet_id = if o.qos == QoS::AtMostOnce {
                0
            } else {
                while inflight.contains_key(&next_id) {
                    next_id = next_id.checked_add(1).unwrap_or(1);
                }
                let id = next_id;
                next_id = next_id.checked_add(1).unwrap_or(1);
                inflight.insert(id, Instant::now());
                id
            };
            let p = Packet::Publish(Publish {
                dup: false,
                qos: o.qos,
                retain: o.retain,
                topic: if per_message_topic {
                    ByteStr::from(topic_template.replace("%s", &seq.to_string()))
                } else {
                    topic.clone()
                },
                packet_id,
                properties: Default::default(),
                payload: match o.json {
                    false => payload(run.nonce, index, seq, o.size),
                    true => payload_json(run.nonce, index, seq, o.size),
                },
            });
            if encode(&p, version, &mut out).is_err() {
                closed = true;
                break;
            }
            seq += 1;
            c.sent.fetch_add(1, Ordering::Relaxed);
            if o.qos != QoS::AtMostOnce {
                c.inflight.fetch_add(1, Ordering::Relaxed);
            }
        }
        if closed {
            break;
        }
        if let Some(until) = drain_until {
            if (inflight.is_empty() && out.is_empty()) || Instant::now() >= until {
                break;
            }
        }
        tokio::select! {
            r = rd.read_buf(&mut inbuf) => {
                if matches!(r, Ok(0) | Err(_)) {
                    closed = true;
                    break;
                }
                loop {
                    let packet = match decoder.decode(&mut inbuf) {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(_) => { closed = true; break; }
                    };
                    match packet {
                        Packet::PubAck(a) if o.qos == QoS::AtLeastOnce => {
                            if let Some(t) = inflight.remove(&a.packet_id) {
                                c.inflight.fetch_sub(1, Ordering::Relaxed);
                                if !a.reason.is_error() {
                                    c.acked.fetch_add(1, Ordering::Relaxed);
                                    let _ = latency.record((t.elapsed().as_micros() as u64).clamp(1, HIST_MAX_US));
                                    flush_latency(&run, &mut latency, &mut flushed);
                                } else {
                                    c.ack_errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Packet::PubRec(a) if o.qos == QoS::ExactlyOnce => {
                            let Some(t) = inflight.get(&a.packet_id).copied() else { continue };
                            if !a.reason.is_error() {
                                c.acked.fetch_add(1, Ordering::Relaxed);
                                let _ = latency.record((t.elapsed().as_micros() as u64).clamp(1, HIST_MAX_US));
                                flush_latency(&run, &mut latency, &mut flushed);
                                let _ = encode(&Packet::PubRel(PubAck::new(a.packet_id)), version, &mut out);
                            } else {
                                inflight.remove(&a.packet_id);
                                c.inflight.fetch_sub(1, Ordering::Relaxed);
                                c.ack_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Packet::PubComp(a)
                            if o.qos == QoS::ExactlyOnce
                                && inflight.remove(&a.packet_id).is_some() =>
                        {
                            c.inflight.fetch_sub(1, Ordering::Relaxed);
                        }
                        Packet::Disconnect(_) => { closed = true; break; }
                        _ => {}
                    }
                }
                if closed {
                    break;
                }
            }
            w = write_or_flush(&mut wr, &out), if !out.is_empty() || unflushed => {
                match w {
                    Ok(Some(n)) if n > 0 => { out.advance(n); unflushed = flushes; }
                    Ok(None) => unflushed = false,
                    _ => { closed = true; break; }
                }
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or(next_ping)), if next_due.is_some() && out.is_empty() => {}
            _ = tokio::time::sleep_until(next_ping), if !keep_alive.is_zero() => {
                out.put_slice(&PINGREQ);
                next_ping = Instant::now() + keep_alive / 2;
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or(next_ping)), if drain_until.is_some() => {}
            _ = run.wait_stop(), if drain_until.is_none() => {}
        }
    }
    if closed && drain_until.is_none() {
        c.dropped.fetch_add(1, Ordering::Relaxed);
    } else if !closed {
        let _ = wr.write_all(&DISCONNECT).await;
        let _ = wr.flush().await;
    }
    // Whatever is still unacknowledged stays counted as sent and not acknowledged.
    c.inflight
        .fetch_sub(inflight.len() as u64, Ordering::Relaxed);
    let _ = run.latency.lock().add(&latency);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_pads() {
        let p = payload(7, 3, 42, 64);
        assert_eq!(p.len(), 64);
        let (nonce, idx, seq, ts) = parse_payload(&p).expect("bench payload");
        assert_eq!((nonce, idx, seq), (7, 3, 42));
        assert!(ts > 0);
        assert_eq!(payload(1, 1, 1, 5).len(), HEADER_LEN);
        let j = payload_json(7, 3, 42, 160);
        assert_eq!(j.len(), 160);
        let v: serde_json::Value = serde_json::from_slice(&j).expect("JSON");
        assert_eq!((v["a"].as_u64(), v["b"].as_u64()), (Some(42), Some(1)));
        let (nonce, idx, seq, _) = parse_payload(&j).expect("bench payload");
        assert_eq!((nonce, idx, seq), (7, 3, 42));
        assert_eq!(parse_payload(b"kqb1 too short"), None);
        assert_eq!(parse_payload(&[0u8; 64]), None);
    }

    #[test]
    fn seq_tracker_counts_gaps_and_duplicates() {
        let mut t = SeqTracker::default();
        assert_eq!(t.gaps(), 0);
        for s in [0, 1, 2, 5, 7] {
            assert!(t.insert(s));
        }
        assert!(!t.insert(2));
        assert_eq!(t.gaps(), 3); // 3, 4, 6
        assert!(t.insert(6));
        assert_eq!(t.gaps(), 2);
        assert!(t.insert(1000));
        assert_eq!(t.gaps(), 1001 - 7);
    }
}
