//! The NBD server end to end: `serve` on a loopback port over an in-memory
//! test-double backend, spoken to by a small raw client that builds every
//! message with the crate's own encoders and parses every reply by hand.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrest_nbd::negotiate::{self, info, opt, rep, tflag};
use atrest_nbd::server::{
    self, Backend, BoxStream, ClientIdentity, Config, Export, ExportInfo, IoError, Refused,
    Session, StartTls, TlsFuture,
};
use atrest_nbd::transmit::{
    Request, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, cflag, chunk, cmd, errno,
};
use atrest_nbd::{IHAVEOPT, MAX_OPTION_LEN, NBD_MAGIC, REPLY_MAGIC, handshake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long any single read from the server may take before the test fails
/// (a hang is a failure, not a stuck CI job).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The test double: exports in memory.

/// One in-memory export: its bytes behind a mutex, and what was asked of it.
struct MemExport {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    multi_conn: bool,
    block_size: u32,
    description: String,
    flushes: AtomicUsize,
    fua_writes: AtomicUsize,
    trims: AtomicUsize,
    write_zeroes: AtomicUsize,
    /// Makes every read fail with `EIO` (to see backend errors reach the
    /// client).
    fail_reads: AtomicBool,
    /// Makes every write fail with an I/O error of this kind, turned into
    /// the reply's errno by `IoError::from` (a full pool, say).
    fail_writes: Mutex<Option<std::io::ErrorKind>>,
}

impl MemExport {
    fn new(size: usize, read_only: bool, multi_conn: bool) -> Self {
        Self {
            data: Mutex::new(vec![0; size]),
            read_only,
            multi_conn,
            block_size: 512,
            description: "an in-memory test disk".into(),
            flushes: AtomicUsize::new(0),
            fua_writes: AtomicUsize::new(0),
            trims: AtomicUsize::new(0),
            write_zeroes: AtomicUsize::new(0),
            fail_reads: AtomicBool::new(false),
            fail_writes: Mutex::new(None),
        }
    }

    fn with_pattern(self, seed: u8) -> Self {
        let mut d = self.data.lock().unwrap();
        let p = pattern(d.len(), seed);
        d.copy_from_slice(&p);
        drop(d);
        self
    }

    fn snapshot(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }

    /// The range, or the error a server bug (an unchecked range) earns.
    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, IoError> {
        let size = self.data.lock().unwrap().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(IoError {
                errno: errno::EIO,
                message: format!("test double: {len} bytes at {offset} passed the server's checks"),
            }),
        }
    }

    fn zero(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let r = self.range(offset, len)?;
        self.data.lock().unwrap()[r].fill(0);
        Ok(())
    }
}

