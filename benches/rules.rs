//! The rule engine's cost per message, without I/O. Run with `cargo bench --bench rules`.
//!
//! - `eval/select_where`: the issue's rule `SELECT payload.a AS a, clientid FROM "bench/#"
//!   WHERE payload.b > 0` on one message — the fields it reads built as the broker builds them
//!   (`keelmq::rules::fields::message_for`), the statement applied, the republish topic and
//!   payload rendered.
//! - `route/*`: finding the rules of a message through a topic trie of their filters, as the
//!   broker does (`keelmq::router::Router`), then applying the rules found:
//!   with 1 rule, with 100 rules on distinct filters (one matches), and a message that no rule
//!   of the 100 matches. Only the matching rule may cost anything.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keelmq::broker::Broker;
use keelmq::codec::{QoS, SubscriptionOptions};
use keelmq::config::Config;
use keelmq::router::{Match, Router, Subscription};
use keelmq::session::Message;
use keelmq_rules::template::Template;
use keelmq_rules::Rule;

fn message(topic: &str) -> Message {
    Message {
        id: 4711,
        topic: topic.into(),
        payload: br#"{"a": 21.5, "b": 3, "unit": "c", "site": "north-7"}"#[..].into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Message::properties_of(Default::default()),
        expires_at: None,
        publisher: Some("vehicle-4711".into()),
        rules: Default::default(),
    }
}

fn eval(c: &mut Criterion) {
    let broker = Broker::new(Config::default());
    let rule =
        Rule::compile(r#"SELECT payload.a AS a, clientid FROM "bench/#" WHERE payload.b > 0"#)
            .expect("compiles");
    let topic = Template::parse("out/${clientid}").expect("template");
    let payload = Template::parse(r#"{"a": ${a}}"#).expect("template");
    let m = message("bench/vehicle-4711/data");
    let mut g = c.benchmark_group("eval");
    g.throughput(Throughput::Elements(1));
    g.bench_function("select_where", |b| {
        b.iter(|| {
            let want = |f: &str| rule.reads(f);
            let input = keelmq::rules::fields::message_for(&broker, black_box(&m), false, &want);
            let outputs = rule.apply_owned(input).expect("evaluates");
            for out in &outputs {
                black_box((topic.render(out), payload.render(out)));
            }
        })
    });
    g.finish();
}

/// A router with `n` rule consumers on `rules/{i}/+`, and the rules by index.
fn rules(n: u32) -> (Router<u32>, Vec<Rule>) {
    let mut router = Router::new();
    let mut compiled = Vec::new();
    for i in 0..n {
        let filter = format!("rules/{i}/+");
        let sql = format!(r#"SELECT payload.a AS a FROM "{filter}" WHERE payload.b > 0"#);
        compiled.push(Rule::compile(&sql).expect("compiles"));
        let sub = Subscription {
            client: Arc::from(format!("$rule/r{i}")),
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            identifier: None,
            target: i,
        };
        router.subscribe(&filter, sub);
    }
    (router, compiled)
}

fn route(c: &mut Criterion) {
    let broker = Broker::new(Config::default());
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    for (name, n, topic) in [
        ("1_rule", 1, "rules/0/x"),
        ("100_rules_one_matches", 100, "rules/42/x"),
        ("100_rules_none_matches", 100, "telemetry/42/x"),
    ] {
        let (router, compiled) = rules(n);
        let m = message(topic);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut found = Vec::new();
                router.matches(black_box(&m.topic), |hit| {
                    if let Match::Direct(sub) = hit {
                        found.push(sub.target);
                    }
                });
                for i in found {
                    let rule = &compiled[i as usize];
                    let want = |f: &str| rule.reads(f);
                    let input = keelmq::rules::fields::message_for(&broker, &m, false, &want);
                    black_box(rule.apply_owned(input).expect("evaluates"));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, eval, route);
criterion_main!(benches);
