//! Deadlines on a connection's reads and writes, for request-response
//! protocols whose server does not bound them itself (hyper's HTTP/1
//! server has only a header timeout, which also runs while a kept-alive
//! connection is idle).
//!
//! A [`Guarded`] stream is in one of three phases:
//!
//! * **waiting for a request's head**: from the connection's start, and
//!   from the first byte that arrives after a response. Its deadline is
//!   fixed when the phase starts ([`Deadlines::header`]); bytes arriving
//!   slowly do not move it, so a client trickling a header (or a body the
//!   server did not read) is cut. The protocol's timeout answer (for HTTP
//!   a complete `408`) is written, best effort, before the read fails;
//! * **in a request**: between [`Activity::start`] and [`Activity::finish`]
//!   (the server read the head and is working on it). Reads have no
//!   deadline here: the server reads the body under its own deadline, and
//!   a handler may take long;
//! * **idle**: after a response, until the next byte. The connection is
//!   closed quietly (the read ends as at end of file) after
//!   [`Deadlines::idle`] without a byte in either direction.
//!
//! In every phase, a write that makes no progress for [`Deadlines::write`]
//! fails: a client that does not read its answers is cut.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The deadlines of a [`Guarded`] stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From a connection's start, or the first byte after a response, to
    /// the request's complete head.
    pub header: Duration,
    /// Without a byte in either direction between requests.
    pub idle: Duration,
    /// Without progress on a write.
    pub write: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            header: DEFAULT_HEADER_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            write: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// [`Deadlines::header`]'s default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// [`Deadlines::idle`]'s default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// [`Deadlines::write`]'s default.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the server tells a [`Guarded`] stream about its requests.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests started.
    started: AtomicU64,
    /// Requests finished.
    finished: AtomicU64,
}

impl Activity {
    /// A request's head has been read; its handler runs.
    pub fn start(&self) {
        self.started.fetch_add(1, Ordering::AcqRel);
    }

    /// The request's answer is ready (the stream writes it next).
    pub fn finish(&self) {
        self.finished.fetch_add(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's head, until the deadline.
    Head(Instant),
    /// In a request.
    Request,
    /// Idle since the instant.
    Idle(Instant),
}

/// A stream with deadlines (see the module doc).
pub struct Guarded<S> {
    inner: S,
    deadlines: Deadlines,
    activity: Arc<Activity>,
    /// Finished requests seen.
    seen: u64,
    phase: Phase,
    /// What is written when the head's deadline passes.
    timeout_answer: Option<&'static [u8]>,
    read_timer: Pin<Box<Sleep>>,
    read_armed: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
    write_armed: Option<Instant>,
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl<S> Guarded<S> {
    /// Guards `inner`; `activity` is what its server marks requests on;
    /// `timeout_answer` is written when a head does not arrive in time.
    pub fn new(
        inner: S,
        deadlines: Deadlines,
        activity: Arc<Activity>,
        timeout_answer: Option<&'static [u8]>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            deadlines,
            activity,
            seen: 0,
            phase: Phase::Head(now + deadlines.header),
            timeout_answer,
            read_timer: Box::pin(tokio::time::sleep_until(now + deadlines.header)),
            read_armed: None,
            write_timer: Box::pin(tokio::time::sleep_until(now + deadlines.write)),
            write_armed: None,
        }
    }

    /// Brings the phase up to what the server has marked.
    fn sync(&mut self) {
        let finished = self.activity.finished.load(Ordering::Acquire);
        let started = self.activity.started.load(Ordering::Acquire);
        if started > finished {
            self.phase = Phase::Request;
        } else if finished != self.seen || self.phase == Phase::Request {
            self.seen = finished;
            self.phase = Phase::Idle(Instant::now());
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Writes the timeout answer, once, without waiting.
    fn answer_timeout(&mut self, cx: &mut Context<'_>) {
        if let Some(answer) = self.timeout_answer.take() {
            let inner = Pin::new(&mut self.inner);
            if let Poll::Ready(Ok(_)) = inner.poll_write(cx, answer) {
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
    }

    /// Polls the write deadline after a write that made no progress.
    fn poll_write_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = *self
            .write_armed
            .get_or_insert_with(|| Instant::now() + self.deadlines.write);
        if self.write_timer.deadline() != deadline {
            self.write_timer.as_mut().reset(deadline);
        }
        ready!(self.write_timer.as_mut().poll(cx));
        Poll::Ready(timed_out("the client did not read its answer in time"))
    }

    /// Notes progress on a write.
    fn wrote(&mut self, n: usize) {
        self.write_armed = None;
        if n > 0
            && let Phase::Idle(_) = self.phase
        {
            self.phase = Phase::Idle(Instant::now());
        }
    }

    /// After an answer is written the server may not read again until a
    /// byte arrives (it last read while the request ran, without a
    /// deadline): the idle deadline is armed here, on the task's waker, so
    /// that it wakes the task, whose next read then ends the connection.
    fn arm_idle(&mut self, cx: &mut Context<'_>) {
        if let Phase::Idle(since) = self.phase {
            let deadline = since + self.deadlines.idle;
            if self.read_armed != Some(deadline) {
                self.read_armed = Some(deadline);
                self.read_timer.as_mut().reset(deadline);
            }
            let _ = self.read_timer.as_mut().poll(cx);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.sync();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before
                    && let Phase::Idle(_) = this.phase
                {
                    this.phase = Phase::Head(Instant::now() + this.deadlines.header);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        let deadline = match this.phase {
            Phase::Request => {
                this.read_armed = None;
                return Poll::Pending;
            }
            Phase::Head(d) => d,
            Phase::Idle(since) => since + this.deadlines.idle,
        };
        if this.read_armed != Some(deadline) {
            this.read_armed = Some(deadline);
            this.read_timer.as_mut().reset(deadline);
        }
        ready!(this.read_timer.as_mut().poll(cx));
        match this.phase {
            // Idle too long: closed quietly, as at end of file.
            Phase::Idle(_) => Poll::Ready(Ok(())),
            _ => {
                this.answer_timeout(cx);
                Poll::Ready(Err(timed_out("the request's head did not arrive in time")))
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.sync();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_write_deadline(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.sync();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_write_deadline(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.sync();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.write_armed = None;
                this.arm_idle(cx);
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_write_deadline(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.poll_write_deadline(cx).map(Err),
        }
    }
}
