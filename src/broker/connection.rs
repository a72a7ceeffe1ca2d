//! One task per network connection: reads and decodes packets, drives the session, writes
//! what the broker lets it write. Generic over the byte stream, so TCP, TLS and WebSocket
//! connections share it.
//!
//! The task's loop waits on, in priority order: a takeover by another connection, broker
//! shutdown, the fdatasync of the oldest pending acknowledgement, bytes from the client, room
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
//! - Both buffers are released after [`IDLE_BUFFER_RELEASE`] without traffic (an idle
//!   connection keeps only its task and socket), and the larger futures of the task (CONNECT
//!   handling, packet handling, closing) are boxed while they run, so they do not enlarge every
//!   idle task.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{
    Broker, Claimed, ConnId, ConnectRefusal, InboundClaim, Metrics, PlannedPublish, ReserveOutcome,
    Reserved, SessionSlot,
};
use crate::codec::*;
use crate::hooks::{self, Event, Identity};
use crate::persistence::PendingDurable;
use crate::protocol::admission::{self, Admission};
use crate::protocol::aliases::{InboundAliases, OutboundAliases, OutboundTopic};
use crate::protocol::publish::{self, Verdict};
use crate::protocol::Refusal;
use crate::router::ClientId;
use crate::session::{Message, Outgoing, PubRecOutcome};
use crate::transport::ConnInfo;

/// Bytes buffered for the socket above which the task takes no more deliveries and reads no
/// more requests until the client has read some. 256 KiB is a few milliseconds of a fast link
/// and bounds the memory a stalled client can pin.
pub const WRITE_BUFFER_HIGH: usize = 256 * 1024;

/// Read buffer of a connection in use; grows up to one maximum-size packet.
const READ_BUFFER_INITIAL: usize = 4 * 1024;

/// Read buffer for the CONNECT packet (grows if the CONNECT is larger).
const READ_BUFFER_CONNECT: usize = 256;

/// A connection that has neither read nor written anything for this long gives its (empty)
/// buffers back, so that an idle connection costs no buffer memory; the first read after that
/// is a small one and the buffer is grown again.
const IDLE_BUFFER_RELEASE: Duration = Duration::from_secs(2);

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

/// Entries the acknowledgement FIFO holds at most: every packet id in both directions (QoS 2
/// releases each way) plus the Receive Maximum's QoS 1 publishes fit well below it, so only a
/// client streaming repeated or bogus acknowledgements reaches it; it is disconnected (0x93).
const MAX_PENDING_ACKS: usize = 3 * 65_536;

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
    /// The broker is shutting down.
    Shutdown,
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

/// Serves one client until its connection ends.
/// `permit` counts the connection among those that have not sent CONNECT yet
/// (`limits.max_pending_connections`); it is given back once the CONNECT has arrived.
pub async fn serve<S>(
    broker: Broker,
    stream: S,
    info: ConnInfo,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let metrics = &broker.shared.metrics;
    metrics.connections_current.fetch_add(1, Ordering::Relaxed);
    Metrics::add(&metrics.connections_total, 1);
    let _guard = ConnectionGuard(metrics);
    let (reader, writer) = tokio::io::split(stream);
    let max = broker.config().mqtt.max_packet_size;
    let mut io = Io {
        reader,
        writer,
        rbuf: BytesMut::with_capacity(READ_BUFFER_CONNECT),
        wbuf: BytesMut::new(),
        decoder: Decoder::new(max),
    };
    let connect = Box::pin(read_connect(&broker, &mut io)).await;
    drop(permit);
    let connect = match connect {
        Ok(c) => c,
        Err(why) => {
            tracing::debug!(%peer, why, "connection closed before CONNECT was accepted");
            io.close_gracefully().await;
            return;
        }
    };
    let Some(mut conn) = Box::pin(accept(&broker, &mut io, *connect, info)).await else {
        io.close_gracefully().await;
        return;
    };
    let close = conn.run(&mut io).await;
    let drain = Box::pin(conn.finish(&mut io, close)).await;
    drop(conn);
    if drain {
        io.drain_input().await;
    }
}

/// The socket halves and their buffers.
struct Io<S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
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

/// Reads the protocol level out of a buffered CONNECT, to answer a malformed one in the
/// client's own version.
fn sniff_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while buf.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = u16::from_be_bytes([*buf.get(i + 1)?, *buf.get(i + 2)?]) as usize;
    buf.get(i + 3 + name_len).copied()
}

/// A CONNACK refusing the connection, in the client's version.
fn connack_refusal(v: ProtocolVersion, code: ReasonCode, why: &str) -> Packet {
    let (code, properties) = if v.is_v5() {
        let props = ConnAckProperties {
            reason_string: Some(why.to_string()),
            ..Default::default()
        };
        (code, props)
    } else {
        (
            ReasonCode(code.to_v3_connack()),
            ConnAckProperties::default(),
        )
    };
    Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties,
    })
}

