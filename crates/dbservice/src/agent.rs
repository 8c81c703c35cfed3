//! The WAL agent: PostgreSQL's `archive_command` and `restore_command`
//! run `atrest db-agent wal-push|wal-fetch`, which talks to the server
//! over a Unix socket (`<run dir>/agent.sock`). The server encrypts what
//! it is given into backup storage, and decrypts what is asked for; the
//! agent never sees a key. Neither side holds a whole file in memory: a
//! pushed file streams from the socket into `artifact::Sealer`
//! (1 MiB chunks) and a fetched one from `artifact::Opener` to
//! the socket, every chunk authenticated before a byte of it is sent; the
//! agent reads and writes its file in pieces too.
//!
//! # Protocol
//!
//! One connection, one request. The client sends a request line: JSON, at
//! most 64 KiB with its newline,
//! `{"op":"wal-push"|"wal-fetch","instance":ID,"token":HEX,"name":FILE}`;
//! a push adds `"size":N` (at most 1 GiB).
//!
//! * **`wal-push`**: the request line is followed by the file's N bytes.
//!   The server answers one line: `{"ok":true}` once the file is archived
//!   (encrypted as it arrives, synced and renamed into place; a short or
//!   broken body leaves no artifact), or `{"ok":false,"error":TEXT}`. A
//!   refused request is answered before a byte of its body is read, a
//!   failure midway as soon as it happens, and the server then closes the
//!   connection without reading the rest: an agent whose sending fails
//!   reads the answer. (These are the previous release's bytes.)
//! * **`wal-fetch`**: the server answers
//!   `{"ok":false,"missing":BOOL,"error":TEXT}`, or `{"ok":true,"framed":true}`
//!   followed by the file in frames (a u32 BE length, 1 byte to 1 MiB, and
//!   that many bytes), an empty frame (length 0), and a verdict line:
//!   `{"ok":true}` once the artifact's final chunk has authenticated with
//!   nothing after it, `{"ok":false,"error":TEXT}` if a chunk failed. The
//!   agent writes the frames to a temporary file beside the target and
//!   renames it only after `{"ok":true}`: a tampered or truncated artifact,
//!   or a connection that breaks, leaves no file at the target. (The
//!   previous release answered a size and the bytes, without frames: the
//!   agent refuses an answer without `framed`, so a new agent talking to a
//!   server not yet restarted after an upgrade fails rather than misreads.)
//!
//! # Who may connect
//!
//! The socket is mode 0666, but the server serves a request for an
//! instance only when the peer's uid (SO_PEERCRED) is that instance's own
//! OS user (or root) and the request carries the instance's token: 32
//! random bytes, kept in `agent/agent.token` on the instance's encrypted
//! disk (readable by that OS user only); the server keeps its SHA-256 in
//! the instance's record. Both are checked before anything after the
//! request line is read: the line is taken with `MSG_PEEK` up to its
//! newline and no further, so a refused client costs one line and its
//! body is never read.
//!
//! # Bounds
//!
//! * At most `Limits::connections` (32) connections are served at once.
//!   Another is answered `{"ok":false,"error":"the WAL agent is busy…"}`
//!   by the accepting thread, without a read or a thread of its own, and
//!   closed.
//! * The request line must arrive whole within `Limits::line` (10 s): a
//!   deadline for the line, not for each read, so a client that sends a
//!   byte now and then is cut too.
//! * A body, either way, must keep moving: each read or write waits at
//!   most `Limits::idle` (30 s), and all of them together may take at
//!   most `Limits::grace` (60 s) plus a second for every
//!   `Limits::min_rate` bytes (1 MiB) moved.
//! * A file is at most 1 GiB, a frame 1 MiB. A connection holds a few MiB
//!   (the artifact's chunk buffers) whatever the file's size.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use atrest_crypto::SecretBytes;
use serde::{Deserialize, Serialize};

use crate::DbService;

/// Largest file the agent moves (PostgreSQL's largest WAL segment).
const MAX_FILE: u64 = 1 << 30;
/// Longest request or answer line, with its newline.
const MAX_LINE: usize = 64 * 1024;
/// Largest frame of a fetched file.
const MAX_FRAME: usize = 1 << 20;
/// How long the agent waits for the server (which may be calling the key
/// service).
const IO_TIMEOUT: Duration = Duration::from_secs(300);
/// The pieces the agent reads its file in, and the server a pushed body.
const PIECE: usize = 64 * 1024;

/// The server's bounds on its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served at once; more are refused.
    pub connections: usize,
    /// How long a client has to send its whole request line.
    pub line: Duration,
    /// Longest wait for one read or write of a body.
    pub idle: Duration,
    /// How long a body may take before it must have moved `min_rate`
    /// bytes a second on average.
    pub grace: Duration,
    /// Bytes a second a body must move on average after `grace`.
    pub min_rate: u64,
}

impl Limits {
    /// The server's.
    pub(crate) const DEFAULT: Self = Self {
        connections: 32,
        line: Duration::from_secs(10),
        idle: Duration::from_secs(30),
        grace: Duration::from_secs(60),
        min_rate: 1 << 20,
    };
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    op: String,
    instance: String,
    token: String,
    name: String,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    missing: bool,
    /// A fetch's file follows in frames.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    framed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The plaintext of an archived file, chunk by chunk.
pub(crate) trait Chunks {
    /// The next chunk, authenticated before it is answered; `None` after
    /// the final chunk (which authenticated as the final one, with nothing
    /// after it).
    fn next_chunk(&mut self) -> Result<Option<SecretBytes>, String>;
}

/// What the server side does with requests (the database service).
pub(crate) trait Handler: Send + Sync {
    /// Whether a client of uid `peer` presenting `token` may act for
    /// `instance` (checked before anything after the request line is
    /// read).
    fn authorize(&self, instance: &str, token: &str, peer: u32) -> Result<(), String>;
    /// Stores the `size` bytes of `body` as WAL file `name` of `instance`,
    /// as they arrive; stores nothing unless all of them do (`body` fails
    /// if the client's bytes end early). May answer without reading `body`
    /// (a file not kept): the server then reads and drops it.
    fn wal_push(
        &self,
        instance: &str,
        token: &str,
        name: &str,
        size: u64,
        body: &mut dyn Read,
    ) -> Result<(), String>;
    /// WAL file `name` of `instance`, to be read chunk by chunk; `Ok(None)`
    /// if it is not archived.
    fn wal_fetch(
        &self,
        instance: &str,
        token: &str,
        name: &str,
    ) -> Result<Option<Box<dyn Chunks>>, String>;
}

impl Chunks for crate::backup::WalFile {
    fn next_chunk(&mut self) -> Result<Option<SecretBytes>, String> {
        self.read_chunk().map_err(|e| e.to_string())
    }
}

impl Handler for DbService {
    fn authorize(&self, instance: &str, token: &str, peer: u32) -> Result<(), String> {
        self.agent_authorize(instance, token, peer)
            .map_err(|e| e.to_string())
    }

