//! One-way sync: make the destination match the source.
//!
//! 1. Check both sides exist; abort multipart uploads / temp files a killed run left behind.
//! 2. With `--delete`: a names-only pre-pass counts what would be deleted and refuses, before
//!    any change, if that exceeds the limit.
//! 3. Merge-join the two sorted listings, plan each key (pure), and run transfers and content
//!    checks concurrently as they are planned. Each finished key is recorded in the state DB.
//! 4. Retry failed transfers once (job-level tier), then delete — unless the source listing
//!    had errors, in which case deletes are suppressed for this run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use s3ferry_engine::events::{Record, Reporter, Summary};
use s3ferry_engine::filter::Filters;
use s3ferry_engine::identity::resolve_check;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::plan::{plan, signature, Action, BaseRecord, PlanOptions};
use s3ferry_engine::transfer::{copy_object, sweep_stray_uploads, TransferConfig, PENDING_UPLOAD};
use s3ferry_engine::walk::{Entry, Joined, MergeJoin, Side, SideKind};
use s3ferry_store::{ErrorKind, StoreError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How many deletions are allowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaxDelete {
    Count(u64),
    Percent(f64),
}

impl MaxDelete {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            || format!("bad --max-delete {s:?}: use a count like 100 or a percentage like 25%");
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let v: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&v) {
                    return Err(bad());
                }
                Ok(Self::Percent(v))
            }
            None => s.trim().parse().map(Self::Count).map_err(|_| bad()),
        }
    }

    fn allows(&self, deletes: u64, total: u64) -> bool {
        match *self {
            Self::Count(n) => deletes <= n,
            Self::Percent(p) => total == 0 || (deletes as f64) <= (total as f64) * p / 100.0,
        }
    }
}

/// The default limit: deletions may remove at most half of the destination.
pub const DEFAULT_MAX_DELETE: MaxDelete = MaxDelete::Percent(50.0);

#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub plan: PlanOptions,
    pub filters: Filters,
    pub dry_run: bool,
    pub max_delete: MaxDelete,
    /// `--max-delete` was given explicitly (then an empty source may empty the destination).
    pub max_delete_explicit: bool,
    /// Objects in flight.
    pub concurrency: usize,
    pub transfer: TransferConfig,
    /// Retry failed transfers once at the end of the run.
    pub retry_failed: bool,
}

/// Why a sync did not run or stopped (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("refusing to delete {count} of {total} objects in {dst} (limit {limit}); first ones: {sample}. Re-run with --max-delete {count} (or a percentage) to allow it, or --dry-run to see the whole plan")]
    DeleteLimit {
        count: u64,
        total: u64,
        limit: String,
        dst: String,
        sample: String,
    },
    #[error("refusing to delete all {total} objects of {dst}: the source {src} is empty. If that is really what you want, re-run with an explicit --max-delete")]
    EmptySource {
        total: u64,
        src: String,
        dst: String,
    },
    #[error("{0}")]
    Journal(String),
}

struct Shared {
    src: Side,
    dst: Side,
    opts: SyncOptions,
    pair: String,
    journal: Arc<Journal>,
    reporter: Arc<dyn Reporter>,
    summary: Mutex<Summary>,
    failed_retryable: Mutex<Vec<Entry>>,
    fatal: Mutex<Option<StoreError>>,
    stop: AtomicBool,
}

impl Shared {
    fn record(&self, r: Record) {
        {
            let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
            match r.action {
                "copy" | "would-copy" => {
                    s.copied += 1;
                    s.copied_bytes += r.size;
                }
                "delete" | "would-delete" => s.deleted += 1,
                "skip" => s.skipped += 1,
                "refuse" => s.refused += 1,
                "fail" => s.failed += 1,
                _ => {}
            }
        }
        self.reporter.record(&r);
    }

