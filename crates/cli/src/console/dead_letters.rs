//! `/dead-letters`: the namespace's dead letters (read without removing
//! them), filtered by stage and error class; one shown with its headers and
//! body; a selection replayed or purged by an operator, a dry run first
//! (what would happen, and a confirm button), then the confirmed action.
//! Each action is audited: a log line (target `audit`) and an event in the
//! job's events (`job.replayed`, `job.purged`, with who did it).

use super::{auth::User, field, layout, layout::Failure, parse_form, Console};
use crate::dlq::{self, DeadLetter, DlqFilter};
use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use maud::{html, Markup};
use tracing::info;

const STAGES: [&str; 7] = ["ingest", "preprocess", "inference", "postprocess", "pull", "webhooks", "index"];
const CLASSES: [&str; 3] = ["transient", "permanent", "broker"];
/// The most dead letters one page lists.
const LIMIT: usize = 500;

/// Reads the dead letters matching `filter` and puts them back.
async fn read(console: &Console, filter: &DlqFilter) -> anyhow::Result<Vec<DeadLetter>> {
    let _turn = console.0.dead_letters.lock().await;
    read_in_turn(console, filter).await
}

/// [`read`] by a caller that holds the console's turn on the dead-letter
/// queues: a letter held unacked by one page view is invisible to the
/// others, so this console's reads and actions go one at a time (an
/// operator's replay never misses a letter a viewer's page is reading).
async fn read_in_turn(console: &Console, filter: &DlqFilter) -> anyhow::Result<Vec<DeadLetter>> {
    let held = dlq::fetch(console.settings(), &console.0.broker, filter).await?;
    let letters = held.letters().cloned().collect();
    held.release().await;
    Ok(letters)
}

pub(super) async fn list(State(console): State<Console>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let user = match console.require(&headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let query = parse_form(raw.unwrap_or_default().as_bytes());
    let pick = |name: &str| field(&query, name).filter(|v| !v.is_empty()).map(str::to_string);
    let filter =
        DlqFilter { stage: pick("stage"), error_class: pick("class"), limit: Some(LIMIT), ..Default::default() };
    let letters = match read(&console, &filter).await {
        Ok(l) => l,
        Err(e) => return Failure::from(e).into_response(),
    };
    let select = |name: &str, current: Option<&str>, options: &[&str]| {
        html! {
            select name=(name) {
                option value="" { "any" }
                @for o in options { option value=(o) selected[current == Some(*o)] { (o) } }
            }
        }
    };
    let body = html! {
        h1 { "Dead letters" }
        form.inline #dl-filters method="get" action="/dead-letters" {
            label { "Stage" (select("stage", filter.stage.as_deref(), &STAGES)) }
            label { "Error class" (select("class", filter.error_class.as_deref(), &CLASSES)) }
            button type="submit" { "Filter" }
        }
        form #dl-form method="post" action="/dead-letters" {
            input type="hidden" name="csrf" value=(user.csrf);
            (table(&letters, true))
            @if user.operator() && !letters.is_empty() {
                div.actions {
                    button #replay type="submit" name="action" value="replay" { "Replay selected…" }
                    button #purge type="submit" name="action" value="purge" { "Purge selected…" }
                }
                p.note { "Both show a dry run first; nothing happens until you confirm." }
            }
        }
        @if letters.len() >= LIMIT { p.note { "Only the first " (LIMIT) " are listed: filter to see others." } }
    };
    layout::page("Dead letters", Some(&user), body).into_response()
}

