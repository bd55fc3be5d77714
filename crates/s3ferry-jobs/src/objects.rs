//! The everyday commands on objects (`cp`, `mv`, `rm`, and `run` of a file of them) as plans of
//! items for the engine's one executor. A command is a [`Spec`] (its sides and options); its
//! [`Objects::plan`] is a stream of [`Op`]s (one object to copy, a batch of keys to delete)
//! made while the source is listed; [`Objects::run`] hands any number of such streams to one
//! executor: one concurrency limit, one cancellation, one retry pass, one summary. An op names
//! its spec by number, so ops can be kept on disk for the retry pass.

use std::sync::{Arc, RwLock};

use futures::stream::{self, BoxStream, StreamExt};
use s3ferry_engine::events::{Outcome, Record, Reporter, NOT_SYNCED};
use s3ferry_engine::exec::{Done, Executor, Pass};
use s3ferry_engine::filter::Filters;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::spill::Spill;
use s3ferry_engine::transfer::{cleanup_orphan_uploads, copy_object_to, TransferConfig};
use s3ferry_engine::walk::{is_skipped_entry, Entry, Side, SideKind};
use s3ferry_engine::wildcard::Wildcard;
use s3ferry_store::key::key_to_relpath;
use s3ferry_store::{DynStore, ErrorKind, ObjectMeta, PutMode, StoreError, StoreExt};
use serde::{Deserialize, Serialize};

/// Keys per DeleteObjects request (S3's limit).
pub const DELETE_BATCH: usize = 1000;

/// Which objects of a side a command takes.
#[derive(Clone, Debug)]
pub enum Source {
    /// One object: its key relative to the side's prefix.
    One(String),
    /// Every object under the side's prefix (`--recursive`).
    All,
    /// The objects matching a wildcard (listed from its literal prefix; keys relative to the
    /// side's prefix, which is the wildcard's base).
    Matching(Wildcard),
}

/// When an existing destination object is replaced (s5cmd's `-n`, `-s`, `-u`).
#[derive(Clone, Copy, Debug, Default)]
pub struct When {
    /// Never replace an existing object.
    pub no_clobber: bool,
    /// Replace only when the sizes differ.
    pub if_size_differ: bool,
    /// Replace only when the source is newer.
    pub if_source_newer: bool,
}

impl When {
    fn looks(&self) -> bool {
        self.no_clobber || self.if_size_differ || self.if_source_newer
    }

    /// Why an existing `dst` is kept instead of replaced by `src` (`None`: replace it).
    fn keep(&self, src: &ObjectMeta, dst: &ObjectMeta) -> Option<&'static str> {
        if self.no_clobber {
            return Some("exists (--no-clobber)");
        }
        let time = |m: &ObjectMeta| m.mtime.or(m.last_modified);
        let differ = self.if_size_differ && src.size != dst.size;
        let newer = self.if_source_newer && time(src) > time(dst);
        match (self.if_size_differ, self.if_source_newer) {
            (false, false) => None,
            _ if differ || newer => None,
            (true, false) => Some("same size (--if-size-differ)"),
            (false, true) => Some("not newer (--if-source-newer)"),
            (true, true) => Some("same size and not newer (--if-size-differ --if-source-newer)"),
        }
    }
}

/// `cp` / `mv`: objects of `src` to `dst`.
#[derive(Debug)]
pub struct CopySpec {
    pub src: Side,
    pub dst: Side,
    pub source: Source,
    /// The destination key (relative to `dst`'s prefix) of a [`Source::One`]; `None` keeps the
    /// source's relative key.
    pub dst_name: Option<String>,
    pub filters: Filters,
    pub when: When,
    /// Delete each source object once its copy is verified (`mv`).
    pub remove_source: bool,
    pub dry_run: bool,
    /// Part sizes, write options, storage class (the memory budget is shared by every spec
    /// made from one configuration: clones share it).
    pub transfer: TransferConfig,
}

/// `rm`: objects of a side.
#[derive(Debug)]
pub struct RmSpec {
    pub side: Side,
    pub source: Source,
    pub filters: Filters,
    /// Every version and delete marker, not only the current objects.
    pub all_versions: bool,
    pub dry_run: bool,
    /// Refuse (before deleting anything) when more would be deleted; `None`: no limit.
    pub max_delete: Option<u64>,
}

#[derive(Debug)]
pub enum Spec {
    Copy(CopySpec),
    Rm(RmSpec),
}

