//! Keys: the list with search and paging, the create wizard (generated or
//! imported material), the key page (state, aliases, tags, policy, grants,
//! rotation, enable and disable, deletion) and the tester. Every read and
//! change is a KMS call as the signed-in principal.

use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::{Ctx, Form};
use crate::Backend;
use crate::html::{self, Nav, enc, text};

/// Keys per page of the list.
const PAGE: usize = 25;

pub(crate) async fn route<B: Backend>(
    ctx: &Ctx<'_, B>,
    segs: &[&str],
    post: bool,
    q: &Form,
    form: &Form,
) -> Response {
    match (post, segs) {
        (false, []) => list(ctx, q).await,
        (false, ["new"]) => wizard(ctx, &Form::default(), None, None),
        (true, ["new"]) => create(ctx, form).await,
        (false, [id]) => key_page(ctx, id, &Extra::default()).await,
        (false, [id, "confirm", action]) => confirm(ctx, id, action),
        (true, [id, action]) => act(ctx, id, action, form).await,
        _ => super::not_found(ctx),
    }
}

/// A date the KMS API gives as epoch seconds.
pub(crate) fn date(v: &Value) -> String {
    let secs = match v {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => return s.clone(),
        _ => return String::new(),
    };
    #[allow(clippy::cast_possible_truncation, reason = "epoch seconds fit i64")]
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64);
    t.ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .ok()
        })
        .unwrap_or_default()
}

fn state_badge(state: &str) -> Markup {
    let class = match state {
        "Enabled" => "badge ok",
        "Disabled" | "PendingDeletion" | "PendingImport" | "Unavailable" => "badge warn",
        _ => "badge",
    };
    html! { span class=(class) { (state) } }
}

