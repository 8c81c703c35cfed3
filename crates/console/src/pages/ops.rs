//! Operations: metering as charts (requests per operation and per account
//! from the metering report, and over time per operation and per account
//! from the audit trail's records of a window), with its table; the nodes
//! with their health, addresses, leases and what they host, and the
//! server's health. The charts are SVG drawn here (no script). Every read
//! is a REST call as the signed-in principal.

use std::collections::BTreeMap;

use axum::response::Response;
use maud::{Markup, html};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Ctx, Form};
use crate::Backend;
use crate::html::{self, Nav, enc, text};

/// Audit pages (of 1000 records) read for the charts over time, at most.
const AUDIT_PAGES: usize = 5;

/// Series drawn in a chart over time; the rest are summed as "other".
const SERIES: usize = 6;

/// Bars drawn in a bar chart; the rest are summed as one more bar.
const BARS: usize = 20;

/// The charts' colours (the style sheet's palette).
const PALETTE: [&str; 7] = [
    "#0b5cad", "#1a7f37", "#b42318", "#9a6700", "#8250df", "#0a7ea4", "#57606a",
];

const OK_COLOUR: &str = "#1a7f37";
const ERROR_COLOUR: &str = "#b42318";

pub(crate) async fn route<B: Backend>(
    ctx: &Ctx<'_, B>,
    segs: &[&str],
    post: bool,
    q: &Form,
    _form: &Form,
) -> Response {
    match (post, segs) {
        (false, ["metering"]) => metering(ctx, q).await,
        (false, ["nodes"]) => nodes(ctx).await,
        _ => super::not_found(ctx),
    }
}

// ----- charts -------------------------------------------------------------

/// One bar: a label and its successful and failed counts.
struct Bar {
    label: String,
    success: u64,
    error: u64,
}

/// The largest `BARS` bars by total, the rest summed as `rest_label`.
fn top_bars(mut bars: Vec<Bar>, rest_label: &str) -> Vec<Bar> {
    bars.sort_by(|a, b| {
        (b.success + b.error)
            .cmp(&(a.success + a.error))
            .then_with(|| a.label.cmp(&b.label))
    });
    if bars.len() > BARS {
        let rest = bars.split_off(BARS - 1);
        bars.push(Bar {
            label: format!("{rest_label} ({})", rest.len()),
            success: rest.iter().map(|b| b.success).sum(),
            error: rest.iter().map(|b| b.error).sum(),
        });
    }
    bars
}

/// A short label for a chart (SVG text does not wrap).
fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

#[allow(clippy::cast_precision_loss, reason = "chart coordinates")]
fn ratio(n: u64, max: u64) -> f64 {
    if max == 0 { 0.0 } else { n as f64 / max as f64 }
}

/// A horizontal bar chart of successful (green) and failed (red) requests.
fn bar_chart(id: &str, title: &str, bars: &[Bar]) -> Markup {
    const W: f64 = 760.0;
    const LABEL: f64 = 250.0;
    const AREA: f64 = 380.0;
    const ROW: f64 = 22.0;
    let max = bars.iter().map(|b| b.success + b.error).max().unwrap_or(0);
    #[allow(clippy::cast_precision_loss, reason = "a few rows")]
    let h = ROW * bars.len() as f64 + 44.0;
    let total: u64 = bars.iter().map(|b| b.success + b.error).sum();
    let label = format!(
        "{title}: {} bars, {total} requests in all; the largest is {} with {max}",
        bars.len(),
        bars.first().map_or("none", |b| b.label.as_str())
    );
    html! {
        figure {
            svg.chart id=(id) role="img" aria-label=(label) viewBox=(format!("0 0 {W} {h}")) width=(W) height=(h) xmlns="http://www.w3.org/2000/svg" {
                title { (title) }
                @for (i, b) in bars.iter().enumerate() {
                    @let y = 8.0 + ROW * f64::from(u32::try_from(i).unwrap_or(0));
                    @let ok_w = AREA * ratio(b.success, max);
                    @let err_w = AREA * ratio(b.error, max);
                    g {
                        title { (b.label) ": " (b.success) " successful, " (b.error) " failed" }
                        text x=(LABEL - 6.0) y=(y + 14.0) text-anchor="end" font-size="12" fill="#1b1f24" { (short(&b.label, 38)) }
                        rect x=(LABEL) y=(y + 3.0) width=(format!("{ok_w:.1}")) height="14" fill=(OK_COLOUR) {}
                        rect x=(format!("{:.1}", LABEL + ok_w)) y=(y + 3.0) width=(format!("{err_w:.1}")) height="14" fill=(ERROR_COLOUR) {}
                        text x=(format!("{:.1}", LABEL + ok_w + err_w + 6.0)) y=(y + 14.0) font-size="12" fill="#57606a" {
                            (b.success) @if b.error > 0 { " + " (b.error) " failed" }
                        }
                    }
                }
                @let ly = h - 16.0;
                rect x=(LABEL) y=(ly) width="12" height="12" fill=(OK_COLOUR) {}
                text x=(LABEL + 16.0) y=(ly + 10.0) font-size="12" fill="#1b1f24" { "successful" }
                rect x=(LABEL + 110.0) y=(ly) width="12" height="12" fill=(ERROR_COLOUR) {}
                text x=(LABEL + 126.0) y=(ly + 10.0) font-size="12" fill="#1b1f24" { "failed or refused" }
            }
            figcaption { (title) }
        }
    }
}

