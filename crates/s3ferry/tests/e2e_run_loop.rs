//! One run loop for every job (issue 17): the same signal contract, resume that never redoes a
//! finished entry, batch entries that know their destination, one output contract, one filter
//! rule, one cleanup of killed uploads and one set of checks. Each test is named after the
//! point of the issue it pins (p1 … p7); each failed on the code before the shared executor.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A running `s3ferry` whose stdout and stderr are collected as it goes.
struct Spawned {
    child: Child,
    out: JoinHandle<String>,
    err: JoinHandle<String>,
}

fn collect<R: Read + Send + 'static>(r: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn spawn(mut c: Command) -> Spawned {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn s3ferry");
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    Spawned { child, out, err }
}

impl Spawned {
    /// Wait until `ready` holds (failing if the process ends first), then send `sig`.
    fn signal_when(&mut self, sig: &str, what: &str, mut ready: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !ready() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("s3ferry ended ({st}) before {what}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    fn finish(mut self) -> Run {
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if t0.elapsed() > RUN_TIMEOUT {
                let _ = self.child.kill();
                panic!("s3ferry did not stop within {RUN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: self.out.join().unwrap_or_default(),
            stderr: self.err.join().unwrap_or_default(),
            elapsed: t0.elapsed(),
        }
    }
}

/// The `summary` record of a JSON Lines stream (exactly one, and the last line).
#[track_caller]
fn last_summary(r: &Run) -> Value {
    let lines = r.json();
    let n = lines.iter().filter(|v| v["type"] == "summary").count();
    assert_eq!(n, 1, "one summary record: {r}");
    let last = lines.last().cloned().unwrap_or_default();
    assert_eq!(last["type"], "summary", "the summary ends the stream: {r}");
    last
}

fn done_keys(cx: &Ctx) -> Vec<String> {
    let db = cx.state.join("state.db");
    let Ok(c) = rusqlite::Connection::open(&db) else {
        return Vec::new();
    };
    let Ok(mut q) = c.prepare("SELECT key FROM records WHERE job = 'batch' AND kind = 'done'")
    else {
        return Vec::new();
    };
    q.query_map([], |r| r.get::<_, String>(0))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// The source key of a done record's identity (bucket, key, version, destination...).
fn done_source_key(ident: &str) -> String {
    ident.split('\n').nth(1).unwrap_or_default().to_string()
}

fn manifest_of(cx: &Ctx, b: &Bucket, n: usize) -> std::path::PathBuf {
    let files: BTreeMap<String, Vec<u8>> = (0..n)
        .map(|i| (format!("k{i:03}"), format!("value {i}").into_bytes()))
        .collect();
    b.put_all("", &files);
    let m = cx.path("m.csv");
    let text: String = files.keys().map(|k| format!("{},{k}\n", b.name)).collect();
    std::fs::write(&m, text).unwrap();
    m
}

fn batch_cmd(cx: &Ctx, args: &[&str], faults: &str) -> Command {
    let mut c = cx.cmd();
    c.args(["--json", "--no-progress", "batch"]).args(args);
    if !faults.is_empty() {
        c.env("S3FERRY_FAULTS", faults);
    }
    c
}

/// `batch run` of manifest `m` into `b`/c/ with `concurrency` copies at once, each slowed by the
/// fault spec `faults`.
fn slow_run(cx: &Ctx, m: &std::path::Path, b: &Bucket, concurrency: u32, faults: &str) -> Spawned {
    let n = concurrency.to_string();
    spawn(batch_cmd(
        cx,
        &[
            "run",
            "--manifest",
            s(m),
            "--to",
            &b.uri("c/"),
            "--concurrency",
            &n,
        ],
        faults,
    ))
}

/// The newest job of `batch list --json`.
fn last_job(cx: &Ctx) -> Value {
    let r = cx.run(&["--json", "batch", "list"]);
    r.stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default()
}

fn copies(r: &Run) -> Vec<String> {
    r.keys("copy")
}

/// Start `c`, send SIGTERM once `b` has an open multipart upload, and check what every job
/// promises then: exit 130, a `summary` record with `exit_code` 130, no upload left open.
#[track_caller]
fn term_during_upload(c: Command, b: &Bucket) -> (Run, Value) {
    let mut p = spawn(c);
    p.signal_when("TERM", "an open multipart upload", || {
        !b.uploads().is_empty()
    });
    let r = p.finish();
    assert_eq!(r.code, 130, "{r}");
    let sum = last_summary(&r);
    assert_eq!(sum["exit_code"], 130, "{sum}");
    assert!(b.uploads().is_empty(), "{:?}", b.uploads());
    (r, sum)
}

// ---- p1: one signal contract -----------------------------------------------------------------

/// SIGTERM during `batch run`: the copies in flight finish and are recorded, the summary says
/// interrupted, the exit status is 130 (it was: killed by the signal, no summary, the job left
/// "Interrupted, Total: 0"), and the job is resumable.
#[cfg(feature = "fault")]
#[test]
fn p1_sigterm_stops_batch_run_with_130_a_summary_and_a_resumable_job() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("rl-bt-src"), cx.bucket("rl-bt-dst"));
    let m = manifest_of(&cx, &a, 60);
    let mut p = slow_run(&cx, &m, &b, 2, "copy:latency=100ms");
    p.signal_when("TERM", "some copies", || done_keys(&cx).len() >= 4);
    let r = p.finish();
    assert_eq!(r.code, 130, "{r}");
    let sum = last_summary(&r);
    assert_eq!(sum["exit_code"], 130, "{sum}");
    assert_eq!(sum["interrupted"], true, "{sum}");
    assert_eq!(sum["state"], "Interrupted", "{sum}");
    let first = copies(&r);
    assert!(!first.is_empty() && first.len() < 60, "{r}");
    assert_eq!(
        b.keys("c/").len(),
        first.len(),
        "every copy reported is there, and nothing more"
    );
    // Resume copies exactly the rest.
    let id = sum["id"].as_str().unwrap().to_string();
    let r2 = spawn(batch_cmd(&cx, &["resume", &id], "")).finish();
    assert_eq!(r2.code, 0, "{r2}");
    let second = copies(&r2);
    assert_eq!(first.len() + second.len(), 60, "{r2}");
    assert!(
        second.iter().all(|k| !first.contains(k)),
        "no entry copied twice"
    );
    assert_eq!(b.keys("c/").len(), 60);
}

/// SIGTERM during one bisync round (`--poll 0`): the upload in flight completes (it was: the
/// round was dropped, exit 0, a multipart upload left open), the exit status is 130, the
/// summary says it stopped, and no upload is open.
#[cfg(feature = "fault")]
#[test]
fn p1_sigterm_stops_a_bisync_round_with_130_and_no_open_upload() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("rl-bi");
    let dir = cx.path("local");
    let big = random_bytes(20 << 20, 17);
    write_tree(
        &dir,
        &[
            ("big.bin".to_string(), big.clone()),
            ("z.txt".to_string(), b"z".to_vec()),
        ]
        .into_iter()
        .collect(),
    );
    let mut c = cx.cmd();
    c.args([
        "--json",
        "bisync",
        "--poll",
        "0",
        "--concurrency",
        "1",
        s(&dir),
        &b.uri("p"),
    ])
    .env("S3FERRY_FAULTS", "upload_part:latency=300ms");
    let (_, sum) = term_during_upload(c, &b);
    assert_eq!(sum["stopped"], true, "{sum}");
    assert_eq!(b.get("p/big.bin"), big, "the upload in flight finished");
    assert!(b.keys("p/z.txt").is_empty(), "nothing new started");
}

