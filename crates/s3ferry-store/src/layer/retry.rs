//! Request-level retries: exponential backoff with full jitter, a shared retry budget, and
//! counters for the job summary.
//!
//! * **What is retried:** errors whose kind is [`retryable`](crate::ErrorKind::retryable)
//!   (throttled, transient, corrupt, conflict). A conditional put (`PutMode::Create`/`Update`)
//!   is not idempotent, so a `Transient` failure of one — which may be a lost response to a write
//!   that happened — is returned, not retried; rejections that prove nothing was written
//!   (throttled, conflict, corrupt) are still retried.
//! * **Backoff:** before retry `n` (0-based) wait a uniformly random time in
//!   `[0, min(max_delay, base_delay * 2^n)]` ("full jitter"). The RNG takes a seed for tests.
//! * **Budget:** one token bucket per [`RetryStore`], shaped like the AWS SDKs' standard retry
//!   mode (the transfer manager's requests go through it): each retry takes `retry_cost` tokens; a request that
//!   succeeds at its first attempt puts back `success_refund`, one that succeeds after retries
//!   puts back one `retry_cost`. With the bucket empty, errors are returned at once, so a
//!   persistent outage fails fast instead of multiplying the load by `max_attempts`.
//! * **`get`** retries the request only. Errors while reading the body stream are the engine's
//!   to resume with `Range` + `If-Match`: this layer cannot know how far the caller got.
//! * **`list`** retries a failed page by listing again from `start_after` = the last key it
//!   yielded, so no key is missed or doubled. Errors carrying a key (one bad entry) pass through.
//! * **`delete_many`** retries only the keys whose per-key result is retryable.
//!
//! * **`Retry-After`:** when the failed answer carried one ([`HttpInfo::retry_after`], captured
//!   by the S3 backend from 503/429 and any other response), the wait before the next attempt is
//!   at least that long: `max(Retry-After, jittered backoff)`. A server that asks for more than
//!   [`RetryPolicy::max_retry_after`] is not retried by this layer (the error is returned, saying
//!   what the server asked for); the job's own retry pass or a rerun picks the object up later.
//!   S3 itself does not send `Retry-After` with SlowDown; S3-compatible servers and proxies do.
//!
//! [`HttpInfo::retry_after`]: crate::HttpInfo::retry_after
//!
//! Put it outside [`LimitStore`](super::LimitStore) so that every attempt takes its own
//! concurrency permit and a request sleeping in backoff holds none.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    ByteStream, Capabilities, CopyOptions, CopySource, DynStore, ErrorKind, FileRange, GetOptions,
    GetResult, ListOptions, MultipartUpload, ObjectMeta, PartInfo, PartLayout, PutMode, PutOptions,
    PutResult, Result, Store, StoreError,
};

/// The retry token bucket (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudget {
    /// Tokens in a full bucket; the bucket starts full.
    pub capacity: u32,
    /// Tokens one retry takes; with fewer left, no retry.
    pub retry_cost: u32,
    /// Tokens put back by a request that succeeds at its first attempt.
    pub success_refund: u32,
}

impl Default for RetryBudget {
    /// The AWS SDK standard-mode values: 500 tokens, 5 per retry, 1 back per clean success.
    fn default() -> Self {
        Self {
            capacity: 500,
            retry_cost: 5,
            success_refund: 1,
        }
    }
}

