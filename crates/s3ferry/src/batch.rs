//! `s3ferry batch`: manifests, jobs (attached or detached), their status and reports.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use s3ferry_engine::events::Reporter;
use s3ferry_engine::filter::{parse_since, Filters};
use s3ferry_engine::formats::csv::{BucketPair, ManifestEntry};
use s3ferry_engine::journal::Journal;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_engine::walk::Side;
use s3ferry_jobs::batch::{self, Buckets, Input, JobSpec, JobState};
use s3ferry_store::{DynStore, Location, StoreError};

use crate::cli::{
    parse_duration, parse_size, BatchCommand, BatchManifestArgs, BatchRunArgs, BatchStateArgs,
    Global, ReportScope,
};
use crate::output::Printer;
use crate::stores::{self, Role};
use crate::Fatal;

/// Buckets opened with the command line's endpoints and credentials (sources may have their
/// own), wrapped in the retry and adaptive-limit layers.
struct CliBuckets(Global);

#[async_trait]
impl Buckets for CliBuckets {
    async fn open(&self, bucket: &str, source: bool) -> Result<DynStore, StoreError> {
        let role = if source {
            Role::Source
        } else {
            Role::Destination
        };
        stores::open_remote(&self.0, bucket, role)
            .await
            .map(|(s, _)| s)
            .map_err(|Fatal(m)| StoreError::new(s3ferry_store::ErrorKind::Other, "open", m))
    }
}

fn journal(st: &BatchStateArgs) -> Result<(Arc<Journal>, std::path::PathBuf), Fatal> {
    let p = crate::state_db_path(st.state_dir.as_deref())?;
    let j = Journal::open(&p).map_err(|e| Fatal(format!("{e} (use --state-dir)")))?;
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
            let s = batch::status(&j, &a.job).await?;
            print_state(g, &s);
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
            let s = batch::cancel(&j, &a.job).await?;
            if !g.quiet {
                eprintln!(
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
            let mut last = String::new();
            loop {
                let s = batch::status(&j, &a.job).await?;
                let line = s.summary_line();
                if line != last && !g.quiet && !g.json {
                    eprintln!("{line}");
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

fn filters(include: &[String], exclude: &[String], since: Option<&str>) -> Result<Filters, Fatal> {
    let rules: Vec<(bool, String)> = include
        .iter()
        .map(|p| (true, p.clone()))
        .chain(exclude.iter().map(|p| (false, p.clone())))
        .collect();
    let since = since
        .map(|s| parse_since(s, std::time::SystemTime::now()))
        .transpose()?;
    Ok(Filters::new(&rules, since)?)
}

/// `batch manifest`: stream the listings into a manifest (a local file first; uploaded when the
/// destination is S3).
async fn manifest(g: &Global, a: &BatchManifestArgs) -> Result<u8, Fatal> {
    let f = filters(&a.include, &a.exclude, a.since.as_deref())?;
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
        eprintln!("s3ferry: {n} entries written to {}", a.out);
    }
    Ok(0)
}

fn read_pairs(path: &std::path::Path) -> Result<Vec<(String, String, String)>, Fatal> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fatal(format!("--pairs {}: {e}", path.display())))?;
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
    if a.concurrency == 0 || a.concurrency > 4096 {
        return Err(Fatal(format!(
            "--concurrency {} is not between 1 and 4096",
            a.concurrency
        )));
    }
    let part_size = parse_size(&a.part_size)?;
    if part_size < s3ferry_store::checksum::MIN_PART_SIZE {
        return Err(Fatal(format!(
            "--part-size {} is below the 5 MiB minimum S3 accepts",
            a.part_size
        )));
    }
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
        include: a.include.clone(),
        exclude: a.exclude.clone(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        cli: serde_json::Value::Null,
    };
    batch::create(&j, &spec).await?;
    if a.detach {
        return detach(g, &spec.id, &db);
    }
    attached(g, spec, j).await
}

/// Run the job here: progress, object lines with -v, the final console line.
async fn attached(g: &Global, spec: JobSpec, j: Arc<Journal>) -> Result<u8, Fatal> {
    let printer = Arc::new(Printer::new(g.json, g.verbose, g.quiet, !g.no_progress).on_stderr());
    if !g.quiet && !g.json {
        eprintln!("s3ferry: batch job {}", spec.id);
    }
    let mut t = TransferConfig::new(1 << 30);
    t.part_size = spec.part_size;
    t.max_single_copy = spec.multipart_threshold;
    t.storage_class = spec.storage_class.clone();
    let reporter: Arc<dyn Reporter> = printer.clone();
    let r = batch::run(&spec, Arc::new(CliBuckets(g.clone())), j, reporter, t).await;
    printer.finish_bar();
    let s = r?;
    if g.json {
        print_state(g, &s);
    } else if !g.quiet {
        eprintln!("{}", s.summary_line());
        if let Some(rep) = &s.report {
            eprintln!("report: {rep}");
        }
    }
    Ok(exit_of(&s))
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
    c.args(global_args(g))
        .args([
            "--quiet",
            "--no-progress",
            "batch",
            "resume",
            id,
            "--state-dir",
        ])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
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
    if g.checksum_mode == crate::cli::ChecksumMode::WhenRequired {
        v.push("--checksum-mode".into());
        v.push("when-required".into());
    }
    v
}
