//! Byte-literal vectors for every packet type of MQTT 3.1, 3.1.1 and 5.0, decoded and
//! re-encoded, and the rejections the codec must make, each with its spec clause and reason code.

use bytes::{Bytes, BytesMut};
use keelmq::codec::*;

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const MAX: u32 = 1 << 20;

/// Decodes `bytes` as one whole packet, checks nothing is left over, re-encodes it and checks
/// the result is byte-identical.
fn round_trip(v: ProtocolVersion, bytes: &[u8], expected: Packet) {
    let mut decoder = Decoder::with_version(v, MAX);
    let mut buf = BytesMut::from(bytes);
    let packet = decoder
        .decode(&mut buf)
        .expect("decodes")
        .expect("complete");
    assert!(buf.is_empty(), "bytes left over");
    assert_eq!(packet, expected);
    let mut out = BytesMut::new();
    let n = encode(&packet, v, &mut out).expect("encodes");
    assert_eq!(n, bytes.len());
    assert_eq!(encoded_len(&packet, v).unwrap(), bytes.len());
    assert_eq!(&out[..], bytes, "re-encoding differs");
}

fn reject(v: Option<ProtocolVersion>, bytes: &[u8]) -> DecodeError {
    decode_frame(bytes, v, MAX).expect_err("must be rejected")
}

fn s(x: &str) -> String {
    x.to_string()
}

fn publish(qos: QoS, topic: &str, packet_id: u16, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    }
}

// ----------------------------------------------------------------------------------- CONNECT

#[test]
fn connect_v31_mqisdp() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x12,
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, // protocol name, level 3
        0x02, 0x00, 0x3C,                                     // clean session, keep alive 60
        0x00, 0x04, b'c', b'l', b'i', b'1',                   // client id
    ];
    let expected = Connect {
        protocol: V31,
        clean_start: true,
        keep_alive: 60,
        properties: ConnectProperties::default(),
        client_id: s("cli1"),
        will: None,
        username: None,
        password: None,
    };
    round_trip(V31, &bytes, Packet::Connect(Box::new(expected.clone())));
    // The server side learns the version from the CONNECT itself.
    let mut d = Decoder::new(MAX);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Packet::Connect(Box::new(expected)))
    );
    assert_eq!(d.version(), Some(V31));
}

#[test]
fn connect_v311_with_will_user_password() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x24,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
        0xEC,             // user, password, will retain, will QoS 1, will; not clean
        0x00, 0x0A,       // keep alive 10
        0x00, 0x02, b'i', b'd',
        0x00, 0x03, b'w', b'/', b't',            // will topic
        0x00, 0x03, b'b', b'y', b'e',            // will payload
        0x00, 0x04, b'u', b's', b'e', b'r',      // user name
        0x00, 0x04, b'p', b'a', b's', b's',      // password
    ];
    let expected = Connect {
        protocol: V311,
        clean_start: false,
        keep_alive: 10,
        properties: ConnectProperties::default(),
        client_id: s("id"),
        will: Some(LastWill {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"pass")),
    };
    round_trip(V311, &bytes, Packet::Connect(Box::new(expected)));
}

#[test]
fn connect_v5_with_properties_and_will_properties() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x34,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
        0xD6,             // user, password, will QoS 2, will, clean start
        0x00, 0x1E,       // keep alive 30
        0x0D,             // properties: 13 bytes
        0x11, 0x00, 0x00, 0x0E, 0x10,           // session expiry 3600
        0x19, 0x01,                             // request response information
        0x21, 0x00, 0x14,                       // receive maximum 20
        0x22, 0x00, 0x05,                       // topic alias maximum 5
        0x00, 0x01, b'c',                       // client id
        0x0C,             // will properties: 12 bytes
        0x01, 0x01,                             // payload format: UTF-8
        0x02, 0x00, 0x00, 0x00, 0x3C,           // message expiry 60
        0x18, 0x00, 0x00, 0x00, 0x05,           // will delay 5
        0x00, 0x01, b't',
        0x00, 0x01, b'x',
        0x00, 0x01, b'u',
        0x00, 0x01, b'p',
    ];
    assert_eq!(bytes.len() - 2, bytes[1] as usize);
    let expected = Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 30,
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(20),
            topic_alias_maximum: Some(5),
            request_response_information: Some(1),
            ..Default::default()
        },
        client_id: s("c"),
        will: Some(LastWill {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: WillProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                will_delay_interval: Some(5),
                ..Default::default()
            },
        }),
        username: Some(s("u")),
        password: Some(Bytes::from_static(b"p")),
    };
    round_trip(V5, &bytes, Packet::Connect(Box::new(expected)));
}

