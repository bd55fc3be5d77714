//! End-to-end: `s3ferry pipe up|down|join` against the local S3 server. The tests drive the
//! binary's stdin themselves, so they control when a stream ends (no sleeps as
//! synchronisation: they poll the bucket for the state they wait for).

mod common;

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use s3ferry_store::checksum::crc64nvme;

const MIB: usize = 1024 * 1024;

/// A running `s3ferry` with piped stdio.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<std::process::ChildStdout>,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<String>>,
    started: Instant,
}

struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
    elapsed: Duration,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} after {:.1}s, {} bytes on stdout, stderr:\n{}",
            self.code,
            self.elapsed.as_secs_f64(),
            self.stdout.len(),
            self.stderr
        )
    }
}

fn spawn(cx: &Ctx, args: &[&str], env: &[(&str, &str)], collect_stdout: bool) -> Proc {
    let mut c: Command = cx.cmd();
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn s3ferry");
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let out = if collect_stdout {
        let mut so = stdout.take().expect("stdout");
        Some(std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = so.read_to_end(&mut v);
            v
        }))
    } else {
        None
    };
    let mut se = child.stderr.take().expect("stderr");
    let err = Some(std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    }));
    Proc {
        child,
        stdin,
        stdout,
        out,
        err,
        started: Instant::now(),
    }
}

impl Proc {
    /// Feed `data` to stdin from a thread (so a full pipe cannot deadlock the test).
    fn feed(&mut self, data: Vec<u8>) -> JoinHandle<()> {
        let mut w = self.stdin.take().expect("stdin");
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    }

    fn write(&mut self, data: &[u8]) {
        let w = self.stdin.as_mut().expect("stdin");
        w.write_all(data).expect("write to s3ferry's stdin");
        w.flush().expect("flush");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the exit (kill and fail after `timeout`).
    fn wait(mut self, timeout: Duration) -> Out {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("s3ferry did not finish within {timeout:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.started.elapsed();
        drop(self.stdout.take());
        Out {
            code: status.code().unwrap_or(-1),
            stdout: self
                .out
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
            stderr: self
                .err
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
            elapsed,
        }
    }
}

const T: Duration = Duration::from_secs(120);

/// `s3ferry pipe up ARGS... URI` with `data` on stdin.
fn up(cx: &Ctx, uri: &str, args: &[&str], env: &[(&str, &str)], data: &[u8]) -> Out {
    let mut all = vec!["pipe", "up"];
    all.extend_from_slice(args);
    all.push(uri);
    let mut p = spawn(cx, &all, env, true);
    let feeder = p.feed(data.to_vec());
    let o = p.wait(T);
    let _ = feeder.join();
    o
}

/// `s3ferry pipe down ARGS... URI`.
fn down(cx: &Ctx, uri: &str, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut all = vec!["pipe", "down"];
    all.extend_from_slice(args);
    all.push(uri);
    let mut p = spawn(cx, &all, env, true);
    p.close_stdin();
    p.wait(T)
}

#[track_caller]
fn ok(o: &Out) {
    assert_eq!(o.code, 0, "{o:?}");
}

#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    assert!(got == want, "{what}: bytes differ");
}

/// The manifest of the segmented upload at `key`, if it exists.
fn manifest(b: &Bucket, key: &str) -> Option<serde_json::Value> {
    let got = b.block_on(b.store.get_bytes(&format!("{key}/manifest.json")));
    got.ok()
        .map(|v| serde_json::from_slice(&v).expect("manifest is JSON"))
}

const P5: [&str; 2] = ["--part-size", "5MiB"];

/// 0 B, 1 B, exactly one part, one part + 1 and 100 MiB of random data through one object,
/// byte for byte; a stream of at most one part is a single PUT, more is a multipart upload with
/// a full-object CRC64NVME; nothing is left open.
#[test]
fn round_trips_default_mode() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-rt");
    for (i, len) in [0, 1, 5 * MIB, 5 * MIB + 1, 100 * MIB]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(len, 10 + i as u64);
        let key = format!("obj-{len}");
        let o = up(&cx, &b.uri(&key), &P5, &[], &data);
        ok(&o);
        assert!(o.stdout.is_empty(), "pipe up wrote to stdout");
        let meta = b.head(&key);
        assert_eq!(meta.size, len as u64);
        let etag = meta.etag.clone().unwrap_or_default();
        assert_eq!(
            etag.contains('-'),
            len > 5 * MIB,
            "{len} bytes: single PUT up to one part, multipart above (ETag {etag})"
        );
        if let Some(c) = meta.crc64nvme {
            assert_eq!(c, crc64nvme(&data), "{len} bytes: full-object CRC64NVME");
        }
        let o = down(&cx, &b.uri(&key), &P5, &[]);
        ok(&o);
        assert!(o.stderr.is_empty(), "{o:?}");
        same(&o.stdout, &data, &format!("{len} bytes"));
    }
    assert!(b.uploads().is_empty(), "{:?}", b.uploads());

    // Staged on disk, with content type and metadata; the staging directory is left empty.
    let data = random_bytes(23 * MIB + 7, 99);
    let stage = cx.path("stage");
    std::fs::create_dir_all(&stage).expect("stage dir");
    let o = up(
        &cx,
        &b.uri("staged"),
        &[
            "--part-size",
            "5MiB",
            "--part-concurrency",
            "3",
            "--staging-dir",
            s(&stage),
            "--content-type",
            "application/x-test",
            "--metadata",
            "origin=pipe",
        ],
        &[],
        &data,
    );
    ok(&o);
    let meta = b.head("staged");
    assert_eq!(meta.content_type.as_deref(), Some("application/x-test"));
    assert_eq!(
        meta.metadata
            .unwrap_or_default()
            .get("origin")
            .map(String::as_str),
        Some("pipe")
    );
    assert_eq!(std::fs::read_dir(&stage).expect("stage").count(), 0);
    same(&b.get("staged"), &data, "staged");
}

