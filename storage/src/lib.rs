//! `keelmq-storage`: KeelMQ's LSM state store.
//!
//! The broker's write-ahead log (`keelmq-wal`) is the source of truth for everything
//! acknowledged since the last checkpoint; this store holds the state as of that checkpoint.
//! It is written only in checkpoint batches, with RocksDB's own WAL disabled, each carrying
//! the WAL sequence number it covers (`applied_seq`); a batch is flushed to SST files (with
//! wait, atomically across column families) before [`Store::write_checkpoint`] returns, and
//! [`Store::persisted_applied_seq`] reads the number back from what was persisted. Only then
//! may the broker delete WAL segments up to it.
//!
//! The store is generic bytes: the broker's persistence layer owns the key and value
//! encodings (documented in `src/persistence/` and ARCHITECTURE.md). [`Store`] is a trait so
//! that a pure-Rust backend can be added for edge builds; [`RocksStore`] is the one
//! implementation.
//!
//! # Memory
//! Bounded by [`StoreOptions`]: a shared block cache (default 64 MiB) and per column family
//! write buffers (default 16 MiB, at most 2 each). Checkpoints flush memtables, so write buffers
//! rarely fill between them.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, FlushOptions, IteratorMode, Options,
    WriteBatch, WriteOptions, DB,
};

/// The column families ("tables") of the state store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Persistent sessions: client id → session record.
    Sessions,
    /// Subscriptions: client id, filter → options.
    Subscriptions,
    /// Message bodies referenced by queues: message id → message.
    Messages,
    /// Per-session outbound deliveries (queued and in flight, with their QoS 2 state).
    Queues,
    /// Inbound QoS 2 packet ids awaiting PUBREL: client id, packet id → ().
    Inbound,
    /// Retained messages: topic → message.
    Retained,
    /// Metadata: `applied_seq`, format version.
    Meta,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Sessions,
        Table::Subscriptions,
        Table::Messages,
        Table::Queues,
        Table::Inbound,
        Table::Retained,
        Table::Meta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Subscriptions => "subscriptions",
            Table::Messages => "messages",
            Table::Queues => "queues",
            Table::Inbound => "inbound",
            Table::Retained => "retained",
            Table::Meta => "meta",
        }
    }
}

/// Key of the checkpointed WAL sequence number in [`Table::Meta`] (8 bytes, little-endian).
pub const APPLIED_SEQ_KEY: &[u8] = b"applied_seq";

