//! `s3ferry batch`: server-side copies of the objects a manifest lists (a Batch Operations CSV
//! or an S3 Inventory) or of whole bucket pairs, as a job that lives in the state database: it
//! survives crashes, resumes without redoing or double-reporting an entry, and ends with a
//! completion report in the S3 Batch Operations format.
//!
//! State records (job `batch`): scope `jobs`, kind `job`, key = job id → [`JobState`] (the job
//! list); scope = job id: kind `spec` → [`JobSpec`], kind `done`, key = entry identity → the
//! entry's report row, kind `cancel` → a cancellation request.

pub mod report;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, BoxStream, StreamExt};
use s3ferry_engine::events::{Outcome, Record, Reporter, Summary};
use s3ferry_engine::exec::{Cancel, Done, Executor};
use s3ferry_engine::filter::Filters;
use s3ferry_engine::formats::csv::{ManifestEntry, ReportRow};
use s3ferry_engine::formats::inventory::InventoryManifest;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::plan::same_content;
use s3ferry_engine::transfer::{copy_object, copy_unsized, TransferConfig};
use s3ferry_engine::walk::{Entry, Side};
use s3ferry_store::{DynStore, ErrorKind, ObjectMeta, StoreError};
use serde::{Deserialize, Serialize};

pub use report::{write_report, ReportSummary};

/// The job's namespace in the state database.
pub const JOB: &str = "batch";
const JOBS_SCOPE: &str = "jobs";

pub use crate::Buckets;

/// Where entries come from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Input {
    /// A Batch Operations CSV manifest (`bucket,key[,versionId]`), a local path or `s3://` URI.
    Manifest(String),
    /// An S3 Inventory `manifest.json` (CSV data files, gzip), a local path or `s3://` URI.
    Inventory(String),
    /// Whole bucket pairs, listed live: `(source, destination, prefix)`.
    Pairs(Vec<(String, String, String)>),
}

/// What a job does; stored when it is created, read back by `resume`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: String,
    pub input: Input,
    /// Destination bucket and key prefix for manifest and inventory entries.
    pub to: Option<(String, String)>,
    pub skip_existing: bool,
    pub storage_class: Option<String>,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub concurrency: usize,
    /// Local directory for the completion report.
    pub report_dir: Option<String>,
    /// `s3://bucket/prefix` for the completion report.
    pub report_uri: Option<String>,
    pub report_failed_only: bool,
    /// Filters applied to listed pairs (as given; `rules` holds them in the order typed).
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// `--include`/`--exclude` in the order typed (the last matching rule wins, as in sync).
    /// Jobs stored before this field put includes first.
    #[serde(default)]
    pub rules: Option<Vec<(bool, String)>>,
    pub created: String,
    /// Options the CLI needs to reopen the stores on resume (opaque here).
    pub cli: serde_json::Value,
    /// `--metadata-directive REPLACE`: the copies get this Content-Type and user metadata.
    #[serde(default)]
    pub replace_metadata: Option<ReplaceMetadata>,
    /// `--checksum-algorithm` of the copies.
    #[serde(default)]
    pub checksum_algorithm: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReplaceMetadata {
    pub content_type: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// A job's progress and outcome (the `jobs` list and `status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct JobState {
    pub id: String,
    /// Active, Complete, Cancelled, Failed.
    pub state: String,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub bytes: u64,
    /// The run working on it (alive while its lock is held).
    pub run_id: String,
    pub updated: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

impl JobState {
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "Complete" | "Cancelled" | "Failed")
    }

    /// `State: Complete, Total: 836, Success: 836, Failed: 0` (as the console says it).
    pub fn summary_line(&self) -> String {
        format!(
            "State: {}, Total: {}, Success: {}, Failed: {}",
            self.state, self.total, self.succeeded, self.failed
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("state database: {0}")]
    Journal(String),
    #[error("no job {0} in the state database (see `s3ferry batch list`)")]
    NoJob(String),
}

