//! `atrest serve`.

use std::time::Duration;

use anyhow::Context;
use atrest_server::{ServerConfig, TlsFiles};

use crate::cli::{LogFormat, ServeArgs};

/// Logs go to stderr through a background writer, so a request never waits
/// on a write system call; colours only on a terminal. The guard flushes the
/// writer when dropped.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATREST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Not lossy: under a flood the writer applies back-pressure rather than
    // dropping lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// `url` without the password its user info may carry.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let _log_guard = init_logging(args.log_format);
    // The connection limits, not the default soft limit of 1024 open
    // files, are what bound the connections.
    match atrest_listen::raise_open_files_limit() {
        Ok(n) if (n as usize) < args.connections.max_connections.saturating_mul(2) => {
            tracing::warn!(
                open_files = n,
                max_connections = args.connections.max_connections,
                "the open-files limit is below what the connection limits may need"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
    let mut signals = Signals::install()?;
    let data_dir = crate::root_args::data_dir(&args.root)?;
    let (root, root_shown) = crate::root_args::root_source(&args.root, &data_dir)?;
    let providers = crate::root_args::providers(&args.root)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let config = ServerConfig {
        listen: args.listen,
        tls,
        allow_plaintext_remote: args.allow_plaintext_remote,
        data_dir: data_dir.clone(),
        admin_credentials: args.admin_credentials.clone(),
        root,
        regions: args.regions.clone(),
        lifecycle_interval: Duration::from_secs(args.lifecycle_interval),
        lifecycle_clock_offset: time::Duration::days(args.lifecycle_clock_offset_days),
        max_body_bytes: atrest_server::config::DEFAULT_MAX_BODY,
        metrics_listen: args.metrics_listen,
        audit: atrest_audit::Options {
            commit_interval: Duration::from_micros(args.audit_commit_delay_us),
            sync_interval: Duration::from_millis(args.audit_sync_interval_ms),
            segment_bytes: args.audit_segment_bytes,
            ..atrest_audit::Options::default()
        },
        audit_sync: match args.audit_sync {
            crate::cli::AuditSync::Changes => atrest_server::config::AuditSync::Changes,
            crate::cli::AuditSync::Every => atrest_server::config::AuditSync::Every,
        },
        disks: atrest_diskservice::Config {
            on_key_loss: match args.disk_on_key_loss {
                crate::cli::OnKeyLoss::Keep => atrest_diskservice::OnKeyLoss::KeepServing,
                crate::cli::OnKeyLoss::Close => atrest_diskservice::OnKeyLoss::CloseAfter(
                    Duration::from_secs(args.disk_close_after),
                ),
            },
            check_interval: Duration::from_secs(args.disk_key_check_interval),
        },
        nbd: nbd_config(&args)?,
        db: atrest_server::DbSettings {
            pg_bin: args.db_pg_bin.clone(),
            uid_range: args.db_uid_range.clone(),
            backup_dir: args.db_backup_dir.clone(),
            ..atrest_server::DbSettings::default()
        },
        providers,
        provider_check_interval: Duration::from_secs(args.key_provider_check_interval),
        access_key_use_flush: Duration::from_secs(args.access_key_last_used_flush_secs),
        connections: args.connections.limits(),
        audit_refusal_interval: Duration::from_secs(args.audit_refusal_interval),
        object_store: args.object_store.config(),
        region_object_stores: args.object_store.region_configs()?,
        cluster: atrest_server::ClusterSettings {
            store_url: args.store.clone(),
            node_name: args.node_name.clone(),
            advertise_api: args.advertise_api.clone(),
            advertise_nbd: args.advertise_nbd.clone(),
        },
        console: (!args.no_console).then(|| atrest_console::Options {
            idle_timeout: Duration::from_secs(args.console_idle_timeout),
            lifetime: Duration::from_secs(args.console_session_lifetime),
            ..atrest_console::Options::default()
        }),
    };
    let server = atrest_server::start(config).await?;
    let endpoint = format!("{scheme}://{}", server.addr);
    println!(
        "atrest {} listening on {endpoint}",
        env!("CARGO_PKG_VERSION")
    );
    println!("  regions:  {}", server.kms.regions().join(", "));
    println!("  data dir: {}", data_dir.display());
    match &args.store {
        None => println!("  store:    embedded (redb files in the data dir)"),
        Some(url) => println!("  store:    {} (shared)", redact_url(url)),
    }
    println!("  node:     {} ({})", server.node.name, server.node.id);
    println!("  root:     {root_shown}");
    if !args.no_console {
        println!("  console:  {endpoint}/console/");
    }
    if let Some(m) = server.metrics_addr {
        println!("  metrics:  http://{m}/metrics");
    }
    if let Some(n) = server.nbd_addr {
        let mode = if args.nbd_plaintext_principal.is_some() {
            "plaintext on loopback allowed"
        } else {
            "TLS required"
        };
        println!("  nbd:      nbd://{n}/DISK-ID ({mode})");
    }
    if let Some((boot, path)) = &server.bootstrap {
        println!();
        println!(
            "First start: created admin account {} with access key {}.",
            boot.key.account, boot.key.access_key_id
        );
        println!(
            "Its credentials are in {} (AWS shared-credentials format, mode 0600, outside the data dir). Try:",
            path.display()
        );
        println!(
            "  AWS_SHARED_CREDENTIALS_FILE={} AWS_DEFAULT_REGION={} aws --endpoint-url {endpoint} kms create-key",
            path.display(),
            server.kms.regions()[0]
        );
        if !args.no_console {
            println!(
                "Or sign in to the console at {endpoint}/console/ with that access key and its secret."
            );
        }
    }
    signals.wait().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

fn nbd_config(args: &ServeArgs) -> anyhow::Result<Option<atrest_server::nbd::NbdConfig>> {
    let Some(listen) = args.nbd_listen else {
        return Ok(None);
    };
    let cert = args.nbd_tls_cert.clone().or_else(|| args.tls_cert.clone());
    let key = args.nbd_tls_key.clone().or_else(|| args.tls_key.clone());
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(atrest_server::nbd::NbdTls {
            cert,
            key,
            client_ca: args.nbd_tls_client_ca.clone(),
        }),
        (None, None) => None,
        _ => anyhow::bail!("NBD TLS needs both a certificate and a key"),
    };
    if tls.is_none() && args.nbd_tls_client_ca.is_some() {
        anyhow::bail!(
            "--nbd-tls-client-ca needs a server certificate (--nbd-tls-cert and --nbd-tls-key)"
        );
    }
    Ok(Some(atrest_server::nbd::NbdConfig {
        listen,
        tls,
        plaintext_principal: args.nbd_plaintext_principal.clone(),
    }))
}

/// SIGTERM and SIGINT, caught from the moment this is made: made before the
/// server starts, so that a signal sent as soon as it answers (before the
/// banner is printed) stops it cleanly, last use and disks flushed, rather
/// than killing it.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
