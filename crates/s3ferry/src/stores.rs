//! Turning a location into a layered store: `Retry -> Limit -> [Fault] -> backend`.

use std::sync::Arc;

use s3ferry_aws::{S3Config, S3Store, SseCustomerKey};
use s3ferry_store::layer::{LimitStore, Pacer, RetryPolicy, RetryStats, RetryStore};
use s3ferry_store::local::LocalStore;
use s3ferry_store::{DynStore, Location};

use crate::cli::{Addressing, ChecksumMode, Global, SyncArgs};
use crate::Fatal;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Destination,
}

fn s3_config(g: &Global, bucket: &str, role: Role) -> S3Config {
    let mut cfg = S3Config::new(bucket);
    let src = role == Role::Source;
    cfg.endpoint_url = if src {
        g.source_endpoint_url.clone().or(g.endpoint_url.clone())
    } else {
        g.endpoint_url.clone()
    };
    cfg.profile = if src {
        g.source_profile.clone().or(g.profile.clone())
    } else {
        g.profile.clone()
    };
    cfg.region = if src {
        g.source_region.clone().or(g.region.clone())
    } else {
        g.region.clone()
    };
    cfg.force_path_style = g.addressing_style.map(|a| a == Addressing::Path);
    cfg.checksum_when_required = g.checksum_mode.map(|m| m == ChecksumMode::WhenRequired);
    cfg.request_payer = g.request_payer.is_some();
    cfg.anonymous = g.no_sign_request;
    cfg.allow_unconfirmed_sse = g.allow_unconfirmed_sse;
    cfg.page_size = g.page_size;
    // Checked when the command line is read (main), so a bad value never gets here.
    cfg.read_timeout = crate::cli::parse_duration(&g.read_timeout).ok();
    cfg.clock_offset_secs = test_clock_offset();
    cfg
}

/// Test builds (feature "fault") sign with a clock shifted by S3FERRY_TEST_CLOCK_OFFSET seconds,
/// to test a client whose clock is off.
#[cfg(feature = "fault")]
fn test_clock_offset() -> i64 {
    std::env::var("S3FERRY_TEST_CLOCK_OFFSET")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(not(feature = "fault"))]
fn test_clock_offset() -> i64 {
    0
}

/// Retries as `--max-attempts` says.
fn retry_policy(g: &Global) -> RetryPolicy {
    RetryPolicy {
        max_attempts: g.max_attempts.max(1),
        ..RetryPolicy::default()
    }
}

/// The process's request pacer (`--max-rps`), shared by every store it opens.
fn pacer(g: &Global) -> Option<Arc<Pacer>> {
    static PACER: std::sync::OnceLock<Option<Arc<Pacer>>> = std::sync::OnceLock::new();
    PACER.get_or_init(|| g.max_rps.map(Pacer::new)).clone()
}

/// An S3 store for bucket-level commands (mb, ls).
pub async fn s3_admin(g: &Global, bucket: &str) -> Result<S3Store, Fatal> {
    Ok(S3Store::connect(s3_config(g, bucket, Role::Destination)).await?)
}

/// The SSE-C keys of a sync's two sides, as `aws s3 sync` assigns them: `--sse-c-key` is the
/// key of the S3 side (the destination's when both are); `--sse-c-copy-source-key` the S3
/// source's when both are.
pub struct SseCKeys {
    /// The key the store's own objects are read and written with.
    pub objects: Option<SseCustomerKey>,
    /// The key the sources of server-side copies into the store are read with.
    pub copy_source: Option<SseCustomerKey>,
}

impl SseCKeys {
    /// No keys.
    pub fn none() -> Self {
        SseCKeys {
            objects: None,
            copy_source: None,
        }
    }

    /// `--sse-c-key` as the key of the one bucket a command reads or writes (pipe); refused with
    /// `--sse`.
    pub fn of(a: &crate::cli::SseCKeyArgs, sse: Option<&str>) -> Result<SseCKeys, Fatal> {
        let objects = parse_key("--sse-c-key", &a.sse_c_key)?;
        if objects.is_some() && sse.is_some() {
            return Err(Fatal(
                "--sse and --sse-c cannot be used together: an object has one kind of server-side encryption".into(),
            ));
        }
        Ok(SseCKeys {
            objects,
            copy_source: None,
        })
    }

