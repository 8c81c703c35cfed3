//! Databases: the instance list with its create form, the instance page
//! (connection, start, stop, restart, parameters, resize, replicas and
//! switchover, encryption, backups, clone, delete) and the backup list
//! with its point-in-time restore form. An instance whose key cannot be
//! used is shown locked, with the key and the reason. Every read and
//! change is a REST call as the signed-in principal.

use std::collections::BTreeMap;

use axum::response::Response;
use http::Method;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::disks::{KeyHealth, KeyNames, key_health, key_id_of, locked, parse_size};
use super::{Ctx, Form};
use crate::Backend;
use crate::html::{self, Nav, enc, text};

/// Instances and backups per page of a list.
const PAGE: u32 = 50;

pub(crate) async fn route<B: Backend>(
    ctx: &Ctx<'_, B>,
    segs: &[&str],
    post: bool,
    q: &Form,
    form: &Form,
) -> Response {
    match (post, segs) {
        (false, ["databases"] | ["databases", "new"]) => list(ctx, q, &Form::default(), None).await,
        (true, ["databases", "new"]) => create(ctx, q, form).await,
        (false, ["databases", name]) => instance_page(ctx, name, None).await,
        (false, ["databases", name, "confirm", "delete"]) => confirm_delete(ctx, name),
        (true, ["databases", name, action]) => act(ctx, name, action, form).await,
        (false, ["backups"]) => backups(ctx, q, &Form::default(), None).await,
        (true, ["backups", "restore"]) => restore(ctx, q, form).await,
        (false, ["backups", id, "confirm", "delete"]) => confirm_backup_delete(ctx, id),
        (true, ["backups", id, "delete"]) => delete_backup(ctx, id, q).await,
        _ => super::not_found(ctx),
    }
}

fn state_badge(state: &str) -> Markup {
    let class = match state {
        "running" => "badge ok",
        "locked" | "failed" => "badge bad",
        _ => "badge warn",
    };
    html! { span class=(class) { (state) } }
}

/// An instance's state: the API's, and a locked badge with the reason when
/// it is locked or its key cannot be used now.
pub(crate) fn state_cell(
    v: &Value,
    names: &KeyNames,
    health: &BTreeMap<String, KeyHealth>,
) -> Markup {
    let state = text(&v["state"]);
    let key = text(&v["key_arn"]);
    if state == "locked" {
        // The API's reason names the instance and the key's ARN, which the
        // cell shows already: only why the key cannot be used.
        let reason = text(&v["reason"]);
        let why = reason
            .split_once("cannot be used: ")
            .map_or(reason.as_str(), |(_, r)| r);
        return locked(names, &key, why);
    }
    let unusable = health.get(&key).and_then(|h| h.unusable.as_deref());
    html! {
        @if let Some(r) = unusable {
            (locked(names, &key, r))
            @if state == "running" { " " small.muted { "(PostgreSQL still running)" } }
        } @else {
            (state_badge(&state))
            @if let Some(r) = v["reason"].as_str() { " " small { (r) } }
        }
    }
}

/// The health of each instance's key, once each.
async fn healths<B: Backend>(
    ctx: &Ctx<'_, B>,
    instances: &[&Value],
) -> BTreeMap<String, KeyHealth> {
    let mut out = BTreeMap::new();
    for v in instances {
        if let Some(k) = v["key_arn"].as_str()
            && !out.contains_key(k)
        {
            let h = key_health(ctx, k, false).await;
            out.insert(k.to_owned(), h);
        }
    }
    out
}

fn yes_no(v: &Value) -> &'static str {
    if v == &Value::Bool(true) { "yes" } else { "no" }
}

/// The instances of the caller (every page).
async fn all_instances<B: Backend>(ctx: &Ctx<'_, B>) -> (Vec<Value>, Option<String>) {
    let a = ctx.get("/v1/instances?limit=1000".into()).await;
    if !a.ok() {
        return (Vec::new(), Some(a.error()));
    }
    (
        a.get("instances").as_array().cloned().unwrap_or_default(),
        None,
    )
}

