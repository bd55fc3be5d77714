//! The one run loop every job uses: a job hands the [`Executor`] a stream of planned items and a
//! per-item action; the executor owns what used to be copied into each job:
//!
//! - **bounded concurrency** (`concurrency` items in flight; the memory budget of the parts
//!   inside them is the transfers' own, [`crate::transfer::TransferConfig::max_memory`]);
//! - **one cancellation** ([`Cancel`]): once it is requested no new item starts, the items in
//!   flight run to their end (an upload completes or is aborted by its transfer, never left
//!   open), and the run ends `interrupted`;
//! - **the fatal latch**: an item that fails with a fatal kind (missing bucket, denied
//!   credentials, full disk) stops the run like a cancellation, and the run ends with that error;
//! - **recording as items finish**: the action writes its state records; with
//!   [`Executor::durable`] the executor commits the state database before it counts the item,
//!   so an item counted done is on disk and a resumed run never redoes it, even after `kill -9`
//!   (concurrent items share one commit);
//! - **the end-of-run retry pass**: an action answers [`Done::Retry`] for a retryable failure;
//!   the item is kept on disk (memory stays flat) and tried once more by [`Executor::retry`];
//! - **counting and the summary** ([`Summary`], through the job's [`Reporter`]).
//!
//! Promises are written down in `doc/SEMANTICS.md` ("The run loop").

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::events::{Record, Reporter, Summary};
use crate::journal::Journal;
use crate::spill::{Spill, SpillError};
use s3ferry_store::{ErrorKind, StoreError};

/// A request to stop, shared by everything one command runs (the CLI's signal handler, a job's
/// cancel record, a service loop). Cloning shares it. Once requested it stays requested.
#[derive(Clone)]
pub struct Cancel(Arc<CancelInner>);

struct CancelInner {
    tx: watch::Sender<bool>,
    reason: Mutex<Option<String>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("requested", &self.is_requested())
            .finish()
    }
}

impl Cancel {
    pub fn new() -> Self {
        Self(Arc::new(CancelInner {
            tx: watch::channel(false).0,
            reason: Mutex::new(None),
        }))
    }