    pub fn for_sync(
        a: &crate::cli::SseCArgs,
        sse: Option<&str>,
        src: &Location,
        dst: &Location,
    ) -> Result<(SseCKeys, SseCKeys), Fatal> {
        // The key of the S3 side (the destination's when both are).
        let own = Self::of(&a.key, sse)?;
        let copy_source = parse_key("--sse-c-copy-source-key", &a.sse_c_copy_source_key)?;
        let s3 = |l: &Location| matches!(l, Location::S3 { .. });
        let none = SseCKeys::none;
        match (s3(src), s3(dst)) {
            (true, true) => Ok((
                SseCKeys {
                    objects: copy_source.clone(),
                    copy_source: None,
                },
                SseCKeys { copy_source, ..own },
            )),
            (true, false) | (false, true) if copy_source.is_some() => Err(Fatal(
                "--sse-c-copy-source-key is for S3 to S3 syncs; the S3 side's key is --sse-c-key"
                    .into(),
            )),
            (true, false) => Ok((own, none())),
            (false, true) => Ok((none(), own)),
            (false, false) if own.objects.is_some() || copy_source.is_some() => Err(Fatal(
                "--sse-c-key: neither side of this sync is on S3".into(),
            )),
            (false, false) => Ok((none(), none())),
        }
    }
}

fn parse_key(name: &str, v: &Option<String>) -> Result<Option<SseCustomerKey>, Fatal> {
    v.as_deref()
        .map(SseCustomerKey::parse)
        .transpose()
        .map_err(|m| Fatal(format!("{name}: {m}")))
}

/// Open one side of a sync, wrapped in the retry and adaptive-limit layers.
pub async fn open(
    g: &Global,
    loc: &Location,
    role: Role,
    args: &SyncArgs,
    sse_c: SseCKeys,
) -> Result<(DynStore, Option<Arc<RetryStats>>), Fatal> {
    let backend: DynStore = match loc {
        Location::Local(p) => {
            let s = LocalStore::new(p.clone())
                .with_fsync(args.fsync)
                .with_follow_symlinks(role == Role::Source && args.follow_symlinks);
            let s = if role == Role::Destination && !args.dry_run {
                s.create_root()?;
                s.detect_case_folding()
            } else {
                s
            };
            Arc::new(s)
        }
        Location::S3 { bucket, .. } => {
            let mut cfg = s3_config(g, bucket, role);
            cfg.sse_customer_key = sse_c.objects;
            cfg.copy_source_sse_customer_key = sse_c.copy_source;
            Arc::new(S3Store::connect(cfg).await?)
        }
    };
    let paced = matches!(loc, Location::S3 { .. })
        .then(|| pacer(g))
        .flatten();
    let backend = with_faults(backend, role)?;
    let kind = match loc {
        Location::Local(_) => "local",
        Location::S3 { .. } => "s3",
    };
    let (store, stats) = layered(g, backend, paced, role, kind);
    Ok((store, Some(stats)))
}

/// Open a local directory as a store, wrapped like S3 stores (the limit layer also backs off
/// when the process runs out of file descriptors). A destination directory is created unless
/// `dry_run`.
pub fn open_dir(
    g: &Global,
    path: &std::path::Path,
    role: Role,
    dry_run: bool,
) -> Result<DynStore, Fatal> {
    let s = LocalStore::new(path.to_path_buf());
    let s = if role == Role::Destination && !dry_run {
        s.create_root()?;
        s.detect_case_folding()
    } else {
        s
    };
    Ok(layered(g, Arc::new(s), None, role, "local").0)
}

/// Open an S3 bucket for a pipe, wrapped in the retry and adaptive-limit layers (and the fault
/// layer in test builds).
pub async fn open_remote(
    g: &Global,
    bucket: &str,
    role: Role,
) -> Result<(DynStore, Arc<RetryStats>), Fatal> {
    open_remote_with(g, bucket, role, SseCKeys::none()).await
}

