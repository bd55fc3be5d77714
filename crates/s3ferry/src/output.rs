//! What the user sees: per-object lines and a summary as text, or JSON Lines with `--json`, and
//! a progress bar on stderr when it is a terminal.
//!
//! JSON Lines schema (one object per line on stdout):
//! - `{"type":"begin","job":"sync","src":..,"dst":..,"dry_run":..}`
//! - `{"type":"object","key":..,"action":"copy|delete|skip|refuse|fail|would-copy|would-delete","reason":..,"size":..,"error"?:..}`
//! - `{"type":"note","message":..}`
//! - `{"type":"summary", ...Summary fields..., "exit_code":N}`
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use s3ferry_engine::events::{Outcome, Record, Reporter, Summary};

pub struct Printer {
    pub json: bool,
    pub verbose: u8,
    pub quiet: bool,
    bar: Option<ProgressBar>,
    objects_planned: AtomicU64,
    objects_done: AtomicU64,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Printer {
    pub fn new(json: bool, verbose: u8, quiet: bool, progress: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (progress && !json && !quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        Self {
            json,
            verbose,
            quiet,
            bar,
            objects_planned: AtomicU64::new(0),
            objects_done: AtomicU64::new(0),
            out: Mutex::new(Box::new(std::io::stdout())),
        }
    }

    /// Object lines and JSON records go to stderr instead (stdout carries data, as in `pipe`).
    #[allow(dead_code)] // the pipe job is its first user
    pub fn on_stderr(mut self) -> Self {
        self.out = Mutex::new(Box::new(std::io::stderr()));
        self
    }

    fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => {
                let mut o = self.out.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(o, "{s}");
            }
        }
    }

    fn err_line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }

    pub fn json(&self, v: serde_json::Value) {
        let mut o = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(o, "{v}");
    }

    pub fn begin(&self, job: &str, src: &str, dst: &str, dry_run: bool) {
        if self.json {
            crate::context::begun(job);
            self.json(serde_json::json!({"type": "begin", "job": job, "src": src, "dst": dst, "dry_run": dry_run}));
        }
    }

    pub fn summary(&self, s: &Summary) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let code = s.exit_code();
        if self.json {
            crate::context::ended();
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["type"] = "summary".into();
            v["exit_code"] = code.into();
            self.json(v);
            return;
        }
        if self.quiet && code == 0 {
            return;
        }
        let verb = if s.dry_run { "would copy" } else { "copied" };
        let del = if s.dry_run { "would delete" } else { "deleted" };
        let mut msg = format!(
            "{verb} {} ({}), {del} {}, unchanged {}, failed {}",
            s.copied,
            human_bytes(s.copied_bytes),
            s.deleted,
            s.skipped,
            s.failed
        );
        if s.refused > 0 {
            msg += &format!(", refused {} (unsafe keys)", s.refused);
        }
        if s.interrupted {
            msg += ", interrupted (nothing deleted; run again to finish)";
        }
        if s.retries > 0 {
            msg += &format!(", {} retries ({} throttled)", s.retries, s.throttled);
        }
        let rate = if s.elapsed_secs > 0.0 {
            s.copied_bytes as f64 / s.elapsed_secs
        } else {
            0.0
        };
        msg += &format!(
            " in {:.2}s ({}/s)",
            s.elapsed_secs,
            human_bytes(rate as u64)
        );
        eprintln!("{msg}");
        if let Some(w) = &s.deletes_suppressed {
            eprintln!("warning: {w}");
        }
    }

    pub fn finish_bar(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

impl Reporter for Printer {
    fn planned(&self, objects: u64, bytes: u64) {
        let n = self.objects_planned.fetch_add(objects, Ordering::Relaxed) + objects;
        if let Some(b) = &self.bar {
            b.inc_length(bytes);
            b.set_message(format!(
                "{}/{n} objects",
                self.objects_done.load(Ordering::Relaxed)
            ));
        }
    }

    fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn record(&self, r: &Record) {
        if r.action.finishes_work() {
            let d = self.objects_done.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(b) = &self.bar {
                b.set_message(format!(
                    "{d}/{} objects",
                    self.objects_planned.load(Ordering::Relaxed)
                ));
            }
        }
        if self.json {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["type"] = "object".into();
            if r.action != Outcome::Skip || self.verbose > 0 || r.is_reported_skip() {
                self.json(v);
            }
            return;
        }
        match r.action {
            Outcome::Fail => self.err_line(&format!(
                "error: {}",
                r.error.as_deref().unwrap_or(&r.reason)
            )),
            Outcome::Refuse => self.err_line(&format!("refused: {:?}: {}", r.key, r.reason)),
            Outcome::Skip if r.is_reported_skip() && !self.quiet => {
                self.err_line(&format!("skipped: {:?}: {}", r.key, r.reason))
            }
            Outcome::Skip if self.verbose == 0 => {}
            _ if self.quiet => {}
            a => self.line(&format!("{:<12} {} ({})", a.as_str(), r.key, r.reason)),
        }
    }

    fn note(&self, msg: &str) {
        if self.json {
            self.json(serde_json::json!({"type": "note", "message": msg}));
        } else if !self.quiet {
            self.err_line(&format!("note: {msg}"));
        }
    }
}

/// The reporter of jobs of many objects (bundle, archive): copies are routine and listed only
/// with -v (or --json); failures, deletes, refusals and notes always.
pub struct JobLines {
    printer: Arc<Printer>,
    verbose: bool,
}

impl Reporter for JobLines {
    fn planned(&self, objects: u64, bytes: u64) {
        self.printer.planned(objects, bytes)
    }
    fn bytes(&self, n: u64) {
        self.printer.bytes(n)
    }
    fn record(&self, r: &Record) {
        if self.verbose || !matches!(r.action, Outcome::Copy | Outcome::WouldCopy) {
            self.printer.record(r)
        }
    }
    fn note(&self, msg: &str) {
        self.printer.note(msg)
    }
}

/// A printer for the command line's settings (records on stderr with `on_stderr`, when stdout
/// carries data) and its [`JobLines`] reporter.
pub fn job_printer(g: &crate::cli::Global, on_stderr: bool) -> (Arc<Printer>, Arc<dyn Reporter>) {
    let mut p = Printer::new(g.json, g.verbose, g.quiet, !g.no_progress);
    if on_stderr {
        p = p.on_stderr();
    }
    let p = Arc::new(p);
    let r: Arc<dyn Reporter> = Arc::new(JobLines {
        printer: p.clone(),
        verbose: g.verbose > 0 || g.json,
    });
    (p, r)
}

impl Printer {
    /// The last record (`--json`: `summary` with the job and exit status) or the text lines of
    /// what a command did.
    pub fn job_summary(&self, job: &str, mut v: serde_json::Value, text: String, code: u8) {
        self.finish_bar();
        if self.json {
            crate::context::ended();
            v["type"] = "summary".into();
            v["exit_code"] = code.into();
            v["job"] = job.into();
            self.json(v);
        } else if !self.quiet {
            eprintln!("{text}");
        }
    }
}
