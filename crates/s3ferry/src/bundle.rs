//! `s3ferry bundle`: group, run, worker, get, extract.

use std::io::Write;
use std::sync::Arc;

use futures::StreamExt;
use s3ferry_aws::{SqsConfig, SqsQueue};
use s3ferry_engine::events::Reporter;
use s3ferry_engine::filter::Filters;
use s3ferry_engine::formats::inventory::InventoryManifest;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::ports::Queue;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_jobs::bundle::{
    self, BundleError, GroupInput, GroupOptions, PackContext, PackOptions, ShardSummary,
    WorkerOptions,
};
use s3ferry_jobs::Buckets;
use s3ferry_store::{GetOptions, ListOptions, Location};

use crate::cli::{
    parse_duration, parse_size, BundleCommand, BundleGroupArgs, BundlePackArgs, BundleRunArgs,
    BundleWorkerArgs, Global, QueueEndpointArgs,
};
use crate::output::{human_bytes, job_printer};
use crate::stores::CliBuckets;
use crate::Fatal;

fn buckets(g: &Global) -> Arc<dyn Buckets> {
    Arc::new(CliBuckets(g.clone()))
}

async fn queue(g: &Global, url: &str, ep: &QueueEndpointArgs) -> Result<SqsQueue, Fatal> {
    Ok(SqsQueue::connect(SqsConfig {
        queue_url: url.to_string(),
        endpoint_url: ep.queue_endpoint_url.clone(),
        profile: g.profile.clone(),
        region: g.region.clone(),
    })
    .await?)
}

pub async fn run(g: &Global, cmd: &BundleCommand) -> Result<u8, Fatal> {
    match cmd {
        BundleCommand::Group(a) => group(g, a).await,
        BundleCommand::Run(a) => run_shards(g, a).await,
        BundleCommand::Worker(a) => worker(g, a).await,
        BundleCommand::Get(a) => {
            let at = bundle::open_place(&a.at, buckets(g).as_ref(), true).await?;
            let f = bundle::get(&at, &a.key).await?;
            let mut body = f.body;
            match &a.output {
                Some(path) => {
                    let dir = match path.parent() {
                        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                        _ => std::path::PathBuf::from("."),
                    };
                    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
                        .map_err(|e| Fatal(format!("{}: {e}", dir.display())))?;
                    while let Some(c) = body.next().await {
                        tmp.write_all(&c?)
                            .map_err(|e| Fatal(format!("{}: {e}", path.display())))?;
                    }
                    tmp.persist(path)
                        .map_err(|e| Fatal(format!("{}: {e}", path.display())))?;
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    while let Some(c) = body.next().await {
                        out.write_all(&c?)
                            .map_err(|e| Fatal(format!("stdout: {e}")))?;
                    }
                    out.flush().map_err(|e| Fatal(format!("stdout: {e}")))?;
                }
            }
            if g.verbose > 0 && !g.quiet {
                crate::logs::say!(
                    Info,
                    "s3ferry: {} ({}) from {}",
                    a.key,
                    human_bytes(f.row.size),
                    f.row.location
                );
            }
            Ok(0)
        }
        BundleCommand::Extract(a) => {
            crate::checks::numbers(&crate::checks::Numbers {
                concurrency: &[("--concurrency", a.concurrency)],
                ..Default::default()
            })?;
            let b = buckets(g);
            let archive = bundle::open_place(&a.archive, b.as_ref(), true).await?;
            let dest = bundle::open_dir(&a.dest, b.as_ref(), false, true).await?;
            let (p, r) = job_printer(g, false);
            let started = std::time::Instant::now();
            let cancel = crate::context::signals("the writes in flight");
            let s = bundle::extract(&archive, &dest, a.concurrency, &cancel, &r).await?;
            p.finish_bar();
            let code = if s.interrupted {
                crate::context::EXIT_INTERRUPTED
            } else {
                u8::from(s.failed > 0)
            };
            p.job_summary(
                "bundle-extract",
                serde_json::json!({"members": s.members, "bytes": s.bytes, "failed": s.failed, "interrupted": s.interrupted, "elapsed_secs": started.elapsed().as_secs_f64()}),
                format!(
                    "extracted {} objects ({}) into {}, failed {}{}",
                    s.members,
                    human_bytes(s.bytes),
                    dest.uri,
                    s.failed,
                    if s.interrupted { ", interrupted (run again to finish)" } else { "" }
                ),
                code,
            );
            Ok(code)
        }
    }
}

fn shard_line(g: &Global, s: &ShardSummary) {
    if g.json {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        v["type"] = "shard".into();
        v["elapsed_secs"] = (s.elapsed_millis as f64 / 1000.0).into();
        println!("{v}");
    } else if !g.quiet {
        if s.skipped {
            crate::logs::say!(Info, "{}: complete already, skipped", s.shard);
        } else {
            crate::logs::say!(
                Info,
                "{}: packed {}, copied directly {}, dead letters {}, {} in {:.2}s -> {}",
                s.shard,
                s.packed,
                s.direct,
                s.failed,
                human_bytes(s.bytes),
                s.elapsed_millis as f64 / 1000.0,
                if s.tar.is_empty() { &s.index } else { &s.tar }
            );
        }
    }
}

