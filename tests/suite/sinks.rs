//! Data bridges end to end against real targets: a throwaway PostgreSQL cluster and Redis
//! server (`common::servers`), and an HTTP receiver written here; `rumqttc` publishes, `psql`
//! and `redis-cli` read what arrived. A sink's topics and a rule's `sink` action; typed SQL
//! parameters and exactly once through `ON CONFLICT DO NOTHING` / `SET … NX` on `${id}`; HTTP
//! retries, `Idempotency-Key` and the dead-letter topic; target outages (stopped, hung) with
//! the queue growing and draining; configuration errors naming the sink.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::raw::{RawClient, Recv};
use crate::common::{self, servers};
use crate::interop_rumqttc::v311::{connect, next, subscribe};
use keelmq::codec::{Packet, ProtocolVersion, PubAck, QoS as Q, ReasonCode};
use keelmq::config::Config;

fn config_with(text: &str) -> Config {
    let parsed = Config::parse(text).expect("config parses");
    parsed.validate().expect("config is valid");
    let mut config = common::test_config();
    config.rules = parsed.rules;
    config.sinks = parsed.sinks;
    config.sources = parsed.sources;
    config
}

/// Polls `f` (a blocking check against the target) until it holds, for up to `secs`.
async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

/// The sink's counters once `success` reaches `count` (asserted within 30 s).
async fn settled(
    server: &keelmq::server::Server,
    name: &str,
    count: u64,
) -> keelmq::broker::metrics::SinkSnapshot {
    eventually(30, || sink_stats(server, name).success >= count).await;
    let stats = sink_stats(server, name);
    assert_eq!(stats.success, count, "{stats:?}");
    stats
}

fn sink_stats(
    server: &keelmq::server::Server,
    name: &str,
) -> keelmq::broker::metrics::SinkSnapshot {
    let m = server.broker().metrics_snapshot();
    m.sinks
        .into_iter()
        .find(|s| s.name == name)
        .expect("sink in the snapshot")
}

/// Two PostgreSQL sinks (one reading `data/#`, one fed by rule `hot`), the password from a
/// file.
fn postgres_config(port: u16) -> Config {
    let url = format!("postgres://keelmq@127.0.0.1:{port}/keelmq");
    let pw = common::temp_dir("pgpw");
    std::fs::create_dir_all(&pw).unwrap();
    let pw = pw.join("password");
    std::fs::write(&pw, "secret\n").unwrap();
    config_with(&format!(
        r#"
[[sinks]]
name = "pg_all"
kind = "postgresql"
url = "{url}"
password_file = "{pw}"
topics = ["data/#"]
sql = "INSERT INTO msgs(id, topic, body, q) VALUES (${{id}}, ${{topic}}, ${{payload}}, ${{qos}}) ON CONFLICT DO NOTHING"
inflight_batches = 2

[[sinks]]
name = "pg_alerts"
kind = "postgresql"
url = "{url}"
password_file = "{pw}"
sql = "INSERT INTO alerts(id, client, t) VALUES (${{id}}, ${{clientid}}, ${{t}}) ON CONFLICT DO NOTHING"

[[rules]]
id = "hot"
sql = 'SELECT payload.t AS t, clientid FROM "sensors/+" WHERE payload.t > 80'
actions = [{{ kind = "sink", name = "pg_alerts" }}]
"#,
        pw = pw.display()
    ))
}

/// A sink's topics and a rule's sink action into PostgreSQL: typed parameters (bigint, text,
/// float, jsonb), one row per message, the rule's counters kept by its sink's feed. (Writes
/// repeated after a crash: `sinks_crash`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_writes_messages_and_rule_outputs() {
    let Some(pg) = servers::postgres() else {
        return;
    };
    servers::psql(
        &pg,
        "CREATE TABLE msgs(id bigint PRIMARY KEY, topic text, body jsonb, q int)",
    );
    servers::psql(
        &pg,
        "CREATE TABLE alerts(id bigint PRIMARY KEY, client text, t float8)",
    );
    let config = postgres_config(pg.port);
    let server = common::start(config).await;
    let port = server.local_addr().port();
    let publisher = connect(port, "dev-1", true, None).await;
    for i in 0..50 {
        let body = format!(r#"{{"n": {i}}}"#);
        publisher
            .client
            .publish(format!("data/{i}"), QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    for t in [70, 85, 90] {
        publisher
            .client
            .publish(
                "sensors/a",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"t": {t}}}"#),
            )
            .await
            .unwrap();
    }
    let all = eventually(20, || {
        servers::psql(&pg, "SELECT count(*) FROM msgs") == "50"
    })
    .await;
    assert!(
        all,
        "50 rows, got {}",
        servers::psql(&pg, "SELECT count(*) FROM msgs")
    );
    assert_eq!(
        servers::psql(
            &pg,
            "SELECT topic, body->>'n', q FROM msgs WHERE body->>'n' = '7'"
        ),
        "data/7|7|1"
    );
    let alerts = eventually(20, || {
        servers::psql(&pg, "SELECT count(*) FROM alerts") == "2"
    })
    .await;
    assert!(alerts, "two alerts");
    assert_eq!(
        servers::psql(&pg, "SELECT client, t FROM alerts ORDER BY t"),
        "dev-1|85\ndev-1|90"
    );
    // The counters move when the commit's answer is read, a moment after the rows are visible.
    let stats = settled(&server, "pg_all", 50).await;
    assert_eq!(stats.status.name(), "connected", "{stats:?}");
    settled(&server, "pg_alerts", 2).await;
    let rule = &server.broker().metrics_snapshot().rules;
    assert_eq!(rule[0].passed, 2, "the rule's own counters: {rule:?}");
    server.shutdown(Duration::from_secs(5)).await;
}