/// SIGTERM during `archive import`: the object in flight is finished, nothing new starts, the
/// marker is unchanged, the exit status is 130 with a summary (it was 143, an upload left
/// open until the next import), and a rerun applies the rest.
#[cfg(feature = "fault")]
#[test]
fn p1_sigterm_stops_archive_import_with_130_and_no_open_upload() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("rl-ar");
    let src = cx.path("src");
    let mut files: BTreeMap<String, Vec<u8>> = (0..20)
        .map(|i| (format!("small/{i:02}"), format!("{i}").into_bytes()))
        .collect();
    files.insert("a-big.bin".into(), random_bytes(20 << 20, 5));
    write_tree(&src, &files);
    let out = cx.path("ar");
    std::fs::create_dir_all(&out).unwrap();
    let e = cx.run(&[
        "--json",
        "--no-progress",
        "archive",
        "export",
        s(&src),
        "--out",
        &format!("{}/", s(&out)),
    ]);
    assert_eq!(e.code, 0, "{e}");
    let vols: Vec<String> = last_summary(&e)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut c = cx.cmd();
    c.args(["--json", "--no-progress", "archive", "import"])
        .args(&vols)
        .args([&b.uri("d"), "--concurrency", "1", "--part-size", "5MiB"])
        .env(
            "S3FERRY_FAULTS",
            "upload_part:latency=300ms;put:latency=200ms",
        );
    term_during_upload(c, &b);
    assert!(
        b.keys("d/.s3ferry-archive.json").is_empty(),
        "the marker is unchanged"
    );
    let again = cx.run(
        &[
            &["--json", "--no-progress", "archive", "import"][..],
            &vols.iter().map(String::as_str).collect::<Vec<_>>(),
            &[&b.uri("d")],
        ]
        .concat(),
    );
    assert_eq!(again.code, 0, "{again}");
    let mut got = b.objects("d/");
    got.remove(".s3ferry-archive.json");
    got.remove(".s3ferry-archive.state");
    assert_eq!(got, files);
}