    fn fail(&self, rel: &str, size: u64, e: &StoreError) {
        if e.kind.fatal() {
            let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(
                    StoreError::new(e.kind, e.op, e.message.clone())
                        .with_key(e.key.clone().unwrap_or_default()),
                );
            }
            self.stop.store(true, Ordering::SeqCst);
        }
        self.record(Record {
            key: rel.to_string(),
            action: "fail",
            reason: e.kind.as_str().into(),
            size,
            error: Some(e.to_string()),
        });
    }

    fn remember(&self, s: &Entry, dst_meta: &s3ferry_store::ObjectMeta) {
        let (Some(src_sig), Some(dst_sig)) = (
            signature(self.src.kind, &s.meta),
            signature(self.dst.kind, dst_meta),
        ) else {
            return;
        };
        if let Err(e) =
            self.journal
                .record_synced(&self.pair, &s.rel, BaseRecord { src_sig, dst_sig })
        {
            tracing::warn!("{e}");
        }
    }

    /// Copy `s` (planned for `reason`), record the outcome.
    async fn copy(&self, s: &Entry, reason: &str, retry_list: bool) {
        if self.opts.dry_run {
            self.record(Record {
                key: s.rel.clone(),
                action: "would-copy",
                reason: reason.into(),
                size: s.meta.size,
                error: None,
            });
            return;
        }
        match copy_object(
            &self.src,
            &self.dst,
            s,
            &self.opts.transfer,
            &self.journal,
            &self.reporter,
        )
        .await
        {
            Ok(dm) => {
                self.remember(s, &dm);
                self.record(Record {
                    key: s.rel.clone(),
                    action: "copy",
                    reason: reason.into(),
                    size: s.meta.size,
                    error: None,
                });
            }
            Err(e)
                if retry_list
                    && self.opts.retry_failed
                    && (e.retryable()
                        || e.kind == ErrorKind::PreconditionFailed
                        || (e.kind == ErrorKind::AlreadyExists
                            && self.dst.kind == SideKind::Local)) =>
            {
                tracing::debug!("will retry {}: {e}", s.rel);
                self.failed_retryable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(s.clone());
            }
            Err(e) => self.fail(&s.rel, s.meta.size, &e),
        }
    }

    async fn process(&self, s: Entry, d: Option<Entry>, action: Action) {
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        match action {
            Action::Copy(r) => self.copy(&s, r.as_str(), true).await,
            Action::Check(c) => {
                let Some(d) = d else { return };
                match resolve_check(
                    c,
                    &self.src,
                    &self.dst,
                    &s,
                    &d,
                    &self.journal,
                    self.opts.transfer.part_size,
                )
                .await
                {
                    Ok(Action::Skip(r)) => {
                        if !self.opts.dry_run {
                            self.remember(&s, &d.meta);
                        }
                        self.record(Record {
                            key: s.rel,
                            action: "skip",
                            reason: r.as_str().into(),
                            size: d.meta.size,
                            error: None,
                        });
                    }
                    Ok(Action::Copy(r)) => self.copy(&s, r.as_str(), true).await,
                    Ok(_) => {}
                    Err(e) => self.fail(&s.rel, s.meta.size, &e),
                }
            }
            _ => {}
        }
    }
}