/// The same sizes as a segmented upload: read back without --follow (the manifest is
/// detected), and joined server-side into one object.
#[test]
fn round_trips_segmented_and_join() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-seg");
    for (i, len) in [0, 1, 5 * MIB, 5 * MIB + 1, 100 * MIB]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(len, 20 + i as u64);
        let key = format!("seg-{len}");
        let seg = if len > 50 * MIB { "10MiB" } else { "5MiB" };
        let o = up(
            &cx,
            &b.uri(&key),
            &[
                "--segmented",
                "--segment-size",
                seg,
                "--segment-interval",
                "0",
                "--part-size",
                "5MiB",
            ],
            &[],
            &data,
        );
        ok(&o);
        let m = manifest(&b, &key).expect("manifest");
        assert_eq!(m["complete"], true, "{m}");
        assert_eq!(m["total_size"], len as u64, "{m}");
        assert_eq!(
            m["crc64nvme"],
            format!("{:016x}", crc64nvme(&data)),
            "whole-stream CRC64NVME"
        );
        let seg_bytes = if len > 50 * MIB { 10 * MIB } else { 5 * MIB };
        let segs = m["segments"].as_array().expect("segments");
        assert_eq!(segs.len(), len.div_ceil(seg_bytes), "{m}");
        for (j, s) in segs.iter().enumerate() {
            let chunk = &data[j * seg_bytes..((j + 1) * seg_bytes).min(len)];
            assert_eq!(s["key"], format!("{j:012}"));
            assert_eq!(s["size"], chunk.len() as u64);
            assert_eq!(s["crc64nvme"], format!("{:016x}", crc64nvme(chunk)));
            same(&b.get(&format!("{key}/{j:012}")), chunk, "segment object");
        }
        let o = down(&cx, &b.uri(&key), &P5, &[]);
        ok(&o);
        same(&o.stdout, &data, &format!("segmented {len} bytes"));

        let joined = format!("joined-{len}");
        let o = up_join(&cx, &b.uri(&key), &b.uri(&joined));
        ok(&o);
        same(&b.get(&joined), &data, &format!("joined {len} bytes"));
    }
    assert!(b.uploads().is_empty(), "{:?}", b.uploads());

    // A second writer on the same URI fails loudly and changes nothing.
    let before = manifest(&b, "seg-1").expect("manifest");
    let o = up(&cx, &b.uri("seg-1"), &["--segmented"], &[], b"other");
    assert_eq!(o.code, 2, "{o:?}");
    let line = assert_one_error_line(&o.stderr);
    assert!(line.contains("already exists"), "{line}");
    assert_eq!(manifest(&b, "seg-1").expect("manifest"), before);
}

fn up_join(cx: &Ctx, src: &str, dst: &str) -> Out {
    let mut p = spawn(cx, &["pipe", "join", src, dst], &[], true);
    p.close_stdin();
    p.wait(T)
}

