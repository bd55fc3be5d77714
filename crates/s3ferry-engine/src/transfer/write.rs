//! Writing an object as a multipart upload whose parts are pushed as they come: numbered in
//! order, sent with bounded concurrency, each with its CRC64NVME, the whole object with the
//! combined full-object CRC64NVME. The upload is journaled while open (a killed run's successor
//! aborts it) and aborted on any failure, so a partial object never appears under its key.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use s3ferry_store::checksum::{crc64nvme, crc64nvme_combine};
use s3ferry_store::{
    ByteStream, CopySource, DynStore, ErrorKind, FileRange, PartInfo, PartLayout, PutMode,
    PutOptions, PutResult, Result, StoreError,
};
use tokio::task::JoinSet;

use super::{Reservation, TransferConfig};
use crate::events::Reporter;
use crate::journal::{Journal, JournalError};

/// Journal id of the intent to create a multipart upload (written before CreateMultipartUpload,
/// whose answer can be lost: the upload then exists but nobody knows its id).
pub const PENDING_UPLOAD: &str = "(pending)";
/// How far the server's clock may be from ours when we judge an upload as started by us.
const CLOCK_SLACK: Duration = Duration::from_secs(300);
/// Memory a streamed part holds while it is written to a local file in place.
const STREAM_RESERVE: u64 = 2 * 1024 * 1024;
/// Memory a part sent from a file holds (read buffers).
const FILE_RESERVE: u64 = 512 * 1024;

/// Where a part's bytes come from.
pub enum PartBody {
    /// Bytes in memory, with the reservation of the memory budget that holds them (if any).
    Bytes(Bytes, Option<Reservation>),
    /// `len` bytes produced by a future run in the part's task (memory is reserved first).
    Read(u64, BoxFuture<'static, Result<Bytes>>),
    /// A stream of exactly `len` bytes; a local destination writes it in place as it comes.
    Stream(u64, ByteStream),
    /// A range of a local file: stores that can send it from the file (S3) hold no part in
    /// memory, and read it again for a retry.
    File(FileRange),
    /// A range of a staged temp file that is removed once the part is uploaded, failed or
    /// abandoned (data staged on disk instead of held in memory).
    TempFile(FileRange),
    /// Server-side: UploadPartCopy of `range` of the source.
    Copy(CopySource, Range<u64>),
}

impl PartBody {
    fn len(&self) -> u64 {
        match self {
            Self::Bytes(b, _) => b.len() as u64,
            Self::Read(n, _) | Self::Stream(n, _) => *n,
            Self::File(f) | Self::TempFile(f) => f.len,
            Self::Copy(_, r) => r.end - r.start,
        }
    }
}

struct DonePart {
    info: PartInfo,
    len: u64,
    /// CRC64NVME of the part's bytes as we sent them (or as the store reports them).
    crc: Option<u64>,
}

fn jerr(e: JournalError) -> StoreError {
    StoreError::new(ErrorKind::Other, "journal", e.to_string())
}

/// A multipart upload in progress. Push parts with [`MultipartWriter::push`], then
/// [`MultipartWriter::finish`] or [`MultipartWriter::abort`] (or use [`upload_parts`]).
pub struct MultipartWriter {
    store: DynStore,
    key: String,
    upload_id: String,
    layout: PartLayout,
    mode: PutMode,
    cfg: TransferConfig,
    journal: Arc<Journal>,
    store_id: String,
    intent_at: SystemTime,
    window: usize,
    tasks: JoinSet<Result<DonePart>>,
    done: BTreeMap<u32, DonePart>,
    next_part: u32,
    pushed_bytes: u64,
    /// The previous part was shorter than the layout: it must have been the last.
    short_seen: bool,
    copies: bool,
    progress: Option<Arc<dyn Reporter>>,
}

impl MultipartWriter {
    /// Start an upload of `key` (journaled before and after CreateMultipartUpload). Parts follow
    /// `layout`; `opts.mode` applies at completion (create-only or compare-and-swap).
    pub async fn create(
        store: DynStore,
        key: &str,
        opts: PutOptions,
        layout: PartLayout,
        cfg: &TransferConfig,
        journal: Arc<Journal>,
    ) -> Result<Self> {
        let store_id = store.state_id();
        let intent_at = SystemTime::now();
        let mode = opts.mode.clone();
        journal
            .upload_started(&store_id, key, PENDING_UPLOAD)
            .await
            .map_err(jerr)?;
        let upload_id = match store.create_multipart(key, opts, layout).await {
            Ok(id) => id,
            Err(e) => {
                sweep_stray_uploads(&store, &journal, key, None, intent_at).await;
                journal.upload_ended(&store_id, key, PENDING_UPLOAD);
                return Err(e);
            }
        };
        if let Err(e) = journal.upload_started(&store_id, key, &upload_id).await {
            let _ = store.abort_multipart(key, &upload_id).await;
            journal.upload_ended(&store_id, key, PENDING_UPLOAD);
            return Err(jerr(e));
        }
        Ok(Self {
            store,
            key: key.to_string(),
            upload_id,
            layout,
            mode,
            cfg: cfg.clone(),
            journal,
            store_id,
            intent_at,
            window: cfg.part_concurrency.max(1),
            tasks: JoinSet::new(),
            done: BTreeMap::new(),
            next_part: 1,
            pushed_bytes: 0,
            short_seen: false,
            copies: false,
            progress: None,
        })
    }

