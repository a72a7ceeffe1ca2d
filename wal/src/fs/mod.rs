//! The small file-system interface the WAL is written against.
//!
//! Everything the log does to the disk goes through [`Fs`] and [`FsFile`], so tests can swap
//! the real file system ([`StdFs`]) for [`MemFs`], which remembers what has been synced and can
//! simulate a crash, fsync failures, a full disk and bit flips. The interface is the minimum the
//! log needs: positional reads and writes, `set_len`, `fdatasync`, create/list/remove/rename and
//! a directory fsync.

mod mem;
mod std_fs;

pub use mem::{CrashMode, MemFs, TraceOp};
pub use std_fs::StdFs;

use std::io;
use std::path::{Path, PathBuf};

/// A file system.
pub trait Fs: Send + Sync + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Full paths of the regular files directly inside `dir`.
    fn list_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Creates a new, empty file, failing if it exists. Open for reading and writing.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Removes a file. The removal is durable only after [`Fs::sync_dir`] on its directory.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to` (both in the same directory; `to` must not exist), atomically:
    /// after a crash the file has one name or the other, never both or neither. The new
    /// name is durable only after [`Fs::sync_dir`] on the directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (files created or removed in it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file.
#[allow(clippy::len_without_is_empty)] // a file has no useful "is empty" question here
pub trait FsFile: Send {
    /// Reads at `offset`; returns 0 at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes at `offset`; may write fewer bytes than offered (like `pwrite`).
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Current length.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// `fdatasync`: makes the contents (and the size) durable.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// Writes all of `buf` at `offset`, looping over short writes. On error, some prefix of `buf`
/// may have been written; the caller decides how to undo it.
pub(crate) fn write_all_at(
    file: &mut dyn FsFile,
    mut buf: &[u8],
    mut offset: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write_at(buf, offset) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the whole file into memory.
pub(crate) fn read_all(file: &dyn FsFile) -> io::Result<Vec<u8>> {
    let len = file.len()?;
    let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to read"))?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}
