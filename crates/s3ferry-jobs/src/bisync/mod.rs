//! Two-way sync of a local directory and an S3 prefix (in progress): the three-way planner
//! ([`plan`]) and, in the engine, the S3 lease and the CDN invalidation port it builds on.

pub mod plan;
