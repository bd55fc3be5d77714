//! `s3ferry bisync`: keep a local directory and an S3 prefix in two-way sync, round after round.
//!
//! A round joins three sorted inputs by key — the local listing, the remote listing and the
//! pair's base records (both sides' signatures as of the last round that synced each key, in
//! the state database) — and decides each key with the pure three-way planner ([`plan`]). The
//! whole round is planned first (spilled to disk, so memory stays flat), the delete limit is
//! checked per side, and only then is anything changed. A base record is written only after its
//! key was settled, so a failed or interrupted round leaves each key either as it was (the next
//! round redoes it) or settled.
//!
//! Several nodes can share one prefix with a lease ([`s3ferry_engine::lease`]) held for each
//! round; changed remote paths can be invalidated on a CDN ([`s3ferry_engine::ports`]).

pub mod plan;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use s3ferry_engine::events::{Outcome, Record, Reporter};
use s3ferry_engine::exec::{Cancel, Done, Executor};
use s3ferry_engine::filter::Filters;
use s3ferry_engine::identity::resolve_check;
use s3ferry_engine::journal::{is_reserved, reserved_keys, Journal};
use s3ferry_engine::lease::{Lease, LeaseConfig, LeaseError};
use s3ferry_engine::metrics::{self, RoundChanges, RoundResult};
use s3ferry_engine::plan::{same_content, signature, Action, BaseRecord, Check, MaxDelete};
use s3ferry_engine::ports::{
    invalidation_paths, Invalidator, MAX_INVALIDATION_PATHS, MAX_INVALIDATION_WILDCARDS,
};
use s3ferry_engine::spill::{Spill, SpillError};
use s3ferry_engine::transfer::{cleanup_orphan_uploads, copy_object_as, TransferConfig};
use s3ferry_engine::walk::{bases, entries, Entry, Join, Joined, Side, SideKind};
use s3ferry_store::{ErrorKind, PutMode, StoreError};
use serde::{Deserialize, Serialize};

use plan::{plan3, BiAction, Directions};

/// The job's namespace in the state database.
pub const JOB: &str = "bisync";

/// The default name of the lease object under the remote prefix.
pub const LOCK_NAME: &str = ".s3ferry.lock";

/// How a key changed on both sides (differently) is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The side modified last wins (local mtime against the object's stored mtime, else its
    /// Last-Modified).
    Newer,
    Local,
    Remote,
    /// The remote version keeps the name; the local one is renamed to
    /// `NAME.conflict-<node>-<UTC time>` and uploaded too.
    KeepBoth,
}

/// Make one side authoritative for a round (`--init`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Init {
    #[default]
    None,
    Up,
    Down,
}

#[derive(Clone)]
pub struct BisyncOptions {
    pub directions: Directions,
    /// Paths left out entirely (both ways, and from change detection).
    pub filters: Filters,
    /// Local changes to these paths are not pushed (`--up-exclude`).
    pub up_exclude: Filters,
    /// Remote changes to these paths are not pulled (`--down-exclude`).
    pub down_exclude: Filters,
    pub conflict: ConflictPolicy,
    /// This node's id (conflict copies, lease holder).
    pub node: String,
    pub max_delete: MaxDelete,
    pub concurrency: usize,
    pub transfer: TransferConfig,
    pub dry_run: bool,
    /// A stop request (a signal): a round starts no new copy or delete, lets the ones in flight
    /// finish (no upload is left open) and ends `interrupted`; the loop then ends `Stopped`.
    pub cancel: Cancel,
}

/// What one round did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RoundSummary {
    pub round: u64,
    pub up: u64,
    pub up_bytes: u64,
    pub down: u64,
    pub down_bytes: u64,
    pub deleted_local: u64,
    pub deleted_remote: u64,
    pub conflicts: u64,
    pub failed: u64,
    /// Keys that cannot be files here (`../x`, `a//b`): refused and listed, as sync does.
    #[serde(skip_serializing_if = "is_zero")]
    pub refused: u64,
    pub dry_run: bool,
    /// Stopped by a request before every planned key was settled (the next round goes on).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    pub elapsed_secs: f64,
    /// Remote keys (full keys in the bucket) this round wrote or deleted: the paths to
    /// invalidate.
    #[serde(skip)]
    pub remote_changed: Vec<String>,
}

