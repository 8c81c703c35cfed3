//! Streaming writes and reads of large objects: [`ObjectWriter`] (a
//! `std::io::Write` that uploads in parts) and [`ObjectReader`] (a
//! `std::io::Read` over a GET's body), both blocking like the rest of the
//! crate.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, WriteMultipart};

use crate::{Inner, ObjError, run, runtime};

/// Bytes per part of a multipart upload (S3's minimum is 5 MiB, except for
/// the last part); an object smaller than this is one plain PUT.
pub const PART: usize = 8 << 20;
/// Parts in flight per writer.
const IN_FLIGHT: usize = 2;
/// What one blocking step of a reader gathers from the body at most.
const READ_BATCH: usize = 1 << 20;

/// Wraps `e` for the `std::io` traits; [`ObjError::from_io`] takes it back.
fn to_io(e: ObjError) -> io::Error {
    io::Error::other(e)
}

impl ObjError {
    /// The [`ObjError`] inside an I/O error of an [`ObjectWriter`] or
    /// [`ObjectReader`] (their `Write` and `Read` implementations carry
    /// it), or `None` for any other I/O error.
    pub fn from_io(e: io::Error) -> Result<ObjError, io::Error> {
        if e.get_ref().is_some_and(|i| i.is::<ObjError>()) {
            match e.into_inner().map(|i| i.downcast::<ObjError>()) {
                Some(Ok(o)) => Ok(*o),
                Some(Err(other)) => Err(io::Error::other(other)),
                None => Err(io::Error::other("an I/O error without its cause")),
            }
        } else {
            Err(e)
        }
    }
}

