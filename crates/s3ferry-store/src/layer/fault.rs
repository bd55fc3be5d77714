//! Deterministic fault injection for tests and soak runs (feature `fault`).
//!
//! A [`FaultStore`] fails chosen calls of the store it wraps, damages GET bodies, cuts listings
//! short, adds latency, or fails calls at random with a seeded RNG. The rules come from a spec
//! string, so the CLI can take them from an environment variable (`S3FERRY_FAULTS`).
//!
//! # Spec grammar
//!
//! ```text
//! spec    = rule *( ";" rule )               blanks around tokens and empty rules are ignored
//! rule    = op ":" action [ "@" when ]
//!         / "chaos=" P [ ",seed=" N ]        at most one chaos rule
//! op      = list | check | head | get | put | get_tags | create_multipart | upload_part
//!         / upload_part_copy | complete_multipart | abort_multipart | list_multipart | copy
//!         / delete_many | any
//! action  = kind                             the call fails with this kind (inner store not called)
//!         / kind "=" N                       get: the body fails after N bytes;
//!                                            list: the listing fails after N entries
//!         / "truncate=" N                    get: the body ends early after N bytes (no error)
//!         / "stall=" N                       get: the body sends N bytes, then nothing, forever
//!         / "flip=" N                        get: flip the lowest bit of body byte N (0-based)
//!         / "latency=" DURATION              sleep this long before the call (e.g. 5ms, 2s, 500us)
//! kind    = throttle | 503                   Throttled, HTTP 503 SlowDown
//!         / transient | 500                  Transient, HTTP 500 InternalError
//!         / reset                            Transient, connection reset
//!         / timeout                          Transient, timeout
//!         / lost                             the inner call IS made, then Transient "response lost"
//!                                            (a write that happened but whose answer never came)
//!         / precondition | 412               PreconditionFailed
//!         / conflict | 409                   Conflict (ConditionalRequestConflict)
//!         / notfound | 404                   NotFound
//!         / denied | 403                     PermissionDenied
//!         / corrupt | 400                    Corrupt (BadDigest)
//!         / unsupported | 501                Unsupported (NotImplemented: a server without
//!                                            the operation, e.g. GetObjectTagging on Garage)
//! when    = K                                only the K-th call (1-based)
//!         / K "x" M                          M calls: the K-th to the (K+M-1)-th
//!         / K "+"                            the K-th call and every later one
//!                                            (no "@": every call)
//! ```
//!
//! Calls are counted per op across all keys, in the order they reach this layer, with atomics
//! (so "the 3rd put" is well defined under concurrency); `any` rules count calls of every op on
//! one shared counter. A listing is one `list` call however many pages it has. Byte offsets of
//! GET body faults are relative to the start of the returned body (a ranged GET's first byte
//! is offset 0).
//!
//! When several rules match one call, every matching latency is slept, the first matching
//! failure (in spec order) is returned, and all matching body faults apply. Chaos fails a call
//! that no rule failed with probability `P`, as `Throttled` or `Transient` with equal odds;
//! without `seed`, a random seed is chosen and logged (and available from
//! [`FaultStore::chaos_seed`]) so a failing soak run can be replayed.
//!
//! Every injected error carries the op and key (listing errors carry no key, since a keyless
//! error is what ends a listing; their message names the prefix) and says "injected".
//!
//! Example: `put:throttle@2x3; get:truncate=1000@1; get:reset=4096@2; list:transient=500@1;
//! get:flip=10@3; any:latency=5ms; chaos=0.01,seed=7`.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    ByteStream, Capabilities, CopyOptions, CopySource, DynStore, ErrorKind, FileRange, GetOptions,
    GetResult, HttpInfo, ListOptions, MultipartUpload, ObjectMeta, PartInfo, PartLayout, PutMode,
    PutOptions, PutResult, Result, Store, StoreError,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    List,
    Check,
    Head,
    Get,
    Put,
    GetTags,
    CreateMultipart,
    UploadPart,
    UploadPartCopy,
    CompleteMultipart,
    AbortMultipart,
    ListMultipart,
    Copy,
    DeleteMany,
    Any,
}

const OPS: [(Op, &str); 15] = [
    (Op::List, "list"),
    (Op::Check, "check"),
    (Op::Head, "head"),
    (Op::Get, "get"),
    (Op::Put, "put"),
    (Op::GetTags, "get_tags"),
    (Op::CreateMultipart, "create_multipart"),
    (Op::UploadPart, "upload_part"),
    (Op::UploadPartCopy, "upload_part_copy"),
    (Op::CompleteMultipart, "complete_multipart"),
    (Op::AbortMultipart, "abort_multipart"),
    (Op::ListMultipart, "list_multipart"),
    (Op::Copy, "copy"),
    (Op::DeleteMany, "delete_many"),
    (Op::Any, "any"),
];

