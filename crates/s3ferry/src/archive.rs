//! `s3ferry archive`: export, plan, verify, import.

use std::path::PathBuf;
use std::sync::Arc;

use s3ferry_engine::filter::Filters;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::plan::MaxDelete;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_engine::walk::Side;
use s3ferry_jobs::archive::{self, ExportOptions, ExportSummary, ImportOptions, Output};
use s3ferry_jobs::places::open_dir;
use s3ferry_jobs::Buckets;

use crate::cli::{parse_size, ArchiveCommand, ArchiveSourceArgs, Global};
use crate::output::{human_bytes, job_printer};
use crate::stores::CliBuckets;
use crate::Fatal;

/// An import or export stopped by a signal: one line (a `summary` record with `--json`), and
/// the exit status of every command stopped that way.
fn interrupted(g: &Global, job: &str, msg: &str) -> u8 {
    let code = crate::context::EXIT_INTERRUPTED;
    let p = crate::output::Printer::new(g.json, g.verbose, g.quiet, false);
    p.job_summary(
        job,
        serde_json::json!({"interrupted": true, "message": msg}),
        format!("s3ferry: {job}: {msg}"),
        code,
    );
    code
}

async fn source(g: &Global, a: &ArchiveSourceArgs) -> Result<(Side, ExportOptions), Fatal> {
    let b = CliBuckets(g.clone());
    let dir = open_dir(&a.src, &b as &dyn Buckets, true, false).await?;
    dir.store
        .check()
        .await
        .map_err(|e| Fatal(format!("{}: {e}", a.src)))?;
    let (rules, since) = a
        .filter
        .rules_and_since(a.since.as_deref())
        .map_err(Fatal)?;
    let filters = Filters::new(&rules, None).map_err(Fatal)?;
    if let Some(p) = &a.since_state {
        if !p.is_file() {
            return Err(Fatal(format!(
                "--since-state {}: no such file",
                p.display()
            )));
        }
    }
    let opts = ExportOptions {
        filters,
        since,
        since_state: a.since_state.clone(),
        compress: false,
        volume_size: None,
        concurrency: 16,
        tags: true,
        source_id: a.source_id.clone(),
        transfer: TransferConfig::new(256 << 20),
    };
    Ok((Side::new(dir.store, dir.prefix), opts))
}

fn export_json(s: &ExportSummary) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

