//! A scriptable store for the layers' unit tests: an in-memory store plus a hook that decides,
//! per call, whether the call fails; an optional gate that holds calls until the test releases
//! them; and an in-flight gauge.
//!
//! Independent of the `fault` feature so the retry and limit tests run in every build.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use crate::memory::MemoryStore;
use crate::{
    Capabilities, CopyOptions, CopySource, ErrorKind, GetOptions, GetResult, HttpInfo, ListOptions,
    MultipartUpload, ObjectMeta, PartInfo, PartLayout, PutMode, PutOptions, PutResult, Result,
    Store, StoreError,
};

/// `(op, key, n)` → fail with this kind? `n` is the 1-based call number of `op`.
/// `list` is asked once when a listing opens (key = the `start_after`, or "") and then as
/// `list_item` before each entry (key = the entry's key, `n` = entries so far in this store).
pub(crate) type Hook = Arc<dyn Fn(&'static str, &str, u64) -> Option<ErrorKind> + Send + Sync>;

type Calls = Arc<Mutex<HashMap<&'static str, u64>>>;

fn bump(calls: &Calls, op: &'static str) -> u64 {
    let mut g = calls.lock().unwrap_or_else(|p| p.into_inner());
    let n = g.entry(op).or_default();
    *n += 1;
    *n
}

pub(crate) struct TestStore {
    pub mem: MemoryStore,
    hook: Hook,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    /// HTTP details attached to every failure of a request (not of a listing).
    http: Option<HttpInfo>,
    calls: Calls,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for TestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestStore").finish_non_exhaustive()
    }
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TestStore {
    pub fn new(
        hook: impl Fn(&'static str, &str, u64) -> Option<ErrorKind> + Send + Sync + 'static,
    ) -> Self {
        Self {
            mem: MemoryStore::new(),
            hook: Arc::new(hook),
            gate: None,
            http: None,
            calls: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        }
    }

    /// A store that never fails.
    pub fn ok() -> Self {
        Self::new(|_, _, _| None)
    }

    /// Every call waits for (and consumes) one permit of `gate` while counted in flight, so a
    /// test decides when calls finish.
    pub fn with_gate(mut self, gate: Arc<tokio::sync::Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Failures of requests carry `http` (e.g. a `Retry-After`).
    pub fn with_http(mut self, http: HttpInfo) -> Self {
        self.http = Some(http);
        self
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn calls(&self, op: &str) -> u64 {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(op)
            .copied()
            .unwrap_or(0)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn reset_max_in_flight(&self) {
        self.max_in_flight.store(0, Ordering::SeqCst);
    }

    fn next(&self, op: &'static str) -> u64 {
        bump(&self.calls, op)
    }

    async fn enter(&self, op: &'static str, key: &str) -> Result<InFlight> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone());
        if let Some(gate) = &self.gate {
            if let Ok(p) = gate.acquire().await {
                p.forget();
            }
        }
        let n = self.next(op);
        match (self.hook)(op, key, n) {
            Some(kind) => {
                let mut e = StoreError::new(kind, op, format!("test failure #{n}")).with_key(key);
                e.http = self.http.clone();
                Err(e)
            }
            None => Ok(guard),
        }
    }
}

#[async_trait]
impl Store for TestStore {
    fn describe(&self) -> String {
        "test://".into()
    }
    fn capabilities(&self) -> Capabilities {
        self.mem.capabilities()
    }

    fn list(&self, opts: ListOptions) -> BoxStream<'static, Result<ObjectMeta>> {
        let n = self.next("list");
        if let Some(kind) = (self.hook)("list", opts.start_after.as_deref().unwrap_or(""), n) {
            let e = StoreError::new(kind, "list", format!("test failure #{n} at open"));
            return futures::stream::iter([Err(e)]).boxed();
        }
        let (hook, calls) = (self.hook.clone(), self.calls.clone());
        self.mem
            .list(opts)
            .scan(false, move |stopped, e| {
                let out = match e {
                    _ if *stopped => None,
                    Ok(m) => {
                        let n = bump(&calls, "list_item");
                        match hook("list_item", &m.key, n) {
                            Some(kind) => {
                                *stopped = true;
                                Some(Err(StoreError::new(
                                    kind,
                                    "list",
                                    format!("test failure before {:?}", m.key),
                                )))
                            }
                            None => Some(Ok(m)),
                        }
                    }
                    Err(e) => Some(Err(e)),
                };
                futures::future::ready(out)
            })
            .boxed()
    }

    async fn check(&self) -> Result<()> {
        let _g = self.enter("check", "").await?;
        self.mem.check().await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let _g = self.enter("head", key).await?;
        self.mem.head(key).await
    }
    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        let _g = self.enter("get", key).await?;
        self.mem.get(key, opts).await
    }
    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult> {
        let _g = self.enter("put", key).await?;
        self.mem.put(key, body, opts).await
    }
    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>> {
        let _g = self.enter("get_tags", key).await?;
        self.mem.get_tags(key).await
    }
    async fn create_multipart(
        &self,
        key: &str,
        opts: PutOptions,
        layout: PartLayout,
    ) -> Result<String> {
        let _g = self.enter("create_multipart", key).await?;
        self.mem.create_multipart(key, opts, layout).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc: Option<u64>,
    ) -> Result<PartInfo> {
        let _g = self.enter("upload_part", key).await?;
        self.mem
            .upload_part(key, upload_id, part_number, body, crc)
            .await
    }
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        src: &CopySource,
        range: Range<u64>,
    ) -> Result<PartInfo> {
        let _g = self.enter("upload_part_copy", key).await?;
        self.mem
            .upload_part_copy(key, upload_id, part_number, src, range)
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
        let _g = self.enter("complete_multipart", key).await?;
        self.mem
            .complete_multipart(key, upload_id, parts, crc, mode)
            .await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let _g = self.enter("abort_multipart", key).await?;
        self.mem.abort_multipart(key, upload_id).await
    }
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        let _g = self.enter("list_multipart", prefix).await?;
        self.mem.list_multipart(prefix).await
    }
    async fn copy(&self, src: &CopySource, dst_key: &str, opts: CopyOptions) -> Result<PutResult> {
        let _g = self.enter("copy", dst_key).await?;
        self.mem.copy(src, dst_key, opts).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Result<()>>> {
        let _g = self
            .enter("delete_many", keys.first().map_or("", |k| k.as_str()))
            .await?;
        // Per-key hook: a key whose `delete_key` call fails gets an error in its slot.
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let n = self.next("delete_key");
            match (self.hook)("delete_key", k, n) {
                Some(kind) => out.push(Err(
                    StoreError::new(kind, "delete_many", "test failure").with_key(k)
                )),
                None => {
                    self.mem.delete_many(std::slice::from_ref(k)).await?;
                    out.push(Ok(()));
                }
            }
        }
        Ok(out)
    }
}
