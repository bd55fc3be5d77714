//! s3ferry jobs. Each job is a module with its options and a `run`; jobs compose the engine
//! and never reach into one another. Built: [`sync`]. Planned: bisync, pipe, batch, bundle,
//! archive.

pub mod bisync;
pub mod sync;
