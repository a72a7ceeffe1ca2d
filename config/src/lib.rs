//! Broker configuration: a TOML file in which every field has a default, so an empty file (or
//! none at all) is a working configuration. `keelmq.example.toml` at the repository root lists
//! every field with its default and meaning; keep the two in step.
//!
//! Unknown fields are refused (a misspelt limit must not silently fall back to its default), and
//! [`Config::validate`] names the field and the problem for every value out of range.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod api;
mod auth;
mod bridges;
mod listeners;
mod rules;
pub use api::{ApiConfig, DEFAULT_API_BIND};
pub use auth::{
    AuthConfig, AuthenticatorSpec, AuthzConfig, DenyAction, HttpSpec, JwtFrom, JwtSpec, LdapSpec,
    NoMatch,
};
pub use bridges::{RetrySpec, SinkAck, SinkKind, SinkSpec, SourceKind, SourceSpec, SourceTopic};
pub use listeners::{ListenerKind, ListenerSpec, PeerCertAs, TlsVersion};
pub use rules::{ActionSpec, RepublishSpec, RuleSpec, TemplateOr, REPUBLISH_PROPERTIES};

/// The largest `mqtt.max_packet_size` the configuration accepts: one commit of a PUBLISH is
/// one write-ahead-log record of at most 64 MiB, and carries the payload up to twice (the
/// message and its retained copy) plus a queue entry per persistent subscriber. 16 MiB leaves
/// room for that, so that no acknowledged-size message can be refused by the log.
pub const MAX_DURABLE_PACKET_SIZE: u32 = 16 * 1024 * 1024;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The plain TCP listener used when `listeners` is empty.
    pub listener: ListenerConfig,
    /// `[[listeners]]`: every listener, of any kind (see [`ListenerSpec`]).
    pub listeners: Vec<ListenerSpec>,
    /// Directory for the write-ahead log and the state store.
    pub data_dir: PathBuf,
    pub mqtt: MqttConfig,
    pub limits: LimitsConfig,
    pub sys: SysConfig,
    pub storage: StorageConfig,
    /// `[auth]`: authentication.
    pub auth: AuthConfig,
    /// `[authz]`: authorization.
    pub authz: AuthzConfig,
    /// `[[rules]]`: rule SQL and its actions (see [`RuleSpec`]).
    pub rules: Vec<RuleSpec>,
    /// `[[sinks]]`: data bridges (see [`SinkSpec`]).
    pub sinks: Vec<SinkSpec>,
    /// `[[sources]]`: remote brokers whose messages enter this one (see [`SourceSpec`]).
    pub sources: Vec<SourceSpec>,
    /// `[api]`: the HTTP management API, Prometheus metrics and the dashboard.
    pub api: ApiConfig,
    /// `[runtime]`: the threads that serve connections.
    pub runtime: RuntimeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listener: ListenerConfig::default(),
            listeners: Vec::new(),
            data_dir: PathBuf::from("./data"),
            mqtt: MqttConfig::default(),
            limits: LimitsConfig::default(),
            sys: SysConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            authz: AuthzConfig::default(),
            rules: Vec::new(),
            sinks: Vec::new(),
            sources: Vec::new(),
            api: ApiConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// When an acknowledgement may be sent, relative to the disk.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Acknowledge only after fdatasync (the default, and KeelMQ's promise).
    Always,
    /// Acknowledge after the write; fdatasync at most `sync_interval_ms` later. A power loss can
    /// lose that window of acknowledged messages (a process crash cannot).
    Interval,
    /// Never fdatasync: for tests and benchmarks only.
    Never,
}

