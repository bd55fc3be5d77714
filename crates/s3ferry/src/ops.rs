//! Operations: `--metrics-addr` (Prometheus `/metrics`, `/healthz`, `/readyz` on one small HTTP
//! listener) and `--metrics-emf` (CloudWatch Embedded Metric Format lines), both rendering the
//! engine's one registry ([`s3ferry_engine::metrics`]).
#![allow(clippy::print_stderr)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s3ferry_engine::metrics::{self, EmfWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{BundleCommand, Cli, Command};
use crate::Fatal;

/// What runs beside the command; [`Ops::finish`] writes the last EMF lines.
pub struct Ops {
    emf: Option<Arc<Emf>>,
}

struct Emf {
    writer: Mutex<EmfWriter>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Emf {
    fn flush(&self) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let lines = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines(&metrics::global().snapshot(), now_ms);
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
    }
}

/// Start what the command line asks for: the listener is bound (a bad or busy address is a
/// fatal error before the command does anything) and the EMF file opened.
pub async fn start(cli: &Cli) -> Result<Ops, Fatal> {
    let g = &cli.global;
    metrics::global().set_job(crate::context::command());
    // Before the listener answers: a service is not ready until its loop says so.
    if let Some(r) = readiness(&cli.command) {
        metrics::global().set_readiness(r);
    }
    if let Some(addr) = &g.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Fatal(format!("--metrics-addr {addr}: {e}")))?;
        let bound = l
            .local_addr()
            .map_err(|e| Fatal(format!("--metrics-addr {addr}: {e}")))?;
        if !g.quiet {
            crate::logs::say!(Info, "s3ferry: metrics on http://{bound}/metrics");
        }
        tokio::spawn(serve(l));
    }
    let emf = match &g.metrics_emf {
        None => None,
        Some(path) => {
            let every = crate::cli::parse_duration(&g.metrics_interval)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Fatal(format!(
                        "--metrics-interval {:?}: use a duration like 60s or 5m",
                        g.metrics_interval
                    ))
                })?;
            let ns = &g.metrics_namespace;
            if ns.is_empty() || ns.len() > 255 || ns.starts_with(':') {
                return Err(Fatal(format!(
                    "--metrics-namespace {ns:?}: use 1 to 255 characters, not starting with ':'"
                )));
            }
            let out: Box<dyn Write + Send> = if path == "-" {
                Box::new(std::io::stderr())
            } else {
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| Fatal(format!("--metrics-emf {path}: {e}")))?,
                )
            };
            let emf = Arc::new(Emf {
                writer: Mutex::new(EmfWriter::new(ns)),
                out: Mutex::new(out),
            });
            let e = emf.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    e.flush();
                }
            });
            Some(emf)
        }
    };
    Ok(Ops { emf })
}

/// What `/readyz` means for a service command (one-shot commands are ready while they run).
fn readiness(c: &Command) -> Option<metrics::Readiness> {
    match c {
        // Ready while the rounds work: one succeeded within --ready-polls polls (at least a
        // minute), or a round runs that started while that was so.
        Command::Bisync(a) if a.poll > 0 => Some(metrics::Readiness::Rounds {
            within: (Duration::from_secs(a.poll) * a.ready_polls).max(Duration::from_secs(60)),
        }),
        // Ready while receives from the queue succeed (a long poll answers within 20 s), or
        // while the shard in hand keeps its lease (extended every third of the visibility).
        Command::Bundle(BundleCommand::Worker(w)) => Some(metrics::Readiness::Receiving {
            within: Duration::from_secs(60),
            lease: crate::cli::parse_duration(&w.visibility_timeout)
                .unwrap_or(Duration::from_secs(300)),
        }),
        _ => None,
    }
}

impl Ops {
    /// The end of the command: the EMF lines of everything counted since the last ones.
    pub fn finish(&self) {
        if let Some(e) = &self.emf {
            e.flush();
        }
    }
}

/// Connections answered at once at most: scrapers and probes need a few; idle or slow clients
/// beyond that wait for the accept, and never take the file descriptors the transfers need.
const MAX_CONNECTIONS: usize = 16;

async fn serve(l: tokio::net::TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((conn, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            // A request must arrive and be answered within this: a silent client is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(conn)).await;
            drop(slot);
        });
    }
}

/// One request, one answer, then the connection closes.
async fn answer(mut conn: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = route(method, path);
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        resp += "Allow: GET, HEAD\r\n";
    }
    resp += "\r\n";
    conn.write_all(resp.as_bytes()).await?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes()).await?;
    }
    conn.shutdown().await
}

fn route(method: &str, path: &str) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "use GET\n".into());
    }
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::prometheus_text(&metrics::global().snapshot()),
        ),
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => match metrics::global().ready() {
            (true, why) => ("200 OK", TEXT, format!("ready: {why}\n")),
            (false, why) => (
                "503 Service Unavailable",
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            TEXT,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
