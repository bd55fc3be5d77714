//! Ports to services beyond the store, implemented by adapters in `s3ferry-aws` (and by
//! in-memory doubles in tests of the jobs): CDN invalidation for now; queues and batch
//! submitters as the jobs that need them land.

use async_trait::async_trait;
use s3ferry_store::Result;

/// Invalidates cached paths of a CDN distribution.
#[async_trait]
pub trait Invalidator: Send + Sync {
    /// Start one invalidation of `paths` (each starting with `/`, URL-encoded, possibly ending
    /// in `*`). `reference` makes a retried request idempotent. Returns the invalidation id.
    async fn invalidate(&self, paths: &[String], reference: &str) -> Result<String>;
}

/// Paths per invalidation request, and how many wildcard paths one may hold (CloudFront allows
/// 3,000 file paths or 15 wildcard paths in progress per distribution).
pub const MAX_INVALIDATION_PATHS: usize = 1000;
pub const MAX_INVALIDATION_WILDCARDS: usize = 15;

/// A key as an invalidation path: `/` + the key, with everything but unreserved characters and
/// `/` percent-encoded (CloudFront wants URL-encoded paths).
pub fn invalidation_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 1);
    out.push('/');
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The invalidation paths for the changed `keys` (relative to the distribution's origin
/// root): the exact paths while they fit `max_paths`; else each key collapsed to the deepest
/// directory wildcard (`/a/b/*`) that keeps the number of paths within `max_wildcards`, down to
/// `/*` for everything. Sorted, without duplicates.
pub fn invalidation_paths(keys: &[String], max_paths: usize, max_wildcards: usize) -> Vec<String> {
    let mut exact: Vec<String> = keys.iter().map(|k| invalidation_path(k)).collect();
    exact.sort();
    exact.dedup();
    if exact.len() <= max_paths {
        return exact;
    }
    let depth = keys
        .iter()
        .map(|k| k.matches('/').count())
        .max()
        .unwrap_or(0);
    for d in (0..=depth).rev() {
        let mut set: Vec<String> = keys
            .iter()
            .map(|k| {
                let dirs: Vec<&str> = k.split('/').collect();
                let keep = d.min(dirs.len() - 1);
                let mut p = invalidation_path(&dirs[..keep].join("/"));
                if keep > 0 {
                    p.push('/');
                }
                p.push('*');
                p
            })
            .collect();
        set.sort();
        set.dedup();
        if set.len() <= max_wildcards {
            return set;
        }
    }
    vec!["/*".to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paths_are_url_encoded_and_exact_while_they_fit() {
        let k = keys(&["a b/c+d.html", "index.html", "é.txt", "index.html"]);
        assert_eq!(
            invalidation_paths(&k, 10, 2),
            vec!["/%C3%A9.txt", "/a%20b/c%2Bd.html", "/index.html"]
        );
    }

    #[test]
    fn many_paths_collapse_to_the_deepest_wildcards_that_fit() {
        let mut k = Vec::new();
        for d in ["img/a", "img/b", "css"] {
            for i in 0..5 {
                k.push(format!("{d}/f{i}"));
            }
        }
        // 15 paths, at most 10 exact: one wildcard per directory.
        assert_eq!(
            invalidation_paths(&k, 10, 15),
            vec!["/css/*", "/img/a/*", "/img/b/*"]
        );
        // At most 2 wildcards: one level up.
        assert_eq!(invalidation_paths(&k, 10, 2), vec!["/css/*", "/img/*"]);
        // At most 1: everything.
        assert_eq!(invalidation_paths(&k, 10, 1), vec!["/*"]);
        // A file at the top counts as the root wildcard.
        let mut k2 = k.clone();
        k2.push("top.html".into());
        assert_eq!(invalidation_paths(&k2, 10, 2), vec!["/*"]);
    }
}
