//! The everyday commands (issue 20) against the local S3 server: `cp`, `mv`, `rm`, `check`,
//! `cat`, `du`, `rb`, `presign` and `run FILE`, each with the output and exit-code contract of
//! every job, hostile keys and bad input.

mod common;

use std::io::{Read, Write};

use futures::StreamExt as _;

use common::*;

fn j(ctx: &Ctx, args: &[&str]) -> Run {
    let mut all = vec!["--json", "--no-progress"];
    all.extend_from_slice(args);
    ctx.run(&all)
}

#[test]
fn cp_names_one_object_as_aws_cli_does_and_verifies_it() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("cp1");
    let f = ctx.path("report.pdf");
    let data = random_bytes(9 << 20, 7); // multipart at the default 8 MiB part size
    std::fs::write(&f, &data).unwrap();
    // Into a "directory" (trailing /): the file's name.
    j(&ctx, &["cp", s(&f), &b.uri("reports/")]).assert_ok();
    // To a key of its own.
    j(&ctx, &["cp", s(&f), &b.uri("renamed.bin")]).assert_ok();
    assert_eq!(b.keys(""), vec!["renamed.bin", "reports/report.pdf"]);
    assert_eq!(b.get("reports/report.pdf"), data);
    // Down, to a file name and into an existing directory.
    let d = ctx.path("down");
    std::fs::create_dir_all(&d).unwrap();
    j(&ctx, &["cp", &b.uri("renamed.bin"), s(&d.join("x.bin"))]).assert_ok();
    j(&ctx, &["cp", &b.uri("reports/report.pdf"), s(&d)]).assert_ok();
    assert_eq!(std::fs::read(d.join("x.bin")).unwrap(), data);
    assert_eq!(std::fs::read(d.join("report.pdf")).unwrap(), data);
    // S3 to S3 under a new name.
    let r = j(
        &ctx,
        &["cp", &b.uri("renamed.bin"), &b.uri("copy/again.bin")],
    );
    r.assert_ok();
    assert_eq!(r.n("copied"), 1);
    assert_eq!(b.get("copy/again.bin"), data);
}

#[test]
fn cp_recursive_and_wildcards_keep_paths_below_the_base() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("cp2");
    let src = ctx.path("site");
    let files = tree(&[
        ("index.html", b"<h1>"),
        ("css/a.css", b"a{}"),
        ("logs/2026-01/a.gz", b"jan"),
        ("logs/2026-02/b.gz", b"feb"),
        ("logs/2026-02/b.txt", b"txt"),
        ("logs/2025-12/c.gz", b"dec"),
    ]);
    write_tree(&src, &files);
    let r = j(&ctx, &["cp", "--recursive", s(&src), &b.uri("site")]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 6);
    assert_eq!(b.objects("site/"), files);
    // A wildcard: only matches, relative to the last / before the first wildcard.
    let out = ctx.path("out");
    let r = j(
        &ctx,
        &[
            "cp",
            &b.uri("site/logs/2026-*/*.gz"),
            &format!("{}/", s(&out)),
        ],
    );
    r.assert_ok();
    assert_eq!(
        read_tree(&out),
        tree(&[("2026-01/a.gz", b"jan"), ("2026-02/b.gz", b"feb")])
    );
    // A wildcard that matches nothing is a failure, not an empty success.
    let r = j(
        &ctx,
        &["cp", &b.uri("site/nothing-*"), s(&ctx.path("none"))],
    );
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.n("failed"), 1);
    // --dry-run writes nothing.
    let dry = ctx.path("dry");
    let r = j(&ctx, &["cp", "-n", "-r", &b.uri("site/css/"), s(&dry)]);
    r.assert_ok();
    assert_eq!(r.records("would-copy").len(), 1);
    assert!(!dry.exists(), "a dry run created {}", dry.display());
}

