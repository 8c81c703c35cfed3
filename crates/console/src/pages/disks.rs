//! Disks, snapshots and jobs: the disk list with its create form, the disk
//! page (facts, snapshot, resize, rollback, re-key, re-encrypt, convert,
//! delete, attach details), the snapshot list (clone, copy, delete), the
//! job list, and the progress of a job as JSON for the script. A disk whose
//! key cannot be used is shown locked, with the key and the reason. Every
//! read and change is a REST or KMS call as the signed-in principal.
//!
//! Also the key helpers the disk, database and project pages share: the
//! key choices of a form (by alias) and a key's health.

use std::collections::{BTreeMap, BTreeSet};

use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::{Ctx, Form};
use crate::html::{self, Nav, enc, text};
use crate::{Answer, Backend};

/// Disks and snapshots per page of a list.
const PAGE: u32 = 50;

/// Keys offered in a form's key choice (at most).
const KEY_CHOICES: usize = 1000;

/// The encryption context key of a disk's grant (the disk service's).
const DISK_CONTEXT: &str = "atrest:disk:id";

pub(crate) async fn route<B: Backend>(
    ctx: &Ctx<'_, B>,
    segs: &[&str],
    post: bool,
    q: &Form,
    form: &Form,
) -> Response {
    match (post, segs) {
        (false, ["disks"] | ["disks", "new"]) => list(ctx, q, &Form::default(), None).await,
        (true, ["disks", "new"]) => create(ctx, q, form).await,
        (false, ["disks", id]) => disk_page(ctx, id, None).await,
        (false, ["disks", id, "confirm", action]) => confirm(ctx, id, action, q),
        (true, ["disks", id, action]) => act(ctx, id, action, form).await,
        (false, ["snapshots"]) => snapshots(ctx, q, None).await,
        (false, ["snapshots", id, "confirm", "delete"]) => confirm_snapshot_delete(ctx, id),
        (true, ["snapshots", id, action]) => snapshot_act(ctx, id, action, form, q).await,
        (false, ["jobs"]) => jobs(ctx).await,
        (false, ["jobs", id, "progress"]) => progress(ctx, id).await,
        _ => super::not_found(ctx),
    }
}

// ----- keys: names and health (shared with databases and projects) ------

/// The key id of a key ARN (`arn:aws:kms:R:A:key/ID`), or the text itself.
pub(crate) fn key_id_of(arn: &str) -> &str {
    arn.rsplit_once(":key/").map_or(arn, |(_, id)| id)
}

/// The caller's keys by alias: what a key choice offers and how a key is
/// named on a page.
#[derive(Default)]
pub(crate) struct KeyNames {
    /// Key id → its alias names.
    aliases: BTreeMap<String, Vec<String>>,
    /// The caller's key ids (at most [`KEY_CHOICES`]), for a choice.
    ids: Vec<String>,
    /// Why the keys or aliases could not be listed.
    pub(crate) error: Option<String>,
}

impl KeyNames {
    /// The aliases, and with `keys` the key ids too.
    pub(crate) async fn load<B: Backend>(ctx: &Ctx<'_, B>, keys: bool) -> Self {
        let mut out = Self::default();
        match ctx.kms_list("ListAliases", "Aliases", 100, 10_000).await {
            Ok(aliases) => {
                for al in &aliases {
                    let target = text(&al["TargetKeyId"]);
                    if !target.is_empty() {
                        out.aliases
                            .entry(target)
                            .or_default()
                            .push(text(&al["AliasName"]));
                    }
                }
            }
            Err(e) => out.error = Some(e),
        }
        if keys {
            match ctx.kms_list("ListKeys", "Keys", 100, KEY_CHOICES).await {
                Ok(k) => {
                    out.ids = k
                        .iter()
                        .map(|k| text(&k["KeyId"]))
                        .filter(|k| !k.is_empty())
                        .collect();
                }
                Err(e) => out.error = Some(e),
            }
        }
        out
    }

    /// The first alias of a key (by id or ARN).
    pub(crate) fn alias(&self, key: &str) -> Option<&str> {
        self.aliases
            .get(key_id_of(key))
            .and_then(|a| a.first())
            .map(String::as_str)
    }

    /// A key as a page shows it: its alias (or id), linked to its page,
    /// with its ARN in the title.
    pub(crate) fn cell(&self, key: &str) -> Markup {
        if key.is_empty() {
            return html! { span.muted { "none (not encrypted)" } };
        }
        let id = key_id_of(key);
        html! {
            a href=(format!("/console/keys/{}", enc(id))) title=(key) {
                @match self.alias(key) {
                    Some(a) => (a),
                    None => (id),
                }
            }
        }
    }

    /// A choice of key: `first` options, then the aliased keys by alias,
    /// then the others by id (not the services' keys, `alias/atrest/*`,
    /// which `first` offers). The value is the key id.
    pub(crate) fn options(&self, first: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = first
            .iter()
            .map(|(v, l)| ((*v).to_owned(), (*l).to_owned()))
            .collect();
        let mut aliased: Vec<(String, String)> = Vec::new();
        let mut plain: Vec<(String, String)> = Vec::new();
        for id in &self.ids {
            // The services' own keys are offered as the first choice.
            if self
                .aliases
                .get(id)
                .is_some_and(|a| a.iter().any(|n| n.starts_with("alias/atrest/")))
            {
                continue;
            }
            match self.aliases.get(id) {
                Some(names) if !names.is_empty() => {
                    aliased.push((id.clone(), format!("{} ({id})", names.join(", "))));
                }
                _ => plain.push((id.clone(), id.clone())),
            }
        }
        aliased.sort_by(|a, b| a.1.cmp(&b.1));
        out.extend(aliased);
        out.extend(plain);
        out
    }
}

