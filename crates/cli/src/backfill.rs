//! Backfill: what is already in a bucket becomes jobs, and a poller for
//! stores that cannot notify.
//!
//! Each listed object is announced to `<ns>.uploads` exactly as a bucket
//! notification would announce it (a MinIO-shaped `ObjectCreated:Put` event,
//! unsigned), so ingest treats it like any upload: it checks the bucket,
//! derives the job id from the bucket, key and ETag, and drops a source it
//! already knows. Running a backfill twice therefore never duplicates work.
//! The listing is `ListObjectVersions`' current versions (plain
//! `ListObjectsV2` on a store without it), and in a versioned bucket the
//! event names the version, as the bucket's own event does,
//! so an object backfilled and also announced by its bucket is one job.
//!
//! With `--watch` the backfill keeps its position in the work bucket
//! (`backfill/<id>.json`: the newest `LastModified` it has announced and the
//! keys written at that instant), so a restarted poller carries on where the
//! last one stopped instead of announcing the whole prefix again. The
//! position is written with a compare-and-swap, so two pollers of the same
//! prefix cannot both advance it: the second one's write fails and it stops.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use reelfleet_core::{
    broker::{Broker, Outgoing, Publisher},
    s3event::minio_event_of_version,
    settings::Settings,
    storage::{ConditionalPut, ListedObject, Storage, StorageError, WriteCondition},
    topology::Topology,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// Announcements awaiting the broker's confirm at once.
const IN_FLIGHT: usize = 64;
/// Largest position document read back.
const MAX_POSITION_BYTES: u64 = 16 << 20;

/// `s3://bucket/prefix`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The bucket to list.
    pub bucket: String,
    /// The key prefix to list (may be empty).
    pub prefix: String,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let rest = s.strip_prefix("s3://").with_context(|| format!("{s:?}: expected s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{s:?}: no bucket name");
        }
        Ok(Self { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Where a watching backfill has got to, kept in the work bucket.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Position {
    /// The bucket listed.
    pub bucket: String,
    /// The prefix listed.
    pub prefix: String,
    /// The newest `LastModified` announced so far.
    pub mark: Option<DateTime<Utc>>,
    /// The keys announced whose `LastModified` is `mark` (an object written in
    /// the same second as the mark but listed later is still announced).
    pub keys_at_mark: BTreeSet<String>,
    /// Objects announced by every pass so far.
    pub announced_total: u64,
    /// When the position was last written.
    pub updated_at: Option<DateTime<Utc>>,
}

impl Position {
    /// The work-bucket key of the position of `target`.
    pub fn key(target: &Target) -> String {
        let digest = Sha256::digest(format!("{}\n{}", target.bucket, target.prefix).as_bytes());
        format!("backfill/{}.json", &hex::encode(digest)[..24])
    }

    /// Whether `o` is past the position (not announced yet).
    fn is_new(&self, o: &ListedObject) -> bool {
        match (self.mark, o.last_modified) {
            (None, _) => true,
            (Some(mark), Some(t)) => t > mark || (t == mark && !self.keys_at_mark.contains(&o.key)),
            // A store that reports no time: only the key set can tell.
            (Some(_), None) => !self.keys_at_mark.contains(&o.key),
        }
    }

    /// Moves the position past `o`.
    fn advance(&mut self, o: &ListedObject) {
        match (self.mark, o.last_modified) {
            (Some(mark), Some(t)) if t < mark => {}
            (Some(mark), Some(t)) if t == mark => {
                self.keys_at_mark.insert(o.key.clone());
            }
            (_, Some(t)) => {
                self.mark = Some(t);
                self.keys_at_mark = BTreeSet::from([o.key.clone()]);
            }
            (_, None) => {
                self.keys_at_mark.insert(o.key.clone());
            }
        }
        self.announced_total += 1;
    }
}

/// Why a listed object was not announced.
fn skip_reason(o: &ListedObject, since: Option<DateTime<Utc>>) -> Option<&'static str> {
    if o.key.ends_with('/') {
        return Some("folder marker");
    }
    if o.key.starts_with("pulled/") {
        // The pull worker announces what it writes there itself.
        return Some("written by the pull worker");
    }
    match (since, o.last_modified) {
        (Some(since), Some(t)) if t < since => Some("older than --since"),
        _ => None,
    }
}

/// What one pass over the prefix did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PassReport {
    /// Objects listed under the prefix.
    pub listed: u64,
    /// Objects announced to ingest.
    pub announced: u64,
    /// Objects a previous pass announced already (`--watch`).
    pub seen: u64,
    /// Objects left out: folder markers, pull-worker objects, older than `--since`.
    pub skipped: u64,
    /// Bytes of the objects announced.
    pub bytes: u64,
}

