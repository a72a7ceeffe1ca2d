//! Data bridges across SIGKILL: the real `keelmq` binary with six sinks on the same topic —
//! PostgreSQL, Redis, a QoS 2 and a QoS 1 MQTT sink to a real Mosquitto, Kafka (a real
//! Kafka-protocol broker) and an HTTP webhook — killed at random moments under QoS 2 load (the
//! persistent publisher of `rules_crash`, one message in flight, so each acknowledged message
//! is one message in the broker). At the end every acknowledged message is in PostgreSQL
//! exactly once (one row, `ON CONFLICT` on the message id), in Redis exactly once (`SET … NX`),
//! at a subscriber of the remote Mosquitto exactly once through the QoS 2 sink (the remote
//! exchanges resumed from the log, never sent again as new), and at least once through the
//! QoS 1 sink, in Kafka and at the webhook; none is missing anywhere, and no sequence number
//! has two rows. The table counts the writes of each row too: rows written more than once
//! show the sink's at-least-once delivery the deduplication absorbed.
//! `KEELMQ_SINKS_CRASH_CYCLES` sets the number of kills (default 8).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rumqttc::QoS;

use crate::common::{self, servers};
use crate::interop_rumqttc::v311::{connect, subscribe};
use crate::rules_crash::{kill_cycles, publisher, Shared};

/// The targets' loopback ports.
struct Ports {
    pg: u16,
    redis: u16,
    mqtt: u16,
    kafka: u16,
    http: u16,
}