fn table(letters: &[DeadLetter], selectable: bool) -> Markup {
    html! {
        table #dead-letters {
            thead { tr {
                @if selectable { th { input #select-all type="checkbox" aria-label="Select all"; } }
                th { "Dead letter" } th { "Job" } th { "Stage" } th { "Class" } th { "Code" } th { "Reason" }
                th.num { "Attempts" } th { "Dead-lettered" }
            } }
            tbody {
                @for d in letters {
                    tr data-job=(d.job.as_deref().unwrap_or("")) data-id=(d.id) {
                        @if selectable { td { input type="checkbox" name="select" value=(d.id); } }
                        td { a href={ "/dead-letters/" (d.id) } { code { (super::jobs::short(&d.id)) } } }
                        td { @if let Some(j) = &d.job { a href={ "/jobs/" (j) } { code { (super::jobs::short(j)) } } } }
                        td { (d.stage) }
                        td { (d.error_class) }
                        td { (d.error_code) }
                        td { (d.error_message.chars().take(300).collect::<String>()) }
                        td.num { (d.attempts) }
                        td { (d.last_failure.as_deref().unwrap_or("-")) }
                    }
                }
                @if letters.is_empty() { tr { td colspan="9" .note { "No dead letter." } } }
            }
        }
    }
}

pub(super) async fn show(State(console): State<Console>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let user = match console.require(&headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let filter = DlqFilter { ids: Some(vec![id.clone()]), ..Default::default() };
    let letter = match read(&console, &filter).await {
        Ok(l) => l.into_iter().next(),
        Err(e) => return Failure::from(e).into_response(),
    };
    let Some(d) = letter else {
        return Failure::new(StatusCode::NOT_FOUND, format!("No dead letter {id} (replayed or purged already?)"))
            .into_response();
    };
    let body_text = match serde_json::from_slice::<serde_json::Value>(&d.body) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&d.body[..d.body.len().min(64 * 1024)]).into_owned(),
    };
    let body = html! {
        h1 { "Dead letter " code { (d.id) } }
        form #dl-form method="post" action="/dead-letters" {
            input type="hidden" name="csrf" value=(user.csrf);
            input type="hidden" name="select" value=(d.id);
            (table(std::slice::from_ref(&d), false))
            @if user.operator() {
                div.actions {
                    button #replay type="submit" name="action" value="replay" { "Replay…" }
                    button #purge type="submit" name="action" value="purge" { "Purge…" }
                }
            }
        }
        h2 { "Headers" }
        table #headers { tbody { @for (k, v) in &d.headers {
            tr { td { code { (k) } } td { code { (match v { dlq::HeaderText::Int(i) => i.to_string(), dlq::HeaderText::Text(t) => t.clone() }) } } }
        } } }
        h2 { "Body (" (d.body.len()) " bytes)" }
        pre #body { (body_text) }
    };
    layout::page("Dead letter", Some(&user), body).into_response()
}

/// The POST of the list's or a letter's form: a dry run, or with
/// `confirm=yes`, the replay or purge itself. Operators only.
pub(super) async fn act(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let user = match console.require_post(&headers, &form) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if !user.operator() {
        info!(target: "audit", user = %user.name, role = user.role.as_str(), action = "refused", "A viewer asked to change dead letters");
        return Failure::new(StatusCode::FORBIDDEN, "Only operators replay or purge dead letters.").into_response();
    }
    let action = match field(&form, "action") {
        Some("replay") => "replay",
        Some("purge") => "purge",
        _ => return Failure::new(StatusCode::BAD_REQUEST, "Say replay or purge.").into_response(),
    };
    let ids: Vec<String> = form.iter().filter(|(k, _)| k == "select").map(|(_, v)| v.clone()).collect();
    if ids.is_empty() {
        return Failure::new(StatusCode::BAD_REQUEST, "Select at least one dead letter.").into_response();
    }
    let filter = DlqFilter { ids: Some(ids.clone()), ..Default::default() };
    if field(&form, "confirm") == Some("yes") {
        confirmed(&console, &user, action, &filter, &ids).await
    } else {
        dry_run(&console, &user, action, &filter, &ids).await
    }
}

fn jobs_of(letters: &[DeadLetter]) -> Vec<String> {
    letters.iter().filter_map(|d| d.job.clone()).collect()
}

