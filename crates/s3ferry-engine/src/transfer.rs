//! Moving one object from a source side to a destination side: server-side copy when both
//! sides share a copy domain (CopyObject, or UploadPartCopy above the single-copy limit), else
//! streamed through: one PUT for small objects, a multipart upload with parallel ranged reads
//! for big ones. Every read after discovery is pinned to the source's ETag (If-Match); every
//! part carries its CRC64NVME and the whole object its full-object CRC64NVME, checked against
//! the source's where it has one. A failed multipart upload is aborted, so a partial object
//! never appears under the final key.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use s3ferry_store::checksum::{
    crc64nvme, crc64nvme_combine, etag_shape, is_multipart, md5_hex, part_size_for, EtagShape,
};
use s3ferry_store::{
    CopyOptions, CopySource, ErrorKind, GetOptions, ObjectMeta, PartInfo, PutMode, PutOptions, Result,
    Store, StoreError, MTIME_META,
};
use tokio::sync::Semaphore;

use crate::events::Reporter;
use crate::journal::Journal;
use crate::walk::{Entry, Side, SideKind};

/// Memory is budgeted in KiB units of a semaphore.
const UNIT: u64 = 1024;

#[derive(Clone, Debug)]
pub struct TransferConfig {
    /// Minimum part size; the rule is max(this, ceil(size / 10000)).
    pub part_size: u64,
    /// Parts in flight per object.
    pub part_concurrency: usize,
    /// Byte budget for bodies held in memory, shared by all transfers.
    pub memory: Arc<Semaphore>,
    memory_units: u32,
    /// Attempts to finish one body read (resuming with Range + If-Match).
    pub body_attempts: u32,
    /// Body reads resumed after a reset, stall or short body (for the summary).
    pub resumes: Arc<AtomicU64>,
    /// A body that sends nothing for this long is abandoned and resumed.
    pub idle_timeout: Duration,
    /// Largest object copied with one CopyObject; above it UploadPartCopy is used.
    pub max_single_copy: u64,
    pub storage_class: Option<String>,
    /// Use server-side copies when both sides share a copy domain.
    pub server_side: bool,
}

impl TransferConfig {
    pub fn new(memory_bytes: u64) -> Self {
        let memory_units = (memory_bytes / UNIT).clamp(1, u32::MAX as u64 >> 4) as u32;
        Self {
            part_size: s3ferry_store::checksum::DEFAULT_PART_SIZE,
            part_concurrency: 8,
            memory: Arc::new(Semaphore::new(memory_units as usize)),
            memory_units,
            body_attempts: 5,
            idle_timeout: Duration::from_secs(30),
            resumes: Arc::default(),
            max_single_copy: 5 * 1024 * 1024 * 1024,
            storage_class: None,
            server_side: true,
        }
    }

