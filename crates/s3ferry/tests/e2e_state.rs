//! End-to-end: the state database between processes, and where it lives.
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Two syncs of the same pair at once, sharing one state database, both uploading the same
/// multipart object: neither aborts the other's upload (the stray-upload sweep leaves alone
/// what a live run has recorded), neither stalls the other, both end clean.
#[test]
fn two_concurrent_runs_of_one_pair_do_not_abort_each_other() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("two-runs");
    let data = random_bytes(12 * 1024 * 1024, 5);
    let src = cx.path("src");
    write_tree(&src, &tree(&[("big.bin", &data)]));
    let uri = b.uri("p");
    let spawn = || {
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
        // Slow parts: the two uploads overlap.
        .env("S3FERRY_FAULTS_DEST", "upload_part:latency=400ms")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c.spawn().expect("spawn")
    };
    let first = spawn();
    // The second starts once the first has its upload open (poll, not a fixed sleep).
    let t0 = Instant::now();
    while b.uploads().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no upload appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = spawn();
    for (name, child) in [("first", first), ("second", second)] {
        let out = child.wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name} run: stdout {stdout}\nstderr {stderr}"
        );
        let summary = parse_lines(&stdout)
            .into_iter()
            .find(|v| v["type"] == "summary")
            .expect("summary");
        assert_eq!(summary["failed"], 0, "{name}: {summary}");
    }
    assert!(b.get("p/big.bin") == data, "content");
    assert!(b.uploads().is_empty(), "no upload left open");
}

/// Without HOME (and no XDG dirs or --state-dir), the state database is not put in the current
/// directory — where it would be synced and deleted with the tree — the run is refused.
#[test]
fn no_home_means_no_state_database_in_the_current_directory() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("nohome");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a", b"a")]));
    let mut c = cx.cmd();
    c.env_remove("S3FERRY_STATE_DIR")
        .env_remove("HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("XDG_CACHE_HOME")
        .current_dir(&src)
        .args(["--no-progress", "sync", ".", &b.uri("p")]);
    let r = run_cmd(c, RUN_TIMEOUT);
    assert_eq!(r.code, 2, "{r}");
    let line = assert_one_error_line(&r.stderr);
    assert!(line.contains("--state-dir"), "{line}");
    let names: Vec<String> = std::fs::read_dir(&src)
        .expect("read src")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        vec!["a"],
        "nothing written into the synced directory"
    );
    assert!(b.keys("p/").is_empty());
}

/// Files in the state dir whose name starts with `state.db.corrupt-`.
fn corrupt_copies(state: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(state)
        .expect("state dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("state.db.corrupt-") && !n.ends_with("-wal"))
        })
        .collect();
    v.sort();
    v
}

/// A state database full of garbage, or cut short, is moved aside to
/// `state.db.corrupt-<UTC time>` with one line on stderr, a new one is started, and the sync
/// goes on (exit 0); the next run says nothing.
#[test]
fn corrupt_state_database_is_moved_aside_and_rebuilt() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("corrupt-state");
    let src = cx.path("src");
    let files: std::collections::BTreeMap<String, Vec<u8>> = (0..400)
        .map(|i| (format!("dir{}/file-{i:04}.txt", i % 7), vec![b'x'; i % 50]))
        .collect();
    write_tree(&src, &files);
    let db = cx.state.join("state.db");
    cx.sync(&[s(&src), &b.uri("p")]).assert_ok();

    // 1. Garbage.
    let garbage = b"this is not a database, it is a grocery list: eggs, milk\n".repeat(100);
    std::fs::write(&db, &garbage).expect("write garbage");
    let r = cx.sync(&[s(&src), &b.uri("p")]);
    r.assert_ok();
    let warn: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(warn.len(), 1, "one line on stderr: {r}");
    assert!(
        warn[0].contains("corrupt") && warn[0].contains("state.db.corrupt-"),
        "{r}"
    );
    let moved = corrupt_copies(&cx.state);
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(std::fs::read(&moved[0]).expect("moved"), garbage);
    let name = moved[0]
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stamp = name.trim_start_matches("state.db.corrupt-");
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").is_ok(),
        "not a UTC time: {name}"
    );
    assert_eq!(r.n("copied"), 0, "{r}");
    assert_eq!(b.keys("p/").len(), files.len());
    // The new database works: the next run is quiet.
    let r = cx.sync(&[s(&src), &b.uri("p")]);
    r.assert_ok();
    assert_eq!(r.stderr.trim(), "", "{r}");
    assert_eq!(corrupt_copies(&cx.state).len(), 1);

    // 2. Truncated: a sound database cut to half its pages.
    {
        let c = rusqlite::Connection::open(&db).expect("open db");
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
    }
    let len = std::fs::metadata(&db).expect("db").len();
    assert!(len >= 8 * 4096, "the database is too small to cut: {len}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open db");
    f.set_len(len / 2).expect("truncate");
    drop(f);
    let r = cx.sync(&[s(&src), &b.uri("p")]);
    r.assert_ok();
    assert_eq!(r.stderr.lines().count(), 1, "{r}");
    assert!(r.stderr.contains("truncated"), "{r}");
    assert_eq!(corrupt_copies(&cx.state).len(), 2);
}