async fn dry_run(console: &Console, user: &User, action: &str, filter: &DlqFilter, ids: &[String]) -> Response {
    let letters = match read(console, filter).await {
        Ok(l) => l,
        Err(e) => return Failure::from(e).into_response(),
    };
    info!(target: "audit", user = %user.name, role = user.role.as_str(), action, jobs = ?jobs_of(&letters), dead_letters = ?ids, dry_run = true, "Dead-letter action previewed");
    let gone: Vec<&String> = ids.iter().filter(|id| !letters.iter().any(|d| &d.id == *id)).collect();
    let what = if action == "replay" {
        "Each is published again to the work queue it came from (signed anew, attempts reset; a message whose signature is not the fleet's is refused) and its job goes back to that stage. Its dead letter is removed once the broker confirms."
    } else {
        "Each is dropped from its dead-letter queue for good (export it first with `reelfleet dlq export` to keep a copy). The job stays failed."
    };
    let body = html! {
        h1 { "Dry run: " (action) " " (letters.len()) " dead letter(s)" }
        p { (what) }
        (table(&letters, false))
        @if !gone.is_empty() { p.note { (gone.len()) " selected dead letter(s) are no longer there (replayed or purged already)." } }
        @if letters.is_empty() {
            p { a href="/dead-letters" { "Back to the dead letters" } }
        } @else {
            form #confirm-form method="post" action="/dead-letters" {
                input type="hidden" name="csrf" value=(user.csrf);
                input type="hidden" name="action" value=(action);
                input type="hidden" name="confirm" value="yes";
                @for d in &letters { input type="hidden" name="select" value=(d.id); }
                div.actions {
                    button #confirm type="submit" class=[(action == "purge").then_some("danger")] { "Confirm: " (action) " " (letters.len()) }
                    a href="/dead-letters" { "Cancel" }
                }
            }
        }
    };
    layout::page("Dry run", Some(user), body).into_response()
}

async fn confirmed(console: &Console, user: &User, action: &str, filter: &DlqFilter, ids: &[String]) -> Response {
    let by = user.by();
    let _turn = console.0.dead_letters.lock().await;
    // The jobs are read for the audit line; the action itself re-reads what it acts on.
    let jobs = read_in_turn(console, filter).await.map(|l| jobs_of(&l)).unwrap_or_default();
    let outcome = if action == "replay" {
        dlq::replay_by(console.settings(), filter, None, false, Some(&by)).await.map(|r| (r.ids, r.refused))
    } else {
        dlq::purge_by(console.settings(), filter, Some(&by)).await.map(|ids| (ids, Vec::new()))
    };
    let (done, refused) = match outcome {
        Ok(o) => o,
        Err(e) => {
            info!(target: "audit", user = %user.name, role = user.role.as_str(), action, jobs = ?jobs, dead_letters = ?ids, dry_run = false, outcome = "error", error = %format!("{e:#}"), "Dead-letter action failed");
            return Failure::from(e).into_response();
        }
    };
    info!(target: "audit", user = %user.name, role = user.role.as_str(), action, jobs = ?jobs, dead_letters = ?done, refused = refused.len(), dry_run = false, "Dead letters changed");
    let body = html! {
        h1 { (if action == "replay" { "Replayed " } else { "Purged " }) (done.len()) " dead letter(s)" }
        ul #done { @for id in &done { li { code { (id) } } } }
        @if !refused.is_empty() {
            h2 { "Refused" }
            ul #refused { @for (id, why) in &refused { li { code { (id) } ": " (why) } } }
        }
        @if !jobs.is_empty() {
            h2 { "Jobs" }
            ul { @for j in &jobs { li { a href={ "/jobs/" (j) } { code { (j) } } } } }
        }
        p { a href="/dead-letters" { "Back to the dead letters" } }
    };
    layout::page("Done", Some(user), body).into_response()
}
