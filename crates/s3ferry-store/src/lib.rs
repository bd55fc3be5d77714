//! The storage abstraction of s3ferry: one narrow, object-safe [`Store`] trait, lossless keys,
//! the local and in-memory backends, and layers (retry, adaptive concurrency, fault injection).
//!
//! Layer composition used by the CLI (outermost first): `Retry -> Limit -> [Fault] -> backend`.
//! Every attempt of the retry layer takes its own concurrency permit, so throttling lowers the
//! limit seen by every concurrent caller.

pub mod checksum;
pub mod error;
pub mod key;
pub mod layer;
pub mod local;
pub mod memory;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use checksum::PartLayout;
pub use error::{ErrorKind, HttpInfo, Result, StoreError};
pub use key::{key_to_relpath, relpath_to_key, Location, UnsafeKey};

/// Metadata key under which the source file's modification time travels with an object
/// (seconds since the epoch with a fraction; the convention rclone uses too).
pub const MTIME_META: &str = "mtime";

/// What a listing, HEAD or GET says about an object.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    /// The key exactly as the store has it.
    pub key: String,
    pub size: u64,
    /// When the store last wrote the object (S3 LastModified; local mtime).
    pub last_modified: Option<SystemTime>,
    /// The source file's modification time, where known (local mtime, or S3 `x-amz-meta-mtime`
    /// from HEAD/GET; not known from S3 listings).
    pub mtime: Option<SystemTime>,
    /// ETag without quotes.
    pub etag: Option<String>,
    /// Full-object CRC64NVME where the store has it.
    pub crc64nvme: Option<u64>,
    pub storage_class: Option<String>,
    pub version_id: Option<String>,
    pub content_type: Option<String>,
    /// User metadata (HEAD/GET only; `None` = not known).
    pub metadata: Option<BTreeMap<String, String>>,
    /// Local file identity (inode) for the hash cache.
    pub inode: Option<u64>,
    /// Local inode change time: moves on every write, and cannot be set back the way mtime can.
    pub ctime: Option<SystemTime>,
    /// Server-side encryption as the store reports it (HEAD/GET: `AES256`, `aws:kms`,
    /// `aws:kms:dsse`, `SSE-C`; listings of a bucket read with an SSE-C key: `SSE-C`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
}

impl ObjectMeta {
    /// What the ETag says about the content. S3's ETags of objects encrypted with SSE-KMS,
    /// DSSE-KMS or SSE-C are not MD5s of the content, whatever they look like: opaque.
    pub fn etag_shape(&self) -> checksum::EtagShape {
        match (self.etag.as_deref(), self.encryption.as_deref()) {
            (None, _) | (_, Some("aws:kms" | "aws:kms:dsse" | "SSE-C")) => {
                checksum::EtagShape::Opaque
            }
            (Some(e), _) => checksum::etag_shape(e),
        }
    }
}

/// How a put treats an existing object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PutMode {
    #[default]
    Overwrite,
    /// Only if no object exists (If-None-Match: *); else `AlreadyExists`.
    Create,
    /// Only if the current ETag matches (If-Match); else `PreconditionFailed`.
    Update { etag: String },
}

#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PutOptions {
    pub mode: PutMode,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub tags: Vec<(String, String)>,
    pub storage_class: Option<String>,
    /// Full-object CRC64NVME of the body; the store verifies it (S3 rejects a mismatch).
    pub crc64nvme: Option<u64>,
    /// The source's modification time, stored as metadata (S3) or as the file's mtime (local).
    pub mtime: Option<SystemTime>,
    /// The object's size when known before a multipart upload starts: a local store sizes its
    /// temp file up front (parts written out of order into a growing file cost the kernel far
    /// more than writes into a file of its final size).
    pub size: Option<u64>,
    /// Server-side encryption (`AES256`, `aws:kms`, `aws:kms:dsse`); `None` = the bucket default.
    pub sse: Option<String>,
    /// The KMS key for `aws:kms` encryption (`None` = the account's default key).
    pub sse_kms_key_id: Option<String>,
    /// Standard HTTP headers stored with the object, and a canned ACL.
    pub headers: ObjectHeaders,
}