/// Whether a key can be used now, as far as the principal can see.
pub(crate) struct KeyHealth {
    /// `KeyState` (`None` when it could not be read).
    pub(crate) state: Option<String>,
    /// Why the key cannot be used (the key service's words), if it cannot.
    pub(crate) unusable: Option<String>,
    /// The disks the disk service holds a grant for, when the key's grants
    /// could be listed whole.
    granted_disks: Option<BTreeSet<String>>,
}

/// Why a key state stops the services using the key (the key service's
/// words), `None` for a usable key.
fn state_reason(state: &str) -> Option<String> {
    match state {
        "Enabled" => None,
        "Disabled" => Some("the key is disabled".into()),
        "PendingDeletion" | "PendingReplicaDeletion" => Some("the key is pending deletion".into()),
        "PendingImport" => Some("the key has no key material (pending import)".into()),
        other => Some(format!("the key is {other}")),
    }
}

/// The health of `key` (an ARN); with `grants`, the disks it holds grants
/// for too.
pub(crate) async fn key_health<B: Backend>(ctx: &Ctx<'_, B>, key: &str, grants: bool) -> KeyHealth {
    let d = ctx.kms("DescribeKey", json!({ "KeyId": key })).await;
    let mut h = KeyHealth {
        state: None,
        unusable: None,
        granted_disks: None,
    };
    if d.ok() {
        let state = text(&d.get("KeyMetadata")["KeyState"]);
        h.unusable = state_reason(&state);
        h.state = Some(state);
    } else if text(d.get("__type")).ends_with("NotFoundException") {
        h.unusable = Some("the key was deleted".into());
    }
    if grants && h.unusable.is_none() {
        h.granted_disks = disk_grants(ctx, key).await;
    }
    h
}

/// The disks the key's grants name (`None` when they cannot all be read).
async fn disk_grants<B: Backend>(ctx: &Ctx<'_, B>, key: &str) -> Option<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut marker: Option<String> = None;
    for _ in 0..50 {
        let mut body = json!({ "KeyId": key, "Limit": 100 });
        if let Some(m) = &marker {
            body["Marker"] = json!(m);
        }
        let a = ctx.kms("ListGrants", body).await;
        if !a.ok() {
            return None;
        }
        for g in a.get("Grants").as_array().into_iter().flatten() {
            let c = &g["Constraints"];
            for set in ["EncryptionContextSubset", "EncryptionContextEquals"] {
                if let Some(id) = c[set][DISK_CONTEXT].as_str() {
                    out.insert(id.to_owned());
                }
            }
        }
        if a.get("Truncated") != &Value::Bool(true) {
            return Some(out);
        }
        marker = Some(text(a.get("NextMarker")));
    }
    None
}

/// The health of each key of `keys` (ARNs), once each.
pub(crate) async fn healths<B: Backend>(
    ctx: &Ctx<'_, B>,
    keys: impl Iterator<Item = String>,
) -> BTreeMap<String, KeyHealth> {
    let mut out = BTreeMap::new();
    for k in keys.collect::<BTreeSet<_>>() {
        let h = key_health(ctx, &k, true).await;
        out.insert(k, h);
    }
    out
}

/// Why the disk `d` is locked, if it is.
pub(crate) fn lock_reason(d: &Value, health: &BTreeMap<String, KeyHealth>) -> Option<String> {
    let key = d["key_arn"].as_str()?;
    let h = health.get(key)?;
    if let Some(r) = &h.unusable {
        return Some(r.clone());
    }
    let id = text(&d["id"]);
    match &h.granted_disks {
        Some(g) if !g.contains(&id) => {
            Some("the grant that let the service use the key was revoked".into())
        }
        _ => None,
    }
}

/// A locked resource's badge, key and reason.
pub(crate) fn locked(names: &KeyNames, key: &str, reason: &str) -> Markup {
    html! {
        span.badge.bad { "Locked" }
        " "
        small.locked { "Key " (names.cell(key)) ": " (reason) }
    }
}

// ----- sizes ------------------------------------------------------------

/// A size typed in a form: a number of GiB, or a number with a binary unit
/// (`512M`, `1.5T`, `4096B`, `2GiB`).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("'{s}' is not a size: give GiB (10), or a number and a unit (512M, 2T)");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let shift: u32 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "g" | "gi" | "gib" | "gb" => 30,
        "b" | "bytes" => 0,
        "k" | "ki" | "kib" | "kb" => 10,
        "m" | "mi" | "mib" | "mb" => 20,
        "t" | "ti" | "tib" | "tb" => 40,
        _ => return Err(bad()),
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 9 || frac.contains('.') {
        return Err(bad());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let scale = 10u128.pow(u32::try_from(frac.len()).unwrap_or(0));
    let frac_n: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let bytes = (whole * scale + frac_n)
        .checked_mul(1u128 << shift)
        .map(|n| n / scale)
        .ok_or_else(bad)?;
    u64::try_from(bytes).map_err(|_| bad())
}

