//! The everyday commands: `cp`, `mv`, `rm`, `check`, `du`, `rb`, `presign` and `run`. Each turns
//! its command line into the jobs crate's specs ([`s3ferry_jobs::objects`],
//! [`s3ferry_jobs::check`]) and hands them to the one executor, with the same output, signal
//! and exit-code contract as every job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use s3ferry_engine::events::{Outcome, Record, Reporter, Summary};
use s3ferry_engine::exec::Executor;
use s3ferry_engine::filter::Filters;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_engine::walk::Side;
use s3ferry_engine::wildcard::{unescape, Wildcard};
use s3ferry_jobs::objects::{self, CopySpec, GroupBy, Objects, Op, RmSpec, Source, Spec, When};
use s3ferry_store::{DynStore, Location, StoreError};

use crate::cli::{self, CheckArgs, CpArgs, DuArgs, Global, LineCommand, RbArgs, RmArgs, RunArgs};
use crate::output::{human_bytes, Printer};
use crate::stores::{self, Role};
use crate::{checks, context, Fatal};

/// Stores opened once per bucket and role (a `run` file names the same buckets many times).
#[derive(Default)]
struct Opened {
    s3: tokio::sync::Mutex<HashMap<(String, bool), DynStore>>,
}

impl Opened {
    async fn s3(&self, g: &Global, bucket: &str, role: Role) -> Result<DynStore, Fatal> {
        let k = (bucket.to_string(), role == Role::Source);
        let mut m = self.s3.lock().await;
        if let Some(s) = m.get(&k) {
            return Ok(s.clone());
        }
        let (s, _) = stores::open_remote(g, bucket, role).await?;
        m.insert(k, s.clone());
        Ok(s)
    }
}

/// `s3://bucket/key` as (bucket, key exactly as typed).
fn s3_key(uri: &str) -> Result<(String, String), Fatal> {
    match Location::parse_exact(uri)? {
        Location::S3 { bucket, prefix } => Ok((bucket, prefix)),
        Location::Local(_) => Err(Fatal(format!("{uri:?} is not an s3://bucket URI"))),
    }
}

/// A prefix as a directory: `a/b` → `a/b/` (empty stays empty).
fn dir_prefix(p: &str) -> String {
    if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

/// `a/b/c` → (`a/b/`, `c`).
fn split_key(k: &str) -> (String, String) {
    match k.rfind('/') {
        Some(i) => (k[..=i].to_string(), k[i + 1..].to_string()),
        None => (String::new(), k.to_string()),
    }
}

/// The side, source and (for one object) name a source argument names.
async fn source_of(
    g: &Global,
    opened: &Opened,
    arg: &str,
    recursive: bool,
    what: &str,
) -> Result<(Side, Source, Option<String>), Fatal> {
    match Location::parse_exact(arg)? {
        Location::S3 { bucket, prefix } => {
            let store = opened.s3(g, &bucket, Role::Source).await?;
            if let Some(w) = Wildcard::parse(&prefix).map_err(Fatal)? {
                return Ok((Side::new(store, w.base.clone()), Source::Matching(w), None));
            }
            let key = unescape(&prefix);
            if recursive {
                return Ok((Side::new(store, dir_prefix(&key)), Source::All, None));
            }
            if key.is_empty() || key.ends_with('/') {
                return Err(Fatal(format!(
                    "{arg}: a prefix, not an object: give --recursive to {what} what is under it"
                )));
            }
            let (dir, name) = split_key(&key);
            Ok((Side::new(store, dir), Source::One(name.clone()), Some(name)))
        }
        Location::Local(path) => {
            let meta =
                std::fs::metadata(&path).map_err(|e| Fatal(format!("{arg}: {}", io_why(&e))))?;
            if recursive {
                if !meta.is_dir() {
                    return Err(Fatal(format!("{arg}: not a directory (--recursive)")));
                }
                let store = stores::open_dir(g, &path, Role::Source, true)?;
                return Ok((Side::new(store, ""), Source::All, None));
            }
            if meta.is_dir() {
                return Err(Fatal(format!(
                    "{arg}: a directory: give --recursive to {what} what is in it"
                )));
            }
            let (parent, name) = parent_and_name(&path, arg)?;
            let store = stores::open_dir(g, &parent, Role::Source, true)?;
            Ok((Side::new(store, ""), Source::One(name.clone()), Some(name)))
        }
    }
}

fn io_why(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn parent_and_name(path: &Path, arg: &str) -> Result<(PathBuf, String), Fatal> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Fatal(format!("{arg}: not a file name s3ferry can use")))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_string()))
}

