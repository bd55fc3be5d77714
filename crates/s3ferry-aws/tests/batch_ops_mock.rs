//! The S3 Batch Operations / IAM adapter against mocked SDK clients (aws-smithy-mocks): no
//! local server implements S3 Control, so these tests check the requests we build and how we
//! read the answers. The requests still go through the SDK's serialisation, endpoint rules and
//! signing; only the HTTP exchange is replaced.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_iam::operation::create_role::{CreateRoleError, CreateRoleOutput};
use aws_sdk_iam::operation::get_role::GetRoleOutput;
use aws_sdk_iam::operation::put_role_policy::PutRolePolicyOutput;
use aws_sdk_iam::types::error::EntityAlreadyExistsException;
use aws_sdk_iam::types::Role;
use aws_sdk_s3control::operation::create_job::{CreateJobInput, CreateJobOutput};
use aws_sdk_s3control::operation::describe_job::DescribeJobOutput;
use aws_sdk_s3control::operation::update_job_status::UpdateJobStatusOutput;
use aws_sdk_s3control::types::{JobDescriptor, JobFailure, JobProgressSummary};
use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
use aws_smithy_runtime_api::http::{Response as HttpResponse, StatusCode};
use aws_smithy_types::body::SdkBody;
use s3ferry_aws::{
    copy_role_policy, partition_of, trust_policy, BatchOps, CopyJobSpec, JobStatus, ManifestSpec,
    ROLE_POLICY_NAME,
};
use s3ferry_store::ErrorKind;
use serde_json::{json, Value};

const ACCOUNT: &str = "123456789012";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/s3ferry-batch";

fn batch_ops(mode: RuleMode, s3control: &[&Rule], iam: &[&Rule]) -> BatchOps {
    let s3control = mock_client!(aws_sdk_s3control, mode, s3control);
    let iam = mock_client!(aws_sdk_iam, RuleMode::Sequential, iam);
    BatchOps::from_clients(s3control, iam, ACCOUNT.into())
}

fn full_spec(manifest: ManifestSpec) -> CopyJobSpec {
    CopyJobSpec {
        manifest,
        target_bucket_arn: "arn:aws:s3:::dest-bucket".into(),
        target_prefix: Some("backup/".into()),
        storage_class: Some("standard_ia".into()),
        metadata_directive: Some("REPLACE".into()),
        checksum_algorithm: Some("crc64nvme".into()),
        report_bucket_arn: "arn:aws:s3:::report-bucket".into(),
        report_prefix: Some("reports/batch".into()),
        report_failed_only: true,
        role_arn: ROLE_ARN.into(),
        priority: 42,
        confirmation_required: true,
        client_request_token: "token-1".into(),
        description: "s3ferry copy".into(),
    }
}

/// A CreateJob rule that records every request and answers `job-<token>`.
fn recording_create_job() -> (Rule, Arc<Mutex<Vec<CreateJobInput>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let rule = mock!(aws_sdk_s3control::Client::create_job)
        .match_requests(move |req| {
            record.lock().expect("lock").push(req.clone());
            true
        })
        .then_compute_output(|req| {
            CreateJobOutput::builder()
                .job_id(format!("job-{}", req.client_request_token().unwrap_or("")))
                .build()
        });
    (rule, seen)
}

/// The parts of a CreateJob request, as plain strings, for readable assertions.
#[derive(Debug, PartialEq)]
struct Sent {
    account_id: Option<String>,
    role_arn: Option<String>,
    priority: Option<i32>,
    confirmation_required: Option<bool>,
    token: Option<String>,
    description: Option<String>,
    manifest_format: Option<String>,
    manifest_fields: Vec<String>,
    manifest_arn: Option<String>,
    manifest_etag: Option<String>,
    target: Option<String>,
    target_prefix: Option<String>,
    storage_class: Option<String>,
    metadata_directive: Option<String>,
    checksum_algorithm: Option<String>,
    report_bucket: Option<String>,
    report_prefix: Option<String>,
    report_format: Option<String>,
    report_enabled: Option<bool>,
    report_scope: Option<String>,
}