fn jerr(e: s3ferry_engine::journal::JournalError) -> BatchError {
    BatchError::Journal(e.to_string())
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A new job id: sortable by creation time, unique enough for one state database.
pub fn new_job_id() -> String {
    let t = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("b-{t}-{}", &r[..6])
}

/// Store a new job (state New: no run owns it yet).
pub async fn create(journal: &Journal, spec: &JobSpec) -> Result<(), BatchError> {
    let v = serde_json::to_string(spec).map_err(|e| BatchError::Journal(e.to_string()))?;
    journal.put_record(JOB, &spec.id, "spec", "", v);
    put_state(
        journal,
        &JobState {
            id: spec.id.clone(),
            state: "New".into(),
            updated: now_text(),
            ..Default::default()
        },
    );
    journal.flush().await.map_err(jerr)
}

fn put_state(journal: &Journal, s: &JobState) {
    if let Ok(v) = serde_json::to_string(s) {
        journal.put_record(JOB, JOBS_SCOPE, "job", &s.id, v);
    }
}

pub async fn spec(journal: &Journal, id: &str) -> Result<JobSpec, BatchError> {
    let v = journal
        .get_record(JOB, id, "spec", "")
        .await
        .map_err(jerr)?
        .ok_or_else(|| BatchError::NoJob(id.to_string()))?;
    serde_json::from_str(&v).map_err(|e| BatchError::Journal(format!("job {id}: {e}")))
}

/// A job's state; an Active job whose run is gone is reported as `Interrupted`.
pub async fn status(journal: &Journal, id: &str) -> Result<JobState, BatchError> {
    let v = journal
        .get_record(JOB, JOBS_SCOPE, "job", id)
        .await
        .map_err(jerr)?
        .ok_or_else(|| BatchError::NoJob(id.to_string()))?;
    let mut s: JobState =
        serde_json::from_str(&v).map_err(|e| BatchError::Journal(format!("job {id}: {e}")))?;
    if s.state == "Active" {
        let alive = journal.alive(vec![s.run_id.clone()]).await.map_err(jerr)?;
        if !alive.contains(&s.run_id) {
            s.state = "Interrupted".into();
            s.message = Some(format!("its process is gone: `s3ferry batch resume {id}`"));
        }
    }
    Ok(s)
}

/// Every job, oldest first.
pub async fn list(journal: &Journal) -> Result<Vec<JobState>, BatchError> {
    let rows: Vec<(String, String)> = journal
        .scan(JOB, JOBS_SCOPE, "job")
        .map(|r| r.map_err(jerr))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (id, _) in rows {
        out.push(status(journal, &id).await?);
    }
    Ok(out)
}

/// Ask a running job to stop (it looks twice a second: nothing new starts, the entries in
/// flight finish); a job that is not running is marked Cancelled at once.
pub async fn cancel(journal: &Journal, id: &str) -> Result<JobState, BatchError> {
    let mut s = status(journal, id).await?;
    if s.is_terminal() {
        return Ok(s);
    }
    journal.put_record(JOB, id, "cancel", "", now_text());
    if s.state != "Active" {
        s.state = "Cancelled".into();
        s.message = None;
        s.updated = now_text();
        put_state(journal, &s);
    }
    journal.flush().await.map_err(jerr)?;
    Ok(s)
}

async fn cancel_requested(journal: &Journal, id: &str) -> bool {
    matches!(journal.get_record(JOB, id, "cancel", "").await, Ok(Some(_)))
}

/// One entry to copy: where from, where to, and what a listing already said about it.
#[derive(Serialize, Deserialize)]
struct Task {
    entry: ManifestEntry,
    dst_bucket: String,
    dst_prefix: String,
    meta: Option<ObjectMeta>,
}

/// An entry's identity in the state database (the `done` records): the source object and
/// where it goes. Two pairs that copy one source to two destinations are two entries.
fn ident(t: &Task) -> String {
    let e = &t.entry;
    format!(
        "{}\n{}\n{}\n{}\n{}",
        e.bucket,
        e.key,
        e.version_id.as_deref().unwrap_or(""),
        t.dst_bucket,
        t.dst_prefix
    )
}

/// Read a local or `s3://` file whole into a temp file, so large manifests never sit in memory.
async fn fetch(uri: &str, buckets: &dyn Buckets) -> Result<std::fs::File, BatchError> {
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(_, k)| !k.is_empty())
            .ok_or_else(|| BatchError::Input(format!("{uri}: names no object")))?;
        let store = buckets.open(bucket, true).await?;
        let mut f =
            tempfile::tempfile().map_err(|e| BatchError::Input(format!("temp file: {e}")))?;
        let mut body = store
            .get(key, s3ferry_store::GetOptions::default())
            .await
            .map_err(|e| BatchError::Input(format!("{uri}: {e}")))?
            .body;
        use std::io::Write;
        while let Some(c) = body.next().await {
            let c = c.map_err(|e| BatchError::Input(format!("{uri}: {e}")))?;
            f.write_all(&c)
                .map_err(|e| BatchError::Input(format!("temp file: {e}")))?;
        }
        use std::io::Seek;
        f.rewind()
            .map_err(|e| BatchError::Input(format!("temp file: {e}")))?;
        Ok(f)
    } else {
        std::fs::File::open(uri).map_err(|e| BatchError::Input(format!("manifest {uri}: {e}")))
    }
}

