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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use s3ferry_engine::events::{Outcome, Record, Reporter, Summary};
use s3ferry_engine::metrics;

use crate::logs::{say_with, Level};

/// How often a progress line is written when stderr is not a terminal (`--progress-interval`;
/// none when zero).
static PROGRESS_EVERY: OnceLock<Duration> = OnceLock::new();

/// Take the output settings of the command line (before any printer is made); a bad
/// `--progress-interval` is the error.
pub fn configure(g: &crate::cli::Global) -> Result<(), String> {
    let every = crate::cli::parse_duration(&g.progress_interval).map_err(|_| {
        format!(
            "--progress-interval {:?}: use a duration like 10s or 1m (0 for none)",
            g.progress_interval
        )
    })?;
    let _ = PROGRESS_EVERY.set(every);
    Ok(())
}

/// What has been planned and done, for the bar and the progress lines.
struct Progress {
    objects_planned: AtomicU64,
    objects_done: AtomicU64,
    bytes_planned: AtomicU64,
    bytes_done: AtomicU64,
    /// Every item has been planned: the totals are final.
    listed: AtomicBool,
    finished: AtomicBool,
    started: Instant,
}

impl Progress {
    fn new() -> Self {
        Self {
            objects_planned: AtomicU64::new(0),
            objects_done: AtomicU64::new(0),
            bytes_planned: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            listed: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// `1,234 of 10,000 objects, 1.2 GiB of 9.8 GiB, 45.0 MiB/s, ETA 3m` ("of at least" while
    /// listing runs; no ETA until the totals are known), with the figures as JSON fields.
    /// `rate` is the bytes per second since the previous line.
    fn line(&self, rate: f64) -> (String, serde_json::Value) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (od, op, bd, bp) = (
            l(&self.objects_done),
            l(&self.objects_planned),
            l(&self.bytes_done),
            l(&self.bytes_planned),
        );
        let listed = self.listed.load(Ordering::Relaxed);
        // Done can run ahead of planned (deletes and failures a job did not plan as transfers).
        let (op, bp) = (op.max(od), bp.max(bd));
        let of = if listed { "of" } else { "of at least" };
        let mut text = format!(
            "{} {of} {} objects, {} {of} {}, {}/s",
            thousands(od),
            thousands(op),
            human_bytes(bd),
            human_bytes(bp),
            human_bytes(rate as u64)
        );
        let avg = bd as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let eta = (listed && avg > 0.0).then(|| ((bp - bd) as f64 / avg).ceil() as u64);
        if let Some(e) = eta {
            text += &format!(", ETA {}", human_duration(e));
        }
        let fields = serde_json::json!({
            "objects_done": od, "objects_planned": op, "bytes_done": bd, "bytes_planned": bp,
            "bytes_per_sec": rate as u64, "listing_complete": listed, "eta_secs": eta,
        });
        (text, fields)
    }
}

/// Write a progress line every `every` until the printer finishes.
fn progress_lines(p: std::sync::Weak<Progress>, every: Duration) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last = (Instant::now(), 0u64);
        let mut said = (0u64, 0u64, 0u64);
        loop {
            tick.tick().await;
            let Some(p) = p.upgrade() else { return };
            if p.finished.load(Ordering::Relaxed) {
                return;
            }
            let done = p.bytes_done.load(Ordering::Relaxed);
            let now = (
                p.objects_planned.load(Ordering::Relaxed),
                p.objects_done.load(Ordering::Relaxed),
                done,
            );
            // Nothing yet, or nothing new since the last line (an idle worker): no line.
            if now == (0, 0, 0) || now == said {
                continue;
            }
            said = now;
            let rate =
                done.saturating_sub(last.1) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
            last = (Instant::now(), done);
            let (text, fields) = p.line(rate);
            say_with(Level::Info, &text, fields);
        }
    });
}

/// `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds as `45s`, `3m`, `2h05m`.
fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s.div_ceil(60)),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub struct Printer {
    pub json: bool,
    pub verbose: u8,
    pub quiet: bool,
    bar: Option<ProgressBar>,
    progress: Arc<Progress>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.progress.finished.store(true, Ordering::Relaxed);
    }
}