/// Two followers started while the writer is in the middle of the stream get all of it, and
/// end exactly when the writer does.
#[test]
fn followers_stream_a_segmented_upload_while_it_is_written() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-follow");
    let data = random_bytes(23 * MIB + 5, 31);
    let uri = b.uri("live");
    let mut w = spawn(
        &cx,
        &[
            "pipe",
            "up",
            "--segmented",
            "--segment-size",
            "5MiB",
            "--segment-interval",
            "0",
            "--part-size",
            "5MiB",
            &uri,
        ],
        &[],
        true,
    );
    w.write(&data[..12 * MIB]);
    wait_until("two segments in the manifest", || {
        manifest(&b, "live").is_some_and(|m| m["segments"].as_array().map_or(0, |s| s.len()) >= 2)
    });
    let follow = ["pipe", "down", "--follow", "--poll-interval", "50ms", &uri];
    let mut f1 = spawn(&cx, &follow, &[], true);
    let mut f2 = spawn(&cx, &follow, &[], true);
    f1.close_stdin();
    f2.close_stdin();
    assert_eq!(
        manifest(&b, "live").expect("manifest")["complete"],
        false,
        "the writer cannot have finished: it has not seen the end of its input"
    );
    w.write(&data[12 * MIB..]);
    w.close_stdin();
    let wo = w.wait(T);
    ok(&wo);
    for (i, f) in [f1, f2].into_iter().enumerate() {
        let o = f.wait(T);
        ok(&o);
        same(&o.stdout, &data, &format!("follower {i}"));
    }
    let m = manifest(&b, "live").expect("manifest");
    assert_eq!(m["complete"], true);
    assert_eq!(m["segments"].as_array().map(|s| s.len()), Some(5));
}

/// Resets, 503 bursts and truncated bodies on the way up and down still give exact results,
/// in both modes.
#[test]
fn faults_still_give_exact_results() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-faults");
    let data = random_bytes(27 * MIB + 3, 41);
    let up_faults = "create_multipart:503@1; upload_part:reset@2; upload_part:503@3x3; \
                     complete_multipart:500@1; put:503@1";
    let down_faults = "head:503@1; get:truncate=1000@2; get:reset=5000@3; get:503@4x2; \
                       get:truncate=77@7";
    let o = up(
        &cx,
        &b.uri("f"),
        &P5,
        &[("S3FERRY_FAULTS", up_faults)],
        &data,
    );
    ok(&o);
    same(&b.get("f"), &data, "upload with faults");
    let o = down(&cx, &b.uri("f"), &P5, &[("S3FERRY_FAULTS", down_faults)]);
    ok(&o);
    same(&o.stdout, &data, "download with faults");

    let seg = [
        "--segmented",
        "--segment-size",
        "5MiB",
        "--part-size",
        "5MiB",
    ];
    let o = up(
        &cx,
        &b.uri("s"),
        &seg,
        &[("S3FERRY_FAULTS", up_faults)],
        &data,
    );
    ok(&o);
    let o = down(
        &cx,
        &b.uri("s"),
        &["--follow", "--part-size", "5MiB"],
        &[("S3FERRY_FAULTS", down_faults)],
    );
    ok(&o);
    same(&o.stdout, &data, "segmented download with faults");
    assert!(b.uploads().is_empty(), "{:?}", b.uploads());
}

/// An upload hung in its parts (injected latency) until the upload is open on the server.
#[cfg(feature = "fault")]
fn hung_upload(cx: &Ctx, b: &Bucket, key: &str) -> Proc {
    let mut p = spawn(
        cx,
        &["pipe", "up", "--part-size", "5MiB", &b.uri(key)],
        &[("S3FERRY_FAULTS", "upload_part:latency=60s")],
        true,
    );
    p.write(&random_bytes(12 * MIB, 51));
    wait_until("an open multipart upload", || !b.uploads().is_empty());
    p
}

/// SIGKILL mid-stream: no object appears; the next `pipe up` into the bucket aborts the
/// journaled upload, and then no multipart upload is open and no run state is left.
#[cfg(feature = "fault")]
#[test]
fn killed_writer_leaves_no_object_and_the_next_run_cleans_up() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-kill");
    let mut p = hung_upload(&cx, &b, "k");
    p.child.kill().expect("SIGKILL");
    let o = p.wait(T);
    assert_eq!(o.code, -1, "killed by a signal");
    assert!(b.list("k").is_empty(), "no object may appear");
    assert_eq!(b.uploads().len(), 1);

    let o = up(&cx, &b.uri("other"), &[], &[], b"hello");
    ok(&o);
    assert!(o.stderr.contains("cleaned up 1 unfinished upload"), "{o:?}");
    assert!(b.uploads().is_empty(), "{:?}", b.uploads());
    assert!(b.list("k").is_empty());
    assert_eq!(b.get("other"), b"hello");
    let db = cx.state.join("state.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("state database");
    let open: i64 = conn
        .query_row("SELECT count(*) FROM uploads", [], |r| r.get(0))
        .expect("uploads table");
    assert_eq!(open, 0, "uploads still recorded as open in {db:?}");
}