impl RoundSummary {
    pub fn changed_anything(&self) -> bool {
        self.up + self.down + self.deleted_local + self.deleted_remote + self.conflicts > 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BisyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("state database: {0}")]
    Journal(String),
    #[error("not deleting {count} of {total} entries in {side} (--max-delete {limit}), nothing changed this round: {sample}")]
    DeleteLimit {
        count: u64,
        total: u64,
        limit: String,
        side: String,
        sample: String,
    },
    #[error("{side} lists empty, which would delete all {count} entries on the other side: not deleting, nothing changed this round (a missing mount or an emptied prefix?); --max-delete {count} allows it")]
    EmptySide { side: String, count: u64 },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("{failures} rounds in a row failed (--max-failures); last: {last}")]
    TooManyFailures { failures: u32, last: String },
}

impl From<SpillError> for BisyncError {
    fn from(e: SpillError) -> Self {
        BisyncError::Journal(e.to_string())
    }
}

/// Work one key needs, as planned.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
enum Step {
    Up,
    Down,
    DeleteLocal,
    DeleteRemote,
    /// Both sides changed with the same size: equal content → record, else a conflict.
    Check,
    Conflict,
    /// `--init`: make the other side match this one (by content).
    Authority(bool),
}

#[derive(Serialize, Deserialize)]
struct Planned {
    rel: String,
    l: Option<Entry>,
    r: Option<Entry>,
    step: Step,
    why: String,
}

struct Round {
    local: Side,
    remote: Side,
    opts: BisyncOptions,
    pair: String,
    journal: Arc<Journal>,
    reporter: Arc<dyn Reporter>,
    summary: Mutex<RoundSummary>,
    /// The run loop: concurrency, the stop request, the fatal latch.
    exec: Arc<Executor>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The key of a bisync pair in the state database: both sides with their endpoints.
pub fn pair_id(local: &Side, remote: &Side) -> String {
    format!("{} <-> {}", local.state_id(), remote.state_id())
}

impl Round {
    fn sum(&self) -> std::sync::MutexGuard<'_, RoundSummary> {
        self.summary.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, rel: &str, size: u64, e: &StoreError) {
        if e.kind == ErrorKind::InvalidInput && e.message.starts_with("unsafe key") {
            // A remote key that cannot be a file here: refused (not a failed "put"), as sync
            // refuses it.
            self.sum().refused += 1;
            self.exec
                .record(Record::new(rel, Outcome::Refuse, e.message.clone(), size));
            return;
        }
        self.sum().failed += 1;
        let r = Record::failure(rel, size, e);
        // A fatal error is kept with the key it stopped at.
        let key = e.key.clone().unwrap_or_else(|| rel.to_string());
        self.exec.fail(
            r,
            &StoreError::new(e.kind, e.op, e.message.clone()).with_key(key),
        );
    }

    fn remember(&self, rel: &str, l: &s3ferry_store::ObjectMeta, r: &s3ferry_store::ObjectMeta) {
        if let (Some(src_sig), Some(dst_sig)) = (
            signature(SideKind::Local, l),
            signature(SideKind::Remote, r),
        ) {
            self.journal
                .record_synced(JOB, &self.pair, rel, &BaseRecord { src_sig, dst_sig });
        }
    }

