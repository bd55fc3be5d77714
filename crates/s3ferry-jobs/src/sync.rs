//! One-way sync: make the destination match the source.
//!
//! 1. Check both sides exist; abort multipart uploads / temp files a killed run left behind.
//! 2. Join the two sorted listings and the pair's base records (the state of each key after
//!    its last sync) by key, and plan each key (pure).
//! 3. Without `--delete`, transfers and content checks run concurrently as keys are planned.
//!    With `--delete`, the whole listing is planned first (the work spilled to disk, memory
//!    flat) so a delete count over the limit is refused before any change; then the planned
//!    work runs. Each finished key is recorded in the state DB.
//! 4. Retry failed transfers once (job-level tier), then delete — unless the source listing
//!    had errors, in which case deletes are suppressed for this run.

use std::sync::Arc;

use futures::StreamExt;
use s3ferry_engine::events::{Outcome, Record, Reporter, Summary, NOT_SYNCED};
use s3ferry_engine::exec::{Cancel, Done, Executor, Pass};
use s3ferry_engine::filter::Filters;
use s3ferry_engine::identity::resolve_check;
use s3ferry_engine::journal::{is_reserved, reserved_keys, Journal};
use s3ferry_engine::plan::{plan, signature, Action, BaseRecord, Check, CopyReason, PlanOptions};
use s3ferry_engine::spill::{Spill, SpillError};
use s3ferry_engine::transfer::{cleanup_orphan_uploads, copy_object, TransferConfig};
use s3ferry_engine::walk::{
    bases, entries, is_skipped_entry, Entry, Join, JoinInput, Joined, Side, SideKind,
};
use s3ferry_store::{ErrorKind, StoreError};
use serde::{Deserialize, Serialize};

/// The job name of sync's records in the state database.
pub const JOB: &str = "sync";

pub use s3ferry_engine::plan::MaxDelete;

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
    /// Requested (by a signal handler) to stop cleanly: no new transfers, the ones in flight
    /// finish, no deletes, and the run stays "unfinished" so the next one sweeps what it left.
    pub cancel: Cancel,
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
    /// The run loop: concurrency, cancellation, the fatal latch, counts, the retry pass.
    exec: Arc<Executor>,
}

/// Work a key needs, as planned (spilled to disk between the two passes of a `--delete` run).
#[derive(Serialize, Deserialize)]
enum Work {
    Copy(CopyReason),
    Check(Check),
}

#[derive(Serialize, Deserialize)]
struct Planned {
    s: Entry,
    d: Option<Entry>,
    work: Work,
}

impl From<SpillError> for SyncError {
    fn from(e: SpillError) -> Self {
        SyncError::Journal(e.to_string())
    }
}

impl Shared {
    /// A fatal error or an interrupt: start no more work.
    fn stopping(&self) -> bool {
        self.exec.stopping()
    }

    fn record(&self, r: Record) {
        self.exec.record(r);
    }

    fn fail(&self, rel: &str, size: u64, e: &StoreError) {
        self.exec.fail(Record::failure(rel, size, e), e);
    }

    fn remember(&self, s: &Entry, dst_meta: &s3ferry_store::ObjectMeta) {
        let (Some(src_sig), Some(dst_sig)) = (
            signature(self.src.kind, &s.meta),
            signature(self.dst.kind, dst_meta),
        ) else {
            return;
        };
        self.journal
            .record_synced(JOB, &self.pair, &s.rel, &BaseRecord { src_sig, dst_sig });
    }

    /// Copy `s` (planned for `reason`); a retryable failure in the first pass is handed back
    /// for the retry pass.
    async fn copy(&self, s: Entry, reason: &str, pass: Pass) -> Done<Planned> {
        if self.opts.dry_run {
            return Done::Record(Record::new(
                s.rel.clone(),
                Outcome::WouldCopy,
                reason,
                s.meta.size,
            ));
        }
        match copy_object(
            &self.src,
            &self.dst,
            &s,
            &self.opts.transfer,
            &self.journal,
            &self.reporter,
        )
        .await
        {
            Ok(dm) => {
                self.remember(&s, &dm);
                Done::Record(Record::new(
                    s.rel.clone(),
                    Outcome::Copy,
                    reason,
                    s.meta.size,
                ))
            }
            Err(e)
                if pass == Pass::First
                    && self.opts.retry_failed
                    && (e.retryable()
                        || e.kind == ErrorKind::PreconditionFailed
                        || (e.kind == ErrorKind::AlreadyExists
                            && self.dst.kind == SideKind::Local)) =>
            {
                let r = Record::failure(&s.rel, s.meta.size, &e);
                let p = Planned {
                    s,
                    d: None,
                    work: Work::Copy(CopyReason::Changed),
                };
                Done::Retry(p, r, e)
            }
            Err(e) => Done::failed(&s.rel, s.meta.size, e),
        }
    }

