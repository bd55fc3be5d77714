//! Dev-only helpers for s3ferry's tests: the store conformance suite, the env gate for tests
//! that need a real S3-protocol server, and unique bucket names.

pub mod conformance;

/// Env var naming the S3 endpoint integration tests run against (`scripts/test` sets it).
pub const S3_ENDPOINT_ENV: &str = "S3FERRY_TEST_S3_ENDPOINT";

/// The endpoint of the local S3 server for integration tests, or `None` after printing a loud
/// skip line to stderr (so a green run without the server is visibly incomplete).
#[allow(clippy::print_stderr)]
pub fn s3_test_endpoint() -> Option<String> {
    match std::env::var(S3_ENDPOINT_ENV) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ => {
            eprintln!(
                "\n*** SKIPPED: S3 tests need {S3_ENDPOINT_ENV}; run scripts/test (it starts the local server) ***\n"
            );
            None
        }
    }
}

/// Env var naming the endpoint of the local AWS emulator (moto: SQS, CloudFront, IAM) that
/// `scripts/test` starts with `scripts/local-aws`.
pub const AWS_ENDPOINT_ENV: &str = "S3FERRY_TEST_AWS_ENDPOINT";

/// The local AWS emulator's endpoint, or `None` after a loud skip line.
#[allow(clippy::print_stderr)]
pub fn aws_test_endpoint() -> Option<String> {
    match std::env::var(AWS_ENDPOINT_ENV) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ => {
            eprintln!(
                "\n*** SKIPPED: tests of AWS services need {AWS_ENDPOINT_ENV}; run scripts/test (it starts moto) ***\n"
            );
            None
        }
    }
}

/// A valid, unique bucket name starting with `prefix` (lowercased; characters S3 refuses become
/// `-`), at most 63 characters.
pub fn unique_bucket(prefix: &str) -> String {
    let mut p: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    p = p.trim_matches('-').to_string();
    if p.is_empty() {
        p = "t".into();
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let id = &id[..16];
    p.truncate(63 - id.len() - 1);
    let p = p.trim_end_matches('-');
    format!("{p}-{id}")
}

/// A unique key prefix (`name-xxxxxxxx/`) so runs against a shared store do not collide.
pub fn unique_prefix(name: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{name}-{}/", &id[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_are_valid_and_unique() {
        let a = unique_bucket("S3ferry_Conformance::Test");
        let b = unique_bucket("S3ferry_Conformance::Test");
        assert_ne!(a, b);
        assert!(s3ferry_store::key::validate_bucket(&a).is_ok(), "{a}");
        let long = unique_bucket(&"x".repeat(100));
        assert!(
            long.len() <= 63 && s3ferry_store::key::validate_bucket(&long).is_ok(),
            "{long}"
        );
        assert!(s3ferry_store::key::validate_bucket(&unique_bucket("--")).is_ok());
    }
}
