//! Shared helpers for the end-to-end tests: run the real `s3ferry` binary against the local S3
//! server (`S3FERRY_TEST_S3_ENDPOINT`, set by scripts/test), parse its JSON Lines, make and read
//! trees, and a per-test bucket that is deleted on drop.
#![allow(dead_code, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};
use s3ferry_aws::{S3Config, S3Store};
pub use s3ferry_store::{MultipartUpload, ObjectMeta, PutOptions, Store, StoreExt};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_s3ferry");
/// No run of the binary in these tests may take longer than this (then it is killed and the
/// test fails, instead of hanging the suite).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Env vars of the parent that must not leak into a run.
const SCRUB: &[&str] = &[
    "S3FERRY_FAULTS",
    "S3FERRY_FAULTS_SOURCE",
    "S3FERRY_FAULTS_DEST",
    "S3FERRY_LOG",
    "S3FERRY_STATE_DIR",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL_S3",
    "AWS_MAX_ATTEMPTS",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "AWS_CA_BUNDLE",
    "S3FERRY_LOG_FORMAT",
    "S3FERRY_METRICS_ADDR",
    "S3FERRY_METRICS_EMF",
    "S3FERRY_METRICS_NAMESPACE",
    "S3FERRY_METRICS_INTERVAL",
];

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

pub fn access_key() -> String {
    env_or("AWS_ACCESS_KEY_ID", "s3ferry-test")
}
pub fn secret_key() -> String {
    env_or("AWS_SECRET_ACCESS_KEY", "s3ferry-test-secret")
}
pub fn region() -> String {
    env_or("AWS_REGION", "us-east-1")
}

/// One test's world: a temp dir (with `state/` for the state database) and a runtime for SDK
/// calls. `None` (after a loud skip line) when no S3 server is configured.
pub struct Ctx {
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub rt: Arc<tokio::runtime::Runtime>,
}

impl Ctx {
    pub fn new() -> Option<Ctx> {
        let endpoint = s3ferry_testkit::s3_test_endpoint()?;
        let dir = tempfile::Builder::new()
            .prefix("s3ferry-e2e-")
            .tempdir()
            .expect("temp dir");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Some(Ctx {
            endpoint,
            dir,
            state,
            rt: Arc::new(rt),
        })
    }

    /// A path inside this test's temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `s3ferry` with the server's endpoint and credentials, this test's state dir, and no
    /// fault or log settings inherited from the caller.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        for v in SCRUB {
            c.env_remove(v);
        }
        c.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", access_key())
            .env("AWS_SECRET_ACCESS_KEY", secret_key())
            .env("AWS_REGION", region())
            .env("S3FERRY_STATE_DIR", &self.state)
            .env("NO_COLOR", "1")
            // No progress lines on the captured stderr unless a test asks for them.
            .env("S3FERRY_PROGRESS_INTERVAL", "0")
            .stdin(Stdio::null());
        c
    }

    /// Run `s3ferry ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// Run `s3ferry ARGS` with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.cmd();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        run_cmd(c, RUN_TIMEOUT)
    }

    /// `s3ferry --json sync ARGS...` (arguments after `sync`).
    pub fn sync(&self, args: &[&str]) -> Run {
        self.sync_env(args, &[])
    }

    pub fn sync_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut all = vec!["--json", "--no-progress", "sync"];
        all.extend_from_slice(args);
        self.run_env(&all, env)
    }

    /// A fresh bucket (made with `s3ferry mb`), deleted with everything in it on drop.
    pub fn bucket(&self, name: &str) -> Bucket {
        let name = s3ferry_testkit::unique_bucket(&format!("e2e-{name}"));
        let r = self.run(&["mb", &format!("s3://{name}")]);
        assert_eq!(r.code, 0, "mb s3://{name}: {r}");
        let store = self.rt.block_on(connect(&self.endpoint, &name));
        Bucket {
            name,
            store,
            rt: self.rt.clone(),
        }
    }
}

pub async fn connect(endpoint: &str, bucket: &str) -> S3Store {
    let mut c = S3Config::new(bucket);
    c.endpoint_url = Some(endpoint.to_string());
    c.access_key_id = Some(access_key());
    c.secret_access_key = Some(secret_key());
    c.region = Some(region());
    c.max_attempts_sdk = 3;
    S3Store::connect(c)
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint} for {bucket}: {e}"))
}

/// The outcome of one run of the binary.
pub struct Run {
    /// Exit code; -1 when the process was killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let out: String = if self.stdout.len() > 6000 {
            format!(
                "{}\n…\n{}",
                head(&self.stdout, 3000),
                tail(&self.stdout, 3000)
            )
        } else {
            self.stdout.clone()
        };
        write!(
            f,
            "exit {} after {:.1}s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.elapsed.as_secs_f64(),
            out,
            tail(&self.stderr, 4000)
        )
    }
}

