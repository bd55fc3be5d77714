//! The `s3ferry` binary: parse, resolve settings, run a job, render, exit with a code scripts
//! can trust (0 done, 1 some objects failed, 2 usage/fatal).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod archive;
mod batch;
mod bisync;
mod bundle;
mod checks;
mod cli;
mod context;
mod everyday;
mod limits;
mod logs;
mod ops;
mod output;
mod overlap;
mod pipe;
mod stores;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};
use s3ferry_engine::filter::{parse_since, Filters};
use s3ferry_engine::journal::Journal;
use s3ferry_engine::plan::PlanOptions;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_engine::walk::Side;
use s3ferry_jobs::sync::{self, MaxDelete, SyncOptions, DEFAULT_MAX_DELETE};
use s3ferry_store::Location;

use cli::{parse_size, Cli, Command, SyncArgs};
use output::Printer;

// Many small allocations across worker threads: mimalloc is measurably cheaper than glibc here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A fatal error: one line, exit code 2.
struct Fatal(String);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal(e.to_string())
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    context::init(&matches);
    logs::init(
        cli.global.verbose,
        cli.global.quiet,
        cli.global.log_level.as_deref(),
        cli.global.log_format,
    );
    if let Err(msg) = output::configure(&cli.global) {
        logs::say!(Error, "s3ferry: error: {msg}");
        return ExitCode::from(2);
    }
    match cli::parse_duration(&cli.global.read_timeout) {
        Ok(d) if !d.is_zero() => {}
        _ => {
            logs::say!(
                Error,
                "s3ferry: error: --read-timeout {:?}: use a duration like 30s or 5m",
                cli.global.read_timeout
            );
            return ExitCode::from(2);
        }
    }
    if cli.global.no_verify_ssl {
        logs::say!(
            Error,
            "s3ferry: error: --no-verify-ssl: s3ferry does not turn certificate checks off; give \
             the endpoint's certificate (or its CA's) with --ca-bundle FILE or AWS_CA_BUNDLE"
        );
        return ExitCode::from(2);
    }
    if let Some(p) = &cli.global.ca_bundle {
        s3ferry_aws::settings::set_ca_bundle(p.clone());
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logs::say!(Error, "s3ferry: error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let json = cli.global.json;
    let res = rt.block_on(run(cli));
    // Do not wait for stray blocking tasks (e.g. a walker feeding a dropped listing).
    rt.shutdown_background();
    match res {
        Ok(code) => ExitCode::from(code),
        Err(Fatal(msg)) => {
            logs::say!(Error, "s3ferry: error: {msg}");
            context::fatal_summary(json, &msg);
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Fatal> {
    let ops = ops::start(&cli).await?;
    let r = dispatch(&cli).await;
    ops.finish();
    r
}

async fn dispatch(cli: &Cli) -> Result<u8, Fatal> {
    match &cli.command {
        Command::Sync(args) => run_sync(cli, args).await,
        Command::Pipe(p) => pipe::run(&cli.global, p).await,
        Command::Bisync(a) => bisync::run(&cli.global, a).await,
        Command::Batch(b) => batch::run(&cli.global, b).await,
        Command::Bundle(b) => bundle::run(&cli.global, b).await,
        Command::Archive(a) => archive::run(&cli.global, a).await,
        Command::Cp(a) => everyday::cp(&cli.global, a, false).await,
        Command::Mv(a) => everyday::cp(&cli.global, a, true).await,
        Command::Rm(a) => everyday::rm(&cli.global, a).await,
        Command::Check(a) => everyday::check(&cli.global, a).await,
        Command::Cat(a) => pipe::down(&cli.global, a).await,
        Command::Du(a) => everyday::du(&cli.global, a).await,
        Command::Rb(a) => everyday::rb(&cli.global, a).await,
        Command::Presign(a) => everyday::presign(&cli.global, a).await,
        Command::Run(a) => everyday::run(&cli.global, a).await,
        Command::Mb { uri } => {
            let (bucket, _) = s3_uri(uri)?;
            let store = stores::s3_admin(&cli.global, &bucket).await?;
            let note = match store.create_bucket().await {
                Ok(()) => "",
                // Ours already: the goal (a bucket we can use) is met.
                Err(e)
                    if e.http.as_ref().and_then(|h| h.code.as_deref())
                        == Some("BucketAlreadyOwnedByYou") =>
                {
                    " (already exists and is yours)"
                }
                Err(e) => return Err(e.into()),
            };
            if !cli.global.quiet {
                println!("make_bucket: s3://{bucket}{note}");
            }
            Ok(0)
        }
        Command::Ls { uri } => {
            let (bucket, prefix) = s3_uri(uri)?;
            let store = stores::s3_admin(&cli.global, &bucket).await?;
            let store: s3ferry_store::DynStore = Arc::new(store);
            store.check().await?;
            let printer = Printer::new(cli.global.json, 0, false, false);
            use futures::StreamExt as _;
            let mut list = store.list(s3ferry_store::ListOptions::prefix(prefix));
            while let Some(m) = list.next().await {
                let m = m?;
                if cli.global.json {
                    printer.json(serde_json::json!({"key": m.key, "size": m.size, "etag": m.etag,
                        "last_modified": m.last_modified.map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339())}));
                } else {
                    let t = m.last_modified.map(|t| {
                        chrono::DateTime::<chrono::Utc>::from(t)
                            .format("%Y-%m-%d %H:%M:%S")
                            .to_string()
                    });
                    println!("{} {:>12} {}", t.unwrap_or_default(), m.size, m.key);
                }
            }
            Ok(0)
        }
    }
}

fn s3_uri(uri: &str) -> Result<(String, String), Fatal> {
    match Location::parse(uri)? {
        Location::S3 { bucket, prefix } => Ok((bucket, prefix)),
        Location::Local(_) => Err(Fatal(format!("{uri:?} is not an s3://bucket URI"))),
    }
}

/// Where the state database lives: `--state-dir` / `S3FERRY_STATE_DIR`, else the platform's
/// state directory (`$XDG_STATE_HOME`, `~/.local/state`), else its cache directory
/// (`$XDG_CACHE_HOME`). Never the current directory: a database there would be synced (and
/// deleted by `--delete`) with the tree it sits in.
fn state_path(args: &SyncArgs) -> Result<std::path::PathBuf, Fatal> {
    state_db_path(args.state_dir.as_deref())
}

/// [`state_path`] for any command: `dir` is its `--state-dir`.
fn state_db_path(dir: Option<&std::path::Path>) -> Result<std::path::PathBuf, Fatal> {
    if let Some(d) = dir {
        return Ok(d.join("state.db"));
    }
    let env_dir = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    env_dir("XDG_STATE_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".local/state")))
        .or_else(|| env_dir("XDG_CACHE_HOME"))
        .map(|base| base.join("s3ferry").join("state.db"))
        .ok_or_else(|| {
            Fatal(
                "no place for the state database: HOME, XDG_STATE_HOME and XDG_CACHE_HOME are unset; give --state-dir DIR (or S3FERRY_STATE_DIR), or --no-state".into(),
            )
        })
}

async fn run_sync(cli: &Cli, args: &SyncArgs) -> Result<u8, Fatal> {
    let g = &cli.global;
    let src_loc = Location::parse(&args.src)?;
    let dst_loc = Location::parse(&args.dst)?;
    let rules = context::ordered_rules(&args.filter.include, &args.filter.exclude);
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, std::time::SystemTime::now()))
        .transpose()?;
    let filters = Filters::new(&rules, since)?;
    let max_delete = args
        .max_delete
        .as_deref()
        .map(MaxDelete::parse)
        .transpose()?;
    let concurrency = args.concurrency.unwrap_or_else(limits::default_concurrency);
    let sizes = checks::numbers(&checks::Numbers {
        concurrency: &[
            ("--concurrency", concurrency),
            ("--part-concurrency", args.part_concurrency),
        ],
        part_size: Some((&args.part_size, checks::MIN_PART_SIZE)),
        max_memory: Some(&args.max_memory),
    })?;
    // Both are given, so both are there.
    let part_size = sizes.part_size.unwrap_or(checks::MIN_PART_SIZE);
    let max_memory = sizes.max_memory.unwrap_or(part_size);
    if let Some(w) = args.concurrency.and_then(limits::concurrency_warning) {
        logs::say!(Warn, "s3ferry: warning: {w}");
    }
    overlap::check_cli(g, &src_loc, &dst_loc, &rules)?;
    let mut transfer = TransferConfig::new(max_memory);
    transfer.part_size = part_size;
    transfer.part_concurrency = args.part_concurrency.max(1);
    transfer.storage_class = args.storage_class.clone();
    transfer.server_side = !args.no_server_side_copy;
    transfer.max_single_copy = parse_size(&args.copy_threshold)?;
    apply_write_options(&mut transfer, &args.write)?;
    upload_checksum(&args.write, &src_loc)?;

    let (src_sse_c, dst_sse_c) =
        stores::SseCKeys::for_sync(&args.sse_c, args.write.sse.as_deref(), &src_loc, &dst_loc)?;
    let (src_store, src_stats) =
        stores::open(g, &src_loc, stores::Role::Source, args, src_sse_c).await?;
    // Check the source before opening the destination, which creates a missing local directory:
    // a mistyped source leaves nothing behind.
    src_store.check().await?;
    let (dst_store, dst_stats) =
        stores::open(g, &dst_loc, stores::Role::Destination, args, dst_sse_c).await?;
    let src = Side::new(src_store, loc_prefix(&src_loc));
    let dst = Side::new(dst_store, loc_prefix(&dst_loc));

    let state_max_age = cli::parse_duration(&args.state_max_age)
        .map_err(|e| Fatal(format!("--state-max-age: {e}")))?;
    let journal = if args.no_state {
        Journal::in_memory()?
    } else {
        checks::open_state(&state_path(args)?, "use --state-dir or --no-state")?
    };
    let opts = SyncOptions {
        plan: PlanOptions {
            delete: args.delete,
            size_only: args.size_only,
            checksum: args.checksum,
            exact_timestamps: args.exact_timestamps,
            ..Default::default()
        },
        filters,
        dry_run: args.dry_run,
        max_delete: max_delete.unwrap_or(DEFAULT_MAX_DELETE),
        max_delete_explicit: max_delete.is_some(),
        concurrency,
        transfer,
        retry_failed: true,
        // SIGINT/SIGTERM: finish what is in flight, delete nothing, print the summary, exit
        // 130; a second signal stops at once (the next run cleans up).
        cancel: context::signals("the transfers in flight"),
    };
    let printer = Arc::new(Printer::new(g.json, g.verbose, g.quiet, !g.no_progress));
    printer.begin(
        "sync",
        &src_loc.to_string(),
        &dst_loc.to_string(),
        args.dry_run,
    );
    let journal = Arc::new(journal);
    let result = sync::run(src, dst, opts, journal.clone(), printer.clone()).await;
    printer.finish_bar();
    let mut summary = result?;
    if !args.no_state && !args.dry_run && !summary.interrupted && !state_max_age.is_zero() {
        match journal.prune(sync::JOB, state_max_age).await {
            Ok((0, 0)) => {}
            Ok((records, hashes)) => tracing::info!(
                "state: forgot {records} record(s) of pairs and {hashes} cached hash(es) unused for {}",
                args.state_max_age
            ),
            Err(e) => tracing::warn!("state: pruning: {e}"),
        }
    }
    for s in [src_stats, dst_stats].into_iter().flatten() {
        summary.retries += s.retries();
        summary.throttled += s.throttles();
    }
    printer.summary(&summary);
    Ok(summary.exit_code() as u8)
}

/// `--content-type`, `--metadata`, ..., `--metadata-directive` into a transfer configuration.
fn apply_write_options(transfer: &mut TransferConfig, w: &cli::WriteArgs) -> Result<(), Fatal> {
    transfer.write = write_options(w)?;
    // CRC64NVME is what every write carries anyway; another algorithm is asked of server-side
    // copies (an upload from a local source with one is refused: see `upload_checksum`).
    transfer.copy_checksum = w
        .checksum_algorithm
        .as_deref()
        .map(str::to_ascii_uppercase)
        .filter(|a| a != "CRC64NVME");
    if w.metadata_directive.as_deref() == Some("REPLACE") {
        let w = &transfer.write;
        transfer.copy_replace = Some(
            s3ferry_store::PutOptions::new()
                .content_type(w.content_type.clone())
                .metadata(w.metadata.clone())
                .headers(w.headers.clone())
                .sse(w.sse.clone(), w.sse_kms_key_id.clone()),
        );
    }
    Ok(())
}

/// `--checksum-algorithm` other than CRC64NVME with a local source: s3ferry's uploads send and
/// check CRC64NVME (per part and for the whole object); no other algorithm is computed.
fn upload_checksum(w: &cli::WriteArgs, src: &Location) -> Result<(), Fatal> {
    match (&w.checksum_algorithm, src) {
        (Some(a), Location::Local(_)) if !a.eq_ignore_ascii_case("CRC64NVME") => {
            Err(Fatal(format!(
            "--checksum-algorithm {a}: uploads carry CRC64NVME, S3's full-object checksum, which \
             s3ferry computes and checks for every part and object; other algorithms apply to \
             server-side copies (S3 to S3) only"
        )))
        }
        _ => Ok(()),
    }
}

/// `--grants PERMISSION=TYPE=GRANTEE ...` as S3's `x-amz-grant-*` headers (aws-cli's form).
fn grants(list: &[String], h: &mut s3ferry_store::ObjectHeaders) -> Result<(), Fatal> {
    let mut by: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for g in list {
        let bad = || {
            Fatal(format!(
                "--grants {g:?}: use PERMISSION=GRANTEE_TYPE=GRANTEE with PERMISSION read, \
                 readacl, writeacl or full and GRANTEE_TYPE id, uri or emailaddress"
            ))
        };
        let (perm, grantee) = g.split_once('=').ok_or_else(bad)?;
        let (kind, who) = grantee.split_once('=').ok_or_else(bad)?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "id" => "id",
            "uri" => "uri",
            "emailaddress" => "emailAddress",
            _ => return Err(bad()),
        };
        let perm = match perm.to_ascii_lowercase().as_str() {
            "read" => "read",
            "readacl" => "readacl",
            "writeacl" => "writeacl",
            "full" => "full",
            _ => return Err(bad()),
        };
        if who.is_empty() {
            return Err(bad());
        }
        by.entry(perm)
            .or_default()
            .push(format!("{kind}=\"{who}\""));
    }
    let join = |p: &str| by.get(p).map(|v| v.join(", "));
    h.grant_read = join("read");
    h.grant_read_acp = join("readacl");
    h.grant_write_acp = join("writeacl");
    h.grant_full_control = join("full");
    Ok(())
}

/// `--content-type`, `--metadata`, `--cache-control`, ... as the transfers apply them.
fn write_options(w: &cli::WriteArgs) -> Result<s3ferry_engine::transfer::WriteOptions, Fatal> {
    let mut metadata = std::collections::BTreeMap::new();
    for kv in &w.metadata {
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| Fatal(format!("--metadata {kv:?}: use KEY=VALUE")))?;
        metadata.insert(k.to_string(), v.to_string());
    }
    let expires = match &w.expires {
        None => None,
        Some(t) => Some(parse_time(t).ok_or_else(|| {
            Fatal(format!(
                "--expires {t:?}: use RFC 3339 (2027-01-01T00:00:00Z) or a date (2027-01-01)"
            ))
        })?),
    };
    let mut headers = s3ferry_store::ObjectHeaders {
        cache_control: w.cache_control.clone(),
        content_disposition: w.content_disposition.clone(),
        content_encoding: w.content_encoding.clone(),
        content_language: w.content_language.clone(),
        expires,
        acl: w.acl.clone(),
        website_redirect: w.website_redirect.clone(),
        ..Default::default()
    };
    grants(&w.grants, &mut headers)?;
    Ok(s3ferry_engine::transfer::WriteOptions {
        content_type: w.content_type.clone(),
        no_guess_content_type: w.no_guess_mime_type,
        metadata,
        headers,
        sse: w.sse.clone(),
        sse_kms_key_id: w.sse_kms_key_id.clone(),
    })
}

fn parse_time(t: &str) -> Option<std::time::SystemTime> {
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(d.with_timezone(&chrono::Utc).into());
    }
    let d = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().into())
}

fn loc_prefix(l: &Location) -> String {
    match l {
        Location::S3 { prefix, .. } => prefix.clone(),
        Location::Local(_) => String::new(),
    }
}
