//! End-to-end: unsafe keys on download, file/directory clashes, and bad input. Every fatal
//! error is exit 2 with exactly one line `s3ferry: error: ...` on stderr and no panic text.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;

/// An independent oracle: can this key be written under a directory as a plain relative path?
fn unsafe_key(k: &str) -> bool {
    k.is_empty()
        || k.starts_with('/')
        || k.chars().any(char::is_control)
        || k.split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
}

/// Keys that would escape or are not plain paths are refused (exit 1), nothing is written
/// outside the destination, and the safe objects are downloaded.
#[test]
fn unsafe_keys_are_refused_on_download() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("unsafe");
    let abs_name = format!("{}-abs", b.name);
    let abs_key = format!("/tmp/{abs_name}");
    let candidates: Vec<String> = vec![
        "../x".into(),
        "../../escape-x".into(),
        "a/../../b".into(),
        "a/../../../escape-b".into(),
        abs_key.clone(),
        "p/..".into(),
        "..".into(),
        "q/./r".into(),
        "ctl\u{1}char".into(),
        "ok.txt".into(),
        "safe/nested/file.txt".into(),
    ];
    for k in &candidates {
        // What the server accepts, it keeps (perhaps normalised); refusals are its business.
        let _ = b.block_on(b.store.put(
            k,
            format!("data of {k}").into_bytes().into(),
            PutOptions::new(),
        ));
    }
    let kept: Vec<String> = b.list("").into_iter().map(|m| m.key).collect();
    #[allow(clippy::print_stderr)]
    {
        eprintln!("keys the server kept: {kept:?}");
    }
    let want_refused: BTreeSet<String> = kept.iter().filter(|k| unsafe_key(k)).cloned().collect();
    let want_copied: BTreeSet<String> = kept.iter().filter(|k| !unsafe_key(k)).cloned().collect();
    assert!(
        !want_refused.is_empty(),
        "the server kept none of the unsafe keys, nothing to test: {kept:?}"
    );
    assert!(want_copied.contains("ok.txt"), "{kept:?}");

    let work = cx.path("work");
    let dst = work.join("dst");
    let r = cx.sync(&[&b.uri(""), s(&dst)]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.n("exit_code"), 1, "{r}");
    let refused: BTreeSet<String> = r.keys("refuse").into_iter().collect();
    assert_eq!(refused, want_refused, "kept keys: {kept:?}\n{r}");
    assert_eq!(r.n("refused"), want_refused.len() as u64, "{r}");
    for rec in r.records("refuse") {
        assert!(
            rec["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("unsafe key"),
            "{rec}"
        );
    }
    let copied: BTreeSet<String> = r.keys("copy").into_iter().collect();
    assert_eq!(copied, want_copied, "{r}");
    assert_eq!(r.n("failed"), 0, "{r}");
    for k in &want_copied {
        assert_eq!(
            std::fs::read(dst.join(k)).expect("downloaded"),
            b.get(k),
            "{k}"
        );
    }
    // Nothing outside the destination: the parent holds only dst, the test dir only what the
    // test made, and no absolute path was written.
    assert_eq!(
        all_entries(&work)
            .iter()
            .filter(|e| !e.starts_with("dst"))
            .count(),
        0,
        "{:?}",
        all_entries(&work)
    );
    let top: Vec<String> = std::fs::read_dir(cx.dir.path())
        .expect("read test dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let mut top_sorted = top.clone();
    top_sorted.sort();
    assert_eq!(top_sorted, ["state", "work"], "{top:?}");
    assert!(
        !std::path::Path::new(&abs_key).exists(),
        "{abs_key} was written"
    );
    // Everything in dst is a downloaded key.
    let on_disk: BTreeSet<String> = walk_files(&dst).into_iter().map(|(r, _)| r).collect();
    assert_eq!(on_disk, want_copied);
}

/// `foo` and `foo/bar` cannot both exist locally: one is reported as failed (naming it), the
/// other is written, exit 1; an unrelated object is downloaded.
#[test]
fn file_and_directory_with_the_same_name() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("clash");
    b.put("foo", b"i am a file");
    b.put("foo/bar", b"i am in a directory");
    b.put("other.txt", b"unrelated");
    let dst = cx.path("dst");
    let r = cx.sync(&[&b.uri(""), s(&dst)]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.n("failed"), 1, "{r}");
    let failed = r.keys("fail");
    assert_eq!(failed.len(), 1, "{r}");
    let bad = &failed[0];
    assert!(bad == "foo" || bad == "foo/bar", "{r}");
    let err = r.records("fail")[0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains(bad.as_str()),
        "error does not name {bad:?}: {err}"
    );
    let mut copied = r.keys("copy");
    copied.sort();
    let good = if bad == "foo" { "foo/bar" } else { "foo" };
    assert_eq!(copied, [good, "other.txt"], "{r}");
    let want: &[u8] = if good == "foo" {
        b"i am a file"
    } else {
        b"i am in a directory"
    };
    assert_eq!(
        std::fs::read(dst.join(good)).expect("the other one is written"),
        want
    );
    assert_eq!(
        std::fs::read(dst.join("other.txt")).expect("other"),
        b"unrelated"
    );
    // No temp files left next to them.
    let files: Vec<String> = walk_files(&dst).into_iter().map(|(r, _)| r).collect();
    let mut want_files = vec![good.to_string(), "other.txt".to_string()];
    want_files.sort();
    assert_eq!(files, want_files);
}

/// A sync into / from a bucket that does not exist: exit 2, one line naming the bucket.
#[test]
fn missing_bucket() {
    let Some(cx) = Ctx::new() else { return };
    let name = s3ferry_testkit::unique_bucket("e2e-missing");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a", b"1")]));
    for args in [
        vec!["sync", s(&src), &format!("s3://{name}/p")],
        vec!["sync", &format!("s3://{name}"), s(&cx.path("dst"))],
        vec!["ls", &format!("s3://{name}")],
    ] {
        let r = cx.run(&args);
        let line = r.assert_fatal();
        assert!(line.contains(&name), "{args:?}: {line}");
        assert!(line.contains("does not exist"), "{args:?}: {line}");
        assert!(r.stdout.is_empty() || !args.contains(&"--json"), "{r}");
    }
}