fn sent(req: &CreateJobInput) -> Sent {
    let s = |v: Option<&str>| v.map(str::to_string);
    let spec = req.manifest().and_then(|m| m.spec());
    let loc = req.manifest().and_then(|m| m.location());
    let copy = req.operation().and_then(|o| o.s3_put_object_copy());
    let report = req.report();
    Sent {
        account_id: s(req.account_id()),
        role_arn: s(req.role_arn()),
        priority: req.priority(),
        confirmation_required: req.confirmation_required(),
        token: s(req.client_request_token()),
        description: s(req.description()),
        manifest_format: s(spec.map(|s| s.format().as_str())),
        manifest_fields: spec
            .map(|s| s.fields().iter().map(|f| f.as_str().to_string()).collect())
            .unwrap_or_default(),
        manifest_arn: s(loc.map(|l| l.object_arn())),
        manifest_etag: s(loc.map(|l| l.e_tag())),
        target: s(copy.and_then(|c| c.target_resource())),
        target_prefix: s(copy.and_then(|c| c.target_key_prefix())),
        storage_class: s(copy.and_then(|c| c.storage_class()).map(|v| v.as_str())),
        metadata_directive: s(copy
            .and_then(|c| c.metadata_directive())
            .map(|v| v.as_str())),
        checksum_algorithm: s(copy
            .and_then(|c| c.checksum_algorithm())
            .map(|v| v.as_str())),
        report_bucket: s(report.and_then(|r| r.bucket())),
        report_prefix: s(report.and_then(|r| r.prefix())),
        report_format: s(report.and_then(|r| r.format()).map(|v| v.as_str())),
        report_enabled: report.map(|r| r.enabled()),
        report_scope: s(report.and_then(|r| r.report_scope()).map(|v| v.as_str())),
    }
}

fn expected_full(format: &str, fields: &[&str], arn: &str, etag: &str) -> Sent {
    Sent {
        account_id: Some(ACCOUNT.into()),
        role_arn: Some(ROLE_ARN.into()),
        priority: Some(42),
        confirmation_required: Some(true),
        token: Some("token-1".into()),
        description: Some("s3ferry copy".into()),
        manifest_format: Some(format.into()),
        manifest_fields: fields.iter().map(|f| f.to_string()).collect(),
        manifest_arn: Some(arn.into()),
        manifest_etag: Some(etag.into()),
        target: Some("arn:aws:s3:::dest-bucket".into()),
        target_prefix: Some("backup/".into()),
        storage_class: Some("STANDARD_IA".into()),
        metadata_directive: Some("REPLACE".into()),
        checksum_algorithm: Some("CRC64NVME".into()),
        report_bucket: Some("arn:aws:s3:::report-bucket".into()),
        report_prefix: Some("reports/batch".into()),
        report_format: Some("Report_CSV_20180820".into()),
        report_enabled: Some(true),
        report_scope: Some("FailedTasksOnly".into()),
    }
}

#[tokio::test]
async fn create_copy_job_sends_the_expected_request() {
    let (rule, seen) = recording_create_job();
    let ops = batch_ops(RuleMode::MatchAny, &[&rule], &[]);

    // CSV without version ids; the ETag as HeadObject gives it (quoted) is sent bare.
    let csv = full_spec(ManifestSpec::Csv {
        object_arn: "arn:aws:s3:::manifests/jobs/m.csv".into(),
        etag: "\"60e460c9d1046e73f7dde5043ac3ae85\"".into(),
        with_version_ids: false,
    });
    let id = ops.create_copy_job(&csv).await.expect("create csv job");
    assert_eq!(id, "job-token-1");

    // CSV with version ids.
    let versioned = full_spec(ManifestSpec::Csv {
        object_arn: "arn:aws:s3:::manifests/jobs/v.csv".into(),
        etag: "abc123".into(),
        with_version_ids: true,
    });
    ops.create_copy_job(&versioned)
        .await
        .expect("create versioned csv job");

    // An inventory manifest.json.
    let inventory = full_spec(ManifestSpec::Inventory {
        object_arn: "arn:aws:s3:::inv/src/cfg/2024-01-01T00-00Z/manifest.json".into(),
        etag: "def456".into(),
    });
    ops.create_copy_job(&inventory)
        .await
        .expect("create inventory job");

    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 3, "one request per job");
    assert_eq!(
        sent(&seen[0]),
        expected_full(
            "S3BatchOperations_CSV_20180820",
            &["Bucket", "Key"],
            "arn:aws:s3:::manifests/jobs/m.csv",
            "60e460c9d1046e73f7dde5043ac3ae85",
        )
    );
    assert_eq!(
        sent(&seen[1]),
        expected_full(
            "S3BatchOperations_CSV_20180820",
            &["Bucket", "Key", "VersionId"],
            "arn:aws:s3:::manifests/jobs/v.csv",
            "abc123",
        )
    );
    assert_eq!(
        sent(&seen[2]),
        expected_full(
            "S3InventoryReport_CSV_20161130",
            &[],
            "arn:aws:s3:::inv/src/cfg/2024-01-01T00-00Z/manifest.json",
            "def456",
        )
    );
    assert_eq!(rule.num_calls(), 3);
}