/// One item of work.
#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    /// Copy one object of spec `spec`: `rel` (relative to its source side) to `dst_rel`. `meta`
    /// is what the listing said (`None`: look the object up first).
    Copy {
        spec: usize,
        rel: String,
        dst_rel: String,
        meta: Option<ObjectMeta>,
    },
    /// Delete a batch of objects: (full key, version id, size); the version id is used only
    /// when the spec deletes all versions.
    Delete {
        spec: usize,
        rows: Vec<(String, String, u64)>,
    },
    /// A record the planning made (a skipped symlink, a refused key, an entry that failed).
    Report(Record),
}

/// Why a command's plan cannot go on (its line of a `run` file fails; alone, exit 2).
pub type PlanResult<T> = Result<T, StoreError>;

/// The everyday commands' run: the specs added so far and the executor they share.
pub struct Objects {
    exec: Arc<Executor>,
    specs: RwLock<Vec<Arc<Spec>>>,
    journal: Arc<Journal>,
    reporter: Arc<dyn Reporter>,
    /// Stores checked already (reachable, bucket there), by state id: a `run` file names the
    /// same buckets on many lines, and one check each is enough.
    checked: tokio::sync::Mutex<std::collections::HashSet<String>>,
    /// Destination stores whose uploads left by a killed run were cleaned up already.
    cleaned: tokio::sync::Mutex<std::collections::HashSet<String>>,
}

impl Objects {
    pub fn new(
        exec: Arc<Executor>,
        journal: Arc<Journal>,
        reporter: Arc<dyn Reporter>,
    ) -> Arc<Self> {
        Arc::new(Self {
            exec,
            specs: RwLock::new(Vec::new()),
            journal,
            reporter,
            checked: Default::default(),
            cleaned: Default::default(),
        })
    }

    pub fn executor(&self) -> &Arc<Executor> {
        &self.exec
    }

    fn spec(&self, i: usize) -> Arc<Spec> {
        self.specs.read().unwrap_or_else(|p| p.into_inner())[i].clone()
    }