/// A download that fails before it starts (missing bucket) leaves no trace locally.
#[test]
fn failed_download_makes_no_directory() {
    let Some(cx) = Ctx::new() else { return };
    let name = s3ferry_testkit::unique_bucket("e2e-missing");
    let dst = cx.path("dst");
    let r = cx.run(&["sync", &format!("s3://{name}"), s(&dst)]);
    r.assert_fatal();
    assert!(!dst.exists(), "a failed download made its directory");
}

/// Malformed locations.
#[test]
fn bad_uris() {
    let Some(cx) = Ctx::new() else { return };
    let dst = cx.path("dst");
    for (args, needle) in [
        (vec!["sync", "s3:/x", s(&dst)], "s3:/x"),
        (vec!["ls", "s3:/x"], "s3:/x"),
        (vec!["sync", "s3://Bad_Bucket", s(&dst)], "Bad_Bucket"),
        (vec!["sync", s(&dst), "s3://Bad_Bucket/p"], "Bad_Bucket"),
        (vec!["ls", "s3://Bad_Bucket"], "Bad_Bucket"),
        (vec!["sync", "s3://", s(&dst)], "bucket"),
        (vec!["sync", "s3://ab", s(&dst)], "\"ab\""),
        (vec!["sync", "gs://bucket/x", s(&dst)], "gs://bucket/x"),
        (vec!["mb", "s3://UPPER"], "UPPER"),
    ] {
        let r = cx.run(&args);
        let line = r.assert_fatal();
        assert!(line.contains(needle), "{args:?}: {line}");
    }
}

/// Bad option values.
#[test]
fn bad_option_values() {
    let Some(cx) = Ctx::new() else { return };
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a", b"1")]));
    let b = cx.bucket("badopts");
    let uri = b.uri("p");
    for (opts, needle) in [
        (vec!["--delete", "--max-delete", "abc"], "--max-delete"),
        (vec!["--delete", "--max-delete", "150%"], "--max-delete"),
        (vec!["--delete", "--max-delete=-1"], "--max-delete"),
        (vec!["--since", "yesterdayish"], "yesterdayish"),
        (vec!["--since", "5y"], "5y"),
        (vec!["--part-size", "1MiB"], "5 MiB"),
        (vec!["--part-size", "8 parsecs"], "parsecs"),
        (vec!["--max-memory", "lots"], "lots"),
    ] {
        let mut args = vec!["sync"];
        args.extend(opts.iter().copied());
        args.extend([s(&src), uri.as_str()]);
        let r = cx.run(&args);
        let line = r.assert_fatal();
        assert!(line.contains(needle), "{args:?}: {line}");
    }
    assert!(b.keys("").is_empty(), "a refused run wrote objects");
}

