//! The checks every job's command line goes through, written once: numeric transfer options
//! (`--concurrency`, `--part-concurrency`, `--part-size`, `--max-memory`) and opening the state
//! database (a corrupt one is moved aside and rebuilt, with a warning). sync, pipe, bisync and
//! batch call these; a refusal is one line and exit 2.

use std::path::Path;

use s3ferry_engine::journal::Journal;

use crate::cli::parse_size;
use crate::Fatal;

/// The most objects (or parts) in flight a job accepts; more is a typo, not a plan.
pub const MAX_CONCURRENCY: usize = 4096;
/// The largest part S3 accepts in a multipart upload.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// The smallest part S3 accepts in a multipart upload (but the last).
pub const MIN_PART_SIZE: u64 = s3ferry_store::checksum::MIN_PART_SIZE;

/// The least `--max-memory` a command without `--part-size` accepts.
pub const MIN_MEMORY: u64 = 1 << 20;

/// The numeric options of one command, as given; `None` = the command has no such option.
#[derive(Default)]
pub struct Numbers<'a> {
    /// `(flag, value)` pairs: each must be 1 to [`MAX_CONCURRENCY`].
    pub concurrency: &'a [(&'static str, usize)],
    /// `--part-size` and the least it may be (S3's 5 MiB for uploads; ranged reads take less).
    pub part_size: Option<(&'a str, u64)>,
    /// `--max-memory`: at least one part.
    pub max_memory: Option<&'a str>,
}

/// The sizes, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    pub part_size: Option<u64>,
    pub max_memory: Option<u64>,
}

/// `--concurrency`, `--part-size` (of uploads: at least S3's 5 MiB) and `--max-memory` of a job
/// that moves objects: checked, then the part size and the memory budget.
pub fn object_job(
    concurrency: usize,
    part_size: &str,
    max_memory: &str,
) -> Result<(u64, u64), Fatal> {
    let sizes = numbers(&Numbers {
        concurrency: &[("--concurrency", concurrency)],
        part_size: Some((part_size, MIN_PART_SIZE)),
        max_memory: Some(max_memory),
    })?;
    // Both are given, so both are there.
    let part = sizes.part_size.unwrap_or(MIN_PART_SIZE);
    Ok((part, sizes.max_memory.unwrap_or(part)))
}

/// Refuse zero or absurd numbers before anything is opened.
pub fn numbers(n: &Numbers) -> Result<Sizes, Fatal> {
    for &(flag, v) in n.concurrency {
        if v == 0 || v > MAX_CONCURRENCY {
            return Err(Fatal(format!(
                "{flag} {v} is out of range: give 1 to {MAX_CONCURRENCY}"
            )));
        }
    }
    let part_size = match n.part_size {
        None => None,
        Some((given, min)) => {
            let v = parse_size(given)?;
            if v < min.max(1) {
                return Err(Fatal(if min == MIN_PART_SIZE {
                    format!("--part-size {given} is below the 5 MiB minimum S3 accepts")
                } else {
                    format!("--part-size {given} is below the minimum of {min} bytes")
                }));
            }
            if v > MAX_PART_SIZE {
                return Err(Fatal(format!(
                    "--part-size {given} is above the 5 GiB maximum S3 accepts for a part"
                )));
            }
            Some(v)
        }
    };
    let max_memory = match n.max_memory {
        None => None,
        Some(given) => {
            let v = parse_size(given)?;
            if n.part_size.is_none() && v < MIN_MEMORY {
                return Err(Fatal(format!(
                    "--max-memory {given} is below the 1 MiB minimum: nothing could be read"
                )));
            }
            if let (Some(p), Some((ps, _))) = (part_size, n.part_size) {
                if v < p {
                    return Err(Fatal(format!(
                        "--max-memory {given} is less than one part (--part-size {ps}): nothing could be transferred"
                    )));
                }
            }
            Some(v)
        }
    };
    Ok(Sizes {
        part_size,
        max_memory,
    })
}

/// Open the state database at `path`; a corrupt one is moved aside (kept for a look) and a new
/// one started, with one warning line. `hint` ends other errors (`use --state-dir`).
pub fn open_state(path: &Path, hint: &str) -> Result<Journal, Fatal> {
    let (j, moved) = Journal::open_or_rebuild(path).map_err(|e| Fatal(format!("{e} ({hint})")))?;
    s3ferry_engine::metrics::global().set_state_db(path.to_path_buf());
    if let Some((aside, why)) = moved {
        crate::logs::say!(
            Warn,
            "s3ferry: warning: state database {} was corrupt ({why}); moved it to {} and started a new one (this run compares content afresh)",
            path.display(),
            aside.display()
        );
    }
    Ok(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(n: Numbers) -> String {
        match numbers(&n) {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(Fatal(m)) => m,
        }
    }

    #[test]
    fn zero_and_absurd_numbers_are_refused_the_same_way_for_every_job() {
        let c = [("--concurrency", 0)];
        assert_eq!(
            err(Numbers {
                concurrency: &c,
                ..Default::default()
            }),
            "--concurrency 0 is out of range: give 1 to 4096"
        );
        let c = [("--concurrency", 8), ("--part-concurrency", 5000)];
        assert!(err(Numbers {
            concurrency: &c,
            ..Default::default()
        })
        .starts_with("--part-concurrency 5000"));
        assert!(err(Numbers {
            part_size: Some(("4MiB", MIN_PART_SIZE)),
            ..Default::default()
        })
        .contains("5 MiB minimum"));
        assert!(err(Numbers {
            part_size: Some(("6GiB", 1)),
            ..Default::default()
        })
        .contains("5 GiB maximum"));
        assert!(err(Numbers {
            part_size: Some(("64MiB", MIN_PART_SIZE)),
            max_memory: Some("32MiB"),
            ..Default::default()
        })
        .contains("less than one part"));
        let ok = numbers(&Numbers {
            concurrency: &[("--concurrency", 4096)],
            part_size: Some(("5GiB", MIN_PART_SIZE)),
            max_memory: Some("5GiB"),
        });
        assert!(
            matches!(ok, Ok(Sizes { part_size: Some(p), max_memory: Some(m) }) if p == 5 << 30 && m == 5 << 30)
        );
    }
}
