//! Durable storage for layers that must survive a crash (SAFE's log).
//!
//! Layers stay sans-IO: they never open files themselves but ask their
//! [`Context`](crate::Context) for a [`LogFile`] from the stack's
//! [`Storage`]. Real stacks use [`FsStorage`] (files, `fsync`); tests and the
//! simulator use [`MemStorage`], whose [`MemStorage::crash`] throws away what
//! was written but not synced, optionally leaving a torn tail, as a power
//! failure would.
//!
//! A log file is an append-only byte string plus an atomic `replace` for
//! compaction; the record format is the layer's business.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One append-only log file.
pub trait LogFile: Send {
    /// The whole file as it is now (synced or not).
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Appends `data` (not yet durable).
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (`fsync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Replaces the whole file by `data`, atomically and durably: after a
    /// crash the file holds either the old contents or `data`.
    fn replace(&mut self, data: &[u8]) -> io::Result<()>;
    /// Where the file is, for messages.
    fn describe(&self) -> String;
}

/// Opens log files by directory and name.
pub trait Storage: Send + Sync {
    /// Opens (creating it and `dir` if missing) the log `name` in `dir`, for
    /// exclusive use by the caller.
    fn open(&self, dir: &str, name: &str) -> io::Result<Box<dyn LogFile>>;
}

/// Files on the local file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

impl Storage for FsStorage {
    fn open(&self, dir: &str, name: &str) -> io::Result<Box<dyn LogFile>> {
        fs::create_dir_all(dir)?;
        let path = Path::new(dir).join(name);
        let file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        // Two processes appending to one log would interleave records.
        if let Err(e) = file.try_lock() {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("{} is in use by another process ({e})", path.display())));
        }
        Ok(Box::new(FsLog { path, file }))
    }
}

struct FsLog {
    path: PathBuf,
    file: File,
}

impl LogFile for FsLog {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        File::open(&self.path)?.read_to_end(&mut data)?;
        Ok(data)
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn replace(&mut self, data: &[u8]) -> io::Result<()> {
        let tmp = self.path.with_extension("compact");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().read(true).append(true).open(&self.path)?;
        file.try_lock().map_err(|e| io::Error::other(format!("relocking {}: {e}", self.path.display())))?;
        self.file = file;
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// What became of the unsynced tail of each file at a [`MemStorage::crash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashTail {
    /// Lost entirely.
    Lost,
    /// Its first `n` bytes reached the disk (a torn write), at most all of it.
    Torn(usize),
}

#[derive(Debug, Default)]
struct MemFile {
    durable: Vec<u8>,
    pending: Vec<u8>,
    open: bool,
}

/// In-memory files shared by every clone: one "disk". Files outlive the
/// stacks that wrote them, so a restarted member finds its log.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    files: Arc<Mutex<HashMap<String, MemFile>>>,
}

impl MemStorage {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn key(dir: &str, name: &str) -> String {
        format!("{dir}/{name}")
    }

    /// A power failure: every file keeps only its synced bytes plus what
    /// `tail` says of the rest, and is closed.
    pub fn crash(&self, tail: CrashTail) {
        for f in self.files.lock().expect("storage lock").values_mut() {
            let pending = std::mem::take(&mut f.pending);
            if let CrashTail::Torn(n) = tail {
                f.durable.extend_from_slice(&pending[..n.min(pending.len())]);
            }
            f.open = false;
        }
    }

    /// The bytes of `dir/name` that would survive a crash now.
    pub fn durable(&self, dir: &str, name: &str) -> Option<Vec<u8>> {
        self.files.lock().expect("storage lock").get(&Self::key(dir, name)).map(|f| f.durable.clone())
    }

    /// Overwrites `dir/name` (as damage between runs would), durable at once.
    pub fn set(&self, dir: &str, name: &str, data: Vec<u8>) {
        let mut files = self.files.lock().expect("storage lock");
        let f = files.entry(Self::key(dir, name)).or_default();
        f.durable = data;
        f.pending.clear();
    }
}

impl Storage for MemStorage {
    fn open(&self, dir: &str, name: &str) -> io::Result<Box<dyn LogFile>> {
        let key = Self::key(dir, name);
        let mut files = self.files.lock().expect("storage lock");
        let f = files.entry(key.clone()).or_default();
        if f.open {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("{key} is in use")));
        }
        f.open = true;
        Ok(Box::new(MemLog { files: self.files.clone(), key }))
    }
}

struct MemLog {
    files: Arc<Mutex<HashMap<String, MemFile>>>,
    key: String,
}

impl MemLog {
    fn with<T>(&self, f: impl FnOnce(&mut MemFile) -> T) -> io::Result<T> {
        let mut files = self.files.lock().expect("storage lock");
        match files.get_mut(&self.key) {
            // A crash closed the file under a stack that is still running
            // (the simulator drops the stack right after): refuse quietly.
            Some(file) if file.open => Ok(f(file)),
            _ => Err(io::Error::new(io::ErrorKind::NotConnected, format!("{} was closed by a crash", self.key))),
        }
    }
}

impl Drop for MemLog {
    fn drop(&mut self) {
        if let Some(f) = self.files.lock().expect("storage lock").get_mut(&self.key) {
            f.open = false;
        }
    }
}

impl LogFile for MemLog {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        self.with(|f| [f.durable.as_slice(), f.pending.as_slice()].concat())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.with(|f| f.pending.extend_from_slice(data))
    }

    fn sync(&mut self) -> io::Result<()> {
        self.with(|f| {
            let pending = std::mem::take(&mut f.pending);
            f.durable.extend_from_slice(&pending);
        })
    }

    fn replace(&mut self, data: &[u8]) -> io::Result<()> {
        self.with(|f| {
            f.durable = data.to_vec();
            f.pending.clear();
        })
    }

    fn describe(&self) -> String {
        format!("mem:{}", self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_crash_keeps_synced_bytes_and_a_torn_prefix() {
        let disk = MemStorage::new();
        let mut log = disk.open("d", "g.log").unwrap();
        log.append(b"abc").unwrap();
        log.sync().unwrap();
        log.append(b"defgh").unwrap();
        assert_eq!(log.read_all().unwrap(), b"abcdefgh");
        assert!(disk.open("d", "g.log").is_err(), "one writer at a time");
        disk.crash(CrashTail::Torn(2));
        assert!(log.append(b"x").is_err(), "a crashed stack writes nothing more");
        drop(log);
        let mut log = disk.open("d", "g.log").unwrap();
        assert_eq!(log.read_all().unwrap(), b"abcde");
        log.append(b"zz").unwrap();
        disk.crash(CrashTail::Lost);
        drop(log);
        assert_eq!(disk.durable("d", "g.log").unwrap(), b"abcde");
    }

    #[test]
    fn fs_log_appends_syncs_replaces_and_locks() {
        let dir = std::env::temp_dir().join(format!("strata-storage-{}", std::process::id()));
        let d = dir.to_str().unwrap();
        let mut log = FsStorage.open(d, "g.log").unwrap();
        log.append(b"one").unwrap();
        log.sync().unwrap();
        assert!(FsStorage.open(d, "g.log").is_err(), "locked while open");
        log.replace(b"two").unwrap();
        log.append(b"+").unwrap();
        assert_eq!(log.read_all().unwrap(), b"two+");
        drop(log);
        let mut again = FsStorage.open(d, "g.log").unwrap();
        assert_eq!(again.read_all().unwrap(), b"two+");
        drop(again);
        fs::remove_dir_all(&dir).unwrap();
    }
}
