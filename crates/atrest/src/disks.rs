//! `atrest disk` and `atrest snapshot`, over the REST API.

use std::time::Duration;

use anyhow::{Context, bail};
use atrest_client::Client;
use http::Method;
use serde_json::{Value, json};

use crate::admin::{client, show};
use crate::cli::{DiskArgs, DiskCommand, SnapshotArgs, SnapshotCommand};

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024,
/// an optional trailing `iB` or `B`).
pub(crate) fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("'{s}' is not a size (bytes, or a number with K, M, G or T)"))?;
    n.checked_mul(1u64 << shift)
        .with_context(|| format!("'{s}' is too large"))
}

pub(crate) async fn call(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    // Creating an instance, a backup or a restore takes a while: a spinner
    // on a terminal says it is under way (nothing when output is piped).
    let spinner = (method != Method::GET && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(|| {
            let s = indicatif::ProgressBar::new_spinner();
            s.set_message(format!("{method} {path}"));
            s.enable_steady_tick(Duration::from_millis(120));
            s
        });
    let resp = c.rest(method, path, body).await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let resp = resp?;
    if resp.status.is_success() {
        Ok(resp.json())
    } else {
        show(&resp).map(|()| Value::Null)
    }
}

pub(crate) fn print(v: &Value) -> anyhow::Result<()> {
    crate::output::emit(v)
}

/// Follows a job with a progress bar (on a terminal; plain lines
/// otherwise) until it ends; fails if the job failed.
async fn follow(c: &Client, job: &Value) -> anyhow::Result<Value> {
    let id = job
        .get("id")
        .and_then(Value::as_str)
        .context("the answer names no job")?
        .to_owned();
    let total = job
        .pointer("/progress/total")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let kind = job.get("kind").and_then(Value::as_str).unwrap_or("job");
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("{kind} {id}"));
    loop {
        let v = call(c, Method::GET, &format!("/v1/jobs/{id}"), None).await?;
        let j = v.get("job").cloned().unwrap_or(Value::Null);
        let done = j
            .pointer("/progress/done")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        bar.set_position(done);
        match j.get("state").and_then(Value::as_str) {
            Some("running") => tokio::time::sleep(Duration::from_millis(200)).await,
            Some("succeeded") => {
                bar.finish();
                return Ok(j);
            }
            _ => {
                bar.abandon();
                let err = j
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                bail!("job {id} failed: {err}");
            }
        }
    }
}

/// Follows the restore job of a new disk (from the object store) to its
/// end, and shows the disk.
async fn follow_restore(c: &Client, disk: &Value) -> anyhow::Result<Value> {
    let id = disk.get("id").and_then(Value::as_str).unwrap_or_default();
    let jobs = call(c, Method::GET, "/v1/jobs", None).await?;
    let job = jobs
        .get("jobs")
        .and_then(Value::as_array)
        .and_then(|js| {
            js.iter().find(|j| {
                j.get("kind").and_then(Value::as_str) == Some("restore")
                    && j.get("target").and_then(Value::as_str) == Some(id)
            })
        })
        .cloned();
    if let Some(job) = job {
        follow(c, &job).await?;
    }
    call(c, Method::GET, &format!("/v1/disks/{id}"), None).await
}

