//! `/jobs`: the job index with filters, keyset pages and live rows
//! (`/jobs/rows`, fetched again by the JS every few seconds); `/jobs/{id}`:
//! one job from its manifest (outputs, quality, timeline, charges and the
//! route explanation) and the index (its events).

use super::{layout, layout::Failure, parse_form, Console};
use axum::{
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
};
use maud::{html, Markup, PreEscaped};
use reelfleet_core::manifest::JobManifest;
use reelfleet_index::{JobFilter, JobRow};

const PAGE: u32 = 50;
const STATUSES: [&str; 7] = ["ingest", "preprocess", "inference", "postprocess", "completed", "failed", "pull"];
const TIERS: [&str; 4] = ["low", "medium", "high", "critical"];

/// The listing's query: filters as typed, and the page cursor.
#[derive(Debug, Default)]
struct Query {
    status: String,
    tier: String,
    model: String,
    since: String,
    cost_above: String,
    q: String,
    after: Option<String>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        let mut out = Self::default();
        for (k, v) in parse_form(raw.unwrap_or_default().as_bytes()) {
            let v = v.trim().to_string();
            match k.as_str() {
                "status" => out.status = v,
                "tier" => out.tier = v,
                "model" => out.model = v,
                "since" => out.since = v,
                "cost_above" => out.cost_above = v,
                "q" => out.q = v,
                "after" if !v.is_empty() => out.after = Some(v),
                _ => {}
            }
        }
        out
    }

    fn filter(&self) -> Result<JobFilter, Failure> {
        let some = |s: &String| (!s.is_empty()).then(|| s.clone());
        let bad = |m: String| Failure::new(StatusCode::BAD_REQUEST, m);
        Ok(JobFilter {
            status: some(&self.status),
            tier: some(&self.tier),
            model: some(&self.model),
            since_ms: some(&self.since)
                .map(|s| crate::commands::parse_since(&s).map(|t| t.timestamp_millis()))
                .transpose()
                .map_err(|e| bad(format!("{e:#}")))?,
            cost_above: some(&self.cost_above)
                .map(|c| c.parse::<f64>())
                .transpose()
                .map_err(|_| bad(format!("cost above {:?} is not a number", self.cost_above)))?,
            search: some(&self.q),
        })
    }

    /// The query string of these filters (no cursor).
    fn filters_query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("status", &self.status),
            ("tier", &self.tier),
            ("model", &self.model),
            ("since", &self.since),
            ("cost_above", &self.cost_above),
            ("q", &self.q),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

pub(super) async fn list(State(console): State<Console>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let user = match console.require(&headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let query = Query::parse(raw.as_deref());
    let filter = match query.filter() {
        Ok(f) => f,
        Err(f) => return f.into_response(),
    };
    let page = match console.0.index.list(&filter, PAGE, query.after.as_deref()).await {
        Ok(p) => p,
        Err(e) => return Failure::from(e).into_response(),
    };
    let filters = query.filters_query();
    let select = |name: &str, current: &str, options: &[&str]| {
        html! {
            select name=(name) {
                option value="" { "any" }
                @for o in options { option value=(o) selected[current == *o] { (o) } }
            }
        }
    };
    let body = html! {
        h1 { "Jobs" }
        form #filters method="get" action="/jobs" {
            label { "Status" (select("status", &query.status, &STATUSES)) }
            label { "Tier" (select("tier", &query.tier, &TIERS)) }
            label { "Model" input type="text" name="model" value=(query.model) placeholder="gemini-2.5-flash"; }
            label { "Since" input type="text" name="since" value=(query.since) placeholder="1h, 2d or RFC 3339"; }
            label { "Cost above (USD)" input type="text" name="cost_above" value=(query.cost_above) inputmode="decimal"; }
            label { "Source key contains" input type="search" name="q" value=(query.q); }
            button type="submit" { "Filter" }
            a href="/jobs" { "Clear" }
        }
        table #jobs {
            thead { tr {
                th { "Job" } th { "Status" } th { "Kind" } th { "Tier" } th { "Model" } th { "Source" }
                th.num { "Cost" } th { "Created (UTC)" } th { "Error" }
            } }
            @if query.after.is_none() {
                tbody #job-rows data-refresh={ "/jobs/rows?" (filters) } { (rows_markup(&page.jobs)) }
            } @else {
                tbody #job-rows { (rows_markup(&page.jobs)) }
            }
        }
        p.actions {
            @if query.after.is_some() { a href={ "/jobs?" (filters) } { "First page" } }
            @if let Some(next) = &page.next {
                a #next href={ "/jobs?" (filters) (if filters.is_empty() { "" } else { "&" }) "after=" (next) } { "Next page" }
            }
        }
        @if query.after.is_none() { p.note { "The first page updates itself every 5 s." } }
    };
    layout::page("Jobs", Some(&user), body).into_response()
}

