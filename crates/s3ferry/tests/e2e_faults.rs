//! End-to-end with injected faults (S3FERRY_FAULTS_SOURCE / _DEST; the binary under test is
//! built with the `fault` feature): every run ends with the exact content, or — when the fault
//! outlasts the retries — exit 1 naming the object, no partial file, and a clean rerun fixes it.
#![cfg(feature = "fault")]

mod common;

use std::collections::BTreeMap;

use common::*;

const MIB: usize = 1024 * 1024;

/// One multipart upload under injected destination faults: `big.bin` of `size` random bytes
/// (from `seed`) synced in 5 MiB parts to `p/` of a fresh bucket. Returns the bucket, the bytes,
/// the run and the source directory.
fn upload_big(
    cx: &Ctx,
    bucket: &str,
    size: usize,
    seed: u64,
    faults: &str,
) -> (Bucket, Vec<u8>, Run, std::path::PathBuf) {
    let b = cx.bucket(bucket);
    let data = random_bytes(size, seed);
    let src = cx.path("src");
    write_tree(&src, &tree(&[("big.bin", &data)]));
    let r = cx.sync_env(
        &["--part-size", "5MiB", s(&src), &b.uri("p")],
        &[("S3FERRY_FAULTS_DEST", faults)],
    );
    (b, data, r, src)
}

/// A bucket holding `files` under `p/`, uploaded with the binary (so objects carry mtimes and
/// checksums the way s3ferry writes them).
fn seeded(cx: &Ctx, name: &str, files: &BTreeMap<String, Vec<u8>>) -> Bucket {
    let b = cx.bucket(name);
    let src = cx.path("seed");
    write_tree(&src, files);
    cx.sync(&["--no-state", s(&src), &b.uri("p")]).assert_ok();
    b
}

/// Download `p/` of `b` into a fresh dir with `faults` on the source side.
fn download(
    cx: &Ctx,
    b: &Bucket,
    dir: &str,
    extra: &[&str],
    faults: &str,
) -> (Run, std::path::PathBuf) {
    let dst = cx.path(dir);
    let uri = b.uri("p");
    let mut args: Vec<&str> = extra.to_vec();
    args.extend([uri.as_str(), s(&dst)]);
    let r = cx.sync_env(&args, &[("S3FERRY_FAULTS_SOURCE", faults)]);
    (r, dst)
}

/// How many times the run resumed a body read (its debug log, `-vv`).
fn resumes(r: &Run) -> usize {
    r.stderr.matches("resuming body read").count()
}

/// A connection reset in the middle of a GET body (twice): resumed, exact bytes.
#[test]
fn reset_mid_body_is_resumed() {
    let Some(cx) = Ctx::new() else { return };
    let files = tree(&[("one.bin", &random_bytes(3 * MIB, 1))]);
    let b = seeded(&cx, "f-reset", &files);
    let (r, dst) = download(
        &cx,
        &b,
        "dst",
        &["-vv"],
        "get:reset=100000@1; get:reset=300000@2",
    );
    r.assert_ok();
    assert_eq!(r.keys("copy"), ["one.bin"], "{r}");
    assert_eq!(resumes(&r), 2, "{r}");
    assert_eq!(read_tree(&dst), files);
    assert_eq!(all_entries(&dst), ["one.bin"], "temp files left");
}

/// A reset inside parts of a multipart (ranged) download.
#[test]
fn reset_in_a_part_of_a_ranged_download_is_resumed() {
    let Some(cx) = Ctx::new() else { return };
    let files = tree(&[("big.bin", &random_bytes(17 * MIB, 2))]);
    let b = seeded(&cx, "f-reset-mp", &files);
    let (r, dst) = download(
        &cx,
        &b,
        "dst",
        &["-vv", "--part-size", "5MiB"],
        "get:reset=1000000@2; get:reset=10@4",
    );
    r.assert_ok();
    assert_eq!(resumes(&r), 2, "{r}");
    assert_eq!(read_tree(&dst), files);
    assert_eq!(all_entries(&dst), ["big.bin"], "temp files left");
}

