//! The job state machine: which stage may work on a job, decided from its
//! manifest, and the kit every stage uses to act on that decision.
//!
//! A stage **claims** a job before doing any work: a conditional write of
//! the manifest that records the stage, a lease id and when the lease runs
//! out. Exactly one claim can win that write, so a duplicated or redelivered
//! message never makes a stage run twice at once, whatever the replica count.
//! The holder renews its lease while it works and **commits** its result with
//! one more conditional write that only succeeds while it still holds the
//! claim. A holder that dies stops renewing; its lease runs out and the next
//! copy of the message takes the job over. After the broker confirms the
//! hand-over to the next stage, the runtime marks it forwarded, so later
//! copies of the message are dropped; a copy that finds the stage done but
//! not forwarded (the holder died in between) sends the stored result on
//! again, and the next stage's claim absorbs any duplicate that makes.
//!
//! [`decide`] is the whole policy as a pure function with a table test;
//! [`JobClaims`] does the reads and writes.

use crate::{
    envelope::Envelope,
    error::StageError,
    manifest::{Claim, JobManifest, JobStatus, ManifestStore, Update},
    runtime::{Input, Message},
};
use chrono::{DateTime, Utc};
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tracing::{info, warn};

/// The stages of the pipeline, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PipelineStage {
    /// Validates uploads and creates jobs.
    Ingest,
    /// Normalizes video and assigns the tier.
    Preprocess,
    /// Calls the provider and records the cost.
    Inference,
    /// Encodes the deliverables and completes the job.
    Postprocess,
}

impl PipelineStage {
    /// The stage's name, as in manifests, queues and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineStage::Ingest => "ingest",
            PipelineStage::Preprocess => "preprocess",
            PipelineStage::Inference => "inference",
            PipelineStage::Postprocess => "postprocess",
        }
    }

    /// The status of a job waiting for (or in) this stage; ingest has none,
    /// since the manifest only exists once ingest has admitted the job.
    pub fn waiting_status(self) -> Option<JobStatus> {
        match self {
            PipelineStage::Ingest => None,
            PipelineStage::Preprocess => Some(JobStatus::Preprocess),
            PipelineStage::Inference => Some(JobStatus::Inference),
            PipelineStage::Postprocess => Some(JobStatus::Postprocess),
        }
    }
}

impl fmt::Display for PipelineStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far along the pipeline a status is; `None` for a failed job.
fn rank(status: JobStatus) -> Option<u8> {
    match status {
        // Manifests written before ingest created jobs as `preprocess` say `ingest`
        // for the same place: admitted, waiting for preprocess.
        JobStatus::Ingest | JobStatus::Preprocess => Some(1),
        JobStatus::Inference => Some(2),
        JobStatus::Postprocess => Some(3),
        JobStatus::Completed => Some(4),
        JobStatus::Failed => None,
    }
}

fn stage_rank(stage: PipelineStage) -> u8 {
    match stage {
        PipelineStage::Ingest => 0,
        PipelineStage::Preprocess => 1,
        PipelineStage::Inference => 2,
        PipelineStage::Postprocess => 3,
    }
}

/// Why a message is dropped without work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The job was dead-lettered; only a replay reopens it.
    Failed,
    /// The stage finished and its hand-over was confirmed: a duplicate.
    AlreadyForwarded,
    /// The job has not reached this stage: a stray message.
    NotYetHere(JobStatus),
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Failed => f.write_str("the job has failed"),
            DropReason::AlreadyForwarded => f.write_str("the stage already ran and handed the job on"),
            DropReason::NotYetHere(s) => write!(f, "the job is only at {s}"),
        }
    }
}

/// What a message for `stage` may do, given the job's manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Claim the job and run the stage (`takeover` names an expired claim being replaced).
    Run {
        /// The dead holder's claim, if any.
        takeover: Option<Claim>,
    },
    /// The stage ran but its hand-over was never confirmed: send the stored result on.
    Reforward,
    /// Nothing to do: ack the message and leave the job alone.
    Drop(DropReason),
    /// Another worker holds the job; look again when its lease has run out.
    Wait(Duration),
}

