//! End-to-end: awkward keys, many files, big multipart objects both ways, and S3 -> S3 copies
//! (server-side, streamed, multipart server-side) keeping metadata, content type and tags.

mod common;

use std::collections::BTreeMap;

use common::*;

/// Keys with spaces, NFC unicode, URL-special characters, very long keys, empty files: local ->
/// S3 -> local round trips exactly (keys byte for byte, contents, nothing extra), and re-syncs
/// in both directions copy nothing.
#[test]
fn awkward_keys_round_trip_exactly_both_ways() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("keys");
    let long_seg = "s".repeat(200);
    let long_uni = "\u{e9}".repeat(100); // 200 bytes of NFC 'é'
    let long_key = format!(
        "long/{long_seg}/{long_uni}/{long_seg}/{long_seg}/{}/end-of-a-long-key.txt",
        "m".repeat(70)
    );
    assert!(
        long_key.len() > 850 && long_key.len() < 1000,
        "{}",
        long_key.len()
    );
    let files = tree(&[
        ("with space/a b  c.txt", b"spaces"),
        (" leading and trailing ", b"edge spaces"),
        (
            "caf\u{e9}/na\u{ef}ve \u{65e5}\u{672c}\u{8a9e}.txt",
            b"unicode NFC",
        ),
        ("emoji \u{1f600}/\u{00c5}ngstr\u{f6}m", b"more unicode"),
        ("plus+sign+.txt", b"plus"),
        ("percent%20not-a-space%.txt", b"percent"),
        ("100%", b"pct"),
        ("hash#fragment.txt", b"hash"),
        ("question?x=1&y=2.txt", b"query"),
        (
            "amp&and=eq;semi,comma@at!bang$dollar'quote(paren)[br]{c}~tilde",
            b"sub-delims",
        ),
        ("empty.txt", b""),
        ("dir/empty-too", b""),
        ("..dots../x..", b"dots inside names are fine"),
        (&long_key, b"long key"),
    ]);
    let src = cx.path("src");
    write_tree(&src, &files);

    let r = cx.sync(&[s(&src), &b.uri("k")]);
    r.assert_ok();
    assert_eq!(r.n("copied"), files.len() as u64, "{r}");
    assert_eq!(b.objects("k/"), files, "bucket content (keys byte-exact)");

    let dst = cx.path("dst");
    let r = cx.sync(&[&b.uri("k"), s(&dst)]);
    r.assert_ok();
    assert_eq!(r.n("copied"), files.len() as u64, "{r}");
    assert_eq!(read_tree(&dst), files, "downloaded tree");

    for args in [
        vec![s(&src), &b.uri("k")],
        vec!["--no-state", s(&src), &b.uri("k")],
        vec![&b.uri("k"), s(&dst)],
        vec!["--no-state", &b.uri("k"), s(&dst)],
    ] {
        let r = cx.sync(&args);
        r.assert_ok();
        assert_eq!(r.n("copied"), 0, "{args:?}: {r}");
    }
}