// ----- the list and create form -------------------------------------------

async fn list<B: Backend>(
    ctx: &Ctx<'_, B>,
    q: &Form,
    form: &Form,
    error: Option<&str>,
) -> Response {
    let mut path = format!("/v1/instances?limit={PAGE}");
    if !q.get("next_token").is_empty() {
        path.push_str(&format!("&next_token={}", enc(q.get("next_token"))));
    }
    let a = ctx.get(path).await;
    let instances: Vec<Value> = a.get("instances").as_array().cloned().unwrap_or_default();
    let refs: Vec<&Value> = instances.iter().collect();
    let names = KeyNames::load(ctx, true).await;
    let health = healths(ctx, &refs).await;
    let next = text(a.get("next_token"));
    let class = if form.get("class").is_empty() {
        "tde"
    } else {
        form.get("class")
    };
    let body = html! {
        @if let Some(e) = error { (html::error(e)) }
        div.toolbar {
            p { a href="/console/backups" { "Backups" } }
            a.button href="#create" { "Create instance" }
        }
        @if !a.ok() { (html::error(&a.error())) }
        table {
            caption { "Database instances of account " (ctx.principal.account) }
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Instance ID" } th scope="col" { "Class" }
                th scope="col" { "State" } th scope="col" { "Role" } th scope="col" { "Encrypted" }
                th scope="col" { "Key" } th scope="col" { "Endpoint" } th scope="col" { "Created" }
            } }
            tbody {
                @for v in &instances {
                    @let name = text(&v["name"]);
                    tr {
                        td { a href=(format!("/console/databases/{}", enc(&name))) { (name) } }
                        td { code { (text(&v["id"])) } }
                        td { (text(&v["class"])) }
                        td { (state_cell(v, &names, &health)) }
                        td { (text(&v["role"])) @if let Some(p) = v["primary"].as_str() { " of " (p) } }
                        td { (yes_no(&v["encrypted"])) }
                        td { (names.cell(&text(&v["key_arn"]))) }
                        td { code { (text(&v["host"])) ":" (text(&v["port"])) } }
                        td { (text(&v["created"])) }
                    }
                }
                @if instances.is_empty() && a.ok() {
                    tr { td colspan="9" { "No instances." } }
                }
            }
        }
        @if !next.is_empty() {
            nav.paging aria-label="Pages" { a href=(format!("/console/databases?next_token={}", enc(&next))) rel="next" { "Next page" } }
        }
        section aria-labelledby="create-h" id="create" {
            h2 id="create-h" { "Create an instance" }
            @if let Some(e) = &names.error { p.muted { "Keys cannot be listed: " (e) } }
            form method="post" action="/console/databases/new" {
                (ctx.csrf_field())
                (html::field("name", "Name", form.get("name"), Some("1 to 63 of a-z, 0-9 and '-', starting with a letter.")))
                (html::select("class", "Class", &[
                    ("tde".into(), "tde: PostgreSQL's files encrypted by atrest (always encrypted)".into()),
                    ("disk".into(), "disk: an encrypted disk (encryption can be turned on and off)".into()),
                ], class))
                (html::select("key_id", "Key", &names.options(&[
                    ("", "The database service key (alias/atrest/db)"),
                    ("none", "None: not encrypted (class disk only)"),
                ]), form.get("key_id")))
                (html::field("size", "Disk size (GiB)", form.get("size"), Some("Optional: a number of GiB, or with a unit (512M); default the server's.")))
                (html::field("port", "Port", form.get("port"), Some("Optional: 1024 to 65535; default a free one.")))
                (html::field("master_username", "Master user", form.get("master_username"), Some("Optional: default postgres.")))
                div.field {
                    label for="master_password" { "Master password" }
                    input type="password" id="master_password" name="master_password" autocomplete="new-password";
                    small { "Optional: when empty a password is generated and shown once." }
                }
                button type="submit" { "Create instance" }
            }
        }
    };
    ctx.page(Nav::Databases, "Databases", &body)
}

