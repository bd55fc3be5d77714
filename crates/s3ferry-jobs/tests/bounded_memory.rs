//! F50: planning a sync over a very long listing keeps memory flat in the number of keys. The
//! source lists N synthetic keys that exist nowhere (so nothing but the engine holds them);
//! a counting allocator records the peak of live heap bytes during a `--dry-run` sync into an
//! empty store. Holding the listing (key and metadata per entry, ~250 bytes) would take N ×
//! 250 bytes; the bound is a fraction of that.

// A global allocator is unsafe to implement; this one only counts and defers to the system's.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use s3ferry_engine::events::NullReporter;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_engine::walk::Side;
use s3ferry_jobs::sync::{self, SyncOptions};
use s3ferry_store::memory::MemoryStore;
use s3ferry_store::{
    Capabilities, CopyOptions, CopySource, GetOptions, GetResult, ListOptions, MultipartUpload,
    ObjectMeta, PartInfo, PartLayout, PutMode, PutOptions, PutResult, Result, Store,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A source whose listing is `n` keys made up as they are listed, in order; every other call
/// goes to an empty memory store.
#[derive(Debug)]
struct Synthetic {
    n: usize,
    inner: MemoryStore,
}

#[async_trait]
impl Store for Synthetic {
    fn describe(&self) -> String {
        format!("{} synthetic keys", self.n)
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn list(&self, opts: ListOptions) -> BoxStream<'static, Result<ObjectMeta>> {
        let after = opts.start_after.unwrap_or_default();
        stream::iter(0..self.n)
            .map(|i| ObjectMeta {
                key: format!("dir{:04}/file-{i:09}.dat", i / 1000),
                size: 1000 + i as u64 % 7,
                etag: Some(format!("{:032x}", i)),
                ..Default::default()
            })
            .filter(move |m| std::future::ready(m.key.as_str() > after.as_str()))
            .map(Ok)
            .boxed()
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.inner.get(key, opts).await
    }
    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.inner.put(key, body, opts).await
    }
    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>> {
        self.inner.get_tags(key).await
    }
    async fn create_multipart(&self, k: &str, o: PutOptions, l: PartLayout) -> Result<String> {
        self.inner.create_multipart(k, o, l).await
    }
    async fn upload_part(
        &self,
        k: &str,
        id: &str,
        n: u32,
        b: Bytes,
        c: Option<u64>,
    ) -> Result<PartInfo> {
        self.inner.upload_part(k, id, n, b, c).await
    }
    async fn upload_part_copy(
        &self,
        k: &str,
        id: &str,
        n: u32,
        s: &CopySource,
        r: Range<u64>,
    ) -> Result<PartInfo> {
        self.inner.upload_part_copy(k, id, n, s, r).await
    }
    async fn complete_multipart(
        &self,
        k: &str,
        id: &str,
        p: Vec<PartInfo>,
        c: Option<u64>,
        m: PutMode,
    ) -> Result<PutResult> {
        self.inner.complete_multipart(k, id, p, c, m).await
    }
    async fn abort_multipart(&self, k: &str, id: &str) -> Result<()> {
        self.inner.abort_multipart(k, id).await
    }
    async fn list_multipart(&self, p: &str) -> Result<Vec<MultipartUpload>> {
        self.inner.list_multipart(p).await
    }
    async fn copy(&self, s: &CopySource, k: &str, o: CopyOptions) -> Result<PutResult> {
        self.inner.copy(s, k, o).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Result<()>>> {
        self.inner.delete_many(keys).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planning_a_long_listing_keeps_memory_flat() {
    const N: usize = 1_000_000;
    let src = Side::new(
        Arc::new(Synthetic {
            n: N,
            inner: MemoryStore::new(),
        }),
        "",
    );
    let dst = Side::new(Arc::new(MemoryStore::new()), "");
    let j = Arc::new(Journal::in_memory().unwrap());
    let mut o = SyncOptions::new(TransferConfig::new(64 << 20));
    o.dry_run = true;
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let s = sync::run(src, dst, o, j, Arc::new(NullReporter))
        .await
        .unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert_eq!(s.copied, N as u64, "every key planned as a copy");
    // Holding the listing would be about N × 250 bytes = 250 MB.
    assert!(
        peak < 16 << 20,
        "peak heap during planning: {} MiB for {N} keys",
        peak >> 20
    );
    // The counter counts: holding 32 MiB shows as 32 MiB more.
    let before = LIVE.load(Ordering::Relaxed);
    let held = std::hint::black_box(vec![1u8; 32 << 20]);
    let after = PEAK.load(Ordering::Relaxed);
    assert!(after >= before + held.len() - (1 << 20), "{before} {after}");
    drop(held);
}