    async fn reserve(&self, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>> {
        // A body bigger than the whole budget takes all of it rather than waiting forever.
        let units = bytes.div_ceil(UNIT).clamp(1, self.memory_units as u64) as u32;
        self.memory
            .acquire_many(units)
            .await
            .map_err(|_| StoreError::new(ErrorKind::Other, "transfer", "memory budget closed"))
    }
}

/// Read `range` of `key` completely, resuming after resets and short bodies with a ranged GET
/// pinned to the ETag seen first. `whole` asks for a whole-object GET first (so the store
/// returns the full-object checksum). Returns the bytes and the metadata of the first response.
pub async fn read_range(
    store: &dyn Store,
    key: &str,
    range: Range<u64>,
    whole: bool,
    mut pin: Option<String>,
    cfg: &TransferConfig,
) -> Result<(Bytes, ObjectMeta)> {
    let (attempts, idle, resumes) = (cfg.body_attempts, cfg.idle_timeout, &cfg.resumes);
    let want = range.end - range.start;
    let mut buf = BytesMut::with_capacity(want as usize);
    let mut pos = range.start;
    let mut first_meta: Option<ObjectMeta> = None;
    let mut last_err: Option<StoreError> = None;
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tracing::debug!(key, pos, attempt, "resuming body read");
            resumes.fetch_add(1, Ordering::Relaxed);
        }
        let mut opts = GetOptions::new().if_match(pin.clone());
        if !(whole && pos == range.start && first_meta.is_none()) && want > 0 {
            opts = opts.range(pos..range.end);
        }
        let got = match store.get(key, opts).await {
            Ok(g) => g,
            Err(e) if e.retryable() => {
                last_err = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if first_meta.is_none() {
            if pin.is_none() {
                pin = got.meta.etag.clone();
            }
            first_meta = Some(got.meta.clone());
        }
        let mut body = got.body;
        loop {
            // The SDK stops retrying once headers arrive: a stalled body is ours to detect.
            let chunk = match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(_) => Err(StoreError::new(
                    ErrorKind::Transient,
                    "get",
                    format!("no data for {}s; resuming", idle.as_secs()),
                )
                .with_key(key)),
            };
            match chunk {
                Ok(c) => {
                    if pos + c.len() as u64 > range.end {
                        return Err(StoreError::new(
                            ErrorKind::Corrupt,
                            "get",
                            "body longer than requested",
                        )
                        .with_key(key));
                    }
                    pos += c.len() as u64;
                    buf.extend_from_slice(&c);
                }
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        if pos == range.end {
            let meta = first_meta.unwrap_or_default();
            return Ok((buf.freeze(), meta));
        }
        if last_err.is_none() {
            last_err = Some(
                StoreError::new(
                    ErrorKind::Corrupt,
                    "get",
                    format!("body ended at byte {pos} of {}", range.end),
                )
                .with_key(key),
            );
        }
        if last_err.as_ref().is_some_and(|e| !e.retryable()) {
            break;
        }
    }
    Err(last_err.unwrap_or_else(|| {
        StoreError::new(ErrorKind::Transient, "get", "read failed").with_key(key)
    }))
}

/// Put options for the destination copy of an object described by `src_meta`.
fn put_options(
    src_kind: SideKind,
    dst: &Side,
    rel: &str,
    src_meta: &ObjectMeta,
    cfg: &TransferConfig,
) -> PutOptions {
    let mut metadata = src_meta.metadata.clone().unwrap_or_default();
    metadata.remove(MTIME_META);
    let content_type = match src_kind {
        SideKind::Remote => src_meta.content_type.clone(),
        SideKind::Local if dst.kind == SideKind::Remote => {
            mime_guess::from_path(rel).first().map(|m| m.to_string())
        }
        SideKind::Local => None,
    };
    PutOptions::new()
        .mtime(src_meta.mtime)
        .content_type(content_type)
        .metadata(if src_kind == SideKind::Remote {
            metadata
        } else {
            Default::default()
        })
        .storage_class(cfg.storage_class.clone())
}

/// A local source read as `read` must still be the file that was listed. (The local store
/// guarantees the bytes of one read match the `meta` it returns: it checks the file again
/// after the read.)
fn check_same_file(src: &Side, key: &str, listed: &ObjectMeta, read: &ObjectMeta) -> Result<()> {
    if src.kind == SideKind::Local && (read.size != listed.size || read.mtime != listed.mtime) {
        return Err(StoreError::new(
            ErrorKind::Transient,
            "read",
            "file changed since it was listed; will retry",
        )
        .with_key(key));
    }
    Ok(())
}

/// Verify a body against what the source says its content is.
fn verify_body(key: &str, data: &[u8], crc: u64, meta: &ObjectMeta) -> Result<()> {
    if let Some(want) = meta.crc64nvme {
        if want != crc {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                "verify",
                "CRC64NVME of the data read does not match the source",
            )
            .with_key(key));
        }
    } else if let Some(etag) = meta.etag.as_deref() {
        if etag_shape(etag) == EtagShape::Md5 && md5_hex(data) != etag {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                "verify",
                "MD5 of the data read does not match the ETag",
            )
            .with_key(key));
        }
    }
    Ok(())
}

/// What the destination looks like after a transfer (for the state record).
async fn dst_meta_after(
    dst: &Side,
    key: &str,
    size: u64,
    etag: Option<String>,
) -> Result<ObjectMeta> {
    match dst.kind {
        SideKind::Local => dst.store.head(key).await,
        SideKind::Remote => Ok(ObjectMeta {
            key: key.to_string(),
            size,
            etag,
            ..Default::default()
        }),
    }
}