/// The rows of the listing's first page, for the live update.
pub(super) async fn rows(State(console): State<Console>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    if console.user(&headers).is_none() {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    }
    let query = Query::parse(raw.as_deref());
    let filter = match query.filter() {
        Ok(f) => f,
        Err(f) => return f.into_response(),
    };
    match console.0.index.list(&filter, PAGE, None).await {
        Ok(page) => Html(rows_markup(&page.jobs).into_string()).into_response(),
        Err(e) => Failure::from(e).into_response(),
    }
}

fn rows_markup(jobs: &[JobRow]) -> Markup {
    html! {
        @for j in jobs {
            tr data-job=(j.job_id) {
                td { a href={ "/jobs/" (j.job_id) } { code { (short(&j.job_id)) } } }
                td class={ "status-" (j.status) } { (j.status) }
                td { (j.kind.as_deref().unwrap_or("-")) }
                td { (j.tier.as_deref().unwrap_or("-")) }
                td { (j.model.as_deref().unwrap_or("-")) }
                td { (j.key.as_deref().unwrap_or("-")) }
                td.num { (layout::usd(j.cost_usd)) }
                td { (layout::when(j.created_ms)) }
                td { @if let Some(code) = &j.error_code { (j.error_stage.as_deref().unwrap_or("")) ": " (code) } }
            }
        }
        @if jobs.is_empty() { tr { td colspan="9" .note { "No job matches." } } }
    }
}

pub(super) fn short(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(end, _)| &id[..end])
}

/// A job id as the fleet makes them (and nothing that could be a path).
pub(super) fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The `/media/...` URL of an output key of `job`.
fn media_url(job: &str, key: &str) -> Option<String> {
    key.strip_prefix(&format!("jobs/{job}/")).map(|rest| format!("/media/{job}/{rest}"))
}

pub(super) async fn job(State(console): State<Console>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let user = match console.require(&headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if !valid_job_id(&id) {
        return Failure::new(StatusCode::NOT_FOUND, "No such job.").into_response();
    }
    let row = match console.0.index.job(&id).await {
        Ok(r) => r,
        Err(e) => return Failure::from(e).into_response(),
    };
    let manifest = match console.0.manifests.load(&id).await {
        Ok(m) => m,
        Err(e) => return Failure::from(anyhow::Error::from(e)).into_response(),
    };
    if row.is_none() && manifest.is_none() {
        return Failure::new(StatusCode::NOT_FOUND, format!("No job {id} in the index or the work bucket."))
            .into_response();
    }
    let events = match console.0.index.events(&id).await {
        Ok(e) => e,
        Err(e) => return Failure::from(e).into_response(),
    };
    let settings = console.settings();
    let body = html! {
        h1 { "Job " code { (id) } }
        (facts(row.as_ref(), manifest.as_ref()))
        @if let Some(m) = &manifest {
            (media(m))
            h2 { "Stage timeline" }
            (timeline(m))
            (quality(m))
            h2 { "Charges" }
            (charges(m))
            h2 { "Route" }
            pre #route { (crate::ops::explain_route(settings, m)) }
        } @else {
            p.note { "No manifest in the work bucket (yet): outputs, timeline and charges show once it exists." }
            table #charges { tbody {} }
            svg #timeline width="0" height="0" {}
        }
        h2 { "Events" }
        table #events {
            thead { tr { th { "At (UTC)" } th { "Event" } th { "Stage" } th { "By" } th { "Details" } } }
            tbody { @for e in &events {
                tr data-event=(e.kind) {
                    td { (layout::when(e.at_ms)) }
                    td { (e.kind) }
                    td { (e.stage.as_deref().unwrap_or("")) }
                    td { (e.body.get("by").and_then(|b| b.as_str()).unwrap_or("")) }
                    td { (event_details(&e.body)) }
                }
            } }
        }
    };
    layout::page(&format!("Job {}", short(&id)), Some(&user), body).into_response()
}