/// The transfer settings of a command that copies.
fn transfer_of(a: &cli::TransferArgs) -> Result<TransferConfig, Fatal> {
    let (part, memory) = checks::object_job(concurrency_of(a), &a.part_size, &a.max_memory)?;
    let mut t = TransferConfig::new(memory);
    t.part_size = part;
    Ok(t)
}

/// `--concurrency`, or the default for this process's open-files limit (as sync has it), with
/// sync's warning when a given number is too high for that limit.
fn concurrency_of(a: &cli::TransferArgs) -> usize {
    if let Some(w) = a.concurrency.and_then(crate::limits::concurrency_warning) {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| crate::logs::say!(Warn, "s3ferry: warning: {w}"));
    }
    a.concurrency
        .unwrap_or_else(crate::limits::default_concurrency)
}

/// `cp`/`mv` as a spec. `base` gives the memory budget (shared across a `run`) and part size.
async fn copy_spec(
    g: &Global,
    opened: &Opened,
    a: &CpArgs,
    remove_source: bool,
    base: &TransferConfig,
) -> Result<Spec, Fatal> {
    let what = if remove_source { "move" } else { "copy" };
    let (src, source, name) = source_of(g, opened, &a.src, a.recursive, what).await?;
    let (dst, dst_name) = match (Location::parse_exact(&a.dst)?, &name) {
        (Location::S3 { bucket, prefix }, one) => {
            if s3ferry_engine::wildcard::has_wildcard(&prefix) {
                return Err(Fatal(format!(
                    "{}: a destination cannot have wildcards",
                    a.dst
                )));
            }
            let store = opened.s3(g, &bucket, Role::Destination).await?;
            let prefix = unescape(&prefix);
            match one {
                Some(n) if prefix.is_empty() || prefix.ends_with('/') => {
                    (Side::new(store, ""), Some(format!("{prefix}{n}")))
                }
                Some(_) => (Side::new(store, ""), Some(prefix)),
                None => (Side::new(store, dir_prefix(&prefix)), None),
            }
        }
        (Location::Local(path), Some(n)) => {
            if a.dst.ends_with('/') || path.is_dir() {
                let store = stores::open_dir(g, &path, Role::Destination, a.dry_run)?;
                (Side::new(store, ""), Some(n.clone()))
            } else {
                let (parent, file) = parent_and_name(&path, &a.dst)?;
                let store = stores::open_dir(g, &parent, Role::Destination, a.dry_run)?;
                (Side::new(store, ""), Some(file))
            }
        }
        (Location::Local(path), None) => {
            let store = stores::open_dir(g, &path, Role::Destination, a.dry_run)?;
            (Side::new(store, ""), None)
        }
    };
    if name.is_none() {
        // The prefixes the listing and the writes cover (a wildcard's base).
        let src_loc = match Location::parse_exact(&a.src)? {
            Location::S3 { bucket, .. } => Location::S3 {
                bucket,
                prefix: src.prefix.clone(),
            },
            local => local,
        };
        let dst_loc = Location::parse(&a.dst)?;
        let rules = context::ordered_rules(&a.filter.include, &a.filter.exclude);
        crate::overlap::check_cli(g, &src_loc, &dst_loc, &rules)?;
    }
    let mut transfer = base.clone();
    transfer.storage_class = a.storage_class.clone();
    crate::apply_write_options(&mut transfer, &a.write)?;
    crate::upload_checksum(&a.write, &Location::parse_exact(&a.src)?)?;
    Ok(Spec::Copy(CopySpec {
        src,
        dst,
        source,
        dst_name,
        filters: filters(&a.filter)?,
        when: When {
            no_clobber: a.no_clobber,
            if_size_differ: a.if_size_differ,
            if_source_newer: a.if_source_newer,
        },
        remove_source,
        dry_run: a.dry_run,
        transfer,
    }))
}