/// A live writer's upload is not taken for an orphan by a second pipe into the same bucket;
/// SIGTERM aborts it at once (parts hang for 60 s): exit 130 as for every command, a line that
/// says so, nothing left.
#[cfg(feature = "fault")]
#[test]
fn sigterm_aborts_at_once_and_live_uploads_are_not_orphans() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-term");
    let p = hung_upload(&cx, &b, "k");
    let o = up(&cx, &b.uri("other"), &[], &[], b"x");
    ok(&o);
    assert!(!o.stderr.contains("cleaned up"), "{o:?}");
    assert_eq!(b.uploads().len(), 1, "the live writer's upload must stay");

    let t0 = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &p.pid().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(st.success());
    let o = p.wait(T);
    assert!(t0.elapsed() < Duration::from_secs(10), "{o:?}");
    assert_eq!(o.code, 130, "{o:?}");
    let line = o
        .stderr
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no stderr: {o:?}"));
    assert!(
        line.contains("SIGTERM") && line.contains("aborted"),
        "{line}"
    );
    assert!(!o.stderr.contains("panicked"), "{o:?}");
    assert!(b.uploads().is_empty(), "{:?}", b.uploads());
    assert!(b.list("k").is_empty());
}

/// A follower of a writer that died gives up after --writer-timeout with a clear message,
/// having written the segments that were finished.
#[test]
fn follower_of_a_dead_writer_gives_up_clearly() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-dead");
    let data = random_bytes(6 * MIB, 61);
    let uri = b.uri("d");
    let mut w = spawn(
        &cx,
        &[
            "pipe",
            "up",
            "--segmented",
            "--segment-size",
            "5MiB",
            "--segment-interval",
            "0",
            "--part-size",
            "5MiB",
            &uri,
        ],
        &[],
        true,
    );
    w.write(&data);
    wait_until("one segment in the manifest", || {
        manifest(&b, "d").is_some_and(|m| m["segments"].as_array().map_or(0, |s| s.len()) == 1)
    });
    w.child.kill().expect("SIGKILL");
    let _ = w.wait(T);

    let o = down(
        &cx,
        &uri,
        &[
            "--follow",
            "--poll-interval",
            "100ms",
            "--writer-timeout",
            "2s",
        ],
        &[],
    );
    assert_eq!(o.code, 2, "{o:?}");
    let line = assert_one_error_line(&o.stderr);
    assert!(
        line.contains("no progress from the writer") && line.contains("--writer-timeout"),
        "{line}"
    );
    same(&o.stdout, &data[..5 * MIB], "the finished segment");
    assert!(o.elapsed < Duration::from_secs(30), "{o:?}");

    // Without --follow an unfinished upload is refused at once, with a hint.
    let o = down(&cx, &uri, &[], &[]);
    assert_eq!(o.code, 2, "{o:?}");
    let line = assert_one_error_line(&o.stderr);
    assert!(line.contains("--follow"), "{line}");
    assert!(o.stdout.is_empty());
}

/// An object overwritten while `pipe down` reads it: exit 2, the message says it changed.
#[test]
fn object_overwritten_during_down_is_detected() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-changed");
    let data = random_bytes(40 * MIB, 71);
    b.put("o", &data);
    let mut p = spawn(
        &cx,
        &[
            "pipe",
            "down",
            "--part-size",
            "5MiB",
            "--part-concurrency",
            "2",
            &b.uri("o"),
        ],
        &[],
        false,
    );
    p.close_stdin();
    let mut so = p.stdout.take().expect("stdout");
    let mut first = vec![0u8; MIB];
    so.read_exact(&mut first).expect("first MiB");
    // The reader holds back: s3ferry has at most a few parts read ahead.
    b.put("o", &random_bytes(40 * MIB, 72));
    let mut rest = Vec::new();
    let _ = so.read_to_end(&mut rest);
    let o = p.wait(T);
    assert_eq!(o.code, 2, "{o:?}");
    let line = assert_one_error_line(&o.stderr);
    assert!(line.contains("changed"), "{line}");
    assert!(
        first.len() + rest.len() < data.len(),
        "the whole object was written although it changed"
    );
    assert!(
        first == data[..MIB],
        "the first bytes are the old version's"
    );
}

/// `pipe down | head -c 10`: exit 0, no message, at once (reads still pending are dropped,
/// not waited for: later GETs are held up for 20 s).
#[test]
fn down_into_head_ends_quietly() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-head");
    let data = random_bytes(30 * MIB, 81);
    b.put("o", &data);
    let mut p = spawn(
        &cx,
        &[
            "pipe",
            "down",
            "--part-size",
            "5MiB",
            // Two reads in flight: the first two GETs are parts 1 and 2, and the third (part
            // 3, held up) starts only once part 1 is consumed, whatever the scheduling.
            "--part-concurrency",
            "2",
            &b.uri("o"),
        ],
        &[("S3FERRY_FAULTS", "get:latency=20s@3+")],
        false,
    );
    p.close_stdin();
    let mut so = p.stdout.take().expect("stdout");
    let mut ten = [0u8; 10];
    so.read_exact(&mut ten).expect("10 bytes");
    drop(so);
    let o = p.wait(T);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stderr, "", "no message");
    assert!(o.elapsed < Duration::from_secs(15), "{o:?}");
    assert_eq!(&ten, &data[..10]);
}

