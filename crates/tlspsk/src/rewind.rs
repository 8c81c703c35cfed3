//! Sniffing the ClientHello without losing it: [`read_client_hello`] reads
//! it, and [`Rewind`] hands the bytes read back to whichever TLS library
//! the connection is routed to.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::Error;
use crate::hello::{ClientHelloSummary, MAX_CLIENT_HELLO_LEN, parse_client_hello};

/// A stream that first replays bytes already read from `inner`, then reads
/// from `inner`; writes go straight to `inner`.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// A stream that yields `prefix`, then what `inner` yields.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream, mutably (reading from it directly skips the
    /// replayed bytes still pending).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The bytes still to be replayed before reading from the inner stream.
    pub fn pending(&self) -> &[u8] {
        self.prefix.get(self.pos..).unwrap_or_default()
    }

    /// The replayed bytes not yet read, and the inner stream.
    pub fn into_inner(mut self) -> (Vec<u8>, S) {
        let rest = self.prefix.split_off(self.pos.min(self.prefix.len()));
        (rest, self.inner)
    }
}

impl<S> std::fmt::Debug for Rewind<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewind")
            .field("pending", &self.prefix.len().saturating_sub(self.pos))
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(pending) = this.prefix.get(this.pos..)
            && !pending.is_empty()
        {
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads from `stream` until it holds a whole ClientHello, parses it, and
/// returns what it offers with a stream that replays every byte read.
///
/// Buffers at most 128 KiB plus one read; bytes read past the ClientHello
/// are replayed too. Put a
/// timeout around it: a client that sends part of a ClientHello and stops
/// keeps this waiting.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    mut stream: S,
) -> Result<(ClientHelloSummary, Rewind<S>), Error> {
    // Room for the largest ClientHello and generous record overhead (a
    // hello split into tiny records is legal, if odd); memory stays bounded.
    const LIMIT: usize = 2 * (MAX_CLIENT_HELLO_LEN + 1);
    let mut buf = Vec::with_capacity(2048);
    loop {
        if let Some(parsed) = parse_client_hello(&buf) {
            return parsed.map(|summary| (summary, Rewind::new(buf, stream)));
        }
        if buf.len() >= LIMIT {
            return Err(Error::MalformedClientHello("ClientHello too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
