//! One task per network connection: reads and decodes packets, drives the session, writes
//! what the broker lets it write. Generic over the byte stream, so TCP, TLS and WebSocket
//! connections share it.
//!
//! The task's loop waits on, in priority order: a takeover by another connection, broker
//! shutdown, the fdatasync of the oldest pending acknowledgement, the `ack = "delivered"`
//! sinks' answer for the oldest acknowledgement waiting for them, bytes from the client, room
//! in the socket for buffered bytes, a wake-up from the router (a delivery was queued), the
//! keep-alive deadline, and — while a 3.x publisher is held back by a full queue — room in the
//! queues.
//!
//! # Buffers and their bounds
//! - The read buffer holds at most one packet beyond `mqtt.max_packet_size` worth of bytes:
//!   the decoder refuses a larger packet from its fixed header, and reading stops while a
//!   packet is held back.
//! - The write buffer is filled with deliveries only while it is below [`WRITE_BUFFER_HIGH`];
//!   beyond that the task stops taking deliveries from the session (they stay queued, counted
//!   against the session's limits) and stops reading the client, so a client that does not
//!   read cannot grow the broker's memory.
//!
//! # What an idle connection holds
//! After [`IDLE_BUFFER_RELEASE`] without traffic and with nothing pending, a connection
//! *parks*: both buffers are released and the task leaves its active loop (a boxed future,
//! freed) for a small one that waits for bytes from the client, a wake-up of its session, a
//! close or its keep-alive deadline. Opening (reading and accepting the CONNECT), packet
//! handling and closing are boxed while they run too, so none of them enlarges every idle
//! task. An idle connection keeps its task (the connection state and the parked future), its
//! socket and the session's slot; ARCHITECTURE.md lists the bytes.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{
    Broker, Claimed, ConnId, ConnectRefusal, InboundClaim, Metrics, Origin, PlannedPublish,
    ReserveOutcome, Reserved, SessionSlot,
};
use crate::codec::*;
use crate::hooks::{self, Event, EventKinds, Identity};
use crate::persistence::PendingDurable;
use crate::protocol::acks::AckFifo;
use crate::protocol::admission;
use crate::protocol::aliases::{InboundAliases, OutboundAliases, OutboundTopic};
use crate::protocol::publish::{self, Verdict};
use crate::protocol::Refusal;
use crate::protocol::{connack, requests};
use crate::router::ClientId;
use crate::session::{Message, Outgoing, PubRecOutcome};
use crate::transport::ConnInfo;

mod confirming;
mod connect;
mod inbound;
mod outbound;

use confirming::{Ack, Confirming};

use connect::{accept, read_connect};

/// Bytes buffered for the socket above which the task takes no more deliveries and reads no
/// more requests until the client has read some. 256 KiB is a few milliseconds of a fast link
/// and bounds the memory a stalled client can pin.
pub const WRITE_BUFFER_HIGH: usize = 256 * 1024;

/// Read buffer of a connection in use; grows up to one maximum-size packet.
const READ_BUFFER_INITIAL: usize = 4 * 1024;

/// Read buffer for the CONNECT packet (grows if the CONNECT is larger).
const READ_BUFFER_CONNECT: usize = 256;

/// A connection that has neither read nor written anything for this long, with nothing
/// pending, parks: it gives its (empty) buffers back and waits in a small future, so that an
/// idle connection costs no buffer memory and little task memory.
const IDLE_BUFFER_RELEASE: Duration = Duration::from_secs(2);

/// The most a parked connection reads before it becomes active (into a buffer on its stack).
const PARKED_READ: usize = 16;

/// How long a 3.x publisher held back by a full queue waits between retries when no room
/// notification arrives.
const HELD_BACK_RETRY: Duration = Duration::from_millis(50);

/// How long the task tries to deliver a final DISCONNECT before closing anyway.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// After the final packet, how long the task reads and discards the client's input before it
/// closes the socket (see `Io::drain_input`).
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// The most a closing connection reads and discards.
const CLOSE_DRAIN_BYTES: usize = 1 << 20;