async fn group(g: &Global, a: &BundleGroupArgs) -> Result<u8, Fatal> {
    let b = buckets(g);
    let max_bytes = parse_size(&a.max_bytes)?;
    let big_object = parse_size(&a.big_object)?;
    if a.max_objects == 0 || max_bytes == 0 {
        return Err(Fatal(
            "--max-objects and --max-bytes must be above zero".into(),
        ));
    }
    let (rules, since) = a
        .filter
        .rules_and_since(a.since.as_deref())
        .map_err(Fatal)?;
    let filters = Filters::new(&rules, since).map_err(Fatal)?;
    let input = match (&a.inventory, &a.source) {
        (Some(inv), _) => {
            let place = bundle::open_place(inv, b.as_ref(), true).await?;
            let data = place
                .store
                .get(&place.key, GetOptions::new())
                .await
                .map_err(|e| Fatal(format!("{inv}: {e}")))?
                .bytes()
                .await
                .map_err(|e| Fatal(format!("{inv}: {e}")))?;
            let manifest = InventoryManifest::parse(&data, inv)?;
            let data = b.open(manifest.data_bucket(), true).await?;
            GroupInput::Inventory { manifest, data }
        }
        (None, Some(src)) => match Location::parse(src).map_err(Fatal)? {
            Location::S3 { bucket, prefix } => {
                let store = b.open(&bucket, true).await?;
                // A missing bucket or bad credentials: one line before anything is written.
                store
                    .list(ListOptions::prefix(prefix.clone()))
                    .next()
                    .await
                    .transpose()
                    .map_err(|e| Fatal(format!("{src}: {e}")))?;
                GroupInput::Listing {
                    store,
                    bucket,
                    prefix,
                }
            }
            Location::Local(_) => {
                return Err(Fatal(format!(
                    "--source {src:?} is not an s3://bucket[/prefix] URI"
                )))
            }
        },
        _ => {
            return Err(Fatal(
                "give --inventory MANIFEST_JSON or --source s3://bucket[/prefix]".into(),
            ))
        }
    };
    let out = bundle::open_dir(&a.out, b.as_ref(), false, true).await?;
    let q = match &a.queue {
        Some(url) => Some(queue(g, url, &a.queue_endpoint).await?),
        None => None,
    };
    let (p, r) = job_printer(g, false);
    let opts = GroupOptions {
        max_objects: a.max_objects,
        max_bytes,
        big_object,
        filters,
    };
    let s = bundle::group(input, &opts, &out, q.as_ref().map(|q| q as &dyn Queue), &r).await?;
    p.finish_bar();
    p.job_summary(
        "bundle-group",
        serde_json::to_value(&s).unwrap_or_default(),
        format!(
            "grouped {} objects ({}) into {} shards under {} ({} of {} big objects, {}){}; skipped {}",
            s.objects,
            human_bytes(s.bytes),
            s.shards,
            out.uri,
            s.direct_shards,
            s.direct_objects,
            human_bytes(s.direct_bytes),
            if q.is_some() {
                format!(", enqueued {}", s.enqueued)
            } else {
                String::new()
            },
            s.skipped
        ),
        0,
    );
    Ok(0)
}

async fn packing(
    g: &Global,
    a: &BundlePackArgs,
    reporter: Arc<dyn Reporter>,
) -> Result<(PackContext, PackOptions), Fatal> {
    // The same checks, in the same words, as every other job's.
    let (part_size, max_memory) =
        crate::checks::object_job(a.concurrency, &a.part_size, &a.max_memory)?;
    let to = bundle::open_dir(&a.to, buckets(g).as_ref(), false, true).await?;
    let mut transfer = TransferConfig::new(max_memory);
    transfer.part_size = part_size;
    // Uploads are journaled only for this process: a killed worker's upload is aborted by the
    // next worker of that shard, on whatever machine.
    let journal = Arc::new(Journal::in_memory().map_err(|e| Fatal(e.to_string()))?);
    let cx = PackContext {
        to,
        buckets: buckets(g),
        transfer,
        journal,
        reporter,
    };
    let opts = PackOptions {
        concurrency: a.concurrency,
        part_size,
        tags: !a.no_tags,
        force: a.force,
        stale_uploads_before: None,
    };
    Ok((cx, opts))
}

/// The signal contract of every command (`crate::context::signals`): the shard in hand is
/// aborted (its tar cannot be finished without reading on).
fn stop_on_signal() -> s3ferry_engine::exec::Cancel {
    crate::context::signals("aborting the shard in hand")
}