fn config(ports: &Ports) -> String {
    let Ports {
        pg: pg_port,
        redis: redis_port,
        mqtt: mqtt_port,
        kafka: kafka_port,
        http: http_port,
    } = ports;
    format!(
        r#"
[[sinks]]
name = "pg"
kind = "postgresql"
url = "postgres://keelmq:secret@127.0.0.1:{pg_port}/keelmq"
topics = ["src/#"]
sql = "INSERT INTO rows(id, seq) VALUES (${{id}}, ${{payload.seq}}) ON CONFLICT (id) DO UPDATE SET writes = rows.writes + 1"
retry = {{ initial_ms = 20, max_ms = 200 }}
inflight_batches = 2

[[sinks]]
name = "cache"
kind = "redis"
url = "redis://127.0.0.1:{redis_port}"
topics = ["src/#"]
command = "SET msg:${{id}} ${{payload.seq}} NX"
retry = {{ initial_ms = 20, max_ms = 200 }}

[[sinks]]
name = "plant"
kind = "mqtt"
server = "127.0.0.1:{mqtt_port}"
client_id = "keelmq-crash-bridge"
remote_topic = "far/${{topic}}"
qos = 2
topics = ["src/#"]
retry = {{ initial_ms = 20, max_ms = 200 }}

[[sinks]]
name = "plant1"
kind = "mqtt"
server = "127.0.0.1:{mqtt_port}"
client_id = "keelmq-crash-bridge-q1"
remote_topic = "far1/${{topic}}"
qos = 1
topics = ["src/#"]
retry = {{ initial_ms = 20, max_ms = 200 }}

[[sinks]]
name = "events"
kind = "kafka"
bootstrap = "127.0.0.1:{kafka_port}"
topic = "crash-events"
key = "${{clientid}}"
topics = ["src/#"]
retry = {{ initial_ms = 20, max_ms = 200 }}

[[sinks]]
name = "hook"
kind = "http"
url = "http://127.0.0.1:{http_port}/in"
body = "${{payload.seq}}"
topics = ["src/#"]
retry = {{ initial_ms = 20, max_ms = 200 }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_write_every_acknowledged_message_once_across_sigkill() {
    let (Some(pg), Some(redis), Some(mosquitto), Some(kafka)) = (
        servers::postgres(),
        servers::redis(),
        servers::mosquitto(20),
        servers::kafka(),
    ) else {
        return;
    };
    let far = far_subscriber(mosquitto.port, "far", QoS::ExactlyOnce).await;
    let far1 = far_subscriber(mosquitto.port, "far1", QoS::AtLeastOnce).await;
    let kafka_client = kafka_topic(kafka.port).await;
    let (http, hook) = crate::sinks::http_receiver(|_, _| 200).await;
    servers::psql(
        &pg,
        "CREATE TABLE rows(id bigint PRIMARY KEY, seq bigint NOT NULL, writes int NOT NULL DEFAULT 1)",
    );
    let cycles: u32 = std::env::var("KEELMQ_SINKS_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let dir = common::temp_dir("sinks-crash");
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("keelmq.toml");
    let ports = Ports {
        pg: pg.port,
        redis: redis.port,
        mqtt: mosquitto.port,
        kafka: kafka.port,
        http,
    };
    std::fs::write(&config_file, config(&ports)).unwrap();
    let data = dir.join("data");
    let (data_arg, config_arg) = (data.to_str().unwrap(), config_file.to_str().unwrap());
    let args = ["--data-dir", data_arg, "--config", config_arg];
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_keelmq"));
    let shared = Arc::new(Shared::default());
    shared.subscribed.store(true, Ordering::Relaxed);
    let broker = common::BrokerProcess::start_with(&binary, &args);
    *shared.addr.lock() = Some(broker.addr);
    let publ = tokio::spawn(publisher(shared.clone()));
    let broker = kill_cycles(&shared, broker, &binary, &args, cycles).await;
    shared.stop_publishing.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), publ).await;
    shared.stop_all.store(true, Ordering::Relaxed);
    let acked: BTreeSet<u64> = shared.acked.lock().clone();
    assert!(
        acked.len() > 20,
        "too few messages acknowledged: {}",
        acked.len()
    );

    let targets = Targets {
        pg: &pg,
        redis: &redis,
        far: &far,
    };
    let at_least_once = AtLeastOnce {
        far1: &far1,
        kafka: &kafka_client,
        hook: &hook,
    };
    // Everything acknowledged reaches every target (the last broker keeps running meanwhile).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut in_kafka = BTreeSet::new();
    while tokio::time::Instant::now() < deadline {
        in_kafka = at_least_once.in_kafka().await;
        if targets.have(&acked) && at_least_once.have(&acked, &in_kafka) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(broker);
    targets.check(&acked, shared.sent.load(Ordering::Relaxed));
    at_least_once.check(&acked, &in_kafka);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sequence numbers a subscriber of the remote Mosquitto received, with how often.
type Far = Arc<Mutex<BTreeMap<u64, u32>>>;

/// A subscriber of the remote Mosquitto to `prefix/#`, counting sequence numbers.
async fn far_subscriber(port: u16, prefix: &str, qos: QoS) -> Far {
    let far: Far = Arc::default();
    let mut sub = connect(port, prefix, true, None).await;
    subscribe(&sub, &format!("{prefix}/#"), qos).await;
    let seen = far.clone();
    tokio::spawn(async move {
        while let Some(p) = sub.publishes.recv().await {
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            if let Some(seq) = v["seq"].as_u64() {
                *seen.lock().entry(seq).or_insert(0) += 1;
            }
        }
    });
    far
}

/// The three targets, read with their own clients.
struct Targets<'a> {
    pg: &'a servers::Server,
    redis: &'a servers::Server,
    far: &'a Far,
}

impl Targets<'_> {
    fn in_pg(&self) -> BTreeSet<u64> {
        let out = servers::psql(self.pg, "SELECT seq FROM rows");
        out.lines().filter_map(|l| l.parse().ok()).collect()
    }

    fn in_redis(&self) -> BTreeSet<u64> {
        let keys = servers::redis_cli(self.redis, &["KEYS", "msg:*"]);
        keys.lines()
            .filter_map(|k| servers::redis_cli(self.redis, &["GET", k]).parse().ok())
            .collect()
    }

    fn in_far(&self) -> BTreeSet<u64> {
        self.far.lock().keys().copied().collect()
    }

    fn have(&self, acked: &BTreeSet<u64>) -> bool {
        acked.is_subset(&self.in_pg())
            && acked.is_subset(&self.in_redis())
            && acked.is_subset(&self.in_far())
    }

    /// Nothing acknowledged missing anywhere, nothing twice.
    fn check(&self, acked: &BTreeSet<u64>, sent: u64) {
        let count = |sql: &str| -> u64 { servers::psql(self.pg, sql).parse().unwrap_or(0) };
        let rows = count("SELECT count(*) FROM rows");
        let seqs = count("SELECT count(DISTINCT seq) FROM rows");
        let rewritten = count("SELECT count(*) FROM rows WHERE writes > 1");
        let keys: u64 = servers::redis_cli(self.redis, &["DBSIZE"])
            .parse()
            .unwrap_or(0);
        let lost = |got: BTreeSet<u64>| -> Vec<u64> { acked.difference(&got).copied().collect() };
        let (lost_pg, lost_redis, lost_far) = (
            lost(self.in_pg()),
            lost(self.in_redis()),
            lost(self.in_far()),
        );
        let twice_far: Vec<_> = self
            .far
            .lock()
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(s, n)| (*s, *n))
            .collect();
        eprintln!(
            "sinks crash test: {} acknowledged, {rows} rows ({rewritten} written more than once), \
             {keys} redis keys, {} at the remote subscriber, {sent} packets sent",
            acked.len(),
            self.far.lock().len(),
        );
        assert!(lost_pg.is_empty(), "lost in PostgreSQL: {lost_pg:?}");
        assert!(lost_redis.is_empty(), "lost in Redis: {lost_redis:?}");
        assert!(
            lost_far.is_empty(),
            "lost on the way to the remote broker: {lost_far:?}"
        );
        assert!(
            twice_far.is_empty(),
            "forwarded twice (seq, times): {twice_far:?}"
        );
        // One row and one key per message; a message is one sequence number (QoS 2
        // publisher), so a second row for a sequence number would be a message written twice
        // under two ids.
        assert_eq!(rows, seqs, "a sequence number in two rows");
        assert_eq!(keys, rows, "Redis and PostgreSQL disagree");
    }
}

/// A Kafka client of the broker on `port`, with the sink's topic created (one partition).
async fn kafka_topic(port: u16) -> rskafka::client::Client {
    let bootstrap = format!("127.0.0.1:{port}");
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap])
        .build()
        .await
        .expect("kafka client");
    let controller = client.controller_client().expect("kafka controller");
    controller
        .create_topic("crash-events", 1, 1, 5_000)
        .await
        .expect("topic created");
    client
}