    /// Copy `e` one way and record the new base. `up`: local → remote, written only if the
    /// remote key is still as listed (`over`; absent = still absent): an object changed by
    /// someone else meanwhile is never overwritten — the next round sees both changes.
    async fn transfer(
        &self,
        e: &Entry,
        up: bool,
        why: &str,
        over: Option<&Entry>,
    ) -> Result<(), StoreError> {
        let size = e.meta.size;
        let (from, to, dir) = if up {
            (&self.local, &self.remote, "up")
        } else {
            (&self.remote, &self.local, "down")
        };
        if self.opts.dry_run {
            self.count_copy(up, size, &e.rel);
            self.reporter.record(&Record::new(
                &e.rel,
                Outcome::WouldCopy,
                format!("{dir}: {why}"),
                size,
            ));
            return Ok(());
        }
        let mode = match (up, over.and_then(|o| o.meta.etag.clone())) {
            (false, _) => PutMode::Overwrite,
            (true, Some(etag)) => PutMode::Update { etag },
            (true, None) if over.is_some() => PutMode::Overwrite,
            (true, None) => PutMode::Create,
        };
        let written = match copy_object_as(
            from,
            to,
            e,
            &self.opts.transfer,
            &self.journal,
            &self.reporter,
            mode,
        )
        .await
        {
            Ok(w) => w,
            Err(err)
                if up
                    && matches!(
                        err.kind,
                        ErrorKind::PreconditionFailed | ErrorKind::AlreadyExists
                    ) =>
            {
                self.reporter.note(&format!(
                    "{}: changed in S3 while this round ran; not overwritten (the next round settles it)",
                    e.rel
                ));
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        if up {
            self.remember(&e.rel, &e.meta, &written);
        } else {
            self.remember(&e.rel, &written, &e.meta);
        }
        self.count_copy(up, size, &e.rel);
        self.reporter.record(&Record::new(
            &e.rel,
            Outcome::Copy,
            format!("{dir}: {why}"),
            size,
        ));
        Ok(())
    }

    fn count_copy(&self, up: bool, size: u64, rel: &str) {
        let mut s = self.sum();
        if up {
            s.up += 1;
            s.up_bytes += size;
            s.remote_changed.push(self.remote.key(rel));
        } else {
            s.down += 1;
            s.down_bytes += size;
        }
    }

    /// Do both sides hold the same bytes? From metadata when it can tell, else by hashing the
    /// local file the way the object's ETag was made (cached by the state database).
    async fn identical(&self, l: &Entry, r: &Entry) -> Result<bool, StoreError> {
        if let Some(same) = same_content(&l.meta, &r.meta) {
            return Ok(same);
        }
        let a = resolve_check(
            Check::LocalEtag,
            &self.local,
            &self.remote,
            l,
            r,
            &self.journal,
            self.opts.transfer.part_size,
        )
        .await?;
        Ok(matches!(a, Action::Skip(_)))
    }

    async fn process(&self, p: Planned) {
        if self.exec.stopping() {
            return;
        }
        let size =
            p.l.as_ref()
                .or(p.r.as_ref())
                .map(|e| e.meta.size)
                .unwrap_or(0);
        if let Err(e) = self.step(&p).await {
            self.fail(&p.rel, size, &e);
        }
    }

    async fn step(&self, p: &Planned) -> Result<(), StoreError> {
        match (p.step, &p.l, &p.r) {
            (Step::Up, Some(l), r) => self.transfer(l, true, &p.why, r.as_ref()).await,
            (Step::Down, _, Some(r)) => self.transfer(r, false, &p.why, None).await,
            (Step::Check, Some(l), Some(r)) => {
                if self.identical(l, r).await? {
                    if !self.opts.dry_run {
                        self.remember(&p.rel, &l.meta, &r.meta);
                    }
                    Ok(())
                } else {
                    self.conflict(l, r).await
                }
            }
            (Step::Conflict, Some(l), Some(r)) => self.conflict(l, r).await,
            (Step::Authority(up), Some(l), Some(r)) => {
                if self.identical(l, r).await? {
                    if !self.opts.dry_run {
                        self.remember(&p.rel, &l.meta, &r.meta);
                    }
                    Ok(())
                } else if up {
                    self.transfer(l, true, "--init up", Some(r)).await
                } else {
                    self.transfer(r, false, "--init down", None).await
                }
            }
            (Step::Authority(true), Some(l), None) => {
                self.transfer(l, true, "--init up", None).await
            }
            (Step::Authority(false), None, Some(r)) => {
                self.transfer(r, false, "--init down", None).await
            }
            _ => Ok(()),
        }
    }

    /// Both sides changed, differently: settle by `--conflict`.
    async fn conflict(&self, l: &Entry, r: &Entry) -> Result<(), StoreError> {
        self.sum().conflicts += 1;
        let local_wins = match self.opts.conflict {
            ConflictPolicy::Local => Some(true),
            ConflictPolicy::Remote => Some(false),
            ConflictPolicy::Newer => {
                let rt = r.meta.mtime.or(r.meta.last_modified);
                Some(l.meta.mtime >= rt)
            }
            ConflictPolicy::KeepBoth => None,
        };
        if let Some(up) = local_wins {
            let why = format!(
                "conflict (changed on both sides): the {} version wins (--conflict)",
                if up { "local" } else { "remote" }
            );
            return if up {
                self.transfer(l, true, &why, Some(r)).await
            } else {
                self.transfer(r, false, &why, None).await
            };
        }
        // Keep both: the remote version keeps the name (other nodes already have it); the local
        // one moves aside under a name no other node uses, and goes up as well.
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let aside = format!("{}.conflict-{}-{stamp}", l.rel, self.opts.node);
        let why = format!("conflict (changed on both sides): local version kept as {aside}");
        if self.opts.dry_run {
            self.reporter.record(&Record::new(
                &l.rel,
                Outcome::WouldCopy,
                format!("down: {why}"),
                r.meta.size,
            ));
            return Ok(());
        }
        let store = &self.local.store;
        let (Some(from), Some(to)) = (
            store.local_path(&self.local.key(&l.rel)),
            store.local_path(&self.local.key(&aside)),
        ) else {
            return Err(StoreError::new(
                ErrorKind::Other,
                "conflict",
                "the local side is not a directory",
            ));
        };
        fs_err::rename(&from, &to)
            .map_err(|e| StoreError::new(ErrorKind::Other, "rename", e.to_string()))?;
        let moved = Entry {
            rel: aside.clone(),
            meta: store.head(&self.local.key(&aside)).await?,
        };
        self.transfer(&moved, true, "conflict copy of the local version", None)
            .await?;
        self.transfer(r, false, &why, None).await
    }

    /// Delete planned keys on one side, each only if it is still as listed (an edit made since
    /// the listing is never lost), and forget its base record.
    async fn delete(&self, rel: &str, listed: &Entry, local: bool) -> Result<(), StoreError> {
        let side = if local { &self.local } else { &self.remote };
        let key = side.key(rel);
        let kind = side.kind;
        if self.opts.dry_run {
            self.reporter.record(&Record::new(
                rel,
                Outcome::WouldDelete,
                if local {
                    "deleted remotely"
                } else {
                    "deleted locally"
                },
                listed.meta.size,
            ));
            return Ok(());
        }
        match side.store.head(&key).await {
            Ok(now) if signature(kind, &now) == signature(kind, &listed.meta) => {}
            Ok(_) => {
                // Changed since the listing: keep it; the next round copies it.
                self.reporter.note(&format!(
                    "{rel}: changed while this round ran; not deleted (the next round syncs it)"
                ));
                return Ok(());
            }
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(Err(e)) = side.store.delete_many(&[key]).await?.pop() {
            return Err(e);
        }
        self.journal.forget(JOB, &self.pair, rel);
        {
            let mut s = self.sum();
            if local {
                s.deleted_local += 1;
            } else {
                s.deleted_remote += 1;
                s.remote_changed.push(side.key(rel));
            }
        }
        self.reporter.record(&Record::new(
            rel,
            Outcome::Delete,
            if local {
                "down: deleted remotely"
            } else {
                "up: deleted locally"
            },
            listed.meta.size,
        ));
        Ok(())
    }
}

/// What the planning pass counted.
#[derive(Default)]
struct Counts {
    local: u64,
    remote: u64,
    del_local: u64,
    del_remote: u64,
    sample_local: Vec<String>,
    sample_remote: Vec<String>,
    listing_errors: u64,
}

fn check_limit(
    limit: MaxDelete,
    count: u64,
    total: u64,
    side: &Side,
    sample: &[String],
) -> Result<(), BisyncError> {
    if count == 0 || limit.allows(count, total) {
        return Ok(());
    }
    let more = if count as usize > sample.len() {
        ", …"
    } else {
        ""
    };
    Err(BisyncError::DeleteLimit {
        count,
        total,
        limit: limit.as_option(),
        side: side.describe(),
        sample: format!("{}{more}", sample.join(", ")),
    })
}

/// One round: plan every key, check the delete limits, then copy, settle conflicts, delete.
pub async fn round(
    local: &Side,
    remote: &Side,
    opts: &BisyncOptions,
    init: Init,
    journal: &Arc<Journal>,
    reporter: &Arc<dyn Reporter>,
) -> Result<RoundSummary, BisyncError> {
    let started = Instant::now();
    let jerr = |e: s3ferry_engine::journal::JournalError| BisyncError::Journal(e.to_string());
    let pair = pair_id(local, remote);
    if !opts.dry_run {
        let unfinished = journal.begin_run(JOB, &pair).await.map_err(jerr)?;
        let n = cleanup_orphan_uploads(&remote.store, journal, None).await
            + cleanup_orphan_uploads(&local.store, journal, unfinished.then_some(&*local.prefix))
                .await;
        if n > 0 {
            reporter.note(&format!(
                "cleaned up {n} unfinished uploads of an earlier run"
            ));
        }
    }
    let mut reserved = reserved_keys(local, journal.path());
    reserved.push(LOCK_NAME.to_string());
    let mut join = Join::new(vec![
        entries(local.list(&opts.filters)),
        entries(remote.list(&opts.filters)),
        bases(journal.base_stream(JOB, &pair)),
    ]);
    let rd = Arc::new(Round {
        local: local.clone(),
        remote: remote.clone(),
        opts: opts.clone(),
        pair: pair.clone(),
        journal: journal.clone(),
        reporter: reporter.clone(),
        summary: Mutex::new(RoundSummary {
            dry_run: opts.dry_run,
            ..Default::default()
        }),
        exec: Arc::new(Executor::new(
            opts.concurrency,
            opts.cancel.clone(),
            reporter.clone(),
        )),
    });

    // Pass 1: plan every key; change nothing.
    let mut work: Spill<Planned> = Spill::new()?;
    let mut deletes: Spill<Planned> = Spill::new()?;
    let mut c = Counts::default();
    while let Some(j) = join.next().await? {
        let mut row = match j {
            Joined::EntryError(_, e) => {
                let key = e.key.clone().unwrap_or_default();
                if e.kind == ErrorKind::InvalidInput {
                    // A name that cannot be synced (not UTF-8, reserved): listed, skipped.
                    reporter.record(&Record::new(&key, Outcome::Refuse, e.message.clone(), 0));
                } else {
                    c.listing_errors += 1;
                    rd.fail(&key, 0, &e);
                }
                continue;
            }
            Joined::Row(r) => r,
        };
        let (l, r, base) = (row.entry(0), row.entry(1), row.base(2));
        let rel = row.key;
        if is_reserved(&reserved, &rel) {
            continue;
        }
        c.local += l.is_some() as u64;
        c.remote += r.is_some() as u64;
        let (step, why) = match init {
            Init::Up | Init::Down => {
                let up = init == Init::Up;
                let (mine, theirs) = if up { (&l, &r) } else { (&r, &l) };
                match (mine, theirs) {
                    (Some(_), _) => (Some(Step::Authority(up)), ""),
                    (None, Some(_)) if up => (Some(Step::DeleteRemote), ""),
                    (None, Some(_)) => (Some(Step::DeleteLocal), ""),
                    (None, None) => {
                        if !opts.dry_run {
                            journal.forget(JOB, &pair, &rel);
                        }
                        (None, "")
                    }
                }
            }
            Init::None => {
                let mut d = opts.directions;
                if !opts.up_exclude.includes(&rel) {
                    (d.up, d.up_delete) = (false, false);
                }
                if !opts.down_exclude.includes(&rel) {
                    (d.down, d.down_delete) = (false, false);
                }
                match plan3(l.as_ref(), r.as_ref(), base.as_ref(), d) {
                    BiAction::Up(w) => (Some(Step::Up), w.as_str()),
                    BiAction::Down(w) => (Some(Step::Down), w.as_str()),
                    BiAction::DeleteLocal => (Some(Step::DeleteLocal), ""),
                    BiAction::DeleteRemote => (Some(Step::DeleteRemote), ""),
                    BiAction::Check => (Some(Step::Check), ""),
                    BiAction::Conflict => (Some(Step::Conflict), ""),
                    BiAction::Forget => {
                        if !opts.dry_run {
                            journal.forget(JOB, &pair, &rel);
                        }
                        (None, "")
                    }
                    BiAction::Unchanged | BiAction::KeepDeleted | BiAction::Held => (None, ""),
                }
            }
        };
        let Some(step) = step else { continue };
        let p = Planned {
            rel: rel.clone(),
            l,
            r,
            step,
            why: why.to_string(),
        };
        match step {
            Step::DeleteLocal => {
                c.del_local += 1;
                if c.sample_local.len() < 10 {
                    c.sample_local.push(rel);
                }
                deletes.push(&p)?;
            }
            Step::DeleteRemote => {
                c.del_remote += 1;
                if c.sample_remote.len() < 10 {
                    c.sample_remote.push(rel);
                }
                deletes.push(&p)?;
            }
            _ => work.push(&p)?,
        }
    }
    // One side listing empty while the base says it had entries is far more often a missing
    // mount or a transient listing than a wish to delete everything: only an explicit count
    // allows it.
    let explicit = |n: u64| matches!(opts.max_delete, MaxDelete::Count(m) if m >= n);
    if c.local == 0 && c.del_remote > 0 && !explicit(c.del_remote) {
        return Err(BisyncError::EmptySide {
            side: local.describe(),
            count: c.del_remote,
        });
    }
    if c.remote == 0 && c.del_local > 0 && !explicit(c.del_local) {
        return Err(BisyncError::EmptySide {
            side: remote.describe(),
            count: c.del_local,
        });
    }
    check_limit(
        opts.max_delete,
        c.del_local,
        c.local,
        local,
        &c.sample_local,
    )?;
    check_limit(
        opts.max_delete,
        c.del_remote,
        c.remote,
        remote,
        &c.sample_remote,
    )?;

    // Pass 2: copies and conflicts, then deletes (skipped when a listing had errors: a key
    // missing from a broken listing must never look deleted).
    let deletes_ok = c.listing_errors == 0;
    if !deletes_ok && !deletes.is_empty() {
        reporter.note(&format!(
            "not deleting {} entries this round: {} entries could not be listed",
            deletes.len(),
            c.listing_errors
        ));
    }
    let deletes = if deletes_ok { Some(deletes) } else { None };
    let exec = rd.exec.clone();
    let planned = futures::stream::iter(work.read_back()?).map(|p| p.map_err(BisyncError::from));
    exec.run(planned, |p: Planned, _| {
        if matches!(p.step, Step::Up | Step::Down) {
            let size = if p.step == Step::Up { &p.l } else { &p.r }
                .as_ref()
                .map(|e| e.meta.size)
                .unwrap_or(0);
            reporter.planned(1, size);
        }
        let rd = rd.clone();
        async move {
            rd.process(p).await;
            Done::Nothing
        }
    })
    .await?;
    if let Some(deletes) = deletes {
        let planned =
            futures::stream::iter(deletes.read_back()?).map(|p| p.map_err(BisyncError::from));
        exec.run(planned, |p: Planned, _| {
            let rd = rd.clone();
            async move {
                let (listed, local) = match (&p.step, &p.l, &p.r) {
                    (Step::DeleteLocal, Some(l), _) => (l, true),
                    (Step::DeleteRemote, _, Some(r)) => (r, false),
                    _ => return Done::Nothing,
                };
                if let Err(e) = rd.delete(&p.rel, listed, local).await {
                    rd.fail(&p.rel, listed.meta.size, &e);
                }
                Done::Nothing
            }
        })
        .await?;
    }
    journal.flush().await.map_err(jerr)?;
    if let Some(e) = exec.take_fatal() {
        return Err(e.into());
    }
    let interrupted = exec.interrupted();
    if !opts.dry_run && !interrupted {
        journal.end_run(JOB, &pair).await.map_err(jerr)?;
    }
    let mut s = rd.sum().clone();
    s.interrupted = interrupted;
    s.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(s)
}

/// The loop around rounds.
#[derive(Clone)]
pub struct LoopOptions {
    /// Time between rounds; `None` = one round, then return.
    pub poll: Option<Duration>,
    pub init: Init,
    /// Consecutive failed rounds before giving up (0 = never).
    pub max_failures: u32,
    /// Hold this lease (on the remote store) for each round.
    pub lock: Option<LeaseConfig>,
    /// Invalidate changed remote paths after a round that changed the remote side.
    pub invalidator: Option<Arc<dyn Invalidator>>,
    /// Invalidate these paths instead of the changed ones (`--cf-paths`).
    pub cf_paths: Option<Vec<String>>,
}

/// How the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// `--poll 0`: the one round is done; `true` if it had per-object failures.
    Once { failures: bool },
    /// Stopped on request (a signal) between or during rounds.
    Stopped,
}

/// Run rounds until `opts.cancel` is requested (or once, with `poll: None`). A stop during a
/// round lets the copies and deletes in flight finish (nothing new starts, no upload is left
/// open), reports the partial round, releases the lease and ends `Stopped`. `on_round` sees each
/// round's summary; `on_error` each failed round's error (the loop goes on until
/// `max_failures`).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    local: &Side,
    remote: &Side,
    opts: &BisyncOptions,
    lo: &LoopOptions,
    journal: &Arc<Journal>,
    reporter: &Arc<dyn Reporter>,
    on_round: &(dyn Fn(&RoundSummary) + Sync),
    on_error: &(dyn Fn(u64, &BisyncError) + Sync),
) -> Result<Ended, BisyncError> {
    let stop = &opts.cancel;
    let mut failures = 0u32;
    let mut init = lo.init;
    let mut n = 0u64;
    loop {
        n += 1;
        let started = std::time::Instant::now();
        metrics::global().round_started();
        let attempt: Result<Option<RoundSummary>, BisyncError> = async {
            if stop.is_requested() {
                return Ok(None);
            }
            let lease = match &lo.lock {
                Some(cfg) if !opts.dry_run => tokio::select! {
                    l = Lease::acquire(remote.store.clone(), cfg.clone()) => Some(l?),
                    () = stop.requested() => return Ok(None),
                },
                _ => None,
            };
            let work = round(local, remote, opts, init, journal, reporter);
            let mut s = with_lease(lease, work).await?;
            s.round = n;
            if !opts.dry_run && !s.remote_changed.is_empty() {
                if let Some(inv) = &lo.invalidator {
                    invalidate(
                        inv.as_ref(),
                        lo.cf_paths.as_deref(),
                        &s,
                        &opts.node,
                        reporter,
                    )
                    .await;
                }
            }
            Ok(Some(s))
        }
        .await;
        let r = match attempt {
            Ok(None) => {
                // Stopped on request before a round started (or while waiting for the lease).
                let _ = journal.flush().await;
                return Ok(Ended::Stopped);
            }
            Ok(Some(s)) if s.interrupted => {
                // Stopped during the round: what was in flight finished, the lease is released.
                on_round(&s);
                let _ = journal.flush().await;
                return Ok(Ended::Stopped);
            }
            Ok(Some(s)) => Ok(s),
            Err(e) => Err(e),
        };
        let failed_objects = match r {
            Ok(s) => {
                count_round(&s, started.elapsed());
                on_round(&s);
                init = Init::None;
                s.failed + s.refused > 0
            }
            Err(e) => {
                // Waiting for the lease past --lock-wait, or a lease that needs a feature the
                // store lacks, ends the loop at once.
                if matches!(
                    e,
                    BisyncError::Lease(LeaseError::WaitExpired { .. })
                        | BisyncError::Lease(LeaseError::Unsupported { .. })
                        | BisyncError::Lease(LeaseError::Garbled { .. })
                ) {
                    return Err(e);
                }
                metrics::global().round(
                    RoundResult::Failed,
                    started.elapsed(),
                    RoundChanges::default(),
                );
                if lo.poll.is_none() {
                    return Err(e); // reported once, by the caller
                }
                on_error(n, &e);
                failures += 1;
                if lo.max_failures > 0 && failures >= lo.max_failures {
                    return Err(BisyncError::TooManyFailures {
                        failures,
                        last: e.to_string(),
                    });
                }
                true
            }
        };
        if !failed_objects {
            failures = 0;
        }
        let Some(poll) = lo.poll else {
            return Ok(Ended::Once {
                failures: failed_objects,
            });
        };
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = stop.requested() => return Ok(Ended::Stopped),
        }
    }
}