// ----- the disk list and create form ------------------------------------

pub(crate) fn state_badge(state: &str) -> Markup {
    let class = match state {
        "available" | "in-use" | "running" | "succeeded" | "up" => "badge ok",
        "failed" | "down" => "badge bad",
        _ => "badge warn",
    };
    html! { span class=(class) { (state) } }
}

/// A disk's name: its `Name` tag.
fn disk_name(d: &Value) -> String {
    text(&d["tags"]["Name"])
}

async fn list<B: Backend>(
    ctx: &Ctx<'_, B>,
    q: &Form,
    form: &Form,
    error: Option<&str>,
) -> Response {
    let mut path = format!("/v1/disks?limit={PAGE}");
    if !q.get("next_token").is_empty() {
        path.push_str(&format!("&next_token={}", enc(q.get("next_token"))));
    }
    let a = ctx.get(path).await;
    let disks: Vec<Value> = a.get("disks").as_array().cloned().unwrap_or_default();
    let names = KeyNames::load(ctx, true).await;
    let health = healths(
        ctx,
        disks
            .iter()
            .filter_map(|d| d["key_arn"].as_str().map(str::to_owned)),
    )
    .await;
    let next = text(a.get("next_token"));
    let body = html! {
        @if let Some(e) = error { (html::error(e)) }
        div.toolbar {
            p { a href="/console/snapshots" { "Snapshots" } " · " a href="/console/jobs" { "Jobs" } }
            a.button href="#create" { "Create disk" }
        }
        @if !a.ok() { (html::error(&a.error())) }
        table {
            caption { "Disks of account " (ctx.principal.account) }
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Disk ID" } th scope="col" { "Size" }
                th scope="col" { "Key" } th scope="col" { "State" } th scope="col" { "Created" }
            } }
            tbody {
                @for d in &disks {
                    @let id = text(&d["id"]);
                    @let key = text(&d["key_arn"]);
                    tr {
                        td { (disk_name(d)) }
                        td { a href=(format!("/console/disks/{}", enc(&id))) { code { (id) } } }
                        td { (html::bytes(d["size"].as_u64().unwrap_or(0))) }
                        td { (names.cell(&key)) }
                        td {
                            @match lock_reason(d, &health) {
                                Some(r) => (locked(&names, &key, &r)),
                                None => (state_badge(&text(&d["state"]))),
                            }
                        }
                        td { (text(&d["created"])) }
                    }
                }
                @if disks.is_empty() && a.ok() {
                    tr { td colspan="6" { "No disks." } }
                }
            }
        }
        @if !next.is_empty() {
            nav.paging aria-label="Pages" { a href=(format!("/console/disks?next_token={}", enc(&next))) rel="next" { "Next page" } }
        }
        section aria-labelledby="create-h" id="create" {
            h2 id="create-h" { "Create a disk" }
            @if let Some(e) = &names.error { p.muted { "Keys cannot be listed: " (e) } }
            form method="post" action="/console/disks/new" {
                (ctx.csrf_field())
                (html::field("name", "Name", form.get("name"), Some("Optional: kept as the disk's Name tag.")))
                (html::field("size", "Size (GiB)", form.get("size"), Some("A number of GiB, or with a unit: 512M, 2T.")))
                (html::select("key_id", "Key", &names.options(&[
                    ("", "The disk service key (alias/atrest/disk)"),
                    ("none", "None: not encrypted"),
                ]), form.get("key_id")))
                (html::select("block_size", "Block size", &[
                    ("512".into(), "512 bytes".into()),
                    ("4096".into(), "4096 bytes".into()),
                ], form.get("block_size")))
                div.field.check {
                    input type="checkbox" id="shareable" name="shareable" value="on" checked[form.has("shareable")];
                    label for="shareable" { "Shareable: several clients may attach it read-write at once" }
                }
                button type="submit" { "Create disk" }
            }
        }
    };
    ctx.page(Nav::Disks, "Disks", &body)
}

async fn create<B: Backend>(ctx: &Ctx<'_, B>, q: &Form, form: &Form) -> Response {
    let size = match parse_size(form.get("size")) {
        Ok(s) => s,
        Err(e) => return list(ctx, q, form, Some(&e)).await,
    };
    let mut body = json!({ "size": size });
    match form.trimmed("key_id") {
        "" => {}
        "none" => body["encrypted"] = json!(false),
        k => body["key_id"] = json!(k),
    }
    if let Ok(b) = form.trimmed("block_size").parse::<u32>() {
        body["block_size"] = json!(b);
    }
    if form.has("shareable") {
        body["shareable"] = json!(true);
    }
    let name = form.trimmed("name");
    if !name.is_empty() {
        body["tags"] = json!({ "Name": name });
    }
    let a = ctx.rest(Method::POST, "/v1/disks".into(), Some(body)).await;
    if !a.ok() {
        return list(ctx, q, form, Some(&a.error())).await;
    }
    let id = text(a.get("id"));
    ctx.done(
        &format!("/console/disks/{}", enc(&id)),
        format!("Disk {id} created."),
    )
}

// ----- the disk page ----------------------------------------------------