/// [`open_remote`] with SSE-C keys.
pub async fn open_remote_with(
    g: &Global,
    bucket: &str,
    role: Role,
    sse_c: SseCKeys,
) -> Result<(DynStore, Arc<RetryStats>), Fatal> {
    let mut cfg = s3_config(g, bucket, role);
    cfg.sse_customer_key = sse_c.objects;
    cfg.copy_source_sse_customer_key = sse_c.copy_source;
    let backend: DynStore = Arc::new(S3Store::connect(cfg).await?);
    let backend = with_faults(backend, role)?;
    Ok(layered(g, backend, pacer(g), role, "s3"))
}

/// `backend` wrapped in the adaptive-limit layer (paced by `pacer`) and the retry layer, its
/// requests and limit counted in the process's metrics.
fn layered(
    g: &Global,
    backend: DynStore,
    pacer: Option<Arc<Pacer>>,
    role: Role,
    kind: &'static str,
) -> (DynStore, Arc<RetryStats>) {
    let limited = LimitStore::new(backend).with_pacer(pacer);
    let gauge = limited.gauge();
    let side = match role {
        Role::Source => "source",
        Role::Destination => "destination",
    };
    // One set of request counters per side and backend for the whole process: a worker opens
    // stores per shard, and the metrics must neither lose their counts nor keep every store.
    let stats = process_stats(side, kind);
    let retry =
        RetryStore::with_policy(Arc::new(limited), retry_policy(g)).with_stats(stats.clone());
    s3ferry_engine::metrics::global().add_store(side, kind, stats.clone(), Some(gauge));
    (Arc::new(retry), stats)
}

/// The request counters of every store of one side and backend (see [`layered`]).
fn process_stats(side: &'static str, kind: &'static str) -> Arc<RetryStats> {
    static ALL: std::sync::Mutex<Vec<(&str, &str, Arc<RetryStats>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, s)) = all.iter().find(|(a, b, _)| *a == side && *b == kind) {
        return s.clone();
    }
    let s = Arc::new(RetryStats::default());
    all.push((side, kind, s.clone()));
    s
}

/// Test builds (feature "fault") read S3FERRY_FAULTS (all sides) or S3FERRY_FAULTS_SOURCE /
/// S3FERRY_FAULTS_DEST and wrap the backend in the fault-injection layer.
#[cfg(feature = "fault")]
fn with_faults(backend: DynStore, role: Role) -> Result<DynStore, Fatal> {
    use s3ferry_store::layer::{FaultSpec, FaultStore};
    let var = if role == Role::Source {
        "S3FERRY_FAULTS_SOURCE"
    } else {
        "S3FERRY_FAULTS_DEST"
    };
    let spec = std::env::var(var).or_else(|_| std::env::var("S3FERRY_FAULTS"));
    match spec {
        Ok(s) if !s.trim().is_empty() => {
            let spec: FaultSpec = s
                .parse()
                .map_err(|e| Fatal(format!("{var}/S3FERRY_FAULTS: {e}")))?;
            Ok(Arc::new(FaultStore::new(backend, spec)))
        }
        _ => Ok(backend),
    }
}

#[cfg(not(feature = "fault"))]
fn with_faults(backend: DynStore, _role: Role) -> Result<DynStore, Fatal> {
    Ok(backend)
}

/// Buckets opened with the command line's endpoints and credentials (sources may have their
/// own), wrapped in the retry and adaptive-limit layers: for jobs whose inputs name buckets.
pub struct CliBuckets(pub Global);

#[async_trait::async_trait]
impl s3ferry_jobs::Buckets for CliBuckets {
    async fn open(
        &self,
        bucket: &str,
        source: bool,
    ) -> Result<DynStore, s3ferry_store::StoreError> {
        let role = if source {
            Role::Source
        } else {
            Role::Destination
        };
        open_remote(&self.0, bucket, role)
            .await
            .map(|(s, _)| s)
            .map_err(|Fatal(m)| {
                s3ferry_store::StoreError::new(s3ferry_store::ErrorKind::Other, "open", m)
            })
    }
}