fn head(s: &str, n: usize) -> &str {
    let mut i = n.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

impl Run {
    /// Every stdout line as JSON (panics on a line that is not JSON).
    pub fn json(&self) -> Vec<Value> {
        parse_lines(&self.stdout)
    }

    /// The one summary record.
    pub fn summary(&self) -> Value {
        let s: Vec<Value> = self
            .json()
            .into_iter()
            .filter(|v| v["type"] == "summary")
            .collect();
        assert_eq!(s.len(), 1, "expected exactly one summary line: {self}");
        s.into_iter().next().unwrap_or_default()
    }

    /// A numeric summary field.
    pub fn n(&self, field: &str) -> u64 {
        let s = self.summary();
        s[field]
            .as_u64()
            .unwrap_or_else(|| panic!("summary field {field} missing or not a count: {s}"))
    }

    /// Object records with this action.
    pub fn records(&self, action: &str) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["type"] == "object" && v["action"] == action)
            .collect()
    }

    /// Sorted keys of the object records with this action.
    /// (key, reason) of the `skip` records, sorted.
    pub fn skips(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .records("skip")
            .iter()
            .map(|v| {
                (
                    v["key"].as_str().unwrap_or_default().to_string(),
                    v["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    pub fn keys(&self, action: &str) -> Vec<String> {
        let mut k: Vec<String> = self
            .records(action)
            .iter()
            .map(|v| v["key"].as_str().unwrap_or_default().to_string())
            .collect();
        k.sort();
        k
    }

    /// Notes printed by the run.
    pub fn notes(&self) -> Vec<String> {
        self.json()
            .into_iter()
            .filter(|v| v["type"] == "note")
            .map(|v| v["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Exit 0, and the summary agrees.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, 0, "{self}");
        assert_eq!(self.n("exit_code"), 0, "{self}");
        assert_eq!(self.n("failed"), 0, "{self}");
        self
    }

    /// A fatal error: exit 2 and exactly one non-empty stderr line `s3ferry: error: ...`
    /// without panic or backtrace text. Returns that line.
    #[track_caller]
    pub fn assert_fatal(&self) -> String {
        assert_eq!(self.code, 2, "{self}");
        assert_one_error_line(&self.stderr)
    }
}

/// Exactly one non-empty line, starting with `s3ferry: error:`, no panic/backtrace text.
#[track_caller]
pub fn assert_one_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr, got {}:\n{stderr}",
        lines.len()
    );
    let l = lines[0];
    assert!(l.starts_with("s3ferry: error: "), "{l}");
    assert!(l.len() > "s3ferry: error: ".len() + 5, "empty error: {l}");
    for bad in [
        "panicked",
        "backtrace",
        "RUST_BACKTRACE",
        "stack backtrace",
        "\x1b[",
    ] {
        assert!(!l.contains(bad), "{bad:?} in {l}");
    }
    l.to_string()
}

pub fn parse_lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Run a prepared command with stdout/stderr captured; kill it (and fail) after `timeout`.
pub fn run_cmd(mut c: Command, timeout: Duration) -> Run {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = c.spawn().expect("spawn s3ferry");
    let pid = child.id();
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(s) => s.expect("wait for s3ferry"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("s3ferry {c:?} did not finish within {timeout:?}; killed");
        }
    };
    let elapsed = t0.elapsed();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed,
    }
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Kill a child with SIGKILL and reap it.
pub fn kill9(child: &mut Child) {
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    let st = child.wait().expect("reap");
    assert_eq!(st.code(), None, "the process had already exited: {st:?}");
}

/// A bucket of its own for one test; deleted with all its objects and uploads on drop.
pub struct Bucket {
    pub name: String,
    pub store: S3Store,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Drop for Bucket {
    fn drop(&mut self) {
        if let Err(e) = self.rt.block_on(self.store.delete_bucket_recursive()) {
            eprintln!("warning: could not delete test bucket {}: {e}", self.name);
        }
    }
}

/// A fresh SQS queue on moto (with `visibility`) named after `b`, and moto's endpoint; `None`
/// (after a loud skip line) when moto is not configured.
pub fn sqs_queue(b: &Bucket, name: &str, visibility: Duration) -> Option<(String, String)> {
    let aws = s3ferry_testkit::aws_test_endpoint()?;
    let url = b.block_on(async {
        let q = s3ferry_aws::SqsQueue::connect(s3ferry_aws::SqsConfig {
            queue_url: format!("{aws}/000000000000/setup"),
            endpoint_url: Some(aws.clone()),
            region: Some("us-east-1".into()),
            ..Default::default()
        })
        .await
        .expect("connect to moto");
        q.create_queue(&format!("{name}-{}", b.name), visibility, None)
            .await
            .expect("create queue")
    });
    Some((url, aws))
}

impl Bucket {
    /// Turn versioning on.
    pub fn enable_versioning(&self) {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        self.block_on(
            self.store
                .client()
                .put_bucket_versioning()
                .bucket(&self.name)
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send(),
        )
        .expect("enable versioning");
    }

    /// `s3://bucket/prefix`.
    pub fn uri(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.name, prefix)
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        self.put_with(key, data, PutOptions::new());
    }

    pub fn put_with(&self, key: &str, data: &[u8], opts: PutOptions) {
        self.rt
            .block_on(self.store.put(key, data.to_vec().into(), opts))
            .unwrap_or_else(|e| panic!("put {key:?}: {e}"));
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        self.rt
            .block_on(self.store.get_bytes(key))
            .unwrap_or_else(|e| panic!("get {key:?}: {e}"))
            .to_vec()
    }

    pub fn head(&self, key: &str) -> ObjectMeta {
        self.rt
            .block_on(self.store.head(key))
            .unwrap_or_else(|e| panic!("head {key:?}: {e}"))
    }

    pub fn tags(&self, key: &str) -> Vec<(String, String)> {
        let mut t = self
            .rt
            .block_on(self.store.get_tags(key))
            .unwrap_or_else(|e| panic!("get tags {key:?}: {e}"));
        t.sort();
        t
    }

    /// Listing under `prefix` (full keys, byte order).
    pub fn list(&self, prefix: &str) -> Vec<ObjectMeta> {
        let mut v = self
            .rt
            .block_on(self.store.list_all(prefix))
            .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"));
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Keys under `prefix`, with the prefix removed, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.list(prefix)
            .into_iter()
            .map(|m| m.key[prefix.len()..].to_string())
            .collect()
    }

    /// Every object under `prefix` (key relative to the prefix -> bytes).
    pub fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let keys: Vec<String> = self.list(prefix).into_iter().map(|m| m.key).collect();
        let store = &self.store;
        self.rt.block_on(async {
            futures::stream::iter(keys)
                .map(|k| async move {
                    let b = store.get_bytes(&k).await?;
                    Ok::<_, s3ferry_store::StoreError>((k[prefix.len()..].to_string(), b.to_vec()))
                })
                .buffer_unordered(16)
                .try_collect::<BTreeMap<_, _>>()
                .await
                .unwrap_or_else(|e| panic!("read objects under {prefix:?}: {e}"))
        })
    }

    /// Put many objects (key relative to `prefix`).
    pub fn put_all(&self, prefix: &str, objects: &BTreeMap<String, Vec<u8>>) {
        let store = &self.store;
        self.rt.block_on(async {
            futures::stream::iter(objects.iter())
                .map(|(k, v)| async move {
                    store
                        .put(&format!("{prefix}{k}"), v.clone().into(), PutOptions::new())
                        .await
                })
                .buffer_unordered(16)
                .try_collect::<Vec<_>>()
                .await
                .unwrap_or_else(|e| panic!("put objects under {prefix:?}: {e}"))
        });
    }

    /// Unfinished multipart uploads in the whole bucket.
    pub fn uploads(&self) -> Vec<MultipartUpload> {
        self.rt
            .block_on(self.store.list_multipart(""))
            .unwrap_or_else(|e| panic!("list multipart uploads: {e}"))
    }
}

/// A tree from (relative path, content) pairs.
pub fn tree(entries: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

/// Write `files` (relative '/'-separated paths) under `root`, creating directories.
pub fn write_tree(root: &Path, files: &BTreeMap<String, Vec<u8>>) {
    std::fs::create_dir_all(root).expect("mkdir root");
    for (rel, data) in files {
        let p = root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
}

/// Every regular file under `root` ('/'-separated relative path -> bytes). Panics on anything
/// that is neither a file nor a directory, and on names that are not UTF-8.
pub fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (rel, p) in walk_files(root) {
        let data = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        out.insert(rel, data);
    }
    out
}

/// Every regular file under `root`: ('/'-separated relative path, full path), sorted.
pub fn walk_files(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.is_empty() => continue,
            Err(e) => panic!("read_dir {}: {e}", dir.display()),
        };
        for e in rd {
            let e = e.expect("dir entry");
            let name = e
                .file_name()
                .into_string()
                .unwrap_or_else(|n| panic!("non-UTF-8 name {n:?} in {}", dir.display()));
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push((r, e.path()));
            } else if ft.is_file() {
                out.push((r, e.path()));
            } else {
                panic!("unexpected non-file {}", e.path().display());
            }
        }
    }
    out.sort();
    out
}

