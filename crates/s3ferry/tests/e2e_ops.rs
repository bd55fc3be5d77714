//! Running s3ferry in production (issue 22), end to end against the local S3 server (and moto
//! for SQS): `/metrics` scraped while sync, bisync and a bundle worker run and checked with
//! `promtool check metrics`; `/healthz` and `/readyz`; CloudWatch EMF lines checked against the
//! format's rules and summed to the run's summary; `--log-format json`; progress lines without a
//! terminal; and the files in `deploy/` through their linters.

#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `promtool`, installed by scripts/ops-tools (scripts/test exports its path), or `None` after a
/// loud skip line.
fn promtool() -> Option<String> {
    match std::env::var("S3FERRY_TEST_PROMTOOL") {
        Ok(p) if !p.trim().is_empty() => Some(p),
        _ => {
            eprintln!("\n*** SKIPPED: needs S3FERRY_TEST_PROMTOOL; run scripts/test (it installs promtool) ***\n");
            None
        }
    }
}

/// `promtool check metrics` on a scrape: it must find nothing to say.
fn promtool_check(promtool: &str, scrape: &str) {
    let mut c = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    c.stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}\n--- scrape ---\n{scrape}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A spawned `s3ferry` whose stderr lines are collected as they come.
struct Running {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    fn spawn(mut c: Command) -> Running {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn s3ferry");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line);
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Running {
            child,
            stderr: lines,
            stdout: Some(stdout),
        }
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The address the metrics listener reports on stderr.
    fn metrics_addr(&self) -> String {
        let mut addr = String::new();
        wait_until("the metrics address on stderr", || {
            let found = self
                .stderr()
                .iter()
                .find_map(|l| l.split("metrics on http://").nth(1).map(str::to_string));
            if let Some(a) = found {
                addr = a.trim_end_matches("/metrics").to_string();
            }
            !addr.is_empty()
        });
        addr
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Wait for the exit (at most 60 s): (status code, stdout).
    fn wait(mut self) -> (Option<i32>, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("no exit within 60 s; stderr:\n{}", self.stderr().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.stdout.take().unwrap().join().unwrap();
        (status.code(), out)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET http://addr/path: (status code, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// The value of the sample `name{labels...}` (labels given must match; others are ignored).
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|l| {
        if l.starts_with('#') {
            return None;
        }
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let ok = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        ok.then(|| value.parse().ok()).flatten()
    })
}

/// Units CloudWatch accepts in an EMF metric definition.
const EMF_UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// One EMF line, held to the Embedded Metric Format specification: a root object with `_aws`
/// (`Timestamp` in ms, `CloudWatchMetrics` directives: `Namespace`, `Dimensions` as sets of at
/// most 30 keys that name string members, `Metrics` of at most 100 definitions with a `Name`
/// naming a numeric member and a valid `Unit`).
fn check_emf(line: &str, namespace: &str) -> Value {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let root = v.as_object().expect("a JSON object");
    let aws = root["_aws"].as_object().expect("_aws");
    let ts = aws["Timestamp"].as_u64().expect("Timestamp in ms");
    assert!(ts > 1_600_000_000_000, "Timestamp is in milliseconds: {ts}");
    let dirs = aws["CloudWatchMetrics"].as_array().expect("directives");
    assert!(!dirs.is_empty());
    for d in dirs {
        let ns = d["Namespace"].as_str().expect("Namespace");
        assert_eq!(ns, namespace);
        assert!(!ns.is_empty() && ns.len() <= 255);
        for set in d["Dimensions"].as_array().expect("Dimensions") {
            let set = set.as_array().expect("a dimension set");
            assert!(set.len() <= 30);
            for k in set {
                let k = k.as_str().expect("a dimension key");
                assert!(
                    root[k].is_string(),
                    "dimension {k} is a string member: {line}"
                );
            }
        }
        let metrics = d["Metrics"].as_array().expect("Metrics");
        assert!(!metrics.is_empty() && metrics.len() <= 100);
        for m in metrics {
            let name = m["Name"].as_str().expect("Name");
            assert!(!name.is_empty() && name.len() <= 255);
            assert!(root[name].is_number(), "metric {name} is a number: {line}");
            let unit = m["Unit"].as_str().unwrap_or("None");
            assert!(EMF_UNITS.contains(&unit), "unit {unit}");
        }
    }
    v
}

/// The sum of metric `name` over the EMF lines whose dimensions include `dims`.
fn emf_sum(lines: &[Value], name: &str, dims: &[(&str, &str)]) -> f64 {
    lines
        .iter()
        .filter(|l| dims.iter().all(|(k, v)| l[*k] == *v))
        .filter_map(|l| l[name].as_f64())
        .sum()
}

#[test]
fn a_sync_is_scraped_mid_job_and_its_emf_totals_equal_its_summary() {
    let Some(cx) = Ctx::new() else { return };
    let Some(promtool) = promtool() else { return };
    let b = cx.bucket("ops-sync");
    let src = cx.path("src");
    let files: BTreeMap<String, Vec<u8>> = (0..150)
        .map(|i| {
            (
                format!("d{}/f{i:03}", i % 3),
                random_bytes(1000 + i, i as u64),
            )
        })
        .collect();
    write_tree(&src, &files);
    // 15 of them are there already: unchanged skips.
    let some: BTreeMap<String, Vec<u8>> = files.clone().into_iter().take(15).collect();
    b.put_all("p/", &some);
    let emf = cx.path("emf.log");
    let mut c = cx.cmd();
    c.args([
        "--json",
        "sync",
        "--size-only",
        "--concurrency",
        "4",
        "--metrics-addr",
        "127.0.0.1:0",
        "--metrics-emf",
        s(&emf),
        "--metrics-interval",
        "1s",
        "--metrics-namespace",
        "ferry/test",
        s(&src),
        &b.uri("p"),
    ])
    // Slow puts keep the job running while it is scraped; two throttles give retries.
    .env("S3FERRY_FAULTS_DEST", "put:latency=60ms;put:throttle@3x2");
    let run = Running::spawn(c);
    let addr = run.metrics_addr();
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let (ready, why) = http_get(&addr, "/readyz");
    assert_eq!(
        ready, 200,
        "a one-shot command is ready while it runs: {why}"
    );
    assert_eq!(http_get(&addr, "/nope").0, 404);
    let mut scrape = String::new();
    wait_until("a copy counted", || {
        scrape = http_get(&addr, "/metrics").1;
        sample(&scrape, "s3ferry_objects_total", &[("outcome", "copy")]).unwrap_or(0.0) >= 1.0
    });
    let copied_then = sample(&scrape, "s3ferry_objects_total", &[("outcome", "copy")]).unwrap();
    assert!(copied_then < 135.0, "scraped mid-job: {copied_then}");
    assert!(
        sample(
            &scrape,
            "s3ferry_requests_total",
            &[
                ("command", "sync"),
                ("side", "destination"),
                ("backend", "s3"),
                ("operation", "put"),
                ("result", "ok")
            ]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{scrape}"
    );
    assert!(sample(
        &scrape,
        "s3ferry_concurrency_limit",
        &[("side", "destination")]
    )
    .is_some());
    assert!(scrape.contains("# TYPE s3ferry_objects_in_flight gauge"));
    promtool_check(&promtool, &scrape);

    let (code, stdout) = run.wait();
    assert_eq!(code, Some(0), "{stdout}");
    let summary = parse_lines(&stdout)
        .into_iter()
        .find(|v| v["type"] == "summary")
        .expect("a summary");
    let text = std::fs::read_to_string(&emf).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| check_emf(l, "ferry/test")).collect();
    let stamps: std::collections::BTreeSet<u64> = lines
        .iter()
        .map(|l| l["_aws"]["Timestamp"].as_u64().unwrap())
        .collect();
    assert!(
        stamps.len() >= 2,
        "written every interval and at the end: {text}"
    );
    let n = |f: &str| summary[f].as_f64().unwrap();
    let per = |o: &str, m: &str| emf_sum(&lines, m, &[("Command", "sync"), ("Outcome", o)]);
    assert_eq!(n("copied"), 135.0);
    assert_eq!(per("copy", "Objects"), n("copied"), "{text}");
    assert_eq!(per("copy", "ObjectBytes"), n("copied_bytes"));
    assert_eq!(per("skip", "Objects"), n("skipped"));
    assert_eq!(per("fail", "Objects"), n("failed"));
    assert_eq!(per("delete", "Objects"), n("deleted"));
    assert!(n("throttled") >= 2.0 && n("retries") >= 2.0, "{summary}");
    assert_eq!(
        emf_sum(&lines, "Throttles", &[("Command", "sync")]),
        n("throttled")
    );
    let retries = emf_sum(&lines, "RequestRetries", &[("Command", "sync")])
        + emf_sum(&lines, "ItemRetries", &[("Command", "sync")]);
    assert_eq!(retries, n("retries"), "{text}");
}

#[test]
fn a_polling_bisync_is_ready_after_a_round_and_counts_its_rounds() {
    let Some(cx) = Ctx::new() else { return };
    let Some(promtool) = promtool() else { return };
    let b = cx.bucket("ops-bisync");
    let dir = cx.path("local");
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = cx.cmd();
    c.args([
        "bisync",
        "--poll",
        "1",
        "--lock",
        "--metrics-addr",
        "127.0.0.1:0",
        s(&dir),
        &b.uri("w"),
    ])
    .env("S3FERRY_STATE_DIR", cx.path("st"));
    let run = Running::spawn(c);
    let addr = run.metrics_addr();
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let (code, why) = http_get(&addr, "/readyz");
    assert!(
        code == 503 || why.contains("a round succeeded"),
        "{code} {why}"
    );
    let mut why = String::new();
    wait_until("/readyz to answer 200 after a round", || {
        let (code, w) = http_get(&addr, "/readyz");
        why = w;
        code == 200
    });
    assert!(why.starts_with("ready: a round succeeded"), "{why}");
    std::fs::write(dir.join("one.txt"), "1").unwrap();
    let mut scrape = String::new();
    wait_until("an upload counted as a round's change", || {
        scrape = http_get(&addr, "/metrics").1;
        sample(&scrape, "s3ferry_round_changes_total", &[("change", "up")]).unwrap_or(0.0) >= 1.0
    });
    assert!(!b.keys("w/one.txt").is_empty());
    assert!(
        sample(
            &scrape,
            "s3ferry_rounds_total",
            &[("command", "bisync"), ("result", "ok")]
        )
        .unwrap()
            >= 2.0,
        "{scrape}"
    );
    assert!(sample(&scrape, "s3ferry_round_duration_seconds_count", &[]).unwrap() >= 2.0);
    assert!(
        sample(&scrape, "s3ferry_lease_held", &[]).is_some(),
        "{scrape}"
    );
    assert!(sample(&scrape, "s3ferry_state_db_bytes", &[]).unwrap() > 0.0);
    promtool_check(&promtool, &scrape);
    run.signal("-TERM");
    let (code, _) = run.wait();
    assert_eq!(code, Some(0), "a service stopped by a signal exits 0");

    // A loop whose rounds fail is not ready, and says why.
    let mut c = cx.cmd();
    c.args([
        "bisync",
        "--poll",
        "1",
        "--max-failures",
        "0",
        "--metrics-addr",
        "127.0.0.1:0",
        s(&dir),
        &b.uri("w"),
    ])
    .env("S3FERRY_STATE_DIR", cx.path("st2"))
    .env("S3FERRY_FAULTS_DEST", "list:denied");
    let run = Running::spawn(c);
    let addr = run.metrics_addr();
    let mut scrape = String::new();
    wait_until("a failed round", || {
        scrape = http_get(&addr, "/metrics").1;
        sample(&scrape, "s3ferry_rounds_total", &[("result", "failed")]).unwrap_or(0.0) >= 1.0
    });
    assert_eq!(
        sample(&scrape, "s3ferry_rounds_total", &[("result", "ok")]),
        Some(0.0)
    );
    let (code, why) = http_get(&addr, "/readyz");
    assert_eq!(
        (code, why.as_str()),
        (503, "not ready: no round has succeeded yet\n")
    );
    promtool_check(&promtool, &scrape);
}

#[test]
fn a_bundle_worker_reports_shards_and_readiness_while_it_runs() {
    let Some(cx) = Ctx::new() else { return };
    let Some(promtool) = promtool() else { return };
    let (src, work, arch) = (
        cx.bucket("ops-w-src"),
        cx.bucket("ops-w-work"),
        cx.bucket("ops-w-arch"),
    );
    let Some((qurl, aws)) = sqs_queue(&work, "ops", Duration::from_secs(30)) else {
        return;
    };
    let files: BTreeMap<String, Vec<u8>> = (0..60)
        .map(|i| (format!("f{i:03}"), random_bytes(3000, i)))
        .collect();
    src.put_all("", &files);
    let r = cx.run_env(
        &[
            "--json",
            "bundle",
            "group",
            "--source",
            &src.uri(""),
            "--out",
            &work.uri("s/"),
            "--queue",
            &qurl,
        ],
        &[("AWS_ENDPOINT_URL_SQS", aws.as_str())],
    );
    assert_eq!(r.code, 0, "{r}");
    let mut c = cx.cmd();
    c.args([
        "--json",
        "bundle",
        "worker",
        "--queue",
        &qurl,
        "--to",
        &arch.uri("a/"),
        "--concurrency",
        "2",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .env("AWS_ENDPOINT_URL_SQS", &aws)
    .env("S3FERRY_FAULTS_SOURCE", "get:latency=30ms");
    let run = Running::spawn(c);
    let addr = run.metrics_addr();
    let mut why = String::new();
    wait_until("/readyz to answer 200 once the queue answers", || {
        let (code, w) = http_get(&addr, "/readyz");
        why = w;
        code == 200
    });
    assert!(
        why == "ready: receiving\n" || why.starts_with("ready: a shard in hand"),
        "{why}"
    );
    let mut scrape = String::new();
    wait_until("a shard in hand", || {
        scrape = http_get(&addr, "/metrics").1;
        sample(&scrape, "s3ferry_objects_total", &[("outcome", "copy")]).unwrap_or(0.0) >= 1.0
    });
    assert!(
        sample(
            &scrape,
            "s3ferry_worker_heartbeat_age_seconds",
            &[("command", "bundle")]
        )
        .is_some(),
        "{scrape}"
    );
    promtool_check(&promtool, &scrape);
    wait_until("the shard done", || {
        scrape = http_get(&addr, "/metrics").1;
        sample(
            &scrape,
            "s3ferry_worker_shards_total",
            &[("result", "done")],
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    assert_eq!(
        sample(
            &scrape,
            "s3ferry_worker_shards_total",
            &[("result", "failed")]
        ),
        Some(0.0)
    );
    promtool_check(&promtool, &scrape);
    run.signal("-TERM");
    let (code, _) = run.wait();
    assert_eq!(code, Some(0), "a worker stopped by a signal exits 0");
}

#[test]
fn json_logs_carry_job_run_id_and_key_and_progress_lines_come_without_a_terminal() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("ops-logs");
    let src = cx.path("src");
    let files: BTreeMap<String, Vec<u8>> = (0..60)
        .map(|i| (format!("f{i:02}"), random_bytes(2000, i)))
        .collect();
    write_tree(&src, &files);
    // Slow enough for several progress lines; the last puts fail (on the retry pass too).
    let env = [
        ("S3FERRY_FAULTS_DEST", "put:latency=40ms;put:notfound@56+"),
        ("S3FERRY_PROGRESS_INTERVAL", "200ms"),
    ];
    let r = cx.run_env(
        &[
            "--log-format",
            "json",
            "sync",
            "--no-state",
            "--concurrency",
            "2",
            s(&src),
            &b.uri("p"),
        ],
        &env,
    );
    assert_eq!(r.code, 1, "{r}");
    let lines: Vec<Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let run_id = lines[0]["run_id"].as_str().expect("run_id").to_string();
    assert!(!run_id.is_empty());
    for l in &lines {
        assert_eq!(l["job"], "sync", "{l}");
        assert_eq!(l["run_id"], run_id.as_str(), "{l}");
        assert!(l["level"].is_string() && l["message"].is_string() && l["timestamp"].is_string());
    }
    let errors: Vec<&Value> = lines.iter().filter(|l| l["level"] == "error").collect();
    assert!(!errors.is_empty(), "{r}");
    for e in &errors {
        assert!(e["key"].as_str().is_some_and(|k| k.starts_with('f')), "{e}");
    }
    let progress: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("objects_done").is_some())
        .collect();
    assert!(!progress.is_empty(), "progress lines: {r}");
    let m = progress[0]["message"].as_str().unwrap();
    assert!(
        m.contains(" objects, ") && (m.ends_with("/s") || m.contains(", ETA ")),
        "{m}"
    );

    // As text: "N of [at least] M objects, X of Y, R/s[, ETA T]".
    let b2 = cx.bucket("ops-logs2");
    let r = cx.run_env(
        &[
            "sync",
            "--no-state",
            "--concurrency",
            "2",
            s(&src),
            &b2.uri("p"),
        ],
        &[
            ("S3FERRY_FAULTS_DEST", "put:latency=40ms"),
            ("S3FERRY_PROGRESS_INTERVAL", "200ms"),
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(" objects, "))
        .unwrap_or_else(|| panic!("no progress line: {r}"));
    let (done, rest) = line.split_once(" of ").expect("N of M");
    assert!(done.parse::<u64>().is_ok(), "{line}");
    let total = rest.trim_start_matches("at least ");
    assert!(
        total
            .split(' ')
            .next()
            .unwrap()
            .replace(',', "")
            .parse::<u64>()
            .is_ok(),
        "{line}"
    );
    assert!(line.contains("/s"), "{line}");
}

#[test]
fn a_bad_or_busy_metrics_address_is_one_line_and_status_2() {
    let Some(cx) = Ctx::new() else { return };
    let d = cx.path("d");
    std::fs::create_dir_all(&d).unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    for addr in ["not-an-address", busy.as_str()] {
        let r = cx.run(&["--metrics-addr", addr, "du", s(&d)]);
        assert_eq!(r.code, 2, "{r}");
        let line = assert_one_error_line(&r.stderr);
        assert!(
            line.contains("--metrics-addr") && line.contains(addr),
            "{line}"
        );
    }
    let r = cx.run(&["--metrics-emf", "/nonexistent-dir/emf.log", "du", s(&d)]);
    assert_eq!(r.code, 2, "{r}");
    assert!(assert_one_error_line(&r.stderr).contains("--metrics-emf"));
    for (flag, v) in [
        ("--progress-interval", "soon"),
        ("--metrics-interval", "0s"),
        ("--metrics-namespace", ":bad"),
    ] {
        let r = cx.run(&[flag, v, "--metrics-emf", "-", "du", s(&d)]);
        assert_eq!(r.code, 2, "{r}");
        assert!(assert_one_error_line(&r.stderr).contains(flag), "{r}");
    }
}

/// The deployment files pass the ecosystem's own checkers (installed by scripts/ops-tools).
#[test]
fn deploy_files_pass_hadolint_cfn_lint_and_kubernetes_validate() {
    let Ok(bin) = std::env::var("S3FERRY_TEST_LINT_BIN") else {
        eprintln!("\n*** SKIPPED: needs S3FERRY_TEST_LINT_BIN; run scripts/test (it installs the linters) ***\n");
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let deploy = root.join("deploy");
    let files = |sub: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(deploy.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        v.sort();
        v
    };
    let mut checks: Vec<(String, Vec<String>)> = vec![(
        "hadolint".into(),
        vec![deploy.join("Dockerfile").display().to_string()],
    )];
    let cfn = files("cloudformation");
    let k8s = files("kubernetes");
    assert!(cfn.len() >= 2 && k8s.len() >= 2, "{cfn:?} {k8s:?}");
    for f in cfn {
        checks.push(("cfn-lint".into(), vec![f.display().to_string()]));
    }
    for f in k8s {
        checks.push((
            "kubernetes-validate".into(),
            vec!["--strict".into(), f.display().to_string()],
        ));
    }
    for (tool, args) in checks {
        let out = Command::new(format!("{bin}/{tool}"))
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
