//! `reelfleet queues`: ready, unacked, consumers and recent rates per queue
//! of the namespace.

use crate::ops;
use reelfleet_core::settings::Settings;

/// Arguments of `reelfleet queues`.
#[derive(clap::Args, Debug)]
pub struct QueuesArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Prints one row per queue.
pub async fn run(settings: Settings, args: QueuesArgs) -> anyhow::Result<i32> {
    let stats = ops::queues(&settings).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(0);
    }
    let rate = |r: Option<f64>| r.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into());
    println!("{:<40} {:>8} {:>8} {:>9} {:>8} {:>8}", "QUEUE", "READY", "UNACKED", "CONSUMERS", "IN/S", "OUT/S");
    for q in &stats {
        let unacked = q.unacked.map(|u| u.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<40} {:>8} {:>8} {:>9} {:>8} {:>8}",
            q.name,
            q.ready,
            unacked,
            q.consumers,
            rate(q.publish_rate),
            rate(q.ack_rate)
        );
    }
    if stats.iter().any(|q| q.source == "passive-declare") {
        println!("note: the management API did not answer: unacked counts and rates are unknown");
    }
    Ok(0)
}
