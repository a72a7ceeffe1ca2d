//! Kafka sources: every partition of a Kafka topic read from the offsets the source stored
//! (from the start the first time), each record published into the broker through the
//! source's session (`$source/<name>`) and durable before the source's offsets move past it.
//! The offsets are a file in the data directory (`sources/<name>.offsets`), written and
//! fsynced on a blocking thread after each fetched batch is durable here: a crash re-reads
//! what was published after the last save, never skips a record — at least once. Each message
//! carries the record's place as user properties (`kafka-topic`, `kafka-partition`,
//! `kafka-offset`) for consumers that deduplicate.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keelmq_rules::template::Template;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::broker::local::{LocalClient, LocalError, LocalPublish};
use crate::broker::metrics::{SinkStats, SinkStatus};
use crate::broker::{Broker, Metrics};
use crate::codec::QoS;
use crate::config::SourceSpec;
use crate::protocol::admission::SOURCE_CLIENT_ID_PREFIX;
use crate::rules::consumer::pause;

/// At most this many bytes per fetch of one partition.
const FETCH_BYTES: i32 = 1 << 20;
/// How long a fetch waits for records.
const FETCH_WAIT_MS: i32 = 200;

/// Next offset to read, by partition.
type Offsets = BTreeMap<i32, i64>;

/// Runs a Kafka source until `stop` says so or the broker shuts down.
pub async fn run(
    broker: Broker,
    spec: SourceSpec,
    stats: Arc<SinkStats>,
    mut stop: watch::Receiver<bool>,
) {
    let local_topic = match Template::parse(&spec.local_topic) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(source = %spec.name, error = %e, "source not started");
            return;
        }
    };
    let file = broker
        .config()
        .data_dir
        .join("sources")
        .join(format!("{}.offsets", spec.name));
    let source = KafkaSource {
        client: broker.local_client(format!("{SOURCE_CLIENT_ID_PREFIX}{}", spec.name)),
        spec: &spec,
        local_topic,
        stats: &stats,
        file,
    };
    let mut wait = Duration::from_millis(spec.retry.initial_ms);
    while !*stop.borrow() {
        match source.read(&mut stop).await {
            Ok(()) => return,
            Err(e) => {
                if stats.disconnected(1, &e) {
                    tracing::warn!(source = %spec.name, error = %e, "Kafka source cannot read; retrying");
                }
            }
        }
        if pause(&mut stop, wait).await {
            return;
        }
        wait = (wait * 2).min(Duration::from_millis(spec.retry.max_ms));
    }
}

struct KafkaSource<'a> {
    client: LocalClient,
    spec: &'a SourceSpec,
    local_topic: Template,
    stats: &'a SinkStats,
    file: PathBuf,
}