impl Op {
    fn name(self) -> &'static str {
        OPS[self as usize].1
    }
    fn parse(s: &str) -> Option<Self> {
        OPS.iter().find(|(_, n)| *n == s).map(|(o, _)| *o)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailKind {
    Throttle,
    Transient,
    Reset,
    Timeout,
    Lost,
    Precondition,
    Conflict,
    NotFound,
    Denied,
    Corrupt,
    Unsupported,
}

/// Each kind's names; the first is the canonical one.
const KINDS: [(FailKind, &[&str]); 11] = [
    (FailKind::Throttle, &["throttle", "503"]),
    (FailKind::Transient, &["transient", "500"]),
    (FailKind::Reset, &["reset"]),
    (FailKind::Timeout, &["timeout"]),
    (FailKind::Lost, &["lost"]),
    (FailKind::Precondition, &["precondition", "412"]),
    (FailKind::Conflict, &["conflict", "409"]),
    (FailKind::NotFound, &["notfound", "404"]),
    (FailKind::Denied, &["denied", "403"]),
    (FailKind::Corrupt, &["corrupt", "400"]),
    (FailKind::Unsupported, &["unsupported", "501"]),
];

impl FailKind {
    fn name(self) -> &'static str {
        KINDS[self as usize].1[0]
    }
    fn parse(s: &str) -> Option<Self> {
        KINDS
            .iter()
            .find(|(_, names)| names.contains(&s))
            .map(|(k, _)| *k)
    }

    /// The injected error; `detail` follows "injected <what>" in the message.
    fn error(self, op: &'static str, key: Option<&str>, detail: &str) -> StoreError {
        use ErrorKind as K;
        let (kind, status, code, what) = match self {
            Self::Throttle => (K::Throttled, Some(503), Some("SlowDown"), "throttle"),
            Self::Transient => (
                K::Transient,
                Some(500),
                Some("InternalError"),
                "internal error",
            ),
            Self::Reset => (K::Transient, None, None, "connection reset"),
            Self::Timeout => (K::Transient, None, None, "timeout"),
            Self::Lost => (
                K::Transient,
                None,
                None,
                "lost response (the request was applied)",
            ),
            Self::Precondition => (
                K::PreconditionFailed,
                Some(412),
                Some("PreconditionFailed"),
                "precondition failure",
            ),
            Self::Conflict => (
                K::Conflict,
                Some(409),
                Some("ConditionalRequestConflict"),
                "conflict",
            ),
            Self::NotFound => (K::NotFound, Some(404), Some("NoSuchKey"), "not-found"),
            Self::Denied => (
                K::PermissionDenied,
                Some(403),
                Some("AccessDenied"),
                "access denied",
            ),
            Self::Corrupt => (K::Corrupt, Some(400), Some("BadDigest"), "bad digest"),
            Self::Unsupported => (
                K::Unsupported,
                Some(501),
                Some("NotImplemented"),
                "not implemented",
            ),
        };
        let mut e = StoreError::new(kind, op, format!("injected {what}{detail}"));
        if let Some(k) = key {
            e = e.with_key(k);
        }
        if status.is_some() {
            e = e.with_http(HttpInfo {
                status,
                code: code.map(String::from),
                request_id: None,
                retry_after: None,
            });
        }
        e
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Fail(FailKind),
    /// Fail the stream after N bytes (get) or N entries (list).
    FailAfter(FailKind, u64),
    Truncate(u64),
    /// get: deliver N bytes, then never send another (no error, no end).
    Stall(u64),
    Flip(u64),
    Latency(Duration),
}

/// Which calls (1-based) a rule applies to: `from`, and `count` calls from there (`None` = all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct When {
    from: u64,
    count: Option<u64>,
}

impl When {
    const ALWAYS: When = When {
        from: 1,
        count: None,
    };

    fn matches(self, n: u64) -> bool {
        n >= self.from && self.count.is_none_or(|c| n - self.from < c)
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Rule {
    op: Op,
    action: Action,
    when: When,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Chaos {
    p: f64,
    seed: Option<u64>,
}

/// A parsed fault spec; see the module docs for the grammar. Parse with `str::parse`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultSpec {
    rules: Vec<Rule>,
    chaos: Option<Chaos>,
}

/// A spec string that does not follow the grammar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad fault rule {rule:?}: {reason}")]
pub struct FaultSpecError {
    /// The offending rule as written.
    pub rule: String,
    pub reason: String,
}

impl FaultSpec {
    /// True if the spec injects nothing.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.chaos.is_none()
    }
}

fn parse_u64(s: &str, what: &str) -> Result<u64, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{what} must be a whole number, not {s:?}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad =
        || format!("latency must be a whole number with a unit us, ms or s (e.g. 5ms), not {s:?}");
    let n: u64 = num.parse().map_err(|_| bad())?;
    match unit {
        "us" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(bad()),
    }
}

fn parse_when(s: &str) -> Result<When, String> {
    let s = s.trim();
    let (from, count) = if let Some(k) = s.strip_suffix('+') {
        (k, None)
    } else if let Some((k, m)) = s.split_once('x') {
        (k, Some(parse_u64(m, "the call count after 'x'")?))
    } else {
        (s, Some(1))
    };
    let from = parse_u64(from, "the call number after '@'")?;
    if from == 0 {
        return Err("calls are numbered from 1".into());
    }
    if count == Some(0) {
        return Err("the call count after 'x' must be at least 1".into());
    }
    Ok(When { from, count })
}

