//! `bundle run`: one shard into a tar, an index, a dead-letter index and a receipt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use s3ferry_engine::events::{Outcome, Record, Reporter};
use s3ferry_engine::exec::{Cancel, Done, Executor};
use s3ferry_engine::formats::tar::{Member, TarWriter};
use s3ferry_engine::journal::Journal;
use s3ferry_engine::transfer::{
    copy_object, optional_tags, read_verified, MultipartWriter, TransferConfig, VerifiedRead,
};
use s3ferry_engine::walk::{Entry, Side};
use s3ferry_store::checksum::{crc64_to_b64, crc64nvme, PartLayout};
use s3ferry_store::{
    DynStore, ErrorKind, GetOptions, ObjectMeta, PutOptions, StoreError, StoreExt,
};
use serde::Serialize;

use super::format::{
    encode_pairs, DeadRow, IndexRow, Receipt, ShardRow, DEAD_HEADER, INDEX_HEADER, RECEIPT_FORMAT,
    RECORD, SHARD_HEADER,
};
use super::{csv_rows, put_file, BundleError, Dir, Place, BIG_DIR};
use crate::Buckets;

#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Objects fetched at once.
    pub concurrency: usize,
    /// Part size of the tar's multipart upload.
    pub part_size: u64,
    /// Read each object's tags (one more request per object).
    pub tags: bool,
    /// Pack again even if a receipt says the shard is done.
    pub force: bool,
    /// Abort multipart uploads of this shard's tar started before this (a killed worker's):
    /// a worker passes the time its message became visible again.
    pub stale_uploads_before: Option<SystemTime>,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            concurrency: 32,
            part_size: 16 << 20,
            tags: true,
            force: false,
            stale_uploads_before: None,
        }
    }
}

/// What every shard run of a process shares: where the outputs go, how buckets are opened,
/// the transfer settings and memory budget, the journal of open uploads, and the reporter.
#[derive(Clone)]
pub struct PackContext {
    pub to: Dir,
    pub buckets: Arc<dyn Buckets>,
    pub transfer: TransferConfig,
    pub journal: Arc<Journal>,
    pub reporter: Arc<dyn Reporter>,
}

/// What one shard run did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ShardSummary {
    pub shard: String,
    /// The tar's URI (empty for a shard of big objects only).
    pub tar: String,
    pub index: String,
    pub objects: u64,
    pub packed: u64,
    pub direct: u64,
    pub failed: u64,
    pub bytes: u64,
    pub tar_size: u64,
    /// Already complete (a receipt with the same tar): nothing done.
    pub skipped: bool,
    #[serde(skip)]
    pub elapsed_millis: u64,
}

/// The output names of a shard: `<name>.tar`, `.index.csv`, `.dead-letters.csv`, `.json`.
pub(super) fn shard_name(key: &str) -> String {
    let base = key.rsplit('/').next().unwrap_or(key);
    base.strip_suffix(".csv").unwrap_or(base).to_string()
}

/// The reason column of a dead letter.
fn reason(e: &StoreError) -> &'static str {
    match e.kind {
        ErrorKind::NotFound | ErrorKind::BucketNotFound => "not-found",
        ErrorKind::PermissionDenied => "access-denied",
        ErrorKind::PreconditionFailed => "changed",
        ErrorKind::Throttled | ErrorKind::Transient => "throttled",
        ErrorKind::Corrupt => "corrupt",
        _ => e.kind.as_str(),
    }
}

fn dead(row: &ShardRow, e: &StoreError) -> DeadRow {
    let http = e.http.as_ref();
    DeadRow {
        bucket: row.bucket.clone(),
        key: row.key.clone(),
        version_id: row.version_id.clone(),
        size: row.size,
        etag: row.etag.clone(),
        reason: reason(e).into(),
        http_status: http.and_then(|h| h.status).or(match e.kind {
            ErrorKind::NotFound => Some(404),
            ErrorKind::PermissionDenied => Some(403),
            ErrorKind::PreconditionFailed => Some(412),
            _ => None,
        }),
        error_code: http
            .and_then(|h| h.code.clone())
            .unwrap_or_else(|| e.kind.as_str().to_string()),
        message: e.message.clone(),
    }
}