#[test]
fn connect_v5_password_without_user_name_is_allowed() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x00, 0x00,
        0x00, 0x01, b'c', 0x00, 0x02, b'p', b'w',
    ];
    let p = decode_frame(&bytes, None, MAX).unwrap().unwrap();
    let Packet::Connect(c) = p else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn connect_rejections() {
    let cases: &[(&[u8], DecodeError)] = &[
        // Unknown protocol name.
        (
            &[
                0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'X', b'X', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
            ],
            DecodeError::UnsupportedProtocol {
                name_ok: false,
                level: 4,
            },
        ),
        // Unsupported level.
        (
            &[
                0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x00, 0x00, 0x00,
            ],
            DecodeError::UnsupportedProtocol {
                name_ok: true,
                level: 6,
            },
        ),
        // MQIsdp must be level 3.
        (
            &[
                0x10, 0x0E, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x04, 0x02, 0x00, 0x00,
                0x00, 0x00,
            ],
            DecodeError::UnsupportedProtocol {
                name_ok: true,
                level: 4,
            },
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(reject(None, bytes), *want);
    }
    let clauses: &[(&[u8], &str, u8)] = &[
        // Reserved flag bit 0.
        (
            &[
                0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 0, 0, 0,
            ],
            "[MQTT-3.1.2-3]",
            0x81,
        ),
        // Will QoS without will flag.
        (
            &[
                0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x0A, 0, 0, 0, 0,
            ],
            "[MQTT-3.1.2-11]",
            0x81,
        ),
        // Will retain without will flag.
        (
            &[
                0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x22, 0, 0, 0, 0,
            ],
            "[MQTT-3.1.2-13]",
            0x81,
        ),
        // Will QoS 3.
        (
            &[
                0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x1C, 0, 0, 0, 0,
            ],
            "[MQTT-3.1.2-12]",
            0x81,
        ),
        // 3.1.1 password without user name.
        (
            &[
                0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 0, 0, 0,
            ],
            "[MQTT-3.1.2-22]",
            0x81,
        ),
        // Reserved fixed-header flags on CONNECT.
        (
            &[
                0x11, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 0,
            ],
            "[MQTT-2.1.3-1]",
            0x81,
        ),
        // Client identifier with U+0000.
        (
            &[
                0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 1, 0,
            ],
            "[MQTT-1.5.4-2]",
            0x81,
        ),
        // Client identifier that is not UTF-8.
        (
            &[
                0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 1, 0xFF,
            ],
            "[MQTT-1.5.4-1]",
            0x81,
        ),
        // Trailing byte after the last field.
        (
            &[
                0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 0, 7,
            ],
            "§2.1.4",
            0x81,
        ),
        // v5 receive maximum 0.
        (
            &[
                0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 3, 0x21, 0, 0, 0, 0,
            ],
            "§3.1.2.11.3",
            0x82,
        ),
        // v5 session expiry twice.
        (
            &[
                0x10, 0x17, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 10, 0x11, 0, 0, 0, 1,
                0x11, 0, 0, 0, 2, 0, 0,
            ],
            "§2.2.2.2",
            0x82,
        ),
        // v5 property not allowed on CONNECT (Topic Alias).
        (
            &[
                0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 3, 0x23, 0, 1, 0, 0,
            ],
            "§2.2.2.2",
            0x81,
        ),
        // v5 property block longer than the packet.
        (
            &[
                0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 9, 0x11, 0, 0,
            ],
            "[MQTT-1.5]",
            0x81,
        ),
        // Will topic with a wildcard.
        (
            &[
                0x10, 0x12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x06, 0, 0, 0, 0, 0, 1, b'#', 0, 1,
                b'x',
            ],
            "[MQTT-3.3.2-2]",
            0x81,
        ),
    ];
    for (bytes, clause, code) in clauses {
        let e = reject(None, bytes);
        assert_eq!(
            (e.clause(), e.reason_code().0),
            (*clause, *code),
            "{bytes:02X?}: {e}"
        );
    }
}

// ----------------------------------------------------------------------------------- CONNACK

#[test]
fn connack_all_versions() {
    for v in [V31, V311] {
        let ack = ConnAck {
            session_present: true,
            code: ReasonCode::SUCCESS,
            properties: Default::default(),
        };
        round_trip(v, &[0x20, 0x02, 0x01, 0x00], Packet::ConnAck(ack));
        let refused = ConnAck {
            session_present: false,
            code: ReasonCode(5),
            properties: Default::default(),
        };
        round_trip(v, &[0x20, 0x02, 0x00, 0x05], Packet::ConnAck(refused));
        assert_eq!(
            reject(Some(v), &[0x20, 0x02, 0x00, 0x06]).clause(),
            "§3.2.2.3"
        );
    }
    #[rustfmt::skip]
    let bytes = [
        0x20, 0x1C, 0x00, 0x00, 0x19,
        0x12, 0x00, 0x03, b'a', b'b', b'c',     // assigned client identifier
        0x13, 0x00, 0x3C,                       // server keep alive 60
        0x21, 0x00, 0x0A,                       // receive maximum 10
        0x22, 0x00, 0x08,                       // topic alias maximum 8
        0x24, 0x01,                             // maximum QoS 1
        0x25, 0x01,                             // retain available
        0x28, 0x01, 0x29, 0x00, 0x2A, 0x01,     // wildcard, sub ids, shared
    ];
    let ack = ConnAck {
        session_present: false,
        code: ReasonCode::SUCCESS,
        properties: ConnAckProperties {
            assigned_client_identifier: Some(s("abc")),
            server_keep_alive: Some(60),
            receive_maximum: Some(10),
            topic_alias_maximum: Some(8),
            maximum_qos: Some(1),
            retain_available: Some(1),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(0),
            shared_subscription_available: Some(1),
            ..Default::default()
        },
    };
    round_trip(V5, &bytes, Packet::ConnAck(ack));
    // Session present with a failure code [MQTT-3.2.2-6]; reserved flags [MQTT-3.2.2-1];
    // a reason code CONNACK may not carry (0x04); maximum QoS 2.
    assert_eq!(
        reject(Some(V5), &[0x20, 0x03, 0x01, 0x80, 0x00]).clause(),
        "[MQTT-3.2.2-6]"
    );
    assert_eq!(
        reject(Some(V5), &[0x20, 0x03, 0x02, 0x00, 0x00]).clause(),
        "[MQTT-3.2.2-1]"
    );
    assert_eq!(
        reject(Some(V5), &[0x20, 0x03, 0x00, 0x04, 0x00]).clause(),
        "§2.4"
    );
    assert_eq!(
        reject(Some(V5), &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02]).clause(),
        "§2.2.2.2"
    );
}