/// Headers an object is stored with (as `aws s3 cp/sync` sets them), and a canned ACL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectHeaders {
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    /// `Expires`, as an HTTP date or RFC 3339 (the store converts).
    pub expires: Option<SystemTime>,
    /// Canned ACL: private, public-read, bucket-owner-full-control, ...
    pub acl: Option<String>,
    /// `x-amz-website-redirect-location`: where a website bucket redirects this key.
    pub website_redirect: Option<String>,
    /// Explicit ACL grants (`x-amz-grant-*`): grantees as S3 takes them
    /// (`id=…, uri=…, emailAddress=…`, comma-separated).
    pub grant_read: Option<String>,
    pub grant_read_acp: Option<String>,
    pub grant_write_acp: Option<String>,
    pub grant_full_control: Option<String>,
}

impl PutOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn mode(mut self, m: PutMode) -> Self {
        self.mode = m;
        self
    }
    pub fn content_type(mut self, c: Option<String>) -> Self {
        self.content_type = c;
        self
    }
    pub fn metadata(mut self, m: BTreeMap<String, String>) -> Self {
        self.metadata = m;
        self
    }
    pub fn tags(mut self, t: Vec<(String, String)>) -> Self {
        self.tags = t;
        self
    }
    pub fn storage_class(mut self, s: Option<String>) -> Self {
        self.storage_class = s;
        self
    }
    pub fn crc64nvme(mut self, c: Option<u64>) -> Self {
        self.crc64nvme = c;
        self
    }
    pub fn mtime(mut self, t: Option<SystemTime>) -> Self {
        self.mtime = t;
        self
    }
    pub fn size(mut self, n: Option<u64>) -> Self {
        self.size = n;
        self
    }
    pub fn sse(mut self, sse: Option<String>, kms_key_id: Option<String>) -> Self {
        self.sse = sse;
        self.sse_kms_key_id = kms_key_id;
        self
    }
    pub fn headers(mut self, h: ObjectHeaders) -> Self {
        self.headers = h;
        self
    }
}

/// The bytes a GET of `want` covers in an object of `size` bytes — the one contract every store
/// keeps (HTTP's, as S3 answers it; the conformance suite holds each store to it):
///
/// * `None`: the whole object.
/// * A range that *starts* at or past the end (`start >= size`), or a reversed one: an error
///   (S3 answers 416 InvalidRange; stores return `InvalidInput`). So does any non-empty range of
///   an empty object.
/// * A range that starts inside and *extends* past the end: clamped to `start..size`;
///   [`GetResult::range`] says what was covered.
/// * An empty range `n..n` with `n <= size`: an empty body (HTTP cannot ask for it; S3 answers
///   it from a HEAD).
///
/// `Err` carries the message for an `InvalidInput` error.
pub fn covered_range(
    want: Option<Range<u64>>,
    size: u64,
) -> std::result::Result<Range<u64>, String> {
    match want {
        None => Ok(0..size),
        Some(r) if r.start > r.end => Err(format!("bad range {r:?}")),
        Some(r) if r.start == r.end && r.start <= size => Ok(r),
        Some(r) if r.start >= size => Err(format!(
            "range {r:?} starts past the end of the object ({size} bytes)"
        )),
        Some(r) => Ok(r.start..r.end.min(size)),
    }
}

#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct GetOptions {
    /// Byte range to read; `None` = whole object. See [`covered_range`] for ranges that reach
    /// past the end.
    pub range: Option<Range<u64>>,
    /// Fail with `PreconditionFailed` unless the object still has this ETag.
    pub if_match: Option<String>,
}

impl GetOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn range(mut self, r: Range<u64>) -> Self {
        self.range = Some(r);
        self
    }
    pub fn if_match(mut self, e: Option<String>) -> Self {
        self.if_match = e;
        self
    }
}

pub type ByteStream = BoxStream<'static, Result<Bytes>>;

pub struct GetResult {
    /// Metadata of the whole object (size = whole object size).
    pub meta: ObjectMeta,
    /// The bytes this body covers.
    pub range: Range<u64>,
    pub body: ByteStream,
}