/// A round that ran to its end, in the process's metrics.
fn count_round(s: &RoundSummary, took: Duration) {
    let result = if s.failed + s.refused > 0 {
        RoundResult::Partial
    } else {
        RoundResult::Ok
    };
    let changes = RoundChanges {
        up: s.up,
        down: s.down,
        deleted_local: s.deleted_local,
        deleted_remote: s.deleted_remote,
        conflicts: s.conflicts,
    };
    metrics::global().round(result, took, changes);
}

/// `s3ferry_lease_held` is 1 while this lives.
struct Held;

impl Held {
    fn new() -> Self {
        metrics::global().lease_held(true);
        Held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::global().lease_held(false);
    }
}

/// Run `work` while holding `lease` (renewed in the background at a third of its timeout),
/// then release it. A lease lost to a takeover stops the work at once. (A stop request is the
/// work's own to honour: it finishes what is in flight first.)
async fn with_lease<T>(
    lease: Option<Lease>,
    work: impl std::future::Future<Output = Result<T, BisyncError>>,
) -> Result<T, BisyncError> {
    tokio::pin!(work);
    let Some(mut lease) = lease else {
        return work.await;
    };
    let _held = Held::new();
    let every = lease.renew_every().max(Duration::from_millis(100));
    let r = loop {
        tokio::select! {
            // The renewal first: after a pause (SIGSTOP, a frozen VM or container) its timer is
            // overdue, so the lease is settled before the work takes another step, and a lease
            // taken over meanwhile stops the work before it writes again (F23).
            biased;
            () = tokio::time::sleep(every) => {
                if let Err(e) = lease.renew().await {
                    if matches!(e, LeaseError::Lost { .. }) {
                        return Err(e.into());
                    }
                    if lease.outlived() {
                        // Not renewed within the timeout: another node may hold it by now.
                        return Err(LeaseError::Lost {
                            key: lease.key().to_string(),
                            by: format!("nobody known: it could not be renewed in time ({e})"),
                        }
                        .into());
                    }
                    tracing::warn!("renewing the lease: {e}");
                }
            }
            r = &mut work => break r,
        }
    };
    if let Err(e) = lease.release().await {
        tracing::warn!("releasing the lease: {e}");
    }
    r
}

/// Invalidate what the round changed on the remote side (or the fixed `--cf-paths`), in
/// requests of at most [`MAX_INVALIDATION_PATHS`]. A failure is reported, not fatal: the files
/// are synced; only the cache may be stale.
async fn invalidate(
    inv: &dyn Invalidator,
    fixed: Option<&[String]>,
    s: &RoundSummary,
    node: &str,
    reporter: &Arc<dyn Reporter>,
) {
    let paths = match fixed {
        Some(p) => p.to_vec(),
        None => invalidation_paths(
            &s.remote_changed,
            MAX_INVALIDATION_PATHS,
            MAX_INVALIDATION_WILDCARDS,
        ),
    };
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    for (i, chunk) in paths.chunks(MAX_INVALIDATION_PATHS).enumerate() {
        let reference = format!("s3ferry-{node}-{stamp}-{i}");
        match inv.invalidate(chunk, &reference).await {
            Ok(id) => reporter.note(&format!(
                "CDN invalidation {id} of {} paths started",
                chunk.len()
            )),
            Err(e) => reporter.note(&format!("CDN invalidation failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests;
