//! `pipe up`: the input stream into one object, or into a segmented upload.

use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::transfer::{
    cleanup_orphan_uploads, MultipartWriter, TransferConfig, UploadAbortHandle,
};
use s3ferry_store::checksum::crc64nvme_combine;
use s3ferry_store::{DynStore, ErrorKind, PartLayout, PutMode, PutOptions, StoreError};
use tokio::sync::Mutex;

use super::input::{Chunk, Input};
use super::manifest::{manifest_key, segment_name, Manifest, Segment};
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
    let cleaned = cleanup_orphan_uploads(&target.store, journal, None).await as u64;
    let staging = match &opts.staging_dir {
        Some(d) => {
            let dir = d.join(format!("s3ferry-pipe-{}", journal.run_id()));
            fs_err::create_dir_all(&dir)
                .map_err(|e| PipeError::Failed(format!("--staging-dir {}: {e}", d.display())))?;
            Some(dir)
        }
        None => None,
    };
    let mut input = Input::new(input, staging.clone(), &opts.transfer);
    let mut up = Uploader {
        store: target.store.clone(),
        cfg: opts.transfer.clone(),
        journal: journal.clone(),
        active: None,
        creating: None,
        finishing: None,
        manifest: None,
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
            let what = up.abort(&e).await;
            Err(PipeError::Interrupted(format!("{e}; {what}")))
        }
        Err(e) => {
            let what = up.abort(&e.to_string()).await;
            Err(PipeError::Failed(format!("{e}; {what}")))
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

    /// Segmented mode: segments of `seg.segment_size` and a manifest rewritten as they
    /// complete.
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
        let m = Manifest::new(writer, seg.segment_size);
        let res = self
            .store
            .put(&mkey, Bytes::from(m.to_json()), manifest_put(PutMode::Create))
            .await
            .map_err(|e| match e.kind {
                ErrorKind::AlreadyExists | ErrorKind::PreconditionFailed => PipeError::Failed(format!(
                    "{muri} already exists: another writer is using {}, or an earlier upload is \
                     there (pipe up --segmented never overwrites one; delete it or pick another URI)",
                    target.uri()
                )),
                _ => put_error(&muri, e),
            })?;
        let state = Arc::new(Mutex::new(ManifestState {
            m,
            etag: etag_of(&muri, res.etag)?,
            last_write: Instant::now(),
        }));
        self.manifest = Some((mkey.clone(), state.clone()));
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
        for i in 0usize.. {
            let name = segment_name(i);
            let key = format!("{base}/{name}");
            let put = opts.put.clone().mode(PutMode::Create);
            let Some(u) = self
                .object(&key, input, seg.segment_size, layout, put, false)
                .await?
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
            // A short segment is the last: the manifest says complete in the same write.
            let last = u.size < seg.segment_size;
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
        let segments = st.m.segments.len() as u64;
        let etag = Some(st.etag.clone());
        drop(st);
        self.manifest = None;
        Ok(UpReport {
            bytes: input.total,
            parts,
            segments: Some(segments),
            crc64nvme: crc_hex(input.crc),
            etag,
            ..Default::default()
        })
    }

    /// The run failed or was cancelled: abort the upload in progress; mark a segmented upload
    /// failed so its followers stop at once. Says what was left behind.
    async fn abort(&mut self, why: &str) -> String {
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
            return "the upload was aborted; no object was written".into();
        };
        let muri = self.at(&mkey);
        let mut st = state.lock().await;
        st.m.failed = Some(why.to_string());
        match write_manifest(&self.store, &mkey, &muri, &mut st).await {
            Ok(()) => format!("the segmented upload is marked failed in {muri}"),
            Err(e) => format!("could not mark the segmented upload failed ({e})"),
        }
    }
}

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
