//! The Kafka sink (`rskafka`, pure Rust): records produced with acks=all, the message id as
//! the `keelmq-id` header (and the item's key for a rule's later outputs), key, value and
//! topic from templates, the partition from a template or Kafka's default partitioner
//! (murmur2 of the key; no key: partition 0). At least once: a batch whose answer is lost is
//! produced again, and a consumer deduplicates on the header.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use keelmq_rules::eval::Env;
use keelmq_rules::template::Template;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use tokio::sync::Mutex;

use super::target::{Item, Outcome, Target, WriteFuture};
use crate::config::SinkSpec;

/// The record header that carries the item's key (the message id, `id-index` for a rule's
/// later outputs of one message).
pub const ID_HEADER: &str = "keelmq-id";

pub struct KafkaTarget {
    bootstrap: Vec<String>,
    topic: Template,
    key: Option<Template>,
    /// `None`: the message's payload as it is (a rule's output: as JSON).
    value: Option<Template>,
    partition: Option<Template>,
    timeout: Duration,
    state: Mutex<Option<Connection>>,
}

/// A client and its partition clients, by topic.
struct Connection {
    client: Client,
    partitions: HashMap<String, Vec<Arc<PartitionClient>>>,
}

fn template(field: &str, text: &str) -> Result<Template, String> {
    Template::parse(text).map_err(|e| format!("{field}: {e}"))
}

impl KafkaTarget {
    pub fn open(spec: &SinkSpec) -> Result<KafkaTarget, String> {
        let bootstrap = spec
            .bootstrap
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(KafkaTarget {
            bootstrap,
            topic: template("topic", spec.topic.as_deref().unwrap_or_default())?,
            key: spec
                .key
                .as_deref()
                .map(|k| template("key", k))
                .transpose()?,
            value: spec
                .value
                .as_deref()
                .map(|v| template("value", v))
                .transpose()?,
            partition: spec
                .partition
                .as_deref()
                .map(|p| template("partition", p))
                .transpose()?,
            timeout: Duration::from_millis(spec.request_timeout_ms),
            state: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<Connection, String> {
        let backoff = rskafka::BackoffConfig {
            deadline: Some(self.timeout),
            ..Default::default()
        };
        let client = ClientBuilder::new(self.bootstrap.clone())
            .client_id("keelmq")
            .backoff_config(backoff)
            .build()
            .await
            .map_err(|e| format!("{}: {e}", self.bootstrap.join(",")))?;
        Ok(Connection {
            client,
            partitions: HashMap::new(),
        })
    }

    /// The record of an item and the partition it goes to (`None`: by the key).
    fn record(&self, item: &Item) -> (String, Option<i32>, rskafka::record::Record) {
        let mut env = Env::new(item.fields.clone());
        let topic = self.topic.render_with(&mut env);
        let key = self
            .key
            .as_ref()
            .map(|k| k.render_with(&mut env).into_bytes());
        let value = match (&self.value, &item.raw) {
            (Some(v), _) => v.render_with(&mut env).into_bytes(),
            (None, Some(raw)) => raw.to_vec(),
            (None, None) => serde_json::Value::Object(item.fields.clone())
                .to_string()
                .into_bytes(),
        };
        let partition = self
            .partition
            .as_ref()
            .and_then(|p| p.render_with(&mut env).trim().parse().ok());
        let mut headers = BTreeMap::new();
        headers.insert(ID_HEADER.to_string(), item.key().into_bytes());
        let record = rskafka::record::Record {
            key,
            value: Some(value),
            headers,
            timestamp: now(),
        };
        (topic, partition, record)
    }

    async fn write_all(&self, items: &[Item]) -> Result<Vec<Outcome>, String> {
        let mut state = self.state.lock().await;
        if state.is_none() {
            *state = Some(self.connect().await?);
        }
        let Some(conn) = state.as_mut() else {
            return Err("not connected".into());
        };
        // By (topic, partition), in item order.
        let mut batches: BTreeMap<(String, i32), Vec<rskafka::record::Record>> = BTreeMap::new();
        let mut outcomes = vec![Outcome::Done; items.len()];
        for (i, item) in items.iter().enumerate() {
            let (topic, partition, record) = self.record(item);
            let count = match partitions(conn, &topic).await {
                Ok(p) => p.len(),
                Err(e) => {
                    outcomes[i] = Outcome::Retry(e);
                    continue;
                }
            };
            let partition = match partition {
                Some(p) if p >= 0 && (p as usize) < count => p,
                Some(p) => {
                    outcomes[i] =
                        Outcome::Refused(format!("partition {p} of `{topic}` (it has {count})"));
                    continue;
                }
                None => default_partition(record.key.as_deref(), count),
            };
            batches.entry((topic, partition)).or_default().push(record);
        }
        for ((topic, partition), records) in batches {
            let client = partitions(conn, &topic).await?[partition as usize].clone();
            if let Err(e) = client.produce(records, Compression::NoCompression).await {
                *state = None;
                return Err(format!("producing to {topic}/{partition}: {e}"));
            }
        }
        Ok(outcomes)
    }
}

/// The record timestamp: now (chrono's clock feature is not built).
fn now() -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    let ms = i64::try_from(crate::persistence::convert::wall_clock_ms()).unwrap_or(0);
    rskafka::chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The partition clients of `topic` (looked up once per connection); an unknown topic is an
/// error (the sink does not create topics).
async fn partitions<'a>(
    conn: &'a mut Connection,
    topic: &str,
) -> Result<&'a Vec<Arc<PartitionClient>>, String> {
    if !conn.partitions.contains_key(topic) {
        let topics = conn.client.list_topics().await.map_err(|e| e.to_string())?;
        let Some(t) = topics.into_iter().find(|t| t.name == topic) else {
            return Err(format!("no topic `{topic}` on the Kafka cluster"));
        };
        let mut clients = Vec::new();
        for p in t.partitions {
            let c = conn
                .client
                .partition_client(topic, p, UnknownTopicHandling::Error)
                .await
                .map_err(|e| e.to_string())?;
            clients.push(Arc::new(c));
        }
        conn.partitions.insert(topic.to_string(), clients);
    }
    conn.partitions
        .get(topic)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("topic `{topic}` has no partitions"))
}

/// Kafka's default partitioner: murmur2 of the key, positive, modulo the partition count.
fn default_partition(key: Option<&[u8]>, count: usize) -> i32 {
    match key {
        Some(k) if count > 0 => ((murmur2(k) & 0x7fff_ffff) as usize % count) as i32,
        _ => 0,
    }
}

/// MurmurHash2 as Kafka's Java client computes it (seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

impl Target for KafkaTarget {
    fn write<'a>(&'a self, items: &'a [Item]) -> WriteFuture<'a> {
        Box::pin(self.write_all(items))
    }

    fn reads(&self) -> Option<Vec<String>> {
        let all = [
            Some(&self.topic),
            self.key.as_ref(),
            self.value.as_ref(),
            self.partition.as_ref(),
        ];
        Some(super::target::roots(all.into_iter().flatten()))
    }

    fn reset(&self) {
        if let Ok(mut state) = self.state.try_lock() {
            *state = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_partitioner() {
        // Values of org.apache.kafka.common.utils.Utils.murmur2 (Kafka's own tests).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(default_partition(None, 3), 0);
    }
}