/// A body that ends early without an error (shorter than Content-Length): detected, resumed.
#[test]
fn truncated_body_is_detected_and_resumed() {
    let Some(cx) = Ctx::new() else { return };
    let files = tree(&[("t.bin", &random_bytes(2 * MIB, 3)), ("small", b"abc")]);
    let b = seeded(&cx, "f-trunc", &files);
    // truncate=1000 only bites bodies longer than 1000 bytes: t.bin.
    let (r, dst) = download(&cx, &b, "dst", &["-vv"], "get:truncate=1000@1x2");
    r.assert_ok();
    assert_eq!(r.n("copied"), 2, "{r}");
    assert!(resumes(&r) >= 1, "{r}");
    assert_eq!(read_tree(&dst), files);
}

/// One flipped byte in a downloaded body: caught by the checksum, retried, exact bytes.
#[test]
fn flipped_byte_is_caught_and_retried() {
    let Some(cx) = Ctx::new() else { return };
    let files = tree(&[("f.bin", &random_bytes(200_000, 4))]);
    let b = seeded(&cx, "f-flip", &files);
    let (r, dst) = download(&cx, &b, "dst", &[], "get:flip=1234@1");
    r.assert_ok();
    let copies = r.records("copy");
    assert_eq!(copies.len(), 1, "{r}");
    assert_eq!(
        copies[0]["reason"], "retry",
        "the first copy must have failed: {r}"
    );
    assert_eq!(read_tree(&dst), files);
}

/// Body resumes (reset, short body) and the job-level retry after a checksum mismatch are
/// retries too: the summary must count them.
#[test]
fn summary_counts_body_resumes_and_job_retries() {
    let Some(cx) = Ctx::new() else { return };
    let files = tree(&[("one.bin", &random_bytes(MIB, 11))]);
    let b = seeded(&cx, "f-count", &files);
    for (i, faults) in ["get:reset=1000@1", "get:truncate=1000@1", "get:flip=10@1"]
        .into_iter()
        .enumerate()
    {
        let (r, dst) = download(&cx, &b, &format!("dst{i}"), &[], faults);
        r.assert_ok();
        assert_eq!(read_tree(&dst), files);
        assert!(r.n("retries") > 0, "{faults}: {r}");
    }
}

/// A flipped byte in one part of a multipart download must be caught too.
#[test]
fn flipped_byte_in_a_ranged_download_is_caught() {
    let Some(cx) = Ctx::new() else { return };
    let files = tree(&[("big.bin", &random_bytes(12 * MIB, 5))]);
    let b = seeded(&cx, "f-flip-mp", &files);
    let (r, dst) = download(&cx, &b, "dst", &["--part-size", "5MiB"], "get:flip=777@2");
    r.assert_ok();
    assert!(
        read_tree(&dst) == files,
        "downloaded bytes differ from the object: a flipped byte got through"
    );
}

/// A flip on every GET of one object outlasts the retries: exit 1, the object named, no file
/// (and no temp file) for it, the other object downloaded; a rerun without faults fixes it.
#[test]
fn persistent_corruption_fails_that_object_and_a_rerun_fixes_it() {
    let Some(cx) = Ctx::new() else { return };
    let files = tree(&[("bad.bin", &random_bytes(50_000, 6)), ("good.txt", b"fine")]);
    let b = seeded(&cx, "f-persist", &files);
    // flip=20000 only reaches bodies longer than 20000 bytes: bad.bin.
    let (r, dst) = download(&cx, &b, "dst", &[], "get:flip=20000@1+");
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.n("exit_code"), 1, "{r}");
    assert_eq!(r.n("failed"), 1, "{r}");
    let fails = r.records("fail");
    assert_eq!(fails.len(), 1, "{r}");
    assert_eq!(fails[0]["key"], "bad.bin", "{r}");
    let err = fails[0]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("bad.bin"),
        "error does not name the object: {err}"
    );
    assert_eq!(r.keys("copy"), ["good.txt"], "{r}");
    assert_eq!(all_entries(&dst), ["good.txt"], "partial or temp file left");

    let r = cx.sync(&[&b.uri("p"), s(&dst)]);
    r.assert_ok();
    assert_eq!(r.keys("copy"), ["bad.bin"], "{r}");
    assert_eq!(read_tree(&dst), files);
}

