//! The NBD server: the accept loop, option negotiation (with STARTTLS) and
//! the transmission phase, over a [`Backend`] that names the exports a
//! client may use and serves their I/O.
//!
//! What the server guarantees, whatever the client sends:
//! - Negotiation is fixed newstyle only, bounded in time and in the bytes
//!   it reads; a malformed option is answered `NBD_REP_ERR_INVALID` and a
//!   malformed framing closes the connection.
//! - With TLS required, nothing but `NBD_OPT_STARTTLS` (and `ABORT`) is
//!   acted on before the handshake, and no byte the client sent before
//!   the handshake is read after it: options are read with exact-length
//!   reads, so nothing is buffered across the switch (the class of
//!   CVE-2021-3716). What was negotiated before STARTTLS is forgotten.
//! - In transmission, requests run concurrently (up to an in-flight byte
//!   budget), replies go out as each completes, and a request that is out
//!   of range, too long or refused by the backend is answered with an
//!   errno; only a framing error closes the connection.
//! - A WRITE is acknowledged only after the backend took it; a FLUSH is
//!   acknowledged only after every write acknowledged before it is durable.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::ProtoError;
use crate::negotiate::{self, ClientOption, InfoRequest, OptionHeader, info, opt, rep, tflag};
use crate::transmit::{self, Command, Request, chunk, errno};

/// A byte stream the server talks over: TCP, or TLS over TCP.
pub trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

/// A boxed [`IoStream`].
pub type BoxStream = Box<dyn IoStream>;

/// Who the client proved to be in the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// Nothing proved (plaintext, or TLS without client authentication).
    None,
    /// The name a verified client certificate carries (what the TLS layer
    /// takes from it; for atrest, a principal ARN).
    Certificate(String),
    /// The identity of a verified pre-shared key.
    Psk(String),
}

/// One client connection, as the backend sees it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is under TLS.
    pub tls: bool,
    /// Who the client is.
    pub identity: ClientIdentity,
}

/// The future of a TLS handshake.
pub type TlsFuture = Pin<Box<dyn Future<Output = io::Result<(BoxStream, ClientIdentity)>> + Send>>;

/// Runs the server side of a TLS handshake after `NBD_OPT_STARTTLS`.
pub trait StartTls: Send + Sync + 'static {
    /// Takes over `stream`, shakes hands, and says who the client is.
    fn handshake(&self, stream: BoxStream) -> TlsFuture;
}

/// What an export is, as negotiation tells the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// The smallest I/O that needs no read-modify-write (advertised as the
    /// minimum block size).
    pub block_size: u32,
    /// Refuse writes.
    pub read_only: bool,
    /// Flushes on one connection cover writes completed on every other
    /// connection to the same export (`NBD_FLAG_CAN_MULTI_CONN`).
    pub multi_conn: bool,
    /// A description for `NBD_INFO_DESCRIPTION`.
    pub description: String,
}

/// Why the backend will not let the client have an export (the message
/// goes to the client in the option reply, and to the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// No such export for this client (`NBD_REP_ERR_UNKNOWN`).
    #[error("{0}")]
    Unknown(String),
    /// Not allowed now: locked, attached elsewhere, not the client's
    /// (`NBD_REP_ERR_POLICY`).
    #[error("{0}")]
    Policy(String),
    /// The server failed (`NBD_REP_ERR_PLATFORM`).
    #[error("{0}")]
    Failed(String),
}

impl Refused {
    fn reply_type(&self) -> u32 {
        match self {
            Self::Unknown(_) => rep::ERR_UNKNOWN,
            Self::Policy(_) => rep::ERR_POLICY,
            Self::Failed(_) => rep::ERR_PLATFORM,
        }
    }
}

/// A failed I/O: the errno the client gets and a message for the log (and
/// for structured replies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoError {
    /// `transmit::errno::*`.
    pub errno: u32,
    /// Why.
    pub message: String,
}

impl From<io::Error> for IoError {
    /// The errno of the error's kind ([`errno::of_kind`]), and its message.
    fn from(e: io::Error) -> Self {
        Self {
            errno: errno::of_kind(e.kind()),
            message: e.to_string(),
        }
    }
}