/// The CONNACK of an admitted CONNECT (its session-present flag is set once the session is
/// attached); in 5.0 with the broker's capabilities and what it assigned or capped.
fn connack(cfg: &crate::config::Config, connect: &Connect, admitted: &Admission) -> ConnAck {
    let mut ack = ConnAck {
        session_present: false,
        code: ReasonCode::SUCCESS,
        properties: ConnAckProperties::default(),
    };
    if connect.protocol.is_v5() {
        let (client_id, assigned) = (&admitted.client_id, admitted.assigned.clone());
        ack.properties = connack_properties(cfg, &connect.properties, client_id, assigned);
        ack.properties.server_keep_alive = admitted.server_keep_alive;
        if admitted.expiry != admitted.requested_expiry {
            ack.properties.session_expiry_interval = Some(admitted.expiry);
        }
    }
    ack
}

/// The v5 CONNACK properties that state the broker's capabilities and what it assigned.
fn connack_properties(
    cfg: &crate::config::Config,
    props: &ConnectProperties,
    client_id: &ClientId,
    assigned: Option<String>,
) -> ConnAckProperties {
    let mut p = ConnAckProperties {
        assigned_client_identifier: assigned,
        receive_maximum: Some(cfg.mqtt.receive_maximum),
        maximum_packet_size: Some(cfg.mqtt.max_packet_size),
        topic_alias_maximum: Some(cfg.mqtt.topic_alias_maximum),
        retain_available: Some(cfg.mqtt.retain_available as u8),
        wildcard_subscription_available: Some(cfg.mqtt.wildcard_subscription_available as u8),
        subscription_identifiers_available: Some(cfg.mqtt.subscription_identifiers_available as u8),
        shared_subscription_available: Some(cfg.mqtt.shared_subscription_available as u8),
        ..Default::default()
    };
    if cfg.mqtt.max_qos < 2 {
        p.maximum_qos = Some(cfg.mqtt.max_qos);
    }
    if props.request_response_information == Some(1) {
        p.response_information = Some(format!("keelmq/response/{client_id}"));
    }
    p
}

/// Waits for the first packet, which must be CONNECT, within the connect timeout.
async fn read_connect<S>(broker: &Broker, io: &mut Io<S>) -> Result<Box<Connect>, &'static str>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = Duration::from_secs(broker.config().mqtt.connect_timeout_secs);
    let deadline = Instant::now() + timeout;
    loop {
        let level = sniff_level(&io.rbuf);
        match io.decoder.decode(&mut io.rbuf) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(_)) => return Err("first packet is not CONNECT [MQTT-3.1.0-1]"),
            Ok(None) => {}
            Err(e) => {
                Metrics::add(&broker.shared.metrics.protocol_errors, 1);
                tracing::debug!(error = %e, "CONNECT rejected");
                match e {
                    // [MQTT-3.1.2-2]: answer an unknown level with return code 1, in 3.1.1
                    // form since that is what every version understands.
                    DecodeError::UnsupportedProtocol { .. } => {
                        let p = connack_refusal(
                            ProtocolVersion::V3_1_1,
                            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                            "",
                        );
                        let _ = encode(&p, ProtocolVersion::V3_1_1, &mut io.wbuf);
                    }
                    _ if level == Some(5) => {
                        let p = connack_refusal(ProtocolVersion::V5, e.reason_code(), e.clause());
                        let _ = encode(&p, ProtocolVersion::V5, &mut io.wbuf);
                    }
                    _ => {}
                }
                return Err("malformed CONNECT");
            }
        }
        let read = tokio::time::timeout_at(deadline, io.reader.read_buf(&mut io.rbuf));
        match read.await {
            Err(_) => return Err("connect timeout"),
            Ok(Err(_)) | Ok(Ok(0)) => return Err("closed"),
            Ok(Ok(n)) => Metrics::add(&broker.shared.metrics.bytes_received, n as u64),
        }
    }
}

