//! `reelfleet scale`: per worker of the Helm chart, its queue depth and the
//! replicas KEDA would run with the chart's values (the work is in
//! [`crate::scale`]).

use crate::scale::{self, ChartScaling};
use reelfleet_core::settings::Settings;
use std::path::PathBuf;

/// Arguments of `reelfleet scale`.
#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// Helm values file to apply over the chart's defaults (as `helm install -f`).
    #[arg(long)]
    values: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Prints the plan as a table or JSON.
pub async fn run(settings: Settings, args: ScaleArgs) -> anyhow::Result<i32> {
    let chart = ChartScaling::load(args.values.as_deref())?;
    if chart.namespace != settings.namespace {
        eprintln!(
            "note: the values name queue namespace {:?}; reading the settings' namespace {:?}",
            chart.namespace, settings.namespace
        );
    }
    let rows = scale::plan(&settings, &chart).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", scale::render_table(&rows));
    }
    Ok(0)
}