    fn wal_push(
        &self,
        instance: &str,
        token: &str,
        name: &str,
        size: u64,
        body: &mut dyn Read,
    ) -> Result<(), String> {
        self.agent_push(instance, token, name, size, body)
            .map_err(|e| e.to_string())
    }

    fn wal_fetch(
        &self,
        instance: &str,
        token: &str,
        name: &str,
    ) -> Result<Option<Box<dyn Chunks>>, String> {
        self.agent_fetch(instance, token, name)
            .map(|f| f.map(|f| Box::new(f) as Box<dyn Chunks>))
            .map_err(|e| e.to_string())
    }
}

/// Whether `name` is a file PostgreSQL archives: a WAL segment (24 hex
/// digits, or with `.partial`), a timeline history file (8 hex digits and
/// `.history`) or a backup history file (a segment, `.`, 8 hex digits and
/// `.backup`).
pub(crate) fn valid_wal_name(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(t) = name.strip_suffix(".history") {
        return hex(t, 8);
    }
    if let Some(s) = name.strip_suffix(".partial") {
        return hex(s, 24);
    }
    if let Some(b) = name.strip_suffix(".backup") {
        return b
            .split_once('.')
            .is_some_and(|(s, o)| hex(s, 24) && hex(o, 8));
    }
    hex(name, 24)
}

/// The server's listener; stops (and removes its socket) on
/// [`Listener::stop`].
#[derive(Debug)]
pub(crate) struct Listener {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    busy: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Listens at `path` and serves `handler` until stopped.
    pub(crate) fn start<H: Handler + 'static>(
        path: &Path,
        handler: Weak<H>,
    ) -> std::io::Result<Self> {
        Self::start_with(path, handler, Limits::DEFAULT)
    }

    /// [`Listener::start`] with other bounds (tests).
    pub(crate) fn start_with<H: Handler + 'static>(
        path: &Path,
        handler: Weak<H>,
        limits: Limits,
    ) -> std::io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicUsize::new(0));
        let (s, b) = (Arc::clone(&stop), Arc::clone(&busy));
        let thread = std::thread::Builder::new()
            .name("db-agent".into())
            .spawn(move || accept_loop(&listener, &handler, &s, &b, limits))?;
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            busy,
            thread: Some(thread),
        })
    }

    /// Connections being served.
    #[cfg(test)]
    fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Stops accepting and removes the socket.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
        let busy = self.busy.load(Ordering::SeqCst);
        if busy > 0 {
            tracing::debug!(busy, "the WAL agent stopped; its connections finish");
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

/// One of the connections served at once; given back when dropped.
struct Permit(Arc<AtomicUsize>);

impl Permit {
    fn take(busy: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        busy.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Self(Arc::clone(busy)))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop<H: Handler + 'static>(
    listener: &UnixListener,
    handler: &Weak<H>,
    stop: &AtomicBool,
    busy: &Arc<AtomicUsize>,
    limits: Limits,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the WAL agent socket's accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Some(permit) = Permit::take(busy, limits.connections) else {
            // Answered here, without reading and without blocking: the
            // line fits the new connection's empty buffer.
            tracing::debug!("refused a WAL agent connection: busy");
            let mut s = stream;
            let _ = s.set_nonblocking(true);
            let _ = reply(
                &mut s,
                &failure(
                    &format!(
                        "the WAL agent is busy ({} connections); try again",
                        limits.connections
                    ),
                    false,
                ),
            );
            continue;
        };
        let Some(h) = handler.upgrade() else { break };
        let spawned = std::thread::Builder::new()
            .name("db-agent-conn".into())
            .spawn(move || {
                let _permit = permit;
                serve(&*h, &stream, &limits);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a WAL agent connection thread");
        }
    }
}

fn failure(msg: &str, missing: bool) -> Answer {
    Answer {
        ok: false,
        missing,
        framed: false,
        error: Some(msg.to_owned()),
    }
}

fn success() -> Answer {
    Answer {
        ok: true,
        ..Answer::default()
    }
}

fn reply(mut s: impl Write, a: &Answer) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(a).map_err(std::io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// Reads the request line, and not a byte after its newline: what follows
/// stays in the socket until the request is authorized. Bytes are looked
/// at with `MSG_PEEK` and only those up to the newline taken. The line must
/// arrive whole, at most [`MAX_LINE`] bytes, within `limit`.
fn read_request_line(s: &UnixStream, limit: Duration) -> std::io::Result<Vec<u8>> {
    use nix::errno::Errno;
    use nix::sys::socket::{MsgFlags, recv};
    let deadline = Instant::now() + limit;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let want = buf.len().min(MAX_LINE - line.len());
        if want == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the request line is longer than 64 KiB",
            ));
        }
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| timed_out("the request line did not arrive in time"))?;
        s.set_read_timeout(Some(left))?;
        let n = match recv(s.as_raw_fd(), &mut buf[..want], MsgFlags::MSG_PEEK) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the request line ended without a newline",
                ));
            }
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Err(timed_out("the request line did not arrive in time")),
            Err(e) => return Err(e.into()),
        };
        let end = buf[..n].iter().position(|&b| b == b'\n');
        let take = end.map_or(n, |i| i + 1);
        // Already queued: taking them does not wait.
        let mut r = s;
        r.read_exact(&mut buf[..take])?;
        line.extend_from_slice(&buf[..take]);
        if end.is_some() {
            return Ok(line);
        }
    }
}

