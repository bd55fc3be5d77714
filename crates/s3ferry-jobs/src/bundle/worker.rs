//! `bundle worker`: take shards from a queue until stopped. Any number of workers on any
//! number of machines share one queue; the queue's visibility timeout is the only lease.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use s3ferry_engine::events::{Outcome, Record};
use s3ferry_engine::metrics;
use s3ferry_engine::ports::{Queue, QueueMessage};
use serde::{Deserialize, Serialize};

use super::pack::{run_shard, PackContext, PackOptions, ShardSummary};
use super::{open_place, BundleError};
use s3ferry_engine::exec::Cancel;

/// The body of a queue message: the shard manifest to pack.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardMessage {
    pub shard: String,
}

impl ShardMessage {
    /// JSON (`{"shard":"s3://..."}`) or a bare `s3://` URI.
    pub fn parse(body: &str) -> Result<Self, String> {
        let b = body.trim();
        if b.starts_with("s3://") {
            return Ok(Self {
                shard: b.to_string(),
            });
        }
        serde_json::from_str(b).map_err(|e| format!("not a shard message ({e}): {b:.200}"))
    }
}

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// How long a received shard stays invisible to other workers; renewed every third of it
    /// while the shard is packed.
    pub visibility: Duration,
    /// Long-poll wait per receive.
    pub wait: Duration,
    /// Stop after this many messages handled.
    pub max_messages: Option<u64>,
    /// Stop after the queue has been empty this long.
    pub idle_exit: Option<Duration>,
    /// A failed shard's message comes back after this, doubled with each delivery (capped at
    /// `visibility`): a passing outage is ridden out before the queue's redrive limit is spent.
    pub retry_delay: Duration,
    pub pack: PackOptions,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            visibility: Duration::from_secs(300),
            wait: Duration::from_secs(20),
            max_messages: None,
            idle_exit: None,
            retry_delay: Duration::from_secs(5),
            pack: PackOptions::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Shards packed (or found complete) and their messages deleted.
    pub shards: u64,
    pub skipped_shards: u64,
    /// Shards that failed; their messages were released for another attempt.
    pub failed_shards: u64,
    pub objects: u64,
    pub packed: u64,
    pub direct: u64,
    pub failed: u64,
    pub bytes: u64,
    /// Stopped by a signal; the shard in hand (if any) was released.
    pub interrupted: bool,
}

/// Renew a message's visibility every third of it until dropped.
fn heartbeat(
    queue: Arc<dyn Queue>,
    receipt: String,
    visibility: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = (visibility / 3).max(Duration::from_millis(200));
        loop {
            tokio::time::sleep(every).await;
            match queue.set_visibility(&receipt, visibility).await {
                Ok(()) => metrics::global().heartbeat(Some(Instant::now())),
                Err(e) => tracing::warn!("heartbeat of the shard in hand failed: {e}"),
            }
        }
    })
}

/// Work until stopped, `max_messages` are handled, or the queue stays empty for
/// `idle_exit`. `on_shard` hears of every shard finished.
pub async fn work(
    queue: Arc<dyn Queue>,
    cx: &PackContext,
    opts: &WorkerOptions,
    on_shard: &(dyn Fn(&ShardSummary) + Send + Sync),
    stop: Cancel,
) -> Result<WorkerSummary, BundleError> {
    let mut summary = WorkerSummary::default();
    let mut handled = 0u64;
    let mut idle_since = Instant::now();
    let mut receive_errors = 0u32;
    loop {
        if opts.max_messages.is_some_and(|m| handled >= m) {
            break;
        }
        let got = tokio::select! {
            biased;
            () = stop.requested() => { summary.interrupted = true; break; }
            r = queue.receive(1, opts.wait, opts.visibility) => r,
        };
        let msgs = match got {
            Ok(m) => {
                metrics::global().received();
                receive_errors = 0;
                m
            }
            Err(e) if e.retryable() && receive_errors < 10 => {
                receive_errors += 1;
                tracing::warn!("receiving from {}: {e} (retrying)", queue.describe());
                let pause = Duration::from_millis(250 << receive_errors.min(7));
                tokio::select! {
                    () = stop.requested() => { summary.interrupted = true; break; }
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            Err(e) => {
                return Err(BundleError::Input(format!(
                    "receiving from {}: {e}",
                    queue.describe()
                )))
            }
        };
        let Some(msg) = msgs.into_iter().next() else {
            if opts.idle_exit.is_some_and(|d| idle_since.elapsed() >= d) {
                break;
            }
            continue;
        };
        handled += 1;
        metrics::global().heartbeat(Some(Instant::now()));
        let r = one(&queue, msg, cx, opts, &stop).await;
        metrics::global().heartbeat(None);
        idle_since = Instant::now();
        if !matches!(r, Err(BundleError::Interrupted)) {
            metrics::global().shard(r.is_ok());
        }
        match r {
            Ok(s) => {
                summary.shards += 1;
                summary.skipped_shards += s.skipped as u64;
                summary.objects += s.objects;
                summary.packed += s.packed;
                summary.direct += s.direct;
                summary.failed += s.failed;
                summary.bytes += s.bytes;
                on_shard(&s);
            }
            Err(BundleError::Interrupted) => {
                summary.interrupted = true;
                break;
            }
            Err(_) => summary.failed_shards += 1,
        }
    }
    Ok(summary)
}

/// Handle one message: pack its shard under a heartbeat, delete it when done, release it when
/// not (at once when stopped, after [`WorkerOptions::retry_delay`] when it failed).
async fn one(
    queue: &Arc<dyn Queue>,
    msg: QueueMessage,
    cx: &PackContext,
    opts: &WorkerOptions,
    stop: &Cancel,
) -> Result<ShardSummary, BundleError> {
    let received = SystemTime::now();
    let beat = heartbeat(queue.clone(), msg.receipt.clone(), opts.visibility);
    let r = async {
        let m = ShardMessage::parse(&msg.body).map_err(BundleError::Input)?;
        let shard = open_place(&m.shard, cx.buckets.as_ref(), true).await?;
        let mut pack = opts.pack.clone();
        // Uploads of this shard's tar older than this delivery are a dead holder's.
        pack.stale_uploads_before = Some(received);
        run_shard(&shard, cx, &pack, stop).await
    }
    .await;
    beat.abort();
    match &r {
        Ok(_) => {
            if let Err(e) = queue.delete(&msg.receipt).await {
                // It comes back; the rerun finds the receipt and only deletes it.
                tracing::warn!("shard done but its message was not deleted: {e}");
            }
        }
        Err(e) => {
            if !matches!(e, BundleError::Interrupted) {
                cx.reporter.record(&Record {
                    key: msg.body.chars().take(200).collect(),
                    action: Outcome::Fail,
                    reason: "shard".into(),
                    size: 0,
                    error: Some(format!(
                        "shard failed (delivery {}), released for another attempt: {e}",
                        msg.receive_count
                    )),
                });
            }
            // Interrupted: back at once for another worker. Failed: back after a delay.
            let back = if matches!(e, BundleError::Interrupted) {
                Duration::ZERO
            } else {
                (opts.retry_delay * (1u32 << msg.receive_count.clamp(1, 7).saturating_sub(1)))
                    .min(opts.visibility)
            };
            if let Err(e) = queue.set_visibility(&msg.receipt, back).await {
                tracing::warn!("could not release the message: {e}");
            }
        }
    }
    r
}