/// Validates a CONNECT, attaches the session and writes CONNACK. `None` if refused (the
/// refusal is in the write buffer).
async fn accept<S>(
    broker: &Broker,
    io: &mut Io<S>,
    connect: Connect,
    info: ConnInfo,
) -> Option<Connection>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = info.peer;
    let cfg = broker.config().clone();
    let v = connect.protocol;
    let props = &connect.properties;
    let mut refuse = |refusal: Refusal| {
        Metrics::add(&broker.shared.metrics.connections_refused, 1);
        let code = refusal.reason_code();
        tracing::info!(%peer, client_id = %connect.client_id, %code, %refusal, "connection refused");
        let why = refusal.to_string();
        let _ = encode(&connack_refusal(v, code, &why), v, &mut io.wbuf);
        None
    };
    let admitted = match admission::admit(&cfg, &connect, || broker.assign_client_id()) {
        Ok(a) => a,
        Err(refusal) => return refuse(refusal),
    };
    let client_id = admitted.client_id.clone();
    // The one place a CONNECT is authenticated: after admission, before any session is
    // touched.
    let identity = match broker.authenticator().authenticate(&info, &connect).await {
        Ok(identity) => identity,
        Err(refusal) => return refuse(refusal),
    };
    let (expiry, keep_alive) = (admitted.expiry, admitted.keep_alive);
    let mut ack = connack(&cfg, &connect, &admitted);
    // Checked before the session is touched: a CONNACK that cannot be sent must not leave a
    // session attached (or created) behind it.
    if encoded_len(&Packet::ConnAck(ack.clone()), v).is_err() {
        return refuse(Refusal::ConnackUnencodable);
    }
    let conn_id = broker.next_conn_id();
    let attached = match broker
        .connect(conn_id, client_id.clone(), &connect, expiry)
        .await
    {
        Ok(a) => a,
        Err(ConnectRefusal::ServerBusy) => return refuse(Refusal::TooManyConnections),
        Err(ConnectRefusal::TooManySessions) => return refuse(Refusal::TooManySessions),
        Err(ConnectRefusal::NotDurable) => return refuse(Refusal::SessionNotStored),
    };
    let window = if v.is_v5() {
        props.receive_maximum.unwrap_or(u16::MAX)
    } else {
        cfg.mqtt.max_inflight
    };
    broker.session_op(&attached.slot, conn_id, |s| s.set_window(window));
    ack.session_present = attached.session_present;
    broker.set_identity(&attached.slot, conn_id, identity.clone());
    broker.emit(|| Event::Connected {
        client_id: client_id.clone(),
        peer,
    });
    let _ = encode(&Packet::ConnAck(ack), v, &mut io.wbuf);
    tracing::debug!(%peer, %client_id, ?v, session_present = attached.session_present, "connected");
    let mut conn = Connection {
        info,
        identity,
        broker: broker.clone(),
        id: conn_id,
        version: v,
        client_id,
        slot: attached.slot,
        kicked: attached.kicked,
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        last_received: Instant::now(),
        last_io: Instant::now(),
        max_packet_out: MAX_PACKET_SIZE_PROTOCOL,
        aliases_in: InboundAliases::new(0),
        aliases_out: OutboundAliases::new(0),
        connect_expiry: expiry,
        held: None,
        deferred: VecDeque::new(),
        pending_acks: VecDeque::new(),
        pending_inbound: 0,
        alive: Some(attached.alive),
    };
    if v.is_v5() {
        // What a 5.0 client and the broker told each other about sizes and aliases.
        conn.max_packet_out = props
            .maximum_packet_size
            .unwrap_or(MAX_PACKET_SIZE_PROTOCOL);
        conn.aliases_in = InboundAliases::new(cfg.mqtt.topic_alias_maximum);
        conn.aliases_out = OutboundAliases::new(props.topic_alias_maximum.unwrap_or(0));
    }
    // Resume: re-send what was in flight, PUBREL where PUBREC was seen (§4.4).
    let resend = broker
        .session_op(&conn.slot, conn.id, |s| s.resume())
        .unwrap_or_default();
    let now = Instant::now();
    for out in resend {
        conn.encode_outgoing(&mut io.wbuf, out, now);
    }
    Some(conn)
}

/// An inbound QoS 1/2 PUBLISH whose acknowledgement waits for queue room (3.x publishers).
struct HeldBack {
    packet_id: u16,
    qos: QoS,
    publish: PlannedPublish,
}

/// Per-connection state (the session itself lives in the broker).
struct Connection {
    /// Who the client is and where it came in (peer, listener, TLS certificate, WebSocket
    /// headers).
    info: ConnInfo,
    /// Who the client authenticated as (for the authorizer).
    identity: Identity,
    broker: Broker,
    id: ConnId,
    version: ProtocolVersion,
    client_id: ClientId,
    slot: Arc<SessionSlot>,
    kicked: oneshot::Receiver<()>,
    keep_alive: Duration,
    last_received: Instant,
    /// Last read or write, for releasing the buffers of an idle connection.
    last_io: Instant,
    /// The client's Maximum Packet Size: larger packets are never sent to it.
    max_packet_out: u32,
    /// The client's Topic Alias Maximum for the PUBLISH packets the broker sends.
    /// Topic aliases the client set, and those the broker assigned for the PUBLISH packets it
    /// sends (up to the client's Topic Alias Maximum).
    aliases_in: InboundAliases,
    aliases_out: OutboundAliases,
    connect_expiry: u32,
    /// A 3.x publisher's message waiting for queue room; reading is limited meanwhile.
    held: Option<HeldBack>,
    /// A packet read while a message was held back, processed once it is placed.
    deferred: VecDeque<Packet>,
    /// Acknowledgements (PUBACK, PUBREC, PUBCOMP, outbound PUBREL) and inbound messages
    /// waiting for the records they depend on to be durable, in log order, so completions
    /// arrive front first. Meanwhile the connection goes on with its next packets, whose
    /// records share the same fdatasync. While it is not empty every acknowledgement of an
    /// inbound PUBLISH joins it, so they leave in the order of their PUBLISH [MQTT-4.6.0-2,3].
    /// Bounded by the in-flight windows: inbound QoS 1/2 PUBLISHes by the Receive Maximum
    /// (`pending_inbound` counts towards it; a client exceeding it is disconnected), QoS 2
    /// releases by the windows in either direction. QoS 0 messages never enter it.
    pending_acks: VecDeque<PendingAck>,
    /// Entries of `pending_acks` acknowledging an inbound PUBLISH that the session does not
    /// already count as awaiting PUBREL.
    pending_inbound: usize,
    /// Dropped when this connection has finished with the session (see `Attached::alive`).
    alive: Option<oneshot::Sender<()>>,
}

