//! The accept loop, the lifecycle task, and shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use atrest_kms::clock::{Clock, OffsetClock, SystemClock};
use atrest_kms::{AdminBootstrap, KeyService};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Service;

use crate::ServerConfig;
use crate::config::ConnectionLimits;
use crate::request::Peer;
use crate::router::router;
use crate::start_error::{Listener, StartError};
use crate::state::AppState;

/// Runs a start-up step on a blocking thread.
async fn blocking<T: Send + 'static>(
    step: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|error| StartError::Task { step, error })
}

/// A server that is running.
pub struct RunningServer {
    /// The bound address (useful when listening on port 0).
    pub addr: SocketAddr,
    /// The metrics listener's address, if one was configured.
    pub metrics_addr: Option<SocketAddr>,
    /// The NBD listener's address, if one was configured.
    pub nbd_addr: Option<SocketAddr>,
    /// The audit trail and metering.
    pub trail: crate::trail::SharedTrail,
    /// The listeners' connection counts.
    pub listeners: Arc<ListenerStats>,
    /// The key service, for in-process callers.
    pub kms: Arc<KeyService>,
    /// The disk service.
    pub disks: Arc<atrest_diskservice::DiskService>,
    local: Arc<crate::local::LocalDisks>,
    /// The database service.
    pub db: Arc<atrest_dbservice::DbService>,
    /// On first start: the admin account and where its credentials were written.
    pub bootstrap: Option<(AdminBootstrap, PathBuf)>,
    /// This node.
    pub node: crate::cluster::NodeIdentity,
    /// With a shared store: the data dir's lock, held while it runs.
    _lock: Option<std::fs::File>,
    /// This node in the registry (its record is written again at shutdown).
    cluster: Arc<crate::cluster::Cluster>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// `/run/atrest/<h>`: what of it is left empty goes at shutdown.
    run_base: PathBuf,
}

impl RunningServer {
    /// Stops accepting, stops the lifecycle task, and waits for both.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // The node's last record: its final audit head (on the embedded
        // store the only record after the one written at start).
        let (c, d, b) = (
            Arc::clone(&self.cluster),
            Arc::clone(&self.disks),
            Arc::clone(&self.db),
        );
        match tokio::task::spawn_blocking(move || {
            let leases = c.renew_leases();
            c.heartbeat(&leases, hosted_disks(&d), hosted_instances(&b))
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "writing this node's last record failed"),
            Err(e) => tracing::warn!(error = %e, "writing this node's last record failed"),
        }
        // No request is served any more: the refusals counted since the
        // last round go to the audit trail.
        let trail = Arc::clone(&self.trail);
        match tokio::task::spawn_blocking(move || trail.flush_refusals()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "writing the refusals at shutdown failed"),
            Err(e) => tracing::error!(error = %e, "writing the refusals at shutdown failed"),
        }
        // What is noted of access keys'
        // last use goes to the store, however recent its last write.
        let kms = Arc::clone(&self.kms);
        let flushed =
            match tokio::task::spawn_blocking(move || kms.flush_access_key_use(true)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
        if let Err(e) = flushed {
            tracing::error!(error = %e, "writing access keys' last use at shutdown failed");
        }
        let db = Arc::clone(&self.db);
        if let Err(e) = tokio::task::spawn_blocking(move || db.shutdown()).await {
            tracing::error!(error = %e, "stopping the database instances at shutdown failed");
        }
        let local = Arc::clone(&self.local);
        if let Err(e) = tokio::task::spawn_blocking(move || local.detach_all()).await {
            tracing::error!(error = %e, "detaching local attachments at shutdown failed");
        }
        // Writes acknowledged without a flush are made durable at a clean
        // stop (a crash may lose them, as a disk's cache may).
        let disks = Arc::clone(&self.disks);
        match tokio::task::spawn_blocking(move || disks.engine().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "flushing the disks at shutdown failed"),
            Err(e) => tracing::error!(error = %e, "flushing the disks at shutdown failed"),
        }
        // The run dir's empty directories go (a server that ran no
        // instance and attached nothing leaves nothing in /run); what holds
        // anything stays for the next start.
        remove_empty_run_dirs(&self.run_base);
    }
}