/// No credentials anywhere (no env keys, empty config and credentials files, a HOME with
/// nothing): exit 2 quickly with one clear line.
#[test]
fn no_credentials() {
    let Some(cx) = Ctx::new() else { return };
    let home = cx.path("home");
    std::fs::create_dir_all(&home).expect("home");
    let (creds, conf) = (home.join("credentials"), home.join("config"));
    std::fs::write(&creds, "").expect("creds");
    std::fs::write(&conf, "").expect("config");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a", b"1")]));
    for args in [
        vec!["sync", s(&src), "s3://some-bucket/p"],
        vec!["ls", "s3://some-bucket"],
    ] {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_CONFIG_FILE", &conf)
            .env("AWS_ENDPOINT_URL", &cx.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("S3FERRY_STATE_DIR", &cx.state)
            .args(&args);
        let r = run_cmd(c, Duration::from_secs(60));
        let line = r.assert_fatal();
        assert!(line.to_lowercase().contains("credentials"), "{line}");
    }
}

/// Nothing listens on the endpoint: exit 2 with one line, well within a minute (no hang).
#[test]
fn unreachable_endpoint() {
    let Some(cx) = Ctx::new() else { return };
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a", b"1")]));
    for args in [
        vec![
            "--endpoint-url",
            "http://127.0.0.1:1",
            "sync",
            s(&src),
            "s3://some-bucket/p",
        ],
        vec![
            "--endpoint-url",
            "http://127.0.0.1:1",
            "sync",
            "s3://some-bucket/p",
            s(&src),
        ],
        vec![
            "--endpoint-url",
            "http://127.0.0.1:1",
            "ls",
            "s3://some-bucket",
        ],
    ] {
        let mut c = cx.cmd();
        c.args(&args);
        let r = run_cmd(c, Duration::from_secs(60));
        let line = r.assert_fatal();
        assert!(line.contains("127.0.0.1:1"), "{line}");
        assert!(r.elapsed < Duration::from_secs(60), "{r}");
    }
}

/// A destination key that XML 1.0 cannot carry (a control character) must not make the other
/// deletes of its DeleteObjects batch fail.
#[test]
fn delete_of_a_control_character_key_does_not_fail_its_batch() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("del-ctl");
    let src = cx.path("src");
    let keep = tree(&[
        ("a", b"1"),
        ("b", b"2"),
        ("c", b"3"),
        ("d", b"4"),
        ("e", b"5"),
    ]);
    write_tree(&src, &keep);
    for k in keep.keys() {
        set_mtime(&src.join(k), 1_577_836_800, 0);
    }
    b.put_all("", &keep);
    b.put("gone", b"x");
    b.put("ctl\u{1}key", b"y");
    assert_eq!(b.list("").len(), 7);
    let r = cx.sync(&["--delete", s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.keys("delete"), ["ctl\u{1}key", "gone"], "{r}");
    assert_eq!(b.keys(""), ["a", "b", "c", "d", "e"]);
}

/// A tiny S3 stand-in that lists `objects` (in byte order) and serves their bodies: for keys a
/// real server normalises or rejects on PUT, so the download side can still be tested.
fn fake_s3(bucket: &'static str, objects: Vec<(&'static str, &'static [u8])>) -> String {
    let mut objects: Vec<(String, Vec<u8>)> = objects
        .into_iter()
        .map(|(k, d)| (k.to_string(), d.to_vec()))
        .collect();
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    standin(move |req| {
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let path = path.trim_end_matches('/');
        if path == format!("/{bucket}") && query.contains("list-type=2") {
            list_xml(bucket, &objects)
        } else if path == format!("/{bucket}") {
            ("200 OK", vec![], vec![])
        } else if let Some((_, d)) = objects
            .iter()
            .find(|(k, _)| path == format!("/{bucket}/{k}"))
        {
            object_reply(d)
        } else {
            xml_error("404 Not Found", "NoSuchKey", "no such key")
        }
    })
}

/// Keys that would escape the destination, served by a stand-in server (a real one normalises
/// or rejects them on PUT): each is refused, nothing is written outside the destination, the
/// safe object is downloaded, exit 1. Needs no S3 server.
#[test]
fn escaping_keys_from_a_listing_are_refused() {
    let endpoint = fake_s3(
        "evil-bucket",
        vec![
            ("..", b"dotdot"),
            ("../x", b"escape"),
            ("../../y", b"escape more"),
            ("/abs-s3ferry-e2e", b"absolute"),
            ("a/../../b", b"escape via a"),
            ("a/./c", b"dot segment"),
            ("ok.txt", b"safe"),
            ("p/..", b"p dotdot"),
            ("z//w", b"empty segment"),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let dst = work.join("dst");
    let mut c = standin_cmd(&endpoint, dir.path());
    c.args(["sync", "s3://evil-bucket", s(&dst)]);
    let r = run_cmd(c, Duration::from_secs(60));
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(
        r.keys("refuse"),
        [
            "..",
            "../../y",
            "../x",
            "/abs-s3ferry-e2e",
            "a/../../b",
            "a/./c",
            "p/..",
            "z//w"
        ],
        "{r}"
    );
    assert_eq!(r.keys("copy"), ["ok.txt"], "{r}");
    assert_eq!(r.n("refused"), 8, "{r}");
    assert_eq!(std::fs::read(dst.join("ok.txt")).expect("ok.txt"), b"safe");
    // Outside the state dir, only the destination and the one safe file exist.
    let outside_state: Vec<String> = all_entries(dir.path())
        .into_iter()
        .filter(|e| e != "state" && !e.starts_with("state/"))
        .collect();
    assert_eq!(outside_state, ["work", "work/dst", "work/dst/ok.txt"]);
    assert!(!std::path::Path::new("/abs-s3ferry-e2e").exists());
}

/// `s3ferry ARGS` run in `cwd` (so a location taken as a relative local path would be created
/// there).
fn run_in(cx: &Ctx, cwd: &std::path::Path, args: &[&str]) -> Run {
    let mut c = cx.cmd();
    c.current_dir(cwd).args(args);
    run_cmd(c, RUN_TIMEOUT)
}

/// A location that starts with a URI scheme but is not a well-formed `s3://` URI is refused
/// (exit 2, one line with a hint) instead of being taken as a local path; nothing is created,
/// on either side. `./s3:x` is the way to name such a local path.
#[test]
fn uri_like_local_paths_are_refused() {
    let Some(cx) = Ctx::new() else { return };
    let cwd = cx.path("cwd");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    let other = cx.path("other");
    write_tree(&other, &tree(&[("a.txt", b"a")]));
    for (loc, hint) in [
        ("s3:/my-bucket/p", "did you mean s3://my-bucket/p"),
        ("s3:my-bucket", "did you mean s3://my-bucket"),
        ("s3a://my-bucket/x", "did you mean s3://my-bucket/x"),
        ("S3://my-bucket", "did you mean s3://my-bucket"),
        ("http://127.0.0.1:8333/b", "--endpoint-url"),
        ("https:bucket", "--endpoint-url"),
        ("gs:my-bucket", "s3://my-bucket"),
        ("gs://my-bucket/x", "s3://my-bucket/x"),
    ] {
        for args in [
            vec!["sync", s(&other), loc],
            vec!["sync", loc, s(&other)],
            vec!["sync", "--dry-run", s(&other), loc],
        ] {
            let r = run_in(&cx, &cwd, &args);
            let line = r.assert_fatal();
            assert!(line.contains(hint), "{args:?}: {line}");
            assert!(
                line.contains(loc),
                "{args:?}: the line names the input: {line}"
            );
        }
    }
    assert_eq!(
        all_entries(&cwd),
        Vec::<String>::new(),
        "something was created"
    );
    assert_eq!(all_entries(&other), ["a.txt"], "the other side changed");
    // The escape hatch: an explicit relative path is a local path.
    let r = run_in(&cx, &cwd, &["--json", "sync", s(&other), "./s3:x"]);
    r.assert_ok();
    assert_eq!(read_tree(&cwd.join("s3:x")), tree(&[("a.txt", b"a")]));
}

/// Source and destination that overlap — the same directory or prefix, or one inside the
/// other, in either order, also through a symlink or a `..` — are refused before anything
/// changes, unless the filters exclude every key of the inner one.
#[test]
fn overlapping_source_and_destination_are_refused() {
    let Some(cx) = Ctx::new() else { return };
    let t = cx.path("tree");
    let files = tree(&[("a.txt", b"a"), ("sub/b.txt", b"b")]);
    write_tree(&t, &files);
    let link = cx.path("link");
    std::os::unix::fs::symlink(&t, &link).expect("symlink");
    let ts = |rel: &str| t.join(rel).to_string_lossy().into_owned();
    let tree_s = s(&t).to_string();
    let dotdot = format!("{}/sub/..", s(&t));
    let link_backup = format!("{}/backup", s(&link));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![tree_s.clone(), tree_s.clone()], "same directory"),
        (vec![tree_s.clone(), dotdot.clone()], "same directory"),
        (vec![tree_s.clone(), ts("backup")], "backup/"),
        (vec![ts("sub"), tree_s.clone()], "sub/"),
        (
            vec![s(&link).to_string(), ts("sub/deeper/new")],
            "sub/deeper/new/",
        ),
        (vec![tree_s.clone(), link_backup.clone()], "backup/"),
        (
            vec![
                "--exclude".into(),
                "backup/*.tmp".into(),
                tree_s.clone(),
                ts("backup"),
            ],
            "backup/",
        ),
        (
            vec![
                "--exclude".into(),
                "backup/*".into(),
                "--include".into(),
                "backup/keep".into(),
                tree_s.clone(),
                ts("backup"),
            ],
            "backup/",
        ),
    ];
    let before = all_entries(&t);
    for (args, needle) in &cases {
        for delete in [false, true] {
            let mut a = vec!["sync"];
            if delete {
                a.extend(["--delete", "--max-delete", "100%"]);
            }
            a.extend(args.iter().map(String::as_str));
            let r = cx.run(&a);
            let line = r.assert_fatal();
            assert!(line.contains("overlap"), "{a:?}: {line}");
            assert!(line.contains(needle), "{a:?}: {line}");
            assert_eq!(all_entries(&t), before, "{a:?} changed the tree");
        }
    }

    // S3: the same bucket and endpoint, prefixes equal or nested, either order.
    let b = cx.bucket("overlap");
    b.put("p/q/x", b"x");
    b.put("p/y", b"y");
    let keys = b.keys("");
    for (src, dst) in [
        (b.uri("p"), b.uri("p/")),
        (b.uri(""), b.uri("p")),
        (b.uri("p/q"), b.uri("p")),
        (b.uri("p"), b.uri("p/q")),
    ] {
        let r = cx.run(&["sync", "--delete", "--max-delete", "100%", &src, &dst]);
        let line = r.assert_fatal();
        assert!(line.contains("overlap"), "{src} {dst}: {line}");
        assert_eq!(b.keys(""), keys, "{src} -> {dst} changed the bucket");
    }
    // Prefixes that only share a start do not overlap.
    cx.sync(&[&b.uri("p/q"), &b.uri("p/qq")]).assert_ok();
    assert_eq!(b.get("p/qq/x"), b"x");

    // Excluding the inner side's keys makes it fine, in both orders.
    let r = cx.sync(&["--exclude", "backup/*", &tree_s, &ts("backup")]);
    r.assert_ok();
    assert_eq!(read_tree(&t.join("backup")), files);
    assert!(!t.join("backup/backup").exists(), "copied into itself");
    let r = cx.sync(&["--exclude", "sub/*", &ts("sub"), &tree_s]);
    r.assert_ok();
    assert_eq!(std::fs::read(t.join("b.txt")).expect("b.txt"), b"b");
    let r = cx.sync(&["--exclude", "z/*", &b.uri("p"), &b.uri("p/z")]);
    r.assert_ok();
    assert_eq!(b.get("p/z/y"), b"y");
    assert!(b.keys("p/z/z/").is_empty(), "copied into itself");
}

/// Zero or absurd numbers: one clear line, exit 2, nothing written.
#[test]
fn absurd_numeric_options_are_refused() {
    let Some(cx) = Ctx::new() else { return };
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a", b"1")]));
    let b = cx.bucket("absurd");
    let uri = b.uri("p");
    for (opts, needle) in [
        (vec!["--concurrency", "0"], "--concurrency 0"),
        (vec!["--concurrency", "5000"], "--concurrency 5000"),
        (vec!["--part-concurrency", "0"], "--part-concurrency 0"),
        (vec!["--part-concurrency", "100000"], "--part-concurrency"),
        (vec!["--max-memory", "4MiB"], "--max-memory 4MiB"),
        (
            vec!["--part-size", "64MiB", "--max-memory", "32MiB"],
            "one part",
        ),
        (vec!["--part-size", "6GiB", "--max-memory", "8GiB"], "5 GiB"),
    ] {
        let mut args = vec!["sync"];
        args.extend(opts.iter().copied());
        args.extend([s(&src), uri.as_str()]);
        let r = cx.run(&args);
        let line = r.assert_fatal();
        assert!(line.contains(needle), "{args:?}: {line}");
    }
    assert!(b.keys("").is_empty(), "a refused run wrote objects");
    // The limits themselves are accepted.
    let r = cx.sync(&[
        "--concurrency",
        "4096",
        "--part-concurrency",
        "1",
        "--part-size",
        "5GiB",
        "--max-memory",
        "5GiB",
        s(&src),
        &uri,
    ]);
    r.assert_ok();
    assert_eq!(b.keys(""), ["p/a"]);
}

/// pipe, bisync and batch refuse the same numbers as sync, with the same words (one shared
/// check): exit 2, one line.
#[test]
fn absurd_numeric_options_are_refused_by_every_job() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("absurd-jobs");
    let dir = cx.path("local");
    std::fs::create_dir_all(&dir).unwrap();
    let m = cx.path("m.csv");
    std::fs::write(&m, format!("{},a\n", b.name)).unwrap();
    let (obj, pre) = (b.uri("k"), b.uri("p"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["pipe", "up", "--part-concurrency", "0", &obj],
            "--part-concurrency 0 is out of range: give 1 to 4096",
        ),
        (
            vec!["pipe", "down", "--part-concurrency", "5000", &obj],
            "--part-concurrency 5000 is out of range: give 1 to 4096",
        ),
        (
            vec![
                "pipe",
                "up",
                "--part-size",
                "6GiB",
                "--max-memory",
                "8GiB",
                &obj,
            ],
            "5 GiB maximum",
        ),
        (
            vec![
                "pipe",
                "up",
                "--part-size",
                "64MiB",
                "--max-memory",
                "32MiB",
                &obj,
            ],
            "less than one part",
        ),
        (
            vec!["bisync", "--poll", "0", "--concurrency", "0", s(&dir), &pre],
            "--concurrency 0 is out of range: give 1 to 4096",
        ),
        (
            vec![
                "bisync",
                "--poll",
                "0",
                "--concurrency",
                "5000",
                s(&dir),
                &pre,
            ],
            "--concurrency 5000 is out of range: give 1 to 4096",
        ),
        (
            vec![
                "batch",
                "run",
                "--manifest",
                s(&m),
                "--to",
                &pre,
                "--concurrency",
                "0",
            ],
            "--concurrency 0 is out of range: give 1 to 4096",
        ),
        (
            vec![
                "batch",
                "run",
                "--manifest",
                s(&m),
                "--to",
                &pre,
                "--part-size",
                "4MiB",
            ],
            "5 MiB minimum",
        ),
        (
            vec![
                "batch",
                "run",
                "--manifest",
                s(&m),
                "--to",
                &pre,
                "--part-size",
                "6GiB",
            ],
            "5 GiB maximum",
        ),
    ];
    for (args, needle) in cases {
        let r = cx.run(&args);
        let line = r.assert_fatal();
        assert!(line.contains(needle), "{args:?}: {line}");
    }
    assert!(b.keys("").is_empty(), "a refused run wrote objects");
}

