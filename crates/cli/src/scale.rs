//! `reelfleet scale`: per worker of the Helm chart, the depth of its queue and
//! the replicas KEDA would ask for with the chart's values, so operators
//! without KEDA can act and the chart's numbers can be checked against real
//! queues.
//!
//! KEDA's rabbitmq trigger in `QueueLength` mode over `protocol: http` reads
//! the management API's message count (ready + unacked) and hands it to the
//! HPA as an `AverageValue` target: replicas = ceil(depth / value), clamped to
//! min and max. A queue at or below `activationValue` is idle: a ScaledObject
//! with `minReplicaCount: 0` then goes to zero.

use crate::ops::{self, QueueStats};
use anyhow::Context;
use reelfleet_core::{envelope::Tier, settings::Settings, topology::Topology, topology::WorkQueue};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::Path};

/// The chart's default values, the ones `helm install` uses.
pub const CHART_VALUES: &str = include_str!("../../../helm/reelfleet/values.yaml");

/// The scaling part of one worker's values (after `workerDefaults` are applied).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerScaling {
    /// Whether the chart runs this worker.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Stage the worker runs.
    pub stage: String,
    /// Inference tier, for inference workers.
    #[serde(default)]
    pub tier: Option<Tier>,
    /// Fewest replicas KEDA runs (`minReplicaCount`; 0 scales the worker away when idle).
    pub min_replicas: u32,
    /// Most replicas KEDA runs (`maxReplicaCount`).
    pub max_replicas: u32,
    /// Messages per replica (KEDA's `value`).
    pub queue_length: f64,
    /// Depth at or below which the queue is idle (KEDA's `activationValue`).
    pub activation_queue_length: f64,
}

fn enabled() -> bool {
    true
}

/// The chart values `scale` needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ChartScaling {
    /// `config.namespace` of the values.
    pub namespace: String,
    /// Workers by name, defaults applied.
    pub workers: BTreeMap<String, WorkerScaling>,
}

impl ChartScaling {
    /// The chart's defaults, overridden by `values` (a Helm values file) as
    /// `helm install -f` would: maps merge key by key, anything else replaces.
    pub fn load(values: Option<&Path>) -> anyhow::Result<Self> {
        let mut tree: serde_json::Value = serde_yaml_ng::from_str(CHART_VALUES).context("the chart's values.yaml")?;
        if let Some(path) = values {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let user: serde_json::Value = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("{} is not a YAML values file", path.display()))?;
            if !user.is_null() {
                merge(&mut tree, user);
            }
        }
        Self::from_tree(&tree)
    }

    fn from_tree(tree: &serde_json::Value) -> anyhow::Result<Self> {
        let namespace = tree["config"]["namespace"].as_str().unwrap_or("reelfleet").to_string();
        let defaults = tree.get("workerDefaults").cloned().unwrap_or_default();
        let mut workers = BTreeMap::new();
        let listed = tree["workers"].as_object().context("values: `workers` must be a map")?;
        for (name, own) in listed {
            let mut merged = defaults.clone();
            merge(&mut merged, own.clone());
            let w: WorkerScaling =
                serde_json::from_value(merged).with_context(|| format!("values: workers.{name} is not valid"))?;
            if w.queue_length <= 0.0 {
                anyhow::bail!("values: workers.{name}.queueLength must be above 0");
            }
            workers.insert(name.clone(), w);
        }
        Ok(Self { namespace, workers })
    }
}

fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Replicas KEDA (through the HPA) asks for at this depth: `(active, replicas)`.
pub fn desired_replicas(depth: u64, w: &WorkerScaling) -> (bool, u32) {
    let active = depth as f64 > w.activation_queue_length;
    if !active && w.min_replicas == 0 {
        return (false, 0);
    }
    let wanted = (depth as f64 / w.queue_length).ceil() as u32;
    (active, wanted.clamp(w.min_replicas.max(1), w.max_replicas.max(1)))
}

