//! The store conformance suite and S3-specific behaviour against a real S3-protocol server
//! (`S3FERRY_TEST_S3_ENDPOINT`, set by scripts/test), plus tests that need no server
//! (unreachable endpoint, 200-with-error answers from a canned HTTP responder).

use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use futures::FutureExt;
use s3ferry_aws::{S3Config, S3Store};
use s3ferry_store::{CopyOptions, CopySource, ErrorKind, PutOptions, Store};
use s3ferry_testkit::{s3_test_endpoint, unique_bucket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(endpoint: &str, bucket: &str) -> S3Config {
    let mut c = S3Config::new(bucket);
    c.endpoint_url = Some(endpoint.to_string());
    c.access_key_id =
        Some(std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "s3ferry-test".into()));
    c.secret_access_key = Some(
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "s3ferry-test-secret".into()),
    );
    c.region = Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()));
    c
}

async fn connect(endpoint: &str, bucket: &str) -> S3Store {
    match S3Store::connect(config(endpoint, bucket)).await {
        Ok(s) => s,
        Err(e) => panic!("connect: {e}"),
    }
}

/// Create a fresh bucket, run `f` on it, delete the bucket (also when `f` panics).
async fn with_bucket<F, Fut>(name: &str, f: F)
where
    F: FnOnce(S3Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(ep) = s3_test_endpoint() else { return };
    let bucket = unique_bucket(name);
    let store = connect(&ep, &bucket).await;
    if let Err(e) = store.create_bucket().await {
        panic!("create bucket {bucket}: {e}");
    }
    let res = AssertUnwindSafe(f(store.clone())).catch_unwind().await;
    let cleanup = store.delete_bucket_recursive().await;
    if let Err(p) = res {
        std::panic::resume_unwind(p);
    }
    if let Err(e) = cleanup {
        panic!("delete bucket {bucket}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_conformance_suite() {
    with_bucket("s3ferry-conformance", |store| async move {
        store.check().await.unwrap_or_else(|e| panic!("check: {e}"));
        s3ferry_testkit::conformance::run_all(&store).await;
    })
    .await;
}

#[tokio::test]
async fn missing_bucket_is_bucket_not_found() {
    let Some(ep) = s3_test_endpoint() else { return };
    let bucket = unique_bucket("s3ferry-missing");
    let store = connect(&ep, &bucket).await;
    let e = store
        .check()
        .await
        .err()
        .unwrap_or_else(|| panic!("check of a missing bucket succeeded"));
    assert_eq!(e.kind, ErrorKind::BucketNotFound, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("bucket '{bucket}' does not exist")),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    // Object operations on a missing bucket are fatal too (S3: 404 NoSuchBucket; SeaweedFS
    // answers a PUT into a missing bucket with 403 AccessDenied).
    let e = store
        .put("k", Bytes::from_static(b"x"), PutOptions::new())
        .await
        .err();
    let e = e.unwrap_or_else(|| panic!("put into a missing bucket succeeded"));
    assert!(
        matches!(
            e.kind,
            ErrorKind::BucketNotFound | ErrorKind::PermissionDenied
        ),
        "{e}"
    );
    assert!(e.kind.fatal());
    let e = store
        .get("k", Default::default())
        .await
        .err()
        .unwrap_or_else(|| panic!("get succeeded"));
    assert!(
        matches!(
            e.kind,
            ErrorKind::BucketNotFound | ErrorKind::PermissionDenied
        ),
        "{e}"
    );
}

#[tokio::test]
async fn create_bucket_twice_is_already_exists() {
    with_bucket("s3ferry-mb", |store| async move {
        let e = store
            .create_bucket()
            .await
            .err()
            .unwrap_or_else(|| panic!("second create succeeded"));
        assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
    })
    .await;
}

#[tokio::test]
async fn unreachable_endpoint_is_one_clean_line() {
    let store = connect("http://127.0.0.1:1", "some-bucket").await;
    let e = store
        .check()
        .await
        .err()
        .unwrap_or_else(|| panic!("check against port 1 succeeded"));
    let msg = e.to_string();
    assert_eq!(
        msg,
        "check: cannot reach endpoint http://127.0.0.1:1: connection refused"
    );
    assert_eq!(e.kind, ErrorKind::Transient);
    let e = store
        .head("a/b")
        .await
        .err()
        .unwrap_or_else(|| panic!("head succeeded"));
    assert_eq!(
        e.to_string(),
        "head \"a/b\": cannot reach endpoint http://127.0.0.1:1: connection refused"
    );
}

#[tokio::test]
async fn unknown_host_is_one_clean_line() {
    let store = connect("http://no-such-host.invalid:8333", "some-bucket").await;
    let e = store
        .check()
        .await
        .err()
        .unwrap_or_else(|| panic!("check against an unknown host succeeded"));
    let msg = e.to_string();
    assert!(
        msg.starts_with("check: cannot reach endpoint http://no-such-host.invalid:8333: "),
        "{msg}"
    );
    assert!(
        !msg.contains('\n') && msg.len() < 200,
        "one short line: {msg}"
    );
}

#[tokio::test]
async fn copy_domain_is_endpoint_and_access_key() {
    let a = connect("http://127.0.0.1:8333", "bucket-a").await;
    let b = connect("http://127.0.0.1:8333", "bucket-b").await;
    assert_eq!(a.capabilities().copy_domain, b.capabilities().copy_domain);
    let mut other = config("http://127.0.0.1:8333", "bucket-c");
    other.access_key_id = Some("someone-else".into());
    let c = S3Store::connect(other)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(a.capabilities().copy_domain, c.capabilities().copy_domain);
    let d = connect("http://127.0.0.2:8333", "bucket-a").await;
    assert_ne!(a.capabilities().copy_domain, d.capabilities().copy_domain);
    let dom = a.capabilities().copy_domain.unwrap_or_default();
    let secret = config("x", "y").secret_access_key.unwrap_or_default();
    assert!(!dom.contains(&secret), "the secret never appears: {dom}");
}

/// A one-shot HTTP responder: answers every request with `status` and `body`.
async fn canned_server(status: u16, body: &'static str) -> String {
    canned_server_with(status, "", body).await
}

/// As [`canned_server`], with extra header lines (each ending in `\r\n`).
async fn canned_server_with(status: u16, headers: &'static str, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head and body (Content-Length) before answering.
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                loop {
                    let Ok(n) = sock.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let resp = format!(
                    "HTTP/1.1 {status} OK\r\nContent-Type: application/xml\r\nx-amz-request-id: REQ123\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

const INTERNAL_ERROR: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code><Message>We encountered an internal error.\n Please try again.</Message><RequestId>REQ123</RequestId></Error>";
const SLOW_DOWN: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>REQ123</RequestId></Error>";

/// RELIABILITY: "A 200 is not success" — the SDK turns a 200 with an <Error> body into an error;
/// we classify it by its code.
#[tokio::test]
async fn ok_status_with_error_body_is_an_error() {
    let ep = canned_server(200, INTERNAL_ERROR).await;
    let store = connect(&ep, "bucket").await;
    let parts = vec![s3ferry_store::PartInfo {
        part_number: 1,
        etag: "abc".into(),
        crc64nvme: None,
    }];
    let e = store
        .complete_multipart(
            "k",
            "upload-1",
            parts,
            None,
            s3ferry_store::PutMode::Overwrite,
        )
        .await
        .err();
    let e = e.unwrap_or_else(|| panic!("complete with a 200 <Error> body succeeded"));
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    let http = e.http.clone().unwrap_or_default();
    assert_eq!(http.status, Some(200));
    assert_eq!(http.code.as_deref(), Some("InternalError"));
    assert_eq!(http.request_id.as_deref(), Some("REQ123"));
    assert_eq!(e.to_string(), "complete_multipart \"k\": We encountered an internal error. Please try again. (HTTP 200 InternalError)");

    let ep = canned_server(200, SLOW_DOWN).await;
    let store = connect(&ep, "bucket").await;
    let src = CopySource {
        bucket: "bucket".into(),
        key: "src".into(),
        if_match: None,
        version_id: None,
    };
    let e = store.copy(&src, "dst", CopyOptions::default()).await.err();
    let e = e.unwrap_or_else(|| panic!("copy with a 200 SlowDown body succeeded"));
    assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
    let e = store
        .upload_part_copy("dst", "u", 1, &src, 0..10)
        .await
        .err();
    let e = e.unwrap_or_else(|| panic!("upload_part_copy with a 200 SlowDown body succeeded"));
    assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
}

#[tokio::test]
async fn retry_after_is_captured_from_the_response() {
    let ep = canned_server_with(503, "Retry-After: 3\r\n", SLOW_DOWN).await;
    let store = connect(&ep, "bucket").await;
    let e = store
        .put("k", Bytes::from_static(b"x"), PutOptions::new())
        .await
        .err()
        .unwrap_or_else(|| panic!("put succeeded"));
    assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
    let http = e.http.clone().unwrap_or_default();
    assert_eq!(
        http.retry_after,
        Some(std::time::Duration::from_secs(3)),
        "{e}"
    );
    let e = store
        .head("k")
        .await
        .err()
        .unwrap_or_else(|| panic!("head succeeded"));
    let http = e.http.clone().unwrap_or_default();
    assert_eq!(
        http.retry_after,
        Some(std::time::Duration::from_secs(3)),
        "{e}"
    );

    // Without the header there is none.
    let ep = canned_server(503, SLOW_DOWN).await;
    let store = connect(&ep, "bucket").await;
    let e = store
        .head("k")
        .await
        .err()
        .unwrap_or_else(|| panic!("head succeeded"));
    assert_eq!(e.http.and_then(|h| h.retry_after), None);
}

#[tokio::test]
async fn http_errors_map_to_kinds() {
    let ep = canned_server(503, SLOW_DOWN).await;
    let store = connect(&ep, "bucket").await;
    let e = store
        .put("k", Bytes::from_static(b"x"), PutOptions::new())
        .await
        .err();
    let e = e.unwrap_or_else(|| panic!("put succeeded"));
    assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
    assert!(e.retryable());
    let e = store
        .head("k")
        .await
        .err()
        .unwrap_or_else(|| panic!("head succeeded"));
    assert_eq!(e.kind, ErrorKind::Throttled, "{e}");

    let ep = canned_server(
        403,
        "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
    )
    .await;
    let store = connect(&ep, "bucket").await;
    let e = store
        .check()
        .await
        .err()
        .unwrap_or_else(|| panic!("check succeeded"));
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert_eq!(
        e.to_string(),
        "check: access denied to bucket 'bucket' — check credentials/profile (HTTP 403)"
    );
    let e = store
        .get_tags("k")
        .await
        .err()
        .unwrap_or_else(|| panic!("get_tags succeeded"));
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert_eq!(
        e.to_string(),
        "get_tags \"k\": Access Denied (HTTP 403 AccessDenied)"
    );

    let ep = canned_server(400, "<Error><Code>BadDigest</Code><Message>The Content-MD5 you specified did not match.</Message></Error>").await;
    let store = connect(&ep, "bucket").await;
    let e = store
        .upload_part("k", "u", 1, Bytes::from_static(b"x"), None)
        .await
        .err();
    let e = e.unwrap_or_else(|| panic!("upload_part succeeded"));
    assert_eq!(e.kind, ErrorKind::Corrupt, "{e}");
}