fn can_copy_server_side(src: &Side, dst: &Side, cfg: &TransferConfig) -> bool {
    let (a, b) = (src.store.capabilities(), dst.store.capabilities());
    cfg.server_side
        && !a.local
        && !b.local
        && a.copy_domain.is_some()
        && a.copy_domain == b.copy_domain
        && src.store.bucket().is_some()
}

/// Copy one entry from `src` to `dst`. Returns the destination's metadata afterwards.
pub async fn copy_object(
    src: &Side,
    dst: &Side,
    entry: &Entry,
    cfg: &TransferConfig,
    journal: &Journal,
    reporter: &dyn Reporter,
) -> Result<ObjectMeta> {
    let skey = src.key(&entry.rel);
    let dkey = dst.key(&entry.rel);
    let size = entry.meta.size;
    if can_copy_server_side(src, dst, cfg) {
        let limit = cfg
            .max_single_copy
            .min(dst.store.capabilities().max_single_put);
        let res = if size <= limit {
            let from = CopySource {
                bucket: src.store.bucket().unwrap_or_default().to_string(),
                key: skey.clone(),
                if_match: entry.meta.etag.clone(),
            };
            let opts = CopyOptions::new().storage_class(cfg.storage_class.clone());
            dst.store.copy(&from, &dkey, opts).await?.etag
        } else {
            multipart_copy(src, dst, entry, cfg, journal).await?
        };
        reporter.bytes(size);
        return dst_meta_after(dst, &dkey, size, res).await;
    }
    let part_size = part_size_for(size, cfg.part_size);
    if !is_multipart(size, part_size) {
        let _mem = cfg.reserve(size).await?;
        let pin = (src.kind == SideKind::Remote)
            .then(|| entry.meta.etag.clone())
            .flatten();
        let (data, meta) = read_range(src.store.as_ref(), &skey, 0..size, true, pin, cfg).await?;
        let crc = crc64nvme(&data);
        verify_body(&skey, &data, crc, &meta)?;
        check_same_file(src, &skey, &entry.meta, &meta)?;
        let mut opts = put_options(src.kind, dst, &entry.rel, &meta, cfg).crc64nvme(Some(crc));
        if src.kind == SideKind::Remote && dst.kind == SideKind::Remote && both_tag(src, dst) {
            opts.tags = src.store.get_tags(&skey).await?;
        }
        let res = dst.store.put(&dkey, data, opts).await?;
        reporter.bytes(size);
        return dst_meta_after(dst, &dkey, size, res.etag).await;
    }
    multipart_upload(src, dst, entry, part_size, cfg, journal, reporter).await
}

fn both_tag(src: &Side, dst: &Side) -> bool {
    src.store.capabilities().tags && dst.store.capabilities().tags
}

async fn multipart_upload(
    src: &Side,
    dst: &Side,
    entry: &Entry,
    part_size: u64,
    cfg: &TransferConfig,
    journal: &Journal,
    reporter: &dyn Reporter,
) -> Result<ObjectMeta> {
    let skey = src.key(&entry.rel);
    let dkey = dst.key(&entry.rel);
    // Discovery: the remote source's metadata, checksum and ETag to pin every range to.
    let smeta = match src.kind {
        SideKind::Remote => src.store.head(&skey).await?,
        SideKind::Local => entry.meta.clone(),
    };
    let size = smeta.size;
    let pin = (src.kind == SideKind::Remote)
        .then(|| smeta.etag.clone())
        .flatten();
    let mut opts = put_options(src.kind, dst, &entry.rel, &smeta, cfg);
    if src.kind == SideKind::Remote && dst.kind == SideKind::Remote && both_tag(src, dst) {
        opts.tags = src.store.get_tags(&skey).await?;
    }
    let nparts = size.div_ceil(part_size);
    let res = in_multipart(dst, &dkey, opts, part_size, journal, |upload_id| {
        let dkey = &dkey;
        async move {
            let parts: Vec<(PartInfo, u64, u64)> = stream::iter(0..nparts)
                .map(|i| {
                    let range = i * part_size..((i + 1) * part_size).min(size);
                    let (skey, upload_id, pin) = (&skey, &upload_id, pin.clone());
                    async move {
                        let len = range.end - range.start;
                        let _mem = cfg.reserve(len).await?;
                        let (data, meta) =
                            read_range(src.store.as_ref(), skey, range, false, pin, cfg).await?;
                        check_same_file(src, skey, &entry.meta, &meta)?;
                        let crc = crc64nvme(&data);
                        let info = dst
                            .store
                            .upload_part(dkey, upload_id, i as u32 + 1, data, Some(crc))
                            .await?;
                        reporter.bytes(len);
                        Ok::<_, StoreError>((info, crc, len))
                    }
                })
                .buffered(cfg.part_concurrency.max(1))
                .try_collect()
                .await?;
            let whole = parts.iter().fold(0u64, |acc, (_, crc, len)| {
                crc64nvme_combine(acc, *crc, *len)
            });
            if let Some(want) = smeta.crc64nvme {
                if want != whole {
                    return Err(StoreError::new(
                        ErrorKind::Corrupt,
                        "verify",
                        "CRC64NVME of the parts read does not match the source",
                    )
                    .with_key(&skey));
                }
            }
            let infos = parts.into_iter().map(|(p, _, _)| p).collect();
            dst.store
                .complete_multipart(dkey, &upload_id, infos, Some(whole), PutMode::Overwrite)
                .await
        }
    })
    .await?;
    dst_meta_after(dst, &dkey, size, res.etag).await
}

