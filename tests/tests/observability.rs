//! What operators watch: the `/metrics` every worker serves passes
//! `promtool check metrics`, and the README's metrics table says exactly what
//! is served (names, types, labels).

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_core::manifest::JobStatus;
use reelfleet_tests::{make_clip, TestStack};
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

/// `PROMTOOL` or `promtool` on PATH (scripts/test provides it from Debian's `prometheus` package).
fn promtool() -> String {
    let bin = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let found = Command::new(&bin).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "promtool not found ({bin}): run scripts/test, or set PROMTOOL to Debian's prometheus promtool");
    bin
}

/// Families served: name -> (type, label names).
fn served(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.insert(name.to_string(), (kind.to_string(), BTreeSet::new()));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap();
            let sample = &line[..name_end];
            let family = out
                .keys()
                .filter(|f| sample == f.as_str() || sample.strip_prefix(f.as_str()).is_some_and(|s| s.starts_with('_')))
                .max_by_key(|f| f.len())
                .cloned()
                .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
            if let Some(labels) = line[name_end..].strip_prefix('{').and_then(|l| l.split_once('}')).map(|l| l.0) {
                for pair in labels.split("\",") {
                    let key = pair.split('=').next().unwrap().trim();
                    if !key.is_empty() && key != "le" {
                        out.get_mut(&family).unwrap().1.insert(key.to_string());
                    }
                }
            }
        }
    }
    out
}

/// The README's metrics table: name -> (type, label names).
fn documented() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("## Metrics").nth(1).expect("README has a Metrics section");
    let mut out = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let mut labels_text = String::new();
        let mut depth = 0;
        for c in cells[3].chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ if depth == 0 => labels_text.push(c),
                _ => {}
            }
        }
        let labels = labels_text.split(',').map(str::trim).filter(|l| !l.is_empty() && *l != "-").map(String::from);
        out.insert(cells[1].trim_matches('`').to_string(), (cells[2].to_string(), labels.collect()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_pass_promtool_and_match_the_readme() {
    let promtool = promtool();
    let stack = TestStack::start().await;
    let dir = stack.dir.path();
    let good = make_clip(dir, "good.mp4", "testsrc2=size=320x240:rate=24", 2.0, &[]);
    let bad = dir.join("bad.mp4");
    std::fs::write(&bad, "not a video\n".repeat(100)).unwrap();
    let good_job = stack.upload("obs/good.mp4", &good).await;
    let bad_job = stack.upload("obs/bad.mp4", &bad).await;
    let done = |m: &reelfleet_core::manifest::JobManifest| matches!(m.status, JobStatus::Completed | JobStatus::Failed);
    assert_eq!(stack.wait_for(&good_job, Duration::from_secs(240), done).await.status, JobStatus::Completed);
    assert_eq!(stack.wait_for(&bad_job, Duration::from_secs(60), done).await.status, JobStatus::Failed);

    let url = format!("http://{}/metrics", stack.dev.fleet.health_addr);
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();

    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}\n{text}");

    let served = served(&text);
    let documented = documented();
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        documented.keys().collect::<Vec<_>>(),
        "the README's metrics table and /metrics name different families"
    );
    for (name, (kind, labels)) in &served {
        let (doc_kind, doc_labels) = &documented[name];
        assert_eq!(kind, doc_kind, "{name}: served as {kind}, documented as {doc_kind}");
        assert_eq!(labels, doc_labels, "{name}: labels served vs documented");
    }
    stack.cleanup().await;
}