async fn list<B: Backend>(ctx: &Ctx<'_, B>, q: &Form) -> Response {
    let search = q.trimmed("q");
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut next: Option<String> = None;
    let mut error = None;
    if search.is_empty() {
        let mut body = json!({ "Limit": PAGE });
        if !q.get("marker").is_empty() {
            body["Marker"] = json!(q.get("marker"));
        }
        let a = ctx.kms("ListKeys", body).await;
        if a.ok() {
            for k in a.get("Keys").as_array().into_iter().flatten() {
                rows.push((text(&k["KeyId"]), Vec::new()));
            }
            if a.get("Truncated") == &Value::Bool(true) {
                next = Some(format!("?marker={}", enc(&text(a.get("NextMarker")))));
            }
        } else {
            error = Some(a.error());
        }
    } else {
        // Search: key ids and alias names that contain the text, paged by
        // position among the matches.
        let needle = search.to_lowercase();
        let mut matches: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // ListAliases pages by at most 100 (as AWS's), ListKeys by 1000.
        let found = match ctx
            .kms_list("ListAliases", "Aliases", 100, usize::MAX)
            .await
        {
            Ok(aliases) => ctx
                .kms_list("ListKeys", "Keys", 1000, usize::MAX)
                .await
                .map(|keys| (aliases, keys)),
            Err(e) => Err(e),
        };
        match found {
            Ok((aliases, keys)) => {
                let by_alias = aliases.iter().filter_map(|al| {
                    let target = text(&al["TargetKeyId"]);
                    (!target.is_empty() && text(&al["AliasName"]).to_lowercase().contains(&needle))
                        .then_some(target)
                });
                let by_id = keys
                    .iter()
                    .map(|k| text(&k["KeyId"]))
                    .filter(|id| id.to_lowercase().contains(&needle));
                for id in by_alias.chain(by_id) {
                    if seen.insert(id.clone()) {
                        matches.push(id);
                    }
                }
            }
            Err(e) => error = Some(e),
        }
        let start: usize = q.get("from").parse().unwrap_or(0);
        for id in matches.iter().skip(start).take(PAGE) {
            rows.push((id.clone(), Vec::new()));
        }
        if matches.len() > start + PAGE {
            next = Some(format!("?q={}&from={}", enc(search), start + PAGE));
        }
    }
    // Each key of the page: its metadata and aliases.
    let mut described = Vec::with_capacity(rows.len());
    for (id, _) in &rows {
        let d = ctx.kms("DescribeKey", json!({ "KeyId": id })).await;
        let al = ctx.kms("ListAliases", json!({ "KeyId": id })).await;
        let aliases: Vec<String> = al
            .get("Aliases")
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| text(&a["AliasName"]))
            .collect();
        described.push((id.clone(), d, aliases));
    }
    let body = html! {
        div.toolbar {
            form.search method="get" action="/console/keys" role="search" {
                label for="q" { "Search keys by alias or key ID" }
                input type="search" id="q" name="q" value=(search);
                button type="submit" { "Search" }
            }
            a.button href="/console/keys/new" { "Create key" }
        }
        @if let Some(e) = &error { (html::error(e)) }
        table {
            caption { "Keys of account " (ctx.principal.account) }
            thead { tr { th scope="col" { "Aliases" } th scope="col" { "Key ID" } th scope="col" { "State" } th scope="col" { "Spec" } th scope="col" { "Usage" } th scope="col" { "Origin" } th scope="col" { "Description" } } }
            tbody {
                @for (id, d, aliases) in &described {
                    @let m = d.get("KeyMetadata");
                    tr {
                        td { (aliases.join(", ")) }
                        td { a href=(format!("/console/keys/{}", enc(id))) { (id) } }
                        @if d.ok() {
                            td { (state_badge(&text(&m["KeyState"]))) }
                            td { (text(&m["KeySpec"])) }
                            td { (text(&m["KeyUsage"])) }
                            td { (text(&m["Origin"])) }
                            td { (text(&m["Description"])) }
                        } @else {
                            td colspan="5" { (d.error()) }
                        }
                    }
                }
                @if described.is_empty() && error.is_none() {
                    tr { td colspan="7" { "No keys." } }
                }
            }
        }
        @if let Some(n) = next {
            nav.paging aria-label="Pages" { a href=(format!("/console/keys{n}")) rel="next" { "Next page" } }
        }
    };
    ctx.page(Nav::Keys, "Keys", &body)
}