/// Why a connection ends.
#[derive(Debug, Clone)]
enum Close {
    /// The client sent DISCONNECT with this reason (0x04 asks for the will).
    Client {
        reason: ReasonCode,
        expiry: Option<u32>,
    },
    /// The socket closed or failed.
    Network,
    /// The broker closes the connection for this reason (a DISCONNECT for v5 clients).
    Refused(Refusal),
    /// Another connection took the session over.
    TakenOver,
    /// An operator kicked the client (v5: DISCONNECT 0x98).
    Kicked,
    /// The broker is shutting down.
    Shutdown,
}

impl Close {
    /// How a connection told to close by the broker closes (a dropped sender: taken over).
    fn of_kick(kick: Option<crate::broker::Kick>) -> Close {
        match kick {
            Some(crate::broker::Kick::Administrative) => Close::Kicked,
            _ => Close::TakenOver,
        }
    }
}

impl From<super::NotDurable> for Close {
    /// What was to be acknowledged could not be made durable: close without acknowledging
    /// (the client re-sends on its next connection). After a fatal failure the broker stops.
    fn from(_: super::NotDurable) -> Close {
        Close::Refused(Refusal::NotStored)
    }
}

/// Decrements the connection gauge however the task ends.
struct ConnectionGuard<'a>(&'a Metrics);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.connections_current.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one client until its connection ends; `guard` is dropped then.
///
/// The task's future is allocated at its largest state for the connection's whole life, idle
/// or not. So the returned future holds only the established connection and the step it is
/// in: opening the connection (the stream, what the transport knew, reading and accepting
/// the CONNECT) is a boxed future freed once the connection is established, and so are the
/// steps that end it (finishing, closing). `permit` counts the connection among those that
/// have not sent CONNECT yet (`limits.max_pending_connections`); it is given back once the
/// CONNECT has arrived.
pub fn serve<S, G>(
    broker: Broker,
    stream: S,
    info: ConnInfo,
    permit: tokio::sync::OwnedSemaphorePermit,
    guard: G,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    let opening = Box::pin(open(broker.clone(), stream, info, permit));
    async move {
        let _guard = guard;
        let metrics = &broker.shared.metrics;
        metrics.connections_current.fetch_add(1, Ordering::Relaxed);
        Metrics::add(&metrics.connections_total, 1);
        let _count = ConnectionGuard(metrics);
        let Some((mut io, mut conn)) = opening.await else {
            return;
        };
        let close = conn.run(&mut io).await;
        let drain = Box::pin(conn.finish(&mut io, close)).await;
        drop(conn);
        if drain {
            Box::pin(io.drain_input()).await;
        }
    }
}

/// Reads and accepts the CONNECT: the connection established, or `None` once a refused or
/// failed one is closed.
async fn open<S>(
    broker: Broker,
    stream: S,
    info: ConnInfo,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<(Io<S>, Connection)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let (reader, writer) = tokio::io::split(stream);
    let max = broker.config().mqtt.max_packet_size;
    let mut io = Io {
        reader,
        writer,
        rbuf: BytesMut::with_capacity(READ_BUFFER_CONNECT),
        wbuf: BytesMut::new(),
        decoder: Decoder::new(max),
        // TLS and WebSocket streams hold written bytes until flushed; a TCP socket does not.
        flushes: info.kind != crate::transport::ListenerKind::Tcp,
        unflushed: false,
    };
    let connect = read_connect(&broker, &mut io).await;
    drop(permit);
    let accepted = match connect {
        Ok(connect) => accept(&broker, &mut io, connect, &info).await,
        Err(why) => {
            tracing::debug!(%peer, why, "connection closed before CONNECT was accepted");
            None
        }
    };
    match accepted {
        Some(conn) => Some((io, conn)),
        None => {
            io.close_gracefully().await;
            None
        }
    }
}

