//! Adaptive concurrency (AIMD) over every operation of a store.
//!
//! Each request holds a permit while it runs; the number of permits — the limit — moves between
//! `min` and `max`:
//!
//! * **Multiplicative decrease.** A `Throttled` answer halves the limit, once per "generation":
//!   a cut starts a new generation, and only a request that *started* in the current generation
//!   can cut again. A burst of 64 concurrent 503s (all started before the first cut) therefore
//!   halves once, not 64 times; a request started after the cut that is still throttled shows
//!   the new limit is still too high and halves it again. No clock is involved.
//! * **Additive increase.** After `grow_after` consecutive answered requests the limit grows by
//!   one. Transient failures (resets, 500s) neither grow nor cut; they only break the streak.
//!   Other errors (404, 412, ...) are answers: the server was not overloaded.
//!
//! Lowering the limit below the number of requests in flight does not cancel any: the surplus
//! is "debt", paid by not returning permits as those requests finish, so no new request starts
//! until fewer than the new limit are running. Concurrency never exceeds the limit in force when
//! a request starts.
//!
//! A `get` holds its permit until the body stream ends or is dropped (the connection is busy
//! until then). A `list` holds one permit for the life of its stream.

use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    ByteStream, Capabilities, CopyOptions, CopySource, DynStore, ErrorKind, FileRange, GetOptions,
    GetResult, ListOptions, MultipartUpload, ObjectMeta, PartInfo, PartLayout, PutMode, PutOptions,
    PutResult, Result, Store,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitConfig {
    /// The limit never drops below this.
    pub min: usize,
    /// The limit never grows above this.
    pub max: usize,
    /// The limit to start with.
    pub initial: usize,
    /// Consecutive answered requests needed to grow the limit by one.
    pub grow_after: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            min: 4,
            max: 256,
            initial: 64,
            grow_after: 32,
        }
    }
}

#[derive(Debug)]
struct State {
    limit: usize,
    /// Permits to withhold as requests finish (the limit was cut below the in-flight count).
    debt: usize,
    generation: u64,
    streak: u32,
}

#[derive(Debug)]
struct Shared {
    cfg: LimitConfig,
    sem: Arc<Semaphore>,
    state: Mutex<State>,
}

/// How an answer moves the limit.
enum Outcome {
    Answered,
    Throttled,
    Neutral,
}

fn outcome<T>(r: &Result<T>) -> Outcome {
    match r {
        Ok(_) => Outcome::Answered,
        Err(e) => error_outcome(e.kind),
    }
}

fn error_outcome(kind: ErrorKind) -> Outcome {
    match kind {
        ErrorKind::Throttled => Outcome::Throttled,
        ErrorKind::Transient | ErrorKind::Corrupt => Outcome::Neutral,
        _ => Outcome::Answered,
    }
}

/// Reads a [`LimitStore`]'s limit (see [`LimitStore::gauge`]) while the store is open.
#[derive(Clone)]
pub struct LimitGauge(std::sync::Weak<Shared>);

impl LimitGauge {
    /// The limit in force now; `None` once the store is gone.
    pub fn limit(&self) -> Option<usize> {
        self.0.upgrade().map(|s| s.lock().limit)
    }
}

impl std::fmt::Debug for LimitGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LimitGauge").field(&self.limit()).finish()
    }
}

