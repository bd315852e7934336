//! `/`: per work queue its depth, consumers, rates and the replicas KEDA
//! would ask for with the chart's values; jobs per status over the last
//! hour (the index); each tier's spend today against its budget (the fleet's
//! state database).

use super::{layout, Console};
use crate::{ops, scale};
use axum::{
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use maud::{html, Markup};
use reelfleet_core::{envelope::Tier, topology::Topology, topology::WorkQueue};
use std::time::Instant;

/// One queue's line.
struct QueueLine {
    name: String,
    stats: ops::QueueStats,
    /// Depth change per second since the previous look, when the management API gives no rates.
    sampled: Option<f64>,
    /// `(chart worker, replicas)`: what KEDA would run for it.
    replicas: Option<(String, u32)>,
}

pub(super) async fn page(State(console): State<Console>, headers: HeaderMap) -> Response {
    let user = match console.require(&headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let settings = console.settings();
    let topology = Topology::from_settings(settings);
    let names: Vec<String> = WorkQueue::all().into_iter().map(|q| topology.queue(q)).collect();
    let queues = match ops::queue_stats(settings, &names).await {
        Ok(stats) => Ok(lines(&console, &topology, stats)),
        Err(e) => Err(format!("{e:#}")),
    };
    let hour_ago = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let statuses = console.0.index.count_by_status(hour_ago).await.map_err(|e| e.to_string());
    let mut tiers = Vec::new();
    for tier in Tier::ALL {
        let spend = reelfleet_inference::budget::spend_today(&console.0.state, tier).await;
        tiers.push((tier, spend.map_err(|e| e.to_string())));
    }
    let body = html! {
        h1 { "Overview" }
        h2 { "Queues" }
        (queue_table(&queues))
        h2 { "Jobs created in the last hour, by status" }
        @match &statuses {
            Err(e) => p.error { "The job index did not answer: " (e) }
            Ok(counts) if counts.is_empty() => p.note { "No job was created in the last hour." }
            Ok(counts) => table #statuses {
                thead { tr { th { "Status" } th.num { "Jobs" } } }
                tbody { @for (status, n) in counts {
                    tr data-status=(status) {
                        td { a href={ "/jobs?status=" (status) "&since=1h" } { (status) } }
                        td.num { (n) }
                    }
                } }
            }
        }
        h2 { "Cost per tier today (UTC)" }
        table #costs {
            thead { tr { th { "Tier" } th { "Model" } th.num { "Spent" } th.num { "Reserved" } th.num { "Daily budget" } th.num { "Used" } } }
            tbody { @for (tier, spend) in &tiers {
                @let ts = settings.inference.tier(*tier);
                tr data-tier=(tier.as_str()) {
                    td { (tier.as_str()) }
                    td { (ts.model) }
                    @match spend {
                        Err(e) => td.error colspan="4" { (e) }
                        Ok(s) => {
                            td.num { (layout::usd(s.spent_usd)) }
                            td.num { (layout::usd(s.reserved_usd)) }
                            @match ts.daily_budget_usd {
                                Some(b) => {
                                    td.num { (layout::usd(b)) }
                                    @let used = if b > 0.0 { s.committed() / b * 100.0 } else { 100.0 };
                                    td.num class=[(used >= 100.0).then_some("over")] { (format!("{used:.0}%")) }
                                }
                                None => { td.num { "none" } td.num { "-" } }
                            }
                        }
                    }
                }
            } }
        }
    };
    layout::page("Overview", Some(&user), body).into_response()
}

fn lines(console: &Console, topology: &Topology, stats: Vec<ops::QueueStats>) -> Vec<QueueLine> {
    let now = Instant::now();
    let mut samples = console.0.samples.lock().unwrap_or_else(|p| p.into_inner());
    stats
        .into_iter()
        .map(|s| {
            let depth = s.depth();
            let sampled = if s.publish_rate.is_none() {
                let previous = samples.insert(s.name.clone(), (now, depth));
                previous.and_then(|(at, d)| {
                    let secs = now.duration_since(at).as_secs_f64();
                    (1.0..600.0).contains(&secs).then(|| (depth as f64 - d as f64) / secs)
                })
            } else {
                None
            };
            let replicas = console.0.chart.workers.iter().filter(|(_, w)| w.enabled).find_map(|(name, w)| {
                let q = scale::work_queue(name, w).ok()?;
                (topology.queue(q) == s.name).then(|| (name.clone(), scale::desired_replicas(depth, w).1))
            });
            QueueLine { name: s.name.clone(), stats: s, sampled, replicas }
        })
        .collect()
}

fn rate(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}/s")).unwrap_or_else(|| "-".into())
}

fn queue_table(queues: &Result<Vec<QueueLine>, String>) -> Markup {
    let lines = match queues {
        Err(e) => return html! { p.error { "RabbitMQ did not answer: " (e) } },
        Ok(l) => l,
    };
    let management = lines.iter().any(|l| l.stats.source == "management");
    html! {
        table #queues {
            thead { tr {
                th { "Queue" } th.num { "Ready" } th.num { "Unacked" } th.num { "Depth" } th.num { "Consumers" }
                @if management { th.num { "Published" } th.num { "Acked" } } @else { th.num { "Depth change" } }
                th { "Chart worker" } th.num { "KEDA replicas" }
            } }
            tbody { @for l in lines {
                tr data-queue=(l.name) {
                    td { code { (l.name) } }
                    td.num { (l.stats.ready) }
                    td.num { (l.stats.unacked.map(|u| u.to_string()).unwrap_or_else(|| "-".into())) }
                    td.num { (l.stats.depth()) }
                    td.num { (l.stats.consumers) }
                    @if management { td.num { (rate(l.stats.publish_rate)) } td.num { (rate(l.stats.ack_rate)) } }
                    @else { td.num { (rate(l.sampled)) } }
                    @match &l.replicas {
                        Some((worker, n)) => { td { (worker) } td.num { (n) } }
                        None => { td.note { "not in the chart" } td.num { "-" } }
                    }
                }
            } }
        }
        @if management {
            p.note { "Counts and rates from RabbitMQ's management API. Replicas: the chart's KEDA trigger (ready + unacked over queueLength, clamped to its min and max)." }
        } @else {
            p.note { "The management API did not answer (broker.management_url): ready counts come from passive declares, unacked counts and publish/ack rates are unknown. \"Depth change\" is the change in depth per second between this page load and the previous one, not a throughput. Replicas are computed from the ready count alone." }
        }
    }
}