/// The socket halves and their buffers.
struct Io<S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    /// The stream buffers writes (TLS records, WebSocket frames) until it is flushed.
    flushes: bool,
    /// Bytes were written to such a stream since its last flush.
    unflushed: bool,
}

/// What [`Io::write_some`] returns for a flush (never a byte count).
const FLUSHED: usize = 1 << (usize::BITS - 1);

/// Writes some of the write buffer, or, once it is empty, flushes a stream that buffers
/// (returning [`FLUSHED`]). `Ok(0)`: the socket closed. (The fields of an [`Io`], borrowed
/// apart from its read half.)
async fn write_some<W: AsyncWrite + Unpin>(
    writer: &mut W,
    wbuf: &mut BytesMut,
    flushes: bool,
    unflushed: &mut bool,
) -> std::io::Result<usize> {
    if wbuf.is_empty() {
        writer.flush().await?;
        *unflushed = false;
        return Ok(FLUSHED);
    }
    let n = writer.write_buf(wbuf).await?;
    *unflushed = flushes;
    Ok(n)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn flush_and_close(&mut self) -> std::io::Result<()> {
        let flush = async {
            while !self.wbuf.is_empty() {
                self.writer.write_buf(&mut self.wbuf).await?;
            }
            self.writer.shutdown().await
        };
        tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, flush)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Gives back the (empty) buffers of an idle connection.
    fn release_buffers(&mut self) {
        self.rbuf = BytesMut::new();
        self.wbuf = BytesMut::new();
    }

    /// Sends what is buffered, shuts the write side down and drains the input (see
    /// [`Self::drain_input`]), so that the client reads a refusal instead of a reset.
    async fn close_gracefully(&mut self) {
        if self.flush_and_close().await.is_ok() {
            self.drain_input().await;
        }
    }

    /// Reads and discards what the client still sends, until it closes its side or
    /// [`CLOSE_DRAIN_TIMEOUT`] passes, at most [`CLOSE_DRAIN_BYTES`]. Closing a socket whose
    /// receive buffer holds unread bytes makes the kernel send a reset, which can destroy the
    /// final DISCONNECT or CONNACK before the client has read it.
    async fn drain_input(&mut self) {
        let mut scratch = [0u8; 1024];
        let mut drained = 0usize;
        let drain = async {
            while drained < CLOSE_DRAIN_BYTES {
                match self.reader.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, drain).await;
    }
}

/// An inbound QoS 1/2 PUBLISH whose acknowledgement waits for queue room (3.x publishers).
struct HeldBack {
    packet_id: u16,
    qos: QoS,
    publish: PlannedPublish,
}

/// Per-connection state (the session itself lives in the broker).
struct Connection {
    /// Where the client came from and in (what else the transport knew served the CONNECT).
    peer: std::net::SocketAddr,
    listener: Arc<str>,
    /// Who the client authenticated as (for the authorizer).
    identity: Arc<Identity>,
    broker: Broker,
    id: ConnId,
    version: ProtocolVersion,
    client_id: ClientId,
    slot: Arc<SessionSlot>,
    kicked: oneshot::Receiver<crate::broker::Kick>,
    keep_alive: Duration,
    last_received: Instant,
    /// Last read or write, for releasing the buffers of an idle connection.
    last_io: Instant,
    /// When the credentials expire (`Identity::expires_at`): the connection closes then.
    expires_at: Option<Instant>,
    /// The client's Maximum Packet Size: larger packets are never sent to it.
    max_packet_out: u32,
    /// The client's Topic Alias Maximum for the PUBLISH packets the broker sends.
    /// Topic aliases the client set, and those the broker assigned for the PUBLISH packets it
    /// sends (up to the client's Topic Alias Maximum).
    aliases_in: InboundAliases,
    aliases_out: OutboundAliases,
    connect_expiry: u32,
    /// A 3.x publisher's message waiting for queue room; reading is limited meanwhile.
    /// Boxed: rare, and the connection's size is every idle connection's cost.
    held: Option<Box<HeldBack>>,
    /// A packet read while a message was held back, processed once it is placed.
    deferred: VecDeque<Packet>,
    /// Acknowledgements and inbound messages waiting for durability, in log order (see
    /// [`crate::protocol::acks`]).
    pending_acks: PendingAcks,
    /// Acknowledgements of visible messages waiting for `ack = "delivered"` sinks, and those
    /// behind them (see `confirming`). Boxed: rare, and idle connections carry the field.
    confirming: Option<Box<Confirming>>,
    /// Dropped when this connection has finished with the session (see `Attached::alive`).
    alive: Option<oneshot::Sender<()>>,
}

/// A connection's acknowledgement FIFO: durability waits, and the deliveries they reveal.
type PendingAcks = AckFifo<PendingDurable, Reserved, Ack>;

/// Counts `n` bytes read and when (a connection's `last_io`; borrowed apart from the rest of
/// it). Keep-alive is refreshed per whole packet (in `process_input`), not per byte: a client
/// trickling bytes cannot keep a connection alive.
fn note_read(broker: &Broker, last_io: &mut Instant, n: usize) {
    Metrics::add(&broker.shared.metrics.bytes_received, n as u64);
    *last_io = Instant::now();
}

/// Waits until the oldest pending acknowledgement may be sent.
async fn next_pending_ack(
    broker: &Broker,
    fifo: &mut PendingAcks,
) -> Result<(), super::NotDurable> {
    match fifo.front_wait() {
        Some(wait) => broker.wait_pending(wait).await,
        None => std::future::pending().await,
    }
}

impl Connection {
    /// Serves the connection until it closes: active while there is traffic or anything
    /// pending (the large future of [`Self::active`], boxed), parked while idle (the small
    /// future of [`Self::park`]), so an idle connection's task holds only the latter.
    async fn run<S>(&mut self, io: &mut Io<S>) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut shutdown = self.broker.shutdown_signal();
        if *shutdown.borrow() {
            return Close::Shutdown;
        }
        loop {
            if let Err(close) = Box::pin(self.active(io, &mut shutdown)).await {
                return close;
            }
            io.release_buffers();
            if let Err(close) = self.park(io).await {
                return close;
            }
        }
    }

    /// Handles what is buffered, then serves the connection until it has been idle for
    /// [`IDLE_BUFFER_RELEASE`] with nothing pending (`Ok`), or closes.
    async fn active<S>(
        &mut self,
        io: &mut Io<S>,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), Close>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.fill_outgoing(&mut io.wbuf);
        // Packets that arrived with the CONNECT, or while the connection was parked, are
        // handled now, not after the next read (a device that connects, publishes and waits
        // sends them all at once).
        self.process_buffered(io).await?;
        loop {
            let reading = self.deferred.is_empty() && io.wbuf.len() < WRITE_BUFFER_HIGH;
            let (keep_alive_deadline, park_at) = self.deadlines(io);
            // One timer for every deadline.
            let timer = [keep_alive_deadline, park_at, self.expires_at]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                biased;
                kick = &mut self.kicked => Err(Close::of_kick(kick.ok())),
                _ = shutdown.changed() => Err(Close::Shutdown),
                // Before reading more: completed acknowledgements go out first, so a client
                // that keeps the socket busy cannot starve them.
                r = next_pending_ack(&self.broker, &mut self.pending_acks), if !self.pending_acks.is_empty() => {
                    self.complete_front(r, &mut io.wbuf)
                }
                a = confirming::next_answer(&self.broker, &mut self.confirming), if self.confirming.is_some() => {
                    self.complete_confirmed(a, &mut io.wbuf)
                }
                r = io.reader.read_buf(&mut io.rbuf), if reading => match r {
                    Ok(0) | Err(_) => Err(Close::Network),
                    Ok(n) => self.on_read(n, io).await,
                },
                r = write_some(&mut io.writer, &mut io.wbuf, io.flushes, &mut io.unflushed), if !io.wbuf.is_empty() || io.unflushed => match r {
                    Ok(0) | Err(_) => Err(Close::Network),
                    Ok(n) => {
                        Metrics::add(&self.broker.shared.metrics.bytes_sent, (n & !FLUSHED) as u64);
                        self.last_io = Instant::now();
                        Ok(())
                    }
                },
                _ = self.slot.wake.notified(), if io.wbuf.len() < WRITE_BUFFER_HIGH => Ok(()),
                _ = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => {
                    match self.check_deadlines(keep_alive_deadline) {
                        Ok(()) if park_at.is_some_and(|at| Instant::now() >= at) => return Ok(()),
                        r => r,
                    }
                }
                _ = self.broker.wait_for_room(HELD_BACK_RETRY), if self.held.is_some() => {
                    Box::pin(self.retry_held(io)).await
                }
            }?;
            self.fill_outgoing(&mut io.wbuf);
        }
    }

    /// Waits, holding no buffer, for what ends an idle connection's rest: bytes from the
    /// client (the first few are read into the read buffer), a wake-up of the session (a
    /// delivery), the broker's shutdown (a plain wake-up, smaller than a watch of the signal:
    /// [`Broker::park_for_shutdown`]), or a close.
    async fn park<S>(&mut self, io: &mut Io<S>) -> Result<(), Close>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shutdown = self.broker.parked_shutdown();
        tokio::pin!(shutdown);
        if self.broker.park_for_shutdown(shutdown.as_mut()) {
            return Err(Close::Shutdown);
        }
        let mut first = [0u8; PARKED_READ];
        let timer = {
            let (keep_alive_deadline, _) = self.deadlines(io);
            keep_alive_deadline.into_iter().chain(self.expires_at).min()
        };
        tokio::select! {
            biased;
            kick = &mut self.kicked => Err(Close::of_kick(kick.ok())),
            _ = &mut shutdown => Err(Close::Shutdown),
            r = io.reader.read(&mut first) => match r {
                Ok(0) | Err(_) => Err(Close::Network),
                Ok(n) => {
                    note_read(&self.broker, &mut self.last_io, n);
                    io.rbuf.reserve(READ_BUFFER_INITIAL);
                    io.rbuf.extend_from_slice(&first[..n]);
                    Ok(())
                }
            },
            _ = self.slot.wake.notified() => Ok(()),
            _ = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => {
                self.check_deadlines(self.deadlines(io).0)
            }
        }
    }

    /// Closes a connection whose credentials expired or whose keep-alive ran out.
    fn check_deadlines(&self, keep_alive_deadline: Option<Instant>) -> Result<(), Close> {
        let now = Instant::now();
        if self.expires_at.is_some_and(|d| now >= d) {
            Err(Close::Refused(Refusal::CredentialsExpired))
        } else if keep_alive_deadline.is_some_and(|d| now >= d) {
            Err(Close::Refused(Refusal::KeepAliveTimeout))
        } else {
            Ok(())
        }
    }

    /// When the keep-alive runs out ([MQTT-3.1.2-22]: one and a half times the keep-alive
    /// without a packet), and, if nothing is pending, when the connection parks.
    fn deadlines<S>(&self, io: &Io<S>) -> (Option<Instant>, Option<Instant>) {
        let keep_alive_deadline =
            (!self.keep_alive.is_zero()).then(|| self.last_received + self.keep_alive.mul_f32(1.5));
        let idle = io.rbuf.is_empty()
            && io.wbuf.is_empty()
            && !io.unflushed
            && self.pending_acks.is_empty()
            && self.confirming.is_none()
            && self.held.is_none()
            && self.deferred.is_empty();
        let park_at = idle.then(|| self.last_io + IDLE_BUFFER_RELEASE);
        (keep_alive_deadline, park_at)
    }

    /// `n` bytes were read: handles the whole packets among what is buffered.
    async fn on_read<S>(&mut self, n: usize, io: &mut Io<S>) -> Result<(), Close>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        note_read(&self.broker, &mut self.last_io, n);
        let r = Box::pin(self.process_input(io)).await;
        // After an idle release the first read was a small one.
        if io.rbuf.capacity() < READ_BUFFER_INITIAL {
            io.rbuf.reserve(READ_BUFFER_INITIAL);
        }
        r
    }

    /// Decodes and handles every whole packet in the read buffer (stopping while a message is
    /// held back and a non-acknowledgement packet arrives).
    async fn process_input<S>(&mut self, io: &mut Io<S>) -> Result<(), Close>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        while self.deferred.is_empty() {
            let packet = match io.decoder.decode(&mut io.rbuf) {
                Ok(Some(p)) => {
                    self.last_received = Instant::now();
                    p
                }
                Ok(None) => break,
                Err(e) => {
                    Metrics::add(&self.broker.shared.metrics.protocol_errors, 1);
                    tracing::info!(client_id = %self.client_id, error = %e, "bad packet");
                    return Err(Close::Refused(Refusal::Malformed(e)));
                }
            };
            let held_back_ok = matches!(
                packet,
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) | Packet::PingReq
            );
            if self.held.is_some() && !held_back_ok {
                self.deferred.push_back(packet);
                break;
            }
            self.handle(packet, &mut io.wbuf).await?;
            self.pending_acks.check_bound().map_err(Close::Refused)?;
            self.check_confirming_bound()?;
        }
        Ok(())
    }

    /// [`Self::process_input`] for bytes already buffered, without a read first.
    async fn process_buffered<S>(&mut self, io: &mut Io<S>) -> Result<(), Close>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if io.rbuf.is_empty() {
            return Ok(());
        }
        let r = Box::pin(self.process_input(io)).await;
        self.fill_outgoing(&mut io.wbuf);
        r
    }

    fn send(&self, wbuf: &mut BytesMut, packet: &Packet) {
        match encoded_len(packet, self.version) {
            Ok(n) if n <= self.max_packet_out as usize => {
                let _ = encode(packet, self.version, wbuf);
            }
            Ok(n) => tracing::debug!(size = n, "not sending a packet above the client's maximum"),
            Err(e) => tracing::error!(error = %e, "cannot encode {}", packet.name()),
        }
    }

    async fn handle(&mut self, packet: Packet, wbuf: &mut BytesMut) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p, wbuf).await,
            Packet::PubAck(a) => self
                .broker
                .outbound_complete(&self.slot, self.id, a.packet_id.into(), false)
                .ok_or(Close::TakenOver),
            Packet::PubRec(a) => self.on_pubrec(a, wbuf),
            Packet::PubRel(a) => self.on_pubrel(a, wbuf),
            Packet::PubComp(a) => self
                .broker
                .outbound_complete(&self.slot, self.id, a.packet_id.into(), true)
                .ok_or(Close::TakenOver),
            Packet::Subscribe(s) => self.on_subscribe(s, wbuf).await,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, wbuf).await,
            Packet::PingReq => {
                self.send(wbuf, &Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                let cfg = self.broker.config();
                let expiry = requests::disconnect_expiry(cfg, self.connect_expiry, &d)
                    .map_err(Close::Refused)?;
                Err(Close::Client {
                    reason: d.reason,
                    expiry,
                })
            }
            Packet::Connect(_) => Err(Close::Refused(Refusal::SecondConnect)),
            Packet::Auth(_) => Err(Close::Refused(Refusal::AuthWithoutMethod)),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::Refused(Refusal::ServerOnlyPacket))
            }
        }
    }

    /// SUBACK once the subscriptions (and their retained messages' queueing) are durable.
    async fn on_subscribe(&mut self, s: Subscribe, wbuf: &mut BytesMut) -> Result<(), Close> {
        requests::check_subscribe(self.broker.config(), &s).map_err(Close::Refused)?;
        let codes = self
            .broker
            .subscribe(&self.slot, self.id, &s)
            .await?
            .ok_or(Close::TakenOver)?;
        let ack = SubAck {
            packet_id: s.packet_id,
            properties: AckProperties::default(),
            reason_codes: requests::suback_codes(self.version, codes),
        };
        self.send(wbuf, &Packet::SubAck(ack));
        Ok(())
    }

    /// UNSUBACK once the removals are durable.
    async fn on_unsubscribe(&mut self, u: Unsubscribe, wbuf: &mut BytesMut) -> Result<(), Close> {
        let codes = self
            .broker
            .unsubscribe(&self.slot, self.id, &u.filters)
            .await?
            .ok_or(Close::TakenOver)?;
        let ack = UnsubAck {
            packet_id: u.packet_id,
            properties: AckProperties::default(),
            reason_codes: requests::unsuback_codes(self.version, codes),
        };
        self.send(wbuf, &Packet::UnsubAck(ack));
        Ok(())
    }

    /// Sends the final DISCONNECT where one is due, shuts the socket's write side and detaches
    /// the session. Returns whether the input should still be drained before the socket closes
    /// (the socket itself did not fail).
    async fn finish<S>(&mut self, io: &mut Io<S>, close: Close) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // What this connection logged becomes visible (and acknowledged, if the socket still
        // takes it) before a connection taking the session over goes on.
        if let Err(e) = self.drain_pending(&mut io.wbuf).await {
            tracing::debug!(client_id = %self.client_id, ?e, "pending acknowledgements dropped");
        }
        if let Some(held) = self.held.take() {
            // Never acknowledged, so the client re-sends it: that copy must not be taken for a
            // duplicate.
            if let Some(claim) = &held.publish.inbound_qos2 {
                self.broker.release_claim(claim);
            }
        }
        drop(self.alive.take());
        let server_reason = match &close {
            Close::Refused(r) => Some((r.reason_code(), Some(r.to_string()))),
            Close::TakenOver => Some((ReasonCode::SESSION_TAKEN_OVER, None)),
            Close::Kicked => Some((ReasonCode::ADMINISTRATIVE_ACTION, None)),
            Close::Shutdown => Some((ReasonCode::SERVER_SHUTTING_DOWN, None)),
            Close::Client { .. } | Close::Network => None,
        };
        if let (true, Some((reason, why))) = (self.version.is_v5(), server_reason) {
            let mut d = Disconnect::new(reason);
            d.properties.reason_string = why;
            if encoded_len(&Packet::Disconnect(d.clone()), self.version)
                .map_or(true, |n| n > self.max_packet_out as usize)
            {
                d.properties.reason_string = None;
            }
            self.send(&mut io.wbuf, &Packet::Disconnect(d));
        }
        let drain = !matches!(close, Close::Network) && io.flush_and_close().await.is_ok();
        let (peer, listener) = (self.peer, &self.listener);
        tracing::debug!(client_id = %self.client_id, %peer, %listener, ?close, "connection closed");
        let reason = match &close {
            Close::Client { .. } => "normal",
            Close::Network => "sock_closed",
            Close::TakenOver => "takenover",
            Close::Kicked => "kicked",
            Close::Shutdown => "shutdown",
            Close::Refused(r) => r.name(),
        };
        let (publish_will, expiry) = match close {
            Close::Client { reason, expiry } => {
                (reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, expiry)
            }
            Close::Shutdown => (false, None),
            Close::Network | Close::Refused(_) | Close::TakenOver | Close::Kicked => (true, None),
        };
        self.broker
            .disconnect(self.id, &self.slot, publish_will, expiry, reason)
            .await;
        drain
    }
}