/// Counts per bucket of a window, by series.
struct Timeline {
    start: i64,
    step: i64,
    buckets: usize,
    by_operation: BTreeMap<String, Vec<u64>>,
    by_account: BTreeMap<String, Vec<u64>>,
    records: u64,
    /// Older records of the window were not read (the page cap).
    truncated: bool,
}

/// The windows the charts over time offer: name, label, length and
/// bucket in seconds.
const WINDOWS: [(&str, &str, i64, i64); 3] = [
    ("1h", "the last hour (per minute)", 3600, 60),
    ("24h", "the last 24 hours (per 30 minutes)", 86_400, 1800),
    ("7d", "the last 7 days (per 3 hours)", 604_800, 10_800),
];

fn window(name: &str) -> (&'static str, &'static str, i64, i64) {
    WINDOWS
        .iter()
        .copied()
        .find(|w| w.0 == name)
        .unwrap_or(WINDOWS[1])
}

/// The top `SERIES` series by total, the rest summed as "other".
fn top_series(map: &BTreeMap<String, Vec<u64>>, buckets: usize) -> Vec<(String, Vec<u64>)> {
    let mut all: Vec<(String, Vec<u64>)> =
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all.sort_by(|a, b| {
        b.1.iter()
            .sum::<u64>()
            .cmp(&a.1.iter().sum::<u64>())
            .then_with(|| a.0.cmp(&b.0))
    });
    if all.len() > SERIES {
        let rest = all.split_off(SERIES - 1);
        let mut other = vec![0u64; buckets];
        for (_, v) in &rest {
            for (o, n) in other.iter_mut().zip(v) {
                *o += n;
            }
        }
        all.push((format!("other ({})", rest.len()), other));
    }
    all
}

fn clock(t: i64, with_day: bool) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp(t) else {
        return String::new();
    };
    let f = if with_day {
        t.format(time::macros::format_description!(
            "[month]-[day] [hour]:[minute]"
        ))
    } else {
        t.format(time::macros::format_description!("[hour]:[minute]"))
    };
    f.unwrap_or_default()
}