impl KafkaSource<'_> {
    /// Connects and reads until stopped (`Ok`) or something fails (`Err`, tried again).
    async fn read(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let topic = self.spec.topic.clone().unwrap_or_default();
        let partitions = self.partitions(&topic).await?;
        self.stats.set_status(SinkStatus::Connected, "");
        let mut offsets = load(self.file.clone()).await?;
        for (p, client) in &partitions {
            if !offsets.contains_key(p) {
                let first = client
                    .get_offset(OffsetAt::Earliest)
                    .await
                    .map_err(|e| e.to_string())?;
                offsets.insert(*p, first);
            }
        }
        loop {
            let mut moved = false;
            for (p, client) in &partitions {
                let from = offsets.get(p).copied().unwrap_or(0);
                let fetched = tokio::select! {
                    f = client.fetch_records(from, 1..FETCH_BYTES, FETCH_WAIT_MS) => f,
                    _ = stop.changed() => return Ok(()),
                };
                let (records, _high) = fetched.map_err(|e| format!("{topic}/{p}: {e}"))?;
                for r in records.into_iter().filter(|r| r.offset >= from) {
                    let next = r.offset + 1;
                    self.publish(&topic, *p, r)
                        .await
                        .map_err(|e| e.to_string())?;
                    offsets.insert(*p, next);
                    moved = true;
                }
            }
            if moved {
                save(self.file.clone(), offsets.clone()).await?;
            }
            if *stop.borrow() {
                return Ok(());
            }
        }
    }

    /// The partition clients of `topic`.
    async fn partitions(&self, topic: &str) -> Result<Vec<(i32, PartitionClient)>, String> {
        let bootstrap: Vec<String> = self
            .spec
            .bootstrap
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        let backoff = rskafka::BackoffConfig {
            deadline: Some(Duration::from_millis(self.spec.request_timeout_ms)),
            ..Default::default()
        };
        let client = ClientBuilder::new(bootstrap)
            .client_id(format!("keelmq-{}", self.spec.name))
            .backoff_config(backoff)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let topics = client.list_topics().await.map_err(|e| e.to_string())?;
        let Some(t) = topics.into_iter().find(|t| t.name == topic) else {
            return Err(format!("no topic `{topic}` on the Kafka cluster"));
        };
        let mut out = Vec::new();
        for p in t.partitions {
            let c = client
                .partition_client(topic, p, UnknownTopicHandling::Error)
                .await
                .map_err(|e| e.to_string())?;
            out.push((p, c));
        }
        Ok(out)
    }

    /// Publishes one record here; returns once it is durable.
    async fn publish(
        &self,
        topic: &str,
        partition: i32,
        r: rskafka::record::RecordAndOffset,
    ) -> Result<(), LocalError> {
        Metrics::add(&self.stats.matched, 1);
        let value = r.record.value.unwrap_or_default();
        let text = |b: &[u8]| Value::String(String::from_utf8_lossy(b).into_owned());
        let headers: Map<String, Value> = r
            .record
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        let mut fields = Map::new();
        fields.insert("topic".into(), json!(topic));
        fields.insert("partition".into(), json!(partition));
        fields.insert("offset".into(), json!(r.offset));
        fields.insert(
            "key".into(),
            r.record.key.as_deref().map_or(Value::Null, text),
        );
        fields.insert("payload".into(), text(&value));
        fields.insert("headers".into(), Value::Object(headers));
        let local_topic = self.local_topic.render(&fields);
        let qos = QoS::from_u8(self.spec.qos.unwrap_or(1)).unwrap_or(QoS::AtLeastOnce);
        let mut p = LocalPublish::new(local_topic.clone(), value, qos);
        p.properties.user_properties = vec![
            ("kafka-topic".into(), topic.to_string()),
            ("kafka-partition".into(), partition.to_string()),
            ("kafka-offset".into(), r.offset.to_string()),
        ];
        match self.client.publish(p).await {
            Ok(_) => Metrics::add(&self.stats.success, 1),
            Err(LocalError::InvalidTopic) => {
                Metrics::add(&self.stats.dropped, 1);
                tracing::warn!(source = %self.spec.name, topic = %local_topic,
                    "the local topic is not a topic name; record skipped");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Reads the stored offsets (none yet: empty), on a blocking thread.
async fn load(file: PathBuf) -> Result<Offsets, String> {
    let read = tokio::task::spawn_blocking(move || match std::fs::read_to_string(&file) {
        Ok(text) => serde_json::from_str::<BTreeMap<String, i64>>(&text)
            .map_err(|e| format!("{}: {e}", file.display()))
            .map(|m| {
                m.into_iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
                    .collect()
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Offsets::new()),
        Err(e) => Err(format!("{}: {e}", file.display())),
    });
    read.await.map_err(|e| e.to_string())?
}

/// Replaces the stored offsets durably (write, fsync, rename, fsync the directory), on a
/// blocking thread.
async fn save(file: PathBuf, offsets: Offsets) -> Result<(), String> {
    let write = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let dir = file.parent().map(PathBuf::from).unwrap_or_default();
        std::fs::create_dir_all(&dir)?;
        let by_name: BTreeMap<String, i64> = offsets
            .into_iter()
            .map(|(p, o)| (p.to_string(), o))
            .collect();
        let tmp = file.with_extension("offsets.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(
            serde_json::to_string(&by_name)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        f.sync_all()?;
        std::fs::rename(&tmp, &file)?;
        std::fs::File::open(&dir)?.sync_all()
    });
    write
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("saving Kafka offsets: {e}"))
}