/// The claim policy: what a message for `stage` may do with the job `m` at `now`.
pub fn decide(m: &JobManifest, stage: PipelineStage, now: DateTime<Utc>) -> Decision {
    let Some(at) = rank(m.status) else { return Decision::Drop(DropReason::Failed) };
    let here = stage_rank(stage);
    if at > here {
        let forwarded = m.stages.get(stage.as_str()).is_some_and(|t| t.forwarded_at.is_some());
        return if forwarded { Decision::Drop(DropReason::AlreadyForwarded) } else { Decision::Reforward };
    }
    if at < here {
        return Decision::Drop(DropReason::NotYetHere(m.status));
    }
    match &m.claim {
        Some(c) if c.stage == stage.as_str() && c.lease_until > now => {
            let left = (c.lease_until - now).to_std().unwrap_or_default();
            Decision::Wait(left.max(Duration::from_secs(1)))
        }
        Some(c) if c.stage == stage.as_str() => Decision::Run { takeover: Some(c.clone()) },
        // No claim, or a previous stage's that its commit did not clear.
        _ => Decision::Run { takeover: None },
    }
}

/// What the claim kit tells a stage to do with a message.
#[derive(Debug)]
pub enum Claimed {
    /// The stage holds the job: do the work, then [`Held::commit`].
    Run(Box<Held>),
    /// The stage ran before; send this stored result on.
    Reforward(Box<JobManifest>),
    /// Nothing to do: ack the message.
    Drop,
}

/// Claims, renews, commits and releases jobs for the stages.
#[derive(Clone, Debug)]
pub struct JobClaims {
    manifests: ManifestStore,
    lease: Duration,
    holder: String,
}

impl JobClaims {
    /// Claims on `manifests` that last `lease` unless renewed.
    pub fn new(manifests: ManifestStore, lease: Duration) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        Self { manifests, lease: lease.max(Duration::from_secs(3)), holder: format!("{host}:{}", std::process::id()) }
    }

    /// The manifests the claims are written into.
    pub fn manifests(&self) -> &ManifestStore {
        &self.manifests
    }

    /// Decides what a message for `stage` of `job_id` may do and, when it may
    /// run, takes the claim. A job another worker holds comes back as a
    /// deferral until that lease runs out.
    pub async fn claim(&self, job_id: &str, stage: PipelineStage, attempt: u32) -> Result<Claimed, StageError> {
        let lease_id = uuid::Uuid::new_v4().simple().to_string();
        let lease = chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(30));
        let decision = self
            .manifests
            .update(job_id, |m| {
                let now = Utc::now();
                match decide(m, stage, now) {
                    d @ Decision::Run { .. } => {
                        m.claim = Some(Claim {
                            stage: stage.as_str().into(),
                            lease_id: lease_id.clone(),
                            attempt,
                            holder: self.holder.clone(),
                            claimed_at: now,
                            lease_until: now + lease,
                        });
                        Update::Write((d, Some(m.clone())))
                    }
                    d @ Decision::Reforward => Update::Keep((d, Some(m.clone()))),
                    d => Update::Keep((d, None)),
                }
            })
            .await?;
        let Some((decision, manifest)) = decision else {
            return Err(StageError::permanent("bad_input", format!("job {job_id} has no manifest")));
        };
        match (decision, manifest) {
            (Decision::Run { takeover }, Some(manifest)) => {
                if let Some(dead) = takeover {
                    warn!(job_id, stage = %stage, holder = %dead.holder, lease_until = %dead.lease_until, "Claim ran out; taking the job over");
                }
                Ok(Claimed::Run(Box::new(Held::start(self.clone(), job_id, stage, lease_id, manifest))))
            }
            (Decision::Reforward, Some(manifest)) => {
                info!(job_id, stage = %stage, "Stage already ran but its hand-over was not confirmed; sending the stored result on");
                Ok(Claimed::Reforward(Box::new(manifest)))
            }
            (Decision::Wait(wait), _) => Err(StageError::deferred(
                "claimed",
                format!("job {job_id} is held by another {stage} worker; looking again in {} s", wait.as_secs()),
                wait,
            )),
            (Decision::Drop(reason), _) => {
                info!(job_id, stage = %stage, reason = %reason, "Duplicate message dropped");
                Ok(Claimed::Drop)
            }
            (d, None) => unreachable!("decision {d:?} always carries the manifest"),
        }
    }
}

