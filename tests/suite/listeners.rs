//! TLS, mutual TLS, WebSocket and secure WebSocket listeners (issue "Listeners"), with
//! certificates made in the test: real clients (`mosquitto_pub`/`mosquitto_sub`, Python Paho,
//! a rustls client), refusals (wrong CA, expired or missing client certificate, a certificate
//! for another host, plaintext to a TLS port, WebSocket without the subprotocol or on the wrong
//! path), handshakes that never finish, a session moving from TCP to WSS, the PROXY protocol,
//! per-listener counts and certificate reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;
use common::certs::TlsFiles;
use keelmq::codec::*;
use keelmq::config::{Config, ListenerKind, ListenerSpec, PeerCertAs};
use keelmq::hooks::Event;
use keelmq::server::Server;

const HANDSHAKE_TIMEOUT_MS: u64 = 1000;

fn ephemeral() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

/// Every kind of listener, on ephemeral ports: tcp, tls, mtls (client certificate required,
/// its CN becomes the client id), wrongname (a certificate for another host), ws, wss, and a
/// TCP listener behind the PROXY protocol.
fn config(files: &TlsFiles) -> Config {
    let mut c = common::test_config();
    c.listener = Default::default();
    let named = |name: &str, kind| ListenerSpec {
        name: Some(name.to_string()),
        kind,
        bind: ephemeral(),
        handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS,
        ..ListenerSpec::default()
    };
    let tls = |name: &str, kind, cert: &Path, key: &Path| ListenerSpec {
        cert_file: Some(cert.to_path_buf()),
        key_file: Some(key.to_path_buf()),
        ..named(name, kind)
    };
    let (cert, key) = (&files.server_cert, &files.server_key);
    c.listeners = vec![
        named("tcp", ListenerKind::Tcp),
        tls("tls", ListenerKind::Tls, cert, key),
        ListenerSpec {
            ca_file: Some(files.ca.clone()),
            verify_peer: true,
            fail_if_no_peer_cert: true,
            peer_cert_as_clientid: PeerCertAs::Cn,
            peer_cert_as_username: PeerCertAs::Dn,
            ..tls("mtls", ListenerKind::Tls, cert, key)
        },
        tls(
            "wrongname",
            ListenerKind::Tls,
            &files.wrong_name_cert,
            &files.wrong_name_key,
        ),
        named("ws", ListenerKind::Ws),
        tls("wss", ListenerKind::Wss, cert, key),
        ListenerSpec {
            proxy_protocol: true,
            ..named("proxied", ListenerKind::Tcp)
        },
        ListenerSpec {
            ca_file: Some(files.ca.clone()),
            crl_file: Some(files.crl.clone()),
            verify_peer: true,
            fail_if_no_peer_cert: true,
            ..tls("crl", ListenerKind::Tls, cert, key)
        },
    ];
    c
}

async fn start(name: &str) -> (Server, TlsFiles) {
    let files = TlsFiles::new(&common::temp_dir(name));
    let server = common::start(config(&files)).await;
    (server, files)
}

fn port(server: &Server, name: &str) -> u16 {
    server.listener_addr(name).expect("listener exists").port()
}

/// A rustls client configuration trusting `ca`, with a client certificate if given.
fn client_tls(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Connects over TLS and exchanges CONNECT/CONNACK (MQTT 5); the CONNACK, or why not.
async fn tls_mqtt_connect(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    client_id: &str,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, ConnAck), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        properties: Default::default(),
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
    };
    let mut buf = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(connect)),
        ProtocolVersion::V5,
        &mut buf,
    )
    .unwrap();
    tls.write_all(&buf).await.map_err(|e| e.to_string())?;
    match read_packet(&mut tls).await? {
        Packet::ConnAck(ack) => Ok((tls, ack)),
        other => Err(format!("expected CONNACK, got {other:?}")),
    }
}