/// A running request's share of the limit.
struct Permit {
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
    generation: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(p) = self.permit.take() else { return };
        let mut st = self.shared.lock();
        if st.debt > 0 {
            st.debt -= 1;
            p.forget();
        } else {
            drop(p);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn acquire(self: &Arc<Self>) -> Permit {
        // The semaphore is never closed, so acquiring fails only in theory; then run unlimited.
        let permit = self.sem.clone().acquire_owned().await.ok();
        let generation = self.lock().generation;
        Permit {
            shared: self.clone(),
            permit,
            generation,
        }
    }

    fn record(&self, generation: u64, outcome: Outcome) {
        let mut st = self.lock();
        match outcome {
            Outcome::Neutral => st.streak = 0,
            Outcome::Throttled => {
                st.streak = 0;
                if generation == st.generation && st.limit > self.cfg.min {
                    let new = (st.limit / 2).max(self.cfg.min);
                    let cut = st.limit - new;
                    st.limit = new;
                    st.debt += cut;
                    st.generation += 1;
                    // Withhold idle permits now; the rest as running requests finish.
                    while st.debt > 0 {
                        match self.sem.try_acquire() {
                            Ok(p) => {
                                p.forget();
                                st.debt -= 1;
                            }
                            Err(_) => break,
                        }
                    }
                    tracing::debug!(limit = new, "throttled: concurrency limit cut");
                }
            }
            Outcome::Answered => {
                st.streak += 1;
                if st.streak >= self.cfg.grow_after && st.limit < self.cfg.max {
                    st.streak = 0;
                    st.limit += 1;
                    if st.debt > 0 {
                        st.debt -= 1;
                    } else {
                        self.sem.add_permits(1);
                    }
                    tracing::trace!(limit = st.limit, "concurrency limit raised");
                }
            }
        }
    }
}

/// Spaces requests out to at most a given rate (`--max-rps`); one pacer can be shared by every
/// store of a process, so the rate holds for the whole job.
#[derive(Debug)]
pub struct Pacer {
    interval: std::time::Duration,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    /// At most `rps` requests per second (`rps` > 0).
    pub fn new(rps: f64) -> Arc<Self> {
        Arc::new(Self {
            interval: std::time::Duration::from_secs_f64(1.0 / rps.max(1e-3)),
            next: Mutex::new(tokio::time::Instant::now()),
        })
    }

    /// Wait for this request's slot.
    pub async fn pace(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Limits concurrent requests to the store it wraps, adapting to throttling; see the module docs.
#[derive(Debug)]
pub struct LimitStore {
    inner: DynStore,
    shared: Arc<Shared>,
    pacer: Option<Arc<Pacer>>,
}

impl LimitStore {
    /// Wrap `inner` with the default limits (4..=256, starting at 64).
    pub fn new(inner: DynStore) -> Self {
        Self::with_config(inner, LimitConfig::default())
    }

    /// Wrap `inner`; `min` is raised to 1 and `initial` clamped into `min..=max`.
    pub fn with_config(inner: DynStore, cfg: LimitConfig) -> Self {
        let min = cfg.min.max(1);
        let cfg = LimitConfig {
            min,
            max: cfg.max.max(min),
            grow_after: cfg.grow_after.max(1),
            ..cfg
        };
        let initial = cfg.initial.clamp(cfg.min, cfg.max);
        let state = State {
            limit: initial,
            debt: 0,
            generation: 0,
            streak: 0,
        };
        let shared = Shared {
            cfg,
            sem: Arc::new(Semaphore::new(initial)),
            state: Mutex::new(state),
        };
        Self {
            inner,
            shared: Arc::new(shared),
            pacer: None,
        }
    }

    /// Also keep to `pacer`'s rate (requests are spaced out after they got a permit).
    pub fn with_pacer(mut self, pacer: Option<Arc<Pacer>>) -> Self {
        self.pacer = pacer;
        self
    }

    /// The limit in force now.
    pub fn current_limit(&self) -> usize {
        self.shared.lock().limit
    }

    /// A handle that reads the limit later (for metrics), without keeping the store open.
    pub fn gauge(&self) -> LimitGauge {
        LimitGauge(Arc::downgrade(&self.shared))
    }

    pub fn config(&self) -> LimitConfig {
        self.shared.cfg
    }

    async fn run<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let permit = self.shared.acquire().await;
        if let Some(p) = &self.pacer {
            p.pace().await;
        }
        let r = fut.await;
        self.shared.record(permit.generation, outcome(&r));
        r
    }
}

/// A GET body that keeps its request's permit until it ends or is dropped.
struct HeldBody {
    body: ByteStream,
    permit: Option<Permit>,
}

impl Stream for HeldBody {
    type Item = Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = self.body.poll_next_unpin(cx);
        if let Poll::Ready(None) = r {
            self.permit = None;
        }
        r
    }
}

/// A listing that holds one permit while it runs; a throttled page cuts the limit.
struct HeldList {
    list: BoxStream<'static, Result<ObjectMeta>>,
    permit: Option<Permit>,
}

impl Stream for HeldList {
    type Item = Result<ObjectMeta>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = self.list.poll_next_unpin(cx);
        match &r {
            Poll::Ready(None) => {
                if let Some(p) = self.permit.take() {
                    p.shared.record(p.generation, Outcome::Answered);
                }
            }
            Poll::Ready(Some(Err(e))) if e.key.is_none() => {
                if let Some(p) = &self.permit {
                    p.shared.record(p.generation, error_outcome(e.kind));
                }
            }
            _ => {}
        }
        r
    }
}

