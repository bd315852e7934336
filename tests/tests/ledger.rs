//! The ledger reconciled against a source the fleet does not write: the
//! provider's usage log. After real inference the two agree to the token;
//! a billed answer whose ledger object never reached the store (a kill -9
//! between the bill and the write) is named with its tokens, and so is a
//! request that lost one job's share.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_cli::{
    fleet::StageName,
    ledger::{self, ReconcileOptions, Report},
};
use reelfleet_core::{envelope::Tier, manifest::JobStatus};
use reelfleet_inference::ledger::entry_key;
use reelfleet_tests::TestStack;
use std::{path::PathBuf, process::Command, time::Duration};

const T: Duration = Duration::from_secs(90);

async fn reconcile(stack: &TestStack) -> Report {
    ledger::run(stack.settings(), &stack.storage, &ReconcileOptions::default()).await.expect("reconcile")
}

/// The `reelfleet` binary beside the test's target folder, if it was built.
fn binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("reelfleet");
    bin.exists().then_some(bin)
}

/// Runs `reelfleet --config <the dev stack's file> ledger reconcile --json`: its exit code and report.
fn run_binary(bin: &PathBuf, stack: &TestStack) -> (i32, serde_json::Value) {
    let out = Command::new(bin)
        .arg("--config")
        .arg(&stack.dev.config_path)
        .args(["ledger", "reconcile", "--json"])
        .env_remove("REELFLEET_CONFIG")
        .output()
        .expect("reelfleet runs");
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().expect("exit code"), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_matches_the_bill_and_a_loss_between_bill_and_write_is_named() {
    let stack = TestStack::start_stages(&[StageName::Inference], |s| {
        s.inference.low.batch_size = 4;
        s.inference.low.max_wait_ms = 1000;
    })
    .await;
    // Four jobs that share requests, then one alone.
    let mut jobs = stack.seed_analyze(Tier::Low, 4).await;
    stack.wait_inferred(&jobs, T).await;
    let alone = stack.seed_analyze(Tier::Low, 1).await;
    stack.wait_inferred(&alone, T).await;
    jobs.extend(alone.iter().cloned());
    for m in stack.wait_inferred(&jobs, T).await {
        assert_eq!(m.status, JobStatus::Postprocess, "{:?}", m.error);
    }

    let usage = stack.dev.simulator.usage();
    let report = reconcile(&stack).await;
    assert!(report.balanced, "{}", ledger::render(&report));
    assert_eq!(report.billed_requests, usage.len());
    let recorded: i64 = report.models.iter().map(|l| l.recorded.input_tokens).sum();
    let billed: u64 = usage.iter().map(|u| u.prompt_tokens).sum();
    assert_eq!(recorded, billed as i64, "input tokens over all models");
    let bin = binary();
    match &bin {
        Some(bin) => {
            let (code, json) = run_binary(bin, &stack);
            assert_eq!(code, 0, "{json}");
            assert_eq!(json["balanced"], true);
        }
        None => eprintln!("target/debug/reelfleet not built: the binary's run is skipped"),
    }

    // A kill -9 after the bill, before the write: the answer's ledger object never lands.
    let single = usage.iter().find(|u| u.job_ids == alone).expect("the lone job's request");
    let bucket = stack.settings().s3.work_bucket.clone();
    stack.storage.delete(&bucket, &entry_key(&alone[0], &single.id)).await.expect("delete");
    let report = reconcile(&stack).await;
    assert!(!report.balanced);
    let lost: Vec<_> = report.unrecorded.iter().map(|u| u.request_id.as_str()).collect();
    assert_eq!(lost, [single.id.as_str()], "{}", ledger::render(&report));
    assert_eq!(report.unrecorded[0].job_ids, alone);
    assert!(report.unbilled.is_empty() && report.mismatched.is_empty(), "{}", ledger::render(&report));
    let line = report.models.iter().find(|l| l.model == single.model).expect("the model's line");
    assert_eq!(line.difference.requests, 1);
    assert_eq!(line.difference.input_tokens, single.prompt_tokens as i64);
    assert_eq!(line.difference.output_tokens, single.completion_tokens as i64);
    for other in report.models.iter().filter(|l| l.model != single.model) {
        assert_eq!((other.difference.input_tokens, other.difference.output_tokens), (0, 0), "{}", other.model);
    }
    if let Some(bin) = &bin {
        let (code, json) = run_binary(bin, &stack);
        assert_eq!(code, 1, "{json}");
        assert_eq!(json["unrecorded"][0]["request_id"], single.id.as_str());
    }

    // A write cut short in a request over several jobs: one share lost, the rest stored.
    let shared = usage.iter().find(|u| u.job_ids.len() > 1).expect("a request carrying several jobs");
    let victim = &shared.job_ids[1];
    stack.storage.delete(&bucket, &entry_key(victim, &shared.id)).await.expect("delete");
    let report = reconcile(&stack).await;
    assert_eq!(report.mismatched.len(), 1, "{}", ledger::render(&report));
    let m = &report.mismatched[0];
    assert_eq!(m.request_id, shared.id);
    assert_eq!(m.jobs_without_entry, std::slice::from_ref(victim));
    assert_eq!((m.billed_input_tokens, m.billed_output_tokens), (shared.prompt_tokens, shared.completion_tokens));
    assert!(m.recorded_input_tokens < shared.prompt_tokens);
    stack.cleanup().await;
}
