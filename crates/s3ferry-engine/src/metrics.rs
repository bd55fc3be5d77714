//! What a running command counts, for operators: one process-wide registry ([`global`]) that the
//! run loop, the stores and the service loops feed, and that the CLI renders as Prometheus text
//! (`--metrics-addr`) or CloudWatch Embedded Metric Format lines (`--metrics-emf`).
//!
//! - **Items** are counted as they are reported: every record a job makes reaches the command's
//!   one [`crate::events::Reporter`] (through [`crate::exec::Executor::record`] or, for jobs that
//!   keep a summary of their own, directly), and the CLI's reporter counts each one with
//!   [`Metrics::item`]. So `s3ferry_objects_total` equals the run's object records by action, and
//!   for a job whose summary is the executor's, the summary (a test holds sync to it).
//! - **Items in flight, the retry pass and the end of listing** come from the run loop.
//! - **Requests** are counted by the stores' retry layer ([`RetryStats`]): every attempt, by
//!   operation and result (`ok` or the error kind), and the retries among them. A store opened by
//!   the CLI is registered here with [`Metrics::add_store`]; the registry reads its counters at
//!   render time (nothing is copied per request).
//! - **Service loops** (`bisync --poll`, `bundle worker`) report rounds, shards, the lease and
//!   the queue; [`Metrics::readiness`] turns them into `/readyz`.
//!
//! Label sets are bounded: the command, outcome names, store operations, error kinds, the side
//! and backend of a store. A key or a bucket is never a label. (The command's label is `command`,
//! not `job`: Prometheus keeps `job` for its own scrape job.)

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use s3ferry_store::layer::{LimitGauge, RetryStats};

use crate::events::Outcome;

/// The process's registry.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Upper bounds of the round-duration histogram, in seconds.
const ROUND_BUCKETS: [f64; 9] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

#[derive(Default)]
struct Items {
    count: AtomicU64,
    bytes: AtomicU64,
}

struct Store {
    side: &'static str,
    backend: &'static str,
    stats: Arc<RetryStats>,
}

/// What `/readyz` asks of the command.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Readiness {
    /// Ready while it runs (a one-shot command).
    Running,
    /// A loop of rounds (`bisync --poll`): ready when a round succeeded within `within` (a
    /// failed round or two in between are tolerated), and while a round runs that started
    /// within `within` of the last success (a long round is work, not a fault).
    Rounds { within: Duration },
    /// A queue worker: ready when a receive from its queue succeeded within `within`, or while
    /// it holds a shard whose lease (visibility) was taken or extended within `lease`.
    Receiving { within: Duration, lease: Duration },
}

/// How a round of a loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundResult {
    /// Every key settled.
    Ok,
    /// The round ran to its end, but some keys failed or were refused (they count as items).
    Partial,
    /// The round itself failed (the remote unreachable, the lease lost, ...).
    Failed,
}

#[derive(Default)]
struct Service {
    rounds_ok: u64,
    rounds_partial: u64,
    rounds_failed: u64,
    round_buckets: [u64; ROUND_BUCKETS.len()],
    round_seconds: f64,
    last_round_ok: Option<bool>,
    /// When the round running now started.
    running_since: Option<Instant>,
    last_ok: Option<Instant>,
    last_ok_wall: Option<SystemTime>,
    changes_up: u64,
    changes_down: u64,
    deletes_local: u64,
    deletes_remote: u64,
    conflicts: u64,
    shards_done: u64,
    shards_failed: u64,
    last_receive: Option<Instant>,
    /// When the shard in hand was taken or its visibility last extended.
    beat: Option<Instant>,
}

