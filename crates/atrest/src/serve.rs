//! `atrest serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use atrest_crypto::SecretBytes;
use atrest_kms::root::RootSource;
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

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("atrest"));
    }
    let home =
        std::env::var_os("HOME").context("neither --data-dir, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/atrest"))
}

/// Reads a secret from a file, without the trailing newline `echo` leaves.
fn read_secret_file(path: &std::path::Path, what: &str) -> anyhow::Result<SecretBytes> {
    let mut bytes = SecretBytes::new(
        std::fs::read(path).with_context(|| format!("reading {what} file {}", path.display()))?,
    );
    while bytes
        .expose()
        .last()
        .is_some_and(|b| *b == b'\n' || *b == b'\r')
    {
        bytes.expose_mut().pop();
    }
    if bytes.is_empty() {
        bail!("{what} file {} is empty", path.display());
    }
    Ok(bytes)
}

/// The PKCS#11 source: the module and token from the flags, the PIN from
/// --root-pkcs11-pin-file or ATREST_ROOT_PKCS11_PIN.
fn pkcs11_root_source(
    args: &ServeArgs,
    module: &std::path::Path,
) -> anyhow::Result<(RootSource, String)> {
    let Some(token) = args.root_pkcs11_token.clone() else {
        bail!("--root-pkcs11-module needs --root-pkcs11-token LABEL");
    };
    if std::env::var_os("ATREST_ROOT_PASSPHRASE").is_some() {
        bail!(
            "ATREST_ROOT_PASSPHRASE is set, but --root-pkcs11-module seals with a PKCS#11 token; unset one of them"
        );
    }
    let pin = match (
        &args.root_pkcs11_pin_file,
        std::env::var_os("ATREST_ROOT_PKCS11_PIN"),
    ) {
        (Some(path), _) => read_secret_file(path, "PKCS#11 PIN")?,
        (None, Some(p)) => {
            let p = zeroize::Zeroizing::new(p.into_encoded_bytes());
            if p.is_empty() {
                bail!("ATREST_ROOT_PKCS11_PIN is empty");
            }
            SecretBytes::new(p.to_vec())
        }
        (None, None) => bail!(
            "the PKCS#11 token's user PIN is needed: give --root-pkcs11-pin-file FILE or set ATREST_ROOT_PKCS11_PIN"
        ),
    };
    let key_label = args.root_pkcs11_key_label.clone();
    if key_label.is_empty() {
        bail!("--root-pkcs11-key-label is empty");
    }
    let shown = format!(
        "PKCS#11 key '{key_label}' in token '{token}' (module {})",
        module.display()
    );
    Ok((
        RootSource::Pkcs11 {
            module: module.to_path_buf(),
            token_label: token,
            pin,
            key_label,
        },
        shown,
    ))
}

fn root_source(
    args: &ServeArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<(RootSource, String)> {
    if let Some(module) = &args.root_pkcs11_module {
        return pkcs11_root_source(args, module);
    }
    let from_env = std::env::var_os("ATREST_ROOT_PASSPHRASE");
    match (&args.root_passphrase_file, from_env) {
        (Some(path), _) => {
            // A trailing newline from `echo` is not part of the passphrase.
            let bytes = read_secret_file(path, "passphrase")?;
            Ok((
                RootSource::Passphrase(bytes),
                format!("passphrase from {}", path.display()),
            ))
        }
        (None, Some(p)) if args.root_key_file.is_none() => {
            let p = zeroize::Zeroizing::new(p.into_encoded_bytes());
            if p.is_empty() {
                bail!("ATREST_ROOT_PASSPHRASE is empty");
            }
            Ok((
                RootSource::Passphrase(SecretBytes::new(p.to_vec())),
                "passphrase from ATREST_ROOT_PASSPHRASE".into(),
            ))
        }
        _ => {
            let path = args
                .root_key_file
                .clone()
                .unwrap_or_else(|| atrest_server::datadir::default_root_key_file(data_dir));
            let shown = format!("key file {}", path.display());
            Ok((RootSource::KeyFile(path), shown))
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let _log_guard = init_logging(args.log_format);
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => default_data_dir()?,
    };
    let (root, root_shown) = root_source(&args, &data_dir)?;
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
        root,
        regions: args.regions.clone(),
        lifecycle_interval: Duration::from_secs(args.lifecycle_interval),
        lifecycle_clock_offset: time::Duration::days(args.lifecycle_clock_offset_days),
        max_body_bytes: atrest_server::config::DEFAULT_MAX_BODY,
        metrics_listen: args.metrics_listen,
        audit_faults: None,
    };
    let server = atrest_server::start(config)
        .await
        .map_err(anyhow::Error::msg)?;
    let endpoint = format!("{scheme}://{}", server.addr);
    println!(
        "atrest {} listening on {endpoint}",
        env!("CARGO_PKG_VERSION")
    );
    println!("  regions:  {}", server.kms.regions().join(", "));
    println!("  data dir: {}", data_dir.display());
    println!("  root:     {root_shown}");
    if let Some(m) = server.metrics_addr {
        println!("  metrics:  http://{m}/metrics");
    }
    if let Some((boot, path)) = &server.bootstrap {
        println!();
        println!(
            "First start: created admin account {} with access key {}.",
            boot.key.account, boot.key.access_key_id
        );
        println!(
            "Its credentials are in {} (AWS shared-credentials format). Try:",
            path.display()
        );
        println!(
            "  AWS_SHARED_CREDENTIALS_FILE={} AWS_DEFAULT_REGION={} aws --endpoint-url {endpoint} kms create-key",
            path.display(),
            server.kms.regions()[0]
        );
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
