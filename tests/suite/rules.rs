//! The rule engine end to end, with `rumqttc` as the independent publisher and subscriber:
//! a JSON transform with WHERE on nested payload fields and a templated topic, FOREACH over an
//! array payload, CASE, `$events/client_connected` / `client_disconnected`,
//! `session_subscribed` with `=~`; the per-rule metrics in the snapshot; rules added,
//! changed, disabled and removed at run time; `rule_test`.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::QoS;
use serde_json::{json, Value};

use crate::common;
use crate::interop_rumqttc::v311::{connect, next, subscribe, Client};
use keelmq::broker::local::{LocalPublish, LocalSession};
use keelmq::config::{Config, RuleSpec};

const RULES: &str = r#"
[[rules]]
id = "temp_alerts"
sql = '''
SELECT payload.sensor.temp AS t, upper(payload.unit) AS unit, clientid
FROM "sensors/+/data"
WHERE payload.sensor.temp > 80 and payload.sensor.ok = true
'''
actions = [
  { kind = "republish", topic = "alerts/${clientid}", qos = 1, payload = '{"t": ${t}, "unit": "${unit}"}' },
  { kind = "console" },
]

[[rules]]
id = "split"
sql = 'FOREACH payload.readings AS r DO r.v AS v, r.name AS name INCASE r.v > 0 FROM "batch/#"'
actions = [{ kind = "republish", topic = "values/${name}", qos = 1, payload = '${v}' }]

[[rules]]
id = "grade"
sql = '''SELECT CASE WHEN payload.level > 5 THEN 'high' WHEN payload.level > 2 THEN 'mid' ELSE 'low' END AS grade FROM "level"'''
actions = [{ kind = "republish", topic = "grades/${grade}", qos = 1, payload = '${grade}' }]

[[rules]]
id = "presence"
sql = '''SELECT clientid, event, reason FROM "$events/client_connected", "$events/client/disconnected" WHERE clientid = 'watched' '''
actions = [{ kind = "republish", topic = "presence/${clientid}", qos = 1, payload = '${event} ${reason}' }]

[[rules]]
id = "subs"
sql = '''SELECT clientid, topic, qos FROM "$events/session_subscribed" WHERE topic =~ 'watch/#' '''
actions = [{ kind = "republish", topic = "subscribed/${clientid}", qos = 1, payload = '${topic} ${qos}' }]
"#;

fn config_with(rules: &str) -> Config {
    let parsed = Config::parse(rules).expect("rules parse");
    parsed.validate().expect("rules are valid");
    let mut config = common::test_config();
    config.rules = parsed.rules;
    config
}

/// The next message on `c`: (topic, payload as text).
async fn message(c: &mut Client) -> (String, String) {
    let p = next(c).await;
    (p.topic, String::from_utf8_lossy(&p.payload).into_owned())
}

async fn expect_silence(c: &mut Client) {
    let extra = tokio::time::timeout(Duration::from_millis(500), c.publishes.recv()).await;
    if let Ok(Some(p)) = extra {
        panic!("unexpected message on {}: {:?}", p.topic, p.payload);
    }
}