// ----------------------------------------------------------------------------------- PUBLISH

#[test]
fn publish_all_versions() {
    for v in [V31, V311, V5] {
        let extra: &[u8] = if v == V5 { &[0x00] } else { &[] };
        // QoS 0.
        let mut bytes = vec![0x30, 0x00, 0x00, 0x03, b'a', b'/', b'b'];
        bytes.extend_from_slice(extra);
        bytes.extend_from_slice(b"hello");
        bytes[1] = (bytes.len() - 2) as u8;
        round_trip(
            v,
            &bytes,
            Packet::Publish(publish(QoS::AtMostOnce, "a/b", 0, b"hello")),
        );
        // QoS 1, retain, with packet id 10.
        let mut bytes = vec![0x33, 0x00, 0x00, 0x01, b't', 0x00, 0x0A];
        bytes.extend_from_slice(extra);
        bytes.extend_from_slice(b"x");
        bytes[1] = (bytes.len() - 2) as u8;
        let mut p = publish(QoS::AtLeastOnce, "t", 10, b"x");
        p.retain = true;
        round_trip(v, &bytes, Packet::Publish(p));
        // QoS 2 with DUP and an empty payload.
        let mut bytes = vec![0x3C, 0x00, 0x00, 0x01, b't', 0xFF, 0xFF];
        bytes.extend_from_slice(extra);
        bytes[1] = (bytes.len() - 2) as u8;
        let mut p = publish(QoS::ExactlyOnce, "t", 0xFFFF, b"");
        p.dup = true;
        round_trip(v, &bytes, Packet::Publish(p));
    }
}