/// The socket while a body moves: each read or write waits at most
/// [`Limits::idle`], and all of them together may take [`Limits::grace`]
/// plus a second for every [`Limits::min_rate`] bytes moved.
struct Paced<'a> {
    s: &'a UnixStream,
    limits: Limits,
    start: Instant,
    moved: u64,
}

impl<'a> Paced<'a> {
    fn new(s: &'a UnixStream, limits: Limits) -> Self {
        Self {
            s,
            limits,
            start: Instant::now(),
            moved: 0,
        }
    }

    /// How long the next read or write may wait, and what to say if it
    /// waits that long.
    fn wait(&self) -> std::io::Result<(Duration, &'static str)> {
        const SLOW: &str = "the transfer is too slow";
        let earned = self
            .moved
            .checked_div(self.limits.min_rate)
            .unwrap_or(u64::MAX);
        let allowed = self
            .limits
            .grace
            .saturating_add(Duration::from_secs(earned));
        let left = allowed
            .checked_sub(self.start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| timed_out(SLOW))?;
        Ok(if left < self.limits.idle {
            (left, SLOW)
        } else {
            (self.limits.idle, "the peer stalled")
        })
    }

    fn timeout(e: std::io::Error, why: &str) -> std::io::Error {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            timed_out(why)
        } else {
            e
        }
    }
}

impl Read for Paced<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (wait, why) = self.wait()?;
        self.s.set_read_timeout(Some(wait))?;
        let n = self.s.read(buf).map_err(|e| Self::timeout(e, why))?;
        self.moved += n as u64;
        Ok(n)
    }
}

impl Write for Paced<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (wait, why) = self.wait()?;
        self.s.set_write_timeout(Some(wait))?;
        let n = self.s.write(buf).map_err(|e| Self::timeout(e, why))?;
        self.moved += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A pushed file's bytes: exactly `left` more, and an error if the client's
/// bytes end before them.
struct Body<'a> {
    inner: Paced<'a>,
    size: u64,
    left: u64,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the file ended after {} of its {} bytes",
                    self.size - self.left,
                    self.size
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn serve(h: &dyn Handler, stream: &UnixStream, limits: &Limits) {
    let _ = stream.set_write_timeout(Some(limits.idle));
    let uid = match nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
    {
        Ok(c) => c.uid(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the WAL agent's credentials");
            return;
        }
    };
    let answer = match read_request_line(stream, limits.line)
        .map_err(|e| format!("reading the request: {e}"))
        .and_then(|l| {
            serde_json::from_slice::<Request>(&l).map_err(|e| format!("a bad request: {e}"))
        }) {
        Err(e) => failure(&e, false),
        Ok(req) if !valid_wal_name(&req.name) => {
            failure(&format!("'{}' is not a WAL file name", req.name), false)
        }
        Ok(req) if h.authorize(&req.instance, &req.token, uid).is_err() => {
            tracing::warn!(uid, instance = %req.instance, "refused a WAL agent request: not the instance's user or token");
            failure(
                &format!(
                    "uid {uid} with this token may not use the WAL agent for {}",
                    req.instance
                ),
                false,
            )
        }
        Ok(req) if req.op == "wal-push" => push(h, stream, &req, limits),
        Ok(req) if req.op == "wal-fetch" => match fetch(h, stream, &req, limits) {
            Some(a) => a,
            // Sent, or the connection broke.
            None => return,
        },
        Ok(req) => failure(&format!("unknown operation '{}'", req.op), false),
    };
    // The connection closes after the answer: whatever the client sent
    // that was not read (a refused push's body) is never read.
    let _ = reply(stream, &answer);
}

/// `wal-push`, authorized: streams the body to the handler.
fn push(h: &dyn Handler, stream: &UnixStream, req: &Request, limits: &Limits) -> Answer {
    let Some(size) = req.size else {
        return failure("a push needs the file's size", false);
    };
    if size > MAX_FILE {
        return failure("the file is too large", false);
    }
    let mut body = Body {
        inner: Paced::new(stream, *limits),
        size,
        left: size,
    };
    match h.wal_push(&req.instance, &req.token, &req.name, size, &mut body) {
        Ok(()) => {
            // A file the handler did not need: read and dropped, so that
            // the client's sending completes.
            match std::io::copy(&mut body, &mut std::io::sink()) {
                Ok(_) => success(),
                Err(e) => failure(&format!("reading the file: {e}"), false),
            }
        }
        Err(e) => {
            tracing::warn!(instance = %req.instance, file = %req.name, error = %e, "archiving a WAL file failed");
            failure(&e, false)
        }
    }
}

/// `wal-fetch`, authorized: the answer if nothing was sent yet, else
/// `None` (the file and its verdict were sent, or the connection broke).
fn fetch(h: &dyn Handler, stream: &UnixStream, req: &Request, limits: &Limits) -> Option<Answer> {
    let mut chunks = match h.wal_fetch(&req.instance, &req.token, &req.name) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Some(failure(
                &format!("{} is not in the archive", req.name),
                true,
            ));
        }
        Err(e) => {
            tracing::warn!(instance = %req.instance, file = %req.name, error = %e, "fetching a WAL file failed");
            return Some(failure(&e, false));
        }
    };
    let head = Answer {
        ok: true,
        framed: true,
        ..Answer::default()
    };
    let mut out = Paced::new(stream, *limits);
    let sent = (|| -> std::io::Result<()> {
        reply(&mut out, &head)?;
        let verdict = loop {
            match chunks.next_chunk() {
                Ok(Some(c)) => {
                    for frame in c.expose().chunks(MAX_FRAME) {
                        let len = u32::try_from(frame.len()).map_err(std::io::Error::other)?;
                        out.write_all(&len.to_be_bytes())?;
                        out.write_all(frame)?;
                    }
                }
                Ok(None) => break success(),
                Err(e) => {
                    tracing::warn!(instance = %req.instance, file = %req.name, error = %e, "a fetched WAL file failed to read or authenticate");
                    break failure(&e, false);
                }
            }
        };
        out.write_all(&0u32.to_be_bytes())?;
        reply(&mut out, &verdict)
    })();
    if let Err(e) = sent {
        tracing::warn!(instance = %req.instance, file = %req.name, error = %e, "sending a WAL file to the agent failed");
    }
    None
}