/// The write-ahead log and the state store (`data_dir/wal`, `data_dir/store`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub sync: SyncMode,
    /// With `sync = "interval"`: the longest time between a write and its fdatasync.
    pub sync_interval_ms: u64,
    /// WAL segment size; once a checkpoint covers a segment it is deleted or kept as a spare
    /// for reuse (`keelmq_wal::WalOptions::spare_segments`).
    pub wal_segment_bytes: u64,
    /// Niceness (-20..=19) the WAL writer thread asks for; every acknowledgement waits for it.
    /// Raising priority needs CAP_SYS_NICE or RLIMIT_NICE; without them it keeps its priority
    /// and logs why once. 0 keeps the default priority.
    pub wal_writer_nice: i32,
    /// Group commit: with other clients' records arriving, the WAL writer gathers records for
    /// up to this many microseconds before one fdatasync covers them all (no acknowledgement
    /// leaves before its fdatasync). Less CPU and disk work per message for at most this much
    /// more latency; 0 syncs each batch as soon as it is written.
    pub commit_window_us: u64,
    /// The commit window ends early once no record that needs an fdatasync has come for this
    /// many microseconds: every appender is then waiting for the batch (closed-loop clients
    /// with all their messages in flight), and holding it longer only delays them. 0 (or a
    /// value of at least `commit_window_us`): the window always runs its full length.
    pub commit_quiet_us: u64,
    /// Checkpoint at least this often when anything changed... (these two bound the WAL tail a
    /// restart replays, hence the recovery time)
    pub checkpoint_interval_ms: u64,
    /// ...or when the WAL grew by this much since the last checkpoint.
    pub checkpoint_wal_bytes: u64,
    /// RocksDB block cache for reads.
    pub block_cache_bytes: usize,
    /// RocksDB memtable per column family (at most 2 each).
    pub write_buffer_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sync: SyncMode::Always,
            sync_interval_ms: 10,
            wal_segment_bytes: 64 * 1024 * 1024,
            wal_writer_nice: DEFAULT_WAL_WRITER_NICE,
            commit_window_us: 5_000,
            commit_quiet_us: 1_500,
            checkpoint_interval_ms: 10_000,
            checkpoint_wal_bytes: 64 * 1024 * 1024,
            block_cache_bytes: 64 * 1024 * 1024,
            write_buffer_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address of the plain MQTT-over-TCP listener. Loopback only by default.
    pub bind: SocketAddr,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
        }
    }
}

/// Protocol behaviour and what CONNACK advertises.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Largest packet accepted from or sent to a client, in bytes (advertised to v5 clients as
    /// Maximum Packet Size). A larger inbound packet closes the connection with 0x95.
    pub max_packet_size: u32,
    /// How many unacknowledged inbound QoS 1/2 PUBLISH a client may have (v5 Receive Maximum).
    /// A v5 client that exceeds it is disconnected with 0x93.
    pub receive_maximum: u16,
    /// Outbound in-flight window for 3.x clients, which cannot state their own.
    pub max_inflight: u16,
    /// Topic Alias Maximum offered to v5 clients for their PUBLISH packets (0 disables).
    pub topic_alias_maximum: u16,
    /// Upper bound on a client's keep-alive, in seconds; a v5 client asking for more (or for 0)
    /// is told this value as Server Keep Alive. 0 means no upper bound.
    pub max_keep_alive_secs: u16,
    /// Seconds a new connection has to send CONNECT before it is closed.
    pub connect_timeout_secs: u64,
    /// Highest QoS accepted on PUBLISH (advertised as Maximum QoS).
    pub max_qos: u8,
    pub retain_available: bool,
    pub wildcard_subscription_available: bool,
    pub subscription_identifiers_available: bool,
    pub shared_subscription_available: bool,
    /// Upper bound on a v5 client's Session Expiry Interval (on CONNECT and on DISCONNECT),
    /// in seconds. The default, 7 days, keeps a client that asked for a session that never
    /// expires (0xFFFFFFFF) and never came back from holding its queue for ever; the CONNACK
    /// tells a v5 client the interval it got. `4294967295` lets sessions never expire.
    pub max_session_expiry_secs: u32,
    /// Session expiry applied to 3.x clients that connect with Clean Session = 0 (they cannot
    /// state one). `4294967295` means never.
    pub v3_session_expiry_secs: u32,
    /// Longest client identifier accepted, in bytes.
    pub max_client_id_len: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: 1024 * 1024,
            receive_maximum: 128,
            max_inflight: 32,
            topic_alias_maximum: 64,
            max_keep_alive_secs: 0,
            connect_timeout_secs: 10,
            max_qos: 2,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            max_session_expiry_secs: 7 * 24 * 3600,
            v3_session_expiry_secs: 7 * 24 * 3600,
            max_client_id_len: 65535,
        }
    }
}