/// The exports: which a client may see, and opening one. Called from
/// blocking threads (opening an export may unwrap a key).
pub trait Backend: Send + Sync + 'static {
    /// The export names `session` may see (`NBD_OPT_LIST`).
    fn list(&self, session: &Session) -> Result<Vec<String>, Refused>;
    /// Describes an export without opening it (`NBD_OPT_INFO`).
    fn describe(&self, session: &Session, name: &str) -> Result<ExportInfo, Refused>;
    /// Opens an export for the transmission phase (`NBD_OPT_GO`,
    /// `NBD_OPT_EXPORT_NAME`); dropping it closes it.
    fn open(&self, session: &Session, name: &str) -> Result<Arc<dyn Export>, Refused>;
}

/// An open export. Every method may be called from several threads at
/// once; offsets and lengths are within the size (the server checks) but
/// need not be aligned to the block size.
pub trait Export: Send + Sync + 'static {
    /// What it is.
    fn info(&self) -> ExportInfo;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Writes; durable before returning with `fua`.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), IoError>;
    /// Makes a range read as zeros, freeing space where it can.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), IoError>;
    /// Makes a range read as zeros, keeping it allocated.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), IoError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), IoError>;
}

/// Server configuration.
#[derive(Clone)]
pub struct Config {
    /// STARTTLS, if offered.
    pub tls: Option<Arc<dyn StartTls>>,
    /// Accept nothing but STARTTLS before the handshake.
    pub tls_required: bool,
    /// The largest READ or WRITE payload (advertised as the maximum block
    /// size).
    pub max_payload: u32,
    /// The preferred I/O size advertised.
    pub preferred_block: u32,
    /// Bytes of requests in flight on one connection.
    pub in_flight_bytes: u32,
    /// The longest the handshake and negotiation may take.
    pub negotiation_timeout: Duration,
    /// Connections open at once (in all and per client address), and the
    /// drain at shutdown.
    pub limits: atrest_listen::Limits,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("tls", &self.tls.is_some())
            .field("tls_required", &self.tls_required)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tls: None,
            tls_required: false,
            max_payload: 32 << 20,
            preferred_block: 64 << 10,
            in_flight_bytes: 128 << 20,
            negotiation_timeout: Duration::from_secs(10),
            limits: atrest_listen::Limits::default(),
        }
    }
}

/// Serves NBD on `listener` until `stopped` turns true, through the
/// accept loop every atrest listener shares (`atrest_listen`: its limits,
/// and its drain: each connection finishes the requests it has read;
/// those still open after the drain's deadline are cut). A connection
/// over a limit is closed before the handshake: NBD has no way to say why
/// before the client's first option.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    backend: Arc<dyn Backend>,
    stats: Arc<atrest_listen::Stats>,
    stopped: watch::Receiver<bool>,
) {
    let limits = config.limits;
    let protocol = Arc::new(Nbd { config, backend });
    atrest_listen::serve("nbd", listener, limits, protocol, stats, stopped).await;
}

/// NBD as a protocol of the shared accept loop.
struct Nbd {
    config: Arc<Config>,
    backend: Arc<dyn Backend>,
}

impl atrest_listen::Protocol for Nbd {
    fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stopped: watch::Receiver<bool>,
    ) -> atrest_listen::ConnectionFuture {
        let (config, backend) = (Arc::clone(&self.config), Arc::clone(&self.backend));
        Box::pin(async move {
            match connection(stream, peer, &config, backend, stopped).await {
                Ok(()) => tracing::debug!(%peer, "NBD connection closed"),
                Err(e) => tracing::info!(%peer, error = %e, "NBD connection ended"),
            }
        })
    }

    fn refusal(&self, _why: atrest_listen::Refusal) -> Option<&'static [u8]> {
        None
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Proto(#[from] ProtoError),
    #[error("{0}")]
    Closed(String),
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: &Config,
    backend: Arc<dyn Backend>,
    stopped: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let session = Session {
        peer,
        tls: false,
        identity: ClientIdentity::None,
    };
    // A stop does not wait for a client still negotiating (it has no
    // request in flight, and could hold shutdown for the whole timeout).
    let mut stop = stopped.clone();
    let negotiated = tokio::select! {
        r = tokio::time::timeout(
            config.negotiation_timeout,
            negotiate(Box::new(stream), session, config, &backend),
        ) => r.map_err(|_| ConnError::Closed("negotiation took too long".into()))??,
        _ = stop.changed() => return Err(ConnError::Closed("the server is stopping".into())),
    };
    let Some(n) = negotiated else {
        return Ok(());
    };
    tracing::info!(%peer, export = %n.name, tls = n.session.tls, "NBD client attached");
    transmission(n, config, stopped).await
}