impl RetryBudget {
    /// A budget that never runs out (only `max_attempts` bounds retries).
    pub fn unlimited() -> Self {
        Self {
            capacity: u32::MAX,
            retry_cost: 0,
            success_refund: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (1 = never retry).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub budget: RetryBudget,
    /// The longest `Retry-After` this layer waits for; a longer one ends the retries.
    pub max_retry_after: Duration,
    /// Seed for the jitter RNG (`None` = from the OS). Tests pass one for repeatable delays.
    pub seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(20),
            budget: RetryBudget::default(),
            max_retry_after: Duration::from_secs(60),
            seed: None,
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the wait before retry `retry` (0 = the first retry).
    pub fn delay_cap(&self, retry: u32) -> Duration {
        let factor = 2u32.checked_pow(retry).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// A full-jitter wait before retry `retry`: uniform in `[0, delay_cap(retry)]`.
    pub fn backoff(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let cap = u64::try_from(self.delay_cap(retry).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=cap))
    }
}

/// Counters the caller reads for the job summary. Share one between several stores with
/// [`RetryStore::with_stats`].
#[derive(Debug, Default)]
pub struct RetryStats {
    gave_up: AtomicU64,
    budget_exhausted: AtomicU64,
    /// Attempts and retries by (operation, result): `ok` or the error kind
    /// ([`ErrorKind::as_str`]). Both label sets are bounded (the store's operations, the kinds).
    /// The totals of retries and throttles are sums over it.
    by_op: Mutex<BTreeMap<(&'static str, &'static str), OpCounts>>,
}

/// Requests of one operation that ended one way (see [`RetryStats::by_operation`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Attempts (each one request to the store) that ended this way.
    pub requests: u64,
    /// Of those, the failed ones that were tried again.
    pub retries: u64,
}

/// A snapshot of [`RetryStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryCounts {
    /// Retries made (attempts after the first).
    pub retries: u64,
    /// Attempts that failed with `Throttled` (503 SlowDown and friends).
    pub throttles: u64,
    /// Retryable errors returned to the caller (attempts or budget used up).
    pub gave_up: u64,
    /// Of those, the ones returned because the retry budget was empty.
    pub budget_exhausted: u64,
}

impl RetryStats {
    pub fn snapshot(&self) -> RetryCounts {
        RetryCounts {
            retries: self.retries(),
            throttles: self.throttles(),
            gave_up: self.gave_up.load(Ordering::Relaxed),
            budget_exhausted: self.budget_exhausted.load(Ordering::Relaxed),
        }
    }
    /// Retries made (attempts after the first), of every operation.
    pub fn retries(&self) -> u64 {
        self.sum(|_, c| c.retries)
    }

    /// Attempts answered with a throttle, of every operation.
    pub fn throttles(&self) -> u64 {
        let throttled = ErrorKind::Throttled.as_str();
        self.sum(|result, c| if result == throttled { c.requests } else { 0 })
    }

    fn sum(&self, f: impl Fn(&str, &OpCounts) -> u64) -> u64 {
        let m = self.by_op.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|((_, result), c)| f(result, c)).sum()
    }

    /// Requests and retries by (operation, result), `result` being `ok` or an error kind. A
    /// listing counts one request per listing (and one per page listed again after an error).
    pub fn by_operation(&self) -> Vec<((&'static str, &'static str), OpCounts)> {
        let m = self.by_op.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn count(&self, op: &'static str, result: &'static str, retried: bool) {
        let mut m = self.by_op.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry((op, result)).or_default();
        c.requests += 1;
        c.retries += u64::from(retried);
    }
}

type Sleeper = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

struct Shared {
    policy: RetryPolicy,
    stats: Arc<RetryStats>,
    rng: Mutex<StdRng>,
    tokens: Mutex<u32>,
    sleep: Sleeper,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryShared")
            .field("policy", &self.policy)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Why a retryable error was returned.
enum GiveUp {
    NotRetryable,
    Attempts,
    Budget,
    /// The server asked for a longer wait than `max_retry_after`.
    RetryAfter(Duration),
}

impl Shared {
    /// After a failed attempt (`attempt` is 1-based): `Ok(wait)` to retry, `Err` to give up.
    fn on_error(
        &self,
        op: &'static str,
        key: &str,
        err: &StoreError,
        attempt: u32,
        idempotent: bool,
    ) -> Result<Duration, GiveUp> {
        let verdict = self.judge(op, key, err, attempt, idempotent);
        self.stats.count(op, err.kind.as_str(), verdict.is_ok());
        verdict
    }