/// Parse every row of a CSV manifest (whole-job error on the first bad one, naming its line);
/// returns the file rewound, the row count and the distinct source buckets.
fn validate_manifest(
    mut f: std::fs::File,
    uri: &str,
) -> Result<(std::fs::File, u64, Vec<String>), BatchError> {
    use std::io::{BufRead, Seek};
    let mut n = 0u64;
    let mut buckets: Vec<String> = Vec::new();
    {
        let r = std::io::BufReader::new(&mut f);
        for (i, line) in r.lines().enumerate() {
            let line = line.map_err(|e| BatchError::Input(format!("{uri} line {}: {e}", i + 1)))?;
            if line.trim().is_empty() {
                continue;
            }
            let e = ManifestEntry::parse_row(&line)
                .map_err(|m| BatchError::Input(format!("{uri} line {}: {m}", i + 1)))?;
            if !buckets.contains(&e.bucket) && buckets.len() < 1000 {
                buckets.push(e.bucket);
            }
            n += 1;
        }
    }
    f.rewind()
        .map_err(|e| BatchError::Input(format!("{uri}: {e}")))?;
    Ok((f, n, buckets))
}

fn manifest_rows(f: std::fs::File) -> BoxStream<'static, Result<ManifestEntry, BatchError>> {
    use std::io::BufRead;
    let lines = std::io::BufReader::new(f).lines();
    stream::iter(lines.filter_map(|l| match l {
        Ok(l) if l.trim().is_empty() => None,
        Ok(l) => Some(ManifestEntry::parse_row(&l).map_err(BatchError::Input)),
        Err(e) => Some(Err(BatchError::Input(e.to_string()))),
    }))
    .boxed()
}

struct Runner {
    spec: JobSpec,
    buckets: Arc<dyn Buckets>,
    journal: Arc<Journal>,
    reporter: Arc<dyn Reporter>,
    transfer: TransferConfig,
    stores: Mutex<HashMap<(String, bool), DynStore>>,
    state: Mutex<JobState>,
    resuming: bool,
    /// When the job's state (its counts, for `status`) was last saved.
    saved: Mutex<Instant>,
}

/// How often a running job's counts are saved for `status` and `wait`.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often a running job looks for a `cancel` request.
const CANCEL_POLL: Duration = Duration::from_millis(500);

