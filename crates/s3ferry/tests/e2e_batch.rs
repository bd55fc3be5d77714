//! `s3ferry batch` end to end against the local S3 server.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use s3ferry_engine::formats::csv::{ManifestEntry, ReportRow};
use serde_json::Value;

/// `s3ferry [--json] batch ARGS` with this test's state dir.
fn batch(cx: &Ctx, json: bool, args: &[&str]) -> Run {
    let mut all = Vec::new();
    if json {
        all.push("--json");
    }
    all.extend_from_slice(&["--no-progress", "batch"]);
    all.extend_from_slice(args);
    cx.run(&all)
}

/// The final job state (`--json` run/wait/status print it last).
fn state(r: &Run) -> Value {
    r.stdout
        .lines()
        .rev()
        .find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v.get("state").is_some().then_some(v)
        })
        .unwrap_or_else(|| panic!("no job state printed: {r}"))
}

/// Every row of a job's local completion report (succeeded and failed files).
fn report_rows(cx: &Ctx, job: &str) -> Vec<ReportRow> {
    let dir = cx.state.join("batch-reports").join(format!("job-{job}"));
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("report manifest"))
            .unwrap();
    assert_eq!(m["Format"], "Report_CSV_20180820");
    let mut rows = Vec::new();
    for f in m["Results"].as_array().unwrap() {
        let path = dir.join(
            f["Key"]
                .as_str()
                .unwrap()
                .trim_start_matches(&format!("job-{job}/")),
        );
        let data = std::fs::read(&path).unwrap();
        assert_eq!(
            f["MD5Checksum"].as_str().unwrap(),
            s3ferry_store::checksum::md5_hex(&data),
            "{path:?}"
        );
        assert!(
            f.get("Bucket").is_none(),
            "a local report names no bucket: {m}"
        );
        for line in String::from_utf8(data).unwrap().lines() {
            let r = ReportRow::parse_row(line).unwrap();
            assert_eq!(r.succeeded, f["TaskExecutionStatus"] == "succeeded");
            // As real reports: the HTTP status in column 5, the error code in column 6.
            let cols = s3ferry_engine::formats::csv::split_line(line).unwrap();
            assert_eq!(cols[4], r.http_status.to_string(), "{line}");
            assert_eq!(cols[5], r.error_code, "{line}");
            rows.push(r);
        }
    }
    rows
}

#[test]
fn manifest_round_trip_with_awkward_keys_and_a_checked_report() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("batch-src"), cx.bucket("batch-dst"));
    let keys = [
        "plain.txt",
        "with space.txt",
        "plus+sign.txt",
        "per%cent.txt",
        "ünïcødé/ファイル.txt",
        "deep/a/b/c.bin",
        "comma,and\"quote.txt",
    ];
    for (i, k) in keys.iter().enumerate() {
        a.put(&format!("src/{k}"), format!("content {i}").as_bytes());
    }
    let m = cx.path("m.csv");
    let r = batch(&cx, false, &["manifest", &a.uri("src"), "--out", s(&m)]);
    assert_eq!(r.code, 0, "{r}");
    // The manifest parses back to exactly the keys (URL-encoded in the file).
    let text = std::fs::read_to_string(&m).unwrap();
    let mut listed: Vec<String> = text
        .lines()
        .map(|l| ManifestEntry::parse_row(l).unwrap().key)
        .collect();
    listed.sort();
    let mut want: Vec<String> = keys.iter().map(|k| format!("src/{k}")).collect();
    want.sort();
    assert_eq!(listed, want);
    assert!(!text.contains(' '), "keys are encoded: {text}");
    // Plus one entry that does not exist: a failed row, the job still completes.
    std::fs::write(&m, format!("{text}{},src/missing.txt\n", a.name)).unwrap();

    let r = batch(
        &cx,
        true,
        &["run", "--manifest", s(&m), "--to", &b.uri("copy/")],
    );
    assert_eq!(r.code, 1, "one entry failed: {r}");
    let st = state(&r);
    assert_eq!(
        (
            st["state"].as_str(),
            st["succeeded"].as_u64(),
            st["failed"].as_u64()
        ),
        (Some("Complete"), Some(keys.len() as u64), Some(1)),
        "{r}"
    );
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            b.get(&format!("copy/src/{k}")),
            format!("content {i}").as_bytes()
        );
    }
    let rows = report_rows(&cx, st["id"].as_str().unwrap());
    assert_eq!(rows.len(), keys.len() + 1);
    for row in &rows {
        if row.entry.key == "src/missing.txt" {
            assert!(!row.succeeded);
            assert_eq!(row.http_status, 404, "{row:?}");
        } else {
            assert!(row.succeeded, "{row:?}");
            assert_eq!(
                b.get(&format!("copy/{}", row.entry.key)),
                a.get(&row.entry.key)
            );
        }
    }
}