/// Bad URIs, a missing bucket or object, no credentials: one line `s3ferry: error: ...`, exit 2.
#[test]
fn bad_input_is_one_line_and_exit_2() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-bad");
    let missing = format!("{}-missing", b.name);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["up".into(), "not-a-uri".into()], "s3://"),
        (vec!["down".into(), "s3://".into()], "s3://"),
        (vec!["down".into(), b.uri("")], "names no object"),
        (vec!["up".into(), format!("s3://{missing}/k")], &missing),
        (vec!["down".into(), format!("s3://{missing}/k")], &missing),
        (vec!["down".into(), b.uri("nope")], "no such object"),
        (
            vec![
                "up".into(),
                "--segmented".into(),
                "--segment-size".into(),
                "1KiB".into(),
                b.uri("x"),
            ],
            "--segment-size",
        ),
        (
            vec!["join".into(), b.uri("nope"), b.uri("dest")],
            "no segmented upload",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["pipe"];
        all.extend(args.iter().map(String::as_str));
        let mut p = spawn(&cx, &all, &[], true);
        let feeder = p.feed(b"data".to_vec());
        let o = p.wait(T);
        let _ = feeder.join();
        assert_eq!(o.code, 2, "{all:?}: {o:?}");
        let line = assert_one_error_line(&o.stderr);
        assert!(line.contains(want), "{all:?}: {line}");
        assert!(o.stdout.is_empty(), "{all:?}");
    }
    assert!(b.list("").is_empty(), "nothing was written");

    // No credentials anywhere.
    let home = cx.path("home");
    std::fs::create_dir_all(&home).expect("home");
    let (creds, conf) = (home.join("credentials"), home.join("config"));
    std::fs::write(&creds, "").expect("creds");
    std::fs::write(&conf, "").expect("config");
    for args in [
        vec!["pipe", "up", "s3://some-bucket/k"],
        vec!["pipe", "down", "s3://some-bucket/k"],
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
            .stdin(Stdio::null())
            .args(&args);
        let r = run_cmd(c, Duration::from_secs(60));
        let line = r.assert_fatal();
        assert!(line.to_lowercase().contains("credentials"), "{line}");
    }
}

/// SSE-C through a pipe: `pipe up --sse-c-key` writes the parts encrypted with the customer's
/// key (unreadable without it), `pipe down` with the key (here from S3FERRY_SSE_C_KEY) gives the
/// bytes back, without it it fails with one line; `--sse` with a key is refused.
#[test]
fn sse_c_objects_go_up_and_down_a_pipe() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-ssec");
    const KEY: &str = "0123456789abcdef0123456789abcdef";
    let data = random_bytes(11 * MIB + 5, 71);
    let o = up(
        &cx,
        &b.uri("enc"),
        &["--part-size", "5MiB", "--sse-c-key", KEY],
        &[],
        &data,
    );
    ok(&o);
    let err = b
        .block_on(b.store.head("enc"))
        .expect_err("HEAD without the key is refused");
    assert_eq!(err.http.as_ref().and_then(|h| h.status), Some(400), "{err}");
    let o = down(&cx, &b.uri("enc"), &[], &[("S3FERRY_SSE_C_KEY", KEY)]);
    ok(&o);
    same(&o.stdout, &data, "pipe down with the key");
    let o = down(&cx, &b.uri("enc"), &[], &[]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stdout.is_empty());
    let o = up(
        &cx,
        &b.uri("x"),
        &["--sse", "AES256", "--sse-c-key", KEY],
        &[],
        b"x",
    );
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("--sse"), "{o:?}");
    assert!(b.keys("x").is_empty());
    assert!(b.uploads().is_empty());
}

// ---- live streams: time cuts, followers from the end, writers that restart ----------------

/// A process whose stdout is collected as it comes, so a test can wait for bytes to arrive
/// while it runs.
struct Live {
    p: Proc,
    got: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: JoinHandle<()>,
}