/// One small object read and verified.
struct Got {
    data: Bytes,
    meta: ObjectMeta,
    md5: String,
    crc: u64,
    tags: Vec<(String, String)>,
}

struct Packer {
    buckets: Arc<dyn Buckets>,
    stores: Mutex<HashMap<String, DynStore>>,
    transfer: TransferConfig,
    opts: PackOptions,
}

impl Packer {
    async fn store(&self, bucket: &str) -> Result<DynStore, StoreError> {
        if let Some(s) = self
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(bucket)
        {
            return Ok(s.clone());
        }
        let s = self.buckets.open(bucket, true).await?;
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bucket.to_string(), s.clone());
        Ok(s)
    }

    /// Read one object whole, pinned to the listed ETag, checked against its listed size and a
    /// plain MD5 ETag (the engine's verified read); a mismatch makes it a dead letter.
    async fn fetch(&self, row: &ShardRow) -> Result<Got, StoreError> {
        let store = self.store(&row.bucket).await?;
        let VerifiedRead { data, meta, md5 } =
            read_verified(&store, &row.key, row.etag.clone(), Some(row.size)).await?;
        let crc = crc64nvme(&data);
        let tags = if self.opts.tags && store.capabilities().tags {
            optional_tags(&store, &row.key).await?
        } else {
            vec![]
        };
        Ok(Got {
            data,
            meta,
            md5,
            crc,
            tags,
        })
    }

    /// Copy one big object server-side (or streamed when the sides cannot copy) under
    /// `bigobjects/`, pinned to the listed ETag. Returns the source's metadata, the copy's ETag
    /// and the tags.
    async fn copy_direct(
        &self,
        row: &ShardRow,
        to: &Dir,
        journal: &Arc<Journal>,
        reporter: &Arc<dyn Reporter>,
    ) -> Result<(ObjectMeta, Option<String>, Vec<(String, String)>), StoreError> {
        let src_store = self.store(&row.bucket).await?;
        let src = Side::new(src_store.clone(), "");
        let dst = Side::new(to.store.clone(), format!("{}{BIG_DIR}", to.prefix));
        let meta = src_store.head(&row.key).await?;
        if row.etag.is_some() && meta.etag != row.etag {
            return Err(StoreError::new(
                ErrorKind::PreconditionFailed,
                "head",
                "changed since it was listed (another ETag)",
            )
            .with_key(&row.key));
        }
        let entry = Entry {
            rel: row.key.clone(),
            meta: meta.clone(),
        };
        let copied = copy_object(&src, &dst, &entry, &self.transfer, journal, reporter).await?;
        let tags = if self.opts.tags && src_store.capabilities().tags {
            optional_tags(&src_store, &row.key).await?
        } else {
            vec![]
        };
        Ok((meta, copied.etag, tags))
    }
}

/// An object's index row from its metadata (offsets, MD5 and CRC64NVME are the caller's).
fn index_row(
    row: &ShardRow,
    m: &ObjectMeta,
    tags: Vec<(String, String)>,
    location: String,
) -> IndexRow {
    IndexRow {
        bucket: row.bucket.clone(),
        key: row.key.clone(),
        version_id: m.version_id.clone().or(row.version_id.clone()),
        size: m.size,
        last_modified: m.last_modified.or(row.last_modified),
        etag: m.etag.clone(),
        md5: None,
        crc64nvme: None,
        content_type: m.content_type.clone(),
        metadata: m.metadata.clone().unwrap_or_default(),
        tags,
        storage_class: m.storage_class.clone().or(row.storage_class.clone()),
        header_offset: None,
        data_offset: None,
        data_length: m.size,
        location,
    }
}

fn push_row(out: &mut Vec<u8>, row: &str) {
    out.extend_from_slice(row.as_bytes());
    out.push(b'\n');
}