/// Reads one MQTT 5 packet (within 5 s).
async fn read_packet<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<Packet, String> {
    let mut decoder = Decoder::with_version(ProtocolVersion::V5, 1 << 20);
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(p) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            return Ok(p);
        }
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) => return Err("closed".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out".into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_verifies_client_certificates_and_names_the_client() {
    let (server, files) = start("mtls").await;
    let mut events = server.broker().events(64);
    let mtls = port(&server, "mtls");
    let identity = Some((files.client_cert.as_path(), files.client_key.as_path()));
    let (_stream, ack) = tls_mqtt_connect(mtls, client_tls(&files.ca, identity), "ignored")
        .await
        .expect("a client with a certificate from the CA connects");
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Event::Connected { client_id, .. }) = events.recv().await {
                return client_id;
            }
        }
    });
    assert_eq!(
        connected.await.unwrap().as_ref(),
        "car-17",
        "the certificate's CN names it"
    );
    let refused = [
        ("no certificate", None),
        (
            "an expired certificate",
            Some((&files.expired_cert, &files.expired_key)),
        ),
        (
            "a certificate from another CA",
            Some((&files.stranger_cert, &files.stranger_key)),
        ),
    ];
    for (what, identity) in refused {
        let identity = identity.map(|(c, k)| (c.as_path(), k.as_path()));
        let result = tls_mqtt_connect(mtls, client_tls(&files.ca, identity), "x").await;
        assert!(
            result.is_err(),
            "{what} is refused, got {:?}",
            result.map(|r| r.1)
        );
    }
    // A client that does not trust the broker's CA refuses it.
    let result =
        tls_mqtt_connect(port(&server, "tls"), client_tls(&files.other_ca, None), "x").await;
    assert!(result.is_err(), "the wrong CA is refused by the client");
    let snapshot = server.broker().metrics_snapshot();
    let mtls_stats = snapshot
        .listeners
        .iter()
        .find(|l| l.name == "mtls")
        .unwrap();
    assert!(mtls_stats.total >= 4, "{mtls_stats:?}");
    assert_eq!(snapshot.listeners.len(), 8);
    // A listener with a CRL refuses the certificate it revokes and takes the others.
    let crl = port(&server, "crl");
    let revoked = Some((files.revoked_cert.as_path(), files.revoked_key.as_path()));
    let result = tls_mqtt_connect(crl, client_tls(&files.ca, revoked), "x").await;
    assert!(result.is_err(), "a revoked certificate is refused");
    let good = Some((files.client_cert.as_path(), files.client_key.as_path()));
    let result = tls_mqtt_connect(crl, client_tls(&files.ca, good), "x").await;
    assert!(
        result.is_ok(),
        "an unrevoked certificate is taken: {:?}",
        result.err()
    );
    drop(events);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_handshakes_are_closed_in_time_and_delay_nobody() {
    let (server, files) = start("hostile-tls").await;
    let tls = port(&server, "tls");
    let started = Instant::now();
    // Silent, half a ClientHello, plaintext MQTT, and an HTTP request that never upgrades.
    let mut silent = TcpStream::connect(("127.0.0.1", tls)).await.unwrap();
    let mut half = TcpStream::connect(("127.0.0.1", tls)).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    let mut plain = TcpStream::connect(("127.0.0.1", tls)).await.unwrap();
    let mut connect = BytesMut::new();
    let c = Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 30,
        properties: Default::default(),
        client_id: "plain".into(),
        will: None,
        username: None,
        password: None,
    };
    encode(
        &Packet::Connect(Box::new(c)),
        ProtocolVersion::V3_1_1,
        &mut connect,
    )
    .unwrap();
    plain.write_all(&connect).await.unwrap();
    let mut stalled_ws = TcpStream::connect(("127.0.0.1", port(&server, "ws")))
        .await
        .unwrap();
    stalled_ws
        .write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Meanwhile an honest TLS client connects at once.
    let (_honest, ack) = tls_mqtt_connect(tls, client_tls(&files.ca, None), "honest")
        .await
        .unwrap();
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert!(
        started.elapsed() < Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        "not delayed"
    );
    for (what, socket) in [
        ("silent", &mut silent),
        ("half", &mut half),
        ("plain", &mut plain),
        ("stalled upgrade", &mut stalled_ws),
    ] {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "{what}: closed within the handshake timeout");
        assert!(got.first() != Some(&0x20), "{what}: no CONNACK");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(HANDSHAKE_TIMEOUT_MS - 100),
        "{elapsed:?}"
    );
    server.shutdown(Duration::from_secs(5)).await;
}

