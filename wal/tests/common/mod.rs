//! Helpers shared by the integration tests: a seedable RNG, payloads that check themselves,
//! unique temporary directories.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use keelmq_wal::{Record, Wal};

/// SplitMix64: deterministic from its seed, which is all a replayable test needs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 if n == 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// The seed for a randomized test: `KEELMQ_WAL_SEED` if set, else one derived from the clock.
/// Printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("KEELMQ_WAL_SEED") {
        Ok(s) => s.parse().expect("KEELMQ_WAL_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5EED),
    };
    eprintln!("{test}: seed {seed} (replay with KEELMQ_WAL_SEED={seed})");
    seed
}

/// True when the long variants should run.
pub fn soak() -> bool {
    std::env::var("KEELMQ_WAL_SOAK").is_ok_and(|v| v == "1")
}

/// A payload whose content is a function of `id`, so a reader can verify it independently of
/// the WAL's own checksums: 8 bytes of id, then a length-varying pattern.
pub fn payload_for(id: u64) -> Vec<u8> {
    let len = 8 + (id.wrapping_mul(7919) % 300) as usize;
    let mut out = id.to_le_bytes().to_vec();
    let mut x = id ^ 0xA5A5_A5A5_5A5A_5A5A;
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push((x >> 56) as u8);
    }
    out
}

/// The id a payload made by [`payload_for`] carries, if it is intact.
pub fn check_payload(payload: &[u8]) -> Option<u64> {
    let id = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    (payload_for(id) == payload).then_some(id)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "keelmq-wal-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every record from `from`, panicking on any read error.
/// Appends the record `payload_for(id)` (type 0) and waits until it is durable.
pub fn append_durable(wal: &Wal, id: u64) {
    wal.append(0, payload_for(id))
        .unwrap()
        .durable
        .wait()
        .unwrap();
}

pub fn read_all(wal: &Wal, from: u64) -> Vec<Record> {
    wal.read_from(from)
        .expect("read_from")
        .collect::<Result<Vec<_>, _>>()
        .expect("reading records")
}