/// A large object being written: bytes are buffered into parts of
/// [`PART`] bytes, uploaded (two at a time) once the first part is full;
/// [`ObjectWriter::finish`] completes it. The object exists only once
/// `finish` succeeded: a writer dropped before (or after an error) aborts
/// its upload and leaves no object of that name behind (the store may keep
/// parts of an aborted upload until its own clean-up).
pub struct ObjectWriter {
    inner: Arc<Inner>,
    name: String,
    buf: BytesMut,
    upload: Option<WriteMultipart>,
    written: u64,
    failed: bool,
}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("name", &self.name)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl ObjectWriter {
    pub(crate) fn new(inner: Arc<Inner>, name: String) -> Self {
        Self {
            inner,
            name,
            buf: BytesMut::new(),
            upload: None,
            written: 0,
            failed: false,
        }
    }

    /// The object's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes `data` (buffered; full parts are uploaded as they fill).
    pub fn write_bytes(&mut self, mut data: &[u8]) -> Result<(), ObjError> {
        if self.failed {
            return Err(ObjError::Other {
                object: self.name.clone(),
                detail: "an earlier write of this object failed".to_owned(),
            });
        }
        while !data.is_empty() {
            let n = data.len().min(PART - self.buf.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.written += n as u64;
            if self.buf.len() == PART {
                let part = self.buf.split().freeze();
                if let Err(e) = self.send(part) {
                    self.failed = true;
                    self.abort();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Uploads one full part (starting the multipart upload first).
    fn send(&mut self, part: Bytes) -> Result<(), ObjError> {
        let upload = match self.upload.take() {
            Some(u) => u,
            None => {
                let inner = Arc::clone(&self.inner);
                let name = self.name.clone();
                let u = run(&self.name, async move {
                    inner
                        .store
                        .put_multipart(&ObjPath::from(name.as_str()))
                        .await
                        .map_err(|e| inner.err(e, &name))
                })?;
                WriteMultipart::new_with_chunk_size(u, PART)
            }
        };
        let inner = Arc::clone(&self.inner);
        let name = self.name.clone();
        let (upload, r) = run(&self.name, async move {
            let mut upload = upload;
            upload.put(part);
            let r = upload
                .wait_for_capacity(IN_FLIGHT)
                .await
                .map_err(|e| inner.err(e, &name));
            Ok((upload, r))
        })?;
        self.upload = Some(upload);
        r
    }

    /// Completes the object; answers its size. On an error nothing of that
    /// name was written (a multipart upload is aborted).
    pub fn finish(mut self) -> Result<u64, ObjError> {
        if self.failed {
            return Err(ObjError::Other {
                object: self.name.clone(),
                detail: "an earlier write of this object failed".to_owned(),
            });
        }
        let rest = self.buf.split().freeze();
        let inner = Arc::clone(&self.inner);
        let name = self.name.clone();
        match self.upload.take() {
            None => run(&self.name, async move { inner.put(name, rest).await })?,
            Some(mut upload) => {
                run(&self.name, async move {
                    if !rest.is_empty() {
                        upload.put(rest);
                    }
                    // `finish` aborts the upload itself when completing fails.
                    upload.finish().await.map_err(|e| inner.err(e, &name))?;
                    inner.sync_if_local(&name).await
                })?;
            }
        }
        self.failed = true; // nothing left to abort
        Ok(self.written)
    }

    /// Aborts the multipart upload, if one was started (in the background).
    fn abort(&mut self) {
        if let Some(upload) = self.upload.take()
            && let Ok(rt) = runtime()
        {
            rt.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        self.abort();
    }
}

impl io::Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf).map_err(to_io)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A large object being read: the body of one GET, read as it arrives.
/// An error of the store (mid-body too) is an `std::io::Error` carrying an
/// [`ObjError`] ([`ObjError::from_io`]).
pub struct ObjectReader {
    inner: Arc<Inner>,
    name: String,
    size: u64,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    have: Bytes,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    pub(crate) fn open(inner: Arc<Inner>, name: String) -> Result<Self, ObjError> {
        let i = Arc::clone(&inner);
        let n = name.clone();
        let (size, stream) = run(&name, async move {
            let got = i
                .store
                .get(&ObjPath::from(n.as_str()))
                .await
                .map_err(|e| i.err(e, &n))?;
            Ok((got.meta.size, got.into_stream()))
        })?;
        Ok(Self {
            inner,
            name,
            size,
            stream: Some(stream),
            have: Bytes::new(),
        })
    }

    /// The object's size as the store answered it.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The object's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gathers the next bytes of the body (up to [`READ_BATCH`]); empty at
    /// its end.
    fn fill(&mut self) -> Result<(), ObjError> {
        let Some(stream) = self.stream.take() else {
            return Ok(());
        };
        let inner = Arc::clone(&self.inner);
        let name = self.name.clone();
        let (stream, got) = run(&self.name, async move {
            let mut stream = stream;
            let mut out = BytesMut::new();
            let mut first: Option<Bytes> = None;
            loop {
                match stream.next().await {
                    None => return Ok((None, Ok(join(first, out)))),
                    Some(Err(e)) => return Ok((None, Err(inner.err(e, &name)))),
                    Some(Ok(b)) => {
                        // One piece is answered as it came (no copy).
                        match first.take() {
                            None if out.is_empty() => first = Some(b),
                            f => {
                                if let Some(f) = f {
                                    out.extend_from_slice(&f);
                                }
                                out.extend_from_slice(&b);
                            }
                        }
                        let len = out.len() + first.as_ref().map_or(0, Bytes::len);
                        if len >= READ_BATCH {
                            return Ok((Some(stream), Ok(join(first, out))));
                        }
                    }
                }
            }
        })?;
        self.stream = stream;
        self.have = got?;
        Ok(())
    }
}

fn join(first: Option<Bytes>, out: BytesMut) -> Bytes {
    match first {
        Some(f) => f,
        None => out.freeze(),
    }
}

impl io::Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.have.is_empty() {
            if self.stream.is_none() {
                return Ok(0);
            }
            self.fill().map_err(to_io)?;
        }
        let n = buf.len().min(self.have.len());
        buf[..n].copy_from_slice(&self.have.split_to(n));
        Ok(n)
    }
}