/// Bursts of 503 SlowDown on PUT: retried with backoff, counted exactly in the summary.
#[test]
fn throttled_puts_are_retried_and_counted() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("f-throttle");
    let files: BTreeMap<String, Vec<u8>> = (0..12)
        .map(|i| (format!("f{i:02}"), random_bytes(1000 + i, i as u64)))
        .collect();
    let src = cx.path("src");
    write_tree(&src, &files);
    // Older than the objects, so the pairs are settled by content (equal), not by time.
    for k in files.keys() {
        set_mtime(&src.join(k), 1_577_836_800, 0);
    }
    let r = cx.sync_env(
        &[s(&src), &b.uri("p")],
        &[("S3FERRY_FAULTS_DEST", "put:throttle@2x3; put:503@9x2")],
    );
    r.assert_ok();
    assert_eq!(r.n("copied"), 12, "{r}");
    assert_eq!(r.n("retries"), 5, "{r}");
    assert_eq!(r.n("throttled"), 5, "{r}");
    assert_eq!(b.objects("p/"), files);
}

/// Resets during UploadPart of a multipart upload: the parts are resent, the object is exact,
/// no upload is left open.
#[test]
fn reset_during_upload_part_is_retried() {
    let Some(cx) = Ctx::new() else { return };
    let (b, data, r, _) = upload_big(
        &cx,
        "f-upart",
        16 * MIB,
        8,
        "upload_part:reset@2; upload_part:500@3; complete_multipart:500@1",
    );
    r.assert_ok();
    assert_eq!(r.n("retries"), 3, "{r}");
    assert!(b.get("p/big.bin") == data, "uploaded bytes differ");
    assert!(b.uploads().is_empty(), "unfinished uploads left");
}

/// 500s part-way through listing the source (S3): the listing resumes after the last key it
/// yielded, so no key is missed or copied twice.
#[test]
fn listing_errors_resume_without_missing_or_doubling() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("f-list");
    let files: BTreeMap<String, Vec<u8>> = (0..300)
        .map(|i| (format!("d{}/k{i:04}", i % 7), format!("{i}").into_bytes()))
        .collect();
    b.put_all("p/", &files);
    let (r, dst) = download(&cx, &b, "dst", &[], "list:500=100@1; list:transient=50@2");
    r.assert_ok();
    assert_eq!(r.n("copied"), 300, "{r}");
    let copied = r.keys("copy");
    let unique: std::collections::BTreeSet<&String> = copied.iter().collect();
    assert_eq!(unique.len(), 300, "a key was copied twice: {r}");
    assert_eq!(r.n("retries"), 2, "{r}");
    assert_eq!(read_tree(&dst), files);

    // With --delete, the same faults on the destination listing (S3) neither lose keys nor
    // delete anything that is in the source.
    let src = cx.path("src");
    write_tree(&src, &files);
    // Older than the objects, so the pairs are settled by content (equal), not by time.
    for k in files.keys() {
        set_mtime(&src.join(k), 1_577_836_800, 0);
    }
    let r = cx.sync_env(
        &["--delete", "--no-state", s(&src), &b.uri("p")],
        &[("S3FERRY_FAULTS_DEST", "list:500=120@1; list:500=60@3")],
    );
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "{r}");
    assert_eq!(r.n("deleted"), 0, "{r}");
    assert_eq!(r.n("skipped"), 300, "{r}");
    assert_eq!(b.objects("p/"), files);
}

