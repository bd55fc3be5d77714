//! The one conformance suite (s3ferry-testkit) on the in-memory and local backends, bare and
//! behind the retry + limit layers. The S3 backend runs the same suite in s3ferry-aws.

use std::sync::Arc;

use s3ferry_store::layer::{LimitStore, RetryPolicy, RetryStore};
use s3ferry_store::local::LocalStore;
use s3ferry_store::memory::MemoryStore;
use s3ferry_store::DynStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    s3ferry_testkit::conformance::run_all(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    // fsync off: the suite writes ~1,000 small files and fsync under a loaded CI box dominates;
    // the sync tests run the local store with fsync on.
    s3ferry_testkit::conformance::run_all(&LocalStore::new(dir.path()).with_fsync(false)).await;
    // Nothing in flight is left behind.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.contains(".s3ferry-tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layered_store_conforms() {
    let inner: DynStore = Arc::new(MemoryStore::new());
    // The suite provokes refusals that are retryable (a wrong checksum is Corrupt): keep the
    // backoff short so they give up quickly.
    let policy = RetryPolicy {
        base_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    let layered = RetryStore::with_policy(Arc::new(LimitStore::new(inner)), policy);
    s3ferry_testkit::conformance::run_all(&layered).await;
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}
