//! Include/exclude globs and `--since`. Rules are applied in command-line order and the LAST
//! rule that matches a key decides (as in aws-cli); a key no rule matches is included.
//! `*` matches across `/`, so `--exclude '*.tmp'` excludes `a/b.tmp` too.

use std::time::SystemTime;

use globset::{GlobBuilder, GlobMatcher};

#[derive(Clone, Debug)]
pub enum Rule {
    Include(GlobMatcher),
    Exclude(GlobMatcher),
}

#[derive(Clone, Debug, Default)]
pub struct Filters {
    rules: Vec<Rule>,
    /// Only objects/files modified at or after this time are transferred.
    pub since: Option<SystemTime>,
}

impl Filters {
    /// `rules` are `(is_include, pattern)` in command-line order.
    pub fn new(rules: &[(bool, String)], since: Option<SystemTime>) -> Result<Self, String> {
        let mut out = Vec::new();
        for (inc, pat) in rules {
            let g = GlobBuilder::new(pat)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("bad pattern {pat:?}: {e}"))?
                .compile_matcher();
            out.push(if *inc {
                Rule::Include(g)
            } else {
                Rule::Exclude(g)
            });
        }
        Ok(Self { rules: out, since })
    }

    /// Is the relative key `rel` part of the sync?
    pub fn includes(&self, rel: &str) -> bool {
        let mut verdict = true;
        for r in &self.rules {
            match r {
                Rule::Include(g) if g.is_match(rel) => verdict = true,
                Rule::Exclude(g) if g.is_match(rel) => verdict = false,
                _ => {}
            }
        }
        verdict
    }

    /// Is an entry modified at `t` too old for `--since`?
    pub fn before_since(&self, t: Option<SystemTime>) -> bool {
        match (self.since, t) {
            (Some(s), Some(t)) => t < s,
            _ => false,
        }
    }
}

/// Parse `--since`: RFC 3339 (`2024-05-01T12:00:00Z`), a date (`2024-05-01`, midnight UTC), or a
/// relative age like `90m`, `36h`, `7d`, `2w` (before now).
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc).into());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().into());
        }
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        return Ok(t.and_utc().into());
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        format!("bad date {s:?}: use 2024-05-01, 2024-05-01T12:00:00Z or an age like 36h / 7d")
    })?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        "w" => n * 7 * 86400,
        _ => {
            return Err(format!(
                "bad date {s:?}: unknown unit {unit:?} (use s, m, h, d or w)"
            ))
        }
    };
    now.checked_sub(std::time::Duration::from_secs(secs))
        .ok_or_else(|| format!("date {s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_match_wins() {
        let f = Filters::new(
            &[
                (false, "*".into()),
                (true, "*.txt".into()),
                (false, "skip/*".into()),
            ],
            None,
        )
        .unwrap();
        assert!(f.includes("a/b.txt"));
        assert!(!f.includes("a/b.bin"));
        assert!(!f.includes("skip/x.txt"));
        assert!(Filters::default().includes("anything"));
        assert!(Filters::new(&[(true, "a[".into())], None).is_err());
    }

    #[test]
    fn since_parses() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        assert_eq!(
            parse_since("1970-01-02", now).unwrap(),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86400)
        );
        assert_eq!(
            parse_since("2h", now).unwrap(),
            now - std::time::Duration::from_secs(7200)
        );
        assert_eq!(
            parse_since("1970-01-01T00:01:00Z", now).unwrap(),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(60)
        );
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("5y", now).is_err());
    }
}
