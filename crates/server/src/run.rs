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
            c.heartbeat(
                &leases,
                crate::cluster::hosted_disks(&d),
                crate::cluster::hosted_instances(&b),
            )
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
/// fails leaves no empty directory of its own in `/run/atrest`, and a
/// first start that fails leaves nothing it created (see [`FirstStart`]).
pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    let data_dir = config.data_dir.clone();
    let first = FirstStart::note(&config);
    let started = start_serving(config).await;
    if started.is_err() {
        remove_empty_run_dirs(&crate::local::run_base(&data_dir));
        if let Some(first) = first {
            first.undo();
        }
    }
    started
}

/// What a first start creates outside a shared store: the data dir (with
/// the embedded store, the admin account and the audit trail in it), the
/// root key file, and the admin credentials file. Noted before the start;
/// if the start then fails, whatever of these did not exist before is
/// removed, so that a first start refused for a wrong flag does not leave
/// an initialised installation (with an admin secret nobody was shown)
/// behind. With a shared store nothing is undone: the store may already
/// hold this start's admin account, and its credentials file is the only
/// copy of the secret. A key a PKCS#11 token made is left in the token.
pub(crate) struct FirstStart {
    data_dir: PathBuf,
    /// Whether the data dir existed (then empty: anything in it now is
    /// this start's).
    dir_existed: bool,
    /// Files this start may create that did not exist.
    files: Vec<PathBuf>,
}

impl FirstStart {
    /// `None` unless `config` is a first start on the embedded store: no
    /// data dir, or an empty one.
    pub(crate) fn note(config: &ServerConfig) -> Option<Self> {
        if config.cluster.store_url.is_some() {
            return None;
        }
        let data_dir = config.data_dir.clone();
        let dir_existed = match std::fs::read_dir(&data_dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return None;
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(_) => return None,
        };
        let credentials = config
            .admin_credentials
            .clone()
            .unwrap_or_else(|| crate::datadir::default_admin_credentials_file(&data_dir));
        let mut files = vec![credentials];
        if let atrest_kms::root::RootSource::KeyFile(path) = &config.root {
            files.push(path.clone());
        }
        files.retain(|f| std::fs::symlink_metadata(f).is_err());
        Some(Self {
            data_dir,
            dir_existed,
            files,
        })
    }

