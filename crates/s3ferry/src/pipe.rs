//! `s3ferry pipe up|down|join`: resolve arguments, open the bucket(s), run the pipe job.
//! Data goes to stdout only (pipe down); notes and summaries go to stderr.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;

use std::sync::Arc;

use s3ferry_engine::journal::Journal;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_jobs::pipe::{
    self, DownOptions, Output, SegmentOptions, Target, UpOptions, MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
};
use s3ferry_store::checksum::MIN_PART_SIZE;
use s3ferry_store::PutOptions;

use crate::cli::{
    parse_duration, parse_size, Global, PipeCommand, PipeCommon, PipeDownArgs, PipeJoinArgs,
    PipeUpArgs,
};
use crate::stores::{self, Role};
use crate::Fatal;

pub async fn run(g: &Global, cmd: &PipeCommand) -> Result<u8, Fatal> {
    match cmd {
        PipeCommand::Up(a) => up(g, a).await,
        PipeCommand::Down(a) => down(g, a).await,
        PipeCommand::Join(a) => join(g, a).await,
    }
}

/// `s3://bucket/key` → (bucket, key); the key is kept exactly (no slash added).
fn object_uri(uri: &str) -> Result<(String, String), Fatal> {
    let Some(rest) = uri.strip_prefix("s3://") else {
        return Err(Fatal(format!(
            "{uri:?} is not an S3 URI: use s3://bucket/key"
        )));
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    s3ferry_store::key::validate_bucket(bucket)
        .map_err(|e| Fatal(format!("bad S3 URI {uri:?}: {e}")))?;
    if key.is_empty() {
        return Err(Fatal(format!(
            "{uri:?} names no object: use s3://bucket/key"
        )));
    }
    Ok((bucket.to_string(), key.to_string()))
}

fn transfer(c: &PipeCommon, min_part: u64) -> Result<TransferConfig, Fatal> {
    let sizes = crate::checks::numbers(&crate::checks::Numbers {
        concurrency: &[("--part-concurrency", c.part_concurrency)],
        part_size: Some((&c.part_size, min_part)),
        max_memory: Some(&c.max_memory),
    })?;
    // Both are given, so both are there.
    let part_size = sizes.part_size.unwrap_or(min_part).max(1);
    let mut t = TransferConfig::new(sizes.max_memory.unwrap_or(part_size));
    t.part_size = part_size;
    t.part_concurrency = c.part_concurrency;
    Ok(t)
}

fn journal(c: &PipeCommon) -> Result<Arc<Journal>, Fatal> {
    if c.no_state {
        return Ok(Arc::new(Journal::in_memory()?));
    }
    let p = crate::state_db_path(c.state_dir.as_deref())?;
    let j = crate::checks::open_state(&p, "use --state-dir or --no-state")?;
    Ok(Arc::new(j))
}

/// A file that writes to / reads from our stdout / stdin without std's buffering.
fn raw_stdin() -> Result<Box<dyn Read + Send>, Fatal> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Fatal(format!("stdin: {e}")))?;
    Ok(Box::new(std::fs::File::from(fd)))
}

fn raw_stdout() -> Result<Box<dyn Write + Send>, Fatal> {
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Fatal(format!("stdout: {e}")))?;
    Ok(Box::new(std::fs::File::from(fd)))
}

/// The signal contract for a pipe: a future that resolves with the signal's name.
fn stop_on_signal(doing: &'static str) -> impl std::future::Future<Output = String> {
    let cancel = crate::context::signals(doing);
    async move {
        cancel.requested().await;
        cancel.reason().unwrap_or_default()
    }
}

/// A pipe stopped by a signal: one line, the exit status of an interrupted command.
fn interrupted(g: &Global, what: &str, msg: &str) -> u8 {
    if g.json {
        eprintln!(
            "{}",
            serde_json::json!({"type": "summary", "job": what, "interrupted": true, "message": msg,
                "exit_code": crate::context::EXIT_INTERRUPTED})
        );
    } else {
        crate::logs::say!(Warn, "s3ferry: {what}: {msg}");
    }
    crate::context::EXIT_INTERRUPTED
}

fn report(g: &Global, what: &str, value: serde_json::Value, text: String) {
    if g.json {
        let mut v = value;
        v["type"] = serde_json::json!("summary");
        v["job"] = serde_json::json!(what);
        eprintln!("{v}");
    } else if g.verbose > 0 && !g.quiet {
        crate::logs::say!(Info, "{text}");
    }
}

/// A stream is one object: counted (with its bytes) in the metrics once it is complete.
fn count_object(bytes: u64) {
    let m = s3ferry_engine::metrics::global();
    m.item(s3ferry_engine::events::Outcome::Copy, bytes);
    m.transferred(bytes);
}

fn note_cleaned(g: &Global, n: u64) {
    if n > 0 && !g.quiet {
        crate::logs::say!(
            Info,
            "s3ferry: cleaned up {n} unfinished upload(s) from an earlier run"
        );
    }
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1048576.0 / secs.max(1e-9)
}