/// Resource limits (DESIGN.md §4). Each states its overflow policy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections beyond this are refused: v5 CONNACK 0x97 Quota Exceeded, v3 CONNACK 3
    /// (Server unavailable), then the socket is closed.
    pub max_connections: usize,
    /// Sessions the broker holds, connected or not. A CONNECT that would create one more is
    /// refused (v5 CONNACK 0x97 Quota Exceeded, v3 CONNACK 3); resuming or taking over an
    /// existing session always works. Bounds what anonymous clients that leave persistent
    /// sessions behind can make the broker keep.
    pub max_sessions: usize,
    /// Sockets accepted that have not sent their CONNECT yet. Beyond it a new socket is
    /// closed at once (counted as refused), so that connections that never speak — or speak
    /// one byte at a time — cost nothing past this; each still has `mqtt.connect_timeout_secs`.
    pub max_pending_connections: usize,
    /// Messages waiting in one session's queue (not yet in flight). When the full queue
    /// belongs to a subscriber that is draining it (see `stalled_subscriber_ms`), a QoS 1/2
    /// message is refused whole, to every subscriber (v5 PUBACK or PUBREC 0x97), or its 3.x
    /// publisher is paused until there is room; a QoS 0 message pauses its publisher while
    /// that subscriber is connected. When it belongs to a stalled subscriber (connected or
    /// offline), that subscriber's copy is dropped and counted, and the publisher and the
    /// other subscribers go on. A message already queued is never dropped.
    pub max_queued_messages: usize,
    /// Bytes waiting in one session's queue — payload, topic and properties of each message
    /// (a large topic with an empty payload is not free); same policy as `max_queued_messages`.
    pub max_queued_bytes: usize,
    /// Bytes (as for `max_queued_bytes`) queued across all sessions; same policy, applied
    /// broker-wide.
    pub max_queued_bytes_total: usize,
    /// Retained messages kept. Beyond it, the retained copy of a message on a new topic is not
    /// stored (counted in metrics); the message itself is still delivered and acknowledged.
    /// Replacing or deleting an existing retained message always works.
    pub max_retained_messages: usize,
    /// Levels in a topic name or filter; more is refused (0x90 / 0x8F, or a disconnect for 3.x).
    pub max_topic_levels: usize,
    /// Subscriptions one session may hold; more are refused with SUBACK 0x97 (3.x: 0x80).
    pub max_subscriptions_per_client: usize,
    /// A subscriber that has taken nothing from its full queue for this many milliseconds —
    /// connected, or offline since longer (the broker's start counts as its last take) — is
    /// stalled: the QoS 1/2 copies that overflow its queue are dropped for it alone (counted),
    /// and QoS 0 ones too, instead of refusing or pausing their publishers, so one client that
    /// stops reading or never comes back slows nobody down for longer than this. 0: every
    /// offline subscriber is stalled, and QoS 0 overflow is dropped at once for all.
    pub stalled_subscriber_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_sessions: 1_000_000,
            max_pending_connections: 1024,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_queued_bytes_total: 1024 * 1024 * 1024,
            max_retained_messages: 1_000_000,
            max_topic_levels: 128,
            max_subscriptions_per_client: 1000,
            stalled_subscriber_ms: 1000,
        }
    }
}

/// `$SYS/broker/...` statistics.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SysConfig {
    /// Seconds between publications of the `$SYS` topics; 0 disables them.
    pub interval_secs: u64,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval_secs: 10 }
    }
}

/// The async runtime that serves connections, the API, rules and bridges (the WAL writer, the
/// checkpointer and the storage engine have threads of their own).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; 0 (the default) means one per core but one, at least one: the core left
    /// over runs the WAL writer's write and fdatasync and the storage engine's threads. Fewer
    /// workers also mean fewer cross-thread wake-ups per message at ordinary load.
    pub worker_threads: usize,
}