impl GetResult {
    /// Read the whole body; fails with `Corrupt` if it is shorter or longer than announced.
    pub async fn bytes(self) -> Result<Bytes> {
        let want = self.range.end - self.range.start;
        collect_body(self.body, want, &self.meta.key).await
    }
}

/// Read a body of exactly `want` bytes into one buffer (no copy when it comes as one chunk);
/// `Corrupt` if it is shorter or longer.
pub async fn collect_body<S>(body: S, want: u64, key: &str) -> Result<Bytes>
where
    S: futures::Stream<Item = Result<Bytes>>,
{
    use futures::StreamExt;
    let mut body = std::pin::pin!(body);
    let wrong = |total: u64| {
        StoreError::new(
            ErrorKind::Corrupt,
            "get",
            format!("body has {total} bytes, expected {want}"),
        )
        .with_key(key)
    };
    let mut first: Option<Bytes> = None;
    let mut buf: Option<bytes::BytesMut> = None;
    let mut total = 0u64;
    while let Some(c) = body.next().await {
        let c = c?;
        total += c.len() as u64;
        if total > want {
            return Err(wrong(total));
        }
        match (&mut buf, first.take()) {
            (Some(b), _) => b.extend_from_slice(&c),
            (None, None) => first = Some(c),
            (None, Some(f)) => {
                let mut b = bytes::BytesMut::with_capacity(want as usize);
                b.extend_from_slice(&f);
                b.extend_from_slice(&c);
                buf = Some(b);
            }
        }
    }
    if total != want {
        return Err(wrong(total));
    }
    Ok(match (buf, first) {
        (Some(b), _) => b.freeze(),
        (None, f) => f.unwrap_or_default(),
    })
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PutResult {
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub crc64nvme: Option<u64>,
}

/// A byte range of a local file, as the body of a part: stores that can send a file without
/// holding it in memory (S3) read it as they send it, and can read it again for a retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRange {
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl FileRange {
    /// Read the range into memory.
    pub fn read(&self) -> std::io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.path)?;
        let mut buf = vec![0u8; self.len as usize];
        f.read_exact_at(&mut buf, self.offset)?;
        Ok(buf.into())
    }

    /// CRC64NVME of the range, read through a small buffer.
    pub fn crc64nvme(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.path)?;
        let mut buf = vec![0u8; (256 * 1024).min(self.len.max(1) as usize)];
        let mut crc = checksum::Crc64::default();
        let mut pos = self.offset;
        let end = self.offset + self.len;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos)?;
            crc.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(crc.finish())
    }
}

/// A finished part of a multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: u32,
    pub etag: String,
    pub crc64nvme: Option<u64>,
}

/// The source of a server-side copy.
#[derive(Clone, Debug)]
pub struct CopySource {
    pub bucket: String,
    pub key: String,
    /// Copy only if the source still has this ETag (`x-amz-copy-source-if-match`).
    pub if_match: Option<String>,
    /// Copy this version of the source (versioned buckets); `None` = the current one.
    pub version_id: Option<String>,
}

#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct CopyOptions {
    /// `None` = copy metadata and tags from the source; `Some` = replace the metadata (and the
    /// tags, when it has any).
    pub replace: Option<PutOptions>,
    pub storage_class: Option<String>,
    /// Checksum algorithm of the copy (`CRC64NVME` by default where the store computes one):
    /// `CRC32`, `CRC32C`, `SHA1`, `SHA256`, `CRC64NVME`.
    pub checksum_algorithm: Option<String>,
}

impl CopyOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn replace(mut self, r: Option<PutOptions>) -> Self {
        self.replace = r;
        self
    }
    pub fn storage_class(mut self, s: Option<String>) -> Self {
        self.storage_class = s;
        self
    }
    pub fn checksum_algorithm(mut self, a: Option<String>) -> Self {
        self.checksum_algorithm = a;
        self
    }
}

#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ListOptions {
    pub prefix: String,
    pub start_after: Option<String>,
    /// Stores that leave entries out (a local store: symlinks, FIFOs, sockets, devices) send
    /// each one as a keyed `Unsupported` error from op `list`, whose message names what it is,
    /// instead of leaving it out silently.
    pub report_skipped: bool,
}