/// A backfill of one target: its store, its broker link and its position.
pub struct Backfill {
    target: Target,
    storage: Storage,
    publisher: Publisher,
    exchange: String,
    work_bucket: String,
    since: Option<DateTime<Utc>>,
    /// The position and the ETag it was read with; `None` without `--watch`.
    position: Option<(Position, Option<String>)>,
    /// The store lists versions (`ListObjectVersions`): current versions
    /// with their ids, so an object in a versioned bucket gets the job id its
    /// own bucket event gives. `false` once the store said it cannot.
    versions: bool,
}

impl std::fmt::Debug for Backfill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backfill").field("target", &self.target).finish_non_exhaustive()
    }
}

impl Backfill {
    /// Connects to the store and the broker; with `watch`, reads the stored position.
    pub async fn new(
        settings: &Settings,
        target: Target,
        since: Option<DateTime<Utc>>,
        watch: bool,
    ) -> anyhow::Result<Self> {
        if !settings.s3.accepts(&target.bucket) {
            bail!(
                "bucket {:?} is not an upload bucket (s3.upload_bucket, s3.accepted_buckets): ingest would refuse its objects",
                target.bucket
            );
        }
        let storage = Storage::new(&settings.s3);
        let broker = Broker::new(&settings.broker, "reelfleet-backfill")?;
        let topology = Topology::from_settings(settings);
        broker.declare(&topology).await.context("cannot declare the topology")?;
        let publisher = broker.publisher().await?;
        let work_bucket = settings.s3.work_bucket.clone();
        let position = if watch {
            let key = Position::key(&target);
            match storage.get_bytes_versioned(&work_bucket, &key, MAX_POSITION_BYTES).await {
                Ok((body, etag)) => {
                    let p: Position = serde_json::from_slice(&body)
                        .with_context(|| format!("s3://{work_bucket}/{key} is not a backfill position"))?;
                    Some((p, etag))
                }
                Err(StorageError::NotFound { .. }) => Some((
                    Position { bucket: target.bucket.clone(), prefix: target.prefix.clone(), ..Default::default() },
                    None,
                )),
                Err(e) => return Err(e).context("cannot read the backfill position"),
            }
        } else {
            None
        };
        let exchange = topology.uploads_exchange();
        Ok(Self { target, storage, publisher, exchange, work_bucket, since, position, versions: true })
    }

