//! Authorization with a Mosquitto-format ACL file, checked by Eclipse Paho (exact SUBACK,
//! PUBACK, PUBREC and DISCONNECT reason codes, for MQTT 5 and 3.1.1; see `tests/paho/acl.py`)
//! and by `mosquitto_sub` (reload on SIGHUP).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{self, BrokerProcess};

const ACL: &str = "\
# Anonymous clients: public topics only.
topic readwrite public/#

user alice
topic readwrite fleet/alice/#
topic deny fleet/alice/secret
topic read $SYS/broker/uptime

user admin
topic readwrite #
topic read $SYS/#

# Every client: its own device topics; users: their inbox.
pattern readwrite devices/%c/#
pattern read inbox/%u/#
";

/// A directory with the password file (alice, admin, mallory; password `<user>-pw`), the ACL
/// and a configuration with `extra` appended; returns (directory, config path).
fn setup(name: &str, extra: &str) -> (PathBuf, PathBuf) {
    let dir = common::temp_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("passwd");
    for (i, user) in ["alice", "admin", "mallory"].iter().enumerate() {
        common::keelmq_passwd_set(&passwd, user, &format!("{user}-pw"), i == 0);
    }
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let config = dir.join("keelmq.toml");
    let text = format!(
        "[[auth.chain]]\nkind = \"password_file\"\npath = {:?}\n\
         [auth]\nallow_anonymous = true\n\
         [authz]\nacl_file = {:?}\nno_match = \"deny\"\n{extra}",
        passwd.to_str().unwrap(),
        acl.to_str().unwrap()
    );
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

fn paho(broker: &BrokerProcess, scenario: &str) {
    let Some(python) = common::paho_python() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho/acl.py");
    let port = broker.port().to_string();
    let args: Vec<&std::ffi::OsStr> = vec![scenario.as_ref(), "127.0.0.1".as_ref(), port.as_ref()];
    let run = common::run_python(&python, &script, &args, Duration::from_secs(60));
    assert!(
        run.status.is_some_and(|s| s.success()),
        "paho acl {scenario}: {:?}\n--- stdout\n{}--- stderr\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
}

/// rumqttc (MQTT 5) as alice publishing at QoS 2 on `topic`: the PUBREC's reason (paho
/// does not report it).
fn alice_qos2_pubrec(port: u16, topic: &str) -> rumqttc::v5::mqttbytes::v5::PubRecReason {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = MqttOptions::new("alice-rumqttc", "127.0.0.1", port);
        options.set_credentials("alice", "alice-pw");
        let (client, mut events) = AsyncClient::new(options, 10);
        let qos = rumqttc::v5::mqttbytes::QoS::ExactlyOnce;
        client.publish(topic, qos, false, "x").await.unwrap();
        let pubrec = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubRec(p))) => return p.reason,
                    // How rumqttc reports a PUBREC with a failure reason.
                    Err(ConnectionError::MqttState(StateError::PubRecFail { reason })) => {
                        return reason
                    }
                    Ok(_) => {}
                    Err(e) => panic!("rumqttc: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), pubrec)
            .await
            .expect("a PUBREC in time")
    })
}

