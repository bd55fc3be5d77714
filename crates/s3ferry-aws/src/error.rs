//! The ONE place where SDK errors become [`StoreError`]s.
//!
//! 200-with-`<Error>` bodies: aws-sdk-s3 (checked in 1.157) runs
//! `rest_xml_unwrapped_errors::body_is_error` on every non-streaming response, including
//! CompleteMultipartUpload, CopyObject and UploadPartCopy, and turns a 200 whose body is an
//! `<Error>` document into a service error carrying its code. So such answers reach
//! [`map_sdk_error`] as ordinary service errors and are classified by their S3 code
//! (`InternalError` -> Transient, `SlowDown` -> Throttled), with HTTP status 200.

use std::error::Error as StdError;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::RequestId;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use s3ferry_store::{ErrorKind, HttpInfo, StoreError};

/// What the error mapper needs to know about the store that failed.
#[derive(Clone, Debug)]
pub(crate) struct ErrCtx {
    pub bucket: String,
    /// The endpoint in human form (`http://127.0.0.1:8333`, or `AWS S3 (us-east-1)`).
    pub endpoint: String,
    /// The client's credentials cache, told when the server refuses them as expired.
    pub creds: Option<crate::creds::RefreshingCredentials>,
    /// Requests carry an SSE-C key (a refusal of a write may be the bucket blocking SSE-C).
    pub sse_c: bool,
}

/// Codes S3 (and STS-backed services) use for session credentials that are no longer valid.
const EXPIRED_CREDENTIALS: &[&str] = &[
    "ExpiredToken",
    "ExpiredTokenException",
    "TokenRefreshRequired",
];

