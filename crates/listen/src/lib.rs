//! Accepting connections: one loop for every TCP listener atrest opens (the
//! HTTP API, the metrics endpoint, NBD), with one set of limits and one
//! drain policy.
//!
//! Owns: the accept loop; the limits on open connections, per listener and
//! per client address; the refusal of a connection over a limit; the drain
//! at shutdown; [`Guarded`], the deadlines on a connection's reads and
//! writes; raising the process's file descriptor limit.
//! Knows nothing of HTTP, TLS or NBD: a listener's [`Protocol`] serves a
//! connection and says what a refused one is told.
//!
//! # Admission
//!
//! The loop accepts every connection the kernel queues, at once, and only
//! then decides: a connection over [`Limits::max_connections`] (open
//! connections of this listener) or over [`Limits::max_per_address`] (open
//! connections of its client address; IPv6 addresses count by their /64)
//! is refused: the protocol's answer for the reason is written without
//! reading anything (the socket's send buffer takes it whole, or it is
//! cut), the write side is shut, and the socket lingers a moment reading
//! and discarding what the client had sent, so that closing it does not
//! reset the connection before the client reads the answer. At most
//! [`LINGER_MAX`] refused sockets linger at once, each for at most
//! [`LINGER`]; past that, refused sockets are closed at once. Accepting
//! before deciding keeps the kernel's queue empty: a client under the
//! limits is never stuck behind connections that will be refused.
//!
//! # Memory after a burst
//!
//! A burst of connections (thousands of stalled clients, each with its
//! buffers and TLS state) makes the allocator grow its heaps on many
//! threads, and an allocator keeps freed pages for reuse, so resident
//! memory stays at the burst's peak. When a listener that held at least
//! [`TRIM_AFTER`] connections at once is empty again, it counts a burst's
//! end ([`bursts_ended`]) and asks glibc's `malloc` to give its free pages
//! back (`malloc_trim`, on a thread of its own: C libraries allocate
//! there). An allocator with a heap per thread cannot be trimmed from
//! another thread: the program that chose it watches [`bursts_ended`] from
//! each of its threads (the `atrest` binary does from every runtime worker
//! as it goes idle), so that the server's memory returns to its steady
//! state after every burst instead of ratcheting up with the worst
//! interleaving seen.
//!
//! # Drain
//!
//! When the server stops, the loop stops accepting and closes the listener;
//! each connection is told (through the same stop signal) and finishes the
//! request it is on. Those still open after [`Limits::drain`] are cut.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

mod guard;

pub use guard::{Activity, Deadlines, Guarded};

/// Refused sockets that may linger at once (see the module doc).
pub const LINGER_MAX: usize = 256;
/// How long a refused socket lingers, at most.
pub const LINGER: Duration = Duration::from_secs(1);
/// The most a lingering socket reads before it is closed.
const LINGER_BYTES: usize = 64 * 1024;

/// A listener's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; one more is refused ([`Refusal::Busy`]).
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 address
    /// counts by its /64); one more is refused ([`Refusal::PerAddress`]).
    pub max_per_address: usize,
    /// How long, at shutdown, open connections may take to finish the
    /// request they are on before they are cut.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_address: DEFAULT_MAX_PER_ADDRESS,
            drain: DEFAULT_DRAIN,
        }
    }
}

/// [`Limits::max_connections`]'s default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// [`Limits::max_per_address`]'s default.
pub const DEFAULT_MAX_PER_ADDRESS: usize = 256;
/// [`Limits::drain`]'s default.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener has [`Limits::max_connections`] open.
    Busy,
    /// The client's address has [`Limits::max_per_address`] open.
    PerAddress,
}

/// A boxed connection future.
pub type ConnectionFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a listener speaks.
pub trait Protocol: Send + Sync + 'static {
    /// Serves one admitted connection until it ends or `stopped` turns
    /// true (then it finishes the request it is on and returns).
    fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stopped: watch::Receiver<bool>,
    ) -> ConnectionFuture;

    /// The complete answer a refused connection is sent before it is
    /// closed, if the protocol has one it can send unprompted (plain HTTP
    /// does; TLS and NBD do not: theirs are just closed).
    fn refusal(&self, why: Refusal) -> Option<&'static [u8]>;
}

/// What a listener has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_busy: AtomicU64,
    refused_per_address: AtomicU64,
}

/// A reading of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections open now.
    pub open: u64,
    /// Connections admitted since the start.
    pub accepted: u64,
    /// Connections refused because the listener was full.
    pub refused_busy: u64,
    /// Connections refused because their address was.
    pub refused_per_address: u64,
}

impl Stats {
    /// The counts now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            open: self.open.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused_busy: self.refused_busy.load(Ordering::Relaxed),
            refused_per_address: self.refused_per_address.load(Ordering::Relaxed),
        }
    }
}

/// The address a client is counted under: an IPv4 address, or the /64 of an
/// IPv6 one (one host usually holds a whole /64). IPv4-mapped IPv6
/// addresses count as their IPv4 address.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

/// The open connections of one listener.
struct Table {
    limits: Limits,
    stats: Arc<Stats>,
    by_address: Mutex<HashMap<IpAddr, usize>>,
    /// The most connections open at once since the listener was last
    /// empty.
    peak: AtomicU64,
}