    /// Ask everything that shares this to stop starting work; `why` is kept (the first one).
    pub fn request(&self, why: &str) {
        {
            let mut r = self.0.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(why.to_string());
            }
        }
        self.0.tx.send_replace(true);
    }

    pub fn is_requested(&self) -> bool {
        *self.0.tx.borrow()
    }

    /// Why it was requested (`SIGTERM`, `cancelled by batch cancel`, ...).
    pub fn reason(&self) -> Option<String> {
        self.0
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves once a stop is requested (at once when it already was).
    pub async fn requested(&self) {
        let mut rx = self.0.tx.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// How an item ended, as its action reports it.
pub enum Done<I> {
    /// Finished with this record (counted and reported).
    Record(Record),
    /// Finished with several records (a batch of deletes).
    Records(Vec<Record>),
    /// Failed: `record` is its `fail` record; a fatal `error` stops the run.
    Failed(Record, StoreError),
    /// Failed with a retryable error: try it once more in the retry pass. If there is no retry
    /// pass (or this was it), the record counts as its failure.
    Retry(I, Record, StoreError),
    /// Nothing to count (stopped before it started).
    Nothing,
}

impl<I> Done<I> {
    /// [`Done::Failed`] with the key's fail record ([`Record::failure`]).
    pub fn failed(key: impl Into<String>, size: u64, e: StoreError) -> Self {
        Done::Failed(Record::failure(key, size, &e), e)
    }
}

/// Whether an action runs in the first pass or in the retry pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    First,
    Retry,
}

/// The shared loop (see the module docs). One per run of a job; [`Executor::summary`] at the end.
pub struct Executor {
    concurrency: usize,
    cancel: Cancel,
    reporter: Arc<dyn Reporter>,
    durable: Option<GroupCommit>,
    retry_pass: bool,
    started: Instant,
    summary: Mutex<Summary>,
    fatal: Mutex<Option<StoreError>>,
    halted: AtomicBool,
    retries: AtomicU64,
}

/// One commit of the state database for many finished items: an item asks for a commit after
/// its records were written; whoever gets the turn commits everything written so far, and the
/// items whose records that covered return without a commit of their own. (A commit per item
/// would be one transaction per object.)
struct GroupCommit {
    journal: Arc<Journal>,
    /// Tickets handed out (one per item, after its records were queued).
    asked: AtomicU64,
    /// Every ticket up to this one is committed.
    committed: AtomicU64,
    turn: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    async fn commit(&self) -> Result<(), crate::journal::JournalError> {
        let mine = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.turn.lock().await;
        if self.committed.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        // Every ticket handed out so far belongs to records queued before this flush (the
        // journal's queue keeps their order), so the flush commits them all.
        let upto = self.asked.load(Ordering::SeqCst);
        self.journal.flush().await?;
        self.committed.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }
}

/// Keeps an item for the retry pass; `false` when it could not (then it counts as failed).
type Keep<I> = dyn Fn(I, &Record, &StoreError) -> bool + Send + Sync;

/// What one pass left for the next: items to try again (on disk).
pub struct Leftover<I> {
    retry: Option<Spill<(I, Record, String)>>,
    n: u64,
}

impl<I> Leftover<I> {
    pub fn len(&self) -> u64 {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Executor {
    pub fn new(concurrency: usize, cancel: Cancel, reporter: Arc<dyn Reporter>) -> Self {
        Self {
            concurrency: concurrency.max(1),
            cancel,
            reporter,
            durable: None,
            retry_pass: true,
            started: Instant::now(),
            summary: Mutex::new(Summary::default()),
            fatal: Mutex::new(None),
            halted: AtomicBool::new(false),
            retries: AtomicU64::new(0),
        }
    }

    /// Commit `journal` before an item is counted done (jobs whose resume trusts their records).
    pub fn durable(mut self, journal: Arc<Journal>) -> Self {
        self.durable = Some(GroupCommit {
            journal,
            asked: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            turn: tokio::sync::Mutex::new(()),
        });
        self
    }

    /// No end-of-run retry pass: a [`Done::Retry`] counts as its failure at once.
    pub fn without_retry_pass(mut self) -> Self {
        self.retry_pass = false;
        self
    }

    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// Stop starting items: a cancellation was requested or an item failed fatally.
    pub fn stopping(&self) -> bool {
        self.halted.load(Ordering::SeqCst) || self.cancel.is_requested()
    }

    pub fn interrupted(&self) -> bool {
        self.cancel.is_requested()
    }

    /// Count and report one record (also for records a job makes outside an item: skips while
    /// planning, refusals).
    pub fn record(&self, r: Record) {
        r.action.count(
            &mut self.summary.lock().unwrap_or_else(|p| p.into_inner()),
            r.size,
        );
        self.reporter.record(&r);
    }

    /// A failure outside an item (a listing error): recorded, and latched when fatal.
    pub fn fail(&self, r: Record, e: &StoreError) {
        self.latch(e);
        self.record(r);
    }

    fn latch(&self, e: &StoreError) {
        if e.kind.fatal() {
            let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(
                    StoreError::new(e.kind, e.op, e.message.clone())
                        .with_key(e.key.clone().unwrap_or_default()),
                );
            }
            self.halted.store(true, Ordering::SeqCst);
        }
    }

    /// The fatal error that stopped the run, if one did (taken: asked once at the end).
    pub fn take_fatal(&self) -> Option<StoreError> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Add to the summary's retry count (the job-level tier counts here itself).
    fn add_retries(&self, n: u64) {
        crate::metrics::global().item_retries(n);
        self.retries.fetch_add(n, Ordering::Relaxed);
    }

    async fn settle<I>(&self, done: Done<I>, keep: Option<&Keep<I>>) {
        if let Some(j) = &self.durable {
            if !matches!(done, Done::Nothing) {
                if let Err(e) = j.commit().await {
                    // The state could not be committed: a job that cannot record what it did
                    // must not go on doing it.
                    self.latch(&StoreError::new(
                        ErrorKind::StorageFull,
                        "state",
                        e.to_string(),
                    ));
                }
            }
        }
        match done {
            Done::Record(r) => self.record(r),
            Done::Records(rs) => rs.into_iter().for_each(|r| self.record(r)),
            Done::Failed(r, e) => self.fail(r, &e),
            Done::Retry(item, r, e) => match keep {
                Some(keep) if self.retry_pass && !e.kind.fatal() && keep(item, &r, &e) => {
                    tracing::debug!("will retry {}: {e}", r.key);
                }
                _ => self.fail(r, &e),
            },
            Done::Nothing => {}
        }
    }

    /// Run `apply` over `items` with bounded concurrency until the items end, a stop is
    /// requested or an item fails fatally (then the items in flight finish; nothing new
    /// starts). An `Err` item ends the run with that error, after the items in flight. Items
    /// answered [`Done::Retry`] are kept on disk for [`Executor::retry`].
    pub async fn run<I, E, S, F, Fut>(
        self: &Arc<Self>,
        items: S,
        apply: F,
    ) -> Result<Leftover<I>, E>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        S: Stream<Item = Result<I, E>>,
        F: Fn(I, Pass) -> Fut,
        Fut: Future<Output = Done<I>> + Send + 'static,
    {
        let left = Arc::new(Mutex::new(Leftover { retry: None, n: 0 }));
        let l2 = left.clone();
        let keep: Arc<Keep<I>> = Arc::new(move |item: I, r: &Record, e: &StoreError| {
            let mut l = l2.lock().unwrap_or_else(|p| p.into_inner());
            let row = (item, r.clone(), e.to_string());
            let pushed = match &mut l.retry {
                Some(s) => s.push(&row),
                None => Spill::new().and_then(|mut s| {
                    let p = s.push(&row);
                    l.retry = Some(s);
                    p
                }),
            };
            match pushed {
                Ok(()) => {
                    l.n += 1;
                    true
                }
                Err(se) => {
                    tracing::warn!("{se}");
                    false
                }
            }
        });
        let res = self.drive(items, Pass::First, &apply, Some(keep)).await;
        let left = Arc::try_unwrap(left)
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .unwrap_or(Leftover { retry: None, n: 0 });
        res.map(|()| left)
    }

    /// [`Executor::run`] for items that are not kept for a retry pass (a [`Done::Retry`] counts
    /// as its failure): members read from a stream, say, that cannot be read twice.
    pub async fn run_once<I, E, S, F, Fut>(self: &Arc<Self>, items: S, apply: F) -> Result<(), E>
    where
        I: Send + 'static,
        S: Stream<Item = Result<I, E>>,
        F: Fn(I, Pass) -> Fut,
        Fut: Future<Output = Done<I>> + Send + 'static,
    {
        self.drive(items, Pass::First, &apply, None).await
    }

    async fn drive<I, E, S, F, Fut>(
        self: &Arc<Self>,
        items: S,
        pass: Pass,
        apply: &F,
        keep: Option<Arc<Keep<I>>>,
    ) -> Result<(), E>
    where
        I: Send + 'static,
        S: Stream<Item = Result<I, E>>,
        F: Fn(I, Pass) -> Fut,
        Fut: Future<Output = Done<I>> + Send + 'static,
    {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut items = std::pin::pin!(items);
        let res = loop {
            if self.stopping() {
                break Ok(());
            }
            // Wait for a free slot first (or a stop), then for the next item.
            let permit = tokio::select! {
                biased;
                () = self.cancel.requested() => break Ok(()),
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break Ok(()),
                },
            };
            let next = tokio::select! {
                biased;
                () = self.cancel.requested() => break Ok(()),
                n = items.next() => n,
            };
            let item = match next {
                None => {
                    if pass == Pass::First {
                        self.reporter.listed();
                        crate::metrics::global().listing_done();
                    }
                    break Ok(());
                }
                Some(Err(e)) => break Err(e),
                Some(Ok(i)) => i,
            };
            if self.stopping() {
                break Ok(());
            }
            let fut = apply(item, pass);
            let me = self.clone();
            // Only the first pass keeps items for another.
            let keep = keep.clone().filter(|_| pass == Pass::First);
            let in_flight = InFlight::new();
            tasks.spawn(async move {
                let done = fut.await;
                me.settle(done, keep.as_deref()).await;
                drop(in_flight);
                drop(permit);
            });
            while let Some(r) = tasks.try_join_next() {
                resume_panic(r);
            }
        };
        while let Some(r) = tasks.join_next().await {
            resume_panic(r);
        }
        res
    }

    /// The retry pass: each item a pass left is given to `apply` once more ([`Pass::Retry`]);
    /// a second retryable failure counts as a failure. Nothing runs once a stop was requested.
    pub async fn retry<I, F, Fut>(
        self: &Arc<Self>,
        left: Leftover<I>,
        apply: F,
    ) -> Result<(), SpillError>
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(I, Pass) -> Fut,
        Fut: Future<Output = Done<I>> + Send + 'static,
    {
        let Some(spill) = left.retry else {
            return Ok(());
        };
        let n = spill.len();
        if self.stopping() {
            // Not tried again: each counts as the failure it was.
            for row in spill.read_back()? {
                let (_, r, _) = row?;
                self.record(r);
            }
            return Ok(());
        }
        self.add_retries(n);
        let rows = futures::stream::iter(spill.read_back()?)
            .map(|row| row.map(|(item, _r, _e): (I, Record, String)| item));
        self.drive(rows, Pass::Retry, &apply, None).await
    }

    /// `fetch` applied to `items`, at most the executor's concurrency at a time, the results
    /// handed back in the order of `items`: for a job whose one consumer must take its items in
    /// order (members written into a tar, lines of an archive). Nothing new is fetched once the
    /// run is stopping (a stop was requested, or an item failed fatally): the stream then ends
    /// after the fetches already started. The consumer counts what a result means.
    pub fn ordered<'a, I, T, S, F, Fut>(
        self: &Arc<Self>,
        items: S,
        fetch: F,
    ) -> impl Stream<Item = T> + 'a
    where
        S: Stream<Item = I> + 'a,
        F: FnMut(I) -> Fut + 'a,
        Fut: Future<Output = T> + 'a,
        I: 'a,
        T: 'a,
    {
        let me = self.clone();
        items
            .take_while(move |_| std::future::ready(!me.stopping()))
            .map(fetch)
            .buffered(self.concurrency)
    }

    /// The totals so far (retries of the job-level tier included), `interrupted` when a stop was
    /// requested, and the time since the executor was made.
    pub fn summary(&self) -> Summary {
        let mut s = self
            .summary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.retries += self.retries.load(Ordering::Relaxed);
        s.interrupted = self.interrupted();
        s.elapsed_secs = self.started.elapsed().as_secs_f64();
        s
    }
}