#[test]
fn three_bucket_pairs_are_copied_whole_and_big_objects_in_parts() {
    let Some(cx) = Ctx::new() else { return };
    let srcs = [
        cx.bucket("batch-p1"),
        cx.bucket("batch-p2"),
        cx.bucket("batch-p3"),
    ];
    let dst = cx.bucket("batch-pd");
    for (n, b) in srcs.iter().enumerate() {
        let dir = cx.path(&format!("p{n}"));
        let files: BTreeMap<String, Vec<u8>> = (0..700)
            .map(|i| {
                (
                    format!("d{}/f{i:04}", i % 10),
                    format!("{n}:{i}").into_bytes(),
                )
            })
            .collect();
        write_tree(&dir, &files);
        cx.sync(&["--no-state", s(&dir), &b.uri("")]).assert_ok();
    }
    // One object above the (lowered) multipart threshold: copied with UploadPartCopy.
    let big = random_bytes(12 * 1024 * 1024, 7);
    srcs[0].put("big.bin", &big);
    let pairs = cx.path("pairs.csv");
    std::fs::write(
        &pairs,
        format!(
            "# source,destination,prefix\n{},{},one\n{},{},two/\n{},{},three\n",
            srcs[0].name, dst.name, srcs[1].name, dst.name, srcs[2].name, dst.name
        ),
    )
    .unwrap();
    let r = batch(
        &cx,
        true,
        &[
            "run",
            "--pairs",
            s(&pairs),
            "--multipart-threshold",
            "5MiB",
            "--part-size",
            "5MiB",
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    let st = state(&r);
    assert_eq!(st["succeeded"], 2101, "{r}");
    for (p, b) in ["one/", "two/", "three/"].iter().zip(&srcs) {
        assert_eq!(dst.objects(p), b.objects(""), "pair into {p}");
    }
    let copied = dst.head("one/big.bin");
    assert!(
        copied
            .etag
            .as_deref()
            .unwrap_or("")
            .trim_matches('"')
            .ends_with("-3"),
        "copied in 3 parts: {:?}",
        copied.etag
    );
    assert_eq!(report_rows(&cx, st["id"].as_str().unwrap()).len(), 2101);
}

/// kill -9 mid-job, then `resume`: the destination is complete and the report has every entry
/// exactly once.
#[cfg(feature = "fault")]
#[test]
fn killed_job_resumes_without_redoing_or_double_reporting() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("batch-ka"), cx.bucket("batch-kb"));
    let dir = cx.path("src");
    let files: BTreeMap<String, Vec<u8>> = (0..200)
        .map(|i| (format!("k{i:03}"), format!("v{i}").into_bytes()))
        .collect();
    write_tree(&dir, &files);
    cx.sync(&["--no-state", s(&dir), &a.uri("")]).assert_ok();
    let m = cx.path("m.csv");
    batch(&cx, false, &["manifest", &a.uri(""), "--out", s(&m)]);
    let mut c = cx.cmd();
    c.args([
        "--no-progress",
        "batch",
        "run",
        "--manifest",
        s(&m),
        "--to",
        &b.uri("c/"),
        "--concurrency",
        "4",
    ])
    .env("S3FERRY_FAULTS", "copy:latency=40ms")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let db = cx.state.join("state.db");
    let done = || -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM records WHERE job = 'batch' AND kind = 'done'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0)
    };
    let t0 = Instant::now();
    while done() < 30 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no progress recorded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9(&mut child);
    let before = done();
    assert!(before < 200, "killed mid-job ({before} done)");
    let r = batch(&cx, true, &["list"]);
    let job = r
        .stdout
        .lines()
        .last()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .unwrap();
    assert_eq!(job["state"], "Interrupted", "{r}");
    let id = job["id"].as_str().unwrap().to_string();
    let r = batch(&cx, true, &["resume", &id]);
    assert_eq!(r.code, 0, "{r}");
    let st = state(&r);
    assert_eq!(
        (st["succeeded"].as_u64(), st["failed"].as_u64()),
        (Some(200), Some(0)),
        "{r}"
    );
    let copied = r.stdout.matches("\"action\":\"copy\"").count();
    assert!(copied > 0, "{r}");
    assert!(
        copied <= 200 - before as usize + 4,
        "finished entries are not redone"
    );
    let rows = report_rows(&cx, &id);
    let mut keys: Vec<&str> = rows.iter().map(|r| r.entry.key.as_str()).collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!((n, keys.len()), (200, 200), "every entry exactly once");
    assert_eq!(b.objects("c/"), a.objects(""));
}