/// Connections a listener must have held at once for its emptying to give
/// the allocator's free memory back.
pub const TRIM_AFTER: u64 = 64;

/// Bursts ended so far, process-wide (see the module doc).
static BURSTS_ENDED: AtomicU64 = AtomicU64::new(0);

/// How many times, since the process started, a listener that held at
/// least [`TRIM_AFTER`] connections at once has become empty again. A
/// thread that sees this number change should give its allocator's free
/// pages back.
pub fn bursts_ended() -> u64 {
    BURSTS_ENDED.load(Ordering::Relaxed)
}

/// An admitted connection's place in its [`Table`]; freed when dropped.
struct Slot {
    table: Arc<Table>,
    key: IpAddr,
}

impl Table {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = address_key(ip);
        let mut by_address = self
            .by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = self.stats.open.load(Ordering::Relaxed);
        if open >= self.limits.max_connections as u64 {
            return Err(Refusal::Busy);
        }
        let n = by_address.entry(key).or_insert(0);
        if *n >= self.limits.max_per_address {
            return Err(Refusal::PerAddress);
        }
        *n += 1;
        let now = self.stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Ok(Slot {
            table: Arc::clone(self),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_address = self
            .table
            .by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = by_address.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                by_address.remove(&self.key);
            }
        }
        self.table.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections on `listener` and serves each with `protocol` within
/// `limits` until `stopped` turns true; then drains (see the module doc)
/// and returns. `name` names the listener in logs.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    protocol: Arc<dyn Protocol>,
    stats: Arc<Stats>,
    mut stopped: watch::Receiver<bool>,
) {
    let table = Arc::new(Table {
        limits,
        stats: Arc::clone(&stats),
        by_address: Mutex::new(HashMap::new()),
        peak: AtomicU64::new(0),
    });
    let lingering = Arc::new(Semaphore::new(LINGER_MAX));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            // A finished connection's task is reaped at once, so that its
            // memory is freed now and not at the next accept.
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                if connections.is_empty() && table.peak.swap(0, Ordering::Relaxed) >= TRIM_AFTER {
                    BURSTS_ENDED.fetch_add(1, Ordering::Relaxed);
                    heap::trim();
                }
                continue;
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        match table.admit(peer.ip()) {
            Ok(slot) => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let served = protocol.serve(stream, peer, stopped.clone());
                connections.spawn(async move {
                    let _slot = slot;
                    served.await;
                });
            }
            Err(why) => {
                let counter = match why {
                    Refusal::Busy => &stats.refused_busy,
                    Refusal::PerAddress => &stats.refused_per_address,
                };
                // One line per thousand: a flood must not become a log flood.
                if counter.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                    tracing::warn!(listener = name, %peer, reason = ?why, "refusing connections over the limit");
                }
                refuse(stream, protocol.refusal(why), &lingering);
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            listener = name,
            left = connections.len(),
            "cutting connections that did not finish in time"
        );
        connections.shutdown().await;
    }
}

/// Writes `answer` without waiting, shuts the write side, and lets the
/// socket linger (if a lingering place is free) before it is closed.
fn refuse(mut stream: TcpStream, answer: Option<&'static [u8]>, lingering: &Arc<Semaphore>) {
    let Some(answer) = answer else {
        return;
    };
    // A fresh socket's send buffer takes a short answer whole.
    if !matches!(stream.try_write(answer), Ok(n) if n == answer.len()) {
        return;
    }
    let Ok(permit) = Arc::clone(lingering).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut read = 0usize;
        let _ = tokio::time::timeout(LINGER, async {
            while read < LINGER_BYTES {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
        })
        .await;
    });
}

/// The accept queue's length asked of the kernel (which caps it at
/// `net.core.somaxconn`, 4096 by default): a burst of connections waits
/// there for the loop, which drains it without waiting on anything.
pub const BACKLOG: u32 = 4096;

/// Binds a listener on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, so a
/// restarted server can bind while old connections linger in TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Raises the soft limit on open files to the hard limit, so that the
/// connection limits (not the default soft limit of 1024) bound the
/// connections; returns the limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    rlimit::raise()
}

mod rlimit {
    #![allow(unsafe_code)] // getrlimit/setrlimit; every block has a SAFETY comment.
    /// See [`super::raise_open_files_limit`].
    pub(super) fn raise() -> std::io::Result<u64> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given, which lives here.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: setrlimit reads the struct it is given.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim = raised;
        }
        Ok(lim.rlim_cur)
    }
}

mod heap {
    #![allow(unsafe_code)] // malloc_trim; the block has a SAFETY comment.

    /// Gives the allocator's free pages back to the system, on a thread of
    /// its own (it walks every arena). glibc only; elsewhere nothing.
    pub(super) fn trim() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let spawned = std::thread::Builder::new()
                .name("heap-trim".into())
                // SAFETY: malloc_trim takes no pointer and may be called from
                // any thread at any time; it only releases free memory.
                .spawn(|| unsafe {
                    libc::malloc_trim(0);
                });
            if let Err(e) = spawned {
                tracing::debug!(error = %e, "cannot start the heap trim thread");
            }
        }
    }
}

#[cfg(test)]
mod tests;
