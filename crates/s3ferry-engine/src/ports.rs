//! Ports to services beyond the store, implemented by adapters in `s3ferry-aws` (and by
//! in-memory doubles in tests of the jobs): CDN invalidation (bisync) and work queues (bundle
//! workers).

use async_trait::async_trait;
use s3ferry_store::Result;

/// Invalidates cached paths of a CDN distribution.
#[async_trait]
pub trait Invalidator: Send + Sync {
    /// Start one invalidation of `paths` (each starting with `/`, URL-encoded, possibly ending
    /// in `*`). `reference` makes a retried request idempotent. Returns the invalidation id.
    async fn invalidate(&self, paths: &[String], reference: &str) -> Result<String>;
}

/// One message taken from a [`Queue`]: invisible to other receivers until its visibility
/// timeout passes, then delivered again unless it was deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMessage {
    pub id: String,
    pub body: String,
    /// The handle that extends, releases or deletes this delivery.
    pub receipt: String,
    /// How many times the message has been delivered (1 the first time).
    pub receive_count: u32,
}

/// A work queue with at-least-once delivery and visibility timeouts (SQS): how stateless
/// workers on many machines share work without a cluster protocol of our own.
#[async_trait]
pub trait Queue: Send + Sync {
    /// The queue, for messages (its URL).
    fn describe(&self) -> String;
    /// Enqueue one message; returns its id.
    async fn send(&self, body: &str) -> Result<String>;
    /// Up to `max` messages, waiting up to `wait` for the first (long poll); each stays
    /// invisible to other receivers for `visibility`.
    async fn receive(
        &self,
        max: u32,
        wait: std::time::Duration,
        visibility: std::time::Duration,
    ) -> Result<Vec<QueueMessage>>;
    /// Keep a delivery invisible for `visibility` from now (a heartbeat), or release it at once
    /// with zero.
    async fn set_visibility(&self, receipt: &str, visibility: std::time::Duration) -> Result<()>;
    /// The work is done: the message is gone for good.
    async fn delete(&self, receipt: &str) -> Result<()>;
}

/// An in-process [`Queue`] with real visibility timeouts: the double the jobs' unit tests use
/// (the real one is SQS, tested against a local emulator).
#[derive(Clone, Default)]
pub struct MemoryQueue {
    inner: std::sync::Arc<std::sync::Mutex<MemQueueState>>,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct MemQueueState {
    next_id: u64,
    /// id -> (body, visible again at, receive count, current receipt)
    messages: std::collections::BTreeMap<u64, MemMessage>,
    deleted: u64,
}

struct MemMessage {
    body: String,
    visible_at: std::time::Instant,
    receives: u32,
    receipt: String,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages not deleted yet (visible or in flight).
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages deleted so far.
    pub fn deleted(&self) -> u64 {
        self.lock().deleted
    }

    /// The receive count of each message left, by body.
    pub fn receive_counts(&self) -> Vec<(String, u32)> {
        self.lock()
            .messages
            .values()
            .map(|m| (m.body.clone(), m.receives))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemQueueState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(st: &mut MemQueueState, receipt: &str) -> Result<u64> {
        st.messages
            .iter()
            .find(|(_, m)| m.receipt == receipt)
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                s3ferry_store::StoreError::new(
                    s3ferry_store::ErrorKind::PreconditionFailed,
                    "queue",
                    "receipt handle is no longer valid (the message was received again)",
                )
            })
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    fn describe(&self) -> String {
        "memory queue".into()
    }

    async fn send(&self, body: &str) -> Result<String> {
        let id = {
            let mut st = self.lock();
            st.next_id += 1;
            let id = st.next_id;
            st.messages.insert(
                id,
                MemMessage {
                    body: body.to_string(),
                    visible_at: std::time::Instant::now(),
                    receives: 0,
                    receipt: String::new(),
                },
            );
            id
        };
        self.notify.notify_waiters();
        Ok(id.to_string())
    }

    async fn receive(
        &self,
        max: u32,
        wait: std::time::Duration,
        visibility: std::time::Duration,
    ) -> Result<Vec<QueueMessage>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let (got, next_visible) = {
                let mut st = self.lock();
                let now = std::time::Instant::now();
                let mut got = Vec::new();
                let mut next_visible: Option<std::time::Instant> = None;
                for (id, m) in st.messages.iter_mut() {
                    if got.len() as u32 >= max {
                        break;
                    }
                    if m.visible_at <= now {
                        m.receives += 1;
                        m.visible_at = now + visibility;
                        m.receipt = format!("{id}-{}", m.receives);
                        got.push(QueueMessage {
                            id: id.to_string(),
                            body: m.body.clone(),
                            receipt: m.receipt.clone(),
                            receive_count: m.receives,
                        });
                    } else {
                        next_visible =
                            Some(next_visible.map_or(m.visible_at, |t| t.min(m.visible_at)));
                    }
                }
                (got, next_visible)
            };
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            let mut until = deadline;
            if let Some(t) = next_visible {
                let t = tokio::time::Instant::from_std(t);
                if t < until {
                    until = t;
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn set_visibility(&self, receipt: &str, visibility: std::time::Duration) -> Result<()> {
        {
            let mut st = self.lock();
            let id = Self::find(&mut st, receipt)?;
            if let Some(m) = st.messages.get_mut(&id) {
                m.visible_at = std::time::Instant::now() + visibility;
            }
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn delete(&self, receipt: &str) -> Result<()> {
        let mut st = self.lock();
        let id = Self::find(&mut st, receipt)?;
        st.messages.remove(&id);
        st.deleted += 1;
        Ok(())
    }
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