fn spec_options() -> Vec<(String, String)> {
    [
        ("SYMMETRIC_DEFAULT", "Symmetric (AES-256-GCM)"),
        ("HMAC_256", "HMAC SHA-256"),
        ("RSA_2048", "RSA 2048"),
        ("RSA_3072", "RSA 3072"),
        ("RSA_4096", "RSA 4096"),
        ("ECC_NIST_P256", "ECC NIST P-256"),
        ("ECC_NIST_P384", "ECC NIST P-384"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect()
}

fn usage_options() -> Vec<(String, String)> {
    [
        ("ENCRYPT_DECRYPT", "Encrypt and decrypt"),
        ("SIGN_VERIFY", "Sign and verify"),
        ("GENERATE_VERIFY_MAC", "Generate and verify MAC"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect()
}

/// The default key policy the wizard proposes: the account's root and,
/// through it, the account's identity policies (AWS's default).
fn default_policy(account: &str) -> String {
    html::pretty(&format!(
        r#"{{"Version":"2012-10-17","Id":"key-default-1","Statement":[{{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{account}:root"}},"Action":"kms:*","Resource":"*"}}]}}"#
    ))
}

/// Checks a policy document as the API will (before saving).
pub(crate) fn check_policy(text: &str, kind: atrest_policy::PolicyKind) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("The policy is empty.".into());
    }
    atrest_policy::PolicyDocument::parse(text, kind)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A validating policy editor: the textarea and its check result.
pub(crate) fn policy_editor(id: &str, value: &str, checked: Option<&Result<(), String>>) -> Markup {
    html! {
        div.field {
            label for=(id) { "Policy (JSON)" }
            textarea.code id=(id) name=(id) rows="16" spellcheck="false" aria-describedby=(format!("{id}-check")) { (value) }
            div id=(format!("{id}-check")) {
                @match checked {
                    Some(Ok(())) => p.ok role="status" { "The policy is valid." },
                    Some(Err(e)) => p.error role="alert" { "The policy is not valid: " (e) },
                    None => small { "Checked before it is saved." },
                }
            }
        }
    }
}

fn wizard<B: Backend>(
    ctx: &Ctx<'_, B>,
    form: &Form,
    checked: Option<&Result<(), String>>,
    error: Option<&str>,
) -> Response {
    let policy = if form.has("policy") {
        form.get("policy").to_owned()
    } else {
        default_policy(&ctx.principal.account)
    };
    let origin = if form.get("origin").is_empty() {
        "AWS_KMS"
    } else {
        form.get("origin")
    };
    let rotation = !form.has("step") || form.has("rotation");
    let days = if form.get("rotation_days").is_empty() {
        "365"
    } else {
        form.get("rotation_days")
    };
    let body = html! {
        @if let Some(e) = error { (html::error(e)) }
        form.wizard method="post" action="/console/keys/new" {
            (ctx.csrf_field())
            fieldset {
                legend { "1. Describe the key" }
                (html::field("description", "Description", form.get("description"), None))
                (html::field("alias", "Alias", form.get("alias"), Some("Optional: alias/ is added when missing.")))
                div.field {
                    label for="tags" { "Tags" }
                    textarea id="tags" name="tags" rows="3" aria-describedby="tags-hint" { (form.get("tags")) }
                    small id="tags-hint" { "One key=value per line." }
                }
            }
            fieldset {
                legend { "2. Key material" }
                (html::select("origin", "Origin", &[("AWS_KMS".into(), "Generated by atrest".into()), ("EXTERNAL".into(), "Imported (BYOK): I will upload the material".into())], origin))
                (html::select("key_spec", "Key spec", &spec_options(), if form.get("key_spec").is_empty() { "SYMMETRIC_DEFAULT" } else { form.get("key_spec") }))
                (html::select("key_usage", "Key usage", &usage_options(), if form.get("key_usage").is_empty() { "ENCRYPT_DECRYPT" } else { form.get("key_usage") }))
            }
            fieldset {
                legend { "3. Rotation" }
                div.field.check {
                    input type="checkbox" id="rotation" name="rotation" value="on" checked[rotation];
                    label for="rotation" { "Rotate the key material automatically (symmetric keys with generated material)" }
                }
                (html::field("rotation_days", "Rotation period in days (90 to 2560)", days, None))
            }
            fieldset {
                legend { "4. Key policy" }
                (policy_editor("policy", &policy, checked))
            }
            input type="hidden" name="step" value="1";
            div.actions {
                button type="submit" name="check" value="1" { "Check policy" }
                button type="submit" name="create" value="1" { "Create key" }
            }
        }
    };
    ctx.page(Nav::Keys, "Create a key", &body)
}

fn parse_tags(text: &str) -> Result<Vec<Value>, String> {
    let mut tags = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("The tag line \"{line}\" has no '='."));
        };
        tags.push(json!({ "TagKey": k.trim(), "TagValue": v.trim() }));
    }
    Ok(tags)
}