/// Run a one-way sync from `src` to `dst`.
pub async fn run(
    src: Side,
    dst: Side,
    mut opts: SyncOptions,
    journal: Arc<Journal>,
    reporter: Arc<dyn Reporter>,
) -> Result<Summary, SyncError> {
    let started = Instant::now();
    opts.plan.src_kind = Some(src.kind);
    opts.plan.dst_kind = Some(dst.kind);
    opts.plan.since = opts.filters.since;
    src.store.check().await?;
    match dst.store.check().await {
        // A dry run into a directory that does not exist yet: everything would be new.
        Err(e)
            if opts.dry_run
                && dst.kind == SideKind::Local
                && e.kind == ErrorKind::BucketNotFound => {}
        r => r?,
    }
    let pair = pair_id(&src, &dst);
    if !opts.dry_run {
        let unfinished = journal
            .begin_run(&pair)
            .map_err(|e| SyncError::Journal(e.to_string()))?;
        cleanup_orphans(&dst, &journal, reporter.as_ref(), unfinished).await;
    }
    if opts.plan.delete {
        delete_prepass(&src, &dst, &opts).await?;
    }
    let concurrency = opts.concurrency.max(1);
    let sh = Arc::new(Shared {
        src,
        dst,
        opts,
        pair,
        journal,
        reporter,
        summary: Mutex::new(Summary::default()),
        failed_retryable: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        stop: AtomicBool::new(false),
    });
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let mut deletes: Vec<(String, u64)> = Vec::new();
    let mut src_errors = 0u64;
    let mut join = MergeJoin::new(sh.src.list(&sh.opts.filters), sh.dst.list(&sh.opts.filters));
    let listing: Result<(), StoreError> = async {
        while let Some(j) = join.next().await? {
            if sh.stop.load(Ordering::SeqCst) {
                break;
            }
            let (s, d) = match j {
                Joined::EntryError(from_src, e) => {
                    src_errors += from_src as u64;
                    sh.fail(e.key.as_deref().unwrap_or(""), 0, &e);
                    continue;
                }
                Joined::Pair(s, d) => (s, d),
            };
            let rel = s
                .as_ref()
                .or(d.as_ref())
                .map(|e| e.rel.clone())
                .unwrap_or_default();
            let base = if s.is_some() && d.is_some() && !sh.opts.plan.checksum {
                sh.journal
                    .base(&sh.pair, &rel)
                    .map_err(|e| StoreError::new(ErrorKind::Other, "state", e.to_string()))?
            } else {
                None
            };
            let action = plan(s.as_ref(), d.as_ref(), base.as_ref(), &sh.opts.plan);
            match (action, s) {
                (Action::Delete, _) => deletes.push((rel, d.map(|e| e.meta.size).unwrap_or(0))),
                (Action::Extra, _) => {}
                (Action::Skip(r), _) => sh.record(Record {
                    key: rel,
                    action: "skip",
                    reason: r.as_str().into(),
                    size: 0,
                    error: None,
                }),
                (Action::Refuse(w), s) => sh.record(Record {
                    key: rel,
                    action: "refuse",
                    reason: format!("unsafe key: {w}"),
                    size: s.map(|e| e.meta.size).unwrap_or(0),
                    error: None,
                }),
                (action, Some(s)) => {
                    if let Action::Copy(_) = action {
                        sh.reporter.planned(1, s.meta.size);
                    }
                    let permit = permits.clone().acquire_owned().await.map_err(|_| {
                        StoreError::new(ErrorKind::Other, "sync", "scheduler closed")
                    })?;
                    let sh2 = sh.clone();
                    tasks.spawn(async move {
                        sh2.process(s, d, action).await;
                        drop(permit);
                    });
                }
                (_, None) => {}
            }
            // Reap finished tasks so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        Ok(())
    }
    .await;
    while tasks.join_next().await.is_some() {}
    if let Err(e) = listing {
        sh.stop.store(true, Ordering::SeqCst);
        let _ = sh.journal.flush();
        return Err(e.into());
    }
    if let Some(e) = sh.fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = sh.journal.flush();
        return Err(e.into());
    }
    if !deletes.is_empty() {
        if src_errors > 0 {
            let msg = format!(
                "not deleting {} objects: {src_errors} source entries could not be listed",
                deletes.len()
            );
            sh.reporter.note(&msg);
            sh.summary
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .deletes_suppressed = Some(msg);
        } else {
            run_deletes(&sh, deletes).await;
        }
    }
    // Job-level retry tier, after the deletes: one more attempt for transfers that failed with a
    // retryable error, or because a local path was in the way of a file that a delete removed
    // (`a` replacing a directory `a/`), with a fresh look at the source.
    let retry: Vec<Entry> = std::mem::take(
        &mut *sh
            .failed_retryable
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    let job_retries = retry.len() as u64;
    for s in retry {
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        let permit = permits.clone().acquire_owned().await;
        let sh2 = sh.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let fresh = match sh2.src.store.head(&sh2.src.key(&s.rel)).await {
                Ok(m) => Entry {
                    rel: s.rel.clone(),
                    meta: s3ferry_store::ObjectMeta {
                        key: m.key.clone(),
                        ..m
                    },
                },
                Err(e) => return sh2.fail(&s.rel, s.meta.size, &e),
            };
            sh2.copy(&fresh, "retry", false).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    if let Some(e) = sh.fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = sh.journal.flush();
        return Err(e.into());
    }
    sh.journal
        .flush()
        .map_err(|e| SyncError::Journal(e.to_string()))?;
    if !sh.opts.dry_run {
        sh.journal
            .end_run(&sh.pair)
            .map_err(|e| SyncError::Journal(e.to_string()))?;
    }
    let mut summary = sh.summary.lock().unwrap_or_else(|p| p.into_inner()).clone();
    summary.dry_run = sh.opts.dry_run;
    // Request-level retries are added by whoever owns the retry layer (the CLI); these are the
    // engine's own: resumed body reads and the job-level retry tier.
    summary.retries += sh
        .opts
        .transfer
        .resumes
        .load(std::sync::atomic::Ordering::Relaxed)
        + job_retries;
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(summary)
}

async fn run_deletes(sh: &Shared, deletes: Vec<(String, u64)>) {
    for chunk in deletes.chunks(1000) {
        if sh.opts.dry_run {
            for (rel, size) in chunk {
                sh.record(Record {
                    key: rel.clone(),
                    action: "would-delete",
                    reason: "not in source".into(),
                    size: *size,
                    error: None,
                });
            }
            continue;
        }
        let keys: Vec<String> = chunk.iter().map(|(r, _)| sh.dst.key(r)).collect();
        match sh.dst.store.delete_many(&keys).await {
            Ok(results) => {
                for ((rel, size), r) in chunk.iter().zip(results) {
                    match r {
                        Ok(()) => {
                            let _ = sh.journal.forget(&sh.pair, rel);
                            sh.record(Record {
                                key: rel.clone(),
                                action: "delete",
                                reason: "not in source".into(),
                                size: *size,
                                error: None,
                            });
                        }
                        Err(e) => sh.fail(rel, *size, &e),
                    }
                }
            }
            Err(e) => {
                for (rel, size) in chunk {
                    sh.fail(rel, *size, &e);
                }
            }
        }
    }
}

/// Count what `--delete` would remove and refuse before any change if it is over the limit.
async fn delete_prepass(src: &Side, dst: &Side, opts: &SyncOptions) -> Result<(), SyncError> {
    let mut join = MergeJoin::new(src.list(&opts.filters), dst.list(&opts.filters));
    let (mut count, mut total, mut src_count) = (0u64, 0u64, 0u64);
    let mut sample = Vec::new();
    while let Some(j) = join.next().await? {
        if let Joined::Pair(s, d) = j {
            src_count += s.is_some() as u64;
            if let Some(d) = d {
                total += 1;
                if s.is_none() {
                    count += 1;
                    if sample.len() < 10 {
                        sample.push(d.rel);
                    }
                }
            }
        }
    }
    if count == 0 {
        return Ok(());
    }
    if src_count == 0 && !opts.max_delete_explicit {
        return Err(SyncError::EmptySource {
            total,
            src: src.describe(),
            dst: dst.describe(),
        });
    }
    if !opts.max_delete.allows(count, total) {
        let limit = match opts.max_delete {
            MaxDelete::Count(n) => format!("{n}"),
            MaxDelete::Percent(p) => format!("{p}%"),
        };
        let more = if count as usize > sample.len() {
            ", …"
        } else {
            ""
        };
        return Err(SyncError::DeleteLimit {
            count,
            total,
            limit,
            dst: dst.describe(),
            sample: format!("{}{more}", sample.join(", ")),
        });
    }
    Ok(())
}

/// The key of a sync pair in the state database.
pub fn pair_id(src: &Side, dst: &Side) -> String {
    format!("{} -> {}", src.describe(), dst.describe())
}

/// Abort the uploads an earlier run recorded and never finished. Temp files in a local
/// destination are looked for (a walk of the whole tree) only when the last run of this pair
/// did not end: a run that ends leaves none.
async fn cleanup_orphans(dst: &Side, journal: &Journal, reporter: &dyn Reporter, unfinished: bool) {
    let store_id = dst.store.describe();
    let mut orphans = journal.orphan_uploads(&store_id).unwrap_or_default();
    if dst.kind == SideKind::Local && unfinished {
        if let Ok(ups) = dst.store.list_multipart(&dst.prefix).await {
            let now = std::time::SystemTime::now();
            orphans.extend(ups.into_iter().map(|u| (u.key, u.upload_id, now)));
        }
    }
    // One upload can have two rows (the intent and its id): count uploads, not rows.
    let n = orphans
        .iter()
        .filter(|(k, id, _)| {
            id != PENDING_UPLOAD
                || !orphans
                    .iter()
                    .any(|(k2, id2, _)| k2 == k && id2 != PENDING_UPLOAD)
        })
        .count();
    for (key, id, started) in orphans {
        if id == PENDING_UPLOAD {
            // Killed between noting the intent and learning the upload id (or the answer to
            // the create was lost): find the upload by key and start time.
            sweep_stray_uploads(&dst.store, &key, None, started).await;
            let _ = journal.upload_ended(&store_id, &key, &id);
            continue;
        }
        match dst.store.abort_multipart(&key, &id).await {
            Ok(())
            | Err(StoreError {
                kind: ErrorKind::NotFound,
                ..
            }) => {
                let _ = journal.upload_ended(&store_id, &key, &id);
            }
            Err(e) => tracing::warn!("could not abort an unfinished upload of {key}: {e}"),
        }
    }
    if n > 0 {
        reporter.note(&format!(
            "cleaned up {n} unfinished upload(s) from an earlier run"
        ));
    }
}

impl SyncOptions {
    pub fn new(transfer: TransferConfig) -> Self {
        Self {
            plan: PlanOptions::default(),
            filters: Filters::default(),
            dry_run: false,
            max_delete: DEFAULT_MAX_DELETE,
            max_delete_explicit: false,
            concurrency: 64,
            transfer,
            retry_failed: true,
        }
    }
}