#[test]
fn cp_conditions_leave_existing_objects_alone() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("cp3");
    b.put("d/same.txt", b"12345");
    b.put("d/other.txt", b"old");
    let src = ctx.path("src");
    write_tree(
        &src,
        &tree(&[
            ("same.txt", b"abcde"),
            ("other.txt", b"longer"),
            ("new.txt", b"n"),
        ]),
    );
    let r = j(&ctx, &["cp", "-r", "--no-clobber", s(&src), &b.uri("d/")]);
    r.assert_ok();
    assert_eq!(r.keys("copy"), vec!["new.txt"]);
    assert_eq!(b.get("d/same.txt"), b"12345");
    assert_eq!(b.get("d/other.txt"), b"old");
    let r = j(
        &ctx,
        &["cp", "-r", "--if-size-differ", s(&src), &b.uri("d/")],
    );
    r.assert_ok();
    assert_eq!(r.keys("copy"), vec!["other.txt"]);
    assert_eq!(b.get("d/same.txt"), b"12345", "same size: kept");
    assert_eq!(b.get("d/other.txt"), b"longer");
}

#[test]
fn cp_refuses_keys_that_would_escape_a_local_destination() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("cp4");
    for k in [
        "p/ok.txt",
        "p/../evil.txt",
        "p/a//b.txt",
        "p/q/./r",
        "p/ctl\u{1}char",
        "p/..",
    ] {
        // What the server accepts, it keeps (perhaps normalised).
        let _ = b.block_on(b.store.put(k, b"data".to_vec().into(), PutOptions::new()));
    }
    let unsafe_rel = |k: &str| {
        k.chars().any(char::is_control)
            || k.split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    };
    let kept: Vec<String> = b.keys("p/");
    let refused = kept.iter().filter(|k| unsafe_rel(k)).count();
    assert!(refused > 0, "the server kept no unsafe key: {kept:?}");
    let dst = ctx.path("inside/dst");
    let r = j(&ctx, &["cp", "-r", &b.uri("p/"), s(&dst)]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.n("refused") as usize, refused, "{r}");
    let safe: Vec<String> = kept.iter().filter(|k| !unsafe_rel(k)).cloned().collect();
    assert_eq!(read_tree(&dst).into_keys().collect::<Vec<_>>(), safe);
    // Nothing beside the destination.
    let mut outside = all_entries(&ctx.path("inside"));
    outside.retain(|e| !e.starts_with("dst"));
    assert!(outside.is_empty(), "{outside:?}");
}

#[test]
fn bad_input_is_one_line_and_exit_2_with_nothing_touched() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("bad");
    b.put("p/k", b"x");
    let d = ctx.path("d");
    for args in [
        vec!["cp", "s3://no-such-bucket-s3ferry-e2e/x", s(&d)],
        vec!["cp", &b.uri("p/"), s(&d)], // a prefix without --recursive
        vec!["cp", s(&ctx.path("missing.txt")), &b.uri("x")],
        vec!["cp", &b.uri("p/[a-"), s(&d)], // a bad wildcard
        vec!["rm", &b.uri("p/")],           // a prefix without --recursive
        vec!["rm", "s3://no-such-bucket-s3ferry-e2e/x"],
        vec!["mv", &b.uri("p/k"), &b.uri("q/*")], // wildcard destination
        vec!["presign", &b.uri("p/k"), "--expires-in", "30d"],
        vec!["check", s(&ctx.path("missing-dir")), &b.uri("p")],
        vec!["run", s(&ctx.path("missing-commands.txt"))],
    ] {
        let r = ctx.run(&args);
        let line = r.assert_fatal();
        assert!(!line.contains("panicked"), "{args:?}: {line}");
    }
    assert!(!d.exists());
    assert_eq!(b.keys(""), vec!["p/k"]);
}

#[test]
fn mv_deletes_the_source_only_after_the_copy_and_never_onto_itself() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("mv");
    b.put("in/a.csv", b"a");
    b.put("in/b.csv", b"b");
    b.put("in/c.json", b"c");
    let r = j(&ctx, &["mv", &b.uri("in/*.csv"), &b.uri("done/")]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 2);
    assert_eq!(b.keys(""), vec!["done/a.csv", "done/b.csv", "in/c.json"]);
    assert_eq!(b.get("done/a.csv"), b"a");
    // Onto itself: refused, and the object is still there.
    let r = j(&ctx, &["mv", &b.uri("in/c.json"), &b.uri("in/c.json")]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.n("refused"), 1);
    assert_eq!(b.get("in/c.json"), b"c");
    // A local file moved up is gone locally afterwards.
    let f = ctx.path("up.txt");
    std::fs::write(&f, b"up").unwrap();
    j(&ctx, &["mv", s(&f), &b.uri("up/")]).assert_ok();
    assert!(!f.exists());
    assert_eq!(b.get("up/up.txt"), b"up");
}