/// An acknowledgement, and the deliveries of an inbound message, waiting for durability.
struct PendingAck {
    wait: PendingDurable,
    /// Deliveries made visible once `wait` completes (an inbound message).
    reserved: Option<Reserved>,
    ack: Option<Packet>,
    /// Counted in `Connection::pending_inbound`.
    inbound: bool,
}

/// Waits until the oldest pending acknowledgement may be sent.
async fn next_pending_ack(
    broker: &Broker,
    queue: &mut VecDeque<PendingAck>,
) -> Result<(), super::NotDurable> {
    match queue.front_mut() {
        Some(entry) => broker.wait_pending(&mut entry.wait).await,
        None => std::future::pending().await,
    }
}

impl Connection {
    async fn run<S>(&mut self, io: &mut Io<S>) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut shutdown = self.broker.shutdown_signal();
        if *shutdown.borrow() {
            return Close::Shutdown;
        }
        self.fill_outgoing(&mut io.wbuf);
        // Packets that arrived in the same reads as the CONNECT are handled now, not after the
        // next read (a device that connects, publishes and waits sends them all at once).
        if let Err(close) = self.process_buffered(io).await {
            return close;
        }
        loop {
            let reading = self.deferred.is_empty() && io.wbuf.len() < WRITE_BUFFER_HIGH;
            // [MQTT-3.1.2-22]: one and a half times the keep-alive without a packet.
            let keep_alive_deadline = (!self.keep_alive.is_zero())
                .then(|| self.last_received + self.keep_alive.mul_f32(1.5));
            let holds_buffers = io.rbuf.is_empty()
                && io.wbuf.is_empty()
                && (io.rbuf.capacity() > 0 || io.wbuf.capacity() > 0);
            let release_at = holds_buffers.then(|| self.last_io + IDLE_BUFFER_RELEASE);
            // One timer for both deadlines.
            let timer = match (keep_alive_deadline, release_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let step = tokio::select! {
                biased;
                _ = &mut self.kicked => Err(Close::TakenOver),
                _ = shutdown.changed() => Err(Close::Shutdown),
                // Before reading more: completed acknowledgements go out first, so a client
                // that keeps the socket busy cannot starve them.
                r = next_pending_ack(&self.broker, &mut self.pending_acks), if !self.pending_acks.is_empty() => {
                    self.complete_front(r, &mut io.wbuf)
                }
                r = io.reader.read_buf(&mut io.rbuf), if reading => match r {
                    Ok(0) | Err(_) => Err(Close::Network),
                    Ok(n) => {
                        Metrics::add(&self.broker.shared.metrics.bytes_received, n as u64);
                        // Keep-alive is refreshed per whole packet (in `process_input`), not per
                        // byte: a client trickling bytes cannot keep a connection alive.
                        self.last_io = Instant::now();
                        let r = Box::pin(self.process_input(io)).await;
                        // After an idle release the first read was a small one.
                        if io.rbuf.capacity() < READ_BUFFER_INITIAL {
                            io.rbuf.reserve(READ_BUFFER_INITIAL);
                        }
                        r
                    }
                },
                r = io.writer.write_buf(&mut io.wbuf), if !io.wbuf.is_empty() => match r {
                    Ok(0) | Err(_) => Err(Close::Network),
                    Ok(n) => {
                        Metrics::add(&self.broker.shared.metrics.bytes_sent, n as u64);
                        self.last_io = Instant::now();
                        Ok(())
                    }
                },
                _ = self.slot.wake.notified(), if io.wbuf.len() < WRITE_BUFFER_HIGH => Ok(()),
                _ = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => {
                    let now = Instant::now();
                    if keep_alive_deadline.is_some_and(|d| now >= d) {
                        Err(Close::Refused(Refusal::KeepAliveTimeout))
                    } else {
                        if release_at.is_some_and(|r| now >= r) {
                            io.rbuf = BytesMut::new();
                            io.wbuf = BytesMut::new();
                        }
                        Ok(())
                    }
                }
                _ = self.broker.wait_for_room(HELD_BACK_RETRY), if self.held.is_some() => {
                    Box::pin(self.retry_held(io)).await
                }
            };
            if let Err(close) = step {
                return close;
            }
            self.fill_outgoing(&mut io.wbuf);
        }
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
            if self.pending_acks.len() > MAX_PENDING_ACKS {
                return Err(Close::Refused(Refusal::AckBacklog));
            }
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

    async fn retry_held<S>(&mut self, io: &mut Io<S>) -> Result<(), Close>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        // Earlier messages of this publisher become visible first.
        self.drain_pending(&mut io.wbuf).await?;
        let outcome = self.broker.retry_planned(held.publish).await?;
        if let Some(publish) = outcome.held {
            self.held = Some(HeldBack { publish, ..held });
            return Ok(());
        }
        self.ack_inbound(&mut io.wbuf, held.packet_id, held.qos, ReasonCode::SUCCESS);
        while let Some(p) = self.deferred.pop_front() {
            self.handle(p, &mut io.wbuf).await?;
            if self.held.is_some() {
                return Ok(());
            }
        }
        self.process_input(io).await
    }

