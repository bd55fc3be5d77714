//! `s3ferry batch`: manifests, jobs (attached or detached), their status and reports.

use std::io::Write;
use std::sync::Arc;

use futures::StreamExt;
use s3ferry_engine::events::Reporter;
use s3ferry_engine::filter::Filters;
use s3ferry_engine::formats::csv::{BucketPair, ManifestEntry};
use s3ferry_engine::journal::Journal;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_engine::walk::Side;
use s3ferry_jobs::batch::{self, Buckets, Input, JobSpec, JobState};
use s3ferry_store::Location;

use crate::cli::{
    parse_duration, parse_size, BatchCommand, BatchManifestArgs, BatchRunArgs, BatchStateArgs,
    EngineArg, Global, ReportScope,
};
use crate::output::Printer;
use crate::Fatal;

use crate::stores::CliBuckets;

fn journal(st: &BatchStateArgs) -> Result<(Arc<Journal>, std::path::PathBuf), Fatal> {
    let p = crate::state_db_path(st.state_dir.as_deref())?;
    let j = crate::checks::open_state(&p, "use --state-dir")?;
    Ok((Arc::new(j), p))
}

fn s3_dest(uri: &str) -> Result<(String, String), Fatal> {
    match Location::parse(uri)? {
        Location::S3 { bucket, prefix } => Ok((bucket, prefix)),
        Location::Local(_) => Err(Fatal(format!("{uri:?} is not an s3://bucket[/prefix] URI"))),
    }
}

pub async fn run(g: &Global, cmd: &BatchCommand) -> Result<u8, Fatal> {
    match cmd {
        BatchCommand::Manifest(a) => manifest(g, a).await,
        BatchCommand::Run(a) => run_job(g, a).await,
        BatchCommand::Status(a) => {
            let (j, _) = journal(&a.state)?;
            let spec = batch::spec(&j, &a.job).await?;
            let s = match service_of(&spec) {
                Some(sj) => service_status(g, &spec, &sj).await?,
                None => batch::status(&j, &a.job).await?,
            };
            print_state(g, &s);
            Ok(0)
        }
        BatchCommand::Confirm(a) => {
            let (j, _) = journal(&a.state)?;
            let spec = batch::spec(&j, &a.job).await?;
            let sj = service_of(&spec).ok_or_else(|| {
                Fatal(format!(
                    "{}: only --engine s3-batch jobs wait for confirmation",
                    a.job
                ))
            })?;
            let ops = batch_ops(g, Some(sj.account_id.clone()), sj.endpoint_url.clone()).await?;
            for id in &sj.jobs {
                ops.confirm(id).await?;
            }
            Ok(0)
        }
        BatchCommand::List(a) => {
            let (j, _) = journal(a)?;
            for s in batch::list(&j).await? {
                if g.json {
                    println!("{}", serde_json::to_string(&s).unwrap_or_default());
                } else {
                    println!("{}  {}  {}", s.id, s.updated, s.summary_line());
                }
            }
            Ok(0)
        }
        BatchCommand::Cancel(a) => {
            let (j, _) = journal(&a.state)?;
            let spec = batch::spec(&j, &a.job).await?;
            if let Some(sj) = service_of(&spec) {
                let ops =
                    batch_ops(g, Some(sj.account_id.clone()), sj.endpoint_url.clone()).await?;
                for id in &sj.jobs {
                    ops.cancel(id).await?;
                }
                return Ok(0);
            }
            let s = batch::cancel(&j, &a.job).await?;
            if !g.quiet {
                crate::logs::say!(
                    Info,
                    "s3ferry: {}: {}",
                    a.job,
                    if s.state == "Active" {
                        "cancellation requested; the job stops after the entries in flight"
                    } else {
                        "cancelled"
                    }
                );
            }
            Ok(0)
        }
        BatchCommand::Wait(a) => {
            let (j, _) = journal(&a.state)?;
            let every = parse_duration(&a.poll)?;
            let spec = batch::spec(&j, &a.job).await?;
            if let Some(sj) = service_of(&spec) {
                return wait_service(g, &spec, &sj, every).await;
            }
            let mut last = String::new();
            loop {
                let s = batch::status(&j, &a.job).await?;
                let line = s.summary_line();
                if line != last && !g.quiet && !g.json {
                    crate::logs::say!(Info, "{line}");
                }
                last = line;
                if s.is_terminal() || s.state == "Interrupted" {
                    if g.json {
                        print_state(g, &s);
                    }
                    return Ok(exit_of(&s));
                }
                tokio::time::sleep(every).await;
            }
        }
        BatchCommand::Resume(a) => {
            let (j, db) = journal(&a.state)?;
            let spec = batch::spec(&j, &a.job).await?;
            if let Some(sj) = service_of(&spec) {
                // Runs in S3: nothing to resume here; follow it.
                return wait_service(g, &spec, &sj, std::time::Duration::from_secs(5)).await;
            }
            if a.detach {
                return detach(g, &spec.id, &db);
            }
            attached(g, spec, j).await
        }
    }
}