/// The PAX records a packed member carries, so a tar alone restores keys, metadata and tags.
fn member_records(row: &ShardRow, got: &Got) -> Vec<(String, String)> {
    let m = &got.meta;
    let mut r: Vec<(String, String)> = vec![(format!("{RECORD}bucket"), row.bucket.clone())];
    let mut opt = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            r.push((format!("{RECORD}{k}"), v));
        }
    };
    opt(
        "version-id",
        m.version_id.clone().or(row.version_id.clone()),
    );
    opt("etag", m.etag.clone());
    opt("md5", Some(got.md5.clone()));
    opt("crc64nvme", Some(crc64_to_b64(got.crc)));
    opt("content-type", m.content_type.clone());
    opt(
        "storage-class",
        m.storage_class.clone().or(row.storage_class.clone()),
    );
    opt(
        "last-modified",
        m.last_modified.or(row.last_modified).map(|t| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }),
    );
    if !got.tags.is_empty() {
        opt(
            "tags",
            Some(encode_pairs(got.tags.iter().map(|(k, v)| (k, v)))),
        );
    }
    for (k, v) in m.metadata.iter().flatten() {
        r.push((format!("{RECORD}meta.{k}"), v.clone()));
    }
    r
}

fn unix_secs(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Read a receipt; `None` if there is none or it is unreadable.
pub(super) async fn read_receipt(to: &Dir, name: &str) -> Option<Receipt> {
    let got = to
        .store
        .get(&to.key(&format!("{name}.json")), GetOptions::new())
        .await
        .ok()?;
    let data = got.bytes().await.ok()?;
    serde_json::from_slice(&data).ok()
}

/// Is the shard complete already (its receipt's tar still there, same ETag)?
async fn complete(to: &Dir, name: &str) -> Option<Receipt> {
    let r = read_receipt(to, name).await?;
    if r.format != RECEIPT_FORMAT {
        return None;
    }
    if r.tar.is_empty() {
        return Some(r);
    }
    let m = to.store.head(&to.key(&r.tar)).await.ok()?;
    (m.size == r.tar_size && m.etag == r.tar_etag).then_some(r)
}

/// Abort the uploads of `key` that started before `before` (a killed run's, whose message came
/// back): they would never complete, and cost storage until a lifecycle rule removes them.
async fn abort_stale_uploads(store: &DynStore, key: &str, before: SystemTime) {
    if store.capabilities().local {
        return;
    }
    let Ok(ups) = store.list_multipart(key).await else {
        return;
    };
    for u in ups {
        if u.key == key && u.initiated.is_some_and(|t| t < before) {
            tracing::info!("aborting the stale upload {} of {key}", u.upload_id);
            if let Err(e) = store.abort_multipart(key, &u.upload_id).await {
                tracing::warn!(
                    "could not abort the stale upload {} of {key}: {e}",
                    u.upload_id
                );
            }
        }
    }
}

/// Pack one shard into `to`. Per-object failures become dead letters and the shard still
/// completes; a failure to read the shard or write the outputs is the shard's error (nothing
/// is visible under the final keys then but what a previous complete run left). A `stop`
/// request (the command's one cancellation) aborts the upload and returns
/// [`BundleError::Interrupted`].
pub async fn run_shard(
    shard: &Place,
    cx: &PackContext,
    opts: &PackOptions,
    stop: &Cancel,
) -> Result<ShardSummary, BundleError> {
    let (to, buckets, transfer, journal, reporter) =
        (&cx.to, &cx.buckets, &cx.transfer, &cx.journal, &cx.reporter);
    let started = Instant::now();
    let name = shard_name(&shard.key);
    let tar_name = format!("{name}.tar");
    let index_name = format!("{name}.index.csv");
    let dead_name = format!("{name}.dead-letters.csv");
    let mut summary = ShardSummary {
        shard: shard.uri.clone(),
        index: to.uri_of(&index_name),
        ..Default::default()
    };
    if !opts.force {
        if let Some(r) = complete(to, &name).await {
            summary.tar = if r.tar.is_empty() {
                String::new()
            } else {
                to.uri_of(&r.tar)
            };
            summary.objects = r.objects;
            summary.packed = r.packed;
            summary.direct = r.direct;
            summary.failed = r.failed;
            summary.bytes = r.bytes;
            summary.tar_size = r.tar_size;
            summary.skipped = true;
            reporter.record(&Record::new(
                &shard.uri,
                Outcome::Skip,
                "complete already (its receipt and tar are in place)",
                0,
            ));
            return Ok(summary);
        }
    }

    let mut small = Vec::new();
    let mut big = Vec::new();
    let mut rows = csv_rows(shard, SHARD_HEADER).await?;
    while let Some(r) = rows.next().await {
        let (n, line) = r?;
        let row = ShardRow::parse_row(&line)
            .map_err(|e| BundleError::Input(format!("{} line {n}: {e}", shard.uri)))?;
        if row.direct {
            big.push(row);
        } else {
            small.push(row);
        }
    }
    summary.objects = (small.len() + big.len()) as u64;
    reporter.planned(
        summary.objects,
        small.iter().chain(&big).map(|r| r.size).sum(),
    );

    let packer = Arc::new(Packer {
        buckets: buckets.clone(),
        stores: Mutex::new(HashMap::new()),
        transfer: transfer.clone(),
        opts: opts.clone(),
    });
    let mut index: Vec<u8> = format!("{INDEX_HEADER}\n").into_bytes();
    let mut dead: Vec<u8> = format!("{DEAD_HEADER}\n").into_bytes();
    let mut tar_etag = None;

    if !small.is_empty() {
        let tar_key = to.key(&tar_name);
        summary.tar = to.uri_of(&tar_name);
        if let Some(t) = opts.stale_uploads_before {
            abort_stale_uploads(&to.store, &tar_key, t).await;
        }
        let writer = MultipartWriter::create(
            to.store.clone(),
            &tar_key,
            PutOptions::new().content_type(Some("application/x-tar".into())),
            PartLayout::for_stream(opts.part_size),
            transfer,
            journal.clone(),
        )
        .await?;
        let abort = writer.abort_handle();
        let mut tar = TarWriter::new(writer);
        // Fetched concurrently by the engine's executor, appended in manifest order.
        let fetcher = Arc::new(Executor::new(
            opts.concurrency,
            stop.clone(),
            reporter.clone(),
        ));
        let fetches = fetcher.ordered(stream::iter(small), |row| {
            let p = packer.clone();
            async move {
                // The reservation travels with the bytes until they are in the tar.
                let got = match p.transfer.reserve(row.size).await {
                    Ok(mem) => p.fetch(&row).await.map(|g| (g, mem)),
                    Err(e) => Err(e),
                };
                (row, got)
            }
        });
        futures::pin_mut!(fetches);
        let mut interrupted = false;
        let packed: Result<(), StoreError> = async {
            loop {
                let next = tokio::select! {
                    biased;
                    () = stop.requested() => {
                        interrupted = true;
                        return Ok(());
                    }
                    n = fetches.next() => n,
                };
                let Some((row, got)) = next else { break };
                match got {
                    Ok((got, _mem)) => {
                        let member = Member {
                            name: row.key.clone(),
                            size: got.data.len() as u64,
                            mtime: unix_secs(got.meta.last_modified.or(row.last_modified)),
                            records: member_records(&row, &got),
                        };
                        let body = stream::once(std::future::ready(Ok(got.data.clone()))).boxed();
                        let placed = tar.append(&member, body).await?;
                        let irow = IndexRow {
                            size: member.size,
                            md5: Some(got.md5.clone()),
                            crc64nvme: Some(crc64_to_b64(got.crc)),
                            header_offset: Some(placed.header_offset),
                            data_offset: Some(placed.data_offset),
                            data_length: placed.data_len,
                            ..index_row(&row, &got.meta, got.tags.clone(), tar_name.clone())
                        };
                        push_row(&mut index, &irow.to_row());
                        summary.packed += 1;
                        summary.bytes += member.size;
                        reporter.bytes(member.size);
                        reporter.record(&Record::new(
                            format!("{}/{}", row.bucket, row.key),
                            Outcome::Copy,
                            "packed",
                            member.size,
                        ));
                    }
                    Err(e) => {
                        record_dead(&mut dead, &row, &e, reporter);
                        summary.failed += 1;
                    }
                }
            }
            Ok(())
        }
        .await;
        match packed {
            Ok(()) if interrupted => {
                drop(tar);
                abort.abort().await;
                return Err(BundleError::Interrupted);
            }
            Ok(()) => {
                let (writer, total) = match tar.finish().await {
                    Ok(x) => x,
                    Err(e) => {
                        abort.abort().await;
                        return Err(e.into());
                    }
                };
                let put = writer.finish(None).await?;
                summary.tar_size = total;
                tar_etag = put.etag;
            }
            Err(e) => {
                drop(tar);
                abort.abort().await;
                return Err(e.into());
            }
        }
    }

    // Big objects: copied directly by the engine's executor (at most 8 at a time; a stop lets
    // the copies in flight finish), then indexed in manifest order.
    let exec = Arc::new(Executor::new(
        opts.concurrency.clamp(1, 8),
        stop.clone(),
        reporter.clone(),
    ));
    let copied = Arc::new(Mutex::new(Vec::with_capacity(big.len())));
    let rows = stream::iter(
        big.into_iter()
            .enumerate()
            .map(Ok::<_, std::convert::Infallible>),
    );
    let _ = exec
        .run_once(rows, |(pos, row), _| {
            let p = packer.clone();
            let (to, journal, reporter) = (to.clone(), journal.clone(), reporter.clone());
            let copied = copied.clone();
            async move {
                let r = p.copy_direct(&row, &to, &journal, &reporter).await;
                copied
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((pos, row, r));
                Done::Nothing
            }
        })
        .await;
    if stop.is_requested() {
        return Err(BundleError::Interrupted);
    }
    let mut copied = std::mem::take(&mut *copied.lock().unwrap_or_else(|p| p.into_inner()));
    copied.sort_by_key(|c| c.0);
    for (_, row, r) in copied {
        match r {
            Ok((m, copy_etag, tags)) => {
                let irow = IndexRow {
                    // The copy's: `get` reads the copy pinned to it.
                    etag: copy_etag.or(m.etag.clone()),
                    ..index_row(&row, &m, tags, format!("{BIG_DIR}{}", row.key))
                };
                push_row(&mut index, &irow.to_row());
                summary.direct += 1;
                summary.bytes += m.size;
                reporter.record(&Record::new(
                    format!("{}/{}", row.bucket, row.key),
                    Outcome::Copy,
                    "copied directly (big object)",
                    m.size,
                ));
            }
            Err(e) => {
                record_dead(&mut dead, &row, &e, reporter);
                summary.failed += 1;
            }
        }
    }

    put_file(to, &index_name, index, "text/csv").await?;
    let dead_letters = if summary.failed > 0 {
        put_file(to, &dead_name, dead, "text/csv").await?;
        Some(dead_name)
    } else {
        // A rerun that took everything leaves no stale dead letters behind.
        match to.store.delete(&to.key(&dead_name)).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        None
    };
    let receipt = Receipt {
        format: RECEIPT_FORMAT,
        shard: shard.uri.clone(),
        tar: if summary.tar.is_empty() {
            String::new()
        } else {
            tar_name
        },
        tar_size: summary.tar_size,
        tar_etag,
        index: index_name,
        dead_letters,
        objects: summary.objects,
        packed: summary.packed,
        direct: summary.direct,
        failed: summary.failed,
        bytes: summary.bytes,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let json =
        serde_json::to_vec_pretty(&receipt).map_err(|e| BundleError::Input(e.to_string()))?;
    put_file(to, &format!("{name}.json"), json, "application/json").await?;
    summary.elapsed_millis = started.elapsed().as_millis() as u64;
    Ok(summary)
}

fn record_dead(out: &mut Vec<u8>, row: &ShardRow, e: &StoreError, reporter: &Arc<dyn Reporter>) {
    let d = dead(row, e);
    push_row(out, &d.to_row());
    reporter.record(&Record {
        key: format!("{}/{}", row.bucket, row.key),
        action: Outcome::Fail,
        reason: d.reason.clone(),
        size: row.size,
        error: Some(format!("{}/{}: {} ({})", row.bucket, row.key, e, d.reason)),
    });
}