/// Redis with `SET … NX` keyed by the message id, and a hung server (SIGSTOP): the messages
/// published meanwhile queue up and arrive once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sink_sets_once_and_waits_out_a_hung_server() {
    let Some(redis) = servers::redis() else {
        return;
    };
    let config = config_with(&format!(
        r#"
[[sinks]]
name = "cache"
kind = "redis"
url = "redis://127.0.0.1:{}"
topics = ["cache/#"]
command = "SET msg:${{id}} ${{payload}} NX"
request_timeout_ms = 500
retry = {{ initial_ms = 50, max_ms = 200 }}
"#,
        redis.port
    ));
    let server = common::start(config).await;
    let port = server.local_addr().port();
    let publisher = connect(port, "p", true, None).await;
    let publish = |i: usize| {
        let c = publisher.client.clone();
        async move {
            c.publish(
                format!("cache/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("value {i}"),
            )
            .await
            .unwrap()
        }
    };
    for i in 0..20 {
        publish(i).await;
    }
    assert!(eventually(20, || servers::redis_cli(&redis, &["DBSIZE"]) == "20").await);
    let keys = servers::redis_cli(&redis, &["KEYS", "msg:*"]);
    let first = keys.lines().next().expect("a key").to_string();
    assert!(servers::redis_cli(&redis, &["GET", &first]).starts_with("value "));

    redis.hang();
    for i in 20..40 {
        publish(i).await;
    }
    let waiting = eventually(10, || {
        let s = sink_stats(&server, "cache");
        s.status.name() == "disconnected" && s.queuing > 0
    })
    .await;
    assert!(
        waiting,
        "the sink waits for the hung server: {:?}",
        sink_stats(&server, "cache")
    );
    redis.resume();
    assert!(eventually(30, || servers::redis_cli(&redis, &["DBSIZE"]) == "40").await);
    // The resumed server answers the writes it held (late replies, ignored: those items were
    // already given back to the queue), so the keys can be there before the retry lands.
    let stats = settled(&server, "cache", 40).await;
    assert_eq!(servers::redis_cli(&redis, &["DBSIZE"]), "40");
    assert!(stats.late_reply > 0 && stats.retried > 0, "{stats:?}");
    server.shutdown(Duration::from_secs(5)).await;
}

