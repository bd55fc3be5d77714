//! Limits of the machine that bound the defaults: the open-files limit (`ulimit -n`).

/// File descriptors one object transfer can hold at once: its source (a file or a connection),
/// its destination (a temp file or a connection), and one spare for a reopen on retry or the
/// directory being listed.
pub const FDS_PER_TRANSFER: u64 = 4;

/// The default number of objects transferred at once where the open-files limit allows it.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// The soft open-files limit of this process (`ulimit -n`), if it has one.
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The most objects at once that keep `concurrency x FDS_PER_TRANSFER` within half of `limit`,
/// leaving the other half for the state database, spill files, listings and the parts of big
/// objects. At least 1.
pub fn concurrency_for(limit: u64) -> usize {
    usize::try_from(limit / 2 / FDS_PER_TRANSFER)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// `--concurrency` when the user gave none: [`DEFAULT_CONCURRENCY`], lowered to what the
/// open-files limit allows.
pub fn default_concurrency() -> usize {
    match open_files_limit() {
        Some(limit) => DEFAULT_CONCURRENCY.min(concurrency_for(limit)),
        None => DEFAULT_CONCURRENCY,
    }
}

/// The one-line warning for an explicit `--concurrency` that the open-files limit cannot carry.
pub fn concurrency_warning(concurrency: usize) -> Option<String> {
    let limit = open_files_limit()?;
    let safe = concurrency_for(limit);
    (concurrency > safe).then(|| {
        format!(
            "--concurrency {concurrency} may run out of file descriptors with an open-files limit \
             of {limit} (ulimit -n): give at most {safe}, or raise the limit"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_keeps_half_the_descriptors_free() {
        assert_eq!(concurrency_for(1024), 128);
        assert_eq!(concurrency_for(256), 32);
        assert_eq!(concurrency_for(64), 8);
        assert_eq!(concurrency_for(3), 1);
        assert_eq!(concurrency_for(0), 1);
        assert_eq!(
            concurrency_for(u64::MAX),
            usize::try_from(u64::MAX / 8).unwrap()
        );
    }
}