/// A claim held by this worker. Renewed in the background until committed
/// or dropped; dropping it without a commit lets the job go at once, so the
/// retry of a failed attempt does not wait for the lease to run out.
#[derive(Debug)]
pub struct Held {
    claims: JobClaims,
    job_id: String,
    stage: PipelineStage,
    lease_id: String,
    /// The manifest as claimed.
    pub manifest: JobManifest,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
    settled: bool,
}

impl Held {
    fn start(claims: JobClaims, job_id: &str, stage: PipelineStage, lease_id: String, manifest: JobManifest) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(claims.clone(), job_id.to_string(), lease_id.clone(), lost.clone()));
        Self { claims, job_id: job_id.into(), stage, lease_id, manifest, lost, renewer, settled: false }
    }

    /// Whether another worker has taken the job over (the lease could not be renewed in time).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Stores the stage's result: `change` is applied to the current manifest
    /// and the claim cleared in one conditional write, only while this worker
    /// still holds the claim. `None` when it no longer does: another worker
    /// took the job over, and this attempt's result must not be sent on.
    pub async fn commit(mut self, mut change: impl FnMut(&mut JobManifest)) -> Result<Option<JobManifest>, StageError> {
        self.renewer.abort();
        let lease_id = self.lease_id.clone();
        let stored = self
            .claims
            .manifests
            .update(&self.job_id, |m| {
                if m.claim.as_ref().map(|c| c.lease_id.as_str()) != Some(lease_id.as_str()) {
                    return Update::Keep(None);
                }
                m.claim = None;
                change(m);
                Update::Write(Some(m.clone()))
            })
            .await?
            .flatten();
        self.settled = true;
        if stored.is_none() {
            warn!(job_id = %self.job_id, stage = %self.stage, "Claim was taken over before this attempt finished; its result is discarded");
        }
        Ok(stored)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
        if self.settled {
            return;
        }
        let (manifests, job_id, lease_id) = (self.claims.manifests.clone(), self.job_id.clone(), self.lease_id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let released = manifests
                    .update(&job_id, |m| match &m.claim {
                        Some(c) if c.lease_id == lease_id => {
                            m.claim = None;
                            Update::Write(())
                        }
                        _ => Update::Keep(()),
                    })
                    .await;
                if let Err(e) = released {
                    warn!(job_id, error = %e, "Could not release the claim; it runs out with its lease");
                }
            });
        }
    }
}

async fn renew(claims: JobClaims, job_id: String, lease_id: String, lost: Arc<AtomicBool>) {
    let every = claims.lease / 3;
    let lease = chrono::Duration::from_std(claims.lease).unwrap_or(chrono::Duration::seconds(30));
    loop {
        tokio::time::sleep(every).await;
        let renewed = claims
            .manifests
            .update(&job_id, |m| match m.claim.as_mut() {
                Some(c) if c.lease_id == lease_id => {
                    c.lease_until = Utc::now() + lease;
                    Update::Write(true)
                }
                _ => Update::Keep(false),
            })
            .await;
        match renewed {
            Ok(Some(true)) => {}
            Ok(_) => {
                lost.store(true, Ordering::Relaxed);
                warn!(job_id, "Claim lost to another worker");
                return;
            }
            // The store is unreachable: try again; the lease covers a few misses.
            Err(e) => warn!(job_id, error = %e, "Could not renew the claim"),
        }
    }
}

