//! Refusing a sync whose source and destination overlap: the same directory or prefix, or one
//! inside the other. Such a sync copies into what it reads (a tree that grows every run) and,
//! with `--delete`, deletes from it. Allowed only when every key of the inner side, seen from
//! the outer one, is excluded by the filters (`sync dir dir/backup --exclude 'backup/*'`).

use std::path::{Component, Path, PathBuf};

use s3ferry_store::Location;

/// One rule of the command line: `(is_include, pattern)`, in order.
pub type Rules<'a> = &'a [(bool, String)];

/// [`check`] with the endpoints the command line gives each side (`--source-endpoint-url`
/// for the source, else `--endpoint-url`).
pub fn check_cli(
    g: &crate::cli::Global,
    src: &Location,
    dst: &Location,
    rules: Rules<'_>,
) -> Result<(), crate::Fatal> {
    let src_endpoint = g
        .source_endpoint_url
        .as_deref()
        .or(g.endpoint_url.as_deref());
    check(src, dst, src_endpoint, g.endpoint_url.as_deref(), rules).map_err(crate::Fatal)
}

/// `Err(message)` when `src` and `dst` overlap and the filters do not exclude the overlap.
/// `src_endpoint`/`dst_endpoint` are the endpoints each S3 side would use (`None`: AWS).
pub fn check(
    src: &Location,
    dst: &Location,
    src_endpoint: Option<&str>,
    dst_endpoint: Option<&str>,
    rules: Rules<'_>,
) -> Result<(), String> {
    match (src, dst) {
        (Location::Local(s), Location::Local(d)) => {
            let (cs, cd) = (resolve(s), resolve(d));
            let both = format!(
                "source {} and destination {} overlap",
                s.display(),
                d.display()
            );
            if cs == cd {
                return Err(format!("{both}: they are the same directory"));
            }
            for (outer, inner, what, other) in [
                (&cs, &cd, "destination", "source"),
                (&cd, &cs, "source", "destination"),
            ] {
                if let Ok(rel) = inner.strip_prefix(outer) {
                    let prefix = rel_key_prefix(rel);
                    if !prefix.is_empty() && all_excluded(&prefix, rules) {
                        continue;
                    }
                    return Err(format!(
                        "{both}: the {what} is inside the {other} (at {prefix}), so a sync would copy into what it reads; exclude it with --exclude '{prefix}*' or pick another directory"
                    ));
                }
            }
            Ok(())
        }
        (
            Location::S3 {
                bucket: sb,
                prefix: sp,
            },
            Location::S3 {
                bucket: db,
                prefix: dp,
            },
        ) => {
            let norm = |e: Option<&str>| e.map(|e| e.trim_end_matches('/').to_ascii_lowercase());
            if sb != db || norm(src_endpoint) != norm(dst_endpoint) {
                return Ok(());
            }
            let both = format!("source s3://{sb}/{sp} and destination s3://{db}/{dp} overlap");
            if sp == dp {
                return Err(format!("{both}: they are the same prefix"));
            }
            for (outer, inner, what, other) in [
                (sp, dp, "destination", "source"),
                (dp, sp, "source", "destination"),
            ] {
                if let Some(rel) = inner.strip_prefix(outer.as_str()) {
                    if all_excluded(rel, rules) {
                        continue;
                    }
                    return Err(format!(
                        "{both}: the {what} is inside the {other} (at {rel}), so a sync would copy into what it reads; exclude it with --exclude '{rel}*' or pick another prefix"
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `rel` as a key prefix: `a/b` -> `a/b/`; empty for an empty path.
fn rel_key_prefix(rel: &Path) -> String {
    let mut out = String::new();
    for c in rel.components() {
        out.push_str(&c.as_os_str().to_string_lossy());
        out.push('/');
    }
    out
}

/// The canonical form of `p`, also when it (or its tail) does not exist yet: the deepest
/// existing ancestor canonicalised, the rest appended (`..` applied lexically).
fn resolve(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut existing = abs.clone();
    let mut rest: Vec<Component<'_>> = Vec::new();
    let comps: Vec<Component<'_>> = abs.components().collect();
    let mut n = comps.len();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for comp in rest.iter().rev() {
                match comp {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return out;
        }
        if n == 0 {
            return abs;
        }
        n -= 1;
        rest.push(comps[n]);
        existing = comps[..n].iter().collect();
    }
}

/// Do the rules exclude every key that starts with `prefix`? Conservative: true only when some
/// exclude rule matches every such key (a literal start that `prefix` begins with, then `*`
/// or `**`), and no later include rule could match one of them.
fn all_excluded(prefix: &str, rules: Rules<'_>) -> bool {
    let meta = |c: char| matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\');
    let mut excluded = false;
    for (include, pat) in rules {
        let lit_end = pat.find(meta).unwrap_or(pat.len());
        let lit = &pat[..lit_end];
        if *include {
            // Could it match a key under prefix? Only if its literal start and the prefix agree.
            if lit.starts_with(prefix) || prefix.starts_with(lit) {
                excluded = false;
            }
        } else {
            let tail = &pat[lit_end..];
            if (tail == "*" || tail == "**") && prefix.starts_with(lit) {
                excluded = true;
            }
        }
    }
    excluded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(r: &[(bool, &str)]) -> Vec<(bool, String)> {
        r.iter().map(|(i, p)| (*i, p.to_string())).collect()
    }

    #[test]
    fn exclusion_of_a_subtree() {
        assert!(all_excluded("backup/", &rules(&[(false, "backup/*")])));
        assert!(all_excluded("backup/", &rules(&[(false, "back*")])));
        assert!(all_excluded("backup/", &rules(&[(false, "*")])));
        assert!(!all_excluded("backup/", &rules(&[])));
        assert!(!all_excluded("backup/", &rules(&[(false, "backup/*.tmp")])));
        assert!(!all_excluded("backup/", &rules(&[(false, "other/*")])));
        assert!(!all_excluded(
            "backup/",
            &rules(&[(false, "backup/*"), (true, "backup/keep")])
        ));
        assert!(all_excluded(
            "backup/",
            &rules(&[(false, "backup/*"), (true, "other/*")])
        ));
        assert!(!all_excluded(
            "backup/",
            &rules(&[(false, "backup/*"), (true, "*.txt")])
        ));
    }

    #[test]
    fn s3_prefixes() {
        let l = |s: &str| Location::parse(s).unwrap();
        let none: Vec<(bool, String)> = Vec::new();
        let c = |a: &str, b: &str| check(&l(a), &l(b), None, None, &none);
        assert!(c("s3://bkt/a", "s3://bkt/a/").is_err());
        assert!(c("s3://bkt", "s3://bkt/x").is_err());
        assert!(c("s3://bkt/x", "s3://bkt").is_err());
        assert!(c("s3://bkt/a", "s3://bkt/ab").is_ok());
        assert!(c("s3://bkt/a", "s3://other/a").is_ok());
        assert!(check(
            &l("s3://bkt/a"),
            &l("s3://bkt/a"),
            Some("http://x"),
            None,
            &none
        )
        .is_ok());
        let ex = rules(&[(false, "x/*")]);
        assert!(check(&l("s3://bkt"), &l("s3://bkt/x"), None, None, &ex).is_ok());
        assert!(check(&l("s3://bkt"), &l("s3://bkt"), None, None, &ex).is_err());
    }
}