#[test]
fn publish_v5_properties() {
    #[rustfmt::skip]
    let bytes = [
        0x32, 0x2E, 0x00, 0x01, b't', 0x00, 0x01,
        0x26,                                   // properties: 38 bytes
        0x01, 0x01,                             // payload format indicator
        0x02, 0x00, 0x00, 0x00, 0x0A,           // message expiry 10
        0x03, 0x00, 0x04, b'j', b's', b'o', b'n',   // content type
        0x08, 0x00, 0x01, b'r',                 // response topic
        0x09, 0x00, 0x02, 0x01, 0x02,           // correlation data
        0x0B, 0x05, 0x0B, 0x80, 0x01,           // subscription ids 5 and 128
        0x23, 0x00, 0x03,                       // topic alias 3
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',   // user property
        b'{', b'}',
    ];
    assert_eq!(bytes.len() - 2, bytes[1] as usize);
    let mut p = publish(QoS::AtLeastOnce, "t", 1, b"{}");
    p.properties = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(10),
        content_type: Some(s("json")),
        response_topic: Some(s("r")),
        correlation_data: Some(Bytes::from_static(&[1, 2])),
        subscription_identifiers: vec![5, 128],
        topic_alias: Some(3),
        user_properties: vec![(s("k"), s("v"))],
    };
    round_trip(V5, &bytes, Packet::Publish(p));
    // An empty topic name is allowed only with a topic alias.
    let mut p = publish(QoS::AtMostOnce, "", 0, b"z");
    p.properties.topic_alias = Some(7);
    round_trip(
        V5,
        &[0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07, b'z'],
        Packet::Publish(p),
    );
}

#[test]
fn publish_rejections() {
    let cases: &[(ProtocolVersion, &[u8], &str, u8)] = &[
        (
            V311,
            &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01],
            "[MQTT-3.3.1-4]",
            0x81,
        ), // QoS 3
        (
            V311,
            &[0x38, 0x03, 0x00, 0x01, b't'],
            "[MQTT-3.3.1-2]",
            0x81,
        ), // DUP on QoS 0
        (
            V311,
            &[0x30, 0x03, 0x00, 0x01, b'+'],
            "[MQTT-3.3.2-2]",
            0x81,
        ), // wildcard
        (
            V311,
            &[0x30, 0x03, 0x00, 0x01, b'#'],
            "[MQTT-3.3.2-2]",
            0x81,
        ),
        (
            V311,
            &[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00],
            "[MQTT-2.2.1-3]",
            0x82,
        ), // id 0
        (V311, &[0x30, 0x02, 0x00, 0x00], "[MQTT-4.7.3-1]", 0x81), // empty topic
        (V5, &[0x30, 0x03, 0x00, 0x00, 0x00], "§3.3.2.3.4", 0x82), // empty topic, no alias
        (
            V5,
            &[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00],
            "[MQTT-3.3.2-8]",
            0x94,
        ),
        (
            V5,
            &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x01, 0x02],
            "§2.2.2.2",
            0x82,
        ), // PFI 2
        (
            V5,
            &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x0B, 0x00],
            "§3.8.2.1.2",
            0x82,
        ), // sub id 0
        (
            V5,
            &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x11, 0x00],
            "[MQTT-1.5]",
            0x81,
        ), // truncated
        (
            V5,
            &[0x30, 0x05, 0x00, 0x01, b't', 0x01, 0x7F],
            "§2.2.2.2",
            0x81,
        ), // unknown id
        (
            V5,
            &[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x08, 0x00, 0x01, b'#'],
            "[MQTT-3.3.2-14]",
            0x81,
        ),
        (V5, &[0x30, 0x03, 0x00, 0x05, b't'], "[MQTT-1.5]", 0x81), // topic past the end
    ];
    for (v, bytes, clause, code) in cases {
        let e = reject(Some(*v), bytes);
        assert_eq!(
            (e.clause(), e.reason_code().0),
            (*clause, *code),
            "{bytes:02X?}: {e}"
        );
    }
}

