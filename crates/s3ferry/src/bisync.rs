//! `s3ferry bisync`: resolve arguments, open both sides, run the loop of rounds.

use std::sync::Arc;
use std::time::Duration;

use s3ferry_engine::events::Reporter;
use s3ferry_engine::filter::Filters;
use s3ferry_engine::lease::LeaseConfig;
use s3ferry_engine::plan::MaxDelete;
use s3ferry_engine::ports::Invalidator;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_engine::walk::Side;
use s3ferry_jobs::bisync::{
    self, plan::Directions, BisyncError, BisyncOptions, ConflictPolicy, Ended, Init, LoopOptions,
    RoundSummary, LOCK_NAME,
};
use s3ferry_store::local::LocalStore;
use s3ferry_store::Location;

use crate::cli::{BisyncArgs, ConflictArg, Global, InitArg};
use crate::output::{human_bytes, Printer};
use crate::stores::{self, Role};
use crate::Fatal;

fn excludes(globs: &[String]) -> Result<Filters, Fatal> {
    let rules: Vec<(bool, String)> = globs.iter().map(|g| (false, g.clone())).collect();
    Ok(Filters::new(&rules, None)?)
}

/// This node's default id: the host name and the process id.
fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{clean}-{}", std::process::id())
}

pub async fn run(g: &Global, a: &BisyncArgs) -> Result<u8, Fatal> {
    let locs = a
        .sides
        .iter()
        .map(|s| Location::parse(s).map_err(|e| Fatal(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let (dir, bucket, prefix) = match (&locs[0], &locs[1]) {
        (Location::Local(d), Location::S3 { bucket, prefix })
        | (Location::S3 { bucket, prefix }, Location::Local(d)) => (d, bucket, prefix),
        _ => {
            return Err(Fatal(
                "bisync needs one local directory and one s3://bucket/prefix".into(),
            ))
        }
    };
    if !dir.is_dir() {
        return Err(Fatal(format!(
            "{}: not an existing directory (create it first; bisync never creates its local side, \
             so a missing mount cannot look like everything was deleted)",
            dir.display()
        )));
    }
    let sizes = crate::checks::numbers(&crate::checks::Numbers {
        concurrency: &[("--concurrency", a.concurrency)],
        max_memory: Some(&a.max_memory),
        ..Default::default()
    })?;
    let max_memory = sizes.max_memory.unwrap_or(1 << 30);
    let max_delete = MaxDelete::parse(&a.max_delete)?;
    let node = a.node_id.clone().unwrap_or_else(default_node);
    if node.is_empty() || node.contains('/') {
        return Err(Fatal(format!(
            "--node-id {node:?}: use a non-empty name without '/'"
        )));
    }
    let opts = BisyncOptions {
        directions: Directions {
            up: !a.only_down,
            down: !a.only_up,
            up_delete: a.up_delete,
            down_delete: a.down_delete,
        },
        filters: excludes(&a.exclude)?,
        up_exclude: excludes(&a.up_exclude)?,
        down_exclude: excludes(&a.down_exclude)?,
        conflict: match a.conflict {
            ConflictArg::Newer => ConflictPolicy::Newer,
            ConflictArg::Local => ConflictPolicy::Local,
            ConflictArg::Remote => ConflictPolicy::Remote,
            ConflictArg::KeepBoth => ConflictPolicy::KeepBoth,
        },
        node: node.clone(),
        max_delete,
        concurrency: a.concurrency,
        transfer: TransferConfig::new(max_memory),
        dry_run: a.dry_run,
        // The signal contract: the copies in flight finish, the lease is released; one round
        // (--poll 0) then exits 130, a --poll loop says it stopped and exits 0.
        cancel: crate::context::signals("the transfers in flight"),
    };
    let (remote_store, stats) = stores::open_remote(g, bucket, Role::Destination).await?;
    remote_store.check().await?;
    let local = Side::new(Arc::new(LocalStore::new(dir.clone())), "");
    let remote = Side::new(remote_store, prefix.clone());
    let lock = a.lock.then(|| LeaseConfig {
        key: a
            .lock_key
            .clone()
            .unwrap_or_else(|| format!("{}{LOCK_NAME}", remote.prefix)),
        node: node.clone(),
        timeout: Duration::from_secs(a.lock_timeout),
        wait: Duration::from_secs(a.lock_wait),
        poll: Duration::from_secs(1).min(Duration::from_secs(a.lock_timeout) / 4),
    });
    let invalidator: Option<Arc<dyn Invalidator>> = match &a.cf_distribution_id {
        Some(id) => Some(Arc::new(
            s3ferry_aws::CloudFrontInvalidator::connect(s3ferry_aws::CloudFrontConfig {
                distribution_id: id.clone(),
                endpoint_url: a.cf_endpoint_url.clone(),
                profile: g.profile.clone(),
                region: g.region.clone(),
            })
            .await?,
        )),
        None => None,
    };
    let lo = LoopOptions {
        poll: (a.poll > 0).then(|| Duration::from_secs(a.poll)),
        init: match a.init {
            InitArg::Up => Init::Up,
            InitArg::Down => Init::Down,
            InitArg::None => Init::None,
        },
        max_failures: a.max_failures,
        lock,
        invalidator,
        cf_paths: (!a.cf_paths.is_empty()).then(|| a.cf_paths.clone()),
    };
    let db = crate::state_db_path(a.state_dir.as_deref())?;
    let journal = Arc::new(crate::checks::open_state(&db, "use --state-dir")?);
    let printer = Arc::new(Printer::new(g.json, g.verbose, g.quiet, false));
    printer.begin(
        "bisync",
        &dir.display().to_string(),
        &format!("s3://{bucket}/{prefix}"),
        a.dry_run,
    );
    let reporter: Arc<dyn Reporter> = printer.clone();
    let json = g.json;
    let quiet = g.quiet;
    let p2 = printer.clone();
    let totals = std::sync::Mutex::new(Totals::default());
    let on_round = |s: &RoundSummary| {
        totals.lock().unwrap_or_else(|p| p.into_inner()).add(s);
        if json {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["type"] = "round".into();
            v["retries"] = stats.retries().into();
            p2.json(v);
        } else if !quiet {
            crate::logs::say_with(
                crate::logs::Level::Info,
                &round_line(s),
                serde_json::to_value(s).unwrap_or_default(),
            );
        }
    };
    let p3 = printer.clone();
    let on_error = |n: u64, e: &BisyncError| {
        totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed_rounds += 1;
        if json {
            p3.json(serde_json::json!({"type": "round_error", "round": n, "error": e.to_string()}));
        } else {
            crate::logs::say!(Error, "s3ferry: round {n} failed: {e}");
        }
    };
    let ended = bisync::run(
        &local, &remote, &opts, &lo, &journal, &reporter, &on_round, &on_error,
    )
    .await;
    let kind = if lo.poll.is_some() {
        crate::context::Kind::Service
    } else {
        crate::context::Kind::OneShot
    };
    let code = match &ended {
        Ok(Ended::Once { failures: true }) => 1,
        Ok(Ended::Stopped) => {
            if !quiet && !json {
                crate::logs::say!(
                    Info,
                    "s3ferry: bisync stopped ({}); the lease is released",
                    opts.cancel.reason().unwrap_or_else(|| "on request".into())
                );
            }
            kind.stopped_code()
        }
        Ok(_) => 0,
        Err(_) => 2,
    };
    if json {
        let t = totals.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = serde_json::to_value(&*t).unwrap_or_default();
        v["type"] = "summary".into();
        v["job"] = "bisync".into();
        v["exit_code"] = code.into();
        v["stopped"] = matches!(ended, Ok(Ended::Stopped)).into();
        if let Err(e) = &ended {
            v["error"] = e.to_string().into();
        }
        // The stream's one summary, also when the loop ended in an error.
        crate::context::ended();
        printer.json(v);
    }
    ended?;
    Ok(code)
}

/// Totals over the rounds of one run (the `--json` summary record).
#[derive(Default, serde::Serialize)]
struct Totals {
    rounds: u64,
    failed_rounds: u64,
    up: u64,
    down: u64,
    deleted_local: u64,
    deleted_remote: u64,
    conflicts: u64,
    failed: u64,
    refused: u64,
}

impl Totals {
    fn add(&mut self, s: &RoundSummary) {
        self.rounds += 1;
        self.up += s.up;
        self.down += s.down;
        self.deleted_local += s.deleted_local;
        self.deleted_remote += s.deleted_remote;
        self.conflicts += s.conflicts;
        self.failed += s.failed;
        self.refused += s.refused;
    }
}

fn round_line(s: &RoundSummary) -> String {
    format!(
        "round {}: up {} ({}), down {} ({}), deleted {} local / {} remote, conflicts {}, failed {}{}, {:.1} s{}",
        s.round,
        s.up,
        human_bytes(s.up_bytes),
        s.down,
        human_bytes(s.down_bytes),
        s.deleted_local,
        s.deleted_remote,
        s.conflicts,
        s.failed,
        if s.refused > 0 {
            format!(", refused {} (unsafe keys)", s.refused)
        } else {
            String::new()
        },
        s.elapsed_secs,
        if s.dry_run { " (dry run)" } else { "" }
    )
}