/// FIFOs, sockets, devices and symlinks in a local source are never opened (a FIFO would
/// block the sync forever): each is a `skip` record naming its type, counted as skipped, and
/// `--delete` leaves a destination object of the same name alone.
#[test]
#[allow(clippy::print_stderr)]
fn special_files_and_symlinks_are_skipped_and_reported() {
    let Some(cx) = Ctx::new() else { return };
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a.txt", b"a"), ("d/f.txt", b"f")]));
    let mk = std::process::Command::new("mkfifo")
        .arg(src.join("fifo"))
        .status()
        .expect("mkfifo");
    assert!(mk.success(), "mkfifo failed");
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).expect("bind socket");
    std::os::unix::fs::symlink(src.join("a.txt"), src.join("link")).expect("symlink");
    std::os::unix::fs::symlink(src.join("d"), src.join("dirlink")).expect("symlink");
    std::os::unix::fs::symlink("/nowhere/at/all", src.join("d/dangling")).expect("symlink");
    let mut want: Vec<(&str, &str)> = vec![
        ("d/dangling", "symlink"),
        ("dirlink", "symlink"),
        ("fifo", "FIFO"),
        ("link", "symlink"),
        ("sock", "socket"),
    ];
    // A character device needs mknod (root); without it that case is left out, loudly.
    let dev = std::process::Command::new("mknod")
        .arg(src.join("null"))
        .args(["c", "1", "3"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if dev {
        want.push(("null", "character device"));
    } else {
        eprintln!("note: mknod not permitted here; the device case is not tested");
    }
    want.sort();
    let b = cx.bucket("special");
    b.put("p/fifo", b"an object where the source has a FIFO");
    let r = cx.sync(&["--delete", "--max-delete", "100%", s(&src), &b.uri("p")]);
    r.assert_ok();
    let got = r.skips();
    assert_eq!(got.len(), want.len(), "{r}");
    for ((k, reason), (wk, wr)) in got.iter().zip(&want) {
        assert_eq!(k, wk, "{r}");
        assert!(reason.contains(wr), "{k}: {reason}");
    }
    assert_eq!(r.n("skipped"), want.len() as u64, "{r}");
    assert_eq!(r.n("deleted"), 0, "{r}");
    assert_eq!(b.keys(""), ["p/a.txt", "p/d/f.txt", "p/fifo"]);
    // Excluded ones are not reported.
    let r = cx.sync(&["--exclude", "fifo", s(&src), &b.uri("p")]);
    r.assert_ok();
    assert!(!r.keys("skip").contains(&"fifo".to_string()), "{r}");
}

/// The s3ferry binary, run so that permission bits bind it even as root: as root, without
/// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv). `None` (with a printed reason) when
/// that cannot be arranged.
#[allow(clippy::print_stderr)]
fn unprivileged_cmd(cx: &Ctx, probe: &std::path::Path) -> Option<Command> {
    let base = cx.cmd();
    let uid = Command::new("id").arg("-u").output().ok()?;
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let drop_caps = ["--bounding-set=-dac_override,-dac_read_search"];
    let mut c = if root {
        let ok = Command::new("setpriv")
            .args(drop_caps)
            .arg("cat")
            .arg(probe)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !matches!(ok, Ok(s) if !s.success()) {
            eprintln!(
                "SKIP: running as root and `setpriv {}` cannot make a mode-000 file unreadable here",
                drop_caps[0]
            );
            return None;
        }
        let mut c = Command::new("setpriv");
        c.args(drop_caps).arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.stdin(std::process::Stdio::null());
    Some(c)
}

/// One unreadable file is that file's failure (exit 1, the others synced); an unreadable
/// directory is reported and skipped, not fatal; deletes are held back for the run.
#[test]
fn unreadable_file_and_directory_fail_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(cx) = Ctx::new() else { return };
    let src = cx.path("src");
    write_tree(
        &src,
        &tree(&[
            ("a.txt", b"a"),
            ("secret.txt", b"s"),
            ("locked/x.txt", b"x"),
            ("z.txt", b"z"),
        ]),
    );
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    mode("secret.txt", 0o000);
    mode("locked", 0o000);
    let Some(mut c) = unprivileged_cmd(&cx, &src.join("secret.txt")) else {
        mode("locked", 0o755);
        return;
    };
    let b = cx.bucket("unreadable");
    b.put("p/old.txt", b"only at the destination");
    c.args([
        "--json",
        "--no-progress",
        "sync",
        "--delete",
        "--max-delete",
        "100%",
        s(&src),
        &b.uri("p"),
    ]);
    let r = run_cmd(c, RUN_TIMEOUT);
    mode("locked", 0o755);
    mode("secret.txt", 0o644);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.keys("fail"), ["locked/", "secret.txt"], "{r}");
    for rec in r.records("fail") {
        let e = rec["error"].as_str().unwrap_or_default();
        assert!(e.contains("permission denied"), "{rec}");
    }
    assert_eq!(r.keys("copy"), ["a.txt", "z.txt"], "{r}");
    assert_eq!(r.n("failed"), 2, "{r}");
    assert_eq!(
        b.keys(""),
        ["p/a.txt", "p/old.txt", "p/z.txt"],
        "deletes must be held back after a listing error"
    );
}

