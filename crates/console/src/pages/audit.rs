//! The audit trail: a search by key, principal, operation and time, paged
//! back through the trail, and its verification.

use axum::response::Response;
use http::Method;
use maud::{Markup, html};
use serde_json::Value;

use super::{Ctx, Form};
use crate::Backend;
use crate::html::{self, Nav, enc, text};

/// Records per page.
const PAGE: u32 = 50;

/// The search's filters, as the form and the query name them.
const FILTERS: [(&str, &str, &str); 5] = [
    ("key", "Key ARN", "arn:aws:kms:…:key/…"),
    ("principal", "Principal ARN", "arn:aws:iam::…:user/…"),
    (
        "operation",
        "Operation",
        "Encrypt, disk:CreateDisk, console:SignIn",
    ),
    ("since", "From (RFC 3339)", "2026-12-01T00:00:00Z"),
    ("until", "Until (RFC 3339)", ""),
];

pub(crate) async fn route<B: Backend>(
    ctx: &Ctx<'_, B>,
    segs: &[&str],
    post: bool,
    q: &Form,
    _form: &Form,
) -> Response {
    match (post, segs) {
        (false, []) => search(ctx, q, None).await,
        (true, ["verify"]) => {
            let a = ctx
                .rest(Method::POST, "/v1/audit/verify".into(), None)
                .await;
            search(ctx, q, Some(verification(&a))).await
        }
        _ => super::not_found(ctx),
    }
}

fn verification(a: &crate::Answer) -> Markup {
    if !a.ok() {
        return html::error(&a.error());
    }
    let verified = a.get("verified") == &Value::Bool(true);
    html! {
        div role="status" {
            @if verified {
                p.ok { strong { "The audit trail verifies: " } (text(a.get("good_records"))) " records of this node, every chain intact." }
            } @else {
                p.error { strong { "The audit trail does not verify." } " First bad record: " (text(a.get("first_bad"))) }
            }
            table {
                caption { "Chains by node" }
                thead { tr { th scope="col" { "Node" } th scope="col" { "State" } th scope="col" { "Records verified" } th scope="col" { "First bad record" } } }
                tbody {
                    @for n in a.get("nodes").as_array().into_iter().flatten() {
                        @let state = text(&n["state"]);
                        tr {
                            td { (text(&n["name"])) " " small.muted { (text(&n["node"])) } }
                            td { span class=(if state == "ok" { "badge ok" } else { "badge bad" }) { (state) } }
                            td { (text(&n["good_records"])) }
                            td { (text(&n["first_bad"])) }
                        }
                    }
                }
            }
        }
    }
}

async fn search<B: Backend>(ctx: &Ctx<'_, B>, q: &Form, verified: Option<Markup>) -> Response {
    let mut params = vec![format!("limit={PAGE}")];
    for (name, _, _) in FILTERS {
        let v = q.trimmed(name);
        if !v.is_empty() {
            params.push(format!("{name}={}", enc(v)));
        }
    }
    let filters = params.clone();
    if !q.get("cursor").is_empty() {
        params.push(format!("cursor={}", enc(q.get("cursor"))));
    }
    let a = ctx.get(format!("/v1/audit?{}", params.join("&"))).await;
    let mut records: Vec<&Value> = a
        .get("records")
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    // Newest first on the page.
    records.reverse();
    let next = match a.get("next_cursor") {
        Value::String(c) => Some(format!(
            "/console/audit?{}&cursor={}",
            filters[1..].join("&"),
            enc(c)
        )),
        _ => None,
    };
    let body = html! {
        form.search-form method="get" action="/console/audit" {
            fieldset {
                legend { "Search the audit trail" }
                @for (name, label, hint) in FILTERS {
                    div.field {
                        label for=(name) { (label) }
                        input type="text" id=(name) name=(name) value=(q.get(name)) placeholder=(hint);
                    }
                }
                button type="submit" { "Search" }
            }
        }
        div.actions {
            (ctx.button("/console/audit/verify", "Verify the audit trail", &[]))
        }
        @if let Some(v) = verified { (v) }
        @if !a.ok() { (html::error(&a.error())) }
        @for m in a.get("missing_nodes").as_array().into_iter().flatten() {
            p.error role="alert" { "Records of node " (text(&m["name"])) " are missing: " (text(&m["reason"])) }
        }
        table {
            caption { "Records, newest first" }
            thead { tr {
                th scope="col" { "Time" } th scope="col" { "Operation" } th scope="col" { "Result" }
                th scope="col" { "Principal" } th scope="col" { "Key" } th scope="col" { "Source" } th scope="col" { "Seq" }
            } }
            tbody {
                @for r in &records {
                    @let result = text(&r["result"]);
                    tr {
                        td { (text(&r["time"])) }
                        td { code { (text(&r["operation"])) } }
                        td { span class=(if result == "Success" { "badge ok" } else { "badge warn" }) { (result) } }
                        td { (text(&r["principal"])) }
                        td { (text(&r["key_arn"])) }
                        td { (text(&r["source"])) }
                        td { (text(&r["seq"])) }
                    }
                }
                @if records.is_empty() && a.ok() { tr { td colspan="7" { "No records match." } } }
            }
        }
        @if let Some(n) = next {
            nav.paging aria-label="Pages" { a href=(n) rel="next" { "Older records" } }
        }
    };
    ctx.page(Nav::Audit, "Audit trail", &body)
}