/// 0: every entry succeeded; 1: some failed (or the job was cancelled or interrupted); 2: the
/// job failed as a whole.
fn exit_of(s: &JobState) -> u8 {
    match s.state.as_str() {
        "Complete" if s.failed == 0 => 0,
        "Failed" => 2,
        _ => 1,
    }
}

fn print_state(g: &Global, s: &JobState) {
    if g.json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
        return;
    }
    println!("job {}: {}", s.id, s.summary_line());
    if let Some(m) = &s.message {
        println!("  {m}");
    }
    if let Some(r) = &s.report {
        println!("  report: {r}");
    }
}

/// `batch manifest`: stream the listings into a manifest (a local file first; uploaded when the
/// destination is S3).
async fn manifest(g: &Global, a: &BatchManifestArgs) -> Result<u8, Fatal> {
    let (rules, since) = a
        .filter
        .rules_and_since(a.since.as_deref())
        .map_err(Fatal)?;
    let f = Filters::new(&rules, since)?;
    let buckets = CliBuckets(g.clone());
    let tmp = tempfile::NamedTempFile::new().map_err(|e| Fatal(format!("temp file: {e}")))?;
    let mut out: Box<dyn Write> = if a.out == "-" {
        Box::new(std::io::stdout().lock())
    } else if a.out.starts_with("s3://") {
        Box::new(std::io::BufWriter::new(
            tmp.reopen().map_err(|e| Fatal(e.to_string()))?,
        ))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&a.out).map_err(|e| Fatal(format!("{}: {e}", a.out)))?,
        ))
    };
    let mut n = 0u64;
    for src in &a.sources {
        let (bucket, prefix) = s3_dest(src)?;
        let store = buckets.open(&bucket, true).await?;
        store.check().await?;
        if a.versions {
            let mut list = store.list_versions(&prefix);
            while let Some(v) = list.next().await {
                let v = v?;
                let rel = v
                    .meta
                    .key
                    .strip_prefix(prefix.as_str())
                    .unwrap_or(&v.meta.key);
                if v.delete_marker || !f.includes(rel) || f.before_since(v.meta.last_modified) {
                    continue;
                }
                let row = ManifestEntry {
                    bucket: bucket.clone(),
                    key: v.meta.key.clone(),
                    version_id: v.meta.version_id.clone(),
                };
                writeln!(out, "{}", row.to_row()).map_err(|e| Fatal(format!("{}: {e}", a.out)))?;
                n += 1;
            }
            continue;
        }
        let side = Side::new(store, prefix);
        let mut list = side.list(&f);
        while let Some(e) = list.next().await {
            let e = e?;
            let row = ManifestEntry {
                bucket: bucket.clone(),
                key: side.key(&e.rel),
                version_id: None,
            };
            writeln!(out, "{}", row.to_row()).map_err(|e| Fatal(format!("{}: {e}", a.out)))?;
            n += 1;
        }
    }
    out.flush().map_err(|e| Fatal(format!("{}: {e}", a.out)))?;
    drop(out);
    if a.out.starts_with("s3://") {
        let rest = &a.out["s3://".len()..];
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(_, k)| !k.is_empty() && !k.ends_with('/'))
            .ok_or_else(|| Fatal(format!("--out {}: name an object, s3://bucket/key", a.out)))?;
        let store = buckets.open(bucket, false).await?;
        let data = std::fs::read(tmp.path()).map_err(|e| Fatal(e.to_string()))?;
        store
            .put(
                key,
                bytes::Bytes::from(data),
                s3ferry_store::PutOptions::new().content_type(Some("text/csv".into())),
            )
            .await?;
    }
    if !g.quiet {
        crate::logs::say!(Info, "s3ferry: {n} entries written to {}", a.out);
    }
    Ok(0)
}