    /// Completes the oldest pending entry after its wait returned `r`: makes its deliveries
    /// visible and sends its acknowledgement, or, if durability failed, gives back every
    /// pending placement and closes.
    fn complete_front(
        &mut self,
        r: Result<(), super::NotDurable>,
        wbuf: &mut BytesMut,
    ) -> Result<(), Close> {
        if let Err(e) = r {
            for entry in self.pending_acks.drain(..) {
                if let Some(p) = entry.reserved {
                    self.broker.unreserve(p);
                }
            }
            self.pending_inbound = 0;
            return Err(Close::from(e));
        }
        let Some(entry) = self.pending_acks.pop_front() else {
            return Ok(());
        };
        if entry.inbound {
            self.pending_inbound -= 1;
        }
        if let Some(p) = entry.reserved {
            self.broker.reveal(p);
        }
        if let Some(ack) = entry.ack {
            self.send(wbuf, &ack);
        }
        Ok(())
    }

    /// Waits for every pending entry, in order, and completes it.
    async fn drain_pending(&mut self, wbuf: &mut BytesMut) -> Result<(), Close> {
        while !self.pending_acks.is_empty() {
            let r = next_pending_ack(&self.broker, &mut self.pending_acks).await;
            self.complete_front(r, wbuf)?;
        }
        Ok(())
    }