/// One item in the metrics' in-flight gauge while this lives (also when its task is aborted).
struct InFlight;

impl InFlight {
    fn new() -> Self {
        crate::metrics::global().in_flight(1);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::metrics::global().in_flight(-1);
    }
}

/// A panicking action is a bug: let it surface as one (not as a silently missing record).
fn resume_panic(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{NullReporter, Outcome};
    use std::sync::atomic::AtomicUsize;

    fn exec(n: usize) -> Arc<Executor> {
        Arc::new(Executor::new(n, Cancel::new(), Arc::new(NullReporter)))
    }

    fn items(n: u32) -> impl Stream<Item = Result<u32, String>> {
        futures::stream::iter((0..n).map(Ok))
    }

    #[tokio::test]
    async fn runs_every_item_within_the_concurrency_bound() {
        let e = exec(3);
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let left = e
            .run(items(50), |i, _| {
                let (now, peak) = (now.clone(), peak.clone());
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Done::Record(Record::new(i.to_string(), Outcome::Copy, "new", 2))
                }
            })
            .await
            .unwrap();
        assert!(left.is_empty());
        let s = e.summary();
        assert_eq!((s.copied, s.copied_bytes), (50, 100));
        assert!(peak.load(Ordering::SeqCst) <= 3, "{peak:?}");
        assert!(!s.interrupted);
    }

    #[tokio::test]
    async fn ordered_keeps_the_order_bounds_the_fetches_and_stops_taking_items() {
        let e = exec(4);
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let fetch = |i: u32| {
            let (now, peak) = (now.clone(), peak.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                // Later items finish first: the order must come from the executor.
                for _ in 0..(20 - i % 20) {
                    tokio::task::yield_now().await;
                }
                now.fetch_sub(1, Ordering::SeqCst);
                i
            }
        };
        let got: Vec<u32> = e
            .ordered(futures::stream::iter(0..40), fetch)
            .collect()
            .await;
        assert_eq!(got, (0..40).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 4, "{peak:?}");
        // A stop: what was started comes back, nothing after it is fetched.
        let fetched = Arc::new(AtomicUsize::new(0));
        let f2 = fetched.clone();
        let cancel = e.cancel().clone();
        let got: Vec<u32> = e
            .ordered(futures::stream::iter(0..100), move |i| {
                f2.fetch_add(1, Ordering::SeqCst);
                if i == 10 {
                    cancel.request("test");
                }
                std::future::ready(i)
            })
            .collect()
            .await;
        assert_eq!(got, (0..=10).collect::<Vec<_>>());
        assert_eq!(fetched.load(Ordering::SeqCst), 11);
    }

    #[tokio::test]
    async fn a_cancel_starts_nothing_new_and_lets_items_in_flight_finish() {
        let e = exec(2);
        let cancel = e.cancel().clone();
        let started = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        e.run(items(100), |i, _| {
            let (cancel, started, finished) = (cancel.clone(), started.clone(), finished.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                if i == 3 {
                    cancel.request("test");
                }
                tokio::task::yield_now().await;
                finished.fetch_add(1, Ordering::SeqCst);
                Done::Record(Record::new(i.to_string(), Outcome::Copy, "new", 1))
            }
        })
        .await
        .unwrap();
        let s = e.summary();
        assert!(s.interrupted);
        let (st, fi) = (
            started.load(Ordering::SeqCst),
            finished.load(Ordering::SeqCst),
        );
        assert_eq!(st, fi, "every started item finished");
        assert!(st < 10, "started {st} after the cancel at item 3");
        assert_eq!(s.copied as usize, fi, "every finished item was counted");
        assert_eq!(e.cancel().reason().as_deref(), Some("test"));
    }

    #[tokio::test]
    async fn a_fatal_failure_stops_the_run_and_is_kept() {
        let e = exec(1);
        e.run(items(20), |i, _| async move {
            if i == 4 {
                let err = StoreError::new(ErrorKind::BucketNotFound, "put", "no such bucket");
                Done::Failed(Record::new(i.to_string(), Outcome::Fail, "x", 0), err)
            } else {
                Done::Record(Record::new(i.to_string(), Outcome::Copy, "new", 0))
            }
        })
        .await
        .unwrap();
        let s = e.summary();
        assert_eq!((s.copied, s.failed), (4, 1));
        assert_eq!(e.take_fatal().unwrap().kind, ErrorKind::BucketNotFound);
        assert!(!s.interrupted, "a fatal error is not an interrupt");
    }

    #[tokio::test]
    async fn retryable_failures_get_one_more_pass_then_count_as_failures() {
        let e = exec(4);
        let apply = |i: u32, pass: Pass| async move {
            let err = StoreError::new(ErrorKind::Transient, "get", "reset");
            let fail = Record::new(i.to_string(), Outcome::Fail, "transient", 0);
            match (i % 3, pass) {
                (0, _) => Done::Record(Record::new(i.to_string(), Outcome::Copy, "new", 0)),
                (1, Pass::First) => Done::Retry(i, fail, err),
                (1, Pass::Retry) => {
                    Done::Record(Record::new(i.to_string(), Outcome::Copy, "retry", 0))
                }
                _ => Done::Retry(i, fail, err),
            }
        };
        let left = e.run(items(30), apply).await.unwrap();
        assert_eq!(left.len(), 20);
        assert_eq!(e.summary().copied, 10, "nothing retried yet");
        e.retry(left, apply).await.unwrap();
        let s = e.summary();
        assert_eq!((s.copied, s.failed, s.retries), (20, 10, 20));
    }

    #[tokio::test]
    async fn an_item_error_ends_the_run_after_the_items_in_flight() {
        let e = exec(2);
        let s = futures::stream::iter(vec![Ok(1u32), Ok(2), Err("bad row 3".to_string()), Ok(4)]);
        let r = e
            .run(s, |i, _| async move {
                Done::Record(Record::new(i.to_string(), Outcome::Copy, "new", 0))
            })
            .await;
        assert_eq!(r.err().as_deref(), Some("bad row 3"));
        assert_eq!(e.summary().copied, 2);
    }

    #[tokio::test]
    async fn durable_items_are_committed_before_they_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let j = Arc::new(Journal::open(&path).unwrap());
        let e =
            Arc::new(Executor::new(8, Cancel::new(), Arc::new(NullReporter)).durable(j.clone()));
        let j2 = j.clone();
        e.run(items(40), move |i, _| {
            let j = j2.clone();
            async move {
                j.put_record("t", "s", "done", &format!("{i:03}"), "1".into());
                Done::Record(Record::new(i.to_string(), Outcome::Copy, "new", 0))
            }
        })
        .await
        .unwrap();
        // Another connection (as another process would) sees every record without any flush
        // of ours, though 40 records are far below one buffered batch.
        let other = rusqlite::Connection::open(&path).unwrap();
        let n: i64 = other
            .query_row(
                "SELECT count(*) FROM records WHERE job = 't' AND kind = 'done'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 40);
        drop(j);
    }
}