/// The body of an instance creation from its form.
fn create_body(form: &Form) -> Result<Value, String> {
    let mut body = json!({ "name": form.trimmed("name"), "class": form.trimmed("class") });
    match form.trimmed("key_id") {
        "" => body["service_key"] = json!(true),
        "none" => body["unencrypted"] = json!(true),
        k => body["key_id"] = json!(k),
    }
    if !form.trimmed("size").is_empty() {
        body["size"] = json!(parse_size(form.get("size"))?);
    }
    if !form.trimmed("port").is_empty() {
        let port: u64 = form
            .trimmed("port")
            .parse()
            .map_err(|_| format!("'{}' is not a port", form.trimmed("port")))?;
        body["port"] = json!(port);
    }
    if !form.trimmed("master_username").is_empty() {
        body["master_username"] = json!(form.trimmed("master_username"));
    }
    if !form.get("master_password").is_empty() {
        body["master_password"] = json!(form.get("master_password"));
    }
    Ok(body)
}

async fn create<B: Backend>(ctx: &Ctx<'_, B>, q: &Form, form: &Form) -> Response {
    let body = match create_body(form) {
        Ok(b) => b,
        Err(e) => return list(ctx, q, form, Some(&e)).await,
    };
    let a = ctx
        .rest(Method::POST, "/v1/instances".into(), Some(body))
        .await;
    if !a.ok() {
        return list(ctx, q, form, Some(&a.error())).await;
    }
    created(ctx, &a.body, "Database instance")
}

/// After a creation: the instance's page, or, when the API generated its
/// password, a page that shows it this once.
pub(crate) fn created<B: Backend>(ctx: &Ctx<'_, B>, v: &Value, what: &str) -> Response {
    let name = text(&v["name"]);
    let page = format!("/console/databases/{}", enc(&name));
    let Some(password) = v["master_password"].as_str() else {
        return ctx.done(&page, format!("{what} {name} created."));
    };
    let body = html! {
        p.flash role="status" { (what) " " (name) " created." }
        div.secret {
            p { "The master password was generated: it is shown this once and kept nowhere you can read it again." }
            (html::copyable("master_password_once", "Master password", password, 1))
        }
        (html::copyable("psql_cmd", "Connect", &psql(v), 1))
        p { a.button href=(page) { "Go to the instance" } }
    };
    ctx.page(Nav::Databases, &format!("Instance {name} created"), &body)
}

fn psql(v: &Value) -> String {
    format!(
        "psql \"host={} port={} user={} dbname=postgres\"",
        text(&v["host"]),
        text(&v["port"]),
        text(&v["master_username"])
    )
}

// ----- the instance page --------------------------------------------------