#[test]
fn detached_job_is_waited_for() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("batch-da"), cx.bucket("batch-db"));
    for i in 0..20 {
        a.put(&format!("x/{i}"), b"data");
    }
    let pairs = cx.path("pairs.csv");
    std::fs::write(&pairs, format!("{},{},copy\n", a.name, b.name)).unwrap();
    let r = batch(&cx, false, &["run", "--pairs", s(&pairs), "--detach"]);
    assert_eq!(r.code, 0, "{r}");
    let id = r.stdout.trim().to_string();
    assert!(id.starts_with("b-"), "{r}");
    let mut c = cx.cmd();
    c.args(["--json", "batch", "wait", &id, "--poll", "100ms"]);
    let r = run_cmd(c, Duration::from_secs(120));
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(state(&r)["state"], "Complete");
    assert_eq!(b.keys("copy/").len(), 20);
    let r = batch(&cx, false, &["status", &id]);
    assert!(
        r.stdout
            .contains("State: Complete, Total: 20, Success: 20, Failed: 0"),
        "{r}"
    );
}

#[test]
fn bad_input_is_refused_before_any_copy() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("batch-ba"), cx.bucket("batch-bb"));
    a.put("k", b"v");
    let m = cx.path("m.csv");
    let cases: Vec<(String, Vec<String>)> = vec![
        (format!("{},k\nnot a row\n", a.name), vec![]),
        (format!("{},%zz\n", a.name), vec![]),
        // A key with a raw newline splits into a row that is not one.
        (format!("{},first\nhalf\n", a.name), vec![]),
        ("s3ferry-no-such-bucket-e2e,k\n".to_string(), vec![]),
        (format!("{},k\n", b.name), vec!["--to".into(), b.uri("")]),
    ];
    for (text, to) in cases {
        std::fs::write(&m, &text).unwrap();
        let mut args = vec!["run".to_string(), "--manifest".into(), s(&m).to_string()];
        if to.is_empty() {
            args.extend(["--to".to_string(), b.uri("c/")]);
        } else {
            args.extend(to);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = batch(&cx, false, &args);
        assert_eq!(r.code, 2, "{text:?}: {r}");
        assert_one_error_line(
            &r.stderr
                .lines()
                .filter(|l| !l.starts_with("s3ferry: batch job"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        assert!(b.keys("c/").is_empty(), "nothing copied: {text:?}");
    }
    let missing = cx.path("missing.csv");
    let r = batch(
        &cx,
        false,
        &["run", "--manifest", s(&missing), "--to", &b.uri("c/")],
    );
    assert_eq!(r.code, 2, "{r}");
    let pairs = cx.path("p.csv");
    std::fs::write(&pairs, format!("{},{}\n", a.name, a.name)).unwrap();
    let r = batch(&cx, false, &["run", "--pairs", s(&pairs)]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("onto itself"), "{r}");
}

/// `--engine s3-batch` is checked before anything is created: its report goes to S3, it needs a
/// role, and the options that only the service has are refused with the local engine. (The
/// service requests themselves are tested with recorded responses in s3ferry-aws.)
#[test]
fn s3_batch_engine_arguments_are_checked_first() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("batch-sa"), cx.bucket("batch-sb"));
    a.put("k", b"v");
    let m = cx.path("m.csv");
    std::fs::write(&m, format!("{},k\n", a.name)).unwrap();
    let base = ["run", "--manifest", s(&m), "--to"];
    let to = b.uri("c/");
    let report = b.uri("reports/");
    for (extra, says) in [
        (
            vec![
                "--engine",
                "s3-batch",
                "--role-arn",
                "arn:aws:iam::123456789012:role/r",
            ],
            "--report",
        ),
        (
            vec!["--engine", "s3-batch", "--report", report.as_str()],
            "--role-arn",
        ),
        (vec!["--priority", "5", "--confirm"], "--engine s3-batch"),
        (vec!["--confirm"], "--engine s3-batch"),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        args.push(&to);
        args.extend(extra.iter());
        let r = batch(&cx, false, &args);
        let line = r.assert_fatal();
        assert!(line.contains(says), "{args:?}: {line}");
    }
    assert!(b.keys("").is_empty(), "nothing written");
    let r = batch(&cx, true, &["list"]);
    assert_eq!(r.stdout.trim(), "", "no job was created: {r}");
}

/// A versioned bucket: `manifest --versions` lists every version with its id, and a manifest
/// row naming an old version copies exactly that version.
#[test]
fn versions_are_listed_and_a_given_version_is_copied() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("batch-va"), cx.bucket("batch-vb"));
    a.enable_versioning();
    a.put("doc.txt", b"version one");
    a.put("doc.txt", b"version two");
    let m = cx.path("v.csv");
    let r = batch(
        &cx,
        false,
        &["manifest", "--versions", &a.uri(""), "--out", s(&m)],
    );
    assert_eq!(r.code, 0, "{r}");
    let rows: Vec<ManifestEntry> = std::fs::read_to_string(&m)
        .unwrap()
        .lines()
        .map(|l| ManifestEntry::parse_row(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r.key == "doc.txt" && r.version_id.is_some()));
    assert_ne!(rows[0].version_id, rows[1].version_id);
    // Newest first: the second row is version one.
    std::fs::write(&m, format!("{}\n", rows[1].to_row())).unwrap();
    let r = batch(
        &cx,
        true,
        &["run", "--manifest", s(&m), "--to", &b.uri("old/")],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(b.get("old/doc.txt"), b"version one");
}

