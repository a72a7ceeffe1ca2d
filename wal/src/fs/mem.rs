//! An in-memory, fault-injecting file system for crash tests.
//!
//! It models what a power loss can do to a POSIX file system, per file and per directory:
//! - every file keeps the contents it had at its last `sync_data` (the *durable* image) plus
//!   the ordered list of writes and `set_len`s made since (the *pending* operations);
//! - creations, removals and renames are durable only after `sync_dir` on their directory
//!   (a crash keeps each rename whole: the file has its old name or its new one);
//! - [`MemFs::crash`] throws away what was not durable according to a [`CrashMode`], and makes
//!   every open handle fail from then on (the process that held it is gone).
//!
//! Faults: [`MemFs::fail_sync_after`] makes a future fsync fail with `EIO`;
//! [`MemFs::set_space_limit`] makes writes past a total size fail with `ENOSPC` (after a short
//! write, as a real disk does); [`MemFs::flip_bit`] damages bytes already on "disk".
//! [`MemFs::start_trace`] records every mutating operation so a test can replay any prefix of a
//! run ([`MemFs::replay`]) and crash at each write/fsync boundary.
//!
//! Directories themselves are assumed durable once created: the WAL creates its directory
//! once, before anything that must survive a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Fs, FsFile};

/// Granularity at which [`CrashMode::KeepRandomPart`] decides what reached the disk.
const SECTOR_LEN: u64 = 512;

/// What a simulated crash keeps of the data that was not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Nothing unsynced survives: every file reverts to its last synced contents and every
    /// directory to its last synced entries.
    DropUnsynced,
    /// A random part survives: each 512-byte piece of each unsynced write (and each unsynced
    /// `set_len`) independently reached the disk or not, which models pages written back out
    /// of order; a random prefix of each directory's unsynced creations and removals survives
    /// (file systems journal metadata in order).
    KeepRandomPart,
    /// All unsynced operations survive except that each file's last write is torn at a random
    /// byte; the rest of it is lost, zero-filled or garbage (the size was updated but the data
    /// was not). Directory changes since the last directory sync are lost.
    TearLastWrite,
}

/// One mutating operation, as recorded by [`MemFs::start_trace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceOp {
    /// A directory was created.
    CreateDir(PathBuf),
    /// A file was created (empty).
    Create(PathBuf),
    /// Bytes were written.
    Write {
        /// File written.
        path: PathBuf,
        /// Offset of the write.
        offset: u64,
        /// The bytes that were actually written.
        bytes: Vec<u8>,
    },
    /// A file was truncated or extended.
    SetLen {
        /// File resized.
        path: PathBuf,
        /// New length.
        len: u64,
    },
    /// A file was synced.
    SyncFile(PathBuf),
    /// A directory was synced.
    SyncDir(PathBuf),
    /// A file was removed.
    Remove(PathBuf),
    /// A file was renamed.
    Rename {
        /// Old name.
        from: PathBuf,
        /// New name.
        to: PathBuf,
    },
}

#[derive(Debug, Clone)]
enum PendingOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<PendingOp>,
}

#[derive(Debug, Clone)]
enum DirOp {
    Create(PathBuf, u64),
    Remove(PathBuf),
    Rename(PathBuf, PathBuf, u64),
}

impl DirOp {
    /// The directory whose sync makes this operation durable.
    fn dir(&self) -> PathBuf {
        match self {
            DirOp::Create(p, _) | DirOp::Remove(p) | DirOp::Rename(_, p, _) => parent(p),
        }
    }

    fn apply(&self, entries: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Create(path, ino) => {
                entries.insert(path.clone(), *ino);
            }
            DirOp::Remove(path) => {
                entries.remove(path);
            }
            DirOp::Rename(from, to, ino) => {
                entries.remove(from);
                entries.insert(to.clone(), *ino);
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct State {
    generation: u64,
    next_inode: u64,
    inodes: HashMap<u64, Inode>,
    dirs: BTreeSet<PathBuf>,
    entries: BTreeMap<PathBuf, u64>,
    durable_entries: BTreeMap<PathBuf, u64>,
    pending_dir_ops: Vec<DirOp>,
    fail_sync_in: Option<u64>,
    space_limit: Option<u64>,
    trace: Option<Vec<TraceOp>>,
}

/// The in-memory file system. Cloning gives another handle to the *same* file system; use
/// [`MemFs::deep_copy`] for an independent copy.
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
}

fn crashed_error() -> io::Error {
    io::Error::other("MemFs: handle invalidated by a simulated crash")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("MemFs: {} not found", path.display()),
    )
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// SplitMix64: small, seedable, good enough to pick crash outcomes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

fn apply_write(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let offset = offset as usize;
    let end = offset + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset..end].copy_from_slice(bytes);
}

impl State {
    /// The file's current name (it may have been renamed since the handle was opened), for
    /// the trace; `opened_as` if it has none left.
    fn name_of(&self, ino: u64, opened_as: &Path) -> PathBuf {
        if self.entries.get(opened_as) == Some(&ino) {
            return opened_as.to_path_buf();
        }
        self.entries
            .iter()
            .find(|(_, i)| **i == ino)
            .map_or_else(|| opened_as.to_path_buf(), |(p, _)| p.clone())
    }

