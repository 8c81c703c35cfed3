//! Where the log's two files live: a small trait in the manner of redb's
//! `StorageBackend`, the real file implementation, and a wrapper that fails
//! on demand so that tests (this crate's and the server's) can prove the
//! log fails closed.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One file of the audit log (`audit.log` or `audit.head`).
///
/// The log calls these from several threads at once: appenders write at
/// the end of `audit.log` (one at a time) while the syncer thread syncs it.
/// Writes need not be durable until [`Storage::sync`]
/// returns `Ok`; a crash may lose or tear any write made since the last
/// successful sync, and recovery copes with that. An `Err` from any method
/// makes the log fail closed.
pub trait Storage: Send + Sync + 'static {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were
    /// read (0 at or past the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes all of `data` at `offset`, extending the file if needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Truncates (or extends with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes every completed write and `set_len` durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;

    /// A name for error messages (the path, for files).
    fn name(&self) -> String;
}

impl Storage for Box<dyn Storage> {
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        (**self).write_at(offset, data)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        (**self).sync()
    }
    fn name(&self) -> String {
        (**self).name()
    }
}

/// A [`Storage`] that is a regular file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
}

impl FileStorage {
    /// Opens `path` for reading and writing, creating it (mode 0600) if
    /// absent. Returns the storage and whether the file was created.
    pub fn open(path: &Path) -> io::Result<(Self, bool)> {
        let created = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => {
                return Ok((
                    Self {
                        file,
                        path: path.to_path_buf(),
                    },
                    true,
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok((
            Self {
                file,
                path: path.to_path_buf(),
            },
            created,
        ))
    }

    /// The open file.
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Storage for FileStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// A switch that makes [`Faulty`] storages fail. Clones share the switch.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<FaultState>);

#[derive(Debug, Default)]
struct FaultState {
    writes: AtomicBool,
    data_writes: AtomicBool,
    syncs: AtomicBool,
}

impl Faults {
    /// A switch with no faults on.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, `write_at` and `set_len` fail (`on`) or work again.
    pub fn fail_writes(&self, on: bool) {
        self.0.writes.store(on, Ordering::SeqCst);
    }

    /// From now on, `write_at` fails (`on`) or works again, while
    /// `set_len` keeps working (a full disk, say).
    pub fn fail_data_writes(&self, on: bool) {
        self.0.data_writes.store(on, Ordering::SeqCst);
    }

    /// From now on, `sync` fails (`on`) or works again.
    pub fn fail_syncs(&self, on: bool) {
        self.0.syncs.store(on, Ordering::SeqCst);
    }

    fn check(&self, flag: &AtomicBool, what: &str) -> io::Result<()> {
        if flag.load(Ordering::SeqCst) {
            Err(io::Error::other(format!("injected {what} failure")))
        } else {
            Ok(())
        }
    }
}

/// A [`Storage`] that fails when its [`Faults`] switch says so (reads
/// always work). For tests of failing closed.
#[derive(Debug)]
pub struct Faulty<S> {
    inner: S,
    faults: Faults,
}

impl<S: Storage> Faulty<S> {
    /// Wraps `inner`, failing as `faults` says.
    pub fn new(inner: S, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

impl<S: Storage> Storage for Faulty<S> {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults.check(&self.faults.0.writes, "write")?;
        self.faults.check(&self.faults.0.data_writes, "write")?;
        self.inner.write_at(offset, data)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check(&self.faults.0.writes, "write")?;
        self.inner.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        self.faults.check(&self.faults.0.syncs, "sync")?;
        self.inner.sync()
    }

    fn name(&self) -> String {
        self.inner.name()
    }
}

/// Reads a [`Storage`] sequentially from an offset (for `BufReader`).
pub(crate) struct StorageReader<'a, S: ?Sized> {
    storage: &'a S,
    offset: u64,
}

impl<'a, S: Storage + ?Sized> StorageReader<'a, S> {
    pub(crate) fn new(storage: &'a S) -> Self {
        Self { storage, offset: 0 }
    }
}

impl<S: Storage + ?Sized> io::Read for StorageReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.storage.read_at(self.offset, buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}
