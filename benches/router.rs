//! Subscription routing: `Router::matches` against 1,000,000 subscriptions, fan-out to 1, 50
//! and 1000 subscribers of one topic, and subscribe + unsubscribe on the populated router.
//! Run with `cargo bench --bench router`.
//!
//! The 1,000,000 subscriptions mimic a vehicle fleet (see [`populate`]):
//!
//! | share | filter                          | subscribers per filter          |
//! |-------|---------------------------------|---------------------------------|
//! | 40 %  | `vehicles/{id}/commands/#`      | 1 (the vehicle itself)          |
//! | 20 %  | `sensors/{site}/{dev}/temp`     | 1 (exact filter)                |
//! | 20 %  | `vehicles/+/telemetry/{metric}` | 2 (dashboards)                  |
//! | 10 %  | `fleet/{k}/+/status`            | 10 (fleet operators)            |
//! |  5 %  | `fleet/{k}/#`                   | 5 (fleet monitors)              |
//! |  5 %  | `$share/g{j}/jobs/{region}/+`   | 5 groups of 10 members each     |
//!
//! and 1,051 more for the fan-out benchmarks (`broadcast/fanout-{n}/all`, `n` subscribers).
//!
//! The router is built once, outside the timed loops. Topics are taken in turn from a few
//! thousand distinct ones so that a benchmark does not walk one cache-hot path. Each visit does
//! what the broker's routing does with a match: it reads the subscription's options and target,
//! and for a shared group picks a member through the round-robin cursor.
//!
//! Throughput is `Router::matches` calls per second for `matches/*`, subscriptions visited per
//! second for `fanout/*`, and subscribe + unsubscribe pairs per second for `churn/*`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keelmq::codec::{QoS, SubscriptionOptions};
use keelmq::router::{Match, Router, Subscription};

/// The broker stores a session handle as the target; an index stands in for it here.
type Target = u32;

const VEHICLES: u32 = 400_000;
const SENSOR_SITES: u32 = 1_000;
const SENSORS_PER_SITE: u32 = 200;
const METRICS: u32 = 100_000;
const DASHBOARDS_PER_METRIC: u32 = 2;
const FLEETS: u32 = 10_000;
const OPERATORS_PER_FLEET: u32 = 10;
const MONITORS_PER_FLEET: u32 = 5;
const REGIONS: u32 = 1_000;
const GROUPS_PER_REGION: u32 = 5;
const MEMBERS_PER_GROUP: u32 = 10;

const SUBSCRIPTIONS: usize = (VEHICLES
    + SENSOR_SITES * SENSORS_PER_SITE
    + METRICS * DASHBOARDS_PER_METRIC
    + FLEETS * OPERATORS_PER_FLEET
    + FLEETS * MONITORS_PER_FLEET
    + REGIONS * GROUPS_PER_REGION * MEMBERS_PER_GROUP) as usize;

const FANOUTS: [u32; 3] = [1, 50, 1000];

/// Distinct topics each benchmark cycles through.
const TOPICS_PER_CASE: u32 = 4096;

fn sub(client: String, target: Target) -> Subscription<Target> {
    Subscription {
        client: client.into(),
        options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        identifier: None,
        target,
    }
}

/// Builds the fleet mix described at the top of the file, plus the fan-out filters
/// `broadcast/fanout-{n}/all` with `n` subscribers each.
fn populate() -> Router<Target> {
    let mut r = Router::new();
    let mut target: Target = 0;
    let mut add = |r: &mut Router<Target>, filter: &str, client: String| {
        target += 1;
        r.subscribe(filter, sub(client, target));
    };
    for id in 0..VEHICLES {
        add(
            &mut r,
            &format!("vehicles/{id}/commands/#"),
            format!("veh-{id}"),
        );
    }
    for site in 0..SENSOR_SITES {
        for dev in 0..SENSORS_PER_SITE {
            let filter = format!("sensors/{site}/{dev}/temp");
            add(&mut r, &filter, format!("sensor-{site}-{dev}"));
        }
    }
    for metric in 0..METRICS {
        let filter = format!("vehicles/+/telemetry/{metric}");
        for d in 0..DASHBOARDS_PER_METRIC {
            add(&mut r, &filter, format!("dash-{metric}-{d}"));
        }
    }
    for k in 0..FLEETS {
        let filter = format!("fleet/{k}/+/status");
        for o in 0..OPERATORS_PER_FLEET {
            add(&mut r, &filter, format!("op-{k}-{o}"));
        }
        let filter = format!("fleet/{k}/#");
        for m in 0..MONITORS_PER_FLEET {
            add(&mut r, &filter, format!("mon-{k}-{m}"));
        }
    }
    for region in 0..REGIONS {
        for g in 0..GROUPS_PER_REGION {
            let filter = format!("$share/g{g}/jobs/{region}/+");
            for m in 0..MEMBERS_PER_GROUP {
                add(&mut r, &filter, format!("worker-{region}-{g}-{m}"));
            }
        }
    }
    for n in FANOUTS {
        let filter = format!("broadcast/fanout-{n}/all");
        for i in 0..n {
            add(&mut r, &filter, format!("listener-{n}-{i}"));
        }
    }
    let fanout_total: u32 = FANOUTS.iter().sum();
    assert_eq!(r.len(), SUBSCRIPTIONS + fanout_total as usize);
    r
}

/// Matches `topic` and does with each match what the broker's routing does; returns the number
/// of subscriptions and shared groups that matched.
fn route(router: &Router<Target>, topic: &str) -> usize {
    let mut matched = 0;
    router.matches(topic, |m| {
        let picked = match m {
            Match::Direct(s) => Some(s),
            Match::Shared(g) => g.rotation().next(),
        };
        if let Some(s) = picked {
            black_box((s.options.qos, s.target));
            matched += 1;
        }
    });
    matched
}