    /// Removes what this start created (see the type's doc), holding the
    /// data dir's lock (its store file's): a data dir another server has
    /// opened since this start looked is left as it is.
    pub(crate) fn undo(self) {
        let store_file = self.data_dir.join("kms.redb");
        let _lock = if store_file.exists() {
            match atrest_store::RedbStore::open(&store_file) {
                Ok(store) => Some(store),
                Err(e) => {
                    tracing::warn!(data_dir = %self.data_dir.display(), error = %e, "the first start failed, but its data dir is in use: left as it is");
                    return;
                }
            }
        } else {
            None
        };
        let mut removed = Vec::new();
        for f in &self.files {
            if std::fs::remove_file(f).is_ok() {
                removed.push(f.display().to_string());
            }
        }
        if self.dir_existed {
            if let Ok(entries) = std::fs::read_dir(&self.data_dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    if gone.is_ok() {
                        removed.push(path.display().to_string());
                    }
                }
            }
        } else if std::fs::remove_dir_all(&self.data_dir).is_ok() {
            removed.push(self.data_dir.display().to_string());
        }
        if !removed.is_empty() {
            tracing::info!(removed = ?removed, "the first start failed: removed what it had created");
        }
    }
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
    if let Some(nbd) = &config.nbd {
        crate::nbd::check(nbd)?;
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
        app: router(
            state,
            config.console.map(|mut c| {
                c.secure |= config.tls.is_some();
                c
            }),
        ),
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
            c.heartbeat(
                &leases,
                crate::cluster::hosted_disks(&d),
                crate::cluster::hosted_instances(&b),
            )
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
            cluster.heartbeat(
                &leases,
                crate::cluster::hosted_disks(&disks),
                crate::cluster::hosted_instances(&db),
            )
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

#[cfg(test)]
mod first_start_tests {
    use std::path::Path;

    use super::FirstStart;
    use crate::config::ServerConfig;

    fn config(dir: &Path) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            allow_plaintext_remote: false,
            data_dir: dir.join("data"),
            admin_credentials: None,
            root: atrest_kms::root::RootSource::KeyFile(dir.join("data.root.key")),
            regions: vec!["us-east-1".into()],
            lifecycle_interval: std::time::Duration::from_secs(3600),
            lifecycle_clock_offset: time::Duration::ZERO,
            max_body_bytes: 64 * 1024,
            metrics_listen: None,
            audit: atrest_audit::Options::default(),
            audit_sync: crate::config::AuditSync::default(),
            disks: atrest_diskservice::Config::default(),
            nbd: None,
            db: crate::DbSettings::default(),
            providers: std::collections::BTreeMap::new(),
            provider_check_interval: std::time::Duration::from_secs(60),
            access_key_use_flush: std::time::Duration::from_secs(60),
            connections: crate::config::ConnectionLimits::default(),
            audit_refusal_interval: crate::config::DEFAULT_AUDIT_REFUSAL_INTERVAL,
            object_store: None,
            region_object_stores: Vec::new(),
            cluster: crate::ClusterSettings::default(),
            console: None,
        }
    }

    /// What a first start makes: the data dir with a store, a key file
    /// and a credentials file beside it.
    fn make_all(dir: &Path) {
        std::fs::create_dir(dir.join("data")).unwrap();
        drop(atrest_store::RedbStore::open(&dir.join("data/kms.redb")).unwrap());
        std::fs::create_dir(dir.join("data/audit")).unwrap();
        std::fs::write(dir.join("data.root.key"), b"k").unwrap();
        std::fs::write(dir.join("data.admin-credentials"), b"c").unwrap();
    }

    #[test]
    fn a_failed_first_start_removes_what_it_made_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let first = FirstStart::note(&config(dir.path())).expect("a first start");
        make_all(dir.path());
        std::fs::write(dir.path().join("unrelated"), b"u").unwrap();
        first.undo();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["unrelated"]);

        // A data dir that existed empty stays, emptied; a key file that
        // existed before stays.
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data.root.key"), b"theirs").unwrap();
        let first = FirstStart::note(&config(dir.path())).expect("an empty dir is a first start");
        std::fs::remove_file(dir.path().join("data.root.key")).unwrap();
        std::fs::remove_dir(dir.path().join("data")).unwrap();
        make_all(dir.path());
        std::fs::write(dir.path().join("data.root.key"), b"theirs").unwrap();
        first.undo();
        assert!(dir.path().join("data").is_dir());
        assert_eq!(
            std::fs::read_dir(dir.path().join("data")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read(dir.path().join("data.root.key")).unwrap(),
            b"theirs"
        );
        assert!(!dir.path().join("data.admin-credentials").exists());
    }

    #[test]
    fn a_data_dir_another_server_holds_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let first = FirstStart::note(&config(dir.path())).expect("a first start");
        // Another server made the data dir and holds its store meanwhile.
        make_all(dir.path());
        let theirs = atrest_store::RedbStore::open(&dir.path().join("data/kms.redb")).unwrap();
        first.undo();
        drop(theirs);
        for f in [
            "data/kms.redb",
            "data/audit",
            "data.root.key",
            "data.admin-credentials",
        ] {
            assert!(dir.path().join(f).exists(), "{f} removed");
        }
    }

    #[test]
    fn no_undo_for_an_existing_installation_or_a_shared_store() {
        let dir = tempfile::tempdir().unwrap();
        make_all(dir.path());
        assert!(FirstStart::note(&config(dir.path())).is_none());
        let other = tempfile::tempdir().unwrap();
        let mut shared = config(other.path());
        shared.cluster.store_url = Some("postgres://db/atrest".into());
        assert!(FirstStart::note(&shared).is_none());
    }
}