impl Export for MemExport {
    fn info(&self) -> ExportInfo {
        ExportInfo {
            size: self.data.lock().unwrap().len() as u64,
            block_size: self.block_size,
            read_only: self.read_only,
            multi_conn: self.multi_conn,
            description: self.description.clone(),
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(IoError {
                errno: errno::EIO,
                message: "injected read failure".into(),
            });
        }
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.lock().unwrap()[r]);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        if let Some(kind) = *self.fail_writes.lock().unwrap() {
            return Err(std::io::Error::new(kind, "injected write failure").into());
        }
        let r = self.range(offset, data.len() as u64)?;
        self.data.lock().unwrap()[r].copy_from_slice(data);
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<(), IoError> {
        self.trims.fetch_add(1, Ordering::SeqCst);
        self.zero(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<(), IoError> {
        self.write_zeroes.fetch_add(1, Ordering::SeqCst);
        self.zero(offset, len)
    }

    fn flush(&self) -> Result<(), IoError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The test-double backend: named in-memory exports, some of them refused
/// by policy, and every session it was asked about.
struct MemBackend {
    exports: BTreeMap<String, Arc<MemExport>>,
    locked: HashSet<String>,
    sessions: Mutex<Vec<Session>>,
}

/// Size of the `disk` export.
const DISK_SIZE: usize = 1 << 20;
/// Size of the read-only `ro` export.
const RO_SIZE: usize = 64 << 10;

impl MemBackend {
    /// `disk` (1 MiB, writable, multi-conn), `ro` (64 KiB of a pattern,
    /// read-only) and `locked` (refused by policy).
    fn standard() -> Self {
        let mut exports = BTreeMap::new();
        exports.insert(
            "disk".to_owned(),
            Arc::new(MemExport::new(DISK_SIZE, false, true)),
        );
        exports.insert(
            "ro".to_owned(),
            Arc::new(MemExport::new(RO_SIZE, true, false).with_pattern(7)),
        );
        exports.insert(
            "locked".to_owned(),
            Arc::new(MemExport::new(4096, false, false)),
        );
        Self {
            exports,
            locked: HashSet::from(["locked".to_owned()]),
            sessions: Mutex::new(Vec::new()),
        }
    }

    fn export(&self, name: &str) -> Arc<MemExport> {
        Arc::clone(&self.exports[name])
    }

    fn sessions(&self) -> Vec<Session> {
        self.sessions.lock().unwrap().clone()
    }

    fn find(&self, session: &Session, name: &str) -> Result<Arc<MemExport>, Refused> {
        self.sessions.lock().unwrap().push(session.clone());
        let Some(e) = self.exports.get(name) else {
            return Err(Refused::Unknown(format!("no export named {name:?}")));
        };
        if self.locked.contains(name) {
            return Err(Refused::Policy(format!(
                "locked: {name} is locked by its owner"
            )));
        }
        Ok(Arc::clone(e))
    }
}

impl Backend for MemBackend {
    fn list(&self, session: &Session) -> Result<Vec<String>, Refused> {
        self.sessions.lock().unwrap().push(session.clone());
        Ok(self.exports.keys().cloned().collect())
    }

    fn describe(&self, session: &Session, name: &str) -> Result<ExportInfo, Refused> {
        Ok(self.find(session, name)?.info())
    }

    fn open(&self, session: &Session, name: &str) -> Result<Arc<dyn Export>, Refused> {
        let e: Arc<dyn Export> = self.find(session, name)?;
        Ok(e)
    }
}

/// A "TLS" test double: hands the same stream back and says the client
/// proved the PSK identity `test`.
struct PlainTls;

impl StartTls for PlainTls {
    fn handshake(&self, stream: BoxStream) -> TlsFuture {
        Box::pin(async move { Ok((stream, ClientIdentity::Psk("test".into()))) })
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

// ---------------------------------------------------------------------------
// The server under test.

struct Harness {
    addr: SocketAddr,
    backend: Arc<MemBackend>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Harness {
    async fn start() -> Self {
        Self::with(Config::default(), MemBackend::standard()).await
    }

    async fn with(config: Config, backend: MemBackend) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = Arc::new(backend);
        let (stop, stopped) = watch::channel(false);
        let dyn_backend: Arc<dyn Backend> = Arc::clone(&backend) as Arc<dyn Backend>;
        let task = tokio::spawn(server::serve(
            listener,
            Arc::new(config),
            dyn_backend,
            Arc::default(),
            stopped,
        ));
        Self {
            addr,
            backend,
            stop,
            task,
        }
    }

    /// A client past the handshake (fixed newstyle, no zeroes).
    async fn client(&self) -> Client {
        Client::handshake(
            self.addr,
            handshake::C_FIXED_NEWSTYLE | handshake::C_NO_ZEROES,
        )
        .await
    }

    /// A client in transmission on `name`, with simple replies.
    async fn attached(&self, name: &str) -> Client {
        let mut c = self.client().await;
        c.go(name).await;
        c
    }

    /// Stops the server and waits for `serve` to return.
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(IO_TIMEOUT, self.task)
            .await
            .expect("serve returns after the stop signal")
            .expect("serve does not panic");
    }
}

// ---------------------------------------------------------------------------
// A raw NBD client.

/// One option reply.
#[derive(Debug)]
struct OptReply {
    option: u32,
    ty: u32,
    data: Vec<u8>,
}

impl OptReply {
    fn text(&self) -> String {
        String::from_utf8(self.data.clone()).unwrap()
    }
}

/// One structured reply chunk.
#[derive(Debug)]
struct Chunk {
    flags: u16,
    ty: u16,
    cookie: u64,
    payload: Vec<u8>,
}

struct Client {
    s: TcpStream,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().unwrap())
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
fn info_payload(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut p = u32::try_from(name.len()).unwrap().to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&u16::try_from(requests.len()).unwrap().to_be_bytes());
    for r in requests {
        p.extend_from_slice(&r.to_be_bytes());
    }
    p
}

fn option_header(option: u32, len: u32) -> Vec<u8> {
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            s: TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// Connects, checks the greeting and sends `flags`.
    async fn handshake(addr: SocketAddr, flags: u32) -> Self {
        let mut c = Self::connect(addr).await;
        let g = c.read(18).await;
        assert_eq!(g, negotiate::greeting());
        c.write(&flags.to_be_bytes()).await;
        c
    }

    async fn write(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    async fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        tokio::time::timeout(IO_TIMEOUT, self.s.read_exact(&mut b))
            .await
            .expect("the server answers in time")
            .expect("the connection is open");
        b
    }

    /// The server closed the connection (EOF or reset), with nothing more
    /// to say.
    async fn expect_closed(&mut self) {
        let mut b = [0u8; 256];
        match tokio::time::timeout(IO_TIMEOUT, self.s.read(&mut b))
            .await
            .expect("the server closes the connection in time")
        {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("expected the connection closed, got {:02x?}", &b[..n]),
        }
    }

    async fn option(&mut self, option: u32, payload: &[u8]) {
        let mut b = option_header(option, u32::try_from(payload.len()).unwrap());
        b.extend_from_slice(payload);
        self.write(&b).await;
    }

    async fn reply(&mut self) -> OptReply {
        let h = self.read(20).await;
        assert_eq!(be64(&h), REPLY_MAGIC, "option reply magic");
        let len = be32(&h[16..]) as usize;
        OptReply {
            option: be32(&h[8..]),
            ty: be32(&h[12..]),
            data: self.read(len).await,
        }
    }

    /// Sends `option` and reads replies through the final one (an ACK or an
    /// error).
    async fn ask(&mut self, option: u32, payload: &[u8]) -> Vec<OptReply> {
        self.option(option, payload).await;
        let mut out = Vec::new();
        loop {
            let r = self.reply().await;
            assert_eq!(r.option, option, "the reply names its option");
            let last = r.ty == rep::ACK || r.ty & (1 << 31) != 0;
            out.push(r);
            if last {
                return out;
            }
        }
    }

    /// Sends `option` and expects exactly one reply of type `ty`.
    async fn ask_one(&mut self, option: u32, payload: &[u8], ty: u32) -> OptReply {
        let mut r = self.ask(option, payload).await;
        assert_eq!(r.len(), 1, "{r:?}");
        let r = r.pop().unwrap();
        assert_eq!(r.ty, ty, "reply type for option {option}: {r:?}");
        r
    }

    /// `NBD_OPT_GO` on `name`; answers the size and transmission flags.
    async fn go(&mut self, name: &str) -> (u64, u16) {
        let replies = self.ask(opt::GO, &info_payload(name, &[])).await;
        let (last, infos) = replies.split_last().unwrap();
        assert_eq!(last.ty, rep::ACK, "GO {name}: {replies:?}");
        let export = infos
            .iter()
            .find(|r| r.ty == rep::INFO && be16(&r.data) == info::EXPORT)
            .expect("GO answers NBD_INFO_EXPORT");
        assert_eq!(export.data.len(), 12);
        (be64(&export.data[2..]), be16(&export.data[10..]))
    }

    async fn request(&mut self, flags: u16, ty: u16, cookie: u64, offset: u64, length: u32) {
        self.write(&Request::encode(flags, ty, cookie, offset, length))
            .await;
    }

    async fn write_req(&mut self, flags: u16, cookie: u64, offset: u64, data: &[u8]) {
        let mut b = Request::encode(flags, cmd::WRITE, cookie, offset, data.len() as u32).to_vec();
        b.extend_from_slice(data);
        self.write(&b).await;
    }

    /// A simple reply header: (errno, cookie).
    async fn simple(&mut self) -> (u32, u64) {
        let h = self.read(16).await;
        assert_eq!(be32(&h), SIMPLE_REPLY_MAGIC, "simple reply magic: {h:02x?}");
        (be32(&h[4..]), be64(&h[8..]))
    }

    /// Sends a request and reads its simple reply's errno.
    async fn call(&mut self, flags: u16, ty: u16, cookie: u64, offset: u64, length: u32) -> u32 {
        self.request(flags, ty, cookie, offset, length).await;
        let (e, c) = self.simple().await;
        assert_eq!(c, cookie);
        e
    }

    async fn write_at(&mut self, flags: u16, cookie: u64, offset: u64, data: &[u8]) -> u32 {
        self.write_req(flags, cookie, offset, data).await;
        let (e, c) = self.simple().await;
        assert_eq!(c, cookie);
        e
    }

    /// A READ that must succeed, with simple replies.
    async fn read_at(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let e = self.call(0, cmd::READ, cookie, offset, len).await;
        assert_eq!(e, 0, "READ {len} bytes at {offset}");
        self.read(len as usize).await
    }

    async fn chunk(&mut self) -> Chunk {
        let h = self.read(20).await;
        assert_eq!(
            be32(&h),
            STRUCTURED_REPLY_MAGIC,
            "structured reply magic: {h:02x?}"
        );
        let len = be32(&h[16..]) as usize;
        Chunk {
            flags: be16(&h[4..]),
            ty: be16(&h[6..]),
            cookie: be64(&h[8..]),
            payload: self.read(len).await,
        }
    }

    async fn disc(&mut self) {
        self.request(0, cmd::DISC, 0, 0, 0).await;
        self.expect_closed().await;
    }
}

/// Asserts a structured ERROR chunk: final, for `cookie`, with `errno` and
/// a message containing `text`.
fn assert_error_chunk(c: &Chunk, cookie: u64, want: u32, text: &str) {
    assert_eq!(c.flags, chunk::FLAG_DONE, "{c:?}");
    assert_eq!(c.ty, chunk::ERROR, "{c:?}");
    assert_eq!(c.cookie, cookie);
    assert_eq!(be32(&c.payload), want, "errno");
    let len = usize::from(be16(&c.payload[4..]));
    assert_eq!(c.payload.len(), 6 + len, "message length");
    let msg = std::str::from_utf8(&c.payload[6..]).unwrap();
    assert!(msg.contains(text), "{msg:?} should contain {text:?}");
}

// ---------------------------------------------------------------------------
// 1. The handshake.

#[tokio::test]
async fn greeting_bytes_then_abort() {
    let h = Harness::start().await;
    let mut c = Client::connect(h.addr).await;
    let g = c.read(18).await;
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(be64(&g), NBD_MAGIC);
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(
        be16(&g[16..]),
        handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES
    );
    c.write(&handshake::C_FIXED_NEWSTYLE.to_be_bytes()).await;
    let r = c.ask_one(opt::ABORT, &[], rep::ACK).await;
    assert!(r.data.is_empty());
    c.expect_closed().await;
    h.stop().await;
}

#[tokio::test]
async fn client_flags_with_unknown_bits_close_the_connection() {
    let h = Harness::start().await;
    for flags in [
        handshake::C_FIXED_NEWSTYLE | 4,
        handshake::C_FIXED_NEWSTYLE | handshake::C_NO_ZEROES | (1 << 31),
    ] {
        let mut c = Client::handshake(h.addr, flags).await;
        // Even a well-formed option after the flags is not answered.
        c.option(opt::LIST, &[]).await;
        c.expect_closed().await;
    }
    assert!(h.backend.sessions().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn non_fixed_newstyle_client_is_closed() {
    let h = Harness::start().await;
    for flags in [0, handshake::C_NO_ZEROES] {
        let mut c = Client::handshake(h.addr, flags).await;
        c.expect_closed().await;
    }
    h.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Option haggling.

#[tokio::test]
async fn list_names_every_export_with_the_session() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let replies = c.ask(opt::LIST, &[]).await;
    let (ack, servers) = replies.split_last().unwrap();
    assert_eq!(ack.ty, rep::ACK);
    assert!(ack.data.is_empty());
    let names: Vec<String> = servers
        .iter()
        .map(|r| {
            assert_eq!(r.ty, rep::SERVER);
            let len = be32(&r.data) as usize;
            assert_eq!(r.data.len(), 4 + len, "no trailing details");
            String::from_utf8(r.data[4..].to_vec()).unwrap()
        })
        .collect();
    assert_eq!(names, ["disk", "locked", "ro"]);
    let sessions = h.backend.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].peer, c.s.local_addr().unwrap());
    assert!(!sessions[0].tls);
    assert_eq!(sessions[0].identity, ClientIdentity::None);
    c.ask_one(opt::ABORT, &[], rep::ACK).await;
    h.stop().await;
}

/// The NBD_REP_INFO replies of an INFO or GO, by info type; checks the
/// final ACK.
fn infos(replies: &[OptReply]) -> HashMap<u16, Vec<u8>> {
    let (ack, infos) = replies.split_last().unwrap();
    assert_eq!(ack.ty, rep::ACK, "{replies:?}");
    let mut out = HashMap::new();
    for r in infos {
        assert_eq!(r.ty, rep::INFO, "{r:?}");
        let prev = out.insert(be16(&r.data), r.data[2..].to_vec());
        assert!(prev.is_none(), "one reply per info type");
    }
    out
}

#[tokio::test]
async fn info_reports_size_flags_block_sizes_and_name() {
    let config = Config {
        max_payload: 1 << 20,
        preferred_block: 64 << 10,
        ..Config::default()
    };
    let h = Harness::with(config, MemBackend::standard()).await;
    let mut c = h.client().await;

    let r = c
        .ask(
            opt::INFO,
            &info_payload("disk", &[info::BLOCK_SIZE, info::NAME, info::DESCRIPTION]),
        )
        .await;
    let i = infos(&r);
    assert_eq!(i.len(), 4, "{i:?}");
    let export = &i[&info::EXPORT];
    assert_eq!(export.len(), 10);
    assert_eq!(be64(export), DISK_SIZE as u64);
    assert_eq!(
        be16(&export[8..]),
        tflag::HAS_FLAGS
            | tflag::SEND_FLUSH
            | tflag::SEND_FUA
            | tflag::SEND_TRIM
            | tflag::SEND_WRITE_ZEROES
            | tflag::CAN_MULTI_CONN
    );
    let bs = &i[&info::BLOCK_SIZE];
    assert_eq!(bs.len(), 12);
    assert_eq!(
        [be32(bs), be32(&bs[4..]), be32(&bs[8..])],
        [512, 64 << 10, 1 << 20]
    );
    assert_eq!(i[&info::NAME], b"disk");
    assert_eq!(i[&info::DESCRIPTION], b"an in-memory test disk");

    // A read-only export without multi-conn: READ_ONLY, no TRIM or
    // WRITE_ZEROES, no CAN_MULTI_CONN; no requests, only NBD_INFO_EXPORT.
    let r = c.ask(opt::INFO, &info_payload("ro", &[])).await;
    let i = infos(&r);
    assert_eq!(i.len(), 1);
    let export = &i[&info::EXPORT];
    assert_eq!(be64(export), RO_SIZE as u64);
    assert_eq!(
        be16(&export[8..]),
        tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::READ_ONLY
    );

    // INFO does not end negotiation: GO still works.
    assert_eq!(c.go("disk").await.0, DISK_SIZE as u64);
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn unknown_option_is_unsupported_and_negotiation_goes_on() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.ask_one(42, b"some data", rep::ERR_UNSUP).await;
    c.ask_one(0x7fff_ffff, &[], rep::ERR_UNSUP).await;
    let r = c.ask(opt::LIST, &[]).await;
    assert_eq!(r.last().unwrap().ty, rep::ACK);
    c.ask_one(opt::ABORT, &[], rep::ACK).await;
    h.stop().await;
}

#[tokio::test]
async fn malformed_options_are_invalid_and_negotiation_goes_on() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    // A name running past the end of the data.
    c.ask_one(opt::INFO, &[0, 0, 0, 9, b'a'], rep::ERR_INVALID)
        .await;
    // Too short for the name length.
    c.ask_one(opt::INFO, &[0, 0], rep::ERR_INVALID).await;
    // A request count that does not match the list.
    let mut p = info_payload("disk", &[info::NAME, info::BLOCK_SIZE]);
    p.pop();
    c.ask_one(opt::INFO, &p, rep::ERR_INVALID).await;
    p.extend_from_slice(&[0, 0, 0]);
    c.ask_one(opt::GO, &p, rep::ERR_INVALID).await;
    // A name that is not UTF-8.
    c.ask_one(opt::GO, &[0, 0, 0, 2, 0xff, 0xfe, 0, 0], rep::ERR_INVALID)
        .await;
    // Data where none belongs.
    let r = c.ask_one(opt::LIST, b"x", rep::ERR_INVALID).await;
    assert!(!r.text().is_empty(), "the error says why");
    c.ask_one(opt::STRUCTURED_REPLY, b"x", rep::ERR_INVALID)
        .await;
    // None of that reached the backend, and negotiation goes on.
    assert!(h.backend.sessions().is_empty());
    assert_eq!(c.go("disk").await.0, DISK_SIZE as u64);
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn option_longer_than_the_limit_is_too_big_and_closes() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    // Only the header: the server must not wait for the payload.
    c.write(&option_header(opt::GO, MAX_OPTION_LEN + 1)).await;
    let r = c.reply().await;
    assert_eq!(r.option, opt::GO);
    assert_eq!(r.ty, rep::ERR_TOO_BIG);
    assert!(r.text().contains("too long"), "{}", r.text());
    c.expect_closed().await;

    // Exactly the limit is read and answered (here: a malformed INFO).
    let mut c = h.client().await;
    let mut p = info_payload("disk", &[]);
    p.resize(MAX_OPTION_LEN as usize, 0);
    c.ask_one(opt::INFO, &p, rep::ERR_INVALID).await;
    c.ask_one(opt::ABORT, &[], rep::ACK).await;
    h.stop().await;
}

#[tokio::test]
async fn refused_export_is_policy_with_the_message() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    for option in [opt::INFO, opt::GO] {
        let r = c
            .ask_one(option, &info_payload("locked", &[]), rep::ERR_POLICY)
            .await;
        assert_eq!(r.text(), "locked: locked is locked by its owner");
    }
    // Refusal does not end negotiation.
    c.go("disk").await;
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn empty_or_unknown_name_is_unknown() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    for name in ["", "nope"] {
        for option in [opt::INFO, opt::GO] {
            let r = c
                .ask_one(option, &info_payload(name, &[info::NAME]), rep::ERR_UNKNOWN)
                .await;
            assert!(r.text().contains("no export named"), "{}", r.text());
        }
    }
    c.ask_one(opt::ABORT, &[], rep::ACK).await;
    h.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Transmission with simple replies.

#[tokio::test]
async fn go_answers_flags_and_write_read_round_trip_unaligned() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let replies = c.ask(opt::GO, &info_payload("disk", &[info::NAME])).await;
    let i = infos(&replies);
    assert_eq!(i[&info::NAME], b"disk");
    assert_eq!(be64(&i[&info::EXPORT]), DISK_SIZE as u64);

    let data = pattern(3001, 1);
    assert_eq!(c.write_at(0, 1, 1000, &data).await, 0);
    let back = c.read_at(2, 1000, 3001).await;
    assert_eq!(back, data);
    // Around the write: zeros on both sides.
    let back = c.read_at(3, 997, 3010).await;
    assert_eq!(&back[..3], &[0, 0, 0]);
    assert_eq!(&back[3..3004], &data[..]);
    assert_eq!(&back[3004..], &[0; 6]);
    // A single byte, and the very last bytes of the export.
    assert_eq!(c.read_at(4, 1500, 1).await, [data[500]]);
    assert_eq!(c.write_at(0, 5, DISK_SIZE as u64 - 3, b"end").await, 0);
    assert_eq!(c.read_at(6, DISK_SIZE as u64 - 3, 3).await, b"end");
    // The backend holds what the client wrote.
    let disk = h.backend.export("disk").snapshot();
    assert_eq!(&disk[1000..4001], &data[..]);
    assert_eq!(&disk[DISK_SIZE - 3..], b"end");
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn flush_and_fua_reach_the_backend() {
    let h = Harness::start().await;
    let disk = h.backend.export("disk");
    let mut c = h.attached("disk").await;
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 0);
    assert_eq!(c.call(0, cmd::FLUSH, 1, 0, 0).await, 0);
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(c.call(0, cmd::FLUSH, 2, 0, 0).await, 0);
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 2);

