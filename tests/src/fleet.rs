//! What [`crate::TestStack`], the benchmarks and the fault suite share to
//! start and remove fleets: the dev stack in this process, the `reelfleet`
//! binary for fleets of processes, free ports, a namespace's queues deleted.

use anyhow::{bail, Context};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use reelfleet_cli::{
    dev::{DevOptions, DevStack},
    fleet::StageName,
};
use reelfleet_core::{broker::Broker, settings::Settings, topology::Topology};
use std::path::{Path, PathBuf};

/// `reelfleet dev` in this process running `stages`: S3 endpoint, provider
/// simulator and health server on free ports, data in `dir/data`, scratch
/// files in `dir/scratch`.
pub async fn start_dev(mut settings: Settings, dir: &Path, stages: &[StageName]) -> anyhow::Result<DevStack> {
    settings.runtime.health_addr = "127.0.0.1:0".into();
    settings.runtime.scratch_dir = Some(dir.join("scratch").display().to_string());
    let options = DevOptions {
        data_dir: dir.join("data"),
        namespace: None,
        s3_port: 0,
        sim_port: 0,
        stages: stages.to_vec(),
        console: false,
    };
    DevStack::start(settings, options).await
}

/// A TCP port free on 127.0.0.1 at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The `reelfleet` binary built beside the running one (same profile).
pub fn reelfleet_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe dir")?;
    // A test binary runs from `<profile>/deps`.
    if dir.ends_with("deps") {
        dir = dir.parent().context("profile dir")?;
    }
    let bin = dir.join("reelfleet");
    if !bin.exists() {
        bail!(
            "{} not built: run `cargo build -p reelfleet-cli --bin reelfleet` with this build's profile first \
             (scripts/test, scripts/chaos and scripts/bench do)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Deletes every queue and exchange of `topology`'s namespace; what is
/// already gone, or a broker that does not answer, is left at that.
pub async fn delete_namespace(broker: &Broker, topology: &Topology) {
    if let Ok(ch) = broker.channel().await {
        for q in topology.all_queue_names() {
            let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
        }
        for x in topology.exchange_names() {
            let _ = ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await;
        }
    }
}