#[tokio::test]
async fn create_copy_job_leaves_unset_options_out() {
    let (rule, seen) = recording_create_job();
    let ops = batch_ops(RuleMode::MatchAny, &[&rule], &[]);
    let spec = CopyJobSpec {
        target_prefix: None,
        storage_class: None,
        metadata_directive: None,
        checksum_algorithm: None,
        report_prefix: None,
        report_failed_only: false,
        priority: 0,
        confirmation_required: false,
        client_request_token: String::new(),
        description: String::new(),
        ..full_spec(ManifestSpec::Csv {
            object_arn: "arn:aws:s3:::manifests/m.csv".into(),
            etag: "e1".into(),
            with_version_ids: false,
        })
    };
    // No token given: the SDK makes one (its test default is this fixed one).
    let id = ops.create_copy_job(&spec).await.expect("create job");
    assert_eq!(id, "job-00000000-0000-4000-8000-000000000000");
    let seen = seen.lock().expect("lock");
    let got = sent(&seen[0]);
    assert_eq!(
        got,
        Sent {
            priority: Some(0),
            confirmation_required: Some(false),
            token: Some("00000000-0000-4000-8000-000000000000".into()),
            description: None,
            target_prefix: None,
            storage_class: None,
            metadata_directive: None,
            checksum_algorithm: None,
            report_prefix: None,
            report_scope: Some("AllTasks".into()),
            manifest_arn: Some("arn:aws:s3:::manifests/m.csv".into()),
            manifest_etag: Some("e1".into()),
            ..expected_full("S3BatchOperations_CSV_20180820", &["Bucket", "Key"], "", "")
        }
    );
}

#[tokio::test]
async fn create_copy_job_rejects_bad_input_before_sending() {
    let (rule, _seen) = recording_create_job();
    let ops = batch_ops(RuleMode::MatchAny, &[&rule], &[]);
    let base = full_spec(ManifestSpec::Csv {
        object_arn: "arn:aws:s3:::manifests/m.csv".into(),
        etag: "e1".into(),
        with_version_ids: false,
    });
    let cases = [
        (
            CopyJobSpec {
                storage_class: Some("FAST".into()),
                ..base.clone()
            },
            "unknown storage class 'FAST'",
        ),
        (
            CopyJobSpec {
                metadata_directive: Some("MERGE".into()),
                ..base.clone()
            },
            "unknown metadata directive 'MERGE'",
        ),
        (
            CopyJobSpec {
                target_bucket_arn: "dest-bucket".into(),
                ..base.clone()
            },
            "target bucket 'dest-bucket' is not an ARN",
        ),
        (
            CopyJobSpec {
                priority: -1,
                ..base.clone()
            },
            "priority -1 < 0",
        ),
        (
            CopyJobSpec {
                manifest: ManifestSpec::Inventory {
                    object_arn: "arn:aws:s3:::inv/manifest.json".into(),
                    etag: "\"\"".into(),
                },
                ..base.clone()
            },
            "empty manifest ETag",
        ),
    ];
    for (spec, want) in cases {
        let err = ops.create_copy_job(&spec).await.expect_err(want);
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{err}");
        assert_eq!(err.op, "s3:CreateJob");
        assert!(err.message.contains(want), "{err}");
    }
    assert_eq!(rule.num_calls(), 0, "nothing was sent");
}