/// SIGTERM during `pipe up`: the upload is aborted and the exit status is 130, as for every
/// command (it was 2).
#[cfg(feature = "fault")]
#[test]
fn p1_sigterm_stops_pipe_up_with_130_and_no_open_upload() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("rl-pipe");
    let mut c = cx.cmd();
    c.args(["pipe", "up", "--part-size", "5MiB", &b.uri("k")])
        .env("S3FERRY_FAULTS", "upload_part:latency=60s")
        .stdin(Stdio::piped());
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&random_bytes(12 << 20, 3));
    });
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    let mut p = Spawned { child, out, err };
    p.signal_when("TERM", "an open multipart upload", || {
        !b.uploads().is_empty()
    });
    let r = p.finish();
    assert_eq!(r.code, 130, "{r}");
    assert!(
        r.stderr.contains("SIGTERM") && r.stderr.contains("abort"),
        "{r}"
    );
    assert!(!r.stderr.contains("panicked"), "{r}");
    assert!(b.uploads().is_empty(), "{:?}", b.uploads());
    assert!(b.list("k").is_empty(), "no object appears");
}

// ---- p2: resume never redoes a finished entry; status is live; cancel is prompt ---------------

/// `kill -9` in the middle of `batch run`, then `resume`: no entry whose completion was recorded
/// is copied again (it was: all copied again, because done records sat in a buffer of 512).
/// While it runs, `status` shows live counts (it was `Total: 0`).
#[cfg(feature = "fault")]
#[test]
fn p2_batch_resume_after_kill9_never_redoes_a_recorded_entry_and_status_is_live() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("rl-k9-src"), cx.bucket("rl-k9-dst"));
    let m = manifest_of(&cx, &a, 120);
    let mut p = slow_run(&cx, &m, &b, 2, "copy:latency=50ms");
    // Live status: a count above zero before the job ends.
    let mut live = Value::Null;
    wait_until("a live status", || {
        live = last_job(&cx);
        live["succeeded"].as_u64().unwrap_or(0) >= 10
    });
    assert_eq!(live["state"], "Active", "{live}");
    assert_eq!(live["total"], 120, "{live}");
    let id = live["id"].as_str().unwrap().to_string();
    p.signal_when("KILL", "more copies", || done_keys(&cx).len() >= 30);
    let _ = p.finish();
    let recorded: Vec<String> = done_keys(&cx).iter().map(|k| done_source_key(k)).collect();
    assert!(recorded.len() < 120, "killed mid-job");
    let r = spawn(batch_cmd(&cx, &["resume", &id], "")).finish();
    assert_eq!(r.code, 0, "{r}");
    let again = copies(&r);
    for k in &again {
        let key = k.split_once('/').map(|(_, k)| k).unwrap_or(k);
        assert!(
            !recorded.iter().any(|d| d == key),
            "{key} was recorded done and copied again: {r}"
        );
    }
    assert_eq!(recorded.len() + again.len(), 120, "{r}");
    assert_eq!(b.keys("c/").len(), 120);
}