    /// Add a command and return its ops, made as its source is listed. A source that cannot be
    /// listed at all (missing bucket, denied) ends the stream with that error. `rm` lists
    /// everything first and refuses before deleting anything when more than its
    /// `max_delete` would go.
    pub async fn plan(
        self: &Arc<Self>,
        spec: Spec,
    ) -> PlanResult<BoxStream<'static, PlanResult<Op>>> {
        match &spec {
            Spec::Copy(c) => {
                self.check_once(&c.src.store).await?;
                if !c.dry_run {
                    self.clean_up(&c.dst).await;
                }
            }
            Spec::Rm(r) => self.check_once(&r.side.store).await?,
        }
        let spec = Arc::new(spec);
        let id = {
            let mut specs = self.specs.write().unwrap_or_else(|p| p.into_inner());
            specs.push(spec.clone());
            specs.len() - 1
        };
        let (ops, source) = match &*spec {
            Spec::Copy(c) => (copy_ops(id, c), &c.source),
            Spec::Rm(r) => (rm_ops(id, r).await?, &r.source),
        };
        Ok(match source {
            Source::Matching(w) => none_matched(ops, w.pattern().to_string()),
            _ => ops,
        })
    }

    async fn check_once(&self, store: &DynStore) -> PlanResult<()> {
        let id = store.state_id();
        if self.checked.lock().await.contains(&id) {
            return Ok(());
        }
        store.check().await?;
        self.checked.lock().await.insert(id);
        Ok(())
    }

    async fn clean_up(&self, dst: &Side) {
        if dst.kind == SideKind::Local || !self.cleaned.lock().await.insert(dst.store.state_id()) {
            return;
        }
        let n = cleanup_orphan_uploads(&dst.store, &self.journal, None).await;
        if n > 0 {
            self.reporter.note(&format!(
                "cleaned up {n} unfinished upload(s) from an earlier run"
            ));
        }
    }

    /// Run `ops` on the executor, then the retry pass. An `Err` op ends the run with it.
    pub async fn run<S>(self: &Arc<Self>, ops: S) -> PlanResult<()>
    where
        S: futures::Stream<Item = PlanResult<Op>>,
    {
        let me = self.clone();
        let apply = move |op: Op, pass: Pass| {
            let me = me.clone();
            async move { me.apply(op, pass).await }
        };
        let left = self.exec.run(ops, &apply).await?;
        self.exec
            .retry(left, &apply)
            .await
            .map_err(|e| StoreError::new(ErrorKind::Other, "retry", e.to_string()))
    }

    async fn apply(&self, op: Op, pass: Pass) -> Done<Op> {
        match op {
            Op::Report(r) => Done::Record(r),
            Op::Copy {
                spec,
                rel,
                dst_rel,
                meta,
            } => match &*self.spec(spec) {
                Spec::Copy(c) => self.copy(spec, c, rel, dst_rel, meta, pass).await,
                Spec::Rm(_) => Done::Nothing,
            },
            Op::Delete { spec, rows } => match &*self.spec(spec) {
                Spec::Rm(r) => self.delete(r, rows).await,
                Spec::Copy(_) => Done::Nothing,
            },
        }
    }

    async fn copy(
        &self,
        id: usize,
        c: &CopySpec,
        rel: String,
        dst_rel: String,
        meta: Option<ObjectMeta>,
        pass: Pass,
    ) -> Done<Op> {
        let skey = c.src.key(&rel);
        let dkey = c.dst.key(&dst_rel);
        let to = format!("to {}", place(&c.dst, &dkey));
        if skey == dkey && c.src.store.state_id() == c.dst.store.state_id() {
            return Done::Record(Record::new(
                skey,
                Outcome::Refuse,
                "source and destination are the same object",
                0,
            ));
        }
        if c.dst.kind == SideKind::Local {
            if dkey.is_empty() || dkey.ends_with('/') {
                let why = format!("{NOT_SYNCED}a directory marker (a key ending in /)");
                return Done::Record(Record::new(skey, Outcome::Skip, why, 0));
            }
            if let Err(w) = key_to_relpath(&dkey) {
                return Done::Record(Record::new(
                    skey,
                    Outcome::Refuse,
                    format!("unsafe key for a local destination: {w}"),
                    0,
                ));
            }
        }
        let meta = match meta {
            Some(m) => m,
            None => match c.src.store.head(&skey).await {
                Ok(m) => m,
                Err(e) => return Done::failed(&skey, 0, e),
            },
        };
        let size = meta.size;
        if c.when.looks() {
            match c.dst.store.head(&dkey).await {
                Ok(d) => {
                    if let Some(why) = c.when.keep(&meta, &d) {
                        return Done::Record(Record::new(skey, Outcome::Skip, why, size));
                    }
                }
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Done::failed(&skey, size, e),
            }
        }
        if c.dry_run {
            return Done::Record(Record::new(skey, Outcome::WouldCopy, to, size));
        }
        let entry = Entry {
            rel: rel.clone(),
            meta,
        };
        let copied = copy_object_to(
            &c.src,
            &c.dst,
            &entry,
            &dst_rel,
            &c.transfer,
            &self.journal,
            &self.reporter,
            PutMode::Overwrite,
        )
        .await;
        match copied {
            Ok(_) if c.remove_source => match c.src.store.delete(&skey).await {
                Ok(()) => Done::Record(Record::new(
                    skey,
                    Outcome::Copy,
                    format!("moved {to}"),
                    size,
                )),
                Err(e) => {
                    let mut r = Record::failure(&skey, size, &e);
                    r.error = Some(format!("copied {to}, but the source was not deleted: {e}"));
                    Done::Failed(r, e)
                }
            },
            Ok(_) => Done::Record(Record::new(skey, Outcome::Copy, to, size)),
            Err(e) if pass == Pass::First && e.retryable() => {
                let r = Record::failure(&skey, size, &e);
                // The retry pass looks the source up afresh.
                let op = Op::Copy {
                    spec: id,
                    rel,
                    dst_rel,
                    meta: None,
                };
                Done::Retry(op, r, e)
            }
            Err(e) => Done::failed(&skey, size, e),
        }
    }
}

/// A wildcard that matches nothing is a failure (as in s5cmd): a typo must not pass for an
/// empty result.
fn none_matched(
    ops: BoxStream<'static, PlanResult<Op>>,
    pattern: String,
) -> BoxStream<'static, PlanResult<Op>> {
    let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = seen.clone();
    let end = stream::once(async move {
        let none = !s2.load(std::sync::atomic::Ordering::SeqCst);
        none.then(|| {
            let e = StoreError::new(
                ErrorKind::NotFound,
                "list",
                "no object matches the wildcard",
            )
            .with_key(pattern.clone());
            Ok(Op::Report(Record::failure(&pattern, 0, &e)))
        })
    })
    .filter_map(std::future::ready);
    ops.inspect(move |_| seen.store(true, std::sync::atomic::Ordering::SeqCst))
        .chain(end)
        .boxed()
}

/// `s3://bucket/key` or a local path, for messages.
fn place(side: &Side, key: &str) -> String {
    match side.store.local_path(key) {
        Some(p) => p.display().to_string(),
        None => format!("{}/{key}", side.store.describe().trim_end_matches('/')),
    }
}