/// `--metadata-directive REPLACE` with `--metadata K=V` and `--content-type`.
fn replace_metadata(a: &BatchRunArgs) -> Result<Option<batch::ReplaceMetadata>, Fatal> {
    if a.metadata_directive.as_deref() != Some("REPLACE") {
        if !a.metadata.is_empty() || a.content_type.is_some() {
            return Err(Fatal(
                "--metadata and --content-type go with --metadata-directive REPLACE".into(),
            ));
        }
        return Ok(None);
    }
    let mut r = batch::ReplaceMetadata {
        content_type: a.content_type.clone(),
        ..Default::default()
    };
    for kv in &a.metadata {
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| Fatal(format!("--metadata {kv:?}: use KEY=VALUE")))?;
        r.metadata.insert(k.to_string(), v.to_string());
    }
    Ok(Some(r))
}

fn read_pairs(path: &std::path::Path) -> Result<Vec<(String, String, String)>, Fatal> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fatal(format!("--pairs {}: {e}", path.display())))?;
    // A byte order mark (a spreadsheet's) belongs to no line: a first line that is a comment
    // stays one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let p = BucketPair::parse_row(line)
            .map_err(|m| Fatal(format!("{} line {}: {m}", path.display(), i + 1)))?;
        for b in [&p.source, &p.destination] {
            s3ferry_store::key::validate_bucket(b)
                .map_err(|m| Fatal(format!("{} line {}: {m}", path.display(), i + 1)))?;
        }
        let prefix = if p.prefix.is_empty() || p.prefix.ends_with('/') {
            p.prefix
        } else {
            format!("{}/", p.prefix)
        };
        out.push((p.source, p.destination, prefix));
    }
    if out.is_empty() {
        return Err(Fatal(format!("--pairs {}: no pairs", path.display())));
    }
    Ok(out)
}

async fn run_job(g: &Global, a: &BatchRunArgs) -> Result<u8, Fatal> {
    let (j, db) = journal(&a.state)?;
    if a.engine == EngineArg::Local {
        for (set, name) in [
            (a.role_arn.is_some(), "--role-arn"),
            (a.create_role.is_some(), "--create-role"),
            (a.confirm, "--confirm"),
        ] {
            if set {
                return Err(Fatal(format!("{name} goes with --engine s3-batch")));
            }
        }
    }
    let (part_size, max_memory) =
        crate::checks::object_job(a.concurrency, &a.part_size, &a.max_memory)?;
    let input = match (&a.manifest, &a.inventory, &a.pairs) {
        (Some(m), _, _) => Input::Manifest(m.clone()),
        (_, Some(i), _) => Input::Inventory(i.clone()),
        (_, _, Some(p)) => Input::Pairs(read_pairs(p)?),
        _ => return Err(Fatal("give --manifest, --inventory or --pairs".into())),
    };
    let to = match (&input, &a.to) {
        (Input::Pairs(_), Some(_)) => {
            return Err(Fatal(
                "--to does not go with --pairs (each pair names its destination)".into(),
            ))
        }
        (Input::Pairs(_), None) => None,
        (_, None) => return Err(Fatal("--to s3://bucket[/prefix] is required".into())),
        (_, Some(t)) => {
            let (b, p) = s3_dest(t)?;
            Some((b, p))
        }
    };
    if let Some(r) = &a.report {
        s3_dest(r)?;
    }
    let report_dir = a
        .report_dir
        .clone()
        .unwrap_or_else(|| db.parent().unwrap_or(&db).join("batch-reports"));
    let spec = JobSpec {
        id: batch::new_job_id(),
        input,
        to,
        skip_existing: a.skip_existing,
        storage_class: a.storage_class.clone(),
        multipart_threshold: parse_size(&a.multipart_threshold)?,
        part_size,
        concurrency: a.concurrency,
        report_dir: Some(report_dir.display().to_string()),
        report_uri: a.report.clone(),
        report_failed_only: a.report_scope == ReportScope::Failed,
        include: a.filter.include.clone(),
        rules: Some(crate::context::ordered_rules(
            &a.filter.include,
            &a.filter.exclude,
        )),
        exclude: a.filter.exclude.clone(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        cli: serde_json::json!({"max_memory": max_memory}),
        replace_metadata: replace_metadata(a)?,
        checksum_algorithm: a
            .checksum_algorithm
            .as_ref()
            .map(|c| c.to_ascii_uppercase()),
    };
    if a.engine == EngineArg::S3Batch {
        let spec = create_service_jobs(g, a, spec).await?;
        batch::create(&j, &spec).await?;
        let sj = service_of(&spec).ok_or_else(|| Fatal("service job ids lost".into()))?;
        if a.detach {
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({"type": "job", "id": spec.id, "service_jobs": sj.jobs})
                );
            } else {
                println!("{}", spec.id);
                crate::logs::say!(
                    Info,
                    "s3ferry: S3 Batch Operations job(s): {}",
                    sj.jobs.join(", ")
                );
            }
            return Ok(0);
        }
        return wait_service(g, &spec, &sj, std::time::Duration::from_secs(5)).await;
    }
    // Refused input (a missing bucket, a bad manifest row) is one line and exit 2, and leaves
    // no job behind.
    batch::validate(
        &spec,
        &(Arc::new(CliBuckets(g.clone())) as Arc<dyn Buckets>),
    )
    .await?;
    batch::create(&j, &spec).await?;
    if a.detach {
        return detach(g, &spec.id, &db);
    }
    attached(g, spec, j).await
}