/// The verified envelope of a message, for stages that take nothing else.
pub fn envelope_of(msg: &Message, stage: PipelineStage) -> Result<Envelope, StageError> {
    match &msg.input {
        Input::Envelope(e) => Ok(e.clone()),
        Input::Raw(_) => Err(StageError::permanent("bad_input", format!("{stage} takes signed envelopes only"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        envelope::{Envelope, JobKind, SourceObject},
        manifest::StageTiming,
    };

    fn manifest(status: JobStatus) -> JobManifest {
        let source =
            SourceObject { bucket: "b".into(), key: "k.mp4".into(), size: 1, etag: Some("e".into()), version_id: None };
        let mut m = JobManifest::new(&Envelope::new(JobKind::Analyze, source));
        m.status = status;
        m
    }

    fn claim(stage: &str, until: DateTime<Utc>) -> Claim {
        Claim {
            stage: stage.into(),
            lease_id: "L".into(),
            attempt: 0,
            holder: "h:1".into(),
            claimed_at: until - chrono::Duration::seconds(30),
            lease_until: until,
        }
    }

    fn timing(forwarded: bool) -> StageTiming {
        let now = Utc::now();
        StageTiming {
            started_at: now,
            finished_at: now,
            duration_ms: 0,
            attempts: 1,
            forwarded_at: forwarded.then_some(now),
        }
    }

    #[test]
    fn every_branch_of_the_claim_policy() {
        use Decision::*;
        use JobStatus as S;
        use PipelineStage as P;
        let now = Utc::now();
        let live = now + chrono::Duration::seconds(20);
        let dead = now - chrono::Duration::seconds(1);
        // (status, claim, this stage's timing (forwarded?), stage, expected)
        type Row = (S, Option<Claim>, Option<bool>, P, Decision);
        let table: Vec<Row> = vec![
            // Failed jobs never run again until a replay reopens them.
            (S::Failed, None, None, P::Preprocess, Drop(DropReason::Failed)),
            (S::Failed, Some(claim("inference", live)), None, P::Inference, Drop(DropReason::Failed)),
            // At the stage: free, another stage's leftover claim, an expired claim, a live one.
            (S::Preprocess, None, None, P::Preprocess, Run { takeover: None }),
            (S::Ingest, None, None, P::Preprocess, Run { takeover: None }),
            (S::Inference, Some(claim("preprocess", live)), None, P::Inference, Run { takeover: None }),
            (
                S::Inference,
                Some(claim("inference", dead)),
                None,
                P::Inference,
                Run { takeover: Some(claim("inference", dead)) },
            ),
            (S::Postprocess, Some(claim("postprocess", live)), None, P::Postprocess, Wait(Duration::from_secs(20))),
            // Past the stage: forwarded means a duplicate; not forwarded means send it on again.
            (S::Inference, None, Some(true), P::Preprocess, Drop(DropReason::AlreadyForwarded)),
            (S::Inference, None, Some(false), P::Preprocess, Reforward),
            (S::Completed, None, Some(false), P::Postprocess, Reforward),
            (S::Completed, None, Some(true), P::Postprocess, Drop(DropReason::AlreadyForwarded)),
            (S::Preprocess, None, Some(false), P::Ingest, Reforward),
            (S::Preprocess, None, Some(true), P::Ingest, Drop(DropReason::AlreadyForwarded)),
            // A stage's timing missing (manifests from before hand-overs were recorded): send on.
            (S::Postprocess, None, None, P::Inference, Reforward),
            // Not there yet: a stray message.
            (S::Preprocess, None, None, P::Postprocess, Drop(DropReason::NotYetHere(S::Preprocess))),
        ];
        for (status, c, forwarded, stage, want) in table {
            let mut m = manifest(status);
            m.claim = c.clone();
            if let Some(f) = forwarded {
                m.stages.insert(stage.as_str().into(), timing(f));
            }
            let got = decide(&m, stage, now);
            let got = match got {
                // Whole seconds: the table's clock and the lease's differ by microseconds.
                Wait(d) => Wait(Duration::from_secs(d.as_secs())),
                other => other,
            };
            assert_eq!(got, want, "{status:?} claim={c:?} forwarded={forwarded:?} stage={stage}");
        }
    }

    #[test]
    fn a_live_claim_waits_at_least_a_second() {
        let now = Utc::now();
        let mut m = manifest(JobStatus::Inference);
        m.claim = Some(claim("inference", now + chrono::Duration::milliseconds(10)));
        assert_eq!(decide(&m, PipelineStage::Inference, now), Decision::Wait(Duration::from_secs(1)));
    }
}