/// A listing entry as an op: skipped and failed entries become records; an error without a
/// key ends the plan.
fn entry_op(
    res: s3ferry_store::Result<Entry>,
    make: impl FnOnce(Entry) -> Option<Op>,
) -> Option<PlanResult<Op>> {
    match res {
        Ok(e) => make(e).map(Ok),
        Err(e) if is_skipped_entry(&e) => {
            let key = e.key.clone().unwrap_or_default();
            let why = format!("{NOT_SYNCED}{}", e.message);
            Some(Ok(Op::Report(Record::new(key, Outcome::Skip, why, 0))))
        }
        Err(e) if e.key.is_some() => {
            let key = e.key.clone().unwrap_or_default();
            Some(Ok(Op::Report(Record::failure(&key, 0, &e))))
        }
        Err(e) => Some(Err(e)),
    }
}

/// The entries of a side that a source names, relative to the side's prefix, in key order.
fn listing(
    side: &Side,
    source: &Source,
    filters: &Filters,
) -> BoxStream<'static, s3ferry_store::Result<Entry>> {
    match source {
        Source::One(rel) => {
            let (store, key, rel) = (side.store.clone(), side.key(rel), rel.clone());
            stream::once(async move { store.head(&key).await.map(|meta| Entry { rel, meta }) })
                .boxed()
        }
        Source::All => side.list_reporting(filters, true),
        Source::Matching(w) => {
            let w = w.clone();
            side.list_from(&w.literal, filters, true)
                .filter(move |r| {
                    let keep = r.as_ref().map_or(true, |e| w.matches(&e.meta.key));
                    std::future::ready(keep)
                })
                .boxed()
        }
    }
}

fn copy_ops(id: usize, c: &CopySpec) -> BoxStream<'static, PlanResult<Op>> {
    if let Source::One(rel) = &c.source {
        // One object: looked up when it is copied (one request fewer when it is missing).
        let dst_rel = c.dst_name.clone().unwrap_or_else(|| rel.clone());
        let op = Op::Copy {
            spec: id,
            rel: rel.clone(),
            dst_rel,
            meta: None,
        };
        return stream::once(async move { Ok(op) }).boxed();
    }
    listing(&c.src, &c.source, &c.filters)
        .filter_map(move |r| {
            std::future::ready(entry_op(r, |e| {
                Some(Op::Copy {
                    spec: id,
                    dst_rel: e.rel.clone(),
                    rel: e.rel,
                    meta: Some(e.meta),
                })
            }))
        })
        .boxed()
}

/// `rm`'s ops: the whole listing is counted first (kept on disk, not in memory) so a delete
/// over the limit is refused before anything is deleted; then batches of [`DELETE_BATCH`].
async fn rm_ops(id: usize, r: &RmSpec) -> PlanResult<BoxStream<'static, PlanResult<Op>>> {
    let spill_err = |e: s3ferry_engine::spill::SpillError| {
        StoreError::new(ErrorKind::StorageFull, "spill", e.to_string())
    };
    let mut keys: Spill<(String, String, u64)> = Spill::new().map_err(spill_err)?;
    let mut reports = Vec::new();
    let mut n = 0u64;
    let mut sample = Vec::new();
    let mut push = |key: String, version: String, size: u64| -> PlanResult<()> {
        n += 1;
        if sample.len() < 5 {
            sample.push(key.clone());
        }
        keys.push(&(key, version, size)).map_err(spill_err)
    };
    if r.all_versions {
        let (prefix, wildcard) = match &r.source {
            Source::One(rel) => (r.side.key(rel), None),
            Source::All => (r.side.prefix.clone(), None),
            Source::Matching(w) => (w.literal.clone(), Some(w)),
        };
        let mut versions = r.side.store.list_versions(&prefix);
        while let Some(v) = versions.next().await {
            let v = v?;
            let key = &v.meta.key;
            let rel = key.get(r.side.prefix.len()..).unwrap_or_default();
            let wanted = match &r.source {
                Source::One(_) => key == &prefix,
                _ => wildcard.is_none_or(|w| w.matches(key)) && r.filters.includes(rel),
            };
            if wanted {
                let vid = v.meta.version_id.clone().unwrap_or_else(|| "null".into());
                push(key.clone(), vid, v.meta.size)?;
            }
        }
    } else if let Source::One(rel) = &r.source {
        // One key: deleted as named (deleting a missing key succeeds, as in S3).
        push(r.side.key(rel), String::new(), 0)?;
    } else {
        let mut list = listing(&r.side, &r.source, &r.filters);
        while let Some(e) = list.next().await {
            match e {
                Ok(e) => push(e.meta.key, String::new(), e.meta.size)?,
                Err(e) => match entry_op(Err(e), |_| None) {
                    Some(Ok(op)) => reports.push(Ok(op)),
                    Some(Err(e)) => return Err(e),
                    None => {}
                },
            }
        }
    }
    if let Some(limit) = r.max_delete {
        if n > limit {
            return Err(StoreError::new(
                ErrorKind::InvalidInput,
                "rm",
                format!(
                    "refusing to delete {n} objects under {} (limit {limit}); first ones: {}. Re-run with --max-delete {n} to allow it, or --dry-run to see them all",
                    place(&r.side, match &r.source { Source::Matching(w) => &w.literal, Source::One(rel) => rel, Source::All => "" }),
                    sample.join(", ")
                ),
            ));
        }
    }
    let rows = keys.read_back().map_err(spill_err)?;
    let batches = stream::iter(rows).chunks(DELETE_BATCH).map(move |chunk| {
        let rows = chunk
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(spill_err)?;
        Ok(Op::Delete { spec: id, rows })
    });
    Ok(stream::iter(reports).chain(batches).boxed())
}