// ----- the client (the `atrest db-agent` command) ---------------------------

/// Why the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The file is not in the archive (`wal-fetch`).
    #[error("{0}")]
    Missing(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

fn read_token(token_file: &Path) -> Result<zeroize::Zeroizing<String>, AgentError> {
    std::fs::read_to_string(token_file)
        .map(|t| zeroize::Zeroizing::new(t.trim().to_owned()))
        .map_err(|e| AgentError::Failed(format!("reading {}: {e}", token_file.display())))
}

fn connect(socket: &Path) -> Result<UnixStream, AgentError> {
    let s = UnixStream::connect(socket)
        .map_err(|e| AgentError::Failed(format!("connecting to {}: {e}", socket.display())))?;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    Ok(s)
}

fn send_request(mut s: &UnixStream, req: &Request) -> Result<(), AgentError> {
    let mut line = serde_json::to_vec(req).map_err(|e| AgentError::Failed(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| AgentError::Failed(format!("sending the request: {e}")))
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    r.take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no complete line",
        ));
    }
    Ok(line)
}

fn read_answer(r: &mut impl BufRead) -> Result<Answer, AgentError> {
    let line = read_line(r).map_err(|e| AgentError::Failed(format!("reading the answer: {e}")))?;
    let a: Answer = serde_json::from_slice(&line)
        .map_err(|e| AgentError::Failed(format!("a bad answer: {e}")))?;
    if a.ok {
        return Ok(a);
    }
    let msg = a.error.unwrap_or_else(|| "the server refused".into());
    Err(if a.missing {
        AgentError::Missing(msg)
    } else {
        AgentError::Failed(msg)
    })
}