/// Every entry name (files and directories, recursively) under `root`, sorted.
pub fn all_entries(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.expect("dir entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if e.file_type().expect("file type").is_dir() {
                stack.push((r.clone(), e.path()));
            }
            out.push(r);
        }
    }
    out.sort();
    out
}

/// Pseudo-random bytes (xorshift64*), deterministic per seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A file's modification time as nanoseconds since the epoch.
pub fn mtime_ns(p: &Path) -> i128 {
    let md = std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    let t = filetime::FileTime::from_last_modification_time(&md);
    t.unix_seconds() as i128 * 1_000_000_000 + t.nanoseconds() as i128
}

/// Set a file's modification time (seconds + nanoseconds since the epoch).
pub fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    filetime::set_file_mtime(p, filetime::FileTime::from_unix_time(secs, nanos))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", p.display()));
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Path as &str (the tests' temp paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Poll `f` until it holds (fail after 30 s): waiting for a condition another process brings
/// about, never for a fixed time.
#[track_caller]
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- stand-in S3 servers, for what neither local server does ------------------------------

/// `s3ferry --json --endpoint-url ENDPOINT` for a stand-in server: nothing inherited from the
/// caller's environment, fake credentials, HOME and the state directory under `home`.
pub fn standin_cmd(endpoint: &str, home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_ACCESS_KEY_ID", "fake")
        .env("AWS_SECRET_ACCESS_KEY", "fake-secret")
        .env("AWS_REGION", "us-east-1")
        .env("S3FERRY_STATE_DIR", home.join("state"))
        .args(["--json", "--endpoint-url", endpoint]);
    c
}

/// One request as a stand-in sees it (header names lower-case).
pub struct Req {
    pub method: String,
    pub target: String,
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
}

pub type Reply = (&'static str, Vec<(String, String)>, Vec<u8>);

/// A stand-in S3 on a free loopback port answering each request with `handle`; its endpoint.
pub fn standin(handle: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let mut w = conn;
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let target = parts.next().unwrap_or("").to_string();
                let mut headers = std::collections::HashMap::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0usize);
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let req = Req {
                    method,
                    target,
                    headers,
                    body,
                };
                let (status, headers, payload) = handle(&req);
                let mut resp = format!(
                    "HTTP/1.1 {status}\r\nConnection: close\r\nDate: {}\r\nx-amz-bucket-region: us-east-1\r\nContent-Length: {}\r\n",
                    chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT"),
                    payload.len()
                );
                for (k, v) in headers {
                    resp += &format!("{k}: {v}\r\n");
                }
                resp += "\r\n";
                let _ = w.write_all(resp.as_bytes());
                if req.method != "HEAD" {
                    let _ = w.write_all(&payload);
                }
                let _ = w.flush();
            });
        }
    });
    format!("http://{addr}")
}

