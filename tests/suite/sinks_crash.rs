//! Data bridges across SIGKILL: the real `keelmq` binary with a PostgreSQL sink, a Redis sink
//! and a QoS 2 MQTT sink to a real Mosquitto on the same topic, killed at random moments under QoS 2 load (the persistent
//! publisher of `rules_crash`, one message in flight, so each acknowledged message is one
//! message in the broker). At the end every acknowledged message is in PostgreSQL exactly
//! once (one row, `ON CONFLICT` on the message id), in Redis exactly once (`SET … NX`), and
//! at a subscriber of the remote Mosquitto exactly once (the remote QoS 2 exchanges resumed
//! from the log, never sent again as new); none is missing, and no row comes from a message that was never acknowledged twice. The
//! table counts the writes of each row too: rows written more than once show the sink's
//! at-least-once delivery the deduplication absorbed.
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

fn config(pg_port: u16, redis_port: u16, mqtt_port: u16) -> String {
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
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_write_every_acknowledged_message_once_across_sigkill() {
    let (Some(pg), Some(redis), Some(mosquitto)) = (
        servers::postgres(),
        servers::redis(),
        servers::mosquitto(20),
    ) else {
        return;
    };
    let far = far_subscriber(mosquitto.port).await;
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
    std::fs::write(&config_file, config(pg.port, redis.port, mosquitto.port)).unwrap();
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
    // Everything acknowledged reaches every target (the last broker keeps running meanwhile).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !targets.have(&acked) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(broker);
    targets.check(&acked, shared.sent.load(Ordering::Relaxed));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sequence numbers a subscriber of the remote Mosquitto received, with how often.
type Far = Arc<Mutex<BTreeMap<u64, u32>>>;

async fn far_subscriber(port: u16) -> Far {
    let far: Far = Arc::default();
    let mut sub = connect(port, "far", true, None).await;
    subscribe(&sub, "far/#", QoS::ExactlyOnce).await;
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