#[test]
fn rm_batches_counts_first_and_refuses_above_the_limit() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("rm");
    let n = 1_150; // more than one DeleteObjects batch
    let store = &b.store;
    b.block_on(async {
        let keys: Vec<String> = (0..n).map(|i| format!("tmp/{i:05}.bin")).collect();
        futures::stream::iter(keys)
            .for_each_concurrent(32, |k: String| async move {
                store.put_bytes(&k, b"x".to_vec()).await.unwrap();
            })
            .await
    });
    b.put("keep/me", b"k");
    // Over the default limit (1000): refused before anything is deleted.
    let r = j(&ctx, &["rm", "--recursive", &b.uri("tmp/")]);
    let line = r.assert_fatal();
    assert!(line.contains("--max-delete"), "{line}");
    assert_eq!(b.keys("tmp/").len(), n);
    // A dry run lists them and deletes nothing.
    let r = j(
        &ctx,
        &["rm", "-r", "-n", "--max-delete", "5000", &b.uri("tmp/")],
    );
    r.assert_ok();
    assert_eq!(r.records("would-delete").len(), n);
    assert_eq!(b.keys("tmp/").len(), n);
    // A wildcard deletes only what it matches.
    let r = j(&ctx, &["rm", &b.uri("tmp/0000*")]);
    r.assert_ok();
    assert_eq!(r.n("deleted"), 10);
    assert_eq!(b.keys("tmp/").len(), n - 10);
    let r = j(&ctx, &["rm", "-r", "--max-delete", "5000", &b.uri("tmp")]);
    r.assert_ok();
    assert_eq!(r.n("deleted"), (n - 10) as u64);
    assert_eq!(b.keys(""), vec!["keep/me"]);
}

#[test]
fn check_reports_missing_extra_and_different_keys() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("check");
    let src = ctx.path("src");
    write_tree(
        &src,
        &tree(&[
            ("same", b"same"),
            ("missing", b"m"),
            ("size", b"123"),
            ("content", b"abc"),
        ]),
    );
    b.put("d/same", b"same");
    b.put("d/size", b"1234");
    b.put("d/content", b"xyz");
    b.put("d/extra", b"e");
    let r = j(&ctx, &["check", s(&src), &b.uri("d")]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(
        r.keys("differ"),
        vec!["content", "extra", "missing", "size"]
    );
    assert_eq!(r.n("different"), 4);
    let r = j(&ctx, &["check", "--download", s(&src), &b.uri("d")]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(
        r.keys("differ"),
        vec!["content", "extra", "missing", "size"]
    );
    // Made equal, both ways of comparing agree and exit 0.
    j(
        &ctx,
        &[
            "sync",
            "--delete",
            "--max-delete",
            "100%",
            s(&src),
            &b.uri("d"),
        ],
    )
    .assert_ok();
    for extra in [None, Some("--download")] {
        let (sd, bd) = (s(&src).to_string(), b.uri("d"));
        let mut args: Vec<&str> = vec!["check"];
        args.extend(extra);
        args.push(&sd);
        args.push(&bd);
        let r = j(&ctx, &args);
        r.assert_ok();
        assert_eq!(r.summary().get("different"), None);
    }
}

#[test]
fn du_rb_presign_and_cat() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("du");
    b.put("a/1", b"12345");
    b.put("a/2", b"123");
    b.put("b/3", b"1");
    let r = ctx.run(&["--json", "du", &b.uri(""), &b.uri("a/*")]);
    assert_eq!(r.code, 0, "{r}");
    let du: Vec<(u64, u64)> = r
        .json()
        .iter()
        .filter(|v| v["type"] == "du")
        .map(|v| (v["objects"].as_u64().unwrap(), v["bytes"].as_u64().unwrap()))
        .collect();
    assert_eq!(du, vec![(3, 9), (2, 8)]);
    let r = ctx.run(&["--json", "du", "--group-by", "prefix", &b.uri("")]);
    let groups: Vec<String> = r
        .json()
        .iter()
        .filter(|v| v["type"] == "du")
        .map(|v| v["group"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(groups, vec!["a/", "b/"]);

    // cat writes the object, byte for byte.
    let r = ctx.run(&["cat", &b.uri("a/1")]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "12345"), "{r}");

    // presign: the URL reads the object without credentials.
    let r = ctx.run(&["presign", &b.uri("a/2"), "--expires-in", "5m"]);
    assert_eq!(r.code, 0, "{r}");
    let (status, body) = http_get(r.stdout.trim());
    assert_eq!((status, body.as_slice()), (200, &b"123"[..]));

    // rb: a bucket with objects is refused (and kept) unless --force.
    let r = ctx.run(&["rb", &format!("s3://{}", b.name)]);
    r.assert_fatal();
    assert_eq!(b.keys("").len(), 3);
    let r = ctx.run(&["rb", "--force", &format!("s3://{}", b.name)]);
    assert_eq!(r.code, 0, "{r}");
    let r = ctx.run(&["ls", &format!("s3://{}", b.name)]);
    assert_eq!(r.code, 2, "the bucket is gone: {r}");
}

/// A plain HTTP/1.1 GET of an http:// URL (the local server): (status, body).
fn http_get(url: &str) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').unwrap();
    let mut c = std::net::TcpStream::connect(host).unwrap();
    write!(
        c,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..at]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = buf[at + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let at = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..at]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[at + 2..at + 2 + n]);
        b = &b[at + 4 + n..];
    }
}

