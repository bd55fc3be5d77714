//! `pipe up`: the input stream into one object, or into a segmented upload.

use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::transfer::{
    cleanup_orphan_uploads, MultipartWriter, TransferConfig, UploadAbortHandle,
};
use s3ferry_store::checksum::crc64nvme_combine;
use s3ferry_store::{
    DynStore, ErrorKind, GetOptions, ListOptions, PartLayout, PutMode, PutOptions, StoreError,
};
use tokio::sync::Mutex;

use super::input::{Chunk, Input};
use super::manifest::{manifest_key, segment_name, Append, Manifest, Segment};
use super::{crc_hex, PipeError, SegmentOptions, Target, UpOptions, UpReport};

/// One object written.
struct Uploaded {
    size: u64,
    crc: u64,
    etag: Option<String>,
    parts: u64,
}

/// The manifest as this writer last wrote it.
struct ManifestState {
    m: Manifest,
    etag: String,
    last_write: Instant,
    /// `--append`: the manifest as it was before this writer took the stream over, and the
    /// segment count then. A run that fails before it adds a segment puts it back as it was.
    taken_from: Option<(Manifest, usize)>,
}

struct Uploader {
    store: DynStore,
    cfg: TransferConfig,
    journal: Arc<Journal>,
    /// The multipart upload in progress (aborted if the run fails or is cancelled).
    active: Option<MultipartWriter>,
    /// A multipart upload being created.
    creating: Option<tokio::task::JoinHandle<s3ferry_store::Result<MultipartWriter>>>,
    /// The upload being finished: `finish` owns the writer, and a cancellation drops it.
    finishing: Option<UploadAbortHandle>,
    /// Segmented mode: the manifest's key and state.
    manifest: Option<(String, Arc<Mutex<ManifestState>>)>,
    segmented: bool,
}

/// Read `input` to its end and write it to `target`: one object (default) or a segmented
/// upload. Resolving `cancel` (e.g. on SIGINT/SIGTERM, with the reason) aborts the upload.
pub async fn up(
    target: Target,
    input: Box<dyn Read + Send>,
    opts: UpOptions,
    journal: &Arc<Journal>,
    cancel: impl Future<Output = String> + Send,
) -> Result<UpReport, PipeError> {
    let started = Instant::now();
    let uri = target.uri();
    if target.key.is_empty() || target.key.ends_with('/') {
        return Err(PipeError::Failed(format!(
            "{uri}: pipe up needs an object name, like s3://bucket/path/name"
        )));
    }
    target
        .store
        .check()
        .await
        .map_err(|e| PipeError::store(&uri, e))?;
    let staging = match &opts.staging_dir {
        Some(d) => {
            remove_dead_staging(d, journal).await;
            let dir = d.join(format!("{STAGING_PREFIX}{}", journal.run_id()));
            fs_err::create_dir_all(&dir)
                .map_err(|e| PipeError::Failed(format!("--staging-dir {}: {e}", d.display())))?;
            Some(dir)
        }
        None => None,
    };
    let cleaned = cleanup_orphan_uploads(&target.store, journal, None).await as u64;
    let interval = opts.segmented.as_ref().and_then(|s| s.interval);
    let mut input = Input::new(input, staging.clone(), &opts.transfer, interval)?;
    let mut up = Uploader {
        store: target.store.clone(),
        cfg: opts.transfer.clone(),
        journal: journal.clone(),
        active: None,
        creating: None,
        finishing: None,
        manifest: None,
        segmented: opts.segmented.is_some(),
    };
    let outcome = {
        let work = async {
            match &opts.segmented {
                None => up.whole(&target, &mut input, &opts).await,
                Some(seg) => {
                    up.segmented(&target, &mut input, &opts, seg, journal.run_id())
                        .await
                }
            }
        };
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => Ok(r),
            reason = cancel => Err(reason),
        }
    };
    let result = match outcome {
        Ok(r) => r,
        Err(reason) => Err(PipeError::Interrupted(format!("interrupted by {reason}"))),
    };
    let result = match result {
        Ok(r) => Ok(r),
        Err(PipeError::Interrupted(e)) => {
            let what = up.abort(&e, true).await;
            Err(PipeError::Interrupted(format!("{e}{what}")))
        }
        Err(e) => {
            let what = up.abort(&e.to_string(), false).await;
            Err(PipeError::Failed(format!("{e}{what}")))
        }
    };
    if let Some(d) = staging {
        let _ = fs_err::remove_dir_all(d);
    }
    let mut rep = result?;
    rep.uri = uri;
    rep.cleaned_up = cleaned;
    rep.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(rep)
}