/// The kind an S3 error code and/or HTTP status stands for. The code wins over the status
/// (a 200 can carry `<Error><Code>InternalError</Code>`).
pub(crate) fn kind_for(status: Option<u16>, code: Option<&str>) -> ErrorKind {
    if let Some(code) = code {
        let k = match code {
            "NoSuchKey" | "NoSuchUpload" | "NoSuchVersion" | "NotFound" => {
                Some(ErrorKind::NotFound)
            }
            "NoSuchBucket" => Some(ErrorKind::BucketNotFound),
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "AllAccessDisabled"
            | "AccountProblem"
            | "Forbidden" => Some(ErrorKind::PermissionDenied),
            "PreconditionFailed" | "NotModified" => Some(ErrorKind::PreconditionFailed),
            "ConditionalRequestConflict" | "OperationAborted" => Some(ErrorKind::Conflict),
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequests"
            | "ServiceUnavailable"
            | "TooManyRequestsException" => Some(ErrorKind::Throttled),
            "InternalError"
            | "InternalServerError"
            | "RequestTimeout"
            | "RequestTimeoutException"
            | "BadGateway"
            | "GatewayTimeout"
            | "IncompleteBody"
            // The client's clock is off: the SDK measured the skew from the answer's Date, so
            // the retry is signed with the corrected time.
            | "RequestTimeTooSkewed"
            | "RequestExpired"
            | "RequestInTheFuture" => Some(ErrorKind::Transient),
            "BadDigest"
            | "InvalidDigest"
            | "XAmzContentChecksumMismatch"
            | "XAmzContentSHA256Mismatch" => Some(ErrorKind::Corrupt),
            "BucketAlreadyExists" | "BucketAlreadyOwnedByYou" => Some(ErrorKind::AlreadyExists),
            "NotImplemented" => Some(ErrorKind::Unsupported),
            "InvalidRange" | "InvalidArgument" | "InvalidPart" | "InvalidPartOrder"
            | "EntityTooSmall" | "EntityTooLarge" | "KeyTooLongError" | "InvalidBucketName"
            | "MetadataTooLarge" | "InvalidTag" | "MalformedXML" => Some(ErrorKind::InvalidInput),
            _ => None,
        };
        if let Some(k) = k {
            return k;
        }
    }
    match status {
        Some(404) => ErrorKind::NotFound,
        Some(401 | 403) => ErrorKind::PermissionDenied,
        Some(304 | 412) => ErrorKind::PreconditionFailed,
        Some(409) => ErrorKind::Conflict,
        Some(416) => ErrorKind::InvalidInput,
        Some(429 | 503) => ErrorKind::Throttled,
        Some(501) => ErrorKind::Unsupported,
        Some(500..=599) => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

fn default_message(kind: ErrorKind, ctx: &ErrCtx) -> String {
    match kind {
        ErrorKind::NotFound => "no such key".into(),
        ErrorKind::BucketNotFound => format!("bucket '{}' does not exist", ctx.bucket),
        ErrorKind::PermissionDenied => format!(
            "access denied to bucket '{}' — check credentials/profile",
            ctx.bucket
        ),
        ErrorKind::PreconditionFailed => "precondition failed (the object changed)".into(),
        ErrorKind::Conflict => "conflicting concurrent request".into(),
        ErrorKind::Throttled => "throttled by the server".into(),
        ErrorKind::Transient => "server error".into(),
        ErrorKind::Corrupt => "the server rejected the data's checksum".into(),
        _ => "request failed".into(),
    }
}

/// One line: newlines and runs of whitespace collapse to single spaces.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The innermost error of a `source()` chain, as one line, with friendlier wording for the
/// usual network failures.
pub(crate) fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cur: &(dyn StdError + 'static) = err;
    let mut io_kind = None;
    loop {
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        match cur.source() {
            Some(next) => cur = next,
            None => break,
        }
    }
    use std::io::ErrorKind as K;
    match io_kind {
        Some(K::ConnectionRefused) => "connection refused".into(),
        Some(K::ConnectionReset) => "connection reset by peer".into(),
        Some(K::ConnectionAborted) => "connection aborted".into(),
        Some(K::TimedOut) => "timed out".into(),
        Some(K::UnexpectedEof) => "connection closed before the response was complete".into(),
        _ => one_line(&cur.to_string()),
    }
}

fn chain_contains(err: &(dyn StdError + 'static), needle: &str) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.to_string().contains(needle) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// How far (seconds, positive = ahead) this machine's signing clock is from the server's, when
/// a request was refused the way a skewed signature is (403, or a skew error code) and the
/// answer's `Date` shows a gap of more than 4 minutes (the SDK's own threshold). The SDK then
/// has measured the skew, so a retry is signed right: such a refusal is transient, not a
/// credentials problem. (A HEAD refused for skew carries no error code, only the 403 and the
/// `Date`.)
fn skewed(resp: Option<&HttpResponse>, code: Option<&str>) -> Option<i64> {
    let resp = resp?;
    let skew_code = matches!(
        code,
        Some(
            "RequestTimeTooSkewed"
                | "RequestExpired"
                | "RequestInTheFuture"
                | "SignatureDoesNotMatch"
        )
    );
    if resp.status().as_u16() != 403 && !skew_code {
        return None;
    }
    if code.is_some() && !skew_code {
        return None; // AccessDenied and friends are what they say
    }
    let date = resp.headers().get("date")?;
    let server =
        aws_smithy_types::DateTime::from_str(date, aws_smithy_types::date_time::Format::HttpDate)
            .ok()?;
    let server = std::time::SystemTime::try_from(server).ok()?;
    let ours = crate::s3::signing_now();
    let secs = match ours.duration_since(server) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    (secs.abs() > 4 * 60).then_some(secs)
}

/// A write refused over its checksum headers (servers that do not implement the SDK's
/// `x-amz-checksum-*` headers or aws-chunked trailers answer 400/501 naming them) gets the
/// way out appended: `--checksum-mode when-required`.
fn is_write(op: &str) -> bool {
    matches!(
        op,
        "put"
            | "upload_part"
            | "create_multipart"
            | "complete_multipart"
            | "copy"
            | "upload_part_copy"
    )
}

fn checksum_hint(op: &str, status: Option<u16>, code: Option<&str>, message: String) -> String {
    let write = is_write(op) && !op.contains("copy");
    let lower = format!("{} {}", code.unwrap_or(""), message).to_ascii_lowercase();
    let about_checksums = ["checksum", "trailer", "chunked", "x-amz-sdk"]
        .iter()
        .any(|w| lower.contains(w));
    if write
        && matches!(status, Some(400 | 501))
        && (about_checksums || code == Some("NotImplemented"))
    {
        format!("{message} (if this server does not support the request checksums S3 has, run with --checksum-mode when-required: s3ferry then sends Content-MD5 and still checks what it reads)")
    } else {
        message
    }
}

/// A `Retry-After` header value as a wait from `now`: delta-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`; a date in the past is no wait). Garbage is ignored.
pub(crate) fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at =
        aws_smithy_types::DateTime::from_str(value, aws_smithy_types::date_time::Format::HttpDate)
            .ok()?;
    let at = std::time::SystemTime::try_from(at).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// SdkError -> StoreError. Every SDK call goes through here.
pub(crate) fn map_sdk_error<E>(
    ctx: &ErrCtx,
    op: &'static str,
    key: Option<&str>,
    err: SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let retry_after = err
        .raw_response()
        .and_then(|r| r.headers().get("retry-after"))
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    let code = err.code().map(str::to_string);
    let request_id = err.request_id().map(str::to_string);
    let skew = skewed(err.raw_response(), code.as_deref());
    let (kind, message) = match &err {
        SdkError::ServiceError(_) if skew.is_some() => {
            let secs = skew.unwrap_or_default();
            (
                ErrorKind::Transient,
                format!(
                    "{} ({}): this machine's clock is {secs} s {} the server's; retried, signed with the server's time",
                    code.as_deref().unwrap_or("refused"),
                    status.map_or("?".into(), |s| format!("HTTP {s}")),
                    if secs < 0 { "behind" } else { "ahead of" }
                ),
            )
        }
        SdkError::ServiceError(_)
            if code
                .as_deref()
                .is_some_and(|c| EXPIRED_CREDENTIALS.contains(&c))
                && ctx.creds.as_ref().is_some_and(|c| c.refused_as_expired()) =>
        {
            (
                ErrorKind::Transient,
                format!(
                    "{}: the session credentials expired; retried with new ones",
                    code.as_deref().unwrap_or_default()
                ),
            )
        }
        SdkError::ServiceError(_) => {
            let kind = kind_for(status, code.as_deref());
            let message = match (kind, err.message()) {
                // S3's NoSuchBucket text does not name the bucket; ours does.
                (ErrorKind::BucketNotFound, _) => default_message(kind, ctx),
                (_, Some(m)) if !m.trim().is_empty() => one_line(m),
                _ => default_message(kind, ctx),
            };
            let message = if kind == ErrorKind::PermissionDenied && ctx.sse_c && is_write(op) {
                format!("{message} (this request carried an SSE-C key: buckets block SSE-C writes unless their encryption configuration allows them — check the bucket's BlockedEncryptionTypes, or write without --sse-c)")
            } else if code
                .as_deref()
                .is_some_and(|c| EXPIRED_CREDENTIALS.contains(&c))
            {
                format!("{message} (the session token is fixed, e.g. AWS_SESSION_TOKEN: renew it and run again; a role or profile that issues temporary credentials is renewed by itself)")
            } else {
                message
            };
            (kind, checksum_hint(op, status, code.as_deref(), message))
        }
        SdkError::TimeoutError(_) => (
            ErrorKind::Transient,
            format!("request to {} timed out", ctx.endpoint),
        ),
        SdkError::DispatchFailure(d) => {
            let cause = root_cause(&err);
            if d.is_timeout() {
                (
                    ErrorKind::Transient,
                    format!("timed out talking to endpoint {}: {cause}", ctx.endpoint),
                )
            } else if chain_contains(&err, "certificate") {
                // Not retried: the same certificate comes back every time.
                (
                    ErrorKind::InvalidInput,
                    format!(
                        "cannot reach endpoint {}: {cause} (signed by a private CA? give its \
                         certificate with --ca-bundle FILE or AWS_CA_BUNDLE)",
                        ctx.endpoint
                    ),
                )
            } else if d.is_io() {
                (
                    ErrorKind::Transient,
                    format!("cannot reach endpoint {}: {cause}", ctx.endpoint),
                )
            } else if d.is_user() {
                (ErrorKind::InvalidInput, format!("bad request: {cause}"))
            } else if chain_contains(&err, "credentials") || chain_contains(&err, "identity") {
                (
                    ErrorKind::PermissionDenied,
                    format!("no usable AWS credentials: {cause}"),
                )
            } else {
                (
                    ErrorKind::Other,
                    format!("cannot talk to endpoint {}: {cause}", ctx.endpoint),
                )
            }
        }
        SdkError::ResponseError(_) => (
            ErrorKind::Transient,
            format!(
                "unreadable response from {}: {}",
                ctx.endpoint,
                root_cause(&err)
            ),
        ),
        SdkError::ConstructionFailure(_) => {
            let cause = root_cause(&err);
            if chain_contains(&err, "credentials") || chain_contains(&err, "identity") {
                (
                    ErrorKind::PermissionDenied,
                    format!("no usable AWS credentials: {cause}"),
                )
            } else {
                (
                    ErrorKind::InvalidInput,
                    format!("cannot build the request: {cause}"),
                )
            }
        }
        _ => (ErrorKind::Other, root_cause(&err)),
    };
    let mut e = StoreError::new(kind, op, message)
        .with_http(HttpInfo {
            status,
            code,
            request_id,
            retry_after,
        })
        .with_source(err);
    if let Some(k) = key {
        e = e.with_key(k);
    }
    e
}

/// An error while reading a GET body (after the headers arrived; the SDK no longer retries).
pub(crate) fn map_body_error(
    op: &'static str,
    key: &str,
    err: aws_smithy_types::byte_stream::error::Error,
) -> StoreError {
    let kind = if chain_contains(&err, "checksum mismatch") {
        ErrorKind::Corrupt
    } else {
        ErrorKind::Transient
    };
    let msg = format!("reading the body failed: {}", root_cause(&err));
    StoreError::new(kind, op, msg)
        .with_key(key)
        .with_source(err)
}

/// A request we could not even build (required field missing).
pub(crate) fn build_error(
    op: &'static str,
    key: Option<&str>,
    err: aws_smithy_types::error::operation::BuildError,
) -> StoreError {
    let mut e = StoreError::new(
        ErrorKind::InvalidInput,
        op,
        format!("cannot build the request: {}", one_line(&err.to_string())),
    )
    .with_source(err);
    if let Some(k) = key {
        e = e.with_key(k);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_codes_and_statuses() {
        assert_eq!(kind_for(Some(404), Some("NoSuchKey")), ErrorKind::NotFound);
        assert_eq!(kind_for(Some(404), None), ErrorKind::NotFound);
        assert_eq!(
            kind_for(Some(404), Some("NoSuchBucket")),
            ErrorKind::BucketNotFound
        );
        assert_eq!(
            kind_for(Some(403), Some("SignatureDoesNotMatch")),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            kind_for(Some(403), Some("RequestTimeTooSkewed")),
            ErrorKind::Transient
        );
        assert_eq!(kind_for(Some(412), None), ErrorKind::PreconditionFailed);
        assert_eq!(
            kind_for(Some(409), Some("ConditionalRequestConflict")),
            ErrorKind::Conflict
        );
        assert_eq!(kind_for(Some(503), Some("SlowDown")), ErrorKind::Throttled);
        // 200 with an <Error> body: the code decides.
        assert_eq!(
            kind_for(Some(200), Some("InternalError")),
            ErrorKind::Transient
        );
        assert_eq!(kind_for(Some(200), Some("SlowDown")), ErrorKind::Throttled);
        assert_eq!(kind_for(Some(502), None), ErrorKind::Transient);
        assert_eq!(kind_for(Some(400), Some("BadDigest")), ErrorKind::Corrupt);
        assert_eq!(
            kind_for(Some(400), Some("XAmzContentChecksumMismatch")),
            ErrorKind::Corrupt
        );
        assert_eq!(kind_for(Some(400), Some("Whatever")), ErrorKind::Other);
        assert_eq!(
            kind_for(Some(416), Some("InvalidRange")),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        use std::time::UNIX_EPOCH;
        // 2015-10-21T07:28:00Z
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past is no wait"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn one_line_collapses() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
