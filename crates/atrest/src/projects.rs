//! `atrest project`, over the REST API (`/v1/projects`).

use anyhow::Context;
use http::Method;
use serde_json::{Value, json};

use crate::admin::client;
use crate::cli::{ProjectArgs, ProjectCommand};
use crate::disks::{call, parse_size, print};

pub async fn project(args: ProjectArgs) -> anyhow::Result<()> {
    let c = client(&args.client)?;
    let p = |id: &str, rest: &str| format!("/v1/projects/{id}{rest}");
    // `--key-region` defaults to the region requests are signed for.
    let default_region = crate::output::settings(&args.client)?.region;
    let v = match args.command {
        ProjectCommand::Create {
            name,
            cmek,
            revocation,
            stop_after,
            client_token,
            tags,
        } => {
            let revocation = match (revocation.as_str(), stop_after) {
                ("keep", None) => json!({"policy": "keep"}),
                ("stop", Some(s)) => json!({"policy": "stop", "after_seconds": s}),
                ("stop", None) => anyhow::bail!("--revocation stop needs --stop-after SECONDS"),
                ("keep", Some(_)) => anyhow::bail!("--stop-after goes with --revocation stop"),
                (other, _) => anyhow::bail!("--revocation is keep or stop, not {other}"),
            };
            let mut body = json!({"name": name, "cmek": cmek, "revocation": revocation});
            if let Some(t) = client_token {
                body["client_token"] = json!(t);
            }
            if !tags.is_empty() {
                let tags: serde_json::Map<String, Value> =
                    tags.into_iter().map(|(k, v)| (k, json!(v))).collect();
                body["tags"] = Value::Object(tags);
            }
            call(&c, Method::POST, "/v1/projects", Some(&body)).await?
        }
        ProjectCommand::List => call(&c, Method::GET, "/v1/projects?limit=1000", None).await?,
        ProjectCommand::Show { id } => call(&c, Method::GET, &p(&id, ""), None).await?,
        ProjectCommand::Delete { id } => call(&c, Method::DELETE, &p(&id, ""), None).await?,
        ProjectCommand::KeyPolicy { id, region } => {
            let region = region.unwrap_or_else(|| default_region.clone());
            call(
                &c,
                Method::GET,
                &p(&id, &format!("/key-policy/{region}")),
                None,
            )
            .await?
        }
        ProjectCommand::SetKey { id, key, region } => {
            let region = region.unwrap_or_else(|| default_region.clone());
            call(
                &c,
                Method::PUT,
                &p(&id, &format!("/keys/{region}")),
                Some(&json!({"key_id": key})),
            )
            .await?
        }
        ProjectCommand::CreateDisk {
            id,
            size,
            block_size,
            shareable,
        } => {
            let mut body = json!({"size": parse_size(&size)?});
            if let Some(b) = block_size {
                body["block_size"] = json!(b);
            }
            if shareable {
                body["shareable"] = json!(true);
            }
            call(&c, Method::POST, &p(&id, "/disks"), Some(&body)).await?
        }
        ProjectCommand::CreateDb {
            id,
            name,
            size,
            port,
            password_file,
        } => {
            let mut body = json!({"name": name});
            if let Some(s) = size {
                body["size"] = json!(parse_size(&s)?);
            }
            if let Some(port) = port {
                body["port"] = json!(port);
            }
            if let Some(f) = password_file {
                let pw = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                body["master_password"] = Value::String(pw.trim_end_matches('\n').to_owned());
            }
            call(&c, Method::POST, &p(&id, "/instances"), Some(&body)).await?
        }
        ProjectCommand::Pause { id } => call(&c, Method::POST, &p(&id, "/pause"), None).await?,
        ProjectCommand::Resume { id } => call(&c, Method::POST, &p(&id, "/resume"), None).await?,
    };
    print(&v)
}
