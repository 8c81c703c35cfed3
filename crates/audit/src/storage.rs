//! Where the log's files live: a small trait for one file in the manner of
//! redb's `StorageBackend` and one for the directory that holds them, the
//! real implementations, and wrappers that fail on demand so that tests
//! (this crate's and the server's) can prove the log fails closed.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One file of the audit log (`audit.log`, `audit.head`, a sealed segment).
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
    dir_ops: AtomicBool,
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

    /// From now on, `sync` fails (`on`) or works again, of files and of
    /// the directory.
    pub fn fail_syncs(&self, on: bool) {
        self.0.syncs.store(on, Ordering::SeqCst);
    }

    /// From now on, the directory's renames and file creations fail (`on`)
    /// or work again (they fail too while writes fail).
    pub fn fail_dir_ops(&self, on: bool) {
        self.0.dir_ops.store(on, Ordering::SeqCst);
    }

    fn check(&self, flag: &AtomicBool, what: &str) -> io::Result<()> {
        if flag.load(Ordering::SeqCst) {
            Err(io::Error::other(format!("injected {what} failure")))
        } else {
            Ok(())
        }
    }
}

/// A [`Storage`] (or a [`Dir`], whose files it wraps in turn) that fails
/// when its [`Faults`] switch says so (reads always work). For tests of
/// failing closed.
#[derive(Debug)]
pub struct Faulty<S> {
    inner: S,
    faults: Faults,
}

impl<S> Faulty<S> {
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

/// The directory the log lives in: `audit.log`, `audit.head` and the
/// sealed segments, by name.
///
/// Renames and creations need not be durable until [`Dir::sync`] returns
/// `Ok`; a crash may keep any of the ones made since the last successful
/// sync, and recovery copes with that (the log never makes two of them
/// without a sync between). An `Err` from any method makes the log fail
/// closed.
pub trait Dir: Send + Sync + 'static {
    /// Opens the file `name` for reading and writing. If it is absent:
    /// with `create`, creates it (empty, mode 0600), else returns `None`.
    /// Also returns whether it was created.
    fn open_file(&self, name: &str, create: bool) -> io::Result<Option<(Box<dyn Storage>, bool)>>;

    /// Creates the file `name` (empty, mode 0600); fails if it exists.
    fn create_new(&self, name: &str) -> io::Result<Box<dyn Storage>>;

    /// The names of the files in it.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Renames the file `from` to `to`; fails if `to` exists.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Makes every completed rename and creation durable (`fsync` of the
    /// directory).
    fn sync(&self) -> io::Result<()>;

    /// A name for error messages (the path, for directories).
    fn name(&self) -> String;
}

impl Dir for Box<dyn Dir> {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Option<(Box<dyn Storage>, bool)>> {
        (**self).open_file(name, create)
    }
    fn create_new(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        (**self).create_new(name)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        (**self).list()
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        (**self).rename(from, to)
    }
    fn sync(&self) -> io::Result<()> {
        (**self).sync()
    }
    fn name(&self) -> String {
        (**self).name()
    }
}

/// A [`Dir`] that is a directory of the file system, locked for one
/// writer: an exclusive `flock` on the directory, held while this value
/// lives (a second writer, in this process or another, is refused).
#[derive(Debug)]
pub struct FsDir {
    path: PathBuf,
    /// The open directory: locked, and synced through.
    handle: File,
}

impl FsDir {
    /// Opens `path` (creating it, mode 0700, if absent) and locks it.
    pub fn open_locked(path: &Path) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        let handle = File::open(path)?;
        if let Err(e) = handle.try_lock() {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "already open for writing (by this or another process)",
                ),
                std::fs::TryLockError::Error(e) => {
                    io::Error::new(e.kind(), format!("cannot lock: {e}"))
                }
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            handle,
        })
    }

    /// The directory's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Dir for FsDir {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Option<(Box<dyn Storage>, bool)>> {
        let path = self.path.join(name);
        if create {
            let (s, created) = FileStorage::open(&path)?;
            return Ok(Some((Box::new(s), created)));
        }
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Ok(Some((Box::new(FileStorage { file, path }), false))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create_new(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        let path = self.path.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Box::new(FileStorage { file, path }))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path)? {
            if let Some(name) = e?.file_name().to_str() {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let to = self.path.join(to);
        // The writer holds the directory's lock: no one else makes `to`
        // between this check and the rename.
        if to.symlink_metadata().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", to.display()),
            ));
        }
        std::fs::rename(self.path.join(from), to)
    }

    fn sync(&self) -> io::Result<()> {
        self.handle.sync_all()
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

impl<D: Dir> Dir for Faulty<D> {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Option<(Box<dyn Storage>, bool)>> {
        let faults = self.faults.clone();
        Ok(self.inner.open_file(name, create)?.map(|(s, created)| {
            let s: Box<dyn Storage> = Box::new(Faulty::new(s, faults));
            (s, created)
        }))
    }

    fn create_new(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        self.faults.check(&self.faults.0.writes, "write")?;
        self.faults.check(&self.faults.0.dir_ops, "file creation")?;
        let s = self.inner.create_new(name)?;
        Ok(Box::new(Faulty::new(s, self.faults.clone())))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.faults.check(&self.faults.0.writes, "write")?;
        self.faults.check(&self.faults.0.dir_ops, "rename")?;
        self.inner.rename(from, to)
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