struct Negotiated {
    stream: BoxStream,
    session: Session,
    name: String,
    export: Arc<dyn Export>,
    structured: bool,
}

async fn send(stream: &mut BoxStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Runs a blocking backend call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refused> + Send + 'static,
) -> Result<T, Refused> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Refused::Failed(format!("the export call failed: {e}"))))
}

fn transmission_flags(info: &ExportInfo) -> u16 {
    let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA;
    if info.read_only {
        f |= tflag::READ_ONLY;
    } else {
        f |= tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES;
    }
    if info.multi_conn {
        f |= tflag::CAN_MULTI_CONN;
    }
    f
}

async fn negotiate(
    mut stream: BoxStream,
    mut session: Session,
    config: &Config,
    backend: &Arc<dyn Backend>,
) -> Result<Option<Negotiated>, ConnError> {
    send(&mut stream, &negotiate::greeting()).await?;
    let mut cf = [0u8; 4];
    stream.read_exact(&mut cf).await?;
    let flags = negotiate::client_flags(&cf)?;
    if !flags.fixed_newstyle {
        return Err(ConnError::Closed(
            "the client does not speak fixed newstyle".into(),
        ));
    }
    let mut structured = false;
    loop {
        let mut h = [0u8; OptionHeader::LEN];
        stream.read_exact(&mut h).await?;
        let header = match OptionHeader::parse(&h) {
            Ok(h) => h,
            Err(ProtoError::TooLong { len, max, .. }) => {
                // The payload is not read; the connection cannot go on.
                let option = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
                let msg = format!("option payload of {len} bytes is too long (at most {max})");
                let _ = send(
                    &mut stream,
                    &negotiate::reply(option, rep::ERR_TOO_BIG, msg.as_bytes()),
                )
                .await;
                return Err(ConnError::Closed(msg));
            }
            Err(e) => return Err(e.into()),
        };
        let mut payload = vec![0u8; header.len as usize];
        stream.read_exact(&mut payload).await?;
        let option = header.option;
        let parsed = ClientOption::parse(option, &payload);
        let must_tls = config.tls_required && !session.tls;
        if must_tls && !matches!(parsed, Ok(ClientOption::StartTls | ClientOption::Abort)) {
            if option == opt::EXPORT_NAME {
                return Err(ConnError::Closed(
                    "NBD_OPT_EXPORT_NAME before STARTTLS, and TLS is required".into(),
                ));
            }
            let msg = b"TLS is required: send NBD_OPT_STARTTLS first";
            send(
                &mut stream,
                &negotiate::reply(option, rep::ERR_TLS_REQD, msg),
            )
            .await?;
            continue;
        }
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                if option == opt::EXPORT_NAME {
                    return Err(e.into());
                }
                let msg = e.to_string();
                send(
                    &mut stream,
                    &negotiate::reply(option, rep::ERR_INVALID, msg.as_bytes()),
                )
                .await?;
                continue;
            }
        };
        match parsed {
            ClientOption::Abort => {
                // The client may close without reading this.
                let _ = send(&mut stream, &negotiate::reply(option, rep::ACK, &[])).await;
                return Ok(None);
            }
            ClientOption::StartTls => {
                let Some(tls) = &config.tls else {
                    send(
                        &mut stream,
                        &negotiate::reply(
                            option,
                            rep::ERR_UNSUP,
                            b"this server does not offer TLS",
                        ),
                    )
                    .await?;
                    continue;
                };
                if session.tls {
                    send(
                        &mut stream,
                        &negotiate::reply(option, rep::ERR_INVALID, b"TLS is already on"),
                    )
                    .await?;
                    continue;
                }
                send(&mut stream, &negotiate::reply(option, rep::ACK, &[])).await?;
                let (s, identity) = tls
                    .handshake(stream)
                    .await
                    .map_err(|e| ConnError::Closed(format!("TLS handshake failed: {e}")))?;
                stream = s;
                session.tls = true;
                session.identity = identity;
                // Nothing negotiated in the clear carries over.
                structured = false;
            }
            ClientOption::StructuredReply => {
                structured = true;
                send(&mut stream, &negotiate::reply(option, rep::ACK, &[])).await?;
            }
            ClientOption::List => {
                let s = session.clone();
                let b = Arc::clone(backend);
                match blocking(move || b.list(&s)).await {
                    Ok(names) => {
                        for n in names {
                            stream.write_all(&negotiate::reply_server(&n)).await?;
                        }
                        send(&mut stream, &negotiate::reply(option, rep::ACK, &[])).await?;
                    }
                    Err(r) => {
                        send(
                            &mut stream,
                            &negotiate::reply(option, r.reply_type(), r.to_string().as_bytes()),
                        )
                        .await?;
                    }
                }
            }
            ClientOption::Info(req) => {
                let s = session.clone();
                let b = Arc::clone(backend);
                let name = req.name.clone();
                match blocking(move || b.describe(&s, &name)).await {
                    Ok(info) => send_info(&mut stream, option, &req, &info, config).await?,
                    Err(r) => refuse(&mut stream, option, &session, &req.name, &r).await?,
                }
            }
            ClientOption::Go(req) => {
                let s = session.clone();
                let b = Arc::clone(backend);
                let name = req.name.clone();
                match blocking(move || b.open(&s, &name)).await {
                    Ok(export) => {
                        send_info(&mut stream, option, &req, &export.info(), config).await?;
                        return Ok(Some(Negotiated {
                            stream,
                            session,
                            name: req.name,
                            export,
                            structured,
                        }));
                    }
                    Err(r) => refuse(&mut stream, option, &session, &req.name, &r).await?,
                }
            }
            ClientOption::ExportName(name) => {
                let s = session.clone();
                let b = Arc::clone(backend);
                let n = name.clone();
                // No error reply exists for this option: a refusal closes.
                let export = blocking(move || b.open(&s, &n)).await.map_err(|r| {
                    tracing::warn!(peer = %session.peer, export = %name, reason = %r, "NBD export refused");
                    ConnError::Closed(format!("export {name} refused: {r}"))
                })?;
                let info = export.info();
                send(
                    &mut stream,
                    &negotiate::export_name_reply(
                        info.size,
                        transmission_flags(&info),
                        flags.no_zeroes,
                    ),
                )
                .await?;
                return Ok(Some(Negotiated {
                    stream,
                    session,
                    name,
                    export,
                    // Structured replies are negotiated only with GO.
                    structured: false,
                }));
            }
            ClientOption::Unsupported(_) => {
                send(
                    &mut stream,
                    &negotiate::reply(option, rep::ERR_UNSUP, b"option not supported"),
                )
                .await?;
            }
        }
    }
}

