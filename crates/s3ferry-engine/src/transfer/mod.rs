//! Moving one object from a source side to a destination side, built from two reusable
//! pieces: a [`RangedReader`] (ranges of an object, each read resumed after resets and stalls
//! and pinned to the ETag first seen) and a [`MultipartWriter`] (parts pushed as they come,
//! uploaded with bounded concurrency, journaled while open, aborted on failure).
//!
//! [`copy_object`] is server-side when both sides share a copy domain (CopyObject, or
//! UploadPartCopy parts above the single-copy limit); else one GET + PUT for small objects, or
//! reader -> writer for big ones: a local destination takes each ranged GET's chunks in place as
//! they arrive (no part is held in memory), a remote one takes parts read into memory under the
//! shared budget. Every part carries its CRC64NVME and the whole object its full-object
//! CRC64NVME, checked against the source's where it has one; a partial object never appears
//! under the final key.

mod read;
mod write;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use s3ferry_store::checksum::{crc64nvme, is_multipart, md5_hex, part_size_for, EtagShape};
use s3ferry_store::{
    CopyOptions, CopySource, ErrorKind, FileRange, ObjectMeta, PartLayout, PutMode, PutOptions,
    Result, StoreError, MTIME_META,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use read::{is_plain_md5, read_range, read_verified, RangedReader, ReadPart, VerifiedRead};
pub use write::{
    cleanup_orphan_uploads, sweep_stray_uploads, upload_parts, MultipartWriter, PartBody,
    UploadAbortHandle, PENDING_UPLOAD,
};

use crate::events::Reporter;
use crate::journal::Journal;
use crate::walk::{Entry, Side, SideKind};

/// Memory is budgeted in KiB units of a semaphore.
const UNIT: u64 = 1024;

/// A share of the memory budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

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
    /// Server-side copies replace the user metadata and Content-Type with these
    /// (`--metadata-directive REPLACE`); `None` copies them from the source.
    pub copy_replace: Option<PutOptions>,
    /// Checksum algorithm of server-side single copies (`--checksum-algorithm`).
    pub copy_checksum: Option<String>,
    /// What every object written to a remote store carries on top of what it would anyway.
    pub write: WriteOptions,
}

/// The user's settings for written objects (`--content-type`, `--metadata`, `--cache-control`,
/// `--acl`, `--sse`, ...), applied to uploads and streamed copies into a remote store.
/// Server-side copies copy the source's unless `copy_replace` is set.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Overrides the source's or the guessed Content-Type.
    pub content_type: Option<String>,
    /// Do not guess Content-Type from the file name of an upload.
    pub no_guess_content_type: bool,
    /// Added to (and overriding) the source's user metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    pub headers: s3ferry_store::ObjectHeaders,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
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
            copy_replace: None,
            copy_checksum: None,
            write: WriteOptions::default(),
        }
    }

    /// Reserve `bytes` of the memory budget (waits until they are free). A body bigger than
    /// the whole budget takes all of it rather than waiting forever.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.memory_units as u64) as u32;
        let permit = self
            .memory
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| StoreError::new(ErrorKind::Other, "transfer", "memory budget closed"))?;
        Ok(Reservation { _permit: permit })
    }
}

/// An object's tags. Tags are optional data: a store that does not implement tagging (a 501
/// NotImplemented from Garage, an S3 Express directory bucket) means "no tags", said once per
/// process as a warning, never a failed object.
pub async fn optional_tags(
    store: &s3ferry_store::DynStore,
    key: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    match store.get_tags(key).await {
        Err(e) if e.kind == ErrorKind::Unsupported => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "the server does not implement object tags ({e}): objects are copied without them"
                )
            });
            Ok(Vec::new())
        }
        r => r,
    }
}