/// Staging folders of runs that are provably dead (killed before they could remove their own):
/// removed. Those of live runs, and of runs this state database does not know, are left alone.
async fn remove_dead_staging(dir: &std::path::Path, journal: &Journal) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let runs: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let run = name.strip_prefix(STAGING_PREFIX)?;
            (!run.is_empty() && e.path().is_dir()).then(|| run.to_string())
        })
        .collect();
    if runs.is_empty() {
        return;
    }
    let Ok(dead) = journal.dead(runs).await else {
        return;
    };
    for run in dead {
        let d = dir.join(format!("{STAGING_PREFIX}{run}"));
        match fs_err::remove_dir_all(&d) {
            Ok(()) => tracing::info!(
                "removed the staging folder of a killed run: {}",
                d.display()
            ),
            Err(e) => tracing::warn!("could not remove a killed run's staging folder: {e}"),
        }
    }
}

/// A run's staging folder is `<--staging-dir>/s3ferry-pipe-<run id>`.
const STAGING_PREFIX: &str = "s3ferry-pipe-";

fn put_error(uri: &str, e: StoreError) -> PipeError {
    PipeError::store(uri, e)
}

impl Uploader {
    fn at(&self, key: &str) -> String {
        format!("{}/{key}", self.store.describe().trim_end_matches('/'))
    }

    /// Default mode: the whole stream as one object.
    async fn whole(
        &mut self,
        target: &Target,
        input: &mut Input,
        opts: &UpOptions,
    ) -> Result<UpReport, PipeError> {
        let layout = PartLayout::for_stream(self.cfg.part_size);
        let u = self
            .object(&target.key, input, u64::MAX, layout, opts.put.clone(), true)
            .await?
            .ok_or_else(|| PipeError::Failed("nothing was written".into()))?;
        Ok(UpReport {
            bytes: u.size,
            parts: u.parts,
            crc64nvme: crc_hex(u.crc),
            etag: u.etag,
            ..Default::default()
        })
    }

    /// Write at most `limit` bytes of `input` to `key`: one PutObject when they fit one part,
    /// else a multipart upload. `None` when the input had nothing left and `allow_empty` is
    /// false.
    async fn object(
        &mut self,
        key: &str,
        input: &mut Input,
        limit: u64,
        layout: PartLayout,
        put: PutOptions,
        allow_empty: bool,
    ) -> Result<Option<Uploaded>, PipeError> {
        let uri = self.at(key);
        let want1 = layout.len(1).min(limit);
        let Some(c1) = input.next(want1).await? else {
            if !allow_empty {
                return Ok(None);
            }
            return self.single(key, Bytes::new(), 0, put).await.map(Some);
        };
        let c2 = if c1.len == want1 && c1.len < limit {
            input.next(layout.len(2).min(limit - c1.len)).await?
        } else {
            None
        };
        let Some(c2) = c2 else {
            let crc = c1.crc;
            let data = c1.into_bytes().await?;
            return self.single(key, data, crc, put).await.map(Some);
        };
        // Created in a task of its own, so a cancellation cannot drop it half-way (upload open
        // on the server, writer not yet ours to abort): `abort` waits for it and aborts it.
        let (store, k, cfg, journal) = (
            self.store.clone(),
            key.to_string(),
            self.cfg.clone(),
            self.journal.clone(),
        );
        let creating = self.creating.insert(tokio::spawn(async move {
            MultipartWriter::create(store, &k, put, layout, &cfg, journal).await
        }));
        let created = creating.await;
        self.creating = None;
        let w = created
            .map_err(|e| PipeError::Failed(format!("{uri}: create task: {e}")))?
            .map_err(|e| put_error(&uri, e))?;
        self.active = Some(w);
        let (mut size, mut crc, mut parts) = (0u64, 0u64, 0u64);
        let mut pending = vec![c1, c2].into_iter();
        loop {
            let chunk = match pending.next() {
                Some(c) => c,
                None => {
                    if size >= limit {
                        break;
                    }
                    let want = layout.len(parts as u32 + 1).min(limit - size);
                    match input.next(want).await? {
                        Some(c) => c,
                        None => break,
                    }
                }
            };
            crc = crc64nvme_combine(crc, chunk.crc, chunk.len);
            size += chunk.len;
            parts += 1;
            self.push(&uri, chunk).await?;
        }
        let Some(w) = self.active.take() else {
            return Err(PipeError::Failed(format!("{uri}: upload lost")));
        };
        self.finishing = Some(w.abort_handle());
        let res = w.finish(Some(crc)).await;
        self.finishing = None;
        let res = res.map_err(|e| put_error(&uri, e))?;
        Ok(Some(Uploaded {
            size,
            crc,
            etag: res.etag,
            parts,
        }))
    }

