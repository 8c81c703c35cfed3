//! `atrest admin`: accounts and access keys, over the REST API.

use std::io::Read;

use anyhow::{Context, bail};
use atrest_client::{Client, Credentials};
use http::Method;
use serde_json::{Value, json};

use crate::cli::{AccessKeyCommand, AccountCommand, AdminArgs, AdminCommand, ClientArgs};

pub fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    let creds = match (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Ok(id), Ok(secret)) if !id.is_empty() => Credentials {
            access_key_id: id,
            secret_access_key: atrest_client::secret(&secret),
        },
        _ => {
            let path = match &args.credentials_file {
                Some(p) => p.clone(),
                None => {
                    std::path::PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                        .join(".aws/credentials")
                }
            };
            atrest_client::load_shared_credentials(&path, &args.profile)?
        }
    };
    Ok(Client::new(
        &args.endpoint,
        creds,
        &args.region,
        args.ca_file.as_deref(),
    )?)
}

fn show(resp: &atrest_client::Response) -> anyhow::Result<()> {
    let body = resp.json();
    if resp.status.is_success() {
        println!("{}", serde_json::to_string_pretty(&body)?);
        Ok(())
    } else {
        let code = body.get("code").and_then(Value::as_str).unwrap_or("Error");
        let msg = body.get("message").and_then(Value::as_str).unwrap_or("");
        bail!("{code} ({}): {msg}", resp.status.as_u16())
    }
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let c = client(&args.client)?;
    let resp = match args.command {
        AdminCommand::Account(AccountCommand::Create { id, admin }) => {
            c.rest(
                Method::POST,
                "/v1/accounts",
                Some(&json!({"id": id, "admin": admin})),
            )
            .await?
        }
        AdminCommand::Account(AccountCommand::List) => {
            c.rest(Method::GET, "/v1/accounts", None).await?
        }
        AdminCommand::AccessKey(AccessKeyCommand::Create { account }) => {
            c.rest(
                Method::POST,
                &format!("/v1/accounts/{account}/access-keys"),
                None,
            )
            .await?
        }
        AdminCommand::AccessKey(AccessKeyCommand::Import {
            account,
            access_key_id,
            secret_access_key_file,
        }) => {
            let mut secret = zeroize::Zeroizing::new(String::new());
            match secret_access_key_file {
                Some(p) => {
                    *secret = std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?;
                }
                None => {
                    std::io::stdin()
                        .read_to_string(&mut secret)
                        .context("reading the secret from standard input")?;
                }
            }
            let body = json!({"access_key_id": access_key_id, "secret_access_key": secret.trim()});
            c.rest(
                Method::POST,
                &format!("/v1/accounts/{account}/access-keys"),
                Some(&body),
            )
            .await?
        }
        AdminCommand::AccessKey(AccessKeyCommand::List { account }) => {
            c.rest(
                Method::GET,
                &format!("/v1/accounts/{account}/access-keys"),
                None,
            )
            .await?
        }
    };
    show(&resp)
}
