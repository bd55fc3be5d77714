//! A lease (distributed lock) held in an object of the store itself, built only on conditional
//! writes: created with If-None-Match: *, renewed and released with If-Match on the ETag the
//! holder last wrote. Nodes never compare clocks: a waiter takes over a lease whose ETag has not
//! changed for the whole lease timeout *as measured by the waiter's own monotonic clock*, and
//! the takeover is itself conditional, so two waiters cannot both win. Every acquisition bumps a
//! fencing counter; a holder that was paused past the timeout finds its next renewal refused
//! (412) and must stop writing.

use std::time::Duration;

use bytes::Bytes;
use s3ferry_store::{DynStore, ErrorKind, PutMode, PutOptions, StoreError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// What the lease object holds (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseBody {
    pub format: u32,
    /// The holder (or last holder).
    pub node: String,
    /// Bumped on every acquisition and takeover.
    pub fence: u64,
    /// False once released.
    pub held: bool,
    /// Renewals by this holder (every write changes the ETag, even with the same holder).
    pub renewals: u64,
    /// The holder's lease timeout, for humans reading the object.
    pub timeout_secs: u64,
    /// The holder's wall clock at the last write, for humans (never compared).
    pub written_at: String,
}

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The lease object's key.
    pub key: String,
    /// This node's id (shown to others waiting).
    pub node: String,
    /// A lease not rewritten for this long may be taken over.
    pub timeout: Duration,
    /// Give up acquiring after this long.
    pub wait: Duration,
    /// How often a waiter looks at the lease again.
    pub poll: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{store} has no conditional writes, so --lock cannot be held safely there")]
    Unsupported { store: String },
    #[error("lease {key} is held by {holder}: gave up after waiting {waited:?} (--lock-wait)")]
    WaitExpired {
        key: String,
        holder: String,
        waited: Duration,
    },
    #[error("lease {key} was taken over by {by}; this node must stop writing")]
    Lost { key: String, by: String },
    #[error("lease {key}: {source}")]
    Store {
        key: String,
        #[source]
        source: StoreError,
    },
    #[error("lease {key} holds something that is not a lease ({why}); remove it or pick another --lock key")]
    Garbled { key: String, why: String },
}