    fn judge(
        &self,
        op: &'static str,
        key: &str,
        err: &StoreError,
        attempt: u32,
        idempotent: bool,
    ) -> Result<Duration, GiveUp> {
        if !err.retryable() || (!idempotent && err.kind == ErrorKind::Transient) {
            return Err(GiveUp::NotRetryable);
        }
        // `check` is the first contact with a store: a wrong endpoint should fail in seconds with
        // one clear line, not after the full backoff schedule.
        let max_attempts = if op == "check" {
            self.policy.max_attempts.min(PROBE_ATTEMPTS)
        } else {
            self.policy.max_attempts
        };
        if attempt >= max_attempts {
            self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
            return Err(GiveUp::Attempts);
        }
        let retry_after = err.http.as_ref().and_then(|h| h.retry_after);
        if let Some(ra) = retry_after.filter(|ra| *ra > self.policy.max_retry_after) {
            self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
            return Err(GiveUp::RetryAfter(ra));
        }
        {
            let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if *t < self.policy.budget.retry_cost {
                drop(t);
                self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
                self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                return Err(GiveUp::Budget);
            }
            *t -= self.policy.budget.retry_cost;
        }
        let delay = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let backoff = self.policy.backoff(attempt - 1, &mut *rng);
            retry_after.map_or(backoff, |ra| ra.max(backoff))
        };
        tracing::debug!(op, key, attempt, error = %err, delay_ms = delay.as_millis() as u64, "retrying");
        Ok(delay)
    }

    fn on_success(&self, op: &'static str, retried: bool) {
        self.stats.count(op, "ok", false);
        let b = &self.policy.budget;
        let refund = if retried {
            b.retry_cost
        } else {
            b.success_refund
        };
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = t.saturating_add(refund).min(b.capacity);
    }

    fn give_up(&self, mut err: StoreError, attempts: u32, why: GiveUp) -> StoreError {
        match why {
            GiveUp::NotRetryable if attempts <= 1 => {}
            GiveUp::NotRetryable | GiveUp::Attempts => {
                err.message = format!("{} (after {attempts} attempts)", err.message);
            }
            GiveUp::Budget => {
                err.message = format!(
                    "{} (after {attempts} attempts; retry budget exhausted)",
                    err.message
                );
            }
            GiveUp::RetryAfter(ra) => {
                err.message = format!(
                    "{} (after {attempts} attempts; the server asked to retry after {} s, \
                     longer than the {} s this run waits)",
                    err.message,
                    ra.as_secs_f64().ceil(),
                    self.policy.max_retry_after.as_secs()
                );
            }
        }
        err
    }

    /// Run `f` until it succeeds or the policy gives up.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        idempotent: bool,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f().await {
                Ok(v) => {
                    self.on_success(op, attempt > 1);
                    return Ok(v);
                }
                Err(e) => match self.on_error(op, key, &e, attempt, idempotent) {
                    Ok(delay) => (self.sleep)(delay).await,
                    Err(why) => return Err(self.give_up(e, attempt, why)),
                },
            }
        }
    }
}

/// Attempts of the `check` probe at most.
const PROBE_ATTEMPTS: u32 = 3;

/// Retries failed requests of the store it wraps; see the module docs.
#[derive(Debug)]
pub struct RetryStore {
    inner: DynStore,
    shared: Arc<Shared>,
}

impl RetryStore {
    /// Wrap `inner` with the default policy.
    pub fn new(inner: DynStore) -> Self {
        Self::with_policy(inner, RetryPolicy::default())
    }

    pub fn with_policy(inner: DynStore, policy: RetryPolicy) -> Self {
        Self::build(
            inner,
            policy,
            Arc::default(),
            Arc::new(|d| Box::pin(tokio::time::sleep(d))),
        )
    }

    fn build(inner: DynStore, policy: RetryPolicy, stats: Arc<RetryStats>, sleep: Sleeper) -> Self {
        let rng = match policy.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let tokens = Mutex::new(policy.budget.capacity);
        Self {
            inner,
            shared: Arc::new(Shared {
                policy,
                stats,
                rng: Mutex::new(rng),
                tokens,
                sleep,
            }),
        }
    }

    /// Count into `stats` (e.g. one set shared by the source and destination stores).
    pub fn with_stats(self, stats: Arc<RetryStats>) -> Self {
        let sleep = self.shared.sleep.clone();
        Self::build(self.inner, self.shared.policy.clone(), stats, sleep)
    }