async fn create<B: Backend>(ctx: &Ctx<'_, B>, form: &Form) -> Response {
    let checked = check_policy(form.get("policy"), atrest_policy::PolicyKind::Resource);
    if form.has("check") || checked.is_err() {
        let error = (!form.has("check") && checked.is_err())
            .then_some("The key was not created: mend the policy first.");
        return wizard(ctx, form, Some(&checked), error);
    }
    let tags = match parse_tags(form.get("tags")) {
        Ok(t) => t,
        Err(e) => return wizard(ctx, form, None, Some(&e)),
    };
    let origin = form.get("origin");
    let mut body = json!({
        "Description": form.get("description"),
        "KeySpec": form.get("key_spec"),
        "KeyUsage": form.get("key_usage"),
        "Origin": origin,
        "Policy": form.get("policy"),
    });
    if !tags.is_empty() {
        body["Tags"] = Value::Array(tags);
    }
    let a = ctx.kms("CreateKey", body).await;
    if !a.ok() {
        return wizard(ctx, form, Some(&checked), Some(&a.error()));
    }
    let id = text(&a.get("KeyMetadata")["KeyId"]);
    let mut notes = vec![format!("Key {id} created.")];
    let alias = form.trimmed("alias");
    if !alias.is_empty() {
        let name = if alias.starts_with("alias/") {
            alias.to_owned()
        } else {
            format!("alias/{alias}")
        };
        let r = ctx
            .kms(
                "CreateAlias",
                json!({ "AliasName": name, "TargetKeyId": id }),
            )
            .await;
        if !r.ok() {
            notes.push(format!("The alias was not created: {}", r.error()));
        }
    }
    if form.has("rotation") && origin == "AWS_KMS" && form.get("key_spec") == "SYMMETRIC_DEFAULT" {
        let days: u32 = form.trimmed("rotation_days").parse().unwrap_or(365);
        let r = ctx
            .kms(
                "EnableKeyRotation",
                json!({ "KeyId": id, "RotationPeriodInDays": days }),
            )
            .await;
        if !r.ok() {
            notes.push(format!("Rotation was not turned on: {}", r.error()));
        }
    }
    if origin == "EXTERNAL" {
        notes.push("Import its key material below.".into());
    }
    ctx.done(&format!("/console/keys/{}", enc(&id)), notes.join(" "))
}

/// What a key page shows besides the key: a check, a test result, a secret
/// shown once.
#[derive(Default)]
struct Extra {
    error: Option<String>,
    policy: Option<(String, Result<(), String>)>,
    tester: Option<Markup>,
    import: Option<Markup>,
}