/// Put options for the destination copy of an object described by `src_meta`.
fn put_options(
    src_kind: SideKind,
    dst: &Side,
    entry: &Entry,
    src_meta: &ObjectMeta,
    cfg: &TransferConfig,
) -> PutOptions {
    let rel = entry.rel.as_str();
    let mut metadata = src_meta.metadata.clone().unwrap_or_default();
    metadata.remove(MTIME_META);
    let w = &cfg.write;
    let content_type = match src_kind {
        SideKind::Remote => src_meta.content_type.clone(),
        SideKind::Local if dst.kind == SideKind::Remote && !w.no_guess_content_type => {
            mime_guess::from_path(rel).first().map(|m| m.to_string())
        }
        SideKind::Local => None,
    };
    let mut metadata = if src_kind == SideKind::Remote {
        metadata
    } else {
        Default::default()
    };
    // A file downloaded from an object that carries no mtime of ours (written by aws-cli, s5cmd,
    // the console) gets the object's LastModified, as aws-cli and rclone do: the download time
    // would make the next upload see every file as newer.
    // The listing's LastModified first (when the listing saw the content that was read): a
    // GET's Last-Modified header has whole seconds, and on servers that list milliseconds the
    // file would otherwise be older than its object.
    let mtime = match dst.kind {
        SideKind::Local => src_meta
            .mtime
            .or(entry
                .meta
                .last_modified
                .filter(|_| entry.meta.etag.is_some() && entry.meta.etag == src_meta.etag))
            .or(src_meta.last_modified),
        SideKind::Remote => src_meta.mtime,
    };
    let mut opts = PutOptions::new()
        .mtime(mtime)
        .storage_class(cfg.storage_class.clone());
    if dst.kind == SideKind::Remote {
        metadata.extend(w.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        opts = opts
            .headers(w.headers.clone())
            .sse(w.sse.clone(), w.sse_kms_key_id.clone());
    }
    opts.content_type(w.content_type.clone().or(content_type))
        .metadata(metadata)
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
        if meta.etag_shape() == EtagShape::Md5 && md5_hex(data) != etag {
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

/// Copy `rel` server-side when its size is not known (a manifest entry): one CopyObject, and
/// only if the store refuses it as too large for a single copy (400 InvalidRequest or
/// EntityTooLarge, above 5 GiB on S3), a HEAD and the multipart copy — one request per object
/// instead of two. `None` when the sides cannot copy server-side, or `max_single_copy` was set
/// below what the store copies in one request (then the size must be known first): HEAD and
/// [`copy_object`].
pub async fn copy_unsized(
    src: &Side,
    dst: &Side,
    rel: &str,
    version: Option<&str>,
    cfg: &TransferConfig,
    journal: &Arc<Journal>,
    reporter: &Arc<dyn Reporter>,
) -> Option<Result<ObjectMeta>> {
    if !can_copy_server_side(src, dst, cfg)
        || cfg.max_single_copy < dst.store.capabilities().max_single_put
    {
        return None;
    }
    let (skey, dkey) = (src.key(rel), dst.key(rel));
    let from = CopySource {
        bucket: src.store.bucket().unwrap_or_default().to_string(),
        key: skey.clone(),
        if_match: None,
        version_id: version.map(str::to_string),
    };
    let opts = CopyOptions::new()
        .storage_class(cfg.storage_class.clone())
        .replace(cfg.copy_replace.clone())
        .checksum_algorithm(cfg.copy_checksum.clone());
    let too_large = |e: &StoreError| {
        e.kind == ErrorKind::InvalidInput
            && e.http
                .as_ref()
                .and_then(|h| h.code.as_deref())
                .is_some_and(|c| c == "InvalidRequest" || c == "EntityTooLarge")
    };
    Some(match dst.store.copy(&from, &dkey, opts).await {
        Ok(r) => Ok(ObjectMeta {
            key: dkey,
            etag: r.etag,
            ..Default::default()
        }),
        Err(e) if version.is_some() && too_large(&e) => Err(StoreError::new(
            ErrorKind::Unsupported,
            "copy",
            format!(
                "version {} is larger than one CopyObject can copy (5 GiB; S3 Batch Operations' Copy has the same limit)",
                version.unwrap_or_default()
            ),
        )
        .with_key(&skey)),
        Err(e) if version.is_none() && (too_large(&e) || e.kind == ErrorKind::Unsupported) => {
            match src.store.head(&skey).await {
                Ok(meta) => {
                    let entry = Entry {
                        rel: rel.to_string(),
                        meta,
                    };
                    copy_object(src, dst, &entry, cfg, journal, reporter).await
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    })
}

/// Copy one entry from `src` to `dst`. Returns the destination's metadata afterwards.
pub async fn copy_object(
    src: &Side,
    dst: &Side,
    entry: &Entry,
    cfg: &TransferConfig,
    journal: &Arc<Journal>,
    reporter: &Arc<dyn Reporter>,
) -> Result<ObjectMeta> {
    copy_object_as(src, dst, entry, cfg, journal, reporter, PutMode::Overwrite).await
}

/// [`copy_object`] with a conditional write: `Create` (only if the key is still absent) or
/// `Update` (only if it still has the ETag seen) — `AlreadyExists` / `PreconditionFailed`
/// otherwise, nothing written. Uploads and streamed copies only: a server-side copy overwrites.
pub async fn copy_object_as(
    src: &Side,
    dst: &Side,
    entry: &Entry,
    cfg: &TransferConfig,
    journal: &Arc<Journal>,
    reporter: &Arc<dyn Reporter>,
    mode: PutMode,
) -> Result<ObjectMeta> {
    copy_object_to(src, dst, entry, &entry.rel, cfg, journal, reporter, mode).await
}

/// [`copy_object_as`] under another name: the destination key is `dst.key(dst_rel)` (one object
/// copied to a name of its own, as in `cp a.txt s3://b/b.txt`). A Content-Type is still guessed
/// from the source's name.
#[allow(clippy::too_many_arguments)]
pub async fn copy_object_to(
    src: &Side,
    dst: &Side,
    entry: &Entry,
    dst_rel: &str,
    cfg: &TransferConfig,
    journal: &Arc<Journal>,
    reporter: &Arc<dyn Reporter>,
    mode: PutMode,
) -> Result<ObjectMeta> {
    let skey = src.key(&entry.rel);
    let dkey = dst.key(dst_rel);
    let size = entry.meta.size;
    if can_copy_server_side(src, dst, cfg) {
        let limit = cfg
            .max_single_copy
            .min(dst.store.capabilities().max_single_put);
        let copied = if size <= limit {
            let from = CopySource {
                bucket: src.store.bucket().unwrap_or_default().to_string(),
                key: skey.clone(),
                if_match: entry.meta.etag.clone(),
                version_id: None,
            };
            let opts = CopyOptions::new()
                .storage_class(cfg.storage_class.clone())
                .replace(cfg.copy_replace.clone())
                .checksum_algorithm(cfg.copy_checksum.clone());
            dst.store.copy(&from, &dkey, opts).await.map(|r| r.etag)
        } else {
            multipart_copy(src, dst, entry, &dkey, cfg, journal).await
        };
        match copied {
            Ok(etag) => {
                reporter.bytes(size);
                return dst_meta_after(dst, &dkey, size, etag).await;
            }
            // A server that does not do this copy (some S3-compatible servers: UploadPartCopy
            // of SSE-C objects, say): the data goes through this machine instead.
            Err(e) if e.kind == ErrorKind::Unsupported => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(
                        "the server refused a server-side copy ({e}); such objects are streamed through this machine"
                    )
                });
            }
            Err(e) => return Err(e),
        }
    }
    let part_size = part_size_for(size, cfg.part_size);
    if !is_multipart(size, part_size) {
        let _mem = cfg.reserve(size).await?;
        let pin = (src.kind == SideKind::Remote)
            .then(|| entry.meta.etag.clone())
            .flatten();
        let (data, meta) = read_range(src.store.clone(), &skey, 0..size, true, pin, cfg).await?;
        let crc = crc64nvme(&data);
        verify_body(&skey, &data, crc, &meta)?;
        check_same_file(src, &skey, &entry.meta, &meta)?;
        let mut opts = put_options(src.kind, dst, entry, &meta, cfg)
            .crc64nvme(Some(crc))
            .mode(mode.clone());
        if src.kind == SideKind::Remote && dst.kind == SideKind::Remote && both_tag(src, dst) {
            opts.tags = optional_tags(&src.store, &skey).await?;
        }
        let res = dst.store.put(&dkey, data, opts).await?;
        reporter.bytes(size);
        return dst_meta_after(dst, &dkey, size, res.etag).await;
    }
    // Reader -> writer. A remote source is discovered with a HEAD (ETag to pin, checksum,
    // metadata); a local file is read as listed (size and mtime checked on every read).
    let reader = match src.kind {
        SideKind::Remote => RangedReader::open(src.store.clone(), &skey, cfg).await?,
        SideKind::Local => RangedReader::new(src.store.clone(), &skey, entry.meta.clone(), cfg),
    };
    let mut opts = put_options(src.kind, dst, entry, reader.meta(), cfg)
        .size(Some(reader.size()))
        .mode(mode);
    if src.kind == SideKind::Remote && dst.kind == SideKind::Remote && both_tag(src, dst) {
        opts.tags = optional_tags(&src.store, &skey).await?;
    }
    let layout = PartLayout::Uniform(part_size_for(reader.size(), cfg.part_size));
    let w = MultipartWriter::create(dst.store.clone(), &dkey, opts, layout, cfg, journal.clone())
        .await?
        .with_progress(reporter.clone());
    let in_place = dst.kind == SideKind::Local;
    // A local file going to a store that can send from a file: no part is held in memory.
    let file = (src.kind == SideKind::Local && !in_place)
        .then(|| src.store.local_path(&skey))
        .flatten();
    let bodies = layout.ranges(reader.size()).map(|(_, r)| {
        let len = r.end - r.start;
        match &file {
            Some(path) => PartBody::File(FileRange {
                path: path.clone(),
                offset: r.start,
                len,
            }),
            None if in_place => PartBody::Stream(len, reader.stream(r)),
            None => PartBody::Read(len, reader.read_owned(r)),
        }
    });
    let res = if file.is_some() {
        // The file is read as it is sent: it must be the file that was listed when the last
        // part is done, or the upload is abandoned (it changed while it was read).
        let mut w = w;
        let pushed: Result<()> = async {
            for b in bodies {
                w.push(b).await?;
            }
            w.flush().await?;
            let now = src.store.head(&skey).await?;
            check_same_file(src, &skey, &entry.meta, &now)?;
            if now.ctime != entry.meta.ctime {
                return Err(StoreError::new(
                    ErrorKind::Transient,
                    "read",
                    "file changed while it was read; will retry",
                )
                .with_key(&skey));
            }
            Ok(())
        }
        .await;
        match pushed {
            Ok(()) => w.finish(None).await?,
            Err(e) => {
                w.abort().await;
                return Err(e);
            }
        }
    } else {
        upload_parts(w, bodies, reader.meta().crc64nvme).await?
    };
    dst_meta_after(dst, &dkey, reader.size(), res.etag).await
}

/// Server-side copy in UploadPartCopy parts, each pinned to the source's ETag.
async fn multipart_copy(
    src: &Side,
    dst: &Side,
    entry: &Entry,
    dkey: &str,
    cfg: &TransferConfig,
    journal: &Arc<Journal>,
) -> Result<Option<String>> {
    let skey = src.key(&entry.rel);
    let smeta = src.store.head(&skey).await?;
    let layout = PartLayout::Uniform(part_size_for(smeta.size, cfg.part_size));
    let mut opts = put_options(SideKind::Remote, dst, entry, &smeta, cfg);
    if let Some(r) = &cfg.copy_replace {
        opts.metadata = r.metadata.clone();
        opts.content_type = r.content_type.clone();
    }
    if both_tag(src, dst) {
        opts.tags = optional_tags(&src.store, &skey).await?;
    }
    let from = CopySource {
        bucket: src.store.bucket().unwrap_or_default().to_string(),
        key: skey.clone(),
        if_match: smeta.etag.clone(),
        version_id: None,
    };
    let w = MultipartWriter::create(dst.store.clone(), dkey, opts, layout, cfg, journal.clone())
        .await?
        // Copy parts hold no data here: twice the window.
        .with_window(cfg.part_concurrency.max(1) * 2);
    let bodies = layout
        .ranges(smeta.size)
        .map(|(_, r)| PartBody::Copy(from.clone(), r));
    Ok(upload_parts(w, bodies, None).await?.etag)
}

fn both_tag(src: &Side, dst: &Side) -> bool {
    src.store.capabilities().tags && dst.store.capabilities().tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use s3ferry_store::layer::FaultStore;
    use s3ferry_store::local::LocalStore;
    use s3ferry_store::memory::MemoryStore;
    use s3ferry_store::{DynStore, PutMode, Store, StoreExt};
    use std::sync::atomic::Ordering;

    use crate::events::NullReporter;

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

    async fn faulty(spec: &str, data: &[u8]) -> (MemoryStore, Arc<FaultStore>) {
        let mem = MemoryStore::new();
        mem.put_bytes("k", data.to_vec()).await.unwrap();
        let f = FaultStore::new(Arc::new(mem.clone()), spec.parse().unwrap());
        (mem, Arc::new(f))
    }

    #[tokio::test]
    async fn stalled_body_is_abandoned_and_resumed() {
        let data = ramp(10_000);
        let (_, f) = faulty("get:stall=4000@1", &data).await;
        let c = cfg(3, Duration::from_millis(50));
        let (got, _) = read_range(f.clone(), "k", 0..10_000, true, None, &c)
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
            f.clone(),
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
            f.clone(),
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
            f.clone(),
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

    const MIB: usize = 1024 * 1024;

    fn journal() -> Arc<Journal> {
        Arc::new(Journal::in_memory().unwrap())
    }

    fn reporter() -> Arc<dyn Reporter> {
        Arc::new(NullReporter)
    }

    #[tokio::test]
    async fn writer_takes_growing_parts_and_checks_the_layout() {
        let mem = MemoryStore::new();
        let store: DynStore = Arc::new(mem.clone());
        let layout = PartLayout::Doubling {
            base: 5 * MIB as u64,
            every: 1,
        };
        let data = ramp(22 * MIB);
        let c = cfg(3, Duration::from_secs(5));
        let w =
            MultipartWriter::create(store.clone(), "g", PutOptions::new(), layout, &c, journal())
                .await
                .unwrap();
        let bodies = layout.ranges(data.len() as u64).map(|(_, r)| {
            PartBody::Bytes(
                Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]),
                None,
            )
        });
        let res = upload_parts(w, bodies, Some(crc64nvme(&data)))
            .await
            .unwrap();
        assert_eq!(res.crc64nvme, Some(crc64nvme(&data)));
        assert_eq!(mem.get_bytes("g").await.unwrap().as_ref(), data.as_slice());
        assert_eq!(mem.op_count("upload_part"), 3, "5 + 10 + 7 MiB");

        // A short part that is not the last is refused, and the upload is aborted.
        let mut w =
            MultipartWriter::create(store.clone(), "h", PutOptions::new(), layout, &c, journal())
                .await
                .unwrap();
        w.push(PartBody::Bytes(Bytes::from(vec![1u8; 100]), None))
            .await
            .unwrap();
        let e = w
            .push(PartBody::Bytes(Bytes::from(vec![1u8; 100]), None))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        w.abort().await;
        assert!(mem.list_multipart("").await.unwrap().is_empty(), "aborted");
        assert_eq!(mem.head("h").await.unwrap_err().kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn writer_with_a_wrong_expected_checksum_leaves_nothing() {
        let mem = MemoryStore::new();
        let store: DynStore = Arc::new(mem.clone());
        let c = cfg(3, Duration::from_secs(5));
        let layout = PartLayout::Uniform(5 * MIB as u64);
        let data = ramp(6 * MIB);
        let j = journal();
        let w =
            MultipartWriter::create(store.clone(), "x", PutOptions::new(), layout, &c, j.clone())
                .await
                .unwrap();
        let bodies = layout.ranges(data.len() as u64).map(|(_, r)| {
            PartBody::Bytes(
                Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]),
                None,
            )
        });
        let e = upload_parts(w, bodies, Some(crc64nvme(&data) ^ 1))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Corrupt);
        assert_eq!(mem.head("x").await.unwrap_err().kind, ErrorKind::NotFound);
        assert!(mem.list_multipart("").await.unwrap().is_empty());
        assert!(
            j.stores_with_uploads().await.unwrap().is_empty(),
            "journal cleared"
        );
    }

    #[tokio::test]
    async fn create_only_writer_does_not_replace_an_object_written_meanwhile() {
        let mem = MemoryStore::new();
        let store: DynStore = Arc::new(mem.clone());
        let c = cfg(3, Duration::from_secs(5));
        let w = MultipartWriter::create(
            store.clone(),
            "k",
            PutOptions::new().mode(PutMode::Create),
            PartLayout::Uniform(5 * MIB as u64),
            &c,
            journal(),
        )
        .await
        .unwrap();
        mem.put_bytes("k", "theirs").await.unwrap();
        let e = upload_parts(
            w,
            [PartBody::Bytes(Bytes::from_static(b"ours"), None)],
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        assert_eq!(mem.get_bytes("k").await.unwrap().as_ref(), b"theirs");
    }

    /// A multipart download into a local directory: every ranged GET is written in place,
    /// resets resume, and nothing walks the destination tree for stray uploads.
    #[tokio::test]
    async fn download_streams_parts_into_place_without_walking_the_destination() {
        let data = ramp(21 * MIB + 5);
        let (_, src) = faulty("get:reset=100000@2; get:truncate=5000@4", &data).await;
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(FaultStore::new(
            Arc::new(LocalStore::new(dir.path()).with_fsync(false)),
            "".parse().unwrap(),
        ));
        let src_side = Side::new(src.clone(), "");
        let dst_side = Side::new(local.clone(), "");
        let mut c = cfg(5, Duration::from_secs(5));
        c.part_size = 5 * MIB as u64;
        let entry = Entry {
            rel: "k".into(),
            meta: src.head("k").await.unwrap(),
        };
        copy_object(&src_side, &dst_side, &entry, &c, &journal(), &reporter())
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.path().join("k")).unwrap(), data);
        assert_eq!(
            local.calls("list_multipart"),
            0,
            "no walk of the destination"
        );
        assert_eq!(local.calls("upload_part"), 5, "five parts written in place");
        assert!(c.resumes.load(Ordering::Relaxed) >= 2);
    }

    /// A source overwritten between two ranged reads fails the copy (If-Match) and leaves
    /// nothing at the destination.
    #[tokio::test]
    async fn source_overwritten_mid_copy_is_never_spliced() {
        let data = ramp(12 * MIB);
        let (mem, src) = faulty("", &data).await;
        let dst_mem = MemoryStore::new();
        // The "other client" writes the source once the first ranged read was sent.
        let hooked = src.clone();
        let src_side = Side::new(hooked.clone(), "");
        let dst_side = Side::new(Arc::new(dst_mem.clone()), "");
        let mut c = cfg(3, Duration::from_secs(5));
        c.part_size = 5 * MIB as u64;
        c.part_concurrency = 1;
        let entry = Entry {
            rel: "k".into(),
            meta: mem.head("k").await.unwrap(),
        };
        let writer = {
            let mem = mem.clone();
            async move {
                // Wait until the first ranged read happened, then overwrite.
                while hooked.calls("get") < 1 {
                    tokio::task::yield_now().await;
                }
                mem.put_bytes("k", ramp(12 * MIB + 1)).await.unwrap();
            }
        };
        let (j, r) = (journal(), reporter());
        let copy = copy_object(&src_side, &dst_side, &entry, &c, &j, &r);
        let (res, ()) = tokio::join!(copy, writer);
        let e = res.unwrap_err();
        assert_eq!(e.kind, ErrorKind::PreconditionFailed, "{e}");
        assert_eq!(
            dst_mem.head("k").await.unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert!(
            dst_mem.list_multipart("").await.unwrap().is_empty(),
            "upload aborted"
        );
    }

    /// A big local file is sent part by part from the file; a file changed after it was listed
    /// is caught before the upload completes, and nothing appears.
    #[tokio::test]
    async fn upload_from_a_file_is_checked_against_the_listing() {
        let dir = tempfile::tempdir().unwrap();
        let data = ramp(11 * MIB);
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let local: DynStore = Arc::new(LocalStore::new(dir.path()).with_fsync(false));
        let mem = MemoryStore::new();
        let dst = Arc::new(FaultStore::new(Arc::new(mem.clone()), "".parse().unwrap()));
        let (src_side, dst_side) = (Side::new(local.clone(), ""), Side::new(dst.clone(), ""));
        let mut c = cfg(3, Duration::from_secs(5));
        c.part_size = 5 * MIB as u64;
        let (j, r) = (journal(), reporter());
        let entry = Entry {
            rel: "f".into(),
            meta: local.head("f").await.unwrap(),
        };
        copy_object(&src_side, &dst_side, &entry, &c, &j, &r)
            .await
            .unwrap();
        assert_eq!(mem.get_bytes("f").await.unwrap().as_ref(), data.as_slice());
        assert_eq!(dst.calls("upload_part"), 3);

        // Same size, new content, after the listing: the copy fails and nothing changes.
        let listed = Entry {
            rel: "f".into(),
            meta: local.head("f").await.unwrap(),
        };
        let t = filetime::FileTime::from_unix_time(1_000_000_000, 0);
        std::fs::write(dir.path().join("f"), &ramp(11 * MIB + 1)[1..]).unwrap();
        filetime::set_file_mtime(dir.path().join("f"), t).unwrap();
        let e = copy_object(&src_side, &dst_side, &listed, &c, &j, &r)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient, "{e}");
        assert_eq!(mem.get_bytes("f").await.unwrap().as_ref(), data.as_slice());
        assert!(mem.list_multipart("").await.unwrap().is_empty(), "aborted");
    }
}