fn live(cx: &Ctx, args: &[&str]) -> Live {
    let mut p = spawn(cx, args, &[], false);
    p.close_stdin();
    let mut so = p.stdout.take().expect("stdout");
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = so.read(&mut buf) {
            if n == 0 {
                break;
            }
            g.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    Live { p, got, reader }
}

impl Live {
    fn got(&self) -> Vec<u8> {
        self.got.lock().expect("lock").clone()
    }

    #[track_caller]
    fn wait_for(&self, want: &[u8], what: &str) {
        wait_until(what, || self.got.lock().expect("lock").len() >= want.len());
        same(&self.got(), want, what);
    }

    fn finish(self) -> Out {
        let mut o = self.p.wait(T);
        let _ = self.reader.join();
        o.stdout = self.got.lock().expect("lock").clone();
        o
    }
}

/// An appender's refusal: its one error line (after, at most, the notice that it waits to see
/// whether the writer is alive).
#[track_caller]
fn refusal(o: &Out) -> String {
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("s3ferry: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{o:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("s3ferry: error:") || l.contains("waiting up to")),
        "{o:?}"
    );
    assert!(!errors[0].contains("aborted"), "nothing was started: {o:?}");
    errors[0].to_string()
}

fn segments_of(b: &Bucket, key: &str) -> usize {
    manifest(b, key).map_or(0, |m| m["segments"].as_array().map_or(0, |s| s.len()))
}

fn writer(cx: &Ctx, uri: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["pipe", "up", "--segmented", "--part-size", "5MiB"];
    args.extend_from_slice(extra);
    args.push(uri);
    spawn(cx, &args, &[], true)
}

/// A slow writer's bytes reach a follower while the writer's input is still open (a segment
/// is published when its interval has passed, far from full), segments cut by time and by
/// size mix in one stream, and `pipe join` makes one object of small and large segments alike.
#[test]
fn time_cuts_reach_followers_while_the_writer_runs_and_join_reassembles_them() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-cuts");
    let uri = b.uri("log");
    let mut w = writer(
        &cx,
        &uri,
        &["--segment-size", "6MiB", "--segment-interval", "300ms"],
    );
    let f = live(
        &cx,
        &["pipe", "down", "--follow", "--poll-interval", "50ms", &uri],
    );
    let mut sent = Vec::new();
    for (i, n) in [1000usize, 20_000, 2 * MIB].into_iter().enumerate() {
        let chunk = random_bytes(n, 70 + i as u64);
        w.write(&chunk);
        sent.extend_from_slice(&chunk);
        f.wait_for(
            &sent,
            &format!("the follower has the first {} bytes", sent.len()),
        );
        let m = manifest(&b, "log").expect("manifest");
        assert_eq!(
            m["complete"], false,
            "the writer's input is still open: {m}"
        );
        assert!(segments_of(&b, "log") > i, "{m}");
    }
    let big = random_bytes(13 * MIB + 7, 79);
    w.write(&big);
    sent.extend_from_slice(&big);
    w.close_stdin();
    ok(&w.wait(T));
    let o = f.finish();
    ok(&o);
    same(&o.stdout, &sent, "the follower's stream");

    let m = manifest(&b, "log").expect("manifest");
    assert_eq!(m["version"], 2, "{m}");
    assert_eq!(m["segment_interval_ms"], 300, "{m}");
    assert_eq!(m["complete"], true);
    assert_eq!(m["total_size"], sent.len() as u64);
    assert_eq!(m["crc64nvme"], format!("{:016x}", crc64nvme(&sent)));
    let sizes: Vec<u64> = m["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s["size"].as_u64().expect("size"))
        .collect();
    assert_eq!(sizes[..2], [1000, 20_000], "cut by time: {sizes:?}");
    assert!(sizes.iter().all(|&s| s <= 6 * MIB as u64), "{sizes:?}");
    let o = down(&cx, &uri, &[], &[]);
    ok(&o);
    same(&o.stdout, &sent, "the finished stream");

    let o = up_join(&cx, &uri, &b.uri("joined.log"));
    ok(&o);
    same(&b.get("joined.log"), &sent, "the joined object");
    assert!(b.uploads().is_empty(), "{:?}", b.uploads());
}

/// `--from-end` starts at the newest segment listed (like `tail -f`) and follows from there.
#[test]
fn a_follower_from_the_end_starts_at_the_newest_segment() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-tail");
    let uri = b.uri("log");
    let mut w = writer(&cx, &uri, &["--segment-interval", "200ms"]);
    let (a, bb, c) = (
        random_bytes(1000, 81),
        random_bytes(3000, 82),
        random_bytes(500, 83),
    );
    w.write(&a);
    wait_until("segment 0", || segments_of(&b, "log") == 1);
    w.write(&bb);
    wait_until("segment 1", || segments_of(&b, "log") == 2);
    let f = live(
        &cx,
        &[
            "pipe",
            "down",
            "--follow",
            "--from-end",
            "--poll-interval",
            "50ms",
            &uri,
        ],
    );
    f.wait_for(&bb, "the newest segment first");
    w.write(&c);
    let want = [bb.clone(), c.clone()].concat();
    f.wait_for(&want, "then what is written after it");
    w.close_stdin();
    ok(&w.wait(T));
    let o = f.finish();
    ok(&o);
    same(&o.stdout, &want, "from the end");
}