async fn run_shards(g: &Global, a: &BundleRunArgs) -> Result<u8, Fatal> {
    let b = buckets(g);
    let (p, r) = job_printer(g, false);
    let (mut cx, opts) = packing(g, &a.pack, r).await?;
    // One machine: the tar uploads are recorded in the state database, so the uploads a killed
    // run left open are aborted now (the engine's cleanup, as sync's), also with --force.
    let db = crate::state_db_path(a.state_dir.as_deref())?;
    cx.journal = Arc::new(crate::checks::open_state(&db, "use --state-dir")?);
    let n = s3ferry_engine::transfer::cleanup_orphan_uploads(&cx.to.store, &cx.journal, None).await;
    if n > 0 {
        cx.reporter.note(&format!(
            "cleaned up {n} unfinished upload(s) from an earlier run"
        ));
    }
    let shards = bundle::shards_of(&a.shard, b.as_ref()).await?;
    let stop = stop_on_signal();
    let started = std::time::Instant::now();
    let mut total = ShardSummary::default();
    let mut shards_done = 0u64;
    let mut shards_skipped = 0u64;
    for uri in &shards {
        let shard = bundle::open_place(uri, b.as_ref(), true).await?;
        let s = match bundle::run_shard(&shard, &cx, &opts, &stop).await {
            Ok(s) => s,
            Err(BundleError::Interrupted) => {
                p.finish_bar();
                crate::logs::say!(
                    Warn,
                    "s3ferry: interrupted: {uri} was not completed (run again to finish)"
                );
                return Ok(130);
            }
            Err(e) => return Err(e.into()),
        };
        shard_line(g, &s);
        shards_done += 1;
        if s.skipped {
            // Complete already (its receipt matches): nothing was packed by this run.
            shards_skipped += 1;
            continue;
        }
        total.objects += s.objects;
        total.packed += s.packed;
        total.direct += s.direct;
        total.failed += s.failed;
        total.bytes += s.bytes;
    }
    p.finish_bar();
    let code = u8::from(total.failed > 0);
    let secs = started.elapsed().as_secs_f64();
    p.job_summary(
        "bundle-run",
        serde_json::json!({"shards": shards_done, "shards_skipped": shards_skipped, "objects": total.objects, "packed": total.packed, "direct": total.direct, "failed": total.failed, "bytes": total.bytes, "elapsed_secs": secs}),
        format!(
            "{} shards ({} complete already): packed {}, copied directly {}, dead letters {}, {} in {secs:.2}s ({:.0} objects/s)",
            shards_done,
            shards_skipped,
            total.packed,
            total.direct,
            total.failed,
            human_bytes(total.bytes),
            (total.packed + total.direct) as f64 / secs.max(1e-9)
        ),
        code,
    );
    Ok(code)
}

async fn worker(g: &Global, a: &BundleWorkerArgs) -> Result<u8, Fatal> {
    let visibility = parse_duration(&a.visibility_timeout)
        .map_err(|e| Fatal(format!("--visibility-timeout: {e}")))?;
    if visibility.as_secs() < 1 || visibility.as_secs() > 43_200 {
        return Err(Fatal(format!(
            "--visibility-timeout {} is not between 1s and 12h (SQS's limits)",
            a.visibility_timeout
        )));
    }
    let idle_exit = a
        .idle_exit
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| Fatal(format!("--idle-exit: {e}")))?;
    if a.max_messages == Some(0) {
        return Err(Fatal("--max-messages must be above zero".into()));
    }
    let (p, r) = job_printer(g, false);
    let (cx, pack) = packing(g, &a.pack, r).await?;
    let q: Arc<dyn Queue> = Arc::new(queue(g, &a.queue, &a.queue_endpoint).await?);
    let stop = stop_on_signal();
    let opts = WorkerOptions {
        visibility,
        wait: std::time::Duration::from_secs(20).min(
            idle_exit
                .unwrap_or(std::time::Duration::MAX)
                .max(std::time::Duration::from_secs(1)),
        ),
        max_messages: a.max_messages,
        idle_exit,
        retry_delay: std::time::Duration::from_secs(5),
        pack,
    };
    let gl = g.clone();
    let on_shard = move |s: &ShardSummary| shard_line(&gl, s);
    let s = bundle::work(q, &cx, &opts, &on_shard, stop).await?;
    p.finish_bar();
    let code = u8::from(s.failed > 0 || s.failed_shards > 0);
    p.job_summary(
        "bundle-worker",
        serde_json::to_value(&s).unwrap_or_default(),
        format!(
            "worker: {} shards ({} complete already), {} failed and released; packed {}, copied directly {}, dead letters {}, {}{}",
            s.shards,
            s.skipped_shards,
            s.failed_shards,
            s.packed,
            s.direct,
            s.failed,
            human_bytes(s.bytes),
            if s.interrupted { "; stopped by a signal" } else { "" }
        ),
        code,
    );
    Ok(code)
}