fn parse_action(s: &str) -> Result<Action, String> {
    let (name, value) = match s.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (s.trim(), None),
    };
    let need = |what: &str| value.ok_or_else(|| format!("{name} needs a value: {name}={what}"));
    match name {
        "truncate" => Ok(Action::Truncate(parse_u64(need("BYTES")?, "truncate")?)),
        "stall" => Ok(Action::Stall(parse_u64(need("BYTES")?, "stall")?)),
        "flip" => Ok(Action::Flip(parse_u64(need("OFFSET")?, "flip")?)),
        "latency" => Ok(Action::Latency(parse_duration(need("DURATION")?)?)),
        _ => {
            let Some(kind) = FailKind::parse(name) else {
                let kinds: Vec<&str> = KINDS.iter().map(|(_, n)| n[0]).collect();
                return Err(format!(
                    "unknown action {name:?} (expected truncate=N, flip=N, latency=D or a kind: {})",
                    kinds.join(", ")
                ));
            };
            match value {
                None => Ok(Action::Fail(kind)),
                Some(v) => Ok(Action::FailAfter(kind, parse_u64(v, name)?)),
            }
        }
    }
}

fn parse_rule(s: &str) -> Result<Rule, String> {
    let Some((op, rest)) = s.split_once(':') else {
        return Err("expected OP:ACTION[@WHEN] or chaos=P[,seed=N]".into());
    };
    let op = op.trim();
    let op = Op::parse(op).ok_or_else(|| {
        let ops: Vec<&str> = OPS.iter().map(|(_, n)| *n).collect();
        format!("unknown op {op:?} (expected one of: {})", ops.join(", "))
    })?;
    let (action, when) = match rest.split_once('@') {
        Some((a, w)) => (a, parse_when(w)?),
        None => (rest, When::ALWAYS),
    };
    let action = parse_action(action)?;
    match action {
        Action::Truncate(_) | Action::Flip(_) | Action::Stall(_) if op != Op::Get => {
            return Err("truncate, stall and flip apply to get bodies only".into());
        }
        Action::FailAfter(FailKind::Lost, _) => return Err("lost takes no value".into()),
        Action::FailAfter(..) if !matches!(op, Op::Get | Op::List) => {
            return Err("KIND=N (fail a stream part-way) applies to get and list only".into());
        }
        Action::Fail(FailKind::Lost) if matches!(op, Op::List | Op::Any) => {
            return Err("lost applies to single requests, not list or any".into());
        }
        _ => {}
    }
    Ok(Rule { op, action, when })
}

fn parse_chaos(s: &str) -> Result<Chaos, String> {
    let mut parts = s.split(',');
    let p = parts.next().unwrap_or_default().trim();
    let p: f64 = p
        .parse()
        .map_err(|_| format!("chaos probability must be a number, not {p:?}"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!(
            "chaos probability must be between 0 and 1, not {p}"
        ));
    }
    let mut seed = None;
    for part in parts {
        match part.trim().split_once('=') {
            Some(("seed", v)) => seed = Some(parse_u64(v, "seed")?),
            _ => {
                return Err(format!(
                    "unknown chaos option {:?} (expected seed=N)",
                    part.trim()
                ))
            }
        }
    }
    Ok(Chaos { p, seed })
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = FaultSpec::default();
        for raw in s.split(';') {
            let r = raw.trim();
            if r.is_empty() {
                continue;
            }
            let err = |reason: String| FaultSpecError {
                rule: r.to_string(),
                reason,
            };
            if let Some(c) = r
                .strip_prefix("chaos")
                .and_then(|c| c.trim_start().strip_prefix('='))
            {
                if spec.chaos.is_some() {
                    return Err(err("only one chaos rule is allowed".into()));
                }
                spec.chaos = Some(parse_chaos(c).map_err(err)?);
            } else {
                spec.rules.push(parse_rule(r).map_err(err)?);
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.op.name())?;
        match self.action {
            Action::Fail(k) => write!(f, "{}", k.name())?,
            Action::FailAfter(k, n) => write!(f, "{}={n}", k.name())?,
            Action::Truncate(n) => write!(f, "truncate={n}")?,
            Action::Stall(n) => write!(f, "stall={n}")?,
            Action::Flip(n) => write!(f, "flip={n}")?,
            Action::Latency(d) => write!(f, "latency={}us", d.as_micros())?,
        }
        match self.when {
            When {
                from: 1,
                count: None,
            } => Ok(()),
            When { from, count: None } => write!(f, "@{from}+"),
            When {
                from,
                count: Some(1),
            } => write!(f, "@{from}"),
            When {
                from,
                count: Some(m),
            } => write!(f, "@{from}x{m}"),
        }
    }
}

impl fmt::Display for FaultSpec {
    /// The canonical form, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.rules.iter().map(|r| r.to_string()).collect();
        if let Some(c) = self.chaos {
            parts.push(match c.seed {
                Some(s) => format!("chaos={},seed={s}", c.p),
                None => format!("chaos={}", c.p),
            });
        }
        f.write_str(&parts.join(";"))
    }
}

/// What to do to one call.
#[derive(Default)]
struct Plan {
    latency: Duration,
    fail: Option<FailKind>,
    /// Body (get) or listing (list) faults.
    stream: Vec<Action>,
}

#[derive(Debug)]
struct Counters {
    calls: [AtomicU64; OPS.len()],
    injected: AtomicU64,
}