/// The NBD address as a client reaches it: a wildcard host is the API's.
fn nbd_host<B: Backend>(ctx: &Ctx<'_, B>) -> Option<String> {
    let addr = ctx.console.backend().nbd_addr()?;
    let Some(port) = addr
        .strip_prefix("0.0.0.0:")
        .or_else(|| addr.strip_prefix("[::]:"))
    else {
        return Some(addr);
    };
    let api = ctx.api_url();
    let host = api
        .split_once("://")
        .map_or(api.as_str(), |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    Some(format!("{host}:{port}"))
}

/// The attach details: the NBD URI and the PSK commands.
fn attach<B: Backend>(ctx: &Ctx<'_, B>, id: &str) -> Markup {
    let Some(addr) = nbd_host(ctx) else {
        return html! { p.muted { "This server does not serve NBD (start it with --nbd-listen)." } };
    };
    let uri = format!("nbd://{addr}/{id}");
    let akid = &ctx.access_key_id;
    let psk = format!(
        "atrest nbd psk --out ~/psk/keys.psk\nnbdinfo \"nbds://{akid}@{addr}/{id}?tls-psk-file=$HOME/psk/keys.psk\""
    );
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "10809"));
    let qemu = format!(
        "qemu-img info --object tls-creds-psk,id=tls0,endpoint=client,dir=$HOME/psk,username={akid} \\\n    --image-opts driver=nbd,server.type=inet,server.host={host},server.port={port},export={id},tls-creds=tls0"
    );
    html! {
        (html::copyable("nbd_uri", "NBD URI (plaintext NBD, loopback)", &uri, 1))
        (html::copyable("psk_cmd", "Over TLS: the pre-shared key of your access key (computed by the CLI from your secret, never sent) and a client", &psk, 3))
        (html::copyable("qemu_cmd", "qemu over TLS with the same PSK file", &qemu, 3))
    }
}

/// A job's progress bar (`id`, with its `id-text` label the script fills).
fn job_bar(dom_id: &str, job: &Value) -> Markup {
    let done = job["progress"]["done"].as_u64().unwrap_or(0);
    let total = job["progress"]["total"].as_u64().unwrap_or(0);
    let jid = text(&job["id"]);
    html! {
        div.job {
            label for=(dom_id) { (text(&job["kind"])) " " code { (jid) } }
            " "
            progress id=(dom_id) data-job=(jid) max=(total.max(1)) value=(done) { (percent(done, total)) "%" }
            " "
            span id=(format!("{dom_id}-text")) role="status" { (job_text(job)) }
        }
    }
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        0
    } else {
        u64::try_from(u128::from(done) * 100 / u128::from(total)).unwrap_or(100)
    }
}

/// A job in words.
fn job_text(job: &Value) -> String {
    let kind = text(&job["kind"]);
    let done = job["progress"]["done"].as_u64().unwrap_or(0);
    let total = job["progress"]["total"].as_u64().unwrap_or(0);
    match job["state"].as_str().unwrap_or("") {
        "running" => format!(
            "{kind}: {}% ({} of {})",
            percent(done, total),
            html::human_bytes(done),
            html::human_bytes(total)
        ),
        "succeeded" => format!("{kind}: done"),
        "failed" => format!("{kind} failed: {}", text(&job["error"])),
        other => format!("{kind}: {other}"),
    }
}

/// The caller's jobs on disk `id` (as source or target), newest first.
async fn disk_jobs<B: Backend>(ctx: &Ctx<'_, B>, id: &str) -> Vec<Value> {
    let a = ctx.get("/v1/jobs?limit=1000".into()).await;
    let mut jobs: Vec<Value> = a
        .get("jobs")
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["disk"].as_str() == Some(id) || j["target"].as_str() == Some(id))
        .cloned()
        .collect();
    jobs.sort_by(|a, b| text(&b["started"]).cmp(&text(&a["started"])));
    jobs.truncate(5);
    jobs
}