/// `--metadata-directive REPLACE`: the copies carry the given metadata and Content-Type, not
/// the source's (checked with HEAD), on the single-copy and the multipart-copy path.
#[test]
fn metadata_directive_replace_sets_the_copies_metadata() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("batch-ma"), cx.bucket("batch-mb"));
    let mut src_meta = std::collections::BTreeMap::new();
    src_meta.insert("origin".to_string(), "source".to_string());
    let opts = || {
        s3ferry_store::PutOptions::new()
            .metadata(src_meta.clone())
            .content_type(Some("application/x-source".into()))
    };
    a.put_with("small", b"tiny", opts());
    a.put_with("big", &random_bytes(11 * 1024 * 1024, 3), opts());
    let m = cx.path("m.csv");
    std::fs::write(&m, format!("{0},small\n{0},big\n", a.name)).unwrap();
    let r = batch(
        &cx,
        true,
        &[
            "run",
            "--manifest",
            s(&m),
            "--to",
            &b.uri("r/"),
            "--metadata-directive",
            "REPLACE",
            "--metadata",
            "team=data",
            "--content-type",
            "text/plain",
            "--multipart-threshold",
            "5MiB",
            "--part-size",
            "5MiB",
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    for k in ["r/small", "r/big"] {
        let h = b.head(k);
        let md = h.metadata.clone().unwrap_or_default();
        assert_eq!(
            md.get("team").map(String::as_str),
            Some("data"),
            "{k}: {h:?}"
        );
        assert!(!md.contains_key("origin"), "{k}: {h:?}");
        assert_eq!(h.content_type.as_deref(), Some("text/plain"), "{k}");
    }
    assert_eq!(b.get("r/big"), a.get("big"));
}

/// `--skip-existing` copies nothing the second time (every entry still reported, as skipped),
/// and `--report s3://…` puts the completion report in S3 in the Batch Operations layout.
#[test]
fn skip_existing_and_a_report_in_s3() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("batch-xa"), cx.bucket("batch-xb"));
    for i in 0..5 {
        a.put(&format!("f{i}"), format!("{i}").as_bytes());
    }
    let pairs = cx.path("p.csv");
    std::fs::write(&pairs, format!("{},{},c\n", a.name, b.name)).unwrap();
    let run = || {
        batch(
            &cx,
            true,
            &[
                "-v",
                "run",
                "--pairs",
                s(&pairs),
                "--skip-existing",
                "--report",
                &b.uri("reports"),
            ],
        )
    };
    let first = run();
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(
        first.stdout.matches("\"action\":\"copy\"").count(),
        5,
        "{first}"
    );
    let second = run();
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(
        second.stdout.matches("\"action\":\"copy\"").count(),
        0,
        "{second}"
    );
    assert_eq!(
        second.stdout.matches("\"action\":\"skip\"").count(),
        5,
        "{second}"
    );
    let id = state(&second)["id"].as_str().unwrap().to_string();
    let m: Value =
        serde_json::from_slice(&b.get(&format!("reports/job-{id}/manifest.json"))).unwrap();
    assert_eq!(m["Format"], "Report_CSV_20180820");
    let ok = m["Results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["TaskExecutionStatus"] == "succeeded")
        .unwrap()
        .clone();
    assert_eq!(ok["Bucket"].as_str(), Some(b.name.as_str()));
    let csv = b.get(ok["Key"].as_str().unwrap());
    assert_eq!(String::from_utf8(csv).unwrap().lines().count(), 5);
    // A finished job cannot be cancelled any more: it stays Complete.
    let r = batch(&cx, true, &["cancel", &id]);
    assert_eq!(r.code, 0, "{r}");
    let r = batch(&cx, true, &["status", &id]);
    assert_eq!(state(&r)["state"], "Complete");
}

