//! Admin: accounts (the admin account's root), and in an account its users,
//! their identity policies (the validating editor) and access keys (a new
//! key's secret is shown once, on the answer to its creation, and kept
//! nowhere).

use axum::response::Response;
use http::Method;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::keys::{check_policy, date, policy_editor};
use super::{Ctx, Form};
use crate::Backend;
use crate::html::{self, Nav, enc, text};

pub(crate) async fn route<B: Backend>(
    ctx: &Ctx<'_, B>,
    segs: &[&str],
    post: bool,
    q: &Form,
    form: &Form,
) -> Response {
    // The account worked on: the query's or the form's, else one's own.
    let account = [q.trimmed("account"), form.trimmed("account")]
        .into_iter()
        .find(|a| !a.is_empty())
        .unwrap_or(&ctx.principal.account)
        .to_owned();
    match (post, segs) {
        (false, []) => overview(ctx, &account, None).await,
        (true, ["accounts"]) => {
            let mut body = json!({ "admin": form.has("admin") });
            if !form.trimmed("id").is_empty() {
                body["id"] = json!(form.trimmed("id"));
            }
            let a = ctx
                .rest(Method::POST, "/v1/accounts".into(), Some(body))
                .await;
            finish(
                ctx,
                &account,
                &a,
                format!("Account {} created.", text(a.get("id"))),
            )
            .await
        }
        (true, ["accounts", id, action @ ("suspend" | "resume")]) => {
            let a = ctx
                .rest(
                    Method::POST,
                    format!("/v1/accounts/{}/{action}", enc(id)),
                    None,
                )
                .await;
            let done = if *action == "suspend" {
                "suspended"
            } else {
                "resumed"
            };
            finish(ctx, &account, &a, format!("Account {id}: {done}.")).await
        }
        (true, ["users"]) => {
            let a = ctx
                .rest(
                    Method::POST,
                    format!("/v1/accounts/{}/users", enc(&account)),
                    Some(json!({ "name": form.trimmed("name") })),
                )
                .await;
            finish(
                ctx,
                &account,
                &a,
                format!("User {} created.", form.trimmed("name")),
            )
            .await
        }
        (false, ["users", user, "policies", policy]) => {
            editor(ctx, &account, user, policy, None, None).await
        }
        (true, ["users", user, "policies"]) => {
            let name = form.trimmed("policy_name");
            if name.is_empty() {
                return overview(ctx, &account, Some("Name the policy.".into())).await;
            }
            html::redirect(&format!(
                "/console/admin/users/{}/policies/{}?account={}",
                enc(user),
                enc(name),
                enc(&account)
            ))
        }
        (true, ["users", user, "policies", policy]) => {
            save_policy(ctx, &account, user, policy, form).await
        }
        (true, ["access-keys"]) => create_key(ctx, &account, form).await,
        (
            true,
            [
                "access-keys",
                id,
                action @ ("activate" | "deactivate" | "delete"),
            ],
        ) => {
            let (method, path) = if *action == "delete" {
                (
                    Method::DELETE,
                    format!("/v1/accounts/{}/access-keys/{}", enc(&account), enc(id)),
                )
            } else {
                (
                    Method::POST,
                    format!(
                        "/v1/accounts/{}/access-keys/{}/{action}",
                        enc(&account),
                        enc(id)
                    ),
                )
            };
            let a = ctx.rest(method, path, None).await;
            finish(ctx, &account, &a, format!("Access key {id}: {action}d.")).await
        }
        _ => super::not_found(ctx),
    }
}

fn here(account: &str) -> String {
    format!("/console/admin?account={}", enc(account))
}

async fn finish<B: Backend>(
    ctx: &Ctx<'_, B>,
    account: &str,
    a: &crate::Answer,
    done: String,
) -> Response {
    if a.ok() {
        ctx.done(&here(account), done)
    } else {
        overview(ctx, account, Some(a.error())).await
    }
}

