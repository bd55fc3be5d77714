//! F13: a client clock 20 minutes off. Neither local server checks request times (SeaweedFS
//! `weed mini` runs without auth, moto accepts any signature), so a stand-in server does what
//! S3 does: it refuses a request whose `X-Amz-Date` is more than 15 minutes from its own clock
//! with 403 `RequestTimeTooSkewed` and its `Date`. s3ferry must correct the skew and go on.
#![cfg(feature = "fault")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// An S3 stand-in for `ls`: one bucket with one object, refusing skewed requests. Returns its
/// endpoint and the counts of (refused, served) requests.
fn strict_clock_s3(bucket: &'static str) -> (String, Arc<(AtomicUsize, AtomicUsize)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let c2 = counts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let counts = c2.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let mut w = conn;
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut amz_date = None;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("x-amz-date:") {
                        amz_date =
                            chrono::NaiveDateTime::parse_from_str(v.trim(), "%Y%m%dt%H%M%Sz")
                                .ok()
                                .map(|t| t.and_utc());
                    }
                }
                let now = chrono::Utc::now();
                let skewed = amz_date.is_none_or(|t| (t - now).num_seconds().abs() > 15 * 60);
                let object = target
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .ends_with("/hello.txt");
                let (status, body) = if skewed {
                    counts.0.fetch_add(1, Ordering::SeqCst);
                    ("403 Forbidden", "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time and the current time is too large.</Message></Error>".to_string())
                } else if target.contains("list-type=2") {
                    counts.1.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{bucket}</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>hello.txt</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>&quot;5d41402abc4b2a76b9719d911017c592&quot;</ETag><Size>5</Size><StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"))
                } else if object {
                    counts.1.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", "hello".to_string())
                } else {
                    counts.1.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", String::new())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nConnection: close\r\nDate: {}\r\nContent-Type: application/xml\r\nx-amz-bucket-region: us-east-1\r\nETag: \"5d41402abc4b2a76b9719d911017c592\"\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: {}\r\n\r\n{body}",
                    now.format("%a, %d %b %Y %H:%M:%S GMT"),
                    body.len()
                );
                let _ = w.write_all(resp.as_bytes());
                let _ = w.flush();
            });
        }
    });
    (format!("http://{addr}"), counts)
}

/// `s3ferry sync s3://clock-bucket/ DIR` with the signing clock `offset_secs` off; the file
/// must arrive.
fn sync_down(endpoint: &str, offset_secs: i64) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let dst = dir.path().join("dst");
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("AWS_ACCESS_KEY_ID", "fake")
        .env("AWS_SECRET_ACCESS_KEY", "fake-secret")
        .env("AWS_REGION", "us-east-1")
        .env("S3FERRY_STATE_DIR", dir.path().join("state"))
        .env("S3FERRY_TEST_CLOCK_OFFSET", offset_secs.to_string())
        .args([
            "--json",
            "--endpoint-url",
            endpoint,
            "sync",
            "s3://clock-bucket/",
            s(&dst),
        ]);
    let r = run_cmd(c, Duration::from_secs(60));
    if r.code == 0 {
        assert_eq!(
            std::fs::read(dst.join("hello.txt")).expect("hello.txt"),
            b"hello"
        );
    }
    r
}

#[test]
fn a_client_clock_twenty_minutes_off_is_corrected() {
    let (endpoint, counts) = strict_clock_s3("clock-bucket");
    // The stand-in is strict: a skewed request is refused...
    let ahead = sync_down(&endpoint, 20 * 60);
    assert_eq!(ahead.code, 0, "{ahead}");
    assert_eq!(ahead.n("copied"), 1, "{ahead}");
    let (refused, served) = (
        counts.0.load(Ordering::SeqCst),
        counts.1.load(Ordering::SeqCst),
    );
    assert!(
        refused >= 1,
        "the first request was signed 20 minutes ahead and refused"
    );
    assert!(
        served >= 2,
        "then the bucket check and the listing went through"
    );
    // ... and a clock behind is corrected the same way.
    let behind = sync_down(&endpoint, -20 * 60);
    assert_eq!(behind.code, 0, "{behind}");
    assert!(counts.0.load(Ordering::SeqCst) > refused);
    // A correct clock is never refused.
    let before = counts.0.load(Ordering::SeqCst);
    let on_time = sync_down(&endpoint, 0);
    assert_eq!(on_time.code, 0, "{on_time}");
    assert_eq!(counts.0.load(Ordering::SeqCst), before);
}