/// A line chart of requests per bucket, one line per series.
fn line_chart(id: &str, title: &str, tl: &Timeline, series: &[(String, Vec<u64>)]) -> Markup {
    const W: f64 = 760.0;
    const LEFT: f64 = 56.0;
    const RIGHT: f64 = 12.0;
    const TOP: f64 = 12.0;
    const PLOT_H: f64 = 200.0;
    let rows = series.len().div_ceil(3);
    #[allow(clippy::cast_precision_loss, reason = "a few rows")]
    let h = TOP + PLOT_H + 34.0 + 18.0 * rows as f64;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = W - LEFT - RIGHT;
    #[allow(clippy::cast_precision_loss, reason = "at most a few hundred buckets")]
    let x_of = |i: usize| LEFT + plot_w * (i as f64) / ((tl.buckets.max(2) - 1) as f64);
    let y_of = |n: u64| TOP + PLOT_H - PLOT_H * ratio(n, max);
    let with_day = tl.step >= 3600;
    let end = tl.start + tl.step * i64::try_from(tl.buckets).unwrap_or(0);
    let totals: Vec<String> = series
        .iter()
        .map(|(name, v)| format!("{name} {}", v.iter().sum::<u64>()))
        .collect();
    let label = format!(
        "{title}, from {} to {} UTC: {}",
        clock(tl.start, true),
        clock(end, true),
        if totals.is_empty() {
            "no requests".to_owned()
        } else {
            totals.join(", ")
        }
    );
    html! {
        figure {
            svg.chart id=(id) role="img" aria-label=(label) viewBox=(format!("0 0 {W} {h}")) width=(W) height=(h) xmlns="http://www.w3.org/2000/svg" {
                title { (title) }
                // Axes and the scale.
                line x1=(LEFT) y1=(TOP + PLOT_H) x2=(W - RIGHT) y2=(TOP + PLOT_H) stroke="#d0d7de" {}
                line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(TOP + PLOT_H) stroke="#d0d7de" {}
                line x1=(LEFT) y1=(TOP + PLOT_H / 2.0) x2=(W - RIGHT) y2=(TOP + PLOT_H / 2.0) stroke="#eaeef2" {}
                text x=(LEFT - 6.0) y=(TOP + 4.0) text-anchor="end" font-size="11" fill="#57606a" { (max) }
                text x=(LEFT - 6.0) y=(TOP + PLOT_H / 2.0 + 4.0) text-anchor="end" font-size="11" fill="#57606a" { (max / 2) }
                text x=(LEFT - 6.0) y=(TOP + PLOT_H + 4.0) text-anchor="end" font-size="11" fill="#57606a" { "0" }
                text x=(LEFT) y=(TOP + PLOT_H + 16.0) font-size="11" fill="#57606a" { (clock(tl.start, with_day)) }
                text x=(LEFT + plot_w / 2.0) y=(TOP + PLOT_H + 16.0) text-anchor="middle" font-size="11" fill="#57606a" { (clock(tl.start + tl.step * i64::try_from(tl.buckets / 2).unwrap_or(0), with_day)) }
                text x=(W - RIGHT) y=(TOP + PLOT_H + 16.0) text-anchor="end" font-size="11" fill="#57606a" { (clock(end, with_day)) " UTC" }
                @for (i, (name, v)) in series.iter().enumerate() {
                    @let colour = PALETTE[i % PALETTE.len()];
                    @let points = v.iter().enumerate().map(|(j, n)| format!("{:.1},{:.1}", x_of(j), y_of(*n))).collect::<Vec<_>>().join(" ");
                    polyline points=(points) fill="none" stroke=(colour) stroke-width="2" {
                        title { (name) ": " (v.iter().sum::<u64>()) " requests" }
                    }
                    @let lx = LEFT + 240.0 * f64::from(u32::try_from(i % 3).unwrap_or(0));
                    @let ly = TOP + PLOT_H + 28.0 + 18.0 * f64::from(u32::try_from(i / 3).unwrap_or(0));
                    rect x=(lx) y=(ly) width="12" height="12" fill=(colour) {}
                    text x=(lx + 16.0) y=(ly + 10.0) font-size="12" fill="#1b1f24" { (short(name, 30)) " (" (v.iter().sum::<u64>()) ")" }
                }
            }
            figcaption { (title) }
        }
    }
}

// ----- metering -----------------------------------------------------------

/// Reads the audit records of the window (the latest first, at most
/// `AUDIT_PAGES` pages) and counts them per bucket.
async fn timeline<B: Backend>(
    ctx: &Ctx<'_, B>,
    length: i64,
    step: i64,
    account: &str,
) -> Result<Timeline, String> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let end = (now / step + 1) * step;
    let start = end - length;
    let buckets = usize::try_from(length / step).unwrap_or(1);
    let since = OffsetDateTime::from_unix_timestamp(start)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    let mut tl = Timeline {
        start,
        step,
        buckets,
        by_operation: BTreeMap::new(),
        by_account: BTreeMap::new(),
        records: 0,
        truncated: false,
    };
    let mut cursor: Option<String> = None;
    for page in 0..AUDIT_PAGES {
        let mut path = format!("/v1/audit?limit=1000&since={}", enc(&since));
        if !account.is_empty() {
            path.push_str(&format!("&account={}", enc(account)));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", enc(c)));
        }
        let a = ctx.get(path).await;
        if !a.ok() {
            return Err(a.error());
        }
        for r in a.get("records").as_array().into_iter().flatten() {
            let Some(t) = r["time"]
                .as_str()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            else {
                continue;
            };
            let Ok(i) = usize::try_from((t.unix_timestamp() - start) / step) else {
                continue;
            };
            if i >= buckets {
                continue;
            }
            let n = r["count"].as_u64().unwrap_or(1);
            tl.records += n;
            let op = text(&r["operation"]);
            tl.by_operation
                .entry(op)
                .or_insert_with(|| vec![0; buckets])[i] += n;
            let acct = match r["account"].as_str() {
                Some(a) if !a.is_empty() => a.to_owned(),
                _ => "unauthenticated".to_owned(),
            };
            tl.by_account
                .entry(acct)
                .or_insert_with(|| vec![0; buckets])[i] += n;
        }
        match a.get("next_cursor").as_str() {
            Some(c) if !c.is_empty() => {
                cursor = Some(c.to_owned());
                tl.truncated = page + 1 == AUDIT_PAGES;
            }
            _ => break,
        }
    }
    Ok(tl)
}