/// The same for an object written by another tool (one PUT, no stored CRC64NVME, MD5 ETag):
/// a flipped byte in one range of a ranged download must not end up in the file.
#[test]
fn flipped_byte_in_a_ranged_download_of_a_foreign_object_is_caught() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("f-flip-foreign");
    let data = random_bytes(12 * MIB, 12);
    b.put("p/big.bin", &data);
    let m = b.head("p/big.bin");
    let (r, dst) = download(&cx, &b, "dst", &["--part-size", "5MiB"], "get:flip=777@2");
    r.assert_ok();
    let got = std::fs::read(dst.join("big.bin")).expect("downloaded file");
    assert!(
        got == data,
        "exit 0 but the downloaded bytes differ (crc64nvme {:?}, etag {:?}): {r}",
        m.crc64nvme,
        m.etag
    );
    assert_eq!(r.records("copy")[0]["reason"], "retry", "{r}");
}

/// CreateMultipartUpload happens on the server but its answer is lost: the retry opens a second
/// upload. The run must not leave the first one open (nor must a rerun).
#[test]
fn lost_create_multipart_response_leaves_no_open_upload() {
    let Some(cx) = Ctx::new() else { return };
    let (b, data, r, src) = upload_big(
        &cx,
        "f-lost-create",
        12 * MIB,
        13,
        "create_multipart:lost@1",
    );
    r.assert_ok();
    assert_eq!(r.n("retries"), 1, "{r}");
    assert!(b.get("p/big.bin") == data, "uploaded bytes differ");
    let r2 = cx.sync(&["--part-size", "5MiB", s(&src), &b.uri("p")]);
    r2.assert_ok();
    let left = b.uploads();
    assert!(left.is_empty(), "open multipart uploads left: {left:?}");
}

/// F11: a server that throttles every PUT from the third on, past the retry limit
/// (`--max-attempts 3`). The objects that got through stay; the others fail alone (exit 1),
/// each named; a rerun once the server is well copies exactly those.
#[test]
fn persistent_throttling_fails_those_objects_and_a_rerun_copies_only_them() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("f-persist");
    let files: BTreeMap<String, Vec<u8>> = (0..6)
        .map(|i| (format!("f{i}"), random_bytes(500 + i, 40 + i as u64)))
        .collect();
    let src = cx.path("src");
    write_tree(&src, &files);
    let r = cx.sync_env(
        &["--max-attempts", "3", s(&src), &b.uri("p")],
        &[("S3FERRY_FAULTS_DEST", "put:503@3+")],
    );
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.n("copied"), 2, "{r}");
    assert_eq!(r.n("failed"), 4, "{r}");
    let mut failed = r.keys("fail");
    failed.sort();
    assert_eq!(failed.len(), 4, "each failure is named: {r}");
    assert!(
        r.n("throttled") >= 8,
        "every failed object was tried 3 times: {r}"
    );
    let landed: Vec<String> = b
        .keys("p/")
        .iter()
        .map(|k| k["p/".len()..].to_string())
        .collect();
    assert_eq!(landed.len(), 2);
    assert!(
        failed.iter().all(|k| !landed.contains(k)),
        "{failed:?} vs {landed:?}"
    );
    let r = cx.sync(&[s(&src), &b.uri("p")]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 4, "only the failed ones: {r}");
    let mut copied = r.keys("copy");
    copied.sort();
    assert_eq!(copied, failed);
    assert_eq!(b.objects("p/"), files);
}

/// F24: CompleteMultipartUpload answered 409 ConditionalRequestConflict: retried, the object
/// is exact and no upload is left open.
#[test]
fn a_conflict_on_complete_multipart_is_retried() {
    let Some(cx) = Ctx::new() else { return };
    let (b, data, r, _) = upload_big(&cx, "f-409", 11 * MIB, 24, "complete_multipart:409@1");
    r.assert_ok();
    assert_eq!(r.n("retries"), 1, "{r}");
    assert!(b.get("p/big.bin") == data, "uploaded bytes differ");
    assert!(b.uploads().is_empty(), "unfinished uploads left");
}