/// The most worker threads `runtime.worker_threads` accepts.
pub const MAX_WORKER_THREADS: usize = 1024;

impl RuntimeConfig {
    /// The worker thread count to start, given the machine's `cores`.
    pub fn workers(&self, cores: usize) -> usize {
        match self.worker_threads {
            0 => cores.saturating_sub(1).max(1),
            n => n,
        }
    }
}

/// A configuration problem, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    /// A field of one entry of a list (`listeners[i].field`, `rules[i].field`), or a file it
    /// names.
    #[error("config field `{field}`: {problem}")]
    Listener { field: String, problem: String },
}

/// `keelmq_wal::DEFAULT_WRITER_NICE`, spelled out: this crate does not depend on the WAL (the
/// fuzz targets build it without RocksDB). A test in the broker keeps the two equal.
const DEFAULT_WAL_WRITER_NICE: i32 = -10;

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; the error message names the offending key and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every value's range; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_mqtt()?;
        self.validate_limits()?;
        self.validate_listeners()?;
        self.validate_auth()?;
        rules::validate(&self.rules)?;
        bridges::validate(&self.sinks)?;
        bridges::validate_rule_sinks(&self.rules, &self.sinks)?;
        bridges::validate_sources(&self.sources)?;
        bridges::validate_rule_sources(&self.rules, &self.sources)?;
        self.api.validate()?;
        if self.runtime.worker_threads > MAX_WORKER_THREADS {
            return bad(
                "runtime.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0: one per core but one)"),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty");
        }
        self.validate_storage()
    }

    fn validate_mqtt(&self) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        if m.max_packet_size < 64 {
            return bad("mqtt.max_packet_size", "must be at least 64 bytes");
        }
        if m.max_packet_size > keelmq_codec::MAX_PACKET_SIZE_PROTOCOL {
            return bad(
                "mqtt.max_packet_size",
                "exceeds the protocol maximum of 268435460",
            );
        }
        if m.max_packet_size > MAX_DURABLE_PACKET_SIZE {
            return bad(
                "mqtt.max_packet_size",
                format!(
                    "{} exceeds {MAX_DURABLE_PACKET_SIZE}, the largest message the write-ahead \
                     log can commit with its retained copy and deliveries",
                    m.max_packet_size
                ),
            );
        }
        at_least_one(&[
            ("mqtt.receive_maximum", u64::from(m.receive_maximum)),
            ("mqtt.max_inflight", u64::from(m.max_inflight)),
            ("mqtt.connect_timeout_secs", m.connect_timeout_secs),
        ])?;
        if m.max_qos > 2 {
            return bad(
                "mqtt.max_qos",
                format!("{} is not a QoS (0, 1 or 2)", m.max_qos),
            );
        }
        if m.max_client_id_len == 0 || m.max_client_id_len > 65535 {
            return bad("mqtt.max_client_id_len", "must be between 1 and 65535");
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        at_least_one(&[
            ("limits.max_connections", l.max_connections as u64),
            (
                "limits.max_pending_connections",
                l.max_pending_connections as u64,
            ),
            ("limits.max_sessions", l.max_sessions as u64),
            ("limits.max_queued_messages", l.max_queued_messages as u64),
            ("limits.max_queued_bytes", l.max_queued_bytes as u64),
            ("limits.max_topic_levels", l.max_topic_levels as u64),
            (
                "limits.max_subscriptions_per_client",
                l.max_subscriptions_per_client as u64,
            ),
        ])?;
        if l.max_queued_bytes_total < l.max_queued_bytes {
            return bad(
                "limits.max_queued_bytes_total",
                "must be at least limits.max_queued_bytes",
            );
        }
        Ok(())
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        let st = &self.storage;
        if st.sync == SyncMode::Interval && st.sync_interval_ms == 0 {
            return bad(
                "storage.sync_interval_ms",
                "must be at least 1 with sync = \"interval\"",
            );
        }
        if st.wal_segment_bytes < 64 * 1024 {
            return bad("storage.wal_segment_bytes", "must be at least 65536");
        }
        if st.commit_window_us > 100_000 {
            return bad(
                "storage.commit_window_us",
                "must be at most 100000 (100 ms)",
            );
        }
        if st.commit_quiet_us > 100_000 {
            return bad("storage.commit_quiet_us", "must be at most 100000 (100 ms)");
        }
        if !(-20..=19).contains(&st.wal_writer_nice) {
            return bad("storage.wal_writer_nice", "must be between -20 and 19");
        }
        if st.checkpoint_interval_ms == 0 {
            return bad("storage.checkpoint_interval_ms", "must be at least 1");
        }
        if st.block_cache_bytes == 0 || st.write_buffer_bytes < 64 * 1024 {
            return bad(
                "storage.write_buffer_bytes",
                "must be at least 65536 (and the block cache non-zero)",
            );
        }
        Ok(())
    }
}