pub async fn disk(args: DiskArgs) -> anyhow::Result<()> {
    let c = client(&args.client)?;
    let out = match args.command {
        DiskCommand::Create {
            size,
            block_size,
            key_id,
            unencrypted,
            shareable,
            tags,
        } => {
            let tags: serde_json::Map<String, Value> =
                tags.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let body = json!({"size": parse_size(&size)?, "block_size": block_size, "encrypted": !unencrypted, "key_id": key_id, "shareable": shareable, "tags": tags});
            call(&c, Method::POST, "/v1/disks", Some(&body)).await?
        }
        DiskCommand::List => call(&c, Method::GET, "/v1/disks", None).await?,
        DiskCommand::Show { id } => call(&c, Method::GET, &format!("/v1/disks/{id}"), None).await?,
        DiskCommand::Resize { id, size } => {
            let body = json!({"size": parse_size(&size)?});
            call(
                &c,
                Method::POST,
                &format!("/v1/disks/{id}/resize"),
                Some(&body),
            )
            .await?
        }
        DiskCommand::Snapshot {
            id,
            to_object_store,
            no_wait,
        } => {
            let body = if to_object_store {
                json!({"disk_id": id, "to_object_store": true})
            } else {
                json!({"disk_id": id})
            };
            let v = call(&c, Method::POST, "/v1/snapshots", Some(&body)).await?;
            match v.get("job").and_then(Value::as_str) {
                Some(job) if !no_wait => {
                    let j = call(&c, Method::GET, &format!("/v1/jobs/{job}"), None).await?;
                    follow(&c, j.get("job").unwrap_or(&Value::Null)).await?;
                    let sid = v.get("id").and_then(Value::as_str).unwrap_or_default();
                    call(&c, Method::GET, &format!("/v1/snapshots/{sid}"), None).await?
                }
                _ => v,
            }
        }
        DiskCommand::Rollback { id, snapshot } => {
            let body = json!({"snapshot_id": snapshot});
            call(
                &c,
                Method::POST,
                &format!("/v1/disks/{id}/rollback"),
                Some(&body),
            )
            .await?
        }
        DiskCommand::Clone { snapshot, no_wait } => {
            let v = call(
                &c,
                Method::POST,
                "/v1/disks",
                Some(&json!({"snapshot_id": snapshot})),
            )
            .await?;
            if no_wait || v.get("state").and_then(Value::as_str) != Some("restoring") {
                v
            } else {
                follow_restore(&c, &v).await?
            }
        }
        DiskCommand::Rekey {
            id,
            key_id,
            reencrypt,
            no_wait,
        } => {
            let body = if reencrypt {
                json!({"reencrypt": true})
            } else {
                json!({"key_id": key_id})
            };
            let v = call(
                &c,
                Method::POST,
                &format!("/v1/disks/{id}/rekey"),
                Some(&body),
            )
            .await?;
            match v.get("job") {
                Some(job) if !no_wait => {
                    follow(&c, job).await?;
                    call(&c, Method::GET, &format!("/v1/disks/{id}"), None).await?
                }
                _ => v,
            }
        }
        DiskCommand::Convert {
            id,
            encrypted,
            unencrypted: _,
            key_id,
            no_wait,
        } => {
            let body = json!({"encrypted": encrypted, "key_id": key_id});
            let v = call(
                &c,
                Method::POST,
                &format!("/v1/disks/{id}/convert"),
                Some(&body),
            )
            .await?;
            match v.get("job") {
                Some(job) if !no_wait => {
                    let j = follow(&c, job).await?;
                    let target = j.get("target").and_then(Value::as_str).unwrap_or_default();
                    call(&c, Method::GET, &format!("/v1/disks/{target}"), None).await?
                }
                _ => v,
            }
        }
        DiskCommand::Regrant { id } => {
            call(&c, Method::POST, &format!("/v1/disks/{id}/regrant"), None).await?
        }
        DiskCommand::Delete { id } => {
            call(&c, Method::DELETE, &format!("/v1/disks/{id}"), None).await?
        }
        DiskCommand::Attach { id, local: _ } => {
            call(
                &c,
                Method::POST,
                &format!("/v1/disks/{id}/attach-local"),
                Some(&json!({})),
            )
            .await?
        }
        DiskCommand::Detach { id } => {
            call(
                &c,
                Method::POST,
                &format!("/v1/disks/{id}/detach-local"),
                Some(&json!({})),
            )
            .await?
        }
        DiskCommand::Job { id, follow: f } => {
            let v = call(&c, Method::GET, &format!("/v1/jobs/{id}"), None).await?;
            match v.get("job") {
                Some(job) if f => follow(&c, job).await?,
                _ => v,
            }
        }
        DiskCommand::Jobs => call(&c, Method::GET, "/v1/jobs", None).await?,
    };
    print(&out)
}

pub async fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let c = client(&args.client)?;
    let out = match args.command {
        SnapshotCommand::List => call(&c, Method::GET, "/v1/snapshots", None).await?,
        SnapshotCommand::Show { id } => {
            call(&c, Method::GET, &format!("/v1/snapshots/{id}"), None).await?
        }
        SnapshotCommand::Delete { id } => {
            call(&c, Method::DELETE, &format!("/v1/snapshots/{id}"), None).await?
        }
        SnapshotCommand::Copy {
            id,
            to_region,
            key,
            no_wait,
        } => {
            let body = json!({"region": to_region, "key_id": key});
            let v = call(
                &c,
                Method::POST,
                &format!("/v1/snapshots/{id}/copy"),
                Some(&body),
            )
            .await?;
            // The copy lives in the destination region: follow it there.
            let mut there_args = args.client.clone();
            there_args.region = Some(to_region.clone());
            let there = client(&there_args)?;
            match v.get("job").and_then(Value::as_str) {
                Some(job) if !no_wait => {
                    let j = call(&there, Method::GET, &format!("/v1/jobs/{job}"), None).await?;
                    follow(&there, j.get("job").unwrap_or(&Value::Null)).await?;
                    let sid = v.get("id").and_then(Value::as_str).unwrap_or_default();
                    call(&there, Method::GET, &format!("/v1/snapshots/{sid}"), None).await?
                }
                _ => v,
            }
        }
        SnapshotCommand::Restore {
            id,
            provider,
            key_id,
            no_wait,
        } => {
            let body =
                json!({"snapshot_id": id, "source_key_provider": provider, "key_id": key_id});
            let v = call(&c, Method::POST, "/v1/disks", Some(&body)).await?;
            if no_wait {
                v
            } else {
                follow_restore(&c, &v).await?
            }
        }
    };
    print(&out)
}