async fn instance_page<B: Backend>(ctx: &Ctx<'_, B>, name: &str, error: Option<&str>) -> Response {
    let d = ctx.get(format!("/v1/instances/{}", enc(name))).await;
    if !d.ok() {
        let body = html! {
            @if let Some(e) = error { (html::error(e)) }
            (html::error(&d.error()))
            p { a href="/console/databases" { "All instances" } }
        };
        return ctx.page_status(d.status, Nav::Databases, "Instance", &body);
    }
    let v = d.body.clone();
    let name = text(&v["name"]);
    let key = text(&v["key_arn"]);
    let base = format!("/console/databases/{}", enc(&name));
    let names = KeyNames::load(ctx, true).await;
    let health = healths(ctx, &[&v]).await;
    let (all, list_error) = all_instances(ctx).await;
    let replicas: Vec<&Value> = all
        .iter()
        .filter(|r| r["primary"].as_str() == Some(name.as_str()))
        .collect();
    let backups = ctx
        .get(format!("/v1/backups?instance={}&limit=1000", enc(&name)))
        .await;
    let class = text(&v["class"]);
    let encrypted = v["encrypted"] == Value::Bool(true);
    let key_choices = names.options(&[("", "The database service key (alias/atrest/db)")]);
    let tags = v["tags"].as_object().cloned().unwrap_or_default();
    let body = html! {
        @if let Some(e) = error { (html::error(e)) }
        @if text(&v["state"]) == "locked" {
            p.error role="alert" { (text(&v["reason"])) }
        }
        (html::facts(&[
            ("Name", html! { (name) }),
            ("Instance ID", html! { code { (text(&v["id"])) } }),
            ("Class", html! { (class) }),
            ("State", state_cell(&v, &names, &health)),
            ("Role", html! { (text(&v["role"])) @if let Some(p) = v["primary"].as_str() { " of " a href=(format!("/console/databases/{}", enc(p))) { (p) } } }),
            ("Encrypted", html! { (yes_no(&v["encrypted"])) }),
            ("Key", html! { (names.cell(&key)) @if !key.is_empty() { " " small { code { (key) } } } }),
            ("Endpoint", html! { code { (text(&v["host"])) ":" (text(&v["port"])) } }),
            ("Master user", html! { (text(&v["master_username"])) }),
            ("Disk", html! { code { (text(&v["disk"])) } }),
            ("Backup retention", html! { @match v["backup_retention_days"].as_u64() { Some(0) | None => "until deleted", Some(n) => { (n) " days" } } }),
            ("Region", html! { (text(&v["region"])) }),
            ("Created", html! { (text(&v["created"])) }),
            ("Tags", html! { @for (k, t) in &tags { code { (k) "=" (text(t)) } " " } }),
        ]))
        section aria-labelledby="connect-h" {
            h2 id="connect-h" { "Connect" }
            (html::copyable("psql_cmd", "psql", &psql(&v), 1))
        }
        section aria-labelledby="state-h" {
            h2 id="state-h" { "State" }
            div.actions {
                (ctx.button(&format!("{base}/start"), "Start", &[]))
                (ctx.button(&format!("{base}/stop"), "Stop", &[]))
                (ctx.button(&format!("{base}/restart"), "Restart", &[]))
            }
        }
        section aria-labelledby="params-h" {
            h2 id="params-h" { "Parameters" }
            form method="post" action=(format!("{base}/parameters")) {
                (ctx.csrf_field())
                div.field {
                    label for="parameters" { "PostgreSQL settings" }
                    textarea.code id="parameters" name="parameters" rows="4" spellcheck="false" aria-describedby="parameters-hint" {}
                    small id="parameters-hint" { "One name = value a line (work_mem = 64MB); name = with nothing after it resets the setting. Only allow-listed settings; the instance restarts." }
                }
                button type="submit" { "Set parameters" }
            }
        }
        section aria-labelledby="resize-h" {
            h2 id="resize-h" { "Resize" }
            form.inline method="post" action=(format!("{base}/resize")) {
                (ctx.csrf_field())
                label for="resize_size" { "New disk size (GiB, or with a unit)" }
                input type="text" id="resize_size" name="size";
                button type="submit" { "Grow the disk" }
            }
        }
        section aria-labelledby="replicas-h" {
            h2 id="replicas-h" { "Replicas" }
            @if let Some(e) = &list_error { (html::error(e)) }
            @if text(&v["role"]) == "replica" {
                p { "This is a replica of " (text(&v["primary"])) ". Promote it to primary (the old primary follows it):" }
                (ctx.button(&format!("{base}/switchover"), "Switch over", &[]))
            } @else {
                @if replicas.is_empty() {
                    p.muted { "No replicas." }
                } @else {
                    table {
                        thead { tr { th scope="col" { "Replica" } th scope="col" { "State" } th scope="col" { "Endpoint" } th scope="col" { "Actions" } } }
                        tbody {
                            @for r in &replicas {
                                @let rname = text(&r["name"]);
                                tr {
                                    td { a href=(format!("/console/databases/{}", enc(&rname))) { (rname) } }
                                    td { (state_cell(r, &names, &health)) }
                                    td { code { (text(&r["host"])) ":" (text(&r["port"])) } }
                                    td { (ctx.button(&format!("/console/databases/{}/switchover", enc(&rname)), "Switch over to this replica", &[])) }
                                }
                            }
                        }
                    }
                }
                form method="post" action=(format!("{base}/replica")) {
                    (ctx.csrf_field())
                    (html::field("replica_name", "Replica name", "", Some("Optional: default derived from this instance's.")))
                    (html::field("replica_port", "Replica port", "", Some("Optional: default a free one.")))
                    button type="submit" { "Create replica" }
                }
            }
        }
        section aria-labelledby="encryption-h" {
            h2 id="encryption-h" { "Encryption" }
            @if class == "tde" {
                p { "A tde instance is always encrypted; its key can be changed." }
            }
            @if encrypted {
                form method="post" action=(format!("{base}/encryption")) {
                    (ctx.csrf_field())
                    input type="hidden" name="action" value="set-key";
                    (html::select("enc_key_id", "New key", &key_choices, key_id_of(&key)))
                    button type="submit" { "Set key" }
                }
                @if class == "disk" {
                    (ctx.button(&format!("{base}/encryption"), "Disable encryption", &[("action", "disable")]))
                }
            } @else {
                form method="post" action=(format!("{base}/encryption")) {
                    (ctx.csrf_field())
                    input type="hidden" name="action" value="enable";
                    (html::select("enc_key_id", "Key", &key_choices, ""))
                    button type="submit" { "Enable encryption" }
                }
            }
            small.muted { "Each change restarts the instance." }
        }
        section aria-labelledby="backups-h" {
            h2 id="backups-h" { "Backups" }
            div.actions {
                (ctx.button(&format!("{base}/backup"), "Back up now", &[]))
                form.inline method="post" action=(format!("{base}/retention")) {
                    (ctx.csrf_field())
                    label for="retention_days" { "Keep backups (days, 0: until deleted)" }
                    input type="number" id="retention_days" name="days" min="0" max="35" value=(v["backup_retention_days"].as_u64().unwrap_or(0));
                    button type="submit" { "Set retention" }
                }
            }
            @if backups.ok() {
                (backup_table(&backups.get("backups").as_array().cloned().unwrap_or_default(), &names))
            } @else {
                (html::error(&backups.error()))
            }
        }
        section aria-labelledby="clone-h" {
            h2 id="clone-h" { "Clone" }
            form.inline method="post" action=(format!("{base}/clone")) {
                (ctx.csrf_field())
                label for="clone_name" { "New instance's name" }
                input type="text" id="clone_name" name="clone_name";
                button type="submit" { "Clone" }
            }
        }
        section aria-labelledby="delete-h" {
            h2 id="delete-h" { "Delete" }
            a.button.danger href=(format!("{base}/confirm/delete")) { "Delete instance…" }
        }
    };
    ctx.page(Nav::Databases, &format!("Instance {name}"), &body)
}