/// A held lease. Renew it well within the timeout; release it when done.
#[derive(Debug)]
pub struct Lease {
    store: DynStore,
    cfg: LeaseConfig,
    etag: String,
    body: LeaseBody,
    /// When (our monotonic clock) we last wrote the lease: a waiter may take it over once
    /// `timeout` has passed since, whatever we believe.
    written: Instant,
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Lease {
    /// Take the lease, waiting up to `cfg.wait` for a holder to release it or go stale.
    pub async fn acquire(store: DynStore, cfg: LeaseConfig) -> Result<Lease, LeaseError> {
        if !store.capabilities().conditional_writes {
            return Err(LeaseError::Unsupported {
                store: store.describe(),
            });
        }
        let started = Instant::now();
        // The ETag we saw last and since when (our monotonic clock) it has not changed.
        let mut seen: Option<(String, Instant)> = None;
        loop {
            let fresh = LeaseBody {
                format: 1,
                node: cfg.node.clone(),
                fence: 1,
                held: true,
                renewals: 0,
                timeout_secs: cfg.timeout.as_secs(),
                written_at: now_text(),
            };
            match Self::write(&store, &cfg.key, &fresh, PutMode::Create).await {
                Ok(etag) => return Ok(Self::held(store, cfg, etag, fresh)),
                Err(e) if is_lost_race(&e) => {}
                Err(e) => return Err(store_err(&cfg.key, e)),
            }
            let holder = match Self::read(&store, &cfg.key).await? {
                None => continue, // released by deletion in between: try to create again
                Some((etag, cur)) => {
                    let holder = cur.node.clone();
                    let stale = match &seen {
                        Some((e, since)) if *e == etag => since.elapsed() >= cfg.timeout,
                        _ => {
                            seen = Some((etag.clone(), Instant::now()));
                            false
                        }
                    };
                    if !cur.held || stale {
                        if stale {
                            tracing::warn!(
                                "lease {} held by {} was not renewed for {:?}; taking it over",
                                cfg.key,
                                cur.node,
                                cfg.timeout
                            );
                        }
                        let next = LeaseBody {
                            fence: cur.fence + 1,
                            ..fresh
                        };
                        match Self::write(&store, &cfg.key, &next, PutMode::Update { etag }).await {
                            Ok(etag) => return Ok(Self::held(store, cfg, etag, next)),
                            Err(e) if is_lost_race(&e) => {
                                seen = None;
                                continue;
                            }
                            Err(e) => return Err(store_err(&cfg.key, e)),
                        }
                    }
                    holder
                }
            };
            if started.elapsed() >= cfg.wait {
                return Err(LeaseError::WaitExpired {
                    key: cfg.key.clone(),
                    holder,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(cfg.poll.min(cfg.wait.saturating_sub(started.elapsed()))).await;
        }
    }

    fn held(store: DynStore, cfg: LeaseConfig, etag: String, body: LeaseBody) -> Lease {
        tracing::info!(
            "holding lease {} (fence {}) as {}",
            cfg.key,
            body.fence,
            cfg.node
        );
        Lease {
            store,
            cfg,
            etag,
            body,
            written: Instant::now(),
        }
    }

    async fn write(
        store: &DynStore,
        key: &str,
        body: &LeaseBody,
        mode: PutMode,
    ) -> Result<String, StoreError> {
        let data = serde_json::to_vec_pretty(body).unwrap_or_default();
        let opts = PutOptions::new()
            .mode(mode)
            .content_type(Some("application/json".into()));
        let res = store.put(key, Bytes::from(data), opts).await?;
        match res.etag {
            Some(e) => Ok(e),
            // Without the ETag we cannot renew: read it back.
            None => Ok(store.head(key).await?.etag.unwrap_or_default()),
        }
    }

    async fn read(store: &DynStore, key: &str) -> Result<Option<(String, LeaseBody)>, LeaseError> {
        let got = match store.get(key, Default::default()).await {
            Ok(g) => g,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_err(key, e)),
        };
        let etag = got.meta.etag.clone().unwrap_or_default();
        let data = got.bytes().await.map_err(|e| store_err(key, e))?;
        let body: LeaseBody = serde_json::from_slice(&data).map_err(|e| LeaseError::Garbled {
            key: key.to_string(),
            why: e.to_string(),
        })?;
        Ok(Some((etag, body)))
    }

    /// Rewrite the lease (If-Match on our last ETag). `Lost` if someone took it over: stop
    /// writing at once.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let next = LeaseBody {
            renewals: self.body.renewals + 1,
            written_at: now_text(),
            ..self.body.clone()
        };
        let mode = PutMode::Update {
            etag: self.etag.clone(),
        };
        let sent = Instant::now();
        match Self::write(&self.store, &self.cfg.key, &next, mode).await {
            Ok(etag) => {
                self.etag = etag;
                self.body = next;
                self.written = sent;
                Ok(())
            }
            Err(e) if is_lost_race(&e) || e.kind == ErrorKind::NotFound => {
                let by = match Self::read(&self.store, &self.cfg.key).await {
                    Ok(Some((_, b))) => b.node,
                    _ => "another node".into(),
                };
                Err(LeaseError::Lost {
                    key: self.cfg.key.clone(),
                    by,
                })
            }
            Err(e) => Err(store_err(&self.cfg.key, e)),
        }
    }

    /// Give the lease up (If-Match): the next node takes it at once.
    pub async fn release(self) -> Result<(), LeaseError> {
        let next = LeaseBody {
            held: false,
            written_at: now_text(),
            ..self.body.clone()
        };
        let mode = PutMode::Update {
            etag: self.etag.clone(),
        };
        match Self::write(&self.store, &self.cfg.key, &next, mode).await {
            Ok(_) => Ok(()),
            Err(e) if is_lost_race(&e) => Err(LeaseError::Lost {
                key: self.cfg.key.clone(),
                by: "another node".into(),
            }),
            Err(e) => Err(store_err(&self.cfg.key, e)),
        }
    }

    /// The fencing counter of this holding: strictly greater than every earlier holder's.
    pub fn fence(&self) -> u64 {
        self.body.fence
    }

    pub fn key(&self) -> &str {
        &self.cfg.key
    }

    /// Whether the timeout has passed since the lease was last written: another node may hold
    /// it now, so nothing may be written until a renewal succeeds.
    pub fn outlived(&self) -> bool {
        self.written.elapsed() >= self.cfg.timeout
    }

    /// How often to renew: a third of the timeout.
    pub fn renew_every(&self) -> Duration {
        self.cfg.timeout / 3
    }
}

/// 412 (someone else wrote first), an existing object on create, or 409 (a concurrent
/// conditional write): we lost this round, look again.
fn is_lost_race(e: &StoreError) -> bool {
    matches!(
        e.kind,
        ErrorKind::PreconditionFailed | ErrorKind::AlreadyExists | ErrorKind::Conflict
    )
}

fn store_err(key: &str, source: StoreError) -> LeaseError {
    LeaseError::Store {
        key: key.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3ferry_store::local::LocalStore;
    use s3ferry_store::memory::MemoryStore;
    use s3ferry_store::StoreExt;
    use std::sync::Arc;

    fn cfg(node: &str) -> LeaseConfig {
        LeaseConfig {
            key: "p/.s3ferry.lock".into(),
            node: node.into(),
            timeout: Duration::from_secs(60),
            wait: Duration::from_secs(180),
            poll: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_holder_at_a_time_and_release_hands_over() {
        let store: DynStore = Arc::new(MemoryStore::new());
        let a = Lease::acquire(store.clone(), cfg("a")).await.unwrap();
        assert_eq!(a.fence(), 1);
        // b waits while a renews; a releases; b gets it with the next fence.
        let b = tokio::spawn(Lease::acquire(store.clone(), cfg("b")));
        let mut a = a;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            a.renew().await.unwrap();
        }
        assert!(!b.is_finished(), "b must wait while a renews");
        a.release().await.unwrap();
        let b = b.await.unwrap().unwrap();
        assert_eq!(b.fence(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_lease_is_taken_over_and_its_holder_is_fenced_off() {
        let store: DynStore = Arc::new(MemoryStore::new());
        let mut a = Lease::acquire(store.clone(), cfg("a")).await.unwrap();
        // a stops renewing (paused, killed): b takes over after the timeout by its own clock.
        let t0 = Instant::now();
        let b = Lease::acquire(store.clone(), cfg("b")).await.unwrap();
        assert!(
            t0.elapsed() >= Duration::from_secs(60),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(b.fence(), 2);
        match a.renew().await {
            Err(LeaseError::Lost { by, .. }) => assert_eq!(by, "b"),
            other => panic!("a must have lost the lease: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_gives_up_with_the_holder_named() {
        let store: DynStore = Arc::new(MemoryStore::new());
        let mut a = Lease::acquire(store.clone(), cfg("node-a")).await.unwrap();
        let mut c = cfg("b");
        c.wait = Duration::from_secs(90);
        let waiter = tokio::spawn(Lease::acquire(store.clone(), c));
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            a.renew().await.unwrap();
        }
        match waiter.await.unwrap() {
            Err(e @ LeaseError::WaitExpired { .. }) => {
                assert!(e.to_string().contains("node-a"), "{e}")
            }
            other => panic!("expected the wait to expire: {other:?}"),
        }
    }

    #[tokio::test]
    async fn stores_without_conditional_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(LocalStore::new(dir.path()));
        let e = Lease::acquire(store, cfg("a")).await.unwrap_err();
        assert!(matches!(e, LeaseError::Unsupported { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_foreign_object_at_the_lease_key_is_reported() {
        let mem = MemoryStore::new();
        mem.put_bytes("p/.s3ferry.lock", "not json").await.unwrap();
        let store: DynStore = Arc::new(mem);
        let e = Lease::acquire(store, cfg("a")).await.unwrap_err();
        assert!(matches!(e, LeaseError::Garbled { .. }), "{e}");
    }
}