/// Injects faults into the store it wraps; see the module docs.
#[derive(Debug)]
pub struct FaultStore {
    inner: DynStore,
    spec: FaultSpec,
    counters: Arc<Counters>,
    chaos: Option<(f64, u64, Mutex<StdRng>)>,
}

impl FaultStore {
    pub fn new(inner: DynStore, spec: FaultSpec) -> Self {
        let chaos = spec.chaos.map(|c| {
            let seed = c.seed.unwrap_or_else(|| rand::rng().random());
            tracing::info!(p = c.p, seed, "fault injection: chaos mode");
            (c.p, seed, Mutex::new(StdRng::seed_from_u64(seed)))
        });
        let counters = Arc::new(Counters {
            calls: Default::default(),
            injected: AtomicU64::new(0),
        });
        Self {
            inner,
            spec,
            counters,
            chaos,
        }
    }

    /// Parse `spec` and wrap `inner`.
    pub fn parse(inner: DynStore, spec: &str) -> Result<Self, FaultSpecError> {
        Ok(Self::new(inner, spec.parse()?))
    }

    pub fn spec(&self) -> &FaultSpec {
        &self.spec
    }

    /// The chaos RNG seed in use, if chaos is on.
    pub fn chaos_seed(&self) -> Option<u64> {
        self.chaos.as_ref().map(|c| c.1)
    }

    /// Calls of `op` so far (`"any"` = all calls); 0 for an unknown name.
    pub fn calls(&self, op: &str) -> u64 {
        Op::parse(op).map_or(0, |o| {
            self.counters.calls[o as usize].load(Ordering::SeqCst)
        })
    }

    /// Faults injected so far (failed calls, damaged bodies, cut listings).
    pub fn injected(&self) -> u64 {
        self.counters.injected.load(Ordering::SeqCst)
    }

    fn plan(&self, op: Op) -> Plan {
        let n_op = self.counters.calls[op as usize].fetch_add(1, Ordering::SeqCst) + 1;
        let n_any = self.counters.calls[Op::Any as usize].fetch_add(1, Ordering::SeqCst) + 1;
        let mut plan = Plan::default();
        for r in &self.spec.rules {
            let n = match r.op {
                Op::Any => n_any,
                o if o == op => n_op,
                _ => continue,
            };
            if !r.when.matches(n) {
                continue;
            }
            match r.action {
                Action::Latency(d) => plan.latency += d,
                Action::Fail(k) => {
                    plan.fail.get_or_insert(k);
                }
                a => plan.stream.push(a),
            }
        }
        if let Some((p, _, rng)) = &self.chaos {
            let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
            let (hit, throttle) = (rng.random_bool(*p), rng.random_bool(0.5));
            if hit && plan.fail.is_none() {
                plan.fail = Some(if throttle {
                    FailKind::Throttle
                } else {
                    FailKind::Transient
                });
            }
        }
        plan
    }

    fn inject(&self, kind: FailKind, op: Op, key: Option<&str>, detail: &str) -> StoreError {
        inject(&self.counters, kind, op.name(), key, detail)
    }

    /// Run one single-request call under its plan.
    async fn call<T, F>(&self, op: Op, key: Option<&str>, detail: &str, f: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let plan = self.plan(op);
        if !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        match plan.fail {
            None => f.await,
            Some(FailKind::Lost) => {
                let _ = f.await;
                Err(self.inject(FailKind::Lost, op, key, detail))
            }
            Some(k) => Err(self.inject(k, op, key, detail)),
        }
    }
}

fn inject(
    counters: &Counters,
    kind: FailKind,
    op: &'static str,
    key: Option<&str>,
    detail: &str,
) -> StoreError {
    counters.injected.fetch_add(1, Ordering::SeqCst);
    let e = kind.error(op, key, detail);
    tracing::debug!(op, key, error = %e, "fault injected");
    e
}

/// A GET body with faults applied.
struct FaultBody {
    body: ByteStream,
    key: String,
    /// Bytes delivered so far.
    pos: u64,
    /// Where the body stops, and how: `None` = ends quietly (truncate).
    cut: Option<(u64, Option<FailKind>)>,
    flips: Vec<u64>,
    /// The body goes silent once this many bytes were delivered.
    stall: Option<u64>,
    counters: Arc<Counters>,
    /// Bytes were dropped from the last chunk: the next poll fires the cut.
    cut_pending: bool,
    ended: bool,
}

impl FaultBody {
    fn new(body: ByteStream, key: &str, faults: &[Action], counters: Arc<Counters>) -> Self {
        let mut cut: Option<(u64, Option<FailKind>)> = None;
        let mut flips = Vec::new();
        let mut stall: Option<u64> = None;
        for a in faults {
            let c = match *a {
                Action::Stall(n) => {
                    stall = Some(stall.map_or(n, |s| s.min(n)));
                    continue;
                }
                Action::Truncate(n) => (n, None),
                Action::FailAfter(k, n) => (n, Some(k)),
                Action::Flip(n) => {
                    flips.push(n);
                    continue;
                }
                _ => continue,
            };
            if cut.is_none_or(|(n, _)| c.0 < n) {
                cut = Some(c);
            }
        }
        Self {
            body,
            key: key.to_string(),
            pos: 0,
            cut,
            flips,
            stall,
            counters,
            cut_pending: false,
            ended: false,
        }
    }
}