/// A server that accepts connections and never answers: s3ferry gives up after --read-timeout
/// (retried like any timeout) with one line and status 2, instead of hanging.
#[test]
fn a_server_that_never_answers_times_out() {
    let Some(cx) = Ctx::new() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn); // read nothing, answer nothing, close nothing
        }
    });
    let ep = format!("http://{addr}");
    let mut c = cx.cmd();
    c.args([
        "--endpoint-url",
        &ep,
        "--read-timeout",
        "1s",
        "ls",
        "s3://silent-bucket/",
    ]);
    let t0 = std::time::Instant::now();
    let r = run_cmd(c, std::time::Duration::from_secs(120));
    assert_eq!(r.code, 2, "{r}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(60), "{r}");
    let line = assert_one_error_line(&r.stderr);
    assert!(
        line.to_lowercase().contains("timeout") || line.contains("timed out"),
        "{line}"
    );
    let r = cx.run(&["--read-timeout", "0s", "ls", "s3://x/"]);
    assert_eq!(r.code, 2, "{r}");
}

/// SIGINT mid-sync (uploads slowed by injected latency): the transfers in flight finish, no
/// new ones start, nothing is deleted, the summary says "interrupted" and the exit status is
/// 130; no multipart upload is left open; the next run finishes the job.
#[cfg(feature = "fault")]
#[test]
fn sigint_stops_cleanly_with_a_summary() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("sigint");
    let src = cx.path("src");
    let files: std::collections::BTreeMap<String, Vec<u8>> = (0..200)
        .map(|i| (format!("f{i:03}"), format!("{i}").into_bytes()))
        .collect();
    write_tree(&src, &files);
    b.put("p/extra", b"only in the destination");
    let mut c = cx.cmd();
    c.args([
        "--json",
        "--no-progress",
        "sync",
        "--delete",
        "--max-delete",
        "1",
        "--concurrency",
        "4",
        s(&src),
        &b.uri("p"),
    ])
    .env("S3FERRY_FAULTS", "put:latency=100ms")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let pid = child.id();
    wait_until("some uploads", || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("sync ended early: {st:?}");
        }
        b.keys("p/").len() >= 5
    });
    let st = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .expect("a summary");
    assert_eq!(summary["interrupted"], true, "{summary}");
    let copied = summary["copied"].as_u64().unwrap();
    assert!(copied < 200, "stopped early: {summary}");
    assert_eq!(
        b.keys("p/").len() as u64,
        copied + 1,
        "what was in flight finished, nothing more"
    );
    assert!(
        b.keys("p/").contains(&"extra".to_string()),
        "nothing deleted"
    );
    assert!(b.uploads().is_empty());
    // The next run finishes the job.
    cx.sync(&["--delete", "--max-delete", "1", s(&src), &b.uri("p")])
        .assert_ok();
    assert_eq!(b.objects("p/"), files);
}