fn confirm_delete<B: Backend>(ctx: &Ctx<'_, B>, name: &str) -> Response {
    let base = format!("/console/databases/{}", enc(name));
    let body = html! {
        p { "Deleting instance " strong { (name) } " stops it and deletes its disk; its backups stay until deleted." }
        div.actions {
            form.inline method="post" action=(format!("{base}/delete")) {
                (ctx.csrf_field())
                button.danger type="submit" { "Delete the instance" }
            }
            a.button href=(base) { "Cancel" }
        }
    };
    ctx.page(Nav::Databases, "Confirm", &body)
}

/// The parameters of the form: `name = value` lines; an empty value is
/// null (reset).
fn parse_parameters(s: &str) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    for line in s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("The line \"{line}\" has no '='."));
        };
        let v = v.trim().trim_matches('\'');
        out.insert(
            k.trim().to_owned(),
            if v.is_empty() { Value::Null } else { json!(v) },
        );
    }
    if out.is_empty() {
        return Err("Give at least one name = value line.".into());
    }
    Ok(Value::Object(out))
}

async fn act<B: Backend>(ctx: &Ctx<'_, B>, name: &str, action: &str, form: &Form) -> Response {
    let base = format!("/console/databases/{}", enc(name));
    let path = |tail: &str| format!("/v1/instances/{}{tail}", enc(name));
    let (method, tail, body, done): (Method, &str, Option<Value>, String) = match action {
        "start" => (
            Method::POST,
            "/start",
            None,
            "The instance is started.".into(),
        ),
        "stop" => (
            Method::POST,
            "/stop",
            None,
            "The instance is stopped.".into(),
        ),
        "restart" => (
            Method::POST,
            "/restart",
            None,
            "The instance is restarted.".into(),
        ),
        "switchover" => (
            Method::POST,
            "/switchover",
            None,
            format!("{name} is now the primary."),
        ),
        "backup" => (Method::POST, "/backups", None, "Backup {id} made.".into()),
        "parameters" => match parse_parameters(form.get("parameters")) {
            Ok(p) => (
                Method::POST,
                "/parameters",
                Some(json!({ "parameters": p })),
                "The parameters are set; the instance restarted.".into(),
            ),
            Err(e) => return instance_page(ctx, name, Some(&e)).await,
        },
        "resize" => match parse_size(form.get("size")) {
            Ok(size) => (
                Method::POST,
                "/resize",
                Some(json!({ "size": size })),
                "The disk is grown.".into(),
            ),
            Err(e) => return instance_page(ctx, name, Some(&e)).await,
        },
        "retention" => match form.trimmed("days").parse::<u32>() {
            Ok(days) => (
                Method::POST,
                "/backup-retention",
                Some(json!({ "days": days })),
                "The backup retention is set.".into(),
            ),
            Err(_) => {
                return instance_page(ctx, name, Some("Give the days as a number (0 to 35)."))
                    .await;
            }
        },
        "replica" => {
            let mut body = json!({});
            if !form.trimmed("replica_name").is_empty() {
                body["name"] = json!(form.trimmed("replica_name"));
            }
            if let Ok(p) = form.trimmed("replica_port").parse::<u64>() {
                body["port"] = json!(p);
            }
            (
                Method::POST,
                "/replicas",
                Some(body),
                "Replica {name} created.".into(),
            )
        }
        "clone" => (
            Method::POST,
            "/clone",
            Some(json!({ "name": form.trimmed("clone_name") })),
            "Clone {name} created.".into(),
        ),
        "encryption" => {
            let change = form.trimmed("action");
            let mut body = json!({ "action": change });
            if change != "disable" {
                match form.trimmed("enc_key_id") {
                    "" => body["service_key"] = json!(true),
                    k => body["key_id"] = json!(k),
                }
            }
            let done = match change {
                "enable" => "Encryption is on.",
                "disable" => "Encryption is off.",
                _ => "The instance is under its new key.",
            };
            (Method::POST, "/encryption", Some(body), done.into())
        }
        "delete" => (
            Method::DELETE,
            "",
            None,
            format!("Instance {name} deleted."),
        ),
        _ => return super::not_found(ctx),
    };
    let a = ctx.rest(method, path(tail), body).await;
    if !a.ok() {
        return instance_page(ctx, name, Some(&a.error())).await;
    }
    let done = done
        .replace("{id}", &text(a.get("id")))
        .replace("{name}", &text(a.get("name")));
    match action {
        "delete" => ctx.done("/console/databases", done),
        "replica" | "clone" if a.get("master_password").is_string() => {
            created(ctx, &a.body, "Instance")
        }
        "replica" | "clone" => ctx.done(
            &format!("/console/databases/{}", enc(&text(a.get("name")))),
            done,
        ),
        _ => ctx.done(&base, done),
    }
}

