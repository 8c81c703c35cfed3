//! The WAL agent: PostgreSQL's `archive_command` and `restore_command`
//! run `atrest db-agent wal-push|wal-fetch`, which talks to the server
//! over a Unix socket (`<run dir>/agent.sock`). The server encrypts what
//! it is given into backup storage, and decrypts what is asked for; the
//! agent never sees a key.
//!
//! # Protocol
//!
//! One connection, one request. The client sends a JSON line
//! `{"op":"wal-push"|"wal-fetch","instance":ID,"token":HEX,"name":FILE}`
//! (a push adds `"size":N` and is followed by the file's N bytes). The
//! server answers a JSON line `{"ok":true}` (a fetch adds `"size":N`,
//! followed by N bytes) or `{"ok":false,"missing":BOOL,"error":TEXT}`.
//!
//! # Who may connect
//!
//! The socket is mode 0666, but the server serves a request for an
//! instance only when the peer's uid (SO_PEERCRED) is that instance's own
//! OS user (or root) and the request carries the instance's token: 32
//! random bytes, kept in `agent/agent.token` on the instance's encrypted
//! disk (readable by that OS user only); the server keeps its SHA-256 in
//! the instance's record. Both are checked before anything after the
//! request line is read: a refused client costs one line.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::DbService;

/// Largest file the agent moves (PostgreSQL's largest WAL segment).
const MAX_FILE: u64 = 1 << 30;
/// Longest request or answer line.
const MAX_LINE: u64 = 64 * 1024;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 32;
/// How long one side waits for the other.
const IO_TIMEOUT: Duration = Duration::from_secs(300);

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What the server side does with requests (the database service).
pub(crate) trait Handler: Send + Sync {
    /// Whether a client of uid `peer` presenting `token` may act for
    /// `instance` (checked before the request's body is read).
    fn authorize(&self, instance: &str, token: &str, peer: u32) -> Result<(), String>;
    /// Stores `data` as WAL file `name` of `instance`.
    fn wal_push(&self, instance: &str, token: &str, name: &str, data: &[u8]) -> Result<(), String>;
    /// WAL file `name` for `instance`; `Ok(None)` if it is not archived.
    fn wal_fetch(&self, instance: &str, token: &str, name: &str)
    -> Result<Option<Vec<u8>>, String>;
}

impl Handler for DbService {
    fn authorize(&self, instance: &str, token: &str, peer: u32) -> Result<(), String> {
        self.agent_authorize(instance, token, peer)
            .map_err(|e| e.to_string())
    }

    fn wal_push(&self, instance: &str, token: &str, name: &str, data: &[u8]) -> Result<(), String> {
        self.agent_push(instance, token, name, data)
            .map_err(|e| e.to_string())
    }

    fn wal_fetch(
        &self,
        instance: &str,
        token: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        self.agent_fetch(instance, token, name)
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
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Listens at `path` and serves `handler` until stopped.
    pub(crate) fn start<H: Handler + 'static>(
        path: &Path,
        handler: Weak<H>,
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
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("db-agent".into())
            .spawn(move || accept_loop(&listener, &handler, &s))?;
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
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
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

fn accept_loop<H: Handler + 'static>(
    listener: &UnixListener,
    handler: &Weak<H>,
    stop: &AtomicBool,
) {
    let busy = Arc::new(AtomicUsize::new(0));
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
        let Some(h) = handler.upgrade() else { break };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::SeqCst);
            let mut s = stream;
            let _ = reply(&mut s, &failure("the server is busy; try again", false));
            continue;
        }
        let b = Arc::clone(&busy);
        let spawned = std::thread::Builder::new()
            .name("db-agent-conn".into())
            .spawn(move || {
                serve(&*h, stream);
                b.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            busy.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(error = %e, "cannot start a WAL agent connection thread");
        }
    }
}

fn failure(msg: &str, missing: bool) -> Answer {
    Answer {
        ok: false,
        missing,
        size: None,
        error: Some(msg.to_owned()),
    }
}

fn reply(s: &mut UnixStream, a: &Answer) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(a).map_err(std::io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    r.take(MAX_LINE).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no complete line",
        ));
    }
    Ok(line)
}

fn serve(h: &dyn Handler, mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let uid =
        match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(c) => c.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the WAL agent's credentials");
                return;
            }
        };
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(read_half);
    let answer = match read_line(&mut r)
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
        Ok(req) if req.op == "wal-push" => {
            let size = req.size.unwrap_or(0);
            if size > MAX_FILE {
                failure("the file is too large", false)
            } else {
                // Grown as the bytes arrive: the size is the client's word.
                let mut data = Vec::new();
                match (&mut r).take(size).read_to_end(&mut data) {
                    Ok(n) if n as u64 == size => {
                        match h.wal_push(&req.instance, &req.token, &req.name, &data) {
                            Ok(()) => Answer {
                                ok: true,
                                ..Answer::default()
                            },
                            Err(e) => {
                                tracing::warn!(instance = %req.instance, file = %req.name, error = %e, "archiving a WAL file failed");
                                failure(&e, false)
                            }
                        }
                    }
                    Ok(_) => failure("the file ended early", false),
                    Err(e) => failure(&format!("reading the file: {e}"), false),
                }
            }
        }
        Ok(req) if req.op == "wal-fetch" => {
            match h.wal_fetch(&req.instance, &req.token, &req.name) {
                Ok(Some(data)) => {
                    let head = Answer {
                        ok: true,
                        size: Some(data.len() as u64),
                        ..Answer::default()
                    };
                    if reply(&mut stream, &head)
                        .and_then(|()| stream.write_all(&data))
                        .is_err()
                    {
                        tracing::warn!(instance = %req.instance, "sending a WAL file to the agent failed");
                    }
                    return;
                }
                Ok(None) => failure(&format!("{} is not in the archive", req.name), true),
                Err(e) => {
                    tracing::warn!(instance = %req.instance, file = %req.name, error = %e, "fetching a WAL file failed");
                    failure(&e, false)
                }
            }
        }
        Ok(req) => failure(&format!("unknown operation '{}'", req.op), false),
    };
    let _ = reply(&mut stream, &answer);
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

