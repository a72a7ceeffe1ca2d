//! # KeelMQ
//!
//! An MQTT 3.1 / 3.1.1 / 5.0 broker whose acknowledgements mean the data is on disk.
//!
//! # Layout
//!
//! - [`codec`]: pure, synchronous encode/decode of every MQTT packet of every version, with
//!   v5 properties and reason codes. Decoding never panics and names the spec clause it rejects.
//! - `keelmq-wal` (crate in `wal/`): the write-ahead log with group commit.
//! - `keelmq-storage` (crate in `storage/`): the LSM state store (RocksDB), filled in by the
//!   durability work.
//!
//! ARCHITECTURE.md describes the data flow and the durability contract as built.

pub mod broker;
pub mod codec;
pub mod config;
pub mod router;
pub mod server;
pub mod session;
pub mod transport;