/// Run the job here, with the output contract of every job: object lines (JSON Lines with
/// `--json`: `begin`, one `object` record per entry, `summary` with `exit_code`) on stdout,
/// progress and errors on stderr; SIGINT/SIGTERM lets the copies in flight finish, records
/// them, and exits 130 (the job stays resumable).
async fn attached(g: &Global, spec: JobSpec, j: Arc<Journal>) -> Result<u8, Fatal> {
    let printer = Arc::new(Printer::new(g.json, g.verbose, g.quiet, !g.no_progress));
    let input = match &spec.input {
        Input::Manifest(m) | Input::Inventory(m) => m.clone(),
        Input::Pairs(p) => format!("{} bucket pair(s)", p.len()),
    };
    let to = spec
        .to
        .as_ref()
        .map(|(b, p)| format!("s3://{b}/{p}"))
        .unwrap_or_else(|| "each pair's destination".into());
    printer.begin("batch", &input, &to, false);
    if !g.quiet && !g.json {
        crate::logs::say!(Info, "s3ferry: batch job {}", spec.id);
    }
    let max_memory = spec.cli["max_memory"].as_u64().unwrap_or(1 << 30);
    let mut t = TransferConfig::new(max_memory);
    t.part_size = spec.part_size;
    t.max_single_copy = spec.multipart_threshold;
    t.storage_class = spec.storage_class.clone();
    t.copy_replace = spec.replace_metadata.as_ref().map(|r| {
        s3ferry_store::PutOptions::new()
            .content_type(r.content_type.clone())
            .metadata(r.metadata.clone())
    });
    t.copy_checksum = spec.checksum_algorithm.clone();
    let reporter: Arc<dyn Reporter> = printer.clone();
    let cancel = crate::context::signals("the copies in flight");
    let r = batch::run(
        &spec,
        Arc::new(CliBuckets(g.clone())),
        j,
        reporter,
        t,
        cancel,
    )
    .await;
    printer.finish_bar();
    let (s, summary) = r?;
    // Stopped by a signal here: 130, as every command (the job stays resumable).
    let code = if summary.interrupted && s.state == "Interrupted" {
        crate::context::EXIT_INTERRUPTED
    } else {
        exit_of(&s)
    };
    let mut v = serde_json::to_value(&summary).unwrap_or_default();
    v["id"] = s.id.clone().into();
    v["state"] = s.state.clone().into();
    v["total"] = s.total.into();
    v["succeeded"] = s.succeeded.into();
    v["failed_total"] = s.failed.into();
    if let Some(rep) = &s.report {
        v["report"] = rep.clone().into();
    }
    let mut text = s.summary_line();
    if let Some(m) = &s.message {
        text += &format!("\n  {m}");
    }
    if let Some(rep) = &s.report {
        text += &format!("\nreport: {rep}");
    }
    printer.job_summary("batch", v, text, code);
    Ok(code)
}

