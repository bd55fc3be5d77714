//! What every command shares, written once: the signal contract, the exit codes, the filter
//! rules in the order typed, and the `--json` summary that ends every run (also a fatal one).
//!
//! **Signals.** The first SIGINT or SIGTERM requests the command's [`Cancel`]: nothing new
//! starts, what is in flight finishes (an upload completes or is aborted), the state is
//! recorded and the summary printed. A one-shot command then exits 130; a service loop
//! (`bisync --poll`, `bundle worker`) says it stopped and exits 0. A second signal stops at
//! once with 130 (the next run cleans up what that leaves).
//!
//! **Exit codes** (every command): 0 done; 1 some items failed or were refused; 2 usage error
//! or a fatal condition (nothing or not everything could run); 130 stopped by a signal.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::sync::OnceLock;

use s3ferry_engine::exec::Cancel;

/// Exit status of a command stopped by a signal (as a shell reports SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Whether a command is a one-shot run or a service loop (what a signal's exit status is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    OneShot,
    Service,
}

impl Kind {
    /// The exit status of a run that a signal stopped cleanly.
    pub fn stopped_code(self) -> u8 {
        match self {
            Kind::OneShot => EXIT_INTERRUPTED,
            Kind::Service => 0,
        }
    }
}

/// Install the signal contract for this command and return its cancellation. `doing` ends the
/// sentence "stopping after ..." (what finishes before the command stops). The handlers are in
/// place when this returns: a signal from then on is never the default (fatal) one.
pub fn signals(doing: &'static str) -> Cancel {
    use tokio::signal::unix::{signal, SignalKind};
    let cancel = Cancel::new();
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install the signal handlers: SIGINT/SIGTERM stop at once");
        return cancel;
    };
    let c = cancel.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let sig = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            if n == 0 {
                crate::logs::say!(
                    Warn,
                    "s3ferry: {sig}: stopping after {doing} (again to stop at once)"
                );
                c.request(sig);
            } else {
                crate::logs::say!(Warn, "s3ferry: {sig}: stopping now; the next run cleans up");
                std::process::exit(EXIT_INTERRUPTED.into());
            }
        }
    });
    cancel
}

/// The job whose `begin` record was written (`--json`): a fatal error still ends its stream with
/// a `summary` record.
static BEGUN: OnceLock<String> = OnceLock::new();
/// A `summary` record was written: nothing more to end.
static ENDED: OnceLock<()> = OnceLock::new();

pub fn begun(job: &str) {
    let _ = BEGUN.set(job.to_string());
}

pub fn ended() {
    let _ = ENDED.set(());
}

/// The command (its first subcommand: `sync`, `batch`, ...), for records that have no job yet.
static COMMAND: OnceLock<String> = OnceLock::new();

/// After a fatal error under `--json`: the `summary` record every JSON Lines stream ends with,
/// here with the error and exit code 2 (unless a `summary` was written already). On stdout, but
/// for `pipe`, whose stdout carries data and whose records go to stderr.
pub fn fatal_summary(json: bool, msg: &str) {
    if !json || ENDED.get().is_some() {
        return;
    }
    let command = COMMAND.get().map(String::as_str).unwrap_or("s3ferry");
    let job = BEGUN.get().map(String::as_str).unwrap_or(command);
    let v = serde_json::json!({"type": "summary", "job": job, "error": msg, "exit_code": 2});
    if command == "pipe" || command == "cat" {
        eprintln!("{v}");
    } else {
        println!("{v}");
    }
}

/// The command's name (`sync`, `rm`, ...).
pub fn command() -> &'static str {
    COMMAND.get().map(String::as_str).unwrap_or("s3ferry")
}

/// `--include`/`--exclude` of the command line as typed: (position, include?, pattern).
static TYPED_RULES: OnceLock<Vec<(usize, bool, String)>> = OnceLock::new();

/// Note the filter rules of the command line (its innermost subcommand), in the order typed.
pub fn init(m: &clap::ArgMatches) {
    if let Some((name, _)) = m.subcommand() {
        let _ = COMMAND.set(name.to_string());
    }
    let mut m = m;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    let mut rules = Vec::new();
    for (id, inc) in [("include", true), ("exclude", false)] {
        if !matches!(m.try_contains_id(id), Ok(true)) {
            continue;
        }
        let (Some(idx), Ok(Some(vals))) = (m.indices_of(id), m.try_get_many::<String>(id)) else {
            continue;
        };
        for (i, v) in idx.zip(vals) {
            rules.push((i, inc, v.clone()));
        }
    }
    rules.sort_by_key(|r| r.0);
    let _ = TYPED_RULES.set(rules);
}

/// `--include`/`--exclude` as filter rules, for every command alike: in the order typed
/// (aws-cli's rule: the last rule that matches a key decides; a key no rule matches is
/// included). Values that did not come from the command line in that order (environment
/// variables, a stored job) keep includes first, then excludes.
pub fn ordered_rules(include: &[String], exclude: &[String]) -> Vec<(bool, String)> {
    if let Some(typed) = TYPED_RULES.get() {
        let inc: Vec<&String> = typed.iter().filter(|r| r.1).map(|r| &r.2).collect();
        let exc: Vec<&String> = typed.iter().filter(|r| !r.1).map(|r| &r.2).collect();
        if inc.iter().copied().eq(include.iter()) && exc.iter().copied().eq(exclude.iter()) {
            return typed.iter().map(|(_, i, p)| (*i, p.clone())).collect();
        }
    }
    include
        .iter()
        .map(|p| (true, p.clone()))
        .chain(exclude.iter().map(|p| (false, p.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The rules keep the order typed, whichever option came first and however they alternate;
    /// values that are not the command line's keep includes first.
    #[test]
    fn filter_rules_keep_the_order_typed() {
        let m = crate::cli::Cli::command().get_matches_from([
            "s3ferry",
            "batch",
            "manifest",
            "s3://b/p",
            "--exclude",
            "*",
            "--include",
            "*.txt",
            "--exclude",
            "tmp/*",
            "--out",
            "m.csv",
        ]);
        init(&m);
        let inc = vec!["*.txt".to_string()];
        let exc = vec!["*".to_string(), "tmp/*".to_string()];
        assert_eq!(
            ordered_rules(&inc, &exc),
            [
                (false, "*".to_string()),
                (true, "*.txt".to_string()),
                (false, "tmp/*".to_string())
            ]
        );
        // Not what was typed (a stored job, an environment variable): includes first.
        assert_eq!(
            ordered_rules(&["a".to_string()], &[]),
            [(true, "a".to_string())]
        );
    }
}
