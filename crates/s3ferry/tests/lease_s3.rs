//! The S3 lease (`--lock` of bisync) against the local S3 server, whose conditional writes are
//! real: one holder at a time, a released lease handed over, a stale one taken over with a
//! higher fence and its old holder refused.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Ctx;
use s3ferry_engine::lease::{Lease, LeaseConfig, LeaseError};
use s3ferry_store::DynStore;

fn cfg(node: &str, timeout_ms: u64, wait_ms: u64) -> LeaseConfig {
    LeaseConfig {
        key: "p/.s3ferry.lock".into(),
        node: node.into(),
        timeout: Duration::from_millis(timeout_ms),
        wait: Duration::from_millis(wait_ms),
        poll: Duration::from_millis(20),
    }
}

#[test]
fn lease_on_a_real_server() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("lease");
    let store: DynStore = Arc::new(b.store.clone());
    b.block_on(async {
        let mut a = Lease::acquire(store.clone(), cfg("a", 60_000, 1_000))
            .await
            .expect("a takes the free lease");
        assert_eq!(a.fence(), 1);
        // While a holds it (and renews), b gives up after its wait, naming a.
        a.renew().await.expect("renew");
        match Lease::acquire(store.clone(), cfg("b", 60_000, 300)).await {
            Err(e @ LeaseError::WaitExpired { .. }) => {
                assert!(e.to_string().contains("held by a"), "{e}")
            }
            other => panic!("b must not get a held lease: {other:?}"),
        }
        a.release().await.expect("release");
        // Released: b gets it at once, with the next fence.
        let b1 = Lease::acquire(store.clone(), cfg("b", 60_000, 1_000))
            .await
            .expect("b takes the released lease");
        assert_eq!(b1.fence(), 2);
        // b goes silent; c takes over once the lease has not changed for c's timeout.
        let c = Lease::acquire(store.clone(), cfg("c", 200, 5_000))
            .await
            .expect("c takes the stale lease over");
        assert_eq!(c.fence(), 3);
        let mut b1 = b1;
        match b1.renew().await {
            Err(LeaseError::Lost { by, .. }) => assert_eq!(by, "c"),
            other => panic!("b's renewal must be refused: {other:?}"),
        }
        c.release().await.expect("release c");
    });
}

/// F22: many nodes start at the same instant on a free lease: exactly one holds it (fence 1);
/// the others wait and give up naming the holder; none gets a fence of its own meanwhile.
#[test]
fn nodes_starting_together_get_exactly_one_lease() {
    let Some(ctx) = Ctx::new() else { return };
    let b = ctx.bucket("lease-race");
    let store: DynStore = Arc::new(b.store.clone());
    b.block_on(async {
        let tries = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(
                async move { Lease::acquire(store, cfg(&format!("n{i}"), 60_000, 500)).await },
            )
        });
        let results = futures::future::join_all(tries).await;
        let mut holders = Vec::new();
        for r in results {
            match r.expect("task") {
                Ok(l) => holders.push(l),
                Err(e @ LeaseError::WaitExpired { .. }) => {
                    assert!(e.to_string().contains("held by n"), "{e}")
                }
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!(holders.len(), 1, "exactly one node holds the lease");
        assert_eq!(holders[0].fence(), 1);
        if let Some(l) = holders.pop() {
            l.release().await.expect("release");
        }
    });
}