/// One line of `reelfleet scale`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ScaleRow {
    /// Worker (Deployment suffix) in the chart.
    pub worker: String,
    /// The queue it consumes, namespace included.
    pub queue: String,
    /// Messages waiting for a consumer.
    pub ready: u64,
    /// Messages delivered and not acknowledged (`None` without the management API).
    pub unacked: Option<u64>,
    /// Ready + unacked: KEDA's metric.
    pub depth: u64,
    /// Consumers now (one per running replica).
    pub consumers: u64,
    /// Recent publish rate into the queue, messages/s.
    pub publish_rate: Option<f64>,
    /// Recent acknowledgement rate, messages/s.
    pub ack_rate: Option<f64>,
    /// KEDA's `value`.
    pub queue_length: f64,
    /// Messages one replica takes at once (its prefetch): a `queue_length`
    /// below it makes KEDA start replicas that find nothing to take.
    pub held_per_replica: u64,
    /// KEDA's `activationValue`.
    pub activation: f64,
    /// The chart's `minReplicaCount` for the worker.
    pub min_replicas: u32,
    /// The chart's `maxReplicaCount` for the worker.
    pub max_replicas: u32,
    /// Whether the queue counts as active.
    pub active: bool,
    /// Replicas KEDA would run.
    pub desired_replicas: u32,
    /// Where the counts come from: `management` or `passive-declare` (ready only).
    pub source: &'static str,
}

/// The queue a chart worker consumes.
pub fn work_queue(name: &str, w: &WorkerScaling) -> anyhow::Result<WorkQueue> {
    Ok(match (w.stage.as_str(), w.tier) {
        ("ingest", _) => WorkQueue::Ingest,
        ("preprocess", _) => WorkQueue::Preprocess,
        ("inference", Some(t)) => WorkQueue::Inference(t),
        ("inference", None) => anyhow::bail!("values: workers.{name} is an inference worker without a tier"),
        ("postprocess", _) => WorkQueue::Postprocess,
        ("pull", _) => WorkQueue::Pull,
        ("webhooks", _) => WorkQueue::Webhooks,
        ("index", _) => WorkQueue::Index,
        (other, _) => anyhow::bail!("values: workers.{name}.stage {other:?} is not a stage"),
    })
}

/// Reads the queues of every enabled worker and computes its replicas.
pub async fn plan(settings: &Settings, chart: &ChartScaling) -> anyhow::Result<Vec<ScaleRow>> {
    let topology = Topology::from_settings(settings);
    let mut wanted = Vec::new();
    for (name, w) in chart.workers.iter().filter(|(_, w)| w.enabled) {
        wanted.push((name, w, topology.queue(work_queue(name, w)?)));
    }
    // Pipeline order reads better than alphabetical.
    wanted.sort_by_key(|(_, _, q)| WorkQueue::all().iter().position(|w| topology.queue(*w) == *q));
    let names: Vec<String> = wanted.iter().map(|(_, _, q)| q.clone()).collect();
    let stats = ops::queue_stats(settings, &names).await?;
    Ok(wanted.into_iter().zip(stats).map(|((name, w, _), s)| row(name, w, &s, held_per_replica(settings, w))).collect())
}

/// The runtime's prefetch for this worker: batch size x concurrency for an
/// inference tier, `broker.prefetch` otherwise.
pub fn held_per_replica(settings: &Settings, w: &WorkerScaling) -> u64 {
    let prefetch = u64::from(settings.broker.prefetch);
    match (w.stage.as_str(), w.tier) {
        ("inference", Some(t)) => {
            let tier = settings.inference.tier(t);
            ((tier.batch_size.max(1) * tier.concurrency.max(1)) as u64).max(prefetch)
        }
        _ => prefetch,
    }
}

fn row(name: &str, w: &WorkerScaling, s: &QueueStats, held: u64) -> ScaleRow {
    let depth = s.depth();
    let (active, desired) = desired_replicas(depth, w);
    ScaleRow {
        worker: name.to_string(),
        queue: s.name.clone(),
        ready: s.ready,
        unacked: s.unacked,
        depth,
        consumers: s.consumers,
        publish_rate: s.publish_rate,
        ack_rate: s.ack_rate,
        queue_length: w.queue_length,
        held_per_replica: held,
        activation: w.activation_queue_length,
        min_replicas: w.min_replicas,
        max_replicas: w.max_replicas,
        active,
        desired_replicas: desired,
        source: s.source,
    }
}