fn filters(f: &cli::FilterArgs) -> Result<Filters, Fatal> {
    let rules = context::ordered_rules(&f.include, &f.exclude);
    Filters::new(&rules, None).map_err(Fatal)
}

async fn rm_spec(g: &Global, opened: &Opened, a: &RmArgs) -> Result<Spec, Fatal> {
    let (bucket, prefix) = s3_key(&a.uri)?;
    let store = opened.s3(g, &bucket, Role::Destination).await?;
    let (side, source) = match Wildcard::parse(&prefix).map_err(Fatal)? {
        Some(w) => (Side::new(store, w.base.clone()), Source::Matching(w)),
        None => {
            let key = unescape(&prefix);
            if a.recursive {
                (Side::new(store, dir_prefix(&key)), Source::All)
            } else if key.is_empty() || key.ends_with('/') {
                return Err(Fatal(format!(
                    "{}: a prefix, not an object: give --recursive to delete what is under it",
                    a.uri
                )));
            } else {
                let (dir, name) = split_key(&key);
                (Side::new(store, dir), Source::One(name))
            }
        }
    };
    Ok(Spec::Rm(RmSpec {
        side,
        source,
        filters: filters(&a.filter)?,
        all_versions: a.all_versions,
        dry_run: a.dry_run,
        max_delete: Some(a.max_delete),
    }))
}

/// The state database for the upload registry (a killed copy's uploads are aborted by the next
/// run), or one in memory when there is no place for it.
fn journal() -> Result<Arc<Journal>, Fatal> {
    let dir = std::env::var_os("S3FERRY_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    match crate::state_db_path(dir.as_deref()) {
        Ok(p) => Ok(Arc::new(checks::open_state(&p, "set S3FERRY_STATE_DIR")?)),
        Err(_) => Ok(Arc::new(Journal::in_memory()?)),
    }
}

/// The printer and executor of one command (`--concurrency` checked; the signal contract in
/// place; `doing` is what finishes after a signal).
fn executor(
    g: &Global,
    concurrency: usize,
    doing: &'static str,
) -> Result<(Arc<Printer>, Arc<Executor>), Fatal> {
    checks::numbers(&checks::Numbers {
        concurrency: &[("--concurrency", concurrency)],
        ..Default::default()
    })?;
    let printer = Arc::new(Printer::new(g.json, g.verbose, g.quiet, !g.no_progress));
    let reporter: Arc<dyn Reporter> = printer.clone();
    let exec = Executor::new(concurrency, context::signals(doing), reporter);
    Ok((printer, Arc::new(exec)))
}

/// [`executor`] with the object runner of `cp`, `mv`, `rm` and `run`.
fn runner(
    g: &Global,
    concurrency: usize,
    doing: &'static str,
) -> Result<(Arc<Printer>, Arc<Objects>), Fatal> {
    let (printer, exec) = executor(g, concurrency, doing)?;
    let reporter: Arc<dyn Reporter> = printer.clone();
    Ok((printer, Objects::new(exec, journal()?, reporter)))
}

/// Run the ops, then [`end`].
async fn finish(
    printer: &Printer,
    objects: &Arc<Objects>,
    ops: BoxStream<'static, objects::PlanResult<Op>>,
    text: fn(&Summary) -> Option<String>,
) -> Result<u8, Fatal> {
    let res = objects.run(ops).await;
    printer.finish_bar();
    res?;
    end(printer, objects.executor(), text)
}