#[test]
fn paho_sees_the_acl_s_exact_reason_codes() {
    let (dir, config) = setup("acl-rules", "");
    let broker = BrokerProcess::start(&["--config", config.to_str().unwrap()]);
    paho(&broker, "rules");
    paho(&broker, "will");
    use rumqttc::v5::mqttbytes::v5::PubRecReason;
    let port = broker.port();
    assert_eq!(
        alice_qos2_pubrec(port, "fleet/bob/pos"),
        PubRecReason::NotAuthorized
    );
    let allowed = alice_qos2_pubrec(port, "fleet/alice/pos");
    assert!(matches!(
        allowed,
        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
    ));
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deny_action_disconnect_closes_with_0x87() {
    let (dir, config) = setup("acl-disconnect", "deny_action = \"disconnect\"\n");
    let broker = BrokerProcess::start(&["--config", config.to_str().unwrap()]);
    paho(&broker, "disconnect");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mosquitto_sub -E` (exit once subscribed) as mallory on `filter`: whether the broker granted it.
fn mallory_may_subscribe(tool: &Path, port: u16, filter: &str) -> bool {
    let args = [
        "-V",
        "mqttv5",
        "-E",
        "-u",
        "mallory",
        "-P",
        "mallory-pw",
        "-t",
        filter,
    ];
    let run = common::mosquitto(tool, port, &args);
    run.code == Some(0) && !run.stderr.contains("denied")
}

#[test]
fn sighup_swaps_the_acl_and_a_broken_one_keeps_the_old() {
    let Some(sub) = common::tool("mosquitto_sub") else {
        return;
    };
    let (dir, config) = setup("acl-reload", "");
    let broker = BrokerProcess::start(&["--config", config.to_str().unwrap()]);
    let port = broker.port();
    assert!(!mallory_may_subscribe(&sub, port, "news/#"));
    let hup = || {
        let pid = broker.child.id().to_string();
        let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(status.success());
    };
    std::fs::write(
        dir.join("acl"),
        format!("{ACL}user mallory\ntopic read news/#\n"),
    )
    .unwrap();
    hup();
    let granted = common::wait_until(Duration::from_secs(10), || {
        mallory_may_subscribe(&sub, port, "news/#")
    });
    assert!(granted, "the new rule applies after SIGHUP");
    std::fs::write(dir.join("acl"), "topic read a/#/b\n").unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        mallory_may_subscribe(&sub, port, "news/#"),
        "the old rules stay"
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_names_the_acl_file_and_line() {
    let dir = common::temp_dir("acl-check");
    std::fs::create_dir_all(&dir).unwrap();
    let acl = dir.join("acl");
    std::fs::write(&acl, "user alice\ntopic read a/#/b\n").unwrap();
    let text = format!("[authz]\nacl_file = {:?}\n", acl.to_str().unwrap());
    let (ok, err) = common::check_config(&dir, "c.toml", &text);
    assert!(!ok);
    assert!(
        err.contains("authz.acl_file") && err.contains("line 2"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mosquitto_pub` at QoS 1 with extra arguments; (exit code, stderr).
fn mosquitto_pub(tool: &Path, port: u16, args: &[&str]) -> (i32, String) {
    let mut all = vec!["-V", "mqttv5", "-q", "1", "-m", "x"];
    all.extend_from_slice(args);
    let run = common::mosquitto(tool, port, &all);
    (run.code.unwrap_or(-1), run.stderr)
}

/// The README's worked example: a mutual-TLS listener whose verified certificate's CN is the
/// username, no anonymous access, and an ACL `pattern` that gives each user its own topics.
#[test]
fn mutual_tls_cn_names_the_user_and_acl_patterns_use_it() {
    let Some(publ) = common::tool("mosquitto_pub") else {
        return;
    };
    let dir = common::temp_dir("acl-mtls");
    let files = common::certs::TlsFiles::new(&dir);
    let acl = dir.join("acl");
    std::fs::write(&acl, "pattern readwrite cars/%u/#\n").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let config = dir.join("keelmq.toml");
    let text = format!(
        "[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"mtls\"\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\n\
         cert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\n\
         verify_peer = true\nfail_if_no_peer_cert = true\npeer_cert_as_username = \"cn\"\n\
         [auth]\nallow_anonymous = false\n\
         [authz]\nacl_file = {:?}\nno_match = \"deny\"\n",
        s(&files.server_cert),
        s(&files.server_key),
        s(&files.ca),
        s(&acl)
    );
    std::fs::write(&config, text).unwrap();
    let broker = BrokerProcess::start(&["--config", &s(&config)]);
    let tls_port = broker.listener_addr("mtls").port();
    let (ca, cert, key) = (s(&files.ca), s(&files.client_cert), s(&files.client_key));
    let tls = ["--cafile", &ca, "--cert", &cert, "--key", &key];
    // The certificate's CN is car-17: its own topics only.
    let own: Vec<&str> = tls
        .iter()
        .copied()
        .chain(["-t", "cars/car-17/pos"])
        .collect();
    let (code, err) = mosquitto_pub(&publ, tls_port, &own);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("failed"), "{err}");
    let other: Vec<&str> = tls
        .iter()
        .copied()
        .chain(["-t", "cars/car-18/pos"])
        .collect();
    let (_, err) = mosquitto_pub(&publ, tls_port, &other);
    assert!(err.contains("Not authorized"), "another car's topic: {err}");
    // A username in the CONNECT does not override the certificate's.
    let claimed: Vec<&str> = tls
        .iter()
        .copied()
        .chain(["-u", "car-18", "-t", "cars/car-18/pos"])
        .collect();
    let (_, err) = mosquitto_pub(&publ, tls_port, &claimed);
    assert!(err.contains("Not authorized"), "a claimed username: {err}");
    // Without a certificate on the plain listener: not authorized (5.0 0x87).
    let (code, _) = mosquitto_pub(&publ, broker.port(), &["-t", "cars/car-17/pos"]);
    assert_eq!(code, 0x87);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A QoS 2 PUBLISH already accepted (PUBREC sent, the message stored) and re-sent after the
/// ACL changed is still a re-send: acknowledged as before and delivered once. (Authorizing it
/// again would answer 0x87 for a message the broker keeps, and the client would then reuse
/// the packet id for a message the broker would take for that re-send.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_resend_is_acknowledged_as_before_after_the_acl_changed() {
    use crate::common::raw::{publish_packet, RawClient};
    use keelmq::codec::*;
    let dir = common::temp_dir("acl-qos2");
    std::fs::create_dir_all(&dir).unwrap();
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite t/#\n").unwrap();
    let mut config = common::test_config();
    config.authz.acl_file = Some(acl.clone());
    config.authz.no_match = keelmq::config::NoMatch::Deny;
    let server = common::start(config).await;
    let addr = server.local_addr();
    let v5 = ProtocolVersion::V5;
    let (mut watcher, _) = RawClient::connect(addr, v5, "watcher", true, |_| {}).await;
    watcher
        .subscribe(1, "t/#", SubscriptionOptions::qos(QoS::AtMostOnce))
        .await;
    let (mut c, _) = RawClient::connect(addr, v5, "pub", true, |_| {}).await;
    c.publish("t/x", b"once", QoS::ExactlyOnce, 7, false).await;
    let pubrec = |p: Packet| match p {
        Packet::PubRec(a) => (a.packet_id, a.reason),
        other => panic!("expected PUBREC, got {other:?}"),
    };
    assert_eq!(pubrec(c.next().await), (7, ReasonCode::SUCCESS));
    // The ACL now denies t/#; the client re-sends (its PUBREC was lost, say).
    std::fs::write(&acl, "topic readwrite other/#\n").unwrap();
    assert_eq!(server.reload_auth().await, 0);
    let Packet::Publish(mut again) = publish_packet("t/x", b"once", QoS::ExactlyOnce, 7, false)
    else {
        unreachable!()
    };
    again.dup = true;
    c.send(&Packet::Publish(again)).await;
    assert_eq!(
        pubrec(c.next().await),
        (7, ReasonCode::SUCCESS),
        "a re-send"
    );
    c.send(&Packet::PubRel(PubAck::new(7))).await;
    assert!(
        matches!(c.next().await, Packet::PubComp(a) if a.packet_id == 7 && a.reason == ReasonCode::SUCCESS)
    );
    let delivered = watcher.next_publish().await;
    assert_eq!(&delivered.payload[..], b"once");
    watcher.expect_silence(Duration::from_millis(300)).await;
    // A new message to t/ is refused now.
    c.publish("t/y", b"new", QoS::ExactlyOnce, 8, false).await;
    assert_eq!(pubrec(c.next().await), (8, ReasonCode::NOT_AUTHORIZED));
    server.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