/// `batch cancel` stops a running job within a fraction of a second of entries (it was about
/// 155 entries late at --concurrency 1).
#[cfg(feature = "fault")]
#[test]
fn p2_batch_cancel_takes_effect_promptly() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("rl-cn-src"), cx.bucket("rl-cn-dst"));
    let m = manifest_of(&cx, &a, 200);
    let p = slow_run(&cx, &m, &b, 1, "copy:latency=50ms");
    wait_until("some copies", || done_keys(&cx).len() >= 5);
    let id = last_job(&cx)["id"].as_str().unwrap().to_string();
    let r = cx.run(&["batch", "cancel", &id]);
    assert_eq!(r.code, 0, "{r}");
    let at_cancel = done_keys(&cx).len();
    let r = p.finish();
    let sum = last_summary(&r);
    assert_eq!(sum["state"], "Cancelled", "{sum}");
    let after = done_keys(&cx).len() - at_cancel;
    assert!(
        after <= 25,
        "{after} entries finished after the cancel: {r}"
    );
    assert!(done_keys(&cx).len() < 200);
}

// ---- p3: a batch entry is its source and its destination ----------------------------------------

/// Two pairs copy one source to two destinations: both are filled, status counts each entry
/// once, and the report has a row per entry (it was: Success 680 against 340 report rows, and a
/// resumed job left the second destination empty).
#[test]
fn p3_one_source_to_two_destinations_are_two_entries() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b, c) = (
        cx.bucket("rl-2d-a"),
        cx.bucket("rl-2d-b"),
        cx.bucket("rl-2d-c"),
    );
    for i in 0..25 {
        a.put(&format!("x/{i:02}"), format!("{i}").as_bytes());
    }
    let pairs = cx.path("pairs.csv");
    std::fs::write(
        &pairs,
        format!("{0},{1},copy\n{0},{2},copy\n", a.name, b.name, c.name),
    )
    .unwrap();
    let r = spawn(batch_cmd(&cx, &["run", "--pairs", s(&pairs)], "")).finish();
    assert_eq!(r.code, 0, "{r}");
    let sum = last_summary(&r);
    assert_eq!(
        (sum["succeeded"].as_u64(), sum["total"].as_u64()),
        (Some(50), Some(50)),
        "{sum}"
    );
    assert_eq!(b.objects("copy/"), a.objects(""));
    assert_eq!(c.objects("copy/"), a.objects(""));
    let id = sum["id"].as_str().unwrap();
    let dir = cx.state.join("batch-reports").join(format!("job-{id}"));
    let mut rows = 0;
    for e in std::fs::read_dir(dir.join("results")).unwrap() {
        rows += std::fs::read_to_string(e.unwrap().path())
            .unwrap()
            .lines()
            .count();
    }
    assert_eq!(rows, 50, "a report row per entry");
    assert_eq!(done_keys(&cx).len(), 50);
}