/// The summary (as `text` words it, else as sync's) and the exit status; a fatal error that
/// stopped the run is the command's error (exit 2).
fn end(
    printer: &Printer,
    exec: &Executor,
    text: fn(&Summary) -> Option<String>,
) -> Result<u8, Fatal> {
    if let Some(e) = exec.take_fatal() {
        return Err(e.into());
    }
    let summary = exec.summary();
    match text(&summary) {
        Some(t) => {
            let v = serde_json::to_value(&summary).unwrap_or_default();
            let code = summary.exit_code() as u8;
            printer.job_summary(context::command(), v, t, code);
        }
        None => printer.summary(&summary),
    }
    Ok(summary.exit_code() as u8)
}

pub async fn cp(g: &Global, a: &CpArgs, remove_source: bool) -> Result<u8, Fatal> {
    let job = if remove_source { "mv" } else { "cp" };
    let (printer, objects) = runner(g, concurrency_of(&a.transfer), "the copies in flight")?;
    let opened = Opened::default();
    let base = transfer_of(&a.transfer)?;
    let spec = copy_spec(g, &opened, a, remove_source, &base).await?;
    printer.begin(job, &a.src, &a.dst, a.dry_run);
    let ops = objects.plan(spec).await?;
    finish(&printer, &objects, ops, |_| None).await
}

pub async fn rm(g: &Global, a: &RmArgs) -> Result<u8, Fatal> {
    let (printer, objects) = runner(g, a.concurrency, "the deletes in flight")?;
    let opened = Opened::default();
    let spec = rm_spec(g, &opened, a).await?;
    printer.begin("rm", &a.uri, "", a.dry_run);
    let ops = objects.plan(spec).await?;
    finish(&printer, &objects, ops, |s| Some(rm_text(s))).await
}

fn rm_text(s: &Summary) -> String {
    let verb = if s.dry_run { "would delete" } else { "deleted" };
    let mut t = format!("{verb} {}, failed {}", s.deleted, s.failed);
    if s.interrupted {
        t += ", interrupted (run again to finish)";
    }
    t + &format!(" in {:.2}s", s.elapsed_secs)
}

pub async fn check(g: &Global, a: &CheckArgs) -> Result<u8, Fatal> {
    let (printer, exec) = executor(g, a.concurrency, "the comparisons in flight")?;
    let side = |arg: &str| {
        let arg = arg.to_string();
        async move {
            Ok::<Side, Fatal>(match Location::parse(&arg)? {
                Location::S3 { bucket, prefix } => {
                    let (s, _) = stores::open_remote(g, &bucket, Role::Source).await?;
                    Side::new(s, dir_prefix(&prefix))
                }
                Location::Local(p) => {
                    if !p.is_dir() {
                        return Err(Fatal(format!("{arg}: not a directory")));
                    }
                    Side::new(stores::open_dir(g, &p, Role::Source, true)?, "")
                }
            })
        }
    };
    let (sa, sb) = (side(&a.src).await?, side(&a.dst).await?);
    printer.begin("check", &a.src, &a.dst, false);
    let spec = s3ferry_jobs::check::CheckSpec {
        a: sa,
        b: sb,
        filters: filters(&a.filter)?,
        download: a.download,
        part_size: checks::MIN_PART_SIZE,
    };
    let res = s3ferry_jobs::check::run(spec, exec.clone(), journal()?).await;
    printer.finish_bar();
    res?;
    end(&printer, &exec, |s| {
        let mut t = format!(
            "{} differ, {} the same, {} failed",
            s.different, s.skipped, s.failed
        );
        if s.interrupted {
            t += ", interrupted";
        }
        Some(t)
    })
}