/// The table `reelfleet scale` prints.
pub fn render_table(rows: &[ScaleRow]) -> String {
    let rate = |r: Option<f64>| r.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into());
    let mut out = format!(
        "{:<20} {:<34} {:>7} {:>7} {:>7} {:>5} {:>7} {:>7} {:>7} {:>9} {:>7}\n",
        "WORKER", "QUEUE", "READY", "UNACKED", "DEPTH", "CONS", "IN/S", "OUT/S", "PER-POD", "MIN..MAX", "DESIRED"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:<34} {:>7} {:>7} {:>7} {:>5} {:>7} {:>7} {:>7} {:>9} {:>7}\n",
            r.worker,
            r.queue,
            r.ready,
            r.unacked.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
            r.depth,
            r.consumers,
            rate(r.publish_rate),
            rate(r.ack_rate),
            r.queue_length,
            format!("{}..{}", r.min_replicas, r.max_replicas),
            r.desired_replicas
        ));
    }
    for r in rows.iter().filter(|r| r.queue_length < r.held_per_replica as f64) {
        out.push_str(&format!(
            "note: {} aims at {} messages per replica but one replica holds up to {} (its prefetch): \
             raise queueLength, or KEDA starts replicas that find nothing to take.\n",
            r.worker, r.queue_length, r.held_per_replica
        ));
    }
    if rows.iter().any(|r| r.source == "passive-declare") {
        out.push_str(
            "note: the management API did not answer; depth is the ready count only (unacked unknown), \
             so DESIRED can be too low while workers are busy. Enable rabbitmq_management.\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(min: u32, max: u32, per: f64, activation: f64) -> WorkerScaling {
        WorkerScaling {
            enabled: true,
            stage: "ingest".into(),
            tier: None,
            min_replicas: min,
            max_replicas: max,
            queue_length: per,
            activation_queue_length: activation,
        }
    }

    #[test]
    fn replicas_follow_kedas_formula() {
        let w = worker(0, 10, 20.0, 5.0);
        assert_eq!(desired_replicas(0, &w), (false, 0));
        assert_eq!(desired_replicas(5, &w), (false, 0), "at the activation value the queue is idle");
        assert_eq!(desired_replicas(6, &w), (true, 1));
        assert_eq!(desired_replicas(41, &w), (true, 3));
        assert_eq!(desired_replicas(10_000, &w), (true, 10), "clamped to max");
        let w = worker(2, 10, 20.0, 0.0);
        assert_eq!(desired_replicas(0, &w), (false, 2), "an idle queue keeps min replicas");
        assert_eq!(desired_replicas(21, &w), (true, 2));
    }

    #[test]
    fn chart_defaults_give_every_work_queue_one_worker() {
        let chart = ChartScaling::load(None).unwrap();
        let mut queues: Vec<WorkQueue> = chart.workers.iter().map(|(name, w)| work_queue(name, w).unwrap()).collect();
        queues.sort_by_key(|q| q.suffix());
        let mut all = WorkQueue::all();
        all.sort_by_key(|q| q.suffix());
        assert_eq!(queues, all);
        assert_eq!(chart.namespace, "reelfleet");
    }

    #[test]
    fn a_values_file_overrides_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prod.yaml");
        std::fs::write(&path, "config:\n  namespace: prod\nworkerDefaults:\n  maxReplicas: 50\nworkers:\n  ingest:\n    queueLength: 7\n  inference-low:\n    enabled: false\n").unwrap();
        let chart = ChartScaling::load(Some(&path)).unwrap();
        assert_eq!(chart.namespace, "prod");
        assert_eq!(chart.workers["ingest"].queue_length, 7.0);
        assert_eq!(chart.workers["ingest"].max_replicas, 50);
        assert_eq!(chart.workers["preprocess"].queue_length, 4.0, "untouched worker keeps the chart's value");
        assert!(!chart.workers["inference-low"].enabled);
        std::fs::write(&path, "workers:\n  ingest:\n    queueLength: 0\n").unwrap();
        assert!(ChartScaling::load(Some(&path)).unwrap_err().to_string().contains("queueLength"));
    }
}