#[test]
fn run_executes_every_good_line_and_names_the_bad_ones() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("run");
    b.put("x/a", b"a");
    b.put("x/b", b"b");
    b.put("tmp/1", b"1");
    b.put("tmp/2", b"2");
    let out = ctx.path("out");
    let file = ctx.path("commands.txt");
    std::fs::write(
        &file,
        format!(
            "# a comment\n\ncp {x} {out}/\nthis is not a command\nmv '{xb}' {moved}\nrm --recursive {tmp}\ncp s3://no-such-bucket-s3ferry-e2e/k {out}/\n",
            x = b.uri("x/a"),
            out = s(&out),
            xb = b.uri("x/b*"),
            moved = b.uri("moved/"),
            tmp = b.uri("tmp/"),
        ),
    )
    .unwrap();
    let r = j(&ctx, &["run", s(&file)]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(r.n("failed"), 2, "{r}");
    let errors: Vec<String> = r
        .records("fail")
        .iter()
        .map(|v| v["error"].as_str().unwrap_or_default().to_string())
        .collect();
    let at = |n: usize| format!("commands.txt:{n}:");
    assert!(errors.iter().any(|e| e.contains(&at(4))), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains(&at(7))), "{errors:?}");
    assert_eq!(std::fs::read(out.join("a")).unwrap(), b"a");
    assert_eq!(b.keys(""), vec!["moved/b", "x/a"]);
    assert_eq!(r.n("deleted"), 2);
    assert_eq!(r.n("copied"), 2);
}

#[test]
fn rm_all_versions_deletes_every_version_and_delete_marker() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("rmv");
    b.enable_versioning();
    b.put("k/a", b"v1");
    b.put("k/a", b"v2");
    b.put("other", b"o");
    j(&ctx, &["rm", &b.uri("k/a")]).assert_ok(); // leaves a delete marker
    let versions = || {
        b.block_on(async {
            let v: Vec<_> = b.store.list_versions("k/").collect().await;
            v.len()
        })
    };
    assert_eq!(versions(), 3, "two versions and a delete marker");
    let r = j(&ctx, &["rm", "-r", "--all-versions", &b.uri("k/")]);
    r.assert_ok();
    assert_eq!(r.n("deleted"), 3);
    assert_eq!(versions(), 0);
    assert_eq!(b.keys(""), vec!["other"]);
}