pub fn xml_error(status: &'static str, code: &str, msg: &str) -> Reply {
    (
        status,
        vec![("Content-Type".into(), "application/xml".into())],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{msg}</Message></Error>").into_bytes(),
    )
}

pub fn list_xml(bucket: &str, objects: &[(String, Vec<u8>)]) -> Reply {
    let mut xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{bucket}</Name><Prefix></Prefix><KeyCount>{}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>", objects.len());
    for (k, d) in objects {
        xml += &format!("<Contents><Key>{k}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>&quot;{}&quot;</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>", s3ferry_store::checksum::md5_hex(d), d.len());
    }
    xml += "</ListBucketResult>";
    (
        "200 OK",
        vec![("Content-Type".into(), "application/xml".into())],
        xml.into_bytes(),
    )
}

/// A stand-in's answer to a PUT of `body`: 200 with its MD5 as the ETag.
pub fn put_reply(body: &[u8]) -> Reply {
    (
        "200 OK",
        vec![(
            "ETag".into(),
            format!("\"{}\"", s3ferry_store::checksum::md5_hex(body)),
        )],
        vec![],
    )
}

pub fn object_reply(d: &[u8]) -> Reply {
    (
        "200 OK",
        vec![
            (
                "ETag".into(),
                format!("\"{}\"", s3ferry_store::checksum::md5_hex(d)),
            ),
            (
                "Last-Modified".into(),
                "Mon, 01 Jan 2024 00:00:00 GMT".into(),
            ),
            ("Content-Type".into(), "application/octet-stream".into()),
        ],
        d.to_vec(),
    )
}
