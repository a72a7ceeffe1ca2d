//! Codec throughput: decode and encode of PUBLISH (64 B and 4 KiB payloads), CONNECT and
//! SUBSCRIBE, in MQTT 3.1.1 and 5.0. Run with `cargo bench --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keelmq::codec::*;

fn publish(v: ProtocolVersion, payload_len: usize) -> Packet {
    let mut properties = PublishProperties::default();
    if v.is_v5() {
        properties.message_expiry_interval = Some(60);
        properties
            .user_properties
            .push(("trace".into(), "abc123".into()));
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "vehicles/4711/commands/unlock".into(),
        packet_id: 42,
        properties,
        payload: Bytes::from(vec![0xA5u8; payload_len]),
    })
}

fn connect(v: ProtocolVersion) -> Packet {
    let mut properties = ConnectProperties::default();
    if v.is_v5() {
        properties.session_expiry_interval = Some(3600);
        properties.receive_maximum = Some(100);
        properties.topic_alias_maximum = Some(16);
    }
    Packet::Connect(Box::new(Connect {
        protocol: v,
        clean_start: false,
        keep_alive: 60,
        properties,
        client_id: "vehicle-4711".into(),
        will: Some(LastWill {
            topic: "vehicles/4711/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some("fleet".into()),
        password: Some(Bytes::from_static(b"secret")),
    }))
}

fn subscribe(v: ProtocolVersion) -> Packet {
    let mut properties = SubscribeProperties::default();
    if v.is_v5() {
        properties.subscription_identifier = Some(7);
    }
    Packet::Subscribe(Subscribe {
        packet_id: 9,
        properties,
        filters: vec![
            (
                "vehicles/4711/commands/#".into(),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            ),
            (
                "fleet/+/broadcast".into(),
                SubscriptionOptions::qos(QoS::ExactlyOnce),
            ),
            (
                "$share/workers/jobs/+".into(),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            ),
        ],
    })
}

fn bench_packet(c: &mut Criterion, name: &str, v: ProtocolVersion, packet: Packet) {
    let mut wire = BytesMut::new();
    encode(&packet, v, &mut wire).expect("encodes");
    let wire = wire.freeze();
    let mut group = c.benchmark_group(format!("{name}/{v:?}"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                let mut d = Decoder::with_version(v, 1 << 20);
                black_box(d.decode(&mut buf).expect("decodes"))
            },
            BatchSize::SmallInput,
        )
    });
    let mut out = BytesMut::with_capacity(wire.len() * 2);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(encode(black_box(&packet), v, &mut out).expect("encodes"))
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        bench_packet(c, "publish_64B", v, publish(v, 64));
        bench_packet(c, "publish_4KiB", v, publish(v, 4096));
        bench_packet(c, "connect", v, connect(v));
        bench_packet(c, "subscribe", v, subscribe(v));
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
