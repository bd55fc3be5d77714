//! Wildcards in object keys, as s5cmd has them: `*` matches any run of characters (across `/`),
//! `?` one character, `[abc]` / `[a-z]` / `[!a-z]` one of a class; `\` escapes the next
//! character. A key pattern is listed from its *literal prefix* (everything before the first
//! wildcard), so `s3://b/logs/2026-*/*.gz` lists only `logs/2026-` and matches as it goes; the
//! keys it matches are named relative to its *base* (the literal prefix up to its last `/`),
//! so they keep the directories after the base when copied: `logs/2026-01/a.gz` → `2026-01/a.gz`.

use globset::{GlobBuilder, GlobMatcher};

/// A key pattern with at least one wildcard.
#[derive(Clone, Debug)]
pub struct Wildcard {
    /// Everything before the first wildcard, unescaped: the listing prefix.
    pub literal: String,
    /// The literal prefix up to and including its last `/` (empty if it has none).
    pub base: String,
    matcher: GlobMatcher,
}

/// Does `s` hold an unescaped wildcard (`*`, `?` or `[`)?
pub fn has_wildcard(s: &str) -> bool {
    first_wildcard(s).is_some()
}

/// Byte index of the first unescaped wildcard character.
fn first_wildcard(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '*' | '?' | '[' => return Some(i),
            _ => {}
        }
    }
    None
}

/// `s` with its escapes removed (`\*` → `*`).
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if !escaped && c == '\\' {
            escaped = true;
            continue;
        }
        escaped = false;
        out.push(c);
    }
    out
}

impl Wildcard {
    /// Parse a key pattern: `Ok(None)` when it has no wildcard (a plain key or prefix, whose
    /// escapes the caller removes with [`unescape`]).
    pub fn parse(pattern: &str) -> Result<Option<Self>, String> {
        let Some(at) = first_wildcard(pattern) else {
            return Ok(None);
        };
        let literal = unescape(&pattern[..at]);
        let base = match literal.rfind('/') {
            Some(i) => literal[..=i].to_string(),
            None => String::new(),
        };
        let matcher = GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()
            .map_err(|e| format!("bad wildcard {pattern:?}: {e}"))?
            .compile_matcher();
        Ok(Some(Self {
            literal,
            base,
            matcher,
        }))
    }

    /// The pattern as given.
    pub fn pattern(&self) -> &str {
        self.matcher.glob().glob()
    }

    /// Does the whole key match?
    pub fn matches(&self, key: &str) -> bool {
        key.starts_with(&self.literal) && self.matcher.is_match(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefix_and_base() {
        let w = Wildcard::parse("logs/2026-*/*.gz").unwrap().unwrap();
        assert_eq!(w.literal, "logs/2026-");
        assert_eq!(w.base, "logs/");
        assert!(w.matches("logs/2026-01/a.gz"));
        assert!(w.matches("logs/2026-01/deep/b.gz"), "* crosses /");
        assert!(!w.matches("logs/2025-01/a.gz"));
        assert!(!w.matches("logs/2026-01/a.gzip"));
        let w = Wildcard::parse("*.txt").unwrap().unwrap();
        assert_eq!((w.literal.as_str(), w.base.as_str()), ("", ""));
        assert!(w.matches("a/b.txt"));
    }

    #[test]
    fn classes_single_characters_and_escapes() {
        let w = Wildcard::parse("d/file-?.[a-c]").unwrap().unwrap();
        assert!(w.matches("d/file-1.b"));
        assert!(!w.matches("d/file-12.b"));
        assert!(!w.matches("d/file-1.d"));
        assert!(
            Wildcard::parse(r"a\*b").unwrap().is_none(),
            "escaped: no wildcard"
        );
        assert_eq!(unescape(r"a\*b"), "a*b");
        let w = Wildcard::parse(r"x\*/*").unwrap().unwrap();
        assert_eq!(w.literal, "x*/");
        assert!(w.matches("x*/k"));
        assert!(!w.matches("xy/k"));
        assert!(
            Wildcard::parse("a/[").is_err(),
            "an unclosed class is an error"
        );
    }
}
