//! The data dir and root-of-trust options, turned into a `RootSource`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use atrest_crypto::SecretBytes;
use atrest_kms::root::RootSource;

use crate::cli::RootArgs;

/// The data dir: `--data-dir`, else `$XDG_DATA_HOME/atrest`, else
/// `~/.local/share/atrest`.
pub fn data_dir(args: &RootArgs) -> anyhow::Result<PathBuf> {
    match &args.data_dir {
        Some(d) => Ok(d.clone()),
        None => default_data_dir(),
    }
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
    args: &RootArgs,
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

/// The key providers of `--key-providers`, opened (no network yet).
pub fn providers(
    args: &RootArgs,
) -> anyhow::Result<
    std::collections::BTreeMap<String, std::sync::Arc<dyn atrest_keyprovider::KeyProvider>>,
> {
    let Some(path) = &args.key_providers else {
        return Ok(std::collections::BTreeMap::new());
    };
    let file = atrest_keyprovider::ProvidersFile::load(path)?;
    file.providers
        .iter()
        .map(|(name, config)| {
            atrest_keyprovider::open(config)
                .map(|p| (name.clone(), p))
                .with_context(|| format!("key provider {name} in {}", path.display()))
        })
        .collect()
}

pub fn root_source(
    args: &RootArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<(RootSource, String)> {
    if let Some(name) = &args.root_provider {
        let mut all = providers(args)?;
        let Some(provider) = all.remove(name) else {
            bail!("--root-provider {name}: no provider of that name in --key-providers");
        };
        let key = args.root_provider_key.clone().unwrap_or_default();
        let shown = format!("key {key} of key provider {name} ({})", provider.kind());
        return Ok((
            RootSource::Provider {
                provider,
                name: name.clone(),
                key,
            },
            shown,
        ));
    }
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