// --------------------------------------------------------------- PUBACK PUBREC PUBREL PUBCOMP

#[test]
fn publish_acks_all_versions() {
    let make = |t: u8, a: PubAck| match t {
        4 => Packet::PubAck(a),
        5 => Packet::PubRec(a),
        6 => Packet::PubRel(a),
        _ => Packet::PubComp(a),
    };
    for t in 4u8..=7 {
        let first = (t << 4) | if t == 6 { 0x02 } else { 0x00 };
        for v in [V31, V311, V5] {
            round_trip(v, &[first, 0x02, 0x12, 0x34], make(t, PubAck::new(0x1234)));
            // The wrong fixed-header flags [MQTT-2.1.3-1].
            let e = reject(Some(v), &[first ^ 0x02, 0x02, 0x12, 0x34]);
            assert_eq!(e.clause(), "[MQTT-2.1.3-1]");
            // Packet identifier 0.
            assert_eq!(
                reject(Some(v), &[first, 0x02, 0x00, 0x00]).clause(),
                "[MQTT-2.2.1-3]"
            );
        }
        // 3.x has no reason code: a third byte is malformed.
        assert_eq!(
            reject(Some(V311), &[first, 0x03, 0x00, 0x01, 0x00]).clause(),
            "§2.1.4"
        );
        // v5: reason code only, and reason code plus properties.
        let code = if t <= 5 { 0x10 } else { 0x92 };
        let mut a = PubAck::new(1);
        a.reason = ReasonCode(code);
        // The short form without property length decodes; we always write the length.
        let short = decode_frame(&[first, 0x03, 0x00, 0x01, code], Some(V5), MAX).unwrap();
        assert_eq!(short, Some(make(t, a.clone())));
        round_trip(
            V5,
            &[first, 0x04, 0x00, 0x01, code, 0x00],
            make(t, a.clone()),
        );
        a.properties.reason_string = Some(s("why"));
        a.properties.user_properties.push((s("a"), s("b")));
        #[rustfmt::skip]
        let bytes = [first, 0x11, 0x00, 0x01, code, 0x0D,
            0x1F, 0x00, 0x03, b'w', b'h', b'y', 0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b'];
        round_trip(V5, &bytes, make(t, a));
        // A reason code this packet may not carry.
        let bad = if t <= 5 { 0x92 } else { 0x10 };
        assert_eq!(
            reject(Some(V5), &[first, 0x03, 0x00, 0x01, bad]).clause(),
            "§2.4"
        );
        // A property not allowed on an acknowledgement.
        let e = reject(Some(V5), &[first, 0x06, 0x00, 0x01, 0x00, 0x02, 0x01, 0x01]);
        assert_eq!(e.clause(), "§2.2.2.2");
    }
}

// --------------------------------------------------------------------- SUBSCRIBE and SUBACK

#[test]
fn subscribe_all_versions() {
    for v in [V31, V311] {
        #[rustfmt::skip]
        let bytes = [0x82, 0x0E, 0x00, 0x0A,
            0x00, 0x03, b'a', b'/', b'#', 0x01,
            0x00, 0x03, b'+', b'/', b'b', 0x02];
        let sub = Subscribe {
            packet_id: 10,
            properties: Default::default(),
            filters: vec![
                (s("a/#"), SubscriptionOptions::qos(QoS::AtLeastOnce)),
                (s("+/b"), SubscriptionOptions::qos(QoS::ExactlyOnce)),
            ],
        };
        round_trip(v, &bytes, Packet::Subscribe(sub));
        // 3.x: option bits above QoS are reserved [MQTT-3.8.3-5].
        let e = reject(Some(v), &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04]);
        assert_eq!(e.clause(), "[MQTT-3.8.3-5]");
    }
    #[rustfmt::skip]
    let bytes = [0x82, 0x1A, 0x00, 0x02,
        0x02, 0x0B, 0x07,                          // subscription identifier 7
        0x00, 0x01, b'a', 0x2D,                    // QoS 1, no local, retain as published, RH 2
        0x00, 0x0E, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', b'/', b'+',
        b'/', b'#', 0x10]; // QoS 0, RH 1
    let sub = Subscribe {
        packet_id: 2,
        properties: SubscribeProperties {
            subscription_identifier: Some(7),
            ..Default::default()
        },
        filters: vec![
            (
                s("a"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::Never,
                },
            ),
            (
                s("$share/g/x/+/#"),
                SubscriptionOptions {
                    retain_handling: RetainHandling::OnNewSubscribe,
                    ..SubscriptionOptions::qos(QoS::AtMostOnce)
                },
            ),
        ],
    };
    round_trip(V5, &bytes, Packet::Subscribe(sub));
    let cases: &[(ProtocolVersion, &[u8], &str, u8)] = &[
        (V311, &[0x82, 0x02, 0x00, 0x01], "[MQTT-3.8.3-2]", 0x82), // no filters
        (V5, &[0x82, 0x03, 0x00, 0x01, 0x00], "[MQTT-3.8.3-2]", 0x82),
        (
            V311,
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            "[MQTT-2.1.3-1]",
            0x81,
        ),
        (
            V311,
            &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
            "[MQTT-2.2.1-3]",
            0x82,
        ),
        (
            V311,
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03],
            "[MQTT-3.8.3-4]",
            0x81,
        ), // QoS 3
        (
            V5,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
            "§3.8.3.1",
            0x82,
        ), // RH 3
        (
            V5,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40],
            "[MQTT-3.8.3-5]",
            0x81,
        ),
        (
            V311,
            &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'#', b'b', 0x00],
            "[MQTT-4.7.1-1]",
            0x81,
        ),
        (
            V311,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x02, b'a', b'+', 0x00],
            "[MQTT-4.7.1-2]",
            0x81,
        ),
        (
            V311,
            &[0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
            "[MQTT-4.7.3-1]",
            0x81,
        ), // empty
        (
            V5,
            &[
                0x82, 0x0F, 0x00, 0x01, 0x00, 0x00, 0x09, b'$', b's', b'h', b'a', b'r', b'e', b'/',
                b'g', b'/', 0x00,
            ],
            "[MQTT-4.8.2-2]",
            0x81,
        ),
        (
            V5,
            &[
                0x82, 0x10, 0x00, 0x01, 0x00, 0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/',
                b'g', b'/', b'a', 0x04,
            ],
            "[MQTT-3.8.3-4]",
            0x82,
        ), // no local on shared
        (
            V5,
            &[
                0x82, 0x0A, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x00, 0x00,
            ],
            "§2.2.2.2",
            0x82,
        ), // two subscription identifiers
    ];
    for (v, bytes, clause, code) in cases {
        let e = reject(Some(*v), bytes);
        assert_eq!(
            (e.clause(), e.reason_code().0),
            (*clause, *code),
            "{bytes:02X?}: {e}"
        );
    }
}

