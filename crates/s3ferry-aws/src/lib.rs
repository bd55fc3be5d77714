//! The S3 side of s3ferry: the only crate that names `aws_sdk_*` types.
//!
//! [`S3Store`] implements [`s3ferry_store::Store`] on aws-sdk-s3 with the standard credential
//! chain, profiles, custom endpoints (path-style by default there) and one error mapping
//! function (`error::map_sdk_error`). [`BatchOps`] drives the real S3 Batch Operations service
//! (S3 Control jobs and their IAM role).

mod batch_ops;
mod cloudfront;
mod creds;
mod error;
mod list;
mod s3;
pub mod settings;
mod sqs;

pub use batch_ops::{
    copy_role_policy, partition_of, trust_policy, BatchOps, BatchOpsConfig, CopyJobSpec, JobStatus,
    ManifestSpec, BATCH_OPS_PRINCIPAL, ROLE_POLICY_NAME,
};
pub use cloudfront::{CloudFrontConfig, CloudFrontInvalidator};
pub use list::ListMode;
pub use s3::{S3Config, S3Store, SseCustomerKey, MAX_SINGLE_PUT};
pub use sqs::{SqsConfig, SqsQueue};
