//! Reading an object in ranges: every body read resumes after resets, stalls and short bodies
//! with a ranged GET pinned to the ETag seen first (`If-Match`), so a source overwritten mid-read
//! fails with `PreconditionFailed` instead of splicing two versions.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use s3ferry_store::checksum::crc64nvme;
use s3ferry_store::{
    collect_body, ByteStream, DynStore, ErrorKind, GetOptions, ObjectMeta, PartLayout, Result,
    StoreError,
};

use super::{Reservation, TransferConfig};

/// One body read of `range`, resumed as often as the config allows.
struct BodyRead {
    store: DynStore,
    key: String,
    start: u64,
    pos: u64,
    end: u64,
    pin: Option<String>,
    /// Ask for the whole object first (the store then returns its full-object checksum).
    whole_first: bool,
    /// A local file must still have this size and mtime (it was listed so).
    expect: Option<(u64, Option<SystemTime>)>,
    cfg: TransferConfig,
    attempt: u32,
    body: Option<ByteStream>,
    meta: Option<ObjectMeta>,
    last_err: Option<StoreError>,
}

impl BodyRead {
    fn new(store: DynStore, key: &str, range: Range<u64>, cfg: &TransferConfig) -> Self {
        Self {
            store,
            key: key.to_string(),
            start: range.start,
            pos: range.start,
            end: range.end,
            pin: None,
            whole_first: false,
            expect: None,
            cfg: cfg.clone(),
            attempt: 0,
            body: None,
            meta: None,
            last_err: None,
        }
    }

    fn error(&self, kind: ErrorKind, msg: String) -> StoreError {
        StoreError::new(kind, "get", msg).with_key(&self.key)
    }

