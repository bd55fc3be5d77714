//! Layers: stores that wrap a store to add one cross-cutting behaviour.
//!
//! Each layer implements [`Store`](crate::Store) over an `Arc<dyn Store>`, so they stack in any
//! order. The order the CLI uses, outermost first, and why:
//!
//! ```text
//! RetryStore -> LimitStore -> [FaultStore] -> backend
//! ```
//!
//! * Retry is outside the limit: every attempt takes its own concurrency permit, so a request
//!   sleeping in backoff holds none, and a throttled attempt lowers the limit for everybody.
//! * Faults are inside the limit, so injected 503s look to the limit and the retry layer exactly
//!   like real ones.
//!
//! ```ignore
//! let store: DynStore = Arc::new(RetryStore::new(
//!     Arc::new(LimitStore::new(Arc::new(FaultStore::new(backend, "put:throttle@2x3".parse()?)))),
//! ));
//! ```

#[cfg(feature = "fault")]
pub mod fault;
pub mod limit;
pub mod retry;

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(feature = "fault")]
pub use fault::{FaultSpec, FaultSpecError, FaultStore};
pub use limit::{LimitConfig, LimitGauge, LimitStore, Pacer};
pub use retry::{OpCounts, RetryBudget, RetryCounts, RetryPolicy, RetryStats, RetryStore};
