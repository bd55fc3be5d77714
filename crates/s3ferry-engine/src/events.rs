//! Progress and results as events. Libraries never print: the CLI implements [`Reporter`]
//! (progress bars on a TTY, JSON Lines with `--json`).

use serde::Serialize;

/// The outcome of one key.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub key: String,
    /// copy, delete, skip, refuse, fail (and would-copy / would-delete on a dry run)
    pub action: &'static str,
    pub reason: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Totals of a job.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub copied: u64,
    pub copied_bytes: u64,
    pub deleted: u64,
    pub skipped: u64,
    pub failed: u64,
    pub refused: u64,
    pub retries: u64,
    pub throttled: u64,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletes_suppressed: Option<String>,
    pub elapsed_secs: f64,
}

impl Summary {
    /// Exit status scripts can trust: 0 all done, 1 some objects failed or were refused.
    pub fn exit_code(&self) -> i32 {
        if self.failed > 0 || self.refused > 0 || self.deletes_suppressed.is_some() {
            1
        } else {
            0
        }
    }
}

pub trait Reporter: Send + Sync {
    /// More work was planned: `objects` transfers totalling `bytes`.
    fn planned(&self, _objects: u64, _bytes: u64) {}
    /// `n` more bytes moved.
    fn bytes(&self, _n: u64) {}
    /// A key is done (whatever the outcome).
    fn record(&self, _r: &Record) {}
    /// A message for the user (warnings, notes).
    fn note(&self, _msg: &str) {}
}

pub struct NullReporter;
impl Reporter for NullReporter {}
