//! `atrest admin`: accounts and access keys, over the REST API.

use std::io::Read;

use anyhow::{Context, bail};
use atrest_client::{Client, Credentials};
use http::Method;
use serde_json::{Value, json};

use crate::cli::{
    AccessKeyCommand, AccountCommand, AdminArgs, AdminCommand, AuditArgs, AuditCommand, ClientArgs,
    MeteringArgs, UserCommand,
};

pub fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    let s = crate::output::settings(args)?;
    crate::output::set_format(args.output);
    Ok(Client::new(
        &s.endpoint,
        credentials(args, &s)?,
        &s.region,
        s.ca_file.as_deref(),
    )?)
}

/// The caller's credentials: the environment's, or the credentials file's.
pub fn credentials(
    args: &ClientArgs,
    settings: &crate::output::Settings,
) -> anyhow::Result<Credentials> {
    Ok(
        match (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(id), Ok(secret)) if !id.is_empty() => Credentials {
                access_key_id: id,
                secret_access_key: atrest_client::secret(&secret),
            },
            _ => {
                let path = match &settings.credentials_file {
                    Some(p) => p.clone(),
                    None => std::path::PathBuf::from(
                        std::env::var_os("HOME").context("HOME is not set")?,
                    )
                    .join(".aws/credentials"),
                };
                atrest_client::load_shared_credentials(&path, &args.profile)?
            }
        },
    )
}

pub fn show(resp: &atrest_client::Response) -> anyhow::Result<()> {
    let body = resp.json();
    if resp.status.is_success() {
        crate::output::emit(&body)
    } else {
        let code = body.get("code").and_then(Value::as_str).unwrap_or("Error");
        let msg = body.get("message").and_then(Value::as_str).unwrap_or("");
        bail!("{code} ({}): {msg}", resp.status.as_u16())
    }
}