async fn metering<B: Backend>(ctx: &Ctx<'_, B>, q: &Form) -> Response {
    let account = q.trimmed("account");
    let (wname, wlabel, length, step) = window(q.trimmed("window"));
    let path = if account.is_empty() {
        "/v1/metering".to_owned()
    } else {
        format!("/v1/metering?account={}", enc(account))
    };
    let a = ctx.get(path).await;
    let mut rows: Vec<Value> = a.get("usage").as_array().cloned().unwrap_or_default();
    rows.sort_by(|x, y| {
        let t = |v: &Value| v["success"].as_u64().unwrap_or(0) + v["error"].as_u64().unwrap_or(0);
        t(y).cmp(&t(x))
            .then_with(|| text(&x["operation"]).cmp(&text(&y["operation"])))
    });
    let mut per_op: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut per_account: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &rows {
        let (s, e) = (
            r["success"].as_u64().unwrap_or(0),
            r["error"].as_u64().unwrap_or(0),
        );
        for (map, key) in [
            (&mut per_op, text(&r["operation"])),
            (&mut per_account, text(&r["account"])),
        ] {
            let slot = map.entry(key).or_default();
            slot.0 += s;
            slot.1 += e;
        }
    }
    let bars = |m: BTreeMap<String, (u64, u64)>| -> Vec<Bar> {
        m.into_iter()
            .map(|(label, (success, error))| Bar {
                label,
                success,
                error,
            })
            .collect()
    };
    let op_bars = top_bars(bars(per_op), "other operations");
    let account_bars = top_bars(bars(per_account), "other accounts");
    let tl = timeline(ctx, length, step, account).await;
    let body = html! {
        form.search method="get" action="/console/metering" {
            @if ctx.principal.admin {
                label for="account" { "Account" }
                input type="text" id="account" name="account" value=(account) placeholder="every account";
            }
            label for="window" { "Over time" }
            select id="window" name="window" {
                @for (n, l, _, _) in WINDOWS { option value=(n) selected[n == wname] { (l) } }
            }
            button type="submit" { "Show" }
        }
        section aria-labelledby="over-time-h" {
            h2 id="over-time-h" { "Requests over " (wlabel) }
            @match &tl {
                Err(e) => { p.muted { "The audit trail, which the charts over time count, cannot be read:" } (html::error(e)) }
                Ok(tl) => {
                    p.hint {
                        "Counted from the audit trail: " (tl.records) " requests in the window."
                        @if tl.truncated { " Only the latest " (AUDIT_PAGES * 1000) " records were read: older requests of the window are not counted." }
                    }
                    (line_chart("chart-time-operation", "Requests over time per operation", tl, &top_series(&tl.by_operation, tl.buckets)))
                    (line_chart("chart-time-account", "Requests over time per account", tl, &top_series(&tl.by_account, tl.buckets)))
                }
            }
        }
        section aria-labelledby="totals-h" {
            h2 id="totals-h" { "Requests since the server started, per operation and per account" }
            @if !a.ok() {
                (html::error(&a.error()))
            } @else if rows.is_empty() {
                p { "No requests metered." }
            } @else {
                (bar_chart("chart-operations", "Requests per operation", &op_bars))
                (bar_chart("chart-accounts", "Requests per account", &account_bars))
                table {
                    caption { "Metering: one row per account, region and operation" }
                    thead { tr {
                        th scope="col" { "Account" } th scope="col" { "Region" } th scope="col" { "Operation" }
                        th scope="col" { "Successful" } th scope="col" { "Failed or refused" }
                    } }
                    tbody {
                        @for r in &rows {
                            tr {
                                td { (text(&r["account"])) }
                                td { (text(&r["region"])) }
                                td { (text(&r["operation"])) }
                                td { (text(&r["success"])) }
                                td { (text(&r["error"])) }
                            }
                        }
                    }
                }
            }
        }
    };
    ctx.page(Nav::Metering, "Metering", &body)
}

// ----- nodes --------------------------------------------------------------

fn health_badge(h: &str) -> Markup {
    let class = if h == "up" { "badge ok" } else { "badge bad" };
    html! { span class=(class) { (h) } }
}