    fn record(&mut self, op: TraceOp) {
        if let Some(trace) = &mut self.trace {
            trace.push(op);
        }
    }

    fn used_bytes(&self) -> u64 {
        self.entries
            .values()
            .filter_map(|ino| self.inodes.get(ino))
            .map(|inode| inode.data.len() as u64)
            .sum()
    }

    fn take_sync_fault(&mut self) -> io::Result<()> {
        if let Some(n) = self.fail_sync_in {
            if n == 0 {
                self.fail_sync_in = None;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.fail_sync_in = Some(n - 1);
        }
        Ok(())
    }

    fn crash(&mut self, mode: CrashMode, seed: u64) {
        let mut rng = Rng(seed);
        let mut entries = self.durable_entries.clone();
        if mode == CrashMode::KeepRandomPart {
            let keep = rng.below(self.pending_dir_ops.len() as u64 + 1) as usize;
            for op in &self.pending_dir_ops[..keep] {
                op.apply(&mut entries);
            }
        }
        for inode in self.inodes.values_mut() {
            let mut data = inode.durable.clone();
            let pending = std::mem::take(&mut inode.pending);
            match mode {
                CrashMode::DropUnsynced => {}
                CrashMode::KeepRandomPart => {
                    for op in &pending {
                        match op {
                            PendingOp::SetLen(len) => {
                                if rng.coin() {
                                    data.resize(*len as usize, 0);
                                }
                            }
                            PendingOp::Write { offset, bytes } => {
                                let mut pos = *offset;
                                let end = offset + bytes.len() as u64;
                                while pos < end {
                                    let piece_end = ((pos / SECTOR_LEN + 1) * SECTOR_LEN).min(end);
                                    if rng.coin() {
                                        let from = (pos - offset) as usize;
                                        let to = (piece_end - offset) as usize;
                                        apply_write(&mut data, pos, &bytes[from..to]);
                                    }
                                    pos = piece_end;
                                }
                            }
                        }
                    }
                }
                CrashMode::TearLastWrite => {
                    let last_write = pending
                        .iter()
                        .rposition(|op| matches!(op, PendingOp::Write { .. }));
                    for (i, op) in pending.iter().enumerate() {
                        match op {
                            PendingOp::SetLen(len) => data.resize(*len as usize, 0),
                            PendingOp::Write { offset, bytes } if Some(i) != last_write => {
                                apply_write(&mut data, *offset, bytes)
                            }
                            PendingOp::Write { offset, bytes } => {
                                let cut = rng.below(bytes.len() as u64) as usize;
                                apply_write(&mut data, *offset, &bytes[..cut]);
                                let rest_at = offset + cut as u64;
                                match rng.below(3) {
                                    0 => {}
                                    1 => {
                                        apply_write(&mut data, rest_at, &vec![0; bytes.len() - cut])
                                    }
                                    _ => {
                                        let garbage: Vec<u8> =
                                            (cut..bytes.len()).map(|_| rng.next() as u8).collect();
                                        apply_write(&mut data, rest_at, &garbage);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            inode.durable = data.clone();
            inode.data = data;
        }
        self.entries = entries.clone();
        self.durable_entries = entries;
        self.pending_dir_ops.clear();
        self.generation += 1;
    }
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> MemFs {
        MemFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (in a test) must not hide the state from the report.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An independent copy of the whole file system, pending (unsynced) state included. Open
    /// handles are not copied.
    pub fn deep_copy(&self) -> MemFs {
        let mut state = self.lock().clone();
        state.generation += 1;
        MemFs {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Simulates a power loss: keeps only what `mode` says survived (`seed` picks the random
    /// parts) and invalidates every open handle. Injected faults are cleared.
    pub fn crash(&self, mode: CrashMode, seed: u64) {
        let mut state = self.lock();
        state.crash(mode, seed);
        state.fail_sync_in = None;
        state.space_limit = None;
    }

    /// Makes the sync (file or directory) after the next `n` succeed-able ones fail with
    /// `EIO`, once. `fail_sync_after(0)` fails the very next sync.
    pub fn fail_sync_after(&self, n: u64) {
        self.lock().fail_sync_in = Some(n);
    }

    /// Limits the total size of all files; a write that would exceed it is cut short and the
    /// next one fails with `ENOSPC`. `None` removes the limit.
    pub fn set_space_limit(&self, bytes: Option<u64>) {
        self.lock().space_limit = bytes;
    }

    /// Total size of all live files.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// Flips one bit of a file, in its current and its durable contents (media damage).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut state = self.lock();
        let ino = *state.entries.get(path).ok_or_else(|| not_found(path))?;
        let inode = state.inodes.entry(ino).or_default();
        let at = offset as usize;
        if at >= inode.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "flip_bit past end of file",
            ));
        }
        inode.data[at] ^= 1 << (bit % 8);
        if at < inode.durable.len() {
            inode.durable[at] ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// Current contents of a file.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        let ino = state.entries.get(path).ok_or_else(|| not_found(path))?;
        Ok(state
            .inodes
            .get(ino)
            .map(|i| i.data.clone())
            .unwrap_or_default())
    }

    /// Creates (or replaces) a file with `bytes`, durably, directory entry included. For tests
    /// and fuzzing that start from prepared disk contents.
    pub fn write_file_durable(&self, path: &Path, bytes: &[u8]) {
        let mut state = self.lock();
        for ancestor in path
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
        {
            state.dirs.insert(ancestor.to_path_buf());
        }
        let ino = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(
            ino,
            Inode {
                data: bytes.to_vec(),
                durable: bytes.to_vec(),
                pending: Vec::new(),
            },
        );
        state.entries.insert(path.to_path_buf(), ino);
        state.durable_entries.insert(path.to_path_buf(), ino);
    }

    /// Paths of the live files directly inside `dir`, sorted.
    pub fn files(&self, dir: &Path) -> Vec<PathBuf> {
        self.lock()
            .entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect()
    }

    /// Starts recording every mutating operation (clearing any earlier recording).
    pub fn start_trace(&self) {
        self.lock().trace = Some(Vec::new());
    }

    /// Number of operations recorded so far.
    pub fn trace_len(&self) -> usize {
        self.lock().trace.as_ref().map_or(0, Vec::len)
    }

    /// The operations recorded so far.
    pub fn trace(&self) -> Vec<TraceOp> {
        self.lock().trace.clone().unwrap_or_default()
    }

    /// A fresh file system on which `ops` have been performed, in order, with the same
    /// synced/unsynced state they left on the original.
    pub fn replay(ops: &[TraceOp]) -> io::Result<MemFs> {
        let fs = MemFs::new();
        for op in ops {
            fs.apply(op)?;
        }
        Ok(fs)
    }

    /// Performs one recorded operation (see [`MemFs::replay`]).
    pub fn apply(&self, op: &TraceOp) -> io::Result<()> {
        match op {
            TraceOp::CreateDir(dir) => self.create_dir_all(dir),
            TraceOp::Create(path) => self.create_new(path).map(drop),
            TraceOp::Write {
                path,
                offset,
                bytes,
            } => {
                let mut file = self.open(path)?;
                super::write_all_at(file.as_mut(), bytes, *offset)
            }
            TraceOp::SetLen { path, len } => self.open(path)?.set_len(*len),
            TraceOp::SyncFile(path) => self.open(path)?.sync_data(),
            TraceOp::SyncDir(dir) => self.sync_dir(dir),
            TraceOp::Remove(path) => self.remove_file(path),
            TraceOp::Rename { from, to } => self.rename(from, to),
        }
    }
}

impl Fs for MemFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let mut created = false;
        for ancestor in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            created |= state.dirs.insert(ancestor.to_path_buf());
        }
        if created {
            state.record(TraceOp::CreateDir(dir.to_path_buf()));
        }
        Ok(())
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let state = self.lock();
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut state = self.lock();
        if !state.dirs.contains(&parent(path)) {
            return Err(not_found(&parent(path)));
        }
        if state.entries.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "MemFs: file exists",
            ));
        }
        let ino = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(ino, Inode::default());
        state.entries.insert(path.to_path_buf(), ino);
        state
            .pending_dir_ops
            .push(DirOp::Create(path.to_path_buf(), ino));
        state.record(TraceOp::Create(path.to_path_buf()));
        Ok(Box::new(MemFile {
            state: Arc::clone(&self.state),
            path: path.to_path_buf(),
            ino,
            generation: state.generation,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let state = self.lock();
        let ino = *state.entries.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(MemFile {
            state: Arc::clone(&self.state),
            path: path.to_path_buf(),
            ino,
            generation: state.generation,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.entries.remove(path).ok_or_else(|| not_found(path))?;
        state
            .pending_dir_ops
            .push(DirOp::Remove(path.to_path_buf()));
        state.record(TraceOp::Remove(path.to_path_buf()));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if parent(from) != parent(to) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "MemFs: rename across directories",
            ));
        }
        if state.entries.contains_key(to) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "MemFs: rename target exists",
            ));
        }
        let ino = state.entries.remove(from).ok_or_else(|| not_found(from))?;
        state.entries.insert(to.to_path_buf(), ino);
        state
            .pending_dir_ops
            .push(DirOp::Rename(from.to_path_buf(), to.to_path_buf(), ino));
        state.record(TraceOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        state.take_sync_fault()?;
        let ops = std::mem::take(&mut state.pending_dir_ops);
        let mut rest = Vec::new();
        for op in ops {
            if op.dir() != dir {
                rest.push(op);
                continue;
            }
            op.apply(&mut state.durable_entries);
        }
        state.pending_dir_ops = rest;
        state.record(TraceOp::SyncDir(dir.to_path_buf()));
        Ok(())
    }
}

struct MemFile {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    ino: u64,
    generation: u64,
}

impl MemFile {
    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation != self.generation {
            return Err(crashed_error());
        }
        Ok(state)
    }
}

impl FsFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.lock()?;
        let data = state
            .inodes
            .get(&self.ino)
            .map(|i| &i.data[..])
            .unwrap_or(&[]);
        let Some(src) = data.get(offset as usize..) else {
            return Ok(0);
        };
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let mut state = self.lock()?;
        let mut n = buf.len();
        if let Some(limit) = state.space_limit {
            let len = state
                .inodes
                .get(&self.ino)
                .map_or(0, |i| i.data.len() as u64);
            let growth = (offset + buf.len() as u64).saturating_sub(len);
            let available = limit.saturating_sub(state.used_bytes());
            if growth > available {
                n -= (growth - available).min(n as u64) as usize;
                if n == 0 {
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
            }
        }
        let bytes = buf[..n].to_vec();
        let inode = state.inodes.entry(self.ino).or_default();
        apply_write(&mut inode.data, offset, &bytes);
        inode.pending.push(PendingOp::Write {
            offset,
            bytes: bytes.clone(),
        });
        let path = state.name_of(self.ino, &self.path);
        state.record(TraceOp::Write {
            path,
            offset,
            bytes,
        });
        Ok(n)
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.lock()?;
        Ok(state
            .inodes
            .get(&self.ino)
            .map_or(0, |i| i.data.len() as u64))
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut state = self.lock()?;
        let inode = state.inodes.entry(self.ino).or_default();
        inode.data.resize(len as usize, 0);
        inode.pending.push(PendingOp::SetLen(len));
        let path = state.name_of(self.ino, &self.path);
        state.record(TraceOp::SetLen { path, len });
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.lock()?;
        state.take_sync_fault()?;
        let inode = state.inodes.entry(self.ino).or_default();
        inode.durable = inode.data.clone();
        inode.pending.clear();
        let path = state.name_of(self.ino, &self.path);
        state.record(TraceOp::SyncFile(path));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/d")
    }

    #[test]
    fn unsynced_data_and_entries_are_dropped_by_a_crash() {
        let fs = MemFs::new();
        fs.create_dir_all(&dir()).unwrap();
        let a = dir().join("a");
        let mut f = fs.create_new(&a).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        f.write_at(b" world", 5).unwrap();
        let b = dir().join("b");
        fs.create_new(&b).unwrap().sync_data().unwrap();
        fs.crash(CrashMode::DropUnsynced, 1);
        assert_eq!(fs.read_file(&a).unwrap(), b"hello");
        assert!(fs.read_file(&b).is_err());
        assert!(
            f.write_at(b"x", 0).is_err(),
            "old handles die with the crash"
        );
    }

    #[test]
    fn removal_is_undone_without_a_directory_sync() {
        let fs = MemFs::new();
        fs.create_dir_all(&dir()).unwrap();
        let a = dir().join("a");
        fs.write_file_durable(&a, b"data");
        fs.remove_file(&a).unwrap();
        fs.crash(CrashMode::TearLastWrite, 2);
        assert_eq!(fs.read_file(&a).unwrap(), b"data");
        fs.remove_file(&a).unwrap();
        fs.sync_dir(&dir()).unwrap();
        fs.crash(CrashMode::DropUnsynced, 3);
        assert!(fs.read_file(&a).is_err());
    }

    #[test]
    fn a_rename_is_atomic_and_durable_only_after_a_directory_sync() {
        let (a, b) = (dir().join("a"), dir().join("b"));
        for mode in [
            CrashMode::DropUnsynced,
            CrashMode::KeepRandomPart,
            CrashMode::TearLastWrite,
        ] {
            for seed in 0..20 {
                let fs = MemFs::new();
                fs.write_file_durable(&a, b"data");
                fs.rename(&a, &b).unwrap();
                assert!(fs.read_file(&a).is_err());
                assert!(fs.rename(&b, &b).is_err(), "the target exists");
                fs.crash(mode, seed);
                let names: Vec<_> = [&a, &b]
                    .into_iter()
                    .filter(|p| fs.read_file(p).is_ok())
                    .collect();
                assert_eq!(names.len(), 1, "{mode:?}/{seed}: one name, not {names:?}");
                assert_eq!(fs.read_file(names[0]).unwrap(), b"data");
                if mode != CrashMode::KeepRandomPart {
                    assert_eq!(names[0], &a, "{mode:?}: unsynced rename survived");
                }
            }
        }
        let fs = MemFs::new();
        fs.write_file_durable(&a, b"data");
        fs.rename(&a, &b).unwrap();
        fs.sync_dir(&dir()).unwrap();
        fs.crash(CrashMode::DropUnsynced, 0);
        assert!(fs.read_file(&a).is_err());
        assert_eq!(fs.read_file(&b).unwrap(), b"data");
    }

    #[test]
    fn torn_write_keeps_a_prefix_of_the_last_write() {
        for seed in 0..50 {
            let fs = MemFs::new();
            fs.create_dir_all(&dir()).unwrap();
            let a = dir().join("a");
            fs.write_file_durable(&a, b"0123");
            let mut f = fs.open(&a).unwrap();
            f.write_at(b"4567", 4).unwrap();
            f.write_at(b"89ab", 8).unwrap();
            fs.crash(CrashMode::TearLastWrite, seed);
            let data = fs.read_file(&a).unwrap();
            assert!(data.starts_with(b"01234567"));
            assert!(data.len() <= 12);
            let torn = &data[8..];
            let kept = torn.iter().zip(b"89ab").take_while(|(x, y)| x == y).count();
            assert!(kept < 4, "the last write is never complete");
        }
    }

    #[test]
    fn sync_fault_fires_once_and_space_limit_short_writes() {
        let fs = MemFs::new();
        fs.create_dir_all(&dir()).unwrap();
        let mut f = fs.create_new(&dir().join("a")).unwrap();
        fs.fail_sync_after(1);
        f.sync_data().unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        f.sync_data().unwrap();
        fs.set_space_limit(Some(10));
        assert_eq!(f.write_at(&[1; 8], 0).unwrap(), 8);
        assert_eq!(f.write_at(&[1; 8], 8).unwrap(), 2);
        let err = f.write_at(&[1; 8], 10).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        f.write_at(&[2; 4], 0).unwrap();
    }

    #[test]
    fn replaying_a_trace_reproduces_the_state() {
        let fs = MemFs::new();
        fs.start_trace();
        fs.create_dir_all(&dir()).unwrap();
        let a = dir().join("a");
        let mut f = fs.create_new(&a).unwrap();
        f.write_at(b"abc", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        f.write_at(b"def", 3).unwrap();
        let copy = MemFs::replay(&fs.trace()).unwrap();
        assert_eq!(copy.read_file(&a).unwrap(), b"abcdef");
        copy.crash(CrashMode::DropUnsynced, 0);
        assert_eq!(copy.read_file(&a).unwrap(), b"abc");
        let early = MemFs::replay(&fs.trace()[..3]).unwrap();
        early.crash(CrashMode::DropUnsynced, 0);
        assert!(early.read_file(&a).is_err(), "entry was not synced yet");
    }
}