async fn refuse(
    stream: &mut BoxStream,
    option: u32,
    session: &Session,
    name: &str,
    r: &Refused,
) -> io::Result<()> {
    tracing::warn!(peer = %session.peer, export = %name, reason = %r, "NBD export refused");
    send(
        stream,
        &negotiate::reply(option, r.reply_type(), r.to_string().as_bytes()),
    )
    .await
}

async fn send_info(
    stream: &mut BoxStream,
    option: u32,
    req: &InfoRequest,
    export: &ExportInfo,
    config: &Config,
) -> io::Result<()> {
    let mut out = negotiate::info_export(option, export.size, transmission_flags(export));
    for r in &req.requests {
        match *r {
            info::NAME => out.extend(negotiate::info_name(option, &req.name)),
            info::DESCRIPTION => {
                let mut data = info::DESCRIPTION.to_be_bytes().to_vec();
                data.extend_from_slice(export.description.as_bytes());
                out.extend(negotiate::reply(option, rep::INFO, &data));
            }
            info::BLOCK_SIZE => out.extend(negotiate::info_block_size(
                option,
                export.block_size,
                config.preferred_block.max(export.block_size),
                config.max_payload,
            )),
            _ => {}
        }
    }
    out.extend(negotiate::reply(option, rep::ACK, &[]));
    send(stream, &out).await
}