    /// Replace the backoff sleep (tests record the waits instead of sleeping).
    #[cfg(test)]
    pub(crate) fn with_sleeper(
        self,
        sleep: impl Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        let stats = self.shared.stats.clone();
        Self::build(
            self.inner,
            self.shared.policy.clone(),
            stats,
            Arc::new(sleep),
        )
    }

    pub fn stats(&self) -> Arc<RetryStats> {
        self.shared.stats.clone()
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }

    /// Tokens left in the retry budget.
    pub fn budget_tokens(&self) -> u32 {
        *self.shared.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// State of a retrying listing.
struct ListState {
    inner: DynStore,
    shared: Arc<Shared>,
    opts: ListOptions,
    cur: BoxStream<'static, Result<ObjectMeta>>,
    /// The last key yielded (or reported in a per-entry error).
    last: Option<String>,
    /// Failed attempts since the last progress.
    attempt: u32,
    done: bool,
}

impl ListState {
    fn advance(&mut self, key: &str) {
        if self.last.as_deref().is_none_or(|l| key > l) {
            self.last = Some(key.to_string());
        }
    }

    async fn next(mut self) -> Option<(Result<ObjectMeta>, Self)> {
        if self.done {
            return None;
        }
        loop {
            match self.cur.next().await {
                None => {
                    self.shared.on_success("list", self.attempt > 0);
                    return None;
                }
                Some(Ok(m)) => {
                    if self.attempt > 0 {
                        // The restarted page arrived: that request succeeded.
                        self.shared.on_success("list", true);
                        self.attempt = 0;
                    }
                    self.advance(&m.key);
                    return Some((Ok(m), self));
                }
                Some(Err(e)) if e.key.is_some() => {
                    if let Some(k) = e.key.clone() {
                        self.advance(&k);
                    }
                    return Some((Err(e), self));
                }
                Some(Err(e)) => {
                    self.attempt += 1;
                    let prefix = self.opts.prefix.clone();
                    match self
                        .shared
                        .on_error("list", &prefix, &e, self.attempt, true)
                    {
                        Ok(delay) => {
                            (self.shared.sleep)(delay).await;
                            let mut o = self.opts.clone();
                            if self.last.is_some() {
                                o.start_after = self.last.clone();
                            }
                            self.cur = self.inner.list(o);
                        }
                        Err(why) => {
                            self.done = true;
                            let e = self.shared.give_up(e, self.attempt, why);
                            return Some((Err(e), self));
                        }
                    }
                }
            }
        }
    }
}

fn idempotent_put(opts: &PutOptions) -> bool {
    matches!(opts.mode, PutMode::Overwrite)
}

#[async_trait]
impl Store for RetryStore {
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
        let state = ListState {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            cur: self.inner.list(opts.clone()),
            opts,
            last: None,
            attempt: 0,
            done: false,
        };
        futures::stream::unfold(state, ListState::next).boxed()
    }

    async fn check(&self) -> Result<()> {
        self.shared
            .run("check", "", true, || self.inner.check())
            .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.shared
            .run("head", key, true, || self.inner.head(key))
            .await
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.shared
            .run("get", key, true, || self.inner.get(key, opts.clone()))
            .await
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult> {
        let idem = idempotent_put(&opts);
        self.shared
            .run("put", key, idem, || {
                self.inner.put(key, body.clone(), opts.clone())
            })
            .await
    }

    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>> {
        self.shared
            .run("get_tags", key, true, || self.inner.get_tags(key))
            .await
    }

    async fn head_part(&self, key: &str, part_number: u32) -> Result<(u64, u32)> {
        self.shared
            .run("head_part", key, true, || {
                self.inner.head_part(key, part_number)
            })
            .await
    }

    async fn create_multipart(
        &self,
        key: &str,
        opts: PutOptions,
        layout: PartLayout,
    ) -> Result<String> {
        // A retry after a lost response leaves an orphan upload; orphan cleanup deals with those.
        self.shared
            .run("create_multipart", key, true, || {
                self.inner.create_multipart(key, opts.clone(), layout)
            })
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
        self.shared
            .run("upload_part", key, true, || {
                self.inner
                    .upload_part(key, upload_id, part_number, body.clone(), crc64nvme)
            })
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
        // A stream cannot be replayed: one attempt; the caller's stream resumes its source.
        self.inner
            .upload_part_stream(key, upload_id, part_number, len, body)
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
        self.shared
            .run("upload_part", key, true, || {
                self.inner
                    .upload_part_file(key, upload_id, part_number, file.clone(), crc64nvme)
            })
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
        self.shared
            .run("upload_part_copy", key, true, || {
                self.inner
                    .upload_part_copy(key, upload_id, part_number, src, range.clone())
            })
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
        // A conditional complete is not idempotent: a lost answer to a complete that succeeded
        // would make the retry fail its own condition (or, worse, pass someone else's).
        let idem = mode == PutMode::Overwrite;
        self.shared
            .run("complete_multipart", key, idem, || {
                self.inner.complete_multipart(
                    key,
                    upload_id,
                    parts.clone(),
                    crc64nvme,
                    mode.clone(),
                )
            })
            .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.shared
            .run("abort_multipart", key, true, || {
                self.inner.abort_multipart(key, upload_id)
            })
            .await
    }

    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        self.shared
            .run("list_multipart", prefix, true, || {
                self.inner.list_multipart(prefix)
            })
            .await
    }

    async fn copy(&self, src: &CopySource, dst_key: &str, opts: CopyOptions) -> Result<PutResult> {
        let idem = opts.replace.as_ref().is_none_or(idempotent_put);
        self.shared
            .run("copy", dst_key, idem, || {
                self.inner.copy(src, dst_key, opts.clone())
            })
            .await
    }

    async fn delete_versions(&self, ids: &[(String, String)]) -> Result<Vec<Result<()>>> {
        // Deleting a given version is idempotent: a failed batch is sent again whole.
        let first = ids.first().map(|(k, _)| k.as_str()).unwrap_or_default();
        self.shared
            .run("delete_versions", first, true, || {
                self.inner.delete_versions(ids)
            })
            .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Result<()>>> {
        // Every slot is overwritten unless its key never failed.
        let mut results: Vec<Result<()>> = Vec::with_capacity(keys.len());
        for _ in keys {
            results.push(Ok(()));
        }
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let batch: Vec<String> = pending.iter().map(|&i| keys[i].clone()).collect();
            let first = batch[0].as_str();
            let rs = match self.inner.delete_many(&batch).await {
                Ok(rs) if rs.len() == batch.len() => rs,
                Ok(rs) => {
                    let msg = format!(
                        "store answered {} results for {} keys",
                        rs.len(),
                        batch.len()
                    );
                    return Err(
                        StoreError::new(ErrorKind::Other, "delete_many", msg).with_key(first)
                    );
                }
                Err(e) => match self
                    .shared
                    .on_error("delete_many", first, &e, attempt, true)
                {
                    Ok(delay) => {
                        (self.shared.sleep)(delay).await;
                        continue;
                    }
                    Err(why) => return Err(self.shared.give_up(e, attempt, why)),
                },
            };
            let mut again = Vec::new();
            let mut retry_errors = Vec::new();
            for (&i, r) in pending.iter().zip(rs) {
                match r {
                    Err(e) if e.retryable() => {
                        again.push(i);
                        retry_errors.push(e);
                    }
                    r => results[i] = r,
                }
            }
            let Some(e) = retry_errors.first() else {
                self.shared.on_success("delete_many", attempt > 1);
                break;
            };
            let key = e.key.clone().unwrap_or_default();
            match self.shared.on_error("delete_many", &key, e, attempt, true) {
                Ok(delay) => {
                    (self.shared.sleep)(delay).await;
                    pending = again;
                }
                Err(_) => {
                    for (i, e) in again.into_iter().zip(retry_errors) {
                        let e = self.shared.give_up(e, attempt, GiveUp::Attempts);
                        results[i] = Err(e);
                    }
                    break;
                }
            }
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::testutil::TestStore;
    use crate::StoreExt;
    use std::sync::atomic::AtomicU32;

    /// A retry store over `t` whose backoff waits are recorded, not slept.
    fn retry(t: &Arc<TestStore>, policy: RetryPolicy) -> (RetryStore, Arc<Mutex<Vec<Duration>>>) {
        let waits = Arc::new(Mutex::new(Vec::new()));
        let w = waits.clone();
        let s = RetryStore::with_policy(
            t.clone(),
            RetryPolicy {
                seed: Some(7),
                ..policy
            },
        )
        .with_sleeper(move |d| {
            w.lock().unwrap().push(d);
            Box::pin(async {})
        });
        (s, waits)
    }

    fn fail_first(n: u64, kind: ErrorKind, only: &'static str) -> TestStore {
        TestStore::new(move |op, _, i| (op == only && i <= n).then_some(kind))
    }

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_cap(0), Duration::from_millis(100));
        assert_eq!(p.delay_cap(3), Duration::from_millis(800));
        assert_eq!(p.delay_cap(8), Duration::from_secs(20));
        assert_eq!(
            p.delay_cap(40),
            Duration::from_secs(20),
            "no overflow for large retry numbers"
        );

        let mut rng = StdRng::seed_from_u64(1);
        let waits: Vec<Duration> = (0..2000).map(|_| p.backoff(2, &mut rng)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(400)));
        // Full jitter: spread over the whole interval, not clustered near the cap.
        assert!(waits.iter().any(|w| *w < Duration::from_millis(40)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(360)));

        let again: Vec<Duration> = (0..2000)
            .map({
                let mut r = StdRng::seed_from_u64(1);
                move |_| p.backoff(2, &mut r)
            })
            .collect();
        assert_eq!(waits, again, "same seed, same waits");
    }

