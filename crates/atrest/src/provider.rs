//! `atrest provider`: test a key provider configuration before relying on it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct ProviderArgs {
    #[command(subcommand)]
    pub command: ProviderCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Run the conformance suite against one provider and one of its keys:
    /// describe, wrap and unwrap, refusal of altered wrapped keys and of a
    /// missing key, and the health check. Prints JSON; exits non-zero if a
    /// check failed. Changes nothing at the provider.
    Check {
        /// The providers file (the same file `serve --key-providers` reads).
        #[arg(long)]
        providers: PathBuf,
        /// The provider's name in that file.
        #[arg(long)]
        provider: String,
        /// The remote key (an ARN or key id, a KMIP unique identifier, an
        /// Azure key name, a transit key name).
        #[arg(long)]
        key: String,
        /// A key the provider does not have (default: a random name of the
        /// provider's shape).
        #[arg(long)]
        missing_key: Option<String>,
    },
}

pub async fn run(args: ProviderArgs) -> anyhow::Result<()> {
    match args.command {
        ProviderCommand::Check {
            providers,
            provider,
            key,
            missing_key,
        } => {
            let out = tokio::task::spawn_blocking(move || {
                check(&providers, &provider, &key, missing_key)
            })
            .await
            .context("the check did not finish")??;
            println!("{}", serde_json::to_string_pretty(&out.0)?);
            if out.1 > 0 {
                bail!("{} conformance check(s) failed", out.1);
            }
            Ok(())
        }
    }
}

fn check(
    file: &std::path::Path,
    name: &str,
    key: &str,
    missing: Option<String>,
) -> anyhow::Result<(serde_json::Value, usize)> {
    let mut providers = atrest_keyprovider::ProvidersFile::load(file)?;
    let config = providers
        .providers
        .remove(name)
        .with_context(|| format!("{} has no provider named {name:?}", file.display()))?;
    let p = atrest_keyprovider::open(&config)?;
    let missing = missing.unwrap_or_else(|| atrest_keyprovider::conformance::missing_key(p.kind()));
    let checks = atrest_keyprovider::conformance::run(&*p, key, &missing);
    let failed = checks.iter().filter(|c| !c.passed).count();
    let json = serde_json::json!({
        "provider": name,
        "type": p.kind(),
        "endpoint": p.endpoint(),
        "key": key,
        "passed": failed == 0,
        "checks": checks.iter().map(|c| serde_json::json!({
            "name": c.name, "passed": c.passed, "detail": c.detail,
        })).collect::<Vec<_>>(),
    });
    Ok((json, failed))
}