fn descriptor(state: &str, total: i64, ok: i64, failed: i64) -> DescribeJobOutput {
    DescribeJobOutput::builder()
        .job(
            JobDescriptor::builder()
                .job_id("job-7")
                .status(state.into())
                .progress_summary(
                    JobProgressSummary::builder()
                        .total_number_of_tasks(total)
                        .number_of_tasks_succeeded(ok)
                        .number_of_tasks_failed(failed)
                        .build(),
                )
                .build(),
        )
        .build()
}

#[tokio::test]
async fn wait_polls_until_terminal_and_reports_each_change() {
    let rule = mock!(aws_sdk_s3control::Client::describe_job)
        .match_requests(|req| req.account_id() == Some(ACCOUNT) && req.job_id() == Some("job-7"))
        .sequence()
        .output(|| descriptor("New", 0, 0, 0))
        .output(|| descriptor("New", 0, 0, 0)) // no change: not reported
        .output(|| descriptor("Active", 3, 1, 0))
        .output(|| descriptor("Active", 3, 1, 0)) // no change
        .output(|| descriptor("Active", 3, 2, 1))
        .output(|| descriptor("Complete", 3, 2, 1))
        .build();
    let ops = batch_ops(RuleMode::Sequential, &[&rule], &[]);
    let mut seen: Vec<String> = Vec::new();
    let last = ops
        .wait("job-7", Duration::from_millis(1), &mut |s: &JobStatus| {
            seen.push(s.summary_line())
        })
        .await
        .expect("wait");
    assert_eq!(
        seen,
        [
            "State: New, Total: 0, Success: 0, Failed: 0",
            "State: Active, Total: 3, Success: 1, Failed: 0",
            "State: Active, Total: 3, Success: 2, Failed: 1",
            "State: Complete, Total: 3, Success: 2, Failed: 1",
        ]
    );
    assert_eq!(
        last.summary_line(),
        "State: Complete, Total: 3, Success: 2, Failed: 1"
    );
    assert!(last.is_terminal());
    assert_eq!(last.id, "job-7");
    assert_eq!(rule.num_calls(), 6, "polled to the end, not beyond");
}

#[tokio::test]
async fn describe_reads_failure_reasons() {
    let rule = mock!(aws_sdk_s3control::Client::describe_job).then_output(|| {
        DescribeJobOutput::builder()
            .job(
                JobDescriptor::builder()
                    .job_id("job-9")
                    .status("Failed".into())
                    .failure_reasons(
                        JobFailure::builder()
                            .failure_code("ManifestNotFound")
                            .failure_reason("Reading the manifest failed")
                            .build(),
                    )
                    .build(),
            )
            .build()
    });
    let ops = batch_ops(RuleMode::Sequential, &[&rule], &[]);
    let st = ops.describe("job-9").await.expect("describe");
    assert_eq!(
        st,
        JobStatus {
            id: "job-9".into(),
            state: "Failed".into(),
            total: 0,
            succeeded: 0,
            failed: 0,
            failure_reasons: vec!["ManifestNotFound: Reading the manifest failed".into()],
        }
    );
}

#[tokio::test]
async fn cancel_and_confirm_request_the_right_status() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let rule = mock!(aws_sdk_s3control::Client::update_job_status)
        .match_requests(move |req| {
            record.lock().expect("lock").push((
                req.account_id().map(str::to_string),
                req.job_id().map(str::to_string),
                req.requested_job_status().map(|s| s.as_str().to_string()),
            ));
            true
        })
        .then_output(|| UpdateJobStatusOutput::builder().build());
    let ops = batch_ops(RuleMode::MatchAny, &[&rule], &[]);
    ops.cancel("job-1").await.expect("cancel");
    ops.confirm("job-2").await.expect("confirm");
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        *seen.lock().expect("lock"),
        [
            (some(ACCOUNT), some("job-1"), some("Cancelled")),
            (some(ACCOUNT), some("job-2"), some("Ready")),
        ]
    );
}