/// 2,000 files in one directory: up and down exactly; a re-sync copies nothing.
#[test]
fn directory_with_2000_files_round_trips() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("many");
    let files: BTreeMap<String, Vec<u8>> = (0..2000)
        .map(|i| {
            (
                format!("many/f{i:05}.dat"),
                format!("file {i}\n").into_bytes(),
            )
        })
        .collect();
    let src = cx.path("src");
    write_tree(&src, &files);

    let r = cx.sync(&[s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 2000, "{r}");
    assert_eq!(r.keys("copy").len(), 2000, "one record per object: {r}");
    assert_eq!(b.keys(""), files.keys().cloned().collect::<Vec<_>>());

    let dst = cx.path("dst");
    let r = cx.sync(&[&b.uri(""), s(&dst)]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 2000, "{r}");
    assert_eq!(read_tree(&dst), files);

    let r = cx.sync(&["--no-state", s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "{r}");
    assert_eq!(r.n("skipped"), 2000, "{r}");
}

/// 105 MiB of random data: multipart up (default part size: 14 parts; --part-size 5MiB: 21
/// parts) and parallel ranged reads down; bytes and mtime exact both ways.
#[test]
fn big_file_multipart_both_directions() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("big");
    const SIZE: usize = 105 * 1024 * 1024;
    let data = random_bytes(SIZE, 42);
    let src = cx.path("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let f = src.join("big.bin");
    std::fs::write(&f, &data).expect("write");
    set_mtime(&f, 1_650_000_000, 987_654_321);

    for (prefix, extra, parts) in [("d", None, 14), ("p5", Some("5MiB"), 21)] {
        let mut args = vec![];
        if let Some(p) = extra {
            args.extend(["--part-size", p]);
        }
        let uri = b.uri(prefix);
        let mut up = args.clone();
        up.extend([s(&src), uri.as_str()]);
        let r = cx.sync(&up);
        r.assert_ok();
        assert_eq!(r.n("copied_bytes"), SIZE as u64, "{r}");
        let key = format!("{prefix}/big.bin");
        let m = b.head(&key);
        assert_eq!(m.size, SIZE as u64);
        let etag = m.etag.unwrap_or_default();
        assert!(
            etag.ends_with(&format!("-{parts}")),
            "{key}: ETag {etag:?} is not that of a {parts}-part upload"
        );
        assert!(b.get(&key) == data, "{key}: uploaded bytes differ");
        assert!(b.uploads().is_empty(), "unfinished uploads left");

        let dst = cx.path(&format!("dst-{prefix}"));
        let mut down = args.clone();
        down.extend([uri.as_str(), s(&dst)]);
        let r = cx.sync(&down);
        r.assert_ok();
        assert_eq!(r.n("copied"), 1, "{r}");
        let got = std::fs::read(dst.join("big.bin")).expect("read download");
        assert!(got == data, "downloaded bytes differ ({} bytes)", got.len());
        assert_eq!(mtime_ns(&dst.join("big.bin")), mtime_ns(&f));
        // Nothing but the file (no temp files left).
        assert_eq!(all_entries(&dst), ["big.bin"]);
        // A content re-check of the big pair (multipart ETag recomputed locally) copies nothing.
        let r = cx.sync(&["--no-state", uri.as_str(), s(&dst)]);
        r.assert_ok();
        assert_eq!(r.n("copied"), 0, "{r}");
    }
}

fn meta_opts() -> PutOptions {
    PutOptions::new()
        .content_type(Some("application/x-s3ferry-test".into()))
        .metadata(BTreeMap::from([
            ("owner".to_string(), "team-a".to_string()),
            ("purpose".to_string(), "e2e".to_string()),
        ]))
        .tags(vec![
            ("project".to_string(), "ferry".to_string()),
            ("tier".to_string(), "gold".to_string()),
        ])
}

#[track_caller]
fn assert_same_attrs(b_src: &Bucket, skey: &str, b_dst: &Bucket, dkey: &str) {
    let (sm, dm) = (b_src.head(skey), b_dst.head(dkey));
    assert_eq!(
        dm.content_type.as_deref(),
        Some("application/x-s3ferry-test"),
        "{dkey}: content type"
    );
    let md = dm.metadata.clone().unwrap_or_default();
    assert_eq!(
        md.get("owner").map(String::as_str),
        Some("team-a"),
        "{dkey}: {md:?}"
    );
    assert_eq!(
        md.get("purpose").map(String::as_str),
        Some("e2e"),
        "{dkey}: {md:?}"
    );
    assert_eq!(
        sm.metadata.unwrap_or_default().get("owner"),
        md.get("owner")
    );
    assert_eq!(
        b_dst.tags(dkey),
        [
            ("project".to_string(), "ferry".to_string()),
            ("tier".to_string(), "gold".to_string())
        ],
        "{dkey}: tags"
    );
    assert!(
        b_src.get(skey) == b_dst.get(dkey),
        "{dkey}: content differs"
    );
}

/// S3 -> S3 between two buckets: server-side CopyObject (no source GET: a source `get` would
/// fail), then streamed with --no-server-side-copy (no copy call: a destination `copy` would
/// fail). Both keep user metadata, content type and tags.
#[test]
fn s3_to_s3_server_side_and_streamed_keep_metadata_and_tags() {
    let Some(cx) = Ctx::new() else { return };
    let a = cx.bucket("s2s-src");
    let z = cx.bucket("s2s-dst");
    let small = random_bytes(300_000, 7);
    a.put_with("in/small.bin", &small, meta_opts());
    a.put_with("in/dir/empty", b"", meta_opts());

    // The fault env vars only act in builds with the `fault` feature; elsewhere the path is
    // not proven, only the result.
    let r = cx.sync_env(
        &[&a.uri("in"), &z.uri("ss")],
        &[("S3FERRY_FAULTS_SOURCE", "get:notfound")],
    );
    r.assert_ok();
    assert_eq!(r.n("copied"), 2, "{r}");
    assert_same_attrs(&a, "in/small.bin", &z, "ss/small.bin");
    assert_same_attrs(&a, "in/dir/empty", &z, "ss/dir/empty");

    let r = cx.sync_env(
        &["--no-server-side-copy", &a.uri("in"), &z.uri("st")],
        &[(
            "S3FERRY_FAULTS_DEST",
            "copy:notfound; upload_part_copy:notfound",
        )],
    );
    r.assert_ok();
    assert_eq!(r.n("copied"), 2, "{r}");
    assert_same_attrs(&a, "in/small.bin", &z, "st/small.bin");
    assert_same_attrs(&a, "in/dir/empty", &z, "st/dir/empty");

    // Re-syncs copy nothing.
    for dst in ["ss", "st"] {
        let r = cx.sync(&["--no-state", &a.uri("in"), &z.uri(dst)]);
        r.assert_ok();
        assert_eq!(r.n("copied"), 0, "{r}");
    }
}

/// A 12 MiB object with --copy-threshold 6MiB goes through UploadPartCopy (a plain `copy` would
/// fail, and so would a source `get`), keeps its attributes, and leaves no upload behind. The
/// streamed path with a 5 MiB part size makes a multipart upload from ranged reads.
#[test]
fn s3_to_s3_multipart_copy_paths() {
    let Some(cx) = Ctx::new() else { return };
    let a = cx.bucket("mpc-src");
    let z = cx.bucket("mpc-dst");
    let data = random_bytes(12 * 1024 * 1024, 9);
    a.put_with("x/big.bin", &data, meta_opts());

    let r = cx.sync_env(
        &["--copy-threshold", "6MiB", &a.uri("x"), &z.uri("pc")],
        &[
            ("S3FERRY_FAULTS_SOURCE", "get:notfound"),
            ("S3FERRY_FAULTS_DEST", "copy:notfound"),
        ],
    );
    r.assert_ok();
    assert_eq!(r.n("copied"), 1, "{r}");
    let etag = z.head("pc/big.bin").etag.unwrap_or_default();
    assert!(etag.ends_with("-2"), "not a 2-part copy: ETag {etag:?}");
    assert_same_attrs(&a, "x/big.bin", &z, "pc/big.bin");

    let r = cx.sync_env(
        &[
            "--no-server-side-copy",
            "--part-size",
            "5MiB",
            &a.uri("x"),
            &z.uri("st"),
        ],
        &[(
            "S3FERRY_FAULTS_DEST",
            "copy:notfound; upload_part_copy:notfound",
        )],
    );
    r.assert_ok();
    let etag = z.head("st/big.bin").etag.unwrap_or_default();
    assert!(etag.ends_with("-3"), "not a 3-part upload: ETag {etag:?}");
    assert_same_attrs(&a, "x/big.bin", &z, "st/big.bin");
    assert!(z.uploads().is_empty(), "unfinished uploads left");
}