async fn overview<B: Backend>(ctx: &Ctx<'_, B>, account: &str, error: Option<String>) -> Response {
    let accounts = if ctx.principal.admin {
        Some(ctx.get("/v1/accounts".into()).await)
    } else {
        None
    };
    let users = ctx
        .get(format!("/v1/accounts/{}/users", enc(account)))
        .await;
    let keys = ctx
        .get(format!("/v1/accounts/{}/access-keys", enc(account)))
        .await;
    let acct_field = html! { input type="hidden" name="account" value=(account); };
    let body = html! {
        @if let Some(e) = &error { (html::error(e)) }
        @if let Some(accts) = &accounts {
            section aria-labelledby="accounts-h" {
                h2 id="accounts-h" { "Accounts" }
                @if accts.ok() {
                    table {
                        thead { tr { th scope="col" { "Account" } th scope="col" { "Admin" } th scope="col" { "State" } th scope="col" { "Created" } th scope="col" { "Actions" } } }
                        tbody {
                            @for a in accts.get("accounts").as_array().into_iter().flatten() {
                                @let id = text(&a["id"]);
                                @let suspended = a["suspended"] == Value::Bool(true);
                                tr {
                                    td { a href=(here(&id)) { (id) } @if id == account { " (shown)" } }
                                    td { @if a["admin"] == Value::Bool(true) { "admin" } }
                                    td { @if suspended { span.badge.bad { "Suspended" } } @else { span.badge.ok { "Active" } } }
                                    td { (date(&a["created"])) }
                                    td {
                                        @if suspended {
                                            (ctx.button(&format!("/console/admin/accounts/{}/resume", enc(&id)), "Resume", &[("account", account)]))
                                        } @else {
                                            (ctx.button(&format!("/console/admin/accounts/{}/suspend", enc(&id)), "Suspend", &[("account", account)]))
                                        }
                                    }
                                }
                            }
                        }
                    }
                } @else { (html::error(&accts.error())) }
                form method="post" action="/console/admin/accounts" {
                    (ctx.csrf_field())
                    (acct_field)
                    (html::field("id", "New account's id (12 digits; empty: chosen for you)", "", None))
                    div.field.check {
                        input type="checkbox" id="admin" name="admin" value="on";
                        label for="admin" { "Admin account" }
                    }
                    button type="submit" { "Create account" }
                }
            }
        }
        section aria-labelledby="users-h" {
            h2 id="users-h" { "Users of account " (account) }
            @if users.ok() {
                table {
                    thead { tr { th scope="col" { "User" } th scope="col" { "ARN" } th scope="col" { "Identity policies" } th scope="col" { "New policy" } } }
                    tbody {
                        @for u in users.get("users").as_array().into_iter().flatten() {
                            @let name = text(&u["name"]);
                            tr {
                                td { (name) }
                                td { code { (text(&u["arn"])) } }
                                td {
                                    @for p in u["policies"].as_array().into_iter().flatten() {
                                        a href=(format!("/console/admin/users/{}/policies/{}?account={}", enc(&name), enc(&text(p)), enc(account))) { (text(p)) } " "
                                    }
                                }
                                td {
                                    form.inline method="post" action=(format!("/console/admin/users/{}/policies", enc(&name))) {
                                        (ctx.csrf_field())
                                        (acct_field)
                                        label for=(format!("policy-{name}")) { "Policy name" }
                                        input type="text" id=(format!("policy-{name}")) name="policy_name";
                                        button type="submit" { "Write policy" }
                                    }
                                }
                            }
                        }
                    }
                }
            } @else { (html::error(&users.error())) }
            form.inline method="post" action="/console/admin/users" {
                (ctx.csrf_field())
                (acct_field)
                label for="name" { "New user's name" }
                input type="text" id="name" name="name";
                button type="submit" { "Create user" }
            }
        }
        section aria-labelledby="keys-h" {
            h2 id="keys-h" { "Access keys of account " (account) }
            @if keys.ok() { (key_table(ctx, account, keys.get("access_keys"))) } @else { (html::error(&keys.error())) }
            form.inline method="post" action="/console/admin/access-keys" {
                (ctx.csrf_field())
                (acct_field)
                label for="user" { "For user (empty: the account's root)" }
                input type="text" id="user" name="user";
                button type="submit" { "Create access key" }
            }
        }
    };
    ctx.page(Nav::Admin, "Admin", &body)
}