pub async fn du(g: &Global, a: &DuArgs) -> Result<u8, Fatal> {
    let group_by = match a.group_by {
        None => GroupBy::None,
        Some(cli::GroupByArg::StorageClass) => GroupBy::StorageClass,
        Some(cli::GroupByArg::Prefix) => GroupBy::Prefix,
    };
    let f = filters(&a.filter)?;
    let opened = Opened::default();
    let (mut objects, mut bytes) = (0u64, 0u64);
    for uri in &a.uris {
        let (side, source, _) = source_of(g, &opened, uri, true, "count").await?;
        let totals = objects::du(&side, &source, &f, group_by).await?;
        if totals.is_empty() && group_by == GroupBy::None {
            print_du(g, uri, "", 0, 0);
        }
        for (group, (n, b)) in totals {
            objects += n;
            bytes += b;
            print_du(g, uri, &group, n, b);
        }
    }
    if g.json {
        context::ended();
        println!(
            "{}",
            serde_json::json!({"type": "summary", "job": "du", "objects": objects, "bytes": bytes, "exit_code": 0})
        );
    }
    Ok(0)
}

fn print_du(g: &Global, uri: &str, group: &str, n: u64, b: u64) {
    if g.json {
        let mut v = serde_json::json!({"type": "du", "uri": uri, "objects": n, "bytes": b});
        if !group.is_empty() {
            v["group"] = group.into();
        }
        println!("{v}");
    } else {
        let group = if group.is_empty() {
            String::new()
        } else {
            format!(" {group}")
        };
        println!(
            "{b:>15} {:>10} {n:>10} objects  {uri}{group}",
            human_bytes(b)
        );
    }
}

