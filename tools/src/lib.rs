//! KeelMQ's tools for any MQTT broker, built on the codec alone (no broker, no RocksDB); the
//! `keelmq` binary serves them as subcommands.
//!
//! - [`client`]: a minimal MQTT client over the codec (connect, send, receive with a timeout).
//! - [`bench`]: `keelmq bench conn|sub|pub`, a load generator (rates, latency percentiles, lost
//!   and duplicated counts).
//! - [`verify`]: `keelmq verify`, a crash-consistency checker (SIGKILL and restart a broker,
//!   count lost and duplicated messages).

pub mod bench;
pub mod client;
pub mod verify;
pub mod ws;