/// A configuration error naming `field`.
fn bad(field: &'static str, problem: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        field,
        problem: problem.into(),
    })
}

/// The first of `fields` that is 0, as an error naming it.
fn at_least_one(fields: &[(&'static str, u64)]) -> Result<(), ConfigError> {
    match fields.iter().find(|(_, value)| *value == 0) {
        Some((field, _)) => bad(field, "must be at least 1"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn example_config_is_the_default() {
        let text = include_str!("../../keelmq.example.toml");
        let parsed = Config::parse(text).unwrap();
        assert_eq!(
            parsed,
            Config::default(),
            "keelmq.example.toml must state the defaults"
        );
    }

    #[test]
    fn storage_section() {
        let c = Config::parse("[storage]\nsync = \"interval\"\nsync_interval_ms = 5\n").unwrap();
        assert_eq!(c.storage.sync, SyncMode::Interval);
        c.validate().unwrap();
        let e = Config::parse("[storage]\nsync = \"sometimes\"\n").unwrap_err();
        assert!(e.contains("sync"), "{e}");
        let c = Config::parse("[storage]\nwal_writer_nice = -25\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("storage.wal_writer_nice"), "{e}");
        let c = Config::parse("[storage]\ncommit_window_us = 100001\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("storage.commit_window_us"), "{e}");
        let c = Config::parse("[storage]\ncommit_window_us = 0\n").unwrap();
        assert!(c.validate().is_ok());
        let c = Config::parse("[storage]\ncommit_quiet_us = 100001\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("storage.commit_quiet_us"), "{e}");
    }

    #[test]
    fn runtime_section() {
        let c = Config::default();
        assert_eq!(c.runtime.workers(1), 1);
        assert_eq!(c.runtime.workers(2), 1);
        assert_eq!(c.runtime.workers(8), 7);
        let c = Config::parse("[runtime]\nworker_threads = 3\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.runtime.workers(2), 3);
        let c = Config::parse("[runtime]\nworker_threads = 5000\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("runtime.worker_threads"), "{e}");
        let e = Config::parse("[runtime]\nworkers = 2\n").unwrap_err();
        assert!(e.contains("workers"), "{e}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = Config::parse("[limits]\nmax_queued_mesages = 5\n").unwrap_err();
        assert!(e.contains("max_queued_mesages"), "{e}");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = Config::parse("[mqtt]\nmax_qos = \"two\"\n").unwrap_err();
        assert!(e.contains("max_qos"), "{e}");
        let e = Config::parse("[listener]\nbind = \"nowhere\"\n").unwrap_err();
        assert!(e.contains("bind"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_named() {
        let c = Config::parse("[mqtt]\nmax_qos = 3\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("mqtt.max_qos"), "{e}");
        let c = Config::parse("[limits]\nmax_queued_messages = 0\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("limits.max_queued_messages"), "{e}");
        // A packet the write-ahead log could not commit with its retained copy.
        let c = Config::parse("[mqtt]\nmax_packet_size = 20000000\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("mqtt.max_packet_size") && e.contains("16777216"),
            "{e}"
        );
        for field in ["max_sessions", "max_pending_connections"] {
            let c = Config::parse(&format!("[limits]\n{field} = 0\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("limits.{field}")), "{e}");
        }
    }
}
