//! `s3ferry bundle`: pack many small objects into indexed tar shards.
//!
//! - [`group`] turns an S3 Inventory or a live listing into shard manifests (CSV, bounded by
//!   object count and bytes; objects above the big-object size go to shards of direct copies)
//!   and can enqueue each shard as it is written.
//! - [`run_shard`] packs one shard: the objects are fetched concurrently, each verified (plain
//!   MD5 ETag, pinned to the listed ETag), and streamed in manifest order into a PAX tar that is
//!   uploaded as one multipart object (one part in memory at a time, no temp file); beside it
//!   an index (where each object's bytes are, its checksums, metadata and tags), a dead-letter
//!   index of the objects that could not be taken, and a receipt written last. Big objects are
//!   copied server-side to `bigobjects/<key>` and indexed. Output keys depend only on the
//!   shard's name: a rerun replaces, never duplicates, and a completed shard is skipped.
//! - [`work`] is the worker loop: long-poll a queue, heartbeat the message's visibility while
//!   packing, delete it on success, release it on failure (so the queue's redrive policy sends
//!   a poison shard to its dead-letter queue).
//! - [`get`] fetches one object back with a single ranged GET via the index; [`extract`]
//!   restores a whole tar, refusing members that would escape the destination.

pub mod format;
mod group;
mod pack;
mod restore;
mod worker;

#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use s3ferry_store::{ByteStream, GetOptions, PutOptions, StoreError};

pub use group::{group, GroupInput, GroupOptions, GroupSummary};
pub use pack::{run_shard, PackContext, PackOptions, ShardSummary};
pub use restore::{extract, get, ExtractSummary, Fetched};
pub use worker::{work, ShardMessage, WorkerOptions, WorkerSummary};

use crate::places::PlaceError;
pub use crate::places::{open_dir, open_place, Dir, Place};

/// The shard manifests `bundle run` packs: `uri` itself, or, for a folder (ending in `/`), its
/// `shard-*.csv` in name order. A folder without any is an input error.
pub async fn shards_of(
    uri: &str,
    buckets: &dyn crate::Buckets,
) -> Result<Vec<String>, BundleError> {
    use futures::StreamExt as _;
    if !uri.ends_with('/') {
        return Ok(vec![uri.to_string()]);
    }
    let dir = open_dir(uri, buckets, true, false).await?;
    let mut names = Vec::new();
    let mut list = dir
        .store
        .list(s3ferry_store::ListOptions::prefix(dir.prefix.clone()));
    while let Some(m) = list.next().await {
        let m = m.map_err(|e| BundleError::Input(format!("{uri}: {e}")))?;
        let name = &m.key[dir.prefix.len()..];
        if name.starts_with("shard-") && name.ends_with(".csv") && !name.contains('/') {
            names.push(dir.uri_of(name));
        }
    }
    if names.is_empty() {
        return Err(BundleError::Input(format!("{uri}: no shard-*.csv here")));
    }
    Ok(names)
}

/// Shard bounds by default: at most this many objects...
pub const DEFAULT_MAX_OBJECTS: u64 = 65_000;
/// ... and this many bytes of packed objects.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// Objects larger than this are copied directly, not packed: at 16 MiB the per-request cost
/// that packing saves is already below 0.1% of the transfer, and a packed object is held in
/// memory while it is verified.
pub const DEFAULT_BIG_OBJECT: u64 = 16 << 20;
/// The folder under the output prefix that holds directly copied big objects.
pub const BIG_DIR: &str = "bigobjects/";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("interrupted")]
    Interrupted,
}

impl From<PlaceError> for BundleError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::Input(m) => Self::Input(m),
            PlaceError::Store(e) => Self::Store(e),
        }
    }
}

/// The lines of a body, without their ends (`\r\n` or `\n`), streamed: memory is one line.
pub fn lines(body: ByteStream) -> BoxStream<'static, Result<String, StoreError>> {
    stream::unfold(
        (body, BytesMut::new(), false),
        |(mut body, mut buf, mut ended)| async move {
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line = buf.split_to(i + 1);
                    let s = String::from_utf8_lossy(&line[..i]);
                    let s = s.strip_suffix('\r').unwrap_or(&s).to_string();
                    return Some((Ok(s), (body, buf, ended)));
                }
                if ended {
                    if buf.is_empty() {
                        return None;
                    }
                    let s = String::from_utf8_lossy(&buf).into_owned();
                    buf.clear();
                    return Some((Ok(s), (body, buf, ended)));
                }
                match body.next().await {
                    Some(Ok(c)) => buf.extend_from_slice(&c),
                    Some(Err(e)) => return Some((Err(e), (body, buf, true))),
                    None => ended = true,
                }
            }
        },
    )
    .boxed()
}

/// The data lines of a CSV file with the given header (the header is checked, blank lines
/// skipped), each with its line number.
pub async fn csv_rows(
    place: &Place,
    header: &'static str,
) -> Result<BoxStream<'static, Result<(u64, String), BundleError>>, BundleError> {
    let body = place
        .store
        .get(&place.key, GetOptions::new())
        .await
        .map_err(|e| BundleError::Input(format!("{}: {e}", place.uri)))?
        .body;
    let uri = place.uri.clone();
    let mut n = 0u64;
    Ok(lines(body)
        .filter_map(move |l| {
            n += 1;
            let uri = uri.clone();
            let line = n;
            async move {
                match l {
                    Err(e) => Some(Err(BundleError::Input(format!("{uri}: {e}")))),
                    Ok(l) if line == 1 => (l.trim_start_matches('\u{feff}') != header).then(|| {
                        Err(BundleError::Input(format!(
                            "{uri}: line 1 is not the header {header:?}"
                        )))
                    }),
                    Ok(l) if l.trim().is_empty() => None,
                    Ok(l) => Some(Ok((line, l))),
                }
            }
        })
        .boxed())
}

/// Write a small file whole.
async fn put_file(
    dir: &Dir,
    name: &str,
    data: Vec<u8>,
    content_type: &str,
) -> Result<(), StoreError> {
    dir.store
        .put(
            &dir.key(name),
            Bytes::from(data),
            PutOptions::new().content_type(Some(content_type.to_string())),
        )
        .await
        .map(|_| ())
}