/// The registry (see the module docs). Counters only go up; gauges are read when rendered.
pub struct Metrics {
    job: OnceLock<String>,
    items: [Items; Outcome::ALL.len()],
    planned_objects: AtomicU64,
    planned_bytes: AtomicU64,
    transferred_bytes: AtomicU64,
    item_retries: AtomicU64,
    in_flight: AtomicI64,
    stores: Mutex<Vec<Store>>,
    /// The limits of the stores open now (a store's gauge ends with it).
    limits: Mutex<Vec<(&'static str, &'static str, LimitGauge)>>,
    service: Mutex<Service>,
    lease: AtomicI64,
    readiness: Mutex<Readiness>,
    state_db: Mutex<Option<PathBuf>>,
    started: SystemTime,
    listing_done: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            job: OnceLock::new(),
            items: Default::default(),
            planned_objects: AtomicU64::new(0),
            planned_bytes: AtomicU64::new(0),
            transferred_bytes: AtomicU64::new(0),
            item_retries: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            stores: Mutex::new(Vec::new()),
            limits: Mutex::new(Vec::new()),
            service: Mutex::new(Service::default()),
            lease: AtomicI64::new(-1),
            readiness: Mutex::new(Readiness::Running),
            state_db: Mutex::new(None),
            started: SystemTime::now(),
            listing_done: AtomicBool::new(false),
        }
    }

    /// Name the job every sample is labelled with (the command: `sync`, `bisync`, ...). The first
    /// name sticks.
    pub fn set_job(&self, job: &str) {
        let _ = self.job.set(job.to_string());
    }

    pub fn job(&self) -> &str {
        self.job.get().map(String::as_str).unwrap_or("s3ferry")
    }

    /// One item ended with `outcome` (`size` bytes): one object record of the run.
    pub fn item(&self, outcome: Outcome, size: u64) {
        let i = &self.items[outcome.index()];
        i.count.fetch_add(1, Ordering::Relaxed);
        i.bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// `n` items go to the run loop's retry pass (the job-level retries of the summary).
    pub fn item_retries(&self, n: u64) {
        self.item_retries.fetch_add(n, Ordering::Relaxed);
    }

    /// Items started (+1) or finished (-1) by the run loop.
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn planned(&self, objects: u64, bytes: u64) {
        self.planned_objects.fetch_add(objects, Ordering::Relaxed);
        self.planned_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn transferred(&self, bytes: u64) {
        self.transferred_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The run loop has taken every planned item of a first pass (listing is over).
    pub fn listing_done(&self) {
        self.listing_done.store(true, Ordering::Relaxed);
    }

    /// Count the requests of a store (`side`: `source` or `destination`; `backend`: `s3` or
    /// `local`) and read its adaptive concurrency while it is open. Stores that share their
    /// stats are counted once, so a process that opens a store per unit of work (a worker, per
    /// shard) shares one set of stats per side and backend and keeps this list short.
    pub fn add_store(
        &self,
        side: &'static str,
        backend: &'static str,
        stats: Arc<RetryStats>,
        limit: Option<LimitGauge>,
    ) {
        if let Some(l) = limit {
            let mut v = self.limits.lock().unwrap_or_else(|p| p.into_inner());
            v.retain(|(_, _, g)| g.limit().is_some());
            v.push((side, backend, l));
        }
        let mut v = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if v.iter().any(|s| Arc::ptr_eq(&s.stats, &stats)) {
            return;
        }
        v.push(Store {
            side,
            backend,
            stats,
        });
    }

    /// The state database whose size is reported.
    pub fn set_state_db(&self, path: PathBuf) {
        *self.state_db.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    pub fn set_readiness(&self, r: Readiness) {
        *self.readiness.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }

    fn service(&self) -> std::sync::MutexGuard<'_, Service> {
        self.service.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A round of a service loop starts.
    pub fn round_started(&self) {
        self.service().running_since = Some(Instant::now());
    }

    /// A round of a service loop ended, how long it took and what it changed. A round that ran
    /// to its end (also [`RoundResult::Partial`]) counts as a success for `/readyz`: the loop
    /// works; its failed keys show in `s3ferry_objects_total{outcome="fail"}`.
    pub fn round(&self, result: RoundResult, took: Duration, changes: RoundChanges) {
        let mut s = self.service();
        s.running_since = None;
        let secs = took.as_secs_f64();
        match result {
            RoundResult::Ok => s.rounds_ok += 1,
            RoundResult::Partial => s.rounds_partial += 1,
            RoundResult::Failed => s.rounds_failed += 1,
        }
        let ok = result != RoundResult::Failed;
        if ok {
            s.last_ok = Some(Instant::now());
            s.last_ok_wall = Some(SystemTime::now());
        }
        s.last_round_ok = Some(ok);
        for (i, le) in ROUND_BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.round_buckets[i] += 1;
            }
        }
        s.round_seconds += secs;
        s.changes_up += changes.up;
        s.changes_down += changes.down;
        s.deletes_local += changes.deleted_local;
        s.deletes_remote += changes.deleted_remote;
        s.conflicts += changes.conflicts;
    }

    /// The lease of a loop was taken (`true`) or let go.
    pub fn lease_held(&self, held: bool) {
        self.lease.store(i64::from(held), Ordering::Relaxed);
    }

    /// A worker's receive from its queue succeeded (with or without a message).
    pub fn received(&self) {
        self.service().last_receive = Some(Instant::now());
    }

    /// A worker took a shard (`Some(now)`), extended its visibility (`Some(now)`), or let it go.
    pub fn heartbeat(&self, at: Option<Instant>) {
        self.service().beat = at;
    }

    /// A worker finished a shard.
    pub fn shard(&self, ok: bool) {
        let mut s = self.service();
        if ok {
            s.shards_done += 1;
        } else {
            s.shards_failed += 1;
        }
    }

    /// `/readyz`: ready or not, and why.
    pub fn ready(&self) -> (bool, String) {
        self.ready_at(Instant::now())
    }

    /// [`Metrics::ready`] as it is at `now`.
    pub fn ready_at(&self, now: Instant) -> (bool, String) {
        let since = |t: Instant| now.saturating_duration_since(t);
        let r = *self.readiness.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.service();
        match r {
            Readiness::Running => (true, "running".into()),
            Readiness::Rounds { within } => {
                let Some(ok) = s.last_ok else {
                    return (false, "no round has succeeded yet".into());
                };
                let ago = since(ok);
                if ago <= within {
                    let last = if s.last_round_ok == Some(false) {
                        " (the last one failed)"
                    } else {
                        ""
                    };
                    return (
                        true,
                        format!("a round succeeded {:.0} s ago{last}", ago.as_secs_f64()),
                    );
                }
                match s.running_since {
                    // Started while the loop was healthy: a long round is work, not a fault.
                    Some(t) if since(ok).saturating_sub(since(t)) <= within => (
                        true,
                        format!(
                            "a round has been running for {:.0} s",
                            since(t).as_secs_f64()
                        ),
                    ),
                    _ => (
                        false,
                        format!(
                            "no round has succeeded in the last {} s (last {:.0} s ago)",
                            within.as_secs(),
                            ago.as_secs_f64()
                        ),
                    ),
                }
            }
            Readiness::Receiving { within, lease } => {
                if let Some(b) = s.beat.filter(|b| since(*b) <= lease) {
                    return (
                        true,
                        format!(
                            "a shard in hand, its lease extended {:.0} s ago",
                            since(b).as_secs_f64()
                        ),
                    );
                }
                match s.last_receive {
                    Some(t) if since(t) <= within => (true, "receiving".into()),
                    Some(t) => (
                        false,
                        format!(
                            "no receive from the queue has succeeded for {:.0} s",
                            since(t).as_secs_f64()
                        ),
                    ),
                    None => (false, "no receive from the queue has succeeded yet".into()),
                }
            }
        }
    }

    /// Every metric now, in a form both renderers take.
    pub fn snapshot(&self) -> Vec<Family> {
        let job = self.job().to_string();
        let jl = || vec![("command", job.clone())];
        let mut out = Vec::new();

        let mut objects = Family::new(
            "s3ferry_objects_total",
            "Items that ended, by outcome (copy, delete, skip, fail, ...): the summary's counts.",
            Kind::Counter,
            Emf::new("Objects", "Count"),
        );
        let mut bytes = Family::new(
            "s3ferry_object_bytes_total",
            "Size of the items that ended, by outcome.",
            Kind::Counter,
            Emf::new("ObjectBytes", "Bytes"),
        );
        for o in Outcome::ALL {
            let i = &self.items[o.index()];
            let labels = vec![
                ("command", job.clone()),
                ("outcome", o.as_str().to_string()),
            ];
            objects.push(labels.clone(), i.count.load(Ordering::Relaxed) as f64);
            bytes.push(labels, i.bytes.load(Ordering::Relaxed) as f64);
        }
        out.push(objects);
        out.push(bytes);
        let simple: [(&'static str, &'static str, Kind, Emf, f64); 6] = [
            (
                "s3ferry_planned_objects_total",
                "Items planned so far (listing may still be running).",
                Kind::Counter,
                Emf::new("PlannedObjects", "Count"),
                self.planned_objects.load(Ordering::Relaxed) as f64,
            ),
            (
                "s3ferry_planned_bytes_total",
                "Bytes of the items planned so far.",
                Kind::Counter,
                Emf::new("PlannedBytes", "Bytes"),
                self.planned_bytes.load(Ordering::Relaxed) as f64,
            ),
            (
                "s3ferry_transferred_bytes_total",
                "Bytes moved so far (uploaded, downloaded or copied), as they move.",
                Kind::Counter,
                Emf::new("TransferredBytes", "Bytes"),
                self.transferred_bytes.load(Ordering::Relaxed) as f64,
            ),
            (
                "s3ferry_item_retries_total",
                "Items tried once more by the run loop's end-of-run retry pass.",
                Kind::Counter,
                Emf::new("ItemRetries", "Count"),
                self.item_retries.load(Ordering::Relaxed) as f64,
            ),
            (
                "s3ferry_objects_in_flight",
                "Items the run loop is working on now.",
                Kind::Gauge,
                Emf::new("InFlight", "Count"),
                self.in_flight.load(Ordering::Relaxed).max(0) as f64,
            ),
            (
                "s3ferry_listing_complete",
                "1 once every item of the run has been planned (the totals are final).",
                Kind::Gauge,
                Emf::none(),
                f64::from(u8::from(self.listing_done.load(Ordering::Relaxed))),
            ),
        ];
        for (name, help, kind, emf, v) in simple {
            let mut f = Family::new(name, help, kind, emf);
            f.push(jl(), v);
            out.push(f);
        }
        self.store_families(&mut out);
        self.service_families(&mut out, &jl);

        let mut db = Family::new(
            "s3ferry_state_db_bytes",
            "Size of the state database (with its write-ahead log).",
            Kind::Gauge,
            Emf::new("StateDbBytes", "Bytes"),
        );
        if let Some(p) = self
            .state_db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
            let wal = PathBuf::from(format!("{}-wal", p.display()));
            db.push(jl(), (size(&p) + size(&wal)) as f64);
        }
        out.push(db);
        let mut info = Family::new(
            "s3ferry_build_info",
            "Always 1; the version of the running s3ferry as a label.",
            Kind::Gauge,
            Emf::none(),
        );
        info.push(
            vec![("version", env!("CARGO_PKG_VERSION").to_string())],
            1.0,
        );
        out.push(info);
        let mut start = Family::new(
            "s3ferry_start_time_seconds",
            "When the command started, in seconds since the Unix epoch.",
            Kind::Gauge,
            Emf::none(),
        );
        start.push(jl(), unix_secs(self.started));
        out.push(start);
        out.retain(|f| !f.samples.is_empty());
        out
    }

    fn store_families(&self, out: &mut Vec<Family>) {
        let stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let mut req = std::collections::BTreeMap::<(&str, &str, &str, &str), (u64, u64)>::new();
        let mut throttled = 0u64;
        let mut limits = std::collections::BTreeMap::<(&str, &str), usize>::new();
        for (side, backend, g) in self.limits.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Some(l) = g.limit() {
                *limits.entry((*side, *backend)).or_default() += l;
            }
        }
        for s in stores.iter() {
            for ((op, result), c) in s.stats.by_operation() {
                let e = req.entry((s.side, s.backend, op, result)).or_default();
                e.0 += c.requests;
                e.1 += c.retries;
            }
            throttled += s.stats.throttles();
        }
        drop(stores);
        let job = self.job().to_string();
        let mut requests = Family::new(
            "s3ferry_requests_total",
            "Requests to the stores, by side, backend (s3, local), operation and result (ok, or the error class).",
            Kind::Counter,
            Emf::new("Requests", "Count"),
        );
        let mut retries = Family::new(
            "s3ferry_request_retries_total",
            "Failed requests that were tried again, by operation and error class.",
            Kind::Counter,
            Emf::new("RequestRetries", "Count"),
        );
        for ((side, backend, op, result), (n, r)) in req {
            let l = vec![
                ("command", job.clone()),
                ("side", side.to_string()),
                ("backend", backend.to_string()),
                ("operation", op.to_string()),
                ("result", result.to_string()),
            ];
            requests.push(l.clone(), n as f64);
            if r > 0 {
                retries.push(l, r as f64);
            }
        }
        let mut thr = Family::new(
            "s3ferry_throttled_requests_total",
            "Requests the server answered with a throttle (503 SlowDown and friends).",
            Kind::Counter,
            Emf::new("Throttles", "Count"),
        );
        thr.push(vec![("command", job.clone())], throttled as f64);
        let mut conc = Family::new(
            "s3ferry_concurrency_limit",
            "The adaptive concurrency limit now, summed over the open stores of a side and backend.",
            Kind::Gauge,
            Emf::new("ConcurrencyLimit", "Count"),
        );
        for ((side, backend), l) in limits {
            conc.push(
                vec![
                    ("command", job.clone()),
                    ("side", side.to_string()),
                    ("backend", backend.to_string()),
                ],
                l as f64,
            );
        }
        out.extend([requests, retries, thr, conc]);
    }

    fn service_families(
        &self,
        out: &mut Vec<Family>,
        jl: &dyn Fn() -> Vec<(&'static str, String)>,
    ) {
        let s = self.service();
        let readiness = *self.readiness.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(readiness, Readiness::Rounds { .. }) {
            let mut rounds = Family::new(
                "s3ferry_rounds_total",
                "Rounds of the loop that ended, by result (ok, partial: some keys failed, failed).",
                Kind::Counter,
                Emf::new("Rounds", "Count"),
            );
            for (r, n) in [
                ("ok", s.rounds_ok),
                ("partial", s.rounds_partial),
                ("failed", s.rounds_failed),
            ] {
                let mut l = jl();
                l.push(("result", r.to_string()));
                rounds.push(l, n as f64);
            }
            out.push(rounds);
            let mut dur = Family::new(
                "s3ferry_round_duration_seconds",
                "How long rounds took.",
                Kind::Histogram,
                Emf::new("RoundSeconds", "Seconds"),
            );
            dur.samples.push(Sample {
                labels: jl(),
                value: Value::Hist {
                    buckets: ROUND_BUCKETS
                        .iter()
                        .copied()
                        .zip(s.round_buckets.iter().copied())
                        .collect(),
                    sum: s.round_seconds,
                    count: s.rounds_ok + s.rounds_partial + s.rounds_failed,
                },
            });
            out.push(dur);
            let mut changes = Family::new(
                "s3ferry_round_changes_total",
                "What rounds changed: copies up and down, deletes on each side.",
                Kind::Counter,
                Emf::new("Changes", "Count"),
            );
            for (c, n) in [
                ("up", s.changes_up),
                ("down", s.changes_down),
                ("delete_local", s.deletes_local),
                ("delete_remote", s.deletes_remote),
            ] {
                let mut l = jl();
                l.push(("change", c.to_string()));
                changes.push(l, n as f64);
            }
            out.push(changes);
            let mut conflicts = Family::new(
                "s3ferry_round_conflicts_total",
                "Keys changed on both sides since the last round (resolved by --conflict).",
                Kind::Counter,
                Emf::new("Conflicts", "Count"),
            );
            conflicts.push(jl(), s.conflicts as f64);
            out.push(conflicts);
            let mut last = Family::new(
                "s3ferry_last_successful_round_timestamp_seconds",
                "When the last successful round ended, in seconds since the Unix epoch.",
                Kind::Gauge,
                Emf::none(),
            );
            if let Some(t) = s.last_ok_wall {
                last.push(jl(), unix_secs(t));
            }
            out.push(last);
            let lease = self.lease.load(Ordering::Relaxed);
            if lease >= 0 {
                let mut f = Family::new(
                    "s3ferry_lease_held",
                    "1 while this node holds the lease on the remote prefix.",
                    Kind::Gauge,
                    Emf::new("LeaseHeld", "None"),
                );
                f.push(jl(), lease as f64);
                out.push(f);
            }
        }
        if let Readiness::Receiving { .. } = readiness {
            let mut shards = Family::new(
                "s3ferry_worker_shards_total",
                "Shards (or chunks) a worker finished, by result (done or failed).",
                Kind::Counter,
                Emf::new("Shards", "Count"),
            );
            for (r, n) in [("done", s.shards_done), ("failed", s.shards_failed)] {
                let mut l = jl();
                l.push(("result", r.to_string()));
                shards.push(l, n as f64);
            }
            out.push(shards);
            let mut beat = Family::new(
                "s3ferry_worker_heartbeat_age_seconds",
                "Time since the shard in hand was taken or its lease last extended (0: none in hand).",
                Kind::Gauge,
                Emf::new("HeartbeatAge", "Seconds"),
            );
            beat.push(jl(), s.beat.map_or(0.0, |t| t.elapsed().as_secs_f64()));
            out.push(beat);
            let mut recv = Family::new(
                "s3ferry_worker_last_receive_age_seconds",
                "Time since the last successful receive from the queue.",
                Kind::Gauge,
                Emf::new("ReceiveAge", "Seconds"),
            );
            if let Some(t) = s.last_receive {
                recv.push(jl(), t.elapsed().as_secs_f64());
            }
            out.push(recv);
        }
    }
}