/// Percent-encodes a query parameter value.
fn q(v: &str) -> String {
    atrest_sigv4::uri_encode(v.as_bytes(), false)
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let c = client(&args.client)?;
    let resp = match args.command {
        AdminCommand::ServiceKey { service } => {
            c.rest(
                Method::PUT,
                &format!("/v1/service-keys/{}", q(&service)),
                None,
            )
            .await?
        }
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
        AdminCommand::Account(AccountCommand::Suspend { id }) => {
            c.rest(Method::POST, &format!("/v1/accounts/{id}/suspend"), None)
                .await?
        }
        AdminCommand::Account(AccountCommand::Disks { id }) => {
            c.rest(Method::GET, &format!("/v1/accounts/{id}/disks"), None)
                .await?
        }
        AdminCommand::Account(AccountCommand::Resume { id }) => {
            c.rest(Method::POST, &format!("/v1/accounts/{id}/resume"), None)
                .await?
        }
        AdminCommand::AccessKey(AccessKeyCommand::Create { account, user }) => {
            let body = user.map(|u| json!({"user": u}));
            c.rest(
                Method::POST,
                &format!("/v1/accounts/{account}/access-keys"),
                body.as_ref(),
            )
            .await?
        }
        AdminCommand::AccessKey(AccessKeyCommand::Import {
            account,
            access_key_id,
            user,
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
            let body = json!({"access_key_id": access_key_id, "user": user, "secret_access_key": secret.trim()});
            c.rest(
                Method::POST,
                &format!("/v1/accounts/{account}/access-keys"),
                Some(&body),
            )
            .await?
        }
        AdminCommand::AccessKey(AccessKeyCommand::List { account }) => {
            let resp = c
                .rest(
                    Method::GET,
                    &format!("/v1/accounts/{account}/access-keys"),
                    None,
                )
                .await?;
            if resp.status.is_success() && crate::output::format() == crate::cli::Output::Table {
                return crate::output::emit(&access_key_rows(&resp.json()));
            }
            resp
        }
        AdminCommand::AccessKey(AccessKeyCommand::Deactivate { account, id }) => {
            c.rest(
                Method::POST,
                &format!("/v1/accounts/{account}/access-keys/{}/deactivate", q(&id)),
                None,
            )
            .await?
        }
        AdminCommand::AccessKey(AccessKeyCommand::Activate { account, id }) => {
            c.rest(
                Method::POST,
                &format!("/v1/accounts/{account}/access-keys/{}/activate", q(&id)),
                None,
            )
            .await?
        }
        AdminCommand::AccessKey(AccessKeyCommand::Delete { account, id }) => {
            c.rest(
                Method::DELETE,
                &format!("/v1/accounts/{account}/access-keys/{}", q(&id)),
                None,
            )
            .await?
        }
        AdminCommand::User(UserCommand::Create { account, name }) => {
            c.rest(
                Method::POST,
                &format!("/v1/accounts/{account}/users"),
                Some(&json!({"name": name})),
            )
            .await?
        }
        AdminCommand::User(UserCommand::List { account }) => {
            c.rest(Method::GET, &format!("/v1/accounts/{account}/users"), None)
                .await?
        }
        AdminCommand::User(UserCommand::PutPolicy {
            account,
            user,
            name,
            document_file,
        }) => {
            let document = std::fs::read_to_string(&document_file)
                .with_context(|| format!("reading {}", document_file.display()))?;
            c.rest(
                Method::PUT,
                &format!("/v1/accounts/{account}/users/{user}/policies/{name}"),
                Some(&json!({"document": document})),
            )
            .await?
        }
        AdminCommand::User(UserCommand::GetPolicy {
            account,
            user,
            name,
        }) => {
            c.rest(
                Method::GET,
                &format!("/v1/accounts/{account}/users/{user}/policies/{name}"),
                None,
            )
            .await?
        }
        AdminCommand::User(UserCommand::DeletePolicy {
            account,
            user,
            name,
        }) => {
            c.rest(
                Method::DELETE,
                &format!("/v1/accounts/{account}/users/{user}/policies/{name}"),
                None,
            )
            .await?
        }
    };
    show(&resp)
}

/// Epoch seconds as an RFC 3339 time, to the second.
fn rfc3339(secs: Option<f64>) -> Option<String> {
    // Whole seconds: the fraction is noise for people.
    #[allow(clippy::cast_possible_truncation)]
    let t = time::OffsetDateTime::from_unix_timestamp(secs?.floor() as i64).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// An access key list for people: one row per key with its status and
/// last use in columns of their own (the API nests the last use).
fn access_key_rows(body: &Value) -> Value {
    let keys = body
        .get("access_keys")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let rows: Vec<Value> = keys
        .iter()
        .map(|k| {
            let last = k.get("last_used").filter(|l| !l.is_null());
            let field = |name: &str| last.and_then(|l| l.get(name)).cloned();
            json!({
                "access_key_id": k.get("access_key_id"),
                "user": k.get("user").cloned().unwrap_or_else(|| json!("(root)")),
                "status": k.get("status"),
                "created": rfc3339(k.get("created").and_then(Value::as_f64)),
                "last_used": rfc3339(last.and_then(|l| l.get("time")).and_then(Value::as_f64))
                    .unwrap_or_else(|| "never".to_owned()),
                "last_service": field("service"),
                "last_region": field("region"),
            })
        })
        .collect();
    json!({ "access_keys": rows })
}

fn report_verification(good: u64, first_bad: Option<(u64, String)>) -> anyhow::Result<()> {
    match first_bad {
        None => {
            println!("audit trail verified: {good} records, chain and head intact");
            Ok(())
        }
        Some((record, reason)) => bail!(
            "audit trail damaged: record {record} is bad ({reason}); the {good} records before it verify"
        ),
    }
}

/// Prints one line per node of a `POST /v1/audit/verify` answer, then the
/// verdict (the single-node wording when there is one node).
fn report_nodes(body: &Value) -> anyhow::Result<()> {
    let nodes = body
        .get("nodes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let first_bad = |v: &Value| {
        v.get("first_bad").filter(|b| !b.is_null()).map(|b| {
            (
                b.get("record").and_then(Value::as_u64).unwrap_or(0),
                b.get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown reason")
                    .to_owned(),
            )
        })
    };
    let mut total = 0;
    for n in &nodes {
        let good = n.get("good_records").and_then(Value::as_u64).unwrap_or(0);
        total += good;
        let mut line = format!(
            "node {} ({}): {}, {good} records verified",
            text(n, "name"),
            text(n, "node"),
            text(n, "state")
        );
        if let Some((record, reason)) = first_bad(n) {
            line.push_str(&format!("; record {record} is bad ({reason})"));
        } else if let Some(reason) = n.get("reason").and_then(Value::as_str) {
            line.push_str(&format!("; {reason}"));
        }
        println!("{line}");
    }
    let verified = body.get("verified").and_then(Value::as_bool) == Some(true);
    if nodes.len() <= 1 {
        let good = body
            .get("good_records")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match first_bad(body) {
            None if verified => {
                println!("audit trail verified: {good} records, chain and head intact");
                return Ok(());
            }
            None => {
                let why = nodes.first().map(|n| text(n, "reason")).unwrap_or_default();
                bail!("audit trail damaged: {why}")
            }
            Some((record, reason)) => bail!(
                "audit trail damaged: record {record} is bad ({reason}); the {good} records before it verify"
            ),
        }
    }
    if verified {
        println!(
            "audit trail verified: {} nodes, {total} records, every chain and head intact",
            nodes.len()
        );
        return Ok(());
    }
    let bad: Vec<String> = nodes
        .iter()
        .filter(|n| n.get("verified").and_then(Value::as_bool) != Some(true))
        .map(|n| format!("{} ({})", text(n, "name"), text(n, "state")))
        .collect();
    bail!("audit trail not verified on every node: {}", bad.join(", "))
}

/// Verifies the audit files of a data dir directly, with its root of trust.
fn verify_offline(root: &crate::cli::RootArgs) -> anyhow::Result<()> {
    let data_dir = crate::root_args::data_dir(root)?;
    let (source, _) = crate::root_args::root_source(root, &data_dir)?;
    let key = atrest_server::datadir::audit_key(&data_dir, source)?;
    let report = atrest_audit::verify(&atrest_server::datadir::audit_dir(&data_dir), &key)?;
    report_verification(report.good, report.first_bad)
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    if let Some(AuditCommand::Verify(v)) = &args.command {
        if v.offline {
            return verify_offline(&v.root);
        }
        let c = client(&args.client)?;
        let resp = c.rest(Method::POST, "/v1/audit/verify", None).await?;
        if !resp.status.is_success() {
            return show(&resp);
        }
        return report_nodes(&resp.json());
    }
    let c = client(&args.client)?;
    let mut filters = Vec::new();
    for (name, v) in [
        ("account", &args.account),
        ("key", &args.key),
        ("principal", &args.principal),
        ("operation", &args.operation),
        ("since", &args.since),
        ("until", &args.until),
    ] {
        if let Some(v) = v {
            filters.push(format!("{name}={}", q(v)));
        }
    }
    // The server answers at most a page of records, the latest first:
    // ask for older pages (`before`) until --limit records are here or
    // there are no more, and print them all oldest first.
    let mut pages: Vec<Vec<Value>> = Vec::new();
    let mut want = args.limit;
    let mut cursor: Option<String> = None;
    let mut missing: Vec<Value> = Vec::new();
    let next_cursor = loop {
        let mut query = filters.clone();
        query.push(format!("limit={}", want.min(AUDIT_PAGE)));
        if let Some(c) = &cursor {
            query.push(format!("cursor={}", q(c)));
        }
        let resp = c
            .rest(Method::GET, &format!("/v1/audit?{}", query.join("&")), None)
            .await?;
        if !resp.status.is_success() {
            return show(&resp);
        }
        let body = resp.json();
        let records = match body.get("records") {
            Some(Value::Array(r)) => r.clone(),
            _ => bail!("the server's answer has no records: {body}"),
        };
        want = want.saturating_sub(records.len());
        let next = body
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        for m in body
            .get("missing_nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !missing.iter().any(|x| x.get("node") == m.get("node")) {
                missing.push(m.clone());
            }
        }
        let empty = records.is_empty();
        pages.push(records);
        match next {
            Some(c) if want > 0 && !empty && cursor.as_ref() != Some(&c) => cursor = Some(c),
            next => break next,
        }
    };
    let records: Vec<Value> = pages.into_iter().rev().flatten().collect();
    let mut out = json!({ "records": records });
    if let Some(c) = next_cursor {
        out["next_cursor"] = json!(c);
    }
    if !missing.is_empty() {
        out["missing_nodes"] = json!(missing);
    }
    crate::output::emit(&out)
}

/// The most records the server answers at once.
const AUDIT_PAGE: usize = 1000;

pub async fn node(args: crate::cli::NodeArgs) -> anyhow::Result<()> {
    let c = client(&args.client)?;
    match args.command {
        crate::cli::NodeCommand::List => show(&c.rest(Method::GET, "/v1/nodes", None).await?),
        crate::cli::NodeCommand::Remove { id } => show(
            &c.rest(Method::DELETE, &format!("/v1/nodes/{}", q(&id)), None)
                .await?,
        ),
    }
}

pub async fn metering(args: MeteringArgs) -> anyhow::Result<()> {
    let c = client(&args.client)?;
    let path = match &args.account {
        Some(a) => format!("/v1/metering?account={}", q(a)),
        None => "/v1/metering".to_owned(),
    };
    show(&c.rest(Method::GET, &path, None).await?)
}