impl Printer {
    pub fn new(json: bool, verbose: u8, quiet: bool, progress: bool) -> Self {
        use std::io::IsTerminal;
        let state = Arc::new(Progress::new());
        let tty = std::io::stderr().is_terminal();
        // Without a terminal (or with JSON log lines): a progress line now and then (not among
        // --json records on the same stream, unless the log lines are JSON too).
        if progress && !quiet && (!tty || crate::logs::json()) && (!json || crate::logs::json()) {
            if let Some(every) = PROGRESS_EVERY.get().filter(|d| !d.is_zero()) {
                progress_lines(Arc::downgrade(&state), *every);
            }
        }
        // No bar under --log-format json: every stderr line is a JSON object then.
        let bar = (progress && !json && !quiet && tty && !crate::logs::json()).then(|| {
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
            progress: state,
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

    /// A line on stderr (a JSON log line with `--log-format json`), about `key` if given.
    fn err_line(&self, level: Level, s: &str, key: Option<&str>) {
        match &self.bar {
            Some(b) => b.println(s),
            None => say_with(
                level,
                s,
                key.map_or(serde_json::Value::Null, |k| serde_json::json!({"key": k})),
            ),
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
        self.finish_bar();
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
        say_with(
            Level::Info,
            &msg,
            serde_json::to_value(s).unwrap_or_default(),
        );
        if let Some(w) = &s.deletes_suppressed {
            crate::logs::say!(Warn, "warning: {w}");
        }
    }

    pub fn finish_bar(&self) {
        self.progress.finished.store(true, Ordering::Relaxed);
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
        metrics::global().planned(objects, bytes);
        let p = &self.progress;
        // Planned after a pass was complete: another pass (a worker's next shard) is listing.
        if objects > 0 {
            p.listed.store(false, Ordering::Relaxed);
        }
        let n = p.objects_planned.fetch_add(objects, Ordering::Relaxed) + objects;
        p.bytes_planned.fetch_add(bytes, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc_length(bytes);
            b.set_message(format!(
                "{}/{n} objects",
                p.objects_done.load(Ordering::Relaxed)
            ));
        }
    }

    fn bytes(&self, n: u64) {
        metrics::global().transferred(n);
        self.progress.bytes_done.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn listed(&self) {
        self.progress.listed.store(true, Ordering::Relaxed);
    }

    fn record(&self, r: &Record) {
        self.tally(r);
        self.show(r);
    }

    fn note(&self, msg: &str) {
        if self.json {
            self.json(serde_json::json!({"type": "note", "message": msg}));
        } else if !self.quiet {
            self.err_line(Level::Info, &format!("note: {msg}"), None);
        }
    }
}

impl Printer {
    /// Count a record: the metrics and the progress (whether or not it is shown).
    fn tally(&self, r: &Record) {
        metrics::global().item(r.action, r.size);
        if r.action.finishes_work() {
            let p = &self.progress;
            let d = p.objects_done.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(b) = &self.bar {
                b.set_message(format!(
                    "{d}/{} objects",
                    p.objects_planned.load(Ordering::Relaxed)
                ));
            }
        }
    }

    /// Show a record: a JSON record, a line, or nothing (routine skips without -v).
    fn show(&self, r: &Record) {
        if self.json {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["type"] = "object".into();
            if r.action != Outcome::Skip || self.verbose > 0 || r.is_reported_skip() {
                self.json(v);
            }
            return;
        }
        match r.action {
            Outcome::Fail => self.err_line(
                Level::Error,
                &format!("error: {}", r.error.as_deref().unwrap_or(&r.reason)),
                Some(&r.key),
            ),
            Outcome::Refuse => self.err_line(
                Level::Warn,
                &format!("refused: {:?}: {}", r.key, r.reason),
                Some(&r.key),
            ),
            Outcome::Skip if r.is_reported_skip() && !self.quiet => self.err_line(
                Level::Warn,
                &format!("skipped: {:?}: {}", r.key, r.reason),
                Some(&r.key),
            ),
            Outcome::Skip if self.verbose == 0 => {}
            _ if self.quiet => {}
            a => self.line(&format!("{:<12} {} ({})", a.as_str(), r.key, r.reason)),
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
        self.printer.tally(r);
        if self.verbose || !matches!(r.action, Outcome::Copy | Outcome::WouldCopy) {
            self.printer.show(r)
        }
    }
    fn note(&self, msg: &str) {
        self.printer.note(msg)
    }
    fn listed(&self) {
        self.printer.listed()
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
            say_with(Level::Info, &text, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_say_at_least_while_listing_and_an_eta_once_the_totals_are_known() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234), "1,234");
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(150), "3m");
        assert_eq!(human_duration(7_500), "2h05m");
        let p = Progress::new();
        p.objects_planned.store(10_000, Ordering::Relaxed);
        p.objects_done.store(1_234, Ordering::Relaxed);
        p.bytes_planned.store(10 << 30, Ordering::Relaxed);
        p.bytes_done.store(1 << 30, Ordering::Relaxed);
        let (text, v) = p.line(45.0 * 1024.0 * 1024.0);
        assert_eq!(
            text,
            "1,234 of at least 10,000 objects, 1.0 GiB of at least 10.0 GiB, 45.0 MiB/s"
        );
        assert_eq!(v["listing_complete"], false);
        assert!(v["eta_secs"].is_null());
        p.listed.store(true, Ordering::Relaxed);
        let (text, v) = p.line(0.0);
        assert!(
            text.starts_with("1,234 of 10,000 objects, 1.0 GiB of 10.0 GiB, 0 B/s, ETA "),
            "{text}"
        );
        assert!(v["eta_secs"].as_u64().is_some_and(|s| s > 0));
    }
}