/// A writer killed with -9 is continued with `--append`: of two appenders racing, exactly one
/// takes the stream over (the other is refused), a segment the dead writer wrote but never
/// listed is replaced, and a follower reads across the change of writer to the end.
#[test]
fn append_continues_a_killed_writer_and_only_one_of_two_appenders_wins() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-append");
    let uri = b.uri("log");
    let mut w1 = writer(
        &cx,
        &uri,
        &["--segment-interval", "200ms", "--heartbeat", "1s"],
    );
    let a = random_bytes(5000, 91);
    w1.write(&a);
    wait_until("segment 0", || segments_of(&b, "log") == 1);
    let stream = manifest(&b, "log").expect("manifest")["stream"].clone();
    let f = live(
        &cx,
        &["pipe", "down", "--follow", "--poll-interval", "50ms", &uri],
    );
    f.wait_for(&a, "the first writer's bytes");
    kill9(&mut w1.child);
    // Killed between a segment's write and the manifest's: a segment nobody listed.
    b.put("log/000000000001", b"never published");

    // Refused outright without --append, with the hint.
    let o = up(&cx, &uri, &["--segmented"], &[], b"x");
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        assert_one_error_line(&o.stderr).contains("--append"),
        "{o:?}"
    );

    let args = [
        "--append",
        "--writer-timeout",
        "2s",
        "--segment-interval",
        "200ms",
    ];
    let mut w2 = writer(&cx, &uri, &args);
    let mut w3 = writer(&cx, &uri, &args);
    let (d2, d3) = (random_bytes(7000, 92), random_bytes(9000, 93));
    w2.write(&d2);
    w3.write(&d3);
    let mut loser = None;
    wait_until("one appender to be refused", || {
        if let Ok(Some(_)) = w2.child.try_wait() {
            loser = Some(2);
        } else if let Ok(Some(_)) = w3.child.try_wait() {
            loser = Some(3);
        }
        loser.is_some()
    });
    let (lost, mut won, data) = match loser {
        Some(2) => (w2, w3, d3),
        _ => (w3, w2, d2),
    };
    let o = lost.wait(T);
    assert_eq!(o.code, 2, "{o:?}");
    let line = refusal(&o);
    assert!(
        line.contains("took the stream over first") || line.contains("still being written"),
        "{line}"
    );
    won.close_stdin();
    let o = won.wait(T);
    ok(&o);
    let want = [a.clone(), data.clone()].concat();
    let o = f.finish();
    ok(&o);
    same(&o.stdout, &want, "the follower across the append");

    let m = manifest(&b, "log").expect("manifest");
    assert_eq!(m["stream"], stream, "the same stream: {m}");
    assert_eq!(m["complete"], true, "{m}");
    assert_eq!(m["appends"].as_array().map(|v| v.len()), Some(1), "{m}");
    assert_eq!(m["appends"][0]["first_segment"], 1, "{m}");
    assert_eq!(m["crc64nvme"], format!("{:016x}", crc64nvme(&want)));
    same(
        &b.get("log/000000000001"),
        &data,
        "segment 1 is the appender's",
    );
    let o = down(&cx, &uri, &[], &[]);
    ok(&o);
    same(&o.stdout, &want, "the whole stream");
}

/// `--append` refuses while the writer is alive (its heartbeat changes the manifest while the
/// appender watches), and continues a finished stream at once.
#[test]
fn append_refuses_a_live_writer_and_extends_a_finished_stream() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-alive");
    let uri = b.uri("log");
    let mut w1 = writer(
        &cx,
        &uri,
        &["--segment-interval", "200ms", "--heartbeat", "1s"],
    );
    let a = random_bytes(3000, 95);
    w1.write(&a);
    wait_until("segment 0", || segments_of(&b, "log") == 1);
    let o = up(
        &cx,
        &uri,
        &["--segmented", "--append", "--writer-timeout", "20s"],
        &[],
        b"intruder",
    );
    assert_eq!(o.code, 2, "{o:?}");
    let line = refusal(&o);
    assert!(line.contains("still being written"), "{line}");
    assert!(
        o.elapsed < Duration::from_secs(15),
        "refused when the heartbeat came: {o:?}"
    );
    w1.close_stdin();
    ok(&w1.wait(T));
    let m = manifest(&b, "log").expect("manifest");
    assert_eq!(
        m["total_size"],
        a.len() as u64,
        "the intruder wrote nothing: {m}"
    );

    let c = random_bytes(4000, 96);
    let o = up(&cx, &uri, &["--segmented", "--append", "--json"], &[], &c);
    ok(&o);
    assert!(
        o.elapsed < Duration::from_secs(15),
        "a finished stream is not waited for"
    );
    let sum: serde_json::Value = serde_json::from_str(
        o.stderr
            .lines()
            .find(|l| l.contains("\"summary\""))
            .unwrap_or_else(|| panic!("no summary: {o:?}")),
    )
    .expect("JSON");
    assert_eq!(sum["bytes"], c.len() as u64, "{sum}");
    assert_eq!(sum["appended_to"], a.len() as u64, "{sum}");
    let want = [a, c].concat();
    assert_eq!(
        sum["crc64nvme"],
        format!("{:016x}", crc64nvme(&want)),
        "{sum}"
    );
    let o = down(&cx, &uri, &[], &[]);
    ok(&o);
    same(&o.stdout, &want, "the finished stream, extended");
}