#[tokio::test]
async fn access_denied_names_the_operation_in_one_line() {
    let rule = mock!(aws_sdk_s3control::Client::create_job).then_http_response(|| {
        let mut resp = HttpResponse::new(
            StatusCode::try_from(403).expect("status"),
            SdkBody::from(
                "<ErrorResponse>\n  <Error>\n    <Code>AccessDenied</Code>\n    \
                 <Message>Access Denied</Message>\n  </Error>\n  \
                 <RequestId>REQ123</RequestId>\n</ErrorResponse>",
            ),
        );
        resp.headers_mut().insert("x-amz-request-id", "REQ123");
        resp
    });
    let ops = batch_ops(RuleMode::Sequential, &[&rule], &[]);
    let spec = full_spec(ManifestSpec::Csv {
        object_arn: "arn:aws:s3:::manifests/m.csv".into(),
        etag: "e1".into(),
        with_version_ids: false,
    });
    let err = ops.create_copy_job(&spec).await.expect_err("denied");
    assert_eq!(err.kind, ErrorKind::PermissionDenied);
    assert_eq!(err.op, "s3:CreateJob");
    let http = err.http.clone().unwrap_or_default();
    assert_eq!(http.status, Some(403));
    assert_eq!(http.code.as_deref(), Some("AccessDenied"));
    assert_eq!(http.request_id.as_deref(), Some("REQ123"));
    assert_eq!(
        err.to_string(),
        "s3:CreateJob: Access Denied (the caller needs s3:CreateJob and iam:PassRole on the \
         job's role) (HTTP 403 AccessDenied)"
    );
    assert_eq!(rule.num_calls(), 1, "not retried");
}

