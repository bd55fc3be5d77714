//! Behaviour of S3 that neither local server has, on small stand-in servers: S3's refusal of
//! requests signed with a clock more than 15 minutes off (F13; SeaweedFS `weed mini` runs
//! without auth and moto accepts any signature), an S3-compatible server that rejects the
//! SDK's checksum headers (F25), and session credentials refused as expired mid-upload (F12).
#![cfg(feature = "fault")]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// `s3ferry --json --endpoint-url EP ARGS` with fake credentials and a fresh HOME and state.
fn run_at(endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> (Run, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = standin_cmd(endpoint, dir.path());
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args);
    (run_cmd(c, Duration::from_secs(60)), dir)
}

/// F13: S3 refuses a request whose `X-Amz-Date` is more than 15 minutes from its clock (a
/// HEAD with a bare 403). s3ferry signing 20 minutes ahead or behind must still get the
/// object, and a correct clock is never refused.
#[test]
fn a_client_clock_twenty_minutes_off_is_corrected() {
    let refused = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (r2, s2) = (refused.clone(), served.clone());
    let hello = vec![("hello.txt".to_string(), b"hello".to_vec())];
    let endpoint = standin(move |req| {
        let signed = req.headers.get("x-amz-date").and_then(|v| {
            chrono::NaiveDateTime::parse_from_str(v, "%Y%m%dT%H%M%SZ")
                .ok()
                .map(|t| t.and_utc())
        });
        if signed.is_none_or(|t| (t - chrono::Utc::now()).num_seconds().abs() > 15 * 60) {
            r2.fetch_add(1, Ordering::SeqCst);
            return xml_error(
                "403 Forbidden",
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
            );
        }
        s2.fetch_add(1, Ordering::SeqCst);
        if req.target.contains("list-type=2") {
            list_xml("clock-bucket", &hello)
        } else if req
            .target
            .split('?')
            .next()
            .unwrap_or("")
            .ends_with("/hello.txt")
        {
            object_reply(b"hello")
        } else {
            ("200 OK", vec![], vec![])
        }
    });
    let sync_down = |offset: i64| {
        let off = offset.to_string();
        let dst = tempfile::tempdir().expect("tempdir");
        let (r, _home) = run_at(
            &endpoint,
            &[("S3FERRY_TEST_CLOCK_OFFSET", &off)],
            &["sync", "s3://clock-bucket/", s(dst.path())],
        );
        assert_eq!(r.code, 0, "offset {offset}: {r}");
        assert_eq!(r.n("copied"), 1, "{r}");
        assert_eq!(
            std::fs::read(dst.path().join("hello.txt")).expect("hello"),
            b"hello"
        );
    };
    sync_down(20 * 60);
    let after_ahead = refused.load(Ordering::SeqCst);
    assert!(
        after_ahead >= 1,
        "the first request was signed 20 minutes ahead and refused"
    );
    assert!(
        served.load(Ordering::SeqCst) >= 2,
        "then the bucket check, listing and GET went through"
    );
    sync_down(-20 * 60);
    assert!(
        refused.load(Ordering::SeqCst) > after_ahead,
        "a clock behind is refused too, then corrected"
    );
    let before = refused.load(Ordering::SeqCst);
    sync_down(0);
    assert_eq!(
        refused.load(Ordering::SeqCst),
        before,
        "a correct clock is never refused"
    );
}

