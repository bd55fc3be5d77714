//! End-to-end: the real `s3ferry` binary against the local S3 server (scripts/local-s3;
//! `S3FERRY_TEST_S3_ENDPOINT`). Uploads, downloads, no-op re-syncs, mtimes, change detection,
//! deletes and their limits, filters, `--since`.
//!
//! Each test has its own bucket (deleted on drop), temp dir and state dir.

mod common;

use std::collections::BTreeMap;

use common::*;

fn sample_tree() -> BTreeMap<String, Vec<u8>> {
    tree(&[
        ("a.txt", b"hello\n"),
        ("dir/b.bin", &random_bytes(70_000, 1)),
        ("dir/sub/c.json", b"{\"k\":1}"),
        ("z", b"last"),
    ])
}

/// Local -> S3: counts, exact bytes in the bucket and through `ls`; a re-sync copies nothing,
/// with state (no reads) and with --no-state (content compare).
#[test]
fn upload_then_noop_resync_with_and_without_state() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("upload");
    let src = cx.path("src");
    let files = sample_tree();
    write_tree(&src, &files);
    let total: u64 = files.values().map(|v| v.len() as u64).sum();

    let r = cx.sync(&[s(&src), &b.uri("p")]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 4, "{r}");
    assert_eq!(r.n("copied_bytes"), total, "{r}");
    assert_eq!(r.n("skipped"), 0, "{r}");
    assert_eq!(
        r.keys("copy"),
        files.keys().cloned().collect::<Vec<_>>(),
        "{r}"
    );
    assert_eq!(b.objects("p/"), files);

    // `ls --json` shows every key with its exact size.
    let ls = cx.run(&["--json", "ls", &b.uri("p")]);
    assert_eq!(ls.code, 0, "{ls}");
    let listed: BTreeMap<String, u64> = ls
        .json()
        .iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap_or_default().to_string(),
                v["size"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    let want: BTreeMap<String, u64> = files
        .iter()
        .map(|(k, v)| (format!("p/{k}"), v.len() as u64))
        .collect();
    assert_eq!(listed, want, "{ls}");

    // Re-sync with state: nothing copied, every object skipped (visible with -v).
    let r = cx.run(&["--json", "-v", "sync", s(&src), &b.uri("p")]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "{r}");
    assert_eq!(r.n("skipped"), 4, "{r}");
    assert_eq!(r.keys("skip").len(), 4, "{r}");

    // Without state: content comparison, still nothing copied.
    let r = cx.sync(&["--no-state", s(&src), &b.uri("p")]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "{r}");
    assert_eq!(r.n("skipped"), 4, "{r}");
    assert_eq!(b.objects("p/"), files);
}

/// S3 -> local restores the exact bytes and the source files' mtimes to the nanosecond; a second
/// download (with and without state) copies nothing.
#[test]
fn download_round_trip_restores_mtimes_exactly() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("mtime");
    let src = cx.path("src");
    let files = sample_tree();
    write_tree(&src, &files);
    // Distinct, odd nanosecond mtimes.
    let mut want_mtime = BTreeMap::new();
    for (i, k) in files.keys().enumerate() {
        let (secs, nanos) = (1_600_000_000 + i as i64 * 1000, 123_456_789 + i as u32 * 7);
        set_mtime(&src.join(k), secs, nanos);
        want_mtime.insert(k.clone(), secs as i128 * 1_000_000_000 + nanos as i128);
    }
    cx.sync(&[s(&src), &b.uri("m")]).assert_ok();

    let dst = cx.path("dst");
    let r = cx.sync(&[&b.uri("m"), s(&dst)]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 4, "{r}");
    assert_eq!(read_tree(&dst), files);
    for (k, want) in &want_mtime {
        assert_eq!(mtime_ns(&dst.join(k)), *want, "mtime of {k}");
    }

    let r = cx.sync(&[&b.uri("m"), s(&dst)]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "{r}");
    assert_eq!(r.n("skipped"), 4, "{r}");
    let r = cx.sync(&["--no-state", &b.uri("m"), s(&dst)]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "{r}");
    for (k, want) in &want_mtime {
        assert_eq!(mtime_ns(&dst.join(k)), *want, "mtime of {k} after re-sync");
    }
}