/// What the HTTP receiver saw: (Idempotency-Key, body) per request.
pub(crate) type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// An HTTP/1.1 receiver on a loopback port answering each request with `status(key, body)`.
pub(crate) async fn http_receiver(
    status: impl Fn(&str, &str) -> u16 + Send + Sync + 'static,
) -> (u16, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let (status, log) = (Arc::new(status), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (status, log) = (status.clone(), log.clone());
            tokio::spawn(async move {
                while let Some((key, body)) = read_request(&mut conn).await {
                    let code = status(&key, &body);
                    log.lock().push((key, body));
                    let answer = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n");
                    if conn.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// Reads one request: its Idempotency-Key header and body.
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if conn.read(&mut b).await.ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.ok()?;
    Some((
        header("idempotency-key"),
        String::from_utf8_lossy(&body).to_string(),
    ))
}

/// A webhook: body and header templates, an `Idempotency-Key` per message, 503 tried again
/// (same key), 400 refused for good and published to the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sink_retries_and_dead_letters() {
    let attempts: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let counted = attempts.clone();
    let (http_port, seen) = http_receiver(move |key, body| {
        let mut a = counted.lock();
        let n = a.entry(key.to_string()).or_insert(0);
        *n += 1;
        match (body.contains("\"bad\""), *n) {
            (true, _) => 400,
            (false, 1) => 503,
            _ => 200,
        }
    })
    .await;
    let config = config_with(&format!(
        r#"
[[sinks]]
name = "hook"
kind = "http"
url = "http://127.0.0.1:{http_port}/ingest/${{clientid}}"
topics = ["hook/#"]
headers = {{ "content-type" = "application/json" }}
body = '{{"topic": "${{topic}}", "payload": ${{payload}}}}'
retry = {{ initial_ms = 20, max_ms = 100 }}
"#
    ));
    let server = common::start(config).await;
    let port = server.local_addr().port();
    let mut dead = connect(port, "dead-watcher", true, None).await;
    subscribe(&dead, "keelmq/dead-letter/#", QoS::AtLeastOnce).await;
    let publisher = connect(port, "hooker", true, None).await;
    for body in [r#"{"ok": 1}"#, r#"{"ok": 2}"#, r#""bad""#] {
        publisher
            .client
            .publish("hook/x", QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    let letter = next(&mut dead).await;
    let letter: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(letter["sink"], "hook");
    assert!(
        letter["reason"].as_str().unwrap().contains("400"),
        "{letter}"
    );
    assert!(eventually(20, || sink_stats(&server, "hook").success == 2).await);
    let seen = seen.lock().clone();
    let ok: Vec<_> = seen.iter().filter(|(_, b)| b.contains("\"ok\"")).collect();
    assert_eq!(
        ok.len(),
        4,
        "each good message twice (503, then 200): {seen:?}"
    );
    let first = r#"{"topic": "hook/x", "payload": {"ok": 1}}"#;
    assert!(ok.iter().any(|(_, b)| b == first), "{ok:?}");
    assert!(ok.iter().all(|(k, _)| !k.is_empty()), "an Idempotency-Key");
    let keys: std::collections::BTreeSet<_> = ok.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys.len(), 2, "a retry repeats its key");
    let stats = sink_stats(&server, "hook");
    assert_eq!((stats.dropped, stats.retried), (1, 2), "{stats:?}");
    server.shutdown(Duration::from_secs(5)).await;
}

/// A target that is down at start: the broker serves everything else, the sink says why in
/// its status, and writes once the target is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_target_is_down_waits_and_the_broker_serves() {
    let Some(mut pg) = servers::postgres() else {
        return;
    };
    servers::psql(&pg, "CREATE TABLE t(id bigint PRIMARY KEY)");
    pg.stop();
    let config = config_with(&format!(
        r#"
[[sinks]]
name = "later"
kind = "postgresql"
url = "postgres://keelmq:secret@127.0.0.1:{}/keelmq"
topics = ["later/#"]
sql = "INSERT INTO t(id) VALUES (${{id}}) ON CONFLICT DO NOTHING"
retry = {{ initial_ms = 50, max_ms = 500 }}
"#,
        pg.port
    ));
    let server = common::start(config).await;
    let port = server.local_addr().port();
    let mut other = connect(port, "other", true, None).await;
    subscribe(&other, "plain", QoS::AtLeastOnce).await;
    let publisher = connect(port, "p", true, None).await;
    for _ in 0..5 {
        publisher
            .client
            .publish("later/x", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    publisher
        .client
        .publish("plain", QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    assert_eq!(&next(&mut other).await.payload[..], b"hi");
    let down = eventually(10, || {
        let s = sink_stats(&server, "later");
        s.status.name() == "disconnected" && s.last_error.contains("refused") && s.queuing == 5
    })
    .await;
    assert!(down, "{:?}", sink_stats(&server, "later"));
    pg.restart();
    assert!(eventually(30, || servers::psql(&pg, "SELECT count(*) FROM t") == "5").await);
    assert_eq!(sink_stats(&server, "later").status.name(), "connected");
    server.shutdown(Duration::from_secs(5)).await;
}

/// The issue's outage: PostgreSQL stopped for 30 s, then hung (SIGSTOP) for 30 s, while a
/// publisher goes on. The queue grows meanwhile, and drains once the target answers; every
/// message is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_waits_out_a_stopped_then_hung_target() {
    let Some(mut pg) = servers::postgres() else {
        return;
    };
    servers::psql(&pg, "CREATE TABLE outage(id bigint PRIMARY KEY, n text)");
    let config = config_with(&format!(
        r#"
[[sinks]]
name = "outage"
kind = "postgresql"
url = "postgres://keelmq:secret@127.0.0.1:{}/keelmq"
topics = ["outage/#"]
sql = "INSERT INTO outage(id, n) VALUES (${{id}}, ${{payload}}) ON CONFLICT DO NOTHING"
request_timeout_ms = 1000
retry = {{ initial_ms = 100, max_ms = 1000 }}
"#,
        pg.port
    ));
    let server = common::start(config).await;
    let port = server.local_addr().port();
    let publisher = connect(port, "steady", true, None).await;
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = steady_load(publisher.client.clone(), sent.clone(), stopped);
    let count = |pg: &servers::Server| servers::psql(pg, "SELECT count(*) FROM outage");
    assert!(
        eventually(10, || count(&pg) != "0").await,
        "the sink writes"
    );
    pg.stop();
    let mut most_queued = most_queued_within(&server, 30).await;
    let stopped_stats = sink_stats(&server, "outage");
    assert_eq!(
        stopped_stats.status.name(),
        "disconnected",
        "{stopped_stats:?}"
    );
    pg.restart();
    pg.hang();
    most_queued = most_queued.max(most_queued_within(&server, 30).await);
    let hung_stats = sink_stats(&server, "outage");
    pg.resume();
    let _ = stop.send(true);
    load.await.unwrap();
    let total = sent.load(Ordering::SeqCst);
    assert!(
        most_queued >= 500,
        "the queue grew: {most_queued}, {hung_stats:?}"
    );
    let all = eventually(60, || count(&pg) == total.to_string()).await;
    let stats = sink_stats(&server, "outage");
    assert!(all, "{} of {total} rows; {stats:?}", count(&pg));
    let stats = settled(&server, "outage", total as u64).await;
    assert_eq!(stats.queuing, 0, "drained: {stats:?}");
    let distinct = servers::psql(&pg, "SELECT count(DISTINCT n) FROM outage");
    assert_eq!(distinct, total.to_string(), "every message once");
    server.shutdown(Duration::from_secs(5)).await;
}

/// Publishes `outage/<n % 4>` at QoS 1, 20 messages a second, counting them in `sent`, until
/// `stopped` says so.
fn steady_load(
    c: rumqttc::AsyncClient,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while !*stopped.borrow_and_update() {
            tick.tick().await;
            let n = sent.fetch_add(1, Ordering::SeqCst);
            let topic = format!("outage/{}", n % 4);
            c.publish(topic, QoS::AtLeastOnce, false, n.to_string())
                .await
                .unwrap();
        }
    })
}

/// The most messages the sink `outage` had queued, sampled twice a second for `secs`.
async fn most_queued_within(server: &keelmq::server::Server, secs: u64) -> u64 {
    let mut most = 0;
    for _ in 0..secs * 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        most = most.max(sink_stats(server, "outage").queuing);
    }
    most
}

/// Configuration errors name the sink's field.
#[test]
fn bad_sinks_are_refused_naming_the_field() {
    let error = |text: &str| {
        Config::parse(text)
            .and_then(|c| c.validate().map_err(|e| e.to_string()))
            .err()
            .unwrap_or_default()
    };
    let pg =
        "[[sinks]]\nname = \"s\"\nkind = \"postgresql\"\nurl = \"postgres://x@127.0.0.1/db\"\n";
    assert!(error(pg).contains("sinks[0].sql"), "{}", error(pg));
    let quoted = format!("{pg}sql = \"INSERT INTO t VALUES ('${{id}}')\"\n");
    assert!(
        error(&quoted).contains("inside quotes"),
        "{}",
        error(&quoted)
    );
    let unclosed = format!("{pg}sql = \"INSERT INTO t VALUES (${{id)\"\n");
    assert!(
        error(&unclosed).contains("sinks[0].sql"),
        "{}",
        error(&unclosed)
    );
    let unknown = format!("{pg}topics = [\"t/#\"]\nsql = \"INSERT INTO t VALUES (${{t}})\"\n");
    let e = error(&unknown);
    assert!(
        e.contains("sinks[0].sql") && e.contains("not a field of a message"),
        "{e}"
    );
    let kafka = "[[sinks]]\nname = \"k\"\nkind = \"kafka\"\nbootstrap = \"127.0.0.1:9092\"\n\
                 topic = \"events/${clientid\"\n";
    assert!(error(kafka).contains("sinks[0].topic"), "{}", error(kafka));
    let no_source = "[[rules]]\nid = \"r\"\nsql = 'SELECT * FROM \"$bridges/mqtt:nope\"'\n\
                     actions = [{ kind = \"console\" }]\n";
    let e = error(no_source);
    assert!(
        e.contains("rules[0].sql") && e.contains("no mqtt source"),
        "{e}"
    );
    let delivered = format!("{pg}sql = \"SELECT 1\"\nack = \"delivered\"\n");
    let e = error(&delivered);
    assert!(e.contains("sinks[0].ack") && e.contains("topics"), "{e}");
    let never = format!("{pg}sql = \"SELECT 1\"\ntopics = [\"t\"]\nack_timeout_ms = 0\n");
    assert!(
        error(&never).contains("sinks[0].ack_timeout_ms"),
        "{}",
        error(&never)
    );
    let foreign = format!("{pg}sql = \"SELECT 1\"\ncommand = \"GET x\"\n");
    assert!(
        error(&foreign).contains("sinks[0].command"),
        "{}",
        error(&foreign)
    );
    let rule = format!(
        "{pg}sql = \"SELECT 1\"\n[[rules]]\nid = \"r\"\nsql = 'SELECT * FROM \"t\"'\n\
         actions = [{{ kind = \"sink\", name = \"nope\" }}]\n"
    );
    assert!(
        error(&rule).contains("rules[0].actions[0].name"),
        "{}",
        error(&rule)
    );
}

/// An MQTT sink to a real Mosquitto at QoS 2: payloads byte for byte (binary too), the
/// templated remote topic, exactly once at a subscriber of the remote, the remote's Receive
/// Maximum respected (Mosquitto allows 5 in flight here), and a rule's output forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sink_forwards_to_mosquitto_exactly_once() {
    let Some(remote) = servers::mosquitto(5) else {
        return;
    };
    let mut far = connect(remote.port, "far-subscriber", true, None).await;
    subscribe(&far, "from-keelmq/#", QoS::ExactlyOnce).await;
    let config = config_with(&format!(
        r#"
[[sinks]]
name = "plant"
kind = "mqtt"
server = "127.0.0.1:{}"
client_id = "keelmq-bridge-1"
remote_topic = "from-keelmq/${{topic}}"
qos = 2
topics = ["cmd/#"]
ack = "delivered"

[[rules]]
id = "summary"
sql = 'SELECT payload.v * 2 AS double, topic FROM "calc/+"'
actions = [{{ kind = "sink", name = "plant" }}]
"#,
        remote.port
    ));
    let server = common::start(config).await;
    let port = server.local_addr().port();
    let publisher = connect(port, "commander", true, None).await;
    const N: usize = 200;
    for i in 0..N {
        let mut payload = format!("command {i} ").into_bytes();
        payload.extend_from_slice(&[0, 0xff, 0xfe, i as u8]);
        publisher
            .client
            .publish(format!("cmd/{}", i % 7), QoS::ExactlyOnce, false, payload)
            .await
            .unwrap();
    }
    publisher
        .client
        .publish("calc/1", QoS::ExactlyOnce, false, r#"{"v": 21}"#)
        .await
        .unwrap();
    let mut seen = BTreeMap::new();
    let mut rule_output = None;
    for _ in 0..=N {
        let p = tokio::time::timeout(Duration::from_secs(10), far.publishes.recv()).await;
        let Ok(Some(p)) = p else {
            panic!(
                "{} forwarded, then nothing: {:?}",
                seen.len(),
                sink_stats(&server, "plant")
            );
        };
        if p.topic == "from-keelmq/calc/1" {
            rule_output = Some(String::from_utf8_lossy(&p.payload).to_string());
            continue;
        }
        let text = String::from_utf8_lossy(&p.payload[..p.payload.len() - 4]).to_string();
        let i: usize = text.trim_start_matches("command ").trim().parse().unwrap();
        assert_eq!(p.topic, format!("from-keelmq/cmd/{}", i % 7));
        assert_eq!(&p.payload[p.payload.len() - 4..], &[0, 0xff, 0xfe, i as u8]);
        *seen.entry(i).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), N, "every command once");
    let output: serde_json::Value =
        serde_json::from_str(&rule_output.expect("the rule's output")).unwrap();
    assert_eq!(output["double"], 42, "{output}");
    let extra = tokio::time::timeout(Duration::from_millis(500), far.publishes.recv()).await;
    assert!(extra.is_err(), "nothing twice: {extra:?}");
    let stats = settled(&server, "plant", N as u64 + 1).await;
    assert_eq!(stats.status.name(), "connected", "{stats:?}");
    // Every PUBREC waited for the remote's (ack = "delivered"), none timed out.
    assert_eq!(server.broker().metrics_snapshot().not_confirmed, 0);
    server.shutdown(Duration::from_secs(5)).await;
}

/// Kafka (a real Kafka-protocol broker, Tansu) through `rskafka`: records keyed by the
/// client id, the payload byte for byte as the value, the message id in the `keelmq-id`
/// header; read back with a fetch from offset 0 of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_produces_keyed_records_with_the_message_id() {
    use rskafka::client::partition::UnknownTopicHandling;
    let Some(kafka) = servers::kafka() else {
        return;
    };
    let bootstrap = format!("127.0.0.1:{}", kafka.port);
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .expect("kafka client");
    client
        .controller_client()
        .unwrap()
        .create_topic("iot-events", 3, 1, 5_000)
        .await
        .expect("topic created");
    let config = config_with(&format!(
        r#"
[[sinks]]
name = "events"
kind = "kafka"
bootstrap = "{bootstrap}"
topic = "iot-events"
key = "${{clientid}}"
topics = ["telemetry/#"]
"#
    ));
    let server = common::start(config).await;
    let port = server.local_addr().port();
    for device in ["dev-a", "dev-b", "dev-c"] {
        let publisher = connect(port, device, true, None).await;
        for i in 0..10u8 {
            let payload = vec![i, 0xff, b'x'];
            publisher
                .client
                .publish("telemetry/t", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(eventually(20, || sink_stats(&server, "events").success == 30).await);
    let mut records = Vec::new();
    for partition in 0..3 {
        let pc = client
            .partition_client("iot-events", partition, UnknownTopicHandling::Error)
            .await
            .unwrap();
        let (batch, _) = pc.fetch_records(0, 1..1_000_000, 500).await.unwrap();
        records.extend(batch.into_iter().map(|r| (partition, r.record)));
    }
    assert_eq!(records.len(), 30, "each message once");
    let mut partitions_of: BTreeMap<Vec<u8>, std::collections::BTreeSet<i32>> = BTreeMap::new();
    for (partition, r) in &records {
        let key = r.key.clone().expect("a key");
        partitions_of.entry(key).or_default().insert(*partition);
        let value = r.value.as_deref().unwrap();
        assert_eq!(&value[1..], &[0xff, b'x'], "the payload byte for byte");
        let id = String::from_utf8(r.headers["keelmq-id"].clone()).unwrap();
        assert!(id.parse::<u64>().is_ok(), "{id}");
    }
    assert_eq!(partitions_of.len(), 3, "keyed by client id");
    assert!(
        partitions_of.values().all(|p| p.len() == 1),
        "one partition per key"
    );
    server.shutdown(Duration::from_secs(5)).await;
}

/// A sink on `#` reads a rule's republish (direct dispatch keeps rules, not sinks, from
/// reading it) but not its own dead letters: a target that refuses everything gets each
/// message once, and nothing loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_on_everything_reads_republishes_but_not_dead_letters() {
    let (http_port, seen) = http_receiver(|_, _| 400).await;
    let config = config_with(&format!(
        r##"
[[sinks]]
name = "all"
kind = "http"
url = "http://127.0.0.1:{http_port}/"
topics = ["#"]

[[rules]]
id = "copy"
sql = 'SELECT payload FROM "in"'
actions = [{{ kind = "republish", topic = "copied", qos = 1 }}]
"##
    ));
    let server = common::start(config).await;
    let port = server.local_addr().port();
    let mut dead = connect(port, "dead-watcher", true, None).await;
    subscribe(&dead, "keelmq/dead-letter/all", QoS::AtLeastOnce).await;
    let publisher = connect(port, "p", true, None).await;
    publisher
        .client
        .publish("in", QoS::AtLeastOnce, false, "1")
        .await
        .unwrap();
    for _ in 0..2 {
        next(&mut dead).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().clone();
    let bodies: Vec<String> = seen
        .iter()
        .map(|(_, b)| serde_json::from_str::<serde_json::Value>(b).unwrap()["topic"].to_string())
        .collect();
    assert_eq!(
        bodies.len(),
        2,
        "the message and its republish, once each: {bodies:?}"
    );
    assert!(bodies.contains(&"\"copied\"".to_string()), "{bodies:?}");
    assert_eq!(sink_stats(&server, "all").dropped, 2);
    server.shutdown(Duration::from_secs(5)).await;
}

/// An MQTT source: a persistent QoS 2 session on a real Mosquitto whose messages enter the
/// broker under `remote/<topic>`, byte for byte, once each, also across a broker restart
/// (what Mosquitto queued for the source meanwhile arrives after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_source_brings_a_remote_brokers_messages_in_once() {
    let Some(remote) = servers::mosquitto(100) else {
        return;
    };
    let text = format!(
        r#"
[[sources]]
name = "plant_broker"
kind = "mqtt"
server = "127.0.0.1:{}"
client_id = "keelmq-source-1"
topics = [{{ filter = "plant/#", qos = 2 }}]
local_topic = "remote/${{topic}}"
retry = {{ initial_ms = 50, max_ms = 200 }}
"#,
        remote.port
    );
    let config = config_with(&text);
    let server = common::start(config.clone()).await;
    let port = server.local_addr().port();
    let mut local = connect(port, "local-sub", false, None).await;
    // QoS 1 here: rumqttc ends its connection on a PUBREL it does not know, which a fresh
    // client resuming a session with QoS 2 exchanges in flight receives. A second message from
    // the source would come without DUP and be counted twice.
    subscribe(&local, "remote/#", QoS::AtLeastOnce).await;
    let far = connect(remote.port, "plant-device", true, None).await;
    // The source subscribes once connected: wait for its first message to come through.
    let mut seen: BTreeMap<usize, u32> = BTreeMap::new();
    let send = |i: usize| {
        let c = far.client.clone();
        async move {
            // Probes (i >= 1000) are marked `p`, counted messages `m`.
            let mark = if i >= 1000 { b'p' } else { b'm' };
            let payload = vec![mark, i as u8, 0xff];
            c.publish(
                format!("plant/line{}", i % 3),
                QoS::ExactlyOnce,
                false,
                payload,
            )
            .await
            .unwrap()
        }
    };
    let mut first = None;
    for attempt in 0..50 {
        send(1000 + attempt).await;
        if let Ok(Some(p)) =
            tokio::time::timeout(Duration::from_millis(200), local.publishes.recv()).await
        {
            first = Some(p);
            break;
        }
    }
    assert!(first.is_some(), "the source brings messages in");
    for i in 0..50 {
        send(i).await;
    }
    count_marked(&mut local, &mut seen, 50).await;
    // The broker stops; Mosquitto queues for the source; it comes back and gets them.
    server.shutdown(Duration::from_secs(5)).await;
    for i in 50..80 {
        send(i).await;
    }
    let server = common::start(config).await;
    let port = server.local_addr().port();
    let mut local = connect(port, "local-sub", false, None).await;
    let present = local.connacks.recv().await;
    count_marked(&mut local, &mut seen, 80).await;
    let stats = server.broker().metrics_snapshot().sources;
    assert_eq!(
        (stats[0].name.as_str(), stats[0].status.name()),
        ("plant_broker", "connected")
    );
    assert!(stats[0].success >= 30, "{stats:?}");
    let missing: Vec<usize> = (0..80).filter(|i| !seen.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}; source {stats:?}; present {present:?}"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "twice: {twice:?}");
    server.shutdown(Duration::from_secs(5)).await;
}

/// An MQTT source `plant` from the remote on `port`, read by an inline rule and by a rule on
/// a durable consumer (its republish may set RETAIN).
fn source_rules_config(port: u16) -> Config {
    config_with(&format!(
        r#"
[[sources]]
name = "plant"
kind = "mqtt"
server = "127.0.0.1:{}"
client_id = "keelmq-source-rules"
topics = [{{ filter = "plant/#", qos = 1 }}]
local_topic = "remote/${{topic}}"
retry = {{ initial_ms = 50, max_ms = 200 }}

[[rules]]
id = "inline_copy"
sql = 'SELECT payload, topic FROM "$bridges/mqtt:plant"'
actions = [{{ kind = "republish", topic = "inline/${{topic}}", qos = 1, payload = "${{payload}}" }}]

[[rules]]
id = "consumed_copy"
sql = 'SELECT payload, topic FROM "$bridges/mqtt:plant" WHERE qos > 0'
actions = [{{ kind = "republish", topic = "consumed/${{topic}}", qos = 1, retain = true, payload = "${{payload}}" }}]
"#,
        port
    ))
}

/// Rules read a source's messages with `FROM "$bridges/mqtt:<name>"`: an inline rule and one
/// on a durable consumer (its republish may set RETAIN) each give one output per message the
/// source brings in, and none for a local client's message to the same local topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_read_a_source_through_its_bridge_topic() {
    let Some(remote) = servers::mosquitto(100) else {
        return;
    };
    let config = source_rules_config(remote.port);
    let server = common::start(config).await;
    let port = server.local_addr().port();
    let mut local = connect(port, "rule-watcher", true, None).await;
    for filter in ["inline/#", "consumed/#"] {
        subscribe(&local, filter, QoS::AtLeastOnce).await;
    }
    // A local client's message to the source's local topic is not the source's.
    let neighbour = connect(port, "neighbour", true, None).await;
    let far = connect(remote.port, "plant-device", true, None).await;
    let send = |payload: String| {
        let c = far.client.clone();
        async move {
            c.publish("plant/a", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap()
        }
    };
    // Until the source has subscribed, the remote drops what it gets: probe until one comes.
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut record = |p: rumqttc::Publish| {
        let text = String::from_utf8_lossy(&p.payload).to_string();
        got.entry(format!("{} {text}", p.topic))
            .or_default()
            .push(text);
    };
    for probe in 0..50 {
        send(format!("probe {probe}")).await;
        let received = tokio::time::timeout(Duration::from_millis(200), local.publishes.recv());
        if let Ok(Some(p)) = received.await {
            record(p);
            break;
        }
    }
    for i in 0..5 {
        send(format!("v{i}")).await;
        neighbour
            .client
            .publish("remote/plant/a", QoS::AtLeastOnce, false, "local")
            .await
            .unwrap();
    }
    // Everything comes within a few seconds; then nothing more.
    while let Ok(Some(p)) =
        tokio::time::timeout(Duration::from_secs(3), local.publishes.recv()).await
    {
        record(p);
    }
    for i in 0..5 {
        for prefix in ["inline", "consumed"] {
            let key = format!("{prefix}/remote/plant/a v{i}");
            assert_eq!(got.get(&key).map(Vec::len), Some(1), "{key}: {got:?}");
        }
    }
    assert!(!got.keys().any(|k| k.ends_with(" local")), "{got:?}");
    let rules = server.broker().metrics_snapshot().rules;
    assert!(rules.iter().all(|r| r.matched > 0), "{rules:?}");
    server.shutdown(Duration::from_secs(5)).await;
}

/// Counts the messages marked `m` that `local` receives (by their number) until `n` numbers
/// were seen, or for at most 20 s.
async fn count_marked(
    local: &mut crate::interop_rumqttc::v311::Client,
    seen: &mut BTreeMap<usize, u32>,
    n: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < n && tokio::time::Instant::now() < deadline {
        let received = tokio::time::timeout(Duration::from_millis(500), local.publishes.recv());
        let Ok(Some(p)) = received.await else {
            continue;
        };
        if p.payload.first() == Some(&b'm') {
            assert!(p.topic.starts_with("remote/plant/line"), "{}", p.topic);
            assert_eq!(p.payload.len(), 3);
            let count = seen.entry(usize::from(p.payload[1])).or_insert(0);
            // A re-send (DUP) of a delivery this subscriber's previous connection took but had
            // not acknowledged is not a second message.
            if *count == 0 || !p.dup {
                *count += 1;
            }
        }
    }
}

/// Produces `event <i>` for `from..to` to `plant-events`, even numbers to partition 0.
async fn produce_events(client: &rskafka::client::Client, from: u32, to: u32) {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    for partition in 0..2 {
        let pc = client
            .partition_client("plant-events", partition, UnknownTopicHandling::Error)
            .await
            .unwrap();
        let records = (from..to)
            .filter(|i| *i as i32 % 2 == partition)
            .map(|i| rskafka::record::Record {
                key: None,
                value: Some(format!("event {i}").into_bytes()),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(0).unwrap(),
            })
            .collect();
        pc.produce(records, Compression::NoCompression)
            .await
            .unwrap();
    }
}

/// A Kafka source (Tansu): every partition's records enter the broker with the record's
/// place as user properties; after a restart of the broker it goes on from the offsets it
/// stored (its counters show it read only the new records; all arrive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_brings_records_in_and_resumes_from_its_offsets() {
    let Some(kafka) = servers::kafka() else {
        return;
    };
    let bootstrap = format!("127.0.0.1:{}", kafka.port);
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .expect("kafka client");
    client
        .controller_client()
        .unwrap()
        .create_topic("plant-events", 2, 1, 5_000)
        .await
        .expect("topic created");
    produce_events(&client, 0, 20).await;
    let text = format!(
        r#"
[[sources]]
name = "plant_kafka"
kind = "kafka"
bootstrap = "{bootstrap}"
topic = "plant-events"
local_topic = "kafka/${{topic}}/${{partition}}"
"#
    );
    let with_source = config_with(&text);
    // A persistent subscriber first (on a broker without the source, same data directory), so
    // nothing the source publishes misses it.
    let mut config = with_source.clone();
    config.sources.clear();
    let server = common::start(config.clone()).await;
    let reader = connect(server.local_addr().port(), "kafka-reader", false, None).await;
    subscribe(&reader, "kafka/#", QoS::AtLeastOnce).await;
    drop(reader);
    server.shutdown(Duration::from_secs(5)).await;
    let config = with_source;
    let mut seen = std::collections::BTreeSet::new();
    for (run, total) in [(0, 20), (1, 30)] {
        if run == 1 {
            produce_events(&client, 20, 30).await;
        }
        let server = common::start(config.clone()).await;
        let mut local = connect(server.local_addr().port(), "kafka-reader", false, None).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while seen.len() < total && tokio::time::Instant::now() < deadline {
            let got = tokio::time::timeout(Duration::from_millis(500), local.publishes.recv());
            if let Ok(Some(p)) = got.await {
                let text = String::from_utf8_lossy(&p.payload).to_string();
                assert!(p.topic.starts_with("kafka/plant-events/"), "{}", p.topic);
                // A QoS 1 re-delivery to this subscriber may repeat one; what the source read
                // again shows in its counters below.
                seen.insert(text);
            }
        }
        assert_eq!(seen.len(), total, "run {run}: {seen:?}");
        let stats = server.broker().metrics_snapshot().sources;
        assert_eq!(
            stats[0].success,
            (total - run * 20) as u64,
            "run {run}: {stats:?}"
        );
        server.shutdown(Duration::from_secs(5)).await;
    }
    let expected: std::collections::BTreeSet<String> =
        (0..30).map(|i| format!("event {i}")).collect();
    assert_eq!(seen, expected);
}

/// The next packet of a raw client, which must be an acknowledgement: (kind, id, reason).
async fn next_ack(c: &mut RawClient) -> (&'static str, u16, ReasonCode) {
    match c.next().await {
        Packet::PubAck(a) => ("PUBACK", a.packet_id, a.reason),
        Packet::PubRec(a) => ("PUBREC", a.packet_id, a.reason),
        Packet::PubComp(a) => ("PUBCOMP", a.packet_id, a.reason),
        other => panic!("expected an acknowledgement, got {other:?}"),
    }
}

/// `ack = "delivered"`: a publisher's PUBACK/PUBREC leaves only once the target has the
/// message. A target that does not take it within `ack_timeout_ms` gets a v5 publisher reason
/// 0x80 (a QoS 2 packet id is free again) and a 3.x publisher disconnected; the message stays
/// queued and arrives once the target answers; a QoS 2 re-send after the disconnect waits for
/// the same confirmation. Acknowledgements keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_sink_holds_the_acknowledgement_until_the_target_has_it() {
    let status = Arc::new(AtomicU16::new(200));
    let answer = status.clone();
    let (http, seen) = http_receiver(move |_, _| answer.load(Ordering::SeqCst)).await;
    let config = config_with(&format!(
        r#"
[[sinks]]
name = "hook"
kind = "http"
url = "http://127.0.0.1:{http}/in"
topics = ["cmd/#"]
ack = "delivered"
ack_timeout_ms = 1500
batch_time_ms = 0
retry = {{ initial_ms = 50, max_ms = 100 }}
"#
    ));
    let server = common::start(config).await;
    let addr = server.local_addr();
    let (mut v5, _) = RawClient::connect(addr, ProtocolVersion::V5, "pub5", true, |_| {}).await;
    let arrived = |topic: &str| seen.lock().iter().any(|(_, body)| body.contains(topic));

    // The target answers: the PUBACK follows its answer (a retained message's too).
    v5.publish("cmd/1", b"one", Q::AtLeastOnce, 1, false).await;
    assert_eq!(next_ack(&mut v5).await, ("PUBACK", 1, ReasonCode::SUCCESS));
    assert!(arrived("cmd/1"));
    v5.publish("cmd/kept", b"kept", Q::AtLeastOnce, 1, true)
        .await;
    assert_eq!(next_ack(&mut v5).await, ("PUBACK", 1, ReasonCode::SUCCESS));
    assert!(arrived("cmd/kept"));

    // The target refuses for now (503, retried): no answer until the timeout, then 0x80; a
    // later message no sink reads is acknowledged behind it, never before.
    status.store(503, Ordering::SeqCst);
    v5.publish("cmd/2", b"two", Q::AtLeastOnce, 2, false).await;
    v5.publish("other/x", b"x", Q::AtLeastOnce, 3, false).await;
    v5.expect_silence(Duration::from_millis(1000)).await;
    let late = ReasonCode::UNSPECIFIED_ERROR;
    assert_eq!(next_ack(&mut v5).await, ("PUBACK", 2, late));
    let none = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    assert_eq!(next_ack(&mut v5).await, ("PUBACK", 3, none));

    // QoS 2: PUBREC 0x80 ends the exchange, and the packet id is free for a new message.
    v5.publish("cmd/3", b"three", Q::ExactlyOnce, 4, false)
        .await;
    assert_eq!(next_ack(&mut v5).await, ("PUBREC", 4, late));
    // Sent again (DUP, as after a lost PUBREC): the same message, answered alike, not routed.
    let mut again = common::raw::publish_packet("cmd/3", b"three", Q::ExactlyOnce, 4, false);
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    v5.send(&again).await;
    assert_eq!(next_ack(&mut v5).await, ("PUBREC", 4, late));
    status.store(200, Ordering::SeqCst);
    v5.publish("cmd/4", b"four", Q::ExactlyOnce, 4, false).await;
    assert_eq!(next_ack(&mut v5).await, ("PUBREC", 4, ReasonCode::SUCCESS));
    assert!(arrived("cmd/4"), "PUBREC after the target has it");
    v5.send(&Packet::PubRel(PubAck::new(4))).await;
    assert_eq!(next_ack(&mut v5).await, ("PUBCOMP", 4, ReasonCode::SUCCESS));
    // What timed out was still queued, and arrived; the re-sent one as one message.
    assert!(eventually(10, || arrived("cmd/2") && arrived("cmd/3")).await);
    let keys = |topic: &str| {
        let seen = seen.lock();
        let keys: std::collections::BTreeSet<&String> = seen
            .iter()
            .filter(|(_, body)| body.contains(topic))
            .map(|(key, _)| key)
            .collect();
        keys.len()
    };
    assert_eq!(keys("cmd/3"), 1, "one Idempotency-Key for cmd/3");

    // A 3.x publisher cannot be told: disconnected at the timeout, nothing acknowledged.
    status.store(503, Ordering::SeqCst);
    let v3 = ProtocolVersion::V3_1_1;
    let (mut old, _) = RawClient::connect(addr, v3, "pub3", true, |_| {}).await;
    old.publish("cmd/5", b"five", Q::AtLeastOnce, 1, false)
        .await;
    assert_eq!(old.recv_within(Duration::from_secs(5)).await, Recv::Closed);
    status.store(200, Ordering::SeqCst);
    assert!(eventually(10, || arrived("cmd/5")).await);

    // A 3.x QoS 2 publisher with a session re-sends after that disconnect: the re-send's
    // PUBREC waits for the same confirmation, not acknowledged at once as a duplicate.
    status.store(503, Ordering::SeqCst);
    let (mut old, _) = RawClient::connect(addr, v3, "pub3q2", false, |_| {}).await;
    old.publish("cmd/6", b"six", Q::ExactlyOnce, 1, false).await;
    assert_eq!(old.recv_within(Duration::from_secs(5)).await, Recv::Closed);
    let (mut old, _) = RawClient::connect(addr, v3, "pub3q2", false, |_| {}).await;
    let mut again = common::raw::publish_packet("cmd/6", b"six", Q::ExactlyOnce, 1, false);
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    old.send(&again).await;
    old.expect_silence(Duration::from_millis(600)).await;
    status.store(200, Ordering::SeqCst);
    assert_eq!(next_ack(&mut old).await, ("PUBREC", 1, ReasonCode::SUCCESS));
    assert!(arrived("cmd/6"), "PUBREC after the target has it");
    assert_eq!(keys("cmd/6"), 1, "one Idempotency-Key for cmd/6");
    let not_confirmed = server.broker().metrics_snapshot().not_confirmed;
    assert_eq!(not_confirmed, 4, "cmd/2, cmd/3, cmd/5, cmd/6");
    server.shutdown(Duration::from_secs(5)).await;
}