/// Pairs not synced for --state-max-age lose their state (the next sync of such a pair
/// compares content afresh); pairs in use keep theirs; 0 keeps everything.
#[test]
fn state_of_pairs_unused_for_the_max_age_is_forgotten() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("prune-state");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a.txt", b"a"), ("d/b.txt", b"bb")]));
    let db = cx.state.join("state.db");
    cx.sync(&[s(&src), &b.uri("old")]).assert_ok();
    cx.sync(&[s(&src), &b.uri("new")]).assert_ok();
    let count = |scope_like: &str| -> i64 {
        let c = rusqlite::Connection::open(&db).expect("open db");
        c.query_row(
            "SELECT count(*) FROM records WHERE job = 'sync' AND scope LIKE ?1",
            [scope_like],
            |r| r.get(0),
        )
        .expect("count")
    };
    assert!(count("%/old/") > 0 && count("%/new/") > 0);
    // The "old" pair was last synced 100 days ago.
    {
        let c = rusqlite::Connection::open(&db).expect("open db");
        c.execute(
            "UPDATE scope_seen SET seen = seen - 8640000 WHERE scope LIKE '%/old/'",
            [],
        )
        .expect("age");
    }
    cx.sync(&[s(&src), &b.uri("new"), "--state-max-age", "0"])
        .assert_ok();
    assert!(count("%/old/") > 0, "0 keeps everything");
    cx.sync(&[s(&src), &b.uri("new")]).assert_ok();
    assert_eq!(count("%/old/"), 0, "90 days by default: forgotten");
    assert!(count("%/new/") > 0);
    // The forgotten pair syncs again by content: nothing copied, state rebuilt.
    let r = cx.sync(&[s(&src), &b.uri("old")]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "{r}");
    assert!(count("%/old/") > 0);
    let e = cx.sync(&[s(&src), &b.uri("new"), "--state-max-age", "soon"]);
    assert!(e.assert_fatal().contains("--state-max-age"));
}

/// The corrupt-state rebuild is not sync's alone: pipe, bisync and batch open the state
/// database the same way, so each moves a corrupt one aside with one warning and goes on.
#[test]
fn pipe_bisync_and_batch_rebuild_a_corrupt_state_database_too() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("corrupt-jobs");
    let dir = cx.path("local");
    write_tree(&dir, &tree(&[("a.txt", b"a\n")]));
    let m = cx.path("m.csv");
    let garbage = b"not a database\n".repeat(200);
    let st = cx.path("st");
    std::fs::create_dir_all(&st).unwrap();
    let db = st.join("state.db");
    let env = [("S3FERRY_STATE_DIR", s(&st))];
    let jobs: Vec<(&str, Vec<String>)> = vec![
        ("pipe up", vec!["pipe".into(), "up".into(), b.uri("piped")]),
        (
            "bisync",
            vec![
                "bisync".into(),
                "--poll".into(),
                "0".into(),
                s(&dir).into(),
                b.uri("bi"),
            ],
        ),
        (
            "batch manifest",
            vec![
                "batch".into(),
                "manifest".into(),
                b.uri("bi"),
                "--out".into(),
                s(&m).into(),
            ],
        ),
        (
            "batch run",
            vec![
                "batch".into(),
                "run".into(),
                "--manifest".into(),
                s(&m).into(),
                "--to".into(),
                b.uri("copied/"),
            ],
        ),
    ];
    for (what, args) in jobs {
        std::fs::write(&db, &garbage).unwrap();
        for f in corrupt_copies(&st) {
            std::fs::remove_file(f).unwrap();
        }
        let mut all = vec!["--no-progress"];
        all.extend(args.iter().map(String::as_str));
        let r = cx.run_env(&all, &env);
        assert_eq!(r.code, 0, "{what}: {r}");
        let warned = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("s3ferry: warning: state database") && l.contains("corrupt"))
            .count();
        if what == "batch manifest" {
            // Lists and writes a file; no state involved.
            continue;
        }
        assert_eq!(warned, 1, "{what}: {r}");
        let moved = corrupt_copies(&st);
        assert_eq!(moved.len(), 1, "{what}: {moved:?}");
        assert_eq!(std::fs::read(&moved[0]).unwrap(), garbage, "{what}");
    }
    assert_eq!(b.get("piped"), b"");
    assert_eq!(b.get("bi/a.txt"), b"a\n");
    assert_eq!(b.keys("copied/"), ["bi/a.txt"]);
}