async fn disk_page<B: Backend>(ctx: &Ctx<'_, B>, id: &str, error: Option<&str>) -> Response {
    let d = ctx.get(format!("/v1/disks/{}", enc(id))).await;
    if !d.ok() {
        let body = html! {
            @if let Some(e) = error { (html::error(e)) }
            (html::error(&d.error()))
            p { a href="/console/disks" { "All disks" } }
        };
        return ctx.page_status(d.status, Nav::Disks, "Disk", &body);
    }
    let disk = d.body.clone();
    let disk_id = text(&disk["id"]);
    let key = text(&disk["key_arn"]);
    let names = KeyNames::load(ctx, true).await;
    let health = healths(ctx, disk["key_arn"].as_str().map(str::to_owned).into_iter()).await;
    let lock = lock_reason(&disk, &health);
    let snaps = ctx.get("/v1/snapshots?limit=1000".into()).await;
    let own: Vec<&Value> = snaps
        .get("snapshots")
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["disk"].as_str() == Some(disk_id.as_str()))
        .collect();
    let jobs = disk_jobs(ctx, &disk_id).await;
    let base = format!("/console/disks/{}", enc(&disk_id));
    let key_choices = names.options(&[("", "The disk service key (alias/atrest/disk)")]);
    let size = disk["size"].as_u64().unwrap_or(0);
    let title = match disk_name(&disk) {
        n if n.is_empty() => format!("Disk {disk_id}"),
        n => format!("Disk {n} ({disk_id})"),
    };
    let tags = disk["tags"].as_object().cloned().unwrap_or_default();
    let body = html! {
        @if let Some(e) = error { (html::error(e)) }
        @if let Some(r) = &lock {
            p.error role="alert" { "This disk is locked: its key " (names.cell(&key)) " cannot be used: " (r) "." }
        }
        (html::facts(&[
            ("Disk ID", html! { code { (disk_id) } }),
            ("Name", html! { (disk_name(&disk)) }),
            ("Size", html::bytes(size)),
            ("Block size", html! { (text(&disk["block_size"])) " bytes" }),
            ("Encrypted", html! { @if disk["encrypted"] == Value::Bool(true) { "yes" } @else { "no" } }),
            ("Key", html! { (names.cell(&key)) @if !key.is_empty() { " " small { code { (key) } } } }),
            ("State", match &lock {
                Some(r) => locked(&names, &key, r),
                None => state_badge(&text(&disk["state"])),
            }),
            ("Shareable", html! { @if disk["shareable"] == Value::Bool(true) { "yes" } @else { "no" } }),
            ("From snapshot", html! { (text(&disk["origin"])) }),
            ("Region", html! { (text(&disk["region"])) }),
            ("Created", html! { (text(&disk["created"])) }),
            ("Tags", html! { @for (k, v) in &tags { code { (k) "=" (text(v)) } " " } }),
        ]))
        @if !jobs.is_empty() {
            section aria-labelledby="jobs-h" {
                h2 id="jobs-h" { "Jobs" }
                @for (i, j) in jobs.iter().enumerate() {
                    @if j["state"].as_str() == Some("running") {
                        (job_bar(&if i == 0 { "job".to_owned() } else { format!("job-{i}") }, j))
                    } @else {
                        p { code { (text(&j["id"])) } " " (job_text(j))
                            @if let Some(t) = j["target"].as_str() { " → " a href=(format!("/console/disks/{}", enc(t))) { (t) } } }
                    }
                }
            }
        }
        section aria-labelledby="attach-h" {
            h2 id="attach-h" { "Attach" }
            (attach(ctx, &disk_id))
        }
        section aria-labelledby="snapshot-h" {
            h2 id="snapshot-h" { "Snapshots" }
            form.inline method="post" action=(format!("{base}/snapshot")) {
                (ctx.csrf_field())
                input type="checkbox" id="to_object_store" name="to_object_store" value="on";
                label for="to_object_store" { "Store it in the object store" }
                button type="submit" { "Take snapshot" }
            }
            @if !snaps.ok() { (html::error(&snaps.error())) }
            @if !own.is_empty() {
                (snapshot_table(ctx, &own, &names, false))
            }
        }
        section aria-labelledby="resize-h" {
            h2 id="resize-h" { "Resize" }
            form.inline method="post" action=(format!("{base}/resize")) {
                (ctx.csrf_field())
                label for="new_size" { "New size (GiB, or with a unit)" }
                input type="text" id="new_size" name="size" value=(html::human_bytes(size).replace(' ', "").replace("bytes", "B"));
                button type="submit" { "Resize" }
            }
            small.muted { " Disks only grow." }
        }
        section aria-labelledby="rollback-h" {
            h2 id="rollback-h" { "Roll back" }
            @if own.iter().any(|s| s["storage"].as_str() == Some("local")) {
                form.inline method="get" action=(format!("{base}/confirm/rollback")) {
                    label for="rollback_snapshot" { "Snapshot" }
                    select id="rollback_snapshot" name="snapshot_id" {
                        @for s in own.iter().filter(|s| s["storage"].as_str() == Some("local")) {
                            option value=(text(&s["id"])) { (text(&s["id"])) " (" (text(&s["created"])) ")" }
                        }
                    }
                    button type="submit" { "Roll back…" }
                }
            } @else {
                p.muted { "No local snapshot of this disk to roll back to." }
            }
        }
        @if disk["encrypted"] == Value::Bool(true) {
            section aria-labelledby="rekey-h" {
                h2 id="rekey-h" { "Re-key" }
                form.inline method="post" action=(format!("{base}/rekey")) {
                    (ctx.csrf_field())
                    (html::select("rekey_key_id", "Move to key", &key_choices, key_id_of(&key)))
                    button type="submit" { "Move to this key" }
                }
                p { "Or re-encrypt every block under a fresh data key (a job; the disk stays usable):" }
                (ctx.button(&format!("{base}/reencrypt"), "Re-encrypt", &[]))
                @if lock.as_deref() == Some("the grant that let the service use the key was revoked") {
                    p { "The disk service's grant on the key was revoked. Let it use the key again:" }
                    (ctx.button(&format!("{base}/regrant"), "Restore the grant", &[]))
                }
            }
        }
        section aria-labelledby="convert-h" {
            h2 id="convert-h" { "Convert" }
            p { "Copy this disk into a new disk, encrypted or not (a job)." }
            form method="post" action=(format!("{base}/convert")) {
                (ctx.csrf_field())
                div.field.check {
                    input type="checkbox" id="convert_encrypted" name="encrypted" value="on" checked[disk["encrypted"] != Value::Bool(true)];
                    label for="convert_encrypted" { "Encrypt the new disk" }
                }
                (html::select("convert_key_id", "Its key (when encrypted)", &key_choices, ""))
                button type="submit" { "Convert into a new disk" }
            }
        }
        section aria-labelledby="delete-h" {
            h2 id="delete-h" { "Delete" }
            a.button.danger href=(format!("{base}/confirm/delete")) { "Delete disk…" }
        }
    };
    ctx.page(Nav::Disks, &title, &body)
}