    /// Sends `ack` once `wait` completes, after every entry before it.
    fn push_pending(
        &mut self,
        wait: PendingDurable,
        reserved: Option<Reserved>,
        ack: Option<Packet>,
        inbound: bool,
    ) {
        if inbound {
            self.pending_inbound += 1;
        }
        self.pending_acks.push_back(PendingAck {
            wait,
            reserved,
            ack,
            inbound,
        });
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
                .outbound_complete(&self.slot, self.id, a.packet_id, false)
                .ok_or(Close::TakenOver),
            Packet::PubRec(a) => {
                let refused = a.reason.is_error();
                let (outcome, pending) = self
                    .broker
                    .outbound_pubrec(&self.slot, self.id, a.packet_id, refused)?
                    .ok_or(Close::TakenOver)?;
                match outcome {
                    // PUBREL leaves once the PubRec record is durable; meanwhile the next
                    // packets are handled, so one subscriber's PUBRECs share fdatasyncs.
                    PubRecOutcome::Release => {
                        let rel = Packet::PubRel(PubAck::new(a.packet_id));
                        match pending {
                            Some(p) => self.push_pending(p, None, Some(rel), false),
                            None => self.send(wbuf, &rel),
                        }
                    }
                    // Behind whatever waits, so it never overtakes the first PUBREL's record.
                    PubRecOutcome::ReleaseAgain => {
                        let rel = Packet::PubRel(PubAck::new(a.packet_id));
                        self.send_in_order(wbuf, rel, false);
                    }
                    PubRecOutcome::Unknown => {
                        let mut rel = PubAck::new(a.packet_id);
                        rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                        self.send(wbuf, &Packet::PubRel(rel));
                    }
                    PubRecOutcome::Refused => {}
                }
                Ok(())
            }
            Packet::PubRel(a) => {
                let (found, pending) = self
                    .broker
                    .inbound_pubrel(&self.slot, self.id, a.packet_id)?
                    .ok_or(Close::TakenOver)?;
                let mut comp = PubAck::new(a.packet_id);
                if !found {
                    comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                // PUBCOMP leaves once the release is durable (an unknown id logged nothing).
                if pending.is_ready() {
                    self.send_in_order(wbuf, Packet::PubComp(comp), false);
                } else {
                    self.push_pending(pending, None, Some(Packet::PubComp(comp)), false);
                }
                Ok(())
            }
            Packet::PubComp(a) => self
                .broker
                .outbound_complete(&self.slot, self.id, a.packet_id, true)
                .ok_or(Close::TakenOver),
            Packet::Subscribe(s) => {
                if s.properties.subscription_identifier.is_some()
                    && !self.broker.config().mqtt.subscription_identifiers_available
                {
                    return Err(Close::Refused(Refusal::SubscriptionIdsUnsupported));
                }
                let mut codes = self
                    .broker
                    .subscribe(&self.slot, self.id, &s)
                    .await?
                    .ok_or(Close::TakenOver)?;
                if !self.version.is_v5() {
                    for c in &mut codes {
                        if c.is_error() {
                            *c = ReasonCode(0x80);
                        }
                    }
                }
                let ack = SubAck {
                    packet_id: s.packet_id,
                    properties: AckProperties::default(),
                    reason_codes: codes,
                };
                self.send(wbuf, &Packet::SubAck(ack));
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                let codes = self
                    .broker
                    .unsubscribe(&self.slot, self.id, &u.filters)
                    .await?
                    .ok_or(Close::TakenOver)?;
                let ack = UnsubAck {
                    packet_id: u.packet_id,
                    properties: AckProperties::default(),
                    reason_codes: if self.version.is_v5() {
                        codes
                    } else {
                        Vec::new()
                    },
                };
                self.send(wbuf, &Packet::UnsubAck(ack));
                Ok(())
            }
            Packet::PingReq => {
                self.send(wbuf, &Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                // Capped like the CONNECT's: the client cannot raise it past the broker's limit.
                let max_expiry = self.broker.config().mqtt.max_session_expiry_secs;
                let expiry = d
                    .properties
                    .session_expiry_interval
                    .map(|e| e.min(max_expiry));
                if self.connect_expiry == 0 && expiry.is_some_and(|e| e > 0) {
                    // [MQTT-3.14.2-2]
                    return Err(Close::Refused(Refusal::SessionExpiryAfterZero));
                }
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

    /// The PUBACK or PUBREC for an inbound message (`None` for QoS 0).
    fn inbound_ack(&self, packet_id: u16, qos: QoS, reason: ReasonCode) -> Option<Packet> {
        let mut ack = PubAck::new(packet_id);
        if self.version.is_v5() {
            ack.reason = reason;
        }
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(ack)),
            // The id awaiting PUBREL was recorded by `Broker::publish` with the message.
            QoS::ExactlyOnce => Some(Packet::PubRec(ack)),
        }
    }

    /// Sends PUBACK or PUBREC for an inbound message whose records (if any) are durable: now,
    /// or behind the acknowledgements still pending, to keep their order.
    fn ack_inbound(&mut self, wbuf: &mut BytesMut, packet_id: u16, qos: QoS, reason: ReasonCode) {
        if let Some(ack) = self.inbound_ack(packet_id, qos, reason) {
            self.send_in_order(wbuf, ack, true);
        }
    }

    /// Sends an acknowledgement that waits for nothing: now, or behind those still pending.
    /// `counts`: it acknowledges a PUBLISH the session does not count as awaiting PUBREL, so
    /// it counts against the Receive Maximum while it waits.
    fn send_in_order(&mut self, wbuf: &mut BytesMut, ack: Packet, counts: bool) {
        if self.pending_acks.is_empty() {
            self.send(wbuf, &ack);
        } else {
            self.push_pending(PendingDurable::ready(), None, Some(ack), counts);
        }
    }

    /// Refuses an inbound message: an error reason code on its acknowledgement (v5, QoS > 0),
    /// a disconnect otherwise.
    fn refuse_inbound(
        &mut self,
        wbuf: &mut BytesMut,
        p: &Publish,
        refusal: Refusal,
    ) -> Result<(), Close> {
        if self.version.is_v5() && p.qos != QoS::AtMostOnce {
            self.ack_inbound(wbuf, p.packet_id, p.qos, refusal.reason_code());
            Ok(())
        } else {
            Err(Close::Refused(refusal))
        }
    }

    /// The one place a PUBLISH is authorized (after topic-alias resolution).
    fn may_publish(&self, p: &Publish) -> bool {
        let client = hooks::Client {
            client_id: &self.client_id,
            identity: &self.identity,
        };
        let allowed = self.identity.superuser
            || (self.broker.authorizer()).may_publish(&client, &p.topic, p.qos, p.retain);
        if !allowed {
            Metrics::add(&self.broker.shared.metrics.not_authorized, 1);
        }
        allowed
    }

    /// A PUBLISH the authorizer refused: a v5 QoS 1/2 publisher gets 0x87; otherwise it is
    /// acknowledged and dropped, as Mosquitto and EMQX do (a 3.x client cannot be told).
    fn deny_inbound(&mut self, wbuf: &mut BytesMut, p: &Publish) -> Result<(), Close> {
        let reason = match self.version.is_v5() {
            true => Refusal::NotAuthorized.reason_code(),
            false => ReasonCode::SUCCESS,
        };
        self.ack_inbound(wbuf, p.packet_id, p.qos, reason);
        Ok(())
    }

    async fn on_publish(&mut self, mut p: Publish, wbuf: &mut BytesMut) -> Result<(), Close> {
        let cfg = self.broker.config();
        Metrics::add(&self.broker.shared.metrics.messages_received, 1);
        publish::check_packet(cfg, &p).map_err(Close::Refused)?;
        let alias = p.properties.topic_alias.take();
        self.aliases_in
            .resolve(&mut p.topic, alias)
            .map_err(Close::Refused)?;
        if !self.may_publish(&p) {
            return self.deny_inbound(wbuf, &p);
        }
        let inflight_in = self.broker.session_op(&self.slot, self.id, |s| {
            (
                s.inbound_awaiting_rel(),
                p.qos == QoS::ExactlyOnce && !s.inbound_qos2_is_new(p.packet_id),
            )
        });
        let Some((inflight_in, duplicate)) = inflight_in else {
            return Err(Close::TakenOver);
        };
        if duplicate {
            // A re-sent QoS 2 PUBLISH already PUBRECed: acknowledge again, never route twice.
            // Its id already counts against the Receive Maximum as awaiting PUBREL.
            if let Some(ack) = self.inbound_ack(p.packet_id, p.qos, ReasonCode::SUCCESS) {
                self.send_in_order(wbuf, ack, false);
            }
            return Ok(());
        }
        if p.qos != QoS::AtMostOnce
            && inflight_in + usize::from(self.held.is_some()) + self.pending_inbound
                >= usize::from(cfg.mqtt.receive_maximum)
        {
            return Err(Close::Refused(Refusal::ReceiveMaximumExceeded));
        }
        match publish::check_content(cfg, self.version, &p) {
            Verdict::Route => {}
            Verdict::Refuse(refusal) => return self.refuse_inbound(wbuf, &p, refusal),
            Verdict::Drop => {
                self.ack_inbound(wbuf, p.packet_id, p.qos, ReasonCode::SUCCESS);
                return Ok(());
            }
        }
        // Checked and marked in one step: a re-send arriving from now on is a duplicate.
        let claim = match p.qos {
            QoS::ExactlyOnce => {
                match self
                    .broker
                    .claim_inbound_qos2(&self.slot, self.id, p.packet_id)
                {
                    None => return Err(Close::TakenOver),
                    Some(Claimed::Duplicate) => {
                        if let Some(ack) = self.inbound_ack(p.packet_id, p.qos, ReasonCode::SUCCESS)
                        {
                            self.send_in_order(wbuf, ack, false);
                        }
                        return Ok(());
                    }
                    Some(Claimed::New(claim)) => Some(claim),
                }
            }
            _ => None,
        };
        let published = self.route_inbound(p, claim.clone(), wbuf).await;
        if let Some(claim) = claim {
            // Not placed (refused, failed, or nothing held): the client's re-send is new.
            let placed = matches!(published, Ok(true))
                || self
                    .held
                    .as_ref()
                    .is_some_and(|h| h.packet_id == claim.packet_id);
            if !placed {
                self.broker.release_claim(&claim);
            }
        }
        published.map(|_| ())
    }

    /// Routes an inbound message that passed every check, and acknowledges it (now or once
    /// durable). `Ok(false)` if it was refused with an error code (v5: a full queue).
    async fn route_inbound(
        &mut self,
        p: Publish,
        claim: Option<InboundClaim>,
        wbuf: &mut BytesMut,
    ) -> Result<bool, Close> {
        let (packet_id, qos, retain) = (p.packet_id, p.qos, p.retain);
        let message = Arc::new(self.message_of(p));
        let outcome = if retain {
            // Retained updates are ordered by the retain gate, inside `publish`: the earlier
            // messages of this publisher become visible first.
            self.drain_pending(wbuf).await?;
            self.broker.publish(message, claim, true).await?
        } else {
            match self.broker.publish_pipelined(message, claim, true)? {
                ReserveOutcome::Held(publish) => super::PublishOutcome {
                    delivered: 0,
                    held: Some(publish),
                    retained_refused: false,
                },
                ReserveOutcome::Logged(logged) => {
                    self.acknowledge_when_durable(logged, packet_id, qos, wbuf);
                    return Ok(true);
                }
            }
        };
        Ok(self.conclude_inbound(outcome, packet_id, qos, wbuf))
    }

    /// The message an inbound PUBLISH carries, with a new id and its expiry from now.
    fn message_of(&self, p: Publish) -> Message {
        let now = Instant::now();
        Message {
            id: self.broker.next_message_id(),
            expires_at: p
                .properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s))),
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: Message::properties_of(p.properties),
            publisher: Some(self.client_id.clone()),
        }
    }

    /// A pipelined publish whose records are logged: visible and acknowledged once durable —
    /// now if nothing was logged and nothing waits before it — while the connection reads on.
    fn acknowledge_when_durable(
        &mut self,
        logged: super::Logged,
        packet_id: u16,
        qos: QoS,
        wbuf: &mut BytesMut,
    ) {
        let reason = if logged.reserved.len() == 0 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        let ack = self.inbound_ack(packet_id, qos, reason);
        // A QoS 0 message needs no order with the acknowledged ones: it never enters the FIFO.
        if logged.durable.is_ready() && (self.pending_acks.is_empty() || qos == QoS::AtMostOnce) {
            self.broker.reveal(logged.reserved);
            if let Some(ack) = ack {
                self.send(wbuf, &ack);
            }
        } else {
            let inbound = qos == QoS::AtLeastOnce;
            self.push_pending(logged.durable, Some(logged.reserved), ack, inbound);
        }
    }

    /// Acknowledges a publish that waited inline (RETAIN) or was held by a full queue. `false`
    /// if it was refused with an error code (v5: a draining subscriber's full queue).
    fn conclude_inbound(
        &mut self,
        outcome: super::PublishOutcome,
        packet_id: u16,
        qos: QoS,
        wbuf: &mut BytesMut,
    ) -> bool {
        if let Some(publish) = outcome.held {
            if qos == QoS::AtMostOnce {
                // A connected subscriber's queue is full and draining: pause this publisher
                // (its socket is read only for acknowledgements and pings) until there is
                // room, rather than drop the message. A stalled subscriber does not hold it.
                Metrics::add(&self.broker.shared.metrics.qos0_paused, 1);
            } else {
                Metrics::add(&self.broker.shared.metrics.queue_full_refusals, 1);
                if self.version.is_v5() {
                    // Nothing was placed or logged: the message is refused whole.
                    self.ack_inbound(wbuf, packet_id, qos, ReasonCode::QUOTA_EXCEEDED);
                    return false;
                }
                // 3.x cannot be told: hold the acknowledgement (and the client) back until the
                // queues have room. The message is never dropped after an acknowledgement.
            }
            self.held = Some(HeldBack {
                packet_id,
                qos,
                publish,
            });
            return true;
        }
        if qos == QoS::AtMostOnce {
            return true;
        }
        // A retained copy refused by `max_retained_messages` is counted, not reported: the
        // message itself was delivered, and a QoS 2 error code would end the flow.
        let reason = if outcome.delivered == 0 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        self.ack_inbound(wbuf, packet_id, qos, reason);
        true
    }

    /// Moves deliveries from the session into the write buffer while it has room.
    fn fill_outgoing(&mut self, wbuf: &mut BytesMut) {
        let now = Instant::now();
        while wbuf.len() < WRITE_BUFFER_HIGH {
            let next = self.broker.session_op(&self.slot, self.id, |s| {
                let expired = s.expired;
                let next = s.next_publish(now);
                (next, s.expired - expired)
            });
            let Some((next, expired)) = next else { return };
            if expired > 0 {
                Metrics::add(&self.broker.shared.metrics.expired, expired);
            }
            match next {
                Some(out) => {
                    self.broker.drained(&self.slot);
                    self.encode_outgoing(wbuf, out, now)
                }
                None => return,
            }
        }
        // More may be sendable once the socket drains: look again then.
        self.slot.wake.notify_one();
    }

    fn encode_outgoing(&mut self, wbuf: &mut BytesMut, out: Outgoing, now: Instant) {
        let (packet_id, delivery, dup) = match out {
            Outgoing::PubRel { packet_id } => {
                self.send(wbuf, &Packet::PubRel(PubAck::new(packet_id)));
                return;
            }
            Outgoing::Publish {
                packet_id,
                delivery,
                dup,
            } => (packet_id, delivery, dup),
        };
        let m = &delivery.message;
        let mut publish = Publish {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: m.topic.clone(),
            packet_id,
            properties: PublishProperties::default(),
            payload: m.payload.clone(),
        };
        let mut alias = OutboundTopic::Full;
        if self.version.is_v5() {
            publish.properties = (*m.properties).clone();
            publish.properties.subscription_identifiers = delivery.subscription_ids.clone();
            publish.properties.message_expiry_interval = m.remaining_expiry_secs(now);
            alias = self.aliases_out.choose(&m.topic);
            match alias {
                OutboundTopic::Alias(a) => {
                    publish.topic = ByteStr::default();
                    publish.properties.topic_alias = Some(a);
                }
                OutboundTopic::SetAlias(a) => publish.properties.topic_alias = Some(a),
                OutboundTopic::Full => {}
            }
        }
        let packet = Packet::Publish(publish);
        match encoded_len(&packet, self.version) {
            Ok(n) if n <= self.max_packet_out as usize => {
                let _ = encode(&packet, self.version, wbuf);
                self.aliases_out.sent(&m.topic, alias);
                Metrics::add(&self.broker.shared.metrics.messages_sent, 1);
            }
            _ => {
                // [MQTT-3.1.2-25]: discard as if sent and acknowledged.
                Metrics::add(&self.broker.shared.metrics.dropped_too_large, 1);
                if packet_id != 0 {
                    self.broker
                        .session_op(&self.slot, self.id, |s| s.discard_inflight(packet_id));
                }
            }
        }
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
        let (peer, listener) = (self.info.peer, &self.info.listener);
        tracing::debug!(client_id = %self.client_id, %peer, %listener, ?close, "connection closed");
        let (publish_will, expiry) = match close {
            Close::Client { reason, expiry } => {
                (reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, expiry)
            }
            Close::Shutdown => (false, None),
            Close::Network | Close::Refused(_) | Close::TakenOver => (true, None),
        };
        self.broker
            .disconnect(self.id, &self.slot, publish_will, expiry)
            .await;
        drain
    }
}