    /// Report bytes of finished parts to `r`.
    pub fn with_progress(mut self, r: Arc<dyn Reporter>) -> Self {
        self.progress = Some(r);
        self
    }

    /// Parts in flight at once (default: the config's part concurrency).
    pub fn with_window(mut self, n: usize) -> Self {
        self.window = n.max(1);
        self
    }

    pub fn upload_id(&self) -> &str {
        &self.upload_id
    }

    /// A handle that can abort this upload after the writer itself is gone — e.g. when a
    /// `finish` in progress is cancelled (its future dropped), which would otherwise leave
    /// the upload open. Aborting an upload that did complete is harmless (it is not found).
    pub fn abort_handle(&self) -> UploadAbortHandle {
        UploadAbortHandle {
            store: self.store.clone(),
            key: self.key.clone(),
            upload_id: self.upload_id.clone(),
            journal: self.journal.clone(),
            store_id: self.store_id.clone(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The size the next part must have unless it is the last.
    pub fn next_part_len(&self) -> u64 {
        self.layout.len(self.next_part)
    }

    /// Bytes pushed so far.
    pub fn pushed_bytes(&self) -> u64 {
        self.pushed_bytes
    }

    fn fail(&self, msg: String) -> StoreError {
        StoreError::new(ErrorKind::InvalidInput, "multipart", msg).with_key(&self.key)
    }

    /// Take finished parts until fewer than `room` are in flight.
    async fn drain_to(&mut self, room: usize) -> Result<()> {
        while self.tasks.len() >= room.max(1) {
            let Some(r) = self.tasks.join_next().await else {
                break;
            };
            let part = r.map_err(|e| {
                StoreError::new(ErrorKind::Other, "upload_part", format!("part task: {e}"))
                    .with_key(&self.key)
            })??;
            self.done.insert(part.info.part_number, part);
        }
        Ok(())
    }

    /// Send the next part (numbered in push order). Waits while the window is full; the part
    /// uploads in the background. Every part but the last must have [`Self::next_part_len`] bytes.
    pub async fn push(&mut self, body: PartBody) -> Result<()> {
        let n = self.next_part;
        let len = body.len();
        let want = self.layout.len(n);
        if self.short_seen || len > want || (len == 0 && n > 1) {
            return Err(self.fail(format!(
                "part {n} has {len} bytes; the layout wants {want} (only the last part may be shorter)"
            )));
        }
        if n as u64 > s3ferry_store::checksum::MAX_PARTS {
            return Err(self.fail("more than 10,000 parts".into()));
        }
        self.drain_to(self.window).await?;
        self.short_seen = len < want;
        self.next_part += 1;
        self.pushed_bytes += len;
        self.copies |= matches!(body, PartBody::Copy(..));
        let (store, key, id, cfg) = (
            self.store.clone(),
            self.key.clone(),
            self.upload_id.clone(),
            self.cfg.clone(),
        );
        let progress = self.progress.clone();
        let local = store.capabilities().local;
        // A staged file goes when the task ends, even if it is aborted before it ran.
        let staged = match &body {
            PartBody::TempFile(f) => Some(RemoveOnDrop(f.path.clone())),
            _ => None,
        };
        self.tasks.spawn(async move {
            let _staged = staged;
            let (info, crc) = match body {
                PartBody::Bytes(data, _mem) => {
                    let crc = crc64nvme(&data);
                    let info = store.upload_part(&key, &id, n, data, Some(crc)).await?;
                    (info, Some(crc))
                }
                PartBody::Read(len, fut) => {
                    let _mem = cfg.reserve(len).await?;
                    let data = fut.await?;
                    if data.len() as u64 != len {
                        return Err(StoreError::new(
                            ErrorKind::Corrupt,
                            "read",
                            format!("part {n}: read {} bytes, expected {len}", data.len()),
                        )
                        .with_key(&key));
                    }
                    let crc = crc64nvme(&data);
                    let info = store.upload_part(&key, &id, n, data, Some(crc)).await?;
                    (info, Some(crc))
                }
                PartBody::Stream(len, body) => {
                    let _mem = cfg
                        .reserve(if local { len.min(STREAM_RESERVE) } else { len })
                        .await?;
                    let info = store.upload_part_stream(&key, &id, n, len, body).await?;
                    let crc = info.crc64nvme;
                    (info, crc)
                }
                PartBody::File(file) | PartBody::TempFile(file) => {
                    let _mem = cfg.reserve(FILE_RESERVE).await?;
                    let f = file.clone();
                    let crc = tokio::task::spawn_blocking(move || f.crc64nvme())
                        .await
                        .map_err(|e| StoreError::new(ErrorKind::Other, "read", e.to_string()))?
                        .map_err(|e| StoreError::io("read", &key, e))?;
                    let info = store
                        .upload_part_file(&key, &id, n, file, Some(crc))
                        .await?;
                    (info, Some(crc))
                }
                PartBody::Copy(from, range) => {
                    let info = store.upload_part_copy(&key, &id, n, &from, range).await?;
                    let crc = info.crc64nvme;
                    (info, crc)
                }
            };
            if let Some(p) = &progress {
                p.bytes(len);
            }
            Ok(DonePart { info, len, crc })
        });
        Ok(())
    }

    /// Wait until every part pushed so far is uploaded.
    pub async fn flush(&mut self) -> Result<()> {
        self.drain_to(1).await
    }

    /// Wait for every part, check the combined CRC64NVME against `expect` (the source's
    /// full-object checksum, if known), and complete the upload. Aborts it on any failure.
    pub async fn finish(mut self, expect: Option<u64>) -> Result<PutResult> {
        let r = self.finish_inner(expect).await;
        if r.is_err() {
            self.abort_inner().await;
        }
        self.close().await;
        r
    }

    async fn finish_inner(&mut self, expect: Option<u64>) -> Result<PutResult> {
        self.drain_to(1).await?;
        if self.done.is_empty() {
            return Err(self.fail("no parts were written".into()));
        }
        let mut whole = Some(0u64);
        let mut infos = Vec::with_capacity(self.done.len());
        for (i, (n, p)) in self.done.iter().enumerate() {
            if *n as usize != i + 1 {
                return Err(self.fail(format!("part {} is missing", i + 1)));
            }
            whole = whole
                .zip(p.crc)
                .map(|(a, c)| crc64nvme_combine(a, c, p.len));
            infos.push(p.info.clone());
        }
        if let (Some(want), Some(got)) = (expect, whole) {
            if want != got {
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    "verify",
                    "CRC64NVME of the parts does not match the source",
                )
                .with_key(&self.key));
            }
        }
        let send = if self.copies { None } else { whole };
        let mut res = self
            .store
            .complete_multipart(&self.key, &self.upload_id, infos, send, self.mode.clone())
            .await
            .map_err(|mut e| {
                // The upload is gone (NoSuchUpload: S3 cancels one whose conditional complete
                // conflicted, or a lifecycle rule aborted it): a transfer from the start, with
                // a new upload, will do.
                if e.kind == ErrorKind::NotFound {
                    e.kind = ErrorKind::Transient;
                    e.message = format!(
                        "{} (the multipart upload is gone; the object is sent again)",
                        e.message
                    );
                }
                e
            })?;
        if res.crc64nvme.is_none() {
            res.crc64nvme = whole;
        }
        Ok(res)
    }

    async fn abort_inner(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Err(e) = self.store.abort_multipart(&self.key, &self.upload_id).await {
            tracing::warn!(
                "could not abort upload {} of {}: {e}",
                self.upload_id,
                self.key
            );
        }
    }

    /// Forget the journal records; catch the upload of a create whose answer was lost.
    async fn close(&mut self) {
        self.journal
            .upload_ended(&self.store_id, &self.key, &self.upload_id);
        sweep_stray_uploads(
            &self.store,
            &self.journal,
            &self.key,
            Some(&self.upload_id),
            self.intent_at,
        )
        .await;
        self.journal
            .upload_ended(&self.store_id, &self.key, PENDING_UPLOAD);
    }

    /// Abort the upload: nothing appears under the key.
    pub async fn abort(mut self) {
        self.abort_inner().await;
        self.close().await;
    }
}

/// See [`MultipartWriter::abort_handle`].
#[derive(Clone, Debug)]
pub struct UploadAbortHandle {
    store: DynStore,
    key: String,
    upload_id: String,
    journal: Arc<Journal>,
    store_id: String,
}

impl UploadAbortHandle {
    /// Abort the upload (a missing one counts as aborted) and forget its journal record.
    pub async fn abort(self) {
        match self.store.abort_multipart(&self.key, &self.upload_id).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(
                    "could not abort upload {} of {}: {e}",
                    self.upload_id,
                    self.key
                );
                return;
            }
        }
        self.journal
            .upload_ended(&self.store_id, &self.key, &self.upload_id);
    }
}