/// F25: a server that rejects the SDK's checksum headers (as some S3-compatible stores do) and
/// checks Content-MD5. By default the upload fails with the way out in its message; with
/// `--checksum-mode when-required` it succeeds, each body carrying a Content-MD5 the server
/// verified.
#[test]
fn a_server_rejecting_checksum_headers_gets_a_hint_and_when_required_works() {
    // (key, bytes, carried a Content-MD5)
    type Stored = Vec<(String, Vec<u8>, bool)>;
    let stored: Arc<Mutex<Stored>> = Arc::default();
    let st = stored.clone();
    let endpoint = standin(move |req| {
        let path = req.target.split('?').next().unwrap_or("").to_string();
        let key = path
            .trim_start_matches("/ck-bucket")
            .trim_start_matches('/')
            .to_string();
        if req.method == "PUT" {
            if let Some(h) = req.headers.keys().find(|h| {
                h.starts_with("x-amz-checksum-")
                    || h.starts_with("x-amz-sdk-checksum")
                    || *h == "x-amz-trailer"
            }) {
                return xml_error(
                    "400 Bad Request",
                    "InvalidArgument",
                    &format!("header {h} is not supported"),
                );
            }
            let md5 = req.headers.get("content-md5").cloned();
            if md5
                .as_deref()
                .is_some_and(|m| m != s3ferry_store::checksum::md5_b64(&req.body))
            {
                return xml_error(
                    "400 Bad Request",
                    "BadDigest",
                    "The Content-MD5 you specified did not match what we received.",
                );
            }
            // One object per key, listed in key order, as S3 keeps them.
            let mut all = st.lock().unwrap();
            all.retain(|(k, _, _)| *k != key);
            all.push((key, req.body.clone(), md5.is_some()));
            all.sort_by(|a, b| a.0.cmp(&b.0));
            return put_reply(&req.body);
        }
        let objects: Vec<(String, Vec<u8>)> = st
            .lock()
            .unwrap()
            .iter()
            .map(|(k, d, _)| (k.clone(), d.clone()))
            .collect();
        if req.target.contains("list-type=2") {
            return list_xml("ck-bucket", &objects);
        }
        match objects.iter().find(|(k, _)| *k == key) {
            Some((_, d)) => object_reply(d),
            None if key.is_empty() => ("200 OK", vec![], vec![]),
            None => xml_error("404 Not Found", "NoSuchKey", "no such key"),
        }
    });
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("a.txt"), b"checked on the way in").expect("write");
    let (r, _h) = run_at(&endpoint, &[], &["sync", s(src.path()), "s3://ck-bucket/"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(
        r.to_string().contains("--checksum-mode when-required"),
        "{r}"
    );
    assert!(stored.lock().unwrap().is_empty());
    let (r, _h) = run_at(
        &endpoint,
        &[],
        &[
            "--checksum-mode",
            "when-required",
            "sync",
            s(src.path()),
            "s3://ck-bucket/",
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    let got = stored.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "a.txt");
    assert_eq!(got[0].1, b"checked on the way in");
    assert!(got[0].2, "the body carried a Content-MD5");
    // The AWS setting people already have (any case) means the same.
    std::fs::write(src.path().join("b.txt"), b"the env var too").expect("write");
    let (r, _h) = run_at(
        &endpoint,
        &[("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")],
        &["sync", s(src.path()), "s3://ck-bucket/"],
    );
    assert_eq!(r.code, 0, "{r}");
    let got = stored.lock().unwrap().clone();
    // (a.txt may be sent again: this run has a state of its own and the stand-in's ETags)
    let b = got
        .iter()
        .find(|(k, _, _)| k == "b.txt")
        .expect("b.txt stored");
    assert_eq!(b.1, b"the env var too");
    assert!(
        got.iter().all(|(_, _, md5)| *md5),
        "every body carried a Content-MD5"
    );
    // And the profile's setting, as aws-cli reads it.
    let conf = src.path().join("aws-config");
    std::fs::write(
        &conf,
        "[default]\nrequest_checksum_calculation = when_required\n",
    )
    .expect("config");
    let up = tempfile::tempdir().expect("tempdir");
    std::fs::write(up.path().join("c.txt"), b"the profile too").expect("write");
    let (r, _h) = run_at(
        &endpoint,
        &[("AWS_CONFIG_FILE", s(&conf))],
        &["sync", s(up.path()), "s3://ck-bucket/"],
    );
    assert_eq!(r.code, 0, "{r}");
    let got = stored.lock().unwrap().clone();
    let c = got
        .iter()
        .find(|(k, _, _)| k == "c.txt")
        .expect("c.txt stored");
    assert_eq!(c.1, b"the profile too");
    assert!(c.2, "the body carried a Content-MD5");
}

/// F12: temporary credentials (here from a container credentials endpoint, as on ECS) that S3
/// refuses as expired in the middle of a multipart upload, before the expiry they were issued
/// with. The refused parts are retried with credentials fetched again; the parts that went up
/// before are not sent again, the upload is not restarted, and the object is complete.
#[test]
fn credentials_expiring_mid_upload_are_fetched_again_and_the_finished_parts_kept() {
    #[derive(Default)]
    struct Seen {
        /// The credentials endpoint hands out `token-2` once S3 has refused `token-1`.
        expired: usize,
        creates: usize,
        /// (part number, session token) of every part S3 accepted.
        accepted: Vec<(u32, String)>,
        parts: std::collections::BTreeMap<u32, Vec<u8>>,
        completed_with: Option<String>,
        object: Option<Vec<u8>>,
    }
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let fetches = Arc::new(AtomicUsize::new(0));

    let (sc, fc) = (seen.clone(), fetches.clone());
    let creds = standin(move |_req| {
        fc.fetch_add(1, Ordering::SeqCst);
        let token = if sc.lock().unwrap().expired > 0 {
            "token-2"
        } else {
            "token-1"
        };
        let body = serde_json::json!({
            "AccessKeyId": "fake",
            "SecretAccessKey": "fake-secret",
            "Token": token,
            "Expiration": (chrono::Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
        (
            "200 OK",
            vec![("Content-Type".into(), "application/json".into())],
            body.to_string().into_bytes(),
        )
    });

    let ss = seen.clone();
    let endpoint = standin(move |req| {
        let mut st = ss.lock().unwrap();
        let token = req
            .headers
            .get("x-amz-security-token")
            .cloned()
            .unwrap_or_default();
        if token == "token-1" && st.parts.len() >= 2 {
            st.expired += 1;
            return xml_error(
                "400 Bad Request",
                "ExpiredToken",
                "The provided token has expired.",
            );
        }
        let query = req.target.split_once('?').map_or("", |(_, q)| q);
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
        };
        let xml = |body: String| {
            (
                "200 OK",
                vec![("Content-Type".into(), "application/xml".into())],
                body.into_bytes(),
            )
        };
        if req.method == "POST"
            && query
                .split('&')
                .any(|kv| kv == "uploads" || kv == "uploads=")
        {
            st.creates += 1;
            return xml("<InitiateMultipartUploadResult><Bucket>cred-bucket</Bucket><Key>big.bin</Key><UploadId>up-1</UploadId></InitiateMultipartUploadResult>".into());
        }
        if req.method == "PUT" {
            if let Some(n) = param("partNumber").and_then(|n| n.parse::<u32>().ok()) {
                st.accepted.push((n, token));
                st.parts.insert(n, req.body.clone());
                return put_reply(&req.body);
            }
        }
        if req.method == "POST" && param("uploadId").is_some() {
            st.completed_with = Some(token);
            st.object = Some(st.parts.values().flatten().copied().collect());
            return xml("<CompleteMultipartUploadResult><Bucket>cred-bucket</Bucket><Key>big.bin</Key><ETag>\"0123456789abcdef0123456789abcdef-5\"</ETag></CompleteMultipartUploadResult>".into());
        }
        if query.contains("list-type=2") {
            return list_xml("cred-bucket", &[]);
        }
        if req.method == "DELETE" {
            return ("204 No Content", vec![], vec![]);
        }
        match (&st.object, req.target.starts_with("/cred-bucket/big.bin")) {
            (Some(o), true) => object_reply(o),
            (None, true) => xml_error("404 Not Found", "NoSuchKey", "no such key"),
            _ => ("200 OK", vec![], vec![]),
        }
    });

    let src = tempfile::tempdir().expect("tempdir");
    let data = random_bytes((20 << 20) | 1234, 12);
    std::fs::write(src.path().join("big.bin"), &data).expect("write");
    let home = tempfile::tempdir().expect("tempdir");
    let mut c = standin_cmd(&endpoint, home.path());
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{creds}/v2/credentials"),
        )
        .args([
            "sync",
            "--part-size",
            "5MiB",
            "--part-concurrency",
            "2",
            s(src.path()),
            "s3://cred-bucket/",
        ]);
    let r = run_cmd(c, Duration::from_secs(60));
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.n("copied"), 1, "{r}");

    let st = seen.lock().unwrap();
    assert!(st.expired >= 1, "S3 refused token-1 at least once");
    assert!(
        fetches.load(Ordering::SeqCst) >= 2,
        "credentials were fetched again"
    );
    assert_eq!(st.creates, 1, "the upload was not restarted");
    let mut numbers: Vec<u32> = st.accepted.iter().map(|(n, _)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        vec![1, 2, 3, 4, 5],
        "every part went up exactly once: {:?}",
        st.accepted
    );
    assert!(
        st.accepted.iter().filter(|(_, t)| t == "token-1").count() >= 2,
        "the parts before the expiry were kept: {:?}",
        st.accepted
    );
    assert_eq!(st.completed_with.as_deref(), Some("token-2"));
    assert!(
        st.object.as_deref() == Some(&data[..]),
        "the object is the file"
    );
}

/// F49: a bucket that blocks SSE-C refuses writes carrying a customer key with a 403; the
/// error says why. KMS throttling (S3 answers `ThrottlingException` while KMS is over its
/// rate) is retried and counted like any throttle, and the upload completes.
#[test]
fn a_bucket_blocking_sse_c_is_explained_and_kms_throttling_is_retried() {
    let kms_throttles = Arc::new(AtomicUsize::new(0));
    type Objects = Vec<(String, Vec<u8>)>;
    let stored: Arc<Mutex<Objects>> = Arc::default();
    let (kt, st) = (kms_throttles.clone(), stored.clone());
    let endpoint = standin(move |req| {
        if req.method == "PUT" {
            if req
                .headers
                .contains_key("x-amz-server-side-encryption-customer-algorithm")
            {
                return xml_error("403 Forbidden", "AccessDenied", "Access Denied");
            }
            if req
                .headers
                .get("x-amz-server-side-encryption")
                .map(String::as_str)
                == Some("aws:kms")
                && kt.fetch_add(1, Ordering::SeqCst) < 2
            {
                return xml_error(
                    "400 Bad Request",
                    "ThrottlingException",
                    "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls.",
                );
            }
            let path = req.target.split('?').next().unwrap_or("");
            let key = path.trim_start_matches("/kms-bucket/").to_string();
            st.lock().unwrap().push((key, req.body.clone()));
            // As S3 does: the answer confirms the encryption applied.
            let mut reply = put_reply(&req.body);
            if let Some(sse) = req.headers.get("x-amz-server-side-encryption") {
                reply
                    .1
                    .push(("x-amz-server-side-encryption".into(), sse.clone()));
            }
            return reply;
        }
        if req.target.contains("list-type=2") {
            return list_xml("kms-bucket", &[]);
        }
        ("200 OK", vec![], vec![])
    });
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("a.txt"), b"under a key").expect("write");

    let (r, _h) = run_at(
        &endpoint,
        &[],
        &[
            "sync",
            "--sse-c-key",
            "0123456789abcdef0123456789abcdef",
            s(src.path()),
            "s3://kms-bucket/",
        ],
    );
    assert_ne!(r.code, 0, "{r}");
    assert!(r.to_string().contains("BlockedEncryptionTypes"), "{r}");
    assert!(stored.lock().unwrap().is_empty());

    let (r, _h) = run_at(
        &endpoint,
        &[],
        &[
            "sync",
            "--sse",
            "aws:kms",
            s(src.path()),
            "s3://kms-bucket/",
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.n("copied"), 1, "{r}");
    assert!(r.n("throttled") >= 2, "the KMS throttles were counted: {r}");
    assert_eq!(kms_throttles.load(Ordering::SeqCst), 3);
    assert_eq!(
        stored.lock().unwrap().clone(),
        vec![("a.txt".to_string(), b"under a key".to_vec())]
    );
}

/// F31, F32, F37 through the binary, on a listing the local S3 server cannot hold (it
/// normalises `a//b`, drops the body of `d/` and refuses long names): downloaded next to their
/// well-formed neighbours, `a//b`, a non-empty `d/`, a 300-byte segment and an 1,100-byte key
/// (over S3's 1,024) are refused one by one (exit 1) while `a/b`, `d/f` and `ok.txt` arrive
/// exactly.
#[test]
fn awkward_keys_next_to_their_neighbours_are_refused_alone() {
    let long_segment = format!("long/{}", "x".repeat(300));
    let long_key = vec!["y".repeat(200); 5].join("/") + "/" + &"z".repeat(95);
    assert!(long_key.len() > 1024);
    let objects: Vec<(String, Vec<u8>)> = vec![
        ("a//b".into(), b"double".to_vec()),
        ("a/b".into(), b"single".to_vec()),
        ("d/".into(), b"marker with a body".to_vec()),
        ("d/f".into(), b"in d".to_vec()),
        (long_segment.clone(), b"too long a name".to_vec()),
        ("ok.txt".into(), b"fine".to_vec()),
        (long_key.clone(), b"long but legal".to_vec()),
    ];
    let mut sorted = objects.clone();
    sorted.sort();
    let served = sorted.clone();
    let endpoint = standin(move |req| {
        if req.target.contains("list-type=2") {
            return list_xml("odd-bucket", &served);
        }
        let path = req.target.split('?').next().unwrap_or("");
        let key = path.strip_prefix("/odd-bucket/").unwrap_or("");
        let key = percent_decode(key);
        match served.iter().find(|(k, _)| *k == key) {
            Some((_, d)) => object_reply(d),
            None if key.is_empty() => ("200 OK", vec![], vec![]),
            None => xml_error("404 Not Found", "NoSuchKey", "no such key"),
        }
    });
    let dst = tempfile::tempdir().expect("tempdir");
    let (r, _h) = run_at(&endpoint, &[], &["sync", "s3://odd-bucket/", s(dst.path())]);
    assert_eq!(r.code, 1, "{r}");
    let mut refused: Vec<String> = r
        .json()
        .iter()
        .filter(|v| v["action"] == "refuse" || v["action"] == "fail")
        .map(|v| v["key"].as_str().unwrap_or_default().to_string())
        .collect();
    refused.sort();
    let mut want_refused = vec!["a//b".to_string(), "d/".into(), long_segment, long_key];
    want_refused.sort();
    assert_eq!(refused, want_refused, "{r}");
    assert_eq!(r.n("refused"), 4, "{r}");
    assert_eq!(r.n("copied"), 3, "{r}");
    let got = read_tree(dst.path());
    let want: BTreeMap<String, Vec<u8>> = objects
        .into_iter()
        .filter(|(k, _)| !refused.contains(k))
        .collect();
    assert_eq!(got, want);
}

/// `%XX` escapes of a request path, decoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 23, point 8: GETs of whole objects ask for the object's checksums (which the SDK then
/// validates) unless AWS_RESPONSE_CHECKSUM_VALIDATION or the profile's
/// response_checksum_validation says when_required, as for aws-cli.
#[test]
fn response_checksum_validation_when_required_stops_asking_for_checksums() {
    let asked: Arc<Mutex<Vec<bool>>> = Arc::default();
    let a = asked.clone();
    let data = b"validated or not".to_vec();
    let d = data.clone();
    let endpoint = standin(move |req| {
        if req.target.contains("list-type=2") {
            return list_xml("rv-bucket", &[("a.txt".to_string(), d.clone())]);
        }
        if req.method == "GET" && req.target.starts_with("/rv-bucket/a.txt") {
            a.lock().unwrap().push(
                req.headers
                    .get("x-amz-checksum-mode")
                    .is_some_and(|v| v.eq_ignore_ascii_case("enabled")),
            );
        }
        object_reply(&d)
    });
    let get = |env: &[(&str, &str)]| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (r, _h) = run_at(
            &endpoint,
            env,
            &["cp", "s3://rv-bucket/a.txt", s(&dir.path().join("a.txt"))],
        );
        assert_eq!(r.code, 0, "{r}");
        assert_eq!(std::fs::read(dir.path().join("a.txt")).expect("read"), data);
        asked.lock().unwrap().drain(..).collect::<Vec<bool>>()
    };
    let default = get(&[]);
    assert!(
        !default.is_empty() && default.iter().all(|x| *x),
        "{default:?}"
    );
    let env = get(&[("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")]);
    assert!(!env.is_empty() && env.iter().all(|x| !*x), "{env:?}");
    let conf = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(
        conf.path(),
        "[default]\nresponse_checksum_validation = WHEN_REQUIRED\n",
    )
    .expect("config");
    let profile = get(&[("AWS_CONFIG_FILE", s(conf.path()))]);
    assert!(
        !profile.is_empty() && profile.iter().all(|x| !*x),
        "{profile:?}"
    );
}

/// Issue 23, point 12: a server without server-side encryption (Garage, for one) takes a PUT
/// that asks for `--sse AES256` and answers without `x-amz-server-side-encryption`. The object
/// fails (exit 1) with the option that accepts it named; a multipart upload is aborted at its
/// first unconfirmed part, before any object exists; `--allow-unconfirmed-sse` accepts both.
#[test]
fn requested_encryption_the_server_does_not_confirm_fails_the_object() {
    #[derive(Default)]
    struct Seen {
        objects: Vec<String>,
        aborted: usize,
        completed: usize,
        removed: usize,
    }
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sn = seen.clone();
    let endpoint = standin(move |req| {
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let key = path.trim_start_matches("/plain-bucket/").to_string();
        let mut g = sn.lock().unwrap();
        match req.method.as_str() {
            "POST" if query.starts_with("uploads") => (
                "200 OK",
                vec![],
                format!(
                    "<InitiateMultipartUploadResult><Bucket>plain-bucket</Bucket><Key>{key}</Key>\
                     <UploadId>u1</UploadId></InitiateMultipartUploadResult>"
                )
                .into_bytes(),
            ),
            "POST" if query.starts_with("delete") => {
                g.removed += 1;
                (
                    "200 OK",
                    vec![],
                    b"<DeleteResult><Deleted><Key>small.txt</Key></Deleted></DeleteResult>"
                        .to_vec(),
                )
            }
            "POST" => {
                g.completed += 1;
                g.objects.push(key.clone());
                (
                    "200 OK",
                    vec![],
                    format!(
                        "<CompleteMultipartUploadResult><Key>{key}</Key><ETag>\"x-2\"</ETag>\
                         </CompleteMultipartUploadResult>"
                    )
                    .into_bytes(),
                )
            }
            "PUT" if query.contains("partNumber") => put_reply(&req.body),
            "PUT" => {
                g.objects.push(key);
                put_reply(&req.body)
            }
            "DELETE" => {
                g.aborted += 1;
                ("204 No Content", vec![], vec![])
            }
            _ if req.target.contains("list-type=2") => list_xml("plain-bucket", &[]),
            _ => ("200 OK", vec![], vec![]),
        }
    });
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("small.txt"), b"meant to be encrypted").expect("write");
    let (r, _h) = run_at(
        &endpoint,
        &[],
        &[
            "cp",
            "--sse",
            "AES256",
            s(&src.path().join("small.txt")),
            "s3://plain-bucket/small.txt",
        ],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.to_string().contains("did not confirm")
            && r.to_string().contains("--allow-unconfirmed-sse")
            && r.to_string().contains("removed again"),
        "{r}"
    );
    let big = src.path().join("big.bin");
    std::fs::write(&big, random_bytes(12 << 20, 7)).expect("write");
    let (r, _h) = run_at(
        &endpoint,
        &[],
        &[
            "cp",
            "--sse",
            "AES256",
            s(&big),
            "s3://plain-bucket/big.bin",
        ],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(r.to_string().contains("no object was written"), "{r}");
    {
        let g = seen.lock().unwrap();
        assert_eq!(g.completed, 0, "the unconfirmed upload was not completed");
        assert!(g.aborted >= 1, "the unconfirmed upload was aborted");
        assert_eq!(g.objects, vec!["small.txt".to_string()]);
        assert_eq!(
            g.removed, 1,
            "the plain copy of small.txt was removed again"
        );
    }
    for (file, key) in [
        (src.path().join("small.txt"), "small.txt"),
        (big, "big.bin"),
    ] {
        let (r, _h) = run_at(
            &endpoint,
            &[],
            &[
                "--allow-unconfirmed-sse",
                "cp",
                "--sse",
                "AES256",
                s(&file),
                &format!("s3://plain-bucket/{key}"),
            ],
        );
        assert_eq!(r.code, 0, "{r}");
    }
    assert_eq!(seen.lock().unwrap().completed, 1);
}

/// Issue 23, point 9, on the wire: aws-cli's `--website-redirect` and `--grants` become
/// `x-amz-website-redirect-location` and `x-amz-grant-*` on the PUT (and on the
/// CreateMultipartUpload of a large file), `--page-size N` asks each listing for N keys, and
/// `--checksum-algorithm` other than CRC64NVME with a local source is refused, as is `--acl`
/// with `--grants`.
#[test]
fn aws_cli_write_and_listing_options_reach_the_wire() {
    type Seen = Vec<(String, String, std::collections::HashMap<String, String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sn = seen.clone();
    let endpoint = standin(move |req| {
        sn.lock()
            .unwrap()
            .push((req.method.clone(), req.target.clone(), req.headers.clone()));
        let (_, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        match req.method.as_str() {
            "POST" if query.starts_with("uploads") => (
                "200 OK",
                vec![],
                b"<InitiateMultipartUploadResult><Bucket>www</Bucket><Key>big.bin</Key>\
                  <UploadId>u1</UploadId></InitiateMultipartUploadResult>"
                    .to_vec(),
            ),
            "POST" => (
                "200 OK",
                vec![],
                b"<CompleteMultipartUploadResult><Key>big.bin</Key><ETag>\"x-2\"</ETag>\
                  </CompleteMultipartUploadResult>"
                    .to_vec(),
            ),
            "PUT" => put_reply(&req.body),
            _ if query.contains("list-type=2") => list_xml(
                "www",
                &[
                    ("a".to_string(), b"1".to_vec()),
                    ("b".to_string(), b"2".to_vec()),
                ],
            ),
            _ => ("200 OK", vec![], vec![]),
        }
    });
    let src = tempfile::tempdir().expect("tempdir");
    let small = src.path().join("small.txt");
    std::fs::write(&small, b"redirected").expect("write");
    let big = src.path().join("big.bin");
    std::fs::write(&big, random_bytes(12 << 20, 5)).expect("write");
    let write = [
        "--website-redirect",
        "/elsewhere.html",
        "--grants",
        "read=uri=http://acs.amazonaws.com/groups/global/AllUsers",
        "full=id=abc123",
        "read=id=def456",
    ];
    for (file, key) in [(&small, "small.txt"), (&big, "big.bin")] {
        // aws-cli's order: the paths, then the options (--grants takes every value after it).
        let dst = format!("s3://www/{key}");
        let mut args = vec!["cp", s(file), &dst];
        args.extend_from_slice(&write);
        let (r, _h) = run_at(&endpoint, &[], &args);
        assert_eq!(r.code, 0, "{r}");
    }
    let got = seen.lock().unwrap().clone();
    let creates: Vec<_> = got
        .iter()
        .filter(|(m, t, _)| {
            (m == "PUT" && t.starts_with("/www/small.txt"))
                || (m == "POST" && t.starts_with("/www/big.bin?uploads"))
        })
        .collect();
    assert_eq!(creates.len(), 2, "{got:?}");
    for (_, t, h) in creates {
        assert_eq!(
            h.get("x-amz-website-redirect-location").map(String::as_str),
            Some("/elsewhere.html"),
            "{t}"
        );
        assert_eq!(
            h.get("x-amz-grant-read").map(String::as_str),
            Some("uri=\"http://acs.amazonaws.com/groups/global/AllUsers\", id=\"def456\""),
            "{t}"
        );
        assert_eq!(
            h.get("x-amz-grant-full-control").map(String::as_str),
            Some("id=\"abc123\""),
            "{t}"
        );
    }

    seen.lock().unwrap().clear();
    let (r, _h) = run_at(&endpoint, &[], &["--page-size", "7", "ls", "s3://www/"]);
    assert_eq!(r.code, 0, "{r}");
    let lists: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t, _)| t.contains("list-type=2"))
        .map(|(_, t, _)| t.clone())
        .collect();
    assert!(
        !lists.is_empty() && lists.iter().all(|t| t.contains("max-keys=7")),
        "{lists:?}"
    );

    for (args, want) in [
        (
            vec![
                "cp",
                "--checksum-algorithm",
                "SHA256",
                s(&small),
                "s3://www/x",
            ],
            "--checksum-algorithm SHA256",
        ),
        (
            vec![
                "cp",
                "--acl",
                "private",
                "--grants",
                "read=id=x",
                s(&small),
                "s3://www/x",
            ],
            "--grants",
        ),
        (
            vec!["cp", s(&small), "s3://www/x", "--grants", "write=id=x"],
            "--grants",
        ),
    ] {
        let (r, _h) = run_at(&endpoint, &[], &args);
        assert_eq!(r.code, 2, "{args:?}: {r}");
        assert!(r.stderr.contains(want), "{args:?}: {r}");
    }
    let (r, _h) = run_at(
        &endpoint,
        &[],
        &[
            "cp",
            "--checksum-algorithm",
            "crc64nvme",
            s(&small),
            "s3://www/y",
        ],
    );
    assert_eq!(r.code, 0, "{r}");
}

/// Issue 23, point 2: a multipart object of a part size nothing reproduces, on a server that
/// neither stores a whole-object checksum nor says part sizes (HEAD with partNumber answers
/// without PartsCount): the reason says the content could not be compared, not that it
/// differs, and the file is sent.
#[test]
fn a_multipart_etag_nothing_can_check_is_not_comparable() {
    let data = random_bytes(1000, 11);
    let etag = "\"0123456789abcdef0123456789abcdef-3\"";
    let puts = Arc::new(AtomicUsize::new(0));
    let p = puts.clone();
    let endpoint = standin(move |req| {
        if req.target.contains("list-type=2") {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>nc-bucket</Name>\
                 <KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>\
                 <Contents><Key>x.bin</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>\
                 <ETag>{}</ETag><Size>1000</Size><StorageClass>STANDARD</StorageClass>\
                 </Contents></ListBucketResult>",
                etag.replace('"', "&quot;")
            );
            return ("200 OK", vec![], xml.into_bytes());
        }
        match req.method.as_str() {
            // (The length goes out as Content-Length; a HEAD sends no body.)
            "HEAD" => (
                "200 OK",
                vec![
                    ("ETag".into(), etag.into()),
                    (
                        "Last-Modified".into(),
                        "Mon, 01 Jan 2024 00:00:00 GMT".into(),
                    ),
                ],
                vec![0u8; 1000],
            ),
            "PUT" => {
                p.fetch_add(1, Ordering::SeqCst);
                put_reply(&req.body)
            }
            _ => ("200 OK", vec![], vec![]),
        }
    });
    let src = tempfile::tempdir().expect("tempdir");
    let f = src.path().join("x.bin");
    std::fs::write(&f, &data).expect("write");
    set_mtime(&f, 1_600_000_000, 0);
    let (r, _h) = run_at(
        &endpoint,
        &[],
        &["sync", "-v", s(src.path()), "s3://nc-bucket/"],
    );
    assert_eq!(r.code, 0, "{r}");
    assert!(r.to_string().contains("content not comparable"), "{r}");
    assert_eq!(puts.load(Ordering::SeqCst), 1, "{r}");
}