/// Rewrite a file in place with different bytes of the same size and put its mtime back to the
/// exact old value. The ETag comparison (`--no-state`, a fresh state dir) must catch it.
#[test]
fn same_size_edit_with_restored_mtime_is_detected_without_state() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("edit");
    let src = cx.path("src");
    write_tree(
        &src,
        &tree(&[("f.txt", b"aaaaaaaa"), ("g.txt", b"unchanged")]),
    );
    let f = src.join("f.txt");
    set_mtime(&f, 1_700_000_000, 111_222_333);
    cx.sync(&["--no-state", s(&src), &b.uri("")]).assert_ok();

    std::fs::write(&f, b"bbbbbbbb").expect("rewrite");
    set_mtime(&f, 1_700_000_000, 111_222_333);
    let r = cx.sync(&["--no-state", s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.keys("copy"), ["f.txt"], "{r}");
    assert_eq!(b.get("f.txt"), b"bbbbbbbb");
    assert_eq!(b.get("g.txt"), b"unchanged");
}

/// The same with a state database: the edit is in place (same inode), same size, mtime restored
/// to the nanosecond (as `touch -r` or `rsync -t` do). Only the change time differs.
#[test]
fn same_size_edit_with_restored_mtime_is_detected_with_state() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("edit-state");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("f.txt", b"aaaaaaaa")]));
    let f = src.join("f.txt");
    set_mtime(&f, 1_700_000_000, 111_222_333);
    cx.sync(&[s(&src), &b.uri("")]).assert_ok();

    std::fs::write(&f, b"bbbbbbbb").expect("rewrite");
    set_mtime(&f, 1_700_000_000, 111_222_333);
    let r = cx.sync(&[s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.keys("copy"), ["f.txt"], "{r}");
    assert_eq!(b.get("f.txt"), b"bbbbbbbb");
}

/// With state, a same-size edit whose mtime was set back with second precision (`touch -d`)
/// is caught: the state shows a change, and the content check finds it.
#[test]
fn same_size_edit_with_mtime_set_back_by_touch_is_detected_with_state() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("edit-touch");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("f.txt", b"aaaaaaaa")]));
    let f = src.join("f.txt");
    set_mtime(&f, 1_700_000_000, 500_000_000);
    cx.sync(&[s(&src), &b.uri("")]).assert_ok();

    std::fs::write(&f, b"bbbbbbbb").expect("rewrite");
    let st = std::process::Command::new("touch")
        .args(["-d", "@1700000000", s(&f)])
        .status()
        .expect("touch");
    assert!(st.success());
    let r = cx.sync(&[s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.keys("copy"), ["f.txt"], "{r}");
    assert_eq!(b.get("f.txt"), b"bbbbbbbb");
}

/// Destination a,b,c,d; source a,b,c,e: --delete removes d (25% <= default 50%) and copies e.
#[test]
fn delete_within_default_limit() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("del-ok");
    let src = cx.path("src");
    let files = tree(&[("a", b"1"), ("b", b"2"), ("c", b"3"), ("e", b"5")]);
    write_tree(&src, &files);
    b.put_all(
        "",
        &tree(&[("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")]),
    );

    let r = cx.sync(&["--delete", s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.keys("delete"), ["d"], "{r}");
    assert_eq!(r.keys("copy"), ["e"], "{r}");
    assert_eq!(r.n("deleted"), 1, "{r}");
    assert_eq!(b.objects(""), files);
}