impl ListOptions {
    pub fn prefix(p: impl Into<String>) -> Self {
        Self {
            prefix: p.into(),
            start_after: None,
            report_skipped: false,
        }
    }
    pub fn report_skipped(mut self, yes: bool) -> Self {
        self.report_skipped = yes;
        self
    }
    pub fn start_after(mut self, k: Option<String>) -> Self {
        self.start_after = k;
        self
    }
}

#[derive(Clone, Debug)]
pub struct MultipartUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// One version of an object in a versioned listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VersionMeta {
    /// The version's metadata; `meta.version_id` is set.
    pub meta: ObjectMeta,
    pub is_latest: bool,
    /// A delete marker (no data).
    pub delete_marker: bool,
}

/// What a store can do, as data. Layers may change it; the engine checks before using a feature.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub conditional_writes: bool,
    /// Stores with the same non-empty `copy_domain` can copy server-side between each other.
    pub copy_domain: Option<String>,
    pub upload_part_copy: bool,
    pub tags: bool,
    pub versions: bool,
    pub crc64nvme: bool,
    /// ETags are MD5-style (single or multipart) and can be recomputed from content.
    pub md5_etags: bool,
    /// Largest single PUT / CopyObject.
    pub max_single_put: u64,
    /// The store is a local file system (mtime is kept exactly; no request cost).
    pub local: bool,
}

/// One narrow, object-safe storage trait. Keys are full keys within the store's bucket/root.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Human-readable location, e.g. `s3://bucket` or `/data`.
    fn describe(&self) -> String;
    /// A stable identity for state records: like [`Store::describe`] but distinct for two
    /// endpoints that have a bucket of the same name (`s3://bucket@https://endpoint`).
    fn state_id(&self) -> String {
        self.describe()
    }
    /// The bucket name for server-side copies (`None` for local and memory stores).
    fn bucket(&self) -> Option<&str> {
        None
    }
    fn capabilities(&self) -> Capabilities;

    /// Objects under `prefix`, sorted by key in byte order. Errors carrying a key are about one
    /// entry (the listing goes on); errors without a key end the listing.
    fn list(&self, opts: ListOptions) -> BoxStream<'static, Result<ObjectMeta>>;

    /// Every version (and delete marker) of the objects under `prefix`, in key order, newest
    /// first within a key. Stores without versions answer `Unsupported`.
    fn list_versions(&self, prefix: &str) -> BoxStream<'static, Result<VersionMeta>> {
        let e = StoreError::new(
            ErrorKind::Unsupported,
            "list_versions",
            format!("{} has no object versions", self.describe()),
        );
        let _ = prefix;
        futures::StreamExt::boxed(futures::stream::once(async move { Err(e) }))
    }
    /// The file that holds `key`, for stores that are local directories (`None` elsewhere);
    /// `local_path("")` is the directory itself.
    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }
    /// Check that the bucket/root exists and is reachable with these credentials.
    async fn check(&self) -> Result<()>;
    async fn head(&self, key: &str) -> Result<ObjectMeta>;
    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult>;
    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult>;
    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>>;
    /// The length of part `part_number` of a multipart object as it was uploaded, and the
    /// object's part count (S3: HEAD with `partNumber`): the uploader's part size, which its
    /// multipart ETag depends on. Stores that keep no parts answer `Unsupported`.
    async fn head_part(&self, key: &str, part_number: u32) -> Result<(u64, u32)> {
        let _ = part_number;
        Err(StoreError::new(
            ErrorKind::Unsupported,
            "head_part",
            format!("{} keeps no parts", self.describe()),
        )
        .with_key(key))
    }

    /// Start a multipart upload whose parts follow `layout` (every part but the last has the
    /// size the layout gives its number).
    async fn create_multipart(
        &self,
        key: &str,
        opts: PutOptions,
        layout: PartLayout,
    ) -> Result<String>;
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc64nvme: Option<u64>,
    ) -> Result<PartInfo>;
    /// Upload a part from a stream of exactly `len` bytes. The store may write the chunks as
    /// they come (the local store writes them in place, holding no part in memory); the default
    /// collects them and calls [`Store::upload_part`]. A stream cannot be replayed, so layers do
    /// not retry this call: the caller's stream resumes its own source.
    async fn upload_part_stream(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        len: u64,
        body: ByteStream,
    ) -> Result<PartInfo> {
        let data = collect_body(body, len, key).await?;
        let crc = checksum::crc64nvme(&data);
        self.upload_part(key, upload_id, part_number, data, Some(crc))
            .await
    }
    /// Upload a part from a range of a local file. The default reads it into memory; S3 sends
    /// it from the file as it goes (and reads it again for a retry).
    async fn upload_part_file(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        file: FileRange,
        crc64nvme: Option<u64>,
    ) -> Result<PartInfo> {
        let k = key.to_string();
        let data = tokio::task::spawn_blocking(move || file.read())
            .await
            .map_err(|e| StoreError::new(ErrorKind::Other, "read", e.to_string()))?
            .map_err(|e| StoreError::io("read", &k, e))?;
        self.upload_part(key, upload_id, part_number, data, crc64nvme)
            .await
    }
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        src: &CopySource,
        range: Range<u64>,
    ) -> Result<PartInfo>;
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<PartInfo>,
        crc64nvme: Option<u64>,
        mode: PutMode,
    ) -> Result<PutResult>;
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()>;
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>>;

    /// Server-side copy into this store (source in the same copy domain).
    async fn copy(&self, src: &CopySource, dst_key: &str, opts: CopyOptions) -> Result<PutResult>;
    /// Delete keys; one result per key, in order. Deleting a missing key succeeds.
    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Result<()>>>;
    /// Delete given versions (and delete markers) of objects: `(key, version id)` pairs; one
    /// result per pair, in order. Deleting a version that is gone succeeds. Stores without
    /// versions answer `Unsupported`.
    async fn delete_versions(&self, ids: &[(String, String)]) -> Result<Vec<Result<()>>> {
        let _ = ids;
        Err(StoreError::new(
            ErrorKind::Unsupported,
            "delete_versions",
            format!("{} has no object versions", self.describe()),
        ))
    }
}

