//! s3ferry jobs. Each job is a module with its options and a `run`; jobs compose the engine
//! and never reach into one another. Built: [`sync`], [`pipe`]. Planned: bisync, batch,
//! bundle, archive.

pub mod batch;
pub mod bisync;
pub mod pipe;
pub mod sync;