// ----- backups ------------------------------------------------------------

fn backup_table(backups: &[Value], names: &KeyNames) -> Markup {
    html! {
        @if backups.is_empty() {
            p.muted { "No backups." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Backup ID" } th scope="col" { "Instance" } th scope="col" { "Class" }
                    th scope="col" { "Started" } th scope="col" { "Ended (earliest restore time)" }
                    th scope="col" { "Data" } th scope="col" { "Stored" } th scope="col" { "Key" } th scope="col" { "Actions" }
                } }
                tbody {
                    @for b in backups {
                        @let id = text(&b["id"]);
                        tr {
                            td { code { (id) } @if let Some(c) = b["copy_of"].as_str() { br; small { "copy of " (c) } } }
                            td { a href=(format!("/console/databases/{}", enc(&text(&b["instance"])))) { (text(&b["instance"])) } }
                            td { (text(&b["class"])) }
                            td { (text(&b["start_time"])) }
                            td { (text(&b["end_time"])) }
                            td { (html::bytes(b["data_size"].as_u64().unwrap_or(0))) }
                            td { (html::bytes(b["size"].as_u64().unwrap_or(0))) }
                            td { (names.cell(&text(&b["key_arn"]))) }
                            td {
                                a.button href=(format!("/console/backups?backup={}#restore", enc(&id))) { "Restore…" }
                                " "
                                a.button.danger href=(format!("/console/backups/{}/confirm/delete", enc(&id))) { "Delete…" }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn backups<B: Backend>(
    ctx: &Ctx<'_, B>,
    q: &Form,
    form: &Form,
    error: Option<&str>,
) -> Response {
    let mut path = format!("/v1/backups?limit={PAGE}");
    if !q.get("next_token").is_empty() {
        path.push_str(&format!("&next_token={}", enc(q.get("next_token"))));
    }
    let a = ctx.get(path).await;
    let list: Vec<Value> = a.get("backups").as_array().cloned().unwrap_or_default();
    let names = KeyNames::load(ctx, false).await;
    let next = text(a.get("next_token"));
    let chosen = if form.get("backup_id").is_empty() {
        q.get("backup")
    } else {
        form.get("backup_id")
    };
    let body = html! {
        @if let Some(e) = error { (html::error(e)) }
        p { a href="/console/databases" { "Instances" } }
        @if a.ok() {
            (backup_table(&list, &names))
        } @else {
            (html::error(&a.error()))
        }
        @if !next.is_empty() {
            nav.paging aria-label="Pages" { a href=(format!("/console/backups?next_token={}", enc(&next))) rel="next" { "Next page" } }
        }
        section aria-labelledby="restore-h" id="restore" {
            h2 id="restore-h" { "Restore to a point in time" }
            p { "A backup is restored into a new instance under the backup's key, to any time from the backup's end up to the latest archived WAL." }
            form method="post" action="/console/backups/restore" {
                (ctx.csrf_field())
                div.field {
                    label for="backup_id" { "Backup" }
                    select id="backup_id" name="backup_id" {
                        @for b in &list {
                            @let id = text(&b["id"]);
                            option value=(id) selected[id == chosen] {
                                (id) " — " (text(&b["instance"])) ", from " (text(&b["end_time"]))
                            }
                        }
                    }
                }
                (html::field("restore_name", "New instance's name", form.get("restore_name"), None))
                (html::field("to_time", "Restore to (RFC 3339)", form.get("to_time"), Some("For example 2026-06-01T12:00:00Z; a time without a zone is UTC. Empty: the latest archived.")))
                button type="submit" { "Restore" }
            }
        }
    };
    ctx.page(Nav::Databases, "Backups", &body)
}

/// A time typed in the restore form as RFC 3339: a space for `T`, seconds
/// and the zone (UTC) added when missing. `None` when empty.
fn rfc3339(s: &str) -> Option<String> {
    let s = s.trim().replacen(' ', "T", 1);
    if s.is_empty() {
        return None;
    }
    let Some((date, time)) = s.split_once('T') else {
        return Some(s);
    };
    let zoned = time.ends_with(['Z', 'z']) || time.contains('+') || time.contains('-');
    if zoned {
        return Some(s);
    }
    let time = if time.matches(':').count() == 1 {
        format!("{time}:00")
    } else {
        time.to_owned()
    };
    Some(format!("{date}T{time}Z"))
}

async fn restore<B: Backend>(ctx: &Ctx<'_, B>, q: &Form, form: &Form) -> Response {
    let id = form.trimmed("backup_id");
    if id.is_empty() {
        return backups(ctx, q, form, Some("Choose a backup.")).await;
    }
    let mut body = json!({ "name": form.trimmed("restore_name") });
    if let Some(t) = rfc3339(form.get("to_time")) {
        body["to_time"] = json!(t);
    }
    let a = ctx
        .rest(
            Method::POST,
            format!("/v1/backups/{}/restore", enc(id)),
            Some(body),
        )
        .await;
    if !a.ok() {
        return backups(ctx, q, form, Some(&a.error())).await;
    }
    let name = text(a.get("name"));
    ctx.done(
        &format!("/console/databases/{}", enc(&name)),
        format!("Backup {id} restored into instance {name}."),
    )
}

fn confirm_backup_delete<B: Backend>(ctx: &Ctx<'_, B>, id: &str) -> Response {
    let body = html! {
        p { "Deleting backup " code { (id) } " removes it and the WAL only it needed: times it covers can no longer be restored." }
        div.actions {
            form.inline method="post" action=(format!("/console/backups/{}/delete", enc(id))) {
                (ctx.csrf_field())
                button.danger type="submit" { "Delete the backup" }
            }
            a.button href="/console/backups" { "Cancel" }
        }
    };
    ctx.page(Nav::Databases, "Confirm", &body)
}

async fn delete_backup<B: Backend>(ctx: &Ctx<'_, B>, id: &str, q: &Form) -> Response {
    let a = ctx
        .rest(Method::DELETE, format!("/v1/backups/{}", enc(id)), None)
        .await;
    if !a.ok() {
        return backups(ctx, q, &Form::default(), Some(&a.error())).await;
    }
    ctx.done("/console/backups", format!("Backup {id} deleted."))
}

#[cfg(test)]
mod tests {
    use super::{parse_parameters, rfc3339};
    use serde_json::json;

    #[test]
    fn restore_times_become_rfc3339() {
        assert_eq!(rfc3339(""), None);
        assert_eq!(
            rfc3339("2026-06-01T12:00"),
            Some("2026-06-01T12:00:00Z".into())
        );
        assert_eq!(
            rfc3339("2026-06-01 12:00:05"),
            Some("2026-06-01T12:00:05Z".into())
        );
        assert_eq!(
            rfc3339("2026-06-01T12:00:05.5Z"),
            Some("2026-06-01T12:00:05.5Z".into())
        );
        assert_eq!(
            rfc3339("2026-06-01T12:00:05+02:00"),
            Some("2026-06-01T12:00:05+02:00".into())
        );
    }

    #[test]
    fn parameters_are_lines_and_empty_resets() {
        assert_eq!(
            parse_parameters("work_mem = 64MB\n\njit=off\nrandom_page_cost =").ok(),
            Some(json!({ "work_mem": "64MB", "jit": "off", "random_page_cost": null }))
        );
        assert!(parse_parameters("work_mem").is_err());
        assert!(parse_parameters(" ").is_err());
    }
}
