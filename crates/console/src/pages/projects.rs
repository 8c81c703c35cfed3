//! Projects, the CMEK flow: the list with its create form (CMEK on or
//! off), and the project page: per region the key policy to copy and the
//! test-and-save of the key (a refusal names the permission that failed),
//! whether each key can be used (revoked or not), the project's resources
//! and their state, creating a disk or an instance in it, pause and resume
//! (a refusal while a key is still revoked is shown), delete. Every read
//! and change is a REST or KMS call as the signed-in principal.

use std::collections::BTreeSet;

use axum::response::Response;
use http::Method;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::disks::{KeyNames, healths, key_health, lock_reason, locked, parse_size, state_badge};
use super::{Ctx, Form};
use crate::Backend;
use crate::html::{self, Nav, enc, text};

/// Projects per page of the list.
const PAGE: u32 = 50;

pub(crate) async fn route<B: Backend>(
    ctx: &Ctx<'_, B>,
    segs: &[&str],
    post: bool,
    q: &Form,
    form: &Form,
) -> Response {
    match (post, segs) {
        (false, [] | ["new"]) => list(ctx, q, &Form::default(), None).await,
        (true, ["new"]) => create(ctx, q, form).await,
        (false, [id]) => project_page(ctx, id, q, &Extra::default()).await,
        (false, [id, "confirm", "delete"]) => confirm_delete(ctx, id),
        (true, [id, action]) => act(ctx, id, action, q, form).await,
        _ => super::not_found(ctx),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A project's revocation policy in words.
fn revocation(p: &Value) -> String {
    let r = &p["revocation"];
    match r["policy"].as_str() {
        Some("stop") => format!(
            "stop: pause once a key has been unusable for {} s",
            text(&r["after_seconds"])
        ),
        Some("keep") => "keep: keep serving until paused".into(),
        _ => text(r),
    }
}

fn status_badge(p: &Value) -> Markup {
    if p["paused"] == Value::Bool(true) {
        html! { span.badge.warn { "paused" } }
    } else {
        html! { span.badge.ok { "active" } }
    }
}

// ----- the list and create form -------------------------------------------

async fn list<B: Backend>(
    ctx: &Ctx<'_, B>,
    q: &Form,
    form: &Form,
    error: Option<&str>,
) -> Response {
    let mut path = format!("/v1/projects?limit={PAGE}");
    if !q.get("next_token").is_empty() {
        path.push_str(&format!("&next_token={}", enc(q.get("next_token"))));
    }
    let a = ctx.get(path).await;
    let projects: Vec<Value> = a.get("projects").as_array().cloned().unwrap_or_default();
    let next = text(a.get("next_token"));
    let revocation_choice = if form.get("revocation").is_empty() {
        "keep"
    } else {
        form.get("revocation")
    };
    let after = if form.get("after_seconds").is_empty() {
        "300"
    } else {
        form.get("after_seconds")
    };
    let body = html! {
        @if let Some(e) = error { (html::error(e)) }
        div.toolbar {
            p { "A project's disks and instances are encrypted under its keys: the customer's own key in each region (CMEK), or atrest's managed keys." }
            a.button href="#create" { "Create project" }
        }
        @if !a.ok() { (html::error(&a.error())) }
        table {
            caption { "Projects of account " (ctx.principal.account) }
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Project ID" } th scope="col" { "CMEK" }
                th scope="col" { "Key regions" } th scope="col" { "Status" } th scope="col" { "Resources" }
                th scope="col" { "Created" }
            } }
            tbody {
                @for p in &projects {
                    @let id = text(&p["id"]);
                    tr {
                        td { a href=(format!("/console/projects/{}", enc(&id))) { (text(&p["name"])) } }
                        td { code { (id) } }
                        td { (yes_no(p["cmek"] == Value::Bool(true))) }
                        td { (p["keys"].as_object().map(|k| k.keys().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                        td { (status_badge(p)) }
                        td { (p["resources"].as_array().map_or(0, Vec::len)) }
                        td { (text(&p["created"])) }
                    }
                }
                @if projects.is_empty() && a.ok() {
                    tr { td colspan="7" { "No projects." } }
                }
            }
        }
        @if !next.is_empty() {
            nav.paging aria-label="Pages" { a href=(format!("/console/projects?next_token={}", enc(&next))) rel="next" { "Next page" } }
        }
        section aria-labelledby="create-h" id="create" {
            h2 id="create-h" { "Create a project" }
            form method="post" action="/console/projects/new" {
                (ctx.csrf_field())
                (html::field("name", "Name", form.get("name"), Some("1 to 64 of a-z, 0-9 and '-', starting with a letter; unique in the account.")))
                div.field.check {
                    input type="checkbox" id="cmek" name="cmek" value="on" checked[form.has("cmek")];
                    label for="cmek" { "Customer-managed keys (CMEK): encrypt under my own key in each region (fixed for the project's life)" }
                }
                (html::select("revocation", "When a key becomes unusable", &[
                    ("keep".into(), "Keep serving until I pause the project".into()),
                    ("stop".into(), "Pause the project after a while".into()),
                ], revocation_choice))
                (html::field("after_seconds", "Pause after (seconds, with \"pause\")", after, None))
                button type="submit" { "Create project" }
            }
        }
    };
    ctx.page(Nav::Projects, "Projects", &body)
}

async fn create<B: Backend>(ctx: &Ctx<'_, B>, q: &Form, form: &Form) -> Response {
    let mut body = json!({ "name": form.trimmed("name"), "cmek": form.has("cmek") });
    if form.get("revocation") == "stop" {
        let Ok(after) = form.trimmed("after_seconds").parse::<u64>() else {
            return list(ctx, q, form, Some("Give the seconds as a whole number.")).await;
        };
        body["revocation"] = json!({ "policy": "stop", "after_seconds": after });
    }
    let a = ctx
        .rest(Method::POST, "/v1/projects".into(), Some(body))
        .await;
    if !a.ok() {
        return list(ctx, q, form, Some(&a.error())).await;
    }
    let id = text(a.get("id"));
    ctx.done(
        &format!("/console/projects/{}", enc(&id)),
        format!("Project {} ({id}) created.", text(a.get("name"))),
    )
}

// ----- the project page ---------------------------------------------------

/// What a project page shows besides the project: an error, one region's
/// test-and-save refusal and the key typed.
#[derive(Default)]
struct Extra {
    error: Option<String>,
    key_error: Option<(String, String, String)>,
}

/// The regions a project page shows: the principal's, those with a key,
/// those of its resources, and one asked for.
fn regions<B: Backend>(ctx: &Ctx<'_, B>, p: &Value, q: &Form) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    out.insert(ctx.principal.region.clone());
    if let Some(k) = p["keys"].as_object() {
        out.extend(k.keys().cloned());
    }
    for r in p["resources"].as_array().into_iter().flatten() {
        if let Some(region) = r["region"].as_str() {
            out.insert(region.to_owned());
        }
    }
    let asked = q.trimmed("region");
    if !asked.is_empty() {
        out.insert(asked.to_owned());
    }
    out.into_iter().collect()
}

/// One region's key section of a CMEK project.
struct RegionView {
    region: String,
    policy: Result<String, String>,
    key: Option<Value>,
    health: Option<super::disks::KeyHealth>,
}

async fn region_views<B: Backend>(
    ctx: &Ctx<'_, B>,
    id: &str,
    p: &Value,
    regions: &[String],
) -> Vec<RegionView> {
    let mut out = Vec::new();
    for region in regions {
        let a = ctx
            .get(format!(
                "/v1/projects/{}/key-policy/{}",
                enc(id),
                enc(region)
            ))
            .await;
        let policy = if a.ok() {
            Ok(serde_json::to_string_pretty(&a.body).unwrap_or_default())
        } else {
            Err(a.error())
        };
        let key = p["keys"].get(region).cloned();
        let health = match key.as_ref().and_then(|k| k["key_arn"].as_str()) {
            Some(arn) => Some(key_health(ctx, arn, false).await),
            None => None,
        };
        out.push(RegionView {
            region: region.clone(),
            policy,
            key,
            health,
        });
    }
    out
}

/// A region's key: configured, usable or not, the policy and the form.
fn region_section<B: Backend>(
    ctx: &Ctx<'_, B>,
    base: &str,
    r: &RegionView,
    names: &KeyNames,
    extra: &Extra,
) -> Markup {
    let region = &r.region;
    let configured = r
        .key
        .as_ref()
        .map(|k| text(&k["key_arn"]))
        .unwrap_or_default();
    let refused = extra.key_error.as_ref().filter(|(reg, _, _)| reg == region);
    let typed = refused.map_or(configured.as_str(), |(_, k, _)| k.as_str());
    let h_id = format!("region-{region}-h");
    html! {
        section aria-labelledby=(h_id) {
            h2 id=(h_id) { "Key in " (region) }
            @match &r.key {
                Some(k) => {
                    (html::facts(&[
                        ("Key", html! { (names.cell(&configured)) " " small { code { (configured) } } }),
                        ("Provider", html! { (text(&k["provider"])) }),
                        ("Tested and saved", html! { (text(&k["configured"])) }),
                        ("Status", match &r.health {
                            Some(h) if h.unusable.is_some() => html! {
                                span.badge.bad { "Revoked" } " " (h.unusable.as_deref().unwrap_or(""))
                                " — the project's resources in " (region) " cannot be used until the key is usable again."
                            },
                            Some(h) if h.state.is_some() => html! { span.badge.ok { "Usable" } " " (h.state.as_deref().unwrap_or("")) },
                            _ => html! { span.muted { "unknown (the key cannot be described)" } },
                        }),
                    ]))
                }
                None => p { "No key is configured in " (region) ": the project's disks and instances cannot be created here until one is." },
            }
            h3 { "1. Attach this key policy to your key" }
            @match &r.policy {
                Ok(policy) => (html::copyable(&format!("policy-{region}"), &format!("Key policy statements for {region}"), policy, 14)),
                Err(e) => (html::error(e)),
            }
            h3 { "2. Test and save the key" }
            @if let Some((_, _, e)) = refused { (html::error(e)) }
            form method="post" action=(format!("{base}/key")) {
                (ctx.csrf_field())
                input type="hidden" name="region" value=(region);
                div.field {
                    label for=(format!("key-{region}")) { "Key ARN (or id or alias) in " (region) }
                    input type="text" id=(format!("key-{region}")) name="key_id" value=(typed) list=(format!("keys-{region}")) spellcheck="false";
                    small { "Every permission the disk and database services need is tried as you, through each service; the first refused is named." }
                }
                @if *region == ctx.principal.region {
                    datalist id=(format!("keys-{region}")) {
                        @for (kid, label) in names.options(&[]) {
                            option value=(format!("arn:aws:kms:{region}:{}:key/{kid}", ctx.principal.account)) { (label) }
                        }
                    }
                }
                button type="submit" { "Test and save" }
            }
        }
    }
}

/// The project's resources, each with its state (locked when its key
/// cannot be used).
async fn resources<B: Backend>(ctx: &Ctx<'_, B>, p: &Value, names: &KeyNames) -> Markup {
    let list: Vec<Value> = p["resources"].as_array().cloned().unwrap_or_default();
    let mut rows: Vec<(Value, crate::Answer)> = Vec::new();
    for r in &list {
        let id = text(&r["id"]);
        let a = if r["kind"].as_str() == Some("disk") {
            ctx.get(format!("/v1/disks/{}", enc(&id))).await
        } else {
            ctx.get(format!("/v1/instances/{}", enc(&id))).await
        };
        rows.push((r.clone(), a));
    }
    let health = healths(
        ctx,
        rows.iter()
            .filter_map(|(_, a)| a.get("key_arn").as_str().map(str::to_owned)),
    )
    .await;
    html! {
        @if rows.is_empty() {
            p.muted { "No disks or instances yet." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Kind" } th scope="col" { "Disk or instance" } th scope="col" { "Region" }
                    th scope="col" { "Key" } th scope="col" { "State" }
                } }
                tbody {
                    @for (r, a) in &rows {
                        @let id = text(&r["id"]);
                        @let disk = r["kind"].as_str() == Some("disk");
                        tr {
                            td { (text(&r["kind"])) }
                            td {
                                @if disk { a href=(format!("/console/disks/{}", enc(&id))) { code { (id) } } }
                                @else { a href=(format!("/console/databases/{}", enc(&id))) { (id) } }
                            }
                            td { (text(&r["region"])) }
                            td { (names.cell(&text(a.get("key_arn")))) }
                            td {
                                @if !a.ok() {
                                    span.muted { (a.error()) }
                                } @else if disk {
                                    @match lock_reason(&a.body, &health) {
                                        Some(why) => (locked(names, &text(a.get("key_arn")), &why)),
                                        None => (state_badge(&text(a.get("state")))),
                                    }
                                } @else {
                                    (super::databases::state_cell(&a.body, names, &health))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn project_page<B: Backend>(ctx: &Ctx<'_, B>, id: &str, q: &Form, extra: &Extra) -> Response {
    let a = ctx.get(format!("/v1/projects/{}", enc(id))).await;
    if !a.ok() {
        let body = html! {
            @if let Some(e) = &extra.error { (html::error(e)) }
            (html::error(&a.error()))
            p { a href="/console/projects" { "All projects" } }
        };
        return ctx.page_status(a.status, Nav::Projects, "Project", &body);
    }
    let p = a.body.clone();
    let pid = text(&p["id"]);
    let base = format!("/console/projects/{}", enc(&pid));
    let cmek = p["cmek"] == Value::Bool(true);
    let paused = p["paused"] == Value::Bool(true);
    let names = KeyNames::load(ctx, cmek).await;
    let views = if cmek {
        region_views(ctx, &pid, &p, &regions(ctx, &p, q)).await
    } else {
        Vec::new()
    };
    let revoked: Vec<(&str, &str)> = views
        .iter()
        .filter_map(|v| {
            v.health
                .as_ref()
                .and_then(|h| h.unusable.as_deref())
                .map(|why| (v.region.as_str(), why))
        })
        .collect();
    let resources = resources(ctx, &p, &names).await;
    let body = html! {
        @if let Some(e) = &extra.error { (html::error(e)) }
        (html::facts(&[
            ("Project ID", html! { code { (pid) } }),
            ("Name", html! { (text(&p["name"])) }),
            ("CMEK", html! { @if cmek { "yes: the customer's key in each region" } @else { "no: atrest's managed keys" } }),
            ("Status", status_badge(&p)),
            ("Revocation policy", html! { (revocation(&p)) }),
            ("Created", html! { (text(&p["created"])) }),
        ]))
        section aria-labelledby="revoke-h" {
            h2 id="revoke-h" { "Revoke status" }
            @if !cmek {
                p { "The project uses atrest's managed keys: there is no key of yours to revoke." }
            } @else if revoked.is_empty() {
                p { span.badge.ok { "Keys usable" } " Every configured key can be used." }
            } @else {
                @for (region, why) in &revoked {
                    p { span.badge.bad { "Revoked" } " The key in " (region) " cannot be used: " (why) "." }
                }
            }
            div.actions {
                @if paused {
                    (ctx.button(&format!("{base}/resume"), "Resume project", &[]))
                } @else {
                    (ctx.button(&format!("{base}/pause"), "Pause project", &[]))
                }
            }
            small.muted { "Pause stops the project's instances; resume tests every key its resources use first, and is refused while one cannot be used." }
        }
        @if cmek {
            @for v in &views { (region_section(ctx, &base, v, &names, extra)) }
            div.actions {
                form.inline method="get" action=(base) {
                    label for="region" { "Show another region" }
                    input type="text" id="region" name="region";
                    button type="submit" { "Show" }
                }
            }
        }
        section aria-labelledby="resources-h" {
            h2 id="resources-h" { "Resources" }
            (resources)
            form.inline method="post" action=(format!("{base}/disk")) {
                (ctx.csrf_field())
                label for="disk_size" { "New disk's size (GiB)" }
                input type="text" id="disk_size" name="size";
                button type="submit" { "Create disk in project" }
            }
            form.inline method="post" action=(format!("{base}/instance")) {
                (ctx.csrf_field())
                label for="instance_name" { "New instance's name" }
                input type="text" id="instance_name" name="name";
                label for="instance_class" { "Class" }
                select id="instance_class" name="class" {
                    option value="tde" { "tde" }
                    option value="disk" { "disk" }
                }
                button type="submit" { "Create instance in project" }
            }
        }
        section aria-labelledby="delete-h" {
            h2 id="delete-h" { "Delete" }
            a.button.danger href=(format!("{base}/confirm/delete")) { "Delete project…" }
        }
    };
    ctx.page(
        Nav::Projects,
        &format!("Project {}", text(&p["name"])),
        &body,
    )
}

fn confirm_delete<B: Backend>(ctx: &Ctx<'_, B>, id: &str) -> Response {
    let base = format!("/console/projects/{}", enc(id));
    let body = html! {
        p { "Deleting project " code { (id) } " is possible once it has no disk or instance left." }
        div.actions {
            form.inline method="post" action=(format!("{base}/delete")) {
                (ctx.csrf_field())
                button.danger type="submit" { "Delete the project" }
            }
            a.button href=(base) { "Cancel" }
        }
    };
    ctx.page(Nav::Projects, "Confirm", &body)
}

async fn act<B: Backend>(
    ctx: &Ctx<'_, B>,
    id: &str,
    action: &str,
    q: &Form,
    form: &Form,
) -> Response {
    let base = format!("/console/projects/{}", enc(id));
    let path = |tail: &str| format!("/v1/projects/{}{tail}", enc(id));
    let refused = |e: String| Extra {
        error: Some(e),
        ..Extra::default()
    };
    match action {
        "key" => {
            let region = form.trimmed("region");
            let key = form.trimmed("key_id");
            let a = ctx
                .rest(
                    Method::PUT,
                    path(&format!("/keys/{}", enc(region))),
                    Some(json!({ "key_id": key })),
                )
                .await;
            if a.ok() {
                return ctx.done(
                    &base,
                    format!("The key passed every test and is saved for {region}."),
                );
            }
            // Show the region even when it is not one the page lists.
            let q = Form(vec![("region".into(), region.to_owned())]);
            let extra = Extra {
                key_error: Some((region.to_owned(), key.to_owned(), a.error())),
                ..Extra::default()
            };
            project_page(ctx, id, &q, &extra).await
        }
        "pause" | "resume" => {
            let a = ctx
                .rest(Method::POST, path(&format!("/{action}")), None)
                .await;
            if a.ok() {
                let done = if action == "pause" {
                    "The project is paused: its instances are stopped."
                } else {
                    "The project is resumed: its keys passed the test and its instances started."
                };
                ctx.done(&base, done)
            } else {
                project_page(ctx, id, q, &refused(a.error())).await
            }
        }
        "disk" => {
            let size = match parse_size(form.get("size")) {
                Ok(s) => s,
                Err(e) => return project_page(ctx, id, q, &refused(e)).await,
            };
            let a = ctx
                .rest(Method::POST, path("/disks"), Some(json!({ "size": size })))
                .await;
            if !a.ok() {
                return project_page(ctx, id, q, &refused(a.error())).await;
            }
            let disk = text(a.get("id"));
            ctx.done(
                &format!("/console/disks/{}", enc(&disk)),
                format!("Disk {disk} created in the project."),
            )
        }
        "instance" => {
            let body = json!({ "name": form.trimmed("name"), "class": form.trimmed("class") });
            let a = ctx.rest(Method::POST, path("/instances"), Some(body)).await;
            if !a.ok() {
                return project_page(ctx, id, q, &refused(a.error())).await;
            }
            super::databases::created(ctx, &a.body, "Instance")
        }
        "delete" => {
            let a = ctx.rest(Method::DELETE, path(""), None).await;
            if !a.ok() {
                return project_page(ctx, id, q, &refused(a.error())).await;
            }
            ctx.done("/console/projects", format!("Project {id} deleted."))
        }
        _ => super::not_found(ctx),
    }
}
