//! In-memory store for fast unit and property tests of the engine, with test hooks:
//! per-operation counters and writes "by another client".

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use crate::checksum::{crc64nvme, crc64nvme_combine, md5_hex, multipart_etag};
use crate::{
    Capabilities, CopyOptions, CopySource, ErrorKind, GetOptions, GetResult, ListOptions,
    MultipartUpload, ObjectMeta, PartInfo, PartLayout, PutMode, PutOptions, PutResult, Result,
    Store, StoreError,
};

#[derive(Clone, Debug)]
struct MemObject {
    data: Bytes,
    meta: ObjectMeta,
    tags: Vec<(String, String)>,
}

#[derive(Debug)]
struct Upload {
    key: String,
    opts: PutOptions,
    parts: BTreeMap<u32, (Bytes, String)>,
    initiated: SystemTime,
}

#[derive(Debug, Default)]
struct Inner {
    objects: BTreeMap<String, MemObject>,
    uploads: HashMap<String, Upload>,
    next_id: u64,
    ops: HashMap<&'static str, u64>,
}

/// An in-memory bucket. Cloning shares the contents.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    name: String,
    inner: Arc<Mutex<Inner>>,
}

const LIST_PAGE: usize = 1000;

impl MemoryStore {
    pub fn new() -> Self {
        Self::named("mem")
    }

    /// A store whose bucket name is `name` (stores with the same name share a copy domain).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, op: &'static str) {
        *self.lock().ops.entry(op).or_default() += 1;
    }

    /// How many times `op` was called.
    pub fn op_count(&self, op: &str) -> u64 {
        self.lock().ops.get(op).copied().unwrap_or(0)
    }

    /// Total calls of all ops.
    pub fn total_ops(&self) -> u64 {
        self.lock().ops.values().sum()
    }

    pub fn reset_counts(&self) {
        self.lock().ops.clear();
    }

    /// Keys currently stored.
    pub fn keys(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    /// Number of multipart uploads not yet completed or aborted.
    pub fn pending_uploads(&self) -> usize {
        self.lock().uploads.len()
    }

    /// Write as "another client" would, with an explicit LastModified (test hook).
    pub fn insert_at(&self, key: &str, data: impl Into<Bytes>, last_modified: SystemTime) {
        let data = data.into();
        let mut g = self.lock();
        let meta = ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            last_modified: Some(last_modified),
            etag: Some(md5_hex(&data)),
            crc64nvme: Some(crc64nvme(&data)),
            metadata: Some(BTreeMap::new()),
            ..Default::default()
        };
        g.objects.insert(
            key.to_string(),
            MemObject {
                data,
                meta,
                tags: vec![],
            },
        );
    }

    fn check_mode(g: &Inner, key: &str, mode: &PutMode, op: &'static str) -> Result<()> {
        let cur = g.objects.get(key);
        match mode {
            PutMode::Overwrite => Ok(()),
            PutMode::Create if cur.is_some() => {
                Err(
                    StoreError::new(ErrorKind::AlreadyExists, op, "object already exists")
                        .with_key(key),
                )
            }
            PutMode::Create => Ok(()),
            PutMode::Update { etag } => match cur.and_then(|o| o.meta.etag.as_deref()) {
                Some(e) if e == etag => Ok(()),
                _ => Err(
                    StoreError::new(ErrorKind::PreconditionFailed, op, "ETag does not match")
                        .with_key(key),
                ),
            },
        }
    }

    fn commit(g: &mut Inner, key: &str, data: Bytes, etag: String, opts: &PutOptions) -> PutResult {
        let crc = crc64nvme(&data);
        let mut metadata = opts.metadata.clone();
        if let Some(t) = opts.mtime {
            metadata.insert(crate::MTIME_META.to_string(), crate::format_mtime(t));
        }
        g.next_id += 1;
        let version = g.next_id.to_string();
        let meta = ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            last_modified: Some(SystemTime::now()),
            mtime: opts.mtime,
            etag: Some(etag.clone()),
            crc64nvme: Some(crc),
            storage_class: opts.storage_class.clone(),
            version_id: Some(version.clone()),
            content_type: opts.content_type.clone(),
            metadata: Some(metadata),
            inode: None,
            ctime: None,
            encryption: None,
        };
        g.objects.insert(
            key.to_string(),
            MemObject {
                data,
                meta,
                tags: opts.tags.clone(),
            },
        );
        PutResult {
            etag: Some(etag),
            version_id: Some(version),
            crc64nvme: Some(crc),
        }
    }

    fn not_found(op: &'static str, key: &str) -> StoreError {
        StoreError::new(ErrorKind::NotFound, op, "no such key").with_key(key)
    }

    fn check_crc(op: &'static str, key: &str, data: &[u8], want: Option<u64>) -> Result<()> {
        match want {
            Some(w) if crc64nvme(data) != w => {
                Err(
                    StoreError::new(ErrorKind::Corrupt, op, "CRC64NVME does not match the body")
                        .with_key(key),
                )
            }
            _ => Ok(()),
        }
    }
}