#[test]
fn suback_all_versions() {
    for v in [V31, V311] {
        let ack = SubAck {
            packet_id: 10,
            properties: Default::default(),
            reason_codes: vec![
                ReasonCode(0),
                ReasonCode(1),
                ReasonCode(2),
                ReasonCode(0x80),
            ],
        };
        round_trip(
            v,
            &[0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80],
            Packet::SubAck(ack),
        );
        assert_eq!(
            reject(Some(v), &[0x90, 0x03, 0x00, 0x0A, 0x87]).clause(),
            "§2.4"
        );
    }
    let ack = SubAck {
        packet_id: 10,
        properties: AckProperties {
            reason_string: Some(s("r")),
            user_properties: vec![],
        },
        reason_codes: vec![ReasonCode(0x02), ReasonCode(0x87), ReasonCode(0xA2)],
    };
    #[rustfmt::skip]
    let bytes = [0x90, 0x0A, 0x00, 0x0A, 0x04, 0x1F, 0x00, 0x01, b'r', 0x02, 0x87, 0xA2];
    round_trip(V5, &bytes, Packet::SubAck(ack));
    assert_eq!(
        reject(Some(V5), &[0x90, 0x03, 0x00, 0x0A, 0x00]).clause(),
        "§3.9.3"
    );
}

