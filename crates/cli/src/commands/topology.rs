//! `reelfleet topology`: declare the namespace's queues and exchanges on the
//! broker, or print their names without one.

use anyhow::Context;
use reelfleet_core::{
    broker::Broker,
    settings::Settings,
    topology::{step_label, Topology, WorkQueue},
};

/// Arguments of `reelfleet topology`.
#[derive(clap::Args, Debug)]
pub struct TopologyArgs {
    #[command(subcommand)]
    action: TopologyAction,
}

/// The `reelfleet topology` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TopologyAction {
    /// Declare every queue and exchange of the namespace (idempotent).
    Declare,
    /// Print the names of every queue and exchange (no broker needed).
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `declare` or `show`.
pub async fn run(settings: Settings, args: TopologyArgs) -> anyhow::Result<i32> {
    let topology = Topology::from_settings(&settings);
    match args.action {
        TopologyAction::Declare => {
            let broker = Broker::new(&settings.broker, "reelfleet-cli")?;
            broker.declare(&topology).await.context("cannot declare the topology")?;
            println!(
                "declared {} queues and exchanges {}",
                topology.all_queue_names().len(),
                topology.exchange_names().join(", ")
            );
        }
        TopologyAction::Show { json } => show(&topology, json)?,
    }
    Ok(0)
}

fn show(topology: &Topology, json: bool) -> anyhow::Result<()> {
    let queues: Vec<serde_json::Value> = WorkQueue::all()
        .into_iter()
        .map(|q| {
            serde_json::json!({
                "queue": topology.queue(q),
                "stage": q.stage(),
                "tier": match q { WorkQueue::Inference(t) => Some(t.to_string()), _ => None },
                "retry": topology.retry_queues(q),
                "deferred": topology.deferred_queue(q),
                "broker_dead_letter": topology.broker_dead_letter_queue(q),
                "dead_letter": topology.dead_letter_queue(q),
            })
        })
        .collect();
    if json {
        let doc = serde_json::json!({
            "namespace": topology.namespace(),
            "work_queues": queues,
            "events_exchange": topology.events_exchange(),
            "uploads_exchange": topology.uploads_exchange(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let steps: Vec<String> = topology.retry_steps().iter().map(|s| step_label(*s)).collect();
    println!("{:<34} {:<12} {:<9} QUEUES BESIDE IT (W = the work queue)", "WORK QUEUE (W)", "STAGE", "TIER");
    for q in queues {
        println!(
            "{:<34} {:<12} {:<9} W.retry.{{{}}}, W.deferred, W.dlx, W.dlq",
            q["queue"].as_str().unwrap_or(""),
            q["stage"].as_str().unwrap_or(""),
            q["tier"].as_str().unwrap_or("-"),
            steps.join(",")
        );
    }
    println!("retry queues: one per delay step, each with that TTL back into W");
    println!(
        "W.deferred: budget pauses; W.dlx: the broker's dead letters (delivery limit), moved to W.dlq by the worker"
    );
    println!("events exchange: {}", topology.events_exchange());
    println!("uploads exchange (bucket notifications -> ingest): {}", topology.uploads_exchange());
    Ok(())
}