fn listing_meta(m: &ObjectMeta) -> ObjectMeta {
    // Listings carry what S3's ListObjectsV2 carries: no user metadata, no checksum value.
    ObjectMeta {
        metadata: None,
        mtime: None,
        crc64nvme: None,
        content_type: None,
        ..m.clone()
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }

    fn bucket(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_writes: true,
            copy_domain: Some(format!("memory:{:p}", Arc::as_ptr(&self.inner))),
            upload_part_copy: true,
            tags: true,
            versions: false,
            crc64nvme: true,
            md5_etags: true,
            max_single_put: 5 * 1024 * 1024 * 1024,
            local: false,
        }
    }

    fn list(&self, opts: ListOptions) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count("list");
        let this = self.clone();
        // Paginated like S3: each page is a fresh look at the map after the last key.
        stream::unfold(Some(opts.start_after.unwrap_or_default()), move |after| {
            let this = this.clone();
            let prefix = opts.prefix.clone();
            async move {
                let after = after?;
                let page: Vec<ObjectMeta> = {
                    let g = this.lock();
                    let start = std::cmp::max(prefix.clone(), after.clone());
                    g.objects
                        .range(start..)
                        .filter(|(k, _)| after.is_empty() || k.as_str() > after.as_str())
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .take(LIST_PAGE)
                        .map(|(_, o)| listing_meta(&o.meta))
                        .collect()
                };
                if page.is_empty() {
                    return None;
                }
                let next = (page.len() == LIST_PAGE).then(|| page[page.len() - 1].key.clone());
                Some((stream::iter(page.into_iter().map(Ok)), next))
            }
        })
        .flatten()
        .boxed()
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.count("head");
        self.lock()
            .objects
            .get(key)
            .map(|o| o.meta.clone())
            .ok_or_else(|| Self::not_found("head", key))
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.count("get");
        let o = self
            .lock()
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| Self::not_found("get", key))?;
        if let Some(want) = &opts.if_match {
            if o.meta.etag.as_deref() != Some(want.as_str()) {
                return Err(StoreError::new(
                    ErrorKind::PreconditionFailed,
                    "get",
                    "ETag does not match",
                )
                .with_key(key));
            }
        }
        let size = o.data.len() as u64;
        let range = crate::covered_range(opts.range, size)
            .map_err(|m| StoreError::new(ErrorKind::InvalidInput, "get", m).with_key(key))?;
        let body = o.data.slice(range.start as usize..range.end as usize);
        Ok(GetResult {
            meta: o.meta,
            range,
            body: stream::iter([Ok(body)]).boxed(),
        })
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.count("put");
        Self::check_crc("put", key, &body, opts.crc64nvme)?;
        let mut g = self.lock();
        Self::check_mode(&g, key, &opts.mode, "put")?;
        let etag = md5_hex(&body);
        Ok(Self::commit(&mut g, key, body, etag, &opts))
    }

    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>> {
        self.count("get_tags");
        self.lock()
            .objects
            .get(key)
            .map(|o| o.tags.clone())
            .ok_or_else(|| Self::not_found("get_tags", key))
    }

    async fn create_multipart(
        &self,
        key: &str,
        opts: PutOptions,
        _layout: PartLayout,
    ) -> Result<String> {
        self.count("create_multipart");
        let mut g = self.lock();
        g.next_id += 1;
        let id = format!("upload-{}", g.next_id);
        g.uploads.insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                opts,
                parts: BTreeMap::new(),
                initiated: SystemTime::now(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc: Option<u64>,
    ) -> Result<PartInfo> {
        self.count("upload_part");
        Self::check_crc("upload_part", key, &body, crc)?;
        let mut g = self.lock();
        let up = g
            .uploads
            .get_mut(upload_id)
            .ok_or_else(|| Self::not_found("upload_part", key))?;
        let etag = md5_hex(&body);
        let part_crc = crc64nvme(&body);
        up.parts.insert(part_number, (body, etag.clone()));
        Ok(PartInfo {
            part_number,
            etag,
            crc64nvme: Some(part_crc),
        })
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        src: &CopySource,
        range: Range<u64>,
    ) -> Result<PartInfo> {
        self.count("upload_part_copy");
        let data = {
            let g = self.lock();
            let o = g
                .objects
                .get(&src.key)
                .ok_or_else(|| Self::not_found("upload_part_copy", &src.key))?;
            if let Some(want) = &src.if_match {
                if o.meta.etag.as_deref() != Some(want.as_str()) {
                    return Err(StoreError::new(
                        ErrorKind::PreconditionFailed,
                        "upload_part_copy",
                        "source changed",
                    )
                    .with_key(&src.key));
                }
            }
            if range.end > o.data.len() as u64 || range.start > range.end {
                return Err(StoreError::new(
                    ErrorKind::InvalidInput,
                    "upload_part_copy",
                    "range outside source",
                )
                .with_key(&src.key));
            }
            o.data.slice(range.start as usize..range.end as usize)
        };
        self.upload_part(key, upload_id, part_number, data, None)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<PartInfo>,
        crc: Option<u64>,
        mode: PutMode,
    ) -> Result<PutResult> {
        self.count("complete_multipart");
        let mut g = self.lock();
        let up = g
            .uploads
            .get(upload_id)
            .ok_or_else(|| Self::not_found("complete_multipart", key))?;
        let mut data = Vec::new();
        let mut md5s = Vec::new();
        let mut whole_crc = 0u64;
        for p in &parts {
            let (b, e) = up.parts.get(&p.part_number).ok_or_else(|| {
                StoreError::new(
                    ErrorKind::InvalidInput,
                    "complete_multipart",
                    format!("part {} missing", p.part_number),
                )
                .with_key(key)
            })?;
            if *e != p.etag {
                return Err(StoreError::new(
                    ErrorKind::InvalidInput,
                    "complete_multipart",
                    "part ETag mismatch",
                )
                .with_key(key));
            }
            whole_crc = crc64nvme_combine(whole_crc, crc64nvme(b), b.len() as u64);
            data.extend_from_slice(b);
            md5s.push(e.clone());
        }
        if let Some(w) = crc {
            if w != whole_crc {
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    "complete_multipart",
                    "full-object CRC64NVME mismatch",
                )
                .with_key(key));
            }
        }
        let mut opts = up.opts.clone();
        opts.mode = mode;
        if up.key != key {
            return Err(StoreError::new(
                ErrorKind::InvalidInput,
                "complete_multipart",
                "upload is for another key",
            )
            .with_key(key));
        }
        Self::check_mode(&g, key, &opts.mode, "complete_multipart")?;
        g.uploads.remove(upload_id);
        Ok(Self::commit(
            &mut g,
            key,
            data.into(),
            multipart_etag(&md5s),
            &opts,
        ))
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<()> {
        self.count("abort_multipart");
        self.lock().uploads.remove(upload_id);
        Ok(())
    }

    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        self.count("list_multipart");
        Ok(self
            .lock()
            .uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| MultipartUpload {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: Some(u.initiated),
            })
            .collect())
    }

    async fn copy(&self, src: &CopySource, dst_key: &str, opts: CopyOptions) -> Result<PutResult> {
        self.count("copy");
        let mut g = self.lock();
        let o = g
            .objects
            .get(&src.key)
            .cloned()
            .ok_or_else(|| Self::not_found("copy", &src.key))?;
        if let Some(want) = &src.if_match {
            if o.meta.etag.as_deref() != Some(want.as_str()) {
                return Err(StoreError::new(
                    ErrorKind::PreconditionFailed,
                    "copy",
                    "source changed",
                )
                .with_key(&src.key));
            }
        }
        let mut put = opts.replace.clone().unwrap_or_else(|| {
            let mut meta = o.meta.metadata.clone().unwrap_or_default();
            meta.remove(crate::MTIME_META);
            PutOptions::new()
                .metadata(meta)
                .tags(o.tags.clone())
                .content_type(o.meta.content_type.clone())
                .mtime(o.meta.mtime)
                .storage_class(o.meta.storage_class.clone())
        });
        if opts.storage_class.is_some() {
            put.storage_class = opts.storage_class.clone();
        }
        let etag = o.meta.etag.clone().unwrap_or_else(|| md5_hex(&o.data));
        Ok(Self::commit(&mut g, dst_key, o.data, etag, &put))
    }

    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Result<()>>> {
        self.count("delete_many");
        let mut g = self.lock();
        Ok(keys
            .iter()
            .map(|k| {
                g.objects.remove(k);
                Ok(())
            })
            .collect())
    }
}