/// `s3ferry ARGS` under an open-files limit of `nofile` (soft and hard), through util-linux
/// `prlimit`, with the environment of [`Ctx::cmd`]. `None` (and a loud skip) without prlimit.
#[allow(clippy::print_stderr)]
fn with_nofile(cx: &Ctx, nofile: u32, args: &[&str]) -> Option<Run> {
    let probe = Command::new("prlimit")
        .args([&format!("--nofile={nofile}:{nofile}"), "--", "true"])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        eprintln!("SKIP: `prlimit --nofile` is not available here");
        return None;
    }
    let mut c = Command::new("prlimit");
    c.args([&format!("--nofile={nofile}:{nofile}"), "--", BIN]);
    c.args(args);
    for (k, v) in cx.cmd().get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.stdin(std::process::Stdio::null());
    Some(run_cmd(c, RUN_TIMEOUT))
}

/// Under `ulimit -n 64` the default --concurrency (64 elsewhere) is lowered to what fits, so a
/// few hundred files go up and come back down without one "Too many open files"; an explicit
/// --concurrency that cannot fit is warned about in one line.
#[test]
fn a_low_open_files_limit_lowers_the_default_concurrency() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("nofile");
    let src = cx.path("src");
    let files: std::collections::BTreeMap<String, Vec<u8>> = (0..300)
        .map(|i| {
            (
                format!("d{}/f{i:03}.txt", i % 10),
                format!("file {i}\n").into_bytes(),
            )
        })
        .collect();
    write_tree(&src, &files);
    let uri = b.uri("p");
    let sync = |args: &[&str]| {
        let mut all = vec!["--json", "--no-progress", "sync"];
        all.extend_from_slice(args);
        with_nofile(&cx, 64, &all)
    };
    let Some(up) = sync(&[s(&src), &uri]) else {
        return;
    };
    up.assert_ok();
    assert_eq!(up.n("copied"), 300, "{up}");
    assert!(!up.stderr.contains("open files"), "{up}");
    assert_eq!(b.objects("p/"), files);

    let down = cx.path("down");
    let Some(r) = sync(&[&uri, s(&down)]) else {
        return;
    };
    r.assert_ok();
    assert_eq!(r.n("copied"), 300, "{r}");
    assert!(!r.stderr.contains("open files"), "{r}");
    assert_eq!(read_tree(&down), files);

    // An explicit value is the user's: kept, with one warning line naming the limit.
    let Some(r) = sync(&["--concurrency", "64", "--dry-run", s(&src), &b.uri("q")]) else {
        return;
    };
    assert_eq!(r.code, 0, "{r}");
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("s3ferry: warning: --concurrency 64"))
        .collect();
    assert_eq!(warnings.len(), 1, "{r}");
    assert!(warnings[0].contains("open-files limit of 64"), "{r}");
}

/// A small tmpfs (`size` as mount takes it: `2m`) mounted for one test, unmounted on drop.
struct TinyFs(std::path::PathBuf);

impl TinyFs {
    #[allow(clippy::print_stderr)]
    fn mount(dir: &std::path::Path, size: &str) -> Option<TinyFs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status();
        if !matches!(ok, Ok(s) if s.success()) {
            eprintln!("SKIP: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): F14 untested");
            return None;
        }
        Some(TinyFs(dir.to_path_buf()))
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// F14: the disk fills up while a download is written. Exit 2 with one line naming the file
/// being written; no temp file left; no truncated file under the final name; the files that
/// fit are complete.
/// A sync that ran out of disk on `name`: one fatal line naming the file being written, nothing
/// under its final name, no temp file anywhere on the disk at `disk`.
#[track_caller]
fn full_disk_left_nothing(r: &Run, disk: &std::path::Path, dest: &std::path::Path, name: &str) {
    let line = r.assert_fatal();
    let path = dest.join(name);
    assert!(
        line.contains(&format!("writing {}", path.display())) && line.contains("No space left"),
        "{line}"
    );
    assert!(!path.exists(), "a truncated {name} under its final name");
    let left = all_entries(disk);
    assert!(
        left.iter().all(|e| !e.contains(".s3ferry-tmp.")),
        "temp files left: {left:?}"
    );
}

#[test]
fn disk_full_during_a_download_is_fatal_and_leaves_nothing_partial() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("enospc");
    let big = random_bytes(3 << 20, 14);
    b.put("p/a.txt", b"small\n");
    b.put("p/big.bin", &big);
    let Some(fs) = TinyFs::mount(&cx.path("tiny"), "2m") else {
        return;
    };
    let dest = fs.0.join("dest");
    full_disk_left_nothing(&cx.sync(&[&b.uri("p"), s(&dest)]), &fs.0, &dest, "big.bin");
    if dest.join("a.txt").exists() {
        assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), b"small\n");
    }

    // A multipart download (parts streamed into one temp file) that outgrows a 12 MiB disk.
    b.put("m/huge.bin", &random_bytes(20 << 20, 15));
    let Some(fs) = TinyFs::mount(&cx.path("tiny2"), "12m") else {
        return;
    };
    let dest = fs.0.join("dest");
    full_disk_left_nothing(&cx.sync(&[&b.uri("m"), s(&dest)]), &fs.0, &dest, "huge.bin");
}