impl FaultBody {
    /// The cut is reached: end the body quietly (truncate) or with the injected error.
    fn fire(&mut self) -> Option<Result<Bytes>> {
        self.ended = true;
        let (n, how) = self.cut?;
        match how {
            None => {
                self.counters.injected.fetch_add(1, Ordering::SeqCst);
                tracing::debug!(key = self.key, bytes = n, "fault injected: body truncated");
                None
            }
            Some(k) => {
                let detail = format!(" after {n} bytes of the body");
                Some(Err(inject(
                    &self.counters,
                    k,
                    "get",
                    Some(&self.key),
                    &detail,
                )))
            }
        }
    }
}

impl Stream for FaultBody {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.cut_pending {
            return Poll::Ready(self.fire());
        }
        if self.stall.is_some_and(|s| self.pos >= s) {
            // Silent forever: only the reader's idle timeout gets it out of here.
            return Poll::Pending;
        }
        let mut chunk = match self.body.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(c))) => c,
            // A body that ends at or before the cut is left alone: nothing was lost.
            other => return other,
        };
        let start = self.pos;
        if let Some(n) = self.stall {
            let room = usize::try_from(n - start).unwrap_or(usize::MAX);
            if chunk.len() > room {
                chunk.truncate(room);
                self.counters.injected.fetch_add(1, Ordering::SeqCst);
            }
        }
        if let Some((n, _)) = self.cut {
            if start >= n {
                return Poll::Ready(self.fire());
            }
            let room = usize::try_from(n - start).unwrap_or(usize::MAX);
            if chunk.len() > room {
                chunk.truncate(room);
                self.cut_pending = true;
            }
        }
        let end = start + chunk.len() as u64;
        let hits: Vec<usize> = self
            .flips
            .iter()
            .filter(|&&o| o >= start && o < end)
            .map(|&o| (o - start) as usize)
            .collect();
        if !hits.is_empty() {
            let mut b = BytesMut::from(&chunk[..]);
            for i in hits {
                b[i] ^= 1;
                self.counters.injected.fetch_add(1, Ordering::SeqCst);
            }
            chunk = b.freeze();
        }
        self.pos = end;
        Poll::Ready(Some(Ok(chunk)))
    }
}