/// A reply to queue for the writer.
type Reply = Vec<u8>;

fn error_reply(structured: bool, cookie: u64, errno: u32, message: &str) -> Reply {
    if structured {
        transmit::structured_error(cookie, errno, message)
    } else {
        transmit::simple_reply(cookie, errno).to_vec()
    }
}

fn ok_reply(structured: bool, cookie: u64) -> Reply {
    if structured {
        transmit::chunk_header(chunk::FLAG_DONE, chunk::NONE, cookie, 0).to_vec()
    } else {
        transmit::simple_reply(cookie, 0).to_vec()
    }
}

async fn transmission(
    n: Negotiated,
    config: &Config,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let Negotiated {
        stream,
        session,
        name,
        export,
        structured,
    } = n;
    let info = export.info();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Reply>(64);
    let writer = tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            wr.write_all(&r).await?;
            // Send as soon as nothing more is queued.
            if rx.is_empty() {
                wr.flush().await?;
            }
        }
        wr.flush().await?;
        wr.shutdown().await
    });
    // Units of 4 KiB of payload in flight.
    let budget = Arc::new(Semaphore::new(
        (config.in_flight_bytes / 4096).max(1) as usize
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let result: Result<(), ConnError> = loop {
        while tasks.try_join_next().is_some() {}
        let mut h = [0u8; Request::LEN];
        let read = tokio::select! {
            r = rd.read_exact(&mut h) => r,
            _ = stopped.changed() => break Ok(()),
        };
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                break Err(ConnError::Closed(
                    "the client went away without NBD_CMD_DISC".into(),
                ));
            }
            Err(e) => break Err(e.into()),
        }
        let req = match Request::parse(&h) {
            Ok(Ok(r)) => r,
            Ok(Err(refusal)) => {
                if refusal.skip > config.max_payload {
                    break Err(ConnError::Closed(format!(
                        "refused a write of {} bytes, too long to skip: {}",
                        refusal.skip, refusal.reason
                    )));
                }
                if let Err(e) = skip(&mut rd, refusal.skip).await {
                    break Err(e.into());
                }
                tracing::debug!(%name, reason = %refusal.reason, "NBD request refused");
                if tx
                    .send(error_reply(
                        structured,
                        refusal.cookie,
                        refusal.errno,
                        &refusal.reason,
                    ))
                    .await
                    .is_err()
                {
                    break Ok(());
                }
                continue;
            }
            Err(e) => break Err(e.into()),
        };
        if req.command == Command::Disc {
            break Ok(());
        }
        // Checks that need no backend call.
        let fail = check(&req, &info, config);
        let payload = if matches!(req.command, Command::Write { .. }) {
            if req.length > config.max_payload {
                break Err(ConnError::Closed(format!(
                    "a write of {} bytes is longer than the {} advertised",
                    req.length, config.max_payload
                )));
            }
            let mut data = vec![0u8; req.length as usize];
            if let Err(e) = rd.read_exact(&mut data).await {
                break Err(e.into());
            }
            data
        } else {
            Vec::new()
        };
        if let Some((errno, msg)) = fail {
            if tx
                .send(error_reply(structured, req.cookie, errno, &msg))
                .await
                .is_err()
            {
                break Ok(());
            }
            continue;
        }
        let units = (req.length / 4096)
            .max(1)
            .min(config.in_flight_bytes / 4096)
            .max(1);
        let Ok(permit) = Arc::clone(&budget).acquire_many_owned(units).await else {
            break Ok(());
        };
        let (export, tx) = (Arc::clone(&export), tx.clone());
        tasks.spawn(async move {
            let reply =
                tokio::task::spawn_blocking(move || run(&*export, req, payload, structured))
                    .await
                    .unwrap_or_else(|e| {
                        error_reply(
                            structured,
                            req.cookie,
                            errno::EIO,
                            &format!("request failed: {e}"),
                        )
                    });
            drop(permit);
            let _ = tx.send(reply).await;
        });
    };
    // Every request read is answered before the connection closes.
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
    tracing::info!(peer = %session.peer, export = %name, "NBD client detached");
    result
}