    assert_eq!(c.write_at(0, 3, 0, b"plain").await, 0);
    assert_eq!(disk.fua_writes.load(Ordering::SeqCst), 0);
    assert_eq!(c.write_at(cflag::FUA, 4, 4096, b"forced").await, 0);
    assert_eq!(disk.fua_writes.load(Ordering::SeqCst), 1);
    assert_eq!(c.read_at(5, 4096, 6).await, b"forced");
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn trim_and_write_zeroes_read_back_zeros() {
    let h = Harness::start().await;
    let disk = h.backend.export("disk");
    let mut c = h.attached("disk").await;
    let mut model = pattern(16384, 3);
    assert_eq!(c.write_at(0, 1, 0, &model).await, 0);

    // TRIM (with and without FUA), then WRITE_ZEROES without NO_HOLE
    // (served as a trim) and with it (served as write_zeroes).
    for (cookie, flags, ty, offset, len) in [
        (2, 0, cmd::TRIM, 100u64, 500u32),
        (3, cflag::FUA, cmd::TRIM, 700, 33),
        (4, 0, cmd::WRITE_ZEROES, 1001, 499),
        (5, cflag::NO_HOLE, cmd::WRITE_ZEROES, 2000, 4097),
        (6, cflag::NO_HOLE | cflag::FUA, cmd::WRITE_ZEROES, 9000, 1),
    ] {
        assert_eq!(c.call(flags, ty, cookie, offset, len).await, 0);
        model[offset as usize..(offset + u64::from(len)) as usize].fill(0);
    }
    assert_eq!(disk.trims.load(Ordering::SeqCst), 3);
    assert_eq!(disk.write_zeroes.load(Ordering::SeqCst), 2);
    assert_eq!(c.read_at(7, 0, 16384).await, model);
    assert_eq!(disk.snapshot()[..16384], model[..]);

    // FAST_ZERO is refused: zeroing here is no faster than writing.
    assert_eq!(
        c.call(cflag::FAST_ZERO, cmd::WRITE_ZEROES, 8, 0, 512).await,
        errno::ENOTSUP
    );
    assert_eq!(c.read_at(9, 0, 512).await, model[..512]);
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn out_of_range_requests_are_refused_and_the_connection_goes_on() {
    let h = Harness::start().await;
    let mut c = h.attached("disk").await;
    let size = DISK_SIZE as u64;
    assert_eq!(c.call(0, cmd::READ, 1, size, 1).await, errno::EINVAL);
    assert_eq!(c.call(0, cmd::READ, 2, size - 1, 2).await, errno::EINVAL);
    assert_eq!(
        c.call(0, cmd::READ, 3, u64::MAX - 10, 5).await,
        errno::EINVAL
    );
    // Offset + length overflowing u64.
    assert_eq!(c.call(0, cmd::READ, 4, u64::MAX, 2).await, errno::EINVAL);
    assert_eq!(c.call(0, cmd::TRIM, 5, size, 1).await, errno::ENOSPC);
    assert_eq!(
        c.call(cflag::NO_HOLE, cmd::WRITE_ZEROES, 6, size - 10, 11)
            .await,
        errno::ENOSPC
    );
    // A write beyond the end: ENOSPC, and its payload is consumed (the
    // next request parses), nothing of it lands.
    let junk = vec![0xaa; 4096];
    assert_eq!(c.write_at(0, 7, size - 100, &junk).await, errno::ENOSPC);
    assert_eq!(
        c.write_at(cflag::FUA, 8, size, &junk[..1]).await,
        errno::ENOSPC
    );
    assert_eq!(c.read_at(9, size - 100, 100).await, vec![0; 100]);
    // A zero-length read at the end is in range.
    assert_eq!(c.read_at(10, size, 0).await, b"");
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn unknown_commands_and_bad_flags_are_einval() {
    let h = Harness::start().await;
    let mut c = h.attached("disk").await;
    assert_eq!(c.call(0, cmd::CACHE, 1, 0, 512).await, errno::EINVAL);
    assert_eq!(c.call(0, cmd::BLOCK_STATUS, 2, 0, 512).await, errno::EINVAL);
    assert_eq!(c.call(0, 99, 3, 0, 0).await, errno::EINVAL);
    assert_eq!(
        c.call(cflag::NO_HOLE, cmd::READ, 4, 0, 512).await,
        errno::EINVAL
    );
    assert_eq!(c.call(1 << 9, cmd::FLUSH, 5, 0, 0).await, errno::EINVAL);
    assert_eq!(
        c.call(cflag::NO_HOLE, cmd::TRIM, 6, 0, 512).await,
        errno::EINVAL
    );
    // A WRITE with a flag it does not take: refused, payload skipped.
    assert_eq!(
        c.write_at(cflag::NO_HOLE, 7, 0, &[0x55; 1000]).await,
        errno::EINVAL
    );
    assert_eq!(c.write_at(1 << 15, 8, 0, &[0x55; 10]).await, errno::EINVAL);
    assert_eq!(c.read_at(9, 0, 1000).await, vec![0; 1000]);
    assert_eq!(h.backend.export("disk").flushes.load(Ordering::SeqCst), 0);
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn read_only_export_refuses_writes_with_eperm() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let (size, flags) = c.go("ro").await;
    assert_eq!(size, RO_SIZE as u64);
    assert_ne!(flags & tflag::READ_ONLY, 0);
    assert_eq!(c.write_at(0, 1, 0, &[1; 512]).await, errno::EPERM);
    assert_eq!(c.write_at(cflag::FUA, 2, 100, &[1; 3]).await, errno::EPERM);
    assert_eq!(c.call(0, cmd::TRIM, 3, 0, 512).await, errno::EPERM);
    assert_eq!(
        c.call(cflag::NO_HOLE, cmd::WRITE_ZEROES, 4, 0, 512).await,
        errno::EPERM
    );
    // Reads and flushes still work, and nothing changed.
    assert_eq!(c.read_at(5, 0, RO_SIZE as u32).await, pattern(RO_SIZE, 7));
    assert_eq!(c.call(0, cmd::FLUSH, 6, 0, 0).await, 0);
    assert_eq!(h.backend.export("ro").snapshot(), pattern(RO_SIZE, 7));
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn reads_longer_than_max_payload_are_einval_and_writes_close() {
    let config = Config {
        max_payload: 64 << 10,
        ..Config::default()
    };
    let h = Harness::with(config, MemBackend::standard()).await;
    let mut c = h.attached("disk").await;
    assert_eq!(
        c.call(0, cmd::READ, 1, 0, (64 << 10) + 1).await,
        errno::EINVAL
    );
    assert_eq!(c.call(0, cmd::READ, 2, 0, 1 << 20).await, errno::EINVAL);
    assert_eq!(c.read_at(3, 0, 64 << 10).await.len(), 64 << 10);
    // TRIM and WRITE_ZEROES carry no payload: max_payload does not apply.
    assert_eq!(c.call(0, cmd::TRIM, 4, 0, 1 << 20).await, 0);
    // A WRITE longer than advertised cannot be skipped safely: closed.
    c.request(0, cmd::WRITE, 5, 0, (64 << 10) + 1).await;
    c.expect_closed().await;
    h.stop().await;
}

#[tokio::test]
async fn bad_request_magic_closes_the_connection() {
    let h = Harness::start().await;
    let mut c = h.attached("disk").await;
    assert_eq!(c.read_at(1, 0, 8).await, vec![0; 8]);
    let mut r = Request::encode(0, cmd::READ, 2, 0, 8);
    r[0] ^= 0x80;
    c.write(&r).await;
    c.expect_closed().await;
    h.stop().await;
}

#[tokio::test]
async fn disc_answers_everything_in_flight_then_closes() {
    let h = Harness::start().await;
    let mut c = h.attached("disk").await;
    // Eight writes to one region and eight reads of another, then DISC,
    // all in one go before reading anything.
    let mut out = Vec::new();
    for i in 0..8u64 {
        out.extend_from_slice(&Request::encode(0, cmd::WRITE, 100 + i, i * 4096, 4096));
        out.extend_from_slice(&pattern(4096, i as u8));
    }
    for i in 0..8u64 {
        out.extend_from_slice(&Request::encode(
            0,
            cmd::READ,
            200 + i,
            (64 << 10) + i * 512,
            512,
        ));
    }
    out.extend_from_slice(&Request::encode(0, cmd::DISC, 999, 0, 0));
    c.write(&out).await;
    let mut seen = HashSet::new();
    for _ in 0..16 {
        let (e, cookie) = c.simple().await;
        assert_eq!(e, 0, "cookie {cookie}");
        assert!(seen.insert(cookie), "cookie {cookie} answered twice");
        if cookie >= 200 {
            assert_eq!(c.read(512).await, vec![0; 512]);
        }
    }
    let want: HashSet<u64> = (100..108).chain(200..208).collect();
    assert_eq!(seen, want);
    // DISC itself has no reply.
    c.expect_closed().await;
    let disk = h.backend.export("disk").snapshot();
    for i in 0..8usize {
        assert_eq!(disk[i * 4096..(i + 1) * 4096], pattern(4096, i as u8));
    }
    h.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Structured replies and STARTTLS.

#[tokio::test]
async fn structured_replies_read_as_one_offset_data_chunk_and_errors_carry_messages() {
    let h = Harness::start().await;
    let disk = h.backend.export("disk");
    let mut c = h.client().await;
    let r = c.ask_one(opt::STRUCTURED_REPLY, &[], rep::ACK).await;
    assert!(r.data.is_empty());
    c.go("disk").await;

    // A write: one final NONE chunk with no payload.
    c.write_req(0, 1, 777, b"structured").await;
    let ch = c.chunk().await;
    assert_eq!(
        (ch.flags, ch.ty, ch.cookie, ch.payload.len()),
        (chunk::FLAG_DONE, chunk::NONE, 1, 0)
    );

    // A read: one final OFFSET_DATA chunk, offset then data.
    c.request(0, cmd::READ, 2, 770, 20).await;
    let ch = c.chunk().await;
    assert_eq!(ch.flags, chunk::FLAG_DONE);
    assert_eq!(ch.ty, chunk::OFFSET_DATA);
    assert_eq!(ch.cookie, 2);
    assert_eq!(ch.payload.len(), 8 + 20);
    assert_eq!(be64(&ch.payload), 770);
    assert_eq!(&ch.payload[8..], b"\0\0\0\0\0\0\0structured\0\0\0");

    // Errors are final ERROR chunks with a message: the server's checks,
    // the parser's refusals, and the backend's own failures.
    c.request(0, cmd::READ, 3, DISK_SIZE as u64, 1).await;
    assert_error_chunk(&c.chunk().await, 3, errno::EINVAL, "beyond");
    c.write_req(cflag::NO_HOLE, 4, 0, &[1; 16]).await;
    assert_error_chunk(&c.chunk().await, 4, errno::EINVAL, "flags");
    c.request(0, cmd::CACHE, 5, 0, 1).await;
    assert_error_chunk(&c.chunk().await, 5, errno::EINVAL, "not supported");
    disk.fail_reads.store(true, Ordering::SeqCst);
    c.request(0, cmd::READ, 6, 0, 16).await;
    assert_error_chunk(&c.chunk().await, 6, errno::EIO, "injected read failure");
    disk.fail_reads.store(false, Ordering::SeqCst);

    // FLUSH: a NONE chunk too.
    c.request(0, cmd::FLUSH, 7, 0, 0).await;
    let ch = c.chunk().await;
    assert_eq!(
        (ch.flags, ch.ty, ch.cookie),
        (chunk::FLAG_DONE, chunk::NONE, 7)
    );
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);
    c.disc().await;
    h.stop().await;
}

/// A backend's I/O error reaches the client as the errno of its kind
/// (`errno::of_kind`): a full pool is `ENOSPC`, with simple and with
/// structured replies (which carry the message too), and the connection
/// goes on.
#[tokio::test]
async fn backend_io_errors_answer_the_errno_of_their_kind() {
    use std::io::ErrorKind as K;
    let h = Harness::start().await;
    let disk = h.backend.export("disk");
    let mut c = h.attached("disk").await;
    for (cookie, (kind, want)) in [
        (K::StorageFull, errno::ENOSPC),
        (K::QuotaExceeded, errno::ENOSPC),
        (K::ReadOnlyFilesystem, errno::EPERM),
        (K::InvalidInput, errno::EINVAL),
        (K::Other, errno::EIO),
    ]
    .into_iter()
    .enumerate()
    {
        *disk.fail_writes.lock().unwrap() = Some(kind);
        assert_eq!(
            c.write_at(0, cookie as u64, 4096, &[7; 512]).await,
            want,
            "{kind:?}"
        );
    }
    *disk.fail_writes.lock().unwrap() = None;
    assert_eq!(c.write_at(0, 9, 4096, &[7; 512]).await, 0);
    assert_eq!(c.read_at(10, 4096, 512).await, vec![7; 512]);
    c.disc().await;

    let mut c = h.client().await;
    c.ask_one(opt::STRUCTURED_REPLY, &[], rep::ACK).await;
    c.go("disk").await;
    *disk.fail_writes.lock().unwrap() = Some(K::StorageFull);
    c.write_req(0, 11, 0, &[1; 512]).await;
    assert_error_chunk(
        &c.chunk().await,
        11,
        errno::ENOSPC,
        "injected write failure",
    );
    *disk.fail_writes.lock().unwrap() = None;
    c.disc().await;
    h.stop().await;
}

/// Regression: an empty READ with structured replies was answered with an
/// OFFSET_DATA chunk of no data (length 8), which the protocol forbids
/// (its length MUST be at least 9) and strict clients disconnect on.
#[tokio::test]
async fn structured_empty_read_is_a_lone_none_chunk() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.ask_one(opt::STRUCTURED_REPLY, &[], rep::ACK).await;
    c.go("disk").await;
    c.request(0, cmd::READ, 8, 770, 0).await;
    let ch = c.chunk().await;
    assert_eq!(
        (ch.flags, ch.ty, ch.cookie, ch.payload.len()),
        (chunk::FLAG_DONE, chunk::NONE, 8, 0)
    );
    // The connection is in step: the next reply is the next request's.
    c.request(0, cmd::READ, 9, 0, 1).await;
    let ch = c.chunk().await;
    assert_eq!(
        (ch.ty, ch.cookie, &ch.payload[..]),
        (chunk::OFFSET_DATA, 9, &[0u8; 9][..])
    );
    c.disc().await;
    h.stop().await;
}

fn tls_config(required: bool) -> Config {
    Config {
        tls: Some(Arc::new(PlainTls)),
        tls_required: required,
        ..Config::default()
    }
}

#[tokio::test]
async fn tls_required_refuses_every_option_but_starttls() {
    let h = Harness::with(tls_config(true), MemBackend::standard()).await;
    let mut c = h.client().await;
    let go = info_payload("disk", &[]);
    for (option, payload) in [
        (opt::LIST, &[][..]),
        (opt::INFO, &go[..]),
        (opt::GO, &go[..]),
        (opt::STRUCTURED_REPLY, &[][..]),
        (42, &b"unknown"[..]),
        // Malformed options too: nothing is parsed into action.
        (opt::LIST, &b"x"[..]),
        (opt::GO, &[0, 0, 0, 9][..]),
    ] {
        let r = c.ask_one(option, payload, rep::ERR_TLS_REQD).await;
        assert!(r.text().contains("STARTTLS"), "{}", r.text());
    }
    assert!(h.backend.sessions().is_empty(), "the backend was not asked");
    // EXPORT_NAME has no error reply: the connection closes.
    c.option(opt::EXPORT_NAME, b"disk").await;
    c.expect_closed().await;
    assert!(h.backend.sessions().is_empty());

    // ABORT is honoured before STARTTLS.
    let mut c = h.client().await;
    c.ask_one(opt::ABORT, &[], rep::ACK).await;
    c.expect_closed().await;
    h.stop().await;
}

#[tokio::test]
async fn starttls_gives_the_backend_a_tls_session_with_the_identity() {
    let h = Harness::with(tls_config(true), MemBackend::standard()).await;
    let mut c = h.client().await;
    let r = c.ask_one(opt::STARTTLS, &[], rep::ACK).await;
    assert!(r.data.is_empty());
    // Once is enough.
    c.ask_one(opt::STARTTLS, &[], rep::ERR_INVALID).await;
    let names = c.ask(opt::LIST, &[]).await;
    assert_eq!(names.len(), 4);
    c.go("disk").await;
    assert_eq!(c.write_at(0, 1, 0, b"secret").await, 0);
    assert_eq!(c.read_at(2, 0, 6).await, b"secret");
    let sessions = h.backend.sessions();
    assert_eq!(sessions.len(), 2, "LIST and GO");
    for s in sessions {
        assert!(s.tls);
        assert_eq!(s.identity, ClientIdentity::Psk("test".into()));
        assert_eq!(s.peer, c.s.local_addr().unwrap());
    }
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn structured_replies_negotiated_before_starttls_are_forgotten() {
    let h = Harness::with(tls_config(false), MemBackend::standard()).await;
    let mut c = h.client().await;
    c.ask_one(opt::STRUCTURED_REPLY, &[], rep::ACK).await;
    c.ask_one(opt::STARTTLS, &[], rep::ACK).await;
    c.go("disk").await;
    // A simple reply, not a chunk.
    assert_eq!(c.read_at(1, 0, 4).await, [0; 4]);
    assert_eq!(
        c.call(0, cmd::READ, 2, DISK_SIZE as u64, 1).await,
        errno::EINVAL
    );
    c.disc().await;

    // Negotiated again after STARTTLS, they hold.
    let mut c = h.client().await;
    c.ask_one(opt::STARTTLS, &[], rep::ACK).await;
    c.ask_one(opt::STRUCTURED_REPLY, &[], rep::ACK).await;
    c.go("disk").await;
    c.request(0, cmd::READ, 3, 0, 4).await;
    let ch = c.chunk().await;
    assert_eq!((ch.ty, ch.cookie), (chunk::OFFSET_DATA, 3));
    c.disc().await;
    h.stop().await;
}

#[tokio::test]
async fn starttls_without_tls_is_unsupported() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.ask_one(opt::STARTTLS, &[], rep::ERR_UNSUP).await;
    c.go("disk").await;
    assert_eq!(c.read_at(1, 0, 1).await, [0]);
    c.disc().await;
    assert!(h.backend.sessions().iter().all(|s| !s.tls));
    h.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Many requests in flight.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_requests_in_flight_each_answered_once() {
    sixty_four_in_flight(Config::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_requests_in_flight_through_a_tiny_budget() {
    // Room for two small requests at a time; larger ones take it all.
    sixty_four_in_flight(Config {
        in_flight_bytes: 8192,
        ..Config::default()
    })
    .await;
}

async fn sixty_four_in_flight(config: Config) {
    const N: u64 = 64;
    const LEN: usize = 3000;
    let h = Harness::with(config, MemBackend::standard()).await;
    let mut c = h.attached("disk").await;
    let cookie = |i: u64| 0xc0de_0000_0000_0000 | i;
    // Unaligned, non-overlapping ranges.
    let offset = |i: u64| 7 + i * (LEN as u64 + 5);

    let mut out = Vec::new();
    for i in 0..N {
        out.extend_from_slice(&Request::encode(
            0,
            cmd::WRITE,
            cookie(i),
            offset(i),
            LEN as u32,
        ));
        out.extend_from_slice(&pattern(LEN, i as u8));
    }
    c.write(&out).await;
    let mut seen = HashSet::new();
    for _ in 0..N {
        let (e, k) = c.simple().await;
        assert_eq!(e, 0);
        assert!(seen.insert(k), "cookie {k:#x} answered twice");
    }
    assert_eq!(seen, (0..N).map(cookie).collect());

    let mut out = Vec::new();
    for i in 0..N {
        out.extend_from_slice(&Request::encode(
            0,
            cmd::READ,
            cookie(N + i),
            offset(i),
            LEN as u32,
        ));
    }
    c.write(&out).await;
    let mut seen = HashSet::new();
    for _ in 0..N {
        let (e, k) = c.simple().await;
        assert_eq!(e, 0);
        assert!(seen.insert(k), "cookie {k:#x} answered twice");
        let i = (k & 0xffff_ffff)
            .checked_sub(N)
            .filter(|i| *i < N)
            .unwrap_or_else(|| panic!("unknown cookie {k:#x}"));
        assert_eq!(c.read(LEN).await, pattern(LEN, i as u8), "data of read {i}");
    }
    assert_eq!(seen, (N..2 * N).map(cookie).collect());
    // A request larger than the whole budget still runs.
    let all = c.read_at(1, 0, 256 << 10).await;
    assert_eq!(all[offset(1) as usize..][..LEN], pattern(LEN, 1));
    c.disc().await;
    h.stop().await;
}

// ---------------------------------------------------------------------------
// 6. NBD_OPT_EXPORT_NAME.

#[tokio::test]
async fn export_name_answers_134_bytes_or_10_with_no_zeroes() {
    let h = Harness::start().await;
    for (flags, len) in [
        (handshake::C_FIXED_NEWSTYLE, 134),
        (handshake::C_FIXED_NEWSTYLE | handshake::C_NO_ZEROES, 10),
    ] {
        let mut c = Client::handshake(h.addr, flags).await;
        c.option(opt::EXPORT_NAME, b"disk").await;
        let r = c.read(len).await;
        assert_eq!(be64(&r), DISK_SIZE as u64);
        assert_eq!(
            be16(&r[8..]),
            tflag::HAS_FLAGS
                | tflag::SEND_FLUSH
                | tflag::SEND_FUA
                | tflag::SEND_TRIM
                | tflag::SEND_WRITE_ZEROES
                | tflag::CAN_MULTI_CONN
        );
        assert!(r[10..].iter().all(|&b| b == 0));
        // Nothing more: the next bytes are the reply to a request.
        assert_eq!(c.write_at(0, 1, 10, b"xyz").await, 0);
        assert_eq!(c.read_at(2, 10, 3).await, b"xyz");
        c.disc().await;
    }
    h.stop().await;
}

#[tokio::test]
async fn export_name_is_never_structured_and_refusal_closes() {
    let h = Harness::start().await;
    // Structured replies are negotiated only with GO.
    let mut c = h.client().await;
    c.ask_one(opt::STRUCTURED_REPLY, &[], rep::ACK).await;
    c.option(opt::EXPORT_NAME, b"ro").await;
    let r = c.read(10).await;
    assert_eq!(be64(&r), RO_SIZE as u64);
    assert_eq!(c.read_at(1, 0, 16).await, pattern(16, 7));
    c.disc().await;
    // No error reply exists for EXPORT_NAME: a refusal or an unknown name
    // closes the connection.
    for name in [&b"locked"[..], b"nope", b"", &[0xff]] {
        let mut c = h.client().await;
        c.option(opt::EXPORT_NAME, name).await;
        c.expect_closed().await;
    }
    h.stop().await;
}

// ---------------------------------------------------------------------------
// 7. Time limits and shutdown.

#[tokio::test]
async fn silent_client_is_dropped_after_the_negotiation_timeout() {
    let config = Config {
        negotiation_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let h = Harness::with(config, MemBackend::standard()).await;
    let start = Instant::now();
    let mut c = Client::connect(h.addr).await;
    assert_eq!(c.read(18).await, negotiate::greeting());
    c.expect_closed().await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");

    // A client that stops half-way through an option is dropped too.
    let start = Instant::now();
    let mut c = h.client().await;
    c.write(&option_header(opt::GO, 100)).await;
    c.write(&[0, 0]).await;
    c.expect_closed().await;
    assert!(start.elapsed() < Duration::from_secs(5));

    // The time limit is on negotiation only: transmission may idle.
    let mut c = h.attached("disk").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.read_at(1, 0, 4).await, [0; 4]);
    c.disc().await;
    h.stop().await;
}

/// Regression: `serve` waited for clients still in negotiation, which do
/// not watch the stop signal, so one idle client held shutdown for the
/// whole negotiation timeout (30 s by default).
#[tokio::test]
async fn stop_does_not_wait_for_idle_clients() {
    // The default negotiation timeout (30 s) must not hold up shutdown.
    let h = Harness::start().await;
    let mut negotiating = h.client().await;
    let mut attached = h.attached("disk").await;
    assert_eq!(attached.read_at(1, 0, 4).await, [0; 4]);
    let start = Instant::now();
    h.stop().await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        start.elapsed()
    );
    negotiating.expect_closed().await;
    attached.expect_closed().await;
}