// ---- p4: one output contract ----------------------------------------------------------------------

/// `batch run --json`: stdout is JSON Lines from `begin` to `summary` with an object record per
/// entry carrying its size; stderr has no per-key lines (it was: per-key lines on stderr, one
/// status object without a type, size 0). In text mode the per-key lines are on stdout.
#[test]
fn p4_batch_output_follows_the_contract() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("rl-out-a"), cx.bucket("rl-out-b"));
    for i in 0..5 {
        a.put(&format!("{i}"), &vec![b'x'; 100 + i]);
    }
    let pairs = cx.path("pairs.csv");
    std::fs::write(&pairs, format!("{},{},p\n", a.name, b.name)).unwrap();
    let r = spawn(batch_cmd(&cx, &["run", "--pairs", s(&pairs)], "")).finish();
    assert_eq!(r.code, 0, "{r}");
    let lines = r.json();
    assert_eq!(lines[0]["type"], "begin", "{r}");
    assert_eq!(lines[0]["job"], "batch", "{r}");
    assert!(lines.iter().all(|v| v["type"].is_string()), "{r}");
    let sum = last_summary(&r);
    assert_eq!(sum["exit_code"], 0);
    assert_eq!(sum["copied"], 5);
    let mut sizes: Vec<u64> = r
        .records("copy")
        .iter()
        .map(|v| v["size"].as_u64().unwrap())
        .collect();
    sizes.sort();
    assert_eq!(sizes, [100, 101, 102, 103, 104]);
    assert!(!r.stderr.contains("\"action\""), "{r}");
    // Text: the per-key lines are on stdout.
    let mut c = cx.cmd();
    c.args(["--no-progress", "batch", "run", "--pairs", s(&pairs)]);
    let t = spawn(c).finish();
    assert_eq!(t.code, 0, "{t}");
    assert_eq!(
        t.stdout.lines().filter(|l| l.starts_with("copy")).count(),
        5,
        "{t}"
    );
}