/// `archive_command`: sends `path` to be archived as `name`, in pieces.
pub fn wal_push(
    socket: &Path,
    instance: &str,
    token_file: &Path,
    path: &Path,
    name: &str,
) -> Result<(), AgentError> {
    let token = read_token(token_file)?;
    let failed = |e: std::io::Error| AgentError::Failed(format!("reading {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(failed)?;
    let size = file.metadata().map_err(failed)?.len();
    if size > MAX_FILE {
        return Err(AgentError::Failed(format!(
            "{} is larger than 1 GiB",
            path.display()
        )));
    }
    let s = connect(socket)?;
    send_request(
        &s,
        &Request {
            op: "wal-push".into(),
            instance: instance.to_owned(),
            token: token.to_string(),
            name: name.to_owned(),
            size: Some(size),
        },
    )?;
    // The body follows the line. A refusal is answered before it is read,
    // and the connection closed: sending then fails, and the answer says
    // why.
    let sent = std::io::copy(&mut (&file).take(size), &mut &s);
    let mut r = BufReader::new(&s);
    match sent {
        Ok(n) if n == size => read_answer(&mut r).map(drop),
        Ok(n) => Err(AgentError::Failed(format!(
            "{} shrank to {n} bytes while it was sent (it had {size})",
            path.display()
        ))),
        Err(e) => Err(match read_answer(&mut r) {
            Err(refused) => refused,
            Ok(_) => AgentError::Failed(format!("sending {}: {e}", path.display())),
        }),
    }
}

/// A file being received beside its target; removed unless kept.
struct Partial {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Partial {
    fn create(target: &Path) -> Result<Self, AgentError> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(name) = target.file_name() else {
            return Err(AgentError::Failed(format!(
                "{} names no file",
                target.display()
            )));
        };
        let mut tmp = name.to_owned();
        tmp.push(".atrest-tmp");
        let path = target.with_file_name(tmp);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AgentError::Failed(format!("creating {}: {e}", path.display())))?;
        Ok(Self {
            path,
            file: Some(file),
        })
    }

    /// Renames it to `target`.
    fn keep(mut self, target: &Path) -> Result<(), AgentError> {
        drop(self.file.take());
        std::fs::rename(&self.path, target)
            .map_err(|e| AgentError::Failed(format!("writing {}: {e}", target.display())))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `restore_command`: fetches archived `name` into `path`, which appears
/// only once the whole file has arrived and the server has said that its
/// artifact authenticated to the end.
pub fn wal_fetch(
    socket: &Path,
    instance: &str,
    token_file: &Path,
    name: &str,
    path: &Path,
) -> Result<(), AgentError> {
    let token = read_token(token_file)?;
    let s = connect(socket)?;
    send_request(
        &s,
        &Request {
            op: "wal-fetch".into(),
            instance: instance.to_owned(),
            token: token.to_string(),
            name: name.to_owned(),
            size: None,
        },
    )?;
    let mut r = BufReader::with_capacity(PIECE, &s);
    if !read_answer(&mut r)?.framed {
        return Err(AgentError::Failed(
            "the server answered in another release's protocol: restart it after an upgrade".into(),
        ));
    }
    let partial = Partial::create(path)?;
    let receiving = |e: std::io::Error| AgentError::Failed(format!("receiving {name}: {e}"));
    let writing =
        |e: std::io::Error| AgentError::Failed(format!("writing {}: {e}", partial.path.display()));
    let mut out = std::io::BufWriter::with_capacity(
        PIECE,
        partial
            .file
            .as_ref()
            .ok_or_else(|| AgentError::Failed("the temporary file is closed".into()))?,
    );
    let mut total = 0u64;
    loop {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(receiving)?;
        let len = u64::from(u32::from_be_bytes(len));
        if len == 0 {
            break;
        }
        if len > MAX_FRAME as u64 {
            return Err(AgentError::Failed(format!(
                "receiving {name}: a frame of {len} bytes"
            )));
        }
        total += len;
        if total > MAX_FILE {
            return Err(AgentError::Failed(format!(
                "receiving {name}: more than 1 GiB"
            )));
        }
        // Copied through a small buffer: the frame's length is the
        // server's word, never an allocation.
        let n = std::io::copy(&mut (&mut r).take(len), &mut out).map_err(receiving)?;
        if n != len {
            return Err(AgentError::Failed(format!(
                "receiving {name}: the connection ended in the middle of the file"
            )));
        }
    }
    out.flush().map_err(writing)?;
    drop(out);
    // The verdict: an artifact that failed authentication (the server
    // stops at the failing chunk) leaves no file at `path`.
    read_answer(&mut r)?;
    partial.keep(path)
}

#[cfg(test)]
mod tests {
    use std::io::BufWriter;
    use std::sync::atomic::AtomicU64;

    use atrest_crypto::Aes256Key;

    use super::*;
    use crate::artifact::{CHUNK, Header, Opener, Sealer};

    #[test]
    fn wal_names() {
        for ok in [
            "000000010000000000000001",
            "0000000200000000000000AB",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003.partial",
        ] {
            assert!(valid_wal_name(ok), "{ok}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "00000001000000000000000",
            "0000000100000000000000011",
            "00000002.history/..",
            "x00000002.history",
            "000000010000000000000002.backup",
            "00000001000000000000000G",
        ] {
            assert!(!valid_wal_name(bad), "{bad}");
        }
    }

    /// Seals what is pushed into artifacts in a directory, streaming, as
    /// the database service does (with one key of its own), and opens them
    /// chunk by chunk for a fetch.
    struct Vault {
        dir: PathBuf,
        key: Aes256Key,
        /// Calls of `wal_push`.
        pushes: AtomicUsize,
        /// Body bytes `wal_push` read.
        read: AtomicU64,
    }

    struct Opened(Opener<std::fs::File>);

    impl Chunks for Opened {
        fn next_chunk(&mut self) -> Result<Option<SecretBytes>, String> {
            self.0.next_chunk().map_err(|e| e.to_string())
        }
    }

    impl Vault {
        fn file(&self, instance: &str, name: &str) -> PathBuf {
            self.dir.join(format!("{instance}.{name}"))
        }

        fn header(instance: &str, name: &str) -> Header {
            Header {
                wrapped_key: vec![1; 40],
                key_arn: "arn:aws:kms:us-east-1:111122223333:key/test".into(),
                instance: instance.into(),
                name: name.into(),
            }
        }

        fn seal(
            &self,
            instance: &str,
            name: &str,
            size: u64,
            body: &mut dyn Read,
            tmp: &Path,
        ) -> Result<(), String> {
            let e = |e: &dyn std::fmt::Display| e.to_string();
            let f = std::fs::File::create(tmp).map_err(|x| e(&x))?;
            let mut s = Sealer::new(BufWriter::new(f), &self.key, &Self::header(instance, name))
                .map_err(|x| e(&x))?;
            let mut buf = vec![0u8; PIECE];
            let mut left = size;
            while left > 0 {
                let n = body.read(&mut buf).map_err(|x| e(&x))?;
                if n == 0 {
                    return Err("the body ended early".into());
                }
                self.read.fetch_add(n as u64, Ordering::SeqCst);
                s.write_all(&buf[..n]).map_err(|x| e(&x))?;
                left -= n as u64;
            }
            s.finish().map_err(|x| e(&x))?;
            Ok(())
        }
    }

    impl Handler for Vault {
        fn authorize(&self, instance: &str, token: &str, peer: u32) -> Result<(), String> {
            if token != "secret" || instance == "db-other" {
                return Err(format!("{peer} refused"));
            }
            Ok(())
        }

        fn wal_push(
            &self,
            instance: &str,
            token: &str,
            name: &str,
            size: u64,
            body: &mut dyn Read,
        ) -> Result<(), String> {
            self.pushes.fetch_add(1, Ordering::SeqCst);
            if token != "secret" {
                return Err("bad token".into());
            }
            let path = self.file(instance, name);
            let tmp = path.with_extension("tmp");
            let r = self
                .seal(instance, name, size, body, &tmp)
                .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| e.to_string()));
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r
        }

        fn wal_fetch(
            &self,
            instance: &str,
            token: &str,
            name: &str,
        ) -> Result<Option<Box<dyn Chunks>>, String> {
            if token != "secret" {
                return Err("bad token".into());
            }
            let mut f = match std::fs::File::open(self.file(instance, name)) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            let (h, raw) = Header::read(&mut f).map_err(|e| e.to_string())?;
            let o = Opener::new(f, &self.key, &h, &raw).map_err(|e| e.to_string())?;
            Ok(Some(Box::new(Opened(o))))
        }
    }

    /// A vault served on a socket in a directory of its own, and a token
    /// file holding the good token.
    struct Setup {
        // Dropped first: stopping connects to the socket, in `dir`.
        listener: Listener,
        dir: tempfile::TempDir,
        vault: Arc<Vault>,
        sock: PathBuf,
        token: PathBuf,
    }

    fn setup(limits: Limits) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let vault = Arc::new(Vault {
            dir: store,
            key: Aes256Key::generate().unwrap(),
            pushes: AtomicUsize::new(0),
            read: AtomicU64::new(0),
        });
        let sock = dir.path().join("agent.sock");
        let weak: Weak<Vault> = Arc::downgrade(&vault);
        let listener = Listener::start_with(&sock, weak, limits).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "secret\n").unwrap();
        Setup {
            listener,
            dir,
            vault,
            sock,
            token,
        }
    }

    const SEG: &str = "000000010000000000000001";

    fn request_line(token: &str, size: u64) -> Vec<u8> {
        let mut l = serde_json::to_vec(&Request {
            op: "wal-push".into(),
            instance: "db-1".into(),
            token: token.into(),
            name: SEG.into(),
            size: Some(size),
        })
        .unwrap();
        l.push(b'\n');
        l
    }

    fn wait_busy(l: &Listener, n: usize) {
        let t = Instant::now();
        while l.busy() != n {
            assert!(t.elapsed() < Duration::from_secs(10), "{} busy", l.busy());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The answer line on `s`, then whether the server closed the
    /// connection (`Ok(0)` or a reset).
    fn answer_then_closed(s: &UnixStream) -> (Result<Answer, AgentError>, std::io::Result<usize>) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s);
        let a = read_answer(&mut r);
        assert!(r.buffer().is_empty(), "more than a line");
        let mut rest = [0u8; 16];
        let after = r.get_mut().read(&mut rest);
        (a, after)
    }

    #[test]
    fn push_and_fetch_over_the_socket() {
        let t = setup(Limits::DEFAULT);
        let (sock, token) = (&t.sock, &t.token);
        let src = t.dir.path().join("seg");
        let dst = t.dir.path().join("RECOVERYXLOG");
        // Chunk and frame boundaries: empty, short, exactly a chunk, more.
        for n in [0, 100_000, CHUNK, CHUNK + 1] {
            let data: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
            std::fs::write(&src, &data).unwrap();
            wal_push(sock, "db-1", token, &src, SEG).unwrap();
            wal_fetch(sock, "db-1", token, SEG, &dst).unwrap();
            assert!(std::fs::read(&dst).unwrap() == data, "{n} bytes");
        }
        // Refused by authorization: nothing is stored, or even asked for.
        let pushes = t.vault.pushes.load(Ordering::SeqCst);
        let e = wal_push(sock, "db-other", token, &src, SEG).unwrap_err();
        assert!(e.to_string().contains("may not use the WAL agent"), "{e}");
        assert_eq!(t.vault.pushes.load(Ordering::SeqCst), pushes);
        assert!(!t.vault.file("db-other", SEG).exists());
        assert!(matches!(
            wal_fetch(sock, "db-1", token, "000000010000000000000002", &dst),
            Err(AgentError::Missing(_))
        ));
        assert!(matches!(
            wal_fetch(sock, "db-1", token, "../x", &dst),
            Err(AgentError::Failed(_))
        ));
        std::fs::write(token, "wrong").unwrap();
        assert!(matches!(
            wal_push(sock, "db-1", token, &src, SEG),
            Err(AgentError::Failed(_))
        ));
        let mut l = t.listener;
        l.stop();
        assert!(!sock.exists());
    }

    #[test]
    fn the_request_line_is_read_up_to_its_newline_and_no_further() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut sent = request_line("00", 5);
        sent.extend_from_slice(b"BODY!");
        // In two pieces, the second with the line's end and the body.
        client.write_all(&sent[..10]).unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            client.write_all(&sent[10..]).unwrap();
            client
        });
        let line = read_request_line(&server, Duration::from_secs(5)).unwrap();
        assert_eq!(line, request_line("00", 5));
        let _client = writer.join().unwrap();
        // What followed is still in the socket.
        let mut rest = [0u8; 5];
        (&server).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"BODY!");
        // A line without its newline: at most 64 KiB are taken.
        let (mut client, server) = UnixStream::pair().unwrap();
        let long = vec![b'x'; MAX_LINE + 1000];
        let writer = std::thread::spawn(move || {
            let _ = client.write_all(&long);
            client
        });
        let e = read_request_line(&server, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("longer than 64 KiB"), "{e}");
        let mut rest = vec![0u8; 1000];
        (&server).read_exact(&mut rest).unwrap();
        drop(writer.join().unwrap());
    }

    #[test]
    fn a_bogus_token_is_refused_before_any_of_the_body_is_read() {
        let t = setup(Limits::DEFAULT);
        // The line alone, claiming 1 GiB: the answer comes at once, and
        // the server has closed the connection.
        let mut s = UnixStream::connect(&t.sock).unwrap();
        s.write_all(&request_line(&"00".repeat(32), 1 << 30))
            .unwrap();
        let (a, after) = answer_then_closed(&s);
        let e = a.unwrap_err();
        assert!(e.to_string().contains("may not use the WAL agent"), "{e}");
        assert_eq!(after.unwrap(), 0);
        // Whatever is sent now goes nowhere.
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let e = s.write_all(&[0u8; 4096]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        // The line and body bytes in one write: the server closes with the
        // body unread, which the kernel reports to us as a reset (had it
        // read them, we would see an orderly end).
        let mut s = UnixStream::connect(&t.sock).unwrap();
        let mut sent = request_line("bogus", 1 << 30);
        sent.extend_from_slice(&[7u8; 1000]);
        s.write_all(&sent).unwrap();
        let (a, after) = answer_then_closed(&s);
        assert!(a.is_err());
        assert_eq!(
            after.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionReset
        );
        // A too-large claim with the good token: refused as well, unread.
        let mut s = UnixStream::connect(&t.sock).unwrap();
        s.write_all(&request_line("secret", (1 << 30) + 1)).unwrap();
        let (a, after) = answer_then_closed(&s);
        assert!(a.unwrap_err().to_string().contains("too large"));
        assert_eq!(after.unwrap(), 0);
        assert_eq!(t.vault.pushes.load(Ordering::SeqCst), 0);
        assert_eq!(t.vault.read.load(Ordering::SeqCst), 0);
    }

    // ----- memory, each measured in a process of its own ---------------------

    const CHILD: &str = "ATREST_AGENT_TEST_CHILD";

    /// Runs test `name` alone in a new process of this test binary (other
    /// tests' allocations would blur its memory figures), unless this is
    /// that process: answers whether to run the test's body here.
    fn in_own_process(name: &str) -> bool {
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{name} failed in its own process"
        );
        false
    }

    /// A field of `/proc/self/status`, in KiB.
    fn status_kib(field: &str) -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap()
    }

    /// Sets the peak (VmHWM) to the present RSS.
    fn reset_peak() {
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
    }

    #[test]
    fn refused_pushes_cost_no_memory() {
        if !in_own_process("agent::tests::refused_pushes_cost_no_memory") {
            return;
        }
        let t = setup(Limits::DEFAULT);
        let refuse_all = |n: usize| {
            let conns: Vec<UnixStream> = (0..n)
                .map(|_| {
                    let mut s = UnixStream::connect(&t.sock).unwrap();
                    s.write_all(&request_line(&"00".repeat(32), 1 << 30))
                        .unwrap();
                    s
                })
                .collect();
            for s in &conns {
                let (a, after) = answer_then_closed(s);
                assert!(a.unwrap_err().to_string().contains("may not use"));
                assert_eq!(after.unwrap(), 0);
            }
        };
        // Once to warm up (threads, allocator arenas, the log).
        refuse_all(32);
        wait_busy(&t.listener, 0);
        let rss = status_kib("VmRSS");
        reset_peak();
        refuse_all(32);
        wait_busy(&t.listener, 0);
        let peak = status_kib("VmHWM");
        let after = status_kib("VmRSS");
        println!(
            "32 refused 1 GiB pushes: VmRSS {rss} -> {after} KiB, peak +{} KiB",
            peak.saturating_sub(rss)
        );
        assert!(peak.saturating_sub(rss) < 4 * 1024);
        assert!(after.saturating_sub(rss) < 4 * 1024);
        assert_eq!(t.vault.pushes.load(Ordering::SeqCst), 0);
    }

    /// Writes `n` pseudo-random bytes to `path`, a MiB at a time.
    fn random_file(path: &Path, n: usize, mut seed: u64) {
        let mut f = BufWriter::new(std::fs::File::create(path).unwrap());
        let mut buf = vec![0u8; 1 << 20];
        let mut left = n;
        while left > 0 {
            for w in buf.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                w.copy_from_slice(&seed.to_le_bytes()[..w.len()]);
            }
            let k = left.min(buf.len());
            f.write_all(&buf[..k]).unwrap();
            left -= k;
        }
        f.flush().unwrap();
    }

    fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        n
    }

    fn same_files(a: &Path, b: &Path) -> bool {
        let (mut fa, mut fb) = (
            std::fs::File::open(a).unwrap(),
            std::fs::File::open(b).unwrap(),
        );
        let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        loop {
            let na = read_full(&mut fa, &mut ba);
            let nb = read_full(&mut fb, &mut bb);
            if na != nb || ba[..na] != bb[..nb] {
                return false;
            }
            if na == 0 {
                return true;
            }
        }
    }

    #[test]
    fn a_large_file_streams_both_ways() {
        if !in_own_process("agent::tests::a_large_file_streams_both_ways") {
            return;
        }
        const SIZE: usize = 64 << 20;
        let t = setup(Limits::DEFAULT);
        let src = t.dir.path().join("big");
        let dst = t.dir.path().join("RECOVERYXLOG");
        random_file(&src, SIZE + 12345, 0x9e37_79b9_7f4a_7c15);
        let small = t.dir.path().join("small");
        random_file(&small, 3 * CHUNK, 1);
        // Peaks above the resident size before any transfer, in KiB: a
        // 3 MiB file first (both sides' chunk buffers), then 64 MiB.
        let rss = status_kib("VmRSS");
        let peak = |f: &mut dyn FnMut()| {
            reset_peak();
            let start = Instant::now();
            f();
            (status_kib("VmHWM").saturating_sub(rss), start.elapsed())
        };
        let small_push = peak(&mut || {
            wal_push(
                &t.sock,
                "db-1",
                &t.token,
                &small,
                "000000010000000000000009",
            )
            .unwrap();
        });
        let small_fetch = peak(&mut || {
            wal_fetch(&t.sock, "db-1", &t.token, "000000010000000000000009", &dst).unwrap();
        });
        let push = peak(&mut || wal_push(&t.sock, "db-1", &t.token, &src, SEG).unwrap());
        let fetch = peak(&mut || wal_fetch(&t.sock, "db-1", &t.token, SEG, &dst).unwrap());
        println!(
            "VmRSS {rss} KiB before; peak above it (KiB, time): 3 MiB push {small_push:?}, \
             fetch {small_fetch:?}; 64 MiB push {push:?}, fetch {fetch:?}"
        );
        // About 2.5 MiB for either size (the chunk buffers of both sides);
        // an eighth of the file allows for the allocator giving a new
        // connection's thread an arena of its own.
        for (kib, _) in [small_push, small_fetch, push, fetch] {
            assert!(kib < 8 * 1024, "{kib} KiB");
        }
        assert!(same_files(&src, &dst));
    }

    // ----- time bounds -------------------------------------------------------

    #[test]
    fn a_stalled_request_line_is_cut() {
        let t = setup(Limits {
            line: Duration::from_millis(500),
            ..Limits::DEFAULT
        });
        // Part of a line, then nothing.
        let start = Instant::now();
        let mut s = UnixStream::connect(&t.sock).unwrap();
        s.write_all(b"{\"op\":\"wal-pu").unwrap();
        let (a, after) = answer_then_closed(&s);
        let took = start.elapsed();
        let e = a.unwrap_err().to_string();
        assert!(e.contains("did not arrive in time"), "{e}");
        assert!(after.is_ok());
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(5),
            "{took:?}"
        );
        // A byte every 100 ms: the bound is on the line, not on each read.
        let start = Instant::now();
        let s = UnixStream::connect(&t.sock).unwrap();
        let mut w = s.try_clone().unwrap();
        let drip = std::thread::spawn(move || {
            for b in request_line("secret", 10) {
                if w.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (a, _) = answer_then_closed(&s);
        let took = start.elapsed();
        let e = a.unwrap_err().to_string();
        assert!(e.contains("did not arrive in time"), "{e}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        drip.join().unwrap();
        wait_busy(&t.listener, 0);
        assert_eq!(t.vault.pushes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_stalled_or_crawling_body_is_cut() {
        // Stalled: no byte for longer than `idle`.
        let t = setup(Limits {
            idle: Duration::from_millis(300),
            ..Limits::DEFAULT
        });
        let start = Instant::now();
        let mut s = UnixStream::connect(&t.sock).unwrap();
        let mut sent = request_line("secret", 1000);
        sent.extend_from_slice(&[1u8; 10]);
        s.write_all(&sent).unwrap();
        let (a, _) = answer_then_closed(&s);
        let e = a.unwrap_err().to_string();
        assert!(e.contains("stalled"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(!t.vault.file("db-1", SEG).exists());
        // Crawling: a byte every 50 ms is within `idle` but below the rate.
        let t = setup(Limits {
            grace: Duration::from_millis(500),
            ..Limits::DEFAULT
        });
        let start = Instant::now();
        let s = UnixStream::connect(&t.sock).unwrap();
        (&s).write_all(&request_line("secret", 1000)).unwrap();
        let mut w = s.try_clone().unwrap();
        let drip = std::thread::spawn(move || {
            for _ in 0..1000 {
                if w.write_all(&[1]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (a, _) = answer_then_closed(&s);
        let e = a.unwrap_err().to_string();
        assert!(e.contains("too slow"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        drip.join().unwrap();
        assert!(!t.vault.file("db-1", SEG).exists());
        wait_busy(&t.listener, 0);
    }

    #[test]
    fn the_33rd_connection_is_refused() {
        let t = setup(Limits::DEFAULT);
        let held: Vec<UnixStream> = (0..32)
            .map(|_| UnixStream::connect(&t.sock).unwrap())
            .collect();
        wait_busy(&t.listener, 32);
        let s = UnixStream::connect(&t.sock).unwrap();
        let (a, after) = answer_then_closed(&s);
        let e = a.unwrap_err().to_string();
        assert!(e.contains("busy"), "{e}");
        assert_eq!(after.unwrap(), 0);
        assert_eq!(t.listener.busy(), 32);
        drop(held);
        wait_busy(&t.listener, 0);
        let src = t.dir.path().join("seg");
        std::fs::write(&src, b"after").unwrap();
        wal_push(&t.sock, "db-1", &t.token, &src, SEG).unwrap();
    }

    // ----- a fetch delivers a whole authenticated file or nothing ------------

    #[test]
    fn a_tampered_archive_leaves_no_file() {
        let t = setup(Limits::DEFAULT);
        let src = t.dir.path().join("seg");
        random_file(&src, 3 * CHUNK + 5, 7);
        wal_push(&t.sock, "db-1", &t.token, &src, SEG).unwrap();
        let stored = t.vault.file("db-1", SEG);
        let good = std::fs::read(&stored).unwrap();
        let dst = t.dir.path().join("RECOVERYXLOG");
        let tmp = t.dir.path().join("RECOVERYXLOG.atrest-tmp");
        let len = good.len();
        // A flipped byte in the last chunk (three chunks were sent before
        // it failed), in the second, a cut final chunk, a byte appended.
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for at in [len - 3, len - 2 * CHUNK] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            cases.push(bad);
        }
        cases.push(good[..len - 21].to_vec());
        let mut longer = good.clone();
        longer.push(0);
        cases.push(longer);
        for (i, bad) in cases.iter().enumerate() {
            std::fs::write(&stored, bad).unwrap();
            let e = wal_fetch(&t.sock, "db-1", &t.token, SEG, &dst).unwrap_err();
            assert!(matches!(e, AgentError::Failed(_)), "case {i}: {e}");
            assert!(
                ["authentication", "truncated", "follows"]
                    .iter()
                    .any(|w| e.to_string().contains(w)),
                "case {i}: {e}"
            );
            assert!(!dst.exists(), "case {i}");
            assert!(!tmp.exists(), "case {i}");
        }
        std::fs::write(&stored, &good).unwrap();
        wal_fetch(&t.sock, "db-1", &t.token, SEG, &dst).unwrap();
        assert!(same_files(&src, &dst));
    }

    #[test]
    fn an_answer_without_frames_is_refused() {
        // The previous release's server: a size, then the bytes.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("old.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(&s);
            read_line(&mut r).unwrap();
            (&s).write_all(b"{\"ok\":true,\"size\":5}\nhello").unwrap();
        });
        let token = dir.path().join("token");
        std::fs::write(&token, "secret").unwrap();
        let dst = dir.path().join("RECOVERYXLOG");
        let e = wal_fetch(&sock, "db-1", &token, SEG, &dst).unwrap_err();
        assert!(e.to_string().contains("another release"), "{e}");
        assert!(!dst.exists());
        server.join().unwrap();
    }

    #[test]
    fn a_fetch_cut_midway_leaves_no_file() {
        // A server that sends a frame, then goes away without its verdict.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cut.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            for ending in [&b""[..], &[0, 0, 0, 0][..], &[0, 0x10, 0, 1][..]] {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(&s);
                read_line(&mut r).unwrap();
                let mut out = b"{\"ok\":true,\"framed\":true}\n\0\0\0\x03abc".to_vec();
                out.extend_from_slice(ending);
                (&s).write_all(&out).unwrap();
            }
        });
        let token = dir.path().join("token");
        std::fs::write(&token, "secret").unwrap();
        let dst = dir.path().join("RECOVERYXLOG");
        for _ in 0..3 {
            let e = wal_fetch(&sock, "db-1", &token, SEG, &dst).unwrap_err();
            assert!(matches!(e, AgentError::Failed(_)), "{e}");
            assert!(!dst.exists());
            assert!(!dir.path().join("RECOVERYXLOG.atrest-tmp").exists());
        }
        server.join().unwrap();
    }
}
