//! `s3ferry archive`: offline delta sync across an air gap.
//!
//! - [`export`] writes what changed in a bucket prefix or directory since the previous export
//!   (adds, changes, moves and deletions) as a self-describing tar archive, optionally
//!   zstd-compressed and split into volumes that each verify alone, and the new state next to
//!   it; [`plan`] counts what an export would hold.
//! - [`verify`] checks an archive's structure and every checksum; [`import`] verifies first,
//!   checks the archive's place in the source's sequence against the destination's marker,
//!   then applies it (puts, moves as copies at the destination, deletes within the limit) and
//!   advances the marker. Importing an archive twice is a no-op; a missing or out-of-order one
//!   is refused unless forced.
//!
//! Formats: [`format`]. Semantics: doc/SEMANTICS.md, "archive".

mod export;
pub mod format;
mod import;
mod io;

#[cfg(test)]
mod tests;

use s3ferry_engine::spill::SpillError;
use s3ferry_store::StoreError;

pub use export::{export, plan, source_id, ExportOptions, ExportSummary, Output};
pub use import::{carry_back, import, verify, ImportOptions, ImportSummary, Verified};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Bad input (a damaged, incomplete or out-of-order archive, a bad state file): nothing
    /// was applied.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stopped on request (a signal) before the end: what was in flight finished or was
    /// aborted, the destination's marker is unchanged, and a rerun applies the rest.
    #[error("interrupted by {0}: the archive is not fully applied (run the import again)")]
    Interrupted(String),
}

impl From<crate::places::PlaceError> for ArchiveError {
    fn from(e: crate::places::PlaceError) -> Self {
        match e {
            crate::places::PlaceError::Input(m) => Self::Input(m),
            crate::places::PlaceError::Store(e) => Self::Store(e),
        }
    }
}

fn spill_err(e: SpillError) -> ArchiveError {
    ArchiveError::Input(e.to_string())
}

fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}