fn key_table<B: Backend>(ctx: &Ctx<'_, B>, account: &str, keys: &Value) -> Markup {
    html! {
        table {
            thead { tr { th scope="col" { "Access key ID" } th scope="col" { "User" } th scope="col" { "Status" } th scope="col" { "Created" } th scope="col" { "Last used" } th scope="col" { "Actions" } } }
            tbody {
                @for k in keys.as_array().into_iter().flatten() {
                    @let id = text(&k["access_key_id"]);
                    @let active = k["active"] == Value::Bool(true);
                    @let base = format!("/console/admin/access-keys/{}", enc(&id));
                    tr {
                        td { code { (id) } }
                        td { (text(&k["user"])) }
                        td { @if active { span.badge.ok { "Active" } } @else { span.badge.warn { "Inactive" } } }
                        td { (date(&k["created"])) }
                        td { (date(&k["last_used"]["time"])) " " (text(&k["last_used"]["service"])) }
                        td {
                            @if active {
                                (ctx.button(&format!("{base}/deactivate"), "Deactivate", &[("account", account)]))
                            } @else {
                                (ctx.button(&format!("{base}/activate"), "Activate", &[("account", account)]))
                                (ctx.button(&format!("{base}/delete"), "Delete", &[("account", account)]))
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn create_key<B: Backend>(ctx: &Ctx<'_, B>, account: &str, form: &Form) -> Response {
    let user = form.trimmed("user");
    let body = if user.is_empty() {
        json!({})
    } else {
        json!({ "user": user })
    };
    let a = ctx
        .rest(
            Method::POST,
            format!("/v1/accounts/{}/access-keys", enc(account)),
            Some(body),
        )
        .await;
    if !a.ok() {
        return overview(ctx, account, Some(a.error())).await;
    }
    // The secret is in this answer only: shown once, never stored, never
    // in a flash message or a URL.
    let body = html! {
        div.secret role="status" {
            p { strong { "Copy the secret now: it is shown this once." } " atrest keeps only a sealed copy and will not show it again." }
            (html::copyable("new_access_key_id", "Access key ID", &text(a.get("access_key_id")), 1))
            (html::copyable("new_secret_access_key", "Secret access key", &text(a.get("secret_access_key")), 1))
        }
        p { a href=(here(account)) { "Back to the account" } }
    };
    ctx.page(Nav::Admin, "New access key", &body)
}

async fn editor<B: Backend>(
    ctx: &Ctx<'_, B>,
    account: &str,
    user: &str,
    policy: &str,
    shown: Option<(&str, &Result<(), String>)>,
    error: Option<String>,
) -> Response {
    let path = format!(
        "/v1/accounts/{}/users/{}/policies/{}",
        enc(account),
        enc(user),
        enc(policy)
    );
    let (doc, checked) = match shown {
        Some((t, c)) => (t.to_owned(), Some(c)),
        None => {
            let a = ctx.get(path).await;
            let doc = if a.ok() {
                html::pretty(&text(a.get("document")))
            } else {
                r#"{
  "Version": "2012-10-17",
  "Statement": [
    { "Effect": "Allow", "Action": ["kms:DescribeKey", "kms:ListKeys"], "Resource": "*" }
  ]
}"#
                .to_owned()
            };
            (doc, None)
        }
    };
    let action = format!(
        "/console/admin/users/{}/policies/{}",
        enc(user),
        enc(policy)
    );
    let body = html! {
        @if let Some(e) = &error { (html::error(e)) }
        p { "Identity policy " code { (policy) } " of user " code { (user) } " in account " (account) "." }
        form method="post" action=(action) {
            (ctx.csrf_field())
            input type="hidden" name="account" value=(account);
            (policy_editor("document", &doc, checked))
            div.actions {
                button type="submit" name="check" value="1" { "Check policy" }
                button type="submit" name="save" value="1" { "Save policy" }
                button.danger type="submit" name="delete" value="1" { "Delete policy" }
            }
        }
        p { a href=(here(account)) { "Back to the account" } }
    };
    ctx.page(Nav::Admin, "Identity policy", &body)
}

async fn save_policy<B: Backend>(
    ctx: &Ctx<'_, B>,
    account: &str,
    user: &str,
    policy: &str,
    form: &Form,
) -> Response {
    let path = format!(
        "/v1/accounts/{}/users/{}/policies/{}",
        enc(account),
        enc(user),
        enc(policy)
    );
    if form.has("delete") {
        let a = ctx.rest(Method::DELETE, path, None).await;
        return finish(
            ctx,
            account,
            &a,
            format!("Policy {policy} of {user} deleted."),
        )
        .await;
    }
    let doc = form.get("document");
    let checked = check_policy(doc, atrest_policy::PolicyKind::Identity);
    if form.has("check") || checked.is_err() {
        return editor(ctx, account, user, policy, Some((doc, &checked)), None).await;
    }
    let a = ctx
        .rest(Method::PUT, path, Some(json!({ "document": doc })))
        .await;
    if a.ok() {
        ctx.done(&here(account), format!("Policy {policy} of {user} saved."))
    } else {
        editor(
            ctx,
            account,
            user,
            policy,
            Some((doc, &checked)),
            Some(a.error()),
        )
        .await
    }
}
