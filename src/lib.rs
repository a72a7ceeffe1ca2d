//! # KeelMQ
//!
//! An MQTT 3.1 / 3.1.1 / 5.0 broker whose acknowledgements mean the data is on disk.
//!
//! # Layout
//!
//! Bottom up: codec → session / router → protocol → broker → transport, with persistence under
//! the broker and the hooks beside it.
//!
//! - [`codec`] (crate `keelmq-codec` in `codec/`, no tokio, no RocksDB): pure, synchronous
//!   encode/decode of every MQTT packet of every version, with v5 properties and reason codes.
//!   Decoding never panics and names the spec clause it rejects.
//! - [`session`]: the I/O-free session state machine (queue, in-flight window, QoS 2 states,
//!   a backlog beyond 2,048 durable deliveries — or an offline session's — paged out, its
//!   bodies on disk, paged in by batches; packet ids up to u32 for broker-internal readers).
//! - [`router`]: the subscription trie with shared groups, and the retained-message trie.
//! - [`protocol`]: protocol policy without I/O — CONNECT admission, PUBLISH checks, topic
//!   aliases, the pending-acknowledgement FIFO, and the typed refusals ([`protocol::Refusal`]:
//!   reason code, spec clause, metrics label) a connection answers with.
//! - [`broker`]: shared broker state (session registry, router, retained store, metrics), the
//!   per-connection task ([`broker::connection`]), the in-process client
//!   ([`broker::local::LocalClient`]), the registry of publishers waiting for
//!   `ack = "delivered"` sinks, and the background tasks (expiry, wills, `$SYS`).
//! - [`transport`]: the `[[listeners]]` — TCP, TLS ([`transport::tls`], rustls), WebSocket and
//!   secure WebSocket ([`transport::ws`]), optional PROXY header — each connection a byte stream
//!   with its [`transport::ConnInfo`].
//! - [`hooks`]: where features plug in — `Authenticator`, `Authorizer` (swappable at run time),
//!   `PublishRules` (the inline rules) and the event sink — each with an allow-all (or empty)
//!   default, each called at one place.
//! - [`auth`]: the `[auth]` chain behind the `Authenticator` hook (password file; EMQX's
//!   chain semantics, per-address failure delays, hashing on blocking threads); the file
//!   formats and hashes live in `keelmq-auth` (crate in `auth/`, no tokio, no RocksDB), which
//!   `keelmq passwd` uses too.
//! - [`api`]: the operations surface on axum (`[api]`, port 18083 by default): the HTTP
//!   management API on EMQX's v5 paths (clients, subscriptions, publish, retained, rules,
//!   sinks, `/durability`), API keys and the admin login, and Prometheus metrics
//!   (`/metrics`). It reads the broker through snapshots ([`broker`]'s admin views) and
//!   atomic counters, and changes it through the same calls a client or the rule engine uses.
//! - [`reload`]: hot reload (SIGHUP, `POST /api/v5/configs/reload`) and run-time changes of
//!   the ACL, the password file and the sinks — everything checked before anything changes.
//! - [`server`]: starting and stopping a whole broker.
//! - [`config`] (crate `keelmq-config` in `config/`): the TOML configuration with its defaults
//!   and validation.
//! - [`persistence`]: the only code that talks to the WAL and the store: records and the
//!   journal that builds them, the durable image (bodies only until checkpointed; wills waiting
//!   for their delay), commits and pipelined waits that acknowledgements wait for, checkpoints,
//!   recovery, paging queued bodies back in from the store, and `keelmq inspect`
//!   ([`persistence::inspect`]), a read-only verifier of a data directory.
//! - `keelmq-wal` (crate in `wal/`): the write-ahead log with group commit and recycled
//!   segments.
//! - `keelmq-storage` (crate in `storage/`): the LSM state store (RocksDB) behind a `Store` trait.
//! - `keelmq-tools` (crate in `tools/`, codec only): a minimal MQTT client, `keelmq bench` (a
//!   load generator for any broker) and `keelmq verify` (a crash-consistency checker for any
//!   broker); the `keelmq` binary (`src/main.rs`) serves them as subcommands.
//! - [`rules`]: the rule engine — topic rules inline on the publish path (their outputs in the
//!   message's own commit, through [`hooks::PublishRules`]) or as durable consumer sessions
//!   (exactly once through output marks logged with each republish), event rules on the event
//!   sink (`$events/…`, best effort); republish and console actions, EMQX's per-rule metrics,
//!   changes at run time. Its language, EMQX rule SQL and `${…}` templates
//!   (parser, printer, evaluator), is `keelmq-rules` (crate in `rules/`, no tokio, no RocksDB).
//! - [`bridges`]: data bridges — each sink (`[[sinks]]`: HTTP, PostgreSQL, Redis, Kafka, MQTT)
//!   reads its topics and the topic rules that name it through durable sessions of its own
//!   (`$sink/<name>/…`), writes batches with retries that never give up, and acknowledges a
//!   delivery only once the target has it; refusals go to a dead-letter topic. Sources
//!   (`[[sources]]`: MQTT, Kafka) publish another system's messages in through
//!   `$source/<name>`.
//!
//! ARCHITECTURE.md describes the data flow and the durability contract as built.

pub mod api;
pub mod auth;
pub mod bridges;
pub mod broker;
pub mod hooks;
pub mod persistence;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod rules;
pub mod server;
pub mod session;
pub mod transport;

pub use keelmq_codec as codec;
pub use keelmq_config as config;