async fn key_page<B: Backend>(ctx: &Ctx<'_, B>, id: &str, extra: &Extra) -> Response {
    let d = ctx.kms("DescribeKey", json!({ "KeyId": id })).await;
    if !d.ok() {
        let body = html! { (html::error(&d.error())) p { a href="/console/keys" { "All keys" } } };
        return ctx.page_status(d.status, Nav::Keys, "Key", &body);
    }
    let m = d.get("KeyMetadata").clone();
    let key_id = text(&m["KeyId"]);
    let state = text(&m["KeyState"]);
    let symmetric = text(&m["KeySpec"]) == "SYMMETRIC_DEFAULT";
    let base = format!("/console/keys/{}", enc(&key_id));
    let aliases = ctx.kms("ListAliases", json!({ "KeyId": key_id })).await;
    let tags = ctx
        .kms("ListResourceTags", json!({ "KeyId": key_id }))
        .await;
    let policy = ctx
        .kms(
            "GetKeyPolicy",
            json!({ "KeyId": key_id, "PolicyName": "default" }),
        )
        .await;
    let grants = ctx.kms("ListGrants", json!({ "KeyId": key_id })).await;
    let rotation = ctx
        .kms("GetKeyRotationStatus", json!({ "KeyId": key_id }))
        .await;
    let rotations = ctx
        .kms("ListKeyRotations", json!({ "KeyId": key_id }))
        .await;
    let (policy_text, policy_check) = match &extra.policy {
        Some((t, c)) => (t.clone(), Some(c)),
        None => (html::pretty(&text(policy.get("Policy"))), None),
    };
    let mut facts = vec![
        ("Key ID", html! { code { (key_id) } }),
        ("ARN", html! { code { (text(&m["Arn"])) } }),
        ("State", state_badge(&state)),
        ("Description", html! { (text(&m["Description"])) }),
        (
            "Spec and usage",
            html! { (text(&m["KeySpec"])) " · " (text(&m["KeyUsage"])) },
        ),
        ("Origin", html! { (text(&m["Origin"])) }),
        ("Created", html! { (date(&m["CreationDate"])) }),
    ];
    if !m["DeletionDate"].is_null() {
        facts.push(("Deletion date", html! { (date(&m["DeletionDate"])) }));
    }
    let body = html! {
        @if let Some(e) = &extra.error { (html::error(e)) }
        (html::facts(&facts))
        section aria-labelledby="state-h" {
            h2 id="state-h" { "State" }
            div.actions {
                @if state == "Enabled" {
                    a.button href=(format!("{base}/confirm/disable")) { "Disable" }
                }
                @if state == "Disabled" {
                    (ctx.button(&format!("{base}/enable"), "Enable", &[]))
                }
                @if state == "PendingDeletion" {
                    (ctx.button(&format!("{base}/cancel-deletion"), "Cancel deletion", &[]))
                } @else {
                    a.button.danger href=(format!("{base}/confirm/schedule-deletion")) { "Schedule deletion" }
                }
            }
        }
        @if text(&m["Origin"]) == "EXTERNAL" {
            section aria-labelledby="import-h" {
                h2 id="import-h" { "Key material (BYOK)" }
                @if let Some(i) = &extra.import { (i) }
                p { "1. Download the wrapping public key and import token; 2. wrap your 256-bit key with RSAES_OAEP_SHA_256 under the public key; 3. upload the wrapped key with the token." }
                (ctx.button(&format!("{base}/import-parameters"), "Download wrapping key and import token", &[]))
                form method="post" action=(format!("{base}/import")) {
                    (ctx.csrf_field())
                    div.field {
                        label for="import_token" { "Import token (base64)" }
                        textarea id="import_token" name="import_token" rows="3" {}
                        label for="import_token_file" { "or its file" }
                        input type="file" id="import_token_file" data-base64-into="import_token";
                    }
                    div.field {
                        label for="encrypted_key_material" { "Wrapped key material (base64)" }
                        textarea id="encrypted_key_material" name="encrypted_key_material" rows="3" {}
                        label for="encrypted_key_material_file" { "or its file" }
                        input type="file" id="encrypted_key_material_file" data-base64-into="encrypted_key_material";
                    }
                    button type="submit" { "Import key material" }
                }
            }
        }
        section aria-labelledby="aliases-h" {
            h2 id="aliases-h" { "Aliases" }
            @if aliases.ok() {
                ul { @for a in aliases.get("Aliases").as_array().into_iter().flatten() { li { code { (text(&a["AliasName"])) } } } }
            } @else { (html::error(&aliases.error())) }
            form.inline method="post" action=(format!("{base}/alias")) {
                (ctx.csrf_field())
                label for="alias" { "New alias" }
                input type="text" id="alias" name="alias";
                button type="submit" { "Add alias" }
            }
        }
        section aria-labelledby="tags-h" {
            h2 id="tags-h" { "Tags" }
            @if tags.ok() {
                table {
                    thead { tr { th scope="col" { "Key" } th scope="col" { "Value" } } }
                    tbody { @for t in tags.get("Tags").as_array().into_iter().flatten() { tr { td { (text(&t["TagKey"])) } td { (text(&t["TagValue"])) } } } }
                }
            } @else { (html::error(&tags.error())) }
        }
        section aria-labelledby="rotation-h" {
            h2 id="rotation-h" { "Rotation" }
            @if rotation.ok() {
                @let on = rotation.get("KeyRotationEnabled") == &Value::Bool(true);
                p { "Automatic rotation: " strong { @if on { "on, every " (text(rotation.get("RotationPeriodInDays"))) " days; next " (date(rotation.get("NextRotationDate"))) } @else { "off" } } }
                @if symmetric {
                    div.actions {
                        form.inline method="post" action=(format!("{base}/rotation")) {
                            (ctx.csrf_field())
                            @if on {
                                input type="hidden" name="enabled" value="off";
                                button type="submit" { "Turn rotation off" }
                            } @else {
                                input type="hidden" name="enabled" value="on";
                                label for="rotation_days" { "Period in days" }
                                input type="number" id="rotation_days" name="rotation_days" min="90" max="2560" value="365";
                                button type="submit" { "Turn rotation on" }
                            }
                        }
                        (ctx.button(&format!("{base}/rotate"), "Rotate now", &[]))
                    }
                }
            } @else { p.muted { (rotation.error()) } }
            @if rotations.ok() {
                table {
                    caption { "Rotation history" }
                    thead { tr { th scope="col" { "Date" } th scope="col" { "Type" } th scope="col" { "Material" } } }
                    tbody {
                        @for r in rotations.get("Rotations").as_array().into_iter().flatten() {
                            tr { td { (date(&r["RotationDate"])) } td { (text(&r["RotationType"])) } td { code { (text(&r["KeyMaterialId"])) } } }
                        }
                    }
                }
            }
        }
        section aria-labelledby="policy-h" {
            h2 id="policy-h" { "Key policy" }
            @if policy.ok() || extra.policy.is_some() {
                form method="post" action=(format!("{base}/policy")) {
                    (ctx.csrf_field())
                    (policy_editor("policy", &policy_text, policy_check))
                    div.actions {
                        button type="submit" name="check" value="1" { "Check policy" }
                        button type="submit" name="save" value="1" { "Save policy" }
                    }
                }
            } @else { (html::error(&policy.error())) }
        }
        section aria-labelledby="grants-h" {
            h2 id="grants-h" { "Grants" }
            @if grants.ok() {
                table {
                    thead { tr { th scope="col" { "Grant ID" } th scope="col" { "Name" } th scope="col" { "Grantee" } th scope="col" { "Operations" } } }
                    tbody {
                        @for g in grants.get("Grants").as_array().into_iter().flatten() {
                            tr {
                                td { code { (text(&g["GrantId"])) } }
                                td { (text(&g["Name"])) }
                                td { (text(&g["GranteePrincipal"])) }
                                td { (g["Operations"].as_array().map(|o| o.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                            }
                        }
                    }
                }
            } @else { (html::error(&grants.error())) }
        }
        @if text(&m["KeyUsage"]) == "ENCRYPT_DECRYPT" && symmetric {
            section aria-labelledby="tester-h" {
                h2 id="tester-h" { "Try the key" }
                @if let Some(t) = &extra.tester { (t) }
                form method="post" action=(format!("{base}/encrypt")) {
                    (ctx.csrf_field())
                    div.field {
                        label for="plaintext" { "Text to encrypt" }
                        textarea id="plaintext" name="plaintext" rows="2" {}
                    }
                    button type="submit" { "Encrypt" }
                }
                form method="post" action=(format!("{base}/decrypt")) {
                    (ctx.csrf_field())
                    div.field {
                        label for="ciphertext" { "Ciphertext to decrypt (base64)" }
                        textarea id="ciphertext" name="ciphertext" rows="2" {}
                    }
                    button type="submit" { "Decrypt" }
                }
                (ctx.button(&format!("{base}/data-key"), "Generate a data key", &[]))
            }
        }
    };
    ctx.page(Nav::Keys, &format!("Key {key_id}"), &body)
}

fn confirm<B: Backend>(ctx: &Ctx<'_, B>, id: &str, action: &str) -> Response {
    let base = format!("/console/keys/{}", enc(id));
    let body = match action {
        "disable" => html! {
            p { "Disabling key " code { (id) } " stops every use of it: data under it (disks, databases, projects) can no longer be read until it is enabled again." }
            div.actions {
                (ctx.button(&format!("{base}/disable"), "Disable the key", &[]))
                a.button href=(base) { "Cancel" }
            }
        },
        "schedule-deletion" => html! {
            p { "After the waiting period the key and everything encrypted under it is gone for good. During it the key cannot be used and the deletion can be cancelled." }
            form method="post" action=(format!("{base}/schedule-deletion")) {
                (ctx.csrf_field())
                div.field {
                    label for="pending_days" { "Waiting period in days (7 to 30)" }
                    input type="number" id="pending_days" name="pending_days" min="7" max="30" value="30" required;
                }
                div.actions {
                    button.danger type="submit" { "Schedule deletion" }
                    a.button href=(base) { "Cancel" }
                }
            }
        },
        _ => return super::not_found(ctx),
    };
    ctx.page(Nav::Keys, "Confirm", &body)
}

async fn act<B: Backend>(ctx: &Ctx<'_, B>, id: &str, action: &str, form: &Form) -> Response {
    let base = format!("/console/keys/{}", enc(id));
    let simple = |op: &'static str, done: &'static str| (op, json!({ "KeyId": id }), done);
    let (op, body, done) = match action {
        "enable" => simple("EnableKey", "The key is enabled."),
        "disable" => simple("DisableKey", "The key is disabled."),
        "rotate" => simple("RotateKeyOnDemand", "The key material is rotated."),
        "cancel-deletion" => simple(
            "CancelKeyDeletion",
            "The deletion is cancelled; the key is disabled.",
        ),
        "schedule-deletion" => {
            let days: i64 = form.trimmed("pending_days").parse().unwrap_or(0);
            if !(7..=30).contains(&days) {
                return key_page(
                    ctx,
                    id,
                    &Extra {
                        error: Some("The waiting period is 7 to 30 days.".into()),
                        ..Extra::default()
                    },
                )
                .await;
            }
            (
                "ScheduleKeyDeletion",
                json!({ "KeyId": id, "PendingWindowInDays": days }),
                "The key's deletion is scheduled.",
            )
        }
        "rotation" if form.get("enabled") == "off" => {
            simple("DisableKeyRotation", "Automatic rotation is off.")
        }
        "rotation" => {
            let days: i64 = form.trimmed("rotation_days").parse().unwrap_or(0);
            (
                "EnableKeyRotation",
                json!({ "KeyId": id, "RotationPeriodInDays": days }),
                "Automatic rotation is on.",
            )
        }
        "alias" => {
            let alias = form.trimmed("alias");
            let name = if alias.starts_with("alias/") {
                alias.to_owned()
            } else {
                format!("alias/{alias}")
            };
            (
                "CreateAlias",
                json!({ "AliasName": name, "TargetKeyId": id }),
                "The alias is added.",
            )
        }
        "policy" => {
            let text = form.get("policy").to_owned();
            let checked = check_policy(&text, atrest_policy::PolicyKind::Resource);
            if form.has("check") || checked.is_err() {
                return key_page(
                    ctx,
                    id,
                    &Extra {
                        policy: Some((text, checked)),
                        ..Extra::default()
                    },
                )
                .await;
            }
            (
                "PutKeyPolicy",
                json!({ "KeyId": id, "PolicyName": "default", "Policy": text }),
                "The key policy is saved.",
            )
        }
        "encrypt" | "decrypt" | "data-key" => return tester(ctx, id, action, form).await,
        "import-parameters" | "import" => return import(ctx, id, action, form).await,
        _ => return super::not_found(ctx),
    };
    let a = ctx.kms(op, body).await;
    if a.ok() {
        ctx.done(&base, done)
    } else {
        key_page(
            ctx,
            id,
            &Extra {
                error: Some(a.error()),
                ..Extra::default()
            },
        )
        .await
    }
}

async fn tester<B: Backend>(ctx: &Ctx<'_, B>, id: &str, action: &str, form: &Form) -> Response {
    let result = match action {
        "encrypt" => {
            let a = ctx
                .kms(
                    "Encrypt",
                    json!({ "KeyId": id, "Plaintext": B64.encode(form.get("plaintext")) }),
                )
                .await;
            if a.ok() {
                html! { (html::copyable("result", "Ciphertext (base64)", &text(a.get("CiphertextBlob")), 3)) }
            } else {
                html::error(&a.error())
            }
        }
        "decrypt" => {
            let a = ctx
                .kms(
                    "Decrypt",
                    json!({ "KeyId": id, "CiphertextBlob": form.trimmed("ciphertext") }),
                )
                .await;
            if a.ok() {
                let plain = B64
                    .decode(text(a.get("Plaintext")))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                html! { (html::copyable("result", "Decrypted text", &plain, 2)) }
            } else {
                html::error(&a.error())
            }
        }
        _ => {
            let a = ctx
                .kms(
                    "GenerateDataKey",
                    json!({ "KeyId": id, "KeySpec": "AES_256" }),
                )
                .await;
            if a.ok() {
                html! {
                    p { "A 256-bit data key: the plaintext is shown this once and kept nowhere." }
                    (html::copyable("result", "Plaintext data key (base64)", &text(a.get("Plaintext")), 1))
                    (html::copyable("result-blob", "Encrypted data key (base64)", &text(a.get("CiphertextBlob")), 3))
                }
            } else {
                html::error(&a.error())
            }
        }
    };
    key_page(
        ctx,
        id,
        &Extra {
            tester: Some(result),
            ..Extra::default()
        },
    )
    .await
}

async fn import<B: Backend>(ctx: &Ctx<'_, B>, id: &str, action: &str, form: &Form) -> Response {
    if action == "import" {
        let a = ctx
            .kms(
                "ImportKeyMaterial",
                json!({
                    "KeyId": id,
                    "ImportToken": form.trimmed("import_token"),
                    "EncryptedKeyMaterial": form.trimmed("encrypted_key_material"),
                    "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
                }),
            )
            .await;
        if a.ok() {
            return ctx.done(
                &format!("/console/keys/{}", enc(id)),
                "The key material is imported; the key is enabled.",
            );
        }
        return key_page(
            ctx,
            id,
            &Extra {
                error: Some(a.error()),
                ..Extra::default()
            },
        )
        .await;
    }
    let a = ctx
        .kms(
            "GetParametersForImport",
            json!({ "KeyId": id, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048" }),
        )
        .await;
    let shown = if a.ok() {
        html! {
            p { "Valid until " (date(a.get("ParametersValidTo"))) ". Wrapping algorithm RSAES_OAEP_SHA_256." }
            (html::copyable("public_key", "Wrapping public key (DER, base64)", &text(a.get("PublicKey")), 4))
            (html::copyable("token", "Import token (base64)", &text(a.get("ImportToken")), 4))
            // The same two as files (a download, not a navigation: the CSP
            // does not apply and no script runs).
            div.actions {
                a.button download="wrapping-public-key.der" href=(format!("data:application/octet-stream;base64,{}", text(a.get("PublicKey")))) { "Download the wrapping public key" }
                a.button download="import-token.bin" href=(format!("data:application/octet-stream;base64,{}", text(a.get("ImportToken")))) { "Download the import token" }
            }
            p.hint {
                "Then, for example: "
                code { "openssl pkeyutl -encrypt -pubin -keyform DER -inkey wrapping-public-key.der -in key.bin -out wrapped.bin -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256; base64 -w0 wrapped.bin; base64 -w0 import-token.bin" }
            }
        }
    } else {
        html::error(&a.error())
    };
    key_page(
        ctx,
        id,
        &Extra {
            import: Some(shown),
            ..Extra::default()
        },
    )
    .await
}
