//! `keelmq-storage`: the LSM state store. The durable-broker issue puts RocksDB behind a `Store`
//! trait here; until then the crate is empty and nothing depends on it.