fn event_details(body: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    if let Some(ms) = body.get("duration_ms").and_then(|v| v.as_u64()) {
        parts.push(format!("{ms} ms"));
    }
    if let Some(model) = body.get("model").and_then(|v| v.as_str()) {
        parts.push(model.to_string());
    }
    if let Some(c) = body.get("cost_usd").and_then(|v| v.as_f64()) {
        parts.push(layout::usd(c));
    }
    if let Some(e) = body.get("error") {
        let code = e.get("code").and_then(|v| v.as_str()).unwrap_or_default();
        let msg = e.get("message").and_then(|v| v.as_str()).unwrap_or_default();
        parts.push(format!("{code}: {}", msg.chars().take(200).collect::<String>()));
    }
    if let Some(d) = body.get("dead_letter").and_then(|v| v.as_str()) {
        parts.push(format!("dead letter {d}"));
    }
    parts.join(" · ")
}

fn facts(row: Option<&JobRow>, m: Option<&JobManifest>) -> Markup {
    let status = m.map(|m| m.status.to_string()).or(row.map(|r| r.status.clone())).unwrap_or_default();
    let source = m
        .map(|m| format!("s3://{}/{}", m.source.bucket, m.source.key))
        .or(row.map(|r| format!("s3://{}/{}", r.bucket.as_deref().unwrap_or("?"), r.key.as_deref().unwrap_or("?"))));
    let cost = m.map(JobManifest::cost_usd).or(row.map(|r| r.cost_usd)).unwrap_or(0.0);
    let error = m
        .and_then(|m| m.error.as_ref())
        .map(|e| format!("{} {} {}: {}", e.stage, e.class, e.code, e.message))
        .or(row.and_then(|r| r.error_message.clone()));
    html! {
        dl.facts {
            dt { "Status" } dd class={ "status-" (status) } { (status) }
            dt { "Kind" } dd { (m.map(|m| m.kind.to_string()).or(row.and_then(|r| r.kind.clone())).unwrap_or_default()) }
            dt { "Source" } dd { code { (source.unwrap_or_default()) } }
            dt { "Tier" } dd { (m.and_then(|m| m.tier).map(|t| t.as_str().to_string()).or(row.and_then(|r| r.tier.clone())).unwrap_or("-".into())) }
            dt { "Model" } dd { (m.and_then(|m| m.inference.as_ref()).map(|i| i.model.clone()).or(row.and_then(|r| r.model.clone())).unwrap_or("-".into())) }
            dt { "Cost" } dd { (layout::usd(cost)) }
            @if let Some(m) = m { dt { "Created (UTC)" } dd { (m.created_at.format("%Y-%m-%d %H:%M:%S")) } }
            @if let Some(e) = error { dt { "Error" } dd.error { (e) } }
            @if let Some(s) = m.and_then(|m| m.inference.as_ref()).and_then(|i| i.summary.as_ref()) { dt { "Summary" } dd { (s) } }
        }
    }
}