async fn skip<R: AsyncRead + Unpin>(rd: &mut R, mut n: u32) -> io::Result<()> {
    let mut buf = vec![0u8; (n as usize).min(64 << 10)];
    while n > 0 {
        let k = (n as usize).min(buf.len());
        rd.read_exact(&mut buf[..k]).await?;
        n -= k as u32;
    }
    Ok(())
}

/// The errno for a request that cannot be served as sent.
fn check(req: &Request, info: &ExportInfo, config: &Config) -> Option<(u32, String)> {
    let end = req.offset + u64::from(req.length);
    let writes = matches!(
        req.command,
        Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. }
    );
    match req.command {
        Command::Unsupported(c) => {
            return Some((errno::EINVAL, format!("command {c} is not supported")));
        }
        Command::WriteZeroes {
            fast_zero: true, ..
        } => {
            // Zeroing is a write of zeros here, not faster than one.
            return Some((errno::ENOTSUP, "fast zeroing is not supported".into()));
        }
        Command::Read if req.length > config.max_payload => {
            return Some((
                errno::EINVAL,
                format!(
                    "a read of {} bytes is longer than the {} advertised",
                    req.length, config.max_payload
                ),
            ));
        }
        _ => {}
    }
    if writes && info.read_only {
        return Some((errno::EPERM, "the export is read-only".into()));
    }
    if end > info.size && req.command != Command::Flush {
        let e = if writes { errno::ENOSPC } else { errno::EINVAL };
        return Some((
            e,
            format!(
                "{} bytes at {} are beyond the export's {} bytes",
                req.length, req.offset, info.size
            ),
        ));
    }
    None
}

/// Serves one request (on a blocking thread) and builds its reply.
fn run(export: &dyn Export, req: Request, payload: Vec<u8>, structured: bool) -> Reply {
    let r = match req.command {
        // An OFFSET_DATA chunk must carry at least one byte: an empty read
        // is answered with the final NONE chunk alone.
        Command::Read if structured && req.length == 0 => Ok(()),
        Command::Read => {
            let len = req.length as usize;
            // Header and data in one buffer, read into place.
            let head = if structured { 28 } else { 16 };
            let mut out = vec![0u8; head + len];
            match export.read(req.offset, &mut out[head..]) {
                Ok(()) => {
                    if structured {
                        out[..20].copy_from_slice(&transmit::chunk_header(
                            chunk::FLAG_DONE,
                            chunk::OFFSET_DATA,
                            req.cookie,
                            8 + req.length,
                        ));
                        out[20..28].copy_from_slice(&req.offset.to_be_bytes());
                    } else {
                        out[..16].copy_from_slice(&transmit::simple_reply(req.cookie, 0));
                    }
                    return out;
                }
                Err(e) => Err(e),
            }
        }
        Command::Write { fua } => export.write(req.offset, &payload, fua),
        Command::Flush => export.flush(),
        Command::Trim { fua } => export.trim(req.offset, u64::from(req.length), fua),
        Command::WriteZeroes { fua, no_hole, .. } => {
            if no_hole {
                export.write_zeroes(req.offset, u64::from(req.length), fua)
            } else {
                export.trim(req.offset, u64::from(req.length), fua)
            }
        }
        Command::Disc | Command::Unsupported(_) => Err(IoError {
            errno: errno::EINVAL,
            message: "not a request to serve".into(),
        }),
    };
    match r {
        Ok(()) => ok_reply(structured, req.cookie),
        Err(e) => {
            tracing::warn!(cookie = req.cookie, errno = e.errno, error = %e.message, "NBD request failed");
            error_reply(structured, req.cookie, e.errno, &e.message)
        }
    }
}