    /// One planned key (first pass), or a key whose copy failed retryably (retry pass: with a
    /// fresh look at the source).
    async fn process(&self, p: Planned, pass: Pass) -> Done<Planned> {
        let Planned { s, d, work } = p;
        if pass == Pass::Retry {
            return match self.src.store.head(&self.src.key(&s.rel)).await {
                Ok(m) => {
                    let fresh = Entry {
                        rel: s.rel.clone(),
                        meta: s3ferry_store::ObjectMeta {
                            key: m.key.clone(),
                            ..m
                        },
                    };
                    self.copy(fresh, "retry", pass).await
                }
                Err(e) => Done::failed(&s.rel, s.meta.size, e),
            };
        }
        match work {
            Work::Copy(r) => self.copy(s, r.as_str(), pass).await,
            Work::Check(c) => {
                let Some(d) = d else { return Done::Nothing };
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
                        Done::Record(Record::new(s.rel, Outcome::Skip, r.as_str(), d.meta.size))
                    }
                    Ok(Action::Copy(r)) => self.copy(s, r.as_str(), pass).await,
                    Ok(_) => Done::Nothing,
                    Err(e) => Done::failed(&s.rel, s.meta.size, e),
                }
            }
        }
    }
}

/// What the listing pass counted for the delete limit.
#[derive(Default)]
struct Counts {
    src: u64,
    dst: u64,
    deletes: u64,
    sample: Vec<String>,
    src_errors: u64,
}

/// Turns the join of the listings into planned work: skips and refusals are recorded as they
/// come, deletes go to a spill, work is handed out.
struct Planner {
    join: Join,
    counts: Counts,
    deletes: Spill<(String, u64)>,
    /// Keys of the state database's own files inside a synced directory.
    reserved: Vec<String>,
    /// Keys the source listing skipped (symlinks, special files) whose rows have not come yet
    /// (a skipped key comes before the row of the same key from the other inputs).
    skipped_src: std::collections::BTreeSet<String>,
}

