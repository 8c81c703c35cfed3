//! The accept loop, the lifecycle task, and shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use atrest_kms::clock::{Clock, OffsetClock, SystemClock};
use atrest_kms::{AdminBootstrap, KeyService};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tower::Service;

use crate::ServerConfig;
use crate::request::Peer;
use crate::router::router;
use crate::start_error::{Listener, StartError};
use crate::state::AppState;

/// Most connections served at once; further ones wait in the accept queue.
const MAX_CONNECTIONS: usize = 10_000;

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
    /// The key service, for in-process callers.
    pub kms: Arc<KeyService>,
    /// The disk service.
    pub disks: Arc<atrest_diskservice::DiskService>,
    local: Arc<crate::local::LocalDisks>,
    /// The database service.
    pub db: Arc<atrest_dbservice::DbService>,
    /// On first start: the admin account and where its credentials were written.
    pub bootstrap: Option<(AdminBootstrap, PathBuf)>,
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
        // No request is served any more: what is noted of access keys'
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
    let opened = blocking("opening the data dir", move || {
        crate::datadir::open(
            &data_dir,
            &admin_credentials,
            root,
            regions,
            clock,
            (&audit, audit_sync),
            disk_config,
        )
    })
    .await?
    .map_err(StartError::DataDir)?;
    let kms = opened.kms;
    kms.set_access_key_use_flush_interval(config.access_key_use_flush);
    let has_providers = !config.providers.is_empty();
    kms.set_providers(atrest_kms::Providers::new(config.providers.clone()));
    let bind = |error| StartError::Bind {
        listener: Listener::Http,
        addr: config.listen,
        error,
    };
    let listener = TcpListener::bind(config.listen).await.map_err(bind)?;
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
            backup_dir: config
                .db
                .backup_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("backups")),
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
        let store: Arc<dyn atrest_store::Store> = Arc::new(
            atrest_store::RedbStore::open(&config.data_dir.join("control.redb"))
                .map_err(StartError::ProjectStore)?,
        );
        Arc::new(atrest_control::Projects::new(
            store,
            Arc::clone(&kms),
            Arc::clone(&opened.disks),
            Arc::clone(&db),
        ))
    };
    let state = Arc::new(AppState {
        kms: Arc::clone(&kms),
        trail: Arc::clone(&opened.trail),
        max_body: config.max_body_bytes,
        signing_keys: atrest_sigv4::SigningKeyCache::new(),
        audit_dir: config.data_dir.join("audit"),
        disks: Arc::clone(&opened.disks),
        local: Arc::clone(&local),
        db: Arc::clone(&db),
        projects: Arc::clone(&projects),
        idempotency: crate::rest::idempotency::Idempotency::default(),
    });
    let mut tasks = Vec::new();
    let mut metrics_addr = None;
    if let Some(addr) = config.metrics_listen {
        let bind = |error| StartError::Bind {
            listener: Listener::Metrics,
            addr,
            error,
        };
        let l = TcpListener::bind(addr).await.map_err(bind)?;
        metrics_addr = Some(l.local_addr().map_err(bind)?);
        let trail = Arc::clone(&opened.trail);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let trail = Arc::clone(&trail);
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        trail.metering.prometheus(),
                    )
                }
            }),
        );
        tasks.push(tokio::spawn(accept_loop(l, None, app, stopped.clone())));
    }
    let mut nbd_addr = None;
    if let Some(nbd) = &config.nbd {
        let (addr, task) = crate::nbd::start(
            nbd,
            Arc::clone(&kms),
            Arc::clone(&opened.disks),
            stopped.clone(),
        )
        .await?;
        nbd_addr = Some(addr);
        tasks.push(task);
    }
    tasks.push(tokio::spawn(accept_loop(
        listener,
        tls,
        router(state),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(db_loop(Arc::clone(&db), stopped.clone())));
    tasks.push(tokio::spawn(project_loop(
        projects,
        config.disks.check_interval,
        stopped.clone(),
    )));
    if has_providers {
        tasks.push(tokio::spawn(provider_loop(
            Arc::clone(&kms),
            config.provider_check_interval,
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(key_use_loop(
        Arc::clone(&kms),
        config.access_key_use_flush,
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(lifecycle_loop(
        Arc::clone(&kms),
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
        bootstrap: opened.bootstrap,
        stop,
        tasks,
        run_base: crate::local::run_base(&config.data_dir),
    })
}

/// How long shutdown waits for open connections to finish their requests.
const DRAIN: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    mut stopped: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Reap finished connection tasks so the set stays small.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            peer,
            tls.clone(),
            app.clone(),
            stopped.clone(),
            permit,
        ));
    }
    drop(listener);
    // Let open connections finish the request they are on, then close them.
    if tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "closing connections that did not finish in time"
        );
        connections.shutdown().await;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    mut stopped: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let mut app = app.clone();
        async move { app.call(req.map(axum::body::Body::new)).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    let result = match tls {
        Some(acceptor) => {
            let s = match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = builder.serve_connection(TokioIo::new(s), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
            }
        }
        None => {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
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

/// Runs the rotations, deletions and expiries that are due.
async fn lifecycle_loop(kms: Arc<KeyService>, every: Duration, stopped: watch::Receiver<bool>) {
    periodic(
        "lifecycle",
        every,
        stopped,
        move || kms.run_due(),
        |r| match r {
            Ok(report) if report.rotated.is_empty() && report.deleted.is_empty() => {}
            Ok(report) => tracing::info!(
                rotated = report.rotated.len(),
                deleted = report.deleted.len(),
                "lifecycle tick"
            ),
            Err(e) => tracing::error!(error = ?e, "lifecycle tick failed"),
        },
    )
    .await;
}

/// Checks every external key at its provider: a refusal makes the key
/// unusable (disks and instances follow their key-loss policy), an
/// acceptance makes it usable again.
async fn provider_loop(kms: Arc<KeyService>, every: Duration, stopped: watch::Receiver<bool>) {
    periodic(
        "external key check",
        every,
        stopped,
        move || kms.check_external_keys(),
        |r| match r {
            Ok(r) if r.refused.is_empty() && r.restored.is_empty() => {}
            Ok(r) => tracing::info!(
                checked = r.checked,
                refused = r.refused.len(),
                restored = r.restored.len(),
                unreachable = r.unreachable.len(),
                "external key check"
            ),
            Err(e) => tracing::error!(error = ?e, "external key check failed"),
        },
    )
    .await;
}

/// Applies the projects' revocation policies on the disks' check period.
async fn project_loop(
    projects: Arc<atrest_control::Projects>,
    every: Duration,
    stopped: watch::Receiver<bool>,
) {
    periodic(
        "project check",
        every,
        stopped,
        move || projects.check(),
        |r| match r {
            Ok(paused) if paused.is_empty() => {}
            Ok(paused) => tracing::warn!(?paused, "paused projects whose key is unusable"),
            Err(e) => tracing::error!(error = %e, "project check failed"),
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
