//! `bundle group`: an inventory or a listing into shard manifests.

use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use s3ferry_engine::events::{Outcome, Record, Reporter};
use s3ferry_engine::filter::Filters;
use s3ferry_engine::formats::inventory::InventoryManifest;
use s3ferry_engine::ports::Queue;
use s3ferry_store::{DynStore, ListOptions, StoreError};
use serde::Serialize;

use super::format::{ShardRow, SHARD_HEADER};
use super::worker::ShardMessage;
use super::{put_file, BundleError, Dir};

/// Where the objects to group come from.
pub enum GroupInput {
    /// An S3 Inventory report; `data` reads the bucket holding its data files. Only current
    /// versions are grouped (delete markers and older versions are skipped).
    Inventory {
        manifest: InventoryManifest,
        data: DynStore,
    },
    /// A live listing of `bucket` under `prefix`.
    Listing {
        store: DynStore,
        bucket: String,
        prefix: String,
    },
}

#[derive(Clone, Debug)]
pub struct GroupOptions {
    pub max_objects: u64,
    pub max_bytes: u64,
    pub big_object: u64,
    pub filters: Filters,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            max_objects: super::DEFAULT_MAX_OBJECTS,
            max_bytes: super::DEFAULT_MAX_BYTES,
            big_object: super::DEFAULT_BIG_OBJECT,
            filters: Filters::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct GroupSummary {
    pub shards: u64,
    /// Of which shards of direct copies (big objects).
    pub direct_shards: u64,
    pub objects: u64,
    pub bytes: u64,
    pub direct_objects: u64,
    pub direct_bytes: u64,
    /// Delete markers, older versions and filtered-out keys.
    pub skipped: u64,
    pub enqueued: u64,
    pub elapsed_secs: f64,
}

/// A shard being filled.
#[derive(Default)]
struct Open {
    rows: Vec<u8>,
    count: u64,
    bytes: u64,
}

struct Grouper<'a> {
    opts: &'a GroupOptions,
    out: &'a Dir,
    queue: Option<&'a dyn Queue>,
    reporter: &'a Arc<dyn Reporter>,
    small: Open,
    big: Open,
    summary: GroupSummary,
}

impl Grouper<'_> {
    async fn add(&mut self, row: ShardRow) -> Result<(), BundleError> {
        let (max_o, max_b) = (self.opts.max_objects, self.opts.max_bytes);
        let full = {
            let open = if row.direct { &self.big } else { &self.small };
            open.count > 0 && (open.count >= max_o || open.bytes + row.size > max_b)
        };
        if full {
            self.flush(row.direct).await?;
        }
        let open = if row.direct {
            &mut self.big
        } else {
            &mut self.small
        };
        open.rows.extend_from_slice(row.to_row().as_bytes());
        open.rows.push(b'\n');
        open.count += 1;
        open.bytes += row.size;
        self.summary.objects += 1;
        self.summary.bytes += row.size;
        if row.direct {
            self.summary.direct_objects += 1;
            self.summary.direct_bytes += row.size;
        }
        Ok(())
    }

    async fn flush(&mut self, direct: bool) -> Result<(), BundleError> {
        let open = std::mem::take(if direct {
            &mut self.big
        } else {
            &mut self.small
        });
        if open.count == 0 {
            return Ok(());
        }
        self.summary.shards += 1;
        if direct {
            self.summary.direct_shards += 1;
        }
        let name = format!("shard-{:06}.csv", self.summary.shards);
        let mut data = Vec::with_capacity(open.rows.len() + SHARD_HEADER.len() + 1);
        data.extend_from_slice(SHARD_HEADER.as_bytes());
        data.push(b'\n');
        data.extend_from_slice(&open.rows);
        put_file(self.out, &name, data, "text/csv").await?;
        let uri = self.out.uri_of(&name);
        self.reporter.record(&Record::new(
            &uri,
            Outcome::Copy,
            format!(
                "shard of {} {} ({} bytes)",
                open.count,
                if direct { "big objects" } else { "objects" },
                open.bytes
            ),
            open.bytes,
        ));
        if let Some(q) = self.queue {
            let body = serde_json::to_string(&ShardMessage { shard: uri.clone() })
                .map_err(|e| BundleError::Input(e.to_string()))?;
            q.send(&body).await.map_err(|e| {
                BundleError::Input(format!("{uri} was written but not enqueued: {e}"))
            })?;
            self.summary.enqueued += 1;
        }
        Ok(())
    }
}

/// Group the input into shard manifests under `out` (`shard-000001.csv`, ...), enqueueing each
/// on `queue` as soon as it is written. Memory: the two open shards (at most `max_objects`
/// rows each), whatever the input's size.
pub async fn group(
    input: GroupInput,
    opts: &GroupOptions,
    out: &Dir,
    queue: Option<&dyn Queue>,
    reporter: &Arc<dyn Reporter>,
) -> Result<GroupSummary, BundleError> {
    if opts.max_objects == 0 || opts.max_bytes == 0 {
        return Err(BundleError::Input(
            "--max-objects and --max-bytes must be above zero".into(),
        ));
    }
    let started = std::time::Instant::now();
    let rows: BoxStream<'static, Result<Option<ShardRow>, StoreError>> = match input {
        GroupInput::Inventory { manifest, data } => manifest
            .rows(data)
            .map(|r| {
                r.map(|r| {
                    (r.is_latest && !r.is_delete_marker).then_some(ShardRow {
                        bucket: r.bucket,
                        key: r.key,
                        version_id: r.version_id,
                        size: r.size,
                        last_modified: r.last_modified,
                        etag: r.etag,
                        storage_class: r.storage_class,
                        direct: false,
                    })
                })
            })
            .boxed(),
        GroupInput::Listing {
            store,
            bucket,
            prefix,
        } => store
            .list(ListOptions::prefix(prefix))
            .map(move |m| {
                m.map(|m| {
                    Some(ShardRow {
                        bucket: bucket.clone(),
                        key: m.key,
                        version_id: m.version_id,
                        size: m.size,
                        last_modified: m.last_modified,
                        etag: m.etag,
                        storage_class: m.storage_class,
                        direct: false,
                    })
                })
            })
            .boxed(),
    };
    let mut g = Grouper {
        opts,
        out,
        queue,
        reporter,
        small: Open::default(),
        big: Open::default(),
        summary: GroupSummary::default(),
    };
    let mut rows = rows;
    while let Some(r) = rows.next().await {
        match r? {
            Some(mut row)
                if opts.filters.includes(&row.key)
                    && !opts.filters.before_since(row.last_modified) =>
            {
                row.direct = row.size > opts.big_object;
                g.add(row).await?;
            }
            _ => g.summary.skipped += 1,
        }
    }
    g.flush(false).await?;
    g.flush(true).await?;
    g.summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(g.summary)
}