fn confirm<B: Backend>(ctx: &Ctx<'_, B>, id: &str, action: &str, q: &Form) -> Response {
    let base = format!("/console/disks/{}", enc(id));
    let body = match action {
        "delete" => html! {
            p { "Deleting disk " code { (id) } " removes it for good; its snapshots stay until deleted." }
            div.actions {
                form.inline method="post" action=(format!("{base}/delete")) {
                    (ctx.csrf_field())
                    button.danger type="submit" { "Delete the disk" }
                }
                a.button href=(base) { "Cancel" }
            }
        },
        "rollback" => {
            let snap = q.trimmed("snapshot_id");
            html! {
                p { "Rolling disk " code { (id) } " back to snapshot " code { (snap) } " discards everything written since the snapshot." }
                div.actions {
                    form.inline method="post" action=(format!("{base}/rollback")) {
                        (ctx.csrf_field())
                        input type="hidden" name="snapshot_id" value=(snap);
                        button.danger type="submit" { "Roll back the disk" }
                    }
                    a.button href=(base) { "Cancel" }
                }
            }
        }
        _ => return super::not_found(ctx),
    };
    ctx.page(Nav::Disks, "Confirm", &body)
}

/// What an action asks of the API: method, path, body, and the message of
/// its success.
struct Request {
    method: Method,
    path: String,
    body: Option<Value>,
    done: String,
}

async fn act<B: Backend>(ctx: &Ctx<'_, B>, id: &str, action: &str, form: &Form) -> Response {
    let base = format!("/console/disks/{}", enc(id));
    let path = |tail: &str| format!("/v1/disks/{}{tail}", enc(id));
    let post = |tail: &str, body: Value, done: &str| Request {
        method: Method::POST,
        path: path(tail),
        body: Some(body),
        done: done.to_owned(),
    };
    let r = match action {
        "snapshot" => {
            let mut body = json!({ "disk_id": id });
            if form.has("to_object_store") {
                body["to_object_store"] = json!(true);
            }
            Request {
                method: Method::POST,
                path: "/v1/snapshots".into(),
                body: Some(body),
                done: "Snapshot {id} taken.".into(),
            }
        }
        "resize" => match parse_size(form.get("size")) {
            Ok(size) => post("/resize", json!({ "size": size }), "The disk is resized."),
            Err(e) => return disk_page(ctx, id, Some(&e)).await,
        },
        "rollback" => post(
            "/rollback",
            json!({ "snapshot_id": form.trimmed("snapshot_id") }),
            "The disk is rolled back.",
        ),
        "rekey" => {
            let key = form.trimmed("rekey_key_id");
            let key = if key.is_empty() {
                match service_key(ctx, "disk").await {
                    Ok(k) => k,
                    Err(e) => return disk_page(ctx, id, Some(&e)).await,
                }
            } else {
                key.to_owned()
            };
            post(
                "/rekey",
                json!({ "key_id": key }),
                "The disk is moved to the key.",
            )
        }
        "reencrypt" => post(
            "/rekey",
            json!({ "reencrypt": true }),
            "Re-encryption started.",
        ),
        "regrant" => post(
            "/regrant",
            json!({}),
            "The disk service may use the key again.",
        ),
        "convert" => {
            let encrypted = form.has("encrypted");
            let mut body = json!({ "encrypted": encrypted });
            let key = form.trimmed("convert_key_id");
            if encrypted && !key.is_empty() {
                body["key_id"] = json!(key);
            } else if encrypted {
                // The API's default key (the disk service key) is for an
                // unencrypted source only: it refuses to copy an encrypted
                // disk into an encrypted one without a key named, so the
                // form's "disk service key" is named for it.
                let d = ctx.get(path("")).await;
                if d.get("encrypted") == &Value::Bool(true) {
                    match service_key(ctx, "disk").await {
                        Ok(k) => body["key_id"] = json!(k),
                        Err(e) => return disk_page(ctx, id, Some(&e)).await,
                    }
                }
            }
            post("/convert", body, "Conversion started.")
        }
        "delete" => Request {
            method: Method::DELETE,
            path: path(""),
            body: None,
            done: format!("Disk {id} deleted."),
        },
        _ => return super::not_found(ctx),
    };
    let a = ctx.rest(r.method, r.path, r.body).await;
    if !a.ok() {
        return disk_page(ctx, id, Some(&a.error())).await;
    }
    if action == "delete" {
        return ctx.done("/console/disks", r.done);
    }
    ctx.done(&base, done_message(&r.done, &a))
}

/// A success message with what the answer names (a snapshot, a job, a new
/// disk).
fn done_message(done: &str, a: &Answer) -> String {
    let mut msg = done.replace("{id}", &text(a.get("id")));
    if let Some(job) = a.get("job").as_object() {
        msg.push_str(&format!(" Job {}", text(&job["id"].clone())));
        if let Some(t) = job.get("target").and_then(Value::as_str) {
            msg.push_str(&format!(" makes disk {t}"));
        }
        msg.push('.');
    } else if let Some(job) = a.get("job").as_str() {
        msg.push_str(&format!(" Job {job}."));
    }
    msg
}