#[async_trait]
impl Store for LimitStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn state_id(&self) -> String {
        self.inner.state_id()
    }
    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.local_path(key)
    }
    fn bucket(&self) -> Option<&str> {
        self.inner.bucket()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn list_versions(&self, prefix: &str) -> BoxStream<'static, Result<crate::VersionMeta>> {
        self.inner.list_versions(prefix)
    }
    fn list(&self, opts: ListOptions) -> BoxStream<'static, Result<ObjectMeta>> {
        let (shared, inner) = (self.shared.clone(), self.inner.clone());
        futures::stream::once(async move {
            let permit = shared.acquire().await;
            HeldList {
                list: inner.list(opts),
                permit: Some(permit),
            }
        })
        .flatten()
        .boxed()
    }

    async fn check(&self) -> Result<()> {
        self.run(self.inner.check()).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.run(self.inner.head(key)).await
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        let permit = self.shared.acquire().await;
        if let Some(p) = &self.pacer {
            p.pace().await;
        }
        let r = self.inner.get(key, opts).await;
        self.shared.record(permit.generation, outcome(&r));
        let mut g = r?;
        g.body = HeldBody {
            body: g.body,
            permit: Some(permit),
        }
        .boxed();
        Ok(g)
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.run(self.inner.put(key, body, opts)).await
    }
    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>> {
        self.run(self.inner.get_tags(key)).await
    }
    async fn head_part(&self, key: &str, part_number: u32) -> Result<(u64, u32)> {
        self.run(self.inner.head_part(key, part_number)).await
    }
    async fn create_multipart(
        &self,
        key: &str,
        opts: PutOptions,
        layout: PartLayout,
    ) -> Result<String> {
        self.run(self.inner.create_multipart(key, opts, layout))
            .await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc64nvme: Option<u64>,
    ) -> Result<PartInfo> {
        self.run(
            self.inner
                .upload_part(key, upload_id, part_number, body, crc64nvme),
        )
        .await
    }
    async fn upload_part_stream(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        len: u64,
        body: ByteStream,
    ) -> Result<PartInfo> {
        self.run(
            self.inner
                .upload_part_stream(key, upload_id, part_number, len, body),
        )
        .await
    }
    async fn upload_part_file(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        file: FileRange,
        crc64nvme: Option<u64>,
    ) -> Result<PartInfo> {
        self.run(
            self.inner
                .upload_part_file(key, upload_id, part_number, file, crc64nvme),
        )
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
        self.run(
            self.inner
                .upload_part_copy(key, upload_id, part_number, src, range),
        )
        .await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<PartInfo>,
        crc64nvme: Option<u64>,
        mode: PutMode,
    ) -> Result<PutResult> {
        self.run(
            self.inner
                .complete_multipart(key, upload_id, parts, crc64nvme, mode),
        )
        .await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.run(self.inner.abort_multipart(key, upload_id)).await
    }
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        self.run(self.inner.list_multipart(prefix)).await
    }
    async fn copy(&self, src: &CopySource, dst_key: &str, opts: CopyOptions) -> Result<PutResult> {
        self.run(self.inner.copy(src, dst_key, opts)).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Result<()>>> {
        self.run(self.inner.delete_many(keys)).await
    }
    async fn delete_versions(&self, ids: &[(String, String)]) -> Result<Vec<Result<()>>> {
        self.run(self.inner.delete_versions(ids)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::testutil::TestStore;
    use crate::StoreExt;
    use futures::FutureExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn cfg(min: usize, max: usize, initial: usize, grow_after: u32) -> LimitConfig {
        LimitConfig {
            min,
            max,
            initial,
            grow_after,
        }
    }

    /// Spawn `n` puts through `s` and wait until `want` of them are inside `t`.
    async fn pile_up(
        s: &Arc<LimitStore>,
        t: &TestStore,
        n: usize,
        want: usize,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let tasks = (0..n)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.put_bytes(&format!("k{i}"), "x").await;
                })
            })
            .collect();
        while t.in_flight() < want {
            tokio::task::yield_now().await;
        }
        // Give every other task a chance to (wrongly) get in too.
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
        tasks
    }

    #[tokio::test]
    async fn concurrency_never_exceeds_the_limit() {
        let gate = Arc::new(Semaphore::new(0));
        let t = Arc::new(TestStore::ok().with_gate(gate.clone()));
        let s = Arc::new(LimitStore::with_config(t.clone(), cfg(1, 8, 8, 1000)));
        let tasks = pile_up(&s, &t, 100, 8).await;
        assert_eq!(t.in_flight(), 8);
        gate.add_permits(100);
        for h in tasks {
            h.await.unwrap();
        }
        assert_eq!(t.max_in_flight(), 8);
        assert_eq!(t.calls("put"), 100);
    }

    #[tokio::test]
    async fn throttling_halves_the_limit_down_to_min() {
        let t = Arc::new(TestStore::new(|op, _, _| {
            (op == "put").then_some(ErrorKind::Throttled)
        }));
        let s = LimitStore::with_config(t.clone(), cfg(4, 256, 64, 32));
        let mut seen = vec![];
        for _ in 0..6 {
            assert_eq!(
                s.put_bytes("k", "x").await.unwrap_err().kind,
                ErrorKind::Throttled
            );
            seen.push(s.current_limit());
        }
        assert_eq!(seen, [32, 16, 8, 4, 4, 4]);
    }

    #[tokio::test]
    async fn a_burst_of_concurrent_throttles_halves_once() {
        let gate = Arc::new(Semaphore::new(0));
        let t = Arc::new(
            TestStore::new(|op, _, _| (op == "put").then_some(ErrorKind::Throttled))
                .with_gate(gate.clone()),
        );
        let s = Arc::new(LimitStore::with_config(t.clone(), cfg(4, 256, 64, 32)));
        let tasks = pile_up(&s, &t, 64, 64).await;
        gate.add_permits(64);
        for h in tasks {
            h.await.unwrap();
        }
        assert_eq!(t.calls("put"), 64);
        assert_eq!(s.current_limit(), 32);
        // A request started after the cut and still throttled cuts again.
        gate.add_permits(1);
        s.put_bytes("k", "x").await.unwrap_err();
        assert_eq!(s.current_limit(), 16);
    }

    #[tokio::test]
    async fn a_cut_below_the_in_flight_count_holds_new_requests_back() {
        let gate = Arc::new(Semaphore::new(0));
        let throttle = Arc::new(AtomicBool::new(true));
        let th = throttle.clone();
        let t = Arc::new(
            TestStore::new(move |op, _, _| {
                (op == "put" && th.load(Ordering::SeqCst)).then_some(ErrorKind::Throttled)
            })
            .with_gate(gate.clone()),
        );
        let s = Arc::new(LimitStore::with_config(t.clone(), cfg(2, 8, 8, 1000)));
        let first = pile_up(&s, &t, 8, 8).await;
        // One of the eight is throttled: limit 8 -> 4 while seven are still running.
        gate.add_permits(1);
        while s.current_limit() != 4 {
            tokio::task::yield_now().await;
        }
        throttle.store(false, Ordering::SeqCst);
        t.reset_max_in_flight();
        let second = pile_up(&s, &t, 20, 7).await;
        assert_eq!(
            t.in_flight(),
            7,
            "no new request starts while over the new limit"
        );
        gate.add_permits(1000);
        for h in first.into_iter().chain(second) {
            h.await.unwrap();
        }
        // Every request that started after the cut found at most 4 running (itself included).
        assert!(t.max_in_flight() <= 4, "{}", t.max_in_flight());
        assert_eq!(t.calls("put"), 28);
        assert_eq!(s.current_limit(), 4);
    }

    #[tokio::test]
    async fn successes_grow_the_limit_back_up_to_max() {
        let failing = Arc::new(AtomicBool::new(true));
        let f = failing.clone();
        let t = Arc::new(TestStore::new(move |op, _, _| {
            (op == "head" && f.load(Ordering::SeqCst)).then_some(ErrorKind::Throttled)
        }));
        t.mem.put_bytes("k", "x").await.unwrap();
        let s = LimitStore::with_config(t.clone(), cfg(4, 40, 32, 4));
        s.head("k").await.unwrap_err();
        assert_eq!(s.current_limit(), 16);
        failing.store(false, Ordering::SeqCst);
        for _ in 0..40 {
            s.head("k").await.unwrap();
        }
        assert_eq!(s.current_limit(), 26);
        // 404s are answers too; transient errors are not.
        for _ in 0..8 {
            s.head("missing").await.unwrap_err();
        }
        assert_eq!(s.current_limit(), 28);
        for _ in 0..200 {
            s.head("k").await.unwrap();
        }
        assert_eq!(s.current_limit(), 40, "capped at max");
    }

    #[tokio::test]
    async fn transient_errors_break_the_streak_without_cutting() {
        let t = Arc::new(TestStore::new(|op, _, n| {
            (op == "head" && n % 3 == 0).then_some(ErrorKind::Transient)
        }));
        t.mem.put_bytes("k", "x").await.unwrap();
        let s = LimitStore::with_config(t.clone(), cfg(4, 64, 16, 3));
        for _ in 0..30 {
            let _ = s.head("k").await;
        }
        assert_eq!(s.current_limit(), 16);
    }

    #[tokio::test]
    async fn a_get_holds_its_permit_until_the_body_ends_or_drops() {
        let t = Arc::new(TestStore::ok());
        t.mem.put_bytes("k", "hello").await.unwrap();
        let s = LimitStore::with_config(t.clone(), cfg(1, 1, 1, 1));

        let g = s.get("k", GetOptions::new()).await.unwrap();
        assert!(
            s.head("k").now_or_never().is_none(),
            "the body still holds the only permit"
        );
        drop(g);
        assert!(s.head("k").now_or_never().is_some());

        let g = s.get("k", GetOptions::new()).await.unwrap();
        let mut body = g.body;
        assert_eq!(body.next().await.unwrap().unwrap(), Bytes::from("hello"));
        assert!(body.next().await.is_none());
        assert!(
            s.head("k").now_or_never().is_some(),
            "released at the end of the stream"
        );
    }

    #[tokio::test]
    async fn a_listing_holds_one_permit_and_a_throttled_listing_cuts() {
        let t = Arc::new(TestStore::new(|op, _, n| {
            (op == "list" && n == 2).then_some(ErrorKind::Throttled)
        }));
        t.mem.put_bytes("a", "x").await.unwrap();
        let s = LimitStore::with_config(t.clone(), cfg(1, 8, 2, 1000));
        let mut l = s.list(ListOptions::prefix(""));
        assert_eq!(l.next().await.unwrap().unwrap().key, "a");
        // One permit of two is held by the open listing.
        let g = s.get("a", GetOptions::new()).await.unwrap();
        assert!(s.head("a").now_or_never().is_none());
        drop(g);
        assert!(l.next().await.is_none());
        drop(l);
        let e: Vec<_> = s.list(ListOptions::prefix("")).collect().await;
        assert_eq!(e[0].as_ref().unwrap_err().kind, ErrorKind::Throttled);
        assert_eq!(s.current_limit(), 1);
    }

    /// `--max-rps`: requests through stores sharing one pacer are spaced out to the rate (in
    /// the runtime's virtual time: deterministic), however many run at once.
    #[tokio::test(start_paused = true)]
    async fn a_shared_pacer_holds_the_rate_across_stores() {
        let pacer = Pacer::new(10.0);
        let a = LimitStore::new(Arc::new(crate::memory::MemoryStore::new()))
            .with_pacer(Some(pacer.clone()));
        let b =
            LimitStore::new(Arc::new(crate::memory::MemoryStore::new())).with_pacer(Some(pacer));
        let t0 = tokio::time::Instant::now();
        let calls = (0..10).map(|i| {
            let s = if i % 2 == 0 { &a } else { &b };
            async move {
                s.put(
                    &format!("k{i}"),
                    Bytes::from_static(b"x"),
                    PutOptions::new(),
                )
                .await
            }
        });
        futures::future::try_join_all(calls).await.unwrap();
        // 10 requests at 10/s: the first at once, the last 0.9 s later.
        let took = t0.elapsed();
        assert!(took >= std::time::Duration::from_millis(900), "{took:?}");
        assert!(took < std::time::Duration::from_millis(1000), "{took:?}");
        // Without a pacer: no waiting at all.
        let c = LimitStore::new(Arc::new(crate::memory::MemoryStore::new()));
        let t1 = tokio::time::Instant::now();
        for i in 0..10 {
            c.put(
                &format!("k{i}"),
                Bytes::from_static(b"x"),
                PutOptions::new(),
            )
            .await
            .unwrap();
        }
        assert_eq!(t1.elapsed(), std::time::Duration::ZERO);
    }
}
