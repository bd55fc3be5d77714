//! One error type for every store operation: a generic kind, whether it is worth retrying,
//! the operation and key it concerns, HTTP details when there are any, and the source.

use std::fmt;

/// Few, generic kinds; backend detail stays in `message`/`source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object (or upload) does not exist.
    NotFound,
    /// The bucket or root directory does not exist: fatal for a job.
    BucketNotFound,
    /// A create-only write found an existing object.
    AlreadyExists,
    /// An If-Match / If-None-Match condition failed (412), or the object changed under us.
    PreconditionFailed,
    /// A concurrent conditional write conflicted (409); retry per AWS guidance.
    Conflict,
    /// Credentials missing, wrong or not allowed: fatal for a job.
    PermissionDenied,
    /// 503 SlowDown and friends, and a local "too many open files" (EMFILE/ENFILE): retry with
    /// backoff and lower concurrency.
    Throttled,
    /// 500s, resets, timeouts, truncated bodies: retry.
    Transient,
    /// Data did not match its checksum or length: retry the transfer.
    Corrupt,
    /// The store cannot do this (capability missing).
    Unsupported,
    /// Bad argument, bad key, unsafe key.
    InvalidInput,
    /// Disk full / quota: fatal for a job.
    StorageFull,
    /// Anything else; not retried.
    Other,
}

impl ErrorKind {
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::Throttled | Self::Transient | Self::Corrupt | Self::Conflict
        )
    }

    /// Kinds that make continuing the job pointless (every other object would fail the same way).
    pub fn fatal(self) -> bool {
        matches!(
            self,
            Self::BucketNotFound | Self::PermissionDenied | Self::StorageFull
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::BucketNotFound => "bucket-not-found",
            Self::AlreadyExists => "already-exists",
            Self::PreconditionFailed => "precondition-failed",
            Self::Conflict => "conflict",
            Self::PermissionDenied => "permission-denied",
            Self::Throttled => "throttled",
            Self::Transient => "transient",
            Self::Corrupt => "corrupt",
            Self::Unsupported => "unsupported",
            Self::InvalidInput => "invalid-input",
            Self::StorageFull => "storage-full",
            Self::Other => "error",
        }
    }
}

/// HTTP details of a failed request, when the store speaks HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpInfo {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub request_id: Option<String>,
    /// The server's `Retry-After` (delta-seconds, or an HTTP date turned into the wait from
    /// now), when it sent one. The retry layer waits at least this long before the next try.
    pub retry_after: Option<std::time::Duration>,
}

#[derive(Debug)]
pub struct StoreError {
    pub kind: ErrorKind,
    pub op: &'static str,
    pub key: Option<String>,
    pub message: String,
    pub http: Option<HttpInfo>,
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    pub fn new(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            op,
            key: None,
            message: message.into(),
            http: None,
            source: None,
        }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_http(mut self, http: HttpInfo) -> Self {
        self.http = Some(http);
        self
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }

    /// Map an I/O error of a local operation to a store error.
    pub fn io(op: &'static str, key: &str, err: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        // Out of file descriptors (this process's `ulimit -n`, or the system's table): nothing
        // is wrong with the file; fewer opens at once will succeed. Throttled, so the retry
        // layer backs off and the adaptive limit lowers the number of operations in flight.
        if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            let message =
                format!("{err} (the open-files limit, ulimit -n; retried with fewer at once)");
            return Self::new(ErrorKind::Throttled, op, message)
                .with_key(key)
                .with_source(err);
        }
        let kind = match err.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::AlreadyExists => ErrorKind::AlreadyExists,
            K::StorageFull | K::QuotaExceeded => ErrorKind::StorageFull,
            K::Interrupted | K::TimedOut | K::ConnectionReset | K::UnexpectedEof => {
                ErrorKind::Transient
            }
            K::InvalidInput | K::InvalidFilename | K::NotADirectory | K::IsADirectory => {
                ErrorKind::InvalidInput
            }
            _ => ErrorKind::Other,
        };
        let message = err.to_string();
        Self::new(kind, op, message).with_key(key).with_source(err)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.op)?;
        if let Some(k) = &self.key {
            write!(f, " {k:?}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.http {
            match (&h.status, &h.code) {
                (Some(s), Some(c)) => write!(f, " (HTTP {s} {c})")?,
                (Some(s), None) => write!(f, " (HTTP {s})")?,
                (None, Some(c)) => write!(f, " ({c})")?,
                _ => {}
            }
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_file_descriptors_is_throttled_not_final() {
        for errno in [libc::EMFILE, libc::ENFILE] {
            let e = StoreError::io("get", "a/b", std::io::Error::from_raw_os_error(errno));
            assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
            assert!(e.retryable() && !e.kind.fatal(), "{e}");
            assert_eq!(e.key.as_deref(), Some("a/b"));
            assert!(e.to_string().contains("ulimit -n"), "{e}");
        }
        let e = StoreError::io("get", "k", std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.kind, ErrorKind::StorageFull);
    }
}
