//! What people moving from `aws s3 sync` reach for: headers, metadata, ACL and encryption of
//! the objects written, read back with HEAD from the local S3 server.

mod common;

use common::*;

struct Head {
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<String>,
    metadata: std::collections::HashMap<String, String>,
}

fn head(b: &Bucket, key: &str) -> Head {
    b.block_on(async {
        let o = b
            .store
            .client()
            .head_object()
            .bucket(&b.name)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("head {key}: {e:?}"));
        Head {
            content_type: o.content_type().map(str::to_string),
            cache_control: o.cache_control().map(str::to_string),
            content_disposition: o.content_disposition().map(str::to_string),
            content_encoding: o.content_encoding().map(str::to_string),
            content_language: o.content_language().map(str::to_string),
            #[allow(deprecated)]
            expires: o.expires().map(|d| d.secs().to_string()),
            metadata: o.metadata().cloned().unwrap_or_default(),
        }
    })
}

#[test]
fn upload_options_are_stored_with_the_objects() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("wopts");
    let src = cx.path("src");
    write_tree(
        &src,
        &tree(&[("page.html", b"<p>"), ("data.bin", b"\x00\x01")]),
    );
    let r = cx.sync(&[
        "--cache-control",
        "max-age=60",
        "--content-disposition",
        "attachment",
        "--content-encoding",
        "identity",
        "--content-language",
        "en",
        "--expires",
        "2030-01-02",
        "--metadata",
        "team=data",
        "--metadata",
        "tier=gold",
        "--acl",
        "private",
        s(&src),
        &b.uri("up"),
    ]);
    r.assert_ok();
    let h = head(&b, "up/page.html");
    assert_eq!(h.content_type.as_deref(), Some("text/html"), "guessed");
    assert_eq!(h.cache_control.as_deref(), Some("max-age=60"));
    assert_eq!(h.content_disposition.as_deref(), Some("attachment"));
    assert_eq!(h.content_encoding.as_deref(), Some("identity"));
    assert_eq!(h.content_language.as_deref(), Some("en"));
    assert_eq!(
        h.expires.as_deref(),
        Some("1893542400"),
        "2030-01-02T00:00:00Z"
    );
    assert_eq!(h.metadata.get("team").map(String::as_str), Some("data"));
    assert_eq!(h.metadata.get("tier").map(String::as_str), Some("gold"));
    assert!(
        h.metadata.contains_key("mtime"),
        "s3ferry's own metadata stays"
    );

    // --content-type overrides the guess; --no-guess-mime-type leaves it to the server.
    let r = cx.sync(&["--content-type", "text/x-special", s(&src), &b.uri("ct")]);
    r.assert_ok();
    assert_eq!(
        head(&b, "ct/page.html").content_type.as_deref(),
        Some("text/x-special")
    );
    let r = cx.sync(&["--no-guess-mime-type", s(&src), &b.uri("ng")]);
    r.assert_ok();
    assert_ne!(
        head(&b, "ng/page.html").content_type.as_deref(),
        Some("text/html")
    );

    // S3 to S3: the source's headers are copied by default; REPLACE puts the given ones.
    let r = cx.sync(&[&b.uri("up"), &b.uri("copied")]);
    r.assert_ok();
    let h = head(&b, "copied/page.html");
    assert_eq!(h.cache_control.as_deref(), Some("max-age=60"));
    assert_eq!(h.metadata.get("team").map(String::as_str), Some("data"));
    let r = cx.sync(&[
        "--metadata-directive",
        "REPLACE",
        "--cache-control",
        "no-store",
        "--metadata",
        "team=ops",
        "--content-type",
        "text/plain",
        &b.uri("up"),
        &b.uri("replaced"),
    ]);
    r.assert_ok();
    let h = head(&b, "replaced/page.html");
    assert_eq!(h.cache_control.as_deref(), Some("no-store"));
    assert_eq!(h.content_type.as_deref(), Some("text/plain"));
    assert_eq!(h.metadata.get("team").map(String::as_str), Some("ops"));
    assert!(!h.metadata.contains_key("tier"), "replaced, not merged");
}

#[test]
fn bad_write_options_are_refused() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("wbad");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a", b"x")]));
    for args in [
        vec!["--expires", "next tuesday"],
        vec!["--metadata", "novalue"],
        vec!["--acl", "world-writable"],
        vec!["--sse-kms-key-id", "k"],
    ] {
        let uri = b.uri("x");
        let mut full: Vec<&str> = args.clone();
        full.push(s(&src));
        full.push(&uri);
        let r = cx.sync(&full);
        assert_eq!(r.code, 2, "{args:?}: {r}");
    }
    assert!(b.keys("").is_empty());
}

/// SSE-C keys the way `aws s3 sync` takes them, on the local server: `(algorithm, key, md5)`
/// as S3 wants them in its headers.
fn sse_c_params(key: &str) -> (String, String, String) {
    use base64::Engine as _;
    (
        "AES256".into(),
        base64::engine::general_purpose::STANDARD.encode(key),
        s3ferry_store::checksum::md5_b64(key.as_bytes()),
    )
}