impl Planner {
    async fn next(&mut self, sh: &Shared) -> Result<Option<Planned>, SyncError> {
        while let Some(j) = self.join.next().await? {
            if sh.stopping() {
                return Ok(None);
            }
            let mut row = match j {
                Joined::EntryError(input, e) if is_skipped_entry(&e) => {
                    // A symlink or special file: never opened, reported as skipped; its key
                    // is not deleted at the destination either.
                    let key = e.key.clone().unwrap_or_default();
                    if input == 0 {
                        let why = format!("{NOT_SYNCED}{}", e.message);
                        sh.record(Record::new(key.clone(), Outcome::Skip, why, 0));
                    }
                    self.skipped_src.insert(key);
                    continue;
                }
                Joined::EntryError(input, e) => {
                    self.counts.src_errors += (input == 0) as u64;
                    let key = e.key.clone().unwrap_or_default();
                    if e.kind == ErrorKind::InvalidInput {
                        // A name that cannot be synced (reserved, not UTF-8): refused, listed.
                        sh.record(Record::new(key, Outcome::Refuse, e.message.clone(), 0));
                    } else {
                        sh.fail(&key, 0, &e);
                    }
                    continue;
                }
                Joined::Row(r) => r,
            };
            let (s, d, base) = (row.entry(0), row.entry(1), row.base(2));
            let rel = row.key;
            if is_reserved(&self.reserved, &rel) {
                if s.is_some() || d.is_some() {
                    sh.record(Record::new(
                        rel,
                        Outcome::Refuse,
                        "the state database of s3ferry itself; never synced",
                        0,
                    ));
                }
                continue;
            }
            self.counts.src += s.is_some() as u64;
            self.counts.dst += d.is_some() as u64;
            if s.is_none() && d.is_none() {
                continue; // only the base has it: gone from both sides
            }
            if !self.skipped_src.is_empty() {
                // Skipped keys come before the rows of the same key; older ones are done with.
                self.skipped_src = self.skipped_src.split_off(&rel);
                if s.is_none() && self.skipped_src.remove(&rel) {
                    continue; // the source has it as a symlink or special file: leave it alone
                }
            }
            let base = base.filter(|_| s.is_some() && d.is_some() && !sh.opts.plan.checksum);
            let action = plan(s.as_ref(), d.as_ref(), base.as_ref(), &sh.opts.plan);
            match (action, s) {
                (Action::Delete, _) => {
                    let size = d.map(|e| e.meta.size).unwrap_or(0);
                    self.counts.deletes += 1;
                    if self.counts.sample.len() < 10 {
                        self.counts.sample.push(rel.clone());
                    }
                    self.deletes.push(&(rel, size))?;
                }
                (Action::Extra, _) => {}
                (Action::Skip(r), _) => sh.record(Record::new(rel, Outcome::Skip, r.as_str(), 0)),
                (Action::Refuse(w), s) => sh.record(Record::new(
                    rel,
                    Outcome::Refuse,
                    format!("unsafe key: {w}"),
                    s.map(|e| e.meta.size).unwrap_or(0),
                )),
                (Action::Copy(r), Some(s)) => {
                    return Ok(Some(Planned {
                        s,
                        d,
                        work: Work::Copy(r),
                    }))
                }
                (Action::Check(c), Some(s)) => {
                    return Ok(Some(Planned {
                        s,
                        d,
                        work: Work::Check(c),
                    }))
                }
                (_, None) => {}
            }
        }
        Ok(None)
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
    let mut deletes_suppressed = None;
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
    let jerr = |e: s3ferry_engine::journal::JournalError| SyncError::Journal(e.to_string());
    let pair = pair_id(&src, &dst);
    if !opts.dry_run {
        let unfinished = journal.begin_run(JOB, &pair).await.map_err(jerr)?;
        cleanup_orphans(&dst, &journal, reporter.as_ref(), unfinished).await;
    }
    let mut reserved = reserved_keys(&src, journal.path());
    reserved.extend(reserved_keys(&dst, journal.path()));
    let base_input: JoinInput = if opts.plan.checksum {
        futures::stream::empty().boxed()
    } else {
        bases(journal.base_stream(JOB, &pair))
    };
    let join = Join::new(vec![
        entries(src.list_reporting(&opts.filters, true)),
        entries(dst.list(&opts.filters)),
        base_input,
    ]);
    let exec = Arc::new(Executor::new(
        opts.concurrency,
        opts.cancel.clone(),
        reporter.clone(),
    ));
    let sh = Arc::new(Shared {
        src,
        dst,
        opts,
        pair,
        journal,
        reporter,
        exec: exec.clone(),
    });
    let mut planner = Planner {
        join,
        counts: Counts::default(),
        deletes: Spill::new()?,
        reserved,
        skipped_src: Default::default(),
    };
    let apply = |p: Planned, pass: Pass| {
        if pass == Pass::First {
            if let Work::Copy(_) = p.work {
                sh.reporter.planned(1, p.s.meta.size);
            }
        }
        let sh = sh.clone();
        async move { sh.process(p, pass).await }
    };
    let listing: Result<_, SyncError> = async {
        if sh.opts.plan.delete {
            // Pass 1: plan everything, change nothing; the limit is checked before any change.
            let mut work: Spill<Planned> = Spill::new()?;
            while let Some(p) = planner.next(&sh).await? {
                work.push(&p)?;
            }
            check_delete_limit(&sh, &planner.counts)?;
            let planned =
                futures::stream::iter(work.read_back()?).map(|r| r.map_err(SyncError::from));
            exec.run(planned, apply).await
        } else {
            let planned =
                futures::stream::unfold((&mut planner, &sh), |(planner, sh)| async move {
                    match planner.next(sh).await {
                        Ok(Some(p)) => Some((Ok(p), (planner, sh))),
                        Ok(None) => None,
                        Err(e) => Some((Err(e), (planner, sh))),
                    }
                });
            exec.run(planned, apply).await
        }
    }
    .await;
    let left = match listing {
        Ok(left) => left,
        Err(e) => {
            let _ = sh.journal.flush().await;
            return Err(e);
        }
    };
    if let Some(e) = exec.take_fatal() {
        let _ = sh.journal.flush().await;
        return Err(e.into());
    }
    if exec.interrupted() {
        // Stopped on request: what was in flight finished; nothing is deleted, the run stays
        // unfinished (the next one sweeps what it left), the summary says so.
        sh.journal.flush().await.map_err(jerr)?;
        exec.retry(left, apply).await?;
        let mut summary = exec.summary();
        summary.dry_run = sh.opts.dry_run;
        summary.retries += sh
            .opts
            .transfer
            .resumes
            .load(std::sync::atomic::Ordering::Relaxed);
        return Ok(summary);
    }
    let Planner {
        counts, deletes, ..
    } = planner;
    if !deletes.is_empty() {
        if counts.src_errors > 0 {
            let msg = format!(
                "not deleting {} objects: {} source entries could not be listed",
                deletes.len(),
                counts.src_errors
            );
            sh.reporter.note(&msg);
            deletes_suppressed = Some(msg);
        } else {
            run_deletes(&sh, deletes).await?;
        }
    }
    // Job-level retry tier, after the deletes: one more attempt for transfers that failed with a
    // retryable error, or because a local path was in the way of a file that a delete removed
    // (`a` replacing a directory `a/`), with a fresh look at the source.
    exec.retry(left, apply).await?;
    if let Some(e) = exec.take_fatal() {
        let _ = sh.journal.flush().await;
        return Err(e.into());
    }
    sh.journal.flush().await.map_err(jerr)?;
    if !sh.opts.dry_run && !exec.interrupted() {
        sh.journal.end_run(JOB, &sh.pair).await.map_err(jerr)?;
    }
    let mut summary = exec.summary();
    summary.dry_run = sh.opts.dry_run;
    summary.deletes_suppressed = deletes_suppressed;
    // Request-level retries are added by whoever owns the retry layer (the CLI); these are the
    // engine's own: resumed body reads (the job-level tier is counted by the executor).
    summary.retries += sh
        .opts
        .transfer
        .resumes
        .load(std::sync::atomic::Ordering::Relaxed);
    Ok(summary)
}

async fn run_deletes(sh: &Shared, deletes: Spill<(String, u64)>) -> Result<(), SyncError> {
    let mut chunk: Vec<(String, u64)> = Vec::with_capacity(1000);
    let mut it = deletes.read_back()?.peekable();
    while it.peek().is_some() {
        if sh.stopping() {
            // A stop (or a fatal error) between batches: nothing more is deleted.
            break;
        }
        chunk.clear();
        for d in it.by_ref().take(1000) {
            chunk.push(d?);
        }
        if sh.opts.dry_run {
            for (rel, size) in &chunk {
                sh.record(Record::new(
                    rel.clone(),
                    Outcome::WouldDelete,
                    "not in source",
                    *size,
                ));
            }
            continue;
        }
        let keys: Vec<String> = chunk.iter().map(|(r, _)| sh.dst.key(r)).collect();
        match sh.dst.store.delete_many(&keys).await {
            Ok(results) => {
                for ((rel, size), r) in chunk.iter().zip(results) {
                    match r {
                        Ok(()) => {
                            sh.journal.forget(JOB, &sh.pair, rel);
                            sh.record(Record::new(
                                rel.clone(),
                                Outcome::Delete,
                                "not in source",
                                *size,
                            ));
                        }
                        Err(e) => sh.fail(rel, *size, &e),
                    }
                }
            }
            Err(e) => {
                for (rel, size) in &chunk {
                    sh.fail(rel, *size, &e);
                }
            }
        }
    }
    Ok(())
}

/// Refuse, before any change, deletes over the limit (or of everything when the source is
/// empty and no limit was given).
fn check_delete_limit(sh: &Shared, c: &Counts) -> Result<(), SyncError> {
    if c.deletes == 0 {
        return Ok(());
    }
    let opts = &sh.opts;
    if c.src == 0 && !opts.max_delete_explicit {
        return Err(SyncError::EmptySource {
            total: c.dst,
            src: sh.src.describe(),
            dst: sh.dst.describe(),
        });
    }
    if !opts.max_delete.allows(c.deletes, c.dst) {
        let limit = opts.max_delete.as_option();
        let more = if c.deletes as usize > c.sample.len() {
            ", …"
        } else {
            ""
        };
        return Err(SyncError::DeleteLimit {
            count: c.deletes,
            total: c.dst,
            limit,
            dst: sh.dst.describe(),
            sample: format!("{}{more}", c.sample.join(", ")),
        });
    }
    Ok(())
}

/// The key of a sync pair in the state database: both sides with their endpoints.
pub fn pair_id(src: &Side, dst: &Side) -> String {
    format!("{} -> {}", src.state_id(), dst.state_id())
}

/// Abort the uploads that dead runs left in the destination. Temp files in a local destination
/// are looked for (a walk of the whole tree) only when the last run of this pair did not end:
/// a run that ends leaves none.
async fn cleanup_orphans(dst: &Side, journal: &Journal, reporter: &dyn Reporter, unfinished: bool) {
    let walk = (dst.kind == SideKind::Local && unfinished).then_some(dst.prefix.as_str());
    let n = cleanup_orphan_uploads(&dst.store, journal, walk).await;
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
            cancel: Cancel::new(),
        }
    }
}