/// The `i`th of `TOPICS_PER_CASE` ids spread over `0..n` (7919 is a prime that divides none of
/// the sizes used), so that neighbouring topics do not share trie nodes.
fn spread(i: u32, n: u32) -> u32 {
    i.wrapping_mul(7919) % n
}

/// `TOPICS_PER_CASE` topics from `make`, each checked to match `expected` times.
fn topics(router: &Router<Target>, expected: usize, make: impl Fn(u32) -> String) -> Vec<String> {
    let topics: Vec<String> = (0..TOPICS_PER_CASE).map(make).collect();
    for t in &topics {
        assert_eq!(route(router, t), expected, "topic {t}");
    }
    topics
}

fn bench_matches(c: &mut Criterion, router: &Router<Target>) {
    let cases = [
        // `vehicles/{id}/commands/#` of one vehicle.
        (
            "few_1_match",
            topics(router, 1, |i| {
                format!("vehicles/{}/commands/unlock", spread(i, VEHICLES))
            }),
        ),
        // The two dashboards of `vehicles/+/telemetry/{metric}`.
        (
            "few_2_matches",
            topics(router, 2, |i| {
                let v = spread(i, VEHICLES);
                format!("vehicles/{v}/telemetry/{}", spread(i, METRICS))
            }),
        ),
        // `fleet/{k}/+/status` (10) and `fleet/{k}/#` (5).
        (
            "some_15_matches",
            topics(router, 15, |i| {
                format!("fleet/{}/truck-{i}/status", spread(i, FLEETS))
            }),
        ),
        // The five groups of `$share/g{j}/jobs/{region}/+`, one member picked in each.
        (
            "shared_5_groups",
            topics(router, 5, |i| {
                format!("jobs/{}/job-{i}", spread(i, REGIONS))
            }),
        ),
        // Walks `vehicles/{id}` and `vehicles/+`, and finds nothing below either.
        (
            "none_partial_walk",
            topics(router, 0, |i| {
                format!("vehicles/{}/diagnostics/battery", spread(i, VEHICLES))
            }),
        ),
        // Fails at the first level.
        (
            "none_unknown_root",
            topics(router, 0, |i| format!("weather/{i}/wind")),
        ),
    ];
    let mut group = c.benchmark_group("matches");
    group.throughput(Throughput::Elements(1));
    for (name, topics) in &cases {
        let mut next = topics.iter().cycle();
        group.bench_function(*name, |b| {
            b.iter(|| {
                let topic = next.next().map_or("", String::as_str);
                black_box(route(router, black_box(topic)))
            })
        });
    }
    group.finish();
}

fn bench_fanout(c: &mut Criterion, router: &Router<Target>) {
    let mut group = c.benchmark_group("fanout");
    for n in FANOUTS {
        let topic = format!("broadcast/fanout-{n}/all");
        assert_eq!(route(router, &topic), n as usize);
        // Collect the targets as the broker does, into a buffer reused across iterations.
        let mut targets: Vec<Target> = Vec::with_capacity(n as usize);
        group.throughput(Throughput::Elements(u64::from(n)));
        group.bench_function(format!("{n}_subscribers"), |b| {
            b.iter(|| {
                targets.clear();
                router.matches(black_box(&topic), |m| {
                    if let Match::Direct(s) = m {
                        targets.push(s.target);
                    }
                });
                black_box(targets.len())
            })
        });
    }
    group.finish();
}

fn bench_churn(c: &mut Criterion, router: &mut Router<Target>) {
    // (name, filters): each filter is subscribed by a new client and unsubscribed again, so
    // the router is back to its populated state after every iteration.
    let cases: [(&str, Vec<String>); 4] = [
        (
            "exact_new_leaf",
            (0..TOPICS_PER_CASE)
                .map(|i| {
                    let site = spread(i, SENSOR_SITES);
                    format!("sensors/{site}/{}/humidity", spread(i, SENSORS_PER_SITE))
                })
                .collect(),
        ),
        (
            "exact_new_path",
            (0..TOPICS_PER_CASE)
                .map(|i| format!("tenants/{i}/devices/{i}/config"))
                .collect(),
        ),
        (
            "wildcard_existing_filter",
            (0..TOPICS_PER_CASE)
                .map(|i| format!("vehicles/+/telemetry/{}", spread(i, METRICS)))
                .collect(),
        ),
        (
            "shared_existing_group",
            (0..TOPICS_PER_CASE)
                .map(|i| format!("$share/g1/jobs/{}/+", spread(i, REGIONS)))
                .collect(),
        ),
    ];
    let before = router.len();
    let client: keelmq::router::ClientId = "churn-client".into();
    let mut group = c.benchmark_group("churn");
    group.throughput(Throughput::Elements(1));
    for (name, filters) in &cases {
        let mut next = filters.iter().cycle();
        group.bench_function(format!("subscribe_unsubscribe/{name}"), |b| {
            b.iter(|| {
                let filter = next.next().map_or("", String::as_str);
                let s = Subscription {
                    client: client.clone(),
                    options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                    identifier: None,
                    target: 0,
                };
                let existed = router.subscribe(black_box(filter), s);
                let removed = router.unsubscribe(black_box(filter), &client);
                black_box((existed, removed))
            })
        });
    }
    group.finish();
    assert_eq!(
        router.len(),
        before,
        "churn leaves the router as it found it"
    );
}

fn router(c: &mut Criterion) {
    let mut router = populate();
    bench_matches(c, &router);
    bench_fanout(c, &router);
    bench_churn(c, &mut router);
}

criterion_group!(benches, router);
criterion_main!(benches);