/// A fatal error under `--json` still ends the stream with a `summary` record carrying the
/// error and exit code 2 (it was: the `begin` record alone), for a job that failed after it
/// began (sync into a missing bucket) and for one that failed before (a missing bucket for
/// batch).
#[test]
fn p4_a_fatal_error_under_json_still_ends_with_a_summary() {
    let Some(cx) = Ctx::new() else { return };
    let dir = cx.path("d");
    write_tree(
        &dir,
        &[("a".to_string(), b"a".to_vec())].into_iter().collect(),
    );
    let r = cx.run(&[
        "--json",
        "--no-progress",
        "sync",
        s(&dir),
        "s3://s3ferry-no-such-bucket-rl/x",
    ]);
    assert_eq!(r.code, 2, "{r}");
    let sum = last_summary(&r);
    assert_eq!(sum["exit_code"], 2, "{sum}");
    assert_eq!(sum["job"], "sync", "{sum}");
    assert!(
        sum["error"]
            .as_str()
            .unwrap()
            .contains("s3ferry-no-such-bucket-rl"),
        "{sum}"
    );
    let m = cx.path("m.csv");
    std::fs::write(&m, "s3ferry-no-such-bucket-rl,k\n").unwrap();
    let r = cx.run(&[
        "--json",
        "batch",
        "run",
        "--manifest",
        s(&m),
        "--to",
        "s3://s3ferry-no-such-bucket-rl2/",
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert_eq!(last_summary(&r)["exit_code"], 2);
}

// ---- p5: one filter rule ----------------------------------------------------------------------------

/// `--exclude '*' --include '*.txt'` selects the same keys in sync, batch, bundle and archive:
/// the rules apply in the order typed, the last match deciding (it was: includes first in batch,
/// bundle and archive, which then selected nothing).
#[test]
fn p5_filters_select_the_same_keys_in_every_job() {
    let Some(cx) = Ctx::new() else { return };
    let a = cx.bucket("rl-flt");
    let files: BTreeMap<String, Vec<u8>> = ["a.txt", "b.log", "d/c.txt", "d/e.bin"]
        .iter()
        .map(|k| (k.to_string(), k.as_bytes().to_vec()))
        .collect();
    a.put_all("", &files);
    let rules = ["--exclude", "*", "--include", "*.txt"];
    let want = 2u64;
    // sync (dry run)
    let r = cx.run(
        &[
            &["--json", "--no-progress", "sync", "--dry-run"][..],
            &rules,
            &[&a.uri(""), s(&cx.path("out"))],
        ]
        .concat(),
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.keys("would-copy"), ["a.txt", "d/c.txt"], "sync: {r}");
    // batch manifest
    let m = cx.path("m.csv");
    let r = cx.run(
        &[
            &["batch", "manifest", &a.uri("")][..],
            &rules,
            &["--out", s(&m)],
        ]
        .concat(),
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        std::fs::read_to_string(&m).unwrap().lines().count() as u64,
        want,
        "batch manifest"
    );
    // batch run --pairs (the filters travel in the job)
    let dst = cx.bucket("rl-flt-dst");
    let pairs = cx.path("pairs.csv");
    std::fs::write(&pairs, format!("{},{},p\n", a.name, dst.name)).unwrap();
    let r = cx.run(
        &[
            &[
                "--json",
                "--no-progress",
                "batch",
                "run",
                "--pairs",
                s(&pairs),
            ][..],
            &rules,
        ]
        .concat(),
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(dst.keys("p/"), ["a.txt", "d/c.txt"], "batch run: {r}");
    // bundle group
    let shards = cx.path("shards");
    let r = cx.run(
        &[
            &[
                "--json",
                "--no-progress",
                "bundle",
                "group",
                "--source",
                &a.uri(""),
                "--out",
                s(&shards),
            ][..],
            &rules,
        ]
        .concat(),
    );
    assert_eq!(r.code, 0, "{r}");
    let text = std::fs::read_to_string(shards.join("shard-000001.csv")).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.contains(".txt")).count() as u64,
        want,
        "bundle: {text}"
    );
    assert!(
        !text.contains(".log") && !text.contains(".bin"),
        "bundle: {text}"
    );
    // archive export
    let out = cx.path("ar.tar");
    let r = cx.run(
        &[
            &["--json", "--no-progress", "archive", "export", &a.uri("")][..],
            &rules,
            &["--out", s(&out)],
        ]
        .concat(),
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        last_summary(&r)["puts"].as_u64(),
        Some(want),
        "archive: {r}"
    );
}

// ---- p6: one cleanup of killed uploads ------------------------------------------------------------

/// A `bundle run` killed with -9 while its tar upload is open: the next run aborts that upload
/// (it was: left open forever, also by --force).
#[cfg(feature = "fault")]
#[test]
fn p6_a_killed_bundle_run_leaves_no_upload_after_the_next_run() {
    let Some(cx) = Ctx::new() else { return };
    let (src, arch) = (cx.bucket("rl-bu-src"), cx.bucket("rl-bu-arch"));
    let files: BTreeMap<String, Vec<u8>> = (0..200)
        .map(|i| (format!("f{i:03}"), random_bytes(40_000, i)))
        .collect();
    src.put_all("", &files);
    let shards = cx.path("shards");
    let r = cx.run(&[
        "--json",
        "bundle",
        "group",
        "--source",
        &src.uri(""),
        "--out",
        s(&shards),
    ]);
    assert_eq!(r.code, 0, "{r}");
    let shard = shards.join("shard-000001.csv");
    let mut c = cx.cmd();
    c.args([
        "--json",
        "--no-progress",
        "bundle",
        "run",
        s(&shard),
        "--to",
        &arch.uri("a/"),
        "--concurrency",
        "2",
        "--part-size",
        "5MiB",
    ])
    .env("S3FERRY_FAULTS_SOURCE", "get:latency=30ms");
    let mut p = spawn(c);
    p.signal_when("KILL", "the tar upload to open", || {
        !arch.uploads().is_empty()
    });
    let _ = p.finish();
    assert_eq!(arch.uploads().len(), 1, "the killed run's upload is open");
    let r = cx.run(&[
        "--json",
        "--no-progress",
        "bundle",
        "run",
        s(&shard),
        "--to",
        &arch.uri("a/"),
    ]);
    assert_eq!(r.code, 0, "{r}");
    assert!(arch.uploads().is_empty(), "{:?}", arch.uploads());
    assert!(r.stdout.contains("cleaned up 1 unfinished upload"), "{r}");
}

// ---- p7: one set of checks ------------------------------------------------------------------------

/// The numeric options are refused in the same words by every job, with exit 2 and one line
/// (they were: each job's own rules and words), and a batch job refused by validation (a
/// missing destination bucket) is one line, exit 2, and never registered (it was: one error per
/// object, exit 1, and a job left in `batch list`).
#[test]
fn p7_checks_are_the_same_in_every_job() {
    let Some(cx) = Ctx::new() else { return };
    let a = cx.bucket("rl-chk");
    a.put("k", b"v");
    let dir = cx.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let m = cx.path("m.csv");
    std::fs::write(&m, format!("{},k\n", a.name)).unwrap();
    let shard = cx.path("shard-000001.csv");
    std::fs::write(&shard, "").unwrap();
    let uri = a.uri("p/");
    let tar = cx.path("x.tar");
    let commands: Vec<Vec<&str>> = vec![
        vec!["sync", s(&dir), &uri],
        vec!["bisync", "--poll", "0", s(&dir), &uri],
        vec!["batch", "run", "--manifest", s(&m), "--to", &uri],
        vec!["bundle", "run", s(&shard), "--to", &uri],
        vec!["archive", "export", s(&dir), "--out", s(&tar)],
        vec!["archive", "import", s(&tar), &uri],
    ];
    for cmd in &commands {
        let r = cx.run(&[&cmd[..], &["--concurrency", "0"]].concat());
        let line = r.assert_fatal();
        assert!(
            line.ends_with("--concurrency 0 is out of range: give 1 to 4096"),
            "{cmd:?}: {line}"
        );
    }
    for cmd in [&commands[3], &commands[4], &commands[5]] {
        let r = cx.run(&[&cmd[..], &["--max-memory", "1KiB"]].concat());
        let line = r.assert_fatal();
        assert!(line.contains("--max-memory 1KiB"), "{cmd:?}: {line}");
    }
    let r = cx.run(&[
        "batch",
        "run",
        "--manifest",
        s(&m),
        "--to",
        "s3://s3ferry-no-such-bucket-rl7/",
    ]);
    let line = r.assert_fatal();
    assert!(line.contains("s3ferry-no-such-bucket-rl7"), "{line}");
    let r = cx.run(&["--json", "batch", "list"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.trim().is_empty(), "no job was registered: {r}");
}

// ---- smaller findings -----------------------------------------------------------------------------

/// Boolean environment variables take the usual spellings (`S3FERRY_LOCK=1` was refused, the
/// error naming `--lock`).
#[test]
fn boolean_variables_take_the_usual_spellings() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("rl-bool");
    let dir = cx.path("local");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a"), "a").unwrap();
    for v in ["1", "yes", "on", "true"] {
        let r = cx.run_env(
            &["--json", "bisync", "--poll", "0", s(&dir), &b.uri("p")],
            &[("S3FERRY_LOCK", v)],
        );
        assert_eq!(r.code, 0, "S3FERRY_LOCK={v}: {r}");
        let lease: Value = serde_json::from_slice(&b.get("p/.s3ferry.lock")).unwrap();
        assert_eq!(lease["held"], false, "{lease}");
    }
    assert_eq!(b.get("p/a"), b"a");
}