/// The records of one batch of deletes.
fn delete_records(
    dry_run: bool,
    rows: impl Iterator<Item = (String, u64, String)>,
    results: Option<Vec<s3ferry_store::Result<()>>>,
) -> Done<Op> {
    let mut results = results.map(Vec::into_iter);
    let mut out = Vec::new();
    for (key, size, what) in rows {
        let r = match results.as_mut().and_then(Iterator::next) {
            None if dry_run => Record::new(key, Outcome::WouldDelete, what, size),
            Some(Ok(())) | None => Record::new(key, Outcome::Delete, what, size),
            Some(Err(e)) => Record::failure(&key, size, &e),
        };
        out.push(r);
    }
    Done::Records(out)
}

impl Objects {
    async fn delete(&self, r: &RmSpec, rows: Vec<(String, String, u64)>) -> Done<Op> {
        let results = if r.dry_run {
            None
        } else {
            let sent = if r.all_versions {
                let ids: Vec<(String, String)> = rows
                    .iter()
                    .map(|(k, v, _)| (k.clone(), v.clone()))
                    .collect();
                r.side.store.delete_versions(&ids).await
            } else {
                let keys: Vec<String> = rows.iter().map(|(k, _, _)| k.clone()).collect();
                r.side.store.delete_many(&keys).await
            };
            match sent {
                Ok(rs) => Some(rs),
                Err(e) => return self.batch_failed(rows.into_iter().map(|(k, _, s)| (k, s)), e),
            }
        };
        let all = r.all_versions;
        let rows = rows.into_iter().map(|(k, v, s)| {
            let what = if all {
                format!("version {v}")
            } else {
                "rm".into()
            };
            (k, s, what)
        });
        delete_records(r.dry_run, rows, results)
    }

    /// A whole batch failed: each of its keys fails with the error (a fatal one stops the run).
    fn batch_failed(&self, keys: impl Iterator<Item = (String, u64)>, e: StoreError) -> Done<Op> {
        let mut records = keys.map(|(k, s)| Record::failure(&k, s, &e));
        if e.kind.fatal() {
            if let Some(first) = records.next() {
                self.exec.fail(first, &e);
            }
        }
        Done::Records(records.collect())
    }
}

/// `du`: objects and bytes under a side's source, by group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// One total.
    None,
    /// By storage class (`STANDARD` when the listing names none).
    StorageClass,
    /// By the first path segment under the prefix (`dir/`; objects directly under it as `.`).
    Prefix,
}

/// Totals of `du`, by group name: (objects, bytes).
pub async fn du(
    side: &Side,
    source: &Source,
    filters: &Filters,
    group_by: GroupBy,
) -> PlanResult<std::collections::BTreeMap<String, (u64, u64)>> {
    side.store.check().await?;
    let mut out = std::collections::BTreeMap::new();
    let mut list = listing(side, source, filters);
    while let Some(e) = list.next().await {
        let e = match e {
            Ok(e) => e,
            Err(e) if e.key.is_some() => {
                tracing::warn!("{e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let group = match group_by {
            GroupBy::None => String::new(),
            GroupBy::StorageClass => e
                .meta
                .storage_class
                .clone()
                .unwrap_or_else(|| "STANDARD".into()),
            GroupBy::Prefix => match e.rel.split_once('/') {
                Some((dir, _)) => format!("{dir}/"),
                None => ".".into(),
            },
        };
        let t: &mut (u64, u64) = out.entry(group).or_default();
        t.0 += 1;
        t.1 += e.meta.size;
    }
    Ok(out)
}
