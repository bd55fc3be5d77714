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
