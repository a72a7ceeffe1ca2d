//! The CONNECT of a new connection: read it within the connect timeout, admit and
//! authenticate it, attach the session and answer with CONNACK.

use super::*;
use crate::broker::Attached;
use crate::protocol::admission::Admission;

/// Waits for the first packet, which must be CONNECT, within the connect timeout.
pub(super) async fn read_connect<S>(
    broker: &Broker,
    io: &mut Io<S>,
) -> Result<Box<Connect>, &'static str>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = Duration::from_secs(broker.config().mqtt.connect_timeout_secs);
    let deadline = Instant::now() + timeout;
    loop {
        let level = connack::sniff_level(&io.rbuf);
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
                        let p = connack::refusal(
                            ProtocolVersion::V3_1_1,
                            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                            "",
                        );
                        let _ = encode(&p, ProtocolVersion::V3_1_1, &mut io.wbuf);
                    }
                    _ if level == Some(5) => {
                        let p = connack::refusal(ProtocolVersion::V5, e.reason_code(), e.clause());
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
pub(super) async fn accept<S>(
    broker: &Broker,
    io: &mut Io<S>,
    connect: Box<Connect>,
    info: &ConnInfo,
) -> Option<Connection>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let v = connect.protocol;
    let mut connect = connect;
    // A verified client certificate names the client where the listener says so.
    if let Some(username) = &info.username_from_cert {
        connect.username = Some(username.clone());
    }
    if let Some(client_id) = &info.client_id_from_cert {
        connect.client_id = client_id.clone();
    }
    let accepted = match admit_and_attach(broker, &connect, info).await {
        Ok(a) => a,
        Err(refusal) => {
            Metrics::add(&broker.shared.metrics.connections_refused, 1);
            let code = refusal.reason_code();
            broker.emit(EventKinds::CONNACK, || Event::ConnAck {
                client_id: Arc::from(connect.client_id.as_str()),
                username: connect.username.clone(),
                peer: info.peer,
                reason_code: code.0,
            });
            let (peer, client_id) = (info.peer, &connect.client_id);
            tracing::info!(%peer, %client_id, %code, %refusal, "connection refused");
            let why = refusal.to_string();
            let _ = encode(&connack::refusal(v, code, &why), v, &mut io.wbuf);
            return None;
        }
    };
    let session_present = accepted.attached.session_present;
    let ack = ConnAck {
        session_present,
        ..accepted.ack.clone()
    };
    let mut conn = Connection::new(broker, &connect, info, accepted);
    let window = match v.is_v5() {
        true => connect.properties.receive_maximum.unwrap_or(u16::MAX),
        false => broker.config().mqtt.max_inflight,
    };
    broker.session_op(&conn.slot, conn.id, |s| s.set_window(window));
    broker.set_identity(&conn.slot, conn.id, conn.identity.clone());
    broker.emit(EventKinds::CONNECTED, || {
        connected_event(&conn, &connect, info)
    });
    broker.emit(EventKinds::CONNACK, || Event::ConnAck {
        client_id: Arc::from(&*conn.client_id),
        username: connect.username.clone(),
        peer: conn.peer,
        reason_code: 0,
    });
    let _ = encode(&Packet::ConnAck(ack), v, &mut io.wbuf);
    let (peer, client_id) = (conn.peer, &conn.client_id);
    tracing::debug!(%peer, %client_id, ?v, session_present, "connected");
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

/// A CONNECT admitted, authenticated and attached to its session; its CONNACK is still to be
/// sent.
struct Accepted {
    admitted: Admission,
    identity: Identity,
    ack: ConnAck,
    conn_id: ConnId,
    attached: Attached,
}

/// Admission, then the one place a CONNECT is authenticated (before any session is touched),
/// then the session attached.
/// The event of an accepted CONNECT.
fn connected_event(conn: &Connection, connect: &Connect, info: &ConnInfo) -> Event {
    Event::Connected {
        client_id: conn.client_id.clone(),
        peer: conn.peer,
        info: Arc::new(hooks::ConnectedInfo {
            username: connect.username.clone(),
            sockname: info.local,
            protocol: connect.protocol.level(),
            keep_alive: connect.keep_alive,
            clean_start: connect.clean_start,
            expiry_interval: conn.connect_expiry,
        }),
    }
}

async fn admit_and_attach(
    broker: &Broker,
    connect: &Connect,
    info: &ConnInfo,
) -> Result<Accepted, Refusal> {
    let cfg = broker.config();
    let admitted = admission::admit(cfg, connect, || broker.assign_client_id())?;
    let authenticated = broker.authenticator().authenticate(info, connect).await;
    broker.emit(EventKinds::AUTHENTICATED, || Event::Authenticated {
        client_id: Arc::from(admitted.client_id.as_ref()),
        username: connect.username.clone(),
        peer: info.peer,
        allowed: authenticated.is_ok(),
        superuser: authenticated.as_ref().is_ok_and(|i| i.superuser),
    });
    let counter = match authenticated.is_ok() {
        true => &broker.shared.metrics.auth_success,
        false => &broker.shared.metrics.auth_failure,
    };
    Metrics::add(counter, 1);
    let identity = Identity {
        peerhost: Some(info.peer.ip()),
        ..authenticated?
    };
    // A will the client may not publish is dropped here: it is never published.
    let without_will;
    let connect = match will_denied(broker, connect, &admitted.client_id, &identity) {
        true => {
            without_will = Connect {
                will: None,
                ..connect.clone()
            };
            &without_will
        }
        false => connect,
    };
    let ack = connack::accepted(cfg, connect, &admitted);
    // Checked before the session is touched: a CONNACK that cannot be sent must not leave a
    // session attached (or created) behind it.
    if encoded_len(&Packet::ConnAck(ack.clone()), connect.protocol).is_err() {
        return Err(Refusal::ConnackUnencodable);
    }
    let conn_id = broker.next_conn_id();
    let client_id = admitted.client_id.clone();
    let attached = broker
        .connect(conn_id, client_id, connect, admitted.expiry, &identity)
        .await
        .map_err(|e| match e {
            ConnectRefusal::ServerBusy => Refusal::TooManyConnections,
            ConnectRefusal::TooManySessions => Refusal::TooManySessions,
            ConnectRefusal::NotDurable => Refusal::SessionNotStored,
            ConnectRefusal::NotOwner => Refusal::NotAuthorized,
        })?;
    Ok(Accepted {
        admitted,
        identity,
        ack,
        conn_id,
        attached,
    })
}

/// Whether the CONNECT's will is one the authorizer refuses (counted and logged).
fn will_denied(broker: &Broker, connect: &Connect, client_id: &str, identity: &Identity) -> bool {
    let Some(will) = &connect.will else {
        return false;
    };
    let client = hooks::Client {
        client_id,
        identity,
    };
    let (action, authorizer) = (keelmq_auth::Action::Publish, broker.authorizer());
    let allowed = hooks::authorize(
        &*authorizer,
        &client,
        action,
        &will.topic,
        will.qos,
        will.retain,
    );
    broker.report_authz(&client, &will.topic, action, allowed);
    if !allowed {
        Metrics::add(&broker.shared.metrics.not_authorized, 1);
        tracing::info!(%client_id, topic = %will.topic, "will not authorized; it will not be published");
    }
    !allowed
}

impl Connection {
    /// The connection of an accepted CONNECT; for 5.0 with what the client and the broker told
    /// each other about packet sizes and topic aliases.
    fn new(broker: &Broker, connect: &Connect, info: &ConnInfo, accepted: Accepted) -> Connection {
        let (props, v5) = (&connect.properties, connect.protocol.is_v5());
        let Accepted {
            admitted,
            identity,
            conn_id,
            attached,
            ..
        } = accepted;
        let alias_maximum = broker.config().mqtt.topic_alias_maximum;
        let expires_at = identity.expires_at.map(|at| {
            let left = at.duration_since(std::time::SystemTime::now());
            Instant::now() + left.unwrap_or_default()
        });
        let meta = crate::broker::ConnMeta {
            peer: info.peer,
            listener: info.listener.clone(),
            keepalive: admitted.keep_alive,
            clean_start: connect.clean_start,
            connected_at_ms: crate::persistence::convert::wall_clock_ms(),
        };
        broker.note_connection(&attached.slot, conn_id, meta);
        Connection {
            peer: info.peer,
            listener: info.listener.clone(),
            identity: Arc::new(identity),
            broker: broker.clone(),
            id: conn_id,
            version: connect.protocol,
            client_id: admitted.client_id,
            slot: attached.slot,
            kicked: attached.kicked,
            keep_alive: Duration::from_secs(u64::from(admitted.keep_alive)),
            last_received: Instant::now(),
            last_io: Instant::now(),
            expires_at,
            max_packet_out: match v5 {
                true => props
                    .maximum_packet_size
                    .unwrap_or(MAX_PACKET_SIZE_PROTOCOL),
                false => MAX_PACKET_SIZE_PROTOCOL,
            },
            aliases_in: InboundAliases::new(if v5 { alias_maximum } else { 0 }),
            aliases_out: OutboundAliases::new(match v5 {
                true => props.topic_alias_maximum.unwrap_or(0),
                false => 0,
            }),
            connect_expiry: admitted.expiry,
            held: None,
            deferred: VecDeque::new(),
            pending_acks: AckFifo::default(),
            confirming: None,
            alive: Some(attached.alive),
        }
    }
}
