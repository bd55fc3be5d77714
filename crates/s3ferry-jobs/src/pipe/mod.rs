//! `pipe`: a byte stream into S3 (`up`, from stdin) and out of S3 (`down`, to stdout).
//!
//! Default mode: one ordinary object. `up` reads the stream in parts of a growing layout
//! ([`PartLayout::for_stream`]: a stream of unknown length reaches 5 TiB within 10,000 parts),
//! sends them as a multipart upload with a bounded number in flight (memory about
//! `(part_concurrency + 1) x` the current part size, capped by the memory budget; or staged on
//! disk), each part with its CRC64NVME and the object with the full-object CRC64NVME. A stream
//! that fits one part becomes one PutObject. On any failure or cancellation the upload is
//! aborted: no object appears. `down` reads the object as parallel ranged GETs pinned to its
//! ETag and writes them strictly in order through a bounded reorder window, then checks the
//! full-object checksum where the object has one.
//!
//! Segmented mode (see [`manifest`]): `up` writes numbered segment objects plus a manifest that
//! is rewritten (compare-and-swap) as segments complete, so followers can stream the upload
//! while it is written; `join` turns a finished segmented upload into one object server-side.
//!
//! Multipart uploads are recorded in the state database (shared by every job and process; see
//! [`s3ferry_engine::journal`]); a run killed mid-stream leaves its upload open, and the next
//! run that writes into the same bucket aborts it. Uploads of live runs (pipes running side by
//! side into one bucket) are never touched.

mod download;
mod input;
pub mod manifest;
mod output;
mod upload;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use s3ferry_engine::transfer::TransferConfig;
use s3ferry_store::{DynStore, PutOptions, StoreError};

pub use download::{down, join};
pub use output::Output;
pub use upload::up;

/// Where a pipe reads or writes: a store (one bucket) and a key in it.
#[derive(Clone, Debug)]
pub struct Target {
    pub store: DynStore,
    pub key: String,
}

impl Target {
    pub fn new(store: DynStore, key: impl Into<String>) -> Self {
        Self {
            store,
            key: key.into(),
        }
    }

    /// `s3://bucket/key` (for messages).
    pub fn uri(&self) -> String {
        format!(
            "{}/{}",
            self.store.describe().trim_end_matches('/'),
            self.key
        )
    }

    fn at(&self, key: &str) -> String {
        format!("{}/{}", self.store.describe().trim_end_matches('/'), key)
    }
}

#[derive(Clone, Debug)]
pub struct UpOptions {
    /// `part_size` is the first part's size (parts grow with the stream); `part_concurrency`
    /// parts are in flight; the memory budget caps the parts held in memory.
    pub transfer: TransferConfig,
    /// Content type, metadata, storage class, encryption of the object (or of every segment).
    pub put: PutOptions,
    /// Stage parts in files under this directory instead of holding them in memory.
    pub staging_dir: Option<PathBuf>,
    /// Write a segmented upload instead of one object.
    pub segmented: Option<SegmentOptions>,
}

#[derive(Clone, Debug)]
pub struct SegmentOptions {
    /// The largest a segment may be (a segment is cut when it is full).
    pub segment_size: u64,
    /// A segment is also cut, and published, this long after its first byte was read (`None`:
    /// by size only). Bounds how far followers lag a slow writer.
    pub interval: Option<Duration>,
    /// Continue the segmented upload already at the URI (its writer must be gone) instead of
    /// refusing to touch it.
    pub append: bool,
    /// `append`: the old writer is gone once its manifest has not changed for this long
    /// (`None`: three times the heartbeat the manifest states).
    pub writer_timeout: Option<Duration>,
    /// Rewrite the manifest at least this often while no segment completes, so followers can
    /// tell a slow writer from a dead one.
    pub heartbeat: Duration,
}

/// Smallest `--segment-size`. Every segment costs a PUT and a manifest rewrite on the writer's
/// side, a GET on each follower's, and about 110 bytes of manifest: below 4 KiB the requests
/// and the manifest cost more than the data they carry. (A time cut can still publish a
/// smaller segment: whatever arrived within the interval.)
pub const MIN_SEGMENT_SIZE: u64 = 4 * 1024;
/// Largest segment (largest part of a multipart copy).
pub const MAX_SEGMENT_SIZE: u64 = s3ferry_store::checksum::MAX_PART_SIZE;
pub const DEFAULT_SEGMENT_SIZE: u64 = 100 * 1024 * 1024;
/// Default time cut: a follower sees a line at most about 5 s (plus its poll interval) after the
/// writer read it, at a cost of at most two PUTs per 5 s for a slow stream (a fast one fills
/// its segments first and is cut by size).
pub const DEFAULT_SEGMENT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct DownOptions {
    /// `part_size` = bytes per ranged GET; `part_concurrency` = GETs in flight (the reorder
    /// window).
    pub transfer: TransferConfig,
    /// Read a segmented upload as it is written.
    pub follow: bool,
    /// Start at the newest segment listed instead of the first (like `tail -f`); the whole
    /// stream's checksum cannot be checked then, each segment's still is.
    pub from_end: bool,
    /// How often a follower looks at the manifest for new segments.
    pub poll_interval: Duration,
    /// A follower gives up when the manifest has not changed for this long.
    pub writer_timeout: Duration,
}

/// What `up` did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UpReport {
    pub uri: String,
    pub bytes: u64,
    /// Parts sent (1 for a single PutObject; summed over segments).
    pub parts: u64,
    /// Segments written (segmented mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u64>,
    /// `--append`: bytes the stream had before this run (then `bytes` counts this run's only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appended_to: Option<u64>,
    /// CRC64NVME of the whole stream, 16 hex digits.
    pub crc64nvme: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Unfinished uploads of killed earlier runs that were aborted first.
    pub cleaned_up: u64,
    pub elapsed_secs: f64,
}

/// What `down` did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DownReport {
    pub uri: String,
    pub bytes: u64,
    /// Segments read (segmented uploads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u64>,
    /// `--from-end`: the segment reading started at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_segment: Option<u64>,
    /// The reader of our output went away (e.g. `| head`): we stopped early, quietly.
    pub closed_early: bool,
    /// The full-object (or whole-stream) checksum was checked.
    pub verified: bool,
    pub elapsed_secs: f64,
}

/// Why a pipe failed (exit code 2). Every message names the URI.
#[derive(Debug)]
pub enum PipeError {
    /// A store error while working on `uri`.
    Store { uri: String, source: StoreError },
    /// Anything else, with the whole message.
    Failed(String),
    /// Stopped on request (a signal): what was sent is aborted, nothing is left open.
    Interrupted(String),
}

impl fmt::Display for PipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store { uri, source } => write!(f, "{uri}: {source}"),
            Self::Failed(m) | Self::Interrupted(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PipeError {}

impl PipeError {
    fn store(uri: impl Into<String>, source: StoreError) -> Self {
        Self::Store {
            uri: uri.into(),
            source,
        }
    }
}

/// CRC64NVME as 16 hex digits (the manifest's and the reports' form).
pub fn crc_hex(crc: u64) -> String {
    format!("{crc:016x}")
}

#[cfg(test)]
mod tests;