#[test]
fn copy_role_policy_grants_exactly_what_a_copy_job_needs() {
    let policy = copy_role_policy(
        &["src-a".into(), "src-b".into(), "src-a".into()],
        &[
            ("dst".into(), Some("backup/".into())),
            ("arn:aws:s3:::dst2".into(), None),
        ],
        &[
            "arn:aws:s3:::manifests/jobs/m-1.csv".to_string(),
            "arn:aws:s3:::manifests/jobs/m-0.csv".to_string(),
        ],
        "reports",
        Some("batch/"),
    );
    let expected = json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadSourceObjects",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:GetObjectVersion",
                    "s3:GetObjectTagging",
                    "s3:GetObjectVersionTagging",
                    "s3:GetObjectAcl"
                ],
                "Resource": ["arn:aws:s3:::src-a/*", "arn:aws:s3:::src-b/*"]
            },
            {
                "Sid": "WriteDestinationObjects",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:PutObjectTagging", "s3:PutObjectAcl"],
                "Resource": ["arn:aws:s3:::dst/backup/*", "arn:aws:s3:::dst2/*"]
            },
            {
                "Sid": "ReadManifest",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                // Every job's manifest (one role serves all the jobs of a run).
                "Resource": [
                    "arn:aws:s3:::manifests/jobs/m-0.csv",
                    "arn:aws:s3:::manifests/jobs/m-1.csv"
                ]
            },
            {
                "Sid": "WriteReport",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": ["arn:aws:s3:::reports/batch/*"]
            },
            {
                "Sid": "LocateReportBucket",
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation"],
                "Resource": ["arn:aws:s3:::reports"]
            }
        ]
    });
    assert_eq!(policy, expected);
}

#[test]
fn copy_role_policy_for_an_inventory_reads_its_data_files_in_the_manifests_partition() {
    let policy = copy_role_policy(
        &["src".into()],
        &[("dst".into(), None)],
        &["arn:aws-cn:s3:::inv/src/cfg1/2024-01-01T00-00Z/manifest.json".to_string()],
        "reports",
        None,
    );
    let resources = |sid: &str| -> Value {
        policy["Statement"]
            .as_array()
            .and_then(|s| s.iter().find(|st| st["Sid"] == sid))
            .map(|st| st["Resource"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        resources("ReadManifest"),
        json!([
            "arn:aws-cn:s3:::inv/src/cfg1/2024-01-01T00-00Z/manifest.json",
            "arn:aws-cn:s3:::inv/src/cfg1/data/*"
        ])
    );
    assert_eq!(
        resources("ReadSourceObjects"),
        json!(["arn:aws-cn:s3:::src/*"])
    );
    assert_eq!(
        resources("WriteReport"),
        json!(["arn:aws-cn:s3:::reports/*"])
    );
}

fn role(name: &str, trust: &str) -> Role {
    Role::builder()
        .path("/")
        .role_name(name)
        .role_id("AROAEXAMPLE")
        .arn(format!("arn:aws:iam::{ACCOUNT}:role/{name}"))
        .create_date(aws_smithy_types::DateTime::from_secs(0))
        .assume_role_policy_document(trust)
        .build()
        .expect("role")
}

/// (role name, policy name, policy document) of each PutRolePolicy.
type PutPolicies = Arc<Mutex<Vec<(String, String, Value)>>>;

fn recording_put_role_policy() -> (Rule, PutPolicies) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let rule = mock!(aws_sdk_iam::Client::put_role_policy)
        .match_requests(move |req| {
            let doc = serde_json::from_str(req.policy_document().unwrap_or("")).unwrap_or_default();
            record.lock().expect("lock").push((
                req.role_name().unwrap_or("").to_string(),
                req.policy_name().unwrap_or("").to_string(),
                doc,
            ));
            true
        })
        .then_output(|| PutRolePolicyOutput::builder().build());
    (rule, seen)
}

fn example_policy() -> Value {
    copy_role_policy(
        &["src".into()],
        &[("dst".into(), None)],
        &["arn:aws:s3:::m/m.csv".to_string()],
        "reports",
        None,
    )
}

#[tokio::test]
async fn create_role_creates_it_with_the_trust_policy_then_puts_the_policy() {
    let created = Arc::new(Mutex::new(Vec::new()));
    let record = created.clone();
    let create = mock!(aws_sdk_iam::Client::create_role)
        .match_requests(move |req| {
            let trust: Value =
                serde_json::from_str(req.assume_role_policy_document().unwrap_or(""))
                    .unwrap_or_default();
            record
                .lock()
                .expect("lock")
                .push((req.role_name().unwrap_or("").to_string(), trust));
            true
        })
        .then_compute_output(|req| {
            CreateRoleOutput::builder()
                .role(role(req.role_name().unwrap_or(""), "{}"))
                .build()
        });
    let (put, puts) = recording_put_role_policy();
    let ops = batch_ops(RuleMode::Sequential, &[], &[&create, &put]);
    let policy = example_policy();

    let arn = ops
        .create_role("s3ferry-batch", &policy)
        .await
        .expect("create role");

    assert_eq!(arn, ROLE_ARN);
    let trust = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": "batchoperations.s3.amazonaws.com" },
            "Action": "sts:AssumeRole"
        }]
    });
    assert_eq!(trust_policy(), trust);
    assert_eq!(
        *created.lock().expect("lock"),
        [("s3ferry-batch".to_string(), trust)]
    );
    assert_eq!(
        *puts.lock().expect("lock"),
        [(
            "s3ferry-batch".to_string(),
            ROLE_POLICY_NAME.to_string(),
            policy
        )]
    );
}

fn already_exists() -> Rule {
    mock!(aws_sdk_iam::Client::create_role).then_error(|| {
        CreateRoleError::EntityAlreadyExistsException(
            EntityAlreadyExistsException::builder()
                .message("Role with name s3ferry-batch already exists.")
                .build(),
        )
    })
}

#[tokio::test]
async fn create_role_of_an_existing_role_updates_its_policy() {
    let create = already_exists();
    // IAM answers the trust policy URL-encoded.
    let trust = percent_encoding::utf8_percent_encode(
        &trust_policy().to_string(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    let get = mock!(aws_sdk_iam::Client::get_role)
        .match_requests(|req| req.role_name() == Some("s3ferry-batch"))
        .then_output(move || {
            GetRoleOutput::builder()
                .role(role("s3ferry-batch", &trust))
                .build()
        });
    let (put, puts) = recording_put_role_policy();
    let ops = batch_ops(RuleMode::Sequential, &[], &[&create, &get, &put]);
    let policy = example_policy();

    let arn = ops
        .create_role("s3ferry-batch", &policy)
        .await
        .expect("existing role");

    assert_eq!(arn, ROLE_ARN);
    assert_eq!(
        (create.num_calls(), get.num_calls(), put.num_calls()),
        (1, 1, 1)
    );
    assert_eq!(
        *puts.lock().expect("lock"),
        [(
            "s3ferry-batch".to_string(),
            ROLE_POLICY_NAME.to_string(),
            policy
        )]
    );
}

#[tokio::test]
async fn create_role_leaves_an_existing_role_for_another_service_alone() {
    let create = already_exists();
    let ec2_trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let get = mock!(aws_sdk_iam::Client::get_role).then_output(move || {
        GetRoleOutput::builder()
            .role(role("s3ferry-batch", ec2_trust))
            .build()
    });
    let (put, _puts) = recording_put_role_policy();
    let ops = batch_ops(RuleMode::Sequential, &[], &[&create, &get, &put]);

    let err = ops
        .create_role("s3ferry-batch", &example_policy())
        .await
        .expect_err("not a batch role");

    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(
        err.message
            .contains("does not name batchoperations.s3.amazonaws.com"),
        "{err}"
    );
    assert_eq!(put.num_calls(), 0, "its policy was not touched");
}

/// Issue 23, point 14: ARNs are named in the region's partition, not always `aws`.
#[test]
fn the_partition_follows_the_region() {
    for (region, want) in [
        ("us-east-1", "aws"),
        ("eu-central-1", "aws"),
        ("cn-north-1", "aws-cn"),
        ("cn-northwest-1", "aws-cn"),
        ("us-gov-west-1", "aws-us-gov"),
        ("us-iso-east-1", "aws-iso"),
        ("us-isob-east-1", "aws-iso-b"),
    ] {
        assert_eq!(partition_of(region), want, "{region}");
    }
}

fn create_job_error(status: u16, code: &'static str, message: &'static str) -> Rule {
    mock!(aws_sdk_s3control::Client::create_job).then_http_response(move || {
        HttpResponse::new(
            StatusCode::try_from(status).expect("status"),
            SdkBody::from(format!(
                "<ErrorResponse><Error><Code>{code}</Code><Message>{message}</Message></Error>\
                 <RequestId>R</RequestId></ErrorResponse>"
            )),
        )
    })
}

/// Issue 23, point 14: CreateJob right after CreateRole. Until IAM has propagated the role,
/// S3 Control refuses it; a job for a new role is asked for again (same request token) until
/// it is accepted, and any other refusal is returned at once.
#[tokio::test(start_paused = true)]
async fn a_job_for_a_new_role_waits_for_the_role_to_propagate() {
    let spec = full_spec(ManifestSpec::Csv {
        object_arn: "arn:aws:s3:::manifests/m.csv".into(),
        etag: "e1".into(),
        with_version_ids: false,
    });
    let not_yet = || {
        create_job_error(
            400,
            "InvalidRequest",
            "Unable to assume role arn:aws:iam::123456789012:role/s3ferry-batch",
        )
    };
    let (first, second) = (not_yet(), not_yet());
    let (ok, seen) = recording_create_job();
    let ops = batch_ops(RuleMode::Sequential, &[&first, &second, &ok], &[]);
    let id = ops.create_copy_job_new_role(&spec).await.expect("created");
    assert!(id.starts_with("job-"), "{id}");
    assert_eq!((first.num_calls(), second.num_calls()), (1, 1));
    assert_eq!(seen.lock().expect("lock").len(), 1);

    // Another refusal is not about the role: returned at once, not retried.
    let other = create_job_error(400, "InvalidRequest", "The manifest object was not found");
    let ops = batch_ops(RuleMode::Sequential, &[&other], &[]);
    let err = ops
        .create_copy_job_new_role(&spec)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("manifest"), "{err}");
    assert_eq!(other.num_calls(), 1);

    // The caller may not pass the role (an assumed role of its own): its own error, at once.
    let denied = create_job_error(
        403,
        "AccessDenied",
        "User: arn:aws:sts::123456789012:assumed-role/ci/x is not authorized to perform: \
         iam:PassRole on resource: arn:aws:iam::123456789012:role/s3ferry-batch",
    );
    let ops = batch_ops(RuleMode::Sequential, &[&denied], &[]);
    let err = ops
        .create_copy_job_new_role(&spec)
        .await
        .expect_err("denied");
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
    assert_eq!(denied.num_calls(), 1);

    // The role never becomes usable: given up after about a minute.
    let never = create_job_error(400, "InvalidRequest", "Unable to assume role");
    let ops = batch_ops(RuleMode::MatchAny, &[&never], &[]);
    let t0 = tokio::time::Instant::now();
    ops.create_copy_job_new_role(&spec)
        .await
        .expect_err("never");
    assert!(
        t0.elapsed() <= Duration::from_secs(60),
        "{:?}",
        t0.elapsed()
    );
    assert!(never.num_calls() >= 3, "{}", never.num_calls());
}