/// F39: a destination directory that is a symlink to a directory outside (`a -> outside/`) is
/// never written through: key `a/passwd` fails alone (exit 1) and the outside directory stays
/// empty; a symlink to a file outside, where an object of the same key arrives, is not replaced
/// (fails alone) and the outside file is untouched; the rest is synced.
#[test]
fn symlinks_in_the_destination_are_never_written_through() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("dstlink");
    b.put("p/a/passwd", b"root:x:0:0\n");
    b.put("p/b", b"new b\n");
    b.put("p/c.txt", b"c\n");
    let outside = cx.path("outside");
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("file"), b"outside file\n").unwrap();
    let dest = cx.path("dest");
    std::fs::create_dir_all(&dest).unwrap();
    std::os::unix::fs::symlink(outside.join("dir"), dest.join("a")).unwrap();
    std::os::unix::fs::symlink(outside.join("file"), dest.join("b")).unwrap();

    let r = cx.sync(&[&b.uri("p"), s(&dest)]);
    assert_eq!(r.code, 1, "{r}");
    let mut failed = r.keys("fail");
    failed.sort();
    assert_eq!(failed, ["a/passwd", "b"], "{r}");
    for fail in r.records("fail") {
        assert!(
            fail["error"]
                .as_str()
                .unwrap_or_default()
                .contains("is a symlink; not"),
            "{r}"
        );
    }
    assert_eq!(all_entries(&outside.join("dir")), Vec::<String>::new());
    assert_eq!(
        std::fs::read(outside.join("file")).unwrap(),
        b"outside file\n"
    );
    assert!(
        dest.join("a").is_symlink(),
        "the user's links are left alone"
    );
    assert!(
        dest.join("b").is_symlink(),
        "the user's links are left alone"
    );
    assert_eq!(std::fs::read(dest.join("c.txt")).unwrap(), b"c\n");
}

/// F35: a file whose name is in NFD (decomposed) form goes up as exactly those bytes, comes
/// back down under the same name, and re-syncs in both directions copy nothing: one identity,
/// no NFC/NFD flip-flop.
#[test]
fn nfd_names_round_trip_and_resync_is_a_no_op() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("nfd");
    let nfd = "cafe\u{301}/re\u{301}sume\u{301}.txt"; // café/résumé.txt, decomposed
    let nfc = "caf\u{e9}/r\u{e9}sum\u{e9}.txt";
    assert_ne!(nfd.as_bytes(), nfc.as_bytes());
    let src = cx.path("src");
    write_tree(&src, &tree(&[(nfd, b"decomposed\n")]));

    let up = cx.sync(&[s(&src), &b.uri("p")]);
    up.assert_ok();
    assert_eq!(b.keys("p/"), [nfd], "the key is the name's bytes");
    let down = cx.path("down");
    let r = cx.sync(&[&b.uri("p"), s(&down)]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 1, "{r}");
    assert_eq!(
        walk_files(&down)
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>(),
        [nfd.to_string()]
    );
    for (from, to) in [
        (s(&src).to_string(), b.uri("p")),
        (b.uri("p"), s(&down).to_string()),
    ] {
        let r = cx.sync(&[&from, &to]);
        r.assert_ok();
        assert_eq!(r.n("copied"), 0, "re-sync {from} -> {to}: {r}");
    }
    // With --no-state too (content compared afresh).
    let r = cx.sync(&["--no-state", &b.uri("p"), s(&down)]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "{r}");
}

/// `s` contains `Signature=` followed by a hex digit (a SigV4 signature in an Authorization
/// header or a presigned URL's `X-Amz-Signature=`).
fn has_signature(s: &str) -> bool {
    s.match_indices("Signature=").any(|(i, m)| {
        s[i + m.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_hexdigit())
    })
}

/// F48: the most verbose logs of a sync up and down (`-vv`, `--log-level debug`, and
/// S3FERRY_LOG=trace, which lets the SDK's own tracing through) never print the secret access
/// key, a session token or a request signature. (No option takes a secret on the command line:
/// credentials come only from the environment, profiles and the SDK's chain.)
#[test]
fn verbose_logs_never_print_secrets_or_signatures() {
    let Some(cx) = Ctx::new() else { return };
    let secret = secret_key();
    assert!(
        secret.len() >= 8,
        "a secret too short to search for: {secret:?}"
    );
    let token = "s3ferry-test-session-token-0123456789";
    let b = cx.bucket("secrets");
    let src = cx.path("src");
    write_tree(
        &src,
        &tree(&[("a.txt", b"a"), ("d/b.bin", &random_bytes(70_000, 48))]),
    );
    type Flags<'a> = &'a [&'a str];
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Flags, Env); 3] = [
        (&["-vv"], &[]),
        (&["--log-level", "debug"], &[]),
        (&[], &[("S3FERRY_LOG", "trace")]),
    ];
    for (i, (flags, env)) in cases.iter().enumerate() {
        let down = cx.path(&format!("down{i}"));
        let prefix = format!("p{i}");
        for (from, to) in [
            (s(&src).to_string(), b.uri(&prefix)),
            (b.uri(&prefix), s(&down).to_string()),
        ] {
            let mut args: Vec<&str> = flags.to_vec();
            args.extend(["--no-progress", "sync", &from, &to]);
            let mut env = env.to_vec();
            env.push(("AWS_SESSION_TOKEN", token));
            let r = cx.run_env(&args, &env);
            assert_eq!(r.code, 0, "{flags:?} {env:?}: {r}");
            let all = format!("{}{}", r.stdout, r.stderr);
            assert!(
                !all.contains(&secret),
                "{flags:?} {env:?}: secret key printed"
            );
            assert!(
                !all.contains(token),
                "{flags:?} {env:?}: session token printed"
            );
            assert!(
                !has_signature(&all),
                "{flags:?} {env:?}: a signature printed"
            );
        }
    }
    // The trace run did log the SDK's signing step (so the check above looked at it).
    let r = cx.run_env(
        &["--no-progress", "sync", s(&src), &b.uri("q")],
        &[("S3FERRY_LOG", "trace")],
    );
    assert!(
        r.stderr.contains("signing"),
        "{}",
        &r.stderr[..r.stderr.len().min(2000)]
    );
    assert!(!r.stderr.contains(&secret) && !has_signature(&r.stderr));
}