    #[tokio::test]
    async fn throttled_put_is_retried_and_counted() {
        let t = Arc::new(fail_first(2, ErrorKind::Throttled, "put"));
        let (s, waits) = retry(&t, RetryPolicy::default());
        s.put_bytes("k", "v").await.unwrap();
        assert_eq!(t.calls("put"), 3);
        assert_eq!(t.mem.get_bytes("k").await.unwrap(), Bytes::from("v"));
        let c = s.stats().snapshot();
        assert_eq!((c.retries, c.throttles, c.gave_up), (2, 2, 0));
        let waits = waits.lock().unwrap().clone();
        assert_eq!(waits.len(), 2);
        assert!(
            waits[0] <= Duration::from_millis(100) && waits[1] <= Duration::from_millis(200),
            "{waits:?}"
        );
    }

    fn slow_down_retry_after(secs: u64) -> crate::HttpInfo {
        crate::HttpInfo {
            status: Some(503),
            code: Some("SlowDown".into()),
            retry_after: Some(Duration::from_secs(secs)),
            ..Default::default()
        }
    }

    /// The real sleeper on tokio's paused clock: time moves only when every task waits, so the
    /// elapsed virtual time is exactly what the layer slept.
    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_for_in_virtual_time() {
        let policy = RetryPolicy {
            seed: Some(7),
            ..Default::default()
        };
        let t = Arc::new(
            fail_first(2, ErrorKind::Throttled, "put").with_http(slow_down_retry_after(7)),
        );
        let s = RetryStore::with_policy(t.clone(), policy.clone());
        let start = tokio::time::Instant::now();
        s.put_bytes("k", "v").await.unwrap();
        let waited = start.elapsed();
        assert_eq!(t.calls("put"), 3);
        // The backoff alone would be at most 100 ms + 200 ms; the server asked for 7 s twice.
        assert!(
            waited >= Duration::from_secs(14) && waited < Duration::from_millis(14_100),
            "{waited:?}"
        );

        // The same failures without the header: backoff only.
        let t = Arc::new(fail_first(2, ErrorKind::Throttled, "put"));
        let s = RetryStore::with_policy(t.clone(), policy);
        let start = tokio::time::Instant::now();
        s.put_bytes("k", "v").await.unwrap();
        assert!(
            start.elapsed() <= Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn retry_after_is_a_floor_under_the_backoff() {
        let t = Arc::new(
            fail_first(3, ErrorKind::Throttled, "head").with_http(slow_down_retry_after(1)),
        );
        t.mem.put_bytes("k", "v").await.unwrap();
        // Backoff caps 2 s, 4 s, 8 s: each wait is the larger of the jittered backoff and 1 s.
        let (s, waits) = retry(
            &t,
            RetryPolicy {
                base_delay: Duration::from_secs(2),
                ..Default::default()
            },
        );
        s.head("k").await.unwrap();
        let waits = waits.lock().unwrap().clone();
        let mut rng = StdRng::seed_from_u64(7);
        let expected: Vec<Duration> = (0..3)
            .map(|n| s.policy().backoff(n, &mut rng).max(Duration::from_secs(1)))
            .collect();
        assert_eq!(waits, expected);
        assert!(
            waits.iter().all(|w| *w >= Duration::from_secs(1)),
            "{waits:?}"
        );
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_limit_ends_the_retries_and_says_so() {
        let t = Arc::new(
            fail_first(u64::MAX, ErrorKind::Throttled, "put")
                .with_http(slow_down_retry_after(3600)),
        );
        let (s, waits) = retry(&t, RetryPolicy::default());
        let e = s.put_bytes("k", "v").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Throttled);
        assert_eq!(t.calls("put"), 1, "no retry sooner than the server asked");
        assert!(waits.lock().unwrap().is_empty());
        assert!(
            e.to_string()
                .contains("the server asked to retry after 3600 s, longer than the 60 s"),
            "{e}"
        );
        let c = s.stats().snapshot();
        assert_eq!((c.retries, c.throttles, c.gave_up), (0, 1, 1));
    }

    #[tokio::test]
    async fn errors_that_are_not_retryable_are_returned_at_once() {
        let t = Arc::new(TestStore::ok());
        let (s, waits) = retry(&t, RetryPolicy::default());
        let e = s.head("missing").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(t.calls("head"), 1);
        assert!(waits.lock().unwrap().is_empty());
        assert!(!e.message.contains("attempts"), "{e}");
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_says_so() {
        let t = Arc::new(fail_first(u64::MAX, ErrorKind::Transient, "head"));
        let (s, _) = retry(
            &t,
            RetryPolicy {
                max_attempts: 4,
                ..Default::default()
            },
        );
        let e = s.head("k").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(t.calls("head"), 4);
        assert!(e.to_string().contains("after 4 attempts"), "{e}");
        assert_eq!(
            s.stats().snapshot(),
            RetryCounts {
                retries: 3,
                throttles: 0,
                gave_up: 1,
                budget_exhausted: 0
            }
        );
    }

    #[tokio::test]
    async fn the_budget_stops_retries_and_successes_refill_it() {
        let failing = Arc::new(AtomicU32::new(1));
        let f = failing.clone();
        let t = Arc::new(TestStore::new(move |op, _, _| {
            (op == "head" && f.load(Ordering::SeqCst) == 1).then_some(ErrorKind::Throttled)
        }));
        let budget = RetryBudget {
            capacity: 10,
            retry_cost: 5,
            success_refund: 1,
        };
        let (s, _) = retry(
            &t,
            RetryPolicy {
                budget,
                ..Default::default()
            },
        );

        // 10 tokens = two retries, then the bucket is empty.
        let e = s.head("k").await.unwrap_err();
        assert_eq!(t.calls("head"), 3);
        assert!(e.to_string().contains("retry budget exhausted"), "{e}");
        assert_eq!(s.budget_tokens(), 0);
        // Empty bucket: the next failure is returned after one attempt.
        s.head("k").await.unwrap_err();
        assert_eq!(t.calls("head"), 4);
        let c = s.stats().snapshot();
        assert_eq!(
            (c.retries, c.gave_up, c.budget_exhausted, c.throttles),
            (2, 2, 2, 4)
        );

        // Clean successes put tokens back, one each, up to the capacity.
        failing.store(0, Ordering::SeqCst);
        t.mem.put_bytes("k", "v").await.unwrap();
        for _ in 0..12 {
            s.head("k").await.unwrap();
        }
        assert_eq!(s.budget_tokens(), 10);
    }

    #[tokio::test]
    async fn conditional_put_is_not_retried_on_an_ambiguous_failure() {
        let t = Arc::new(fail_first(1, ErrorKind::Transient, "put"));
        let (s, _) = retry(&t, RetryPolicy::default());
        let create = PutOptions::new().mode(PutMode::Create);
        let e = s
            .put("k", Bytes::from("v"), create.clone())
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(t.calls("put"), 1);
        // A throttle proves nothing was written: that one is retried.
        let t = Arc::new(fail_first(1, ErrorKind::Throttled, "put"));
        let (s, _) = retry(&t, RetryPolicy::default());
        s.put("k", Bytes::from("v"), create).await.unwrap();
        assert_eq!(t.calls("put"), 2);
    }

    #[tokio::test]
    async fn get_retries_the_request() {
        let t = Arc::new(fail_first(1, ErrorKind::Transient, "get"));
        t.mem.put_bytes("k", "hello").await.unwrap();
        let (s, _) = retry(&t, RetryPolicy::default());
        assert_eq!(s.get_bytes("k").await.unwrap(), Bytes::from("hello"));
        assert_eq!(t.calls("get"), 2);
    }

    #[tokio::test]
    async fn list_resumes_after_the_last_key_without_missing_or_doubling() {
        let opens = Arc::new(Mutex::new(Vec::<String>::new()));
        let o = opens.clone();
        // Entries 5, 12 and 20 (counted over all listings) fail with a listing-ending error.
        let t = Arc::new(TestStore::new(move |op, key, n| match op {
            "list" => {
                o.lock().unwrap().push(key.to_string());
                None
            }
            "list_item" if [5, 12, 20].contains(&n) => Some(ErrorKind::Transient),
            _ => None,
        }));
        let keys: Vec<String> = (0..25).map(|i| format!("p/{i:02}")).collect();
        for k in &keys {
            t.mem.put_bytes(k, "x").await.unwrap();
        }
        t.mem.put_bytes("q/outside", "x").await.unwrap();
        let (s, waits) = retry(&t, RetryPolicy::default());
        let got: Vec<String> = s
            .list_all("p/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(got, keys);
        assert_eq!(*opens.lock().unwrap(), ["", "p/03", "p/09", "p/16"]);
        assert_eq!(waits.lock().unwrap().len(), 3);
        assert_eq!(s.stats().retries(), 3);
    }

    #[tokio::test]
    async fn list_keeps_the_callers_start_after_and_gives_up() {
        let t = Arc::new(TestStore::new(|op, _, n| {
            (op == "list_item" && n > 2).then_some(ErrorKind::Throttled)
        }));
        for i in 0..5 {
            t.mem.put_bytes(&format!("k{i}"), "x").await.unwrap();
        }
        let (s, _) = retry(
            &t,
            RetryPolicy {
                max_attempts: 3,
                ..Default::default()
            },
        );
        let mut o = ListOptions::prefix("");
        o.start_after = Some("k0".into());
        let items: Vec<Result<ObjectMeta>> = s.list(o).collect().await;
        let ok: Vec<&str> = items
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|m| m.key.as_str())
            .collect();
        assert_eq!(ok, ["k1", "k2"]);
        assert_eq!(items.len(), 3, "one final error ends the listing");
        let e = items[2].as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Throttled);
        assert!(
            e.key.is_none() && e.to_string().contains("after 3 attempts"),
            "{e}"
        );
        assert_eq!(t.calls("list"), 3);
    }

    #[tokio::test]
    async fn delete_many_retries_only_the_failed_keys() {
        let asked = Arc::new(Mutex::new(Vec::<String>::new()));
        let a = asked.clone();
        let t = Arc::new(TestStore::new(move |op, key, _| {
            if op != "delete_key" {
                return None;
            }
            let mut a = a.lock().unwrap();
            a.push(key.to_string());
            (key == "b" && a.iter().filter(|k| *k == "b").count() == 1)
                .then_some(ErrorKind::Throttled)
        }));
        for k in ["a", "b", "c"] {
            t.mem.put_bytes(k, "x").await.unwrap();
        }
        let (s, _) = retry(&t, RetryPolicy::default());
        let keys: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let rs = s.delete_many(&keys).await.unwrap();
        assert!(rs.iter().all(|r| r.is_ok()), "{rs:?}");
        assert_eq!(*asked.lock().unwrap(), ["a", "b", "c", "b"]);
        assert!(t.mem.keys().is_empty());
    }
}