impl Runner {
    async fn store(&self, bucket: &str, source: bool) -> Result<DynStore, StoreError> {
        let k = (bucket.to_string(), source);
        if let Some(s) = self
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&k)
        {
            return Ok(s.clone());
        }
        let s = self.buckets.open(bucket, source).await?;
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k, s.clone());
        Ok(s)
    }

    fn save(&self) {
        let s = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.updated = now_text();
            st.clone()
        };
        put_state(&self.journal, &s);
    }

    /// Copy one entry; record its report row (once, in the state database, before the
    /// executor counts it: a resumed job never redoes it).
    async fn task(&self, t: Task) -> Done<Task> {
        let id = ident(&t);
        if self.resuming {
            if let Ok(Some(_)) = self
                .journal
                .get_record(JOB, &self.spec.id, "done", &id)
                .await
            {
                return Done::Nothing; // finished by an earlier run: counted there, reported once
            }
        }
        let key = format!("{}/{}", t.entry.bucket, t.entry.key);
        let size = t.meta.as_ref().map(|m| m.size).unwrap_or(0);
        let (row, record) = match self.copy(&t).await {
            Ok((msg, bytes)) => {
                let action = if msg.starts_with("skipped") {
                    Outcome::Skip
                } else {
                    Outcome::Copy
                };
                let record = Record::new(key, action, msg.clone(), bytes);
                {
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.succeeded += 1;
                    st.bytes += bytes;
                }
                let row = ReportRow {
                    entry: t.entry,
                    succeeded: true,
                    http_status: 200,
                    error_code: String::new(),
                    message: msg,
                };
                (row, Done::Record(record))
            }
            Err(e) => {
                let record = Record::failure(key, size, &e);
                self.state.lock().unwrap_or_else(|p| p.into_inner()).failed += 1;
                let http = e.http.as_ref();
                let row = ReportRow {
                    entry: t.entry,
                    succeeded: false,
                    http_status: http.and_then(|h| h.status).unwrap_or(match e.kind {
                        ErrorKind::NotFound => 404,
                        ErrorKind::PermissionDenied => 403,
                        _ => 500,
                    }),
                    error_code: http
                        .and_then(|h| h.code.clone())
                        .unwrap_or_else(|| e.kind.as_str().to_string()),
                    message: e.message.replace(['\n', '\r'], " "),
                };
                (row, Done::Failed(record, e))
            }
        };
        self.journal
            .put_record(JOB, &self.spec.id, "done", &id, row.to_row());
        let due = {
            let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
            let due = saved.elapsed() >= SAVE_EVERY;
            if due {
                *saved = Instant::now();
            }
            due
        };
        if due {
            self.save();
        }
        record
    }

    async fn copy(&self, t: &Task) -> Result<(String, u64), StoreError> {
        let src = self.store(&t.entry.bucket, true).await?;
        let dst = self.store(&t.dst_bucket, false).await?;
        let (s, d) = (Side::new(src, ""), Side::new(dst, t.dst_prefix.clone()));
        let version = t.entry.version_id.as_deref();
        if version.is_some() || (t.meta.is_none() && !self.spec.skip_existing) {
            // A manifest entry: one CopyObject when that can do it, no HEAD first. A given
            // version can only be copied that way.
            let mut transfer = self.transfer.clone();
            if version.is_some() {
                transfer.max_single_copy = transfer.max_single_copy.max(5 << 30);
            }
            if let Some(r) = copy_unsized(
                &s,
                &d,
                &t.entry.key,
                version,
                &transfer,
                &self.journal,
                &self.reporter,
            )
            .await
            {
                return r.map(|m| ("Successful".into(), m.size));
            }
            if let Some(v) = version {
                return Err(StoreError::new(
                    ErrorKind::Unsupported,
                    "copy",
                    format!("version {v}: a given version is copied server-side only (same endpoint and credentials)"),
                )
                .with_key(&t.entry.key));
            }
        }
        let meta = match &t.meta {
            Some(m) => m.clone(),
            None => s.store.head(&t.entry.key).await?,
        };
        if self.spec.skip_existing {
            match d.store.head(&d.key(&t.entry.key)).await {
                Ok(dm) if same_content(&meta, &dm) == Some(true) => {
                    return Ok(("skipped: identical at the destination".into(), 0));
                }
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let entry = Entry {
            rel: t.entry.key.clone(),
            meta: ObjectMeta {
                key: t.entry.key.clone(),
                ..meta
            },
        };
        copy_object(
            &s,
            &d,
            &entry,
            &self.transfer,
            &self.journal,
            &self.reporter,
        )
        .await?;
        Ok(("Successful".into(), entry.meta.size))
    }
}

/// The entries of a job, in input order.
async fn tasks(
    spec: &JobSpec,
    buckets: &Arc<dyn Buckets>,
) -> Result<(BoxStream<'static, Result<Task, BatchError>>, Option<u64>), BatchError> {
    match &spec.input {
        Input::Manifest(uri) => {
            let (db, dp) = spec
                .to
                .clone()
                .ok_or_else(|| BatchError::Input("--to is required with --manifest".into()))?;
            let f = fetch(uri, buckets.as_ref()).await?;
            let (f, n, srcs) = validate_manifest(f, uri)?;
            for b in &srcs {
                if *b == db && dp.is_empty() {
                    return Err(BatchError::Input(format!(
                        "{uri} lists objects of {b}, the destination, with no --to prefix: they would be copied onto themselves"
                    )));
                }
                buckets.open(b, true).await?.check().await?;
            }
            let s = manifest_rows(f)
                .map(move |r| {
                    r.map(|entry| Task {
                        entry,
                        dst_bucket: db.clone(),
                        dst_prefix: dp.clone(),
                        meta: None,
                    })
                })
                .boxed();
            Ok((s, Some(n)))
        }
        Input::Inventory(uri) => {
            let (db, dp) = spec
                .to
                .clone()
                .ok_or_else(|| BatchError::Input("--to is required with an inventory".into()))?;
            let mut f = fetch(uri, buckets.as_ref()).await?;
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut data)
                .map_err(|e| BatchError::Input(format!("{uri}: {e}")))?;
            let inv = InventoryManifest::parse(&data, uri)
                .map_err(|e| BatchError::Input(e.to_string()))?;
            if inv.source_bucket == db && dp.is_empty() {
                return Err(BatchError::Input(format!(
                    "{uri} is an inventory of {db}, the destination, with no --to prefix"
                )));
            }
            buckets
                .open(&inv.source_bucket, true)
                .await?
                .check()
                .await?;
            let data_store = buckets.open(inv.data_bucket(), true).await?;
            let s = inv
                .rows(data_store)
                .filter_map(move |r| {
                    let (db, dp) = (db.clone(), dp.clone());
                    async move {
                        match r {
                            Ok(row) if row.is_delete_marker || !row.is_latest => None,
                            Ok(row) => Some(Ok(Task {
                                meta: Some(ObjectMeta {
                                    key: row.key.clone(),
                                    size: row.size,
                                    etag: row.etag.clone(),
                                    last_modified: row.last_modified,
                                    ..Default::default()
                                }),
                                entry: ManifestEntry {
                                    bucket: row.bucket,
                                    key: row.key,
                                    version_id: None,
                                },
                                dst_bucket: db,
                                dst_prefix: dp,
                            })),
                            Err(e) => Some(Err(BatchError::Input(format!("inventory: {e}")))),
                        }
                    }
                })
                .boxed();
            Ok((s, None))
        }
        Input::Pairs(pairs) => {
            let rules: Vec<(bool, String)> = spec.rules.clone().unwrap_or_else(|| {
                spec.include
                    .iter()
                    .map(|g| (true, g.clone()))
                    .chain(spec.exclude.iter().map(|g| (false, g.clone())))
                    .collect()
            });
            let filters = Filters::new(&rules, None).map_err(BatchError::Input)?;
            // Every bucket checked before anything is copied.
            let mut sides = Vec::new();
            for (s, d, p) in pairs {
                let src = buckets.open(s, true).await?;
                src.check().await?;
                buckets.open(d, false).await?.check().await?;
                sides.push((Side::new(src, ""), s.clone(), d.clone(), p.clone()));
            }
            let s = stream::iter(sides)
                .flat_map(move |(side, sb, db, dp)| {
                    side.list(&filters).map(move |r| {
                        r.map(|e| Task {
                            entry: ManifestEntry {
                                bucket: sb.clone(),
                                key: e.rel.clone(),
                                version_id: None,
                            },
                            dst_bucket: db.clone(),
                            dst_prefix: dp.clone(),
                            meta: Some(e.meta),
                        })
                        .map_err(BatchError::Store)
                    })
                })
                .boxed();
            Ok((s, None))
        }
    }
}