/// One change of a checkpoint: put `value` at `key`, or delete `key` when `value` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: Table,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Errors of the store, naming the operation and the directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state store {path}: {op}: {source}")]
    Rocks {
        op: &'static str,
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("state store {path}: {what}")]
    Corrupt { path: PathBuf, what: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What [`Store::scan`] calls for each entry: key, value; an error stops the scan.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// The state store interface the broker's persistence layer uses.
pub trait Store: Send + Sync {
    /// The `applied_seq` of the last completed checkpoint, read from persisted data; 0 if none.
    fn persisted_applied_seq(&self) -> Result<u64>;

    /// Applies `changes` and `applied_seq` in one atomic batch (RocksDB WAL disabled), then
    /// flushes every column family with wait. When this returns, the checkpoint survives a
    /// crash or power loss.
    fn write_checkpoint(&self, changes: Vec<Change>, applied_seq: u64) -> Result<()>;

    /// Applies `changes` and `applied_seq` in one atomic batch like
    /// [`Self::write_checkpoint`], but does not wait for a flush: readers see it at once, and
    /// it survives a crash only once a later flush (atomic across tables) persisted it. A
    /// crash before that leaves the store at an earlier checkpoint, so the caller must keep
    /// the WAL records it covers (recovery writes its replay this way).
    fn write_unflushed(&self, changes: Vec<Change>, applied_seq: u64) -> Result<()> {
        self.write_checkpoint(changes, applied_seq)
    }

    /// Calls `visit` for every entry of `table` in key order.
    fn scan(&self, table: Table, visit: &mut Visitor<'_>) -> Result<()>;

    /// The values of `keys` in `table` (`None` where absent), in the order of `keys`: the
    /// read of state paged out of memory (offline queues' message bodies). Blocking.
    fn get_many(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Number of entries in `table` (a full scan; for inspection).
    fn count(&self, table: Table) -> Result<u64> {
        let mut n = 0;
        self.scan(table, &mut |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }
}

/// Memory settings of [`RocksStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Shared LRU block cache for reads, in bytes.
    pub block_cache_bytes: usize,
    /// Memtable size per column family, in bytes.
    pub write_buffer_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 16 << 20,
        }
    }
}

/// The RocksDB implementation of [`Store`].
pub struct RocksStore {
    db: DB,
    path: PathBuf,
}

impl RocksStore {
    /// Opens (creating if needed) the store in `path`.
    pub fn open(path: &Path, options: StoreOptions) -> Result<RocksStore> {
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(&cache);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // With RocksDB's WAL disabled, a flush must persist every column family together or a
        // crash between two flushes could leave them at different checkpoints.
        db_opts.set_atomic_flush(true);
        db_opts.set_max_open_files(256);
        let cfs = Table::ALL.iter().map(|t| {
            let mut cf = Options::default();
            cf.set_write_buffer_size(options.write_buffer_bytes);
            cf.set_max_write_buffer_number(2);
            cf.set_block_based_table_factory(&block);
            ColumnFamilyDescriptor::new(t.name(), cf)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|source| Error::Rocks {
            op: "open",
            path: path.to_owned(),
            source,
        })?;
        Ok(RocksStore {
            db,
            path: path.to_owned(),
        })
    }

    /// Opens an existing store without changing it (for inspection; works while no broker
    /// holds it open).
    pub fn open_read_only(path: &Path) -> Result<RocksStore> {
        let opts = Options::default();
        let names = Table::ALL.iter().map(|t| t.name());
        let db = DB::open_cf_for_read_only(&opts, path, names, false).map_err(|source| {
            Error::Rocks {
                op: "open read-only",
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(RocksStore {
            db,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, table: Table) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(table.name())
            .ok_or_else(|| Error::Corrupt {
                path: self.path.clone(),
                what: format!("column family {} is missing", table.name()),
            })
    }

    fn rocks(&self, op: &'static str) -> impl FnOnce(rocksdb::Error) -> Error + '_ {
        move |source| Error::Rocks {
            op,
            path: self.path.clone(),
            source,
        }
    }
}

impl Store for RocksStore {
    fn persisted_applied_seq(&self) -> Result<u64> {
        let meta = self.cf(Table::Meta)?;
        match self
            .db
            .get_cf(meta, APPLIED_SEQ_KEY)
            .map_err(self.rocks("read applied_seq"))?
        {
            None => Ok(0),
            Some(v) => {
                let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| Error::Corrupt {
                    path: self.path.clone(),
                    what: format!("applied_seq has {} bytes, expected 8", v.len()),
                })?;
                Ok(u64::from_le_bytes(bytes))
            }
        }
    }

    fn write_checkpoint(&self, changes: Vec<Change>, applied_seq: u64) -> Result<()> {
        self.write_unflushed(changes, applied_seq)?;
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        let cfs: Vec<&rocksdb::ColumnFamily> = Table::ALL
            .iter()
            .map(|t| self.cf(*t))
            .collect::<Result<_>>()?;
        self.db
            .flush_cfs_opt(&cfs, &flush)
            .map_err(self.rocks("flush checkpoint"))?;
        Ok(())
    }

    fn write_unflushed(&self, changes: Vec<Change>, applied_seq: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        for change in changes {
            let cf = self.cf(change.table)?;
            match change.value {
                Some(v) => batch.put_cf(cf, &change.key, v),
                None => batch.delete_cf(cf, &change.key),
            }
        }
        batch.put_cf(
            self.cf(Table::Meta)?,
            APPLIED_SEQ_KEY,
            applied_seq.to_le_bytes(),
        );
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        self.db
            .write_opt(batch, &write)
            .map_err(self.rocks("write checkpoint"))?;
        Ok(())
    }

    fn scan(&self, table: Table, visit: &mut Visitor<'_>) -> Result<()> {
        let cf = self.cf(table)?;
        // A full scan (recovery, inspection) reads every block once: it must not evict the
        // block cache's working set, nor grow it.
        let mut read = rocksdb::ReadOptions::default();
        read.fill_cache(false);
        for item in self.db.iterator_cf_opt(cf, read, IteratorMode::Start) {
            let (k, v) = item.map_err(self.rocks("scan"))?;
            visit(&k, &v)?;
        }
        Ok(())
    }

    fn get_many(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(table)?;
        self.db
            .batched_multi_get_cf(cf, keys, false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(self.rocks("read")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("keelmq-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn checkpoint_survives_reopen_without_rocksdb_wal() {
        let dir = temp_dir("reopen");
        {
            let store = RocksStore::open(&dir, StoreOptions::default()).unwrap();
            assert_eq!(store.persisted_applied_seq().unwrap(), 0);
            let changes = vec![
                Change {
                    table: Table::Sessions,
                    key: b"c1".to_vec(),
                    value: Some(b"s1".to_vec()),
                },
                Change {
                    table: Table::Retained,
                    key: b"a/b".to_vec(),
                    value: Some(b"r".to_vec()),
                },
            ];
            store.write_checkpoint(changes, 41).unwrap();
            let changes = vec![
                Change {
                    table: Table::Retained,
                    key: b"a/b".to_vec(),
                    value: None,
                },
                Change {
                    table: Table::Queues,
                    key: b"q".to_vec(),
                    value: Some(vec![1]),
                },
            ];
            store.write_checkpoint(changes, 42).unwrap();
            // Dropped without a clean close of anything but the handle.
        }
        let store = RocksStore::open(&dir, StoreOptions::default()).unwrap();
        assert_eq!(store.persisted_applied_seq().unwrap(), 42);
        assert_eq!(store.count(Table::Sessions).unwrap(), 1);
        assert_eq!(store.count(Table::Retained).unwrap(), 0);
        let mut seen = Vec::new();
        store
            .scan(Table::Queues, &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![(b"q".to_vec(), vec![1])]);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A checkpoint written and flushed survives the process being killed: the child writes,
    /// reports, and is SIGKILLed; the parent reopens.
    #[test]
    fn checkpoint_survives_sigkill() {
        const CHILD: &str = "KEELMQ_STORAGE_CHILD_DIR";
        if let Some(dir) = std::env::var_os(CHILD) {
            let store = RocksStore::open(Path::new(&dir), StoreOptions::default()).unwrap();
            for seq in 1..=u64::MAX {
                let change = Change {
                    table: Table::Meta,
                    key: b"last".to_vec(),
                    value: Some(seq.to_le_bytes().to_vec()),
                };
                store.write_checkpoint(vec![change], seq).unwrap();
                println!("{seq}");
            }
            return;
        }
        let dir = temp_dir("sigkill");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::checkpoint_survives_sigkill",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let stdout = child.stdout.take().unwrap();
        let mut reported = 0u64;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Ok(n) = line.trim().parse::<u64>() {
                reported = n;
                if n >= 20 {
                    break;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let store = RocksStore::open(&dir, StoreOptions::default()).unwrap();
        let applied = store.persisted_applied_seq().unwrap();
        assert!(
            applied >= reported,
            "persisted {applied} < reported {reported}"
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// An in-memory [`Store`] for tests: a checkpoint is atomic and "persisted" as soon as
/// [`Store::write_checkpoint`] returns, and a clone shares the same data, so a test can drop a
/// broker's persistence layer (a simulated crash) and reopen over what was checkpointed.
#[derive(Clone, Default)]
pub struct MemStore {
    data: std::sync::Arc<std::sync::Mutex<MemData>>,
}

#[derive(Default)]
struct MemData {
    tables: std::collections::BTreeMap<(Table, Vec<u8>), Vec<u8>>,
    applied_seq: u64,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// An independent copy of the current contents (a clone shares them).
    pub fn deep_copy(&self) -> MemStore {
        let d = self.lock();
        let copy = MemData {
            tables: d.tables.clone(),
            applied_seq: d.applied_seq,
        };
        MemStore {
            data: std::sync::Arc::new(std::sync::Mutex::new(copy)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemData> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemStore {
    fn persisted_applied_seq(&self) -> Result<u64> {
        Ok(self.lock().applied_seq)
    }

    fn write_checkpoint(&self, changes: Vec<Change>, applied_seq: u64) -> Result<()> {
        let mut d = self.lock();
        for c in changes {
            match c.value {
                Some(v) => {
                    d.tables.insert((c.table, c.key), v);
                }
                None => {
                    d.tables.remove(&(c.table, c.key));
                }
            }
        }
        d.applied_seq = applied_seq;
        Ok(())
    }

    fn scan(&self, table: Table, visit: &mut Visitor<'_>) -> Result<()> {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = self
            .lock()
            .tables
            .range((table, Vec::new())..)
            .take_while(|((t, _), _)| *t == table)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in entries {
            visit(&k, &v)?;
        }
        Ok(())
    }

    fn get_many(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let d = self.lock();
        Ok(keys
            .iter()
            .map(|k| d.tables.get(&(table, k.clone())).cloned())
            .collect())
    }
}