/// What one round changed (for [`Metrics::round`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundChanges {
    pub up: u64,
    pub down: u64,
    pub deleted_local: u64,
    pub deleted_remote: u64,
    pub conflicts: u64,
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// How a family appears in CloudWatch: its metric name and unit, or not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emf {
    pub name: Option<&'static str>,
    pub unit: &'static str,
}

impl Emf {
    fn new(name: &'static str, unit: &'static str) -> Self {
        Self {
            name: Some(name),
            unit,
        }
    }
    fn none() -> Self {
        Self {
            name: None,
            unit: "None",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Num(f64),
    /// Cumulative counts per upper bound (`le`), the sum of the observations and their count.
    Hist {
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// One metric: its name (Prometheus conventions), help, type, CloudWatch name, samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub emf: Emf,
    pub samples: Vec<Sample>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: Kind, emf: Emf) -> Self {
        Self {
            name,
            help,
            kind,
            emf,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: Vec<(&'static str, String)>, v: f64) {
        self.samples.push(Sample {
            labels,
            value: Value::Num(v),
        });
    }
}

/// The families in the Prometheus text exposition format (version 0.0.4).
pub fn prometheus_text(families: &[Family]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in families {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for s in &f.samples {
            match &s.value {
                Value::Num(v) => {
                    let _ = writeln!(out, "{}{} {}", f.name, labels(&s.labels, None), num(*v));
                }
                Value::Hist {
                    buckets,
                    sum,
                    count,
                } => {
                    for (le, n) in buckets {
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {n}",
                            f.name,
                            labels(&s.labels, Some(&num(*le)))
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {count}",
                        f.name,
                        labels(&s.labels, Some("+Inf"))
                    );
                    let _ = writeln!(
                        out,
                        "{}_sum{} {}",
                        f.name,
                        labels(&s.labels, None),
                        num(*sum)
                    );
                    let _ = writeln!(out, "{}_count{} {count}", f.name, labels(&s.labels, None));
                }
            }
        }
    }
    out
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn labels(l: &[(&'static str, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// CloudWatch Embedded Metric Format: one JSON object per line, one line per label set. Counters
/// are the increase since `prev` (CloudWatch sums them per period), gauges the value now, a
/// histogram its count and sum increases. Lines whose counters did not move and that have no
/// gauge are left out, so an idle service writes little.
pub struct EmfWriter {
    namespace: String,
    prev: std::collections::HashMap<String, f64>,
}

impl EmfWriter {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            prev: Default::default(),
        }
    }

    /// The lines for `families` at `now` (ms since the epoch), as increases since the last call.
    pub fn lines(&mut self, families: &[Family], now_ms: u64) -> Vec<serde_json::Value> {
        use std::collections::BTreeMap;
        // label set -> (metric name -> (value, unit, counter?))
        type Metrics = BTreeMap<String, (f64, &'static str, bool)>;
        let mut by_labels: BTreeMap<Vec<(&'static str, String)>, Metrics> = BTreeMap::new();
        for f in families {
            let Some(name) = f.emf.name else { continue };
            for s in &f.samples {
                let id = format!("{}{}", f.name, labels(&s.labels, None));
                let m = by_labels.entry(s.labels.clone()).or_default();
                match (&s.value, f.kind) {
                    (Value::Num(v), Kind::Counter) => {
                        let d = self.delta(&id, *v);
                        m.insert(name.to_string(), (d, f.emf.unit, true));
                    }
                    (Value::Num(v), _) => {
                        m.insert(name.to_string(), (*v, f.emf.unit, false));
                    }
                    (Value::Hist { sum, count, .. }, _) => {
                        let dc = self.delta(&format!("{id}:count"), *count as f64);
                        let ds = self.delta(&format!("{id}:sum"), *sum);
                        m.insert(format!("{name}Count"), (dc, "Count", true));
                        m.insert(format!("{name}Sum"), (ds, f.emf.unit, true));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (labels, metrics) in by_labels {
            if metrics
                .values()
                .all(|(v, _, counter)| *counter && *v == 0.0)
            {
                continue;
            }
            let mut line = serde_json::Map::new();
            let dims: Vec<String> = labels.iter().map(|(k, _)| dimension_name(k)).collect();
            for ((_, v), d) in labels.iter().zip(&dims) {
                line.insert(d.clone(), v.clone().into());
            }
            let defs: Vec<serde_json::Value> = metrics
                .iter()
                .map(|(n, (_, unit, _))| serde_json::json!({"Name": n, "Unit": unit}))
                .collect();
            for (n, (v, _, _)) in &metrics {
                line.insert(n.clone(), serde_json::json!(v));
            }
            line.insert(
                "_aws".into(),
                serde_json::json!({
                    "Timestamp": now_ms,
                    "CloudWatchMetrics": [{
                        "Namespace": self.namespace,
                        "Dimensions": [dims],
                        "Metrics": defs,
                    }],
                }),
            );
            out.push(serde_json::Value::Object(line));
        }
        out
    }

    fn delta(&mut self, id: &str, now: f64) -> f64 {
        let before = self.prev.insert(id.to_string(), now).unwrap_or(0.0);
        (now - before).max(0.0)
    }
}

/// `job` -> `Job`, `operation` -> `Operation`: CloudWatch's dimension names.
fn dimension_name(label: &str) -> String {
    label
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3ferry_store::layer::RetryStore;
    use s3ferry_store::memory::MemoryStore;
    use s3ferry_store::Store;

    fn value(fams: &[Family], name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let f = fams.iter().find(|f| f.name == name)?;
        f.samples.iter().find_map(|s| {
            let hit = want
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v));
            match (&s.value, hit) {
                (Value::Num(v), true) => Some(*v),
                _ => None,
            }
        })
    }

    #[tokio::test]
    async fn requests_are_counted_by_operation_and_result_from_the_stores() {
        let m = Metrics::new();
        m.set_job("sync");
        let mem: s3ferry_store::DynStore = Arc::new(MemoryStore::new());
        let r = RetryStore::new(mem);
        m.add_store("destination", "s3", r.stats(), None);
        m.add_store("destination", "s3", r.stats(), None); // counted once
        r.put("a", bytes::Bytes::from_static(b"x"), Default::default())
            .await
            .unwrap();
        assert!(r.head("missing").await.is_err());
        let f = m.snapshot();
        let put = value(
            &f,
            "s3ferry_requests_total",
            &[("operation", "put"), ("result", "ok")],
        );
        assert_eq!(put, Some(1.0));
        let head = value(
            &f,
            "s3ferry_requests_total",
            &[("operation", "head"), ("result", "not-found")],
        );
        assert_eq!(head, Some(1.0));
        assert_eq!(
            value(&f, "s3ferry_throttled_requests_total", &[]),
            Some(0.0)
        );
    }

    #[test]
    fn items_count_by_outcome_and_render_as_prometheus_text() {
        let m = Metrics::new();
        m.set_job("cp");
        m.item(Outcome::Copy, 10);
        m.item(Outcome::Copy, 5);
        m.item(Outcome::Fail, 7);
        let f = m.snapshot();
        assert_eq!(
            value(&f, "s3ferry_objects_total", &[("outcome", "copy")]),
            Some(2.0)
        );
        assert_eq!(
            value(&f, "s3ferry_object_bytes_total", &[("outcome", "copy")]),
            Some(15.0)
        );
        let text = prometheus_text(&f);
        assert!(
            text.contains("s3ferry_objects_total{command=\"cp\",outcome=\"fail\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE s3ferry_objects_total counter\n"));
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let m = Metrics::new();
        m.set_readiness(Readiness::Rounds {
            within: Duration::from_secs(30),
        });
        m.round(
            RoundResult::Ok,
            Duration::from_millis(300),
            RoundChanges::default(),
        );
        m.round(
            RoundResult::Failed,
            Duration::from_secs(20),
            RoundChanges::default(),
        );
        let text = prometheus_text(&m.snapshot());
        for line in [
            "s3ferry_round_duration_seconds_bucket{command=\"s3ferry\",le=\"0.1\"} 0",
            "s3ferry_round_duration_seconds_bucket{command=\"s3ferry\",le=\"0.5\"} 1",
            "s3ferry_round_duration_seconds_bucket{command=\"s3ferry\",le=\"30\"} 2",
            "s3ferry_round_duration_seconds_bucket{command=\"s3ferry\",le=\"+Inf\"} 2",
            "s3ferry_round_duration_seconds_count{command=\"s3ferry\"} 2",
            "s3ferry_rounds_total{command=\"s3ferry\",result=\"failed\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        // The last round failed, but one succeeded within the window.
        let (ready, why) = m.ready();
        assert!(ready && why.contains("the last one failed"), "{why}");
        m.round(
            RoundResult::Partial,
            Duration::from_millis(1),
            RoundChanges::default(),
        );
        assert!(m.ready().0, "a round that ran to its end");
        // No success within the window: not ready.
        assert!(!m.ready_at(Instant::now() + Duration::from_secs(60)).0);
        // Before the first success, a running round does not make the loop ready.
        let fresh = Metrics::new();
        fresh.set_readiness(Readiness::Rounds {
            within: Duration::from_secs(60),
        });
        assert_eq!(fresh.ready(), (false, "no round has succeeded yet".into()));
        fresh.round_started();
        assert!(!fresh.ready().0);
        // A long round that started while the loop was healthy keeps it ready.
        let m = Metrics::new();
        let min = Duration::from_secs(60);
        m.set_readiness(Readiness::Rounds { within: min });
        m.round(RoundResult::Ok, Duration::ZERO, RoundChanges::default());
        m.round_started();
        let later = Instant::now() + min * 10;
        let (ready, why) = m.ready_at(later);
        assert!(
            ready && why.starts_with("a round has been running"),
            "{why}"
        );
        // Not once it has ended without success.
        m.round(RoundResult::Failed, Duration::ZERO, RoundChanges::default());
        assert!(!m.ready_at(later).0);
    }

    #[test]
    fn emf_counters_are_increases_and_idle_lines_are_left_out() {
        let m = Metrics::new();
        m.set_job("sync");
        let mut w = EmfWriter::new("s3ferry");
        m.item(Outcome::Copy, 4);
        let first = w.lines(&m.snapshot(), 1);
        let copy = |lines: &[serde_json::Value]| {
            lines.iter().find(|l| l["Outcome"] == "copy").map(|l| {
                (
                    l["Objects"].as_f64().unwrap(),
                    l["ObjectBytes"].as_f64().unwrap(),
                )
            })
        };
        assert_eq!(copy(&first), Some((1.0, 4.0)));
        let second = w.lines(&m.snapshot(), 2);
        assert_eq!(copy(&second), None, "nothing moved: no copy line");
        m.item(Outcome::Copy, 6);
        assert_eq!(copy(&w.lines(&m.snapshot(), 3)), Some((1.0, 6.0)));
        let l = &first[0];
        assert_eq!(l["_aws"]["CloudWatchMetrics"][0]["Namespace"], "s3ferry");
        let dims = &l["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0];
        for d in dims.as_array().unwrap() {
            assert!(l[d.as_str().unwrap()].is_string(), "{l}");
        }
    }

    #[test]
    fn a_worker_is_ready_while_it_receives_or_holds_a_shard_it_keeps() {
        let m = Metrics::new();
        m.set_readiness(Readiness::Receiving {
            within: Duration::from_secs(60),
            lease: Duration::from_secs(300),
        });
        assert!(!m.ready().0);
        m.received();
        assert_eq!(m.ready(), (true, "receiving".into()));
        // Busy with a long shard: no receive for a while, but the lease is kept.
        let later = Instant::now() + Duration::from_secs(120);
        assert!(!m.ready_at(later).0);
        m.heartbeat(Some(Instant::now()));
        let (ready, why) = m.ready_at(later);
        assert!(ready && why.starts_with("a shard in hand"), "{why}");
        m.heartbeat(None);
        assert!(!m.ready_at(later).0);
    }
}