/// Push every body in order and finish (or abort on the first failure).
pub async fn upload_parts(
    mut w: MultipartWriter,
    bodies: impl IntoIterator<Item = PartBody>,
    expect: Option<u64>,
) -> Result<PutResult> {
    for b in bodies {
        if let Err(e) = w.push(b).await {
            w.abort().await;
            return Err(e);
        }
    }
    w.finish(expect).await
}

/// Removes a staged file when dropped (the part's task ended, whatever the outcome).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs_err::remove_file(&self.0);
    }
}

/// Abort the multipart uploads of exactly `key` that started after `since` (less clock slack),
/// other than `keep`: uploads created by a create whose response never arrived. Nothing is
/// swept while another live run (sharing this state database) has an upload of the same key
/// recorded: the stray may be its upload. Local stores are skipped: their upload ids are fresh
/// temp names, never lost that way, and listing them walks the whole tree.
pub async fn sweep_stray_uploads(
    store: &DynStore,
    journal: &Journal,
    key: &str,
    keep: Option<&str>,
    since: SystemTime,
) {
    if store.capabilities().local {
        return;
    }
    match journal.others_uploading(&store.state_id(), key).await {
        Ok(false) => {}
        Ok(true) => {
            tracing::debug!("not sweeping strays of {key}: another run is uploading it");
            return;
        }
        Err(e) => {
            tracing::warn!("{e}");
            return;
        }
    }
    let Ok(ups) = store.list_multipart(key).await else {
        return;
    };
    let from = since.checked_sub(CLOCK_SLACK).unwrap_or(since);
    for u in ups {
        let ours = u.key == key
            && keep != Some(u.upload_id.as_str())
            && u.initiated.is_some_and(|t| t >= from);
        if ours {
            tracing::debug!("aborting stray upload {} of {key}", u.upload_id);
            if let Err(e) = store.abort_multipart(key, &u.upload_id).await {
                tracing::warn!("could not abort stray upload {} of {key}: {e}", u.upload_id);
            }
        }
    }
}