fn send_request(s: &mut UnixStream, req: &Request) -> Result<(), AgentError> {
    let mut line = serde_json::to_vec(req).map_err(|e| AgentError::Failed(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| AgentError::Failed(format!("sending the request: {e}")))
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

/// `archive_command`: sends `path` to be archived as `name`.
pub fn wal_push(
    socket: &Path,
    instance: &str,
    token_file: &Path,
    path: &Path,
    name: &str,
) -> Result<(), AgentError> {
    let token = read_token(token_file)?;
    let data = std::fs::read(path)
        .map_err(|e| AgentError::Failed(format!("reading {}: {e}", path.display())))?;
    let mut s = connect(socket)?;
    send_request(
        &mut s,
        &Request {
            op: "wal-push".into(),
            instance: instance.to_owned(),
            token: token.to_string(),
            name: name.to_owned(),
            size: Some(data.len() as u64),
        },
    )?;
    s.write_all(&data)
        .map_err(|e| AgentError::Failed(format!("sending {}: {e}", path.display())))?;
    read_answer(&mut BufReader::new(s)).map(drop)
}

/// `restore_command`: fetches archived `name` into `path`.
pub fn wal_fetch(
    socket: &Path,
    instance: &str,
    token_file: &Path,
    name: &str,
    path: &Path,
) -> Result<(), AgentError> {
    let token = read_token(token_file)?;
    let mut s = connect(socket)?;
    send_request(
        &mut s,
        &Request {
            op: "wal-fetch".into(),
            instance: instance.to_owned(),
            token: token.to_string(),
            name: name.to_owned(),
            size: None,
        },
    )?;
    let mut r = BufReader::new(s);
    let a = read_answer(&mut r)?;
    let size = a.size.unwrap_or(0);
    if size > MAX_FILE {
        return Err(AgentError::Failed("the answer is too large".into()));
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let n = (&mut r)
        .take(size)
        .read_to_end(&mut data)
        .map_err(|e| AgentError::Failed(format!("receiving {name}: {e}")))?;
    if n as u64 != size {
        return Err(AgentError::Failed(format!("{name} ended early")));
    }
    let tmp = path.with_extension("atrest-tmp");
    std::fs::write(&tmp, &data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            AgentError::Failed(format!("writing {}: {e}", path.display()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    struct Echo {
        store: std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
    }

    impl Handler for Echo {
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
            data: &[u8],
        ) -> Result<(), String> {
            if token != "secret" {
                return Err("bad token".into());
            }
            self.store
                .lock()
                .unwrap()
                .insert(format!("{instance}/{name}"), data.to_vec());
            Ok(())
        }
        fn wal_fetch(
            &self,
            instance: &str,
            token: &str,
            name: &str,
        ) -> Result<Option<Vec<u8>>, String> {
            if token != "secret" {
                return Err("bad token".into());
            }
            Ok(self
                .store
                .lock()
                .unwrap()
                .get(&format!("{instance}/{name}"))
                .cloned())
        }
    }

    #[test]
    fn push_and_fetch_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let h = Arc::new(Echo {
            store: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        });
        let weak: Weak<Echo> = Arc::downgrade(&h);
        let mut l = Listener::start(&sock, weak).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "secret\n").unwrap();
        let src = dir.path().join("seg");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let name = "000000010000000000000001";
        wal_push(&sock, "db-1", &token, &src, name).unwrap();
        // Refused by authorization: nothing is stored.
        assert!(wal_push(&sock, "db-other", &token, &src, name).is_err());
        assert!(
            h.store
                .lock()
                .unwrap()
                .keys()
                .all(|k| !k.starts_with("db-other"))
        );
        let dst = dir.path().join("RECOVERYXLOG");
        wal_fetch(&sock, "db-1", &token, name, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        assert!(matches!(
            wal_fetch(&sock, "db-1", &token, "000000010000000000000002", &dst),
            Err(AgentError::Missing(_))
        ));
        assert!(matches!(
            wal_fetch(&sock, "db-1", &token, "../x", &dst),
            Err(AgentError::Failed(_))
        ));
        std::fs::write(&token, "wrong").unwrap();
        assert!(matches!(
            wal_push(&sock, "db-1", &token, &src, name),
            Err(AgentError::Failed(_))
        ));
        l.stop();
        assert!(!sock.exists());
    }
}
