//! `atrest db`, over the REST API (`/v1/instances`).

use anyhow::Context;
use http::Method;
use serde_json::{Value, json};

use crate::admin::client;
use crate::cli::{DbArgs, DbCommand, DbEncryptionCommand, DbReplicaCommand};
use crate::disks::{call, parse_size, print};

/// Path segment of an instance name (names are a-z, 0-9 and '-'; anything
/// else is passed percent-encoded and refused by the server).
fn seg(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub async fn db(args: DbArgs) -> anyhow::Result<()> {
    let c = client(&args.client)?;
    let out: Value = match args.command {
        DbCommand::Create {
            name,
            key,
            service_key,
            unencrypted,
            class,
            size,
            port,
            master_username,
            password_file,
            tags,
        } => {
            let tags: serde_json::Map<String, Value> =
                tags.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let password = match password_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?
                        .trim_end_matches(['\n', '\r'])
                        .to_owned(),
                ),
                None => None,
            };
            let size = size.as_deref().map(parse_size).transpose()?;
            let body = json!({
                "name": name,
                "class": class,
                "key_id": key,
                "service_key": service_key,
                "unencrypted": unencrypted,
                "size": size,
                "port": port,
                "master_username": master_username,
                "master_password": password,
                "tags": tags,
            });
            call(&c, Method::POST, "/v1/instances", Some(&body)).await?
        }
        DbCommand::List => call(&c, Method::GET, "/v1/instances", None).await?,
        DbCommand::Show { name } => {
            call(
                &c,
                Method::GET,
                &format!("/v1/instances/{}", seg(&name)),
                None,
            )
            .await?
        }
        DbCommand::Start { name } => action(&c, &name, "start").await?,
        DbCommand::Stop { name } => action(&c, &name, "stop").await?,
        DbCommand::Restart { name } => action(&c, &name, "restart").await?,
        DbCommand::Delete { name } => {
            call(
                &c,
                Method::DELETE,
                &format!("/v1/instances/{}", seg(&name)),
                None,
            )
            .await?
        }
        DbCommand::Backup { name } => action(&c, &name, "backups").await?,
        DbCommand::Backups { name } => {
            let q = name.map_or_else(String::new, |n| format!("?instance={}", seg(&n)));
            call(&c, Method::GET, &format!("/v1/backups{q}"), None).await?
        }
        DbCommand::BackupShow { id } => {
            call(&c, Method::GET, &format!("/v1/backups/{}", seg(&id)), None).await?
        }
        DbCommand::BackupDelete { id } => {
            call(
                &c,
                Method::DELETE,
                &format!("/v1/backups/{}", seg(&id)),
                None,
            )
            .await?
        }
        DbCommand::BackupCopy {
            backup,
            to_region,
            key_id,
        } => {
            let body = json!({"region": to_region, "key_id": key_id});
            call(
                &c,
                Method::POST,
                &format!("/v1/backups/{}/copy", seg(&backup)),
                Some(&body),
            )
            .await?
        }
        DbCommand::Restore {
            backup,
            new_name,
            to_time,
            provider,
            key_id,
        } => {
            let mut body = json!({"name": new_name, "to_time": to_time});
            if let Some(p) = provider {
                body["source_key_provider"] = json!(p);
                body["key_id"] = json!(key_id);
            }
            call(
                &c,
                Method::POST,
                &format!("/v1/backups/{}/restore", seg(&backup)),
                Some(&body),
            )
            .await?
        }
        DbCommand::Replica {
            command:
                DbReplicaCommand::Create {
                    primary,
                    name,
                    port,
                },
        } => {
            let body = json!({"name": name, "port": port});
            call(
                &c,
                Method::POST,
                &format!("/v1/instances/{}/replicas", seg(&primary)),
                Some(&body),
            )
            .await?
        }
        DbCommand::Set { name, parameters } => {
            let mut params = serde_json::Map::new();
            for p in parameters {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("'{p}' is not NAME=VALUE"))?;
                let v = if v.is_empty() {
                    Value::Null
                } else {
                    Value::String(v.to_owned())
                };
                params.insert(k.to_owned(), v);
            }
            call(
                &c,
                Method::POST,
                &format!("/v1/instances/{}/parameters", seg(&name)),
                Some(&json!({"parameters": params})),
            )
            .await?
        }
        DbCommand::Modify {
            name,
            backup_retention_days,
        } => {
            call(
                &c,
                Method::POST,
                &format!("/v1/instances/{}/backup-retention", seg(&name)),
                Some(&json!({"days": backup_retention_days})),
            )
            .await?
        }
        DbCommand::Resize { name, size } => {
            let body = json!({"size": parse_size(&size)?});
            call(
                &c,
                Method::POST,
                &format!("/v1/instances/{}/resize", seg(&name)),
                Some(&body),
            )
            .await?
        }
        DbCommand::Clone {
            name,
            new_name,
            port,
        } => {
            let body = json!({"name": new_name, "port": port});
            call(
                &c,
                Method::POST,
                &format!("/v1/instances/{}/clone", seg(&name)),
                Some(&body),
            )
            .await?
        }
        DbCommand::Switchover { replica } => action(&c, &replica, "switchover").await?,
        DbCommand::Encryption {
            name,
            action: change,
        } => {
            let body = match change {
                DbEncryptionCommand::Enable(k) => {
                    json!({"action": "enable", "key_id": k.key, "service_key": k.service_key})
                }
                DbEncryptionCommand::Disable => json!({"action": "disable"}),
                DbEncryptionCommand::SetKey(k) => {
                    json!({"action": "set-key", "key_id": k.key, "service_key": k.service_key})
                }
            };
            call(
                &c,
                Method::POST,
                &format!("/v1/instances/{}/encryption", seg(&name)),
                Some(&body),
            )
            .await?
        }
    };
    print(&out)
}

async fn action(c: &atrest_client::Client, name: &str, what: &str) -> anyhow::Result<Value> {
    call(
        c,
        Method::POST,
        &format!("/v1/instances/{}/{what}", seg(name)),
        Some(&json!({})),
    )
    .await
}
