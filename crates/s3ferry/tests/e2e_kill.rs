//! End-to-end: SIGKILL the real binary in the middle of a sync, rerun, and check that it
//! converges: exit 0, the bucket equals the source exactly, finished objects are not sent again,
//! and no multipart upload is left open.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use common::*;
use s3ferry_store::checksum::md5_hex;

/// Kill a sync of 3,000 small files after at least 300 "copy" records, rerun with the same
/// state dir.
#[test]
fn kill_during_many_uploads_then_rerun_converges() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("kill-many");
    const N: usize = 3000;
    let files: BTreeMap<String, Vec<u8>> = (0..N)
        .map(|i| {
            (
                format!("d{:02}/f{i:05}.txt", i % 37),
                format!("content of file {i}\n")
                    .repeat(1 + i % 5)
                    .into_bytes(),
            )
        })
        .collect();
    let src = cx.path("src");
    write_tree(&src, &files);
    let uri = b.uri("p");

    let mut c = cx.cmd();
    c.args(["--json", "--no-progress", "sync", s(&src), &uri])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut printed_copies = 0usize;
    let mut lines = Vec::new();
    let mut line = String::new();
    while printed_copies < 300 {
        line.clear();
        let n = out.read_line(&mut line).expect("read stdout");
        assert!(
            n > 0,
            "s3ferry ended before 300 copies:\n{}",
            lines.join("")
        );
        if line.contains("\"action\":\"copy\"") {
            printed_copies += 1;
        }
        lines.push(line.clone());
    }
    kill9(&mut child);
    // Whatever it printed before it died counts too (complete lines only).
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    for l in rest.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            assert_ne!(v["type"], "summary", "the run finished before the kill");
            if v["type"] == "object" && v["action"] == "copy" {
                printed_copies += 1;
            }
        }
    }
    let stderr = err_thread.join().unwrap_or_default();
    assert!(printed_copies < N, "all copied before the kill\n{stderr}");

    let r = cx.sync(&[s(&src), &uri]);
    r.assert_ok();
    let recopied = r.n("copied") as usize;
    assert!(
        recopied <= N - printed_copies,
        "rerun copied {recopied}, but {printed_copies} of {N} were reported done by the killed run: {r}"
    );
    assert_eq!(r.n("copied") + r.n("skipped"), N as u64, "{r}");

    // The bucket equals the source exactly: same keys, same sizes, same MD5s.
    let got: BTreeMap<String, (u64, String)> = b
        .list("p/")
        .into_iter()
        .map(|m| (m.key[2..].to_string(), (m.size, m.etag.unwrap_or_default())))
        .collect();
    let want: BTreeMap<String, (u64, String)> = files
        .iter()
        .map(|(k, v)| (k.clone(), (v.len() as u64, md5_hex(v))))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "bucket differs from the source after the rerun"
    );
    assert!(b.uploads().is_empty());

    // And a third run has nothing to do.
    let r = cx.sync(&[s(&src), &uri]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "{r}");
}

/// Open multipart uploads the state database knows about.
#[cfg(feature = "fault")]
fn journal_uploads(state: &std::path::Path) -> i64 {
    let db = state.join("state.db");
    if !db.exists() {
        return 0;
    }
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row("SELECT count(*) FROM uploads", [], |r| r.get(0))
        .unwrap_or(0)
}

/// Kill during a multipart upload (parts slowed down by injected latency) once the upload is
/// open on the server and recorded in the state database; the rerun aborts the orphan, uploads
/// the file, and leaves no multipart upload in the bucket.
#[cfg(feature = "fault")]
#[test]
fn kill_during_multipart_upload_leaves_no_upload_after_rerun() {
    use std::time::{Duration, Instant};
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("kill-mpu");
    let data = random_bytes(24 * 1024 * 1024, 77);
    let src = cx.path("src");
    write_tree(&src, &tree(&[("big.bin", &data)]));
    let uri = b.uri("p");

    let mut c = cx.cmd();
    c.args([
        "--json",
        "--no-progress",
        "sync",
        "--part-size",
        "5MiB",
        s(&src),
        &uri,
    ])
    .env("S3FERRY_FAULTS_DEST", "upload_part:latency=60s")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn");
    let t0 = Instant::now();
    // Poll (not a fixed sleep): the upload is open on the server and in the journal.
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!("s3ferry exited ({st}) before the kill");
        }
        if !b.uploads().is_empty() && journal_uploads(&cx.state) > 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no multipart upload appeared within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9(&mut child);
    let orphans = b.uploads();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].key, "p/big.bin");
    assert!(
        b.list("p/").is_empty(),
        "no object may appear before completion"
    );

    let r = cx.sync(&["--part-size", "5MiB", s(&src), &uri]);
    r.assert_ok();
    assert_eq!(r.keys("copy"), ["big.bin"], "{r}");
    assert!(
        r.notes()
            .iter()
            .any(|n| n.contains("cleaned up 1 unfinished upload")),
        "{r}"
    );
    assert!(b.get("p/big.bin") == data, "uploaded bytes differ");
    let left = b.uploads();
    assert!(left.is_empty(), "multipart uploads left: {left:?}");
}