/// The at-least-once targets: the QoS 1 MQTT sink's remote subscriber, Kafka, the webhook.
struct AtLeastOnce<'a> {
    far1: &'a Far,
    kafka: &'a rskafka::client::Client,
    hook: &'a crate::sinks::Seen,
}

impl AtLeastOnce<'_> {
    /// The sequence numbers in the Kafka topic (every record from offset 0).
    async fn in_kafka(&self) -> BTreeSet<u64> {
        use rskafka::client::partition::UnknownTopicHandling;
        let mut seen = BTreeSet::new();
        let partition = self
            .kafka
            .partition_client("crash-events", 0, UnknownTopicHandling::Error)
            .await
            .expect("partition");
        let mut offset = 0;
        loop {
            let fetched = partition.fetch_records(offset, 1..4_000_000, 200).await;
            let Ok((records, high_watermark)) = fetched else {
                return seen;
            };
            for r in &records {
                let value = r.record.value.as_deref().unwrap_or_default();
                let v: serde_json::Value = serde_json::from_slice(value).unwrap_or_default();
                seen.extend(v["seq"].as_u64());
                offset = offset.max(r.offset + 1);
            }
            if records.is_empty() || offset >= high_watermark {
                return seen;
            }
        }
    }

    fn at_hook(&self) -> BTreeSet<u64> {
        let hook = self.hook.lock();
        hook.iter()
            .filter_map(|(_, body)| body.parse().ok())
            .collect()
    }

    fn have(&self, acked: &BTreeSet<u64>, in_kafka: &BTreeSet<u64>) -> bool {
        let far1: BTreeSet<u64> = self.far1.lock().keys().copied().collect();
        acked.is_subset(&far1) && acked.is_subset(in_kafka) && acked.is_subset(&self.at_hook())
    }

    /// Nothing acknowledged missing (duplicates are allowed: at least once).
    fn check(&self, acked: &BTreeSet<u64>, in_kafka: &BTreeSet<u64>) {
        let far1: BTreeSet<u64> = self.far1.lock().keys().copied().collect();
        let lost = |got: &BTreeSet<u64>| -> Vec<u64> { acked.difference(got).copied().collect() };
        let (requests, keys) = {
            let hook = self.hook.lock();
            let keys: BTreeSet<&String> = hook.iter().map(|(k, _)| k).collect();
            (hook.len(), keys.len())
        };
        eprintln!(
            "sinks crash test: {} via the QoS 1 sink, {} in Kafka, {requests} webhook requests \
             ({keys} idempotency keys)",
            far1.len(),
            in_kafka.len()
        );
        assert!(lost(&far1).is_empty(), "lost via QoS 1: {:?}", lost(&far1));
        assert!(
            lost(in_kafka).is_empty(),
            "lost in Kafka: {:?}",
            lost(in_kafka)
        );
        let at_hook = self.at_hook();
        assert!(
            lost(&at_hook).is_empty(),
            "lost at the webhook: {:?}",
            lost(&at_hook)
        );
    }
}