pub async fn run(g: &Global, cmd: &ArchiveCommand) -> Result<u8, Fatal> {
    match cmd {
        ArchiveCommand::Export(a) => {
            let sizes = crate::checks::numbers(&crate::checks::Numbers {
                concurrency: &[("--concurrency", a.concurrency)],
                max_memory: Some(&a.max_memory),
                ..Default::default()
            })?;
            let (src, mut opts) = source(g, &a.source).await?;
            opts.compress = a.compress;
            opts.concurrency = a.concurrency;
            opts.tags = !a.no_tags;
            opts.transfer = TransferConfig::new(sizes.max_memory.unwrap_or(256 << 20));
            opts.volume_size = match &a.volume_size {
                Some(v) => match parse_size(v)? {
                    0 => return Err(Fatal(format!("--volume-size {v} must be above zero"))),
                    n => Some(n),
                },
                None => None,
            };
            let out = if a.out == "-" {
                Output::Stdout
            } else {
                let p = PathBuf::from(&a.out);
                if a.out.ends_with('/') && !p.is_dir() {
                    return Err(Fatal(format!("--out {}: no such directory", a.out)));
                }
                if let (Some(root), Ok(out)) =
                    (src.store.local_path(&src.prefix), std::path::absolute(&p))
                {
                    let root = root.canonicalize().unwrap_or(root);
                    let out = out
                        .parent()
                        .map(|d| d.canonicalize().unwrap_or(d.to_path_buf()))
                        .unwrap_or(out.clone());
                    if out.starts_with(&root) {
                        return Err(Fatal(format!(
                            "--out {} is inside the source {}: the archive would archive itself",
                            a.out,
                            root.display()
                        )));
                    }
                }
                Output::Path(p)
            };
            let (p, r) = job_printer(g, matches!(out, Output::Stdout));
            // A signal stops the export where it is: its temp files are swept by the next export
            // (they belong to a process that is gone), and no volume or state is renamed into
            // place, so the previous export's state stays the base.
            let cancel = crate::context::signals("removing the unfinished volume");
            let s = tokio::select! {
                s = archive::export(&src, &out, a.state_out.clone(), &opts, &r) => s?,
                () = cancel.requested() => {
                    p.finish_bar();
                    return Ok(interrupted(
                        g,
                        "archive-export",
                        &format!("interrupted by {}: nothing was exported (the previous state is still the base)",
                            cancel.reason().unwrap_or_default()),
                    ));
                }
            };
            let code = u8::from(s.failed > 0);
            p.job_summary(
                "archive-export",
                export_json(&s),
                format!(
                    "archive {} ({} export, seq {}) of {}: {} put ({}), {} moved, {} deleted, {} unchanged, {} failed, in {:.2}s\n  volumes: {}\n  state: {}",
                    s.archive,
                    s.kind,
                    s.seq,
                    s.source,
                    s.puts,
                    human_bytes(s.put_bytes),
                    s.moves,
                    s.deletes,
                    s.unchanged,
                    s.failed,
                    s.elapsed_secs,
                    s.volumes.join(" "),
                    s.state
                ),
                code,
            );
            Ok(code)
        }
        ArchiveCommand::Plan(a) => {
            let (src, opts) = source(g, &a.source).await?;
            let (p, r) = job_printer(g, false);
            let s = archive::plan(&src, &opts, &r).await?;
            p.job_summary(
                "archive-plan",
                export_json(&s),
                format!(
                    "a {} export (seq {}) of {} would hold {} new or changed ({}) and {} deleted; {} unchanged (moves are found by content at export)",
                    s.kind,
                    s.seq,
                    s.source,
                    s.puts,
                    human_bytes(s.put_bytes),
                    s.deletes,
                    s.unchanged
                ),
                0,
            );
            Ok(0)
        }
        ArchiveCommand::Verify(a) => {
            let (p, _) = job_printer(g, false);
            let got = archive::verify(&a.archives).await?;
            for v in &got {
                let h = &v.header;
                let line = serde_json::json!({
                    "type": "archive", "archive": h.archive, "source": h.source, "seq": h.seq,
                    "kind": h.kind.as_str(), "volumes": h.volumes,
                    "verified": v.volumes.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                    "missing": v.missing, "puts": v.puts, "put_bytes": v.put_bytes,
                    "moves": v.moves, "deletes": v.deletes,
                });
                if g.json {
                    p.json(line);
                } else if !g.quiet {
                    let missing = if v.missing.is_empty() {
                        String::new()
                    } else {
                        format!(" (volumes not given: {:?})", v.missing)
                    };
                    crate::logs::say!(
                        Info,
                        "archive {} ({} export, seq {}) of {}: {} of {} volume(s) verified{missing}: {} put ({}), {} moves, {} deletes",
                        h.archive,
                        h.kind.as_str(),
                        h.seq,
                        h.source,
                        v.volumes.len(),
                        h.volumes,
                        v.puts,
                        human_bytes(v.put_bytes),
                        v.moves,
                        v.deletes
                    );
                }
            }
            Ok(0)
        }
        ArchiveCommand::State(a) => {
            let b = CliBuckets(g.clone());
            let dir = open_dir(&a.dest, &b as &dyn Buckets, true, false).await?;
            let h = archive::carry_back(&dir, &a.out).await?;
            let (p, _) = job_printer(g, false);
            p.job_summary(
                "archive-state",
                serde_json::to_value(&h).unwrap_or_default(),
                format!(
                    "{}: the state of {} after archive {} (seq {}), {} objects; export with --since-state {}",
                    a.out.display(),
                    h.source,
                    h.archive,
                    h.seq,
                    h.objects,
                    a.out.display()
                ),
                0,
            );
            Ok(0)
        }
        ArchiveCommand::Import(a) => {
            let (dest, files) = a
                .paths
                .split_last()
                .ok_or_else(|| Fatal("give the archives, then the destination".into()))?;
            let (part_size, max_memory) =
                crate::checks::object_job(a.concurrency, &a.part_size, &a.max_memory)?;
            let files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
            for f in &files {
                if !f.is_file() {
                    return Err(Fatal(format!("{}: no such archive file", f.display())));
                }
            }
            let max_delete = MaxDelete::parse(&a.max_delete).map_err(Fatal)?;
            let mut transfer = TransferConfig::new(max_memory);
            transfer.part_size = part_size;
            let opts = ImportOptions {
                force: a.force,
                dry_run: a.dry_run,
                max_delete,
                concurrency: a.concurrency,
                transfer,
                cancel: crate::context::signals("the writes in flight"),
            };
            let b = CliBuckets(g.clone());
            let dir = open_dir(dest, &b as &dyn Buckets, false, !a.dry_run).await?;
            // A dry run into a directory that does not exist yet plans against an empty one.
            let new_dir = a.dry_run
                && dir
                    .store
                    .local_path(&dir.prefix)
                    .is_some_and(|p| !p.exists());
            if !new_dir {
                dir.store
                    .check()
                    .await
                    .map_err(|e| Fatal(format!("{dest}: {e}")))?;
            }
            let db = crate::state_db_path(a.state_dir.as_deref())?;
            let journal =
                Arc::new(Journal::open(&db).map_err(|e| Fatal(format!("{e} (use --state-dir)")))?);
            let (p, r) = job_printer(g, false);
            let s = match archive::import(&files, &dir, &opts, &journal, &r).await {
                Err(archive::ArchiveError::Interrupted(why)) => {
                    p.finish_bar();
                    return Ok(interrupted(
                        g,
                        "archive-import",
                        &format!("interrupted by {why}: the marker is unchanged; run the import again to finish"),
                    ));
                }
                r => r?,
            };
            let code = u8::from(s.failed > 0);
            let mut text = Vec::new();
            for o in &s.archives {
                text.push(format!(
                    "archive {} ({} export, seq {}) of {}: {}: {} put ({}), {} moved, {} deleted, {} failed",
                    o.archive,
                    o.kind,
                    o.seq,
                    o.source,
                    o.outcome,
                    o.puts,
                    human_bytes(o.put_bytes),
                    o.moves,
                    o.deletes,
                    o.failed
                ));
            }
            text.push(match s.seq {
                Some(n) => format!("{} is at seq {n}", dir.uri),
                None => format!("{}: no archive applied", dir.uri),
            });
            p.job_summary(
                "archive-import",
                serde_json::to_value(&s).unwrap_or_default(),
                text.join("\n"),
                code,
            );
            Ok(code)
        }
    }
}