/// `atrest recover snapshot`: the plaintext image of a stored snapshot,
/// rebuilt offline from the object store, the data dir and its root of
/// trust.
pub async fn recover(args: crate::cli::RecoverArgs) -> anyhow::Result<()> {
    let crate::cli::RecoverCommand::Snapshot(a) = args.command;
    tokio::task::spawn_blocking(move || recover_snapshot(&a))
        .await
        .context("the recovery thread failed")?
}

fn recover_snapshot(a: &crate::cli::RecoverSnapshotArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let data_dir = crate::root_args::data_dir(&a.root)?;
    if !data_dir.join("disks").join("meta.redb").exists() {
        bail!(
            "{} is not an atrest data dir (no disks/meta.redb); recovery needs the metadata of the server that stored the snapshot",
            data_dir.display()
        );
    }
    let (root, _) = crate::root_args::root_source(&a.root, &data_dir)?;
    let providers = crate::root_args::providers(&a.root)?;
    let opened = atrest_server::datadir::open(
        &data_dir,
        &atrest_server::datadir::default_admin_credentials_file(&data_dir),
        root,
        a.regions.clone(),
        std::sync::Arc::new(atrest_kms::clock::SystemClock),
        (
            &atrest_audit::Options::default(),
            atrest_server::config::AuditSync::Changes,
        ),
        (
            atrest_diskservice::Config::default(),
            a.metadata_store.as_deref(),
        ),
    )
    .context("opening the data dir (is the server still running?)")?;
    opened
        .kms
        .set_providers(atrest_kms::Providers::new(providers));
    let store = a.from.as_ref().map(|url| atrest_objstore::StoreConfig {
        url: url.clone(),
        endpoint: a.store.endpoint.clone(),
        region: a.store.region.clone(),
        path_style: a.store.path_style,
    });
    let objects = atrest_diskservice::ObjectStores::one(atrest_server::datadir::object_store(
        &data_dir,
        store.as_ref(),
    )?);
    // The image is plaintext: readable by its owner alone.
    let file = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().write(true).create_new(true),
        0o600,
    )
    .open(&a.out)
    .with_context(|| format!("creating {}", a.out.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let n = opened.disks.recover_stored(
        objects,
        std::sync::Arc::clone(&opened.disk_meta),
        &a.id,
        &mut w,
    );
    let n = match n {
        Ok(n) => n,
        Err(e) => {
            drop(w);
            let _ = std::fs::remove_file(&a.out);
            bail!("cannot recover snapshot {}: {e}", a.id);
        }
    };
    w.flush()?;
    w.get_ref().sync_all()?;
    println!(
        "snapshot {} recovered: {n} bytes written to {}",
        a.id,
        a.out.display()
    );
    Ok(())
}

/// `atrest nbd`.
pub fn nbd(args: &crate::cli::NbdArgs) -> anyhow::Result<()> {
    match &args.command {
        crate::cli::NbdCommand::Psk { out } => {
            let settings = crate::output::settings(&args.client)?;
            let creds = crate::admin::credentials(&args.client, &settings)?;
            let key = atrest_server::nbd::psk_for_secret(creds.secret_access_key.expose());
            let line = zeroize::Zeroizing::new(format!(
                "{}:{}\n",
                creds.access_key_id,
                hex::encode(&*key)
            ));
            if out.as_os_str() == "-" {
                print!("{}", &*line);
                return Ok(());
            }
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(out)
                .with_context(|| format!("writing {}", out.display()))?;
            f.write_all(line.as_bytes())
                .with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("64GiB").unwrap(), 64 << 30);
        assert_eq!(parse_size("10M").unwrap(), 10 << 20);
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