pub async fn rb(g: &Global, a: &RbArgs) -> Result<u8, Fatal> {
    let (bucket, prefix) = s3_key(&a.uri)?;
    if !prefix.is_empty() {
        return Err(Fatal(format!(
            "{}: rb takes a bucket (s3://bucket), not a prefix",
            a.uri
        )));
    }
    let admin = stores::s3_admin(g, &bucket).await?;
    if a.force {
        let (printer, objects) = runner(g, 16, "the deletes in flight")?;
        let opened = Opened::default();
        let store = opened.s3(g, &bucket, Role::Destination).await?;
        for u in store.list_multipart("").await? {
            store.abort_multipart(&u.key, &u.upload_id).await?;
        }
        let versions = bucket_has_versions(&store).await;
        let spec = Spec::Rm(RmSpec {
            side: Side::new(store, ""),
            source: Source::All,
            filters: Filters::default(),
            all_versions: versions,
            dry_run: false,
            max_delete: None,
        });
        let ops = objects.plan(spec).await?;
        let code = finish(&printer, &objects, ops, |s| Some(rm_text(s))).await?;
        if code != 0 {
            return Ok(code);
        }
    } else {
        // Some servers delete a bucket that still holds objects: never rely on that.
        let store: DynStore = Arc::new(stores::s3_admin(g, &bucket).await?);
        let mut list = store.list(s3ferry_store::ListOptions::prefix(""));
        match list.next().await {
            None => {}
            Some(Ok(m)) => {
                return Err(Fatal(format!(
                    "s3://{bucket} is not empty (it holds {:?}, ...): give --force to delete everything in it first",
                    m.key
                )))
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
    admin.delete_bucket().await.map_err(|e| {
        match e.http.as_ref().and_then(|h| h.code.as_deref()) {
            Some("BucketNotEmpty") => Fatal(format!(
                "s3://{bucket} is not empty: give --force to delete everything in it first"
            )),
            _ => e.into(),
        }
    })?;
    if !g.quiet && !g.json {
        println!("remove_bucket: s3://{bucket}");
    }
    Ok(0)
}

/// Does listing the bucket's versions work (a versioned bucket, or a server that lists the
/// null versions of an unversioned one)?
async fn bucket_has_versions(store: &DynStore) -> bool {
    let mut v = store.list_versions("");
    !matches!(v.next().await, Some(Err(_)))
}

pub async fn presign(g: &Global, a: &cli::PresignArgs) -> Result<u8, Fatal> {
    let (bucket, key) = s3_key(&a.uri)?;
    if key.is_empty() || key.ends_with('/') {
        return Err(Fatal(format!(
            "{}: presign takes an object (s3://bucket/key)",
            a.uri
        )));
    }
    let d = cli::parse_duration(&a.expires_in).map_err(|e| Fatal(format!("--expires-in: {e}")))?;
    if d.is_zero() || d > std::time::Duration::from_secs(7 * 24 * 3600) {
        return Err(Fatal(format!(
            "--expires-in {}: use a duration from 1s to 7d (S3's limit)",
            a.expires_in
        )));
    }
    let store = stores::s3_admin(g, &bucket).await?;
    let url = store.presign_get(&key, d).await?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({"type": "presign", "uri": a.uri, "url": url, "expires_in_secs": d.as_secs()})
        );
    } else {
        println!("{url}");
    }
    Ok(0)
}

/// `run FILE`: every line's ops on one executor. A line that cannot be read, parsed or planned
/// is a failure record naming its line; the others run.
pub async fn run(g: &Global, a: &RunArgs) -> Result<u8, Fatal> {
    let text = if a.file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Fatal(format!("stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(&a.file)
            .map_err(|e| Fatal(format!("{}: {}", a.file, io_why(&e))))?
    };
    let base = transfer_of(&a.transfer)?;
    let (printer, objects) = runner(g, concurrency_of(&a.transfer), "the work in flight")?;
    printer.begin("run", &a.file, "", false);
    // A file saved by an editor that writes a byte order mark: not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let lines: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let ctx = Arc::new((
        g.clone(),
        Opened::default(),
        base,
        objects.clone(),
        a.file.clone(),
    ));
    let ops = stream::iter(lines)
        .then(move |(n, line)| {
            let ctx = ctx.clone();
            async move {
                let (g, opened, base, objects, file) = &*ctx;
                let at = format!("{file}:{n}");
                match plan_line(g, opened, base, objects, &line).await {
                    Ok(ops) => ops
                        .map(move |r| {
                            r.or_else(|e| Ok(Op::Report(line_failure(&at, &e.to_string()))))
                        })
                        .boxed(),
                    Err(Fatal(m)) => {
                        stream::once(async move { Ok(Op::Report(line_failure(&at, &m))) }).boxed()
                    }
                }
            }
        })
        .flatten()
        .boxed();
    finish(&printer, &objects, ops, |_| None).await
}

fn line_failure(at: &str, msg: &str) -> Record {
    Record {
        error: Some(format!("{at}: {msg}")),
        ..Record::new(at, Outcome::Fail, "bad line", 0)
    }
}

async fn plan_line(
    g: &Global,
    opened: &Opened,
    base: &TransferConfig,
    objects: &Arc<Objects>,
    line: &str,
) -> Result<BoxStream<'static, objects::PlanResult<Op>>, Fatal> {
    use clap::Parser as _;
    let words = shlex::split(line).ok_or_else(|| Fatal("unbalanced quotes".into()))?;
    let parsed = cli::RunLine::try_parse_from(&words).map_err(|e| {
        let msg = e.to_string();
        let first = msg
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("cannot parse")
            .trim_start_matches("error: ")
            .to_string();
        Fatal(first)
    })?;
    let spec = match &parsed.command {
        LineCommand::Cp(c) => copy_spec(g, opened, c, false, base).await?,
        LineCommand::Mv(c) => copy_spec(g, opened, c, true, base).await?,
        LineCommand::Rm(r) => rm_spec(g, opened, r).await?,
    };
    objects
        .plan(spec)
        .await
        .map_err(|e: StoreError| Fatal(e.to_string()))
}