/// Start `s3ferry batch resume JOB` in the background (own process group, no terminal), print
/// the job id.
fn detach(g: &Global, id: &str, db: &std::path::Path) -> Result<u8, Fatal> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| Fatal(format!("cannot find myself: {e}")))?;
    let dir = db.parent().unwrap_or(db);
    let log = dir.join(format!("batch-{id}.log"));
    let err = std::fs::File::create(&log).map_err(|e| Fatal(format!("{}: {e}", log.display())))?;
    let mut c = std::process::Command::new(exe);
    // Its log gets the job's lines (stdout and stderr both), without progress bars.
    let out = err
        .try_clone()
        .map_err(|e| Fatal(format!("{}: {e}", log.display())))?;
    c.args(global_args(g))
        .args(["--no-progress", "batch", "resume", id, "--state-dir"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    c.spawn()
        .map_err(|e| Fatal(format!("cannot start the job in the background: {e}")))?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({"type": "job", "id": id, "log": log})
        );
    } else {
        println!("{id}");
    }
    Ok(0)
}

/// The global options to pass on to a detached run (the environment is inherited too).
fn global_args(g: &Global) -> Vec<String> {
    let mut v = Vec::new();
    let mut opt = |name: &str, val: &Option<String>| {
        if let Some(x) = val {
            v.push(format!("--{name}"));
            v.push(x.clone());
        }
    };
    opt("endpoint-url", &g.endpoint_url);
    opt("profile", &g.profile);
    opt("region", &g.region);
    opt("source-endpoint-url", &g.source_endpoint_url);
    opt("source-profile", &g.source_profile);
    opt("source-region", &g.source_region);
    if let Some(a) = g.addressing_style {
        v.push("--addressing-style".into());
        v.push(
            match a {
                crate::cli::Addressing::Path => "path",
                crate::cli::Addressing::Virtual => "virtual",
            }
            .into(),
        );
    }
    if g.checksum_mode == Some(crate::cli::ChecksumMode::WhenRequired) {
        v.push("--checksum-mode".into());
        v.push("when-required".into());
    }
    v
}

// ---- --engine s3-batch: the S3 Batch Operations service does the copying --------------------

use s3ferry_aws::{BatchOps, BatchOpsConfig, CopyJobSpec, JobStatus, ManifestSpec};

/// What a job run by the service keeps in the state database (the spec's `cli` field).
#[derive(serde::Serialize, serde::Deserialize)]
struct ServiceJobs {
    engine: String,
    account_id: String,
    region: Option<String>,
    endpoint_url: Option<String>,
    /// Service job ids (one per destination bucket and prefix).
    jobs: Vec<String>,
}

fn service_of(spec: &JobSpec) -> Option<ServiceJobs> {
    serde_json::from_value::<ServiceJobs>(spec.cli.clone())
        .ok()
        .filter(|s| s.engine == "s3-batch")
}

async fn batch_ops(
    g: &Global,
    account: Option<String>,
    endpoint: Option<String>,
) -> Result<BatchOps, Fatal> {
    Ok(BatchOps::connect(BatchOpsConfig {
        account_id: account,
        endpoint_url: endpoint,
        profile: g.profile.clone(),
        region: g.region.clone(),
    })
    .await?)
}

/// The object `uri` names (`rest` is it without `s3://`): (bucket, key, ETag, bytes).
async fn read_object(
    buckets: &CliBuckets,
    uri: &str,
    rest: &str,
) -> Result<(String, String, String, Vec<u8>), Fatal> {
    let (b, k) = rest
        .split_once('/')
        .ok_or_else(|| Fatal(format!("{uri}: names no object")))?;
    let got = buckets
        .open(b, true)
        .await?
        .get(k, s3ferry_store::GetOptions::new())
        .await?;
    let etag = got.meta.etag.clone().unwrap_or_default();
    Ok((
        b.to_string(),
        k.to_string(),
        etag,
        got.bytes().await?.to_vec(),
    ))
}

/// One S3 Batch Operations job of an s3ferry job.
struct ServiceJob {
    /// The one bucket its manifest lists.
    source: String,
    manifest_arn: String,
    etag: String,
    csv: bool,
    with_version_ids: bool,
    dest: String,
    prefix: String,
}