/// A TCP forwarder to `upstream` (`http://host:port`) that keeps every byte the client sent,
/// per connection: to see the requests s3ferry puts on the wire to the real server.
fn recording_forwarder(upstream: &str) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use std::io::{Read, Write};
    let up = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let Ok(server) = std::net::TcpStream::connect(&up) else {
                continue;
            };
            let slot = {
                let mut s = seen2.lock().unwrap();
                s.push(Vec::new());
                s.len() - 1
            };
            let (mut c_in, mut s_out) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            let seen3 = seen2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    // Recorded before it is forwarded, so before any answer to it.
                    seen3.lock().unwrap()[slot].extend_from_slice(&buf[..n]);
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// The request lines in the recorded client bytes, each with whether its head carries
/// `x-amz-request-payer: requester`.
fn requests_seen(seen: &std::sync::Mutex<Vec<Vec<u8>>>) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    for conn in seen.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(conn);
        for line in text.split("\r\n") {
            let is_request = ["GET /", "PUT /", "POST /", "HEAD /", "DELETE /"]
                .iter()
                .any(|m| line.starts_with(m))
                && line.ends_with(" HTTP/1.1");
            if is_request {
                out.push((line.to_string(), false));
            } else if line.eq_ignore_ascii_case("x-amz-request-payer: requester") {
                if let Some(last) = out.last_mut() {
                    last.1 = true;
                }
            }
        }
    }
    out
}

/// (requests, of which carry the header, the request lines of those that do not).
fn count_request_payer(seen: &std::sync::Mutex<Vec<Vec<u8>>>) -> (usize, usize, Vec<String>) {
    let r = requests_seen(seen);
    let missing: Vec<String> = r
        .iter()
        .filter(|(_, p)| !p)
        .map(|(l, _)| l.clone())
        .collect();
    (r.len(), r.len() - missing.len(), missing)
}

/// `--request-payer requester` puts `x-amz-request-payer: requester` on every S3 request of a
/// sync, up and down (list, head, put, get, delete, multipart), as seen on the wire to the real
/// server; without the flag, on none.
#[test]
fn request_payer_is_sent_on_every_request() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("payer");
    let src = cx.path("src");
    write_tree(
        &src,
        &tree(&[
            ("a.txt", b"a"),
            ("d/b.txt", b"b"),
            ("big.bin", &random_bytes(9 << 20, 7)),
        ]),
    );
    b.put("p/stale", b"to delete");
    let (endpoint, seen) = recording_forwarder(&cx.endpoint);
    let down = cx.path("down");
    for (from, to) in [
        (s(&src).to_string(), b.uri("p")),
        (b.uri("p"), s(&down).to_string()),
    ] {
        let r = cx.sync(&[
            "--endpoint-url",
            &endpoint,
            "--request-payer",
            "requester",
            "--delete",
            "--max-delete",
            "1",
            &from,
            &to,
        ]);
        r.assert_ok();
    }
    assert_eq!(read_tree(&down).len(), 3);
    let (requests, payer, missing) = count_request_payer(&seen);
    assert!(requests >= 10, "{requests} requests seen");
    assert_eq!(payer, requests, "requests without the header: {missing:?}");

    seen.lock().unwrap().clear();
    let r = cx.sync(&[
        "--endpoint-url",
        &endpoint,
        "--checksum",
        &b.uri("p"),
        s(&down),
    ]);
    r.assert_ok();
    let (requests, payer, _) = count_request_payer(&seen);
    assert!(
        requests > 0 && payer == 0,
        "{requests} requests, {payer} with the header"
    );
}

/// F40 with `--follow-symlinks`: links to files and directories (inside the source or outside
/// it) are synced as what they point to; a link back to a parent directory is a loop and a
/// dangling link is nothing: both reported as skipped, never entered; a re-sync is a no-op, and
/// the last of `--follow-symlinks`/`--no-follow-symlinks` wins.
#[test]
fn follow_symlinks_reads_through_links_and_reports_loops() {
    let Some(cx) = Ctx::new() else { return };
    let src = cx.path("src");
    let outside = cx.path("outside");
    write_tree(&src, &tree(&[("a.txt", b"a"), ("d/f.txt", b"f")]));
    write_tree(&outside, &tree(&[("e.txt", b"from outside")]));
    let link = |target: &std::path::Path, at: &str| {
        std::os::unix::fs::symlink(target, src.join(at)).expect("symlink");
    };
    link(&src.join("a.txt"), "link");
    link(&src.join("d"), "dirlink");
    link(&outside, "out");
    link(std::path::Path::new(".."), "d/loop");
    link(std::path::Path::new("/nowhere/at/all"), "d/dangling");
    let b = cx.bucket("follow");
    let r = cx.sync(&["--follow-symlinks", s(&src), &b.uri("")]);
    r.assert_ok();
    let objects = b.objects("");
    let want = tree(&[
        ("a.txt", b"a"),
        ("d/f.txt", b"f"),
        ("dirlink/f.txt", b"f"),
        ("link", b"a"),
        ("out/e.txt", b"from outside"),
    ]);
    assert_eq!(objects, want, "{r}");
    let skipped = r.skips();
    let keys: Vec<&str> = skipped.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["d/dangling", "d/loop", "dirlink/dangling", "dirlink/loop"],
        "{r}"
    );
    for (k, reason) in &skipped {
        let want = if k.ends_with("loop") {
            "loop"
        } else {
            "dangling"
        };
        assert!(reason.contains(want), "{k}: {reason}");
    }
    let again = cx.sync(&["--follow-symlinks", s(&src), &b.uri("")]);
    again.assert_ok();
    assert_eq!(again.n("copied"), 0, "{again}");
    // The last switch wins: links skipped again, nothing deleted without --delete.
    let r = cx.sync(&[
        "--follow-symlinks",
        "--no-follow-symlinks",
        s(&src),
        &b.uri(""),
    ]);
    r.assert_ok();
    let mut not_followed = r.keys("skip");
    not_followed.sort();
    assert_eq!(
        not_followed,
        ["d/dangling", "d/loop", "dirlink", "link", "out"],
        "{r}"
    );
}