fn media(m: &JobManifest) -> Markup {
    let url = |name: &str| m.outputs.iter().find(|o| o.name == name).and_then(|o| media_url(&m.job_id, &o.key));
    let rendition = m
        .outputs
        .iter()
        .find(|o| o.codec == "h264" && o.content_type == "video/mp4")
        .and_then(|o| media_url(&m.job_id, &o.key).map(|u| (u, o.name.clone())));
    html! {
        @if !m.outputs.is_empty() {
            h2 { "Media" }
            div.media {
                @if let Some(u) = url("poster") { figure { img #poster src=(u) alt="Poster"; figcaption { "Poster" } } }
                @if let Some(u) = url("sprite") { figure { img #sprite src=(u) alt="Sprite sheet"; figcaption { "Sprite" } } }
                @if let Some((u, name)) = rendition {
                    figure { video #rendition controls muted preload="metadata" src=(u) {} figcaption { (name) } }
                }
            }
        }
    }
}

fn quality(m: &JobManifest) -> Markup {
    let f = |v: Option<f64>, d: usize| v.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "-".into());
    html! {
        @if !m.outputs.is_empty() {
            h2 { "Outputs and quality" }
            table #outputs {
                thead { tr { th { "Output" } th { "Codec" } th.num { "Size" } th.num { "Bytes" } th.num { "PSNR dB" } th.num { "SSIM" } th.num { "VMAF" } } }
                tbody { @for o in &m.outputs {
                    tr data-output=(o.name) {
                        td { @match media_url(&m.job_id, &o.key) { Some(u) => a href=(u) { (o.name) }, None => (o.name) } }
                        td { (o.codec) }
                        td.num { (o.width) "×" (o.height) }
                        td.num { (o.size_bytes) }
                        td.num { (f(o.psnr_db, 2)) }
                        td.num { (f(o.ssim, 4)) }
                        td.num { (f(o.vmaf, 1)) }
                    }
                } }
            }
            @if let Some(q) = &m.quality_check {
                p { "Quality gate: " strong { (if q.passed { "passed" } else { "failed" }) }
                    " (floors: PSNR " (q.min_psnr_db) " dB, SSIM " (q.min_ssim) (if q.vmaf_measured { "; VMAF measured" } else { "" }) ")" }
            }
        }
    }
}

fn charges(m: &JobManifest) -> Markup {
    html! {
        table #charges {
            thead { tr { th { "Model" } th { "Provider request" } th.num { "Jobs in request" } th.num { "Input tokens" } th.num { "Output tokens" } th.num { "USD" } th { "Answer" } } }
            tbody {
                @for c in &m.charges {
                    tr {
                        td { (c.model) }
                        td { code { (c.request_id.as_deref().unwrap_or("-")) } }
                        td.num { (c.jobs_in_request) }
                        td.num { (c.input_tokens) }
                        td.num { (c.output_tokens) }
                        td.num { (format!("{:.6}", c.usd)) }
                        td { (if c.answered { "used" } else { "unusable, asked again" }) }
                    }
                }
                @if m.charges.is_empty() { tr { td colspan="7" .note { "No charge." } } }
            }
        }
    }
}

/// The stages as horizontal bars over the job's life, drawn on the server.
fn timeline(m: &JobManifest) -> Markup {
    let mut stages: Vec<_> = m.stages.iter().collect();
    stages.sort_by_key(|(_, t)| t.started_at);
    let (Some(first), Some(last)) =
        (stages.iter().map(|(_, t)| t.started_at).min(), stages.iter().map(|(_, t)| t.finished_at).max())
    else {
        return html! { svg #timeline width="600" height="24" { text x="8" y="16" { "No stage has finished yet." } } };
    };
    let span_ms = ((last - first).num_milliseconds()).max(1) as f64;
    let (label_w, chart_w, row_h) = (110.0, 560.0, 24.0);
    let height = row_h * stages.len() as f64 + 20.0;
    let mut svg = String::new();
    for (i, (name, t)) in stages.iter().enumerate() {
        let x = label_w + (t.started_at - first).num_milliseconds() as f64 / span_ms * chart_w;
        let w = ((t.finished_at - t.started_at).num_milliseconds() as f64 / span_ms * chart_w).max(2.0);
        let y = i as f64 * row_h + 4.0;
        svg.push_str(&format!(
            r#"<text x="4" y="{ty:.0}">{label}</text><rect class="bar {class}" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.0}"><title>{label}: {ms} ms</title></rect><text x="{tx:.1}" y="{ty:.0}">{ms} ms</text>"#,
            ty = y + 13.0,
            label = html_escape(name),
            class = html_escape(name),
            h = row_h - 8.0,
            ms = t.duration_ms,
            tx = (x + w + 4.0).min(label_w + chart_w - 40.0),
        ));
    }
    let total = (last - first).num_milliseconds();
    let axis_y = height - 4.0;
    svg.push_str(&format!(
        r#"<text x="{label_w}" y="{axis_y:.0}">0</text><text x="{end:.0}" y="{axis_y:.0}">{total} ms</text>"#,
        end = label_w + chart_w - 50.0
    ));
    html! {
        svg #timeline xmlns="http://www.w3.org/2000/svg" width=(label_w + chart_w + 60.0) height=(height) role="img" aria-label="Stage timeline" {
            (PreEscaped(svg))
        }
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::new();
    let _ = std::fmt::Write::write_str(&mut maud::Escaper::new(&mut out), s);
    out
}
