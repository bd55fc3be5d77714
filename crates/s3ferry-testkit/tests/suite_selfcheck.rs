//! The conformance suite checks itself on the in-memory and local stores (the store crate's
//! own tests run it too); a suite that fails on the reference stores is a broken suite.

use s3ferry_store::local::LocalStore;
use s3ferry_store::memory::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_passes_on_memory_store() {
    s3ferry_testkit::conformance::run_all(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_passes_on_local_store() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    s3ferry_testkit::conformance::run_all(&LocalStore::new(dir.path())).await;
}