async fn nodes<B: Backend>(ctx: &Ctx<'_, B>) -> Response {
    let health = ctx.get("/healthz".into()).await;
    let a = ctx.get("/v1/nodes".into()).await;
    let nodes: Vec<Value> = a.get("nodes").as_array().cloned().unwrap_or_default();
    let up = nodes
        .iter()
        .filter(|n| n["health"].as_str() == Some("up"))
        .count();
    let body = html! {
        section aria-labelledby="server-h" {
            h2 id="server-h" { "This server" }
            (html::facts(&[
                ("Health (GET /healthz)", if health.ok() {
                    html! { span.badge.ok { "ok" } }
                } else {
                    html! { span.badge.bad { "failing" } " HTTP " (health.status.as_u16()) }
                }),
                ("API", html! { code { (ctx.api_url()) } }),
                ("NBD", html! { @match ctx.console.backend().nbd_addr() { Some(n) => code { (n) }, None => span.muted { "not served" } } }),
            ]))
        }
        section aria-labelledby="nodes-h" {
            h2 id="nodes-h" { "Nodes" }
            @if !a.ok() {
                (html::error(&a.error()))
            } @else {
                p { (nodes.len()) " nodes share this server's metadata store; " (up) " up." }
                table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Node ID" } th scope="col" { "Health" }
                        th scope="col" { "API URL" } th scope="col" { "NBD address" } th scope="col" { "Started" }
                        th scope="col" { "Last heartbeat" } th scope="col" { "Leases" } th scope="col" { "Disks" }
                        th scope="col" { "Instances" }
                    } }
                    tbody {
                        @for n in &nodes {
                            tr {
                                td { (text(&n["name"])) @if n["this_node"] == Value::Bool(true) { " " span.badge { "this node" } } }
                                td { code { (text(&n["id"])) } }
                                td { (health_badge(&text(&n["health"]))) }
                                td { code { (text(&n["api_url"])) } }
                                td { code { (text(&n["nbd_addr"])) } }
                                td { (text(&n["started"])) }
                                td { (text(&n["last_heartbeat"])) }
                                td { (n["leases"].as_array().map(|l| l.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                                td { (n["disks"].as_array().map_or(0, Vec::len)) }
                                td {
                                    (n["instances"].as_array().map(|l| l.iter().map(|i| text(&i["name"])).collect::<Vec<_>>().join(", ")).unwrap_or_default())
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    ctx.page(Nav::Nodes, "Nodes and health", &body)
}

#[cfg(test)]
mod tests {
    use super::{Bar, Timeline, bar_chart, line_chart, top_bars, top_series};
    use std::collections::BTreeMap;

    fn bar(label: &str, success: u64, error: u64) -> Bar {
        Bar {
            label: label.into(),
            success,
            error,
        }
    }

    #[test]
    fn bars_keep_the_largest_and_sum_the_rest() {
        let bars: Vec<Bar> = (0..30).map(|i| bar(&format!("op{i:02}"), i, 1)).collect();
        let top = top_bars(bars, "other operations");
        assert_eq!(top.len(), super::BARS);
        assert_eq!(top[0].label, "op29");
        let last = &top[super::BARS - 1];
        assert_eq!(last.label, "other operations (11)");
        assert_eq!((last.success, last.error), ((0..11).sum(), 11));
    }

    #[test]
    fn charts_are_labelled_svg_with_their_data() {
        let svg = bar_chart("c", "Requests per operation", &[bar("Encrypt", 3, 1)]).into_string();
        assert!(
            svg.contains(r#"role="img""#) && svg.contains("aria-label=") && svg.contains("<title>")
        );
        assert!(svg.contains("Encrypt: 3 successful, 1 failed"), "{svg}");
        let mut by = BTreeMap::new();
        for i in 0..8 {
            by.insert(format!("op{i}"), vec![i, 1, 0]);
        }
        let series = top_series(&by, 3);
        assert_eq!(series.len(), super::SERIES);
        assert_eq!(series[super::SERIES - 1].0, "other (3)");
        let tl = Timeline {
            start: 0,
            step: 60,
            buckets: 3,
            by_operation: by,
            by_account: BTreeMap::new(),
            records: 0,
            truncated: false,
        };
        let svg = line_chart("t", "Requests over time", &tl, &series).into_string();
        assert_eq!(svg.matches("<polyline").count(), super::SERIES);
        assert!(svg.contains("</rect>") && !svg.contains("<rect/>"));
        let empty = line_chart("e", "Nothing", &tl, &[]).into_string();
        assert!(empty.contains("no requests"), "{empty}");
    }
}