    /// Open (or reopen, from the current position) the body.
    async fn open(&mut self) -> Result<()> {
        loop {
            if self.attempt >= self.cfg.body_attempts.max(1) {
                return Err(self
                    .last_err
                    .take()
                    .unwrap_or_else(|| self.error(ErrorKind::Transient, "read failed".into())));
            }
            if self.attempt > 0 {
                tracing::debug!(key = self.key, pos = self.pos, "resuming body read");
                self.cfg.resumes.fetch_add(1, Ordering::Relaxed);
            }
            self.attempt += 1;
            let mut opts = GetOptions::new().if_match(self.pin.clone());
            let whole = self.whole_first && self.meta.is_none() && self.pos == self.start;
            if !whole {
                opts = opts.range(self.pos..self.end);
            }
            match self.store.get(&self.key, opts).await {
                Ok(got) => {
                    if let Some((size, mtime)) = self.expect {
                        if got.meta.size != size || got.meta.mtime != mtime {
                            return Err(self.error(
                                ErrorKind::Transient,
                                "file changed since it was listed; will retry".into(),
                            ));
                        }
                    }
                    if self.meta.is_none() {
                        if self.pin.is_none() {
                            self.pin = got.meta.etag.clone();
                        }
                        self.meta = Some(got.meta);
                    }
                    self.body = Some(got.body);
                    return Ok(());
                }
                Err(e) if e.retryable() => self.last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next chunk, or `None` once the whole range was read.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let idle = self.cfg.idle_timeout;
        loop {
            let Some(body) = self.body.as_mut() else {
                if self.pos == self.end && self.meta.is_some() {
                    return Ok(None);
                }
                self.open().await?;
                continue;
            };
            // The SDK stops retrying once headers arrive: a stalled body is ours to detect.
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(c))) => {
                    if self.pos + c.len() as u64 > self.end {
                        return Err(
                            self.error(ErrorKind::Corrupt, "body longer than requested".into())
                        );
                    }
                    self.pos += c.len() as u64;
                    if !c.is_empty() {
                        return Ok(Some(c));
                    }
                }
                Ok(Some(Err(e))) => {
                    self.body = None;
                    if !e.retryable() {
                        return Err(e);
                    }
                    self.last_err = Some(e);
                }
                Ok(None) => {
                    self.body = None;
                    if self.pos == self.end {
                        return Ok(None);
                    }
                    self.last_err = Some(self.error(
                        ErrorKind::Corrupt,
                        format!("body ended at byte {} of {}", self.pos, self.end),
                    ));
                }
                Err(_) => {
                    self.body = None;
                    self.last_err = Some(self.error(
                        ErrorKind::Transient,
                        format!("no data for {}s; resuming", idle.as_secs()),
                    ));
                }
            }
        }
    }

    /// Read everything into one buffer as the chunks arrive (no copy when the store sends one
    /// chunk; otherwise each chunk is copied once into a buffer of the range's size and freed).
    async fn collect(mut self) -> Result<(Bytes, ObjectMeta)> {
        let want = self.end - self.start;
        let key = self.key.clone();
        let chunks = stream::unfold(&mut self, |st| async move {
            match st.next_chunk().await {
                Ok(Some(c)) => Some((Ok(c), st)),
                Ok(None) => None,
                Err(e) => Some((Err(e), st)),
            }
        });
        let data = collect_body(chunks, want, &key).await?;
        Ok((data, self.meta.unwrap_or_default()))
    }

    fn into_stream(self) -> ByteStream {
        stream::unfold(Some(self), |st| async move {
            let mut st = st?;
            match st.next_chunk().await {
                Ok(Some(c)) => Some((Ok(c), Some(st))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }
}

/// Read `range` of `key` completely, resuming after resets and short bodies with a ranged GET
/// pinned to `pin` or to the ETag seen first. `whole` asks for a whole-object GET first (so the
/// store returns the full-object checksum). Returns the bytes and the metadata of the first
/// response.
pub async fn read_range(
    store: DynStore,
    key: &str,
    range: Range<u64>,
    whole: bool,
    pin: Option<String>,
    cfg: &TransferConfig,
) -> Result<(Bytes, ObjectMeta)> {
    let mut r = BodyRead::new(store, key, range, cfg);
    r.whole_first = whole;
    r.pin = pin;
    r.collect().await
}

/// An object read in ranges, every range pinned to the object as it was first seen: its ETag
/// for remote stores, its size and mtime for local files.
#[derive(Clone)]
pub struct RangedReader {
    store: DynStore,
    key: String,
    meta: ObjectMeta,
    local: bool,
    cfg: TransferConfig,
}

impl RangedReader {
    /// Discover the object with a HEAD (size, ETag to pin, full-object checksum, metadata).
    pub async fn open(store: DynStore, key: &str, cfg: &TransferConfig) -> Result<Self> {
        let meta = store.head(key).await?;
        Ok(Self::new(store, key, meta, cfg))
    }

    /// An object already known from a listing or HEAD.
    pub fn new(store: DynStore, key: &str, meta: ObjectMeta, cfg: &TransferConfig) -> Self {
        let local = store.capabilities().local;
        Self {
            store,
            key: key.to_string(),
            meta,
            local,
            cfg: cfg.clone(),
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    pub fn size(&self) -> u64 {
        self.meta.size
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    fn body(&self, range: Range<u64>) -> BodyRead {
        let mut r = BodyRead::new(self.store.clone(), &self.key, range, &self.cfg);
        if self.local {
            r.expect = Some((self.meta.size, self.meta.mtime));
        } else {
            r.pin = self.meta.etag.clone();
        }
        r
    }

    /// The bytes of `range` as a stream of chunks (nothing is read until it is polled).
    pub fn stream(&self, range: Range<u64>) -> ByteStream {
        self.body(range).into_stream()
    }

    /// The bytes of `range` in one buffer.
    pub async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        Ok(self.body(range).collect().await?.0)
    }

    /// [`RangedReader::read`] as a future that owns what it needs (for a part's task).
    pub fn read_owned(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes>> {
        let b = self.body(range);
        Box::pin(async move { Ok(b.collect().await?.0) })
    }

    /// The whole object as parts of `layout`, in order, read ahead by up to `window` parts in
    /// background tasks (a bounded reorder window: parts finish in any order and come out in
    /// order). Each part's memory is reserved from the shared budget, in part order, before its
    /// read starts, and given back when the [`ReadPart`] is dropped: at most about `window` parts
    /// are held at once. Dropping the stream aborts the reads still running.
    pub fn ordered_parts(
        &self,
        layout: PartLayout,
        window: usize,
    ) -> BoxStream<'static, Result<ReadPart>> {
        let size = self.size();
        let reader = self.clone();
        let mut next = (0u32, 0u64);
        let ranges = stream::iter(std::iter::from_fn(move || {
            let (n, pos) = next;
            if pos >= size {
                return None;
            }
            let end = pos.saturating_add(layout.len(n + 1)).min(size);
            next = (n + 1, end);
            Some((n + 1, pos..end))
        }));
        ranges
            .then(move |(number, range)| {
                let reader = reader.clone();
                // Yields the part's task (a future) once its memory is reserved: `buffered`
                // then runs up to `window` of them and hands them out in order.
                #[allow(clippy::async_yields_async)]
                async move {
                    let len = range.end - range.start;
                    let reserved = reader.cfg.reserve(len).await;
                    let task = tokio::spawn(async move {
                        let reservation = reserved?;
                        let data = reader.read(range.clone()).await?;
                        let crc = crc64nvme(&data);
                        Ok(ReadPart {
                            number,
                            range,
                            data,
                            crc,
                            _reservation: reservation,
                        })
                    });
                    AbortOnDrop(task)
                }
            })
            .buffered(window.max(1))
            .boxed()
    }
}

/// One part of [`RangedReader::ordered_parts`].
#[derive(Debug)]
pub struct ReadPart {
    /// 1-based part number.
    pub number: u32,
    pub range: Range<u64>,
    pub data: Bytes,
    /// CRC64NVME of `data`.
    pub crc: u64,
    _reservation: Reservation,
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<Result<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(r) => r,
            Err(e) => Err(StoreError::new(
                ErrorKind::Other,
                "get",
                format!("part task: {e}"),
            )),
        })
    }
}

/// An object read whole and checked ([`read_verified`]).
#[derive(Debug)]
pub struct VerifiedRead {
    pub data: Bytes,
    pub meta: ObjectMeta,
    /// The hex MD5 of `data`.
    pub md5: String,
}

/// Whether an ETag is a plain MD5 (single-part, not KMS): 32 hex digits.
pub fn is_plain_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Read one (small) object whole, pinned to `etag` when given, and check it: its size against
/// `size` when given (else `PreconditionFailed`), its bytes against a plain-MD5 ETag. A mismatch
/// is read once more: the same bytes twice mean the ETag is not an MD5 (SSE-KMS, SSE-C) and the
/// data stands; different bytes mean it changed or was damaged on the way (`Corrupt`). For jobs
/// that hold small objects in memory (bundle's packing); big objects go through
/// [`read_range`].
pub async fn read_verified(
    store: &DynStore,
    key: &str,
    etag: Option<String>,
    size: Option<u64>,
) -> Result<VerifiedRead> {
    use md5::{Digest as _, Md5};
    let read = || async {
        let got = store
            .get(key, GetOptions::new().if_match(etag.clone()))
            .await?;
        let meta = got.meta;
        let data = collect_body(got.body, meta.size, key).await?;
        Ok::<_, StoreError>((data, meta))
    };
    let (data, meta) = read().await?;
    if let Some(want) = size.filter(|w| *w != meta.size) {
        return Err(StoreError::new(
            ErrorKind::PreconditionFailed,
            "get",
            format!("size {} differs from the listed {want}", meta.size),
        )
        .with_key(key));
    }
    let md5 = hex::encode(Md5::digest(&data));
    if let Some(e) = meta.etag.as_deref().filter(|e| is_plain_md5(e)) {
        if !e.eq_ignore_ascii_case(&md5) {
            let (again, _) = read().await?;
            if hex::encode(Md5::digest(&again)) != md5 {
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    "get",
                    "the bytes differ between two reads of the same ETag (changed or damaged in transit)",
                )
                .with_key(key));
            }
            tracing::debug!("{key}: ETag {e} is not the MD5 of the data (encrypted object?)");
        }
    }
    Ok(VerifiedRead { data, meta, md5 })
}