pub type DynStore = Arc<dyn Store>;

/// Conveniences over [`Store`].
#[async_trait]
pub trait StoreExt: Store {
    async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        self.get(key, GetOptions::default()).await?.bytes().await
    }
    async fn put_bytes(&self, key: &str, body: impl Into<Bytes> + Send) -> Result<PutResult> {
        self.put(key, body.into(), PutOptions::default()).await
    }
    async fn list_all(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        use futures::TryStreamExt;
        self.list(ListOptions::prefix(prefix)).try_collect().await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        let mut r = self.delete_many(&[key.to_string()]).await?;
        r.pop().unwrap_or(Ok(()))
    }
}

impl<T: Store + ?Sized> StoreExt for T {}

/// This process's run id (12 hex digits): names its local temp files and its rows in the state
/// database, so another process can tell its leftovers from the work of a run still going.
pub fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string())
}

/// The run id embedded in a local temp file's or upload's id (`<run>_<rest>`), if any.
pub fn run_of_upload_id(id: &str) -> Option<&str> {
    let (run, _) = id.split_once('_')?;
    (run.len() == 12 && run.bytes().all(|b| b.is_ascii_hexdigit())).then_some(run)
}

/// Format an mtime for [`MTIME_META`].
pub fn format_mtime(t: SystemTime) -> String {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        Err(e) => format!(
            "-{}.{:09}",
            e.duration().as_secs(),
            e.duration().subsec_nanos()
        ),
    }
}

/// Parse [`MTIME_META`] (`secs[.frac]`, possibly negative).
pub fn parse_mtime(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        nanos = format!("{digits:0<9}").parse().ok()?;
    }
    let d = std::time::Duration::new(secs, nanos);
    if neg {
        SystemTime::UNIX_EPOCH.checked_sub(d)
    } else {
        SystemTime::UNIX_EPOCH.checked_add(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn mtime_roundtrip() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(parse_mtime(&format_mtime(t)), Some(t));
        assert_eq!(
            parse_mtime("1700000000.5"),
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_mtime("x"), None);
    }
}