/// Sends an HTTP request to the WebSocket listener and returns the status line.
async fn http_status(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_only_on_its_path_with_an_mqtt_subprotocol() {
    let (server, _files) = start("ws-refusals").await;
    let ws = port(&server, "ws");
    let upgrade = |path: &str, protocol: Option<&str>| {
        let protocol = protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
        )
    };
    assert!(http_status(ws, &upgrade("/other", Some("mqtt")))
        .await
        .contains("404"));
    assert!(http_status(ws, &upgrade("/mqtt", None))
        .await
        .contains("400"));
    assert!(http_status(ws, &upgrade("/mqtt", Some("chat")))
        .await
        .contains("400"));
    assert!(http_status(ws, &upgrade("/mqtt", Some("mqtt")))
        .await
        .contains("101"));
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_names_the_client() {
    let (server, _files) = start("proxy").await;
    let mut events = server.broker().events(64);
    let proxied = port(&server, "proxied");
    for (header, expected) in [
        (
            b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 1883\r\n".to_vec(),
            "203.0.113.7:40000",
        ),
        (
            proxy::encode_v2(&proxy::ProxiedAddrs {
                source: "[2001:db8::9]:41000".parse().unwrap(),
                destination: "[2001:db8::1]:1883".parse().unwrap(),
            }),
            "[2001:db8::9]:41000",
        ),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", proxied)).await.unwrap();
        let mut bytes = header;
        let c = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            properties: Default::default(),
            client_id: "behind-lb".into(),
            will: None,
            username: None,
            password: None,
        };
        let mut buf = BytesMut::new();
        encode(&Packet::Connect(Box::new(c)), ProtocolVersion::V5, &mut buf).unwrap();
        bytes.extend_from_slice(&buf);
        s.write_all(&bytes).await.unwrap();
        assert!(
            matches!(read_packet(&mut s).await, Ok(Packet::ConnAck(a)) if a.code == ReasonCode::SUCCESS)
        );
        let peer = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(Event::Connected { peer, .. }) = events.recv().await {
                    return peer;
                }
            }
        });
        assert_eq!(peer.await.unwrap().to_string(), expected);
    }
    // Without a header the connection is closed.
    let mut s = TcpStream::connect(("127.0.0.1", proxied)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(read_packet(&mut s).await.is_err());
    drop(events);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_a_restart() {
    let (server, files) = start("reload").await;
    let tls = port(&server, "tls");
    let (mut kept, _) = tls_mqtt_connect(tls, client_tls(&files.ca, None), "kept")
        .await
        .unwrap();
    // New files from a new CA: new handshakes use them, the open connection stays.
    let renewed = TlsFiles::new(&files.dir.join("renewed"));
    std::fs::copy(&renewed.server_cert, &files.server_cert).unwrap();
    std::fs::copy(&renewed.server_key, &files.server_key).unwrap();
    assert_eq!(server.reload_tls().await, 0);
    assert!(tls_mqtt_connect(tls, client_tls(&files.ca, None), "old-ca")
        .await
        .is_err());
    assert!(
        tls_mqtt_connect(tls, client_tls(&renewed.ca, None), "new-ca")
            .await
            .is_ok()
    );
    let mut ping = BytesMut::new();
    encode(&Packet::PingReq, ProtocolVersion::V5, &mut ping).unwrap();
    kept.write_all(&ping).await.unwrap();
    assert_eq!(
        read_packet(&mut kept).await,
        Ok(Packet::PingResp),
        "the open connection lives on"
    );
    // A broken file: the reload fails and the certificates in force stay.
    std::fs::write(&files.server_key, "not a key").unwrap();
    assert!(server.reload_tls().await > 0);
    assert!(
        tls_mqtt_connect(tls, client_tls(&renewed.ca, None), "still")
            .await
            .is_ok()
    );
    server.shutdown(Duration::from_secs(5)).await;
}

/// Runs scenario `name` of `tests/paho/transports.py` against `server`.
fn paho(server: &Server, files: &TlsFiles, name: &str) {
    let Some(python) = common::paho_python() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho/transports.py");
    let ports = ["tcp", "tls", "ws", "wss", "wrongname"].map(|l| port(server, l).to_string());
    let mut args: Vec<&std::ffi::OsStr> = vec![name.as_ref(), "127.0.0.1".as_ref()];
    args.extend(ports.iter().map(|p| std::ffi::OsStr::new(p.as_str())));
    args.push(files.ca.as_os_str());
    let run = common::run_python(&python, &script, &args, Duration::from_secs(60));
    let (status, stdout, stderr) = (run.status, run.stdout, run.stderr);
    assert!(
        status.is_some_and(|s| s.success()),
        "paho {name}: {status:?}\n--- stdout\n{stdout}--- stderr\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_tls_websocket_and_secure_websocket() {
    let (server, files) = start("paho-transports").await;
    for scenario in ["tls", "ws", "wss", "resume", "wrong_hostname"] {
        let (server, files) = (&server, &files);
        tokio::task::block_in_place(|| paho(server, files, scenario));
    }
    server.shutdown(Duration::from_secs(5)).await;
}

/// Runs a mosquitto client to completion (at most 15 s); whether it succeeded, and its output.
fn mosquitto(tool: &Path, args: &[&str]) -> (bool, String) {
    let run = common::run_tool(tool, args, Duration::from_secs(15));
    (run.code == Some(0), format!("{}{}", run.stdout, run.stderr))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_over_tls_and_mutual_tls() {
    let (Some(publisher), Some(subscriber)) =
        (common::tool("mosquitto_pub"), common::tool("mosquitto_sub"))
    else {
        return;
    };
    let (server, files) = start("mosquitto-tls").await;
    let (tls, mtls) = (
        port(&server, "tls").to_string(),
        port(&server, "mtls").to_string(),
    );
    let ca = path(&files.ca);
    let base = |p: &str| {
        vec!["-h", "127.0.0.1", "-p", p, "--cafile", ca]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let run = |tool: &PathBuf, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tokio::task::block_in_place(|| mosquitto(tool, &args))
    };
    // Server-authenticated TLS: a retained message published over TLS is read over TLS.
    let mut args = base(&tls);
    args.extend(
        [
            "-t", "tls/r", "-m", "over tls", "-q", "1", "-r", "-V", "mqttv311",
        ]
        .map(String::from),
    );
    let (ok, out) = run(&publisher, args);
    assert!(ok, "mosquitto_pub over TLS: {out}");
    let mut args = base(&tls);
    args.extend(["-t", "tls/r", "-C", "1", "-W", "10", "-V", "mqttv5"].map(String::from));
    let (ok, out) = run(&subscriber, args);
    assert!(
        ok && out.contains("over tls"),
        "mosquitto_sub over TLS: {out}"
    );
    // Mutual TLS: with the client certificate, and refused without it or with a bad one.
    let with_cert = |cert: &Path, key: &Path| {
        let mut args = base(&mtls);
        args.extend(
            [
                "--cert",
                path(cert),
                "--key",
                path(key),
                "-t",
                "m/t",
                "-m",
                "x",
                "-q",
                "1",
            ]
            .map(String::from),
        );
        args
    };
    let (ok, out) = run(&publisher, with_cert(&files.client_cert, &files.client_key));
    assert!(ok, "mosquitto_pub with a client certificate: {out}");
    for (what, cert, key) in [
        ("expired", &files.expired_cert, &files.expired_key),
        ("another CA's", &files.stranger_cert, &files.stranger_key),
    ] {
        let (ok, out) = run(&publisher, with_cert(cert, key));
        assert!(
            !ok,
            "mosquitto_pub with an {what} certificate is refused: {out}"
        );
    }
    let mut args = base(&mtls);
    args.extend(["-t", "m/t", "-m", "x", "-q", "1"].map(String::from));
    let (ok, out) = run(&publisher, args);
    assert!(
        !ok,
        "mosquitto_pub without a client certificate is refused: {out}"
    );
    // A certificate for another host name is refused by the verifying client.
    let mut args = base(&port(&server, "wrongname").to_string());
    args.extend(["-t", "w/t", "-m", "x"].map(String::from));
    let (ok, out) = run(&publisher, args);
    assert!(
        !ok,
        "mosquitto_pub refuses a certificate for wrong.example: {out}"
    );
    server.shutdown(Duration::from_secs(5)).await;
}

use keelmq::codec::proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_client_speaks_ws_and_wss() {
    use keelmq_tools::client::{Client, TlsClient, Via};
    let (server, files) = start("tools-ws").await;
    let tls = TlsClient::new(&files.ca, "localhost", None).unwrap();
    for (listener, via) in [
        (
            "ws",
            Via {
                tls: None,
                ws_path: Some("/mqtt".into()),
            },
        ),
        (
            "wss",
            Via {
                tls: Some(tls.clone()),
                ws_path: Some("/mqtt".into()),
            },
        ),
        (
            "tls",
            Via {
                tls: Some(tls.clone()),
                ws_path: None,
            },
        ),
    ] {
        let addr = server.listener_addr(listener).unwrap();
        let wait = Duration::from_secs(5);
        let (mut c, ack) =
            Client::connect_over(addr, &via, ProtocolVersion::V5, listener, true, 0, wait)
                .await
                .unwrap_or_else(|| panic!("connects over {listener}"));
        assert_eq!(ack.code, ReasonCode::SUCCESS);
        c.send(&Packet::PingReq).await;
        let pong = keelmq_tools::client::Recv::Packet(Packet::PingResp);
        assert_eq!(c.recv(wait).await, pong);
        // Over WebSocket each write is one message: a packet split over two messages, then
        // two packets in one message [MQTT-6.0.0-2, MQTT-6.0.0-3].
        c.send_bytes(&[0xC0]).await;
        c.send_bytes(&[0x00]).await;
        assert_eq!(
            c.recv(wait).await,
            pong,
            "{listener}: a packet across messages"
        );
        c.send_bytes(&[0xC0, 0x00, 0xC0, 0x00]).await;
        assert_eq!(
            c.recv(wait).await,
            pong,
            "{listener}: two packets in a message"
        );
        assert_eq!(
            c.recv(wait).await,
            pong,
            "{listener}: two packets in a message"
        );
    }
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_over_tls() {
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
    use rumqttc::{TlsConfiguration, Transport};
    let (server, files) = start("rumqttc-tls").await;
    let mut opts = MqttOptions::new("rumqttc-tls", "127.0.0.1", port(&server, "tls"));
    opts.set_keep_alive(Duration::from_secs(30));
    let ca = std::fs::read(&files.ca).unwrap();
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::SimpleNative {
        ca,
        client_auth: None,
    }));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe("rumqttc/tls", RQoS::ExactlyOnce)
        .await
        .unwrap();
    client
        .publish("rumqttc/tls", RQoS::ExactlyOnce, false, "over OpenSSL")
        .await
        .unwrap();
    let received = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => return p.payload,
                Ok(_) => {}
                Err(e) => panic!("rumqttc over TLS: {e}"),
            }
        }
    });
    assert_eq!(&received.await.unwrap()[..], b"over OpenSSL");
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_s_certificates() {
    let dir = common::temp_dir("sighup");
    let files = TlsFiles::new(&dir.join("certs"));
    let config = dir.join("keelmq.toml");
    let text = format!(
        "[[listeners]]\nkind = \"tcp\"\n\n[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\n\
         cert_file = {:?}\nkey_file = {:?}\n",
        files.server_cert.display().to_string(),
        files.server_key.display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let broker = common::BrokerProcess::start(&["--config", config.to_str().unwrap()]);
    let tls = broker.listener_addr("tls").port();
    assert!(tls_mqtt_connect(tls, client_tls(&files.ca, None), "before")
        .await
        .is_ok());
    let renewed = TlsFiles::new(&dir.join("renewed"));
    std::fs::copy(&renewed.server_cert, &files.server_cert).unwrap();
    std::fs::copy(&renewed.server_key, &files.server_key).unwrap();
    let pid = broker.child.id().to_string();
    let hup = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls_mqtt_connect(tls, client_tls(&renewed.ca, None), "after")
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is served after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tls_mqtt_connect(tls, client_tls(&files.ca, None), "old")
        .await
        .is_err());
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