/// Check a job before it is registered: its input parses, and every bucket it names (sources
/// and destinations) is there and readable. A job refused here leaves nothing in the state
/// database.
pub async fn validate(spec: &JobSpec, buckets: &Arc<dyn Buckets>) -> Result<(), BatchError> {
    if let Some((db, _)) = &spec.to {
        buckets.open(db, false).await?.check().await?;
    }
    tasks(spec, buckets).await.map(drop)
}

/// Run (or resume) a job to its end, cancellation, interruption (`cancel` requested: the
/// entries in flight finish, the job stays resumable) or a whole-job error. Entries finished by
/// an earlier run are skipped; every entry gets exactly one report row. Writes the completion
/// report at the end. Returns the job's state and this run's totals.
pub async fn run(
    spec: &JobSpec,
    buckets: Arc<dyn Buckets>,
    journal: Arc<Journal>,
    reporter: Arc<dyn Reporter>,
    transfer: TransferConfig,
    cancel: Cancel,
) -> Result<(JobState, Summary), BatchError> {
    let prior = status(&journal, &spec.id).await?;
    if prior.is_terminal() {
        return Ok((prior, Summary::default()));
    }
    if prior.state == "Active" && prior.run_id != journal.run_id() {
        return Err(BatchError::Input(format!(
            "job {} is being run by another process; `s3ferry batch status|wait {}`",
            spec.id, spec.id
        )));
    }
    // Anything but a job no run has touched may have done records.
    let resuming = prior.state != "New";
    let mut first = prior.clone();
    first.state = "Active".into();
    first.message = None;
    first.run_id = journal.run_id().to_string();
    put_state(&journal, &first);
    journal.flush().await.map_err(jerr)?;
    let r = Arc::new(Runner {
        spec: spec.clone(),
        buckets: buckets.clone(),
        journal: journal.clone(),
        reporter: reporter.clone(),
        transfer,
        stores: Mutex::new(HashMap::new()),
        state: Mutex::new(JobState {
            // Counts restart from the done records (the truth), not the last saved state.
            succeeded: 0,
            failed: 0,
            bytes: 0,
            total: 0,
            ..first
        }),
        resuming,
        saved: Mutex::new(Instant::now()),
    });
    if resuming {
        // Count what earlier runs finished.
        let mut done = journal.scan(JOB, &spec.id, "done");
        while let Some(row) = done.next().await {
            let (_, v) = row.map_err(jerr)?;
            let ok = ReportRow::parse_row(&v)
                .map(|r| r.succeeded)
                .unwrap_or(false);
            let mut st = r.state.lock().unwrap_or_else(|p| p.into_inner());
            if ok {
                st.succeeded += 1;
            } else {
                st.failed += 1;
            }
        }
    }
    // `batch cancel` from another process: a record this run looks for twice a second.
    let watcher = {
        let (journal, id, cancel) = (journal.clone(), spec.id.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                if cancel_requested(&journal, &id).await {
                    cancel.request(CANCELLED);
                    break;
                }
                tokio::time::sleep(CANCEL_POLL).await;
            }
        })
    };
    let exec = Arc::new(
        Executor::new(spec.concurrency, cancel.clone(), reporter.clone())
            .durable(journal.clone())
            .without_retry_pass(),
    );
    let outcome = execute(&r, &exec, spec, &buckets).await;
    watcher.abort();
    let outcome = match (outcome, exec.take_fatal()) {
        (Ok(()), Some(e)) => Err(BatchError::Store(e)),
        (o, _) => o,
    };
    let summary = exec.summary();
    let mut st = r.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
    st.updated = now_text();
    let stopped_by = cancel.reason();
    match &outcome {
        Ok(()) if stopped_by.as_deref() == Some(CANCELLED) => {
            st.state = "Cancelled".into();
        }
        Ok(()) if stopped_by.is_some() => {
            // Stopped by a signal: the entries in flight finished and are recorded; the rest
            // is for `resume`.
            st.state = "Interrupted".into();
            st.message = Some(format!(
                "stopped by {}: `s3ferry batch resume {}`",
                stopped_by.unwrap_or_default(),
                spec.id
            ));
        }
        Ok(()) => {
            st.state = "Complete".into();
            st.total = st.succeeded + st.failed;
        }
        Err(e) => {
            st.state = "Failed".into();
            st.message = Some(e.to_string());
        }
    }
    if st.is_terminal() && (st.state != "Failed" || st.succeeded + st.failed > 0) {
        journal.flush().await.map_err(jerr)?;
        match write_report(spec, &journal, buckets.as_ref()).await {
            Ok(rep) => st.report = Some(rep.location),
            Err(e) => {
                st.message = Some(format!("the completion report could not be written: {e}"));
                if st.state == "Complete" {
                    st.state = "Failed".into();
                }
            }
        }
    }
    put_state(&journal, &st);
    journal.flush().await.map_err(jerr)?;
    outcome?;
    Ok((st, summary))
}

/// The reason of a stop requested by `batch cancel` (any other reason is a signal).
const CANCELLED: &str = "batch cancel";

async fn execute(
    r: &Arc<Runner>,
    exec: &Arc<Executor>,
    spec: &JobSpec,
    buckets: &Arc<dyn Buckets>,
) -> Result<(), BatchError> {
    let (input, total) = tasks(spec, buckets).await?;
    if let Some(n) = total {
        r.state.lock().unwrap_or_else(|p| p.into_inner()).total = n;
    }
    let mut seen = 0u64;
    let counted = input.map(|t| {
        if total.is_none() {
            // Listed live: the total grows as the listing goes.
            seen += 1;
            r.state.lock().unwrap_or_else(|p| p.into_inner()).total = seen;
        }
        t
    });
    let result = exec
        .run(counted, |t: Task, _| {
            r.reporter
                .planned(1, t.meta.as_ref().map(|m| m.size).unwrap_or(0));
            let r = r.clone();
            async move { r.task(t).await }
        })
        .await;
    r.save();
    result.map(drop)
}