#[tokio::test]
async fn rules_transform_filter_split_and_react_to_events() {
    let server = common::start(config_with(RULES)).await;
    let port = server.local_addr().port();
    let mut out = connect(port, "observer", true, None).await;
    for filter in [
        "alerts/#",
        "values/#",
        "grades/#",
        "presence/#",
        "subscribed/#",
    ] {
        subscribe(&out, filter, QoS::AtLeastOnce).await;
    }
    let sensor = connect(port, "s1", true, None).await;
    let hot = json!({"sensor": {"temp": 85.5, "ok": true}, "unit": "c"});
    let cold = json!({"sensor": {"temp": 20, "ok": true}, "unit": "c"});
    let broken = json!({"sensor": {"temp": 99, "ok": false}, "unit": "c"});
    for p in [&cold, &broken, &hot] {
        let payload = p.to_string();
        sensor
            .client
            .publish("sensors/s1/data", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let (topic, payload) = message(&mut out).await;
    assert_eq!(topic, "alerts/s1");
    let v: Value = serde_json::from_str(&payload).expect("JSON");
    assert_eq!(v, json!({"t": 85.5, "unit": "C"}));

    let batch =
        json!({"readings": [{"name": "a", "v": 1}, {"name": "b", "v": -1}, {"name": "c", "v": 3}]});
    let payload = batch.to_string();
    sensor
        .client
        .publish("batch/7", QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    assert_eq!(message(&mut out).await, ("values/a".into(), "1".into()));
    assert_eq!(message(&mut out).await, ("values/c".into(), "3".into()));

    for level in [9, 3, 1] {
        let payload = json!({ "level": level }).to_string();
        sensor
            .client
            .publish("level", QoS::AtMostOnce, false, payload)
            .await
            .unwrap();
        let (topic, grade) = message(&mut out).await;
        assert_eq!(topic, format!("grades/{grade}"));
    }
    events_reach_rules(port, &mut out).await;
    expect_silence(&mut out).await;
    let rules: BTreeMap<_, _> = server
        .broker()
        .metrics_snapshot()
        .rules
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let temp = &rules["temp_alerts"];
    assert_eq!(
        (temp.matched, temp.passed, temp.failed_no_result),
        (3, 1, 2)
    );
    assert_eq!((temp.actions_total, temp.actions_success), (2, 2));
    assert_eq!(rules["split"].actions_success, 2);
    assert_eq!(rules["grade"].passed, 3);
    server.shutdown(Duration::from_secs(5)).await;
}

/// `$events/client_connected`, `client_disconnected` (slash form) and `session_subscribed`.
async fn events_reach_rules(port: u16, out: &mut Client) {
    let watched = connect(port, "watched", true, None).await;
    let (topic, payload) = message(out).await;
    assert_eq!(topic, "presence/watched");
    assert!(payload.starts_with("client.connected"), "{payload}");
    subscribe(&watched, "watch/+/temp", QoS::AtLeastOnce).await;
    subscribe(&watched, "other/topic", QoS::AtLeastOnce).await;
    let (topic, payload) = message(out).await;
    assert_eq!(
        (topic.as_str(), payload.as_str()),
        ("subscribed/watched", "watch/+/temp 1")
    );
    watched.client.disconnect().await.unwrap();
    // The event loop sends the DISCONNECT; then the client goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(watched);
    let (topic, payload) = message(out).await;
    assert_eq!(
        (topic.as_str(), payload.as_str()),
        ("presence/watched", "client.disconnected normal")
    );
}

/// A rule republishing at QoS 1 to `topic`; `extra` adds fields to the action.
fn spec_with(id: &str, sql: &str, topic: &str, extra: &str) -> RuleSpec {
    let text = format!(
        "[[rules]]\nid = {id:?}\nsql = '{sql}'\n\
         actions = [{{ kind = \"republish\", topic = {topic:?}, qos = 1{extra} }}]\n"
    );
    let mut rules = Config::parse(&text).expect("rule parses").rules;
    rules.remove(0)
}

#[tokio::test]
async fn inline_rules_change_at_run_time() {
    rules_change_at_run_time("").await
}

/// The same with a republish whose RETAIN comes from a field: a consumer session per rule.
#[tokio::test]
async fn consumer_rules_change_at_run_time() {
    rules_change_at_run_time(", retain = '${r}'").await
}

async fn rules_change_at_run_time(extra: &str) {
    let spec = |id: &str, sql: &str, topic: &str| spec_with(id, sql, topic, extra);
    let server = common::start(common::test_config()).await;
    let port = server.local_addr().port();
    let rules = server.rules();
    let mut out = connect(port, "observer", true, None).await;
    subscribe(&out, "out/#", QoS::AtLeastOnce).await;
    let publisher = connect(port, "p", true, None).await;
    let publish = |topic: &'static str, payload: &'static str| {
        let c = publisher.client.clone();
        async move {
            c.publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap()
        }
    };

    rules
        .add(spec(
            "copy",
            r#"SELECT payload FROM "in/a""#,
            "out/a/${payload}",
        ))
        .await
        .expect("added");
    let bad = spec("bad", r#"SELECT nope(1) FROM "in/a""#, "x");
    assert!(rules
        .add(bad)
        .await
        .unwrap_err()
        .to_string()
        .contains("nope"));
    publish("in/a", "1").await;
    assert_eq!(message(&mut out).await.0, "out/a/1");

    // Changed: the new FROM replaces the old one.
    let changed = spec("copy", r#"SELECT payload FROM "in/b""#, "out/b/${payload}");
    rules.update(changed).await.expect("updated");
    publish("in/a", "2").await;
    publish("in/b", "3").await;
    assert_eq!(message(&mut out).await.0, "out/b/3");

    rules.set_enabled("copy", false).await.expect("disabled");
    publish("in/b", "4").await;
    expect_silence(&mut out).await;
    rules.set_enabled("copy", true).await.expect("enabled");
    publish("in/b", "5").await;
    assert_eq!(message(&mut out).await.0, "out/b/5");

    rules.remove("copy").await.expect("removed");
    assert!(rules.list().is_empty());
    publish("in/b", "6").await;
    expect_silence(&mut out).await;
    let consumers = server.broker().client_ids_with_prefix("$rule/");
    assert!(consumers.is_empty(), "{consumers:?}");
    server.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn rule_test_runs_sql_on_a_sample() {
    let context = json!({"clientid": "c1", "payload": "{\"a\": {\"b\": 3}}", "topic": "t/1"});
    let Value::Object(context) = context else {
        unreachable!()
    };
    let out = keelmq::rules::rule_test(
        r#"SELECT payload.a.b * 2 AS x, clientid FROM "t/#" WHERE topic =~ 't/+'"#,
        &context,
    )
    .expect("runs");
    assert_eq!(
        Value::Object(out[0].clone()),
        json!({"x": 6, "clientid": "c1"})
    );
    let e = keelmq::rules::rule_test("SELECT FROM", &context).unwrap_err();
    assert!(e.contains("line 1"), "{e}");
}

/// A consumer session of a rule is the broker's: a network client cannot take it over, even
/// without authentication (its id is refused, 0x85, whatever the credentials). (Rules whose republishes keep RETAIN off or follow the message's
/// run inline and have no session.)
#[tokio::test]
async fn rule_consumers_cannot_be_taken_over() {
    // RETAIN from a field: the rule reads its topic through a consumer session.
    let rules = "[[rules]]\nid = \"r\"\nsql = 'SELECT * FROM \"t\"'\n\
                 actions = [{ kind = \"republish\", topic = \"o\", retain = '${r}' }]\n";
    let server = common::start(config_with(rules)).await;
    let addr = server.local_addr();
    let mut raw = common::raw::RawClient::tcp(addr, keelmq::codec::ProtocolVersion::V5).await;
    let ack = raw.handshake("$rule/r", false, |_| {}).await;
    assert_eq!(
        ack.code,
        keelmq::codec::ReasonCode::CLIENT_IDENTIFIER_NOT_VALID
    );
    server.shutdown(Duration::from_secs(5)).await;
}

/// Publishes `n` QoS 1 messages with payloads `0..n` to `topic` through the broker's
/// in-process client, several at a time.
async fn publish_numbered(
    broker: &keelmq::broker::Broker,
    topic: &str,
    range: std::ops::Range<usize>,
) {
    const WORKERS: usize = 64;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let client = broker.local_client(format!("numbers-{w}"));
        let (topic, range) = (topic.to_string(), range.clone());
        workers.spawn(async move {
            for i in range.filter(|i| i % WORKERS == w) {
                let p = LocalPublish::new(
                    topic.as_str(),
                    i.to_string(),
                    keelmq::codec::QoS::AtLeastOnce,
                );
                client.publish(p).await.expect("published");
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("publisher");
    }
}

/// Takes `n` deliveries from `session`, acknowledging each; returns their payloads.
async fn take_payloads(mut session: LocalSession, n: usize) -> (Vec<String>, LocalSession) {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(20), session.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} outputs arrived", out.len()))
            .expect("delivery");
        session.ack(&d).await.expect("acked");
        out.push(String::from_utf8_lossy(&d.delivery.message.payload).into_owned());
    }
    (out, session)
}

/// A rule moving between a durable consumer and inline hands over without loss or duplicate:
/// what the old consumer session still holds is drained, what comes after is read inline (and
/// the drained session goes); back to a consumer, the new session subscribes before the inline
/// rule stops. Messages are published throughout each change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_moving_between_consumer_and_inline_reads_each_message_once() {
    const N: usize = 2000;
    let server = common::start(common::test_config()).await;
    let broker = server.broker().clone();
    let (observer, _) = broker
        .local_client("observer")
        .session(true, 0)
        .await
        .unwrap();
    let qos1 = keelmq::codec::SubscriptionOptions::qos(keelmq::codec::QoS::AtLeastOnce);
    observer
        .subscribe(vec![("hand/out".into(), qos1)])
        .await
        .unwrap();
    let sql = r#"SELECT payload FROM "hand/in""#;
    let consumer = || spec_with("hand", sql, "hand/out", ", retain = '${r}'");
    let inline = || spec_with("hand", sql, "hand/out", "");
    let rules = server.rules();
    rules.add(consumer()).await.expect("consumer rule added");
    assert_eq!(broker.client_ids_with_prefix("$rule/").len(), 1);

    // The observer takes its deliveries as they come (a subscriber that stops taking is
    // stalled, and what overflows its queue is dropped by policy).
    let observed = tokio::spawn(take_payloads(observer, 3 * N));
    publish_numbered(&broker, "hand/in", 0..N).await;
    let (to_inline, ()) = tokio::join!(
        rules.update(inline()),
        publish_numbered(&broker, "hand/in", N..2 * N),
    );
    to_inline.expect("updated to inline");
    let (to_consumer, ()) = tokio::join!(
        rules.update(consumer()),
        publish_numbered(&broker, "hand/in", 2 * N..3 * N),
    );
    to_consumer.expect("updated to a consumer");

    let (seen, mut observer) = observed.await.expect("observer");
    let mut counts = vec![0usize; 3 * N];
    for p in &seen {
        counts[p.parse::<usize>().expect("a number")] += 1;
    }
    let repeated: Vec<usize> = (0..3 * N).filter(|&i| counts[i] > 1).collect();
    let missing: Vec<usize> = (0..3 * N).filter(|&i| counts[i] == 0).collect();
    assert!(
        repeated.is_empty() && missing.is_empty(),
        "repeated {repeated:?}, missing {missing:?}"
    );
    expect_no_delivery(&mut observer).await;
    // One consumer session: the drained one went, the new one stays.
    assert_eq!(broker.client_ids_with_prefix("$rule/").len(), 1);
    server.shutdown(Duration::from_secs(5)).await;
}

async fn expect_no_delivery(session: &mut LocalSession) {
    if let Ok(d) = tokio::time::timeout(Duration::from_millis(500), session.next()).await {
        panic!("unexpected delivery: {d:?}");
    }
}

/// Rules that read their own republishes (direct dispatch off) end: a durable consumer's
/// outputs are read by inline rules only, and what those make of them too, so no consumer
/// waits for room in a consumer's queue and a loop through one stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_a_consumer_rule_ends() {
    let rules = r#"
[[rules]]
id = "consumer"
sql = 'SELECT payload FROM "loop/#"'
actions = [{ kind = "republish", topic = "loop/c", retain = '${r}', direct_dispatch = false }]

[[rules]]
id = "inline"
sql = 'SELECT payload FROM "loop/c"'
actions = [{ kind = "republish", topic = "loop/i", direct_dispatch = false }]
"#;
    let server = common::start(config_with(rules)).await;
    let broker = server.broker().clone();
    let (mut observer, _) = broker
        .local_client("observer")
        .session(true, 0)
        .await
        .unwrap();
    let qos1 = keelmq::codec::SubscriptionOptions::qos(keelmq::codec::QoS::AtLeastOnce);
    observer
        .subscribe(vec![("loop/#".into(), qos1)])
        .await
        .unwrap();
    publish_numbered(&broker, "loop/start", 0..1).await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), observer.next())
            .await
            .expect("a message")
            .expect("delivery");
        observer.ack(&d).await.expect("acked");
        topics.push(d.delivery.message.topic.to_string());
    }
    topics.sort();
    assert_eq!(topics, ["loop/c", "loop/i", "loop/start"]);
    expect_no_delivery(&mut observer).await;
    server.shutdown(Duration::from_secs(5)).await;
}