// ----------------------------------------------------------------- UNSUBSCRIBE and UNSUBACK

#[test]
fn unsubscribe_and_unsuback_all_versions() {
    for v in [V31, V311, V5] {
        let extra: &[u8] = if v == V5 { &[0x00] } else { &[] };
        let mut bytes = vec![0xA2, 0x00, 0x00, 0x05];
        bytes.extend_from_slice(extra);
        bytes.extend_from_slice(&[0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'#']);
        bytes[1] = (bytes.len() - 2) as u8;
        let unsub = Unsubscribe {
            packet_id: 5,
            properties: Default::default(),
            filters: vec![s("a/b"), s("#")],
        };
        round_trip(v, &bytes, Packet::Unsubscribe(unsub));
        let mut empty = vec![0xA2, 0x02, 0x00, 0x05];
        empty.extend_from_slice(extra);
        empty[1] = (empty.len() - 2) as u8;
        let e = reject(Some(v), &empty);
        assert_eq!((e.clause(), e.reason_code().0), ("[MQTT-3.10.3-2]", 0x82));
    }
    for v in [V31, V311] {
        let ack = UnsubAck {
            packet_id: 5,
            properties: Default::default(),
            reason_codes: vec![],
        };
        round_trip(v, &[0xB0, 0x02, 0x00, 0x05], Packet::UnsubAck(ack));
    }
    let ack = UnsubAck {
        packet_id: 5,
        properties: Default::default(),
        reason_codes: vec![ReasonCode(0x00), ReasonCode(0x11)],
    };
    round_trip(
        V5,
        &[0xB0, 0x05, 0x00, 0x05, 0x00, 0x00, 0x11],
        Packet::UnsubAck(ack),
    );
    assert_eq!(
        reject(Some(V5), &[0xB0, 0x04, 0x00, 0x05, 0x00, 0x01]).clause(),
        "§2.4"
    );
}

// ------------------------------------------------------------ PINGREQ PINGRESP DISCONNECT AUTH

#[test]
fn ping_disconnect_auth() {
    for v in [V31, V311, V5] {
        round_trip(v, &[0xC0, 0x00], Packet::PingReq);
        round_trip(v, &[0xD0, 0x00], Packet::PingResp);
        round_trip(
            v,
            &[0xE0, 0x00],
            Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)),
        );
        assert_eq!(reject(Some(v), &[0xC0, 0x01, 0x00]).clause(), "§3.12");
        assert_eq!(reject(Some(v), &[0xC1, 0x00]).clause(), "[MQTT-2.1.3-1]");
        assert_eq!(reject(Some(v), &[0xE2, 0x00]).clause(), "[MQTT-2.1.3-1]");
    }
    assert_eq!(reject(Some(V311), &[0xE0, 0x01, 0x04]).clause(), "§2.1.4");
    // v5 DISCONNECT with a reason code, then with properties.
    let d = Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE);
    let short = decode_frame(&[0xE0, 0x01, 0x04], Some(V5), MAX).unwrap();
    assert_eq!(short, Some(Packet::Disconnect(d.clone())));
    round_trip(V5, &[0xE0, 0x02, 0x04, 0x00], Packet::Disconnect(d));
    let mut d = Disconnect::new(ReasonCode::SERVER_MOVED);
    d.properties.server_reference = Some(s("h"));
    d.properties.session_expiry_interval = Some(0);
    #[rustfmt::skip]
    let bytes = [0xE0, 0x0B, 0x9D, 0x09, 0x11, 0x00, 0x00, 0x00, 0x00, 0x1C, 0x00, 0x01, b'h'];
    round_trip(V5, &bytes, Packet::Disconnect(d));
    assert_eq!(reject(Some(V5), &[0xE0, 0x01, 0x05]).clause(), "§2.4");
    // AUTH.
    let a = Auth {
        reason: ReasonCode::SUCCESS,
        properties: Default::default(),
    };
    round_trip(V5, &[0xF0, 0x00], Packet::Auth(a));
    let a = Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: AuthProperties {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(Bytes::from_static(b"\x01")),
            ..Default::default()
        },
    };
    #[rustfmt::skip]
    let bytes = [0xF0, 0x0E, 0x18, 0x0C, 0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M',
        0x16, 0x00, 0x01, 0x01];
    round_trip(V5, &bytes, Packet::Auth(a));
    // AUTH does not exist before 5.0, and 0x04 is not an AUTH reason code.
    assert_eq!(reject(Some(V311), &[0xF0, 0x00]).clause(), "§2.1.2");
    assert_eq!(reject(Some(V5), &[0xF0, 0x02, 0x04, 0x00]).clause(), "§2.4");
    let mut buf = BytesMut::new();
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::SUCCESS,
        properties: Default::default(),
    });
    assert_eq!(
        encode(&auth, V311, &mut buf),
        Err(EncodeError::NotInVersion("AUTH"))
    );
}

