//! `s3ferry bisync` end to end against the local S3 server (and CloudFront on moto).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `s3ferry --json bisync --poll 0 ARGS...` with this test's state dir `state`.
fn round(cx: &Ctx, state: &str, args: &[&str]) -> Run {
    let st = cx.path(state);
    let mut all = vec!["--json", "bisync", "--poll", "0"];
    all.extend_from_slice(args);
    cx.run_env(&all, &[("S3FERRY_STATE_DIR", s(&st))])
}

fn round_summary(r: &Run) -> Value {
    r.json()
        .into_iter()
        .rev()
        .find(|v| v["type"] == "round")
        .unwrap_or_else(|| panic!("no round record: {r}"))
}

fn write(p: &std::path::Path, data: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

#[test]
fn changes_deletes_and_same_second_edits_propagate_and_nothing_is_resurrected() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("bisync-basic");
    let dir = cx.path("local");
    std::fs::create_dir_all(&dir).unwrap();
    let d = s(&dir);
    let uri = b.uri("app");
    let flags = ["--up-delete", "--down-delete"];
    let go = |extra: &[&str]| {
        let mut a: Vec<&str> = flags.to_vec();
        a.extend_from_slice(extra);
        round(&cx, "st", &a)
    };
    write(&dir.join("a.txt"), "aaaa");
    write(&dir.join("sub/l.txt"), "local");
    b.put("app/r.txt", b"remote");
    let r = go(&[d, &uri]);
    r.assert_ok();
    let s1 = round_summary(&r);
    assert_eq!(
        (s1["up"].as_u64(), s1["down"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    assert_eq!(b.get("app/sub/l.txt"), b"local");
    assert_eq!(std::fs::read(dir.join("r.txt")).unwrap(), b"remote");

    // An idle round changes nothing (either argument order).
    let r = go(&[&uri, d]);
    r.assert_ok();
    let s2 = round_summary(&r);
    for k in ["up", "down", "deleted_local", "deleted_remote", "conflicts"] {
        assert_eq!(s2[k], 0, "{k}: {r}");
    }

    // Same size, same second (the exact mtime even): still an edit.
    let p = dir.join("a.txt");
    let (secs, nanos) = {
        let m = mtime_ns(&p);
        ((m / 1_000_000_000) as i64, (m % 1_000_000_000) as u32)
    };
    std::fs::write(&p, "bbbb").unwrap();
    set_mtime(&p, secs, nanos);
    b.put("app/r.txt", b"remote v2");
    let r = go(&[d, &uri]);
    r.assert_ok();
    assert_eq!(b.get("app/a.txt"), b"bbbb");
    assert_eq!(std::fs::read(dir.join("r.txt")).unwrap(), b"remote v2");

    // Deletions both ways, and no resurrection in later rounds.
    std::fs::remove_file(dir.join("sub/l.txt")).unwrap();
    b.block_on(async {
        use s3ferry_store::Store;
        let _ = b.store.delete_many(&["app/r.txt".to_string()]).await;
    });
    let r = go(&[d, &uri]);
    r.assert_ok();
    let s3 = round_summary(&r);
    assert_eq!(
        (s3["deleted_remote"].as_u64(), s3["deleted_local"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    for _ in 0..2 {
        go(&[d, &uri]).assert_ok();
    }
    assert!(!dir.join("r.txt").exists());
    assert!(!dir.join("sub/l.txt").exists());
    assert_eq!(b.keys("app/"), vec!["a.txt"]);
}

#[test]
fn an_edit_on_both_sides_gives_a_conflict_copy_and_a_report_line() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("bisync-conflict");
    let dir = cx.path("local");
    write(&dir.join("doc.md"), "base");
    let uri = b.uri("c");
    round(&cx, "st", &[s(&dir), &uri]).assert_ok();
    write(&dir.join("doc.md"), "local edit");
    b.put("c/doc.md", b"remote edit, longer");
    let r = round(&cx, "st", &["--node-id", "n1", s(&dir), &uri]);
    r.assert_ok();
    assert_eq!(round_summary(&r)["conflicts"], 1, "{r}");
    let reported: Vec<Value> = r
        .json()
        .into_iter()
        .filter(|v| {
            v["type"] == "object" && v["reason"].as_str().unwrap_or("").contains("conflict")
        })
        .collect();
    assert!(!reported.is_empty(), "a record names the conflict: {r}");
    assert_eq!(
        std::fs::read(dir.join("doc.md")).unwrap(),
        b"remote edit, longer"
    );
    let aside: Vec<String> = b
        .keys("c/")
        .into_iter()
        .filter(|k| k.starts_with("doc.md.conflict-n1-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", b.keys("c/"));
    assert_eq!(b.get(&format!("c/{}", aside[0])), b"local edit");
    assert_eq!(std::fs::read(dir.join(&aside[0])).unwrap(), b"local edit");
}

/// Two nodes (two directories, two state databases) with --lock on one prefix, each editing
/// its own files and running rounds concurrently: in the end both have every edit.
#[test]
fn two_locked_nodes_editing_concurrently_converge() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("bisync-nodes");
    let uri = b.uri("shared");
    let cx = &cx;
    std::thread::scope(|sc| {
        for n in 0..2 {
            let uri = uri.clone();
            sc.spawn(move || {
                let dir = cx.path(&format!("node{n}"));
                for i in 0..4 {
                    write(&dir.join(format!("n{n}/f{i}.txt")), &format!("{n}-{i}"));
                    let r = round(
                        cx,
                        &format!("st{n}"),
                        &["--lock", "--node-id", &format!("node{n}"), s(&dir), &uri],
                    );
                    r.assert_ok();
                }
            });
        }
    });
    for n in [0, 1, 0] {
        let dir = cx.path(&format!("node{n}"));
        round(cx, &format!("st{n}"), &["--lock", s(&dir), &uri]).assert_ok();
    }
    let (a, c) = (read_tree(&cx.path("node0")), read_tree(&cx.path("node1")));
    assert_eq!(a, c);
    assert_eq!(a.len(), 8, "{:?}", a.keys());
    let lease: Value = serde_json::from_slice(&b.get("shared/.s3ferry.lock")).unwrap();
    assert_eq!(lease["held"], false, "released after each round: {lease}");
    assert!(lease["fence"].as_u64().unwrap() >= 2, "{lease}");
    assert!(!b.keys("shared/").is_empty());
    assert!(
        !a.contains_key(".s3ferry.lock"),
        "the lease object is never synced down"
    );
}

fn held_lease(node: &str) -> Vec<u8> {
    serde_json::json!({
        "format": 1, "node": node, "fence": 7, "held": true, "renewals": 0,
        "timeout_secs": 60, "written_at": "2026-01-01T00:00:00Z"
    })
    .to_string()
    .into_bytes()
}

#[test]
fn a_held_lease_makes_a_waiter_give_up_and_a_stale_one_is_taken_over() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("bisync-lease");
    let dir = cx.path("local");
    write(&dir.join("x"), "x");
    let uri = b.uri("p");
    // A lease held by a node that keeps renewing it is never taken: here nobody renews, but
    // the waiter's --lock-wait ends before its --lock-timeout.
    b.put("p/.s3ferry.lock", &held_lease("other"));
    let r = round(
        &cx,
        "st",
        &[
            "--lock",
            "--lock-wait",
            "2",
            "--lock-timeout",
            "60",
            s(&dir),
            &uri,
        ],
    );
    assert_eq!(r.code, 2, "{r}");
    let line = assert_one_error_line(&r.stderr);
    assert!(line.contains("held by other"), "{line}");
    // The JSON stream ends with one summary, carrying the error.
    let sum = r.summary();
    assert_eq!(sum["exit_code"], 2, "{sum}");
    assert!(
        sum["error"]
            .as_str()
            .unwrap_or_default()
            .contains("held by other"),
        "{sum}"
    );
    assert!(b.keys("p/x").is_empty(), "nothing synced without the lease");

    // The holder died (kill -9: the lease stays held, never renewed): after --lock-timeout of
    // no change it is taken over, with a higher fence, and the round runs.
    let r = round(
        &cx,
        "st",
        &[
            "--lock",
            "--lock-wait",
            "20",
            "--lock-timeout",
            "1",
            s(&dir),
            &uri,
        ],
    );
    r.assert_ok();
    assert_eq!(b.get("p/x"), b"x");
    let lease: Value = serde_json::from_slice(&b.get("p/.s3ferry.lock")).unwrap();
    assert!(lease["fence"].as_u64().unwrap() > 7, "{lease}");
    assert_eq!(lease["held"], false);
}

#[test]
fn a_polling_node_picks_up_changes_and_stops_cleanly_on_sigterm() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("bisync-poll");
    let dir = cx.path("local");
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = cx.cmd();
    c.args(["bisync", "--lock", s(&dir), &b.uri("w")])
        .env("S3FERRY_POLL", "1")
        .env("S3FERRY_STATE_DIR", cx.path("st"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    write(&dir.join("one.txt"), "1");
    wait_until("one.txt uploaded", || !b.keys("w/one.txt").is_empty());
    b.put("w/two.txt", b"2");
    wait_until("two.txt downloaded", || dir.join("two.txt").exists());
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "a requested stop exits 0");
    let lease: Value = serde_json::from_slice(&b.get("w/.s3ferry.lock")).unwrap();
    assert_eq!(lease["held"], false, "{lease}");
}

#[test]
fn bad_options_give_one_line_and_status_2() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("bisync-bad");
    let dir = cx.path("local");
    std::fs::create_dir_all(&dir).unwrap();
    let d = s(&dir);
    let uri = b.uri("p");
    let missing = cx.path("missing");
    let cases: Vec<Vec<&str>> = vec![
        vec!["--lock-timeout", "0", d, &uri],
        vec!["--concurrency", "0", d, &uri],
        vec!["--max-delete", "lots", d, &uri],
        vec![s(&missing), &uri],
        vec![d, "s3://s3ferry-no-such-bucket-bisync/p"],
        vec![d, d],
    ];
    for args in cases {
        let r = round(&cx, "st", &args);
        assert_eq!(r.code, 2, "{args:?}: {r}");
        assert!(r.stderr.contains("error"), "{args:?}: {r}");
    }
    // clap's own messages (poll out of range, negative numbers) also exit 2.
    for args in [
        vec!["--poll", "4000", d, &uri],
        vec!["--lock-wait", "-5", d, &uri],
    ] {
        let mut all = vec!["bisync"];
        all.extend_from_slice(&args);
        let r = cx.run(&all);
        assert_eq!(r.code, 2, "{args:?}: {r}");
    }
    // No credentials at all.
    std::fs::write(cx.path("empty"), "").unwrap();
    let mut c = cx.cmd();
    c.args(["bisync", "--poll", "0", d, &uri])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", cx.path("empty"))
        .env("AWS_CONFIG_FILE", cx.path("empty"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let r = run_cmd(c, Duration::from_secs(60));
    assert_eq!(r.code, 2, "{r}");
    assert_one_error_line(&r.stderr);
}

/// After a round that pushed local changes, exactly the changed paths are invalidated.
#[test]
fn changed_paths_are_invalidated_on_cloudfront() {
    let Some(cx) = Ctx::new() else { return };
    let Some(aws) = s3ferry_testkit::aws_test_endpoint() else {
        return;
    };
    let b = cx.bucket("bisync-cdn");
    let cf = |id: &str| {
        let (id, aws) = (id.to_string(), aws.clone());
        async move {
            s3ferry_aws::CloudFrontInvalidator::connect(s3ferry_aws::CloudFrontConfig {
                distribution_id: id,
                endpoint_url: Some(aws),
                ..Default::default()
            })
            .await
            .expect("connect to moto")
        }
    };
    let dist = b.block_on(async {
        cf("setup")
            .await
            .create_distribution(
                "site.s3.amazonaws.com",
                &format!("bisync-{}", std::process::id()),
            )
            .await
            .expect("create distribution")
    });
    let dir = cx.path("site");
    write(&dir.join("index.html"), "<h1>");
    write(&dir.join("css/a b.css"), "body{}");
    let www = b.uri("www");
    let args = [
        "--cf-distribution-id",
        dist.as_str(),
        "--cf-endpoint-url",
        aws.as_str(),
        s(&dir),
        www.as_str(),
    ];
    let r = round(&cx, "st", &args);
    r.assert_ok();
    let note = r
        .notes()
        .into_iter()
        .find(|n| n.contains("CDN invalidation"))
        .unwrap_or_else(|| panic!("no invalidation note: {r}"));
    let id = note.split_whitespace().nth(2).unwrap().to_string();
    let mut paths = b.block_on(async {
        cf(&dist)
            .await
            .invalidation_paths(&id)
            .await
            .expect("get invalidation")
    });
    paths.sort();
    assert_eq!(paths, vec!["/www/css/a%20b.css", "/www/index.html"]);
    // An idle round invalidates nothing.
    let r = round(&cx, "st", &args);
    r.assert_ok();
    assert!(
        !r.notes().iter().any(|n| n.contains("CDN invalidation")),
        "{r}"
    );
}