/// Over the default limit: exit 2, one clear line, and NOTHING changed (the new file is not
/// copied either). Then `--max-delete` as a count or percentage allows it; a lower count does not.
#[test]
fn delete_over_limit_is_refused_before_any_change() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("del-limit");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a", b"1"), ("new", b"N")]));
    let before = tree(&[("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")]);
    b.put_all("", &before);

    let r = cx.sync(&["--delete", s(&src), &b.uri("")]);
    let line = r.assert_fatal();
    assert!(line.contains("refusing to delete 3 of 4"), "{line}");
    assert!(r.records("copy").is_empty(), "{r}");
    assert_eq!(b.objects(""), before, "nothing may change");

    let r = cx.sync(&["--delete", "--max-delete", "2", s(&src), &b.uri("")]);
    let line = r.assert_fatal();
    assert!(line.contains("refusing to delete 3 of 4"), "{line}");
    assert_eq!(b.objects(""), before, "nothing may change");

    let r = cx.sync(&["--delete", "--max-delete", "70%", s(&src), &b.uri("")]);
    r.assert_fatal();
    assert_eq!(b.objects(""), before, "nothing may change");

    let r = cx.sync(&["--delete", "--max-delete", "3", s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.keys("delete"), ["b", "c", "d"], "{r}");
    assert_eq!(r.keys("copy"), ["new"], "{r}");
    assert_eq!(b.objects(""), tree(&[("a", b"1"), ("new", b"N")]));
}

/// A percentage override.
#[test]
fn delete_percentage_override() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("del-pct");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a", b"1")]));
    b.put_all(
        "",
        &tree(&[("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")]),
    );
    let r = cx.sync(&["--delete", "--max-delete", "75%", s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.n("deleted"), 3, "{r}");
    assert_eq!(b.keys(""), ["a"]);
}

/// An empty source never empties the destination unless --max-delete is explicit.
#[test]
fn empty_source_refused_unless_explicit_max_delete() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("del-empty");
    let src = cx.path("empty");
    std::fs::create_dir_all(&src).expect("mkdir");
    let before = tree(&[("x", b"1"), ("y/z", b"2")]);
    b.put_all("", &before);

    let r = cx.sync(&["--delete", s(&src), &b.uri("")]);
    let line = r.assert_fatal();
    assert!(line.contains("is empty"), "{line}");
    assert_eq!(b.objects(""), before);

    // Even a 100% default-style limit needs to be explicit; an explicit one is honoured.
    let r = cx.sync(&["--delete", "--max-delete", "2", s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.keys("delete"), ["x", "y/z"], "{r}");
    assert!(b.keys("").is_empty());
}

/// --dry-run reports would-copy / would-delete and changes nothing, on S3 and locally.
#[test]
fn dry_run_reports_and_changes_nothing() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("dry");
    let src = cx.path("src");
    write_tree(
        &src,
        &tree(&[
            ("a", b"1"),
            ("b", b"2"),
            ("changed", b"new!"),
            ("new", b"N"),
        ]),
    );
    let before = tree(&[
        ("a", b"1"),
        ("b", b"2"),
        ("changed", b"old"),
        ("gone", b"G"),
    ]);
    b.put_all("", &before);

    let r = cx.sync(&["--dry-run", "--delete", s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.summary()["dry_run"], true, "{r}");
    assert_eq!(r.keys("would-copy"), ["changed", "new"], "{r}");
    assert_eq!(r.keys("would-delete"), ["gone"], "{r}");
    assert!(
        r.records("copy").is_empty() && r.records("delete").is_empty(),
        "{r}"
    );
    assert_eq!(b.objects(""), before);

    // S3 -> a local directory that does not exist yet: not even the directory is made.
    let dst = cx.path("not-yet");
    let r = cx.sync(&["--dry-run", &b.uri(""), s(&dst)]);
    r.assert_ok();
    assert_eq!(r.keys("would-copy"), ["a", "b", "changed", "gone"], "{r}");
    assert!(!dst.exists(), "dry run created {}", dst.display());

    // And the dry runs left no state behind: a real run still copies.
    let r = cx.sync(&["--delete", s(&src), &b.uri("")]);
    r.assert_ok();
    assert_eq!(r.keys("copy"), ["changed", "new"], "{r}");
    assert_eq!(r.keys("delete"), ["gone"], "{r}");
}