/// Journal id of the intent to create a multipart upload (written before CreateMultipartUpload,
/// whose answer can be lost: the upload then exists but nobody knows its id).
pub const PENDING_UPLOAD: &str = "(pending)";
/// How far the server's clock may be from ours when we judge an upload as started by us.
const CLOCK_SLACK: Duration = Duration::from_secs(300);

/// Run `body` inside a multipart upload of `dkey`: the upload is recorded in the journal while
/// it is open (so a killed run's successor aborts it) and aborted if `body` fails. An intent
/// record before the create, and a sweep after, catch the upload of a create whose response was
/// lost and then retried.
async fn in_multipart<F, Fut>(
    dst: &Side,
    dkey: &str,
    opts: PutOptions,
    part_size: u64,
    journal: &Journal,
    body: F,
) -> Result<s3ferry_store::PutResult>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<s3ferry_store::PutResult>>,
{
    let jerr = |e: crate::journal::JournalError| {
        StoreError::new(ErrorKind::Other, "journal", e.to_string())
    };
    let store_id = dst.store.describe();
    let intent_at = std::time::SystemTime::now();
    journal
        .upload_started(&store_id, dkey, PENDING_UPLOAD)
        .map_err(jerr)?;
    let created = dst.store.create_multipart(dkey, opts, part_size).await;
    let result = match created {
        Ok(upload_id) => {
            journal
                .upload_started(&store_id, dkey, &upload_id)
                .map_err(jerr)?;
            let result = body(upload_id.clone()).await;
            if result.is_err() {
                if let Err(e) = dst.store.abort_multipart(dkey, &upload_id).await {
                    tracing::warn!("could not abort upload {upload_id} of {dkey}: {e}");
                }
            }
            let _ = journal.upload_ended(&store_id, dkey, &upload_id);
            sweep_stray_uploads(dst, dkey, Some(&upload_id), intent_at).await;
            result
        }
        Err(e) => {
            sweep_stray_uploads(dst, dkey, None, intent_at).await;
            Err(e)
        }
    };
    let _ = journal.upload_ended(&store_id, dkey, PENDING_UPLOAD);
    result
}

/// Abort the multipart uploads of exactly `dkey` that started after `since` (less clock slack),
/// other than `keep`: uploads created by a create whose response never arrived.
pub async fn sweep_stray_uploads(
    dst: &Side,
    dkey: &str,
    keep: Option<&str>,
    since: std::time::SystemTime,
) {
    let Ok(ups) = dst.store.list_multipart(dkey).await else {
        return;
    };
    let from = since.checked_sub(CLOCK_SLACK).unwrap_or(since);
    for u in ups {
        let ours = u.key == dkey
            && keep != Some(u.upload_id.as_str())
            && u.initiated.is_some_and(|t| t >= from);
        if ours {
            tracing::debug!("aborting stray upload {} of {dkey}", u.upload_id);
            if let Err(e) = dst.store.abort_multipart(dkey, &u.upload_id).await {
                tracing::warn!(
                    "could not abort stray upload {} of {dkey}: {e}",
                    u.upload_id
                );
            }
        }
    }
}

