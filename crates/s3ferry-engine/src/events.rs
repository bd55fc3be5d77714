//! Progress and results as events. Libraries never print: the CLI implements [`Reporter`]
//! (progress bars on a TTY, JSON Lines with `--json`).

use serde::{Deserialize, Serialize};

/// What happened to one key (serialised as the `action` of `--json` object records).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Copy,
    Delete,
    Skip,
    Refuse,
    Fail,
    WouldCopy,
    WouldDelete,
    /// A key that differs between two sides (`check`): missing, extra or different content.
    Differ,
}

impl Outcome {
    /// Every outcome, in the order of [`Outcome::index`].
    pub const ALL: [Outcome; 8] = [
        Self::Copy,
        Self::Delete,
        Self::Skip,
        Self::Refuse,
        Self::Fail,
        Self::WouldCopy,
        Self::WouldDelete,
        Self::Differ,
    ];

    /// The position of this outcome in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::Delete => "delete",
            Self::Skip => "skip",
            Self::Refuse => "refuse",
            Self::Fail => "fail",
            Self::WouldCopy => "would-copy",
            Self::WouldDelete => "would-delete",
            Self::Differ => "differ",
        }
    }

    /// Count one record of this outcome (`size` bytes) in `s`.
    pub fn count(self, s: &mut Summary, size: u64) {
        match self {
            Self::Copy | Self::WouldCopy => {
                s.copied += 1;
                s.copied_bytes += size;
            }
            Self::Delete | Self::WouldDelete => s.deleted += 1,
            Self::Skip => s.skipped += 1,
            Self::Refuse => s.refused += 1,
            Self::Fail => s.failed += 1,
            Self::Differ => s.different += 1,
        }
    }

    /// A key whose work is done (for progress: copies, deletes and failures).
    pub fn finishes_work(self) -> bool {
        matches!(self, Self::Copy | Self::Delete | Self::Fail)
    }
}

/// The outcome of one key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub action: Outcome,
    pub reason: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Record {
    /// A record without an error.
    pub fn new(
        key: impl Into<String>,
        action: Outcome,
        reason: impl Into<String>,
        size: u64,
    ) -> Self {
        Self {
            key: key.into(),
            action,
            reason: reason.into(),
            size,
            error: None,
        }
    }
}

impl Record {
    /// The `fail` record of a key: the error's kind as the reason, its text as `error`.
    pub fn failure(key: impl Into<String>, size: u64, e: &s3ferry_store::StoreError) -> Self {
        Self {
            error: Some(e.to_string()),
            ..Self::new(key, Outcome::Fail, e.kind.as_str(), size)
        }
    }
}

/// The start of the reason of a skip record for an entry a listing left out (a symlink or a
/// special file): such records are always shown, unlike routine "unchanged" skips.
pub const NOT_SYNCED: &str = "not synced: ";

impl Record {
    /// A skip the user must hear about (see [`NOT_SYNCED`]).
    pub fn is_reported_skip(&self) -> bool {
        self.action == Outcome::Skip && self.reason.starts_with(NOT_SYNCED)
    }
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
    /// Keys that differ between the two sides (`check`).
    #[serde(skip_serializing_if = "is_zero")]
    pub different: u64,
    pub retries: u64,
    pub throttled: u64,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletes_suppressed: Option<String>,
    /// Stopped by SIGINT/SIGTERM before the end (exit status 130).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    pub elapsed_secs: f64,
}

impl Summary {
    /// Exit status scripts can trust: 0 all done, 1 some objects failed or were refused.
    pub fn exit_code(&self) -> i32 {
        if self.interrupted {
            130
        } else if self.failed > 0
            || self.refused > 0
            || self.different > 0
            || self.deletes_suppressed.is_some()
        {
            1
        } else {
            0
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Every item of a pass has been planned: the totals of [`Reporter::planned`] are final.
    fn listed(&self) {}
}

pub struct NullReporter;
impl Reporter for NullReporter {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `--json` schema's `action` strings (documented in the CLI's output module, parsed by
    /// scripts) come from the enum: they must not drift.
    #[test]
    fn outcomes_serialise_to_the_documented_action_strings() {
        let all = [
            (Outcome::Copy, "copy"),
            (Outcome::Delete, "delete"),
            (Outcome::Skip, "skip"),
            (Outcome::Refuse, "refuse"),
            (Outcome::Fail, "fail"),
            (Outcome::WouldCopy, "would-copy"),
            (Outcome::WouldDelete, "would-delete"),
            (Outcome::Differ, "differ"),
        ];
        for (o, name) in all {
            assert_eq!(serde_json::to_value(o).unwrap(), name);
            assert_eq!(o.as_str(), name);
        }
        let r = Record {
            key: "k".into(),
            action: Outcome::WouldDelete,
            reason: "not in source".into(),
            size: 3,
            error: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["action"], "would-delete");
        assert!(v.get("error").is_none());
    }

    #[test]
    fn outcomes_count_into_the_summary() {
        let mut s = Summary::default();
        for (o, size) in [
            (Outcome::Copy, 5),
            (Outcome::WouldCopy, 7),
            (Outcome::Delete, 100),
            (Outcome::Skip, 1),
            (Outcome::Refuse, 1),
            (Outcome::Fail, 1),
        ] {
            o.count(&mut s, size);
        }
        assert_eq!(
            (
                s.copied,
                s.copied_bytes,
                s.deleted,
                s.skipped,
                s.refused,
                s.failed
            ),
            (2, 12, 1, 1, 1, 1)
        );
        assert!(Outcome::Fail.finishes_work() && !Outcome::Skip.finishes_work());
    }
}