/// A staging folder left by a run killed with -9 is removed by the next run with the same
/// --staging-dir.
#[test]
fn a_killed_runs_staging_folder_goes_with_the_next_run() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-staging");
    let dir = cx.path("staging");
    std::fs::create_dir_all(&dir).expect("staging dir");
    let staged = |d: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(d)
            .expect("read staging dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("s3ferry-pipe-"))
            .collect()
    };
    let dir_s = dir.to_str().expect("UTF-8").to_string();
    let mut w = spawn(
        &cx,
        &[
            "pipe",
            "up",
            "--staging-dir",
            &dir_s,
            "--part-size",
            "5MiB",
            &b.uri("k"),
        ],
        &[],
        true,
    );
    w.write(&random_bytes(6 * MIB, 97));
    wait_until("a staged part", || {
        staged(&dir)
            .iter()
            .any(|d| std::fs::read_dir(dir.join(d)).is_ok_and(|mut e| e.next().is_some()))
    });
    kill9(&mut w.child);
    assert_eq!(
        staged(&dir).len(),
        1,
        "the killed run's folder is left behind"
    );

    let o = up(&cx, &b.uri("k2"), &["--staging-dir", &dir_s], &[], b"hello");
    ok(&o);
    assert_eq!(staged(&dir), Vec::<String>::new(), "{o:?}");
    assert_eq!(b.get("k2"), b"hello");
}

/// SIGTERM leaves a segmented stream open (exit 130, the message names --append); its
/// follower waits instead of failing, and carries on when `--append` continues the stream at
/// once (a stopped writer is known to be gone: no waiting for a timeout).
#[test]
fn a_writer_stopped_by_sigterm_is_continued_and_its_follower_carries_on() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-restart");
    let uri = b.uri("log");
    let mut w1 = writer(&cx, &uri, &["--segment-interval", "200ms"]);
    let a = random_bytes(2000, 98);
    w1.write(&a);
    wait_until("segment 0", || segments_of(&b, "log") == 1);
    let f = live(
        &cx,
        &["pipe", "down", "--follow", "--poll-interval", "50ms", &uri],
    );
    f.wait_for(&a, "the first writer's bytes");
    // Its input stays open until it has exited: an end of input racing the signal would end
    // the stream normally instead.
    let input = w1.stdin.take();
    let st = Command::new("kill")
        .args(["-TERM", &w1.pid().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(st.success());
    let o = w1.wait(T);
    drop(input);
    assert_eq!(o.code, 130, "{o:?}");
    assert!(o.stderr.contains("--append"), "{o:?}");
    let m = manifest(&b, "log").expect("manifest");
    assert!(
        m["stopped"].as_str().is_some_and(|s| s.contains("SIGTERM")),
        "{m}"
    );

    let c = random_bytes(3000, 99);
    let o = up(&cx, &uri, &["--segmented", "--append"], &[], &c);
    ok(&o);
    assert!(
        o.elapsed < Duration::from_secs(20),
        "no wait for a stopped writer: {o:?}"
    );
    let o = f.finish();
    ok(&o);
    same(
        &o.stdout,
        &[a, c].concat(),
        "the follower across the restart",
    );
}

/// Many small segments: the manifest moves the oldest into a sealed index as the stream grows
/// (it stays short), a follower reads through the change, `pipe down` and `pipe join` read the
/// sealed segments back from the index.
#[test]
fn a_long_stream_seals_its_oldest_segments_into_an_index() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("pipe-sealed");
    let uri = b.uri("long");
    let data = random_bytes(600 * 4096 + 100, 101);
    let f = live(
        &cx,
        &["pipe", "down", "--follow", "--poll-interval", "50ms", &uri],
    );
    let o = up(
        &cx,
        &uri,
        &[
            "--segmented",
            "--segment-size",
            "4KiB",
            "--segment-interval",
            "0",
        ],
        &[],
        &data,
    );
    ok(&o);
    let m = manifest(&b, "long").expect("manifest");
    assert_eq!(m["first_segment"], 256, "{}", m["sealed"]);
    assert_eq!(m["sealed"][0]["key"], "index-000000000000.json");
    assert_eq!(m["segments"].as_array().map(|s| s.len()), Some(601 - 256));
    let o = f.finish();
    ok(&o);
    same(&o.stdout, &data, "the follower");
    let o = down(&cx, &uri, &[], &[]);
    ok(&o);
    same(&o.stdout, &data, "the stream read back");
    let o = up_join(&cx, &uri, &b.uri("joined"));
    ok(&o);
    same(&b.get("joined"), &data, "joined");
}