/// A local temp file of a run this state database does not know is removed once it is this old
/// (its writer touched it last that long ago): no transfer stalls that long and lives.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 3600);

/// Abort the multipart uploads that dead runs recorded in `store` (a killed run's leftovers)
/// and forget them; with `local_walk`, also remove temp files under that prefix of a local
/// store that provably belong to a dead run, or that nobody touched for [`STALE_TEMP_AGE`] (a
/// walk of the tree: only worth it when a run of this destination did not end). Uploads and
/// temp files of live runs — this one, another process on the same state database, or one on
/// another state database or none — are never touched. Returns how many uploads were cleaned up.
pub async fn cleanup_orphan_uploads(
    store: &DynStore,
    journal: &Journal,
    local_walk: Option<&str>,
) -> usize {
    let store_id = store.state_id();
    let orphans = match journal.orphan_uploads(&store_id).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("{e}");
            Vec::new()
        }
    };
    // One upload can have two rows (the intent and its id): count uploads, not rows.
    let with_id: HashSet<&str> = orphans
        .iter()
        .filter(|o| o.upload_id != PENDING_UPLOAD)
        .map(|o| o.key.as_str())
        .collect();
    let mut n = orphans
        .iter()
        .filter(|o| o.upload_id != PENDING_UPLOAD || !with_id.contains(o.key.as_str()))
        .count();
    for o in &orphans {
        if o.upload_id == PENDING_UPLOAD {
            // Killed between noting the intent and learning the upload id (or the answer to
            // the create was lost): find the upload by key and start time.
            sweep_stray_uploads(store, journal, &o.key, None, o.started).await;
            journal.upload_ended(&store_id, &o.key, &o.upload_id);
            continue;
        }
        match store.abort_multipart(&o.key, &o.upload_id).await {
            Ok(()) => journal.upload_ended(&store_id, &o.key, &o.upload_id),
            Err(e) if e.kind == ErrorKind::NotFound => {
                journal.upload_ended(&store_id, &o.key, &o.upload_id)
            }
            Err(e) => tracing::warn!("could not abort an unfinished upload of {}: {e}", o.key),
        }
    }
    if let Some(prefix) = local_walk {
        let ups = store.list_multipart(prefix).await.unwrap_or_default();
        let runs: HashSet<String> = ups
            .iter()
            .filter_map(|u| s3ferry_store::run_of_upload_id(&u.upload_id))
            .map(str::to_string)
            .collect();
        let dead = journal
            .dead(runs.into_iter().collect())
            .await
            .unwrap_or_default();
        let now = SystemTime::now();
        for u in ups {
            // Provably a dead run's, or untouched for so long that no live run can own it (a
            // run on another state database or without one leaves no lock file here).
            let of_dead_run =
                s3ferry_store::run_of_upload_id(&u.upload_id).is_some_and(|r| dead.contains(r));
            let stale = u
                .initiated
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= STALE_TEMP_AGE);
            if !(of_dead_run || stale) {
                continue;
            }
            if store.abort_multipart(&u.key, &u.upload_id).await.is_ok() {
                n += 1;
            }
        }
    }
    n
}