/// F44, duplicate rows: a manifest that names one object twice (as concatenated inventories
/// do) copies it for each row (the copy is idempotent) and counts each row, while the report,
/// one line per object, keeps one line for it (documented in SEMANTICS.md).
#[test]
fn duplicate_manifest_rows_are_copied_each_time_and_reported_once() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("batch-dup-src"), cx.bucket("batch-dup-dst"));
    a.put("twice.txt", b"named twice");
    a.put("once.txt", b"named once");
    let m = cx.path("m.csv");
    std::fs::write(
        &m,
        format!("{0},twice.txt\n{0},once.txt\n{0},twice.txt\n", a.name),
    )
    .unwrap();
    let r = batch(
        &cx,
        true,
        &["run", "--manifest", s(&m), "--to", &b.uri("c/")],
    );
    assert_eq!(r.code, 0, "{r}");
    let st = state(&r);
    assert_eq!(st["succeeded"].as_u64(), Some(3), "{r}");
    assert_eq!(st["failed"].as_u64(), Some(0), "{r}");
    let rows = report_rows(&cx, st["id"].as_str().unwrap());
    let mut keys: Vec<&str> = rows.iter().map(|r| r.entry.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["once.txt", "twice.txt"]);
    assert!(rows.iter().all(|r| r.succeeded));
    assert_eq!(b.get("c/twice.txt"), b"named twice");
    assert_eq!(b.keys("c/"), ["once.txt", "twice.txt"]);
}