async fn up(g: &Global, a: &PipeUpArgs) -> Result<u8, Fatal> {
    let (bucket, key) = object_uri(&a.uri)?;
    let transfer = transfer(&a.common, MIN_PART_SIZE)?;
    let mut metadata = BTreeMap::new();
    for kv in &a.metadata {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Fatal(format!("--metadata {kv:?}: use KEY=VALUE")))?;
        if k.is_empty() {
            return Err(Fatal(format!("--metadata {kv:?}: empty key")));
        }
        metadata.insert(k.to_string(), v.to_string());
    }
    let segmented = if a.segmented {
        let segment_size = parse_size(&a.segment_size)?;
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
            return Err(Fatal(format!(
                "--segment-size {} is outside 4 KiB to 5 GiB (smaller segments cost more in \
                 requests and manifest than they carry; a larger one would not fit one part of \
                 a multipart copy)",
                a.segment_size
            )));
        }
        let interval = parse_duration(&a.segment_interval)
            .map_err(|e| Fatal(format!("--segment-interval: {e}")))?;
        let writer_timeout = a
            .writer_timeout
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| Fatal(format!("--writer-timeout: {e}")))?;
        Some(SegmentOptions {
            segment_size,
            interval: (!interval.is_zero()).then_some(interval),
            heartbeat: parse_duration(&a.heartbeat)?,
            append: a.append,
            writer_timeout,
        })
    } else {
        None
    };
    let put = PutOptions::new()
        .content_type(a.content_type.clone())
        .metadata(metadata)
        .storage_class(a.storage_class.clone())
        .sse(a.sse.clone(), a.sse_kms_key_id.clone());
    let opts = UpOptions {
        transfer,
        put,
        staging_dir: a.staging_dir.clone(),
        segmented,
    };
    let journal = journal(&a.common)?;
    let sse_c = stores::SseCKeys::of(&a.sse_c, a.sse.as_deref())?;
    let (store, _stats) = stores::open_remote_with(g, &bucket, Role::Destination, sse_c).await?;
    let input = raw_stdin()?;
    let res = pipe::up(
        Target::new(store, key),
        input,
        opts,
        &journal,
        stop_on_signal("aborting the upload"),
    )
    .await;
    let rep = match res {
        Err(pipe::PipeError::Interrupted(m)) => return Ok(interrupted(g, "pipe up", &m)),
        r => r?,
    };
    note_cleaned(g, rep.cleaned_up);
    count_object(rep.bytes);
    report(
        g,
        "pipe up",
        serde_json::to_value(&rep).unwrap_or_default(),
        format!(
            "pipe up: {} bytes to {}{} in {:.1} s ({:.0} MiB/s), {} part(s){}, CRC64NVME {}",
            rep.bytes,
            rep.uri,
            rep.appended_to
                .map(|n| format!(" (appended after {n} bytes)"))
                .unwrap_or_default(),
            rep.elapsed_secs,
            mib_s(rep.bytes, rep.elapsed_secs),
            rep.parts,
            rep.segments
                .map(|s| format!(", {s} segment(s)"))
                .unwrap_or_default(),
            rep.crc64nvme
        ),
    );
    Ok(0)
}

pub async fn down(g: &Global, a: &PipeDownArgs) -> Result<u8, Fatal> {
    let (bucket, key) = object_uri(&a.uri)?;
    let opts = DownOptions {
        transfer: transfer(&a.common, 1)?,
        follow: a.follow,
        from_end: a.from_end,
        poll_interval: parse_duration(&a.poll_interval)?,
        writer_timeout: parse_duration(&a.writer_timeout)?,
    };
    let sse_c = stores::SseCKeys::of(&a.sse_c, None)?;
    let (store, _stats) = stores::open_remote_with(g, &bucket, Role::Source, sse_c).await?;
    let mut out = Output::new(raw_stdout()?);
    let stop = stop_on_signal("the reads in flight");
    let rep = tokio::select! {
        r = pipe::down(Target::new(store, key), &mut out, opts) => r?,
        why = stop => return Ok(interrupted(g, "pipe down", &format!("interrupted by {why}"))),
    };
    if rep.closed_early {
        // The reader went away (`| head`): that is how it ends, not an error.
        return Ok(0);
    }
    count_object(rep.bytes);
    report(
        g,
        "pipe down",
        serde_json::to_value(&rep).unwrap_or_default(),
        format!(
            "pipe down: {} bytes from {} in {:.1} s ({:.0} MiB/s){}{}",
            rep.bytes,
            rep.uri,
            rep.elapsed_secs,
            mib_s(rep.bytes, rep.elapsed_secs),
            rep.segments
                .map(|s| format!(", {s} segment(s)"))
                .unwrap_or_default(),
            if rep.verified {
                ", CRC64NVME verified"
            } else {
                ""
            }
        ),
    );
    Ok(0)
}

async fn join(g: &Global, a: &PipeJoinArgs) -> Result<u8, Fatal> {
    let (sbucket, skey) = object_uri(&a.uri)?;
    let (dbucket, dkey) = object_uri(&a.dest_uri)?;
    let transfer = transfer(&a.common, 1)?;
    let (src, _) = stores::open_remote(g, &sbucket, Role::Destination).await?;
    let dst = if dbucket == sbucket {
        src.clone()
    } else {
        stores::open_remote(g, &dbucket, Role::Destination).await?.0
    };
    let put = PutOptions::new()
        .content_type(a.content_type.clone())
        .storage_class(a.storage_class.clone());
    let journal = journal(&a.common)?;
    let res = pipe::join(
        Target::new(src, skey),
        Target::new(dst, dkey),
        put,
        transfer,
        &journal,
    )
    .await;
    let rep = res?;
    note_cleaned(g, rep.cleaned_up);
    report(
        g,
        "pipe join",
        serde_json::to_value(&rep).unwrap_or_default(),
        format!(
            "pipe join: {} bytes ({} segment(s)) into {} in {:.1} s, CRC64NVME {}",
            rep.bytes, rep.parts, rep.uri, rep.elapsed_secs, rep.crc64nvme
        ),
    );
    Ok(0)
}
