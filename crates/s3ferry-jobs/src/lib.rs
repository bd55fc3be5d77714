//! s3ferry jobs. Each job is a module with its options and a `run`; jobs compose the engine
//! and never reach into one another: [`sync`], [`pipe`], [`bisync`], [`batch`], [`bundle`].

pub mod archive;
pub mod batch;
pub mod bisync;
pub mod bundle;
pub mod check;
pub mod objects;
pub mod pipe;
pub mod places;
pub mod sync;

use async_trait::async_trait;
use s3ferry_store::{DynStore, StoreError};

/// Opens the store of one bucket (the CLI knows endpoints, profiles and layers): for jobs whose
/// inputs name buckets (manifests, inventories, queue messages).
#[async_trait]
pub trait Buckets: Send + Sync {
    /// `source`: the bucket is read from (it may have its own endpoint and credentials).
    async fn open(&self, bucket: &str, source: bool) -> Result<DynStore, StoreError>;
}
