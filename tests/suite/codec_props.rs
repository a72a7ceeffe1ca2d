//! Property tests of the codec: encoding then decoding any valid packet of any version is the
//! identity, splitting the bytes at any point changes nothing, and no byte sequence panics the
//! decoder.

use bytes::{Bytes, BytesMut};
use keelmq::codec::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

const MAX: u32 = 1 << 24;

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Any string MQTT allows: valid UTF-8 without U+0000.
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 é$_-]{1,6}(/[a-zA-Z0-9é_-]{0,6}){0,4}"
}

fn topic_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof!["[a-z0-9é]{0,5}", Just("+".to_string())];
    (vec(level, 1..5), any::<bool>(), option::of("[a-z0-9]{1,4}")).prop_map(
        |(levels, hash, share)| {
            let mut f = levels.join("/");
            if f.is_empty() {
                // A topic filter is at least one character long [MQTT-4.7.3-1].
                f.push('e');
            }
            if hash {
                f.push_str("/#");
            }
            match share {
                Some(group) => format!("$share/{group}/{f}"),
                None => f,
            }
        },
    )
}

fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn user_props() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..3)
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    option::of(0u8..=1)
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(1u16..),
        option::of(1u32..),
        option::of(any::<u16>()),
        flag(),
        flag(),
        user_props(),
        option::of(text()),
        option::of(bin()),
    )
        .prop_map(
            |(se, rm, mps, tam, rri, rpi, up, am, ad)| ConnectProperties {
                session_expiry_interval: se,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: up,
                authentication_method: am,
                authentication_data: ad,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        flag(),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic_name()),
        option::of(bin()),
        user_props(),
    )
        .prop_map(|(wd, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wd,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    (
        any::<bool>(),
        any::<u16>(),
        connect_properties(),
        text(),
        option::of((topic_name(), bin(), qos(), any::<bool>(), will_properties())),
        option::of(text()),
        option::of(bin()),
    )
        .prop_map(
            move |(clean_start, keep_alive, props, client_id, will, username, password)| {
                // 3.x allows a password only together with a user name [MQTT-3.1.2-22].
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    properties: if v5 { props } else { Default::default() },
                    client_id,
                    will: will.map(|(topic, payload, qos, retain, wp)| LastWill {
                        topic: topic.into(),
                        payload,
                        qos,
                        retain,
                        properties: if v5 { wp } else { Default::default() },
                    }),
                    username,
                    password,
                }))
            },
        )
}

fn connack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes: Vec<u8> = if v.is_v5() {
        vec![
            0x00, 0x80, 0x81, 0x82, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x9B, 0x9F,
        ]
    } else {
        vec![0, 1, 2, 3, 4, 5]
    };
    let props = (
        (
            option::of(any::<u32>()),
            option::of(1u16..),
            option::of(0u8..=1),
            flag(),
        ),
        (
            option::of(1u32..),
            option::of(text()),
            option::of(any::<u16>()),
            option::of(text()),
        ),
        (
            user_props(),
            flag(),
            flag(),
            flag(),
            option::of(any::<u16>()),
        ),
        (
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(bin()),
        ),
    )
        .prop_map(
            |((se, rm, mq, ra), (mps, aci, tam, rs), (up, w, si, sh, ska), (ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: se,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: w,
                    subscription_identifiers_available: si,
                    shared_subscription_available: sh,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        );
    (proptest::sample::select(codes), any::<bool>(), props).prop_map(move |(code, sp, props)| {
        Packet::ConnAck(ConnAck {
            session_present: sp && code == 0,
            code: ReasonCode(code),
            properties: if v.is_v5() { props } else { Default::default() },
        })
    })
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let props = (
        flag(),
        option::of(any::<u32>()),
        option::of(1u16..),
        option::of(topic_name()),
        option::of(bin()),
        user_props(),
        vec(1u32..=VARINT_MAX, 0..3),
        option::of(text()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, si, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
        });
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        1u16..,
        props,
        vec(any::<u8>(), 0..64),
    )
        .prop_map(move |(dup, qos, retain, topic, pid, props, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic: topic.into(),
                packet_id: if qos0 { 0 } else { pid },
                properties: if v.is_v5() { props } else { Default::default() },
                payload: Bytes::from(payload),
            })
        })
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(text()), user_props()).prop_map(|(rs, up)| AckProperties {
        reason_string: rs,
        user_properties: up,
    })
}

fn pub_ack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        0u8..4,
        1u16..,
        any::<prop::sample::Index>(),
        ack_properties(),
    )
        .prop_map(move |(kind, packet_id, idx, props)| {
            let codes: &[u8] = if kind < 2 {
                &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]
            } else {
                &[0x00, 0x92]
            };
            let mut a = PubAck::new(packet_id);
            if v.is_v5() {
                a.reason = ReasonCode(*idx.get(codes));
                a.properties = props;
            }
            match kind {
                0 => Packet::PubAck(a),
                1 => Packet::PubRec(a),
                2 => Packet::PubRel(a),
                _ => Packet::PubComp(a),
            }
        })
}