/// Include/exclude apply in command-line order, the last match wins; excluded destination keys
/// are not deleted.
#[test]
fn filters_last_match_wins_and_excluded_keys_are_not_deleted() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("filters");
    let src = cx.path("src");
    write_tree(
        &src,
        &tree(&[
            ("keep.txt", b"k"),
            ("other.txt", b"o"),
            ("skip.log", b"s"),
            ("logs/important.log", b"i"),
            ("tmp/x.tmp", b"t"),
        ]),
    );
    b.put_all(
        "a/",
        &tree(&[
            ("keep.txt", b"k"),
            ("other.txt", b"o"),
            ("gone.txt", b"g"),
            ("old.log", b"excluded, must stay"),
            ("tmp/y.tmp", b"excluded, must stay"),
        ]),
    );

    let r = cx.sync(&[
        "--delete",
        "--exclude",
        "*.log",
        "--include",
        "logs/*",
        "--exclude",
        "tmp/*",
        s(&src),
        &b.uri("a"),
    ]);
    r.assert_ok();
    assert_eq!(r.keys("copy"), ["logs/important.log"], "{r}");
    assert_eq!(r.keys("delete"), ["gone.txt"], "{r}");
    assert_eq!(
        b.keys("a/"),
        [
            "keep.txt",
            "logs/important.log",
            "old.log",
            "other.txt",
            "tmp/y.tmp"
        ]
    );

    // The other order: the exclude comes last and wins for logs/important.log.
    let r = cx.sync(&[
        "--include",
        "logs/*",
        "--exclude",
        "*.log",
        s(&src),
        &b.uri("b"),
    ]);
    r.assert_ok();
    assert_eq!(
        r.keys("copy"),
        ["keep.txt", "other.txt", "tmp/x.tmp"],
        "{r}"
    );
    assert_eq!(b.keys("b/"), ["keep.txt", "other.txt", "tmp/x.tmp"]);
}

/// --since: an old file is not copied, and with --delete it is not deleted from the destination
/// either (the destination copy is newer than --since, but its source exists).
#[test]
fn since_skips_old_files_and_never_deletes_them() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("since");
    let src = cx.path("src");
    write_tree(
        &src,
        &tree(&[
            ("old.txt", b"old content"),
            ("new.txt", b"new"),
            ("a", b"1"),
            ("b", b"2"),
        ]),
    );
    set_mtime(&src.join("old.txt"), 1_577_836_800, 0); // 2020-01-01

    let r = cx.sync(&["--since", "2024-01-01", s(&src), &b.uri("fresh")]);
    r.assert_ok();
    assert_eq!(r.keys("copy"), ["a", "b", "new.txt"], "{r}");
    assert_eq!(b.keys("fresh/"), ["a", "b", "new.txt"]);

    // The destination already has old.txt (different, newer): --since --delete keeps it as is.
    b.put_all(
        "d/",
        &tree(&[
            ("old.txt", b"dest version"),
            ("a", b"1"),
            ("b", b"2"),
            ("new.txt", b"new"),
        ]),
    );
    let r = cx.sync(&["--delete", "--since", "2024-01-01", s(&src), &b.uri("d")]);
    r.assert_ok();
    assert!(r.records("delete").is_empty(), "{r}");
    assert!(r.records("copy").is_empty(), "{r}");
    assert_eq!(b.get("d/old.txt"), b"dest version");
    assert_eq!(b.keys("d/"), ["a", "b", "new.txt", "old.txt"]);

    // An age works too.
    let r = cx.sync(&["--since", "36h", s(&src), &b.uri("age")]);
    r.assert_ok();
    assert_eq!(r.keys("copy"), ["a", "b", "new.txt"], "{r}");
}