/// The ARN of the account's service key of `service` (made on first use).
pub(crate) async fn service_key<B: Backend>(
    ctx: &Ctx<'_, B>,
    service: &str,
) -> Result<String, String> {
    let a = ctx
        .rest(Method::PUT, format!("/v1/service-keys/{service}"), None)
        .await;
    if a.ok() {
        Ok(text(a.get("key_arn")))
    } else {
        Err(a.error())
    }
}

// ----- snapshots ----------------------------------------------------------

fn snapshot_table<B: Backend>(
    ctx: &Ctx<'_, B>,
    snaps: &[&Value],
    names: &KeyNames,
    with_disk: bool,
) -> Markup {
    html! {
        table {
            thead { tr {
                th scope="col" { "Snapshot ID" }
                @if with_disk { th scope="col" { "Disk" } }
                th scope="col" { "Size" } th scope="col" { "Storage" } th scope="col" { "State" }
                th scope="col" { "Key" } th scope="col" { "Created" } th scope="col" { "Actions" }
            } }
            tbody {
                @for (i, s) in snaps.iter().enumerate() {
                    @let sid = text(&s["id"]);
                    @let sbase = format!("/console/snapshots/{}", enc(&sid));
                    tr {
                        td { code { (sid) } }
                        @if with_disk {
                            td { a href=(format!("/console/disks/{}", enc(&text(&s["disk"])))) { (text(&s["disk"])) } }
                        }
                        td { (html::bytes(s["size"].as_u64().unwrap_or(0))) }
                        td { (text(&s["storage"])) }
                        td {
                            @if let Some(job) = s["job"].as_str().filter(|_| s["state"].as_str() == Some("uploading")) {
                                @let pid = format!("snap-job-{i}");
                                @let done = s["progress"]["done"].as_u64().unwrap_or(0);
                                @let total = s["progress"]["total"].as_u64().unwrap_or(0);
                                label for=(pid) { "uploading" } " "
                                progress id=(pid) data-job=(job) max=(total.max(1)) value=(done) { (percent(done, total)) "%" }
                                " " span id=(format!("{pid}-text")) role="status" {}
                            } @else if s["state"].is_null() {
                                span.muted { "—" }
                            } @else {
                                (text(&s["state"]))
                            }
                        }
                        td { (names.cell(&text(&s["key_arn"]))) }
                        td { (text(&s["created"])) }
                        td {
                            (ctx.button(&format!("{sbase}/clone"), "Clone into a new disk", &[]))
                            a.button.danger href=(format!("{sbase}/confirm/delete")) { "Delete…" }
                        }
                    }
                }
            }
        }
    }
}

async fn snapshots<B: Backend>(ctx: &Ctx<'_, B>, q: &Form, error: Option<&str>) -> Response {
    let mut path = format!("/v1/snapshots?limit={PAGE}");
    if !q.get("next_token").is_empty() {
        path.push_str(&format!("&next_token={}", enc(q.get("next_token"))));
    }
    let a = ctx.get(path).await;
    let snaps: Vec<Value> = a.get("snapshots").as_array().cloned().unwrap_or_default();
    let refs: Vec<&Value> = snaps.iter().collect();
    let stored: Vec<&Value> = snaps
        .iter()
        .filter(|s| s["storage"].as_str() == Some("object-store"))
        .collect();
    let names = KeyNames::load(ctx, !stored.is_empty()).await;
    let next = text(a.get("next_token"));
    let body = html! {
        @if let Some(e) = error { (html::error(e)) }
        p { a href="/console/disks" { "Disks" } " · " a href="/console/jobs" { "Jobs" } }
        @if a.ok() {
            @if snaps.is_empty() { p { "No snapshots. Take one from a disk's page." } }
            @else { (snapshot_table(ctx, &refs, &names, true)) }
        } @else {
            (html::error(&a.error()))
        }
        @if !next.is_empty() {
            nav.paging aria-label="Pages" { a href=(format!("/console/snapshots?next_token={}", enc(&next))) rel="next" { "Next page" } }
        }
        @if !stored.is_empty() {
            section aria-labelledby="copy-h" {
                h2 id="copy-h" { "Copy a stored snapshot to another region" }
                form method="post" action="/console/snapshots/-/copy" {
                    (ctx.csrf_field())
                    div.field {
                        label for="copy_snapshot" { "Snapshot (in the object store)" }
                        select id="copy_snapshot" name="snapshot_id" {
                            @for s in &stored { option value=(text(&s["id"])) { (text(&s["id"])) } }
                        }
                    }
                    (html::field("copy_region", "Destination region", "", None))
                    (html::field("copy_key_id", "Its key there", "", Some("Optional: a key id, ARN or alias of that region; default its disk service key.")))
                    button type="submit" { "Copy to region" }
                }
            }
        }
    };
    ctx.page(Nav::Disks, "Snapshots", &body)
}