fn subscription_options(v: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
        if !v.is_v5() {
            return SubscriptionOptions::qos(qos);
        }
        SubscriptionOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: match rh {
                0 => RetainHandling::OnSubscribe,
                1 => RetainHandling::OnNewSubscribe,
                _ => RetainHandling::Never,
            },
        }
    })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        1u16..,
        option::of(1u32..=VARINT_MAX),
        user_props(),
        vec((topic_filter(), subscription_options(v)), 1..5),
    )
        .prop_map(move |(packet_id, sid, up, mut filters)| {
            for (f, o) in &mut filters {
                // No Local is a Protocol Error on a shared subscription [MQTT-3.8.3-4].
                if f.starts_with("$share/") {
                    o.no_local = false;
                }
            }
            let properties = if v.is_v5() {
                SubscribeProperties {
                    subscription_identifier: sid,
                    user_properties: up,
                }
            } else {
                Default::default()
            };
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes: Vec<u8> = if v.is_v5() {
        vec![
            0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
        ]
    } else {
        vec![0x00, 0x01, 0x02, 0x80]
    };
    (
        1u16..,
        ack_properties(),
        vec(proptest::sample::select(codes), 1..6),
    )
        .prop_map(move |(packet_id, props, codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties: if v.is_v5() { props } else { Default::default() },
                reason_codes: codes.into_iter().map(ReasonCode).collect(),
            })
        })
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (1u16.., user_props(), vec(topic_filter(), 1..5)).prop_map(move |(packet_id, up, filters)| {
        let properties = if v.is_v5() {
            UnsubscribeProperties {
                user_properties: up,
            }
        } else {
            Default::default()
        };
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    })
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = vec![0x00u8, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
    (
        1u16..,
        ack_properties(),
        vec(proptest::sample::select(codes), 1..6),
    )
        .prop_map(move |(packet_id, props, codes)| {
            Packet::UnsubAck(if v.is_v5() {
                UnsubAck {
                    packet_id,
                    properties: props,
                    reason_codes: codes.into_iter().map(ReasonCode).collect(),
                }
            } else {
                UnsubAck {
                    packet_id,
                    properties: Default::default(),
                    reason_codes: vec![],
                }
            })
        })
}

fn disconnect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = vec![
        0x00u8, 0x04, 0x80, 0x81, 0x82, 0x8B, 0x8E, 0x93, 0x95, 0x97, 0x9C, 0xA2,
    ];
    (
        proptest::sample::select(codes),
        option::of(any::<u32>()),
        option::of(text()),
        user_props(),
        option::of(text()),
    )
        .prop_map(move |(code, se, rs, up, sr)| {
            if !v.is_v5() {
                return Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS));
            }
            Packet::Disconnect(Disconnect {
                reason: ReasonCode(code),
                properties: DisconnectProperties {
                    session_expiry_interval: se,
                    reason_string: rs,
                    user_properties: up,
                    server_reference: sr,
                },
            })
        })
}

fn auth() -> impl Strategy<Value = Packet> {
    (
        proptest::sample::select(vec![0x00u8, 0x18, 0x19]),
        option::of(text()),
        option::of(bin()),
        option::of(text()),
        user_props(),
    )
        .prop_map(|(code, am, ad, rs, up)| {
            Packet::Auth(Auth {
                reason: ReasonCode(code),
                properties: AuthProperties {
                    authentication_method: am,
                    authentication_data: ad,
                    reason_string: rs,
                    user_properties: up,
                },
            })
        })
}

/// Any valid packet of version `v`, every type equally likely.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut s = prop_oneof![
        connect(v),
        connack(v),
        publish(v),
        pub_ack(v),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(v),
    ]
    .boxed();
    if v.is_v5() {
        s = prop_oneof![10 => s, 1 => auth()].boxed();
    }
    s
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| packet(v).prop_map(move |p| (v, p)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// decode(encode(p)) == p for every valid packet of every version.
    #[test]
    fn encode_then_decode_is_identity((v, p) in versioned_packet()) {
        let mut buf = BytesMut::new();
        let n = encode(&p, v, &mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(encoded_len(&p, v).unwrap(), n);
        let mut decoder = Decoder::with_version(v, MAX);
        let decoded = decoder.decode(&mut buf).unwrap();
        prop_assert_eq!(decoded, Some(p));
        prop_assert!(buf.is_empty());
    }

    /// A stream of packets delivered in arbitrary chunks decodes to the same packets.
    #[test]
    fn chunking_does_not_matter(
        (v, packets) in version().prop_flat_map(|v| vec(packet(v), 1..6).prop_map(move |p| (v, p))),
        cuts in vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut wire = BytesMut::new();
        for p in &packets {
            encode(p, v, &mut wire).unwrap();
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut decoder = Decoder::with_version(v, MAX);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        for end in points {
            buf.extend_from_slice(&wire[at..end]);
            at = end;
            while let Some(p) = decoder.decode(&mut buf).unwrap() {
                out.push(p);
            }
        }
        prop_assert_eq!(out, packets);
    }

    /// Arbitrary bytes never panic the decoder, whatever the version or state.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..512),
        v in option::of(version()),
        max in prop_oneof![Just(MAX), 2u32..64],
    ) {
        let mut decoder = match v {
            Some(v) => Decoder::with_version(v, max),
            None => Decoder::new(max),
        };
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
    }

    /// Mutating one byte of a valid packet never panics, and whatever still decodes re-encodes.
    #[test]
    fn mutated_packets_never_panic(
        (v, p) in versioned_packet(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut buf = BytesMut::new();
        encode(&p, v, &mut buf).unwrap();
        let i = at.index(buf.len());
        buf[i] = byte;
        let mut decoder = Decoder::with_version(v, MAX);
        if let Ok(Some(q)) = decoder.decode(&mut buf) {
            let mut again = BytesMut::new();
            encode(&q, v, &mut again).unwrap();
        }
    }
}
