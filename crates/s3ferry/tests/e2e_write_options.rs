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
