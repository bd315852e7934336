//! `reelfleet scale` against a real broker: depth counts unacked messages
//! (KEDA's trap: ready alone would shrink a busy fleet), the replicas follow
//! KEDA's formula for the chart's values, and without the management API the
//! command falls back to passive declares and says what it cannot see.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use reelfleet_cli::scale::{self, ChartScaling, ScaleRow};
use reelfleet_core::{broker::Outgoing, envelope::Tier, topology::WorkQueue};
use reelfleet_tests::TestStack;
use std::time::{Duration, Instant};

fn row<'a>(rows: &'a [ScaleRow], worker: &str) -> &'a ScaleRow {
    rows.iter().find(|r| r.worker == worker).unwrap_or_else(|| panic!("no row for {worker}: {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_counts_unacked_and_follows_kedas_formula() {
    let stack = TestStack::start_stages(&[], |_| {}).await;
    for _ in 0..45 {
        stack.publish(Outgoing::to_queue(stack.queue(WorkQueue::Ingest), b"{}".to_vec())).await;
    }
    for _ in 0..7 {
        stack.publish(Outgoing::to_queue(stack.queue(WorkQueue::Inference(Tier::Low)), b"{}".to_vec())).await;
    }
    // A busy worker: holds 5 messages without acknowledging them.
    let busy = stack.broker.channel().await.unwrap();
    busy.basic_qos(5, BasicQosOptions::default()).await.unwrap();
    let _consumer = busy
        .basic_consume(
            stack.queue(WorkQueue::Ingest).as_str().into(),
            "busy-worker".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();

    let chart = ChartScaling::load(None).unwrap();
    // The management API publishes counts every few seconds.
    let deadline = Instant::now() + Duration::from_secs(45);
    let rows = loop {
        let rows = scale::plan(stack.settings(), &chart).await.unwrap();
        let ingest = row(&rows, "ingest");
        // Counts, consumers and rates come in separate samples: wait for all of them.
        let settled = ingest.unacked == Some(5) && ingest.consumers == 1 && ingest.publish_rate.is_some();
        if ingest.source == "management" && settled && row(&rows, "inference-low").depth == 7 {
            break rows;
        }
        assert!(Instant::now() < deadline, "the management API never showed the queues: {rows:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ingest = row(&rows, "ingest");
    assert_eq!((ingest.ready, ingest.depth, ingest.consumers), (40, 45, 1));
    assert!(ingest.publish_rate.is_some() && ingest.ack_rate.is_some());
    assert_eq!(ingest.desired_replicas, 1, "45 messages at 50 per replica");
    let low = row(&rows, "inference-low");
    assert_eq!((low.active, low.desired_replicas), (true, 1), "7 messages wake a tier scaled to zero");
    let medium = row(&rows, "inference-medium");
    assert_eq!((medium.active, medium.desired_replicas), (false, 0), "an idle tier stays at zero");
    assert_eq!(row(&rows, "preprocess").desired_replicas, 1, "an idle stage keeps its minimum");
    // The four stages (inference once per tier), the URL pull, the webhooks and the index.
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[9].worker, "index", "pipeline order: the index reads what every stage announces");
    assert_eq!(rows[0].worker, "pull", "pipeline order: a pulled source comes before ingest");
    assert_eq!(rows[1].worker, "ingest", "pipeline order");

    // The operator's own values, applied over the chart's like `helm install -f`.
    let values = stack.dir.path().join("values.yaml");
    std::fs::write(&values, "workers:\n  ingest:\n    queueLength: 10\n    maxReplicas: 4\n").unwrap();
    let custom = ChartScaling::load(Some(&values)).unwrap();
    let rows = scale::plan(stack.settings(), &custom).await.unwrap();
    assert_eq!(row(&rows, "ingest").desired_replicas, 4, "ceil(45 / 10) = 5, clamped to 4");
    assert_eq!(row(&rows, "inference-low").held_per_replica, 400, "batch size 100 x concurrency 4");
    assert!(!scale::render_table(&rows).contains("raise queueLength"), "the chart's targets fit the prefetch");
    std::fs::write(&values, "workers:\n  inference-low:\n    queueLength: 100\n").unwrap();
    let rows = scale::plan(stack.settings(), &ChartScaling::load(Some(&values)).unwrap()).await.unwrap();
    assert!(scale::render_table(&rows)
        .contains("inference-low aims at 100 messages per replica but one replica holds up to 400"));

    // Without the management API: passive declares see ready messages only.
    let mut blind = stack.settings().clone();
    blind.broker.management_url = reelfleet_core::settings::Secret::new("http://guest:guest@127.0.0.1:1/");
    let rows = scale::plan(&blind, &chart).await.unwrap();
    let ingest = row(&rows, "ingest");
    assert_eq!(ingest.source, "passive-declare");
    assert_eq!((ingest.ready, ingest.unacked, ingest.depth, ingest.consumers), (40, None, 40, 1));
    assert!(scale::render_table(&rows).contains("unacked unknown"));

    let _ = busy.close(200, "done".into()).await;
    stack.cleanup().await;
}