    /// The position, when watching.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref().map(|(p, _)| p)
    }

    /// Lists the prefix page by page and announces every object not yet
    /// announced; `progress` is called after each page with the running report.
    pub async fn pass(&mut self, mut progress: impl FnMut(&PassReport)) -> anyhow::Result<PassReport> {
        let mut report = PassReport::default();
        let mut token = None;
        loop {
            let (bucket, prefix) = (&self.target.bucket, &self.target.prefix);
            let mut page = None;
            if self.versions {
                page = self.storage.list_latest_page(bucket, prefix, token.clone()).await.transpose();
                self.versions = page.is_some();
            }
            let page = match page {
                Some(page) => page,
                None => self.storage.list_page(bucket, prefix, token).await,
            }
            .with_context(|| format!("cannot list {}", self.target))?;
            report.listed += page.objects.len() as u64;
            let mut todo = Vec::new();
            for o in page.objects {
                if skip_reason(&o, self.since).is_some() {
                    report.skipped += 1;
                } else if self.position.as_ref().is_some_and(|(p, _)| !p.is_new(&o)) {
                    report.seen += 1;
                } else {
                    todo.push(o);
                }
            }
            self.announce(&todo).await?;
            for o in &todo {
                report.announced += 1;
                report.bytes += o.size;
                if let Some((p, _)) = self.position.as_mut() {
                    p.advance(o);
                }
            }
            progress(&report);
            match page.next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        self.save_position().await?;
        Ok(report)
    }

    /// Announces `objects` to the uploads exchange, each confirmed by the broker.
    async fn announce(&self, objects: &[ListedObject]) -> anyhow::Result<()> {
        stream::iter(objects)
            .map(|o| async move {
                let body = minio_event_of_version(
                    "ObjectCreated:Put",
                    &self.target.bucket,
                    &o.key,
                    o.size,
                    o.etag.as_deref().unwrap_or_default(),
                    o.version_id.as_deref(),
                    "reelfleet-backfill",
                );
                let msg = Outgoing { exchange: self.exchange.clone(), body, mandatory: true, ..Default::default() };
                self.publisher.publish(&msg).await.with_context(|| format!("cannot announce {}", o.key))
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Stores the position (compare-and-swap on the ETag it was read with).
    async fn save_position(&mut self) -> anyhow::Result<()> {
        let Some((position, etag)) = self.position.as_mut() else { return Ok(()) };
        position.updated_at = Some(Utc::now());
        let key = Position::key(&self.target);
        let condition = match etag.clone() {
            Some(e) => WriteCondition::Matches(e),
            None => WriteCondition::Absent,
        };
        let body = serde_json::to_vec_pretty(position)?;
        match self.storage.put_bytes_if(&self.work_bucket, &key, body, "application/json", &condition).await? {
            ConditionalPut::Stored(new) => {
                *etag = new;
                Ok(())
            }
            ConditionalPut::PreconditionFailed => bail!(
                "s3://{}/{key} changed under this backfill: another backfill of {} is running",
                self.work_bucket,
                self.target
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, secs: i64) -> ListedObject {
        ListedObject {
            key: key.into(),
            size: 1,
            etag: Some("e".into()),
            last_modified: DateTime::from_timestamp(secs, 0),
            version_id: None,
        }
    }

    #[test]
    fn targets_parse() {
        let t: Target = "s3://b/some/prefix/".parse().unwrap();
        assert_eq!(t, Target { bucket: "b".into(), prefix: "some/prefix/".into() });
        let t: Target = "s3://b".parse().unwrap();
        assert_eq!(t.prefix, "");
        assert!("b/prefix".parse::<Target>().is_err());
        assert!("s3:///x".parse::<Target>().is_err());
    }

    #[test]
    fn a_position_announces_each_object_once_even_in_the_same_second() {
        let mut p = Position::default();
        let (a, b, c) = (obj("a", 100), obj("b", 100), obj("c", 101));
        assert!(p.is_new(&a));
        p.advance(&a);
        assert!(!p.is_new(&a));
        // Written in the mark's second, listed later: still new.
        assert!(p.is_new(&b));
        p.advance(&b);
        assert_eq!(p.keys_at_mark.len(), 2);
        p.advance(&c);
        assert_eq!(p.mark, DateTime::from_timestamp(101, 0));
        assert_eq!(p.keys_at_mark, BTreeSet::from(["c".to_string()]));
        assert!(!p.is_new(&a) && !p.is_new(&b) && !p.is_new(&c));
        // An object older than the mark that was never seen is not announced:
        // the mark only moves forward.
        assert!(!p.is_new(&obj("late", 50)));
        assert_eq!(p.announced_total, 3);
    }

    #[test]
    fn folders_pulled_objects_and_old_objects_are_skipped() {
        let since = DateTime::from_timestamp(100, 0);
        assert_eq!(skip_reason(&obj("dir/", 200), None), Some("folder marker"));
        assert_eq!(skip_reason(&obj("pulled/j/v.mp4", 200), None), Some("written by the pull worker"));
        assert_eq!(skip_reason(&obj("old.mp4", 99), since), Some("older than --since"));
        assert_eq!(skip_reason(&obj("new.mp4", 100), since), None);
    }
}