// ------------------------------------------------------------------------ framing and limits

#[test]
fn incremental_decoding_needs_more_bytes_not_errors() {
    let bytes = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    let mut d = Decoder::with_version(V311, MAX);
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = d.decode(&mut buf).unwrap();
        assert_eq!(got.is_some(), i == bytes.len() - 1, "byte {i}");
    }
    // Two packets in one buffer come out one at a time.
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0, 0x00][..]);
    assert_eq!(d.decode(&mut buf).unwrap(), Some(Packet::PingReq));
    assert_eq!(d.decode(&mut buf).unwrap(), Some(Packet::PingResp));
    assert_eq!(d.decode(&mut buf).unwrap(), None);
}

#[test]
fn oversized_packets_are_refused_from_the_fixed_header() {
    let mut d = Decoder::with_version(V5, 100);
    // Announces 200 bytes; only the fixed header is present.
    let mut buf = BytesMut::from(&[0x30, 0xC8, 0x01][..]);
    let e = d.decode(&mut buf).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 203,
            max: 100
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // The largest remaining length the protocol allows, refused without buffering 256 MiB.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert!(matches!(
        d.decode(&mut buf),
        Err(DecodeError::PacketTooLarge { .. })
    ));
    assert!(buf.capacity() < 1024);
}

#[test]
fn remaining_length_rules() {
    // Five length bytes.
    let e = reject(Some(V311), &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    assert_eq!(e.clause(), "[MQTT-1.5.5-1]");
    // Non-minimal encoding of 0.
    let e = reject(Some(V311), &[0xC0, 0x80, 0x00]);
    assert_eq!(e.clause(), "[MQTT-1.5.5-1]");
    // Reserved packet type 0.
    assert_eq!(reject(Some(V311), &[0x00, 0x00]).clause(), "§2.1.2");
    // A server-side decoder refuses anything before CONNECT.
    assert_eq!(reject(None, &[0xC0, 0x00]).clause(), "[MQTT-3.1.0-1]");
}

#[test]
fn every_encoding_error_is_reported() {
    let mut buf = BytesMut::new();
    let long = "x".repeat(70_000);
    let p = Packet::Publish(publish(QoS::AtMostOnce, &long, 0, b""));
    assert_eq!(
        encode(&p, V311, &mut buf),
        Err(EncodeError::FieldTooLong("topic name"))
    );
    let p = Packet::Publish(publish(QoS::AtLeastOnce, "t", 0, b""));
    assert!(matches!(
        encode(&p, V311, &mut buf),
        Err(EncodeError::OutOfRange(_))
    ));
    let mut p = publish(QoS::AtMostOnce, "t", 0, b"");
    p.properties.subscription_identifiers.push(VARINT_MAX + 1);
    assert!(matches!(
        encode(&Packet::Publish(p), V5, &mut buf),
        Err(EncodeError::OutOfRange(_))
    ));
    assert!(buf.is_empty(), "nothing is written when encoding fails");
}