/// The rows of a CSV manifest grouped by source bucket, in the order first seen: (bucket, its
/// rows as they were written, whether any has a version id). A byte order mark and blank lines
/// are dropped.
fn rows_by_bucket(data: &[u8], what: &str) -> Result<Vec<(String, Vec<u8>, bool)>, Fatal> {
    let text = std::str::from_utf8(data).map_err(|_| Fatal(format!("{what}: not UTF-8 text")))?;
    let mut out: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}').trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let e = ManifestEntry::parse_row(line)
            .map_err(|m| Fatal(format!("{what}: line {}: {m}", i + 1)))?;
        let at = match out.iter().position(|(b, _, _)| *b == e.bucket) {
            Some(p) => p,
            None => {
                out.push((e.bucket.clone(), Vec::new(), false));
                out.len() - 1
            }
        };
        out[at].1.extend_from_slice(line.as_bytes());
        out[at].1.push(b'\n');
        out[at].2 |= e.version_id.is_some();
    }
    if out.is_empty() {
        return Err(Fatal(format!("{what}: no rows")));
    }
    Ok(out)
}

/// Totals over the service jobs of one s3ferry job.
fn combine(id: &str, all: &[JobStatus]) -> JobState {
    let order = ["Failed", "Cancelled", "Complete"];
    let state = if all.iter().all(JobStatus::is_terminal) {
        order
            .iter()
            .find(|s| all.iter().any(|j| j.state == **s))
            .map(|s| s.to_string())
            .unwrap_or_else(|| "Complete".into())
    } else {
        all.iter()
            .find(|j| !j.is_terminal())
            .map(|j| j.state.clone())
            .unwrap_or_default()
    };
    JobState {
        id: id.to_string(),
        state,
        total: all.iter().map(|j| j.total).sum(),
        succeeded: all.iter().map(|j| j.succeeded).sum(),
        failed: all.iter().map(|j| j.failed).sum(),
        message: Some(format!(
            "S3 Batch Operations job(s) {}",
            all.iter()
                .map(|j| j.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .map(|m| {
            let reasons: Vec<&str> = all
                .iter()
                .flat_map(|j| j.failure_reasons.iter().map(String::as_str))
                .collect();
            if reasons.is_empty() {
                m
            } else {
                format!("{m}: {}", reasons.join("; "))
            }
        }),
        ..Default::default()
    }
}

async fn service_status(g: &Global, spec: &JobSpec, sj: &ServiceJobs) -> Result<JobState, Fatal> {
    let ops = batch_ops(g, Some(sj.account_id.clone()), sj.endpoint_url.clone()).await?;
    let mut all = Vec::new();
    for j in &sj.jobs {
        all.push(ops.describe(j).await?);
    }
    Ok(combine(&spec.id, &all))
}

/// Create the service job(s) for `a`; returns the s3ferry job spec that records them.
async fn create_service_jobs(
    g: &Global,
    a: &BatchRunArgs,
    mut spec: JobSpec,
) -> Result<JobSpec, Fatal> {
    let report = a.report.as_deref().ok_or_else(|| {
        Fatal("--engine s3-batch writes its report to S3: give --report s3://bucket/prefix".into())
    })?;
    let (rbucket, rprefix) = s3_dest(report)?;
    if a.role_arn.is_none() && a.create_role.is_none() {
        return Err(Fatal(
            "--engine s3-batch needs --role-arn ARN or --create-role NAME".into(),
        ));
    }
    let buckets = CliBuckets(g.clone());
    let rstore = buckets.open(&rbucket, false).await?;
    rstore.check().await?;
    let ops = batch_ops(g, a.account_id.clone(), a.s3control_endpoint_url.clone()).await?;
    let partition = ops.partition();
    let arn = |bucket: &str| format!("arn:{partition}:s3:::{bucket}");
    let upload = |name: String, data: Vec<u8>| {
        let rstore = rstore.clone();
        let key = format!(
            "{rprefix}{}manifests/{name}",
            if rprefix.is_empty() || rprefix.ends_with('/') {
                ""
            } else {
                "/"
            }
        );
        async move {
            let r = rstore
                .put(
                    &key,
                    bytes::Bytes::from(data),
                    s3ferry_store::PutOptions::new().content_type(Some("text/csv".into())),
                )
                .await?;
            Ok::<_, Fatal>((key, r.etag.unwrap_or_default()))
        }
    };
    // Batch Copy reads one source bucket per job: one service job per source bucket (and per
    // destination, for --pairs).
    let mut jobs: Vec<ServiceJob> = Vec::new();
    match &spec.input {
        Input::Manifest(m) => {
            let (dest, prefix) = spec
                .to
                .clone()
                .ok_or_else(|| Fatal("--to is required".into()))?;
            let (data, object) = match m.strip_prefix("s3://") {
                Some(rest) => {
                    let (b, k, etag, data) = read_object(&buckets, m, rest).await?;
                    (data, Some((b, k, etag)))
                }
                None => (
                    std::fs::read(m).map_err(|e| Fatal(format!("manifest {m}: {e}")))?,
                    None,
                ),
            };
            let groups = rows_by_bucket(&data, &format!("manifest {m}"))?;
            let whole = groups.len() == 1;
            for (n, (source, rows, versions)) in groups.into_iter().enumerate() {
                let (mbucket, mkey, etag) = match (&object, whole) {
                    (Some(o), true) => o.clone(),
                    _ => {
                        let (k, e) = upload(format!("{}-{n}.csv", spec.id), rows).await?;
                        (rbucket.clone(), k, e)
                    }
                };
                jobs.push(ServiceJob {
                    source,
                    manifest_arn: arn(&format!("{mbucket}/{mkey}")),
                    etag,
                    csv: true,
                    with_version_ids: versions,
                    dest: dest.clone(),
                    prefix: prefix.clone(),
                });
            }
        }
        Input::Inventory(m) => {
            let (dest, prefix) = spec
                .to
                .clone()
                .ok_or_else(|| Fatal("--to is required".into()))?;
            let rest = m.strip_prefix("s3://").ok_or_else(|| {
                Fatal(
                    "--engine s3-batch reads an inventory from S3: give --inventory s3://..."
                        .into(),
                )
            })?;
            let (b, k, etag, data) = read_object(&buckets, m, rest).await?;
            // The bucket the inventory lists, which the role must read.
            let inv = s3ferry_engine::formats::inventory::InventoryManifest::parse(&data, m)?;
            jobs.push(ServiceJob {
                source: inv.source_bucket,
                manifest_arn: arn(&format!("{b}/{k}")),
                etag,
                csv: false,
                with_version_ids: false,
                dest,
                prefix,
            });
        }
        Input::Pairs(pairs) => {
            for (n, (source, dest, prefix)) in pairs.iter().enumerate() {
                let store = buckets.open(source, true).await?;
                store.check().await?;
                let mut data = Vec::new();
                let mut list = store.list(s3ferry_store::ListOptions::prefix(""));
                while let Some(o) = list.next().await {
                    let row = ManifestEntry {
                        bucket: source.clone(),
                        key: o?.key,
                        version_id: None,
                    };
                    data.extend_from_slice(row.to_row().as_bytes());
                    data.push(b'\n');
                }
                let (k, etag) = upload(format!("{}-{n}.csv", spec.id), data).await?;
                jobs.push(ServiceJob {
                    source: source.clone(),
                    manifest_arn: arn(&format!("{rbucket}/{k}")),
                    etag,
                    csv: true,
                    with_version_ids: false,
                    dest: dest.clone(),
                    prefix: prefix.clone(),
                });
            }
        }
    }
    let (role, new_role) = match (&a.role_arn, &a.create_role) {
        (Some(r), _) => (r.clone(), false),
        (None, Some(name)) => {
            // One role for every job: all their sources, destinations and manifests.
            let sources: Vec<String> = jobs.iter().map(|j| arn(&j.source)).collect();
            let dests: Vec<(String, Option<String>)> = jobs
                .iter()
                .map(|j| {
                    (
                        arn(&j.dest),
                        (!j.prefix.is_empty()).then(|| j.prefix.clone()),
                    )
                })
                .collect();
            let manifests: Vec<String> = jobs.iter().map(|j| j.manifest_arn.clone()).collect();
            let policy = s3ferry_aws::copy_role_policy(
                &sources,
                &dests,
                &manifests,
                &arn(&rbucket),
                (!rprefix.is_empty()).then_some(rprefix.as_str()),
            );
            (ops.create_role(name, &policy).await?, true)
        }
        (None, None) => unreachable!("checked above"),
    };
    let mut ids = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        let manifest = if j.csv {
            ManifestSpec::Csv {
                object_arn: j.manifest_arn.clone(),
                etag: j.etag.clone(),
                with_version_ids: j.with_version_ids,
            }
        } else {
            ManifestSpec::Inventory {
                object_arn: j.manifest_arn.clone(),
                etag: j.etag.clone(),
            }
        };
        let job = CopyJobSpec {
            manifest,
            target_bucket_arn: arn(&j.dest),
            target_prefix: (!j.prefix.is_empty()).then(|| j.prefix.clone()),
            storage_class: a.storage_class.clone(),
            metadata_directive: a.metadata_directive.clone(),
            checksum_algorithm: a.checksum_algorithm.clone(),
            report_bucket_arn: arn(&rbucket),
            report_prefix: (!rprefix.is_empty()).then(|| rprefix.clone()),
            report_failed_only: a.report_scope == ReportScope::Failed,
            role_arn: role.clone(),
            priority: a.priority,
            confirmation_required: a.confirm,
            client_request_token: format!("{}-{i}", spec.id),
            description: format!("s3ferry {} ({} to {})", spec.id, j.source, j.dest),
        };
        let id = if new_role {
            ops.create_copy_job_new_role(&job).await?
        } else {
            ops.create_copy_job(&job).await?
        };
        ids.push(id);
    }
    spec.cli = serde_json::to_value(ServiceJobs {
        engine: "s3-batch".into(),
        account_id: ops.account_id().to_string(),
        region: g.region.clone(),
        endpoint_url: a.s3control_endpoint_url.clone(),
        jobs: ids,
    })
    .unwrap_or_default();
    Ok(spec)
}

/// Attached mode for service jobs: follow them to the end, printing each change.
async fn wait_service(
    g: &Global,
    spec: &JobSpec,
    sj: &ServiceJobs,
    poll: std::time::Duration,
) -> Result<u8, Fatal> {
    let ops = batch_ops(g, Some(sj.account_id.clone()), sj.endpoint_url.clone()).await?;
    let mut finals = Vec::new();
    for j in &sj.jobs {
        let quiet = g.quiet || g.json;
        let mut show = |s: &JobStatus| {
            if !quiet {
                crate::logs::say!(Info, "{}: {}", s.id, s.summary_line());
            }
        };
        finals.push(ops.wait(j, poll, &mut show).await?);
    }
    let st = combine(&spec.id, &finals);
    print_state(g, &st);
    Ok(exit_of(&st))
}

#[cfg(test)]
mod tests {
    use super::rows_by_bucket;

    /// Issue 23, point 14: Batch Copy reads one source bucket per job, so a manifest that lists
    /// several is split by bucket (rows kept as written, in first-seen order), and the buckets
    /// found are the ones the role must read.
    #[test]
    fn a_manifest_of_several_buckets_is_split_by_bucket() {
        let csv = "\u{feff}src-a,one.txt\r\nsrc-b,two%20words.txt,v2\n\nsrc-a,dir/three.txt\n";
        let groups =
            rows_by_bucket(csv.as_bytes(), "manifest m.csv").unwrap_or_else(|e| panic!("{}", e.0));
        let got: Vec<(String, String, bool)> = groups
            .into_iter()
            .map(|(b, rows, v)| (b, String::from_utf8(rows).expect("utf-8"), v))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "src-a".to_string(),
                    "src-a,one.txt\nsrc-a,dir/three.txt\n".to_string(),
                    false
                ),
                (
                    "src-b".to_string(),
                    "src-b,two%20words.txt,v2\n".to_string(),
                    true
                ),
            ]
        );
        let err = match rows_by_bucket(b"src-a,ok\nnot a row\n", "manifest m.csv") {
            Err(e) => e.0,
            Ok(_) => panic!("a bad row was taken"),
        };
        assert!(err.contains("manifest m.csv: line 2"), "{err}");
        assert!(rows_by_bucket(b"\n\n", "manifest e.csv").is_err());
    }
}