/// Opens the data dir, binds the listener and starts serving. A start that
/// fails leaves no empty directory of its own in `/run/atrest`.
pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    let data_dir = config.data_dir.clone();
    let started = start_serving(config).await;
    if started.is_err() {
        remove_empty_run_dirs(&crate::local::run_base(&data_dir));
    }
    started
}

/// Removes what of the run dir `base` is empty.
fn remove_empty_run_dirs(base: &std::path::Path) {
    for dir in [base.join("local"), base.join("db"), base.to_path_buf()] {
        let _ = std::fs::remove_dir(&dir);
    }
}

async fn start_serving(config: ServerConfig) -> Result<RunningServer, StartError> {
    if config.tls.is_none() && !config.listen.ip().is_loopback() && !config.allow_plaintext_remote {
        return Err(StartError::PlaintextRemote {
            listen: config.listen,
        });
    }
    let tls = match &config.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(files).map_err(|error| StartError::Tls {
                listener: Listener::Http,
                error,
            })?,
        )),
        None => None,
    };
    let clock: Arc<dyn Clock> = if config.lifecycle_clock_offset.is_zero() {
        Arc::new(SystemClock)
    } else {
        tracing::warn!(offset = %config.lifecycle_clock_offset, "lifecycle clock is shifted (testing only)");
        Arc::new(OffsetClock(config.lifecycle_clock_offset))
    };
    let (data_dir, root, regions) = (config.data_dir.clone(), config.root, config.regions.clone());
    let admin_credentials = config
        .admin_credentials
        .clone()
        .unwrap_or_else(|| crate::datadir::default_admin_credentials_file(&config.data_dir));
    let audit = config.audit.clone();
    let audit_sync = config.audit_sync;
    let disk_config = config.disks;
    let object_store = config.object_store.clone();
    let region_stores = config.region_object_stores.clone();
    let store_url = config.cluster.store_url.clone();
    let opened = blocking("opening the data dir", move || {
        let opened = crate::datadir::open(
            &data_dir,
            &admin_credentials,
            root,
            regions,
            clock,
            (&audit, audit_sync),
            (disk_config, store_url.as_deref()),
        )?;
        let objects = crate::datadir::enable_object_store(
            &data_dir,
            &opened,
            object_store.as_ref(),
            &region_stores,
        )?;
        Ok((opened, objects))
    })
    .await?
    .map_err(StartError::DataDir)?;
    let (opened, objects) = opened;
    // Database backups go to the same store, under `db/`, unless the
    // operator gave them a directory of their own.
    let backups = match &config.db.backup_dir {
        None => objects,
        Some(dir) => atrest_objstore::Objects::open(&atrest_objstore::StoreConfig {
            url: format!("file://{}", dir.display()),
            endpoint: None,
            region: None,
            path_style: false,
        })
        .map_err(|e| StartError::DataDir(crate::datadir::DataDirError::ObjectStore(e)))?,
    };
    let kms = opened.kms;
    kms.set_access_key_use_flush_interval(config.access_key_use_flush);
    let has_providers = !config.providers.is_empty();
    kms.set_providers(atrest_kms::Providers::new(config.providers.clone()));
    let bind = |error| StartError::Bind {
        listener: Listener::Http,
        addr: config.listen,
        error,
    };
    let listener = atrest_listen::bind(config.listen).map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let (stop, stopped) = watch::channel(false);
    let db_run = crate::local::run_base(&config.data_dir).join("db");
    let local = {
        let (dir, disks, db_run) = (
            crate::local::run_dir(&config.data_dir),
            Arc::clone(&opened.disks),
            db_run.clone(),
        );
        Arc::new(
            blocking("cleaning up after a crash", move || {
                // PostgreSQL servers and mounts a crash left go before the
                // local attachments under them.
                atrest_dbservice::DbService::cleanup_stale(&db_run);
                crate::local::LocalDisks::open(dir, disks)
            })
            .await?,
        )
    };
    let db = {
        let db_config = atrest_dbservice::Config {
            pg_bin: config.db.pg_bin.clone(),
            uid_range: config.db.uid_range.clone(),
            state_dir: config.data_dir.join("db"),
            run_dir: db_run,
            backups,
            // An earlier release kept backups as files: in
            // `<data dir>/backups` (uploaded), or in --db-backup-dir, which
            // is now the store itself (moved under `db/` in place).
            legacy_backups: Some(match &config.db.backup_dir {
                None => atrest_dbservice::LegacyBackups::Upload(config.data_dir.join("backups")),
                Some(dir) => atrest_dbservice::LegacyBackups::InPlace(dir.clone()),
            }),
            agent_program: std::env::current_exe().map_err(StartError::CurrentExe)?,
            on_key_loss: config.disks.on_key_loss,
            check_interval: config.disks.check_interval,
            default_size: config.db.default_size,
        };
        let (kms, disks, volumes) = (
            Arc::clone(&kms),
            Arc::clone(&opened.disks),
            Arc::clone(&local) as Arc<dyn atrest_dbservice::Volumes>,
        );
        blocking("opening the database service", move || {
            atrest_dbservice::DbService::open(kms, disks, volumes, db_config)
        })
        .await?
        .map_err(StartError::Db)?
    };
    let projects = {
        let store: Arc<dyn atrest_store::Store> = match &config.cluster.store_url {
            None => Arc::new(
                atrest_store::RedbStore::open(&config.data_dir.join("control.redb"))
                    .map_err(StartError::ProjectStore)?,
            ),
            Some(url) => {
                crate::datadir::shared_store(url, "control").map_err(StartError::DataDir)?
            }
        };
        Arc::new(atrest_control::Projects::new(
            store,
            Arc::clone(&kms),
            Arc::clone(&opened.disks),
            Arc::clone(&db),
        ))
    };
    let cluster = {
        let me =
            crate::cluster::node_identity(&config.data_dir, config.cluster.node_name.as_deref())
                .map_err(|e| {
                    StartError::DataDir(crate::datadir::DataDirError::Io {
                        context: format!("the node's id in {}", config.data_dir.display()),
                        error: e,
                    })
                })?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let api_url = config
            .cluster
            .advertise_api
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        Arc::new(crate::cluster::Cluster::new(
            Arc::clone(&opened.kms_store),
            me,
            api_url,
            config.cluster.advertise_nbd.clone(),
        ))
    };
    let peers = crate::routes::audit::join_cluster(
        &kms,
        &opened.trail,
        &cluster,
        &config.data_dir.join("audit"),
        config.tls.as_ref().map(|t| t.cert.as_path()),
    )
    .map_err(|e| StartError::DataDir(crate::datadir::DataDirError::Kms(e)))?;
    let state = Arc::new(AppState {
        peers,
        kms: Arc::clone(&kms),
        trail: Arc::clone(&opened.trail),
        body: crate::request::BodyLimits {
            max: config.max_body_bytes,
            timeout: config.connections.body_timeout,
        },
        signing_keys: atrest_sigv4::SigningKeyCache::new(),
        audit_dir: config.data_dir.join("audit"),
        disks: Arc::clone(&opened.disks),
        local: Arc::clone(&local),
        db: Arc::clone(&db),
        projects: Arc::clone(&projects),
        idempotency: crate::rest::idempotency::Idempotency::default(),
        cluster: Arc::clone(&cluster),
    });
    let mut tasks = Vec::new();
    let limits = config.connections;
    let listeners = Arc::new(ListenerStats::default());
    let mut metrics_addr = None;
    if let Some(addr) = config.metrics_listen {
        let bind = |error| StartError::Bind {
            listener: Listener::Metrics,
            addr,
            error,
        };
        let l = atrest_listen::bind(addr).map_err(bind)?;
        metrics_addr = Some(l.local_addr().map_err(bind)?);
        let (trail, stats) = (Arc::clone(&opened.trail), Arc::clone(&listeners));
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let (trail, stats) = (Arc::clone(&trail), Arc::clone(&stats));
                async move {
                    let mut text = trail.metering.prometheus();
                    stats.prometheus(&mut text);
                    (
                        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        text,
                    )
                }
            }),
        );
        let http = Http {
            tls: None,
            app,
            limits,
        };
        tasks.push(tokio::spawn(atrest_listen::serve(
            "metrics",
            l,
            limits.limits,
            Arc::new(http),
            Arc::clone(&listeners.metrics),
            stopped.clone(),
        )));
    }
    let mut nbd_addr = None;
    if let Some(nbd) = &config.nbd {
        let (addr, task) = crate::nbd::start(
            nbd,
            Arc::clone(&kms),
            Arc::clone(&opened.disks),
            Arc::clone(&cluster),
            (limits, Arc::clone(&listeners.nbd)),
            stopped.clone(),
        )
        .await?;
        nbd_addr = Some(addr);
        if config.cluster.advertise_nbd.is_none() {
            cluster.set_nbd_addr(addr.to_string());
        }
        tasks.push(task);
    }
    let http = Http {
        tls,
        app: router(state),
        limits,
    };
    tasks.push(tokio::spawn(atrest_listen::serve(
        "http",
        listener,
        limits.limits,
        Arc::new(http),
        Arc::clone(&listeners.http),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(db_loop(Arc::clone(&db), stopped.clone())));
    // The leases before the first round of the tasks they guard, so a
    // single node runs its schedule at start as it always did.
    {
        let (c, d, b) = (
            Arc::clone(&cluster),
            Arc::clone(&opened.disks),
            Arc::clone(&db),
        );
        blocking("taking the periodic tasks' leases", move || {
            let leases = c.renew_leases();
            c.heartbeat(&leases, hosted_disks(&d), hosted_instances(&b))
        })
        .await?
        .map_err(|e| StartError::DataDir(crate::datadir::DataDirError::Store(e)))?;
    }
    // Alone on the embedded store, nothing needs a heartbeat: the record
    // written at start and the live view serve `GET /v1/nodes`, and every
    // lease is this node's. (A task woken every 2 s during a flood of
    // stalled connections left resident memory 50 % higher; design 5A.)
    if cluster.shared() {
        tasks.push(tokio::spawn(cluster_loop(
            Arc::clone(&cluster),
            Arc::clone(&opened.disks),
            Arc::clone(&db),
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(project_loop(
        projects,
        Arc::clone(&cluster),
        config.disks.check_interval,
        stopped.clone(),
    )));
    if has_providers {
        tasks.push(tokio::spawn(provider_loop(
            Arc::clone(&kms),
            Arc::clone(&cluster),
            config.provider_check_interval,
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(refusals_loop(
        Arc::clone(&opened.trail),
        config.audit_refusal_interval,
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(key_use_loop(
        Arc::clone(&kms),
        config.access_key_use_flush,
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(lifecycle_loop(
        Arc::clone(&kms),
        Arc::clone(&cluster),
        config.lifecycle_interval,
        stopped,
    )));
    tracing::info!(%addr, tls = config.tls.is_some(), regions = ?kms.regions(), "atrest serving");
    Ok(RunningServer {
        addr,
        metrics_addr,
        nbd_addr,
        local,
        db,
        kms,
        disks: opened.disks,
        trail: opened.trail,
        listeners,
        bootstrap: opened.bootstrap,
        node: cluster.me().clone(),
        _lock: opened.lock,
        cluster: Arc::clone(&cluster),
        stop,
        tasks,
        run_base: crate::local::run_base(&config.data_dir),
    })
}

/// The connection counts of every listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// The HTTP API's.
    pub http: Arc<atrest_listen::Stats>,
    /// The metrics endpoint's.
    pub metrics: Arc<atrest_listen::Stats>,
    /// NBD's.
    pub nbd: Arc<atrest_listen::Stats>,
}

impl ListenerStats {
    /// Appends the counts in Prometheus's text format.
    fn prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let all = [
            ("http", self.http.snapshot()),
            ("metrics", self.metrics.snapshot()),
            ("nbd", self.nbd.snapshot()),
        ];
        let _ = writeln!(out, "# HELP atrest_connections_open Connections open now.");
        let _ = writeln!(out, "# TYPE atrest_connections_open gauge");
        for (l, s) in &all {
            let _ = writeln!(
                out,
                "atrest_connections_open{{listener=\"{l}\"}} {}",
                s.open
            );
        }
        let _ = writeln!(
            out,
            "# HELP atrest_connections_accepted_total Connections admitted."
        );
        let _ = writeln!(out, "# TYPE atrest_connections_accepted_total counter");
        for (l, s) in &all {
            let _ = writeln!(
                out,
                "atrest_connections_accepted_total{{listener=\"{l}\"}} {}",
                s.accepted
            );
        }
        let _ = writeln!(
            out,
            "# HELP atrest_connections_refused_total Connections refused over a limit."
        );
        let _ = writeln!(out, "# TYPE atrest_connections_refused_total counter");
        for (l, s) in &all {
            let _ = writeln!(
                out,
                "atrest_connections_refused_total{{listener=\"{l}\",reason=\"busy\"}} {}",
                s.refused_busy
            );
            let _ = writeln!(
                out,
                "atrest_connections_refused_total{{listener=\"{l}\",reason=\"per_address\"}} {}",
                s.refused_per_address
            );
        }
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let _ = writeln!(
            out,
            "# HELP atrest_runtime_tasks_alive Tasks of the server's runtime (connections, timers, loops)."
        );
        let _ = writeln!(out, "# TYPE atrest_runtime_tasks_alive gauge");
        let _ = writeln!(out, "atrest_runtime_tasks_alive {tasks}");
    }
}

/// The HTTP listeners' protocol: HTTP/1.1, over TLS when configured, under
/// the deadlines of [`ConnectionLimits`] (see `atrest_listen::Guarded`).
struct Http {
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: ConnectionLimits,
}

impl atrest_listen::Protocol for Http {
    fn serve(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        stopped: watch::Receiver<bool>,
    ) -> atrest_listen::ConnectionFuture {
        Box::pin(serve_connection(
            stream,
            peer,
            self.tls.clone(),
            self.app.clone(),
            self.limits,
            stopped,
        ))
    }

    fn refusal(&self, why: atrest_listen::Refusal) -> Option<&'static [u8]> {
        // Over TLS nothing can be said before a handshake, which a refused
        // connection is not worth: it is closed.
        if self.tls.is_some() {
            return None;
        }
        Some(match why {
            atrest_listen::Refusal::PerAddress => &TOO_MANY_FROM_ADDRESS,
            atrest_listen::Refusal::Busy => &BUSY,
        })
    }
}

/// A complete HTTP answer in the error shape (both the REST `code` and the
/// AWS JSON `__type`), closing the connection.
fn raw_answer(status: u16, reason: &str, code: &str, message: &str) -> Vec<u8> {
    let body =
        format!(r#"{{"__type":"{code}","code":"{code}","message":"{message}","requestId":""}}"#);
    let retry = if status == 408 {
        ""
    } else {
        "retry-after: 1\r\n"
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n{retry}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A client address over `--max-connections-per-address`: 429 (AWS SDKs
/// retry `ThrottlingException` with backoff).
static TOO_MANY_FROM_ADDRESS: LazyLock<Vec<u8>> = LazyLock::new(|| {
    raw_answer(
        429,
        "Too Many Requests",
        "ThrottlingException",
        "Too many connections from this address.",
    )
});
/// The listener at `--max-connections`: 503.
static BUSY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    raw_answer(
        503,
        "Service Unavailable",
        "ServiceUnavailableException",
        "The server has too many connections open; retry.",
    )
});
/// A request head that did not arrive by `--header-timeout`: 408.
static HEAD_TIMEOUT: LazyLock<Vec<u8>> = LazyLock::new(|| {
    raw_answer(
        408,
        "Request Timeout",
        "RequestTimeoutException",
        "The request's head did not arrive in time.",
    )
});

/// The most a connection buffers of a request's head or of its answer.
const MAX_BUF: usize = 64 * 1024;

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: ConnectionLimits,
    mut stopped: watch::Receiver<bool>,
) {
    let activity = Arc::new(atrest_listen::Activity::default());
    let marks = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let mut app = app.clone();
        let marks = Arc::clone(&marks);
        marks.start();
        async move {
            let answer = app.call(req.map(axum::body::Body::new)).await;
            marks.finish();
            answer
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The head's deadline and the idle timeout are the guard's: hyper's
        // own header timeout also runs while a kept-alive connection idles.
        .header_read_timeout(None)
        .max_buf_size(MAX_BUF)
        .keep_alive(true);
    let head_timeout: &'static [u8] = &HEAD_TIMEOUT;
    let result = match tls {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream));
            let s = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                _ = stopped.changed() => return,
            };
            let io = atrest_listen::Guarded::new(s, limits.deadlines, activity, Some(head_timeout));
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
            }
        }
        None => {
            let io =
                atrest_listen::Guarded::new(stream, limits.deadlines, activity, Some(head_timeout));
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Runs `job` on a blocking thread now and then every `every` until the
/// server stops; `report` logs what a round found. The schedule of the
/// key service, the external keys' health check, the projects' revocation
/// policies and the database check all run this way.
async fn periodic<T: Send + 'static>(
    what: &'static str,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
    job: impl Fn() -> T + Send + Sync + 'static,
    report: impl Fn(T),
) {
    let job = Arc::new(job);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        let j = Arc::clone(&job);
        match tokio::task::spawn_blocking(move || j()).await {
            Ok(out) => report(out),
            Err(e) => tracing::error!(error = %e, task = what, "periodic task failed"),
        }
    }
}

/// Writes the refusals before authentication counted since the last round
/// to the audit trail, one record per client address.
async fn refusals_loop(
    trail: crate::trail::SharedTrail,
    every: Duration,
    stopped: watch::Receiver<bool>,
) {
    periodic(
        "refusals",
        every.max(Duration::from_millis(100)),
        stopped,
        move || trail.flush_refusals(),
        |r| {
            if let Err(e) = r {
                tracing::error!(error = %e, "writing the refusals to the audit trail failed");
            }
        },
    )
    .await;
}

/// Writes access keys' last use, noted in memory by every request, to the
/// store: each key at most once per `every` (see `flush_access_key_use`).
async fn key_use_loop(kms: Arc<KeyService>, every: Duration, stopped: watch::Receiver<bool>) {
    periodic(
        "access key last use",
        every.max(Duration::from_millis(100)),
        stopped,
        move || kms.flush_access_key_use(false),
        |r| {
            if let Err(e) = r {
                tracing::error!(error = %e, "writing access keys' last use failed");
            }
        },
    )
    .await;
}

fn hosted_disks(disks: &atrest_diskservice::DiskService) -> Vec<crate::cluster::HostedDisk> {
    disks
        .hosted()
        .into_iter()
        .map(|(id, account)| crate::cluster::HostedDisk { id, account })
        .collect()
}

fn hosted_instances(db: &atrest_dbservice::DbService) -> Vec<crate::cluster::HostedInstance> {
    db.hosted()
        .into_iter()
        .map(|(id, name, account)| crate::cluster::HostedInstance { id, name, account })
        .collect()
}

/// Renews this node's leases and writes its record every heartbeat.
async fn cluster_loop(
    cluster: Arc<crate::cluster::Cluster>,
    disks: Arc<atrest_diskservice::DiskService>,
    db: Arc<atrest_dbservice::DbService>,
    stopped: watch::Receiver<bool>,
) {
    periodic(
        "cluster heartbeat",
        crate::cluster::HEARTBEAT,
        stopped,
        move || {
            let leases = cluster.renew_leases();
            cluster.heartbeat(&leases, hosted_disks(&disks), hosted_instances(&db))
        },
        |r| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "writing this node's record failed");
            }
        },
    )
    .await;
}

/// Runs the rotations, deletions and expiries that are due, where this
/// node holds the lifecycle lease.
async fn lifecycle_loop(
    kms: Arc<KeyService>,
    cluster: Arc<crate::cluster::Cluster>,
    every: Duration,
    stopped: watch::Receiver<bool>,
) {
    periodic(
        "lifecycle",
        every,
        stopped,
        move || {
            cluster
                .holds(crate::cluster::Lease::Lifecycle)
                .then(|| kms.run_due())
        },
        |r| match r {
            None => {}
            Some(Ok(report)) if report.rotated.is_empty() && report.deleted.is_empty() => {}
            Some(Ok(report)) => tracing::info!(
                rotated = report.rotated.len(),
                deleted = report.deleted.len(),
                "lifecycle tick"
            ),
            Some(Err(e)) => tracing::error!(error = ?e, "lifecycle tick failed"),
        },
    )
    .await;
}

/// Checks every external key at its provider: a refusal makes the key
/// unusable (disks and instances follow their key-loss policy), an
/// acceptance makes it usable again.
async fn provider_loop(
    kms: Arc<KeyService>,
    cluster: Arc<crate::cluster::Cluster>,
    every: Duration,
    stopped: watch::Receiver<bool>,
) {
    periodic(
        "external key check",
        every,
        stopped,
        move || {
            cluster
                .holds(crate::cluster::Lease::ExternalKeys)
                .then(|| kms.check_external_keys())
        },
        |r| match r {
            None => {}
            Some(Ok(r)) if r.refused.is_empty() && r.restored.is_empty() => {}
            Some(Ok(r)) => tracing::info!(
                checked = r.checked,
                refused = r.refused.len(),
                restored = r.restored.len(),
                unreachable = r.unreachable.len(),
                "external key check"
            ),
            Some(Err(e)) => tracing::error!(error = ?e, "external key check failed"),
        },
    )
    .await;
}

/// Applies the projects' revocation policies on the disks' check period.
async fn project_loop(
    projects: Arc<atrest_control::Projects>,
    cluster: Arc<crate::cluster::Cluster>,
    every: Duration,
    stopped: watch::Receiver<bool>,
) {
    periodic(
        "project check",
        every,
        stopped,
        move || {
            cluster
                .holds(crate::cluster::Lease::Projects)
                .then(|| projects.check())
        },
        |r| match r {
            None => {}
            Some(Ok(paused)) if paused.is_empty() => {}
            Some(Ok(paused)) => tracing::warn!(?paused, "paused projects whose key is unusable"),
            Some(Err(e)) => tracing::error!(error = %e, "project check failed"),
        },
    )
    .await;
}

/// Starts the instances that should run, then checks running instances'
/// keys at the configured interval.
async fn db_loop(db: Arc<atrest_dbservice::DbService>, mut stopped: watch::Receiver<bool>) {
    let d = Arc::clone(&db);
    let resume = tokio::task::spawn_blocking(move || d.resume());
    tokio::select! {
        r = resume => if let Err(e) = r { tracing::error!(error = %e, "starting the database instances failed") },
        _ = stopped.changed() => return,
    }
    let every = db.check_interval();
    periodic(
        "database check",
        every,
        stopped,
        move || db.check(),
        |()| {},
    )
    .await;
}
