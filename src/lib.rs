//! # KeelMQ
//!
//! An MQTT 3.1 / 3.1.1 / 5.0 broker whose acknowledgements mean the data is on disk.
//!
//! # Layout
//!
//! - [`codec`]: pure, synchronous encode/decode of every MQTT packet of every version, with
//!   v5 properties and reason codes. Decoding never panics and names the spec clause it rejects.
//! - [`session`]: the I/O-free session state machine (queue, in-flight window, QoS 2 states,
//!   deliveries recovered paged out until the session resumes).
//! - [`router`]: the subscription trie with shared groups, and the retained-message trie.
//! - [`protocol`]: protocol policy without I/O — CONNECT admission and the typed refusals
//!   ([`protocol::Refusal`]: reason code, spec clause, metrics label) a connection answers with.
//! - [`broker`]: shared broker state (session registry, router, retained store, metrics), the
//!   per-connection task ([`broker::connection`]) and the background tasks (expiry, wills, `$SYS`).
//! - [`transport`]: listeners producing byte streams (TCP now), each with its [`transport::ConnInfo`].
//! - [`hooks`]: where features plug in — `Authenticator`, `Authorizer` (swappable at run time)
//!   and the event sink — each with an allow-all default, each called at one place.
//! - [`server`]: starting and stopping a whole broker.
//! - [`config`]: the TOML configuration with its defaults and validation.
//! - [`persistence`]: the only code that talks to the WAL and the store: records, the durable
//!   image (bodies only until checkpointed; wills waiting for their delay), commits and
//!   pipelined waits that acknowledgements wait for, checkpoints, recovery, paging queued
//!   bodies back in from the store.
//! - [`inspect`]: `keelmq inspect`, a read-only verifier of a data directory.
//! - [`client`]: a minimal MQTT client over the codec; [`verify`]: `keelmq verify`, a
//!   crash-consistency checker for any broker (SIGKILL and restart, count lost/duplicated).
//!   [`bench`]: `keelmq bench conn|sub|pub`, a load generator for any broker (rates, latency
//!   percentiles, lost and duplicated counts).
//! - `keelmq-wal` (crate in `wal/`): the write-ahead log with group commit and recycled
//!   segments.
//! - `keelmq-storage` (crate in `storage/`): the LSM state store (RocksDB) behind a `Store` trait.
//!
//! ARCHITECTURE.md describes the data flow and the durability contract as built.

#[cfg(feature = "broker")]
pub mod bench;
#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "broker")]
pub mod client;
pub mod codec;
pub mod config;
#[cfg(feature = "broker")]
pub mod hooks;
#[cfg(feature = "broker")]
pub mod inspect;
#[cfg(feature = "broker")]
pub mod persistence;
pub mod protocol;
pub mod router;
#[cfg(feature = "broker")]
pub mod server;
pub mod session;
#[cfg(feature = "broker")]
pub mod transport;
#[cfg(feature = "broker")]
pub mod verify;