/// F19 / F08: S3-to-S3 server-side copies whose UploadPartCopy fails its
/// `x-amz-copy-source-if-match` (the source changed, as the server sees it) and whose
/// CopyObject is throttled: the object is copied again from a fresh look, the throttles are
/// retried and counted, the copies are exact and no upload is left open.
#[test]
fn server_side_copies_survive_a_changed_source_and_throttling() {
    let Some(cx) = Ctx::new() else { return };
    let src = cx.bucket("f-copy-src");
    let dst = cx.bucket("f-copy-dst");
    let big = random_bytes(11 * MIB, 31);
    let small = b"small".to_vec();
    src.put("big.bin", &big);
    src.put("small.txt", &small);
    let r = cx.sync_env(
        &[
            "--copy-threshold",
            "5MiB",
            "--part-size",
            "5MiB",
            &src.uri(""),
            &dst.uri(""),
        ],
        &[(
            "S3FERRY_FAULTS_DEST",
            "upload_part_copy:412@2; copy:throttle@1x2",
        )],
    );
    r.assert_ok();
    assert_eq!(r.n("copied"), 2, "{r}");
    assert_eq!(r.n("throttled"), 2, "{r}");
    assert!(
        r.n("retries") >= 3,
        "two throttles and the restarted copy: {r}"
    );
    assert!(dst.get("big.bin") == big, "copied bytes differ");
    assert_eq!(dst.get("small.txt"), small);
    assert!(dst.uploads().is_empty(), "unfinished uploads left");
}

/// F06: UploadPart answered 400 BadDigest (the server got other bytes than the checksum says):
/// the part is sent again and the object is exact; when every try of a part is refused, that
/// object fails alone, named, with the server's code, and its upload is aborted.
#[test]
fn bad_digest_on_a_part_is_resent_and_a_persistent_one_fails_that_object_alone() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("f-digest");
    let data = random_bytes(11 * MIB, 6);
    let src = cx.path("src");
    write_tree(&src, &tree(&[("big.bin", &data), ("small.txt", b"small")]));
    let r = cx.sync_env(
        &["--part-size", "5MiB", s(&src), &b.uri("once")],
        &[("S3FERRY_FAULTS_DEST", "upload_part:corrupt@2")],
    );
    r.assert_ok();
    assert_eq!(r.n("retries"), 1, "{r}");
    assert!(b.get("once/big.bin") == data, "uploaded bytes differ");

    let r = cx.sync_env(
        &[
            "--max-attempts",
            "2",
            "--part-size",
            "5MiB",
            s(&src),
            &b.uri("always"),
        ],
        &[("S3FERRY_FAULTS_DEST", "upload_part:corrupt@1+")],
    );
    assert_eq!(r.code, 1, "{r}");
    assert_eq!((r.n("copied"), r.n("failed")), (1, 1), "{r}");
    let fail = &r.records("fail")[0];
    assert_eq!(fail["key"], "big.bin");
    assert_eq!(fail["reason"], "corrupt");
    assert!(
        fail["error"].as_str().unwrap_or("").contains("BadDigest"),
        "{r}"
    );
    assert_eq!(b.keys("always/"), ["small.txt"]);
    assert!(b.uploads().is_empty(), "the failed upload was aborted");
}

/// F24, the rest: the retried CompleteMultipartUpload finds the upload gone (S3 cancels an
/// upload whose conditional complete conflicted): the object fails in its first pass and the
/// run's last pass uploads it again with a new multipart upload; exact, nothing left open.
#[test]
fn an_upload_cancelled_after_a_conflict_is_started_again() {
    let Some(cx) = Ctx::new() else { return };
    let (b, data, r, _) = upload_big(
        &cx,
        "f-409-gone",
        11 * MIB,
        25,
        "complete_multipart:409@1; complete_multipart:404@2",
    );
    r.assert_ok();
    assert_eq!((r.n("copied"), r.n("failed")), (1, 0), "{r}");
    assert!(b.get("p/big.bin") == data, "uploaded bytes differ");
    assert!(b.uploads().is_empty(), "unfinished uploads left");
}