async fn multipart_copy(
    src: &Side,
    dst: &Side,
    entry: &Entry,
    cfg: &TransferConfig,
    journal: &Journal,
) -> Result<Option<String>> {
    let skey = src.key(&entry.rel);
    let dkey = dst.key(&entry.rel);
    let smeta = src.store.head(&skey).await?;
    let size = smeta.size;
    let part_size = part_size_for(size, cfg.part_size);
    let mut opts = put_options(SideKind::Remote, dst, &entry.rel, &smeta, cfg);
    if both_tag(src, dst) {
        opts.tags = src.store.get_tags(&skey).await?;
    }
    let from = CopySource {
        bucket: src.store.bucket().unwrap_or_default().to_string(),
        key: skey.clone(),
        if_match: smeta.etag.clone(),
    };
    let res = in_multipart(dst, &dkey, opts, part_size, journal, |upload_id| {
        let dkey = &dkey;
        async move {
            let parts: Vec<PartInfo> = stream::iter(0..size.div_ceil(part_size))
                .map(|i| {
                    let range = i * part_size..((i + 1) * part_size).min(size);
                    let (from, upload_id) = (&from, &upload_id);
                    async move {
                        dst.store
                            .upload_part_copy(dkey, upload_id, i as u32 + 1, from, range)
                            .await
                    }
                })
                .buffered(cfg.part_concurrency.max(1) * 2)
                .try_collect()
                .await?;
            dst.store
                .complete_multipart(dkey, &upload_id, parts, None, PutMode::Overwrite)
                .await
        }
    })
    .await?;
    Ok(res.etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3ferry_store::layer::FaultStore;
    use s3ferry_store::memory::MemoryStore;
    use s3ferry_store::StoreExt;

    fn cfg(attempts: u32, idle: Duration) -> TransferConfig {
        TransferConfig {
            body_attempts: attempts,
            idle_timeout: idle,
            ..TransferConfig::new(1 << 20)
        }
    }

    fn ramp(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    async fn faulty(spec: &str, data: &[u8]) -> (MemoryStore, FaultStore) {
        let mem = MemoryStore::new();
        mem.put_bytes("k", data.to_vec()).await.unwrap();
        let f = FaultStore::new(Arc::new(mem.clone()), spec.parse().unwrap());
        (mem, f)
    }

    #[tokio::test]
    async fn stalled_body_is_abandoned_and_resumed() {
        let data = ramp(10_000);
        let (_, f) = faulty("get:stall=4000@1", &data).await;
        let c = cfg(3, Duration::from_millis(50));
        let (got, _) = read_range(&f, "k", 0..10_000, true, None, &c)
            .await
            .unwrap();
        assert_eq!(got.as_ref(), data.as_slice());
        assert_eq!(f.calls("get"), 2, "one resume");
        assert_eq!(c.resumes.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn reset_and_truncated_bodies_resume_pinned_to_the_first_etag() {
        let data = ramp(50_000);
        let (mem, f) = faulty("get:reset=1000@1; get:truncate=7000@2", &data).await;
        let (got, meta) = read_range(
            &f,
            "k",
            100..40_000,
            false,
            None,
            &cfg(5, Duration::from_secs(5)),
        )
        .await
        .unwrap();
        assert_eq!(got.as_ref(), &data[100..40_000]);
        assert_eq!(f.calls("get"), 3);
        // The source changes between two reads of one object: the pinned read fails, no splice.
        let etag = meta.etag.clone();
        mem.put_bytes("k", ramp(50_001)).await.unwrap();
        let err = read_range(
            &f,
            "k",
            0..50_000,
            false,
            etag,
            &cfg(5, Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::PreconditionFailed);
    }

    #[tokio::test]
    async fn persistent_short_bodies_fail_as_corrupt() {
        let data = ramp(5_000);
        let (_, f) = faulty("get:truncate=10", &data).await;
        let err = read_range(
            &f,
            "k",
            0..5_000,
            true,
            None,
            &cfg(3, Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Corrupt);
        assert_eq!(f.calls("get"), 3);
    }
}