fn confirm_snapshot_delete<B: Backend>(ctx: &Ctx<'_, B>, id: &str) -> Response {
    let body = html! {
        p { "Deleting snapshot " code { (id) } " removes it for good." }
        div.actions {
            form.inline method="post" action=(format!("/console/snapshots/{}/delete", enc(id))) {
                (ctx.csrf_field())
                button.danger type="submit" { "Delete the snapshot" }
            }
            a.button href="/console/snapshots" { "Cancel" }
        }
    };
    ctx.page(Nav::Disks, "Confirm", &body)
}

async fn snapshot_act<B: Backend>(
    ctx: &Ctx<'_, B>,
    id: &str,
    action: &str,
    form: &Form,
    q: &Form,
) -> Response {
    match action {
        "clone" => {
            let a = ctx
                .rest(
                    Method::POST,
                    "/v1/disks".into(),
                    Some(json!({ "snapshot_id": id })),
                )
                .await;
            if !a.ok() {
                return snapshots(ctx, q, Some(&a.error())).await;
            }
            let new = text(a.get("id"));
            ctx.done(
                &format!("/console/disks/{}", enc(&new)),
                format!("Disk {new} created from snapshot {id}."),
            )
        }
        "delete" => {
            let a = ctx
                .rest(Method::DELETE, format!("/v1/snapshots/{}", enc(id)), None)
                .await;
            if !a.ok() {
                return snapshots(ctx, q, Some(&a.error())).await;
            }
            ctx.done("/console/snapshots", format!("Snapshot {id} deleted."))
        }
        "copy" => {
            let snap = form.trimmed("snapshot_id");
            let mut body = json!({ "region": form.trimmed("copy_region") });
            if !form.trimmed("copy_key_id").is_empty() {
                body["key_id"] = json!(form.trimmed("copy_key_id"));
            }
            let a = ctx
                .rest(
                    Method::POST,
                    format!("/v1/snapshots/{}/copy", enc(snap)),
                    Some(body),
                )
                .await;
            if !a.ok() {
                return snapshots(ctx, q, Some(&a.error())).await;
            }
            ctx.done(
                "/console/snapshots",
                format!(
                    "Snapshot {snap} is being copied: the copy is {}.",
                    text(a.get("id"))
                ),
            )
        }
        _ => super::not_found(ctx),
    }
}

// ----- jobs ---------------------------------------------------------------

async fn jobs<B: Backend>(ctx: &Ctx<'_, B>) -> Response {
    let a = ctx.get("/v1/jobs?limit=1000".into()).await;
    let mut jobs: Vec<Value> = a.get("jobs").as_array().cloned().unwrap_or_default();
    jobs.sort_by(|a, b| text(&b["started"]).cmp(&text(&a["started"])));
    let body = html! {
        p { a href="/console/disks" { "Disks" } " · " a href="/console/snapshots" { "Snapshots" } }
        @if !a.ok() { (html::error(&a.error())) }
        table {
            thead { tr {
                th scope="col" { "Job ID" } th scope="col" { "Kind" } th scope="col" { "Disk" }
                th scope="col" { "New disk or snapshot" } th scope="col" { "Started" } th scope="col" { "Progress" }
            } }
            tbody {
                @for (i, j) in jobs.iter().enumerate() {
                    tr {
                        td { code { (text(&j["id"])) } }
                        td { (text(&j["kind"])) }
                        td { a href=(format!("/console/disks/{}", enc(&text(&j["disk"])))) { (text(&j["disk"])) } }
                        td { (text(&j["target"])) }
                        td { (text(&j["started"])) }
                        td {
                            @if j["state"].as_str() == Some("running") {
                                (job_bar(&if i == 0 { "job".to_owned() } else { format!("job-{i}") }, j))
                            } @else {
                                (state_badge(&text(&j["state"]))) " " (job_text(j))
                            }
                        }
                    }
                }
                @if jobs.is_empty() && a.ok() { tr { td colspan="6" { "No jobs." } } }
            }
        }
    };
    ctx.page(Nav::Disks, "Jobs", &body)
}

/// `GET /console/jobs/{id}/progress`: the job as the script reads it.
async fn progress<B: Backend>(ctx: &Ctx<'_, B>, id: &str) -> Response {
    let a = ctx.get(format!("/v1/jobs/{}", enc(id))).await;
    let (status, body) = if a.ok() {
        let job = a.get("job");
        (
            StatusCode::OK,
            json!({
                "done": job["progress"]["done"].as_u64().unwrap_or(0),
                "total": job["progress"]["total"].as_u64().unwrap_or(0),
                "text": job_text(job),
                "finished": job["state"].as_str() != Some("running"),
                "state": text(&job["state"]),
            }),
        )
    } else {
        (
            a.status,
            json!({ "done": 0, "total": 0, "text": a.error(), "finished": true }),
        )
    };
    html::secure(
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::{key_id_of, parse_size};

    #[test]
    fn sizes_are_gib_or_carry_a_binary_unit() {
        assert_eq!(parse_size("1"), Ok(1 << 30));
        assert_eq!(parse_size(" 10 "), Ok(10 << 30));
        assert_eq!(parse_size("0.5"), Ok(1 << 29));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("64 KiB"), Ok(64 << 10));
        assert!(parse_size("").is_err());
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1.2.3").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn key_ids_come_out_of_arns() {
        assert_eq!(
            key_id_of("arn:aws:kms:us-east-1:111122223333:key/abc"),
            "abc"
        );
        assert_eq!(key_id_of("abc"), "abc");
    }
}