    async fn push(&mut self, uri: &str, chunk: Chunk) -> Result<(), PipeError> {
        let Some(w) = self.active.as_mut() else {
            return Err(PipeError::Failed(format!("{uri}: upload lost")));
        };
        w.push(chunk.into_body())
            .await
            .map_err(|e| put_error(uri, e))
    }

    async fn single(
        &mut self,
        key: &str,
        data: Bytes,
        crc: u64,
        put: PutOptions,
    ) -> Result<Uploaded, PipeError> {
        let size = data.len() as u64;
        let res = self
            .store
            .put(key, data, put.crc64nvme(Some(crc)))
            .await
            .map_err(|e| put_error(&self.at(key), e))?;
        Ok(Uploaded {
            size,
            crc,
            etag: res.etag,
            parts: 1,
        })
    }

    /// Segmented mode: segments of at most `seg.segment_size` (cut early when `seg.interval`
    /// has passed since a segment's first byte) and a manifest rewritten as they complete.
    async fn segmented(
        &mut self,
        target: &Target,
        input: &mut Input,
        opts: &UpOptions,
        seg: &SegmentOptions,
        writer: &str,
    ) -> Result<UpReport, PipeError> {
        let base = target.key.trim_end_matches('/').to_string();
        let mkey = manifest_key(&base);
        let muri = self.at(&mkey);
        let taken = if seg.append {
            self.take_over(target, &mkey, seg, writer).await?
        } else {
            None
        };
        let (m, etag, taken_from) = match taken {
            Some((m, etag, old)) => (m, etag, Some(old)),
            None => {
                let mut m = Manifest::new(writer, seg.segment_size);
                describe_writer(&mut m, seg);
                let res = self
                    .store
                    .put(
                        &mkey,
                        Bytes::from(m.to_json()),
                        manifest_put(PutMode::Create),
                    )
                    .await
                    .map_err(|e| match e.kind {
                        ErrorKind::AlreadyExists | ErrorKind::PreconditionFailed => {
                            PipeError::Failed(format!(
                                "{muri} already exists: another writer is using {}, or an earlier \
                                 upload is there (pipe up --segmented never overwrites one; use \
                                 --append to continue it once its writer is gone, delete it, or \
                                 pick another URI)",
                                target.uri()
                            ))
                        }
                        _ => put_error(&muri, e),
                    })?;
                (m, etag_of(&muri, res.etag)?, None)
            }
        };
        let first = m.segment_count();
        let (before_crc, before) = m.segments_crc();
        input.resume_at(before, before_crc);
        let strays_after = taken_from
            .as_ref()
            .map(|o| (o.first_segment, o.segment_count()));
        let state = Arc::new(Mutex::new(ManifestState {
            m,
            etag,
            last_write: Instant::now(),
            taken_from: taken_from.map(|o| (o, first)),
        }));
        self.manifest = Some((mkey.clone(), state.clone()));
        if let Some((sealed, listed)) = strays_after {
            self.remove_strays(target, &base, sealed, listed).await?;
        }
        let heartbeat = tokio::spawn(heartbeat(
            self.store.clone(),
            mkey.clone(),
            muri.clone(),
            state.clone(),
            seg.heartbeat,
        ));
        let _stop = AbortHandle(heartbeat);

        let layout = PartLayout::Uniform(self.cfg.part_size.min(seg.segment_size));
        let mut parts = 0u64;
        for i in first.. {
            let name = segment_name(i);
            let key = format!("{base}/{name}");
            let put = opts.put.clone().mode(PutMode::Create);
            input.begin_segment();
            let Some(u) = self
                .object(&key, input, seg.segment_size, layout, put, false)
                .await
                .map_err(|e| segment_taken(e, &muri))?
            else {
                break;
            };
            parts += u.parts;
            let mut st = state.lock().await;
            st.m.segments.push(Segment {
                key: name,
                size: u.size,
                crc64nvme: crc_hex(u.crc),
                etag: u.etag,
            });
            // Keep the manifest short: the oldest segments go into an index object first.
            if let Some((index, mut entry)) = st.m.due_seal() {
                let ikey = format!("{base}/{}", entry.key);
                let res = self
                    .store
                    .put(
                        &ikey,
                        Bytes::from(index.to_json()),
                        manifest_put(PutMode::Create),
                    )
                    .await
                    .map_err(|e| segment_taken(put_error(&self.at(&ikey), e), &muri))?;
                entry.etag = res.etag;
                st.m.seal(entry);
            }
            // The input has ended: the manifest says complete in the same write.
            let last = input.ended();
            if last {
                complete(&mut st.m, input);
            }
            write_manifest(&self.store, &mkey, &muri, &mut st).await?;
            if last {
                break;
            }
        }
        let mut st = state.lock().await;
        if !st.m.complete {
            complete(&mut st.m, input);
            write_manifest(&self.store, &mkey, &muri, &mut st).await?;
        }
        // This run's segments (an append adds to the ones before it).
        let segments = (st.m.segment_count() - first) as u64;
        let etag = Some(st.etag.clone());
        drop(st);
        self.manifest = None;
        Ok(UpReport {
            bytes: input.total - before,
            parts,
            segments: Some(segments),
            appended_to: seg.append.then_some(before),
            crc64nvme: crc_hex(input.crc),
            etag,
            ..Default::default()
        })
    }