#[async_trait]
impl Store for FaultStore {
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
        let plan = self.plan(Op::List);
        let detail = format!(" (listing prefix {:?})", opts.prefix);
        let body: BoxStream<'static, Result<ObjectMeta>> = match plan.fail {
            Some(k) => stream::iter([Err(self.inject(k, Op::List, None, &detail))]).boxed(),
            None => {
                let inner = self.inner.list(opts);
                let cut = plan.stream.iter().filter_map(|a| match a {
                    Action::FailAfter(k, n) => Some((*n, *k)),
                    _ => None,
                });
                match cut.min_by_key(|c| c.0) {
                    None => inner,
                    Some((n, kind)) => {
                        let counters = self.counters.clone();
                        let detail = format!(" after {n} entries{detail}");
                        inner
                            .scan(0u64, move |seen, item| {
                                let out = match *seen {
                                    u64::MAX => None,
                                    s if s >= n => {
                                        *seen = u64::MAX;
                                        Some(Err(inject(&counters, kind, "list", None, &detail)))
                                    }
                                    _ => {
                                        *seen += 1;
                                        Some(item)
                                    }
                                };
                                futures::future::ready(out)
                            })
                            .boxed()
                    }
                }
            }
        };
        if plan.latency.is_zero() {
            body
        } else {
            stream::once(tokio::time::sleep(plan.latency))
                .filter_map(|_| futures::future::ready(None))
                .chain(body)
                .boxed()
        }
    }

    async fn check(&self) -> Result<()> {
        let detail = format!(" (checking {})", self.inner.describe());
        self.call(Op::Check, None, &detail, self.inner.check())
            .await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.call(Op::Head, Some(key), "", self.inner.head(key))
            .await
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        let plan = self.plan(Op::Get);
        if !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        match plan.fail {
            None => {}
            Some(FailKind::Lost) => {
                let _ = self.inner.get(key, opts).await;
                return Err(self.inject(FailKind::Lost, Op::Get, Some(key), ""));
            }
            Some(k) => return Err(self.inject(k, Op::Get, Some(key), "")),
        }
        let mut g = self.inner.get(key, opts).await?;
        if !plan.stream.is_empty() {
            g.body = FaultBody::new(g.body, key, &plan.stream, self.counters.clone()).boxed();
        }
        Ok(g)
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.call(Op::Put, Some(key), "", self.inner.put(key, body, opts))
            .await
    }
    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>> {
        self.call(Op::GetTags, Some(key), "", self.inner.get_tags(key))
            .await
    }
    async fn head_part(&self, key: &str, part_number: u32) -> Result<(u64, u32)> {
        self.call(
            Op::Head,
            Some(key),
            "",
            self.inner.head_part(key, part_number),
        )
        .await
    }
    async fn create_multipart(
        &self,
        key: &str,
        opts: PutOptions,
        layout: PartLayout,
    ) -> Result<String> {
        self.call(
            Op::CreateMultipart,
            Some(key),
            "",
            self.inner.create_multipart(key, opts, layout),
        )
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
        let detail = format!(" (part {part_number})");
        let f = self
            .inner
            .upload_part(key, upload_id, part_number, body, crc64nvme);
        self.call(Op::UploadPart, Some(key), &detail, f).await
    }
    async fn upload_part_stream(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        len: u64,
        body: ByteStream,
    ) -> Result<PartInfo> {
        let detail = format!(" (part {part_number})");
        let f = self
            .inner
            .upload_part_stream(key, upload_id, part_number, len, body);
        self.call(Op::UploadPart, Some(key), &detail, f).await
    }
    async fn upload_part_file(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        file: FileRange,
        crc64nvme: Option<u64>,
    ) -> Result<PartInfo> {
        let detail = format!(" (part {part_number})");
        let f = self
            .inner
            .upload_part_file(key, upload_id, part_number, file, crc64nvme);
        self.call(Op::UploadPart, Some(key), &detail, f).await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        src: &CopySource,
        range: Range<u64>,
    ) -> Result<PartInfo> {
        let detail = format!(" (part {part_number} from {:?})", src.key);
        let f = self
            .inner
            .upload_part_copy(key, upload_id, part_number, src, range);
        self.call(Op::UploadPartCopy, Some(key), &detail, f).await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<PartInfo>,
        crc64nvme: Option<u64>,
        mode: PutMode,
    ) -> Result<PutResult> {
        let f = self
            .inner
            .complete_multipart(key, upload_id, parts, crc64nvme, mode);
        self.call(Op::CompleteMultipart, Some(key), "", f).await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.call(
            Op::AbortMultipart,
            Some(key),
            "",
            self.inner.abort_multipart(key, upload_id),
        )
        .await
    }
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        let detail = format!(" (uploads under prefix {prefix:?})");
        self.call(
            Op::ListMultipart,
            None,
            &detail,
            self.inner.list_multipart(prefix),
        )
        .await
    }
    async fn copy(&self, src: &CopySource, dst_key: &str, opts: CopyOptions) -> Result<PutResult> {
        let detail = format!(" (copy from {:?})", src.key);
        self.call(
            Op::Copy,
            Some(dst_key),
            &detail,
            self.inner.copy(src, dst_key, opts),
        )
        .await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Result<()>>> {
        let detail = format!(" (batch of {} keys)", keys.len());
        let first = keys.first().map(String::as_str);
        self.call(Op::DeleteMany, first, &detail, self.inner.delete_many(keys))
            .await
    }
    async fn delete_versions(&self, ids: &[(String, String)]) -> Result<Vec<Result<()>>> {
        let detail = format!(" (batch of {} versions)", ids.len());
        let first = ids.first().map(|(k, _)| k.as_str());
        self.call(
            Op::DeleteMany,
            first,
            &detail,
            self.inner.delete_versions(ids),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{LimitConfig, LimitStore, RetryPolicy, RetryStore};
    use crate::memory::MemoryStore;
    use crate::StoreExt;
    use futures::TryStreamExt;

    fn store(spec: &str) -> (Arc<MemoryStore>, FaultStore) {
        let mem = Arc::new(MemoryStore::new());
        let f = FaultStore::parse(mem.clone(), spec).unwrap();
        (mem, f)
    }

    fn err_of(spec: &str) -> FaultSpecError {
        spec.parse::<FaultSpec>().unwrap_err()
    }

    #[test]
    fn the_documented_example_parses_and_round_trips() {
        let s = "put:throttle@2x3;get:truncate=1000@1x2;get:reset=4096@1;list:transient@2;get:flip=10@3;\
                 any:latency=5ms;chaos=0.1,seed=7";
        let spec: FaultSpec = s.parse().unwrap();
        assert_eq!(spec.rules.len(), 6);
        assert_eq!(
            spec.rules[0],
            Rule {
                op: Op::Put,
                action: Action::Fail(FailKind::Throttle),
                when: When {
                    from: 2,
                    count: Some(3)
                }
            }
        );
        assert_eq!(
            spec.rules[2].action,
            Action::FailAfter(FailKind::Reset, 4096)
        );
        assert_eq!(
            spec.rules[5],
            Rule {
                op: Op::Any,
                action: Action::Latency(Duration::from_millis(5)),
                when: When::ALWAYS
            }
        );
        assert_eq!(
            spec.chaos,
            Some(Chaos {
                p: 0.1,
                seed: Some(7)
            })
        );
        let again: FaultSpec = spec.to_string().parse().unwrap();
        assert_eq!(again, spec);

        let spaced: FaultSpec = " put : 503 @ 4+ ; ; head:404 ".parse().unwrap();
        assert_eq!(spaced.to_string(), "put:throttle@4+;head:notfound");
        assert!("".parse::<FaultSpec>().unwrap().is_empty());
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let e = err_of("put:throttle@2;pt:throttle");
        assert_eq!(e.rule, "pt:throttle");
        assert!(
            e.to_string().contains("unknown op \"pt\"") && e.reason.contains("upload_part_copy"),
            "{e}"
        );
        assert!(err_of("put:thrtl")
            .reason
            .contains("unknown action \"thrtl\""));
        assert!(err_of("put:truncate=10").reason.contains("get bodies only"));
        assert!(err_of("head:reset=10").reason.contains("get and list only"));
        assert!(err_of("get:truncate").reason.contains("needs a value"));
        assert!(err_of("get:flip=-1").reason.contains("whole number"));
        assert!(err_of("any:latency=5").reason.contains("unit"));
        assert!(err_of("put:throttle@0").reason.contains("numbered from 1"));
        assert!(err_of("put:throttle@2x0").reason.contains("at least 1"));
        assert!(err_of("put:throttle@two").reason.contains("whole number"));
        assert!(err_of("throttle").reason.contains("OP:ACTION"));
        assert!(err_of("chaos=1.5").reason.contains("between 0 and 1"));
        assert!(err_of("chaos=0.1,sed=3").reason.contains("seed=N"));
        assert!(err_of("chaos=0.1;chaos=0.2").reason.contains("only one"));
        assert!(err_of("list:lost").reason.contains("single requests"));
    }

    #[tokio::test]
    async fn fails_the_kth_and_following_calls_of_one_op() {
        let (mem, f) = store("put:throttle@2x3");
        let mut kinds = vec![];
        for i in 1..=6 {
            kinds.push(
                f.put_bytes(&format!("k{i}"), "x")
                    .await
                    .err()
                    .map(|e| e.kind),
            );
        }
        let t = Some(ErrorKind::Throttled);
        assert_eq!(kinds, [None, t, t, t, None, None]);
        assert_eq!(mem.op_count("put"), 3, "failed calls never reach the store");
        assert_eq!(mem.keys(), ["k1", "k5", "k6"]);
        assert_eq!((f.calls("put"), f.injected()), (6, 3));
        // Other ops are not affected.
        f.head("k1").await.unwrap();
    }

    #[tokio::test]
    async fn injected_errors_name_op_and_key_and_say_injected() {
        let (_, f) = store("put:503@1;delete_many:reset@1;check:timeout");
        let e = f.put_bytes("a/b", "x").await.unwrap_err();
        assert_eq!((e.op, e.key.as_deref()), ("put", Some("a/b")));
        assert_eq!(e.http.as_ref().and_then(|h| h.status), Some(503));
        assert_eq!(
            e.to_string(),
            "put \"a/b\": injected throttle (HTTP 503 SlowDown)"
        );
        let e = f.delete_many(&["x".into(), "y".into()]).await.unwrap_err();
        assert_eq!(
            (e.op, e.key.as_deref(), e.kind),
            ("delete_many", Some("x"), ErrorKind::Transient)
        );
        assert!(
            e.message.contains("injected connection reset") && e.message.contains("2 keys"),
            "{e}"
        );
        let e = f.check().await.unwrap_err();
        assert!(
            e.message.contains("injected timeout") && e.message.contains("memory://"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn any_rules_count_all_ops_together() {
        let (mem, f) = store("any:transient@3");
        mem.put_bytes("k", "x").await.unwrap();
        f.head("k").await.unwrap();
        f.get_bytes("k").await.unwrap();
        let e = f.put_bytes("k", "y").await.unwrap_err();
        assert_eq!((e.kind, e.op), (ErrorKind::Transient, "put"));
        f.head("k").await.unwrap();
        assert_eq!((f.calls("any"), f.calls("head")), (4, 2));
    }

    #[tokio::test]
    async fn a_truncated_body_ends_early_and_bytes_detects_it() {
        let (mem, f) = store("get:truncate=3@1x2");
        mem.put_bytes("k", "hello world").await.unwrap();
        let g = f.get("k", GetOptions::new()).await.unwrap();
        assert_eq!(g.range, 0..11, "the announced length is untouched");
        let chunks: Vec<Bytes> = g.body.try_collect().await.unwrap();
        assert_eq!(chunks.concat(), b"hel");
        let e = f.get_bytes("k").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Corrupt);
        assert_eq!(
            f.get_bytes("k").await.unwrap(),
            Bytes::from("hello world"),
            "third get is clean"
        );
        assert_eq!(f.injected(), 2);
    }

    #[tokio::test]
    async fn a_reset_body_yields_an_error_after_n_bytes() {
        let (mem, f) = store("get:reset=4@1");
        mem.put_bytes("dir/k", "0123456789").await.unwrap();
        let mut body = f.get("dir/k", GetOptions::new()).await.unwrap().body;
        assert_eq!(body.next().await.unwrap().unwrap(), Bytes::from("0123"));
        let e = body.next().await.unwrap().unwrap_err();
        assert_eq!(
            (e.kind, e.op, e.key.as_deref()),
            (ErrorKind::Transient, "get", Some("dir/k"))
        );
        assert!(
            e.message
                .contains("injected connection reset after 4 bytes"),
            "{e}"
        );
        assert!(body.next().await.is_none());
        // A ranged resume (call 2) is clean, and offsets count from the body's start.
        let g = f
            .get("dir/k", GetOptions::new().range(4..10))
            .await
            .unwrap();
        assert_eq!(g.bytes().await.unwrap(), Bytes::from("456789"));
    }

    #[tokio::test]
    async fn a_body_that_ends_at_the_cut_is_left_alone() {
        let (mem, f) = store("get:reset=5;get:truncate=5");
        mem.put_bytes("k", "12345").await.unwrap();
        assert_eq!(f.get_bytes("k").await.unwrap(), Bytes::from("12345"));
        assert_eq!(f.injected(), 0);
    }

    #[tokio::test]
    async fn flip_changes_one_bit_of_one_byte() {
        let (mem, f) = store("get:flip=1@1");
        mem.put_bytes("k", "abc").await.unwrap();
        assert_eq!(f.get_bytes("k").await.unwrap(), Bytes::from("acc"));
        assert_eq!(f.get_bytes("k").await.unwrap(), Bytes::from("abc"));
    }

    #[tokio::test]
    async fn listings_fail_at_open_or_after_n_entries_without_a_key() {
        let (mem, f) = store("list:transient=2@1;list:throttle@2");
        for k in ["a", "b", "c", "d"] {
            mem.put_bytes(k, "x").await.unwrap();
        }
        let items: Vec<Result<ObjectMeta>> = f.list(ListOptions::prefix("")).collect().await;
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].as_ref().unwrap().key, "b");
        let e = items[2].as_ref().unwrap_err();
        assert_eq!((e.kind, e.key.as_deref()), (ErrorKind::Transient, None));
        assert!(
            e.message
                .contains("injected internal error after 2 entries"),
            "{e}"
        );
        let items: Vec<Result<ObjectMeta>> = f.list(ListOptions::prefix("")).collect().await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().unwrap_err().kind, ErrorKind::Throttled);
        assert_eq!(f.list_all("").await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn lost_applies_the_write_then_fails() {
        let (mem, f) = store("put:lost@1");
        let e = f.put_bytes("k", "v").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(mem.get_bytes("k").await.unwrap(), Bytes::from("v"));
    }

    #[tokio::test]
    async fn latency_delays_the_call() {
        let (mem, f) = store("head:latency=30ms@2");
        mem.put_bytes("k", "x").await.unwrap();
        let t0 = std::time::Instant::now();
        f.head("k").await.unwrap();
        assert!(t0.elapsed() < Duration::from_millis(30));
        let t1 = std::time::Instant::now();
        f.head("k").await.unwrap();
        assert!(t1.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counting_is_exact_under_concurrency() {
        let (mem, f) = store("head:throttle@10x5");
        mem.put_bytes("k", "x").await.unwrap();
        let f = Arc::new(f);
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move { f.head("k").await.is_err() })
            })
            .collect();
        let mut failed = 0;
        for t in tasks {
            failed += usize::from(t.await.unwrap());
        }
        assert_eq!(failed, 5);
        assert_eq!(f.calls("head"), 200);
    }

    async fn chaos_pattern(spec: &str, n: usize) -> Vec<Option<ErrorKind>> {
        let (mem, f) = store(spec);
        mem.put_bytes("k", "x").await.unwrap();
        let mut out = vec![];
        for _ in 0..n {
            out.push(f.head("k").await.err().map(|e| e.kind));
        }
        out
    }

    #[tokio::test]
    async fn chaos_is_seeded_and_roughly_p() {
        let a = chaos_pattern("chaos=0.3,seed=7", 1000).await;
        assert_eq!(
            a,
            chaos_pattern("chaos=0.3,seed=7", 1000).await,
            "same seed, same faults"
        );
        assert_ne!(a, chaos_pattern("chaos=0.3,seed=8", 1000).await);
        let failed = a.iter().filter(|k| k.is_some()).count();
        assert!((200..=400).contains(&failed), "{failed}");
        assert!(a.contains(&Some(ErrorKind::Throttled)) && a.contains(&Some(ErrorKind::Transient)));
        assert!(chaos_pattern("chaos=0", 100)
            .await
            .iter()
            .all(Option::is_none));
        assert!(chaos_pattern("chaos=1", 100)
            .await
            .iter()
            .all(Option::is_some));
        let (_, f) = store("chaos=0.5");
        assert!(f.chaos_seed().is_some());
    }

    #[tokio::test]
    async fn composed_with_retry_and_limit_the_faults_are_absorbed() {
        let mem = Arc::new(MemoryStore::new());
        for i in 0..30 {
            mem.put_bytes(&format!("p/{i:02}"), "x").await.unwrap();
        }
        let fault = FaultStore::parse(
            mem.clone(),
            "put:throttle@1x3;list:transient=7@1;list:reset=5@2",
        )
        .unwrap();
        let limit = Arc::new(LimitStore::with_config(
            Arc::new(fault),
            LimitConfig {
                initial: 16,
                ..Default::default()
            },
        ));
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..Default::default()
        };
        let s = RetryStore::with_policy(limit.clone(), policy);

        s.put_bytes("new", "v").await.unwrap();
        assert_eq!(mem.get_bytes("new").await.unwrap(), Bytes::from("v"));
        assert_eq!(
            limit.current_limit(),
            4,
            "three sequential throttles: 16 -> 8 -> 4 -> 4"
        );

        let keys: Vec<String> = s
            .list_all("p/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        let want: Vec<String> = (0..30).map(|i| format!("p/{i:02}")).collect();
        assert_eq!(keys, want, "no key missed or doubled");
        let c = s.stats().snapshot();
        assert_eq!((c.retries, c.throttles), (5, 3));
    }
}
