//! What one ACL decision costs: a publish and a subscribe check against a Mosquitto-style file
//! of 1,000 users (two rules each) and four patterns — the cost the broker pays per PUBLISH and
//! per SUBSCRIBE filter, with no per-connection cache in front of it.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keelmq_auth::{Acl, Action, Who};

fn file() -> String {
    let mut text = String::from("topic read public/#\n");
    for i in 0..1000 {
        text.push_str(&format!(
            "user user-{i}\ntopic readwrite fleet/{i}/#\ntopic deny fleet/{i}/secret\n"
        ));
    }
    text.push_str("pattern readwrite devices/%c/#\npattern read inbox/%u/#\n");
    text.push_str("pattern write telemetry/%u/%c/+\npattern deny devices/%c/locked\n");
    text
}

fn bench(c: &mut Criterion) {
    let acl = Acl::parse(&file()).expect("the bench file parses");
    let who = Who {
        client_id: "car-42",
        username: Some("user-500"),
    };
    c.bench_function("acl publish allowed (user rule)", |b| {
        b.iter(|| {
            acl.check(
                black_box(who),
                Action::Publish,
                black_box("fleet/500/pos/gps"),
            )
        })
    });
    c.bench_function("acl publish allowed (pattern)", |b| {
        b.iter(|| {
            acl.check(
                black_box(who),
                Action::Publish,
                black_box("devices/car-42/up"),
            )
        })
    });
    c.bench_function("acl publish no match", |b| {
        b.iter(|| {
            acl.check(
                black_box(who),
                Action::Publish,
                black_box("other/topic/a/b"),
            )
        })
    });
    c.bench_function("acl subscribe filter", |b| {
        b.iter(|| {
            acl.check(
                black_box(who),
                Action::Subscribe,
                black_box("fleet/500/+/gps"),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