    /// `--append`: continue the segmented upload at `base` if there is one (`None`: there is
    /// none, start it). Its writer must be gone: the stream is complete, failed or stopped, or its
    /// manifest has not changed for the writer timeout (partly waited for here, partly known
    /// from the manifest's age). Taken over with a compare-and-swap of the manifest, so of two
    /// appenders one wins; segment objects a killed writer left beyond the manifest go.
    async fn take_over(
        &self,
        target: &Target,
        mkey: &str,
        seg: &SegmentOptions,
        writer: &str,
    ) -> Result<Option<(Manifest, String, Manifest)>, PipeError> {
        let (uri, muri) = (target.uri(), self.at(mkey));
        let got = match self.store.get(mkey, GetOptions::new()).await {
            Ok(g) => g,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(put_error(&muri, e)),
        };
        let meta = got.meta.clone();
        let data = got.bytes().await.map_err(|e| put_error(&muri, e))?;
        let old = Manifest::parse(&data).map_err(|e| {
            PipeError::Failed(format!(
                "{muri}: {e} (--append continues only a segmented upload written by pipe up)"
            ))
        })?;
        let etag = etag_of(&muri, meta.etag.clone())?;
        if !old.complete && old.failed.is_none() && old.stopped.is_none() {
            let timeout = seg.writer_timeout.unwrap_or_else(|| {
                old.heartbeat_secs
                    .map(|h| Duration::from_secs(h.max(1) * 3))
                    .unwrap_or(DEFAULT_WRITER_TIMEOUT)
            });
            self.wait_until_gone(&uri, mkey, &old, &etag, meta.last_modified, timeout)
                .await?;
        }
        let mut m = old.clone();
        m.version = super::manifest::VERSION;
        if m.stream.is_empty() {
            m.stream = old.writer.clone();
        }
        m.writer = writer.to_string();
        m.segment_size = m.segment_size.max(seg.segment_size);
        describe_writer(&mut m, seg);
        m.complete = false;
        m.total_size = None;
        m.crc64nvme = None;
        m.failed = None;
        m.stopped = None;
        m.appends.push(Append {
            writer: writer.to_string(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            first_segment: old.segment_count(),
        });
        m.touch();
        let res = self
            .store
            .put(
                mkey,
                Bytes::from(m.to_json()),
                manifest_put(PutMode::Update { etag }),
            )
            .await
            .map_err(|e| match e.kind {
                ErrorKind::PreconditionFailed | ErrorKind::NotFound => PipeError::Failed(format!(
                    "{uri}: another writer took the stream over first ({muri} changed while this \
                     one did); not appending"
                )),
                _ => put_error(&muri, e),
            })?;
        let etag = etag_of(&muri, res.etag)?;
        Ok(Some((m, etag, old)))
    }

    /// Segments (and indexes) a dead writer wrote but never listed (killed between a write and
    /// the manifest's): segments from `listed` on, indexes from `sealed` on.
    async fn remove_strays(
        &self,
        target: &Target,
        base: &str,
        sealed: usize,
        listed: usize,
    ) -> Result<(), PipeError> {
        let uri = target.uri();
        let mut stray = self.store.list(ListOptions::prefix(format!("{base}/")));
        let mut gone = Vec::new();
        while let Some(o) = stray.next().await {
            let o = o.map_err(|e| put_error(&uri, e))?;
            let name = &o.key[base.len() + 1..];
            let number = |n: &str| {
                (n.len() == 12 && n.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| n.parse::<usize>().ok())
                    .flatten()
            };
            let stray = match name
                .strip_prefix("index-")
                .and_then(|n| n.strip_suffix(".json"))
            {
                Some(first) => number(first).is_some_and(|i| i >= sealed),
                None => number(name).is_some_and(|i| i >= listed),
            };
            if stray {
                gone.push(o.key);
            }
        }
        if !gone.is_empty() {
            let results = self
                .store
                .delete_many(&gone)
                .await
                .map_err(|e| put_error(&uri, e))?;
            for (k, r) in gone.iter().zip(results) {
                r.map_err(|e| put_error(&self.at(k), e))?;
                tracing::info!(
                    "removed {}: a segment its killed writer never listed",
                    self.at(k)
                );
            }
        }
        Ok(())
    }

    /// Wait until the manifest has not changed for `timeout` (counting its age by its
    /// Last-Modified, which needs this machine's clock to be roughly right); refuse at once if
    /// it changes: its writer is alive.
    async fn wait_until_gone(
        &self,
        uri: &str,
        mkey: &str,
        old: &Manifest,
        etag: &str,
        modified: Option<std::time::SystemTime>,
        timeout: Duration,
    ) -> Result<(), PipeError> {
        let age = modified
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        let Some(left) = timeout.checked_sub(age).filter(|d| !d.is_zero()) else {
            return Ok(());
        };
        tracing::warn!(
            "{uri}: its writer ({}) wrote the manifest {:.0} s ago; waiting up to {:.0} s to be \
             sure it is gone before appending",
            old.writer,
            age.as_secs_f64(),
            left.as_secs_f64()
        );
        let until = Instant::now() + left;
        let step = (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep(step.min(until - now)).await;
            let changed = match self.store.head(mkey).await {
                Ok(m) => m.etag.as_deref() != Some(etag),
                Err(e) if e.kind == ErrorKind::NotFound => true,
                Err(e) => return Err(put_error(&self.at(mkey), e)),
            };
            if changed {
                return Err(PipeError::Failed(format!(
                    "{uri} is still being written: its writer ({}) changed the manifest while \
                     this one waited; --append continues a stream only once its writer is gone",
                    old.writer
                )));
            }
        }
    }

    /// The run failed or was cancelled: abort the upload in progress. A segmented upload is
    /// marked failed (its followers stop at once), or, when the run was stopped on request,
    /// stopped: left open for `--append`, its followers waiting for it. Says what was left
    /// ("; …"), or nothing when a segmented run stopped before it wrote anything.
    async fn abort(&mut self, why: &str, stopped: bool) -> String {
        let started = self.creating.is_some() || self.active.is_some() || self.finishing.is_some();
        if let Some(h) = self.creating.take() {
            if let Ok(Ok(w)) = h.await {
                w.abort().await;
            }
        }
        if let Some(w) = self.active.take() {
            w.abort().await;
        }
        if let Some(h) = self.finishing.take() {
            h.abort().await;
        }
        let Some((mkey, state)) = self.manifest.take() else {
            if self.segmented && !started {
                return String::new();
            }
            return "; the upload was aborted; no object was written".into();
        };
        let muri = self.at(&mkey);
        let mut st = state.lock().await;
        // An append that added nothing: the stream goes back to what it was (complete stays
        // complete, a dead writer's stays open for the next --append).
        if let Some((old, first)) = st.taken_from.clone() {
            if st.m.segment_count() == first {
                st.m = old;
                return match write_manifest(&self.store, &mkey, &muri, &mut st).await {
                    Ok(()) => format!("; {muri} is as it was before this run"),
                    Err(e) => format!("; could not put {muri} back as it was ({e})"),
                };
            }
        }
        if stopped {
            st.m.stopped = Some(why.to_string());
        } else {
            st.m.failed = Some(why.to_string());
        }
        match write_manifest(&self.store, &mkey, &muri, &mut st).await {
            Ok(()) if stopped => format!(
                "; the segmented upload is left open in {muri}: `pipe up --segmented --append` \
                 continues it"
            ),
            Ok(()) => format!("; the segmented upload is marked failed in {muri}"),
            Err(e) => format!("; could not mark the segmented upload in {muri} ({e})"),
        }
    }
}

/// What a writer promises its readers: how long a segment may wait, how often it rewrites.
fn describe_writer(m: &mut Manifest, seg: &SegmentOptions) {
    m.segment_interval_ms = seg.interval.map(|d| d.as_millis() as u64);
    m.heartbeat_secs = Some(seg.heartbeat.as_secs().max(1));
}

/// A segment's create-only write found an object there: a writer that was thought dead wrote
/// it after this one took the stream over.
fn segment_taken(e: PipeError, muri: &str) -> PipeError {
    match e {
        PipeError::Store { uri, source }
            if matches!(
                source.kind,
                ErrorKind::AlreadyExists | ErrorKind::PreconditionFailed
            ) =>
        {
            PipeError::Failed(format!(
                "{uri} was written by another writer (one thought dead?); stopping ({muri} lists \
                 what was published)"
            ))
        }
        e => e,
    }
}

/// A writer whose manifest says nothing of its heartbeat (version 1) is gone after this long.
const DEFAULT_WRITER_TIMEOUT: Duration = Duration::from_secs(300);

fn complete(m: &mut Manifest, input: &Input) {
    m.complete = true;
    m.total_size = Some(input.total);
    m.crc64nvme = Some(crc_hex(input.crc));
}

fn manifest_put(mode: PutMode) -> PutOptions {
    PutOptions::new()
        .mode(mode)
        .content_type(Some("application/json".into()))
}

fn etag_of(uri: &str, etag: Option<String>) -> Result<String, PipeError> {
    etag.ok_or_else(|| {
        PipeError::Failed(format!(
            "{uri}: the store returned no ETag, which segmented uploads need"
        ))
    })
}

/// Rewrite the manifest if it is still the version this writer wrote last.
async fn write_manifest(
    store: &DynStore,
    mkey: &str,
    muri: &str,
    st: &mut ManifestState,
) -> Result<(), PipeError> {
    st.m.touch();
    let mode = PutMode::Update {
        etag: st.etag.clone(),
    };
    let res = store
        .put(mkey, Bytes::from(st.m.to_json()), manifest_put(mode))
        .await
        .map_err(|e| match e.kind {
            ErrorKind::PreconditionFailed | ErrorKind::NotFound => PipeError::Failed(format!(
                "{muri} was changed or removed by someone else (a second writer?); stopping"
            )),
            _ => put_error(muri, e),
        })?;
    st.etag = etag_of(muri, res.etag)?;
    st.last_write = Instant::now();
    Ok(())
}

/// Rewrite the manifest when it has not been written for `every`, so followers can tell a
/// slow writer from a dead one.
async fn heartbeat(
    store: DynStore,
    mkey: String,
    muri: String,
    state: Arc<Mutex<ManifestState>>,
    every: Duration,
) {
    let every = every.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every / 2).await;
        let mut st = state.lock().await;
        if st.m.complete || st.m.failed.is_some() || st.last_write.elapsed() < every {
            continue;
        }
        st.m.heartbeat += 1;
        if let Err(e) = write_manifest(&store, &mkey, &muri, &mut st).await {
            tracing::warn!("heartbeat: {e}");
            st.m.heartbeat -= 1;
        }
    }
}

struct AbortHandle(tokio::task::JoinHandle<()>);

impl Drop for AbortHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}