/// HEAD with an SSE-C key (`None`: without one); the algorithm S3 reports, or the error.
fn head_sse_c(b: &Bucket, key: &str, sse_key: Option<&str>) -> Result<Option<String>, String> {
    b.block_on(async {
        let mut req = b.store.client().head_object().bucket(&b.name).key(key);
        if let Some(k) = sse_key {
            let (a, k, m) = sse_c_params(k);
            req = req
                .sse_customer_algorithm(a)
                .sse_customer_key(k)
                .sse_customer_key_md5(m);
        }
        req.send()
            .await
            .map(|o| o.sse_customer_algorithm().map(str::to_string))
            .map_err(|e| format!("{e:?}"))
    })
}

/// `--sse-c`/`--sse-c-key` (and `S3FERRY_SSE_C_KEY`), `--sse-c-copy-source-key`: objects are
/// written encrypted with the customer's key (single PUT and multipart), cannot be read
/// without it, re-syncs compare without re-uploading (the ETags are not MD5s), downloads
/// decrypt, S3-to-S3 copies re-encrypt with another key (CopyObject and UploadPartCopy).
#[test]
fn sse_c_objects_are_written_read_and_copied_with_the_customers_key() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("ssec");
    let b2 = cx.bucket("ssec2");
    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const KEY2: &str = "fedcba9876543210fedcba9876543210";
    let src = cx.path("src");
    let files = tree(&[
        ("small.txt", b"secret words"),
        ("big.bin", &random_bytes((12 << 20) + 77, 5)),
    ]);
    write_tree(&src, &files);
    let up = |extra: &[&str]| {
        let mut a = vec!["--sse-c", "--sse-c-key", KEY, "--part-size", "5MiB"];
        a.extend_from_slice(extra);
        a.push(s(&src));
        let uri = b.uri("");
        let mut a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        a.push(uri);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        cx.sync(&a)
    };
    let r = up(&[]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 2, "{r}");
    for k in ["small.txt", "big.bin"] {
        assert!(
            head_sse_c(&b, k, None).is_err(),
            "{k} is unreadable without the key"
        );
        assert!(
            head_sse_c(&b, k, Some(KEY2)).is_err(),
            "{k}: or with another key"
        );
        assert_eq!(
            head_sse_c(&b, k, Some(KEY)).unwrap().as_deref(),
            Some("AES256"),
            "{k}"
        );
    }
    let r = up(&[]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "re-sync from the state: {r}");
    let r = up(&["--no-state"]);
    r.assert_ok();
    assert_eq!(
        r.n("copied"),
        0,
        "re-sync without state compares stored mtimes: {r}"
    );

    // Down, with the key from the environment; without it, every object fails alone.
    let down = cx.path("down");
    let r = cx.sync_env(&[&b.uri(""), s(&down)], &[("S3FERRY_SSE_C_KEY", KEY)]);
    r.assert_ok();
    assert_eq!(read_tree(&down), files);
    let nokey = cx.path("nokey");
    let r = cx.sync(&[&b.uri(""), s(&nokey)]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.n("failed"), 2, "{r}");
    assert!(
        read_tree(&nokey).is_empty(),
        "no file from an unreadable object"
    );

    // S3 to S3: read with one key, written with another; big.bin by UploadPartCopy.
    let r = cx.sync(&[
        "--sse-c-copy-source",
        "--sse-c-copy-source-key",
        KEY,
        "--sse-c",
        "--sse-c-key",
        KEY2,
        "--copy-threshold",
        "5MiB",
        "--part-size",
        "5MiB",
        &b.uri(""),
        &b2.uri(""),
    ]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 2, "{r}");
    for k in ["small.txt", "big.bin"] {
        assert!(
            head_sse_c(&b2, k, Some(KEY)).is_err(),
            "{k}: not the source's key"
        );
        assert_eq!(
            head_sse_c(&b2, k, Some(KEY2)).unwrap().as_deref(),
            Some("AES256")
        );
    }
    assert!(
        b2.uploads().is_empty(),
        "no upload left by the refused UploadPartCopy"
    );
    let down2 = cx.path("down2");
    cx.sync_env(&[&b2.uri(""), s(&down2)], &[("S3FERRY_SSE_C_KEY", KEY2)])
        .assert_ok();
    assert_eq!(read_tree(&down2), files);

    // Bad keys and combinations: exit 2, one line, nothing written.
    let empty = cx.bucket("ssec3");
    for args in [
        vec!["--sse-c-key", "too-short"],
        vec!["--sse-c", "AES256"],
        vec!["--sse-c-key", KEY, "--sse", "AES256"],
        vec!["--sse-c-copy-source-key", KEY],
        vec!["--sse-c-key", "fileb:///no/such/key/file"],
    ] {
        let uri = empty.uri("");
        let mut full = args.clone();
        full.push(s(&src));
        full.push(&uri);
        let r = cx.sync(&full);
        assert_eq!(r.code, 2, "{args:?}: {r}");
        assert!(r.stderr.contains("sse"), "names the option: {r}");
    }
    assert!(empty.keys("").is_empty());
}
